"""Admission: when an attempt may go on the wire (a slot of its host's limiter and one of the
global limiter, per event loop).

Requests wait here, on our own FIFO limiters, never inside the HTTP client's connection pool
(which has no cap), so a limit can change while requests wait and cancelling a waiter costs
nothing on the wire. With a :class:`~.limits.HostLimits` table, each host's limiter follows its
adaptive limit (:mod:`.limits`), no attempt leaves while the host is paused by a
``Retry-After``, and every attempt is timed for the host's control law: what admission saw of
the attempt is left in :data:`LAST_ATTEMPT` for the retry loop, which runs in the same task.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable

from ..errors import RetryAfterTooLongError
from .limits import Attempt, HostLimit, HostLimits
from .metrics import FetchMetrics

__all__ = ["Admission", "Limiter", "LAST_ATTEMPT"]

#: The last attempt that left this task's :meth:`Admission.leave` (its latency, load, solo).
LAST_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("LAST_ATTEMPT", default=None)


class Limiter:
    """A FIFO semaphore whose limit can change while tasks wait (one per loop).

    A cancelled waiter leaves the queue at once; a waiter cancelled just after being handed a
    slot passes the slot on, so cancellation never leaks capacity.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: The host's adaptive state (with a :class:`~.limits.HostLimits` table).
        self.host: HostLimit | None = None
        #: What admission saw of each attempt on the wire, by task.
        self.attempts: dict[asyncio.Task[object] | None, Attempt] = {}

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits (FIFO); never waits."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:  # try_acquire, inline: hot path
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


class Admission:
    """One event loop's gate: a :class:`Limiter` per host (``host[:port]``) and one over all.

    Parameters
    ----------
    global_limit
        Slots over all hosts.
    limit_for
        The limit of a host key (read again by :meth:`resize`).
    metrics
        Told how many requests wait and how long each waited.
    hosts
        The fetcher's adaptive limits and pauses per host; ``None``: fixed limits only.

    Raises
    ------
    RetryAfterTooLongError
        From :meth:`enter`: the host asked for a wait longer than ``hosts.max_retry_after``.
    """

    def __init__(
        self,
        global_limit: int,
        limit_for: Callable[[str], int],
        metrics: FetchMetrics,
        hosts: HostLimits | None = None,
    ) -> None:
        self.global_limiter = Limiter(global_limit)
        self.limiters: dict[str, Limiter] = {}
        self._limit_for = limit_for
        self._metrics = metrics
        self._hosts = hosts

    async def enter(self, netloc: str) -> Limiter:
        """Wait for a slot of ``netloc``'s limiter, then one of the global limiter (in that
        order, so a busy host does not hold global slots while it queues). Returns the host's
        limiter, to hand back to :meth:`leave` once the attempt is over."""
        host = self.limiters.get(netloc)
        if host is None:
            host = self.limiters[netloc] = Limiter(self._limit_for(netloc))
            if self._hosts is not None:
                host.host = self._hosts.host(netloc)
                host.set_limit(host.host.limit)
                host.host.watch(asyncio.get_running_loop(), host)
        state = host.host
        while True:
            if state is not None and state.paused_until:
                await self._pause(state, netloc)
            await self._admit(host)
            if state is None or not state.paused_until or state.pause_left() <= 0:
                break
            self._give_back(host)  # paused while it queued: wait again, holding nothing
        if state is not None:
            host.attempts[asyncio.current_task()] = state.started()
        return host

    async def _pause(self, state: HostLimit, netloc: str) -> None:
        """Wait out the host's ``Retry-After`` (or fail at once if it is too long)."""
        assert self._hosts is not None
        while (left := state.pause_left()) > 0:
            if left > self._hosts.max_retry_after:
                raise RetryAfterTooLongError(netloc, left, self._hosts.max_retry_after)
            await asyncio.sleep(left)

    async def _admit(self, host: Limiter) -> None:
        glob = self.global_limiter
        metrics = self._metrics
        held = host.try_acquire()
        if held and glob.try_acquire():  # both free: no wait (and no coroutine) at all
            metrics.record_queue_wait(0.0)
            return
        queued = time.perf_counter()
        metrics.add_waiting(1)
        try:
            if not held:
                await host.acquire()
            try:
                await glob.acquire()
            except BaseException:
                host.release()
                raise
        finally:
            metrics.add_waiting(-1)
        metrics.record_queue_wait(time.perf_counter() - queued)

    def leave(self, host: Limiter) -> None:
        """Give back the two slots :meth:`enter` took (and time the attempt, for its host)."""
        state = host.host
        if state is not None:
            attempt = host.attempts.pop(asyncio.current_task(), None)
            if attempt is not None:
                LAST_ATTEMPT.set(state.finished(attempt))
        self._give_back(host)

    def _give_back(self, host: Limiter) -> None:
        self.global_limiter.release()
        host.release()

    def resize(self) -> None:
        """Apply the current per-host limits to every host's limiter (waiters are woken at once
        when a limit grows). Call it on the loop the limiters belong to."""
        for netloc, limiter in self.limiters.items():
            limiter.set_limit(limiter.host.limit if limiter.host is not None else self._limit_for(netloc))
