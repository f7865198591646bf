"""Weighted Umeyama: the closed-form Sim(3) that best maps source points onto target points
(least squares). Plain numpy reference; batched/robust variants build on it."""

from __future__ import annotations

import numpy as np

from recon.types import Sim3


def umeyama_sim3(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True) -> Sim3:
    """target ≈ s R source + t for points [N,3] (N ≥ 3, not collinear). Returns `target_from_source`."""
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    E = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        E[2, 2] = -1.0
    R = U @ E @ Vt
    var_s = float(w @ np.sum(xs**2, axis=1))
    s = float(np.trace(np.diag(D) @ E) / var_s) if with_scale and var_s > 0 else 1.0
    return Sim3(s, R, mu_d - s * R @ mu_s)
