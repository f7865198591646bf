"""`recon run --workers N` (issue 17) on this machine: wall time with 1 and 2 Ray workers (ratio), against the
local run, with the driver's peak memory and the trajectory's ATE; and the share of the run the driver does
in sequence (reading, the core's joins, graph and map, the files), which bounds what more workers can give.

Sequence: bench_speed's 640x192 drive (300 frames, rendered once). Each run is its own `recon run` process;
figures come from its summary.json (peak RSS is the driver's: the workers are other processes) and
metrics.json.

Run: .venv/bin/python bench/bench_workers.py"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_speed


def run(seq: Path, out: Path, workers: int | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "recon", "run", str(seq), "--out", str(out)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process_s = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    # What the driver does in sequence, window after window on one thread: the core (joins, graph, places, map;
    # its thread's CPU seconds) and writing the files. Reading runs beside it, on its own thread.
    sequential_s = sum(summary["back_end_cpu_s"].values()) + summary["timings_s"]["write"]
    return {
        "process_s": process_s,
        "pipeline_s": summary["elapsed_s"],
        "windows": summary["windows"],
        "fps": summary["fps"],
        "rss": summary["peak_rss_mb"],
        "ate_pct": metrics["trajectory"]["ate"]["rmse_percent_of_path"],
        "sequential_pct": 100 * sequential_s / summary["elapsed_s"],
        "sequential_per_window_s": sequential_s / summary["windows"],
    }


def main() -> None:
    seq = bench_speed.sequences()["drive"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers in (("local", None), ("--workers 1", 1), ("--workers 2", 2)):
            print(f"{label} ...", flush=True)
            rows[label] = run(seq, Path(tmp) / label.replace(" ", "_"), workers)
    print(
        "\n| run | process wall s | pipeline s | frames/s | driver peak RSS MB | ATE % of path "
        "| driver in sequence: % of the run, s a window |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(
            f"| {label} | {r['process_s']:.1f} | {r['pipeline_s']:.1f} | {r['fps']:.2f} | {r['rss']:.0f} | "
            f"{r['ate_pct']:.3f} | {r['sequential_pct']:.1f}, {r['sequential_per_window_s']:.3f} |"
        )
    w1, w2, local = rows["--workers 1"], rows["--workers 2"], rows["local"]
    print(f"\nwall time --workers 1 / --workers 2: {w1['pipeline_s'] / w2['pipeline_s']:.2f}x (pipeline)")
    print(f"driver peak RSS --workers 2 / local: {w2['rss'] / local['rss']:.2f} (target <= 1.2)")
    print(f"ATE --workers 2 vs local: {100 * (w2['ate_pct'] / local['ate_pct'] - 1):+.2f}% relative (target within 1%)")


if __name__ == "__main__":
    main()
