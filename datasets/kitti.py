"""KITTI odometry layout: reader (`KittiSource`) and streaming writer (`write_kitti_sequence`).

    ROOT/sequences/SEQ/image_2/000000.png ...   left colour camera (camera 2)
    ROOT/sequences/SEQ/calib.txt                `P0: 12 numbers` .. `P3:` (3x4 row-major), other keys ignored
    ROOT/sequences/SEQ/times.txt                one timestamp (s) per image
    ROOT/sequences/SEQ/depth_2/000000.png       optional: uint16 millimetres, 0 = invalid
    ROOT/poses/SEQ.txt                          optional: 12 numbers per line, world_from_cam of camera 0

Poses in poses/ are camera 0's; the images are camera 2's, offset by t2 = K^-1 P2[:,3] (camera-2 coords
= camera-0 coords + t2). The source re-expresses them as camera-2 poses relative to the first frame."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import numpy as np

from recon.errors import FormatError, SourceError
from recon.geometry import invert_rigid, make_rigid
from recon.trajectory_io import format_kitti_line, read_kitti
from recon.types import Frame

from .base import (
    UNSET,
    SourceBase,
    Unset,
    check_increasing,
    check_one_per_image,
    path_given_twice,
    path_missing,
)
from .image_files import encode_depth_u16, list_images, read_depth_u16, readable_images, skipped_images_notes, write_png

logger = logging.getLogger(__name__)

DEPTH_SCALE_PER_M = 1000.0  # depth_2 PNGs hold millimetres
_P2_KEYS = ("P2", "P_rect_02")


def read_calib_P2(path: Path) -> np.ndarray:
    """The P2 projection [3,4] of a KITTI calib.txt; FormatError with file:line when malformed."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise FormatError(path, None, f"cannot read: {e.strerror or e}") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, values = line.partition(":")
        if not sep:
            raise FormatError(path, line_no, "expected 'KEY: numbers' (e.g. 'P2: 12 numbers')")
        if key.strip() not in _P2_KEYS:
            continue
        parts = values.split()
        if len(parts) != 12:
            raise FormatError(path, line_no, f"{key.strip()} needs 12 numbers (3x4 row-major), found {len(parts)}")
        try:
            P2 = np.array([float(p) for p in parts]).reshape(3, 4)
        except ValueError:
            raise FormatError(path, line_no, f"not a number in {values.strip()[:60]!r}") from None
        if not np.all(np.isfinite(P2)):
            raise FormatError(path, line_no, "NaN or inf value")
        K = P2[:, :3]
        if not (K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(P2[2, :3], [0, 0, 1], atol=1e-6) and abs(K[1, 0]) < 1e-9):
            raise FormatError(path, line_no, "P2 is not of the form K [I | t] (fx, fy > 0, last row 0 0 1 t)")
        return P2
    raise FormatError(path, None, "no P2 line; expected 'P2: 12 numbers' (3x4 projection of the image_2 camera)")


def read_times(path: Path) -> np.ndarray:
    """times.txt -> timestamps_s [N]; FormatError with file:line when a line is not one finite number."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise FormatError(path, None, f"cannot read: {e.strerror or e}") from None
    stamps: list[float] = []
    for line_no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            value = float(text)
        except ValueError:
            raise FormatError(path, line_no, f"expected one timestamp in seconds, found {text[:60]!r}") from None
        if not math.isfinite(value):
            raise FormatError(path, line_no, "NaN or inf timestamp")
        stamps.append(value)
    return np.array(stamps, dtype=np.float64)


def cam2_offset(P2: np.ndarray) -> np.ndarray:
    """t2 = K^-1 P2[:,3]: camera-2 coordinates of a point = its camera-0 coordinates + t2."""
    return np.linalg.solve(P2[:, :3], P2[:, 3])


def cam0_from_cam2(P2: np.ndarray) -> np.ndarray:
    return make_rigid(np.eye(3), -cam2_offset(P2))


def _sequence_dir(path: Path) -> Path:
    if path.name == "image_2" and (path.parent / "calib.txt").is_file():
        return path.parent  # be kind to a path one level too deep
    return path


def _is_metric(seq_dir: Path) -> bool:
    """KITTI ground truth is in metres; a `source.json` beside it may say otherwise ("units": "arbitrary")."""
    meta = seq_dir / "source.json"
    if not meta.is_file():
        return True
    try:
        units = json.loads(meta.read_text()).get("units", "metres")
    except (OSError, ValueError, AttributeError):
        return True
    units = str(units).strip().lower()
    return units == "m" or units.startswith(("metre", "meter"))


class KittiSource(SourceBase):
    """A KITTI odometry sequence (see module doc); `path` is its dir `ROOT/sequences/SEQ` (any name; `seq_dir=`
    is the same argument under its older name).

    Frames carry K (= P2[:3,:3]), times.txt timestamps, and when present camera-2 ground truth poses
    (identity at the first yielded frame) and depth from depth_2/ (metres, 0 = invalid; `load_depth=False`
    skips it). `index` is the image's number in image_2/ (its line in times.txt and poses/). An unreadable
    image is skipped with a warning and listed in `skipped`. `metric` is True unless the sequence's
    source.json states non-metric units."""

    _K: np.ndarray  # from calib.txt: always known

    def __init__(
        self,
        path: str | Path | Unset = UNSET,
        stride: int = 1,
        max_frames: int | None = None,
        load_depth: bool = True,
        *,
        seq_dir: str | Path | Unset = UNSET,
    ) -> None:
        if isinstance(path, Unset):  # given under its older name, or not at all
            path = seq_dir if not isinstance(seq_dir, Unset) else path_missing("KittiSource")
        elif not isinstance(seq_dir, Unset):
            raise path_given_twice("KittiSource", "seq_dir")
        self.seq_dir = _sequence_dir(Path(path))
        super().__init__(stride, max_frames)
        self.name = self.seq_dir.resolve().name
        image_dir = self.seq_dir / "image_2"
        calib_path = self.seq_dir / "calib.txt"
        if not (image_dir.is_dir() and calib_path.is_file()):
            raise SourceError(
                f"'{self.seq_dir}' is not a KITTI sequence dir; expected image_2/ and calib.txt in it "
                "(ROOT/sequences/SEQ)"
            )
        self._files = list_images(image_dir)
        if not self._files:
            raise SourceError(f"'{image_dir}' has no images; expected 000000.png, 000001.png ...")
        self._P2 = read_calib_P2(calib_path)
        self._K = self._P2[:, :3].copy()
        n = len(self._files)

        times_path = self.seq_dir / "times.txt"
        if times_path.is_file():
            self._times_s = read_times(times_path)
            check_one_per_image(times_path, len(self._times_s), "timestamps", image_dir, n)
            check_increasing(times_path, self._times_s)
        else:
            logger.warning("%s has no times.txt; assuming 10 Hz (KITTI's rate)", self.seq_dir)
            self._times_s = np.arange(n) / 10.0

        self.poses_path: Path | None = None
        self._world_from_cam2: np.ndarray | None = None
        if self.seq_dir.parent.name == "sequences":
            candidate = self.seq_dir.parent.parent / "poses" / f"{self.name}.txt"
            if candidate.is_file():
                world_from_cam0 = read_kitti(candidate)
                check_one_per_image(candidate, len(world_from_cam0), "poses", image_dir, n)
                self.poses_path = candidate
                self._world_from_cam2 = world_from_cam0 @ cam0_from_cam2(self._P2)

        depth_dir = self.seq_dir / "depth_2"
        self._depth_dir = depth_dir if load_depth and depth_dir.is_dir() else None
        self._metric = _is_metric(self.seq_dir)
        self.skipped: list[str] = []

    intrinsics_origin = "the sequence's calib.txt (P2)"

    @property
    def intrinsics(self) -> np.ndarray:
        return self._K.copy()

    @property
    def has_ground_truth(self) -> bool:
        return self._world_from_cam2 is not None

    @property
    def metric(self) -> bool:
        return self._metric and self.has_ground_truth

    @property
    def timestamps_s(self) -> np.ndarray:
        return self._times_s.copy()

    @property
    def notes(self) -> list[str]:
        return skipped_images_notes(self.skipped, self.seq_dir / "image_2")

    def __len__(self) -> int:
        return self._strided_length(len(self._files))

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        anchor_cam_from_world: np.ndarray | None = None
        warned_depth = False
        for position, rgb in readable_images(
            self._files[:: self.stride], self.max_frames, self.skipped, self.seq_dir / "image_2"
        ):
            file_index = position * self.stride
            path = self._files[file_index]
            gt_cam_from_world = None
            if self._world_from_cam2 is not None:
                if anchor_cam_from_world is None:
                    anchor_cam_from_world = invert_rigid(self._world_from_cam2[file_index])
                # cam_i_from_first = (first_from_world · world_from_cam_i)^-1
                gt_cam_from_world = invert_rigid(anchor_cam_from_world @ self._world_from_cam2[file_index])
            depth_m = None
            if self._depth_dir is not None:
                depth_path = self._depth_dir / f"{path.stem}.png"
                raw = read_depth_u16(depth_path)
                if raw is not None and raw.shape == rgb.shape[:2]:
                    depth_m = raw.astype(np.float32) / np.float32(DEPTH_SCALE_PER_M)
                elif not warned_depth:
                    logger.warning(
                        "%s: missing, unreadable or not uint16 %dx%d; such frames come without depth",
                        depth_path,
                        rgb.shape[1],
                        rgb.shape[0],
                    )
                    warned_depth = True
            yield Frame(
                index=file_index,
                timestamp_s=float(self._times_s[file_index]),
                image_rgb=rgb,
                K=self._K,
                gt_cam_from_world=gt_cam_from_world,
                gt_depth_m=depth_m,
            )


def _projection_line(key: str, K: np.ndarray) -> str:
    P = np.hstack([K, np.zeros((3, 1))])
    return f"{key}: " + " ".join(f"{v:.12e}" for v in P.reshape(-1))


def _check_like_first(i: int, frame: Frame, first_hw: tuple[int, int], first_K: np.ndarray, has_poses: bool) -> None:
    where = f"write_kitti_sequence: frame {i}"
    if frame.hw != first_hw:
        raise SourceError(f"{where} is {frame.hw}, frame 0 was {first_hw}; one size per sequence")
    if frame.K is None or not np.allclose(frame.K, first_K, rtol=1e-9, atol=1e-9):
        raise SourceError(f"{where} has a different K; KITTI has one calibration per sequence")
    if (frame.gt_cam_from_world is None) == has_poses:
        raise SourceError(f"{where} {'lacks' if has_poses else 'has'} a gt pose unlike frame 0; all frames or none")


def write_kitti_sequence(frames: Iterable[Frame], root: str | Path, name: str) -> Path:
    """Write frames as ROOT/sequences/NAME (image_2/, optional depth_2/, calib.txt, times.txt) and, when
    the frames carry gt poses, ROOT/poses/NAME.txt (world_from_cam relative to the first frame). One
    frame at a time: nothing but the current frame is held. Every frame needs K, the same size and the
    same K (KITTI has one calibration per sequence). Depth is stored in millimetres; beyond 65.535 m it is written as 0 (unknown).
    Returns the sequence dir. Refuses to write over an existing sequence."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise SourceError(f"sequence name must be a plain folder name, got {name!r}")
    root = Path(root)
    seq_dir = root / "sequences" / name
    image_dir = seq_dir / "image_2"
    poses_path = root / "poses" / f"{name}.txt"
    if (image_dir.is_dir() and any(image_dir.iterdir())) or poses_path.exists():
        raise SourceError(f"KITTI sequence '{seq_dir}' already exists; choose another name or delete it")
    image_dir.mkdir(parents=True, exist_ok=True)

    count = 0
    with ExitStack() as files:
        times_file = files.enter_context(open(seq_dir / "times.txt", "w"))
        poses_file: TextIO | None = None
        first_hw: tuple[int, int] | None = None
        first_K = np.eye(3)
        first_cam_from_world: np.ndarray | None = None
        for i, frame in enumerate(frames):
            if first_hw is None:
                if frame.K is None:
                    raise SourceError("write_kitti_sequence: frames need K to write calib.txt")
                first_hw, first_K = frame.hw, frame.K
                (seq_dir / "calib.txt").write_text("".join(_projection_line(f"P{c}", frame.K) + "\n" for c in range(4)))
                if frame.gt_cam_from_world is not None:
                    poses_path.parent.mkdir(parents=True, exist_ok=True)
                    poses_file = files.enter_context(open(poses_path, "w"))
                    first_cam_from_world = frame.gt_cam_from_world
            else:
                _check_like_first(i, frame, first_hw, first_K, has_poses=poses_file is not None)
            write_png(image_dir / f"{i:06d}.png", frame.image_rgb)
            if frame.gt_depth_m is not None:
                (seq_dir / "depth_2").mkdir(exist_ok=True)
                write_png(seq_dir / "depth_2" / f"{i:06d}.png", encode_depth_u16(frame.gt_depth_m, DEPTH_SCALE_PER_M))
            times_file.write(f"{float(frame.timestamp_s)!r}\n")
            if poses_file is not None and first_cam_from_world is not None and frame.gt_cam_from_world is not None:
                first_from_cam = first_cam_from_world @ invert_rigid(frame.gt_cam_from_world)
                poses_file.write(format_kitti_line(first_from_cam) + "\n")
            count += 1
    if count == 0:
        raise SourceError("write_kitti_sequence: no frames to write")
    return seq_dir
