"""What depth and point-map evaluation read: the run's kept depth frames (OUT/depth/) beside the ground-truth
depth and poses of the same frames, read again from the source summary.json records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import ReconError
from recon.summary import RunSummary


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
    run_dir: Path, summary: RunSummary, max_samples: int, keep_images: int = 3
) -> GeometryInputs | str:
    """-> the inputs, or a one-line reason why geometry cannot be evaluated."""
    from recon.depth_samples import depth_sample_paths, read_depth_sample

    paths = depth_sample_paths(run_dir)
    if not paths:
        return "the run kept no depth (run with --depth-every N)"
    if len(paths) > max_samples:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, max_samples).round()]
    samples = {s.frame_index: s for s in map(read_depth_sample, paths)}
    spec = summary.input or {}
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
