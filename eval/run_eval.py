"""`recon eval OUT_DIR`: measure a finished (or interrupted) run against ground truth.

Ground truth comes from, in order: `--gt FILE` (KITTI poses matched to the run's frames through
OUT/frames.txt, or TUM matched by timestamp); else OUT/ground_truth.kitti, which the run wrote for the same
frames. Depth and point-map accuracy need ground-truth depth: the source recorded in summary.json is
reopened and the frames whose depth the run kept (OUT/depth/) are read back.

Prints a table, writes OUT/metrics.json and PNG plots (OUT/plots/)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from recon.eval.depth import ScaleMode
    from recon.eval.pointmap import IcpMethod

from recon.errors import ReconError
from recon.eval.depth import SCALE_MODES
from recon.eval.trajectory import (
    ATE,
    ErrorStats,
    absolute_trajectory_error,
    associate,
    kitti_drift,
    relative_pose_error,
)
from recon.outputs import PLOTS_DIR, atomic_write_json, run_lock
from recon.signals import signals_deferred

log = logging.getLogger(__name__)

RPE_DISTANCE_STEPS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="output directory of `recon run`")
    p.add_argument("--gt", help="ground-truth trajectory file (default: the run's ground_truth.kitti)")
    p.add_argument("--format", choices=["kitti", "tum"], help="format of --gt (default: from its first line)")
    p.add_argument(
        "--depth-align",
        choices=SCALE_MODES,
        default="sequence",
        help="scale the depth onto ground truth once per sequence (default), per frame, or not (metric runs)",
    )
    p.add_argument(
        "--max-depth", type=float, default=None, help="evaluate depth only up to this ground-truth depth (metres)"
    )
    p.add_argument(
        "--depth-samples",
        type=int,
        default=50,
        help="evaluate at most N of the run's kept depth frames, evenly spread (default 50)",
    )
    p.add_argument("--no-geometry", action="store_true", help="trajectory metrics only (skip depth and point map)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")


@dataclass(frozen=True)
class PairedTrajectory:
    est_world_from_cam: np.ndarray  # [N,4,4] run world
    gt_world_from_cam: np.ndarray  # [N,4,4] ground-truth world
    time_s: np.ndarray  # [N]
    label: str  # where the ground truth came from


# -- loading --------------------------------------------------------------------------------------------
def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ReconError(
            f"'{run_dir}' is not a recon output folder (no summary.json); pass the --out folder of `recon run`"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReconError(f"{path}: unreadable ({e}); the run may have been killed before its first window") from None


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


def pair_trajectories(
    run_dir: Path, summary: dict[str, Any], gt_path: Path | None, gt_format: str | None
) -> PairedTrajectory:
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


# -- trajectory -----------------------------------------------------------------------------------------
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


# -- geometry (depth and point map) --------------------------------------------------------------------
@dataclass
class GeometryInputs:
    """The kept depth frames beside the source's ground truth for the same frames."""

    frame_indices: list[int]
    pred_depth: list[np.ndarray]  # [H,W] at ground-truth resolution, run units, 0 = none
    pred_conf: list[np.ndarray]  # [H,W] the model's confidence for it
    gt_depth: list[np.ndarray]  # [H,W] metres, 0 = invalid
    est_cam_from_world: np.ndarray  # [F,4,4] run world
    gt_cam_from_world: np.ndarray  # [F,4,4] source world
    K: list[np.ndarray]  # [3,3] of the ground-truth pixels
    images: dict[int, np.ndarray]  # a few frames' images for the plots


def _to_source_pixels(depth_model: np.ndarray, resize: Any, hw: tuple[int, int]) -> np.ndarray:
    """Nearest model pixel for each source pixel; 0 where the model saw none (crop)."""
    import cv2

    H, W = hw
    u = np.arange(W, dtype=np.float32) * np.float32(resize.scale_xy[0]) + np.float32(resize.offset_xy[0])
    v = np.arange(H, dtype=np.float32) * np.float32(resize.scale_xy[1]) + np.float32(resize.offset_xy[1])
    map_u, map_v = np.broadcast_to(u, (H, W)), np.broadcast_to(v[:, None], (H, W))
    return cv2.remap(
        depth_model,
        np.ascontiguousarray(map_u),
        np.ascontiguousarray(map_v),
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def load_geometry_inputs(
    run_dir: Path, summary: dict[str, Any], max_samples: int, keep_images: int = 3
) -> GeometryInputs | str:
    """-> the inputs, or a one-line reason why geometry cannot be evaluated."""
    from recon.depth_samples import depth_sample_paths, read_depth_sample

    paths = depth_sample_paths(run_dir)
    if not paths:
        return "the run kept no depth (run with --depth-every N)"
    if len(paths) > max_samples:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, max_samples).round()]
    samples = {s.frame_index: s for s in map(read_depth_sample, paths)}
    spec = summary.get("input") or {}
    if not spec.get("source"):
        return "summary.json does not record the source"
    from recon.datasets import open_source

    options = {k: v for k, v in spec.items() if k not in ("source", "kind") and v is not None}
    try:
        source = open_source(spec["source"], kind=spec.get("kind"), **options)
    except ReconError as e:
        return f"cannot reopen the source for ground-truth depth ({e})"
    wanted = sorted(samples)
    image_frames = {wanted[int(i)] for i in np.linspace(0, len(wanted) - 1, min(keep_images, len(wanted))).round()}
    out = GeometryInputs([], [], [], [], np.zeros((0, 4, 4)), np.zeros((0, 4, 4)), [], {})
    est_poses, gt_poses = [], []
    for frame in source:
        if frame.index > wanted[-1]:
            break
        sample = samples.get(frame.index)
        if sample is None or frame.gt_depth_m is None or frame.gt_cam_from_world is None or frame.K is None:
            continue
        out.frame_indices.append(frame.index)
        out.pred_depth.append(_to_source_pixels(sample.depth, sample.resize, frame.hw))
        out.pred_conf.append(_to_source_pixels(sample.conf, sample.resize, frame.hw))
        out.gt_depth.append(frame.gt_depth_m)
        out.K.append(frame.K)
        est_poses.append(sample.cam_from_world)
        gt_poses.append(frame.gt_cam_from_world)
        if frame.index in image_frames:
            out.images[frame.index] = frame.image_rgb
    if len(out.frame_indices) == 0:
        return "the source has no ground-truth depth for the kept frames"
    out.est_cam_from_world, out.gt_cam_from_world = np.stack(est_poses), np.stack(gt_poses)
    return out


def depth_metrics(g: GeometryInputs, align: ScaleMode, max_depth: float | None) -> tuple[dict[str, Any], Any]:
    from recon.eval.depth import evaluate_depth

    # Scored where the run has depth; coverage says how much of the ground truth that is.
    masks = [p > 0 for p in g.pred_depth]
    ev = evaluate_depth(g.pred_depth, g.gt_depth, scale_mode=align, max_depth_m=max_depth, masks=masks)
    # The same on each frame's more confident half: what a user keeps when filtering by confidence.
    confident = [
        (p > 0) & (c >= np.median(c[p > 0])) if (p > 0).any() else p > 0 for p, c in zip(g.pred_depth, g.pred_conf)
    ]
    ev_conf = evaluate_depth(g.pred_depth, g.gt_depth, scale_mode=align, max_depth_m=max_depth, masks=confident)
    covered = sum(
        int(((gd > 0) & (pd > 0) & ((gd <= max_depth) if max_depth else True)).sum())
        for pd, gd in zip(g.pred_depth, g.gt_depth)
    )
    valid = sum(int(((gd > 0) & ((gd <= max_depth) if max_depth else True)).sum()) for gd in g.gt_depth)
    m = ev.mean
    return {
        "frames": ev.num_frames_evaluated,
        "scale_mode": align,
        "max_depth": max_depth,
        "abs_rel": m.abs_rel,
        "sq_rel": m.sq_rel,
        "rmse": m.rmse,
        "delta1": m.delta1,
        "delta2": m.delta2,
        "delta3": m.delta3,
        "coverage": covered / valid if valid else float("nan"),
        "pooled": asdict(ev.pooled),
        "confident_half": {"abs_rel": ev_conf.mean.abs_rel, "delta1": ev_conf.mean.delta1, "rmse": ev_conf.mean.rmse},
        "scales": [float(s) for s in ev.scales],
    }, ev


def pointmap_metrics(
    run_dir: Path, g: GeometryInputs, metric: bool, icp: IcpMethod = "point_to_point"
) -> dict[str, Any] | str:
    """Point-map metrics of the run's map.ply against the ground-truth depth of the sampled frames, in the
    ground truth's world: placed by the kept frames' poses, then refined by `icp` ("none": the poses alone,
    so runs with one trajectory and different maps are compared on their maps only)."""
    from recon.eval.pointmap import backproject, evaluate_pointmap
    from recon.geometry import invert_rigid
    from recon.kernels.umeyama import sim3_from_poses

    ply = run_dir / "map.ply"
    if not ply.is_file():
        return "the run wrote no map.ply"
    if len(g.frame_indices) < 3:
        return f"need >= 3 frames with ground-truth depth to place the map, have {len(g.frame_indices)}"
    from recon.fusion import VOXEL_PER_DEPTH, read_map_ply

    est_xyz = read_map_ply(ply)[0].astype(np.float64)
    gt_world_from_cam = invert_rigid(g.gt_cam_from_world)
    gt_xyz = np.concatenate([backproject(d, K, T, stride=2) for d, K, T in zip(g.gt_depth, g.K, gt_world_from_cam)])
    # The map is in run units and the run's world: the kept frames' poses place it in the ground truth's
    # world first (whole poses, so a straight drive leaves no roll free); ICP refines from there.
    init = sim3_from_poses(invert_rigid(g.est_cam_from_world), gt_world_from_cam, with_scale=not metric)
    median_depth = float(np.median(np.concatenate([d[d > 0] for d in g.gt_depth])))
    # The map's own default voxel, so neither cloud is judged below its resolution.
    r = evaluate_pointmap(
        est_xyz, gt_xyz, init, voxel_size=VOXEL_PER_DEPTH * median_depth, icp=icp, with_scale=not metric
    )
    return {k: v for k, v in asdict(r).items() if isinstance(v, (int, float, str))}


# -- report -------------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".4g") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_table(metrics: dict[str, Any]) -> str:
    t = metrics["trajectory"]
    unit = "m" if t.get("gt_metric") else "gt units"
    aligned = (
        "SE(3) (the run is metric)"
        if t["alignment"] == "se3"
        else f"Sim(3) Umeyama, scale {_f(t['scale'])} (the run has its own units)"
    )
    ate, rot = t["ate"], t["ate"]["rotation_deg_orientation_aligned"]
    rows = [
        ("poses compared", f"{t['frames']} (ground truth: {metrics['ground_truth']})"),
        ("alignment to ground truth", f"{aligned}; errors in {unit}; path {_f(t['path_length'], '.1f')} {unit}"),
        (
            "ATE RMSE / mean / median / max",
            f"{_f(ate['rmse'])} / {_f(ate['mean'])} / {_f(ate['median'])} / {_f(ate['max'])} {unit}"
            f"  ({_f(ate['rmse_percent_of_path'], '.2f')}% of path)",
        ),
        ("ATE rotation RMSE / max", f"{_f(rot['rmse'])} / {_f(rot['max'])} deg  (orientations aligned)"),
        (
            "RPE per frame: trans RMSE / rot RMSE",
            f"{_f(t['rpe_frame']['translation']['rmse'])} {unit} / {_f(t['rpe_frame']['rotation_deg']['rmse'])} deg",
        ),
        (
            f"RPE per {_f(t['rpe_distance']['delta'])} {unit} of path: trans / rot",
            f"{_f(t['rpe_distance']['translation']['rmse'])} {unit} / "
            f"{_f(t['rpe_distance']['rotation_deg']['rmse'])} deg",
        ),
    ]
    k = t["kitti_drift"]
    if "skipped" in k:
        rows.append(("KITTI drift", f"not reported: {k['skipped']}"))
    else:
        rows.append(
            (
                "KITTI drift: trans % / rot deg per 100 m",
                f"{_f(k['translation_percent'], '.2f')}% / {_f(k['rotation_deg_per_100m'], '.3f')}  "
                f"({k['segments']} segments, {k['lengths_source']} lengths)",
            )
        )
    d = metrics.get("depth")
    if isinstance(d, dict):
        rows.append(
            (
                f"depth ({d['frames']} frames, {d['scale_mode']} scale)",
                f"AbsRel {_f(d['abs_rel'], '.4f')}, δ<1.25 {_f(d['delta1'], '.3f')}, "
                f"RMSE {_f(d['rmse'], '.3f')}, coverage {_f(100 * d['coverage'], '.1f')}%",
            )
        )
        c = d["confident_half"]
        rows.append(
            (
                "depth, more confident half of pixels",
                f"AbsRel {_f(c['abs_rel'], '.4f')}, δ<1.25 {_f(c['delta1'], '.3f')}, RMSE {_f(c['rmse'], '.3f')}",
            )
        )
    else:
        rows.append(("depth", f"not evaluated: {metrics.get('depth_skipped', 'no ground-truth depth')}"))
    p = metrics.get("pointmap")
    if isinstance(p, dict):
        rows.append(
            (
                "point map: accuracy / completeness",
                f"mean {_f(p['accuracy_mean'])} / {_f(p['completeness_mean'])}, "
                f"median {_f(p['accuracy_median'])} / {_f(p['completeness_median'])}",
            )
        )
        rows.append(
            (
                "point map: precision / recall / F",
                f"{_f(p['precision'], '.3f')} / {_f(p['recall'], '.3f')} / {_f(p['fscore'], '.3f')} "
                f"within {_f(p['threshold'])}",
            )
        )
        rows.append(
            ("point map: Chamfer / normal consistency", f"{_f(p['chamfer'])} / {_f(p['normal_consistency'], '.3f')}")
        )
    else:
        rows.append(("point map", f"not evaluated: {metrics.get('pointmap_skipped', 'no ground-truth depth')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def window_marks(run_dir: Path, summary: dict[str, Any], t0_s: float) -> tuple[list[float], list[tuple[float, float]]]:
    """(times of the window joins, spans of the windows whose join fell back to the overlap poses), seconds from
    t0_s, for the windows summary.json's alignment log keeps (the latest ALIGNMENT_LOG_WINDOWS)."""
    from recon.trajectory_io import read_frames

    frames_txt = run_dir / "frames.txt"
    if not frames_txt.is_file():
        return [], []
    indices, stamps = read_frames(frames_txt)
    time_of = dict(zip(indices.tolist(), (stamps - t0_s).tolist()))
    joins, fallbacks = [], []
    for window in summary.get("alignment") or []:
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
    joins, fallbacks = window_marks(run_dir, read_summary(run_dir), float(pair.time_s[0]))
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


def evaluate_run(
    run_dir: Path,
    gt_path: Path | None = None,
    gt_format: str | None = None,
    depth_align: str = "sequence",
    max_depth: float | None = None,
    depth_samples: int = 50,
    geometry: bool = True,
    plots: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Everything `recon eval` computes; writes OUT/metrics.json (and plots). Returns the metrics."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    metric = bool((summary.get("scale") or {}).get("metric", False))
    pair = pair_trajectories(run_dir, summary, gt_path, gt_format)
    gt_metric = gt_path is None and bool(summary.get("ground_truth_metric", False))  # a --gt file's units are not known
    traj, ate = trajectory_metrics(pair, metric, gt_metric)
    metrics: dict[str, Any] = {
        "run_dir": str(run_dir),
        "status": summary.get("status"),
        "ground_truth": pair.label,
        "trajectory": traj,
    }
    g: GeometryInputs | None = None
    depth_ev = None
    if geometry:
        say("reading ground-truth depth ...")
        loaded = load_geometry_inputs(run_dir, summary, depth_samples)
        if isinstance(loaded, str):
            metrics["depth_skipped"] = metrics["pointmap_skipped"] = loaded
        else:
            g = loaded
            metrics["depth"], depth_ev = depth_metrics(
                g, "none" if metric and depth_align == "sequence" else cast("ScaleMode", depth_align), max_depth
            )
            say("point map: aligning to ground truth (ICP) ...")
            pm = pointmap_metrics(run_dir, g, metric)
            if isinstance(pm, str):
                metrics["pointmap_skipped"] = pm
            else:
                metrics["pointmap"] = pm
    if plots:
        unit = "m" if gt_metric else "gt units"
        metrics["plots"] = [str(p.relative_to(run_dir)) for p in write_plots(run_dir, pair, ate, g, depth_ev, unit)]
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def import_libraries() -> None:
    """The native libraries an evaluation imports where it needs them, imported now: a caller holds signals
    back meanwhile (recon.signals.signals_deferred), as one raised halfway through such an import can abort."""
    import cv2  # noqa: F401
    import open3d  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401


def eval_command(args: argparse.Namespace) -> int:
    if args.depth_samples < 1:
        raise ReconError(f"--depth-samples must be >= 1, got {args.depth_samples}")
    if args.max_depth is not None and not args.max_depth > 0:
        raise ReconError(f"--max-depth must be > 0, got {args.max_depth}")
    if args.format is not None and args.gt is None:
        raise ReconError("--format describes --gt FILE; pass --gt too")
    run_dir = Path(args.run_dir)
    read_summary(run_dir)  # a folder a run wrote, before anything is written into it
    with signals_deferred():
        import_libraries()
    # A run still writing there would change the trajectory under the evaluation, and two evaluations would
    # interleave metrics.json and the plots.
    with run_lock(run_dir, advice="evaluate it when the run has ended"):
        metrics = evaluate_run(
            run_dir,
            Path(args.gt) if args.gt else None,
            args.format,
            args.depth_align,
            args.max_depth,
            args.depth_samples,
            geometry=not args.no_geometry,
            plots=not args.no_plots,
            say=lambda m: print(f"recon eval: {m}", flush=True),
        )
    print(f"{run_dir}/ vs ground truth")
    print(format_table(metrics))
    print(f"  -> {run_dir}/metrics.json" + (f", {run_dir}/{PLOTS_DIR}/*.png" if not args.no_plots else ""))
    return 0
