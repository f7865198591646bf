"""Learned windows keep colour and depth in register: a model that crops or pads its input (VGGT centre-crops a
portrait frame's rows) predicts depth for the pixels it saw, so the colours the map and the viewer take for
those pixels must come through the same resize, never from the whole frame stretched to the model's size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.tiny_pi3 import tiny_net as tiny_pi3
from support.tiny_pi3 import write_checkpoint as write_pi3
from support.tiny_vggt import tiny_net as tiny_vggt
from support.tiny_vggt import write_checkpoint as write_vggt

from recon.models.base import create_model
from recon.models.pi3 import CONFIGS as PI3_CONFIGS
from recon.models.pi3 import plan_pi3_resize
from recon.models.vggt import plan_vggt_resize
from recon.pipeline import Pipeline, PipelineConfig
from recon.types import Frame, ResizeMap
from recon.viz.viewer import NullViewer, WindowView
from recon.windows import ScheduleConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

H, W = 90, 60  # portrait: VGGT's 42-px tiny input is 42 wide and 56 tall, cropped by 7 rows at the top and bottom


def _rows_encoded(n: int) -> list[Frame]:
    """Red encodes the source row, green the column; blue is noise so the frames are not blank."""
    rng = np.random.default_rng(0)
    red = np.repeat(np.linspace(0, 255, H)[:, None], W, axis=1)
    green = np.repeat(np.linspace(0, 255, W)[None, :], H, axis=0)
    frames = []
    for i in range(n):
        img = np.stack([red, green, rng.uniform(0, 255, (H, W))], axis=-1).round().astype(np.uint8)
        frames.append(Frame(index=i, timestamp_s=0.1 * i, image_rgb=img))
    return frames


class _Source:
    def __init__(self, frames: list[Frame]) -> None:
        self.frames, self.notes = frames, []

    intrinsics = None
    has_ground_truth = False
    metric = False

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)


class _Recorder(NullViewer):
    def __init__(self) -> None:
        self.views: list[WindowView] = []

    def log_window(self, view: WindowView) -> None:
        self.views.append(view)


def _expected_red(rmap: ResizeMap) -> tuple[np.ndarray, np.ndarray]:
    """The red each model pixel must show (the source row its centre maps to) and where it lies on the image."""
    h, w = rmap.model_hw
    v, u = np.mgrid[0:h, 0:w]
    src = rmap.to_original(np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64)).reshape(h, w, 2)
    inside = (src[..., 1] >= 0) & (src[..., 1] <= H - 1) & (src[..., 0] >= 0) & (src[..., 0] <= W - 1)
    return src[..., 1] * 255.0 / (H - 1), inside


@pytest.mark.parametrize("name", ["vggt", "pi3"])
def test_portrait_colours_come_through_the_models_own_resize(tmp_path: Path, name: str) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    if name == "vggt":
        write_vggt(tiny_vggt(), ckpt)
        rmap = plan_vggt_resize((H, W), 42, 14)[2]
    else:
        write_pi3(tiny_pi3(), ckpt)
        rmap = plan_pi3_resize((H, W), PI3_CONFIGS["tiny"]())
    model = create_model(name, weights=ckpt, config="tiny", device="cpu")
    viewer = _Recorder()
    config = PipelineConfig(ScheduleConfig(window=4, overlap=2, keyframes=False))
    Pipeline(_Source(_rows_encoded(6)), model, tmp_path / "out", config, viewer=viewer).run()

    expected, inside = _expected_red(rmap)
    assert viewer.views and inside.any()
    for view in viewer.views:
        assert view.images_rgb.shape[1:3] == rmap.model_hw
        red = view.images_rgb[..., 0].astype(np.float64)
        # Resampling blurs by about a source row (~3 levels); a stretched frame is off by the crop (7 of 56 rows).
        err = np.abs(red - expected[None])[:, inside]
        assert np.median(err) < 3.0 and np.percentile(err, 99) < 8.0, f"{name}: colours off their pixels by {err.max()}"
    if name == "vggt":
        stretched = np.linspace(0, 255, rmap.model_hw[0])[:, None]  # what the stretch gave: a different row
        assert np.median(np.abs(stretched - expected)[inside]) > 10.0  # the test tells the two apart


def test_a_map_that_is_not_a_whole_pixel_resize_is_refused_for_model_input_and_warped_for_colours() -> None:
    from recon.datasets.resize import resample_image
    from recon.errors import SourceError

    image = _rows_encoded(1)[0].image_rgb
    odd = ResizeMap(original_hw=(H, W), model_hw=(30, 20), scale_xy=(1 / 3, 1 / 3), offset_xy=(0.0, 0.0))
    with pytest.raises(SourceError, match="not a resize to whole pixels"):
        resample_image(image, odd)
    warped = resample_image(image, odd, allow_warp=True)
    expected, inside = _expected_red(odd)
    assert warped.shape == (30, 20, 3) and np.median(np.abs(warped[..., 0] - expected)[inside]) < 3.0
