"""Web Mercator (EPSG:3857) projection: WGS84 degrees <-> metres, scalar and vectorised.

The one place the engine projects: :class:`~mapstream.layers.viewport.Viewport`, the tile grid
(:mod:`~mapstream.layers.tilegrid`), WMS point queries and the feature sources call the scalar
functions; the GeoJSON parser calls :func:`lonlat_to_mercator_arrays` on whole coordinate
arrays. Latitudes are clamped to Web Mercator's limit (:data:`MAX_LAT`), where the projection
ends.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import BadInputError
from .types import Bounds

__all__ = [
    "MAX_LAT",
    "ORIGIN_SHIFT",
    "lonlat_bbox_to_mercator",
    "lonlat_to_mercator",
    "lonlat_to_mercator_arrays",
    "mercator_scale",
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


def lonlat_to_mercator_arrays(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lonlat_to_mercator` over arrays of longitudes and latitudes (same formula).

    >>> x, y = lonlat_to_mercator_arrays(np.array([180.0, 0.0]), np.array([45.0, 90.0]))
    >>> (float(x[0]), float(y[0])) == lonlat_to_mercator(180.0, 45.0)
    True
    >>> float(y[1]) == lonlat_to_mercator(0.0, 90.0)[1]   # clamped like the scalar one
    True
    """
    lat = np.clip(lat, -MAX_LAT, MAX_LAT)
    x = lon * ORIGIN_SHIFT / 180.0
    y = np.log(np.tan((90.0 + lat) * np.pi / 360.0)) * ORIGIN_SHIFT / np.pi
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


def mercator_scale(lat: float) -> float:
    """How many EPSG:3857 metres one metre on the ground spans at latitude ``lat`` (1/cos).

    >>> mercator_scale(0.0), round(mercator_scale(60.0), 6)
    (1.0, 2.0)
    """
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    return 1.0 / max(math.cos(math.radians(lat)), 1e-6)


def lonlat_bbox_to_mercator(bbox: Bounds) -> Bounds:
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
    return Bounds(x0, y0, x1, y1)
