"""A fault-injecting HTTP server on 127.0.0.1 for tests, and the ``fault_server`` fixture.

Every response is steered by the query string, so a test states the fault in the URL::

    GET /any/path?delay=0.1            answer after 100 ms (no answer if the client hangs up first)
    GET /p?status=503&fail_first=2     503 for the first 2 hits of /p, then 200
    GET /p?status=429&retry_after=1    429 with Retry-After: 1 (with fail_first, as above)
    GET /p?size=5000                   a 5000-byte body (default: a short text naming the path)
    GET /p?reset=1                     close the connection without answering (fail_first too)
    GET /p?truncate=1                  announce the full length, send half the body, close
    GET /p?stall=5                     send headers and half the body, then wait 5 s
    GET /p?etag=v1                     ETag "v1"; If-None-Match "v1" -> 304 without a body
    GET /p?last_modified=1             Last-Modified (fixed date); If-Modified-Since -> 304
    GET /p?cc=max-age%3D60             Cache-Control header as given
    GET /p?chunked=1                   no Content-Length: chunked transfer encoding
    GET /p?status=302&location=/q      a redirect (any status) with this Location
    GET /p?status=302&redirect_self=1  a redirect to exactly this request target (a loop)
    GET /p?gzip=1                      the body gzip-compressed (Content-Encoding: gzip)

The server counts hits per path (query ignored), requests in progress and the peak, open
connections, and keeps every request's headers and arrival time, so tests can assert what
reached the wire. A client hanging up mid-answer is a normal path here: no traceback. Use in
tests::

    from tests.support.faultserver import fault_server  # noqa: F401  (the fixture)

    async def test_x(fault_server):
        url = fault_server.url("/a", delay=0.1)
"""

from __future__ import annotations

import gzip
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

__all__ = ["FaultServer", "fault_server"]

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


class _Handler(BaseHTTPRequestHandler):
    # Headers and body are written separately: without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # silence stderr
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._connection(+1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._connection(-1)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self._serve(send_body=True)

    def _wait_unless_hung_up(self, seconds: float) -> bool:
        # A client sends nothing while it waits for the answer: the socket turns readable only
        # when it closes (EOF or reset). Returns False as soon as it has.
        deadline = time.monotonic() + seconds
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if not readable:
            return True
        try:
            gone = not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            gone = True
        if not gone:  # bytes after all (nothing reads them before the answer): wait it out
            time.sleep(max(0.0, deadline - time.monotonic()))
        return not gone

    def _serve(self, send_body: bool) -> None:
        parts = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        owner = self.server.owner
        hit = owner._enter(parts.path, self.command, self.headers, self.path)
        try:
            self._answer(parts.path, q, hit, send_body)
        finally:
            owner._leave()

    def _answer(self, path: str, q: dict[str, str], hit: int, send_body: bool) -> None:
        if "delay" in q and not self._wait_unless_hung_up(float(q["delay"])):
            self.close_connection = True  # the client is gone: so is the handler, at once
            return
        failing = hit <= int(q.get("fail_first", 10**9))
        if q.get("reset") and failing:
            # RST instead of FIN: SO_LINGER with a zero timeout.
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.close_connection = True
            self.connection.close()
            return
        status = int(q["status"]) if "status" in q and failing else 200
        body = (b"x" * int(q["size"])) if "size" in q else f"body of {path}\n".encode()
        etag = f'"{q["etag"]}"' if "etag" in q else None
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        if status == 200 and ((etag and inm == etag) or ("last_modified" in q and ims == LAST_MODIFIED)):
            status = 304
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        if "last_modified" in q:
            self.send_header("Last-Modified", LAST_MODIFIED)
        if "cc" in q:
            self.send_header("Cache-Control", q["cc"])
        if "retry_after" in q and status in (429, 503):
            self.send_header("Retry-After", q["retry_after"])
        if "set_cookie" in q:
            self.send_header("Set-Cookie", q["set_cookie"])
        if "location" in q:
            self.send_header("Location", q["location"])
        if q.get("redirect_self"):
            self.send_header("Location", self.path)
        if q.get("gzip") and status != 304:
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", "text/plain")
        if status == 304:
            self.end_headers()
            return
        if q.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if send_body:
                for i in range(0, len(body), 65536):
                    piece = body[i : i + 65536]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        if q.get("truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if "stall" in q:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.server.owner._stop.wait(float(q["stall"]))
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer is what the size-limit and timeout tests do on purpose:
        # not worth a traceback on stderr. Anything else is printed as usual.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class FaultServer:
    """The server; start with :meth:`start` (or use the ``fault_server`` fixture)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, str, Any]] = []
        self.raw_paths: list[str] = []  # request targets exactly as received
        self.current = 0
        self.peak = 0
        self.connections = 0
        self.times: list[tuple[str, float]] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FaultServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # release stalled handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/", **faults: object) -> str:
        """The URL of ``path`` with ``faults`` in the query string (see the module docstring)."""
        query = urlencode({k: v for k, v in faults.items() if v is not None})
        return f"{self.base}{path}{'?' + query if query else ''}"

    def headers_of(self, path: str) -> list[Any]:
        """Headers of every request to ``path`` (case-insensitive ``HTTPMessage``), in order."""
        with self._lock:
            return [h for p, _, h in self.requests if p == path]

    def reset_counts(self) -> None:
        with self._lock:
            self.hits.clear()
            self.requests.clear()
            self.raw_paths.clear()
            self.peak = self.current

    def _enter(self, path: str, method: str, headers: Any, raw: str = "") -> int:
        with self._lock:
            self.raw_paths.append(raw)
            self.hits[path] += 1
            self.requests.append((path, method, headers))
            self.times.append((path, time.monotonic()))
            self.current += 1
            self.peak = max(self.peak, self.current)
            return self.hits[path]

    def _connection(self, n: int) -> None:
        with self._lock:
            self.connections += n

    def arrivals(self, path: str) -> list[float]:
        """``time.monotonic()`` of each request to ``path`` on arrival."""
        with self._lock:
            return [t for p, t in self.times if p == path]

    def _leave(self) -> None:
        with self._lock:
            self.current -= 1


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A started :class:`FaultServer`, stopped at teardown."""
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()
