"""The camera head's KV cache (StreamVGGT): the camera token's k, v per camera-trunk layer, bounded to the
anchor frame and the most recent frames, or unbounded (as the official code, which keeps every frame). The
global-attention cache: recon/cache.py."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from recon.cache_config import CacheConfigError

RECENT_FRAMES = 16  # the bounded cache's default, and the unbounded one's first allocation (it doubles after)


class CameraHeadCache:
    """k, v of the camera token per camera-trunk layer (StreamVGGT: 4 layers, appended once per refinement
    iteration, so `iterations` entries per frame). Bounded: the anchor frame's entries + the entries of the
    `recent_frames` most recent frames (the current one included), FIFO; `recent_frames` None keeps every frame
    (the official StreamVGGT). Storage [B,H,C,D] per layer with C = (1 + recent_frames) x iterations,
    preallocated (unbounded: doubled when full); view = the time-ordered prefix."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        iterations: int = 4,
        recent_frames: int | None = RECENT_FRAMES,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if (recent_frames is not None and recent_frames < 1) or iterations < 1:
            raise CacheConfigError("CameraHeadCache needs recent_frames >= 1 (or None: unbounded) and iterations >= 1")
        self.iterations, self.recent_frames = iterations, recent_frames
        self.capacity = (1 + (recent_frames if recent_frames is not None else RECENT_FRAMES)) * iterations
        shape = (batch, num_heads, self.capacity, head_dim)
        self._k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self._v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self._frames: list[list[int]] = [[] for _ in range(num_layers)]  # frame of each kept entry
        self._anchor: int | None = None

    def append(self, layer: int, k: Tensor, v: Tensor, frame_index: int) -> None:
        """k, v [B,H,t,D] (t entries, usually 1 per refinement iteration) of frame `frame_index`."""
        frames = self._frames[layer]
        if frames and frame_index < frames[-1]:
            raise CacheConfigError(f"camera cache: frame {frame_index} is older than cached frame {frames[-1]}")
        if self._anchor is None:
            self._anchor = frame_index
        t = int(k.shape[2])
        if len(frames) + t > self.capacity:
            if self.recent_frames is None:
                self._grow(len(frames) + t)
            else:
                self._evict(layer, t, frame_index)
            frames = self._frames[layer]
        n = len(frames)
        self._k[layer][:, :, n : n + t].copy_(k)
        self._v[layer][:, :, n : n + t].copy_(v)
        frames.extend([frame_index] * t)

    def _grow(self, needed: int) -> None:
        """Unbounded: double every layer's storage until `needed` entries fit (amortised O(1) appends)."""
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        for store in (self._k, self._v):
            for i, old in enumerate(store):
                new = old.new_empty((*old.shape[:2], capacity, old.shape[3]))
                n = len(self._frames[i])
                new[:, :, :n] = old[:, :, :n]
                store[i] = new
        self.capacity = capacity

    def _evict(self, layer: int, t: int, current: int) -> None:
        """Drop whole frames, oldest first (never the anchor or the current frame), until t entries fit."""
        frames = self._frames[layer]
        counts = Counter(frames)
        dropped: set[int] = set()
        size = len(frames)
        for f in sorted(counts):
            if size + t <= self.capacity:
                break
            if f not in (self._anchor, current):
                dropped.add(f)
                size -= counts[f]
        if size + t > self.capacity:
            raise CacheConfigError(f"camera cache: {t} new entries do not fit capacity {self.capacity}")
        idx = [i for i, f in enumerate(frames) if f not in dropped]
        idx_t = torch.tensor(idx, dtype=torch.int64, device=self._k[layer].device)
        for store in (self._k[layer], self._v[layer]):
            store[:, :, : len(idx)] = torch.index_select(
                store[:, :, : len(frames)], 2, idx_t
            )  # new tensor: no aliasing
        self._frames[layer] = [frames[i] for i in idx]

    def view(self, layer: int) -> tuple[Tensor, Tensor]:
        n = len(self._frames[layer])
        return self._k[layer][:, :, :n], self._v[layer][:, :, :n]

    def frames(self, layer: int) -> list[int]:
        return list(self._frames[layer])

    def tokens(self, layer: int) -> int:
        return len(self._frames[layer])

    def bytes_in_use(self) -> int:
        k = self._k[0]
        return sum(len(f) for f in self._frames) * 2 * k.shape[0] * k.shape[1] * k.shape[3] * k.element_size()

    def reset(self) -> None:
        self._frames = [[] for _ in self._frames]
        self._anchor = None
