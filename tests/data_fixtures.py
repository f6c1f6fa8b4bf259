"""Loopback HTTP servers for the downloader tests: a file server with scripted faults and a fake of the
Cityscapes login API. Both bind 127.0.0.1 on a free port and run in a daemon thread."""
from __future__ import annotations

import hashlib
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest


@dataclass
class Script:
    """What the file server does. ``files`` maps a URL path to its bytes."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)   # path -> forced HTTP status (e.g. 404)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before dropping (once each)
    cuts_left: dict[str, int] = field(default_factory=dict)  # path -> how many requests get cut
    ignore_range: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    content_type: str = "application/octet-stream"


def _send_body(handler: BaseHTTPRequestHandler, script: Script, path: str, data: bytes) -> None:
    """200 or 206 (honouring Range unless told not to), possibly cut short to simulate a dropped link."""
    start = 0
    header = handler.headers.get("Range")
    if header and not script.ignore_range:
        start = int(header.removeprefix("bytes=").split("-")[0])
        if start >= len(data):
            handler.send_response(416)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
    handler.send_response(206 if start else 200)
    handler.send_header("Content-Type", script.content_type)
    handler.send_header("Content-Length", str(len(data) - start))
    if start:
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    handler.end_headers()
    body = data[start:]
    if script.cuts_left.get(path, 0) > 0:
        script.cuts_left[path] -= 1
        handler.wfile.write(body[: script.cut_after[path]])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(2)  # the peer sees a short body: IncompleteRead
        return
    handler.wfile.write(body)


class _FileHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        script: Script = self.server.script  # type: ignore[attr-defined]
        path = urllib.parse.urlsplit(self.path).path
        script.requests.append(("GET", path, self.headers.get("Range")))
        code = script.status.get(path, 200 if path in script.files else 404)
        if code != 200:
            self.send_error(code)
            return
        _send_body(self, script, path, script.files[path])

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


def _serve(handler: type, state_name: str, state: object) -> Iterator[tuple[str, object]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    setattr(server, state_name, state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def file_server() -> Iterator[tuple[str, Script]]:
    """(base URL, script) of a file server on 127.0.0.1."""
    yield from _serve(_FileHandler, "script", Script())  # type: ignore[misc]


# ------------------------------------------------------------------------------------- Cityscapes fake
@dataclass
class CityscapesState:
    username: str
    password: str
    packages: dict[int, bytes]                # packageID -> archive bytes
    cookie: str = "csrftoken-like-session-42"
    requests: list[tuple[str, str]] = field(default_factory=list)
    posted: list[dict[str, list[str]]] = field(default_factory=list)


LOGIN_PAGE = b"<!DOCTYPE html><html><body><form>Login</form></body></html>"


class _CityscapesHandler(BaseHTTPRequestHandler):
    """Behaves like www.cityscapes-dataset.com as csDownload sees it: a good POST /login answers 302 and
    sets a session cookie; without that cookie every page is the HTML login form with status 200."""

    def do_GET(self) -> None:  # noqa: N802
        state: CityscapesState = self.server.state  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        state.requests.append(("GET", self.path))
        package = int(urllib.parse.parse_qs(parts.query).get("packageID", ["0"])[0])
        logged_in = f"session={state.cookie}" in (self.headers.get("Cookie") or "")
        if parts.path == "/md5-sum/" and logged_in and package in state.packages:
            text = f"{hashlib.md5(state.packages[package]).hexdigest()}  archive.zip\n".encode()
            self._reply(200, text, "text/plain")
        elif parts.path == "/file-handling/" and logged_in and package in state.packages:
            _send_body(self, Script(content_type="application/zip"), parts.path, state.packages[package])
        else:
            self._reply(200, LOGIN_PAGE, "text/html; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        state: CityscapesState = self.server.state  # type: ignore[attr-defined]
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        state.requests.append(("POST", self.path))
        state.posted.append(form)
        if form.get("username") == [state.username] and form.get("password") == [state.password]:
            self.send_response(302)
            self.send_header("Location", "/")
            self.send_header("Set-Cookie", f"session={state.cookie}; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._reply(200, LOGIN_PAGE, "text/html; charset=utf-8")

    def _reply(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def cityscapes_server(state: CityscapesState) -> Iterator[tuple[str, CityscapesState]]:
    """Generator for a fixture: (base URL, state) of the fake Cityscapes site."""
    yield from _serve(_CityscapesHandler, "state", state)  # type: ignore[misc]
