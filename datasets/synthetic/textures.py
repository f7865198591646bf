"""Procedural materials and the mip-mapped texture atlas they are sampled from.

Every material is a tileable RGB tile defined on surface coordinates in metres (`texel_m` metres per
texel), so a surface point has one colour whatever the view. Tiles are multi-scale FFT noise with a
power-law spectrum (periodic by construction) plus shapes drawn with wrap-around (bricks, windows,
slabs, cracks, blobs) that give trackable corners. The atlas holds each tile's mip chain with a wrapped
border, so one `cv2.remap` per mip level samples any mix of materials with bilinear filtering."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .rng import rng_for

TILE = 512  # texels per tile side; a power of two so the 2x2 mip chain stays tileable
_PAD = 2  # wrapped border texels around every mip level (bilinear reads one beyond the edge)
REMAP_COLS = 1024  # cv2.remap wants 2-D maps narrower than SHRT_MAX; flat pixel lists are folded to this

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


def _luma(base: Rgb, *layers: tuple[np.ndarray, float]) -> np.ndarray:
    """base colour modulated by noise layers (noise, relative contrast) -> float32 [T,T,3]."""
    m = np.ones_like(layers[0][0])
    for n, c in layers:
        m = m + c * n
    return m[..., None] * np.asarray(base, np.float32)


def _chroma(img: np.ndarray, n: np.ndarray, rgb_shift: Rgb) -> np.ndarray:
    return img + n[..., None] * np.asarray(rgb_shift, np.float32)


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _grain(img_u8: np.ndarray, rng: np.random.Generator, amount: float, beta: float = 0.4) -> np.ndarray:
    """Fine noise over everything drawn, so flat shapes are textured too."""
    n = spectral_noise(rng, img_u8.shape[0], beta, f_lo=24, f_hi=img_u8.shape[0] / 3)
    return _u8(img_u8.astype(np.float32) * (1.0 + amount * n[..., None]))


def _col(rng: np.random.Generator, base: Rgb, jitter: float) -> tuple[int, int, int]:
    c = np.asarray(base) * (1.0 + jitter * rng.uniform(-1, 1)) + rng.uniform(-jitter, jitter, 3) * 40
    r, g, b = (int(v) for v in np.clip(c, 0, 255))
    return r, g, b


# ------------------------------------------------------------------------------------- wrapped drawing
def _wrapped(
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


def _rect(
    img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, ...], thickness: int = -1
) -> None:
    s = img.shape[0]
    _wrapped(
        s,
        lambda dx, dy: cv2.rectangle(
            img, (int(x0 + dx), int(y0 + dy)), (int(x1 + dx), int(y1 + dy)), color, thickness, cv2.LINE_AA
        ),
        min(x0, x1),
        min(y0, y1),
        max(x0, x1),
        max(y0, y1),
    )


def _circle(img: np.ndarray, x: float, y: float, r: float, color: tuple[int, ...], thickness: int = -1) -> None:
    s = img.shape[0]
    _wrapped(
        s,
        lambda dx, dy: cv2.circle(img, (int(x + dx), int(y + dy)), max(int(r), 1), color, thickness, cv2.LINE_AA),
        x - r - 1,
        y - r - 1,
        x + r + 1,
        y + r + 1,
    )


def _ellipse(img: np.ndarray, x: float, y: float, ax: float, ay: float, ang: float, color: tuple[int, ...]) -> None:
    s = img.shape[0]
    r = max(ax, ay) + 1
    _wrapped(
        s,
        lambda dx, dy: cv2.ellipse(
            img, (int(x + dx), int(y + dy)), (max(int(ax), 1), max(int(ay), 1)), ang, 0, 360, color, -1, cv2.LINE_AA
        ),
        x - r,
        y - r,
        x + r,
        y + r,
    )


def _polyline(img: np.ndarray, pts: np.ndarray, color: tuple[int, ...], thickness: int) -> None:
    s = img.shape[0]
    p = np.round(pts).astype(np.int32)
    lo, hi = p.min(0) - thickness, p.max(0) + thickness
    _wrapped(
        s,
        lambda dx, dy: cv2.polylines(img, [p + np.array([dx, dy], np.int32)], False, color, thickness, cv2.LINE_AA),
        lo[0],
        lo[1],
        hi[0],
        hi[1],
    )


def _random_walk(rng: np.random.Generator, size: int, steps: int, step: float) -> np.ndarray:
    ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.5, steps))
    start = rng.uniform(0, size, 2)
    return start + np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * step, 0)


def _blobs(
    img: np.ndarray, rng: np.random.Generator, count: int, rmin: float, rmax: float, palette: list[Rgb], jitter: float
) -> None:
    s = img.shape[0]
    for _ in range(count):
        c = _col(rng, palette[rng.integers(len(palette))], jitter)
        _ellipse(
            img,
            rng.uniform(0, s),
            rng.uniform(0, s),
            rng.uniform(rmin, rmax),
            rng.uniform(rmin, rmax),
            rng.uniform(0, 180),
            c,
        )


def _windows(
    img: np.ndarray, rng: np.random.Generator, cols: int, rows: int, w: int, h: int, frame: Rgb, glass: Rgb, style: int
) -> None:
    """A jittered grid of windows with frames, mullions and sills (texel units)."""
    s = img.shape[0]
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.08:
                continue  # a blank bay now and then
            x0 = (c + 0.5) * s / cols - w / 2 + rng.integers(-2, 3)
            y0 = (r + 0.5) * s / rows - h / 2 + rng.integers(-2, 3)
            fc = _col(rng, frame, 0.08)
            gc = _col(rng, glass, 0.25)
            _rect(img, x0 - 3, y0 - 3, x0 + w + 3, y0 + h + 3, fc)
            _rect(img, x0, y0, x0 + w, y0 + h, gc)
            # Reflections/curtains: a lighter block inside the glass, different per window.
            if rng.random() < 0.6:
                cx0 = x0 + rng.uniform(0, 0.5) * w
                _rect(img, cx0, y0 + 2, cx0 + rng.uniform(0.2, 0.5) * w, y0 + h - 2, _col(rng, (150, 140, 120), 0.3))
            _rect(img, x0 + w // 2 - 1, y0, x0 + w // 2 + 1, y0 + h, fc)
            if style == 1:
                _rect(img, x0, y0 + h // 3 - 1, x0 + w, y0 + h // 3 + 1, fc)
                _rect(img, x0 - 8, y0 - 3, x0 - 3, y0 + h + 3, _col(rng, (70, 90, 60), 0.3))  # shutters
                _rect(img, x0 + w + 3, y0 - 3, x0 + w + 8, y0 + h + 3, _col(rng, (70, 90, 60), 0.3))
            _rect(img, x0 - 6, y0 + h + 3, x0 + w + 6, y0 + h + 7, _col(rng, (200, 200, 195), 0.05))


# ---------------------------------------------------------------------------------------- materials
def _asphalt(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _luma((92, 92, 96), (spectral_noise(rng, s, 0.5, 24), 0.16), (spectral_noise(rng, s, 1.4, 2), 0.12))
    img = _u8(img)
    _blobs(img, rng, 10, 10, 45, [(75, 75, 80), (110, 108, 106)], 0.1)
    for _ in range(8):
        _polyline(img, _random_walk(rng, s, 40, 3.0), _col(rng, (45, 45, 48), 0.1), int(rng.integers(1, 3)))
    for _ in range(500):
        _circle(img, rng.uniform(0, s), rng.uniform(0, s), 1, _col(rng, (150, 150, 150), 0.2))
    return _grain(img, rng, 0.12)


def _blocks(
    rng: np.random.Generator, s: int, bw: int, bh: int, base: Rgb, jitter: float, joint: Rgb, joint_px: int = 1
) -> np.ndarray:
    """Running-bond blocks (bricks, slabs) of bw x bh texels with per-block tone and joints, vectorised;
    bw and bh divide the tile so the bond wraps."""
    rows, cols = s // bh, s // bw
    tones = np.clip(
        np.asarray(base, np.float32) * (1 + jitter * rng.uniform(-1, 1, (rows, cols, 1)))
        + rng.uniform(-jitter, jitter, (rows, cols, 3)) * 40,
        0,
        255,
    )
    y = np.arange(s)[:, None]
    x = (np.arange(s)[None, :] - (y // bh % 2) * (bw // 2)) % s
    img = tones[y // bh, x // bw]
    is_joint = (y % bh >= bh - joint_px) | (x % bw >= bw - joint_px)
    img[is_joint] = joint
    return img.astype(np.float32)


def _sidewalk(rng: np.random.Generator, s: int) -> np.ndarray:
    # 0.48 m slabs at 1.5 cm texels
    img = _blocks(rng, s, 32, 32, (175, 168, 158), 0.12, (120, 115, 108), 2)
    img = _u8(img * (1 + 0.08 * spectral_noise(rng, s, 1.0, 4))[..., None])
    _blobs(img, rng, 12, 4, 16, [(120, 115, 105), (200, 195, 185)], 0.1)
    return _grain(img, rng, 0.10)


def _lot(rng: np.random.Generator, s: int) -> np.ndarray:
    n1, n2 = spectral_noise(rng, s, 1.2, 2), spectral_noise(rng, s, 0.7, 8)
    img = _chroma(_luma((96, 110, 70), (n1, 0.18), (n2, 0.15)), spectral_noise(rng, s, 1.5, 1), (14, 4, -6))
    img = _u8(img)
    _blobs(img, rng, 60, 3, 14, [(70, 95, 45), (125, 110, 80), (140, 150, 90)], 0.15)
    return _grain(img, rng, 0.15)


def _kerb(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((190, 188, 182), (spectral_noise(rng, s, 0.8, 6), 0.10)))
    for x in range(0, s, 128):  # 1.28 m kerb stones
        _rect(img, x, 0, x + 2, s, (110, 108, 104))
    _blobs(img, rng, 20, 3, 10, [(150, 148, 140)], 0.1)
    return _grain(img, rng, 0.08)


def _brick(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(150, 70, 50), (125, 60, 45), (170, 95, 70), (110, 55, 45)][rng.integers(4)]
    # 32 x 8 cm bricks at 2 cm texels, running bond, light mortar
    img = _u8(
        _blocks(rng, s, 16, 4, base, 0.12, (190, 185, 175)) * (1 + 0.06 * spectral_noise(rng, s, 1.2, 2))[..., None]
    )
    _windows(img, rng, 4, 3, 60, 75, (225, 222, 215), (45, 55, 70), 0)
    return _grain(img, rng, 0.10)


def _plaster(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(215, 200, 170), (190, 205, 200), (225, 190, 165), (200, 195, 210), (180, 190, 160)][rng.integers(5)]
    img = _luma(base, (spectral_noise(rng, s, 1.6, 1), 0.08), (spectral_noise(rng, s, 0.9, 6), 0.04))
    img = _u8(img)
    _blobs(img, rng, 25, 6, 40, [tuple(np.asarray(base) * 0.85)], 0.05)  # stains
    for r in range(3):  # cornices between floors
        y = int((r + 0.02) * s / 3)
        _rect(img, 0, y, s, y + 6, _col(rng, (235, 232, 225), 0.03))
        _rect(img, 0, y + 6, s, y + 8, _col(rng, (120, 115, 110), 0.05))
    _windows(img, rng, 5, 3, 44, 70, (240, 238, 230), (55, 60, 75), 1)
    for _ in range(5):  # graffiti / posters near eye level (any height: v wraps)
        pts = _random_walk(rng, s, 25, 4.0)
        _polyline(img, pts, _col(rng, (rng.uniform(50, 250), rng.uniform(20, 200), rng.uniform(30, 230)), 0.2), 3)
    return _grain(img, rng, 0.08)


def _concrete(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(165, 165, 160), (140, 150, 160), (175, 160, 140)][rng.integers(3)]
    img = _u8(_luma(base, (spectral_noise(rng, s, 1.3, 2), 0.10), (spectral_noise(rng, s, 0.6, 16), 0.05)))
    panel = 64  # 3.2 m panels at 5 cm texels
    for y in range(0, s, panel):
        _rect(img, 0, y, s, y + 1, (90, 90, 92))
    for x in range(0, s, panel):
        _rect(img, x, 0, x + 1, s, (90, 90, 92))
    _windows(img, rng, 8, 8, 34, 38, (205, 205, 200), (50, 65, 85), 0)
    return _grain(img, rng, 0.06)


def _roof(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((85, 80, 78), (spectral_noise(rng, s, 1.0, 2), 0.15)))
    _blobs(img, rng, 30, 4, 20, [(60, 60, 62), (120, 110, 100)], 0.1)
    return _grain(img, rng, 0.10)


def _car_paint(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((215, 215, 215), (spectral_noise(rng, s, 1.8, 1), 0.05)))
    for _ in range(10):  # panel gaps, door lines
        x = rng.uniform(0, s)
        _rect(img, x, 0, x + 1, s, (60, 60, 60))
    for _ in range(4):
        y = rng.uniform(0, s)
        _rect(img, 0, y, s, y + 2, _col(rng, (120, 120, 125), 0.2))
    _blobs(img, rng, 40, 2, 8, [(140, 120, 100), (90, 90, 90), (250, 250, 250)], 0.1)  # dirt, badges
    return _grain(img, rng, 0.05)


def _glass(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _chroma(
        _luma((55, 65, 80), (spectral_noise(rng, s, 2.0, 1), 0.25)), spectral_noise(rng, s, 1.5, 1), (-6, 2, 12)
    )
    img = _u8(img)
    for _ in range(12):  # streaks of reflected sky and dashboard shapes
        x, y = rng.uniform(0, s, 2)
        _rect(img, x, y, x + rng.uniform(10, 80), y + rng.uniform(4, 30), _col(rng, (110, 120, 135), 0.3))
    return _grain(img, rng, 0.05)


def _metal(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((120, 125, 125), (spectral_noise(rng, s, 1.0, 2, aniso=(6.0, 1.0)), 0.12)))
    for _ in range(10):  # stickers, bands, bolts
        x, y = rng.uniform(0, s, 2)
        _rect(
            img,
            x,
            y,
            x + rng.uniform(8, 40),
            y + rng.uniform(8, 50),
            _col(rng, (rng.uniform(40, 240), rng.uniform(40, 240), rng.uniform(40, 240)), 0.1),
        )
    for _ in range(6):
        y = rng.uniform(0, s)
        _rect(img, 0, y, s, y + rng.uniform(2, 6), _col(rng, (70, 72, 75), 0.1))
    return _grain(img, rng, 0.06)


def _foliage(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((60, 95, 45), (spectral_noise(rng, s, 1.0, 2), 0.2)))
    _blobs(img, rng, 900, 3, 9, [(45, 80, 35), (85, 125, 55), (110, 140, 70), (35, 60, 30)], 0.12)
    return _grain(img, rng, 0.12)


def _bark(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((95, 75, 60), (spectral_noise(rng, s, 1.0, 2, aniso=(8.0, 1.0)), 0.25)))
    _blobs(img, rng, 40, 3, 8, [(60, 45, 35), (130, 115, 95)], 0.1)
    return _grain(img, rng, 0.1)


def _sign(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((230, 230, 225), (spectral_noise(rng, s, 1.5, 1), 0.03)))
    for _ in range(30):
        x, y = rng.uniform(0, s, 2)
        c = [(200, 30, 30), (30, 60, 170), (240, 200, 30), (20, 20, 20), (20, 120, 60)][rng.integers(5)]
        if rng.random() < 0.5:
            _circle(img, x, y, rng.uniform(10, 40), c, int(rng.choice([-1, 6])))
        else:
            _rect(img, x, y, x + rng.uniform(20, 90), y + rng.uniform(6, 30), c)
    return _grain(img, rng, 0.03)


def _plastic(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((200, 200, 200), (spectral_noise(rng, s, 1.6, 1), 0.06)))
    for x in range(0, s, 32):
        _rect(img, x, 0, x + 3, s, (140, 140, 140))
    _blobs(img, rng, 30, 3, 12, [(120, 110, 90), (250, 250, 250)], 0.1)
    return _grain(img, rng, 0.06)


def _wallpaper(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(225, 215, 190), (200, 215, 210), (230, 205, 195), (210, 210, 225)][rng.integers(4)]
    img = _u8(_luma(base, (spectral_noise(rng, s, 1.5, 1), 0.05), (spectral_noise(rng, s, 0.8, 8), 0.04)))
    motif = tuple(np.asarray(base) * rng.uniform(0.6, 0.75))
    step = 64  # 25.6 cm motif grid at 4 mm texels
    for y in range(0, s, step):
        for x in range(0, s, step):
            ox = step // 2 if (y // step) % 2 else 0
            cx, cy = float(x + ox + rng.integers(-6, 7)), float(y + rng.integers(-6, 7))
            c = _col(rng, motif, 0.08)
            k = rng.integers(3)
            if k == 0:
                _ellipse(img, cx, cy, rng.uniform(6, 14), rng.uniform(10, 20), rng.uniform(0, 180), c)
            elif k == 1:
                pts = np.array([[cx, cy - 14], [cx + 10, cy], [cx, cy + 14], [cx - 10, cy]], np.float64)
                _polyline(img, np.vstack([pts, pts[:1]]), c, 3)
            else:
                _rect(img, cx - 8, cy - 8, cx + 8, cy + 8, c, 2)
    _blobs(img, rng, 30, 6, 30, [tuple(np.asarray(base) * 0.9)], 0.03)  # faint stains break the repeat
    return _grain(img, rng, 0.05)


def _floor_wood(rng: np.random.Generator, s: int) -> np.ndarray:
    grain = spectral_noise(rng, s, 1.0, 2, aniso=(10.0, 1.0))
    img = _u8(_luma((165, 120, 80), (grain, 0.12)))
    pw = 32  # 12.8 cm planks at 4 mm texels
    for y in range(0, s, pw):
        x = rng.uniform(0, s)
        while x < 2 * s:
            length = rng.uniform(150, 300)
            c = _col(rng, (165, 120, 80), 0.15)
            _rect(img, x + 1, y + 1, x + length - 1, y + pw - 2, c)
            _rect(img, x, y, x + 1, y + pw, (70, 50, 35))
            x += length
        _rect(img, 0, y, s, y + 1, (80, 58, 40))
    return _u8(img.astype(np.float32) * (1.0 + 0.10 * grain[..., None]))


def _ceiling(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(_luma((232, 232, 226), (spectral_noise(rng, s, 0.6, 16), 0.05)))
    t = 128  # 64 cm tiles at 5 mm texels
    for y in range(0, s, t):
        _rect(img, 0, y, s, y + 2, (150, 150, 145))
    for x in range(0, s, t):
        _rect(img, x, 0, x + 2, s, (150, 150, 145))
    for _ in range(600):
        _circle(img, rng.uniform(0, s), rng.uniform(0, s), 1, _col(rng, (185, 185, 180), 0.05))
    return _grain(img, rng, 0.04)


def _wood(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(150, 100, 60), (110, 75, 50), (185, 150, 105)][rng.integers(3)]
    grain = spectral_noise(rng, s, 1.0, 2, aniso=(12.0, 1.0))
    img = _u8(_luma(base, (grain, 0.18), (spectral_noise(rng, s, 0.7, 12), 0.05)))
    for _ in range(12):  # knots
        _ellipse(
            img,
            rng.uniform(0, s),
            rng.uniform(0, s),
            rng.uniform(6, 16),
            rng.uniform(3, 6),
            rng.uniform(-10, 10),
            _col(rng, tuple(np.asarray(base) * 0.6), 0.1),
        )
    for y in range(0, s, 128):  # board edges
        _rect(img, 0, y, s, y + 2, _col(rng, tuple(np.asarray(base) * 0.5), 0.05))
    return _grain(img, rng, 0.05)


def _fabric(rng: np.random.Generator, s: int) -> np.ndarray:
    c1 = (rng.uniform(60, 200), rng.uniform(60, 200), rng.uniform(60, 200))
    img = _u8(_luma(c1, (spectral_noise(rng, s, 0.3, 64), 0.08)))
    step = 64
    for i in range(0, s, step):  # plaid
        w = int(rng.integers(4, 14))
        c = _col(rng, tuple(np.asarray(c1) * rng.uniform(0.5, 1.3)), 0.1)
        _rect(img, i, 0, i + w, s, c)
        _rect(img, 0, i + 20, s, i + 20 + w, c)
    return _grain(img, rng, 0.06)


def _books(rng: np.random.Generator, s: int) -> np.ndarray:
    img = np.full((s, s, 3), (70, 50, 35), np.uint8)
    shelf = 128  # 38 cm shelves at 3 mm texels
    for y in range(0, s, shelf):
        _rect(img, 0, y, s, y + 8, (150, 110, 70))
        x = 0.0
        while x < s:
            w = rng.uniform(6, 18)
            h = rng.uniform(0.55, 0.9) * (shelf - 10)
            c = _col(rng, (rng.uniform(30, 220), rng.uniform(30, 220), rng.uniform(30, 220)), 0.1)
            _rect(img, x, y + shelf - h, x + w - 1, y + shelf - 1, c)
            if rng.random() < 0.5:
                _rect(img, x + 1, y + shelf - h * 0.7, x + w - 2, y + shelf - h * 0.6, (230, 220, 180))
            x += w
    return _grain(img, rng, 0.05)


def _painted(rng: np.random.Generator, s: int) -> np.ndarray:
    c1 = (rng.uniform(80, 230), rng.uniform(80, 230), rng.uniform(80, 230))
    img = _u8(_luma(c1, (spectral_noise(rng, s, 1.3, 1), 0.1)))
    for y in range(0, s, 64):
        _rect(img, 0, y, s, y + int(rng.integers(3, 12)), _col(rng, tuple(np.asarray(c1) * 0.6), 0.1))
    _blobs(img, rng, 25, 4, 16, [tuple(np.asarray(c1) * 1.2), (40, 40, 40)], 0.1)
    return _grain(img, rng, 0.05)


def _painting(rng: np.random.Generator, s: int) -> np.ndarray:
    img = _u8(
        _luma(
            (rng.uniform(100, 240), rng.uniform(100, 240), rng.uniform(100, 240)), (spectral_noise(rng, s, 1.4, 1), 0.2)
        )
    )
    _blobs(
        img,
        rng,
        80,
        8,
        50,
        [(200, 40, 40), (40, 80, 180), (230, 200, 40), (30, 30, 30), (240, 240, 240), (40, 150, 80)],
        0.2,
    )
    for _ in range(15):
        _polyline(img, _random_walk(rng, s, 15, 10.0), _col(rng, (20, 20, 20), 0.3), int(rng.integers(2, 6)))
    return _grain(img, rng, 0.05)


def _plain(base: Rgb) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A nearly featureless surface (fresh paint, new asphalt): faint large-scale shading only, a few
    grey levels of contrast, so trackers find little on it (the stress suite's low-texture stretches)."""

    def make(rng: np.random.Generator, s: int) -> np.ndarray:
        return _u8(_luma(base, (spectral_noise(rng, s, 1.6, 1), 0.03)))

    return make


@dataclass(frozen=True)
class MaterialSpec:
    texel_m: float  # metres per texel at mip level 0; the tile repeats every TILE * texel_m metres
    make: Callable[[np.random.Generator, int], np.ndarray]


MATERIALS: dict[str, MaterialSpec] = {
    # street
    "asphalt": MaterialSpec(0.015, _asphalt),
    "sidewalk": MaterialSpec(0.015, _sidewalk),
    "lot": MaterialSpec(0.02, _lot),
    "kerb": MaterialSpec(0.01, _kerb),
    "brick": MaterialSpec(0.02, _brick),
    "plaster": MaterialSpec(0.025, _plaster),
    "concrete": MaterialSpec(0.05, _concrete),
    "roof": MaterialSpec(0.05, _roof),
    "car_paint": MaterialSpec(0.01, _car_paint),
    "glass": MaterialSpec(0.01, _glass),
    "metal": MaterialSpec(0.01, _metal),
    "foliage": MaterialSpec(0.015, _foliage),
    "bark": MaterialSpec(0.01, _bark),
    "sign": MaterialSpec(0.004, _sign),
    "plastic": MaterialSpec(0.01, _plastic),
    # the same surfaces nearly plain (low-texture stretches of a drive)
    "plain_wall": MaterialSpec(0.05, _plain((200, 194, 184))),
    "plain_road": MaterialSpec(0.05, _plain((94, 94, 98))),
    "plain_walk": MaterialSpec(0.05, _plain((172, 168, 160))),
    # room
    "wallpaper": MaterialSpec(0.004, _wallpaper),
    "floor_wood": MaterialSpec(0.004, _floor_wood),
    "ceiling": MaterialSpec(0.005, _ceiling),
    "wood": MaterialSpec(0.003, _wood),
    "fabric": MaterialSpec(0.003, _fabric),
    "books": MaterialSpec(0.003, _books),
    "painted": MaterialSpec(0.004, _painted),
    "painting": MaterialSpec(0.003, _painting),
    "leaves": MaterialSpec(0.004, _foliage),  # foliage seen from a metre away, indoors
}


def period_m(name: str, tile: int = TILE) -> float:
    """Metres after which a material's texture repeats."""
    return MATERIALS[name].texel_m * tile


# -------------------------------------------------------------------------------------------- atlas
def _mip_chain(tile: np.ndarray, levels: int) -> list[np.ndarray]:
    chain = [tile]
    cur = tile.astype(np.float32)
    for _ in range(1, levels):
        cur = 0.25 * (cur[0::2, 0::2] + cur[1::2, 0::2] + cur[0::2, 1::2] + cur[1::2, 1::2])
        chain.append(_u8(cur))
    return chain


@dataclass
class TextureAtlas:
    """All materials' mip chains in one RGBA uint8 image (4 channels: cv2.remap is faster than on 3).

    Level l of material m starts at (ox, oy)[m, l] + _PAD; a level-0 texel coordinate x in [0, TILE)
    maps to x * 2^-l + (2^-l - 1) / 2 at level l, which `bias_x/bias_y` fold in with the offsets."""

    image: np.ndarray
    names: tuple[str, ...]
    texel_m: np.ndarray  # [M] float32
    inv_texel: np.ndarray  # [M] float32
    level_scale: np.ndarray  # [M*L] float32, 2^-l
    bias_x: np.ndarray  # [M*L] float32
    bias_y: np.ndarray  # [M*L] float32
    num_levels: int
    tile: int

    def sample(
        self,
        material: np.ndarray,
        u_m: np.ndarray,
        v_m: np.ndarray,
        footprint_minor_m: np.ndarray,
        footprint_major_m: np.ndarray,
        major_du: np.ndarray,
        major_dv: np.ndarray,
        taps: int = 1,
    ) -> np.ndarray:
        """Filtered RGBA albedo, float32 [n / REMAP_COLS, REMAP_COLS, 4], at surface coordinates (metres)
        of n pixels; n must be a multiple of REMAP_COLS (pad the inputs).

        Trilinear mip filtering at the level where one tap covers max(minor, major/taps) of the pixel's
        footprint, with `taps` bilinear probes spread along the footprint's major axis (major_du,
        major_dv: unit direction in uv): anisotropic filtering, so grazing surfaces are neither aliased
        nor smeared."""
        n = material.shape[0]
        if n % REMAP_COLS:
            raise ValueError(f"sample() needs a multiple of {REMAP_COLS} pixels, got {n}")
        shape = (n // REMAP_COLS, REMAP_COLS)
        T = np.float32(self.tile)
        inv_texel = np.take(self.inv_texel, material)
        x = u_m * inv_texel
        y = v_m * inv_texel
        fmaj = footprint_major_m * inv_texel
        fp = np.maximum(footprint_minor_m * inv_texel, fmaj * np.float32(1.0 / taps))
        lod = np.log2(np.maximum(fp, np.float32(1e-6)))
        np.clip(lod, 0.0, self.num_levels - 1.0, out=lod)
        lvl0 = np.minimum(lod.astype(np.int32), self.num_levels - 2)
        frac = cv2.merge([(lod - lvl0).reshape(shape)] * 4)
        idx0 = material * self.num_levels + lvl0
        s0 = np.take(self.level_scale, idx0)
        bx0, by0 = np.take(self.bias_x, idx0), np.take(self.bias_y, idx0)
        idx0 += 1
        s1 = s0 * np.float32(0.5)
        bx1, by1 = np.take(self.bias_x, idx0), np.take(self.bias_y, idx0)
        acc = None
        for k in range(taps):
            if taps > 1:
                off = fmaj * np.float32((k + 0.5) / taps - 0.5)
                xk = x + off * major_du
                yk = y + off * major_dv
            else:
                xk, yk = x, y
            # Wrap into the tile once at level 0; the levels below inherit it.
            xk = xk - np.floor(xk * (1 / T)) * T
            yk = yk - np.floor(yk * (1 / T)) * T
            a = cv2.remap(
                self.image,
                (xk * s0 + bx0).reshape(shape),
                (yk * s0 + by0).reshape(shape),
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            ).astype(np.float32)
            b = cv2.remap(
                self.image,
                (xk * s1 + bx1).reshape(shape),
                (yk * s1 + by1).reshape(shape),
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            ).astype(np.float32)
            b -= a
            b *= frac
            b += a
            if acc is None:
                acc = b
            else:
                acc += b
        assert acc is not None
        if taps > 1:
            acc *= np.float32(1.0 / taps)
        return acc


def build_atlas(names: list[str] | tuple[str, ...], seed: int, tile: int = TILE, num_levels: int = 8) -> TextureAtlas:
    """Generate the named materials (deterministic in seed) and pack their mip chains."""
    names = tuple(dict.fromkeys(names))
    row_h = tile + 2 * _PAD
    small_w = tile // 2 + 2 * _PAD
    small_h = sum(tile // 2**lv + 2 * _PAD for lv in range(1, num_levels))
    row_h = max(row_h, small_h)
    width = tile + 2 * _PAD + small_w
    atlas = np.zeros((row_h * len(names), width, 4), np.uint8)
    M, L = len(names), num_levels
    scale = np.zeros(M * L, np.float32)
    bias_x = np.zeros(M * L, np.float32)
    bias_y = np.zeros(M * L, np.float32)
    for m, name in enumerate(names):
        spec = MATERIALS[name]
        tile_rgb = spec.make(rng_for(seed, "texture", name), tile)
        assert tile_rgb.shape == (tile, tile, 3) and tile_rgb.dtype == np.uint8, name
        y_small = 0
        for lv, level in enumerate(_mip_chain(tile_rgb, L)):
            if lv == 0:
                ox, oy = 0, m * row_h
            else:
                ox, oy = tile + 2 * _PAD, m * row_h + y_small
                y_small += level.shape[0] + 2 * _PAD
            padded = np.pad(level, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="wrap")
            atlas[oy : oy + padded.shape[0], ox : ox + padded.shape[1], :3] = padded
            s = 2.0**-lv
            scale[m * L + lv] = s
            bias_x[m * L + lv] = ox + _PAD + 0.5 * s - 0.5
            bias_y[m * L + lv] = oy + _PAD + 0.5 * s - 0.5
    texel = np.array([MATERIALS[nm].texel_m for nm in names], np.float32)
    return TextureAtlas(atlas, names, texel, (1.0 / texel).astype(np.float32), scale, bias_x, bias_y, L, tile)
