"""BLAS on one thread for the classical model's whole life (shared by the windows in flight)."""

from __future__ import annotations

from threadpoolctl import threadpool_limits


class SingleThreadedBlas:
    """BLAS on one thread from the model's construction until `close()`. Our matrices are tiny: multi-threaded
    BLAS only adds hand-offs, and next to the flow threads it oversubscribes the cores (a 200x200 product went
    from 0.4 ms to 16 ms under load). Set once, from the thread that builds the model: OpenBLAS ignores a
    limit set from a worker thread once another thread has set one, so a limit taken and lifted around each
    window left some windows on two threads — and results then depended on thread timing (a Schur
    complement's sums split differently, 1e-13 apart, grown to 1 mm over a 300 m drive by the joins)."""

    def __init__(self) -> None:
        self._limit: threadpool_limits | None = threadpool_limits(limits=1, user_api="blas")

    def close(self) -> None:
        if self._limit is not None:
            self._limit.restore_original_limits()
            self._limit = None
