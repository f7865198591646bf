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
from dataclasses import dataclass, field, replace
from typing import Any

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
from recon.fusion import MapConfig, VoxelMap, default_voxel, select_pixels
from recon.geometry import invert_rigid
from recon.loops import LoopCloser, LoopGate
from recon.places import PlaceConfig
from recon.posegraph import EdgeNoise, PoseGraph, PoseGraphConfig
from recon.stage_clock import StageClock
from recon.types import FrameMeta, Sim3, WindowPrediction

log = logging.getLogger(__name__)

# A causal model's consecutive steps share its anchor: tight, not exact (the graph needs some noise).
_ANCHORED_NOISE = EdgeNoise(rot_rad=1e-3, trans=1e-3, log_scale=1e-3)
# A restarted causal model: the new anchor sits at the last camera, its scale is its own.
_REANCHOR_NOISE = EdgeNoise(rot_rad=np.radians(1.0), trans=0.05, log_scale=0.5)


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
        g = config.graph
        self.loop_closer = LoopCloser(g.places, g.loop_gate, g.keyframe_every) if g.loop_closure else None
        self._prev_tail: AlignedWindow | None = None  # the last window's shared frames, in its own frame
        self._carry = 0  # frames the last window shares with the next (carried_frames)
        self._windows = 0
        self._reanchor = False
        self._frames: list[_Frame] = []  # final frames, in stream order
        self._pending: list[_Frame] = []  # the last window's tail: final when the next window joins
        self._last: AlignedWindow | None = None
        self._estimates: dict[int, Sim3] = {}
        # Breaks: windows whose join found no shared view (the edge to k - 1 is a guess). Until a loop edge
        # ties the windows from `_detached_from` on to the ones before it, their keyframes relocalise.
        self._breaks: set[int] = set()
        self._detached_from: int | None = None
        self.clock = StageClock("join", "graph", "places", "map")

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
        with self.clock("join"):
            shared, fit, noise = self._join(pred, layers)
            edge = fit.sim  # prev_from_cur
            if fit.report.path == "pose_fallback":
                self._breaks.add(k)
                self._detached_from = k
            # The window's shared tail in its own frame (layer scales applied): what the next window joins to.
            self._carry = carried_frames(pred, self.overlap)
            S = len(pred)
            self._prev_tail = (
                place_window(pred, fit, Sim3.identity(), slice(S - self._carry, S)) if self._carry else None
            )

        with self.clock("graph"):
            self.graph.add_node(k, self._estimates.get(k - 1, Sim3()) @ edge if k else Sim3())
            if k:
                self.graph.add_edge(k - 1, k, edge, noise)
            self.graph.optimize()
        self._windows += 1
        window_from_cam = invert_rigid(pred.cam_from_world.double().cpu().numpy())  # [S,4,4] in the window's own frame

        loop = None
        if self.loop_closer is not None:
            loop, self._detached_from = self.loop_closer.close(
                k,
                pred,
                fit,
                window_from_cam,
                colors,
                shared,
                self.graph,
                self._breaks,
                self._detached_from,
                self.clock,
            )
        with self.clock("graph"):
            before = self._estimates
            self._estimates = self.graph.estimates()
            moved = {w: s for w, s in self._estimates.items() if w in before and not _same(s, before[w])}

        with self.clock("map"):
            world = place_window(pred, fit, self._estimates[k])  # the one full-resolution pass over the points
        final = self._record(k, world, window_from_cam, meta, shared)
        with self.clock("map"):
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
    def loops(self) -> list[dict[str, Any]]:
        """The loops closed so far (window, matched window, inliers)."""
        return self.loop_closer.loops if self.loop_closer is not None else []

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
        cfg = self.config.map
        if self.map is None:
            self.map = VoxelMap(voxel_m=cfg.voxel or default_voxel(world), max_points=cfg.max_points)
        if moved:
            self.map.move_windows({w: s.matrix() @ before[w].inverse().matrix() for w, s in moved.items()})
        world_from_cam = invert_rigid(world.cam_from_world.double().numpy())
        points, conf = select_pixels(world, new, K, cfg)
        s = cfg.pixel_stride
        self.map.integrate(points, colors[new, ::s, ::s], conf, camera_centre=world_from_cam[-1, :3, 3], window=k)
        return conf


def carried_frames(pred: WindowPrediction, overlap: int) -> int:
    """Frames of `pred` the next window starts with: the overlap, or all frames after the last one the
    model placed when there are more (the stream broke inside the window: nothing matched across the
    jump), so the next window places them instead of leaving them behind as unregistered."""
    if overlap == 0:
        return 0
    placed = np.nonzero(registered_frames(pred))[0]
    unplaced_tail = len(pred) - 1 - int(placed[-1]) if len(placed) else 0
    return min(max(overlap, unplaced_tail), len(pred) - 1)


def _same(a: Sim3, b: Sim3, tol: float = 1e-9) -> bool:
    return bool(np.allclose(a.matrix(), b.matrix(), atol=tol * max(1.0, abs(a.s))))
