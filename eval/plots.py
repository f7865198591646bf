"""PNG plots of an evaluation. Figures are built with matplotlib's object API on the Agg canvas (no
pyplot: no global figure state, no display needed); each function writes one file atomically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recon.outputs import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def ground_plane_axes(gt_world_from_cam: np.ndarray) -> tuple[int, int]:
    """The two world axes of a top view: all but the one nearest the cameras' mean up (-y, OpenCV axes). A
    camera-style world (KITTI: y down) gives x-z, a z-up world (TUM) x-y, whatever the path; the axes the
    path spreads over most would show a straight drive from the side."""
    up = -np.asarray(gt_world_from_cam)[:, :3, 1].mean(axis=0) if len(gt_world_from_cam) else np.array([0.0, -1.0, 0.0])
    a, b = (k for k in range(3) if k != int(np.argmax(np.abs(up))))
    return a, b


def plot_trajectory_top_view(
    est_xyz: np.ndarray, gt_world_from_cam: np.ndarray, path: Path, title: str = "", unit: str = "m"
) -> Path:
    """Estimated camera centres (already aligned to ground truth) [N,3] beside the ground truth's [N,4,4]."""
    gt_xyz = np.asarray(gt_world_from_cam)[:, :3, 3]
    a, b = ground_plane_axes(gt_world_from_cam)
    fig = _figure(6.5, 6.0)
    ax = fig.add_subplot()
    ax.plot(gt_xyz[:, a], gt_xyz[:, b], "-", color="0.35", lw=2.0, label="ground truth")
    ax.plot(est_xyz[:, a], est_xyz[:, b], "-", color="tab:red", lw=1.2, label="estimate (aligned)")
    ax.plot(gt_xyz[:1, a], gt_xyz[:1, b], "o", color="0.2", ms=6, label="start")
    ax.set_xlabel(f"{'xyz'[a]} ({unit})")
    ax.set_ylabel(f"{'xyz'[b]} ({unit})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or "trajectory, top view")
    return _save(fig, path)


def plot_error_over_time(
    time_s: np.ndarray,
    series: dict[str, np.ndarray],
    path: Path,
    ylabel: str,
    title: str = "",
    joins_s: Sequence[float] = (),
    fallbacks_s: Sequence[tuple[float, float]] = (),
) -> Path:
    """One line per named error series over capture time; window joins as thin vertical lines and windows whose
    join fell back to the overlap poses (no usable shared geometry) as shaded spans."""
    fig = _figure(8.0, 3.5)
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(time_s[: len(values)], values, lw=1.0, label=name)
    for k, t in enumerate(joins_s):
        ax.axvline(t, color="0.6", lw=0.5, ls=":", label="window join" if k == 0 else None)
    for k, (t0, t1) in enumerate(fallbacks_s):
        ax.axvspan(
            t0, t1, color="tab:red", alpha=0.15, lw=0, label="fallback window (pose-only join)" if k == 0 else None
        )
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1 or len(joins_s) or len(fallbacks_s):
        ax.legend(loc="best", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


@dataclass(frozen=True)
class DepthPanel:
    frame_index: int
    image_rgb: np.ndarray | None  # [H,W,3] uint8
    depth_pred: np.ndarray  # [H,W] scale-aligned to ground truth, 0 = none
    depth_gt: np.ndarray  # [H,W] metres, 0 = invalid
    rel_error: np.ndarray  # [H,W] |pred - gt| / gt, NaN where not evaluated


def plot_depth_samples(
    panels: Sequence[DepthPanel], path: Path, max_rel_error: float = 0.25, depth_unit: str = "m"
) -> Path:
    """A row per sampled frame: image, predicted depth, ground-truth depth, relative error."""
    rows = max(len(panels), 1)
    first = panels[0].depth_gt.shape if panels else (1, 1)
    aspect = first[1] / max(first[0], 1)
    fig = _figure(min(16.0, 4 * 2.6 * aspect / 1.2 + 1.0), 2.6 * rows)
    for r, p in enumerate(panels):
        valid = p.depth_gt > 0
        vmax = float(np.percentile(p.depth_gt[valid], 95)) if valid.any() else 1.0
        cells = [
            ("image", p.image_rgb, None),
            ("depth (aligned)", np.where(p.depth_pred > 0, p.depth_pred, np.nan), ("turbo_r", 0.0, vmax)),
            ("ground truth", np.where(valid, p.depth_gt, np.nan), ("turbo_r", 0.0, vmax)),
            (f"rel. error (0..{max_rel_error:g})", p.rel_error, ("magma", 0.0, max_rel_error)),
        ]
        for c, (name, data, cmap) in enumerate(cells):
            ax = fig.add_subplot(rows, 4, 4 * r + c + 1)
            ax.set_axis_off()
            ax.set_title(f"frame {p.frame_index}: {name}" if c == 0 else name, fontsize=8)
            if data is None:
                continue
            if cmap is None:
                ax.imshow(data)
            else:
                im = ax.imshow(data, cmap=cmap[0], vmin=cmap[1], vmax=cmap[2])
                if c >= 2:  # the predicted and true depth share one scale: one bar for both
                    fig.colorbar(im, ax=ax, shrink=0.8).set_label(
                        f"depth ({depth_unit})" if c == 2 else "|pred - gt| / gt", fontsize=7
                    )
    return _save(fig, path)
