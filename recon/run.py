"""`recon run SOURCE`: the main job, from arguments to files."""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from recon.allocator import heap_trimmer
from recon.cache_config import POLICIES
from recon.datasets import KINDS
from recon.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ReconError
from recon.models.base import DTYPE_NAMES
from recon.outputs import EXPORT_FORMATS
from recon.registration import ALIGN_MODES
from recon.schedule import DEFAULT_OVERLAP, DEFAULT_WINDOW
from recon.signals import ignore_signal, signals_deferred
from recon.viz import MODES

if TYPE_CHECKING:
    import numpy as np

    from recon.config import RunConfig
    from recon.datasets.base import FrameSource
    from recon.fusion import VoxelMap
    from recon.pipeline import RunState


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Every flag defaults to None ("not given"): the run's settings are the defaults, then --config's file, then
    the flags given (recon.config); the defaults named in the help are RunConfig's."""
    p.add_argument(
        "source",
        nargs="?",
        help="video file, image folder, KITTI sequence dir, TUM RGB-D dir, camera index, rtsp/http URL, "
        "or synthetic:street|room (default: --config's source.path)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (YAML, nested per stage as OUT/config.yaml, which every run "
        "writes); flags given override it",
    )
    p.add_argument(
        "--source-kind",
        choices=KINDS,
        help="override source detection",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="camera / stream sources: how long to wait for the stream to open or for a frame (default 10)",
    )
    p.add_argument("--model", help="geometry model: classical (default, needs no weights), vggt, streamvggt")
    m = p.add_argument_group("learned models (vggt, streamvggt)")
    m.add_argument(
        "--weights",
        metavar="PATH",
        help="checkpoint: .safetensors, or a torch file of plain tensors (never unpickles code)",
    )
    m.add_argument("--model-config", help="architecture of the checkpoint: 1b (VGGT-1B, default) or tiny (tests)")
    m.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help="compute precision of the aggregator (default fp32; heads stay fp32)",
    )
    m.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    m.add_argument(
        "--cache",
        choices=POLICIES,
        help="streamvggt: KV-cache policy (default keydiff; none = unbounded)",
    )
    m.add_argument(
        "--cache-budget",
        type=int,
        metavar="TOKENS",
        help="streamvggt: tokens kept per global-attention layer (required unless --cache none)",
    )
    p.add_argument(
        "--window",
        type=int,
        help=f"frames per window (default {DEFAULT_WINDOW}); streamvggt: frames per step, block-causal inside the step",
    )
    p.add_argument(
        "--overlap",
        type=int,
        help=f"frames shared by consecutive windows (default {DEFAULT_OVERLAP}; streamvggt: none, its KV cache carries the context)",
    )
    p.add_argument(
        "--align", choices=ALIGN_MODES, help="window alignment: one Sim(3), or Sim(3) + layer-wise scale (default)"
    )
    p.add_argument(
        "--no-loop-closure",
        action="store_true",
        default=None,
        help="no place recognition / loop edges (the pose graph then only chains the windows' joins)",
    )
    p.add_argument(
        "--voxel", type=float, help="map voxel size in run units (default: 1%% of the first window's median depth)"
    )
    p.add_argument("--max-map-points", type=int, help="hard cap on map points (default 1,000,000)")
    p.add_argument("--max-frames", type=int, help="stop after N frames")
    p.add_argument("--stride", type=int, help="use every K-th frame (default 1)")
    p.add_argument(
        "--no-keyframes", action="store_true", default=None, help="keep every frame, even when the camera does not move"
    )
    p.add_argument(
        "--intrinsics",
        help="fx,fy,cx,cy in pixels of the input images, for any source; overrides a dataset's or "
        "--calib's K (default: the source's, else estimated by the model)",
    )
    p.add_argument(
        "--calib",
        metavar="FILE",
        help="camera calibration: OpenCV YAML/JSON (camera_matrix, distortion_coefficients; "
        "distortion_model: fisheye for the fisheye model) or a COLMAP cameras.txt; frames are undistorted at the source",
    )
    p.add_argument(
        "--depth-every",
        type=int,
        metavar="N",
        help="keep every N-th trajectory frame's depth in OUT/depth/ for `recon eval` (default 10; 0: none)",
    )
    p.add_argument(
        "--export",
        choices=EXPORT_FORMATS,
        help="after the run, also write OUT/colmap or OUT/nerfstudio, as `recon export OUT --format ...` does",
    )
    p.add_argument("--out", help="output directory (default: out); a folder holding an earlier run needs --overwrite")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's files in --out (recon's own outputs only; other files stay)",
    )
    v = p.add_argument_group("viewing (Rerun)")
    v.add_argument(
        "--viewer",
        choices=MODES,
        help="none (default), spawn the native Rerun viewer, or serve the web viewer",
    )
    v.add_argument(
        "--rrd", metavar="FILE", help="also save the recording to FILE (.rrd; open it later with `recon view FILE`)"
    )
    v.add_argument("--bind", help="address the --viewer serve servers listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, help="port of the web viewer with --viewer serve (default: Rerun's)")
    v.add_argument(
        "--rrd-depth",
        type=int,
        metavar="N",
        help="log every N-th frame's depth and confidence images to the viewer "
        "and recording (default 1; 0: none; they are most of a recording's ~0.5 MB a frame)",
    )


# flag (argparse dest) -> (stage, setting[, True when the flag negates the setting])
FLAG_SETTINGS: dict[str, tuple] = {
    "source": ("source", "path"),
    "source_kind": ("source", "kind"),
    "stride": ("source", "stride"),
    "max_frames": ("source", "max_frames"),
    "intrinsics": ("source", "intrinsics"),
    "calib": ("source", "calib"),
    "timeout": ("source", "timeout_s"),
    "model": ("model", "name"),
    "weights": ("model", "weights"),
    "model_config": ("model", "architecture"),
    "dtype": ("model", "dtype"),
    "device": ("model", "device"),
    "cache": ("model", "cache"),
    "cache_budget": ("model", "cache_budget"),
    "window": ("schedule", "window"),
    "overlap": ("schedule", "overlap"),
    "no_keyframes": ("schedule", "keyframes", True),
    "align": ("align", "mode"),
    "voxel": ("map", "voxel"),
    "max_map_points": ("map", "max_points"),
    "no_loop_closure": ("graph", "loop_closure", True),
    "depth_every": ("outputs", "depth_every"),
    "out": ("outputs", "out"),
    "export": ("outputs", "export"),
    "viewer": ("viewer", "mode"),
    "rrd": ("viewer", "rrd"),
    "bind": ("viewer", "bind"),
    "port": ("viewer", "port"),
    "rrd_depth": ("viewer", "depth_every"),
}


def flag_settings(args: argparse.Namespace) -> dict:
    """The settings the flags given set, nested like RunConfig."""
    settings: dict[str, dict] = {}
    for dest, (stage, name, *negate) in FLAG_SETTINGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "intrinsics":
            value = list(_intrinsics(value))
        elif dest == "source":
            value = _recorded_source(value)
        elif dest == "calib":
            value = str(Path(value).expanduser().resolve())  # absolute: `recon eval` / `export` reopen the source
        settings.setdefault(stage, {})[name] = (not value) if negate else value
    return settings


def load_run_config(args: argparse.Namespace) -> RunConfig:
    from recon.config import read_config_file, run_config

    file_settings = read_config_file(args.config) if args.config else {}
    config = run_config(file_settings, flag_settings(args))
    if config.source.path is None:
        raise ReconError("no source: name one (recon run SOURCE) or give --config FILE with a source.path")
    # A file's source path, like the flag's, is recorded absolute: `recon eval` and `export` reopen it from anywhere.
    return dataclasses.replace(
        config, source=dataclasses.replace(config.source, path=_recorded_source(config.source.path))
    )


def _overlap(config: RunConfig) -> int:
    """Frames shared by consecutive windows, as the model's registration strategy allows."""
    from recon.models.base import registration_for

    return registration_for(config.model.name).overlap(config.schedule.overlap)


def _check(config: RunConfig, args: argparse.Namespace) -> None:
    from recon.models.base import registration_for

    src, sched, out, viewer = config.source, config.schedule, config.outputs, config.viewer
    if registration_for(config.model.name).overlap(1) == 0:  # causal steps: the KV cache carries the context
        if sched.window < 1:
            raise ReconError(f"--window (frames per step) must be >= 1, got {sched.window}")
        if args.overlap is not None:
            raise ReconError(
                f"--overlap does not apply to --model {config.model.name}: steps do not overlap, its KV cache carries the context"
            )
    else:
        if sched.window < 2:
            raise ReconError(f"--window must be >= 2, got {sched.window}")
        overlap = _overlap(config)
        if not 1 <= overlap < sched.window:
            raise ReconError(f"--overlap must be in [1, {sched.window - 1}] for --window {sched.window}, got {overlap}")
    if src.stride < 1:
        raise ReconError(f"--stride must be >= 1, got {src.stride}")
    if src.max_frames is not None and src.max_frames < 1:
        raise ReconError(f"--max-frames must be >= 1, got {src.max_frames}")
    voxel = config.map.voxel
    if voxel is not None and not voxel > 0:
        raise ReconError(f"--voxel must be > 0, got {voxel}")
    if voxel is not None and not math.isfinite(voxel):
        raise ReconError(f"--voxel must be a finite size in run units, got {voxel}")
    if out.depth_every < 0:
        raise ReconError(f"--depth-every must be >= 0 (0: keep no depth), got {out.depth_every}")
    if config.map.max_points < 1:
        raise ReconError(f"--max-map-points must be >= 1, got {config.map.max_points}")
    if src.timeout_s is not None and not src.timeout_s > 0:
        raise ReconError(f"--timeout must be > 0 seconds, got {src.timeout_s}")
    if viewer.port is not None and not 1 <= viewer.port <= 65535:
        raise ReconError(f"--port must be in [1, 65535], got {viewer.port}")
    if viewer.port is not None and viewer.mode != "serve":
        raise ReconError(f"--port sets the web viewer's port and needs --viewer serve (got --viewer {viewer.mode})")
    if out.export is not None and out.depth_every == 0:
        raise ReconError(
            "--export takes the intrinsics and the points' observations from the kept depth; it needs --depth-every N > 0"
        )
    if viewer.depth_every < 0:
        raise ReconError(f"--rrd-depth must be >= 0 (0: no depth images), got {viewer.depth_every}")
    if viewer.rrd is not None and Path(viewer.rrd).suffix.lower() != ".rrd":
        raise ReconError(f"--rrd must name a .rrd file, got {viewer.rrd!r}")


def stream_options(kind: str, timeout_s: float | None) -> dict[str, float]:
    """--timeout -> the stream source's open and read timeouts; a flag no other kind takes is an error."""
    if timeout_s is None:
        return {}
    if kind != "stream":
        raise ReconError(f"--timeout applies to camera and stream sources only; this source is a {kind}")
    return {"open_timeout_s": timeout_s, "read_timeout_s": timeout_s}


def _intrinsics(text: str) -> tuple[float, float, float, float]:
    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
        raise ReconError(f"--intrinsics must be four numbers fx,fy,cx,cy, got {text!r}") from None
    return fx, fy, cx, cy


LEARNED_MODELS = ("vggt", "streamvggt")


def model_options(config: RunConfig) -> dict[str, object]:
    """The model's constructor arguments; a setting given to a model that ignores it is an error, not a surprise."""
    m = config.model
    if m.name not in LEARNED_MODELS:
        given = [
            flag
            for flag, value in (("--weights", m.weights), ("--device", m.device), ("--cache-budget", m.cache_budget))
            if value is not None
        ]
        if given:
            raise ReconError(
                f"{', '.join(given)} only apply to --model {' or '.join(LEARNED_MODELS)}; the {m.name} model takes none"
            )
        return {"config": m.classical} if m.name == "classical" else {}
    options: dict[str, object] = {"weights": m.weights, "config": m.architecture, "dtype": m.dtype, "device": m.device}
    if m.name == "streamvggt":
        if m.cache != "none" and m.cache_budget is None:
            raise ReconError(
                f"--cache {m.cache} needs --cache-budget TOKENS (per global-attention layer), or use --cache none"
            )
        if m.cache_budget is not None and m.cache_budget < 1:
            raise ReconError(f"--cache-budget must be >= 1 token, got {m.cache_budget}")
        options.update(cache=m.cache, cache_budget=m.cache_budget, frames_per_step=config.schedule.window)
    elif m.cache_budget is not None:
        raise ReconError("--cache-budget applies to --model streamvggt only (vggt runs each window offline)")
    return options


class Progress:
    """The run's progress: frames done (placed in the trajectory, or skipped without motion), not frames read,
    which run ahead of the windows still in the model, so the bar reaches its end when the work does. On a
    terminal a tqdm bar; without one (a log file, a job scheduler) a plain line every `every_s` seconds once the run
    has taken `first_after_s` (a short run's log stays its report)."""

    def __init__(self, total: int | None, every_s: float = 10.0, first_after_s: float = 30.0) -> None:
        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="frame", desc="recon", dynamic_ncols=True, disable=not self.tty)
        self.total, self.every_s, self.done = total, every_s, 0
        self._t0 = time.monotonic()
        self._last = self._t0 + first_after_s - every_s

    def update(self, state: RunState, map_points: int) -> None:
        self.done = done = state.frames_written + state.frames_skipped
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(windows=state.windows, map=map_points)
        now = time.monotonic()
        if not self.tty and now - self._last >= self.every_s:
            self._last = now
            of = f"/{self.total}" if self.total else ""
            print(
                f"recon: {done}{of} frames, {state.windows} windows, {done / max(now - self._t0, 1e-9):.1f} frames/s, "
                f"map {map_points} points",
                file=sys.stderr,
                flush=True,
            )

    def close(self, state: RunState) -> None:
        self.done = state.frames_written + state.frames_skipped
        self.bar.update(self.done - self.bar.n)
        self.bar.close()


@dataclass
class StopRequest:
    """The signal that asked the run to stop (None: none did)."""

    signum: int | None = None

    @property
    def terminated(self) -> bool:
        return self.signum == signal.SIGTERM


@contextmanager
def stop_on_signals(request_stop: Callable[[], None]) -> Iterator[StopRequest]:
    """SIGINT (Ctrl-C) and SIGTERM (a job scheduler, `kill`, a container stop) ask the run to stop after the
    window it is writing: every finished window's output is flushed and summary.json says "interrupted".
    Further signals change nothing: raised into the shutdown, a second one cut the final summary short (it
    stayed "running") and let the interpreter exit while the model thread was inside native code (SIGABRT).
    Once a stop was asked for they stay ignored after the run too: the command is only closing up then, and a
    KeyboardInterrupt raised into a finalizer there (tqdm's, a generator's) printed a traceback."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.signum is None:
            stop.signum = signum
            request_stop()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if stop.signum is None else ignore_signal)


def _recorded_source(spec: str) -> str:
    """The source as summary.json records it: absolute, so `recon eval` can reopen it from any working
    directory, and without a URL's credentials (the logs redact them the same way)."""
    from recon.datasets.stream import redact

    path = Path(spec).expanduser()
    return str(path.resolve()) if ":" not in spec and path.exists() else redact(spec)


def run_command(args: argparse.Namespace) -> int:
    from recon.datasets import detect_kind, open_source
    from recon.outputs import claim_out_dir

    with signals_deferred():  # recon.config imports the stages' settings: torch, OpenCV
        config = load_run_config(args)
    _check(config, args)
    model_opts = model_options(config)
    src = config.source
    options: dict = {"stride": src.stride, "max_frames": src.max_frames}
    if src.intrinsics is not None:
        options["intrinsics"] = list(src.intrinsics)
    if src.calib is not None:
        options["calib"] = src.calib
    kind = src.kind or detect_kind(src.path)  # type: ignore[arg-type]
    options.update(stream_options(kind, src.timeout_s))
    source = open_source(src.path, kind=kind, **options)  # type: ignore[arg-type]
    input_spec = {"source": src.path, "kind": src.kind, **options}
    # Before the model loads (minutes for a large checkpoint): a folder in use or holding an earlier run is one line up front.
    with claim_out_dir(Path(config.outputs.out), overwrite=args.overwrite) as out:
        return _reconstruct(config, source, out, model_opts, input_spec)


def _reconstruct(
    config: RunConfig, source: FrameSource, out: Path, model_opts: dict[str, object], input_spec: dict
) -> int:
    from dataclasses import replace

    from recon.datasets.base import length_hint
    from recon.models.base import model_factory, registration_for

    with signals_deferred():  # torch, GTSAM, the model's own libraries
        from recon.pipeline import Pipeline, PipelineConfig
        from recon.viz import open_viewer

        model_class = model_factory(config.model.name)
    model = model_class(**model_opts)
    pipeline_config = PipelineConfig(
        schedule=replace(config.schedule, overlap=_overlap(config)), core=config.core(), outputs=config.outputs
    )
    progress = Progress(length_hint(source))
    trim_heap = heap_trimmer()

    def on_window(state: RunState, voxel_map: VoxelMap | None) -> None:
        trim_heap()  # per window: RSS follows live memory on an endless stream (see heap_trimmer)
        progress.update(state, len(voxel_map) if voxel_map is not None else 0)

    v = config.viewer
    options = None
    if v.mode != "none" or v.rrd:
        from recon.viz.rerun_viewer import ViewerOptions

        options = ViewerOptions(depth_every=v.depth_every, linger=v.mode == "serve")
    viewer = open_viewer(v.mode, Path(v.rrd) if v.rrd else None, bind=v.bind, port=v.port, options=options)
    try:
        pipeline = Pipeline(
            source,
            model,
            out,
            pipeline_config,
            on_window=on_window,
            viewer=viewer,
            input_spec=input_spec,
            registration=registration_for(config.model.name),
            run_config=config,
        )
        # On a terminal, log lines go above the bar instead of through it.
        with stop_on_signals(pipeline.request_stop) as stop, logging_redirect_tqdm() if progress.tty else nullcontext():
            state = pipeline.run()
        progress.close(state)
        if stop.signum is not None:
            print(
                f"recon: {'terminated' if stop.terminated else 'interrupted'}; outputs up to the last finished window are in {out}/",
                file=sys.stderr,
            )
            return EXIT_TERMINATED if stop.terminated else EXIT_INTERRUPTED
        report(config, source, out, state)
        viewer.linger()  # --viewer serve: the recording stays up until Ctrl-C
        return 0
    finally:
        viewer.stop()


def report(config: RunConfig, source: FrameSource, out: Path, state: RunState) -> None:
    """The run's report, its evaluation against ground truth and its export. Every file is written before
    anything is printed: a closed stdout (`recon run ... | head`) costs the report only."""
    from recon.datasets import source_notes
    from recon.pipeline import unplaced_frames_notes

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
    import json

    summary = json.loads((out / "summary.json").read_text())
    return f"{summary['elapsed_s']:.1f} s, {summary['fps']:.2f} frames/s, peak memory {summary['peak_rss_mb']:.0f} MB"


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
