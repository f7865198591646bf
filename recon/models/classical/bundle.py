"""A small robust bundle adjustment for one window: Levenberg–Marquardt on SE(3) (left perturbations)
and 3D points, Huber-reweighted, solved through the Schur complement on the cameras. Frame 0 is the
fixed gauge; optionally one shared focal scale is refined.

Each track is seen in a few of the window's frames (2-8 of 20 on a fast pan), so Jacobians are kept per
observation — [N,2,6] and [N,2,3], not per (track, frame) — with the observations sorted by frame: a frame's
sums are one product over its rows, a track's a sparse one-hot product. The Schur complement is then one
dense symmetric product (tests/support/plain_bundle.py keeps a plain reference, and the two must agree)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from recon.geometry import rotation_from_axis_angle


@dataclass(frozen=True)
class BundleConfig:
    iterations: int = 15
    huber_px: float = 1.0
    refine_focal: bool = False
    # An iteration that lowers the cost by less than this share ends the adjustment. Not looser: at 1e-4 a
    # damped step on a wide-baseline window (dtu24) stopped it after 2 of 15 iterations, its cameras 1.5% of
    # the scene depth from the optimum (dtu24 ATE 32 -> 47 mm); on easy drives it halved the iterations.
    converged_rel: float = 1e-6


@dataclass
class BundleResult:
    cam_from_world: np.ndarray  # [S,4,4]
    points_w: np.ndarray  # [T,3]
    K: np.ndarray
    rms_px: float
    iterations: int


def _project(
    poses: np.ndarray, X: np.ndarray, K: np.ndarray, f_scale: float, t_idx: np.ndarray, frame_obs: list[slice]
) -> tuple[np.ndarray, np.ndarray]:
    """Observations sorted by frame (frame s owns rows frame_obs[s], of tracks t_idx) -> uv [N,2], Xc [N,3]."""
    Xc = X[t_idx]
    for s, rows in enumerate(frame_obs):
        Xc[rows] = Xc[rows] @ poses[s, :3, :3].T + poses[s, :3, 3]
    z = np.maximum(Xc[:, 2], 1e-6)
    uv = np.stack([K[0, 0] * f_scale * Xc[:, 0] / z + K[0, 2], K[1, 1] * f_scale * Xc[:, 1] / z + K[1, 2]], -1)
    return uv, Xc


def _robust_cost(r: np.ndarray, delta: float) -> float:
    n = np.linalg.norm(r, axis=-1)
    return float(np.sum(np.where(n <= delta, 0.5 * n**2, delta * (n - 0.5 * delta))))


def _jacobians(
    poses: np.ndarray, Xc: np.ndarray, fx: float, fy: float, s_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d uv / d (rotation, translation) [N,2,6] (left perturbation), d uv / d point [N,2,3], d uv / d log f
    [N,2], written out: the projection's Jacobian has two zeros, and stacks of 2x3 products through numpy's
    matmul cost more than the arithmetic."""
    x, y = Xc[:, 0], Xc[:, 1]
    z = np.maximum(Xc[:, 2], 1e-6)
    a, b = fx / z, fy / z  # d uv / d Xc = [[a, 0, c], [0, b, d]]
    c, d = -a * x / z, -b * y / z
    N = len(z)
    J_cam = np.empty((N, 2, 6))
    # rows of d uv / d Xc times -[Xc]x (rotation), and d uv / d Xc itself (translation)
    J_cam[:, 0, 0], J_cam[:, 0, 1], J_cam[:, 0, 2] = c * y, a * z - c * x, -a * y
    J_cam[:, 1, 0], J_cam[:, 1, 1], J_cam[:, 1, 2] = d * y - b * z, -d * x, b * x
    J_cam[:, 0, 3], J_cam[:, 0, 4], J_cam[:, 0, 5] = a, 0.0, c
    J_cam[:, 1, 3], J_cam[:, 1, 4], J_cam[:, 1, 5] = 0.0, b, d
    R = poses[s_idx, :3, :3]  # d Xc / d point
    J_pt = np.stack([a[:, None] * R[:, 0] + c[:, None] * R[:, 2], b[:, None] * R[:, 1] + d[:, None] * R[:, 2]], axis=1)
    J_f = np.stack([a * x, b * y], -1)
    return J_cam, J_pt, J_f


def _outer_sum(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Per observation P^T Q of [N,2,m] and [N,2,k] -> [N,m,k] (two rows: two outer products)."""
    return P[:, 0, :, None] * Q[:, 0, None, :] + P[:, 1, :, None] * Q[:, 1, None, :]


def _inverse_cholesky(V: np.ndarray) -> np.ndarray:
    """L^-1 [T,3,3] of the Cholesky factors L L^T = V of symmetric positive definite V [T,3,3], in closed
    form (V^-1 = L^-T L^-1). A pivot that rounding drives to zero or below is clamped, not an error."""
    tiny = 1e-300
    l00 = np.sqrt(np.maximum(V[:, 0, 0], tiny))
    l10, l20 = V[:, 1, 0] / l00, V[:, 2, 0] / l00
    l11 = np.sqrt(np.maximum(V[:, 1, 1] - l10 * l10, tiny))
    l21 = (V[:, 2, 1] - l20 * l10) / l11
    l22 = np.sqrt(np.maximum(V[:, 2, 2] - l20 * l20 - l21 * l21, tiny))
    inv = np.zeros_like(V)
    inv[:, 0, 0], inv[:, 1, 1], inv[:, 2, 2] = 1 / l00, 1 / l11, 1 / l22
    inv[:, 1, 0] = -l10 / (l00 * l11)
    inv[:, 2, 1] = -l21 / (l11 * l22)
    inv[:, 2, 0] = (l10 * l21 - l20 * l11) / (l00 * l11 * l22)
    return inv


def bundle_adjust(
    cam_from_world: np.ndarray,
    points_w: np.ndarray,
    uv_px: np.ndarray,
    visible: np.ndarray,
    K: np.ndarray,
    cfg: BundleConfig = BundleConfig(),
) -> BundleResult:
    """cam_from_world [S,4,4], points_w [T,3], observations uv_px [T,S,2] where visible [T,S]."""
    S, T = cam_from_world.shape[0], points_w.shape[0]
    s_idx, t_idx = np.nonzero(visible.T)  # observations [N], sorted by frame
    N = len(t_idx)
    bounds = np.searchsorted(s_idx, np.arange(S + 1))
    frame_obs = [slice(int(bounds[s]), int(bounds[s + 1])) for s in range(S)]
    obs = uv_px[t_idx, s_idx]
    per_track = sparse.csr_matrix((np.ones(N), (t_idx, np.arange(N))), shape=(T, N))  # sums over a track's observations
    poses, X, f_scale, lam = cam_from_world.copy(), points_w.copy(), 1.0, 1e-3
    # Camera parameters: 6 per frame (+1 shared log-focal), frame 0's six are the gauge and stay fixed.
    n_cam = 6 * S + 1
    free = np.ones(n_cam, bool)
    free[:6] = False
    free[-1] = cfg.refine_focal
    Z = np.zeros((n_cam, 3 * T))  # the camera-by-point coupling, reduced (below); zero off the observations
    # Where observation o's [6,3] block goes in Z (flat): rows of its frame, columns of its track.
    z_slots = (
        (6 * s_idx[:, None, None] + np.arange(6)[None, :, None]) * (3 * T) + 3 * t_idx[:, None, None] + np.arange(3)
    )

    uv, Xc = _project(poses, X, K, f_scale, t_idx, frame_obs)
    r = uv - obs
    current = _robust_cost(r, cfg.huber_px)
    it = 0
    for it in range(1, cfg.iterations + 1):  # noqa: B007 - the count after the loop is the result
        n = np.linalg.norm(r, axis=-1)
        sw = np.sqrt(np.where(n <= cfg.huber_px, 1.0, cfg.huber_px / np.maximum(n, 1e-12)))[:, None]  # Huber IRLS
        J_cam, J_pt, J_f = _jacobians(poses, Xc, K[0, 0] * f_scale, K[1, 1] * f_scale, s_idx)
        rw, J_pt, J_cam, J_f = r * sw, J_pt * sw[..., None], J_cam * sw[..., None], J_f * sw

        # Normal equations [[U, W], [W^T, V]] (cameras, points) and gradient (g_c, g_p). U: per frame, one
        # product over the frame's rows.
        U = np.zeros((n_cam, n_cam))
        g_c = np.zeros(n_cam)
        for s, rows in enumerate(frame_obs):
            A, f = J_cam[rows].reshape(-1, 6), J_f[rows].reshape(-1)
            U[6 * s : 6 * s + 6, 6 * s : 6 * s + 6] = A.T @ A
            U[6 * s : 6 * s + 6, -1] = U[-1, 6 * s : 6 * s + 6] = A.T @ f
            g_c[6 * s : 6 * s + 6] = A.T @ rw[rows].reshape(-1)
        U[-1, -1], g_c[-1] = np.sum(J_f**2), np.sum(J_f * rw)
        W_obs = _outer_sum(J_cam, J_pt)  # [N,6,3]: observation o couples its frame's 6 rows with its track's 3 columns
        W_f = per_track @ (J_f[:, 0, None] * J_pt[:, 0] + J_f[:, 1, None] * J_pt[:, 1])  # [T,3]: the focal row
        V = (per_track @ _outer_sum(J_pt, J_pt).reshape(N, 9)).reshape(T, 3, 3)
        g_p = per_track @ (J_pt[:, 0] * rw[:, :1] + J_pt[:, 1] * rw[:, 1:])  # [T,3]

        while True:
            # Schur complement on the cameras, U - W V^-1 W^T = U - Z Z^T with Z = W L^-T per track (V = L L^T):
            # a symmetric product (BLAS syrk), half the work of W (V^-1 W^T).
            L_inv = _inverse_cholesky(V + lam * (V * np.eye(3)) + 1e-9 * np.eye(3))
            L_inv_T = np.swapaxes(L_inv, 1, 2)
            Z.ravel()[z_slots] = W_obs @ L_inv_T[t_idx]
            Z[-1] = (W_f[:, None, :] @ L_inv_T)[:, 0].reshape(-1)
            schur = U + lam * np.diag(np.diag(U)) - Z @ Z.T
            Lg = (L_inv @ g_p[..., None])[..., 0]  # L^-1 g_p, so W V^-1 g_p = Z (L^-1 g_p)
            rhs = -g_c + Z @ Lg.reshape(-1)
            A = schur[np.ix_(free, free)] + 1e-9 * np.eye(free.sum())
            d_c = np.zeros(n_cam)
            try:
                d_c[free] = np.linalg.solve(A, rhs[free])
            except np.linalg.LinAlgError:
                d_c[free] = np.linalg.lstsq(A, rhs[free], rcond=None)[0]
            d_cam = d_c[:-1].reshape(S, 6)
            q = g_p + per_track @ (d_cam[s_idx, None, :] @ W_obs)[:, 0] + W_f * d_c[-1]  # g_p + W^T d_c
            d_p = -(L_inv_T @ (L_inv @ q[..., None]))[..., 0]  # -V^-1 q = -L^-T L^-1 q
            dR = rotation_from_axis_angle(d_cam[:, :3])
            new_poses = poses.copy()
            new_poses[:, :3, :3] = dR @ poses[:, :3, :3]
            new_poses[:, :3, 3] = (dR * poses[:, None, :3, 3]).sum(-1) + d_cam[:, 3:]
            new_f = f_scale * float(np.exp(d_c[-1]))
            new_X = X + d_p
            uv_new, Xc_new = _project(new_poses, new_X, K, new_f, t_idx, frame_obs)
            r_new = uv_new - obs
            new_cost = _robust_cost(r_new, cfg.huber_px)
            if new_cost < current:
                converged = (current - new_cost) < cfg.converged_rel * current
                poses, X, f_scale, r, Xc, current = new_poses, new_X, new_f, r_new, Xc_new, new_cost
                lam = max(lam / 3.0, 1e-7)
                break
            lam *= 4.0
            if lam > 1e6:
                converged = True
                break
        if converged:
            break

    K_out = K.copy()
    K_out[0, 0] *= f_scale
    K_out[1, 1] *= f_scale
    res = np.linalg.norm(r, axis=-1)
    rms = float(np.sqrt(np.mean(res**2))) if res.size else 0.0
    return BundleResult(poses, X, K_out, rms, it)
