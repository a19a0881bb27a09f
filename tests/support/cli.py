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
    """``python -m app.cli ARGS`` as a real process (what the console script runs)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
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
