"""Tracks shared by the windows of a stream: each frame is tracked once, as it arrives, and a window takes the
tracks through its frames. Tracked per window instead, the frames a window shares with the one before (8
of 20 by default) were tracked twice: 40% of its tracking, which is a third of the model's time on a drive
and two thirds on a wide-baseline orbit, where most steps need ORB matches."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recon.models.classical.tracks import TrackChain, TrackerConfig, Tracks, tracks_from
from recon.types import Frame


@dataclass(frozen=True)
class _Seen:
    """One observed frame: the tracks seen in it."""

    index: int
    fingerprint: bytes  # a sparse sample of its pixels: a window's frame must be the very frame observed
    ids: np.ndarray  # [N] int64 track ids
    uv: np.ndarray  # [N,2] float32 pixels at the working resolution


def fingerprint(image_rgb: np.ndarray) -> bytes:
    return image_rgb[::61, ::67].tobytes()


class StreamTracks:
    """`observe` each frame in stream order (one thread); `window(frames)` from any thread gives the tracks
    of a window whose frames were all observed, one after the other, or None. Holds the last `max_frames`
    frames' tracks (~16 B a track, ~20 KB a frame) and the last grey image."""

    def __init__(self, cfg: TrackerConfig, seed: int, max_frames: int) -> None:
        self.cfg, self.seed = cfg, seed
        self._chain: TrackChain | None = None
        self._seen: deque[_Seen] = deque(maxlen=max_frames)
        self._lock = threading.Lock()  # _seen is read by the model threads while the producer appends

    def observe(self, frame: Frame, gray: np.ndarray) -> None:
        chain, last = self._chain, self._seen[-1] if self._seen else None
        if chain is None or last is None or gray.shape != chain.gray.shape or frame.index <= last.index:
            # A new stream (or one whose frames changed size): tracks start afresh.
            chain = self._chain = TrackChain(gray, self.cfg, self.seed)
            seen = _Seen(frame.index, fingerprint(frame.image_rgb), chain.alive_ids.copy(), chain.alive_px.copy())
            with self._lock:
                self._seen.clear()
                self._seen.append(seen)
            return
        ids, uv, started, started_uv = chain.step(gray)
        seen = _Seen(frame.index, fingerprint(frame.image_rgb), ids, uv)
        with self._lock:
            if len(started):  # tracks a rescued step started in the frame before
                self._seen[-1] = _Seen(
                    last.index,
                    last.fingerprint,
                    np.concatenate([last.ids, started]),
                    np.concatenate([last.uv, started_uv]),
                )
            self._seen.append(seen)

    def window(self, frames: Sequence[Frame]) -> Tracks | None:
        """The tracks of `frames` if they were observed in this order, one after the other (else None)."""
        with self._lock:
            seen = list(self._seen)
        first = next((i for i, s in enumerate(seen) if s.index == frames[0].index), None)
        if first is None or first + len(frames) > len(seen):
            return None
        span = seen[first : first + len(frames)]
        if any(s.index != f.index or s.fingerprint != fingerprint(f.image_rgb) for s, f in zip(span, frames)):
            return None
        return tracks_from([(s.ids, s.uv) for s in span])
