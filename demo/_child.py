"""A loopback server in a child process: the one launcher both demo servers use.

The child is ``python -m MODULE SPEC.json`` in its own process group (so :meth:`stop` ends it
and anything it started), with this checkout importable. It prints ``READY <port>`` on stdout
once it listens; its stderr goes to a log file that a failed start quotes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from mapstream.layers.errors import ServiceError

__all__ = ["ChildServer"]


class ChildServer:
    """Base class: subclasses set :attr:`module` and :attr:`label` and build the spec.

    Raises
    ------
    ServiceError
        From :meth:`start`: the child exited, or did not report its port within ``timeout``
        seconds (the end of its stderr is in the message).
    """

    #: The module run as ``python -m``; it reads the spec file named by its first argument.
    module: str = ""
    #: What the server is called in errors and temporary directory names.
    label: str = "server"

    def __init__(self, *, port: int = 0, env: Mapping[str, str] | None = None) -> None:
        self.port = port
        self.env = dict(env or {})
        self.url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def spec(self, workdir: str) -> dict[str, Any]:
        """What the child needs to know, written as JSON to its spec file."""
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """Block until the server answers requests (after it reported its port)."""

    @property
    def pid(self) -> int | None:
        """Process id of the child (None when stopped)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 60.0) -> Self:
        """Start the child and wait until it is ready (idempotent)."""
        if self._proc is not None:
            return self
        self._tmp = tempfile.TemporaryDirectory(prefix=f"mapstream-{self.label.replace(' ', '-')}-")
        workdir = Path(self._tmp.name)
        spec = workdir / "spec.json"
        spec.write_text(json.dumps({"port": self.port, **self.spec(str(workdir))}))
        env = {**os.environ, **self.env}
        # The child must import this package even when the caller is not run from the repo.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(workdir / "stderr.log", "wb") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", self.module, str(spec)],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                start_new_session=True,  # its own process group: stop() ends all of it
            )
        proc = self._proc
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith(b"READY "):
            self._fail("did not start")
        self.url = f"http://127.0.0.1:{int(line[0].split()[1])}"
        try:
            self.wait_ready(timeout)
        except ServiceError:
            self.stop()
            raise
        return self

    def _fail(self, what: str) -> None:
        err = self.stderr()[-2000:]
        self.stop()
        raise ServiceError(f"{self.label} {what}: {err}")

    async def astart(self, timeout: float = 60.0) -> Self:
        """:meth:`start` without blocking the event loop."""
        return await asyncio.to_thread(self.start, timeout)

    def stats(self) -> dict[str, Any]:
        """The child's request counters (``GET /__stats``)."""
        with urllib.request.urlopen(f"{self.url}/__stats", timeout=10) as r:
            return json.loads(r.read())

    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        if self._tmp is None:
            return ""
        try:
            return (Path(self._tmp.name) / "stderr.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End the child's whole process group and remove its files (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if proc.stdout is not None:
                proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
