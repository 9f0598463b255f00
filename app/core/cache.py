"""A small per-worker cache whose entries expire after a fixed time; bounded in size."""
from __future__ import annotations

import time
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")
_MISSING = object()


class TTLCache(Generic[V]):
    __slots__ = ("ttl", "max_size", "_clock", "_data")

    def __init__(self, ttl: float, max_size: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._data: dict[Hashable, tuple[float, V]] = {}

    def get(self, key: Hashable, default=_MISSING):
        """The cached value, or ``default`` (a sentinel test with ``is``) when absent or expired."""
        item = self._data.get(key)
        if item is not None and item[0] > self._clock():
            return item[1]
        return default

    def put(self, key: Hashable, value: V) -> None:
        if len(self._data) >= self.max_size:
            now = self._clock()
            self._data = {k: v for k, v in self._data.items() if v[0] > now}
            if len(self._data) >= self.max_size:
                self._data.clear()
        self._data[key] = (self._clock() + self.ttl, value)

    def drop(self, key: Hashable) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


MISSING = _MISSING
