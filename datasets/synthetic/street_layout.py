"""One street segment's objects: facades, background blocks, kerbs, lights, signs, trees, parked cars
and street furniture, placed in the segment's (along, lateral) coordinates.

Every object must keep its clearance from *every* nearby road centreline (not just its own), which
clears crossings and the insides of turns, and keeps the camera path free."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .materials import period_m
from .primitives import Boxes, Cylinders, PrimitiveBuilder
from .rng import rng_for

if TYPE_CHECKING:
    from .route import Unit
    from .street import StreetScene

SAMPLE_SPACING_M = 0.5  # route sampling for clearance tests; `_filtered` adds half of it to the bound
_CAR_COLOURS = [
    (235, 235, 235),
    (190, 192, 195),
    (40, 40, 45),
    (170, 30, 30),
    (30, 60, 140),
    (30, 90, 60),
    (220, 190, 60),
    (120, 120, 125),
    (90, 40, 30),
    (200, 120, 40),
]


class SegmentLayout:
    """Places one segment's objects in (along, lateral) coordinates, then drops every group that comes
    closer than its clearance to any road centreline nearby."""

    def __init__(self, scene: StreetScene, unit: Unit) -> None:
        self.s, self.u, self.cfg, self.m = scene, unit, scene.cfg, scene.mat
        self.rng = rng_for(scene.seed, "street-segment", unit.index)
        self.plain = scene.low_texture(unit.index)
        self.b = PrimitiveBuilder()
        self.box_clear: list[float] = []
        self.cyl_clear: list[float] = []

    # placement helpers -------------------------------------------------------------------------
    def _xy(self, x: float, y: float) -> tuple[float, float]:
        h = self.u.direction
        p = self.u.corner + x * h + y * np.array([-h[1], h[0]])
        return float(p[0]), float(p[1])

    def _uv(self, mat: str, v_anchor: float | None = None) -> tuple[float, float]:
        period = period_m(mat)
        return float(self.rng.uniform(0, period)), float(self.rng.uniform(0, period) if v_anchor is None else v_anchor)

    def box(
        self,
        x: float,
        y: float,
        z0: float,
        length: float,
        width: float,
        height: float,
        mats: tuple[str, str, str, str],
        clearance: float,
        tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
        uv: tuple[float, float] | None = None,
        yaw_extra: float = 0.0,
    ) -> None:
        cx, cy = self._xy(x, y)
        self.b.box(
            (cx, cy, z0 + 0.5 * height),
            (0.5 * length, 0.5 * width, 0.5 * height),
            self.u.heading + yaw_extra,
            tuple(self.m[n] for n in mats),
            tint,
            uv if uv is not None else self._uv(mats[1]),
        )
        self.box_clear.append(clearance)

    def cyl(
        self,
        x: float,
        y: float,
        z0: float,
        z1: float,
        r: float,
        mats: tuple[str, str, str],
        clearance: float,
        tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        self.b.cylinder(self._xy(x, y), z0, z1, r, tuple(self.m[n] for n in mats), tint, self._uv(mats[0]))
        self.cyl_clear.append(clearance)

    def tint(self, spread: float) -> tuple[float, float, float]:
        r, g, b = (float(v) for v in 1.0 + self.rng.uniform(-spread, spread, 3))
        return r, g, b

    # layout ---------------------------------------------------------------------------------------
    def build(self) -> tuple[Boxes, Cylinders]:
        L = self.u.seg_len
        for side in (1, -1):
            self._kerb(side, L)
            self._facades(side, L)
            self._background(side, L)
            if self.plain:  # a bare stretch: no poles, trees, cars or benches to track either
                continue
            self._lights_and_signs(side, L)
            self._trees(side, L)
            self._cars(side, L)
            self._furniture(side, L)
        return self._filtered()

    def _kerb(self, side: int, L: float) -> None:
        r = self.u.radius
        if L - 2 * r > 0.5:
            self.b.new_group()
            mat = "plain_walk" if self.plain else "kerb"
            self.box(0.5 * L, side * self.cfg.kerb_m, 0.0, L - 2 * r, 0.2, 0.12, (mat,) * 4, self.cfg.kerb_m - 0.45)

    def _facades(self, side: int, L: float) -> None:
        rng, front = self.rng, self.cfg.sidewalk_outer_m
        x = -12.0 + rng.uniform(0, 4)
        while x < L + 12.0:
            w = rng.uniform(8, 26)
            setback = rng.uniform(0, 2.5) if rng.random() < 0.7 else rng.uniform(2.5, 7)
            depth = rng.uniform(8, 16)
            height = rng.uniform(7, 16) if rng.random() < 0.7 else rng.uniform(16, 26)
            mat = ("brick", "plaster", "concrete")[int(rng.choice(3, p=[0.45, 0.4, 0.15]))]
            tint = self.tint(0.1)
            u0 = float(rng.uniform(0, period_m(mat)))
            if self.cfg.repeated_facades:
                # Drawn above all the same, so the rest of the layout matches the default town's.
                w, setback, depth, height, mat, tint, u0 = 16.0, 1.0, 12.0, 12.0, "brick", (1.0, 1.0, 1.0), 0.0
            roof = "roof"
            if self.plain:
                mat = roof = "plain_wall"
            # v = -z + anchor: the window rows sit at the same heights on every building of a material.
            anchor = period_m(mat) / 6.0 + 2.0 - 0.5 * height
            self.b.new_group()
            self.box(
                x + 0.5 * w,
                side * (front + setback + 0.5 * depth),
                0.0,
                w,
                depth,
                height,
                (mat, mat, roof, roof),
                front - 0.5,
                tint,
                (u0, anchor),
            )
            gap = rng.uniform(4, 12) if rng.random() < 0.25 else rng.uniform(0.15, 0.8)
            x += w + gap

    def _background(self, side: int, L: float) -> None:
        rng = self.rng
        x = -40.0 + rng.uniform(0, 10)
        while x < L + 40.0:
            w, depth, height = rng.uniform(15, 40), rng.uniform(10, 25), rng.uniform(18, 50)
            lateral = rng.uniform(32, 55) + 0.5 * depth
            tint, uv = self.tint(0.12), self._uv("concrete")
            if self.cfg.repeated_facades:
                tint, uv = (1.0, 1.0, 1.0), (0.0, 0.0)
            mats = ("plain_wall",) * 4 if self.plain else ("concrete", "concrete", "roof", "roof")
            self.b.new_group()
            self.box(x + 0.5 * w, side * lateral, 0.0, w, depth, height, mats, 25.0, tint, uv)
            x += w + rng.uniform(3, 25)

    def _lights_and_signs(self, side: int, L: float) -> None:
        rng, kerb = self.rng, self.cfg.kerb_m
        x = rng.uniform(0, 12)
        while x < L:
            self.b.new_group()
            top = rng.uniform(6.5, 8.0)
            y = side * (kerb + 0.75)
            self.cyl(x, y, 0.0, top, 0.11, ("metal", "metal", "metal"), kerb + 0.25)
            self.box(x, side * (kerb + 0.75 - 0.8), top - 0.2, 0.12, 1.6, 0.12, ("metal",) * 4, kerb - 1.25)
            self.box(x, side * (kerb - 0.65), top - 0.35, 0.5, 0.6, 0.15, ("plastic",) * 4, kerb - 1.25)
            x += rng.uniform(22, 34)
        for _ in range(int(rng.integers(0, 3))):
            self.b.new_group()
            x, y = rng.uniform(5, max(L - 5, 6)), side * (kerb + 0.55)
            self.cyl(x, y, 0.0, 2.9, 0.04, ("metal", "metal", "metal"), kerb)
            self.box(x, y, 2.1, 0.04, 0.7, 0.7, ("sign", "metal", "metal", "metal"), kerb - 0.25)

    def _trees(self, side: int, L: float) -> None:
        rng, kerb = self.rng, self.cfg.kerb_m
        x = rng.uniform(0, 10)
        while x < L:
            if rng.random() < 0.5:
                self.b.new_group()
                y = side * (kerb + rng.uniform(1.55, 2.15))
                trunk = rng.uniform(2.4, 3.2)
                self.cyl(x, y, 0.0, trunk, rng.uniform(0.14, 0.22), ("bark", "bark", "bark"), kerb + 0.75)
                r = rng.uniform(1.2, 1.9)
                self.cyl(
                    x, y, trunk - 0.3, trunk + rng.uniform(2.5, 4.0), r, ("foliage",) * 3, kerb - 0.85, self.tint(0.12)
                )
            x += rng.uniform(10, 20)

    def _cars(self, side: int, L: float) -> None:
        rng, r = self.rng, self.u.radius
        lateral = self.cfg.edge_line_m + 0.5 * self.cfg.parking_width_m
        x = r + 4.0 + rng.uniform(0, 3)
        while x < L - r - 4.0:
            if rng.random() < 0.45:
                self.b.new_group()
                length, width = rng.uniform(3.9, 4.7), rng.uniform(1.7, 1.85)
                y = side * (lateral + rng.uniform(-0.05, 0.1))
                top = rng.uniform(0.95, 1.1)
                colour = np.asarray(_CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))], np.float64) / 215.0
                tint = (float(colour[0]), float(colour[1]), float(colour[2]))
                yaw = rng.uniform(-0.03, 0.03)
                clear = self.cfg.edge_line_m - 0.45  # the nearest edge stands >= 5.2 m out, yaw included
                self.box(x, y, 0.32, length, width, top - 0.32, ("car_paint",) * 4, clear, tint, yaw_extra=yaw)
                cab = 0.55 * length
                self.box(
                    x - 0.15 + rng.uniform(-0.2, 0.2),
                    y,
                    top,
                    cab,
                    width - 0.16,
                    rng.uniform(0.4, 0.55),
                    ("glass", "glass", "car_paint", "car_paint"),
                    clear,
                    yaw_extra=yaw,
                )
                self.box(
                    x, y, 0.1, length - 0.6, width - 0.2, 0.22, ("roof",) * 4, clear, (0.5, 0.5, 0.5), yaw_extra=yaw
                )
            x += 6.3

    def _furniture(self, side: int, L: float) -> None:
        rng, kerb, outer = self.rng, self.cfg.kerb_m, self.cfg.sidewalk_outer_m
        for _ in range(int(rng.poisson(L / 12.0))):
            self.b.new_group()
            x = rng.uniform(0, L)
            kind = int(rng.choice(5, p=[0.3, 0.2, 0.2, 0.2, 0.1]))
            # (along, lateral, height, materials) of each kind
            dims, mats = [
                ((0.6, 0.6, 1.1), ("plastic",) * 4),
                ((1.8, 0.5, 0.45), ("bark", "bark", "bark", "bark")),
                ((0.8, 0.45, 1.3), ("metal", "metal", "sign", "metal")),
                ((1.0, 1.0, 0.6), ("concrete",) * 4),
                ((3.0, 1.4, 2.4), ("glass", "metal", "metal", "metal")),
            ][kind]
            half_w = 0.5 * dims[1]
            lo, hi = kerb + 0.35 + half_w, max(outer - 0.2 - half_w, kerb + 0.35 + half_w)
            y = side * rng.uniform(lo, hi)
            self.box(x, y, 0.0, dims[0], dims[1], dims[2], mats, kerb + 0.05, self.tint(0.2))
            if kind == 3:  # planter: a shrub on top
                self.cyl(x, y, 0.6, 0.6 + rng.uniform(0.4, 0.9), 0.45, ("foliage",) * 3, kerb + 0.05, self.tint(0.1))

    # clearance ---------------------------------------------------------------------------------------
    def _filtered(self) -> tuple[Boxes, Cylinders]:
        boxes, cyls = self.b.boxes(), self.b.cylinders()
        pts = self.s.route_points_near(self.u, 110.0)
        margin = 0.5 * SAMPLE_SPACING_M  # sampled distance overestimates the true one by at most this
        box_ok = np.ones(len(boxes), bool)
        for i0 in range(0, len(boxes), 64):
            sl = slice(i0, i0 + 64)
            c, s = np.cos(boxes.yaw[sl])[:, None], np.sin(boxes.yaw[sl])[:, None]
            dx = pts[None, :, 0] - boxes.center[sl, None, 0]
            dy = pts[None, :, 1] - boxes.center[sl, None, 1]
            qx = np.maximum(np.abs(c * dx + s * dy) - boxes.half[sl, None, 0], 0)
            qy = np.maximum(np.abs(-s * dx + c * dy) - boxes.half[sl, None, 1], 0)
            box_ok[sl] = np.sqrt(qx * qx + qy * qy).min(1) >= np.asarray(self.box_clear[sl]) + margin
        cyl_ok = np.ones(len(cyls), bool)
        if len(cyls):
            d = np.sqrt(((pts[None] - cyls.center_xy[:, None]) ** 2).sum(-1)).min(1) - cyls.radius
            cyl_ok = d >= np.asarray(self.cyl_clear) + margin
        bad = set(np.asarray(self.b.box_group)[~box_ok].tolist()) | set(np.asarray(self.b.cyl_group)[~cyl_ok].tolist())
        keep_b = np.array([g not in bad for g in self.b.box_group], bool)
        keep_c = np.array([g not in bad for g in self.b.cyl_group], bool)
        return boxes.take(np.flatnonzero(keep_b)), cyls.take(np.flatnonzero(keep_c))
