"""Sparse KLT tracks across a window, with a forward–backward check and re-detection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from recon.models.classical.memo import SharedMemo, image_key

# ORB features of frames and ORB results of steps, shared by a model's windows (`OrbFeatures`): at most this many,
# about 250 kB each at 640x480 (40 MB).
FEATURE_ITEMS = 160


@dataclass(frozen=True)
class TrackerConfig:
    max_corners: int = 1200
    quality: float = 0.003
    min_distance_px: int = 8
    # KLT moves its patch as a whole, but the road's image motion grows with the square of its distance below
    # the horizon: a 15-px patch overshot it (rendered drives: 0.03-0.05 px a frame too far down); an 11-px
    # patch scattered tracks 10-25% less (0.07-0.12 px instead of 0.07-0.14), with half the bias or less. A
    # small patch alone loses more points where the motion is large (a fast pan: 68% kept instead of 71%, and
    # wide baselines), so the points it loses get a second try with a `retry_win_px` patch. bench_accuracy:
    # ATE 0.56x on average over the stress suite and the real captures (dtu24 34 -> 3.9 mm).
    win_px: int = 11
    retry_win_px: int = 15
    pyramid_levels: int = 4
    fb_max_px: float = 0.3  # forward–backward round-trip error allowed: repeated facades breed drifting tracks
    redetect_below: float = 0.8  # re-detect when fewer than this share of max_corners is alive
    # KLT alone loses most tracks beyond ~30 px of motion (a sharp turn moves the image ~90 px a frame). When
    # fewer than `guided_below` of a step's tracks survive, the step is redone from positions predicted by an
    # ORB homography between the two frames (the turn's rotation dominates the image motion).
    guided_below: float = 0.6
    # Below `rescue_below` KLT has lost the step: a wide-baseline orbit rolls each view 10-30° (a patch that
    # rotates defeats KLT) and its parallax fits no homography. Then KLT runs against the second frame
    # warped by the homography, lost tracks follow ORB matches and descriptors, every track must fit the
    # matches' fundamental matrix, and the remaining matches start tracks. Only there: resampling and ORB
    # positions cost precision that easy steps (forward driving at 30-60%) do not need to pay.
    rescue_below: float = 0.45
    guided_orb_features: int = 800
    rescue_orb_features: int = 2000
    match_ratio: float = 0.8  # Lowe's ratio test on ORB distances
    epipolar_px: float = 1.5  # Sampson distance to the matches' fundamental matrix a rescued step keeps
    chain_px: float = 1.0  # a lost track this close to an ORB match in a follows it
    min_matches: int = 15  # fewer ORB matches agreeing on F or H say nothing reliable about the pair


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


class OrbFeatures:
    """ORB features of a window's frames and ORB results of its steps, each computed once: two hard steps in a
    row need the frame between them twice, and a wide-baseline stream (the DTU scans: most steps need the ORB
    rescue) detected and matched each overlap frame again in the next window, a quarter of its ORB work. Kept
    in `shared` with the model's other windows (by default, the window's own), by the images' contents."""

    def __init__(self, gray_frames: list[np.ndarray], shared: SharedMemo[Any] | None = None) -> None:
        self.gray = gray_frames
        self._shared = shared if shared is not None else SharedMemo[Any](FEATURE_ITEMS)
        # image_key by frame, taken when ORB first needs the frame (easy steps never do)
        self._keys: dict[int, bytes] = {}

    def __call__(self, s: int, count: int) -> tuple[Sequence[cv2.KeyPoint], np.ndarray | None]:
        """(keypoints, descriptors) of frame s with ORB at `count` features."""
        return self._shared.get(
            ("orb", self._key(s), count), lambda: cv2.ORB.create(count).detectAndCompute(self.gray[s], None)
        )

    def step(self, what: str, s: int, cfg: TrackerConfig, compute: Callable[[], Any]) -> Any:
        """`compute()`'s result for step s -> s + 1 (`what` names it), computed once for these two images."""
        return self._shared.get((what, self._key(s), self._key(s + 1), cfg), compute)

    def _key(self, s: int) -> bytes:
        if s not in self._keys:
            self._keys[s] = image_key(self.gray[s])
        return self._keys[s]


def _homography(orbs: OrbFeatures, s: int, cfg: TrackerConfig) -> np.ndarray | None:
    """A homography frame s -> s + 1 from ORB matches (RANSAC), or None when too few matches agree."""
    return orbs.step("homography", s, cfg, lambda: _fit_homography(orbs, s, cfg))


def _fit_homography(orbs: OrbFeatures, s: int, cfg: TrackerConfig) -> np.ndarray | None:
    ka, da = orbs(s, cfg.guided_orb_features)
    kb, db = orbs(s + 1, cfg.guided_orb_features)
    if da is None or db is None or len(ka) < 20 or len(kb) < 20:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    if len(matches) < 20:
        return None
    a = np.array([ka[m.queryIdx].pt for m in matches], np.float32)
    b = np.array([kb[m.trainIdx].pt for m in matches], np.float32)
    H, inliers = cv2.findHomography(a, b, cv2.RANSAC, 4.0)
    if H is None or inliers is None or int(inliers.sum()) < 20 or abs(np.linalg.det(H)) < 1e-6:
        return None
    H.setflags(write=False)  # shared by every window that tracks this step (OrbFeatures)
    return H


@dataclass(frozen=True)
class _PairMatches:
    """ORB matches between two frames that agree on one fundamental matrix: uv_a, uv_b [M,2] float32."""

    uv_a: np.ndarray
    uv_b: np.ndarray
    F: np.ndarray  # b^T F a = 0
    H: np.ndarray | None  # a -> b homography of the dominant plane (or rotation), None when none fits
    desc_b: np.ndarray  # ORB descriptors of all keypoints of b
    kp_b: np.ndarray  # [K,2] their positions


def ratio_matches(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> list:
    """Matches a -> b whose best distance beats the second best by `ratio`, one per keypoint of b."""
    if len(desc_a) == 0 or len(desc_b) < 2:
        return []
    best: dict[int, cv2.DMatch] = {}
    for pair in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(desc_a, desc_b, k=2):
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            m = pair[0]
            if m.trainIdx not in best or m.distance < best[m.trainIdx].distance:
                best[m.trainIdx] = m
    return list(best.values())


def _pair_matches(orbs: OrbFeatures, s: int, cfg: TrackerConfig) -> _PairMatches | None:
    """ORB matches frame s -> s + 1 (ratio test, fundamental-matrix RANSAC) or None when too few agree."""
    return orbs.step("pair matches", s, cfg, lambda: _match_pair(orbs, s, cfg))


def _match_pair(orbs: OrbFeatures, s: int, cfg: TrackerConfig) -> _PairMatches | None:
    ka, da = orbs(s, cfg.rescue_orb_features)
    kb, db = orbs(s + 1, cfg.rescue_orb_features)
    if da is None or db is None:
        return None
    matches = ratio_matches(da, db, cfg.match_ratio)
    if len(matches) < cfg.min_matches:
        return None
    a = np.array([ka[m.queryIdx].pt for m in matches], np.float32)
    b = np.array([kb[m.trainIdx].pt for m in matches], np.float32)
    F, inl = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, cfg.epipolar_px, 0.999)
    if F is None or F.shape != (3, 3) or inl is None or int(inl.sum()) < cfg.min_matches:
        return None
    kept = inl.ravel() > 0
    H, h_inl = cv2.findHomography(a, b, cv2.RANSAC, 4.0)
    usable = (
        H is not None and h_inl is not None and int(h_inl.sum()) >= cfg.min_matches and abs(np.linalg.det(H)) > 1e-6
    )
    kp_b = np.array([k.pt for k in kb], np.float32)
    pm = _PairMatches(a[kept], b[kept], F, H if usable else None, db, kp_b)
    for array in (pm.uv_a, pm.uv_b, pm.F, pm.H, pm.desc_b, pm.kp_b):
        if array is not None:
            array.setflags(write=False)  # shared by every window that tracks this step (OrbFeatures)
    return pm


def sampson_px(F: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray) -> np.ndarray:
    """First-order distance [N] in pixels of each correspondence to the epipolar geometry F."""
    ha = np.c_[uv_a, np.ones(len(uv_a))]
    hb = np.c_[uv_b, np.ones(len(uv_b))]
    Fa, Ftb = ha @ F.T, hb @ F
    num = np.sum(hb * Fa, axis=1) ** 2
    return np.sqrt(num / np.maximum(Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Ftb[:, 0] ** 2 + Ftb[:, 1] ** 2, 1e-12))


def _chain_matches(uv_a: np.ndarray, pm: _PairMatches, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Continue tracks at uv_a [N,2] along the pair matches that start where they are -> (uv_b, ok). A track
    that a rescued step started or continued sits exactly on an ORB keypoint, which the next step detects
    again, so ORB tracks chain over several wide-baseline steps at ORB's own scale and orientation."""
    uv_b = np.zeros((len(uv_a), 2), np.float32)
    ok = np.zeros(len(uv_a), bool)
    if len(uv_a) == 0 or len(pm.uv_a) == 0:
        return uv_b, ok
    d2 = ((uv_a[:, None, :] - pm.uv_a[None, :, :]) ** 2).sum(-1)
    nearest = np.argmin(d2, axis=1)
    ok = d2[np.arange(len(uv_a)), nearest] <= radius_px**2
    uv_b[ok] = pm.uv_b[nearest[ok]]
    return uv_b, ok


def _orb_angles_deg(gray: np.ndarray, uv: np.ndarray, radius: int = 15) -> np.ndarray:
    """ORB's orientation (intensity centroid over a disc) at given points: ORB's compute() takes the
    keypoints' angles as given, and a track position has none."""
    offs = np.arange(-radius, radius + 1)
    du, dv = np.meshgrid(offs, offs)
    disc = du**2 + dv**2 <= radius**2
    du, dv = du[disc], dv[disc]
    padded = cv2.copyMakeBorder(gray, radius, radius, radius, radius, cv2.BORDER_REFLECT_101).astype(np.float32)
    ui = np.rint(uv[:, 0]).astype(int)[:, None] + radius + du[None]
    vi = np.rint(uv[:, 1]).astype(int)[:, None] + radius + dv[None]
    patch = padded[vi, ui]
    return np.degrees(np.arctan2(patch @ dv.astype(np.float32), patch @ du.astype(np.float32))) % 360.0


def _match_tracks(
    orb: cv2.ORB, gray_a: np.ndarray, uv_a: np.ndarray, pm: _PairMatches, cfg: TrackerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Continue tracks at uv_a [N,2] into b by ORB descriptors computed at their positions -> (uv_b [N,2], ok [N])."""
    uv_b = np.zeros((len(uv_a), 2), np.float32)
    ok = np.zeros(len(uv_a), bool)
    if len(uv_a) == 0:
        return uv_b, ok
    angles = _orb_angles_deg(gray_a, uv_a)
    kps = [
        cv2.KeyPoint(float(u), float(v), 31.0, float(ang), 0.0, 0, i)
        for i, ((u, v), ang) in enumerate(zip(uv_a, angles))
    ]
    kps, desc = orb.compute(gray_a, kps)  # type: ignore[assignment]  # a tuple back; drops keypoints near the border; class_id keeps the track index
    if desc is None or len(kps) == 0:
        return uv_b, ok
    ids = np.array([k.class_id for k in kps])
    for m in ratio_matches(desc, pm.desc_b, cfg.match_ratio):
        uv_b[ids[m.queryIdx]] = pm.kp_b[m.trainIdx]
        ok[ids[m.queryIdx]] = True
    ok[ok] = sampson_px(pm.F, uv_a[ok], uv_b[ok]) < cfg.epipolar_px
    return uv_b, ok


def _klt_step(
    gray_a: np.ndarray, gray_b: np.ndarray, p0: np.ndarray, lk: dict, cfg: TrackerConfig, H: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Track p0 [N,1,2] from a to b with a forward-backward check -> (p1 [N,2], ok [N]): in `lk`'s patch, then
    the points it lost in a `retry_win_px` patch (see TrackerConfig)."""
    p1, ok = _klt_pass(gray_a, gray_b, p0, lk, cfg, H)
    lost = np.flatnonzero(~ok)
    if len(lost) and cfg.retry_win_px != lk["winSize"][0]:
        retry = dict(lk, winSize=(cfg.retry_win_px, cfg.retry_win_px))
        p1[lost], ok[lost] = _klt_pass(gray_a, gray_b, p0[lost], retry, cfg, H)
    return p1, ok


def _klt_pass(
    gray_a: np.ndarray, gray_b: np.ndarray, p0: np.ndarray, lk: dict, cfg: TrackerConfig, H: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One KLT pass of `_klt_step`. With H, both directions start from the homography's prediction. Only the
    points the forward pass kept inside b go back: LK solves each point on its own, so the rest would only
    cost time (most of a hard step's points)."""
    H_img, W_img = gray_b.shape
    guess = None if H is None else cv2.perspectiveTransform(p0, H).astype(np.float32)
    flags = 0 if H is None else cv2.OPTFLOW_USE_INITIAL_FLOW
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray_a, gray_b, p0, guess, flags=flags, **lk)
    flat = p1.reshape(-1, 2)
    inside = (flat[:, 0] >= 0) & (flat[:, 0] <= W_img - 1) & (flat[:, 1] >= 0) & (flat[:, 1] <= H_img - 1)
    ok = (st1.ravel() == 1) & inside
    if ok.any():
        fwd = np.flatnonzero(ok)
        back = None if H is None else cv2.perspectiveTransform(p1[fwd], np.linalg.inv(H)).astype(np.float32)
        p0b, st0, _ = cv2.calcOpticalFlowPyrLK(gray_b, gray_a, p1[fwd], back, flags=flags, **lk)
        fb = np.linalg.norm(p0b.reshape(-1, 2) - p0[fwd].reshape(-1, 2), axis=1)
        ok[fwd] = (st0.ravel() == 1) & (fb < cfg.fb_max_px)
    return flat, ok


def _klt_warped(
    gray_a: np.ndarray, gray_b: np.ndarray, p0: np.ndarray, lk: dict, cfg: TrackerConfig, H: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_klt_step` against b warped into a's view by H (a -> b): KLT only follows what H leaves, and a
    patch that rolls with the view (an orbit) is upright again. The resampling costs some precision, so
    only steps that KLT has lost use it."""
    H_img, W_img = gray_b.shape
    warped = cv2.warpPerspective(gray_b, H, (W_img, H_img), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    p1_w, ok = _klt_step(gray_a, warped, p0, lk, cfg)
    p1 = cv2.perspectiveTransform(p1_w.reshape(-1, 1, 2), H).reshape(-1, 2).astype(np.float32)
    inside = (p1[:, 0] >= 0) & (p1[:, 0] <= W_img - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= H_img - 1)
    return p1, ok & inside


def _far_from(uv: np.ndarray, existing: np.ndarray, hw: tuple[int, int], radius: int) -> np.ndarray:
    """[N] True where uv is farther than `radius` px from every existing point."""
    mask = np.zeros(hw, np.uint8)
    for u, v in existing.astype(int):
        cv2.circle(mask, (int(u), int(v)), radius, 255, -1)
    ui = np.clip(np.rint(uv[:, 0]).astype(int), 0, hw[1] - 1)
    vi = np.clip(np.rint(uv[:, 1]).astype(int), 0, hw[0] - 1)
    return mask[vi, ui] == 0


@dataclass
class _Step:
    """One frame-to-frame step: where the alive tracks went (uv_b, ok), and new tracks that start at a."""

    uv_b: np.ndarray
    ok: np.ndarray
    new_a: np.ndarray
    new_b: np.ndarray


def _rescue(orbs: OrbFeatures, s: int, p0: np.ndarray, step: _Step, lk: dict, cfg: TrackerConfig, full: bool) -> _Step:
    """Redo step s -> s + 1 (a -> b) that lost many tracks from ORB matches between a and b. Not `full`: KLT under their
    homography, kept if it tracks more (a turn). `full`: that KLT for the tracks KLT lost, then ORB
    matches and descriptors for the ones still lost; every continued track must fit the matches'
    epipolar geometry, and matches away from the continued tracks start new tracks."""
    gray_a, gray_b = orbs.gray[s], orbs.gray[s + 1]
    if not full:
        if (H := _homography(orbs, s, cfg)) is None:
            return step
        uv_g, ok_g = _klt_step(gray_a, gray_b, p0, lk, cfg, H)
        return _Step(uv_g, ok_g, step.new_a, step.new_b) if ok_g.sum() > step.ok.sum() else step
    orb = cv2.ORB.create(cfg.rescue_orb_features)  # descriptors at the lost tracks' positions (_match_tracks)
    pm = _pair_matches(orbs, s, cfg)
    if pm is None:
        return step
    uv_a = p0.reshape(-1, 2)
    uv_b, ok = step.uv_b.copy(), step.ok.copy()
    ok[ok] = sampson_px(pm.F, uv_a[ok], uv_b[ok]) < cfg.epipolar_px  # KLT slips on repeated texture
    # KLT from the homography's prediction first (no resampling, full precision), on the warped frame
    # for what it still loses (rolled patches).
    for klt in (_klt_step, _klt_warped):
        lost = np.nonzero(~ok)[0]
        if pm.H is None or not len(lost):
            break
        uv_k, ok_k = klt(gray_a, gray_b, p0[lost], lk, cfg, pm.H)
        ok_k[ok_k] = sampson_px(pm.F, uv_a[lost[ok_k]], uv_k[ok_k]) < cfg.epipolar_px
        uv_b[lost[ok_k]], ok[lost[ok_k]] = uv_k[ok_k], True
    lost = np.nonzero(~ok)[0]
    uv_c, ok_c = _chain_matches(uv_a[lost], pm, cfg.chain_px)
    uv_b[lost[ok_c]], ok[lost[ok_c]] = uv_c[ok_c], True
    lost = np.nonzero(~ok)[0]
    uv_m, ok_m = _match_tracks(orb, gray_a, uv_a[lost], pm, cfg)
    uv_b[lost[ok_m]], ok[lost[ok_m]] = uv_m[ok_m], True
    fresh = _far_from(pm.uv_b, uv_b[ok], gray_b.shape, cfg.min_distance_px)
    return _Step(uv_b, ok, pm.uv_a[fresh], pm.uv_b[fresh])


def _with_rows(uv: np.ndarray, rows: int) -> np.ndarray:
    """uv [T,S,2] with room for at least `rows` tracks (new rows NaN: not seen), doubling: a window's track
    count is known only at its end, and sizing for the worst case (every step re-detected and rescued) made
    a 20 MB buffer per window, mostly never touched but for filling it."""
    if rows <= len(uv):
        return uv
    grown = np.full((max(rows, 2 * len(uv)), *uv.shape[1:]), np.nan)
    grown[: len(uv)] = uv
    return grown


def track_window(
    gray_frames: list[np.ndarray], cfg: TrackerConfig = TrackerConfig(), features: SharedMemo[Any] | None = None
) -> Tracks:
    """KLT from each frame to the next. A track ends at its first failed or inconsistent step. `features`: ORB
    features and matches shared with other windows (by default, this window's own)."""
    S = len(gray_frames)
    win = (cfg.win_px, cfg.win_px)
    lk = dict(
        winSize=win, maxLevel=cfg.pyramid_levels, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    )

    uv = _with_rows(np.zeros((0, S, 2)), 2 * cfg.max_corners)  # [tracks, S, 2], grown as tracks start
    orbs = OrbFeatures(gray_frames, features)
    alive_px = _detect(gray_frames[0], cfg.max_corners, cfg, np.zeros((0, 2)))
    alive_ids = np.arange(len(alive_px))
    uv[alive_ids, 0] = alive_px
    n_tracks = len(alive_px)

    for s in range(S - 1):
        empty = np.zeros((0, 2), np.float32)
        step = _Step(empty, np.zeros(0, bool), empty, empty)
        if len(alive_px):
            p0 = alive_px.reshape(-1, 1, 2).astype(np.float32)
            step = _Step(*_klt_step(gray_frames[s], gray_frames[s + 1], p0, lk, cfg), empty, empty)
        if not len(alive_px) or step.ok.mean() < cfg.guided_below:
            p0 = alive_px.reshape(-1, 1, 2).astype(np.float32)
            full = not len(alive_px) or step.ok.mean() < cfg.rescue_below
            step = _rescue(orbs, s, p0, step, lk, cfg, full)
        alive_ids, alive_px = alive_ids[step.ok], step.uv_b[step.ok]
        uv[alive_ids, s + 1] = alive_px
        if len(step.new_a):
            new_ids = np.arange(n_tracks, n_tracks + len(step.new_a))
            uv = _with_rows(uv, n_tracks + len(new_ids))
            uv[new_ids, s], uv[new_ids, s + 1] = step.new_a, step.new_b
            n_tracks += len(new_ids)
            alive_ids = np.concatenate([alive_ids, new_ids])
            alive_px = np.concatenate([alive_px.reshape(-1, 2), step.new_b]).astype(np.float32)
        if len(alive_px) < cfg.redetect_below * cfg.max_corners:
            new_px = _detect(gray_frames[s + 1], cfg.max_corners - len(alive_px), cfg, alive_px)
            new_ids = np.arange(n_tracks, n_tracks + len(new_px))
            uv = _with_rows(uv, n_tracks + len(new_ids))
            uv[new_ids, s + 1] = new_px
            n_tracks += len(new_px)
            alive_ids = np.concatenate([alive_ids, new_ids])
            alive_px = np.concatenate([alive_px.reshape(-1, 2), new_px.reshape(-1, 2)]).astype(np.float32)

    uv = uv[:n_tracks]
    keep = (~np.isnan(uv[..., 0])).sum(1) >= 2  # a one-frame track says nothing
    return Tracks(uv_px=uv[keep])
