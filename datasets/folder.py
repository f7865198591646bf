"""A folder of images as a frame source, plus the image-file helpers the other file sources share
(natural sort, RGB reading, option checks)."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from recon.errors import SourceError
from recon.types import Frame

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key putting `img2` before `img10`. re.split with a capturing group alternates text and
    digit runs, so the tuples of two names always compare str with str and int with int."""
    parts = _DIGITS.split(name)
    key = tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))
    return key + (name,)  # ties ("a02" vs "a2") still get one fixed order


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, naturally sorted. Hidden files (`.name`, e.g. macOS `._x.png`
    resource forks) are never frames."""
    with os.scandir(folder) as entries:
        names = [
            e.name
            for e in entries
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS and e.is_file()
        ]
    return [folder / n for n in sorted(names, key=natural_key)]


def read_image_rgb(path: Path) -> np.ndarray | None:
    """RGB uint8 [H,W,3], or None when the file cannot be read or decoded. Reads bytes then decodes so
    non-ASCII paths work on every OS (cv2.imread does not on Windows)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # greyscale/alpha/16-bit all come back as 8-bit BGR
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_depth_u16(path: Path) -> np.ndarray | None:
    """A single-channel uint16 PNG as uint16 [H,W], or None when absent/undecodable/not 16-bit."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        return None
    return raw


def unusable_reason(rgb: np.ndarray | None, first_hw: tuple[int, int] | None) -> str | None:
    """Why a decoded image cannot join the run (None when it can). A window stacks frames and K belongs
    to one size, so an image of another size than the first frame's is as unusable as a corrupt one."""
    if rgb is None:
        return "cannot be read or decoded"
    if first_hw is not None and rgb.shape[:2] != first_hw:
        return f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the first frame's {first_hw[1]}x{first_hw[0]}"
    return None


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 [H,W,3] or a uint16 [H,W] array as PNG (encode then write, for non-ASCII paths)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise SourceError(f"cannot encode {path} as PNG")
    try:
        buf.tofile(path)
    except OSError as e:
        raise SourceError(f"cannot write {path}: {e.strerror or e}; check the folder is writable") from None


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
            f"intrinsics must be a 3x3 K or (fx, fy, cx, cy) with positive focal lengths, got {intrinsics!r}"
        )
    return a


class ImageFolderSource:
    """Images directly inside one folder, in natural order (`img2` before `img10`).

    Frame `index` counts yielded frames (0, 1, 2, ...); `timestamp_s` is the file's position in the sorted
    list divided by `fps`, so strides keep real spacing. A file that cannot be decoded, or whose size
    differs from the first frame's, is skipped with a warning and listed in `skipped` (names, reset at
    each iteration); `max_frames` counts yielded frames. `len()` is the number of frames to try, an upper
    bound when files are skipped."""

    def __init__(
        self,
        path: str | Path,
        stride: int = 1,
        max_frames: int | None = None,
        intrinsics: object = None,
        fps: float = 30.0,
    ) -> None:
        self.path = Path(path)
        check_stride_max_frames(stride, max_frames)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise SourceError(f"fps must be a positive number, got {fps!r}")
        if not self.path.is_dir():
            raise SourceError(f"image folder '{self.path}' does not exist or is not a folder; pass a folder of images")
        self._files: Sequence[Path] = list_images(self.path)
        if not self._files:
            exts = " ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
            raise SourceError(f"image folder '{self.path}' has no images; expected files ending in {exts}")
        self.stride = int(stride)
        self.max_frames = max_frames
        self.fps = float(fps)
        self._K = intrinsics_matrix(intrinsics)
        self.name = self.path.resolve().name or str(self.path)
        self.skipped: list[str] = []

    @property
    def intrinsics(self) -> np.ndarray | None:
        return None if self._K is None else self._K.copy()

    @property
    def has_ground_truth(self) -> bool:
        return False

    @property
    def metric(self) -> bool:
        return False

    def __len__(self) -> int:
        return strided_length(len(self._files), self.stride, self.max_frames)

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        yielded = 0
        first_hw: tuple[int, int] | None = None
        for file_index in range(0, len(self._files), self.stride):
            if self.max_frames is not None and yielded >= self.max_frames:
                return
            path = self._files[file_index]
            rgb = read_image_rgb(path)
            why = unusable_reason(rgb, first_hw)
            if why is not None or rgb is None:
                self._skip(path, why or "")
                continue
            first_hw = rgb.shape[:2]
            yield Frame(index=yielded, timestamp_s=file_index / self.fps, image_rgb=rgb, K=self._K)
            yielded += 1
        if yielded == 0 and self.skipped:
            raise SourceError(f"none of the {len(self.skipped)} images in '{self.path}' could be read; check the files")

    def _skip(self, path: Path, why: str) -> None:
        self.skipped.append(path.name)
        logger.warning("skipping %s: %s", path, why)
