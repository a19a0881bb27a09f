"""Every layer as XYZ map tiles rendered on the server: what the browser's tile renderers load.

The served map draws each layer with Bokeh's own tile renderer (progressive loading, parent
tiles while a zoom loads, wrap-around, the browser's cache) over a tile route of the Panel
server (:mod:`mapstream.app.routes`). :class:`TileService` answers that route: a tile of a layer
is the layer's ``load`` for the tile's viewport, drawn like any other view
(:func:`~mapstream.app.frames.iter_frames`, dispatching on the results' types, never on the
layer's kind) and encoded as PNG off the event loop. So the engine keeps its role: per-host
limits, the HTTP cache, single-flight and credentials stay on the server.

Work is shared: a layer is registered under a *token* (a digest of its catalog entry and its
date filter), so every session showing the same layer with the same filter uses one built layer
and one render per tile. Rendered tiles are kept in a bounded in-memory LRU; concurrent requests
for one tile (the browser's, a session's prefetch, another session's) share one render, which is
cancelled when the last of them gives up (a new view makes it stale).

Feature layers are shaded on a canvas a few pixels larger than the tile (the style's point
radius and line width) and cropped, so that a point or a line on a tile's edge is drawn the same
on both sides of it; the shading depends on the tile alone (:mod:`mapstream.app.render`), so
colours mean the same in every tile. Pure asyncio, no Panel: tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from mapstream.layers.cache.memory import MemoryLRU
from mapstream.layers.errors import LayersError
from mapstream.layers.tilegrid import ORIGIN_SHIFT, WORLD_SIZE, Tile, tile_bounds
from mapstream.layers.viewport import Viewport

from .frames import iter_frames

__all__ = [
    "MAX_ZOOM",
    "TILE_SIZE",
    "RenderedTile",
    "TileService",
    "UnknownLayerError",
    "tile_service",
    "view_tiles",
    "zoom_for_view",
]

#: Pixels across a tile (Bokeh's ``WMTSTileSource`` default).
TILE_SIZE = 256
#: The deepest zoom the browser asks for; a layer's own ``max_zoom`` is handled by its load
#: (deeper tiles are its deepest tiles enlarged), so the map never snaps back on a zoom.
MAX_ZOOM = 22
#: Bytes of rendered tiles kept in memory for all sessions (PNG bytes).
CACHE_BYTES = 64 * 2**20


def _empty_png() -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.new("RGBA", (1, 1), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


#: The answer for a tile with nothing in it (a transparent pixel, drawn across the tile).
EMPTY_PNG = _empty_png()


class UnknownLayerError(LayersError):
    """A tile was asked for a layer token this server never registered (a stale page)."""

    def __init__(self, token: str) -> None:
        super().__init__(f"no layer {token!r} on this server (reload the page)")
        self.token = token

    def __reduce__(self) -> Any:
        return (type(self), (self.token,))


class RenderedTile(NamedTuple):
    """One rendered tile.

    Attributes
    ----------
    png
        The PNG bytes (:data:`EMPTY_PNG` when nothing is drawn).
    features
        Features drawn (feature layers; 0 for images).
    errors
        Errors of a load that still drew something (a partial tile).
    cached
        Upstream requests the render answered from the HTTP cache.
    truncated
        A feature cap stopped the tile's load early.
    seconds
        How long the render took (0 for a tile from the render cache).
    """

    png: bytes
    features: int = 0
    errors: tuple[Any, ...] = ()
    cached: int = 0
    truncated: bool = False
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        return len(self.png) + 200


def zoom_for_view(viewport: Viewport, max_zoom: int = MAX_ZOOM) -> int:
    """The zoom Bokeh's tile renderer draws ``viewport`` at (``get_level_by_extent``).

    The deepest zoom whose tiles are no finer than the view's pixels: tiles are enlarged a little,
    never shrunk.

    >>> vp = Viewport.create((0, WORLD_SIZE), (0, WORLD_SIZE), 512, 512)
    >>> zoom_for_view(vp)
    1
    >>> zoom_for_view(Viewport.create((0, WORLD_SIZE), (0, WORLD_SIZE), 700, 700))
    1
    """
    res0 = WORLD_SIZE / TILE_SIZE
    ratio = res0 / viewport.resolution
    if ratio <= 1:
        return 0
    return max(0, min(max_zoom, math.floor(math.log2(ratio) + 1e-9)))


def view_tiles(viewport: Viewport, zoom: int, border: int = 1) -> list[Tile]:
    """The tiles Bokeh loads for ``viewport`` at ``zoom``, centre first (``border`` tiles around).

    Columns are unwrapped (a view across the antimeridian gives columns past the world's; the
    route wraps them). Rows outside the world are dropped.

    >>> vp = Viewport.create((0, WORLD_SIZE / 4), (0, WORLD_SIZE / 4), 256, 256)
    >>> [tuple(t) for t in view_tiles(vp, 2, border=0)]
    [(2, 2, 1)]
    >>> len(view_tiles(vp, 2))
    9
    """
    n = 2**zoom
    span = WORLD_SIZE / n
    (x0, x1), (y0, y1) = viewport.x_range, viewport.y_range
    tx0 = math.floor((x0 + ORIGIN_SHIFT) / span) - border
    tx1 = math.ceil((x1 + ORIGIN_SHIFT) / span) - 1 + border  # a view ending on an edge ends there
    ty0 = math.floor((ORIGIN_SHIFT - y1) / span) - border
    ty1 = math.ceil((ORIGIN_SHIFT - y0) / span) - 1 + border
    cx, cy = (tx0 + tx1) / 2, (ty0 + ty1) / 2
    tiles = [Tile(zoom, tx, ty) for ty in range(max(0, ty0), min(n - 1, ty1) + 1) for tx in range(tx0, tx1 + 1)]
    tiles.sort(key=lambda t: (t.x - cx) ** 2 + (t.y - cy) ** 2)
    return tiles


def layer_token(spec: Any, datetime: str | None = None) -> str:
    """A short stable name for a catalog layer drawn with a date filter: the tile URL's layer.

    The same catalog entry and filter give the same token in every session (so they share a
    built layer, renders and the browser's cache); any change to the entry gives another.
    """
    dump = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else repr(spec)
    text = json.dumps([dump, datetime], sort_keys=True, default=str)
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(getattr(spec, "name", "layer")))[:40]
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _margin(style: Any) -> int:
    """Pixels around a tile a feature layer is shaded on: its point radius and line width."""
    point = float(getattr(style, "point_size", 0) or 0)
    line = float(getattr(style, "line_width", 0) or 0)
    return int(math.ceil(point / 2) + math.ceil(line)) + 1


def _encode_png(rgba: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    if not rgba[..., 3].any():
        return EMPTY_PNG
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class _Entry:
    spec: Any
    datetime: str | None
    layer: asyncio.Future[Any] | None = None
    renders: int = 0
    sessions: set[int] = field(default_factory=set)


class _Flight:
    """One render shared by everyone who asked for the tile; cancelled when all have given up."""

    def __init__(self, task: asyncio.Task[RenderedTile]) -> None:
        self.task = task
        self.waiters = 0


class TileService:
    """Renders the tiles of registered layers, shared by every session of one event loop.

    Parameters
    ----------
    fetcher
        The fetcher of every layer (default: ``shared_fetcher()``).
    build_layer
        ``await build_layer(spec, fetcher)`` makes a layer (default: the catalog's).
    cache_bytes
        Bytes of rendered tiles kept (:data:`CACHE_BYTES`).

    Attributes
    ----------
    renders
        Tiles rendered (not answered from the render cache), all layers.
    requests
        Tiles asked for (the route's and the sessions' prefetches).
    """

    def __init__(self, fetcher: Any = None, build_layer: Callable[..., Any] | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        if fetcher is None:
            from mapstream.layers.http import shared_fetcher

            fetcher = shared_fetcher()
        if build_layer is None:
            from mapstream.layers.catalog import build_layer as default_build

            build_layer = default_build
        self.fetcher = fetcher
        self._build_layer = build_layer
        self._entries: dict[str, _Entry] = {}
        self._cache = MemoryLRU(cache_bytes)
        self._flights: dict[tuple[str, int, int, int], _Flight] = {}
        self.renders = 0
        self.requests = 0

    # --- layers -----------------------------------------------------------------------------

    def register(self, spec: Any, datetime: str | None = None) -> str:
        """The token of layer ``spec`` with date filter ``datetime`` (registered once)."""
        token = layer_token(spec, datetime)
        if token not in self._entries:
            self._entries[token] = _Entry(spec, datetime)
        return token

    def renders_of(self, token: str) -> int:
        """Tiles rendered for ``token`` (0 for a token never registered)."""
        entry = self._entries.get(token)
        return entry.renders if entry is not None else 0

    async def layer(self, token: str) -> Any:
        """The built layer of ``token`` (built once; a failed build is tried again next time)."""
        entry = self._entries.get(token)
        if entry is None:
            raise UnknownLayerError(token)
        fut = entry.layer
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            fut = asyncio.ensure_future(self._make_layer(entry))
            entry.layer = fut
        return await asyncio.shield(fut)

    async def _make_layer(self, entry: _Entry) -> Any:
        layer = await self._build_layer(entry.spec, self.fetcher)
        if entry.datetime is not None and hasattr(layer, "datetime"):
            layer.datetime = entry.datetime
        return layer

    # --- tiles ------------------------------------------------------------------------------

    def cached(self, token: str, z: int, x: int, y: int) -> RenderedTile | None:
        """The rendered tile if it is in the render cache (no work, no waiting)."""
        return self._cache.get((token, z, x % 2**z if z >= 0 else x, y))

    async def tile(self, token: str, z: int, x: int, y: int) -> RenderedTile:
        """Tile (z, x, y) of layer ``token`` (``x`` wraps around the world).

        Raises
        ------
        UnknownLayerError
            ``token`` was never registered.
        LayersError
            The layer's load failed and drew nothing (the error of its first failure).
        """
        if token not in self._entries:
            raise UnknownLayerError(token)
        if not 0 <= z <= MAX_ZOOM:
            return RenderedTile(EMPTY_PNG)
        n = 2**z
        x = x % n
        if not 0 <= y < n:
            return RenderedTile(EMPTY_PNG)
        self.requests += 1
        key = (token, z, x, y)
        hit = self._cache.get(key)
        if hit is not None:
            return hit._replace(seconds=0.0)
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.ensure_future(self._render(token, Tile(z, x, y))))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda t, k=key: self._landed(k, t))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters <= 0 and not flight.task.done():
                flight.task.cancel()  # nobody wants it any more: a stale view's tile

    def _landed(self, key: tuple[str, int, int, int], task: asyncio.Task[RenderedTile]) -> None:
        if self._flights.get(key) is not None and self._flights[key].task is task:
            del self._flights[key]
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if not result.errors:  # a partial tile is drawn again next time
            self._cache.put(key, result, result.nbytes)

    async def _render(self, token: str, tile: Tile) -> RenderedTile:
        t0 = time.perf_counter()
        entry = self._entries[token]
        layer = await self.layer(token)
        style = getattr(entry.spec, "style", None)
        b = tile_bounds(tile)
        viewport = Viewport((b[0], b[2]), (b[1], b[3]), TILE_SIZE, TILE_SIZE)
        margin = _margin(style)
        px = (b[2] - b[0]) / TILE_SIZE
        canvas = Viewport((b[0] - margin * px, b[2] + margin * px), (b[1] - margin * px, b[3] + margin * px),
                          TILE_SIZE + 2 * margin, TILE_SIZE + 2 * margin)
        last = None
        async for frame in iter_frames(layer.load(viewport, self.fetcher), viewport, style,
                                       canvas=canvas, partial=False):
            last = frame
        entry.renders += 1
        self.renders += 1
        seconds = time.perf_counter() - t0
        if last is None:
            return RenderedTile(EMPTY_PNG, seconds=seconds)
        p = last.progress
        if last.errors and not last.received:
            err = last.errors[0]
            raise err if isinstance(err, BaseException) else LayersError(str(err))
        png = EMPTY_PNG
        if last.image is not None:
            png = await asyncio.to_thread(_encode_png, last.image.rgba)
        return RenderedTile(png, p.features, tuple(last.errors), p.cached, bool(p.truncated), seconds)

    # --- many tiles -------------------------------------------------------------------------

    async def prefetch(
        self,
        token: str,
        tiles: Iterable[Tile],
        on_tile: Callable[[Tile, RenderedTile | BaseException], None] | None = None,
        concurrency: int = 6,
    ) -> None:
        """Render ``tiles`` in order (``concurrency`` at once), reporting each to ``on_tile``.

        Cancelling the prefetch cancels the renders nobody else waits for.
        """
        queue = list(tiles)
        it = iter(queue)

        async def worker() -> None:
            for t in it:
                try:
                    result: RenderedTile | BaseException = await self.tile(token, t.z, t.x, t.y)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # reported to the caller, per tile
                    result = exc
                if on_tile is not None:
                    on_tile(t, result)

        workers = [asyncio.ensure_future(worker()) for _ in range(max(1, min(concurrency, len(queue))))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*workers, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        """Counters for the stats route and the engine view."""
        return {
            "renders": self.renders,
            "tile_requests": self.requests,
            "tiles_cached": len(self._cache),
            "tile_cache_bytes": self._cache.nbytes,
            "renders_in_flight": len(self._flights),
            "layers": {token: e.renders for token, e in self._entries.items()},
        }


_SERVICES: dict[int, TileService] = {}


def tile_service(loop: asyncio.AbstractEventLoop | None = None) -> TileService:
    """The tile service of the running event loop (made on first use), shared by its sessions
    and the tile route."""
    if loop is None:
        loop = asyncio.get_running_loop()
    key = id(loop)
    service = _SERVICES.get(key)
    if service is None or getattr(service, "_loop", loop) is not loop:
        service = TileService()
        service._loop = loop  # type: ignore[attr-defined]
        _SERVICES[key] = service
    return service
