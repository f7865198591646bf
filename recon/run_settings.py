"""`recon run`'s flags as a RunConfig (defaults, then --config's file, then the flags given), and the checks a
run's settings pass before anything is opened. Messages name the flags: that is what a user typed."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from recon.errors import ReconError
from recon.models.base import learned_models

if TYPE_CHECKING:
    from recon.config import RunConfig


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
    "camera_cache": ("model", "camera_cache"),
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


def window_overlap(config: RunConfig) -> int:
    """Frames shared by consecutive windows, as the model's registration strategy allows."""
    from recon.models.base import registration_for

    return registration_for(config.model.name).overlap(config.schedule.overlap)


def check_settings(config: RunConfig, args: argparse.Namespace) -> None:
    """A one-line error for the first setting a run cannot start with (`args`: whether --overlap was given)."""
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
        overlap = window_overlap(config)
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


LEARNED_MODELS = tuple(learned_models())  # from the registry: a new learned model needs no edit here


def model_options(config: RunConfig) -> dict[str, object]:
    """The model's constructor arguments; a setting given to a model that ignores it is an error, not a surprise."""
    m = config.model
    if m.name not in LEARNED_MODELS:
        given = [
            flag
            for flag, value in (
                ("--weights", m.weights),
                ("--device", m.device),
                ("--cache-budget", m.cache_budget),
                ("--camera-cache", m.camera_cache),
            )
            if value is not None
        ]
        if given:
            raise ReconError(
                f"{', '.join(given)} only apply to the learned models ({', '.join(LEARNED_MODELS)}); the {m.name} model takes none"
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
        if m.camera_cache is not None and m.cache == "none":
            raise ReconError(
                "--camera-cache bounds the camera head for a bounded --cache; --cache none keeps every frame"
            )
        options.update(cache=m.cache, cache_budget=m.cache_budget, frames_per_step=config.schedule.window)
        if m.camera_cache is not None:
            options["camera_frames"] = m.camera_cache
    elif m.cache_budget is not None or m.camera_cache is not None:
        flag = "--cache-budget" if m.cache_budget is not None else "--camera-cache"
        raise ReconError(f"{flag} applies to --model streamvggt only ({m.name} runs each window offline)")
    return options


def _recorded_source(spec: str) -> str:
    """The source as summary.json records it: absolute, so `recon eval` can reopen it from any working
    directory, and without a URL's credentials (the logs redact them the same way)."""
    from recon.datasets.stream import redact

    path = Path(spec).expanduser()
    return str(path.resolve()) if ":" not in spec and path.exists() else redact(spec)
