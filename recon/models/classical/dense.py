"""Dense depth for every frame of a window: DIS optical flow to partner frames, triangulated along the
known poses, with a confidence from the expected relative depth error, forward–backward consistency,
local texture and agreement between partners."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DenseConfig:
    dis_preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    target_parallax: float = 0.06  # partner baseline / scene depth sought (≈ 3.4°)
    flow_sigma_px: float = 0.35  # flow noise assumed for the error model
    rel_err_scale: float = 0.03  # relative depth error at which confidence halves
    fb_sigma_px: float = 1.0
    texture_std: float = 3.0  # local grey-level std (7x7) at which texture confidence is ~0.63
    agree_log: float = 0.05  # partners agreeing within ~5 % keep full confidence
    threads: int = 2


@dataclass
class DepthResult:
    depth: np.ndarray  # [S,H,W] float32, z-depth in window units
    conf: np.ndarray  # [S,H,W] float32 in [0,1]


def choose_partners(cam_from_world: np.ndarray, scene_depth: np.ndarray, cfg: DenseConfig) -> list[list[int]]:
    """Per frame, up to one partner before and one after, with baseline/depth nearest the target."""
    S = cam_from_world.shape[0]
    centres = -np.einsum("sji,sj->si", cam_from_world[:, :3, :3], cam_from_world[:, :3, 3])
    out: list[list[int]] = []
    for i in range(S):
        picks = []
        for side in (range(i - 1, -1, -1), range(i + 1, S)):
            best, best_score = None, np.inf
            for j in side:
                ratio = np.linalg.norm(centres[j] - centres[i]) / max(scene_depth[i], 1e-9)
                score = abs(np.log(max(ratio, 1e-6) / cfg.target_parallax))
                if score < best_score:
                    best, best_score = j, score
            if best is not None:
                picks.append(best)
        out.append(picks)
    return out


def _flow(dis: cv2.DISOpticalFlow, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return dis.calc(a, b, None)


def compute_flows(gray: list[np.ndarray], pairs: set[tuple[int, int]], cfg: DenseConfig) -> dict[tuple[int, int], np.ndarray]:
    """Flow for each ordered pair; cv2 releases the GIL, so a small thread pool uses both cores."""
    ordered = sorted(pairs)
    # One DIS object per worker: the object holds per-call state.
    def work(chunk: list[tuple[int, int]]) -> list[np.ndarray]:
        dis = cv2.DISOpticalFlow_create(cfg.dis_preset)
        return [_flow(dis, gray[i], gray[j]) for i, j in chunk]

    n = max(1, min(cfg.threads, len(ordered)))
    chunks = [ordered[k::n] for k in range(n)]
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(work, chunks))
    flows: dict[tuple[int, int], np.ndarray] = {}
    for chunk, res in zip(chunks, results):
        flows.update(zip(chunk, res))
    return flows


def _warp(field: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    return cv2.remap(field, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)


def triangulate_flow(flow_ij: np.ndarray, flow_ji: np.ndarray, j_from_i: np.ndarray, K: np.ndarray, cfg: DenseConfig) -> tuple[np.ndarray, np.ndarray]:
    """Depth in frame i from its flow to frame j, and a confidence in [0,1]. [H,W] each."""
    H, W = flow_ij.shape[:2]
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    u2, v2 = u + flow_ij[..., 0], v + flow_ij[..., 1]
    K_inv = np.linalg.inv(K)
    d = np.stack([u, v, np.ones_like(u)], -1) @ K_inv.T.astype(np.float32)  # ray with z = 1
    a = d @ (K @ j_from_i[:3, :3]).T.astype(np.float32)  # [H,W,3]
    b = (K @ j_from_i[:3, 3]).astype(np.float32)  # [3]
    cu, cv_ = u2 * a[..., 2] - a[..., 0], v2 * a[..., 2] - a[..., 1]
    eu, ev = b[0] - u2 * b[2], b[1] - v2 * b[2]
    z = (cu * eu + cv_ * ev) / np.maximum(cu * cu + cv_ * cv_, 1e-12)

    # Pixels moved in frame j per unit of relative depth change: the observability of depth here.
    den = a[..., 2] * z + b[2]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    du = z * (a[..., 0] * b[2] - a[..., 2] * b[0]) / den**2
    dv = z * (a[..., 1] * b[2] - a[..., 2] * b[1]) / den**2
    sensitivity = np.hypot(du, dv)
    # Distance of the observed match from the point the triangulated depth predicts (off-epipolar error).
    pu, pv = (a[..., 0] * z + b[0]) / den, (a[..., 1] * z + b[1]) / den
    epi = np.hypot(pu - u2, pv - v2)

    back = np.stack([_warp(flow_ji[..., 0], u2, v2), _warp(flow_ji[..., 1], u2, v2)], -1)
    fb = np.linalg.norm(flow_ij + back, axis=-1)
    fb = np.where(np.isfinite(fb), fb, np.inf)

    noise = cfg.flow_sigma_px + fb + epi
    rel_err = noise / np.maximum(sensitivity, 1e-9)
    conf = 1.0 / (1.0 + (rel_err / cfg.rel_err_scale) ** 2)
    conf *= np.exp(-((fb / cfg.fb_sigma_px) ** 2))
    valid = np.isfinite(z) & (z > 0) & (den > 0)
    return np.where(valid, z, 0.0).astype(np.float32), np.where(valid, conf, 0.0).astype(np.float32)


def texture_confidence(gray: np.ndarray, cfg: DenseConfig) -> np.ndarray:
    """Flow in flat regions is interpolated, not measured: scale confidence by local texture."""
    g = gray.astype(np.float32)
    mean = cv2.boxFilter(g, -1, (7, 7))
    var = np.maximum(cv2.boxFilter(g * g, -1, (7, 7)) - mean * mean, 0.0)
    return (1.0 - np.exp(-var / cfg.texture_std**2)).astype(np.float32)


def dense_depth(gray: list[np.ndarray], cam_from_world: np.ndarray, K: np.ndarray, scene_depth: np.ndarray, cfg: DenseConfig = DenseConfig()) -> DepthResult:
    """gray: S uint8 images; poses [S,4,4]; scene_depth [S] a typical depth per frame (from sparse points)."""
    S = len(gray)
    H, W = gray[0].shape
    partners = choose_partners(cam_from_world, scene_depth, cfg)
    pairs = {(i, j) for i, ps in enumerate(partners) for j in ps}
    pairs |= {(j, i) for i, j in pairs}
    flows = compute_flows(gray, pairs, cfg)

    depth = np.zeros((S, H, W), np.float32)
    conf = np.zeros((S, H, W), np.float32)
    for i in range(S):
        zs, cs = [], []
        for j in partners[i]:
            j_from_i = cam_from_world[j] @ np.linalg.inv(cam_from_world[i])
            z, c = triangulate_flow(flows[(i, j)], flows[(j, i)], j_from_i, K, cfg)
            zs.append(z)
            cs.append(c)
        if not zs:
            continue
        if len(zs) == 2:
            (z1, z2), (c1, c2) = zs, cs
            agree = np.exp(-((np.log(np.maximum(z1, 1e-9)) - np.log(np.maximum(z2, 1e-9))) / cfg.agree_log) ** 2)
            both = (c1 > 0) & (c2 > 0)
            wsum = np.maximum(c1 + c2, 1e-12)
            z = np.where(both, (c1 * z1 + c2 * z2) / wsum, np.where(c1 >= c2, z1, z2))
            # Two partners that agree corroborate each other; ones that disagree expose an occlusion or a bad match.
            c = np.where(both, np.maximum(c1, c2) * agree + (1 - agree) * 0.25 * np.minimum(c1, c2), np.maximum(c1, c2) * 0.5)
        else:
            z, c = zs[0], cs[0] * 0.5
        c *= texture_confidence(gray[i], cfg)
        good = (z > 0) & np.isfinite(z)
        fallback = float(np.median(z[good & (c > 0.1)])) if np.any(good & (c > 0.1)) else float(scene_depth[i])
        depth[i] = np.where(good, z, fallback)
        conf[i] = np.where(good, c, 0.0)
    return DepthResult(depth=depth, conf=np.clip(conf, 0.0, 1.0))
