"""TUM RGB-D layout: reader (`TumSource`) and a streaming writer (`write_tum_sequence`).

    DIR/rgb.txt           `timestamp rgb/NAME.png` per line, '#' comments
    DIR/depth.txt         `timestamp depth/NAME.png` (uint16 PNG, value / 5000 = metres, 0 = invalid)
    DIR/groundtruth.txt   `timestamp tx ty tz qx qy qz qw` (world_from_cam, metres)

Streams are associated by nearest timestamp within `max_dt_s`, like TUM's associate.py."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import numpy as np

from recon.errors import FormatError, SourceError
from recon.geometry import invert_rigid
from recon.trajectory_io import format_tum_line, read_tum
from recon.types import Frame

from .base import UNSET, SourceBase, Unset, check_increasing, intrinsics_matrix, path_given_twice, path_missing
from .image_files import encode_depth_u16, read_depth_u16, readable_images, skipped_images_notes, write_png

logger = logging.getLogger(__name__)

DEPTH_SCALE_PER_M = 5000.0
# (fx, fy, cx, cy) of the 640x480 colour images, from the TUM RGB-D benchmark's calibration page.
FREIBURG_INTRINSICS: dict[str, tuple[float, float, float, float]] = {
    "1": (517.3, 516.5, 318.6, 255.3),
    "2": (520.9, 521.0, 325.1, 249.7),
    "3": (535.4, 539.2, 320.1, 247.6),
}
ROS_DEFAULT_INTRINSICS = (525.0, 525.0, 319.5, 239.5)
_FREIBURG = re.compile(r"(?:freiburg|(?:^|[_-])fr)([123])(?!\d)", re.IGNORECASE)  # freiburg1_xyz, fr1_desk


def read_file_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """rgb.txt / depth.txt -> (timestamps_s [N], relative file names); FormatError with file:line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise FormatError(path, None, f"cannot read: {e.strerror or e}") from None
    stamps: list[float] = []
    names: list[str] = []
    for line_no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2:
            raise FormatError(path, line_no, f"expected 'timestamp filename', found {len(parts)} fields")
        try:
            stamp = float(parts[0])
        except ValueError:
            raise FormatError(path, line_no, f"timestamp {parts[0][:40]!r} is not a number") from None
        if not math.isfinite(stamp):
            raise FormatError(path, line_no, "NaN or inf timestamp")
        stamps.append(stamp)
        names.append(parts[1])
    return np.array(stamps, dtype=np.float64), names


def associate(query_s: np.ndarray, stamps_s: np.ndarray, max_dt_s: float) -> np.ndarray:
    """For each query time, the index into `stamps_s` of the nearest stamp within max_dt_s, else -1.
    O((N + M) log M) via searchsorted; `stamps_s` need not be sorted."""
    if len(stamps_s) == 0:
        return np.full(len(query_s), -1, dtype=np.int64)
    order = np.argsort(stamps_s, kind="stable")
    sorted_s = stamps_s[order]
    # Neighbours on both sides of each query; with one stamp both are that stamp.
    right = np.minimum(np.searchsorted(sorted_s, query_s), len(sorted_s) - 1)
    left = np.maximum(right - 1, 0)
    pick = np.where(np.abs(sorted_s[left] - query_s) <= np.abs(sorted_s[right] - query_s), left, right)
    found = np.abs(sorted_s[pick] - query_s) <= max_dt_s
    return np.where(found, order[pick], -1)


def freiburg_intrinsics(folder: Path) -> np.ndarray:
    """The TUM preset K for a folder named like `rgbd_dataset_freiburg1_xyz`, else the ROS default."""
    m = _FREIBURG.search(folder.resolve().name)
    if m:
        fx, fy, cx, cy = FREIBURG_INTRINSICS[m.group(1)]
    else:
        logger.warning(
            "%s: folder name names no freiburg camera; using the ROS default intrinsics "
            "fx=fy=525 cx=319.5 cy=239.5 (pass intrinsics= for accurate metric results)",
            folder,
        )
        fx, fy, cx, cy = ROS_DEFAULT_INTRINSICS
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


class TumSource(SourceBase):
    """A TUM RGB-D sequence (see module doc) in the folder `path` (`dir=` is the same argument under its older
    name). One frame per rgb.txt entry that has a depth image (when depth is loaded) and a ground-truth
    pose (when groundtruth.txt exists) within `max_dt_s`; entries without them are dropped (logged).
    `timestamp_s` is the rgb timestamp as written (seconds). Ground truth is relative to the first yielded
    frame (identity there), in metres. K comes from `intrinsics` or the freiburg preset named by the
    folder. `index` is the image's entry number in rgb.txt (0-based, comments aside); an unreadable image
    is skipped with a warning and listed in `skipped`."""

    _K: np.ndarray  # given, or the preset the folder names: always known

    def __init__(
        self,
        path: str | Path | Unset = UNSET,
        intrinsics: object = None,
        max_dt_s: float = 0.02,
        stride: int = 1,
        max_frames: int | None = None,
        load_depth: bool = True,
        *,
        dir: str | Path | Unset = UNSET,
    ) -> None:
        if isinstance(path, Unset):  # given under its older name, or not at all
            path = dir if not isinstance(dir, Unset) else path_missing("TumSource")
        elif not isinstance(dir, Unset):
            raise path_given_twice("TumSource", "dir")
        self.dir = Path(path)
        super().__init__(stride, max_frames)
        if not (isinstance(max_dt_s, (int, float)) and max_dt_s >= 0):
            raise SourceError(f"max_dt_s must be a number >= 0, got {max_dt_s!r}")
        rgb_list = self.dir / "rgb.txt"
        if not rgb_list.is_file():
            raise SourceError(
                f"'{self.dir}' is not a TUM RGB-D dir; expected rgb.txt (+ depth.txt, groundtruth.txt) in it"
            )
        self.name = self.dir.resolve().name
        self.max_dt_s = float(max_dt_s)
        given = intrinsics_matrix(intrinsics)
        self.intrinsics_origin = "given to the source"
        self._K = given if given is not None else freiburg_intrinsics(self.dir)
        if given is None:
            named = _FREIBURG.search(self.dir.resolve().name)
            self.intrinsics_origin = (
                f"the TUM freiburg{named.group(1)} preset"
                if named
                else "the ROS default (fx=fy=525), no freiburg camera in the folder name"
            )

        rgb_s, self._rgb_names = read_file_list(rgb_list)
        if len(rgb_s) == 0:
            raise SourceError(f"{rgb_list} lists no images; expected 'timestamp rgb/NAME.png' lines")
        check_increasing(rgb_list, rgb_s)  # depth and ground truth are matched by time, in any order
        keep = np.ones(len(rgb_s), dtype=bool)
        why: list[str] = []

        self._depth_names: list[str] | None = None
        self._depth_index: np.ndarray | None = None
        depth_list = self.dir / "depth.txt"
        if load_depth and depth_list.is_file():
            depth_s, self._depth_names = read_file_list(depth_list)
            self._depth_index = associate(rgb_s, depth_s, self.max_dt_s)
            keep &= self._depth_index >= 0
            why.append("depth")

        self._world_from_cam: np.ndarray | None = None
        self._gt_index: np.ndarray | None = None
        gt_path = self.dir / "groundtruth.txt"
        if gt_path.is_file():
            gt_s, self._world_from_cam = read_tum(gt_path)
            self._gt_index = associate(rgb_s, gt_s, self.max_dt_s)
            keep &= self._gt_index >= 0
            why.append("ground truth")

        self._rows = np.flatnonzero(keep)  # rgb.txt entries that become frames, before stride
        self._rgb_s = rgb_s
        dropped = len(rgb_s) - len(self._rows)
        if len(self._rows) == 0:
            raise SourceError(
                f"{self.dir}: no rgb image has {' and '.join(why)} within max_dt_s={self.max_dt_s} s; "
                "check the timestamps or raise max_dt_s"
            )
        if dropped:
            logger.info(
                "%s: %d of %d rgb images have no %s within %.3f s; dropped",
                self.dir,
                dropped,
                len(rgb_s),
                " or ".join(why),
                self.max_dt_s,
            )
        self.skipped: list[str] = []

    @property
    def intrinsics(self) -> np.ndarray:
        return self._K.copy()

    @property
    def has_ground_truth(self) -> bool:
        return self._world_from_cam is not None

    @property
    def metric(self) -> bool:
        return self.has_ground_truth

    @property
    def notes(self) -> list[str]:
        return skipped_images_notes(self.skipped, self.dir / "rgb.txt")

    def __len__(self) -> int:
        return self._strided_length(len(self._rows))

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        anchor_cam_from_world: np.ndarray | None = None
        rows = self._rows[:: self.stride]
        paths = [self.dir / self._rgb_names[row] for row in rows]
        for position, rgb in readable_images(paths, self.max_frames, self.skipped, self.dir / "rgb.txt"):
            row = rows[position]
            gt_cam_from_world = None
            if self._world_from_cam is not None and self._gt_index is not None:
                world_from_cam = self._world_from_cam[self._gt_index[row]]
                if anchor_cam_from_world is None:
                    anchor_cam_from_world = invert_rigid(world_from_cam)
                gt_cam_from_world = invert_rigid(anchor_cam_from_world @ world_from_cam)
            depth_m = None
            if self._depth_names is not None and self._depth_index is not None:
                depth_path = self.dir / self._depth_names[self._depth_index[row]]
                raw = read_depth_u16(depth_path)
                if raw is not None and raw.shape == rgb.shape[:2]:
                    depth_m = raw.astype(np.float32) / np.float32(DEPTH_SCALE_PER_M)
                else:
                    logger.warning(
                        "%s: missing, unreadable or not uint16 of the image's size; frame without depth", depth_path
                    )
            yield Frame(
                index=int(row),
                timestamp_s=float(self._rgb_s[row]),
                image_rgb=rgb,
                K=self._K,
                gt_cam_from_world=gt_cam_from_world,
                gt_depth_m=depth_m,
            )


def write_tum_sequence(frames: Iterable[Frame], root: str | Path) -> Path:
    """Write frames in the TUM RGB-D layout under `root` (rgb/, depth/ when frames carry depth, rgb.txt,
    depth.txt, groundtruth.txt when they carry poses), one frame at a time. Depth is stored as value/5000
    m; beyond 13.107 m it is written as 0 (unknown). TUM has no intrinsics file: pass `intrinsics=` to TumSource when reading.
    Returns `root`. Refuses to write over an existing sequence."""
    root = Path(root)
    if (root / "rgb.txt").exists():
        raise SourceError(f"TUM sequence '{root}' already exists; choose another folder or delete it")
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    count = 0
    with ExitStack() as files:
        rgb_txt = files.enter_context(open(root / "rgb.txt", "w"))
        rgb_txt.write("# color images\n# timestamp filename\n")
        depth_txt: TextIO | None = None
        gt_txt: TextIO | None = None
        for i, frame in enumerate(frames):
            stamp = f"{float(frame.timestamp_s)!r}"
            write_png(root / "rgb" / f"{i:06d}.png", frame.image_rgb)
            rgb_txt.write(f"{stamp} rgb/{i:06d}.png\n")
            if frame.gt_depth_m is not None:
                if depth_txt is None:
                    (root / "depth").mkdir(exist_ok=True)
                    depth_txt = files.enter_context(open(root / "depth.txt", "w"))
                    depth_txt.write("# depth maps\n# timestamp filename\n")
                write_png(root / "depth" / f"{i:06d}.png", encode_depth_u16(frame.gt_depth_m, DEPTH_SCALE_PER_M))
                depth_txt.write(f"{stamp} depth/{i:06d}.png\n")
            if frame.gt_cam_from_world is not None:
                if gt_txt is None:
                    gt_txt = files.enter_context(open(root / "groundtruth.txt", "w"))
                    gt_txt.write("# ground truth trajectory\n# timestamp tx ty tz qx qy qz qw\n")
                gt_txt.write(format_tum_line(float(frame.timestamp_s), invert_rigid(frame.gt_cam_from_world)) + "\n")
            count += 1
    if count == 0:
        raise SourceError("write_tum_sequence: no frames to write")
    return root
