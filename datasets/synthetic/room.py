"""The `room` scene: an indoor walk-through.

A textured shell (walls, floor, ceiling) with furniture along the walls and in the middle, pictures,
a door and windows (laid out by `room_layout`); the camera walks a smooth closed path around the room's
centre, looking partly inwards and panning, so views span several depth layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .render import SceneView
from .rng import rng_for
from .room_layout import RoomLayout
from .surface import Lighting

ROOM_MATERIALS = (
    "wallpaper",
    "floor_wood",
    "ceiling",
    "wood",
    "fabric",
    "books",
    "painted",
    "painting",
    "plastic",
    "metal",
    "leaves",
    "glass",
)


@dataclass(frozen=True)
class RoomConfig:
    size_m: tuple[float, float, float] = (8.0, 6.0, 3.0)
    camera_height_m: float = 1.45
    path_semi_axes_m: tuple[float, float] = (2.0, 1.3)
    clearance_m: float = 0.6  # > the 0.5 m the camera must keep from any surface
    look_inward_deg: float = 30.0
    pan_deg: float = 18.0
    pan_cycles: int = 3  # pan swings per lap (whole, so a lap closes); with pan_deg it sets the turn rate
    pitch_deg: float = -8.0


class RoomScene:
    def __init__(self, config: RoomConfig, seed: int, num_frames: int, step_m: float, loop: bool) -> None:
        self.cfg = config
        self.seed = int(seed)
        cycles = config.pan_cycles
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
            raise ValueError(f"pan_cycles must be a whole number >= 0, got {cycles!r}")
        self.mat = {name: i for i, name in enumerate(ROOM_MATERIALS)}  # atlas ids: built from ROOM_MATERIALS in order
        rng = rng_for(self.seed, "room-path")
        self._phase = rng.uniform(0, 2 * math.pi, 8)
        self.perimeter_m = self._perimeter()
        # Loop: exactly one lap over the sequence (frame N would be frame 0); else walk at step_m.
        self.theta_per_frame = 2 * math.pi / num_frames if loop else 2 * math.pi * step_m / self.perimeter_m
        self.lighting = Lighting(sun_dir=(0.35, 0.25, 0.9), ambient=0.6, diffuse=0.45)
        self.boxes, self.cylinders = RoomLayout(self, rng_for(self.seed, "room-layout")).build()

    # ------------------------------------------------------------------------------------- path
    def path_xyz(self, theta: np.ndarray | float) -> np.ndarray:
        ax, ay = self.cfg.path_semi_axes_m
        p = self._phase
        th = np.asarray(theta, np.float64)
        x = ax * np.cos(th) + 0.25 * np.cos(2 * th + p[0])
        y = ay * np.sin(th) + 0.15 * np.sin(3 * th + p[1])
        z = self.cfg.camera_height_m + 0.1 * np.sin(2 * th + p[2])
        return np.stack([x, y, z], -1)

    def _perimeter(self) -> float:
        pts = self.path_xyz(np.linspace(0, 2 * math.pi, 2049))
        return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())

    def scene_from_cam(self, index: int) -> tuple[np.ndarray, int]:
        th = index * self.theta_per_frame
        pos = self.path_xyz(th)
        tangent = self.path_xyz(th + 1e-4) - self.path_xyz(th - 1e-4)
        p = self._phase
        # Integer multiples of theta only, so a lap closes exactly.
        yaw = math.atan2(tangent[1], tangent[0]) + math.radians(
            self.cfg.look_inward_deg + self.cfg.pan_deg * math.sin(self.cfg.pan_cycles * th + p[3])
        )
        pitch = math.radians(self.cfg.pitch_deg + 4.0 * math.sin(2 * th + p[4]))
        roll = math.radians(1.5 * math.sin(th + p[5]))
        cy, sy = math.cos(yaw), math.sin(yaw)
        base = np.array([[sy, 0.0, cy], [-cy, 0.0, sy], [0.0, -1.0, 0.0]])
        cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
        Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        T = np.eye(4)
        T[:3, :3] = base @ Rx @ Rz
        T[:3, 3] = pos
        return T, 0

    def view(self, scene_from_cam: np.ndarray, unit_hint: int) -> SceneView:
        return SceneView(self.boxes, self.cylinders, self.lighting, None)
