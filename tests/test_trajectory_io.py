"""TUM and KITTI trajectory files: round trips and file:line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.errors import FormatError
from recon.geometry import make_rigid, quat_xyzw_from_rotation, rotation_from_axis_angle, rotation_from_quat_xyzw
from recon.trajectory_io import read_kitti, read_tum, write_kitti, write_tum


def trajectory(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # include rotations near 180° where naive quaternion conversions lose precision
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi, n - 2), [np.pi - 1e-9, 0.0]])
    return make_rigid(rotation_from_axis_angle(axes * angles[:, None]), rng.normal(size=(n, 3)) * 10)


def test_quaternion_round_trip() -> None:
    world_from_cam = trajectory(200)
    R = world_from_cam[:, :3, :3]
    q = quat_xyzw_from_rotation(R)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0)
    np.testing.assert_allclose(rotation_from_quat_xyzw(q), R, atol=1e-9)


def test_tum_round_trip(tmp_path: Path) -> None:
    poses = trajectory(50)
    stamps = np.arange(50) * 0.1 + 1305031102.175304
    write_tum(tmp_path / "t.tum", stamps, poses)
    stamps2, poses2 = read_tum(tmp_path / "t.tum")
    np.testing.assert_allclose(stamps2, stamps, atol=1e-6)
    np.testing.assert_allclose(poses2, poses, atol=1e-7)


def test_kitti_round_trip(tmp_path: Path) -> None:
    poses = trajectory(50, seed=3)
    write_kitti(tmp_path / "t.txt", poses)
    np.testing.assert_allclose(read_kitti(tmp_path / "t.txt"), poses, atol=1e-7)


def test_readers_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "t.tum").write_text("# timestamp tx ty tz qx qy qz qw\n\n1.0 0 0 0 0 0 0 1\n")
    stamps, poses = read_tum(tmp_path / "t.tum")
    assert stamps.tolist() == [1.0] and np.allclose(poses[0], np.eye(4))


@pytest.mark.parametrize(
    "text, reader, message",
    [
        ("1 2 3\n", read_kitti, r"t\.txt:1: expected 12 numbers, found 3"),
        ("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 x 0 0 1 0\n", read_kitti, r"t\.txt:2: not a number"),
        ("2 0 0 0 0 1 0 0 0 0 1 0\n", read_kitti, r"t\.txt:1: rotation part"),
        ("1.0 0 0 0 0 0 0 0\n", read_tum, r"t\.txt:1: zero quaternion"),
        ("1.0 0 0 nan 0 0 0 1\n", read_tum, r"t\.txt:1: NaN"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, reader, message: str) -> None:
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(FormatError, match=message):
        reader(tmp_path / "t.txt")


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read_kitti(tmp_path / "nope.txt")
