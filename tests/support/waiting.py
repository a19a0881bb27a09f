"""Waiting on a condition in tests: poll it until it holds or a deadline passes (never a bare sleep)."""

from __future__ import annotations

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
