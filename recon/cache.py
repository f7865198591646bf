"""Bounded KV caches for causal global attention (StreamVGGT) and its camera head.

Use, per global-attention layer and step: compute q, k, v of the new frame(s) (k already normed and
RoPE-rotated: positions carry no time, so cached keys never need re-rotation), `cache.append(layer, k, v,
frame_index)`, then attend q over `cache.view(layer)` (the new frame included).

Storage. Each layer owns preallocated `k`, `v` [B,H,C,D] buffers; the kept tokens are the prefix
[:, :, :n], time-ordered, so `view` is a slice (no concatenation). Bounded policies allocate C = the
layer's budget once; `none` grows C geometrically (amortised O(1) copies per token).

Step = evict, then write. Eviction runs *before* the new tokens are written, making room for them, so the
newest frame is never a candidate and is always attended in full; the budget is never exceeded, not even
transiently. Eviction chooses the kept indices (time order kept) and compacts them into the prefix through
one scratch buffer shared by all layers: O(budget) work per evicting step, independent of stream length,
and no allocation per step. Tokens before the first evicted slot are not moved.

Provenance. Every kept token carries a uid = frame_index * tokens_per_frame + token_in_frame (monotone in
time). Policies that choose the same tokens for all heads (`none`, `queue`, `sink-window`) keep one uid
vector [C] on the host; `keydiff` chooses per (batch, head) and keeps uids [B,H,C] int64 on the device.

Always kept (mandatory): the anchor frame (the first frame appended after construction/reset), whole; the
sink tokens (sink-window); and, with `protect_special`, the first `special_tokens` (camera + registers) of
recent cached frames. Protected-token rule: protected tokens may take at most `max_protected_share` of the
layer budget (and never the room the anchor, sink and one step's new frames need); past that, the oldest
frames' special tokens lose protection first (FIFO) and become ordinary eviction candidates. We drop
rather than raise because an endless stream must keep running; the anchor's tokens are never dropped.

Bytes: `bytes_in_use()` = kept tokens x 2 (k, v) x B x H x D x itemsize, summed over layers, plus the
provenance overhead of the kept tokens: 8 bytes per token (host, shared-choice policies) or 8 x B x H bytes
per token (device, keydiff). `bytes_reserved()` adds the unused capacity and the scratch buffer.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from recon.cache_config import CacheConfig, CacheConfigError
from recon.kernels.cache_kv import (
    dynamic_layer_budgets,
    gather_heads,
    keydiff_scores,
    mean_candidate_score,
    select_per_head,
)

UID_BYTES = 8  # int64 provenance per kept token (per head for keydiff)
_NONE_INITIAL_FRAMES = 8  # `none` starts with room for this many frames, then doubles


@dataclass
class _Layer:
    """One layer's storage and bookkeeping. k, v [B,H,C,D]; uid [C] (host) or [B,H,C] (device, keydiff)."""

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


class KVCache:
    """Per global-attention layer key/value cache with a token budget and an eviction policy."""

    def __init__(
        self,
        config: CacheConfig,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        tokens_per_frame: int,
        special_tokens: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if min(num_layers, batch, num_heads, head_dim, tokens_per_frame) < 1:
            raise CacheConfigError("num_layers, batch, num_heads, head_dim and tokens_per_frame must be >= 1")
        if not 0 <= special_tokens <= tokens_per_frame:
            raise CacheConfigError(f"special_tokens must be in [0, {tokens_per_frame}], got {special_tokens}")
        self.config = config
        self.num_layers, self.batch, self.num_heads, self.head_dim = num_layers, batch, num_heads, head_dim
        self.tokens_per_frame, self.special_tokens = tokens_per_frame, special_tokens
        self.device, self.dtype = torch.device(device), dtype
        self.sink_tokens = (
            0
            if config.policy != "sink-window"
            else (tokens_per_frame if config.sink_tokens is None else config.sink_tokens)
        )
        self.min_layer_budget = tokens_per_frame * (1 + config.frames_per_step) + self.sink_tokens
        self._check_budget()
        self._per_head = config.policy == "keydiff"
        self._calibrated = not config.dynamic_layer_budget
        self._layer_scores: list[float] = []
        self._scratch = torch.empty(0, device=self.device, dtype=dtype)
        self._prune_s = 0.0
        self._layers = [self._new_layer(b) for b in self._initial_budgets()]

    # --- construction -------------------------------------------------------------------------------

    def _check_budget(self) -> None:
        budget, P = self.config.budget_tokens, self.tokens_per_frame
        if budget is None:
            return
        parts = f"anchor frame {P} + {self.config.frames_per_step} new frame(s) x {P}"
        parts += f" + sink {self.sink_tokens}" if self.sink_tokens else ""
        if self.config.budget_scope == "layer" and budget < self.min_layer_budget:
            raise CacheConfigError(
                f"budget_tokens={budget} per layer is smaller than one step needs: at least "
                f"{self.min_layer_budget} tokens per layer ({parts})"
            )
        minimum_total = self.min_layer_budget * self.num_layers
        if self.config.budget_scope == "total" and budget < minimum_total:
            raise CacheConfigError(
                f"budget_tokens={budget} in total is smaller than one step needs: at least {minimum_total} "
                f"tokens ({self.num_layers} layers x {self.min_layer_budget}: {parts})"
            )

    def _initial_budgets(self) -> list[int | None]:
        budget, L = self.config.budget_tokens, self.num_layers
        if budget is None:
            return [None] * L
        if self.config.budget_scope == "layer":
            return [budget] * L
        if self.config.dynamic_layer_budget:
            return [budget // L] * L  # provisional equal split until calibration; remainder assigned then
        return [budget // L + (1 if i < budget % L else 0) for i in range(L)]

    def _protect_cap(self, budget: int | None) -> int:
        S = self.special_tokens
        if budget is None or not self.config.protect_special or S == 0:
            return 0
        spare = budget - self.min_layer_budget  # what anchor, sink and one step's frames leave over
        return max(0, min(int(self.config.max_protected_share * budget), spare)) // S

    def _new_layer(self, budget: int | None) -> _Layer:
        capacity = budget if budget is not None else _NONE_INITIAL_FRAMES * self.tokens_per_frame
        k, v, uid = self._alloc(capacity)
        return self._empty_layer(k, v, uid, budget)

    def _empty_layer(self, k: Tensor, v: Tensor, uid: Tensor, budget: int | None) -> _Layer:
        return _Layer(
            k=k, v=v, uid=uid, budget=budget, protect_cap=self._protect_cap(budget), sink_left=self.sink_tokens
        )

    def _alloc(self, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
        shape = (self.batch, self.num_heads, capacity, self.head_dim)
        k = torch.empty(shape, device=self.device, dtype=self.dtype)
        v = torch.empty(shape, device=self.device, dtype=self.dtype)
        if self._per_head:
            uid = torch.empty(shape[:3], device=self.device, dtype=torch.int64)
        else:
            uid = torch.empty(capacity, dtype=torch.int64)
        return k, v, uid

    # --- public API ---------------------------------------------------------------------------------

    def append(self, layer: int, k: Tensor, v: Tensor, frame_index: int | Sequence[int] | Tensor) -> None:
        """Add one frame's (or a group's) tokens k, v [B,H,T,D] to `layer`, evicting first so the budget
        holds with them. frame_index: the first frame of the group (frames consecutive), or one index per
        frame [T/P], or one per token [T]; frames must be newer than every cached frame."""
        lay = self._layers[layer]
        T = self._check_tokens(k, v)
        frames = self._frames_of(frame_index, T, lay)
        if lay.anchor is None:
            lay.anchor = frames[0]
        start = time.perf_counter()
        if not self._calibrated and lay.budget is not None and lay.n + T > lay.budget:
            self._calibrate(T)
        if lay.budget is None:
            self._ensure_capacity(lay, lay.n + T)
        elif lay.n + T > lay.budget:
            self._evict(layer, lay, T)
        self._prune_s += time.perf_counter() - start
        self._write(lay, k, v, frames)

    def view(self, layer: int) -> tuple[Tensor, Tensor]:
        """The kept keys and values [B,H,N,D], time-ordered: views into the layer's storage, valid until
        the next append/reset of this layer."""
        lay = self._layers[layer]
        return lay.k[:, :, : lay.n], lay.v[:, :, : lay.n]

    def provenance(self, layer: int) -> Tensor:
        """uid [B,H,N] int64 of every kept token: frame = uid // tokens_per_frame, token = uid % it."""
        lay = self._layers[layer]
        if self._per_head:
            return lay.uid[:, :, : lay.n]
        return lay.uid[: lay.n].expand(self.batch, self.num_heads, lay.n)

    def reset(self) -> None:
        """Empty every layer (between sequences); bounded storage is kept, `none` storage shrinks back."""
        if self.config.dynamic_layer_budget or self.config.policy == "none":
            self._layers = [self._new_layer(b) for b in self._initial_budgets()]
            self._calibrated = not self.config.dynamic_layer_budget
            self._layer_scores = []
            self._scratch = torch.empty(0, device=self.device, dtype=self.dtype)
        else:
            self._layers = [self._empty_layer(lay.k, lay.v, lay.uid, lay.budget) for lay in self._layers]
        self._prune_s = 0.0

    def tokens(self, layer: int) -> int:
        return self._layers[layer].n

    def budgets(self) -> list[int | None]:
        """Per-layer token budgets (with a dynamic budget: provisional until the first eviction)."""
        return [lay.budget for lay in self._layers]

    def layer_scores(self) -> list[float]:
        """Mean cosine per layer measured at calibration (dynamic budget only; empty before)."""
        return list(self._layer_scores)

    def token_bytes(self) -> int:
        """k + v bytes of one cached token (all batch rows and heads)."""
        return 2 * self.batch * self.num_heads * self.head_dim * self.dtype.itemsize

    def bytes_in_use(self) -> int:
        kept = sum(lay.n for lay in self._layers)
        uid_per_token = UID_BYTES * (self.batch * self.num_heads if self._per_head else 1)
        return kept * (self.token_bytes() + uid_per_token)

    def bytes_reserved(self) -> int:
        uid_per_token = UID_BYTES * (self.batch * self.num_heads if self._per_head else 1)
        capacity = sum(lay.capacity for lay in self._layers)
        return capacity * (self.token_bytes() + uid_per_token) + self._scratch.numel() * self.dtype.itemsize

    def stats(self) -> dict[str, float]:
        """Cheap (host-only) numbers to report every step."""
        per_layer = [lay.n for lay in self._layers]
        return {
            "tokens": float(sum(per_layer)),
            "tokens_max_layer": float(max(per_layer)),
            "bytes_in_use": float(self.bytes_in_use()),
            "bytes_reserved": float(self.bytes_reserved()),
            "evicted_tokens": float(sum(lay.evicted for lay in self._layers)),
            "evictions": float(sum(lay.evictions for lay in self._layers)),
            "protected_frames": float(max(len(lay.protected) for lay in self._layers)),
            "prune_seconds": self._prune_s,
        }

    # --- append helpers -----------------------------------------------------------------------------

    def _check_tokens(self, k: Tensor, v: Tensor) -> int:
        B, H, D = self.batch, self.num_heads, self.head_dim
        if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
            raise CacheConfigError(
                f"k, v must both be [B={B}, H={H}, T, D={D}], got {tuple(k.shape)}, {tuple(v.shape)}"
            )
        T = int(k.shape[2])
        if T == 0 or T % self.tokens_per_frame:
            raise CacheConfigError(f"append takes whole frames: T={T} is not a multiple of {self.tokens_per_frame}")
        return T

    def _frames_of(self, frame_index: int | Sequence[int] | Tensor, T: int, lay: _Layer) -> list[int]:
        count = T // self.tokens_per_frame
        if isinstance(frame_index, int):
            frames = list(range(frame_index, frame_index + count))
        else:
            values = [int(f) for f in (frame_index.tolist() if isinstance(frame_index, Tensor) else frame_index)]
            if len(values) == T:
                values = values[:: self.tokens_per_frame]  # one index per token: take each frame's first
            frames = values
        if len(frames) != count or any(b <= a for a, b in zip(frames, frames[1:])) or frames[0] <= lay.last_frame:
            raise CacheConfigError(
                f"frame_index must give {count} increasing frame(s) newer than frame {lay.last_frame}, got {frames}"
            )
        return frames

    def _write(self, lay: _Layer, k: Tensor, v: Tensor, frames: list[int]) -> None:
        P, T, n = self.tokens_per_frame, int(k.shape[2]), lay.n
        uid_t = (torch.tensor(frames, dtype=torch.int64)[:, None] * P + torch.arange(P)).flatten()
        lay.k[:, :, n : n + T].copy_(k)
        lay.v[:, :, n : n + T].copy_(v)
        if self._per_head:
            lay.uid[:, :, n : n + T].copy_(uid_t.to(self.device).expand(self.batch, self.num_heads, T))
        else:
            lay.uid[n : n + T] = uid_t
        lay.n = n + T
        lay.last_frame = frames[-1]
        self._record_sink(lay, uid_t)
        self._record_protected(lay, frames)

    def _record_sink(self, lay: _Layer, uid_t: Tensor) -> None:
        """The sink = the first `sink_tokens` tokens after the anchor frame; uids are monotone in time, so
        it is one inclusive uid range."""
        if lay.sink_left == 0:
            return
        after_anchor = uid_t[uid_t // self.tokens_per_frame != lay.anchor]
        taken = after_anchor[: lay.sink_left]
        if len(taken):
            lay.sink_lo = int(taken[0]) if lay.sink_lo < 0 else lay.sink_lo
            lay.sink_hi = int(taken[-1])
            lay.sink_left -= len(taken)

    def _record_protected(self, lay: _Layer, frames: list[int]) -> None:
        if lay.protect_cap == 0:
            return
        lay.protected.extend(f for f in frames if f != lay.anchor)
        while len(lay.protected) > lay.protect_cap:
            lay.protected.popleft()  # oldest frames lose protection first; the anchor is never in here

    def _ensure_capacity(self, lay: _Layer, need: int) -> None:
        if need <= lay.capacity:
            return
        self._resize(lay, max(need, 2 * lay.capacity))

    def _resize(self, lay: _Layer, capacity: int) -> None:
        k, v, uid = self._alloc(capacity)
        n = lay.n
        k[:, :, :n].copy_(lay.k[:, :, :n])
        v[:, :, :n].copy_(lay.v[:, :, :n])
        if self._per_head:
            uid[:, :, :n].copy_(lay.uid[:, :, :n])
        else:
            uid[:n] = lay.uid[:n]
        lay.k, lay.v, lay.uid = k, v, uid

    # --- eviction -----------------------------------------------------------------------------------

    def _mandatory(self, lay: _Layer, uid: Tensor) -> Tensor:
        """Tokens no policy may evict: anchor frame, sink range, protected special tokens."""
        P = self.tokens_per_frame
        frame = uid // P
        keep = torch.eq(frame, -1 if lay.anchor is None else lay.anchor)
        if lay.protected:
            keep |= (uid % P < self.special_tokens) & (frame >= lay.protected[0])
        if self.sink_tokens:
            keep |= (uid >= lay.sink_lo) & (uid <= lay.sink_hi)
        return keep

    def _evict(self, layer: int, lay: _Layer, T: int) -> None:
        assert lay.budget is not None
        n = lay.n
        uid = lay.uid[:, :, :n] if self._per_head else lay.uid[:n]
        mandatory = self._mandatory(lay, uid)
        need = int(mandatory[0, 0].sum()) if self._per_head else int(mandatory.sum())
        if need > lay.budget - T:
            raise CacheConfigError(
                f"layer {layer}: a step of {T // self.tokens_per_frame} frame(s) ({T} tokens) does not fit the "
                f"budget {lay.budget} next to {need} kept anchor/sink/protected tokens; raise budget_tokens or "
                f"frames_per_step (now {self.config.frames_per_step})"
            )
        keep = max(need, lay.budget - T - int(self.config.evict_slack * lay.budget))
        if self._per_head:
            scores = keydiff_scores(lay.k[:, :, :n], ~mandatory)
            idx = select_per_head(scores, keep, mandatory)
        elif self.config.policy == "queue":
            idx = self._queue_keep(uid, mandatory, keep - need)
        else:
            idx = self._window_keep(mandatory, keep - need)
        self._compact(lay, idx)

    def _queue_keep(self, uid: Tensor, mandatory: Tensor, room: int) -> Tensor:
        """Mandatory tokens + the free tokens of the most recent whole frames that fit in `room`."""
        free = ~mandatory
        frame_f = uid[free] // self.tokens_per_frame  # time-ordered, so equal frames are adjacent
        frames, counts = torch.unique_consecutive(frame_f, return_counts=True)
        newer_or_equal = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])
        kept_frames = frames[newer_or_equal <= room]
        keep = mandatory | (free & torch.isin(uid // self.tokens_per_frame, kept_frames))
        return keep.nonzero().flatten()

    def _window_keep(self, mandatory: Tensor, room: int) -> Tensor:
        """Mandatory tokens + the `room` most recent free tokens (token granular, StreamingLLM)."""
        free_idx = (~mandatory).nonzero().flatten()
        keep = mandatory.clone()
        if room > 0:
            keep[free_idx[-room:]] = True
        return keep.nonzero().flatten()

    def _compact(self, lay: _Layer, idx: Tensor) -> None:
        """Move the kept tokens (idx [K] host or [B,H,K] device, ascending) into the storage prefix."""
        n, K = lay.n, int(idx.shape[-1])
        if self._per_head:
            self._move(lay.k, 0, lay.k[:, :, :n], idx)
            self._move(lay.v, 0, lay.v[:, :, :n], idx)
            lay.uid[:, :, :K] = torch.gather(lay.uid[:, :, :n], 2, idx)
        else:
            same = idx == torch.arange(K)
            start = K if bool(same.all()) else int((~same).nonzero()[0])  # slots before it stay put
            tail = idx[start:].to(self.device)
            if len(tail):
                self._move(lay.k, start, lay.k[:, :, :n], tail)
                self._move(lay.v, start, lay.v[:, :, :n], tail)
            lay.uid[:K] = lay.uid[idx]
        lay.evicted += n - K
        lay.evictions += 1
        lay.n = K

    def _move(self, store: Tensor, start: int, source: Tensor, idx: Tensor) -> None:
        """store[:, :, start:start+K] = source gathered at idx, through the shared scratch buffer
        (gather cannot write into the tensor it reads)."""
        K = int(idx.shape[-1])
        shape = (self.batch, self.num_heads, K, self.head_dim)
        numel = self.batch * self.num_heads * K * self.head_dim
        if self._scratch.numel() < numel:
            most = max(lay.capacity for lay in self._layers)
            self._scratch = torch.empty(
                max(numel, self.batch * self.num_heads * most * self.head_dim), device=self.device, dtype=self.dtype
            )
        buffer = self._scratch[:numel].view(shape)
        gather_heads(source, idx, out=buffer)
        store[:, :, start : start + K].copy_(buffer)

    # --- dynamic layer budget -----------------------------------------------------------------------

    def _calibrate(self, T: int) -> None:
        """Split the total budget across layers once, at the first step that needs eviction, when every
        layer holds the same frames (so their diversity is comparable); frozen until reset. Then evict
        each layer to its budget and resize its storage to it (a one-off O(budget) copy)."""
        self._layer_scores = [self._layer_score(lay) for lay in self._layers]
        budgets = dynamic_layer_budgets(
            self._layer_scores, self.config.budget_tokens or 0, self.min_layer_budget, self.config.dynamic_temperature
        )
        for i, (lay, budget) in enumerate(zip(self._layers, budgets)):
            lay.budget, lay.protect_cap = budget, self._protect_cap(budget)
            while len(lay.protected) > lay.protect_cap:
                lay.protected.popleft()
            if lay.n + T > budget:
                self._evict(i, lay, T)
            self._resize(lay, budget)
        self._scratch = torch.empty(0, device=self.device, dtype=self.dtype)
        self._calibrated = True

    def _layer_score(self, lay: _Layer) -> float:
        uid = lay.uid[:, :, : lay.n]
        candidates = ~self._mandatory(lay, uid)
        if not bool(candidates.any()):
            candidates = torch.ones_like(candidates)
        return mean_candidate_score(keydiff_scores(lay.k[:, :, : lay.n], candidates), candidates)


class CameraHeadCache:
    """k, v of the camera token per camera-trunk layer (StreamVGGT: 4 layers, appended once per refinement
    iteration, so `iterations` entries per frame). Bounded: the anchor frame's entries + the entries of the
    `recent_frames` most recent frames (the current one included), FIFO. Storage [B,H,C,D] per layer with
    C = (1 + recent_frames) x iterations, preallocated; view = the time-ordered prefix."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        head_dim: int,
        iterations: int = 4,
        recent_frames: int = 16,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if recent_frames < 1 or iterations < 1:
            raise CacheConfigError("CameraHeadCache needs recent_frames >= 1 and iterations >= 1")
        self.iterations, self.recent_frames = iterations, recent_frames
        self.capacity = (1 + recent_frames) * iterations
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
            self._evict(layer, t, frame_index)
            frames = self._frames[layer]
        n = len(frames)
        self._k[layer][:, :, n : n + t].copy_(k)
        self._v[layer][:, :, n : n + t].copy_(v)
        frames.extend([frame_index] * t)

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
