"""What a run did (ARCHITECTURE §2): `RunState`, the progress the driver keeps, and `RunSummary`, the record
written as OUT/summary.json after every window and read back by `recon eval`, `recon export` and the benches
(`RunSummary.read`). Also the lines that say why a run reconstructed nothing, or not everything."""

from __future__ import annotations

import dataclasses
import json
import resource
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.datasets.base import source_notes
from recon.errors import ReconError
from recon.types import FLAG_LOW_PARALLAX, FLAG_TOO_FEW_TRACKS

if TYPE_CHECKING:
    from recon.core import Reconstruction
    from recon.datasets.base import FrameSource

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"  # what the self-evaluation (`recon eval`) writes beside it
ALIGNMENT_LOG_WINDOWS = 200
NOT_A_RUN = "'{run_dir}' is not a recon output folder (no summary.json); pass the --out folder of `recon run`"


@dataclass
class RunState:
    """What the run has done so far; becomes summary.json."""

    frames_read: int = 0
    frames_used: int = 0
    frames_skipped: int = 0
    frames_written: int = 0
    windows: int = 0
    map_ply_points: int = 0
    status: str = "running"
    timings_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("read", "infer", "align", "fuse", "write"), 0.0)
    )
    # The most recent windows' alignment (a bounded log: summary.json is rewritten every window), and the
    # count of every path taken over the whole run.
    alignment: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ALIGNMENT_LOG_WINDOWS))
    alignment_paths: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    skipped_windows: list[dict[str, Any]] = field(default_factory=list)  # predictions with NaN/inf, not fused
    frames_unregistered: int = 0  # trajectory frames no window could place (placeholder poses)
    loops: list[dict[str, Any]] = field(default_factory=list)  # loop closures (window, matched window, inliers)
    trajectory_rewrites: int = 0
    warnings: list[str] = field(default_factory=list)  # what the run could not do (e.g. no map), said at its end
    model_K: np.ndarray | None = None  # [3,3] the first window's first frame, source pixels: what the model used


def nothing_reconstructed(st: RunState, stride: int, images_skipped: int, points_off_grid: int = 0) -> str | None:
    """Why a finished run reconstructed nothing (not one frame placed, or not one 3D point), in a line that
    says what to change; None when it reconstructed something. `stride` and `images_skipped` (unreadable or
    odd-sized files) explain where the frames went; points that fell off the voxel grid were found all the
    same (a --voxel too small for a map is a warning, not an empty run)."""
    if st.frames_written - st.frames_unregistered > 0 and st.map_ply_points + points_off_grid > 0:
        return None
    read = f"{st.frames_read} frame{'s' if st.frames_read != 1 else ''} read"
    if st.frames_read == 0:
        return "the source gave no frames; nothing to reconstruct"
    if st.frames_used < 2 and st.frames_skipped:
        return (
            f"no motion: the camera did not move in the {read} (all after the first were skipped as without motion); "
            "nothing to reconstruct"
        )
    if st.frames_used < 2:
        why = [f"--stride {stride} keeps one frame in {stride}"] if stride > 1 else []
        why += [f"{images_skipped} unreadable or odd-sized images were skipped"] if images_skipped else []
        return (
            f"too few frames: {read}{' (' + '; '.join(why) + ')' if why else ''}; a reconstruction needs at least 2 frames "
            "of a moving camera"
        )
    used = f"the {st.frames_used} frames used"
    if st.flags.get(FLAG_TOO_FEW_TRACKS):
        return (
            f"no texture: the model found too few points to track in {used}, so none could be placed (blank, dark or "
            "blurred images, or images too small)"
        )
    if st.flags.get(FLAG_LOW_PARALLAX):
        return (
            f"no motion: the camera barely moved or only turned across {used}: too little parallax to find depth, "
            "so no 3D point; move the camera sideways or forward"
        )
    if st.skipped_windows:
        return f"nothing reconstructed from {used}: the model's predictions were not finite (NaN/inf)"
    return f"nothing reconstructed from {used}: no frame could be placed and no 3D point was found"


def unplaced_frames_notes(st: RunState) -> list[str]:
    """The part of a run that reconstructed something but not everything, one line (or none): frames no
    window could place (the core gives each its nearest placed neighbour's pose, not a measured one)."""
    if not st.frames_unregistered:
        return []
    return [
        f"{st.frames_unregistered} of the {st.frames_written} frames in the trajectory could not be placed (too little texture "
        "or motion there): each holds its nearest placed neighbour's pose (summary.json: frames_unregistered)"
    ]


@dataclass(frozen=True)
class RunSummary:
    """OUT/summary.json, one field per key, in the file's order. A summary written by an older recon may lack
    keys: they read as the defaults."""

    status: str = "running"  # running | finished | interrupted | failed
    source: str = ""
    input: dict[str, Any] | None = None  # how the source was opened: {"source", "kind", options}, to reopen it
    model: str = ""
    model_settings: dict[str, Any] = field(default_factory=dict)  # learned: weights (file, bytes, sha256), dtype, ...
    frames_read: int = 0
    frames_used: int = 0
    frames_skipped_no_motion: int = 0
    frames_in_trajectory: int = 0
    windows: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0  # frames read per second of the run
    peak_rss_mb: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)  # read, infer, align, fuse, write
    map_points: int = 0
    map_ply_points: int = 0
    map_voxel: float | None = None  # run units
    frames_unregistered: int = 0
    registration: str = ""
    back_end_s: dict[str, float] = field(default_factory=dict)  # the core: join, graph, places, map (wall)
    back_end_cpu_s: dict[str, float] = field(default_factory=dict)  # the same stages, the core thread's CPU time
    breaks: list[int] = field(default_factory=list)  # windows joined across a break in the stream
    loops: list[dict[str, Any]] = field(default_factory=list)
    loop_closures: int = 0
    trajectory_rewrites: int = 0
    place_database_bytes: int = 0
    place_recognition: dict[str, Any] | None = None
    scale: dict[str, Any] = field(default_factory=dict)  # {"metric": bool, "note": the model's convention}
    ground_truth_metric: bool | None = None  # None: the source has no ground truth
    intrinsics: dict[str, Any] = field(default_factory=dict)  # origin, K (source pixels), distortion, K_model
    settings: dict[str, Any] = field(default_factory=dict)  # the pipeline's configuration
    model_flags: dict[str, int] = field(default_factory=dict)
    skipped_windows: list[dict[str, Any]] = field(default_factory=list)  # predictions with NaN/inf
    source_notes: list[str] = field(default_factory=list)  # what the source skipped or survived
    warnings: list[str] = field(default_factory=list)
    alignment_paths: dict[str, int] = field(default_factory=dict)  # windows per join path, whole run
    alignment: list[dict[str, Any]] = field(default_factory=list)  # the last ALIGNMENT_LOG_WINDOWS joins (briefs)

    @property
    def metric(self) -> bool:
        """The run's units are metres."""
        return bool(self.scale.get("metric", False))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, run_dir: Path, not_a_run: str = NOT_A_RUN) -> RunSummary:
        """The summary of the run in `run_dir`; a one-line error when there is none (`not_a_run`, worded by the
        command with {run_dir}) or it cannot be read."""
        path = Path(run_dir) / SUMMARY_FILE
        if not path.is_file():
            raise ReconError(not_a_run.format(run_dir=run_dir))
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReconError(
                f"{path}: unreadable ({e}); the run may have been killed before its first window"
            ) from None
        if not isinstance(data, dict):
            raise ReconError(f"{path}: not a recon summary; the run may have been killed before its first window")
        return cls.from_json(data)


def summarise(
    st: RunState,
    core: Reconstruction,
    source: FrameSource,
    model: object,
    registration: str,
    settings: dict[str, Any],
    input_spec: dict[str, Any] | None,
    elapsed_s: float,
) -> RunSummary:
    """The run so far as summary.json records it: the driver's counts, the core's map, graph and loops, the
    source's and the model's own notes."""
    return RunSummary(
        status=st.status,
        source=getattr(source, "name", str(source)),
        input=input_spec,
        model=getattr(model, "name", type(model).__name__),
        model_settings=dict(getattr(model, "settings", {})),
        frames_read=st.frames_read,
        frames_used=st.frames_used,
        frames_skipped_no_motion=st.frames_skipped,
        frames_in_trajectory=st.frames_written,
        windows=st.windows,
        elapsed_s=elapsed_s,
        fps=st.frames_read / elapsed_s if elapsed_s > 0 else 0.0,
        peak_rss_mb=peak_rss_mb(),
        timings_s=st.timings_s,
        map_points=len(core.map) if core.map is not None else 0,
        map_ply_points=st.map_ply_points,
        map_voxel=core.map.voxel_m if core.map is not None else None,
        frames_unregistered=st.frames_unregistered,
        registration=registration,
        back_end_s=dict(core.clock.wall_s),
        back_end_cpu_s=dict(core.clock.cpu_s),
        breaks=core.breaks[-ALIGNMENT_LOG_WINDOWS:],
        loops=st.loops[-ALIGNMENT_LOG_WINDOWS:],
        loop_closures=len(st.loops),
        trajectory_rewrites=st.trajectory_rewrites,
        place_database_bytes=core.loop_closer.places.nbytes if core.loop_closer is not None else 0,
        place_recognition=core.loop_closer.summary() if core.loop_closer is not None else None,
        scale=scale_note(model, source),
        ground_truth_metric=bool(getattr(source, "metric", False)) if source.has_ground_truth else None,
        intrinsics=intrinsics_report(source, model, st.model_K),
        settings=settings,
        model_flags=st.flags,
        skipped_windows=st.skipped_windows,
        source_notes=source_notes(source),
        warnings=st.warnings,
        alignment_paths=st.alignment_paths,
        alignment=list(st.alignment),
    )


def scale_note(model: object, source: object) -> dict[str, Any]:
    """The run's units as the model states them (`metric`, `scale_convention`)."""
    if getattr(model, "metric", False):
        return {"metric": True, "note": "metres"}
    convention = getattr(model, "scale_convention", "one arbitrary scale for the whole run")
    return {
        "metric": False,
        "note": f"arbitrary but consistent units: {convention}; align to ground truth with a Sim(3) to compare",
    }


def intrinsics_report(source: object, model: object, model_K: np.ndarray | None) -> dict[str, Any]:
    """Where the run's K came from and its values in source pixels (pixel centres at integers): the source's
    (a flag, a calibration file, a dataset's calibration) or, without one, the model's own estimate."""
    from recon.datasets import CalibratedSource, intrinsics_origin

    origin = intrinsics_origin(source)  # type: ignore[arg-type]
    K = getattr(source, "intrinsics", None)
    report: dict[str, Any] = {
        "origin": origin
        or f"none given: estimated by the {getattr(model, 'name', type(model).__name__)} model (pass --calib FILE or --intrinsics)",
        "K": (K if K is not None else model_K),
    }
    if isinstance(source, CalibratedSource) and source.calib.distorted:
        report["distortion"] = {
            "model": source.calib.model,
            "coefficients": source.calib.dist.tolist(),
            "K_distorted": source.calib.K,
        }
    if model_K is not None and K is not None and not np.allclose(model_K, K, rtol=1e-4, atol=1e-3):
        report["K_model"] = model_K  # a model that predicts its own K (learned ones) may differ from the source's
    return report


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Resident memory now (Linux /proc); the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()
    return pages * resource.getpagesize() / 2**20
