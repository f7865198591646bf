"""What a join hands on (ARCHITECTURE §2, §4): the settings, the window placed in the world, the
correspondences and the fit, and `AlignmentReport`, the typed record of how a window was joined."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from recon.errors import ContractError
from recon.kernels.align_layers import LayerParams
from recon.types import Keypoints, Sim3, WindowPrediction
from recon.windows import ALIGN_MODES, AlignMode


@dataclass(frozen=True)
class AlignConfig:
    mode: AlignMode = "lsa"
    # correspondences
    conf_mode: Literal["median_ratio", "top_p"] = "median_ratio"
    conf_rel: float = 0.1  # median_ratio: keep conf > conf_rel x min(median prev, median cur)
    top_p: float = 0.5  # top_p: keep each window's top p of confidences, AND of both masks
    max_correspondences: int = 32768  # pixel stride chosen so the candidates stay below this
    # Sim(3)
    huber_delta_rel: float = 0.1  # Huber delta = this x median map depth of the correspondences
    irls_iterations: int = 5
    # degenerate overlap -> pose fallback
    min_correspondences: int = 200
    min_inlier_share: float = 0.3
    min_rank_ratio: float = 1e-3  # 2nd/1st singular value of the cross-covariance (collinear points)
    scale_bounds: tuple[float, float] = (1e-3, 1e3)
    fallback_min_baseline_rel: float = 0.01  # camera-centre spread / median depth to trust it for scale
    # joint join fit: rotation from the shared cameras, scale from dense depth ratios and camera baselines
    join_rotation_outlier_deg: float = 2.0  # shared cameras whose relative rotation disagrees by more are dropped
    join_pose_noise_rel: float = 0.01  # camera-centre noise / scene depth: the baseline scale's sigma
    join_min_baseline_rel: float = 0.02  # baselines shorter than this x scene depth say nothing of scale
    join_dense_max_samples: float = 25.0  # effective independent samples per frame (pixel errors are correlated)
    join_scale_conflict: float = 3.0  # two scale sources agree within this many combined sigmas (or 5%)
    inherited_log_scale_sigma: float = 0.1  # a scale inherited through the shared frames' median depth
    join_keypoint_px: float = 1.0  # two windows' keypoints this close in a shared frame are the same corner
    min_join_keypoints: int = 20
    join_keypoint_log_sigma_floor: float = 0.02
    # layer-wise scale alignment
    # Half-resolution segmentation, coarser on large frames: layers are large, and the cost grows with pixels.
    layers: LayerParams = field(default_factory=lambda: LayerParams(stride=2, max_pixels=40_000))
    iou_pixels: int = 8192  # layer IoUs on a pixel grid of about this many pixels per frame
    cross_iou: float = 0.4  # links between the two windows' layers of one overlap frame
    within_iou: float = 0.3  # links between consecutive frames of the window
    within_links: Literal["warp", "pixel"] = "warp"  # carry pixels by the window's geometry, or same pixel
    scale_huber_delta: float = 0.05  # on log depth ratios
    scale_iterations: int = 10
    min_link_samples: int = 20  # strided samples a cross-window link needs for its scale
    max_layer_scale: float = 2.0  # layer scales are clamped to [1/x, x] (with a warning)
    lsa_refine: bool = False  # re-fit the Sim(3) on layer-corrected points (replaces the joint fit's rotation)
    # Apply the layer scales to depth and points (LASER). False: use them only for the Sim(3) re-fit.
    # A model whose windows are each self-consistent (classical) disagrees with the map per layer by a
    # few % of its own correlated error; copying the map's layer scales then swaps one window's errors
    # for the other's and adds steps at layer edges, while the re-fitted pose keeps all the benefit.
    lsa_depth: bool = True

    def __post_init__(self) -> None:
        checks = {
            f"mode must be one of {', '.join(ALIGN_MODES)}": self.mode in ALIGN_MODES,
            "conf_mode must be 'median_ratio' or 'top_p'": self.conf_mode in ("median_ratio", "top_p"),
            "within_links must be 'warp' or 'pixel'": self.within_links in ("warp", "pixel"),
            "top_p must be in (0, 1]": 0 < self.top_p <= 1,
            "max_correspondences, min_correspondences must be > 0, irls_iterations >= 0": (
                min(self.max_correspondences, self.min_correspondences) > 0 and self.irls_iterations >= 0
            ),
            "huber_delta_rel must be > 0": self.huber_delta_rel > 0,
            "max_layer_scale must be > 1": self.max_layer_scale > 1,
            "scale_bounds must be 0 < lo < hi": 0 < self.scale_bounds[0] < self.scale_bounds[1],
        }
        for message, ok in checks.items():
            if not ok:
                raise ContractError(f"AlignConfig: {message}")


@dataclass
class AlignedWindow:
    """One window mapped into the run's world frame (world = the first window's reference frame)."""

    frame_indices: list[int]
    cam_from_world: torch.Tensor  # [S,4,4] float32
    depth: torch.Tensor  # [S,H,W] z-depth in world units (Sim(3) scale x layer scales)
    conf: torch.Tensor  # [S,H,W]
    world_from_window: Sim3
    layer_labels: torch.Tensor | None  # [S,H,W] int32, -1 = no layer (segmented on this window's depth)
    layer_scales: list[torch.Tensor] | None  # per frame [L_j] float32, on top of the Sim(3) scale
    report: AlignmentReport = field(default_factory=lambda: AlignmentReport("first", 1.0))
    registered: np.ndarray | None = None  # [S] bool: frames the model could place (None: all)
    keypoints: Keypoints | None = None  # the model's sparse points, depth in this window's (mapped) units
    # The model's point map [S,H,W,3] (window frame), its per-pixel layer scale [S,H,W] (None: none) and the
    # camera centres [S,3] (window frame) it scales about: `world_points` maps them on demand, since a run
    # needs a fraction of a window's points in the world (the map fuses new frames on a pixel grid).
    points_window: torch.Tensor | None = None
    scale_map: torch.Tensor | None = None
    centres_window: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.frame_indices)

    def world_points(self, frames: slice = slice(None), stride: int = 1, offset: int = 0) -> torch.Tensor:
        """World points [F,H',W',3] of `frames` on every `stride`-th pixel from (offset, offset): the layer scale
        about each camera centre, then the window's Sim(3)."""
        assert self.points_window is not None
        grid = (frames, slice(offset, None, stride), slice(offset, None, stride))
        points = self.points_window[grid]
        if self.scale_map is not None:
            assert self.centres_window is not None
            c = self.centres_window[frames][:, None, None, :]
            points = torch.addcmul(c, points - c, self.scale_map[grid][..., None])
        sim = self.world_from_window
        if sim.s == 1.0 and bool((np.eye(3) == sim.R).all()) and not np.any(sim.t):
            return points
        sR = torch.as_tensor(sim.s * sim.R, dtype=torch.float32, device=points.device)
        t = torch.as_tensor(sim.t, dtype=torch.float32, device=points.device)
        return torch.addmm(t, points.reshape(-1, 3), sR.T).view(points.shape)

    @property
    def points_world(self) -> torch.Tensor:
        """Every world point [S,H,W,3] (a full pass: prefer `world_points` for a part)."""
        return self.world_points()


@dataclass
class Correspondences:
    """Overlap pixels confident in both windows, on a stride: frame j (0..O-1 within the overlap), pixel
    (v, u); source = the new window's points, target = the map's points; weights sqrt(c_prev c_cur)."""

    frame: torch.Tensor  # [N] int64
    v: torch.Tensor  # [N] int64
    u: torch.Tensor  # [N] int64
    source: torch.Tensor  # [N,3]
    target: torch.Tensor  # [N,3]
    weights: torch.Tensor  # [N]
    num_candidates: int
    stride: int


@dataclass
class WindowFit:
    """How a window joins the previous one: the Sim(3) `sim` (prev_from_cur) and the layer scales on top of
    it. Placing the window (`place_window`) is a separate, full-resolution pass, done once by whoever knows
    where the window ends up (the core: under the pose graph's estimate)."""

    sim: Sim3
    scale_map: torch.Tensor | None  # [S,H,W] per-pixel layer scale of the camera-frame point (None = 1)
    labels: torch.Tensor | None  # [S,H,W] int32 depth layers, -1 = none
    layer_scales: list[torch.Tensor] | None  # per frame [L_j]
    report: AlignmentReport

    def local_depth(self, pred: WindowPrediction, frames: int | slice = slice(None)) -> torch.Tensor:
        """Depth of `frames` of `pred` in the window's own frame: the model's depth times the layer scales."""
        return pred.depth[frames] if self.scale_map is None else pred.depth[frames] * self.scale_map[frames]


@dataclass(frozen=True)
class AlignmentReport:
    """How one window was joined: read by the pose graph (`noise`), summary.json's alignment log and the
    viewer (`brief`). `path`: "first" (the window defines the world), "joint" (rotation from the shared
    cameras, scale measured), "lsa" (joint + layer-wise scale), "inherited_scale" (nothing in the overlap
    measures scale), "pose_fallback" (overlap poses as given), "anchored" / "reanchored" (a causal model's
    step). Fields a path does not reach are None."""

    path: str
    scale: float
    warnings: tuple[str, ...] = ()
    time_ms: float | None = None
    overlap: int | None = None
    num_candidates: int | None = None
    num_correspondences: int | None = None
    stride: int | None = None
    join: dict[str, Any] | None = None  # JoinFit.info: shared cameras, scale sources and conflicts
    noise: dict[str, float] | None = None  # the join's 1-sigma: rot_rad, trans (target units), log_scale
    lsa: dict[str, Any] | None = None  # layer-wise scale: links, layer scales, reached share
    fallback: dict[str, Any] | None = None  # a non-finite fit replaced by the overlap poses
    # The seam: how far the shared cameras, mapped by the fit, land from the map's copies (max rotation, deg;
    # max centre distance / scene depth).
    overlap_pose_error: dict[str, float] | None = None

    def brief(self) -> dict[str, Any]:
        """The join in a few numbers (summary.json's alignment log, the viewer): path, scale, correspondences,
        time, warnings and the seam."""
        brief: dict[str, Any] = {"path": self.path, "scale": self.scale}
        if self.num_correspondences is not None:
            brief["num_correspondences"] = self.num_correspondences
        if self.time_ms is not None:
            brief["time_ms"] = self.time_ms
        brief["warnings"] = list(self.warnings)
        if self.overlap_pose_error is not None:
            brief["seam_rotation_deg"] = self.overlap_pose_error["rotation_deg"]
            brief["seam_offset_rel"] = self.overlap_pose_error["centre_rel"]
        return brief


def registered_frames(w: AlignedWindow | WindowPrediction) -> np.ndarray:
    """[S] bool: frames whose pose the model could determine (a model that says nothing placed all)."""
    return np.ones(len(w), bool) if w.registered is None else np.asarray(w.registered, bool)


def median_depth(depth: torch.Tensor) -> float:
    """Median positive depth of [S,H,W] (1 when there is none), on every 16th pixel: plenty for a scale."""
    d = depth[:, ::4, ::4]
    d = d[d > 0]
    return float(d.median()) if d.numel() else 1.0
