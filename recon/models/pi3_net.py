"""The π³ network (yyfz/Pi3, spec §11): `Pi3Config`, the head decoders and heads, `Pi3`. One parameterised
code path: `Pi3Config.pi3()` is the released model, `Pi3Config.tiny()` the same graph at toy size for tests.
The GeometryModel adapter is `recon.models.pi3`.

The encoder blocks, attention, RoPE, MLP and LayerScale are VGGT's (`recon.models.vggt_layers`), parametrised:
π³ differs only in options (DINO without mask token, LN eps 1e-6 in the decoder, heads without LayerScale or
qk-norm). Attribute names equal the checkpoint's key names, so the official state dict loads strictly.

Shapes: B scenes, N frames, H×W input (multiples of 14), h = H/14, w = W/14, P = 5 + h·w tokens per frame,
C = embed_dim. Unlike VGGT nothing depends on frame order: one register-token set for every frame, so
permuting the frames permutes every output (spec §11.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.models.vggt_layers import Block, DinoViT, RotaryPositionEmbedding2D, patch_positions
from recon.models.vggt_net import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Pi3Config:
    img_size: int = 518  # sets only the DINO pos-embed grid
    patch_size: int = 14
    embed_dim: int = 1024
    dino_depth: int = 24
    dino_num_heads: int = 16
    dino_registers: int = 4
    decoder_depth: int = 36  # even index: frame attention, odd: global attention
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 5
    rope_freq: float = 100.0
    layerscale_init: float = 0.01
    head_depth: int = 5  # blocks of each point / conf / camera TransformerDecoder
    camera_dim: int = 512  # camera_decoder.linear_out width, the camera MLP's width
    max_pixels: int = 255_000  # the official loader's pixel budget per frame (spec §11.3)

    @staticmethod
    def pi3() -> Pi3Config:
        return Pi3Config()

    @staticmethod
    def tiny() -> Pi3Config:
        """Same graph, toy widths: embed 64, 4 decoder blocks (2 frame + 2 global), 4 heads, DINO depth 2,
        2 head blocks, img 42 (the 3×3 pos-embed grid is resized: the interpolation path runs), and a pixel
        budget that makes a 640×192 frame 98×28."""
        return Pi3Config(
            img_size=42,
            embed_dim=64,
            dino_depth=2,
            dino_num_heads=4,
            decoder_depth=4,
            num_heads=4,
            head_depth=2,
            camera_dim=32,
            max_pixels=3_000,
        )

    @property
    def patch_start_idx(self) -> int:
        return self.num_register_tokens


class TransformerDecoder(nn.Module):
    """`projects` Linear in_dim→C, blocks (LN eps 1e-6, no LayerScale, no qk-norm, RoPE), `linear_out` C→out_dim.
    Runs per frame ([B·N, P, ·]): no attention across frames."""

    def __init__(self, cfg: Pi3Config, in_dim: int, out_dim: int, rope: RotaryPositionEmbedding2D) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.projects = nn.Linear(in_dim, C)
        self.blocks = nn.ModuleList(
            Block(C, cfg.num_heads, cfg.mlp_ratio, init_values=None, rope=rope, eps=1e-6, qk_to_v_dtype=True)
            for _ in range(cfg.head_depth)
        )
        self.linear_out = nn.Linear(C, out_dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B·N, P, in_dim], pos [B·N, P, 2] -> [B·N, P, out_dim]."""
        x = self.projects(x)
        for block in self.blocks:
            x = block(x, pos)
        return self.linear_out(x)


class LinearPixelShuffleHead(nn.Module):
    """`proj` Linear C → channels·p², then pixel-shuffle ×p: channel c·p² + i·p + j of patch (r, s) becomes
    pixel (p·r + i, p·s + j) of channel c (spec §11.3 step 6)."""

    def __init__(self, dim: int, channels: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dim, channels * patch_size * patch_size)

    def forward(self, tokens: Tensor, h: int, w: int) -> Tensor:
        """patch tokens [B·N, h·w, dim] -> [B·N, H, W, channels]."""
        feat = self.proj(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # [B·N, ch·p², h, w]
        return F.pixel_shuffle(feat, self.patch_size).permute(0, 2, 3, 1)


class ResidualMlp(nn.Module):
    """Three Linear+ReLU, the input added after the third ReLU (keys `res_conv{1,2,3}`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_conv1 = nn.Linear(dim, dim)
        self.res_conv2 = nn.Linear(dim, dim)
        self.res_conv3 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.res_conv3(F.relu(self.res_conv2(F.relu(self.res_conv1(x))))))
        return x + y


class CameraHead(nn.Module):
    """Per-token residual MLPs, mean over the patch grid, `more_mlps`, then t (3) and a 9-vector rotation
    made a proper rotation by SVD -> camera-to-world [B·N, 4, 4] (spec §11.3 step 6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_conv = nn.ModuleList(ResidualMlp(dim) for _ in range(2))
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, tokens: Tensor) -> Tensor:
        """patch tokens [B·N, h·w, dim] -> world_from_cam [B·N, 4, 4]."""
        x = tokens
        for block in self.res_conv:
            x = block(x)
        feat = self.more_mlps(x.mean(dim=1))  # [B·N, dim]
        t = self.fc_t(feat)
        R = rotation_from_9d(self.fc_rot(feat).reshape(-1, 3, 3))
        pose = torch.zeros(feat.shape[0], 4, 4, dtype=feat.dtype, device=feat.device)
        pose[:, :3, :3] = R
        pose[:, :3, 3] = t
        pose[:, 3, 3] = 1.0
        return pose


def rotation_from_9d(M: Tensor) -> Tensor:
    """[..., 3, 3] (row-major 9-vector) -> the nearest proper rotation of its row-normalised copy:
    M = U Σ Vᵀ -> R = U diag(1, 1, det(U Vᵀ)) Vᵀ (special-orthogonal Procrustes; det +1 always)."""
    M = F.normalize(M, dim=-1)  # each row to unit length first, as the official code
    U, _, Vh = torch.linalg.svd(M)
    d = torch.det(U @ Vh)
    D = torch.ones_like(M[..., 0])
    D = torch.cat((D[..., :2], d[..., None]), dim=-1)  # [..., 3] = (1, 1, det)
    return U @ (D[..., :, None] * Vh)


@dataclass
class Pi3Output:
    points: Tensor  # [B,N,H,W,3] world points (π³'s own world frame, tied to no view)
    local_points: Tensor  # [B,N,H,W,3] in each camera's own frame, z > 0
    conf: Tensor  # [B,N,H,W,1] logits (sigmoid gives [0, 1])
    camera_poses: Tensor  # [B,N,4,4] camera-to-world, OpenCV axes


class Pi3(nn.Module):
    """encoder + decoder + point/conf/camera decoders and heads, and the stored ImageNet buffers.

    `amp_dtype` (None/float32, bfloat16, float16): encoder and decoders run under autocast at that dtype over
    float32 weights (the residual stream stays float32, as VGGT's); the three heads always run in float32 with
    autocast off (spec §11.3 step 6). As the official attention, q and k are cast to v's dtype after qk-norm,
    so under autocast RoPE runs at the low precision (VGGT's runs in float32)."""

    image_mean: Tensor  # [1,3,1,1] buffers, registered below
    image_std: Tensor

    def __init__(self, cfg: Pi3Config | None = None) -> None:
        super().__init__()
        cfg = cfg or Pi3Config.pi3()
        C = cfg.embed_dim
        self.cfg = cfg
        self.amp_dtype: torch.dtype | None = None
        self.encoder = DinoViT(
            cfg.img_size,
            cfg.patch_size,
            C,
            cfg.dino_depth,
            cfg.dino_num_heads,
            cfg.dino_registers,
            cfg.mlp_ratio,
            mask_token=False,
        )
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq)
        self.decoder = nn.ModuleList(
            Block(
                C,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.layerscale_init,
                qk_norm=True,
                rope=self.rope,
                eps=1e-6,
                qk_to_v_dtype=True,  # π³'s attention: RoPE at v's precision under autocast
            )
            for _ in range(cfg.decoder_depth)
        )
        self.register_token = nn.Parameter(torch.randn(1, 1, cfg.num_register_tokens, C) * 1e-6)
        self.point_decoder = TransformerDecoder(cfg, 2 * C, C, self.rope)
        self.point_head = LinearPixelShuffleHead(C, 3, cfg.patch_size)
        self.conf_decoder = TransformerDecoder(cfg, 2 * C, C, self.rope)
        self.conf_head = LinearPixelShuffleHead(C, 1, cfg.patch_size)
        self.camera_decoder = TransformerDecoder(cfg, 2 * C, cfg.camera_dim, self.rope)
        self.camera_head = CameraHead(cfg.camera_dim)
        # Persistent, unlike VGGT's: the checkpoint stores them (spec §11.2).
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def decode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,N,3,H,W] in [0,1] -> (cat(frame block 34, global block 35) [B·N, P, 2C], pos [B·N, P, 2])."""
        cfg = self.cfg
        B, N, _, H, W = images.shape
        h, w = H // cfg.patch_size, W // cfg.patch_size
        x = (images.reshape(B * N, 3, H, W) - self.image_mean) / self.image_std
        patches = self.encoder(x)  # [B·N, h·w, C]
        C = patches.shape[-1]
        registers = self.register_token.expand(B, N, -1, -1).reshape(B * N, cfg.num_register_tokens, C)
        x = torch.cat((registers.to(patches.dtype), patches), dim=1)  # [B·N, P, C]
        P = x.shape[1]
        pos = patch_positions(B * N, h, w, cfg.patch_start_idx, images.device)  # [B·N, P, 2]
        pos_global = pos.reshape(B, N * P, 2)
        last: list[Tensor] = []
        for i, block in enumerate(self.decoder):
            if i % 2 == 0:  # frame attention: tokens of one frame
                x = block(x.reshape(B * N, P, C), pos)
            else:  # global attention: every token of every frame of a scene
                x = block(x.reshape(B, N * P, C), pos_global)
            if i >= len(self.decoder) - 2:
                last.append(x.reshape(B * N, P, C))
        return torch.cat(last, dim=-1), pos

    def forward(self, images: Tensor) -> Pi3Output:
        """images [N,3,H,W] or [B,N,3,H,W] float in [0,1], H and W multiples of the patch size."""
        if images.ndim == 4:
            images = images[None]
        B, N, _, H, W = images.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"π³ input {H}x{W} must be multiples of {p}")
        h, w, start = H // p, W // p, self.cfg.patch_start_idx
        use_amp = self.amp_dtype is not None and self.amp_dtype != torch.float32
        with torch.autocast(images.device.type, dtype=self.amp_dtype if use_amp else torch.bfloat16, enabled=use_amp):
            hidden, pos = self.decode(images)
            point_tokens = self.point_decoder(hidden, pos)
            conf_tokens = self.conf_decoder(hidden, pos)
            camera_tokens = self.camera_decoder(hidden, pos)
        with torch.autocast(images.device.type, enabled=False):
            # Heads at the weights' precision (float32; float64 in reference tests) on the patch tokens only.
            dt = self.point_head.proj.weight.dtype
            xyz = self.point_head(point_tokens[:, start:].to(dt), h, w)  # [B·N, H, W, 3]
            conf = self.conf_head(conf_tokens[:, start:].to(dt), h, w)  # [B·N, H, W, 1]
            poses = self.camera_head(camera_tokens[:, start:].to(dt))  # [B·N, 4, 4]
            z = torch.exp(xyz[..., 2:])
            local = torch.cat((xyz[..., :2] * z, z), dim=-1)
            world = torch.einsum("bij,bhwj->bhwi", poses[:, :3, :3], local) + poses[:, None, None, :3, 3]
        return Pi3Output(
            points=world.reshape(B, N, H, W, 3),
            local_points=local.reshape(B, N, H, W, 3),
            conf=conf.reshape(B, N, H, W, 1),
            camera_poses=poses.reshape(B, N, 4, 4),
        )
