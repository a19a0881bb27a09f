"""The map viewport: what the user is looking at, as a hashable value.

Everything the engine plans (tiles, feature pages, WMS requests) is a pure function of a
:class:`Viewport` and a layer's settings, so a viewport doubles as a cache and dedup key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .errors import BadInputError

__all__ = [
    "Viewport",
    "ORIGIN_SHIFT",
    "lonlat_bbox_to_mercator",
    "lonlat_to_mercator",
    "mercator_to_lonlat",
]

#: Half the width of the Web Mercator world, in metres (EPSG:3857).
ORIGIN_SHIFT = 20037508.342789244
#: Latitude limit of Web Mercator, in degrees.
MAX_LAT = 85.0511287798066


def lonlat_to_mercator(lon: float, lat: float) -> tuple[float, float]:
    """Project WGS84 degrees to EPSG:3857 metres (latitude clamped to Web Mercator's limit).

    >>> x, y = lonlat_to_mercator(180.0, 45.0)
    >>> round(x, 3), round(y, 3)
    (20037508.343, 5621521.486)
    """
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    x = lon * ORIGIN_SHIFT / 180.0
    y = math.log(math.tan((90.0 + lat) * math.pi / 360.0)) * ORIGIN_SHIFT / math.pi
    return x, y


def mercator_to_lonlat(x: float, y: float) -> tuple[float, float]:
    """Inverse of :func:`lonlat_to_mercator`.

    >>> lon, lat = mercator_to_lonlat(0.0, 0.0)
    >>> lon, lat
    (0.0, 0.0)
    """
    lon = x * 180.0 / ORIGIN_SHIFT
    lat = math.degrees(2.0 * math.atan(math.exp(y * math.pi / ORIGIN_SHIFT)) - math.pi / 2.0)
    return lon, lat


def lonlat_bbox_to_mercator(
    bbox: tuple[float, float, float, float],
) -> tuple[float, float, float, float]:
    """A (west, south, east, north) box in degrees as EPSG:3857 metres.

    ``east < west`` means the box crosses the antimeridian: east is carried past 180 degrees.
    Latitudes are clamped to Web Mercator's limit.

    Raises
    ------
    BadInputError
        Not four finite numbers, or south >= north, or latitudes outside [-90, 90].

    >>> [round(v) for v in lonlat_bbox_to_mercator((170, -10, -170, 10))]
    [18924313, -1118890, 21150703, 1118890]
    """
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            f"bbox must be four numbers (west, south, east, north): {bbox!r}"
        ) from exc
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise BadInputError(f"bbox must be finite: {bbox!r}")
    if not (-90 <= south < north <= 90):
        raise BadInputError(f"bbox south/north must satisfy -90 <= south < north <= 90: {bbox!r}")
    if east < west:
        east += 360.0
    x0, y0 = lonlat_to_mercator(west, south)
    x1, y1 = lonlat_to_mercator(east, north)
    return (x0, y0, x1, y1)


class Viewport(NamedTuple):
    """A map view in EPSG:3857 with its size on screen.

    ``x_range`` may extend past +/-ORIGIN_SHIFT when the view crosses the antimeridian (a map
    panned east of 180 degrees keeps increasing x); layers wrap it.

    Parameters
    ----------
    x_range, y_range
        (min, max) in EPSG:3857 metres.
    width, height
        Size of the view in screen pixels.

    Raises
    ------
    BadInputError
        Built through :meth:`create` or :meth:`from_lonlat` with an empty range or a
        non-positive size.
    """

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    width: int
    height: int

    @classmethod
    def create(
        cls,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        width: int,
        height: int,
    ) -> Viewport:
        """Validated constructor: use this for input that comes from outside.

        >>> Viewport.create((0, 10), (0, 10), 0, 10)
        Traceback (most recent call last):
        ...
        mapstream.layers.errors.BadInputError: viewport size must be positive, got 0x10 pixels
        """
        x0, x1 = (float(v) for v in x_range)
        y0, y1 = (float(v) for v in y_range)
        if not all(math.isfinite(v) for v in (x0, x1, y0, y1)):
            raise BadInputError(f"viewport ranges must be finite, got x={x_range} y={y_range}")
        if int(width) <= 0 or int(height) <= 0:
            raise BadInputError(f"viewport size must be positive, got {width}x{height} pixels")
        if x1 <= x0 or y1 <= y0:
            raise BadInputError(f"viewport ranges must be increasing, got x={x_range} y={y_range}")
        return cls((x0, x1), (y0, y1), int(width), int(height))

    @classmethod
    def from_lonlat(
        cls, bbox: tuple[float, float, float, float], width: int = 800, height: int | None = None
    ) -> Viewport:
        """A viewport for a (west, south, east, north) box in degrees.

        ``east < west`` means the box crosses the antimeridian. Without ``height``, the height
        keeps the box's aspect ratio in Web Mercator.

        >>> vp = Viewport.from_lonlat((-180, -85.0511287798066, 180, 85.0511287798066), 512)
        >>> vp.height, round(vp.x_range[1])
        (512, 20037508)
        """
        x0, y0, x1, y1 = lonlat_bbox_to_mercator(bbox)
        if height is None:
            height = max(1, round(width * (y1 - y0) / (x1 - x0))) if x1 > x0 else width
        return cls.create((x0, x1), (y0, y1), width, height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in EPSG:3857 metres."""
        return (self.x_range[0], self.y_range[0], self.x_range[1], self.y_range[1])

    @property
    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees; east may exceed 180 across the antimeridian."""
        w, s = mercator_to_lonlat(self.x_range[0], self.y_range[0])
        e, n = mercator_to_lonlat(self.x_range[1], self.y_range[1])
        return (w, s, e, n)

    @property
    def resolution(self) -> float:
        """Metres per screen pixel (the coarser of the two axes)."""
        return max(
            (self.x_range[1] - self.x_range[0]) / self.width,
            (self.y_range[1] - self.y_range[0]) / self.height,
        )
