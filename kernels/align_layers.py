"""Depth layers for layer-wise scale alignment: segment a depth map into regions at distinct depths, and
link the layers of two label maps of the same (or the next) frame by IoU.

Segmentation (our replacement for LASER's Felzenszwalb superpixels + merging; no superpixel
over-segmentation to undo, ~3 ms per 640x192 frame at half resolution, `stride=2`):
1. confident pixels only (conf > conf_rel x median positive conf, depth > 0); the rest is -1;
2. log-depth, median-filtered except across depth edges (kills speckle at band edges), quantised into
   bands `bin_ratio` wide (a ratio, so the result does not depend on the window's arbitrary scale),
   anchored at the frame's median log-depth (two windows' segmentations of the same frame then put
   band edges in the same place);
3. connected components within each band (4-connected), in one pass over a 2x grid whose in-between
   cells join two pixels of the same band;
4. components smaller than `min_size_frac` of the image join adjacent ones (closest mean log-depth first,
   at most `small_join_bands` bands apart); what stays small is speckle: -1;
5. adjacent regions merge, closest pair first, means updated after each merge, while their mean depths
   differ by < `merge_ratio` (default "ratio" rule) — or, with merge="range", LASER's rule: by <
   `merge_rel` x the frame's confident depth range (5th..95th percentile) — and their shared boundary is
   mostly smooth (a pixel step < half a band), so an object never merges across its depth edge with a
   surface behind it whose mean depth happens to be close. LASER's rule is uniform in
   metres: in a 60 m street it merges everything within 6 m, e.g. an object at 12 m with the road
   behind it at 17 m; the ratio rule treats near and far alike, as multiplicative scale errors do;
6. labels 0..L-1 ordered near to far.
A depth discontinuity always cuts (different bands are never one component), a smooth surface that spans
many bands (road, wall) becomes chunks of ~1.3x in depth after step 5: each may carry its own scale
error (a piecewise-constant fit of depth-dependent errors). Objects touching a surface without a depth
edge (a car's bumper on the road) share its layer: depth alone cannot separate them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class LayerParams:
    conf_rel: float = 0.1  # confident: conf > conf_rel x median of the positive confidences
    bin_ratio: float = 0.15  # band width as a depth ratio (log-depth step log(1 + bin_ratio))
    median_ksize: int = 5  # median filter on log-depth before quantising: 0, 3 or 5
    min_size_frac: float = 0.003  # smaller components join a neighbour (LASER: 500 px of ~150k)
    small_join_bands: float = 2.0  # ...only one within this many bands of log-depth
    merge: Literal["ratio", "range"] = "ratio"  # how close two adjacent regions must be to merge:
    merge_ratio: float = 0.2  # "ratio": mean depths within this ratio (multiplicative, like scale errors)
    merge_rel: float = 0.10  # "range" (LASER): mean depths within this x the confident depth range
    merge_smooth_share: float = 0.5  # ...and only across boundaries mostly free of depth edges (0: LASER)
    range_percentiles: tuple[float, float] = (5.0, 95.0)
    stride: int = 1  # segment every stride-th pixel per axis, labels upsampled (nearest): ~stride^2 faster
    max_pixels: int = 0  # ...and a larger stride where needed to segment at most this many pixels (0: any)


def _as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def _components_same_band(band: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of pixels with equal `band` [H,W] among `valid`: ids 0..n-1, -1 elsewhere.
    Multi-label connectivity with one binary connectedComponents on a (2H-1)x(2W-1) grid: even cells are
    pixels, odd cells between two pixels are set iff both are valid and in the same band."""
    H, W = band.shape
    grid = np.zeros((2 * H - 1, 2 * W - 1), np.uint8)
    grid[::2, ::2] = valid
    grid[::2, 1::2] = valid[:, :-1] & valid[:, 1:] & (band[:, :-1] == band[:, 1:])
    grid[1::2, ::2] = valid[:-1, :] & valid[1:, :] & (band[:-1, :] == band[1:, :])
    n, lab = cv2.connectedComponents(grid, connectivity=4, ltype=cv2.CV_32S)
    return lab[::2, ::2] - 1, n - 1


def _adjacent_pairs(
    labels: np.ndarray, n: int, logd: np.ndarray, smooth_tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unique unordered pairs (a < b) of labels in 0..n-1 that touch horizontally or vertically, with the
    number of touching pixel pairs and how many of them are smooth (|log-depth step| < smooth_tol)."""
    keys, smooth = [], []
    for (a, b), (la, lb) in (
        ((labels[:, :-1], labels[:, 1:]), (logd[:, :-1], logd[:, 1:])),
        ((labels[:-1, :], labels[1:, :]), (logd[:-1, :], logd[1:, :])),
    ):
        m = (a != b) & (a >= 0) & (b >= 0)
        a, b = a[m].astype(np.int64), b[m].astype(np.int64)
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
        smooth.append(np.abs(la[m] - lb[m]) < smooth_tol)
    k, inv = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.bincount(inv, minlength=len(k)).astype(np.float64)
    smooth_n = np.bincount(inv, weights=np.concatenate(smooth).astype(np.float64), minlength=len(k))
    return k // n, k % n, total, smooth_n


def _region_edges(
    ra: np.ndarray, rb: np.ndarray, touch: np.ndarray, smooth: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges between regions (component edges mapped to their regions): drop internal and unassigned
    ones, combine duplicates by summing their touching / smooth pixel-pair counts."""
    keep = (ra >= 0) & (rb >= 0) & (ra != rb)
    key = np.minimum(ra[keep], rb[keep]) * n + np.maximum(ra[keep], rb[keep])
    k, inv = np.unique(key, return_inverse=True)
    return (
        k // n,
        k % n,
        np.bincount(inv, weights=touch[keep], minlength=len(k)),
        np.bincount(inv, weights=smooth[keep], minlength=len(k)),
    )


def _find(parent: np.ndarray) -> np.ndarray:
    """Resolve a union-find parent array fully (pointer jumping)."""
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


def _join_small(
    a: np.ndarray, b: np.ndarray, area: np.ndarray, mean_log: np.ndarray, min_size: int, tol: float
) -> np.ndarray:
    """Union-find over adjacency edges (a, b), cheapest first, joining only while one side is smaller than
    min_size and the sets' area-weighted mean log-depths are within tol. Returns the root per component.
    A Python loop, but over region edges (tens to a few thousand), not pixels."""
    parent = list(range(len(area)))
    size = area.astype(float).tolist()
    lsum = (area * mean_log).tolist()
    small = area < min_size
    cand = small[a] | small[b]
    a, b = a[cand], b[cand]
    order = np.argsort(np.abs(mean_log[a] - mean_log[b]), kind="stable")

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a[order].tolist(), b[order].tolist(), strict=True):
        ri, rj = find(i), find(j)
        if ri == rj or (size[ri] >= min_size and size[rj] >= min_size):
            continue
        if abs(lsum[ri] / size[ri] - lsum[rj] / size[rj]) > tol:
            continue
        if size[ri] < size[rj]:
            ri, rj = rj, ri
        parent[rj] = ri
        size[ri] += size[rj]
        lsum[ri] += lsum[rj]
    return np.array([find(i) for i in range(len(parent))], dtype=np.int64)


def segment_depth_layers(
    depth: np.ndarray | torch.Tensor, conf: np.ndarray | torch.Tensor, params: LayerParams = LayerParams()
) -> np.ndarray:
    """Depth layers of one frame: depth [H,W] (> 0 valid), conf [H,W] -> labels int32 [H,W], 0..L-1 near
    to far, -1 for unconfident pixels."""
    d = _as_numpy(depth)
    c = _as_numpy(conf)
    k = params.stride
    if params.max_pixels > 0:
        k = max(k, int(np.ceil(np.sqrt(d.shape[0] * d.shape[1] / params.max_pixels))))
    if k > 1:
        coarse = _segment(d[k // 2 :: k, k // 2 :: k], c[k // 2 :: k, k // 2 :: k], params)
        full = np.repeat(np.repeat(coarse, k, 0), k, 1)
        # the coarse grid starts at k // 2: shift by that, then pad/crop to the full size
        pad_h = (k // 2, max(0, d.shape[0] - full.shape[0] - k // 2))
        pad_w = (k // 2, max(0, d.shape[1] - full.shape[1] - k // 2))
        full = np.pad(full, (pad_h, pad_w), mode="edge")[: d.shape[0], : d.shape[1]]
        ok = np.isfinite(d) & (d > 0) & np.isfinite(c) & (c > 0)
        return np.where(ok, full, -1).astype(np.int32)
    return _segment(d, c, params)


def _segment(d: np.ndarray, c: np.ndarray, params: LayerParams) -> np.ndarray:
    H, W = d.shape
    labels = np.full((H, W), -1, np.int32)
    valid = np.isfinite(d) & (d > 0) & np.isfinite(c) & (c > 0)
    sub = (slice(None, None, 2), slice(None, None, 2))  # statistics (medians, range) on every 4th pixel
    if not valid[sub].any():
        return labels
    valid &= c > params.conf_rel * float(np.median(c[sub][valid[sub]]))
    min_size = max(1, int(round(params.min_size_frac * H * W)))
    if int(valid.sum()) < min_size or not valid[sub].any():
        return labels

    logd = np.log(np.where(valid, d, 1.0), dtype=np.float32)
    ref = float(np.median(logd[sub][valid[sub]]))
    step = float(np.log1p(params.bin_ratio))
    if params.median_ksize in (3, 5):
        # Invalid pixels take the reference value so they do not drag the filter towards 0 depth; and a
        # pixel keeps its raw value where the filter moved it by more than a band (a discontinuity:
        # there the median would pull box corners into the background).
        logd_f = cv2.medianBlur(np.where(valid, logd, ref).astype(np.float32), params.median_ksize)
        logd_f = np.where(np.abs(logd_f - logd) > step, logd, logd_f)
    else:
        logd_f = logd
    band = np.floor((logd_f - ref) * (1.0 / step) + 0.5).astype(np.int32)
    comp, n = _components_same_band(band, valid)
    if n == 0:
        return labels

    idx = comp.ravel() + 1  # 0 = invalid, so bincount needs no boolean indexing
    area = np.bincount(idx, minlength=n + 1)[1:].astype(np.float64)
    mean_log = np.bincount(idx, weights=logd.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    dsum = np.bincount(idx, weights=np.where(valid, d, 0).ravel(), minlength=n + 1)[1:]

    # Small components find a home: over adjacent pairs in order of log-depth difference, join two sets
    # when one is still small and their mean log-depths differ by <= small_join_bands bands (so speckle
    # and thin far bands of a smooth surface group up, but never jump a depth discontinuity). Sets that
    # stay small are speckle: -1.
    a, b, touch, touch_smooth = _adjacent_pairs(comp, n, logd, 0.5 * step)
    root = _join_small(a, b, area, mean_log, min_size, params.small_join_bands * step)
    set_area = np.bincount(root, weights=area, minlength=n)
    root = np.where(set_area[root] < min_size, -1, root)

    # Merge adjacent regions, closest pair first, means updated after each merge, while they are close:
    # "ratio": mean log-depths within log(1 + merge_ratio) (scale errors are multiplicative, so this is
    # uniform in depth); "range" (LASER): mean depths within merge_rel x the confident depth range.
    lo, hi = np.percentile(d[sub][valid[sub]], params.range_percentiles)
    members = root >= 0
    area_r = np.bincount(root[members], weights=area[members], minlength=n)
    dsum_r = np.bincount(root[members], weights=dsum[members], minlength=n)
    lsum_r = np.bincount(root[members], weights=(area * mean_log)[members], minlength=n)
    if params.merge == "range":
        value, thresh = dsum_r, params.merge_rel * float(hi - lo)
    else:
        value, thresh = lsum_r, float(np.log1p(params.merge_ratio))
    parent = np.arange(n)
    ra, rb, touch_r, smooth_r = _region_edges(root[a], root[b], touch, touch_smooth, n)
    while len(ra) and thresh > 0:
        mean_v = value / np.maximum(area_r, 1)
        diff = np.abs(mean_v[ra] - mean_v[rb])
        # A boundary that is mostly a depth edge never merges, however close the means are (an object in
        # front of a wall at a similar depth); LASER's rule has no such test (merge_smooth_share = 0).
        diff = np.where(smooth_r >= params.merge_smooth_share * touch_r, diff, np.inf)
        k = int(np.argmin(diff))
        if not diff[k] < thresh:
            break
        keep_id, gone = (ra[k], rb[k]) if area_r[ra[k]] >= area_r[rb[k]] else (rb[k], ra[k])
        parent[gone] = keep_id
        for acc in (area_r, dsum_r, lsum_r):
            acc[keep_id] += acc[gone]
            acc[gone] = 0
        ra, rb, touch_r, smooth_r = _region_edges(
            np.where(ra == gone, keep_id, ra), np.where(rb == gone, keep_id, rb), touch_r, smooth_r, n
        )
    final_of_root = _find(parent)
    region = np.where(root >= 0, final_of_root[np.maximum(root, 0)], -1)  # per component

    # Relabel 0..L-1, near to far.
    ids = np.unique(region[region >= 0])
    if len(ids) == 0:
        return labels
    mean_d = dsum_r[ids] / np.maximum(area_r[ids], 1)
    rank = np.empty(n, np.int64)
    rank[ids[np.argsort(mean_d, kind="stable")]] = np.arange(len(ids))
    comp_label = np.where(region >= 0, rank[np.maximum(region, 0)], -1).astype(np.int32)
    return np.concatenate([np.array([-1], np.int32), comp_label])[idx].reshape(H, W)


def segment_depth_layers_batch(
    depth: np.ndarray | torch.Tensor, conf: np.ndarray | torch.Tensor, params: LayerParams = LayerParams()
) -> np.ndarray:
    """`segment_depth_layers` over frames: depth, conf [S,H,W] -> labels int32 [S,H,W]."""
    d, c = _as_numpy(depth), _as_numpy(conf)
    return np.stack([segment_depth_layers(d[i], c[i], params) for i in range(d.shape[0])])


# ----------------------------------------------------------------------------------------- linking
@dataclass
class LayerLinks:
    """Links between layers of frame pairs: frame pair `pair` [K], layer `a` in the first map, layer `b`
    in the second, their IoU [K]; `num_a` / `num_b` [P] layers per map of each pair."""

    pair: torch.Tensor  # [K] int64
    a: torch.Tensor  # [K] int64
    b: torch.Tensor  # [K] int64
    iou: torch.Tensor  # [K] float32
    num_a: torch.Tensor  # [P] int64
    num_b: torch.Tensor  # [P] int64

    def __len__(self) -> int:
        return int(self.pair.shape[0])


def layer_iou(
    labels_a: torch.Tensor, labels_b: torch.Tensor, num_a: torch.Tensor | None = None, num_b: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """IoU matrices [La_p, Lb_p] between the layers of label maps [P,H,W] (int, -1 = none), per pair p.
    Three bincounts over all pairs at once; union counts every pixel of either layer, including pixels
    unlabelled in the other map, so a layer that vanishes gets a low IoU. num_a / num_b [P]: layer counts
    when a map may not show all its layers (default: max label + 1)."""
    if labels_a.shape != labels_b.shape or labels_a.ndim != 3:
        raise ValueError(
            f"layer_iou: label maps must both be [P,H,W], got {tuple(labels_a.shape)} / {tuple(labels_b.shape)}"
        )
    dev = labels_a.device
    la = labels_a.flatten(1).long()
    lb = labels_b.flatten(1).long()
    na = (la.amax(1) + 1).clamp_min(0) if num_a is None else torch.maximum(num_a.to(dev), la.amax(1) + 1)  # [P]
    nb = (lb.amax(1) + 1).clamp_min(0) if num_b is None else torch.maximum(num_b.to(dev), lb.amax(1) + 1)
    na_l, nb_l = na.tolist(), nb.tolist()

    def offsets(sizes: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), sizes.cumsum(0)[:-1]])

    def counts(idx: torch.Tensor, valid: torch.Tensor, total: int) -> torch.Tensor:
        # invalid pixels go to one dump bin past the end instead of a boolean gather
        return torch.bincount(torch.where(valid, idx, total).flatten(), minlength=total + 1)[:total].float()

    off_ab, off_a, off_b = offsets(na * nb), offsets(na), offsets(nb)
    n_ab, n_a, n_b = int((na * nb).sum()), int(na.sum()), int(nb.sum())
    inter = counts(off_ab[:, None] + la * nb[:, None] + lb, (la >= 0) & (lb >= 0), n_ab)
    area_a = counts(off_a[:, None] + la, la >= 0, n_a)
    area_b = counts(off_b[:, None] + lb, lb >= 0, n_b)
    out = []
    for p in range(len(na_l)):
        A, Bn = na_l[p], nb_l[p]
        i0, a0, b0 = int(off_ab[p]), int(off_a[p]), int(off_b[p])
        m = inter[i0 : i0 + A * Bn].view(A, Bn)
        union = area_a[a0 : a0 + A, None] + area_b[None, b0 : b0 + Bn] - m
        out.append(m / union.clamp_min(1.0))
    return out


def link_layers(labels_a: torch.Tensor, labels_b: torch.Tensor, min_iou: float, stride: int = 1) -> LayerLinks:
    """All layer pairs with IoU >= min_iou between label maps labels_a[p] and labels_b[p], [P,H,W];
    IoU counted on every stride-th pixel per axis (layers are large: stride 2 changes IoU by ~1e-3)."""
    if stride > 1:
        o = stride // 2
        labels_a = labels_a[:, o::stride, o::stride]
        labels_b = labels_b[:, o::stride, o::stride]
    return _links_from_iou(layer_iou(labels_a, labels_b), min_iou, labels_a.device)


def link_layers_warped(
    labels: torch.Tensor,
    points: torch.Tensor,
    cam_from_world: torch.Tensor,
    K: torch.Tensor,
    min_iou: float,
    stride: int = 1,
    with_pixel_iou: bool = True,
    num_layers: torch.Tensor | None = None,
) -> LayerLinks:
    """Links between the layers of consecutive frames (pair p: layer a of frame p -> layer b of frame
    p+1) of one window, following the window's own geometry: every pixel of frame p+1 is carried back
    into frame p (its point [S,H,W,3], window frame, projected with frame p's cam_from_world [S,4,4] and
    K [S,3,3]) to read the frame-p layer it shows, and IoUs are counted on frame p+1's grid. So objects
    stay linked under fast motion, where they move and grow between frames. Depth bands of a continuous
    surface (road, wall) are not objects, though: under forward motion the road at a given pixel keeps
    its depth, so its bands stay at the same pixels while the road itself moves. With `with_pixel_iou`,
    a pair's IoU is the larger of the warped and the same-pixel IoU, which links both kinds of layer.
    num_layers [S]: layers per frame when known (default: max label + 1)."""
    S, H, W = labels.shape
    o = stride // 2
    lb = labels[1:, o::stride, o::stride]  # [S-1,h,w] frame p+1
    pts = points[1:, o::stride, o::stride].float()  # [S-1,h,w,3]
    T = cam_from_world[:-1].float()  # into frame p
    cam = torch.einsum("sij,shwj->shwi", T[:, :3, :3], pts) + T[:, None, None, :3, 3]
    z = cam[..., 2]
    Kp = K[:-1].float()
    zs = z.clamp_min(1e-9)
    u = Kp[:, None, None, 0, 0] * cam[..., 0] / zs + Kp[:, None, None, 0, 2]
    v = Kp[:, None, None, 1, 1] * cam[..., 1] / zs + Kp[:, None, None, 1, 2]
    ui, vi = torch.round(u).long(), torch.round(v).long()
    inside = (z > 0) & (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H) & torch.isfinite(u) & torch.isfinite(v)
    frame = torch.arange(0, S - 1, device=labels.device)[:, None, None].expand_as(ui)
    seen = labels[frame, vi.clamp(0, H - 1), ui.clamp(0, W - 1)]
    seen = torch.where(inside & (lb >= 0), seen, torch.full_like(seen, -1))  # frame-p layer at each p+1 pixel
    num = (labels.flatten(1).amax(1).long() + 1).clamp_min(0) if num_layers is None else num_layers.to(labels.device)
    ious = layer_iou(seen, lb, num[:-1], num[1:])
    if with_pixel_iou:
        la = labels[:-1, o::stride, o::stride]
        ious = [torch.maximum(w, p) for w, p in zip(ious, layer_iou(la, lb, num[:-1], num[1:]), strict=True)]
    return _links_from_iou(ious, min_iou, labels.device)


def _links_from_iou(ious: list[torch.Tensor], min_iou: float, dev: torch.device) -> LayerLinks:
    pair, a, b, iou = [], [], [], []
    for p, m in enumerate(ious):
        ia, ib = torch.nonzero(m >= min_iou, as_tuple=True)
        pair.append(torch.full_like(ia, p))
        a.append(ia)
        b.append(ib)
        iou.append(m[ia, ib])
    cat = lambda xs, dt: torch.cat(xs).to(dt) if xs else torch.zeros(0, dtype=dt, device=dev)  # noqa: E731
    return LayerLinks(
        pair=cat(pair, torch.int64),
        a=cat(a, torch.int64),
        b=cat(b, torch.int64),
        iou=cat(iou, torch.float32),
        num_a=torch.tensor([m.shape[0] for m in ious], dtype=torch.int64),
        num_b=torch.tensor([m.shape[1] for m in ious], dtype=torch.int64),
    )
