"""The fetcher's counters and latency samples (:class:`FetchMetrics`, ``Fetcher.metrics``),
and each host's adaptive limit, throughput and latency floor (``snapshot()["hosts"]``, from
:mod:`.limits`).

Process-wide and thread-safe: one fetcher may serve several event loops.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..metrics import percentile

__all__ = ["FetchMetrics", "hosts_text"]


class FetchMetrics:
    """Counters and latency samples of a fetcher (the last ``window`` samples are kept).

    ``hosts`` returns ``{host: {"limit", "ceiling", "throughput", "latency_floor", ...}}``
    (:meth:`~.limits.HostLimits.snapshot`), put in the snapshot under ``"hosts"``.

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

    def __init__(self, window: int = 10_000, hosts: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._hosts = hosts
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
        """A copy of every figure: counters, latency/queue-wait percentiles (s), in-flight, and
        ``hosts``: each host's current limit, ceiling, throughput (responses/s) and latency
        floor (s)."""
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
        out["hosts"] = self._hosts() if self._hosts is not None else {}
        return out


def hosts_text(hosts: dict[str, dict[str, Any]], most: int = 4) -> list[str]:
    """One line per host (the busiest ``most``): its limit of its ceiling, throughput, floor.

    >>> hosts_text({"tiles.test": {"limit": 3, "ceiling": 8, "throughput": 12.5, "latency_floor": 0.0421,
    ...             "paused": 0.0, "adaptive": True}})
    ['tiles.test: limit 3 of 8, 12.5 req/s, floor 42 ms']
    >>> hosts_text({"h.test": {"limit": 2, "ceiling": 2, "throughput": 0.0, "latency_floor": None,
    ...             "paused": 4.2, "adaptive": False}})
    ['h.test: limit 2 (fixed), 0.0 req/s, floor -, paused 4 s']
    """
    rows = sorted(hosts.items(), key=lambda kv: -kv[1].get("throughput", 0.0))[:most]
    out = []
    for name, h in rows:
        floor = h.get("latency_floor")
        limit = f"limit {h['limit']} of {h['ceiling']}" if h.get("adaptive", True) else f"limit {h['limit']} (fixed)"
        line = f"{name}: {limit}, {h.get('throughput', 0.0):.1f} req/s, floor {'-' if floor is None else f'{floor * 1000:.0f} ms'}"
        if h.get("paused", 0.0) > 0:
            line += f", paused {h['paused']:.0f} s"
        out.append(line)
    return out
