"""Several windows in the model at once, results in stream order (a CPU model leaves a core idle
while one window is in its single-threaded stages).

A window is cut as if the one before it will be used as it is. When it is not (its prediction was dropped,
or the model could not place its last frames, so the next window must start earlier), the windows cut after
it are discarded and cut again from the same frames: the windows, and so the results, are the ones a
one-at-a-time run makes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from recon.schedule import WindowScheduler
from recon.types import Frame


@dataclass
class _Job:
    window: list[Frame]
    result: Future
    cut_at: WindowScheduler  # the scheduler right after it cut this window
    later: list[Frame] = field(default_factory=list)  # frames pushed after this window was cut


R = TypeVar("R")  # what `infer` returns for a window


class WindowsInFlight(Generic[R]):
    """push(frame) cuts windows with `scheduler` and runs `infer` on up to `depth` of them at once;
    `settle(window, result)` is called for each window in order, in the pushing thread, and returns how the
    scheduler continues: None (as cut), "reject", or the number of frames the next window carries."""

    def __init__(
        self,
        scheduler: WindowScheduler,
        infer: Callable[[list[Frame]], R],
        settle: Callable[[list[Frame], R], str | int | None],
        depth: int,
        thread_name: str,
    ) -> None:
        self.scheduler, self.infer, self.settle, self.depth = scheduler, infer, settle, max(1, depth)
        self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix=thread_name)
        self._jobs: deque[_Job] = deque()
        # Windows in parallel may also be cut one ahead: it waits in the pool and starts the moment a window
        # ends, instead of after the oldest is settled and the next window's frames are read (a model thread
        # stood idle for that: 0.1-0.2 s a window). One at a time, a window never starts before the one
        # before it is settled: a stateful model (a KV cache) must not see a window that is then cut again.
        self._cut_ahead = self.depth + 1 if self.depth > 1 else 1

    def push(self, frame: Frame) -> None:
        for job in self._jobs:
            job.later.append(frame)
        if (window := self.scheduler.push(frame)) is not None:
            self._jobs.append(_Job(window, self._pool.submit(self.infer, window), self.scheduler.snapshot()))
        while len(self._jobs) >= self._cut_ahead:
            self._settle_oldest()

    def finish(self) -> None:
        """Settles every window, then the last, shorter one."""
        while self._jobs:
            self._settle_oldest()
        if (window := self.scheduler.finish()) is not None:
            self.settle(window, self._pool.submit(self.infer, window).result())

    def close(self) -> None:
        """Waits for the windows still in the model (a thread stopped inside native code aborts the process)."""
        self._jobs.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _settle_oldest(self) -> None:
        job = self._jobs.popleft()
        decision = self.settle(job.window, job.result.result())
        if decision is None:
            return
        # The windows cut after this one assumed it was used as it is: cut them again.
        for later in self._jobs:
            later.result.cancel()
        self._jobs.clear()
        self.scheduler = job.cut_at
        if decision == "reject":
            self.scheduler.reject()
        else:
            self.scheduler.carry(int(decision))
        for frame in job.later:
            self.push(frame)
