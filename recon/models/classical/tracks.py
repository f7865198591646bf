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


def track_window(gray_frames: list[np.ndarray], cfg: TrackerConfig = TrackerConfig()) -> Tracks:
    """KLT from each frame to the next. A track ends at its first failed or inconsistent step."""
    S = len(gray_frames)
    H, W = gray_frames[0].shape
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
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_frames[s], gray_frames[s + 1], p0, None, **lk)
            p0b, st0, _ = cv2.calcOpticalFlowPyrLK(gray_frames[s + 1], gray_frames[s], p1, None, **lk)
            p1 = p1.reshape(-1, 2)
            fb = np.linalg.norm(p0b.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
            inside = (p1[:, 0] >= 0) & (p1[:, 0] <= W - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= H - 1)
            ok = (st1.ravel() == 1) & (st0.ravel() == 1) & (fb < cfg.fb_max_px) & inside
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
