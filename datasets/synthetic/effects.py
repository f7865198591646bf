"""Optional camera effects on the rendered image (never on the ground truth): motion blur along each
pixel's own image motion, a smooth exposure drift, abrupt exposure steps (auto-exposure entering shade
or a tunnel), and sensor noise. All deterministic in (seed, frame)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .rng import hash_uniform, rng_for


@dataclass(frozen=True)
class ImageEffects:
    noise_std: float = 0.0  # Gaussian noise, std in 8-bit grey levels
    exposure_jitter: float = 0.0  # gain = exp(jitter * w(t)), w a smooth drift in [-1, 1]
    motion_blur_px: float = 0.0  # streak length at the image's median motion; each pixel along its own motion
    exposure_step: float = 0.0  # log-gain jump between consecutive blocks of frames (0.5: x1.6 or more)
    exposure_step_frames: int = 30  # frames per constant-exposure block

    def __post_init__(self) -> None:
        for name in ("noise_std", "exposure_jitter", "motion_blur_px", "exposure_step"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        n = self.exposure_step_frames
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"exposure_step_frames must be a whole number >= 1, got {n!r}")

    @property
    def active(self) -> bool:
        return self.noise_std > 0 or self.exposure_jitter > 0 or self.motion_blur_px > 0 or self.exposure_step > 0


def exposure_gain(seed: int, index: int, jitter: float) -> float:
    """exp(jitter * w): w is a sum of three slow sines (periods 15-80 frames), scaled into [-1, 1]."""
    if jitter <= 0:
        return 1.0
    rng = rng_for(seed, "exposure")
    periods, phases, amps = rng.uniform(15, 80, 3), rng.uniform(0, 2 * math.pi, 3), rng.uniform(0.5, 1.0, 3)
    w = float(np.sum(amps * np.sin(2 * math.pi * index / periods + phases)) / np.sum(amps))
    return math.exp(jitter * w)


def exposure_step_gain(seed: int, index: int, step: float, block_frames: int) -> float:
    """Piecewise-constant gain: block b = index // block_frames sits at log-gain ±step * (0.5 .. 1),
    alternating in sign, so every block boundary is a jump of at least `step` (a pure function of the
    frame index, like everything here)."""
    if step <= 0:
        return 1.0
    b = index // block_frames
    u = float(hash_uniform(seed, "exposure-step", b))
    return math.exp(step * (1.0 if b % 2 else -1.0) * (0.5 + 0.5 * u))


def pixel_motion(depth_m: np.ndarray, K: np.ndarray, next_from_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image motion (du, dv) [H,W] of every pixel to the next camera; sky (depth 0) moves as if at infinity."""
    H, W = depth_m.shape
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    R, t = next_from_cam[:3, :3], next_from_cam[:3, 3]
    d = depth_m.astype(np.float64)
    far = d <= 0
    # A point at infinity: direction only (translation drops out).
    scale = np.where(far, 1.0, d)
    tw = np.where(far[..., None], 0.0, 1.0) * t
    X = scale * (R[0, 0] * x + R[0, 1] * y + R[0, 2]) + tw[..., 0]
    Y = scale * (R[1, 0] * x + R[1, 1] * y + R[1, 2]) + tw[..., 1]
    Z = np.maximum(scale * (R[2, 0] * x + R[2, 1] * y + R[2, 2]) + tw[..., 2], 1e-3)
    return (K[0, 0] * X / Z + K[0, 2] - u).astype(np.float32), (K[1, 1] * Y / Z + K[1, 2] - v).astype(np.float32)


def motion_blur(image: np.ndarray, du: np.ndarray, dv: np.ndarray, length_px: float) -> np.ndarray:
    """Average of samples along each pixel's motion, centred on it (the pose is mid-exposure)."""
    mag = np.hypot(du, dv)
    med = float(np.median(mag))
    if med < 1e-3 or length_px <= 0:
        return image
    scale = length_px / med
    su, sv = du * scale, dv * scale
    cap = 4.0 * length_px  # the few pixels moving much faster than the median are not smeared across the frame
    over = np.maximum(np.hypot(su, sv) / cap, 1.0)
    su, sv = su / over, sv / over
    taps = int(min(max(math.ceil(float(np.hypot(su, sv).max())) + 1, 2), 16))
    H, W = du.shape
    gu, gv = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    acc = np.zeros(image.shape, np.float32)
    for k in range(taps):
        f = np.float32(k / (taps - 1) - 0.5)
        acc += cv2.remap(image, gu + f * su, gv + f * sv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(
            np.float32
        )
    return np.clip(acc / taps + 0.5, 0, 255).astype(np.uint8)


def apply_effects(
    image: np.ndarray,
    fx: ImageEffects,
    seed: int,
    index: int,
    depth_m: np.ndarray,
    K: np.ndarray,
    next_from_cam: np.ndarray | None,
) -> np.ndarray:
    out = image
    if fx.motion_blur_px > 0 and next_from_cam is not None:
        du, dv = pixel_motion(depth_m, K, next_from_cam)
        out = motion_blur(out, du, dv, fx.motion_blur_px)
    if fx.exposure_jitter > 0 or fx.noise_std > 0 or fx.exposure_step > 0:
        gain = exposure_gain(seed, index, fx.exposure_jitter) * exposure_step_gain(
            seed, index, fx.exposure_step, fx.exposure_step_frames
        )
        img = out.astype(np.float32) * np.float32(gain)
        if fx.noise_std > 0:
            img += rng_for(seed, "noise", index).standard_normal(img.shape, dtype=np.float32) * np.float32(fx.noise_std)
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return out
