# ruff: noqa: INP001, T201 - a script (not a package) that reports by printing
"""Build the documentation site and check it in a real headless Chromium, offline.

    python scripts/check_site.py [--site DIR] [--screenshots DIR] [--chromium PATH]

Builds the site with ``mkdocs build --strict`` into a temporary folder (or checks the built
site given with ``--site``), serves it on 127.0.0.1, and opens every page of it (every
``.html`` file, and any page a link reaches) in headless Chromium (Debian: ``apt-get install
chromium``), driven over the Chrome DevTools protocol with nothing but the standard library.
``tests/test_site.py`` runs the same check in the test suite. It fails when:

- a page does not load, or has a JavaScript error, a console error or a failed request;
- a request leaves 127.0.0.1 (the site must work offline: no CDN, no web fonts);
- a mermaid diagram does not render to an ``<svg>`` (or renders mermaid's error picture);
- a link inside the site points to a missing page, file or anchor.

``--screenshots DIR`` writes a full-page PNG of every page. Takes about 30 seconds.
Exit status: 0 when every check passed, 1 when one failed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import html.parser
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
PAGE_TIMEOUT = 30.0  # seconds for a page to load
DIAGRAM_TIMEOUT = 15.0  # seconds for its mermaid diagrams to render, once loaded
WIDTH, HEIGHT = 1280, 900


class CheckError(Exception):
    """The check could not run (no browser, no site, a protocol failure)."""


# -- a minimal WebSocket client (RFC 6455), enough for the DevTools protocol ---------------


class WebSocket:
    """A blocking WebSocket client for text messages to and from a local server."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                msg = "the browser closed the DevTools connection during the handshake"
                raise CheckError(msg)
            head += chunk
        status, _, self.buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            msg = f"DevTools handshake failed: {status.decode(errors='replace')}"
            raise CheckError(msg)

    def send(self, text: str) -> None:
        """Send one text frame (masked, as clients must)."""
        payload = text.encode()
        header = bytearray([0x81])
        size = len(payload)
        if size < 126:
            header.append(0x80 | size)
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", size)
        mask = secrets.token_bytes(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes(header) + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                msg = "the browser closed the DevTools connection"
                raise CheckError(msg)
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv(self, timeout: float) -> str:
        """Return the next text message, answering pings on the way."""
        self.sock.settimeout(timeout)
        message = b""
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                (size,) = struct.unpack(">H", self._read(2))
            elif size == 127:
                (size,) = struct.unpack(">Q", self._read(8))
            mask = self._read(4) if second & 0x80 else b""
            payload = self._read(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping: answer with a pong carrying the same data
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            if opcode == 0x8:
                msg = "the browser closed the DevTools connection"
                raise CheckError(msg)
            message += payload
            if first & 0x80:  # FIN: the last fragment
                return message.decode()

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self.sock.close()


class DevTools:
    """Calls DevTools protocol methods on one page and collects the events it sends."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.next_id = 0
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = PAGE_TIMEOUT, **params: Any) -> dict[str, Any]:
        """Call *method* and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline, method)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    msg = f"{method} failed: {reply['error']}"
                    raise CheckError(msg)
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = PAGE_TIMEOUT) -> dict[str, Any]:
        """Return the first event called *method* since the last `clear`, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            reply = self._next(deadline, method)
            if "method" in reply:
                self.events.append(reply)

    def _next(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            msg = f"timed out waiting for {waiting_for}"
            raise CheckError(msg)
        try:
            reply: dict[str, Any] = json.loads(self.ws.recv(remaining))
        except TimeoutError:
            msg = f"timed out waiting for {waiting_for}"
            raise CheckError(msg) from None
        return reply

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


# -- the site: build, serve, read --------------------------------------------------------


def build_site(target: Path) -> None:
    """Build the site with ``mkdocs build --strict`` into *target*."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        msg = f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
        raise CheckError(msg)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    failures: list[str]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:  # noqa: ARG002 - the base class signature
        if isinstance(code, int) and code >= 400:
            self.failures.append(f"HTTP {code} for {self.path}")


@contextlib.contextmanager
def serve(site: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve *site* on 127.0.0.1; yield its base URL and the list of HTTP failures."""
    failures: list[str] = []
    handler = functools.partial(_QuietHandler, directory=str(site))
    _QuietHandler.failures = failures
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", failures
    finally:
        server.shutdown()
        server.server_close()


class _Ids(html.parser.HTMLParser):
    """Read a page's ``id`` attributes, mermaid blocks and examples shown as text.

    An example shown as text is a docstring's doctest rendered as nested blockquotes, or
    ``>>>`` lines run into a paragraph, instead of a code block.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.mermaid = 0
        self.misrendered: list[str] = []
        self._code = 0  # inside <code> or <pre>
        self._quote = 0  # inside <blockquote>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag == "pre" and "mermaid" in (values.get("class") or "").split():
            self.mermaid += 1
        if tag in ("code", "pre"):
            self._code += 1
        elif tag == "blockquote":
            self._quote += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("code", "pre"):
            self._code = max(0, self._code - 1)
        elif tag == "blockquote":
            self._quote = max(0, self._quote - 1)

    def handle_data(self, data: str) -> None:
        if self._code or not data.strip():
            return
        if ">>>" in data or (self._quote and "..." in data):
            self.misrendered.append(" ".join(data.split())[:60])


@functools.cache
def read_page(path: Path) -> _Ids:
    """Parse a built page once."""
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def site_pages(site: Path) -> list[str]:
    """The URL paths of every page of *site*, relative to its root, the home page first."""
    pages: list[str] = []
    for file in site.rglob("*.html"):
        relative = file.relative_to(site).as_posix()
        pages.append(relative.removesuffix("index.html"))  # "a/index.html" is served as "a/"
    return sorted(pages, key=lambda page: (page != "", page))


def local_file(site: Path, url_path: str) -> Path | None:
    """The file of *site* that serves *url_path*, or None when there is none."""
    relative = unquote(url_path).lstrip("/")
    candidate = site / relative
    if candidate.is_dir():
        candidate /= "index.html"
    return candidate if candidate.is_file() else None


# -- the browser ---------------------------------------------------------------------------


def find_chromium(given: str | None) -> str:
    """Return the browser to use, or explain how to install one."""
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome"]:
        found = shutil.which(name) if name else None
        if found:
            return found
    msg = "no Chromium found: install it (`apt-get install chromium`) or pass --chromium PATH."
    raise CheckError(msg)


@contextlib.contextmanager
def browser(executable: str) -> Iterator[DevTools]:
    """Start headless Chromium and yield a DevTools client attached to a fresh page."""
    profile = tempfile.mkdtemp(prefix="check-site-chromium-")
    try:
        process = subprocess.Popen(  # noqa: S603 - the browser the caller chose
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helper processes in a group of their own, to stop
        )
        ws: WebSocket | None = None
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
                if process.poll() is not None or time.monotonic() > deadline:
                    msg = f"{executable} did not start (exit status {process.poll()})"
                    raise CheckError(msg)
                time.sleep(0.1)
            port, path = port_file.read_text().split()[:2]
            ws = WebSocket(f"ws://127.0.0.1:{port}{path}")
            tools = DevTools(ws)
            target = tools.call("Target.createTarget", url="about:blank")["targetId"]
            attached = tools.call("Target.attachToTarget", targetId=target, flatten=True)
            tools.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log", "DOM"):
                tools.call(f"{domain}.enable")
            tools.call(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield tools
        finally:
            if ws is not None:
                ws.close()
            _stop(process)
    finally:
        _remove(Path(profile))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the browser and the helper processes it started (its process group)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if os.name == "posix":  # helpers that outlive it, in the process group it led
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _remove(folder: Path) -> None:
    """Remove the browser's profile; its last helpers may still write there for a moment."""
    for _ in range(20):
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
        else:
            return
    shutil.rmtree(folder, ignore_errors=True)


def _shadow_svgs(node: dict[str, Any]) -> Iterator[bool]:
    """For each rendered mermaid diagram under *node*: whether it holds a good ``<svg>``."""
    attributes = node.get("attributes", [])
    classes = dict(zip(attributes[::2], attributes[1::2], strict=True)).get("class", "")
    if node.get("nodeName") == "DIV" and "mermaid" in classes.split():
        svgs = [
            child
            for root in node.get("shadowRoots", [])
            for child in root.get("children", [])
            if child.get("nodeName", "").lower() == "svg"
        ]
        yield bool(svgs) and not any(_has_error_text(svg) for svg in svgs)
        return
    for key in ("children", "shadowRoots"):
        for child in node.get(key, []):
            yield from _shadow_svgs(child)
    if "contentDocument" in node:
        yield from _shadow_svgs(node["contentDocument"])


def _has_error_text(node: dict[str, Any]) -> bool:
    """Whether mermaid drew its "Syntax error in text" picture instead of the diagram."""
    if "Syntax error" in node.get("nodeValue", ""):
        return True
    return any(_has_error_text(child) for child in node.get("children", []))


def check_page(tools: DevTools, url: str, expected_diagrams: int) -> tuple[list[str], list[str]]:
    """Load *url*; return its problems and the links it holds."""
    problems: list[str] = []
    tools.events.clear()
    navigated = tools.call("Page.navigate", url=url)
    if navigated.get("errorText"):
        return [f"navigation failed: {navigated['errorText']}"], []
    tools.wait_event("Page.loadEventFired")
    deadline = time.monotonic() + DIAGRAM_TIMEOUT
    rendered: list[bool] = []
    while True:
        waiting = tools.evaluate("document.querySelectorAll('pre.mermaid').length")
        document = tools.call("DOM.getDocument", depth=-1, pierce=True)["root"]
        rendered = list(_shadow_svgs(document))
        if (not waiting and len(rendered) >= expected_diagrams) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(rendered) < expected_diagrams or not all(rendered):
        good = sum(rendered)
        problems.append(f"{good} of {expected_diagrams} mermaid diagrams rendered to <svg>")
    time.sleep(0.3)  # let late requests (search index, fonts) report
    tools.evaluate("0")  # and read the events they sent
    problems += _event_problems(tools.events, urlsplit(url).netloc)
    links = tools.evaluate("Array.from(document.querySelectorAll('a[href]'), a => a.href)") or []
    return problems, links


def _event_problems(events: list[dict[str, Any]], host: str) -> list[str]:
    problems: list[str] = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"JavaScript error: {text.splitlines()[0] if text else '?'}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console error: {args}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            problems.append(f"browser error: {entry['text']} {entry.get('url', '')}".rstrip())
        elif method == "Network.requestWillBeSent":
            target = urlsplit(params["request"]["url"])
            if target.scheme in ("http", "https", "ws", "wss") and target.netloc != host:
                problems.append(f"request leaves the site (offline check): {target.geturl()}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"request failed: {params.get('errorText')}")
    return sorted(set(problems), key=problems.index)


def screenshot(tools: DevTools, target: Path) -> None:
    """Write a full-page PNG of the current page."""
    size = tools.call("Page.getLayoutMetrics")["cssContentSize"]
    height = min(int(size["height"]) + 1, 16000)
    tools.call(
        "Emulation.setDeviceMetricsOverride",
        width=WIDTH,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    try:
        data = tools.call("Page.captureScreenshot", format="png")["data"]
    finally:
        tools.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(base64.b64decode(data))


# -- the crawl -------------------------------------------------------------------------------


def check_site(site: Path, executable: str, screenshots: Path | None) -> list[str]:
    """Open every page of *site* in the browser, following links; return every problem."""
    problems: list[str] = []
    if not (site / "javascripts" / "mermaid.min.js").is_file():
        problems.append(
            "javascripts/mermaid.min.js is not in the site: docs/hooks/mermaid.py could not "
            "fetch it (is npm installed and the registry reachable?), so diagrams need a CDN."
        )
    with serve(site) as (base, http_failures), browser(executable) as tools:
        queue = [urljoin(base, page) for page in site_pages(site)]
        seen = set(queue)
        anchors: list[tuple[str, str, str]] = []  # (page, target path, fragment)
        pages = 0
        while queue:
            url = queue.pop(0)
            path = urlsplit(url).path
            file = local_file(site, path)
            if file is None:
                continue  # reported where it was linked from
            pages += 1
            parsed = read_page(file)
            page_problems, links = check_page(tools, url, parsed.mermaid)
            problems += [f"{path}: {p}" for p in page_problems]
            problems += [
                f"{path}: an example renders as text, not code: {text!r}"
                for text in parsed.misrendered
            ]
            if screenshots is not None:
                name = path.strip("/").replace("/", "__") or "index"
                screenshot(tools, screenshots / f"{name}.png")
            for link in links:
                target, fragment = urldefrag(urljoin(url, link))
                parts = urlsplit(target)
                if parts.netloc != urlsplit(base).netloc:
                    continue  # external links are not fetched (offline)
                linked = local_file(site, parts.path)
                if linked is None:
                    problems.append(f"{path}: broken link to {parts.path}")
                    continue
                if fragment:
                    anchors.append((path, parts.path, fragment))
                if linked.suffix == ".html" and target not in seen:
                    seen.add(target)
                    queue.append(target)
        for page, target, fragment in anchors:
            linked = local_file(site, target)
            if linked is not None and unquote(fragment) not in read_page(linked).ids:
                problems.append(f"{page}: link to missing anchor {target}#{fragment}")
        problems += http_failures
        print(f"checked {pages} pages, {len(anchors)} links to anchors")
    return sorted(set(problems), key=problems.index)


def main(argv: list[str] | None = None) -> int:
    """Run the check; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", type=Path, help="check this built site instead of building")
    parser.add_argument("--screenshots", type=Path, help="write a PNG of every page here")
    parser.add_argument("--chromium", help="the Chromium executable (default: from PATH)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        executable = find_chromium(args.chromium)
        with tempfile.TemporaryDirectory(prefix="check-site-") as tmp:
            site = args.site
            if site is None:
                site = Path(tmp) / "site"
                build_site(site)
            problems = check_site(site.resolve(), executable, args.screenshots)
    except CheckError as err:
        print(f"check_site: can't run the check: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"FAIL {problem}")
    verdict = "failed" if problems else "passed"
    print(f"site check {verdict} in {time.monotonic() - start:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
