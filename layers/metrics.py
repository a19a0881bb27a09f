"""Metrics any caller can read: the fetcher's counters and an event-loop lag monitor.

:class:`FetchMetrics` is process-wide and thread-safe (the fetcher may serve several event
loops); :class:`LoopLagMonitor` measures how late the running loop wakes a sleeping task, the
figure that tells whether anything blocks the UI.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["FetchMetrics", "LoopLagMonitor", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``; 0.0 when empty.

    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50), percentile([1, 2, 3, 4], 100)
    (5, 4)
    >>> percentile([], 95)
    0.0
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


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


class LoopLagMonitor:
    """Measure event-loop lag: how much later than asked a ``sleep(interval)`` wakes up.

    Use ``start()`` / ``stop()`` from inside the running loop, or ``async with``.

    Parameters
    ----------
    interval
        Seconds between probes.
    window
        Number of recent samples kept for the percentiles.
    """

    def __init__(self, interval: float = 0.02, window: int = 5_000) -> None:
        self.interval = interval
        self._samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop (idempotent).

        Raises
        ------
        RuntimeError
            No event loop is running.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop probing; the samples stay available."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Our own cancellation of the probe; propagate if *we* are being cancelled.
                if asyncio.current_task() is not None and asyncio.current_task().cancelling():
                    raise

    async def __aenter__(self) -> LoopLagMonitor:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            self._samples.append(max(0.0, time.perf_counter() - t0 - self.interval))

    def snapshot(self) -> dict[str, float]:
        """Lag percentiles in milliseconds: ``lag_p50_ms``, ``lag_p99_ms``, ``lag_max_ms``."""
        s = list(self._samples)
        return {
            "lag_p50_ms": percentile(s, 50) * 1000,
            "lag_p99_ms": percentile(s, 99) * 1000,
            "lag_max_ms": max(s, default=0.0) * 1000,
            "samples": len(s),
        }
