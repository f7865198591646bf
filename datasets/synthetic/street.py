"""The `street` scene: a drive along a procedurally built town.

Cross-section of every road (lateral offset from the centreline, left positive; the camera drives on
the centreline, in the middle of three lanes):

    0 .. 5.25 m     asphalt, dashed lane lines at 1.75 m, solid edge line at 5.25 m
    5.25 .. 7.25    parking strip (parked cars), kerb at 7.25
    7.25 .. 10.5    sidewalk: poles, signs, trees, bins, benches
    10.5 ..         facades (setback 0-7 m), then a taller background row 30-80 m out

Objects of segment k are a pure function of (seed, k), built on first use and kept in a small LRU, so
memory does not grow with the drive and any frame can be rendered alone. Every object must keep its
clearance from *every* nearby road centreline (not just its own), which clears crossings and the
insides of turns, and keeps the camera path free."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .materials import period_m
from .primitives import Boxes, Cylinders, PrimitiveBuilder, concat_boxes, concat_cylinders
from .raycast import FrameContext
from .render import SceneView, Sky
from .rng import hash_uniform, rng_for
from .route import LoopRoute, OpenRoute, Route, Unit
from .surface import Lighting, Surface

STREET_MATERIALS = (
    "asphalt",
    "sidewalk",
    "lot",
    "kerb",
    "brick",
    "plaster",
    "concrete",
    "roof",
    "car_paint",
    "glass",
    "metal",
    "foliage",
    "bark",
    "sign",
    "plastic",
    "plain_wall",
    "plain_road",
    "plain_walk",
)
_SAMPLE_SPACING_M = 0.5  # route sampling for clearance tests; the bound below adds half of it
_MIN_COS = 1.0 / 32.0
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


@dataclass(frozen=True)
class StreetConfig:
    camera_height_m: float = 1.65
    turn_radius_m: float = 15.0
    segment_min_m: float = 90.0
    segment_max_m: float = 180.0
    lane_width_m: float = 3.5
    parking_width_m: float = 2.0
    sidewalk_width_m: float = 3.25
    max_depth_m: float = 250.0
    wobble_deg: float = 0.4  # small smooth pitch/roll/yaw/height motion, as a car body has
    start_offset_m: float = 5.0
    cache_segments: int = 24
    # Stress options (datasets/synthetic/stress.py), off by default:
    repeated_facades: bool = False  # every facade the same building (size, material, texture): far places look alike
    low_texture_every: int = 0  # every n-th route segment (phase from the seed) is bare and nearly plain; 0: none

    @property
    def lane_line_m(self) -> float:
        return 0.5 * self.lane_width_m

    @property
    def edge_line_m(self) -> float:
        return 1.5 * self.lane_width_m

    @property
    def kerb_m(self) -> float:
        return self.edge_line_m + self.parking_width_m

    @property
    def sidewalk_outer_m(self) -> float:
        return self.kerb_m + self.sidewalk_width_m


class StreetScene:
    def __init__(self, config: StreetConfig, seed: int, num_frames: int, step_m: float, loop: bool) -> None:
        self.cfg = config
        self.seed = int(seed)
        self.step_m = float(step_m)
        every = config.low_texture_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"low_texture_every must be a whole number >= 0, got {every!r}")
        self._low_texture_phase = int(rng_for(self.seed, "low-texture").integers(every)) if every else 0
        self.route: Route
        if loop:
            length = num_frames * self.step_m
            if length < LoopRoute.MIN_LENGTH_M:
                raise ValueError(
                    f"a closed street loop needs at least {LoopRoute.MIN_LENGTH_M:.0f} m of driving; {num_frames} frames "
                    f"at {self.step_m:.3g} m per frame make {length:.1f} m (add frames or raise the speed)"
                )
            self.route = LoopRoute(length, config.turn_radius_m)
        else:
            self.route = OpenRoute(self.seed, config.segment_min_m, config.segment_max_m, config.turn_radius_m)
        self.mat = {
            name: i for i, name in enumerate(STREET_MATERIALS)
        }  # atlas ids: built from STREET_MATERIALS in order
        self.lighting = Lighting(sun_dir=(0.45, -0.35, 0.82), ambient=0.58, diffuse=0.55)
        self.sky = Sky()
        self._cache: OrderedDict[int, tuple[Boxes, Cylinders]] = OrderedDict()
        self._wobble = self._make_wobble()

    # ----------------------------------------------------------------------------------- camera
    def arc_length(self, index: int) -> float:
        return (0.0 if self.route.closed else self.cfg.start_offset_m) + index * self.step_m

    def _make_wobble(self) -> list[tuple[float, float, float]]:
        """(amplitude, wavelength_m, phase) per channel yaw, pitch, roll, height; two sines each."""
        rng = rng_for(self.seed, "street-wobble")
        w = math.radians(self.cfg.wobble_deg)
        amps = [0.6 * w, 1.0 * w, 0.6 * w, 0.05 * self.cfg.wobble_deg]
        out = []
        for a in amps:
            for frac, lam in ((0.6, rng.uniform(25, 45)), (0.4, rng.uniform(60, 110))):
                if self.route.closed:  # whole periods per lap, so the loop closes exactly
                    lam = self.route.length_m / max(1, round(self.route.length_m / lam))
                out.append((a * frac, lam, rng.uniform(0, 2 * math.pi)))
        return out

    def scene_from_cam(self, index: int) -> tuple[np.ndarray, int]:
        """Camera pose (scene frame) of a frame, and the route unit it is on."""
        s = self.arc_length(index)
        k, sigma = self.route.locate(s)
        xy, heading = self.route.unit(k).at(sigma)
        wob = [
            sum(a * math.sin(2 * math.pi * s / lam + ph) for a, lam, ph in self._wobble[2 * c : 2 * c + 2])
            for c in range(4)
        ]
        yaw, pitch, roll, dz = heading + wob[0], wob[1], wob[2], wob[3]
        cy, sy = math.cos(yaw), math.sin(yaw)
        base = np.array([[sy, 0.0, cy], [-cy, 0.0, sy], [0.0, -1.0, 0.0]])  # columns: camera x, y, z
        cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
        Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # positive pitch looks up (y is down)
        Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        T = np.eye(4)
        T[:3, :3] = base @ Rx @ Rz
        T[:3, 3] = [xy[0], xy[1], self.cfg.camera_height_m + dz]
        return T, k

    # ------------------------------------------------------------------------------------ scene
    def view(self, scene_from_cam: np.ndarray, unit_hint: int) -> SceneView:
        cam_xy = scene_from_cam[:2, 3]
        reach = self.cfg.max_depth_m + 100.0  # objects stand up to ~90 m off their centreline
        parts = [self.segment(k) for k in self.route.units_near(cam_xy, reach, unit_hint)]
        ground_units = [
            self.route.unit(k)
            for k in self.route.units_near(cam_xy, self.cfg.max_depth_m + 2 * self.cfg.sidewalk_outer_m, unit_hint)
        ]
        return SceneView(
            concat_boxes([p[0] for p in parts]),
            concat_cylinders([p[1] for p in parts]),
            self.lighting,
            StreetGround(self, ground_units),
            self.sky,
        )

    def low_texture(self, k: int) -> bool:
        """Whether route unit k is a low-texture stretch: plain facades and ground, no street furniture."""
        every = self.cfg.low_texture_every
        return every > 0 and (self.route.canonical(k) + self._low_texture_phase) % every == 0

    def segment(self, k: int) -> tuple[Boxes, Cylinders]:
        key = self.route.canonical(k)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        built = _SegmentLayout(self, self.route.unit(key)).build()
        self._cache[key] = built
        while len(self._cache) > self.cfg.cache_segments:
            self._cache.popitem(last=False)
        return built

    def route_points_near(self, unit: Unit, radius_m: float) -> np.ndarray:
        """Centreline samples [n,2] of all units within radius_m of this unit's segment."""
        mid = unit.corner + 0.5 * unit.seg_len * unit.direction
        ks = self.route.units_near(mid, 0.5 * unit.seg_len + radius_m, unit.index)
        return np.vstack([self.route.unit(k).sample_points(_SAMPLE_SPACING_M) for k in ks])


class _SegmentLayout:
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
        margin = 0.5 * _SAMPLE_SPACING_M  # sampled distance overestimates the true one by at most this
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
