"""The plain reference for recon/models/classical/dense.py's triangulate_matches (the expression form it was
written in before it went in place): the same formulas, one numpy expression each."""

from __future__ import annotations

import numpy as np

from recon.models.classical.dense import DenseConfig


def plain_triangulate_matches(
    u2: np.ndarray, v2: np.ndarray, fb: np.ndarray, j_from_i: np.ndarray, K: np.ndarray, cfg: DenseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Depth [H,W] of every pixel of frame i from its match (u2, v2) in frame j, and a confidence in [0,1]."""
    H, W = u2.shape
    u = np.arange(W, dtype=np.float32)[None, :]
    v = np.arange(H, dtype=np.float32)[:, None]
    h = (K @ j_from_i[:3, :3] @ np.linalg.inv(K)).astype(np.float32)
    ax, ay, az = (h[r, 0] * u + h[r, 1] * v + h[r, 2] for r in range(3))
    b = (K @ j_from_i[:3, 3]).astype(np.float32)
    cu, cv_ = u2 * az - ax, v2 * az - ay
    eu, ev = b[0] - u2 * b[2], b[1] - v2 * b[2]
    z = (cu * eu + cv_ * ev) / np.maximum(cu * cu + cv_ * cv_, 1e-12)
    den = az * z + b[2]
    den = np.where(np.abs(den) < 1e-9, np.float32(1e-9), den)
    inv_den2 = z / (den * den)
    sensitivity = np.hypot((ax * b[2] - az * b[0]) * inv_den2, (ay * b[2] - az * b[1]) * inv_den2)
    epi = np.hypot((ax * z + b[0]) / den - u2, (ay * z + b[1]) / den - v2)
    rel_err = (cfg.flow_sigma_px + fb + epi) / np.maximum(sensitivity, 1e-9)
    conf = np.exp(-((fb / cfg.fb_sigma_px) ** 2)) / (1.0 + (rel_err / cfg.rel_err_scale) ** 2)
    valid = np.isfinite(z) & (z > 0) & (den > 0)
    return np.where(valid, z, 0.0).astype(np.float32), np.where(valid, conf, 0.0).astype(np.float32)
