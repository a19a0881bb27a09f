"""A minimal HTTP front that runs a CGI program (MapServer's ``mapserv``) for each request.

``mapserv`` is a CGI binary: each request is one process that reads its request from the
environment (RFC 3875: ``REQUEST_METHOD``, ``QUERY_STRING``, ``PATH_INFO``, ...) and writes
headers, a blank line and the body on stdout. :class:`CGIServer` does what a web server's CGI
module does, on ``127.0.0.1`` in a thread of the test process, with at most ``workers``
programs at once (two cores are shared).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        owner = self.server.owner
        parts = urlsplit(self.path)
        if not parts.path.startswith(owner.script_name):
            return self._send(404, {"Content-Type": "text/plain"}, b"not here")
        env = {
            **owner.env,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "mapstream-tests",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.server_address[1]),
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": owner.script_name,
            "PATH_INFO": parts.path[len(owner.script_name):],
            "QUERY_STRING": parts.query,
            "REMOTE_ADDR": self.client_address[0],
            "HTTP_HOST": self.headers.get("Host", ""),
        }
        for key in ("Accept", "Accept-Encoding", "User-Agent"):
            if key in self.headers:
                env["HTTP_" + key.upper().replace("-", "_")] = self.headers[key]
        with owner.slots:
            with owner.lock:
                owner.requests.append(self.path)
            try:
                res = subprocess.run(
                    [owner.program], env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired:
                return self._send(504, {"Content-Type": "text/plain"}, b"CGI program timed out")
        head, sep, body = res.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = res.stdout.partition(b"\n\n")
        if not sep:
            msg = b"CGI program wrote no headers: " + res.stderr[-500:]
            return self._send(502, {"Content-Type": "text/plain"}, msg)
        headers: dict[str, str] = {}
        status = 200
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        self._send(status, headers, body)

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: CGIServer


class CGIServer:
    """Serve ``program`` as CGI under ``script_name`` on a loopback port (a context manager).

    Parameters
    ----------
    program
        Path of the CGI executable.
    script_name
        The URL path the program is mounted at; the rest of the path is its ``PATH_INFO``.
    env
        Extra environment of every run (e.g. ``MAPSERVER_CONFIG_FILE``).
    workers
        Programs running at once; further requests wait.
    """

    def __init__(self, program: str, *, script_name: str = "/cgi", env: Mapping[str, str] | None = None, workers: int = 4) -> None:
        self.program = program
        self.script_name = script_name
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
        self.slots = threading.BoundedSemaphore(workers)
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)  # bound now: the port is known at once
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The program's URL (``http://127.0.0.1:PORT/SCRIPT_NAME``)."""
        return f"http://127.0.0.1:{self.port}{self.script_name}"

    def start(self) -> CGIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
