"""Camera calibration in: a file (`--calib`), a K given by hand (`--intrinsics`), applied to any source.

Files read:
- OpenCV FileStorage YAML / JSON / XML, as `cv2.calibrateCamera` users save them: `camera_matrix` (or `K`),
  `distortion_coefficients` (or `dist_coeffs`, `D`), optional `image_width` / `image_height` and
  `distortion_model` (`fisheye` / `equidistant` for OpenCV's fisheye model; otherwise the standard one);
- plain JSON with the same keys (lists instead of FileStorage matrices);
- a COLMAP `cameras.txt` (its first camera): SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV,
  FULL_OPENCV, OPENCV_FISHEYE. COLMAP puts pixel centres at +0.5: its principal point is moved by -0.5.

Distortion is removed at the source, before anything else sees a frame: each image (and ground-truth depth, by
nearest neighbour) is remapped to a pinhole camera of the same size whose K keeps only valid pixels (OpenCV's
optimal new camera matrix, alpha 0; the fisheye model's balance 0), and that K is the frames' K.
Pixel centres are at integer coordinates, as in OpenCV."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.errors import SourceError
from recon.types import Frame

from .base import FrameSource, intrinsics_matrix, source_notes

MODELS = ("pinhole", "opencv", "fisheye")
_COLMAP_MODELS = {  # name -> (our model, params -> (fx, fy, cx, cy, distortion in OpenCV order))
    "SIMPLE_PINHOLE": ("pinhole", lambda p: (p[0], p[0], p[1], p[2], [])),
    "PINHOLE": ("pinhole", lambda p: (p[0], p[1], p[2], p[3], [])),
    "SIMPLE_RADIAL": ("opencv", lambda p: (p[0], p[0], p[1], p[2], [p[3], 0.0, 0.0, 0.0])),
    "RADIAL": ("opencv", lambda p: (p[0], p[0], p[1], p[2], [p[3], p[4], 0.0, 0.0])),
    "OPENCV": ("opencv", lambda p: (p[0], p[1], p[2], p[3], list(p[4:8]))),
    "FULL_OPENCV": ("opencv", lambda p: (p[0], p[1], p[2], p[3], [*p[4:8], *p[8:12]])),  # k1 k2 p1 p2 k3 k4 k5 k6
    "OPENCV_FISHEYE": ("fisheye", lambda p: (p[0], p[1], p[2], p[3], list(p[4:8]))),
}


@dataclass(frozen=True)
class Calibration:
    """K [3,3] in pixels of the raw images (centres at integers); `dist` in OpenCV's order for `model`
    (opencv: k1 k2 p1 p2 [k3 [k4 k5 k6]]; fisheye: k1 k2 k3 k4; pinhole: none); `size_wh` the image size it
    was made for, when the file says; `origin` where it came from, for the run's report."""

    K: np.ndarray
    dist: np.ndarray
    model: str
    size_wh: tuple[int, int] | None
    origin: str

    @property
    def distorted(self) -> bool:
        return self.model != "pinhole" and bool(np.any(self.dist != 0))

    def for_size(self, wh: tuple[int, int]) -> Calibration:
        """The calibration for images of size wh: scaled when it was made for another size of the same aspect
        (a video calibrated at full resolution and read downscaled); an error when the aspect differs."""
        if self.size_wh is None or tuple(self.size_wh) == tuple(wh):
            return self
        sx, sy = wh[0] / self.size_wh[0], wh[1] / self.size_wh[1]
        if abs(sx / sy - 1) > 0.01:
            raise SourceError(
                f"{self.origin} is for {self.size_wh[0]}x{self.size_wh[1]} images, these are {wh[0]}x{wh[1]} "
                "(another aspect ratio): calibrate at this size or crop the frames to the calibrated aspect"
            )
        # pixel centres at integers: u' + 0.5 = s (u + 0.5)
        A = np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)], [0, 0, 1]])
        return dataclasses.replace(
            self, K=A @ self.K, size_wh=(int(wh[0]), int(wh[1])), origin=f"{self.origin}, scaled to {wh[0]}x{wh[1]}"
        )


def read_calibration(path: str | Path) -> Calibration:
    """A calibration file (see the module doc) -> Calibration; SourceError naming what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"--calib {path}: no such file")
    text = path.read_text(errors="replace")
    if path.name.lower().endswith(".txt"):
        return _colmap_cameras(path, text)
    fields = _json_fields(text) if path.suffix.lower() == ".json" else None
    if fields is None:
        fields = _opencv_fields(path)
    return _from_fields(path, fields)


def _json_fields(text: str) -> dict | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not any(k in data for k in ("camera_matrix", "K")):
        return None  # OpenCV's own JSON (FileStorage) stores matrices as {"type_id": "opencv-matrix", ...}
    return data


def _opencv_fields(path: Path) -> dict:
    import cv2

    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError):  # a parse error comes as either, depending on where OpenCV's parser stops
        fs = None
    if fs is None or not fs.isOpened():
        raise SourceError(
            f"--calib {path}: not an OpenCV YAML/JSON/XML calibration, a JSON file or a COLMAP cameras.txt"
        )
    fields: dict = {}
    try:
        for key in (
            "camera_matrix",
            "K",
            "distortion_coefficients",
            "dist_coeffs",
            "D",
            "image_width",
            "image_height",
            "distortion_model",
        ):
            node = fs.getNode(key)
            if node.empty():
                continue
            if node.isString():
                fields[key] = node.string()
            elif node.isMap():  # an opencv-matrix
                fields[key] = node.mat()
            elif node.isSeq():
                fields[key] = [node.at(i).real() for i in range(node.size())]
            else:
                fields[key] = node.real()
    finally:
        fs.release()
    return fields


def _from_fields(path: Path, fields: dict) -> Calibration:
    K_raw = fields.get("camera_matrix", fields.get("K"))
    if K_raw is None:
        raise SourceError(f"--calib {path}: no camera_matrix (or K) in the file")
    K_given = np.asarray(K_raw, dtype=np.float64)
    if K_given.size == 9:
        K_given = K_given.reshape(3, 3)
    try:
        K = intrinsics_matrix(K_given)
    except SourceError as e:
        raise SourceError(f"--calib {path}: camera_matrix: {e}") from None
    assert K is not None  # given, so checked
    dist = np.asarray(
        fields.get("distortion_coefficients", fields.get("dist_coeffs", fields.get("D", []))), dtype=np.float64
    ).reshape(-1)
    name = str(fields.get("distortion_model", "")).lower()
    model = "fisheye" if name in ("fisheye", "equidistant", "kannala_brandt") else "opencv"
    valid = {"fisheye": (4,), "opencv": (0, 4, 5, 8, 12, 14)}[model]
    if len(dist) not in valid or not np.all(np.isfinite(dist)):
        raise SourceError(
            f"--calib {path}: {len(dist)} distortion coefficients for the {model} model; it takes "
            f"{' or '.join(map(str, valid))}"
        )
    size = (
        (int(fields["image_width"]), int(fields["image_height"]))
        if "image_width" in fields and "image_height" in fields
        else None
    )
    return Calibration(K, dist, model if len(dist) else "pinhole", size, f"calibration file {path.name}")


def _colmap_cameras(path: Path, text: str) -> Calibration:
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 5 or parts[1] not in _COLMAP_MODELS:
            raise SourceError(
                f"--calib {path}:{line_no}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' with MODEL one of "
                f"{', '.join(_COLMAP_MODELS)}"
            )
        model, convert = _COLMAP_MODELS[parts[1]]
        try:
            width, height, params = int(parts[2]), int(parts[3]), [float(v) for v in parts[4:]]
            fx, fy, cx, cy, dist = convert(params)
        except (ValueError, IndexError):
            raise SourceError(f"--calib {path}:{line_no}: too few or unreadable parameters for {parts[1]}") from None
        K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]])  # COLMAP's pixel centres are at +0.5
        d = np.asarray(dist, dtype=np.float64)
        return Calibration(K, d, model if d.any() else "pinhole", (width, height), f"COLMAP {path.name} ({parts[1]})")
    raise SourceError(f"--calib {path}: no camera in the file")


class Undistorter:
    """Maps images of one size from the calibrated camera to the pinhole camera `K` (same size); an identity
    for an undistorted calibration."""

    def __init__(self, calib: Calibration, wh: tuple[int, int]) -> None:
        import cv2

        self.calib = calib = calib.for_size(wh)
        self.wh = tuple(wh)
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        if not calib.distorted:
            self.K = calib.K
        elif calib.model == "fisheye":
            D = calib.dist.reshape(4, 1)
            self.K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(calib.K, D, wh, np.eye(3), balance=0.0)
            self._maps = cv2.fisheye.initUndistortRectifyMap(calib.K, D, np.eye(3), self.K, wh, cv2.CV_32FC1)
        else:
            self.K, _ = cv2.getOptimalNewCameraMatrix(calib.K, calib.dist, wh, alpha=0.0, newImgSize=wh)
            self._maps = cv2.initUndistortRectifyMap(calib.K, calib.dist, None, self.K, wh, cv2.CV_32FC1)

    def frame(self, frame: Frame) -> Frame:
        import cv2

        if self._maps is None:
            return dataclasses.replace(frame, K=self.K)
        image = cv2.remap(frame.image_rgb, *self._maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        depth = frame.gt_depth_m
        if depth is not None:
            depth = cv2.remap(depth, *self._maps, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return dataclasses.replace(frame, image_rgb=image, K=self.K, gt_depth_m=depth)


class CalibratedSource:
    """Any source with the user's calibration applied: `K_flag` (--intrinsics) and/or `calib` (--calib). The
    flag's K replaces every other (the file's included, whose distortion then still applies); a distorted
    calibration is undistorted here, and the frames carry the undistorted K."""

    def __init__(self, source: FrameSource, K_flag: np.ndarray | None = None, calib: Calibration | None = None) -> None:
        if calib is not None and K_flag is not None:
            calib = dataclasses.replace(calib, K=K_flag, origin=f"--intrinsics, with the distortion of {calib.origin}")
        if calib is None and K_flag is not None:
            calib = Calibration(K_flag, np.zeros(0), "pinhole", None, "--intrinsics")
        if calib is None:
            raise ValueError("CalibratedSource needs K_flag or calib")
        self.source, self.calib, self.name = source, calib, source.name
        self._notes: list[str] = []
        if (own := source.intrinsics) is not None and not np.allclose(own, calib.K):
            self._notes.append(
                f"{calib.origin} replaces the source's own intrinsics (fx {own[0, 0]:.1f} -> {calib.K[0, 0]:.1f}, "
                f"cx {own[0, 2]:.1f} -> {calib.K[0, 2]:.1f})"
            )
        self._undistort = Undistorter(calib, calib.size_wh) if calib.size_wh is not None else None

    @property
    def intrinsics_origin(self) -> str:
        return self.calib.origin + (" (undistorted at the source)" if self.calib.distorted else "")

    @property
    def intrinsics(self) -> np.ndarray | None:
        """K of the yielded (undistorted) frames; for a distorted calibration of unknown size, known once the first
        frame is read."""
        if self._undistort is not None:
            return self._undistort.K
        return None if self.calib.distorted else self.calib.K

    @property
    def has_ground_truth(self) -> bool:
        return self.source.has_ground_truth

    @property
    def metric(self) -> bool:
        return self.source.metric

    @property
    def notes(self) -> list[str]:
        return [*self._notes, *source_notes(self.source)]

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            H, W = frame.image_rgb.shape[:2]
            if self._undistort is None or self._undistort.wh != (W, H):
                self._undistort = Undistorter(self.calib, (W, H))
            yield self._undistort.frame(frame)


def intrinsics_origin(source: FrameSource) -> str | None:
    """Where the source's K comes from, for the run's report; None when it has none (the model estimates it)."""
    if source.intrinsics is None and not isinstance(source, CalibratedSource):
        return None
    return str(getattr(source, "intrinsics_origin", "given to the source"))
