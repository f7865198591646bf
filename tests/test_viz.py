"""recon.viz: the Rerun viewer writes what the pipeline shows to an .rrd that rerun itself reads back."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from recon.errors import ReconError
from recon.geometry import invert_rigid, make_rigid
from recon.types import Sim3
from recon.viz import NullViewer, WindowView, open_viewer
from recon.viz import blueprint as paths

pytest.importorskip("rerun")

H, W = 32, 48
WINDOW, OVERLAP, WINDOWS = 4, 1, 3
NEW_FRAMES = WINDOW + (WINDOWS - 1) * (WINDOW - OVERLAP)  # 10


def test_window_points_are_the_pixels_the_map_fused(tmp_path: Path) -> None:
    # The map left out the left half of every new frame (its filters): the view must not show it either.
    from dataclasses import replace

    view = _view(1)
    F = view.new.stop - view.new.start
    fused = np.zeros((F, H // 2, W // 2), np.float32)
    fused[:, :, W // 4 :] = 1.0
    viewer = open_viewer("none", rrd=tmp_path / "f.rrd")
    viewer.log_window(replace(view, fused_conf=fused, fused_stride=2))
    viewer.close()
    chunks, _ = _read(tmp_path / "f.rrd")
    (chunk,) = chunks["/" + paths.window_path(1)]
    local = np.array(chunk.to_record_batch().column("Points3D:positions")[0].as_py())
    world = view.world_from_window.apply(local.astype(np.float64))
    kept = view.new_points(2)[:, :, W // 4 :].reshape(-1, 3)
    left_out = view.new_points(2)[:, :, : W // 4].reshape(-1, 3)
    assert len(local) > 0
    assert np.min(np.linalg.norm(world[:, None] - kept[None], axis=2), axis=1).max() < 1e-4  # each a fused pixel
    assert np.min(np.linalg.norm(world[:, None] - left_out[None], axis=2), axis=1).min() > 1e-3  # none left out


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _world_from_cam(i: int) -> np.ndarray:
    return make_rigid(_rot_z(2.0 * i), np.array([0.1 * i, 0.02 * i * i, 0.05 * i]))


# GT: the same path in another world frame and scale (what a dataset's poses look like).
GT_FROM_WORLD = Sim3(2.5, _rot_z(40.0) @ np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]), np.array([3.0, -1.0, 0.5]))


def _view(k: int, map_calls: list[int] | None = None) -> WindowView:
    first = k * (WINDOW - OVERLAP)
    frames = list(range(first, first + WINDOW))
    K = np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]])
    world_from_cam = np.stack([_world_from_cam(i) for i in frames])
    depth = np.full((WINDOW, H, W), 2.0, np.float32) + np.linspace(0, 1, W, dtype=np.float32)
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    points_cam = rays[None] * depth[..., None]
    points_world = (
        np.einsum("sij,shwj->shwi", world_from_cam[:, :3, :3], points_cam) + world_from_cam[:, None, None, :3, 3]
    )
    conf = np.random.default_rng(k).uniform(0.5, 3.0, (WINDOW, H, W)).astype(np.float32)
    gt_world_from_cam = GT_FROM_WORLD.apply_to_world_from_cam(world_from_cam)

    def map_points() -> tuple[np.ndarray, np.ndarray]:
        if map_calls is not None:
            map_calls.append(k)
        xyz = points_world[:, ::4, ::4].reshape(-1, 3).astype(np.float32)
        return xyz, np.full((len(xyz), 3), 200, np.uint8)

    new = slice(0 if k == 0 else OVERLAP, WINDOW)
    return WindowView(
        window=k,
        frame_indices=frames,
        timestamps_s=[0.1 * i for i in frames],
        new=new,
        images_rgb=np.random.default_rng(k).integers(0, 255, (WINDOW, H, W, 3), dtype=np.uint8),
        depth=depth,
        conf=conf,
        new_points=lambda stride: points_world[new, ::stride, ::stride].astype(np.float32),
        cam_from_world=invert_rigid(world_from_cam),
        K=np.stack([K] * WINDOW),
        world_from_window=Sim3(1.0 + 0.1 * k, _rot_z(5.0 * k), np.array([0.1 * k, 0.0, 0.0])),
        gt_cam_from_world=invert_rigid(gt_world_from_cam),
        alignment={
            "path": "lsa",
            "scale": 1.0 + 0.1 * k,
            "seam_rotation_deg": 0.1 * (k + 1),
            "seam_offset_rel": 0.002,
            "num_correspondences": 100,
        },
        stats={
            "fps": 10.0 + k,
            "rss_mb": 100.0,
            "peak_rss_mb": 120.0,
            "map_points": 500.0 * (k + 1),
            "window_s/infer": 0.5,
            "model/kv_cache_bytes": 1e6 * k,
        },
        map_points=map_points,
    )


def _read(path: Path) -> tuple[dict[str, list], dict[tuple[str, str], int]]:
    """-> (chunks per entity path, non-null rows per (entity path, component column)) of the recording."""
    from rerun.chunk import RrdReader

    chunks: dict[str, list] = defaultdict(list)
    rows: dict[tuple[str, str], int] = defaultdict(int)
    for chunk in RrdReader(path).stream():
        chunks[chunk.entity_path].append(chunk)
        batch = chunk.to_record_batch()
        for name in batch.schema.names:
            if ":" in name and not name.startswith("rerun.controls"):
                column = batch.column(name)
                rows[(chunk.entity_path, name)] += len(column) - column.null_count
    return chunks, rows


def _log_all(path: Path, **options: float) -> list[int]:
    from recon.viz.viewer_options import ViewerOptions

    map_calls: list[int] = []
    viewer = open_viewer("none", rrd=path, options=ViewerOptions(**options))
    for k in range(WINDOWS):
        viewer.log_window(_view(k, map_calls))
        viewer.wait_until_idle()  # type: ignore[attr-defined]  # each window's map, deterministically
    viewer.close()
    return map_calls


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    path = tmp_path_factory.mktemp("viz") / "run.rrd"
    map_calls = _log_all(path, map_interval_s=0.0)
    return path, map_calls


def test_a_recording_can_keep_every_nth_frames_depth(tmp_path: Path) -> None:
    _log_all(tmp_path / "thin.rrd", map_interval_s=0.0, depth_every=2)
    chunks, _ = _read(tmp_path / "thin.rrd")
    entity = {e.lstrip("/"): c for e, c in chunks.items()}
    assert 0 < sum(c.num_rows for c in entity[paths.DEPTH]) < NEW_FRAMES
    assert sum(c.num_rows for c in entity[paths.RGB]) == NEW_FRAMES
    _log_all(tmp_path / "none.rrd", map_interval_s=0.0, depth_every=0)
    chunks, _ = _read(tmp_path / "none.rrd")
    assert paths.DEPTH not in {e.lstrip("/") for e in chunks}


def test_rrd_has_frames_windows_map_and_plots(recording: tuple[Path, list[int]]) -> None:
    path, map_calls = recording
    chunks, rows = _read(path)
    entity = {e.lstrip("/"): c for e, c in chunks.items()}
    # One camera pose, pinhole and image of each kind per new frame, on both timelines.
    assert rows[("/" + paths.CAMERA, "Transform3D:translation")] == NEW_FRAMES
    assert rows[("/" + paths.IMAGE_PLANE, "Pinhole:image_from_camera")] == NEW_FRAMES
    for image in (paths.RGB, paths.DEPTH, paths.CONFIDENCE):
        assert sum(c.num_rows for c in entity[image]) == NEW_FRAMES, image
    for chunk in entity[paths.CAMERA] + entity[paths.RGB]:
        assert {"frame", "time"} <= set(chunk.timeline_names)
    # World axes are OpenCV's, once.
    assert all(c.is_static for c in entity[paths.WORLD])
    # One entity per window: its Sim(3) and its points, each logged once.
    windows = sorted(e for e in entity if e.startswith(paths.WINDOWS + "/"))
    assert windows == [paths.window_path(k) for k in range(WINDOWS)]
    for w in windows:
        assert rows[("/" + w, "Points3D:positions")] == 1
        assert rows[("/" + w, "Transform3D:scale")] == 1
    # The global map in place, once per window (called only for windows that log it).
    assert map_calls == list(range(WINDOWS))
    assert rows[("/" + paths.MAP, "Points3D:positions")] == WINDOWS
    # Per-window series (alignment, stats incl. grouped keys) and the window log.
    for series in (
        "plots/alignment/seam_rotation_deg",
        "plots/alignment/seam_offset_rel",
        "plots/run/fps",
        "plots/run/rss_mb",
        "plots/run/map_points",
        "plots/window_s/infer",
        "plots/model/kv_cache_bytes",
    ):
        assert rows[("/" + series, "Scalars:scalars")] == WINDOWS, series
        assert any(c.is_static for c in entity[series]), f"{series}: no SeriesLines"
    assert rows[("/" + paths.WINDOW_LOG, "TextLog:text")] == WINDOWS
    from rerun.chunk import RrdReader

    assert RrdReader(path).blueprints(), "no blueprint in the recording"


def test_window_points_are_in_the_window_frame(recording: tuple[Path, list[int]]) -> None:
    chunks, _ = _read(recording[0])
    (chunk,) = chunks["/" + paths.window_path(2)]
    batch = chunk.to_record_batch()
    scale = batch.column("Transform3D:scale")[0].as_py()[0][0]  # a uniform scale is stored as [s, s, s]
    translation = np.array(batch.column("Transform3D:translation")[0].as_py()[0])
    mat3x3 = np.array(batch.column("Transform3D:mat3x3")[0].as_py()[0]).reshape(3, 3).T  # column-major
    local = np.array(batch.column("Points3D:positions")[0].as_py())
    world = _view(2).new_points(1).reshape(-1, 3)
    back = local @ (scale * mat3x3).T + translation
    # Every logged point, moved by the logged Sim(3), is one of the window's world points.
    dists = np.min(np.linalg.norm(back[:, None, :] - world[None, ::7, :], axis=2), axis=1)
    assert np.isclose(scale, 1.2, atol=1e-6) and len(local) > 0
    assert np.median(dists) < 0.2


def test_ground_truth_is_aligned_onto_the_estimate(recording: tuple[Path, list[int]]) -> None:
    chunks, _ = _read(recording[0])

    def last_strip(entity: str) -> np.ndarray:
        rows = [
            (frame, strips)
            for chunk in chunks["/" + entity]
            for frame, strips in zip(
                chunk.to_record_batch().column("frame").to_pylist(),
                chunk.to_record_batch().column("LineStrips3D:strips").to_pylist(),
            )
        ]
        return np.array(max(rows, key=lambda r: r[0])[1][0])

    est, gt = last_strip(paths.TRAJECTORY), last_strip(paths.TRAJECTORY_GT)
    assert est.shape == gt.shape == (NEW_FRAMES, 3)
    np.testing.assert_allclose(gt, est, atol=1e-4)
    np.testing.assert_allclose(est, np.stack([_world_from_cam(i)[:3, 3] for i in range(NEW_FRAMES)]), atol=1e-5)


def test_update_window_transform_relogs_only_the_transform(tmp_path: Path) -> None:
    path = tmp_path / "update.rrd"
    viewer = open_viewer("none", rrd=path)
    viewer.log_window(_view(0))
    viewer.log_window(_view(1))
    viewer.update_window_transform(1, Sim3(2.0, _rot_z(10.0), np.array([1.0, 2.0, 3.0])))  # type: ignore[attr-defined]
    viewer.close()
    _, rows = _read(path)
    window = "/" + paths.window_path(1)
    assert rows[(window, "Transform3D:scale")] == 2
    assert rows[(window, "Points3D:positions")] == 1
    assert rows[("/" + paths.window_path(0), "Transform3D:scale")] == 1


def test_full_queue_drops_without_blocking(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from recon.viz.viewer_options import ViewerOptions

    path = tmp_path / "slow.rrd"
    viewer = open_viewer("none", rrd=path, options=ViewerOptions(queue_windows=1))
    release = threading.Event()
    handle = viewer._handle  # type: ignore[attr-defined]

    def slow_handle(item: object) -> None:  # a viewer thread that cannot keep up
        release.wait(timeout=10)
        handle(item)

    viewer._handle = slow_handle  # type: ignore[attr-defined]
    views = [_view(k % WINDOWS) for k in range(6)]
    with caplog.at_level(logging.WARNING, logger="recon.viz.rerun_viewer"):
        t0 = time.perf_counter()
        for view in views:
            viewer.log_window(view)
        elapsed = time.perf_counter() - t0
    release.set()
    viewer.close()
    assert elapsed < 2.0  # the worker is parked for 10 s: nothing waited for it
    assert viewer.windows_dropped == 5  # type: ignore[attr-defined]
    drops = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(drops) == 1
    _, rows = _read(path)
    assert rows[("/" + paths.CAMERA, "Transform3D:translation")] == WINDOW  # only the first window was shown


def test_viewing_off_is_a_null_viewer_without_rerun() -> None:
    assert isinstance(open_viewer("none", None), NullViewer)
    with pytest.raises(ReconError):
        open_viewer("bogus", None)
    code = (
        "import sys, recon.viz as v; v.open_viewer('none', None); assert 'rerun' not in sys.modules, 'rerun imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="display variables are a Linux/X11/Wayland matter")
def test_spawn_without_a_display_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ReconError, match="display"):
        open_viewer("spawn", None)


def test_recon_view_rejects_missing_and_non_rrd_files(tmp_path: Path) -> None:
    from recon.commands.view import add_args as add_view_args
    from recon.commands.view import main as run_view

    parser = argparse.ArgumentParser()
    add_view_args(parser)
    with pytest.raises(ReconError, match="no such file"):
        run_view(parser.parse_args([str(tmp_path / "missing.rrd")]))
    text = tmp_path / "notes.rrd"
    text.write_text("hello")
    with pytest.raises(ReconError, match="not a Rerun recording"):
        run_view(parser.parse_args([str(text), "--web"]))


def test_recon_run_records_every_frame_and_window(tmp_path: Path) -> None:
    """The real pipeline through `recon run --rrd`: what a user opens with `recon view`."""
    import json

    from recon.cli import main

    rrd = tmp_path / "rec.rrd"
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "synthetic:street",
                "--max-frames",
                "30",
                "--window",
                "10",
                "--overlap",
                "3",
                "--out",
                str(out),
                "--rrd",
                str(rrd),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    chunks, rows = _read(rrd)
    entity = {e.lstrip("/"): c for e, c in chunks.items()}
    frames, windows = summary["frames_in_trajectory"], summary["windows"]
    assert rows[("/" + paths.CAMERA, "Transform3D:translation")] == frames == 30
    assert sum(c.num_rows for c in entity[paths.RGB]) == frames
    assert sorted(e for e in entity if e.startswith(paths.WINDOWS + "/")) == sorted(
        paths.window_path(k) for k in range(windows)
    )
    assert rows[("/" + paths.TRAJECTORY_GT, "LineStrips3D:strips")] >= 1  # the synthetic source has ground truth
    assert rows[("/" + paths.MAP, "Points3D:positions")] >= 1
    assert rows[("/plots/run/fps", "Scalars:scalars")] == windows


def test_a_served_recording_stays_up_after_the_run_until_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import rerun as rr

    from recon.viz.rerun_viewer import RerunViewer
    from recon.viz.viewer_options import ViewerOptions

    stopped: list[bool] = []
    recording = rr.RecordingStream("test")
    recording.set_sinks(rr.FileSink(str(tmp_path / "served.rrd")))
    viewer = RerunViewer(recording, ViewerOptions(linger=True), cleanup=lambda: stopped.append(True))
    viewer.log_window(_view(0, []))
    viewer.close()  # the run's end: everything logged is delivered, the server stays
    assert stopped == []

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("recon.viz.rerun_viewer.time.sleep", ctrl_c)
    viewer.linger()
    assert stopped == [True] and "keeps serving it until Ctrl-C" in capsys.readouterr().err
    viewer.stop()  # the command's own `finally`: once is enough
    assert stopped == [True]


def test_recon_view_web_stops_its_servers_on_sigterm(tmp_path: Path) -> None:
    """A service manager (or `kill`) ends `recon view --web` with SIGTERM: it exits, and its ports are free."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    rrd = tmp_path / "rec.rrd"
    viewer = open_viewer("none", rrd=rrd)
    viewer.log_window(_view(0))
    viewer.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recon", "view", "--web", "--port", str(port), str(rrd)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving until Ctrl-C" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # serving until stopped is what it was asked to do
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while True:  # the web server (a child process) is gone with it: the port binds again
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            break
        except OSError:
            assert time.monotonic() < deadline, f"port {port} still taken after SIGTERM"
            time.sleep(0.2)
