"""Which estimated pose goes with which ground-truth pose: the run's trajectory beside its ground truth, from
`--gt FILE` (KITTI poses matched through OUT/frames.txt, TUM matched by timestamp) or else OUT/ground_truth.kitti,
which the run wrote for the same frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.errors import ReconError
from recon.eval.trajectory import associate


@dataclass(frozen=True)
class PairedTrajectory:
    est_world_from_cam: np.ndarray  # [N,4,4] run world
    gt_world_from_cam: np.ndarray  # [N,4,4] ground-truth world
    time_s: np.ndarray  # [N]
    label: str  # where the ground truth came from


def _gt_format(path: Path, given: str | None) -> str:
    if given is not None:
        return given
    from recon.trajectory_io import content_lines  # the readers' comment and blank-line rules

    lines = content_lines(path)
    if not lines:
        raise ReconError(f"{path}: no poses")
    count = len(lines[0][1].replace(",", " ").split())
    if count == 12:
        return "kitti"
    if count == 8:
        return "tum"
    raise ReconError(f"{path}:{lines[0][0]}: {count} numbers; KITTI lines have 12, TUM lines 8 (or pass --format)")


def pair_trajectories(run_dir: Path, gt_path: Path | None, gt_format: str | None) -> PairedTrajectory:
    from recon.trajectory_io import read_frames, read_kitti, read_tum

    if not (run_dir / "trajectory.tum").is_file():
        raise ReconError(f"'{run_dir}' has no trajectory.tum; was it written by `recon run`?")
    stamps, est = read_tum(run_dir / "trajectory.tum")
    if gt_path is None:
        own = run_dir / "ground_truth.kitti"
        if not own.is_file():
            raise ReconError(
                f"'{run_dir}' has no ground truth: its source had none; pass --gt FILE [--format kitti|tum]"
            )
        gt = read_kitti(own)
        n = min(len(gt), len(est))  # a killed run may have one file a window ahead of the other
        return PairedTrajectory(est[:n], gt[:n], stamps[:n], f"{own.name} (the source's ground truth)")
    if not gt_path.is_file():
        raise ReconError(f"--gt {gt_path}: no such file")
    if _gt_format(gt_path, gt_format) == "tum":
        gt_stamps, gt = read_tum(gt_path)
        pairs = associate(stamps, gt_stamps, max_diff_s=0.02)
        if len(pairs) < 3:
            raise ReconError(
                f"--gt {gt_path}: only {len(pairs)} of {len(stamps)} poses have a ground-truth timestamp within 20 ms"
            )
        return PairedTrajectory(
            est[pairs[:, 0]], gt[pairs[:, 1]], stamps[pairs[:, 0]], f"{gt_path} (TUM, matched by timestamp)"
        )
    gt = read_kitti(gt_path)
    frames_txt = run_dir / "frames.txt"
    if frames_txt.is_file():
        indices, _ = read_frames(frames_txt)
        rows = indices[: len(est)]  # the source's own frame numbers: a KITTI poses file has a line per image
    elif len(gt) == len(est):
        rows = np.arange(len(est))
    else:
        raise ReconError(
            f"--gt {gt_path}: {len(gt)} poses for {len(est)} estimated, and the run has no frames.txt to match them"
        )
    ok = rows < len(gt)
    if not ok.all():
        raise ReconError(
            f"--gt {gt_path}: has {len(gt)} poses but the run used frame {int(rows.max())}; is it the right sequence?"
        )
    return PairedTrajectory(est, gt[rows], stamps, f"{gt_path} (KITTI, matched by frame index)")
