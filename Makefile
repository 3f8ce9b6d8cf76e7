# Two entry points, both safe on a fresh machine: `make book` and `make test`.
# Each creates .venv and installs the package (pinned torch==2.13.0 CPU wheel) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
CHAPTER ?=
PYTEST_ARGS ?=

.PHONY: book test install browser-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Build the book: execute stale chapters with papermill on $(PROFILE), then a strict HTML build.
book: $(VENV)/.installed
	$(PY) -m em.book build --profile $(PROFILE) $(if $(CHAPTER),--chapter $(CHAPTER))

# Headless Chromium for the browser test (Debian packages; skipped quietly where apt is unavailable).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || bash scripts/install_chromium.sh || echo "chromium not installed: browser test will skip"

test: $(VENV)/.installed browser-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)
