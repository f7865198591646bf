"""What of a window enters the map (ARCHITECTURE §5): the map's settings, and the pixels fused: the more
confident ones with depth, on the map's pixel grid, that no other frame of the window contradicts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recon.align import AlignedWindow
from recon.fusion import VOXEL_PER_DEPTH


@dataclass(frozen=True)
class MapConfig:
    voxel: float | None = None  # run units; None: 1% of the first window's median depth
    max_points: int = 1_000_000
    pixel_stride: int = 2
    conf_quantile: float = 0.5  # fuse pixels at or above this quantile of the window's confidence (> 0)
    # Depth edges (depth_edges): where a model's depth blends two surfaces; fused, such pixels are the streaks
    # between foreground and background. Off by default: bench/bench_map_filter.py finds 0.1 about neutral on
    # the synthetic street and room (accuracy -0.3..-0.6%, completeness within the ICP's run-to-run noise).
    edge_jump_rel: float | None = None
    edge_window_px: int = 5
    # Multi-view consistency (consistent_in_neighbours): a pixel is fused only where one of the frames
    # `consistency_offsets` away in the same window confirms its depth: within consistency_px of reprojection
    # error (model pixels) or consistency_rel of relative depth; pixels in no such frame's view are kept unless
    # far beyond the frame's median depth.
    # Depth other views contradict (a blend across an edge, depth interpolated over a blank background) stays
    # out. bench/bench_map_filter.py: street accuracy -15%, recall -2..-3%, room unchanged; temple's points
    # off the object 15% -> 5%. None: off.
    consistency_px: float | None = 1.0
    consistency_rel: float = 0.05
    consistency_offsets: tuple[int, ...] = (-3, 3)


def select_pixels(
    world: AlignedWindow, new: slice, K: torch.Tensor | None, cfg: MapConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `new` frames of `world` on the map's pixel grid: world points [F,H',W',3] and the confidence each
    pixel is fused with [F,H',W'] (0: left out). K [S,3,3] model pixels; None: no consistency check."""
    s = cfg.pixel_stride
    conf = world.conf[new, ::s, ::s]
    points = world.world_points(new, s)  # one pass: the consistency check and the map both take them
    keep = confident_pixels(conf, cfg.conf_quantile)
    if keep.any():
        if cfg.edge_jump_rel is not None:
            keep &= ~depth_edges(world.depth[new], cfg.edge_jump_rel, cfg.edge_window_px)[:, ::s, ::s]
        if cfg.consistency_px is not None and K is not None:
            keep &= consistent_in_neighbours(
                world, K, new, s, cfg.consistency_px, cfg.consistency_offsets, cfg.consistency_rel, points=points
            )
        conf = torch.where(keep, conf, torch.zeros_like(conf))
    return points, conf


def default_voxel(first: AlignedWindow) -> float:
    """The voxel size when none is given: a fixed share of the first window's median depth."""
    depth = first.depth[:, ::4, ::4][first.conf[:, ::4, ::4] > 0]  # every 16th pixel: plenty for a median
    return VOXEL_PER_DEPTH * (float(depth.median()) if depth.numel() else 1.0)


def confident_pixels(conf: torch.Tensor, q: float) -> torch.Tensor:
    """[...] bool: pixels at or above the q-quantile of the positive confidences. Pixels with none have no
    depth: counted in, a window half sky or blank background (a classical model's) would put the quantile at
    zero and fuse every guess."""
    valid = conf[conf > 0]
    if not valid.numel():
        return torch.zeros_like(conf, dtype=torch.bool)
    return conf >= _quantile_floor(valid, q)


def depth_edges(depth: torch.Tensor, jump_rel: float, window_px: int) -> torch.Tensor:
    """[F,H,W] bool: pixels on a depth discontinuity. Inverse depth is affine in the pixel coordinates over a
    plane, so on any surface, slanted ones included (a road seen from a car), it equals the mean of its two
    neighbours window_px // 2 away on either side; a pixel where it differs from that mean by more than jump_rel
    of its own value, along rows or columns, lies where two surfaces meet (or blends them). Pixels without
    depth (<= 0) are edges too, as are those it is a neighbour of."""
    inv = 1.0 / depth.clamp_min(1e-12)
    r = max(1, window_px // 2)
    edge = depth <= 0
    for dim in (1, 2):
        a, b = inv.narrow(dim, 0, inv.shape[dim] - 2 * r), inv.narrow(dim, 2 * r, inv.shape[dim] - 2 * r)
        mid = inv.narrow(dim, r, inv.shape[dim] - 2 * r)
        bend = (mid - 0.5 * (a + b)).abs() > jump_rel * mid
        edge.narrow(dim, r, inv.shape[dim] - 2 * r).logical_or_(bend)
    return edge


def consistent_in_neighbours(
    world: AlignedWindow,
    K: torch.Tensor,
    new: slice,
    stride: int,
    max_px: float,
    offsets: tuple[int, ...],
    max_rel: float,
    unseen_max_depth: float = 2.0,
    points: torch.Tensor | None = None,
) -> torch.Tensor:
    """[F,H',W'] bool for the `new` frames on every stride-th pixel: no frame `offsets` away in the window
    contradicts the pixel's depth. COLMAP's geometric consistency (its stereo fusion): project the point into
    the partner, lift the pixel it lands on with the partner's depth, project that back; it confirms the
    depth where it lands within max_px of the point's own projection (a far surface, whose depth two views
    pin down loosely, still lands close: its error is small in pixels, the unit its depth was measured in), or
    where the two depths agree within max_rel (a near surface, seen with a wide parallax, moves many pixels
    for a small depth error). A blend across a depth edge, or depth interpolated over a blank background,
    is confirmed by no partner that sees it, nor is a point that lands where the partner has no depth (a
    blank background seen through it). Kept: pixels some partner confirms, and those in no partner's view
    (nothing says anything about them) within unseen_max_depth x the frame's median depth; a streak that runs
    off into the distance leaves every partner's view too. K [S,3,3] model pixels (centres at integers)."""
    S, H, W = world.depth.shape
    first, stop, _ = new.indices(S)
    if points is None:  # [F,h,w,3]; the caller's when it has them already
        points = world.world_points(new, stride)
    T = world.cam_from_world.to(points.dtype)
    Kf = K.to(points.dtype)
    out = torch.zeros(points.shape[:3], dtype=torch.bool, device=points.device)
    unseen = torch.ones_like(out)  # in no partner's view: nothing to confirm or contradict it
    for f, i in enumerate(range(first, stop)):
        partners = [i + o for o in offsets if 0 <= i + o < S]
        uv_i = _project(points[f] @ T[i, :3, :3].T + T[i, :3, 3], Kf[i])  # [h,w,2]
        for j in partners:
            p_j = points[f] @ T[j, :3, :3].T + T[j, :3, 3]  # [h,w,3] in camera j
            uv_j = _project(
                p_j, Kf[j]
            )  # lifted along its own ray, with the depth of the nearest pixel: no rounding error
            u, v = torch.round(uv_j[..., 0]).long(), torch.round(uv_j[..., 1]).long()
            inside = (p_j[..., 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            d = world.depth[j][v.clamp(0, H - 1), u.clamp(0, W - 1)]  # [h,w]
            ray = torch.stack(
                [
                    (uv_j[..., 0] - Kf[j, 0, 2]) / Kf[j, 0, 0],
                    (uv_j[..., 1] - Kf[j, 1, 2]) / Kf[j, 1, 1],
                    torch.ones_like(d),
                ],
                dim=-1,
            )
            lifted_j = ray * d[..., None]  # camera j
            R_ij = T[i, :3, :3] @ T[j, :3, :3].T  # camera j -> camera i
            t_ij = T[i, :3, 3] - R_ij @ T[j, :3, 3]
            back = _project(lifted_j @ R_ij.T + t_ij, Kf[i])
            agree = ((back - uv_i).norm(dim=-1) <= max_px) | ((p_j[..., 2] - d).abs() <= max_rel * d)
            out[f] |= inside & (d > 0) & agree
            unseen[f] &= ~inside
    z = world.depth[first:stop, ::stride, ::stride]
    near = torch.stack([d <= unseen_max_depth * d[d > 0].median() if bool((d > 0).any()) else d > 0 for d in z])
    return out | (unseen & near)


def _project(p_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[...,3] camera points -> [...,2] pixels (behind the camera: far off the image)."""
    z = p_cam[..., 2:3]
    uv = p_cam[..., :2] / z.clamp_min(1e-12) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return torch.where(z > 0, uv, torch.full_like(uv, -1e9))


def _quantile_floor(values: torch.Tensor, q: float) -> torch.Tensor:
    """The least value v with `values >= v` selecting exactly what `values >= torch.quantile(values, q)` does
    (the element above the interpolated position): a selection, not the full sort quantile makes (3x faster)."""
    flat = values.flatten().float()
    return torch.kthvalue(flat, math.ceil(q * (flat.numel() - 1)) + 1).values
