"""Dense depth for every frame of a window: DIS optical flow to partner frames, triangulated along the
known poses, with a confidence from the expected relative depth error, forward–backward consistency,
local texture and agreement between partners."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from recon.models.classical.memo import SharedMemo, image_key

_In = TypeVar("_In")
_Out = TypeVar("_Out")


@dataclass(frozen=True)
class DenseConfig:
    dis_preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    target_parallax: float = 0.05  # partner baseline / scene depth sought (≈ 3°)
    flow_sigma_px: float = 0.35  # flow noise assumed for the error model
    rel_err_scale: float = 0.03  # relative depth error at which confidence halves
    fb_sigma_px: float = 1.0
    texture_std: float = 3.0  # local grey-level std (7x7) at which texture confidence is ~0.63
    agree_log: float = 0.05  # partners agreeing within ~5 % keep full confidence
    threads: int = 2
    # The pre-warp's rotation (axis-angle, each component) snapped to this grid: it only has to bring the views
    # within DIS's reach (the residual <= 0.25 deg is ~2 px at a 640 px focal length), and a pair's flow then
    # depends on the two images alone, so consecutive windows share it (flow_cache).
    prewarp_step_deg: float = 0.5


@dataclass
class DepthResult:
    depth: np.ndarray  # [S,H,W] float32, z-depth in window units
    conf: np.ndarray  # [S,H,W] float32 in [0,1]


def choose_partners(cam_from_world: np.ndarray, scene_depth: np.ndarray, cfg: DenseConfig) -> list[list[int]]:
    """Per frame, up to one partner before and one after, with baseline/depth nearest the target."""
    S = cam_from_world.shape[0]
    centres = -(cam_from_world[:, :3, :3] * cam_from_world[:, :3, 3, None]).sum(1)  # -R^T t
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


PairFlows = tuple[np.ndarray, np.ndarray]  # flow i -> warped j and back, [H,W,2] float32 each


def flow_cache(max_bytes: int) -> SharedMemo[PairFlows]:
    """Flows of frame pairs, shared by the windows of one model (the next window needs only the last window's,
    and two windows in flight add theirs): consecutive windows share their overlap frames and with them most of
    those frames' partner flows (7 of a drive window's 19 pairs). Keyed by both images' contents and the snapped
    pre-warp, of which a flow is a pure function."""
    return SharedMemo(max_items=48, max_bytes=max_bytes, size=lambda flows: sum(f.nbytes for f in flows))


def prewarp(j_from_i: np.ndarray, K: np.ndarray, cfg: DenseConfig) -> tuple[np.ndarray, tuple]:
    """The infinite homography K R K^-1 of the pair's rotation, with the rotation snapped to the config's grid
    and K to whole pixels -> (homography [3,3], the grid cell: the flow's key part)."""
    step = np.radians(cfg.prewarp_step_deg)
    cell = tuple(int(c) for c in np.round(Rotation.from_matrix(j_from_i[:3, :3]).as_rotvec() / step))
    k_px = tuple(int(round(float(K[r, c]))) for r, c in ((0, 0), (1, 1), (0, 2), (1, 2)))
    K_snap = np.array([[k_px[0], 0.0, k_px[2]], [0.0, k_px[1], k_px[3]], [0.0, 0.0, 1.0]])
    R = Rotation.from_rotvec(np.array(cell, float) * step).as_matrix()
    return K_snap @ R @ np.linalg.inv(K_snap), cell + k_px


def _warp(field: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    return cv2.remap(
        field, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan, np.nan)
    )


def pair_depths(
    gray_i: np.ndarray,
    gray_j: np.ndarray,
    j_from_i: np.ndarray,
    K: np.ndarray,
    cfg: DenseConfig,
    dis: cv2.DISOpticalFlow,
    both: bool,
    flows: SharedMemo[PairFlows] | None = None,
    keys: tuple[bytes, bytes] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Depth of frame i from partner j, and its confidence in [0,1], [H,W] each; with `both`, frame j's from i
    too, out of the same two flows (the partners of a window are mostly mutual: half the flow of computing
    each direction alone). The flows come from `flows` when an earlier window computed them (`keys`: the
    images' `image_key`s).

    Frame j is first warped into frame i by the infinite homography H = K R K^-1 (the rotation part of
    the known relative pose, snapped: `prewarp`), so the flow only has to find the parallax: DIS alone loses
    track of the large displacements a turning camera makes. A pixel x of i then matches H (x + flow) in j; a
    pixel p of j sits at y = H^-1 p in the warped frame and matches y + back(y) in i."""
    Hh, Ww = gray_i.shape
    h, cell = prewarp(j_from_i, K, cfg)

    def compute() -> PairFlows:
        warped_j = cv2.warpPerspective(
            gray_j, h, (Ww, Hh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )
        # OpenCV's stubs want a flow buffer; None asks DIS for a new one, as its documentation says.
        flow = dis.calc(gray_i, warped_j, None)  # type: ignore[call-overload]
        return flow, dis.calc(warped_j, gray_i, None)  # type: ignore[call-overload]

    flow, back = compute() if flows is None or keys is None else flows.get((*keys, cell), compute)
    u = np.arange(Ww, dtype=np.float32)[None, :]
    v = np.arange(Hh, dtype=np.float32)[:, None]

    yu, yv = u + flow[..., 0], v + flow[..., 1]
    returned = _warp(back, yu, yv)
    fb = np.hypot(flow[..., 0] + returned[..., 0], flow[..., 1] + returned[..., 1])
    fb[~np.isfinite(fb)] = np.inf  # no way back: no confidence
    u2, v2, w = _apply_homography(h, yu, yv)
    inside = _inside(u2, v2, Ww, Hh) & (w > 0)
    z, conf = triangulate_matches(u2, v2, fb, j_from_i, K, cfg)
    conf[~inside] = 0.0
    if not both:
        return (z, conf), None

    yu, yv, w = _apply_homography(np.linalg.inv(h), np.broadcast_to(u, (Hh, Ww)), np.broadcast_to(v, (Hh, Ww)))
    b = _warp(back, yu, yv)
    qu, qv = yu + b[..., 0], yv + b[..., 1]
    forth = _warp(flow, qu, qv)
    fb = np.hypot(b[..., 0] + forth[..., 0], b[..., 1] + forth[..., 1])
    fb[~np.isfinite(fb)] = np.inf
    outside = ~(_inside(yu, yv, Ww, Hh) & _inside(qu, qv, Ww, Hh) & (w > 0))
    z_j, conf_j = triangulate_matches(qu, qv, fb, np.linalg.inv(j_from_i), K, cfg)
    z_j[outside], conf_j[outside] = 0.0, 0.0
    return (z, conf), (z_j, conf_j)


def _apply_homography(h: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u', v', w): pixel grids [H,W] through homography h, and the homogeneous w (> 0 in front)."""
    h32 = h.astype(np.float32)
    w = h32[2, 0] * u + h32[2, 1] * v + h32[2, 2]
    w = np.where(np.abs(w) < 1e-9, np.float32(1e-9), w)
    return (h32[0, 0] * u + h32[0, 1] * v + h32[0, 2]) / w, (h32[1, 0] * u + h32[1, 1] * v + h32[1, 2]) / w, w


def _inside(u: np.ndarray, v: np.ndarray, W: int, H: int) -> np.ndarray:
    return (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)


def triangulate_matches(
    u2: np.ndarray, v2: np.ndarray, fb: np.ndarray, j_from_i: np.ndarray, K: np.ndarray, cfg: DenseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Depth of every pixel of frame i from its match (u2, v2) in frame j, and a confidence in [0,1].

    A pixel at depth z maps to (a z + b) up to scale in frame j, with a = K R K^-1 [u,v,1] and b = K t;
    z is solved in least squares. Confidence comes from the expected relative depth error (match noise
    over the pixels moved per unit of relative depth) and the forward–backward error `fb`.

    Written in place where numpy would make a temporary: every [H,W] pass costs about as much as its
    arithmetic, and this runs twice per partner pair. The formulas are in the comments;
    tests/support/plain_dense.py writes them out, and the two agree to the bit."""
    H, W = u2.shape
    u = np.arange(W, dtype=np.float32)[None, :]
    v = np.arange(H, dtype=np.float32)[:, None]
    h = (K @ j_from_i[:3, :3] @ np.linalg.inv(K)).astype(np.float32)
    b = (K @ j_from_i[:3, 3]).astype(np.float32)
    ax, ay, az = (h[r, 0] * u + h[r, 1] * v for r in range(3))  # a = h [u,v,1], [H,W] each by broadcasting
    for a_r, r in ((ax, 0), (ay, 1), (az, 2)):
        a_r += h[r, 2]
    cu, cv_ = u2 * az, v2 * az
    cu -= ax  # cu = u2 az - ax
    cv_ -= ay
    eu, ev = u2 * b[2], v2 * b[2]
    np.subtract(b[0], eu, out=eu)  # eu = b0 - u2 b2
    np.subtract(b[1], ev, out=ev)
    tmp = cv_ * ev
    z = cu * eu
    z += tmp
    norm2 = np.multiply(cu, cu, out=eu)
    norm2 += np.multiply(cv_, cv_, out=tmp)
    z /= np.maximum(norm2, 1e-12, out=norm2)  # z = (cu eu + cv ev) / max(cu² + cv², 1e-12)

    # Pixels moved in frame j per unit of relative depth change: the observability of depth here.
    den = az * z
    den += b[2]
    den[np.abs(den) < 1e-9] = 1e-9  # den = az z + b2, kept off zero
    inv_den2 = np.divide(z, np.multiply(den, den, out=ev), out=ev)  # z / den²
    su = np.multiply(ax, b[2], out=cu)
    su -= np.multiply(az, b[0], out=tmp)
    su *= inv_den2  # (ax b2 - az b0) z / den²
    sv = np.multiply(ay, b[2], out=cv_)
    sv -= np.multiply(az, b[1], out=tmp)
    sv *= inv_den2
    sensitivity = np.hypot(su, sv, out=su)
    # Distance of the observed match from the point the triangulated depth predicts (off-epipolar error).
    du, dv = np.multiply(ax, z, out=ax), np.multiply(ay, z, out=ay)
    du += b[0]
    du /= den
    du -= u2  # (ax z + b0) / den - u2
    dv += b[1]
    dv /= den
    dv -= v2
    epi = np.hypot(du, dv, out=du)

    rel_err = np.add(cfg.flow_sigma_px, fb, out=dv)
    rel_err += epi
    rel_err /= np.maximum(sensitivity, 1e-9, out=sensitivity)  # (flow sigma + fb + epi) / sensitivity
    conf = np.divide(fb, cfg.fb_sigma_px, out=tmp)
    np.square(conf, out=conf)
    np.exp(np.negative(conf, out=conf), out=conf)  # exp(-(fb / fb sigma)²)
    rel_err /= cfg.rel_err_scale
    np.square(rel_err, out=rel_err)
    rel_err += 1.0
    conf /= rel_err  # ... / (1 + (rel_err / rel_err_scale)²)
    invalid = ~(np.isfinite(z) & (z > 0) & (den > 0))
    z[invalid] = 0.0
    conf[invalid] = 0.0
    return z, conf


def texture_confidence(gray: np.ndarray, cfg: DenseConfig) -> np.ndarray:
    """Flow in flat regions is interpolated, not measured: scale confidence by local texture."""
    g = gray.astype(np.float32)
    mean = cv2.boxFilter(g, -1, (7, 7))
    var = np.maximum(cv2.boxFilter(g * g, -1, (7, 7)) - mean * mean, 0.0)
    return (1.0 - np.exp(-var / cfg.texture_std**2)).astype(np.float32)


class FlowWorkers:
    """The threads that compute pair flows, each with its own DIS object (DIS keeps per-call state), shared by
    every window of a model: two windows in flight share `threads` threads (the cores) instead of starting two
    each, and no thread or DIS object is made per window. cv2 and most numpy kernels release the GIL."""

    def __init__(self, threads: int, dis_preset: int) -> None:
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="recon-flow")
        self._local = threading.local()
        self._preset = dis_preset

    def dis(self) -> cv2.DISOpticalFlow:
        if not hasattr(self._local, "dis"):
            self._local.dis = cv2.DISOpticalFlow.create(self._preset)
        return self._local.dis

    def map(self, fn: Callable[[_In], _Out], items: list[_In]) -> list[_Out]:
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def dense_depth(
    gray: list[np.ndarray],
    cam_from_world: np.ndarray,
    K: np.ndarray,
    scene_depth: np.ndarray,
    cfg: DenseConfig = DenseConfig(),
    flows: SharedMemo[PairFlows] | None = None,
    workers: FlowWorkers | None = None,
) -> DepthResult:
    """gray: S uint8 images; poses [S,4,4]; scene_depth [S] a typical depth per frame (from sparse points);
    `flows`: pair flows shared with other windows; `workers`: the model's flow threads (default: ones for this call)."""
    if workers is None:
        own = FlowWorkers(cfg.threads, cfg.dis_preset)
        try:
            return dense_depth(gray, cam_from_world, K, scene_depth, cfg, flows, own)
        finally:
            own.close()
    S = len(gray)
    keys = [image_key(g) for g in gray] if flows is not None else None
    H, W = gray[0].shape
    partners = choose_partners(cam_from_world, scene_depth, cfg)
    wanted = {(i, j) for i, ps in enumerate(partners) for j in ps}
    # One flow pair per partnership: (i, j) computes j's depth from i too when j wants i.
    tasks = sorted((i, j) for i, j in wanted if i < j or (j, i) not in wanted)

    def work(task: tuple[int, int]) -> list[tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]]]:
        i, j = task
        for_i, for_j = pair_depths(
            gray[i],
            gray[j],
            cam_from_world[j] @ np.linalg.inv(cam_from_world[i]),
            K,
            cfg,
            workers.dis(),
            both=(j, i) in wanted,
            flows=flows,
            keys=None if keys is None else (keys[i], keys[j]),
        )
        return [((i, j), for_i)] + ([((j, i), for_j)] if for_j is not None else [])

    results = dict(r for pair in workers.map(work, tasks) for r in pair)

    depth = np.zeros((S, H, W), np.float32)
    conf = np.zeros((S, H, W), np.float32)
    for i in range(S):
        zs = [results[(i, j)][0] for j in partners[i]]
        cs = [results[(i, j)][1] for j in partners[i]]
        if not zs:
            continue
        if len(zs) == 2:
            (z1, z2), (c1, c2) = zs, cs
            agree = np.exp(-(((np.log(np.maximum(z1, 1e-9)) - np.log(np.maximum(z2, 1e-9))) / cfg.agree_log) ** 2))
            both = (c1 > 0) & (c2 > 0)
            wsum = np.maximum(c1 + c2, 1e-12)
            z = np.where(both, (c1 * z1 + c2 * z2) / wsum, np.where(c1 >= c2, z1, z2))
            # Two partners that agree corroborate each other; ones that disagree expose an occlusion or a bad match.
            c = np.where(
                both, np.maximum(c1, c2) * agree + (1 - agree) * 0.25 * np.minimum(c1, c2), np.maximum(c1, c2) * 0.5
            )
        else:
            z, c = zs[0], cs[0] * 0.5
        c *= texture_confidence(gray[i], cfg)
        good = (z > 0) & np.isfinite(z)
        fallback = float(np.median(z[good & (c > 0.1)])) if np.any(good & (c > 0.1)) else float(scene_depth[i])
        depth[i] = np.where(good, z, fallback)
        conf[i] = np.where(good, c, 0.0)
    return DepthResult(depth=depth, conf=np.clip(conf, 0.0, 1.0))
