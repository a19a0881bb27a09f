"""Helpers for the CLI tests: run ``mapstream`` in a subprocess, write catalogs, find dead ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cli_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout importable, its own cache dir."""
    env = dict(os.environ)
    env.pop("MAPSTREAM_CATALOG", None)
    env["MAPSTREAM_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "120"
    env.update(extra)
    return env


def run_mapstream(args: list[str], *, env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``python -m mapstream.app.cli ARGS`` as a real process (what the console script runs)."""
    return subprocess.run(
        [sys.executable, "-m", "mapstream.app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_catalog(path: Path, layers: list[dict[str, Any]]) -> Path:
    """A catalog YAML with ``layers`` (dicts of LayerSpec fields) at ``path``."""
    import yaml

    path.write_text(yaml.safe_dump({"layers": layers}, sort_keys=False), encoding="utf-8")
    return path


def dead_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(stderr: str) -> str:
    """The CLI's error line; fails the test if stderr holds a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, stderr
    return lines[0]


class _LoopbackServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 in a thread; a context manager (start, stop)."""

    def _serve(self, handler: type) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class ValidatorTileServer(_LoopbackServer):
    """A loopback XYZ server that sends ``ETag`` and ``Last-Modified`` (and answers 304).

    ``hits`` counts requests; ``not_modified`` counts conditional requests answered 304.
    Used where the CLI must report cache validators (``mapstream check``).
    """

    LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"

    def __init__(self, max_age: int = 3600) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler

        owner = self
        self.max_age = max_age
        self.hits = 0
        self.not_modified = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                from tests.support.tileserver import render

                with owner._lock:
                    owner.hits += 1
                etag = f'"{abs(hash(self.path))}"'
                if self.headers.get("If-None-Match") == etag:
                    with owner._lock:
                        owner.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                body = render((10, 20, 30, 255), 256, "png")
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", owner.LAST_MODIFIED)
                self.send_header("Cache-Control", f"max-age={owner.max_age}")
                self.end_headers()
                self.wfile.write(body)

        self._serve(Handler)


class ConcurrencyProbe(_LoopbackServer):
    """A loopback tile server that records the peak number of requests in flight at once."""

    def __init__(self, delay: float = 0.05) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler

        owner = self
        self.delay = delay
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                import time

                from tests.support.tileserver import render

                with owner._lock:
                    owner.active += 1
                    owner.peak = max(owner.peak, owner.active)
                done = False
                try:
                    time.sleep(owner.delay)
                    body = render((1, 2, 3, 255), 256, "png")
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:-1])
                    # Not in flight any more before the last byte goes out: the client frees its
                    # slot only once it has the whole body, so its next request cannot be counted
                    # while this thread has yet to reach a decrement after the write (a race
                    # that made a client within its limit look one over on a busy machine).
                    with owner._lock:
                        owner.active -= 1
                    done = True
                    self.wfile.write(body[-1:])
                finally:
                    if not done:
                        with owner._lock:
                            owner.active -= 1

        self._serve(Handler)

    def reset(self) -> None:
        with self._lock:
            self.peak = 0
