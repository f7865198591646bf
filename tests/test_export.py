"""`recon export`: a run as a COLMAP model and a nerfstudio dataset, read back by pycolmap and checked against
the pixels the points came from."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from recon.cli import main
from recon.depth_samples import DepthSample, write_depth_sample
from recon.geometry import invert_rigid
from recon.map_ply import write_map_ply
from recon.trajectory_io import format_frames_line, format_tum_line
from recon.types import ResizeMap

H, W = 48, 64
K = np.array([[50.0, 0, 31.5], [0, 52.0, 23.5], [0, 0, 1]])  # source pixels, centres at integers


def _pose(yaw_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    """world_from_cam"""
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = t
    return T


def _hand_made_run(root: Path) -> tuple[Path, np.ndarray, np.ndarray, list[np.ndarray]]:
    """A run folder whose map points are the back-projected centres of known pixels of frame 0, over a wall at
    depth 4 (frame 0's camera); the source is an image folder of random-texture PNGs. The model saw the frames
    at half size (a resize map), as a learned model would. -> (run folder, pixels [P,2], xyz [P,3], world_from_cam)."""
    rng = np.random.default_rng(3)
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(images / f"{i:04d}.png"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    poses = [_pose(0.0, (0, 0, 0)), _pose(4.0, (0.3, 0.05, 0.1))]
    run = root / "run"
    run.mkdir()
    (run / "trajectory.tum").write_text("".join(format_tum_line(i / 30, T) + "\n" for i, T in enumerate(poses)))
    (run / "frames.txt").write_text("# index t\n" + "".join(format_frames_line(i, i / 30) + "\n" for i in range(2)))
    (run / "summary.json").write_text(
        json.dumps({"input": {"source": str(images), "kind": None, "stride": 1, "max_frames": None}})
    )
    resize = ResizeMap((H, W), (H // 2, W // 2), (0.5, 0.5), (-0.25, -0.25))  # pixel centres map to pixel centres
    wall_depth = 4.0
    for i, T in enumerate(poses):
        # depth of the plane z_world = 4 seen from camera i, at every model pixel
        Km = resize.K_to_model(K)
        v, u = np.mgrid[0 : H // 2, 0 : W // 2].astype(np.float64)
        rays_cam = np.stack([(u - Km[0, 2]) / Km[0, 0], (v - Km[1, 2]) / Km[1, 1], np.ones_like(u)], -1)
        rays_world = rays_cam @ T[:3, :3].T
        depth = (wall_depth - T[2, 3]) / rays_world[..., 2]
        write_depth_sample(
            run, DepthSample(i, depth.astype(np.float32), np.ones_like(depth, np.float32), Km, invert_rigid(T), resize)
        )
    pixels = np.stack(np.meshgrid(np.arange(2, W - 2, 5), np.arange(2, H - 2, 5)), -1).reshape(-1, 2).astype(np.float64)
    rays = np.c_[(pixels[:, 0] - K[0, 2]) / K[0, 0], (pixels[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(pixels))]
    xyz = rays * wall_depth  # frame 0 is the world
    colours = cv2.imread(str(images / "0000.png"))[..., ::-1][pixels[:, 1].astype(int), pixels[:, 0].astype(int)]
    write_map_ply(
        run / "map.ply", xyz.astype(np.float32), colours, np.ones(len(xyz), np.float32), outlier_removal=False
    )
    return run, pixels, xyz, poses


def test_colmap_points_sit_on_the_pixels_they_came_from(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, pixels, xyz, poses = _hand_made_run(tmp_path)
    assert main(["export", str(run), "--image-format", "png"]) == 0
    rec = pycolmap.Reconstruction(str(run / "colmap" / "sparse" / "0"))
    assert rec.num_images() == 2 and rec.num_points3D() == len(xyz)
    first = rec.find_image_with_name("000000.png")
    cam = rec.camera(first.camera_id)
    # COLMAP's pixel (0, 0) centre is (0.5, 0.5): its principal point is ours + 0.5
    np.testing.assert_allclose(cam.params, [50.0, 52.0, 32.0, 24.0])
    assert (cam.width, cam.height) == (W, H)
    image = cv2.imread(str(run / "colmap" / "images" / first.name))[..., ::-1]
    found = 0
    for p2 in first.points2D:
        point = rec.point3D(p2.point3D_id)
        k = int(np.argmin(np.linalg.norm(xyz - point.xyz, axis=1)))
        np.testing.assert_allclose(p2.xy, pixels[k] + 0.5, atol=1e-4)  # the pixel it was made from
        np.testing.assert_allclose(cam.img_from_cam(first.cam_from_world() * point.xyz), p2.xy, atol=1e-4)
        u, v = np.floor(p2.xy).astype(int)
        assert (image[v, u] == point.color).all()
        found += 1
    assert found == len(xyz)
    # the second camera sees the wall from elsewhere: its observations are COLMAP's own projections too
    second = rec.find_image_with_name("000001.png")
    np.testing.assert_allclose(second.cam_from_world().matrix(), invert_rigid(poses[1])[:3], atol=1e-9)
    assert second.num_points3D > 0.5 * len(xyz)
    assert rec.compute_mean_reprojection_error() < 1e-4


def test_nerfstudio_rays_through_a_pixel_meet_the_point_made_from_it(tmp_path: Path) -> None:
    run, pixels, xyz, poses = _hand_made_run(tmp_path)
    assert main(["export", str(run), "--format", "nerfstudio", "--to", str(tmp_path / "ns")]) == 0
    data = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert data["camera_model"] == "OPENCV" and (data["w"], data["h"]) == (W, H)
    frame = next(f for f in data["frames"] if f["file_path"] == "images/000000.jpg")
    assert (tmp_path / "ns" / frame["file_path"]).is_file() and (tmp_path / "ns" / data["ply_file_path"]).is_file()
    c2w = np.array(frame["transform_matrix"])
    # nerfstudio's ray through pixel (i, j): its centre is (j + 0.5, i + 0.5); camera axes OpenGL (y up, z back)
    d_cam = np.c_[
        (pixels[:, 0] + 0.5 - data["cx"]) / data["fl_x"],
        -(pixels[:, 1] + 0.5 - data["cy"]) / data["fl_y"],
        -np.ones(len(pixels)),
    ]
    d_world = d_cam @ c2w[:3, :3].T
    to_point = xyz - c2w[:3, 3]
    sin = np.linalg.norm(np.cross(d_world, to_point), axis=1) / (
        np.linalg.norm(d_world, axis=1) * np.linalg.norm(to_point, axis=1)
    )
    assert sin.max() < 1e-6


def test_a_run_exports_to_colmap_with_its_poses_intrinsics_and_colours(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "render",
                "--scene",
                "room",
                "--frames",
                "16",
                "--width",
                "160",
                "--height",
                "120",
                "--out",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                str(tmp_path / "data" / "sequences" / "synthetic_room"),
                "--out",
                str(out),
                "--window",
                "8",
                "--overlap",
                "3",
                "--depth-every",
                "4",
                "--no-loop-closure",
                "--export",
                "nerfstudio",
            ]
        )
        == 0
    )
    assert "nerfstudio: 16 images" in capsys.readouterr().out
    assert len(json.loads((out / "nerfstudio" / "transforms.json").read_text())["frames"]) == 16
    assert main(["export", str(out), "--every", "2"]) == 0
    assert "8 images" in capsys.readouterr().out
    rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    from recon.trajectory_io import read_tum

    _, world_from_cam = read_tum(out / "trajectory.tum")
    calib = np.loadtxt(
        tmp_path / "data" / "sequences" / "synthetic_room" / "calib.txt", usecols=range(1, 13), max_rows=3
    )[2].reshape(3, 4)
    colour_error = []
    for image in rec.images.values():
        frame = int(Path(image.name).stem)
        np.testing.assert_allclose(image.cam_from_world().matrix(), invert_rigid(world_from_cam[frame])[:3], atol=1e-6)
        cam = rec.camera(image.camera_id)
        np.testing.assert_allclose(
            cam.params, [calib[0, 0], calib[1, 1], calib[0, 2] + 0.5, calib[1, 2] + 0.5], rtol=1e-6
        )
        pixels = cv2.imread(str(out / "colmap" / "images" / image.name))[..., ::-1]
        assert pixels.shape == (120, 160, 3)
        for p2 in image.points2D:
            u, v = np.floor(p2.xy).astype(int)
            colour_error.append(np.abs(pixels[v, u].astype(int) - rec.point3D(p2.point3D_id).color.astype(int)).mean())
    assert len(colour_error) > 1000  # every 4th frame observes the map
    assert np.median(colour_error) < 10  # fused colours over their pixels (a wrong image or pose gives ~60)
    assert rec.compute_mean_reprojection_error() < 1e-3
    # the exports belong to the run: a new run over it takes them away with the rest
    assert (
        main(
            [
                "run",
                str(tmp_path / "data" / "sequences" / "synthetic_room"),
                "--out",
                str(out),
                "--overwrite",
                "--max-frames",
                "8",
                "--window",
                "8",
                "--overlap",
                "3",
                "--no-loop-closure",
            ]
        )
        == 0
    )
    assert not (out / "colmap").exists() and not (out / "nerfstudio").exists()


def test_export_refuses_what_it_cannot_do_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    run, *_ = _hand_made_run(tmp_path)
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--overwrite"]) == 0


def test_a_video_run_exports_a_colmap_model_pycolmap_reads_with_its_poses(tmp_path: Path) -> None:
    """The user's path: a video in, `recon run`, then `recon export OUT --format colmap`; pycolmap reads the model
    back with one image per kept frame at the run's pose, under the K the run was given."""
    from recon.datasets.synthetic import SyntheticSource
    from recon.trajectory_io import read_frames, read_tum

    source = SyntheticSource(scene="room", num_frames=20, width=160, height=120, seed=4)
    frames = list(source)
    path = tmp_path / "walk.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    for f in frames:
        writer.write(cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    K_given = frames[0].K
    intrinsics = ",".join(f"{v:.6f}" for v in (K_given[0, 0], K_given[1, 1], K_given[0, 2], K_given[1, 2]))
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                str(path),
                "--out",
                str(out),
                "--intrinsics",
                intrinsics,
                "--window",
                "8",
                "--overlap",
                "3",
                "--depth-every",
                "4",
                "--no-loop-closure",
            ]
        )
        == 0
    )
    assert main(["export", str(out), "--format", "colmap"]) == 0
    rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    indices, _ = read_frames(out / "frames.txt")
    _, world_from_cam = read_tum(out / "trajectory.tum")
    assert rec.num_reg_images() == len(indices) >= 15 and rec.num_points3D() > 100
    for image in rec.images.values():
        row = int(np.flatnonzero(indices == int(Path(image.name).stem))[0])
        np.testing.assert_allclose(image.cam_from_world().matrix(), invert_rigid(world_from_cam[row])[:3], atol=1e-6)
        np.testing.assert_allclose(
            rec.camera(image.camera_id).params,
            [K_given[0, 0], K_given[1, 1], K_given[0, 2] + 0.5, K_given[1, 2] + 0.5],
            rtol=1e-5,
        )
        assert cv2.imread(str(out / "colmap" / "images" / image.name)).shape == (120, 160, 3)
