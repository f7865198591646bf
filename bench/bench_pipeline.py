"""The streaming pipeline on long synthetic drives (issue: streaming pipeline).

1. Accuracy: a 2,000-frame street drive with turns, classical model: ATE RMSE after Sim(3) as % of the
   trajectory length (target <= 1%).
2. Flat memory: peak RSS of a 4,000-frame run vs a 1,000-frame run (target ratio <= 1.1).
3. Overhead: share of wall time not spent in model.infer at default settings (target <= 10%).

Sequences are rendered once to bench/out/ in the KITTI layout and read back through the KITTI source, as a
user's data would be; each run is its own `recon run` process so peak RSS is per run.

Run: .venv/bin/python bench/bench_pipeline.py [--accuracy-frames 2000] [--memory-frames 1000 4000]"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from recon.eval.trajectory import absolute_trajectory_error
from recon.trajectory_io import read_kitti

OUT = Path(__file__).resolve().parent / "out"


def sequence(frames: int) -> Path:
    seq = OUT / f"street_{frames}" / "sequences" / "drive"
    if not (seq / "times.txt").exists() or len((seq / "times.txt").read_text().split()) != frames:
        import shutil

        from recon.datasets.synthetic import render_sequence

        shutil.rmtree(OUT / f"street_{frames}", ignore_errors=True)
        print(f"rendering {frames} frames ...", flush=True)
        render_sequence(OUT / f"street_{frames}", scene="street", name="drive", fmt="kitti", num_frames=frames, seed=5)
    return seq


def run(seq: Path, out: Path, *extra: str) -> tuple[dict, float]:
    t = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "recon",
        "run",
        str(seq),
        "--out",
        str(out),
        "--overwrite",
        *extra,
    ]  # the bench owns its folders
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accuracy-frames", type=int, default=2000)
    ap.add_argument("--memory-frames", type=int, nargs=2, default=[1000, 4000])
    ap.add_argument("--no-memory", action="store_true", help="skip the two memory runs")
    args = ap.parse_args()

    seq = sequence(args.accuracy_frames)
    summary, wall = run(seq, OUT / "run_accuracy")
    est, gt = (
        read_kitti(OUT / "run_accuracy" / "trajectory.kitti"),
        read_kitti(OUT / "run_accuracy" / "ground_truth.kitti"),
    )
    ate = absolute_trajectory_error(est, gt)
    t = summary["timings_s"]
    print(
        f"accuracy: {summary['frames_read']} frames, path {ate.length:.0f} m, {summary['windows']} windows: ATE RMSE {ate.rmse:.2f} m "
        f"= {ate.rmse_percent_of_length:.2f}% of the path (target <= 1%); max {ate.max:.2f} m"
    )
    print("  alignment paths: " + ", ".join(f"{p} {n}" for p, n in sorted(summary["alignment_paths"].items())))
    print(
        f"overhead: wall {summary['elapsed_s']:.1f} s, model.infer {t['infer']:.1f} s -> all but the model "
        f"{100 * (1 - t['infer'] / summary['elapsed_s']):.1f}% of wall time (target <= 10%); "
        f"{summary['fps']:.1f} frames/s; consumer thread (in parallel): align {t['align']:.1f} s, fuse {t['fuse']:.1f} s, write {t['write']:.1f} s; read {t['read']:.1f} s"
    )

    if args.no_memory:
        return
    rss = {}
    for n in args.memory_frames:
        s, _ = run(sequence(n), OUT / f"run_mem_{n}")
        rss[n] = s["peak_rss_mb"]
        print(f"memory: {n} frames -> peak RSS {rss[n]:.0f} MB, map {s['map_points']} points", flush=True)
    a, b = args.memory_frames
    print(f"flat memory: peak RSS {b} frames / {a} frames = {rss[b] / rss[a]:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
