"""Layer-wise scale alignment (mode "lsa", as LASER; ARCHITECTURE §4): the window's depth layers, linked to
the previous window's in the overlap frames and along the window's own frames, each get a robust scale on
top of the window's Sim(3)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from recon.align.contracts import AlignConfig, AlignedWindow, Correspondences
from recon.geometry import grid_stride, invert_rigid
from recon.kernels.align_layers import LayerLinks, link_layers, link_layers_warped, segment_depth_layers_batch
from recon.kernels.align_sim3 import robust_log_scale_grouped, robust_sim3
from recon.types import Sim3, WindowPrediction


def num_layers_per_frame(labels: torch.Tensor) -> torch.Tensor:
    """Layers per frame [S] (int64) of label maps [S,H,W] (labels 0..L-1, -1 = none)."""
    return (labels.flatten(1).amax(1).long() + 1).clamp_min(0)


@dataclass
class WindowLayers:
    """A window's depth layers and the links between the layers of its consecutive frames: they depend on
    that window alone, so they can be worked out beforehand, beside the joins of earlier windows."""

    labels: torch.Tensor  # [S,H,W] int32, -1 = no layer
    within: LayerLinks | None  # consecutive frames' layers (None: a one-frame window)


def window_layers(cur: WindowPrediction, config: AlignConfig) -> WindowLayers | None:
    """None unless the mode is "lsa"."""
    if config.mode != "lsa":
        return None
    labels = torch.from_numpy(segment_depth_layers_batch(cur.depth, cur.depth_conf, config.layers)).to(cur.depth.device)
    if len(cur) == 1:
        return WindowLayers(labels, None)
    iou_stride = grid_stride(labels.shape[1] * labels.shape[2], config.iou_pixels)
    if config.within_links == "warp":
        within = link_layers_warped(
            labels,
            cur.points,
            cur.cam_from_world,
            cur.K,
            config.within_iou,
            iou_stride,
            num_layers=num_layers_per_frame(labels),
        )
    else:
        within = link_layers(labels[:-1], labels[1:], config.within_iou, iou_stride)
    return WindowLayers(labels, within)


def layer_scale_alignment(
    prev: AlignedWindow,
    cur: WindowPrediction,
    overlap: int,
    corr: Correspondences,
    sim: Sim3,
    layers: WindowLayers,
    num_layers: torch.Tensor,
    delta: float,
    config: AlignConfig,
    warnings: list[str],
) -> tuple[Sim3, torch.Tensor, list[torch.Tensor], dict[str, Any]]:
    """LSA on top of `sim`. Returns the (possibly re-fitted) Sim(3), the per-pixel scale [S,H,W], the
    per-frame layer scales and diagnostics. num_layers [S]: layers per frame of `layers`."""
    labels, within = layers.labels, layers.within
    dev = cur.depth.device
    O = overlap
    t0 = time.perf_counter()
    prev_labels = prev.layer_labels[-O:].to(dev) if prev.layer_labels is not None else None
    if prev_labels is None:  # previous window aligned without LSA: segment its overlap frames now
        prev_labels = torch.from_numpy(segment_depth_layers_batch(prev.depth[-O:], prev.conf[-O:], config.layers)).to(
            dev
        )
    iou_stride = grid_stride(labels.shape[1] * labels.shape[2], config.iou_pixels)
    cross = link_layers(prev_labels, labels[:O], config.cross_iou, iou_stride)

    # Each correspondence sample belongs to at most one cross link: (frame, prev layer, cur layer).
    la = prev_labels[corr.frame, corr.v, corr.u].long()
    lb = labels[:O][corr.frame, corr.v, corr.u].long()
    nb = cross.num_b.to(dev)
    na = cross.num_a.to(dev)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), (na * nb).cumsum(0)[:-1]])
    table = torch.full((int((na * nb).sum()) + 1,), -1, dtype=torch.int64, device=dev)  # +1: a dump slot
    table[offsets[cross.pair] + cross.a * nb[cross.pair] + cross.b] = torch.arange(len(cross), device=dev)
    ok = (la >= 0) & (lb >= 0)
    slot = torch.where(ok, offsets[corr.frame] + la.clamp_min(0) * nb[corr.frame] + lb.clamp_min(0), table.shape[0] - 1)
    group = table[slot]
    d_prev = prev.depth[-O:].to(dev)[corr.frame, corr.v, corr.u]
    d_cur = cur.depth[:O][corr.frame, corr.v, corr.u]
    centres = (
        torch.from_numpy(invert_rigid(cur.cam_from_world.double().cpu().numpy())[:, :3, 3]).float().to(dev)
    )  # [S,3]

    refine_rounds = 1 if config.lsa_refine else 0
    for round_ in range(refine_rounds + 1):
        link_scale, support = robust_log_scale_grouped(
            sim.s * d_cur, d_prev, corr.weights, group, len(cross), config.scale_huber_delta, config.scale_iterations
        )
        good = support >= config.min_link_samples
        frame_scales, reached = _propagate(cross, within, link_scale, good, num_layers.tolist(), O)
        frame_scales, clamped = _clamp_scales(frame_scales, config.max_layer_scale)
        if round_ == refine_rounds:
            break
        # Re-fit the Sim(3) on layer-corrected points: scaling the camera-frame point by k is scaling
        # the window point about the camera centre, p' = c + k (p - c).
        k = scale_lookup(frame_scales[:O], labels[:O][corr.frame, corr.v, corr.u], corr.frame)
        c = centres[corr.frame]
        src = c + k[:, None] * (corr.source - c)
        sim2, fit2 = robust_sim3(src, corr.target, corr.weights, delta, config.irls_iterations)
        if not (fit2.valid and config.scale_bounds[0] <= sim2.s <= config.scale_bounds[1]):
            warnings.append("LSA re-fit of the Sim(3) was degenerate; kept the first fit")
            break
        sim = sim2
    if clamped:
        warnings.append(f"{clamped} layer scales clamped to [1/{config.max_layer_scale}, {config.max_layer_scale}]")

    # One gather for the whole window (the tables share their layout: one index serves both).
    scales, start = _layer_table(frame_scales, 1.0, dev)
    index = labels + (start[:, None, None] + 1)
    scale_map = torch.index_select(scales, 0, index.flatten()).view(labels.shape)
    # A diagnostic, on every 16th pixel: the share of labelled pixels whose layer got a scale.
    reached_flags, _ = _layer_table(reached, 0.0, dev)
    labelled_px = int((labels[:, ::4, ::4] >= 0).sum())
    reached_px = int(torch.index_select(reached_flags, 0, index[:, ::4, ::4].flatten()).sum())
    diag = {
        "layers_per_frame": [int(s.numel()) for s in frame_scales],
        "cross_links": [
            {"frame": p, "prev_layer": a, "layer": b, "iou": i, "scale": k, "samples": int(n)}
            for p, a, b, i, k, n in zip(
                cross.pair.tolist(),
                cross.a.tolist(),
                cross.b.tolist(),
                cross.iou.tolist(),
                link_scale.tolist(),
                support.tolist(),
                strict=True,
            )
        ],
        "within_links": 0 if within is None else len(within),
        "layer_scales": [s.tolist() for s in frame_scales],
        "reached_layers": [int(r.sum()) for r in reached],
        "reached_share": reached_px / max(labelled_px, 1),  # labelled pixels whose layer got a scale
        "refined": config.lsa_refine,
        "time_ms": 1e3 * (time.perf_counter() - t0),
    }
    return sim, scale_map, frame_scales, diag


def _propagate(
    cross: LayerLinks,
    within: LayerLinks | None,
    link_scale: torch.Tensor,
    good: torch.Tensor,
    num_layers: list[int],
    overlap: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Forward in time: each layer's scale is the IoU-weighted mean of what reaches it — cross-window
    links (overlap frames) and links from reached layers of the previous frame; unreached: 1.
    Returns per frame the layer scales [L_j] and which layers were reached [L_j] bool (CPU)."""
    S = len(num_layers)
    scales: list[torch.Tensor] = []
    reached_all: list[torch.Tensor] = []
    reached_prev: torch.Tensor | None = None
    for j in range(S):
        n = num_layers[j]
        num = torch.zeros(max(n, 0), dtype=torch.float64)
        den = torch.zeros(max(n, 0), dtype=torch.float64)
        if j < overlap and len(cross):
            m = (cross.pair == j).cpu() & good.cpu()
            b, iou = cross.b.cpu()[m], cross.iou.cpu()[m].double()
            num.index_add_(0, b, iou * link_scale.cpu()[m].double())
            den.index_add_(0, b, iou)
        if j > 0 and within is not None and len(within) and reached_prev is not None:
            m = within.pair.cpu() == j - 1
            a, b, iou = within.a.cpu()[m], within.b.cpu()[m], within.iou.cpu()[m].double()
            use = reached_prev[a]
            num.index_add_(0, b[use], iou[use] * scales[j - 1][a[use]].double())
            den.index_add_(0, b[use], iou[use])
        reached = den > 0
        scales.append(torch.where(reached, num / den.clamp_min(1e-30), torch.ones_like(num)).float())
        reached_all.append(reached)
        reached_prev = reached
    return scales, reached_all


def _clamp_scales(scales: list[torch.Tensor], max_scale: float) -> tuple[list[torch.Tensor], int]:
    clamped = sum(int(((s > max_scale) | (s < 1.0 / max_scale)).sum()) for s in scales)
    return [s.clamp(1.0 / max_scale, max_scale) for s in scales], clamped


def _layer_table(per_frame: list[torch.Tensor], none: float, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer values of every frame in one flat table, each frame's run led by the value of its
    unlabelled pixels: (table, start [S] int32); a pixel of frame j with label l (-1: none) reads
    table[start[j] + 1 + l]."""
    table = torch.cat([t for v in per_frame for t in (torch.full((1,), none), v.float().cpu())]).to(dev)
    sizes = torch.tensor([len(v) + 1 for v in per_frame], dtype=torch.int64)
    start = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]]).to(dev, torch.int32)
    return table, start


def scale_lookup(frame_scales: list[torch.Tensor], layer: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Scale of each sample [N] given its layer (-1: 1) and frame."""
    table, start = _layer_table(frame_scales, 1.0, layer.device)
    return table[(start[frame] + 1 + layer).long()]
