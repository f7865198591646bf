"""The KV cache stage's kernels (recon.cache): key scoring, per-head selection and gather, layer budgets.

Pure, vectorised, device-agnostic torch: every function works on whatever device its inputs live on and
never synchronises with the host except where it returns Python numbers (`dynamic_layer_budgets`).
Their loop-based references (test oracles) live in tests/support/cache_reference.py.

KeyDiff (InfiniteVGGT's rule): per (batch, head), L2-normalise the candidate keys, take their mean
direction, score every key by its cosine with that direction and keep the keys *least* similar to it
(the most diverse ones). Only keys are needed, never attention weights, so fused attention stays usable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_EPS = 1e-12


def keydiff_scores(keys: Tensor, candidates: Tensor | None = None) -> Tensor:
    """Cosine of each key with the mean direction of the candidate keys, per (batch, head).

    keys [B,H,N,D] (any float dtype); candidates [B,H,N] or [N] bool (None: all keys) -> scores [B,H,N]
    float32. Lower = more diverse = kept first. Scored in float32 because bf16 cosines near 1 collapse."""
    unit_bhnd = torch.nn.functional.normalize(keys.float(), dim=-1, eps=_EPS)
    if candidates is None:
        mean_bhd = unit_bhnd.mean(dim=2)
    else:
        weight_bhn = candidates.to(unit_bhnd.dtype).expand(unit_bhnd.shape[:3])
        count_bh1 = weight_bhn.sum(dim=2, keepdim=True).clamp_min(1.0)
        mean_bhd = torch.einsum("bhnd,bhn->bhd", unit_bhnd, weight_bhn) / count_bh1
    direction_bhd = torch.nn.functional.normalize(mean_bhd, dim=-1, eps=_EPS)
    return torch.einsum("bhnd,bhd->bhn", unit_bhnd, direction_bhd)


def mean_candidate_score(scores: Tensor, candidates: Tensor | None = None) -> float:
    """Layer diversity statistic for the dynamic budget: the mean cosine over heads and candidates."""
    if candidates is None:
        return float(scores.mean())
    weight = candidates.to(scores.dtype).expand(scores.shape)
    return float((scores * weight).sum() / weight.sum().clamp_min(1.0))


def select_per_head(scores: Tensor, keep: int, protected: Tensor | None = None) -> Tensor:
    """Indices of the `keep` tokens to keep per (batch, head): every protected token, then the lowest scores.

    scores [B,H,N]; protected [B,H,N] or [N] bool (must hold <= keep tokens per head) -> idx [B,H,keep]
    int64, ascending, so time order (= storage order) is restored and values can follow their keys."""
    priority_bhn = -scores.float()
    if protected is not None:
        priority_bhn = priority_bhn.masked_fill(protected.expand(priority_bhn.shape), math.inf)
    idx_bhk = torch.topk(priority_bhn, keep, dim=-1, sorted=False).indices
    return torch.sort(idx_bhk, dim=-1).values


def gather_heads(x: Tensor, idx: Tensor, out: Tensor | None = None) -> Tensor:
    """x [B,H,N,D] gathered along the token axis: idx [K] (same tokens for every head) or [B,H,K]
    (per-head choice) -> [B,H,K,D]. `out` (contiguous [B,H,K,D]) lets a caller reuse a scratch buffer."""
    if idx.dim() == 1:
        return torch.index_select(x, 2, idx, out=out) if out is not None else torch.index_select(x, 2, idx)
    idx_bhkd = idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1])
    return torch.gather(x, 2, idx_bhkd, out=out) if out is not None else torch.gather(x, 2, idx_bhkd)


def dynamic_layer_budgets(mean_scores: list[float], total: int, floor: int, temperature: float = 0.5) -> list[int]:
    """Split `total` tokens across layers by softmax((1 - mean cosine) / temperature) (InfiniteVGGT),
    after giving each layer `floor` tokens (the least a layer can run with). Sums exactly to `total`;
    rounding remainders go to the layers with the largest fractional parts."""
    num_layers = len(mean_scores)
    spare = total - floor * num_layers
    if spare < 0:
        raise ValueError(f"total budget {total} is below {num_layers} layers x {floor} tokens")
    logits = torch.tensor([(1.0 - s) / temperature for s in mean_scores], dtype=torch.float64)
    share = torch.softmax(logits, dim=0) * spare
    whole = torch.floor(share).to(torch.int64)
    remainder = spare - int(whole.sum())
    order = torch.argsort(share - whole, descending=True)
    whole[order[:remainder]] += 1
    return [floor + int(w) for w in whole]
