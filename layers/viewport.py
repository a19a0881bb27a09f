"""The map viewport: what the user is looking at, as a hashable value.

Everything the engine plans (tiles, feature pages, WMS requests) is a pure function of a
:class:`Viewport` and a layer's settings, so a viewport doubles as a cache and dedup key. The
projection it is expressed in (EPSG:3857) lives in :mod:`~mapstream.layers.projection`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .errors import BadInputError
from .projection import lonlat_bbox_to_mercator, mercator_to_lonlat
from .types import Bounds

__all__ = ["Viewport"]


class Viewport(NamedTuple):
    """A map view in EPSG:3857 with its size on screen.

    ``x_range`` may extend past +/-``ORIGIN_SHIFT`` when the view crosses the antimeridian (a map
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
        cls, bbox: Bounds, width: int = 800, height: int | None = None
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
    def bounds(self) -> Bounds:
        """(west, south, east, north) in EPSG:3857 metres."""
        return Bounds(self.x_range[0], self.y_range[0], self.x_range[1], self.y_range[1])

    @property
    def lonlat_bounds(self) -> Bounds:
        """(west, south, east, north) in degrees; east may exceed 180 across the antimeridian."""
        w, s = mercator_to_lonlat(self.x_range[0], self.y_range[0])
        e, n = mercator_to_lonlat(self.x_range[1], self.y_range[1])
        return Bounds(w, s, e, n)

    @property
    def resolution(self) -> float:
        """Metres per screen pixel (the coarser of the two axes)."""
        return max(
            (self.x_range[1] - self.x_range[0]) / self.width,
            (self.y_range[1] - self.y_range[0]) / self.height,
        )
