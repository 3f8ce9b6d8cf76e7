"""The built book in a real browser: every page opens from a loopback server with no failed and
no off-machine request, no script error, math typeset, and every figure present and not blank.

Headless Chromium (Debian's package; ``scripts/install_chromium.sh`` installs it) is driven over
the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on file
descriptors 3 and 4, so no websocket library is needed).  The protocol attributes every request
to the page that made it, which the browser's own log cannot: Chromium's background services
(update checks, account look-ups) also try the network, and they are not the book's doing.
``--host-resolver-rules`` resolves no host but 127.0.0.1, so nothing leaves the machine even
when a page asks; the test reports each such attempt by URL.

Pages are served by ``http.server`` on 127.0.0.1 (what ``python -m http.server --bind 127.0.0.1``
runs), which also records every status it sent.  A screenshot and the DOM after scripts ran are
kept per page in ``test-artefacts/`` (git-ignored) for people to look at.

Two tests: a fast one proves the checks catch each fault they claim to (on a small hand-made
site with a CDN script, a missing and a blank image, a script error and untypeset math); the
slow one runs them over the real book.  Its HTML is the smoke profile's (built, or reused when
its chapters are up to date); set ``EM_BOOK_HTML=<folder>`` to check another build, e.g. the
default one in ``_build/html``.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urljoin, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = REPO / "test-artefacts"
WIDTH, HEIGHT = 1280, 1100
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--disable-background-networking", "--no-first-run", "--disable-component-update",
         "--disable-sync", "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


pytestmark = pytest.mark.skipif(
    _chromium() is None, reason="chromium not installed (run scripts/install_chromium.sh)")


# ------------------------------------------------------------------------------ DevTools on a pipe


def _high_fd(fd: int) -> int:
    """The same pipe end on a descriptor >= 10 (the original is closed)."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium with one tab, spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, user_data_dir: str) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # chromium wants the pipe on fds 3 (commands in) and 4 (replies out); bash renumbers
        # them, from fds >= 10 so that neither source can be 3 or 4 itself
        to_child_r, from_child_w = (_high_fd(to_child_r), _high_fd(from_child_w))
        shell = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, "bash", _chromium(), *FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(to_child_r, from_child_w), stdout=subprocess.DEVNULL,
            stderr=open(Path(user_data_dir) / "chromium.log", "wb"))
        self._log = Path(user_data_dir) / "chromium.log"
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Page.enable", "Network.enable", "Runtime.enable", "Log.enable"):
            self.call(method, session=True)
        self.call("Network.setCacheDisabled", session=True, cacheDisabled=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from_child, 1 << 16):
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._replies:
                    self._replies[msg["id"]].put(msg)
                elif "method" in msg:
                    self.events.put(msg)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params: Any) -> dict:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            self._replies[mid] = queue.Queue()
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        try:
            os.write(self._to_child, json.dumps(msg).encode() + b"\0")
            reply = self._replies[mid].get(timeout=timeout)
        except (OSError, queue.Empty):
            tail = self._log.read_text(errors="replace")[-2000:] if self._log.is_file() else ""
            raise RuntimeError(f"chromium gave no reply to {method} (exit code "
                               f"{self.proc.poll()}); its log ends:\n{tail}") from None
        finally:
            del self._replies[mid]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)


def visit(browser: Browser, url: str, settle_s: float = 0.7, limit_s: float = 45) -> dict[str, Any]:
    """Open ``url`` and wait for the load event and then for the network to stay idle; return
    the page's requests, failures, statuses, console errors and script exceptions."""
    while not browser.events.empty():
        browser.events.get_nowait()
    browser.call("Page.navigate", session=True, url=url)
    requests: dict[str, str] = {}
    statuses: dict[str, int] = {}
    failed: list[str] = []
    errors: list[str] = []
    pending: set[str] = set()
    loaded = False
    deadline = time.monotonic() + limit_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        try:
            ev = browser.events.get(timeout=0.1)
        except queue.Empty:
            if loaded and not pending and time.monotonic() - quiet_since > settle_s:
                break
            continue
        method, p = ev["method"], ev.get("params", {})
        if method == "Network.requestWillBeSent":
            requests[p["requestId"]] = p["request"]["url"]
            pending.add(p["requestId"])
        elif method == "Network.responseReceived":
            statuses[p["requestId"]] = int(p["response"]["status"])
        elif method in ("Network.loadingFinished", "Network.loadingFailed"):
            pending.discard(p["requestId"])
            if method == "Network.loadingFailed" and not p.get("canceled"):
                failed.append(f"{requests.get(p['requestId'], '?')}: {p.get('errorText')}"
                              + (f" ({p['blockedReason']})" if p.get("blockedReason") else ""))
        elif method == "Page.loadEventFired":
            loaded = True
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(f"console: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"script error: {d.get('exception', {}).get('description') or d.get('text')}")
        quiet_since = time.monotonic()
    if not loaded:
        errors.append(f"no load event within {limit_s} s")
    return {"requests": requests, "statuses": statuses, "failed": failed, "errors": errors}


_PAGE_FACTS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), url: i.currentSrc || i.src,
                                                 complete: i.complete, width: i.naturalWidth})),
  math: document.querySelectorAll('.math').length,
  typeset: document.querySelectorAll('mjx-container').length,
  title: document.title,
})"""


# ------------------------------------------------------------------------------ fixtures


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler, remembering (path, status) of every request."""

    log: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def html_dir() -> Path:
    """The site to check: $EM_BOOK_HTML, else the smoke profile's build (made when stale)."""
    if os.environ.get("EM_BOOK_HTML"):
        path = Path(os.environ["EM_BOOK_HTML"]).resolve()
        assert (path / "index.html").is_file(), f"EM_BOOK_HTML={path} has no index.html"
        return path
    from em import book

    project = book.Project.at(REPO)
    opts = book.BuildOptions(profile="smoke", progress=False)
    site, out = book.site_and_out(project, opts)
    html = out / "_build" / "html"
    chapters = book.toc_chapters(project)
    values = book.check_parameters(project, chapters, "smoke")
    fresh = not any(book.chapter_status(project, "smoke", chapters, site, values).values())
    inputs = [site / c.source.name for c in chapters] + [project.config, project.toc]
    if fresh and (html / "index.html").is_file() and all(
            p.stat().st_mtime <= (html / "index.html").stat().st_mtime for p in inputs):
        return html  # reuse: nothing changed since this HTML was built
    report = book.build(project, opts)
    assert not report.failures, "\n".join(map(str, report.failures))
    return report.html_dir


@contextlib.contextmanager
def serve(html_dir: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """``html_dir`` on a free loopback port: (base URL, the (path, status) log)."""
    handler = type("Handler", (_RecordingHandler,), {"log": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(html_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", handler.log
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(html_dir: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    with serve(html_dir) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with tempfile.TemporaryDirectory(prefix="em-chromium-") as profile:
        b = Browser(profile)
        try:
            yield b
        finally:
            b.close()


def _pages(html_dir: Path) -> list[str]:
    skip = {"_static", "_sources", "_images", "_sphinx_design_static"}
    return sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html")
                  if not skip & set(p.relative_to(html_dir).parts))


# ------------------------------------------------------------------------------ the checks


def check_site(html_dir: Path, base: str, served: list[tuple[str, int]], browser: Browser,
               artefacts: Path) -> tuple[list[str], dict[str, int]]:
    """Visit every page; keep a screenshot and the DOM of each under ``artefacts``; return the
    problems found and a few counts."""
    from PIL import Image

    shots, doms = artefacts / "screenshots", artefacts / "dom"
    for folder in (shots, doms):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    problems: list[str] = []
    counts = {"pages": 0, "images": 0, "requests": 0, "typeset": 0}
    for page in _pages(html_dir):
        counts["pages"] += 1
        seen = visit(browser, urljoin(base, page))
        counts["requests"] += len(seen["requests"])
        for rid, req in seen["requests"].items():
            if urlparse(req).scheme in ("http", "https", "ws", "wss") and not req.startswith(base):
                problems.append(f"{page}: requested another host: {req}")
            if seen["statuses"].get(rid, 200) >= 400:
                problems.append(f"{page}: {req} -> HTTP {seen['statuses'][rid]}")
        problems += [f"{page}: failed request {f}" for f in seen["failed"]]
        problems += [f"{page}: {e}" for e in seen["errors"]]

        facts = json.loads(browser.call("Runtime.evaluate", session=True,
                                        expression=_PAGE_FACTS, returnByValue=True)["result"]["value"])
        dom = browser.call("Runtime.evaluate", session=True, returnByValue=True,
                           expression="document.documentElement.outerHTML")["result"]["value"]
        stem = page.replace("/", "__").removesuffix(".html")
        (doms / f"{stem}.html").write_text(dom, encoding="utf-8")
        # a figure that reached the page as its text repr was never rendered (no PNG output)
        problems += [f"{page}: figure shown as text, not an image: {m}"
                     for m in sorted(set(re.findall(r"&lt;Figure size [^&]*&gt;", dom)))]
        png = base64.b64decode(browser.call("Page.captureScreenshot", session=True, format="png")["data"])
        (shots / f"{stem}.png").write_bytes(png)
        with Image.open(shots / f"{stem}.png") as im:
            lo, hi = im.convert("L").getextrema()
        if lo == hi:
            problems.append(f"{page}: the screenshot is a single colour (blank page)")
        counts["typeset"] += facts["typeset"]
        if facts["math"] and not facts["typeset"]:
            problems.append(f"{page}: {facts['math']} math element(s) but MathJax typeset none")
        for img in facts["images"]:
            counts["images"] += 1
            if not img["complete"] or not img["width"]:
                problems.append(f"{page}: <img src={img['src']!r}> did not load in the browser")
            problems += _check_image(html_dir, base, page, img["url"])
    problems += sorted({f"server answered {code} to {path}" for path, code in served if code >= 400})
    return problems, counts


@pytest.mark.slow
def test_every_page_loads_offline_with_figures(html_dir: Path, server, browser: Browser) -> None:
    base, served = server
    pages = _pages(html_dir)
    assert "index.html" in pages and len(pages) >= 3, pages
    problems, counts = check_site(html_dir, base, served, browser, ARTEFACTS)
    assert not problems, "\n".join(problems)
    assert counts["requests"] > counts["pages"]  # each page fetched its assets through the server
    print(f"\n{counts}: all local; screenshots in {(ARTEFACTS / 'screenshots').relative_to(REPO)}")


def test_checks_catch_what_they_claim(tmp_path: Path, browser: Browser) -> None:
    """The same checks on a small hand-made site with one of each fault must report each."""
    from PIL import Image

    site = tmp_path / "site"
    site.mkdir()
    head = '<html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>'
    (site / "index.html").write_text(head + "<h1>fine</h1><p>ok</p></body></html>")
    (site / "cdn.html").write_text(head + '<script src="https://cdn.example.org/lib.js"></script>'
                                   "<p>cdn</p></body></html>")
    (site / "figs.html").write_text(head + '<img src="blank.png"><img src="missing.png">'
                                    '<img src="good.png"></body></html>')
    (site / "broken.html").write_text(head + "<p>x</p><script>noSuchFunction()</script>"
                                      '<span class="math">$x$</span></body></html>')
    Image.new("RGB", (20, 20), "white").save(site / "blank.png")
    good = Image.new("RGB", (20, 20), "white")
    good.putpixel((3, 3), (200, 0, 0))
    good.save(site / "good.png")
    with serve(site) as (base, served):
        problems, counts = check_site(site, base, served, browser, tmp_path / "artefacts")
    text = "\n".join(problems)
    assert "cdn.html: requested another host: https://cdn.example.org/lib.js" in text
    assert "figs.html: <img src='missing.png'> did not load" in text
    assert re.search(r"figs.html: http://127.0.0.1:\d+/blank.png is blank", text)
    assert "good.png" not in text
    assert "server answered 404 to /missing.png" in text
    assert "broken.html: script error: ReferenceError: noSuchFunction" in text
    assert "broken.html: 1 math element(s) but MathJax typeset none" in text
    assert not any(p.startswith("index.html") for p in problems), text
    assert counts["pages"] == 4 and (tmp_path / "artefacts" / "screenshots" / "figs.png").is_file()


def _check_image(html_dir: Path, base: str, page: str, url: str) -> list[str]:
    """An image must be a file of the site, readable, and not a single colour."""
    from PIL import Image

    if url.startswith("data:"):
        return []  # inline images travel inside the page itself
    if not url.startswith(base):
        return [f"{page}: image from another origin: {url}"]
    target = (html_dir / unquote(urlparse(url).path).lstrip("/")).resolve()
    if not target.is_file():
        return [f"{page}: image {url} is not a file of the site"]
    if target.suffix.lower() == ".svg":
        text = target.read_text(encoding="utf-8", errors="replace")
        ok = "<svg" in text and re.search(r"<(path|rect|circle|line|polyline|polygon|text|use)\b", text)
        return [] if ok else [f"{page}: {url} is an empty SVG"]
    try:
        with Image.open(target) as im:
            lo, hi = im.convert("L").getextrema()
    except OSError as exc:
        return [f"{page}: {url} is not a readable image ({exc})"]
    return [] if lo != hi else [f"{page}: {url} is blank (a single colour)"]
