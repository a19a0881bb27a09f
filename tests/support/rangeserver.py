"""A loopback file server with HTTP range semantics, and the ways servers get ranges wrong.

``GET /<name>`` answers the bytes of ``files[name]``: ``206 Partial Content`` with a
``Content-Range`` for a single ``Range: bytes=a-b`` (also ``a-`` and ``-n``), ``416`` with
``Content-Range: bytes */size`` for a range past the end, ``200`` with the whole body
otherwise. Every answer has a strong ``ETag`` (a hash of the bytes) and honours ``If-Match``
(``412`` when it does not match) and ``If-None-Match`` (``304``); ``max_age`` adds
``Cache-Control: max-age``.

Knobs on :class:`RangeServer` (``mode``): ``"ranges"`` (the above), ``"ignore"`` (a server that
ignores ``Range``: always ``200`` and the whole file), ``"416"`` (every ``Range`` answered
416), ``"wrong"`` (a 206 whose ``Content-Range`` starts one byte late), ``"no-etag"`` (no
validators). ``latency`` adds seconds per request. What it saw: ``requests`` (``(path,
range header)`` in order) and ``bytes_sent``. ``files`` may be replaced while serving (a file
that changes mid-read).

The server parses ranges itself rather than calling mapstream's code, which it checks.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeServer:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 in a thread; see the module docstring."""

    def __init__(
        self, files: dict[str, bytes] | None = None, *, mode: str = "ranges", latency: float = 0.0,
        max_age: int | None = None,
    ):
        self.files = dict(files or {})
        self.max_age = max_age
        self.mode = mode
        self.latency = latency
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def etag(body: bytes) -> str:
        return '"' + hashlib.sha1(body).hexdigest()[:16] + '"'

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        with self._lock:
            self.bytes_sent += len(body)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        rng = h.headers.get("Range")
        with self._lock:
            self.requests.append((h.path, rng))
        if self.latency:
            time.sleep(self.latency)
        body = self.files.get(h.path.lstrip("/").split("?", 1)[0])
        if body is None:
            return self._send(h, 404, b"not found", {"Content-Type": "text/plain"})
        size = len(body)
        headers = {"Content-Type": "image/tiff", "Accept-Ranges": "bytes"}
        tag = self.etag(body)
        if self.mode != "no-etag":
            headers["ETag"] = tag
        if self.max_age is not None:
            headers["Cache-Control"] = f"max-age={self.max_age}"
        match = h.headers.get("If-Match")
        if match is not None and match.strip() != "*" and tag not in [t.strip() for t in match.split(",")]:
            return self._send(h, 412, b"", headers)
        inm = h.headers.get("If-None-Match")
        if inm is not None and self.mode != "no-etag" and tag in [t.strip() for t in inm.split(",")]:
            return self._send(h, 304, b"", headers)
        if rng is None or self.mode == "ignore":
            return self._send(h, 200, body, headers)
        if self.mode == "416":
            return self._send(h, 416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        m = _RANGE.match(rng.strip())
        if not m or not (m.group(1) or m.group(2)):
            return self._send(h, 200, body, headers)  # not a range we understand: ignored
        if m.group(1):
            first = int(m.group(1))
            last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # a suffix
            first, last = max(0, size - int(m.group(2))), size - 1
        if first >= size or last < first:
            return self._send(h, 416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        shown = first + 1 if self.mode == "wrong" else first
        headers["Content-Range"] = f"bytes {shown}-{last}/{size}"
        self._send(h, 206, body[first : last + 1], headers)

    def ranged(self) -> list[tuple[str, str | None]]:
        """The requests that carried a ``Range``."""
        with self._lock:
            return [r for r in self.requests if r[1] is not None]


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    server = RangeServer().start()
    try:
        yield server
    finally:
        server.stop()
