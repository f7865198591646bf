"""Data contracts (ARCHITECTURE §2): `Frame`, `ResizeMap`, `WindowPrediction`, `Sim3`.

Every contract validates itself on construction, so a bad shape, dtype or a non-finite value is caught
where it is made, not three stages later."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from recon.errors import ContractError, NonFiniteError
from recon.geometry import as_4x4, invert_rigid, make_rigid

if TYPE_CHECKING:  # torch is imported where tensors are touched: frame sources and `recon --help` stay light
    import torch


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ContractError(message)


def _check_rigid(T: np.ndarray, name: str, atol: float = 1e-4) -> None:
    R = T[..., :3, :3]
    RtR = np.swapaxes(R, -1, -2) @ R
    _check(np.allclose(RtR, np.eye(3), atol=atol), f"{name}: rotation part is not orthonormal")
    _check(bool(np.all(np.linalg.det(R) > 0)), f"{name}: rotation part has negative determinant")
    _check(np.allclose(T[..., 3, :], [0, 0, 0, 1], atol=1e-9), f"{name}: last row must be [0, 0, 0, 1]")


def _check_K(K: np.ndarray, name: str) -> None:
    _check(K.shape[-2:] == (3, 3), f"{name}: intrinsics must be [...,3,3], got {K.shape}")
    _check(bool(np.all(np.isfinite(K))), f"{name}: intrinsics contain NaN/inf")
    _check(bool(np.all(K[..., 0, 0] > 0) and np.all(K[..., 1, 1] > 0)), f"{name}: focal lengths must be > 0")


@dataclass(frozen=True)
class ResizeMap:
    """Per-axis affine map between original image pixels and model pixels (pixel centres at integers):
    `u_model = scale_xy[0] * u_orig + offset_xy[0]`, same for v. Covers resize, crop and pad."""

    original_hw: tuple[int, int]
    model_hw: tuple[int, int]
    scale_xy: tuple[float, float] = (1.0, 1.0)
    offset_xy: tuple[float, float] = (0.0, 0.0)

    @staticmethod
    def identity(hw: tuple[int, int]) -> ResizeMap:
        h, w = hw
        return ResizeMap(original_hw=(h, w), model_hw=(h, w))

    def to_model(self, uv_orig: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv_orig, dtype=np.float64)
        return uv * np.asarray(self.scale_xy) + np.asarray(self.offset_xy)

    def to_original(self, uv_model: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv_model, dtype=np.float64)
        return (uv - np.asarray(self.offset_xy)) / np.asarray(self.scale_xy)

    def K_to_model(self, K_orig: np.ndarray) -> np.ndarray:
        """Intrinsics of the original image -> intrinsics of the model image."""
        A = np.array([[self.scale_xy[0], 0, self.offset_xy[0]], [0, self.scale_xy[1], self.offset_xy[1]], [0, 0, 1]])
        return A @ np.asarray(K_orig, dtype=np.float64)

    def K_to_original(self, K_model: np.ndarray) -> np.ndarray:
        A_inv = np.array(
            [
                [1 / self.scale_xy[0], 0, -self.offset_xy[0] / self.scale_xy[0]],
                [0, 1 / self.scale_xy[1], -self.offset_xy[1] / self.scale_xy[1]],
                [0, 0, 1],
            ]
        )
        return A_inv @ np.asarray(K_model, dtype=np.float64)

    def then(self, other: ResizeMap) -> ResizeMap:
        """Chain: first self (orig -> mid), then other (mid -> model)."""
        _check(tuple(self.model_hw) == tuple(other.original_hw), "ResizeMap.then: sizes do not chain")
        sx = other.scale_xy[0] * self.scale_xy[0]
        sy = other.scale_xy[1] * self.scale_xy[1]
        ox = other.scale_xy[0] * self.offset_xy[0] + other.offset_xy[0]
        oy = other.scale_xy[1] * self.offset_xy[1] + other.offset_xy[1]
        return ResizeMap(self.original_hw, other.model_hw, (sx, sy), (ox, oy))


@dataclass
class Frame:
    """One input frame. `index` is the frame's own number in its source (file position in a folder or
    dataset sequence, frame number in a video, frames read from a stream), whatever was skipped before it
    (stride, unreadable files): a pose keeps it into frames.txt, and ground truth is found by it.
    `image_rgb` uint8 [H,W,3]; `K` float64 [3,3] in pixels of this image when known;
    ground truth when the source has it: `gt_cam_from_world` [4,4] (world = the sequence's first camera,
    metres when metric) and `gt_depth_m` float32 [H,W] with 0 = invalid."""

    index: int
    timestamp_s: float
    image_rgb: np.ndarray
    K: np.ndarray | None = None
    gt_cam_from_world: np.ndarray | None = None
    gt_depth_m: np.ndarray | None = None
    resize: ResizeMap | None = None  # set once the frame was resized for a model

    def __post_init__(self) -> None:
        img = self.image_rgb
        _check(isinstance(img, np.ndarray), f"Frame {self.index}: image_rgb must be a numpy array")
        _check(img.dtype == np.uint8, f"Frame {self.index}: image_rgb must be uint8, got {img.dtype}")
        _check(img.ndim == 3 and img.shape[2] == 3, f"Frame {self.index}: image_rgb must be [H,W,3], got {img.shape}")
        _check(img.shape[0] > 0 and img.shape[1] > 0, f"Frame {self.index}: empty image")
        _check(bool(np.isfinite(self.timestamp_s)), f"Frame {self.index}: timestamp is not finite")
        if self.K is not None:
            self.K = np.asarray(self.K, dtype=np.float64)
            _check_K(self.K, f"Frame {self.index}")
        if self.gt_cam_from_world is not None:
            T = as_4x4(self.gt_cam_from_world)
            _check(bool(np.all(np.isfinite(T))), f"Frame {self.index}: gt pose contains NaN/inf")
            _check_rigid(T, f"Frame {self.index}: gt_cam_from_world")
            self.gt_cam_from_world = T
        if self.gt_depth_m is not None:
            d = np.asarray(self.gt_depth_m, dtype=np.float32)
            _check(d.shape == img.shape[:2], f"Frame {self.index}: gt_depth_m {d.shape} != image {img.shape[:2]}")
            _check(
                bool(np.all(np.isfinite(d))) and bool(np.all(d >= 0)),
                f"Frame {self.index}: gt_depth_m must be finite and >= 0",
            )
            self.gt_depth_m = d

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image_rgb.shape[0]), int(self.image_rgb.shape[1])

    @property
    def meta(self) -> FrameMeta:
        return FrameMeta(self.index, self.timestamp_s, self.gt_cam_from_world)


@dataclass(frozen=True)
class FrameMeta:
    """What the trajectory keeps of a frame once its image is gone: its number in the source, its time, and
    its ground-truth pose when the source has one."""

    index: int
    timestamp_s: float
    gt_cam_from_world: np.ndarray | None = None


@dataclass(frozen=True)
class Keypoints:
    """Sparse points a model placed itself (e.g. bundle-adjusted tracks), observed in the window's frames:
    frame [N] int (0..S-1), uv [N,2] model pixels, depth [N] z-depth in the window's units (> 0). Two
    windows that share a frame see many of the same corners there: their depth ratio is the join's scale,
    consistent with the windows' poses (dense depth can disagree with them)."""

    frame: np.ndarray
    uv: np.ndarray
    depth: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.frame)
        _check(self.uv.shape == (n, 2) and self.depth.shape == (n,), "Keypoints: frame [N], uv [N,2], depth [N]")

    def select_frames(self, first: int, stop: int, scale: float = 1.0) -> Keypoints:
        """The keypoints of frames first..stop-1, renumbered from 0, depths times `scale`."""
        keep = (self.frame >= first) & (self.frame < stop)
        return Keypoints(self.frame[keep] - first, self.uv[keep], self.depth[keep] * scale)


# Degeneracies a model names in `WindowPrediction.flags`; a run that reconstructed nothing says why by them.
FLAG_TOO_FEW_TRACKS = "too_few_tracks"  # too little texture to track (blank, dark, blurred or tiny images)
FLAG_LOW_PARALLAX = "low_parallax"  # the camera barely moved or only turned: no depth


@dataclass
class WindowPrediction:
    """What a geometry model says about S frames of one window, all torch float32 on one device.

    depth [S,H,W] (>= 0, along the camera z axis), depth_conf [S,H,W] (>= 0, higher = more trusted),
    points [S,H,W,3] in the window's reference frame, points_conf [S,H,W], cam_from_world [S,4,4]
    (world = the window's reference frame), K [S,3,3] in model pixels; `resize` maps model pixels to the
    frames' original pixels. `metric` says whether the scale is metres; otherwise it is arbitrary per
    window and the pipeline aligns it. `flags` names degeneracies (e.g. FLAG_LOW_PARALLAX). `registered` [S]
    bool: the frames the model could place (their pose is a placeholder where False; None: all). `info`: the
    model's own numbers (timings, cache sizes), reported and plotted as they come."""

    frame_indices: list[int]
    depth: torch.Tensor
    depth_conf: torch.Tensor
    points: torch.Tensor
    points_conf: torch.Tensor
    cam_from_world: torch.Tensor
    K: torch.Tensor
    resize: ResizeMap
    metric: bool = False
    flags: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    keypoints: Keypoints | None = None
    registered: np.ndarray | None = None

    def __post_init__(self) -> None:
        import torch

        self.frame_indices = [int(i) for i in self.frame_indices]
        S = len(self.frame_indices)
        _check(S > 0, "WindowPrediction: no frames")
        tensors = {
            "depth": self.depth,
            "depth_conf": self.depth_conf,
            "points": self.points,
            "points_conf": self.points_conf,
            "cam_from_world": self.cam_from_world,
            "K": self.K,
        }
        for name, t in tensors.items():
            _check(isinstance(t, torch.Tensor), f"WindowPrediction.{name} must be a torch.Tensor")
            _check(t.dtype == torch.float32, f"WindowPrediction.{name} must be float32, got {t.dtype}")
            _check(t.shape[0] == S, f"WindowPrediction.{name}: leading dim {t.shape[0]} != {S} frames")
            # The sum of finite values is finite: one cheap pass instead of a boolean map per tensor.
            if not (bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())):
                raise NonFiniteError(f"WindowPrediction.{name} contains NaN/inf")
        _check(self.depth.ndim == 3, f"WindowPrediction.depth must be [S,H,W], got {tuple(self.depth.shape)}")
        H, W = self.depth.shape[1:]
        _check(tuple(self.depth_conf.shape) == (S, H, W), "WindowPrediction.depth_conf must be [S,H,W]")
        _check(tuple(self.points.shape) == (S, H, W, 3), "WindowPrediction.points must be [S,H,W,3]")
        _check(tuple(self.points_conf.shape) == (S, H, W), "WindowPrediction.points_conf must be [S,H,W]")
        _check(tuple(self.cam_from_world.shape) == (S, 4, 4), "WindowPrediction.cam_from_world must be [S,4,4]")
        _check(tuple(self.K.shape) == (S, 3, 3), "WindowPrediction.K must be [S,3,3]")
        _check(
            tuple(self.resize.model_hw) == (H, W),
            f"WindowPrediction.resize.model_hw {self.resize.model_hw} != {(H, W)}",
        )
        if self.registered is not None:
            self.registered = np.asarray(self.registered, dtype=bool)
            _check(self.registered.shape == (S,), f"WindowPrediction.registered must be [S={S}] bool")
        _check(bool((self.depth >= 0).all()), "WindowPrediction.depth must be >= 0")
        _check(bool((self.depth_conf >= 0).all()) and bool((self.points_conf >= 0).all()), "confidences must be >= 0")
        _check_rigid(self.cam_from_world.detach().double().cpu().numpy(), "WindowPrediction.cam_from_world", atol=1e-3)
        _check_K(self.K.detach().double().cpu().numpy(), "WindowPrediction")

    def __len__(self) -> int:
        return len(self.frame_indices)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    @property
    def world_from_cam(self) -> torch.Tensor:
        import torch

        return torch.from_numpy(invert_rigid(self.cam_from_world.double().cpu().numpy())).float().to(self.depth.device)


@dataclass(frozen=True)
class Sim3:
    """A similarity `x -> s R x + t` (float64). Name instances `target_from_source`."""

    s: float = 1.0
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        R = np.asarray(self.R, dtype=np.float64)
        t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        _check(R.shape == (3, 3), f"Sim3.R must be [3,3], got {R.shape}")
        _check(t.shape == (3,), f"Sim3.t must be [3], got {t.shape}")
        _check(bool(np.isfinite(self.s)) and self.s > 0, f"Sim3.s must be finite and > 0, got {self.s}")
        _check(bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t))), "Sim3 contains NaN/inf")
        _check(np.allclose(R.T @ R, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0, "Sim3.R is not a rotation")
        object.__setattr__(self, "s", float(self.s))
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @staticmethod
    def identity() -> Sim3:
        return Sim3()

    @staticmethod
    def from_matrix(M: np.ndarray) -> Sim3:
        """[4,4] with top-left block s·R."""
        M = np.asarray(M, dtype=np.float64)
        sR = M[:3, :3]
        s = float(np.cbrt(np.linalg.det(sR)))
        return Sim3(s, sR / s, M[:3, 3])

    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3] = self.s * self.R
        M[:3, 3] = self.t
        return M

    @overload
    def apply(self, points: np.ndarray) -> np.ndarray: ...
    @overload
    def apply(self, points: torch.Tensor) -> torch.Tensor: ...
    def apply(self, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Points [...,3] in source -> target (numpy in, numpy out; a tensor in, a tensor out)."""
        torch = sys.modules.get("torch")  # if torch was never imported, `points` cannot be a tensor
        if torch is not None and isinstance(points, torch.Tensor):
            sR = torch.as_tensor(self.s * self.R, dtype=points.dtype, device=points.device)
            t = torch.as_tensor(self.t, dtype=points.dtype, device=points.device)
            return points @ sR.T + t
        return np.asarray(points) @ (self.s * self.R).T + self.t

    def inverse(self) -> Sim3:
        R_inv = self.R.T
        return Sim3(1.0 / self.s, R_inv, -(R_inv @ self.t) / self.s)

    def __matmul__(self, other: Sim3) -> Sim3:
        """(a_from_b @ b_from_c) -> a_from_c."""
        return Sim3(self.s * other.s, self.R @ other.R, self.s * (self.R @ other.t) + self.t)

    def apply_to_world_from_cam(self, world_from_cam: np.ndarray) -> np.ndarray:
        """Move camera poses [...,4,4] from the source world to the target world. The result is rigid:
        the rotation turns by R and the centre maps by the similarity (scale changes depths, not axes)."""
        T = as_4x4(world_from_cam)
        R = self.R @ T[..., :3, :3]
        t = self.s * np.einsum("ij,...j->...i", self.R, T[..., :3, 3]) + self.t
        return make_rigid(R, t)

    def apply_to_cam_from_world(self, cam_from_world: np.ndarray) -> np.ndarray:
        return invert_rigid(self.apply_to_world_from_cam(invert_rigid(cam_from_world)))
