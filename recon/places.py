"""Place recognition and geometric verification for online loop closure (ARCHITECTURE §4), without learned weights.

Per keyframe: ORB features; the camera-frame z-depth of each keypoint where the window's depth is valid
and confident. Recognition: a bag of binary words (DBoW-like) with an inverted index and tf-idf weights.
No pre-trained vocabulary exists, so it is built online: k-majority clustering (binary k-means, Hamming
distance, bitwise-majority centres) of the descriptors of the first `vocabulary_keyframes` keyframes, as
a 2-level tree, then frozen together with its idf. Until then, candidates are scored by brute-force
Hamming matching against the (few) stored keyframes.

Scores are DBoW's L1 score, s(a, b) = 1 - |a - b|_1 / 2 = sum_w min(a_w, b_w) for L1-normalised tf-idf
vectors, divided by the query's score against the previously added keyframe (DBoW's normalisation): how
much the candidate resembles the query compared with a view of the same place moments ago. That makes one
`min_score` work across textured and bland scenes.

Verification of a candidate (query q, stored m): mutual ratio-test ORB matches; an essential matrix by
RANSAC on normalised coordinates; then a Sim(3) between the two cameras' 3D points (each in its own
window's units) for the essential inliers with depth in both, by RANSAC over minimal 3-point Umeyama
samples + weighted refit, with an inlier threshold relative to depth. It is accepted when there are
enough inliers, a large enough inlier share, inliers spread over the image, a plausible scale, the
Sim(3) rotation (and, with enough baseline, its translation direction) agrees with the essential matrix,
and a small depth thumbnail of each view, moved by the Sim(3), agrees with the other's (dense check).
A verified pair is reported once a consistent second query confirms it (temporal consistency, as DBoW).

Known limit: perceptual aliasing of generic street structure (the same facade texture at the same
distance over the same road plane, ~180 m apart) can pass all of this; only the pose graph's prior (the
relative pose odometry predicts, within its drift) can tell, so the core should gate loop edges by it.

Memory is capped at `max_keyframes`: when full, the keyframe most similar to its successor in insertion
order (the least distinctive: its neighbour stands in for it) is evicted, never one of the recent ones.
A long drive is thereby thinned evenly; a car standing still loses its duplicates first."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from recon.errors import ContractError
from recon.geometry import invert_rigid, rotation_distance_deg
from recon.kernels.umeyama import umeyama_sim3
from recon.types import Sim3

_DESC_BYTES = 32  # ORB: 256-bit descriptors


@dataclass(frozen=True)
class PlaceConfig:
    """Settings of `PlaceDatabase`. Memory: one stored keyframe costs about
    orb_features * 45 B (descriptor 32 B, pixel 8 B, depth 4 B, vocabulary node 1 B) + ~16 B per distinct
    word (BoW vector and its inverted-index entries) + a float16 depth thumbnail (thumbnail_width columns),
    measured 51 KB (640x192) to 61 KB (640x480) per keyframe at 1000 features; see `PlaceDatabase.nbytes`."""

    orb_features: int = 1000  # per keyframe; ORB-SLAM's count for KITTI-size images
    max_keyframes: int = 500  # 25-31 MB; at one keyframe per 1.5 s that is 12 min before thinning starts
    exclude_recent: int = 20  # the last N added keyframes (~30 s) are no loop: the joins tie them already
    min_window_gap: int = 2  # a candidate's window must be >= this many windows older than the query's
    min_score: float = 0.3  # normalised BoW score a candidate needs (DBoW's alpha; see module docstring)
    top_k: int = 3  # candidates verified per query (each ~5 ms)
    candidate_separation: int = 2  # candidates closer than this in insertion order count as one place
    # vocabulary (built online, then frozen)
    vocabulary_keyframes: int = 20  # descriptors of the first N keyframes train it (~20k descriptors)
    vocabulary_shape: tuple[int, int] = (32, 64)  # 2-level tree: branching per level -> up to 2048 words
    vocabulary_iterations: int = 8  # k-majority rounds per node
    # keypoint depth
    conf_quantile: float = 0.25  # drop the least confident quarter of the keyframe's valid depth
    edge_ratio: float = 1.1  # a keypoint's 3x3 depth patch must vary less than this (no depth edges)
    # matching and verification
    ratio: float = 0.8  # Lowe's ratio test on Hamming distances
    essential_threshold_px: float = 1.5  # epipolar RANSAC threshold
    essential_max_iters: int = 300  # USAC (PROSAC + local optimisation): a true loop needs far fewer
    min_essential_inliers: int = 40
    min_inliers: int = 25  # Sim(3) inliers
    min_inlier_share: float = 0.7  # Sim(3) inliers / essential inliers with depth in both
    inlier_rel: float = 0.05  # Sim(3) inlier: 3D residual <= 5% of the point's depth
    sim3_iterations: int = 256  # RANSAC hypotheses (minimal 3-point samples)
    max_rotation_disagreement_deg: float = 3.0  # Sim(3) rotation vs essential-matrix rotation
    max_translation_angle_deg: float = 20.0  # same for the translation direction, when the baseline allows
    min_baseline_rel: float = 0.05  # baseline / median depth above which the E translation is trusted
    max_scale_ratio: float = 10.0  # |log s| of the windows' unit ratio beyond log(this) is absurd
    thumbnail_width: int = 48  # columns of the depth thumbnail kept for the dense check (~1.4-3.5 KB)
    thumbnail_agreement_rel: float = 0.1  # thumbnail depths agree within 10%
    min_dense_agreement: float = 0.8  # agreeing / (agreeing + contradicting) thumbnail points, both ways
    coverage_grid: tuple[int, int] = (4, 4)  # rows, cols of the grid the inliers must spread over
    min_coverage_cells: int = 6  # distinct grid cells holding Sim(3) inliers (against repeated texture)
    # temporal consistency (against perceptual aliasing, which a single pair cannot tell from a revisit)
    min_consistent: int = 2  # queries that must agree before a loop is reported (1 = report at once)
    consistency_gap: int = 2  # ... each within this many keyframes of the previous one
    consistency_distance: int = 3  # ... matching keyframes within this many insertions of each other
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_keyframes <= self.exclude_recent + 1:
            raise ContractError("PlaceConfig: max_keyframes must exceed exclude_recent + 1")
        if not 1 <= self.vocabulary_keyframes <= self.max_keyframes:
            raise ContractError("PlaceConfig: vocabulary_keyframes must be in [1, max_keyframes]")
        if min(self.vocabulary_shape) < 2 or self.orb_features < 10 or self.top_k < 1:
            raise ContractError("PlaceConfig: vocabulary branching >= 2, orb_features >= 10, top_k >= 1")


@dataclass(frozen=True)
class Keyframe:
    """One keyframe as the core hands it over. The image is only read while adding, never stored."""

    keyframe_id: int
    window_id: int
    image_gray: np.ndarray  # uint8 [H,W] at the model's resolution
    K: np.ndarray  # [3,3] in pixels of that image
    depth: np.ndarray  # [H,W] float32 z-depth in the window's units, 0 = invalid
    conf: np.ndarray  # [H,W] float32, higher = better
    window_from_cam: np.ndarray  # [4,4] rigid, in window units

    def __post_init__(self) -> None:
        img = self.image_gray
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 2):
            raise ContractError(f"Keyframe {self.keyframe_id}: image_gray must be uint8 [H,W]")
        for name in ("depth", "conf"):
            shape = np.shape(getattr(self, name))
            if shape != img.shape:
                raise ContractError(f"Keyframe {self.keyframe_id}: {name} must be {img.shape}, got {shape}")
        if np.shape(self.K) != (3, 3) or np.shape(self.window_from_cam) != (4, 4):
            raise ContractError(f"Keyframe {self.keyframe_id}: K must be [3,3] and window_from_cam [4,4]")


@dataclass(frozen=True)
class LoopMatch:
    """A verified loop: the edge `match_window_from_query_window` maps query-window points into the matched
    window's frame (its scale = matched units per query unit)."""

    query_keyframe: int
    match_keyframe: int
    query_window: int
    match_window: int
    match_window_from_query_window: Sim3
    match_cam_from_query_cam: Sim3
    inliers: int  # Sim(3) inliers
    inlier_share: float  # of the essential inliers with depth in both
    rmse_rel: float  # RMS of inlier residual / depth
    score: float  # normalised BoW score
    essential_inliers: int
    rotation_disagreement_deg: float
    coverage_cells: int
    dense_agreement: float  # depth-thumbnail agreement under the Sim(3), the weaker direction


# ------------------------------------------------------------------------------------ binary words
def _nearest(desc: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Hamming) for each descriptor; cv2's matcher uses SIMD popcount."""
    if len(centres) == 1:
        return np.zeros(len(desc), dtype=np.int64)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).match(desc, centres)
    out = np.empty(len(desc), dtype=np.int64)
    out[[m.queryIdx for m in matches]] = [m.trainIdx for m in matches]
    return out


def _majority_centres(bits: np.ndarray, label: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Bitwise majority of each cluster's unpacked descriptors bits [N,256] -> packed centres [k,32];
    an empty cluster keeps its old centre. One sort + reduceat instead of a loop over clusters."""
    k = len(old)
    order = np.argsort(label, kind="stable")
    counts = np.bincount(label, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    sums = np.add.reduceat(bits[order], starts[nonempty], axis=0, dtype=np.uint16)  # n < 65536: see k_majority
    centres = old.copy()
    centres[nonempty] = np.packbits(2 * sums > counts[nonempty, None], axis=1)
    return centres


def k_majority(
    desc: np.ndarray, k: int, iterations: int, rng: np.random.Generator, max_points: int = 8192
) -> np.ndarray:
    """Binary k-means: Hamming assignment, bitwise-majority centres. k-means++ seeding spreads the
    initial centres (distinct descriptors far from each other). Clusters a random subsample of at most
    `max_points` (plenty for k centres, and bounds the cost). Returns centres [<=k, 32] uint8."""
    if len(desc) > max_points:
        desc = desc[rng.choice(len(desc), max_points, replace=False)]
    n = len(desc)
    if n <= k:
        return np.unique(desc, axis=0)
    centres = [desc[rng.integers(n)]]
    dist = _hamming_to(desc, centres[0]).astype(np.float64)
    for _ in range(k - 1):
        if dist.sum() == 0:
            break
        centres.append(desc[rng.choice(n, p=dist**2 / (dist**2).sum())])
        dist = np.minimum(dist, _hamming_to(desc, centres[-1]))
    C = np.stack(centres)
    bits = np.unpackbits(desc, axis=1)
    for _ in range(iterations):
        new = _majority_centres(bits, _nearest(desc, C), C)
        if np.array_equal(new, C):
            break
        C = new
    return C


def _hamming_to(desc: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Hamming distances [N] of descriptors [N,32] to one descriptor, 64 bits at a time."""
    x = np.bitwise_xor(np.ascontiguousarray(desc).view(np.uint64), np.ascontiguousarray(centre).view(np.uint64))
    return np.bitwise_count(x).sum(axis=1, dtype=np.int32)


@dataclass
class BinaryVocabulary:
    """A frozen 2-level tree of binary words with idf weights. Word id = parent * k2 + child."""

    centres1: np.ndarray  # [k1', 32]
    centres2: list[np.ndarray]  # per parent [<=k2, 32]
    k2: int
    idf: np.ndarray  # [k1' * k2] float32

    @staticmethod
    def train(descs: list[np.ndarray], shape: tuple[int, int], iterations: int, seed: int) -> BinaryVocabulary:
        """Cluster the descriptors of training images; idf_w = log(N_images / images containing w), as
        DBoW does (words no training image holds get the largest idf)."""
        rng = np.random.default_rng(seed)
        all_desc = np.concatenate(descs)
        C1 = k_majority(all_desc, shape[0], iterations, rng)
        label = _nearest(all_desc, C1)
        C2 = [k_majority(all_desc[label == j], shape[1], iterations, rng) for j in range(len(C1))]
        voc = BinaryVocabulary(C1, C2, shape[1], np.zeros(len(C1) * shape[1], dtype=np.float32))
        df = np.zeros(len(voc.idf))
        for d in descs:
            df[np.unique(voc.words(d))] += 1
        voc.idf = np.log(len(descs) / np.maximum(df, 1)).astype(np.float32) + np.float32(1e-3)
        return voc

    def words(self, desc: np.ndarray) -> np.ndarray:
        parent = _nearest(desc, self.centres1)
        out = np.empty(len(desc), dtype=np.int64)
        for j in np.unique(parent):
            sel = parent == j
            out[sel] = j * self.k2 + _nearest(desc[sel], self.centres2[j])
        return out

    def bow(self, desc: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """L1-normalised tf-idf vector as (sorted word ids int32, weights float32), and the level-1 node
        of each descriptor (uint8 when k1 <= 256)."""
        words = self.words(desc)
        ids, counts = np.unique(words, return_counts=True)
        w = counts * self.idf[ids]
        node = (words // self.k2).astype(np.uint8 if len(self.centres1) <= 256 else np.int32)
        return (ids.astype(np.int32), (w / max(float(w.sum()), 1e-12)).astype(np.float32)), node

    @property
    def nbytes(self) -> int:
        return int(self.centres1.nbytes + sum(c.nbytes for c in self.centres2) + self.idf.nbytes)


def bow_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """DBoW L1 score of two L1-normalised vectors: sum over shared words of min(a_w, b_w)."""
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return float(np.minimum(a[1][ia], b[1][ib]).sum())


class _InvertedIndex:
    """word -> (slots, weights) of the keyframes holding it; arrays grow by doubling."""

    def __init__(self, num_words: int) -> None:
        self.slots: list[np.ndarray] = [np.empty(0, np.int32) for _ in range(num_words)]
        self.weights: list[np.ndarray] = [np.empty(0, np.float32) for _ in range(num_words)]
        self.size = np.zeros(num_words, dtype=np.int64)

    def add(self, slot: int, bow: tuple[np.ndarray, np.ndarray]) -> None:
        for w, x in zip(bow[0].tolist(), bow[1].tolist()):
            n = self.size[w]
            if n == len(self.slots[w]):
                cap = max(4, 2 * n)
                self.slots[w] = np.resize(self.slots[w], cap)
                self.weights[w] = np.resize(self.weights[w], cap)
            self.slots[w][n], self.weights[w][n] = slot, x
            self.size[w] = n + 1

    def remove(self, slot: int, bow: tuple[np.ndarray, np.ndarray]) -> None:
        for w in bow[0].tolist():
            n = self.size[w]
            hit = np.flatnonzero(self.slots[w][:n] == slot)
            if len(hit):  # swap with the last entry: order within a posting list is irrelevant
                i = hit[0]
                self.slots[w][i], self.weights[w][i] = self.slots[w][n - 1], self.weights[w][n - 1]
                self.size[w] = n - 1

    def scores(self, bow: tuple[np.ndarray, np.ndarray], num_slots: int) -> np.ndarray:
        """L1 score of the query against every slot, touching only the shared words' posting lists."""
        slots, mins = [], []
        for w, x in zip(bow[0].tolist(), bow[1].tolist()):
            n = self.size[w]
            if n:
                slots.append(self.slots[w][:n])
                mins.append(np.minimum(self.weights[w][:n], x))
        if not slots:
            return np.zeros(num_slots)
        return np.bincount(np.concatenate(slots), weights=np.concatenate(mins), minlength=num_slots)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.slots) + sum(a.nbytes for a in self.weights) + self.size.nbytes)


# ------------------------------------------------------------------------------------ keyframe features
@dataclass
class _Entry:
    """What a stored keyframe keeps: just what scoring and verification need (no image)."""

    keyframe_id: int
    window_id: int
    seq: int  # insertion number (positions shift on eviction, this does not)
    K: np.ndarray  # [3,3] float64
    window_from_cam: np.ndarray  # [4,4] float64
    uv: np.ndarray  # [N,2] float32 keypoint pixels
    z: np.ndarray  # [N] float32 z-depth in window units, 0 = none
    desc: np.ndarray  # [N,32] uint8
    thumb: np.ndarray  # [h,w] float16 confident depth / thumb_scale at every `thumb_step`-th pixel, 0 = none
    thumb_scale: float
    thumb_step: int
    node: np.ndarray | None = None  # [N] uint8 vocabulary level-1 node of each descriptor (guides matching)
    bow: tuple[np.ndarray, np.ndarray] | None = None
    redundancy: float = 0.0  # similarity to its successor in insertion order (eviction key)

    @property
    def nbytes(self) -> int:
        arrays = [self.K, self.window_from_cam, self.uv, self.z, self.desc, self.thumb, *(self.bow or ())]
        arrays += [] if self.node is None else [self.node]
        return int(sum(a.nbytes for a in arrays))

    def points(self, idx: np.ndarray) -> np.ndarray:
        """Camera-frame 3D points [n,3] of keypoints idx (window units)."""
        uv1 = np.column_stack([self.uv[idx].astype(np.float64), np.ones(len(idx))])
        return (uv1 @ np.linalg.inv(self.K).T) * self.z[idx, None].astype(np.float64)

    def thumb_points(self) -> np.ndarray:
        """Camera-frame 3D points [n,3] of the thumbnail's valid pixels (window units)."""
        v, u = np.nonzero(self.thumb)
        z = self.thumb[v, u].astype(np.float64) * self.thumb_scale
        uv1 = np.column_stack([u * self.thumb_step, v * self.thumb_step, np.ones(len(u))])
        return (uv1 @ np.linalg.inv(self.K).T) * z[:, None]

    def thumb_depth_at(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For camera-frame points [n,3]: their z and the thumbnail depth at their projection (0 where
        it falls outside, behind the camera or on an invalid thumbnail pixel)."""
        z = points[:, 2]
        front = z > 1e-9
        uv = (points[front] @ self.K.T)[:, :2] / z[front, None]
        col = np.rint(uv[:, 0] / self.thumb_step).astype(np.int64)
        row = np.rint(uv[:, 1] / self.thumb_step).astype(np.int64)
        h, w = self.thumb.shape
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        seen = np.zeros(len(z))
        idx = np.flatnonzero(front)[inside]
        seen[idx] = self.thumb[row[inside], col[inside]].astype(np.float64) * self.thumb_scale
        return z, seen


def _conf_min(kf: Keyframe, cfg: PlaceConfig) -> float | None:
    """The keyframe's confidence quantile over valid depth (None: no valid depth)."""
    depth, conf = np.asarray(kf.depth), np.asarray(kf.conf)
    valid_conf = conf[::4, ::4][depth[::4, ::4] > 0]  # a subsample is plenty for a quantile
    return float(np.quantile(valid_conf, cfg.conf_quantile)) if len(valid_conf) else None


def _thumbnail(kf: Keyframe, conf_min: float | None, width: int) -> tuple[np.ndarray, float, int]:
    """Every step-th pixel's confident depth, divided by its median so float16 holds any window units."""
    step = max(1, int(np.ceil(kf.depth.shape[1] / width)))
    d = np.asarray(kf.depth, dtype=np.float32)[::step, ::step]
    c = np.asarray(kf.conf, dtype=np.float32)[::step, ::step]
    ok = (d > 0) & np.isfinite(d) & (conf_min is not None) & (c >= (conf_min or 0.0))
    scale = float(np.median(d[ok])) if ok.any() else 1.0
    return np.where(ok, d / scale, 0.0).astype(np.float16), scale, step


def _keypoint_depth(kf: Keyframe, uv: np.ndarray, conf_min: float | None, cfg: PlaceConfig) -> np.ndarray:
    """z at each keypoint, 0 where invalid, not confident (below the keyframe's conf quantile over valid
    depth) or on a depth edge (ORB corners like silhouettes, where the depth may be either side's)."""
    depth = np.asarray(kf.depth, dtype=np.float32)
    conf = np.asarray(kf.conf, dtype=np.float32)
    H, W = depth.shape
    if conf_min is None or len(uv) == 0:
        return np.zeros(len(uv), np.float32)
    ui = np.clip(np.rint(uv[:, 0]).astype(np.int64), 1, W - 2)
    vi = np.clip(np.rint(uv[:, 1]).astype(np.int64), 1, H - 2)
    off = np.arange(-1, 2)
    patch = depth[vi[:, None, None] + off[None, :, None], ui[:, None, None] + off[None, None, :]].reshape(len(uv), 9)
    lo, hi = patch.min(axis=1), patch.max(axis=1)
    ok = (lo > 0) & (hi <= cfg.edge_ratio * lo) & (conf[vi, ui] >= conf_min) & np.isfinite(hi)
    return np.where(ok, depth[vi, ui], 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------ verification
@dataclass(frozen=True)
class _Verdict:
    ok: bool
    reason: str
    match: LoopMatch | None = None


def _mutual_matches(dq: np.ndarray, dm: np.ndarray, ratio: float) -> np.ndarray:
    """[n,2] index pairs (query, match) passing Lowe's ratio test and mutual nearest neighbours."""
    if len(dq) < 2 or len(dm) < 2:
        return np.zeros((0, 2), np.int64)
    bf = cv2.BFMatcher(cv2.NORM_HAMMING)
    fwd = bf.knnMatch(dq, dm, k=2)
    back = {m.queryIdx: m.trainIdx for m in bf.match(dm, dq)}
    pairs = [
        (a.queryIdx, a.trainIdx)
        for a, b in fwd
        if a.distance < ratio * b.distance and back.get(a.trainIdx) == a.queryIdx
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _matches(q: _Entry, m: _Entry, ratio: float) -> np.ndarray:
    """Descriptor matches; with a vocabulary only within the same level-1 node (ORB-SLAM's search by BoW):
    ~k1 times less work, and descriptors in different nodes rarely match anyway."""
    if q.node is None or m.node is None:
        return _mutual_matches(q.desc, m.desc, ratio)
    out = []
    for j in np.intersect1d(q.node, m.node):
        iq, im = np.flatnonzero(q.node == j), np.flatnonzero(m.node == j)
        pairs = _mutual_matches(q.desc[iq], m.desc[im], ratio)
        out.append(np.column_stack([iq[pairs[:, 0]], im[pairs[:, 1]]]))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def _normalised(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    return ((uv.astype(np.float64) - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])).reshape(-1, 1, 2)


def _essential(
    q: _Entry, m: _Entry, pairs: np.ndarray, cfg: PlaceConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Robust essential matrix on normalised coordinates (USAC: plain RANSAC costs ~50 ms on the outlier-rich
    matches of a wrong place, USAC ~5 ms). Returns (inlier mask over pairs, R, t) with
    x_m = R x_q + t (t unit length), i.e. cam_m_from_cam_q up to scale."""
    xq, xm = _normalised(q.uv[pairs[:, 0]], q.K), _normalised(m.uv[pairs[:, 1]], m.K)
    f = 0.5 * (q.K[0, 0] + m.K[0, 0])
    E, mask = cv2.findEssentialMat(
        xq,
        xm,
        np.eye(3),
        method=cv2.USAC_DEFAULT,
        prob=0.999,
        threshold=cfg.essential_threshold_px / f,
        maxIters=cfg.essential_max_iters,
    )
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    inl = mask.ravel() > 0
    _, R, t, _ = cv2.recoverPose(E, xq[inl], xm[inl], np.eye(3))
    return inl, R, t.ravel()


def _umeyama_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form Sim(3) for B minimal samples at once: src, dst [B,3,3] -> s [B], R [B,3,3], t [B,3]
    (the same algebra as `umeyama_sim3`, vectorised because RANSAC needs hundreds)."""
    mu_s, mu_d = src.mean(axis=1), dst.mean(axis=1)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    U, D, Vt = np.linalg.svd(np.einsum("bni,bnj->bij", xd, xs) / 3)
    sign = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    E = np.ones((len(src), 3))
    E[:, 2] = np.where(sign < 0, -1.0, 1.0)
    R = U @ (E[:, :, None] * Vt)
    var_s = (xs**2).sum(axis=(1, 2)) / 3
    s = (D * E).sum(axis=1) / np.maximum(var_s, 1e-300)
    t = mu_d - s[:, None] * np.einsum("bij,bj->bi", R, mu_s)
    return s, R, t


def _relative_residuals(sim: Sim3, pq: np.ndarray, pm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(sim.apply(pq) - pm, axis=1) / pm[:, 2]


def _ransac_sim3(
    pq: np.ndarray, pm: np.ndarray, cfg: PlaceConfig, rng: np.random.Generator
) -> tuple[Sim3, np.ndarray] | None:
    """cam_m_from_cam_q from 3D-3D pairs: the minimal sample with most inliers (residual <= inlier_rel of
    the point's depth), then weighted Umeyama refits on its inliers (weights 1/z^2 make the least-squares
    residual relative, like the threshold). Returns (Sim3, inlier mask)."""
    n = len(pq)
    if n < 3:
        return None
    idx = np.stack([rng.choice(n, 3, replace=False) for _ in range(cfg.sim3_iterations)])
    s, R, t = _umeyama_batch(pq[idx], pm[idx])
    pred = s[:, None, None] * np.einsum("bij,nj->bni", R, pq) + t[:, None, :]
    rel = np.linalg.norm(pred - pm[None], axis=2) / pm[None, :, 2]
    count = (rel <= cfg.inlier_rel).sum(axis=1)
    count[~np.isfinite(s) | (s <= 0)] = -1
    best = int(np.argmax(count))
    inl = rel[best] <= cfg.inlier_rel
    if inl.sum() < 3:
        return None
    for _ in range(3):
        sim = umeyama_sim3(pq[inl], pm[inl], weights=1.0 / pm[inl, 2] ** 2)
        new = _relative_residuals(sim, pq, pm) <= cfg.inlier_rel
        if new.sum() < 3 or np.array_equal(new, inl):
            break
        inl = new
    return sim, inl


def _coverage(uv: np.ndarray, K: np.ndarray, grid: tuple[int, int]) -> int:
    """Distinct cells of a rows x cols grid over the image (its extent taken from the principal point)."""
    w, h = 2.0 * (K[0, 2] + 0.5), 2.0 * (K[1, 2] + 0.5)
    r = np.clip((uv[:, 1] / h * grid[0]).astype(np.int64), 0, grid[0] - 1)
    c = np.clip((uv[:, 0] / w * grid[1]).astype(np.int64), 0, grid[1] - 1)
    return len(np.unique(r * grid[1] + c))


def _dense_agreement(a: _Entry, b: _Entry, b_from_a: Sim3, rel: float) -> float:
    """Share of a's thumbnail points, moved into camera b, that agree with b's depth where b sees them,
    among those that agree or contradict. Contradiction: the point lies well in front of the surface b
    sees (b would have seen it); a point behind it is merely occluded. A repeated object matched between
    two places fits its own points but puts the rest of the view where b saw something else."""
    z, seen = b.thumb_depth_at(b_from_a.apply(a.thumb_points()))
    valid = seen > 0
    agree = valid & (np.abs(z - seen) <= rel * seen)
    contradict = valid & (z < (1.0 - rel) * seen)
    n = int(agree.sum() + contradict.sum())
    return float(agree.sum() / n) if n else 0.0


def verify(q: _Entry, m: _Entry, score: float, cfg: PlaceConfig, rng: np.random.Generator) -> _Verdict:
    """Geometric verification of a candidate pair; the verdict names the failed check."""
    pairs = _matches(q, m, cfg.ratio)
    if len(pairs) < cfg.min_essential_inliers:
        return _Verdict(False, "matches")
    ess = _essential(q, m, pairs, cfg)
    if ess is None or ess[0].sum() < cfg.min_essential_inliers:
        return _Verdict(False, "essential")
    e_inl, R_e, t_e = ess
    pairs = pairs[e_inl]
    pairs = pairs[(q.z[pairs[:, 0]] > 0) & (m.z[pairs[:, 1]] > 0)]
    if len(pairs) < cfg.min_inliers:
        return _Verdict(False, "depth")
    pq, pm = q.points(pairs[:, 0]), m.points(pairs[:, 1])
    fit = _ransac_sim3(pq, pm, cfg, rng)
    if fit is None:
        return _Verdict(False, "sim3")
    cam_m_from_cam_q, inl = fit
    n_inl, share = int(inl.sum()), float(inl.mean())
    if n_inl < cfg.min_inliers or share < cfg.min_inlier_share:
        return _Verdict(False, "sim3")
    if abs(np.log(cam_m_from_cam_q.s)) > np.log(cfg.max_scale_ratio):
        return _Verdict(False, "scale")
    cells = _coverage(q.uv[pairs[inl, 0]], q.K, cfg.coverage_grid)
    if cells < cfg.min_coverage_cells:
        return _Verdict(False, "coverage")
    rot_dis = float(rotation_distance_deg(cam_m_from_cam_q.R, R_e))
    baseline_rel = float(np.linalg.norm(cam_m_from_cam_q.t) / np.median(pm[inl, 2]))
    # Without baseline the essential matrix's decomposition is ill-posed (any t fits): skip its checks.
    if baseline_rel >= cfg.min_baseline_rel:
        if rot_dis > cfg.max_rotation_disagreement_deg:
            return _Verdict(False, "rotation")
        cos = float(t_e @ cam_m_from_cam_q.t / np.linalg.norm(cam_m_from_cam_q.t))
        if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) > cfg.max_translation_angle_deg:
            return _Verdict(False, "translation")
    dense = min(
        _dense_agreement(q, m, cam_m_from_cam_q, cfg.thumbnail_agreement_rel),
        _dense_agreement(m, q, cam_m_from_cam_q.inverse(), cfg.thumbnail_agreement_rel),
    )
    if dense < cfg.min_dense_agreement:
        return _Verdict(False, "dense")
    rmse_rel = float(np.sqrt(np.mean(_relative_residuals(cam_m_from_cam_q, pq[inl], pm[inl]) ** 2)))
    edge = _to_sim3(m.window_from_cam) @ cam_m_from_cam_q @ _to_sim3(invert_rigid(q.window_from_cam))
    match = LoopMatch(
        q.keyframe_id,
        m.keyframe_id,
        q.window_id,
        m.window_id,
        edge,
        cam_m_from_cam_q,
        n_inl,
        share,
        rmse_rel,
        float(score),
        int(e_inl.sum()),
        rot_dis,
        cells,
        dense,
    )
    return _Verdict(True, "ok", match)


def _to_sim3(T: np.ndarray) -> Sim3:
    return Sim3(1.0, T[:3, :3], T[:3, 3])


# ------------------------------------------------------------------------------------ database
@dataclass
class _Pending:
    query_seq: int
    match_seq: int
    match: LoopMatch
    reported: bool = False


@dataclass
class PlaceStats:
    """Counters for reports: queries, candidates verified, verified loops, rejections by failed check,
    and the time spent (s) per stage."""

    queries: int = 0
    candidates: int = 0
    verified: int = 0  # passed geometric verification
    confirmed: int = 0  # reported: also temporally consistent
    evicted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since
        return now


class PlaceDatabase:
    """Keyframe database for online loop closure: `add_and_query` per keyframe (query, then add)."""

    def __init__(self, config: PlaceConfig = PlaceConfig()) -> None:
        self.config = config
        self.stats = PlaceStats()
        self.vocabulary: BinaryVocabulary | None = None
        self._index: _InvertedIndex | None = None
        self._slots: list[_Entry | None] = [None] * (config.max_keyframes + 1)
        self._order: list[int] = []  # slots in insertion order
        self._rng = np.random.default_rng(config.seed)
        self._orb = cv2.ORB.create(nfeatures=config.orb_features)
        self._pending: list[_Pending] = []  # verified, not yet confirmed by a consistent later query

    def __len__(self) -> int:
        return len(self._order)

    def _entry(self, slot: int) -> _Entry:
        """The keyframe in `slot`: every slot in `_order` holds one."""
        entry = self._slots[slot]
        assert entry is not None, f"slot {slot} is empty"
        return entry

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy payloads held: keyframes, inverted index, vocabulary (object overhead aside)."""
        total = sum(self._entry(s).nbytes for s in self._order)
        if self._index is not None:
            total += self._index.nbytes
        if self.vocabulary is not None:
            total += self.vocabulary.nbytes
        return int(total)

    @property
    def keyframe_ids(self) -> list[int]:
        """Stored keyframe ids in insertion order."""
        return [self._entry(s).keyframe_id for s in self._order]

    def add_and_query(self, kf: Keyframe, before_window: int | None = None) -> list[LoopMatch]:
        """Query the database with `kf` (recent keyframes excluded), then add it. Returns the verified loops,
        best (most inliers) first: usually none or one. `before_window`: relocalise instead, against every
        keyframe of the windows before it, recent ones included (the stream broke there: no join ties the
        query to them)."""
        cfg, clock = self.config, time.perf_counter()
        self.stats.queries += 1
        entry = self._extract(kf)
        clock = self.stats.tick("features", clock)
        eligible = (
            self._eligible(entry)
            if before_window is None
            else [s for s in self._order if self._entry(s).window_id < before_window]
        )
        scores, prev_score = self._score(entry, eligible)
        clock = self.stats.tick("score", clock)
        verified: list[_Pending] = []
        for slot, score in self._candidates(eligible, scores, prev_score):
            self.stats.candidates += 1
            verdict = verify(entry, self._entry(slot), score, cfg, self._rng)
            if verdict.match is not None:
                verified.append(_Pending(entry.seq, self._entry(slot).seq, verdict.match))
            else:
                self.stats.rejected[verdict.reason] = self.stats.rejected.get(verdict.reason, 0) + 1
        self.stats.verified += len(verified)
        # A relocalisation takes a single verified view: after a break nothing else can place the query.
        matches = self._confirm(entry.seq, verified) if before_window is None else [v.match for v in verified]
        self.stats.confirmed += len(matches)
        clock = self.stats.tick("verify", clock)
        self._add(entry, prev_score)
        self.stats.tick("add", clock)
        return sorted(matches, key=lambda m: (-m.inliers, m.rmse_rel))

    def _confirm(self, seq: int, verified: list[_Pending]) -> list[LoopMatch]:
        """Temporal consistency (as DBoW / ORB-SLAM): a verified loop is reported once `min_consistent`
        queries within `consistency_gap` of each other matched keyframes within `consistency_distance`
        of each other. Views of perceptually aliased places (identical facades, symmetric corners) verify
        one at a time; a true revisit keeps matching consecutive keyframes. Once confirmed, the earlier,
        consistent matches are returned as well (each names its own query keyframe and window)."""
        cfg = self.config
        self._pending = [p for p in self._pending if seq - p.query_seq <= cfg.consistency_gap]
        out: list[LoopMatch] = []
        for v in verified:
            support = [p for p in self._pending if abs(p.match_seq - v.match_seq) <= cfg.consistency_distance]
            if len({p.query_seq for p in support}) + 1 >= cfg.min_consistent:
                v.reported = True
                out.append(v.match)
                for p in support:
                    if not p.reported:
                        p.reported = True
                        out.append(p.match)
        self._pending += verified
        return out

    # features ------------------------------------------------------------------------------------------
    def _extract(self, kf: Keyframe) -> _Entry:
        kps, desc = self._orb.detectAndCompute(kf.image_gray, None)
        if desc is None or len(kps) == 0:
            uv, desc = np.zeros((0, 2), np.float32), np.zeros((0, _DESC_BYTES), np.uint8)
        else:
            uv = np.array([k.pt for k in kps], dtype=np.float32)
        conf_min = _conf_min(kf, self.config)
        entry = _Entry(
            int(kf.keyframe_id),
            int(kf.window_id),
            self.stats.queries,
            np.asarray(kf.K, np.float64).copy(),
            np.asarray(kf.window_from_cam, np.float64).copy(),
            uv,
            _keypoint_depth(kf, uv, conf_min, self.config),
            desc,
            *_thumbnail(kf, conf_min, self.config.thumbnail_width),
        )
        if self.vocabulary is not None and len(desc):
            entry.bow, entry.node = self.vocabulary.bow(desc)
        return entry

    # scoring -------------------------------------------------------------------------------------------
    def _similarity(self, a: _Entry, b: _Entry) -> float:
        """BoW L1 score once the vocabulary exists; before, the share of a's features with a mutual match."""
        if a.bow is not None and b.bow is not None:
            return bow_score(a.bow, b.bow)
        return len(_matches(a, b, self.config.ratio)) / max(len(a.desc), 1)

    def _score(self, q: _Entry, eligible: list[int]) -> tuple[np.ndarray, float]:
        """Raw scores of q against every slot (NaN where not computed) and against the last added keyframe."""
        scores = np.full(len(self._slots), np.nan)
        if not self._order:
            return scores, 0.0
        if self._index is not None and q.bow is not None:
            scores[:] = self._index.scores(q.bow, len(self._slots))
        else:  # no vocabulary yet: brute force over the few eligible keyframes
            for slot in eligible:
                scores[slot] = self._similarity(q, self._entry(slot))
        return scores, self._similarity(q, self._entry(self._order[-1]))

    def _eligible(self, q: _Entry) -> list[int]:
        cfg = self.config
        old = self._order[: max(len(self._order) - cfg.exclude_recent, 0)]
        return [s for s in old if q.window_id - self._entry(s).window_id >= cfg.min_window_gap]

    def _candidates(self, eligible_slots: list[int], scores: np.ndarray, prev_score: float) -> list[tuple[int, float]]:
        """Up to top_k eligible slots whose score, normalised by the previous keyframe's, reaches min_score,
        best first, at most one per run of `candidate_separation` neighbouring keyframes (like DBoW's
        islands: the budget goes to distinct places, not to three views of one). A floor on the
        normaliser keeps a bland previous view from inflating every score."""
        cfg = self.config
        eligible = np.array(eligible_slots, dtype=np.int64)
        if len(eligible) == 0:
            return []
        norm = scores[eligible] / max(prev_score, 0.01)
        position = {slot: i for i, slot in enumerate(self._order)}
        chosen: list[tuple[int, float]] = []
        for i in np.argsort(-np.nan_to_num(norm, nan=-1.0), kind="stable"):
            if len(chosen) == cfg.top_k or not norm[i] >= cfg.min_score:
                break
            slot = int(eligible[i])
            if all(abs(position[slot] - position[c]) > cfg.candidate_separation for c, _ in chosen):
                chosen.append((slot, float(norm[i])))
        return chosen

    # storage -------------------------------------------------------------------------------------------
    def _add(self, entry: _Entry, prev_score: float) -> None:
        if self._order:
            self._entry(self._order[-1]).redundancy = prev_score
        slot = self._slots.index(None)
        self._slots[slot] = entry
        self._order.append(slot)
        if self._index is not None and entry.bow is not None:
            self._index.add(slot, entry.bow)
        if self.vocabulary is None and len(self._order) >= self.config.vocabulary_keyframes:
            self._build_vocabulary()
        while len(self._order) > self.config.max_keyframes:
            self._evict()

    def _build_vocabulary(self) -> None:
        cfg, clock = self.config, time.perf_counter()
        entries = [self._entry(s) for s in self._order]
        descs = [e.desc for e in entries if len(e.desc)]
        if sum(len(d) for d in descs) < cfg.vocabulary_shape[0] * 4:
            return  # too few features to cluster yet (a blank start): try again with the next keyframe
        self.vocabulary = BinaryVocabulary.train(descs, cfg.vocabulary_shape, cfg.vocabulary_iterations, cfg.seed)
        self._index = _InvertedIndex(len(self.vocabulary.idf))
        for slot, e in zip(self._order, entries):
            if len(e.desc):
                e.bow, e.node = self.vocabulary.bow(e.desc)
                self._index.add(slot, e.bow)
        for a, b in zip(entries[:-1], entries[1:]):  # redundancies in the new score's units
            a.redundancy = self._similarity(a, b)
        self.stats.tick("vocabulary", clock)

    def _evict(self) -> None:
        """Drop the least distinctive old keyframe: the one most similar to its successor."""
        candidates = self._order[: len(self._order) - self.config.exclude_recent - 1]
        pos = int(np.argmax([self._entry(s).redundancy for s in candidates]))
        slot = self._order.pop(pos)
        gone = self._entry(slot)
        self._slots[slot] = None
        if self._index is not None and gone is not None and gone.bow is not None:
            self._index.remove(slot, gone.bow)
        if pos > 0:  # the predecessor's successor changed
            before, after = self._entry(self._order[pos - 1]), self._entry(self._order[pos])
            before.redundancy = self._similarity(before, after)
        self.stats.evicted += 1
