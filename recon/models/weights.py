"""Safe, strict checkpoint loading.

A checkpoint is read as data only: `.safetensors` through safetensors, anything else through
`torch.load(weights_only=True)`, which refuses a pickle that would run code (we turn that into a
`ModelError`; we never fall back to a full unpickle). Then the names and shapes are checked against the
module exactly; prefixes a model knowingly does not build (VGGT's `track_head.`) are skipped and counted."""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recon.errors import ModelError

SHOW = 5  # keys listed per category in a report (all are counted)


def weights_identity(path: str | Path) -> dict[str, Any]:
    """What summary.json records of a checkpoint: its file name, size and SHA-256 (a run says which weights made
    it; one more read of the file, at most seconds beside loading it)."""
    import hashlib

    p = Path(path)
    with open(p, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"file": p.name, "bytes": p.stat().st_size, "sha256": digest}


class LoadedNetwork:
    """What every learned model reports of its loaded network: `net` (with `amp_dtype`), `device` and
    `weights_file` (weights_identity) are set by the model's constructor."""

    net: Any
    device: torch.device
    weights_file: dict[str, Any]

    @property
    def dtype_name(self) -> str:
        """The compute precision as predictions report it ("float32", "bfloat16", ...)."""
        return str(self.net.amp_dtype).removeprefix("torch.")

    @property
    def settings(self) -> dict[str, object]:
        """What summary.json records of the model: its weights (name, size, hash), dtype and device."""
        return {"weights": self.weights_file, "dtype": self.dtype_name, "device": str(self.device)}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """File -> {name: tensor} on the CPU, without executing anything from the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; pass --weights PATH to a .safetensors or .pt checkpoint")
    state: Any  # whatever the file holds, checked below
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ModelError(f"cannot read safetensors file {path}: {e}") from None
    else:
        try:
            try:  # mmap: a 5 GB checkpoint is paged in as it is copied, not read whole first
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as e:
            reason = str(e).strip().splitlines()[-1][:200]
            raise ModelError(
                f"refusing {path}: not a weights-only torch file (loading it would run pickled code, or it is not a "
                f"torch file); convert it to .safetensors or a plain state dict ({reason})"
            ) from None
        except (
            Exception
        ) as e:  # a corrupt or foreign file fails anywhere inside the unpickler (KeyError, ValueError, ...)
            raise ModelError(
                f"cannot read torch file {path}: {type(e).__name__}: {e}; is it a PyTorch checkpoint?"
            ) from None
        # Training checkpoints often nest the weights one level down.
        for key in ("model", "state_dict"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping) and len(state) <= 4:
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


@dataclass
class LoadReport:
    path: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)  # knowingly skipped (e.g. track_head.*)
    missing: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (name, expected shape)
    unexpected: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (name, file shape)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )  # (name, expected, file)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (
            f"{self.path}: {self.loaded} tensors loaded, {len(self.skipped)} skipped knowingly, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} with the wrong shape"
        )

    def details(self) -> str:
        """The summary and the first SHOW keys of each kind with their shapes, on one line: it becomes the
        one-line error a user reads."""

        def shape(s: Sequence[int]) -> str:
            return "[" + ", ".join(map(str, s)) + "]"

        parts = [self.summary()]
        for title, rows in (
            ("missing (expected shape)", [f"{k} {shape(s)}" for k, s in self.missing]),
            ("unexpected (shape in file)", [f"{k} {shape(s)}" for k, s in self.unexpected]),
            (
                "wrong shape (expected vs file)",
                [f"{k}: expected {shape(e)}, file has {shape(f)}" for k, e, f in self.mismatched],
            ),
        ):
            if rows:
                more = f" (+{len(rows) - SHOW} more)" if len(rows) > SHOW else ""
                parts.append(f"{title}: " + ", ".join(rows[:SHOW]) + more)
        return "; ".join(parts)


def check_state_dict(
    module: nn.Module, state: Mapping[str, Tensor], skip_prefixes: Sequence[str] = (), path: str = "<state dict>"
) -> tuple[dict[str, Tensor], LoadReport]:
    """Strict name/shape comparison; returns the entries to load (skipped ones removed) and the report."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    report = LoadReport(path=path)
    keep: dict[str, Tensor] = {}
    for k, v in state.items():
        if any(k.startswith(p) for p in skip_prefixes):
            report.skipped.append(k)
        elif k not in expected:
            report.unexpected.append((k, tuple(v.shape)))
        elif tuple(v.shape) != expected[k]:
            report.mismatched.append((k, expected[k], tuple(v.shape)))
        else:
            keep[k] = v
    report.missing = [(k, s) for k, s in expected.items() if k not in state]
    report.loaded = len(keep)
    return keep, report


def load_weights(
    module: nn.Module,
    path: str | Path,
    device: str | torch.device = "cpu",
    skip_prefixes: Sequence[str] = (),
) -> LoadReport:
    """Strictly load `path` into `module` (which may live on the meta device: tensors are assigned, so a
    1B model never exists twice in memory), as float32 on `device`. Raises ModelError with the readable
    report (a few keys of each kind with shapes, counts of all) when anything does not match."""
    state = read_state_dict(path)
    keep, report = check_state_dict(module, state, skip_prefixes, str(path))
    if not report.ok:
        raise ModelError(
            f"weights do not match the model: {report.details()}; check --model and --model-config match the checkpoint"
        )
    for k, v in keep.items():
        if not v.is_floating_point():
            raise ModelError(f"{path}: tensor {k} has dtype {v.dtype}, expected floating point")
        keep[k] = v.to(device=device, dtype=torch.float32)
    module.load_state_dict(keep, strict=True, assign=True)
    module.to(device)  # anything without a key (nothing, for VGGT) follows
    return report
