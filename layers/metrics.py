"""Measuring the event loop: :class:`LoopLagMonitor` and the :func:`percentile` its figures use.

:class:`LoopLagMonitor` measures how late the running loop wakes a sleeping task, the figure
that tells whether anything blocks the UI (the app and the benchmarks report it). The
fetcher's own counters are :class:`mapstream.layers.http.metrics.FetchMetrics`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Sequence

__all__ = ["LoopLagMonitor", "percentile"]


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
