"""Every procedural material by name, with the size of its texels on the surface.

A material is a tileable RGB tile defined on surface coordinates in metres (`texel_m` metres per texel),
so a surface point has one colour whatever the view; the tile repeats every TILE * texel_m metres. How
each tile is painted lives in the families `street_materials` and `room_materials`; the atlas that
samples them in `texture_atlas`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import room_materials, street_materials

TILE = 512  # texels per tile side; a power of two so the 2x2 mip chain stays tileable


@dataclass(frozen=True)
class MaterialSpec:
    texel_m: float  # metres per texel at mip level 0; the tile repeats every TILE * texel_m metres
    make: Callable[[np.random.Generator, int], np.ndarray]


MATERIALS: dict[str, MaterialSpec] = {
    # street
    "asphalt": MaterialSpec(0.015, street_materials.asphalt),
    "sidewalk": MaterialSpec(0.015, street_materials.sidewalk),
    "lot": MaterialSpec(0.02, street_materials.lot),
    "kerb": MaterialSpec(0.01, street_materials.kerb),
    "brick": MaterialSpec(0.02, street_materials.brick),
    "plaster": MaterialSpec(0.025, street_materials.plaster),
    "concrete": MaterialSpec(0.05, street_materials.concrete),
    "roof": MaterialSpec(0.05, street_materials.roof),
    "car_paint": MaterialSpec(0.01, street_materials.car_paint),
    "glass": MaterialSpec(0.01, street_materials.glass),
    "metal": MaterialSpec(0.01, street_materials.metal),
    "foliage": MaterialSpec(0.015, street_materials.foliage),
    "bark": MaterialSpec(0.01, street_materials.bark),
    "sign": MaterialSpec(0.004, street_materials.sign),
    "plastic": MaterialSpec(0.01, street_materials.plastic),
    # the same surfaces nearly plain (low-texture stretches of a drive)
    "plain_wall": MaterialSpec(0.05, street_materials.plain((200, 194, 184))),
    "plain_road": MaterialSpec(0.05, street_materials.plain((94, 94, 98))),
    "plain_walk": MaterialSpec(0.05, street_materials.plain((172, 168, 160))),
    # room
    "wallpaper": MaterialSpec(0.004, room_materials.wallpaper),
    "floor_wood": MaterialSpec(0.004, room_materials.floor_wood),
    "ceiling": MaterialSpec(0.005, room_materials.ceiling),
    "wood": MaterialSpec(0.003, room_materials.wood),
    "fabric": MaterialSpec(0.003, room_materials.fabric),
    "books": MaterialSpec(0.003, room_materials.books),
    "painted": MaterialSpec(0.004, room_materials.painted),
    "painting": MaterialSpec(0.003, room_materials.painting),
    "leaves": MaterialSpec(0.004, street_materials.foliage),  # foliage seen from a metre away, indoors
}


def period_m(name: str, tile: int = TILE) -> float:
    """Metres after which a material's texture repeats."""
    return MATERIALS[name].texel_m * tile
