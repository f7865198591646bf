"""Everything `recon eval` computes for one run folder: the trajectory paired with its ground truth and measured,
depth and point map against ground-truth depth, the plots; OUT/metrics.json holds the result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from recon.eval.depth import ScaleMode

from recon.eval.geometry_inputs import GeometryInputs, load_geometry_inputs
from recon.eval.geometry_metrics import depth_metrics, pointmap_metrics
from recon.eval.pairing import pair_trajectories
from recon.eval.run_plots import write_plots
from recon.eval.trajectory_metrics import trajectory_metrics
from recon.outputs import atomic_write_json
from recon.summary import METRICS_FILE, RunSummary


def evaluate_run(
    run_dir: Path,
    gt_path: Path | None = None,
    gt_format: str | None = None,
    depth_align: str = "sequence",
    max_depth: float | None = None,
    depth_samples: int = 50,
    geometry: bool = True,
    plots: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Everything `recon eval` computes; writes OUT/metrics.json (and plots). Returns the metrics."""
    run_dir = Path(run_dir)
    summary = RunSummary.read(run_dir)
    metric = summary.metric
    pair = pair_trajectories(run_dir, gt_path, gt_format)
    gt_metric = gt_path is None and bool(summary.ground_truth_metric)  # a --gt file's units are not known
    traj, ate = trajectory_metrics(pair, metric, gt_metric)
    metrics: dict[str, Any] = {
        "run_dir": str(run_dir),
        "status": summary.status,
        "ground_truth": pair.label,
        "trajectory": traj,
    }
    g: GeometryInputs | None = None
    depth_ev = None
    if geometry:
        say("reading ground-truth depth ...")
        loaded = load_geometry_inputs(run_dir, summary, depth_samples)
        if isinstance(loaded, str):
            metrics["depth_skipped"] = metrics["pointmap_skipped"] = loaded
        else:
            g = loaded
            metrics["depth"], depth_ev = depth_metrics(
                g, "none" if metric and depth_align == "sequence" else cast("ScaleMode", depth_align), max_depth
            )
            say("point map: aligning to ground truth (ICP) ...")
            pm = pointmap_metrics(run_dir, g, metric)
            if isinstance(pm, str):
                metrics["pointmap_skipped"] = pm
            else:
                metrics["pointmap"] = pm
    if plots:
        unit = "m" if gt_metric else "gt units"
        metrics["plots"] = [str(p.relative_to(run_dir)) for p in write_plots(run_dir, pair, ate, g, depth_ev, unit)]
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def import_libraries() -> None:
    """The native libraries an evaluation imports where it needs them, imported now: a caller holds signals
    back meanwhile (recon.signals.signals_deferred), as one raised halfway through such an import can abort."""
    import cv2  # noqa: F401
    import open3d  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401
