"""The street's ground: road, sidewalk or lot by the distance to the nearest centreline, with lane
markings box-filtered over each pixel's footprint."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .materials import period_m
from .primitives import Boxes
from .raycast import FrameContext
from .rng import hash_uniform
from .street_config import STREET_MATERIALS, StreetConfig
from .surface import Lighting, Surface

if TYPE_CHECKING:
    from .route import Unit
    from .street import StreetScene

_MIN_COS = 1.0 / 32.0


class StreetGround:
    """Ground-plane shader: road, sidewalk or lot by the distance to the nearest centreline piece
    (straight parts and arcs of the units near the camera), with box-filtered lane markings."""

    def __init__(self, scene: StreetScene, units: list[Unit]) -> None:
        self.scene = scene
        self.units = units

    def prepare(self, ctx: FrameContext, lighting: Lighting) -> Callable[[np.ndarray], Surface]:
        cfg, sc = self.scene.cfg, self.scene
        H, W = ctx.grid.height, ctx.grid.width
        zb = ctx.zbuf
        pool, f32 = ctx.pool, np.float32
        gx, gy = pool.get("ground_x", (H, W), f32), pool.get("ground_y", (H, W), f32)
        with np.errstate(invalid="ignore", over="ignore"):
            np.multiply(
                ctx.dsx, zb, out=gx
            )  # ground points relative to the camera (scene axes); garbage off the ground
            np.multiply(ctx.dsy, zb, out=gy)
        best = pool.get("ground_dist", (H, W), f32)
        best.fill(np.inf)
        lat = pool.get("ground_lat", (H, W), f32)
        lat.fill(0.0)
        along = pool.get("ground_along", (H, W), f32)
        along.fill(-1.0)
        slot = pool.get("ground_slot", (H, W), np.int32)
        slot.fill(len(self.units) * 2)  # "no piece" -> the lot row of the tables
        band = cfg.sidewalk_outer_m

        # Pieces as flat boxes on z = 0 to get their screen rectangles.
        centers, halves, yaws = [], [], []
        for u in self.units:
            h = u.direction
            mid = u.straight_start + 0.5 * u.straight_len * h
            centers.append((mid[0], mid[1], 0.0))
            halves.append((0.5 * max(u.straight_len, 0.0), band, 0.0))
            yaws.append(u.heading)
            e0 = -u.turn * np.array([-h[1], h[0]])
            R = u.radius + band
            c = u.arc_center + 0.5 * R * (e0 + h)
            centers.append((c[0], c[1], 0.0))
            halves.append((0.5 * R, 0.5 * R, 0.0))
            yaws.append(math.atan2(e0[1], e0[0]))
        piece_boxes = Boxes(
            np.array(centers),
            np.array(halves),
            np.array(yaws),
            np.zeros((len(centers), 4), np.int32),
            np.ones((len(centers), 3), np.float32),
            np.zeros((len(centers), 2), np.float32),
            np.zeros(len(centers), bool),
        )
        rects, _, visible = ctx.project_bounds(piece_boxes.corners())
        cam = ctx.cam_pos
        with np.errstate(invalid="ignore"):
            for p in np.flatnonzero(visible).tolist():
                u = self.units[p // 2]
                u0, u1, v0, v1 = rects[p].tolist()
                px, py = gx[v0:v1, u0:u1], gy[v0:v1, u0:u1]
                h = u.direction
                if p % 2 == 0:
                    o = u.straight_start - cam[:2]
                    rx, ry = px - np.float32(o[0]), py - np.float32(o[1])
                    a = rx * np.float32(h[0]) + ry * np.float32(h[1])
                    lt = ry * np.float32(h[0]) - rx * np.float32(h[1])
                    d = np.where((a >= 0) & (a <= u.straight_len), np.abs(lt), np.float32(np.inf))
                else:
                    o = u.arc_center - cam[:2]
                    rx, ry = px - np.float32(o[0]), py - np.float32(o[1])
                    e0 = -u.turn * np.array([-h[1], h[0]])
                    a = rx * np.float32(e0[0]) + ry * np.float32(e0[1])
                    b = rx * np.float32(h[0]) + ry * np.float32(h[1])
                    lt = np.float32(u.turn) * (np.float32(u.radius) - np.sqrt(a * a + b * b))
                    d = np.where((a >= 0) & (b >= 0), np.abs(lt), np.float32(np.inf))
                    a = np.full_like(d, -1.0)  # no dashes on arcs
                closer = d < best[v0:v1, u0:u1]
                np.copyto(best[v0:v1, u0:u1], d, where=closer)
                np.copyto(lat[v0:v1, u0:u1], lt, where=closer)
                np.copyto(along[v0:v1, u0:u1], a, where=closer)
                np.copyto(slot[v0:v1, u0:u1], p, where=closer)

        # Material per (piece, kind: road, sidewalk, lot); low-texture stretches pave theirs plainly.
        n_slots = 2 * len(self.units) + 1
        usual = [sc.mat["asphalt"], sc.mat["sidewalk"], sc.mat["lot"]]
        plain = [sc.mat["plain_road"], sc.mat["plain_walk"], sc.mat["lot"]]
        mats = np.array(
            [plain if sc.low_texture(u.index) else usual for u in self.units for _ in (0, 1)] + [usual], np.int32
        )
        periods = np.vectorize(lambda m: period_m(STREET_MATERIALS[m]))(mats)
        # Per-piece texture offsets, folded with the camera position modulo each material's period in
        # float64, so the float32 coordinates stay small however far the drive goes.
        off = np.zeros((n_slots, 2))
        for i, u in enumerate(self.units):
            key = sc.route.canonical(u.index)
            for j in (0, 1):
                off[2 * i + j] = 97.0 * hash_uniform(
                    sc.seed, "ground-uv", np.array([4 * key + 2 * j, 4 * key + 2 * j + 1])
                )
        base = np.zeros((2, n_slots, 3), np.float32)
        for m in range(3):
            o = off if m < 2 else np.zeros_like(off)  # the lot is continuous across pieces
            base[:, :, m] = np.mod(cam[None, :2] + o, periods[:, m, None]).T
        base_u, base_v = base[0].ravel(), base[1].ravel()
        head_x = np.array([u.direction[0] for u in self.units for _ in (0, 1)] + [1.0], np.float32)
        head_y = np.array([u.direction[1] for u in self.units for _ in (0, 1)] + [0.0], np.float32)
        frame = _GroundFrame(
            ctx,
            cfg,
            best.ravel(),
            lat.ravel(),
            along.ravel(),
            slot.ravel(),
            gx.ravel(),
            gy.ravel(),
            mats.ravel(),
            base_u,
            base_v,
            head_x,
            head_y,
            lighting.ambient + lighting.diffuse * max(float(lighting.sun()[2]), 0.0),
        )
        return frame.surface


@dataclass
class _GroundFrame:
    """Per-frame ground classification (full-frame buffers), shaded chunk by chunk."""

    ctx: FrameContext
    cfg: StreetConfig
    best: np.ndarray
    lat: np.ndarray
    along: np.ndarray
    slot: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    mats: np.ndarray  # [slot * 3 + kind] material ids
    base_u: np.ndarray
    base_v: np.ndarray
    head_x: np.ndarray
    head_y: np.ndarray
    light: float

    def surface(self, idx: np.ndarray) -> Surface:
        cfg, ctx, take = self.cfg, self.ctx, np.take
        d = take(self.best, idx)
        lt = take(self.lat, idx)
        al = take(self.along, idx)
        sl = take(self.slot, idx)
        kind = np.where(d < cfg.kerb_m, 0, np.where(d < cfg.sidewalk_outer_m, 1, 2))
        tbl = sl * 3 + kind
        u_m = take(self.gx, idx) + take(self.base_u, tbl)
        v_m = take(self.gy, idx) + take(self.base_v, tbl)

        t = take(ctx.zbuf.ravel(), idx)
        inv_n = take(ctx.grid.inv_norm_flat, idx)
        dx, dy, dz = take(ctx.dsx.ravel(), idx), take(ctx.dsy.ravel(), idx), take(ctx.dsz.ravel(), idx)
        fmin = t * np.float32(1.0 / ctx.grid.focal)
        fmaj = fmin / np.maximum(np.abs(dz) * inv_n, _MIN_COS)
        hn = np.sqrt(dx * dx + dy * dy) + np.float32(1e-12)
        du, dv = dx / hn, dy / hn

        # Markings, box-filtered over the footprint across and along the road (straight pieces only).
        ca = np.abs(du * take(self.head_x, sl) + dv * take(self.head_y, sl))
        sa = np.sqrt(np.maximum(1 - ca * ca, 0))
        fp_across = np.sqrt((fmin * ca) ** 2 + (fmaj * sa) ** 2)
        fp_along = np.sqrt((fmin * sa) ** 2 + (fmaj * ca) ** 2)
        alat = np.abs(lt)
        lane = _stripe(alat - np.float32(cfg.lane_line_m), 0.12, fp_across) * _dashes(al, fp_along, 3.0, 9.0)
        edge = _stripe(alat - np.float32(cfg.edge_line_m), 0.15, fp_across)
        mark = np.maximum(lane, edge) * ((sl % 2 == 0) & (kind == 0))
        lit = np.full(idx.shape, self.light, np.float32)
        return Surface(
            idx, take(self.mats, tbl), u_m, v_m, fmin, fmaj, du, dv, lit, tint=None, mark=mark.astype(np.float32)
        )


def _stripe(d: np.ndarray, width: float, fp: np.ndarray) -> np.ndarray:
    """Fraction of a footprint [d - fp/2, d + fp/2] covered by a stripe [-width/2, width/2]."""
    lo = np.maximum(d - 0.5 * fp, -0.5 * width)
    hi = np.minimum(d + 0.5 * fp, 0.5 * width)
    return np.maximum(hi - lo, 0) / fp


def _dashes(s: np.ndarray, fp: np.ndarray, on: float, period: float) -> np.ndarray:
    """Fraction of a footprint covered by dashes [k*period, k*period + on]; s < 0 means none."""

    def cumulative(x: np.ndarray) -> np.ndarray:
        n = np.floor(x / period)
        return n * on + np.minimum(x - n * period, on)

    cov = (cumulative(s + 0.5 * fp) - cumulative(s - 0.5 * fp)) / fp
    return np.where(s >= 0, cov, 0)
