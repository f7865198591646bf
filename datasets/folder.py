"""A folder of images as a frame source."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from recon.errors import SourceError
from recon.types import Frame

from .base import SourceBase, intrinsics_matrix
from .image_files import IMAGE_EXTENSIONS, list_images, readable_images, skipped_images_notes


class ImageFolderSource(SourceBase):
    """Images directly inside one folder, in natural order (`img2` before `img10`).

    Frame `index` is the file's position in the sorted list (stride and skipped files leave gaps);
    `timestamp_s` is that position divided by `fps`, so strides keep real spacing. A file that cannot be
    decoded, or whose size differs from the run's (most images' size), is skipped with a warning and listed
    in `skipped` (names, reset at each iteration); `max_frames` counts yielded frames. `len()` is the number
    of frames to try, an upper bound when files are skipped."""

    def __init__(
        self,
        path: str | Path,
        stride: int = 1,
        max_frames: int | None = None,
        intrinsics: object = None,
        fps: float = 30.0,
    ) -> None:
        self.path = Path(path)
        super().__init__(stride, max_frames)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise SourceError(f"fps must be a positive number, got {fps!r}")
        if not self.path.is_dir():
            raise SourceError(f"image folder '{self.path}' does not exist or is not a folder; pass a folder of images")
        self._files: Sequence[Path] = list_images(self.path)
        if not self._files:
            exts = " ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
            raise SourceError(f"image folder '{self.path}' has no images; expected files ending in {exts}")
        self.fps = float(fps)
        self._K = intrinsics_matrix(intrinsics)
        self.name = self.path.resolve().name or str(self.path)
        self.skipped: list[str] = []

    @property
    def notes(self) -> list[str]:
        return skipped_images_notes(self.skipped, self.path)

    def __len__(self) -> int:
        return self._strided_length(len(self._files))

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        for position, rgb in readable_images(self._files[:: self.stride], self.max_frames, self.skipped, self.path):
            file_index = position * self.stride
            yield Frame(index=file_index, timestamp_s=file_index / self.fps, image_rgb=rgb, K=self._K)
