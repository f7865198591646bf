"""Seconds per stage of one thread's work, as wall time and as that thread's CPU time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageClock:
    """Wall and CPU seconds per stage, for work done on one thread. On a machine whose cores the model
    threads keep busy, a stage's wall interval also holds the time its thread waited for a core; the
    thread's CPU seconds are what the stage itself cost (the core's work runs on its one thread)."""

    def __init__(self, *stages: str) -> None:
        self.wall_s = dict.fromkeys(stages, 0.0)
        self.cpu_s = dict.fromkeys(stages, 0.0)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall_s[stage] = self.wall_s.get(stage, 0.0) + time.perf_counter() - wall
            self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + time.thread_time() - cpu
