"""VGGT as a GeometryModel, registered as `vggt`.

    model = VGGTModel(weights="model.safetensors")      # or create_model("vggt", weights=...)
    pred = model.infer(frames)                          # WindowPrediction in frame 0's camera

The network lives in `vggt_net` (config, aggregator, heads), its layers in `vggt_layers` and `dpt`,
strict safe loading in `weights`. Here: building + loading (`load_vggt`), the construction `vggt` and
`streamvggt` share (`VGGTBackedModel`), the official "crop" preprocessing with its exact map back to original
pixels (`plan_vggt_resize`, `preprocess`), and packing the outputs into the contract."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recon.errors import ModelError, ReconError
from recon.geometry import rotation_angle_deg
from recon.models.base import DTYPE_NAMES
from recon.models.vggt_net import VGGT, VGGTConfig, VGGTOutput, pose_encoding_to_extrinsics_intrinsics
from recon.models.weights import LoadedNetwork, LoadReport, load_weights, weights_identity
from recon.types import Frame, ResizeMap, WindowPrediction

TRACK_HEAD_PREFIX = "track_head."  # the tracker is not built: its 394 tensors are skipped, and counted
DTYPES: dict[str, torch.dtype] = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))
CONFIGS = {"1b": VGGTConfig.vggt_1b, "vggt_1b": VGGTConfig.vggt_1b, "tiny": VGGTConfig.tiny}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_vggt(
    path: str | Path,
    config: VGGTConfig | None = None,
    dtype: str | torch.dtype | None = "fp32",
    device: str | torch.device = "cpu",
) -> tuple[VGGT, LoadReport]:
    """Build VGGT on the meta device (no random init, no second copy), load `path` strictly (track head
    skipped knowingly), move to `device`. `dtype` is the aggregator's compute precision (autocast over
    float32 weights, as the official inference); the heads always run in float32."""
    with torch.device("meta"):
        net = VGGT(config or VGGTConfig.vggt_1b())
    report = load_weights(net, path, device=device, skip_prefixes=(TRACK_HEAD_PREFIX,))
    net.amp_dtype = resolve_dtype(dtype)
    return net.eval(), report


def load_for_model(
    model_name: str,
    weights: str | Path | None,
    config: VGGTConfig | str | None,
    dtype: str | torch.dtype | None,
    device: str | torch.device | None,
) -> tuple[VGGT, LoadReport]:
    """The user-facing options of `vggt` / `streamvggt` (same checkpoint) -> loaded network; one-line errors."""
    if weights is None:
        raise ReconError(
            f"the {model_name} model needs weights: pass --weights PATH (model.safetensors or model.pt of "
            f"facebook/VGGT-1B{', or checkpoints.pth of StreamVGGT' if model_name == 'streamvggt' else ''})"
        )
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ReconError(f"{model_name}: unknown config {config!r}; choose one of {', '.join(CONFIGS)}")
        config = CONFIGS[config]()
    return load_vggt(weights, config or VGGTConfig.vggt_1b(), dtype, resolve_device(device))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """--device -> a torch device that exists here (default: cuda when available); ModelError otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown --device {str(device)!r}; use cpu, cuda or cuda:N") from None
    try:
        torch.empty(0, device=resolved)  # the one check that covers every backend: CUDA built? index exists?
    except (RuntimeError, AssertionError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"--device {resolved} is not available here ({why}); use --device cpu") from None
    return resolved


def reject_unknown_options(model_name: str, unknown: Mapping[str, object]) -> None:
    """A model's constructor takes `**unknown` so that an option meant for another model is a one-line error."""
    if unknown:
        raise ReconError(f"{model_name}: unknown options {', '.join(sorted(unknown))}")


class VGGTBackedModel(LoadedNetwork):
    """The construction `vggt` and `streamvggt` share (one checkpoint, one network): the options weights,
    config, dtype and device -> the loaded network on its device (`load_for_model`), and `reanchor`.
    A subclass rejects unknown options and checks its own cheap ones before calling this, so that a bad flag
    fails before the slow weight loading."""

    name: str

    def __init__(
        self,
        weights: str | Path | None,
        config: VGGTConfig | str | None,
        dtype: str | torch.dtype | None,
        device: str | torch.device | None,
        reanchor: bool,
    ) -> None:
        self.net, self.load_report = load_for_model(self.name, weights, config, dtype, device)
        self.config, self.device = self.net.cfg, next(self.net.parameters()).device
        self.reanchor = reanchor
        assert weights is not None  # load_for_model refuses a model without weights
        self.weights_file = weights_identity(weights)


# -- preprocessing (spec §8, mode "crop") --------------------------------------------------------------


def plan_vggt_resize(
    original_hw: tuple[int, int], img_size: int = 518, patch_size: int = 14
) -> tuple[tuple[int, int], int, ResizeMap]:
    """Width -> img_size, height -> round(h·img_size/w / patch)·patch (Python round, half-even, as the
    official code), then centre-crop rows to img_size if taller. Returns ((resized_w, resized_h), crop_top,
    map original -> model pixels) with pixel centres at integers: u' = s(u + ½) − ½ − crop."""
    h, w = original_hw
    new_w = img_size
    new_h = max(patch_size, round(h * (new_w / w) / patch_size) * patch_size)
    top = (new_h - img_size) // 2 if new_h > img_size else 0
    sx, sy = new_w / w, new_h / h
    rmap = ResizeMap(
        original_hw=(h, w),
        model_hw=(min(new_h, img_size), new_w),
        scale_xy=(sx, sy),
        offset_xy=(0.5 * sx - 0.5, 0.5 * sy - 0.5 - top),
    )
    return (new_w, new_h), top, rmap


def preprocess(frames: Sequence[Frame], img_size: int = 518, patch_size: int = 14) -> tuple[torch.Tensor, ResizeMap]:
    """Frames (one size) -> images [S,3,H,W] float32 in [0,1] (PIL bicubic, as the official loader) and the map."""
    hw = frames[0].hw
    if any(f.hw != hw for f in frames):
        raise ReconError(
            f"frames of one window differ in size {sorted({f.hw for f in frames})}; resize the input to one size"
        )
    (new_w, new_h), top, rmap = plan_vggt_resize(hw, img_size, patch_size)
    H = rmap.model_hw[0]
    arrays = []
    for f in frames:
        img = np.asarray(Image.fromarray(f.image_rgb).resize((new_w, new_h), Image.Resampling.BICUBIC))
        arrays.append(img[top : top + H])
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return images.contiguous(), rmap


# -- the GeometryModel ---------------------------------------------------------------------------------


class VGGTModel(VGGTBackedModel):
    """GeometryModel `vggt`: one offline forward per window.

    Outputs: depth/depth_conf from the depth head, points/points_conf from the point head, cam_from_world
    and K (model pixels, principal point (W/2, H/2) as VGGT predicts it) from the camera head; `metric`
    False (VGGT's scale is normalised per window). VGGT is trained to put frame 0 at [I|0]; with
    `reanchor` (default) the small residual is removed by one rigid change of coordinates applied to poses
    and points alike, so frame 0 is exactly the window's reference frame (the residual is reported in
    `info`)."""

    name = "vggt"
    metric = False
    # VGGT's training normalised each scene by the mean distance of its points from the first camera.
    scale_convention = "VGGT's own: the first window's points lie about 1 from its first camera on average"

    def __init__(
        self,
        weights: str | Path | None = None,
        config: VGGTConfig | str | None = None,
        dtype: str | torch.dtype | None = "fp32",
        device: str | torch.device | None = None,
        reanchor: bool = True,
        causal_frames: bool = False,
        **unknown: object,
    ) -> None:
        reject_unknown_options(self.name, unknown)
        super().__init__(weights, config, dtype, device, reanchor)
        self.causal_frames = causal_frames

    def forward_images(self, images: torch.Tensor) -> VGGTOutput:
        """images [S,3,H,W] in [0,1] -> raw network outputs (batch of one scene)."""
        with torch.inference_mode():
            return self.net(images.to(self.device), causal_frames=self.causal_frames)

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        if len(frames) < 1:
            raise ReconError("vggt needs at least one frame per window")
        t0 = time.perf_counter()
        images, rmap = preprocess(frames, self.config.img_size, self.config.patch_size)
        t1 = time.perf_counter()
        out = self.forward_images(images)
        t2 = time.perf_counter()
        info: dict[str, object] = {}
        anchor_from_world = anchor_correction(out.pose_enc[0, 0], rmap.model_hw, info) if self.reanchor else None
        info.update(
            timings={"preprocess_s": t1 - t0, "forward_s": t2 - t1, "total_s": time.perf_counter() - t0},
            dtype=self.dtype_name,
            causal_frames=self.causal_frames,
        )
        return pack_prediction(frames, out, rmap, anchor_from_world, info)


def anchor_correction(
    anchor_pose_enc: torch.Tensor, model_hw: tuple[int, int], info: dict[str, object]
) -> torch.Tensor:
    """VGGT is trained to put the anchor frame at [I|0]. From the anchor's pose encoding [9], returns the
    rigid change of coordinates (float64 [4,4]) that makes it exactly so (new world = the anchor's predicted
    camera), and records the residual it removes in `info`."""
    cam0_from_world = pose_encoding_to_extrinsics_intrinsics(anchor_pose_enc.double(), model_hw)[0]
    info["frame0_rotation_deg"] = float(rotation_angle_deg(cam0_from_world[:3, :3].cpu().numpy()))
    info["frame0_translation"] = float(cam0_from_world[:3, 3].norm())
    return cam0_from_world


def pack_prediction(
    frames: Sequence[Frame],
    out: VGGTOutput,
    rmap: ResizeMap,
    anchor_from_world: torch.Tensor | None,
    info: dict[str, object],
) -> WindowPrediction:
    """Network outputs for `frames` (batch row 0) -> WindowPrediction, with poses and points moved into the
    anchor's camera by `anchor_from_world` (float64 [4,4]) when given."""
    cam_from_world, K = pose_encoding_to_extrinsics_intrinsics(out.pose_enc[0].double(), rmap.model_hw)
    points = out.world_points[0].double()
    if anchor_from_world is not None:
        # cam_s_from_anchor = cam_s_from_world @ world_from_anchor; x_anchor = anchor_from_world(x_world).
        cam_from_world = cam_from_world @ torch.linalg.inv(anchor_from_world)
        points = points @ anchor_from_world[:3, :3].T + anchor_from_world[:3, 3]
    fov = out.pose_enc[0, :, 7:9]
    info["fov_clamped"] = bool(((fov < 1e-3) | (fov > math.pi - 1e-3)).any())
    return WindowPrediction(
        frame_indices=[f.index for f in frames],
        depth=out.depth[0].float(),
        depth_conf=out.depth_conf[0].float(),
        points=points.float(),
        points_conf=out.world_points_conf[0].float(),
        cam_from_world=cam_from_world.float(),
        K=K.float(),
        resize=rmap,
        metric=False,
        info=info,
    )
