"""The plain reference for recon/models/classical/bundle.py (the dense layout it replaced): a small robust bundle adjustment for one window: Levenberg–Marquardt on SE(3) (left perturbations)
and 3D points, Huber-reweighted, solved through the Schur complement on the cameras. Frame 0 is the
fixed gauge; optionally one shared focal scale is refined.

Windows are small (S ≤ ~64 frames) and every track has at most S observations, so Jacobians are kept
dense per (track, frame) — [T,S,2,6] — and the Schur complement is one BLAS product."""

from __future__ import annotations

import numpy as np

from recon.geometry import rotation_from_axis_angle, skew
from recon.models.classical.bundle import BundleConfig, BundleResult


def _project(poses: np.ndarray, X: np.ndarray, K: np.ndarray, f_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """-> uv [T,S,2], Xc [T,S,3]."""
    Xc = (poses[None, :, :3, :3] * X[:, None, None, :]).sum(-1) + poses[None, :, :3, 3]
    z = np.maximum(Xc[..., 2], 1e-6)
    uv = np.stack([K[0, 0] * f_scale * Xc[..., 0] / z + K[0, 2], K[1, 1] * f_scale * Xc[..., 1] / z + K[1, 2]], -1)
    return uv, Xc


def _robust_cost(r: np.ndarray, mask: np.ndarray, delta: float) -> float:
    n = np.linalg.norm(r, axis=-1)
    return float(np.sum(np.where(mask, np.where(n <= delta, 0.5 * n**2, delta * (n - 0.5 * delta)), 0.0)))


def plain_bundle_adjust(
    cam_from_world: np.ndarray,
    points_w: np.ndarray,
    uv_px: np.ndarray,
    visible: np.ndarray,
    K: np.ndarray,
    cfg: BundleConfig = BundleConfig(),  # noqa: B008 - frozen
) -> BundleResult:
    """cam_from_world [S,4,4], points_w [T,3], observations uv_px [T,S,2] where visible [T,S]."""
    S, T = cam_from_world.shape[0], points_w.shape[0]
    obs = np.where(visible[..., None], uv_px, 0.0)
    poses, X, f_scale, lam = cam_from_world.copy(), points_w.copy(), 1.0, 1e-3
    # Camera parameters: 6 per frame (+1 shared log-focal), frame 0's six are the gauge and stay fixed.
    n_cam = 6 * S + 1
    free = np.ones(n_cam, bool)
    free[:6] = False
    free[-1] = cfg.refine_focal

    uv, Xc = _project(poses, X, K, f_scale)
    r = uv - obs
    current = _robust_cost(r, visible, cfg.huber_px)
    it = 0
    for it in range(1, cfg.iterations + 1):  # noqa: B007 - the count after the loop is the result
        n = np.linalg.norm(r, axis=-1)
        w = np.where(visible, np.where(n <= cfg.huber_px, 1.0, cfg.huber_px / np.maximum(n, 1e-12)), 0.0)  # [T,S]
        z = np.maximum(Xc[..., 2], 1e-6)
        fx, fy = K[0, 0] * f_scale, K[1, 1] * f_scale
        Jproj = np.zeros((T, S, 2, 3))
        Jproj[..., 0, 0] = fx / z
        Jproj[..., 0, 2] = -fx * Xc[..., 0] / z**2
        Jproj[..., 1, 1] = fy / z
        Jproj[..., 1, 2] = -fy * Xc[..., 1] / z**2
        # Small-matrix products as broadcast sums: numpy's batched matmul on 2x3 @ 3x3 is slow.
        J_pt = (Jproj[..., :, :, None] * poses[None, :, None, :3, :3]).sum(-2)  # [T,S,2,3]
        J_rot = (Jproj[..., :, :, None] * -skew(Xc)[..., None, :, :]).sum(-2)
        J_cam = np.concatenate([J_rot, Jproj], axis=-1)  # [T,S,2,6] (rotation, translation)
        J_f = np.stack([fx * Xc[..., 0] / z, fy * Xc[..., 1] / z], -1)  # [T,S,2]
        sw = np.sqrt(w)[..., None]
        rw, J_pt, J_cam, J_f = r * sw, J_pt * sw[..., None], J_cam * sw[..., None], J_f * sw

        # Products written as broadcasts and batched matmuls: einsum on these tiny axes is 10x slower.
        U = np.zeros((n_cam, n_cam))
        Jc_s = J_cam.transpose(1, 0, 2, 3).reshape(S, -1, 6)  # [S,T*2,6]
        blocks = np.swapaxes(Jc_s, 1, 2) @ Jc_s
        for s in range(S):
            U[6 * s : 6 * s + 6, 6 * s : 6 * s + 6] = blocks[s]
        u_cf = (np.swapaxes(Jc_s, 1, 2) @ J_f.transpose(1, 0, 2).reshape(S, -1, 1)).reshape(-1)
        U[:-1, -1] = U[-1, :-1] = u_cf
        U[-1, -1] = np.sum(J_f**2)
        W_cam = (J_cam[..., :, :, None] * J_pt[..., :, None, :]).sum(2)  # [T,S,6,3]
        W_f = (J_f[..., None] * J_pt).sum((1, 2))  # [T,3]
        W = np.concatenate([W_cam.reshape(T, 6 * S, 3), W_f[:, None]], 1)  # [T,n_cam,3]
        V = (J_pt[..., :, None] * J_pt[..., None, :]).sum((1, 2))  # [T,3,3]
        g_c = np.concatenate([(J_cam * rw[..., None]).sum((0, 2)).reshape(-1), [np.sum(J_f * rw)]])
        g_p = (J_pt * rw[..., None]).sum((1, 2))  # [T,3]

        while True:
            Vd = V + lam * (V * np.eye(3)) + 1e-9 * np.eye(3)
            V_inv = np.linalg.inv(Vd)
            Y = (W[..., :, None] * V_inv[:, None, :, :]).sum(-2)  # [T,n_cam,3] = W V^-1
            schur = (
                U
                + lam * np.diag(np.diag(U))
                - Y.transpose(1, 0, 2).reshape(n_cam, -1) @ W.transpose(1, 0, 2).reshape(n_cam, -1).T
            )
            rhs = -g_c + (Y * g_p[:, None, :]).sum((0, 2))
            A = schur[np.ix_(free, free)] + 1e-9 * np.eye(free.sum())
            d_c = np.zeros(n_cam)
            try:
                d_c[free] = np.linalg.solve(A, rhs[free])
            except np.linalg.LinAlgError:
                d_c[free] = np.linalg.lstsq(A, rhs[free], rcond=None)[0]
            q = g_p + (W * d_c[None, :, None]).sum(1)  # [T,3]
            d_p = -(V_inv * q[:, None, :]).sum(-1)
            d_cam = d_c[:-1].reshape(S, 6)
            dR = rotation_from_axis_angle(d_cam[:, :3])
            new_poses = poses.copy()
            new_poses[:, :3, :3] = dR @ poses[:, :3, :3]
            new_poses[:, :3, 3] = (dR * poses[:, None, :3, 3]).sum(-1) + d_cam[:, 3:]
            new_f = f_scale * float(np.exp(d_c[-1]))
            new_X = X + d_p
            uv_new, Xc_new = _project(new_poses, new_X, K, new_f)
            r_new = uv_new - obs
            new_cost = _robust_cost(r_new, visible, cfg.huber_px)
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
    res = np.linalg.norm(r, axis=-1)[visible]
    rms = float(np.sqrt(np.mean(res**2))) if res.size else 0.0
    return BundleResult(poses, X, K_out, rms, it)
