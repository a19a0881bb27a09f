"""Admission and retry policy helpers (mapstream.layers.http.limits)."""

from __future__ import annotations

import asyncio
import random

import pytest

from mapstream.layers.http.limits import Limiter, backoff_delay, parse_retry_after


async def test_limiter_is_fifo_and_resizable():
    lim = Limiter(1)
    order = []

    async def worker(i):
        await lim.acquire()
        order.append(i)
        await asyncio.sleep(0.01)
        lim.release()

    await lim.acquire()
    tasks = [asyncio.create_task(worker(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert lim.waiting == 4
    lim.set_limit(3)  # wakes two waiters at once
    await asyncio.sleep(0)
    assert lim.active == 3
    lim.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert (lim.active, lim.waiting) == (0, 0)


async def test_cancelled_waiter_handed_a_slot_passes_it_on():
    lim = Limiter(1)
    await lim.acquire()
    a = asyncio.create_task(lim.acquire())
    b = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.release()  # hands the slot to a...
    a.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(a, return_exceptions=True)
    await b  # so b gets it
    assert lim.active == 1
    lim.release()
    assert (lim.active, lim.waiting) == (0, 0)


def test_retry_after_http_date_in_the_past_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after(" 7 ") == 7.0


@pytest.mark.parametrize("attempt", [0, 1, 5, 20])
def test_backoff_is_full_jitter_within_the_cap(attempt):
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(500)]
    bound = min(2.0, 0.1 * 2**attempt)
    assert all(0 <= d <= bound for d in delays)
    assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound  # spread, not fixed
