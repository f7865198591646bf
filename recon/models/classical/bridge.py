"""Registering a frame that the KLT tracks do not reach with enough triangulated points.

Over a wide baseline (an object-centric orbit, 10-15° between views) KLT keeps only a few dozen tracks
across a hard step, most of them born one frame before it: the frame beyond sees almost no point that two
registered frames triangulate, and PnP fails for it and, through it, for every later frame. The frames
around the step still share plenty of ORB keypoints, though. So, as incremental SfM does, keypoint tracks
are built over the frame and its nearest registered neighbours: ORB matches between every pair of them
(ratio test; between registered frames their known epipolar geometry checks each match, against the new
frame a RANSAC fundamental matrix), chained into tracks through shared keypoints. A keypoint track seen
in two registered frames is triangulated, and its keypoint in the new frame gives a 2D-3D correspondence;
PnP-RANSAC on those (and on the frame's own KLT tracks with a point) registers the frame. The keypoint
tracks that agree with the pose join the window's tracks, so triangulation and bundle adjustment use them
like any other. Only frames that plain PnP failed for come here: an ordinary window pays nothing."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from recon.geometry import skew
from recon.models.classical.pose import PoseConfig, max_triangulation_angle_deg, pnp, reprojection_error_px, triangulate
from recon.models.classical.tracks import ratio_matches, sampson_px


@dataclass(frozen=True)
class BridgeConfig:
    neighbours: int = 4  # registered frames, nearest in the stream, matched with the frame (0: no bridge)
    orb_features: int = 2000  # as the tracker's ORB rescue
    match_ratio: float = 0.8  # Lowe's ratio test, as the tracker's ORB rescue
    epipolar_px: float = 1.5  # Sampson distance a match with the new frame must keep to its pair's RANSAC F
    # As the tracker's ORB rescue: fewer agreeing matches say nothing reliable (and six points fit a pose to
    # a handful of wrong matches).
    min_inliers: int = 15
    # Keypoint matches across a wide baseline are largely wrong: a 4-point sample at 30% inliers is clean with
    # probability ~1%, so RANSAC needs thousands of draws, not the 200 that track PnP uses.
    ransac_iterations: int = 2000


@dataclass
class Registration:
    cam_from_world: np.ndarray  # [4,4]
    new_tracks_uv: np.ndarray  # [M,S,2] keypoint tracks to add to the window's (NaN where unseen)
    inliers: int  # correspondences that fit the pose


def bridge_candidate(registered: np.ndarray, tried: np.ndarray) -> int:
    """The unregistered, untried frame nearest in the stream to a registered one: neighbours in time share
    the most view."""
    todo, placed = np.nonzero(~registered & ~tried)[0], np.nonzero(registered)[0]
    return int(todo[np.argmin(np.abs(todo[:, None] - placed[None, :]).min(1))])


def _fundamental(cam_from_world: np.ndarray, i: int, j: int, K: np.ndarray) -> np.ndarray:
    """F with x_j^T F x_i = 0 from two known poses."""
    j_from_i = cam_from_world[j] @ np.linalg.inv(cam_from_world[i])
    K_inv = np.linalg.inv(K)
    return K_inv.T @ skew(j_from_i[:3, 3]) @ j_from_i[:3, :3] @ K_inv


class DescriptorBridge:
    """ORB keypoints of each frame and raw matches of each pair, computed once per window and only on need."""

    def __init__(self, gray: list[np.ndarray], cfg: BridgeConfig) -> None:
        self.gray, self.cfg = gray, cfg
        self._orb = cv2.ORB.create(cfg.orb_features)
        self._keypoints: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._matches: dict[tuple[int, int], np.ndarray] = {}

    def _frame_keypoints(self, s: int) -> tuple[np.ndarray, np.ndarray | None]:
        if s not in self._keypoints:
            kps, desc = self._orb.detectAndCompute(self.gray[s], None)
            self._keypoints[s] = (np.array([k.pt for k in kps], np.float64).reshape(-1, 2), desc)
        return self._keypoints[s]

    def _pair(self, i: int, j: int) -> np.ndarray:
        """Ratio-test matches [M,2] (keypoint of i, keypoint of j), one per keypoint of j."""
        if (i, j) not in self._matches:
            di, dj = self._frame_keypoints(i)[1], self._frame_keypoints(j)[1]
            m = ratio_matches(di, dj, self.cfg.match_ratio) if di is not None and dj is not None else []
            self._matches[(i, j)] = np.array([(x.queryIdx, x.trainIdx) for x in m], int).reshape(-1, 2)
        return self._matches[(i, j)]

    def _verified(
        self, i: int, j: int, s: int, cam_from_world: np.ndarray, K: np.ndarray, reproj_px: float
    ) -> np.ndarray:
        m = self._pair(i, j)
        if len(m) < self.cfg.min_inliers:
            return m[:0]
        uv_i, uv_j = self._keypoints[i][0][m[:, 0]], self._keypoints[j][0][m[:, 1]]
        if s not in (i, j):  # both registered: their known epipolar geometry decides
            return m[sampson_px(_fundamental(cam_from_world, i, j, K), uv_i, uv_j) < reproj_px]
        F, inl = cv2.findFundamentalMat(uv_i, uv_j, cv2.FM_RANSAC, self.cfg.epipolar_px, 0.999)
        if F is None or F.shape != (3, 3) or inl is None or int(inl.sum()) < self.cfg.min_inliers:
            return m[:0]
        return m[inl.ravel() > 0]

    def _keypoint_tracks(
        self, frames: list[int], s: int, cam_from_world: np.ndarray, K: np.ndarray, S: int, reproj_px: float
    ) -> np.ndarray:
        """Verified matches over all pairs of `frames`, chained through shared keypoints -> uv [M,S,2]; a
        chain that holds two keypoints of one frame is contradictory and dropped."""
        offsets = np.cumsum([0] + [len(self._frame_keypoints(f)[0]) for f in frames])
        edges = [
            np.stack([offsets[a] + m[:, 0], offsets[b] + m[:, 1]], 1)
            for a, b in combinations(range(len(frames)), 2)
            if len(m := self._verified(frames[a], frames[b], s, cam_from_world, K, reproj_px))
        ]
        if not edges:
            return np.zeros((0, S, 2))
        e = np.concatenate(edges)
        n = int(offsets[-1])
        _, label = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)), directed=False)
        node_frame = np.repeat(np.arange(len(frames)), np.diff(offsets))
        linked = np.zeros(n, bool)
        linked[e.ravel()] = True
        nodes = np.nonzero(linked)[0]
        comps, comp_of = np.unique(label[nodes], return_inverse=True)
        counts = np.zeros((len(comps), len(frames)), int)
        np.add.at(counts, (comp_of, node_frame[nodes]), 1)
        uv = np.full((len(comps), S, 2), np.nan)
        for k, f in enumerate(frames):
            sel = node_frame[nodes] == k
            uv[comp_of[sel], f] = self._keypoints[f][0][nodes[sel] - offsets[k]]
        return uv[counts.max(1) == 1]

    def register(
        self,
        s: int,
        uv_px: np.ndarray,
        points_w: np.ndarray,
        cam_from_world: np.ndarray,
        registered: np.ndarray,
        K: np.ndarray,
        pose_cfg: PoseConfig,
    ) -> Registration | None:
        """Pose of frame s (cam_from_world[s] is ignored) from keypoint tracks over it and its nearest registered
        frames, and from its own KLT tracks with a point; None when too few correspondences agree on a pose."""
        cfg = self.cfg
        S = uv_px.shape[1]
        reg = np.nonzero(registered)[0]
        near = [int(r) for r in reg[np.argsort(np.abs(reg - s), kind="stable")[: cfg.neighbours]]]
        thr = 2.0 * pose_cfg.ransac_px + 1.0  # the PnP threshold
        kt = self._keypoint_tracks(sorted(near + [s]), s, cam_from_world, K, S, pose_cfg.max_reproj_px)
        # Keypoint tracks seen in the frame and in two registered frames: triangulated from the registered ones.
        obs = ~np.isnan(kt[..., 0]) & registered[None, :]
        cand = np.nonzero((obs.sum(1) >= 2) & ~np.isnan(kt[:, s, 0]))[0]
        X = triangulate(kt[cand], obs[cand], cam_from_world, K)
        err = reprojection_error_px(X, kt[cand], obs[cand], cam_from_world, K)
        ok = np.all(np.where(obs[cand], err, 0.0) < pose_cfg.max_reproj_px, axis=1)
        ok &= max_triangulation_angle_deg(X, obs[cand], cam_from_world) >= pose_cfg.min_triangulation_deg
        own = np.nonzero(np.isfinite(points_w[:, 0]) & ~np.isnan(uv_px[:, s, 0]))[0]
        pts = np.concatenate([points_w[own], X[ok]])
        uv_s = np.concatenate([uv_px[own, s], kt[cand[ok], s]])
        res = pnp(pts, uv_s, K, pose_cfg, iterations=cfg.ransac_iterations, min_inliers=cfg.min_inliers)
        if res is None:
            return None
        pose = res[0]
        fit = reprojection_error_px(pts, uv_s[:, None], np.ones((len(pts), 1), bool), pose[None], K)[:, 0] < thr
        if fit.sum() < cfg.min_inliers:
            return None
        # Keypoint tracks that join the window: every one through the frame whose keypoints in the registered
        # frames fit the new pose's epipolar geometry (triangulation and BA re-check them like any track).
        poses = cam_from_world.copy()
        poses[s] = pose
        through_s = np.nonzero(~np.isnan(kt[:, s, 0]))[0]
        keep = np.ones(len(through_s), bool)
        for r in near:
            both = ~np.isnan(kt[through_s, r, 0])
            d = sampson_px(_fundamental(poses, r, s, K), kt[through_s[both], r], kt[through_s[both], s])
            keep[np.nonzero(both)[0][d >= thr]] = False
        return Registration(pose, kt[through_s[keep]], int(fit.sum()))
