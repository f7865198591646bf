"""A small robust bundle adjustment for one window: Levenberg–Marquardt on SE(3) (left perturbations)
and 3D points, Huber-reweighted, solved through the Schur complement on the cameras. Frame 0 is the
fixed gauge; optionally one shared focal scale is refined.

Each track is seen in a few of the window's frames (2-8 of 20 on a fast pan), so Jacobians are kept per
observation — [N,2,6] and [N,2,3], not per (track, frame) — and the camera-by-point coupling W is a sparse
matrix of fixed pattern (_Coupling), so the Schur complement is one sparse product. 7x faster than the dense
layout at 3000 points (tests/plain_bundle.py keeps that plain reference, and the two must agree)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from recon.geometry import rotation_from_axis_angle, skew


@dataclass(frozen=True)
class BundleConfig:
    iterations: int = 15
    huber_px: float = 1.0
    refine_focal: bool = False


@dataclass
class BundleResult:
    cam_from_world: np.ndarray  # [S,4,4]
    points_w: np.ndarray  # [T,3]
    K: np.ndarray
    rms_px: float
    iterations: int


def _project(poses: np.ndarray, X: np.ndarray, K: np.ndarray, f_scale: float, t_idx: np.ndarray, s_idx: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Observation o of track t_idx[o] in frame s_idx[o] -> uv [N,2], Xc [N,3]."""
    Xc = (poses[s_idx, :3, :3] * X[t_idx][:, None, :]).sum(-1) + poses[s_idx, :3, 3]
    z = np.maximum(Xc[:, 2], 1e-6)
    uv = np.stack([K[0, 0] * f_scale * Xc[:, 0] / z + K[0, 2], K[1, 1] * f_scale * Xc[:, 1] / z + K[1, 2]], -1)
    return uv, Xc


def _robust_cost(r: np.ndarray, delta: float) -> float:
    n = np.linalg.norm(r, axis=-1)
    return float(np.sum(np.where(n <= delta, 0.5 * n**2, delta * (n - 0.5 * delta))))


class _Coupling:
    """The camera-by-point blocks W [n_cam, 3T] as a sparse matrix whose pattern is fixed for the whole
    adjustment: observation o of track t in frame s fills rows 6s..6s+5 x columns 3t..3t+2, and the last
    (focal) row is filled for every track. Only the values change between iterations."""

    def __init__(self, t_idx: np.ndarray, s_idx: np.ndarray, T: int, n_cam: int) -> None:
        N = len(t_idx)
        rows = np.concatenate([np.broadcast_to((6 * s_idx[:, None] + np.arange(6))[:, :, None], (N, 6, 3)).ravel(),
                               np.full(3 * T, n_cam - 1)])
        cols = np.concatenate([np.broadcast_to((3 * t_idx[:, None] + np.arange(3))[:, None, :], (N, 6, 3)).ravel(),
                               np.arange(3 * T)])
        order = np.lexsort((cols, rows))  # CSR order: by row, then column
        self._pattern = sparse.csr_matrix((np.ones(len(rows)), (rows[order], cols[order])), shape=(n_cam, 3 * T))
        self._order = order

    def matrix(self, per_obs: np.ndarray, focal_row: np.ndarray) -> sparse.csr_matrix:
        """per_obs [N,6,3], focal_row [T,3] -> W [n_cam, 3T]."""
        m = self._pattern.copy()
        m.data = np.concatenate([per_obs.ravel(), focal_row.ravel()])[self._order]
        return m


def bundle_adjust(
    cam_from_world: np.ndarray, points_w: np.ndarray, uv_px: np.ndarray, visible: np.ndarray, K: np.ndarray,
    cfg: BundleConfig = BundleConfig(),
) -> BundleResult:
    """cam_from_world [S,4,4], points_w [T,3], observations uv_px [T,S,2] where visible [T,S]."""
    S, T = cam_from_world.shape[0], points_w.shape[0]
    t_idx, s_idx = np.nonzero(visible)  # observations [N]
    N = len(t_idx)
    obs = uv_px[t_idx, s_idx]
    # Sums over a frame's / a track's observations as sparse one-hot products.
    per_frame = sparse.csr_matrix((np.ones(N), (s_idx, np.arange(N))), shape=(S, N))
    per_track = sparse.csr_matrix((np.ones(N), (t_idx, np.arange(N))), shape=(T, N))
    poses, X, f_scale, lam = cam_from_world.copy(), points_w.copy(), 1.0, 1e-3
    # Camera parameters: 6 per frame (+1 shared log-focal), frame 0's six are the gauge and stay fixed.
    n_cam = 6 * S + 1
    free = np.ones(n_cam, bool)
    free[:6] = False
    free[-1] = cfg.refine_focal
    coupling = _Coupling(t_idx, s_idx, T, n_cam)

    uv, Xc = _project(poses, X, K, f_scale, t_idx, s_idx)
    r = uv - obs
    current = _robust_cost(r, cfg.huber_px)
    it = 0
    for it in range(1, cfg.iterations + 1):
        n = np.linalg.norm(r, axis=-1)
        w = np.where(n <= cfg.huber_px, 1.0, cfg.huber_px / np.maximum(n, 1e-12))  # [N]
        z = np.maximum(Xc[:, 2], 1e-6)
        fx, fy = K[0, 0] * f_scale, K[1, 1] * f_scale
        Jproj = np.zeros((N, 2, 3))
        Jproj[:, 0, 0] = fx / z
        Jproj[:, 0, 2] = -fx * Xc[:, 0] / z**2
        Jproj[:, 1, 1] = fy / z
        Jproj[:, 1, 2] = -fy * Xc[:, 1] / z**2
        J_pt = Jproj @ poses[s_idx, :3, :3]  # [N,2,3]
        J_cam = np.concatenate([Jproj @ -skew(Xc), Jproj], axis=-1)  # [N,2,6] (rotation, translation)
        J_f = np.stack([fx * Xc[:, 0] / z, fy * Xc[:, 1] / z], -1)  # [N,2]
        sw = np.sqrt(w)[:, None]
        rw, J_pt, J_cam, J_f = r * sw, J_pt * sw[..., None], J_cam * sw[..., None], J_f * sw

        J_camT = np.swapaxes(J_cam, 1, 2)  # [N,6,2]
        U = np.zeros((n_cam, n_cam))
        blocks = (per_frame @ (J_camT @ J_cam).reshape(N, 36)).reshape(S, 6, 6)
        for s in range(S):
            U[6 * s : 6 * s + 6, 6 * s : 6 * s + 6] = blocks[s]
        U[:-1, -1] = U[-1, :-1] = (per_frame @ (J_camT @ J_f[..., None])[..., 0]).reshape(-1)
        U[-1, -1] = np.sum(J_f**2)
        W_obs = J_camT @ J_pt  # [N,6,3]: observation o couples its frame's 6 rows with its track's 3 columns
        W_f = per_track @ (J_f[:, None, :] @ J_pt)[:, 0]  # [T,3]: the focal row
        W = coupling.matrix(W_obs, W_f)
        V = (per_track @ (np.swapaxes(J_pt, 1, 2) @ J_pt).reshape(N, 9)).reshape(T, 3, 3)
        g_c = np.concatenate([(per_frame @ (J_camT @ rw[..., None])[..., 0]).reshape(-1), [np.sum(J_f * rw)]])
        g_p = per_track @ (np.swapaxes(J_pt, 1, 2) @ rw[..., None])[..., 0]  # [T,3]

        while True:
            Vd = V + lam * (V * np.eye(3)) + 1e-9 * np.eye(3)
            V_inv = np.linalg.inv(Vd)
            Y = coupling.matrix(W_obs @ V_inv[t_idx], (W_f[:, None, :] @ V_inv)[:, 0])  # W V^-1
            schur = U + lam * np.diag(np.diag(U)) - (Y @ W.T).toarray()
            rhs = -g_c + Y @ g_p.reshape(-1)
            A = schur[np.ix_(free, free)] + 1e-9 * np.eye(free.sum())
            d_c = np.zeros(n_cam)
            try:
                d_c[free] = np.linalg.solve(A, rhs[free])
            except np.linalg.LinAlgError:
                d_c[free] = np.linalg.lstsq(A, rhs[free], rcond=None)[0]
            q = g_p + (W.T @ d_c).reshape(T, 3)
            d_p = -(V_inv @ q[..., None])[..., 0]
            d_cam = d_c[:-1].reshape(S, 6)
            dR = rotation_from_axis_angle(d_cam[:, :3])
            new_poses = poses.copy()
            new_poses[:, :3, :3] = dR @ poses[:, :3, :3]
            new_poses[:, :3, 3] = (dR * poses[:, None, :3, 3]).sum(-1) + d_cam[:, 3:]
            new_f = f_scale * float(np.exp(d_c[-1]))
            new_X = X + d_p
            uv_new, Xc_new = _project(new_poses, new_X, K, new_f, t_idx, s_idx)
            r_new = uv_new - obs
            new_cost = _robust_cost(r_new, cfg.huber_px)
            if new_cost < current:
                converged = (current - new_cost) < 1e-6 * current
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
