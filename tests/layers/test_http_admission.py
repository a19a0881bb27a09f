"""Admission (mapstream.layers.http.admission): the FIFO, resizable limiter and the per-loop gate."""

from __future__ import annotations

import asyncio

from mapstream.layers.http.admission import Admission, Limiter
from mapstream.layers.http.metrics import FetchMetrics


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


async def test_admission_queues_on_the_host_before_taking_a_global_slot():
    limits = {"a.test": 1}
    metrics = FetchMetrics()
    gate = Admission(2, lambda netloc: limits.get(netloc, 8), metrics)
    a1 = await gate.enter("a.test")
    a2 = asyncio.create_task(gate.enter("a.test"))
    await asyncio.sleep(0)
    assert not a2.done() and metrics.snapshot()["waiting"] == 1
    assert gate.global_limiter.active == 1  # the queued request holds no global slot
    b1 = await gate.enter("b.test")  # so another host still gets in
    assert gate.global_limiter.active == 2
    limits["a.test"] = 2
    gate.resize()  # a.test may have two now, but the global limit is full
    await asyncio.sleep(0)
    assert not a2.done()
    gate.leave(b1)
    assert await asyncio.wait_for(a2, 1) is a1  # one limiter per host
    gate.leave(a1)
    gate.leave(a1)
    assert (gate.global_limiter.active, a1.active, metrics.snapshot()["waiting"]) == (0, 0, 0)


async def test_try_acquire_takes_only_a_free_slot():
    lim = Limiter(1)
    assert lim.try_acquire() and not lim.try_acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.set_limit(2)  # the new slot goes to the waiter, not to the next try
    assert not lim.try_acquire()
    await waiter
    lim.set_limit(3)
    assert lim.try_acquire() and lim.active == 3
