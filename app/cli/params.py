"""Parsing and validation of the CLI's option values: pure helpers, and the click types on them.

Each parser raises :class:`ValueError` with one line a user can act on; the click types turn it
into a usage error (exit code 2, no traceback). Durations are parsed by the engine's
:func:`~mapstream.layers.units.parse_duration` (the one the demo's settings use).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from mapstream.layers.types import Bounds

__all__ = [
    "BBOX",
    "DURATION",
    "FRACTION",
    "ZOOM_RANGE",
    "parse_bbox",
    "parse_fraction",
    "parse_zoom_range",
]

#: Deepest zoom level the CLI accepts (XYZ services rarely go past 22).
MAX_ZOOM = 24


def parse_bbox(text: str) -> Bounds:
    """``"W,S,E,N"`` in WGS84 degrees as :class:`~mapstream.layers.types.Bounds`.

    West greater than east is a box across the antimeridian (``170,-10,-170,10``), as the
    layers take it.

    Raises
    ------
    ValueError
        Not four numbers, out of range, or an empty box.

    >>> parse_bbox("5.9, 45.8, 10.5, 47.8")
    Bounds(west=5.9, south=45.8, east=10.5, north=47.8)
    >>> parse_bbox("170,-10,-170,10") == (170.0, -10.0, -170.0, 10.0)
    True
    >>> parse_bbox("5,0,5,1")
    Traceback (most recent call last):
    ...
    ValueError: west and east are both 5.0: the box is empty
    >>> parse_bbox("1,2,3")
    Traceback (most recent call last):
    ...
    ValueError: expected four numbers W,S,E,N, got '1,2,3'
    """
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if len(parts) != 4:
        raise ValueError(f"expected four numbers W,S,E,N, got {text!r}")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected four numbers W,S,E,N, got {text!r}") from None
    if any(v != v or v in (float("inf"), float("-inf")) for v in (w, s, e, n)):
        raise ValueError(f"bbox values must be finite, got {text!r}")
    if not (-180.0 <= w <= 180.0 and -180.0 <= e <= 180.0):
        raise ValueError(f"longitudes must be within [-180, 180], got {text!r}")
    if not (-90.0 <= s <= 90.0 and -90.0 <= n <= 90.0):
        raise ValueError(f"latitudes must be within [-90, 90], got {text!r}")
    if w == e:
        raise ValueError(f"west and east are both {w}: the box is empty")
    if s >= n:
        raise ValueError(f"south ({s}) must be less than north ({n})")
    # Imported on use: importing the engine loads numpy, and importing the CLI stays light.
    from mapstream.layers.types import Bounds

    return Bounds(w, s, e, n)


def parse_zoom_range(text: str) -> range:
    """``"3-9"`` (inclusive) or ``"5"`` as a range of zoom levels.

    Raises
    ------
    ValueError
        Not a level or a ``LO-HI`` pair within 0..24, or LO > HI.

    >>> list(parse_zoom_range("3-5")), list(parse_zoom_range("7"))
    ([3, 4, 5], [7])
    >>> parse_zoom_range("9-3")
    Traceback (most recent call last):
    ...
    ValueError: zoom range 9-3 is empty: the first level must not exceed the last
    """
    m = re.fullmatch(r"\s*(\d+)\s*(?:[-:]\s*(\d+)\s*)?", text)
    if m is None:
        raise ValueError(f"expected a zoom level or a range like 3-9, got {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > MAX_ZOOM or hi > MAX_ZOOM:
        raise ValueError(f"zoom levels go from 0 to {MAX_ZOOM}, got {text!r}")
    if lo > hi:
        raise ValueError(f"zoom range {lo}-{hi} is empty: the first level must not exceed the last")
    return range(lo, hi + 1)


def parse_fraction(text: str) -> float:
    """``"0.05"`` or ``"5%"`` as a fraction in [0, 1].

    Raises
    ------
    ValueError
        Not a number, or outside [0, 1].

    >>> parse_fraction("0.05"), parse_fraction("5%")
    (0.05, 0.05)
    """
    t = text.strip()
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"expected a fraction like 0.05 or 5%, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


class _Parsed(click.ParamType):
    """A click type around one of the parsers above."""

    def __init__(self, name: str, parser, metavar: str) -> None:
        self.name = name
        self._parser = parser
        self._metavar = metavar

    def get_metavar(self, param, ctx=None) -> str:  # click 8.1 and 8.2 signatures
        return self._metavar

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self._parser(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


BBOX = _Parsed("bbox", parse_bbox, "W,S,E,N")
ZOOM_RANGE = _Parsed("zoom", parse_zoom_range, "LO-HI")
def _parse_duration(text: str) -> float:
    # The engine's parser, imported on use: importing mapstream.layers loads numpy, and
    # importing the CLI stays light.
    from mapstream.layers.units import parse_duration

    return parse_duration(text)


DURATION = _Parsed("duration", _parse_duration, "DURATION")
FRACTION = _Parsed("fraction", parse_fraction, "FRACTION")
