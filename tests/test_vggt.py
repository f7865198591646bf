"""VGGT: architecture = official checkpoint layout (1B on the meta device), strict safe loading, the
GeometryModel contract, preprocessing map, frame-0 anchoring, causal option and the KV-hook seam.
All on the tiny config with random weights (no checkpoint can be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support.tiny_vggt import flat, frames_2x3, official_keys, run, tiny_net, write_checkpoint

from recon.errors import ModelError, ReconError
from recon.models.base import create_model
from recon.models.dpt import ResidualConvUnit
from recon.models.vggt import TRACK_HEAD_PREFIX, VGGTModel, load_vggt, plan_vggt_resize, preprocess
from recon.models.vggt_layers import Attention, RotaryPositionEmbedding2D, frame_causal_mask
from recon.models.vggt_net import VGGT, VGGTConfig, pose_encoding_to_extrinsics_intrinsics
from recon.types import Frame, WindowPrediction

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VGGT]:
    net = tiny_net()
    path = tmp_path_factory.mktemp("vggt") / "tiny.safetensors"
    write_checkpoint(net, path)
    return path, net


# -- architecture = checkpoint layout ---------------------------------------------------------------------


def test_1b_config_on_meta_matches_the_official_key_list() -> None:
    with torch.device("meta"):
        net = VGGT(VGGTConfig.vggt_1b())
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    official = official_keys()
    assert len(official) == 1797
    track = [k for k, _ in official if k.startswith(TRACK_HEAD_PREFIX)]
    rest = [(k, s) for k, s in official if not k.startswith(TRACK_HEAD_PREFIX)]
    assert len(track) == 394 and len(rest) == 1403
    assert ours == rest  # names, shapes and state-dict order
    assert sum(p.numel() for p in net.parameters()) == 1_256_537_516 - 65_941_396
    assert not list(net.buffers())  # nothing non-parameter would be missing after a meta-device load


# -- loading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_official_layout_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path: Path, suffix: str) -> None:
    net = tiny_net(seed=1)
    path = tmp_path / f"model{suffix}"
    track = write_checkpoint(net, path)
    loaded, report = load_vggt(path, VGGTConfig.tiny())
    assert report.ok and report.loaded == len(net.state_dict())
    assert sorted(report.skipped) == sorted(track) and len(report.skipped) == 394
    images = torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    a, b = flat(run(net, images)), flat(run(loaded, images))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_wrong_key_and_wrong_shape_give_a_readable_report(tmp_path: Path) -> None:
    net = tiny_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["aggregator.frame_blocks.0.attn.qkv.bais"] = state.pop("aggregator.frame_blocks.0.attn.qkv.bias")
    state["depth_head.norm.weight"] = torch.zeros(100)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError) as err:
        load_vggt(path, VGGTConfig.tiny())
    msg = str(err.value)
    assert "1 missing" in msg and "1 unexpected" in msg and "1 with the wrong shape" in msg
    assert "aggregator.frame_blocks.0.attn.qkv.bias [192]" in msg  # missing, with the expected shape
    assert "aggregator.frame_blocks.0.attn.qkv.bais [192]" in msg  # unexpected, with the file's shape
    assert "depth_head.norm.weight: expected [128], file has [100]" in msg


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling would call open(marker, "w"): a side effect we can observe
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"aggregator.camera_token": torch.zeros(1), "x": _RunsCode(marker)}, path)
    with pytest.raises(ModelError, match="not a weights-only torch file"):
        load_vggt(path, VGGTConfig.tiny())
    assert not marker.exists()


def test_missing_weights_is_a_one_line_error() -> None:
    with pytest.raises(ReconError) as err:
        create_model("vggt")
    assert "--weights" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        create_model("vggt", weights="/nonexistent/model.safetensors", config="tiny")


# -- the GeometryModel contract ---------------------------------------------------------------------------


def test_forward_satisfies_the_contract(tiny_checkpoint: tuple[Path, VGGT]) -> None:
    model = create_model("vggt", weights=tiny_checkpoint[0], config="tiny", device="cpu")
    assert isinstance(model, VGGTModel)
    frames = frames_2x3(3)
    pred = model.infer(frames)
    assert isinstance(pred, WindowPrediction)  # validated on construction (shapes, dtypes, rigid poses, K)
    assert pred.frame_indices == [10, 11, 12] and pred.hw == (28, 42) and not pred.metric
    assert bool((pred.depth > 0).all())
    assert bool((pred.depth_conf >= 1).all()) and bool((pred.points_conf >= 1).all())
    assert torch.allclose(pred.cam_from_world[0], torch.eye(4), atol=1e-5)
    assert torch.allclose(pred.K[:, 0, 2], torch.tensor(21.0)) and torch.allclose(pred.K[:, 1, 2], torch.tensor(14.0))
    assert "frame0_rotation_deg" in pred.info
    # Re-anchoring is one rigid change of coordinates: poses and points move together.
    raw = model.forward_images(preprocess(frames, 42)[0])
    T_raw, _ = pose_encoding_to_extrinsics_intrinsics(raw.pose_enc[0].double(), (28, 42))
    p_raw = raw.world_points[0].double()
    cam1_raw = p_raw[1] @ T_raw[1, :3, :3].T + T_raw[1, :3, 3]  # frame-1 camera coordinates, before
    T_new = pred.cam_from_world[1].double()
    cam1_new = pred.points[1].double() @ T_new[:3, :3].T + T_new[:3, 3]  # ... and after re-anchoring
    assert torch.allclose(cam1_raw, cam1_new, atol=1e-3)


def test_bf16_runs_the_aggregator_in_bf16_and_heads_in_fp32(tiny_checkpoint: tuple[Path, VGGT]) -> None:
    model = VGGTModel(weights=tiny_checkpoint[0], config="tiny", dtype="bf16", device="cpu")
    ref = VGGTModel(weights=tiny_checkpoint[0], config="tiny", dtype="fp32", device="cpu")
    frames = frames_2x3(2)
    a, b = model.infer(frames), ref.infer(frames)
    assert a.info["dtype"] == "bfloat16" and a.depth.dtype == torch.float32
    assert not torch.equal(a.depth, b.depth)  # bf16 really was used
    assert float(((a.depth - b.depth).abs() / b.depth).max()) < 0.1


def test_resize_map_sends_model_pixels_back_to_original_pixels() -> None:
    # Portrait 100x200 -> width 42, height round(200*42/100/14)*14 = 84 -> centre crop rows 21..62.
    h, w = 200, 100
    v, u = np.mgrid[0:h, 0:w]
    img = np.stack([2 * u, v, np.zeros_like(u)], axis=-1).astype(np.uint8)  # ramps encode the original pixel
    images, rmap = preprocess([Frame(0, 0.0, img)], img_size=42)
    assert images.shape == (1, 3, 42, 42) and rmap.model_hw == (42, 42)
    vm, um = np.mgrid[0:42, 0:42]
    uv_orig = rmap.to_original(np.stack([um, vm], axis=-1).reshape(-1, 2).astype(float)).reshape(42, 42, 2)
    interior = (uv_orig[..., 0] > 4) & (uv_orig[..., 0] < w - 5)  # away from the clamped image border
    got_u = images[0, 0].double().numpy() * 255 / 2
    got_v = images[0, 1].double().numpy() * 255
    assert np.abs(got_u - uv_orig[..., 0])[interior].max() < 0.8
    assert np.abs(got_v - uv_orig[..., 1]).max() < 1.0
    # The released config: width 518, half-even rounding of the height, crop when taller.
    (rw, rh), top, m = plan_vggt_resize((480, 640))
    assert (rw, rh, top, m.model_hw) == (518, 392, 0, (392, 518))
    assert np.allclose(m.to_original(np.array([[-0.5, -0.5], [517.5, 391.5]])), [[-0.5, -0.5], [639.5, 479.5]])
    (rw, rh), top, m = plan_vggt_resize((1000, 500))
    assert (rh, top, m.model_hw) == (1036, 259, (518, 518))
    assert np.allclose(m.to_original(np.array([[258.5, 258.5]])), [[249.5, 499.5]])  # centre -> centre


# -- frame 0 defines the world; causal option; the KV-hook seam -------------------------------------------


def test_permuting_frames_after_the_first_permutes_the_outputs() -> None:
    net = tiny_net()
    images = torch.rand(4, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    perm = [0, 3, 1, 2]
    a, b = flat(run(net, images)), flat(run(net, images[perm]))
    for name in a:
        assert torch.allclose(a[name][perm], b[name], atol=1e-5, rtol=1e-4), name
    c = flat(run(net, images[[1, 0, 2, 3]]))  # moving the anchor changes the world: not a permutation
    assert not torch.allclose(a["pose_enc"][[1, 0, 2, 3]], c["pose_enc"], atol=1e-4)


def test_causal_frames_earlier_outputs_ignore_later_frames() -> None:
    net = tiny_net()
    g = torch.Generator().manual_seed(2)
    images = torch.rand(4, 3, 28, 42, generator=g)
    changed = images.clone()
    changed[2:] = torch.rand(2, 3, 28, 42, generator=g)
    a, b = flat(run(net, images, causal=True)), flat(run(net, changed, causal=True))
    for name in a:
        assert torch.equal(a[name][:2], b[name][:2]) or torch.allclose(a[name][:2], b[name][:2], atol=1e-6), name
        assert not torch.allclose(a[name][2:], b[name][2:], atol=1e-6), name
    full_a, full_b = flat(run(net, images)), flat(run(net, changed))
    assert not torch.allclose(full_a["depth"][:2], full_b["depth"][:2], atol=1e-6)  # non-causal does see them


def test_global_kv_hooks_stream_frames_like_the_causal_forward() -> None:
    """The seam StreamVGGT builds on: one frame per call, each global block's hook appends (k, v) to a
    cache and returns all of it; equals the causally masked full forward."""
    net = tiny_net()
    images = torch.rand(1, 3, 3, 28, 42, generator=torch.Generator().manual_seed(3))
    depth = net.cfg.depth
    with torch.inference_mode():
        full = net.aggregator(images, causal_frames=True)
        cache: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(depth)]

        def hook(k_idx: int):
            def fn(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                cache[k_idx].append((k, v))
                return torch.cat([c[0] for c in cache[k_idx]], dim=2), torch.cat([c[1] for c in cache[k_idx]], dim=2)

            return fn

        hooks = [hook(i) for i in range(depth)]
        steps = [net.aggregator(images[:, s : s + 1], global_kv=hooks, includes_anchor=(s == 0)) for s in range(3)]
    for k in range(depth):
        streamed = torch.cat([st[k] for st in steps], dim=1)
        assert torch.allclose(streamed, full[k], atol=1e-5), k


# -- layer gotchas ----------------------------------------------------------------------------------------


def test_rope_pairs_channel_i_with_i_plus_quarter_and_y_first() -> None:
    rope = RotaryPositionEmbedding2D(100.0)
    t = torch.zeros(1, 1, 1, 16)
    t[..., 0] = 1.0  # channel 0 of the y half pairs with channel 4
    out = rope(t, torch.tensor([[[1, 0]]]))  # y = 1, x = 0; inv_freq_0 = 1
    assert torch.allclose(out[0, 0, 0, [0, 4]], torch.tensor([np.cos(1.0), np.sin(1.0)], dtype=torch.float32))
    assert torch.allclose(rope(t, torch.tensor([[[0, 3]]])), t)  # the x position leaves the y half alone
    r = torch.randn(1, 2, 1, 16)
    assert torch.equal(rope(r, torch.zeros(1, 1, 2, dtype=torch.long)), r)  # special tokens at (0, 0): identity


def test_residual_conv_unit_skip_adds_rectified_input() -> None:
    rcu = ResidualConvUnit(4)
    with torch.no_grad():
        for p in rcu.parameters():
            p.zero_()
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(rcu(x), torch.relu(x))


def test_frame_by_frame_causal_attention_equals_the_dense_mask() -> None:
    torch.manual_seed(4)
    attn = Attention(32, 4, qk_norm=True, rope=RotaryPositionEmbedding2D())
    x, pos = torch.randn(2, 3 * 5, 32), torch.randint(0, 4, (2, 3 * 5, 2))
    q, k, v = attn.compute_qkv(x, pos)
    dense = attn.attend(q, k, v, frame_causal_mask(15, 15, 5, x.device))
    assert torch.allclose(attn(x, pos, frame_tokens=5), dense, atol=1e-6)
    # With 2 cached frames prepended by a kv hook: all past keys visible, current frames block-causal.
    k_past, v_past = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    hook = lambda k_, v_: (torch.cat((k_past, k_), 2), torch.cat((v_past, v_), 2))  # noqa: E731
    k2, v2 = hook(k, v)
    dense = attn.attend(q, k2, v2, frame_causal_mask(15, 25, 5, x.device))
    assert torch.allclose(attn(x, pos, frame_tokens=5, kv_fn=hook), dense, atol=1e-6)


def test_recon_run_with_a_tiny_vggt_checkpoint_end_to_end(tmp_path: Path) -> None:
    """`recon run --model vggt --weights CKPT`: the pipeline runs a learned model window by window."""
    import json

    from safetensors.torch import save_file

    from recon.cli import main
    from recon.models.vggt_net import VGGT, VGGTConfig

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in VGGT(VGGTConfig.tiny()).state_dict().items()}, str(ckpt))
    out = tmp_path / "out"
    args = [
        "run",
        "synthetic:street",
        "--max-frames",
        "16",
        "--model",
        "vggt",
        "--weights",
        str(ckpt),
        "--model-config",
        "tiny",
        "--window",
        "8",
        "--overlap",
        "2",
        "--out",
        str(out),
        "--depth-every",
        "0",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "vggt" and summary["status"] == "finished" and summary["frames_in_trajectory"] == 16
    # The run's units are the model's own convention, not the classical model's.
    assert "VGGT's own" in summary["scale"]["note"] and "sparse depth" not in summary["scale"]["note"]


def test_a_corrupt_weights_file_is_a_model_error(tmp_path: Path) -> None:
    from recon.errors import ModelError
    from recon.models.weights import read_state_dict

    for name in ("junk.pt", "junk.safetensors"):
        path = tmp_path / name
        path.write_text("junk\n")
        with pytest.raises(ModelError, match="cannot read"):
            read_state_dict(path)
