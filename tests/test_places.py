"""Place recognition + geometric verification (recon.places) on synthetic streets with exact depth and poses.

Each window gets its own arbitrary frame and scale (as a geometry model's windows do): a keyframe's depth
and pose are expressed in its window's units, so a verified loop edge must recover the ratio of scales."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from recon.datasets.synthetic import SyntheticSource
from recon.geometry import invert_rigid, make_rigid, rotation_distance_deg, rotation_from_axis_angle
from recon.places import Keyframe, LoopMatch, PlaceConfig, PlaceDatabase
from recon.types import Sim3

W, H = 640, 192
LOOP_FRAMES, STEP = 200, 4  # a 200 m closed loop, a keyframe every 4 m: 50 keyframes + the closing frame
FAST = PlaceConfig(exclude_recent=8, vocabulary_keyframes=12)
SINGLE = replace(FAST, min_consistent=1)  # report a verified pair at once: tests of verification itself


def window_frame(window_id: int) -> Sim3:
    """`window_from_world` of a window: arbitrary rotation, offset and scale, fixed per window id."""
    rng = np.random.default_rng(1000 + window_id)
    return Sim3(
        float(rng.uniform(0.4, 2.5)), rotation_from_axis_angle(rng.normal(size=3) * 0.5), rng.normal(size=3) * 5
    )


def make_keyframe(frame, keyframe_id: int, window_id: int, depth: np.ndarray | None = None) -> Keyframe:
    """A keyframe in its window's units from a ground-truth frame (optionally with a substitute depth)."""
    window_from_world = window_frame(window_id)
    world_from_cam = invert_rigid(frame.gt_cam_from_world)
    d = frame.gt_depth_m if depth is None else depth
    return Keyframe(
        keyframe_id=keyframe_id,
        window_id=window_id,
        image_gray=cv2.cvtColor(frame.image_rgb, cv2.COLOR_RGB2GRAY),
        K=frame.K,
        depth=(d * window_from_world.s).astype(np.float32),
        conf=(1.0 / (1.0 + d)).astype(np.float32),  # nearer = more confident, so the top half is the near half
        window_from_cam=make_rigid(
            window_from_world.R @ world_from_cam[:3, :3], window_from_world.apply(world_from_cam[:3, 3])
        ),
    )


def true_edge(query_window: int, match_window: int) -> Sim3:
    return window_frame(match_window) @ window_frame(query_window).inverse()


def assert_edge_close(match: LoopMatch, kf: Keyframe) -> None:
    """Rotation within 1 deg, scale within 2%, and the query's points land within 3% of their depth."""
    est, gt = match.match_window_from_query_window, true_edge(match.query_window, match.match_window)
    assert rotation_distance_deg(est.R, gt.R) < 1.0
    assert abs(est.s / gt.s - 1) < 0.02
    v, u = np.nonzero(kf.depth[::8, ::8] > 0)
    z = kf.depth[::8, ::8][v, u]
    cam_points = np.column_stack([u * 8, v * 8, np.ones(len(u))]) @ np.linalg.inv(kf.K).T * z[:, None]
    window_points = cam_points @ kf.window_from_cam[:3, :3].T + kf.window_from_cam[:3, 3]
    err = np.linalg.norm(est.apply(window_points) - gt.apply(window_points), axis=1) / (z * gt.s)
    assert np.median(err) < 0.03


@pytest.fixture(scope="module")
def loop_source() -> SyntheticSource:
    return SyntheticSource("street", num_frames=LOOP_FRAMES, width=W, height=H, loop=True)


@pytest.fixture(scope="module")
def loop_drive(loop_source: SyntheticSource) -> list:
    """One lap (a keyframe every 4 m, the last ~1 m before the start), then the start of a second lap
    2 m off the first lap's keyframes 0..3."""
    return [loop_source.render_frame(i) for i in [*range(0, LOOP_FRAMES, STEP), LOOP_FRAMES - 1, 2, 6, 10, 14]]


def loop_keyframes(frames: list) -> list[Keyframe]:
    return [make_keyframe(f, k, window_id=k // 2) for k, f in enumerate(frames)]  # two keyframes per window


def near(a: Keyframe, b: Keyframe) -> bool:
    """Ground truth: the two cameras see the same place (close, looking the same way)."""
    pa, pb = (window_frame(k.window_id).inverse().apply(k.window_from_cam[:3, 3]) for k in (a, b))
    ra, rb = (window_frame(k.window_id).R.T @ k.window_from_cam[:3, :3] for k in (a, b))
    return bool(np.linalg.norm(pa - pb) < 12.0 and rotation_distance_deg(ra, rb) < 30.0)


# ------------------------------------------------------------------------------------ 1. a planted loop
def test_loop_closure_is_found_with_the_right_sim3(loop_drive: list) -> None:
    kfs = loop_keyframes(loop_drive)
    db = PlaceDatabase(FAST)
    found: list[LoopMatch] = []
    for kf in kfs:
        matches = db.add_and_query(kf)
        for m in matches:
            assert near(kf, kfs[m.match_keyframe]), f"false loop {m.query_keyframe} -> {m.match_keyframe}"
            assert_edge_close(m, kf)
        found += matches
    lap = LOOP_FRAMES // STEP
    closing = [m for m in found if m.query_keyframe >= lap]  # the end of the lap and the second lap
    assert len(closing) >= 3 and {m.match_keyframe for m in closing} <= {0, 1, 2, 3, 4}
    assert all(m.inliers >= FAST.min_inliers and m.rmse_rel < FAST.inlier_rel for m in closing)
    assert db.stats.candidates > len(found)  # wrong candidates were proposed, and rejected


def test_a_single_verified_view_waits_for_a_consistent_second(loop_drive: list, loop_source: SyntheticSource) -> None:
    """Temporal consistency: the first verified revisit is held back, the next consistent one releases both."""
    db = PlaceDatabase(FAST)
    for kf in loop_keyframes(loop_drive)[:20]:
        db.add_and_query(kf)
    first = make_keyframe(loop_source.render_frame(2 * STEP + 1), keyframe_id=100, window_id=77)
    assert db.add_and_query(first) == [] and db.stats.verified == 1
    second = make_keyframe(loop_source.render_frame(3 * STEP + 1), keyframe_id=101, window_id=77)
    matches = db.add_and_query(second)
    assert sorted(m.query_keyframe for m in matches) == [100, 101]
    for m in matches:
        assert_edge_close(m, first if m.query_keyframe == 100 else second)


def test_revisit_in_a_new_window_with_another_scale(loop_drive: list, loop_source: SyntheticSource) -> None:
    """Re-add a frame next to keyframe 2 as a fresh window far later: its scale differs from keyframe 2's."""
    db = PlaceDatabase(SINGLE)
    for kf in loop_keyframes(loop_drive)[:20]:
        db.add_and_query(kf)
    query = make_keyframe(loop_source.render_frame(2 * STEP + 1), keyframe_id=100, window_id=77)
    assert abs(window_frame(77).s / window_frame(1).s - 1) > 0.2
    matches = db.add_and_query(query)
    assert matches and matches[0].match_keyframe in (2, 3)
    assert_edge_close(matches[0], query)


# ------------------------------------------------------------------------------------ 2. false loops
def test_same_image_with_inconsistent_geometry_is_rejected(loop_drive: list, loop_source: SyntheticSource) -> None:
    """Frame 9 looks like keyframe 2 (frame 8); with its own depth it verifies (the control); with the
    depth of another place, or a depth no similarity explains, it must not."""
    frame = loop_source.render_frame(2 * STEP + 1)
    elsewhere = loop_drive[30].gt_depth_m
    inverted = np.where(frame.gt_depth_m > 0, 400.0 / np.maximum(frame.gt_depth_m, 1e-3), 0.0).astype(np.float32)
    for depth, should_match in [(None, True), (elsewhere, False), (inverted, False)]:
        db = PlaceDatabase(SINGLE)
        for kf in loop_keyframes(loop_drive)[:20]:
            db.add_and_query(kf)
        matches = db.add_and_query(make_keyframe(frame, keyframe_id=100, window_id=77, depth=depth))
        assert bool(matches) == should_match
        if not should_match:
            assert db.stats.candidates >= 1 and sum(db.stats.rejected.values()) >= 1


def test_no_false_loops_over_an_ordinary_drive() -> None:
    """A drive that never returns (another town): candidates are proposed, none verifies."""
    src = SyntheticSource("street", num_frames=240, width=W, height=H, seed=3)
    db = PlaceDatabase(SINGLE)  # no help from temporal consistency: every verified pair would count
    for k, i in enumerate(range(0, 240, STEP)):
        assert db.add_and_query(make_keyframe(src.render_frame(i), k, window_id=k // 2)) == []
    assert db.stats.candidates > 20


# ------------------------------------------------------------------------------------ 3. memory cap
def test_memory_is_capped_and_old_places_are_thinned_not_dropped(loop_drive: list) -> None:
    cfg = replace(FAST, max_keyframes=20, exclude_recent=5, vocabulary_keyframes=10)
    db = PlaceDatabase(cfg)
    sizes = []
    for kf in loop_keyframes(loop_drive):
        db.add_and_query(kf)
        assert len(db) <= cfg.max_keyframes
        sizes.append(db.nbytes)
    assert len(db) == cfg.max_keyframes and db.stats.evicted == len(loop_drive) - cfg.max_keyframes
    at_cap = sizes[cfg.max_keyframes - 1]
    assert max(sizes[cfg.max_keyframes :]) < 1.3 * at_cap  # bounded (posting lists may keep spare capacity)
    assert at_cap / cfg.max_keyframes < 80_000  # bytes per keyframe at 1000 ORB features
    ids = db.keyframe_ids
    assert ids == sorted(ids)
    assert ids[-cfg.exclude_recent - 1 :] == list(range(len(loop_drive) - cfg.exclude_recent - 1, len(loop_drive)))
    assert min(ids) < len(loop_drive) // 3  # not a FIFO: the start of the drive is still represented


# ------------------------------------------------------------------------------------ 4. recent exclusion
@pytest.mark.parametrize(
    ("exclude_recent", "query_window", "should_match"),
    [(3, 77, True), (30, 77, False), (3, 1, False)],  # control; too recent by count; the same window
)
def test_recent_keyframes_and_windows_are_excluded(
    loop_drive: list, loop_source: SyntheticSource, exclude_recent: int, query_window: int, should_match: bool
) -> None:
    cfg = replace(SINGLE, exclude_recent=exclude_recent, vocabulary_keyframes=5)
    db = PlaceDatabase(cfg)
    for kf in loop_keyframes(loop_drive)[:12]:
        db.add_and_query(kf)
    query = make_keyframe(loop_source.render_frame(2 * STEP + 1), keyframe_id=100, window_id=query_window)
    matches = db.add_and_query(query)
    assert bool(matches) == should_match
    if should_match:
        assert matches[0].match_keyframe in (2, 3)


def test_keyframe_contract() -> None:
    with pytest.raises(ValueError):
        Keyframe(0, 0, np.zeros((4, 4), np.float32), np.eye(3), np.zeros((4, 4)), np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError):
        PlaceConfig(max_keyframes=10, exclude_recent=10)
