"""What a stored keyframe keeps (no image): its ORB keypoints and descriptors, their depth where the window's
depth is valid, confident and away from depth edges, its bag of words and a small depth thumbnail."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.places.contracts import Keyframe, PlaceConfig

DESC_BYTES = 32  # ORB: 256-bit descriptors


@dataclass
class Entry:
    """What a stored keyframe keeps: just what scoring and verification need (no image)."""

    keyframe_id: int
    window_id: int
    seq: int  # insertion number (positions shift on eviction, this does not)
    K: np.ndarray  # [3,3] float64
    window_from_cam: np.ndarray  # [4,4] float64
    uv: np.ndarray  # [N,2] float32 keypoint pixels
    z: np.ndarray  # [N] float32 z-depth in window units, 0 = none
    desc: np.ndarray  # [N,32] uint8
    thumb: np.ndarray  # [h,w] float16 confident depth / thumb_scale at every `thumb_step`-th pixel, 0 = none
    thumb_scale: float
    thumb_step: int
    node: np.ndarray | None = None  # [N] uint8 vocabulary level-1 node of each descriptor (guides matching)
    bow: tuple[np.ndarray, np.ndarray] | None = None
    redundancy: float = 0.0  # similarity to its successor in insertion order (eviction key)

    @property
    def nbytes(self) -> int:
        arrays = [self.K, self.window_from_cam, self.uv, self.z, self.desc, self.thumb, *(self.bow or ())]
        arrays += [] if self.node is None else [self.node]
        return int(sum(a.nbytes for a in arrays))

    def points(self, idx: np.ndarray) -> np.ndarray:
        """Camera-frame 3D points [n,3] of keypoints idx (window units)."""
        uv1 = np.column_stack([self.uv[idx].astype(np.float64), np.ones(len(idx))])
        return (uv1 @ np.linalg.inv(self.K).T) * self.z[idx, None].astype(np.float64)

    def thumb_points(self) -> np.ndarray:
        """Camera-frame 3D points [n,3] of the thumbnail's valid pixels (window units)."""
        v, u = np.nonzero(self.thumb)
        z = self.thumb[v, u].astype(np.float64) * self.thumb_scale
        uv1 = np.column_stack([u * self.thumb_step, v * self.thumb_step, np.ones(len(u))])
        return (uv1 @ np.linalg.inv(self.K).T) * z[:, None]

    def thumb_depth_at(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For camera-frame points [n,3]: their z and the thumbnail depth at their projection (0 where
        it falls outside, behind the camera or on an invalid thumbnail pixel)."""
        z = points[:, 2]
        front = z > 1e-9
        uv = (points[front] @ self.K.T)[:, :2] / z[front, None]
        col = np.rint(uv[:, 0] / self.thumb_step).astype(np.int64)
        row = np.rint(uv[:, 1] / self.thumb_step).astype(np.int64)
        h, w = self.thumb.shape
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        seen = np.zeros(len(z))
        idx = np.flatnonzero(front)[inside]
        seen[idx] = self.thumb[row[inside], col[inside]].astype(np.float64) * self.thumb_scale
        return z, seen


def confidence_floor(kf: Keyframe, cfg: PlaceConfig) -> float | None:
    """The keyframe's confidence quantile over valid depth (None: no valid depth)."""
    depth, conf = np.asarray(kf.depth), np.asarray(kf.conf)
    valid_conf = conf[::4, ::4][depth[::4, ::4] > 0]  # a subsample is plenty for a quantile
    return float(np.quantile(valid_conf, cfg.conf_quantile)) if len(valid_conf) else None


def thumbnail(kf: Keyframe, conf_min: float | None, width: int) -> tuple[np.ndarray, float, int]:
    """Every step-th pixel's confident depth, divided by its median so float16 holds any window units."""
    step = max(1, int(np.ceil(kf.depth.shape[1] / width)))
    d = np.asarray(kf.depth, dtype=np.float32)[::step, ::step]
    c = np.asarray(kf.conf, dtype=np.float32)[::step, ::step]
    ok = (d > 0) & np.isfinite(d) & (conf_min is not None) & (c >= (conf_min or 0.0))
    scale = float(np.median(d[ok])) if ok.any() else 1.0
    return np.where(ok, d / scale, 0.0).astype(np.float16), scale, step


def keypoint_depth(kf: Keyframe, uv: np.ndarray, conf_min: float | None, cfg: PlaceConfig) -> np.ndarray:
    """z at each keypoint, 0 where invalid, not confident (below the keyframe's conf quantile over valid
    depth) or on a depth edge (ORB corners like silhouettes, where the depth may be either side's)."""
    depth = np.asarray(kf.depth, dtype=np.float32)
    conf = np.asarray(kf.conf, dtype=np.float32)
    H, W = depth.shape
    if conf_min is None or len(uv) == 0:
        return np.zeros(len(uv), np.float32)
    ui = np.clip(np.rint(uv[:, 0]).astype(np.int64), 1, W - 2)
    vi = np.clip(np.rint(uv[:, 1]).astype(np.int64), 1, H - 2)
    off = np.arange(-1, 2)
    patch = depth[vi[:, None, None] + off[None, :, None], ui[:, None, None] + off[None, None, :]].reshape(len(uv), 9)
    lo, hi = patch.min(axis=1), patch.max(axis=1)
    ok = (lo > 0) & (hi <= cfg.edge_ratio * lo) & (conf[vi, ui] >= conf_min) & np.isfinite(hi)
    return np.where(ok, depth[vi, ui], 0.0).astype(np.float32)
