"""Single-flight: identical concurrent requests share one upstream flight.

A flight is a task of its own that runs the request once and hands its outcome to every
caller waiting for it; it is cancelled only when no caller is left waiting. Each caller waits
on a future of its own, which the flight's task resolves as its last step: a cancelled caller
cancels only its future, and waking the callers takes no extra turn of the loop
(``asyncio.shield``'s callbacks cost one, and a third of the engine's own CPU time per request
went to shield and a done-callback).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


@dataclass(eq=False)
class _Flight(Generic[T]):
    """One upstream request and the callers waiting for it, one future each."""

    task: asyncio.Task[None] | None = None
    waiters: list[asyncio.Future[T]] = field(default_factory=list)


class SingleFlight(Generic[T]):
    """The flights in the air on one event loop, by key (``len()`` counts them).

    Parameters
    ----------
    loop
        The loop every caller runs on.
    on_join
        Called when a caller joins a flight already in the air (a coalesced request).

    Examples
    --------
    >>> async def demo():
    ...     flights, calls = SingleFlight(asyncio.get_running_loop()), []
    ...     async def fetch():
    ...         calls.append(1)
    ...         await asyncio.sleep(0.01)
    ...         return "body"
    ...     out = await asyncio.gather(*(flights.run("k", fetch) for _ in range(3)))
    ...     return out, len(calls), len(flights)
    >>> asyncio.run(demo())
    (['body', 'body', 'body'], 1, 0)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_join: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._on_join = on_join
        self._flights: dict[Hashable, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """The outcome of ``factory()``, shared with every concurrent caller of ``key``: the
        first caller starts a flight, the others join it.

        Raises
        ------
        Exception
            Whatever ``factory()`` raised (every waiting caller re-raises it).
        asyncio.CancelledError
            This caller was cancelled (the flight goes on while others wait), or the flight
            was (:meth:`cancel_all`).
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            flight.task = self._loop.create_task(self._fly(key, flight, factory))
        elif self._on_join is not None:
            self._on_join()
        waiter: asyncio.Future[T] = self._loop.create_future()
        flight.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if not waiter.cancelled():  # the outcome came, but this caller was cancelled
                if waiter.done():
                    waiter.exception()  # retrieved: nobody else will
                raise
            try:
                flight.waiters.remove(waiter)
            except ValueError:  # the flight was cancelled and let its waiters go
                pass
            if not flight.waiters and flight.task is not None and not flight.task.done():
                # Nobody wants the result any more: drop it now (a new caller starts afresh).
                self._land(key, flight)
                flight.task.cancel()
            raise

    def cancel_all(self) -> None:
        """Cancel every flight and let its callers go (they raise ``CancelledError``)."""
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
            # A task cancelled before its first step never runs _fly's handlers: let the
            # callers go here.
            for w in flight.waiters:
                w.cancel()

    async def _fly(self, key: Hashable, flight: _Flight[T], factory: Callable[[], Awaitable[T]]) -> None:
        """The body of a flight's task: run ``factory`` and hand its outcome to every waiter.

        The task itself ends without an exception (the waiters re-raise it; nobody left means
        nobody cares), or cancelled, which cancels the waiters still there.
        """
        try:
            result = await factory()
        except Exception as exc:  # noqa: BLE001  (any failure is the waiters' to re-raise)
            self._land(key, flight)
            for w in flight.waiters:
                if not w.done():
                    w.set_exception(exc)
            return
        except BaseException:  # cancelled (cancel_all), or the process is going down
            self._land(key, flight)
            for w in flight.waiters:
                w.cancel()
            flight.waiters.clear()
            raise
        self._land(key, flight)
        for w in flight.waiters:
            if not w.done():
                w.set_result(result)

    def _land(self, key: Hashable, flight: _Flight[T]) -> None:
        # Out of the table before anyone learns the outcome: a later caller starts afresh.
        if self._flights.get(key) is flight:
            del self._flights[key]
