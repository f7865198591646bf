"""The progress of `recon run` on stderr: a bar on a terminal, a plain line now and then without one."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from recon.summary import RunState


class Progress:
    """The run's progress: frames done (placed in the trajectory, or skipped without motion), not frames read,
    which run ahead of the windows still in the model, so the bar reaches its end when the work does. On a
    terminal a tqdm bar; without one (a log file, a job scheduler) a plain line every `every_s` seconds once the run
    has taken `first_after_s` (a short run's log stays its report)."""

    def __init__(self, total: int | None, every_s: float = 10.0, first_after_s: float = 30.0) -> None:
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="frame", desc="recon", dynamic_ncols=True, disable=not self.tty)
        self.total, self.every_s, self.done = total, every_s, 0
        self._t0 = time.monotonic()
        self._last = self._t0 + first_after_s - every_s

    def update(self, state: RunState, map_points: int) -> None:
        self.done = done = state.frames_written + state.frames_skipped
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(windows=state.windows, map=map_points)
        now = time.monotonic()
        if not self.tty and now - self._last >= self.every_s:
            self._last = now
            of = f"/{self.total}" if self.total else ""
            print(
                f"recon: {done}{of} frames, {state.windows} windows, {done / max(now - self._t0, 1e-9):.1f} frames/s, "
                f"map {map_points} points",
                file=sys.stderr,
                flush=True,
            )

    def close(self, state: RunState) -> None:
        self.done = state.frames_written + state.frames_skipped
        self.bar.update(self.done - self.bar.n)
        self.bar.close()
