"""Admission and retry policy for the fetcher: a resizable limiter, a retry budget, backoff.

Requests wait here, on our own limiter, never inside the HTTP client's connection pool.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque

__all__ = ["Limiter", "RetryBudget", "backoff_delay", "parse_retry_after"]


class Limiter:
    """A FIFO semaphore whose limit can change while tasks wait (one per loop).

    A cancelled waiter leaves the queue at once; a waiter cancelled just after being handed a
    slot passes the slot on, so cancellation never leaks capacity.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot we will not use
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


class RetryBudget:
    """A token bucket of retries per host: each retry spends one token, each success refunds
    ``refund``; when empty, failures are not retried, so a dead host fails fast.

    >>> b = RetryBudget(2, refund=0.5)
    >>> b.try_spend(), b.try_spend(), b.try_spend()
    (True, True, False)
    >>> b.success(); b.success(); b.try_spend()
    True
    """

    def __init__(self, capacity: float, refund: float = 0.1) -> None:
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.refund = refund

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def success(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.refund)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``.

    >>> parse_retry_after("3"), parse_retry_after("soon"), parse_retry_after(None)
    (3.0, None, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0)
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)].

    >>> 0 <= backoff_delay(3, 0.5, 2.0) <= 2.0
    True
    """
    return (rng or random).uniform(0.0, min(cap, base * 2**attempt))
