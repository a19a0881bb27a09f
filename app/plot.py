"""The map plot: Bokeh tile renderers (served) or GeoViews ``RGB`` images (a notebook).

On a server, :class:`MapPlot` draws each layer with Bokeh's own ``TileRenderer`` over the
server's tile route (:mod:`mapstream.app.routes`), stacked in priority order, lower underneath:
the browser loads the tiles of each view itself, progressively, draws lower-zoom parents while a
zoom loads, wraps the world and caches what it has seen; nothing is pushed through HoloViews
per view. Without a tile route (a notebook without a server), each layer is a ``gv.RGB`` fed by
an ``hv.streams.Pipe`` into a ``DynamicMap``, as the session renders it.

Either way the plot holds the ``RangeXY`` / ``PlotSize`` / ``SingleTap`` streams of the view
and a hook that gives it the Bokeh figure, so that a view of another shape than the plot is
widened to equal aspect (one metre as wide as it is tall) and shown exactly. It reports views
and clicks to callbacks and knows nothing of loading.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import cartopy.crs as ccrs
import geoviews as gv
import geoviews.plotting.bokeh  # noqa: F401  (registers the bokeh options without notebook output)
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401
import numpy as np
import panel as pn

from mapstream.layers.projection import mercator_to_lonlat
from mapstream.layers.types import Bounds
from mapstream.layers.viewport import Viewport

from .render import Image
from .state import equal_aspect, viewport_from_ranges

__all__ = ["MapPlot", "TileLayerView", "rgb_element"]

if hv.Store.current_backend != "bokeh":
    hv.Store.set_current_backend("bokeh")

def rgb_element(data: Image | None, placeholder: Bounds = Bounds(0.0, 0.0, 1.0, 1.0)) -> gv.RGB:
    """A ``gv.RGB`` in Web Mercator for an :class:`~mapstream.app.render.Image`.

    None gives a transparent image over ``placeholder`` (the initial view, so that the plot's
    initial ranges are the initial view).
    """
    if data is None:
        rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # one pixel has no inferable bounds
        bounds = placeholder
    else:
        rgba, bounds = data.rgba, data.bounds
        if rgba.shape[0] < 2 or rgba.shape[1] < 2:
            rgba = np.repeat(np.repeat(rgba, 2, axis=0), 2, axis=1)
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = bounds
    xs = np.linspace(x0, x1, w, endpoint=False) + (x1 - x0) / (2 * w)
    ys = np.linspace(y0, y1, h, endpoint=False) + (y1 - y0) / (2 * h)
    flipped = rgba[::-1]  # row 0 at the bottom for increasing ys
    data_ = (xs, ys, *(flipped[..., i] for i in range(4)))
    return gv.RGB(data_, vdims=["R", "G", "B", "A"], crs=ccrs.GOOGLE_MERCATOR)


class TileLayerView(NamedTuple):
    """How one layer is drawn by a tile renderer: its tiles' URL template and its look."""

    url: str
    attribution: str = ""
    alpha: float = 1.0
    visible: bool = True


class MapPlot:
    """The session's plot of every layer.

    Parameters
    ----------
    names
        The layers, bottom first.
    viewport
        The initial view (the plot's initial ranges).
    height
        Minimum height in pixels.
    on_view
        ``on_view(viewport, sized)`` for each view the browser reports (the same view again,
        too); ``sized`` once the browser has reported the plot's size (the view then has the
        plot's aspect).
    on_tap
        ``on_tap(lon, lat)`` for a click on the map.
    tiles
        Layer name -> :class:`TileLayerView`: draw those layers with tile renderers (a server
        with the tile route). None: every layer is an image sent through :meth:`show`.

    Attributes
    ----------
    viewport
        The last view reported (its size stands in while the browser has reported none).
    pipes
        Layer name -> the ``Pipe`` its images go through (layers without tiles).
    renderers
        Layer name -> its Bokeh ``TileRenderer`` (once the figure exists).
    range_stream, size_stream, tap_stream
        The HoloViews streams of the view and the clicks.
    pane
        The ``pn.pane.HoloViews`` to lay out.
    doc
        The Bokeh document of the session (pipes are sent from the event loop in it).
    """

    def __init__(
        self,
        names: list[str],
        viewport: Viewport,
        height: int,
        on_view: Callable[[Viewport, bool], None],
        on_tap: Callable[[float, float], None],
        tiles: dict[str, TileLayerView] | None = None,
    ) -> None:
        self.viewport = viewport
        self._on_view, self._on_tap = on_view, on_tap
        self.doc: Any = pn.state.curdoc
        self.figure: Any = None  # the Bokeh figure, once rendered (equal aspect)
        self.tiles = dict(tiles or {})
        self.renderers: dict[str, Any] = {}
        (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
        element = partial(rgb_element, placeholder=viewport.bounds)
        self.pipes = {name: hv.streams.Pipe(data=None) for name in names if name not in self.tiles}
        dmaps = [hv.DynamicMap(element, streams=[self.pipes[name]]) for name in names if name in self.pipes]
        first = dmaps[0] if dmaps else hv.DynamicMap(element, streams=[hv.streams.Pipe(data=None)])
        self.range_stream = hv.streams.RangeXY(source=first)
        self.size_stream = hv.streams.PlotSize(source=first)
        self.tap_stream = hv.streams.SingleTap(source=first)
        self.range_stream.add_subscriber(self._view_changed)
        self.size_stream.add_subscriber(self._view_changed)
        self.tap_stream.add_subscriber(self._tapped)
        rgb_opts = dict(xaxis=None, yaxis=None, tools=["tap"], active_tools=["wheel_zoom", "pan"])
        overlay = hv.Overlay([d.opts(**rgb_opts, backend="bokeh") for d in (dmaps or [first])]).collate()
        opts: dict[str, Any] = dict(xlim=(x0, x1), ylim=(y0, y1), responsive=True, min_height=height,
                                    hooks=[_figure_hook(self)])
        self.pane = pn.pane.HoloViews(
            overlay.opts(**opts, backend="bokeh"), backend="bokeh", sizing_mode="stretch_both", min_height=height,
        )

    def show(self, name: str, image: Image | None) -> None:
        """Draw ``image`` for layer ``name`` (None: clear it), in the session's document.

        A layer drawn by a tile renderer ignores it (the browser loads its tiles).
        """
        pipe = self.pipes.get(name)
        if pipe is None:
            return
        if self.doc is not None:
            from panel.io.state import set_curdoc

            with set_curdoc(self.doc):
                pipe.send(image)
        else:
            pipe.send(image)

    def clear(self) -> None:
        """Drop every image (the session is closed)."""
        for pipe in self.pipes.values():
            pipe.clear()

    def add_tile_renderers(self, figure: Any) -> None:
        """Put a tile renderer per tiled layer into ``figure``, lowest priority underneath (once)."""
        if not self.tiles or self.renderers:
            return
        from bokeh.models import TileRenderer, WMTSTileSource

        from .tiles import MAX_ZOOM

        made, credited = [], set()
        for name, view in self.tiles.items():
            attribution = "" if view.attribution in credited else view.attribution  # each credit once
            credited.add(view.attribution)
            source = WMTSTileSource(url=view.url, attribution=attribution, min_zoom=0, max_zoom=MAX_ZOOM,
                                    wrap_around=True)
            renderer = TileRenderer(tile_source=source, alpha=view.alpha, visible=view.visible,
                                    name=f"mapstream-{name}")
            self.renderers[name] = renderer
            made.append(renderer)
        figure.renderers = [*made, *figure.renderers]

    def _on_doc(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (a change to Bokeh models) in the session's document, on its next tick."""
        doc = self.doc
        if doc is not None and getattr(doc, "session_context", None) is not None:
            with contextlib.suppress(Exception):
                doc.add_next_tick_callback(fn)
                return
        with contextlib.suppress(Exception):
            fn()

    def set_tile_url(self, name: str, url: str) -> None:
        """Point layer ``name``'s tile renderer at ``url`` (the browser loads its tiles anew)."""
        if name in self.tiles:
            self.tiles[name] = self.tiles[name]._replace(url=url)
        renderer = self.renderers.get(name)
        if renderer is not None and renderer.tile_source.url != url:
            self._on_doc(lambda: setattr(renderer.tile_source, "url", url))

    def set_visible(self, name: str, visible: bool) -> None:
        """Show or hide layer ``name``'s tile renderer (the browser keeps its tiles)."""
        if name in self.tiles:
            self.tiles[name] = self.tiles[name]._replace(visible=visible)
        renderer = self.renderers.get(name)
        if renderer is not None:
            self._on_doc(lambda: setattr(renderer, "visible", bool(visible)))

    def set_alpha(self, name: str, alpha: float) -> None:
        """Layer ``name``'s opacity (0 to 1), drawn by the browser."""
        if name in self.tiles:
            self.tiles[name] = self.tiles[name]._replace(alpha=alpha)
        renderer = self.renderers.get(name)
        if renderer is not None:
            self._on_doc(lambda: setattr(renderer, "alpha", float(alpha)))

    def _view_changed(self, **_: Any) -> None:
        r, s = self.range_stream, self.size_stream
        vp = viewport_from_ranges(r.x_range, r.y_range, s.width or self.viewport.width,
                                  s.height or self.viewport.height)
        if vp is None:
            return
        sized = bool(s.width and s.height)
        if sized:
            # A map keeps one metre as wide as it is tall, whatever the shape of the window:
            # widen the view to the plot's aspect and show exactly that view. (Bokeh's own
            # match_aspect works only with automatic ranges, and the map's are explicit.)
            square = equal_aspect(vp)
            if square != vp:
                vp = square
                self._set_figure_ranges(vp)
        self.viewport = vp
        self._on_view(vp, sized)

    def _tapped(self, x: float | None = None, y: float | None = None, **_: Any) -> None:
        if x is not None and y is not None:
            self._on_tap(*mercator_to_lonlat(float(x), float(y)))

    def _set_figure_ranges(self, viewport: Viewport) -> None:
        """Show ``viewport`` in the browser (Bokeh's ranges, changed from the server)."""
        figure = self.figure
        if figure is None:
            return
        (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range

        def apply() -> None:
            with contextlib.suppress(Exception):  # a figure being torn down with its session
                figure.x_range.update(start=x0, end=x1)
                figure.y_range.update(start=y0, end=y1)

        # On the next tick, not inside the browser's own range change: Bokeh does not echo a
        # change back to the connection whose message caused it, so the browser would never
        # see the corrected ranges.
        doc = self.doc
        if doc is not None and getattr(doc, "session_context", None) is not None:
            with contextlib.suppress(Exception):
                doc.add_next_tick_callback(apply)
                return
        apply()


def _figure_hook(plot: MapPlot) -> Callable[[Any, Any], None]:
    """A HoloViews hook that gives ``plot`` its Bokeh figure (to correct its ranges).

    It holds the plot weakly: HoloViews keeps an element's options, hooks included, in a global
    store, and a bound method there would keep every closed session alive.
    """
    ref = weakref.ref(plot)

    def hook(bokeh_plot: Any, element: Any) -> None:
        target = ref()
        if target is not None:
            target.figure = bokeh_plot.state
            target.add_tile_renderers(bokeh_plot.state)

    return hook
