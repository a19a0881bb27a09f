"""Single-flight (mapstream.layers.http.flight), without a network: shared outcomes, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from mapstream.layers.http.flight import SingleFlight


class Upstream:
    """A request that runs until released, counting how often it started and was cancelled."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "body"


async def test_concurrent_callers_share_one_flight_and_joins_are_counted():
    joined = []
    flights = SingleFlight(asyncio.get_running_loop(), lambda: joined.append(1))
    up = Upstream()
    callers = [asyncio.create_task(flights.run("k", up)) for _ in range(3)]
    await asyncio.sleep(0)
    assert (len(flights), len(joined)) == (1, 2)
    up.release.set()
    assert await asyncio.gather(*callers) == ["body"] * 3
    assert (up.started, len(flights)) == (1, 0)


async def test_a_failure_reaches_every_caller_and_a_later_caller_starts_afresh():
    flights = SingleFlight(asyncio.get_running_loop())
    calls = []

    async def failing() -> str:
        calls.append(1)
        await asyncio.sleep(0)
        raise ValueError("upstream broke")

    results = await asyncio.gather(*(flights.run("k", failing) for _ in range(2)), return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError] and len(calls) == 1
    with pytest.raises(ValueError):
        await flights.run("k", failing)
    assert len(calls) == 2


async def test_one_cancelled_caller_leaves_the_flight_to_the_others():
    flights = SingleFlight(asyncio.get_running_loop())
    up = Upstream()
    a = asyncio.create_task(flights.run("k", up))
    b = asyncio.create_task(flights.run("k", up))
    await asyncio.sleep(0)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    up.release.set()
    assert await b == "body"
    assert (up.started, up.cancelled) == (1, 0)


async def test_the_last_caller_gone_cancels_the_flight_at_once():
    flights = SingleFlight(asyncio.get_running_loop())
    up = Upstream()
    a = asyncio.create_task(flights.run("k", up))
    await asyncio.sleep(0)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert len(flights) == 0  # out of the table before the task has even run its handler
    await asyncio.sleep(0)
    assert up.cancelled == 1
    up.release.set()
    assert await flights.run("k", up) == "body" and up.started == 2  # a new flight


async def test_cancel_all_lets_every_caller_go_even_before_the_flight_ran():
    flights = SingleFlight(asyncio.get_running_loop())
    up = Upstream()
    caller = asyncio.create_task(flights.run("k", up))
    await asyncio.sleep(0)  # the caller waits; the flight's task has not run a step yet
    flights.cancel_all()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 1)
    assert up.started == 0
