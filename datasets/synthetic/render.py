"""Frame rendering: cast rays, gather surface attributes, texture, shade, and paint the sky.

The renderer knows primitives, the atlas and light; a scene hands it a `SceneView` (the primitives
near the camera, plus an optional ground shader for the z = 0 plane)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from .primitives import Boxes, Cylinders
from .raycast import GROUND, SKY, BufferPool, FrameContext, RayGrid, cast_ground, cast_primitives
from .surface import Lighting, Surface, box_surface, cylinder_surface
from .texture_atlas import REMAP_COLS, TextureAtlas


class GroundShader(Protocol):
    """Shades the ground plane: `prepare` does per-frame work (once), and returns a function giving
    the surface attributes of ground pixels (flat indices), called chunk by chunk."""

    def prepare(self, ctx: FrameContext, lighting: Lighting) -> Callable[[np.ndarray], Surface]: ...


@dataclass(frozen=True)
class Sky:
    """A smooth gradient by elevation (no features: it is at infinity and has no depth)."""

    horizon_rgb: tuple[float, float, float] = (205.0, 215.0, 228.0)
    zenith_rgb: tuple[float, float, float] = (95.0, 140.0, 205.0)


@dataclass
class SceneView:
    boxes: Boxes
    cylinders: Cylinders
    lighting: Lighting
    ground: GroundShader | None = None
    sky: Sky = field(default_factory=Sky)


@dataclass
class RenderResult:
    image_rgb: np.ndarray  # [H,W,3] uint8
    depth_m: np.ndarray  # [H,W] float32, z-depth, 0 = nothing hit


MARK_RGB = np.array([236.0, 236.0, 228.0], np.float32)
CHUNK = 16 * REMAP_COLS  # pixels per strip: 64 KB float32 temporaries


class Renderer:
    """Renders SceneViews for one camera size and K."""

    def __init__(
        self, atlas: TextureAtlas, K: np.ndarray, width: int, height: int, max_depth_m: float, aniso_taps: int = 2
    ) -> None:
        self.atlas = atlas
        self.grid = RayGrid.from_K(np.asarray(K, np.float64), int(width), int(height))
        self.max_depth_m = float(max_depth_m)
        self.aniso_taps = int(aniso_taps)
        self.pool = BufferPool()

    def render(
        self,
        view: SceneView,
        scene_from_cam: np.ndarray,
        timings: dict[str, float] | None = None,
        counters: dict[str, int] | None = None,
    ) -> RenderResult:
        """One frame. `timings` accumulates seconds per stage, `counters` primitive counts, when given."""
        clock = _Clock(timings)
        ctx = FrameContext.create(self.grid, scene_from_cam, self.max_depth_m, self.pool)
        if view.ground is not None:
            cast_ground(ctx)
        vis = cast_primitives(ctx, view.boxes, view.cylinders, counters)
        clock.lap("raycast")

        ids = ctx.ids.ravel()
        nb = vis.num_boxes
        groups: list[tuple[np.ndarray, Callable[[np.ndarray], Surface], str]] = []
        if view.ground is not None:
            shade_ground = view.ground.prepare(ctx, view.lighting)
            groups.append((np.flatnonzero(ids == GROUND), shade_ground, "ground"))
            clock.lap("ground")
        box_tbl, cyl_tbl = vis.box_table(), vis.cylinder_table()
        groups.append(
            (
                np.flatnonzero((ids >= 0) & (ids < nb)),
                lambda i: box_surface(ctx, vis, box_tbl, i, view.lighting),
                "surface",
            )
        )
        groups.append(
            (np.flatnonzero(ids >= nb), lambda i: cylinder_surface(ctx, vis, cyl_tbl, i, view.lighting), "surface")
        )

        H, W = self.grid.height, self.grid.width
        # RGBA pixels viewed as uint32: one 4-byte scatter per pixel instead of a slow [n,3] row scatter.
        image = ctx.pool.get("rgba", (H * W,), np.uint32)
        # Strip-mined: every per-pixel temporary is CHUNK long, so it stays in cache and comes from the
        # heap; whole-frame temporaries would be fresh mmaps, page-faulted in on every frame.
        for idx_all, attributes, stage in groups:
            for c0 in range(0, idx_all.shape[0], CHUNK):
                idx = idx_all[c0 : c0 + CHUNK]
                s = _padded(attributes(idx))
                clock.lap(stage)
                albedo = self.atlas.sample(
                    s.material, s.u_m, s.v_m, s.fp_minor_m, s.fp_major_m, s.major_du, s.major_dv, self.aniso_taps
                )
                clock.lap("texture")
                rgba = _shade(albedo, s)
                image[idx] = rgba.reshape(-1).view(np.uint32)[: idx.shape[0]]
                clock.lap("shade")
        sky_idx = np.flatnonzero(ids == SKY)
        if sky_idx.size:
            sky = _sky_colours(view.sky, np.take(ctx.dsz.ravel(), sky_idx) * np.take(self.grid.inv_norm_flat, sky_idx))
            image[sky_idx] = sky.view(np.uint32).ravel()
        rgb = cv2.cvtColor(image.view(np.uint8).reshape(H, W, 4), cv2.COLOR_RGBA2RGB)
        depth = np.where(ctx.ids == SKY, np.float32(0), ctx.zbuf)
        clock.lap("shade")
        return RenderResult(rgb, depth)


def _shade(albedo: np.ndarray, s: Surface) -> np.ndarray:
    """albedo [rows,cols,4] float32 -> shaded RGBA uint8: albedo * tint * light, then painted markings
    (lit like the ground they are on) blended over by their coverage."""
    shape = albedo.shape[:2]
    light = s.light
    add = None
    if s.mark is not None:
        add = [(c * light * s.mark).reshape(shape) for c in MARK_RGB]
        light = light * (1.0 - s.mark)
    gains = [(light * s.tint[c] if s.tint is not None else light).reshape(shape) for c in range(3)]
    zero = np.zeros(shape, np.float32)
    albedo *= cv2.merge(gains + [zero])
    if add is not None:
        albedo += cv2.merge(add + [zero])
    np.clip(albedo, 0, 255, out=albedo)
    albedo += 0.5
    return albedo.astype(np.uint8)


def _sky_colours(sky: Sky, sin_elevation: np.ndarray) -> np.ndarray:
    """RGBA uint8 [n,4]."""
    w = np.clip(sin_elevation * 2.0, 0.0, 1.0) ** 0.8
    out = np.zeros((w.shape[0], 4), np.uint8)
    for c in range(3):
        hz, zn = sky.horizon_rgb[c], sky.zenith_rgb[c]
        out[:, c] = (hz + (zn - hz) * w + 0.5).astype(np.uint8)
    return out


def _padded(s: Surface) -> Surface:
    """Pad to a multiple of REMAP_COLS pixels (the sampler folds pixel lists into 2-D maps)."""
    pad = -len(s) % REMAP_COLS
    if pad == 0:
        return s

    def ext(a: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate([a, np.full(pad, fill, a.dtype)])

    tint = None if s.tint is None else np.concatenate([s.tint, np.ones((3, pad), np.float32)], axis=1)
    return Surface(
        s.idx,
        ext(s.material, 0),
        ext(s.u_m, 0.0),
        ext(s.v_m, 0.0),
        ext(s.fp_minor_m, 1e-3),
        ext(s.fp_major_m, 1e-3),
        ext(s.major_du, 1.0),
        ext(s.major_dv, 0.0),
        ext(s.light, 0.0),
        tint,
        None if s.mark is None else ext(s.mark, 0.0),
    )


class _Clock:
    """Accumulates wall time per stage into `timings` (seconds), when given."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
        self.t = now
