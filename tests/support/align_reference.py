"""Plain float64 numpy references for the robust Sim(3) kernels of the join (recon.kernels.align_sim3): they
define the arithmetic the kernels must reproduce (tests) and the baseline of bench/bench_align.py."""

from __future__ import annotations

import numpy as np

from recon.kernels.align_sim3 import Sim3Fit
from recon.pose_fit import umeyama_sim3
from recon.types import Sim3

_TINY = 1e-30


def robust_sim3_reference(
    source: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray | None = None,
    huber_delta: float = 0.1,
    iterations: int = 5,
    with_scale: bool = True,
) -> tuple[Sim3, Sim3Fit]:
    """The same IRLS as `robust_sim3`, written plainly in float64 numpy over `umeyama_sim3`."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    c = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    sim = umeyama_sim3(src, dst, c, with_scale)
    for _ in range(iterations):
        r = np.linalg.norm(sim.apply(src) - dst, axis=1)
        sim = umeyama_sim3(src, dst, c * np.minimum(1.0, huber_delta / np.maximum(r, 1e-12)), with_scale)
    r = np.linalg.norm(sim.apply(src) - dst, axis=1)
    inl = r <= huber_delta
    xs = src - (c @ src) / c.sum()
    xd = dst - (c @ dst) / c.sum()
    sv = np.linalg.svd((xd * c[:, None]).T @ xs, compute_uv=False)
    fit = Sim3Fit(
        residual_rms=float(np.sqrt(c @ r**2 / c.sum())),
        inlier_rms=float(np.sqrt((c * inl) @ r**2 / max((c * inl).sum(), _TINY))),
        inlier_share=float((c * inl).sum() / c.sum()),
        num_points=int((c > 0).sum()),
        huber_delta=float(huber_delta),
        rank_ratio=float(sv[1] / max(sv[0], _TINY)),
        valid=True,
    )
    return sim, fit


def robust_log_scale_reference(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray, huber_delta: float = 0.05, iterations: int = 10
) -> float:
    """One group of `robust_log_scale_grouped`, plainly."""
    v = np.log(np.asarray(target, np.float64) / np.asarray(source, np.float64))
    c = np.asarray(weights, np.float64)
    m = float(c @ v / c.sum())
    for _ in range(iterations):
        w = c * np.minimum(1.0, huber_delta / np.maximum(np.abs(v - m), 1e-12))
        m = float(w @ v / w.sum())
    return float(np.exp(m))
