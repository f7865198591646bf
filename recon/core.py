"""The reconstruction core (ARCHITECTURE §1, §4): one object that takes each window prediction and owns
registration, the Sim(3) pose graph, loop closure and the map. The driver (recon/pipeline.py) only
feeds it predictions and writes what it hands back.

    pred -> join to the previous window (registration strategy)  -> graph node + edge (iSAM2)
         -> keyframe into the place database -> verified loop?    -> loop edge, re-optimise
         -> world poses from the graph; map points fused under the window's id (a correction moves them)

Frames shared by two windows get one pose, fused from both windows once the later one is registered, so
the last `overlap` frames of a window (more after a break: carried_frames) wait for the next window (or
`finish`). A break (a join with no shared view) is a loose graph edge; the keyframes after it relocalise
against the map until a loop edge ties them back.

Memory: the graph holds one node per window (~0.1 KB), every trajectory frame keeps its window-frame
pose(s) so a loop correction can rewrite the trajectory (~0.3 KB a frame), the place database is capped
(PlaceConfig.max_keyframes) and the map is capped (max_map_points)."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch

from recon.align import (
    AlignConfig,
    AlignedWindow,
    WindowFit,
    WindowLayers,
    anchored_fit,
    fit_window,
    median_depth,
    place_window,
    registered_frames,
    window_layers,
)
from recon.fusion import VOXEL_PER_DEPTH, VoxelMap
from recon.geometry import invert_rigid
from recon.places import PlaceConfig
from recon.posegraph import EdgeNoise, PoseGraph, PoseGraphConfig
from recon.types import FrameMeta, Sim3, WindowPrediction

log = logging.getLogger(__name__)

# A causal model's consecutive steps share its anchor: tight, not exact (the graph needs some noise).
_ANCHORED_NOISE = EdgeNoise(rot_rad=1e-3, trans=1e-3, log_scale=1e-3)
# A restarted causal model: the new anchor sits at the last camera, its scale is its own.
_REANCHOR_NOISE = EdgeNoise(rot_rad=np.radians(1.0), trans=0.05, log_scale=0.5)


@dataclass(frozen=True)
class MapConfig:
    voxel: float | None = None  # run units; None: 1% of the first window's median depth
    max_points: int = 1_000_000
    pixel_stride: int = 2
    conf_quantile: float = 0.5  # fuse pixels at or above this quantile of the window's confidence (> 0)
    # Depth edges (depth_edges): where a model's depth blends two surfaces; fused, such pixels are the streaks
    # between foreground and background. Off by default: bench/bench_map_filter.py finds 0.1 about neutral on
    # the synthetic street and room (accuracy -0.3..-0.6%, completeness within the ICP's run-to-run noise).
    edge_jump_rel: float | None = None
    edge_window_px: int = 5
    # Multi-view consistency (consistent_in_neighbours): a pixel is fused only where one of the frames
    # `consistency_offsets` away in the same window confirms its depth: within consistency_px of reprojection
    # error (model pixels) or consistency_rel of relative depth; pixels in no such frame's view are kept unless
    # far beyond the frame's median depth.
    # Depth other views contradict (a blend across an edge, depth interpolated over a blank background) stays
    # out. bench/bench_map_filter.py: street accuracy -15%, recall -2..-3%, room unchanged; temple's points
    # off the object 15% -> 5%. None: off.
    consistency_px: float | None = 1.0
    consistency_rel: float = 0.05
    consistency_offsets: tuple[int, ...] = (-3, 3)


@dataclass(frozen=True)
class LoopGate:
    """A verified loop edge must also agree with where the chain of joins puts the two windows, within the
    drift the chain can have accumulated: look-alike streets pass every single-view check (same facades at
    the same distance), but not this one. Within the gate a loop is trusted (no robust kernel): a correct
    loop after real drift is far outside any kernel tuned to the edge's own small residual."""

    max_drift_rel: float = 0.1  # translation disagreement / path length between the two windows
    max_rotation_deg: float = 30.0
    max_scale_ratio: float = 2.0


@dataclass(frozen=True)
class GraphConfig:
    """The pose graph over windows and the loop closures that add edges to it."""

    posegraph: PoseGraphConfig = field(default_factory=lambda: PoseGraphConfig(loop_kernel="none"))
    loop_closure: bool = True
    places: PlaceConfig = field(default_factory=PlaceConfig)
    loop_gate: LoopGate = field(default_factory=LoopGate)
    keyframe_every: int = 5  # new frames between place-database keyframes
    # Floors of a join's 1-sigma: the overlap agreeing with itself says nothing of the model's systematic
    # error, and the graph must be able to spread a loop's correction over the joins.
    join_noise_floor: EdgeNoise = field(
        default_factory=lambda: EdgeNoise(rot_rad=float(np.radians(0.2)), trans=0.01, log_scale=0.01)
    )


@dataclass(frozen=True)
class CoreConfig:
    align: AlignConfig = field(default_factory=AlignConfig)
    map: MapConfig = field(default_factory=MapConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)


@dataclass
class FramePose:
    """One trajectory row."""

    index: int
    timestamp_s: float
    world_from_cam: np.ndarray  # [4,4]
    gt_cam_from_world: np.ndarray | None
    registered: bool


@dataclass
class CoreUpdate:
    """What one window changed. `final`: (position in `aligned`, pose) of the frames whose pose is final
    now, in stream order. `trajectory`: every earlier final pose, corrected, when a loop closure moved
    them (rewrite the trajectory with it, then append `final`), else None. `moved`: world_from_window of
    the windows that moved."""

    window: int
    aligned: AlignedWindow  # this window in the world frame
    new: slice  # frames of `aligned` not in any earlier window
    final: list[tuple[int, FramePose]]
    trajectory: list[FramePose] | None = None
    moved: dict[int, Sim3] = field(default_factory=dict)
    loop: dict[str, Any] | None = None
    fused_conf: torch.Tensor | None = (
        None  # [F,H',W'] the new frames' pixels on the map's stride: confidence fused, 0 = left out
    )


@dataclass
class _Frame:
    index: int
    timestamp_s: float
    gt_cam_from_world: np.ndarray | None
    views: list[tuple[int, np.ndarray, bool, float]]  # (window, window_from_cam [4,4], registered, weight)


class Reconstruction:
    """Registration + pose graph + loop closure + map for one run. `overlap`: frames consecutive windows
    share (0 for anchored steps)."""

    def __init__(self, overlap: int, config: CoreConfig = CoreConfig()) -> None:
        self.overlap, self.config = overlap, config
        self.graph = PoseGraph(config.graph.posegraph)
        self.map: VoxelMap | None = None
        self.places = None
        if config.graph.loop_closure:
            from recon.places import PlaceDatabase

            self.places = PlaceDatabase(config.graph.places)
        self._prev_tail: AlignedWindow | None = None  # the last window's shared frames, in its own frame
        self._carry = 0  # frames the last window shares with the next (carried_frames)
        self._windows = 0
        self._reanchor = False
        self._frames: list[_Frame] = []  # final frames, in stream order
        self._pending: list[_Frame] = []  # the last window's tail: final when the next window joins
        self._last: AlignedWindow | None = None
        self._estimates: dict[int, Sim3] = {}
        self.loops: list[dict[str, Any]] = []
        self.rejected_loops: deque[dict[str, Any]] = deque(
            maxlen=200
        )  # the latest: an endless stream keeps no full log
        self._loop_pairs: set[tuple[int, int]] = set()
        # Breaks: windows whose join found no shared view (the edge to k - 1 is a guess). Until a loop edge
        # ties the windows from `_detached_from` on to the ones before it, their keyframes relocalise.
        self._breaks: set[int] = set()
        self._detached_from: int | None = None
        self._keyframes = 0
        self.timings_s = {"join": 0.0, "graph": 0.0, "places": 0.0, "map": 0.0}

    def __len__(self) -> int:
        return self._windows

    # -- one window --------------------------------------------------------------------------------------
    def prepare(self, pred: WindowPrediction) -> WindowLayers | None:
        """What window `pred` needs that depends on no other window (its depth layers and their links), for add(): a model
        thread works it out while the core registers earlier windows. Reads nothing but the configuration."""
        return window_layers(pred, self.config.align) if self.overlap else None

    def add(
        self,
        pred: WindowPrediction,
        meta: list[FrameMeta],
        colors: np.ndarray,
        layers: WindowLayers | None = None,
    ) -> CoreUpdate:
        """Register window `pred` (its frames' `meta`; `colors` [S,H,W,3] uint8;
        `layers`: prepare(pred), if done beforehand)."""
        k = self._windows
        t = time.perf_counter()
        shared, fit, noise = self._join(pred, layers)
        edge = fit.sim  # prev_from_cur
        if fit.report.path == "pose_fallback":
            self._breaks.add(k)
            self._detached_from = k
        # The window's shared tail in its own frame (layer scales applied): what the next window joins to.
        self._carry = carried_frames(pred, self.overlap)
        S = len(pred)
        self._prev_tail = place_window(pred, fit, Sim3.identity(), slice(S - self._carry, S)) if self._carry else None
        self.timings_s["join"] += time.perf_counter() - t

        t = time.perf_counter()
        self.graph.add_node(k, self._estimates.get(k - 1, Sim3()) @ edge if k else Sim3())
        if k:
            self.graph.add_edge(k - 1, k, edge, noise)
        self.graph.optimize()
        self.timings_s["graph"] += time.perf_counter() - t
        self._windows += 1
        window_from_cam = invert_rigid(pred.cam_from_world.double().cpu().numpy())  # [S,4,4] in the window's own frame

        loop = self._close_loop(k, pred, fit, window_from_cam, colors, shared) if self.places is not None else None
        t = time.perf_counter()
        before = self._estimates
        self._estimates = self.graph.estimates()
        moved = {w: s for w, s in self._estimates.items() if w in before and not _same(s, before[w])}
        self.timings_s["graph"] += time.perf_counter() - t

        t = time.perf_counter()
        world = place_window(pred, fit, self._estimates[k])  # the one full-resolution pass over the points
        self.timings_s["map"] += time.perf_counter() - t
        final = self._record(k, world, window_from_cam, meta, shared)
        fused_conf = self._fuse(k, world, colors, slice(shared, len(world)), moved, before, pred.K)
        self._last = world
        earlier = self._frames[: len(self._frames) - len(final)]
        trajectory = [self._pose(f) for f in earlier] if moved else None
        return CoreUpdate(k, world, slice(shared, len(world)), final, trajectory, moved, loop, fused_conf)

    def finish(self) -> list[tuple[int, FramePose]]:
        """The last window's tail becomes final: (position in the last window, pose)."""
        if self._last is None:
            return []
        n = len(self._last)
        tail, self._pending = self._pending, []
        self._frames.extend(tail)
        return [(n - len(tail) + i, self._pose(f)) for i, f in enumerate(tail)]

    def restart(self) -> None:
        """The model restarted on a new anchor (a dropped prediction): the next window continues from the
        last camera instead of joining through shared frames."""
        self._reanchor = True

    @property
    def breaks(self) -> list[int]:
        """Windows whose join found no view shared with the previous window (their edge is a guess)."""
        return sorted(self._breaks)

    @property
    def last_window(self) -> AlignedWindow | None:
        return self._last

    def trajectory(self) -> list[FramePose]:
        """Every final pose, under the graph's current estimates."""
        return [self._pose(f) for f in self._frames]

    # -- pieces ------------------------------------------------------------------------------------------
    def _join(self, pred: WindowPrediction, layers: WindowLayers | None) -> tuple[int, WindowFit, EdgeNoise]:
        """-> (frames shared with the previous window, the fit whose Sim(3) is the edge prev_from_cur, the
        edge's noise)."""
        prev, O = self._prev_tail, self._carry
        if self._windows == 0:
            return (
                0,
                anchored_fit() if self.overlap == 0 else fit_window(None, pred, 0, self.config.align, layers),
                _ANCHORED_NOISE,
            )
        if O == 0:
            if not self._reanchor:
                return 0, anchored_fit(), _ANCHORED_NOISE
            # The new anchor is the next frame, placed where the last camera was (its scale is its own).
            self._reanchor = False
            last = self._pose(self._frames[-1]).world_from_cam if self._frames else np.eye(4)
            fit = anchored_fit(self._estimates[self._windows - 1].inverse() @ Sim3.from_matrix(last))
            fit.report = replace(fit.report, path="reanchored")
            return 0, fit, _REANCHOR_NOISE
        assert prev is not None
        fit = fit_window(prev, pred, O, self.config.align, layers)
        sigma = fit.report.noise or {"rot_rad": 0.01, "trans": 0.1, "log_scale": 0.1}
        floor, depth = self.config.graph.join_noise_floor, median_depth(prev.depth)
        noise = EdgeNoise(
            rot_rad=max(sigma["rot_rad"], floor.rot_rad),
            trans=max(sigma["trans"], floor.trans * depth),
            log_scale=max(sigma["log_scale"], floor.log_scale),
        )
        return O, fit, noise

    def _record(
        self,
        k: int,
        world: AlignedWindow,
        window_from_cam: np.ndarray,
        meta: list[FrameMeta],
        shared: int,
    ) -> list[tuple[int, FramePose]]:
        """Attach this window's view of each frame; the shared head frames (pending from the previous
        window) and the middle become final; the tail waits for the next window."""
        window_from_cam = window_from_cam.copy()  # placeholders are replaced below
        reg = registered_frames(world)
        if reg.any() and not reg.all():
            # A frame the model could not place holds its nearest placed neighbour's pose (the model's own
            # placeholder is meaningless); it stays counted as unregistered.
            placed = np.nonzero(reg)[0]
            for lost in np.nonzero(~reg)[0]:
                window_from_cam[lost] = window_from_cam[placed[np.argmin(np.abs(placed - lost))]]
        S, tail = len(world), self._carry
        for j in range(shared):
            # Across the shared span the weight passes linearly from the earlier window to this one, so a
            # disagreement between the two is spread over the span's steps instead of one jump.
            w = (j + 1) / (shared + 1)
            f = self._pending[j]
            f.views = [(v[0], v[1], v[2], v[3] * (1 - w)) for v in f.views] + [(k, window_from_cam[j], bool(reg[j]), w)]
        final_frames = self._pending[:shared]
        for j in range(shared, S):
            f = _Frame(
                meta[j].index,
                meta[j].timestamp_s,
                meta[j].gt_cam_from_world,
                [(k, window_from_cam[j], bool(reg[j]), 1.0)],
            )
            final_frames.append(f)
        keep_pending = final_frames[S - tail :] if tail else []
        final_frames = final_frames[: S - tail] if tail else final_frames
        self._pending = keep_pending
        self._frames.extend(final_frames)
        return [(j, self._pose(f)) for j, f in enumerate(final_frames)]

    def _pose(self, f: _Frame) -> FramePose:
        """world_from_cam of a frame: the weighted mean of its windows' views (registered views only, if any)."""
        views = [v for v in f.views if v[2]] or f.views
        poses = np.stack([self._estimates[w].apply_to_world_from_cam(T) for w, T, _, _ in views])
        pose = poses[0]
        if len(poses) > 1:
            from scipy.spatial.transform import Rotation

            weights = np.array([v[3] for v in views]) + 1e-12
            pose = np.eye(4)
            pose[:3, :3] = Rotation.from_matrix(poses[:, :3, :3]).mean(weights=weights).as_matrix()
            pose[:3, 3] = weights @ poses[:, :3, 3] / weights.sum()
        return FramePose(f.index, f.timestamp_s, pose, f.gt_cam_from_world, any(v[2] for v in f.views))

    def _close_loop(
        self,
        k: int,
        pred: WindowPrediction,
        fit: WindowFit,
        window_from_cam: np.ndarray,
        colors: np.ndarray,
        shared: int,
    ) -> dict[str, Any] | None:
        """Every `keyframe_every`-th new frame of the window goes into the place database (a revisit is
        then never more than a few metres from a keyframe); the best verified loop that agrees with the
        chain becomes a graph edge and the graph is re-optimised."""
        from recon.places import Keyframe

        t = time.perf_counter()
        reg = registered_frames(pred)
        every = self.config.graph.keyframe_every
        matches: list[Any] = []
        for j in range(shared + every // 2, len(pred), every):
            if not reg[j]:
                continue
            kf = Keyframe(
                keyframe_id=self._keyframes,
                window_id=k,
                image_gray=cv2.cvtColor(np.ascontiguousarray(colors[j]), cv2.COLOR_RGB2GRAY),
                K=pred.K[j].double().cpu().numpy(),
                depth=_local_depth(pred, fit, j).float().cpu().numpy(),
                conf=pred.points_conf[j].float().cpu().numpy(),
                window_from_cam=window_from_cam[j],
            )
            self._keyframes += 1
            matches += self.places.add_and_query(kf, before_window=self._detached_from)  # type: ignore[union-attr]
        self.timings_s["places"] += time.perf_counter() - t
        for m in sorted(matches, key=lambda m: -m.inliers):
            pair = (m.match_window, m.query_window)
            if pair in self._loop_pairs:
                continue
            if (reason := self._gate(*pair, m.match_window_from_query_window)) is not None:
                self.rejected_loops.append({"window": m.query_window, "match_window": m.match_window, "reason": reason})
                log.info("loop candidate window %d -> %d rejected: %s", m.query_window, m.match_window, reason)
                continue
            t = time.perf_counter()
            # The loop's uncertainty: its 3D residual (relative to depth) spread over its inliers.
            sigma = max(m.rmse_rel / np.sqrt(m.inliers), 0.002)
            noise = EdgeNoise(
                rot_rad=max(sigma, np.radians(0.1)),
                trans=sigma * median_depth(_local_depth(pred, fit)) * m.match_window_from_query_window.s,
                log_scale=max(sigma, 0.005),
            )
            self.graph.add_edge(*pair, m.match_window_from_query_window, noise, loop=True)
            self.graph.optimize()
            self.timings_s["graph"] += time.perf_counter() - t
            self._loop_pairs.add(pair)
            if self._detached_from is not None and pair[0] < self._detached_from <= pair[1]:
                self._detached_from = None  # relocalised: the windows since the break hang on the map again
            info = {
                "window": m.query_window,
                "match_window": m.match_window,
                "inliers": m.inliers,
                "rmse_rel": m.rmse_rel,
                "score": m.score,
            }
            self.loops.append(info)
            log.info("loop closed: window %d -> window %d (%d inliers)", m.query_window, m.match_window, m.inliers)
            return info
        return None

    def _gate(self, a: int, b: int, a_from_b: Sim3) -> str | None:
        """Why the loop edge a_from_b disagrees with the graph's a^-1 b beyond the drift the chain between
        them can have (None: it agrees)."""
        if any(a < w <= b for w in self._breaks):
            return None  # the chain crosses a break: it says nothing about where b lies from a
        gate = self.config.graph.loop_gate
        W = {w: self.graph.estimate(w) for w in range(a, b + 1)}
        predicted = W[a].inverse() @ W[b]
        path = sum(float(np.linalg.norm(W[w + 1].t - W[w].t)) for w in range(a, b))
        rot = float(np.degrees(np.arccos(np.clip((np.trace(predicted.R.T @ a_from_b.R) - 1) / 2, -1, 1))))
        drift = float(np.linalg.norm(predicted.t - a_from_b.t)) * W[a].s
        ratio = max(predicted.s / a_from_b.s, a_from_b.s / predicted.s)
        if rot > gate.max_rotation_deg:
            return f"rotation {rot:.1f} deg from the chain's"
        if ratio > gate.max_scale_ratio:
            return f"scale x{ratio:.2f} from the chain's"
        if drift > gate.max_drift_rel * path:
            return f"{drift:.3g} from the chain's position over a path of {path:.3g}"
        return None

    def _fuse(
        self,
        k: int,
        world: AlignedWindow,
        colors: np.ndarray,
        new: slice,
        moved: dict[int, Sim3],
        before: dict[int, Sim3],
        K: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The window's more confident new pixels on a grid go into the map under its id; a loop correction
        first moves every voxel of the windows that moved. Returns the confidence fused per pixel (0: left out)."""
        t = time.perf_counter()
        cfg = self.config.map
        if self.map is None:
            self.map = VoxelMap(voxel_m=cfg.voxel or _default_voxel(world), max_points=cfg.max_points)
        if moved:
            self.map.move_windows({w: s.matrix() @ before[w].inverse().matrix() for w, s in moved.items()})
        world_from_cam = invert_rigid(world.cam_from_world.double().numpy())
        s = cfg.pixel_stride
        conf = world.conf[new, ::s, ::s]
        points = world.world_points(new, s)  # one pass: the consistency check and the map both take them
        keep = confident_pixels(conf, cfg.conf_quantile)
        if keep.any():
            if cfg.edge_jump_rel is not None:
                keep &= ~depth_edges(world.depth[new], cfg.edge_jump_rel, cfg.edge_window_px)[:, ::s, ::s]
            if cfg.consistency_px is not None and K is not None:
                keep &= consistent_in_neighbours(
                    world, K, new, s, cfg.consistency_px, cfg.consistency_offsets, cfg.consistency_rel, points=points
                )
            conf = torch.where(keep, conf, torch.zeros_like(conf))
        self.map.integrate(points, colors[new, ::s, ::s], conf, camera_centre=world_from_cam[-1, :3, 3], window=k)
        self.timings_s["map"] += time.perf_counter() - t
        return conf


def confident_pixels(conf: torch.Tensor, q: float) -> torch.Tensor:
    """[...] bool: pixels at or above the q-quantile of the positive confidences. Pixels with none have no
    depth: counted in, a window half sky or blank background (a classical model's) would put the quantile at
    zero and fuse every guess."""
    valid = conf[conf > 0]
    if not valid.numel():
        return torch.zeros_like(conf, dtype=torch.bool)
    return conf >= _quantile_floor(valid, q)


def depth_edges(depth: torch.Tensor, jump_rel: float, window_px: int) -> torch.Tensor:
    """[F,H,W] bool: pixels on a depth discontinuity. Inverse depth is affine in the pixel coordinates over a
    plane, so on any surface, slanted ones included (a road seen from a car), it equals the mean of its two
    neighbours window_px // 2 away on either side; a pixel where it differs from that mean by more than jump_rel
    of its own value, along rows or columns, lies where two surfaces meet (or blends them). Pixels without
    depth (<= 0) are edges too, as are those it is a neighbour of."""
    inv = 1.0 / depth.clamp_min(1e-12)
    r = max(1, window_px // 2)
    edge = depth <= 0
    for dim in (1, 2):
        a, b = inv.narrow(dim, 0, inv.shape[dim] - 2 * r), inv.narrow(dim, 2 * r, inv.shape[dim] - 2 * r)
        mid = inv.narrow(dim, r, inv.shape[dim] - 2 * r)
        bend = (mid - 0.5 * (a + b)).abs() > jump_rel * mid
        edge.narrow(dim, r, inv.shape[dim] - 2 * r).logical_or_(bend)
    return edge


def consistent_in_neighbours(
    world: AlignedWindow,
    K: torch.Tensor,
    new: slice,
    stride: int,
    max_px: float,
    offsets: tuple[int, ...],
    max_rel: float,
    unseen_max_depth: float = 2.0,
    points: torch.Tensor | None = None,
) -> torch.Tensor:
    """[F,H',W'] bool for the `new` frames on every stride-th pixel: no frame `offsets` away in the window
    contradicts the pixel's depth. COLMAP's geometric consistency (its stereo fusion): project the point into
    the partner, lift the pixel it lands on with the partner's depth, project that back; it confirms the
    depth where it lands within max_px of the point's own projection (a far surface, whose depth two views
    pin down loosely, still lands close: its error is small in pixels, the unit its depth was measured in), or
    where the two depths agree within max_rel (a near surface, seen with a wide parallax, moves many pixels
    for a small depth error). A blend across a depth edge, or depth interpolated over a blank background,
    is confirmed by no partner that sees it, nor is a point that lands where the partner has no depth (a
    blank background seen through it). Kept: pixels some partner confirms, and those in no partner's view
    (nothing says anything about them) within unseen_max_depth x the frame's median depth; a streak that runs
    off into the distance leaves every partner's view too. K [S,3,3] model pixels (centres at integers)."""
    S, H, W = world.depth.shape
    first, stop, _ = new.indices(S)
    if points is None:  # [F,h,w,3]; the caller's when it has them already
        points = world.world_points(new, stride)
    T = world.cam_from_world.to(points.dtype)
    Kf = K.to(points.dtype)
    out = torch.zeros(points.shape[:3], dtype=torch.bool, device=points.device)
    unseen = torch.ones_like(out)  # in no partner's view: nothing to confirm or contradict it
    for f, i in enumerate(range(first, stop)):
        partners = [i + o for o in offsets if 0 <= i + o < S]
        uv_i = _project(points[f] @ T[i, :3, :3].T + T[i, :3, 3], Kf[i])  # [h,w,2]
        for j in partners:
            p_j = points[f] @ T[j, :3, :3].T + T[j, :3, 3]  # [h,w,3] in camera j
            uv_j = _project(
                p_j, Kf[j]
            )  # lifted along its own ray, with the depth of the nearest pixel: no rounding error
            u, v = torch.round(uv_j[..., 0]).long(), torch.round(uv_j[..., 1]).long()
            inside = (p_j[..., 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            d = world.depth[j][v.clamp(0, H - 1), u.clamp(0, W - 1)]  # [h,w]
            ray = torch.stack(
                [
                    (uv_j[..., 0] - Kf[j, 0, 2]) / Kf[j, 0, 0],
                    (uv_j[..., 1] - Kf[j, 1, 2]) / Kf[j, 1, 1],
                    torch.ones_like(d),
                ],
                dim=-1,
            )
            lifted_j = ray * d[..., None]  # camera j
            R_ij = T[i, :3, :3] @ T[j, :3, :3].T  # camera j -> camera i
            t_ij = T[i, :3, 3] - R_ij @ T[j, :3, 3]
            back = _project(lifted_j @ R_ij.T + t_ij, Kf[i])
            agree = ((back - uv_i).norm(dim=-1) <= max_px) | ((p_j[..., 2] - d).abs() <= max_rel * d)
            out[f] |= inside & (d > 0) & agree
            unseen[f] &= ~inside
    z = world.depth[first:stop, ::stride, ::stride]
    near = torch.stack([d <= unseen_max_depth * d[d > 0].median() if bool((d > 0).any()) else d > 0 for d in z])
    return out | (unseen & near)


def _project(p_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[...,3] camera points -> [...,2] pixels (behind the camera: far off the image)."""
    z = p_cam[..., 2:3]
    uv = p_cam[..., :2] / z.clamp_min(1e-12) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return torch.where(z > 0, uv, torch.full_like(uv, -1e9))


def carried_frames(pred: WindowPrediction, overlap: int) -> int:
    """Frames of `pred` the next window starts with: the overlap, or all frames after the last one the
    model placed when there are more (the stream broke inside the window: nothing matched across the
    jump), so the next window places them instead of leaving them behind as unregistered."""
    if overlap == 0:
        return 0
    placed = np.nonzero(registered_frames(pred))[0]
    unplaced_tail = len(pred) - 1 - int(placed[-1]) if len(placed) else 0
    return min(max(overlap, unplaced_tail), len(pred) - 1)


def _local_depth(pred: WindowPrediction, fit: WindowFit, frames: int | slice = slice(None)) -> torch.Tensor:
    """Depth of `frames` in the window's own frame: the model's depth times the layer scales."""
    return pred.depth[frames] if fit.scale_map is None else pred.depth[frames] * fit.scale_map[frames]


def _quantile_floor(values: torch.Tensor, q: float) -> torch.Tensor:
    """The least value v with `values >= v` selecting exactly what `values >= torch.quantile(values, q)` does
    (the element above the interpolated position): a selection, not the full sort quantile makes (3x faster)."""
    flat = values.flatten().float()
    return torch.kthvalue(flat, math.ceil(q * (flat.numel() - 1)) + 1).values


def _default_voxel(first: AlignedWindow) -> float:
    depth = first.depth[:, ::4, ::4][first.conf[:, ::4, ::4] > 0]  # every 16th pixel: plenty for a median
    return VOXEL_PER_DEPTH * (float(depth.median()) if depth.numel() else 1.0)


def _same(a: Sim3, b: Sim3, tol: float = 1e-9) -> bool:
    return bool(np.allclose(a.matrix(), b.matrix(), atol=tol * max(1.0, abs(a.s))))
