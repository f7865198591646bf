"""A bounded, thread-safe memo shared by the windows of one model (pair flows in dense.py, ORB features and
matches in tracks.py), and the image digest its keys are made of."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np

_V = TypeVar("_V")


class SharedMemo(Generic[_V]):
    """Values by key, each computed once. Consecutive windows share 8 of their 20 frames, and with them what
    those frames and their pairs yield. A value must be a pure function of its key (image contents, settings),
    so a hit returns exactly what computing it would, whichever of the windows in flight asked first; a window
    that asks while another computes waits for that result instead of computing it again. Bounded by items
    and, with `size`, by bytes: least recently used out first (a value larger than `max_bytes` is returned,
    not kept)."""

    def __init__(self, max_items: int, max_bytes: int | None = None, size: Callable[[_V], int] | None = None) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._size = size
        self._items: OrderedDict[Hashable, Future[_V]] = OrderedDict()
        self._bytes: dict[Hashable, int] = {}  # of the finished values still held
        self._total_bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], _V]) -> _V:
        with self._lock:
            known = self._items.get(key)
            if known is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                mine: Future[_V] = Future()
                self._items[key] = mine
                self.misses += 1
                self._evict()
        if known is not None:
            return known.result()
        try:
            value = compute()
        except BaseException as e:
            mine.set_exception(e)  # for whoever waits on it; the next to ask computes it again
            with self._lock:
                if self._items.get(key) is mine:
                    del self._items[key]
            raise
        mine.set_result(value)
        if self._size is not None:
            size = self._size(value)
            with self._lock:
                if self._items.get(key) is mine:
                    if self.max_bytes is not None and size > self.max_bytes:
                        del self._items[key]  # would push out everything else
                    else:
                        self._bytes[key] = size
                        self._total_bytes += size
                        self._evict()
        return value

    def _evict(self) -> None:
        """Least recently used out until within bounds (the lock held)."""
        while self._items and (
            len(self._items) > self.max_items or (self.max_bytes is not None and self._total_bytes > self.max_bytes)
        ):
            old, _ = self._items.popitem(last=False)
            self._total_bytes -= self._bytes.pop(old, 0)


def image_key(gray: np.ndarray) -> bytes:
    """A digest of an image's contents (a cache key part: the same frame in two windows, not the same index)."""
    return hashlib.blake2b(np.ascontiguousarray(gray).data, digest_size=16).digest() + repr(gray.shape).encode()
