"""The files of one run as the driver writes them (ARCHITECTURE §1): the trajectory (and the source's ground
truth beside it), depth samples, map.ply and summary.json, from what the core hands back. Every file is
written atomically (recon/outputs.py), so a run killed at any moment leaves a consistent folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from recon.align import AlignedWindow
from recon.core import FramePose
from recon.depth_samples import DepthSample, write_depth_sample
from recon.fusion import VoxelMap
from recon.geometry import invert_rigid
from recon.kernels.fusion_voxels import KEY_OFFSET
from recon.outputs import OutputConfig, TrajectoryWriter, atomic_write_json, remove_run_files
from recon.summary import SUMMARY_FILE, RunSummary
from recon.types import WindowPrediction

log = logging.getLogger(__name__)


class RunFiles:
    """The open files of a run in `out_dir` (prepared by the caller). `ground_truth`: the source has ground
    truth, written for the same frames so any tool (ours, evo) can compare the two files. `run_config`: the
    command's recon.config.RunConfig, written to OUT/config.yaml so the run can be repeated."""

    def __init__(self, out_dir: Path, config: OutputConfig, ground_truth: bool, run_config: Any = None) -> None:
        self.out_dir, self.config = out_dir, config
        remove_run_files(out_dir)  # the folder holds this run's files only: no earlier map, metrics or depth
        if run_config is not None:
            from recon.config import CONFIG_FILE, write_config

            write_config(out_dir / CONFIG_FILE, run_config)
        self.trajectory = TrajectoryWriter(out_dir, frames_file=True)
        self._gt = TrajectoryWriter(out_dir, "ground_truth") if ground_truth else None

    @property
    def frames_written(self) -> int:
        return self.trajectory.count

    def append(self, final: list[tuple[int, FramePose]], aligned: AlignedWindow, pred: WindowPrediction) -> None:
        """Append the poses that became final (positions in `aligned`), their ground truth and depth samples."""
        if not final:
            return
        poses = [p for _, p in final]
        self._write_depth_samples(aligned, pred, [j for j, _ in final], first_ordinal=self.trajectory.count)
        stamps = [p.timestamp_s for p in poses]
        self.trajectory.append(stamps, np.stack([p.world_from_cam for p in poses]), [p.index for p in poses])
        if self._gt is not None and all(p.gt_cam_from_world is not None for p in poses):
            self._gt.append(stamps, invert_rigid(np.stack([p.gt_cam_from_world for p in poses])))  # type: ignore[misc]

    def rewrite(self, trajectory: list[FramePose]) -> None:
        """Every earlier final pose, corrected (a loop closure moved them)."""
        self.trajectory.rewrite(
            [p.timestamp_s for p in trajectory],
            np.stack([p.world_from_cam for p in trajectory]),
            [p.index for p in trajectory],
        )

    def write_map(self, voxel_map: VoxelMap | None, final: bool = False) -> int | None:
        """The map as it is (at the end of a finished run: without statistical outliers). -> points written,
        None when there is no map yet."""
        if voxel_map is None or not len(voxel_map):
            return None
        return voxel_map.export_ply(
            self.out_dir / "map.ply", outlier_removal=final and self.config.final_outlier_removal
        )

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write_json(self.out_dir / SUMMARY_FILE, summary.to_json())

    def close(self) -> None:
        self.trajectory.close()
        if self._gt is not None:
            self._gt.close()

    def _write_depth_samples(
        self, aligned: AlignedWindow, pred: WindowPrediction, positions: list[int], first_ordinal: int
    ) -> None:
        every = self.config.depth_every
        if every <= 0:
            return
        for ordinal, j in enumerate(positions, start=first_ordinal):
            if ordinal % every == 0:
                sample = DepthSample(
                    aligned.frame_indices[j],
                    aligned.depth[j].cpu().numpy(),
                    aligned.conf[j].cpu().numpy(),
                    pred.K[j].double().cpu().numpy(),
                    aligned.cam_from_world[j].double().cpu().numpy(),
                    pred.resize,
                )
                write_depth_sample(self.out_dir, sample)


def map_warnings(voxel_map: VoxelMap | None, ply: Path) -> list[str]:
    """Why map.ply is missing, or what it leaves out: a run that ends without a map says so."""
    lost = voxel_map.points_out_of_range if voxel_map is not None else 0
    grid = (
        f"outside the voxel grid at voxel {voxel_map.voxel_m:g} ({KEY_OFFSET:,} voxels each way from the origin); pass a larger --voxel"
        if voxel_map is not None
        else ""
    )
    if ply.is_file():
        return [f"map.ply leaves out {lost:,} points {grid}"] if lost else []
    if lost:
        return [f"no map.ply: every point fell {grid}"]
    return [
        "no map.ply: no window was registered"
        if voxel_map is None
        else "no map.ply: no point was confident enough to fuse"
    ]
