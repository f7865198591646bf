"""Painting on a tileable texture tile: periodic noise, tone helpers and shapes drawn with wrap-around.

Tiles are square, `size` texels a side, and must stay seamless: noise is FFT noise with a power-law
spectrum (periodic by construction), and every shape is drawn together with the periodic copies that
reach into the tile. The material families (`street_materials`, `room_materials`) paint with these."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Rgb = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------- noise
def spectral_noise(
    rng: np.random.Generator,
    size: int,
    beta: float,
    f_lo: float = 1.0,
    f_hi: float | None = None,
    aniso: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Zero-mean, unit-std periodic noise [size,size] with amplitude ~ f^-beta between f_lo and f_hi
    cycles per tile. `aniso` = (x, y) frequency weights: (1, 8) stretches the grain along x (wood)."""
    fy = np.fft.fftfreq(size) * size
    fx = np.fft.rfftfreq(size) * size
    f = np.hypot(fy[:, None] * aniso[1], fx[None, :] * aniso[0])
    amp = np.where(f >= f_lo, np.maximum(f, 1e-6) ** -beta, 0.0)
    if f_hi is not None:
        amp *= np.exp(-((np.maximum(f - f_hi, 0.0) / (0.25 * f_hi)) ** 2))
    spec = amp * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape))
    img = np.fft.irfft2(spec, s=(size, size))
    img -= img.mean()
    img /= max(float(img.std()), 1e-12)
    return img.astype(np.float32)


def luma(base: Rgb, *layers: tuple[np.ndarray, float]) -> np.ndarray:
    """base colour modulated by noise layers (noise, relative contrast) -> float32 [T,T,3]."""
    m = np.ones_like(layers[0][0])
    for n, c in layers:
        m = m + c * n
    return m[..., None] * np.asarray(base, np.float32)


def chroma(img: np.ndarray, n: np.ndarray, rgb_shift: Rgb) -> np.ndarray:
    return img + n[..., None] * np.asarray(rgb_shift, np.float32)


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def add_grain(img_u8: np.ndarray, rng: np.random.Generator, amount: float, beta: float = 0.4) -> np.ndarray:
    """Fine noise over everything drawn, so flat shapes are textured too."""
    n = spectral_noise(rng, img_u8.shape[0], beta, f_lo=24, f_hi=img_u8.shape[0] / 3)
    return to_u8(img_u8.astype(np.float32) * (1.0 + amount * n[..., None]))


def jitter_colour(rng: np.random.Generator, base: Rgb, jitter: float) -> tuple[int, int, int]:
    c = np.asarray(base) * (1.0 + jitter * rng.uniform(-1, 1)) + rng.uniform(-jitter, jitter, 3) * 40
    r, g, b = (int(v) for v in np.clip(c, 0, 255))
    return r, g, b


# ------------------------------------------------------------------------------------- wrapped drawing
def wrapped(
    size: int,
    draw: Callable[[int, int], object],  # draws into the image; what it returns is not used
    x0: float = 0.0,
    y0: float = 0.0,
    x1: float | None = None,
    y1: float | None = None,
) -> None:
    """Draw a shape (bounding box x0..x1, y0..y1; unknown = the whole tile) and the periodic copies
    that reach into the tile, so the tile stays seamless."""
    x1 = size if x1 is None else x1
    y1 = size if y1 is None else y1
    for dy in (-size, 0, size):
        if y1 + dy < -2 or y0 + dy > size + 2:
            continue
        for dx in (-size, 0, size):
            if x1 + dx < -2 or x0 + dx > size + 2:
                continue
            draw(dx, dy)


def rect(
    img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, ...], thickness: int = -1
) -> None:
    s = img.shape[0]
    wrapped(
        s,
        lambda dx, dy: cv2.rectangle(
            img, (int(x0 + dx), int(y0 + dy)), (int(x1 + dx), int(y1 + dy)), color, thickness, cv2.LINE_AA
        ),
        min(x0, x1),
        min(y0, y1),
        max(x0, x1),
        max(y0, y1),
    )


def circle(img: np.ndarray, x: float, y: float, r: float, color: tuple[int, ...], thickness: int = -1) -> None:
    s = img.shape[0]
    wrapped(
        s,
        lambda dx, dy: cv2.circle(img, (int(x + dx), int(y + dy)), max(int(r), 1), color, thickness, cv2.LINE_AA),
        x - r - 1,
        y - r - 1,
        x + r + 1,
        y + r + 1,
    )


def ellipse(img: np.ndarray, x: float, y: float, ax: float, ay: float, ang: float, color: tuple[int, ...]) -> None:
    s = img.shape[0]
    r = max(ax, ay) + 1
    wrapped(
        s,
        lambda dx, dy: cv2.ellipse(
            img, (int(x + dx), int(y + dy)), (max(int(ax), 1), max(int(ay), 1)), ang, 0, 360, color, -1, cv2.LINE_AA
        ),
        x - r,
        y - r,
        x + r,
        y + r,
    )


def polyline(img: np.ndarray, pts: np.ndarray, color: tuple[int, ...], thickness: int) -> None:
    s = img.shape[0]
    p = np.round(pts).astype(np.int32)
    lo, hi = p.min(0) - thickness, p.max(0) + thickness
    wrapped(
        s,
        lambda dx, dy: cv2.polylines(img, [p + np.array([dx, dy], np.int32)], False, color, thickness, cv2.LINE_AA),
        lo[0],
        lo[1],
        hi[0],
        hi[1],
    )


def random_walk(rng: np.random.Generator, size: int, steps: int, step: float) -> np.ndarray:
    ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.5, steps))
    start = rng.uniform(0, size, 2)
    return start + np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * step, 0)


def blobs(
    img: np.ndarray, rng: np.random.Generator, count: int, rmin: float, rmax: float, palette: list[Rgb], jitter: float
) -> None:
    s = img.shape[0]
    for _ in range(count):
        c = jitter_colour(rng, palette[rng.integers(len(palette))], jitter)
        ellipse(
            img,
            rng.uniform(0, s),
            rng.uniform(0, s),
            rng.uniform(rmin, rmax),
            rng.uniform(rmin, rmax),
            rng.uniform(0, 180),
            c,
        )
