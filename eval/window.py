"""Per-window accuracy of a geometry model against ground truth: relative poses inside the window and
depth after one scale per window."""

from __future__ import annotations

import numpy as np

from recon.geometry import invert_rigid, rotation_angle_deg


def relative_pose_errors(
    est_cam_from_world: np.ndarray, gt_cam_from_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's pose relative to the window's first frame vs the same from ground truth.

    -> (rotation error deg [S-1], translation-direction error deg [S-1]; NaN where either translation
    is zero). Scale-free, so it suits up-to-scale models."""
    est = np.asarray(est_cam_from_world, dtype=np.float64)
    gt = np.asarray(gt_cam_from_world, dtype=np.float64)
    est_rel = est @ invert_rigid(est[0])
    gt_rel = gt @ invert_rigid(gt[0])
    rot = rotation_angle_deg(est_rel[1:, :3, :3] @ np.swapaxes(gt_rel[1:, :3, :3], 1, 2))
    c_est = invert_rigid(est_rel[1:])[:, :3, 3]
    c_gt = invert_rigid(gt_rel[1:])[:, :3, 3]
    n_est, n_gt = np.linalg.norm(c_est, axis=1), np.linalg.norm(c_gt, axis=1)
    ok = (n_est > 1e-12) & (n_gt > 1e-12)
    cos = np.sum(c_est * c_gt, axis=1) / np.where(ok, n_est * n_gt, 1.0)
    direction = np.where(ok, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), np.nan)
    return rot, direction


def depth_abs_rel_scaled(depth: np.ndarray, gt_depth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """AbsRel over `mask` (and valid ground truth) after the one scale (median ratio) that best maps the
    prediction onto ground truth. -> (abs_rel, scale)."""
    m = mask & (gt_depth > 0) & (depth > 0)
    if not np.any(m):
        return float("nan"), float("nan")
    scale = float(np.median(gt_depth[m] / depth[m]))
    return float(np.mean(np.abs(scale * depth[m] - gt_depth[m]) / gt_depth[m])), scale
