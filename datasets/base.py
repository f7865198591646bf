"""The one protocol every input kind implements (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from recon.types import Frame


@runtime_checkable
class FrameSource(Protocol):
    """A lazy stream of `Frame`s: iterating reads one frame at a time and holds a bounded number.

    `name` is a short human label (used in outputs). `intrinsics` is K [3,3] in pixels of the yielded
    images when known, else None. `has_ground_truth` says whether yielded frames carry
    `gt_cam_from_world` (and possibly `gt_depth_m`); `metric` whether that ground truth is in metres.
    `__len__` is defined only where the length is known up front; use `length_hint()` otherwise."""

    name: str

    def __iter__(self) -> Iterator[Frame]: ...

    @property
    def intrinsics(self) -> np.ndarray | None: ...

    @property
    def has_ground_truth(self) -> bool: ...


def length_hint(source: object) -> int | None:
    """len(source) where the source knows it, else None (live streams)."""
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None
