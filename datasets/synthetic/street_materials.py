"""The street scene's materials: asphalt, paving, facades, cars, street furniture, and nearly plain
versions of the ground and walls for the stress suite's low-texture stretches.

Each maker paints one tile (`rng`, `s` texels a side) in texel units; `materials.MATERIALS` gives each its
size in metres. Facades carry their own window grid, so windows move with the wall's texture."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .tile_paint import (
    Rgb,
    add_grain,
    blobs,
    chroma,
    circle,
    jitter_colour,
    luma,
    polyline,
    random_walk,
    rect,
    spectral_noise,
    to_u8,
)


def _window_grid(
    img: np.ndarray,
    rng: np.random.Generator,
    cols: int,
    rows: int,
    w: int,
    h: int,
    frame: Rgb,
    glass_rgb: Rgb,
    style: int,
) -> None:
    """A jittered grid of windows with frames, mullions and sills (texel units)."""
    s = img.shape[0]
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.08:
                continue  # a blank bay now and then
            x0 = (c + 0.5) * s / cols - w / 2 + rng.integers(-2, 3)
            y0 = (r + 0.5) * s / rows - h / 2 + rng.integers(-2, 3)
            fc = jitter_colour(rng, frame, 0.08)
            gc = jitter_colour(rng, glass_rgb, 0.25)
            rect(img, x0 - 3, y0 - 3, x0 + w + 3, y0 + h + 3, fc)
            rect(img, x0, y0, x0 + w, y0 + h, gc)
            # Reflections/curtains: a lighter block inside the glass, different per window.
            if rng.random() < 0.6:
                cx0 = x0 + rng.uniform(0, 0.5) * w
                rect(
                    img,
                    cx0,
                    y0 + 2,
                    cx0 + rng.uniform(0.2, 0.5) * w,
                    y0 + h - 2,
                    jitter_colour(rng, (150, 140, 120), 0.3),
                )
            rect(img, x0 + w // 2 - 1, y0, x0 + w // 2 + 1, y0 + h, fc)
            if style == 1:
                rect(img, x0, y0 + h // 3 - 1, x0 + w, y0 + h // 3 + 1, fc)
                rect(img, x0 - 8, y0 - 3, x0 - 3, y0 + h + 3, jitter_colour(rng, (70, 90, 60), 0.3))  # shutters
                rect(img, x0 + w + 3, y0 - 3, x0 + w + 8, y0 + h + 3, jitter_colour(rng, (70, 90, 60), 0.3))
            rect(img, x0 - 6, y0 + h + 3, x0 + w + 6, y0 + h + 7, jitter_colour(rng, (200, 200, 195), 0.05))


def asphalt(rng: np.random.Generator, s: int) -> np.ndarray:
    img = luma((92, 92, 96), (spectral_noise(rng, s, 0.5, 24), 0.16), (spectral_noise(rng, s, 1.4, 2), 0.12))
    img = to_u8(img)
    blobs(img, rng, 10, 10, 45, [(75, 75, 80), (110, 108, 106)], 0.1)
    for _ in range(8):
        polyline(img, random_walk(rng, s, 40, 3.0), jitter_colour(rng, (45, 45, 48), 0.1), int(rng.integers(1, 3)))
    for _ in range(500):
        circle(img, rng.uniform(0, s), rng.uniform(0, s), 1, jitter_colour(rng, (150, 150, 150), 0.2))
    return add_grain(img, rng, 0.12)


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


def sidewalk(rng: np.random.Generator, s: int) -> np.ndarray:
    # 0.48 m slabs at 1.5 cm texels
    img = _blocks(rng, s, 32, 32, (175, 168, 158), 0.12, (120, 115, 108), 2)
    img = to_u8(img * (1 + 0.08 * spectral_noise(rng, s, 1.0, 4))[..., None])
    blobs(img, rng, 12, 4, 16, [(120, 115, 105), (200, 195, 185)], 0.1)
    return add_grain(img, rng, 0.10)


def lot(rng: np.random.Generator, s: int) -> np.ndarray:
    n1, n2 = spectral_noise(rng, s, 1.2, 2), spectral_noise(rng, s, 0.7, 8)
    img = chroma(luma((96, 110, 70), (n1, 0.18), (n2, 0.15)), spectral_noise(rng, s, 1.5, 1), (14, 4, -6))
    img = to_u8(img)
    blobs(img, rng, 60, 3, 14, [(70, 95, 45), (125, 110, 80), (140, 150, 90)], 0.15)
    return add_grain(img, rng, 0.15)


def kerb(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((190, 188, 182), (spectral_noise(rng, s, 0.8, 6), 0.10)))
    for x in range(0, s, 128):  # 1.28 m kerb stones
        rect(img, x, 0, x + 2, s, (110, 108, 104))
    blobs(img, rng, 20, 3, 10, [(150, 148, 140)], 0.1)
    return add_grain(img, rng, 0.08)


def brick(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(150, 70, 50), (125, 60, 45), (170, 95, 70), (110, 55, 45)][rng.integers(4)]
    # 32 x 8 cm bricks at 2 cm texels, running bond, light mortar
    img = to_u8(
        _blocks(rng, s, 16, 4, base, 0.12, (190, 185, 175)) * (1 + 0.06 * spectral_noise(rng, s, 1.2, 2))[..., None]
    )
    _window_grid(img, rng, 4, 3, 60, 75, (225, 222, 215), (45, 55, 70), 0)
    return add_grain(img, rng, 0.10)


def plaster(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(215, 200, 170), (190, 205, 200), (225, 190, 165), (200, 195, 210), (180, 190, 160)][rng.integers(5)]
    img = luma(base, (spectral_noise(rng, s, 1.6, 1), 0.08), (spectral_noise(rng, s, 0.9, 6), 0.04))
    img = to_u8(img)
    blobs(img, rng, 25, 6, 40, [tuple(np.asarray(base) * 0.85)], 0.05)  # stains
    for r in range(3):  # cornices between floors
        y = int((r + 0.02) * s / 3)
        rect(img, 0, y, s, y + 6, jitter_colour(rng, (235, 232, 225), 0.03))
        rect(img, 0, y + 6, s, y + 8, jitter_colour(rng, (120, 115, 110), 0.05))
    _window_grid(img, rng, 5, 3, 44, 70, (240, 238, 230), (55, 60, 75), 1)
    for _ in range(5):  # graffiti / posters near eye level (any height: v wraps)
        pts = random_walk(rng, s, 25, 4.0)
        polyline(
            img, pts, jitter_colour(rng, (rng.uniform(50, 250), rng.uniform(20, 200), rng.uniform(30, 230)), 0.2), 3
        )
    return add_grain(img, rng, 0.08)


def concrete(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(165, 165, 160), (140, 150, 160), (175, 160, 140)][rng.integers(3)]
    img = to_u8(luma(base, (spectral_noise(rng, s, 1.3, 2), 0.10), (spectral_noise(rng, s, 0.6, 16), 0.05)))
    panel = 64  # 3.2 m panels at 5 cm texels
    for y in range(0, s, panel):
        rect(img, 0, y, s, y + 1, (90, 90, 92))
    for x in range(0, s, panel):
        rect(img, x, 0, x + 1, s, (90, 90, 92))
    _window_grid(img, rng, 8, 8, 34, 38, (205, 205, 200), (50, 65, 85), 0)
    return add_grain(img, rng, 0.06)


def roof(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((85, 80, 78), (spectral_noise(rng, s, 1.0, 2), 0.15)))
    blobs(img, rng, 30, 4, 20, [(60, 60, 62), (120, 110, 100)], 0.1)
    return add_grain(img, rng, 0.10)


def car_paint(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((215, 215, 215), (spectral_noise(rng, s, 1.8, 1), 0.05)))
    for _ in range(10):  # panel gaps, door lines
        x = rng.uniform(0, s)
        rect(img, x, 0, x + 1, s, (60, 60, 60))
    for _ in range(4):
        y = rng.uniform(0, s)
        rect(img, 0, y, s, y + 2, jitter_colour(rng, (120, 120, 125), 0.2))
    blobs(img, rng, 40, 2, 8, [(140, 120, 100), (90, 90, 90), (250, 250, 250)], 0.1)  # dirt, badges
    return add_grain(img, rng, 0.05)


def glass(rng: np.random.Generator, s: int) -> np.ndarray:
    img = chroma(
        luma((55, 65, 80), (spectral_noise(rng, s, 2.0, 1), 0.25)), spectral_noise(rng, s, 1.5, 1), (-6, 2, 12)
    )
    img = to_u8(img)
    for _ in range(12):  # streaks of reflected sky and dashboard shapes
        x, y = rng.uniform(0, s, 2)
        rect(img, x, y, x + rng.uniform(10, 80), y + rng.uniform(4, 30), jitter_colour(rng, (110, 120, 135), 0.3))
    return add_grain(img, rng, 0.05)


def metal(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((120, 125, 125), (spectral_noise(rng, s, 1.0, 2, aniso=(6.0, 1.0)), 0.12)))
    for _ in range(10):  # stickers, bands, bolts
        x, y = rng.uniform(0, s, 2)
        rect(
            img,
            x,
            y,
            x + rng.uniform(8, 40),
            y + rng.uniform(8, 50),
            jitter_colour(rng, (rng.uniform(40, 240), rng.uniform(40, 240), rng.uniform(40, 240)), 0.1),
        )
    for _ in range(6):
        y = rng.uniform(0, s)
        rect(img, 0, y, s, y + rng.uniform(2, 6), jitter_colour(rng, (70, 72, 75), 0.1))
    return add_grain(img, rng, 0.06)


def foliage(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((60, 95, 45), (spectral_noise(rng, s, 1.0, 2), 0.2)))
    blobs(img, rng, 900, 3, 9, [(45, 80, 35), (85, 125, 55), (110, 140, 70), (35, 60, 30)], 0.12)
    return add_grain(img, rng, 0.12)


def bark(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((95, 75, 60), (spectral_noise(rng, s, 1.0, 2, aniso=(8.0, 1.0)), 0.25)))
    blobs(img, rng, 40, 3, 8, [(60, 45, 35), (130, 115, 95)], 0.1)
    return add_grain(img, rng, 0.1)


def sign(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((230, 230, 225), (spectral_noise(rng, s, 1.5, 1), 0.03)))
    for _ in range(30):
        x, y = rng.uniform(0, s, 2)
        c = [(200, 30, 30), (30, 60, 170), (240, 200, 30), (20, 20, 20), (20, 120, 60)][rng.integers(5)]
        if rng.random() < 0.5:
            circle(img, x, y, rng.uniform(10, 40), c, int(rng.choice([-1, 6])))
        else:
            rect(img, x, y, x + rng.uniform(20, 90), y + rng.uniform(6, 30), c)
    return add_grain(img, rng, 0.03)


def plastic(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((200, 200, 200), (spectral_noise(rng, s, 1.6, 1), 0.06)))
    for x in range(0, s, 32):
        rect(img, x, 0, x + 3, s, (140, 140, 140))
    blobs(img, rng, 30, 3, 12, [(120, 110, 90), (250, 250, 250)], 0.1)
    return add_grain(img, rng, 0.06)


def plain(base: Rgb) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A nearly featureless surface (fresh paint, new asphalt): faint large-scale shading only, a few
    grey levels of contrast, so trackers find little on it (the stress suite's low-texture stretches)."""

    def make(rng: np.random.Generator, s: int) -> np.ndarray:
        return to_u8(luma(base, (spectral_noise(rng, s, 1.6, 1), 0.03)))

    return make
