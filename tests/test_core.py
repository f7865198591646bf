"""The reconstruction core (recon/core.py) and the registration strategies: a loop planted in a rendered
drive is found and closed online (trajectory rewritten while the run goes, map moved with it); an overlap
that measures no scale keeps it; a new model kind plugs in through its registry entry alone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from recon.core import CoreConfig, GraphConfig, Reconstruction, carried_frames
from recon.datasets.synthetic import SyntheticSource
from recon.eval.trajectory import absolute_trajectory_error
from recon.fusion import _quantile_floor, confident_pixels
from recon.geometry import invert_rigid
from recon.models import base
from recon.outputs import OutputConfig
from recon.pipeline import Pipeline, PipelineConfig
from recon.places import PlaceConfig
from recon.pose_fit import sim3_from_poses
from recon.trajectory_io import read_kitti
from recon.types import Frame, ResizeMap, WindowPrediction
from recon.windows import ScheduleConfig, WindowScheduler

LOOP_PLACES = PlaceConfig(exclude_recent=3, min_window_gap=3, vocabulary_keyframes=4)  # a short drive: few keyframes


class DriftingOracle:
    """Ground-truth geometry per window, in the window's first camera at a random scale, warped so that
    every window bends the path a little (a yaw and a scale creep per frame): the joins compose the bends
    into drift, as a real model's small errors do."""

    name = "oracle"

    def __init__(self, yaw_deg_per_frame: float = 0.15, scale_per_frame: float = 0.002, seed: int = 0) -> None:
        self.yaw, self.creep = np.radians(yaw_deg_per_frame), scale_per_frame
        self.rng = np.random.default_rng(seed)

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        S, (H, W) = len(frames), frames[0].hw
        K = frames[0].K
        gt = np.stack([f.gt_cam_from_world for f in frames])
        window_from_cam = np.stack([gt[0] @ invert_rigid(g) for g in gt])  # frame 0's camera is the window frame
        s0 = float(np.exp(self.rng.uniform(-1, 1)))
        u, v = np.meshgrid(np.arange(W), np.arange(H))
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)
        cams, points, depths = [], [], []
        for j in range(S):
            warp = np.eye(4)
            warp[:3, :3] = Rotation.from_euler("y", self.yaw * j).as_matrix()
            k = s0 * (1 + self.creep) ** j
            T = warp @ window_from_cam[j]
            T[:3, 3] *= k
            d = frames[j].gt_depth_m * k
            cams.append(invert_rigid(T))
            points.append(rays * d[..., None] @ T[:3, :3].T + T[:3, 3])
            depths.append(d)
        depth = torch.from_numpy(np.stack(depths)).float()
        conf = (depth > 0).float()
        return WindowPrediction(
            [f.index for f in frames],
            depth,
            conf,
            torch.from_numpy(np.stack(points)).float(),
            conf.clone(),
            torch.from_numpy(np.stack(cams)).float(),
            torch.from_numpy(np.repeat(K[None], S, 0)).float(),
            ResizeMap.identity((H, W)),
        )


def loop_drive() -> list[Frame]:
    return list(SyntheticSource("street", num_frames=140, loop_frames=120, loop=True, seed=3))  # 20 m past the start


class JumpingOracle(DriftingOracle):
    """The stream jumps before frame `jump` (frames dropped): like the classical model, a window holding
    frames from both sides places only those before the jump (nothing matches across it)."""

    def __init__(self, jump: int, **drift: float) -> None:
        super().__init__(**drift)
        self.jump = jump

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        pred = super().infer(frames)
        placed = np.array([f.index for f in frames]) < self.jump
        if placed[0] and not placed.all():
            pred.depth_conf[~placed] = 0.0
            pred.points_conf[~placed] = 0.0
            pred.cam_from_world[~placed] = torch.eye(4)  # a placeholder, as the classical model leaves it
            pred.registered = placed
        return pred


def run_core(
    frames: list[Frame], loop_closure: bool, model: DriftingOracle | None = None
) -> tuple[Reconstruction, list[int]]:
    core = Reconstruction(3, CoreConfig(graph=GraphConfig(loop_closure=loop_closure, places=LOOP_PLACES)))
    model, scheduler, rewrites = model or DriftingOracle(), WindowScheduler(10, 3), []

    def add(w: list[Frame]) -> None:
        pred = model.infer(w)
        update = core.add(pred, [f.meta for f in w], np.stack([f.image_rgb for f in w]))
        if update.trajectory is not None:
            rewrites.append(update.window)
        if (n := carried_frames(pred, 3)) > 3:
            scheduler.carry(n)

    for f in frames:
        if (w := scheduler.push(f)) is not None:
            add(w)
    if (w := scheduler.finish()) is not None:
        add(w)
    core.finish()
    return core, rewrites


def ate(core: Reconstruction, frames: list[Frame]) -> float:
    traj = core.trajectory()
    est = np.stack([p.world_from_cam for p in traj])
    by_index = {f.index: f for f in frames}
    gt = np.stack([invert_rigid(by_index[p.index].gt_cam_from_world) for p in traj])
    return absolute_trajectory_error(est, gt).rmse


@pytest.fixture(scope="module")
def drive() -> list[Frame]:
    return loop_drive()


def test_a_planted_loop_is_found_and_closed_online(drive: list[Frame]) -> None:
    closed, rewrites = run_core(drive, loop_closure=True)
    open_, _ = run_core(drive, loop_closure=False)
    assert [p.index for p in closed.trajectory()] == list(range(len(drive)))  # every frame once, in order
    assert closed.loops, "the drive returns to its start: a loop must be found"
    first = closed.loops[0]
    assert first["match_window"] <= 2 and first["window"] >= len(closed) - 3  # the end matched the start
    assert rewrites and rewrites[0] == first["window"]  # the corrected trajectory came with that window
    a_closed, a_open = ate(closed, drive), ate(open_, drive)
    assert a_closed < a_open / 2, (a_closed, a_open)
    # The map moved with its windows: the last window's points sit on the first window's again.
    xyz, _, _ = closed.map.points()
    assert len(xyz) and np.isfinite(xyz).all()


def test_without_loops_the_graph_is_the_chain_of_joins(drive: list[Frame]) -> None:
    core, rewrites = run_core(drive[:40], loop_closure=True)
    assert not core.loops and not rewrites
    # Each window's node is its predecessor's composed with the join: the trajectory is continuous.
    traj = np.stack([p.world_from_cam for p in core.trajectory()])
    steps = np.linalg.norm(np.diff(traj[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 3 * np.median(steps)


def after_jump_error_m(core: Reconstruction, frames: list[Frame], jump: int) -> float:
    """Median camera-centre error of the frames after the jump, in the frame of a Sim(3) fitted to the
    frames before it: where the map puts the new stretch relative to the old one."""
    traj = core.trajectory()
    by_index = {f.index: f for f in frames}
    est = np.stack([p.world_from_cam for p in traj])
    gt = np.stack([invert_rigid(by_index[p.index].gt_cam_from_world) for p in traj])
    before = np.array([p.index < jump for p in traj])
    sim = sim3_from_poses(est[before], gt[before])
    centres = sim.s * est[:, :3, 3] @ sim.R.T + sim.t
    return float(np.median(np.linalg.norm(centres - gt[:, :3, 3], axis=1)[~before]))


def test_a_break_in_the_stream_is_relocalised_against_the_map(drive: list[Frame]) -> None:
    """Ten frames (10 m) dropped: no window places frames on both sides of the jump, so the next window
    starts after it and its join is a loose guess. The keyframes after the break query every keyframe
    before it; the first verified view ties the new stretch back onto the map, the trajectory rewritten."""
    jump, drift = 60, {"yaw_deg_per_frame": 0.02, "scale_per_frame": 0.0005}
    jumped = drive[:50] + drive[jump:]
    relocalised, rewrites = run_core(jumped, loop_closure=True, model=JumpingOracle(jump, **drift))
    lost, _ = run_core(jumped, loop_closure=False, model=JumpingOracle(jump, **drift))
    assert [p.index for p in relocalised.trajectory()] == [f.index for f in jumped]  # every frame once, in order
    assert all(
        p.registered for p in relocalised.trajectory()
    )  # the frames past the jump were placed by the next window
    (broken,) = relocalised.breaks
    first = relocalised.loops[0]
    assert first["match_window"] < broken <= first["window"] and rewrites[0] == first["window"]
    e_relocalised, e_lost = after_jump_error_m(relocalised, jumped, jump), after_jump_error_m(lost, jumped, jump)
    assert e_relocalised < 1.0 and e_lost > 10.0, (e_relocalised, e_lost)  # 1 m per frame; the guess misses the jump


def test_the_pipeline_rewrites_the_trajectory_while_it_runs(tmp_path: Path, drive: list[Frame]) -> None:
    class Source:
        name, has_ground_truth, intrinsics = "loop", True, drive[0].K

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(drive)

        def __len__(self) -> int:
            return len(drive)

    seen: list[tuple[int, int]] = []

    def on_window(state, voxel_map) -> None:  # type: ignore[no-untyped-def]
        if state.trajectory_rewrites and not seen:  # the first rewrite: the file already holds it
            seen.append((state.windows, len(read_kitti(tmp_path / "trajectory.kitti"))))

    cfg = PipelineConfig(
        ScheduleConfig(window=10, overlap=3, keyframes=False),
        CoreConfig(graph=GraphConfig(places=LOOP_PLACES)),
        OutputConfig(depth_every=0),
    )
    state = Pipeline(Source(), DriftingOracle(), tmp_path, cfg, on_window=on_window).run()  # type: ignore[arg-type]
    assert state.status == "finished" and state.loops and seen
    windows_at_rewrite, rows = seen[0]
    assert windows_at_rewrite <= state.windows and 0 < rows < len(drive)  # rewritten before the run's end
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["loop_closures"] >= 1 and summary["trajectory_rewrites"] >= 1
    assert len(read_kitti(tmp_path / "trajectory.kitti")) == len(drive)


class ToyAnchored:
    """A model kind the pipeline has never heard of: causal steps in the first camera's frame."""

    name = "toy"

    def __init__(self) -> None:
        self.resets = 0
        self.first: np.ndarray | None = None

    def reset(self) -> None:
        self.resets += 1
        self.first = None

    def step(self, frames: Sequence[Frame]) -> WindowPrediction:
        if self.first is None:
            self.first = frames[0].gt_cam_from_world
        S, (H, W) = len(frames), frames[0].hw
        cams = np.stack([f.gt_cam_from_world @ invert_rigid(self.first) for f in frames])
        ones = torch.ones(S, H, W)
        return WindowPrediction(
            [f.index for f in frames],
            ones,
            ones,
            torch.zeros(S, H, W, 3),
            ones,
            torch.from_numpy(cams).float(),
            torch.from_numpy(np.repeat(frames[0].K[None], S, 0)).float(),
            ResizeMap.identity((H, W)),
        )


def test_a_new_model_kind_needs_only_its_registry_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from recon.cli import main

    module = types.ModuleType("toy_models")
    module.ToyAnchored = ToyAnchored  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "toy_models", module)
    monkeypatch.setitem(base.MODELS, "toy", base.ModelEntry("toy_models:ToyAnchored", "anchored"))
    assert (
        main(
            [
                "run",
                "synthetic:street",
                "--max-frames",
                "12",
                "--model",
                "toy",
                "--window",
                "3",
                "--no-keyframes",
                "--out",
                str(tmp_path),
                "--depth-every",
                "0",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["registration"] == "anchored" and summary["alignment_paths"] == {"anchored": 4}
    world_from_cam = read_kitti(tmp_path / "trajectory.kitti")
    gt = read_kitti(tmp_path / "ground_truth.kitti")
    np.testing.assert_allclose(world_from_cam, gt, atol=1e-4)  # anchored steps: nothing re-aligned


def test_the_map_keeps_the_same_confident_pixels_as_the_interpolated_quantile() -> None:
    # The fused pixels are those at or above the window's confidence quantile; a selection replaced the sort.
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 10, 1001, 50_000):
        for values in (torch.rand(n, generator=gen), torch.randint(0, 5, (n,), generator=gen).float()):
            for q in (0.0, 0.25, 0.5, 0.9, 1.0):
                exact = values.double() >= torch.quantile(values.double(), q)
                assert torch.equal(values >= _quantile_floor(values, q), exact), (n, q)


def test_the_map_takes_the_confident_half_of_the_pixels_with_depth() -> None:
    # Two thirds of the window without depth (sky, a blank background): the quantile is over the rest.
    conf = torch.zeros(3, 30, 40)
    conf[:, :10] = torch.linspace(0.01, 1.0, 3 * 10 * 40).reshape(3, 10, 40)
    keep = confident_pixels(conf, 0.5)
    assert not keep[:, 10:].any() and keep.sum() == 600 and bool((conf[keep] >= 0.5).all())
    assert not confident_pixels(torch.zeros(2, 4, 4), 0.5).any()


def test_depth_edges_keep_slanted_planes_and_find_steps() -> None:
    from recon.fusion import depth_edges

    v, u = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    road = 1.0 / (0.05 + 0.01 * v + 0.002 * u)  # a plane seen at a grazing angle: depth 3..20 over the image
    assert not depth_edges(road[None], 0.1, 5).any()
    step = torch.where(u < 30, torch.full_like(u, 5.0), torch.full_like(u, 20.0))
    step[3, 7] = 0.0  # no depth
    edges = depth_edges(step[None], 0.1, 5)[0]
    assert edges[:, 28:32].all()  # the two columns either side of the step
    edges[:, 28:32] = False
    # the pixel without depth, and those whose neighbour two pixels away it is (the border rows have none above)
    assert edges.nonzero().tolist() == [[3, 5], [3, 7], [3, 9], [5, 7]]


def test_the_core_never_writes_into_a_prediction(drive: list[Frame]) -> None:
    """`recon run --workers` hands the core predictions whose tensors are Ray's read-only buffers: joins,
    graph, loop closure and map only read a prediction."""

    seen: list[tuple[WindowPrediction, dict[str, torch.Tensor]]] = []

    class Recording(DriftingOracle):
        def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
            pred = super().infer(frames)
            names = ("depth", "depth_conf", "points", "points_conf", "cam_from_world", "K")
            seen.append((pred, {n: getattr(pred, n).clone() for n in names}))
            return pred

    core, _ = run_core(drive, loop_closure=True, model=Recording())
    assert core.loops  # the loop was closed: every stage ran
    for pred, before in seen:
        for name, tensor in before.items():
            assert torch.equal(getattr(pred, name), tensor), name
