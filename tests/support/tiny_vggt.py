"""Tiny VGGT networks, checkpoints in the official layout and test frames, shared by the VGGT and
StreamVGGT tests (random weights: no checkpoint can be downloaded here)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from recon.models.vggt import TRACK_HEAD_PREFIX
from recon.models.vggt_net import VGGT, VGGTConfig, VGGTOutput
from recon.types import Frame

KEYS_FILE = Path("/work/shared/specs/vggt_keys.txt")
if not KEYS_FILE.is_file():  # a checkout without the shared folder
    KEYS_FILE = Path(__file__).resolve().parents[2] / "shared" / "specs" / "vggt_keys.txt"


def official_keys() -> list[tuple[str, tuple[int, ...]]]:
    if not KEYS_FILE.is_file():
        import pytest

        pytest.skip(f"the official key list lives in ../shared/specs ({KEYS_FILE.name}), not in a clean clone")
    rows = [line.split("\t") for line in KEYS_FILE.read_text().splitlines() if line.strip()]
    return [(k, tuple(ast.literal_eval(s))) for k, s in rows]


def tiny_net(seed: int = 0) -> VGGT:
    """Tiny VGGT with weights random enough that every path matters: distinct token slots, LayerScale 0.5."""
    torch.manual_seed(seed)
    net = VGGT(VGGTConfig.tiny())
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.5)
            elif name.endswith(("camera_token", "register_token")):
                p.normal_(0, 0.5)
    return net.eval()


def run(net: VGGT, images: torch.Tensor, causal: bool = False) -> VGGTOutput:
    with torch.inference_mode():
        return net(images, causal_frames=causal)


def flat(out: VGGTOutput) -> dict[str, torch.Tensor]:
    """Per-frame outputs with the frame axis first: {name: [S, ...]}."""
    return {
        "pose_enc": out.pose_enc[0],
        "depth": out.depth[0],
        "depth_conf": out.depth_conf[0],
        "points": out.world_points[0],
        "points_conf": out.world_points_conf[0],
    }


def write_checkpoint(net: VGGT, path: Path) -> list[str]:
    """The official layout: our state dict + every track_head.* name of the official list (small dummy
    tensors: the loader must skip them by name, whatever their shape). Returns the track-head names."""
    track = [k for k, _ in official_keys() if k.startswith(TRACK_HEAD_PREFIX)]
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    state.update({k: torch.randn(2, 3) for k in track})
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return track


def frames_2x3(n: int, seed: int = 0, hw: tuple[int, int] = (60, 90)) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(index=10 + i, timestamp_s=float(i), image_rgb=rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
        for i in range(n)
    ]
