"""recon.eval metrics: trajectory numbers cross-checked against evo (when installed) and against a plain
re-implementation of the KITTI devkit; depth and point-map metrics on cases with known answers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from recon.eval.depth import depth_frame_stats, evaluate_depth, median_scale, relative_error_map
from recon.eval.pointmap import backproject, evaluate_pointmap
from recon.eval.trajectory import (
    KITTI_LENGTHS_M,
    absolute_trajectory_error,
    associate,
    kitti_drift,
    relative_pose_error,
)
from recon.geometry import invert_rigid, make_rigid, rotation_from_axis_angle
from recon.types import Sim3


# ----------------------------------------------------------------------------------------- helpers
def random_walk(rng: np.random.Generator, n: int, step_m: float = 1.0, turn_rad: float = 0.05) -> np.ndarray:
    """world_from_cam [n,4,4]: the camera moves roughly forward (its z axis) and turns a little."""
    poses = np.empty((n, 4, 4))
    R, c = np.eye(3), np.zeros(3)
    for k in range(n):
        poses[k] = make_rigid(R, c)
        R = R @ rotation_from_axis_angle(rng.normal(0.0, turn_rad, 3))
        c = c + R @ (np.array([0.0, 0.0, step_m]) + rng.normal(0.0, 0.2 * step_m, 3))
    return poses


def perturb(rng: np.random.Generator, world_from_cam: np.ndarray, sigma_m: float, sigma_rad: float) -> np.ndarray:
    noise = make_rigid(
        rotation_from_axis_angle(rng.normal(0.0, sigma_rad, (len(world_from_cam), 3))),
        rng.normal(0.0, sigma_m, (len(world_from_cam), 3)),
    )
    return np.einsum("kab,kbc->kac", world_from_cam, noise)


def random_sim3(rng: np.random.Generator, scale: float) -> Sim3:
    return Sim3(scale, rotation_from_axis_angle(rng.normal(0.0, 1.0, 3)), rng.normal(0.0, 5.0, 3))


@pytest.fixture(scope="module")
def trajectories() -> tuple[np.ndarray, np.ndarray]:
    """(gt, est): est is a noisy copy of gt moved into another world by a Sim(3) with scale 0.37."""
    rng = np.random.default_rng(7)
    gt = random_walk(rng, 300, step_m=0.3)
    est = random_sim3(rng, 0.37).apply_to_world_from_cam(perturb(rng, gt, 0.05, 0.01))
    return gt, est


def evo_paths(gt: np.ndarray, est: np.ndarray):  # type: ignore[no-untyped-def]
    trajectory = pytest.importorskip("evo.core.trajectory")
    return trajectory.PosePath3D(poses_se3=list(gt)), trajectory.PosePath3D(poses_se3=list(est))


# ----------------------------------------------------------------------------------------- ATE / RPE vs evo
@pytest.mark.parametrize("with_scale", [True, False])
def test_ate_matches_evo(trajectories: tuple[np.ndarray, np.ndarray], with_scale: bool) -> None:
    metrics = pytest.importorskip("evo.core.metrics")
    gt, est = trajectories
    ref, est_evo = evo_paths(gt, est)
    est_evo.align(ref, correct_scale=with_scale)
    ours = absolute_trajectory_error(est, gt, with_scale=with_scale)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est_evo))
    S = metrics.StatisticsType
    for ours_value, stat in [
        (ours.rmse, S.rmse),
        (ours.mean, S.mean),
        (ours.median, S.median),
        (ours.max, S.max),
        (ours.std, S.std),
    ]:
        assert ours_value == pytest.approx(ape.get_statistic(stat), rel=1e-6, abs=1e-9)
    ape_rot = metrics.APE(metrics.PoseRelation.rotation_angle_deg)
    ape_rot.process_data((ref, est_evo))
    assert ours.rotation_deg.rmse == pytest.approx(ape_rot.get_statistic(S.rmse), rel=1e-6)
    assert ours.rotation_deg.max == pytest.approx(ape_rot.get_statistic(S.max), rel=1e-6)
    # A Sim(3) fit undoes the 0.37 scale; a rigid fit cannot, and must be far worse.
    if with_scale:
        assert ours.gt_from_est.s == pytest.approx(1 / 0.37, rel=0.02)
        assert ours.rmse < 0.15
    else:
        assert ours.gt_from_est.s == 1.0 and ours.rmse > 1.0


@pytest.mark.parametrize(("delta", "unit"), [(1, "frames"), (7, "frames"), (2.5, "m"), (10.0, "m")])
def test_rpe_matches_evo(trajectories: tuple[np.ndarray, np.ndarray], delta: float, unit: str) -> None:
    metrics = pytest.importorskip("evo.core.metrics")
    gt, est = trajectories
    ref, est_evo = evo_paths(gt, est)
    est_evo.align(ref, correct_scale=True)
    evo_unit = metrics.Unit.frames if unit == "frames" else metrics.Unit.meters
    ours = relative_pose_error(est, gt, delta=delta, delta_unit=unit, with_scale=True)  # type: ignore[arg-type]
    S = metrics.StatisticsType
    for relation, stats in [
        (metrics.PoseRelation.translation_part, ours.translation),
        (metrics.PoseRelation.rotation_angle_deg, ours.rotation_deg),
    ]:
        rpe = metrics.RPE(relation, delta=delta, delta_unit=evo_unit, all_pairs=False, pairs_from_reference=True)
        rpe.process_data((copy.deepcopy(ref), copy.deepcopy(est_evo)))
        assert stats.count == len(rpe.error) > 3
        for ours_value, stat in [
            (stats.rmse, S.rmse),
            (stats.mean, S.mean),
            (stats.median, S.median),
            (stats.max, S.max),
        ]:
            assert ours_value == pytest.approx(rpe.get_statistic(stat), rel=1e-6, abs=1e-12)
    np.testing.assert_array_equal(ours.pairs[:, 1], rpe.delta_ids)


def test_rpe_scale_handling(trajectories: tuple[np.ndarray, np.ndarray]) -> None:
    gt, est = trajectories
    aligned = relative_pose_error(est, gt, delta=5)
    raw = relative_pose_error(est, gt, delta=5, with_scale=False)
    given = relative_pose_error(est, gt, delta=5, scale=aligned.scale)
    assert raw.scale == 1.0 and aligned.scale == pytest.approx(1 / 0.37, rel=0.02)
    assert raw.translation.rmse > 2 * aligned.translation.rmse  # the 0.37 scale shows up unless corrected
    assert given.translation.rmse == pytest.approx(aligned.translation.rmse, rel=1e-12)
    np.testing.assert_allclose(raw.rotation_errors_deg, aligned.rotation_errors_deg, atol=1e-9)  # scale-free


def test_rpe_of_a_rigidly_moved_exact_copy_is_zero() -> None:
    rng = np.random.default_rng(1)
    gt = random_walk(rng, 50)
    est = random_sim3(rng, 1.0).apply_to_world_from_cam(gt)
    rpe = relative_pose_error(est, gt, delta=3, with_scale=False)
    assert rpe.translation.max < 1e-9 and rpe.rotation_deg.max < 1e-5


# ----------------------------------------------------------------------------------------- KITTI drift
def devkit_drift(gt: np.ndarray, est: np.ndarray, lengths: tuple[float, ...]) -> dict[float, list[tuple[float, float]]]:
    """The loops of the KITTI devkit's calcSequenceErrors, written out plainly: {length: [(t_err/len,
    r_err/len)]} with r in rad."""
    dist = [0.0]
    for i in range(1, len(gt)):
        dist.append(dist[-1] + math.dist(gt[i - 1][:3, 3], gt[i][:3, 3]))
    out: dict[float, list[tuple[float, float]]] = {L: [] for L in lengths}
    for first in range(0, len(gt), 10):
        for L in lengths:
            last = next((i for i in range(first, len(dist)) if dist[i] > dist[first] + L), -1)
            if last == -1:
                continue
            delta_gt = np.linalg.inv(gt[first]) @ gt[last]
            delta_est = np.linalg.inv(est[first]) @ est[last]
            err = np.linalg.inv(delta_est) @ delta_gt
            r = math.acos(max(min(0.5 * (np.trace(err[:3, :3]) - 1.0), 1.0), -1.0))
            t = float(np.linalg.norm(err[:3, 3]))
            out[L].append((t / L, r / L))
    return out


def test_kitti_drift_matches_the_devkit_loops() -> None:
    rng = np.random.default_rng(3)
    gt = random_walk(rng, 1000, step_m=1.0, turn_rad=0.02)
    est = perturb(rng, gt, 0.0, 0.0)
    # Drift that accumulates: each step's motion slightly wrong.
    steps = np.einsum("kab,kbc->kac", invert_rigid(gt[:-1]), gt[1:])
    steps = perturb(rng, steps, 0.02, 0.002)
    est = np.empty_like(gt)
    est[0] = gt[0]
    for k in range(1, len(gt)):
        est[k] = est[k - 1] @ steps[k - 1]
    ours = kitti_drift(est, gt, with_scale=False)
    ref = devkit_drift(gt, est, KITTI_LENGTHS_M)
    all_segments = [e for L in KITTI_LENGTHS_M for e in ref[L]]
    assert ours.lengths_source == "kitti" and ours.lengths == KITTI_LENGTHS_M
    assert ours.num_segments == len(all_segments) > 400
    assert ours.t_err_percent == pytest.approx(100 * np.mean([t for t, _ in all_segments]), rel=1e-6)
    assert ours.r_err_deg_per_100m == pytest.approx(100 * np.degrees(np.mean([r for _, r in all_segments])), rel=1e-6)
    for at in ours.per_length:
        assert at.num_segments == len(ref[at.length]) > 0
        assert at.t_err_percent == pytest.approx(100 * np.mean([t for t, _ in ref[at.length]]), rel=1e-6)
        assert at.r_err_deg_per_100m == pytest.approx(
            100 * np.degrees(np.mean([r for _, r in ref[at.length]])), rel=1e-6
        )


def straight_line(n: int, step_m: float) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = step_m * np.arange(n)
    return poses


def test_kitti_drift_of_a_one_percent_scale_error_is_one_percent() -> None:
    gt = straight_line(8000, 0.125)  # 1/8 m steps: distances add up exactly, segments end 1 step past L
    est = gt.copy()
    est[:, :3, 3] *= 1.01
    drift = kitti_drift(est, gt, with_scale=False)
    for at in drift.per_length:
        assert at.t_err_percent == pytest.approx(1.0 * (at.length + 0.125) / at.length, rel=1e-9)
        assert at.r_err_deg_per_100m == pytest.approx(0.0, abs=1e-9)
    # Up to scale, the Sim(3) fit removes a constant scale error entirely.
    assert kitti_drift(est, gt, with_scale=True).t_err_percent == pytest.approx(0.0, abs=1e-6)


def test_kitti_drift_of_a_constant_yaw_rate_error() -> None:
    yaw_per_frame = np.radians(0.01)
    gt = straight_line(900, 1.0)
    est = gt.copy()
    est[:, :3, :3] = rotation_from_axis_angle(np.outer(np.arange(900) * yaw_per_frame, [0.0, 1.0, 0.0]))
    drift = kitti_drift(est, gt, with_scale=False)
    # A segment of L m spans L + 1 frames (it ends at the first frame strictly past L).
    for at in drift.per_length:
        assert at.num_segments > 0
        assert at.r_err_deg_per_100m == pytest.approx(100 * 0.01 * (at.length + 1) / at.length, rel=1e-6)


def test_kitti_drift_on_a_short_path_uses_fractions_of_it() -> None:
    rng = np.random.default_rng(5)
    gt = random_walk(rng, 200, step_m=0.25)
    est = perturb(rng, gt, 0.02, 0.002)
    drift = kitti_drift(est, gt, with_scale=False)
    assert drift.path_length < 100 and drift.lengths_source == "path_fractions"
    np.testing.assert_allclose(drift.lengths, np.arange(1, 9) / 10 * drift.path_length)
    assert drift.num_segments > 0 and np.isfinite(drift.t_err_percent)
    custom = kitti_drift(est, gt, lengths=[5.0, 10.0], with_scale=False)
    assert custom.lengths_source == "custom" and custom.lengths == (5.0, 10.0)
    assert [at.length for at in custom.per_length] == [5.0, 10.0]
    assert math.isnan(kitti_drift(est, gt, lengths=[1000.0]).t_err_percent)


# ----------------------------------------------------------------------------------------- association
def tum_associate(a: list[float], b: list[float], max_diff: float) -> list[tuple[int, int]]:
    """TUM associate.py, on indices."""
    candidates = sorted(
        (abs(x - y), x, y, i, j) for i, x in enumerate(a) for j, y in enumerate(b) if abs(x - y) <= max_diff
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for _, _, _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((i, j))
    return sorted(matches)


def test_associate_matches_tum_greedy_nearest() -> None:
    assert associate(np.array([0.0, 0.01]), np.array([0.009])).tolist() == [[1, 0]]  # one-to-one, closest wins
    assert associate(np.array([1.0, 2.0]), np.array([0.5, 1.5]), offset_b_s=0.5).tolist() == [[0, 0], [1, 1]]
    rng = np.random.default_rng(2)
    a = np.cumsum(rng.uniform(0.01, 0.05, 300))
    b = rng.permutation(np.cumsum(rng.uniform(0.005, 0.06, 300)))  # unsorted on purpose
    pairs = associate(a, b, max_diff_s=0.02)
    assert pairs.tolist() == [list(p) for p in tum_associate(a.tolist(), b.tolist(), 0.02)]
    assert len(pairs) > 100 and np.all(np.abs(a[pairs[:, 0]] - b[pairs[:, 1]]) <= 0.02)


# ----------------------------------------------------------------------------------------- depth
def depth_frames(rng: np.random.Generator, n: int = 3) -> list[np.ndarray]:
    frames = [rng.uniform(1.0, 20.0, (24, 32)) for _ in range(n)]
    for f in frames:
        f[:2] = 0.0  # invalid ground truth
    return frames


def test_depth_of_a_scaled_prediction() -> None:
    gt = depth_frames(np.random.default_rng(0))
    pred = [2.0 * g for g in gt]
    for mode in ("frame", "sequence"):
        ev = evaluate_depth(pred, gt, scale_mode=mode)  # type: ignore[arg-type]
        np.testing.assert_allclose(ev.scales, 0.5)
        for st in (*ev.per_frame, ev.mean, ev.pooled):
            assert st.abs_rel == pytest.approx(0.0, abs=1e-12) and st.rmse == pytest.approx(0.0, abs=1e-12)
            assert st.delta1 == st.delta2 == st.delta3 == 1.0 and st.pred_coverage == 1.0
        assert ev.per_frame[0].num_pixels == 22 * 32 and ev.pooled.num_pixels == 3 * 22 * 32
    metric = evaluate_depth(pred, gt, scale_mode="none")
    assert metric.mean.abs_rel == pytest.approx(1.0) and metric.mean.delta1 == metric.mean.delta3 == 0.0  # 2 > 1.25^3
    np.testing.assert_allclose(metric.scales, 1.0)


def test_depth_sequence_scale_is_one_median_over_all_frames() -> None:
    gt = depth_frames(np.random.default_rng(1), n=2)
    pred = [2.0 * gt[0], 4.0 * gt[1]]  # equally many pixels: the pooled median sits between 1/2 and 1/4
    seq = evaluate_depth(pred, gt, scale_mode="sequence")
    np.testing.assert_allclose(seq.scales, 0.375)
    assert seq.per_frame[0].abs_rel == pytest.approx(0.25) and seq.per_frame[1].abs_rel == pytest.approx(0.5)
    assert seq.mean.abs_rel == pytest.approx(0.375) and seq.pooled.abs_rel == pytest.approx(0.375)
    assert median_scale(pred, gt) == pytest.approx(0.375)
    frame = evaluate_depth(pred, gt, scale_mode="frame")
    np.testing.assert_allclose(frame.scales, [0.5, 0.25])
    assert frame.mean.abs_rel == pytest.approx(0.0, abs=1e-12)


def test_depth_with_known_errors() -> None:
    gt = np.full((10, 10), 4.0)
    factor = np.where(np.arange(100).reshape(10, 10) < 60, 1.1, 0.9)  # 60% 10% too far, 40% 10% too near
    pred = gt * factor
    metric = depth_frame_stats(pred, gt)
    assert metric.abs_rel == pytest.approx(0.1) and metric.rmse == pytest.approx(0.4) and metric.delta1 == 1.0
    ev = evaluate_depth([pred], [gt], scale_mode="frame")
    assert ev.scales[0] == pytest.approx(1 / 1.1)  # the median ratio: the majority becomes exact
    assert ev.mean.abs_rel == pytest.approx(0.4 * (1 - 0.9 / 1.1))
    # 30% wrong by a factor of 1.3: outside 1.25, inside 1.25^2.
    pred2 = gt * np.where(np.arange(100).reshape(10, 10) < 30, 1.3, 1.0)
    st = depth_frame_stats(pred2, gt)
    assert st.delta1 == pytest.approx(0.7) and st.delta2 == 1.0


def test_depth_cap_masks_and_missing_predictions() -> None:
    gt = np.full((8, 8), 5.0)
    gt[:, :4] = 50.0  # beyond the cap: these pixels must not count at all
    pred = gt.copy()
    pred[:, :4] = 1.0  # garbage there
    capped = evaluate_depth([pred], [gt], scale_mode="frame", max_depth_m=10.0)
    assert (
        capped.per_frame[0].num_pixels == 32 and capped.mean.abs_rel == pytest.approx(0.0) and capped.scales[0] == 1.0
    )
    assert evaluate_depth([pred], [gt], scale_mode="none").mean.abs_rel > 0.4
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 4:] = True
    assert evaluate_depth([pred], [gt], masks=[mask]).per_frame[0].num_pixels == 4
    holes = gt.copy()
    holes[0, :] = 0.0
    holes[1, :] = np.nan  # a quarter of the prediction missing: counted, not skipped
    st = depth_frame_stats(holes, gt)
    assert st.num_pixels == 64 and st.pred_coverage == pytest.approx(0.75)
    assert st.abs_rel == pytest.approx(0.25) and st.delta1 == pytest.approx(0.75)
    empty = evaluate_depth([pred, pred], [gt, np.zeros_like(gt)])
    assert empty.num_frames_evaluated == 1 and math.isnan(empty.scales[1]) and math.isnan(empty.per_frame[1].abs_rel)
    assert empty.mean.abs_rel == pytest.approx(empty.per_frame[0].abs_rel)


def test_relative_error_map() -> None:
    gt = np.array([[2.0, 0.0], [4.0, 20.0]])
    pred = np.array([[1.0, 3.0], [3.0, 10.0]])
    rel = relative_error_map(pred, gt, scale=2.0, max_depth_m=10.0, signed=True)
    np.testing.assert_allclose(rel, [[0.0, np.nan], [0.5, np.nan]])
    assert relative_error_map(pred, gt)[0, 0] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------- point maps
def test_backproject_inverts_projection() -> None:
    rng = np.random.default_rng(4)
    K = np.array([[50.0, 0.0, 15.5], [0.0, 55.0, 11.5], [0.0, 0.0, 1.0]])
    depth = rng.uniform(1.0, 5.0, (24, 32))
    depth[3, 5] = 0.0
    world_from_cam = make_rigid(rotation_from_axis_angle(np.array([0.1, -0.3, 0.2])), np.array([1.0, 2.0, 3.0]))
    points = backproject(depth, K, world_from_cam)
    assert points.shape == (24 * 32 - 1, 3)
    cam = np.einsum("ij,nj->ni", invert_rigid(world_from_cam), np.c_[points, np.ones(len(points))])[:, :3]
    uv = np.einsum("ij,nj->ni", K, cam)
    uv = uv[:, :2] / uv[:, 2:]
    v, u = np.nonzero(depth > 0)
    np.testing.assert_allclose(uv, np.c_[u, v], atol=1e-9)
    np.testing.assert_allclose(cam[:, 2], depth[depth > 0])
    assert len(backproject(depth, K, world_from_cam, stride=4)) == 6 * 8


def surface_cloud(rng: np.random.Generator, n: int) -> np.ndarray:
    """Points on a unit sphere and on a floor plane below it: curved and flat, nothing symmetric."""
    sphere = rng.normal(size=(n // 2, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    floor = np.c_[rng.uniform(-2.0, 3.0, n // 2), np.full(n // 2, -1.5), rng.uniform(-2.0, 2.0, n // 2)]
    return np.concatenate([sphere, floor])


def test_pointmap_recovers_a_known_sim3() -> None:
    rng = np.random.default_rng(6)
    gt = surface_cloud(rng, 40_000)
    noise_sigma = 0.002
    gt_from_est = Sim3(1.7, rotation_from_axis_angle(np.array([0.3, -0.2, 0.5])), np.array([0.4, -1.0, 2.0]))
    est = gt_from_est.inverse().apply(gt + rng.normal(0.0, noise_sigma, gt.shape))
    # The initial guess is off by 2 degrees, 3 cm and 2% in scale, as a trajectory fit might be.
    off = Sim3(1.02, rotation_from_axis_angle(np.radians([0.0, 2.0, 0.0])), np.array([0.03, 0.0, 0.0]))
    init = off @ gt_from_est
    m = evaluate_pointmap(est, gt, gt_from_est_init=init, voxel_size=0.0)
    expected_noise = noise_sigma * math.sqrt(8 / math.pi)  # mean norm of 3-d Gaussian noise
    assert m.accuracy_mean < 1.2 * expected_noise and m.completeness_mean < 1.2 * expected_noise
    assert m.chamfer == pytest.approx(0.5 * (m.accuracy_mean + m.completeness_mean))
    assert m.normal_consistency > 0.97 and m.num_est == m.num_gt == 40_000
    assert m.gt_from_est.s == pytest.approx(1.7, rel=2e-3)
    np.testing.assert_allclose(m.gt_from_est.R, gt_from_est.R, atol=3e-3)
    unrefined = evaluate_pointmap(est, gt, gt_from_est_init=init, voxel_size=0.0, icp="none")
    assert unrefined.accuracy_mean > 5 * m.accuracy_mean  # ICP did the work
    plane = evaluate_pointmap(est, gt, gt_from_est_init=Sim3(1.7, init.R, init.t), voxel_size=0.0, icp="point_to_plane")
    assert plane.accuracy_mean < 2 * expected_noise  # rigid refinement from the right scale


def test_pointmap_with_a_missing_half_is_incomplete_but_accurate() -> None:
    rng = np.random.default_rng(8)
    gt = surface_cloud(rng, 40_000)
    est = gt[gt[:, 0] > 0.5] + rng.normal(0.0, 0.001, (int(np.sum(gt[:, 0] > 0.5)), 3))
    m = evaluate_pointmap(est, gt, voxel_size=0.02)
    assert m.accuracy_mean < 0.02 and m.completeness_mean > 0.5 and m.completeness_median > 0.3
    assert m.chamfer > 0.25 and m.voxel_size == 0.02 and m.num_gt < 40_000
    # Shares within 5 voxels: every estimated point is on the surface, about half the surface is covered.
    assert m.threshold == pytest.approx(0.1) and m.precision == 1.0 and 0.3 < m.recall < 0.6
    assert m.fscore == pytest.approx(2 * m.recall / (1 + m.recall))


def test_pointmap_default_voxel_is_relative_to_the_scene() -> None:
    rng = np.random.default_rng(9)
    gt = surface_cloud(rng, 10_000)
    m = evaluate_pointmap(gt * 1.0, gt)
    assert m.voxel_size == pytest.approx(np.linalg.norm(gt.max(0) - gt.min(0)) / 200)
    assert m.accuracy_mean < 1e-9 and m.normal_consistency > 0.999 and m.gt_from_est.s == pytest.approx(1.0, abs=1e-9)
