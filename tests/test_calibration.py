"""Calibration in: --calib files (OpenCV YAML/JSON, COLMAP cameras.txt; OpenCV and fisheye models) undistorted at
the source, --intrinsics for every source kind, and where K came from in summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.cli import main
from recon.datasets import open_source, read_calibration
from recon.errors import SourceError

W, H = 320, 240
K = np.array([[300.0, 0, 161.3], [0, 295.0, 118.2], [0, 0, 1]])
DIST = {"opencv": np.array([-0.28, 0.09, 0.0012, -0.0007, -0.01]), "fisheye": np.array([0.06, -0.02, 0.004, -0.001])}


def _points() -> np.ndarray:
    """A 7x5 grid of 3D points in front of the camera, [N,3], reaching well into the distorted margins."""
    x, y = np.meshgrid(np.linspace(-0.55, 0.55, 7), np.linspace(-0.4, 0.4, 5))
    z = 2.0 + 0.3 * x  # a slanted plane: depth varies too
    return np.stack([x * z, y * z, z], -1).reshape(-1, 3)


def _distorted_pixels(model: str, dist: np.ndarray) -> np.ndarray:
    pts = _points().reshape(-1, 1, 3)
    if model == "fisheye":
        uv, _ = cv2.fisheye.projectPoints(pts, np.zeros(3), np.zeros(3), K, dist.reshape(4, 1))
    else:
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, dist)
    return uv.reshape(-1, 2)


def _blob_image(uv: np.ndarray, sigma: float = 1.6) -> np.ndarray:
    """Gaussian dots centred exactly at uv (pixel centres at integers), white on black, [H,W,3] uint8."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for u, v in uv:
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroids(image: np.ndarray) -> np.ndarray:
    gray = image[..., 0].astype(np.float64)
    n, labels = cv2.connectedComponents((gray > 40).astype(np.uint8))
    yy, xx = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    out = []
    for k in range(1, n):
        w = np.where(labels == k, gray, 0.0)
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out)


def _write_opencv_yaml(path: Path, model: str, dist: np.ndarray) -> None:
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", W)
    fs.write("image_height", H)
    fs.write("camera_matrix", K)
    fs.write("distortion_coefficients", dist.reshape(1, -1))
    if model == "fisheye":
        fs.write("distortion_model", "fisheye")
    fs.release()


def _folder(tmp_path: Path, image: np.ndarray, n: int = 2) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:04d}.png"), image[..., ::-1])
    return folder


@pytest.mark.parametrize("model", ["opencv", "fisheye"])
def test_undistorted_frames_put_each_point_where_the_pinhole_camera_of_their_k_does(model: str, tmp_path: Path) -> None:
    dist = DIST[model]
    raw = _blob_image(_distorted_pixels(model, dist))
    calib = tmp_path / "cam.yaml"
    _write_opencv_yaml(calib, model, dist)
    frame = next(iter(open_source(_folder(tmp_path, raw), calib=str(calib))))
    assert frame.image_rgb.shape == (H, W, 3) and frame.K is not None
    pts = _points()
    expected = (pts @ frame.K.T)[:, :2] / pts[:, 2:]  # the pinhole camera the frames now come from
    found = _centroids(frame.image_rgb)
    inside = (expected[:, 0] > 4) & (expected[:, 0] < W - 5) & (expected[:, 1] > 4) & (expected[:, 1] < H - 5)
    assert inside.sum() >= 25
    err = np.min(np.linalg.norm(expected[inside, None] - found[None], axis=2), axis=1)
    assert err.max() < 0.25, err
    # the same point without undistortion is pixels away: the test sees the distortion
    assert np.median(np.min(np.linalg.norm(expected[inside, None] - _centroids(raw)[None], axis=2), axis=1)) > 1.0
    if model == "opencv":  # and it is OpenCV's own undistortion
        reference = cv2.undistort(raw, K, dist, None, frame.K)
        assert np.abs(reference.astype(int) - frame.image_rgb.astype(int)).max() <= 2


def test_a_colmap_cameras_txt_is_the_same_camera_half_a_pixel_over(tmp_path: Path) -> None:
    dist = DIST["opencv"][:4]
    params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, *dist]
    (tmp_path / "cameras.txt").write_text(
        f"# Camera list\n1 OPENCV {W} {H} {' '.join(repr(float(p)) for p in params)}\n"
    )
    calib = read_calibration(tmp_path / "cameras.txt")
    np.testing.assert_allclose(calib.K, K)
    np.testing.assert_allclose(calib.dist, dist)
    assert calib.model == "opencv" and calib.size_wh == (W, H)
    raw = _blob_image(_distorted_pixels("opencv", np.r_[dist, 0.0]))
    frame = next(iter(open_source(_folder(tmp_path, raw), calib=str(tmp_path / "cameras.txt"))))
    pts = _points()
    expected = (pts @ frame.K.T)[:, :2] / pts[:, 2:]
    inside = (expected[:, 0] > 4) & (expected[:, 0] < W - 5) & (expected[:, 1] > 4) & (expected[:, 1] < H - 5)
    err = np.min(np.linalg.norm(expected[inside, None] - _centroids(frame.image_rgb)[None], axis=2), axis=1)
    assert err.max() < 0.25


def test_a_calibration_for_a_larger_size_of_the_same_aspect_is_scaled(tmp_path: Path) -> None:
    (tmp_path / "cam.json").write_text(
        json.dumps(
            {
                "camera_matrix": (K * [[2], [2], [1]] + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]).tolist(),
                "dist_coeffs": [],
                "image_width": 2 * W,
                "image_height": 2 * H,
            }
        )
    )
    calib = read_calibration(tmp_path / "cam.json").for_size((W, H))
    np.testing.assert_allclose(calib.K, K, atol=1e-9)  # pixel centres stay on centres: (c + 0.5) / 2 - 0.5
    with pytest.raises(SourceError, match="aspect"):
        read_calibration(tmp_path / "cam.json").for_size((W, W))


@pytest.mark.parametrize(
    "text, message",
    [
        ("not: [a, calibration", "not an OpenCV"),
        (
            '{"camera_matrix": [[1, 0, 1], [0, 1, 1], [0, 0, 1]], "dist_coeffs": [0.1, 0.2, 0.3]}',
            "3 distortion coefficients",
        ),
        ('{"camera_matrix": [[-5, 0, 1], [0, 1, 1], [0, 0, 1]]}', "positive focal"),
    ],
)
def test_a_bad_calibration_file_is_one_line(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    suffix = ".json" if text.startswith("{") else ".yaml"
    (tmp_path / f"cam{suffix}").write_text(text)
    folder = _folder(tmp_path, np.zeros((H, W, 3), np.uint8))
    assert main(["run", str(folder), "--calib", str(tmp_path / f"cam{suffix}"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_intrinsics_apply_to_a_dataset_with_its_own_calibration_and_the_summary_says_whence(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(
            [
                "render",
                "--scene",
                "room",
                "--frames",
                "10",
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
    seq = tmp_path / "data" / "sequences" / "synthetic_room"
    assert (
        main(
            [
                "run",
                str(seq),
                "--intrinsics",
                "150,150,79.5,59.5",
                "--out",
                str(tmp_path / "a"),
                "--window",
                "5",
                "--overlap",
                "2",
                "--no-loop-closure",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert (
        "intrinsics from --intrinsics: fx 150.0" in printed.out
        and "replaces the source's own intrinsics" in printed.err
    )
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["intrinsics"]["origin"] == "--intrinsics"
    np.testing.assert_allclose(summary["intrinsics"]["K"], [[150, 0, 79.5], [0, 150, 59.5], [0, 0, 1]])
    assert (
        main(["run", str(seq), "--out", str(tmp_path / "b"), "--window", "5", "--overlap", "2", "--no-loop-closure"])
        == 0
    )
    assert (
        json.loads((tmp_path / "b" / "summary.json").read_text())["intrinsics"]["origin"]
        == "the sequence's calib.txt (P2)"
    )
    assert (
        main(
            [
                "run",
                str(seq / "image_2"),
                "--source-kind",
                "folder",
                "--out",
                str(tmp_path / "c"),
                "--window",
                "5",
                "--overlap",
                "2",
                "--no-loop-closure",
            ]
        )
        == 0
    )
    estimated = json.loads((tmp_path / "c" / "summary.json").read_text())["intrinsics"]
    assert estimated["origin"].startswith("none given: estimated by the classical model") and len(estimated["K"]) == 3
