"""Every setting of a run in one nested `RunConfig` (one dataclass per stage), read from and written to YAML.

`recon run --config FILE.yaml` starts from a file, flags override it, and the effective config is written to
OUT/config.yaml: `recon run --config OUT/config.yaml --out OTHER` repeats the run exactly. A file may set any
subset; what it leaves out keeps its default, and an unknown or mistyped setting is an error naming it.

Stages: source, model (with the classical model's own knobs), schedule, align, map, graph (pose graph and loop
closure), viewer, outputs."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, cast

from recon.align import AlignConfig
from recon.cache_config import PolicyName
from recon.core import CoreConfig, GraphConfig
from recon.datasets import SourceKind
from recon.errors import ReconError
from recon.fusion import MapConfig
from recon.models.base import DtypeName
from recon.models.classical.model import ClassicalConfig
from recon.outputs import OutputConfig
from recon.viz.viewer import ViewerMode
from recon.windows import ScheduleConfig

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class SourceConfig:
    path: str | None = None  # what `recon run SOURCE` names (recorded absolute)
    kind: SourceKind | None = None  # None: detected from the path
    stride: int = 1
    max_frames: int | None = None
    intrinsics: tuple[float, float, float, float] | None = None  # fx, fy, cx, cy in source pixels
    calib: str | None = None  # a calibration file (see recon.datasets.calibration)
    timeout_s: float | None = None  # camera / stream sources


@dataclass(frozen=True)
class ModelConfig:
    name: str = "classical"
    weights: str | None = None  # learned models: the checkpoint
    architecture: str | None = None  # learned models: None = the released model's; or a name it knows (tiny: tests)
    dtype: DtypeName = "fp32"
    device: str | None = None
    cache: PolicyName = "keydiff"  # streamvggt
    cache_budget: int | None = None  # streamvggt: tokens per global-attention layer
    camera_cache: int | None = None  # streamvggt, bounded --cache: recent frames the camera head keeps (None: 16)
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)


@dataclass(frozen=True)
class ViewerConfig:
    mode: ViewerMode = "none"
    rrd: str | None = None
    bind: str = "127.0.0.1"
    port: int | None = None
    depth_every: int = 1  # every N-th frame's depth and confidence in the viewer / recording (0: none)


@dataclass(frozen=True)
class RunConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    map: MapConfig = field(default_factory=MapConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)

    def core(self) -> CoreConfig:
        return CoreConfig(align=self.align, map=self.map, graph=self.graph)


# -- dict <-> dataclass ------------------------------------------------------------------------------------------
def to_dict(config: Any) -> Any:
    """A config dataclass -> plain dicts, lists and scalars (what YAML and JSON hold)."""
    if is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if hasattr(config, "item") and callable(config.item):  # numpy scalars
        return config.item()
    return config


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """`data` (a dict, or a partial one) over cls's defaults; ReconError naming the setting (a dotted path below
    `where`) that is unknown or of the wrong type."""
    if not isinstance(data, dict):
        raise ReconError(f"{where or 'the file'}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ReconError(f"{path}: no such setting; {where or 'the top level'} has {', '.join(known)}")
        values[key] = _value(hints[key], value, path)
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ReconError(f"{where or 'settings'}: {e}") from None


def merge(base: dict, override: dict) -> dict:
    """Nested dicts: override's leaves replace base's."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# PyYAML reads YAML 1.1, where 1e9 and 1.0e9 are text (1.0e+9 is a number); YAML 1.2 and every user mean a number.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _value(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _value(option, value, where)
            except ReconError as e:
                errors.append(str(e))
        raise ReconError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ReconError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if is_dataclass(tp):
        return from_dict(cast(type, tp), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ReconError(f"{where}: expected a list, got {value!r}")
        items = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(value)
        if len(items) != len(value):
            raise ReconError(f"{where}: expected {len(items)} values, got {len(value)}")
        return tuple(_value(t, v, where) for t, v in zip(items, value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ReconError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReconError(f"{where}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReconError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ReconError(f"{where}: expected text, got {value!r}")
        return value
    raise ReconError(f"{where}: settings of type {tp} cannot be read from a file")


# -- files -------------------------------------------------------------------------------------------------------
def read_config_file(path: str | Path) -> dict:
    """A YAML config file -> its (possibly partial) nested settings, checked against RunConfig."""
    import yaml

    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ReconError(f"--config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ReconError(f"--config {path}:{where} not valid YAML ({getattr(e, 'problem', None) or e})") from None
    data = data or {}
    try:
        from_dict(RunConfig, data)  # every setting known and well typed, before anything runs
    except ReconError as e:
        raise ReconError(f"--config {path}: {e}") from None
    return data


def run_config(file_settings: dict, flag_settings: dict) -> RunConfig:
    """Defaults, then the file's settings, then the flags'."""
    return from_dict(RunConfig, merge(file_settings, flag_settings))


def write_config(path: Path, config: RunConfig) -> None:
    import yaml

    from recon.outputs import atomic_write_text

    text = "# recon run --config this-file --out NEW_FOLDER repeats this run (flags given then override it)\n"
    atomic_write_text(path, text + yaml.safe_dump(to_dict(config), sort_keys=False))
