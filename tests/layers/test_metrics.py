"""Fetch metrics and the event-loop lag monitor (layers/metrics.py)."""

from __future__ import annotations

import asyncio
import time

from mapstream.layers.metrics import FetchMetrics, LoopLagMonitor

REQUIRED = {
    "requests", "bytes", "latency_p50", "latency_p95", "latency_max", "retries", "cache_hits",
    "cache_misses", "revalidations", "queue_wait_p95", "in_flight", "errors",
}


def test_snapshot_has_every_figure_and_percentiles():
    m = FetchMetrics()
    for i in range(1, 101):
        m.record_response(i / 100, 10)
    m.record_queue_wait(0.5)
    m.add_in_flight(2)
    s = m.snapshot()
    assert REQUIRED <= s.keys()
    assert (s["requests"], s["bytes"], s["in_flight"]) == (100, 1000, 2)
    assert (s["latency_p50"], s["latency_p95"], s["latency_max"]) == (0.5, 0.95, 1.0)
    assert s["queue_wait_p95"] == 0.5
    m.reset()
    assert m.snapshot()["requests"] == 0


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
