"""The map's HTTP routes on the Panel (Bokeh/Tornado) server: tiles and stats.

- ``<prefix>/mapstream/tiles/<layer>/<z>/<x>/<y>.png``: a layer's tile, from
  :class:`~mapstream.app.tiles.TileService` (async: it awaits the engine on the server's event
  loop, never blocks it). A complete tile is cacheable by the browser (its URL names the layer's
  catalog entry and date filter); a partial or failed one is not.
- ``<prefix>/mapstream/stats``: JSON counters (tile renders, event-loop lag, RSS, CPU time);
  ``?reset=1`` clears the lag samples after answering. What the benchmarks and tests read.

Plain ``panel serve app`` has no option for extra routes (``--plugins`` is one more thing to
type), so :func:`install` adds them to the running server itself: the Bokeh directory app's
``on_server_loaded`` hook (:mod:`mapstream.app.app_hooks`) calls it, and so does every session
(``pn.serve`` and notebooks' ``.show()`` run no hooks). :func:`tile_url` gives a session the
URL template relative to its page, so the map works under ``--prefix`` and behind
jupyter-server-proxy. ``ROUTES`` serves ``panel serve --plugins`` and ``pn.serve(extra_patterns)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import posixpath
import threading
import time
from typing import Any

import tornado.web

from mapstream.layers.errors import LayersError

from .tiles import TileService, UnknownLayerError, tile_service

__all__ = ["ROUTES", "TILE_ROUTE", "install", "installed_prefix", "stats", "tile_url"]

log = logging.getLogger(__name__)

#: The tile route under the server's prefix (a tornado pattern).
TILE_ROUTE = r"/mapstream/tiles/([A-Za-z0-9_-]+)/(\d+)/(-?\d+)/(\d+)\.png"
STATS_ROUTE = r"/mapstream/stats"

_lock = threading.Lock()
_installed: dict[int, str] = {}  # id(BokehTornado) -> its prefix


def _service() -> TileService:
    return tile_service(asyncio.get_running_loop())


class TileHandler(tornado.web.RequestHandler):
    """A layer's tile as PNG."""

    async def get(self, token: str, z: str, x: str, y: str) -> None:
        service = _service()
        task = asyncio.ensure_future(service.tile(token, int(z), int(x), int(y)))
        self._task = task
        try:
            tile = await task
        except asyncio.CancelledError:
            if not self._finished:
                self.set_status(499 if self.request.connection is None else 503)
                self.finish()
            return
        except UnknownLayerError as exc:
            self._fail(404, str(exc))
            return
        except LayersError as exc:
            self._fail(502, str(exc))
            return
        except Exception as exc:  # a bug in a layer: logged once, the tile fails, the server lives
            log.exception("tile %s/%s/%s of %s failed", z, x, y, token)
            self._fail(500, f"{type(exc).__name__}: {exc}")
            return
        self.set_header("Content-Type", "image/png")
        if tile.errors:
            self.set_header("Cache-Control", "no-store")
        else:
            self.set_header("Cache-Control", "public, max-age=86400")
        self.write(tile.png)

    def _fail(self, status: int, text: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.write(text)

    def on_connection_close(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()  # the browser gave up on the tile: our share of its render goes


def stats(reset: bool = False) -> dict[str, Any]:
    """The counters of this process's server: tile renders, loop lag, RSS and CPU time."""
    from .session import _lag_monitor

    out: dict[str, Any] = {}
    with contextlib.suppress(RuntimeError):
        out.update(_service().stats())
    mon = _lag_monitor()
    if mon is not None:
        snap = mon.snapshot()
        out.update(loop_lag_p50_ms=snap["lag_p50_ms"], loop_lag_p99_ms=snap["lag_p99_ms"],
                   loop_lag_max_ms=snap["lag_max_ms"], loop_lag_samples=snap["samples"])
        if reset:
            mon._samples.clear()
    try:
        import psutil

        proc = psutil.Process(os.getpid())
        out["rss_bytes"] = proc.memory_info().rss
        cpu = proc.cpu_times()
        out["cpu_seconds"] = cpu.user + cpu.system
    except Exception:  # no psutil: the figures are missing, not wrong
        out["cpu_seconds"] = time.process_time()
    from .views import live_sessions

    out["sessions"] = live_sessions()
    return out


class StatsHandler(tornado.web.RequestHandler):
    """The server's counters as JSON."""

    def get(self) -> None:
        reset = self.get_argument("reset", "") not in ("", "0", "false")
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(stats(reset=reset)))


#: For ``panel serve --plugins mapstream.app.routes`` and ``pn.serve(extra_patterns=ROUTES)``.
ROUTES = [(TILE_ROUTE, TileHandler), (STATS_ROUTE, StatsHandler)]


def _servers() -> list[Any]:
    try:
        from bokeh.server.tornado import BokehTornado
    except ImportError:  # pragma: no cover - bokeh is a dependency
        return []
    return [obj for obj in gc.get_objects() if isinstance(obj, BokehTornado)]


def install(app: Any = None) -> str | None:
    """Add the routes to the Bokeh server ``app`` (default: every one in this process), once.

    Returns the prefix of the server the routes are on, or None when there is no server (a
    notebook without one).
    """
    with _lock:
        apps = [app] if app is not None else None
        if apps is None:
            if _installed:
                return next(iter(_installed.values()))
            apps = _servers()
        prefix = None
        for server in apps:
            if id(server) in _installed:
                prefix = _installed[id(server)]
                continue
            prefix = str(getattr(server, "_prefix", "") or "").rstrip("/")
            if prefix and not prefix.startswith("/"):
                prefix = "/" + prefix
            server.add_handlers(r".*", [(prefix + pattern, handler) for pattern, handler in ROUTES])
            _installed[id(server)] = prefix
            log.info("mapstream routes on %s/mapstream/", prefix)
        return prefix


def installed_prefix() -> str | None:
    """The prefix the routes were installed under, or None if they are not."""
    with _lock:
        return next(iter(_installed.values()), None)


def tile_url(token: str, request_path: str | None, prefix: str) -> str:
    """The URL template of layer ``token``'s tiles, relative to the page at ``request_path``.

    Relative, so that it resolves wherever the browser sees the page (behind a proxy that
    serves the server under another path too).

    >>> tile_url("osm-1", "/app", "")
    'mapstream/tiles/osm-1/{Z}/{X}/{Y}.png'
    >>> tile_url("osm-1", "/maps/app/", "/maps")
    '../mapstream/tiles/osm-1/{Z}/{X}/{Y}.png'
    >>> tile_url("osm-1", None, "/maps")
    '/maps/mapstream/tiles/osm-1/{Z}/{X}/{Y}.png'
    """
    target = f"{prefix}/mapstream/tiles/{token}"
    if not request_path:
        return target + "/{Z}/{X}/{Y}.png"
    base = posixpath.dirname(request_path) or "/"
    rel = posixpath.relpath(target, base)
    return rel + "/{Z}/{X}/{Y}.png"
