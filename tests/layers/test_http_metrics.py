"""The fetcher's counters and latency samples (mapstream.layers.http.metrics)."""

from __future__ import annotations

from mapstream.layers.http.metrics import FetchMetrics

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


def test_snapshot_carries_each_hosts_limit_throughput_and_floor():
    from mapstream.layers.http.limits import HostLimits
    from mapstream.layers.http.metrics import hosts_text

    hosts = HostLimits(lambda netloc: 8)
    hosts.host("tiles.test")
    s = FetchMetrics(hosts=hosts.snapshot).snapshot()["hosts"]["tiles.test"]
    assert {"limit", "ceiling", "throughput", "latency_floor"} <= s.keys()
    assert (s["limit"], s["ceiling"], s["latency_floor"]) == (4, 8, None)
    assert hosts_text({"tiles.test": s}) == ["tiles.test: limit 4 of 8, 0.0 req/s, floor -"]
    assert FetchMetrics().snapshot()["hosts"] == {}
