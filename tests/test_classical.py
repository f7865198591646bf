"""The embedded classical model: contract, accuracy on rendered windows, degenerate windows, determinism.
Tests use loose bounds; bench/bench_classical.py holds the real targets."""

from __future__ import annotations

import dataclasses
from functools import cache

import cv2
import numpy as np
import pytest
import torch

from recon.datasets.synthetic import SyntheticSource
from recon.errors import ReconError
from recon.eval.window import depth_abs_rel_scaled, relative_pose_errors
from recon.geometry import rotation_angle_deg, rotation_from_axis_angle
from recon.models.base import create_model
from recon.models.classical import ClassicalModel
from recon.models.classical.model import FLAG_LOW_PARALLAX, FLAG_TOO_FEW_TRACKS
from recon.types import Frame, WindowPrediction


@cache
def rendered_window(scene: str, start: int = 0, size: int = 12) -> tuple[Frame, ...]:
    frames = list(SyntheticSource(scene=scene, num_frames=start + size, seed=3))
    return tuple(frames[start:])


@cache
def prediction(scene: str) -> WindowPrediction:
    return ClassicalModel().infer(rendered_window(scene))


def gt_poses(frames) -> np.ndarray:
    return np.stack([f.gt_cam_from_world for f in frames])


@pytest.mark.parametrize("scene", ["street", "room"])
def test_outputs_satisfy_the_contract(scene: str) -> None:
    frames = rendered_window(scene)
    pred = prediction(scene)
    S, (H, W) = len(frames), frames[0].hw
    assert pred.frame_indices == [f.index for f in frames]
    assert pred.depth.shape == (S, H, W) and pred.points.shape == (S, H, W, 3)
    assert not pred.metric and pred.flags == []
    assert torch.allclose(pred.cam_from_world[0], torch.eye(4), atol=1e-6)  # window frame = first camera
    # points are the depth back-projected through K and the poses
    s, v, u = 5, H // 2, W // 3
    K = pred.K[s].double().numpy()
    ray = np.linalg.inv(K) @ np.array([u, v, 1.0])
    x_cam = ray * float(pred.depth[s, v, u])
    x_world = np.linalg.inv(pred.cam_from_world[s].double().numpy()) @ np.append(x_cam, 1.0)
    np.testing.assert_allclose(pred.points[s, v, u].double().numpy(), x_world[:3], rtol=1e-4, atol=1e-4)
    assert set(pred.info["timings"]) >= {"tracking_s", "pose_s", "ba_s", "dense_s", "packing_s"}
    assert all(pred.registered)


@pytest.mark.parametrize("scene", ["street", "room"])
def test_poses_and_depth_are_accurate_on_rendered_windows(scene: str) -> None:
    frames = rendered_window(scene)
    pred = prediction(scene)
    rot_deg, dir_deg = relative_pose_errors(pred.cam_from_world.double().numpy(), gt_poses(frames))
    assert np.median(rot_deg) < 0.5
    assert np.nanmedian(dir_deg) < 4.0
    conf = pred.depth_conf.numpy()
    gt_depth = np.stack([f.gt_depth_m for f in frames])
    abs_rel, _ = depth_abs_rel_scaled(pred.depth.numpy(), gt_depth, conf > np.median(conf))
    assert abs_rel < 0.08


def test_confidence_ranks_depth_error() -> None:
    """Honest confidence: the most confident pixels are more accurate than the least confident ones."""
    frames = rendered_window("street")
    pred = prediction("street")
    depth, conf = pred.depth.numpy(), pred.depth_conf.numpy()
    gt = np.stack([f.gt_depth_m for f in frames])
    _, scale = depth_abs_rel_scaled(depth, gt, conf > np.median(conf))
    err = np.abs(scale * depth - gt) / np.maximum(gt, 1e-6)
    valid = gt > 0
    hi = valid & (conf >= np.quantile(conf[valid], 0.75))
    lo = valid & (conf <= np.quantile(conf[valid], 0.25))
    assert np.median(err[hi]) < 0.5 * np.median(err[lo])
    sky = gt == 0  # nothing there: must not be trusted
    assert np.mean(conf[sky] > 0.2) < 0.02


def test_one_flow_pair_gives_both_partners_depth() -> None:
    """Frame j's depth, derived from the two flows computed for frame i against j, is as accurate and as
    complete as the depth computed with j as the reference frame (which costs two more flows)."""
    from recon.models.classical.dense import DenseConfig, pair_depths

    frames = rendered_window("street")
    i, j = 3, 6
    cfg = DenseConfig()
    dis = cv2.DISOpticalFlow_create(cfg.dis_preset)
    gray = [cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2GRAY) for f in (frames[i], frames[j])]
    poses = gt_poses(frames)
    j_from_i = poses[j] @ np.linalg.inv(poses[i])
    _, derived = pair_depths(gray[0], gray[1], j_from_i, frames[0].K, cfg, dis, both=True)
    direct, none = pair_depths(gray[1], gray[0], np.linalg.inv(j_from_i), frames[0].K, cfg, dis, both=False)
    assert derived is not None and none is None
    gt = frames[j].gt_depth_m
    errors, coverage = [], []
    for z, conf in (derived, direct):
        confident = (conf > 0.3) & (gt > 0)
        errors.append(float(np.median(np.abs(z[confident] - gt[confident]) / gt[confident])))
        coverage.append(float(confident.mean()))
    assert errors[1] < 0.05  # the reference itself is sound
    assert errors[0] < 1.3 * errors[1]
    assert coverage[0] > 0.8 * coverage[1]


def test_the_next_window_reuses_the_overlaps_flows_and_gets_the_same_depth() -> None:
    """Consecutive windows share their overlap frames' partner flows. A flow depends on the two images and
    the snapped pre-warp only, so the reused flows give exactly the depth computing them again would."""
    frames = list(SyntheticSource(scene="street", num_frames=16, seed=3))
    first, second = frames[:10], frames[6:]  # 4 shared frames: 3 shared adjacent pairs
    shared, alone = ClassicalModel(), ClassicalModel(flow_cache_mb=0)
    shared.infer(first)
    before = shared._flows.hits
    reused = shared.infer(second)
    assert shared._flows.hits - before >= 2
    computed = alone.infer(second)
    assert torch.equal(reused.depth, computed.depth) and torch.equal(reused.depth_conf, computed.depth_conf)


def test_unknown_intrinsics_are_guessed_and_reported() -> None:
    frames = [dataclasses.replace(f, K=None) for f in rendered_window("room")]
    pred = ClassicalModel().infer(frames)
    assert pred.info["intrinsics_known"] is False
    true_f = rendered_window("room")[0].K[0, 0]
    assert abs(pred.info["focal_px"] - true_f) / true_f < 0.1  # refined by the bundle adjustment
    rot_deg, _ = relative_pose_errors(pred.cam_from_world.double().numpy(), gt_poses(frames))
    gt_rel = gt_poses(frames) @ np.linalg.inv(gt_poses(frames)[0])
    gt_rot_deg = rotation_angle_deg(gt_rel[1:, :3, :3])
    assert np.median(rot_deg / gt_rot_deg) < 0.1  # a focal error scales rotation magnitudes alike


def _assert_degenerate(pred: WindowPrediction, flag: str) -> None:
    assert flag in pred.flags
    assert float(pred.depth_conf.max()) == 0.0 and float(pred.points_conf.max()) == 0.0
    for t in (pred.depth, pred.points, pred.cam_from_world):
        assert torch.isfinite(t).all()


def test_pure_rotation_gives_rotations_and_no_depth() -> None:
    base = rendered_window("room")[0]
    K = base.K
    H, W = base.hw
    rotations = [rotation_from_axis_angle(np.array([0.0, 0.01 * i, 0.004 * i])) for i in range(10)]
    frames = [
        Frame(i, 0.1 * i, cv2.warpPerspective(base.image_rgb, K @ R @ np.linalg.inv(K), (W, H)), K=K)
        for i, R in enumerate(rotations)
    ]
    pred = ClassicalModel().infer(frames)
    _assert_degenerate(pred, FLAG_LOW_PARALLAX)
    est = pred.cam_from_world.double().numpy()
    for i in (3, 6):
        assert np.degrees(np.arccos(np.clip((np.trace(est[i, :3, :3] @ rotations[i].T) - 1) / 2, -1, 1))) < 0.3


def test_parked_camera_and_textureless_walls_are_flagged() -> None:
    base = rendered_window("street")[0]
    rng = np.random.default_rng(0)
    parked = [
        Frame(
            i,
            0.1 * i,
            np.clip(base.image_rgb + rng.normal(0, 1.5, base.image_rgb.shape), 0, 255).astype(np.uint8),
            K=base.K,
        )
        for i in range(8)
    ]
    _assert_degenerate(ClassicalModel().infer(parked), FLAG_LOW_PARALLAX)
    wall = [Frame(i, 0.1 * i, np.full((96, 320, 3), 128, np.uint8)) for i in range(8)]
    _assert_degenerate(ClassicalModel().infer(wall), FLAG_TOO_FEW_TRACKS)


def test_duplicate_and_dropped_frames_keep_a_consistent_window() -> None:
    frames = list(rendered_window("street", size=14))
    shaky = frames[:4] + [frames[3], frames[3]] + frames[4:7] + frames[8:]  # two duplicates, one dropped frame
    shaky = [dataclasses.replace(f, index=i) for i, f in enumerate(shaky)]
    pred = ClassicalModel().infer(shaky)
    assert all(pred.registered)
    rot_deg, dir_deg = relative_pose_errors(pred.cam_from_world.double().numpy(), gt_poses(shaky))
    assert np.median(rot_deg) < 0.3 and np.nanmedian(dir_deg) < 3.0
    dup = pred.cam_from_world[3:6].double().numpy()
    np.testing.assert_allclose(dup[1], dup[0], atol=2e-3)  # the same image gets the same pose


def test_deterministic() -> None:
    frames = rendered_window("room")
    a, b = ClassicalModel(seed=7).infer(frames), ClassicalModel(seed=7).infer(frames)
    assert torch.equal(a.cam_from_world, b.cam_from_world)
    assert torch.equal(a.depth, b.depth) and torch.equal(a.depth_conf, b.depth_conf)


def test_the_model_holds_torch_and_opencv_to_one_thread_until_closed() -> None:
    """The core's torch work and the model's OpenCV calls run beside the model's other threads: a pool on top
    only fights them. Closed, the model hands back the counts it found."""
    import threading

    cv_original = cv2.getNumThreads()
    cv2.setNumThreads(2)  # two even on a one-core machine: the model's one must show
    try:
        before = torch.get_num_threads(), cv2.getNumThreads()
        model = ClassicalModel()
        try:
            seen: list[tuple[int, int]] = [(torch.get_num_threads(), cv2.getNumThreads())]
            worker = threading.Thread(target=lambda: seen.append((torch.get_num_threads(), cv2.getNumThreads())))
            worker.start()
            worker.join()
            assert seen == [(1, 1), (1, 1)]
        finally:
            model.close()
        assert (torch.get_num_threads(), cv2.getNumThreads()) == before
    finally:
        cv2.setNumThreads(cv_original)


def test_blas_stays_on_one_thread_whichever_thread_infers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline infers windows on two worker threads, in whatever order they come free. BLAS must run on
    one thread in every window, whichever thread infers it: on two, a Schur complement's sums split
    differently and a run's trajectory depended on thread timing."""
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    import recon.models.classical.model as model_module

    seen: list[list[int]] = []
    solve = model_module.solve_poses

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"])
        return solve(*args, **kwargs)

    monkeypatch.setattr(model_module, "solve_poses", recording)
    frames = rendered_window("room")[:6]
    model = ClassicalModel()
    first_done, second_done = threading.Event(), threading.Event()

    # The first worker stays alive while the second infers: OpenBLAS then ignored a limit the second set.
    def first() -> None:
        model.infer(frames)
        first_done.set()
        second_done.wait(60)

    def second() -> None:
        first_done.wait(60)
        model.infer(frames)
        second_done.set()

    try:
        workers = [threading.Thread(target=first), threading.Thread(target=second)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        with threadpool_limits(limits=1, user_api="blas"):  # other code on the main thread taking a limit
            pass
        worker = threading.Thread(target=model.infer, args=(frames,))
        worker.start()
        worker.join()
    finally:
        model.close()
    assert len(seen) == 3 and all(n and set(n) == {1} for n in seen), seen  # every BLAS library, every window


def test_registry_and_errors() -> None:
    assert isinstance(create_model("classical"), ClassicalModel)
    with pytest.raises(ReconError, match="unknown model 'nope'; choose one of: classical"):
        create_model("nope")
    one = rendered_window("room")[:1]
    with pytest.raises(ReconError, match="at least 2 frames"):
        ClassicalModel().infer(one)


def test_tracks_survive_views_that_roll_between_frames() -> None:
    """An orbit rolls the view 10-30° a frame, which KLT cannot follow: the ORB rescue must keep tracks
    running through several such steps, at the right positions."""
    from recon.models.classical.tracks import track_window

    base = cv2.cvtColor(rendered_window("room")[0].image_rgb, cv2.COLOR_RGB2GRAY)
    H, W = base.shape
    warps = [np.vstack([cv2.getRotationMatrix2D((W / 2, H / 2), 25.0 * i, 1.0), [0, 0, 1]]) for i in range(4)]
    gray = [cv2.warpPerspective(base, M, (W, H)) for M in warps]
    tracks = track_window(gray)
    vis = tracks.visible
    long = vis.all(axis=1)  # seen in all four frames: three rolled steps chained
    assert long.sum() >= 30
    for s in range(1, 4):  # each position is where the roll maps the track's first position
        expected = cv2.perspectiveTransform(tracks.uv_px[long, 0][:, None].astype(np.float64), warps[s]).reshape(-1, 2)
        assert np.median(np.linalg.norm(tracks.uv_px[long, s] - expected, axis=1)) < 1.0


def _assert_even_steps(scene: str, seed: int, first: int) -> None:
    """A 20-frame window of a stress scene is registered whole, with steps of one length (as the scene's
    are) and accurate rotations."""
    from recon.datasets.synthetic.stress import source
    from recon.geometry import invert_rigid
    from recon.pose_fit import sim3_from_poses

    src = source(scene, seed=seed)
    frames = [src.render_frame(i) for i in range(first, first + 20)]
    pred = ClassicalModel().infer(frames)
    assert all(pred.registered)
    est = invert_rigid(pred.cam_from_world.double().numpy())
    gt = np.stack([invert_rigid(f.gt_cam_from_world) for f in frames])
    sim = sim3_from_poses(est, gt)
    steps = (
        sim.s
        * np.linalg.norm(np.diff(est[:, :3, 3], axis=0), axis=1)
        / np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    )
    assert steps.max() / steps.min() < 1.3
    rot_deg, _ = relative_pose_errors(pred.cam_from_world.double().numpy(), gt_poses(frames))
    assert np.median(rot_deg) < 1.0


def test_a_bare_wall_does_not_skew_the_initial_pair() -> None:
    """A plain wall fills half the view while the road curves: frame 0 shares ~60 tracks, bunched in one
    corner, with frame 8, and they fit a wrong essential matrix (18 deg off, with a spurious 23 deg parallax)
    as well as the true one. Initialised on it, the window came out 2.5x longer per step in its first half
    than in its second. The frames between the pair must confirm its rotation."""
    _assert_even_steps("low_texture", seed=7, first=165)


def test_an_exposure_jump_does_not_skew_the_initial_pair() -> None:
    """The image doubles in brightness between frames 2 and 3 of the window: the pair must come from the
    frames after the jump, and there the adjacent pair (3, 4) fits a wrong essential matrix (3.6 deg off,
    translation 55 deg off) with a spurious 3.7 deg parallax that outscores every honest pair. No frame
    lies between an adjacent pair to check it: a pair that can be checked goes first."""
    _assert_even_steps("exposure", seed=13, first=84)


def _cut_tracks_at(step: int):
    """A track_window that loses every track at `step` -> `step` + 1, as KLT does across a hard wide-baseline
    step: each track crossing it is split in two, so no track ties the frames before to the frames after."""
    from recon.models.classical.tracks import Tracks, track_window

    def cut(gray, cfg, features=None):
        uv = track_window(gray, cfg, features).uv_px
        before, after = uv.copy(), uv.copy()
        before[:, step + 1 :] = np.nan
        after[:, : step + 1] = np.nan
        both = np.concatenate([before, after])
        return Tracks(both[(~np.isnan(both[..., 0])).sum(1) >= 2])

    return cut


def test_frames_beyond_a_lost_step_are_registered_by_keypoint_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracks reach no frame beyond the step with a triangulated point, so PnP fails for all of them; ORB
    keypoint tracks over such a frame and its registered neighbours must register it, and through it the
    rest, with accurate poses. Without the bridge they stay unregistered."""
    import recon.models.classical.model as model_module
    from recon.models.classical.bridge import BridgeConfig
    from recon.models.classical.sparse import FLAG_UNREGISTERED

    frames = rendered_window("room")
    monkeypatch.setattr(model_module, "track_window", _cut_tracks_at(5))
    off = ClassicalModel(bridge=BridgeConfig(neighbours=0)).infer(frames)
    assert FLAG_UNREGISTERED in off.flags and not any(off.registered[6:])
    pred = ClassicalModel().infer(frames)
    assert all(pred.registered) and pred.flags == []
    # The first frame beyond is bridged, and the next (its tracks have one registered view until then); the
    # frames after are placed by their own tracks again.
    assert pred.info["bridged"] == [6, 7]
    rot_deg, dir_deg = relative_pose_errors(pred.cam_from_world.double().numpy(), gt_poses(frames))
    assert np.max(rot_deg) < 1.0 and np.nanmedian(dir_deg) < 4.0


def test_frames_that_share_no_view_are_not_bridged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the step the window shows another scene: no keypoint matches can agree on a pose, and those
    frames must stay unregistered rather than be placed on chance matches."""
    import recon.models.classical.model as model_module
    from recon.models.classical.sparse import FLAG_UNREGISTERED

    room = rendered_window("room")
    other = list(SyntheticSource(scene="room", num_frames=200, seed=11))[-6:]
    frames = [dataclasses.replace(f, index=i, K=room[0].K) for i, f in enumerate(list(room[:6]) + other)]
    monkeypatch.setattr(model_module, "track_window", _cut_tracks_at(5))
    pred = ClassicalModel().infer(frames)
    assert all(pred.registered[:6]) and not any(pred.registered[6:])
    assert FLAG_UNREGISTERED in pred.flags and pred.info["bridged"] == []


def test_bundle_adjustment_keeps_points_across_every_step() -> None:
    # Under a fast pan the long tracks all sit in the middle of the window; the frames at its ends only
    # see short tracks. Every step must still keep its share of the BA's points (else the window bends).
    from recon.models.classical.sparse import ba_subset
    from recon.models.classical.tracks import Tracks

    S, rng = 10, np.random.default_rng(0)
    long = np.full((900, S, 2), np.nan)
    long[:, 3:8] = rng.uniform(0, 100, (900, 5, 2))  # 900 tracks over the middle five frames
    short = np.full((S * 40, S, 2), np.nan)
    for s in range(S):  # 40 two-frame tracks start in each frame
        short[s * 40 : (s + 1) * 40, s] = rng.uniform(0, 100, (40, 2))
        short[s * 40 : (s + 1) * 40, min(s + 1, S - 1)] = rng.uniform(0, 100, (40, 2))
    uv = np.concatenate([long, short])
    points = np.zeros((len(uv), 3))
    keep = ba_subset(Tracks(uv), points, max_points=600)
    assert keep.sum() == 600
    seen = ~np.isnan(uv[keep, :, 0])
    per_step = (seen[:, :-1] & seen[:, 1:]).sum(0)
    assert per_step.min() >= 600 // (2 * (S - 1)), per_step  # the steps at the ends too, not only the middle ones
    assert keep[:900].sum() >= 300  # the rest of the budget still goes to the long tracks


def test_bundle_adjustment_agrees_with_its_plain_dense_reference() -> None:
    """The per-observation bundle adjustment takes the same steps as the plain dense one in
    tests/support/plain_bundle.py: short tracks, outliers, a refined focal length."""
    from support.plain_bundle import plain_bundle_adjust

    from recon.geometry import make_rigid
    from recon.models.classical.bundle import BundleConfig, bundle_adjust

    rng = np.random.default_rng(1)
    T, S = 250, 9
    X = rng.uniform([-3, -2, 4], [3, 2, 9], (T, 3))
    poses = np.stack(
        [
            make_rigid(rotation_from_axis_angle(np.array([0.0, 0.03 * s, 0.01 * s])), np.array([-0.1 * s, 0, 0]))
            for s in range(S)
        ]
    )
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    Xc = (poses[None, :, :3, :3] * X[:, None, None, :]).sum(-1) + poses[None, :, :3, 3]
    uv = 500 * Xc[..., :2] / Xc[..., 2:] + np.array([320, 240]) + rng.normal(0, 0.3, (T, S, 2))
    uv[rng.random((T, S)) < 0.03] += 15.0  # outliers for the Huber weights
    first, length = rng.integers(0, S - 1, T), rng.integers(2, 6, T)
    visible = (np.arange(S) >= first[:, None]) & (np.arange(S) < (first + length)[:, None])
    start = poses.copy()
    start[1:, :3, 3] += rng.normal(0, 0.02, (S - 1, 3))
    X0 = X + rng.normal(0, 0.05, X.shape)
    cfg = BundleConfig(iterations=8, refine_focal=True)
    fast, plain = bundle_adjust(start, X0, uv, visible, K, cfg), plain_bundle_adjust(start, X0, uv, visible, K, cfg)
    assert fast.iterations == plain.iterations
    np.testing.assert_allclose(fast.cam_from_world, plain.cam_from_world, atol=1e-9)
    np.testing.assert_allclose(fast.points_w, plain.points_w, atol=1e-8)
    np.testing.assert_allclose(fast.K, plain.K, rtol=1e-10)
    assert fast.rms_px == pytest.approx(plain.rms_px, rel=1e-10)
    assert (
        fast.rms_px < 0.5 * bundle_adjust(start, X0, uv, visible, K, BundleConfig(iterations=0)).rms_px
    )  # it did adjust


def _drifting_window(noise_px: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 12-frame drive past a scene 15-30 m deep, tracked with noise_px of noise; a quarter of the tracks run
    the whole window and drift along an edge of their own, 0.5 px a frame (as measured on a rendered facade: 3-6 px
    off the true projection after 20 frames) -> (tracks uv [T,S,2], cam_from_world [S,4,4], K, drifting [T])."""
    from recon.geometry import make_rigid

    rng = np.random.default_rng(seed)
    S, T = 12, 900
    poses = np.stack(
        [
            make_rigid(rotation_from_axis_angle(np.array([0.0, 0.02 * s, 0.0])), np.array([0.0, 0.0, -0.5 * s]))
            for s in range(S)
        ]
    )
    X = rng.uniform([-8, -3, 15], [8, 2, 30], (T, 3))
    K = np.array([[500.0, 0, 320], [0, 500, 120], [0, 0, 1]])
    Xc = (poses[None, :, :3, :3] * X[:, None, None, :]).sum(-1) + poses[None, :, :3, 3]
    uv = 500 * Xc[..., :2] / Xc[..., 2:] + np.array([320, 120]) + rng.normal(0, noise_px, (T, S, 2))
    first, length = rng.integers(0, S - 2, T), rng.integers(3, 10, T)
    drifting = rng.random(T) < 0.25
    first[drifting], length[drifting] = 0, S
    visible = (np.arange(S) >= first[:, None]) & (np.arange(S) < (first + length)[:, None])
    way = rng.normal(size=(T, 2))
    way /= np.linalg.norm(way, axis=1, keepdims=True)  # each along its own edge
    uv += np.where(drifting[:, None], 0.5 * (np.arange(S)[None, :] - first[:, None]), 0.0)[..., None] * way[:, None]
    uv[~visible] = np.nan
    return uv, poses, K, drifting


@pytest.mark.parametrize("noise_px", [0.2, 0.6])
def test_bundle_adjustment_drops_drifting_tracks_and_keeps_noisy_ones(
    noise_px: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KLT tracks slide along edges (a curb, window frames): a track that drifts 5.5 px along the window must
    leave the bundle adjustment on clean video, while on noisier video (3x the error everywhere) the cull loosens
    with the noise instead of throwing away the good tracks."""
    import recon.models.classical.sparse as sparse_module
    from recon.models.classical.config import ClassicalConfig
    from recon.models.classical.tracks import Tracks

    uv, poses, K, drifting = _drifting_window(noise_px)
    used: list[np.ndarray] = []  # the tracks each bundle adjustment got, by their first observation

    def recording(cam_from_world, points_w, uv_px, visible, K, cfg):  # type: ignore[no-untyped-def]
        used.append(uv_px[np.arange(len(uv_px)), np.argmax(visible, 1)])
        return bundle_adjust(cam_from_world, points_w, uv_px, visible, K, cfg)

    bundle_adjust = sparse_module.bundle_adjust
    monkeypatch.setattr(sparse_module, "bundle_adjust", recording)
    cfg = ClassicalConfig()
    S = len(poses)
    sparse_module.refine(Tracks(uv.copy()), poses.copy(), np.ones(S, bool), K, cfg.bundle, cfg, rounds=2, iterations=10)
    first_obs = uv[np.arange(len(uv)), np.argmax(~np.isnan(uv[..., 0]), 1)]
    last_round = {tuple(p) for p in used[-1].round(6)}
    kept = np.array([tuple(p) in last_round for p in first_obs.round(6)])
    clean = ~drifting
    assert kept[clean].mean() > 0.9, kept[clean].mean()  # the good tracks stay, noisy or not
    if noise_px < 0.3:
        # Out on clean video (70% stayed at the old fixed 2.5-px cull); what drifts along its epipolar line
        # looks like depth, and stays.
        assert kept[drifting].mean() < 0.25, kept[drifting].mean()


def _klt_step_reference(gray_a, gray_b, p0, lk, cfg, H=None):  # type: ignore[no-untyped-def]
    """The plain forward-backward check: every point goes back, whatever its forward pass gave."""
    H_img, W_img = gray_b.shape
    if H is None:
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, p0, None, **lk)
        p0b, st0, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, p1, None, **lk)
    else:
        guess = cv2.perspectiveTransform(p0, H).astype(np.float32)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, p0, guess, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
        back = cv2.perspectiveTransform(p1, np.linalg.inv(H)).astype(np.float32)
        p0b, st0, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, p1, back, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
    p1 = p1.reshape(-1, 2)
    fb = np.linalg.norm(p0b.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
    inside = (p1[:, 0] >= 0) & (p1[:, 0] <= W_img - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= H_img - 1)
    return p1, (st1.ravel() == 1) & (st0.ravel() == 1) & (fb < cfg.fb_max_px) & inside


@pytest.mark.parametrize("guided", [False, True])
def test_klt_sends_back_only_what_went_forward_and_tracks_the_same(guided: bool) -> None:
    """Only the points the forward pass kept go back (LK solves each point alone): the tracks are the plain
    check's, to the bit, on a step that loses points off the image and in a turn."""
    from recon.models.classical.tracks import TrackerConfig, _detect, _klt_pass

    frames = list(SyntheticSource(scene="street", num_frames=40, seed=3))
    cfg = TrackerConfig()
    lk = dict(winSize=(15, 15), maxLevel=4, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    a, b = (cv2.cvtColor(frames[i].image_rgb, cv2.COLOR_RGB2GRAY) for i in (0, 6))  # 6 frames apart: many lost
    p0 = _detect(a, 1200, cfg, np.zeros((0, 2))).reshape(-1, 1, 2).astype(np.float32)
    H = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]) if guided else None
    p1, ok = _klt_pass(a, b, p0, lk, cfg, H)
    p1_ref, ok_ref = _klt_step_reference(a, b, p0, lk, cfg, H)
    assert 0.05 < ok.mean() < 0.95  # some points fail: the subset differs from the whole
    np.testing.assert_array_equal(ok, ok_ref)
    np.testing.assert_array_equal(p1[ok], p1_ref[ok])


def test_klt_tracks_the_road_where_its_true_geometry_puts_it() -> None:
    """KLT moves its patch as a whole, but the road's image motion grows with the square of its distance below
    the horizon: a 15-px patch ran the road's tracks 0.047 px a frame too far down on this drive and scattered
    all tracks by 0.12-0.13 px. With an 11-px patch first (and 15 px only for the points it loses): 0.026 px and
    0.10 px. Measured step by step against the rendered depth and poses, on a drive the benchmarks do not use
    (seed 5)."""
    from recon.datasets.synthetic.stress import source
    from recon.models.classical.tracks import track_window

    src = source("loop_1km", seed=5)
    frames = [src.render_frame(i) for i in range(24)]
    residual, road = [], []
    for a, b in zip(frames[:-1], frames[1:]):
        uv = track_window([cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2GRAY) for f in (a, b)]).uv_px
        p, q = uv[~np.isnan(uv[:, 1, 0]), 0], uv[~np.isnan(uv[:, 1, 0]), 1]
        depth, K = a.gt_depth_m, a.K
        u, v = np.round(p).astype(int).T
        H, W = depth.shape
        inside = (u >= 2) & (v >= 2) & (u < W - 2) & (v < H - 2)
        p, q, u, v = p[inside], q[inside], u[inside], v[inside]
        # Corners on one surface only: at a depth edge the rendered depth says nothing about a sub-pixel position.
        near = np.stack([depth[v + dv, u + du] for dv in range(-2, 3) for du in range(-2, 3)])
        smooth = (near.min(0) > 0) & (near.max(0) < 1.01 * near.min(0))
        p, q, z = p[smooth], q[smooth], depth[v, u][smooth]
        x_a = np.c_[(p - K[:2, 2]) / np.diag(K)[:2], np.ones(len(p))] * z[:, None]
        b_from_a = b.gt_cam_from_world @ np.linalg.inv(a.gt_cam_from_world)
        x_b = x_a @ b_from_a[:3, :3].T + b_from_a[:3, 3]
        residual.append(q - (x_b[:, :2] / x_b[:, 2:] * np.diag(K)[:2] + K[:2, 2]))
        road.append(p[:, 1] > K[1, 2] + 5)
    r, on_road = np.concatenate(residual), np.concatenate(road)
    assert on_road.sum() > 150 and len(r) > 1500
    assert abs(np.median(r[on_road, 1])) < 0.036  # px a frame, down the image
    spread = 1.4826 * np.median(np.abs(r - np.median(r, axis=0)), axis=0)
    assert spread.max() < 0.115


def test_orb_features_of_a_frame_are_detected_once_and_are_a_fresh_detection() -> None:
    """Two hard steps in a row share their middle frame's ORB features instead of detecting them twice."""
    from recon.models.classical.tracks import OrbFeatures

    gray = [cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2GRAY) for f in rendered_window("street")[:3]]
    orbs = OrbFeatures(gray)
    kp, desc = orbs(1, 800)
    assert orbs(1, 800)[1] is desc  # the second step's first frame: no new detection
    fresh_kp, fresh_desc = cv2.ORB.create(800).detectAndCompute(gray[1], None)
    np.testing.assert_array_equal(desc, fresh_desc)
    assert [k.pt for k in kp] == [k.pt for k in fresh_kp]
    assert len(orbs(1, 2000)[0]) > len(kp)  # another feature count is another detection


def test_the_next_window_reuses_the_overlaps_orb_work_and_tracks_the_same() -> None:
    """Consecutive windows share their overlap frames' ORB features and the ORB matches of the steps between
    them (every step rescued here, as on a wide-baseline stream); the shared ones give exactly the tracks that
    computing them again would."""
    from recon.models.classical.memo import SharedMemo
    from recon.models.classical.tracks import FEATURE_ITEMS, TrackerConfig, track_window

    gray = [cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2GRAY) for f in rendered_window("street", size=14)]
    cfg = TrackerConfig(guided_below=1.1, rescue_below=1.1)  # every step through the full rescue
    shared: SharedMemo = SharedMemo(FEATURE_ITEMS)
    track_window(gray[:10], cfg, shared)
    hits, misses = shared.hits, shared.misses
    reused = track_window(gray[6:], cfg, shared).uv_px
    assert shared.hits - hits >= 4 + 3  # the 4 shared frames' features, the 3 shared steps' matches
    assert shared.misses - misses < misses  # the new frames and steps only
    np.testing.assert_array_equal(reused, track_window(gray[6:], cfg).uv_px)


def test_dense_triangulation_in_place_is_its_plain_formulas_to_the_bit() -> None:
    """triangulate_matches reuses its buffers; the depth and confidence are the plain expressions' exactly, on
    real flow between two rendered frames (pixels behind the camera, off the image and without a match too)."""
    from support.plain_dense import plain_triangulate_matches

    from recon.models.classical.dense import DenseConfig, triangulate_matches

    frames = rendered_window("street")
    a, b = (cv2.cvtColor(frames[i].image_rgb, cv2.COLOR_RGB2GRAY) for i in (0, 3))
    j_from_i = frames[3].gt_cam_from_world @ np.linalg.inv(frames[0].gt_cam_from_world)
    flow = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)  # type: ignore[call-overload]
    H, W = a.shape
    u2 = np.arange(W, dtype=np.float32)[None, :] + flow[..., 0]
    v2 = np.arange(H, dtype=np.float32)[:, None] + flow[..., 1]
    fb = np.abs(flow[..., 0] * 0.1).astype(np.float32)
    fb[:4] = np.inf  # no way back: no confidence
    u2[-4:] = np.nan  # no match
    cfg = DenseConfig()
    # The true pose, and its inverse: the matches then mostly triangulate behind the cameras (depth 0).
    for jfi, depth_share in ((j_from_i, (0.5, 1.0)), (np.linalg.inv(j_from_i), (0.01, 0.5))):
        z, conf = triangulate_matches(u2, v2, fb, jfi, frames[0].K, cfg)
        z_ref, conf_ref = plain_triangulate_matches(u2, v2, fb, jfi, frames[0].K, cfg)
        assert z.dtype == conf.dtype == np.float32
        assert depth_share[0] < (z > 0).mean() < depth_share[1] and (conf[:4] == 0).all() and (z[-4:] == 0).all()
        np.testing.assert_array_equal(z, z_ref)
        np.testing.assert_array_equal(conf, conf_ref)


def test_triangulation_takes_the_thin_svd_and_gets_the_full_ones_points() -> None:
    """The DLT's null vector from the thin SVD is the full SVD's to the bit (tracks seen in a few frames each)."""
    from recon.geometry import make_rigid
    from recon.models.classical.pose import normalized, triangulate

    rng = np.random.default_rng(4)
    T, S = 500, 12
    K = np.array([[400.0, 0, 320], [0, 400, 96], [0, 0, 1]])
    poses = np.stack(
        [make_rigid(rotation_from_axis_angle(np.array([0, 0.02 * s, 0])), [-0.5 * s, 0, 0]) for s in range(S)]
    )
    X = rng.uniform([-5, -2, 5], [5, 2, 30], (T, 3))
    Xc = np.einsum("sij,tj->tsi", poses[:, :3, :3], X) + poses[:, :3, 3]
    uv = Xc[..., :2] / Xc[..., 2:] * 400 + [320, 96] + rng.normal(0, 0.5, (T, S, 2))
    visible = rng.random((T, S)) < 0.4
    uv[~visible] = np.nan

    xn = normalized(np.nan_to_num(uv), K)  # the DLT with the full SVD, as it was
    P = poses[:, :3, :]
    A = np.concatenate([xn[..., :1] * P[None, :, 2] - P[None, :, 0], xn[..., 1:] * P[None, :, 2] - P[None, :, 1]], 1)
    A *= np.concatenate([visible, visible], 1)[..., None]
    Xh = np.linalg.svd(A)[2][:, -1]
    expected = Xh[:, :3] / np.where(np.abs(Xh[:, 3:]) < 1e-12, 1e-12, Xh[:, 3:])
    np.testing.assert_array_equal(triangulate(uv, visible, poses, K), expected)


def test_tracks_grow_their_table_as_they_start_and_match_a_worst_case_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The track table starts at twice the corner budget and doubles when a window starts more tracks (a
    turn re-detects at every step): the tracks are those a table sized for the worst case holds."""
    from recon.models.classical import tracks as tr

    gray = [cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2GRAY) for f in rendered_window("street", size=20)]
    cfg = tr.TrackerConfig(max_corners=60)
    grown = tr.track_window(gray, cfg).uv_px
    assert len(grown) > 2 * cfg.max_corners  # more than the first table holds: it grew
    worst_case = (cfg.max_corners + cfg.rescue_orb_features) * len(gray)  # the table it replaced
    monkeypatch.setattr(
        tr, "_with_rows", lambda uv, rows: np.full((worst_case, *uv.shape[1:]), np.nan) if not len(uv) else uv
    )
    np.testing.assert_array_equal(grown, tr.track_window(gray, cfg).uv_px)
