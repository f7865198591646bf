"""The embedded default model: classical multi-view geometry, no learned weights.

window of frames -> KLT tracks -> essential matrix on a well-conditioned pair -> PnP for the other
frames -> robust bundle adjustment -> DIS-flow dense depth with honest confidence -> WindowPrediction.
Scale is arbitrary per window (median sparse depth = 1) unless stated otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from recon.datasets.resize import plan_resize
from recon.errors import ReconError
from recon.geometry import invert_rigid, project_to_rotation, rotation_angle_deg, transform_points
from recon.models.classical.bridge import BridgeConfig, DescriptorBridge, bridge_candidate
from recon.models.classical.bundle import BundleConfig, bundle_adjust
from recon.models.classical.dense import DenseConfig, FlowCache, FlowWorkers, dense_depth
from recon.models.classical.pose import (
    PoseConfig,
    homography,
    max_triangulation_angle_deg,
    pair_parallax_deg,
    pnp,
    reprojection_error_px,
    triangulate,
    two_view,
)
from recon.models.classical.tracks import TrackerConfig, Tracks, track_window
from recon.types import FLAG_LOW_PARALLAX, FLAG_TOO_FEW_TRACKS, Frame, Keypoints, ResizeMap, WindowPrediction

FLAG_UNREGISTERED = "unregistered_frames"


@dataclass(frozen=True)
class ClassicalConfig:
    max_side_px: int = 640  # work at most at this resolution (longer side)
    focal_guess: float = 0.9  # focal = focal_guess * longer side when the source has no intrinsics
    min_tracks: int = 40
    # Every point of a window goes into its bundle adjustment, up to this cap (_ba_subset picks which): with
    # 600, a fast pan left each frame ~150 points and windows came out 8-24% larger at one end than at the
    # other (7 of 19 windows of a room walk); with all of them (~3500), at most 3%.
    ba_max_points: int = 4000
    init_candidates: int = 6  # frames tried as the partner of frame 0 for initialisation
    # An initial pair's rotation must agree with the rotations through a frame between them (a -> m -> b) to
    # within this: few tracks bunched in one corner of the view (a plain wall fills the rest) fit a wrong
    # essential matrix as well as the true one, with a wrong rotation and a spurious large parallax.
    init_max_rotation_gap_deg: float = 5.0
    refine_below: float = 0.7  # bundle-adjust mid-way when a PnP keeps less than this share of its points
    refine_iterations: int = 5
    flow_cache_mb: int = 128  # pair flows kept for the next window: at most 48 pairs in this (26 at 640x480)
    seed: int = 0
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)


@dataclass
class _Sparse:
    cam_from_world: np.ndarray  # [S,4,4]
    points_w: np.ndarray  # [T,3] (NaN where not triangulated)
    K: np.ndarray
    registered: np.ndarray  # [S] bool
    flags: list[str]
    info: dict


def _working_map(hw: tuple[int, int], max_side: int) -> ResizeMap:
    """Original pixels -> the working resolution (longer side at most `max_side`)."""
    s = min(1.0, max_side / max(hw))
    return plan_resize(hw, width=max(8, round(hw[1] * s)), height=max(8, round(hw[0] * s)), mode="fit", multiple_of=1)


def _connected_run(visible: np.ndarray, min_tracks: int) -> tuple[int, int]:
    """(first, last) frame of the longest run of consecutive frames each sharing >= min_tracks tracks with
    the next (the earliest such run on a tie)."""
    strong = (visible[:, :-1] & visible[:, 1:]).sum(0) >= min_tracks  # [S-1] per step
    best, start = (0, 0), 0
    for i, ok in enumerate([*strong, False]):
        if not ok:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = i + 1
    return best


class _SingleThreadedBlas:
    """BLAS on one thread while any window is inferred. Our matrices are tiny: multi-threaded BLAS only adds
    hand-offs, and next to the flow threads it oversubscribes the cores (a 200x200 product went from 0.4 ms
    to 16 ms under load). The limit is process-wide, so with windows in flight together the first to enter
    sets it and the last to leave lifts it (nested threadpool_limits would restore in the wrong order)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._limit: threadpool_limits | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._limit = threadpool_limits(limits=1, user_api="blas")
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


class ClassicalModel:
    """GeometryModel registered as `classical`."""

    name = "classical"
    # Windows are independent and CPU-bound: a second one in flight fills the core that tracking and bundle
    # adjustment (single-threaded) leave idle.
    windows_in_flight = 2

    def __init__(self, config: ClassicalConfig | None = None, **overrides: object) -> None:
        self.config = config or ClassicalConfig(**overrides)  # type: ignore[arg-type]
        self._blas = _SingleThreadedBlas()
        self._flows = FlowCache(self.config.flow_cache_mb << 20)
        self._flow_workers = FlowWorkers(self.config.dense.threads, self.config.dense.dis_preset)

    # -- public -------------------------------------------------------------------------------
    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        with self._blas:
            return self._infer(frames)

    def _infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        cfg = self.config
        if len(frames) < 2:
            raise ReconError(f"the classical model needs at least 2 frames per window, got {len(frames)}")
        orig_hw = frames[0].hw
        if any(f.hw != orig_hw for f in frames):
            sizes = sorted({f.hw for f in frames})
            raise ReconError(f"frames of one window differ in size {sizes}; resize the input to one size")
        cv2.setRNGSeed(cfg.seed)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        resize = _working_map(orig_hw, cfg.max_side_px)
        model_hw = (int(resize.model_hw[0]), int(resize.model_hw[1]))
        gray = [self._gray(f.image_rgb, model_hw) for f in frames]
        K, k_known = self._intrinsics(frames, resize, model_hw)
        tracks = track_window(gray, cfg.tracker)
        timings["tracking_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        sparse = self._poses(tracks, K, k_known, timings, gray)
        timings["pose_s"] = time.perf_counter() - t1 - timings.get("ba_s", 0.0)

        t2 = time.perf_counter()
        S = len(frames)
        if FLAG_TOO_FEW_TRACKS in sparse.flags or FLAG_LOW_PARALLAX in sparse.flags:
            depth = np.ones((S, *model_hw), np.float32)
            conf = np.zeros((S, *model_hw), np.float32)
        else:
            scene_depth = self._scene_depth(sparse, tracks)
            dense = dense_depth(
                gray, sparse.cam_from_world, sparse.K, scene_depth, cfg.dense, self._flows, self._flow_workers
            )
            depth, conf = dense.depth, dense.conf
            # Cap runaway depths (sky, near-epipole pixels) so downstream maths stays well-scaled.
            np.minimum(depth, 100.0 * float(np.max(scene_depth)), out=depth)
            conf[~sparse.registered] = 0.0
        timings["dense_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        pred = self._pack(frames, depth, conf, sparse, resize)
        pred.keypoints = self._keypoints(sparse, tracks)
        timings["packing_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        # `registered[s]` is False for frames the model could not place (their pose is a placeholder).
        pred.info.update(
            timings=timings,
            intrinsics_known=k_known,
            focal_px=float(sparse.K[0, 0]),
            num_tracks=len(tracks),
            registered=sparse.registered.tolist(),
            **sparse.info,
        )
        return pred

    # -- stages -------------------------------------------------------------------------------
    @staticmethod
    def _gray(image_rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        g = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        if g.shape != hw:
            g = cv2.resize(g, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        return g

    def _intrinsics(self, frames: Sequence[Frame], resize: ResizeMap, hw: tuple[int, int]) -> tuple[np.ndarray, bool]:
        if frames[0].K is not None:
            return resize.K_to_model(frames[0].K), True
        H, W = hw
        f = self.config.focal_guess * max(H, W)
        return np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]]), False

    def _poses(
        self, tracks: Tracks, K: np.ndarray, k_known: bool, timings: dict[str, float], gray: list[np.ndarray]
    ) -> _Sparse:
        cfg = self.config
        S = tracks.uv_px.shape[1]
        vis = tracks.visible
        poses = np.tile(np.eye(4), (S, 1, 1))
        nan_pts = np.full((len(tracks), 3), np.nan)
        if len(tracks) < cfg.min_tracks:
            return _Sparse(poses, nan_pts, K, np.zeros(S, bool), [FLAG_TOO_FEW_TRACKS], {})

        # 1. the initial pair: frame 0 and the frame that balances parallax and shared tracks. When a weak
        # step (a 10-degree jump of a wide-baseline orbit, a cut in the video) splits off the window's
        # start, the reconstruction could not cross it and would place only the frames before it: the
        # pair is then the best one inside the longest well-connected stretch, and the frames before are
        # still tried from there (PnP, the descriptor bridge). Failing that (the anchor in the middle of
        # a sharp turn shares tracks with few frames), any well-conditioned pair.
        first, last = _connected_run(vis, cfg.min_tracks)
        pair = self._initial_pair(tracks, K, [0] if first == 0 else range(first, last)) or self._initial_pair(
            tracks, K, range(1, S - 1)
        )
        if pair is None:
            return self._rotation_only(tracks, K)
        a, b, (b_from_a, inl) = pair
        poses[b] = b_from_a
        registered = np.zeros(S, bool)
        registered[[a, b]] = True
        points = nan_pts.copy()
        idx = np.nonzero(vis[:, a] & vis[:, b])[0][inl]
        self._triangulate_into(points, idx, tracks, poses, registered, K)

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
            self._triangulate_into(points, fresh, tracks, poses, registered, K)
            # A PnP that rejects many of its points sees the drift of the frames registered so far (few
            # or short tracks: a wide-baseline orbit); refined now, later frames do not inherit it.
            if drifted:
                t_mid = time.perf_counter()
                points, K, _ = self._refine(
                    tracks, poses, registered, K, bundle_cfg, rounds=1, iterations=cfg.refine_iterations
                )
                mid_ba_s += time.perf_counter() - t_mid

        # 3. all tracks from all registered views, then robust BA, outlier cull, BA again.
        t_ba = time.perf_counter()
        points, K, rms_px = self._refine(
            tracks, poses, registered, K, bundle_cfg, rounds=2, iterations=cfg.bundle.iterations
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
        return _Sparse(poses, points, K, registered, flags, info)

    def _refine(
        self,
        tracks: Tracks,
        poses: np.ndarray,
        registered: np.ndarray,
        K: np.ndarray,
        bundle_cfg: BundleConfig,
        rounds: int,
        iterations: int,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """All tracks triangulated from all registered views, then `rounds` of robust BA and outlier cull;
        refines poses[registered] in place -> (points [T,3], K, BA rms px)."""
        vis = tracks.visible
        points = np.full((len(tracks), 3), np.nan)
        self._triangulate_into(points, np.nonzero((vis & registered).sum(1) >= 2)[0], tracks, poses, registered, K)
        ba_cfg = BundleConfig(**{**bundle_cfg.__dict__, "iterations": iterations})
        rms_px = float("nan")
        for _ in range(rounds):
            good = np.isfinite(points[:, 0]) & self._ba_subset(tracks, points)
            obs = vis & registered[None, :] & good[:, None]
            sub = np.nonzero(good)[0]
            result = bundle_adjust(
                poses[registered], points[sub], tracks.uv_px[sub][:, registered], obs[sub][:, registered], K, ba_cfg
            )
            poses[registered] = result.cam_from_world
            points[sub] = result.points_w
            K, rms_px = result.K, result.rms_px
            err = reprojection_error_px(points[sub], tracks.uv_px[sub], obs[sub], poses, K)
            bad = np.any(np.where(obs[sub], err, 0.0) > self.config.pose.max_reproj_px, axis=1)
            points[sub[bad]] = np.nan
        # Tracks left out of the BA: triangulated against the refined poses.
        rest = np.nonzero(np.isnan(points[:, 0]) & ((vis & registered).sum(1) >= 2))[0]
        self._triangulate_into(points, rest, tracks, poses, registered, K)
        return points, K, rms_px

    def _initial_pair(
        self, tracks: Tracks, K: np.ndarray, anchors: Iterable[int]
    ) -> tuple[int, int, tuple[np.ndarray, np.ndarray]] | None:
        """(a, b, two-view result) of the pair (a in `anchors`, b later) that best balances parallax and
        shared tracks, and whose rotation the frames between confirm; None when no pair is usable."""
        cfg = self.config
        S = tracks.uv_px.shape[1]
        vis = tracks.visible
        scored: list[tuple[float, int, int, float, int]] = []  # (score, a, b, parallax, inliers)
        for a in anchors:
            for b in np.unique(np.linspace(a + 1, S - 1, min(S - 1 - a, cfg.init_candidates)).round().astype(int)):
                common = vis[:, a] & vis[:, b]
                if common.sum() < cfg.min_tracks:
                    continue
                angle_deg, n_inliers = pair_parallax_deg(tracks.uv_px[common, a], tracks.uv_px[common, b], K, cfg.pose)
                if angle_deg < cfg.pose.min_init_angle_deg or n_inliers < cfg.pose.min_init_inliers:
                    continue
                scored.append((min(angle_deg, 8.0) * np.sqrt(n_inliers), int(a), int(b), angle_deg, n_inliers))

        def implausible(a: int, b: int, angle: float, n: int) -> bool:
            # Parallax grows with the baseline. An adjacent pair (no frame between to check it) that claims more
            # than a longer pair from the same frame, seen by at least half as many tracks, fits a wrong motion:
            # after an exposure jump, (3, 4) claimed 3.7 degrees (55 degrees off in direction) where (3, 7)
            # measured 1.5 on 338 tracks, and outscored every honest pair. A longer pair on few tracks proves
            # nothing (wide-baseline views share few, and fit a wrong motion of their own).
            return b == a + 1 and any(
                a2 == a and b2 > b and n2 >= n / 2 and angle2 < angle for _, a2, b2, angle2, n2 in scored
            )

        # Best first, an implausible pair last; a pair whose essential matrix the frames between contradict is
        # passed over.
        for _, a, b, *_ in sorted(scored, key=lambda x: (implausible(*x[1:]), -x[0])):
            common = vis[:, a] & vis[:, b]
            init = two_view(tracks.uv_px[common, a], tracks.uv_px[common, b], K, cfg.pose)
            if init is None:
                continue
            gap = self._rotation_gap_deg(tracks, K, a, b, init[0])
            if gap is None or gap <= cfg.init_max_rotation_gap_deg:
                return a, b, init
        return None

    def _rotation_gap_deg(self, tracks: Tracks, K: np.ndarray, a: int, b: int, b_from_a: np.ndarray) -> float | None:
        """Angle between the pair's rotation a -> b and the rotations a -> m -> b of the two halves through the
        middle frame m, each from its own essential matrix (the halves share more tracks, and rotation is
        well determined even at a small baseline); None when there is no middle frame or a half is unusable."""
        m = (a + b) // 2
        if m in (a, b):
            return None
        vis = tracks.visible
        rotations = []
        for i, j in ((a, m), (m, b)):
            common = vis[:, i] & vis[:, j]
            if common.sum() < self.config.min_tracks:
                return None
            step = max(1, int(common.sum()) // 400)
            res = two_view(tracks.uv_px[common, i][::step], tracks.uv_px[common, j][::step], K, self.config.pose)
            if res is None:
                return None
            rotations.append(res[0][:3, :3])
        return float(rotation_angle_deg(rotations[1] @ rotations[0] @ b_from_a[:3, :3].T))

    def _ba_subset(self, tracks: Tracks, points: np.ndarray) -> np.ndarray:
        """Up to the BA's point budget: first, for every pair of consecutive frames, the longest tracks seen
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
        per_step = self.config.ba_max_points // (2 * max(vis.shape[1] - 1, 1))
        for s in range(vis.shape[1] - 1):
            chosen[order[vis_o[:, s] & vis_o[:, s + 1]][:per_step]] = True
        rest = self.config.ba_max_points - int(chosen.sum())
        if rest > 0:
            chosen[order[~chosen[order]][:rest]] = True
        keep = np.zeros(len(points), bool)
        keep[idx[chosen]] = True
        return keep

    def _triangulate_into(
        self,
        points: np.ndarray,
        idx: np.ndarray,
        tracks: Tracks,
        poses: np.ndarray,
        registered: np.ndarray,
        K: np.ndarray,
    ) -> None:
        if len(idx) == 0:
            return
        obs = tracks.visible[idx] & registered[None, :]
        X = triangulate(tracks.uv_px[idx], obs, poses, K)
        err = reprojection_error_px(X, tracks.uv_px[idx], obs, poses, K)
        ok = np.all(np.where(obs, err, 0.0) < self.config.pose.max_reproj_px, axis=1)
        ok &= max_triangulation_angle_deg(X, obs, poses) >= self.config.pose.min_triangulation_deg
        points[idx[ok]] = X[ok]

    def _rotation_only(self, tracks: Tracks, K: np.ndarray) -> _Sparse:
        """No usable parallax: rotations from homographies (H = K R K^-1), no translation, no depth."""
        S = tracks.uv_px.shape[1]
        vis = tracks.visible
        poses = np.tile(np.eye(4), (S, 1, 1))
        K_inv = np.linalg.inv(K)
        registered = np.zeros(S, bool)
        registered[0] = True
        for b in range(1, S):
            common = vis[:, 0] & vis[:, b]
            H = (
                homography(tracks.uv_px[common, 0], tracks.uv_px[common, b])
                if common.sum() >= self.config.min_tracks
                else None
            )
            if H is not None:
                M = K_inv @ H @ K
                poses[b, :3, :3] = project_to_rotation(M / np.cbrt(np.linalg.det(M)))
                registered[b] = True
        return _Sparse(poses, np.full((len(tracks), 3), np.nan), K, registered, [FLAG_LOW_PARALLAX], {})

    @staticmethod
    def _scene_depth(sparse: _Sparse, tracks: Tracks) -> np.ndarray:
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

    @staticmethod
    def _keypoints(sparse: _Sparse, tracks: Tracks) -> Keypoints | None:
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

    @staticmethod
    def _pack(
        frames: Sequence[Frame], depth: np.ndarray, conf: np.ndarray, sparse: _Sparse, resize: ResizeMap
    ) -> WindowPrediction:
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
