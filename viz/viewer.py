"""What the pipeline tells a viewer, and the viewer that does nothing.

The pipeline calls `viewer.log_window(view)` once per aligned window from its consumer thread, and
`viewer.close()` when the run ends. It never branches on whether anyone is watching: with viewing off it
talks to `NullViewer`. A real viewer must return from `log_window` quickly (copy what it needs, hand the
rest to its own thread, drop when behind): the pipeline's speed must not depend on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import numpy as np

from recon.types import Sim3

ViewerMode = Literal["none", "spawn", "serve"]  # --viewer: no live viewer, the native one, a web viewer
MODES: tuple[str, ...] = get_args(ViewerMode)


@dataclass(frozen=True)
class WindowView:
    """One aligned window as the viewer sees it. Arrays are the pipeline's own (do not modify them);
    S frames at model resolution H x W; world = the run's world frame (the first camera), run units.

    Frames `new` (a slice) appear here for the first time; the others are the overlap with the
    previous window, already shown."""

    window: int  # 0, 1, 2, ... in stream order
    frame_indices: list[int]  # [S] source frame indices
    timestamps_s: list[float]  # [S] capture times
    new: slice
    images_rgb: np.ndarray  # [S,H,W,3] uint8
    depth: np.ndarray  # [S,H,W] float32, z-depth in run units (0 = none)
    conf: np.ndarray  # [S,H,W] float32, >= 0, higher = more trusted
    cam_from_world: np.ndarray  # [S,4,4] float64
    K: np.ndarray  # [S,3,3] float64, model pixels
    world_from_window: Sim3  # the window's own frame -> world, as fitted by the alignment
    gt_cam_from_world: np.ndarray | None  # [S,4,4] ground truth in the source's world, when known
    alignment: dict[str, Any]  # path, scale, seam_rotation_deg, seam_offset_rel, num_correspondences, time_ms
    stats: dict[str, float]  # run-level series, this window's: fps, peak_rss_mb, map_points, window_s/<stage>, ...
    # [F,H',W'] the `new` frames on every fused_stride-th pixel: the confidence the map took (0: left out by its
    # filters); None: the viewer picks the more confident half itself.
    fused_conf: np.ndarray | None = None
    fused_stride: int = 1
    new_points: Callable[[int], np.ndarray] = field(
        repr=False, default=lambda stride: np.zeros((0, 0, 0, 3), np.float32)
    )
    """(stride) -> world points [F,H',W',3] float32 of the `new` frames on every stride-th pixel (mapped on demand)."""
    map_points: Callable[[], tuple[np.ndarray, np.ndarray]] = field(
        repr=False, default=lambda: (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    )
    """-> (xyz [M,3] float32 world, rgb [M,3] uint8): the global map now. Call it inside `log_window`
    only (the map changes after it returns); it copies the map, so call it only when you will log it."""


class Viewer(Protocol):
    def log_window(self, view: WindowView) -> None: ...

    def update_window_transforms(self, moved: dict[int, Sim3]) -> None:
        """A pose-graph correction moved these windows (world_from_window): re-log their transforms only."""
        ...

    def close(self) -> None: ...

    def linger(self) -> None:
        """After the run's report: keep serving what was logged until interrupted, where the viewer serves."""
        ...

    def stop(self) -> None:
        """Release everything close() kept (a served recording)."""
        ...


class NullViewer:
    """Viewing off."""

    def log_window(self, view: WindowView) -> None:
        pass

    def update_window_transforms(self, moved: dict[int, Sim3]) -> None:
        pass

    def close(self) -> None:
        pass

    def linger(self) -> None:
        pass

    def stop(self) -> None:
        pass
