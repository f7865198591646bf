"""Point-map accuracy against a ground-truth cloud: ICP-refined alignment, then accuracy (est -> gt
nearest-neighbour distance), completeness (gt -> est), Chamfer, normal consistency, and precision / recall /
F-score at a distance threshold (Tanks and Temples): the shares of points within it, which a few far
outliers or a few uncovered ground-truth points cannot dominate the way they do the means.

Both clouds are voxel-downsampled first, which keeps the cost bounded and evens out density: distances
are then only meaningful down to about the voxel size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy.spatial import cKDTree

from recon.geometry import rotate, transform_points
from recon.types import Sim3

if TYPE_CHECKING:
    import open3d as o3d

IcpMethod = Literal["point_to_point", "point_to_plane", "none"]
AUTO_VOXEL_FRACTION = 1.0 / 200.0  # of the ground-truth bounding-box diagonal when no voxel size is given
ICP_MAX_POINTS = 50_000  # registration needs far fewer points than the metrics; keeps ICP well under a second


@dataclass(frozen=True, eq=False)
class PointMapMetrics:
    accuracy_mean: float  # est -> nearest gt point, ground-truth units
    accuracy_median: float
    completeness_mean: float  # gt -> nearest est point
    completeness_median: float
    chamfer: float  # (accuracy_mean + completeness_mean) / 2
    normal_consistency: float  # mean |n_est . n_gt| of nearest pairs, both directions averaged; 1 = perfect
    normal_consistency_median: float
    threshold: float  # distance for precision / recall, ground-truth units
    precision: float  # share of est points within `threshold` of the ground truth
    recall: float  # share of gt points within `threshold` of the estimate
    fscore: float  # harmonic mean of precision and recall
    gt_from_est: Sim3  # the final alignment (ICP refinement composed with the initial one)
    voxel_size: float  # 0 = not downsampled
    icp: IcpMethod
    icp_fitness: float  # Open3D: fraction of est points with a gt point within the ICP distance (NaN without ICP)
    icp_inlier_rmse: float
    num_est: int  # points after downsampling
    num_gt: int


def backproject(
    depth_m: np.ndarray, K: np.ndarray, world_from_cam: np.ndarray, stride: int = 1, max_depth_m: float | None = None
) -> np.ndarray:
    """World points [P,3] of every `stride`-th pixel (rows and columns) with a finite depth > 0 (and
    <= max_depth_m); depth along the camera z axis, OpenCV axes, pixel centres at integers."""
    full = np.asarray(depth_m, dtype=np.float64)
    depth = full[::stride, ::stride]
    K = np.asarray(K, dtype=np.float64)
    v, u = np.mgrid[0 : full.shape[0] : stride, 0 : full.shape[1] : stride]
    valid = np.isfinite(depth) & (depth > 0)
    if max_depth_m is not None:
        valid &= depth <= max_depth_m
    z, u, v = depth[valid], u[valid].astype(np.float64), v[valid].astype(np.float64)
    y_n = (v - K[1, 2]) / K[1, 1]
    x_n = (u - K[0, 2] - K[0, 1] * y_n) / K[0, 0]
    points_cam = np.stack([x_n * z, y_n * z, z], axis=1)
    return transform_points(world_from_cam, points_cam)


def _apply_sim3(sim: Sim3, points: np.ndarray) -> np.ndarray:
    return sim.s * rotate(sim.R, points) + sim.t


def _cloud(points: np.ndarray) -> o3d.geometry.PointCloud:
    import open3d as o3d

    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(np.ascontiguousarray(points, dtype=np.float64))
    return pc


def _downsample(points: np.ndarray, voxel_size: float) -> o3d.geometry.PointCloud:
    pc = _cloud(points)
    return pc.voxel_down_sample(voxel_size) if voxel_size > 0 else pc


def _normals(pc: o3d.geometry.PointCloud, knn: int) -> np.ndarray:
    import open3d as o3d

    # Orientation is arbitrary (no viewpoint for a fused cloud), hence |dot| in the consistency.
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=knn))
    return np.asarray(pc.normals)


def _resolution(points: np.ndarray, voxel_size: float) -> float:
    """Voxel size, or when not downsampling the median nearest-neighbour spacing (on a sample)."""
    if voxel_size > 0:
        return voxel_size
    sample = points[:: max(1, len(points) // 2000)]
    d, _ = cKDTree(points).query(sample, k=2)
    return float(np.median(d[:, 1]))


def _icp(
    est_pc: o3d.geometry.PointCloud,
    gt_pc: o3d.geometry.PointCloud,
    method: IcpMethod,
    max_distance: float,
    with_scale: bool,
    max_iterations: int,
) -> tuple[Sim3, float, float]:
    import open3d as o3d

    reg = o3d.pipelines.registration
    # Every k-th point (normals kept, point-to-plane needs the target's).
    est_pc = est_pc.uniform_down_sample(-(-len(est_pc.points) // ICP_MAX_POINTS))
    gt_pc = gt_pc.uniform_down_sample(-(-len(gt_pc.points) // ICP_MAX_POINTS))
    estimation: Any
    if method == "point_to_point":
        estimation = reg.TransformationEstimationPointToPoint(with_scaling=with_scale)
    elif method == "point_to_plane":  # rigid only: Open3D's point-to-plane has no scale
        estimation = reg.TransformationEstimationPointToPlane()
    else:
        raise ValueError(f"icp must be 'point_to_point', 'point_to_plane' or 'none', got {method!r}")
    result = reg.registration_icp(
        est_pc, gt_pc, max_distance, np.eye(4), estimation, reg.ICPConvergenceCriteria(max_iteration=max_iterations)
    )
    return Sim3.from_matrix(np.asarray(result.transformation)), float(result.fitness), float(result.inlier_rmse)


def evaluate_pointmap(
    est_points: np.ndarray,
    gt_points: np.ndarray,
    gt_from_est_init: Sim3 | None = None,
    voxel_size: float | None = None,
    icp: IcpMethod = "point_to_point",
    icp_max_distance: float | None = None,
    with_scale: bool = True,
    icp_max_iterations: int = 30,
    normal_knn: int = 20,
    threshold_voxels: float = 5.0,
) -> PointMapMetrics:
    """Compare an estimated cloud [N,3] with a ground-truth cloud [M,3] in ground-truth units.

    The estimate is mapped by `gt_from_est_init` (e.g. the trajectory's `ate.gt_from_est`), both clouds are
    voxel-downsampled to `voxel_size` (None: 1/200 of the ground truth's bounding-box diagonal; 0: not
    downsampled), then ICP refines the alignment: point-to-point with scale (`with_scale`, for
    up-to-scale maps) or point-to-plane (rigid), correspondences up to `icp_max_distance` (default 10
    voxels, or 10 point spacings without downsampling). Precision and recall count distances within
    `threshold_voxels` voxels (point spacings without downsampling)."""
    est = np.asarray(est_points, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_points, dtype=np.float64).reshape(-1, 3)
    if len(est) < normal_knn or len(gt) < normal_knn:
        raise ValueError(f"need at least {normal_knn} points in each cloud, got {len(est)} and {len(gt)}")
    init = Sim3.identity() if gt_from_est_init is None else gt_from_est_init
    if voxel_size is None:
        voxel_size = AUTO_VOXEL_FRACTION * float(np.linalg.norm(gt.max(axis=0) - gt.min(axis=0)))
    est_pc = _downsample(_apply_sim3(init, est), voxel_size)
    gt_pc = _downsample(gt, voxel_size)
    gt_down = np.asarray(gt_pc.points)
    n_gt = _normals(gt_pc, normal_knn)
    gt_from_est, fitness, inlier_rmse = init, float("nan"), float("nan")
    if icp != "none":
        max_distance = icp_max_distance if icp_max_distance is not None else 10.0 * _resolution(gt_down, voxel_size)
        refine, fitness, inlier_rmse = _icp(est_pc, gt_pc, icp, max_distance, with_scale, icp_max_iterations)
        est_pc = _cloud(_apply_sim3(refine, np.asarray(est_pc.points)))
        gt_from_est = refine @ init
    est_down = np.asarray(est_pc.points)
    n_est = _normals(est_pc, normal_knn)
    acc, acc_idx = cKDTree(gt_down).query(est_down)
    comp, comp_idx = cKDTree(est_down).query(gt_down)
    nc_acc = np.abs(np.sum(n_est * n_gt[acc_idx], axis=1))
    nc_comp = np.abs(np.sum(n_gt * n_est[comp_idx], axis=1))
    threshold = threshold_voxels * _resolution(gt_down, voxel_size)
    precision, recall = float(np.mean(acc <= threshold)), float(np.mean(comp <= threshold))
    return PointMapMetrics(
        accuracy_mean=float(acc.mean()),
        accuracy_median=float(np.median(acc)),
        completeness_mean=float(comp.mean()),
        completeness_median=float(np.median(comp)),
        chamfer=float(0.5 * (acc.mean() + comp.mean())),
        normal_consistency=float(0.5 * (nc_acc.mean() + nc_comp.mean())),
        normal_consistency_median=float(0.5 * (np.median(nc_acc) + np.median(nc_comp))),
        threshold=threshold,
        precision=precision,
        recall=recall,
        fscore=2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        gt_from_est=gt_from_est,
        voxel_size=float(voxel_size),
        icp=icp,
        icp_fitness=fitness,
        icp_inlier_rmse=inlier_rmse,
        num_est=len(est_down),
        num_gt=len(gt_down),
    )
