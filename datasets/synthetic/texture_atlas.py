"""The mip-mapped texture atlas all of a scene's materials are sampled from.

The atlas holds each material tile's mip chain with a wrapped border, so one `cv2.remap` per mip level
samples any mix of materials with bilinear filtering; trilinear and anisotropic filtering are built on it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .materials import MATERIALS, TILE
from .rng import rng_for
from .tile_paint import to_u8

_PAD = 2  # wrapped border texels around every mip level (bilinear reads one beyond the edge)
REMAP_COLS = 1024  # cv2.remap wants 2-D maps narrower than SHRT_MAX; flat pixel lists are folded to this


def _mip_chain(tile: np.ndarray, levels: int) -> list[np.ndarray]:
    chain = [tile]
    cur = tile.astype(np.float32)
    for _ in range(1, levels):
        cur = 0.25 * (cur[0::2, 0::2] + cur[1::2, 0::2] + cur[0::2, 1::2] + cur[1::2, 1::2])
        chain.append(to_u8(cur))
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
