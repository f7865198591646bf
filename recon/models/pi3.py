"""π³ as a GeometryModel, registered as `pi3`.

    model = Pi3Model(weights="model.safetensors")       # or create_model("pi3", weights=...)
    pred = model.infer(frames)                          # WindowPrediction in frame 0's camera

The network lives in `pi3_net`, on VGGT's layers (`vggt_layers`); strict safe loading in `weights`, the
option handling (dtype, device, unknown options) shared with VGGT (`recon.models.vggt`). Here: building +
loading (`load_pi3`), the preprocessing (π³'s pixel budget through `datasets.resize`), and packing the outputs
into the contract: π³ ties its world to no view, so each window is moved into its first frame's camera; K is
fitted from the local point maps (spec §11.5)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recon.datasets.resize import apply_resize, plan_resize
from recon.errors import ReconError
from recon.models.pi3_net import Pi3, Pi3Config, Pi3Output
from recon.models.vggt import reject_unknown_options, resolve_device, resolve_dtype
from recon.models.weights import LoadedNetwork, LoadReport, load_weights, weights_identity
from recon.types import Frame, ResizeMap, WindowPrediction

CONFIGS = {"pi3": Pi3Config.pi3, "tiny": Pi3Config.tiny}
FALLBACK_FOV_DEG = 60.0  # K when the fit from rays is degenerate (an untrained net); reported in info


def load_pi3(
    path: str | Path,
    config: Pi3Config | None = None,
    dtype: str | torch.dtype | None = "fp32",
    device: str | torch.device = "cpu",
) -> tuple[Pi3, LoadReport]:
    """Build π³ on the meta device (no random init, no second copy), load `path` strictly (every key and shape,
    the two stored buffers included), move to `device`. `dtype` is the encoder/decoder compute precision."""
    with torch.device("meta"):
        net = Pi3(config or Pi3Config.pi3())
    report = load_weights(net, path, device=device)
    net.amp_dtype = resolve_dtype(dtype)
    return net.eval(), report


def pi3_target_size(original_hw: tuple[int, int], max_pixels: int, patch_size: int = 14) -> tuple[int, int]:
    """The official loader's size (spec §11.3): scale to `max_pixels`, round each side to patches, then drop
    patches from the side that is relatively too long until the budget holds. Returns (W, H)."""
    h, w = original_hw
    scale = math.sqrt(max_pixels / (w * h))
    tw, th = w * scale, h * scale
    k, m = round(tw / patch_size), round(th / patch_size)
    while (k * patch_size) * (m * patch_size) > max_pixels and (k > 1 or m > 1):
        if m <= 1 or (k > 1 and k / m > tw / th):
            k -= 1
        else:
            m -= 1
    return max(1, k) * patch_size, max(1, m) * patch_size


def plan_pi3_resize(original_hw: tuple[int, int], cfg: Pi3Config) -> ResizeMap:
    """The map from original pixels to π³'s input: the largest multiple-of-14 size inside the official target
    box with the aspect kept ("fit"; the official loader stretches to the box, a hair different)."""
    tw, th = pi3_target_size(original_hw, cfg.max_pixels, cfg.patch_size)
    return plan_resize(original_hw, tw, th, mode="fit", multiple_of=cfg.patch_size)


def preprocess(frames: Sequence[Frame], cfg: Pi3Config) -> tuple[torch.Tensor, ResizeMap]:
    """Frames (one size) -> images [N,3,H,W] float32 in [0,1] and the map actually applied."""
    hw = frames[0].hw
    if any(f.hw != hw for f in frames):
        raise ReconError(
            f"frames of one window differ in size {sorted({f.hw for f in frames})}; resize the input to one size"
        )
    rmap = plan_pi3_resize(hw, cfg)
    arrays = [apply_resize(f, rmap).image_rgb for f in frames]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return images.contiguous(), rmap


def intrinsics_from_local_points(local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """local points [N,H,W,3] (z > 0) -> K [N,3,3] float64 and ok [N] bool: per axis, the least-squares fit of
    the pixel coordinate (centres at integers) against x/z (and y/z): u = fx·x/z + cx (spec §11.5). A fit with a
    focal length that is not positive and finite is not ok (the caller falls back)."""
    N, H, W, _ = local.shape
    p = local.double()
    rays = p[..., :2] / p[..., 2:]  # [N,H,W,2]: x/z, y/z
    v, u = torch.meshgrid(
        torch.arange(H, dtype=p.dtype, device=p.device), torch.arange(W, dtype=p.dtype, device=p.device), indexing="ij"
    )
    K = torch.zeros(N, 3, 3, dtype=p.dtype, device=p.device)
    K[:, 2, 2] = 1.0
    for axis, coord in ((0, u), (1, v)):
        a = rays[..., axis].reshape(N, -1)  # [N, H·W]
        b = coord.reshape(1, -1).expand(N, -1)
        a_mean, b_mean = a.mean(1), b.mean(1)
        var = ((a - a_mean[:, None]) ** 2).mean(1)
        cov = ((a - a_mean[:, None]) * (b - b_mean[:, None])).mean(1)
        f = cov / var.clamp_min(1e-300)
        K[:, axis, axis] = f
        K[:, axis, 2] = b_mean - f * a_mean
    focal = torch.stack((K[:, 0, 0], K[:, 1, 1]), dim=-1)
    ok = torch.isfinite(K.reshape(N, -1)).all(1) & (focal > 1e-6).all(1) & torch.isfinite(focal).all(1)
    return K, ok


def fallback_K(hw: tuple[int, int], n: int) -> torch.Tensor:
    """[n,3,3] float64: a centred principal point ((W−1)/2, (H−1)/2) and a FALLBACK_FOV_DEG horizontal FoV."""
    H, W = hw
    f = (W / 2.0) / math.tan(math.radians(FALLBACK_FOV_DEG) / 2.0)
    K = torch.tensor([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return K.expand(n, 3, 3).clone()


def pack_prediction(
    frames: Sequence[Frame], out: Pi3Output, rmap: ResizeMap, info: dict[str, object]
) -> WindowPrediction:
    """Network outputs (batch row 0) -> WindowPrediction in the first frame's camera: every pose and point is
    moved by first_from_world = inverse(world_from_cam of frame 0), so cam_from_world of frame 0 is identity."""
    world_from_cam = out.camera_poses[0].double()  # [N,4,4] π³'s own world
    first_from_world = torch.linalg.inv(world_from_cam[0])
    first_from_cam = first_from_world @ world_from_cam  # [N,4,4]
    R, t = first_from_cam[:, :3, :3], first_from_cam[:, :3, 3]
    cam_from_first = torch.eye(4, dtype=torch.float64, device=R.device).repeat(len(frames), 1, 1)
    cam_from_first[:, :3, :3] = R.transpose(1, 2)
    cam_from_first[:, :3, 3] = -(R.transpose(1, 2) @ t[:, :, None])[..., 0]
    local = out.local_points[0].double()  # [N,H,W,3]
    points = torch.einsum("nij,nhwj->nhwi", R, local) + t[:, None, None, :]
    conf = torch.sigmoid(out.conf[0, ..., 0].float())  # [N,H,W] in [0, 1]
    K, ok = intrinsics_from_local_points(local)
    if not bool(ok.all()):
        K[~ok] = fallback_K(rmap.model_hw, int((~ok).sum())).to(K.device)
    info["intrinsics_fallback_frames"] = int((~ok).sum())
    return WindowPrediction(
        frame_indices=[f.index for f in frames],
        depth=out.local_points[0, ..., 2].float(),
        depth_conf=conf,
        points=points.float(),
        points_conf=conf.clone(),
        cam_from_world=cam_from_first.float(),
        K=K.float(),
        resize=rmap,
        metric=False,
        info=info,
    )


class Pi3Model(LoadedNetwork):
    """GeometryModel `pi3`: one offline forward per window (permutation-equivariant: no anchor frame).

    Outputs: depth = local z, points = local points placed by the poses, both confidences = sigmoid(conf
    logits), cam_from_world from the camera head, K fitted per frame from the local points' rays (model pixels);
    all in the window's first camera. `metric` False."""

    name = "pi3"
    metric = False
    # π³ normalises each window's scale itself; the run's world takes the first window's.
    scale_convention = "π³'s own normalisation, set by the first window (each window's scale is its own)"

    def __init__(
        self,
        weights: str | Path | None = None,
        config: Pi3Config | str | None = None,
        dtype: str | torch.dtype | None = "fp32",
        device: str | torch.device | None = None,
        **unknown: object,
    ) -> None:
        reject_unknown_options(self.name, unknown)
        if weights is None:
            raise ReconError("the pi3 model needs weights: pass --weights PATH (model.safetensors of yyfz233/Pi3)")
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ReconError(f"pi3: unknown config {config!r}; choose one of {', '.join(CONFIGS)}")
            config = CONFIGS[config]()
        resolve_dtype(dtype)  # a bad flag fails before the slow loading
        self.net, self.load_report = load_pi3(weights, config, dtype, resolve_device(device))
        self.config, self.device = self.net.cfg, next(self.net.parameters()).device
        self.weights_file = weights_identity(weights)

    def forward_images(self, images: torch.Tensor) -> Pi3Output:
        """images [N,3,H,W] in [0,1] -> raw network outputs (batch of one scene)."""
        with torch.inference_mode():
            return self.net(images.to(self.device))

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        if len(frames) < 1:
            raise ReconError("pi3 needs at least one frame per window")
        t0 = time.perf_counter()
        images, rmap = preprocess(frames, self.config)
        t1 = time.perf_counter()
        out = self.forward_images(images)
        t2 = time.perf_counter()
        info: dict[str, object] = {"dtype": self.dtype_name}
        pred = pack_prediction(frames, out, rmap, info)
        info["timings"] = {"preprocess_s": t1 - t0, "forward_s": t2 - t1, "total_s": time.perf_counter() - t0}
        return pred
