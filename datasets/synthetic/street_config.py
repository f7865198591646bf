"""What a street is made of: its materials (the atlas, in this order) and its cross-section.

Cross-section of every road (lateral offset from the centreline, left positive; the camera drives on
the centreline, in the middle of three lanes):

    0 .. 5.25 m     asphalt, dashed lane lines at 1.75 m, solid edge line at 5.25 m
    5.25 .. 7.25    parking strip (parked cars), kerb at 7.25
    7.25 .. 10.5    sidewalk: poles, signs, trees, bins, benches
    10.5 ..         facades (setback 0-7 m), then a taller background row 30-80 m out"""

from __future__ import annotations

from dataclasses import dataclass

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
