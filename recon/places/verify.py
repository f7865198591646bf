"""Geometric verification of a place candidate (see recon.places): mutual ORB matches, an essential matrix,
a RANSAC Sim(3) between the two views' 3D points, coverage, and a dense check of depth thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon.geometry import invert_rigid, rotation_distance_deg
from recon.places.contracts import LoopMatch, PlaceConfig
from recon.places.entry import Entry
from recon.pose_fit import umeyama_sim3
from recon.types import Sim3


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    reason: str
    match: LoopMatch | None = None


def _mutual_matches(dq: np.ndarray, dm: np.ndarray, ratio: float) -> np.ndarray:
    """[n,2] index pairs (query, match) passing Lowe's ratio test and mutual nearest neighbours."""
    if len(dq) < 2 or len(dm) < 2:
        return np.zeros((0, 2), np.int64)
    bf = cv2.BFMatcher(cv2.NORM_HAMMING)
    fwd = bf.knnMatch(dq, dm, k=2)
    back = {m.queryIdx: m.trainIdx for m in bf.match(dm, dq)}
    pairs = [
        (a.queryIdx, a.trainIdx)
        for a, b in fwd
        if a.distance < ratio * b.distance and back.get(a.trainIdx) == a.queryIdx
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def keyframe_matches(q: Entry, m: Entry, ratio: float) -> np.ndarray:
    """Descriptor matches; with a vocabulary only within the same level-1 node (ORB-SLAM's search by BoW):
    ~k1 times less work, and descriptors in different nodes rarely match anyway."""
    if q.node is None or m.node is None:
        return _mutual_matches(q.desc, m.desc, ratio)
    out = []
    for j in np.intersect1d(q.node, m.node):
        iq, im = np.flatnonzero(q.node == j), np.flatnonzero(m.node == j)
        pairs = _mutual_matches(q.desc[iq], m.desc[im], ratio)
        out.append(np.column_stack([iq[pairs[:, 0]], im[pairs[:, 1]]]))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def _normalised(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    return ((uv.astype(np.float64) - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])).reshape(-1, 1, 2)


def _essential(
    q: Entry, m: Entry, pairs: np.ndarray, cfg: PlaceConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Robust essential matrix on normalised coordinates (USAC: plain RANSAC costs ~50 ms on the outlier-rich
    matches of a wrong place, USAC ~5 ms). Returns (inlier mask over pairs, R, t) with
    x_m = R x_q + t (t unit length), i.e. cam_m_from_cam_q up to scale."""
    xq, xm = _normalised(q.uv[pairs[:, 0]], q.K), _normalised(m.uv[pairs[:, 1]], m.K)
    f = 0.5 * (q.K[0, 0] + m.K[0, 0])
    E, mask = cv2.findEssentialMat(
        xq,
        xm,
        np.eye(3),
        method=cv2.USAC_DEFAULT,
        prob=0.999,
        threshold=cfg.essential_threshold_px / f,
        maxIters=cfg.essential_max_iters,
    )
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    inl = mask.ravel() > 0
    _, R, t, _ = cv2.recoverPose(E, xq[inl], xm[inl], np.eye(3))
    return inl, R, t.ravel()


def _umeyama_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form Sim(3) for B minimal samples at once: src, dst [B,3,3] -> s [B], R [B,3,3], t [B,3]
    (the same algebra as `umeyama_sim3`, vectorised because RANSAC needs hundreds)."""
    mu_s, mu_d = src.mean(axis=1), dst.mean(axis=1)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    U, D, Vt = np.linalg.svd(np.einsum("bni,bnj->bij", xd, xs) / 3)
    sign = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    E = np.ones((len(src), 3))
    E[:, 2] = np.where(sign < 0, -1.0, 1.0)
    R = U @ (E[:, :, None] * Vt)
    var_s = (xs**2).sum(axis=(1, 2)) / 3
    s = (D * E).sum(axis=1) / np.maximum(var_s, 1e-300)
    t = mu_d - s[:, None] * np.einsum("bij,bj->bi", R, mu_s)
    return s, R, t


def _relative_residuals(sim: Sim3, pq: np.ndarray, pm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(sim.apply(pq) - pm, axis=1) / pm[:, 2]


def _ransac_sim3(
    pq: np.ndarray, pm: np.ndarray, cfg: PlaceConfig, rng: np.random.Generator
) -> tuple[Sim3, np.ndarray] | None:
    """cam_m_from_cam_q from 3D-3D pairs: the minimal sample with most inliers (residual <= inlier_rel of
    the point's depth), then weighted Umeyama refits on its inliers (weights 1/z^2 make the least-squares
    residual relative, like the threshold). Returns (Sim3, inlier mask)."""
    n = len(pq)
    if n < 3:
        return None
    idx = np.stack([rng.choice(n, 3, replace=False) for _ in range(cfg.sim3_iterations)])
    s, R, t = _umeyama_batch(pq[idx], pm[idx])
    pred = s[:, None, None] * np.einsum("bij,nj->bni", R, pq) + t[:, None, :]
    rel = np.linalg.norm(pred - pm[None], axis=2) / pm[None, :, 2]
    count = (rel <= cfg.inlier_rel).sum(axis=1)
    count[~np.isfinite(s) | (s <= 0)] = -1
    best = int(np.argmax(count))
    inl = rel[best] <= cfg.inlier_rel
    if inl.sum() < 3:
        return None
    for _ in range(3):
        sim = umeyama_sim3(pq[inl], pm[inl], weights=1.0 / pm[inl, 2] ** 2)
        new = _relative_residuals(sim, pq, pm) <= cfg.inlier_rel
        if new.sum() < 3 or np.array_equal(new, inl):
            break
        inl = new
    return sim, inl


def _coverage(uv: np.ndarray, K: np.ndarray, grid: tuple[int, int]) -> int:
    """Distinct cells of a rows x cols grid over the image (its extent taken from the principal point)."""
    w, h = 2.0 * (K[0, 2] + 0.5), 2.0 * (K[1, 2] + 0.5)
    r = np.clip((uv[:, 1] / h * grid[0]).astype(np.int64), 0, grid[0] - 1)
    c = np.clip((uv[:, 0] / w * grid[1]).astype(np.int64), 0, grid[1] - 1)
    return len(np.unique(r * grid[1] + c))


def _dense_agreement(a: Entry, b: Entry, b_from_a: Sim3, rel: float) -> float:
    """Share of a's thumbnail points, moved into camera b, that agree with b's depth where b sees them,
    among those that agree or contradict. Contradiction: the point lies well in front of the surface b
    sees (b would have seen it); a point behind it is merely occluded. A repeated object matched between
    two places fits its own points but puts the rest of the view where b saw something else."""
    z, seen = b.thumb_depth_at(b_from_a.apply(a.thumb_points()))
    valid = seen > 0
    agree = valid & (np.abs(z - seen) <= rel * seen)
    contradict = valid & (z < (1.0 - rel) * seen)
    n = int(agree.sum() + contradict.sum())
    return float(agree.sum() / n) if n else 0.0


def verify(q: Entry, m: Entry, score: float, cfg: PlaceConfig, rng: np.random.Generator) -> _Verdict:
    """Geometric verification of a candidate pair; the verdict names the failed check."""
    pairs = keyframe_matches(q, m, cfg.ratio)
    if len(pairs) < cfg.min_essential_inliers:
        return _Verdict(False, "matches")
    ess = _essential(q, m, pairs, cfg)
    if ess is None or ess[0].sum() < cfg.min_essential_inliers:
        return _Verdict(False, "essential")
    e_inl, R_e, t_e = ess
    pairs = pairs[e_inl]
    pairs = pairs[(q.z[pairs[:, 0]] > 0) & (m.z[pairs[:, 1]] > 0)]
    if len(pairs) < cfg.min_inliers:
        return _Verdict(False, "depth")
    pq, pm = q.points(pairs[:, 0]), m.points(pairs[:, 1])
    fit = _ransac_sim3(pq, pm, cfg, rng)
    if fit is None:
        return _Verdict(False, "sim3")
    cam_m_from_cam_q, inl = fit
    n_inl, share = int(inl.sum()), float(inl.mean())
    if n_inl < cfg.min_inliers or share < cfg.min_inlier_share:
        return _Verdict(False, "sim3")
    if abs(np.log(cam_m_from_cam_q.s)) > np.log(cfg.max_scale_ratio):
        return _Verdict(False, "scale")
    cells = _coverage(q.uv[pairs[inl, 0]], q.K, cfg.coverage_grid)
    if cells < cfg.min_coverage_cells:
        return _Verdict(False, "coverage")
    rot_dis = float(rotation_distance_deg(cam_m_from_cam_q.R, R_e))
    baseline_rel = float(np.linalg.norm(cam_m_from_cam_q.t) / np.median(pm[inl, 2]))
    # Without baseline the essential matrix's decomposition is ill-posed (any t fits): skip its checks.
    if baseline_rel >= cfg.min_baseline_rel:
        if rot_dis > cfg.max_rotation_disagreement_deg:
            return _Verdict(False, "rotation")
        cos = float(t_e @ cam_m_from_cam_q.t / np.linalg.norm(cam_m_from_cam_q.t))
        if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) > cfg.max_translation_angle_deg:
            return _Verdict(False, "translation")
    dense = min(
        _dense_agreement(q, m, cam_m_from_cam_q, cfg.thumbnail_agreement_rel),
        _dense_agreement(m, q, cam_m_from_cam_q.inverse(), cfg.thumbnail_agreement_rel),
    )
    if dense < cfg.min_dense_agreement:
        return _Verdict(False, "dense")
    rmse_rel = float(np.sqrt(np.mean(_relative_residuals(cam_m_from_cam_q, pq[inl], pm[inl]) ** 2)))
    edge = _to_sim3(m.window_from_cam) @ cam_m_from_cam_q @ _to_sim3(invert_rigid(q.window_from_cam))
    match = LoopMatch(
        q.keyframe_id,
        m.keyframe_id,
        q.window_id,
        m.window_id,
        edge,
        cam_m_from_cam_q,
        n_inl,
        share,
        rmse_rel,
        float(score),
        int(e_inl.sum()),
        rot_dis,
        cells,
        dense,
    )
    return _Verdict(True, "ok", match)


def _to_sim3(T: np.ndarray) -> Sim3:
    return Sim3(1.0, T[:3, :3], T[:3, 3])


# ------------------------------------------------------------------------------------ database
