"""The working resolution of the classical model: the map from source pixels, the grey images and the
intrinsics at it."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from recon.datasets.resize import plan_resize, resize_image
from recon.types import Frame, ResizeMap


def working_map(hw: tuple[int, int], max_side: int) -> ResizeMap:
    """Original pixels -> the working resolution (longer side at most `max_side`)."""
    s = min(1.0, max_side / max(hw))
    return plan_resize(hw, width=max(8, round(hw[1] * s)), height=max(8, round(hw[0] * s)), mode="fit", multiple_of=1)


def gray_image(image_rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The image in grey at the working resolution hw."""
    return resize_image(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY), (hw[1], hw[0]))


def working_intrinsics(
    frames: Sequence[Frame], resize: ResizeMap, hw: tuple[int, int], focal_guess: float
) -> tuple[np.ndarray, bool]:
    """(K at the working resolution, whether it is known): the source's K when given, else a guess with
    focal = focal_guess x the longer side and the principal point at the centre."""
    if frames[0].K is not None:
        return resize.K_to_model(frames[0].K), True
    H, W = hw
    f = focal_guess * max(H, W)
    return np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]]), False
