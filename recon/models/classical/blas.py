"""BLAS on one thread while the classical model infers a window (shared by the windows in flight)."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_limits


class SingleThreadedBlas:
    """BLAS on one thread while any window is inferred. Our matrices are tiny: multi-threaded BLAS only adds
    hand-offs, and next to the flow threads it oversubscribes the cores (a 200x200 product went from 0.4 ms
    to 16 ms under load). The limit is process-wide, so with windows in flight together the first to enter
    sets it and the last to leave lifts it (nested threadpool_limits would restore in the wrong order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._limit: threadpool_limits | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._limit = threadpool_limits(limits=1, user_api="blas")
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None
