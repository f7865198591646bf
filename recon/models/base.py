"""Model protocols (DESIGN §3) and the registry behind `--model NAME`."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from recon.errors import ReconError
from recon.types import Frame, WindowPrediction


@runtime_checkable
class GeometryModel(Protocol):
    """Offline: a window of frames in, one WindowPrediction out (in the window's reference frame)."""

    name: str

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction: ...


@runtime_checkable
class StreamingModel(Protocol):
    """Causal: frames (one or a group) in per step; state (a KV cache) carried between steps;
    predictions in the anchor frame's coordinates."""

    name: str

    def step(self, frames: Sequence[Frame]) -> WindowPrediction: ...

    def reset(self) -> None: ...


# name -> "module:attribute"; imported only when picked so `recon --help` stays fast.
MODEL_FACTORIES: dict[str, str] = {
    "classical": "recon.models.classical:ClassicalModel",
    "vggt": "recon.models.vggt:VGGTModel",
    "streamvggt": "recon.models.streamvggt:StreamVGGTModel",
}

DEFAULT_MODEL = "classical"


def available_models() -> list[str]:
    return sorted(MODEL_FACTORIES)


def create_model(name: str, **options: Any) -> GeometryModel | StreamingModel:
    if name not in MODEL_FACTORIES:
        raise ReconError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    module_name, attr = MODEL_FACTORIES[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**options)
