"""The tile pipeline every grid-aligned raster source shares: a viewport becomes tile requests,
fetched concurrently, decoded off the event loop and assembled into one georeferenced RGBA mosaic.

:class:`TiledLayer` plans (:class:`TilePlan`: zoom, tiles, URLs, pixel window), fetches through
the :class:`~mapstream.layers.http.Fetcher`, decodes in a thread, paints and crops; subclasses
say only how a tile is addressed: :class:`~mapstream.layers.sources.tiles.TileLayer` (XYZ/TMS
templates, xyzservices providers) and :class:`~mapstream.layers.sources.wms.WMSLayer` (GetMap
cut to the same grid), so both share limits, caches and the mosaic format. This module
registers no kind: it is a base, not a source.

A load yields :class:`~mapstream.layers.types.Mosaic` frames: the image is an
:class:`xarray.DataArray` with dims ``("y", "x", "band")``, bands ``["r", "g", "b", "a"]``,
``uint8``, pixel-centre EPSG:3857 coordinates (y decreasing from the top row; x continuing past
20037508 m across the antimeridian, as in :class:`~mapstream.layers.viewport.Viewport`) and attrs
``crs`` and ``zoom`` only; progress, errors (one :class:`~mapstream.layers.errors.TileError` per
failed tile), ``tiles_used`` and ``tiles_missing`` (``"z/x/y"`` -> reason) are fields of the
:class:`~mapstream.layers.types.Mosaic`. All grid arithmetic is :mod:`~mapstream.layers.tilegrid`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import xarray as xr

from ..errors import BadInputError, LayersError, StatusError, TileError
from ..imaging import decode_tile
from ..projection import lonlat_bbox_to_mercator
from ..tilegrid import (
    PixelWindow,
    Tile,
    in_grid,
    pixel_centres,
    pixel_window,
    tiles_in_bbox,
    tiles_in_window,
    tile_window,
    wrap_x,
    zoom_for_resolution,
)
from ..types import Bounds, Mosaic, Progress
from ..viewport import Viewport

if TYPE_CHECKING:  # pragma: no cover
    from ..http import Fetcher

__all__ = ["TiledLayer", "TilePlan", "BANDS", "EMPTY_STATUSES", "MAX_TILES"]

#: Band labels of every mosaic.
BANDS = ["r", "g", "b", "a"]
#: Statuses that mean "nothing here": the tile is transparent, not an error.
EMPTY_STATUSES = (404, 204)
#: Refuse plans larger than this (a viewport far bigger than the layer's min zoom allows).
MAX_TILES = 4096

# Marker stored in the memory cache for an empty (404/204) tile, so it is not asked for again.
_EMPTY = "empty-tile"


class TilePlan(NamedTuple):
    """Everything a load of one viewport will do: a pure function of viewport and layer.

    Attributes
    ----------
    zoom
        The zoom level chosen for the viewport.
    tiles
        Tiles to fetch, row by row from the north-west; columns unwrapped across the
        antimeridian (``Tile.key`` gives the wrapped ``"z/x/y"``).
    urls
        The URL of each tile, in the same order.
    window
        The mosaic's pixels in the zoom's global pixel grid.
    tile_size
        Pixel size of the tiles.
    """

    zoom: int
    tiles: list[Tile]
    urls: list[str]
    window: PixelWindow
    tile_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the mosaic in pixels."""
        return self.window.shape


class _Outcome(NamedTuple):
    url: str
    image: np.ndarray | None  # None: transparent (empty or failed)
    cached: bool
    reason: str | None  # why the tile is missing, when it is
    failed: bool
    status: int | None = None  # the error status, when the server answered one


class TiledLayer:
    """Base of raster layers served on the Web Mercator tile grid.

    Subclasses implement :meth:`tile_url` and :meth:`query`. Settings are immutable after
    construction, so :meth:`plan` is a pure function of the viewport.
    """

    def __init__(
        self,
        *,
        min_zoom: int = 0,
        max_zoom: int = 19,
        tile_size: int = 256,
        headers: Mapping[str, str] | None = None,
        attribution: str = "",
        name: str | None = None,
    ) -> None:
        if not (0 <= int(min_zoom) <= int(max_zoom) <= 30):
            raise BadInputError(f"need 0 <= min_zoom <= max_zoom <= 30, got {min_zoom}, {max_zoom}")
        if int(tile_size) < 1:
            raise BadInputError(f"tile_size must be positive, got {tile_size}")
        self.min_zoom = int(min_zoom)
        self.max_zoom = int(max_zoom)
        self.tile_size = int(tile_size)
        self.headers = dict(headers or {})
        self.attribution = attribution
        self.name = name or type(self).__name__

    # -- to implement -------------------------------------------------------------------------
    def tile_url(self, tile: Tile) -> str:
        """The URL that serves ``tile`` (columns are wrapped here)."""
        raise NotImplementedError

    def _redact(self, text: str) -> str:
        """``text`` with any secret the layer puts into URLs removed."""
        return text

    async def _decode(self, content: bytes, url: str) -> np.ndarray:
        """One answer's bytes as the tile's ``tile_size`` x ``tile_size`` RGBA, off the loop
        (a subclass that asks for more than the tile, such as a WMS gutter, crops here).

        Raises
        ------
        ParseError
            Not an image, or too large (:func:`~mapstream.layers.imaging.decode_rgba`).
        """
        return await decode_tile(content, self.tile_size, url=self._redact(url))

    # -- planning (pure) ----------------------------------------------------------------------
    def _check_zoom(self, zoom: int) -> int:
        if not isinstance(zoom, (int, np.integer)) or not self.min_zoom <= zoom <= self.max_zoom:
            raise BadInputError(
                f"zoom {zoom!r} is outside {self.name}'s range {self.min_zoom}..{self.max_zoom}"
            )
        return int(zoom)

    def _check_tile(self, tile: Tile) -> int:
        """The tile's zoom, checked against the layer's range, and its row against the grid."""
        z = self._check_zoom(tile.z)
        if not in_grid(Tile(z, wrap_x(tile.x, z), tile.y)):
            raise BadInputError(f"tile row {tile.y} is outside zoom {z}'s 0..{2**z - 1}")
        return z

    def zoom_for(self, viewport: Viewport) -> int:
        """The zoom whose resolution best matches the viewport's, clamped to the layer's range."""
        viewport = Viewport.create(*viewport)
        return zoom_for_resolution(
            viewport.resolution,
            tile_size=self.tile_size,
            min_zoom=self.min_zoom,
            max_zoom=self.max_zoom,
        )

    def tiles_for_bbox(self, bbox_lonlat: Bounds, zoom: int) -> list[Tile]:
        """Tiles covering a (west, south, east, north) box in degrees at ``zoom``.

        ``east < west`` crosses the antimeridian; columns east of it are unwrapped (>= 2**zoom).

        Raises
        ------
        BadInputError
            A malformed box or a zoom outside the layer's range.
        """
        zoom = self._check_zoom(zoom)
        return tiles_in_bbox(lonlat_bbox_to_mercator(tuple(bbox_lonlat)), zoom)

    def plan(self, viewport: Viewport, zoom: int | None = None) -> TilePlan:
        """The tiles, URLs and pixel window a load of ``viewport`` uses.

        Parameters
        ----------
        viewport
            What the user looks at.
        zoom
            Force a zoom level instead of the best match.

        Raises
        ------
        BadInputError
            Zero or negative size, empty ranges, a zoom outside the layer's range, or a plan of
            more than :data:`MAX_TILES` tiles.
        """
        viewport = Viewport.create(*viewport)
        zoom = self.zoom_for(viewport) if zoom is None else self._check_zoom(zoom)
        size = self.tile_size
        window = pixel_window(viewport.bounds, zoom, size)  # rows clamped at the poles
        tiles = tiles_in_window(window, zoom, size)
        if len(tiles) > MAX_TILES:
            raise BadInputError(
                f"{len(tiles)} tiles needed at zoom {zoom} (more than {MAX_TILES}): zoom in, or "
                f"lower {self.name}'s min_zoom ({self.min_zoom})"
            )
        return TilePlan(zoom, tiles, [self.tile_url(t) for t in tiles], window, size)

    # -- loading ------------------------------------------------------------------------------
    def _memory_key(self, url: str) -> Any:
        # Decoded tiles are shared by URL; with per-layer headers (credentials) they are not
        # shared across layers that send different ones.
        return (url, tuple(sorted(self.headers.items()))) if self.headers else url

    async def _fetch_one(self, url: str, fetcher: Fetcher) -> _Outcome:
        key = self._memory_key(url)
        hit = fetcher.memory.get(key)
        if isinstance(hit, np.ndarray) and hit.shape[:2] != (self.tile_size, self.tile_size):
            hit = None  # decoded for a layer with another tile size: decode again
        if hit is not None:
            return _Outcome(url, None if isinstance(hit, str) else hit, True, _reason(hit), False)
        try:
            resp = await fetcher.get(url, headers=self.headers or None, allow_status=EMPTY_STATUSES)
        except LayersError as exc:  # a fetch failure, a refused redirect, a bad header: this tile's
            status = exc.status if isinstance(exc, StatusError) else None
            return _Outcome(url, None, False, self._redact(_describe(exc)), True, status)
        if resp.status in EMPTY_STATUSES or not resp.content:
            fetcher.memory.put(key, f"{_EMPTY}:{resp.status}", 64)
            return _Outcome(url, None, resp.from_cache, f"empty ({resp.status})", False)
        ctype = resp.headers.get("content-type", "").lower()
        if "xml" in ctype and "svg" not in ctype or ctype.startswith(("text/", "application/json")):
            # an error document with a 200 status (a WMS ServiceException, an HTML error page)
            text = resp.content[:300].decode("utf-8", errors="replace")
            excerpt = " ".join(re.sub(r"<[^>]*>", " ", text).split())[:160]
            reason = self._redact(f"server sent {ctype}: {excerpt}")
            return _Outcome(url, None, resp.from_cache, reason, True)
        try:
            image = await self._decode(resp.content, url)
        except LayersError as exc:
            return _Outcome(url, None, resp.from_cache, self._redact(str(exc)), True)
        fetcher.memory.put(key, image, image.nbytes)
        return _Outcome(url, image, resp.from_cache, None, False)

    async def load(
        self, viewport: Viewport, fetcher: Fetcher, *, frame_every: int | None = None
    ) -> AsyncIterator[Mosaic]:
        """Yield the mosaic as tiles arrive (a frame every few tiles), then the final one.

        Tiles are requested concurrently through ``fetcher`` (its per-host limit applies),
        decoded in worker threads and kept decoded in ``fetcher.memory`` keyed by URL, so
        loading a viewport seen before makes no request. A tile answered 404 or 204 is
        transparent; a tile that fails is a transparent hole reported in the mosaic's
        ``errors`` and ``tiles_missing`` while the rest of the mosaic stands.

        Parameters
        ----------
        viewport
            What the user looks at.
        fetcher
            The :class:`~mapstream.layers.http.Fetcher` to use.
        frame_every
            Yield a partial mosaic after this many tiles (default: about eight frames per
            load, at least four tiles apart). ``0`` yields only the final mosaic.

        Raises
        ------
        BadInputError
            As :meth:`plan`.
        """
        plan = self.plan(viewport)
        total = len(plan.tiles)
        if frame_every is None:
            frame_every = max(4, math.ceil(total / 8))
        placements: dict[str, list[Tile]] = {}
        for tile, url in zip(plan.tiles, plan.urls, strict=True):
            placements.setdefault(url, []).append(tile)
        canvas = np.zeros((*plan.shape, 4), dtype=np.uint8)
        state = _LoadState(total)
        tasks = [asyncio.create_task(self._fetch_one(url, fetcher)) for url in placements]
        try:
            last_frame = 0
            for next_done in asyncio.as_completed(tasks):
                outcome = await next_done
                for tile in placements[outcome.url]:
                    self._paint(canvas, plan, tile, outcome.image)
                    state.add(tile, outcome, self._redact(outcome.url))
                if frame_every and state.done - last_frame >= frame_every and state.done < total:
                    last_frame = state.done
                    # copying a large canvas takes milliseconds: not on the event loop
                    frame = await asyncio.to_thread(canvas.copy)
                    yield self._mosaic(frame, plan, state, complete=False)
        finally:
            for task in tasks:  # an abandoned or cancelled load stops its requests
                task.cancel()
        yield self._mosaic(canvas, plan, state, complete=True)

    async def fetch(self, viewport: Viewport, fetcher: Fetcher) -> Mosaic:
        """The final mosaic of :meth:`load` (no partial frames are built).

        Raises
        ------
        BadInputError
            As :meth:`plan`.
        """
        async with contextlib.aclosing(self.load(viewport, fetcher, frame_every=0)) as frames:
            async for mosaic in frames:
                if mosaic.complete:
                    return mosaic
        raise RuntimeError("load() ended without a complete mosaic")  # cannot happen

    # -- assembling ---------------------------------------------------------------------------
    @staticmethod
    def _paint(canvas: np.ndarray, plan: TilePlan, tile: Tile, image: np.ndarray | None) -> None:
        if image is None:
            return  # the canvas is transparent already
        c0, r0, c1, r1 = plan.window
        left, top, right, bottom = tile_window(tile, plan.tile_size)
        a0, a1 = max(left, c0), min(right, c1)
        b0, b1 = max(top, r0), min(bottom, r1)
        if a1 > a0 and b1 > b0:
            canvas[b0 - r0 : b1 - r0, a0 - c0 : a1 - c0] = image[
                b0 - top : b1 - top, a0 - left : a1 - left
            ]

    def _mosaic(
        self, data: np.ndarray, plan: TilePlan, state: _LoadState, *, complete: bool
    ) -> Mosaic:
        x, y = pixel_centres(plan.window, plan.zoom, plan.tile_size)
        progress = Progress(
            done=state.done,
            total=state.total,
            unit="tiles",
            failed=state.failed,
            cached=state.cached,
            complete=complete,
        )
        image = xr.DataArray(
            data,
            dims=("y", "x", "band"),
            coords={"y": y, "x": x, "band": BANDS},
            name=self.name,
            attrs={"crs": "EPSG:3857", "zoom": plan.zoom},
        )
        return Mosaic(
            image=image,
            progress=progress,
            errors=tuple(state.errors),
            zoom=plan.zoom,
            tiles_used=tuple(state.used),
            tiles_missing=dict(state.missing),
            attribution=self.attribution or None,
        )


class _LoadState:
    """Book-keeping of one load (what arrived, what is missing and why)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = self.failed = self.cached = 0
        self.used: dict[str, None] = {}  # ordered set
        self.missing: dict[str, str] = {}
        self.errors: list[TileError] = []

    def add(self, tile: Tile, outcome: _Outcome, url: str) -> None:
        self.done += 1
        self.cached += outcome.cached
        if outcome.image is not None:
            self.used[tile.key] = None
        elif outcome.reason is not None:
            self.missing[tile.key] = outcome.reason
        if outcome.failed:
            self.failed += 1
            reason = outcome.reason or "failed"
            self.errors.append(TileError(tile.key, reason, url=url, status=outcome.status))


def _reason(hit: Any) -> str | None:
    return f"empty ({hit.rsplit(':', 1)[-1]})" if isinstance(hit, str) else None


def _describe(exc: LayersError) -> str:
    if isinstance(exc, StatusError):
        return f"HTTP {exc.status}"
    return f"{type(exc).__name__}: {exc}"
