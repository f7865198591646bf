"""The KV cache's eviction policies (the storage: recon/cache.py; their names: recon/cache_config.py).

A policy answers one question when a layer is over budget: which of its tokens stay. The cache marks the
tokens no policy may evict (anchor frame, sink, protected special tokens) and says how many tokens stay in
all; the policy fills the rest, and returns the kept indices ascending, so time order is kept.

- `none`: never evicts; the cache grows its storage instead.
- `queue`: the free tokens of the most recent whole frames that fit (frame granular).
- `sink-window`: the most recent free tokens (token granular, StreamingLLM), beside a sink: the first
  `sink_tokens` tokens after the anchor frame, kept forever.
- `keydiff`: per (batch, head), the keys least similar to the candidates' mean direction (InfiniteVGGT).

Provenance follows the choice: the policies that choose the same tokens for every head keep one uid vector
[C] on the host; a policy that chooses per (batch, head) (`per_head`) keeps uids [B,H,C] on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from recon.cache_config import CacheConfig, PolicyName
from recon.kernels.cache_kv import keydiff_scores, select_per_head


@dataclass(frozen=True)
class EvictionRequest:
    """One layer at an evicting step: what a policy chooses from. N = tokens the layer keeps now."""

    keys: Tensor  # [B,H,N,D], time-ordered
    uid: Tensor  # [N] int64 (host) or [B,H,N] (device, per-head policies): frame * tokens_per_frame + token
    mandatory: Tensor  # bool, uid's shape: tokens no policy may evict
    keep: int  # tokens to keep in all, the mandatory ones included
    room: int  # of those, the free (not mandatory) ones


@dataclass(frozen=True)
class EvictionPolicy(ABC):
    """How a KVCache chooses the tokens a layer keeps. Built per cache by `eviction_policy`."""

    name: ClassVar[PolicyName]
    bounded: ClassVar[bool] = True  # False: never asked to choose; the storage grows instead
    per_head: ClassVar[bool] = False  # chooses per (batch, head): provenance [B,H,C] on the device

    tokens_per_frame: int
    sink_tokens: int = 0  # tokens after the anchor frame kept forever

    @classmethod
    def from_config(cls, config: CacheConfig, tokens_per_frame: int) -> EvictionPolicy:
        return cls(tokens_per_frame)

    @abstractmethod
    def select(self, request: EvictionRequest) -> Tensor:
        """Indices of the tokens to keep, ascending: [keep] (host) or [B,H,keep] (device, per head)."""


@dataclass(frozen=True)
class NonePolicy(EvictionPolicy):
    name: ClassVar[PolicyName] = "none"
    bounded: ClassVar[bool] = False

    def select(self, request: EvictionRequest) -> Tensor:
        raise RuntimeError("policy 'none' keeps every token: the cache grows, it never evicts")


@dataclass(frozen=True)
class QueuePolicy(EvictionPolicy):
    name: ClassVar[PolicyName] = "queue"

    def select(self, request: EvictionRequest) -> Tensor:
        """Mandatory tokens + the free tokens of the most recent whole frames that fit in `room`."""
        uid, mandatory = request.uid, request.mandatory
        free = ~mandatory
        frame_f = uid[free] // self.tokens_per_frame  # time-ordered, so equal frames are adjacent
        frames, counts = torch.unique_consecutive(frame_f, return_counts=True)
        newer_or_equal = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])
        kept_frames = frames[newer_or_equal <= request.room]
        keep = mandatory | (free & torch.isin(uid // self.tokens_per_frame, kept_frames))
        return keep.nonzero().flatten()


@dataclass(frozen=True)
class SinkWindowPolicy(EvictionPolicy):
    name: ClassVar[PolicyName] = "sink-window"

    @classmethod
    def from_config(cls, config: CacheConfig, tokens_per_frame: int) -> EvictionPolicy:
        sink = tokens_per_frame if config.sink_tokens is None else config.sink_tokens  # default: one frame
        return cls(tokens_per_frame, sink)

    def select(self, request: EvictionRequest) -> Tensor:
        """Mandatory tokens (the sink among them) + the `room` most recent free tokens."""
        free_idx = (~request.mandatory).nonzero().flatten()
        keep = request.mandatory.clone()
        if request.room > 0:
            keep[free_idx[-request.room :]] = True
        return keep.nonzero().flatten()


@dataclass(frozen=True)
class KeyDiffPolicy(EvictionPolicy):
    name: ClassVar[PolicyName] = "keydiff"
    per_head: ClassVar[bool] = True

    def select(self, request: EvictionRequest) -> Tensor:
        """Per (batch, head): mandatory tokens + the free keys least similar to the free keys' mean direction."""
        scores = keydiff_scores(request.keys, ~request.mandatory)
        return select_per_head(scores, request.keep, request.mandatory)


POLICY_CLASSES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (NonePolicy, QueuePolicy, SinkWindowPolicy, KeyDiffPolicy)
}


def eviction_policy(config: CacheConfig, tokens_per_frame: int) -> EvictionPolicy:
    """The policy `config` names, for a cache of `tokens_per_frame` tokens per frame."""
    return POLICY_CLASSES[config.policy].from_config(config, tokens_per_frame)
