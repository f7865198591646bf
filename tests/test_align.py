"""Window-to-map alignment: robust Sim(3) kernel vs its reference, depth layers, and align_window on
windows built from ray-cast ground truth (planes at several depths, known poses), each window expressed
in its own frame with a random Sim(3), optionally with per-layer scale errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from support.align_reference import robust_log_scale_reference, robust_sim3_reference

from recon.align import AlignConfig, AlignedWindow, align_window, fit_window, place_window
from recon.errors import ContractError
from recon.geometry import invert_rigid, make_rigid, rotation_distance_deg, rotation_from_axis_angle
from recon.kernels.align_layers import LayerParams, layer_iou, link_layers, link_layers_warped, segment_depth_layers
from recon.kernels.align_sim3 import robust_log_scale_grouped, robust_sim3, robust_sim3_batched
from recon.pose_fit import umeyama_sim3
from recon.types import Keypoints, ResizeMap, Sim3, WindowPrediction


def random_sim3(rng: np.random.Generator, scale_range: tuple[float, float] = (0.3, 3.0)) -> Sim3:
    return Sim3(float(rng.uniform(*scale_range)), rotation_from_axis_angle(rng.normal(size=3)), rng.normal(size=3) * 3)


def sim3_close(a: Sim3, b: Sim3, tol: float) -> bool:
    return (
        abs(a.s / b.s - 1) < tol
        and np.abs(a.R - b.R).max() < tol
        and np.abs(a.t - b.t).max() < tol * max(1.0, np.abs(b.t).max())
    )


# ------------------------------------------------------------------------------------ kernel: Sim(3)
def test_robust_sim3_recovers_exact_sim3_on_clean_data() -> None:
    rng = np.random.default_rng(0)
    truth = random_sim3(rng)
    src = rng.normal(size=(5000, 3)) * 2 + [0, 0, 8]
    dst = truth.apply(src)
    sim, fit = robust_sim3(
        torch.tensor(src, dtype=torch.float32), torch.tensor(dst, dtype=torch.float32), torch.rand(5000) + 0.5, 0.1, 5
    )
    assert sim3_close(sim, truth, 1e-5)
    assert fit.valid and fit.inlier_share == 1.0 and fit.residual_rms < 1e-4


def test_irls_beats_plain_umeyama_with_30_percent_gross_outliers() -> None:
    rng = np.random.default_rng(1)
    truth = random_sim3(rng)
    N = 4000
    src = rng.normal(size=(N, 3)) * 2 + [0, 0, 8]
    dst = truth.apply(src) + rng.normal(size=(N, 3)) * 0.01 * truth.s
    bad = rng.random(N) < 0.3
    dst[bad] += rng.normal(size=(bad.sum(), 3)) * 5 * truth.s + 3 * truth.s  # gross, and biased
    S, T = torch.tensor(src, dtype=torch.float32), torch.tensor(dst, dtype=torch.float32)
    plain = umeyama_sim3(src, dst)
    robust, fit = robust_sim3(S, T, None, 0.1 * truth.s, 10)
    err = lambda m: np.abs(m.apply(src[~bad]) - truth.apply(src[~bad])).max() / truth.s  # noqa: E731
    assert err(robust) < 0.1 * err(plain)
    assert err(robust) < 0.05
    assert 0.6 < fit.inlier_share < 0.8  # the outliers are recognised as such


def test_torch_kernel_matches_numpy_reference() -> None:
    rng = np.random.default_rng(2)
    truth = random_sim3(rng)
    src = rng.normal(size=(3000, 3)) + [1, 2, 5]
    dst = truth.apply(src) + rng.normal(size=(3000, 3)) * 0.05
    dst[:500] += rng.normal(size=(500, 3)) * 3
    w = rng.uniform(0.1, 1, 3000)
    ref, ref_fit = robust_sim3_reference(src, dst, w, 0.2, 6)
    got, got_fit = robust_sim3(*(torch.tensor(a, dtype=torch.float32) for a in (src, dst, w)), 0.2, 6)
    assert sim3_close(got, ref, 1e-4)
    assert got_fit.inlier_share == pytest.approx(ref_fit.inlier_share, abs=2e-3)
    assert got_fit.residual_rms == pytest.approx(ref_fit.residual_rms, rel=1e-3)


def test_batched_kernel_equals_single_and_handles_padding_and_empty_sets() -> None:
    rng = np.random.default_rng(3)
    truths = [random_sim3(rng) for _ in range(3)]
    src = torch.tensor(rng.normal(size=(3, 800, 3)), dtype=torch.float32)
    dst = torch.stack(
        [torch.tensor(t.apply(src[i].double().numpy()), dtype=torch.float32) for i, t in enumerate(truths)]
    )
    w = torch.ones(3, 800)
    w[1, 500:] = 0  # a shorter set, padded
    dst[1, 500:] = 1e6  # padding content must not matter
    w[2] = 0  # an empty set
    batch = robust_sim3_batched(src, dst, w, 0.1, 5)
    assert sim3_close(batch.sim3(0), truths[0], 1e-4) and sim3_close(batch.sim3(1), truths[1], 1e-4)
    single, _ = robust_sim3(src[1, :500], dst[1, :500], None, 0.1, 5)
    assert sim3_close(single, batch.sim3(1), 1e-5)
    assert batch.valid().tolist() == [True, True, False]
    assert np.allclose(batch.sim3(2).matrix(), np.eye(4))
    assert all(np.isfinite(v) for v in batch.fit(2).as_dict().values() if isinstance(v, float))


def test_robust_sim3_flags_collinear_points_and_survives_nan() -> None:
    line = torch.linspace(0, 1, 100)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    _, fit = robust_sim3(line, line * 2, None, 0.1, 3)
    assert fit.rank_ratio < 1e-3
    pts = torch.randn(200, 3)
    tgt = pts * 3 + 1
    tgt[0] = float("nan")
    sim, fit = robust_sim3(pts, tgt, None, 0.1, 3)
    assert fit.valid and abs(sim.s - 3) < 1e-4 and fit.num_points == 199


def test_grouped_robust_scale_matches_reference_and_resists_outliers() -> None:
    rng = np.random.default_rng(4)
    k_true = np.array([0.8, 1.0, 1.3])
    g = rng.integers(0, 3, 3000)
    src = rng.uniform(1, 20, 3000)
    tgt = src * k_true[g] * np.exp(rng.normal(size=3000) * 0.01)
    tgt[rng.random(3000) < 0.2] *= 3.0  # outliers
    w = rng.uniform(0.2, 1, 3000)
    k, support = robust_log_scale_grouped(*(torch.tensor(a) for a in (src, tgt, w, g)), 4, 0.05, 10)
    for i in range(3):
        m = g == i
        assert k[i] == pytest.approx(robust_log_scale_reference(src[m], tgt[m], w[m], 0.05, 10), rel=1e-5)
        assert k[i] == pytest.approx(k_true[i], rel=0.02)
    assert k[3] == 1.0 and support[3] == 0


# ------------------------------------------------------------------------------------ kernel: layers
def layered_depth(H: int = 96, W: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Background 20, a slanted mid plane 8..9, a box at 3; returns depth and the true layer id."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    depth = np.full((H, W), 20.0, np.float32)
    truth = np.zeros((H, W), np.int32)
    mid = (u > 10) & (u < 110) & (v > 10) & (v < 70)
    depth[mid], truth[mid] = 8.0 + u[mid] / 110, 1
    box = (u > 90) & (u < 140) & (v > 40) & (v < 90)
    depth[box], truth[box] = 3.0, 2
    return depth * (1 + 0.005 * np.random.default_rng(0).normal(size=(H, W))).astype(np.float32), truth


def test_segmentation_separates_depth_layers_and_ignores_unconfident_pixels() -> None:
    depth, truth = layered_depth()
    conf = np.ones_like(depth)
    conf[:5] = 0.0
    labels = segment_depth_layers(depth, conf)
    assert labels.dtype == np.int32 and labels.shape == depth.shape
    assert np.all(labels[:5] == -1)
    # every true layer is (almost) one label, and no label mixes true layers
    for t in range(3):
        m = (truth == t) & (labels >= 0)
        values, counts = np.unique(labels[m], return_counts=True)
        assert counts.max() / m.sum() > 0.97
    for lab in np.unique(labels[labels >= 0]):
        _, counts = np.unique(truth[labels == lab], return_counts=True)
        assert counts.max() / counts.sum() > 0.97
    # near to far, and independent of the depth's unit
    assert labels[60, 120] < labels[30, 50] < labels[5 + 2, 150]
    assert np.array_equal(segment_depth_layers(depth * 13.7, conf), labels)


def test_segmentation_pixel_budget_coarsens_the_grid_like_a_stride() -> None:
    depth, truth = layered_depth()
    conf = np.ones_like(depth)
    H, W = depth.shape
    budget = LayerParams(stride=1, max_pixels=H * W // 16)  # -> every 4th pixel per axis
    assert np.array_equal(
        segment_depth_layers(depth, conf, budget), segment_depth_layers(depth, conf, LayerParams(stride=4))
    )
    assert np.array_equal(
        segment_depth_layers(depth, conf, LayerParams(stride=1, max_pixels=H * W)), segment_depth_layers(depth, conf)
    )


def test_segmentation_of_empty_and_constant_maps() -> None:
    assert np.all(segment_depth_layers(np.zeros((20, 30)), np.ones((20, 30))) == -1)
    assert np.all(segment_depth_layers(np.ones((20, 30)), np.zeros((20, 30))) == -1)
    assert np.all(segment_depth_layers(np.full((20, 30), 5.0), np.ones((20, 30))) == 0)


def test_layer_iou_and_links() -> None:
    a = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    b = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, -1]]])
    iou = layer_iou(a, b)[0]
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(4 / 6) and iou[1, 1] == pytest.approx(1 / 4) and iou[0, 1] == 0
    links = link_layers(torch.cat([a, a]), torch.cat([b, a]), 0.5)
    got = sorted(zip(links.pair.tolist(), links.a.tolist(), links.b.tolist(), strict=True))
    assert got == [(0, 0, 0), (1, 0, 0), (1, 1, 1)]


def test_warped_links_follow_moving_objects() -> None:
    scene = render_scene(6)
    f = [0, 5]  # far apart, so the front box moves ~8 px and same-pixel IoU drops
    labels = torch.tensor(scene.layer[f])
    points = torch.tensor(scene.points[f], dtype=torch.float32)
    poses = torch.tensor(scene.cam_from_world[f], dtype=torch.float32)
    Ks = torch.tensor(np.stack([scene.K] * 2), dtype=torch.float32)
    warped = link_layers_warped(labels, points, poses, Ks, 0.0, with_pixel_iou=False)
    box_warped = warped.iou[(warped.a == 2) & (warped.b == 2)].item()
    box_pixel = layer_iou(labels[:1], labels[1:])[0][2, 2].item()
    assert box_warped > 0.9 and box_warped > box_pixel + 0.2, (box_warped, box_pixel)
    both = link_layers_warped(labels, points, poses, Ks, 0.0)
    assert both.iou[(both.a == 2) & (both.b == 2)].item() == pytest.approx(max(box_warped, box_pixel))


# ------------------------------------------------------------------------------ synthetic windows
H, W, F = 48, 80, 60.0
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]])


@dataclass
class Scene:
    cam_from_world: np.ndarray  # [T,4,4]
    depth: np.ndarray  # [T,H,W]
    points: np.ndarray  # [T,H,W,3] world
    layer: np.ndarray  # [T,H,W] which surface: 0 background wall, 1 mid board, 2 front box; -1 nothing
    K: np.ndarray  # [3,3]


def render_scene(num_frames: int, motion: str = "translate") -> Scene:
    """Ray-cast a wall (z=14), a board (z=7) and a box face (z=3.5) for a camera moving sideways and
    forward while yawing ("translate") or spinning in place ("rotate")."""
    planes = [  # (z, x range, y range, layer)
        (14.0, (-1e9, 1e9), (-1e9, 1e9), 0),
        (7.0, (-4.0, 0.8), (-2.5, 1.0), 1),
        (3.5, (0.6, 2.6), (-0.6, 1.4), 2),
    ]
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays_cam = np.stack([(u - K[0, 2]) / F, (v - K[1, 2]) / F, np.ones_like(u)], -1)
    poses, depths, points, layers = [], [], [], []
    for i in range(num_frames):
        if motion == "translate":
            R_wc = rotation_from_axis_angle([0, np.radians(-1.0 * i), 0])
            c = np.array([0.12 * i, 0.02 * i, 0.08 * i])
        else:
            R_wc = rotation_from_axis_angle([0.01 * i, np.radians(3.0 * i), 0])
            c = np.zeros(3)
        world_from_cam = make_rigid(R_wc, c)
        d_world = rays_cam @ R_wc.T
        best = np.full((H, W), np.inf)
        layer = np.full((H, W), -1, np.int32)
        for z, (x0, x1), (y0, y1), lid in planes:
            t = (z - c[2]) / d_world[..., 2]
            p = c + t[..., None] * d_world
            hit = (t > 0) & (p[..., 0] > x0) & (p[..., 0] < x1) & (p[..., 1] > y0) & (p[..., 1] < y1) & (t < best)
            best[hit] = t[hit]
            layer[hit] = lid
        pts = c + best[..., None] * d_world
        poses.append(invert_rigid(world_from_cam))
        depths.append(best)  # rays have unit z in the camera, so the ray parameter is the z-depth
        points.append(pts)
        layers.append(layer)
    return Scene(np.stack(poses), np.stack(depths), np.stack(points), np.stack(layers), K)


def make_window(
    scene: Scene,
    frames: list[int],
    window_from_world: Sim3,
    layer_scale: dict[int, float] | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> WindowPrediction:
    """Ground truth of `frames` in a window frame; layer_scale multiplies the camera-frame points (and
    depth) of a layer, the kind of error a feed-forward model makes per object."""
    rng = np.random.default_rng(seed)
    idx = np.asarray(frames)
    h, w = scene.depth.shape[1:]
    cam_from_window = np.stack([window_from_world.apply_to_cam_from_world(scene.cam_from_world[i]) for i in idx])
    k = np.ones((len(idx), h, w))
    if layer_scale:
        for lid, f in layer_scale.items():
            k[scene.layer[idx] == lid] = f
    k = k * np.exp(rng.normal(size=k.shape) * noise)
    depth = window_from_world.s * scene.depth[idx] * k
    pts_win = window_from_world.apply(scene.points[idx])
    centres = invert_rigid(cam_from_window)[:, :3, 3][:, None, None, :]
    pts_win = centres + k[..., None] * (pts_win - centres)
    conf = rng.uniform(0.5, 1.0, size=depth.shape)
    f32 = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return WindowPrediction(
        frame_indices=[int(i) for i in idx],
        depth=f32(depth),
        depth_conf=f32(conf),
        points=f32(pts_win),
        points_conf=f32(conf),
        cam_from_world=f32(cam_from_window),
        K=f32(np.repeat(scene.K[None], len(idx), 0)),
        resize=ResizeMap.identity((h, w)),
    )


def run_chain(
    scene: Scene,
    L: int,
    O: int,
    n_windows: int,
    config: AlignConfig,
    errors: list[dict[int, float] | None] | None = None,
    noise: float = 0.0,
) -> tuple[list[AlignedWindow], list[WindowPrediction], Sim3]:
    rng = np.random.default_rng(7)
    prev = None
    outs, preds = [], []
    first_from_world = None
    for w in range(n_windows):
        frames = list(range(w * (L - O), w * (L - O) + L))
        wfw = random_sim3(rng)
        first_from_world = first_from_world or wfw
        pred = make_window(scene, frames, wfw, (errors[w] if errors else None), noise, seed=w)
        prev = align_window(prev, pred, O, config)
        outs.append(prev)
        preds.append(pred)
    return outs, preds, first_from_world


def pose_errors(out: AlignedWindow, scene: Scene, first_from_world: Sim3) -> tuple[float, float]:
    """Max rotation (deg) and max camera-centre error relative to the scene depth, in the run's world."""
    expect = np.stack([first_from_world.apply_to_cam_from_world(scene.cam_from_world[i]) for i in out.frame_indices])
    got = out.cam_from_world.double().numpy()
    rot = rotation_distance_deg(expect[:, :3, :3], got[:, :3, :3]).max()
    ce, cg = invert_rigid(expect)[:, :3, 3], invert_rigid(got)[:, :3, 3]
    return float(rot), float(np.linalg.norm(ce - cg, axis=1).max() / (10 * first_from_world.s))


def layer_depth_ratios(
    out: AlignedWindow, scene: Scene, first_from_world: Sim3, frames: slice = slice(None)
) -> dict[int, float]:
    """Median aligned depth / true depth (in run units) per true layer, over the given frames."""
    idx = np.asarray(out.frame_indices)[frames]
    ratio = out.depth[frames].double().numpy() / (first_from_world.s * scene.depth[idx])
    return {lid: float(np.median(ratio[scene.layer[idx] == lid])) for lid in (0, 1, 2)}


# ----------------------------------------------------------------------------------- align_window
@pytest.fixture(scope="module")
def scene() -> Scene:
    return render_scene(26)


def test_first_window_defines_the_world(scene: Scene) -> None:
    pred = make_window(scene, list(range(6)), Sim3(2.0))
    out = align_window(None, pred, 2, AlignConfig())
    assert out.report.path == "first" and np.array_equal(out.world_from_window.matrix(), np.eye(4))
    assert torch.equal(out.points_world, pred.points) and torch.equal(out.cam_from_world, pred.cam_from_world)
    assert (
        out.layer_labels is not None
        and out.layer_labels.shape == pred.depth.shape
        and out.layer_labels.dtype == torch.int32
    )


def test_placing_a_fit_elsewhere_is_the_similarity_applied_to_the_joined_window(scene: Scene) -> None:
    prev = align_window(None, make_window(scene, list(range(8)), Sim3(1.0)), 3, AlignConfig())
    cur = make_window(
        scene,
        list(range(5, 13)),
        Sim3(1.7, rotation_from_axis_angle(np.array([0.1, -0.2, 0.05])), np.array([0.3, 0.0, -0.2])),
    )
    fit = fit_window(prev, cur, 3, AlignConfig())
    joined = place_window(cur, fit)  # into prev's frame: what align_window returns
    T = Sim3(0.5, rotation_from_axis_angle(np.array([0.0, 0.3, 0.0])), np.array([1.0, 2.0, 3.0]))
    moved = place_window(cur, fit, T @ fit.sim, frames=slice(2, 6))
    expected = (
        torch.from_numpy(T.apply(joined.points_world[2:6].double().numpy().reshape(-1, 3)))
        .float()
        .view(moved.points_world.shape)
    )
    assert torch.allclose(moved.points_world, expected, atol=1e-4)
    assert torch.allclose(moved.depth, joined.depth[2:6] * 0.5, rtol=1e-5)
    assert moved.frame_indices == joined.frame_indices[2:6] and moved.world_from_window is not fit.sim
    assert fit.scale_map is not None  # the layer scales ride along with the move


@pytest.mark.parametrize("mode", ["sim3", "lsa"])
def test_chained_windows_recover_world_poses(scene: Scene, mode: str) -> None:
    outs, preds, first = run_chain(scene, L=8, O=3, n_windows=4, config=AlignConfig(mode=mode), noise=0.002)
    for out in outs[1:]:
        assert out.report.path == {"sim3": "joint", "lsa": "lsa"}[mode]
        rot, centre = pose_errors(out, scene, first)
        assert rot < 0.1 and centre < 2e-3, (rot, centre)
        ratios = layer_depth_ratios(out, scene, first)
        assert all(abs(r - 1) < 0.005 for r in ratios.values()), ratios
        assert torch.isfinite(out.points_world).all()


def test_lsa_recovers_layer_scales_that_sim3_cannot(scene: Scene) -> None:
    errors = [None, {0: 0.9, 1: 1.0, 2: 1.2}]  # window 2: background x0.9, front box x1.2
    results = {}
    for mode in ("sim3", "lsa"):
        outs, _, first = run_chain(
            scene, L=10, O=4, n_windows=2, config=AlignConfig(mode=mode), errors=errors, noise=0.002
        )
        results[mode] = (layer_depth_ratios(outs[1], scene, first), outs[1], first)
    lsa, lsa_out, first = results["lsa"]
    sim3, sim3_out, _ = results["sim3"]
    assert all(abs(r - 1) <= 0.02 for r in lsa.values()), lsa
    assert max(abs(r - 1) for r in sim3.values()) > 0.08, sim3
    # later frames of the window (beyond the overlap) got their scales by propagation
    late = layer_depth_ratios(lsa_out, scene, first, slice(4, None))
    assert all(abs(r - 1) <= 0.02 for r in late.values()), late
    diag = lsa_out.report.lsa
    assert diag["reached_share"] > 0.9
    assert (lsa_out.layer_scales[-1] - 1).abs().max() > 0.1  # not just the window scale
    # Poses come from the shared cameras, not from a fit to the (layer-biased) depth: both modes keep them.
    for out in (lsa_out, sim3_out):
        rot, centre = pose_errors(out, scene, first)
        assert rot < 0.1 and centre < 0.03, (rot, centre)


def test_lsa_pose_only_keeps_window_depth_but_fixes_pose(scene: Scene) -> None:
    errors = [None, {0: 0.9, 1: 1.0, 2: 1.2}]
    cfg = AlignConfig(mode="lsa", lsa_depth=False)
    outs, preds, first = run_chain(scene, L=10, O=4, n_windows=2, config=cfg, errors=errors, noise=0.002)
    out, pred = outs[1], preds[1]
    assert out.report.path == "lsa" and all(bool((k == 1).all()) for k in out.layer_scales)
    assert torch.allclose(out.depth, pred.depth * out.world_from_window.s)  # one scale for the window
    assert pose_errors(out, scene, first)[0] < 0.1


def test_lsa_carries_across_three_windows(scene: Scene) -> None:
    errors = [None, {0: 0.9, 2: 1.2}, {0: 1.1, 1: 0.85, 2: 0.95}]
    outs, _, first = run_chain(scene, L=8, O=3, n_windows=3, config=AlignConfig(mode="lsa"), errors=errors, noise=0.002)
    for out in outs[1:]:
        ratios = layer_depth_ratios(out, scene, first)
        assert all(abs(r - 1) <= 0.02 for r in ratios.values()), ratios


def test_the_join_edge_ignores_the_previous_windows_layer_scales(scene: Scene) -> None:
    # Layer scales correct the map points; the edge between two windows' frames (where their cameras
    # live) compares the models' own depths, so it is the same with and without LSA.
    errors = [None, {0: 0.9, 2: 1.2}, {0: 1.1, 1: 0.85, 2: 0.95}]
    lsa, _, _ = run_chain(scene, L=8, O=3, n_windows=3, config=AlignConfig(mode="lsa"), errors=errors, noise=0.002)
    rigid, _, _ = run_chain(scene, L=8, O=3, n_windows=3, config=AlignConfig(mode="sim3"), errors=errors, noise=0.002)
    assert any(
        not torch.allclose(s, torch.ones_like(s)) for s in lsa[1].layer_scales
    )  # the tail does carry layer scales
    for a, b in zip(lsa[1:], rigid[1:], strict=True):
        assert abs(np.log(a.world_from_window.s / b.world_from_window.s)) < 1e-4
        assert np.allclose(
            a.world_from_window.matrix(), b.world_from_window.matrix(), atol=1e-4 * b.world_from_window.s
        )


def test_unlinked_layers_keep_the_window_scale(scene: Scene) -> None:
    errors = [None, {2: 1.2}]
    sim3_out = run_chain(scene, L=8, O=3, n_windows=2, config=AlignConfig(mode="sim3"), errors=errors)[0][1]
    out = run_chain(
        scene, L=8, O=3, n_windows=2, config=AlignConfig(mode="lsa", cross_iou=1.01, lsa_refine=False), errors=errors
    )[0][1]
    assert out.report.path == "lsa" and out.report.lsa["cross_links"] == []
    assert all(bool((s == 1).all()) for s in out.layer_scales)
    assert torch.allclose(out.depth, sim3_out.depth) and torch.allclose(
        out.points_world, sim3_out.points_world, atol=1e-4
    )


def test_config_is_validated() -> None:
    with pytest.raises(ContractError, match="mode"):
        AlignConfig(mode="lsa2")  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="top_p"):
        AlignConfig(top_p=0.0)


def test_lsa_no_worse_than_sim3_on_clean_data(scene: Scene) -> None:
    errs = {}
    for mode in ("sim3", "lsa"):
        outs, _, first = run_chain(scene, L=8, O=3, n_windows=3, config=AlignConfig(mode=mode), noise=0.01)
        errs[mode] = max(max(abs(r - 1) for r in layer_depth_ratios(o, scene, first).values()) for o in outs[1:])
    assert errs["lsa"] <= errs["sim3"] + 0.003, errs


def test_empty_pure_rotation_overlap_inherits_the_scale_without_nan(caplog: pytest.LogCaptureFixture) -> None:
    rot_scene = render_scene(10, motion="rotate")
    rng = np.random.default_rng(5)
    first = make_window(rot_scene, list(range(6)), Sim3(1.0))
    prev = align_window(None, first, 3, AlignConfig())
    cur = make_window(rot_scene, list(range(3, 9)), random_sim3(rng))
    cur.points_conf.zero_()  # nothing confident
    cur.depth_conf.zero_()
    with caplog.at_level(logging.WARNING, logger="recon.align"):
        out = align_window(prev, cur, 3, AlignConfig())
    # Nothing confident and no baseline (pure rotation): the shared frames' depths carry the scale over.
    assert out.report.path == "inherited_scale"
    assert out.report.warnings and any("inherited" in r.message for r in caplog.records)
    assert out.report.join["scale_sources"] == {}
    for t in (out.cam_from_world, out.depth, out.points_world):
        assert torch.isfinite(t).all()
    # continuity: the overlap cameras sit on the map's copies
    rot = rotation_distance_deg(
        prev.cam_from_world[3:].double().numpy()[:, :3, :3], out.cam_from_world[:3].double().numpy()[:, :3, :3]
    )
    assert rot.max() < 1e-3
    c_prev = invert_rigid(prev.cam_from_world[3:].double().numpy())[:, :3, 3]
    c_out = invert_rigid(out.cam_from_world[:3].double().numpy())[:, :3, 3]
    assert np.abs(c_prev - c_out).max() < 1e-4
    # the shared frames' (unconfident but positive) depths gave the window its scale: no jump
    ratio = (prev.depth[-3:] / cur.depth[:3]).flatten()
    assert out.world_from_window.s == pytest.approx(float(ratio.median()), rel=1e-3)
    # nothing at all (no depth, no points): unit scale, still continuous and finite
    cur.depth.zero_()
    cur.points.zero_()
    out = align_window(prev, cur, 3, AlignConfig())
    assert out.report.path == "inherited_scale" and out.world_from_window.s == 1.0
    assert all(bool(torch.isfinite(t).all()) for t in (out.cam_from_world, out.depth, out.points_world))
    assert (
        rotation_distance_deg(
            prev.cam_from_world[3].double().numpy()[:3, :3], out.cam_from_world[0].double().numpy()[:3, :3]
        )
        < 1e-3
    )


def test_garbage_points_do_not_move_the_join(scene: Scene) -> None:
    prev = align_window(None, make_window(scene, list(range(6)), Sim3(1.0)), 3, AlignConfig())
    rng = np.random.default_rng(6)
    cur = make_window(scene, list(range(3, 9)), random_sim3(rng))
    cur.points.copy_(torch.randn_like(cur.points) * 20)  # confident garbage
    out = align_window(prev, cur, 3, AlignConfig(mode="lsa"))
    assert out.report.path == "lsa"
    assert set(out.report.join["scale_sources"]) == {"dense", "baseline"}
    rot, centre = pose_errors(out, scene, Sim3(1.0))
    assert rot < 0.1 and centre < 1e-3  # rotation from the cameras, scale from depth and baselines


def test_a_lost_overlap_with_wrong_depth_keeps_the_scale_through_the_baselines(scene: Scene) -> None:
    """The dense depth of the overlap disagrees with the cameras (a bad window's depth): the join keeps the
    tighter source and flags the conflict instead of jumping."""
    prev = align_window(None, make_window(scene, list(range(6)), Sim3(1.0)), 3, AlignConfig())
    cur = make_window(scene, list(range(3, 9)), Sim3(2.0))
    cur.depth.mul_(5.0)  # depth says x5, the cameras say x2 (window scale 2 -> map needs 0.5)
    out = align_window(prev, cur, 3, AlignConfig(mode="sim3"))
    sources = out.report.join["scale_sources"]
    assert sources["baseline"]["scale"] == pytest.approx(0.5, rel=1e-3)
    assert sources["dense"]["scale"] == pytest.approx(0.1, rel=1e-2)
    assert "scale_conflict" in out.report.join
    kept = out.report.join["scale_conflict"][0].rsplit(" ", 1)[-1]
    assert kept in sources
    assert out.world_from_window.s == pytest.approx(sources[kept]["scale"], rel=1e-9)  # one source, never a blend


def test_contract_errors(scene: Scene) -> None:
    prev = align_window(None, make_window(scene, list(range(6)), Sim3(1.0)), 2, AlignConfig())
    with pytest.raises(ContractError, match="must be the last"):
        align_window(prev, make_window(scene, list(range(5, 11)), Sim3(1.0)), 2, AlignConfig())
    with pytest.raises(ContractError, match="overlap"):
        align_window(prev, make_window(scene, list(range(4, 10)), Sim3(1.0)), 0, AlignConfig())
    small = make_window(scene, list(range(4, 10)), Sim3(1.0))
    small = WindowPrediction(
        frame_indices=small.frame_indices,
        depth=small.depth[:, :, :40].contiguous(),
        depth_conf=small.depth_conf[:, :, :40].contiguous(),
        points=small.points[:, :, :40].contiguous(),
        points_conf=small.points_conf[:, :, :40].contiguous(),
        cam_from_world=small.cam_from_world,
        K=small.K,
        resize=ResizeMap.identity((H, 40)),
    )
    with pytest.raises(ContractError, match="resolution"):
        align_window(prev, small, 2, AlignConfig())


def test_top_p_confidence_mode(scene: Scene) -> None:
    outs, _, first = run_chain(
        scene, L=8, O=3, n_windows=2, config=AlignConfig(mode="sim3", conf_mode="top_p", top_p=0.5)
    )
    assert outs[1].report.num_correspondences < 0.5 * outs[1].report.num_candidates
    rot, centre = pose_errors(outs[1], scene, first)
    assert rot < 0.05 and centre < 1e-3


def test_synthetic_source_windows_align() -> None:
    """Windows from the synthetic street renderer's ground truth (when that module is present)."""
    synthetic = pytest.importorskip("recon.datasets.synthetic")
    if not hasattr(synthetic, "SyntheticSource"):
        pytest.skip("recon.datasets.synthetic.SyntheticSource not available yet")
    frames = list(synthetic.SyntheticSource(scene="street", num_frames=11, width=160, height=48, seed=3))
    Kf = frames[0].K
    h, w = frames[0].gt_depth_m.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - Kf[0, 2]) / Kf[0, 0], (v - Kf[1, 2]) / Kf[1, 1], np.ones_like(u)], -1)
    depth = np.stack([f.gt_depth_m for f in frames]).astype(np.float64)
    poses = np.stack([f.gt_cam_from_world for f in frames])
    world_from_cam = invert_rigid(poses)
    pts = (
        np.einsum("tij,thwj->thwi", world_from_cam[:, :3, :3], depth[..., None] * rays)
        + world_from_cam[:, None, None, :3, 3]
    )
    real = Scene(poses, depth, pts, np.where(depth > 0, 0, -1).astype(np.int32), Kf)
    rng = np.random.default_rng(0)
    first_from_world = random_sim3(rng)
    prev = None
    for frames_w in (list(range(0, 7)), list(range(4, 11))):
        pred = make_window(real, frames_w, first_from_world if prev is None else random_sim3(rng))
        sky = torch.from_numpy(depth[frames_w] == 0)
        pred.points_conf[sky] = 0
        pred.depth_conf[sky] = 0
        prev = align_window(prev, pred, 3, AlignConfig())
    assert prev.report.path in ("sim3", "lsa")
    rot, centre = pose_errors(prev, real, first_from_world)
    assert rot < 0.1 and centre < 2e-3


def with_keypoints(pred: WindowPrediction, every: int = 7) -> WindowPrediction:
    """The window's own depth sampled on a pixel grid, as a model's sparse points (before any corruption)."""
    S, H, W = pred.depth.shape
    s, v, u = np.meshgrid(np.arange(S), np.arange(1, H, every), np.arange(1, W, every), indexing="ij")
    d = pred.depth.numpy()[s, v, u]
    ok = d > 0
    pred.keypoints = Keypoints(s[ok], np.stack([u[ok], v[ok]], -1).astype(np.float32), d[ok].astype(np.float32))
    return pred


def test_shared_keypoints_outvote_dense_depth_that_disagrees_with_the_cameras(scene: Scene) -> None:
    """A classical window's dense depth can be off in its edge frames while its own cameras and sparse
    points agree: the keypoints both windows placed at the same corners give the scale."""
    prev = align_window(None, with_keypoints(make_window(scene, list(range(12)), Sim3(1.0))), 6, AlignConfig())
    cur = with_keypoints(make_window(scene, list(range(6, 18)), Sim3(2.0)))
    cur.depth.mul_(1.5)  # dense depth 50% off; the cameras (and keypoints) say x2
    out = align_window(prev, cur, 6, AlignConfig(mode="sim3"))
    sources = out.report.join["scale_sources"]
    assert sources["tracks"]["scale"] == pytest.approx(0.5, rel=1e-4) and sources["baseline"]["scale"] == pytest.approx(
        0.5, rel=1e-4
    )
    assert any(c.startswith("dense") for c in out.report.join["scale_conflict"])  # two against one
    assert out.world_from_window.s == pytest.approx(0.5, rel=0.02)
    rot, centre = pose_errors(out, scene, Sim3(1.0))
    assert rot < 0.1 and centre < 1e-3


def test_a_loose_scale_source_sides_with_the_tight_one_it_agrees_with() -> None:
    from recon.align.join import _consistent_sources

    # Two tight sources 37% apart; the loose one agrees with both within 3 sigma but sits on one of them.
    sources = {"dense": (np.log(0.83), 0.005), "tracks": (np.log(1.15), 0.02), "baseline": (np.log(1.14), 0.146)}
    assert sorted(_consistent_sources(sources, 3.0)) == ["baseline", "tracks"]
    # All agreeing: all kept; two tight sources alone that disagree: the tighter one.
    assert sorted(_consistent_sources({"a": (0.0, 0.01), "b": (0.01, 0.01), "c": (0.0, 0.1)}, 3.0)) == ["a", "b", "c"]
    assert _consistent_sources({"a": (0.0, 0.005), "b": (0.3, 0.02)}, 3.0) == ["a"]


def test_only_depth_another_view_confirms_is_fused(scene: Scene) -> None:
    from recon.fusion import consistent_in_neighbours

    pred = make_window(scene, list(range(8)), Sim3(1.5))
    # A streak: frame 4 puts a block of pixels 30% too far (a blend no other view sees), points and depth alike.
    centre = torch.tensor(invert_rigid(pred.cam_from_world[4].double().numpy())[:3, 3], dtype=torch.float32)
    block = (4, slice(10, 20), slice(30, 50))
    pred.depth[block] *= 1.3
    pred.points[block] = centre + 1.3 * (pred.points[block] - centre)
    # Frame 6 has no depth where frame 3's left half lands (a blank the model left empty): no confirmation there.
    pred.depth[6, :, :40] = 0.0
    world = align_window(None, pred, 2, AlignConfig())
    px = 0.125  # 80 pixels wide: a pixel of a 640-pixel image
    ok = consistent_in_neighbours(world, pred.K, slice(0, 8), 1, px, (-3, 3), 0.05)
    assert ok[block].float().mean() < 0.05
    p3 = scene.points[0] @ scene.cam_from_world[3][:3, :3].T + scene.cam_from_world[3][:3, 3]
    u3 = F * p3[..., 0] / p3[..., 2] + K[0, 2]
    out_of_view = torch.from_numpy((u3 < -0.5) | (u3 > W - 0.5))
    assert out_of_view.sum() > 50 and ok[0][out_of_view].all()  # frame 0's partner is 3 alone: nothing says anything
    # ... unless they run off far beyond the scene, out of every partner's view as a streak does.
    far = make_window(scene, list(range(8)), Sim3(1.5))
    c0 = torch.tensor(invert_rigid(far.cam_from_world[0].double().numpy())[:3, 3], dtype=torch.float32)
    edge = out_of_view
    far.depth[0][edge] *= 5.0
    far.points[0][edge] = c0 + 5.0 * (far.points[0][edge] - c0)
    assert not consistent_in_neighbours(
        align_window(None, far, 2, AlignConfig()), far.K, slice(0, 1), 1, px, (3,), 0.05
    )[0][edge].any()
    rest = ok.clone()
    rest[block] = True
    assert rest.float().mean() > 0.9  # the true surfaces, less what hides behind a nearer one in both partners
    # Where frame 6 has no depth it confirms nothing (a floater over a blank background would land there).
    by_6 = consistent_in_neighbours(world, pred.K, slice(3, 4), 1, px, (3,), 0.05)[0]
    assert by_6[:, :30].float().mean() < 0.05 and by_6[:, 50:].float().mean() > 0.9
    # A partner whose depth is 8% too long: on the board and the box (near: many pixels of parallax) it confirms
    # within 10% of depth, not within 5%; on the far wall it moves a point by about a pixel, and confirms within two.
    pred = make_window(scene, list(range(8)), Sim3(1.5))
    pred.depth[3] *= 1.08
    world = align_window(None, pred, 2, AlignConfig())
    near = torch.from_numpy(scene.layer[0] >= 1)[None] & (torch.arange(W) < 56)  # right edge: out of frame 3's view
    assert consistent_in_neighbours(world, pred.K, slice(0, 1), 1, px, (3,), 0.05)[near].float().mean() < 0.05
    assert consistent_in_neighbours(world, pred.K, slice(0, 1), 1, px, (3,), 0.1)[near].float().mean() > 0.9
    wall = consistent_in_neighbours(world, pred.K, slice(0, 1), 1, 2 * px, (3,), 0.05)[0][scene.layer[0] == 0]
    assert wall.float().mean() > 0.8  # less the wall frame 3 sees hidden behind the board or the box


def test_the_consistency_check_of_some_pixels_is_the_full_checks_verdict_there(scene: Scene) -> None:
    """The map checks only the pixels its confidence test kept: their verdicts are the full check's, to the bit
    (each pixel's test is its own), and the pixels left out come out False."""
    from recon.fusion import consistent_in_neighbours

    pred = make_window(scene, list(range(8)), Sim3(1.5))
    pred.depth[6, :, :40] = 0.0  # pixels landing on no depth, with those in no partner's view and confirmed ones
    world = align_window(None, pred, 2, AlignConfig())
    for stride, new in ((1, slice(0, 8)), (2, slice(2, 7))):
        full = consistent_in_neighbours(world, pred.K, new, stride, 0.125, (-3, 3), 0.05)
        among = torch.rand(full.shape, generator=torch.Generator().manual_seed(stride)) < 0.5
        some = consistent_in_neighbours(world, pred.K, new, stride, 0.125, (-3, 3), 0.05, among=among)
        assert full[among].any() and not full[among].all()
        assert torch.equal(some, full & among)


def test_world_points_on_a_grid_equal_the_full_pass_strided() -> None:
    """A join reads the previous window's world points on its correspondence grid only; they must be the very
    numbers of the full pass at those pixels (the join's fit is unchanged, bit for bit)."""
    g = torch.Generator().manual_seed(0)
    S, H, W = 5, 37, 53
    window = AlignedWindow(
        frame_indices=list(range(S)),
        cam_from_world=torch.eye(4).repeat(S, 1, 1),
        depth=torch.rand(S, H, W, generator=g),
        conf=torch.rand(S, H, W, generator=g),
        world_from_window=Sim3(1.7, rotation_from_axis_angle(np.array([0.1, -0.3, 0.2])), np.array([1.0, 2.0, -3.0])),
        layer_labels=None,
        layer_scales=None,
        points_window=torch.randn(S, H, W, 3, generator=g),
        scale_map=0.5 + torch.rand(S, H, W, generator=g),
        centres_window=torch.randn(S, 3, generator=g),
    )
    full = window.world_points(slice(2, None))
    for stride, offset in ((1, 0), (4, 2), (5, 2), (7, 3)):
        grid = window.world_points(slice(2, None), stride, offset)
        assert torch.equal(grid, full[:, offset::stride, offset::stride]), (stride, offset)
