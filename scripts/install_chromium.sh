#!/usr/bin/env bash
# Install headless Chromium and a font for tests/test_browser.py.
#
# Why a script: the browser test needs a real browser, and neither CI nor a fresh machine has one.
# Debian's package is the only browser build reachable offline (a test tool's own browser
# download fails here).  Idempotent: does nothing when chromium is already on PATH.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "installed: $(chromium --version 2>/dev/null || echo 'chromium (version unknown)')"
