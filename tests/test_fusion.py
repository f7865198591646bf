"""The bounded voxel map: weighted fusion arithmetic, the cap and its eviction order, the scatter kernel
against its reference, input filtering, and the PLY export (round trip, outlier removal, atomicity)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support.voxel_reference import ReferenceVoxels

import recon.fusion as fusion
from recon.errors import ContractError
from recon.fusion import BYTES_PER_VOXEL, VoxelMap
from recon.kernels.fusion_voxels import (
    KEY_MAX,
    KEY_MIN,
    merge_voxels,
    pack_keys,
    scatter_voxels,
    unpack_keys,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_window(rng: np.random.Generator, n: int, scale: float = 1.0, offset: float = 0.0):
    """points [n,3] float32, colors [n,3] uint8, conf [n] float32 > 0."""
    p = (rng.normal(size=(n, 3)) * scale + offset).astype(np.float32)
    c = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    w = rng.uniform(0.05, 3.0, size=n).astype(np.float32)
    return p, c, w


def map_arrays(m: VoxelMap) -> dict[str, np.ndarray]:
    v = m._vox
    return {
        "keys": v.keys.cpu().numpy(),
        "xyz": v.xyz.cpu().numpy(),
        "rgb": v.rgb.cpu().numpy(),
        "weight": v.weight.cpu().numpy(),
        "count": v.count.cpu().numpy(),
    }


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """Minimal binary-little-endian PLY reader: (property names, structured vertex array)."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    n = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    types = {"float": "<f4", "uchar": "u1", "double": "<f8", "int": "<i4"}
    props = [(line.split()[2], types[line.split()[1]]) for line in lines if line.startswith("property")]
    return [name for name, _ in props], np.frombuffer(body, dtype=np.dtype(props), count=n)


# --- fusion arithmetic ----------------------------------------------------------------------------


def test_two_observations_hand_computed() -> None:
    m = VoxelMap(voxel_m=1.0, max_points=100)
    m.integrate(np.array([[0.2, 0.2, 0.2]]), np.array([[100, 0, 0]], np.uint8), np.array([1.0]))
    stats = m.integrate(np.array([[0.6, 0.4, 0.2]]), np.array([[200, 40, 0]], np.uint8), np.array([3.0]))
    assert (stats.voxels_touched, stats.voxels_new, len(m)) == (1, 0, 1)
    xyz, rgb, conf = m.points()
    # (1*0.2 + 3*0.6)/4, (1*0.2 + 3*0.4)/4, 0.2 ; colours (1*100 + 3*200)/4, (3*40)/4
    np.testing.assert_allclose(xyz[0], [0.5, 0.35, 0.2], atol=1e-6)
    np.testing.assert_array_equal(rgb[0], [175, 30, 0])
    np.testing.assert_allclose(conf, [4.0])
    assert int(m._vox.count[0]) == 2


def test_noisy_surface_seen_twice_is_averaged() -> None:
    rng = np.random.default_rng(1)
    u, v = np.meshgrid(np.arange(0.0, 2.0, 0.05), np.arange(0.0, 2.0, 0.05))
    # plane z = 1.025, one grid point at each voxel centre; the noise stays (5 sigma) inside the voxel
    grid = np.stack([u.ravel() + 0.025, v.ravel() + 0.025, np.full(u.size, 1.025)], axis=1)
    m = VoxelMap(voxel_m=0.05, max_points=10_000)
    passes = []
    for _ in range(2):
        noisy = grid + rng.normal(scale=[0.002, 0.002, 0.005], size=grid.shape)
        w = rng.uniform(0.5, 2.0, size=len(grid))
        m.integrate(noisy.astype(np.float32), np.full((len(grid), 3), 128, np.uint8), w.astype(np.float32))
        passes.append((noisy, w))
    assert len(m) == len(grid)
    (p1, w1), (p2, w2) = passes
    expected = (w1[:, None] * p1 + w2[:, None] * p2) / (w1 + w2)[:, None]
    xyz, _, conf = m.points()
    order = np.lexsort(np.floor(expected / 0.05).T[::-1])  # map is sorted by (i, j, k)
    np.testing.assert_allclose(xyz, expected[order], atol=2e-6)
    np.testing.assert_allclose(conf, (w1 + w2)[order], rtol=1e-6)
    single = np.sqrt(np.mean((p1[:, 2] - 1.025) ** 2))
    fused = np.sqrt(np.mean((xyz[:, 2] - 1.025) ** 2))
    assert fused < 0.85 * single  # two independent looks: ~1/sqrt(2) of the noise


# --- kernel vs reference --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_matches_reference_over_windows(device: str) -> None:
    rng = np.random.default_rng(2)
    voxel_m = 0.2
    m = VoxelMap(voxel_m=voxel_m, max_points=10**6, device=device)
    ref = ReferenceVoxels(voxel_m)
    for i in range(4):
        p, c, w = random_window(rng, 3000, scale=1.0, offset=-0.5 + 0.3 * i)
        p[:50] += 1e4  # far from the origin: precision of the offset-from-corner sums
        p[50] = [KEY_MAX * voxel_m * 3, 0, 0]  # outside the key range: dropped by both
        p[51, 1], w[52], w[53] = np.nan, np.inf, 0.0  # invalid input: dropped by both
        stats = m.integrate(p, c, w)
        assert (stats.points_out_of_range, stats.points_invalid, stats.points_fused) == (1, 3, 3000 - 4)
        ref.integrate(p, c, w)
    got, want = map_arrays(m), ref.arrays()
    np.testing.assert_array_equal(got["keys"], want["keys"])
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_allclose(got["weight"], want["weight"], rtol=1e-5)
    np.testing.assert_allclose(got["rgb"], want["rgb"], atol=1e-3)
    scale = np.maximum(1.0, np.abs(want["xyz"]))
    assert np.max(np.abs(got["xyz"] - want["xyz"]) / scale) < 1e-6


def test_key_packing_round_trip_and_order() -> None:
    ijk = torch.tensor([[KEY_MIN, KEY_MIN, KEY_MIN], [-1, 0, 1], [0, -1, 5], [0, 0, 0], [KEY_MAX, KEY_MAX, KEY_MAX]])
    keys = pack_keys(ijk)
    torch.testing.assert_close(unpack_keys(keys), ijk)
    assert bool((keys >= 0).all()) and bool((keys[1:] > keys[:-1]).all())  # packed order == (i, j, k) order


def test_merge_disjoint_and_shared_keeps_sorted() -> None:
    rng = np.random.default_rng(3)
    a, _ = scatter_voxels(*map(torch.from_numpy, random_window(rng, 500)), voxel_m=0.3)
    b, _ = scatter_voxels(*map(torch.from_numpy, random_window(rng, 500, offset=2.0)), voxel_m=0.3)
    merged, n_new = merge_voxels(a, b)
    shared = np.intersect1d(a.keys.numpy(), b.keys.numpy()).size
    assert n_new == len(b) - shared and len(merged) == len(a) + n_new
    assert bool((merged.keys[1:] > merged.keys[:-1]).all())
    torch.testing.assert_close(merged.weight.sum(), a.weight.sum() + b.weight.sum())
    # Eviction keeps the survivors in place, field by field: the same voxels as a copy would hold.
    keep = torch.rand(len(merged), generator=torch.Generator().manual_seed(0)) > 0.3
    expected = merged.select(keep)
    merged.keep_only(keep)
    for f in ("keys", "xyz", "rgb", "weight", "count", "window"):
        assert torch.equal(getattr(merged, f), getattr(expected, f))


# --- input filtering ------------------------------------------------------------------------------


def test_non_finite_and_low_confidence_ignored() -> None:
    rng = np.random.default_rng(4)
    p, c, w = random_window(rng, 1000)
    clean = VoxelMap(voxel_m=0.25, max_points=10**5, min_conf=0.1)
    clean_stats = clean.integrate(p, c, w)
    bad_p = np.array([[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf], [1, 1, 1], [1, 1, 1], [2, 2, 2]], np.float32)
    bad_w = np.array([1, 1, 1, np.nan, 0.1, -1], np.float32)  # NaN conf, conf == min_conf, negative conf
    dirty = VoxelMap(voxel_m=0.25, max_points=10**5, min_conf=0.1)
    stats = dirty.integrate(
        np.concatenate([p, bad_p]), np.concatenate([c, np.zeros((6, 3), np.uint8)]), np.concatenate([w, bad_w])
    )
    assert stats.points_invalid == 6 + clean_stats.points_invalid
    assert stats.points_fused == clean_stats.points_fused
    for key, value in map_arrays(clean).items():
        np.testing.assert_array_equal(map_arrays(dirty)[key], value)
    assert all(np.isfinite(a).all() for a in dirty.points())
    before = map_arrays(dirty)
    stats = dirty.integrate(bad_p, np.zeros((6, 3), np.uint8), bad_w)  # nothing usable at all
    assert (stats.points_fused, stats.voxels_touched, stats.size) == (0, 0, len(clean))
    for key, value in before.items():
        np.testing.assert_array_equal(map_arrays(dirty)[key], value)


def test_accepts_image_shaped_torch_input_and_rejects_bad_shapes() -> None:
    m = VoxelMap(voxel_m=0.5, max_points=1000)
    stats = m.integrate(torch.rand(2, 4, 5, 3), torch.zeros(2, 4, 5, 3, dtype=torch.uint8), torch.ones(2, 4, 5))
    assert stats.points_in == 40
    with pytest.raises(ContractError):
        m.integrate(torch.rand(10, 3), torch.zeros(9, 3, dtype=torch.uint8), torch.ones(10))
    with pytest.raises(ContractError):
        m.integrate(torch.rand(10, 3), torch.zeros(10, 3, dtype=torch.uint8), torch.ones(10), camera_centre=[0, 0])


# --- the cap ---------------------------------------------------------------------------------------


def test_cap_holds_and_memory_is_flat_over_many_windows() -> None:
    rng = np.random.default_rng(5)
    cap = 2000
    m = VoxelMap(voxel_m=0.1, max_points=cap)
    sizes, byte_counts = [], []
    for i in range(60):  # the camera walks along x, always seeing new ground
        centre = np.array([0.5 * i, 0.0, 0.0])
        p, c, w = random_window(rng, 3000, scale=1.0, offset=0.0)
        stats = m.integrate(p + centre.astype(np.float32), c, w, camera_centre=centre)
        assert len(m) <= cap and stats.size == len(m)
        sizes.append(len(m))
        byte_counts.append(m.bytes)
    assert sizes[-1] == cap and m.bytes == cap * BYTES_PER_VOXEL
    assert len(set(byte_counts[-40:])) == 1 and byte_counts[-1] == m.bytes  # flat once full
    xyz, _, _ = m.points()
    assert np.median(xyz[:, 0]) > 0.5 * 59 - 10  # what survives is near the current camera


def test_at_the_cap_a_window_holds_the_map_twice_not_three_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transient of `integrate` at the cap sets the run's peak RSS every window: the previous map must be
    released once merged, before eviction copies the survivors (old + merged + kept would be 3x the map).
    And the map's tensors own exactly their bytes (no view pinning a larger, earlier buffer)."""
    import weakref

    rng = np.random.default_rng(8)
    cap = 2000
    m = VoxelMap(voxel_m=0.1, max_points=cap)
    alive_at_eviction: list[bool] = []
    evict = m._eviction_mask

    for i in range(12):
        previous = weakref.ref(m._vox.xyz)

        def spy(vox, n, previous=previous):  # type: ignore[no-untyped-def]
            alive_at_eviction.append(previous() is not None)
            return evict(vox, n)

        monkeypatch.setattr(m, "_eviction_mask", spy)
        p, c, w = random_window(rng, 3000)
        m.integrate(p + np.float32(0.5 * i), c, w, camera_centre=[0.5 * i, 0.0, 0.0])
        v = m._vox
        owned = sum(
            getattr(v, f).untyped_storage().nbytes() for f in ("keys", "xyz", "rgb", "weight", "count", "window")
        )
        assert owned == m.bytes <= cap * BYTES_PER_VOXEL
        del v
    assert len(alive_at_eviction) >= 8 and not any(alive_at_eviction)


def test_eviction_lowest_confidence_first() -> None:
    m = VoxelMap(voxel_m=1.0, max_points=3, distance_scale_m=math.inf)
    p = np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [2.5, 0.5, 0.5], [3.5, 0.5, 0.5], [4.5, 0.5, 0.5]], np.float32)
    w = np.array([5.0, 1.0, 4.0, 0.5, 3.0], np.float32)
    stats = m.integrate(p, np.zeros((5, 3), np.uint8), w, camera_centre=[0, 0, 0])
    assert stats.voxels_evicted == 2
    np.testing.assert_allclose(np.sort(m.points()[2]), [3.0, 4.0, 5.0])


def test_eviction_ties_go_farthest_first() -> None:
    m = VoxelMap(voxel_m=1.0, max_points=2, distance_scale_m=math.inf)
    p = np.array([[0.5, 0.5, 0.5], [10.5, 0.5, 0.5], [5.5, 0.5, 0.5], [20.5, 0.5, 0.5]], np.float32)
    m.integrate(p, np.zeros((4, 3), np.uint8), np.ones(4, np.float32), camera_centre=[0, 0, 0])
    np.testing.assert_allclose(np.sort(m.points()[0][:, 0]), [0.5, 5.5])


def test_eviction_score_trades_confidence_against_distance() -> None:
    # keep_score = W / (1 + d / D) with D = 10: near (d=1, W=1) scores 0.91; far (d=30, W=3) scores 0.75
    m = VoxelMap(voxel_m=1.0, max_points=1, distance_scale_m=10.0)
    p = np.array([[1.0, 0.5, 0.5], [30.0, 0.5, 0.5]], np.float32)
    m.integrate(p, np.zeros((2, 3), np.uint8), np.array([1.0, 3.0], np.float32), camera_centre=[0, 0.5, 0.5])
    np.testing.assert_allclose(m.points()[0], [[1.0, 0.5, 0.5]])
    # the camera moves next to the far voxel: now the near one (W=1, d=29 -> 0.26) loses to it
    m2 = VoxelMap(voxel_m=1.0, max_points=1, distance_scale_m=10.0)
    m2.integrate(p, np.zeros((2, 3), np.uint8), np.array([1.0, 3.0], np.float32), camera_centre=[30, 0.5, 0.5])
    np.testing.assert_allclose(m2.points()[0], [[30.0, 0.5, 0.5]])


# --- PLY export -----------------------------------------------------------------------------------


def test_ply_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    m = VoxelMap(voxel_m=0.1, max_points=10_000)
    m.integrate(*random_window(rng, 2000))
    xyz, rgb, conf = m.points()
    path = tmp_path / "map.ply"
    assert m.export_ply(path, outlier_removal=False) == len(m)
    names, vertex = read_ply(path)
    assert names == ["x", "y", "z", "red", "green", "blue", "confidence"]
    np.testing.assert_array_equal(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), xyz)
    np.testing.assert_array_equal(np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1), rgb)
    np.testing.assert_array_equal(vertex["confidence"], conf)

    import open3d as o3d  # the file must also be readable by Open3D, with the extra property

    pcd = o3d.t.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(pcd.point.positions.numpy(), xyz)
    np.testing.assert_array_equal(pcd.point.colors.numpy(), rgb)
    np.testing.assert_array_equal(pcd.point.confidence.numpy().ravel(), conf)
    assert [f.name for f in tmp_path.iterdir()] == ["map.ply"]  # no temporary left behind


def test_ply_outlier_removal_drops_planted_outliers(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    u, v = np.meshgrid(np.arange(0.0, 3.0, 0.05), np.arange(0.0, 3.0, 0.05))
    plane = np.stack([u.ravel(), v.ravel(), rng.normal(scale=0.005, size=u.size)], 1) + 0.025
    outliers = rng.uniform(-1, 1, size=(25, 3)) + np.array([1.5, 1.5, 2.0])  # ~2 m off the plane
    p = np.concatenate([plane, outliers]).astype(np.float32)
    m = VoxelMap(voxel_m=0.05, max_points=100_000)
    m.integrate(p, np.full((len(p), 3), 200, np.uint8), np.ones(len(p), np.float32))
    n = m.export_ply(tmp_path / "map.ply", outlier_removal=True)
    _, vertex = read_ply(tmp_path / "map.ply")
    assert len(vertex) == n
    assert np.abs(vertex["z"]).max() < 0.2  # every planted outlier gone
    assert n > 0.95 * len(plane)


def test_outlier_test_keeps_the_points_open3d_keeps() -> None:
    """map.ply's outlier test is Open3D's remove_statistical_outlier on pykdtree's k-d tree: the same points, with
    duplicates (a mean distance of 0, which Open3D drops) and sparse outliers among surfaces."""
    import open3d as o3d

    from recon.map_ply import statistical_inliers

    rng = np.random.default_rng(11)
    for trial in range(40):  # small clouds too, where the spread's n - 1 shows
        n = int(rng.choice([25, 40, 60, 500, 5000, 20_000]))
        xyz = rng.normal(size=(n, 3)) * np.array([2.0, 1.0, 0.05])  # a noisy slab
        xyz[: n // 40] = rng.uniform(-6, 6, size=(n // 40, 3))  # sparse outliers
        neighbours, ratio = int(rng.integers(4, min(n, 30))), float(rng.choice([0.5, 1.0, 2.0, 3.0]))
        if trial % 2:
            xyz[-max(n // 20, neighbours + 1) :] = xyz[0]  # a point repeated past the neighbour count
        xyz = xyz.astype(np.float32)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
        _, expected = pcd.remove_statistical_outlier(nb_neighbors=neighbours, std_ratio=ratio)
        np.testing.assert_array_equal(statistical_inliers(xyz, neighbours, ratio), np.asarray(expected))


def test_empty_map_exports_valid_file(tmp_path: Path) -> None:
    assert VoxelMap(voxel_m=0.1, max_points=10).export_ply(tmp_path / "map.ply") == 0
    names, vertex = read_ply(tmp_path / "map.ply")
    assert "confidence" in names and len(vertex) == 0


def test_failed_export_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = VoxelMap(voxel_m=0.1, max_points=1000)
    m.integrate(*random_window(np.random.default_rng(8), 200))
    path = tmp_path / "map.ply"
    m.export_ply(path, outlier_removal=False)
    before = path.read_bytes()

    def crash(fd: int) -> None:  # the new file is written but not yet renamed when the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(fusion.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        m.export_ply(path)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["map.ply"]
