"""`SyntheticSource`: the renderer as a FrameSource, and `render_sequence` to write it to disk.

A frame is a pure function of (scene options, seed, frame index): poses come from closed-form paths,
scene content from seeded hashes, so `render_frame(10_000)` costs the same as `render_frame(0)` and
iteration holds one frame at a time."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import SourceError
from recon.geometry import invert_rigid
from recon.types import Frame

from ..base import UNSET, SourceBase, Unset, path_given_twice
from .effects import ImageEffects, apply_effects
from .primitives import Boxes, Cylinders
from .render import Renderer
from .room import ROOM_MATERIALS, RoomConfig, RoomScene
from .street import StreetScene
from .street_config import STREET_MATERIALS, StreetConfig
from .texture_atlas import build_atlas


@dataclass(frozen=True)
class _SceneDefaults:
    width: int
    height: int
    speed_mps: float
    focal_per_width: float  # fx = fy = focal_per_width * width


SCENES: dict[str, _SceneDefaults] = {
    # KITTI's ratio (fx 721 px on 1242 px): a wide view, long tracks at ~1 m per frame.
    "street": _SceneDefaults(640, 192, 10.0, 0.58),
    # TUM RGB-D's (525 px on 640 px).
    "room": _SceneDefaults(640, 480, 0.6, 0.82),
}


class SyntheticSource(SourceBase):
    """Procedurally rendered frames with exact K, poses (relative to frame 0, metres) and z-depth.

    path: the scene, "street" (a drive through a town, 640x192 by default; the default) or "room" (an indoor
    walk, 640x480); `scene=` is the same argument under its older name.
    num_frames: length of the sequence; loop=True makes the path a closed loop of `loop_frames` frames
    (default num_frames; more frames drive on past the start, a revisit) whose last frame comes
    back to the first. speed_mps / fps set the spacing of frames (default 10 m/s and 10 fps for the
    street: 1 m per frame). noise_std, exposure_jitter, motion_blur_px, exposure_step (+ _frames): optional
    image effects (off by default; the ground truth is unaffected). stride / max_frames: as for every source (every k-th
    frame, at most N). Rendering happens on iteration, one frame at a time."""

    _K: np.ndarray  # the renderer's own: always known

    def __init__(
        self,
        path: str | Unset = UNSET,
        num_frames: int = 300,
        width: int | None = None,
        height: int | None = None,
        seed: int = 0,
        loop: bool = False,
        loop_frames: int | None = None,
        speed_mps: float | None = None,
        fps: float = 10.0,
        noise_std: float = 0.0,
        exposure_jitter: float = 0.0,
        motion_blur_px: float = 0.0,
        exposure_step: float = 0.0,
        exposure_step_frames: int = 30,
        focal_px: float | None = None,
        stride: int = 1,
        max_frames: int | None = None,
        aniso_taps: int = 2,
        street: StreetConfig | None = None,
        room: RoomConfig | None = None,
        *,
        scene: str | Unset = UNSET,
    ) -> None:
        if isinstance(path, Unset):  # given under its older name, or not at all (the street)
            path = scene if not isinstance(scene, Unset) else "street"
        elif not isinstance(scene, Unset):
            raise path_given_twice("SyntheticSource", "scene")
        scene = path
        if scene not in SCENES:
            raise SourceError(f"unknown synthetic scene {scene!r}; choose one of {', '.join(SCENES)}")
        d = SCENES[scene]
        self.scene = scene
        self.name = f"synthetic-{scene}"
        self.num_frames = _positive_int(num_frames, "num_frames")
        self.width = _positive_int(width if width is not None else d.width, "width")
        self.height = _positive_int(height if height is not None else d.height, "height")
        self.seed = int(seed)
        self.loop = bool(loop)
        self.fps = float(fps)
        self.speed_mps = float(speed_mps if speed_mps is not None else d.speed_mps)
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise SourceError(f"fps must be > 0, got {fps}")
        if not (math.isfinite(self.speed_mps) and self.speed_mps > 0):
            raise SourceError(f"speed_mps must be > 0, got {speed_mps}")
        super().__init__(stride, max_frames)
        try:
            self.effects = ImageEffects(
                float(noise_std),
                float(exposure_jitter),
                float(motion_blur_px),
                float(exposure_step),
                exposure_step_frames,
            )
        except ValueError as e:
            raise SourceError(str(e)) from None
        f = float(focal_px) if focal_px is not None else d.focal_per_width * self.width
        if not (math.isfinite(f) and f > 0):
            raise SourceError(f"focal_px must be > 0, got {focal_px}")
        # Principal point at the image centre; pixel centres are at integer coordinates.
        self._K = np.array([[f, 0.0, (self.width - 1) / 2.0], [0.0, f, (self.height - 1) / 2.0], [0.0, 0.0, 1.0]])
        self.aniso_taps = _positive_int(aniso_taps, "aniso_taps")
        self.street_config = street or StreetConfig()
        self.room_config = room or RoomConfig()
        self.timings: dict[str, float] = {}  # seconds per render stage, accumulated (for benchmarks)
        self.counters: dict[str, int] = {}  # primitives considered / in view / skipped as hidden, accumulated
        # The scene's geometry is cheap and validates the options (e.g. a loop too short to close), so
        # it is built now; it is a pure function of (options, seed), laid out lazily where large.
        self._scene: StreetScene | RoomScene
        lap_frames = self.num_frames if loop_frames is None else _positive_int(loop_frames, "loop_frames")
        self.loop_frames = lap_frames if self.loop else None
        try:
            if scene == "street":
                self._scene = StreetScene(self.street_config, self.seed, lap_frames, self.step_m, self.loop)
            else:
                self._scene = RoomScene(self.room_config, self.seed, lap_frames, self.step_m, self.loop)
        except ValueError as e:
            raise SourceError(str(e)) from None
        self._first_scene_from_cam = self._scene.scene_from_cam(0)[0]
        self._renderer: Renderer | None = None

    # FrameSource ---------------------------------------------------------------------------------------
    intrinsics_origin = "the renderer (exact)"

    @property
    def intrinsics(self) -> np.ndarray:
        return self._K.copy()

    @property
    def has_ground_truth(self) -> bool:
        return True

    @property
    def metric(self) -> bool:
        return True

    @property
    def step_m(self) -> float:
        return self.speed_mps / self.fps

    def __len__(self) -> int:
        return self._strided_length(self.num_frames)

    def __iter__(self) -> Iterator[Frame]:
        for out_index in range(len(self)):
            yield self.render_frame(out_index * self.stride)

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(scene={self.scene!r}, num_frames={self.num_frames}, size={self.width}x{self.height}, "
            f"seed={self.seed}, loop={self.loop})"
        )

    # random access ---------------------------------------------------------------------------------------
    def _ensure_renderer(self) -> Renderer:
        # Textures are the slow part of set-up (~0.5 s): made on the first render, not on construction.
        if self._renderer is None:
            names = STREET_MATERIALS if self.scene == "street" else ROOM_MATERIALS
            max_depth = self.street_config.max_depth_m if self.scene == "street" else 4.0 * max(self.room_config.size_m)
            self._renderer = Renderer(
                build_atlas(names, self.seed), self._K, self.width, self.height, max_depth, self.aniso_taps
            )
        return self._renderer

    def scene_from_cam(self, index: int) -> np.ndarray:
        """Pose of frame `index` in the scene's own frame (z up), for tools that want it."""
        return self._scene.scene_from_cam(int(index))[0]

    def gt_cam_from_world(self, index: int) -> np.ndarray:
        """Ground-truth pose of frame `index`, world = frame 0's camera."""
        return invert_rigid(self.scene_from_cam(index)) @ self._first_scene_from_cam

    def primitives_near(self, index: int) -> tuple[Boxes, Cylinders]:
        """The scene's primitives (scene frame) that frame `index` renders from: for inspection and tests."""
        scene_from_cam, hint = self._scene.scene_from_cam(int(index))
        view = self._scene.view(scene_from_cam, hint)
        return view.boxes, view.cylinders

    def render_frame(self, index: int) -> Frame:
        """Frame `index` of the sequence (0 <= index < num_frames), rendered on its own."""
        index = int(index)
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} is outside the sequence (0..{self.num_frames - 1})")
        scene, renderer = self._scene, self._ensure_renderer()
        scene_from_cam, hint = scene.scene_from_cam(index)
        clock = time.perf_counter()
        view = scene.view(scene_from_cam, hint)
        self.timings["scene"] = self.timings.get("scene", 0.0) + time.perf_counter() - clock
        result = renderer.render(view, scene_from_cam, self.timings, self.counters)
        image = result.image_rgb
        if self.effects.active:
            next_from_cam = invert_rigid(scene.scene_from_cam(index + 1)[0]) @ scene_from_cam
            clock = time.perf_counter()
            image = apply_effects(image, self.effects, self.seed, index, result.depth_m, self._K, next_from_cam)
            self.timings["effects"] = self.timings.get("effects", 0.0) + time.perf_counter() - clock
        return Frame(
            index=index,
            timestamp_s=index / self.fps,
            image_rgb=image,
            K=self._K.copy(),
            gt_cam_from_world=invert_rigid(scene_from_cam) @ self._first_scene_from_cam,
            gt_depth_m=result.depth_m,
        )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SourceError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def render_sequence(
    root: str | Path,
    scene: str = "street",
    name: str | None = None,
    fmt: str = "kitti",
    progress: bool = False,
    **options: Any,
) -> Path:
    """Render a sequence straight to disk, one frame at a time, through the dataset writers.

    fmt "kitti": ROOT/sequences/NAME/{image_2,depth_2,calib.txt,times.txt} + ROOT/poses/NAME.txt, returns
    the sequence dir. fmt "tum": the TUM RGB-D layout in ROOT (pass the intrinsics to TumSource when
    reading: TUM has no calibration file), returns ROOT. `options` go to SyntheticSource. Depth beyond
    the format's uint16 range is written as 0 (unknown)."""
    if fmt not in ("kitti", "tum"):
        raise SourceError(f"unknown format {fmt!r}; choose kitti or tum")
    source = SyntheticSource(scene, **options)
    frames: Any = iter(source)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=len(source), desc=f"render {source.name}", unit="frame")
    if fmt == "kitti":
        from recon.datasets import kitti

        return kitti.write_kitti_sequence(frames, root, name or f"synthetic_{scene}")
    from recon.datasets import tum

    return tum.write_tum_sequence(frames, root)
