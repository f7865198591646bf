"""The room's furniture, placed by rejection sampling: every footprint keeps `clearance_m` (horizontally,
which bounds the 3-D distance too) from the whole camera path, stays inside the room and does not
overlap other furniture."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .materials import period_m
from .primitives import Boxes, Cylinders, PrimitiveBuilder

if TYPE_CHECKING:
    from .room import RoomScene

_CELL_M = 0.05  # occupancy grid resolution


class RoomLayout:
    def __init__(self, scene: RoomScene, rng: np.random.Generator) -> None:
        self.s, self.rng, self.m = scene, rng, scene.mat
        self.cfg = scene.cfg
        self.b = PrimitiveBuilder()
        sx, sy, _ = self.cfg.size_m
        self.hx, self.hy = 0.5 * sx, 0.5 * sy
        self.occ_h = np.zeros((int(round(sy / _CELL_M)), int(round(sx / _CELL_M))), np.float32)  # top height per cell
        self.occupied = np.zeros(self.occ_h.shape, bool)
        self.path = scene.path_xyz(np.linspace(0, 2 * math.pi, 1440))[:, :2]
        yc, xc = np.mgrid[: self.occ_h.shape[0], : self.occ_h.shape[1]]
        self.cell_xy = np.stack([(xc + 0.5) * _CELL_M - self.hx, (yc + 0.5) * _CELL_M - self.hy], -1)

    # geometry helpers ---------------------------------------------------------------------------------
    def _cells(self, cx: float, cy: float, hx: float, hy: float, yaw: float) -> np.ndarray:
        c, s = math.cos(yaw), math.sin(yaw)
        d = self.cell_xy - (cx, cy)
        qx, qy = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]
        return (np.abs(qx) <= hx) & (np.abs(qy) <= hy)

    def _fits(self, cx: float, cy: float, hx: float, hy: float, yaw: float, need_clear: bool = True) -> bool:
        c, s = math.cos(yaw), math.sin(yaw)
        corners = np.array([(cx + c * ax - s * ay, cy + s * ax + c * ay) for ax in (-hx, hx) for ay in (-hy, hy)])
        if np.any(np.abs(corners[:, 0]) > self.hx - 0.02) or np.any(np.abs(corners[:, 1]) > self.hy - 0.02):
            return False
        if need_clear:
            d = self.path - (cx, cy)
            qx = np.maximum(np.abs(c * d[:, 0] + s * d[:, 1]) - hx, 0)
            qy = np.maximum(np.abs(-s * d[:, 0] + c * d[:, 1]) - hy, 0)
            # The path is sampled every ~1 cm: subtract that from the bound.
            if np.sqrt(qx * qx + qy * qy).min() < self.cfg.clearance_m + 0.01:
                return False
        return not np.any(self.occupied & self._cells(cx, cy, hx, hy, yaw))

    def _occupy(self, cx: float, cy: float, hx: float, hy: float, yaw: float, top: float) -> None:
        cells = self._cells(cx, cy, hx, hy, yaw)
        self.occupied |= cells
        np.maximum(self.occ_h, np.where(cells, top, 0), out=self.occ_h)

    def _wall_pose(self, wall: int, along: float, depth: float, gap: float) -> tuple[float, float, float, float]:
        """Centre and yaw of an item of given depth against a wall; returns (cx, cy, yaw, wall_len)."""
        inset = gap + 0.5 * depth
        if wall == 0:
            return along, -self.hy + inset, 0.0, 2 * self.hx
        if wall == 1:
            return along, self.hy - inset, math.pi, 2 * self.hx
        if wall == 2:
            return -self.hx + inset, along, -0.5 * math.pi, 2 * self.hy
        return self.hx - inset, along, 0.5 * math.pi, 2 * self.hy

    def _part(
        self,
        cx: float,
        cy: float,
        yaw: float,
        lx: float,
        ly: float,
        z0: float,
        sx: float,
        sy: float,
        sz: float,
        mats: tuple[str, str, str, str],
        tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        c, s = math.cos(yaw), math.sin(yaw)
        period = period_m(mats[1])
        self.b.box(
            (cx + c * lx - s * ly, cy + s * lx + c * ly, z0 + 0.5 * sz),
            (0.5 * sx, 0.5 * sy, 0.5 * sz),
            yaw,
            tuple(self.m[n] for n in mats),
            tint,
            (float(self.rng.uniform(0, period)), float(self.rng.uniform(0, period))),
        )

    def _cyl(
        self,
        x: float,
        y: float,
        z0: float,
        z1: float,
        r: float,
        mats: tuple[str, str, str],
        tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        period = period_m(mats[0])
        self.b.cylinder(
            (x, y),
            z0,
            z1,
            r,
            tuple(self.m[n] for n in mats),
            tint,
            (float(self.rng.uniform(0, period)), float(self.rng.uniform(0, period))),
        )

    def _tint(self, spread: float) -> tuple[float, float, float]:
        r, g, b = (float(v) for v in 1.0 + self.rng.uniform(-spread, spread, 3))
        return r, g, b

    def _try_wall(
        self, width: float, depth: float, height: float, tries: int = 40
    ) -> tuple[float, float, float] | None:
        for _ in range(tries):
            wall = int(self.rng.integers(4))
            half_len = self.hx if wall < 2 else self.hy
            along = self.rng.uniform(-half_len + 0.5 * width + 0.05, half_len - 0.5 * width - 0.05)
            cx, cy, yaw, _ = self._wall_pose(wall, along, depth, self.rng.uniform(0.02, 0.08))
            if self._fits(cx, cy, 0.5 * width, 0.5 * depth, yaw):
                self._occupy(cx, cy, 0.5 * width, 0.5 * depth, yaw, height)
                return cx, cy, yaw
        return None

    def _try_free(
        self, hx: float, hy: float, height: float, region: float, tries: int = 80
    ) -> tuple[float, float, float] | None:
        for _ in range(tries):
            cx = self.rng.uniform(-region * self.hx, region * self.hx)
            cy = self.rng.uniform(-region * self.hy, region * self.hy)
            yaw = float(self.rng.choice([0.0, 0.5 * math.pi])) + self.rng.uniform(-0.3, 0.3)
            if self._fits(cx, cy, hx, hy, yaw):
                self._occupy(cx, cy, hx, hy, yaw, height)
                return cx, cy, yaw
        return None

    # items ------------------------------------------------------------------------------------------------
    def build(self) -> tuple[Boxes, Cylinders]:
        sx, sy, sz = self.cfg.size_m
        self.b.box(
            (0.0, 0.0, 0.5 * sz),
            (0.5 * sx, 0.5 * sy, 0.5 * sz),
            0.0,
            (self.m["wallpaper"], self.m["wallpaper"], self.m["ceiling"], self.m["floor_wood"]),
            (1.0, 1.0, 1.0),
            (float(self.rng.uniform(0, 2)), float(self.rng.uniform(0, 2))),
            inside=True,
        )
        self._door()
        for _ in range(int(self.rng.integers(2, 4))):
            self._bookshelf()
        for _ in range(int(self.rng.integers(2, 4))):
            self._cabinet()
        self._sofa()
        self._desk()
        self._centre_table()
        for _ in range(int(self.rng.integers(2, 4))):
            self._plant()
        for _ in range(int(self.rng.integers(1, 3))):
            self._floor_lamp()
        self._pillar()
        self._rug()
        for _ in range(int(self.rng.integers(2, 4))):
            self._wall_panel("glass", (1.0, 1.5), (0.9, 1.2), (0.9, 1.1))  # windows
        for _ in range(int(self.rng.integers(3, 6))):
            self._wall_panel("painting", (0.5, 1.3), (0.4, 0.9), (1.25, 1.6))
        for _ in range(2):
            x, y = self.rng.uniform(-0.6, 0.6) * self.hx, self.rng.uniform(-0.6, 0.6) * self.hy
            self._cyl(x, y, sz - 0.45, sz - 0.2, 0.22, ("painted", "painted", "plastic"))
        return self.b.boxes(), self.b.cylinders()

    def _door(self) -> None:
        w = 0.9
        for _ in range(40):
            wall = int(self.rng.integers(4))
            half_len = self.hx if wall < 2 else self.hy
            along = self.rng.uniform(-half_len + 0.8, half_len - 0.8)
            cx, cy, yaw, _ = self._wall_pose(wall, along, 0.04, 0.01)
            # Keep the swing area in front of it free of furniture too.
            fx, fy, _, _ = self._wall_pose(wall, along, 0.8, 0.0)
            if self._fits(fx, fy, 0.5 * w, 0.4, yaw, need_clear=False):
                self._occupy(fx, fy, 0.5 * w, 0.4, yaw, 2.1)
                self._part(cx, cy, yaw, 0, 0, 0.0, w, 0.04, 2.05, ("wood", "wood", "wood", "wood"), self._tint(0.1))
                return

    def _bookshelf(self) -> None:
        w, d, h = self.rng.uniform(0.8, 1.6), self.rng.uniform(0.3, 0.4), self.rng.uniform(1.6, 2.2)
        pose = self._try_wall(w, d, h)
        if pose:
            self._part(*pose, 0, 0, 0.0, w, d, h, ("wood", "books", "wood", "wood"), self._tint(0.1))

    def _cabinet(self) -> None:
        w, d, h = self.rng.uniform(0.6, 1.4), self.rng.uniform(0.4, 0.6), self.rng.uniform(0.7, 1.1)
        pose = self._try_wall(w, d, h)
        if not pose:
            return
        cx, cy, yaw = pose
        self._part(cx, cy, yaw, 0, 0, 0.0, w, d, h, ("wood", "wood", "wood", "wood"), self._tint(0.12))
        c, s = math.cos(yaw), math.sin(yaw)
        for _ in range(int(self.rng.integers(1, 4))):
            lx, ly = self.rng.uniform(-0.4, 0.4) * w, self.rng.uniform(-0.25, 0.25) * d
            if self.rng.random() < 0.5:
                a = self.rng.uniform(0.1, 0.25)
                self._part(cx, cy, yaw, lx, ly, h, a, a, self.rng.uniform(0.1, 0.35), ("painted",) * 4, self._tint(0.3))
            else:
                r = self.rng.uniform(0.04, 0.1)
                self._cyl(
                    cx + c * lx - s * ly,
                    cy + s * lx + c * ly,
                    h,
                    h + self.rng.uniform(0.15, 0.4),
                    r,
                    ("painted",) * 3,
                    self._tint(0.3),
                )

    def _sofa(self) -> None:
        w, d = self.rng.uniform(1.6, 2.2), 0.9
        pose = self._try_wall(w, d, 0.9)
        if not pose:
            return
        cx, cy, yaw = pose
        t = self._tint(0.15)
        fab = ("fabric",) * 4
        self._part(cx, cy, yaw, 0, 0.05, 0.0, w - 0.4, d - 0.1, 0.45, fab, t)
        self._part(cx, cy, yaw, 0, -0.5 * d + 0.1, 0.0, w, 0.2, 0.9, fab, t)
        for side in (-1, 1):
            self._part(cx, cy, yaw, side * (0.5 * w - 0.1), 0.0, 0.0, 0.2, d, 0.65, fab, t)

    def _table_parts(self, cx: float, cy: float, yaw: float, w: float, d: float, h: float) -> None:
        self._part(cx, cy, yaw, 0, 0, h - 0.04, w, d, 0.04, ("wood",) * 4, self._tint(0.08))
        for sx in (-1, 1):
            for sy in (-1, 1):
                self._part(
                    cx, cy, yaw, sx * (0.5 * w - 0.06), sy * (0.5 * d - 0.06), 0.0, 0.05, 0.05, h - 0.04, ("wood",) * 4
                )

    def _desk(self) -> None:
        w, d, h = self.rng.uniform(1.1, 1.5), 0.65, 0.74
        pose = self._try_wall(w, d, h)
        if not pose:
            return
        cx, cy, yaw = pose
        self._table_parts(cx, cy, yaw, w, d, h)
        self._part(
            cx,
            cy,
            yaw,
            self.rng.uniform(-0.2, 0.2) * w,
            -0.15,
            h,
            0.6,
            0.04,
            0.38,
            ("plastic", "glass", "plastic", "plastic"),
        )

    def _centre_table(self) -> None:
        for w, d in ((1.0, 0.6), (0.8, 0.5), (0.6, 0.6)):
            pose = self._try_free(0.5 * w, 0.5 * d, 0.75, 0.3)
            if pose:
                self._table_parts(*pose, w, d, 0.74)
                cx, cy, yaw = pose
                self._cyl(cx, cy, 0.74, 0.74 + self.rng.uniform(0.2, 0.35), 0.08, ("painted",) * 3, self._tint(0.3))
                return
        self._plant(region=0.3)

    def _plant(self, region: float = 0.9) -> None:
        r = self.rng.uniform(0.2, 0.3)
        pose = self._try_free(r + 0.15, r + 0.15, 1.4, region)
        if pose:
            cx, cy, _ = pose
            pot = self.rng.uniform(0.3, 0.5)
            self._cyl(cx, cy, 0.0, pot, r, ("painted",) * 3, self._tint(0.3))
            self._cyl(cx, cy, pot, pot + self.rng.uniform(0.5, 0.9), r + 0.15, ("leaves",) * 3, self._tint(0.1))

    def _floor_lamp(self) -> None:
        pose = self._try_free(0.22, 0.22, 1.8, 0.95)
        if pose:
            cx, cy, _ = pose
            self._cyl(cx, cy, 0.0, 0.03, 0.16, ("metal",) * 3)
            self._cyl(cx, cy, 0.03, 1.5, 0.02, ("metal",) * 3)
            self._cyl(cx, cy, 1.5, 1.8, 0.2, ("fabric", "fabric", "fabric"), self._tint(0.2))

    def _pillar(self) -> None:
        r = self.rng.uniform(0.18, 0.28)
        pose = self._try_free(r, r, self.cfg.size_m[2], 0.9)
        if pose:
            self._cyl(pose[0], pose[1], 0.0, self.cfg.size_m[2], r, ("painted",) * 3, self._tint(0.1))

    def _rug(self) -> None:
        w, d = self.rng.uniform(2.2, 3.0), self.rng.uniform(1.5, 2.0)
        self._part(
            self.rng.uniform(-0.3, 0.3),
            self.rng.uniform(-0.3, 0.3),
            self.rng.uniform(-0.2, 0.2),
            0,
            0,
            0.0,
            w,
            d,
            0.012,
            ("fabric", "fabric", "painting", "fabric"),
        )

    def _wall_panel(
        self, mat: str, w_range: tuple[float, float], h_range: tuple[float, float], z_range: tuple[float, float]
    ) -> None:
        w, h, z0 = self.rng.uniform(*w_range), self.rng.uniform(*h_range), self.rng.uniform(*z_range)
        for _ in range(30):
            wall = int(self.rng.integers(4))
            half_len = self.hx if wall < 2 else self.hy
            along = self.rng.uniform(-half_len + 0.5 * w + 0.1, half_len - 0.5 * w - 0.1)
            cx, cy, yaw, _ = self._wall_pose(wall, along, 0.03, 0.015)
            # Only above furniture lower than the panel, and not overlapping another panel.
            fx, fy, _, _ = self._wall_pose(wall, along, 0.6, 0.0)
            below = self._cells(fx, fy, 0.5 * w + 0.05, 0.3, yaw)
            if np.any(self.occ_h[below] > z0 - 0.05):
                continue
            key = self._cells(cx, cy, 0.5 * w + 0.1, 0.05, yaw)
            if np.any(self.occupied[key]):
                continue
            self.occupied |= key  # panels claim their strip of wall (furniture was placed before them)
            self._part(cx, cy, yaw, 0, 0, z0, w, 0.03, h, ("wood", mat, "wood", "wood"))
            return
