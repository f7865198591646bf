"""The bounded global map (ARCHITECTURE §5): a voxel map with confidence-weighted fusion and a hard point cap.

Each voxel keeps the confidence-weighted running mean of the positions and colours of every point
fused into it, its accumulated confidence (the sum of the points' confidences) and a point count.
Memory is `max_points` voxels × `BYTES_PER_VOXEL` at rest, plus one window's worth of temporaries
while integrating — never a function of stream length.

Eviction. When a window leaves more than `max_points` voxels, the ones with the lowest

    keep_score = accumulated_confidence / (1 + d / distance_scale_m)

go first, d being the distance from the voxel to the current camera centre; exact score ties go
farthest-first. The score halves at d = distance_scale_m, so a voxel far behind the camera must be
proportionally better supported to stay, and a region the camera left long ago fades out before a
well-observed region near it. `distance_scale_m=math.inf` gives pure lowest-confidence-first with
distance only breaking ties. Without any camera centre so far, d = 0 (pure confidence).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon.errors import ContractError
from recon.kernels.fusion_voxels import Voxels, merge_voxels, revoxelize, scatter_voxels
from recon.outputs import atomic_write

VOXEL_PER_DEPTH = 0.01  # the default voxel: 1% of the scene's median depth (the map's, and its evaluation's)
DEFAULT_DISTANCE_SCALE_VOXELS = 200.0  # 10 m at 5 cm voxels: in voxel units so it follows the run's scale
BYTES_PER_VOXEL = 8 + 12 + 12 + 4 + 4 + 4  # key, xyz, rgb (float32 mean), weight, count, window

ArrayLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class FusionStats:
    """What one `integrate` call did."""

    points_in: int  # points offered
    points_invalid: int  # non-finite position/confidence, or confidence <= min_conf
    points_out_of_range: int  # outside the voxel key range (see recon.kernels.fusion_voxels)
    points_fused: int
    voxels_touched: int  # voxels this window's points fell into
    voxels_new: int  # of those, not in the map before
    voxels_evicted: int
    size: int  # voxels in the map afterwards
    bytes: int  # map memory afterwards
    peak_bytes: int  # map + this window's voxels just before eviction
    seconds: float


def _as_tensor(x: ArrayLike | Sequence[float], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        a = np.ascontiguousarray(x)
        x = torch.from_numpy(a if a.flags.writeable else a.copy())  # torch refuses read-only memory
    return x.to(device=device, dtype=dtype or x.dtype)


class VoxelMap:
    """Bounded voxel map. Feed it world-frame points window by window with `integrate`."""

    def __init__(
        self,
        voxel_m: float,
        max_points: int,
        min_conf: float = 0.0,
        distance_scale_m: float | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not (voxel_m > 0 and math.isfinite(voxel_m)):
            raise ValueError(f"voxel_m must be a positive finite size, got {voxel_m}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        if not min_conf >= 0:
            # weights must be positive for the weighted means to exist
            raise ValueError(f"min_conf must be >= 0, got {min_conf}")
        self.voxel_m = float(voxel_m)
        self.max_points = int(max_points)
        self.min_conf = float(min_conf)
        self.distance_scale_m = (
            DEFAULT_DISTANCE_SCALE_VOXELS * self.voxel_m if distance_scale_m is None else float(distance_scale_m)
        )
        if not self.distance_scale_m > 0:
            raise ValueError(f"distance_scale_m must be > 0, got {distance_scale_m}")
        self.device = torch.device(device)
        self.camera_centre: torch.Tensor | None = None  # [3] the latest one given
        self._vox = Voxels.empty(self.device)
        self.points_out_of_range = 0  # over every integrate call: points the key range could not hold (voxel too small)

    def __len__(self) -> int:
        return len(self._vox)

    @property
    def bytes(self) -> int:
        """Memory held by the map's voxels."""
        return self._vox.nbytes

    def integrate(
        self,
        points_world: ArrayLike,
        colors_rgb: ArrayLike,
        conf: ArrayLike,
        camera_centre: ArrayLike | Sequence[float] | None = None,
        window: int = -1,
    ) -> FusionStats:
        """Fuse one window. points_world [...,3] float (world frame), colors_rgb [...,3] uint8,
        conf [...] float (same leading shape, e.g. [S,H,W]); camera_centre [3] world frame, the camera
        the eviction distance is measured from (kept for later calls that pass None); `window`: the id
        `move_windows` will know these points by."""
        t0 = time.perf_counter()
        p = _as_tensor(points_world, self.device, torch.float32)
        c = _as_tensor(colors_rgb, self.device)
        w = _as_tensor(conf, self.device, torch.float32)
        if p.shape[-1:] != (3,) or c.shape != p.shape or w.shape != p.shape[:-1]:
            raise ContractError(
                f"VoxelMap.integrate: need points [...,3], colors [...,3], conf [...] with one leading shape; "
                f"got {tuple(p.shape)}, {tuple(c.shape)}, {tuple(w.shape)}"
            )
        if camera_centre is not None:
            centre = _as_tensor(camera_centre, self.device, torch.float32).reshape(-1)
            if centre.shape != (3,) or not bool(torch.isfinite(centre).all()):
                raise ContractError(f"VoxelMap.integrate: camera_centre must be 3 finite numbers, got {camera_centre}")
            self.camera_centre = centre
        fresh, counts = scatter_voxels(
            p.reshape(-1, 3), c.reshape(-1, 3), w.reshape(-1), self.voxel_m, self.min_conf, window
        )
        del p, c, w  # the window's input copies (float32 points etc.) are not needed past the scatter
        self.points_out_of_range += counts.points_out_of_range
        merged, n_new = merge_voxels(self._vox, fresh)
        peak, touched = merged.nbytes + fresh.nbytes, len(fresh)
        # The old map and the window's voxels are folded into `merged`: let them go before eviction copies
        # the survivors, or the map exists three times at once (old, merged, kept) at the cap, every window;
        # and the survivors are copied a field at a time, or it exists twice.
        self._vox = merged
        del fresh
        n_evict = max(0, len(merged) - self.max_points)
        if n_evict:
            merged.keep_only(~self._eviction_mask(merged, n_evict))
        return FusionStats(
            points_in=counts.points_in,
            points_invalid=counts.points_invalid,
            points_out_of_range=counts.points_out_of_range,
            points_fused=counts.points_fused,
            voxels_touched=touched,
            voxels_new=n_new,
            voxels_evicted=n_evict,
            size=len(merged),
            bytes=merged.nbytes,
            peak_bytes=peak,
            seconds=time.perf_counter() - t0,
        )

    def move_windows(self, new_from_old: dict[int, np.ndarray]) -> int:
        """Move every voxel last fused by window k by the similarity new_from_old[k] ([4,4], s R | t), then
        re-key the map (voxels that now coincide merge). Returns the number of voxels moved."""
        vox = self._vox
        moved = 0
        for k, M in new_from_old.items():
            sel = torch.nonzero(vox.window == k).squeeze(1)
            if len(sel) == 0:
                continue
            A = torch.as_tensor(np.asarray(M)[:3, :3], dtype=torch.float32, device=self.device)
            b = torch.as_tensor(np.asarray(M)[:3, 3], dtype=torch.float32, device=self.device)
            vox.xyz[sel] = torch.addmm(b, vox.xyz[sel], A.T)
            moved += len(sel)
        if moved:
            self._vox = revoxelize(vox, self.voxel_m)
        return moved

    def keep_score(self, vox: Voxels | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep_score [V], distance to the current camera [V]) of `vox` (default: the map). Lowest
        score is evicted first; see the module docstring."""
        vox = self._vox if vox is None else vox
        if self.camera_centre is None:
            dist = torch.zeros_like(vox.weight)
        else:
            dist = torch.linalg.vector_norm(vox.xyz - self.camera_centre, dim=1)
        return vox.weight / (1.0 + dist / self.distance_scale_m), dist

    def _eviction_mask(self, vox: Voxels, n_evict: int) -> torch.Tensor:
        """[V] bool: the n_evict voxels with the lowest keep_score, ties farthest first. Selection by
        k-th value, not a full sort: O(V) per window at the cap."""
        score, dist = self.keep_score(vox)
        threshold = torch.kthvalue(score, n_evict).values
        evict = score < threshold
        need = n_evict - int(evict.sum())  # > 0: kthvalue guarantees at least one voxel at the threshold
        tied = torch.nonzero(score == threshold).squeeze(1)
        evict[tied[torch.topk(dist[tied], need).indices]] = True
        return evict

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyz [M,3] float32 world frame, rgb [M,3] uint8, conf [M] float32 accumulated confidence),
        on the CPU, ordered by voxel key. Copies: the caller may keep or modify them."""
        v = self._vox
        rgb = v.rgb.round().clamp_(0, 255).to(torch.uint8)
        return v.xyz.cpu().numpy().copy(), rgb.cpu().numpy(), v.weight.cpu().numpy().copy()

    def export_ply(
        self, path: str | os.PathLike[str], outlier_removal: bool = True, nb_neighbors: int = 20, std_ratio: float = 2.0
    ) -> int:
        """Write the map as a binary PLY (x y z float, red green blue uchar, confidence float = the
        accumulated confidence), optionally after statistical outlier removal. Atomic: written to a
        temporary file beside `path` and renamed over it, so `path` is always a whole map. Returns the
        number of points written."""
        v = self._vox  # read-only views where the map is on the CPU: `points()` copies, a file needs none
        rgb = v.rgb.round().clamp_(0, 255).to(torch.uint8)
        return write_map_ply(
            path,
            v.xyz.cpu().numpy(),
            rgb.cpu().numpy(),
            v.weight.cpu().numpy(),
            outlier_removal,
            nb_neighbors,
            std_ratio,
        )


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
    """Indices of points whose mean distance to their neighbours is within std_ratio sigmas (Open3D)."""
    import open3d as o3d  # slow import (~1 s): only when outliers are removed

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, np.float64)))
    _, keep = pcd.remove_statistical_outlier(nb_neighbors=nb_neighbors, std_ratio=std_ratio)
    return np.asarray(keep, dtype=np.int64)
