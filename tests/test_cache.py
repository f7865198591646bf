"""KV cache (recon.cache) and its scoring/gather kernels (recon.kernels.cache_kv)."""

from __future__ import annotations

import pytest
import torch
from support.cache_reference import keydiff_scores_reference, select_per_head_reference
from torch import Tensor

from recon.cache import CacheConfig, CacheConfigError, KVCache
from recon.cache_camera import CameraHeadCache
from recon.cache_config import POLICIES
from recon.cache_policy import POLICY_CLASSES, eviction_policy
from recon.errors import ReconError
from recon.kernels.cache_kv import dynamic_layer_budgets, gather_heads, keydiff_scores, select_per_head

B, H, D, P, S = 1, 2, 8, 6, 2  # batch, heads, head dim, tokens per frame, special tokens per frame
BUDGET = 48  # 8 frames' worth per layer


def make_cache(policy: str, budget: int | None = BUDGET, layers: int = 1, **config: object) -> KVCache:
    cfg = CacheConfig(policy=policy, budget_tokens=budget, **config)  # type: ignore[arg-type]
    return KVCache(cfg, layers, B, H, D, tokens_per_frame=P, special_tokens=S)


def frame_kv(gen: torch.Generator, frame: int, frames: int = 1) -> tuple[Tensor, Tensor]:
    """Random keys; values carry the token uid in channel 0 so tests can check values follow keys."""
    T = frames * P
    k = torch.randn(B, H, T, D, generator=gen)
    v = torch.randn(B, H, T, D, generator=gen)
    v[..., 0] = torch.arange(frame * P, frame * P + T, dtype=torch.float32)
    return k, v


def toy_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    weights = torch.softmax(q @ k.transpose(-1, -2) / k.shape[-1] ** 0.5, dim=-1)
    return weights @ v


# --- policy none ---------------------------------------------------------------------------------


def test_none_view_is_the_exact_concatenation_and_attention_matches() -> None:
    gen = torch.Generator().manual_seed(0)
    cache = make_cache("none", budget=None, layers=2)
    ks, vs = [], []
    for f in range(40):  # past the initial 8-frame capacity: storage grows several times
        k, v = frame_kv(gen, f)
        ks.append(k), vs.append(v)
        for layer in range(2):
            cache.append(layer, k, v, f)
        q = torch.randn(B, H, P, D, generator=gen)
        k_view, v_view = cache.view(1)
        full_k, full_v = torch.cat(ks, dim=2), torch.cat(vs, dim=2)
        assert torch.equal(k_view, full_k) and torch.equal(v_view, full_v)
        expected = toy_attention(q, full_k, full_v)
        assert torch.allclose(toy_attention(q, k_view, v_view), expected, atol=1e-6, rtol=0)
    assert cache.tokens(0) == 40 * P
    assert cache.bytes_in_use() == 2 * 40 * P * (2 * B * H * D * 4 + 8)


def test_view_is_a_view_into_storage() -> None:
    cache = make_cache("queue")
    gen = torch.Generator().manual_seed(1)
    for f in range(20):
        cache.append(0, *frame_kv(gen, f), f)
    k_view, _ = cache.view(0)
    assert k_view.data_ptr() == cache._layers[0].k.data_ptr()


# --- bounded policies: invariants over a long stream -------------------------------------------------


def check_invariants(cache: KVCache, layer: int, newest: int, history_k: Tensor, budget: int) -> Tensor:
    """Asserts the per-step guarantees and returns provenance uid [B,H,N]."""
    k_view, v_view = cache.view(layer)
    uid = cache.provenance(layer)
    n = cache.tokens(layer)
    assert n <= budget
    assert uid.shape == (B, H, n) and k_view.shape == (B, H, n, D)
    assert bool((uid[..., 1:] > uid[..., :-1]).all()), "time order"
    assert torch.equal(v_view[..., 0], uid.float()), "values follow their keys"
    assert torch.equal(k_view, torch.gather(history_k, 2, uid[..., None].expand(B, H, n, D))), "keys are the originals"
    frame = uid // P
    for b in range(B):
        for h in range(H):
            assert int((frame[b, h] == 0).sum()) == P, "anchor frame kept whole"
            assert int((frame[b, h] == newest).sum()) == P, "newest frame present"
    assert cache.bytes_in_use() == n * (2 * B * H * D * 4) + n * 8 * (B * H if cache.config.policy == "keydiff" else 1)
    return uid


@pytest.mark.parametrize("policy", ["queue", "sink-window", "keydiff"])
def test_bounded_policy_invariants_over_2000_frames(policy: str) -> None:
    gen = torch.Generator().manual_seed(2)
    cache = make_cache(policy)
    frames = 2000
    history_k = torch.empty(B, H, frames * P, D)
    protect_cap = min(int(0.25 * BUDGET), BUDGET - 2 * P - cache.sink_tokens) // S
    assert protect_cap > 0
    for f in range(frames):
        k, v = frame_kv(gen, f)
        history_k[:, :, f * P : (f + 1) * P] = k
        cache.append(0, k, v, f)
        uid = check_invariants(cache, 0, f, history_k, BUDGET)
        kept = set(uid[0, 0].tolist())
        for g in range(max(1, f - protect_cap), f):
            assert {g * P + s for s in range(S)} <= kept, f"special tokens of frame {g} protected"
    assert cache.stats()["evicted_tokens"] == frames * P - cache.tokens(0)


def test_group_appends_with_per_token_frame_indices() -> None:
    gen = torch.Generator().manual_seed(3)
    cache = make_cache("keydiff", budget=60, frames_per_step=2)
    history_k = torch.empty(B, H, 200 * P, D)
    for f in range(0, 200, 2):
        k, v = frame_kv(gen, f, frames=2)
        history_k[:, :, f * P : (f + 2) * P] = k
        cache.append(0, k, v, torch.arange(f, f + 2).repeat_interleave(P))
        check_invariants(cache, 0, f + 1, history_k, 60)
        assert int((cache.provenance(0)[0, 0] // P == f).sum()) == P  # both new frames whole


# --- which tokens each policy keeps -------------------------------------------------------------------


@pytest.mark.parametrize("protect", [True, False])
def test_queue_keeps_exactly_the_most_recent_frames(protect: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    cache = make_cache("queue", protect_special=protect)
    for f in range(100):
        cache.append(0, *frame_kv(gen, f), f)
    uid = cache.provenance(0)[0, 0]
    patch_frames = sorted({int(u) // P for u in uid if int(u) % P >= S})
    # 48 = anchor 6 + 7 recent frames x 6 (protected specials of frames 93..98 ride inside those frames)
    assert patch_frames == [0] + list(range(93, 100))
    assert cache.tokens(0) == BUDGET


def test_sink_window_keeps_anchor_sink_and_the_most_recent_tokens() -> None:
    gen = torch.Generator().manual_seed(5)
    cache = make_cache("sink-window", sink_tokens=3, protect_special=False)
    for f in range(100):
        cache.append(0, *frame_kv(gen, f), f)
    uid = cache.provenance(0)[0, 0].tolist()
    sink = [P, P + 1, P + 2]  # first 3 tokens after the anchor frame (frame 1, tokens 0..2)
    assert uid[:P] == list(range(P)) and uid[P : P + 3] == sink
    recent = uid[P + 3 :]
    assert recent == list(range(100 * P - len(recent), 100 * P)), "token-granular recent window"
    assert len(uid) == BUDGET


def test_sink_window_default_sink_is_one_frame() -> None:
    gen = torch.Generator().manual_seed(6)
    cache = make_cache("sink-window", protect_special=False)
    for f in range(50):
        cache.append(0, *frame_kv(gen, f), f)
    assert cache.provenance(0)[0, 0, : 2 * P].tolist() == list(range(2 * P))


def test_keydiff_keeps_the_keys_orthogonal_to_the_mean_direction_per_head() -> None:
    gen = torch.Generator().manual_seed(7)
    cache = make_cache("keydiff", protect_special=False)
    mean_dir = torch.zeros(D)
    mean_dir[0] = 1.0
    odd_ones = {0: [1 * P + 4, 3 * P + 1, 7 * P + 5], 1: [2 * P + 0, 5 * P + 3, 9 * P + 2]}  # head -> uids
    for f in range(200):
        k = mean_dir + 0.01 * torch.randn(B, H, P, D, generator=gen)
        for h, uids in odd_ones.items():
            for u in uids:
                if u // P == f:
                    k[:, h, u % P] = 0.0
                    k[:, h, u % P, 1 + h] = 1.0  # orthogonal to the mean direction
        v = torch.zeros(B, H, P, D)
        cache.append(0, k, v, f)
    uid = cache.provenance(0)
    for h, uids in odd_ones.items():
        assert set(uids) <= set(uid[0, h].tolist()), f"head {h} keeps its diverse keys"
        other = odd_ones[1 - h]
        assert not set(other) <= set(uid[0, h].tolist()), "each head chooses its own set"
    assert uid.shape[-1] == BUDGET


def test_dynamic_layer_budget_sums_to_total_and_favours_the_diverse_layer() -> None:
    gen = torch.Generator().manual_seed(8)
    total = 2 * BUDGET
    cache = make_cache("keydiff", budget=total, layers=2, budget_scope="total", dynamic_layer_budget=True)
    direction = torch.nn.functional.normalize(torch.ones(D), dim=0)
    for f in range(60):
        redundant = direction + 0.05 * torch.randn(B, H, P, D, generator=gen)  # layer 0: near-duplicates
        diverse = torch.randn(B, H, P, D, generator=gen)  # layer 1: spread out
        for layer, k in enumerate((redundant, diverse)):
            cache.append(layer, k, torch.zeros_like(k), f)
        assert sum(cache.tokens(layer) for layer in range(2)) <= total
        budgets = cache.budgets()
        assert all(cache.tokens(layer) <= budgets[layer] for layer in range(2))
    budgets = cache.budgets()
    assert sum(budgets) == total
    assert budgets[1] > budgets[0] >= cache.min_layer_budget
    assert cache.layer_scores()[0] > cache.layer_scores()[1]


def test_every_policy_name_has_its_class() -> None:
    assert tuple(POLICY_CLASSES) == POLICIES
    for name in POLICIES:
        policy = eviction_policy(CacheConfig(policy=name, budget_tokens=None if name == "none" else BUDGET), P)  # type: ignore[arg-type]
        assert policy.name == name and policy.bounded == (name != "none") and policy.per_head == (name == "keydiff")
    sink = eviction_policy(CacheConfig(policy="sink-window", budget_tokens=BUDGET), P)
    assert sink.sink_tokens == P  # default sink: one frame


# --- errors, reset, bytes -----------------------------------------------------------------------------


def test_budget_smaller_than_one_frame_is_a_clear_error() -> None:
    with pytest.raises(CacheConfigError, match=f"at least {2 * P} tokens per layer"):
        make_cache("queue", budget=2 * P - 1)
    with pytest.raises(CacheConfigError, match=f"at least {3 * P} tokens per layer"):
        make_cache("sink-window", budget=2 * P + 1)  # default sink = one frame
    with pytest.raises(CacheConfigError, match=f"at least {4 * 2 * P} tokens"):
        make_cache("keydiff", budget=4 * 2 * P - 1, layers=4, budget_scope="total")
    with pytest.raises(ValueError):  # also a ValueError and a ReconError
        make_cache("keydiff", budget=P)
    assert issubclass(CacheConfigError, ReconError)
    make_cache("queue", budget=2 * P)  # exactly the minimum works


def test_minimum_budget_runs() -> None:
    gen = torch.Generator().manual_seed(9)
    cache = make_cache("keydiff", budget=2 * P)
    for f in range(30):
        cache.append(0, *frame_kv(gen, f), f)
        assert sorted({int(u) // P for u in cache.provenance(0)[0, 0]}) == ([0, f] if f else [0])


def test_oversized_group_is_a_clear_error() -> None:
    gen = torch.Generator().manual_seed(10)
    cache = make_cache("queue", budget=2 * P)
    cache.append(0, *frame_kv(gen, 0), 0)
    with pytest.raises(CacheConfigError, match="does not fit"):
        cache.append(0, *frame_kv(gen, 1, frames=2), 1)


def test_reset_empties_and_restarts() -> None:
    gen = torch.Generator().manual_seed(11)
    for policy, budget in (("none", None), ("queue", BUDGET), ("keydiff", BUDGET)):
        cache = make_cache(policy, budget=budget, layers=2)
        for f in range(30):
            for layer in range(2):
                cache.append(layer, *frame_kv(gen, f), f)
        cache.reset()
        assert [cache.tokens(layer) for layer in range(2)] == [0, 0]
        assert cache.bytes_in_use() == 0 and cache.stats()["evicted_tokens"] == 0
        cache.append(0, *frame_kv(gen, 0), 0)  # a new sequence starts at frame 0 again
        assert cache.provenance(0)[0, 0].tolist() == list(range(P))


def test_frames_must_move_forward() -> None:
    gen = torch.Generator().manual_seed(12)
    cache = make_cache("queue")
    cache.append(0, *frame_kv(gen, 5), 5)
    with pytest.raises(CacheConfigError, match="newer than frame 5"):
        cache.append(0, *frame_kv(gen, 5), 5)


def test_bytes_reserved_is_bounded_by_the_budget() -> None:
    gen = torch.Generator().manual_seed(13)
    cache = make_cache("keydiff", layers=3)
    reserved = cache.bytes_reserved()
    for f in range(100):
        for layer in range(3):
            cache.append(layer, *frame_kv(gen, f), f)
    per_token = 2 * B * H * D * 4 + 8 * B * H
    scratch = B * H * BUDGET * D * 4
    assert cache.bytes_reserved() == 3 * BUDGET * per_token + scratch
    assert reserved == 3 * BUDGET * per_token


# --- camera head cache ------------------------------------------------------------------------------


def test_camera_head_cache_keeps_anchor_and_recent_frames() -> None:
    cache = CameraHeadCache(num_layers=4, batch=B, num_heads=H, head_dim=D, iterations=4, recent_frames=3)
    for f in range(50):
        for it in range(4):
            for layer in range(4):
                k = torch.full((B, H, 1, D), float(f * 10 + it))
                cache.append(layer, k, -k, f)
            frames = cache.frames(3)
            assert cache.tokens(3) <= cache.capacity == 16
            assert frames.count(0) == (4 if f else it + 1) and frames.count(f) == it + 1
    expected = [0] * 4 + [47] * 4 + [48] * 4 + [49] * 4
    assert cache.frames(0) == expected
    k_view, v_view = cache.view(0)
    assert k_view[0, 0, :, 0].tolist() == [float(f * 10 + it) for f in (0, 47, 48, 49) for it in range(4)]
    assert torch.equal(v_view, -k_view)
    assert cache.bytes_in_use() == 4 * 16 * 2 * B * H * D * 4
    cache.reset()
    assert cache.tokens(0) == 0


# --- kernels against their references ----------------------------------------------------------------


def test_keydiff_scores_and_selection_match_references() -> None:
    gen = torch.Generator().manual_seed(14)
    keys = torch.randn(2, 3, 40, D, generator=gen)
    candidates = torch.rand(2, 3, 40, generator=gen) > 0.3
    scores = keydiff_scores(keys, candidates)
    assert torch.allclose(scores, keydiff_scores_reference(keys, candidates), atol=1e-5)
    assert torch.allclose(keydiff_scores(keys), keydiff_scores_reference(keys), atol=1e-5)
    protected = torch.zeros(40, dtype=torch.bool)
    protected[:5] = True
    idx = select_per_head(scores, 20, protected)
    assert torch.equal(idx, select_per_head_reference(scores, 20, protected))
    assert bool((idx[..., :5] == torch.arange(5)).all())
    out = gather_heads(keys, idx)
    assert torch.equal(out, torch.stack([torch.stack([keys[b, h, idx[b, h]] for h in range(3)]) for b in range(2)]))
    shared = torch.tensor([0, 3, 7])
    assert torch.equal(gather_heads(keys, shared), keys[:, :, shared])


def test_keydiff_scores_bf16_keys() -> None:
    keys = torch.randn(1, 2, 16, D).to(torch.bfloat16)
    scores = keydiff_scores(keys)
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, keydiff_scores_reference(keys.float()), atol=1e-5)


def test_dynamic_layer_budgets_split() -> None:
    budgets = dynamic_layer_budgets([0.9, 0.5, 0.1, 0.5], total=1003, floor=100)
    assert sum(budgets) == 1003 and min(budgets) >= 100
    assert budgets[2] > budgets[1] == budgets[3] > budgets[0]
    with pytest.raises(ValueError):
        dynamic_layer_budgets([0.5, 0.5], total=100, floor=60)


@pytest.mark.parametrize("policy", ["queue", "sink-window", "keydiff"])
def test_evict_slack_amortises_compaction(policy: str) -> None:
    gen = torch.Generator().manual_seed(15)
    exact, slack = make_cache(policy), make_cache(policy, evict_slack=0.25)
    frames = 300
    history_k = torch.empty(B, H, frames * P, D)
    for f in range(frames):
        k, v = frame_kv(gen, f)
        history_k[:, :, f * P : (f + 1) * P] = k
        for cache in (exact, slack):
            cache.append(0, k, v, f)
        check_invariants(slack, 0, f, history_k, BUDGET)
        assert slack.tokens(0) >= BUDGET - int(0.25 * BUDGET) - P or f < 10
    assert slack.stats()["evictions"] * 2 < exact.stats()["evictions"]
