"""The KV cache's settings and the names of its policies: plain Python, so the command line can list the
policies without loading torch (the cache itself: recon/cache.py; one eviction policy class per name:
recon/cache_policy.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from recon.errors import ReconError

PolicyName = Literal["none", "queue", "sink-window", "keydiff"]
POLICIES: tuple[str, ...] = get_args(PolicyName)


class CacheConfigError(ReconError, ValueError):
    """A cache configuration is inconsistent or its budget cannot hold the frames one step needs."""


@dataclass(frozen=True)
class CacheConfig:
    """How a KVCache bounds itself. `budget_tokens` counts tokens per layer (or across all layers with
    budget_scope="total"); one token costs 2 x B x H x D x itemsize bytes of k/v."""

    policy: PolicyName = "none"
    budget_tokens: int | None = None
    budget_scope: Literal["layer", "total"] = "layer"
    dynamic_layer_budget: bool = False  # keydiff + total: split by softmax((1 - mean cosine) / 0.5)
    protect_special: bool = True  # keep camera + register tokens of recent cached frames
    sink_tokens: int | None = None  # sink-window: tokens after the anchor kept forever; None = one frame
    frames_per_step: int = 1  # largest group appended at once; sizes the minimum budget
    # Extra fraction of the budget freed per eviction. 0 keeps the cache exactly full (each step over budget
    # compacts, O(budget) copies per step); e.g. 0.25 compacts every ~budget/4 new tokens, so copies are
    # amortised O(new tokens) per step, at the price of holding 75-100% of the budget instead of 100%.
    evict_slack: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise CacheConfigError(f"unknown cache policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.policy == "none" and self.budget_tokens is not None:
            raise CacheConfigError("policy 'none' is unbounded; leave budget_tokens unset or pick a bounded policy")
        if self.policy != "none" and (self.budget_tokens is None or self.budget_tokens <= 0):
            raise CacheConfigError(f"policy {self.policy!r} needs a positive budget_tokens")
        if self.dynamic_layer_budget and (self.policy != "keydiff" or self.budget_scope != "total"):
            raise CacheConfigError("dynamic_layer_budget needs policy='keydiff' and budget_scope='total'")
        if self.sink_tokens is not None and self.sink_tokens < 0:
            raise CacheConfigError(f"sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.frames_per_step < 1:
            raise CacheConfigError(f"frames_per_step must be >= 1, got {self.frames_per_step}")
        if not 0.0 <= self.evict_slack < 1.0:
            raise CacheConfigError(f"evict_slack must be in [0, 1), got {self.evict_slack}")
