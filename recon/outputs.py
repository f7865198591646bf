"""Files of a run (ARCHITECTURE §1), written as the run goes: a crash or Ctrl-C at frame N leaves valid files up
to the last finished window. Line files (trajectories) are appended and flushed per window; whole-file
outputs (summary, map) are replaced atomically.

A run owns its output folder: it holds one run's files at a time (an earlier run is refused, or removed with
--overwrite) and one run at a time writes there (a lock)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from recon.errors import OutputError
from recon.trajectory_io import FRAMES_HEADER, format_frames_line, format_kitti_line, format_tum_line

# The pre-run probe writes this much: a folder that cannot take it (a full disk, a quota) fails before any
# work instead of after the first window. About the first map.ply of a short run.
PROBE_BYTES = 256 << 10
_FIX = "free space there or pass --out to a writable folder on another disk"


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing an output (ENOSPC, EFBIG, EACCES, EROFS, ...) -> OutputError naming the file:
    the user's fix is the same whichever write hit it."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}; {_FIX}") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp_path)` into a temporary file beside `path`, then rename over it: readers only ever see
    the old or the new file, never half of one (a failed write leaves the old file and no temporary)."""
    path = Path(path)
    with _writing(path):
        tmp = _new_temporary(path)
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _new_temporary(path: Path) -> Path:
    """An empty new file `.NAME.XXXXXXXX.SUFFIX` beside `path`, created with mode 0666 less the process umask
    like any file a Unix tool writes (tempfile.mkstemp makes 0600, and the rename kept that mode)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_json(path: Path, data: Any) -> None:
    def write(p: Path) -> None:
        p.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")

    atomic_write(path, write)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare_out_dir(out_dir: Path, probe_bytes: int = PROBE_BYTES) -> Path:
    """Create the output folder and prove it takes `probe_bytes` before any work starts (the probe file is
    removed again, whatever happens): no permission, a read-only or full disk is one line up front."""
    out_dir = Path(out_dir)
    try:  # exists() too raises, for a name too long
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(f"output folder '{out_dir}' is a file; pass --out to a folder (it is created if missing)")
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot create output folder '{out_dir}' ({e.strerror or e}); pass --out to a writable folder"
        ) from None
    probe = out_dir / ".recon-write-test"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(probe_bytes))
            f.flush()
    except OSError as e:
        raise OutputError(
            f"output folder '{out_dir}' cannot take {probe_bytes >> 10} KiB ({e.strerror or e}); {_FIX}"
        ) from None
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
    return out_dir


ExportFormat = Literal["colmap", "nerfstudio"]  # `recon export --format`


@dataclass(frozen=True)
class OutputConfig:
    """What a run writes besides its trajectory."""

    out: str = "out"  # the run's folder
    depth_every: int = 10  # keep every N-th trajectory frame's depth in OUT/depth/ (0: none)
    map_every: int = 1  # rewrite map.ply every N windows (and at the end)
    final_outlier_removal: bool = True  # the final map.ply without statistical outliers
    export: ExportFormat | None = None  # also write OUT/colmap or OUT/nerfstudio after the run


DEPTH_DIR = "depth"  # per-frame depth samples (recon.depth_samples)
PLOTS_DIR = "plots"  # `recon eval`'s figures
# Every file `recon run` and `recon eval` write into OUT, as globs relative to it: what makes a folder hold an
# earlier run, and all that --overwrite removes (a user's other files there stay). Not a recording: --rrd FILE
# is the user's name, anywhere, and the run opens it before it clears the folder (`recon demo` puts it in OUT).
# What `recon export` writes into its folder (OUT/colmap or OUT/nerfstudio by default): all its --overwrite removes.
EXPORT_FILES = (
    "images/[0-9]*.jpg",
    "images/[0-9]*.png",
    "sparse/0/*.bin",
    "sparse/0/*.txt",
    "transforms.json",
    "sparse_pc.ply",
)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
RUN_FILES = (
    "config.yaml",
    "trajectory.tum",
    "trajectory.kitti",
    "frames.txt",
    "ground_truth.tum",
    "ground_truth.kitti",
    "map.ply",
    "summary.json",
    "metrics.json",
    f"{DEPTH_DIR}/[0-9]*.npz",
    f"{PLOTS_DIR}/*.png",
    *(f"{fmt}/{pattern}" for fmt in EXPORT_FORMATS for pattern in EXPORT_FILES),
)  # the exports go with their run
LOCK_FILE = ".recon.lock"


def matching_files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The files under `folder` matching `patterns` (globs relative to it), with the temporaries (`.NAME.*`, see
    atomic_write) a killed writer leaves."""
    folder = Path(folder)
    found: set[Path] = set()
    for pattern in patterns:
        sub, name = os.path.split(pattern)
        for glob in (name, f".{name}.*"):
            found.update(p for p in (folder / sub).glob(glob) if p.is_file())
    return sorted(found)


def remove_matching_files(folder: Path, patterns: tuple[str, ...]) -> None:
    """Remove matching_files, then their subfolders if nothing else is in them (a user's other files stay)."""
    with _writing(Path(folder)):
        for path in matching_files(folder, patterns):
            path.unlink(missing_ok=True)
    for pattern in patterns:
        sub = os.path.dirname(pattern)
        while sub:  # innermost first: colmap/sparse/0, colmap/sparse, colmap
            with suppress(OSError):  # not empty
                (Path(folder) / sub).rmdir()
            sub = os.path.dirname(sub)


def run_files(out_dir: Path) -> list[Path]:
    """recon's own files in `out_dir`."""
    return matching_files(out_dir, RUN_FILES)


def refuse_earlier_run(out_dir: Path) -> None:
    """A run into a folder that holds an earlier one would mix the two (stale ground truth, metrics, depth)."""
    if earlier := run_files(out_dir):
        names = sorted({p.relative_to(out_dir).parts[0] for p in earlier})
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise OutputError(
            f"output folder '{out_dir}' holds an earlier run ({listed}); "
            "pass --overwrite to replace it, or --out to another folder"
        )


def remove_run_files(out_dir: Path) -> None:
    """Remove an earlier run's files (run_files) and then its subfolders if nothing else is in them."""
    remove_matching_files(out_dir, RUN_FILES)


@contextmanager
def run_lock(out_dir: Path, advice: str = "wait for it to end or pass --out to another folder") -> Iterator[None]:
    """One command at a time writing into `out_dir` (a run, or `recon eval` adding its metrics and plots): two
    would splice their lines into the same files. An exclusive flock on OUT/.recon.lock, which holds the
    holder's pid for the message (`advice` ends it); the kernel drops the lock of a process that died, so a
    lock file a killed run left is simply taken over. The file is removed at the end."""
    path = Path(out_dir) / LOCK_FILE
    with _writing(path):
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputError(
                    f"output folder '{out_dir}' is in use by another recon run (pid {holder}); {advice}"
                ) from None
            # The holder before us may have removed the file between our open and our lock: lock the new one.
            if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    try:
        yield
    finally:
        with suppress(OSError):
            path.unlink()
        os.close(fd)


@contextmanager
def claim_out_dir(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """The output folder of one run, up front (before any slow work): created and proven writable
    (prepare_out_dir), locked for the run's duration, and refused if it holds an earlier run unless
    `overwrite` (the earlier files are removed when the run starts writing: see Pipeline.run)."""
    out_dir = prepare_out_dir(out_dir)
    with run_lock(out_dir):
        if not overwrite:
            refuse_earlier_run(out_dir)
        yield out_dir


class TrajectoryWriter:
    """Appends poses to OUT/STEM.tum and OUT/STEM.kitti (world_from_cam), flushed per call. With
    `frames_file`, also each pose's source frame index to OUT/frames.txt: KITTI lines carry no
    timestamp, and a trajectory holds keyframes only, so this is how a pose finds its ground truth.
    An append is all or nothing: when a write fails (full disk) every file is cut back to where the call
    found it, so the files stay whole lines and agree with each other, and an OutputError names the file."""

    def __init__(self, out_dir: Path, stem: str = "trajectory", frames_file: bool = False) -> None:
        self.tum_path = Path(out_dir) / f"{stem}.tum"
        self.kitti_path = Path(out_dir) / f"{stem}.kitti"
        self._paths = [self.tum_path, self.kitti_path] + ([Path(out_dir) / "frames.txt"] if frames_file else [])
        self._files: list[FileIO] = []
        for path in self._paths:
            with _writing(path):
                self._files.append(open(path, "wb", buffering=0))  # noqa: SIM115 - open for the writer's life; unbuffered: a failed write leaves nothing pending
        self.count = 0
        if frames_file:
            self._append_all(["", "", FRAMES_HEADER + "\n"])

    def append(
        self, timestamps_s: list[float], world_from_cam: np.ndarray, frame_indices: list[int] | None = None
    ) -> None:
        self._append_all(self._texts(timestamps_s, world_from_cam, frame_indices))
        self.count += len(timestamps_s)

    def rewrite(
        self, timestamps_s: list[float], world_from_cam: np.ndarray, frame_indices: list[int] | None = None
    ) -> None:
        """Replace every file's content with these poses (a loop closure corrected earlier ones). Each file
        is replaced atomically, so a crash leaves either the old or the new poses, whole."""
        for f in self._files:
            f.close()
        self._files = []
        texts = self._texts(timestamps_s, world_from_cam, frame_indices)
        if len(self._paths) == 3:
            texts[2] = FRAMES_HEADER + "\n" + texts[2]
        for path, text in zip(self._paths, texts):
            atomic_write_text(path, text)
        for path in self._paths:
            with _writing(path):
                self._files.append(open(path, "ab", buffering=0))  # noqa: SIM115 - open for the writer's life
        self.count = len(timestamps_s)

    def _texts(
        self, timestamps_s: list[float], world_from_cam: np.ndarray, frame_indices: list[int] | None
    ) -> list[str]:
        frames_file = len(self._paths) == 3
        if frames_file and (frame_indices is None or len(frame_indices) != len(timestamps_s)):
            raise ValueError("this writer keeps frames.txt: pass one frame index per pose")
        poses = list(zip((float(ts) for ts in timestamps_s), world_from_cam))
        texts = [
            "".join(format_tum_line(ts, T) + "\n" for ts, T in poses),
            "".join(format_kitti_line(T) + "\n" for _, T in poses),
        ]
        if frames_file and frame_indices is not None:
            texts.append("".join(format_frames_line(i, ts) + "\n" for i, (ts, _) in zip(frame_indices, poses)))
        return texts

    def _append_all(self, texts: list[str]) -> None:
        """texts[k] to file k (one per file, in order), durable; on failure every file is truncated back
        and OutputError raised."""
        starts = [f.tell() for f in self._files]
        k = 0
        try:
            for k, text in enumerate(texts):
                _write_all(self._files[k], text.encode("ascii"))
                os.fsync(self._files[k].fileno())
        except OSError as e:
            for f, start in zip(self._files, starts):
                with suppress(OSError):  # shrinking a file needs no space; if even that fails, report the first error
                    f.truncate(start)
                    f.seek(start)
            raise OutputError(f"cannot write {self._paths[k]}: {e.strerror or e}; {_FIX}") from None

    def close(self) -> None:
        for f in self._files:
            if not f.closed:
                f.close()


def _write_all(f: FileIO, data: bytes) -> None:
    """A raw write may take part of the buffer; loop until all of it is written (or an OSError says why not)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view) or 0 :]
