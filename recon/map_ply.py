"""map.ply, the map's file: a binary PLY (x y z float, red green blue uchar, confidence float) written in one
block and atomically, read back by `recon eval` and `recon export`, with Open3D's statistical outlier test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from recon.errors import ContractError
from recon.outputs import atomic_write


def write_map_ply(
    path: str | os.PathLike[str],
    xyz: np.ndarray,
    rgb: np.ndarray,
    conf: np.ndarray,
    outlier_removal: bool = True,
    nb_neighbors: int = 20,
    std_ratio: float = 2.0,
) -> int:
    """xyz [M,3] float32, rgb [M,3] uint8, conf [M] float32 -> binary PLY at `path` (atomic). Returns M kept.

    Open3D only decides which points are outliers; the file is written with numpy in one block (a
    million points in tens of milliseconds, where Open3D's writer takes a second), so the map can be
    rewritten after every window."""
    if outlier_removal and len(xyz) > nb_neighbors:
        keep = statistical_inliers(xyz, nb_neighbors, std_ratio)
        xyz, rgb, conf = xyz[keep], rgb[keep], conf[keep]
    vertex = np.empty(len(xyz), dtype=PLY_VERTEX)
    vertex["x"], vertex["y"], vertex["z"] = (np.asarray(xyz, np.float32)[:, k] for k in range(3))
    vertex["red"], vertex["green"], vertex["blue"] = (np.asarray(rgb, np.uint8)[:, k] for k in range(3))
    vertex["confidence"] = np.asarray(conf, np.float32).reshape(-1)
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment recon map: confidence = accumulated confidence of the voxel\n"
        f"element vertex {len(vertex)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "property float confidence\nend_header\n"
    )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertex.view(np.uint8).data)  # the buffer itself: tobytes() would copy the whole map once more
            f.flush()
            os.fsync(f.fileno())  # durable before it becomes visible under the real name

    atomic_write(Path(path), write)
    return len(vertex)


PLY_VERTEX = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("confidence", "<f4")]
)


def read_map_ply(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A map.ply `write_map_ply` wrote -> (xyz [M,3] float32, rgb [M,3] uint8, conf [M] float32)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    header = data[: max(end, 0)].decode("ascii", "replace").splitlines()
    count = next((int(line.split()[2]) for line in header if line.startswith("element vertex ")), None)
    if (
        end < 0
        or count is None
        or "format binary_little_endian 1.0" not in header
        or len(data) - end - 11 != count * PLY_VERTEX.itemsize
    ):
        raise ContractError(
            f"{path} is not a map.ply recon wrote (x y z float, red green blue uchar, confidence float)"
        )
    vertex = np.frombuffer(data, dtype=PLY_VERTEX, count=count, offset=end + 11)
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    return xyz, np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1), vertex["confidence"].copy()


def statistical_inliers(xyz: np.ndarray, nb_neighbors: int, std_ratio: float) -> np.ndarray:
    """Indices of the points Open3D's remove_statistical_outlier keeps, to the point: a point's mean distance to
    its nb_neighbors nearest points (itself included) below the cloud's mean + std_ratio sigmas (the mean over
    all points, the spread over the points with a mean above 0; duplicates, at 0, go).

    pykdtree (OpenMP, every core) instead of Open3D itself, whose import (~0.5 s) came at the very end of a run:
    4% of a 49-frame one (dtu24's last map write: 0.53 -> 0.03 s). At the map's default cap of a million points
    (the drive's final map) the search is most of the run's last 2.5 s: Open3D 1.3 s after its import,
    scipy's cKDTree on both cores 1.65 s, pykdtree 1.1 s. tests/test_fusion.py holds this to Open3D's points."""
    from pykdtree.kdtree import KDTree
    from threadpoolctl import threadpool_limits

    xyz = np.asarray(xyz, np.float64)  # distances in float64, as Open3D's
    k = min(nb_neighbors, len(xyz))
    # Every core: a run writes its final map while the model still holds OpenMP at one thread (OneThreadMath),
    # and pykdtree's OpenMP calls reach torch's runtime, so the search ran on one core (2.6 s instead of 1.1).
    # Leaves of 32 points: 1.1 s on a million, against 1.6 s with the default 16 (and 1.2-1.4 s with 48-64).
    with threadpool_limits(limits=os.cpu_count() or 1, user_api="openmp"):
        dist, _ = KDTree(xyz, leafsize=32).query(xyz, k=k)
    mean_dist = dist.reshape(len(xyz), k).mean(axis=1)
    mean = mean_dist.sum() / len(xyz)
    apart = mean_dist > 0  # a point with a mean of 0 sits on nb_neighbors - 1 copies of itself
    sigma = np.sqrt(np.sum((mean_dist[apart] - mean) ** 2) / max(len(xyz) - 1, 1))
    return np.flatnonzero(apart & (mean_dist < mean + std_ratio * sigma))
