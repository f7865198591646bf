"""The VGGT network (as facebookresearch/vggt): `VGGTConfig`, `Aggregator`, `CameraHead`, `VGGT`, and the
pose-encoding conversions. One parameterised code path: `VGGTConfig.vggt_1b()` is the released model,
`VGGTConfig.tiny()` the same graph at toy size for tests. The GeometryModel adapter is `recon.models.vggt`.

Shapes: B scenes, S frames, H×W input (multiples of 14), h = H/14, w = W/14, P = 5 + h·w tokens per
frame, C = embed_dim, 2C = the aggregated feature width fed to the heads. The track head is not built."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.models.dpt import DPTHead
from recon.models.vggt_layers import Block, DinoViT, KVHook, Mlp, RotaryPositionEmbedding2D, patch_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VGGTConfig:
    img_size: int = 518  # sets only the DINO pos-embed grid (and our preprocessing width)
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24  # frame blocks = global blocks = depth
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    rope_freq: float = 100.0
    layerscale_init: float = 0.01
    dino_depth: int = 24
    dino_num_heads: int = 16
    dino_registers: int = 4
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_hidden: int = 32

    @staticmethod
    def vggt_1b() -> VGGTConfig:
        return VGGTConfig()

    @staticmethod
    def tiny() -> VGGTConfig:
        """Same graph, toy widths: embed 64, 2 frame + 2 global blocks, 4 heads, DINO depth 2, img 42 (a 2:3
        frame becomes 28×42, and the 3×3 pos-embed grid is resized to 2×3: the interpolation path runs)."""
        return VGGTConfig(
            img_size=42,
            embed_dim=64,
            depth=2,
            num_heads=4,
            dino_depth=2,
            dino_num_heads=4,
            camera_trunk_depth=2,
            camera_num_heads=4,
            dpt_features=16,
            dpt_out_channels=(8, 16, 32, 32),
            dpt_layers=(0, 0, 1, 1),
            dpt_hidden=8,
        )

    @property
    def patch_start_idx(self) -> int:
        return 1 + self.num_register_tokens  # camera token + registers


def _slot_tokens(param: Tensor, B: int, S: int, includes_anchor: bool) -> Tensor:
    """[1, 2, n, C] two-slot special token -> [B·S, n, C]: slot 0 for frame 0 (the anchor, when this call
    holds it), slot 1 for every other frame. This is what ties the world frame to frame 0."""
    n, C = param.shape[2:]
    first = param[:, 0:1] if includes_anchor else param[:, 1:2]
    rest = param[:, 1:2].expand(1, S - 1, n, C)
    return torch.cat((first, rest), dim=1).expand(B, S, n, C).reshape(B * S, n, C)


class Aggregator(nn.Module):
    """DINO patch tokens + camera/register tokens, then alternating frame / global attention (spec §3)."""

    def __init__(self, cfg: VGGTConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.cfg = cfg
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, C) * 1e-6)
        self.patch_embed = DinoViT(
            cfg.img_size, cfg.patch_size, C, cfg.dino_depth, cfg.dino_num_heads, cfg.dino_registers, cfg.mlp_ratio
        )
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq)
        self.frame_blocks = nn.ModuleList(self._block(cfg) for _ in range(cfg.depth))
        self.global_blocks = nn.ModuleList(self._block(cfg) for _ in range(cfg.depth))

    def _block(self, cfg: VGGTConfig) -> Block:
        return Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.layerscale_init, qk_norm=True, rope=self.rope)

    def forward(
        self,
        images: Tensor,
        causal_frames: bool = False,
        keep_layers: Iterable[int] | None = None,
        global_kv: Sequence[KVHook | None] | None = None,
        includes_anchor: bool = True,
    ) -> list[Tensor | None]:
        """images [B,S,3,H,W] in [0,1] -> out[k] = cat(frame_k, global_k) [B,S,P,2C] for k in `keep_layers`
        (default all), None elsewhere (saves memory: the heads read 4 layers).

        causal_frames: global attention is block-causal by frame (StreamVGGT's full-sequence forward).
        global_kv: one hook per global block (StreamVGGT's KV cache); see `vggt_layers.KVHook`.
        includes_anchor: False when frame 0 of this call is not the window's first frame (a streaming step),
        so every frame gets the slot-1 special tokens."""
        cfg = self.cfg
        B, S, _, H, W = images.shape
        h, w = H // cfg.patch_size, W // cfg.patch_size
        mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 1, 3, 1, 1)
        patches = self.patch_embed(((images - mean) / std).reshape(B * S, 3, H, W))  # [BS, h*w, C]
        camera = _slot_tokens(self.camera_token, B, S, includes_anchor)  # [BS, 1, C]
        registers = _slot_tokens(self.register_token, B, S, includes_anchor)  # [BS, 4, C]
        x = torch.cat((camera, registers, patches), dim=1)  # [BS, P, C]; cat promotes to float32 under autocast
        P, C = x.shape[1], x.shape[2]
        pos = patch_positions(B * S, h, w, cfg.patch_start_idx, images.device)  # [BS, P, 2]
        pos_global = pos.reshape(B, S * P, 2)
        keep = set(range(cfg.depth)) if keep_layers is None else set(keep_layers)
        out: list[Tensor | None] = []
        for k in range(cfg.depth):
            x = self.frame_blocks[k](x.reshape(B * S, P, C), pos)
            frame_out = x.reshape(B, S, P, C)
            hook = None if global_kv is None else global_kv[k]
            x = self.global_blocks[k](x.reshape(B, S * P, C), pos_global, P if causal_frames else None, hook)
            out.append(torch.cat((frame_out, x.reshape(B, S, P, C)), dim=-1) if k in keep else None)
        return out


class CameraHead(nn.Module):
    """Iterative pose refinement on the camera tokens of the last aggregated layer (spec §4)."""

    def __init__(self, cfg: VGGTConfig) -> None:
        super().__init__()
        D = 2 * cfg.embed_dim
        self.iterations = cfg.camera_iterations
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, 9))
        self.trunk = nn.ModuleList(
            Block(D, cfg.camera_num_heads, cfg.mlp_ratio, cfg.layerscale_init) for _ in range(cfg.camera_trunk_depth)
        )
        self.token_norm = nn.LayerNorm(D)
        self.trunk_norm = nn.LayerNorm(D)
        self.embed_pose = nn.Linear(9, D)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 3 * D))
        self.adaln_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(D, D // 2, 9)

    def forward(
        self, tokens: Tensor, causal_frames: bool = False, trunk_kv: Sequence[KVHook | None] | None = None
    ) -> list[Tensor]:
        """tokens = out[-1] [B,S,P,2C] -> 4 activated pose encodings [B,S,9] (last = the prediction).
        causal_frames: trunk attention over frames is causal. trunk_kv: one hook per trunk block (called
        on every iteration, as StreamVGGT's camera cache)."""
        T = self.token_norm(tokens[:, :, 0])  # [B,S,2C], fixed across iterations
        B, S, _ = T.shape
        raw: Tensor | None = None
        outputs = []
        for _ in range(self.iterations):
            # Conditioning on the accumulated *raw* encoding (detached, as the official code).
            cond = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw.detach())
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            y = gate * (self.adaln_norm(T) * (1 + scale) + shift) + T
            for j, block in enumerate(self.trunk):
                y = block(y, None, 1 if causal_frames else None, None if trunk_kv is None else trunk_kv[j])
            delta = self.pose_branch(self.trunk_norm(y))  # [B,S,9]
            raw = delta if raw is None else raw + delta
            # Activations only on the reported copy: t, quaternion linear; FoV ReLU.
            outputs.append(torch.cat((raw[..., :7], F.relu(raw[..., 7:])), dim=-1))
        return outputs


@dataclass
class VGGTOutput:
    pose_enc: Tensor  # [B,S,9] (t xyz, quaternion xyzw, fov_h, fov_w), camera-from-world, OpenCV
    pose_enc_list: list[Tensor]  # one [B,S,9] per refinement iteration
    depth: Tensor  # [B,S,H,W] > 0
    depth_conf: Tensor  # [B,S,H,W] >= 1
    world_points: Tensor  # [B,S,H,W,3] in frame 0's camera
    world_points_conf: Tensor  # [B,S,H,W] >= 1


class VGGT(nn.Module):
    """aggregator + camera_head + point_head + depth_head (checkpoint key order). No track head.

    `amp_dtype` (None/float32, bfloat16, float16): the aggregator runs under autocast at that dtype with
    float32 weights, as the official inference does, so the residual stream stays float32; the heads
    always run in float32 with autocast off (spec §3.3, §10.9)."""

    def __init__(self, cfg: VGGTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or VGGTConfig.vggt_1b()
        self.cfg = cfg
        self.amp_dtype: torch.dtype | None = None
        self.aggregator = Aggregator(cfg)
        self.camera_head = CameraHead(cfg)
        dpt: dict[str, Any] = dict(
            patch_size=cfg.patch_size,
            features=cfg.dpt_features,
            out_channels=cfg.dpt_out_channels,
            layers=cfg.dpt_layers,
            hidden=cfg.dpt_hidden,
        )
        self.point_head = DPTHead(2 * cfg.embed_dim, 4, "inv_log", **dpt)
        self.depth_head = DPTHead(2 * cfg.embed_dim, 2, "exp", **dpt)

    def aggregate(self, images: Tensor, causal_frames: bool = False, **kwargs: object) -> list[Tensor | None]:
        """Aggregator under the configured autocast, keeping only the layers the heads read; float32 out."""
        keep = set(self.cfg.dpt_layers) | {self.cfg.depth - 1}
        use_amp = self.amp_dtype is not None and self.amp_dtype != torch.float32
        with torch.autocast(images.device.type, dtype=self.amp_dtype if use_amp else torch.bfloat16, enabled=use_amp):
            out = self.aggregator(images, causal_frames=causal_frames, keep_layers=keep, **kwargs)
        return [None if t is None else t.float() for t in out]

    def forward(self, images: Tensor, causal_frames: bool = False) -> VGGTOutput:
        """images [S,3,H,W] or [B,S,3,H,W] float in [0,1], H and W multiples of the patch size."""
        if images.ndim == 4:
            images = images[None]
        H, W = images.shape[-2:]
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"VGGT input {H}x{W} must be multiples of {p}")
        tokens = self.aggregate(images, causal_frames)
        with torch.autocast(images.device.type, enabled=False):
            poses = self.camera_head(tokens[-1], causal_frames)
            depth, depth_conf = self.depth_head(tokens, (H, W), self.cfg.patch_start_idx)
            points, points_conf = self.point_head(tokens, (H, W), self.cfg.patch_start_idx)
        return VGGTOutput(poses[-1], poses, depth[..., 0], depth_conf, points, points_conf)


# -- pose encoding (spec §4, §7) -------------------------------------------------------------------------


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """[...,4] XYZW (need not be unit) -> [...,3,3], with s = 2/|q|²."""
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    R = torch.stack(
        (
            1 - s * (y * y + z * z),
            s * (x * y - z * w),
            s * (x * z + y * w),
            s * (x * y + z * w),
            1 - s * (x * x + z * z),
            s * (y * z - x * w),
            s * (x * z - y * w),
            s * (y * z + x * w),
            1 - s * (x * x + y * y),
        ),
        dim=-1,
    )
    return R.reshape(*q.shape[:-1], 3, 3)


def pose_encoding_to_extrinsics_intrinsics(
    pose_enc: Tensor, image_hw: tuple[int, int], min_fov: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """[...,9] -> cam_from_world [...,4,4], K [...,3,3] in pixels of the H×W network input
    (f = (size/2)/tan(fov/2), principal point (W/2, H/2) as VGGT). FoV is clamped to [min_fov, π − min_fov]
    so an untrained or degenerate prediction (ReLU -> 0) still gives a finite focal length."""
    H, W = image_hw
    R = quaternion_to_matrix(pose_enc[..., 3:7])
    T = torch.zeros(*pose_enc.shape[:-1], 4, 4, dtype=pose_enc.dtype, device=pose_enc.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = pose_enc[..., :3]
    T[..., 3, 3] = 1.0
    fov = pose_enc[..., 7:9].clamp(min_fov, torch.pi - min_fov)
    K = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    K[..., 0, 0] = (W / 2.0) / torch.tan(fov[..., 1] / 2.0)
    K[..., 1, 1] = (H / 2.0) / torch.tan(fov[..., 0] / 2.0)
    K[..., 0, 2] = W / 2.0
    K[..., 1, 2] = H / 2.0
    K[..., 2, 2] = 1.0
    return T, K
