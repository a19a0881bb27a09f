"""The event-loop lag monitor (mapstream.layers.metrics)."""

from __future__ import annotations

import asyncio
import time

from mapstream.layers.metrics import LoopLagMonitor, percentile


def test_percentile_is_nearest_rank():
    assert [percentile([3, 1, 2], q) for q in (0, 34, 67, 100)] == [1, 2, 3, 3]


async def test_lag_monitor_sees_a_blocked_loop():
    async with LoopLagMonitor(interval=0.01) as mon:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # block the loop on purpose
        await asyncio.sleep(0.05)
    s = mon.snapshot()
    assert s["samples"] >= 2
    assert s["lag_max_ms"] >= 150  # the probe woke at least ~200 ms late
    assert s["lag_p50_ms"] <= s["lag_p99_ms"] <= s["lag_max_ms"]


async def test_lag_monitor_start_stop_are_idempotent():
    mon = LoopLagMonitor(interval=0.005)
    mon.start()
    mon.start()
    await asyncio.sleep(0.03)
    await mon.stop()
    await mon.stop()
    n = mon.snapshot()["samples"]
    await asyncio.sleep(0.03)
    assert mon.snapshot()["samples"] == n > 0
