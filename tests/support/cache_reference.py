"""Loop-based references for the KV cache kernels (recon.kernels.cache_kv): the arithmetic spelled out one
(batch, head) at a time, as test oracles for the vectorised kernels."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12  # the kernels' normalisation floor


def keydiff_scores_reference(keys: Tensor, candidates: Tensor | None = None) -> Tensor:
    B, H, N, _ = keys.shape
    out = torch.empty(B, H, N, dtype=torch.float32)
    for b in range(B):
        for h in range(H):
            ks = keys[b, h].float()
            unit = ks / ks.norm(dim=-1, keepdim=True).clamp_min(EPS)
            mask = torch.ones(N, dtype=torch.bool) if candidates is None else candidates.expand(B, H, N)[b, h]
            mean = unit[mask].mean(dim=0) if mask.any() else torch.zeros(ks.shape[-1])
            direction = mean / mean.norm().clamp_min(EPS)
            out[b, h] = unit @ direction
    return out


def select_per_head_reference(scores: Tensor, keep: int, protected: Tensor | None = None) -> Tensor:
    B, H, N = scores.shape
    out = torch.empty(B, H, keep, dtype=torch.int64)
    for b in range(B):
        for h in range(H):
            prot = [] if protected is None else protected.expand(B, H, N)[b, h].nonzero().flatten().tolist()
            rest = sorted((i for i in range(N) if i not in set(prot)), key=lambda i: float(scores[b, h, i]))
            out[b, h] = torch.tensor(sorted(prot + rest[: keep - len(prot)]))
    return out
