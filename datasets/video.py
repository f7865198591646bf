"""A video file as a frame source, decoded lazily through cv2.VideoCapture."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import cv2

from recon.errors import SourceError
from recon.types import Frame

from .base import SourceBase, intrinsics_matrix

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".wmv", ".flv", ".3gp"}
)


class VideoSource(SourceBase):
    """Frames of a video file. `timestamp_s` comes from the container (CAP_PROP_POS_MSEC), falling back
    to frame_no / fps where the container gives none. `index` is the frame's number in the video. `len()`
    exists when the container states its frame count (an estimate for some formats: iteration stops at the
    real end).
    A video that ends well before the count it states, or whose frame stops decoding, is read up to there and
    reported in `notes` (a truncated or damaged file keeps its good part). Each iteration opens its own
    capture, so the source can be iterated again."""

    def __init__(
        self,
        path: str | Path,
        stride: int = 1,
        max_frames: int | None = None,
        intrinsics: object = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(stride, max_frames)
        if not self.path.is_file():
            raise SourceError(f"video '{self.path}' not found; pass the path of a video file")
        if self.path.stat().st_size == 0:
            raise SourceError(
                f"video '{self.path}' is empty (0 bytes); the recording or copy did not finish: pass a complete file"
            )
        self._K = intrinsics_matrix(intrinsics)
        self.name = self.path.stem
        self._notes: list[str] = []
        cap = self._open()
        try:
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.frame_count: int | None = int(count) if math.isfinite(count) and count > 0 else None
            self.fps: float | None = float(fps) if math.isfinite(fps) and 0 < fps < 1000 else None
        finally:
            cap.release()

    def _open(self) -> cv2.VideoCapture:
        # FFmpeg only: when it fails, OpenCV's fallback readers (its own MJPEG/AVI parser) print to stderr
        # and never read what FFmpeg could not.
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        cap = cv2.VideoCapture(str(self.path), api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open video '{self.path}': it is truncated, corrupt or not a video; check it is a complete "
                "video file (mp4, avi, mkv, mov, webm ...) or repair/convert it with ffmpeg"
            )
        return cap

    @property
    def notes(self) -> list[str]:
        return self._notes

    def __len__(self) -> int:
        if self.frame_count is None:
            raise TypeError(f"video '{self.path}' does not state its length")
        return self._strided_length(self.frame_count)

    def __iter__(self) -> Iterator[Frame]:
        self._notes = []
        cap = self._open()
        try:
            yield from self._frames(cap)
        finally:
            cap.release()

    def _frames(self, cap: cv2.VideoCapture) -> Iterator[Frame]:
        yielded = 0
        frame_no = -1
        last_timestamp_s = -math.inf
        warned_fallback = False
        while self.max_frames is None or yielded < self.max_frames:
            # grab() for every frame, retrieve() (colour conversion) only for the kept ones.
            if not cap.grab():
                break
            frame_no += 1
            if frame_no % self.stride:
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                self._notes.append(
                    f"video '{self.path}': frame {frame_no} could not be decoded, so the run stopped there; "
                    "the file is damaged: repair or re-encode it with ffmpeg to use the rest"
                )
                return
            timestamp_s = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            # Some containers report 0 or a stale time for every frame; a time that does not advance
            # is not a time, so use the nominal frame rate instead.
            if not math.isfinite(timestamp_s) or timestamp_s <= last_timestamp_s:
                if not warned_fallback and frame_no > 0:
                    logger.warning("%s: container gives no usable timestamps; using frame_no / fps", self.path)
                    warned_fallback = True
                timestamp_s = frame_no / (self.fps or 30.0)
            last_timestamp_s = timestamp_s
            if bgr.ndim == 2:
                bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
            rgb = cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2RGB)
            yield Frame(index=frame_no, timestamp_s=timestamp_s, image_rgb=rgb, K=self._K)
            yielded += 1
        if frame_no < 0 and self.max_frames != 0:
            raise SourceError(f"video '{self.path}' has no decodable frame; check the file is not truncated")
        if (note := ended_early_note(self.path, frame_no + 1, self.frame_count, self.max_frames, yielded)) is not None:
            self._notes.append(note)


# Containers estimate their frame count (from duration x rate for some): a few frames short is normal.
COUNT_TOLERANCE = 0.02


def reached_stated_end(frames_read: int, stated: int) -> bool:
    """Whether a video that ran out after `frames_read` frames got to the count its header states."""
    return frames_read >= stated - max(1, math.ceil(COUNT_TOLERANCE * stated))


def ended_early_note(
    path: Path, frames_read: int, stated: int | None, max_frames: int | None, yielded: int
) -> str | None:
    """A note when the video ran out well before the frame count its header states: the sign of a file cut
    short (a copy or recording that did not finish). None when it ended where it said, or we stopped it."""
    if stated is None or (max_frames is not None and yielded >= max_frames):
        return None
    if reached_stated_end(frames_read, stated):
        return None
    return (
        f"video '{path}' ended at frame {frames_read} of the {stated} its header states; the file looks truncated: "
        "the run used the frames up to there"
    )
