"""Trajectory accuracy: absolute trajectory error (ATE) after a Sim(3) (or SE(3)) Umeyama alignment,
relative pose error (RPE) per frame delta or per metre of path, KITTI odometry drift and TUM timestamp
association. Poses are `world_from_cam` [N,4,4] (camera-to-world, the KITTI/TUM file convention).

Semantics follow the tools the numbers are compared with: ATE and RPE match evo (`evo_ape`/`evo_rpe`,
with RPE pairs taken on the ground-truth path), drift matches the KITTI devkit's `calcSequenceErrors`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recon.geometry import as_4x4, invert_rigid, rotation_distance_deg
from recon.pose_fit import umeyama_sim3
from recon.types import Sim3

KITTI_LENGTHS_M: tuple[float, ...] = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)
# Fallback for paths too short for KITTI's segments: the same 1/8..8/8 ladder as 100..800 m on an 800+ m
# drive, stopping at 0.8 because a segment must end strictly past its length (devkit rule).
SHORT_PATH_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class ErrorStats:
    """Summary of a set of non-negative errors (evo's statistics; std is the population std)."""

    rmse: float
    mean: float
    median: float
    std: float
    min: float
    max: float
    count: int

    @staticmethod
    def of(errors: np.ndarray) -> ErrorStats:
        e = np.asarray(errors, dtype=np.float64).reshape(-1)
        if e.size == 0:
            nan = float("nan")
            return ErrorStats(nan, nan, nan, nan, nan, nan, 0)
        return ErrorStats(
            float(np.sqrt(np.mean(e**2))),
            float(e.mean()),
            float(np.median(e)),
            float(e.std()),
            float(e.min()),
            float(e.max()),
            int(e.size),
        )


@dataclass(frozen=True, eq=False)
class ATE:
    rmse: float
    mean: float
    median: float
    max: float
    length: float  # ground-truth path length, same units
    gt_from_est: Sim3
    std: float
    with_scale: bool  # Sim(3) (True) or SE(3) (False) alignment
    position_errors: np.ndarray  # [N] per-frame |centre error| after alignment, ground-truth units
    rotation_errors_deg: np.ndarray  # [N] per-frame angle between aligned estimate and ground truth
    rotation_deg: ErrorStats

    @property
    def rmse_percent_of_length(self) -> float:
        return 100.0 * self.rmse / self.length if self.length > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class RPE:
    translation: ErrorStats  # ground-truth units (metres when metric)
    rotation_deg: ErrorStats
    delta: float
    delta_unit: Literal["frames", "m"]
    pairs: np.ndarray  # [K,2] int frame indices (i, j) compared
    translation_errors: np.ndarray  # [K]
    rotation_errors_deg: np.ndarray  # [K]
    scale: float  # the factor applied to the estimate's positions before comparing


@dataclass(frozen=True)
class DriftAtLength:
    length: float
    t_err_percent: float
    r_err_deg_per_100m: float
    num_segments: int


@dataclass(frozen=True, eq=False)
class KittiDrift:
    """KITTI odometry drift. Totals average over every segment of every length, as the devkit does (so
    lengths with more segments weigh more); `per_length` gives each length's own average."""

    t_err_percent: float
    r_err_deg_per_100m: float
    per_length: tuple[DriftAtLength, ...]
    lengths: tuple[float, ...]  # segment lengths used, ground-truth units
    lengths_source: Literal["kitti", "custom", "path_fractions"]
    path_length: float
    num_segments: int
    step_frames: int
    scale: float  # the factor applied to the estimate's positions before comparing
    segment_first: np.ndarray  # [K] int first frame of each segment
    segment_last: np.ndarray  # [K] int last frame
    segment_length: np.ndarray  # [K] the nominal length of the segment
    segment_t_err_percent: np.ndarray  # [K]
    segment_r_err_deg_per_100m: np.ndarray  # [K]


def _positions(world_from_cam: np.ndarray) -> np.ndarray:
    return as_4x4(world_from_cam)[:, :3, 3]


def _check_pair(
    est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, min_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    est = as_4x4(est_world_from_cam)
    gt = as_4x4(gt_world_from_cam)
    if est.ndim != 3 or len(est) != len(gt) or len(est) < min_frames:
        raise ValueError(
            f"need two trajectories [N,4,4] of the same >= {min_frames} frames, got {est.shape} and {gt.shape}"
        )
    return est, gt


def path_distances(world_from_cam: np.ndarray) -> np.ndarray:
    """[N] distance travelled from frame 0 to each frame along the camera centres."""
    c = _positions(world_from_cam)
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(c, axis=0), axis=1))])


def absolute_trajectory_error(
    est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, with_scale: bool = True
) -> ATE:
    """Camera centres of two trajectories of the same frames [N,4,4]: align est onto gt (Umeyama on the
    centres: Sim(3) for up-to-scale runs, SE(3) with `with_scale=False` for metric runs), then the
    per-frame position errors' statistics (evo APE translation_part), plus the rotation part."""
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam, min_frames=3)
    est_c, gt_c = est[:, :3, 3], gt[:, :3, 3]
    gt_from_est = umeyama_sim3(est_c, gt_c, with_scale=with_scale)
    est_in_gt = gt_from_est.apply_to_world_from_cam(est)
    err = np.linalg.norm(est_in_gt[:, :3, 3] - gt_c, axis=1)
    rot_err = rotation_distance_deg(est_in_gt[:, :3, :3], gt[:, :3, :3])
    length = float(path_distances(gt)[-1])
    stats = ErrorStats.of(err)
    return ATE(
        rmse=stats.rmse,
        mean=stats.mean,
        median=stats.median,
        max=stats.max,
        length=length,
        gt_from_est=gt_from_est,
        std=stats.std,
        with_scale=with_scale,
        position_errors=err,
        rotation_errors_deg=rot_err,
        rotation_deg=ErrorStats.of(rot_err),
    )


def _estimate_scale(est: np.ndarray, gt: np.ndarray, with_scale: bool, scale: float | None) -> float:
    # Relative poses do not change under a rigid change of the world frame, so of a Sim(3) alignment only
    # its scale matters here: an up-to-scale estimate must be brought to ground-truth units first.
    if scale is not None:
        return float(scale)
    if not with_scale:
        return 1.0
    return umeyama_sim3(est[:, :3, 3], gt[:, :3, 3], with_scale=True).s


def _scaled(world_from_cam: np.ndarray, scale: float) -> np.ndarray:
    out = world_from_cam.copy()
    out[:, :3, 3] *= scale
    return out


def relative_motion_errors(
    est_world_from_cam: np.ndarray, gt_world_from_cam: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For index pairs [K,2] (i, j): the motion i->j in each trajectory (`cam_i_from_cam_j`) and the
    error between them -> (translation error [K], rotation error deg [K]).

    Translation is |t_est_rel - t_gt_rel| (the translation norm of evo's `inv(gt_rel) est_rel` and of the
    devkit's `inv(est_rel) gt_rel` alike); rotation is the angle between the two relative rotations."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros(0), np.zeros(0)
    est = as_4x4(est_world_from_cam)
    gt = as_4x4(gt_world_from_cam)
    i, j = pairs[:, 0], pairs[:, 1]
    est_rel = np.einsum("kab,kbc->kac", invert_rigid(est[i]), est[j])
    gt_rel = np.einsum("kab,kbc->kac", invert_rigid(gt[i]), gt[j])
    t_err = np.linalg.norm(est_rel[:, :3, 3] - gt_rel[:, :3, 3], axis=1)
    r_err = rotation_distance_deg(est_rel[:, :3, :3], gt_rel[:, :3, :3])
    return t_err, r_err


def pairs_by_frames(num_frames: int, delta: int) -> np.ndarray:
    """Consecutive (non-overlapping) pairs (0, d), (d, 2d), ... [K,2]; evo's all_pairs=False."""
    ids = np.arange(0, num_frames, int(delta))
    return np.stack([ids[:-1], ids[1:]], axis=1).astype(np.int64)


def pairs_by_path(gt_world_from_cam: np.ndarray, delta: float) -> np.ndarray:
    """Consecutive pairs spanning >= `delta` of ground-truth path each [K,2]: walk the path, close a pair at
    the first frame where the distance travelled since the pair's start reaches delta, start the next
    pair there (evo's `filter_pairs_by_path`, all_pairs=False)."""
    c = _positions(gt_world_from_cam)
    steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
    ids = [0]
    travelled = 0.0
    # Accumulate step by step (not differences of a cumulative sum) so the cut frames are evo's exactly.
    for i, step in enumerate(steps.tolist(), start=1):
        travelled += step
        if travelled >= delta:
            ids.append(i)
            travelled = 0.0
    ids_arr = np.asarray(ids, dtype=np.int64)
    return np.stack([ids_arr[:-1], ids_arr[1:]], axis=1)


def relative_pose_error(
    est_world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray,
    delta: float = 1,
    delta_unit: Literal["frames", "m"] = "frames",
    with_scale: bool = True,
    scale: float | None = None,
) -> RPE:
    """RPE over consecutive pairs `delta` frames apart (`delta_unit="frames"`) or `delta` apart along the
    ground-truth path (`"m"`, ground-truth units). With `with_scale` the estimate's positions are first
    multiplied by the scale of the Sim(3) Umeyama fit onto ground truth (as `evo_rpe -as`); `scale`
    gives that factor directly instead (e.g. `ate.gt_from_est.s`). Translation errors are in
    ground-truth units, rotation errors in degrees."""
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam, min_frames=2)
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if delta_unit == "frames":
        if float(delta) != int(delta):
            raise ValueError(f"a delta in frames must be an integer, got {delta}")
        pairs = pairs_by_frames(len(gt), int(delta))
    elif delta_unit == "m":
        pairs = pairs_by_path(gt, float(delta))
    else:
        raise ValueError(f"delta_unit must be 'frames' or 'm', got {delta_unit!r}")
    s = _estimate_scale(est, gt, with_scale, scale)
    t_err, r_err = relative_motion_errors(_scaled(est, s), gt, pairs)
    return RPE(ErrorStats.of(t_err), ErrorStats.of(r_err), float(delta), delta_unit, pairs, t_err, r_err, s)


def _segment_lengths(
    path_length: float, lengths: Sequence[float] | None, path_fractions: Sequence[float] | None
) -> tuple[tuple[float, ...], Literal["kitti", "custom", "path_fractions"]]:
    if lengths is not None and path_fractions is not None:
        raise ValueError("give segment lengths or path fractions, not both")
    if lengths is not None:
        return tuple(float(x) for x in lengths), "custom"
    if path_fractions is None and path_length > KITTI_LENGTHS_M[0]:
        return KITTI_LENGTHS_M, "kitti"
    fractions = SHORT_PATH_FRACTIONS if path_fractions is None else tuple(path_fractions)
    if not all(0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"path fractions must lie in (0, 1), got {fractions}")
    return tuple(float(f) * path_length for f in fractions), "path_fractions"


def kitti_drift(
    est_world_from_cam: np.ndarray,
    gt_world_from_cam: np.ndarray,
    lengths: Sequence[float] | None = None,
    path_fractions: Sequence[float] | None = None,
    step_frames: int = 10,
    with_scale: bool = True,
    scale: float | None = None,
) -> KittiDrift:
    """KITTI odometry drift (devkit `calcSequenceErrors`): segments start every `step_frames` frames; a
    segment of length L ends at the first frame whose ground-truth path distance from its start exceeds
    L (strictly); its error is the relative-pose error over the segment divided by L.
    t_err % = 100 mean(t_err / L), r_err deg/100 m = 100 (180/pi) mean(r_err / L).

    Lengths: `lengths` (ground-truth units), or `path_fractions` of the ground-truth path, or by default
    KITTI's 100..800 m -- and for a path of 100 m or less, where none of those fits, the fractions
    0.1..0.8 of the path (`lengths_source` says which). The devkit compares metric poses; for up-to-scale
    estimates `with_scale` first applies the Sim(3) Umeyama scale (or `scale` directly)."""
    est, gt = _check_pair(est_world_from_cam, gt_world_from_cam, min_frames=2)
    if step_frames < 1:
        raise ValueError(f"step_frames must be >= 1, got {step_frames}")
    dist = path_distances(gt)
    used, source = _segment_lengths(float(dist[-1]), lengths, path_fractions)
    firsts = np.arange(0, len(gt), step_frames)
    # Segment order (first frame outer, length inner) as in the devkit; dist is non-decreasing, so the
    # first index with dist > dist[first] + L is a right-sided binary search.
    first_grid = np.repeat(firsts, len(used))
    length_grid = np.tile(np.asarray(used, dtype=np.float64), len(firsts))
    last_grid = np.searchsorted(dist, dist[first_grid] + length_grid, side="right")
    ok = last_grid < len(gt)
    first_k, last_k, length_k = first_grid[ok], last_grid[ok], length_grid[ok]
    s = _estimate_scale(est, gt, with_scale, scale)
    t_err, r_err_deg = relative_motion_errors(_scaled(est, s), gt, np.stack([first_k, last_k], axis=1))
    t_pct = 100.0 * t_err / length_k if len(length_k) else np.zeros(0)
    r_per_100 = 100.0 * r_err_deg / length_k if len(length_k) else np.zeros(0)
    per_length = tuple(
        DriftAtLength(L, *_means(t_pct[length_k == L], r_per_100[length_k == L]), int(np.sum(length_k == L)))
        for L in used
    )
    t_all, r_all = _means(t_pct, r_per_100)
    return KittiDrift(
        t_err_percent=t_all,
        r_err_deg_per_100m=r_all,
        per_length=per_length,
        lengths=used,
        lengths_source=source,
        path_length=float(dist[-1]),
        num_segments=int(len(length_k)),
        step_frames=int(step_frames),
        scale=s,
        segment_first=first_k.astype(np.int64),
        segment_last=last_k.astype(np.int64),
        segment_length=length_k,
        segment_t_err_percent=t_pct,
        segment_r_err_deg_per_100m=r_per_100,
    )


def _means(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(b.mean())


def associate(
    stamps_a: np.ndarray, stamps_b: np.ndarray, max_diff_s: float = 0.02, offset_b_s: float = 0.0
) -> np.ndarray:
    """Match timestamps one-to-one (TUM's associate.py): among all pairs with |a - (b + offset)| <= max_diff,
    take the closest first, greedily, each stamp used at most once. -> [K,2] int (index into a, index
    into b), sorted by the index into a."""
    a = np.asarray(stamps_a, dtype=np.float64).reshape(-1)
    b = np.asarray(stamps_b, dtype=np.float64).reshape(-1) + offset_b_s
    order_b = np.argsort(b, kind="stable")
    b_sorted = b[order_b]
    lo = np.searchsorted(b_sorted, a - max_diff_s, side="left")
    hi = np.searchsorted(b_sorted, a + max_diff_s, side="right")
    counts = hi - lo
    cand_a = np.repeat(np.arange(len(a)), counts)
    # Positions lo[k]..hi[k]-1 of every a's window, flattened.
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    cand_b = order_b[starts + np.arange(counts.sum())] if counts.sum() else np.zeros(0, dtype=np.int64)
    diff = np.abs(a[cand_a] - b[cand_b])
    keep = diff <= max_diff_s
    cand_a, cand_b, diff = cand_a[keep], cand_b[keep], diff[keep]
    # Closest first; ties broken by the stamps, as TUM's sort of (diff, a, b) tuples does.
    order = np.lexsort((b[cand_b], a[cand_a], diff))
    used_a = np.zeros(len(a), dtype=bool)
    used_b = np.zeros(len(b), dtype=bool)
    matches: list[tuple[int, int]] = []
    for ia, ib in zip(cand_a[order].tolist(), cand_b[order].tolist()):
        if not used_a[ia] and not used_b[ib]:
            used_a[ia] = used_b[ib] = True
            matches.append((ia, ib))
    out = np.asarray(sorted(matches), dtype=np.int64).reshape(-1, 2)
    return out
