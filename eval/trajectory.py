"""Trajectory accuracy: absolute trajectory error after a Sim(3) (or SE(3)) Umeyama alignment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.kernels.umeyama import umeyama_sim3
from recon.types import Sim3


@dataclass(frozen=True)
class ATE:
    rmse: float
    mean: float
    median: float
    max: float
    length: float  # ground-truth path length, same units
    gt_from_est: Sim3

    @property
    def rmse_percent_of_length(self) -> float:
        return 100.0 * self.rmse / self.length if self.length > 0 else float("nan")


def absolute_trajectory_error(est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, with_scale: bool = True) -> ATE:
    """Camera centres of two trajectories of the same frames [N,4,4]: align est onto gt, then the
    per-frame position errors' statistics."""
    est_c = np.asarray(est_world_from_cam)[:, :3, 3]
    gt_c = np.asarray(gt_world_from_cam)[:, :3, 3]
    if len(est_c) != len(gt_c) or len(est_c) < 3:
        raise ValueError(f"need two trajectories of the same >= 3 frames, got {len(est_c)} and {len(gt_c)}")
    sim = umeyama_sim3(est_c, gt_c, with_scale=with_scale)
    err = np.linalg.norm(sim.apply(est_c) - gt_c, axis=1)
    length = float(np.sum(np.linalg.norm(np.diff(gt_c, axis=0), axis=1)))
    return ATE(float(np.sqrt(np.mean(err**2))), float(err.mean()), float(np.median(err)), float(err.max()), length, sim)
