"""BLAS, torch's intra-op pool and OpenCV's on one thread for the classical model's whole life."""

from __future__ import annotations

import cv2
import torch
from threadpoolctl import threadpool_limits


class OneThreadMath:
    """BLAS, torch's intra-op pool and OpenCV's on one thread from the model's construction until `close()`. The
    model keeps the cores busy with its own threads (two windows in flight, the flow workers); a pool on top
    only fights them. OpenCV's split each LK and DIS call across both cores, which the other window already
    held: on one thread the tracks and flows are the same to the bit (so are dtu24's and the drive's
    trajectories and maps), with a second less of system time a run and 1-4% more frames/s on the drive and the
    DTU scans. Our matrices are tiny: multi-threaded BLAS only added hand-offs and oversubscribed the cores (a
    200x200 product went from 0.4 ms to 16 ms under load), and the core's torch work (joins, the map's
    consistency check, voxel merging: tensors of 10^4-10^6 elements) ran slower on two intra-op threads that
    waited for the model's than on one. Set once, from the thread that builds the model: OpenBLAS ignores a
    limit set from a worker thread once another thread has set one, so a limit taken and lifted around each
    window left some windows on two threads — and results then depended on thread timing (a Schur
    complement's sums split differently, 1e-13 apart, grown to 1 mm over a 300 m drive by the joins)."""

    def __init__(self) -> None:
        self._limit: threadpool_limits | None = threadpool_limits(limits=1, user_api="blas")
        self._torch_threads: int | None = torch.get_num_threads()
        torch.set_num_threads(1)
        self._cv_threads: int | None = cv2.getNumThreads()
        cv2.setNumThreads(1)

    def close(self) -> None:
        if self._limit is not None:
            self._limit.restore_original_limits()
            self._limit = None
        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        if self._cv_threads is not None:
            cv2.setNumThreads(self._cv_threads)
            self._cv_threads = None
