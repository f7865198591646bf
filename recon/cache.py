"""Bounded KV cache for causal global attention (StreamVGGT); its camera head's cache: recon/cache_camera.py.

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

Policy. Which tokens stay is the `EvictionPolicy`'s choice (recon/cache_policy.py, one class per policy name,
picked by `config.policy`); the storage, the tokens no policy may evict and the budgets are here.

Provenance. Every kept token carries a uid = frame_index * tokens_per_frame + token_in_frame (monotone in
time): one vector [C] on the host when the policy chooses the same tokens for all heads, [B,H,C] int64 on
the device when it chooses per (batch, head) (`keydiff`).

Always kept (mandatory): the anchor frame (the first frame appended after construction/reset), whole; the
sink tokens (sink-window); and, with `protect_special`, the first `special_tokens` (camera + registers) of
recent cached frames. Protected-token rule: protected tokens may take at most `MAX_PROTECTED_SHARE` of the
layer budget (and never the room the anchor, sink and one step's new frames need); past that, the oldest
frames' special tokens lose protection first (FIFO) and become ordinary eviction candidates. We drop
rather than raise because an endless stream must keep running; the anchor's tokens are never dropped.

Bytes: `bytes_in_use()` = kept tokens x 2 (k, v) x B x H x D x itemsize, summed over layers, plus the
provenance overhead of the kept tokens: 8 bytes per token (host, shared-choice policies) or 8 x B x H bytes
per token (device, keydiff). `bytes_reserved()` adds the unused capacity and the scratch buffer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from recon.cache_config import CacheConfig, CacheConfigError
from recon.cache_layer import CacheLayer
from recon.cache_policy import EvictionRequest, eviction_policy
from recon.kernels.cache_kv import dynamic_layer_budgets, gather_heads, keydiff_scores, mean_candidate_score

UID_BYTES = 8  # int64 provenance per kept token (per head for keydiff)
_NONE_INITIAL_FRAMES = 8  # `none` starts with room for this many frames, then doubles
# Protected special tokens take at most this share of a layer budget: enough for the recent frames' camera and
# register tokens, while most of the budget stays with the policy's choice.
MAX_PROTECTED_SHARE = 0.25


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
        self.policy = eviction_policy(config, tokens_per_frame)
        self.sink_tokens = self.policy.sink_tokens
        self.min_layer_budget = tokens_per_frame * (1 + config.frames_per_step) + self.sink_tokens
        self._check_budget()
        self._per_head = self.policy.per_head
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
        return max(0, min(int(MAX_PROTECTED_SHARE * budget), spare)) // S

    def _new_layer(self, budget: int | None) -> CacheLayer:
        capacity = budget if budget is not None else _NONE_INITIAL_FRAMES * self.tokens_per_frame
        k, v, uid = self._alloc(capacity)
        return self._empty_layer(k, v, uid, budget)

    def _empty_layer(self, k: Tensor, v: Tensor, uid: Tensor, budget: int | None) -> CacheLayer:
        return CacheLayer(
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
        if self.config.dynamic_layer_budget or not self.policy.bounded:
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

    def _frames_of(self, frame_index: int | Sequence[int] | Tensor, T: int, lay: CacheLayer) -> list[int]:
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

    def _write(self, lay: CacheLayer, k: Tensor, v: Tensor, frames: list[int]) -> None:
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
        lay.record_sink(uid_t, P)
        lay.record_protected(frames)

    def _ensure_capacity(self, lay: CacheLayer, need: int) -> None:
        if need <= lay.capacity:
            return
        self._resize(lay, max(need, 2 * lay.capacity))

    def _resize(self, lay: CacheLayer, capacity: int) -> None:
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

    def _evict(self, layer: int, lay: CacheLayer, T: int) -> None:
        assert lay.budget is not None
        n = lay.n
        uid = lay.uid[:, :, :n] if self._per_head else lay.uid[:n]
        mandatory = lay.mandatory(uid, self.tokens_per_frame, self.special_tokens, self.sink_tokens)
        need = int(mandatory[0, 0].sum()) if self._per_head else int(mandatory.sum())
        if need > lay.budget - T:
            raise CacheConfigError(
                f"layer {layer}: a step of {T // self.tokens_per_frame} frame(s) ({T} tokens) does not fit the "
                f"budget {lay.budget} next to {need} kept anchor/sink/protected tokens; raise budget_tokens or "
                f"frames_per_step (now {self.config.frames_per_step})"
            )
        keep = max(need, lay.budget - T - int(self.config.evict_slack * lay.budget))
        request = EvictionRequest(keys=lay.k[:, :, :n], uid=uid, mandatory=mandatory, keep=keep, room=keep - need)
        self._compact(lay, self.policy.select(request))

    def _compact(self, lay: CacheLayer, idx: Tensor) -> None:
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
        budgets = dynamic_layer_budgets(self._layer_scores, self.config.budget_tokens or 0, self.min_layer_budget)
        for i, (lay, budget) in enumerate(zip(self._layers, budgets)):
            lay.budget, lay.protect_cap = budget, self._protect_cap(budget)
            while len(lay.protected) > lay.protect_cap:
                lay.protected.popleft()
            if lay.n + T > budget:
                self._evict(i, lay, T)
            self._resize(lay, budget)
        self._scratch = torch.empty(0, device=self.device, dtype=self.dtype)
        self._calibrated = True

    def _layer_score(self, lay: CacheLayer) -> float:
        uid = lay.uid[:, :, : lay.n]
        candidates = ~lay.mandatory(uid, self.tokens_per_frame, self.special_tokens, self.sink_tokens)
        if not bool(candidates.any()):
            candidates = torch.ones_like(candidates)
        return mean_candidate_score(keydiff_scores(lay.k[:, :, : lay.n], candidates), candidates)
