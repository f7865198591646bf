"""Speed and memory of the bounded voxel map (issue: the global map).

A camera flies down an endless textured corridor (floor, ceiling, two walls, depth noise, depth-dependent
confidence). Each window is 16 frames of 640x192 points in the world frame; windows advance 12 frames
(4 overlap, as the scheduler feeds them). Prints ms per window (fusion only; the synthetic points are
made outside the timer), the ratio against the dict-based reference on one full window, and the map
size, stored bytes, peak bytes (map + one window's voxels) and process RSS at 10 / 100 / 1000 windows.

Run: .venv/bin/python bench/bench_fusion.py [--windows 1000] [--cap 1000000] [--voxel 0.05] [--device cpu]"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon.fusion import VoxelMap

# The plain references that define the kernels' arithmetic live with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.voxel_reference import ReferenceVoxels

CHECKPOINTS = (10, 100, 1000, 10_000)


@dataclass(frozen=True)
class Corridor:
    """Axis-aligned corridor along +z: walls at x = ±half_width, floor/ceiling at y = ±half_height
    (OpenCV axes: y down, so the floor is +y). The camera looks down +z and moves `step_m` per frame."""

    half_width: float = 2.0
    half_height: float = 1.5
    max_depth_m: float = 20.0
    noise_rel: float = 0.01  # depth noise as a fraction of the range (1 cm at 1 m, 20 cm at 20 m)
    step_m: float = 0.1
    W: int = 640
    H: int = 192
    focal_px: float = 300.0

    def rays_points_cam(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame's points in the camera frame [H*W,3] and its ranges [H*W] (the corridor is
        invariant along z, so every frame sees the same camera-frame geometry)."""
        v, u = torch.meshgrid(
            torch.arange(self.H, dtype=torch.float32), torch.arange(self.W, dtype=torch.float32), indexing="ij"
        )
        d = torch.stack(
            [(u - (self.W - 1) / 2) / self.focal_px, (v - (self.H - 1) / 2) / self.focal_px, torch.ones_like(u)], -1
        ).reshape(-1, 3)
        t_x = self.half_width / d[:, 0].abs().clamp_min(1e-9)
        t_y = self.half_height / d[:, 1].abs().clamp_min(1e-9)
        t = torch.minimum(torch.minimum(t_x, t_y), torch.full_like(t_x, self.max_depth_m))
        return d * t[:, None], t

    def window(self, first_frame: int, frames: int, base: torch.Tensor, depth: torch.Tensor, gen: torch.Generator):
        """points [S*H*W,3] world, colors uint8, conf, and the last camera centre."""
        S = frames
        z0 = torch.arange(first_frame, first_frame + S, dtype=torch.float32) * self.step_m  # [S]
        scale = 1 + torch.randn(S, base.shape[0], 1, generator=gen) * self.noise_rel
        p = base[None] * scale  # noise along the ray, like a depth error
        p[..., 2] += z0[:, None]
        p = p.reshape(-1, 3)
        # texture: 0.5 m checker, so colours differ across voxels but are stable for each one
        checker = (torch.floor(p * 2).to(torch.int64).sum(1) % 2).to(torch.uint8)
        colors = torch.stack([60 + 150 * checker, 90 + 0 * checker, 200 - 120 * checker], 1).to(torch.uint8)
        conf = (1.0 / (1.0 + 0.2 * depth)).repeat(S)
        conf[depth.repeat(S) >= self.max_depth_m] = 0.0  # far-wall stand-in: the model would not trust it
        centre = torch.tensor([0.0, 0.0, float(z0[-1])])
        return p, colors, conf, centre


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=1000)
    ap.add_argument("--cap", type=int, default=1_000_000)
    ap.add_argument("--voxel", type=float, default=0.05)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow, ~10 s) reference window")
    args = ap.parse_args()

    scene = Corridor()
    base, depth = scene.rays_points_cam()
    gen = torch.Generator().manual_seed(0)
    m = VoxelMap(voxel_m=args.voxel, max_points=args.cap, device=args.device)
    print(
        f"fusion bench: {args.frames}x{scene.W}x{scene.H} points/window, voxel {args.voxel} m, cap {args.cap:,} voxels, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )

    if not args.no_reference:
        p, c, w, centre = scene.window(0, args.frames, base, depth, gen)
        keep = w > 0
        m_ref = VoxelMap(voxel_m=args.voxel, max_points=args.cap, device=args.device)
        m_ref.integrate(p, c, w, centre)  # warm-up
        t0 = time.perf_counter()
        m_ref.integrate(p, c, w, centre)
        t_kernel = time.perf_counter() - t0
        ref = ReferenceVoxels(args.voxel)
        t0 = time.perf_counter()
        ref.integrate(p[keep].numpy(), c[keep].numpy(), w[keep].numpy())
        t_ref = time.perf_counter() - t0
        print(
            f"reference (dict, per point) {t_ref * 1e3:.0f} ms/window vs kernel {t_kernel * 1e3:.0f} ms: x{t_ref / t_kernel:.0f}"
        )
        del m_ref, ref

    step = args.frames - args.overlap
    times: list[float] = []
    cpu_times: list[float] = []
    print(
        f"{'windows':>8} {'ms/window':>10} {'p90 ms':>7} {'CPU ms':>7} {'voxels':>10} {'MB map':>8} {'MB peak':>8} {'RSS MB':>8} {'evicted':>9}"
    )
    for i in range(args.windows):
        p, c, w, centre = scene.window(i * step, args.frames, base, depth, gen)
        if args.device != "cpu":
            torch.cuda.synchronize()
        cpu0 = time.process_time()
        stats = m.integrate(p, c, w, centre)
        if args.device != "cpu":
            torch.cuda.synchronize()
        cpu_times.append(time.process_time() - cpu0)
        times.append(stats.seconds)
        if i + 1 in CHECKPOINTS or i + 1 == args.windows:
            recent = np.array(times[-min(len(times), 50) :]) * 1e3  # the last 50 windows
            cpu = np.mean(cpu_times[-min(len(times), 50) :]) * 1e3
            print(
                f"{i + 1:>8} {recent.mean():>10.0f} {np.percentile(recent, 90):>7.0f} {cpu:>7.0f} {stats.size:>10,} "
                f"{stats.bytes / 2**20:>8.1f} {stats.peak_bytes / 2**20:>8.1f} {rss_mb():>8.0f} {stats.voxels_evicted:>9,}"
            )

    with tempfile.TemporaryDirectory() as tmp:
        for outlier_removal in (False, True):
            t0 = time.perf_counter()
            n = m.export_ply(os.path.join(tmp, "map.ply"), outlier_removal=outlier_removal)
            size_mb = os.path.getsize(os.path.join(tmp, "map.ply")) / 2**20
            print(
                f"export_ply(outlier_removal={outlier_removal}): {n:,} points, {size_mb:.1f} MB, "
                f"{time.perf_counter() - t0:.2f} s (incl. the Open3D import the first time)"
            )


if __name__ == "__main__":
    main()
