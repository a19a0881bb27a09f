"""The fetcher's counters and latency samples (:class:`FetchMetrics`, ``Fetcher.metrics``).

Process-wide and thread-safe: one fetcher may serve several event loops.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ..metrics import percentile

__all__ = ["FetchMetrics"]


class FetchMetrics:
    """Counters and latency samples of a fetcher (the last ``window`` samples are kept).

    >>> m = FetchMetrics()
    >>> m.record_response(0.2, 100); m.record_response(0.4, 50); m.incr("cache_hits")
    >>> s = m.snapshot()
    >>> s["requests"], s["bytes"], s["latency_max"], s["cache_hits"]
    (2, 150, 0.4, 1)
    """

    COUNTERS = (
        "requests",
        "bytes",
        "retries",
        "cache_hits",
        "cache_misses",
        "revalidations",
        "errors",
        "coalesced",
    )

    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._window = window
        self.reset()

    def reset(self) -> None:
        """Zero every counter and drop the samples."""
        with self._lock:
            self._counts = dict.fromkeys(self.COUNTERS, 0)
            self._latency: deque[float] = deque(maxlen=self._window)
            self._queue_wait: deque[float] = deque(maxlen=self._window)
            self._in_flight = 0
            self._waiting = 0

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def record_response(self, latency: float, nbytes: int) -> None:
        """One upstream response received in ``latency`` seconds with ``nbytes`` of body."""
        with self._lock:
            self._counts["requests"] += 1
            self._counts["bytes"] += nbytes
            self._latency.append(latency)

    def record_queue_wait(self, seconds: float) -> None:
        with self._lock:
            self._queue_wait.append(seconds)

    def add_in_flight(self, n: int) -> None:
        with self._lock:
            self._in_flight += n

    def add_waiting(self, n: int) -> None:
        with self._lock:
            self._waiting += n

    def snapshot(self) -> dict[str, Any]:
        """A copy of every figure: counters, latency/queue-wait percentiles (s), in-flight."""
        with self._lock:
            lat = list(self._latency)
            qw = list(self._queue_wait)
            out: dict[str, Any] = dict(self._counts)
            out["in_flight"] = self._in_flight
            out["waiting"] = self._waiting
        out["latency_p50"] = percentile(lat, 50)
        out["latency_p95"] = percentile(lat, 95)
        out["latency_max"] = max(lat, default=0.0)
        out["queue_wait_p95"] = percentile(qw, 95)
        out["queue_wait_max"] = max(qw, default=0.0)
        return out
