"""One map session's loads, orchestrated: which layers load for which view, and when.

:class:`MapSession` owns everything a session runs: one :class:`~mapstream.app.loader.LayerLoader`
per layer (latest view wins), the preload (visible layers in priority order, each given the
network to itself for a moment), the settle delay (layers whose loads count pages wait until a
burst of pans ends), the click-inspect task, the metrics snapshot and closing. It applies each
:class:`~mapstream.app.frames.Frame` to the session's :class:`~mapstream.app.state.MapState`
(statuses, by assignment) and hands images to ``show`` (the plot).

It never asks a layer's kind: results are drawn by their type (:mod:`mapstream.app.frames`),
the unit of a layer's loads comes from its :class:`~mapstream.layers.types.Progress`, and a
click asks every visible layer's :meth:`~mapstream.layers.types.Layer.query`. No Panel,
HoloViews or Bokeh: it is tested like the loader, with fake layers (tests/app/test_session.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from typing import Any

from mapstream.layers.metrics import LoopLagMonitor
from mapstream.layers.viewport import Viewport

from .frames import Frame, iter_frames
from .inspection import inspect_point
from .loader import LayerLoader, LoadEvent
from .render import Image
from .state import MapState, by_priority, error_reason

__all__ = ["FIRST_VIEW_WAIT", "PRELOAD_STAGGER", "SETTLE_UNITS", "STALL_TIMEOUT", "VIEW_SETTLE", "MapSession"]

#: Seconds the preload waits for the browser to report the plot's size before it guesses.
FIRST_VIEW_WAIT = 1.5
#: Seconds the preload gives a layer to itself before it starts the next one.
PRELOAD_STAGGER = 1.0
#: Loads counted in these units (``Progress.unit``) wait for the view to settle: a cancelled
#: page request's work goes on at the server, and a burst of pans would queue one per pan.
#: A layer whose loads have started but not reported a unit yet waits too (see ``_settles``).
SETTLE_UNITS = frozenset({"pages"})
#: Seconds a view must stay before those layers load for it (a session's ``view_settle``).
VIEW_SETTLE = 0.25
#: Seconds a load may go without a result before it fails (``LayerLoader.stall``): longer than
#: one request may take (the fetcher's 120 s total timeout), so only a hang ends this way.
STALL_TIMEOUT = 300.0

_LAG_MONITORS: dict[int, LoopLagMonitor] = {}  # one per event loop, shared by its sessions


def _lag_monitor() -> LoopLagMonitor | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    mon = _LAG_MONITORS.get(id(loop))
    if mon is None:
        mon = LoopLagMonitor()
        # in an empty context: the loop's monitor outlives the session that started it, and
        # must not keep that session's context (Panel's curdoc: its whole document) alive
        contextvars.Context().run(mon.start)
        _LAG_MONITORS[id(loop)] = mon
    return mon


def _ignore(*_: Any) -> None:
    return None


def _unique(tiles: Any) -> list[Any]:
    """Tiles with columns wrapped into the world, each once, in their order."""
    from mapstream.layers.tilegrid import Tile

    out: dict[Any, None] = {}
    for t in tiles:
        out.setdefault(Tile(t.z, t.x % 2**t.z, t.y), None)
    return list(out)


def _children(tile: Any) -> list[Any]:
    from mapstream.layers.tilegrid import Tile

    z, x, y = tile.z + 1, (tile.x % 2**tile.z) * 2, tile.y * 2
    return [Tile(z, x + dx, y + dy) for dy in (0, 1) for dx in (0, 1)]


class MapSession:
    """The loads of one map session, for the latest view.

    Parameters
    ----------
    catalog
        A ``mapstream.layers.catalog.Catalog`` (``.layers`` of LayerSpec).
    viewport
        The view the map opens on (:func:`~mapstream.app.state.initial_viewport`).
    fetcher
        The fetcher for every layer (default: ``mapstream.layers.http.shared_fetcher()``).
    build_layer
        ``await build_layer(spec, fetcher)`` makes a layer (default:
        ``mapstream.layers.catalog.build_layer``); tests pass fakes.
    show
        ``show(name, image)`` draws a layer's image (None: clear it); the plot's.
    notify
        ``notify(text)`` tells the user a layer failed.
    tiles
        A :class:`~mapstream.app.tiles.TileService`: the layers are drawn by the browser from
        its tiles (the plot's tile renderers), and a load for a view renders the view's tiles
        (centre first), then the ring around it and the next zoom's, for progress and errors
        and so that the browser finds them ready. None: loads draw images for ``show``.
    on_tiles
        ``on_tiles(name, token, revision)``: layer ``name``'s tiles are now those of ``token``
        (a date filter changed) or must be loaded again (``revision``, a retry).
    on_layer_visible
        ``on_layer_visible(name, visible)``: show or hide a tiled layer's renderer.

    Attributes
    ----------
    state
        The session's :class:`~mapstream.app.state.MapState`; its ``visible`` is watched: a
        layer added to it loads, a layer removed is cancelled and cleared.
    view_settle
        Seconds a view must stay before layers in :data:`SETTLE_UNITS` load for it.
    stall_timeout
        Seconds a load may go without a result before it fails (:data:`STALL_TIMEOUT`).
    preloading
        True from when the map is shown until the preload has started every layer: meanwhile a
        view change reloads only the layers the preload has started.
    loaders, images, applied
        Per layer: its loader, the image shown, and the (viewport, complete) of every frame
        applied (for tests and the benchmark).
    """

    def __init__(
        self,
        catalog: Any,
        viewport: Viewport,
        *,
        fetcher: Any = None,
        build_layer: Callable[..., Any] | None = None,
        show: Callable[[str, Image | None], None] = _ignore,
        notify: Callable[[str], None] = _ignore,
        tiles: Any = None,
        on_tiles: Callable[[str, str, int], None] = _ignore,
        on_layer_visible: Callable[[str, bool], None] = _ignore,
    ) -> None:
        if fetcher is None:
            from mapstream.layers.http import shared_fetcher

            fetcher = shared_fetcher()
        if build_layer is None:
            from mapstream.layers.catalog import build_layer as default_build

            build_layer = default_build
        self.catalog = catalog
        self.fetcher = fetcher
        self._build_layer = build_layer
        self._show = show
        self._notify = notify
        self.specs = {spec.name: spec for spec in by_priority(catalog.layers)}
        visible = [name for name, spec in self.specs.items() if getattr(spec, "visible", True)]
        self.state = MapState.for_layers(list(self.specs), visible, viewport=viewport)
        self.state.param.watch(self._on_visible, "visible")
        self.state.param.watch(self._on_datetimes, "datetimes")
        self.view_settle = VIEW_SETTLE
        self.stall_timeout = STALL_TIMEOUT
        self.preloading = False
        self.closed = False
        self.suspended = False
        self.loaders: dict[str, LayerLoader] = {}
        self.images: dict[str, Image | None] = dict.fromkeys(self.specs)
        self.applied: dict[str, list[tuple[Viewport, bool]]] = {name: [] for name in self.specs}
        self._built: dict[str, asyncio.Future[Any]] = {}
        self._preloaded: set[str] = set()
        self._preload_started = False
        self._settle_handle: asyncio.TimerHandle | None = None
        self._inspect_task: asyncio.Task[str] | None = None
        self._view_reported = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tiles = tiles
        self._on_tiles = on_tiles
        self._on_layer_visible = on_layer_visible
        #: layer name -> its token at the tile service, and how often it was retried
        self.tokens: dict[str, str] = {}
        self.revisions: dict[str, int] = dict.fromkeys(self.specs, 0)
        if tiles is not None:
            self.tokens = {name: tiles.register(spec) for name, spec in self.specs.items()}

    def title(self, name: str) -> str:
        """What the user calls layer ``name``."""
        return str(getattr(self.specs[name], "title", None) or name)

    # --- the event loop ---------------------------------------------------------------------

    def use_running_loop(self) -> None:
        """Remember the running event loop, if any, for :meth:`schedule` from other threads."""
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def schedule(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` on the session's event loop (now if already on it).

        Returns False when there is no loop to run it on (none was ever seen, or it is closed).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._loop = loop
            fn()
            return True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)
            return True
        return False

    # --- layers and loads -------------------------------------------------------------------

    async def layer(self, name: str) -> Any:
        """The built layer ``name`` (built once per session; a failed build is retried)."""
        fut = self._built.get(name)
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            fut = asyncio.ensure_future(self._build_layer(self.specs[name], self.fetcher))
            self._built[name] = fut
        return await asyncio.shield(fut)

    def _loader(self, name: str) -> LayerLoader:
        loader = self.loaders.get(name)
        if loader is None:
            loader = LayerLoader(
                lambda vp, n=name: self._frames(n, vp), lambda ev, n=name: self._on_event(n, ev), name=name,
                stall=self.stall_timeout,
            )
            self.loaders[name] = loader
        return loader

    async def _frames(self, name: str, viewport: Viewport) -> Any:
        if self.tiles is not None:
            async for frame in self._tile_frames(name, viewport):
                yield frame
            return
        layer = await self.layer(name)
        style = getattr(self.specs[name], "style", None)
        async for frame in iter_frames(layer.load(viewport, self.fetcher), viewport, style):
            yield frame

    async def _tile_frames(self, name: str, viewport: Viewport) -> Any:
        """A tiled layer's load for ``viewport``: the view's tiles rendered (progress per tile),
        then, after the last frame, the ring around the view and the next zoom's tiles."""
        from mapstream.layers.types import Progress

        from .tiles import view_tiles, zoom_for_view

        token = self.tokens[name]
        zoom = zoom_for_view(viewport)
        view = _unique(view_tiles(viewport, zoom, border=0))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        fetch = asyncio.ensure_future(self.tiles.prefetch(token, view, lambda t, r: queue.put_nowait(r)))
        done = features = cached = failed = 0
        truncated = False
        errors: list[Any] = []
        try:
            while done < len(view):
                result = await queue.get()
                done += 1
                if isinstance(result, BaseException):
                    failed += 1
                    errors.append(result)
                else:
                    features += result.features
                    cached += result.seconds == 0.0
                    truncated = truncated or result.truncated
                    errors.extend(result.errors)
                complete = done >= len(view)
                p = Progress(done, len(view), "tiles", features=features, failed=failed, cached=cached,
                             truncated=truncated, complete=complete)
                yield Frame(None, p, tuple(errors), failed < done)
            if not view:
                yield Frame(None, Progress(0, 0, "tiles", complete=True), (), True)
            await fetch
            # what the browser asks for next: the ring it loads around the view, and the next zoom
            ring = _unique(view_tiles(viewport, zoom, border=1))
            seen = set(view)
            later = [t for t in ring if t not in seen]
            if zoom + 1 <= 22:
                later += _unique(c for t in view[:10] for c in _children(t))
            await self.tiles.prefetch(token, later)
        finally:
            fetch.cancel()

    def request(self, name: str, *, force: bool = False) -> asyncio.Task[None] | None:
        """Load layer ``name`` for the current viewport (on the event loop); None if hidden."""
        if self.closed or self.suspended or self.state.viewport is None or name not in self.state.visible:
            return None
        self._loop = asyncio.get_running_loop()
        return self._loader(name).request(self.state.viewport, force=force)

    def retry(self, name: str) -> asyncio.Task[None] | None:
        """Reload layer ``name`` for the current viewport, even if it was loaded (retry button).

        A tiled layer's renderer loads its tiles again too (the failed ones were never kept).
        """
        if self.tiles is not None and name in self.tokens:
            self.revisions[name] += 1
            self._on_tiles(name, self.tokens[name], self.revisions[name])
        return self.request(name, force=True)

    def _settles(self, name: str) -> bool:
        if self.view_settle <= 0:
            return False
        unit = self.state.status(name).unit
        if not unit:
            # Loads were started and none has reported yet (a feature layer's discovery takes a
            # while): the unit is unknown, so wait. Else a burst of pans from the first second
            # on starts a load per pan, and four sessions panning 80 times queued hundreds of
            # superseded page requests at one server. A layer never loaded loads at once.
            return name in self.loaders
        return unit in SETTLE_UNITS

    def set_viewport(self, viewport: Viewport) -> list[asyncio.Task[None]]:
        """Make ``viewport`` current and (re)load every visible layer for it, priority first.

        Layers load at once, except those whose loads count :data:`SETTLE_UNITS`: their stale
        loads stop at once and they start ``view_settle`` seconds after the last view change,
        so that a burst of pans costs their servers one load, not one per pan. Returns the
        tasks started now.
        """
        if self.closed:
            return []
        self.state.viewport = viewport
        if self.suspended:
            return []  # nobody looks: :meth:`resume` loads the latest view
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        tasks, later = [], []
        for name in self.specs:
            if self.preloading and name not in self._preloaded:
                continue  # the preload starts it, in its turn, for the newest view
            if name in self.state.visible and self._settles(name):
                loader = self.loaders.get(name)
                if loader is not None and loader.key != viewport:
                    loader.cancel()
                later.append(name)
                continue
            task = self.request(name)
            if task is not None:
                tasks.append(task)
        if later:
            loop = asyncio.get_running_loop()
            self._settle_handle = loop.call_later(self.view_settle, self._settled, viewport, later)
        return tasks

    def _settled(self, viewport: Viewport, names: list[str]) -> None:
        self._settle_handle = None
        if self.closed or viewport != self.state.viewport:
            return
        for name in names:
            self.request(name)

    def set_visible(self, name: str, visible: bool) -> None:
        """Show or hide a layer (what the layer toggles do, through ``state.visible``)."""
        names = [n for n in self.state.visible if n != name]
        self.state.visible = [*names, name] if visible else names

    def _on_visible(self, event: Any) -> None:
        shown = [n for n in event.new if n not in event.old]
        hidden = [n for n in event.old if n not in event.new]
        self.schedule(lambda: self._apply_visible(shown, hidden))

    def _apply_visible(self, shown: list[str], hidden: list[str]) -> None:
        for name in hidden:  # cancelled and cleared at once
            loader = self.loaders.get(name)
            if loader is not None:
                loader.cancel()
            self._send(name, None)
            self._on_layer_visible(name, False)
            self._set_status(name, state="hidden")
        for name in shown:
            self._on_layer_visible(name, True)
            self.request(name)

    def set_datetime(self, name: str, interval: str | None) -> None:
        """Search layer ``name`` for ``interval`` (RFC 3339; None: all dates) and reload it
        (what the side panel's date filter does, through ``state.datetimes``)."""
        self.state.datetimes = {**self.state.datetimes, name: interval}

    def _on_datetimes(self, event: Any) -> None:
        changed = {n: v for n, v in event.new.items() if event.old.get(n, ...) != v}
        self.schedule(lambda: [asyncio.ensure_future(self._apply_datetime(n, v)) for n, v in changed.items()])

    async def _apply_datetime(self, name: str, interval: str | None) -> None:
        layer = await self.layer(name)
        if hasattr(layer, "datetime"):  # a layer that searches by date (STAC, OGC API Features)
            layer.datetime = interval
            if self.tiles is not None and name in self.tokens:
                self.tokens[name] = self.tiles.register(self.specs[name], datetime=interval)
                self._on_tiles(name, self.tokens[name], self.revisions[name])
            self.request(name, force=True)

    def view_reported(self) -> None:
        """The browser has reported the plot's real size: the preload need not guess."""
        self.schedule(self._view_reported.set)

    async def preload(self) -> None:
        """Start the visible layers in priority order (``pn.state.onload``, once shown).

        Waits (at most :data:`FIRST_VIEW_WAIT`) for :meth:`view_reported`, so that the first
        loads are not for a guessed viewport that is replaced a moment later. Then each layer
        starts when the one before it is done, or :data:`PRELOAD_STAGGER` seconds after it
        started, whichever comes first: the first layers get the network, the parser and the
        CPU to themselves. A pan meanwhile reloads what has started; the rest start for the
        newest view. Runs once (the app calls it on document ready and on the first view the
        browser reports, whichever comes first: a document with tile renderers is ready only
        once its tiles are).
        """
        if self._preload_started:
            return
        self._preload_started = True
        self._loop = asyncio.get_running_loop()
        _lag_monitor()
        self.preloading = True
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._view_reported.wait(), FIRST_VIEW_WAIT)
            for name in self.specs:
                if self.closed:
                    return
                self._preloaded.add(name)
                task = self.request(name)
                if task is not None:
                    await asyncio.wait([task], timeout=PRELOAD_STAGGER)
        finally:
            self.preloading = False

    # --- applying results -------------------------------------------------------------------

    def _send(self, name: str, image: Image | None) -> None:
        self.images[name] = image
        self._show(name, image)

    def _set_status(self, name: str, **values: Any) -> None:
        if values.get("state") in ("done", "error"):
            self.state.completed += 1
        self.state.update_status(name, **values)

    def _fail(self, name: str, exc: Any, **values: Any) -> None:
        reason = error_reason(exc)
        self._set_status(name, state="error", error=reason, **values)
        self._notify(f"{self.title(name)}: {reason}")

    def _on_event(self, name: str, ev: LoadEvent) -> None:
        if self.closed or name not in self.state.visible or ev.key != self.state.viewport:
            return  # belongs to another view: never applied
        if ev.kind == "start":  # the unit stays: the layer's last load reported it
            self._set_status(name, state="loading", done=0, total=None, error="", truncated=False,
                             features=0, cached=0, failed=0)
        elif ev.kind == "error":
            self._fail(name, ev.value, elapsed=ev.elapsed)
        elif ev.kind == "done":
            if self.state.status(name).state == "loading":  # the layer yielded nothing at all
                self._set_status(name, state="done", elapsed=ev.elapsed)
        else:
            self._apply(name, ev.key, ev.value, ev.elapsed)

    def _apply(self, name: str, viewport: Viewport, frame: Frame, elapsed: float) -> None:
        if frame.image is not None:  # None: a page arrived, only the progress changes
            self._send(name, frame.image)
            self.applied[name].append((viewport, frame.complete))
        p = frame.progress
        values: dict[str, Any] = dict(
            elapsed=elapsed, done=p.done, total=p.total, unit=p.unit, features=p.features, cached=p.cached,
            failed=p.failed, truncated=bool(p.truncated), cap=getattr(self.specs[name], "max_features", None),
        )
        if not frame.complete:
            self._set_status(name, state="loading", **values)
        elif frame.errors and not frame.received:
            self._fail(name, frame.errors[0], **values)
        else:
            self._set_status(name, state="done", **values)

    # --- inspect and metrics ----------------------------------------------------------------

    def inspect(self, lon: float, lat: float) -> asyncio.Task[str]:
        """Query every visible layer at (lon, lat) into ``state.inspect_html`` (a newer click wins)."""
        if self._inspect_task is not None and not self._inspect_task.done():
            self._inspect_task.cancel()
        targets = [(self.title(n), lambda n=n: self.layer(n)) for n in self.specs if n in self.state.visible]
        publish = self.state.param.update
        self._inspect_task = asyncio.get_running_loop().create_task(
            inspect_point(lon, lat, targets, self.fetcher, lambda html: publish(inspect_html=html))
        )
        return self._inspect_task

    def refresh_metrics(self) -> dict[str, Any]:
        """A new engine metrics snapshot in ``state.metrics`` (the fetcher's and the loop lag)."""
        snap: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            snap = dict(self.fetcher.metrics.snapshot())
        mon = _lag_monitor()
        if mon is not None:
            snap.update(mon.snapshot())
        self.state.metrics = snap
        return snap

    # --- suspending and closing -------------------------------------------------------------

    def _stop_all(self) -> None:
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        if self._inspect_task is not None:
            self._inspect_task.cancel()

    def suspend(self) -> None:
        """Stop every load at once: nobody is looking (the browser's connection is gone).

        Bokeh keeps a session whose tab has closed for a while, and destroys it only once no
        document callback is pending; loads still pushing frames into it would keep it (and
        their CPU) alive. Statuses of the stopped loads go back to idle; :meth:`resume` loads
        the current view again.
        """
        if self.closed or self.suspended:
            return
        self.suspended = True
        self._stop_all()
        for loader in self.loaders.values():
            loader.cancel()
        for name in self.specs:
            if self.state.status(name).state == "loading":
                self._set_status(name, state="idle")

    def resume(self) -> list[asyncio.Task[None]]:
        """Undo :meth:`suspend` (the browser is back): load every visible layer for the current view."""
        if self.closed or not self.suspended:
            return []
        self.suspended = False
        return self.set_viewport(self.state.viewport) if self.state.viewport is not None else []


    async def aclose(self) -> None:
        """Cancel every task of the session and release its layers and images."""
        self.closed = True
        self._stop_all()
        await asyncio.gather(*(loader.close() for loader in self.loaders.values()), return_exceptions=True)
        for fut in self._built.values():
            fut.cancel()
        self.loaders.clear()
        self._built.clear()
        for name in self.specs:  # a notebook still shows the panel: no load is under way now
            if self.state.status(name).state == "loading":
                self._set_status(name, state="idle")
        self.images = dict.fromkeys(self.specs)
