"""`recon run SOURCE`: the main job, from arguments to files."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.contrib.logging import logging_redirect_tqdm

from recon.allocator import heap_trimmer
from recon.cache_config import POLICIES
from recon.datasets import KINDS
from recon.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ReconError
from recon.models.base import DEFAULT_MODEL, DTYPE_NAMES, available_models, learned_models
from recon.outputs import EXPORT_FORMATS
from recon.progress import Progress
from recon.run_report import report
from recon.run_settings import check_settings, load_run_config, model_options, stream_options, window_overlap
from recon.signals import signals_deferred
from recon.stopping import stop_on_signals
from recon.viz import MODES
from recon.windows import ALIGN_MODES, DEFAULT_OVERLAP, DEFAULT_WINDOW

if TYPE_CHECKING:
    from recon.config import RunConfig
    from recon.datasets.base import FrameSource
    from recon.fusion import VoxelMap
    from recon.summary import RunState

log = logging.getLogger(__name__)
help = "reconstruct a video, image folder, dataset sequence or live stream"


def add_args(p: argparse.ArgumentParser) -> None:
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
    learned = ", ".join(learned_models())
    p.add_argument(
        "--model",
        help=f"geometry model: {', '.join(available_models())} (default {DEFAULT_MODEL}, needs no weights)",
    )
    m = p.add_argument_group(f"learned models ({learned})")
    m.add_argument(
        "--weights",
        metavar="PATH",
        help="checkpoint: .safetensors, or a torch file of plain tensors (never unpickles code)",
    )
    m.add_argument(
        "--model-config",
        help="architecture of the checkpoint (default: the released model's; tiny: the test-size graph)",
    )
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
    m.add_argument(
        "--camera-cache",
        type=int,
        metavar="FRAMES",
        help="streamvggt with a bounded --cache: recent frames the camera head keeps besides the anchor "
        "(default 16; --cache none keeps every frame, as the official code)",
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
    r = p.add_argument_group("distributed (Ray: pip install 'recon[ray]')")
    r.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="infer the windows on N Ray workers, each with its own model; this process aligns and fuses them "
        "in order (files only: a camera or stream runs here)",
    )
    r.add_argument(
        "--address",
        metavar="ADDRESS",
        help="with --workers: the Ray cluster, auto or ray://HOST:PORT (default: start Ray on this machine)",
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


def main(args: argparse.Namespace) -> int:
    from recon.datasets import detect_kind
    from recon.outputs import claim_out_dir

    with signals_deferred():  # recon.config imports the stages' settings: torch, OpenCV
        config = load_run_config(args)
    check_settings(config, args)
    model_opts = model_options(config)
    src = config.source
    options: dict = {"stride": src.stride, "max_frames": src.max_frames}
    if src.intrinsics is not None:
        options["intrinsics"] = list(src.intrinsics)
    if src.calib is not None:
        options["calib"] = src.calib
    kind = src.kind or detect_kind(src.path)  # type: ignore[arg-type]
    options.update(stream_options(kind, src.timeout_s))
    source = open_run_source(src.path, kind, options)  # type: ignore[arg-type]
    input_spec = {"source": src.path, "kind": src.kind, **options}  # how `recon eval` reopens it, depth included
    workers = remote_workers(args, config.model.name, kind)
    # Before the model loads (minutes for a large checkpoint): a folder in use or holding an earlier run is one line up front.
    with claim_out_dir(Path(config.outputs.out), overwrite=args.overwrite) as out:
        return _reconstruct(config, source, out, model_opts, input_spec, workers, args.address)


def open_run_source(path: str, kind: str, options: dict[str, Any]) -> FrameSource:
    """The source as a run reads it. A run never uses ground-truth depth (`recon eval` reopens the source for
    it), and decoding a KITTI sequence's depth PNGs took ~1% of a drive's run. A TUM sequence pairs its
    frames with depth images, so there leaving depth out would change which frames there are."""
    from recon.datasets import open_source

    return open_source(path, kind=kind, **options, **({"load_depth": False} if kind == "kitti" else {}))


def remote_workers(args: argparse.Namespace, model: str, kind: str) -> int:
    """--workers, checked: 0 for a local run."""
    from recon.models.base import model_entry

    if args.workers is None:
        if args.address is not None:
            raise ReconError("--address is where --workers run; pass --workers N too")
        return 0
    if args.workers < 1:
        raise ReconError(f"--workers must be >= 1, got {args.workers}")
    if model_entry(model).registration != "overlapping":
        raise ReconError(
            f"--workers needs a model whose windows are independent; {model} carries its state from step to step"
        )
    if kind == "stream":
        log.info("a camera or stream is read as it comes: it runs here, without --workers")
        return 0
    return int(args.workers)


def _reconstruct(
    config: RunConfig,
    source: FrameSource,
    out: Path,
    model_opts: dict[str, object],
    input_spec: dict,
    workers: int = 0,
    address: str | None = None,
) -> int:
    from dataclasses import replace

    from recon.datasets.base import length_hint
    from recon.models.base import model_factory, registration_for

    with signals_deferred():  # torch, GTSAM, the model's own libraries
        from recon.pipeline import Pipeline, PipelineConfig
        from recon.viz import open_viewer

        model_class = model_factory(config.model.name)
    if workers:
        from recon.ray_windows import RayWindowModel

        model: Any = RayWindowModel(config.model.name, model_opts, workers, address)
    else:
        model = model_class(**model_opts)
    pipeline_config = PipelineConfig(
        schedule=replace(config.schedule, overlap=window_overlap(config)), core=config.core(), outputs=config.outputs
    )
    progress = Progress(length_hint(source))
    trim_heap = heap_trimmer()

    def on_window(state: RunState, voxel_map: VoxelMap | None) -> None:
        trim_heap()  # per window: RSS follows live memory on an endless stream (see heap_trimmer)
        progress.update(state, len(voxel_map) if voxel_map is not None else 0)

    v = config.viewer
    options = None
    if v.mode != "none" or v.rrd:
        from recon.viz.viewer_options import ViewerOptions

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
        if workers:
            model.close()  # Ray's workers go with the run
