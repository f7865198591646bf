"""The joint fit of a window to the previous one through their shared frames (ARCHITECTURE §4): confident
correspondences, then rotation from the shared cameras, scale from every source that measures it (dense
depth, shared keypoints, camera baselines) with a continuity prior, translation from the shared centres;
the overlap poses when nothing else is left."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from recon.align.contracts import AlignConfig, AlignedWindow, Correspondences, median_depth, registered_frames
from recon.align.layer_scale import scale_lookup
from recon.geometry import grid_stride, invert_rigid, rotation_distance_deg
from recon.kernels.align_sim3 import robust_sim3
from recon.pose_fit import umeyama_sim3
from recon.types import Sim3, WindowPrediction


def _conf_threshold(
    c_prev: torch.Tensor, c_cur: torch.Tensor, config: AlignConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window thresholds (strict >) for the candidate confidences [M] of both windows."""
    # Quantiles from every 4th candidate: thresholds need not be exact, and selection is ~n log n.
    c_prev, c_cur = c_prev[::4], c_cur[::4]
    if config.conf_mode == "top_p":
        k = max(1, int(round((1.0 - config.top_p) * c_prev.numel())))
        return torch.kthvalue(c_prev, k).values, torch.kthvalue(c_cur, k).values
    thr = config.conf_rel * torch.minimum(c_prev.median(), c_cur.median())
    return thr, thr


def select_correspondences(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, config: AlignConfig
) -> Correspondences:
    """Overlap pixels (on a stride) confident in both windows with positive depth in both."""
    dev = cur.depth.device
    O = overlap
    H, W = cur.hw
    stride = grid_stride(O * H * W, config.max_correspondences)
    o = stride // 2  # centred grid, so a stride of 8 does not always skip the last rows/cols
    sl = (slice(None), slice(o, None, stride), slice(o, None, stride))
    # One strided gather per map into contiguous [O*hs*ws] vectors; everything after is contiguous.
    c_prev = prev.conf[-O:].to(dev)[sl].reshape(-1)
    c_cur = cur.points_conf[:O][sl].reshape(-1)
    d_prev = prev.depth[-O:].to(dev)[sl].reshape(-1)
    d_cur = cur.depth[:O][sl].reshape(-1)
    hs, ws = cur.points_conf[:1][sl].shape[1:]
    thr_prev, thr_cur = _conf_threshold(c_prev, c_cur, config)
    keep = (c_prev > thr_prev) & (c_cur > thr_cur) & (d_prev > 0) & (d_cur > 0)
    idx = torch.nonzero(keep).squeeze(1)  # into the strided grid [O*hs*ws]
    frame, rest = idx.div(hs * ws, rounding_mode="floor"), idx.remainder(hs * ws)
    v = rest.div(ws, rounding_mode="floor") * stride + o
    u = rest.remainder(ws) * stride + o
    source = cur.points[:O][sl].reshape(-1, 3).index_select(0, idx)
    target = prev.world_points(slice(len(prev) - O, None), stride, o).to(dev).reshape(-1, 3).index_select(0, idx)
    weights = torch.sqrt(c_prev.index_select(0, idx) * c_cur.index_select(0, idx))
    return Correspondences(frame, v, u, source, target, weights, num_candidates=O * hs * ws, stride=stride)


@dataclass(frozen=True)
class JoinFit:
    """`sim`: prev_frame_from_cur_frame (target = the previous window's frame). `noise`: 1-sigma
    rotation (rad), translation (target units) and log-scale of that fit, for the pose graph edge.
    `path`: "joint" (rotation from the shared cameras, scale measured), "inherited_scale" (nothing in
    the overlap measures scale: the shared frames' median depths carry it over) or "pose_fallback"
    (no shared camera is placed by both windows and too few confident pixels: overlap poses as given)."""

    sim: Sim3
    noise: dict[str, float]
    path: str
    info: dict[str, Any]
    warning: str | None = None


def _rotation_mean(R: np.ndarray, outlier_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust chordal mean of rotations [N,3,3]: those further than `outlier_deg` (or 3x the median
    spread) from the first mean are dropped. -> (R [3,3], kept [N] bool)."""
    from scipy.spatial.transform import Rotation

    mean = Rotation.from_matrix(R).mean()
    dev = np.degrees((Rotation.from_matrix(R) * mean.inv()).magnitude())
    kept = dev <= max(outlier_deg, 3.0 * float(np.median(dev)))
    if not kept.any():
        kept = dev <= dev.min()
    return Rotation.from_matrix(R[kept]).mean().as_matrix(), kept


def _log_location(v: np.ndarray, w: np.ndarray, delta: float, iterations: int = 10) -> tuple[float, float]:
    """Huber IRLS location of values v [N] with weights w -> (location, robust spread = 1.4826 MAD)."""
    m = float(np.average(v, weights=w))
    for _ in range(iterations):
        r = np.abs(v - m)
        m = float(np.average(v, weights=w * np.minimum(1.0, delta / np.maximum(r, 1e-12))))
    return m, 1.4826 * float(np.median(np.abs(v - m)))


def _consistent_sources(sources: dict[str, tuple[float, float]], n_sigma: float) -> list[str]:
    """The largest subset of scale sources (log s, sigma) whose every pair agrees within n_sigma combined
    sigmas (or 5%). Among equally large subsets, the one whose members agree best (smallest chi-square
    about their weighted mean): a loose source that agrees with two tight ones that disagree with each
    other sides with the one it is closer to. Then the smallest combined sigma."""
    from itertools import combinations

    def agree(a: str, b: str) -> bool:
        (m1, s1), (m2, s2) = sources[a], sources[b]
        return abs(m1 - m2) <= max(n_sigma * np.hypot(s1, s2), 0.05)

    def chi2_then_sigma(subset: Iterable[str]) -> tuple[float, float]:
        c = list(subset)
        w = np.array([sources[k][1] ** -2 for k in c])
        m = np.array([sources[k][0] for k in c])
        mean = float(w @ m / w.sum())
        return float(w @ (m - mean) ** 2), 1.0 / float(np.sqrt(w.sum()))

    names = sorted(sources)
    for size in range(len(names), 0, -1):
        sets: list[tuple[str, ...]] = [
            c for c in combinations(names, size) if all(agree(a, b) for a, b in combinations(c, 2))
        ]
        if sets:
            return list(min(sets, key=chi2_then_sigma))
    return []


def _track_log_ratios(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, config: AlignConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """log(depth_prev / depth_cur) of the keypoints both windows placed at the same pixel (within
    `join_keypoint_px`) of a shared frame, with weights; None when fewer than `min_join_keypoints`."""
    if prev.keypoints is None or cur.keypoints is None:
        return None
    first = len(prev) - overlap
    a, b = prev.keypoints.select_frames(first, len(prev)), cur.keypoints.select_frames(0, overlap)
    ratios, weights = [], []
    for j in range(overlap):
        ua, da = a.uv[a.frame == j], a.depth[a.frame == j]
        ub, db = b.uv[b.frame == j], b.depth[b.frame == j]
        if not len(ua) or not len(ub):
            continue
        dist, nearest = cKDTree(ub).query(ua, distance_upper_bound=config.join_keypoint_px)
        close = np.isfinite(dist)
        ratios.append(np.log(da[close] / db[nearest[close]]))
        # A triangulated depth's error grows with depth squared (relative: with depth): near corners weigh more.
        weights.append(1.0 / (da[close] * da[close]))
    v = np.concatenate(ratios) if ratios else np.zeros(0)
    w = np.concatenate(weights) if weights else np.zeros(0)
    ok = np.isfinite(v) & np.isfinite(w)
    return (v[ok], w[ok] / w[ok].max()) if ok.sum() >= config.min_join_keypoints else None


def fit_join(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, corr: Correspondences, config: AlignConfig
) -> JoinFit:
    """The Sim(3) mapping `cur`'s frame into `prev`'s from every constraint the shared frames offer:
    - rotation: the shared cameras' orientations in both windows (far better than a fit to noisy depth);
    - scale: the depth ratios of the keypoints both windows placed at the same corners of a shared frame
      (consistent with the windows' own poses), dense depth ratios of the same pixels (confident in
      both), and the ratios of the camera baselines between shared frames, combined by their
      uncertainty (the largest set that agrees decides; a source outside it is dropped); when none measures it (an
      empty, low-parallax or rotation-only overlap) the scale is inherited from the median depths of
      the shared frames and flagged, so it never jumps;
    - translation: the shared camera centres under that rotation and scale."""
    O = overlap
    reg = registered_frames(prev)[-O:] & registered_frames(cur)[:O]
    prev_from_cam = invert_rigid(prev.cam_from_world[-O:].double().cpu().numpy())
    cur_from_cam = invert_rigid(cur.cam_from_world[:O].double().cpu().numpy())
    d_prev_all = prev.depth[-O:].to(cur.depth.device)
    scene_depth = median_depth(d_prev_all)
    info: dict[str, Any] = {"shared_cameras": int(reg.sum())}
    n = int(corr.weights.shape[0])

    # Rotation.
    if reg.any():
        R_each = prev_from_cam[reg, :3, :3] @ cur_from_cam[reg, :3, :3].transpose(0, 2, 1)
        R, kept = _rotation_mean(R_each, config.join_rotation_outlier_deg)
        spread = np.radians(rotation_distance_deg(R_each[kept], np.broadcast_to(R, R_each[kept].shape)))
        sigma_rot = max(float(np.sqrt(np.mean(spread**2))) / np.sqrt(kept.sum()), np.radians(0.05))
        info["rotation_spread_deg"] = float(np.degrees(spread.max()))
    elif n >= config.min_correspondences:
        fit_sim, _ = robust_sim3(
            corr.source, corr.target, corr.weights, config.huber_delta_rel * scene_depth, config.irls_iterations
        )
        R, sigma_rot = fit_sim.R, np.radians(1.0)
        info["rotation_from"] = "dense points"
    else:
        # A break in the stream (no view the two windows share: a jump the model could not cross): the
        # overlap poses are a guess, and a loose one, so that a relocalisation (a loop edge) overrides it.
        sim, fb = pose_fallback_sim3(prev, cur, overlap, config)
        noise = {"rot_rad": np.radians(30.0), "trans": 2.0 * scene_depth, "log_scale": 1.0}
        return JoinFit(
            sim,
            noise,
            "pose_fallback",
            {**info, "fallback": fb},
            "no shared camera placed by both windows and too few confident pixels; using the overlap camera poses",
        )

    # Scale: each source gives (log s, sigma).
    sources: dict[str, tuple[float, float]] = {}
    if n >= config.min_correspondences:
        d_prev = prev.depth[-O:].to(cur.depth.device)[corr.frame, corr.v, corr.u]
        if prev.layer_scales is not None and prev.layer_labels is not None:
            # The edge relates the two windows' frames, where their cameras live: compare the model's own
            # depths, without the layer scales the previous window's map points carry.
            labels = prev.layer_labels[-O:].to(d_prev.device)[corr.frame, corr.v, corr.u]
            d_prev = d_prev / scale_lookup(prev.layer_scales[-O:], labels, corr.frame)
        z_prev = d_prev.double().cpu().numpy()
        z_cur = cur.depth[:O][corr.frame, corr.v, corr.u].double().cpu().numpy()
        ok = (z_prev > 0) & (z_cur > 0)
        if ok.sum() >= config.min_correspondences:
            v = np.log(z_prev[ok] / z_cur[ok])
            m, spread = _log_location(v, corr.weights.double().cpu().numpy()[ok], config.scale_huber_delta)
            frames_used = len(np.unique(corr.frame.cpu().numpy()[ok]))
            n_eff = min(int(ok.sum()), config.join_dense_max_samples * frames_used)
            # Dense errors are correlated across pixels (one frame's depth can be off as a whole): a floor
            # above the keypoints', whose depths are tied to the window's own cameras by its bundle adjustment.
            sources["dense"] = (m, max(spread / np.sqrt(n_eff), 0.005))
    if (tracks := _track_log_ratios(prev, cur, O, config)) is not None:
        v, w = tracks
        m, spread = _log_location(v, w, config.scale_huber_delta)
        n_eff = min(float(w.sum() ** 2 / (w**2).sum()), config.join_dense_max_samples * O)  # Kish effective size
        # Floor: the triangulation error of a window's corners in its edge frames is shared by all of them
        # (measured on sharp turns: ~10% off while dense depth and baselines agreed with the truth).
        sources["tracks"] = (m, max(spread / np.sqrt(n_eff), config.join_keypoint_log_sigma_floor))
    idx = np.nonzero(reg)[0]
    if len(idx) >= 2:
        c_prev, c_cur = prev_from_cam[idx, :3, 3], cur_from_cam[idx, :3, 3]
        i, j = np.triu_indices(len(idx), 1)
        b_prev = np.linalg.norm(c_prev[i] - c_prev[j], axis=1)
        b_cur = np.linalg.norm(c_cur[i] - c_cur[j], axis=1)
        use = (b_prev > config.join_min_baseline_rel * scene_depth) & (b_cur > 0)
        if use.any():
            v = np.log(b_prev[use] / b_cur[use])
            sig = config.join_pose_noise_rel * scene_depth / b_prev[use]
            m, _ = _log_location(v, 1.0 / sig**2, 0.05)
            # Pairs share cameras: their errors are not independent, so the tightest pair is the sigma.
            sources["baseline"] = (m, max(float(sig.min()), 0.002))
    info["scale_sources"] = {k: {"scale": float(np.exp(m)), "log_sigma": sg} for k, (m, sg) in sources.items()}

    path, warning = "joint", None
    if sources:
        # The largest set of sources that agree with each other decides (ties: the best-agreeing set); a
        # source outside it is dropped and reported. One source alone can be wrong in either direction: a window's
        # dense depth off in its edge frames, or its keypoints badly triangulated there.
        agreeing = _consistent_sources(sources, config.join_scale_conflict)
        for k in sorted(set(sources) - set(agreeing)):
            info.setdefault("scale_conflict", []).append(
                f"{k} {np.exp(sources[k][0]):.4g} disagrees with {'+'.join(agreeing)}: kept {'+'.join(agreeing)}"
            )
        weight = {k: 1.0 / sources[k][1] ** 2 for k in agreeing}
        log_s = sum(weight[k] * sources[k][0] for k in agreeing) / sum(weight.values())
        sigma_log_s = 1.0 / np.sqrt(sum(weight.values()))
    else:
        d_cur_all = cur.depth[:O]
        both = (d_prev_all > 0) & (d_cur_all > 0)
        log_s = float(torch.log(d_prev_all[both] / d_cur_all[both]).median()) if bool(both.any()) else 0.0
        sigma_log_s = config.inherited_log_scale_sigma
        path = "inherited_scale"
        warning = "no confident depth, shared keypoint or baseline in the overlap measures scale; inherited it through the shared frames"
    s = float(np.exp(np.clip(log_s, *np.log(config.scale_bounds))))

    # Translation: the shared centres (or, without any, the confident points) under R and s.
    if reg.any():
        res = prev_from_cam[reg, :3, 3] - s * (cur_from_cam[reg, :3, 3] @ R.T)
        t = np.median(res, axis=0) if len(res) >= 3 else res.mean(0)
        sigma_t = max(float(np.sqrt(((res - t) ** 2).sum(1).mean())) / np.sqrt(len(res)), 1e-3 * scene_depth)
    else:
        w_pts = corr.weights.double().cpu().numpy()
        res = corr.target.double().cpu().numpy() - s * (corr.source.double().cpu().numpy() @ R.T)
        t = (w_pts[:, None] * res).sum(0) / max(w_pts.sum(), 1e-12)
        sigma_t = 0.05 * scene_depth
    info["scale"] = s
    noise = {"rot_rad": float(sigma_rot), "trans": float(sigma_t), "log_scale": float(sigma_log_s)}
    return JoinFit(Sim3(s, R, t), noise, path, info, warning)


def pose_fallback_sim3(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, config: AlignConfig
) -> tuple[Sim3, dict[str, Any]]:
    """`world_from_window` from the overlap camera poses alone: 3 points per camera (centre, centre +
    arm x viewing direction, centre + arm x up) so rotation is defined even for one camera or collinear
    centres. Scale: ratio of the centres' spreads when the window's baseline is non-negligible, else the
    median ratio of the two windows' positive depths over the overlap, else 1."""
    O = overlap
    world_from_cam_prev = invert_rigid(prev.cam_from_world[-O:].double().cpu().numpy())  # [O,4,4]
    window_from_cam_cur = invert_rigid(cur.cam_from_world[:O].double().cpu().numpy())
    c_world = world_from_cam_prev[:, :3, 3]
    c_win = window_from_cam_cur[:, :3, 3]
    spread_world = float(np.sqrt(((c_world - c_world.mean(0)) ** 2).sum(1).mean()))
    spread_win = float(np.sqrt(((c_win - c_win.mean(0)) ** 2).sum(1).mean()))
    d_prev = prev.depth[-O:].to(cur.depth.device)
    d_cur = cur.depth[:O]
    both = (d_prev > 0) & (d_cur > 0)
    depth_win = float(d_cur[d_cur > 0].median()) if bool((d_cur > 0).any()) else 0.0
    depth_world = float(d_prev[d_prev > 0].median()) if bool((d_prev > 0).any()) else 0.0

    if O >= 2 and spread_world > 0 and spread_win > max(config.fallback_min_baseline_rel * depth_win, 1e-12):
        s, source = spread_world / spread_win, "baseline"
    elif int(both.sum()) >= config.min_correspondences:
        s, source = float((d_prev[both] / d_cur[both]).median()), "depth_ratio"
    else:
        s, source = 1.0, "unit"
    lo, hi = config.scale_bounds
    if not (np.isfinite(s) and lo <= s <= hi):
        s, source = 1.0, "unit"

    arm = depth_world if depth_world > 0 else (spread_world if spread_world > 0 else 1.0)
    view_world, up_world = world_from_cam_prev[:, :3, 2], -world_from_cam_prev[:, :3, 1]  # OpenCV: +z view, -y up
    view_win, up_win = window_from_cam_cur[:, :3, 2], -window_from_cam_cur[:, :3, 1]
    target = np.concatenate([c_world, c_world + arm * view_world, c_world + arm * up_world])
    source_pts = np.concatenate([s * c_win, s * c_win + arm * view_win, s * c_win + arm * up_win])
    rigid = umeyama_sim3(source_pts, target, with_scale=False)  # target = R (s x) + t
    return Sim3(s, rigid.R, rigid.t), {
        "scale_source": source,
        "baseline_world": spread_world,
        "baseline_window": spread_win,
    }


def overlap_pose_error(prev: AlignedWindow, cur: WindowPrediction, sim: Sim3, overlap: int) -> dict[str, float]:
    """How far the overlap cameras mapped by `sim` are from the map's copies: max rotation (deg) and max
    centre distance relative to the map's median overlap depth — the trajectory's continuity at the seam."""
    a = invert_rigid(prev.cam_from_world[-overlap:].double().cpu().numpy())
    b = invert_rigid(sim.apply_to_cam_from_world(cur.cam_from_world[:overlap].double().cpu().numpy()))
    rot = rotation_distance_deg(a[:, :3, :3], b[:, :3, :3])
    dist = np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=1)
    ref = median_depth(prev.depth[-overlap:])
    return {"rotation_deg": float(rot.max()), "centre_rel": float(dist.max() / max(ref, 1e-12))}
