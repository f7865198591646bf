"""A live stream (camera index, RTSP/HTTP/UDP URL) as a frame source, with bounded reconnects and a clean
stop on Ctrl-C."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from recon.errors import SourceError
from recon.types import Frame

from .base import UNSET, SourceBase, Unset, intrinsics_matrix, path_given_twice, path_missing
from .video import reached_stated_end

logger = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "rtp", "srt")
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_CREDENTIALS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


class Capture(Protocol):
    """The part of cv2.VideoCapture a stream uses; tests inject fakes through `open_capture`. A capture may
    also have cv2's `get(prop)`, for the frame count it states (see `stated_length`)."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def is_stream_url(spec: object) -> bool:
    m = _URL.match(spec) if isinstance(spec, str) else None
    return m is not None and m.group(1).lower() in URL_SCHEMES


def parse_stream_spec(spec: int | str) -> int | str:
    """Camera index (int or digit string) -> int; anything else (URL, file) is passed on as a string."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return int(spec)
    if isinstance(spec, str) and spec.strip().isdigit():
        return int(spec.strip())
    if isinstance(spec, (str, Path)) and str(spec).strip():
        return str(spec).strip()
    raise SourceError(f"stream spec must be a camera index or a URL, got {spec!r}")


def redact(spec: int | str) -> str:
    """A spec safe for logs and messages: `rtsp://user:pass@host` -> `rtsp://***@host`."""
    return f"camera {spec}" if isinstance(spec, int) else _CREDENTIALS.sub(r"\1***@", spec)


@contextmanager
def _rtsp_over_tcp(spec: int | str) -> Iterator[None]:
    """RTSP over UDP drops packets on most networks (grey smeared frames), so ask FFmpeg for TCP unless the
    user chose options. OpenCV reads the variable only while opening a capture, and offers no per-capture
    way to pass it, so it is set for the duration of the open and restored right after: the process
    environment is only changed for those milliseconds (not thread-safe against a concurrent open)."""
    if (
        not (isinstance(spec, str) and spec.lower().startswith(("rtsp://", "rtsps://")))
        or FFMPEG_OPTIONS_ENV in os.environ
    ):
        yield
        return
    os.environ[FFMPEG_OPTIONS_ENV] = "rtsp_transport;tcp"
    try:
        yield
    finally:
        os.environ.pop(FFMPEG_OPTIONS_ENV, None)


def stated_length(cap: Capture) -> int | None:
    """The frame count a capture states: a finite video (a file served over http, a VOD playlist) has one,
    a live stream or camera none (FFmpeg says 0, -1 or NaN); so does a capture without `get`."""
    get = getattr(cap, "get", None)
    count = get(cv2.CAP_PROP_FRAME_COUNT) if callable(get) else None
    return int(count) if isinstance(count, float) and math.isfinite(count) and count > 0 else None


def open_cv_capture(spec: int | str, open_timeout_s: float = 10.0, read_timeout_s: float = 10.0) -> Capture:
    """The default capture factory: a camera by index, or a URL/file through FFmpeg with timeouts so a dead
    stream fails instead of blocking forever."""
    if isinstance(spec, int):
        return cv2.VideoCapture(spec)
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(read_timeout_s * 1000),
    ]
    with _rtsp_over_tcp(spec):
        return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)


class StreamSource(SourceBase):
    """Frames from `path`, a camera index or a stream URL (`spec=` is the same argument under its older name),
    read as they arrive; no length.

    `timestamp_s` is the arrival time in seconds since the iteration started (monotonic clock). `index`
    counts the frames read (before stride); `stride` keeps every stride-th frame read. When reading fails
    the capture is reopened up to `max_reconnects` times in a row, `reconnect_delay_s` apart; a new frame
    read after a reconnect resets that count, so an endless stream survives occasional drops but a dead one
    ends; and at most `max_total_reconnects` times over the run, so one that keeps dropping ends too.
    A local file spec ends at its last frame (a file does not drop). So does a URL to a finite video (a file
    served over http states its frame count): it ends at the count, and a reconnect after a drop, which
    starts it over, skips the frames already read (their index stays the frame's number in the video).
    Ctrl-C (KeyboardInterrupt) during iteration ends it cleanly: the capture is released and the caller
    keeps the frames it got.
    After an iteration, `reconnects`, `gave_up` and `interrupted` say what happened, `notes` in words. The
    capture opens when iteration starts (a stream is a side effect): a camera is tried 1 + max_reconnects
    times (a device can be busy for a moment), a URL once (it already waited `open_timeout_s`, and a refused
    one is a typo); then SourceError from the first next()."""

    def __init__(
        self,
        path: int | str | Unset = UNSET,
        max_reconnects: int = 3,
        max_total_reconnects: int = 100,
        reconnect_delay_s: float = 1.0,
        read_timeout_s: float = 10.0,
        open_timeout_s: float = 10.0,
        max_frames: int | None = None,
        stride: int = 1,
        intrinsics: object = None,
        open_capture: Callable[[int | str], Capture] | None = None,
        *,
        spec: int | str | Unset = UNSET,
    ) -> None:
        if isinstance(path, Unset):  # given under its older name, or not at all
            path = spec if not isinstance(spec, Unset) else path_missing("StreamSource")
        elif not isinstance(spec, Unset):
            raise path_given_twice("StreamSource", "spec")
        self.spec = parse_stream_spec(path)
        super().__init__(stride, max_frames)
        for label, count in {"max_reconnects": max_reconnects, "max_total_reconnects": max_total_reconnects}.items():
            if not isinstance(count, int) or count < 0:
                raise SourceError(f"{label} must be an integer >= 0, got {count!r}")
        durations_s = {
            "reconnect_delay_s": reconnect_delay_s,
            "read_timeout_s": read_timeout_s,
            "open_timeout_s": open_timeout_s,
        }
        for label, value in durations_s.items():
            if not isinstance(value, (int, float)) or not value >= 0:
                raise SourceError(f"{label} must be a number >= 0, got {value!r}")
        self.max_reconnects = max_reconnects
        self.max_total_reconnects = max_total_reconnects
        self.reconnect_delay_s = float(reconnect_delay_s)
        self.open_timeout_s = float(open_timeout_s)
        self._K = intrinsics_matrix(intrinsics)
        self._open_capture = open_capture or partial(
            open_cv_capture, open_timeout_s=float(open_timeout_s), read_timeout_s=float(read_timeout_s)
        )
        self._is_file = isinstance(self.spec, str) and not is_stream_url(self.spec) and Path(self.spec).is_file()
        self.name = Path(self.spec).stem if isinstance(self.spec, str) and self._is_file else redact(self.spec)
        self.reconnects = 0
        self.gave_up = False
        self.interrupted = False

    @property
    def notes(self) -> list[str]:
        if self.gave_up and self.reconnects >= self.max_total_reconnects:
            return [
                f"{self.name}: the stream kept dropping: after {self.reconnects} reconnects, the most one run makes, "
                "the run ended there with the frames it had"
            ]
        if self.gave_up:
            return [
                f"{self.name}: the stream dropped and {self.max_reconnects} reconnect attempts failed; "
                "the run ended there with the frames it had"
            ]
        if self.reconnects:
            return [f"{self.name}: the stream dropped and was reconnected ({self.reconnects} reconnect attempts)"]
        return []

    def _try_open(self) -> Capture | None:
        try:
            cap = self._open_capture(self.spec)
        except (cv2.error, OSError) as e:
            lines = str(e).strip().splitlines()
            logger.warning("opening %s failed: %s", redact(self.spec), lines[-1] if lines else type(e).__name__)
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _open_first(self) -> Capture:
        attempts = 1 + self.max_reconnects if isinstance(self.spec, int) else 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.reconnect_delay_s)
            started = time.monotonic()
            if (cap := self._try_open()) is not None:
                return cap
        raise SourceError(open_failure_message(self.spec, attempts, time.monotonic() - started, self.open_timeout_s))

    def __iter__(self) -> Iterator[Frame]:
        self.reconnects = 0
        self.gave_up = False
        self.interrupted = False
        cap: Capture | None = None
        yielded = 0
        frames_read = 0  # of the stream, or of the video a finite one plays: the next frame's index
        replayed = 0  # frames a reopened finite video plays again before the first new one
        failures_in_row = 0
        try:
            cap = self._open_first()
            length = stated_length(cap)
            start = time.monotonic()
            while self.max_frames is None or yielded < self.max_frames:
                ok, bgr = cap.read() if cap is not None else (False, None)
                if not ok or bgr is None:
                    if self._is_file or (length is not None and reached_stated_end(frames_read, length)):
                        break
                    if failures_in_row >= self.max_reconnects or self.reconnects >= self.max_total_reconnects:
                        logger.warning(
                            "%s: no new frames after %d reconnect attempts in a row (%d in the run); ending the stream",
                            self.name,
                            failures_in_row,
                            self.reconnects,
                        )
                        self.gave_up = True
                        break
                    failures_in_row += 1
                    self.reconnects += 1
                    if cap is not None:
                        cap.release()
                        cap = None
                    logger.warning(
                        "%s: stream dropped; reconnect attempt %d of %d",
                        self.name,
                        failures_in_row,
                        self.max_reconnects,
                    )
                    time.sleep(self.reconnect_delay_s)
                    if (cap := self._try_open()) is not None:
                        length = stated_length(cap)
                        replayed = (
                            frames_read if length is not None else 0
                        )  # a video starts over; a live stream goes on
                    continue
                if replayed:  # read before the drop: not a new frame, and no sign the stream recovered
                    replayed -= 1
                    continue
                failures_in_row = 0
                frames_read += 1
                if (frames_read - 1) % self.stride:
                    continue
                if bgr.ndim == 2:
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                rgb = cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2RGB)
                yield Frame(index=frames_read - 1, timestamp_s=time.monotonic() - start, image_rgb=rgb, K=self._K)
                yielded += 1
        except KeyboardInterrupt:
            self.interrupted = True
            logger.info("%s: interrupted (Ctrl-C); stopping after %d frames", self.name, yielded)
        finally:
            if cap is not None:
                cap.release()
        logger.info("%s: stream ended after %d frames, %d reconnects", self.name, yielded, self.reconnects)


def open_failure_message(spec: int | str, attempts: int, last_attempt_s: float, open_timeout_s: float) -> str:
    """Why a camera/URL did not open, as far as we can tell, and what to check."""
    if isinstance(spec, int):
        return (
            f"cannot open stream {redact(spec)!r} ({attempts} attempts); check the camera index (ls /dev/video*), "
            "that no other program holds it, and permissions"
        )
    # FFmpeg gives up at the timeout without saying so; an attempt that lasted that long timed out.
    why = (
        f"no answer within {open_timeout_s:g} s"
        if last_attempt_s >= 0.9 * open_timeout_s > 0
        else "refused or not a stream"
    )
    return f"cannot open stream {redact(spec)!r}: {why}; check the URL, network and credentials (or raise --timeout)"
