"""Tiny π³ networks, checkpoints in the official layout and the official key list, for the π³ tests (random
weights: the official checkpoint cannot be downloaded here)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from safetensors.torch import save_file

from recon.models.pi3_net import Pi3, Pi3Config, Pi3Output

KEYS_FILE = Path("/work/shared/specs/pi3_keys.txt")
if not KEYS_FILE.is_file():  # a checkout without the shared folder
    KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "specs" / "pi3_keys.txt"


def official_keys() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of all 1,210 entries of yyfz233/Pi3's state dict, in file order."""
    if not KEYS_FILE.is_file():
        import pytest

        pytest.skip(f"the official key list lives in ../shared/specs ({KEYS_FILE.name}), not in a clean clone")
    rows = [line.split("\t") for line in KEYS_FILE.read_text().splitlines() if line.strip()]
    return [(k, tuple(ast.literal_eval(s))) for k, s in rows]


def tiny_net(seed: int = 0) -> Pi3:
    """Tiny π³ with weights random enough that every path matters: LayerScale 0.5 (not 0.01, which would
    hide the decoder), register tokens of unit scale."""
    torch.manual_seed(seed)
    net = Pi3(Pi3Config.tiny())
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
            elif name.endswith("register_token"):
                p.normal_(0, 0.5)
    return net.eval()


def run(net: Pi3, images: torch.Tensor) -> Pi3Output:
    with torch.inference_mode():
        return net(images)


def flat(out: Pi3Output) -> dict[str, torch.Tensor]:
    """Per-frame outputs with the frame axis first: {name: [N, ...]}."""
    return {
        "points": out.points[0],
        "local_points": out.local_points[0],
        "conf": out.conf[0],
        "camera_poses": out.camera_poses[0],
    }


def write_checkpoint(net: Pi3, path: Path) -> None:
    """The official layout (our state dict: the same names) as .safetensors or a plain torch file."""
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
