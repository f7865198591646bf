"""Poses inside a window from tracks: two-view initialisation (essential matrix), multi-view DLT
triangulation, PnP for the remaining frames. Poses are cam_from_world with world = window frame 0."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon.geometry import make_rigid


@dataclass(frozen=True)
class PoseConfig:
    ransac_px: float = 0.75
    min_init_angle_deg: float = (
        1.0  # median triangulation angle a usable initial pair needs; rotation/parking give ~0.01
    )
    min_init_inliers: int = 40
    max_reproj_px: float = 2.5
    min_triangulation_deg: float = 0.3


def normalized(uv_px: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels [...,2] -> normalised image coordinates [...,2]."""
    return (uv_px - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])


def homography(uv_a: np.ndarray, uv_b: np.ndarray, max_points: int = 300) -> np.ndarray | None:
    """RANSAC homography a -> b (for a camera that only rotates: H = K R K^-1)."""
    if len(uv_a) < 8:
        return None
    step = max(1, len(uv_a) // max_points)  # RANSAC cost grows with points; a few hundred decide this
    H, _ = cv2.findHomography(uv_a[::step], uv_b[::step], cv2.RANSAC, 1.0, maxIters=300)
    return H


def pair_parallax_deg(
    uv_a: np.ndarray, uv_b: np.ndarray, K: np.ndarray, cfg: PoseConfig, max_points: int = 400
) -> tuple[float, int]:
    """How well a pair of views constrains depth: the median triangulation angle of the essential matrix's
    inliers (and their count). Near zero for pure rotation or a parked camera, whatever E RANSAC
    returns; unlike a homography test it is not fooled by a planar scene (walls, a road)."""
    step = max(1, len(uv_a) // max_points)
    res = two_view(uv_a[::step], uv_b[::step], K, cfg)
    if res is None:
        return 0.0, 0
    b_from_a, inl = res
    poses = np.stack([np.eye(4), b_from_a])
    obs = np.ones((int(inl.sum()), 2), bool)
    uv = np.stack([uv_a[::step][inl], uv_b[::step][inl]], 1)
    X = triangulate(uv, obs, poses, K)
    centre_b = -b_from_a[:3, :3].T @ b_from_a[:3, 3]
    ray_a = X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)
    ray_b = (X - centre_b) / (np.linalg.norm(X - centre_b, axis=1, keepdims=True) + 1e-12)
    angles = np.degrees(np.arccos(np.clip(np.abs(np.sum(ray_a * ray_b, axis=1)), -1, 1)))
    return float(np.median(angles)), int(inl.sum())


def two_view(
    uv_a: np.ndarray, uv_b: np.ndarray, K: np.ndarray, cfg: PoseConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """-> (b_from_a [4,4] with |t| = 1, inlier mask) or None when the pair is degenerate."""
    # OpenCV 5's USAC variants return no essential matrix here; classic RANSAC (5-point) does.
    try:
        E, mask = cv2.findEssentialMat(uv_a, uv_b, K, method=cv2.RANSAC, prob=0.999, threshold=cfg.ransac_px)
    except cv2.error:  # the 5-point solver asserts on some degenerate pairs (no motion at all: every flow zero)
        return None
    if E is None or E.shape[0] < 3:
        return None
    n, R, t, mask_pose = cv2.recoverPose(E[:3], uv_a, uv_b, K, mask=mask.copy())
    inliers = mask_pose.ravel() > 0
    if inliers.sum() < cfg.min_init_inliers:
        return None
    return make_rigid(R, t.ravel()), inliers


def triangulate(uv_px: np.ndarray, visible: np.ndarray, cam_from_world: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Linear multi-view DLT for every track at once: uv_px [T,S,2], visible [T,S], poses [S,4,4] -> [T,3]."""
    xn = normalized(np.nan_to_num(uv_px), K)  # [T,S,2]
    P = cam_from_world[:, :3, :]  # [S,3,4]
    rows_u = xn[..., 0:1] * P[None, :, 2, :] - P[None, :, 0, :]  # [T,S,4]
    rows_v = xn[..., 1:2] * P[None, :, 2, :] - P[None, :, 1, :]
    A = np.concatenate([rows_u, rows_v], axis=1) * np.concatenate([visible, visible], axis=1)[..., None]
    # The thin SVD: its Vt is the full one's to the bit, without the [2S,2S] U per track (half the time).
    _, _, Vt = np.linalg.svd(A, full_matrices=False)
    Xh = Vt[:, -1, :]
    w = np.where(np.abs(Xh[:, 3:]) < 1e-12, 1e-12, Xh[:, 3:])
    return Xh[:, :3] / w


def project(points_w: np.ndarray, cam_from_world: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """points [T,3], poses [S,4,4] -> (uv_px [T,S,2], depth [T,S])."""
    Xc = (cam_from_world[None, :, :3, :3] * points_w[:, None, None, :]).sum(-1) + cam_from_world[None, :, :3, 3]
    z = Xc[..., 2]
    zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = np.stack([K[0, 0] * Xc[..., 0] / zs + K[0, 2], K[1, 1] * Xc[..., 1] / zs + K[1, 2]], -1)
    return uv, z


def reprojection_error_px(
    points_w: np.ndarray, uv_px: np.ndarray, visible: np.ndarray, cam_from_world: np.ndarray, K: np.ndarray
) -> np.ndarray:
    """[T,S] pixel error (inf where not visible or behind the camera)."""
    uv, z = project(points_w, cam_from_world, K)
    err = np.linalg.norm(uv - np.nan_to_num(uv_px), axis=-1)
    return np.where(visible & (z > 0), err, np.inf)


def max_triangulation_angle_deg(points_w: np.ndarray, visible: np.ndarray, cam_from_world: np.ndarray) -> np.ndarray:
    """Largest angle between the viewing rays of each point over the frames that see it, [T]."""
    R = cam_from_world[:, :3, :3]
    centres = -(R * cam_from_world[:, :3, 3, None]).sum(1)  # [S,3] = -R^T t
    rays = points_w[:, None, :] - centres[None]  # [T,S,3]
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True) + 1e-12
    cos = rays @ np.swapaxes(rays, 1, 2)  # [T,S,S]: one batched product (5x faster than broadcasting)
    cos[~(visible[:, :, None] & visible[:, None, :])] = 1.0
    return np.degrees(np.arccos(np.clip(cos.min(axis=(1, 2)), -1, 1)))


def pnp(
    points_w: np.ndarray, uv_px: np.ndarray, K: np.ndarray, cfg: PoseConfig, iterations: int = 200, min_inliers: int = 6
) -> tuple[np.ndarray, int] | None:
    """cam_from_world [4,4] and the inlier count, or None. Track correspondences are mostly right and 200
    RANSAC iterations find them; descriptor matches need more (`iterations`) and more inliers to be believed."""
    if len(points_w) < max(6, min_inliers):
        return None
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        points_w.astype(np.float64),
        uv_px.astype(np.float64),
        K,
        None,
        reprojectionError=2.0 * cfg.ransac_px + 1.0,
        iterationsCount=iterations,
        confidence=0.999,
        flags=cv2.SOLVEPNP_SQPNP,
    )
    if not ok or inl is None or len(inl) < max(6, min_inliers):
        return None
    idx = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(
        points_w[idx].astype(np.float64), uv_px[idx].astype(np.float64), K, None, rvec, tvec
    )
    return make_rigid(cv2.Rodrigues(rvec)[0], tvec.ravel()), len(idx)
