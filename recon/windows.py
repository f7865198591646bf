"""How a frame stream becomes predictions (ARCHITECTURE §1): frames that add no motion skipped
(`KeyframeSelector`), windows that share `overlap` frames (`WindowScheduler`), several windows in the model at
once with results in stream order (`WindowsInFlight`: a CPU model leaves a core idle while one window is in
its single-threaded stages), and the strategy a model's registry entry declares for how its predictions
reach the map, so the driver and the core never ask which model they run:

- `OverlappingWindows`: an offline model (GeometryModel) runs on windows that share `overlap` frames; each
  window is joined to the previous one through the shared frames (recon.align.fit_window).
- `AnchoredSteps`: a causal model (StreamingModel) takes consecutive groups without overlap; every
  prediction is already in its anchor frame's camera, so consecutive steps are related by the identity (and
  by the last camera when the model had to restart on a new anchor).

In flight, a window is cut as if the one before it will be used as it is. When it is not (its prediction was
dropped, or the model could not place its last frames, so the next window must start earlier), the windows
cut after it are discarded and cut again from the same frames: the windows, and so the results, are the ones
a one-at-a-time run makes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args

import cv2
import numpy as np

from recon.datasets.resize import resize_image
from recon.types import Frame, WindowPrediction

# Windows of 20 frames sharing 8. A join can only be as good as the two windows agree on their shared
# frames, and those sit at the edges of both, where a window is weakest: a classical window's first frames
# after a turn or a low-texture stretch came out 5-12% off its body in scale. With 8 shared, the middle of
# the span lies 4 frames inside both windows. Measured (bench_accuracy, classical, overlap 5 -> 8): worst
# consecutive-window scale ratio low_texture s11 1.24 -> 1.06, room_fast s7 1.16 -> 1.06, room_fast s11
# 1.24 -> 1.04 (ATE 1.34 -> 0.40%, 0.49 -> 0.45%, 4.05 -> 0.31% of the path), for 25% more windows. Longer
# windows are no substitute: 24 sharing 8 bent more inside (room_fast s7 1.46).
DEFAULT_WINDOW, DEFAULT_OVERLAP = 20, 8


@dataclass(frozen=True)
class KeyframeConfig:
    min_flow_px: float = 1.0  # median motion (in pixels of a 320-px-wide image) below which a frame is skipped
    grid: int = 12  # points per side of the grid the motion is measured on
    width_px: int = 320


@dataclass(frozen=True)
class ScheduleConfig:
    """How the stream becomes windows."""

    window: int = DEFAULT_WINDOW  # frames per window (a causal model: frames per step)
    overlap: int = DEFAULT_OVERLAP  # frames consecutive windows share (a causal model's registration makes it 0)
    keyframes: bool = True  # skip frames without motion (KeyframeSelector)
    keyframes_detail: KeyframeConfig = KeyframeConfig()
    queue_windows: int = 2  # predictions waiting for the reconstruction core


class KeyframeSelector:
    """Keeps a frame when the scene moved enough since the last kept one (median sparse flow), so a parked
    camera does not fill windows with copies of one view."""

    def __init__(self, config: KeyframeConfig = KeyframeConfig()) -> None:
        self.config = config
        self._last: np.ndarray | None = None
        self._points: np.ndarray | None = None

    def _small_gray(self, image_rgb: np.ndarray) -> np.ndarray:
        H, W = image_rgb.shape[:2]
        scale = self.config.width_px / W
        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        return resize_image(gray, (self.config.width_px, max(8, round(H * scale))))

    def accept(self, frame: Frame) -> bool:
        gray = self._small_gray(frame.image_rgb)
        if self._last is None or self._points is None or self._last.shape != gray.shape:
            self._keep(gray)
            return True
        moved, status, _ = cv2.calcOpticalFlowPyrLK(self._last, gray, self._points, None, winSize=(15, 15), maxLevel=3)
        ok = status.ravel() == 1
        # Lost tracks mean the view changed a lot: keep the frame.
        if (
            ok.mean() < 0.5
            or np.median(np.linalg.norm((moved - self._points).reshape(-1, 2)[ok], axis=1)) >= self.config.min_flow_px
        ):
            self._keep(gray)
            return True
        return False

    def _keep(self, gray: np.ndarray) -> None:
        H, W = gray.shape
        n = self.config.grid
        u, v = np.meshgrid(np.linspace(0.1 * W, 0.9 * W, n), np.linspace(0.1 * H, 0.9 * H, n))
        self._last = gray
        self._points = np.stack([u.ravel(), v.ravel()], -1).astype(np.float32).reshape(-1, 1, 2)


class WindowScheduler:
    """push(frame) returns a full window of `size` frames whenever one is ready; consecutive windows
    share `overlap` frames. finish() returns the last, shorter window if it adds frames beyond the
    overlap (and has at least `min_size` frames). Holds at most `size` frames."""

    def __init__(self, size: int, overlap: int, min_size: int = 2) -> None:
        if not (size >= min_size >= 1 and 0 <= overlap < size):
            raise ValueError(
                f"need window >= {min_size} and 0 <= overlap < window, got window {size}, overlap {overlap}"
            )
        self.size, self.overlap, self.min_size = size, overlap, min_size
        self._frames: list[Frame] = []
        self._carry: list[Frame] = []  # tail of the last accepted window: the next window starts with it
        self._carry_before: list[Frame] = []
        self._last: list[Frame] = []

    def push(self, frame: Frame) -> list[Frame] | None:
        self._frames.append(frame)
        if len(self._frames) < self.size:
            return None
        window = self._frames
        self._carry_before, self._carry = self._carry, window[len(window) - self.overlap :] if self.overlap else []
        self._frames = list(self._carry)
        self._last = window
        return window

    def snapshot(self) -> WindowScheduler:
        """A copy to go back to: its own lists, the same frames."""
        other = WindowScheduler(self.size, self.overlap, self.min_size)
        other._frames, other._carry, other._carry_before, other._last = (
            list(x) for x in (self._frames, self._carry, self._carry_before, self._last)
        )
        return other

    def carry(self, n: int) -> None:
        """The next window starts with the last `n` frames of the window push() just returned (n >= the
        overlap, < the window): its model could not place them. Call before the next push."""
        if not self.overlap <= n < len(self._last):
            raise ValueError(f"carry {n} frames: need overlap {self.overlap} <= n < {len(self._last)}")
        self._carry = self._last[len(self._last) - n :]
        self._frames = list(self._carry)

    def reject(self) -> None:
        """The window push() just returned was not used (e.g. its prediction held NaN): its new frames are
        dropped and the next window overlaps the last accepted window instead. Call before the next push."""
        self._carry = self._carry_before
        self._frames = list(self._carry)

    def finish(self) -> list[Frame] | None:
        window, self._frames = self._frames, []
        return window if len(window) > len(self._carry) and len(window) >= self.min_size else None


# ------------------------------------------------------------------------------------------ in flight
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
        """Cuts the last, shorter window at once and settles every window in order. The last one starts
        beside those still in flight, as a window cut ahead does (a short sequence's last window ran alone,
        half the cores idle). Settled with a new cut, a window has the windows after it cut again, the last
        one too; the last one's own decision has nothing after it to change."""
        while True:
            cut = self.scheduler
            if (last := cut.finish()) is not None:
                self._jobs.append(_Job(last, self._pool.submit(self.infer, last), cut.snapshot()))
            while self._jobs and self.scheduler is cut:
                if self._jobs[0].window is last:
                    job = self._jobs.popleft()
                    self.settle(job.window, job.result.result())
                else:
                    self._settle_oldest()
            if self.scheduler is cut:
                return

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


# -------------------------------------------------------------------------------------- registration
# How overlapping windows are joined (--align): one Sim(3), or a Sim(3) and then a scale per depth layer.
AlignMode = Literal["sim3", "lsa"]
ALIGN_MODES: tuple[str, ...] = get_args(AlignMode)


class Registration(Protocol):
    name: str

    def overlap(self, requested: int) -> int:
        """Frames consecutive windows share."""
        ...

    def start(self, model: Any) -> None:
        """A new sequence begins."""
        ...

    def predict(self, model: Any, frames: Sequence[Frame]) -> WindowPrediction: ...

    def in_flight(self, model: Any) -> int:
        """Windows the model may work on at once (results are still taken in stream order)."""
        ...

    def restart(self, model: Any) -> bool:
        """A prediction was unusable and dropped; True when the next prediction has a new anchor (the
        core must then continue from the last camera instead of joining through shared frames)."""
        ...


class OverlappingWindows:
    name = "overlapping"

    def overlap(self, requested: int) -> int:
        return requested

    def start(self, model: Any) -> None:
        pass

    def predict(self, model: Any, frames: Sequence[Frame]) -> WindowPrediction:
        return model.infer(frames)

    def in_flight(self, model: Any) -> int:
        return int(getattr(model, "windows_in_flight", 1))  # a model whose windows are independent may say more

    def restart(self, model: Any) -> bool:
        return False  # the scheduler's next window overlaps the last good one


class AnchoredSteps:
    name = "anchored"

    def overlap(self, requested: int) -> int:
        return 0  # the KV cache carries the context

    def start(self, model: Any) -> None:
        model.reset()  # the model's anchor is this run's first frame

    def predict(self, model: Any, frames: Sequence[Frame]) -> WindowPrediction:
        return model.step(frames)

    def in_flight(self, model: Any) -> int:
        return 1  # each step reads the cache the one before wrote

    def restart(self, model: Any) -> bool:
        model.reset()  # its cache holds the bad keys: start over from the next frame
        return True


REGISTRATIONS: dict[str, type[OverlappingWindows] | type[AnchoredSteps]] = {
    OverlappingWindows.name: OverlappingWindows,
    AnchoredSteps.name: AnchoredSteps,
}
