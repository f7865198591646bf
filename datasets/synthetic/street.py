"""The `street` scene: a drive along a procedurally built town (cross-section: `street_config`).

The camera follows the route's centreline with a small smooth wobble. Objects of segment k are a pure
function of (seed, k), laid out by `street_layout` on first use and kept in a small LRU, so memory does
not grow with the drive and any frame can be rendered alone; the ground is shaded by `street_ground`."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .primitives import Boxes, Cylinders, concat_boxes, concat_cylinders
from .render import SceneView, Sky
from .rng import rng_for
from .route import LoopRoute, OpenRoute, Route, Unit
from .street_config import STREET_MATERIALS, StreetConfig
from .street_ground import StreetGround
from .street_layout import SAMPLE_SPACING_M, SegmentLayout
from .surface import Lighting


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
        built = SegmentLayout(self, self.route.unit(key)).build()
        self._cache[key] = built
        while len(self._cache) > self.cfg.cache_segments:
            self._cache.popitem(last=False)
        return built

    def route_points_near(self, unit: Unit, radius_m: float) -> np.ndarray:
        """Centreline samples [n,2] of all units within radius_m of this unit's segment."""
        mid = unit.corner + 0.5 * unit.seg_len * unit.direction
        ks = self.route.units_near(mid, 0.5 * unit.seg_len + radius_m, unit.index)
        return np.vstack([self.route.unit(k).sample_points(SAMPLE_SPACING_M) for k in ks])
