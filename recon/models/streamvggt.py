"""StreamVGGT as a StreamingModel (as the official StreamVGGT code; the cache: recon/cache.py), registered as
`streamvggt`: the VGGT weights with causal global attention and a bounded KV cache.

    model = StreamVGGTModel(weights="checkpoints.pth", cache="keydiff", cache_budget=20_000)
    for group in groups_of_frames:
        pred = model.step(group)      # WindowPrediction for `group`, in the anchor (first) frame's camera
    model.reset()                     # before the next sequence

Per step: the aggregator runs on the new frames only; in each global block their keys/values go into the
`KVCache` (evict, then write) and the new queries attend over what the cache keeps (block-causal inside
the group, so a group equals feeding its frames one by one). The camera head runs frame by frame with its
own bounded cache (`CameraHeadCache`, appended on every refinement iteration as the official code does).
The depth and point heads see the new frames only. Nothing here grows with the stream: the frames are not
kept, and both caches are bounded (except with policy `none`, which keeps every key by definition)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from recon.cache import CacheConfig, KVCache
from recon.cache_camera import RECENT_FRAMES, CameraHeadCache
from recon.errors import ReconError
from recon.models.vggt import (
    VGGTBackedModel,
    anchor_correction,
    pack_prediction,
    preprocess,
    reject_unknown_options,
)
from recon.models.vggt_layers import KVHook
from recon.models.vggt_net import VGGTConfig, VGGTOutput
from recon.types import Frame, ResizeMap, WindowPrediction


class StreamVGGTModel(VGGTBackedModel):
    """StreamingModel `streamvggt`. `cache`: a policy name with `cache_budget` (tokens per global layer) and
    `frames_per_step` (the largest group `step` takes; sizes the minimum budget), or a full CacheConfig.
    `camera_frames`: recent frames the camera-head cache keeps besides the anchor, for the bounded policies;
    with `cache="none"` it keeps every frame, as the official code (unbounded means unbounded).
    `reanchor`: as VGGTModel, measured once on the anchor frame and applied to every later step."""

    name = "streamvggt"
    metric = False
    scale_convention = "VGGT's own, set by the first step: its points lie about 1 from the first camera on average"

    def __init__(
        self,
        weights: str | Path | None = None,
        config: VGGTConfig | str | None = None,
        dtype: str | torch.dtype | None = "fp32",
        device: str | torch.device | None = None,
        cache: str | CacheConfig = "keydiff",
        cache_budget: int | None = None,
        frames_per_step: int = 1,
        camera_frames: int = RECENT_FRAMES,
        reanchor: bool = True,
        **unknown: object,
    ) -> None:
        reject_unknown_options(self.name, unknown)
        # Checked before the (slow) weight loading, so a bad flag fails at once.
        if isinstance(cache, CacheConfig):  # every knob (evict_slack, dynamic budget, ...) from the API
            self.cache_config = cache
        else:
            self.cache_config = CacheConfig(policy=cache, budget_tokens=cache_budget, frames_per_step=frames_per_step)  # type: ignore[arg-type]
        if camera_frames < 1:
            raise ReconError(f"streamvggt: --camera-cache must be >= 1 frame, got {camera_frames}")
        super().__init__(weights, config, dtype, device, reanchor)
        unbounded = self.cache_config.policy == "none"
        self.camera_frames: int | None = None if unbounded else camera_frames
        amp = self.net.amp_dtype
        self.cache_dtype = amp if amp is not None else torch.float32  # keys are cached at compute precision
        self.kv: KVCache | None = None  # built on the first step, when the tokens per frame are known
        self.camera_kv: CameraHeadCache | None = None
        self._seen = 0  # frames consumed since the last reset
        self._rmap: ResizeMap | None = None
        self._anchor_from_world: Tensor | None = None
        self._anchor_info: dict[str, object] = {}

    @property
    def settings(self) -> dict[str, object]:
        """VGGT's record plus the cache: policy, budget (tokens per global layer), camera-head frames."""
        return {
            **super().settings,
            "cache": self.cache_config.policy,
            "cache_budget": self.cache_config.budget_tokens,
            "camera_cache": "every frame" if self.camera_frames is None else self.camera_frames,
        }

    def reset(self) -> None:
        """Forget the sequence: empty caches, next frame is a new anchor."""
        if self.kv is not None:
            self.kv.reset()
        if self.camera_kv is not None:
            self.camera_kv.reset()
        self._seen, self._rmap, self._anchor_from_world, self._anchor_info = 0, None, None, {}

    # -- one step ---------------------------------------------------------------------------------
    def step(self, frames: Sequence[Frame]) -> WindowPrediction:
        if not 1 <= len(frames) <= self.cache_config.frames_per_step:
            raise ReconError(
                f"streamvggt: a step takes 1..{self.cache_config.frames_per_step} frames, got {len(frames)}"
            )
        t0 = time.perf_counter()
        images, rmap = preprocess(frames, self.config.img_size, self.config.patch_size)
        if self._rmap is not None and rmap.model_hw != self._rmap.model_hw:
            raise ReconError(
                f"streamvggt: frame size changed mid-stream ({self._rmap.original_hw} -> {rmap.original_hw}); "
                "a stream must keep one image size"
            )
        self._rmap = rmap
        t1 = time.perf_counter()
        out = self.step_images(images)
        t2 = time.perf_counter()
        if self.reanchor and self._anchor_from_world is None:
            self._anchor_from_world = anchor_correction(out.pose_enc[0, 0], rmap.model_hw, self._anchor_info)
        info: dict[str, object] = dict(self._anchor_info)
        assert self.kv is not None and self.camera_kv is not None
        kv = self.kv.stats()
        info.update(
            timings={"preprocess_s": t1 - t0, "forward_s": t2 - t1, "total_s": time.perf_counter() - t0},
            dtype=self.dtype_name,
            cache_policy=self.cache_config.policy,
            cache_tokens=kv["tokens"],
            cache_bytes=kv["bytes_in_use"],
            cache_bytes_reserved=kv["bytes_reserved"],
            cache_evicted_tokens=kv["evicted_tokens"],
            cache_prune_s_total=kv["prune_seconds"],
            camera_cache_bytes=float(self.camera_kv.bytes_in_use()),
            frames_seen=self._seen,
        )
        return pack_prediction(frames, out, rmap, self._anchor_from_world if self.reanchor else None, info)

    def step_images(self, images: Tensor) -> VGGTOutput:
        """images [S,3,H,W] in [0,1], the next S frames of the stream -> raw outputs for them (batch of one),
        in the coordinates of the stream's first frame."""
        cfg = self.config
        S, _, H, W = images.shape
        first = self._seen
        tokens = self.aggregate_step(images)
        last = tokens[-1]
        assert last is not None
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            # Frame by frame: a frame's later refinement iterations attend to its earlier ones in the camera
            # cache (official behaviour), and must not see the next frame of the group.
            poses = [self.net.camera_head(last[:, j : j + 1], True, self._camera_hooks(first + j)) for j in range(S)]
            pose_list = [torch.cat([p[i] for p in poses], dim=1) for i in range(len(poses[0]))]
            depth, depth_conf = self.net.depth_head(tokens, (H, W), cfg.patch_start_idx)
            points, points_conf = self.net.point_head(tokens, (H, W), cfg.patch_start_idx)
        return VGGTOutput(pose_list[-1], pose_list, depth[..., 0], depth_conf, points, points_conf)

    def aggregate_step(self, images: Tensor) -> list[Tensor | None]:
        """The aggregator on the next S frames through the KV cache: out[k] [1,S,P,2C] for the layers the
        heads read (None elsewhere), float32."""
        S, _, H, W = images.shape
        if self.kv is None:
            self._build_caches(H, W)
        first = self._seen
        with torch.inference_mode():
            tokens = self.net.aggregate(
                images[None].to(self.device),
                causal_frames=True,
                global_kv=self._global_hooks(first),
                includes_anchor=first == 0,
            )
        self._seen += S
        return tokens

    # -- caches -----------------------------------------------------------------------------------
    def _build_caches(self, H: int, W: int) -> None:
        cfg = self.config
        tokens_per_frame = cfg.patch_start_idx + (H // cfg.patch_size) * (W // cfg.patch_size)
        self.kv = KVCache(
            self.cache_config,
            num_layers=cfg.depth,
            batch=1,
            num_heads=cfg.num_heads,
            head_dim=cfg.embed_dim // cfg.num_heads,
            tokens_per_frame=tokens_per_frame,
            special_tokens=cfg.patch_start_idx,
            device=self.device,
            dtype=self.cache_dtype,
        )
        D = 2 * cfg.embed_dim
        self.camera_kv = CameraHeadCache(
            cfg.camera_trunk_depth,
            batch=1,
            num_heads=cfg.camera_num_heads,
            head_dim=D // cfg.camera_num_heads,
            iterations=cfg.camera_iterations,
            recent_frames=self.camera_frames,
            device=self.device,
        )

    def _global_hooks(self, first_frame: int) -> list[KVHook | None]:
        kv = self.kv
        assert kv is not None
        return cache_hooks(self.config.depth, lambda layer, k, v: kv.append(layer, k, v, first_frame), kv.view)

    def _camera_hooks(self, frame: int) -> list[KVHook | None]:
        cam = self.camera_kv
        assert cam is not None
        return cache_hooks(self.config.camera_trunk_depth, lambda layer, k, v: cam.append(layer, k, v, frame), cam.view)


def cache_hooks(
    num_layers: int, append: Callable[[int, Tensor, Tensor], None], view: Callable[[int], tuple[Tensor, Tensor]]
) -> list[KVHook | None]:
    """One KVHook per layer: append this step's (k, v) to the layer's cache, then attend over everything it
    keeps, at the step's dtype (the cache may store keys at a lower precision)."""

    def hook_for(layer: int) -> KVHook:
        def hook(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            append(layer, k, v)
            k_all, v_all = view(layer)
            return k_all.to(k.dtype), v_all.to(v.dtype)

        return hook

    return [hook_for(i) for i in range(num_layers)]
