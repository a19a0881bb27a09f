"""A loopback server that misbehaves on purpose, and the payloads it serves (issue 17).

:class:`HostileServer` binds any loopback address (``127.0.0.2`` stands for an "internal" host
next to a "public" ``127.0.0.1``: Linux routes all of ``127.0.0.0/8`` to ``lo``) and answers
each path with a :class:`Route`: a status, headers, a body, and how the body is sent (all at
once, or dripped a few bytes at a time with a pause between). Unknown paths under a route
ending in ``/`` use that route (``"/tiles/"`` serves every tile). It records each request's
path and headers.

:class:`RawServer` sends canned bytes that no HTTP library would (bad status lines, framing,
redirects to impossible URLs).

Payloads: :func:`bomb_png` (a valid PNG that declares a huge size in a few kB: a decompression
bomb) and :func:`solid_png`.

Use the ``hostile_server`` fixture (on 127.0.0.1) or start one with :meth:`HostileServer.start`.
"""

from __future__ import annotations

import functools
import io
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest

__all__ = ["HostileServer", "RawServer", "Route", "bomb_png", "solid_png", "hostile_server"]


@functools.lru_cache(maxsize=8)
def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit grey PNG of ``width`` x ``height`` zero pixels, compressed row by row (a 20 000
    x 20 000 image is ~6 kB here and 1.6 GB as RGBA once decoded). Built without Pillow, which
    would need the whole image in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "none", then the packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.lru_cache(maxsize=32)
def solid_png(colour: tuple[int, int, int, int], size: int = 256) -> bytes:
    """A ``size`` px PNG of one RGBA colour."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Route:
    """How a path is answered.

    Attributes
    ----------
    body
        The body (sent whole unless ``drip`` is set).
    status
        The status code.
    headers
        Extra response headers (``Location`` for a redirect, ...).
    content_type
        ``Content-Type``.
    drip
        Seconds between pieces of ``drip_bytes`` bytes (``None``: all at once). The declared
        ``Content-Length`` is the whole body's unless ``chunked``.
    drip_bytes
        Bytes per piece.
    chunked
        No ``Content-Length``: chunked transfer encoding.
    """

    body: bytes = b"ok\n"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"
    drip: float | None = None
    drip_bytes: int = 1
    chunked: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        route = owner._route(path, self.headers)
        if route is None:
            self.send_error(404)
            return
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", route.content_type)
        if route.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        body, step = route.body, route.drip_bytes
        pieces = [body] if route.drip is None else [body[i : i + step] for i in range(0, len(body), step)]
        try:
            for i, piece in enumerate(pieces):
                if i and route.drip is not None and owner._stop.wait(route.drip):
                    break  # the server is stopping
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if route.chunked else piece)
                self.wfile.flush()
            else:
                if route.chunked:
                    self.wfile.write(b"0\r\n\r\n")
                return
            self.close_connection = True
        except OSError:  # the client hung up (what a timeout does): not an error here
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HostileServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-answer is the point of these tests


class HostileServer:
    """The server: :meth:`route` paths, :meth:`start`, :meth:`stop`.

    Parameters
    ----------
    host
        The loopback address to bind (``127.0.0.2`` is another host to the fetcher).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def route(self, path: str, **settings: Any) -> str:
        """Answer ``path`` as :class:`Route` (``settings``) says; returns its URL."""
        self.routes[path] = Route(**settings)
        return self.url(path)

    def url(self, path: str = "/") -> str:
        return f"{self.base}{path}"

    @property
    def base(self) -> str:
        assert self._httpd is not None
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(p == path for p, _ in self.requests)

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """Headers (names lower-cased) of every request to ``path``, in order."""
        with self._lock:
            return [h for p, h in self.requests if p == path]

    def _route(self, path: str, headers: Any) -> Route | None:
        with self._lock:
            self.requests.append((path, {k.lower(): v for k, v in headers.items()}))
        if path in self.routes:
            return self.routes[path]
        prefixes = [p for p in self.routes if p.endswith("/") and path.startswith(p)]
        return self.routes[max(prefixes, key=len)] if prefixes else None

    def start(self) -> HostileServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hostile", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases dripping handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawServer:
    """Answers each request with canned bytes, whatever HTTP says: ``answers[path]`` (the first
    path segment), then closes the connection. For status lines, headers and framing no
    well-behaved server library would send."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, name="raw-hostile", daemon=True)
        self._open = True

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        while self._open:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = conn.recv(65536).decode("latin-1")
                target = request.split(" ", 2)[1] if request.count(" ") >= 2 else "/"
                path = unquote(target.split("?")[0].strip("/"), encoding="latin-1")
                conn.sendall(self.answers.get(path, b""))
            except OSError:
                pass

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        self._sock.close()
        self._thread.join(timeout=10)


@pytest.fixture
def hostile_server() -> Iterator[HostileServer]:
    """A started :class:`HostileServer` on 127.0.0.1, stopped at teardown."""
    with HostileServer() as server:
        yield server
