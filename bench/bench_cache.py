"""Step latency and memory of the bounded KV cache (issue 6): the cache alone, or StreamVGGT's real step.

Default (cache alone): simulates StreamVGGT's global-attention steps: per frame and per layer, append the new frame's k, v to the
cache, then a toy attention of the frame's q over the cache view (torch SDPA). Inputs come from a small
pool made before the timer, so the timer sees cache work + attention only. Prints, per policy, the median
step latency around frame 100 and at the end, their ratio (target <= 1.1 for bounded policies), the share
of step time spent pruning (eviction + compaction), and the cache bytes; then latency / MiB vs frame.

Default sizes are StreamVGGT's shape scaled down so 2,000 steps x 3 bounded policies fit a few minutes on 2
CPU cores: 24 layers, 8 heads, head dim 32, 64 tokens per frame (5 special), budget 16 frames per layer,
float32. `none` grows without bound, so it runs only --none-steps frames (its latency grows linearly).
Each bounded policy runs with evict_slack 0 (exactly full, compacts every step) and 0.25 (amortised).

With --model: the whole StreamVGGT step (`StreamVGGTModel.step_images`: DINO, frame and global blocks
through the cache, camera head with its cache, depth and point heads) on a scaled-down VGGT with random
weights, loaded from a checkpoint file like real weights: embed 128, 4 + 4 blocks, 4 heads, 112x84 input
(53 tokens per frame), budget --budget-frames frames per layer. Prune share = eviction + compaction time
over the whole step time.

Run: .venv/bin/python bench/bench_cache.py [--steps 2000] [--none-steps 200] [--policies queue keydiff]
     .venv/bin/python bench/bench_cache.py --model [--steps 2000] [--none-steps 1000] [--budget-frames 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from recon.cache import CacheConfig, KVCache
from recon.models.streamvggt import StreamVGGTModel
from recon.models.vggt_net import VGGT, VGGTConfig

CHECKPOINTS = (10, 100, 500, 1000, 2000, 5000, 10_000)
POOL = 8  # distinct frames of random q/k/v reused cyclically


@dataclass
class Sizes:
    layers: int
    heads: int
    head_dim: int
    tokens: int
    special: int
    budget_frames: int


@dataclass
class Trace:
    policy: str
    step_s: list[float] = field(default_factory=list)  # wall time
    step_cpu_s: list[float] = field(default_factory=list)  # this thread's CPU time: less sensitive to other load
    paired_early_cpu_s: list[float] = field(default_factory=list)  # --model: frames 100.., interleaved with
    paired_late_cpu_s: list[float] = field(default_factory=list)  # ... the frames after the last one
    prune_s: list[float] = field(default_factory=list)
    bytes_in_use: list[int] = field(default_factory=list)


def make_pool(sizes: Sizes, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    shape = (1, sizes.heads, sizes.tokens, sizes.head_dim)
    return [tuple(torch.randn(shape, generator=gen).to(dtype) for _ in range(3)) for _ in range(POOL)]  # type: ignore[misc]


def make_cache(policy: str, sizes: Sizes, dtype: torch.dtype, slack: float) -> KVCache:
    budget = None if policy == "none" else sizes.budget_frames * sizes.tokens
    config = CacheConfig(policy=policy, budget_tokens=budget, evict_slack=0.0 if policy == "none" else slack)  # type: ignore[arg-type]
    return KVCache(config, sizes.layers, 1, sizes.heads, sizes.head_dim, sizes.tokens, sizes.special, dtype=dtype)


def run_policy(policy: str, steps: int, sizes: Sizes, dtype: torch.dtype, slack: float) -> Trace:
    cache, pool = make_cache(policy, sizes, dtype, slack), make_pool(sizes, dtype)
    trace = Trace(policy if slack == 0 or policy == "none" else f"{policy}+{slack:g}")
    for f in range(steps):
        q, k, v = pool[f % POOL]
        pruned_before = cache.stats()["prune_seconds"]
        start, start_cpu = time.perf_counter(), time.thread_time()
        for layer in range(sizes.layers):
            cache.append(layer, k, v, f)
            k_all, v_all = cache.view(layer)
            torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all)
        trace.step_s.append(time.perf_counter() - start)
        trace.step_cpu_s.append(time.thread_time() - start_cpu)
        stats = cache.stats()
        trace.prune_s.append(stats["prune_seconds"] - pruned_before)
        trace.bytes_in_use.append(int(stats["bytes_in_use"]))
    return trace


BENCH_CONFIG = VGGTConfig(
    img_size=112,
    embed_dim=128,
    depth=4,
    num_heads=4,
    dino_depth=4,
    dino_num_heads=4,
    camera_trunk_depth=2,
    camera_num_heads=4,
    dpt_features=32,
    dpt_out_channels=(16, 32, 64, 64),
    dpt_layers=(0, 1, 2, 3),
    dpt_hidden=16,
)
MODEL_INPUT_HW = (84, 112)


def write_random_checkpoint(config: VGGTConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "bench.safetensors"
    save_file({k: v.contiguous() for k, v in VGGT(config).state_dict().items()}, str(path))
    return path


PROBE_FRAME, PAIRS = 100, 60  # the early stream's first timed frame; interleaved steps per stream


def run_model_policy(policy: str, steps: int, budget_frames: int, slack: float, weights: Path) -> Trace:
    """StreamVGGT steps of one frame each, the frames cycling through a small pool made before the timer.
    One stream runs `steps` frames (the curve). Then a second, fresh stream is brought to frame 100 and the
    two step alternately, PAIRS times each: the end/100 ratio compares steps taken under the same machine
    load (on a shared machine, load drifts more between frame 100 and frame 2,000 than any cache effect)."""
    cfg = BENCH_CONFIG
    P = cfg.patch_start_idx + (MODEL_INPUT_HW[0] // cfg.patch_size) * (MODEL_INPUT_HW[1] // cfg.patch_size)
    cache = CacheConfig(policy=policy, budget_tokens=None if policy == "none" else budget_frames * P, evict_slack=slack)  # type: ignore[arg-type]
    late = StreamVGGTModel(weights=weights, config=cfg, device="cpu", cache=cache)
    early = StreamVGGTModel(weights=weights, config=cfg, device="cpu", cache=cache)
    gen = torch.Generator().manual_seed(0)
    pool = [torch.rand(1, 3, *MODEL_INPUT_HW, generator=gen) for _ in range(POOL)]
    trace = Trace(policy if slack == 0 or policy == "none" else f"{policy}+{slack:g}")
    for f in range(steps):
        pruned_before = late.kv.stats()["prune_seconds"] if late.kv is not None else 0.0
        wall, cpu = timed_step(late, pool[f % POOL])
        trace.step_s.append(wall)
        trace.step_cpu_s.append(cpu)
        assert late.kv is not None
        stats = late.kv.stats()
        trace.prune_s.append(stats["prune_seconds"] - pruned_before)
        trace.bytes_in_use.append(int(stats["bytes_in_use"]))
    for f in range(PROBE_FRAME):
        early.step_images(pool[f % POOL])
    for i in range(PAIRS):
        trace.paired_early_cpu_s.append(timed_step(early, pool[(PROBE_FRAME + i) % POOL])[1])
        trace.paired_late_cpu_s.append(timed_step(late, pool[(steps + i) % POOL])[1])
    return trace


def timed_step(model: StreamVGGTModel, images: torch.Tensor) -> tuple[float, float]:
    """(wall, this thread's CPU) seconds of one step."""
    start, start_cpu = time.perf_counter(), time.thread_time()
    model.step_images(images)
    return time.perf_counter() - start, time.thread_time() - start_cpu


def median_ms(values: list[float], centre: int, half: int = 10) -> float:
    lo, hi = max(0, centre - half), min(len(values), centre + half + 1)
    return 1e3 * statistics.median(values[lo:hi])


def summary_row(trace: Trace) -> str:
    n = len(trace.step_s)
    if trace.paired_early_cpu_s:
        at100, at_end = (
            1e3 * statistics.median(trace.paired_early_cpu_s),
            1e3 * statistics.median(trace.paired_late_cpu_s),
        )
    else:
        at100, at_end = median_ms(trace.step_cpu_s, 100), median_ms(trace.step_cpu_s, n - 11)
    wall100, wall_end = median_ms(trace.step_s, 100), median_ms(trace.step_s, n - 11)
    prune_pct = 100 * sum(trace.prune_s[100:]) / max(sum(trace.step_s[100:]), 1e-12)
    mib100, mib_end = trace.bytes_in_use[100] / 2**20, trace.bytes_in_use[-1] / 2**20
    return (
        f"{trace.policy:<16} {n:>6} {at100:>9.2f} {at_end:>9.2f} {at_end / at100:>7.2f} {wall_end / wall100:>9.2f} "
        f"{prune_pct:>7.1f}% {mib100:>9.1f} {mib_end:>9.1f}"
    )


def curve_rows(traces: list[Trace]) -> list[str]:
    rows = []
    for t in traces:
        points = [c for c in CHECKPOINTS if c <= len(t.step_s)]
        cells = [
            f"{c}: {median_ms(t.step_cpu_s, c - 1):.1f} ms / {t.bytes_in_use[c - 1] / 2**20:.1f} MiB" for c in points
        ]
        rows.append(f"{t.policy:<16} " + " | ".join(cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="store_true", help="time StreamVGGT's real step, not the cache alone")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--none-steps", type=int, default=200, help="frames for the unbounded policy")
    parser.add_argument("--policies", nargs="+", default=["none", "queue", "sink-window", "keydiff"])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--special", type=int, default=5)
    parser.add_argument("--budget-frames", type=int, default=16)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the CPU-time latency covers all compute)"
    )
    parser.add_argument("--slack", type=float, nargs="+", default=[0.0, 0.25], help="evict_slack values to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = Sizes(args.layers, args.heads, args.head_dim, args.tokens, args.special, args.budget_frames)
    dtype = getattr(torch, args.dtype)
    folder = tempfile.TemporaryDirectory()
    weights = write_random_checkpoint(BENCH_CONFIG, Path(folder.name)) if args.model else None
    if args.model:
        print(
            f"StreamVGGT step, {BENCH_CONFIG}, input {MODEL_INPUT_HW}, float32, {args.threads} threads; budget "
            f"{args.budget_frames} frames/layer; none capped at {args.none_steps} frames"
        )
    else:
        print(
            f"sizes: {sizes}, dtype {args.dtype}, {args.threads} threads; budget {sizes.budget_frames * sizes.tokens} "
            f"tokens/layer; none capped at {args.none_steps} frames"
        )
    traces = []
    runs = [(p, 0.0) for p in args.policies if p == "none"]
    runs += [(p, slack) for p in args.policies if p != "none" for slack in args.slack]
    for policy, slack in runs:
        steps = min(args.steps, args.none_steps) if policy == "none" else args.steps
        wall = time.perf_counter()
        if weights is not None:
            traces.append(run_model_policy(policy, steps, args.budget_frames, slack, weights))
        else:
            traces.append(run_policy(policy, steps, sizes, dtype, slack))
        print(f"  {traces[-1].policy}: {steps} steps in {time.perf_counter() - wall:.0f} s", flush=True)
    print(
        "\nstep latency = median of the stepping thread's CPU time (with --threads 1 all compute is on that thread), over "
        + (f"{PAIRS} steps at frame {PROBE_FRAME}.. and at the end, interleaved" if args.model else "21 steps")
        + "; wall end/100 (21 steps, not interleaved) for reference; prune = share of wall time"
    )
    print(
        f"{'policy':<16} {'frames':>6} {'ms@100':>9} {'ms@end':>9} {'end/100':>7} {'wall e/100':>9} {'prune':>8} "
        f"{'MiB@100':>9} {'MiB@end':>9}"
    )
    for t in traces:
        print(summary_row(t))
    print("\nmedian step latency (CPU) / cache bytes vs frame:")
    print("\n".join(curve_rows(traces)))


if __name__ == "__main__":
    main()
