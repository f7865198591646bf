"""Sparse KLT tracks across a window, with a forward–backward check and re-detection."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class TrackerConfig:
    max_corners: int = 1200
    quality: float = 0.003
    min_distance_px: int = 8
    win_px: int = 15
    pyramid_levels: int = 4
    fb_max_px: float = 0.3  # forward–backward round-trip error allowed: repeated facades breed drifting tracks
    redetect_below: float = 0.8  # re-detect when fewer than this share of max_corners is alive
    # KLT alone loses most tracks beyond ~30 px of motion (a sharp turn moves the image ~90 px a frame).
    # When fewer than this share of a step's tracks survive, the step is redone from positions predicted
    # by an ORB homography between the two frames (the turn's rotation dominates the image motion).
    guided_below: float = 0.6
    guided_orb_features: int = 800


@dataclass
class Tracks:
    """uv_px [T,S,2] float64 in model pixels, NaN where track t is not seen in frame s."""

    uv_px: np.ndarray

    @property
    def visible(self) -> np.ndarray:
        return ~np.isnan(self.uv_px[..., 0])

    def __len__(self) -> int:
        return int(self.uv_px.shape[0])


def _detect(gray: np.ndarray, count: int, cfg: TrackerConfig, existing_px: np.ndarray) -> np.ndarray:
    mask = np.full(gray.shape, 255, np.uint8)
    for u, v in existing_px.astype(int):
        cv2.circle(mask, (int(u), int(v)), cfg.min_distance_px, 0, -1)
    pts = cv2.goodFeaturesToTrack(gray, count, cfg.quality, cfg.min_distance_px, mask=mask, blockSize=5)
    return np.zeros((0, 2), np.float32) if pts is None else pts.reshape(-1, 2)


def _homography(gray_a: np.ndarray, gray_b: np.ndarray, cfg: TrackerConfig) -> np.ndarray | None:
    """A homography a -> b from ORB matches (RANSAC), or None when too few matches agree."""
    orb = cv2.ORB_create(cfg.guided_orb_features)
    ka, da = orb.detectAndCompute(gray_a, None)
    kb, db = orb.detectAndCompute(gray_b, None)
    if da is None or db is None or len(ka) < 20 or len(kb) < 20:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    if len(matches) < 20:
        return None
    a = np.float32([ka[m.queryIdx].pt for m in matches])
    b = np.float32([kb[m.trainIdx].pt for m in matches])
    H, inliers = cv2.findHomography(a, b, cv2.RANSAC, 4.0)
    if H is None or inliers is None or int(inliers.sum()) < 20 or abs(np.linalg.det(H)) < 1e-6:
        return None
    return H


def _klt_step(gray_a: np.ndarray, gray_b: np.ndarray, p0: np.ndarray, lk: dict, cfg: TrackerConfig,
              H: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track p0 [N,1,2] from a to b with a forward-backward check -> (p1 [N,2], ok [N]). With H, both
    directions start from the homography's prediction."""
    H_img, W_img = gray_b.shape
    if H is None:
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, p0, None, **lk)
        p0b, st0, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, p1, None, **lk)
    else:
        guess = cv2.perspectiveTransform(p0, H).astype(np.float32)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, p0, guess, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
        back = cv2.perspectiveTransform(p1, np.linalg.inv(H)).astype(np.float32)
        p0b, st0, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, p1, back, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
    p1 = p1.reshape(-1, 2)
    fb = np.linalg.norm(p0b.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
    inside = (p1[:, 0] >= 0) & (p1[:, 0] <= W_img - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= H_img - 1)
    return p1, (st1.ravel() == 1) & (st0.ravel() == 1) & (fb < cfg.fb_max_px) & inside


def track_window(gray_frames: list[np.ndarray], cfg: TrackerConfig = TrackerConfig()) -> Tracks:
    """KLT from each frame to the next. A track ends at its first failed or inconsistent step."""
    S = len(gray_frames)
    win = (cfg.win_px, cfg.win_px)
    lk = dict(winSize=win, maxLevel=cfg.pyramid_levels, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))

    uv = np.full((cfg.max_corners * S, S, 2), np.nan)  # upper bound: every frame re-detects fully
    alive_px = _detect(gray_frames[0], cfg.max_corners, cfg, np.zeros((0, 2)))
    alive_ids = np.arange(len(alive_px))
    uv[alive_ids, 0] = alive_px
    n_tracks = len(alive_px)

    for s in range(S - 1):
        if len(alive_px):
            p0 = alive_px.reshape(-1, 1, 2).astype(np.float32)
            p1, ok = _klt_step(gray_frames[s], gray_frames[s + 1], p0, lk, cfg)
            if ok.mean() < cfg.guided_below and (H := _homography(gray_frames[s], gray_frames[s + 1], cfg)) is not None:
                p1_guided, ok_guided = _klt_step(gray_frames[s], gray_frames[s + 1], p0, lk, cfg, H)
                if ok_guided.sum() > ok.sum():
                    p1, ok = p1_guided, ok_guided
            alive_ids, alive_px = alive_ids[ok], p1[ok]
            uv[alive_ids, s + 1] = alive_px
        if len(alive_px) < cfg.redetect_below * cfg.max_corners:
            new_px = _detect(gray_frames[s + 1], cfg.max_corners - len(alive_px), cfg, alive_px)
            new_ids = np.arange(n_tracks, n_tracks + len(new_px))
            uv[new_ids, s + 1] = new_px
            n_tracks += len(new_px)
            alive_ids = np.concatenate([alive_ids, new_ids])
            alive_px = np.concatenate([alive_px.reshape(-1, 2), new_px.reshape(-1, 2)]).astype(np.float32)

    uv = uv[:n_tracks]
    keep = (~np.isnan(uv[..., 0])).sum(1) >= 2  # a one-frame track says nothing
    return Tracks(uv_px=uv[keep])
