"""Quantities written by people: sizes (``"500M"``) and durations (``"150ms"``), as numbers.

One parser per quantity, shared by the engine's settings (``$MAPSTREAM_CACHE_MAX_BYTES``), the
demo services' settings (``$MAPSTREAM_DEMO_LATENCY``) and the command line's options. Both raise
:class:`~mapstream.layers.errors.BadInputError` (also a ``ValueError``) with one line a user can
act on.
"""

from __future__ import annotations

import math
import re

from .errors import BadInputError

__all__ = ["parse_duration", "parse_size"]

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(_NUMBER + r"\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"\s*" + _NUMBER + r"\s*(ms|s)?\s*")


def parse_size(text: str, *, name: str = "size") -> int:
    """Bytes from ``"4096"``, ``"500M"``, ``"2G"``, ``"1.5GiB"``: K, M, G, T are powers of 1024.

    Parameters
    ----------
    text
        A non-negative number, optionally followed by a unit (case-insensitive; ``B``, ``iB``
        accepted after it).
    name
        What the value is, for the error message (the setting or environment variable).

    Raises
    ------
    BadInputError
        If ``text`` is not a size; the message names ``name``.

    >>> parse_size("4096"), parse_size("500M"), parse_size("2g"), parse_size(" 1.5 GiB ")
    (4096, 524288000, 2147483648, 1610612736)
    >>> parse_size("lots", name="MAPSTREAM_CACHE_MAX_BYTES")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: MAPSTREAM_CACHE_MAX_BYTES='lots' is not a size: ...
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise BadInputError(
            f"{name}={text!r} is not a size: use a number of bytes, optionally with K, M, G or T "
            "(powers of 1024), e.g. 500M or 2G"
        )
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_duration(text: str | float) -> float:
    """Seconds from ``"150ms"``, ``"0.2s"``, a bare number of seconds (``"2"``), or a number.

    Raises
    ------
    BadInputError
        If ``text`` is not a non-negative, finite duration.

    >>> parse_duration("150ms"), parse_duration("0.2s"), parse_duration(" 2 "), parse_duration(0.5)
    (0.15, 0.2, 2.0, 0.5)
    >>> parse_duration(".5s"), parse_duration("2.")
    (0.5, 2.0)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: expected a duration like 150ms or 0.2s, got 'soon'
    >>> parse_duration(-1)
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: a duration cannot be negative, got -1
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION_RE.fullmatch(str(text))
        if m is None:
            raise BadInputError(f"expected a duration like 150ms or 0.2s, got {text!r}")
        value = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if value < 0:
        raise BadInputError(f"a duration cannot be negative, got {text!r}")
    if not math.isfinite(value):
        raise BadInputError(f"a duration must be finite, got {text!r}")
    return value
