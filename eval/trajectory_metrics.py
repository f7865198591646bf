"""The trajectory section of metrics.json: ATE, RPE per frame and per distance, orientation errors and KITTI
drift of a paired trajectory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from recon.errors import ReconError
from recon.eval.pairing import PairedTrajectory
from recon.eval.trajectory import ATE, ErrorStats, absolute_trajectory_error, kitti_drift, relative_pose_error

RPE_DISTANCE_STEPS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _stats(s: ErrorStats) -> dict[str, float]:
    return asdict(s)


def rpe_distance_step(path_length: float) -> float:
    """A round step that gives about 20 pairs along the path."""
    fitting = [d for d in RPE_DISTANCE_STEPS if d <= path_length / 20]
    return fitting[-1] if fitting else RPE_DISTANCE_STEPS[0]


def orientation_errors_deg(est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray) -> ErrorStats:
    """Each camera's rotation error after the one world rotation that best aligns the orientations (the chordal
    mean of gt R_i est R_i^T). The ATE's own rotation errors use the alignment fitted to the positions, which
    leaves a near-straight path's roll about its own axis free: 14 deg "errors" on a drive whose every step is
    right to 0.01 deg."""
    from scipy.spatial.transform import Rotation

    R_est, R_gt = est_world_from_cam[:, :3, :3], gt_world_from_cam[:, :3, :3]
    offsets = Rotation.from_matrix(R_gt @ np.transpose(R_est, (0, 2, 1)))
    residual = offsets.mean().inv() * offsets
    return ErrorStats.of(np.degrees(residual.magnitude()))


KITTI_MIN_PATH_M = 100.0  # KITTI's drift is per 100 m over segments of 100-800 m: shorter paths give noise, not drift


def trajectory_metrics(pair: PairedTrajectory, metric: bool, gt_metric: bool = False) -> tuple[dict[str, Any], ATE]:
    est, gt = pair.est_world_from_cam, pair.gt_world_from_cam
    if len(est) < 3:
        raise ReconError(f"only {len(est)} poses to compare; need at least 3")
    ate = absolute_trajectory_error(est, gt, with_scale=not metric)
    s = ate.gt_from_est.s
    rpe_f = relative_pose_error(est, gt, 1, "frames", scale=s)
    step = rpe_distance_step(ate.length)
    rpe_d = relative_pose_error(est, gt, step, "m", scale=s)
    out: dict[str, Any] = {
        "frames": len(est),
        "alignment": "se3" if metric else "sim3",
        "scale": s,
        "gt_metric": gt_metric,  # errors are in metres (else in the ground truth's own units)
        "path_length": ate.length,
        "ate": {
            "rmse": ate.rmse,
            "mean": ate.mean,
            "median": ate.median,
            "max": ate.max,
            "std": ate.std,
            "rmse_percent_of_path": ate.rmse_percent_of_length,
            "rotation_deg": _stats(ate.rotation_deg),
        },
        "rpe_frame": {
            "delta": 1,
            "unit": "frames",
            "translation": _stats(rpe_f.translation),
            "rotation_deg": _stats(rpe_f.rotation_deg),
        },
        "rpe_distance": {
            "delta": step,
            "unit": "m",
            "translation": _stats(rpe_d.translation),
            "rotation_deg": _stats(rpe_d.rotation_deg),
        },
    }
    out["ate"]["rotation_deg_orientation_aligned"] = _stats(orientation_errors_deg(est, gt))
    if gt_metric and ate.length >= KITTI_MIN_PATH_M:
        drift = kitti_drift(est, gt, scale=s)
        out["kitti_drift"] = {
            "translation_percent": drift.t_err_percent,
            "rotation_deg_per_100m": drift.r_err_deg_per_100m,
            "lengths": list(drift.lengths),
            "lengths_source": drift.lengths_source,
            "segments": drift.num_segments,
        }
    else:
        out["kitti_drift"] = {
            "skipped": f"the path is {ate.length:.3g} {'m' if gt_metric else 'ground-truth units (not known to be metres)'}; "
            f"KITTI drift needs a metric path of at least {KITTI_MIN_PATH_M:g} m"
        }
    return out, ate
