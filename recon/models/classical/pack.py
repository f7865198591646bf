"""The classical model's outputs: a window's dense depth and sparse solve packed into the WindowPrediction
contract, with the keypoint observations the joins use."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recon.geometry import invert_rigid
from recon.models.classical.sparse import SparseSolution
from recon.models.classical.tracks import Tracks
from recon.types import Frame, Keypoints, ResizeMap, WindowPrediction


def sparse_keypoints(sparse: SparseSolution, tracks: Tracks) -> Keypoints | None:
    """Every observation of a triangulated track in a registered frame, with its depth there."""
    good = np.isfinite(sparse.points_w[:, 0])
    if not good.any():
        return None
    t_idx, s_idx = np.nonzero(tracks.visible[good] & sparse.registered[None, :])
    X = sparse.points_w[good][t_idx]
    T = sparse.cam_from_world[s_idx]
    z = np.einsum("nj,nj->n", T[:, 2, :3], X) + T[:, 2, 3]
    ok = z > 0
    return Keypoints(
        s_idx[ok].astype(np.int64),
        tracks.uv_px[good][t_idx[ok], s_idx[ok]].astype(np.float32),
        z[ok].astype(np.float32),
    )


def pack_window(
    frames: Sequence[Frame], depth: np.ndarray, conf: np.ndarray, sparse: SparseSolution, resize: ResizeMap
) -> WindowPrediction:
    """Depth [S,H,W] and confidence at the working resolution + the sparse solution -> the WindowPrediction
    (points from depth along each pixel's ray, placed by the frame's pose)."""
    S, H, W = depth.shape
    K = sparse.K
    # The ray of pixel (u, v) is (x(u), y(v), 1): its world direction is an outer sum, no matrix products.
    ray_x = ((np.arange(W) - K[0, 2]) / K[0, 0]).astype(np.float32)[None, :]
    ray_y = ((np.arange(H) - K[1, 2]) / K[1, 1]).astype(np.float32)[:, None]
    world_from_cam = invert_rigid(sparse.cam_from_world).astype(np.float32)
    pts = np.empty((S, H, W, 3), np.float32)
    for s in range(S):
        R, t = world_from_cam[s, :3, :3], world_from_cam[s, :3, 3]
        for k in range(3):
            pts[s, ..., k] = depth[s] * (R[k, 0] * ray_x + R[k, 1] * ray_y + R[k, 2]) + t[k]
    return WindowPrediction(
        frame_indices=[f.index for f in frames],
        depth=torch.from_numpy(depth),
        depth_conf=torch.from_numpy(conf),
        points=torch.from_numpy(pts),
        points_conf=torch.from_numpy(conf.copy()),
        cam_from_world=torch.from_numpy(sparse.cam_from_world.astype(np.float32)),
        K=torch.from_numpy(np.repeat(K[None], S, 0).astype(np.float32)),
        resize=resize,
        metric=False,
        flags=list(sparse.flags),
    )
