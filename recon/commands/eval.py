"""`recon eval OUT_DIR`: measure a finished (or interrupted) run against ground truth.

Ground truth comes from, in order: `--gt FILE` (KITTI poses matched to the run's frames through
OUT/frames.txt, or TUM matched by timestamp); else OUT/ground_truth.kitti, which the run wrote for the same
frames. Depth and point-map accuracy need ground-truth depth: the source recorded in summary.json is
reopened and the frames whose depth the run kept (OUT/depth/) are read back.

Prints a table, writes OUT/metrics.json and PNG plots (OUT/plots/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recon.errors import ReconError
from recon.eval.depth import SCALE_MODES
from recon.eval.run_eval import evaluate_run, import_libraries
from recon.eval.table import format_table
from recon.outputs import PLOTS_DIR, run_lock
from recon.signals import signals_deferred
from recon.summary import RunSummary

help = "measure a run's trajectory and geometry against ground truth"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="output directory of `recon run`")
    p.add_argument("--gt", help="ground-truth trajectory file (default: the run's ground_truth.kitti)")
    p.add_argument("--format", choices=["kitti", "tum"], help="format of --gt (default: from its first line)")
    p.add_argument(
        "--depth-align",
        choices=SCALE_MODES,
        default="sequence",
        help="scale the depth onto ground truth once per sequence (default), per frame, or not (metric runs)",
    )
    p.add_argument(
        "--max-depth", type=float, default=None, help="evaluate depth only up to this ground-truth depth (metres)"
    )
    p.add_argument(
        "--depth-samples",
        type=int,
        default=50,
        help="evaluate at most N of the run's kept depth frames, evenly spread (default 50)",
    )
    p.add_argument("--no-geometry", action="store_true", help="trajectory metrics only (skip depth and point map)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")


def main(args: argparse.Namespace) -> int:
    if args.depth_samples < 1:
        raise ReconError(f"--depth-samples must be >= 1, got {args.depth_samples}")
    if args.max_depth is not None and not args.max_depth > 0:
        raise ReconError(f"--max-depth must be > 0, got {args.max_depth}")
    if args.format is not None and args.gt is None:
        raise ReconError("--format describes --gt FILE; pass --gt too")
    run_dir = Path(args.run_dir)
    RunSummary.read(run_dir)  # a folder a run wrote, before anything is written into it
    with signals_deferred():
        import_libraries()
    # A run still writing there would change the trajectory under the evaluation, and two evaluations would
    # interleave metrics.json and the plots.
    with run_lock(run_dir, advice="evaluate it when the run has ended"):
        metrics = evaluate_run(
            run_dir,
            Path(args.gt) if args.gt else None,
            args.format,
            args.depth_align,
            args.max_depth,
            args.depth_samples,
            geometry=not args.no_geometry,
            plots=not args.no_plots,
            say=lambda m: print(f"recon eval: {m}", flush=True),
        )
    print(f"{run_dir}/ vs ground truth")
    print(format_table(metrics))
    print(f"  -> {run_dir}/metrics.json" + (f", {run_dir}/{PLOTS_DIR}/*.png" if not args.no_plots else ""))
    return 0
