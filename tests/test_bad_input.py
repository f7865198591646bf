"""Bad input (issue 7): every failure a user can cause or meet, as one table run through `recon.cli.main`.

Each case builds its bad input under tmp_path, runs `recon ...` in-process and checks:
- the exit code;
- stderr (fd-level, so FFmpeg/OpenCV noise written by C code is caught too): no traceback, and besides the
  allowed warnings (`recon: warning: ...`, the end-of-run reports of what a source skipped or survived, and
  `recon: WARNING: ...`, recon's logged warnings) exactly one line, the error (`recon: error: ...`, or
  `recon run: error: ...` from argument parsing), matching the case's regex; a case that goes on (exit 0)
  has no other line and a warning matching the regex;
- "nothing mixed": before the case its out dir holds a copy of one good earlier run, and `recon run` gets
  --overwrite (unless the case says `overwrite=False`: a run into that folder is then refused). After it,
  per case (`outputs`):
    IDENTICAL  the failure came before the run started: every file byte for byte as before, none added;
    VALID      the run started, then failed: none of the earlier run's files is left (the run removed them
               when it started), every file the run wrote parses, the three trajectory files agree, and no
               temporary file is left behind;
    WRITTEN    the run went on and finished: as VALID, and the outputs are the new run's, whole and consistent.
In-process, recon's logged per-file warnings go to pytest's log capture, not to stderr; the end-of-run
report lines are printed, so they are what the stderr checks see.
Full and read-only disks: out_read_only and out_disk_full_* mount a small tmpfs and skip unless run as root; the
`out_file_limit_*` cases give the same failure (EFBIG instead of ENOSPC) to any user through RLIMIT_FSIZE.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from recon.cli import main
from recon.datasets import stream as stream_module
from recon.datasets import write_kitti_sequence, write_tum_sequence
from recon.datasets.image_files import write_png
from recon.errors import OutputError
from recon.map_ply import PLY_VERTEX
from recon.outputs import TrajectoryWriter
from recon.trajectory_io import FRAMES_HEADER, read_frames, read_kitti, read_tum
from recon.types import Frame


class Outputs(Enum):
    IDENTICAL = "identical"
    VALID = "valid"
    WRITTEN = "written"


@dataclass
class Ctx:
    """What a case's setup may use: its tmp folder, the out dir (holding the earlier run; a setup may move
    it), small rendered frames, pytest's monkeypatch, and an ExitStack undone right after the run."""

    tmp: Path
    out: Path
    frames: list[Frame]
    monkeypatch: pytest.MonkeyPatch
    stack: ExitStack
    facts: dict[str, object] = field(default_factory=dict)  # what a setup wants its `check` to see (and "stdout")


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Ctx], list[str]]  # builds the bad input; returns the args after `recon` (--out added unless given)
    exit_code: int
    message: str  # regex for the error line (exit != 0) or for the warning report (exit 0)
    outputs: Outputs
    check: Callable[[Ctx], None] | None = None  # anything else the case promises
    overwrite: bool = (
        True  # the runner passes `recon run` --overwrite: the case's failure is under test, not the refusal
    )


FRAME_SIZE = "192,64"  # w,h of the rendered frames: small, so each run that goes on takes about a second
INTRINSICS = "111.36,111.36,95.5,31.5"  # their K (0.58 * width), for TUM, which has no intrinsics file


# -- inputs ------------------------------------------------------------------------------------------------


def folder(ctx: Ctx, name: str = "frames") -> Path:
    d = ctx.tmp / name
    d.mkdir()
    for f in ctx.frames:
        write_png(d / f"f{f.index:04d}.png", f.image_rgb)
    return d


def kitti(ctx: Ctx) -> Path:
    return write_kitti_sequence(iter(ctx.frames), ctx.tmp / "kitti", "07")


def tum(ctx: Ctx) -> Path:
    return write_tum_sequence(iter(ctx.frames), ctx.tmp / "tum")


def set_line(path: Path, line_no: int, text: str | None) -> None:
    """Replace line `line_no` (1-based) of `path`, or delete it with None."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def kitti_edit(file: str, line_no: int, text: str | None) -> Callable[[Ctx], list[str]]:
    """Setup: a KITTI sequence whose `file` (relative to the sequence folder) has line `line_no` replaced or
    deleted (None)."""

    def setup(ctx: Ctx) -> list[str]:
        seq = kitti(ctx)
        set_line((seq / file).resolve(), line_no, text)
        return ["run", str(seq)]

    return setup


def tum_edit(file: str, line_no: int, text: str | None) -> Callable[[Ctx], list[str]]:
    """Setup: a TUM RGB-D sequence whose `file` has line `line_no` replaced or deleted (None)."""

    def setup(ctx: Ctx) -> list[str]:
        root = tum(ctx)
        set_line(root / file, line_no, text)
        return ["run", str(root), "--intrinsics", INTRINSICS]

    return setup


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def video(ctx: Ctx, name: str, fourcc: str, keep: float = 1.0) -> Path:
    """The frames as a video file, cut to its first `keep` fraction of bytes (a copy that did not finish)."""
    path = ctx.tmp / name
    h, w = ctx.frames[0].hw
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for f in ctx.frames:
        writer.write(cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def tiny_vggt_state() -> dict[str, torch.Tensor]:
    from recon.models.vggt_net import VGGT, VGGTConfig

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in VGGT(VGGTConfig.tiny()).state_dict().items()}


def vggt_args(weights: Path | None) -> list[str]:
    return [
        "run",
        "synthetic:street",
        "--model",
        "vggt",
        "--model-config",
        "tiny",
        "--device",
        "cpu",
        *(["--weights", str(weights)] if weights is not None else []),
    ]


class FakeCapture:
    """A camera: hands out `frames` (BGR), then fails every read (unplugged); None: never opens."""

    def __init__(self, frames: list[np.ndarray] | None) -> None:
        self.frames = list(frames or [])
        self.opened = frames is not None

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self) -> None:
        self.opened = False


def fake_camera(ctx: Ctx, first: FakeCapture) -> list[str]:
    """Camera 7 is `first` at the first open, then never opens again; no real waiting between attempts."""
    captures = [first]
    opens: list[object] = []

    def open_capture(spec: int | str, **timeouts: float) -> FakeCapture:
        opens.append(spec)
        return captures.pop(0) if captures else FakeCapture(None)

    ctx.monkeypatch.setattr(stream_module, "open_cv_capture", open_capture)
    ctx.monkeypatch.setattr(stream_module.time, "sleep", lambda s: None)
    ctx.facts["opens"] = opens
    return ["run", "7"]


def silent_server(ctx: Ctx) -> int:
    """A TCP port that accepts connections (the kernel does) and never answers: an unreachable camera."""
    sock = ctx.stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock.getsockname()[1]


def file_size_limit(ctx: Ctx, max_bytes: int) -> None:
    """RLIMIT_FSIZE: no file of this process may grow past `max_bytes` (EFBIG, with SIGXFSZ ignored) until
    the run returns: a full disk as any user can have one."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    ctx.stack.callback(signal.signal, signal.SIGXFSZ, previous)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    ctx.stack.callback(resource.setrlimit, resource.RLIMIT_FSIZE, (soft, hard))


def tmpfs(ctx: Ctx, size: str, earlier_run: bool = True) -> Path:
    """A real small disk (root only: skips elsewhere); the case's out dir (with the earlier run, unless not
    `earlier_run`) moves onto it."""
    disk = mount_tmpfs(ctx, size)
    moved = disk / "out"
    if earlier_run:
        shutil.copytree(ctx.out, moved)
    else:
        moved.mkdir()
    ctx.out = moved
    return disk


def mount_tmpfs(ctx: Ctx, size: str) -> Path:
    """A real small disk (root only: skips elsewhere), unmounted after the case."""
    disk = ctx.tmp / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    ctx.stack.callback(subprocess.run, ["umount", "-l", str(disk)], check=False)
    return disk


def leave_free(disk: Path, free_bytes: int) -> None:
    st = os.statvfs(disk)
    (disk / "ballast").write_bytes(bytes(max(st.f_bavail * st.f_frsize - free_bytes, 0)))


# -- setups ------------------------------------------------------------------------------------------------
# Each builds one bad input and returns the command line.


def missing_path(ctx: Ctx) -> list[str]:
    return ["run", str(ctx.tmp / "no_such_drive.mp4")]


def empty_folder(ctx: Ctx) -> list[str]:
    (ctx.tmp / "empty").mkdir()
    (ctx.tmp / "empty" / "notes.txt").write_text("no images here")
    return ["run", str(ctx.tmp / "empty")]


def corrupt_images(ctx: Ctx) -> list[str]:
    d = folder(ctx)
    good = (d / "f0003.png").read_bytes()
    (d / "f0003b.png").write_bytes(good[: len(good) // 3])  # cut short
    (d / "f0005b.jpg").write_bytes(b"")  # zero bytes
    return ["run", str(d)]


def mixed_sizes(ctx: Ctx) -> list[str]:
    d = folder(ctx)
    for name in ("f0002b.png", "f0006b.png"):
        write_png(d / name, np.full((48, 64, 3), 128, np.uint8))
    return ["run", str(d)]


def all_images_corrupt(ctx: Ctx) -> list[str]:
    d = ctx.tmp / "junk"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    return ["run", str(d)]


def video_zero_length(ctx: Ctx) -> list[str]:
    (ctx.tmp / "drive.mp4").write_bytes(b"")
    return ["run", str(ctx.tmp / "drive.mp4")]


def video_not_a_video(ctx: Ctx) -> list[str]:
    (ctx.tmp / "drive.mp4").write_bytes(b"this is a text file with the wrong name\n" * 40)
    return ["run", str(ctx.tmp / "drive.mp4")]


def video_cut_before_its_index(ctx: Ctx) -> list[str]:
    return ["run", str(video(ctx, "drive.mp4", "mp4v", keep=0.5))]  # mp4v writes the index (moov) last


def video_cut_in_its_frames(ctx: Ctx) -> list[str]:
    return ["run", str(video(ctx, "drive.avi", "MJPG", keep=0.7))]  # AVI: header first, frames decode up to the cut


def camera_cannot_open(ctx: Ctx) -> list[str]:
    return fake_camera(ctx, FakeCapture(None))


def camera_drops_mid_run(ctx: Ctx) -> list[str]:
    return fake_camera(ctx, FakeCapture([cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2BGR) for f in ctx.frames]))


def stream_url_unreachable(ctx: Ctx) -> list[str]:
    return ["run", f"rtsp://127.0.0.1:{silent_server(ctx)}/live", "--timeout", "0.5"]


def kitti_without_calib(ctx: Ctx) -> list[str]:
    (kitti(ctx) / "calib.txt").unlink()
    return ["run", str(ctx.tmp / "kitti" / "sequences" / "07")]


kitti_calib_short_p2 = kitti_edit("calib.txt", 3, "P2: 111.36 0 95.5 0 0 111.36 31.5 0 0 0 1")
kitti_calib_without_p2 = kitti_edit("calib.txt", 3, None)
kitti_times_bad_line = kitti_edit("times.txt", 4, "0.3s")
kitti_times_missing_line = kitti_edit("times.txt", 8, None)


def kitti_times_extra_line(ctx: Ctx) -> list[str]:
    seq = kitti(ctx)
    (seq / "times.txt").write_text((seq / "times.txt").read_text() + "0.8\n0.9\n")
    return ["run", str(seq)]


kitti_times_not_increasing = kitti_edit("times.txt", 5, "0.15")
kitti_poses_bad_line = kitti_edit("../../poses/07.txt", 2, "1 0 0 0 0 1 0 0 0 0 1")
kitti_poses_missing_line = kitti_edit("../../poses/07.txt", 8, None)


def tum_without_rgb_txt(ctx: Ctx) -> list[str]:
    (tum(ctx) / "rgb.txt").unlink()
    return ["run", str(ctx.tmp / "tum"), "--intrinsics", INTRINSICS]


tum_rgb_bad_timestamp = tum_edit("rgb.txt", 5, "0.2oops rgb/000002.png")
tum_rgb_not_increasing = tum_edit("rgb.txt", 7, "0.1 rgb/000004.png")
tum_groundtruth_short_line = tum_edit("groundtruth.txt", 4, "0.1 1 2 3 0 0 0")


def tum_lists_a_missing_image(ctx: Ctx) -> list[str]:
    root = tum(ctx)
    (root / "rgb" / "000003.png").unlink()
    return ["run", str(root), "--intrinsics", INTRINSICS]


# --- issue 15: inputs -------------------------------------------------------------------------------------
# "Nothing mixed, nothing leaked, nothing hangs", the input side. Each case runs into a fresh out dir
# (`fresh_out`): what it promises does not depend on an earlier run being there.


def fresh_out(ctx: Ctx) -> None:
    ctx.out = ctx.tmp / "fresh_out"


def eval_ate(out: Path, gt: Path) -> float:
    assert main(["eval", str(out), "--gt", str(gt), "--no-geometry", "--no-plots"]) == 0
    return float(json.loads((out / "metrics.json").read_text())["trajectory"]["ate"]["rmse"])


def kitti_with_an_unreadable_image(ctx: Ctx) -> list[str]:
    fresh_out(ctx)
    seq = kitti(ctx)
    (seq / "image_2" / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return ["run", str(seq)]


def frames_keep_their_source_index(ctx: Ctx) -> None:
    """frames.txt names each pose by its image's number in the sequence, so `recon eval --gt poses.txt` pairs
    the poses after the unreadable image with their own ground truth: the ATE is the one of the same
    sequence without that image (every pose after it was paired with its neighbour's: ATE 0.27 instead of 0.022
    on the tester's sequence, 0.216 instead of 0.041 on these 8 frames)."""
    indices, _ = read_frames(ctx.out / "frames.txt")
    assert indices.tolist() == [0, 1, 2, 4, 5, 6, 7]
    without = write_kitti_sequence((f for f in ctx.frames if f.index != 3), ctx.tmp / "kitti_without", "07")
    out_without = ctx.tmp / "out_without"
    assert main(["run", str(without), "--out", str(out_without)]) == 0
    ate = eval_ate(ctx.out, ctx.tmp / "kitti" / "poses" / "07.txt")
    assert ate == pytest.approx(eval_ate(out_without, ctx.tmp / "kitti_without" / "poses" / "07.txt"), rel=1e-3)


def symlink_loop(d: Path) -> None:
    """f0010.png -> f0011.png -> f0010.png: opening either fails with ELOOP."""
    os.symlink("f0011.png", d / "f0010.png")
    os.symlink("f0010.png", d / "f0011.png")


def folder_with_a_symlink_loop(ctx: Ctx) -> list[str]:
    """Among good images, a link loop is one more unreadable file: skipped and reported like a corrupt one
    (it stopped the run as an internal error)."""
    fresh_out(ctx)
    d = folder(ctx)
    symlink_loop(d)
    return ["run", str(d)]


def folder_of_only_a_symlink_loop(ctx: Ctx) -> list[str]:
    """Nothing but a link loop: nothing readable, a user's error (exit 2), not an internal one."""
    fresh_out(ctx)
    d = ctx.tmp / "links"
    d.mkdir()
    symlink_loop(d)
    return ["run", str(d)]


def folder_with_a_thumbnail_first(ctx: Ctx) -> list[str]:
    """A thumbnail that sorts first is the odd image out, skipped with the usual report; the 8 real frames
    make the run (the thumbnail decided the size and all of them were skipped)."""
    fresh_out(ctx)
    d = folder(ctx)
    write_png(d / "a_thumb.png", cv2.resize(ctx.frames[0].image_rgb, (48, 16), interpolation=cv2.INTER_AREA))
    return ["run", str(d)]


def tum_listing_only_missing_images(ctx: Ctx) -> list[str]:
    """rgb.txt lists 8 images and none is there: nothing to read is an error, not an empty result."""
    fresh_out(ctx)
    root = tum(ctx)
    shutil.rmtree(root / "rgb")
    return ["run", str(root), "--intrinsics", INTRINSICS]


def images(ctx: Ctx, rgbs: list[np.ndarray]) -> Path:
    d = ctx.tmp / "images"
    d.mkdir()
    for i, rgb in enumerate(rgbs):
        write_png(d / f"f{i:04d}.png", rgb)
    return d


def folder_of(count: int, image: Callable[[Ctx, int], np.ndarray], *flags: str) -> Callable[[Ctx], list[str]]:
    """Setup: a folder of `count` images, image(ctx, i) each, run with `flags`."""

    def setup(ctx: Ctx) -> list[str]:
        fresh_out(ctx)
        return ["run", str(images(ctx, [image(ctx, i) for i in range(count)])), *flags]

    return setup


def street(ctx: Ctx, i: int) -> np.ndarray:
    return ctx.frames[i].image_rgb


def parked(ctx: Ctx, i: int) -> np.ndarray:
    return ctx.frames[0].image_rgb


def black(ctx: Ctx, i: int) -> np.ndarray:
    return np.zeros_like(ctx.frames[0].image_rgb)


def tiny(ctx: Ctx, i: int) -> np.ndarray:
    return cv2.resize(ctx.frames[i].image_rgb, (16, 16), interpolation=cv2.INTER_AREA)


def one_frame_video(ctx: Ctx) -> list[str]:
    fresh_out(ctx)
    one = Ctx(ctx.tmp, ctx.out, ctx.frames[:1], ctx.monkeypatch, ctx.stack)
    return ["run", str(video(one, "one.avi", "MJPG"))]


# What a demanding user expects of inputs that cannot give a reconstruction (they all finished with exit 0,
# empty or identity-only outputs, and at most an alignment warning): exit 2 and the reason, in one line.
# - 1 frame (a folder, a video, or what --stride leaves): too few frames; the stride is named, it is the fix.
# - 24 copies of one image: no motion (with keyframes on, all but the first are skipped as without motion; with
#   --no-keyframes the model sees no parallax, where OpenCV's 5-point solver used to assert: exit 1).
# - 2 frames a step apart: no motion either, too little parallax for one 3D point; a 2-pose trajectory and
#   no map is no reconstruction, and exit 0 would let a script take it for one.
# - all-black and 16x16 frames: no texture; the trajectory held only placeholder poses.
NO_MOTION = (
    r"no motion: the camera did not move in the 24 frames read \(all after the first were skipped as without motion\)"
)
NO_PARALLAX = r"no motion: the camera barely moved or only turned across the {} frames used: too little parallax"
NO_TEXTURE = r"no texture: the model found too few points to track in the {} frames used, so none could be placed"
ONE_FRAME = r"too few frames: 1 frame read{}; a reconstruction needs at least 2 frames"


def trajectory_of(n: int) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        assert len(read_tum(ctx.out / "trajectory.tum")[0]) == n

    return check


def test_a_video_over_http_is_run_once(
    street_frames: list[Frame],
    tmp_path: Path,
    http_file: Callable[..., str],
    capfd: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`recon run http://host/drive.avi` reads the file once and finishes (it replayed it for ever; here
    --max-frames stops the old loop): each frame once, by its number in the video."""
    ctx = Ctx(tmp_path, tmp_path / "out", street_frames, monkeypatch, ExitStack())
    url = http_file(video(ctx, "drive.avi", "MJPG").read_bytes())
    assert main(["run", url, "--max-frames", "20", "--timeout", "5", "--out", str(ctx.out)]) == 0
    assert read_frames(ctx.out / "frames.txt")[0].tolist() == list(range(len(street_frames)))
    assert "recon: warning" not in capfd.readouterr().err


def test_frames_that_could_not_be_placed_are_a_warning(
    street_frames: list[Frame], tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The camera's view goes black for its last frames: the run reconstructs the rest (exit 0), and says
    which part it did not; the black frames' poses are only their placed neighbour's (no word of it before)."""
    ctx = Ctx(tmp_path, tmp_path / "out", street_frames, monkeypatch, ExitStack())
    frames = images(ctx, [street(ctx, i) for i in range(len(street_frames))] + [black(ctx, 0)] * 4)
    capfd.readouterr()
    assert main(["run", str(frames), "--out", str(ctx.out)]) == 0
    summary = json.loads((ctx.out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["frames_unregistered"] == 4
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and re.match(
        r"recon: warning: 4 of the 12 frames in the trajectory could not be placed \(too little texture "
        r"or motion there\): each holds its nearest placed neighbour's pose",
        err[0],
    ), err


INPUT_CASES_15 = [
    Case(
        "kitti_unreadable_image_keeps_frame_identity",
        kitti_with_an_unreadable_image,
        0,
        r"skipped 1 image of .*image_2 that cannot be read .*: 000003\.png",
        Outputs.WRITTEN,
        frames_keep_their_source_index,
    ),
    Case(
        "folder_symlink_loop_skipped",
        folder_with_a_symlink_loop,
        0,
        r"skipped 2 images of .*frames that cannot be read .*: f0010\.png, f0011\.png; fix or remove them",
        Outputs.WRITTEN,
        trajectory_of(8),
    ),
    Case(
        "folder_of_only_a_symlink_loop",
        folder_of_only_a_symlink_loop,
        2,
        r"none of the 2 images in '.*links' could be read",
        Outputs.VALID,
    ),
    Case(
        "folder_thumbnail_sorted_first_skipped",
        folder_with_a_thumbnail_first,
        0,
        r"skipped 1 image of .*frames that cannot be read or differ in size .*: a_thumb\.png; fix or remove them",
        Outputs.WRITTEN,
        trajectory_of(8),
    ),
    Case(
        "tum_lists_only_missing_images",
        tum_listing_only_missing_images,
        2,
        r"none of the 8 images in '.*rgb\.txt' could be read",
        Outputs.VALID,
    ),
    Case("folder_of_one_frame", folder_of(1, street), 2, ONE_FRAME.format(""), Outputs.VALID),
    Case("video_of_one_frame", one_frame_video, 2, ONE_FRAME.format(""), Outputs.VALID),
    Case(
        "stride_leaves_one_frame",
        folder_of(8, street, "--stride", "100"),
        2,
        ONE_FRAME.format(r" \(--stride 100 keeps one frame in 100\)"),
        Outputs.VALID,
    ),
    Case("two_frames_one_step_apart", folder_of(2, street), 2, NO_PARALLAX.format(2), Outputs.VALID),
    Case("identical_frames", folder_of(24, parked), 2, NO_MOTION, Outputs.VALID),
    Case(
        "identical_frames_no_keyframes",
        folder_of(24, parked, "--no-keyframes"),
        2,
        NO_PARALLAX.format(24),
        Outputs.VALID,
    ),
    Case("all_black_frames", folder_of(24, black), 2, NO_TEXTURE.format(24), Outputs.VALID),
    Case("frames_of_16x16", folder_of(8, tiny), 2, NO_TEXTURE.format(r"\d+"), Outputs.VALID),
]
# --- end of issue 15: inputs


def weights_flag_missing(ctx: Ctx) -> list[str]:
    return vggt_args(None)


def weights_file_missing(ctx: Ctx) -> list[str]:
    return vggt_args(ctx.tmp / "model.safetensors")


def weights_not_a_checkpoint(ctx: Ctx) -> list[str]:
    (ctx.tmp / "model.safetensors").write_text("<html>404 Not Found</html>\n")  # a failed download
    return vggt_args(ctx.tmp / "model.safetensors")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]  # unpickling would create the marker file
        return (open, (str(self.marker), "w"))


def weights_pickle_with_code(ctx: Ctx) -> list[str]:
    torch.save({"aggregator.camera_token": torch.zeros(1), "x": _RunsCode(ctx.tmp / "pwned")}, ctx.tmp / "model.pt")
    return vggt_args(ctx.tmp / "model.pt")


def weights_keys_mismatch(ctx: Ctx) -> list[str]:
    state = tiny_vggt_state()
    state["aggregator.frame_blocks.0.attn.qkv.bais"] = state.pop("aggregator.frame_blocks.0.attn.qkv.bias")
    state["depth_head.norm.weight"] = torch.zeros(100)
    save_file(state, str(ctx.tmp / "model.safetensors"))
    return vggt_args(ctx.tmp / "model.safetensors")


def streamvggt_args(ctx: Ctx, *flags: str) -> list[str]:
    save_file(tiny_vggt_state(), str(ctx.tmp / "model.safetensors"))
    return [
        "run",
        "synthetic:street",
        "--max-frames",
        "6",
        "--model",
        "streamvggt",
        "--model-config",
        "tiny",
        "--device",
        "cpu",
        "--weights",
        str(ctx.tmp / "model.safetensors"),
        *flags,
    ]


def cache_budget_below_one_step(ctx: Ctx) -> list[str]:
    return streamvggt_args(ctx, "--cache", "keydiff", "--cache-budget", "10", "--window", "2")


def cache_without_budget(ctx: Ctx) -> list[str]:
    return streamvggt_args(ctx, "--cache", "queue")


def overlap_for_streamvggt(ctx: Ctx) -> list[str]:
    return streamvggt_args(ctx, "--cache", "none", "--overlap", "2")


def device_unknown(ctx: Ctx) -> list[str]:
    return streamvggt_args(ctx, "--cache", "none", "--device", "gpu0")


def device_unavailable(ctx: Ctx) -> list[str]:
    return streamvggt_args(ctx, "--cache", "none", "--device", "cuda:99")  # no such index, with or without CUDA


def cache_budget_for_vggt(ctx: Ctx) -> list[str]:
    return [*vggt_args(ctx.tmp / "model.safetensors"), "--cache-budget", "5000"]


def out_is_a_file(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--max-frames", "4", "--out", str(ctx.out / "summary.json")]


def out_under_a_file(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--max-frames", "4", "--out", str(ctx.out / "summary.json" / "run2")]


def out_read_only(ctx: Ctx) -> list[str]:
    disk = tmpfs(ctx, "8m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return ["run", "synthetic:street", "--max-frames", "4", "--out", str(ctx.out)]


def out_full_before_run(ctx: Ctx) -> list[str]:
    disk = tmpfs(ctx, "8m")
    leave_free(disk, 64 << 10)
    return ["run", "synthetic:street", "--max-frames", "4", "--out", str(ctx.out)]


def out_file_limit_before_run(ctx: Ctx) -> list[str]:
    file_size_limit(ctx, 100 << 10)
    return ["run", "synthetic:street", "--max-frames", "4"]


# The mid-run cases: 4-frame windows of the 640x192 street, no depth samples: after window 1's poses the
# run writes map.ply, ~430 KB. The pre-run probe (256 KiB) fits in both limits below; that map does not.
MID_RUN = ["run", "synthetic:street", "--max-frames", "8", "--window", "4", "--overlap", "1", "--depth-every", "0"]


def out_full_mid_run(ctx: Ctx) -> list[str]:
    disk = tmpfs(ctx, "8m", earlier_run=False)  # removed when the run starts, its files would free the space taken here
    leave_free(disk, 340 << 10)
    return [*MID_RUN, "--out", str(ctx.out)]


def out_file_limit_mid_run(ctx: Ctx) -> list[str]:
    file_size_limit(ctx, 350_000)
    return MID_RUN


def args_overlap_not_below_window(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--window", "6", "--overlap", "6"]


def args_max_frames_zero(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--max-frames", "0"]


def args_voxel_negative(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--voxel", "-0.1"]


def args_max_map_points_zero(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--max-map-points", "0"]


def args_not_a_number(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--window", "twenty"]


def args_weights_for_classical(ctx: Ctx) -> list[str]:
    (ctx.tmp / "model.safetensors").write_bytes(b"")
    return ["run", "synthetic:street", "--weights", str(ctx.tmp / "model.safetensors")]


def args_port_without_web_viewer(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--port", "9090"]


def args_timeout_for_a_folder(ctx: Ctx) -> list[str]:
    return ["run", str(folder(ctx)), "--timeout", "5"]


def args_intrinsics_not_positive(ctx: Ctx) -> list[str]:
    return ["run", str(folder(ctx)), "--intrinsics", "0,100,95.5,31.5"]


# -- extra checks ------------------------------------------------------------------------------------------


def poses(n: int) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        assert len(read_tum(ctx.out / "trajectory.tum")[0]) == n

    return check


def nothing_unpickled(ctx: Ctx) -> None:
    assert not (ctx.tmp / "pwned").exists(), "the pickle's code ran"


def camera_opened(times: int) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        assert ctx.facts["opens"] == [7] * times  # bounded: the first open and 3 retries

    return check


def keeps_finished_windows(ctx: Ctx) -> None:
    """The run died at a map write: the poses of the windows before it are in the files, whole lines."""
    assert len(read_tum(ctx.out / "trajectory.tum")[0]) >= 4


# -- the table ---------------------------------------------------------------------------------------------

ERR = "recon: error: "
CANNOT_OPEN = (
    "cannot open video '.*drive.mp4': it is truncated, corrupt or not a video; check it is a complete video file"
)

CASES = [
    # sources
    Case(
        "missing_path",
        missing_path,
        2,
        r"cannot open '.*no_such_drive\.mp4': not found; expected a video file",
        Outputs.IDENTICAL,
    ),
    Case(
        "empty_folder",
        empty_folder,
        2,
        r"cannot open '.*empty': a folder without images; expected a video file",
        Outputs.IDENTICAL,
    ),
    Case(
        "corrupt_images_skipped",
        corrupt_images,
        0,
        r"skipped 2 images of .*frames that cannot be read or differ in size from most of them: f0003b\.png, f0005b\.jpg; fix or remove them",
        Outputs.WRITTEN,
        poses(8),
    ),
    Case(
        "mixed_image_sizes_skipped",
        mixed_sizes,
        0,
        r"skipped 2 images of .*frames that cannot be read or differ in size .*: f0002b\.png, f0006b\.png",
        Outputs.WRITTEN,
        poses(8),
    ),
    Case(
        "all_images_corrupt",
        all_images_corrupt,
        2,
        r"none of the 3 images in '.*junk' could be read; check the files",
        Outputs.VALID,
    ),
    Case(
        "video_zero_length",
        video_zero_length,
        2,
        r"video '.*drive\.mp4' is empty \(0 bytes\).*pass a complete file",
        Outputs.IDENTICAL,
    ),
    Case("video_not_a_video", video_not_a_video, 2, CANNOT_OPEN, Outputs.IDENTICAL),
    Case("video_truncated_index", video_cut_before_its_index, 2, CANNOT_OPEN, Outputs.IDENTICAL),
    Case(
        "video_truncated_frames",
        video_cut_in_its_frames,
        0,
        r"video '.*drive\.avi' ended at frame [1-6] of the 8 its header states; the file looks truncated",
        Outputs.WRITTEN,
    ),
    Case(
        "camera_cannot_open",
        camera_cannot_open,
        2,
        r"cannot open stream 'camera 7' \(4 attempts\); check the camera index",
        Outputs.VALID,
        camera_opened(4),
    ),
    Case(
        "camera_drops_mid_run",
        camera_drops_mid_run,
        0,
        r"camera 7: the stream dropped and 3 reconnect attempts failed; the run ended there",
        Outputs.WRITTEN,
        poses(8),
    ),
    Case(
        "stream_url_unreachable",
        stream_url_unreachable,
        2,
        r"cannot open stream 'rtsp://127\.0\.0\.1:\d+/live': no answer within 0\.5 s; check the URL",
        Outputs.VALID,
    ),
    Case(
        "kitti_without_calib",
        kitti_without_calib,
        2,
        r"looks like a KITTI sequence \(image_2/\) but has no calib\.txt",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_calib_short_p2",
        kitti_calib_short_p2,
        2,
        r"calib\.txt:3: P2 needs 12 numbers \(3x4 row-major\), found 11",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_calib_without_p2",
        kitti_calib_without_p2,
        2,
        r"calib\.txt: no P2 line; expected 'P2: 12 numbers'",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_times_bad_line",
        kitti_times_bad_line,
        2,
        r"times\.txt:4: expected one timestamp in seconds, found '0\.3s'",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_times_missing_line",
        kitti_times_missing_line,
        2,
        r"times\.txt:8: 7 timestamps but .*image_2 has 8 images \(the lines for the last images are missing\)",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_times_extra_lines",
        kitti_times_extra_line,
        2,
        r"times\.txt:9: 10 timestamps but .*image_2 has 8 images \(this line and those after it have no image\)",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_times_not_increasing",
        kitti_times_not_increasing,
        2,
        r"times\.txt:5: timestamp 0\.15 is not after the one before it \(0\.3.*\); timestamps must increase",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_poses_bad_line",
        kitti_poses_bad_line,
        2,
        r"poses/07\.txt:2: expected 12 numbers, found 11",
        Outputs.IDENTICAL,
    ),
    Case(
        "kitti_poses_missing_line",
        kitti_poses_missing_line,
        2,
        r"poses/07\.txt:8: 7 poses but .*image_2 has 8 images",
        Outputs.IDENTICAL,
    ),
    Case(
        "tum_without_rgb_txt",
        tum_without_rgb_txt,
        2,
        r"looks like a TUM RGB-D sequence \(rgb/\) but has no rgb\.txt",
        Outputs.IDENTICAL,
    ),
    Case(
        "tum_rgb_bad_timestamp",
        tum_rgb_bad_timestamp,
        2,
        r"rgb\.txt:5: timestamp '0\.2oops' is not a number",
        Outputs.IDENTICAL,
    ),
    Case(
        "tum_rgb_not_increasing",
        tum_rgb_not_increasing,
        2,
        r"rgb\.txt:7: timestamp 0\.1 is not after the one before it",
        Outputs.IDENTICAL,
    ),
    Case(
        "tum_groundtruth_short_line",
        tum_groundtruth_short_line,
        2,
        r"groundtruth\.txt:4: expected 8 numbers, found 7",
        Outputs.IDENTICAL,
    ),
    Case(
        "tum_lists_a_missing_image",
        tum_lists_a_missing_image,
        0,
        r"skipped 1 image of .*rgb\.txt .*: 000003\.png; fix or remove",
        Outputs.WRITTEN,
        poses(7),
    ),
    *INPUT_CASES_15,  # issue 15, defined with their setups above
    # models
    Case(
        "weights_flag_missing",
        weights_flag_missing,
        2,
        r"the vggt model needs weights: pass --weights PATH",
        Outputs.IDENTICAL,
    ),
    Case(
        "weights_file_missing",
        weights_file_missing,
        2,
        r"weights file .*model\.safetensors does not exist; pass --weights PATH to a \.safetensors or \.pt checkpoint",
        Outputs.IDENTICAL,
    ),
    Case(
        "weights_not_a_checkpoint",
        weights_not_a_checkpoint,
        2,
        r"cannot read safetensors file .*model\.safetensors",
        Outputs.IDENTICAL,
    ),
    Case(
        "weights_pickle_with_code",
        weights_pickle_with_code,
        2,
        r"refusing .*model\.pt: not a weights-only torch file .*convert it to \.safetensors",
        Outputs.IDENTICAL,
        nothing_unpickled,
    ),
    Case(
        "weights_keys_mismatch",
        weights_keys_mismatch,
        2,
        r"weights do not match the model: .*1 missing, 1 unexpected, 1 with the wrong shape; "
        r"missing \(expected shape\): aggregator\.frame_blocks\.0\.attn\.qkv\.bias \[192\]; "
        r"unexpected \(shape in file\): aggregator\.frame_blocks\.0\.attn\.qkv\.bais \[192\]; "
        r"wrong shape \(expected vs file\): depth_head\.norm\.weight: expected \[128\], file has \[100\]; check --model",
        Outputs.IDENTICAL,
    ),
    # outputs
    Case(
        "out_is_a_file",
        out_is_a_file,
        2,
        r"output folder '.*summary\.json' is a file; pass --out to a folder",
        Outputs.IDENTICAL,
    ),
    Case(
        "out_under_a_file",
        out_under_a_file,
        2,
        r"cannot create output folder '.*summary\.json/run2' \(Not a directory\)",
        Outputs.IDENTICAL,
    ),
    Case(
        "out_read_only",
        out_read_only,
        2,
        r"output folder '.*out' cannot take 256 KiB \(Read-only file system\)",
        Outputs.IDENTICAL,
    ),
    Case(
        "out_disk_full_before_run",
        out_full_before_run,
        2,
        r"output folder '.*out' cannot take 256 KiB \(No space left on device\); free space there or pass --out",
        Outputs.IDENTICAL,
    ),
    Case(
        "out_file_limit_before_run",
        out_file_limit_before_run,
        2,
        r"output folder '.*out' cannot take 256 KiB \(File too large\); free space there or pass --out",
        Outputs.IDENTICAL,
    ),
    Case(
        "out_disk_full_mid_run",
        out_full_mid_run,
        2,
        r"cannot write .*out/map\.ply: No space left on device; free space there or pass --out",
        Outputs.VALID,
        keeps_finished_windows,
    ),
    Case(
        "out_file_limit_mid_run",
        out_file_limit_mid_run,
        2,
        r"cannot write .*out/map\.ply: File too large; free space there or pass --out",
        Outputs.VALID,
        keeps_finished_windows,
    ),
    # arguments
    Case(
        "args_overlap_not_below_window",
        args_overlap_not_below_window,
        2,
        r"--overlap must be in \[1, 5\] for --window 6, got 6",
        Outputs.IDENTICAL,
    ),
    Case("args_max_frames_zero", args_max_frames_zero, 2, r"--max-frames must be >= 1, got 0", Outputs.IDENTICAL),
    Case("args_voxel_negative", args_voxel_negative, 2, r"--voxel must be > 0, got -0\.1", Outputs.IDENTICAL),
    Case(
        "args_max_map_points_zero",
        args_max_map_points_zero,
        2,
        r"--max-map-points must be >= 1, got 0",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_cache_budget_below_one_step",
        cache_budget_below_one_step,
        2,
        r"budget_tokens=10 per layer is smaller than one step needs: at least 24 tokens per layer \(anchor frame 8 \+ 2 new frame\(s\) x 8\)",
        Outputs.VALID,
    ),
    Case(
        "args_bounded_cache_without_budget",
        cache_without_budget,
        2,
        r"--cache queue needs --cache-budget TOKENS",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_overlap_for_streamvggt",
        overlap_for_streamvggt,
        2,
        r"--overlap does not apply to --model streamvggt",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_cache_budget_for_vggt",
        cache_budget_for_vggt,
        2,
        r"--cache-budget applies to --model streamvggt only",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_device_unknown", device_unknown, 2, r"unknown --device 'gpu0'; use cpu, cuda or cuda:N", Outputs.IDENTICAL
    ),
    Case(
        "args_device_unavailable",
        device_unavailable,
        2,
        r"--device cuda:99 is not available here \(.*\); use --device cpu",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_not_a_number",
        args_not_a_number,
        2,
        r"^recon run: error: argument --window: invalid int value: 'twenty'; see 'recon run --help'$",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_weights_for_classical",
        args_weights_for_classical,
        2,
        r"--weights only apply to the learned models \(vggt, streamvggt, pi3\); the classical model takes none",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_port_without_web_viewer",
        args_port_without_web_viewer,
        2,
        r"--port .* needs --viewer serve \(got --viewer none\)",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_timeout_for_a_folder",
        args_timeout_for_a_folder,
        2,
        r"--timeout applies to camera and stream sources only; this source is a folder",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_intrinsics_not_positive",
        args_intrinsics_not_positive,
        2,
        r"intrinsics must be .* with positive focal lengths",
        Outputs.IDENTICAL,
    ),
]


# --- issue 15: outputs and the run's lifecycle ------------------------------------------------------------
# A run owns its output folder (an earlier run is refused, or replaced with --overwrite), writes only what
# it says it wrote, never stores a URL's password, and fails in one line where a user's setup is at fault.


def street_run(*flags: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["run", "synthetic:street", "--max-frames", "4", *flags]


def url_with_password(ctx: Ctx) -> list[str]:
    return ["run", f"http://user:secret@127.0.0.1:{silent_server(ctx)}/x.avi", "--timeout", "0.5"]


def out_name_too_long(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--max-frames", "4", "--out", str(ctx.tmp / ("x" * 300))]


def eval_gt_is_an_image(ctx: Ctx) -> list[str]:
    write_png(ctx.tmp / "x.png", ctx.frames[0].image_rgb)
    return ["eval", str(ctx.out), "--gt", str(ctx.tmp / "x.png")]


def view_corrupt_recording(ctx: Ctx) -> list[str]:
    (ctx.tmp / "rec.rrd").write_bytes(b"RRF2" + np.random.default_rng(0).bytes(4000))  # the magic bytes, then noise
    return ["view", "--web", str(ctx.tmp / "rec.rrd")]


def rrd_read_only(ctx: Ctx) -> list[str]:
    disk = mount_tmpfs(ctx, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return ["run", "synthetic:street", "--max-frames", "4", "--rrd", str(disk / "rec.rrd")]


def viewer_port_taken(ctx: Ctx) -> list[str]:
    return ["run", "synthetic:street", "--max-frames", "4", "--viewer", "serve", "--port", str(silent_server(ctx))]


def no_file_holds(text: str) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        assert [name for name, data in files(ctx.out).items() if text.encode() in data] == []

    return check


def names_no_map(ctx: Ctx) -> None:
    assert not (ctx.out / "map.ply").exists() and not re.search(r"map\.ply \(", str(ctx.facts["stdout"])), ctx.facts[
        "stdout"
    ]


CASES += [
    Case(
        "out_holds_an_earlier_run",
        street_run(),
        2,
        r"output folder '.*out' holds an earlier run \(config\.yaml, depth, frames\.txt, \.\.\.\); pass --overwrite to replace it",
        Outputs.IDENTICAL,
        overwrite=False,
    ),
    Case(
        "out_name_too_long",
        out_name_too_long,
        2,
        r"cannot create output folder '.*x{300}' \(File name too long\)",
        Outputs.IDENTICAL,
    ),
    Case(
        "args_voxel_infinite",
        street_run("--voxel", "inf"),
        2,
        r"--voxel must be a finite size in run units, got inf",
        Outputs.IDENTICAL,
    ),
    Case(
        "voxel_too_small_for_a_map",
        street_run("--voxel", "1e-30"),
        0,
        r"no map\.ply: every point fell outside the voxel grid at voxel 1e-30 .*; pass a larger --voxel",
        Outputs.WRITTEN,
        names_no_map,
    ),
    Case(
        "url_password_never_written",
        url_with_password,
        2,
        r"cannot open stream 'http://\*\*\*@127\.0\.0\.1:\d+/x\.avi': no answer within 0\.5 s",
        Outputs.VALID,
        no_file_holds("secret"),
    ),
    Case(
        "eval_gt_is_an_image",
        eval_gt_is_an_image,
        2,
        r"x\.png: not a text file; expected one pose per line",
        Outputs.IDENTICAL,
    ),
    Case(
        "view_corrupt_recording", view_corrupt_recording, 2, r"rec\.rrd: cannot read the recording", Outputs.IDENTICAL
    ),
    Case(
        "rrd_read_only",
        rrd_read_only,
        2,
        r"cannot write the recording: Failed to create file: Read-only file system .*rec\.rrd",
        Outputs.IDENTICAL,
    ),
    Case(
        "viewer_port_taken",
        viewer_port_taken,
        2,
        r"port \d+ on 127\.0\.0\.1 is in use by another program; pass another --port",
        Outputs.IDENTICAL,
    ),
]


def test_overwrite_replaces_the_earlier_run_and_keeps_the_users_files(
    earlier_run: Path, street_frames: list[Frame], tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """Run A (a drive with ground truth, evaluated) then run B (frames without any) into one folder: B's
    folder holds B's outputs only, so `recon eval` cannot score B against A's ground truth."""
    out = tmp_path / "out"
    shutil.copytree(earlier_run, out)
    (out / "notes.txt").write_text("mine")
    (out / "plots" / "sketch.txt").write_text("mine too")
    d = tmp_path / "frames"
    d.mkdir()
    for f in street_frames:
        write_png(d / f"f{f.index:04d}.png", f.image_rgb)
    assert run_main(["run", str(d), "--out", str(out), "--overwrite"]) == 0
    assert sorted(files(out)) == [
        "config.yaml",
        "depth/000000.npz",
        "frames.txt",
        "map.ply",
        "notes.txt",
        "plots/sketch.txt",
        "summary.json",
        "trajectory.kitti",
        "trajectory.tum",
    ]  # no ground truth, metrics or plots of run A
    assert json.loads((out / "summary.json").read_text())["input"]["source"] == str(d)
    capfd.readouterr()
    assert run_main(["eval", str(out)]) == 2
    assert re.search(r"has no ground truth: its source had none", capfd.readouterr().err)


def test_an_empty_folder_or_one_with_other_files_needs_no_overwrite(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for out in (tmp_path / "empty", tmp_path / "mine", tmp_path / "new"):
        assert run_main(["run", "synthetic:street", "--max-frames", "4", "--out", str(out)]) == 0
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def hold_run_lock(out: Path) -> subprocess.Popen:
    """Another process holding `out`'s run lock until killed; returned once it holds it."""
    code = (
        "import sys, time; from pathlib import Path; from recon.outputs import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_run_lock(out)
    try:
        capfd.readouterr()
        assert run_main(["run", "synthetic:street", "--max-frames", "4", "--out", str(out), "--overwrite"]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert err == [
            f"recon: error: output folder '{out}' is in use by another recon run (pid {holder.pid}); "
            "wait for it to end or pass --out to another folder"
        ]
        assert sorted(files(out)) == [".recon.lock"]  # the holder's, untouched
    finally:
        holder.kill()
        holder.wait()


def test_eval_of_a_folder_a_run_is_still_writing_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`recon eval OUT` while a run writes into OUT would score a trajectory still growing and interleave
    metrics.json with the run's own evaluation: one line naming the run, nothing written."""
    out = tmp_path / "out"
    assert run_main(["run", "synthetic:street", "--max-frames", "4", "--out", str(out), "--no-loop-closure"]) == 0
    (out / "metrics.json").unlink()
    holder = hold_run_lock(out)
    try:
        capfd.readouterr()
        assert run_main(["eval", str(out)]) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert err == [
            f"recon: error: output folder '{out}' is in use by another recon run (pid {holder.pid}); "
            "evaluate it when the run has ended"
        ]
        assert not (out / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_main(["eval", str(out)]) == 0 and (out / "metrics.json").is_file()
    assert not (out / ".recon.lock").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_run_lock(out)
    holder.kill()
    holder.wait()
    assert (out / ".recon.lock").read_text() == f"{holder.pid}\n"  # a dead pid
    assert run_main(["run", "synthetic:street", "--max-frames", "4", "--out", str(out)]) == 0
    assert not (out / ".recon.lock").exists()


def test_outputs_get_the_permissions_of_the_process_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        assert run_main(["run", "synthetic:street", "--max-frames", "4", "--out", str(tmp_path / "out")]) == 0
    finally:
        os.umask(previous)
    modes = {name: oct((tmp_path / "out" / name).stat().st_mode & 0o777) for name in files(tmp_path / "out")}
    assert set(modes.values()) == {"0o644"}, modes


def test_a_closed_stdout_loses_the_report_never_a_file(tmp_path: Path) -> None:
    """`recon run ... | true`: the reader is gone before recon prints its report."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "recon", "run", "synthetic:street", "--max-frames", "6", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.splitlines() == [
        "recon: error: standard output was closed before the report was printed; the files are written"
    ]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert (out / "metrics.json").is_file() and (out / "map.ply").is_file()


# -- the runner --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small good run; every case starts with a copy of its outputs in the out dir."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    assert main(["run", "synthetic:street", "--max-frames", "12", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def street_frames() -> list[Frame]:
    from recon.datasets.synthetic import SyntheticSource

    w, h = (int(v) for v in FRAME_SIZE.split(","))
    return list(SyntheticSource("street", num_frames=8, width=w, height=h))


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_parses(path: Path) -> None:
    name = path.name
    if name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".tum"):
        read_tum(path)
    elif name.endswith(".kitti"):
        read_kitti(path)
    elif name == "frames.txt":
        read_frames(path)
    elif name.endswith(".ply"):
        data = path.read_bytes()
        end = data.index(b"end_header\n") + len(b"end_header\n")
        count = int(re.search(rb"element vertex (\d+)", data[:end]).group(1))  # type: ignore[union-attr]
        assert data.startswith(b"ply\n") and len(data) - end == count * PLY_VERTEX.itemsize, f"{path}: truncated PLY"
    elif name.endswith(".npz"):
        with np.load(path) as z:
            assert all(z[k].size >= 0 for k in z.files)
    elif name.endswith(".png"):
        assert cv2.imread(str(path)) is not None, f"{path}: unreadable PNG"
    elif name == "config.yaml":
        from recon.config import RunConfig, from_dict

        from_dict(RunConfig, yaml.safe_load(path.read_text()))
    else:
        raise AssertionError(f"unexpected output file {path}")


def assert_consistent(out: Path) -> None:
    """Every file parses, no temporary is left, and the three trajectory files hold the same poses."""
    names = files(out)
    assert not [n for n in names if Path(n).name.startswith(".")], f"temporary files left: {names.keys()}"
    for name in names:
        assert_parses(out / name)
    n = len(read_tum(out / "trajectory.tum")[0])
    assert len(read_kitti(out / "trajectory.kitti")) == n and len(read_frames(out / "frames.txt")[0]) == n
    assert [
        len((out / name).read_text().splitlines()) for name in ("trajectory.tum", "trajectory.kitti", "frames.txt")
    ] == [n, n, n + 1]
    assert (out / "frames.txt").read_text().startswith(FRAMES_HEADER + "\n")


def run_main(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as e:  # argparse
        return int(e.code or 0)


WARNING = re.compile(r"^recon: (warning|WARNING): ")  # run reports (print) and logged warnings (logging format)
ERROR = re.compile(r"^recon( \w+)?: error: ")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    earlier_run: Path,
    street_frames: list[Frame],
    tmp_path: Path,
    capfd: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    shutil.copytree(earlier_run, out)
    age_files(out)
    with ExitStack() as stack:  # open until the end: a case's disk stays mounted while its files are checked
        ctx = Ctx(tmp_path, out, street_frames, monkeypatch, stack)
        args = case.setup(ctx)
        before = files(ctx.out)
        if args[0] == "run":
            args = [
                *args,
                *(["--out", str(ctx.out)] if "--out" not in args else []),
                *(["--overwrite"] if case.overwrite else []),
            ]
        capfd.readouterr()
        code = run_main(args)
        captured = capfd.readouterr()
        err, ctx.facts["stdout"] = captured.err, captured.out
        assert_stderr(case, code, err)
        assert_outputs(case, before, ctx.out)
        if case.check is not None:
            case.check(ctx)


def assert_stderr(case: Case, code: int, err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    warnings = [line for line in lines if WARNING.match(line)]
    others = [line for line in lines if not WARNING.match(line)]
    assert code == case.exit_code, err
    if case.exit_code:
        assert len(others) == 1 and ERROR.match(others[0]), f"expected one error line, got:\n{err}"
        assert re.search(case.message, others[0]), others[0]
    else:
        assert others == [], f"a run that goes on prints no error or noise, got:\n{err}"
        assert any(re.search(case.message, w) for w in warnings), f"no warning matches {case.message!r}:\n{err}"


EARLIER_MTIME_NS = 10**18  # 2001-09-09: a stamp no file the case's run writes can have


def age_files(out: Path) -> None:
    """Stamp the earlier run's files, so a file left over from it is told from one the case's run wrote."""
    if out.is_dir():
        for p in out.rglob("*"):
            if p.is_file():
                os.utime(p, ns=(EARLIER_MTIME_NS, EARLIER_MTIME_NS))


def assert_outputs(case: Case, before: dict[str, bytes], out: Path) -> None:
    after = files(out)
    if case.outputs is Outputs.IDENTICAL:
        assert after.keys() == before.keys(), f"files added or removed: {after.keys() ^ before.keys()}"
        changed = [name for name in before if after[name] != before[name]]
        assert not changed, f"changed: {changed}"
        return
    leftovers = [name for name in after if (out / name).stat().st_mtime_ns == EARLIER_MTIME_NS]
    assert not leftovers, f"the earlier run's files are mixed in: {leftovers}"
    assert_consistent(out)
    if case.outputs is Outputs.WRITTEN:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["frames_in_trajectory"] == len(read_tum(out / "trajectory.tum")[0]) > 0
        # What the source skipped or survived, or the run could not do, is on record with the outputs, not only on stderr.
        notes = [*summary["source_notes"], *summary["warnings"]]
        assert any(re.search(case.message, note) for note in notes), notes


def test_the_table_covers_enough_cases() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def test_a_failed_append_leaves_whole_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills in the middle of a window's poses: every trajectory file is cut back to the last whole
    window, so the three agree line for line, and the error names the file."""
    writer = TrajectoryWriter(tmp_path, frames_file=True)
    writer.append([0.0, 0.1], np.stack([np.eye(4)] * 2), [0, 1])
    good = files(tmp_path)
    with ExitStack() as stack:
        file_size_limit(Ctx(tmp_path, tmp_path, [], monkeypatch, stack), 150)  # the .tum file takes part of the window
        with pytest.raises(OutputError, match=r"cannot write .*trajectory\.tum: File too large"):
            writer.append([0.1 * i for i in range(2, 12)], np.stack([np.eye(4)] * 10), list(range(2, 12)))
    assert files(tmp_path) == good
    writer.append([0.2], np.eye(4)[None], [2])  # and the writer goes on from there
    writer.close()
    assert len(read_tum(tmp_path / "trajectory.tum")[0]) == len(read_frames(tmp_path / "frames.txt")[0]) == 3


def test_a_run_that_dies_writing_its_map_says_failed_in_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    with ExitStack() as stack:
        file_size_limit(Ctx(tmp_path, tmp_path, [], monkeypatch, stack), 350_000)
        assert run_main([*MID_RUN, "--out", str(tmp_path / "out")]) == 2
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["frames_in_trajectory"] == len(read_tum(tmp_path / "out" / "trajectory.tum")[0])
