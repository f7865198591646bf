"""Voxel scatter-reduce: points -> per-voxel confidence-weighted means, and merging those into a map.

Device-agnostic torch (whatever device the inputs live on). A plain dict-based reference that defines the
arithmetic (tests, the benchmark's ratio) lives in tests/support/voxel_reference.py.

Voxel keys. A point p falls in voxel ijk = floor(p / voxel_m) (float32 division, so the reference and
the kernel agree bit for bit). Each component is offset by 2**20 and packed into 21 bits of one int64:
`key = (i + 2**20) << 42 | (j + 2**20) << 21 | (k + 2**20)`. Valid components are in
[-2**20, 2**20 - 1], i.e. ±1,048,576 voxels per axis (±52 km at 5 cm voxels); points outside that box
are dropped and counted. Packed keys are non-negative and sort like (i, j, k) lexicographically, so a
sorted key array is a sorted voxel list.

A voxel holds its confidence-weighted mean position and colour, the sum of confidences (its weight)
and the number of points fused. Means rather than sums are stored so the values stay O(scene size)
however long the stream runs; merging two voxels is the weighted mean of their means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

KEY_BITS = 21
KEY_OFFSET = 1 << (KEY_BITS - 1)  # 2**20: shifts a signed component into [0, 2**21)
KEY_MIN = -KEY_OFFSET
KEY_MAX = KEY_OFFSET - 1
_MASK = (1 << KEY_BITS) - 1
_COUNT_MAX = torch.iinfo(torch.int32).max


@dataclass
class Voxels:
    """A set of voxels, structure of arrays, sorted by `keys` (unique). V voxels:
    keys [V] int64 packed, xyz [V,3] float32 mean position, rgb [V,3] float32 mean colour in [0,255],
    weight [V] float32 sum of confidences, count [V] int32 points fused (saturates at 2**31-1),
    window [V] int32 the latest window that fused into the voxel (-1: none given), so a pose-graph
    correction of that window can move the voxel without reprocessing frames."""

    keys: torch.Tensor
    xyz: torch.Tensor
    rgb: torch.Tensor
    weight: torch.Tensor
    count: torch.Tensor
    window: torch.Tensor

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> Voxels:
        return Voxels(
            keys=torch.zeros(0, dtype=torch.int64, device=device),
            xyz=torch.zeros(0, 3, dtype=torch.float32, device=device),
            rgb=torch.zeros(0, 3, dtype=torch.float32, device=device),
            weight=torch.zeros(0, dtype=torch.float32, device=device),
            count=torch.zeros(0, dtype=torch.int32, device=device),
            window=torch.zeros(0, dtype=torch.int32, device=device),
        )

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def select(self, index: torch.Tensor | slice) -> Voxels:
        """Subset by a bool mask, an index tensor or a slice (keeps sorted order if the index is increasing)."""
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            index = torch.nonzero(index).squeeze(1)  # once, not once per field
        return Voxels(*(getattr(self, f.name)[index] for f in fields(self)))

    def keep_only(self, index: torch.Tensor) -> None:
        """`select` in place, one field at a time: each field's old storage goes as soon as its subset exists,
        so the copy in flight is one field (xyz: 12 of the 44 bytes a voxel takes), not a second map."""
        if index.dtype == torch.bool:
            index = torch.nonzero(index).squeeze(1)
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name)[index])


def pack_keys(ijk: torch.Tensor) -> torch.Tensor:
    """ijk [N,3] int64 (each in [KEY_MIN, KEY_MAX]) -> keys [N] int64."""
    u = ijk + KEY_OFFSET
    return (u[:, 0] << (2 * KEY_BITS)) | (u[:, 1] << KEY_BITS) | u[:, 2]


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    """keys [N] int64 -> ijk [N,3] int64."""
    ijk = torch.stack([(keys >> (2 * KEY_BITS)) & _MASK, (keys >> KEY_BITS) & _MASK, keys & _MASK], dim=1)
    return ijk - KEY_OFFSET


@dataclass(frozen=True)
class ScatterCounts:
    """Where a window's points went."""

    points_in: int
    points_invalid: int  # non-finite position or confidence, or confidence <= min_conf
    points_out_of_range: int  # finite, but outside the key range
    points_fused: int


def voxel_indices(points: torch.Tensor, voxel_m: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points [N,3] float32 -> (q [N,3] float32 position in voxel units, floor(q) [N,3] float32,
    in_range [N] bool). Non-finite points are never in range (NaN fails every comparison)."""
    q = points / voxel_m
    ijk_f = torch.floor(q)
    in_range = ((ijk_f >= KEY_MIN) & (ijk_f <= KEY_MAX)).all(dim=1)
    return q, ijk_f, in_range


def scatter_voxels(
    points: torch.Tensor,
    colors: torch.Tensor,
    conf: torch.Tensor,
    voxel_m: float,
    min_conf: float = 0.0,
    window: int = -1,
) -> tuple[Voxels, ScatterCounts]:
    """Reduce points into voxels. points [N,3] float32, colors [N,3] uint8 (or float in [0,255]),
    conf [N] float32. Points with a non-finite position or confidence, confidence <= min_conf (min_conf
    >= 0, so weights are positive) or outside the key range are dropped and counted. Returns the voxels
    sorted by key."""
    n_in = int(points.shape[0])
    q, ijk_f, in_range = voxel_indices(points, voxel_m)
    valid = torch.isfinite(q).all(dim=1) & (conf > min_conf) & (conf < math.inf)  # NaN conf fails both
    ok = valid & in_range
    n_ok = int(ok.sum())
    n_invalid = n_out = 0
    if n_ok < n_in:
        n_invalid = n_in - int(valid.sum())
        n_out = n_in - n_invalid - n_ok
        idx = torch.nonzero(ok).squeeze(1)  # once, not once per array
        q, ijk_f, colors, conf = q[idx], ijk_f[idx], colors[idx], conf[idx]
    counts = ScatterCounts(n_in, n_invalid, n_out, n_ok)
    if n_ok == 0:
        return Voxels.empty(points.device), counts
    ijk = ijk_f.to(torch.int64)
    keys, inverse, n_per_voxel = torch.unique(pack_keys(ijk), sorted=True, return_inverse=True, return_counts=True)
    w = conf.to(torch.float32)[:, None]  # [N,1]
    # Sum offsets inside the voxel (in voxel units, [0,1)), not raw positions: float32 sums then keep
    # the input's own precision however far from the origin the voxel is.
    packed = torch.empty(n_ok, 7, dtype=torch.float32, device=points.device)  # [N, 3 offset + 3 rgb + 1 w]
    torch.mul(q.sub_(ijk_f), w, out=packed[:, 0:3])
    torch.mul(colors, w, out=packed[:, 3:6])
    packed[:, 6:7] = w
    sums = torch.zeros(keys.shape[0], 7, dtype=torch.float32, device=points.device).index_add_(0, inverse, packed)
    weight = sums[:, 6].contiguous()
    key_ijk = unpack_keys(keys).to(torch.float32)  # [V,3]
    voxels = Voxels(
        keys=keys,
        xyz=(sums[:, 0:3] / weight[:, None] + key_ijk) * voxel_m,
        rgb=sums[:, 3:6] / weight[:, None],
        weight=weight,
        count=n_per_voxel.to(torch.int32),
        window=torch.full((keys.shape[0],), window, dtype=torch.int32, device=points.device),
    )
    return voxels, counts


def merge_voxels(base: Voxels, update: Voxels) -> tuple[Voxels, int]:
    """Fuse `update` into `base` (both sorted by key). Shared voxels get the weight-summed mean, new
    voxels are inserted in key order. Inputs are not modified. Returns (merged, number of new voxels)."""
    M = len(base)
    if M == 0:
        return update.select(slice(None)), len(update)
    idx = torch.searchsorted(base.keys, update.keys)  # [Vu] insertion points
    # idx == M means "after every base key", so base.keys[M-1] < key there and the test is False.
    hit = base.keys[idx.clamp(max=M - 1)] == update.keys  # [Vu] voxel already in base
    new = update.select(~hit)
    n_new = len(new)

    # Merge two sorted, disjoint key lists in O(n log n) without a sort: each element's output slot is
    # its own rank plus the number of elements of the other list before it.
    device = base.keys.device
    slot_old = torch.arange(M, device=device) + torch.searchsorted(new.keys, base.keys)
    slot_new = torch.arange(n_new, device=device) + torch.searchsorted(base.keys, new.keys)
    out = Voxels(
        *(
            torch.empty((M + n_new, *getattr(base, f.name).shape[1:]), dtype=getattr(base, f.name).dtype, device=device)
            for f in fields(base)
        )
    )
    for f in fields(base):
        getattr(out, f.name)[slot_old] = getattr(base, f.name)
        getattr(out, f.name)[slot_new] = getattr(new, f.name)

    # Shared voxels: incremental weighted mean, mean += (w_u / W) (mean_u - mean), which stays exact to
    # float32 rounding even when W dwarfs w_u.
    slot = slot_old[idx[hit]]
    upd = update.select(hit)
    W = out.weight[slot] + upd.weight
    share = (upd.weight / W)[:, None]
    out.xyz[slot] += share * (upd.xyz - out.xyz[slot])
    out.rgb[slot] += share * (upd.rgb - out.rgb[slot])
    out.weight[slot] = W
    out.count[slot] = (out.count[slot].to(torch.int64) + upd.count).clamp_(max=_COUNT_MAX).to(torch.int32)
    out.window[slot] = torch.maximum(out.window[slot], upd.window)
    return out, n_new


def revoxelize(vox: Voxels, voxel_m: float) -> Voxels:
    """Re-key voxels whose positions moved (a pose-graph correction): voxels that now share a key merge
    into their weight-weighted mean, exactly as if their points had been fused there; counts add up and
    the latest window wins."""
    if len(vox) == 0:
        return vox
    merged, _ = scatter_voxels(vox.xyz, vox.rgb, vox.weight, voxel_m, min_conf=-math.inf)
    # scatter counted input rows (voxels) and dropped rows out of range: redo both per surviving voxel.
    _, ijk_f, in_range = voxel_indices(vox.xyz, voxel_m)
    keep = torch.nonzero(in_range & torch.isfinite(vox.xyz).all(dim=1)).squeeze(1)
    slot = torch.searchsorted(merged.keys, pack_keys(ijk_f[keep].to(torch.int64)))
    count = torch.zeros(len(merged), dtype=torch.int64, device=vox.keys.device).index_add_(
        0, slot, vox.count[keep].to(torch.int64)
    )
    merged.count = count.clamp_(max=_COUNT_MAX).to(torch.int32)
    merged.window = torch.full_like(merged.window, -1).scatter_reduce_(0, slot, vox.window[keep], reduce="amax")
    return merged
