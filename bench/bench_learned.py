"""Learned models at full size (issue 16): seconds per window of N frames and peak memory, VGGT-1B and π³,
fp32 and bf16, on this machine's device (CPU here: no weights can be downloaded, so the networks carry random
weights of the released shapes: the arithmetic, and so the time and memory, are those of the real models).

Frames are 392x518 (a 4:3 frame at VGGT's 518-px width; both sides multiples of 14: 28x37 patches). Each
(model, dtype) runs in its own process, so its peak resident memory (ru_maxrss) is its own: network weights,
activations, allocator. One untimed window of 2 frames first (allocator and kernel warm-up), then one timed
window per size. Under bf16 the aggregator / decoder run under autocast; heads stay float32.

    python bench/bench_learned.py [--frames 8 16 32] [--models vggt pi3] [--dtypes fp32 bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

H, W = 392, 518


def one(model: str, dtype: str, frames: list[int]) -> dict[str, object]:
    """In this process: build `model` at full size, time one window per size; -> figures as JSON-able."""
    import torch

    from recon.models.vggt import resolve_dtype

    torch.manual_seed(0)
    t0 = time.perf_counter()
    if model == "vggt":
        from recon.models.vggt_net import VGGT, VGGTConfig

        net: torch.nn.Module = VGGT(VGGTConfig.vggt_1b())
    else:
        from recon.models.pi3_net import Pi3, Pi3Config

        net = Pi3(Pi3Config.pi3())
    net.eval()
    net.amp_dtype = resolve_dtype(dtype)  # type: ignore[assignment]
    build_s = time.perf_counter() - t0
    seconds: dict[int, float] = {}
    with torch.inference_mode():
        net(torch.rand(2, 3, H, W))  # warm-up
        for n in frames:
            images = torch.rand(n, 3, H, W)
            t = time.perf_counter()
            net(images)
            seconds[n] = time.perf_counter() - t
    return {
        "model": model,
        "dtype": dtype,
        "params": sum(p.numel() for p in net.parameters()),
        "build_s": build_s,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--models", nargs="+", default=["vggt", "pi3"], choices=["vggt", "pi3"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child[0], args.child[1], args.frames)))
        return
    print(f"windows of {', '.join(map(str, args.frames))} frames at {H}x{W}, random weights of the released shapes")
    print(
        "| model | dtype | params | "
        + " | ".join(f"{n} frames: s/window (s/frame)" for n in args.frames)
        + " | peak RSS MB |"
    )
    print("|---|---|---|" + "---|" * len(args.frames) + "---|")
    for model in args.models:
        for dtype in args.dtypes:
            cmd = [sys.executable, __file__, "--child", model, dtype, "--frames", *map(str, args.frames)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {model} | {dtype} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            cells = " | ".join(f"{s:.1f} ({s / int(n):.2f})" for n, s in r["seconds"].items())
            print(f"| {model} | {dtype} | {r['params'] / 1e9:.2f} B | {cells} | {r['peak_rss_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
