"""A plain functional reference of π³ after the encoder (spec §11.3 steps 3-7), written from the spec's
formulas on a bare state dict: explicit softmax attention, RoPE from its definition, loops over frames. A test
oracle for the wiring of `recon.models.pi3_net` (which blocks see which tokens, which outputs are concatenated,
the pixel-shuffle and the SVD), independent of the shared layer classes. The DINO encoder is VGGT's, tested
there; its patch tokens are an input here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.models.pi3_net import Pi3Config


def _linear(state: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def _layer_norm(state: dict[str, Tensor], name: str, x: Tensor, eps: float) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * state[f"{name}.weight"] + state[f"{name}.bias"]


def _rope_1d(t: Tensor, pos: Tensor, base: float) -> Tensor:
    """t [..., N, d], pos [N]: channel i pairs with i + d/2, angle pos · base^(-2j/d)."""
    d = t.shape[-1]
    j = torch.arange(d // 2, dtype=torch.float64)
    angle = pos.double()[:, None] * base ** (-2.0 * j / d)[None]  # [N, d/2]
    cos, sin = torch.cos(angle).to(t.dtype), torch.sin(angle).to(t.dtype)
    a, b = t[..., : d // 2], t[..., d // 2 :]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def _rope_2d(t: Tensor, pos: Tensor, base: float) -> Tensor:
    """t [heads, N, D]; pos [N, 2] (y, x): first half of channels by y, second by x."""
    half = t.shape[-1] // 2
    return torch.cat((_rope_1d(t[..., :half], pos[:, 0], base), _rope_1d(t[..., half:], pos[:, 1], base)), dim=-1)


def _block(
    state: dict[str, Tensor], name: str, x: Tensor, pos: Tensor, heads: int, base: float, layerscale: bool, qk: bool
) -> Tensor:
    """One pre-norm block on a single sequence x [N, C] (LN eps 1e-6)."""
    N, C = x.shape
    d = C // heads
    h = _layer_norm(state, f"{name}.norm1", x, 1e-6)
    qkv = _linear(state, f"{name}.attn.qkv", h).reshape(N, 3, heads, d).permute(1, 2, 0, 3)  # [3, heads, N, d]
    q, k, v = qkv[0], qkv[1], qkv[2]
    if qk:
        q = _layer_norm(state, f"{name}.attn.q_norm", q, 1e-5)
        k = _layer_norm(state, f"{name}.attn.k_norm", k, 1e-5)
    q, k = _rope_2d(q, pos, base), _rope_2d(k, pos, base)
    attn = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    a = _linear(state, f"{name}.attn.proj", (attn @ v).transpose(0, 1).reshape(N, C))
    x = x + (a * state[f"{name}.ls1.gamma"] if layerscale else a)
    m = _linear(
        state,
        f"{name}.mlp.fc2",
        F.gelu(_linear(state, f"{name}.mlp.fc1", _layer_norm(state, f"{name}.norm2", x, 1e-6))),
    )
    return x + (m * state[f"{name}.ls2.gamma"] if layerscale else m)


def reference_forward(
    state: dict[str, Tensor], cfg: Pi3Config, patches: Tensor, hw: tuple[int, int]
) -> dict[str, Tensor]:
    """patches [N, h·w, C] (DINO output of N frames of one scene) -> {local_points [N,H,W,3], conf [N,H,W],
    camera_poses [N,4,4]} by the spec's recipe, in float64 when the inputs are."""
    N, hw_tokens, C = patches.shape
    h, w = hw[0] // cfg.patch_size, hw[1] // cfg.patch_size
    R, p, base, heads = cfg.num_register_tokens, cfg.patch_size, cfg.rope_freq, cfg.num_heads
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.cat((torch.zeros(R, 2, dtype=torch.long), torch.stack((rows.flatten(), cols.flatten()), -1) + 1))
    P = R + hw_tokens
    x = torch.cat((state["register_token"][0].expand(N, R, C), patches), dim=1)  # [N, P, C]
    last = []
    for i in range(cfg.decoder_depth):
        name = f"decoder.{i}"
        if i % 2 == 0:  # each frame alone
            x = torch.stack([_block(state, name, x[n], pos, heads, base, True, True) for n in range(N)])
        else:  # all frames together, positions repeated per frame
            x = _block(state, name, x.reshape(N * P, C), pos.repeat(N, 1), heads, base, True, True).reshape(N, P, C)
        if i >= cfg.decoder_depth - 2:
            last.append(x)
    hidden = torch.cat(last, dim=-1)  # [N, P, 2C]

    def head_decoder(prefix: str) -> Tensor:
        out = []
        for n in range(N):
            y = _linear(state, f"{prefix}.projects", hidden[n])
            for b in range(cfg.head_depth):
                y = _block(state, f"{prefix}.blocks.{b}", y, pos, heads, base, False, False)
            out.append(_linear(state, f"{prefix}.linear_out", y)[R:])  # patch tokens only
        return torch.stack(out)  # [N, h·w, ·]

    def shuffle(tokens: Tensor, head: str, channels: int) -> Tensor:
        f = _linear(state, f"{head}.proj", tokens).reshape(N, h, w, channels, p, p)  # c·p² + i·p + j
        return f.permute(0, 1, 4, 2, 5, 3).reshape(N, h * p, w * p, channels)  # pixel (p·r + i, p·s + j)

    xyz = shuffle(head_decoder("point_decoder"), "point_head", 3)
    z = torch.exp(xyz[..., 2:])
    local = torch.cat((xyz[..., :2] * z, z), dim=-1)
    conf = shuffle(head_decoder("conf_decoder"), "conf_head", 1)[..., 0]

    c = head_decoder("camera_decoder")  # [N, h·w, D]
    for b in range(2):
        r = f"camera_head.res_conv.{b}"
        y = F.relu(_linear(state, f"{r}.res_conv1", c))
        y = F.relu(_linear(state, f"{r}.res_conv2", y))
        c = c + F.relu(_linear(state, f"{r}.res_conv3", y))
    feat = c.mean(dim=1)
    feat = F.relu(_linear(state, "camera_head.more_mlps.2", F.relu(_linear(state, "camera_head.more_mlps.0", feat))))
    t = _linear(state, "camera_head.fc_t", feat)
    M = F.normalize(_linear(state, "camera_head.fc_rot", feat).reshape(N, 3, 3), dim=-1)
    poses = []
    for n in range(N):  # nearest proper rotation, one matrix at a time
        U, _, Vh = torch.linalg.svd(M[n])
        D = torch.diag(torch.tensor([1.0, 1.0, float(torch.det(U @ Vh))], dtype=M.dtype))
        T = torch.eye(4, dtype=M.dtype)
        T[:3, :3], T[:3, 3] = U @ D @ Vh, t[n]
        poses.append(T)
    return {"local_points": local, "conf": conf, "camera_poses": torch.stack(poses)}
