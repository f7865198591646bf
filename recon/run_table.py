"""One row per run folder, read back from the files `recon run` wrote there (summary.json, metrics.json):
frames, frames/s, peak memory, and ATE, drift, rotation error and depth error where the source had ground
truth. `recon batch` writes its table with it, and bench/bench_matrix.py prints the same table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recon.errors import ReconError
from recon.summary import METRICS_FILE, RunSummary


@dataclass(frozen=True)
class RunRow:
    name: str
    status: str  # the run's own (finished, interrupted, failed, ...), or "failed" when it wrote no summary
    frames: int | None = None  # frames read
    fps: float | None = None  # frames/s of the pipeline (summary.json)
    peak_rss_mb: float | None = None
    ate_pct: float | None = None  # ATE RMSE, % of the path (after a Sim(3) alignment)
    drift_pct: float | None = None  # KITTI translational drift, % (100..800 m segments, or the path's own lengths)
    rpe_rot_deg: float | None = None  # rotation error per frame, RMSE
    depth_abs_rel: float | None = None
    error: str = ""  # why the run failed: its last error line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_run_row(name: str, run_dir: Path, error: str = "") -> RunRow:
    """The row of the run in `run_dir`; a failed row (with `error`, or why there is no run) when it wrote none."""
    try:
        summary = RunSummary.read(run_dir)
    except ReconError as e:
        return RunRow(name, "failed", error=error or str(e))
    metrics_path = Path(run_dir) / METRICS_FILE
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        metrics = {}
    trajectory = metrics.get("trajectory") or {}
    return RunRow(
        name,
        summary.status,
        summary.frames_read,
        summary.fps,
        summary.peak_rss_mb,
        _get(trajectory, "ate", "rmse_percent_of_path"),
        _get(trajectory, "kitti_drift", "translation_percent"),
        _get(trajectory, "rpe_frame", "rotation_deg", "rmse"),
        _get(metrics, "depth", "abs_rel"),
        error,
    )


def _get(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return float(d)  # type: ignore[arg-type]


def markdown_table(rows: list[RunRow]) -> str:
    """The rows as one markdown table (- where a value is unknown; a failed run says why in its status)."""
    lines = [
        "| run | status | frames | frames/s | peak RSS (MB) | ATE % of path | drift % | RPE rot (deg/frame) | depth AbsRel |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | {r.status}: {r.error.replace('|', '/')} | | | | | | | |")
            continue
        lines.append(
            f"| {r.name} | {r.status} | {_fmt(r.frames, 'd')} | {_fmt(r.fps, '.1f')} | {_fmt(r.peak_rss_mb, '.0f')} | "
            f"{_fmt(r.ate_pct, '.2f')} | {_fmt(r.drift_pct, '.2f')} | {_fmt(r.rpe_rot_deg, '.3f')} | "
            f"{_fmt(r.depth_abs_rel, '.3f')} |"
        )
    return "\n".join(lines)


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
