"""Stress sequences: drives and walks that a pipeline tuned to easy scenes cannot pass.

Each entry turns a seed into `SyntheticSource` options. The seed draws the sequence's own parameters too
(turn radius, segment lengths, exposure blocks, loop length, pan rate), not only the town, so results
over several seeds cannot be tuned to one. Every sequence is as short as shows its problem (the accuracy
bench runs at ~5 frames/s on two cores); `frames_scale` shortens them further for a quick look.

    name              what makes it hard
    sharp_turns       90-degree corners of radius 3.6-4.6 m at 1 m/frame: 12.5-16 deg per frame for ~7 frames
    repeated_facades  every facade is the same building (size, material, texture): places look alike
    low_texture       every other 80-125 m segment is bare, with nearly plain facades and ground
    exposure          exposure jumps by x1.5-3.3 every 15-35 frames, on a slow drift and sensor noise
    loop_1km          a 1.01-1.25 km closed drive, then 5% more past its start (a revisit)
    room_fast         a hand-held room walk panning +-30-38 deg, 7-9 swings per lap: 10-15 deg per frame at peak

    from recon.datasets.synthetic.stress import STRESS, source
    for frame in source("sharp_turns", seed=7): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .rng import rng_for
from .room import RoomConfig
from .source import SyntheticSource
from .street_config import StreetConfig

Options = dict[str, Any]


@dataclass(frozen=True)
class StressSequence:
    name: str
    summary: str
    revisits: bool  # comes back to places seen before: worth a second run with loop closure off
    make: Callable[[np.random.Generator, float], Options]  # (the sequence's own rng, frames_scale) -> options


def _frames(full: int, scale: float, minimum: int = 40) -> int:
    return max(minimum, int(round(full * scale)))


def _sharp_turns(rng: np.random.Generator, scale: float) -> Options:
    # 57.3 / r deg per frame at 1 m/frame; a segment must hold two arcs plus a metre of straight.
    r = float(rng.uniform(3.6, 4.6))
    seg_min = 2 * r + 1 + float(rng.uniform(8, 14))
    street = StreetConfig(turn_radius_m=r, segment_min_m=seg_min, segment_max_m=seg_min + float(rng.uniform(10, 25)))
    return {"scene": "street", "num_frames": _frames(240, scale), "street": street}


def _repeated_facades(rng: np.random.Generator, scale: float) -> Options:
    seg_min = float(rng.uniform(70, 110))
    street = StreetConfig(
        repeated_facades=True, segment_min_m=seg_min, segment_max_m=seg_min + float(rng.uniform(30, 80))
    )
    return {"scene": "street", "num_frames": _frames(300, scale), "street": street}


def _low_texture(rng: np.random.Generator, scale: float) -> Options:
    # Long enough that mid-stretch the textured cross street ahead is small; 300 frames see both kinds.
    seg_min = float(rng.uniform(80, 95))
    street = StreetConfig(
        low_texture_every=2, segment_min_m=seg_min, segment_max_m=seg_min + float(rng.uniform(15, 30))
    )
    return {"scene": "street", "num_frames": _frames(300, scale), "street": street}


def _exposure(rng: np.random.Generator, scale: float) -> Options:
    return {
        "scene": "street",
        "num_frames": _frames(300, scale),
        "exposure_step": float(rng.uniform(0.4, 0.6)),
        "exposure_step_frames": int(rng.integers(15, 36)),
        "exposure_jitter": 0.15,
        "noise_std": 1.5,
    }


def _loop_1km(rng: np.random.Generator, scale: float) -> Options:
    # 1 m/frame: >= 1010 frames span >= 1 km (arcs are measured by their chords); LoopRoute needs >= 60 m,
    # so a scaled-down loop still closes.
    street = StreetConfig(turn_radius_m=float(rng.uniform(10, 18)))
    lap = _frames(1010 + int(rng.integers(0, 241)), scale, 60)
    # Drive on 5% past the start: a revisit the place database can see (at the lap's end the camera is
    # still behind its first position).
    return {
        "scene": "street",
        "num_frames": lap + max(20, lap // 20),
        "loop_frames": lap,
        "loop": True,
        "street": street,
        "noise_std": 1.0,
    }


def _room_fast(rng: np.random.Generator, scale: float) -> Options:
    room = RoomConfig(pan_deg=float(rng.uniform(30, 38)), pan_cycles=int(rng.integers(7, 10)))
    return {"scene": "room", "num_frames": _frames(240, scale), "room": room, "motion_blur_px": 1.5, "noise_std": 1.5}


STRESS: dict[str, StressSequence] = {
    s.name: s
    for s in (
        StressSequence("sharp_turns", "corners of r 3.6-4.6 m: >= 12 deg/frame at 1 m/frame", False, _sharp_turns),
        StressSequence("repeated_facades", "every facade the same building", False, _repeated_facades),
        StressSequence("low_texture", "every other segment bare and nearly plain", False, _low_texture),
        StressSequence("exposure", "exposure steps x1.5-3.3 every 15-35 frames", False, _exposure),
        StressSequence("loop_1km", ">= 1 km closed drive back to its start", True, _loop_1km),
        StressSequence("room_fast", "hand-held room walk with fast pans", False, _room_fast),
    )
}


def options(name: str, seed: int, frames_scale: float = 1.0) -> Options:
    """SyntheticSource keyword arguments of stress sequence `name` for `seed` (scene included)."""
    if name not in STRESS:
        raise KeyError(f"unknown stress sequence {name!r}; choose from {', '.join(STRESS)}")
    if not frames_scale > 0:
        raise ValueError(f"frames_scale must be > 0, got {frames_scale}")
    opts = STRESS[name].make(rng_for(seed, "stress", name), float(frames_scale))
    opts["seed"] = int(seed)
    return opts


def source(name: str, seed: int, frames_scale: float = 1.0, **overrides: Any) -> SyntheticSource:
    return SyntheticSource(**{**options(name, seed, frames_scale), **overrides})
