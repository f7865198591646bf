"""The plots of one evaluated run (OUT/plots/): which figures, drawn from what (recon.eval.plots draws them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recon.eval.geometry_inputs import GeometryInputs
from recon.eval.pairing import PairedTrajectory
from recon.eval.trajectory import ATE
from recon.outputs import PLOTS_DIR
from recon.summary import RunSummary


def window_marks(run_dir: Path, summary: RunSummary, t0_s: float) -> tuple[list[float], list[tuple[float, float]]]:
    """(times of the window joins, spans of the windows whose join fell back to the overlap poses), seconds from
    t0_s, for the windows summary.json's alignment log keeps (the latest ALIGNMENT_LOG_WINDOWS)."""
    from recon.trajectory_io import read_frames

    frames_txt = run_dir / "frames.txt"
    if not frames_txt.is_file():
        return [], []
    indices, stamps = read_frames(frames_txt)
    time_of = dict(zip(indices.tolist(), (stamps - t0_s).tolist()))
    joins, fallbacks = [], []
    for window in summary.alignment:
        first, last = (window.get("frames") or [None, None])[:2]
        if first not in time_of or last not in time_of:
            continue
        if window.get("path") != "first":
            joins.append(time_of[first])
        if window.get("path") == "pose_fallback":
            fallbacks.append((time_of[first], time_of[last]))
    return joins, fallbacks


def write_plots(
    run_dir: Path,
    pair: PairedTrajectory,
    ate: ATE,
    geometry: GeometryInputs | None,
    depth_ev: Any,
    unit: str = "gt units",
) -> list[Path]:
    from recon.eval.depth import relative_error_map
    from recon.eval.plots import DepthPanel, plot_depth_samples, plot_error_over_time, plot_trajectory_top_view

    folder = run_dir / PLOTS_DIR
    folder.mkdir(exist_ok=True)
    est_in_gt = ate.gt_from_est.apply_to_world_from_cam(pair.est_world_from_cam)
    joins, fallbacks = window_marks(run_dir, RunSummary.read(run_dir), float(pair.time_s[0]))
    written = [
        plot_trajectory_top_view(
            est_in_gt[:, :3, 3],
            pair.gt_world_from_cam,
            folder / "trajectory_top.png",
            f"ATE RMSE {ate.rmse:.3g} {unit} ({ate.rmse_percent_of_length:.2f}% of path)",
            unit,
        ),
        plot_error_over_time(
            pair.time_s - pair.time_s[0],
            {"position error": ate.position_errors},
            folder / "ate_over_time.png",
            f"position error ({unit})",
            "absolute trajectory error after alignment",
            joins,
            fallbacks,
        ),
    ]
    if geometry is not None and depth_ev is not None and geometry.images:
        panels = []
        for k, idx in enumerate(geometry.frame_indices):
            if idx in geometry.images:
                s = float(depth_ev.scales[k]) if np.isfinite(depth_ev.scales[k]) else 1.0
                pred = geometry.pred_depth[k] * s
                rel = relative_error_map(
                    geometry.pred_depth[k], geometry.gt_depth[k], s, depth_ev.max_depth_m, geometry.pred_depth[k] > 0
                )
                panels.append(DepthPanel(idx, geometry.images[idx], pred, geometry.gt_depth[k], rel))
        written.append(plot_depth_samples(panels, folder / "depth_samples.png"))  # ground-truth depth is in metres
    return written
