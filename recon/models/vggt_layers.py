"""Transformer building blocks of VGGT: attention with qk-norm and 2D RoPE, LayerScale,
MLP, the pre-norm block, and the DINOv2-with-registers patch embedding.

Attribute names equal the official checkpoint's key names (`attn.qkv`, `ls1.gamma`, `mlp.fc1`, ...), so a
plain `load_state_dict` maps the file onto these modules.

Seams for StreamVGGT (the KV cache is built on top of these, not in here):
- `Attention.compute_qkv(x, pos)` returns q, k, v as `[B, heads, N, head_dim]` with q and k already normalised
  (q_norm/k_norm) and rotated (RoPE). Because both are per token, caching these k equals StreamVGGT's
  "cache raw k, re-normalise and re-rotate all of them every step" (spec §12.3), at no per-step cost.
- `Attention.attend(q, k, v, mask)` runs attention of q over any key/value set and projects the result.
- `kv_fn` (`KVHook`) on `Attention/Block.forward`: called with this step's (k, v); returns the key/value
  set to attend over (e.g. cached past frames + this step). The cache lives with the caller.
- `frame_tokens` on `Attention/Block.forward`: block-causal by frame (a token sees its own frame and
  earlier ones), computed frame by frame over key prefixes (no dense mask). Keys beyond the queries'
  count (prepended by `kv_fn`) are past frames, always visible."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (k [B,h,Nq,d], v [B,h,Nq,d]) of this step -> (k [B,h,Nk,d], v [B,h,Nk,d]) to attend over, Nk >= Nq.
KVHook = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def frame_causal_mask(num_query: int, num_key: int, frame_tokens: int, device: torch.device) -> Tensor:
    """Boolean attention mask [Nq, Nk] (True = may attend): query token i of this call's frames sees all
    `Nk - Nq` earlier (cached) keys, plus this call's keys of frames <= its own frame."""
    past = num_key - num_query
    q_frame = torch.arange(num_query, device=device) // frame_tokens
    k_frame = torch.arange(num_key, device=device) - past
    k_frame = torch.where(k_frame >= 0, k_frame // frame_tokens, torch.full_like(k_frame, -1))  # past: frame -1
    return k_frame[None, :] <= q_frame[:, None]


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE (spec §3.2): first half of the head channels rotated by the row (y) position, second half by
    the column (x) position; inside each half channel i pairs with i + half/2 ("rotate half"). No params."""

    def __init__(self, base_frequency: float = 100.0) -> None:
        super().__init__()
        self.base_frequency = base_frequency

    def _cos_sin(self, dim: int, max_pos: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # The angle table is float32, then cast to the token dtype before cos/sin (as the official code).
        inv_freq = 1.0 / (self.base_frequency ** (torch.arange(0, dim, 2, device=device).float() / dim))  # [dim/2]
        angles = torch.outer(torch.arange(max_pos, device=device, dtype=inv_freq.dtype), inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)  # [max_pos, dim]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_1d(t: Tensor, pos: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        cos_p = F.embedding(pos, cos)[:, None]  # [B,1,N,dim]
        sin_p = F.embedding(pos, sin)[:, None]
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos_p + torch.cat((-t2, t1), dim=-1) * sin_p

    def forward(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """tokens [B, heads, N, D]; pos [B, N, 2] integer (y, x)."""
        half = tokens.shape[-1] // 2
        cos, sin = self._cos_sin(half, int(pos.max()) + 1, tokens.device, tokens.dtype)
        t_y, t_x = tokens.chunk(2, dim=-1)
        return torch.cat(
            (self._rotate_1d(t_y, pos[..., 0], cos, sin), self._rotate_1d(t_x, pos[..., 1], cos, sin)), dim=-1
        )


def patch_positions(batch: int, h: int, w: int, special: int, device: torch.device) -> Tensor:
    """RoPE positions [batch, special + h*w, 2] (y, x): special tokens (0, 0) — RoPE is then the identity
    for them — and patch (r, c) at (r + 1, c + 1), row-major (spec §3 step 4)."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    patch = torch.stack((rows.reshape(-1), cols.reshape(-1)), dim=-1) + 1  # [h*w, 2]
    pos = torch.cat((torch.zeros(special, 2, dtype=patch.dtype, device=device), patch), dim=0)
    return pos[None].expand(batch, -1, -1)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear -> (q | k | v, heads) -> optional LayerNorm on q, k (eps 1e-5)
    -> optional RoPE -> SDPA (scale 1/sqrt(head_dim)) -> proj.

    `qk_to_v_dtype`: cast the normalised q, k to v's dtype before RoPE (π³, spec §11.3 notes): under autocast
    LayerNorm returns float32, so π³'s RoPE runs at the low precision while VGGT's (False) runs in float32.
    Without autocast the cast is a no-op."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        qk_to_v_dtype: bool = False,
    ) -> None:
        super().__init__()
        self.qk_to_v_dtype = qk_to_v_dtype
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=True)
        self.rope = rope

    def compute_qkv(self, x: Tensor, pos: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, N, C] -> q, k, v [B, heads, N, head_dim]; q, k normalised, then rotated (norm before RoPE)."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.qk_to_v_dtype:
            q, k = q.to(v.dtype), k.to(v.dtype)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """q [B,h,Nq,d] over k, v [B,h,Nk,d] (mask [Nq,Nk] bool, True = attend) -> [B, Nq, C] after proj."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        B, _, Nq, _ = q.shape
        return self.proj(out.transpose(1, 2).reshape(B, Nq, self.num_heads * self.head_dim))

    def forward(
        self, x: Tensor, pos: Tensor | None = None, frame_tokens: int | None = None, kv_fn: KVHook | None = None
    ) -> Tensor:
        q, k, v = self.compute_qkv(x, pos)
        if kv_fn is not None:
            k, v = kv_fn(k, v)
        if frame_tokens is None:
            return self.attend(q, k, v)
        if frame_tokens == 1:  # camera trunk: one token per frame, the S×S mask is tiny
            return self.attend(q, k, v, frame_causal_mask(q.shape[2], k.shape[2], 1, x.device))
        # Block-causal over frames of P tokens: a dense [S·P, S·P] mask would be GBs for long windows and
        # rules out flash kernels, so attend frame by frame over the key prefix it may see (same result).
        past, P = k.shape[2] - q.shape[2], frame_tokens
        rows = [
            self.attend(q[:, :, i : i + P], k[:, :, : past + i + P], v[:, :, : past + i + P])
            for i in range(0, q.shape[2], P)
        ]
        return torch.cat(rows, dim=1)


class LayerScale(nn.Module):
    """Per-channel residual scale γ (key `gamma`)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x += γ1·Attn(LN1 x); x += γ2·MLP(LN2 x). `eps` is 1e-6 in DINO and
    π³, 1e-5 (PyTorch default) in VGGT's aggregator and camera trunk (spec §10 gotcha 1).
    `init_values=None`: no LayerScale at all (no `ls1`/`ls2` keys), as π³'s head decoders (spec §11.2)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float | None = 0.01,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        eps: float = 1e-5,
        qk_to_v_dtype: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope, qk_to_v_dtype=qk_to_v_dtype)
        self.ls1: nn.Module = nn.Identity() if init_values is None else LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2: nn.Module = nn.Identity() if init_values is None else LayerScale(dim, init_values)

    def forward(
        self, x: Tensor, pos: Tensor | None = None, frame_tokens: int | None = None, kv_fn: KVHook | None = None
    ) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos, frame_tokens, kv_fn))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv patchify: [N,3,H,W] -> [N, h*w, C] row-major (key `patch_embed.proj`)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """DINOv2 ViT with registers (`aggregator.patch_embed`, spec §3 step 2): patchify, cls + abs pos-embed
    (resized bicubic+antialias in float32 for other grids), 4 registers after cls (no pos-embed), pre-norm
    blocks (LN eps 1e-6, LayerScale, no qk-norm, no RoPE), final LN; returns the patch tokens only.
    `mask_token=False`: the unused mask token is not built (π³ deletes it, so its checkpoint lacks the key)."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        num_registers: int,
        mlp_ratio: float = 4.0,
        mask_token: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_registers = num_registers
        grid = img_size // patch_size
        # Own parameters first, in the checkpoint's order: cls_token, pos_embed, register_tokens, mask_token.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, dim))
        if mask_token:  # unused at inference; present for strict loading of VGGT
            self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, init_values=1.0, eps=1e-6) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, h: int, w: int) -> Tensor:
        """pos-embed [1, 1 + h*w, C] for an h×w patch grid."""
        table = self.pos_embed
        n = table.shape[1] - 1
        if n == h * w and h == w:
            return table
        grid = int(math.sqrt(n))
        patch = table[:, 1:].float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)  # [1,C,M,M]
        # Explicit target size (interpolate_offset 0) and antialias=True, as the official DINOv2 config.
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((table[:, :1].float(), patch), dim=1).to(table.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """images [N,3,H,W] (normalised) -> patch tokens [N, h*w, C]."""
        N, _, H, W = images.shape
        x = self.patch_embed(images)
        # No casts: under autocast the conv output is low precision and `cat` with the float32 cls token
        # promotes, so the residual stream is float32 from here on (as in the official model).
        x = torch.cat((self.cls_token.expand(N, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(H // self.patch_size, W // self.patch_size).to(x.dtype)
        x = torch.cat((x[:, :1], self.register_tokens.expand(N, -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_registers :]
