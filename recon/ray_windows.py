"""`recon run FILE --workers N`: the model's windows inferred by N Ray actors, each holding its own model built
from the run's model name and settings (the driver never pickles a model, and never loads one). The driver
keeps the whole pipeline (reading, window cutting, the core's joins, graph and map, the files) and gets the
predictions back in stream order: `RayWindowModel` is a model to the pipeline, whose windows are in flight on
as many actors as there are workers, so at most that many windows (and the one cut ahead) are out at once
and the driver's memory stays flat. Only models whose windows are independent take workers: a causal model
carries its KV cache from step to step, on one machine."""

from __future__ import annotations

import queue
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from recon.errors import ReconError
from recon.models.base import create_model
from recon.ray_cluster import import_ray, start_ray
from recon.types import Frame, WindowPrediction


class WindowWorker:
    """The actor: one model, one window at a time."""

    def load(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Build the model (in a method, not the constructor: an error there comes back to the driver as
        itself) -> what the run's summary says of it."""
        self.model = m = create_model(name, **options)
        return {
            "metric": getattr(m, "metric", False),
            "scale_convention": getattr(m, "scale_convention", None),
            "settings": dict(getattr(m, "settings", {})),
        }

    def infer(self, frames: list[Frame]) -> tuple[dict[str, Any], list[str]]:
        """-> the prediction's fields, its tensors as numpy arrays, and which fields those are. Ray hands numpy
        arrays over without a copy of its own (torch's pickling copies each tensor through bytes: a 60 MB
        prediction took ~200 MB of the driver's memory at its peak)."""
        pred = self.model.infer(frames)  # type: ignore[union-attr]
        parts = {f.name: getattr(pred, f.name) for f in fields(pred)}
        tensors = {k: v.cpu().numpy() for k, v in parts.items() if isinstance(v, torch.Tensor)}
        return {**parts, **tensors}, list(tensors)


def _prediction(parts: dict[str, Any], tensor_fields: list[str]) -> WindowPrediction:
    """The prediction on the driver, checked as any prediction. Its tensors are Ray's arrays themselves,
    read-only views of the reply: a copy would double the driver's peak memory for each window in flight (a
    60 MB prediction), and nothing downstream writes into a prediction (tests/test_core.py holds it to that)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(parts[k]) for k in tensor_fields}
    return WindowPrediction(**{**parts, **tensors})


class RayWindowModel:
    """A GeometryModel whose windows run on `workers` Ray actors (started here, or on the cluster at
    `address`). Errors a worker meets (a bad checkpoint, NaN in a prediction) come back as themselves."""

    def __init__(self, name: str, options: dict[str, Any], workers: int, address: str | None = None) -> None:
        self._ray = import_ray("run --workers")
        if isinstance(weights := options.get("weights"), str) and Path(weights).exists():
            options = {**options, "weights": str(Path(weights).resolve())}  # the workers start elsewhere
        start_ray(self._ray, address)
        try:
            gpus = 1 if str(options.get("device") or "").startswith("cuda") else 0
            actor = self._ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(WindowWorker)
            self._actors = [actor.remote() for _ in range(workers)]
            loading = [a.load.remote(name, options) for a in self._actors]  # every worker's model, at once
            about, *_ = [self._get(ref) for ref in loading]  # all loaded before the run starts
        except BaseException:
            self._ray.shutdown()
            raise
        self.name, self.windows_in_flight = name, workers
        self.metric, self.settings = about["metric"], about["settings"]
        if about["scale_convention"] is not None:
            self.scale_convention = about["scale_convention"]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for a in self._actors:
            self._idle.put(a)

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        actor = self._idle.get()  # one window per worker: the pipeline never has more in flight
        try:
            return _prediction(*self._get(actor.infer.remote(list(frames))))
        finally:
            self._idle.put(actor)

    def close(self) -> None:
        self._ray.shutdown()

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the worker's own error (a one-line one, an out-of-memory), as locally
            raise
        except self._ray.exceptions.RayActorError as e:
            raise ReconError(f"a --workers worker died ({str(e).splitlines()[0]}); run without --workers") from None
