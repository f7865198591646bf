"""Model protocols (ARCHITECTURE §1) and the registry behind `--model NAME`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

from recon.errors import ReconError
from recon.types import Frame, WindowPrediction

if TYPE_CHECKING:
    from recon.windows import Registration


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


@dataclass(frozen=True)
class ModelEntry:
    """`factory`: "module:attribute", imported only when picked so `recon --help` stays fast.
    `registration`: how its predictions reach the map (a key of recon.windows.REGISTRATIONS).
    `learned`: it takes the learned-model options (--weights, --model-config, --dtype, --device)."""

    factory: str
    registration: str
    learned: bool = False


MODELS: dict[str, ModelEntry] = {
    "classical": ModelEntry("recon.models.classical:ClassicalModel", "overlapping"),
    "vggt": ModelEntry("recon.models.vggt:VGGTModel", "overlapping", learned=True),
    "streamvggt": ModelEntry("recon.models.streamvggt:StreamVGGTModel", "anchored", learned=True),
    "pi3": ModelEntry("recon.models.pi3:Pi3Model", "overlapping", learned=True),
}

DEFAULT_MODEL = "classical"

# Compute precisions a learned model takes (--dtype); recon.models.vggt maps them to torch dtypes.
DtypeName = Literal["fp32", "bf16", "fp16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)


def available_models() -> list[str]:
    return sorted(MODELS)


def learned_models() -> list[str]:
    """The models that take weights (registry order)."""
    return [name for name, entry in MODELS.items() if entry.learned]


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ReconError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return MODELS[name]


def model_factory(name: str) -> Callable[..., GeometryModel | StreamingModel]:
    """Model `name`'s class, its module (and the libraries it needs) imported."""
    module_name, attr = model_entry(name).factory.split(":")
    return getattr(importlib.import_module(module_name), attr)


def create_model(name: str, **options: Any) -> GeometryModel | StreamingModel:
    return model_factory(name)(**options)


def registration_for(name: str) -> Registration:
    """The registration strategy model `name` declares."""
    from recon.windows import REGISTRATIONS

    return REGISTRATIONS[model_entry(name).registration]()
