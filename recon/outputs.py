"""Files of a run (DESIGN §6), written as the run goes: a crash or Ctrl-C at frame N leaves valid files up
to the last finished window. Line files (trajectories) are appended and flushed per window; whole-file
outputs (summary, map) are replaced atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from recon.errors import ReconError
from recon.trajectory_io import FRAMES_HEADER, format_frames_line, format_kitti_line, format_tum_line


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_path)` into a temporary file beside `path`, then rename over it: readers only ever see
    the old or the new file, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=_json_default) + "\n"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output folder and prove it is writable before any work starts."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".recon-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ReconError(f"output folder '{out_dir}' is not writable ({e.strerror or e}); pass --out to a writable folder") from None
    return out_dir


class TrajectoryWriter:
    """Appends poses to OUT/STEM.tum and OUT/STEM.kitti (world_from_cam), flushed per call. With
    `frames_file`, also each pose's source frame index to OUT/frames.txt: KITTI lines carry no
    timestamp, and a trajectory holds keyframes only, so this is how a pose finds its ground truth."""

    def __init__(self, out_dir: Path, stem: str = "trajectory", frames_file: bool = False) -> None:
        self.tum_path = Path(out_dir) / f"{stem}.tum"
        self.kitti_path = Path(out_dir) / f"{stem}.kitti"
        self._files: list[TextIO] = [open(self.tum_path, "w"), open(self.kitti_path, "w")]
        if frames_file:
            self._files.append(open(Path(out_dir) / "frames.txt", "w"))
            self._files[2].write(FRAMES_HEADER + "\n")
        self.count = 0

    def append(self, timestamps_s: list[float], world_from_cam: np.ndarray, frame_indices: list[int] | None = None) -> None:
        tum, kitti, *frames = self._files
        if frames and (frame_indices is None or len(frame_indices) != len(timestamps_s)):
            raise ValueError("this writer keeps frames.txt: pass one frame index per pose")
        for i, (ts, T) in enumerate(zip(timestamps_s, world_from_cam)):
            tum.write(format_tum_line(float(ts), T) + "\n")
            kitti.write(format_kitti_line(T) + "\n")
            if frames:
                frames[0].write(format_frames_line(frame_indices[i], float(ts)) + "\n")
        self.count += len(timestamps_s)
        for f in self._files:
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in self._files:
            if not f.closed:
                f.close()
