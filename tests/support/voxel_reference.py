"""A plain reference for the voxel kernels of the map (recon.kernels.fusion_voxels): it defines the arithmetic
the kernels must reproduce (tests) and the baseline of bench/bench_fusion.py."""

from __future__ import annotations

import math

import numpy as np

from recon.kernels.fusion_voxels import KEY_BITS, KEY_MAX, KEY_MIN, KEY_OFFSET


class ReferenceVoxels:
    """Plain reference: a dict from (i, j, k) to float64 running sums, one Python step per point.
    Defines what `scatter_voxels` + `merge_voxels` compute (the map is the confidence-weighted mean of
    every point ever fused into a voxel)."""

    def __init__(self, voxel_m: float, min_conf: float = 0.0) -> None:
        self.voxel_m = voxel_m
        self.min_conf = min_conf
        self.cells: dict[tuple[int, int, int], list[float]] = {}  # ijk -> [W, Σwx, Σwy, Σwz, Σwr, Σwg, Σwb, n]

    def integrate(self, points: np.ndarray, colors: np.ndarray, conf: np.ndarray) -> None:
        """points [N,3], colors [N,3], conf [N]; drops what the kernel drops."""
        p32 = np.asarray(points, dtype=np.float32)
        with np.errstate(invalid="ignore"):
            ijk_f = np.floor(p32 / np.float32(self.voxel_m))  # float32 division, like the kernel
        rows = zip(
            ijk_f.tolist(),
            p32.astype(np.float64).tolist(),
            np.asarray(colors, np.float64).tolist(),
            np.asarray(conf, np.float64).tolist(),
        )
        for ijk, p, c, w in rows:
            if not (math.isfinite(w) and w > self.min_conf and all(math.isfinite(x) for x in p)):
                continue
            if not all(KEY_MIN <= v <= KEY_MAX for v in ijk):
                continue
            cell = self.cells.setdefault((int(ijk[0]), int(ijk[1]), int(ijk[2])), [0.0] * 8)
            cell[0] += w
            for d in range(3):
                cell[1 + d] += w * p[d]
                cell[4 + d] += w * c[d]
            cell[7] += 1

    def arrays(self) -> dict[str, np.ndarray]:
        """Sorted by packed key: keys [V] int64, xyz [V,3], rgb [V,3], weight [V], count [V] (float64/int64)."""
        items = sorted(self.cells.items())
        ijk = np.array([k for k, _ in items], dtype=np.int64).reshape(-1, 3)
        s = np.array([v for _, v in items], dtype=np.float64).reshape(-1, 8)
        u = ijk + KEY_OFFSET
        return {
            "keys": (u[:, 0] << (2 * KEY_BITS)) | (u[:, 1] << KEY_BITS) | u[:, 2],
            "xyz": s[:, 1:4] / s[:, :1],
            "rgb": s[:, 4:7] / s[:, :1],
            "weight": s[:, 0],
            "count": s[:, 7].astype(np.int64),
        }
