"""Data contracts: validation catches bad shapes, dtypes and non-finite values where they are made;
pose and Sim(3) helpers obey their algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.errors import ContractError
from recon.geometry import compose, invert_rigid, make_rigid, rotation_angle_deg, rotation_from_axis_angle
from recon.types import Frame, ResizeMap, Sim3, WindowPrediction


def random_rigid(rng: np.random.Generator) -> np.ndarray:
    return make_rigid(rotation_from_axis_angle(rng.normal(size=3)), rng.normal(size=3))


def make_prediction(S: int = 3, H: int = 4, W: int = 5, **override) -> WindowPrediction:
    fields = dict(
        frame_indices=list(range(S)),
        depth=torch.ones(S, H, W),
        depth_conf=torch.ones(S, H, W),
        points=torch.zeros(S, H, W, 3),
        points_conf=torch.ones(S, H, W),
        cam_from_world=torch.eye(4).repeat(S, 1, 1),
        K=torch.tensor([[10.0, 0, 2], [0, 10, 1.5], [0, 0, 1]]).repeat(S, 1, 1),
        resize=ResizeMap.identity((H, W)),
    )
    fields.update(override)
    return WindowPrediction(**fields)


def test_frame_accepts_valid_and_normalises_pose() -> None:
    f = Frame(0, 0.0, np.zeros((4, 6, 3), np.uint8), K=np.eye(3), gt_cam_from_world=np.eye(4)[:3])
    assert f.gt_cam_from_world.shape == (4, 4)
    assert f.hw == (4, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_rgb=np.zeros((4, 6, 3), np.float32)), "uint8"),
        (dict(image_rgb=np.zeros((4, 6), np.uint8)), r"\[H,W,3\]"),
        (dict(timestamp_s=float("nan")), "timestamp"),
        (dict(K=np.diag([0.0, 1.0, 1.0])), "focal"),
        (dict(gt_cam_from_world=np.diag([1.0, 1.0, -1.0, 1.0])), "determinant"),
        (dict(gt_depth_m=np.zeros((3, 6), np.float32)), "gt_depth_m"),
        (dict(gt_depth_m=np.full((4, 6), np.inf, np.float32)), "finite"),
    ],
)
def test_frame_rejects_bad_fields(kwargs: dict, message: str) -> None:
    base = dict(index=0, timestamp_s=0.0, image_rgb=np.zeros((4, 6, 3), np.uint8))
    base.update(kwargs)
    with pytest.raises(ContractError, match=message):
        Frame(**base)


def test_prediction_accepts_valid() -> None:
    pred = make_prediction()
    assert len(pred) == 3 and pred.hw == (4, 5)
    assert torch.allclose(pred.world_from_cam, torch.eye(4).repeat(3, 1, 1))


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(depth=torch.ones(3, 4, 5, dtype=torch.float64)), "float32"),
        (dict(depth=torch.full((3, 4, 5), float("nan"))), "NaN"),
        (dict(points=torch.zeros(3, 4, 5, 2)), "points"),
        (dict(depth_conf=torch.ones(2, 4, 5)), "leading dim"),
        (dict(depth=-torch.ones(3, 4, 5)), ">= 0"),
        (dict(cam_from_world=2 * torch.eye(4).repeat(3, 1, 1)), "orthonormal"),
        (dict(resize=ResizeMap.identity((8, 10))), "model_hw"),
    ],
)
def test_prediction_rejects_bad_fields(override: dict, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        make_prediction(**override)


def test_invert_and_compose() -> None:
    rng = np.random.default_rng(0)
    a_from_b, b_from_c = random_rigid(rng), random_rigid(rng)
    np.testing.assert_allclose(compose(a_from_b, invert_rigid(a_from_b)), np.eye(4), atol=1e-12)
    a_from_c = compose(a_from_b, b_from_c)
    x_c = rng.normal(size=3)
    x_a = (a_from_b @ (b_from_c @ np.append(x_c, 1)))[:3]
    np.testing.assert_allclose((a_from_c @ np.append(x_c, 1))[:3], x_a, atol=1e-12)


def test_sim3_apply_inverse_compose() -> None:
    rng = np.random.default_rng(1)
    R = rotation_from_axis_angle(rng.normal(size=3))
    b_from_a = Sim3(2.5, R, rng.normal(size=3))
    c_from_b = Sim3(0.7, rotation_from_axis_angle(rng.normal(size=3)), rng.normal(size=3))
    pts_a = rng.normal(size=(10, 3))
    np.testing.assert_allclose(b_from_a.apply(pts_a), 2.5 * pts_a @ R.T + b_from_a.t)
    np.testing.assert_allclose(b_from_a.inverse().apply(b_from_a.apply(pts_a)), pts_a, atol=1e-12)
    np.testing.assert_allclose((c_from_b @ b_from_a).apply(pts_a), c_from_b.apply(b_from_a.apply(pts_a)), atol=1e-12)
    np.testing.assert_allclose(Sim3.from_matrix(b_from_a.matrix()).matrix(), b_from_a.matrix(), atol=1e-12)
    as_torch = b_from_a.apply(torch.from_numpy(pts_a).float())
    np.testing.assert_allclose(as_torch.numpy(), b_from_a.apply(pts_a), atol=1e-5)


def test_sim3_moves_cameras_consistently_with_points() -> None:
    """A point seen at depth d by a camera is seen at depth s·d by the moved camera, at the same pixel."""
    rng = np.random.default_rng(2)
    target_from_source = Sim3(3.0, rotation_from_axis_angle(rng.normal(size=3)), rng.normal(size=3))
    cam_from_source = random_rigid(rng)
    x_source = rng.normal(size=3) + np.array([0, 0, 5.0])
    x_cam = (cam_from_source @ np.append(x_source, 1))[:3]
    cam_from_target = target_from_source.apply_to_cam_from_world(cam_from_source)
    x_cam_moved = (cam_from_target @ np.append(target_from_source.apply(x_source), 1))[:3]
    np.testing.assert_allclose(x_cam_moved, 3.0 * x_cam, atol=1e-9)
    assert rotation_angle_deg(cam_from_target[:3, :3] @ target_from_source.R @ cam_from_source[:3, :3].T) < 1e-6


@pytest.mark.parametrize("kwargs", [dict(s=0.0), dict(s=float("inf")), dict(R=2 * np.eye(3)), dict(t=np.zeros(2))])
def test_sim3_rejects_invalid(kwargs: dict) -> None:
    with pytest.raises(ContractError):
        Sim3(**kwargs)


def test_resize_map_round_trip_and_intrinsics() -> None:
    rmap = ResizeMap((100, 200), (50, 100), (0.5, 0.5), (-0.25, -0.25))
    uv = np.array([[10.0, 20.0], [199.0, 99.0]])
    np.testing.assert_allclose(rmap.to_original(rmap.to_model(uv)), uv)
    K = np.array([[150.0, 0, 99.5], [0, 150, 49.5], [0, 0, 1]])
    # A 3D point projects to corresponding pixels with the original and the model intrinsics.
    X = np.array([0.3, -0.2, 2.0])
    uv_orig = (K @ X)[:2] / X[2]
    Km = rmap.K_to_model(K)
    np.testing.assert_allclose((Km @ X)[:2] / X[2], rmap.to_model(uv_orig))
    np.testing.assert_allclose(rmap.K_to_original(Km), K)
    chained = rmap.then(ResizeMap((50, 100), (25, 50), (0.5, 0.5), (-0.25, -0.25)))
    np.testing.assert_allclose(chained.to_model(uv), (rmap.to_model(uv) * 0.5 - 0.25))
