"""The embedded default model: classical multi-view geometry, no learned weights.

window of frames -> KLT tracks -> essential matrix on a well-conditioned pair -> PnP for the other
frames -> robust bundle adjustment -> DIS-flow dense depth with honest confidence -> WindowPrediction.
Scale is arbitrary per window (median sparse depth = 1) unless stated otherwise.

Here: one window through the stages, each in its own module: the working resolution (working.py), tracks
(tracks.py), the sparse solve (sparse.py, its initial pair in init_pair.py), dense depth (dense.py), the
prediction (pack.py); the settings in config.py."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from recon.errors import ReconError
from recon.models.classical.config import ClassicalConfig
from recon.models.classical.dense import FlowWorkers, dense_depth, flow_cache
from recon.models.classical.memo import SharedMemo
from recon.models.classical.pack import pack_window, sparse_keypoints
from recon.models.classical.sparse import scene_depth, solve_poses
from recon.models.classical.threads import OneThreadMath
from recon.models.classical.tracks import FEATURE_ITEMS, track_window
from recon.models.classical.working import gray_image, working_intrinsics, working_map
from recon.types import FLAG_LOW_PARALLAX, FLAG_TOO_FEW_TRACKS, Frame, WindowPrediction


class ClassicalModel:
    """GeometryModel registered as `classical`."""

    name = "classical"
    metric = False
    scale_convention = "the first window's median sparse depth is 1"
    # Windows are independent and CPU-bound: a second one in flight fills the core that tracking and bundle
    # adjustment (single-threaded) leave idle.
    windows_in_flight = 2

    def __init__(self, config: ClassicalConfig | None = None, **overrides: object) -> None:
        self.config = config or ClassicalConfig(**overrides)  # type: ignore[arg-type]
        self._math = OneThreadMath()
        self._flows = flow_cache(self.config.flow_cache_mb << 20)
        self._features: SharedMemo[Any] = SharedMemo(FEATURE_ITEMS)  # ORB features and matches
        self._flow_workers = FlowWorkers(self.config.dense.threads, self.config.dense.dis_preset)

    # -- public -------------------------------------------------------------------------------
    def close(self) -> None:
        """Hands BLAS and torch their threads back (the model holds them on one from construction)."""
        self._math.close()

    def infer(self, frames: Sequence[Frame]) -> WindowPrediction:
        cfg = self.config
        if len(frames) < 2:
            raise ReconError(f"the classical model needs at least 2 frames per window, got {len(frames)}")
        orig_hw = frames[0].hw
        if any(f.hw != orig_hw for f in frames):
            sizes = sorted({f.hw for f in frames})
            raise ReconError(f"frames of one window differ in size {sizes}; resize the input to one size")
        cv2.setRNGSeed(cfg.seed)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        resize = working_map(orig_hw, cfg.max_side_px)
        model_hw = (int(resize.model_hw[0]), int(resize.model_hw[1]))
        gray = [gray_image(f.image_rgb, model_hw) for f in frames]
        K, k_known = working_intrinsics(frames, resize, model_hw, cfg.focal_guess)
        tracks = track_window(gray, cfg.tracker, self._features)
        timings["tracking_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        sparse = solve_poses(tracks, K, k_known, gray, cfg, timings)
        timings["pose_s"] = time.perf_counter() - t1 - timings.get("ba_s", 0.0)

        t2 = time.perf_counter()
        S = len(frames)
        if FLAG_TOO_FEW_TRACKS in sparse.flags or FLAG_LOW_PARALLAX in sparse.flags:
            depth = np.ones((S, *model_hw), np.float32)
            conf = np.zeros((S, *model_hw), np.float32)
        else:
            frame_depth = scene_depth(sparse, tracks)
            dense = dense_depth(
                gray, sparse.cam_from_world, sparse.K, frame_depth, cfg.dense, self._flows, self._flow_workers
            )
            depth, conf = dense.depth, dense.conf
            # Cap runaway depths (sky, near-epipole pixels) so downstream maths stays well-scaled.
            np.minimum(depth, 100.0 * float(np.max(frame_depth)), out=depth)
            conf[~sparse.registered] = 0.0
        timings["dense_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        pred = pack_window(frames, depth, conf, sparse, resize)
        pred.keypoints = sparse_keypoints(sparse, tracks)
        pred.registered = sparse.registered.copy()
        timings["packing_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        pred.info.update(
            timings=timings,
            intrinsics_known=k_known,
            focal_px=float(sparse.K[0, 0]),
            num_tracks=len(tracks),
            **sparse.info,
        )
        return pred
