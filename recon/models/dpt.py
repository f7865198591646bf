"""DPT dense head of VGGT (`depth_head`, `point_head`, as facebookresearch/vggt's `dpt_head.py`). Attribute names = checkpoint keys.

Gotchas kept on purpose (spec §10.7): the ResidualConvUnit adds ReLU(x), not x (the official unit rectifies
its input in place); `refinenet4` has no `resConfUnit1`; `resize_layers.2` is an Identity (no keys); every
bilinear resize uses align_corners=True; the UV positional embedding is added per level and again at full
resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def uv_grid(width: int, height: int, aspect_ratio: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[H, W, 2] normalised (u, v) coordinates spanning the unit diagonal of an image of `aspect_ratio`."""
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(
        -span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device
    )
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((uu, vv), dim=-1)


def sincos_embed(dim: int, pos: Tensor, omega_0: float = 100.0) -> Tensor:
    """[M] positions -> [M, dim] = [sin(p ω_k) | cos(p ω_k)], ω_k = omega_0^(-k/(dim/2)); float64 inside."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def add_uv_embedding(x: Tensor, image_w: int, image_h: int, ratio: float = 0.1) -> Tensor:
    """x [N, C, h, w] + 0.1 · [sincos(u; C/2) | sincos(v; C/2)] at x's resolution (image aspect ratio)."""
    _, C, h, w = x.shape
    grid = uv_grid(w, h, image_w / image_h, x.dtype, x.device).reshape(-1, 2)
    emb = torch.cat((sincos_embed(C // 2, grid[:, 0]), sincos_embed(C // 2, grid[:, 1])), dim=-1)
    return x + (emb * ratio).reshape(h, w, C).permute(2, 0, 1)[None].to(x.dtype)


class ResidualConvUnit(nn.Module):
    """conv2(ReLU(conv1(ReLU(x)))) + ReLU(x)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)  # the skip below adds this rectified x (official in-place ReLU), not the raw input
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """o = x0 (+ RCU1(x1)); o = RCU2(o); resize (bilinear, align_corners) to `size` or ×2; 1×1 out_conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)  # first: the checkpoint's key order
        self.resConfUnit1 = ResidualConvUnit(features) if has_residual else None
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x0: Tensor, x1: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        out = x0
        if self.resConfUnit1 is not None and x1 is not None:
            out = out + self.resConfUnit1(x1)
        out = self.resConfUnit2(out)
        if size is None:
            out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(out)


class Scratch(nn.Module):
    """The fusion tower (`scratch.*`): layer{1..4}_rn, refinenet{1..4}, output_conv1, output_conv2."""

    def __init__(self, out_channels: Sequence[int], features: int, hidden: int, output_dim: int) -> None:
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, 3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, 3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, 3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, 3, padding=1, bias=False)
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, output_dim, 1)
        )


class DPTHead(nn.Module):
    """Aggregated tokens (4 layers) -> [N, output_dim, H, W] logits -> (value, confidence).

    `activation`: "exp" (depth) or "inv_log" (points: sign(x)·(exp|x| − 1)); confidence = 1 + exp(last)."""

    def __init__(
        self,
        dim_in: int,
        output_dim: int,
        activation: str,
        patch_size: int = 14,
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layers: Sequence[int] = (4, 11, 17, 23),
        hidden: int = 32,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.layers = tuple(layers)
        self.activation = activation
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, 1) for oc in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),  # ×4
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),  # ×2
                nn.Identity(),  # ×1
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),  # ×1/2
            ]
        )
        self.scratch = Scratch(out_channels, features, hidden, output_dim)

    def forward(
        self, tokens: Sequence[Tensor | None], image_hw: tuple[int, int], patch_start_idx: int
    ) -> tuple[Tensor, Tensor]:
        """tokens[k] [B, S, P, 2C] (only `self.layers` are read) -> value [B,S,H,W,D-1], conf [B,S,H,W]."""
        H, W = image_hw
        h, w = H // self.patch_size, W // self.patch_size
        feats = []
        for i, layer in enumerate(self.layers):
            t = tokens[layer]
            assert t is not None, f"DPT head needs aggregated layer {layer}"
            B, S = t.shape[:2]
            x = self.norm(t[:, :, patch_start_idx:].reshape(B * S, h * w, -1))
            x = x.permute(0, 2, 1).reshape(B * S, -1, h, w)  # [BS, 2C, h, w]
            x = add_uv_embedding(self.projects[i](x), W, H)
            feats.append(self.resize_layers[i](x))  # [BS, oc_i, 4h|2h|h|h/2, ...]
        sc = self.scratch
        rn1, rn2, rn3, rn4 = (
            sc.layer1_rn(feats[0]),
            sc.layer2_rn(feats[1]),
            sc.layer3_rn(feats[2]),
            sc.layer4_rn(feats[3]),
        )
        out = sc.refinenet4(rn4, size=rn3.shape[2:])
        out = sc.refinenet3(out, rn3, size=rn2.shape[2:])
        out = sc.refinenet2(out, rn2, size=rn1.shape[2:])
        out = sc.refinenet1(out, rn1)  # ×2 -> 8h×8w
        out = sc.output_conv1(out)  # [BS, F/2, 8h, 8w]
        out = F.interpolate(out, size=(h * self.patch_size, w * self.patch_size), mode="bilinear", align_corners=True)
        out = sc.output_conv2(add_uv_embedding(out, W, H))  # [BS, D, H, W]
        out = out.permute(0, 2, 3, 1).reshape(B, S, H, W, -1)
        value, conf = out[..., :-1], out[..., -1]
        if self.activation == "exp":
            value = torch.exp(value)
        elif self.activation == "inv_log":
            value = torch.sign(value) * torch.expm1(value.abs())
        else:
            raise ValueError(f"unknown DPT activation {self.activation!r}")
        return value, 1.0 + conf.exp()
