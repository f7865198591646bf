"""The room scene's materials: wallpaper, floorboards, ceiling tiles, furniture wood, fabric, book
spines, painted surfaces and pictures.

Each maker paints one tile (`rng`, `s` texels a side) in texel units; `materials.MATERIALS` gives each its
size in metres (millimetres per texel: they are seen from a metre or two)."""

from __future__ import annotations

import numpy as np

from .tile_paint import (
    add_grain,
    blobs,
    circle,
    ellipse,
    jitter_colour,
    luma,
    polyline,
    random_walk,
    rect,
    spectral_noise,
    to_u8,
)


def wallpaper(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(225, 215, 190), (200, 215, 210), (230, 205, 195), (210, 210, 225)][rng.integers(4)]
    img = to_u8(luma(base, (spectral_noise(rng, s, 1.5, 1), 0.05), (spectral_noise(rng, s, 0.8, 8), 0.04)))
    motif = tuple(np.asarray(base) * rng.uniform(0.6, 0.75))
    step = 64  # 25.6 cm motif grid at 4 mm texels
    for y in range(0, s, step):
        for x in range(0, s, step):
            ox = step // 2 if (y // step) % 2 else 0
            cx, cy = float(x + ox + rng.integers(-6, 7)), float(y + rng.integers(-6, 7))
            c = jitter_colour(rng, motif, 0.08)
            k = rng.integers(3)
            if k == 0:
                ellipse(img, cx, cy, rng.uniform(6, 14), rng.uniform(10, 20), rng.uniform(0, 180), c)
            elif k == 1:
                pts = np.array([[cx, cy - 14], [cx + 10, cy], [cx, cy + 14], [cx - 10, cy]], np.float64)
                polyline(img, np.vstack([pts, pts[:1]]), c, 3)
            else:
                rect(img, cx - 8, cy - 8, cx + 8, cy + 8, c, 2)
    blobs(img, rng, 30, 6, 30, [tuple(np.asarray(base) * 0.9)], 0.03)  # faint stains break the repeat
    return add_grain(img, rng, 0.05)


def floor_wood(rng: np.random.Generator, s: int) -> np.ndarray:
    grain = spectral_noise(rng, s, 1.0, 2, aniso=(10.0, 1.0))
    img = to_u8(luma((165, 120, 80), (grain, 0.12)))
    pw = 32  # 12.8 cm planks at 4 mm texels
    for y in range(0, s, pw):
        x = rng.uniform(0, s)
        while x < 2 * s:
            length = rng.uniform(150, 300)
            c = jitter_colour(rng, (165, 120, 80), 0.15)
            rect(img, x + 1, y + 1, x + length - 1, y + pw - 2, c)
            rect(img, x, y, x + 1, y + pw, (70, 50, 35))
            x += length
        rect(img, 0, y, s, y + 1, (80, 58, 40))
    return to_u8(img.astype(np.float32) * (1.0 + 0.10 * grain[..., None]))


def ceiling(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(luma((232, 232, 226), (spectral_noise(rng, s, 0.6, 16), 0.05)))
    t = 128  # 64 cm tiles at 5 mm texels
    for y in range(0, s, t):
        rect(img, 0, y, s, y + 2, (150, 150, 145))
    for x in range(0, s, t):
        rect(img, x, 0, x + 2, s, (150, 150, 145))
    for _ in range(600):
        circle(img, rng.uniform(0, s), rng.uniform(0, s), 1, jitter_colour(rng, (185, 185, 180), 0.05))
    return add_grain(img, rng, 0.04)


def wood(rng: np.random.Generator, s: int) -> np.ndarray:
    base = [(150, 100, 60), (110, 75, 50), (185, 150, 105)][rng.integers(3)]
    grain = spectral_noise(rng, s, 1.0, 2, aniso=(12.0, 1.0))
    img = to_u8(luma(base, (grain, 0.18), (spectral_noise(rng, s, 0.7, 12), 0.05)))
    for _ in range(12):  # knots
        ellipse(
            img,
            rng.uniform(0, s),
            rng.uniform(0, s),
            rng.uniform(6, 16),
            rng.uniform(3, 6),
            rng.uniform(-10, 10),
            jitter_colour(rng, tuple(np.asarray(base) * 0.6), 0.1),
        )
    for y in range(0, s, 128):  # board edges
        rect(img, 0, y, s, y + 2, jitter_colour(rng, tuple(np.asarray(base) * 0.5), 0.05))
    return add_grain(img, rng, 0.05)


def fabric(rng: np.random.Generator, s: int) -> np.ndarray:
    c1 = (rng.uniform(60, 200), rng.uniform(60, 200), rng.uniform(60, 200))
    img = to_u8(luma(c1, (spectral_noise(rng, s, 0.3, 64), 0.08)))
    step = 64
    for i in range(0, s, step):  # plaid
        w = int(rng.integers(4, 14))
        c = jitter_colour(rng, tuple(np.asarray(c1) * rng.uniform(0.5, 1.3)), 0.1)
        rect(img, i, 0, i + w, s, c)
        rect(img, 0, i + 20, s, i + 20 + w, c)
    return add_grain(img, rng, 0.06)


def books(rng: np.random.Generator, s: int) -> np.ndarray:
    img = np.full((s, s, 3), (70, 50, 35), np.uint8)
    shelf = 128  # 38 cm shelves at 3 mm texels
    for y in range(0, s, shelf):
        rect(img, 0, y, s, y + 8, (150, 110, 70))
        x = 0.0
        while x < s:
            w = rng.uniform(6, 18)
            h = rng.uniform(0.55, 0.9) * (shelf - 10)
            c = jitter_colour(rng, (rng.uniform(30, 220), rng.uniform(30, 220), rng.uniform(30, 220)), 0.1)
            rect(img, x, y + shelf - h, x + w - 1, y + shelf - 1, c)
            if rng.random() < 0.5:
                rect(img, x + 1, y + shelf - h * 0.7, x + w - 2, y + shelf - h * 0.6, (230, 220, 180))
            x += w
    return add_grain(img, rng, 0.05)


def painted(rng: np.random.Generator, s: int) -> np.ndarray:
    c1 = (rng.uniform(80, 230), rng.uniform(80, 230), rng.uniform(80, 230))
    img = to_u8(luma(c1, (spectral_noise(rng, s, 1.3, 1), 0.1)))
    for y in range(0, s, 64):
        rect(img, 0, y, s, y + int(rng.integers(3, 12)), jitter_colour(rng, tuple(np.asarray(c1) * 0.6), 0.1))
    blobs(img, rng, 25, 4, 16, [tuple(np.asarray(c1) * 1.2), (40, 40, 40)], 0.1)
    return add_grain(img, rng, 0.05)


def painting(rng: np.random.Generator, s: int) -> np.ndarray:
    img = to_u8(
        luma(
            (rng.uniform(100, 240), rng.uniform(100, 240), rng.uniform(100, 240)), (spectral_noise(rng, s, 1.4, 1), 0.2)
        )
    )
    blobs(
        img,
        rng,
        80,
        8,
        50,
        [(200, 40, 40), (40, 80, 180), (230, 200, 40), (30, 30, 30), (240, 240, 240), (40, 150, 80)],
        0.2,
    )
    for _ in range(15):
        polyline(img, random_walk(rng, s, 15, 10.0), jitter_colour(rng, (20, 20, 20), 0.3), int(rng.integers(2, 6)))
    return add_grain(img, rng, 0.05)
