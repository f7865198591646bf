"""Pose math in numpy, float64. Conventions (ARCHITECTURE §2): OpenCV camera axes, `cam_from_world` maps world
points into the camera, `world_from_cam` is its inverse; 4x4 homogeneous rigid transforms."""

from __future__ import annotations

import math

import numpy as np


def grid_stride(num_pixels: int, max_samples: int) -> int:
    """The pixel stride (both axes) that keeps at most about `max_samples` of `num_pixels`."""
    return max(1, math.ceil(math.sqrt(num_pixels / max(max_samples, 1))))


def as_4x4(T: np.ndarray) -> np.ndarray:
    """[...,3,4] or [...,4,4] -> [...,4,4] float64."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] == (4, 4):
        return T.copy()
    if T.shape[-2:] != (3, 4):
        raise ValueError(f"expected a [...,3,4] or [...,4,4] transform, got shape {T.shape}")
    out = np.zeros(T.shape[:-2] + (4, 4))
    out[..., :3, :] = T
    out[..., 3, 3] = 1.0
    return out


def make_rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rotation [...,3,3] and translation [...,3] -> [...,4,4]."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(R.shape[:-2] + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms [...,4,4] (or [...,3,4]) without a general matrix inverse:
    `world_from_cam = invert_rigid(cam_from_world)` and back."""
    T = as_4x4(T)
    R_inv = np.swapaxes(T[..., :3, :3], -1, -2)
    t_inv = -np.einsum("...ij,...j->...i", R_inv, T[..., :3, 3])
    return make_rigid(R_inv, t_inv)


def compose(*transforms: np.ndarray) -> np.ndarray:
    """compose(a_from_b, b_from_c, ...) -> a_from_c."""
    out = as_4x4(transforms[0])
    for T in transforms[1:]:
        out = out @ as_4x4(T)
    return out


def rotate(R: np.ndarray, points: np.ndarray) -> np.ndarray:
    """R [3,3] applied to points [...,3]. Written as three broadcasts: numpy's matmul on [N,3] @ [3,3]
    takes a slow generic path (tens of ms for an image's worth of points)."""
    return points[..., 0:1] * R[:, 0] + points[..., 1:2] * R[:, 1] + points[..., 2:3] * R[:, 2]


def transform_points(a_from_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Apply one [4,4] transform to points [...,3]."""
    T = as_4x4(a_from_b)
    return rotate(T[:3, :3], points_b) + T[:3, 3]


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """Nearest rotation matrix (SVD), [...,3,3]."""
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(U.shape[:-1])
    D[..., -1] = d
    return (U * D[..., None, :]) @ Vt


def rotation_distance_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Angle between rotations [...,3,3] in degrees, from the chord |Ra - Rb|_F = 2 sqrt(2) sin(angle / 2):
    unlike arccos of the trace it stays accurate for tiny angles (float32 poses read ~0.02 deg there)."""
    chord = np.linalg.norm(np.asarray(Ra, dtype=np.float64) - np.asarray(Rb, dtype=np.float64), axis=(-2, -1)) / (
        2.0 * np.sqrt(2.0)
    )
    return np.degrees(2.0 * np.arcsin(np.clip(chord, 0.0, 1.0)))


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Angle of rotation matrices [...,3,3] in degrees."""
    return rotation_distance_deg(R, np.eye(3))


def quat_xyzw_from_rotation(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [...,3,3] -> unit quaternions [...,4] (x, y, z, w), w >= 0 (TUM order)."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, dtype=np.float64)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat(canonical=True)
    return q.reshape(R.shape[:-2] + (4,))


def rotation_from_quat_xyzw(q: np.ndarray) -> np.ndarray:
    """Quaternions [...,4] (x, y, z, w), any norm > 0 -> rotation matrices [...,3,3]."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(q, dtype=np.float64)
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def skew(v: np.ndarray) -> np.ndarray:
    """[...,3] -> [...,3,3] cross-product matrices: skew(a) @ b == a x b."""
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def rotation_from_axis_angle(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: [...,3] rotation vectors (radians) -> [...,3,3]."""
    v = np.asarray(axis_angle, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1, keepdims=True)
    K = skew(v / np.maximum(theta, 1e-300))
    th = theta[..., None]
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * (K @ K)
