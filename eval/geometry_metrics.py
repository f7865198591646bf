"""The depth and point-map sections of metrics.json, from the geometry inputs (recon.eval.geometry_inputs)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.eval.geometry_inputs import GeometryInputs

if TYPE_CHECKING:
    from recon.eval.depth import ScaleMode
    from recon.eval.pointmap import IcpMethod


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
    from recon.pose_fit import sim3_from_poses

    ply = run_dir / "map.ply"
    if not ply.is_file():
        return "the run wrote no map.ply"
    if len(g.frame_indices) < 3:
        return f"need >= 3 frames with ground-truth depth to place the map, have {len(g.frame_indices)}"
    from recon.fusion import VOXEL_PER_DEPTH
    from recon.map_ply import read_map_ply

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
