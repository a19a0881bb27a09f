"""Small shared value types (hashable, so they double as cache keys)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Progress"]


class Progress(NamedTuple):
    """How far a layer's load has got, reported with every partial result.

    Attributes
    ----------
    done, total
        Units finished and planned (``total`` is None when unknown, e.g. pages without
        ``numberMatched``).
    unit
        ``"tiles"`` or ``"pages"``.
    features
        Features received so far (feature layers; 0 for tiles).
    matched
        The server's ``numberMatched`` when known.
    failed
        Units that failed after retries (their errors are reported with the result).
    cached
        Units served from the cache without a network request.
    truncated
        True when a feature cap stopped the load early.
    complete
        True on the final result of a load.
    """

    done: int
    total: int | None
    unit: str
    features: int = 0
    matched: int | None = None
    failed: int = 0
    cached: int = 0
    truncated: bool = False
    complete: bool = False
