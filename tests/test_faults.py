"""Faults a model or the system throws at a running pipeline: a prediction with NaN is skipped and reported
(never fused), for windowed and streaming models alike; out of memory stops the run with a hint and keeps
what was written. (Killed and terminated runs: tests/test_pipeline.py.)"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.datasets.synthetic import SyntheticSource
from recon.errors import ReconError
from recon.geometry import invert_rigid
from recon.models.classical import ClassicalModel
from recon.outputs import OutputConfig
from recon.pipeline import Pipeline, PipelineConfig
from recon.trajectory_io import read_frames, read_kitti
from recon.types import Frame, ResizeMap, WindowPrediction
from recon.windows import AnchoredSteps, ScheduleConfig


def street(n: int) -> SyntheticSource:
    return SyntheticSource("street", num_frames=n, width=320, height=96, seed=4)


class FailingOn:
    """A classical model whose `bad_call`-th window fails with `error` (None: its depth turns NaN)."""

    name = "classical"

    def __init__(self, bad_call: int, error: BaseException | None = None) -> None:
        self.inner, self.bad_call, self.error, self.calls = ClassicalModel(), bad_call, error, 0

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        self.calls += 1
        pred = self.inner.infer(frames)
        if self.calls != self.bad_call:
            return pred
        if self.error is not None:
            raise self.error
        return dataclasses.replace(pred, depth=pred.depth * float("nan"))  # the contract check raises


def test_a_window_with_nan_is_skipped_reported_and_never_fused(tmp_path: Path) -> None:
    state = Pipeline(
        street(40),
        FailingOn(bad_call=2),
        tmp_path,
        PipelineConfig(ScheduleConfig(window=10, overlap=3, keyframes=False)),
    ).run()
    assert state.status == "finished"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [w["frames"] for w in summary["skipped_windows"]] == [[7, 16]]
    assert "NaN" in summary["skipped_windows"][0]["reason"]
    # The next window overlaps the last good one (frames 7..9), so frames 10..16 are the only ones lost.
    written = read_frames(tmp_path / "frames.txt")[0].tolist()
    assert written == [i for i in range(40) if not 10 <= i <= 16]
    assert np.isfinite(read_kitti(tmp_path / "trajectory.kitti")).all()
    import open3d as o3d

    points = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "map.ply")).points)
    assert len(points) > 0 and np.isfinite(points).all()


class OracleStream:
    """A StreamingModel from ground truth: poses relative to the anchor (the first frame since reset), unit
    depth; step `bad_step` returns NaN."""

    name = "oracle-stream"

    def __init__(self, bad_step: int) -> None:
        self.bad_step, self.steps, self.resets = bad_step, 0, 0
        self.anchor_from_world: np.ndarray | None = None

    def reset(self) -> None:
        self.anchor_from_world, self.resets = None, self.resets + 1

    def step(self, frames: Sequence[Frame]) -> WindowPrediction:
        self.steps += 1
        gt = np.stack([f.gt_cam_from_world for f in frames])
        if self.anchor_from_world is None:
            self.anchor_from_world = gt[0]
        cam_from_anchor = gt @ invert_rigid(self.anchor_from_world)
        S, (H, W) = len(frames), (24, 32)
        K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]]).expand(S, 3, 3)
        u, v = np.meshgrid(np.arange(W), np.arange(H))
        rays = np.stack([(u - 16) / 30.0, (v - 12) / 30.0, np.ones_like(u, dtype=float)], -1)
        anchor_from_cam = invert_rigid(cam_from_anchor)
        points = np.einsum("sij,hwj->shwi", anchor_from_cam[:, :3, :3], rays) + anchor_from_cam[:, None, None, :3, 3]
        depth = torch.ones(S, H, W) * (float("nan") if self.steps == self.bad_step else 1.0)
        ones = torch.ones(S, H, W)
        return WindowPrediction(
            [f.index for f in frames],
            depth,
            ones,
            torch.from_numpy(points).float(),
            ones,
            torch.from_numpy(cam_from_anchor).float(),
            K.contiguous(),
            ResizeMap((96, 320), (H, W), (W / 320, H / 96), (0.0, 0.0)),
        )


def test_a_streaming_step_with_nan_resets_the_model_and_continues_the_trajectory(tmp_path: Path) -> None:
    model = OracleStream(bad_step=3)
    state = Pipeline(
        street(20),
        model,
        tmp_path,
        PipelineConfig(ScheduleConfig(window=4, keyframes=False), outputs=OutputConfig(depth_every=0)),
        registration=AnchoredSteps(),
    ).run()
    assert state.status == "finished" and model.resets == 2  # at the start, and after the bad step
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [w["frames"] for w in summary["skipped_windows"]] == [[8, 11]]
    written = read_frames(tmp_path / "frames.txt")[0].tolist()
    assert written == [i for i in range(20) if not 8 <= i <= 11]
    world_from_cam = read_kitti(tmp_path / "trajectory.kitti")
    assert np.isfinite(world_from_cam).all()
    # The new anchor (frame 12) continues from the last written camera (frame 7), not from the origin.
    np.testing.assert_allclose(world_from_cam[8], world_from_cam[7], atol=1e-5)
    # Before the fault the oracle's poses are exact: world = frame 0's camera.
    gt = [f.gt_cam_from_world for f in street(8)]
    np.testing.assert_allclose(world_from_cam[7], invert_rigid(gt[7] @ invert_rigid(gt[0])), atol=1e-5)


def test_out_of_memory_stops_with_a_hint_and_keeps_the_finished_windows(tmp_path: Path) -> None:
    model = FailingOn(bad_call=2, error=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(
        ReconError, match=r"out of memory on frames 7\.\.16 \(10 frames of 320x96\): lower --window \(now 10\)"
    ):
        Pipeline(
            street(40), model, tmp_path, PipelineConfig(ScheduleConfig(window=10, overlap=3, keyframes=False))
        ).run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["frames_in_trajectory"] == 10
    assert len(read_kitti(tmp_path / "trajectory.kitti")) == 10 and (tmp_path / "map.ply").stat().st_size > 0
