"""Image files shared by the file-based sources: natural order, RGB / 16-bit depth reading, PNG writing."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path

import cv2
import numpy as np

from recon.errors import SourceError

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
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS and _may_be_image(e)
        ]
    return [folder / n for n in sorted(names, key=natural_key)]


def _may_be_image(entry: os.DirEntry[str]) -> bool:
    """A file, or a link that leads nowhere (dangling, or in a loop): such a link is listed so that reading
    it fails and the run reports it with the other unreadable images, instead of dropping it unseen or
    stopping the run on ELOOP."""
    try:
        return entry.is_file() or (entry.is_symlink() and not entry.is_dir())
    except OSError:  # ELOOP: the link leads back to itself
        return True


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


def unusable_reason(rgb: np.ndarray | None, run_hw: tuple[int, int] | None) -> str | None:
    """Why a decoded image cannot join the run (None when it can). A window stacks frames and K belongs
    to one size, so an image of another size than the run's is as unusable as a corrupt one."""
    if rgb is None:
        return "cannot be read or decoded"
    if run_hw is not None and rgb.shape[:2] != run_hw:
        return f"size {rgb.shape[1]}x{rgb.shape[0]} differs from the run's {run_hw[1]}x{run_hw[0]}"
    return None


# Readable images that decide the run's image size. A few suffice against a stray thumbnail or crop; they
# are read ahead and held decoded, so the number bounds the memory the vote costs.
SIZE_VOTE = 5


def run_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The image size (h, w) most of `sizes` have; a tie goes to the larger image (a thumbnail is the
    smaller one). None for no sizes."""
    counts = Counter(sizes)
    return max(counts, key=lambda hw: (counts[hw], hw[0] * hw[1])) if counts else None


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


def encode_depth_u16(depth_m: np.ndarray, scale_per_m: float) -> np.ndarray:
    """z-depth in metres -> uint16 at `scale_per_m` units per metre (KITTI: 1000, TUM: 5000). Depth the
    format cannot hold (beyond 65535 / scale metres) becomes 0 = unknown: clipping it to the maximum would
    store a wrong depth as if it were measured."""
    scaled = np.rint(np.asarray(depth_m, dtype=np.float64) * scale_per_m)
    return np.where((scaled > 0) & (scaled <= np.iinfo(np.uint16).max), scaled, 0).astype(np.uint16)


SHOW_NAMES = 5  # file names listed in a note (all are counted)


def skipped_images_notes(skipped: Sequence[str], where: Path) -> list[str]:
    """The one-line report of the images an iteration skipped (each was logged with its reason as it went)."""
    if not skipped:
        return []
    more = f" (+{len(skipped) - SHOW_NAMES} more)" if len(skipped) > SHOW_NAMES else ""
    return [
        f"skipped {len(skipped)} image{'s' if len(skipped) > 1 else ''} of {where} that cannot be read or differ in size "
        f"from most of them: {', '.join(skipped[:SHOW_NAMES])}{more}; fix or remove them"
    ]


def readable_images(
    paths: Sequence[Path], max_frames: int | None, skipped: list[str], where: Path
) -> Iterator[tuple[int, np.ndarray]]:
    """(position in `paths`, RGB image) for each image that reads and has the run's size, in order, at most
    `max_frames` of them. The run's size is the one most of the first SIZE_VOTE readable images have, so
    a thumbnail that sorts first is the image skipped, not every real frame after it. An unusable file is
    logged and its name appended to `skipped`: one bad file among good ones never stops a run, but a
    SourceError says so when none of them (`where`: the folder or list they come from) can be read."""
    if max_frames == 0:
        return
    decoded = ((position, path, read_image_rgb(path)) for position, path in enumerate(paths))
    ahead: list[tuple[int, Path, np.ndarray | None]] = []
    for item in decoded:
        ahead.append(item)
        if sum(rgb is not None for _, _, rgb in ahead) == SIZE_VOTE:
            break
    run_hw = run_size([rgb.shape[:2] for _, _, rgb in ahead if rgb is not None])
    yielded = 0
    for position, path, rgb in chain(ahead, decoded):
        why = unusable_reason(rgb, run_hw)
        if why is not None or rgb is None:
            skipped.append(path.name)
            logger.warning("skipping %s: %s", path, why)
            continue
        yield position, rgb
        yielded += 1
        if max_frames is not None and yielded >= max_frames:
            return
    if yielded == 0 and skipped:
        raise SourceError(f"none of the {len(skipped)} images in '{where}' could be read; check the files")
