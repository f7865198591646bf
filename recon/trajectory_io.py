"""Trajectory files (ARCHITECTURE §2): TUM `timestamp tx ty tz qx qy qz qw` and KITTI 12 numbers (row-major
3x4), both world_from_cam; and a run's `frames.txt`, each pose's source frame index and timestamp. Readers report the file and line of a malformed entry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recon.errors import FormatError
from recon.geometry import make_rigid, quat_xyzw_from_rotation, rotation_from_quat_xyzw


def _numbers(path: Path, line_no: int, line: str, count: int) -> list[float]:
    parts = line.replace(",", " ").split()
    if len(parts) != count:
        raise FormatError(path, line_no, f"expected {count} numbers, found {len(parts)}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise FormatError(path, line_no, f"not a number in {line.strip()[:60]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise FormatError(path, line_no, "NaN or inf value")
    return values


def content_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FormatError(path, None, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FormatError(path, None, "not a text file; expected one pose per line (KITTI or TUM)") from None
    return [(i, l) for i, l in enumerate(text.splitlines(), 1) if l.strip() and not l.lstrip().startswith("#")]


def _check_rotation(path: Path, line_no: int, R: np.ndarray) -> None:
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or np.linalg.det(R) <= 0:
        raise FormatError(path, line_no, "rotation part is not a rotation matrix")


def format_tum_line(timestamp_s: float, world_from_cam: np.ndarray) -> str:
    q = quat_xyzw_from_rotation(world_from_cam[:3, :3])
    t = world_from_cam[:3, 3]
    return f"{timestamp_s:.6f} " + " ".join(f"{v:.9g}" for v in (*t, *q))


def format_kitti_line(world_from_cam: np.ndarray) -> str:
    return " ".join(f"{v:.9g}" for v in np.asarray(world_from_cam)[:3, :4].reshape(-1))


FRAMES_HEADER = "# source_frame_index timestamp_s (one line per pose of trajectory.tum / trajectory.kitti)"


def format_frames_line(frame_index: int, timestamp_s: float) -> str:
    return f"{int(frame_index)} {timestamp_s:.6f}"


def write_tum(path: str | Path, timestamps_s: np.ndarray, world_from_cam: np.ndarray) -> None:
    lines = [format_tum_line(float(ts), T) for ts, T in zip(timestamps_s, world_from_cam)]
    Path(path).write_text("".join(l + "\n" for l in lines))


def write_kitti(path: str | Path, world_from_cam: np.ndarray) -> None:
    Path(path).write_text("".join(format_kitti_line(T) + "\n" for T in world_from_cam))


def read_tum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """-> (timestamps_s [N], world_from_cam [N,4,4])."""
    path = Path(path)
    stamps, poses = [], []
    for line_no, line in content_lines(path):
        v = _numbers(path, line_no, line, 8)
        q = np.array(v[4:8])
        if np.linalg.norm(q) < 1e-9:
            raise FormatError(path, line_no, "zero quaternion")
        stamps.append(v[0])
        poses.append(make_rigid(rotation_from_quat_xyzw(q), np.asarray(v[1:4])))
    return np.array(stamps, dtype=np.float64), np.array(poses).reshape(-1, 4, 4)


def read_kitti(path: str | Path) -> np.ndarray:
    """-> world_from_cam [N,4,4]."""
    path = Path(path)
    poses = []
    for line_no, line in content_lines(path):
        M = np.array(_numbers(path, line_no, line, 12)).reshape(3, 4)
        _check_rotation(path, line_no, M[:, :3])
        poses.append(make_rigid(M[:, :3], M[:, 3]))
    return np.array(poses).reshape(-1, 4, 4)


def read_frames(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """OUT/frames.txt -> (source frame index [N] int64, timestamp_s [N])."""
    path = Path(path)
    indices, stamps = [], []
    for line_no, line in content_lines(path):
        i, ts = _numbers(path, line_no, line, 2)
        if i != int(i) or i < 0:
            raise FormatError(path, line_no, f"frame index must be a whole number >= 0, got {i}")
        indices.append(int(i))
        stamps.append(ts)
    return np.array(indices, dtype=np.int64), np.array(stamps, dtype=np.float64)
