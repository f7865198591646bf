"""`recon run SOURCE`: the main job, from arguments to files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from recon.errors import ReconError


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="video file, image folder, KITTI sequence dir, TUM RGB-D dir, camera index, rtsp/http URL, or synthetic:street|room")
    p.add_argument("--source-kind", choices=["folder", "video", "stream", "kitti", "tum", "synthetic"], help="override source detection")
    p.add_argument("--model", default="classical", help="geometry model (default: classical, needs no weights)")
    p.add_argument("--window", type=int, default=20, help="frames per window (default 20)")
    p.add_argument("--overlap", type=int, default=5, help="frames shared by consecutive windows (default 5)")
    p.add_argument("--align", choices=["sim3", "lsa"], default="lsa", help="window alignment: one Sim(3), or Sim(3) + layer-wise scale (default)")
    p.add_argument("--voxel", type=float, default=None, help="map voxel size in run units (default: 1%% of the first window's median depth)")
    p.add_argument("--max-map-points", type=int, default=1_000_000, help="hard cap on map points (default 1,000,000)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--stride", type=int, default=1, help="use every K-th frame (default 1)")
    p.add_argument("--no-keyframes", action="store_true", help="keep every frame, even when the camera does not move")
    p.add_argument("--intrinsics", help="fx,fy,cx,cy in pixels of the input images (default: from the source, else estimated)")
    p.add_argument("--out", default="out", help="output directory (default: out)")


def _check(args: argparse.Namespace) -> None:
    if args.window < 2:
        raise ReconError(f"--window must be >= 2, got {args.window}")
    if not 1 <= args.overlap < args.window:
        raise ReconError(f"--overlap must be in [1, {args.window - 1}] for --window {args.window}, got {args.overlap}")
    if args.stride < 1:
        raise ReconError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ReconError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.voxel is not None and not args.voxel > 0:
        raise ReconError(f"--voxel must be > 0, got {args.voxel}")


def _intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
        raise ReconError(f"--intrinsics must be four numbers fx,fy,cx,cy, got {text!r}") from None
    return fx, fy, cx, cy


def run_command(args: argparse.Namespace) -> int:
    from recon.datasets import open_source
    from recon.datasets.base import length_hint
    from recon.models.base import create_model
    from recon.pipeline import Pipeline, PipelineConfig

    _check(args)
    options: dict = {"stride": args.stride, "max_frames": args.max_frames}
    if (K := _intrinsics(args.intrinsics)) is not None:
        options["intrinsics"] = K
    source = open_source(args.source, kind=args.source_kind, **options)
    model = create_model(args.model)
    config = PipelineConfig(window=args.window, overlap=args.overlap, align=args.align, voxel=args.voxel,
                            max_map_points=args.max_map_points, keyframes=not args.no_keyframes)
    bar = tqdm(total=length_hint(source), unit="frame", desc="recon", disable=None, dynamic_ncols=True)

    def progress(state, voxel_map) -> None:  # type: ignore[no-untyped-def]
        bar.update(state.frames_read - bar.n)
        bar.set_postfix(windows=state.windows, map=len(voxel_map) if voxel_map is not None else 0)

    out = Path(args.out)
    pipeline = Pipeline(source, model, out, config, on_window=progress)
    try:
        state = pipeline.run()
    except KeyboardInterrupt:
        bar.close()
        print(f"recon: interrupted; outputs up to the last finished window are in {out}/", file=sys.stderr)
        return 130
    bar.update(state.frames_read - bar.n)
    bar.close()
    print(f"{state.frames_read} frames ({state.frames_skipped} without motion skipped), {state.windows} windows -> {out}/")
    print(f"  trajectory.tum, trajectory.kitti ({state.frames_written} poses), map.ply ({state.map_ply_points} points), summary.json")
    if source.has_ground_truth and state.frames_written >= 3:
        report_ate(out)
    return 0


def report_ate(out: Path) -> None:
    from recon.eval.trajectory import absolute_trajectory_error
    from recon.trajectory_io import read_kitti

    est, gt = read_kitti(out / "trajectory.kitti"), read_kitti(out / "ground_truth.kitti")
    ate = absolute_trajectory_error(est, gt)
    print(f"  vs ground truth ({len(gt)} frames, path {ate.length:.1f} m): ATE RMSE after Sim(3) {ate.rmse:.3f} m "
          f"= {ate.rmse_percent_of_length:.2f}% of the path length")
