"""The session's map: a GeoViews plot fed by per-layer loaders, and the side panel.

:class:`MapApp` is one session: its state (:class:`~app.state.MapState`), one
:class:`~app.loader.LayerLoader` per layer, one ``hv.streams.Pipe`` per layer into a
``DynamicMap`` of ``gv.RGB`` images in Web Mercator (tile mosaics as they arrive, feature pages
rasterized by datashader in a worker thread), layer toggles, per-layer status with retry,
metrics and click-to-inspect. Nothing session-specific lives in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
import weakref
from functools import partial
from collections.abc import Callable
from typing import Any

import cartopy.crs as ccrs
import geoviews as gv
import geoviews.plotting.bokeh  # noqa: F401  (registers the bokeh options without notebook output)
import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401
import numpy as np
import panel as pn
import param

from mapstream.layers.metrics import LoopLagMonitor
from mapstream.layers.viewport import Viewport, lonlat_to_mercator, mercator_to_lonlat

from .loader import LayerLoader, LoadEvent
from . import render
from .render import Image, mosaic_image
from .state import MapState, equal_aspect, viewport_from_ranges

__all__ = ["MapApp", "escape_properties", "rgb_element"]

if hv.Store.current_backend != "bokeh":
    hv.Store.set_current_backend("bokeh")

#: Initial view when the catalog gives none: most of the world, in lon/lat.
DEFAULT_BOUNDS = (-170.0, -60.0, 170.0, 75.0)
#: Seconds between two partial renders of a feature layer (the final page always renders).
SHADE_EVERY = 0.4
#: Seconds the preload waits for the browser to report the plot's size before it guesses.
FIRST_VIEW_WAIT = 1.5
#: Seconds the preload gives a layer to itself before it starts the next one.
PRELOAD_STAGGER = 1.0
_LAG_MONITORS: dict[int, LoopLagMonitor] = {}  # one per event loop, shared by its sessions


def _lag_monitor() -> LoopLagMonitor | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    mon = _LAG_MONITORS.get(id(loop))
    if mon is None:
        mon = LoopLagMonitor()
        mon.start()
        _LAG_MONITORS[id(loop)] = mon
    return mon


def rgb_element(data: Image | None, placeholder: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> gv.RGB:
    """A ``gv.RGB`` in Web Mercator for an :class:`~app.render.Image`.

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


def escape_properties(title: str, rows: list[dict[str, Any]], limit: int = 10) -> str:
    """HTML for inspect answers; every key and value is escaped (they are untrusted text).

    >>> escape_properties("Cities", [{"name": "<b>x</b>"}])
    '<div class="inspect"><b>Cities</b><table><tr><th>name</th><td>&lt;b&gt;x&lt;/b&gt;</td></tr></table></div>'
    >>> escape_properties("Empty", [])
    '<div class="inspect"><b>Empty</b>: nothing here</div>'
    """
    head = f'<div class="inspect"><b>{html.escape(str(title))}</b>'
    if not rows:
        return head + ": nothing here</div>"
    parts = [head]
    for row in rows[:limit]:
        cells = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in row.items()
        )
        parts.append(f"<table>{cells}</table>")
    if len(rows) > limit:
        parts.append(f"<i>and {len(rows) - limit} more</i>")
    return "".join(parts) + "</div>"


def _rows_from_info(info: Any) -> list[dict[str, Any]]:
    """Rows from a WMS GetFeatureInfo answer (GeoJSON, other JSON or text)."""
    if isinstance(info, dict) and isinstance(info.get("features"), list):
        return [dict(f.get("properties") or {}) for f in info["features"] if isinstance(f, dict)]
    if isinstance(info, dict):
        return [info]
    text = str(info).strip()
    return [{"answer": text[:2000]}] if text else []


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
    """

    frame_width = param.Integer(default=None, allow_None=True)
    height = param.Integer(default=600)
    view_settle = param.Number(default=0.25, bounds=(0, None), doc="""
        Seconds a view must stay before feature layers load for it (tile layers load at once).""")

    def __init__(
        self,
        catalog: Any,
        *,
        fetcher: Any = None,
        build_layer: Callable[..., Any] | None = None,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        if fetcher is None:
            from mapstream.layers.http import shared_fetcher

            fetcher = shared_fetcher()
        if build_layer is None:
            from mapstream.layers.catalog import build_layer as default_build

            build_layer = default_build
        self.catalog = catalog
        self.fetcher = fetcher
        self._build_layer = build_layer
        self.specs = {spec.name: spec for spec in catalog.layers}
        self.state = MapState(visible=[s.name for s in catalog.layers if getattr(s, "visible", True)])
        self._built: dict[str, asyncio.Future[Any]] = {}
        self._loaders: dict[str, LayerLoader] = {}
        self._images: dict[str, Image | None] = {name: None for name in self.specs}
        self._pipes = {name: hv.streams.Pipe(data=None) for name in self.specs}
        self._inspect_task: asyncio.Task[None] | None = None
        self._metrics_cb: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._doc = pn.state.curdoc
        self._closed = False
        self._hooked = False
        self._preloading = False
        self._preloaded: set[str] = set()
        self._settle_handle: asyncio.TimerHandle | None = None
        self._figure: Any = None  # the Bokeh figure, once rendered (equal aspect)
        self._view_reported = asyncio.Event()  # set when the browser reports the plot's size
        #: Applied results per layer as (viewport, complete) (for tests and the benchmark).
        self.applied: dict[str, list[tuple[Viewport, bool]]] = {name: [] for name in self.specs}
        self._t_done: dict[str, float] = {}
        for name in self.specs:
            self.state.status(name)
        self._build_plot()
        self._build_panel()

    # --- the plot ---------------------------------------------------------------------------

    def _ordered_names(self) -> list[str]:
        """Drawing order: tile layers under feature layers, catalog order within each."""
        specs = list(self.specs.values())
        return [s.name for s in specs if s.kind != "features"] + [s.name for s in specs if s.kind == "features"]

    def _initial_bounds(self) -> tuple[float, float, float, float]:
        bbox = getattr(self.catalog, "bbox", None) or DEFAULT_BOUNDS
        x0, y0 = lonlat_to_mercator(bbox[0], bbox[1])
        x1, y1 = lonlat_to_mercator(bbox[2], bbox[3])
        return x0, y0, x1, y1

    def _build_plot(self) -> None:
        x0, y0, x1, y1 = self._initial_bounds()
        self._dmaps = {}
        for name in self._ordered_names():
            dmap = hv.DynamicMap(partial(rgb_element, placeholder=(x0, y0, x1, y1)), streams=[self._pipes[name]])
            self._dmaps[name] = dmap
        names = self._ordered_names()
        first = self._dmaps[names[0]] if names else hv.DynamicMap(rgb_element, streams=[hv.streams.Pipe(data=None)])
        self.range_stream = hv.streams.RangeXY(source=first)
        self.size_stream = hv.streams.PlotSize(source=first)
        self.tap_stream = hv.streams.SingleTap(source=first)
        self.range_stream.add_subscriber(self._on_view_change)
        self.size_stream.add_subscriber(self._on_view_change)
        self.tap_stream.add_subscriber(self._on_tap)
        rgb_opts = dict(xaxis=None, yaxis=None, tools=["tap"], active_tools=["wheel_zoom", "pan"])
        dmaps = [self._dmaps[n].opts(**rgb_opts, backend="bokeh") for n in names] or [first]
        self.overlay = hv.Overlay(dmaps).collate()
        opts: dict[str, Any] = dict(xlim=(x0, x1), ylim=(y0, y1), responsive=True, min_height=self.height,
                                    hooks=[_figure_hook(self)])
        self.plot_pane = pn.pane.HoloViews(
            self.overlay.opts(**opts, backend="bokeh"),
            backend="bokeh",
            sizing_mode="stretch_both",
            min_height=self.height,
        )
        self.state.viewport = Viewport.create((x0, x1), (y0, y1), 900, self.height)

    # --- the side panel ---------------------------------------------------------------------

    def _build_panel(self) -> None:
        self._toggles: dict[str, pn.widgets.Checkbox] = {}
        self._status_panes: dict[str, pn.pane.Str] = {}
        self._retry: dict[str, pn.widgets.Button] = {}
        rows = []
        for spec in sorted(self.specs.values(), key=lambda s: s.priority):
            name = spec.name
            toggle = pn.widgets.Checkbox(label=str(spec.title or name), value=name in self.state.visible)
            toggle.param.watch(lambda ev, n=name: self.set_visible(n, ev.new), "value")
            status = pn.pane.Str("idle", styles={"font-size": "smaller", "color": "#555"}, margin=(0, 10),
                                 css_classes=["mapstream-status", f"status-{name}"])
            retry = pn.widgets.Button(label="Retry", color="warning", visible=False, width=70, height=28)
            retry.on_click(lambda ev, n=name: self._schedule(lambda: self.retry(n)))
            self._toggles[name], self._status_panes[name], self._retry[name] = toggle, status, retry
            rows.append(pn.Column(toggle, pn.Row(status, retry), margin=(0, 0, 6, 0)))
        self.metrics_pane = pn.pane.Markdown("", styles={"font-size": "smaller"}, css_classes=["mapstream-metrics"])
        #: Loads completed (done or error) in this session; shown so that tests can wait on it.
        self.completed = 0
        self.completed_pane = pn.pane.Str("loads completed: 0", css_classes=["mapstream-completed"],
                                          styles={"font-size": "smaller", "color": "#777"})
        self.inspect_pane = pn.pane.HTML("<i>Click the map to inspect the visible layers.</i>", max_height=400,
                                         styles={"overflow-y": "auto"})
        attributions = list(dict.fromkeys(  # each source credited once
            html.escape(str(s.attribution)) for s in self.specs.values() if getattr(s, "attribution", None)
        ))
        self.sidebar = pn.Column(
            "## Layers", *rows, "### Inspect", self.inspect_pane, "### Engine", self.metrics_pane, self.completed_pane,
            pn.pane.HTML("<small>" + " · ".join(attributions) + "</small>") if attributions else None,
            width=300,
        )
        self.layout = pn.Row(self.sidebar, self.plot_pane, sizing_mode="stretch_both", min_height=self.height)

    def __panel__(self) -> pn.viewable.Viewable:
        if self._hooked:
            return self.layout
        self._hooked = True
        self._preloading = True  # shown: loads start with the preload, in priority order
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        if pn.state.curdoc is not None and self._doc is None:
            self._doc = pn.state.curdoc
        pn.state.onload(self._preload)
        with contextlib.suppress(Exception):
            pn.state.on_session_destroyed(self._on_session_destroyed)
        with contextlib.suppress(Exception):
            self._metrics_cb = pn.state.add_periodic_callback(self.refresh_metrics, period=1000)
        return self.layout

    # --- loading ----------------------------------------------------------------------------

    def _schedule(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the app's event loop (now if already on it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._loop = loop
            fn()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    async def layer(self, name: str) -> Any:
        """The built layer ``name`` (built once per session; a failed build is retried)."""
        fut = self._built.get(name)
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            fut = asyncio.ensure_future(self._build_layer(self.specs[name], self.fetcher))
            self._built[name] = fut
        return await asyncio.shield(fut)

    def _loader(self, name: str) -> LayerLoader:
        loader = self._loaders.get(name)
        if loader is None:
            loader = LayerLoader(
                lambda vp, n=name: self._load(n, vp), lambda ev, n=name: self._on_event(n, ev), name=name
            )
            self._loaders[name] = loader
        return loader

    async def _load(self, name: str, viewport: Viewport) -> Any:
        layer = await self.layer(name)
        spec = self.specs[name]
        if spec.kind == "features":
            async for item in self._load_features(layer, spec, viewport):
                yield item
        else:
            async for mosaic in layer.load(viewport, self.fetcher):
                image = await asyncio.to_thread(mosaic_image, mosaic)
                yield image, mosaic.attrs.get("progress"), tuple(mosaic.attrs.get("errors") or ())

    async def _load_features(self, layer: Any, spec: Any, viewport: Viewport) -> Any:
        """Stream a feature layer: progress on every page, an image at most every SHADE_EVERY.

        Yields ``(image or None, progress, errors)``. Each page is aggregated once, in a worker
        thread, and merged into the layer's aggregates; an image shades the aggregates (a few
        passes over the pixels, however many features came before). Shading runs beside the
        pages, never holding them up; the final image covers every page.
        """
        bounds = (viewport.x_range[0], viewport.y_range[0], viewport.x_range[1], viewport.y_range[1])
        size = (viewport.width, viewport.height)
        style = getattr(spec, "style", None)
        aggs: dict[str, Any] = {}
        errors: list[Any] = []
        progress: Any = None
        shading: asyncio.Future[Image] | None = None
        last = 0.0

        def add(aggs: dict[str, Any], frame: Any) -> dict[str, Any]:
            return render.merge_aggregates(aggs, render.aggregate_features(frame, bounds, *size))

        def shade(aggs: dict[str, Any]) -> Any:
            return asyncio.ensure_future(asyncio.to_thread(render.shade_aggregates, aggs, bounds, *size, style))

        try:
            async for page in layer.load(viewport, self.fetcher):
                if len(page.frame):
                    aggs = await asyncio.to_thread(add, aggs, page.frame)
                errors.extend(page.errors)
                progress = page.progress
                if progress.complete:
                    break
                image = None
                if shading is not None and shading.done():
                    image, shading = shading.result(), None
                if shading is None and aggs and time.perf_counter() - last >= SHADE_EVERY:
                    shading, last = shade(aggs), time.perf_counter()
                yield image, progress, tuple(errors)
            if shading is not None:
                shading.cancel()
                shading = None
            yield await shade(aggs), progress, tuple(errors)
        finally:
            if shading is not None:
                shading.cancel()

    def request(self, name: str, *, force: bool = False) -> asyncio.Task[None] | None:
        """Load layer ``name`` for the current viewport (on the event loop)."""
        if self._closed or self.state.viewport is None or name not in self.state.visible:
            return None
        self._loop = asyncio.get_running_loop()
        return self._loader(name).request(self.state.viewport, force=force)

    def retry(self, name: str) -> asyncio.Task[None] | None:
        """Reload layer ``name`` for the current viewport, even if it was loaded (retry button)."""
        return self.request(name, force=True)

    def set_viewport(self, viewport: Viewport) -> list[asyncio.Task[None]]:
        """Make ``viewport`` current and (re)load every visible layer for it, priority first.

        Tile layers start at once. Feature layers stop their stale loads at once and start
        ``view_settle`` seconds after the last view change: a burst of pans then costs the
        feature servers one load, not one per pan (a cancelled request's work on the server
        goes on, and would delay the final view). Returns the tasks started now.
        """
        if self._closed:
            return []
        self.state.viewport = viewport
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        tasks, later = [], []
        for spec in sorted(self.specs.values(), key=lambda s: s.priority):
            if self._preloading and spec.name not in self._preloaded:
                continue  # the preload starts it, in its turn, for the newest view
            if spec.kind == "features" and self.view_settle > 0 and spec.name in self.state.visible:
                loader = self._loaders.get(spec.name)
                if loader is not None and loader.key != viewport:
                    loader.cancel()
                later.append(spec.name)
                continue
            task = self.request(spec.name)
            if task is not None:
                tasks.append(task)
        if later:
            loop = asyncio.get_running_loop()
            self._settle_handle = loop.call_later(self.view_settle, self._settled, viewport, later)
        return tasks

    def _settled(self, viewport: Viewport, names: list[str]) -> None:
        self._settle_handle = None
        if self._closed or viewport != self.state.viewport:
            return
        for name in names:
            self.request(name)

    def set_visible(self, name: str, visible: bool) -> None:
        """Show or hide a layer: hiding cancels its load and clears its image."""
        names = [n for n in self.state.visible if n != name]
        if visible:
            names.append(name)
        self.state.visible = names
        if name in self._toggles and self._toggles[name].value != visible:
            self._toggles[name].value = visible
        if visible:
            self._schedule(lambda: self.request(name))
        else:
            loader = self._loaders.get(name)
            if loader is not None:
                loader.cancel()
            self._send(name, None)
            self._set_status(name, state="hidden")

    async def _preload(self) -> None:
        """``pn.state.onload``: start the visible layers in priority order.

        Waits (at most ``FIRST_VIEW_WAIT``) for the browser to report the plot's real size, so
        that the first loads are not for a guessed viewport that is replaced a moment later.
        Then each layer starts when the one before it is done, or ``PRELOAD_STAGGER`` seconds
        after it started, whichever comes first: the first layers get the network, the parser
        and the CPU to themselves. A pan meanwhile reloads what has started; the rest start
        for the newest view.
        """
        self._loop = asyncio.get_running_loop()
        _lag_monitor()
        self._preloading = True
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._view_reported.wait(), FIRST_VIEW_WAIT)
            for spec in sorted(self.specs.values(), key=lambda s: s.priority):
                if self._closed:
                    return
                self._preloaded.add(spec.name)
                task = self.request(spec.name)
                if task is not None:
                    await asyncio.wait([task], timeout=PRELOAD_STAGGER)
        finally:
            self._preloading = False

    def _on_view_change(self, **_: Any) -> None:
        r, s = self.range_stream, self.size_stream
        width = s.width or (self.state.viewport.width if self.state.viewport else 900)
        height = s.height or (self.state.viewport.height if self.state.viewport else self.height)
        vp = viewport_from_ranges(r.x_range, r.y_range, width, height)
        if vp is None:
            return
        if s.width and s.height:
            # A map keeps one metre as wide as it is tall, whatever the shape of the window:
            # widen the view to the plot's aspect and show exactly that view. (Bokeh's own
            # match_aspect works only with automatic ranges, and the map's are explicit.)
            square = equal_aspect(vp)
            if square != vp:
                vp = square
                self._set_figure_ranges(vp)
            self._schedule(self._view_reported.set)
        if vp == self.state.viewport:
            return
        self._schedule(lambda: self.set_viewport(vp))

    def _set_figure_ranges(self, viewport: Viewport) -> None:
        """Show ``viewport`` in the browser (Bokeh's ranges, changed from the server)."""
        figure = self._figure
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
        doc = self._doc
        if doc is not None and getattr(doc, "session_context", None) is not None:
            with contextlib.suppress(Exception):
                doc.add_next_tick_callback(apply)
                return
        apply()

    # --- applying results -------------------------------------------------------------------

    def _send(self, name: str, image: Image | None) -> None:
        self._images[name] = image
        pipe = self._pipes[name]
        if self._doc is not None:
            from panel.io.state import set_curdoc

            with set_curdoc(self._doc):
                pipe.send(image)
        else:
            pipe.send(image)

    def _set_status(self, name: str, **values: Any) -> None:
        if values.get("state") in ("done", "error"):
            self.completed += 1
            self.completed_pane.object = f"loads completed: {self.completed}"
        st = self.state.update_status(name, **values)
        pane = self._status_panes.get(name)
        if pane is not None:
            pane.object = st.text()
            self._retry[name].visible = st.state == "error"

    def _on_event(self, name: str, ev: LoadEvent) -> None:
        if self._closed or name not in self.state.visible or ev.key != self.state.viewport:
            return  # belongs to another view: never applied
        spec = self.specs[name]
        if ev.kind == "start":
            unit = "pages" if spec.kind == "features" else "tiles"
            self._set_status(name, state="loading", done=0, total=None, unit=unit, error="", truncated=False,
                             features=0, cached=0, failed=0)
            return
        if ev.kind == "error":
            reason = _reason(ev.value)
            self._set_status(name, state="error", error=reason, elapsed=ev.elapsed)
            self._notify(f"{spec.title or name}: {reason}")
            return
        if ev.kind == "done":
            if self.state.status(name).state == "loading":  # the layer yielded nothing at all
                self._set_status(name, state="done", elapsed=ev.elapsed)
            return
        image, progress, errors = ev.value
        complete = bool(getattr(progress, "complete", False))
        if image is not None:  # None: a page arrived, only the progress changes
            self._send(name, image)
            self.applied[name].append((ev.key, complete))
        values: dict[str, Any] = {"elapsed": ev.elapsed}
        if progress is not None:
            values.update(done=progress.done, total=progress.total, unit=progress.unit, features=progress.features,
                          cached=progress.cached, failed=progress.failed, truncated=bool(progress.truncated),
                          cap=getattr(spec, "max_features", None))
        if complete:
            total = getattr(progress, "total", None) or 0
            nothing = image.opaque_pixels == 0 and getattr(progress, "failed", 0) >= max(total, 1)
            if errors and (nothing or (spec.kind == "features" and progress.features == 0)):
                reason = _reason(errors[0])
                values.update(state="error", error=reason)
                self._notify(f"{spec.title or name}: {reason}")
            else:
                values.update(state="done")
                self._t_done[name] = time.perf_counter()
        else:
            values.update(state="loading")
        self._set_status(name, **values)

    def _notify(self, text: str) -> None:
        notifications = getattr(pn.state, "notifications", None)
        if notifications is not None:
            with contextlib.suppress(Exception):
                notifications.error(html.escape(text), duration=6000)

    # --- inspect ----------------------------------------------------------------------------

    def _on_tap(self, x: float | None = None, y: float | None = None, **_: Any) -> None:
        if x is None or y is None:
            return
        lon, lat = mercator_to_lonlat(float(x), float(y))
        self._schedule(lambda: self.inspect(lon, lat))

    def inspect(self, lon: float, lat: float) -> asyncio.Task[None]:
        """Query every visible layer at (lon, lat) concurrently; answers appear as they come."""
        if self._inspect_task is not None and not self._inspect_task.done():
            self._inspect_task.cancel()
        self._inspect_task = asyncio.get_running_loop().create_task(self._inspect(lon, lat))
        return self._inspect_task

    async def _inspect(self, lon: float, lat: float) -> None:
        head = f"<p><b>{lat:.5f}, {lon:.5f}</b></p>"
        parts: list[str] = []
        self._set_inspect(head + "<i>querying…</i>")

        async def one(name: str) -> str:
            spec = self.specs[name]
            title = spec.title or name
            try:
                layer = await self.layer(name)
                if spec.kind == "features":
                    frame = await layer.features_at(lon, lat, self.fetcher)
                    rows = [
                        {k: v for k, v in rec.items() if k != "geometry"}
                        for rec in frame.drop(columns="geometry", errors="ignore").to_dict("records")
                    ]
                elif hasattr(layer, "get_feature_info"):
                    rows = _rows_from_info(await layer.get_feature_info(lon, lat, self.fetcher))
                else:
                    return ""
                return escape_properties(title, rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return f'<div class="inspect"><b>{html.escape(str(title))}</b>: {html.escape(_reason(exc))}</div>'

        tasks = [asyncio.ensure_future(one(n)) for n in list(self.state.visible) if n in self.specs]
        try:
            for fut in asyncio.as_completed(tasks):
                part = await fut
                if part:
                    parts.append(part)
                    self._set_inspect(head + "".join(parts))
        finally:
            for t in tasks:
                t.cancel()
        self._set_inspect(head + ("".join(parts) or "<i>nothing here</i>"))

    def _set_inspect(self, text: str) -> None:
        self.state.inspect_html = text
        self.inspect_pane.object = text

    # --- metrics ----------------------------------------------------------------------------

    def refresh_metrics(self) -> dict[str, Any]:
        """Update the metrics view from the engine; returns the figures shown."""
        snap: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            snap = dict(self.fetcher.metrics.snapshot())
        mon = _lag_monitor()
        if mon is not None:
            snap.update(mon.snapshot())
        hits, misses = snap.get("cache_hits", 0), snap.get("cache_misses", 0)
        ratio = hits / (hits + misses) if hits + misses else 0.0
        self.state.metrics = snap
        self.metrics_pane.object = (
            f"requests: {snap.get('requests', 0)} · p95 latency: {1000 * snap.get('latency_p95', 0.0):.0f} ms  \n"
            f"cache hit ratio: {ratio:.0%} · loop p99 lag: {snap.get('lag_p99_ms', 0.0):.0f} ms"
        )
        return snap

    # --- cleanup ----------------------------------------------------------------------------

    def _on_session_destroyed(self, session_context: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self.aclose()))
        else:
            self._closed = True

    async def aclose(self) -> None:
        """Cancel every task of the session and release its references."""
        self._closed = True
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        if self._metrics_cb is not None:
            with contextlib.suppress(Exception):
                self._metrics_cb.stop()
            self._metrics_cb = None
        if self._inspect_task is not None:
            self._inspect_task.cancel()
        await asyncio.gather(*(loader.close() for loader in self._loaders.values()), return_exceptions=True)
        for fut in self._built.values():
            fut.cancel()
        self._loaders.clear()
        self._built.clear()
        for name in self.specs:  # a notebook still shows the panel: no load is under way now
            if self.state.status(name).state == "loading":
                self._set_status(name, state="idle")
        self._images = {name: None for name in self.specs}
        for pipe in self._pipes.values():
            pipe.clear()


def _figure_hook(app: MapApp) -> Callable[[Any, Any], None]:
    """A HoloViews hook that gives ``app`` its Bokeh figure (to correct its ranges).

    It holds the app weakly: HoloViews keeps an element's options, hooks included, in a global
    store, and a bound method there would keep every closed session alive.
    """
    ref = weakref.ref(app)

    def hook(plot: Any, element: Any) -> None:
        target = ref()
        if target is not None:
            target._figure = plot.state

    return hook


def _reason(exc: Any) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
