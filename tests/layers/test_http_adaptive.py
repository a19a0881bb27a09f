"""Adaptive per-host limits (mapstream.layers.http.limits): the control law on a fake clock, and
the fetcher over loopback servers (a 429-above-3 server, a long Retry-After, remembered limits,
the off switch). No test asserts a time."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiohttp import web

from mapstream.layers.errors import RetryAfterTooLongError
from mapstream.layers.http import Fetcher
from mapstream.layers.http.admission import Admission
from mapstream.layers.http.limits import START, Attempt, HostLimit, HostLimits, route_of
from mapstream.layers.http.metrics import FetchMetrics
from tests.support.faultserver import fault_server  # noqa: F401  (the fixture)
from tests.support.waiting import async_wait_for

ROUTE = "/tiles/#/#/#.png"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def window(h: HostLimit, clock: Clock, latency_at) -> int:
    """One window of samples at the host's current limit: every sample ran with ``limit`` in
    flight and took ``latency_at(limit)``. Returns the limit the window ran at."""
    limit = h.limit
    for _ in range(max(3, limit)):
        lat = latency_at(limit)
        clock.now += lat / limit
        h.success(ROUTE, Attempt(clock.now - lat, limit, load=float(limit), latency=lat))
    return limit


def test_route_folds_numbers_and_long_hex_runs():
    assert route_of("http://h/t/3/1/2.png") == route_of("http://h/t/10/511/300.png")
    assert route_of("http://h/c/items?offset=5") == "/c/items"
    assert route_of("http://h/f/0a1b2c3d4e5f/x") == "/f/#/x"


def test_grows_to_the_ceiling_and_holds_it_on_a_latency_bound_server():
    clock, rng = Clock(), random.Random(3)
    h = HostLimit(8, clock=clock)
    assert h.limit == START
    seen = [window(h, clock, lambda n: 0.1 * (1 + 0.1 * rng.random())) for _ in range(60)]
    assert seen[1] == 8  # one window of slow start
    assert seen[1:] == [8] * 59  # noise of 10% never moves it


def test_shrinks_when_latency_grows_with_concurrency_without_a_throughput_gain():
    clock = Clock()
    h = HostLimit(8, clock=clock)
    h.success(ROUTE, Attempt(clock.now, 1, latency=0.5, solo=True))  # a request alone: 0.5 s
    # processor sharing: n in flight take n times as long, so throughput never grows
    seen = [window(h, clock, lambda n: 0.5 * n) for _ in range(30)]
    assert max(seen) <= 8
    assert seen[-10:] == [seen[-1]] * 10 and seen[-1] <= 2


def test_settles_near_the_best_limit_when_service_time_grows_with_load():
    clock = Clock()
    h = HostLimit(8, clock=clock)
    h.success(ROUTE, Attempt(clock.now, 1, latency=0.05 * (1 + 1 / 16), solo=True))
    seen = [window(h, clock, lambda n: 0.05 * (1 + (n / 4) ** 2)) for _ in range(40)]
    assert 3 <= seen[-1] <= 5  # throughput n / latency peaks at 4
    assert len(set(seen[-10:])) == 1  # and it stays there


def test_never_exceeds_the_ceiling_and_a_lower_ceiling_applies_at_once():
    clock = Clock()
    h = HostLimit(3, clock=clock)
    assert h.limit == 3  # the start is capped too
    assert max(window(h, clock, lambda n: 0.1) for _ in range(20)) == 3
    h.set_ceiling(2)
    assert h.limit == 2
    assert max(window(h, clock, lambda n: 0.1) for _ in range(5)) == 2


def test_halves_on_429_once_a_round_trip_and_caps_below_the_refused_concurrency():
    clock = Clock()
    h = HostLimit(16, clock=clock)
    for _ in range(3):
        window(h, clock, lambda n: 0.1)
    assert h.limit == 16
    first = Attempt(clock.now - 0.1, 16, latency=0.1)
    assert h.pushback(first, None, None) is False
    assert h.limit == 8
    same_burst = Attempt(clock.now - 0.1, 15, latency=0.1)
    assert h.pushback(same_burst, None, None) is True  # collateral: no second halving
    assert h.limit == 8
    clock.now += 1.0
    h.pushback(Attempt(clock.now - 0.01, 5, latency=0.01), None, None)
    assert h.limit == 4  # halved again, and capped at 4 (5 in flight were refused)
    for _ in range(10):
        window(h, clock, lambda n: 0.1)
    assert h.limit == 4


def test_timeouts_halve_the_limit():
    clock = Clock()
    h = HostLimit(8, clock=clock)
    for _ in range(3):
        window(h, clock, lambda n: 0.1)
    h.timeout()
    assert h.limit == 4


def test_retry_after_pauses_the_whole_host():
    clock = Clock()
    h = HostLimit(8, clock=clock)
    h.pushback(Attempt(clock.now, 1, latency=0.01), 2.0, 2.0)
    assert h.pause_left() == 2.0
    clock.now += 1.5
    assert h.pause_left() == 0.5
    clock.now += 0.5
    assert h.pause_left() == 0.0


def test_off_switch_gives_the_ceiling_and_learns_nothing(monkeypatch):
    clock = Clock()
    h = HostLimit(8, adaptive=False, clock=clock)
    assert h.limit == 8
    window(h, clock, lambda n: 0.5 * n)
    h.timeout()
    assert h.limit == 8
    monkeypatch.setenv("MAPSTREAM_ADAPTIVE", "0")
    assert Fetcher(cache_dir=None).adaptive is False
    monkeypatch.setenv("MAPSTREAM_ADAPTIVE", "1")
    assert Fetcher(cache_dir=None).adaptive is True
    assert Fetcher(cache_dir=None, adaptive=False).hosts.host("h.test").limit == 8


def test_host_table_keeps_each_host_and_rereads_ceilings():
    ceilings = {"a.test": 2}
    hosts = HostLimits(lambda netloc: ceilings.get(netloc, 8))
    assert hosts.host("a.test") is hosts.host("a.test")
    assert (hosts.host("a.test").limit, hosts.host("b.test").limit) == (2, START)
    ceilings["a.test"] = 1
    hosts.refresh()
    assert hosts.snapshot()["a.test"]["limit"] == 1


async def test_admission_holds_attempts_until_the_pause_is_over_or_refuses_a_long_one():
    hosts = HostLimits(lambda netloc: 8, max_retry_after=60)
    gate = Admission(8, lambda netloc: 8, FetchMetrics(), hosts)
    state = hosts.host("p.test")
    state.pushback(None, 0.3, 0.3)
    lim = await gate.enter("p.test")
    assert state.pause_left() == 0.0  # it did not leave before the host's pause was over
    gate.leave(lim)
    state.pushback(None, 3600, 3600)
    with pytest.raises(RetryAfterTooLongError, match="wait 1 h"):
        await gate.enter("p.test")
    assert (gate.global_limiter.active, lim.active) == (0, 0)


# --- over loopback ------------------------------------------------------------------------


async def start_rate_limited(k: int = 3):
    """An aiohttp server on the test's loop: 429 + ``Retry-After: 1`` for a request that finds
    ``k`` in progress, else 200 after 50 ms. Returns (base URL, stats, runner)."""
    stats = {"now": 0, "ok": 0, "refused": 0, "peak_ok": 0}

    async def handler(request: web.Request) -> web.Response:
        if stats["now"] >= k:
            stats["refused"] += 1
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        stats["now"] += 1
        stats["peak_ok"] = max(stats["peak_ok"], stats["now"])
        try:
            await asyncio.sleep(0.05)
            stats["ok"] += 1
            return web.Response(text="ok")
        finally:
            stats["now"] -= 1

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", stats, runner


@pytest.mark.slow
async def test_every_request_succeeds_against_a_server_that_answers_429_above_3_in_flight():
    base, stats, runner = await start_rate_limited(3)
    try:
        async with Fetcher(cache_dir=None) as f:  # the defaults: ceiling 8, 4 attempts, budget 20
            out = await asyncio.gather(*(f.get(f"{base}/t/{i}") for i in range(120)), return_exceptions=True)
            host = f.metrics.snapshot()["hosts"][base.split("//")[1]]
        assert [r for r in out if isinstance(r, BaseException)] == []
        assert stats["ok"] == 120
        assert host["limit"] <= 3 and host["ceiling"] == 8  # it learned the server's k
    finally:
        await runner.cleanup()


async def test_a_retry_after_of_an_hour_ends_each_tile_at_once_with_few_requests(fault_server):
    urls = [fault_server.url(f"/tiles/3/{i}/1.png", status=429, retry_after=3600) for i in range(12)]
    async with Fetcher(cache_dir=None) as f:
        out = await asyncio.gather(*(f.get(u) for u in urls), return_exceptions=True)
    assert all(isinstance(r, RetryAfterTooLongError) for r in out), out
    assert "asks us to wait 1 h before retrying; giving up" in str(out[0])
    # only the first attempts on the wire ever reach the server (START at most): no retries,
    # and the tiles after them end in admission, because the whole host is paused
    assert sum(fault_server.hits.values()) <= START


async def test_a_short_retry_after_is_honoured_for_the_whole_host(fault_server):
    async with Fetcher(cache_dir=None) as f:
        first = fault_server.url("/ra", status=429, retry_after=1, fail_first=1)
        other = fault_server.url("/other")
        task = asyncio.create_task(f.get(first))
        netloc = fault_server.base.split("//")[1]
        assert await async_wait_for(lambda: f.hosts.host(netloc).pause_left() > 0, 5)  # the 429 is back
        await f.get(other)  # another path of the same host: it waited for the pause as well
        assert f.hosts.host(netloc).pause_left() == 0.0
        assert (await task).status == 200
    ra = fault_server.arrivals("/ra")
    assert fault_server.arrivals("/other")[0] >= ra[0] + 1.0 - 0.05  # not before the pause's end


def _load(fetcher: Fetcher, urls: list[str]) -> None:
    async def go() -> None:
        try:
            await asyncio.gather(*(fetcher.get(u, cache=False) for u in urls))
        finally:
            await fetcher.aclose()  # this loop's client only: what the fetcher learned stays

    asyncio.run(go())


@pytest.mark.slow
def test_limits_are_remembered_across_loads_and_event_loops(fault_server):
    f = Fetcher(cache_dir=None)
    netloc = fault_server.base.split("//")[1]
    _load(f, [fault_server.url(f"/a/{i}", delay=0.05) for i in range(40)])  # learns 8
    assert f.metrics.snapshot()["hosts"][netloc]["limit"] == 8
    fault_server.reset_counts()
    _load(f, [fault_server.url(f"/b/{i}", delay=0.5) for i in range(8)])  # a new loop
    assert fault_server.peak == 8  # no slow start again: all eight at once
    fresh = Fetcher(cache_dir=None)
    fault_server.reset_counts()
    _load(fresh, [fault_server.url(f"/c/{i}", delay=0.5) for i in range(8)])
    assert fault_server.peak == START  # a new fetcher starts low


def test_the_off_switch_sends_the_ceiling_at_once(fault_server):
    f = Fetcher(cache_dir=None, adaptive=False)
    _load(f, [fault_server.url(f"/d/{i}", delay=0.5) for i in range(8)])
    assert fault_server.peak == 8
