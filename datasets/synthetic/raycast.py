"""Vectorised ray casting against analytic primitives with a z-buffer.

Rays are K^-1 [u, v, 1] (unnormalised, z = 1 in the camera), so every ray parameter t *is* the z-depth
the ground truth needs. Primitives are intersected only over their screen-space bounding rectangle,
nearest first, skipping those the z-buffer already hides; everything is float32 and camera-relative
(positions are differenced in float64 first), so precision does not decay kilometres from the origin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import BOX_EDGES, Boxes, Cylinders

NEAR_M = 0.05
SKY = -1
GROUND = -2


@dataclass
class RayGrid:
    """Per-intrinsics ray directions: normalised image coordinates per column/row and per pixel."""

    width: int
    height: int
    K: np.ndarray
    xn: np.ndarray  # [W] float32, (u - cx) / fx
    yn: np.ndarray  # [H] float32, (v - cy) / fy
    xn_flat: np.ndarray  # [H*W]
    yn_flat: np.ndarray  # [H*W]
    inv_norm_flat: np.ndarray  # [H*W], 1 / |(xn, yn, 1)|
    focal: float  # geometric mean of fx, fy: metres per pixel at depth z is z / focal

    @staticmethod
    def from_K(K: np.ndarray, width: int, height: int) -> RayGrid:
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        if abs(K[0, 1]) > 0:
            raise ValueError("skewed intrinsics are not supported by the synthetic renderer")
        xn = ((np.arange(width) - cx) / fx).astype(np.float32)
        yn = ((np.arange(height) - cy) / fy).astype(np.float32)
        xf = np.broadcast_to(xn[None, :], (height, width)).ravel().copy()
        yf = np.broadcast_to(yn[:, None], (height, width)).ravel().copy()
        inv = (1.0 / np.sqrt(xf.astype(np.float64) ** 2 + yf.astype(np.float64) ** 2 + 1.0)).astype(np.float32)
        return RayGrid(width, height, np.asarray(K, np.float64), xn, yn, xf, yf, inv, float(np.sqrt(fx * fy)))


class BufferPool:
    """Full-frame scratch arrays reused from frame to frame. Fresh multi-megabyte arrays would be new
    memory maps every frame, and page-faulting them in costs as much as the arithmetic done in them."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._arrays[name] = np.empty(shape, dtype)
        return a


@dataclass
class FrameContext:
    """One frame's camera and buffers. `ds*` are the rays in scene axes (camera-relative), [H,W].
    The buffers belong to the renderer's pool: valid until the next frame starts."""

    grid: RayGrid
    R_wc: np.ndarray  # scene_from_cam rotation, float64
    cam_pos: np.ndarray  # camera centre in the scene, float64
    max_depth_m: float
    dsx: np.ndarray
    dsy: np.ndarray
    dsz: np.ndarray
    zbuf: np.ndarray  # [H,W] float32, inf = nothing hit yet
    ids: np.ndarray  # [H,W] int32: SKY, GROUND, or a primitive index
    pool: BufferPool

    @staticmethod
    def create(grid: RayGrid, scene_from_cam: np.ndarray, max_depth_m: float, pool: BufferPool) -> FrameContext:
        R = np.asarray(scene_from_cam[:3, :3], np.float64)
        xs, ys = grid.xn[None, :], grid.yn[:, None]
        shape = (grid.height, grid.width)
        d = []
        for a, name in enumerate(("dsx", "dsy", "dsz")):
            out = pool.get(name, shape, np.float32)
            np.add(xs * np.float32(R[a, 0]), ys * np.float32(R[a, 1]) + np.float32(R[a, 2]), out=out)
            d.append(out)
        zbuf = pool.get("zbuf", shape, np.float32)
        zbuf.fill(np.inf)
        ids = pool.get("ids", shape, np.int32)
        ids.fill(SKY)
        return FrameContext(
            grid,
            R,
            np.asarray(scene_from_cam[:3, 3], np.float64),
            float(max_depth_m),
            d[0],
            d[1],
            d[2],
            zbuf,
            ids,
            pool,
        )

    def to_camera(self, points_scene: np.ndarray) -> np.ndarray:
        return (points_scene - self.cam_pos) @ self.R_wc

    def project_bounds(
        self, corners_scene: np.ndarray, margin_px: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Screen rectangles [N,4] (u0, u1, v0, v1; half-open, clipped to the image) covering the convex
        hulls of [N,P,3] point sets, clipped at the near plane; their nearest z; and which are visible."""
        g = self.grid
        cam = self.to_camera(corners_scene)
        z = cam[..., 2]
        a, b = cam[:, BOX_EDGES[:, 0]], cam[:, BOX_EDGES[:, 1]]
        za, zb = a[..., 2], b[..., 2]
        crosses = (za > NEAR_M) != (zb > NEAR_M)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(crosses, (NEAR_M - za) / (zb - za), 0.0)
        clipped = a + s[..., None] * (b - a)
        pts = np.concatenate([cam, clipped], 1)
        valid = np.concatenate([z > NEAR_M, crosses], 1)
        zz = np.where(valid, np.maximum(pts[..., 2], NEAR_M), 1.0)
        K = g.K
        u = K[0, 0] * pts[..., 0] / zz + K[0, 2]
        v = K[1, 1] * pts[..., 1] / zz + K[1, 2]
        big = 1e9
        umin = np.where(valid, u, big).min(1)
        umax = np.where(valid, u, -big).max(1)
        vmin = np.where(valid, v, big).min(1)
        vmax = np.where(valid, v, -big).max(1)
        zmin = np.where(valid, pts[..., 2], np.inf).min(1)
        rects = np.stack(
            [
                np.clip(np.floor(umin) - margin_px + 1, 0, g.width),
                np.clip(np.ceil(umax) + margin_px, 0, g.width),
                np.clip(np.floor(vmin) - margin_px + 1, 0, g.height),
                np.clip(np.ceil(vmax) + margin_px, 0, g.height),
            ],
            1,
        ).astype(np.int64)
        visible = valid.any(1) & (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2]) & (zmin < self.max_depth_m)
        return rects, zmin, visible


def cast_ground(ctx: FrameContext) -> None:
    """The plane z = 0 of the scene, up to max depth."""
    h = np.float32(ctx.cam_pos[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -h / ctx.dsz
    hit = (ctx.dsz < 0) & (t < ctx.max_depth_m)
    np.copyto(ctx.zbuf, t, where=hit)
    np.copyto(ctx.ids, GROUND, where=hit)


@dataclass
class VisibleSet:
    """The primitives that survived culling, in id order: boxes 0..nb-1, then cylinders; with
    per-primitive tables laid out for `np.take` by pixel (one row per parameter)."""

    boxes: Boxes
    cylinders: Cylinders
    R_lc: np.ndarray  # [nb,3,3] float64: box-local from camera
    o_l: np.ndarray  # [nb,3] float64: camera centre in box-local coordinates
    o_cyl: np.ndarray  # [nc,3] float64: camera centre relative to the cylinder's base centre

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    def box_table(self) -> np.ndarray:
        """float32 [9, nb]: cos yaw, sin yaw, camera in box frame (3), half extents (3), +1 / -1 (shell)."""
        b = self.boxes
        return np.vstack([np.cos(b.yaw), np.sin(b.yaw), self.o_l.T, b.half.T, np.where(b.inside, -1.0, 1.0)]).astype(
            np.float32
        )

    def cylinder_table(self) -> np.ndarray:
        """float32 [5, nc]: camera relative to the base centre (3), radius, height."""
        c = self.cylinders
        return np.vstack([self.o_cyl.T, c.radius, c.z1 - c.z0]).astype(np.float32)


def _rot_z(yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.zeros(yaw.shape + (3, 3))
    R[..., 0, 0], R[..., 0, 1], R[..., 1, 0], R[..., 1, 1], R[..., 2, 2] = c, -s, s, c, 1.0
    return R


def cast_primitives(
    ctx: FrameContext, boxes: Boxes, cylinders: Cylinders, counters: dict[str, int] | None = None
) -> VisibleSet:
    """Cull, then z-buffer every visible primitive over its screen rectangle, nearest first."""
    # Shells (rooms) are seen from inside: they cover the whole view and are drawn first.
    shell = boxes.inside
    b_rects, b_zmin, b_vis = ctx.project_bounds(boxes.corners())
    b_vis |= shell
    boxes = boxes.take(np.flatnonzero(b_vis))
    b_rects, b_zmin = b_rects[b_vis], b_zmin[b_vis]
    b_rects[boxes.inside] = (0, ctx.grid.width, 0, ctx.grid.height)
    b_zmin[boxes.inside] = -np.inf
    c_rects, c_zmin, c_vis = ctx.project_bounds(cylinders.bounding_boxes().corners())
    cylinders = cylinders.take(np.flatnonzero(c_vis))
    c_rects, c_zmin = c_rects[c_vis], c_zmin[c_vis]

    Rz = _rot_z(boxes.yaw)
    R_lc = np.swapaxes(Rz, 1, 2) @ ctx.R_wc
    o_l = np.einsum("nji,nj->ni", Rz, ctx.cam_pos - boxes.center)
    o_cyl = ctx.cam_pos - np.column_stack([cylinders.center_xy, cylinders.z0])
    vis = VisibleSet(boxes, cylinders, R_lc, o_l, o_cyl)

    nb = len(boxes)
    rects = np.concatenate([b_rects, c_rects]).tolist()
    order = np.argsort(np.concatenate([b_zmin, c_zmin]), kind="stable").tolist()
    zmin = np.concatenate([b_zmin, c_zmin]).tolist()
    Rf = R_lc.astype(np.float32)
    of = o_l.astype(np.float32)
    hf = boxes.half.astype(np.float32)
    ocf = o_cyl.astype(np.float32)
    rad = cylinders.radius.astype(np.float32)
    hgt = (cylinders.z1 - cylinders.z0).astype(np.float32)
    skipped = 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for j in order:
            u0, u1, v0, v1 = rects[j]
            zb = ctx.zbuf[v0:v1, u0:u1]
            if zmin[j] >= zb.max():
                skipped += 1  # entirely behind what is already drawn
                continue
            if j < nb:
                t = _box_hits(ctx, u0, u1, v0, v1, Rf[j], of[j], hf[j], bool(boxes.inside[j]))
            else:
                k = j - nb
                t = _cylinder_hits(ctx, u0, u1, v0, v1, ocf[k], float(rad[k]), float(hgt[k]))
            closer = t < zb
            np.copyto(zb, t, where=closer)
            np.copyto(ctx.ids[v0:v1, u0:u1], j, where=closer)
    if counters is not None:
        counters["candidates"] = counters.get("candidates", 0) + len(shell) + len(c_vis)
        counters["in_view"] = counters.get("in_view", 0) + len(order)
        counters["occluded"] = counters.get("occluded", 0) + skipped
    return vis


def _box_hits(
    ctx: FrameContext, u0: int, u1: int, v0: int, v1: int, R: np.ndarray, o: np.ndarray, h: np.ndarray, inside: bool
) -> np.ndarray:
    """Slab test in the box's frame over one rectangle: entry depth (exit depth for shells), inf = miss."""
    xs = ctx.grid.xn[u0:u1]
    ys = ctx.grid.yn[v0:v1, None]
    t_near = t_far = np.empty(0)
    for a in range(3):
        d = xs * R[a, 0] + (ys * R[a, 1] + R[a, 2])
        t1 = (-h[a] - o[a]) / d
        t2 = (h[a] - o[a]) / d
        lo = np.minimum(t1, t2)
        hi = np.maximum(t1, t2, out=t1)
        if a == 0:
            t_near, t_far = lo, hi
        else:
            np.maximum(t_near, lo, out=t_near)
            np.minimum(t_far, hi, out=t_far)
    if inside:
        return np.where(t_far > NEAR_M, t_far, np.float32(np.inf))
    return np.where((t_near <= t_far) & (t_near > NEAR_M), t_near, np.float32(np.inf))


def _cylinder_hits(
    ctx: FrameContext, u0: int, u1: int, v0: int, v1: int, o: np.ndarray, r: float, height: float
) -> np.ndarray:
    """Nearest hit of a vertical cylinder (side and caps, base at local z = 0), inf = miss."""
    dx = ctx.dsx[v0:v1, u0:u1]
    dy = ctx.dsy[v0:v1, u0:u1]
    dz = ctx.dsz[v0:v1, u0:u1]
    ox, oy, oz = float(o[0]), float(o[1]), float(o[2])
    a = dx * dx + dy * dy
    b = dx * ox + dy * oy  # half of the usual b
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    z = oz + t * dz
    t = np.where((disc >= 0) & (t > NEAR_M) & (z >= 0) & (z <= height), t, np.float32(np.inf))
    # A cap is visible only from its outer side.
    for cap_z, facing in ((height, oz > height), (0.0, oz < 0.0)):
        if facing:
            tc = (cap_z - oz) / dz
            px = ox + tc * dx
            py = oy + tc * dy
            ok = (tc > NEAR_M) & (px * px + py * py <= r * r)
            t = np.minimum(t, np.where(ok, tc, np.float32(np.inf)))
    return t
