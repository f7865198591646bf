"""Per-pixel surface attributes of the z-buffer's winners: material, texture coordinates (metres, in the
primitive's own frame, so they are the same from every view), the pixel footprint on the surface for
mip selection, and the view-independent Lambert light term.

Per-pixel data is planar (one flat array per quantity) and gathered with `np.take`: numpy is fast on
long contiguous runs and slow on [n,3] broadcasting and fancy indexing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raycast import FrameContext, VisibleSet

_MIN_COS = np.float32(1.0 / 32.0)  # caps the footprint's anisotropy at grazing angles
# Per-face texture shifts (faces -x, +x, -y, +y, -z, +z) so a box's faces do not repeat each other;
# none in v on the walls, so window rows stay at the same heights all around a building.
_FACE_SHIFT_U = np.array([0.0, 3.71, 7.93, 1.37, 5.29, 9.11], np.float32)
_FACE_SHIFT_V = np.array([0.0, 0.0, 0.0, 0.0, 2.83, 6.47], np.float32)


@dataclass
class Surface:
    """n pixels (flat indices `idx`) and what the texturing stage needs about each."""

    idx: np.ndarray
    material: np.ndarray  # int32 atlas material ids
    u_m: np.ndarray  # float32, texture coordinates in metres
    v_m: np.ndarray
    fp_minor_m: np.ndarray  # pixel footprint on the surface, shortest and longest extent (metres)
    fp_major_m: np.ndarray
    major_du: np.ndarray  # unit direction of the longest extent in (u, v)
    major_dv: np.ndarray
    light: np.ndarray  # float32 ambient + diffuse factor
    tint: np.ndarray | None = None  # [3,n] float32 (planar) albedo multipliers
    mark: np.ndarray | None = None  # [n] float32 coverage of painted markings (ground)

    def __len__(self) -> int:
        return int(self.idx.shape[0])


@dataclass(frozen=True)
class Lighting:
    """A fixed directional light (scene frame, pointing towards the light) and ambient: Lambertian
    only, so shading never depends on the viewpoint."""

    sun_dir: tuple[float, float, float]
    ambient: float
    diffuse: float

    def sun(self) -> np.ndarray:
        s = np.asarray(self.sun_dir, np.float64)
        return s / np.linalg.norm(s)


def _unit2(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.sqrt(a * a + b * b) + np.float32(1e-12)
    return a / n, b / n


def _pick(fx: np.ndarray, fy: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.where(fx, a, np.where(fy, b, c))


def box_surface(ctx: FrameContext, vis: VisibleSet, P: np.ndarray, idx: np.ndarray, light: Lighting) -> Surface:
    """P: vis.box_table(), computed once per frame."""
    g = ctx.grid
    take = np.take
    pid = take(ctx.ids.ravel(), idx)
    t = take(ctx.zbuf.ravel(), idx)
    cs, sn = take(P[0], pid), take(P[1], pid)
    dsx, dsy, dsz = take(ctx.dsx.ravel(), idx), take(ctx.dsy.ravel(), idx), take(ctx.dsz.ravel(), idx)
    # Ray and hit in the box frame (yaw only: rotate the scene-axes ray about z).
    d0 = cs * dsx + sn * dsy
    d1 = cs * dsy - sn * dsx
    p0 = take(P[2], pid) + t * d0
    p1 = take(P[3], pid) + t * d1
    p2 = take(P[4], pid) + t * dsz
    r0 = np.abs(p0) - take(P[5], pid)  # ~0 on the face that was hit
    r1 = np.abs(p1) - take(P[6], pid)
    r2 = np.abs(p2) - take(P[7], pid)
    fx = (r0 >= r1) & (r0 >= r2)
    fz = ~fx & (r2 > r1)
    fy = ~(fx | fz)
    positive = _pick(fx, fy, p0, p1, p2) > 0
    face = np.where(fx, 0, np.where(fy, 2, 4)) + positive
    # Face uv: x faces (y, -z), y faces (x, -z), z faces (x, y); v = -z keeps facades upright.
    u = np.where(fx, p1, p0)
    v = np.where(fz, p1, -p2)
    du, dv = _unit2(np.where(fx, d1, d0), np.where(fz, d1, -dsz))
    mats6 = vis.boxes.material[:, [0, 0, 1, 1, 3, 2]].astype(np.int32).ravel()  # per face -x +x -y +y -z +z
    mat = take(mats6, pid * 6 + face)
    uvo = vis.boxes.uv_offset.T.astype(np.float32)
    u += take(uvo[0], pid) + take(_FACE_SHIFT_U, face)
    v += take(uvo[1], pid) + take(_FACE_SHIFT_V, face)
    # Lambert: outward normal = sign * axis (inward for shells); the light turned into the box frame.
    sx, sy, sz = (np.float32(c) for c in light.sun())
    sl = _pick(fx, fy, cs * sx + sn * sy, cs * sy - sn * sx, np.full_like(cs, sz))
    sign = np.where(positive, np.float32(1), np.float32(-1)) * take(P[8], pid)
    lit = np.float32(light.ambient) + np.float32(light.diffuse) * np.maximum(sign * sl, 0)
    dn = _pick(fx, fy, d0, d1, dsz)
    cos_inc = np.maximum(np.abs(dn) * take(g.inv_norm_flat, idx), _MIN_COS)
    fp = t * np.float32(1.0 / g.focal)
    tint_tbl = vis.boxes.tint.T.astype(np.float32)
    tint = np.stack([take(tint_tbl[c], pid) for c in range(3)])
    return Surface(idx, mat, u, v, fp, fp / cos_inc, du, dv, lit, tint=tint)


def cylinder_surface(ctx: FrameContext, vis: VisibleSet, P: np.ndarray, idx: np.ndarray, light: Lighting) -> Surface:
    """P: vis.cylinder_table(), computed once per frame."""
    g = ctx.grid
    take = np.take
    k = take(ctx.ids.ravel(), idx) - vis.num_boxes
    t = take(ctx.zbuf.ravel(), idx)
    dx, dy, dz = take(ctx.dsx.ravel(), idx), take(ctx.dsy.ravel(), idx), take(ctx.dsz.ravel(), idx)
    px, py, pz = take(P[0], k) + t * dx, take(P[1], k) + t * dy, take(P[2], k) + t * dz
    r, height = take(P[3], k), take(P[4], k)
    rho = np.sqrt(px * px + py * py) + np.float32(1e-9)
    e_side = np.abs(rho - r)
    top = np.abs(pz - height) < np.minimum(e_side, np.abs(pz))
    bottom = ~top & (np.abs(pz) < e_side)
    side = ~(top | bottom)
    # Side uv: arc length around the axis and -z; caps: plane coordinates.
    u = np.where(side, np.arctan2(py, px) * r, px)
    v = np.where(side, -pz, py)
    tang = (dy * px - dx * py) / rho
    du, dv = _unit2(np.where(side, tang, dx), np.where(side, -dz, dy))
    mats3 = vis.cylinders.material.astype(np.int32).ravel()
    mat = take(mats3, k * 3 + np.where(side, 0, np.where(top, 1, 2)))
    uvo = vis.cylinders.uv_offset.T.astype(np.float32)
    u += take(uvo[0], k)
    v += take(uvo[1], k)
    sx, sy, sz = (np.float32(c) for c in light.sun())
    ndotl = np.where(side, (px * sx + py * sy) / rho, np.where(top, sz, -sz))
    ndotd = np.where(side, (px * dx + py * dy) / rho, dz)
    lit = np.float32(light.ambient) + np.float32(light.diffuse) * np.maximum(ndotl, 0)
    cos_inc = np.maximum(np.abs(ndotd) * take(g.inv_norm_flat, idx), _MIN_COS)
    fp = t * np.float32(1.0 / g.focal)
    tint_tbl = vis.cylinders.tint.T.astype(np.float32)
    tint = np.stack([take(tint_tbl[c], k) for c in range(3)])
    return Surface(idx, mat, u, v, fp, fp / cos_inc, du, dv, lit.astype(np.float32), tint=tint)
