"""The one protocol every input kind implements (ARCHITECTURE §1)."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NoReturn, Protocol, runtime_checkable

import numpy as np

from recon.errors import FormatError, SourceError
from recon.trajectory_io import content_lines
from recon.types import Frame


@runtime_checkable
class FrameSource(Protocol):
    """A lazy stream of `Frame`s: iterating reads one frame at a time and holds a bounded number.

    `name` is a short human label (used in outputs). `intrinsics` is K [3,3] in pixels of the yielded
    images when known, else None. `has_ground_truth` says whether yielded frames carry
    `gt_cam_from_world` (and possibly `gt_depth_m`); `metric` whether that ground truth is in metres.
    `__len__` is defined only where the length is known up front; use `length_hint()` otherwise.
    `notes` are one-line reports of what the last iteration skipped or survived (unreadable files, a
    truncated video, a dropped stream); read them through `source_notes()`."""

    name: str

    def __iter__(self) -> Iterator[Frame]: ...

    @property
    def intrinsics(self) -> np.ndarray | None: ...

    @property
    def has_ground_truth(self) -> bool: ...

    @property
    def metric(self) -> bool: ...

    @property
    def notes(self) -> list[str]: ...


class SourceBase:
    """The part of a `FrameSource` every input kind shares: the `stride` / `max_frames` every kind takes,
    K when known (`_K`, copied out by `intrinsics`), and the answers of a source without ground truth or
    notes, which a kind that has them overrides. A kind sets `name` and `_K` in its constructor once it
    knows them; `__len__` stays with the kinds that know their length (a live stream has none)."""

    name: str
    _K: np.ndarray | None

    def __init__(self, stride: int, max_frames: int | None) -> None:
        # Called where each kind validates these, so its errors keep their order among the others.
        check_stride_max_frames(stride, max_frames)
        self.stride = int(stride)
        self.max_frames = max_frames

    @property
    def intrinsics(self) -> np.ndarray | None:
        return None if self._K is None else self._K.copy()

    @property
    def has_ground_truth(self) -> bool:
        return False

    @property
    def metric(self) -> bool:
        return False

    @property
    def notes(self) -> list[str]:
        return []

    def _strided_length(self, count: int) -> int:
        """How many of `count` frames the stride and max_frames let through."""
        return strided_length(count, self.stride, self.max_frames)


class Unset(enum.Enum):
    """The default of an argument for which None is a value a caller can pass (and be told is wrong)."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET


# Every source's first argument is `path`. Four had another name for it (KittiSource `seq_dir`, TumSource `dir`,
# StreamSource `spec`, SyntheticSource `scene`), which they still take as a keyword-only argument, so calls
# written either way keep working; these are the TypeErrors Python raises for such an argument.
def path_missing(owner: str) -> NoReturn:
    raise TypeError(f"{owner}() missing 1 required positional argument: 'path'")


def path_given_twice(owner: str, old_name: str) -> TypeError:
    return TypeError(f"{owner}() got multiple values for argument 'path' ('{old_name}' is its older name)")


def length_hint(source: object) -> int | None:
    """len(source) where the source knows it, else None (live streams)."""
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None


def source_notes(source: FrameSource) -> list[str]:
    """What the source's last iteration had to skip or survive, one line each (a copy)."""
    # Read leniently: a duck-typed source written before `notes` joined the protocol (a test's stand-in
    # for one) has none, and that means it has nothing to report.
    return list(getattr(source, "notes", []))


def entry_line_no(path: Path, entry: int) -> int:
    """The line number of the `entry`-th (0-based) entry of a text file whose blank and '#' lines are not
    entries; for an entry past the end, the line where it is missing (one past the last entry). Used only
    to name the line in a message, so re-reading the file costs nothing on the good path."""
    entries = content_lines(path)
    if entry < len(entries):
        return entries[entry][0]
    return (entries[-1][0] if entries else 0) + 1


def check_one_per_image(path: Path, count: int, what: str, image_dir: Path, num_images: int) -> None:
    """A per-image list (times.txt, poses) must have one entry per image; FormatError at the first line
    that has no image, or where the first missing line belongs."""
    if count == num_images:
        return
    where = (
        "this line and those after it have no image"
        if count > num_images
        else "the lines for the last images are missing"
    )
    raise FormatError(
        path,
        entry_line_no(path, num_images if count > num_images else count),
        f"{count} {what} but {image_dir} has {num_images} images ({where}); one line per image, in order",
    )


def check_increasing(path: Path, timestamps_s: np.ndarray) -> None:
    """Frame timestamps must strictly increase (a stream runs forward); FormatError at the first line whose
    timestamp does not."""
    bad = np.flatnonzero(np.diff(timestamps_s) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise FormatError(
            path,
            entry_line_no(path, i),
            f"timestamp {float(timestamps_s[i])!r} is not after the one before it ({float(timestamps_s[i - 1])!r}); "
            "timestamps must increase line by line: fix or sort the file",
        )


def check_stride_max_frames(stride: int, max_frames: int | None) -> None:
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise SourceError(f"stride must be an integer >= 1, got {stride!r}")
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 0):
        raise SourceError(f"max_frames must be None or an integer >= 0, got {max_frames!r}")


def strided_length(count: int, stride: int, max_frames: int | None) -> int:
    n = math.ceil(count / stride)
    return n if max_frames is None else min(n, max_frames)


def intrinsics_matrix(intrinsics: object) -> np.ndarray | None:
    """None, a 3x3 matrix, or (fx, fy, cx, cy) in pixels -> K float64 [3,3] or None."""
    if intrinsics is None:
        return None
    try:
        a = np.asarray(intrinsics, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.empty(0)
    if a.shape == (4,):
        fx, fy, cx, cy = a
        a = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if a.shape != (3, 3) or not np.all(np.isfinite(a)) or a[0, 0] <= 0 or a[1, 1] <= 0:
        raise SourceError(
            f"intrinsics must be a 3x3 K or (fx, fy, cx, cy) with positive focal lengths, got {a.tolist() if a.size else intrinsics!r}"
        )
    return a
