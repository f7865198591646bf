"""`recon export RUN --format colmap|nerfstudio`: a finished run as the inputs Gaussian-splatting and NeRF
trainers read: the kept frames' images, their poses and intrinsics, and the fused map as the sparse points.

What is exported, from the run folder alone (plus its source, reopened for the images):
- images: every frame of the trajectory (or every N-th), read again from the run's source exactly as the run
  read it (stride, undistortion) and written as `images/NNNNNN.jpg|png`, named by the source frame index;
- poses: trajectory.tum (the final, loop-corrected poses) with frames.txt for the frame indices;
- intrinsics: per frame, those of its nearest kept depth sample (OUT/depth/, model K mapped back to source
  pixels), frames with the same K share one camera;
- points: map.ply (the fused map, final world), each point observed in every kept depth sample's frame where
  it projects in front of the camera onto a pixel whose depth agrees (so occluded points are not observed).

Conventions. recon: OpenCV camera axes, pixel centres at integer coordinates. COLMAP: same axes, pixel
centres at +0.5 (its principal point and 2D points are ours + 0.5). nerfstudio: camera-to-world in OpenGL axes
(y up, z back: ours with y and z negated), pixel centres like COLMAP's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from recon.errors import ReconError
from recon.outputs import EXPORT_FORMATS as FORMATS
from recon.summary import RunSummary

IMAGE_FORMATS = ("jpg", "png")
COLMAP_PIXEL_OFFSET = 0.5  # COLMAP's (and nerfstudio's) pixel (0, 0) centre is at (0.5, 0.5); ours is at (0, 0)
AGREEMENT_REL = 0.03  # a map point is observed where its depth agrees with the kept depth within 3%
_OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class View:
    """One exported image. cam_from_world [4,4] (run world, OpenCV axes); K [3,3] in source pixels (pixel
    centres at integers); hw the source image size."""

    frame_index: int
    timestamp_s: float
    cam_from_world: np.ndarray
    K: np.ndarray
    hw: tuple[int, int]

    @property
    def image_name(self) -> str:
        return f"{self.frame_index:06d}"


@dataclass
class Scene:
    """What an export writes: views, map points xyz [P,3] float64 / rgb [P,3] uint8, and per view the map
    points it observes (point indices [n] int64, their pixels uv [n,2] float64 in our pixel convention)."""

    views: list[View]
    xyz: np.ndarray
    rgb: np.ndarray
    observed: list[tuple[np.ndarray, np.ndarray]]


def export_run(
    run_dir: Path,
    target: Path,
    fmt: str,
    every: int = 1,
    image_format: str = "jpg",
    text: bool = False,
    overwrite: bool = False,
) -> Scene:
    """Writes the export of run folder `run_dir` into `target`; returns what was written."""
    if fmt not in FORMATS:
        raise ReconError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    summary = _read_run(run_dir)
    _claim(target, overwrite)
    views = _views(run_dir, every)
    images = target / "images"
    images.mkdir(parents=True, exist_ok=True)
    _write_images(summary, views, images, image_format)
    xyz, rgb = _map_points(run_dir)
    scene = Scene(views, xyz, rgb, observe(xyz, views, run_dir))
    if fmt == "colmap":
        write_colmap(scene, target / "sparse" / "0", image_format, text)
    else:
        write_nerfstudio(scene, target, image_format)
    return scene


# -- reading the run -----------------------------------------------------------------------------------------
def _read_run(run_dir: Path) -> RunSummary:
    summary = RunSummary.read(
        run_dir, not_a_run="{run_dir} is not a run folder (no summary.json); pass the folder `recon run --out` wrote"
    )
    for name in ("trajectory.tum", "frames.txt"):
        if not (run_dir / name).is_file():
            raise ReconError(f"{run_dir} has no {name}: the run ended before its first window; nothing to export")
    return summary


def _claim(target: Path, overwrite: bool) -> None:
    from recon.outputs import EXPORT_FILES, matching_files, remove_matching_files

    if earlier := matching_files(target, EXPORT_FILES):
        if not overwrite:
            raise ReconError(
                f"{target} already holds an export ({earlier[0].relative_to(target)}); pass --overwrite or --to another folder"
            )
        remove_matching_files(target, EXPORT_FILES)


def _views(run_dir: Path, every: int) -> list[View]:
    from recon.depth_samples import depth_sample_paths, read_depth_sample
    from recon.trajectory_io import read_frames, read_tum

    stamps, world_from_cam = read_tum(run_dir / "trajectory.tum")
    indices, _ = read_frames(run_dir / "frames.txt")
    if len(indices) != len(stamps):
        raise ReconError(f"{run_dir}: frames.txt lists {len(indices)} frames for {len(stamps)} poses in trajectory.tum")
    samples = [read_depth_sample(p) for p in depth_sample_paths(run_dir)]
    if not samples:
        raise ReconError(
            f"{run_dir} kept no depth (run with --depth-every N > 0): the export takes the intrinsics and "
            "the points' observations from it"
        )
    sample_index = np.array([s.frame_index for s in samples])
    cam_from_world = np.linalg.inv(world_from_cam)
    views = []
    for j in range(0, len(indices), every):
        s = samples[int(np.argmin(np.abs(sample_index - indices[j])))]
        K = s.resize.K_to_original(s.K_model)
        h, w = s.resize.original_hw
        views.append(View(int(indices[j]), float(stamps[j]), cam_from_world[j], K, (int(h), int(w))))
    return views


def _map_points(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from recon.map_ply import read_map_ply

    ply = run_dir / "map.ply"
    if not ply.is_file():
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    xyz, rgb, _ = read_map_ply(ply)
    return xyz.astype(np.float64), rgb


def _write_images(summary: RunSummary, views: list[View], folder: Path, image_format: str) -> None:
    """Reads the run's source again and writes the views' frames, as the run saw them before any model resize."""
    import cv2

    from recon.datasets import open_source

    spec = summary.input or {}
    if not spec.get("source"):
        raise ReconError("summary.json does not record the run's source; the images cannot be read again")
    if spec.get("kind") == "stream" or str(spec["source"]).isdigit() or "://" in str(spec["source"]):
        raise ReconError(
            f"the run read a live stream ({spec['source']}); its frames cannot be read again for the "
            "export. Record it to a video file and run recon on that"
        )
    options = {k: v for k, v in spec.items() if k not in ("source", "kind") and v is not None}
    source = open_source(spec["source"], kind=spec.get("kind"), **options)
    wanted = {v.frame_index: v for v in views}
    last = max(wanted)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    written = 0
    with tqdm(total=len(wanted), unit="image", desc="export", disable=None, dynamic_ncols=True) as bar:
        for frame in source:
            view = wanted.get(frame.index)
            if view is None:
                if frame.index > last:
                    break
                continue
            if tuple(frame.hw) != tuple(view.hw):
                raise ReconError(
                    f"frame {frame.index} of the source is {frame.hw[1]}x{frame.hw[0]} now, the run saw "
                    f"{view.hw[1]}x{view.hw[0]}: the source changed since the run"
                )
            path = folder / f"{view.image_name}.{image_format}"
            if not cv2.imwrite(str(path), np.ascontiguousarray(frame.image_rgb[..., ::-1]), params):
                raise ReconError(f"cannot write {path}")
            written += 1
            bar.update(1)
    if written < len(wanted):
        missing = sorted(set(wanted) - {int(p.stem) for p in folder.iterdir()})
        raise ReconError(
            f"the source no longer has {len(missing)} of the run's frames (first: {missing[0]}); the "
            "source changed since the run"
        )


# -- observations --------------------------------------------------------------------------------------------
def project(xyz: np.ndarray, cam_from_world: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xyz [P,3] world -> (uv [P,2] pixels, our convention; z [P] depth along the optical axis)."""
    p = xyz @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (p @ K.T)[:, :2] / z[:, None]
    return uv, z


def observe(xyz: np.ndarray, views: list[View], run_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view: (map point indices, their pixels) for the points the frame saw. Only frames with a kept depth
    sample observe points: a point is seen where it projects into the image in front of the camera and the
    sample's depth at that pixel agrees with the point's (AGREEMENT_REL). The sample's depth is in the run's
    units at the time it was written; a later loop correction may have rescaled its window, so the depth is
    first brought to the final scale (the median ratio of the agreeing points)."""
    from recon.depth_samples import depth_sample_paths, read_depth_sample

    by_frame = {int(p.stem): p for p in depth_sample_paths(run_dir)}
    observed = []
    for view in tqdm(
        views, unit="image", desc="observations", disable=None if len(views) > 50 else True, dynamic_ncols=True
    ):
        path = by_frame.get(view.frame_index)
        if path is None or len(xyz) == 0:
            observed.append((np.zeros(0, np.int64), np.zeros((0, 2))))
            continue
        sample = read_depth_sample(path)
        uv, z = project(xyz, view.cam_from_world, view.K)
        H, W = view.hw
        inside = (
            (z > 0)
            & np.isfinite(uv).all(axis=1)
            & (uv[:, 0] > -0.5)
            & (uv[:, 0] < W - 0.5)
            & (uv[:, 1] > -0.5)
            & (uv[:, 1] < H - 0.5)
        )
        idx = np.nonzero(inside)[0]
        uv_model = np.rint(sample.resize.to_model(uv[idx])).astype(np.int64)
        h, w = sample.depth.shape
        ok = (uv_model[:, 0] >= 0) & (uv_model[:, 0] < w) & (uv_model[:, 1] >= 0) & (uv_model[:, 1] < h)
        idx, uv_model = idx[ok], uv_model[ok]
        d = sample.depth[uv_model[:, 1], uv_model[:, 0]].astype(np.float64)
        has = d > 0
        idx, d = idx[has], d[has]
        scale = _depth_scale(z[idx], d)
        agree = np.abs(z[idx] - scale * d) <= AGREEMENT_REL * z[idx]
        idx = idx[agree]
        observed.append((idx, uv[idx]))
    return observed


def _depth_scale(z: np.ndarray, d: np.ndarray) -> float:
    """The factor that brings a depth sample to the map's scale: 1 when most points agree as they are (no
    later correction), else the median ratio around the densest log-ratio bin (occluded points only make z
    larger, so they fall in other bins)."""
    if len(z) == 0:
        return 1.0
    log_ratio = np.log(z / d)
    if np.mean(np.abs(log_ratio) <= AGREEMENT_REL) >= 0.5:
        return 1.0
    counts, edges = np.histogram(log_ratio, bins=np.arange(log_ratio.min(), log_ratio.max() + 0.02, 0.02))
    peak = int(np.argmax(counts))
    near = np.abs(log_ratio - 0.5 * (edges[peak] + edges[peak + 1])) <= 0.05
    return float(np.exp(np.median(log_ratio[near])))


# -- writers -------------------------------------------------------------------------------------------------
def _cameras(views: list[View]) -> tuple[list[tuple[np.ndarray, tuple[int, int]]], list[int]]:
    """Distinct (K, size) of the views, and each view's camera number."""
    keys: dict[tuple, int] = {}
    cams: list[tuple[np.ndarray, tuple[int, int]]] = []
    of_view: list[int] = []
    for v in views:
        key = (*np.round(v.K[[0, 1, 0, 1], [0, 1, 2, 2]], 6), *v.hw)
        if key not in keys:
            keys[key] = len(cams)
            cams.append((v.K, v.hw))
        of_view.append(keys[key])
    return cams, of_view


def write_colmap(scene: Scene, model_dir: Path, image_format: str, text: bool) -> None:
    """cameras / images / points3D of `scene` through pycolmap (PINHOLE cameras: the images are undistorted)."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    cams, of_view = _cameras(scene.views)
    for c, (K, (H, W)) in enumerate(cams):
        params = [K[0, 0], K[1, 1], K[0, 2] + COLMAP_PIXEL_OFFSET, K[1, 2] + COLMAP_PIXEL_OFFSET]
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(model="PINHOLE", width=W, height=H, params=params, camera_id=c + 1)
        )
    tracks: dict[int, list[tuple[int, int]]] = {}
    for i, (view, (pts, uv)) in enumerate(zip(scene.views, scene.observed)):
        image = pycolmap.Image(
            name=f"{view.image_name}.{image_format}",
            keypoints=uv + COLMAP_PIXEL_OFFSET,
            camera_id=of_view[i] + 1,
            image_id=i + 1,
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(view.cam_from_world[:3, :4]))
        for k, p in enumerate(pts.tolist()):
            tracks.setdefault(p, []).append((i + 1, k))
    for p in range(len(scene.xyz)):
        track = pycolmap.Track([pycolmap.TrackElement(image_id, k) for image_id, k in tracks.get(p, [])])
        rec.add_point3D(scene.xyz[p], track, scene.rgb[p])
    model_dir.mkdir(parents=True, exist_ok=True)
    (rec.write_text if text else rec.write_binary)(str(model_dir))


def write_nerfstudio(scene: Scene, folder: Path, image_format: str) -> None:
    """transforms.json (nerfstudio's format: OpenGL camera-to-world, intrinsics per frame when they differ)
    and sparse_pc.ply, the map, which splatfacto starts from (`ply_file_path`)."""
    from recon.map_ply import write_map_ply

    cams, of_view = _cameras(scene.views)

    def intrinsics(K: np.ndarray, hw: tuple[int, int]) -> dict[str, Any]:
        return {
            "fl_x": float(K[0, 0]),
            "fl_y": float(K[1, 1]),
            "cx": float(K[0, 2]) + COLMAP_PIXEL_OFFSET,
            "cy": float(K[1, 2]) + COLMAP_PIXEL_OFFSET,
            "w": int(hw[1]),
            "h": int(hw[0]),
        }

    frames = []
    for i, view in enumerate(scene.views):
        c2w = np.linalg.inv(view.cam_from_world) @ _OPENGL_FROM_OPENCV
        frame: dict[str, Any] = {
            "file_path": f"images/{view.image_name}.{image_format}",
            "transform_matrix": c2w.tolist(),
            "colmap_im_id": i + 1,
        }
        if len(cams) > 1:
            frame.update(intrinsics(*cams[of_view[i]]))
        frames.append(frame)
    data: dict[str, Any] = {
        "camera_model": "OPENCV",
        **(intrinsics(*cams[0]) if len(cams) == 1 else {}),
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": frames,
        "applied_transform": np.eye(4)[:3].tolist(),
    }
    if len(scene.xyz):
        write_map_ply(
            folder / "sparse_pc.ply", scene.xyz, scene.rgb, np.ones(len(scene.xyz), np.float32), outlier_removal=False
        )
        data["ply_file_path"] = "sparse_pc.ply"
    (folder / "transforms.json").write_text(json.dumps(data, indent=2))
