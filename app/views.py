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
from collections.abc import Callable
from typing import Any

import panel as pn
import param

from mapstream.layers.viewport import Viewport

from .plot import MapPlot
from .session import MapSession
from .sidebar import Sidebar
from .state import MapState, by_priority, initial_viewport

__all__ = ["MapApp"]


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
        self.plot = MapPlot([s.name for s in specs], viewport, self.height, self._on_view, self._on_tap)
        self.session = MapSession(catalog, viewport, fetcher=fetcher, build_layer=build_layer,
                                  show=self.plot.show, notify=_notify_error)
        self.sidebar = Sidebar(self.session.state, specs, self._on_retry)
        self._layout = pn.Row(self.sidebar, self.plot.pane, sizing_mode="stretch_both", min_height=self.height)
        self._shown = False
        self._metrics_cb: Any = None
        self._connected = False

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
