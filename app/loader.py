"""One loader per layer and session: latest viewport wins, superseded work is cancelled.

Panel's own cancellation of async callbacks can show a stale result after quick changes, so
the app owns its task handles here (:class:`~mapstream.app.session.MapSession` keeps one loader
per layer). A :class:`LayerLoader` runs one task at a time; :meth:`LayerLoader.request` with a
new viewport cancels the running task and starts a new one, and every partial result is handed
to the callback only if its viewport is still the loader's current viewport and its task is
still the current task.

A load always ends: with its last result, an error, or cancelled by a newer view or by closing.
A load that hangs (no result for ``stall`` seconds, whatever the engine below waits on) ends
with a :class:`~mapstream.layers.errors.FetchTimeoutError`, so that a layer's status line never
stays "loading" after the last pan.

This module is pure asyncio: no Panel import, so it is unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

from mapstream.layers.errors import FetchTimeoutError

__all__ = ["LayerLoader", "LoadEvent"]


class LoadEvent:
    """What a loader reports to its callback.

    Attributes
    ----------
    kind
        ``"start"``, ``"result"``, ``"done"``, ``"error"``.
    key
        The viewport (or any hashable key) the event belongs to.
    value
        The partial result (``"result"``), the exception (``"error"``), else None.
    elapsed
        Seconds since the load started.
    """

    __slots__ = ("kind", "key", "value", "elapsed")

    def __init__(self, kind: str, key: Hashable, value: Any = None, elapsed: float = 0.0) -> None:
        self.kind = kind
        self.key = key
        self.value = value
        self.elapsed = elapsed

    def __repr__(self) -> str:
        return f"LoadEvent({self.kind!r}, key={self.key!r}, elapsed={self.elapsed:.3f})"


class LayerLoader:
    """Load one layer for the latest requested viewport.

    Parameters
    ----------
    load
        ``load(key)`` returns an async iterator of partial results for that viewport (e.g.
        ``lambda vp: layer.load(vp, fetcher)``).
    callback
        Called synchronously on the event loop with a :class:`LoadEvent` for the current
        viewport only: ``start``, each ``result``, then ``done`` or ``error``. Events of a
        superseded viewport are never delivered.
    name
        For ``repr`` and task names.
    stall
        Seconds a load may go without a result before it fails (None: never).

    Examples
    --------
    >>> async def frames(key):
    ...     yield f"{key}-partial"
    ...     yield f"{key}-final"
    >>> seen = []
    >>> async def main():
    ...     loader = LayerLoader(frames, lambda ev: seen.append((ev.kind, ev.value)))
    ...     await loader.request("a")
    ...     await loader.close()
    >>> asyncio.run(main())
    >>> seen
    [('start', None), ('result', 'a-partial'), ('result', 'a-final'), ('done', None)]
    """

    def __init__(
        self,
        load: Callable[[Any], AsyncIterator[Any]],
        callback: Callable[[LoadEvent], None],
        *,
        name: str = "layer",
        stall: float | None = None,
    ) -> None:
        self._load = load
        self._callback = callback
        self.name = name
        self.stall = stall
        self.key: Hashable | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Loads started / superseded by a newer viewport (for tests and metrics).
        self.started = 0
        self.cancelled = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        return f"<LayerLoader {self.name} {state} key={self.key!r}>"

    @property
    def running(self) -> bool:
        """True while a load task is running."""
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The current load task, if any."""
        return self._task

    def request(self, key: Hashable, *, force: bool = False) -> asyncio.Task[None]:
        """Load ``key``: cancel the running load (latest wins) and start a new task.

        The same key as the running or last completed load is a no-op unless ``force``
        (retry). Must be called on the event loop that runs the loads.

        Raises
        ------
        RuntimeError
            The loader was closed.
        """
        if self._closed:
            raise RuntimeError(f"loader {self.name} is closed")
        if not force and key == self.key and self._task is not None and not self._task.cancelled():
            failed = self._task.done() and getattr(self._task, "_mapstream_failed", False)
            if not failed:
                return self._task
        self._cancel_running()
        self.key = key
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._run(key), name=f"load:{self.name}")
        self._task = task
        return task

    def _cancel_running(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self.cancelled += 1

    def cancel(self) -> None:
        """Cancel the running load, if any (its events stop; the key is forgotten)."""
        self._cancel_running()
        self.key = None

    async def close(self) -> None:
        """Cancel the running load and wait for it to finish; the loader cannot be reused."""
        self._closed = True
        task = self._task
        self._cancel_running()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None

    def _emit(self, key: Hashable, kind: str, value: Any, t0: float) -> bool:
        if self._closed or key != self.key or self._task is not asyncio.current_task():
            return False
        self._callback(LoadEvent(kind, key, value, time.perf_counter() - t0))
        return True

    async def _run(self, key: Hashable) -> None:
        t0 = time.perf_counter()
        task = asyncio.current_task()
        watchdog = _Watchdog(self.stall, task) if self.stall and task is not None else None
        self._emit(key, "start", None, t0)
        try:
            iterator = self._load(key)
            try:
                async for item in iterator:
                    if watchdog is not None:
                        watchdog.reset()
                    if not self._emit(key, "result", item, t0):
                        return  # superseded (cancel is on its way) or closed
            finally:
                if watchdog is not None:
                    watchdog.stop()
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
        except asyncio.CancelledError:
            # The watchdog's own cancel, and no other (a newer view, closing): a failed load.
            if watchdog is None or not watchdog.fired or task is None or task.cancelling() > 1:
                raise
            task.uncancel()
            task._mapstream_failed = True  # type: ignore[attr-defined]
            self._emit(key, "error", FetchTimeoutError(
                f"no result for {self.stall:g} s: the layer's servers stopped answering; retry"), t0)
            return
        except Exception as exc:  # reported, never raised into the event loop
            if task is not None:
                task._mapstream_failed = True  # type: ignore[attr-defined]
            self._emit(key, "error", exc, t0)
            return
        self._emit(key, "done", None, t0)


class _Watchdog:
    """Cancels ``task`` when ``reset`` has not been called for ``seconds`` (then ``fired``).

    One timer at a time, re-armed for what is left when it fires early, instead of a timer per
    result: a cancelled timer stays in the loop's queue until its time, and with it the
    context it was made in (a Panel session's document, in ``pn.state.curdoc``). The timer runs
    in an empty context for the same reason.
    """

    def __init__(self, seconds: float, task: asyncio.Task[Any]) -> None:
        self.seconds, self.task, self.fired = seconds, task, False
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        self._arm(seconds)

    def _arm(self, delay: float) -> None:
        self._handle = self._loop.call_later(delay, self._check, context=contextvars.Context())

    def reset(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        self._handle = None
        left = self._last + self.seconds - self._loop.time()
        if left > 0:
            self._arm(left)
        elif not self.task.done():
            self.fired = True
            self.task.cancel()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
