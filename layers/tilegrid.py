"""Web Mercator tile-grid arithmetic: pure functions, no I/O. All of the engine's grid math.

Every place that works on the XYZ grid calls these: the tile and WMS sources (zoom choice,
planning, pixel windows, mosaic coordinates, the pixel of a point query), the CLI's prefetch and
the demo tile server (tile bounds).

The grid is the usual XYZ ("slippy map") one: at zoom ``z`` the world square
``[-ORIGIN_SHIFT, ORIGIN_SHIFT]`` (EPSG:3857 metres) is cut into ``2**z`` x ``2**z`` tiles, column
``x`` counting east from the antimeridian and row ``y`` counting south from the top (TMS counts
rows north from the bottom: :func:`tms_y`).

Columns are handled *unwrapped*: a view that crosses 180 degrees eastwards has columns ``>= 2**z``
(and one crossing westwards has negative columns); :func:`wrap_x` maps them back to the column
the server knows, so the mosaic keeps increasing x like :class:`~mapstream.layers.viewport.Viewport`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .errors import BadInputError
from .projection import ORIGIN_SHIFT, lonlat_bbox_to_mercator
from .types import Bounds

__all__ = [
    "Tile",
    "PixelWindow",
    "WORLD_SIZE",
    "resolution",
    "zoom_for_resolution",
    "tile_bounds",
    "tile_range",
    "tiles_in_bbox",
    "tile_at",
    "in_grid",
    "pixel_window",
    "tiles_in_window",
    "tile_window",
    "pixel_centres",
    "wrap_x",
    "tms_y",
]

#: Width (and height) of the Web Mercator world, in metres.
WORLD_SIZE = 2.0 * ORIGIN_SHIFT

# Floating-point slack when a bound falls exactly on a tile edge (1 mm is far below a pixel).
_EPS = 1e-3


class PixelWindow(NamedTuple):
    """A rectangle of a zoom's global pixel grid: columns ``col0..col1``, rows ``row0..row1``.

    Column 0 is the antimeridian's west edge, row 0 the top (north) of the world; the ends are
    exclusive. Columns are unwrapped like :class:`Tile` columns.
    """

    col0: int
    row0: int
    col1: int
    row1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.row1 - self.row0, self.col1 - self.col0)


class Tile(NamedTuple):
    """One tile of the XYZ grid: zoom, column, row (row 0 at the top, north).

    ``x`` may be outside ``[0, 2**z)`` for a view that crosses the antimeridian; see
    :func:`wrap_x`.

    >>> Tile(3, 4, 2)
    Tile(z=3, x=4, y=2)
    >>> str(Tile(3, 4, 2).key)
    '3/4/2'
    """

    z: int
    x: int
    y: int

    @property
    def key(self) -> str:
        """``"z/x/y"`` with the column wrapped into the world."""
        return f"{self.z}/{wrap_x(self.x, self.z)}/{self.y}"


def resolution(zoom: int, tile_size: int = 256) -> float:
    """Metres per tile pixel at ``zoom``.

    >>> round(resolution(0), 4)
    156543.0339
    >>> resolution(1) == resolution(0) / 2 == resolution(0, tile_size=512)
    True
    """
    return WORLD_SIZE / (tile_size * 2**zoom)


def zoom_for_resolution(
    res: float, *, tile_size: int = 256, min_zoom: int = 0, max_zoom: int = 19
) -> int:
    """The zoom whose pixel resolution best matches ``res`` (nearest in log scale), clamped.

    Parameters
    ----------
    res
        Metres per screen pixel of the view.
    tile_size
        Pixel size of the layer's tiles (512 for ``@2x`` / retina tiles).
    min_zoom, max_zoom
        The layer's zoom range.

    Raises
    ------
    BadInputError
        ``res`` is not a positive, finite number.

    >>> zoom_for_resolution(resolution(5))
    5
    >>> zoom_for_resolution(resolution(5) * 1.3), zoom_for_resolution(resolution(5) * 1.5)
    (5, 4)
    >>> zoom_for_resolution(resolution(5), tile_size=512)
    4
    >>> zoom_for_resolution(0.001, max_zoom=18), zoom_for_resolution(1e9, min_zoom=2)
    (18, 2)
    """
    if not (res > 0 and math.isfinite(res)):
        raise BadInputError(f"resolution must be a positive number of metres per pixel, got {res}")
    z = round(math.log2(WORLD_SIZE / (tile_size * res)))
    return int(max(min_zoom, min(max_zoom, z)))


def wrap_x(x: int, zoom: int) -> int:
    """The column the server knows for an unwrapped column ``x``.

    >>> wrap_x(8, 3), wrap_x(-1, 3), wrap_x(5, 3)
    (0, 7, 5)
    """
    return x % (2**zoom)


def in_grid(tile: Tile) -> bool:
    """Whether ``tile`` is one of its zoom's ``2**z`` x ``2**z`` tiles (column not unwrapped).

    >>> in_grid(Tile(2, 3, 3)), in_grid(Tile(2, 4, 0)), in_grid(Tile(2, 0, -1))
    (True, False, False)
    """
    n = 2**tile.z
    return tile.z >= 0 and 0 <= tile.x < n and 0 <= tile.y < n


def tms_y(y: int, zoom: int) -> int:
    """Flip a row between XYZ (north at 0) and TMS (south at 0); its own inverse.

    >>> tms_y(0, 3), tms_y(7, 3), tms_y(tms_y(2, 3), 3)
    (7, 0, 2)
    """
    return 2**zoom - 1 - y


def tile_bounds(tile: Tile) -> Bounds:
    """(west, south, east, north) of a tile in EPSG:3857 metres (unwrapped column kept).

    >>> tile_bounds(Tile(0, 0, 0)) == (-ORIGIN_SHIFT, -ORIGIN_SHIFT, ORIGIN_SHIFT, ORIGIN_SHIFT)
    True
    >>> w, s, e, n = tile_bounds(Tile(1, 2, 0))   # east of the antimeridian, unwrapped
    >>> round(w), round(e), s
    (20037508, 40075017, 0.0)
    """
    span = WORLD_SIZE / 2**tile.z
    west = -ORIGIN_SHIFT + tile.x * span
    north = ORIGIN_SHIFT - tile.y * span
    return Bounds(west, north - span, west + span, north)


def tile_range(bounds: Bounds, zoom: int) -> tuple[range, range] | None:
    """Columns and rows of the tiles covering ``bounds`` (EPSG:3857, west, south, east, north).

    Columns are unwrapped (see the module docstring). Rows are clamped at the poles of Web
    Mercator; a box entirely outside the world's latitudes covers nothing (``None``).

    >>> tile_range((-ORIGIN_SHIFT, -ORIGIN_SHIFT, ORIGIN_SHIFT, ORIGIN_SHIFT), 2)
    (range(0, 4), range(0, 4))
    >>> tile_range((0, 0, 1, 1), 2)            # a speck just north-east of (0, 0)
    (range(2, 3), range(1, 2))
    >>> tile_range((-1e6, -4e7, 1e6, 4e7), 1)  # taller than the world: rows clamped
    (range(0, 2), range(0, 2))
    >>> tile_range((19e6, 0, 21e6, 1e6), 3)    # across the antimeridian: column 8 is column 0
    (range(7, 9), range(3, 4))
    """
    west, south, east, north = bounds
    south, north = max(south, -ORIGIN_SHIFT), min(north, ORIGIN_SHIFT)
    if north <= south or east <= west:
        return None
    n = 2**zoom
    span = WORLD_SIZE / n
    x0 = math.floor((west + ORIGIN_SHIFT) / span + _EPS / span)
    x1 = math.ceil((east + ORIGIN_SHIFT) / span - _EPS / span)
    y0 = max(0, math.floor((ORIGIN_SHIFT - north) / span + _EPS / span))
    y1 = min(n, math.ceil((ORIGIN_SHIFT - south) / span - _EPS / span))
    return range(x0, max(x1, x0 + 1)), range(y0, max(y1, y0 + 1))


def tiles_in_bbox(bounds: Bounds, zoom: int) -> list[Tile]:
    """Tiles covering an EPSG:3857 box, row by row from the north-west (columns unwrapped).

    >>> tiles_in_bbox((-1, -1, 1, 1), 1)
    [Tile(z=1, x=0, y=0), Tile(z=1, x=1, y=0), Tile(z=1, x=0, y=1), Tile(z=1, x=1, y=1)]
    >>> [t.key for t in tiles_in_bbox(lonlat_bbox_to_mercator((179, 1, -179, 2)), 2)]
    ['2/3/1', '2/0/1']
    """
    ranges = tile_range(bounds, zoom)
    if ranges is None:
        return []
    xs, ys = ranges
    return [Tile(zoom, x, y) for y in ys for x in xs]


def tile_at(x: float, y: float, zoom: int) -> Tile:
    """The tile holding the EPSG:3857 point (``x``, ``y``), inside the world (edges clamped).

    >>> tile_at(0.0, 0.0, 1), tile_at(ORIGIN_SHIFT, -ORIGIN_SHIFT, 1)
    (Tile(z=1, x=1, y=1), Tile(z=1, x=1, y=1))
    """
    n = 2**zoom
    span = WORLD_SIZE / n
    col = min(n - 1, max(0, int((x + ORIGIN_SHIFT) // span)))
    row = min(n - 1, max(0, int((ORIGIN_SHIFT - y) // span)))
    return Tile(zoom, col, row)


def pixel_window(bounds: Bounds, zoom: int, tile_size: int = 256) -> PixelWindow:
    """The pixels of ``zoom``'s grid that cover an EPSG:3857 box (at least one column).

    Rows are clamped at the poles of Web Mercator: a box entirely beyond its latitudes gives an
    empty window (``row1 == row0``). A bound within a millionth of a pixel of a pixel edge is
    taken to be on it.

    >>> pixel_window((-ORIGIN_SHIFT, -ORIGIN_SHIFT, ORIGIN_SHIFT, ORIGIN_SHIFT), 1)
    PixelWindow(col0=0, row0=0, col1=512, row1=512)
    >>> pixel_window((0, 0, 1, 1), 0).shape          # a speck: one pixel
    (1, 1)
    >>> pixel_window((0, 3e7, 1e6, 4e7), 2).shape    # north of the world: no rows
    (0, 26)
    """
    res = resolution(zoom, tile_size)
    world_px = tile_size * 2**zoom
    eps = 1e-6
    west, south, east, north = bounds
    c0 = math.floor((west + ORIGIN_SHIFT) / res + eps)
    c1 = max(c0 + 1, math.ceil((east + ORIGIN_SHIFT) / res - eps))
    r0 = max(0, math.floor((ORIGIN_SHIFT - north) / res + eps))
    r1 = min(world_px, math.ceil((ORIGIN_SHIFT - south) / res - eps))
    return PixelWindow(c0, min(r0, world_px), c1, max(r1, min(r0, world_px)))


def tiles_in_window(window: PixelWindow, zoom: int, tile_size: int = 256) -> list[Tile]:
    """Tiles holding the pixels of ``window``, row by row from the north-west.

    >>> tiles_in_window(PixelWindow(250, 0, 260, 10), 1)
    [Tile(z=1, x=0, y=0), Tile(z=1, x=1, y=0)]
    >>> tiles_in_window(PixelWindow(0, 5, 10, 5), 1)   # no rows: no tiles
    []
    """
    c0, r0, c1, r1 = window
    if r1 <= r0 or c1 <= c0:
        return []
    return [
        Tile(zoom, tx, ty)
        for ty in range(r0 // tile_size, (r1 - 1) // tile_size + 1)
        for tx in range(c0 // tile_size, (c1 - 1) // tile_size + 1)
    ]


def tile_window(tile: Tile, tile_size: int = 256) -> PixelWindow:
    """The pixels of ``tile`` in its zoom's global pixel grid (unwrapped column kept).

    >>> tile_window(Tile(1, 1, 0))
    PixelWindow(col0=256, row0=0, col1=512, row1=256)
    """
    left, top = tile.x * tile_size, tile.y * tile_size
    return PixelWindow(left, top, left + tile_size, top + tile_size)


def pixel_centres(
    window: PixelWindow, zoom: int, tile_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:3857 coordinates of the pixel centres of ``window``: x increasing, y decreasing.

    >>> x, y = pixel_centres(PixelWindow(0, 0, 2, 1), 0, tile_size=2)
    >>> (x / ORIGIN_SHIFT).round(9).tolist(), (y / ORIGIN_SHIFT).round(9).tolist()
    ([-0.5, 0.5], [0.5])
    """
    res = resolution(zoom, tile_size)
    c0, r0, c1, r1 = window
    x = -ORIGIN_SHIFT + (np.arange(c0, c1) + 0.5) * res
    y = ORIGIN_SHIFT - (np.arange(r0, r1) + 0.5) * res
    return x, y
