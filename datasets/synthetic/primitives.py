"""Analytic scene primitives as structure-of-arrays batches (scene frame: x east, y north, z up, metres).

Boxes turn about the vertical only (yaw), which is all streets and rooms need and keeps their local
frame cheap; cylinders are vertical. Material ids index the scene's texture atlas."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Corner i of a box has local signs (bit2 -> x, bit1 -> y, bit0 -> z); edges join corners one bit apart.
CORNER_SIGNS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], np.float64) * 2.0 - 1.0
BOX_EDGES = np.array([(i, i | b) for b in (1, 2, 4) for i in range(8) if not i & b], np.int64)


@dataclass
class Boxes:
    """N yaw-rotated boxes. material [N,4]: faces ±x, faces ±y, top (+z), bottom (-z).
    uv_offset shifts the texture per object (metres) so repeats rarely line up; `inside` marks a box
    seen from within (a room's shell): its inner faces are rendered."""

    center: np.ndarray  # [N,3] float64
    half: np.ndarray  # [N,3] float64, half extents along local x, y, z
    yaw: np.ndarray  # [N] float64, radians about +z
    material: np.ndarray  # [N,4] int32
    tint: np.ndarray  # [N,3] float32, albedo multiplier
    uv_offset: np.ndarray  # [N,2] float32, metres
    inside: np.ndarray  # [N] bool

    def __len__(self) -> int:
        return int(self.center.shape[0])

    @staticmethod
    def empty() -> Boxes:
        return Boxes(
            np.zeros((0, 3)),
            np.zeros((0, 3)),
            np.zeros(0),
            np.zeros((0, 4), np.int32),
            np.zeros((0, 3), np.float32),
            np.zeros((0, 2), np.float32),
            np.zeros(0, bool),
        )

    def take(self, idx: np.ndarray) -> Boxes:
        return Boxes(*(getattr(self, f.name)[idx] for f in fields(self)))

    def corners(self) -> np.ndarray:
        """[N,8,3] corners in the scene frame."""
        local = CORNER_SIGNS[None] * self.half[:, None, :]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return self.center[:, None, :] + np.stack([x, y, local[..., 2]], -1)


@dataclass
class Cylinders:
    """N vertical cylinders from z0 to z1. material [N,3]: side, top, bottom."""

    center_xy: np.ndarray  # [N,2] float64
    z0: np.ndarray  # [N]
    z1: np.ndarray  # [N]
    radius: np.ndarray  # [N]
    material: np.ndarray  # [N,3] int32
    tint: np.ndarray  # [N,3] float32
    uv_offset: np.ndarray  # [N,2] float32

    def __len__(self) -> int:
        return int(self.center_xy.shape[0])

    @staticmethod
    def empty() -> Cylinders:
        return Cylinders(
            np.zeros((0, 2)),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0),
            np.zeros((0, 3), np.int32),
            np.zeros((0, 3), np.float32),
            np.zeros((0, 2), np.float32),
        )

    def take(self, idx: np.ndarray) -> Cylinders:
        return Cylinders(*(getattr(self, f.name)[idx] for f in fields(self)))

    def bounding_boxes(self) -> Boxes:
        """Axis-aligned square prisms around the cylinders (for screen bounds)."""
        n = len(self)
        center = np.column_stack([self.center_xy, 0.5 * (self.z0 + self.z1)])
        half = np.column_stack([self.radius, self.radius, 0.5 * (self.z1 - self.z0)])
        return Boxes(
            center,
            half,
            np.zeros(n),
            np.zeros((n, 4), np.int32),
            np.ones((n, 3), np.float32),
            np.zeros((n, 2), np.float32),
            np.zeros(n, bool),
        )


def concat_boxes(parts: list[Boxes]) -> Boxes:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Boxes.empty()
    return Boxes(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Boxes)))


def concat_cylinders(parts: list[Cylinders]) -> Cylinders:
    parts = [p for p in parts if len(p)]
    if not parts:
        return Cylinders.empty()
    return Cylinders(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Cylinders)))


class PrimitiveBuilder:
    """Accumulates primitives one at a time (scene generation), then freezes them into batches.
    Each primitive records a `group`: scenes drop whole groups (a car's body and cabin together)."""

    def __init__(self) -> None:
        self._boxes: list[tuple] = []
        self._cyls: list[tuple] = []
        self.box_group: list[int] = []
        self.cyl_group: list[int] = []
        self._group = -1

    def new_group(self) -> int:
        self._group += 1
        return self._group

    def box(
        self,
        center: tuple[float, float, float],
        half: tuple[float, float, float],
        yaw: float,
        material: tuple[int, ...],  # atlas slots: sides, front/back, top, bottom
        tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
        uv_offset: tuple[float, float] = (0.0, 0.0),
        inside: bool = False,
    ) -> None:
        self._boxes.append((center, half, yaw, material, tint, uv_offset, inside))
        self.box_group.append(self._group)

    def cylinder(
        self,
        center_xy: tuple[float, float],
        z0: float,
        z1: float,
        radius: float,
        material: tuple[int, ...],  # atlas slots: side, top, bottom
        tint: tuple[float, float, float] = (1.0, 1.0, 1.0),
        uv_offset: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self._cyls.append((center_xy, z0, z1, radius, material, tint, uv_offset))
        self.cyl_group.append(self._group)

    def boxes(self) -> Boxes:
        if not self._boxes:
            return Boxes.empty()
        c, h, yaw, m, t, uv, ins = zip(*self._boxes)
        return Boxes(
            np.array(c, np.float64),
            np.array(h, np.float64),
            np.array(yaw, np.float64),
            np.array(m, np.int32),
            np.array(t, np.float32),
            np.array(uv, np.float32),
            np.array(ins, bool),
        )

    def cylinders(self) -> Cylinders:
        if not self._cyls:
            return Cylinders.empty()
        c, z0, z1, r, m, t, uv = zip(*self._cyls)
        return Cylinders(
            np.array(c, np.float64),
            np.array(z0, np.float64),
            np.array(z1, np.float64),
            np.array(r, np.float64),
            np.array(m, np.int32),
            np.array(t, np.float32),
            np.array(uv, np.float32),
        )
