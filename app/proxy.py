"""jupyter-server-proxy entry point: the map in the JupyterLab launcher.

Declared in pyproject.toml as ``[project.entry-points.jupyter_serverproxy_servers]
mapstream = "mapstream.app.proxy:setup_mapstream"``. jupyter-server-proxy picks a free port, runs the
command below and proxies ``<base_url>/mapstream/`` to it; ``--prefix`` makes Bokeh build its
URLs under that path and ``--allow-websocket-origin=*`` accepts the proxied websocket.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mapstream.app import APP_DIR

__all__ = ["setup_mapstream"]


def setup_mapstream() -> dict[str, Any]:
    """The jupyter-server-proxy server spec for the map.

    The catalog comes from ``MAPSTREAM_CATALOG`` in the single-user server's environment
    (the embedded demo when unset).

    >>> spec = setup_mapstream()
    >>> spec["command"][1:4]
    ['-m', 'panel', 'serve']
    >>> "--prefix={base_url}mapstream" in spec["command"]
    True
    """
    command = [
        sys.executable, "-m", "panel", "serve", str(APP_DIR), "--warm",
        "--port={port}",
        "--prefix={base_url}mapstream",
        "--allow-websocket-origin=*",
        "--num-procs=1",
    ]
    env = {}
    if os.environ.get("MAPSTREAM_CATALOG"):
        env["MAPSTREAM_CATALOG"] = os.environ["MAPSTREAM_CATALOG"]
    return {
        "command": command,
        "environment": env,
        "absolute_url": True,
        "timeout": 60,
        "launcher_entry": {"enabled": True, "title": "mapstream"},
        "new_browser_tab": True,
    }
