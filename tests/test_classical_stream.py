"""The classical model's tracks over a stream: each frame tracked once, windows take the tracks through
their frames (recon/models/classical/stream.py)."""

from __future__ import annotations

import dataclasses
import threading
from functools import cache

import numpy as np
import pytest

from recon.datasets.synthetic import SyntheticSource
from recon.models.classical import ClassicalModel
from recon.models.classical.tracks import TrackChain, track_window
from recon.models.classical.working import gray_image
from recon.types import Frame, WindowPrediction

W, O = 10, 4  # window, overlap: two windows share frames 6..9


@cache
def street(n: int = 2 * W - O) -> tuple[Frame, ...]:
    return tuple(SyntheticSource(scene="street", num_frames=n, seed=3))


def observed_model(frames: tuple[Frame, ...]) -> ClassicalModel:
    model = ClassicalModel()
    for f in frames:
        model.observe(f)
    return model


def test_overlapping_windows_take_the_observed_tracks_and_no_frame_is_tracked_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frames = street()
    steps = []
    step = TrackChain.step
    monkeypatch.setattr(TrackChain, "step", lambda self, gray: steps.append(1) or step(self, gray))
    model = observed_model(frames)
    a, b = model.infer(frames[:W]), model.infer(frames[W - O :])
    assert len(steps) == len(frames) - 1  # each step once, though the windows share O frames
    assert a.info["tracks_from"] == b.info["tracks_from"] == "stream"
    # The shared frames hold the very same tracks in both windows: the join's shared keypoints sit on
    # the same pixels (the depths differ: each window triangulates its own).
    assert a.keypoints is not None and b.keypoints is not None
    for j in range(O):
        ka, kb = a.keypoints.select_frames(W - O + j, W - O + j + 1), b.keypoints.select_frames(j, j + 1)
        common = {tuple(p) for p in ka.uv.round(3).tolist()} & {tuple(p) for p in kb.uv.round(3).tolist()}
        assert len(common) >= 0.5 * min(len(ka.uv), len(kb.uv)) > 20


def test_the_first_window_of_a_stream_has_the_tracks_of_the_window_on_its_own() -> None:
    frames = street()
    hw = (192, 640)
    alone = track_window([gray_image(f.image_rgb, hw) for f in frames[:W]])
    observed = observed_model(frames)._stream.window(frames[:W])
    assert observed is not None
    np.testing.assert_array_equal(observed.uv_px, alone.uv_px)


def test_windows_inferred_in_either_order_on_two_threads_agree() -> None:
    """Windows in flight run in parallel: which thread gets to a window first must not change it."""
    frames = street()
    spans = (frames[:W], frames[W - O :])

    def infer_in_threads(order: tuple[int, int]) -> dict[int, WindowPrediction]:
        model, out = observed_model(frames), {}
        threads = [threading.Thread(target=lambda i=i: out.update({i: model.infer(spans[i])})) for i in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    runs = [infer_in_threads((0, 1)), infer_in_threads((1, 0))]
    for i in (0, 1):
        np.testing.assert_array_equal(runs[0][i].cam_from_world.numpy(), runs[1][i].cam_from_world.numpy())
        np.testing.assert_array_equal(runs[0][i].depth.numpy(), runs[1][i].depth.numpy())


def test_a_window_whose_frames_were_not_observed_in_turn_tracks_itself() -> None:
    frames = street()
    model = observed_model(frames)
    skipping = frames[:3] + frames[4:W]  # a frame left out: the observed steps do not join its neighbours
    assert model.infer(skipping).info["tracks_from"] == "window"
    changed = list(frames[:W])
    changed[2] = dataclasses.replace(changed[2], image_rgb=np.ascontiguousarray(changed[2].image_rgb[:, ::-1]))
    assert model.infer(changed).info["tracks_from"] == "window"  # same index, another image
    assert ClassicalModel().infer(frames[:W]).info["tracks_from"] == "window"  # nothing observed
