"""One layer of the KV cache (recon/cache.py): its storage and the bookkeeping of what it must keep, the anchor
frame, the sink tokens and the protected special tokens of recent frames."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CacheLayer:
    """One layer's storage and bookkeeping. k, v [B,H,C,D]; uid [C] (host) or [B,H,C] (device, per-head
    policies); the kept tokens are the prefix [:, :, :n]."""

    k: Tensor
    v: Tensor
    uid: Tensor
    budget: int | None
    protect_cap: int  # most non-anchor frames whose special tokens stay protected
    n: int = 0
    anchor: int | None = None
    last_frame: int = -1
    protected: deque[int] = field(default_factory=deque)  # frames with protected specials, oldest first
    sink_lo: int = -1  # inclusive uid range of the sink tokens (sink-window)
    sink_hi: int = -2
    sink_left: int = 0
    evicted: int = 0
    evictions: int = 0

    @property
    def capacity(self) -> int:
        return int(self.k.shape[2])

    def record_sink(self, uid_t: Tensor, tokens_per_frame: int) -> None:
        """Note the sink among the new tokens uid_t [T]. The sink = the first `sink_tokens` tokens after the
        anchor frame; uids are monotone in time, so it is one inclusive uid range."""
        if self.sink_left == 0:
            return
        after_anchor = uid_t[uid_t // tokens_per_frame != self.anchor]
        taken = after_anchor[: self.sink_left]
        if len(taken):
            self.sink_lo = int(taken[0]) if self.sink_lo < 0 else self.sink_lo
            self.sink_hi = int(taken[-1])
            self.sink_left -= len(taken)

    def record_protected(self, frames: list[int]) -> None:
        if self.protect_cap == 0:
            return
        self.protected.extend(f for f in frames if f != self.anchor)
        while len(self.protected) > self.protect_cap:
            self.protected.popleft()  # oldest frames lose protection first; the anchor is never in here

    def mandatory(self, uid: Tensor, tokens_per_frame: int, special_tokens: int, sink_tokens: int) -> Tensor:
        """Tokens no policy may evict, as a mask of uid's shape: anchor frame, sink range, protected special
        tokens (the first `special_tokens` of each frame)."""
        P = tokens_per_frame
        frame = uid // P
        keep = torch.eq(frame, -1 if self.anchor is None else self.anchor)
        if self.protected:
            keep |= (uid % P < special_tokens) & (frame >= self.protected[0])
        if sink_tokens:
            keep |= (uid >= self.sink_lo) & (uid <= self.sink_hi)
        return keep
