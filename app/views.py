"""The map as a Panel viewer: :class:`MapApp` composes one session's plot, side panel and loads.

A :class:`MapApp` wires a :class:`~mapstream.app.session.MapSession` (the loads, no Panel) to a
:class:`~mapstream.app.plot.MapPlot` (views and clicks in, images out) and a
:class:`~mapstream.app.sidebar.Sidebar` (widgets bound to the session's state), and ties the
session to Panel's life cycle: the preload on ``pn.state.onload``, the metrics refresh, error
notifications, and closing with the browser session. Nothing session-specific lives in module
globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import weakref
from collections.abc import Callable
from typing import Any

import panel as pn
import param

from mapstream.layers.viewport import Viewport

from .plot import MapPlot, TileLayerView
from .session import MapSession
from .sidebar import Sidebar
from .state import MapState, by_priority, initial_viewport

__all__ = ["MapApp", "live_sessions"]

_LIVE: weakref.WeakSet[MapApp] = weakref.WeakSet()


def live_sessions() -> int:
    """Map sessions of this process not closed yet (what the stats route reports)."""
    return sum(1 for app in list(_LIVE) if not app.session.closed)


def _served_tiles() -> tuple[Any, str, str | None] | None:
    """(tile service, route prefix, page path) when this session is served with the tile route.

    Opt-in for now (``MAPSTREAM_TILES=1``): the browser tests still read the image path's
    per-layer state, and until they read the tile renderers' pixels the default stays the
    images pushed by the session (the path notebooks use). None too in a notebook without a
    server.
    """
    if os.environ.get("MAPSTREAM_TILES", "0").strip().lower() not in ("1", "true", "yes", "on"):
        return None
    ctx = getattr(pn.state.curdoc, "session_context", None)
    if ctx is None or getattr(ctx, "server_context", None) is None:
        return None
    from .routes import install
    from .tiles import tile_service

    prefix = install()
    if prefix is None:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    path = None
    with contextlib.suppress(Exception):
        path = ctx.request.path
    return tile_service(loop), prefix, path


def connection_count(doc: Any) -> int | None:
    """How many browser connections the Bokeh server session of ``doc`` has; None if unknown.

    None outside a server (a notebook, a test without one). Bokeh has no public hook for a
    connection that goes away (only for a session destroyed, which can be much later), so this
    reads the server session behind the document's session context.
    """
    session = getattr(getattr(doc, "session_context", None), "_session", None)
    count = getattr(session, "connection_count", None)
    return count if isinstance(count, int) else None


def _forget_views(session_context: Any) -> None:
    """Drop what Panel still keeps of a destroyed session's views.

    Panel 1.9 leaves the notification area of every served session in ``pn.state._views``
    (one entry, with its document and its notifications, per session ever served); this hook
    runs after Panel's own clean-up, and what is left for that document is garbage.
    """
    doc = getattr(session_context, "_document", None)
    views = getattr(pn.state, "_views", None)
    if doc is None or not isinstance(views, dict):
        return
    for ref, entry in list(views.items()):
        if isinstance(entry, tuple) and len(entry) > 2 and entry[2] is doc:
            views.pop(ref, None)


def _attribution(spec: Any) -> str:
    """A layer's attribution as HTML for the map's corner (escaped: catalogs are text)."""
    text = getattr(spec, "attribution", None)
    return html.escape(str(text)) if text else ""


def _notify_error(text: str) -> None:
    notifications = getattr(pn.state, "notifications", None)
    if notifications is not None:
        with contextlib.suppress(Exception):
            notifications.error(html.escape(text), duration=6000)


class MapApp(pn.viewable.Viewer):
    """One session's map and side panel.

    Parameters
    ----------
    catalog
        A ``mapstream.layers.catalog.Catalog`` (``.layers`` of LayerSpec).
    fetcher
        The fetcher for every layer (default: ``mapstream.layers.http.shared_fetcher()``).
    build_layer
        ``await build_layer(spec, fetcher)`` makes a layer (default:
        ``mapstream.layers.catalog.build_layer``); tests pass fakes.

    Attributes
    ----------
    session, plot, sidebar
        The loads, the plot and the side panel.
    """

    height = param.Integer(default=600, doc="Minimum height of the map in pixels.")

    def __init__(
        self,
        catalog: Any,
        *,
        fetcher: Any = None,
        build_layer: Callable[..., Any] | None = None,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.catalog = catalog
        viewport = initial_viewport(catalog, self.height)
        specs = by_priority(catalog.layers)
        served = _served_tiles() if fetcher is None and build_layer is None else None
        service = served[0] if served else None
        self.session = MapSession(catalog, viewport, fetcher=fetcher, build_layer=build_layer,
                                  show=self._show, notify=_notify_error, tiles=service,
                                  on_tiles=self._on_tiles, on_layer_visible=self._on_layer_visible)
        tiles = None
        if served is not None:
            _, self._prefix, self._page_path = served
            tiles = {
                s.name: TileLayerView(self._tile_url(s.name), _attribution(s), float(s.style.opacity),
                                      s.name in self.session.state.visible)
                for s in specs
            }
        self.plot = MapPlot([s.name for s in specs], viewport, self.height, self._on_view, self._on_tap,
                            tiles=tiles)
        self.sidebar = Sidebar(self.session.state, specs, self._on_retry)
        self._layout = pn.Row(self.sidebar, self.plot.pane, sizing_mode="stretch_both", min_height=self.height)
        self._shown = False
        self._metrics_cb: Any = None
        self._connected = False
        _LIVE.add(self)

    def _tile_url(self, name: str) -> str:
        from .routes import tile_url

        url = tile_url(self.session.tokens[name], self._page_path, self._prefix)
        revision = self.session.revisions.get(name, 0)
        return f"{url}?r={revision}" if revision else url

    def _show(self, name: str, image: Any) -> None:
        self.plot.show(name, image)

    def _on_tiles(self, name: str, token: str, revision: int) -> None:
        self.plot.set_tile_url(name, self._tile_url(name))

    def _on_layer_visible(self, name: str, visible: bool) -> None:
        self.plot.set_visible(name, visible)

    @property
    def state(self) -> MapState:
        """The session's state (viewport, visible layers, statuses)."""
        return self.session.state

    @property
    def fetcher(self) -> Any:
        """The fetcher every layer of the map uses."""
        return self.session.fetcher

    async def layer(self, name: str) -> Any:
        """The map's own engine layer ``name`` (built once per session)."""
        return await self.session.layer(name)

    def __panel__(self) -> pn.viewable.Viewable:
        if self._shown:
            return self._layout
        self._shown = True
        self.session.preloading = True  # shown: loads start with the preload, in priority order
        self.session.use_running_loop()
        if pn.state.curdoc is not None and self.plot.doc is None:
            self.plot.doc = pn.state.curdoc
        # document ready: a browser is connected, whether or not a tick has seen it yet (a tab
        # closed within the first second would otherwise never count as having been open)
        pn.state.onload(self._mark_connected)
        pn.state.onload(self.session.preload)
        with contextlib.suppress(Exception):
            pn.state.on_session_destroyed(self._on_session_destroyed)
        with contextlib.suppress(Exception):
            self._metrics_cb = pn.state.add_periodic_callback(self._tick, period=1000)
        return self._layout

    def _tick(self) -> None:
        """Every second: the metrics line, and whether anybody still looks at the map."""
        self.session.refresh_metrics()
        self.watch_connection(connection_count(self.plot.doc))

    def _mark_connected(self) -> None:
        self._connected = True

    def watch_connection(self, count: int | None) -> None:
        """Suspend the loads when the browser's last connection has gone; resume when one is back.

        A closed tab's session lives on in the server until Bokeh destroys it, and loads
        pushing frames into it keep it from being destroyed: they stop now instead.
        """
        if count is None:
            return
        if count > 0:
            self._connected = True
            self.session.schedule(self.session.resume)
        elif self._connected:  # never suspended before the browser first connects
            self.session.schedule(self.session.suspend)

    def _on_view(self, viewport: Viewport, sized: bool) -> None:
        session = self.session
        if sized:
            session.view_reported()
            if session.tiles is not None and not session._preload_started:
                # tile renderers hold document ready back until their tiles are in: the first
                # view the browser reports starts the preload (once; onload would be late)
                self._connected = True
                session.schedule(lambda: asyncio.ensure_future(session.preload()))
        if viewport != session.state.viewport:
            session.schedule(lambda: session.set_viewport(viewport))

    def _on_tap(self, lon: float, lat: float) -> None:
        self.session.schedule(lambda: self.session.inspect(lon, lat))

    def _on_retry(self, name: str) -> None:
        self.session.schedule(lambda: self.session.retry(name))

    def _on_session_destroyed(self, session_context: Any) -> None:
        _forget_views(session_context)
        if not self.session.schedule(lambda: asyncio.ensure_future(self.aclose())):
            self.session.closed = True  # no loop ever ran a load: nothing to cancel

    async def aclose(self) -> None:
        """Stop every task of the map (a notebook never ends its session: call this)."""
        if self._metrics_cb is not None:
            with contextlib.suppress(Exception):
                self._metrics_cb.stop()
            self._metrics_cb = None
        await self.session.aclose()
        self.plot.clear()
