"""Web Mercator tile-grid arithmetic: pure functions, no I/O.

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

from .errors import BadInputError
from .viewport import ORIGIN_SHIFT, lonlat_bbox_to_mercator

__all__ = [
    "Tile",
    "WORLD_SIZE",
    "resolution",
    "zoom_for_resolution",
    "tile_bounds",
    "tile_range",
    "tiles_in_bbox",
    "wrap_x",
    "tms_y",
    "lonlat_bbox_to_mercator",
]

#: Width (and height) of the Web Mercator world, in metres.
WORLD_SIZE = 2.0 * ORIGIN_SHIFT

# Floating-point slack when a bound falls exactly on a tile edge (1 mm is far below a pixel).
_EPS = 1e-3


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


def tms_y(y: int, zoom: int) -> int:
    """Flip a row between XYZ (north at 0) and TMS (south at 0); its own inverse.

    >>> tms_y(0, 3), tms_y(7, 3), tms_y(tms_y(2, 3), 3)
    (7, 0, 2)
    """
    return 2**zoom - 1 - y


def tile_bounds(tile: Tile, tile_size: int = 256) -> tuple[float, float, float, float]:
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
    return (west, north - span, west + span, north)


def tile_range(bounds: tuple[float, float, float, float], zoom: int) -> tuple[range, range] | None:
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


def tiles_in_bbox(bounds: tuple[float, float, float, float], zoom: int) -> list[Tile]:
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
