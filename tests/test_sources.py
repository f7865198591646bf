"""Frame sources (recon.datasets): every kind on small files written here, the writers' round trips, the
resize map, open_source, and the two real captures in ../shared when present."""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.datasets import (
    ImageFolderSource,
    KittiSource,
    StreamSource,
    TumSource,
    VideoSource,
    apply_resize,
    length_hint,
    open_source,
    plan_resize,
    resize_for_model,
    write_kitti_sequence,
    write_tum_sequence,
)
from recon.datasets import stream as stream_module
from recon.datasets.kitti import cam2_offset
from recon.errors import FormatError, SourceError
from recon.geometry import invert_rigid, make_rigid, rotation_from_axis_angle
from recon.trajectory_io import read_kitti
from recon.types import Frame, ResizeMap

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

K_SMALL = np.array([[40.0, 0.0, 15.5], [0.0, 41.0, 11.5], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------- helpers


def synthetic_frames(
    n: int,
    hw: tuple[int, int] = (24, 32),
    depth_range_m: tuple[float, float] = (0.5, 12.0),
    with_depth: bool = True,
    with_pose: bool = True,
    t0_s: float = 0.0,
    dt_s: float = 0.1,
    seed: int = 0,
) -> Iterator[Frame]:
    """Random textured frames with known poses (in an arbitrary world: frame 0 is not identity) and depth
    with a few invalid (0) pixels."""
    rng = np.random.default_rng(seed)
    h, w = hw
    for i in range(n):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = rng.uniform(*depth_range_m, (h, w)).astype(np.float32)
        depth[0, :3] = 0.0
        R = rotation_from_axis_angle(np.array([0.1 + 0.02 * i, -0.05 * i, 0.3]))
        cam_from_world = make_rigid(R, np.array([0.3 * i - 1.0, 0.1, 2.0 + 0.05 * i]))
        yield Frame(
            index=i,
            timestamp_s=t0_s + i * dt_s,
            image_rgb=image,
            K=K_SMALL,
            gt_cam_from_world=cam_from_world if with_pose else None,
            gt_depth_m=depth if with_depth else None,
        )


def relative_to_first(frames: list[Frame]) -> list[np.ndarray]:
    """cam_i_from_cam_0 for each frame: what a source must yield as gt_cam_from_world."""
    world_from_first = invert_rigid(frames[0].gt_cam_from_world)
    return [f.gt_cam_from_world @ world_from_first for f in frames]


def write_image(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def solid(value: int, hw: tuple[int, int] = (8, 10)) -> np.ndarray:
    return np.full(hw + (3,), value, dtype=np.uint8)


VIDEO_HW = (48, 64)


def write_test_video(path: Path, n: int = 10, fps: float = 10.0) -> None:
    """Left half red, right half grey 20*i: colour order and frame identity survive MJPG compression."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (VIDEO_HW[1], VIDEO_HW[0]))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    for i in range(n):
        rgb = np.zeros(VIDEO_HW + (3,), dtype=np.uint8)
        rgb[:, : VIDEO_HW[1] // 2] = (200, 30, 30)
        rgb[:, VIDEO_HW[1] // 2 :] = 20 * i
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


def video_frame_number(frame: Frame) -> int:
    return int(round(frame.image_rgb[:, VIDEO_HW[1] // 2 + 4 :].mean() / 20))


def assert_red_left(frame: Frame) -> None:
    left = frame.image_rgb[:, : VIDEO_HW[1] // 2 - 4].reshape(-1, 3).mean(axis=0)
    assert left[0] > 150 and left[2] < 80, f"not RGB order: left half mean {left}"


def assert_one_line(err: pytest.ExceptionInfo[BaseException]) -> None:
    assert "\n" not in str(err.value) and str(err.value).strip()


# ---------------------------------------------------------------- image folder


def test_folder_natural_sort_case_insensitive_extensions_and_timestamps(tmp_path: Path) -> None:
    for name, value in [("img10.png", 10), ("img2.PNG", 2), ("img1.png", 1), ("img3.Jpg", 3), ("img20.bmp", 20)]:
        write_image(tmp_path / name, solid(value * 10))
    (tmp_path / "notes.txt").write_text("not an image")
    src = ImageFolderSource(tmp_path, fps=5.0, intrinsics=(30.0, 31.0, 4.5, 3.5))
    frames = list(src)
    # jpg is lossy: compare the grey level loosely, the order exactly
    assert [round(f.image_rgb.mean() / 10) for f in frames] == [1, 2, 3, 10, 20]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert len(src) == 5 and not src.has_ground_truth
    np.testing.assert_array_equal(frames[0].K, [[30.0, 0, 4.5], [0, 31.0, 3.5], [0, 0, 1]])

    strided = ImageFolderSource(tmp_path, stride=2, max_frames=2, fps=5.0)
    got = list(strided)
    assert len(strided) == 2
    assert [round(f.image_rgb.mean() / 10) for f in got] == [1, 3]
    assert [f.index for f in got] == [0, 2]
    assert [f.timestamp_s for f in got] == pytest.approx([0.0, 0.4])  # stride keeps real spacing


def test_folder_skips_corrupt_image_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(tmp_path / "a1.png", solid(10))
    (tmp_path / "a2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "a3.jpg").write_bytes(b"")
    write_image(tmp_path / "a4.png", solid(40))
    write_image(tmp_path / "a5.png", solid(50, hw=(9, 10)))  # a stray size cannot join the run
    src = ImageFolderSource(tmp_path, fps=1.0)
    with caplog.at_level(logging.WARNING, logger="recon.datasets.folder"):
        frames = list(src)
    assert [int(f.image_rgb[0, 0, 0]) for f in frames] == [10, 40]
    assert [f.index for f in frames] == [0, 3]  # the file's position, not the yield count
    assert [f.timestamp_s for f in frames] == [0.0, 3.0]
    assert src.skipped == ["a2.png", "a3.jpg", "a5.png"]
    logged = caplog.text
    assert "a2.png" in logged and "a3.jpg" in logged and "a5.png" in logged


def test_folder_image_size_is_most_images_size_not_the_first_one(tmp_path: Path) -> None:
    write_image(tmp_path / "a0.png", solid(5, hw=(4, 5)))  # a thumbnail sorting first
    for i in range(1, 4):
        write_image(tmp_path / f"a{i}.png", solid(10 * i))
    src = ImageFolderSource(tmp_path)
    assert [(f.index, f.hw) for f in src] == [(1, (8, 10)), (2, (8, 10)), (3, (8, 10))]
    assert src.skipped == ["a0.png"]
    (tmp_path / "a2.png").unlink()
    (tmp_path / "a3.png").unlink()
    two = ImageFolderSource(tmp_path)
    assert [f.index for f in two] == [1] and two.skipped == ["a0.png"]  # one each: the larger image wins


def test_folder_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images") as err:
        ImageFolderSource(tmp_path)
    assert_one_line(err)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(SourceError, match="none of the 1 images"):
        list(ImageFolderSource(tmp_path))
    with pytest.raises(SourceError, match="stride"):
        ImageFolderSource(tmp_path, stride=0)
    with pytest.raises(SourceError, match="intrinsics"):
        ImageFolderSource(tmp_path, intrinsics=(1.0, 2.0))


# ---------------------------------------------------------------- video


def test_video_frames_timestamps_stride_and_length(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_test_video(path, n=10, fps=10.0)
    src = VideoSource(path, intrinsics=K_SMALL)
    assert len(src) == 10 and length_hint(src) == 10
    frames = list(src)
    assert [video_frame_number(f) for f in frames] == list(range(10))
    assert [f.timestamp_s for f in frames] == pytest.approx([i / 10 for i in range(10)], abs=1e-6)
    assert all(f.hw == VIDEO_HW and f.image_rgb.dtype == np.uint8 for f in frames)
    assert_red_left(frames[0])
    np.testing.assert_array_equal(frames[0].K, K_SMALL)
    assert len(list(src)) == 10  # iterable again

    strided = VideoSource(path, stride=3)
    got = list(strided)
    assert len(strided) == 4
    assert [video_frame_number(f) for f in got] == [0, 3, 6, 9]
    assert [f.index for f in got] == [0, 3, 6, 9]
    assert [f.timestamp_s for f in got] == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=1e-6)

    capped = VideoSource(path, stride=2, max_frames=3)
    assert len(capped) == 3 and [video_frame_number(f) for f in capped] == [0, 2, 4]
    assert list(VideoSource(path, max_frames=0)) == []


def test_video_that_cannot_be_opened_is_one_line_source_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 50)
    with pytest.raises(SourceError, match="cannot open video") as err:
        VideoSource(junk)
    assert_one_line(err)
    with pytest.raises(SourceError, match="not found"):
        VideoSource(tmp_path / "missing.mp4")


# ---------------------------------------------------------------- streams


class FakeCapture:
    """Hands out `frames`, then fails reads (a dropped stream); optionally raises KeyboardInterrupt on
    read number `interrupt_at` (0-based), like Ctrl-C arriving while blocked in read()."""

    def __init__(self, frames: list[np.ndarray] | None, interrupt_at: int | None = None) -> None:
        self.frames = list(frames) if frames is not None else []
        self.opened = frames is not None
        self.interrupt_at = interrupt_at
        self.reads = 0
        self.released = False

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.interrupt_at is not None and self.reads == self.interrupt_at:
            raise KeyboardInterrupt
        self.reads += 1
        if self.frames:
            return True, self.frames.pop(0)
        return False, None

    def release(self) -> None:
        self.released = True


class FakeOpener:
    """open_capture replacement: gives out the prepared captures in order, then unopenable ones."""

    def __init__(self, captures: list[FakeCapture]) -> None:
        self.captures = list(captures)
        self.handed_out: list[FakeCapture] = []
        self.specs: list[int | str] = []

    def __call__(self, spec: int | str) -> FakeCapture:
        self.specs.append(spec)
        cap = self.captures.pop(0) if self.captures else FakeCapture(None)
        self.handed_out.append(cap)
        return cap


def bgr_frames(values: list[int]) -> list[np.ndarray]:
    return [np.full((6, 8, 3), v, dtype=np.uint8) for v in values]


def test_stream_reads_a_video_file_through_the_default_capture(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_test_video(path, n=6)
    src = StreamSource(str(path), reconnect_delay_s=0.0)
    assert length_hint(src) is None
    frames = list(src)
    assert [video_frame_number(f) for f in frames] == list(range(6))  # a file ends, it is not replayed
    assert_red_left(frames[0])
    assert src.reconnects == 0 and not src.interrupted
    ts = [f.timestamp_s for f in frames]
    assert ts == sorted(ts) and ts[0] >= 0.0
    assert [video_frame_number(f) for f in StreamSource(str(path), stride=2, max_frames=2)] == [0, 2]


def test_stream_reconnects_a_bounded_number_of_times_then_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(stream_module.time, "sleep", sleeps.append)
    opener = FakeOpener([FakeCapture(bgr_frames([1, 2, 3])), FakeCapture(None), FakeCapture(bgr_frames([4, 5, 6, 7]))])
    src = StreamSource("rtsp://user:pw@cam.local/live", max_reconnects=3, reconnect_delay_s=0.25, open_capture=opener)
    frames = list(src)
    assert [int(f.image_rgb[0, 0, 0]) for f in frames] == [1, 2, 3, 4, 5, 6, 7]
    assert [f.index for f in frames] == list(range(7))
    # drop -> fail, recover (count resets on a frame) -> drop -> 3 failed attempts in a row -> end
    assert src.reconnects == 5 and len(opener.specs) == 6
    assert sleeps == [0.25] * 5
    assert all(c.released for c in opener.handed_out)
    assert opener.specs[0] == "rtsp://user:pw@cam.local/live"
    assert "pw" not in src.name


def test_stream_of_a_finite_video_over_http_ends_at_its_end(tmp_path: Path, http_file: Callable[..., str]) -> None:
    """Each reconnect restarted the file and each of its frames reset the retry count: 155 frames read from
    a 67-frame file after 62 s, and counting. A video with a stated length ends there."""
    write_test_video(tmp_path / "clip.avi", n=6)
    src = StreamSource(
        http_file((tmp_path / "clip.avi").read_bytes()), reconnect_delay_s=0.0, open_timeout_s=5.0, read_timeout_s=5.0
    )
    frames = list(islice(src, 30))  # the guard: the old loop would fill it
    assert [video_frame_number(f) for f in frames] == [f.index for f in frames] == list(range(6))
    assert src.reconnects == 0 and src.notes == []


def test_stream_of_a_finite_video_over_http_resumes_after_a_drop_without_repeats(
    tmp_path: Path, http_file: Callable[..., str]
) -> None:
    """The connection drops after most of the video (FFmpeg's probe reads well ahead: a cut sooner fails the
    open): the reconnect plays the video from its start again; the frames already read are skipped, so each
    frame comes once, with its own index."""
    write_test_video(tmp_path / "clip.avi", n=12)
    data = (tmp_path / "clip.avi").read_bytes()
    src = StreamSource(
        http_file(data, cut_first_after=int(0.9 * len(data))),
        reconnect_delay_s=0.0,
        open_timeout_s=5.0,
        read_timeout_s=5.0,
    )
    frames = list(islice(src, 50))
    assert [video_frame_number(f) for f in frames] == [f.index for f in frames] == list(range(12))
    assert src.reconnects == 1 and not src.gave_up


def test_stream_reconnects_are_bounded_over_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that gives one frame per connection resets the in-a-row count every time: the run's own
    bound ends it."""
    monkeypatch.setattr(stream_module.time, "sleep", lambda s: None)

    def one_frame_each_time(spec: int | str) -> FakeCapture:
        return FakeCapture(bgr_frames([1]))

    default = StreamSource("rtsp://cam.local/live", open_capture=one_frame_each_time)
    read = len(list(islice(default, 10_000)))
    assert read < 10_000 and read == default.max_total_reconnects + 1
    src = StreamSource(
        "rtsp://cam.local/live", max_reconnects=3, max_total_reconnects=20, open_capture=one_frame_each_time
    )
    assert len(list(islice(src, 1000))) == 21
    assert src.gave_up and src.reconnects == 20
    assert "kept dropping: after 20 reconnects" in src.notes[0]


def test_stream_dead_after_start_ends_after_max_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module.time, "sleep", lambda s: None)
    opener = FakeOpener([FakeCapture(bgr_frames([9, 8]))])
    src = StreamSource(0, max_reconnects=2, open_capture=opener)
    assert [int(f.image_rgb[0, 0, 0]) for f in src] == [9, 8]
    assert src.reconnects == 2 and len(opener.specs) == 3 and opener.specs[0] == 0

    opener = FakeOpener([FakeCapture(bgr_frames([1, 2, 3, 4, 5]))])
    assert [int(f.image_rgb[0, 0, 0]) for f in StreamSource("3", stride=2, max_frames=2, open_capture=opener)] == [1, 3]
    assert opener.specs[0] == 3  # a digit string is a camera index


def test_stream_ctrl_c_ends_iteration_cleanly_and_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = FakeCapture(bgr_frames([1, 2, 3, 4, 5]), interrupt_at=2)
    src = StreamSource(0, open_capture=FakeOpener([cap]))
    got = []
    for frame in src:  # no KeyboardInterrupt escapes: the caller keeps what it got
        got.append(int(frame.image_rgb[0, 0, 0]))
    assert got == [1, 2]
    assert cap.released and src.interrupted

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stream_module.time, "sleep", ctrl_c)  # Ctrl-C while waiting to reconnect
    opener = FakeOpener([FakeCapture(bgr_frames([7]))])
    src = StreamSource(0, open_capture=opener)
    assert [int(f.image_rgb[0, 0, 0]) for f in src] == [7]
    assert src.interrupted and all(c.released for c in opener.handed_out)


def test_stream_that_cannot_open_is_one_line_source_error() -> None:
    src = StreamSource(5, open_capture=FakeOpener([FakeCapture(None)]))
    with pytest.raises(SourceError, match="camera 5") as err:
        next(iter(src))
    assert_one_line(err)
    # the real FFmpeg path: nothing listens on port 1, so the open fails at once
    real = StreamSource("rtsp://admin:hunter2@127.0.0.1:1/live", open_timeout_s=2.0, read_timeout_s=2.0)
    with pytest.raises(SourceError, match="cannot open stream") as err:
        next(iter(real))
    assert_one_line(err)
    assert "hunter2" not in str(err.value)


def test_rtsp_over_tcp_is_set_only_while_opening_and_only_if_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    env = stream_module.FFMPEG_OPTIONS_ENV
    seen: list[str | None] = []

    class RecordingCapture:
        def __init__(self, *args: object) -> None:
            seen.append(os.environ.get(env))

    monkeypatch.setattr(stream_module.cv2, "VideoCapture", RecordingCapture)
    monkeypatch.delenv(env, raising=False)
    stream_module.open_cv_capture("rtsp://cam/live")
    assert seen[-1] == "rtsp_transport;tcp" and env not in os.environ
    stream_module.open_cv_capture("http://cam/video.mjpg")
    assert seen[-1] is None
    monkeypatch.setenv(env, "rtsp_transport;udp")
    stream_module.open_cv_capture("rtsp://cam/live")
    assert seen[-1] == "rtsp_transport;udp" and os.environ[env] == "rtsp_transport;udp"


# ---------------------------------------------------------------- KITTI


def test_kitti_write_then_read_round_trip(tmp_path: Path) -> None:
    written = list(synthetic_frames(6, depth_range_m=(0.5, 80.0)))
    seq_dir = write_kitti_sequence(iter(written), tmp_path, "synth_a")
    assert seq_dir == tmp_path / "sequences" / "synth_a"
    assert (tmp_path / "poses" / "synth_a.txt").is_file()
    assert (seq_dir / "calib.txt").read_text().splitlines()[0].startswith("P0: ")

    src = KittiSource(seq_dir)
    assert src.name == "synth_a" and len(src) == 6 and src.has_ground_truth and src.metric
    np.testing.assert_allclose(src.intrinsics, K_SMALL, rtol=1e-12)
    read = list(src)
    expected_poses = relative_to_first(written)
    for w, r, T in zip(written, read, expected_poses):
        np.testing.assert_array_equal(r.image_rgb, w.image_rgb)
        np.testing.assert_allclose(r.K, K_SMALL, rtol=1e-12)
        assert r.timestamp_s == w.timestamp_s
        np.testing.assert_allclose(r.gt_cam_from_world, T, atol=1e-7)
        valid = (w.gt_depth_m > 0) & (w.gt_depth_m <= 65.535)  # uint16 millimetres end there
        assert np.all(np.abs(r.gt_depth_m - w.gt_depth_m)[valid] <= 0.0005 + 1e-6)
        assert np.all(r.gt_depth_m[~valid] == 0)  # beyond the range: unknown, never a wrong value
    np.testing.assert_allclose(read[0].gt_cam_from_world, np.eye(4), atol=1e-12)
    assert (written[0].gt_depth_m > 65.535).any()  # the far values were exercised

    strided = list(KittiSource(seq_dir, stride=2, max_frames=2, load_depth=False))
    assert [f.timestamp_s for f in strided] == [0.0, 0.2] and strided[0].gt_depth_m is None
    assert [f.index for f in strided] == [0, 2]  # the image's number, its line in poses/
    np.testing.assert_allclose(strided[1].gt_cam_from_world, expected_poses[2], atol=1e-7)
    assert isinstance(open_source(str(seq_dir / "image_2")), KittiSource)  # one level too deep still works


def test_a_run_leaves_kitti_depth_undecoded_and_tum_frames_as_they_are(tmp_path: Path) -> None:
    """Ground-truth depth is for `recon eval`, which reopens the source: a run does not decode a KITTI
    sequence's depth (about 1% of a drive's run). TUM pairs its frames with depth images, so a run reads the
    same frames there as the evaluation does."""
    from recon.commands.run import open_run_source

    written = list(synthetic_frames(3, depth_range_m=(0.5, 20.0)))
    options = {"stride": 1, "max_frames": None}
    kitti_dir = write_kitti_sequence(iter(written), tmp_path / "kitti", "s")
    run = list(open_run_source(str(kitti_dir), "kitti", options))
    assert len(run) == 3 and all(f.gt_depth_m is None and f.gt_cam_from_world is not None for f in run)
    assert all(f.gt_depth_m is not None for f in open_source(str(kitti_dir), kind="kitti", **options))
    tum_dir = write_tum_sequence(iter(written), tmp_path / "tum")
    run_tum = list(open_run_source(str(tum_dir), "tum", options))
    assert [f.index for f in run_tum] == [f.index for f in open_source(str(tum_dir), kind="tum", **options)]


def test_kitti_image_2_poses_are_offset_from_camera_0(tmp_path: Path) -> None:
    frames = list(synthetic_frames(4, with_depth=False))
    seq_dir = write_kitti_sequence(iter(frames), tmp_path, "stereo")
    t2 = np.array([0.06, -0.01, 0.02])  # camera-2 coords = camera-0 coords + t2 (KITTI: ~6 cm)
    P2 = np.hstack([K_SMALL, (K_SMALL @ t2)[:, None]])
    lines = (seq_dir / "calib.txt").read_text().splitlines()
    lines[2] = "P2: " + " ".join(f"{v:.12e}" for v in P2.reshape(-1))
    lines.append("Tr: " + " ".join(["1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0"]))
    (seq_dir / "calib.txt").write_text("\n".join(lines) + "\n")
    np.testing.assert_allclose(cam2_offset(P2), t2, atol=1e-12)

    read = list(KittiSource(seq_dir))
    # poses/ holds camera 0 relative to its first frame; a world point seen by camera 2 of frame i must
    # land at camera-0 coords + t2, with the world being camera 2 of frame 0.
    cam0_from_first0 = relative_to_first(frames)
    X_first0 = np.array([0.4, -0.3, 5.0])
    X_first2 = X_first0 + t2
    for i, frame in enumerate(read):
        expected_cam2 = cam0_from_first0[i][:3, :3] @ X_first0 + cam0_from_first0[i][:3, 3] + t2
        got_cam2 = frame.gt_cam_from_world[:3, :3] @ X_first2 + frame.gt_cam_from_world[:3, 3]
        np.testing.assert_allclose(got_cam2, expected_cam2, atol=1e-7)
    np.testing.assert_allclose(read[0].gt_cam_from_world, np.eye(4), atol=1e-12)


@pytest.mark.parametrize(
    ("filename", "line_no", "bad_line", "message"),
    [
        ("calib.txt", 3, "P2: 1 2 3", "12 numbers"),
        ("calib.txt", 3, "P2: 1 0 0 0 0 1 0 0 0 0 1 zero", "not a number"),
        ("calib.txt", 2, "this line has no key", "KEY: numbers"),
        ("times.txt", 2, "0.1 0.2", "one timestamp"),
        ("times.txt", 3, "nan", "NaN"),
        ("poses.txt", 2, "1 0 0 0 0 1 0 0 0 0 1", "12 numbers"),
        ("poses.txt", 3, "2 0 0 0 0 1 0 0 0 0 1 0", "rotation"),
    ],
)
def test_kitti_malformed_lines_name_file_and_line(
    tmp_path: Path, filename: str, line_no: int, bad_line: str, message: str
) -> None:
    seq_dir = write_kitti_sequence(synthetic_frames(3, with_depth=False), tmp_path, "09")
    path = tmp_path / "poses" / "09.txt" if filename == "poses.txt" else seq_dir / filename
    lines = path.read_text().splitlines()
    lines[line_no - 1] = bad_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=message) as err:
        KittiSource(seq_dir)
    assert f"{path}:{line_no}:" in str(err.value)
    assert_one_line(err)


def test_kitti_counts_and_layout_are_checked(tmp_path: Path) -> None:
    seq_dir = write_kitti_sequence(synthetic_frames(3, with_depth=False), tmp_path, "cnt")
    times = seq_dir / "times.txt"
    times.write_text("\n".join(times.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(SourceError, match=r"2 timestamps but .* 3 images") as err:
        KittiSource(seq_dir)
    assert_one_line(err)
    times.write_text("0\n0.1\n0.2\n")
    poses = tmp_path / "poses" / "cnt.txt"
    poses.write_text(poses.read_text() + "1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(SourceError, match=r"4 poses but .* 3 images"):
        KittiSource(seq_dir)
    poses.unlink()
    src = KittiSource(seq_dir)  # no poses: frames without ground truth
    assert not src.has_ground_truth and next(iter(src)).gt_cam_from_world is None
    (seq_dir / "calib.txt").write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(FormatError, match="no P2 line"):
        KittiSource(seq_dir)
    with pytest.raises(SourceError, match=r"image_2/ and calib.txt") as err:
        KittiSource(tmp_path)
    assert_one_line(err)


def test_kitti_writer_refuses_bad_input(tmp_path: Path) -> None:
    write_kitti_sequence(synthetic_frames(2), tmp_path, "once")
    with pytest.raises(SourceError, match="already exists"):
        write_kitti_sequence(synthetic_frames(2), tmp_path, "once")
    no_K = (Frame(index=0, timestamp_s=0.0, image_rgb=solid(5)) for _ in range(1))
    with pytest.raises(SourceError, match="need K"):
        write_kitti_sequence(no_K, tmp_path, "noK")
    with pytest.raises(SourceError, match="no frames"):
        write_kitti_sequence(iter([]), tmp_path, "empty")
    mixed = list(synthetic_frames(2))
    mixed[1].gt_cam_from_world = None
    with pytest.raises(SourceError, match="all frames or none"):
        write_kitti_sequence(iter(mixed), tmp_path, "mixed")
    with pytest.raises(SourceError, match="plain folder name"):
        write_kitti_sequence(synthetic_frames(1), tmp_path, "../escape")


@pytest.mark.parametrize(
    ("name", "count", "width", "height", "metric"), [("fox", 67, 360, 640, False), ("temple", 47, 480, 640, True)]
)
def test_real_captures_load_through_kitti_source(name: str, count: int, width: int, height: int, metric: bool) -> None:
    seq_dir = REAL_DATA / "sequences" / name
    if not seq_dir.is_dir():
        pytest.skip(f"real captures not present at {REAL_DATA} (only in the project workspace)")
    src = open_source(str(seq_dir))
    assert isinstance(src, KittiSource) and len(src) == count
    assert src.has_ground_truth and src.metric is metric
    world_from_cam = read_kitti(REAL_DATA / "poses" / f"{name}.txt")  # P2 = K|0 there: no cam2 offset
    stamps = []
    for i, frame in enumerate(src):
        assert frame.hw == (height, width)
        np.testing.assert_allclose(frame.K, src.intrinsics)
        expected = invert_rigid(invert_rigid(world_from_cam[0]) @ world_from_cam[i])
        np.testing.assert_allclose(frame.gt_cam_from_world, expected, atol=1e-9)
        stamps.append(frame.timestamp_s)
    assert i + 1 == count
    assert np.all(np.diff(stamps) > 0)
    K = src.intrinsics
    assert 0 < K[0, 2] < width and 0 < K[1, 2] < height  # principal point inside the image


# ---------------------------------------------------------------- TUM RGB-D


def test_tum_write_then_read_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "rgbd_dataset_freiburg1_synth"
    written = list(synthetic_frames(5, t0_s=1305031102.175304, dt_s=1 / 30))
    assert write_tum_sequence(iter(written), root) == root
    src = TumSource(root, intrinsics=K_SMALL)
    assert len(src) == 5 and src.has_ground_truth and src.metric
    read = list(src)
    for w, r, T in zip(written, read, relative_to_first(written)):
        np.testing.assert_array_equal(r.image_rgb, w.image_rgb)
        assert r.timestamp_s == w.timestamp_s
        np.testing.assert_allclose(r.K, K_SMALL)
        np.testing.assert_allclose(r.gt_cam_from_world, T, atol=1e-6)
        assert np.abs(r.gt_depth_m - w.gt_depth_m).max() <= 0.0001 + 1e-6  # 1/5000 m steps
        assert np.all(r.gt_depth_m[w.gt_depth_m == 0] == 0)

    preset = TumSource(root, stride=2, load_depth=False)
    np.testing.assert_allclose(preset.intrinsics, [[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]])
    got = list(preset)
    assert len(got) == 3 and got[0].gt_depth_m is None
    assert [f.timestamp_s for f in got] == [written[i].timestamp_s for i in (0, 2, 4)]


def _write_tum_lists(root: Path, rgb_s: list[float], depth_s: list[float], gt: list[tuple[float, float]]) -> None:
    """A TUM dir by hand: rgb/depth images named by index, ground truth translated along x by the
    given amount (timestamp, tx)."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rgb_lines = ["# color images", "# file: 'synthetic'", "# timestamp filename"]
    for i, t in enumerate(rgb_s):
        write_image(root / "rgb" / f"{i}.png", solid(10 * (i + 1)))
        rgb_lines.append(f"{t:.6f} rgb/{i}.png")
    depth_lines = ["# depth maps"]
    for i, t in enumerate(depth_s):
        cv2.imwrite(str(root / "depth" / f"{i}.png"), np.full((8, 10), 5000 * (i + 1), dtype=np.uint16))
        depth_lines.append(f"{t:.6f} depth/{i}.png")
    gt_lines = ["# timestamp tx ty tz qx qy qz qw"] + [f"{t:.6f} {x} 0 0 0 0 0 1" for t, x in gt]
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    (root / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")


def test_tum_associates_by_nearest_timestamp_and_drops_unmatched(tmp_path: Path) -> None:
    root = tmp_path / "rgbd_dataset_freiburg2_desk"
    rgb_s = [100.00, 100.10, 100.20, 100.30]
    depth_s = [100.29, 100.005, 100.105, 100.195]  # unsorted, a few ms off
    gt = [(100.092, 1.0), (100.105, 2.0), (100.199, 3.0), (100.31, 4.0), (100.33, 5.0)]  # none near 100.00
    _write_tum_lists(root, rgb_s, depth_s, gt)
    src = TumSource(root)
    np.testing.assert_allclose(src.intrinsics, [[520.9, 0, 325.1], [0, 521.0, 249.7], [0, 0, 1]])
    frames = list(src)
    assert [f.timestamp_s for f in frames] == pytest.approx([100.10, 100.20, 100.30])
    assert [int(f.image_rgb[0, 0, 0]) for f in frames] == [20, 30, 40]
    assert [float(f.gt_depth_m[0, 0]) for f in frames] == [3.0, 4.0, 1.0]  # depth images 2, 3, 0
    # gt nearest: 100.105 (x=2), 100.199 (x=3), 100.31 (x=4); relative to the first yielded frame
    np.testing.assert_allclose([f.gt_cam_from_world[0, 3] for f in frames], [0.0, -1.0, -2.0], atol=1e-9)
    assert [f.index for f in frames] == [1, 2, 3]  # rgb.txt entries; entry 0 has no ground truth

    with pytest.raises(SourceError, match="max_dt_s") as err:
        TumSource(root, max_dt_s=0.0001)
    assert_one_line(err)


def test_tum_intrinsics_presets_and_ros_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def make(name: str) -> Path:
        root = tmp_path / name
        _write_tum_lists(root, [1.0], [1.0], [(1.0, 0.0)])
        return root

    assert TumSource(make("rgbd_dataset_freiburg3_long_office")).intrinsics[0, 0] == 535.4
    with caplog.at_level(logging.INFO, logger="recon.datasets.tum"):
        K = TumSource(make("my_capture")).intrinsics
    np.testing.assert_allclose(K, [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    assert "ROS default" in caplog.text


def test_tum_malformed_list_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "fr1_bad"
    _write_tum_lists(root, [1.0, 2.0], [1.0, 2.0], [(1.0, 0.0), (2.0, 0.0)])
    rgb = root / "rgb.txt"
    rgb.write_text(rgb.read_text().replace("2.000000 rgb/1.png", "2.0oops rgb/1.png"))
    with pytest.raises(FormatError, match="not a number") as err:
        TumSource(root)
    assert f"{rgb}:5:" in str(err.value)
    rgb.write_text("1.0 rgb/0.png\n2.0\n")
    with pytest.raises(FormatError, match="timestamp filename") as err:
        TumSource(root)
    assert f"{rgb}:2:" in str(err.value)


# ---------------------------------------------------------------- resize


def blob_image(hw: tuple[int, int], uv: tuple[float, float], sigma: float) -> np.ndarray:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = np.exp(-((xx - uv[0]) ** 2 + (yy - uv[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.rint(255 * g).astype(np.uint8)[..., None], 3, axis=2)


def centroid(image: np.ndarray) -> np.ndarray:
    m = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    return np.array([(m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()])


@pytest.mark.parametrize(
    ("width", "height", "mode", "multiple_of"),
    [
        (48, None, "fit", 1),  # pure downscale by 0.5
        (192, None, "fit", 1),  # upscale by 2
        (70, 70, "fit", 14),
        (56, 28, "crop", 14),
        (56, 56, "pad", 14),
        (None, None, "fit", 14),
    ],
)
def test_resize_map_says_where_a_feature_lands(
    width: int | None, height: int | None, mode: str, multiple_of: int
) -> None:
    hw = (64, 96)
    uv = (49.3, 30.6)
    frame = Frame(index=0, timestamp_s=0.0, image_rgb=blob_image(hw, uv, sigma=4.0), K=K_SMALL)
    out = resize_for_model(frame, width=width, height=height, mode=mode, multiple_of=multiple_of)  # type: ignore[arg-type]
    rmap = out.resize
    assert rmap is not None and rmap.original_hw == hw and rmap.model_hw == out.hw
    assert out.hw[0] % multiple_of == 0 and out.hw[1] % multiple_of == 0
    if height is not None and mode in ("crop", "pad"):
        assert out.hw == (height, width)
    # background pad is white in pad mode; measure the blob only
    img = out.image_rgb.copy()
    if mode == "pad":
        inside = rmap.to_model(np.array([[0, 0], [hw[1] - 1, hw[0] - 1]]))
        mask = np.zeros(img.shape[:2], dtype=bool)
        mask[int(np.ceil(inside[0, 1])) : int(inside[1, 1]) + 1, int(np.ceil(inside[0, 0])) : int(inside[1, 0]) + 1] = (
            True
        )
        assert np.all(img[~mask] == 255)
        img[~mask] = 0
    np.testing.assert_allclose(centroid(img), rmap.to_model(np.array(uv)), atol=0.1)
    np.testing.assert_allclose(rmap.to_original(rmap.to_model(np.array(uv))), uv, atol=1e-12)


def test_pure_resize_uses_pixel_centre_convention() -> None:
    rmap = plan_resize((64, 96), width=48, multiple_of=1)
    assert rmap.model_hw == (32, 48)
    assert rmap.scale_xy == (0.5, 0.5) and rmap.offset_xy == (-0.25, -0.25)  # u' = 0.5 (u + 0.5) - 0.5


def test_resize_carries_K_exactly() -> None:
    frame = Frame(index=0, timestamp_s=0.0, image_rgb=solid(1, (64, 96)), K=K_SMALL)
    X = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.5], [0.01, 0.02, 1.2]])
    uv = (X @ K_SMALL.T)[:, :2] / X[:, 2:]
    for mode in ("fit", "crop", "pad"):
        out = resize_for_model(frame, width=70, height=42, mode=mode, multiple_of=14)  # type: ignore[arg-type]
        uv_model = (X @ out.K.T)[:, :2] / X[:, 2:]
        np.testing.assert_allclose(uv_model, out.resize.to_model(uv), atol=1e-9)
        np.testing.assert_allclose(out.resize.K_to_original(out.K), K_SMALL, atol=1e-12)


def test_resize_depth_is_nearest_neighbour_and_pad_is_invalid() -> None:
    depth = np.full((20, 30), 2.0, dtype=np.float32)
    depth[:, 13:] = 9.0  # a depth edge
    depth[5, 5] = 0.0
    frame = Frame(index=0, timestamp_s=0.0, image_rgb=solid(7, (20, 30)), gt_depth_m=depth)
    for width, height, mode in [(17, None, "fit"), (56, 56, "pad"), (14, 28, "crop"), (90, None, "fit")]:
        multiple_of = 1 if height is None else 14
        out = resize_for_model(frame, width=width, height=height, mode=mode, multiple_of=multiple_of)  # type: ignore[arg-type]
        assert out.gt_depth_m.dtype == np.float32 and out.gt_depth_m.shape == out.hw
        assert set(np.unique(out.gt_depth_m)) <= {0.0, 2.0, 9.0}  # never a blend across the edge
        # every model pixel holds the depth of the original pixel its centre maps to (0 outside)
        H, W = out.hw
        uv = np.stack(np.meshgrid(np.arange(W), np.arange(H)), axis=-1).reshape(-1, 2)
        src = np.floor(out.resize.to_original(uv) + 0.5).astype(int)
        inside = (src[:, 0] >= 0) & (src[:, 0] < 30) & (src[:, 1] >= 0) & (src[:, 1] < 20)
        expected = np.zeros(len(uv), dtype=np.float32)
        expected[inside] = depth[src[inside, 1], src[inside, 0]]
        np.testing.assert_array_equal(out.gt_depth_m.reshape(-1), expected)
    padded = resize_for_model(frame, width=56, height=56, mode="pad")
    assert padded.gt_depth_m[0, 0] == 0.0


def test_resizing_twice_chains_the_map() -> None:
    hw = (64, 96)
    uv = np.array([[49.3, 30.6], [10.0, 5.5]])
    frame = Frame(index=3, timestamp_s=1.5, image_rgb=blob_image(hw, tuple(uv[0]), 4.0), K=K_SMALL)
    first = resize_for_model(frame, width=84, height=56, mode="crop")
    second = resize_for_model(first, width=42, multiple_of=14)
    direct = second.resize.to_model(uv)
    via = plan_resize(first.hw, width=42, multiple_of=14).to_model(first.resize.to_model(uv))
    np.testing.assert_allclose(direct, via, atol=1e-12)
    assert second.resize.original_hw == hw and second.resize.model_hw == second.hw
    np.testing.assert_allclose(second.resize.K_to_model(K_SMALL), second.K, atol=1e-12)
    assert (second.index, second.timestamp_s) == (3, 1.5)


def test_resize_rejects_bad_requests() -> None:
    frame = Frame(index=0, timestamp_s=0.0, image_rgb=solid(1, (20, 30)))
    with pytest.raises(SourceError, match="mode"):
        resize_for_model(frame, width=28, height=28, mode="stretch")  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="multiple_of"):
        resize_for_model(frame, width=10, multiple_of=14)
    warp = ResizeMap(original_hw=(20, 30), model_hw=(20, 30), scale_xy=(1.0, 1.0), offset_xy=(0.3, 0.0))
    with pytest.raises(SourceError, match="whole-pixel"):
        apply_resize(frame, warp)


# ---------------------------------------------------------------- open_source


def test_open_source_picks_each_kind(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        write_image(folder / f"f{i}.png", solid(i))
    video = tmp_path / "clip.AVI"
    write_test_video(video, n=3)
    kitti = write_kitti_sequence(synthetic_frames(2), tmp_path / "kitti", "00")
    tum = write_tum_sequence(synthetic_frames(2), tmp_path / "tum")

    assert isinstance(open_source(str(folder)), ImageFolderSource)
    assert len(open_source(folder, stride=2)) == 2
    assert isinstance(open_source(str(video)), VideoSource)
    assert isinstance(open_source(str(kitti)), KittiSource)
    calibrated = open_source(str(tum), intrinsics=K_SMALL)  # the user's K applies to any kind, through one wrapper
    assert isinstance(calibrated.source, TumSource) and np.array_equal(calibrated.intrinsics, K_SMALL)
    for spec in ("0", 1, "rtsp://cam.local:554/stream", "https://cam.local/video.mjpg", "udp://239.0.0.1:1234"):
        assert isinstance(open_source(spec), StreamSource)  # streams open lazily: nothing connects here
    assert isinstance(open_source(str(video), kind="stream"), StreamSource)
    with pytest.raises(SourceError, match="not a KITTI sequence"):
        open_source(str(folder), kind="kitti")
    with pytest.raises(SourceError, match="fps") as err:
        open_source(str(kitti), fps=10)
    assert_one_line(err)


def test_open_source_errors_are_one_line_and_say_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "photo.png").write_bytes(b"")
    (tmp_path / "data.csv").write_text("1,2")
    cases = [
        (str(tmp_path / "nope"), "not found"),
        (str(tmp_path / "empty"), "without images"),
        (str(tmp_path / "photo.png"), "single image"),
        (str(tmp_path / "data.csv"), "unknown file type"),
        ("", "empty input"),
    ]
    for spec, what in cases:
        with pytest.raises(SourceError, match=what) as err:
            open_source(spec)
        assert_one_line(err)
    with pytest.raises(SourceError) as err:
        open_source(str(tmp_path / "nope"))
    for expected in ("video file", "image folder", "KITTI", "TUM", "camera index", "rtsp"):
        assert expected in str(err.value)
    with pytest.raises(SourceError, match="unknown source kind"):
        open_source(str(tmp_path), kind="lidar")


def test_open_source_synthetic_is_imported_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, dict[str, object]]] = []

    class FakeSynthetic:
        def __init__(self, scene: str, **options: object) -> None:
            calls.append((scene, options))

    fake = types.ModuleType("recon.datasets.synthetic")
    fake.SyntheticSource = FakeSynthetic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "recon.datasets.synthetic", fake)
    src = open_source("synthetic:street", max_frames=5)
    assert isinstance(src, FakeSynthetic) and calls == [("street", {"max_frames": 5})]


def test_depth_beyond_the_format_range_is_written_as_unknown() -> None:
    from recon.datasets.image_files import encode_depth_u16

    depth_m = np.array([[0.0, 1.2344, 65.535, 70.0]], np.float32)
    np.testing.assert_array_equal(encode_depth_u16(depth_m, 1000.0), [[0, 1234, 65535, 0]])
    np.testing.assert_array_equal(encode_depth_u16(depth_m, 5000.0), [[0, 6172, 0, 0]])
