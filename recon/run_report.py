"""What `recon run` prints when it has finished: the run's report, its evaluation against ground truth when the
source has one, and the --export it was asked for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from recon.errors import ReconError
from recon.signals import signals_deferred
from recon.summary import RunSummary

if TYPE_CHECKING:
    import numpy as np

    from recon.config import RunConfig
    from recon.datasets.base import FrameSource
    from recon.summary import RunState


def report(config: RunConfig, source: FrameSource, out: Path, state: RunState) -> None:
    """The run's report, its evaluation against ground truth and its export. Every file is written before
    anything is printed: a closed stdout (`recon run ... | head`) costs the report only."""
    from recon.datasets import source_notes
    from recon.summary import unplaced_frames_notes

    metrics = evaluate(out) if source.has_ground_truth and state.frames_written >= 3 else None
    for warning in [*state.warnings, *source_notes(source), *unplaced_frames_notes(state)]:
        print(f"recon: warning: {warning}", file=sys.stderr)
    print(
        f"{state.frames_read} frames ({state.frames_skipped} without motion skipped), {state.windows} windows -> {out}/"
    )
    print(f"  {pace_line(out)}")
    print(f"  {', '.join(written_outputs(out, state))}")
    print(f"  {intrinsics_line(source, config.model.name, state.model_K)}")
    if metrics is not None:
        report_metrics(out, metrics)
    if (fmt := config.outputs.export) is not None and state.frames_written > 0:
        from recon.export import export_run

        with signals_deferred():
            import pycolmap  # noqa: F401
        scene = export_run(out, out / fmt, fmt, overwrite=True)
        print(f"  {fmt}: {len(scene.views)} images, poses and {len(scene.xyz)} points -> {out}/{fmt}/")


def pace_line(out: Path) -> str:
    """Elapsed time, frames/s and peak memory, as summary.json keeps them."""
    s = RunSummary.read(out)
    return f"{s.elapsed_s:.1f} s, {s.fps:.2f} frames/s, peak memory {s.peak_rss_mb:.0f} MB"


def intrinsics_line(source: FrameSource, model: str, model_K: np.ndarray | None) -> str:
    """Where K came from and its values (summary.json keeps the same)."""
    from recon.datasets import intrinsics_origin

    origin = intrinsics_origin(source)
    K = source.intrinsics if origin is not None else model_K
    values = f": fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} cx {K[0, 2]:.1f} cy {K[1, 2]:.1f}" if K is not None else ""
    if origin is None:
        return f"intrinsics estimated by the {model} model{values} (none given: pass --calib FILE or --intrinsics fx,fy,cx,cy)"
    return f"intrinsics from {origin}{values}"


def written_outputs(out: Path, state: RunState) -> list[str]:
    """The summary line's files: the ones the run wrote, never one it did not (an empty map writes no map.ply)."""
    listed = [f"trajectory.tum, trajectory.kitti ({state.frames_written} poses)"]
    if (out / "map.ply").is_file():  # the folder holds this run's files only (Pipeline.run)
        listed.append(f"map.ply ({state.map_ply_points} points)")
    return [*listed, "summary.json"]


def evaluate(out: Path) -> dict | None:
    """The run measured against its source's ground truth (`recon eval OUT` does the same later). A failure
    here costs the metrics, never the run's outputs."""
    from recon.eval.run_eval import evaluate_run, import_libraries

    with signals_deferred():
        import_libraries()
    try:
        return evaluate_run(out)
    except ReconError as e:
        print(f"recon: warning: evaluation skipped: {e}", file=sys.stderr)
        return None


def report_metrics(out: Path, metrics: dict) -> None:
    from recon.eval.table import format_table
    from recon.outputs import PLOTS_DIR

    print("vs ground truth:")
    print(format_table(metrics))
    print(f"  -> {out}/metrics.json, {out}/{PLOTS_DIR}/*.png")
