"""Depth accuracy against ground truth: AbsRel, SqRel, RMSE and the δ < 1.25^k inlier ratios, with the
prediction scale-aligned per frame (median ratio), per sequence (one median ratio) or not at all.

Pixels evaluated: finite ground truth > 0, at most `max_depth_m`, inside the optional mask. A prediction
that is missing there (non-finite or <= 0) counts as depth 0 -- AbsRel 1, never a δ inlier -- so leaving
holes cannot improve a score; `pred_coverage` reports how many there were."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

ScaleMode = Literal["sequence", "frame", "none"]
SCALE_MODES: tuple[str, ...] = get_args(ScaleMode)


@dataclass(frozen=True)
class DepthStats:
    abs_rel: float
    sq_rel: float
    rmse: float  # ground-truth units
    delta1: float  # fraction of pixels with max(pred/gt, gt/pred) < 1.25
    delta2: float  # ... < 1.25^2
    delta3: float  # ... < 1.25^3
    num_pixels: int
    pred_coverage: float  # fraction of evaluated pixels with a valid (finite, > 0) prediction


@dataclass(frozen=True, eq=False)
class DepthEvaluation:
    per_frame: tuple[DepthStats, ...]
    scales: np.ndarray  # [F] factor applied to each frame's prediction (NaN where a frame had no pixels)
    mean: DepthStats  # average of the per-frame numbers over frames with pixels (num_pixels: their sum)
    pooled: DepthStats  # all frames' pixels as one set
    scale_mode: ScaleMode
    max_depth_m: float | None
    num_frames_evaluated: int


@dataclass
class _Sums:
    """Running sums from which DepthStats follow: pooling frames is adding these."""

    n: int = 0
    n_pred: int = 0
    abs_rel: float = 0.0
    sq_rel: float = 0.0
    sq_err: float = 0.0
    d1: int = 0
    d2: int = 0
    d3: int = 0

    def add(self, other: _Sums) -> None:
        for name in ("n", "n_pred", "abs_rel", "sq_rel", "sq_err", "d1", "d2", "d3"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def stats(self) -> DepthStats:
        if self.n == 0:
            nan = float("nan")
            return DepthStats(nan, nan, nan, nan, nan, nan, 0, nan)
        n = float(self.n)
        return DepthStats(
            self.abs_rel / n,
            self.sq_rel / n,
            float(np.sqrt(self.sq_err / n)),
            self.d1 / n,
            self.d2 / n,
            self.d3 / n,
            self.n,
            self.n_pred / n,
        )


def _valid_gt(gt_depth: np.ndarray, max_depth_m: float | None, mask: np.ndarray | None) -> np.ndarray:
    gt = np.asarray(gt_depth)
    valid = np.isfinite(gt) & (gt > 0)
    if max_depth_m is not None:
        valid &= gt <= max_depth_m
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    return valid


def _pair(pred_depth: np.ndarray, gt_depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_depth, dtype=np.float64)
    gt = np.asarray(gt_depth, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must have the same shape (resize first)")
    return pred, gt


def _ratios(
    pred_depth: np.ndarray, gt_depth: np.ndarray, max_depth_m: float | None, mask: np.ndarray | None
) -> np.ndarray:
    pred, gt = _pair(pred_depth, gt_depth)
    m = _valid_gt(gt, max_depth_m, mask) & np.isfinite(pred) & (pred > 0)
    return gt[m] / pred[m]


def median_scale(
    pred_depths: Sequence[np.ndarray],
    gt_depths: Sequence[np.ndarray],
    max_depth_m: float | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> float:
    """The one factor s = median(gt / pred) over the valid pixels of all the given frames (pass one frame
    for a per-frame scale). NaN when no pixel is valid. Keeps every valid ratio in memory at once."""
    masks = [None] * len(pred_depths) if masks is None else masks
    ratios = [_ratios(p, g, max_depth_m, m) for p, g, m in zip(pred_depths, gt_depths, masks, strict=True)]
    all_ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    return float(np.median(all_ratios)) if all_ratios.size else float("nan")


def _frame_sums(
    pred_depth: np.ndarray, gt_depth: np.ndarray, scale: float, max_depth_m: float | None, mask: np.ndarray | None
) -> _Sums:
    pred, gt = _pair(pred_depth, gt_depth)
    valid = _valid_gt(gt, max_depth_m, mask)
    g = gt[valid]
    p = pred[valid]
    has_pred = np.isfinite(p) & (p > 0)
    p = np.where(has_pred, p * scale, 0.0)
    err = p - g
    with np.errstate(divide="ignore"):
        ratio = np.maximum(p / g, g / p)  # inf where the prediction is missing
    return _Sums(
        n=int(g.size),
        n_pred=int(has_pred.sum()),
        abs_rel=float(np.sum(np.abs(err) / g)),
        sq_rel=float(np.sum(err**2 / g)),
        sq_err=float(np.sum(err**2)),
        d1=int(np.sum(ratio < 1.25)),
        d2=int(np.sum(ratio < 1.25**2)),
        d3=int(np.sum(ratio < 1.25**3)),
    )


def depth_frame_stats(
    pred_depth: np.ndarray,
    gt_depth: np.ndarray,
    scale: float = 1.0,
    max_depth_m: float | None = None,
    mask: np.ndarray | None = None,
) -> DepthStats:
    """Metrics of one frame [H,W] after multiplying the prediction by `scale` (1 for metric predictions)."""
    return _frame_sums(pred_depth, gt_depth, scale, max_depth_m, mask).stats()


def evaluate_depth(
    pred_depths: Sequence[np.ndarray],
    gt_depths: Sequence[np.ndarray],
    scale_mode: ScaleMode = "frame",
    max_depth_m: float | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> DepthEvaluation:
    """Per-frame and aggregate depth metrics for frames [H,W] (each frame may have its own size).

    scale_mode: "frame" -- each prediction times its own median(gt / pred); "sequence" -- one median over
    the valid pixels of all the given frames together; "none" -- metric prediction, no scaling."""
    if len(pred_depths) != len(gt_depths):
        raise ValueError(f"{len(pred_depths)} predictions for {len(gt_depths)} ground-truth frames")
    masks = [None] * len(pred_depths) if masks is None else list(masks)
    if scale_mode == "frame":
        scales = [
            median_scale([p], [g], max_depth_m, [m]) for p, g, m in zip(pred_depths, gt_depths, masks, strict=True)
        ]
    elif scale_mode == "sequence":
        scales = [median_scale(pred_depths, gt_depths, max_depth_m, masks)] * len(pred_depths)
    elif scale_mode == "none":
        scales = [1.0] * len(pred_depths)
    else:
        raise ValueError(f"scale_mode must be 'frame', 'sequence' or 'none', got {scale_mode!r}")
    pooled = _Sums()
    per_frame: list[DepthStats] = []
    for p, g, m, s in zip(pred_depths, gt_depths, masks, scales):
        # A NaN scale means the frame has no valid prediction: its pixels all count as missing.
        sums = _frame_sums(p, g, s if np.isfinite(s) else 1.0, max_depth_m, m)
        pooled.add(sums)
        per_frame.append(sums.stats())
    scales_arr = np.asarray(scales, dtype=np.float64)
    for k, st in enumerate(per_frame):
        if st.num_pixels == 0:
            scales_arr[k] = np.nan
    return DepthEvaluation(
        per_frame=tuple(per_frame),
        scales=scales_arr,
        mean=_mean_stats(per_frame),
        pooled=pooled.stats(),
        scale_mode=scale_mode,
        max_depth_m=max_depth_m,
        num_frames_evaluated=sum(st.num_pixels > 0 for st in per_frame),
    )


def _mean_stats(per_frame: Sequence[DepthStats]) -> DepthStats:
    used = [st for st in per_frame if st.num_pixels > 0]
    if not used:
        return _Sums().stats()

    def avg(name: str) -> float:
        return float(np.mean([getattr(st, name) for st in used]))

    return DepthStats(
        avg("abs_rel"),
        avg("sq_rel"),
        avg("rmse"),
        avg("delta1"),
        avg("delta2"),
        avg("delta3"),
        sum(st.num_pixels for st in used),
        avg("pred_coverage"),
    )


def relative_error_map(
    pred_depth: np.ndarray,
    gt_depth: np.ndarray,
    scale: float = 1.0,
    max_depth_m: float | None = None,
    mask: np.ndarray | None = None,
    signed: bool = False,
) -> np.ndarray:
    """Per-pixel (scale * pred - gt) / gt of one frame [H,W] (absolute value unless `signed`; positive =
    too far), NaN where ground truth is not evaluated. Pass the scale an evaluation used
    (`DepthEvaluation.scales[k]`). Missing predictions read -1 (signed) / 1, as in the metrics."""
    pred, gt = _pair(pred_depth, gt_depth)
    valid = _valid_gt(gt, max_depth_m, mask)
    p = np.where(np.isfinite(pred) & (pred > 0), pred * scale, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(valid, (p - gt) / gt, np.nan)
    return rel if signed else np.abs(rel)
