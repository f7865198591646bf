"""Joining a window to the previous one (ARCHITECTURE §4): the Sim(3) `prev_from_cur` that maps the new window's
frame into the previous window's frame through the frames both share (the core composes these joins in
its pose graph; with `prev` None the window defines its own frame).

1. Correspondences: the same pixels of the overlap frames, confident in both windows (VGGT-Long rule:
   confidence > conf_rel x the smaller of the two windows' median confidences; or LASER's top-p),
   weighted sqrt(c_prev c_cur), on a pixel stride that keeps at most `max_correspondences` candidates.
2. Joint fit (`fit_join`): rotation from the shared cameras' orientations in both windows; scale from the
   dense depth ratios of the correspondences (the models' own depths: the layer scales the previous
   window's map points carry are undone, the edge relates the windows' frames), the shared keypoints'
   depth ratios and the ratios of the shared cameras' baselines, combined by their uncertainty;
   translation from the shared camera centres. An overlap that measures no scale
   (empty, low-parallax, rotation-only) inherits it through the shared frames' median depths, flagged —
   the scale never jumps. The fit's uncertainty becomes the pose-graph edge's noise.
3. Layer-wise scale (mode "lsa", as LASER): segment every depth map of the window
   into depth layers; link layers of each overlap frame across the two windows (IoU >= cross_iou); per
   link a robust scale of this window's Sim(3)-aligned depth onto the previous window's depth over the
   two layers' intersection; propagate forward through the window's frames along links between
   consecutive frames (IoU >= within_iou, IoU-weighted mean of the incoming scales; pixels carried to the
   next frame by the window's own points and poses); unreached layers keep the window scale. The
   per-pixel scale multiplies the camera-frame point. With `lsa_refine`, the Sim(3) is re-fitted on the
   layer-corrected points (off by default: it would replace the joint fit's camera rotation by a fit to
   depth). With `lsa_depth` False the layer scales serve only that re-fit.
4. No shared camera placed by both windows and too few confident pixels: the overlap camera poses as
   given (`pose_fallback_sim3`), with a warning.

Outputs keep the window's own point map (`points`) and its depth head (`depth`), mapped by the Sim(3);
`conf` is the window's `points_conf`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from recon.errors import ContractError
from recon.geometry import grid_stride, invert_rigid, rotation_distance_deg
from recon.kernels.layers import LayerLinks, LayerParams, link_layers, link_layers_warped, segment_depth_layers_batch
from recon.kernels.sim3 import robust_log_scale_grouped, robust_sim3
from recon.kernels.umeyama import umeyama_sim3
from recon.registration import ALIGN_MODES, AlignMode
from recon.types import Keypoints, Sim3, WindowPrediction

log = logging.getLogger(__name__)


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
    diagnostics: dict[str, Any] = field(default_factory=dict)
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

    def world_points(self, frames: slice = slice(None), stride: int = 1) -> torch.Tensor:
        """World points [F,H',W',3] of `frames` on every `stride`-th pixel: the layer scale about each camera
        centre, then the window's Sim(3)."""
        assert self.points_window is not None
        points = self.points_window[frames, ::stride, ::stride]
        if self.scale_map is not None:
            assert self.centres_window is not None
            c = self.centres_window[frames][:, None, None, :]
            points = torch.addcmul(c, points - c, self.scale_map[frames, ::stride, ::stride][..., None])
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
    diagnostics: dict[str, Any]


# ------------------------------------------------------------------------------------ entry points
def align_window(
    prev: AlignedWindow | None, cur: WindowPrediction, overlap: int, config: AlignConfig = AlignConfig()
) -> AlignedWindow:
    """Map `cur` into the world of `prev` (its first `overlap` frames are `prev`'s last ones); with
    `prev` None, `cur` defines the world. Never NaN: a degenerate overlap takes the pose fallback."""
    return place_window(cur, fit_window(prev, cur, overlap, config))


def fit_window(
    prev: AlignedWindow | None,
    cur: WindowPrediction,
    overlap: int,
    config: AlignConfig = AlignConfig(),
    layers: WindowLayers | None = None,
) -> WindowFit:
    """The join of `cur` to `prev` (see `align_window`), without placing its points. `layers`: its
    window_layers when worked out beforehand."""
    t0 = time.perf_counter()
    if prev is not None:
        _check_overlap(prev, cur, overlap)
    layers = layers if layers is not None else window_layers(cur, config)
    labels = layers.labels if layers is not None else None
    num_layers = _num_layers(labels) if labels is not None else None  # [S]
    layer_scales = [torch.ones(n) for n in num_layers.tolist()] if num_layers is not None else None
    if prev is None:
        first = {"path": "first", "warnings": [], "scale": 1.0, "time_ms": 1e3 * (time.perf_counter() - t0)}
        return WindowFit(Sim3.identity(), None, labels, layer_scales, first)
    dev = cur.depth.device
    warnings: list[str] = []
    diag: dict[str, Any] = {"warnings": warnings, "overlap": overlap}

    corr = select_correspondences(prev, cur, overlap, config)
    diag.update(num_candidates=corr.num_candidates, num_correspondences=int(corr.weights.shape[0]), stride=corr.stride)
    join = fit_join(prev, cur, overlap, corr, config)
    sim = join.sim
    diag.update(path=join.path, join=join.info, noise=join.noise)
    if join.warning is not None:
        message = f"window {cur.frame_indices[0]}..{cur.frame_indices[-1]}: {join.warning}"
        log.warning(message)
        warnings.append(message)

    scale_map = None
    n = int(corr.weights.shape[0])
    if (
        layers is not None
        and labels is not None
        and num_layers is not None
        and join.path == "joint"
        and n >= config.min_correspondences
    ):
        scene_depth = float(prev.depth[-overlap:].to(dev)[corr.frame, corr.v, corr.u].median())
        delta = config.huber_delta_rel * max(scene_depth, 1e-12)
        try:
            sim, scale_map, layer_scales, lsa_diag = _layer_scale_alignment(
                prev, cur, overlap, corr, sim, layers, num_layers, delta, config, warnings
            )
            diag["path"] = "lsa"
            diag["lsa"] = lsa_diag
            if not config.lsa_depth:
                scale_map = None
                layer_scales = [torch.ones_like(k) for k in layer_scales]
        except Exception as exc:
            message = f"layer-wise scale alignment failed ({type(exc).__name__}: {exc}); kept the joint fit"
            log.warning(message)
            warnings.append(message)
    if not _finite(sim, scale_map):  # cannot happen with finite inputs; never hand NaN downstream regardless
        message = "non-finite alignment; using the overlap camera poses"
        log.warning(message)
        warnings.append(message)
        sim, info = pose_fallback_sim3(prev, cur, overlap, config)
        diag.update(path="pose_fallback", fallback=info)
        scale_map, layer_scales = None, [torch.ones_like(s) for s in layer_scales] if layer_scales else None
    diag["scale"] = sim.s
    diag["overlap_pose_error"] = _overlap_pose_error(prev, cur, sim, overlap)
    diag["time_ms"] = 1e3 * (time.perf_counter() - t0)
    return WindowFit(sim, scale_map, labels, layer_scales, diag)


def anchored_fit(world_from_anchor: Sim3 | None = None) -> WindowFit:
    """A streaming model's prediction is in its anchor frame's coordinates: nothing to fit. The anchor is
    the world (None), or sits at `world_from_anchor` (a stream re-anchored mid-run)."""
    sim = Sim3.identity() if world_from_anchor is None else world_from_anchor
    return WindowFit(sim, None, None, None, {"path": "anchored", "warnings": [], "scale": sim.s})


def place_window(
    cur: WindowPrediction, fit: WindowFit, target_from_window: Sim3 | None = None, frames: slice = slice(None)
) -> AlignedWindow:
    """Frames `frames` of `cur` mapped by the layer scales and then by `target_from_window` (default:
    the fit's own Sim(3), i.e. into the previous window's frame). Poses and depth are mapped now; the
    points on demand (`AlignedWindow.world_points`). With no scale map and the identity the prediction's
    tensors are shared, not copied (read-only by contract)."""
    sim = fit.sim if target_from_window is None else target_from_window
    first, stop, _ = frames.indices(len(cur))
    dev = cur.depth.device
    depth = cur.depth[frames]
    scale_map = None if fit.scale_map is None else fit.scale_map[frames]
    identity = sim.s == 1.0 and bool((np.eye(3) == sim.R).all()) and not np.any(sim.t)
    window_from_cam = invert_rigid(cur.cam_from_world[frames].double().cpu().numpy())
    if identity and scale_map is None:
        cam_from_world = cur.cam_from_world[frames]
    else:
        cam_from_world = (
            torch.from_numpy(sim.apply_to_cam_from_world(cur.cam_from_world[frames].double().cpu().numpy()))
            .float()
            .to(dev)
        )
        depth = depth * sim.s
        if scale_map is not None:
            depth = depth.mul_(
                scale_map
            )  # k x the camera-frame point == scaling the window point about the camera centre
    return AlignedWindow(
        frame_indices=list(cur.frame_indices[frames]),
        cam_from_world=cam_from_world,
        depth=depth,
        conf=cur.points_conf[frames],
        world_from_window=sim,
        layer_labels=None if fit.labels is None else fit.labels[frames],
        layer_scales=None if fit.layer_scales is None else fit.layer_scales[frames],
        diagnostics=fit.diagnostics,
        registered=registered_frames(cur)[frames],
        keypoints=None if cur.keypoints is None else cur.keypoints.select_frames(first, stop, sim.s),
        points_window=cur.points[frames],
        scale_map=scale_map,
        centres_window=torch.from_numpy(window_from_cam[:, :3, 3]).float().to(dev),
    )


# -------------------------------------------------------------------------------------- pieces
def _check_overlap(prev: AlignedWindow, cur: WindowPrediction, overlap: int) -> None:
    if not 1 <= overlap <= min(len(prev), len(cur)):
        raise ContractError(
            f"align_window: overlap {overlap} must be in 1..{min(len(prev), len(cur))} (frames of both windows)"
        )
    if list(prev.frame_indices[-overlap:]) != list(cur.frame_indices[:overlap]):
        raise ContractError(
            f"align_window: the first {overlap} frames of the new window {cur.frame_indices[:overlap]} must be the last "
            f"{overlap} of the previous window {prev.frame_indices[-overlap:]}"
        )
    if tuple(prev.depth.shape[1:]) != tuple(cur.depth.shape[1:]):
        raise ContractError(
            f"align_window: windows have different resolutions {tuple(prev.depth.shape[1:])} vs {tuple(cur.depth.shape[1:])}; "
            "overlap frames must be predicted at the same size"
        )


def median_depth(depth: torch.Tensor) -> float:
    """Median positive depth of [S,H,W] (1 when there is none), on every 16th pixel: plenty for a scale."""
    d = depth[:, ::4, ::4]
    d = d[d > 0]
    return float(d.median()) if d.numel() else 1.0


def _num_layers(labels: torch.Tensor) -> torch.Tensor:
    """Layers per frame [S] (int64) of label maps [S,H,W] (labels 0..L-1, -1 = none)."""
    return (labels.flatten(1).amax(1).long() + 1).clamp_min(0)


@dataclass
class WindowLayers:
    """A window's depth layers and the links between the layers of its consecutive frames: they depend on
    that window alone, so they can be worked out beforehand, beside the joins of earlier windows."""

    labels: torch.Tensor  # [S,H,W] int32, -1 = no layer
    within: LayerLinks | None  # consecutive frames' layers (None: a one-frame window)


def window_layers(cur: WindowPrediction, config: AlignConfig) -> WindowLayers | None:
    """None unless the mode is "lsa"."""
    if config.mode != "lsa":
        return None
    labels = torch.from_numpy(segment_depth_layers_batch(cur.depth, cur.depth_conf, config.layers)).to(cur.depth.device)
    if len(cur) == 1:
        return WindowLayers(labels, None)
    iou_stride = grid_stride(labels.shape[1] * labels.shape[2], config.iou_pixels)
    if config.within_links == "warp":
        within = link_layers_warped(
            labels, cur.points, cur.cam_from_world, cur.K, config.within_iou, iou_stride, num_layers=_num_layers(labels)
        )
    else:
        within = link_layers(labels[:-1], labels[1:], config.within_iou, iou_stride)
    return WindowLayers(labels, within)


def _conf_threshold(
    c_prev: torch.Tensor, c_cur: torch.Tensor, config: AlignConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window thresholds (strict >) for the candidate confidences [M] of both windows."""
    # Quantiles from every 4th candidate: thresholds need not be exact, and selection is ~n log n.
    c_prev, c_cur = c_prev[::4], c_cur[::4]
    if config.conf_mode == "top_p":
        k = max(1, int(round((1.0 - config.top_p) * c_prev.numel())))
        return torch.kthvalue(c_prev, k).values, torch.kthvalue(c_cur, k).values
    thr = config.conf_rel * torch.minimum(c_prev.median(), c_cur.median())
    return thr, thr


def select_correspondences(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, config: AlignConfig
) -> Correspondences:
    """Overlap pixels (on a stride) confident in both windows with positive depth in both."""
    dev = cur.depth.device
    O = overlap
    H, W = cur.hw
    stride = grid_stride(O * H * W, config.max_correspondences)
    o = stride // 2  # centred grid, so a stride of 8 does not always skip the last rows/cols
    sl = (slice(None), slice(o, None, stride), slice(o, None, stride))
    # One strided gather per map into contiguous [O*hs*ws] vectors; everything after is contiguous.
    c_prev = prev.conf[-O:].to(dev)[sl].reshape(-1)
    c_cur = cur.points_conf[:O][sl].reshape(-1)
    d_prev = prev.depth[-O:].to(dev)[sl].reshape(-1)
    d_cur = cur.depth[:O][sl].reshape(-1)
    hs, ws = cur.points_conf[:1][sl].shape[1:]
    thr_prev, thr_cur = _conf_threshold(c_prev, c_cur, config)
    keep = (c_prev > thr_prev) & (c_cur > thr_cur) & (d_prev > 0) & (d_cur > 0)
    idx = torch.nonzero(keep).squeeze(1)  # into the strided grid [O*hs*ws]
    frame, rest = idx.div(hs * ws, rounding_mode="floor"), idx.remainder(hs * ws)
    v = rest.div(ws, rounding_mode="floor") * stride + o
    u = rest.remainder(ws) * stride + o
    source = cur.points[:O][sl].reshape(-1, 3).index_select(0, idx)
    target = prev.world_points(slice(len(prev) - O, None)).to(dev)[sl].reshape(-1, 3).index_select(0, idx)
    weights = torch.sqrt(c_prev.index_select(0, idx) * c_cur.index_select(0, idx))
    return Correspondences(frame, v, u, source, target, weights, num_candidates=O * hs * ws, stride=stride)


@dataclass(frozen=True)
class JoinFit:
    """`sim`: prev_frame_from_cur_frame (target = the previous window's frame). `noise`: 1-sigma
    rotation (rad), translation (target units) and log-scale of that fit, for the pose graph edge.
    `path`: "joint" (rotation from the shared cameras, scale measured), "inherited_scale" (nothing in
    the overlap measures scale: the shared frames' median depths carry it over) or "pose_fallback"
    (no shared camera is placed by both windows and too few confident pixels: overlap poses as given)."""

    sim: Sim3
    noise: dict[str, float]
    path: str
    info: dict[str, Any]
    warning: str | None = None


def registered_frames(w: AlignedWindow | WindowPrediction) -> np.ndarray:
    """[S] bool: frames whose pose the model could determine (a model that says nothing placed all)."""
    if isinstance(w, AlignedWindow):
        return np.ones(len(w), bool) if w.registered is None else np.asarray(w.registered, bool)
    reg = w.info.get("registered")
    return np.ones(len(w), bool) if reg is None else np.asarray(reg, bool)


def _rotation_mean(R: np.ndarray, outlier_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust chordal mean of rotations [N,3,3]: those further than `outlier_deg` (or 3x the median
    spread) from the first mean are dropped. -> (R [3,3], kept [N] bool)."""
    from scipy.spatial.transform import Rotation

    mean = Rotation.from_matrix(R).mean()
    dev = np.degrees((Rotation.from_matrix(R) * mean.inv()).magnitude())
    kept = dev <= max(outlier_deg, 3.0 * float(np.median(dev)))
    if not kept.any():
        kept = dev <= dev.min()
    return Rotation.from_matrix(R[kept]).mean().as_matrix(), kept


def _log_location(v: np.ndarray, w: np.ndarray, delta: float, iterations: int = 10) -> tuple[float, float]:
    """Huber IRLS location of values v [N] with weights w -> (location, robust spread = 1.4826 MAD)."""
    m = float(np.average(v, weights=w))
    for _ in range(iterations):
        r = np.abs(v - m)
        m = float(np.average(v, weights=w * np.minimum(1.0, delta / np.maximum(r, 1e-12))))
    return m, 1.4826 * float(np.median(np.abs(v - m)))


def _consistent_sources(sources: dict[str, tuple[float, float]], n_sigma: float) -> list[str]:
    """The largest subset of scale sources (log s, sigma) whose every pair agrees within n_sigma combined
    sigmas (or 5%). Among equally large subsets, the one whose members agree best (smallest chi-square
    about their weighted mean): a loose source that agrees with two tight ones that disagree with each
    other sides with the one it is closer to. Then the smallest combined sigma."""
    from itertools import combinations

    def agree(a: str, b: str) -> bool:
        (m1, s1), (m2, s2) = sources[a], sources[b]
        return abs(m1 - m2) <= max(n_sigma * np.hypot(s1, s2), 0.05)

    def chi2_then_sigma(subset: Iterable[str]) -> tuple[float, float]:
        c = list(subset)
        w = np.array([sources[k][1] ** -2 for k in c])
        m = np.array([sources[k][0] for k in c])
        mean = float(w @ m / w.sum())
        return float(w @ (m - mean) ** 2), 1.0 / float(np.sqrt(w.sum()))

    names = sorted(sources)
    for size in range(len(names), 0, -1):
        sets: list[tuple[str, ...]] = [
            c for c in combinations(names, size) if all(agree(a, b) for a, b in combinations(c, 2))
        ]
        if sets:
            return list(min(sets, key=chi2_then_sigma))
    return []


def _track_log_ratios(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, config: AlignConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """log(depth_prev / depth_cur) of the keypoints both windows placed at the same pixel (within
    `join_keypoint_px`) of a shared frame, with weights; None when fewer than `min_join_keypoints`."""
    if prev.keypoints is None or cur.keypoints is None:
        return None
    first = len(prev) - overlap
    a, b = prev.keypoints.select_frames(first, len(prev)), cur.keypoints.select_frames(0, overlap)
    ratios, weights = [], []
    for j in range(overlap):
        ua, da = a.uv[a.frame == j], a.depth[a.frame == j]
        ub, db = b.uv[b.frame == j], b.depth[b.frame == j]
        if not len(ua) or not len(ub):
            continue
        dist, nearest = cKDTree(ub).query(ua, distance_upper_bound=config.join_keypoint_px)
        close = np.isfinite(dist)
        ratios.append(np.log(da[close] / db[nearest[close]]))
        # A triangulated depth's error grows with depth squared (relative: with depth): near corners weigh more.
        weights.append(1.0 / (da[close] * da[close]))
    v = np.concatenate(ratios) if ratios else np.zeros(0)
    w = np.concatenate(weights) if weights else np.zeros(0)
    ok = np.isfinite(v) & np.isfinite(w)
    return (v[ok], w[ok] / w[ok].max()) if ok.sum() >= config.min_join_keypoints else None


def fit_join(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, corr: Correspondences, config: AlignConfig
) -> JoinFit:
    """The Sim(3) mapping `cur`'s frame into `prev`'s from every constraint the shared frames offer:
    - rotation: the shared cameras' orientations in both windows (far better than a fit to noisy depth);
    - scale: the depth ratios of the keypoints both windows placed at the same corners of a shared frame
      (consistent with the windows' own poses), dense depth ratios of the same pixels (confident in
      both), and the ratios of the camera baselines between shared frames, combined by their
      uncertainty (the largest set that agrees decides; a source outside it is dropped); when none measures it (an
      empty, low-parallax or rotation-only overlap) the scale is inherited from the median depths of
      the shared frames and flagged, so it never jumps;
    - translation: the shared camera centres under that rotation and scale."""
    O = overlap
    reg = registered_frames(prev)[-O:] & registered_frames(cur)[:O]
    prev_from_cam = invert_rigid(prev.cam_from_world[-O:].double().cpu().numpy())
    cur_from_cam = invert_rigid(cur.cam_from_world[:O].double().cpu().numpy())
    d_prev_all = prev.depth[-O:].to(cur.depth.device)
    scene_depth = median_depth(d_prev_all)
    info: dict[str, Any] = {"shared_cameras": int(reg.sum())}
    n = int(corr.weights.shape[0])

    # Rotation.
    if reg.any():
        R_each = prev_from_cam[reg, :3, :3] @ cur_from_cam[reg, :3, :3].transpose(0, 2, 1)
        R, kept = _rotation_mean(R_each, config.join_rotation_outlier_deg)
        spread = np.radians(rotation_distance_deg(R_each[kept], np.broadcast_to(R, R_each[kept].shape)))
        sigma_rot = max(float(np.sqrt(np.mean(spread**2))) / np.sqrt(kept.sum()), np.radians(0.05))
        info["rotation_spread_deg"] = float(np.degrees(spread.max()))
    elif n >= config.min_correspondences:
        fit_sim, _ = robust_sim3(
            corr.source, corr.target, corr.weights, config.huber_delta_rel * scene_depth, config.irls_iterations
        )
        R, sigma_rot = fit_sim.R, np.radians(1.0)
        info["rotation_from"] = "dense points"
    else:
        # A break in the stream (no view the two windows share: a jump the model could not cross): the
        # overlap poses are a guess, and a loose one, so that a relocalisation (a loop edge) overrides it.
        sim, fb = pose_fallback_sim3(prev, cur, overlap, config)
        noise = {"rot_rad": np.radians(30.0), "trans": 2.0 * scene_depth, "log_scale": 1.0}
        return JoinFit(
            sim,
            noise,
            "pose_fallback",
            {**info, "fallback": fb},
            "no shared camera placed by both windows and too few confident pixels; using the overlap camera poses",
        )

    # Scale: each source gives (log s, sigma).
    sources: dict[str, tuple[float, float]] = {}
    if n >= config.min_correspondences:
        d_prev = prev.depth[-O:].to(cur.depth.device)[corr.frame, corr.v, corr.u]
        if prev.layer_scales is not None and prev.layer_labels is not None:
            # The edge relates the two windows' frames, where their cameras live: compare the model's own
            # depths, without the layer scales the previous window's map points carry.
            labels = prev.layer_labels[-O:].to(d_prev.device)[corr.frame, corr.v, corr.u]
            d_prev = d_prev / _scale_lookup(prev.layer_scales[-O:], labels, corr.frame)
        z_prev = d_prev.double().cpu().numpy()
        z_cur = cur.depth[:O][corr.frame, corr.v, corr.u].double().cpu().numpy()
        ok = (z_prev > 0) & (z_cur > 0)
        if ok.sum() >= config.min_correspondences:
            v = np.log(z_prev[ok] / z_cur[ok])
            m, spread = _log_location(v, corr.weights.double().cpu().numpy()[ok], config.scale_huber_delta)
            frames_used = len(np.unique(corr.frame.cpu().numpy()[ok]))
            n_eff = min(int(ok.sum()), config.join_dense_max_samples * frames_used)
            # Dense errors are correlated across pixels (one frame's depth can be off as a whole): a floor
            # above the keypoints', whose depths are tied to the window's own cameras by its bundle adjustment.
            sources["dense"] = (m, max(spread / np.sqrt(n_eff), 0.005))
    if (tracks := _track_log_ratios(prev, cur, O, config)) is not None:
        v, w = tracks
        m, spread = _log_location(v, w, config.scale_huber_delta)
        n_eff = min(float(w.sum() ** 2 / (w**2).sum()), config.join_dense_max_samples * O)  # Kish effective size
        # Floor: the triangulation error of a window's corners in its edge frames is shared by all of them
        # (measured on sharp turns: ~10% off while dense depth and baselines agreed with the truth).
        sources["tracks"] = (m, max(spread / np.sqrt(n_eff), config.join_keypoint_log_sigma_floor))
    idx = np.nonzero(reg)[0]
    if len(idx) >= 2:
        c_prev, c_cur = prev_from_cam[idx, :3, 3], cur_from_cam[idx, :3, 3]
        i, j = np.triu_indices(len(idx), 1)
        b_prev = np.linalg.norm(c_prev[i] - c_prev[j], axis=1)
        b_cur = np.linalg.norm(c_cur[i] - c_cur[j], axis=1)
        use = (b_prev > config.join_min_baseline_rel * scene_depth) & (b_cur > 0)
        if use.any():
            v = np.log(b_prev[use] / b_cur[use])
            sig = config.join_pose_noise_rel * scene_depth / b_prev[use]
            m, _ = _log_location(v, 1.0 / sig**2, 0.05)
            # Pairs share cameras: their errors are not independent, so the tightest pair is the sigma.
            sources["baseline"] = (m, max(float(sig.min()), 0.002))
    info["scale_sources"] = {k: {"scale": float(np.exp(m)), "log_sigma": sg} for k, (m, sg) in sources.items()}

    path, warning = "joint", None
    if sources:
        # The largest set of sources that agree with each other decides (ties: the best-agreeing set); a
        # source outside it is dropped and reported. One source alone can be wrong in either direction: a window's
        # dense depth off in its edge frames, or its keypoints badly triangulated there.
        agreeing = _consistent_sources(sources, config.join_scale_conflict)
        for k in sorted(set(sources) - set(agreeing)):
            info.setdefault("scale_conflict", []).append(
                f"{k} {np.exp(sources[k][0]):.4g} disagrees with {'+'.join(agreeing)}: kept {'+'.join(agreeing)}"
            )
        weight = {k: 1.0 / sources[k][1] ** 2 for k in agreeing}
        log_s = sum(weight[k] * sources[k][0] for k in agreeing) / sum(weight.values())
        sigma_log_s = 1.0 / np.sqrt(sum(weight.values()))
    else:
        d_cur_all = cur.depth[:O]
        both = (d_prev_all > 0) & (d_cur_all > 0)
        log_s = float(torch.log(d_prev_all[both] / d_cur_all[both]).median()) if bool(both.any()) else 0.0
        sigma_log_s = config.inherited_log_scale_sigma
        path = "inherited_scale"
        warning = "no confident depth, shared keypoint or baseline in the overlap measures scale; inherited it through the shared frames"
    s = float(np.exp(np.clip(log_s, *np.log(config.scale_bounds))))

    # Translation: the shared centres (or, without any, the confident points) under R and s.
    if reg.any():
        res = prev_from_cam[reg, :3, 3] - s * (cur_from_cam[reg, :3, 3] @ R.T)
        t = np.median(res, axis=0) if len(res) >= 3 else res.mean(0)
        sigma_t = max(float(np.sqrt(((res - t) ** 2).sum(1).mean())) / np.sqrt(len(res)), 1e-3 * scene_depth)
    else:
        w_pts = corr.weights.double().cpu().numpy()
        res = corr.target.double().cpu().numpy() - s * (corr.source.double().cpu().numpy() @ R.T)
        t = (w_pts[:, None] * res).sum(0) / max(w_pts.sum(), 1e-12)
        sigma_t = 0.05 * scene_depth
    info["scale"] = s
    noise = {"rot_rad": float(sigma_rot), "trans": float(sigma_t), "log_scale": float(sigma_log_s)}
    return JoinFit(Sim3(s, R, t), noise, path, info, warning)


def pose_fallback_sim3(
    prev: AlignedWindow, cur: WindowPrediction, overlap: int, config: AlignConfig
) -> tuple[Sim3, dict[str, Any]]:
    """`world_from_window` from the overlap camera poses alone: 3 points per camera (centre, centre +
    arm x viewing direction, centre + arm x up) so rotation is defined even for one camera or collinear
    centres. Scale: ratio of the centres' spreads when the window's baseline is non-negligible, else the
    median ratio of the two windows' positive depths over the overlap, else 1."""
    O = overlap
    world_from_cam_prev = invert_rigid(prev.cam_from_world[-O:].double().cpu().numpy())  # [O,4,4]
    window_from_cam_cur = invert_rigid(cur.cam_from_world[:O].double().cpu().numpy())
    c_world = world_from_cam_prev[:, :3, 3]
    c_win = window_from_cam_cur[:, :3, 3]
    spread_world = float(np.sqrt(((c_world - c_world.mean(0)) ** 2).sum(1).mean()))
    spread_win = float(np.sqrt(((c_win - c_win.mean(0)) ** 2).sum(1).mean()))
    d_prev = prev.depth[-O:].to(cur.depth.device)
    d_cur = cur.depth[:O]
    both = (d_prev > 0) & (d_cur > 0)
    depth_win = float(d_cur[d_cur > 0].median()) if bool((d_cur > 0).any()) else 0.0
    depth_world = float(d_prev[d_prev > 0].median()) if bool((d_prev > 0).any()) else 0.0

    if O >= 2 and spread_world > 0 and spread_win > max(config.fallback_min_baseline_rel * depth_win, 1e-12):
        s, source = spread_world / spread_win, "baseline"
    elif int(both.sum()) >= config.min_correspondences:
        s, source = float((d_prev[both] / d_cur[both]).median()), "depth_ratio"
    else:
        s, source = 1.0, "unit"
    lo, hi = config.scale_bounds
    if not (np.isfinite(s) and lo <= s <= hi):
        s, source = 1.0, "unit"

    arm = depth_world if depth_world > 0 else (spread_world if spread_world > 0 else 1.0)
    view_world, up_world = world_from_cam_prev[:, :3, 2], -world_from_cam_prev[:, :3, 1]  # OpenCV: +z view, -y up
    view_win, up_win = window_from_cam_cur[:, :3, 2], -window_from_cam_cur[:, :3, 1]
    target = np.concatenate([c_world, c_world + arm * view_world, c_world + arm * up_world])
    source_pts = np.concatenate([s * c_win, s * c_win + arm * view_win, s * c_win + arm * up_win])
    rigid = umeyama_sim3(source_pts, target, with_scale=False)  # target = R (s x) + t
    return Sim3(s, rigid.R, rigid.t), {
        "scale_source": source,
        "baseline_world": spread_world,
        "baseline_window": spread_win,
    }


def _layer_scale_alignment(
    prev: AlignedWindow,
    cur: WindowPrediction,
    overlap: int,
    corr: Correspondences,
    sim: Sim3,
    layers: WindowLayers,
    num_layers: torch.Tensor,
    delta: float,
    config: AlignConfig,
    warnings: list[str],
) -> tuple[Sim3, torch.Tensor, list[torch.Tensor], dict[str, Any]]:
    """LSA on top of `sim`. Returns the (possibly re-fitted) Sim(3), the per-pixel scale [S,H,W], the
    per-frame layer scales and diagnostics. num_layers [S]: layers per frame of `layers`."""
    labels, within = layers.labels, layers.within
    dev = cur.depth.device
    O = overlap
    t0 = time.perf_counter()
    prev_labels = prev.layer_labels[-O:].to(dev) if prev.layer_labels is not None else None
    if prev_labels is None:  # previous window aligned without LSA: segment its overlap frames now
        prev_labels = torch.from_numpy(segment_depth_layers_batch(prev.depth[-O:], prev.conf[-O:], config.layers)).to(
            dev
        )
    iou_stride = grid_stride(labels.shape[1] * labels.shape[2], config.iou_pixels)
    cross = link_layers(prev_labels, labels[:O], config.cross_iou, iou_stride)

    # Each correspondence sample belongs to at most one cross link: (frame, prev layer, cur layer).
    la = prev_labels[corr.frame, corr.v, corr.u].long()
    lb = labels[:O][corr.frame, corr.v, corr.u].long()
    nb = cross.num_b.to(dev)
    na = cross.num_a.to(dev)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), (na * nb).cumsum(0)[:-1]])
    table = torch.full((int((na * nb).sum()) + 1,), -1, dtype=torch.int64, device=dev)  # +1: a dump slot
    table[offsets[cross.pair] + cross.a * nb[cross.pair] + cross.b] = torch.arange(len(cross), device=dev)
    ok = (la >= 0) & (lb >= 0)
    slot = torch.where(ok, offsets[corr.frame] + la.clamp_min(0) * nb[corr.frame] + lb.clamp_min(0), table.shape[0] - 1)
    group = table[slot]
    d_prev = prev.depth[-O:].to(dev)[corr.frame, corr.v, corr.u]
    d_cur = cur.depth[:O][corr.frame, corr.v, corr.u]
    centres = (
        torch.from_numpy(invert_rigid(cur.cam_from_world.double().cpu().numpy())[:, :3, 3]).float().to(dev)
    )  # [S,3]

    refine_rounds = 1 if config.lsa_refine else 0
    for round_ in range(refine_rounds + 1):
        link_scale, support = robust_log_scale_grouped(
            sim.s * d_cur, d_prev, corr.weights, group, len(cross), config.scale_huber_delta, config.scale_iterations
        )
        good = support >= config.min_link_samples
        frame_scales, reached = _propagate(cross, within, link_scale, good, num_layers.tolist(), O)
        frame_scales, clamped = _clamp_scales(frame_scales, config.max_layer_scale)
        if round_ == refine_rounds:
            break
        # Re-fit the Sim(3) on layer-corrected points: scaling the camera-frame point by k is scaling
        # the window point about the camera centre, p' = c + k (p - c).
        k = _scale_lookup(frame_scales[:O], labels[:O][corr.frame, corr.v, corr.u], corr.frame)
        c = centres[corr.frame]
        src = c + k[:, None] * (corr.source - c)
        sim2, fit2 = robust_sim3(src, corr.target, corr.weights, delta, config.irls_iterations)
        if not (fit2.valid and config.scale_bounds[0] <= sim2.s <= config.scale_bounds[1]):
            warnings.append("LSA re-fit of the Sim(3) was degenerate; kept the first fit")
            break
        sim = sim2
    if clamped:
        warnings.append(f"{clamped} layer scales clamped to [1/{config.max_layer_scale}, {config.max_layer_scale}]")

    # One gather for the whole window (the tables share their layout: one index serves both).
    scales, start = _layer_table(frame_scales, 1.0, dev)
    index = labels + (start[:, None, None] + 1)
    scale_map = torch.index_select(scales, 0, index.flatten()).view(labels.shape)
    # A diagnostic, on every 16th pixel: the share of labelled pixels whose layer got a scale.
    reached_flags, _ = _layer_table(reached, 0.0, dev)
    labelled_px = int((labels[:, ::4, ::4] >= 0).sum())
    reached_px = int(torch.index_select(reached_flags, 0, index[:, ::4, ::4].flatten()).sum())
    diag = {
        "layers_per_frame": [int(s.numel()) for s in frame_scales],
        "cross_links": [
            {"frame": p, "prev_layer": a, "layer": b, "iou": i, "scale": k, "samples": int(n)}
            for p, a, b, i, k, n in zip(
                cross.pair.tolist(),
                cross.a.tolist(),
                cross.b.tolist(),
                cross.iou.tolist(),
                link_scale.tolist(),
                support.tolist(),
                strict=True,
            )
        ],
        "within_links": 0 if within is None else len(within),
        "layer_scales": [s.tolist() for s in frame_scales],
        "reached_layers": [int(r.sum()) for r in reached],
        "reached_share": reached_px / max(labelled_px, 1),  # labelled pixels whose layer got a scale
        "refined": config.lsa_refine,
        "time_ms": 1e3 * (time.perf_counter() - t0),
    }
    return sim, scale_map, frame_scales, diag


def _propagate(
    cross: LayerLinks,
    within: LayerLinks | None,
    link_scale: torch.Tensor,
    good: torch.Tensor,
    num_layers: list[int],
    overlap: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward in time: each layer's scale is the IoU-weighted mean of what reaches it — cross-window
    links (overlap frames) and links from reached layers of the previous frame; unreached: 1.
    Returns per frame the layer scales [L_j] and which layers were reached [L_j] bool (CPU)."""
    S = len(num_layers)
    scales: list[torch.Tensor] = []
    reached_all: list[torch.Tensor] = []
    reached_prev: torch.Tensor | None = None
    for j in range(S):
        n = num_layers[j]
        num = torch.zeros(max(n, 0), dtype=torch.float64)
        den = torch.zeros(max(n, 0), dtype=torch.float64)
        if j < overlap and len(cross):
            m = (cross.pair == j).cpu() & good.cpu()
            b, iou = cross.b.cpu()[m], cross.iou.cpu()[m].double()
            num.index_add_(0, b, iou * link_scale.cpu()[m].double())
            den.index_add_(0, b, iou)
        if j > 0 and within is not None and len(within) and reached_prev is not None:
            m = within.pair.cpu() == j - 1
            a, b, iou = within.a.cpu()[m], within.b.cpu()[m], within.iou.cpu()[m].double()
            use = reached_prev[a]
            num.index_add_(0, b[use], iou[use] * scales[j - 1][a[use]].double())
            den.index_add_(0, b[use], iou[use])
        reached = den > 0
        scales.append(torch.where(reached, num / den.clamp_min(1e-30), torch.ones_like(num)).float())
        reached_all.append(reached)
        reached_prev = reached
    return scales, reached_all


def _clamp_scales(scales: list[torch.Tensor], max_scale: float) -> tuple[list[torch.Tensor], int]:
    clamped = sum(int(((s > max_scale) | (s < 1.0 / max_scale)).sum()) for s in scales)
    return [s.clamp(1.0 / max_scale, max_scale) for s in scales], clamped


def _layer_table(per_frame: list[torch.Tensor], none: float, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer values of every frame in one flat table, each frame's run led by the value of its
    unlabelled pixels: (table, start [S] int32); a pixel of frame j with label l (-1: none) reads
    table[start[j] + 1 + l]."""
    table = torch.cat([t for v in per_frame for t in (torch.full((1,), none), v.float().cpu())]).to(dev)
    sizes = torch.tensor([len(v) + 1 for v in per_frame], dtype=torch.int64)
    start = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]]).to(dev, torch.int32)
    return table, start


def _scale_lookup(frame_scales: list[torch.Tensor], layer: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Scale of each sample [N] given its layer (-1: 1) and frame."""
    table, start = _layer_table(frame_scales, 1.0, layer.device)
    return table[(start[frame] + 1 + layer).long()]


def _overlap_pose_error(prev: AlignedWindow, cur: WindowPrediction, sim: Sim3, overlap: int) -> dict[str, float]:
    """How far the overlap cameras mapped by `sim` are from the map's copies: max rotation (deg) and max
    centre distance relative to the map's median overlap depth — the trajectory's continuity at the seam."""
    a = invert_rigid(prev.cam_from_world[-overlap:].double().cpu().numpy())
    b = invert_rigid(sim.apply_to_cam_from_world(cur.cam_from_world[:overlap].double().cpu().numpy()))
    rot = rotation_distance_deg(a[:, :3, :3], b[:, :3, :3])
    dist = np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=1)
    ref = median_depth(prev.depth[-overlap:])
    return {"rotation_deg": float(rot.max()), "centre_rel": float(dist.max() / max(ref, 1e-12))}


def _finite(sim: Sim3, scale_map: torch.Tensor | None) -> bool:
    # A sum of finite values is finite (barring overflow, which the exact check then settles).
    return bool(np.isfinite(sim.matrix()).all()) and (
        scale_map is None or bool(torch.isfinite(scale_map.sum())) or bool(torch.isfinite(scale_map).all())
    )
