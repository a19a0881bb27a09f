"""Waiting on a condition in tests: poll it until it holds or a deadline passes (never a bare sleep).

:func:`wait_for` blocks (threads, subprocesses, browsers); :func:`async_wait_for` is the same for
a test on the event loop, which must keep running while the condition is polled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Call ``predicate`` every ``interval`` seconds until it returns something true.

    Returns that value, or the last (false) value once ``timeout`` seconds have passed: callers
    assert on it, so a timeout fails the test with their own message.

    >>> wait_for(lambda: 42, 1)
    42
    >>> wait_for(lambda: [], 0.01)
    []
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """:func:`wait_for` on the event loop: ``await asyncio.sleep(interval)`` between the calls.

    >>> asyncio.run(async_wait_for(lambda: "ok", 1))
    'ok'
    >>> asyncio.run(async_wait_for(lambda: 0, 0.01))
    0
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)
