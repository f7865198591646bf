"""Synthetic renderer speed on ONE thread: frames/s per scene and where the time goes.

    .venv/bin/python bench/bench_render.py [--frames 60] [--warmup 5]

Prints numbers, asserts nothing. Wall-clock frames/s is what a user sees; CPU frames/s (process time)
is steadier on a shared machine. The stages: scene (pick the route segments' primitives near the
camera, lay out new segments), raycast (cull, project, z-buffer), ground (road classification), surface
(per-pixel uv, normals, footprints), texture (mip-mapped atlas sampling), shade (light, markings, sky)."""

from __future__ import annotations

import argparse
import time

import cv2
import torch

from recon.datasets.synthetic import SyntheticSource

STAGES = ("scene", "raycast", "ground", "surface", "texture", "shade", "effects")


def bench(scene: str, width: int, height: int, frames: int, warmup: int, start: int) -> None:
    src = SyntheticSource(scene, num_frames=start + warmup + frames, width=width, height=height)
    t0 = time.perf_counter()
    src.render_frame(start)  # builds the texture atlas
    setup_s = time.perf_counter() - t0
    for i in range(start + 1, start + warmup):
        src.render_frame(i)
    src.timings.clear()
    src.counters.clear()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(start + warmup, start + warmup + frames):
        src.render_frame(i)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        f"{scene:6s} {width}x{height}: {frames / wall:6.1f} frames/s wall ({1e3 * wall / frames:5.1f} ms/frame), "
        f"{frames / cpu:6.1f} frames/s CPU; first frame incl. textures {setup_s:.2f} s"
    )
    total = sum(src.timings.values())
    for stage in STAGES:
        if stage in src.timings:
            ms = 1e3 * src.timings[stage] / frames
            print(f"    {stage:8s} {ms:6.2f} ms/frame  {100 * src.timings[stage] / total:5.1f} %")
    c = {k: v / frames for k, v in src.counters.items()}
    print(
        f"    primitives per frame: {c.get('candidates', 0):.0f} near the camera, {c.get('in_view', 0):.0f} in view, "
        f"{c.get('occluded', 0):.0f} skipped as hidden"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"synthetic renderer, 1 thread, {args.frames} frames per scene after {args.warmup} warm-up frames")
    bench("street", 640, 192, args.frames, args.warmup, start=100)
    bench("room", 640, 480, args.frames, args.warmup, start=0)


if __name__ == "__main__":
    main()
