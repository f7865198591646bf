"""The synthetic renderer (recon.datasets.synthetic): the data every other test, benchmark and the demo
stand on. What a user relies on: exact intrinsics, poses and z-depth that agree with each other and
with the images across views; determinism; a street that turns, loops back and never puts an object
in the car's way; frames that can be rendered anywhere along an endless drive."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from recon.datasets.base import FrameSource
from recon.datasets.synthetic import RoomConfig, StreetConfig, SyntheticSource, render_sequence
from recon.errors import SourceError
from recon.geometry import invert_rigid
from recon.types import Frame


@pytest.fixture(scope="module")
def street() -> SyntheticSource:
    return SyntheticSource("street", num_frames=400, seed=3)


@pytest.fixture(scope="module")
def room() -> SyntheticSource:
    return SyntheticSource("room", num_frames=300, seed=3)


def reprojection_stats(fi: Frame, fj: Frame) -> dict[str, float]:
    """Back-project frame i's depth with K and the GT poses, project into frame j, and compare with
    frame j's depth (z-test for visibility) and colours at the landed pixels."""
    H, W = fi.gt_depth_m.shape
    K = fi.K
    v, u = np.mgrid[:H, :W].astype(np.float64)
    d = fi.gt_depth_m.astype(np.float64)
    ok = d > 0
    X = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], -1)[ok]
    j_from_i = fj.gt_cam_from_world @ invert_rigid(fi.gt_cam_from_world)
    Xj = X @ j_from_i[:3, :3].T + j_from_i[:3, 3]
    z = Xj[:, 2]
    uj, vj = K[0, 0] * Xj[:, 0] / z + K[0, 2], K[1, 1] * Xj[:, 1] / z + K[1, 2]
    inside = (z > 0.1) & (uj >= 0) & (uj <= W - 1) & (vj >= 0) & (vj <= H - 1)
    uj, vj, z = uj[inside], vj[inside], z[inside]
    u0 = np.minimum(np.floor(uj).astype(int), W - 2)
    v0 = np.minimum(np.floor(vj).astype(int), H - 2)
    a, b = uj - u0, vj - v0
    # Inverse depth is affine in pixel coordinates on a plane: bilinear interpolation of it is exact there.
    dj = fj.gt_depth_m.astype(np.float64)
    q = [dj[v0, u0], dj[v0, u0 + 1], dj[v0 + 1, u0], dj[v0 + 1, u0 + 1]]
    hit = (q[0] > 0) & (q[1] > 0) & (q[2] > 0) & (q[3] > 0)
    inv = [1.0 / np.maximum(x, 1e-9) for x in q]
    z_j = 1.0 / ((1 - a) * (1 - b) * inv[0] + a * (1 - b) * inv[1] + (1 - a) * b * inv[2] + a * b * inv[3])
    rel = np.abs(z_j - z) / z
    visible = hit & (rel < 0.01)
    img = fj.image_rgb.astype(np.float64)
    A, B = a[:, None], b[:, None]
    col_j = (
        (1 - A) * (1 - B) * img[v0, u0]
        + A * (1 - B) * img[v0, u0 + 1]
        + (1 - A) * B * img[v0 + 1, u0]
        + A * B * img[v0 + 1, u0 + 1]
    )
    col_i = fi.image_rgb[ok][inside].astype(np.float64)
    diff = np.abs(col_j - col_i).mean(1)[visible]
    return {
        "landed": float(inside.mean()),
        "visible": float(visible.mean()),
        "depth_rel_median": float(np.median(rel[hit])),
        "colour_median": float(np.median(diff)),
        "colour_p90": float(np.percentile(diff, 90)),
    }


# --------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("fixture", ["street", "room"])
def test_frames_honour_the_frame_source_contract(fixture: str, request: pytest.FixtureRequest) -> None:
    src: SyntheticSource = request.getfixturevalue(fixture)
    assert isinstance(src, FrameSource)
    assert src.name == f"synthetic-{fixture}" and src.has_ground_truth and src.metric
    assert len(src) == src.num_frames
    W, H = (640, 192) if fixture == "street" else (640, 480)
    K = src.intrinsics
    assert K[0, 0] == K[1, 1] and K[0, 1] == 0 and (K[0, 2], K[1, 2]) == ((W - 1) / 2, (H - 1) / 2)
    frames = [src.render_frame(i) for i in (0, 5)]
    for f in frames:
        assert f.image_rgb.shape == (H, W, 3) and f.image_rgb.dtype == np.uint8
        assert f.gt_depth_m.shape == (H, W) and f.gt_depth_m.dtype == np.float32
        assert np.array_equal(f.K, K) and f.gt_cam_from_world.shape == (4, 4)
        assert f.image_rgb.std() > 20  # textured, not a flat fill
    assert np.allclose(frames[0].gt_cam_from_world, np.eye(4), atol=1e-12)  # world = the first camera
    assert frames[1].timestamp_s == pytest.approx(5 / src.fps)
    depth = frames[1].gt_depth_m
    if fixture == "street":
        assert (depth == 0).any() and (depth > 0).mean() > 0.5  # sky has no depth; the rest does
    else:
        assert (depth > 0).all() and depth.max() < 11.0  # a closed room: every ray hits, within its diagonal


def test_open_source_builds_it_from_a_spec() -> None:
    from recon.datasets import open_source

    src = open_source("synthetic:room", num_frames=4, width=64, height=48, seed=2)
    assert isinstance(src, SyntheticSource) and src.scene == "room" and len(src) == 4


def test_iteration_is_lazy_strided_and_capped() -> None:
    src = SyntheticSource("street", num_frames=30, stride=4, max_frames=3, width=96, height=32)
    assert len(src) == 3
    frames = list(src)
    assert [f.index for f in frames] == [0, 4, 8]
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.4, 0.8])
    assert np.array_equal(frames[2].image_rgb, src.render_frame(8).image_rgb)


def test_same_seed_is_bit_identical_in_any_order_and_seeds_differ() -> None:
    a = SyntheticSource("street", num_frames=50, seed=11, width=160, height=48)
    b = SyntheticSource("street", num_frames=50, seed=11, width=160, height=48)
    c = SyntheticSource("street", num_frames=50, seed=12, width=160, height=48)
    b.render_frame(40)  # a different history must not change frame 7
    fa, fb, fc = a.render_frame(7), b.render_frame(7), c.render_frame(7)
    assert np.array_equal(fa.image_rgb, fb.image_rgb)
    assert np.array_equal(fa.gt_depth_m, fb.gt_depth_m)
    assert np.array_equal(fa.gt_cam_from_world, fb.gt_cam_from_world)
    assert not np.array_equal(fa.image_rgb, fc.image_rgb)


def test_invalid_options_fail_early_with_a_message() -> None:
    with pytest.raises(SourceError, match="unknown synthetic scene"):
        SyntheticSource("forest")
    with pytest.raises(SourceError, match="loop needs at least"):
        SyntheticSource("street", num_frames=20, loop=True)
    with pytest.raises(SourceError, match="num_frames"):
        SyntheticSource("room", num_frames=0)
    with pytest.raises(SourceError, match="noise_std"):
        SyntheticSource("room", noise_std=-1.0)


# ---------------------------------------------------------------------------------------- conventions
def test_intrinsics_pose_and_z_depth_conventions() -> None:
    """No wobble: the camera drives straight at 1.65 m along +z of frame 0. A ground point 30 m ahead of
    frame 0 must appear in frame 10 where K predicts, at z-depth 20 m (not the ray length)."""
    src = SyntheticSource("street", num_frames=20, seed=5, street=StreetConfig(wobble_deg=0.0))
    K = src.intrinsics
    f10 = src.render_frame(10)
    world_from_cam10 = invert_rigid(f10.gt_cam_from_world)
    assert np.allclose(world_from_cam10[:3, 3], [0.0, 0.0, 10.0], atol=1e-9)  # 10 frames x 1 m, straight ahead
    assert np.allclose(world_from_cam10[:3, :3], np.eye(3), atol=1e-9)
    X_world = np.array([0.0, 1.65, 30.0])  # y down: on the ground, in front of frame 0
    X_cam = f10.gt_cam_from_world[:3, :3] @ X_world + f10.gt_cam_from_world[:3, 3]
    u, v = K[0, 0] * X_cam[0] / X_cam[2] + K[0, 2], K[1, 1] * X_cam[1] / X_cam[2] + K[1, 2]
    assert X_cam[2] == pytest.approx(20.0)
    ui, vi = int(round(u)), int(round(v))
    d = f10.gt_depth_m[vi, ui]
    # The pixel centre's ray meets the ground where y = 1.65 (pixel centres at integer coordinates).
    assert d == pytest.approx(1.65 * K[1, 1] / (vi - K[1, 2]), rel=1e-5)
    assert d == pytest.approx(20.0, rel=0.03)
    # z-depth: every ground pixel of a row has the same depth, whatever its column (ray length would not).
    row = f10.gt_depth_m[vi, 200:440]
    assert np.ptp(row[row > 0]) < 1e-3 * d
    # The solid edge lines (5.25 m either side, painted in world space) appear where fx and cx say, to a
    # fraction of a pixel: their brightness centroids in rows at known depths.
    grey = f10.image_rgb.astype(np.float64).mean(2)
    for v in (130, 150, 170):
        z = 1.65 * K[1, 1] / (v - K[1, 2])
        centroids = []
        for side in (-1, 1):
            u_pred = K[0, 2] + side * K[0, 0] * 5.25 / z
            lo, hi = int(u_pred) - 12, int(u_pred) + 13
            w = np.clip(grey[v, lo:hi] - np.median(grey[v, lo - 20 : hi + 20]) - 40, 0, None)
            centroids.append((w * np.arange(lo, hi)).sum() / w.sum())
        assert (centroids[0] + centroids[1]) / 2 == pytest.approx(K[0, 2], abs=0.2)
        assert (centroids[1] - centroids[0]) / 2 == pytest.approx(K[0, 0] * 5.25 / z, abs=0.2)


# ---------------------------------------------------------------------------------------- consistency
# (110, 135) spans a 90-degree turn: the same surfaces seen from very different directions and
# distances, which catches any view-dependent shading or texture filtering.
@pytest.mark.parametrize("i, j", [(0, 1), (30, 33), (110, 135)])
def test_street_depth_poses_and_colours_agree_across_views(street: SyntheticSource, i: int, j: int) -> None:
    s = reprojection_stats(street.render_frame(i), street.render_frame(j))
    assert s["landed"] > 0.15 and s["visible"] > 0.8
    assert s["depth_rel_median"] < 1e-4
    assert s["colour_median"] < 3.0 and s["colour_p90"] < 12.0


@pytest.mark.parametrize("i, j", [(0, 2), (100, 115)])
def test_room_depth_poses_and_colours_agree_across_views(room: SyntheticSource, i: int, j: int) -> None:
    s = reprojection_stats(room.render_frame(i), room.render_frame(j))
    assert s["landed"] > 0.4 and s["visible"] > 0.9
    assert s["depth_rel_median"] < 1e-4
    assert s["colour_median"] < 2.0 and s["colour_p90"] < 6.0


def test_reprojection_check_catches_a_wrong_pose(street: SyntheticSource) -> None:
    """The consistency test above would fail on a pose off by 0.2 m or 0.3 degrees."""
    fi, fj = street.render_frame(30), street.render_frame(33)
    bad = Frame(fj.index, fj.timestamp_s, fj.image_rgb, fj.K, fj.gt_cam_from_world.copy(), fj.gt_depth_m)
    bad.gt_cam_from_world[0, 3] += 0.2
    assert reprojection_stats(fi, bad)["depth_rel_median"] > 1e-3
    c, s = math.cos(math.radians(0.3)), math.sin(math.radians(0.3))
    bad.gt_cam_from_world = np.array([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1.0]]) @ fj.gt_cam_from_world
    assert reprojection_stats(fi, bad)["colour_median"] > 3.0


def test_effects_change_images_but_never_the_ground_truth() -> None:
    opts = dict(num_frames=20, seed=2, width=160, height=48)
    clean = SyntheticSource("street", **opts).render_frame(6)
    fx = SyntheticSource("street", noise_std=3.0, exposure_jitter=0.3, motion_blur_px=2.0, **opts)
    noisy = fx.render_frame(6)
    assert np.array_equal(noisy.gt_depth_m, clean.gt_depth_m)
    assert np.array_equal(noisy.gt_cam_from_world, clean.gt_cam_from_world)
    diff = np.abs(noisy.image_rgb.astype(float) - clean.image_rgb)
    assert diff.mean() > 1.0
    assert np.array_equal(noisy.image_rgb, fx.render_frame(6).image_rgb)  # effects are seeded too


# -------------------------------------------------------------------------------------------- street
def _yaws(src: SyntheticSource, indices: range) -> np.ndarray:
    return np.unwrap([math.atan2(src.scene_from_cam(i)[1, 2], src.scene_from_cam(i)[0, 2]) for i in indices])


def test_street_turns_left_and_right_on_smooth_arcs() -> None:
    src = SyntheticSource("street", num_frames=800, seed=1, street=StreetConfig(wobble_deg=0.0))
    yaw = np.degrees(_yaws(src, range(800)))
    step = np.diff(yaw)
    assert np.abs(step).max() < 5.0  # arcs: no frame turns more than 5 degrees (15 m radius, 1 m steps)
    assert (step > 2).sum() > 10 and (step < -2).sum() > 10  # both turn directions occur
    assert np.ptp(yaw) == pytest.approx(90.0, abs=0.5)  # a staircase: left, right, left ... never back


def test_loop_returns_to_the_start() -> None:
    n = 700
    src = SyntheticSource("street", num_frames=n, loop=True, seed=4)
    start, after_last = src.scene_from_cam(0), src.scene_from_cam(n)
    assert np.allclose(after_last, start, atol=1e-9)  # frame n would be frame 0 again
    last_centre = invert_rigid(src.gt_cam_from_world(n - 1))[:3, 3]
    assert np.linalg.norm(last_centre) == pytest.approx(src.step_m, rel=0.05)
    yaw = _yaws(src, range(n + 1))
    assert abs(abs(yaw[-1] - yaw[0]) - 2 * math.pi) < 1e-6  # one full turn around the loop
    mid = invert_rigid(src.gt_cam_from_world(n // 2))[:3, 3]
    assert np.linalg.norm(mid) > 100.0  # it really went somewhere


def _min_distance_to_objects(src: SyntheticSource, index: int) -> float:
    """3-D distance from the camera centre to the nearest object (a room's shell excluded)."""
    boxes, cyls = src.primitives_near(index)
    boxes = boxes.take(np.flatnonzero(~boxes.inside))
    p = src.scene_from_cam(index)[:3, 3]
    c, s = np.cos(boxes.yaw), np.sin(boxes.yaw)
    d = p - boxes.center
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
    d_box = np.linalg.norm(np.maximum(np.abs(local) - boxes.half, 0), axis=1).min()
    radial = np.maximum(np.linalg.norm(cyls.center_xy - p[:2], axis=1) - cyls.radius, 0)
    vertical = np.maximum(np.maximum(cyls.z0 - p[2], p[2] - cyls.z1), 0)
    return float(min(d_box, np.hypot(radial, vertical).min()))


@pytest.mark.parametrize("loop", [False, True])
def test_no_object_intrudes_on_the_road_anywhere_along_the_route(loop: bool) -> None:
    """Far along the drive, at straights and turns (where other segments' objects meet this road), the
    camera keeps the width of its lane and the next one free (parked cars stand beyond 5 m)."""
    src = SyntheticSource("street", num_frames=6000, loop=loop, seed=9)
    distances = [_min_distance_to_objects(src, i) for i in range(4000, 6000, 9)]
    assert min(distances) > 5.0
    boxes, _ = src.primitives_near(5000)
    assert len(boxes) > 100  # and the town is not empty


def test_a_frame_ten_kilometres_out_renders_alone_quickly() -> None:
    src = SyntheticSource("street", num_frames=20_000, seed=6)
    src.render_frame(0)  # build the textures first: set-up is not what is timed
    t0 = time.perf_counter()
    far = src.render_frame(10_000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0  # no dependence on the 9999 frames before it
    centre = invert_rigid(far.gt_cam_from_world)[:3, 3]
    assert np.linalg.norm(centre) > 5_000.0  # a 10 km drive along a staircase route
    assert (far.gt_depth_m > 0).mean() > 0.5 and far.image_rgb.std() > 20
    assert len(src._scene._cache) <= src.street_config.cache_segments  # bounded memory
    # Float32 precision does not decay far from the origin: views there still agree exactly.
    s = reprojection_stats(far, src.render_frame(10_002))
    assert s["depth_rel_median"] < 1e-4 and s["colour_median"] < 3.0


# ----------------------------------------------------------------------------------------------- room
def test_room_camera_keeps_its_distance_from_every_surface() -> None:
    cfg = RoomConfig()
    src = SyntheticSource("room", num_frames=240, seed=8, room=cfg, loop=True)
    hx, hy, hz = (0.5 * s for s in cfg.size_m)
    for i in range(0, 240, 3):
        x, y, z = src.scene_from_cam(i)[:3, 3]
        assert min(hx - abs(x), hy - abs(y), z, 2 * hz - z) > 0.5
        assert _min_distance_to_objects(src, i) > 0.5
    assert np.allclose(src.scene_from_cam(240), src.scene_from_cam(0), atol=1e-9)
    boxes, cyls = src.primitives_near(0)
    assert len(boxes) + len(cyls) > 25  # furnished


# ------------------------------------------------------------------------------------------------ disk
def test_render_sequence_round_trips_through_the_kitti_and_tum_readers(tmp_path) -> None:
    from recon.datasets import KittiSource, TumSource

    opts = dict(num_frames=6, seed=1, width=128, height=40)
    seq = render_sequence(tmp_path / "kitti", scene="street", name="s00", fmt="kitti", **opts)
    ref = list(SyntheticSource("street", **opts))
    back = list(KittiSource(seq))
    assert len(back) == 6
    for r, b in zip(ref, back):
        assert np.array_equal(r.image_rgb, b.image_rgb)
        assert np.allclose(b.K, r.K) and np.allclose(b.gt_cam_from_world, r.gt_cam_from_world, atol=1e-6)
        near = (r.gt_depth_m > 0) & (r.gt_depth_m < 65)
        assert np.abs(b.gt_depth_m[near] - r.gt_depth_m[near]).max() <= 0.0006  # millimetre PNGs
        far = r.gt_depth_m > 65.6
        assert far.any() and (b.gt_depth_m[far] == 0).all()  # beyond uint16 millimetres: unknown, not clipped

    root = render_sequence(tmp_path / "tum", scene="room", fmt="tum", num_frames=3, width=64, height=48)
    tum = list(TumSource(root, intrinsics=SyntheticSource("room", width=64, height=48).intrinsics))
    assert len(tum) == 3 and np.allclose(
        tum[2].gt_cam_from_world,
        SyntheticSource("room", num_frames=3, width=64, height=48).gt_cam_from_world(2),
        atol=1e-6,
    )


def test_cli_render_writes_and_says_where(tmp_path, capsys) -> None:
    import argparse

    from recon.commands.render import add_args as add_render_args
    from recon.commands.render import main as run_render

    parser = argparse.ArgumentParser()
    add_render_args(parser)
    args = parser.parse_args(
        ["--scene", "street", "--frames", "3", "--out", str(tmp_path), "--width", "64", "--height", "24", "--name", "c"]
    )
    assert run_render(args) == 0
    assert len(list((tmp_path / "sequences" / "c" / "image_2").iterdir())) == 3
    assert str(tmp_path / "sequences" / "c") in capsys.readouterr().out
