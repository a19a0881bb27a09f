"""The byte-bounded in-memory LRU for decoded objects (tiles as arrays, parsed pages).

The fetcher holds one (``Fetcher.memory``) that every layer shares; sizes are declared by the
caller, so the bound is what the layers say their objects weigh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ..errors import BadInputError

__all__ = ["MemoryLRU"]


class MemoryLRU:
    """A thread-safe, byte-bounded least-recently-used map for decoded objects.

    Parameters
    ----------
    max_bytes
        Budget; putting a value evicts the least recently used entries until the total fits.
        A single value larger than the budget is not stored.

    Raises
    ------
    BadInputError
        If ``max_bytes`` is negative.

    >>> m = MemoryLRU(10)
    >>> m.put("a", "A", 6); m.put("b", "B", 4); _ = m.get("a"); m.put("c", "C", 3)
    >>> "b" in m, m.get("a"), m.nbytes
    (False, 'A', 9)
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise BadInputError(f"memory_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._data: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        """The value for ``key`` (now the most recently used), or ``default``."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            self._data.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        """Store ``value`` as weighing ``nbytes``, evicting the least recently used to fit.

        Raises
        ------
        BadInputError
            If ``nbytes`` is negative.
        """
        if nbytes < 0:
            raise BadInputError(f"nbytes must be >= 0, got {nbytes}")
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= old[1]
            if nbytes > self.max_bytes:
                return
            self._data[key] = (value, nbytes)
            self._nbytes += nbytes
            while self._nbytes > self.max_bytes:
                _, (_, n) = self._data.popitem(last=False)
                self._nbytes -= n

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes currently held (as declared by ``put``)."""
        with self._lock:
            return self._nbytes

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._data.clear()
            self._nbytes = 0
