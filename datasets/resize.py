"""Resize / crop / pad a Frame to a model's input size, keeping the exact map back to original pixels.

Pixel centres sit at integer coordinates, so a resize by s maps u -> s (u + 0.5) - 0.5 (the convention
cv2.resize samples with); a crop or pad then shifts by whole pixels. The result is one `ResizeMap`
(`u_model = scale * u_orig + offset` per axis), which also carries K across (`ResizeMap.K_to_model`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import cv2
import numpy as np

from recon.errors import SourceError
from recon.types import Frame, ResizeMap

ResizeMode = Literal["fit", "crop", "pad"]
MODES: tuple[str, ...] = ("fit", "crop", "pad")


def _round_to_multiple(x: float, multiple_of: int) -> int:
    return max(multiple_of, int(round(x / multiple_of)) * multiple_of)


def _floor_to_multiple(x: float, multiple_of: int) -> int:
    return max(multiple_of, int(math.floor(x / multiple_of + 1e-9)) * multiple_of)


def _map(
    original_hw: tuple[int, int], resized_wh: tuple[int, int], shift_xy: tuple[int, int], model_wh: tuple[int, int]
) -> ResizeMap:
    """Resize to `resized_wh`, then move by a whole-pixel `shift_xy` (negative = crop, positive = pad)."""
    h, w = original_hw
    sx, sy = resized_wh[0] / w, resized_wh[1] / h
    return ResizeMap(
        original_hw=(h, w),
        model_hw=(model_wh[1], model_wh[0]),
        scale_xy=(sx, sy),
        offset_xy=(0.5 * sx - 0.5 + shift_xy[0], 0.5 * sy - 0.5 + shift_xy[1]),
    )


def plan_resize(
    original_hw: tuple[int, int],
    width: int | None = None,
    height: int | None = None,
    mode: ResizeMode = "fit",
    multiple_of: int = 14,
) -> ResizeMap:
    """The map for an image of `original_hw` (H, W) into a model's input:

    - width and height both None: keep the size, each side rounded to `multiple_of`.
    - only one given: that side (rounded to `multiple_of`), the other from the aspect ratio rounded to
      `multiple_of`; the three modes agree (VGGT's "width 518" preprocessing).
    - both given, a box (each side rounded down to `multiple_of`):
      "fit": the largest size inside the box with the aspect ratio, sides rounded to `multiple_of` (output
      may be smaller than the box; nothing lost, nothing added);
      "crop": scale to cover the box, centre-crop to it (loses borders);
      "pad": scale to fit inside the box, centre-pad to it (adds borders).
    Rounding makes the scale per axis differ by a hair from the aspect ratio; the map records it exactly."""
    h, w = int(original_hw[0]), int(original_hw[1])
    if h <= 0 or w <= 0:
        raise SourceError(f"cannot resize an empty image of size {w}x{h}")
    if mode not in MODES:
        raise SourceError(f"resize mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise SourceError(f"multiple_of must be an integer >= 1, got {multiple_of!r}")
    for label, value in (("width", width), ("height", height)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < multiple_of):
            raise SourceError(f"{label} must be an integer >= multiple_of ({multiple_of}), got {value!r}")

    if width is None and height is None:
        size = (_round_to_multiple(w, multiple_of), _round_to_multiple(h, multiple_of))
        return _map((h, w), size, (0, 0), size)
    if width is None or height is None:
        if width is not None:
            s = width / w
        else:
            assert height is not None  # both None returned above
            s = height / h
        size = (_round_to_multiple(w * s, multiple_of), _round_to_multiple(h * s, multiple_of))
        return _map((h, w), size, (0, 0), size)

    box_w, box_h = _floor_to_multiple(width, multiple_of), _floor_to_multiple(height, multiple_of)
    if mode == "fit":
        s = min(box_w / w, box_h / h)
        size = (min(box_w, _round_to_multiple(w * s, multiple_of)), min(box_h, _round_to_multiple(h * s, multiple_of)))
        return _map((h, w), size, (0, 0), size)
    if mode == "crop":
        s = max(box_w / w, box_h / h)
        resized = (max(box_w, round(w * s)), max(box_h, round(h * s)))
        shift = (-((resized[0] - box_w) // 2), -((resized[1] - box_h) // 2))
        return _map((h, w), resized, shift, (box_w, box_h))
    s = min(box_w / w, box_h / h)
    resized = (min(box_w, max(1, round(w * s))), min(box_h, max(1, round(h * s))))
    shift = ((box_w - resized[0]) // 2, (box_h - resized[1]) // 2)
    return _map((h, w), resized, shift, (box_w, box_h))


def _resized_and_shift(rmap: ResizeMap) -> tuple[tuple[int, int], tuple[int, int]]:
    """Recover (resized_wh, shift_xy) from a map made by `plan_resize`; reject maps that are not a resize
    plus a whole-pixel shift (those would need warping, which blurs depth edges)."""
    h, w = rmap.original_hw
    sx, sy = rmap.scale_xy
    resized = (round(sx * w), round(sy * h))
    shift_f = (rmap.offset_xy[0] - (0.5 * sx - 0.5), rmap.offset_xy[1] - (0.5 * sy - 0.5))
    shift = (round(shift_f[0]), round(shift_f[1]))
    exact = (
        resized[0] >= 1
        and resized[1] >= 1
        and abs(resized[0] - sx * w) < 1e-6
        and abs(resized[1] - sy * h) < 1e-6
        and abs(shift[0] - shift_f[0]) < 1e-6
        and abs(shift[1] - shift_f[1]) < 1e-6
    )
    if not exact:
        raise SourceError(f"resize map {rmap} is not a resize to whole pixels plus a whole-pixel crop/pad")
    return resized, shift


def _place(resized: np.ndarray, shift: tuple[int, int], model_hw: tuple[int, int], fill: int | float) -> np.ndarray:
    """Put `resized` on a model-sized canvas at a whole-pixel shift (negative crops, positive pads)."""
    H, W = model_hw
    canvas = np.full((H, W) + resized.shape[2:], fill, dtype=resized.dtype)
    dx, dy = shift
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(W, dx + resized.shape[1]), min(H, dy + resized.shape[0])
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = resized[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    return canvas


def _nearest(values: np.ndarray, rmap: ResizeMap) -> np.ndarray:
    """Nearest-neighbour resample through the map: every model pixel takes the original pixel its centre
    falls in, so depth is never blended across an edge. Pixels outside the original get 0 (invalid)."""
    H, W = rmap.model_hw
    h, w = rmap.original_hw
    xs = np.floor((np.arange(W) - rmap.offset_xy[0]) / rmap.scale_xy[0] + 0.5).astype(np.int64)
    ys = np.floor((np.arange(H) - rmap.offset_xy[1]) / rmap.scale_xy[1] + 0.5).astype(np.int64)
    valid = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
    out = values[np.clip(ys, 0, h - 1)[:, None], np.clip(xs, 0, w - 1)[None, :]]
    return np.where(valid, out, np.zeros((), dtype=values.dtype))


def resize_image(image: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """`image` ([H,W] or [H,W,C]) at `wh` (width, height): the area filter when shrinking (no aliasing),
    bilinear when enlarging. Every image resize in recon goes through here."""
    h, w = image.shape[:2]
    if (w, h) == tuple(wh):
        return image
    shrinking = wh[0] * wh[1] < w * h
    return cv2.resize(image, wh, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resample_image(image: np.ndarray, rmap: ResizeMap, pad_value: int = 255, allow_warp: bool = False) -> np.ndarray:
    """`image` [h,w(,C)] (rmap.original_hw) as the model sees it through `rmap`: resized, then cropped or padded
    by whole pixels to rmap.model_hw. The colours of a prediction come through here, so every model pixel's
    colour is the one its depth was predicted from (a stretch of the whole frame would shift a cropped one).
    A map that is not a resize plus a whole-pixel shift is refused, or with `allow_warp` (colours, which
    tolerate the blur) followed by a bilinear warp."""
    if tuple(rmap.original_hw) != image.shape[:2]:
        raise SourceError(f"resize map is for {rmap.original_hw}, the image is {image.shape[:2]}")
    try:
        resized_wh, shift = _resized_and_shift(rmap)
    except SourceError:
        if not allow_warp:
            raise
        (sx, sy), (ox, oy) = rmap.scale_xy, rmap.offset_xy
        M = np.array([[sx, 0.0, ox], [0.0, sy, oy]])  # original -> model pixels, centres at integers
        H, W = rmap.model_hw
        fill = (pad_value,) * (image.shape[2] if image.ndim == 3 else 1)
        return cv2.warpAffine(image, M, (W, H), flags=cv2.INTER_LINEAR, borderValue=fill)
    return _place(resize_image(image, resized_wh), shift, rmap.model_hw, pad_value)


def apply_resize(frame: Frame, rmap: ResizeMap, pad_value: int = 255) -> Frame:
    """A new Frame: image resized through `rmap` (area filter when shrinking), K carried across, gt depth
    by nearest neighbour (padding = 0, invalid), `resize` chained onto any earlier map. Poses unchanged."""
    if tuple(rmap.original_hw) != frame.hw:
        raise SourceError(f"resize map is for {rmap.original_hw}, frame {frame.index} is {frame.hw}")
    return dataclasses.replace(
        frame,
        image_rgb=resample_image(frame.image_rgb, rmap, pad_value),
        K=None if frame.K is None else rmap.K_to_model(frame.K),
        gt_depth_m=None if frame.gt_depth_m is None else _nearest(frame.gt_depth_m, rmap),
        resize=rmap if frame.resize is None else frame.resize.then(rmap),
    )


def resize_for_model(
    frame: Frame,
    width: int | None = None,
    height: int | None = None,
    mode: ResizeMode = "fit",
    multiple_of: int = 14,
    pad_value: int = 255,
) -> Frame:
    """`plan_resize` for this frame's size, then `apply_resize`. Pad colour defaults to white, as in
    VGGT's preprocessing."""
    return apply_resize(frame, plan_resize(frame.hw, width, height, mode, multiple_of), pad_value)
