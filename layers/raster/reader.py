"""A Cloud-Optimized GeoTIFF read in windows: its header once, then only the tiles a view needs.

:func:`open_cog` reads a COG's header (IFDs, geokeys, overviews) through a
:class:`~.store.RangeStore` with async-geotiff and keeps the result, a :class:`COGInfo`, in
``fetcher.memory``: a COG's header is read once per fetcher. :func:`choose_level` picks the
overview for a target resolution (rio-tiler's rule), :func:`source_window` the pixels of that
level a view needs, and :func:`read_window` fetches the internal tiles under that window
(async-tiff decodes them in its own thread pool) and returns them as a float array with NaN
where the file has no data (nodata value, mask or alpha band). Reprojection is
:mod:`.warp`'s.

Errors of the store cross async-tiff's Rust code as plain exceptions; the store keeps the
engine's error (:attr:`~.store.RangeStore.error`) and it is raised here in their place.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import LayersError, ParseError
from ..http.flight import SingleFlight
from ..redact import redact_url
from .store import RangeStore

if TYPE_CHECKING:  # pragma: no cover
    from affine import Affine

    from ..http import Fetcher
    from ..types import Bounds

__all__ = [
    "COGInfo",
    "Level",
    "PixelBox",
    "choose_level",
    "forget_cog",
    "open_cog",
    "read_window",
    "source_window",
    "tile_ranges",
    "tiles_for_window",
    "window_dtype",
]

#: Bytes read first for a header (async-tiff reads more, doubling, when the IFDs are longer).
HEADER_PREFETCH = 32 * 1024
#: What the memory cache is charged for a header (the IFDs' tile offsets dominate).
_HEADER_NBYTES = 256 * 1024


class Level(NamedTuple):
    """One resolution of a COG: the full image (``index`` 0) or an overview (1, 2, ...).

    ``image`` is the async-geotiff object with ``fetch_tiles``; ``res_3857`` the pixel size this
    level has once warped to EPSG:3857 (metres, for choosing a level).
    """

    index: int
    image: Any
    transform: Affine
    width: int
    height: int
    tile_width: int
    tile_height: int
    res_3857: float


class PixelBox(NamedTuple):
    """A window of a level: columns ``[col0, col1)`` and rows ``[row0, row1)``."""

    col0: int
    row0: int
    col1: int
    row1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0


@dataclass(frozen=True, eq=False)
class COGInfo:
    """What a COG's header says, and the store its tiles are read through."""

    url: str
    store: RangeStore
    geotiff: Any
    crs: Any  # rasterio.crs.CRS
    levels: tuple[Level, ...]
    count: int
    dtype: np.dtype
    nodata: float | None
    alpha: int | None  # 0-based index of an alpha band
    has_mask: bool

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the file's CRS."""
        t = self.levels[0].transform
        w, h = self.levels[0].width, self.levels[0].height
        xs = (t.c, t.c + t.a * w)
        ys = (t.f, t.f + t.e * h)
        return min(xs), min(ys), max(xs), max(ys)


def _cache_key(url: str, headers: Mapping[str, str] | None) -> tuple[Any, ...]:
    return ("cog-header", url, tuple(sorted((headers or {}).items())))


#: Left in place of a header whose file changed: the next open reads past the disk cache.
_CHANGED = "cog-changed"


def forget_cog(url: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None) -> None:
    """Drop the cached header of ``url`` (after the file changed), so it is read again, from
    the server (past the disk cache, which may hold parts of the older version)."""
    fetcher.memory.put(_cache_key(url, headers), _CHANGED, 64)


async def open_cog(
    url: str, fetcher: Fetcher, headers: Mapping[str, str] | None = None
) -> COGInfo:
    """The header of the COG at ``url``, read once per fetcher (kept in ``fetcher.memory``).

    Raises
    ------
    ParseError
        Not a tiled GeoTIFF (or one async-geotiff cannot read).
    RangeError, SourceChangedError, FetchError
        As the store's reads raise them.
    """
    key = _cache_key(url, headers)
    hit = fetcher.memory.get(key)
    if isinstance(hit, COGInfo):
        return hit
    # Views of one file opened at once share one read of its header (and one store, so their
    # ranges are shared too).
    loop = asyncio.get_running_loop()
    per_loop = _OPENING.setdefault(fetcher, weakref.WeakKeyDictionary())
    flights = per_loop.get(loop)
    if flights is None:
        flights = per_loop[loop] = SingleFlight(loop)
    fresh = hit == _CHANGED
    return await flights.run(key, lambda: _open(url, fetcher, headers, key, use_cache=not fresh))


#: Header reads in flight: fetcher -> event loop -> flights by cache key.
_OPENING: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, SingleFlight[COGInfo]]] = (
    weakref.WeakKeyDictionary()
)


async def _open(
    url: str, fetcher: Fetcher, headers: Mapping[str, str] | None, key: tuple[Any, ...], *,
    use_cache: bool,
) -> COGInfo:
    from async_geotiff import GeoTIFF

    store = RangeStore(url, fetcher, headers=headers, use_cache=use_cache)
    try:
        geotiff = await GeoTIFF.open(url, store=store, prefetch=HEADER_PREFETCH)
    except LayersError:
        raise
    except Exception as exc:  # async-tiff's errors are plain exceptions
        raise _translate(exc, store, f"not a readable GeoTIFF: {exc}") from exc
    info = _describe(url, store, geotiff)
    fetcher.memory.put(key, info, _HEADER_NBYTES)
    return info


def _translate(exc: BaseException, store: RangeStore, message: str) -> LayersError:
    if store.error is not None:
        return store.error
    return ParseError(message, url=redact_url(store.url))


def _describe(url: str, store: RangeStore, geotiff: Any) -> COGInfo:
    import rasterio.crs
    from async_geotiff.enums import ColorInterp
    from rasterio.warp import calculate_default_transform

    try:
        crs = rasterio.crs.CRS.from_wkt(geotiff.crs.to_wkt())
        dtype = geotiff.dtype
        if dtype is None:
            raise ParseError("unsupported sample format", url=redact_url(url))
        full = geotiff.transform
        images = [geotiff, *geotiff.overviews]
        w0, h0 = geotiff.width, geotiff.height
        west, north = full.c, full.f
        east, south = full.c + full.a * w0, full.f + full.e * h0
        dst, _, _ = calculate_default_transform(
            crs, "EPSG:3857", w0, h0, left=min(west, east), bottom=min(south, north),
            right=max(west, east), top=max(south, north),
        )
        res0 = abs(dst.a)
        levels = tuple(
            Level(
                index=i,
                image=img,
                transform=img.transform,
                width=img.width,
                height=img.height,
                tile_width=img.tile_width,
                tile_height=img.tile_height,
                res_3857=res0 * w0 / img.width,
            )
            for i, img in enumerate(images)
        )
        alphas = [i for i, c in enumerate(geotiff.colorinterp) if c == ColorInterp.ALPHA]
    except LayersError:
        raise
    except Exception as exc:
        raise ParseError(f"unusable GeoTIFF header: {exc}", url=redact_url(url)) from exc
    return COGInfo(
        url=url,
        store=store,
        geotiff=geotiff,
        crs=crs,
        levels=levels,
        count=geotiff.count,
        dtype=np.dtype(dtype),
        nodata=geotiff.nodata,
        alpha=alphas[0] if alphas else None,
        has_mask=geotiff.mask_ifd is not None,
    )


def choose_level(resolutions: Sequence[float], target: float) -> int:
    """The level to read for ``target`` metres per pixel: rio-tiler's (and GDAL's) rule.

    The coarsest level that is still at least as fine as the target (within 0.1 m), so the
    warp only ever downsamples; the full resolution when the target is finer than it.
    ``resolutions`` go from the full image (index 0) to the coarsest overview.

    >>> choose_level([10, 20, 40, 80], 5), choose_level([10, 20, 40, 80], 25)
    (0, 1)
    >>> choose_level([10, 20, 40, 80], 40.05), choose_level([10, 20, 40, 80], 1000)
    (2, 3)
    """
    chosen = 0
    for i, res in enumerate(resolutions):
        if res <= target or abs(res - target) < 0.1:
            chosen = i
    return chosen


def source_window(info: COGInfo, level: Level, bounds_3857: Bounds, pad: int = 2) -> PixelBox | None:
    """The pixels of ``level`` under an EPSG:3857 box, ``pad`` pixels wider; None if outside.

    The box is transformed with densified edges (a view's outline bends in another CRS).
    """
    from rasterio.warp import transform_bounds

    try:
        west, south, east, north = transform_bounds(
            "EPSG:3857", info.crs, *bounds_3857, densify_pts=21
        )
    except Exception:  # a view partly outside the CRS's domain: read the whole level
        west, south, east, north = info.bounds
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        west, south, east, north = info.bounds
    inv = ~level.transform
    cols, rows = [], []
    for x, y in ((west, south), (west, north), (east, south), (east, north)):
        c, r = inv @ (x, y)
        cols.append(c)
        rows.append(r)
    col0 = max(0, math.floor(min(cols)) - pad)
    col1 = min(level.width, math.ceil(max(cols)) + pad)
    row0 = max(0, math.floor(min(rows)) - pad)
    row1 = min(level.height, math.ceil(max(rows)) + pad)
    if col1 <= col0 or row1 <= row0:
        return None
    return PixelBox(col0, row0, col1, row1)


def tiles_for_window(level: Level, box: PixelBox) -> list[tuple[int, int]]:
    """(column, row) of the internal tiles under ``box``, row by row (the order a COG
    stores them in, so neighbours in the list are neighbours on disk).

    >>> lv = Level(0, None, None, 1000, 600, 256, 256, 1.0)
    >>> tiles_for_window(lv, PixelBox(250, 0, 520, 10))
    [(0, 0), (1, 0), (2, 0)]
    """
    tw, th = level.tile_width, level.tile_height
    return [
        (c, r)
        for r in range(box.row0 // th, (box.row1 - 1) // th + 1)
        for c in range(box.col0 // tw, (box.col1 - 1) // tw + 1)
    ]


def window_dtype(dtype: np.dtype) -> np.dtype:
    """The float type a window of ``dtype`` samples is returned in (exact for every value).

    >>> str(window_dtype(np.dtype("uint8"))), str(window_dtype(np.dtype("int32")))
    ('float32', 'float64')
    """
    if dtype.kind == "f":
        return np.dtype("float64") if dtype.itemsize > 4 else np.dtype("float32")
    return np.dtype("float32") if dtype.itemsize <= 2 else np.dtype("float64")


def tile_ranges(level: Level, xy: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The byte ranges ``[offset, offset + count)`` of tiles ``xy`` of ``level`` (every band
    plane of a planar file, and the mask's tiles), from the IFDs' ``TileOffsets`` and
    ``TileByteCounts``; empty tiles (count 0) are left out.
    """
    from async_tiff.enums import PlanarConfiguration

    out: list[tuple[int, int]] = []
    image = level.image
    for ifd in (image.ifd, getattr(image, "mask_ifd", None)):
        if ifd is None:
            continue
        offsets, counts = ifd.tile_offsets, ifd.tile_byte_counts
        if not offsets or not counts:
            continue
        tw = ifd.tile_width or ifd.image_width
        th = ifd.tile_height or ifd.image_height
        across = -(-ifd.image_width // tw)
        per_plane = across * -(-ifd.image_height // th)
        planar = ifd.planar_configuration == PlanarConfiguration.Planar
        planes = ifd.samples_per_pixel if planar else 1
        for plane in range(planes):
            for col, row in xy:
                i = plane * per_plane + row * across + col
                if i < len(offsets) and counts[i]:
                    out.append((offsets[i], offsets[i] + counts[i]))
    return out


async def read_tiles(info: COGInfo, level: Level, xy: Sequence[tuple[int, int]]) -> list[Any]:
    """Fetch and decode internal tiles of ``level`` (async-geotiff ``Tile`` objects).

    Raises
    ------
    ParseError
        A tile that does not decode.
    RangeError, SourceChangedError, FetchError
        As the store's reads raise them.
    """
    info.store.error = None
    # The bytes first, by our own reads: merged, and cancellable (a load that is abandoned asks
    # nothing more; async-tiff's Rust futures go on when the task awaiting them is cancelled).
    # async-tiff then finds every range in memory and only decodes.
    ranges = tile_ranges(level, xy)
    if ranges:
        await info.store.read(ranges)
    try:
        return await level.image.fetch_tiles(list(xy))
    except LayersError:
        raise
    except Exception as exc:
        raise _translate(exc, info.store, f"tiles {list(xy)[:4]} of level {level.index} "
                         f"do not decode: {exc}") from exc


def paste_tiles(
    canvas: np.ndarray, info: COGInfo, level: Level, box: PixelBox, tiles: Sequence[Any]
) -> None:
    """Write decoded tiles into ``canvas`` (bands, rows, cols of ``box``), NaN where invalid.

    Synchronous (copies, masks): run it off the event loop for large windows.
    """
    tw, th = level.tile_width, level.tile_height
    for tile in tiles:
        data = np.asarray(tile.array.data)
        left, top = tile.x * tw, tile.y * th
        a0, a1 = max(left, box.col0), min(left + data.shape[2], box.col1)
        b0, b1 = max(top, box.row0), min(top + data.shape[1], box.row1)
        if a1 <= a0 or b1 <= b0:
            continue
        part = data[:, b0 - top : b1 - top, a0 - left : a1 - left].astype(canvas.dtype)
        invalid = np.zeros(part.shape[1:], dtype=bool)
        if info.nodata is not None:
            nod = info.nodata
            raw = data[:, b0 - top : b1 - top, a0 - left : a1 - left]
            invalid |= np.isnan(raw).all(axis=0) if math.isnan(nod) else (raw == nod).all(axis=0)
        if tile.array.mask is not None:
            invalid |= ~np.asarray(tile.array.mask)[b0 - top : b1 - top, a0 - left : a1 - left]
        if info.alpha is not None:
            invalid |= data[info.alpha, b0 - top : b1 - top, a0 - left : a1 - left] == 0
        part[:, invalid] = np.nan
        canvas[:, b0 - box.row0 : b1 - box.row0, a0 - box.col0 : a1 - box.col0] = part


async def read_window(info: COGInfo, level: Level, box: PixelBox) -> np.ndarray:
    """The pixels of ``box`` at ``level``: (bands, rows, cols) float, NaN where no data.

    Raises
    ------
    ParseError, RangeError, SourceChangedError, FetchError
        As :func:`read_tiles`.
    """
    tiles = await read_tiles(info, level, tiles_for_window(level, box))
    canvas = np.full((info.count, *box.shape), np.nan, dtype=window_dtype(info.dtype))
    await asyncio.to_thread(paste_tiles, canvas, info, level, box, tiles)
    return canvas
