"""Per-frame depth a run keeps for evaluation and inspection: OUT/depth/NNNNNN.npz, one file per sampled
frame (every `depth_every`-th frame of the trajectory), named by the source frame index.

Each file holds the aligned depth in run units at model resolution (float16: 0.05% steps, far below
any model's error), its confidence, the model-pixel K, the pose, and the map from model pixels back to
the source image, so a reader compares against ground truth in the source's own pixels."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.outputs import DEPTH_DIR, atomic_write
from recon.types import ResizeMap


@dataclass(frozen=True)
class DepthSample:
    frame_index: int
    depth: np.ndarray  # [H,W] float32, run units, 0 = none
    conf: np.ndarray  # [H,W] float32
    K_model: np.ndarray  # [3,3] float64, model pixels
    cam_from_world: np.ndarray  # [4,4] float64, run world
    resize: ResizeMap  # model pixels <-> source pixels


def write_depth_sample(out_dir: Path, sample: DepthSample) -> Path:
    path = Path(out_dir) / DEPTH_DIR / f"{sample.frame_index:06d}.npz"
    path.parent.mkdir(exist_ok=True)
    r = sample.resize
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        depth=sample.depth.astype(np.float16),
        conf=sample.conf.astype(np.float16),
        K_model=sample.K_model,
        cam_from_world=sample.cam_from_world,
        resize=np.array([*r.original_hw, *r.model_hw, *r.scale_xy, *r.offset_xy], dtype=np.float64),
    )

    def write(tmp: Path) -> None:
        tmp.write_bytes(buf.getvalue())

    atomic_write(path, write)
    return path


def read_depth_sample(path: Path) -> DepthSample:
    with np.load(path) as z:
        r = z["resize"]
        resize = ResizeMap(
            (int(r[0]), int(r[1])), (int(r[2]), int(r[3])), (float(r[4]), float(r[5])), (float(r[6]), float(r[7]))
        )
        return DepthSample(
            int(Path(path).stem),
            z["depth"].astype(np.float32),
            z["conf"].astype(np.float32),
            z["K_model"],
            z["cam_from_world"],
            resize,
        )


def depth_sample_paths(out_dir: Path) -> list[Path]:
    folder = Path(out_dir) / DEPTH_DIR
    return sorted(folder.glob("[0-9]*.npz")) if folder.is_dir() else []
