"""The classical model's sparse solve of one window: from KLT tracks to poses and triangulated points.

The initial pair (init_pair.py) by essential matrix, then PnP for the other frames, the best-connected first
(ORB descriptor matches bridge a step the tracks do not cross: bridge.py), then robust bundle adjustment
(bundle.py) with an outlier cull; the gauge: the first registered frame at the origin, median depth 1."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from recon.geometry import invert_rigid, project_to_rotation, transform_points
from recon.models.classical.bridge import DescriptorBridge, bridge_candidate
from recon.models.classical.bundle import BundleConfig, bundle_adjust
from recon.models.classical.config import ClassicalConfig
from recon.models.classical.init_pair import connected_run, initial_pair
from recon.models.classical.pose import (
    PoseConfig,
    homography,
    max_triangulation_angle_deg,
    pnp,
    reprojection_error_px,
    triangulate,
)
from recon.models.classical.tracks import Tracks
from recon.types import FLAG_LOW_PARALLAX, FLAG_TOO_FEW_TRACKS

FLAG_UNREGISTERED = "unregistered_frames"


@dataclass
class SparseSolution:
    """The sparse solve of one window: poses, triangulated tracks and how it went."""

    cam_from_world: np.ndarray  # [S,4,4]
    points_w: np.ndarray  # [T,3] (NaN where not triangulated)
    K: np.ndarray  # [3,3] at the working resolution (focal refined when it was not known)
    registered: np.ndarray  # [S] bool
    flags: list[str]
    info: dict


def solve_poses(
    tracks: Tracks,
    K: np.ndarray,
    k_known: bool,
    gray: list[np.ndarray],
    cfg: ClassicalConfig,
    timings: dict[str, float],
) -> SparseSolution:
    """Poses of the window's frames and the triangulated tracks, in frame 0's camera (or the first registered
    frame's) with median sparse depth 1. `tracks` gains the bridge's keypoint tracks; timings["ba_s"]: the
    bundle adjustments' seconds, when they ran. gray: the frames at the working resolution (for the bridge)."""
    S = tracks.uv_px.shape[1]
    vis = tracks.visible
    poses = np.tile(np.eye(4), (S, 1, 1))
    nan_pts = np.full((len(tracks), 3), np.nan)
    if len(tracks) < cfg.min_tracks:
        return SparseSolution(poses, nan_pts, K, np.zeros(S, bool), [FLAG_TOO_FEW_TRACKS], {})

    # 1. the initial pair: frame 0 and the frame that balances parallax and shared tracks. When a weak
    # step (a 10-degree jump of a wide-baseline orbit, a cut in the video) splits off the window's
    # start, the reconstruction could not cross it and would place only the frames before it: the
    # pair is then the best one inside the longest well-connected stretch, and the frames before are
    # still tried from there (PnP, the descriptor bridge). Failing that (the anchor in the middle of
    # a sharp turn shares tracks with few frames), any well-conditioned pair.
    first, last = connected_run(vis, cfg.min_tracks)
    pair = initial_pair(tracks, K, [0] if first == 0 else range(first, last), cfg) or initial_pair(
        tracks, K, range(1, S - 1), cfg
    )
    if pair is None:
        return rotation_only(tracks, K, cfg.min_tracks)
    a, b, (b_from_a, inl) = pair
    poses[b] = b_from_a
    registered = np.zeros(S, bool)
    registered[[a, b]] = True
    points = nan_pts.copy()
    idx = np.nonzero(vis[:, a] & vis[:, b])[0][inl]
    triangulate_into(points, idx, tracks, poses, registered, K, cfg.pose)

    # 2. PnP for the other frames, the best-connected first (most triangulated tracks in view), so a
    # sharp turn is crossed frame by frame; triangulating as we go. When the tracks reach no remaining
    # frame, the frame nearest the registered ones is bridged by descriptor matches (bridge.py).
    failed = np.zeros(S, bool)
    bridge_failed = np.zeros(S, bool)
    bridge: DescriptorBridge | None = None  # built on first need: most windows never need it
    bundle_cfg = BundleConfig(**{**cfg.bundle.__dict__, "refine_focal": cfg.bundle.refine_focal or not k_known})
    mid_ba_s = 0.0
    bridged: list[int] = []
    while (~registered & ~bridge_failed).any():
        if (todo := ~registered & ~failed).any():
            seen = (vis & np.isfinite(points[:, :1])).sum(0)
            s = int(np.argmax(np.where(todo, seen, -1)))
            has = vis[:, s] & np.isfinite(points[:, 0])
            res = pnp(points[has], tracks.uv_px[has, s], K, cfg.pose)
            if res is None:
                failed[s] = True
                continue
            pose, drifted = res[0], res[1] < cfg.refine_below * int(has.sum())
        else:
            s = bridge_candidate(registered, bridge_failed)
            bridge = bridge or DescriptorBridge(gray, cfg.bridge)
            reg = bridge.register(s, tracks.uv_px, points, poses, registered, K, cfg.pose)
            if reg is None:
                bridge_failed[s] = True
                continue
            tracks.uv_px = np.concatenate([tracks.uv_px, reg.new_tracks_uv])
            points = np.concatenate([points, np.full((len(reg.new_tracks_uv), 3), np.nan)])
            vis = tracks.visible
            # A bridged pose rests on ORB keypoints across the hardest step of the window: refined
            # before later frames chain on it.
            pose, drifted = reg.cam_from_world, True
            bridged.append(s)
        poses[s] = pose
        registered[s] = True
        failed[:] = bridge_failed[:] = False  # new points may now reach frames that failed before
        fresh = np.nonzero(np.isnan(points[:, 0]) & ((vis & registered).sum(1) >= 2))[0]
        triangulate_into(points, fresh, tracks, poses, registered, K, cfg.pose)
        # A PnP that rejects many of its points sees the drift of the frames registered so far (few
        # or short tracks: a wide-baseline orbit); refined now, later frames do not inherit it.
        if drifted:
            t_mid = time.perf_counter()
            points, K, _ = refine(
                tracks, poses, registered, K, bundle_cfg, cfg, rounds=1, iterations=cfg.refine_iterations
            )
            mid_ba_s += time.perf_counter() - t_mid

    # 3. all tracks from all registered views, then robust BA, outlier cull, BA again.
    t_ba = time.perf_counter()
    points, K, rms_px = refine(
        tracks, poses, registered, K, bundle_cfg, cfg, rounds=2, iterations=cfg.bundle.iterations
    )
    timings["ba_s"] = time.perf_counter() - t_ba + mid_ba_s

    # Gauge: frame 0 (or the first registered frame) is the origin; scale so its median sparse depth is 1.
    ref = int(np.argmax(registered))
    ref_from_world = poses[ref].copy()
    world_from_ref = invert_rigid(ref_from_world)
    poses[registered] = poses[registered] @ world_from_ref
    points = transform_points(ref_from_world, points)
    good = np.isfinite(points[:, 0])
    depths = points[good][:, 2]
    scale = 1.0 / float(np.median(depths[depths > 0])) if np.any(depths > 0) else 1.0
    points *= scale
    poses[:, :3, 3] *= scale
    flags = [] if registered.all() else [FLAG_UNREGISTERED]
    info = {"init_pair": [a, b], "ba_rms_px": rms_px, "num_points": int(good.sum()), "bridged": bridged}
    return SparseSolution(poses, points, K, registered, flags, info)


def refine(
    tracks: Tracks,
    poses: np.ndarray,
    registered: np.ndarray,
    K: np.ndarray,
    bundle_cfg: BundleConfig,
    cfg: ClassicalConfig,
    rounds: int,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray, float]:
    """All tracks triangulated from all registered views, then `rounds` of robust BA and outlier cull;
    refines poses[registered] in place -> (points [T,3], K, BA rms px)."""
    vis = tracks.visible
    points = np.full((len(tracks), 3), np.nan)
    triangulate_into(points, np.nonzero((vis & registered).sum(1) >= 2)[0], tracks, poses, registered, K, cfg.pose)
    ba_cfg = BundleConfig(**{**bundle_cfg.__dict__, "iterations": iterations})
    rms_px = float("nan")
    for _ in range(rounds):
        good = np.isfinite(points[:, 0]) & ba_subset(tracks, points, cfg.ba_max_points)
        obs = vis & registered[None, :] & good[:, None]
        sub = np.nonzero(good)[0]
        result = bundle_adjust(
            poses[registered], points[sub], tracks.uv_px[sub][:, registered], obs[sub][:, registered], K, ba_cfg
        )
        poses[registered] = result.cam_from_world
        points[sub] = result.points_w
        K, rms_px = result.K, result.rms_px
        err = reprojection_error_px(points[sub], tracks.uv_px[sub], obs[sub], poses, K)
        bad = np.any(np.where(obs[sub], err, 0.0) > cull_px(err[obs[sub]], cfg), axis=1)
        points[sub[bad]] = np.nan
    # Tracks left out of the BA (or culled from it): triangulated against the refined poses, at the looser bar
    # of a keypoint (cfg.pose.max_reproj_px); the tighter cull is for the poses.
    rest = np.nonzero(np.isnan(points[:, 0]) & ((vis & registered).sum(1) >= 2))[0]
    triangulate_into(points, rest, tracks, poses, registered, K, cfg.pose)
    return points, K, rms_px


def cull_px(errors_px: np.ndarray, cfg: ClassicalConfig) -> float:
    """The reprojection error [px] above which a track leaves the bundle adjustment: `cull_noise_factor` times
    the median error of its observations, at least `cull_floor_px`, at most cfg.pose.max_reproj_px."""
    median = float(np.median(errors_px)) if len(errors_px) else 0.0
    return min(cfg.pose.max_reproj_px, max(cfg.cull_floor_px, cfg.cull_noise_factor * median))


def ba_subset(tracks: Tracks, points: np.ndarray, max_points: int) -> np.ndarray:
    """Up to the BA's point budget (`max_points`): first, for every pair of consecutive frames, the longest tracks seen
    in both (half the budget, shared evenly), then the longest of the rest. Long tracks tie many frames
    together, but under fast rotation they all sit in the middle of the window: the frames at its ends
    would keep a handful of points, and a frame held by a handful of points bends the window (measured
    on fast pans: 5-16 cm off at the head of a window right to 1 cm inside, and a 1.2-1.5x scale change
    from head to tail). Every step keeps its own tie, a bridged step included."""
    idx = np.nonzero(np.isfinite(points[:, 0]))[0]
    vis = tracks.visible[idx]
    order = np.argsort(-vis.sum(1), kind="stable")  # longest first
    vis_o = vis[order]
    chosen = np.zeros(len(idx), bool)
    per_step = max_points // (2 * max(vis.shape[1] - 1, 1))
    for s in range(vis.shape[1] - 1):
        chosen[order[vis_o[:, s] & vis_o[:, s + 1]][:per_step]] = True
    rest = max_points - int(chosen.sum())
    if rest > 0:
        chosen[order[~chosen[order]][:rest]] = True
    keep = np.zeros(len(points), bool)
    keep[idx[chosen]] = True
    return keep


def triangulate_into(
    points: np.ndarray,
    idx: np.ndarray,
    tracks: Tracks,
    poses: np.ndarray,
    registered: np.ndarray,
    K: np.ndarray,
    pose_cfg: PoseConfig,
) -> None:
    """Triangulates tracks `idx` from the registered views into points[idx], where they reproject within
    pose_cfg.max_reproj_px and are seen under at least pose_cfg.min_triangulation_deg (else left as they were)."""
    if len(idx) == 0:
        return
    obs = tracks.visible[idx] & registered[None, :]
    X = triangulate(tracks.uv_px[idx], obs, poses, K)
    err = reprojection_error_px(X, tracks.uv_px[idx], obs, poses, K)
    ok = np.all(np.where(obs, err, 0.0) < pose_cfg.max_reproj_px, axis=1)
    ok &= max_triangulation_angle_deg(X, obs, poses) >= pose_cfg.min_triangulation_deg
    points[idx[ok]] = X[ok]


def rotation_only(tracks: Tracks, K: np.ndarray, min_tracks: int) -> SparseSolution:
    """No usable parallax: rotations from homographies (H = K R K^-1), no translation, no depth."""
    S = tracks.uv_px.shape[1]
    vis = tracks.visible
    poses = np.tile(np.eye(4), (S, 1, 1))
    K_inv = np.linalg.inv(K)
    registered = np.zeros(S, bool)
    registered[0] = True
    for b in range(1, S):
        common = vis[:, 0] & vis[:, b]
        H = homography(tracks.uv_px[common, 0], tracks.uv_px[common, b]) if common.sum() >= min_tracks else None
        if H is not None:
            M = K_inv @ H @ K
            poses[b, :3, :3] = project_to_rotation(M / np.cbrt(np.linalg.det(M)))
            registered[b] = True
    return SparseSolution(poses, np.full((len(tracks), 3), np.nan), K, registered, [FLAG_LOW_PARALLAX], {})


def scene_depth(sparse: SparseSolution, tracks: Tracks) -> np.ndarray:
    """[S] median depth of the triangulated points each frame sees (1 where it sees fewer than 5)."""
    S = sparse.cam_from_world.shape[0]
    good = np.isfinite(sparse.points_w[:, 0])
    out = np.ones(S)
    for s in range(S):
        m = good & tracks.visible[:, s]
        if m.sum() >= 5:
            z = transform_points(sparse.cam_from_world[s], sparse.points_w[m])[:, 2]
            if np.any(z > 0):
                out[s] = float(np.median(z[z > 0]))
    return out
