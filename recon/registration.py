"""How a model's predictions reach the map: a strategy each model's registry entry declares, so the
driver and the core never ask which model they run (ARCHITECTURE §1).

- `OverlappingWindows`: an offline model (GeometryModel) runs on windows that share `overlap` frames;
  each window is joined to the previous one through the shared frames (recon.align.fit_window).
- `AnchoredSteps`: a causal model (StreamingModel) takes consecutive groups without overlap; every
  prediction is already in its anchor frame's camera, so consecutive steps are related by the identity
  (and by the last camera when the model had to restart on a new anchor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, get_args

from recon.types import Frame, WindowPrediction

# How overlapping windows are joined (--align): one Sim(3), or a Sim(3) and then a scale per depth layer.
AlignMode = Literal["sim3", "lsa"]
ALIGN_MODES: tuple[str, ...] = get_args(AlignMode)


class Registration(Protocol):
    name: str

    def overlap(self, requested: int) -> int:
        """Frames consecutive windows share."""
        ...

    def start(self, model: Any) -> None:
        """A new sequence begins."""
        ...

    def predict(self, model: Any, frames: Sequence[Frame]) -> WindowPrediction: ...

    def in_flight(self, model: Any) -> int:
        """Windows the model may work on at once (results are still taken in stream order)."""
        ...

    def restart(self, model: Any) -> bool:
        """A prediction was unusable and dropped; True when the next prediction has a new anchor (the
        core must then continue from the last camera instead of joining through shared frames)."""
        ...


class OverlappingWindows:
    name = "overlapping"

    def overlap(self, requested: int) -> int:
        return requested

    def start(self, model: Any) -> None:
        pass

    def predict(self, model: Any, frames: Sequence[Frame]) -> WindowPrediction:
        return model.infer(frames)

    def in_flight(self, model: Any) -> int:
        return int(getattr(model, "windows_in_flight", 1))  # a model whose windows are independent may say more

    def restart(self, model: Any) -> bool:
        return False  # the scheduler's next window overlaps the last good one


class AnchoredSteps:
    name = "anchored"

    def overlap(self, requested: int) -> int:
        return 0  # the KV cache carries the context

    def start(self, model: Any) -> None:
        model.reset()  # the model's anchor is this run's first frame

    def predict(self, model: Any, frames: Sequence[Frame]) -> WindowPrediction:
        return model.step(frames)

    def in_flight(self, model: Any) -> int:
        return 1  # each step reads the cache the one before wrote

    def restart(self, model: Any) -> bool:
        model.reset()  # its cache holds the bad keys: start over from the next frame
        return True


REGISTRATIONS: dict[str, type[OverlappingWindows] | type[AnchoredSteps]] = {
    OverlappingWindows.name: OverlappingWindows,
    AnchoredSteps.name: AnchoredSteps,
}
