"""Property-based tests of every text parser a user's files go through (calib.txt, times.txt, KITTI poses,
TUM trajectories and file lists, a run's frames.txt): well-formed files round-trip, a malformed line is
reported with its file and line number, and arbitrary text never escapes as anything but FormatError."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.datasets.kitti import read_calib_P2, read_times
from recon.datasets.tum import read_file_list
from recon.errors import FormatError
from recon.geometry import make_rigid, rotation_from_quat_xyzw
from recon.trajectory_io import (
    format_frames_line,
    format_kitti_line,
    format_tum_line,
    read_frames,
    read_kitti,
    read_tum,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
stamps = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
# Lines no parser can take as data: words, wrong counts, non-finite values.
bad_lines = st.sampled_from(["abc", "1 2", "nan", "inf 0 0", "1,2,x", "P2: 1 2 3", "0 0 0 0 0 0 0 nan", "--"])


def _write(text: str) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)  # noqa: SIM115 - kept for the reader
    f.write(text)
    f.close()
    return Path(f.name)


@st.composite
def poses(draw: st.DrawFn, max_size: int = 12) -> np.ndarray:
    n = draw(st.integers(1, max_size))
    q = draw(
        st.lists(
            st.tuples(finite, finite, finite, finite).filter(lambda v: np.linalg.norm(v) > 1e-3), min_size=n, max_size=n
        )
    )
    t = draw(st.lists(st.tuples(finite, finite, finite), min_size=n, max_size=n))
    return np.stack(
        [make_rigid(rotation_from_quat_xyzw(np.array(qi) / np.linalg.norm(qi)), ti) for qi, ti in zip(q, t)]
    )


def _assert_line_reported(read: Callable[[Path], object], good_lines: list[str], bad: str, at: int) -> None:
    lines = list(good_lines)
    lines.insert(at, bad)
    path = _write("\n".join(lines) + "\n")
    try:
        read(path)
    except FormatError as e:
        assert e.line_no == at + 1, (e, at)
        assert str(path) in str(e)
    else:
        raise AssertionError(f"{bad!r} at line {at + 1} was accepted")


# -- KITTI poses and TUM trajectories ------------------------------------------------------------------
@PROPS
@given(poses())
def test_kitti_poses_round_trip(world_from_cam: np.ndarray) -> None:
    path = _write("".join(format_kitti_line(T) + "\n" for T in world_from_cam))
    np.testing.assert_allclose(read_kitti(path), world_from_cam, atol=1e-6 * (1 + np.abs(world_from_cam).max()))


@PROPS
@given(poses(), st.data())
def test_tum_trajectory_round_trip(world_from_cam: np.ndarray, data: st.DataObject) -> None:
    ts = sorted(data.draw(st.lists(stamps, min_size=len(world_from_cam), max_size=len(world_from_cam))))
    path = _write(
        "# timestamp tx ty tz qx qy qz qw\n" + "".join(format_tum_line(t, T) + "\n" for t, T in zip(ts, world_from_cam))
    )
    read_ts, read_T = read_tum(path)
    np.testing.assert_allclose(read_ts, ts, atol=1e-6, rtol=1e-12)
    np.testing.assert_allclose(read_T[:, :3, :3], world_from_cam[:, :3, :3], atol=1e-6)
    np.testing.assert_allclose(read_T[:, :3, 3], world_from_cam[:, :3, 3], rtol=1e-8, atol=1e-6)


@PROPS
@given(poses(), bad_lines, st.data())
def test_a_bad_pose_line_is_reported_with_its_number(world_from_cam: np.ndarray, bad: str, data: st.DataObject) -> None:
    kitti = [format_kitti_line(T) for T in world_from_cam]
    tum = [format_tum_line(float(i), T) for i, T in enumerate(world_from_cam)]
    _assert_line_reported(read_kitti, kitti, bad, data.draw(st.integers(0, len(kitti))))
    _assert_line_reported(read_tum, tum, bad, data.draw(st.integers(0, len(tum))))


def test_a_pose_that_is_not_a_rotation_is_reported() -> None:
    path = _write("1 0 0 0  0 1 0 0  0 0 1 0\n2 0 0 0  0 1 0 0  0 0 1 0\n")
    try:
        read_kitti(path)
    except FormatError as e:
        assert e.line_no == 2 and "rotation" in str(e)
    else:
        raise AssertionError("a scaled rotation was accepted")


# -- KITTI calib.txt and times.txt ---------------------------------------------------------------------
@PROPS
@given(st.floats(1.0, 5e3), st.floats(1.0, 5e3), finite, finite, st.floats(-1.0, 1.0), st.booleans())
def test_calib_P2_round_trip(fx: float, fy: float, cx: float, cy: float, tx: float, with_others: bool) -> None:
    P2 = np.array([[fx, 0.0, cx, fx * tx], [0.0, fy, cy, 0.0], [0.0, 0.0, 1.0, 0.0]])
    other = "P0: " + " ".join(["1"] * 12) + "\n" if with_others else ""
    path = _write(
        other + "P2: " + " ".join(repr(float(v)) for v in P2.reshape(-1)) + "\nTr: " + " ".join(["0"] * 12) + "\n"
    )
    np.testing.assert_allclose(read_calib_P2(path), P2, rtol=1e-12)


@PROPS
@given(
    st.integers(0, 3),
    st.sampled_from(
        ["P2: 1 2 3", "P2: 1 0 0 0 0 1 0 0 0 0 1 x", "P2 1 0 0 0 0 1 0 0 0 0 1 0", "P2: " + " ".join(["0"] * 12)]
    ),
)
def test_a_bad_calib_line_is_reported_with_its_number(before: int, bad: str) -> None:
    others = ["P0", "P1", "R0_rect"][:before]  # lines before it that are not P2
    path = _write("".join(f"{key}: " + " ".join(["1"] * 12) + "\n" for key in others) + bad + "\n")
    try:
        read_calib_P2(path)
    except FormatError as e:
        assert e.line_no == before + 1, e
    else:
        raise AssertionError(f"{bad!r} accepted")


@PROPS
@given(st.lists(stamps, min_size=1, max_size=30), bad_lines, st.data())
def test_times_round_trip_and_bad_lines(ts: list[float], bad: str, data: st.DataObject) -> None:
    lines = [repr(t) for t in ts]
    np.testing.assert_array_equal(read_times(_write("\n".join(lines) + "\n")), ts)
    _assert_line_reported(read_times, lines, bad, data.draw(st.integers(0, len(lines))))


# -- TUM file lists and a run's frames.txt -------------------------------------------------------------
names = st.from_regex(r"rgb/[A-Za-z0-9_.]{1,12}\.png", fullmatch=True)


@PROPS
@given(st.lists(st.tuples(stamps, names), min_size=1, max_size=20), st.data())
def test_tum_file_list_round_trip_and_bad_lines(entries: list[tuple[float, str]], data: st.DataObject) -> None:
    lines = [f"{t!r} {n}" for t, n in entries]
    ts, read_names = read_file_list(_write("# color images\n" + "\n".join(lines) + "\n"))
    np.testing.assert_array_equal(ts, [t for t, _ in entries])
    assert read_names == [n for _, n in entries]
    bad = data.draw(st.sampled_from(["1.0", "x rgb/a.png", "nan rgb/a.png", "1.0 rgb/a.png extra"]))
    _assert_line_reported(read_file_list, lines, bad, data.draw(st.integers(0, len(lines))))


@PROPS
@given(st.lists(st.tuples(st.integers(0, 10**7), stamps), min_size=1, max_size=20), st.data())
def test_frames_file_round_trip_and_bad_lines(entries: list[tuple[int, float]], data: st.DataObject) -> None:
    lines = [format_frames_line(i, t) for i, t in entries]
    indices, ts = read_frames(_write("\n".join(lines) + "\n"))
    np.testing.assert_array_equal(indices, [i for i, _ in entries])
    np.testing.assert_allclose(ts, [t for _, t in entries], atol=1e-6, rtol=0)
    bad = data.draw(st.sampled_from(["1.5 2.0", "-1 0.0", "x 0", "3"]))
    _assert_line_reported(read_frames, lines, bad, data.draw(st.integers(0, len(lines))))


# -- arbitrary text --------------------------------------------------------------------------------------
@PROPS
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300))
def test_arbitrary_text_gives_a_result_or_a_format_error(text: str) -> None:
    path = _write(text)
    for read in (read_kitti, read_tum, read_times, read_calib_P2, read_file_list, read_frames):
        with contextlib.suppress(FormatError):  # a result or a one-line format error, nothing else
            read(path)
