"""Procedural synthetic sequences with exact ground truth (poses, intrinsics, z-depth).

Scenes: `street` (a KITTI-like drive through a procedurally built town, any length, optional closed
loop) and `room` (an indoor walk-through). Every frame is a pure function of (options, seed, index).

    from recon.datasets.synthetic import SyntheticSource, render_sequence
    for frame in SyntheticSource("street", num_frames=100): ...
    render_sequence("out/kitti", scene="street", name="s00", fmt="kitti", num_frames=500, loop=True)
"""

from .room import RoomConfig
from .source import SCENES, SyntheticSource, render_sequence
from .street_config import StreetConfig

__all__ = ["SCENES", "RoomConfig", "StreetConfig", "SyntheticSource", "render_sequence"]
