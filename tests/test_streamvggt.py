"""StreamVGGT: step-by-step streaming through the real KV cache equals the block-causal full forward,
a budgeted cache stays within its budget on a long stream (anchor and protected tokens kept), state
resets between sequences, and `recon run VIDEO --model streamvggt` works end to end. Tiny config, random
weights (no checkpoint can be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from support.tiny_vggt import frames_2x3, tiny_net, write_checkpoint

from recon.cache import CacheConfigError
from recon.errors import ReconError
from recon.models.base import StreamingModel, create_model
from recon.models.streamvggt import StreamVGGTModel
from recon.models.vggt_net import VGGT

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VGGT]:
    net = tiny_net(seed=1)
    path = tmp_path_factory.mktemp("streamvggt") / "tiny.safetensors"
    write_checkpoint(net, path)
    return path, net


def stream_model(path: Path, **options: object) -> StreamVGGTModel:
    model = create_model("streamvggt", weights=str(path), config="tiny", device="cpu", **options)
    assert isinstance(model, StreamVGGTModel) and isinstance(model, StreamingModel)
    return model


def test_none_policy_streaming_equals_the_block_causal_full_forward(checkpoint: tuple[Path, VGGT]) -> None:
    """Groups of 1, 2, 1, 3 frames through the unbounded cache = one causally masked forward over all 7:
    aggregator outputs, depth and points to 1e-5."""
    path, _ = checkpoint
    model = stream_model(path, cache="none", frames_per_step=3)
    images = torch.rand(7, 3, 28, 42, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        full_tokens = model.net.aggregate(images[None], causal_frames=True)
        full = model.net(images, causal_frames=True)
    sizes = (1, 2, 1, 3)
    bounds = np.cumsum((0,) + sizes)
    outs = [model.step_images(images[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    model.reset()  # the same stream again, keeping the aggregator's outputs
    streamed_tokens = [
        [t for t in model.aggregate_step(images[a:b]) if t is not None] for a, b in zip(bounds[:-1], bounds[1:])
    ]
    kept = [t for t in full_tokens if t is not None]
    for layer, full_layer in enumerate(kept):
        streamed = torch.cat([step[layer] for step in streamed_tokens], dim=1)
        assert torch.allclose(streamed, full_layer, atol=1e-5), layer
    depth = torch.cat([o.depth for o in outs], dim=1)
    points = torch.cat([o.world_points for o in outs], dim=1)
    assert torch.allclose(depth, full.depth, atol=1e-5, rtol=1e-5)
    assert torch.allclose(points, full.world_points, atol=1e-5, rtol=1e-5)
    # The camera head caches every refinement iteration (as the official code): close, not equal.
    poses = torch.cat([o.pose_enc for o in outs], dim=1)
    assert poses.shape == full.pose_enc.shape and torch.isfinite(poses).all()


def test_none_keeps_every_frame_in_the_camera_head_too(checkpoint: tuple[Path, VGGT]) -> None:
    """Unbounded means unbounded: with --cache none the camera head's cache keeps all frames (the official code),
    so every pose equals a run whose caches are bounded but never fill; a camera cache of the old 16 frames moves
    the poses from frame 18 on (anchor + 16 recent), and only those."""
    path, _ = checkpoint
    images = torch.rand(22, 3, 28, 42, generator=torch.Generator().manual_seed(9))

    def poses(model: StreamVGGTModel) -> torch.Tensor:
        return torch.cat([model.step_images(images[i : i + 1]).pose_enc for i in range(len(images))], dim=1)

    unbounded = stream_model(path, cache="none")
    got = poses(unbounded)
    assert unbounded.camera_kv is not None and set(unbounded.camera_kv.frames(0)) == set(range(22))
    roomy = stream_model(path, cache="queue", cache_budget=10_000, camera_frames=64)
    assert torch.equal(got, poses(roomy))
    sixteen = stream_model(path, cache="queue", cache_budget=10_000, camera_frames=16)
    old = poses(sixteen)
    assert torch.equal(old[:, :17], got[:, :17]) and not torch.allclose(old[:, 17:], got[:, 17:], atol=1e-6)
    assert unbounded.settings["camera_cache"] == "every frame" and sixteen.settings["camera_cache"] == 16


def test_a_budgeted_cache_stays_within_budget_over_2000_frames(checkpoint: tuple[Path, VGGT]) -> None:
    """Checked after every step (eviction runs before the write, so this is the peak): every layer within
    budget, the anchor frame whole, and the newest frames' camera/register tokens present."""
    path, _ = checkpoint
    model = stream_model(path, cache="keydiff", cache_budget=80, frames_per_step=4)
    images = torch.rand(4, 3, 28, 42, generator=torch.Generator().manual_seed(6))
    P, specials = 5 + 2 * 3, 5
    frames = 0
    while frames < 2000:
        model.step_images(images + 0.01 * (frames % 7))
        frames += 4
        kv = model.kv
        assert kv is not None
        for layer in range(model.config.depth):
            assert kv.tokens(layer) <= 80, (frames, layer)
            uid = kv.provenance(layer)[0]  # [H, N]
            frame_of, token_of = uid // P, uid % P
            for head in range(uid.shape[0]):
                assert int((frame_of[head] == 0).sum()) == P  # the anchor, whole
                newest = frame_of[head] == frames - 1
                assert int((newest & (token_of[head] < specials)).sum()) == specials
        assert model.camera_kv is not None and model.camera_kv.tokens(0) <= model.camera_kv.capacity
    assert kv.stats()["evicted_tokens"] > 0


def test_step_reports_cache_bytes_and_reset_starts_a_new_sequence(checkpoint: tuple[Path, VGGT]) -> None:
    path, _ = checkpoint
    model = stream_model(path, cache="queue", cache_budget=60, frames_per_step=2)
    frames = frames_2x3(6)
    preds = [model.step(frames[i : i + 2]) for i in range(0, 6, 2)]
    assert preds[0].frame_indices == [10, 11] and preds[-1].frame_indices == [14, 15]
    assert 0 < preds[0].info["cache_bytes"] <= preds[-1].info["cache_bytes"]
    assert preds[-1].info["cache_tokens"] <= 60 * model.config.depth
    # The anchor's pose is the identity after re-anchoring; the same correction holds for later steps.
    assert torch.allclose(preds[0].cam_from_world[0], torch.eye(4), atol=1e-5)
    first_again = model.step(frames[:2])  # no reset: frame 10 is now a later frame, not the anchor
    model.reset()
    assert model.kv is not None and model.kv.tokens(0) == 0
    fresh = model.step(frames[:2])
    assert torch.allclose(fresh.depth, preds[0].depth, atol=1e-6)
    assert not torch.allclose(first_again.depth, preds[0].depth, atol=1e-6)


def test_bad_cache_settings_are_one_line_errors(checkpoint: tuple[Path, VGGT]) -> None:
    path, _ = checkpoint
    with pytest.raises(CacheConfigError, match="needs a positive budget_tokens"):
        stream_model(path, cache="keydiff")
    model = stream_model(path, cache="keydiff", cache_budget=12)  # one frame is 11 tokens: anchor + new need 22
    with pytest.raises(CacheConfigError, match="smaller than one step needs: at least 22"):
        model.step(frames_2x3(1))
    model = stream_model(path, cache="none", frames_per_step=2)
    with pytest.raises(ReconError, match=r"a step takes 1\.\.2 frames, got 3"):
        model.step(frames_2x3(3))
    model.step(frames_2x3(1))
    with pytest.raises(ReconError, match="frame size changed mid-stream"):
        model.step(frames_2x3(1, hw=(90, 60)))


def write_video(path: Path, n: int) -> None:
    from recon.datasets import open_source

    frames = list(open_source("synthetic:street", max_frames=n))
    h, w = frames[0].hw
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    for f in frames:
        writer.write(cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2BGR))
    writer.release()


def test_recon_run_video_with_streamvggt_and_a_keydiff_budget(tmp_path: Path, checkpoint: tuple[Path, VGGT]) -> None:
    from recon.cli import main

    path, _ = checkpoint
    video = tmp_path / "street.avi"
    write_video(video, 12)
    out = tmp_path / "out"
    args = [
        "run",
        str(video),
        "--model",
        "streamvggt",
        "--weights",
        str(path),
        "--model-config",
        "tiny",
        "--cache",
        "keydiff",
        "--cache-budget",
        "60",
        "--window",
        "2",
        "--no-keyframes",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "streamvggt" and summary["status"] == "finished"
    assert "VGGT's own" in summary["scale"]["note"] and not summary["scale"]["metric"]
    assert summary["frames_in_trajectory"] == 12 and summary["windows"] == 6
    assert all(a["path"] == "anchored" for a in summary["alignment"])
    # The run says which weights, at which precision, on which device, with which cache made it.
    settings = summary["model_settings"]
    assert settings["weights"]["file"] == path.name and settings["weights"]["bytes"] == path.stat().st_size
    assert len(settings["weights"]["sha256"]) == 64 and settings["dtype"] == "float32" and settings["device"] == "cpu"
    assert settings["cache"] == "keydiff" and settings["cache_budget"] == 60 and settings["camera_cache"] == 16
    poses = np.loadtxt(out / "trajectory.tum")
    assert poses.shape == (12, 8) and np.allclose(poses[0, 1:], [0, 0, 0, 0, 0, 0, 1], atol=1e-5)
    assert (out / "map.ply").stat().st_size > 0


def test_camera_cache_flag_applies_to_a_bounded_streamvggt_cache_only(
    tmp_path: Path, checkpoint: tuple[Path, VGGT], capsys: pytest.CaptureFixture
) -> None:
    from recon.cli import main

    path, _ = checkpoint
    base = ["run", "synthetic:street", "--max-frames", "4", "--out", str(tmp_path / "o"), "--viewer", "none"]
    assert main([*base, "--camera-cache", "4"]) == 2
    assert "--camera-cache only apply to the learned models" in capsys.readouterr().err
    learned = ["--model", "streamvggt", "--weights", str(path), "--model-config", "tiny"]
    assert main([*base, *learned, "--cache", "none", "--camera-cache", "4"]) == 2
    assert "--cache none keeps every frame" in capsys.readouterr().err
    assert main([*base, *learned, "--cache", "queue", "--cache-budget", "60", "--camera-cache", "0"]) == 2
    assert "--camera-cache must be >= 1" in capsys.readouterr().err
