"""π³: architecture = official checkpoint layout (full config on the meta device), strict safe loading,
permutation equivariance, determinism, output conventions, the GeometryModel contract (first-frame world,
K from rays, sigmoid confidence, the resize map), and `recon run --model pi3` end to end.
All on the tiny config with random weights (the official checkpoint cannot be downloaded here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support.tiny_pi3 import flat, official_keys, run, tiny_net, write_checkpoint
from support.tiny_vggt import frames_2x3

from recon.errors import ModelError, ReconError
from recon.models.base import MODELS, create_model, registration_for
from recon.models.pi3 import (
    Pi3Model,
    intrinsics_from_local_points,
    load_pi3,
    pi3_target_size,
    plan_pi3_resize,
    preprocess,
)
from recon.models.pi3_net import Pi3, Pi3Config, rotation_from_9d
from recon.models.vggt_layers import Block, DinoViT
from recon.types import WindowPrediction

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pi3]:
    net = tiny_net()
    path = tmp_path_factory.mktemp("pi3") / "tiny.safetensors"
    write_checkpoint(net, path)
    return path, net


def _images(n: int, seed: int = 0, hw: tuple[int, int] = (28, 42)) -> torch.Tensor:
    return torch.rand(n, 3, *hw, generator=torch.Generator().manual_seed(seed))


# -- architecture = checkpoint layout ---------------------------------------------------------------------


def test_full_config_on_meta_matches_the_official_key_list() -> None:
    with torch.device("meta"):
        net = Pi3(Pi3Config.pi3())
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    official = official_keys()
    assert len(official) == 1210 and len(ours) == 1210
    assert ours == dict(official)  # every name with its shape, nothing more
    assert sum(p.numel() for p in net.parameters()) == 958_696_732  # spec §11.2
    assert sorted(k for k, _ in net.named_buffers()) == ["image_mean", "image_std"]  # persistent, in the file
    assert "encoder.mask_token" not in ours  # deleted in π³


def test_head_decoders_have_no_layerscale_or_qk_norm_and_the_decoder_alternates() -> None:
    net = Pi3(Pi3Config.tiny())
    head_block = net.point_decoder.blocks[0]
    assert isinstance(head_block.ls1, torch.nn.Identity) and isinstance(head_block.attn.q_norm, torch.nn.Identity)
    assert head_block.norm1.eps == 1e-6 and net.decoder[0].norm1.eps == 1e-6
    assert isinstance(net.decoder[0].attn.q_norm, torch.nn.LayerNorm) and net.decoder[0].attn.q_norm.eps == 1e-5
    assert net.rope.base_frequency == 100.0 and net.point_decoder.blocks[0].attn.rope is net.rope
    assert net.conf_decoder.projects.weight.data_ptr() != net.point_decoder.projects.weight.data_ptr()


def test_shared_blocks_keep_vggts_defaults() -> None:
    """The new options default to VGGT's behaviour: LayerScale and the DINO mask token exist."""
    block = Block(16, 2)
    assert hasattr(block.ls1, "gamma") and hasattr(block.ls2, "gamma")
    dino = DinoViT(28, 14, 16, 1, 2, 4)
    assert "mask_token" in dict(dino.named_parameters())
    assert "mask_token" not in dict(DinoViT(28, 14, 16, 1, 2, 4, mask_token=False).named_parameters())


# -- loading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_official_layout_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path: Path, suffix: str) -> None:
    net = tiny_net(seed=1)
    path = tmp_path / f"model{suffix}"
    write_checkpoint(net, path)
    loaded, report = load_pi3(path, Pi3Config.tiny())
    assert report.ok and report.loaded == len(net.state_dict()) and not report.skipped
    images = _images(2)
    a, b = flat(run(net, images)), flat(run(loaded, images))
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    "edit, expected",
    [
        ("missing", "missing (expected shape): conf_head.proj.bias [196]"),
        ("extra", "unexpected (shape in file): encoder.mask_token [1, 64]"),
        ("shape", "camera_head.fc_t.weight: expected [3, 32], file has [4, 32]"),
    ],
)
def test_a_missing_extra_or_misshaped_key_is_a_one_line_error_naming_it(
    tmp_path: Path, edit: str, expected: str
) -> None:
    state = {k: v.clone().contiguous() for k, v in tiny_net().state_dict().items()}
    if edit == "missing":
        del state["conf_head.proj.bias"]
    elif edit == "extra":
        state["encoder.mask_token"] = torch.zeros(1, 64)  # a VGGT-style DINO key π³ does not have
    else:
        state["camera_head.fc_t.weight"] = torch.zeros(4, 32)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError) as err:
        load_pi3(path, Pi3Config.tiny())
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


def test_a_vggt_checkpoint_is_refused_by_pi3(tmp_path: Path) -> None:
    from support.tiny_vggt import tiny_net as tiny_vggt
    from support.tiny_vggt import write_checkpoint as write_vggt

    path = tmp_path / "vggt.safetensors"
    write_vggt(tiny_vggt(), path)
    with pytest.raises(ModelError, match="weights do not match the model"):
        load_pi3(path, Pi3Config.tiny())


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling would call open(marker, "w"): a side effect we can observe
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"register_token": torch.zeros(1), "x": _RunsCode(marker)}, path)
    with pytest.raises(ModelError, match="not a weights-only torch file"):
        load_pi3(path, Pi3Config.tiny())
    assert not marker.exists()


def test_bad_options_are_one_line_errors(tiny_checkpoint: tuple[Path, Pi3]) -> None:
    with pytest.raises(ReconError) as err:
        create_model("pi3")
    assert "--weights" in str(err.value) and "\n" not in str(err.value)
    for kwargs, match in (
        ({"config": "huge"}, "unknown config"),
        ({"config": "tiny", "dtype": "fp8"}, "unsupported dtype"),
        ({"config": "tiny", "cache": "keydiff"}, "unknown options cache"),
        ({"config": "tiny", "device": "nonsense"}, "--device"),
    ):
        with pytest.raises(ReconError, match=match):
            create_model("pi3", weights=tiny_checkpoint[0], **kwargs)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_dtypes_run_and_heads_stay_float32(tiny_checkpoint: tuple[Path, Pi3], dtype: str) -> None:
    net, _ = load_pi3(tiny_checkpoint[0], Pi3Config.tiny(), dtype=dtype)
    out = run(net, _images(2))
    for name, t in flat(out).items():
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all()), name


# -- the network: equivariance, determinism, conventions --------------------------------------------------


def test_permuting_frames_permutes_the_outputs() -> None:
    net = tiny_net(seed=2)
    images = _images(4, seed=3)
    perm = torch.tensor([2, 0, 3, 1])
    a, b = flat(run(net, images)), flat(run(net, images[perm]))
    for name in a:
        assert torch.allclose(a[name][perm], b[name], atol=1e-5), name


def test_outputs_differ_when_frames_see_each_other() -> None:
    """Global attention is live: a frame's output changes when another frame changes (else equivariance
    would hold trivially)."""
    net = tiny_net(seed=2)
    images = _images(3, seed=4)
    other = images.clone()
    other[2] = _images(1, seed=5)[0]
    a, b = flat(run(net, images)), flat(run(net, other))
    assert not torch.allclose(a["local_points"][0], b["local_points"][0], atol=1e-6)


def test_two_runs_are_identical() -> None:
    images = _images(3)
    a, b = flat(run(tiny_net(seed=4), images)), flat(run(tiny_net(seed=4), images))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_output_shapes_and_conventions() -> None:
    out = run(tiny_net(seed=5), _images(3).reshape(1, 3, 3, 28, 42))
    assert tuple(out.points.shape) == (1, 3, 28, 42, 3) and tuple(out.local_points.shape) == (1, 3, 28, 42, 3)
    assert tuple(out.conf.shape) == (1, 3, 28, 42, 1) and tuple(out.camera_poses.shape) == (1, 3, 4, 4)
    R = out.camera_poses[0, :, :3, :3].double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(3, dtype=R.dtype), atol=1e-5)
    assert torch.equal(out.camera_poses[0, :, 3], torch.tensor([0.0, 0, 0, 1]).expand(3, 4))
    assert bool((out.local_points[..., 2] > 0).all())
    # world points = camera-to-world pose applied to the local points
    P = out.camera_poses[0]
    world = torch.einsum("nij,nhwj->nhwi", P[:, :3, :3], out.local_points[0]) + P[:, None, None, :3, 3]
    assert torch.allclose(world, out.points[0], atol=1e-5)


def test_point_head_is_exp_depth_times_rays_and_pixel_shuffle_layout() -> None:
    """Channel c·p² + i·p + j of patch (r, s) lands on pixel (p·r + i, p·s + j); z = exp, x·z, y·z."""
    from recon.models.pi3_net import LinearPixelShuffleHead

    head = LinearPixelShuffleHead(4, 3, 14)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(588, dtype=torch.float32))
    out = head(torch.zeros(1, 2 * 3, 4), 2, 3)  # [1, 28, 42, 3]
    for c, i, j, r, s in ((0, 0, 0, 0, 0), (1, 3, 5, 1, 2), (2, 13, 13, 1, 0)):
        assert out[0, 14 * r + i, 14 * s + j, c] == c * 196 + i * 14 + j


def test_rotation_from_9d_is_the_nearest_proper_rotation() -> None:
    g = torch.Generator().manual_seed(0)
    M = torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    R = rotation_from_9d(M)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-10)
    assert torch.allclose(torch.det(R), torch.ones(64, dtype=torch.float64), atol=1e-10)
    # A rotation is returned unchanged; a scaled-row rotation too (rows are normalised first).
    Q = rotation_from_9d(torch.randn(8, 3, 3, generator=g, dtype=torch.float64))
    assert torch.allclose(rotation_from_9d(Q * torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)[:, None]), Q)
    # Nearest: no other proper rotation (here: small perturbations of R) is closer to the normalised M.
    Mn = torch.nn.functional.normalize(M[0], dim=-1)
    best = (R[0] - Mn).norm()
    for _ in range(20):
        w = torch.randn(3, generator=g, dtype=torch.float64) * 0.05
        W = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]], dtype=torch.float64)
        assert (torch.linalg.matrix_exp(W) @ R[0] - Mn).norm() >= best - 1e-12


# -- the GeometryModel ------------------------------------------------------------------------------------


def test_registry_entry() -> None:
    assert MODELS["pi3"].registration == "overlapping" and MODELS["pi3"].learned
    assert type(registration_for("pi3")).__name__ == type(registration_for("vggt")).__name__


def test_infer_satisfies_the_contract_in_the_first_frames_camera(tiny_checkpoint: tuple[Path, Pi3]) -> None:
    model = create_model("pi3", weights=tiny_checkpoint[0], config="tiny", device="cpu")
    assert isinstance(model, Pi3Model) and not model.metric and "π³" in model.scale_convention
    frames = frames_2x3(4, hw=(60, 90))
    pred = model.infer(frames)
    assert isinstance(pred, WindowPrediction)  # validated: shapes, dtypes, rigid poses, K
    assert pred.frame_indices == [10, 11, 12, 13] and not pred.metric
    assert torch.allclose(pred.cam_from_world[0], torch.eye(4), atol=1e-5)  # world = first camera
    assert bool((pred.depth > 0).all())
    assert bool((pred.depth_conf >= 0).all()) and bool((pred.depth_conf <= 1).all())
    # The same network, run directly: depth = local z, conf = sigmoid(logits), points = local placed by the pose.
    images, rmap = preprocess(frames, model.config)
    assert rmap == pred.resize and tuple(images.shape[-2:]) == pred.hw
    raw = model.forward_images(images)
    assert torch.allclose(pred.depth, raw.local_points[0, ..., 2])
    assert torch.allclose(pred.depth_conf, torch.sigmoid(raw.conf[0, ..., 0]))
    world_from_cam = torch.linalg.inv(pred.cam_from_world.double())
    local = raw.local_points[0].double()
    placed = torch.einsum("nij,nhwj->nhwi", world_from_cam[:, :3, :3], local) + world_from_cam[:, None, None, :3, 3]
    assert torch.allclose(placed.float(), pred.points, atol=1e-4)
    # Relative poses are π³'s own: cam_i_from_cam_j is unchanged by the change of world.
    P = raw.camera_poses[0].double()
    rel_net = torch.linalg.inv(P[2]) @ P[1]
    rel_pred = pred.cam_from_world[2].double() @ world_from_cam[1]
    assert torch.allclose(rel_net, rel_pred, atol=1e-4)


def test_preprocessing_respects_the_pixel_budget_and_the_map_is_exact() -> None:
    cfg = Pi3Config.pi3()
    budget = cfg.max_pixels
    for hw in ((480, 640), (192, 640), (1080, 1920), (640, 480), (376, 1241)):
        width, height = pi3_target_size(hw, cfg.max_pixels)
        assert width % 14 == 0 and height % 14 == 0 and width * height <= budget
        rmap = plan_pi3_resize(hw, cfg)
        assert rmap.model_hw[0] % 14 == 0 and rmap.model_hw[1] % 14 == 0
        assert rmap.model_hw[0] * rmap.model_hw[1] <= budget
        assert abs(rmap.model_hw[1] / rmap.model_hw[0] - hw[1] / hw[0]) / (hw[1] / hw[0]) < 0.15  # aspect kept
        # corners of the original map inside the model image (a resize, no crop)
        corners = rmap.to_model(np.array([[-0.5, -0.5], [hw[1] - 0.5, hw[0] - 0.5]]))
        assert np.allclose(corners, [[-0.5, -0.5], [rmap.model_hw[1] - 0.5, rmap.model_hw[0] - 0.5]])
    assert pi3_target_size((480, 640), 255_000) == (574, 434)  # 14·41 × 14·31 = 249,116 ≤ 255,000


def test_intrinsics_are_recovered_from_exact_rays() -> None:
    H, W, fx, fy, cx, cy = 28, 42, 35.0, 33.0, 20.2, 13.7
    v, u = torch.meshgrid(torch.arange(H).double(), torch.arange(W).double(), indexing="ij")
    z = 1.0 + torch.rand(H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    local = torch.stack(((u - cx) / fx * z, (v - cy) / fy * z, z), dim=-1)[None]
    K, ok = intrinsics_from_local_points(local)
    assert bool(ok.all())
    assert torch.allclose(K[0], torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64), atol=1e-9)
    # Rays going the wrong way (a negative focal length) are not a camera: flagged for the fallback.
    flipped = local.clone()
    flipped[..., 0] *= -1
    assert not bool(intrinsics_from_local_points(flipped)[1].all())
    assert math.isfinite(float(K.sum()))


def test_recon_run_with_a_tiny_pi3_checkpoint_end_to_end(tmp_path: Path, tiny_checkpoint: tuple[Path, Pi3]) -> None:
    """`recon run --model pi3 --weights CKPT --model-config tiny`: safetensors and a plain torch file."""
    from recon.cli import main

    pt = tmp_path / "tiny.pt"
    write_checkpoint(tiny_checkpoint[1], pt)
    for ckpt in (tiny_checkpoint[0], pt):
        out = tmp_path / f"out{ckpt.suffix}"
        args = ["run", "synthetic:street", "--max-frames", "24", "--model", "pi3", "--weights", str(ckpt)]
        args += ["--model-config", "tiny", "--window", "10", "--overlap", "4", "--out", str(out)]
        assert main([*args, "--depth-every", "0"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"] == "pi3" and summary["status"] == "finished"
        assert summary["frames_in_trajectory"] == 24
        assert "π³'s own" in summary["scale"]["note"]
        for name in ("trajectory.tum", "trajectory.kitti", "map.ply"):
            assert (out / name).stat().st_size > 0, name
        assert len((out / "trajectory.tum").read_text().splitlines()) == 24


FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sequences" / "fox"


@pytest.mark.skipif(not FOX.is_dir(), reason="real captures live in ../shared (not in a clean clone)")
def test_recon_run_with_a_tiny_pi3_on_the_real_portrait_capture(
    tmp_path: Path, tiny_checkpoint: tuple[Path, Pi3]
) -> None:
    """A real portrait video (fox, 360x640): pi3 windows of its own size, every frame in the trajectory, colours
    of its own input size in the map."""
    from recon.cli import main

    out = tmp_path / "fox"
    args = ["run", str(FOX), "--model", "pi3", "--weights", str(tiny_checkpoint[0]), "--model-config", "tiny"]
    assert main([*args, "--out", str(out), "--viewer", "none", "--depth-every", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["frames_in_trajectory"] == summary["frames_read"] == 67
    assert summary["model_settings"]["weights"]["file"] == tiny_checkpoint[0].name
    assert (out / "map.ply").stat().st_size > 0


def test_qk_cast_to_v_dtype_is_a_no_op_in_fp32_and_lowers_q_k_under_autocast() -> None:
    """π³'s attention casts the normalised q, k to v's dtype (RoPE then runs at the low precision under
    autocast); VGGT's keeps them as LayerNorm returns them. In fp32 both are the same computation."""
    from recon.models.vggt_layers import Attention, RotaryPositionEmbedding2D, patch_positions

    torch.manual_seed(0)
    rope = RotaryPositionEmbedding2D(100.0)
    vggt_attn = Attention(32, 4, qk_norm=True, rope=rope)
    pi3_attn = Attention(32, 4, qk_norm=True, rope=rope, qk_to_v_dtype=True)
    pi3_attn.load_state_dict(vggt_attn.state_dict())
    x, pos = torch.randn(2, 9, 32), patch_positions(2, 2, 4, 1, torch.device("cpu"))
    assert torch.equal(vggt_attn(x, pos), pi3_attn(x, pos))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, k, v = pi3_attn.compute_qkv(x, pos)
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16


def test_network_matches_a_plain_functional_reference() -> None:
    """The module wiring against `support.pi3_reference` (explicit attention, RoPE from its formula, loops over
    frames), both in float64 on the same weights and the same DINO tokens."""
    from support.pi3_reference import reference_forward

    net = tiny_net(seed=6).double()
    images = _images(3, seed=7).double()
    with torch.inference_mode():
        out = net(images)
        x = (images - net.image_mean) / net.image_std
        patches = net.encoder(x)
    state = {k: v.detach() for k, v in net.state_dict().items()}
    ref = reference_forward(state, net.cfg, patches, (28, 42))
    # 1e-7, not float64 round-off: the module's RoPE angle table is float32 by design (as the official one).
    assert torch.allclose(out.local_points[0], ref["local_points"], atol=1e-7)
    assert torch.allclose(out.conf[0, ..., 0], ref["conf"], atol=1e-7)
    assert torch.allclose(out.camera_poses[0], ref["camera_poses"], atol=1e-7)


def test_reordering_a_window_changes_only_the_reference_camera(tiny_checkpoint: tuple[Path, Pi3]) -> None:
    """No anchor frame: a window given in another order has the same relative poses, depths and confidences
    per frame; only the reference (its first frame's camera) moves."""
    model = create_model("pi3", weights=tiny_checkpoint[0], config="tiny", device="cpu")
    frames = frames_2x3(4, seed=3, hw=(60, 90))
    order = [2, 0, 3, 1]
    a, b = model.infer(frames), model.infer([frames[i] for i in order])
    assert b.frame_indices == [a.frame_indices[i] for i in order]
    assert torch.allclose(a.depth[order], b.depth, atol=1e-5) and torch.allclose(a.depth_conf[order], b.depth_conf)
    assert torch.allclose(a.K[order], b.K, atol=1e-3)
    wa, wb = torch.linalg.inv(a.cam_from_world.double()), torch.linalg.inv(b.cam_from_world.double())
    for i, j in ((0, 1), (2, 3), (1, 3)):  # cam_i_from_cam_j, frames named by their position in `frames`
        rel_a = a.cam_from_world[i].double() @ wa[j]
        rel_b = b.cam_from_world[order.index(i)].double() @ wb[order.index(j)]
        assert torch.allclose(rel_a, rel_b, atol=1e-4)


def test_a_single_frame_window_and_the_fallback_count(tiny_checkpoint: tuple[Path, Pi3]) -> None:
    model = create_model("pi3", weights=tiny_checkpoint[0], config="tiny", device="cpu")
    pred = model.infer(frames_2x3(1, hw=(60, 90)))
    again = model.infer(frames_2x3(1, hw=(60, 90)))
    for name in ("depth", "depth_conf", "points", "cam_from_world", "K"):
        assert torch.equal(getattr(pred, name), getattr(again, name)), name  # deterministic
    assert len(pred) == 1 and torch.allclose(pred.cam_from_world[0], torch.eye(4))
    assert pred.info["intrinsics_fallback_frames"] in (0, 1) and pred.info["dtype"] == "float32"
    assert set(pred.info["timings"]) == {"preprocess_s", "forward_s", "total_s"}
