"""Sim(3) fits in numpy, float64 (not a hot path: every caller fits a handful of points or poses): weighted
Umeyama, the closed-form Sim(3) that best maps source points onto target points (least squares), and the
Sim(3) between two trajectories. The robust batched fit of a window join is recon.kernels.align_sim3."""

from __future__ import annotations

import numpy as np

from recon.geometry import project_to_rotation
from recon.types import Sim3


def umeyama_sim3(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True
) -> Sim3:
    """target ≈ s R source + t for points [N,3] (N ≥ 3, not collinear). Returns `target_from_source`."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    E = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        E[2, 2] = -1.0
    R = U @ E @ Vt
    var_s = float(w @ np.sum(xs**2, axis=1))
    s = float(np.trace(np.diag(D) @ E) / var_s) if with_scale and var_s > 0 else 1.0
    return Sim3(s, R, mu_d - s * R @ mu_s)


def sim3_from_poses(est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, with_scale: bool = True) -> Sim3:
    """`gt_from_est` from whole poses [N,4,4] (N >= 2 for a scale): the rotation is the chordal mean of
    R_gt R_est^T over all frames, then scale and translation fit the camera centres. Unlike Umeyama on
    centres alone it stays determined for a straight drive, where the roll about the path is free."""
    est = np.asarray(est_world_from_cam, dtype=np.float64)
    gt = np.asarray(gt_world_from_cam, dtype=np.float64)
    M = np.einsum("nij,nkj->ik", gt[:, :3, :3], est[:, :3, :3])
    R = project_to_rotation(M)
    c_est, c_gt = est[:, :3, 3], gt[:, :3, 3]
    rotated = c_est @ R.T
    d_est, d_gt = rotated - rotated.mean(0), c_gt - c_gt.mean(0)
    var = float(np.sum(d_est**2))
    s = float(np.sum(d_est * d_gt) / var) if with_scale and var > 0 else 1.0
    if not s > 0:
        s = 1.0  # an estimate moving against ground truth: no meaningful scale, keep the rotation
    return Sim3(s, R, c_gt.mean(0) - s * rotated.mean(0))
