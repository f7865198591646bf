"""The classical model's settings (recon/models/classical/model.py), its stages' own dataclasses nested."""

from __future__ import annotations

from dataclasses import dataclass, field

from recon.models.classical.bridge import BridgeConfig
from recon.models.classical.bundle import BundleConfig
from recon.models.classical.dense import DenseConfig
from recon.models.classical.pose import PoseConfig
from recon.models.classical.tracks import TrackerConfig


@dataclass(frozen=True)
class ClassicalConfig:
    max_side_px: int = 640  # work at most at this resolution (longer side)
    focal_guess: float = 0.9  # focal = focal_guess * longer side when the source has no intrinsics
    min_tracks: int = 40
    # Every point of a window goes into its bundle adjustment, up to this cap (_ba_subset picks which): with
    # 600, a fast pan left each frame ~150 points and windows came out 8-24% larger at one end than at the
    # other (7 of 19 windows of a room walk); with all of them (~3500), at most 3%.
    ba_max_points: int = 4000
    init_candidates: int = 6  # frames tried as the partner of frame 0 for initialisation
    # An initial pair's rotation must agree with the rotations through a frame between them (a -> m -> b) to
    # within this: few tracks bunched in one corner of the view (a plain wall fills the rest) fit a wrong
    # essential matrix as well as the true one, with a wrong rotation and a spurious large parallax.
    init_max_rotation_gap_deg: float = 5.0
    refine_below: float = 0.7  # bundle-adjust mid-way when a PnP keeps less than this share of its points
    refine_iterations: int = 5
    # After each bundle adjustment a track leaves it when one of its observations is off by more than
    # cull_noise_factor x the median error (sparse.cull_px: 1 px on clean video, up to pose.max_reproj_px on
    # noisy video). KLT tracks drift where the texture is an edge (a curb, window frames, brick courses): at
    # the true poses 22-29% of the tracks of a turn past a plain facade were >1 px off, V-shaped along the
    # track, and with a 2.5-px cull they bent the window 2.7 deg in yaw.
    cull_floor_px: float = 1.0
    cull_noise_factor: float = 4.0
    flow_cache_mb: int = 128  # pair flows kept for the next window: at most 48 pairs in this (26 at 640x480)
    seed: int = 0
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
