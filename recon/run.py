"""`recon run SOURCE`: the main job, from arguments to files."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from recon.allocator import heap_trimmer
from recon.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, ignore_signal, signals_deferred
from recon.errors import ReconError
from recon.schedule import DEFAULT_OVERLAP, DEFAULT_WINDOW

if TYPE_CHECKING:
    from recon.datasets.base import FrameSource
    from recon.pipeline import RunState


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="video file, image folder, KITTI sequence dir, TUM RGB-D dir, camera index, rtsp/http URL, or synthetic:street|room")
    p.add_argument("--source-kind", choices=["folder", "video", "stream", "kitti", "tum", "synthetic"], help="override source detection")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="camera / stream sources: how long to wait for the stream to open or for a frame (default 10)")
    p.add_argument("--model", default="classical", help="geometry model: classical (default, needs no weights), vggt, streamvggt")
    m = p.add_argument_group("learned models (vggt, streamvggt)")
    m.add_argument("--weights", metavar="PATH", help="checkpoint: .safetensors, or a torch file of plain tensors (never unpickles code)")
    m.add_argument("--model-config", default="1b", help="architecture of the checkpoint: 1b (VGGT-1B, default) or tiny (tests)")
    m.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="compute precision of the aggregator (heads stay fp32)")
    m.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    m.add_argument("--cache", choices=["none", "queue", "sink-window", "keydiff"], default="keydiff",
                   help="streamvggt: KV-cache policy (default keydiff; none = unbounded)")
    m.add_argument("--cache-budget", type=int, default=None, metavar="TOKENS",
                   help="streamvggt: tokens kept per global-attention layer (required unless --cache none)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"frames per window (default {DEFAULT_WINDOW}); streamvggt: frames per step, block-causal inside the step")
    p.add_argument("--overlap", type=int, default=None,
                   help=f"frames shared by consecutive windows (default {DEFAULT_OVERLAP}; streamvggt: none, its KV cache carries the context)")
    p.add_argument("--align", choices=["sim3", "lsa"], default="lsa", help="window alignment: one Sim(3), or Sim(3) + layer-wise scale (default)")
    p.add_argument("--no-loop-closure", action="store_true",
                   help="no place recognition / loop edges (the pose graph then only chains the windows' joins)")
    p.add_argument("--voxel", type=float, default=None, help="map voxel size in run units (default: 1%% of the first window's median depth)")
    p.add_argument("--max-map-points", type=int, default=1_000_000, help="hard cap on map points (default 1,000,000)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--stride", type=int, default=1, help="use every K-th frame (default 1)")
    p.add_argument("--no-keyframes", action="store_true", help="keep every frame, even when the camera does not move")
    p.add_argument("--intrinsics", help="fx,fy,cx,cy in pixels of the input images (default: from the source, else estimated)")
    p.add_argument("--depth-every", type=int, default=10, metavar="N",
                   help="keep every N-th trajectory frame's depth in OUT/depth/ for `recon eval` (default 10; 0: none)")
    p.add_argument("--out", default="out", help="output directory (default: out); a folder holding an earlier run needs --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's files in --out (recon's own outputs only; other files stay)")
    v = p.add_argument_group("viewing (Rerun)")
    v.add_argument("--viewer", choices=["none", "spawn", "serve"], default="none",
                   help="none (default), spawn the native Rerun viewer, or serve the web viewer")
    v.add_argument("--rrd", metavar="FILE", help="also save the recording to FILE (.rrd; open it later with `recon view FILE`)")
    v.add_argument("--bind", default="127.0.0.1", help="address the --viewer serve servers listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=None, help="port of the web viewer with --viewer serve (default: Rerun's)")


def _overlap(args: argparse.Namespace) -> int:
    """Frames shared by consecutive windows, as the model's registration strategy allows."""
    from recon.models.base import registration_for

    return registration_for(args.model).overlap(DEFAULT_OVERLAP if args.overlap is None else args.overlap)


def _check(args: argparse.Namespace) -> None:
    from recon.models.base import registration_for

    if registration_for(args.model).overlap(1) == 0:  # causal steps: the KV cache carries the context
        if args.window < 1:
            raise ReconError(f"--window (frames per step) must be >= 1, got {args.window}")
        if args.overlap is not None:
            raise ReconError(f"--overlap does not apply to --model {args.model}: steps do not overlap, its KV cache carries the context")
    else:
        if args.window < 2:
            raise ReconError(f"--window must be >= 2, got {args.window}")
        overlap = _overlap(args)
        if not 1 <= overlap < args.window:
            raise ReconError(f"--overlap must be in [1, {args.window - 1}] for --window {args.window}, got {overlap}")
    if args.stride < 1:
        raise ReconError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ReconError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.voxel is not None and not args.voxel > 0:
        raise ReconError(f"--voxel must be > 0, got {args.voxel}")
    if args.voxel is not None and not math.isfinite(args.voxel):
        raise ReconError(f"--voxel must be a finite size in run units, got {args.voxel}")
    if args.depth_every < 0:
        raise ReconError(f"--depth-every must be >= 0 (0: keep no depth), got {args.depth_every}")
    if args.max_map_points < 1:
        raise ReconError(f"--max-map-points must be >= 1, got {args.max_map_points}")
    if args.timeout is not None and not args.timeout > 0:
        raise ReconError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ReconError(f"--port must be in [1, 65535], got {args.port}")
    if args.port is not None and args.viewer != "serve":
        raise ReconError(f"--port sets the web viewer's port and needs --viewer serve (got --viewer {args.viewer})")
    if args.rrd is not None and Path(args.rrd).suffix.lower() != ".rrd":
        raise ReconError(f"--rrd must name a .rrd file, got {args.rrd!r}")


def stream_options(kind: str, timeout_s: float | None) -> dict[str, float]:
    """--timeout -> the stream source's open and read timeouts; a flag no other kind takes is an error."""
    if timeout_s is None:
        return {}
    if kind != "stream":
        raise ReconError(f"--timeout applies to camera and stream sources only; this source is a {kind}")
    return {"open_timeout_s": timeout_s, "read_timeout_s": timeout_s}


def _intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        fx, fy, cx, cy = (float(v) for v in text.split(","))
    except ValueError:
        raise ReconError(f"--intrinsics must be four numbers fx,fy,cx,cy, got {text!r}") from None
    return fx, fy, cx, cy


LEARNED_MODELS = ("vggt", "streamvggt")


def model_options(args: argparse.Namespace) -> dict[str, object]:
    """The flags a model takes; a flag given to a model that ignores it is an error, not a surprise."""
    if args.model not in LEARNED_MODELS:
        given = [flag for flag, value in (("--weights", args.weights), ("--device", args.device), ("--cache-budget", args.cache_budget))
                 if value is not None]
        if given:
            raise ReconError(f"{', '.join(given)} only apply to --model {' or '.join(LEARNED_MODELS)}; the {args.model} model takes none")
        return {}
    options: dict[str, object] = {"weights": args.weights, "config": args.model_config, "dtype": args.dtype, "device": args.device}
    if args.model == "streamvggt":
        if args.cache != "none" and args.cache_budget is None:
            raise ReconError(f"--cache {args.cache} needs --cache-budget TOKENS (per global-attention layer), or use --cache none")
        if args.cache_budget is not None and args.cache_budget < 1:
            raise ReconError(f"--cache-budget must be >= 1 token, got {args.cache_budget}")
        options.update(cache=args.cache, cache_budget=args.cache_budget, frames_per_step=args.window)
    elif args.cache_budget is not None:
        raise ReconError("--cache-budget applies to --model streamvggt only (vggt runs each window offline)")
    return options


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

    _check(args)
    model_opts = model_options(args)
    options: dict = {"stride": args.stride, "max_frames": args.max_frames}
    if (K := _intrinsics(args.intrinsics)) is not None:
        options["intrinsics"] = K
    kind = args.source_kind or detect_kind(args.source)
    options.update(stream_options(kind, args.timeout))
    source = open_source(args.source, kind=kind, **options)
    input_spec = {"source": _recorded_source(args.source), "kind": args.source_kind, **options}
    # Before the model loads (minutes for a large checkpoint): a folder in use or holding an earlier run is one line up front.
    with claim_out_dir(Path(args.out), overwrite=args.overwrite) as out:
        return _reconstruct(args, source, out, model_opts, input_spec)


def _reconstruct(args: argparse.Namespace, source: FrameSource, out: Path, model_opts: dict[str, object], input_spec: dict) -> int:
    from recon.datasets import source_notes
    from recon.datasets.base import length_hint
    from recon.models.base import model_factory, registration_for

    with signals_deferred():  # torch, GTSAM, the model's own libraries
        from recon.pipeline import Pipeline, PipelineConfig, unplaced_frames_notes
        from recon.viz import open_viewer

        model_class = model_factory(args.model)
    model = model_class(**model_opts)
    config = PipelineConfig(window=args.window, overlap=_overlap(args), align=args.align, voxel=args.voxel,
                            max_map_points=args.max_map_points, keyframes=not args.no_keyframes, depth_every=args.depth_every,
                            loop_closure=not args.no_loop_closure)
    bar = tqdm(total=length_hint(source), unit="frame", desc="recon", disable=None, dynamic_ncols=True)

    trim_heap = heap_trimmer()

    def progress(state, voxel_map) -> None:  # type: ignore[no-untyped-def]
        trim_heap()  # per window: RSS follows live memory on an endless stream (see heap_trimmer)
        bar.update(state.frames_read - bar.n)
        bar.set_postfix(windows=state.windows, map=len(voxel_map) if voxel_map is not None else 0)

    viewer = open_viewer(args.viewer, Path(args.rrd) if args.rrd else None, bind=args.bind, port=args.port)
    pipeline = Pipeline(source, model, out, config, on_window=progress, viewer=viewer, input_spec=input_spec,
                        registration=registration_for(args.model))
    with stop_on_signals(pipeline.request_stop) as stop:
        state = pipeline.run()
    bar.update(state.frames_read - bar.n)
    bar.close()
    if stop.signum is not None:
        print(f"recon: {'terminated' if stop.terminated else 'interrupted'}; outputs up to the last finished window are in {out}/",
              file=sys.stderr)
        return EXIT_TERMINATED if stop.terminated else EXIT_INTERRUPTED
    # Every file is written before anything is printed: a closed stdout (`recon run ... | head`) costs the report only.
    metrics = evaluate(out) if source.has_ground_truth and state.frames_written >= 3 else None
    for warning in [*state.warnings, *source_notes(source), *unplaced_frames_notes(state)]:
        print(f"recon: warning: {warning}", file=sys.stderr)
    print(f"{state.frames_read} frames ({state.frames_skipped} without motion skipped), {state.windows} windows -> {out}/")
    print(f"  {', '.join(written_outputs(out, state))}")
    if metrics is not None:
        report_metrics(out, metrics)
    return 0


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
    from recon.eval.run_eval import format_table
    from recon.outputs import PLOTS_DIR

    print("vs ground truth:")
    print(format_table(metrics))
    print(f"  -> {out}/metrics.json, {out}/{PLOTS_DIR}/*.png")
