"""The entry points of a join (ARCHITECTURE §4): fit a window to the previous one (`fit_window`), place it in
the world (`place_window`), or both (`align_window`); a causal model's step needs no fit (`anchored_fit`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from recon.align.contracts import AlignConfig, AlignedWindow, AlignmentReport, WindowFit, registered_frames
from recon.align.join import fit_join, overlap_pose_error, pose_fallback_sim3, select_correspondences
from recon.align.layer_scale import WindowLayers, layer_scale_alignment, num_layers_per_frame, window_layers
from recon.errors import ContractError
from recon.geometry import invert_rigid
from recon.types import Sim3, WindowPrediction

log = logging.getLogger(__name__)


def align_window(
    prev: AlignedWindow | None, cur: WindowPrediction, overlap: int, config: AlignConfig = AlignConfig()
) -> AlignedWindow:
    """Map `cur` into the world of `prev` (its first `overlap` frames are `prev`'s last ones); with
    `prev` None, `cur` defines the world. Never NaN: a degenerate overlap takes the pose fallback."""
    return place_window(cur, fit_window(prev, cur, overlap, config))


def fit_window(
    prev: AlignedWindow | None,
    cur: WindowPrediction,
    overlap: int,
    config: AlignConfig = AlignConfig(),
    layers: WindowLayers | None = None,
) -> WindowFit:
    """The join of `cur` to `prev` (see `align_window`), without placing its points. `layers`: its
    window_layers when worked out beforehand."""
    t0 = time.perf_counter()
    if prev is not None:
        _check_overlap(prev, cur, overlap)
    layers = layers if layers is not None else window_layers(cur, config)
    labels = layers.labels if layers is not None else None
    num_layers = num_layers_per_frame(labels) if labels is not None else None  # [S]
    layer_scales = [torch.ones(n) for n in num_layers.tolist()] if num_layers is not None else None
    if prev is None:
        first = AlignmentReport("first", 1.0, time_ms=1e3 * (time.perf_counter() - t0))
        return WindowFit(Sim3.identity(), None, labels, layer_scales, first)
    dev = cur.depth.device
    warnings: list[str] = []
    corr = select_correspondences(prev, cur, overlap, config)
    join = fit_join(prev, cur, overlap, corr, config)
    sim, path = join.sim, join.path
    lsa: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    if join.warning is not None:
        message = f"window {cur.frame_indices[0]}..{cur.frame_indices[-1]}: {join.warning}"
        log.warning(message)
        warnings.append(message)

    scale_map = None
    n = int(corr.weights.shape[0])
    if (
        layers is not None
        and labels is not None
        and num_layers is not None
        and join.path == "joint"
        and n >= config.min_correspondences
    ):
        scene_depth = float(prev.depth[-overlap:].to(dev)[corr.frame, corr.v, corr.u].median())
        delta = config.huber_delta_rel * max(scene_depth, 1e-12)
        try:
            sim, scale_map, layer_scales, lsa = layer_scale_alignment(
                prev, cur, overlap, corr, sim, layers, num_layers, delta, config, warnings
            )
            path = "lsa"
            if not config.lsa_depth:
                scale_map = None
                layer_scales = [torch.ones_like(k) for k in layer_scales]
        except Exception as exc:
            message = f"layer-wise scale alignment failed ({type(exc).__name__}: {exc}); kept the joint fit"
            log.warning(message)
            warnings.append(message)
    if not _finite(sim, scale_map):  # cannot happen with finite inputs; never hand NaN downstream regardless
        message = "non-finite alignment; using the overlap camera poses"
        log.warning(message)
        warnings.append(message)
        sim, fallback = pose_fallback_sim3(prev, cur, overlap, config)
        path = "pose_fallback"
        scale_map, layer_scales = None, [torch.ones_like(s) for s in layer_scales] if layer_scales else None
    report = AlignmentReport(
        path,
        sim.s,
        tuple(warnings),
        time_ms=1e3 * (time.perf_counter() - t0),
        overlap=overlap,
        num_candidates=corr.num_candidates,
        num_correspondences=int(corr.weights.shape[0]),
        stride=corr.stride,
        join=join.info,
        noise=join.noise,
        lsa=lsa,
        fallback=fallback,
        overlap_pose_error=overlap_pose_error(prev, cur, sim, overlap),
    )
    return WindowFit(sim, scale_map, labels, layer_scales, report)


def anchored_fit(world_from_anchor: Sim3 | None = None) -> WindowFit:
    """A streaming model's prediction is in its anchor frame's coordinates: nothing to fit. The anchor is
    the world (None), or sits at `world_from_anchor` (a stream re-anchored mid-run)."""
    sim = Sim3.identity() if world_from_anchor is None else world_from_anchor
    return WindowFit(sim, None, None, None, AlignmentReport("anchored", sim.s))


def place_window(
    cur: WindowPrediction, fit: WindowFit, target_from_window: Sim3 | None = None, frames: slice = slice(None)
) -> AlignedWindow:
    """Frames `frames` of `cur` mapped by the layer scales and then by `target_from_window` (default:
    the fit's own Sim(3), i.e. into the previous window's frame). Poses and depth are mapped now; the
    points on demand (`AlignedWindow.world_points`). With no scale map and the identity the prediction's
    tensors are shared, not copied (read-only by contract)."""
    sim = fit.sim if target_from_window is None else target_from_window
    first, stop, _ = frames.indices(len(cur))
    dev = cur.depth.device
    depth = cur.depth[frames]
    scale_map = None if fit.scale_map is None else fit.scale_map[frames]
    identity = sim.s == 1.0 and bool((np.eye(3) == sim.R).all()) and not np.any(sim.t)
    window_from_cam = invert_rigid(cur.cam_from_world[frames].double().cpu().numpy())
    if identity and scale_map is None:
        cam_from_world = cur.cam_from_world[frames]
    else:
        cam_from_world = (
            torch.from_numpy(sim.apply_to_cam_from_world(cur.cam_from_world[frames].double().cpu().numpy()))
            .float()
            .to(dev)
        )
        depth = depth * sim.s
        if scale_map is not None:
            depth = depth.mul_(
                scale_map
            )  # k x the camera-frame point == scaling the window point about the camera centre
    return AlignedWindow(
        frame_indices=list(cur.frame_indices[frames]),
        cam_from_world=cam_from_world,
        depth=depth,
        conf=cur.points_conf[frames],
        world_from_window=sim,
        layer_labels=None if fit.labels is None else fit.labels[frames],
        layer_scales=None if fit.layer_scales is None else fit.layer_scales[frames],
        report=fit.report,
        registered=registered_frames(cur)[frames],
        keypoints=None if cur.keypoints is None else cur.keypoints.select_frames(first, stop, sim.s),
        points_window=cur.points[frames],
        scale_map=scale_map,
        centres_window=torch.from_numpy(window_from_cam[:, :3, 3]).float().to(dev),
    )


# -------------------------------------------------------------------------------------- pieces
def _check_overlap(prev: AlignedWindow, cur: WindowPrediction, overlap: int) -> None:
    if not 1 <= overlap <= min(len(prev), len(cur)):
        raise ContractError(
            f"align_window: overlap {overlap} must be in 1..{min(len(prev), len(cur))} (frames of both windows)"
        )
    if list(prev.frame_indices[-overlap:]) != list(cur.frame_indices[:overlap]):
        raise ContractError(
            f"align_window: the first {overlap} frames of the new window {cur.frame_indices[:overlap]} must be the last "
            f"{overlap} of the previous window {prev.frame_indices[-overlap:]}"
        )
    if tuple(prev.depth.shape[1:]) != tuple(cur.depth.shape[1:]):
        raise ContractError(
            f"align_window: windows have different resolutions {tuple(prev.depth.shape[1:])} vs {tuple(cur.depth.shape[1:])}; "
            "overlap frames must be predicted at the same size"
        )


def _finite(sim: Sim3, scale_map: torch.Tensor | None) -> bool:
    # A sum of finite values is finite (barring overflow, which the exact check then settles).
    return bool(np.isfinite(sim.matrix()).all()) and (
        scale_map is None or bool(torch.isfinite(scale_map.sum())) or bool(torch.isfinite(scale_map).all())
    )
