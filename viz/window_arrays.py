"""The numbers a window is logged with: which pixels become its points and which of those are shown, how long
paths are thinned, how depth and confidence become images, where each plotted value goes. Pure functions of a
`WindowView`, numpy arrays and dicts, for both threads of `recon.viz.rerun_viewer`; nothing here touches rerun."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recon.geometry import grid_stride
from recon.viz import blueprint as paths
from recon.viz.viewer import WindowView

_F16_MAX = float(np.finfo(np.float16).max)


# -- where a plotted value goes ------------------------------------------------------------------------------
def stats_path(key: str) -> str:
    """`fps` -> plots/run/fps; `window_s/infer` -> plots/window_s/infer (grouped keys keep their group)."""
    key = entity_part(key)
    return f"{paths.PLOTS}/{key}" if "/" in key else f"{paths.RUN_PLOTS}/{key}"


def entity_part(key: str) -> str:
    """`key` as part of an entity path: a character Rerun would read as syntax becomes `_` (never empty)."""
    cleaned = "".join(c if c.isalnum() or c in "_-./" else "_" for c in str(key)).strip("/")
    return cleaned or "_"


def numeric_values(values: dict[str, Any]) -> list[tuple[str, float]]:
    """The finite numbers of `values` (booleans are not numbers here), as floats: what can be plotted."""
    return [
        (k, float(v))
        for k, v in values.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]


# -- points and paths ----------------------------------------------------------------------------------------
def point_grid(view: WindowView, new_frames: int, points_max: int) -> tuple[int, np.ndarray]:
    """-> (stride, conf [P]): the pixel stride of the window's points in its `new_frames` new frames (about
    4 x `points_max` pixels, before `confident` keeps the better ones) and each point's confidence."""
    stride = grid_stride(new_frames * int(view.depth.shape[1]) * int(view.depth.shape[2]), 4 * points_max)
    if view.fused_conf is not None:  # the map's own pixels: what it fused, so the view shows no streak it left out
        k = max(1, math.ceil(stride / view.fused_stride))
        return k * view.fused_stride, np.array(view.fused_conf[:, ::k, ::k], dtype=np.float32).reshape(-1)
    sel = (view.new, slice(None, None, stride), slice(None, None, stride))
    return stride, np.array(view.conf[sel], dtype=np.float32).reshape(-1)


def confident(points: np.ndarray, conf: np.ndarray, median: bool = True) -> np.ndarray:
    """Indices of valid points (confidence > 0), with `median` only those at or above the valid ones' median."""
    valid = np.all(np.isfinite(points), axis=1) & np.isfinite(conf) & (conf > 0)
    if not valid.any() or not median:
        return np.flatnonzero(valid)
    return np.flatnonzero(valid & (conf >= np.median(conf[valid])))


def strided(rows: np.ndarray, max_rows: int) -> np.ndarray:
    """At most about `max_rows` of `rows`, evenly spaced: a long path stays cheap to re-log every window."""
    if len(rows) <= max_rows:
        return rows
    stride = math.ceil(len(rows) / max_rows)
    return np.concatenate([rows[::stride], rows[-1:]])  # keep the current position


# -- images --------------------------------------------------------------------------------------------------
def robust_max(values: np.ndarray) -> float:
    """The 99th percentile of the finite values (1 when none is > 0): one outlier cannot darken the rest."""
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    return top if top > 0 else 1.0


def confidence_u8(conf: np.ndarray, top: float) -> np.ndarray:
    # One scale per window (`top`), so the frames of a window compare.
    scaled = np.nan_to_num(conf, nan=0.0, posinf=top, neginf=0.0) / top
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def depth_f16(depth: np.ndarray) -> np.ndarray:
    # float16 halves the recording's largest stream; ~0.05 % relative precision is plenty to look at.
    return np.where(np.isfinite(depth), np.clip(depth, 0.0, _F16_MAX), 0.0).astype(np.float16)


def frustum_size(depth: np.ndarray) -> float:
    """How far from a camera its image plane is drawn: a tenth of the median valid depth (0.1 without one)."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    return 0.1 * float(np.median(valid)) if valid.size else 0.1
