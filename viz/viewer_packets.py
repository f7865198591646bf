"""What crosses from the pipeline thread to the viewer thread (`recon.viz.rerun_viewer`): a window's copies
(`WindowPacket`), a moved window's new pose (`TransformUpdate`), and the camera path both threads read (`Rows`).
Everything in a packet is the packet's own (copied, or a snapshot no one writes into again): the viewer thread
reads it without a lock while the pipeline goes on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.types import Sim3


@dataclass(frozen=True)
class WindowPacket:
    window: int
    frame_indices: list[int]  # [N] the window's new frames
    timestamps_s: list[float]  # [N]
    window_frame: int  # timeline position of per-window data: the window's last new frame
    window_time_s: float
    images_rgb: np.ndarray  # [N,H,W,3] uint8
    depth: np.ndarray  # [N,H,W] float32
    conf: np.ndarray  # [N,H,W] float32
    world_from_cam: np.ndarray  # [N,4,4]
    K: np.ndarray  # [N,3,3]
    points_world: np.ndarray  # [P,3] float32, strided pixels of the new frames
    points_conf: np.ndarray  # [P] what the map fused (0: left out), or with points_fused False the model's confidence
    points_fused: bool
    points_rgb: np.ndarray  # [P,3] uint8
    world_from_window: Sim3
    centres_world: np.ndarray  # [F,3] every camera centre so far (F >= frames logged)
    gt_centres_gt_world: np.ndarray | None  # [F,3] ground-truth centres in the source's world, NaN where unknown
    alignment: dict[str, Any]
    stats: dict[str, float]
    map_xyz_world: np.ndarray | None  # [M,3] float32, only on windows that log the map
    map_rgb: np.ndarray | None
    frame_range: tuple[int, int]  # first and last source frame of the whole window (overlap included)
    dropped_windows: int  # windows dropped before this one


@dataclass(frozen=True)
class TransformUpdate:
    window: int
    world_from_window: Sim3


class Rows:
    """Append-only [n, width] float64 rows. `snapshot()` returns a view the appender never writes into again
    (appends go past it or into a new buffer), so the viewer thread can read it without a lock or a copy."""

    def __init__(self, width: int) -> None:
        self._buf = np.empty((256, width))
        self._n = 0

    def append(self, rows: np.ndarray) -> None:
        k = len(rows)
        if self._n + k > len(self._buf):
            grown = np.empty((max(2 * len(self._buf), self._n + k), self._buf.shape[1]))
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : self._n + k] = rows
        self._n += k

    def snapshot(self) -> np.ndarray:
        return self._buf[: self._n]

    def __len__(self) -> int:
        return self._n
