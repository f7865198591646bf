"""Cutting a frame stream into overlapping windows, skipping frames that add no motion."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon.datasets.resize import resize_image
from recon.types import Frame

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
