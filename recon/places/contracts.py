"""What place recognition takes and gives (ARCHITECTURE §4): its settings, a keyframe as the core hands it
over, and a verified loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.errors import ContractError
from recon.types import Sim3


@dataclass(frozen=True)
class PlaceConfig:
    """Settings of `PlaceDatabase`. Memory: one stored keyframe costs about
    orb_features * 45 B (descriptor 32 B, pixel 8 B, depth 4 B, vocabulary node 1 B) + ~16 B per distinct
    word (BoW vector and its inverted-index entries) + a float16 depth thumbnail (thumbnail_width columns),
    measured 51 KB (640x192) to 61 KB (640x480) per keyframe at 1000 features; see `PlaceDatabase.nbytes`."""

    orb_features: int = 1000  # per keyframe; ORB-SLAM's count for KITTI-size images
    max_keyframes: int = 500  # 25-31 MB; at one keyframe per 1.5 s that is 12 min before thinning starts
    exclude_recent: int = 20  # the last N added keyframes (~30 s) are no loop: the joins tie them already
    min_window_gap: int = 2  # a candidate's window must be >= this many windows older than the query's
    min_score: float = 0.3  # normalised BoW score a candidate needs (DBoW's alpha; see module docstring)
    top_k: int = 3  # candidates verified per query (each ~5 ms)
    candidate_separation: int = 2  # candidates closer than this in insertion order count as one place
    # vocabulary (built online, then frozen)
    vocabulary_keyframes: int = 20  # descriptors of the first N keyframes train it (~20k descriptors)
    vocabulary_shape: tuple[int, int] = (32, 64)  # 2-level tree: branching per level -> up to 2048 words
    vocabulary_iterations: int = 8  # k-majority rounds per node
    # keypoint depth
    conf_quantile: float = 0.25  # drop the least confident quarter of the keyframe's valid depth
    edge_ratio: float = 1.1  # a keypoint's 3x3 depth patch must vary less than this (no depth edges)
    # matching and verification
    ratio: float = 0.8  # Lowe's ratio test on Hamming distances
    essential_threshold_px: float = 1.5  # epipolar RANSAC threshold
    essential_max_iters: int = 300  # USAC (PROSAC + local optimisation): a true loop needs far fewer
    min_essential_inliers: int = 40
    min_inliers: int = 25  # Sim(3) inliers
    min_inlier_share: float = 0.7  # Sim(3) inliers / essential inliers with depth in both
    inlier_rel: float = 0.05  # Sim(3) inlier: 3D residual <= 5% of the point's depth
    sim3_iterations: int = 256  # RANSAC hypotheses (minimal 3-point samples)
    max_rotation_disagreement_deg: float = 3.0  # Sim(3) rotation vs essential-matrix rotation
    max_translation_angle_deg: float = 20.0  # same for the translation direction, when the baseline allows
    min_baseline_rel: float = 0.05  # baseline / median depth above which the E translation is trusted
    max_scale_ratio: float = 10.0  # |log s| of the windows' unit ratio beyond log(this) is absurd
    thumbnail_width: int = 48  # columns of the depth thumbnail kept for the dense check (~1.4-3.5 KB)
    thumbnail_agreement_rel: float = 0.1  # thumbnail depths agree within 10%
    min_dense_agreement: float = 0.8  # agreeing / (agreeing + contradicting) thumbnail points, both ways
    coverage_grid: tuple[int, int] = (4, 4)  # rows, cols of the grid the inliers must spread over
    min_coverage_cells: int = 6  # distinct grid cells holding Sim(3) inliers (against repeated texture)
    # temporal consistency (against perceptual aliasing, which a single pair cannot tell from a revisit)
    min_consistent: int = 2  # queries that must agree before a loop is reported (1 = report at once)
    consistency_gap: int = 2  # ... each within this many keyframes of the previous one
    consistency_distance: int = 3  # ... matching keyframes within this many insertions of each other
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_keyframes <= self.exclude_recent + 1:
            raise ContractError("PlaceConfig: max_keyframes must exceed exclude_recent + 1")
        if not 1 <= self.vocabulary_keyframes <= self.max_keyframes:
            raise ContractError("PlaceConfig: vocabulary_keyframes must be in [1, max_keyframes]")
        if min(self.vocabulary_shape) < 2 or self.orb_features < 10 or self.top_k < 1:
            raise ContractError("PlaceConfig: vocabulary branching >= 2, orb_features >= 10, top_k >= 1")


@dataclass(frozen=True)
class Keyframe:
    """One keyframe as the core hands it over. The image is only read while adding, never stored."""

    keyframe_id: int
    window_id: int
    image_gray: np.ndarray  # uint8 [H,W] at the model's resolution
    K: np.ndarray  # [3,3] in pixels of that image
    depth: np.ndarray  # [H,W] float32 z-depth in the window's units, 0 = invalid
    conf: np.ndarray  # [H,W] float32, higher = better
    window_from_cam: np.ndarray  # [4,4] rigid, in window units

    def __post_init__(self) -> None:
        img = self.image_gray
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 2):
            raise ContractError(f"Keyframe {self.keyframe_id}: image_gray must be uint8 [H,W]")
        for name in ("depth", "conf"):
            shape = np.shape(getattr(self, name))
            if shape != img.shape:
                raise ContractError(f"Keyframe {self.keyframe_id}: {name} must be {img.shape}, got {shape}")
        if np.shape(self.K) != (3, 3) or np.shape(self.window_from_cam) != (4, 4):
            raise ContractError(f"Keyframe {self.keyframe_id}: K must be [3,3] and window_from_cam [4,4]")


@dataclass(frozen=True)
class LoopMatch:
    """A verified loop: the edge `match_window_from_query_window` maps query-window points into the matched
    window's frame (its scale = matched units per query unit)."""

    query_keyframe: int
    match_keyframe: int
    query_window: int
    match_window: int
    match_window_from_query_window: Sim3
    match_cam_from_query_cam: Sim3
    inliers: int  # Sim(3) inliers
    inlier_share: float  # of the essential inliers with depth in both
    rmse_rel: float  # RMS of inlier residual / depth
    score: float  # normalised BoW score
    essential_inliers: int
    rotation_disagreement_deg: float
    coverage_cells: int
    dense_agreement: float  # depth-thumbnail agreement under the Sim(3), the weaker direction
