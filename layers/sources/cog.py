"""Cloud-Optimized GeoTIFFs as a layer: windows read with HTTP ranges, warped to the view.

:class:`COGLayer` (``kind="cog"``) reads one COG or a first-valid mosaic of several for a
viewport: each file's header once (:func:`~mapstream.layers.raster.reader.open_cog`), the
overview whose resolution suits the view (rio-tiler's rule), only the internal tiles under the
view, every byte through the :class:`~mapstream.layers.http.Fetcher`
(:class:`~mapstream.layers.raster.store.RangeStore`). Tiles are decoded in async-tiff's thread
pool and warped into EPSG:3857 in a worker thread (``rasterio.warp.reproject`` on arrays in
memory, nearest neighbour), so files in any CRS line up with the map.

- :meth:`COGLayer.fetch` returns the values: an :class:`xarray.DataArray` with dims
  ``("band", "y", "x")``, ``band`` the 1-based band numbers, ``x``/``y`` the viewport's pixel
  centres in EPSG:3857 (``y`` from north to south). It is float (``float32``, or ``float64``
  for 32/64-bit samples) with **NaN where there is no data**: the file's nodata value, its
  mask or alpha band, and outside every file.
- :meth:`COGLayer.load` streams :class:`~mapstream.layers.types.Mosaic` frames as tiles arrive,
  the values drawn as RGBA (one band: ``rescale`` and ``colormap``; RGB(A): as is), like the
  tile layers' frames, so the app draws them unchanged.
- :meth:`COGLayer.query` answers the values at a point.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import xarray as xr

from ..errors import BadInputError, FetchError, LayersError, SourceChangedError, StatusError, TileError
from ..http.urls import http_urls
from ..raster.colorize import check_colormap, to_rgba
from ..raster.reader import (
    COGInfo,
    Level,
    PixelBox,
    choose_level,
    forget_cog,
    open_cog,
    paste_tiles,
    read_tiles,
    source_window,
    tiles_for_window,
    window_dtype,
)
from ..raster.warp import Grid, first_valid, grid_for, warp_to_grid
from ..redact import redact_url
from ..tilegrid import zoom_for_resolution
from ..types import Mosaic, Progress, QueryResult
from ..viewport import Viewport
from . import register

if TYPE_CHECKING:  # pragma: no cover
    from ..catalog import LayerSpec
    from ..http import Fetcher

__all__ = ["COGLayer", "BANDS", "TILES_PER_READ"]

#: Band labels of the RGBA frames :meth:`COGLayer.load` yields.
BANDS = ["r", "g", "b", "a"]
#: Internal tiles fetched by one read (consecutive in a row are merged into one request).
TILES_PER_READ = 16
#: Refuse a view that needs more internal tiles than this from one file.
MAX_TILES = 4096


@dataclass
class _Source:
    """One file's part of a load: its header, level, window and what arrived."""

    index: int
    url: str
    info: COGInfo | None = None
    level: Level | None = None
    box: PixelBox | None = None
    tiles: list[tuple[int, int]] = field(default_factory=list)
    canvas: np.ndarray | None = None
    error: LayersError | None = None

    def key(self, tile: tuple[int, int] | None = None) -> str:
        level = self.level.index if self.level is not None else 0
        return f"{self.index}:{level}" + ("" if tile is None else f"/{tile[0]}/{tile[1]}")


@dataclass
class _State:
    total: int = 0
    done: int = 0
    failed: int = 0
    used: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    errors: list[LayersError] = field(default_factory=list)
    causes: list[LayersError] = field(default_factory=list)  # the errors as raised
    count: int | None = None  # bands of the files


@register
class COGLayer:
    """Cloud-Optimized GeoTIFF(s) read for a viewport with HTTP range requests.

    Parameters
    ----------
    url_or_urls
        One COG URL, or several: a first-valid mosaic in that order (each pixel from the first
        file that has data there). The files must have the same band count.
    bands
        1-based band numbers to read (default all), e.g. ``[3, 2, 1]``.
    rescale
        ``(low, high)`` mapped to the colormap's ends (one band) or to 0..255 (RGB) when drawn;
        default: the view's own range for one band, the values as they are for RGB.
    colormap
        A matplotlib colormap name for one band (default ``gray``).
    name, attribution
        The layer's name and credit line.
    headers
        Extra request headers (credentials), sent with every range request.

    Raises
    ------
    BadInputError
        No URL, a URL that is not http(s), bad band numbers, a bad ``rescale`` or an unknown
        colormap.
    """

    kind: ClassVar[str] = "cog"

    def __init__(
        self,
        url_or_urls: str | Sequence[str],
        *,
        bands: Sequence[int] | None = None,
        rescale: Sequence[float] | None = None,
        colormap: str | None = None,
        name: str | None = None,
        attribution: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        urls = http_urls(url_or_urls, "a COG URL")
        if bands is not None:
            bands = [int(b) for b in bands]
            if not bands or min(bands) < 1:
                raise BadInputError(f"bands are 1-based band numbers, got {bands!r}")
        if rescale is not None:
            rescale = tuple(float(v) for v in rescale)
            if len(rescale) != 2 or not all(math.isfinite(v) for v in rescale) or rescale[0] == rescale[1]:
                raise BadInputError(f"rescale must be two different numbers (low, high), got {rescale!r}")
        self.urls = urls
        self.bands = bands
        self.rescale = rescale
        self.colormap = check_colormap(colormap)
        self.name = name or "cog"
        self.attribution = attribution or None
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"COGLayer({[redact_url(u) for u in self.urls]!r}, name={self.name!r})"

    @classmethod
    def from_spec(
        cls, spec: LayerSpec, url: str | Sequence[str] | None, **zooms: int
    ) -> COGLayer:
        """The layer a catalog entry describes (``url`` or ``urls``, ``bands``, ``rescale``,
        ``style.cmap``); ``url`` is the resolved URL (or URLs) of the entry, ``zooms`` unused.

        Raises
        ------
        BadInputError
            As the constructor.
        """
        urls = url if url is not None else spec.urls  # the resolved URL(s) first
        if urls is None:
            raise BadInputError(f"layer {spec.name!r}: a cog layer needs url or urls")
        return cls(
            urls,
            bands=spec.bands,
            rescale=spec.rescale,
            colormap=spec.style.cmap,
            name=spec.name,
            attribution=spec.attribution or None,
        )

    def request_prefixes(self) -> list[str]:
        """The URLs the layer requests (the catalog gives their hosts limits and headers).

        >>> COGLayer(["http://h.test/a.tif", "http://h.test/a.tif"]).request_prefixes()
        ['http://h.test/a.tif']
        """
        return list(dict.fromkeys(self.urls))

    def probe_request(self) -> tuple[str, None, tuple[int, ...], dict[str, str]]:
        """What ``mapstream check`` asks to see that the layer works: the first kilobyte of its
        first file, by range (never the whole file): ``(url, params, allowed statuses, headers)``.

        >>> COGLayer("http://h.test/a.tif").probe_request()
        ('http://h.test/a.tif', None, (), {'Range': 'bytes=0-1023'})
        """
        return self.urls[0], None, (), {"Range": "bytes=0-1023"}

    # -- planning ------------------------------------------------------------------------

    async def _plan(self, viewport: Viewport, fetcher: Fetcher) -> tuple[Grid, list[_Source]]:
        grid = grid_for(viewport)
        target = viewport.resolution
        sources = [_Source(i, url) for i, url in enumerate(self.urls)]

        async def one(src: _Source) -> None:
            try:
                info = await open_cog(src.url, fetcher, self.headers)
                if self.bands is not None and max(self.bands) > info.count:
                    raise BadInputError(
                        f"{self.name}: band {max(self.bands)} asked for, but "
                        f"{redact_url(src.url)} has {info.count}"
                    )
                level = info.levels[choose_level([lv.res_3857 for lv in info.levels], target)]
                box = await asyncio.to_thread(source_window, info, level, viewport.bounds)
            except LayersError as exc:
                src.error = exc
                return
            src.info, src.level, src.box = info, level, box
            if box is not None:
                src.tiles = tiles_for_window(level, box)
                if len(src.tiles) > MAX_TILES:
                    src.error = BadInputError(
                        f"{self.name}: {len(src.tiles)} internal tiles needed from "
                        f"{redact_url(src.url)} (more than {MAX_TILES}): zoom in"
                    )
                    src.tiles = []
                    return
                src.canvas = np.full(
                    (info.count, *box.shape), np.nan, dtype=window_dtype(info.dtype)
                )

        await asyncio.gather(*(one(s) for s in sources))
        return grid, sources

    # -- loading -------------------------------------------------------------------------

    async def _stream(
        self, viewport: Viewport, fetcher: Fetcher, *, frame_every: int
    ) -> AsyncIterator[tuple[np.ndarray | None, _State, bool]]:
        """(values warped to the view or None, book-keeping, complete) as reads finish."""
        viewport = Viewport.create(*viewport)
        grid, sources = await self._plan(viewport, fetcher)
        state = _State()
        jobs: list[tuple[_Source, list[tuple[int, int]]]] = []
        for src in sources:
            if src.error is not None:
                self._fail(state, src, None, src.error)
            for i in range(0, len(src.tiles), TILES_PER_READ):
                jobs.append((src, src.tiles[i : i + TILES_PER_READ]))
        state.total = sum(len(s.tiles) for s in sources)
        state.count = next((s.info.count for s in sources if s.info is not None), None)
        if frame_every < 0:
            frame_every = max(4, math.ceil(state.total / 8))

        async def run(src: _Source, xy: list[tuple[int, int]]) -> tuple[_Source, list, Any]:
            assert src.info is not None and src.level is not None
            try:
                return src, xy, await read_tiles(src.info, src.level, xy)
            except LayersError as exc:
                return src, xy, exc

        tasks = [asyncio.create_task(run(src, xy)) for src, xy in jobs]
        try:
            since = 0
            for next_done in asyncio.as_completed(tasks):
                src, xy, got = await next_done
                if isinstance(got, LayersError):
                    if isinstance(got, SourceChangedError):
                        forget_cog(src.url, fetcher, self.headers)
                    for tile in xy:
                        self._fail(state, src, tile, got)
                else:
                    assert src.canvas is not None and src.info and src.level and src.box
                    await asyncio.to_thread(paste_tiles, src.canvas, src.info, src.level, src.box, got)
                    state.used.extend(src.key(t) for t in xy)
                state.done += len(xy)
                since += len(xy)
                if frame_every and since >= frame_every and state.done < state.total:
                    since = 0
                    yield await asyncio.to_thread(self._warp, sources, grid), state, False
        finally:
            for task in tasks:  # an abandoned or cancelled load stops its reads
                task.cancel()
        yield await asyncio.to_thread(self._warp, sources, grid), state, True

    def _fail(self, state: _State, src: _Source, tile: tuple[int, int] | None, exc: LayersError) -> None:
        key = src.key(tile)
        reason = _describe(exc)
        state.missing[key] = reason
        state.causes.append(exc)
        state.errors.append(
            TileError(key, reason, url=redact_url(src.url), status=getattr(exc, "status", None))
        )
        state.failed += 1 if tile is not None else 0

    def _warp(self, sources: list[_Source], grid: Grid) -> np.ndarray | None:
        warped = []
        for src in sources:
            if src.canvas is None or src.info is None or src.level is None or src.box is None:
                warped.append(None)
                continue
            t = src.level.transform
            shifted = t @ t.translation(src.box.col0, src.box.row0)
            data = src.canvas if self.bands is None else src.canvas[[b - 1 for b in self.bands]]
            warped.append(warp_to_grid(data, shifted, src.info.crs, grid))
        return first_valid(warped)

    def _bands(self, sources_count: int | None) -> list[int]:
        if self.bands is not None:
            return list(self.bands)
        return list(range(1, (sources_count or 1) + 1))

    async def load(
        self, viewport: Viewport, fetcher: Fetcher, *, frame_every: int | None = None
    ) -> AsyncIterator[Mosaic]:
        """Yield RGBA mosaics of the view as tiles arrive, then the final one.

        A read that fails leaves a transparent hole reported in the mosaic's ``errors`` and
        ``tiles_missing`` (keys ``"file:level/col/row"``, ``"file:level"`` for a file whose
        header failed); a file that changed mid-read has its header read again next time.

        Parameters
        ----------
        frame_every
            Yield a partial mosaic after this many internal tiles (default: about eight
            frames per load). ``0`` yields only the final mosaic.

        Raises
        ------
        BadInputError
            A viewport of zero size or empty ranges.
        """
        viewport = Viewport.create(*viewport)
        every = frame_every
        async with contextlib.aclosing(
            self._stream(viewport, fetcher, frame_every=every if every is not None else -1)
        ) as frames:
            async for data, state, complete in frames:
                yield await asyncio.to_thread(self._mosaic, data, state, viewport, complete)

    def _mosaic(
        self, data: np.ndarray | None, state: _State, viewport: Viewport, complete: bool
    ) -> Mosaic:
        grid = grid_for(viewport)
        if data is None:
            rgba = np.zeros((grid.height, grid.width, 4), dtype=np.uint8)
        else:
            rgba = to_rgba(data, rescale=self.rescale, colormap=self.colormap)
        zoom = zoom_for_resolution(viewport.resolution, tile_size=256, min_zoom=0, max_zoom=30)
        image = xr.DataArray(
            rgba,
            dims=("y", "x", "band"),
            coords={"y": grid.y, "x": grid.x, "band": BANDS},
            name=self.name,
            attrs={"crs": "EPSG:3857", "zoom": zoom},
        )
        progress = Progress(
            done=state.done, total=state.total, unit="tiles", failed=state.failed, complete=complete
        )
        return Mosaic(
            image=image,
            progress=progress,
            errors=tuple(state.errors),
            zoom=zoom,
            tiles_used=tuple(state.used),
            tiles_missing=dict(state.missing),
            attribution=self.attribution,
        )

    async def fetch(self, viewport: Viewport, fetcher: Fetcher) -> xr.DataArray:
        """The values of the view: dims ``("band", "y", "x")`` in EPSG:3857, NaN for no data.

        A file that changed while it was read is read again once, from its header.

        Raises
        ------
        BadInputError
            A bad viewport, or files with different band counts.
        FetchError, RangeError, SourceChangedError, ParseError
            A read failed (no partial result is returned as if it were whole).
        """
        viewport = Viewport.create(*viewport)
        for attempt in range(2):
            async with contextlib.aclosing(self._stream(viewport, fetcher, frame_every=0)) as frames:
                async for data, state, complete in frames:
                    if complete:
                        break
            if not state.causes:
                break
            changed = any(isinstance(e, SourceChangedError) for e in state.causes)
            if not (changed and attempt == 0):
                raise state.causes[0]
        grid = grid_for(viewport)
        bands = self._bands(state.count)
        if data is None:
            data = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
        return xr.DataArray(
            data,
            dims=("band", "y", "x"),
            coords={"band": bands, "y": grid.y, "x": grid.x},
            name=self.name,
            attrs={"crs": "EPSG:3857"},
        )

    async def query(self, lon: float, lat: float, fetcher: Fetcher) -> QueryResult:
        """The values at a point: one row per file with data there (``source``, ``band_N``).

        Files that fail are left out (inspection never fails a click).
        """
        from rasterio.warp import transform as transform_points

        from ..projection import lonlat_to_mercator

        rows: QueryResult = []
        x, y = lonlat_to_mercator(lon, lat)
        for url in self.urls:
            try:
                info = await open_cog(url, fetcher, self.headers)
                xs, ys = transform_points("EPSG:3857", info.crs, [x], [y])
                level = info.levels[0]
                col, row = ~level.transform @ (xs[0], ys[0])
                if not (0 <= col < level.width and 0 <= row < level.height):
                    continue
                c, r = int(col), int(row)
                box = PixelBox(c, r, c + 1, r + 1)
                tiles = await read_tiles(info, level, tiles_for_window(level, box))
                canvas = np.full((info.count, 1, 1), np.nan, dtype=window_dtype(info.dtype))
                paste_tiles(canvas, info, level, box, tiles)
            except LayersError:
                continue
            values = canvas[:, 0, 0]
            if np.isnan(values).all():
                continue
            picked = self.bands or list(range(1, info.count + 1))
            row_out: dict[str, Any] = {"source": redact_url(url)}
            for b in picked:
                v = values[b - 1]
                row_out[f"band_{b}"] = None if np.isnan(v) else float(v)
            rows.append(row_out)
        return rows


def _describe(exc: LayersError) -> str:
    if isinstance(exc, StatusError):
        return f"HTTP {exc.status}"
    if isinstance(exc, FetchError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


