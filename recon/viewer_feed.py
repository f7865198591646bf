"""What the driver shows the viewer (ARCHITECTURE §1): one `WindowView` per registered window, built from the
core's update, with this window's run statistics (pace, memory, stage times, the model's own numbers)."""

from __future__ import annotations

import time

import numpy as np

from recon.core import CoreUpdate
from recon.fusion import VoxelMap
from recon.summary import RunState, peak_rss_mb, rss_mb
from recon.types import FrameMeta, WindowPrediction
from recon.viz.viewer import WindowView


class ViewerFeed:
    """`fused_stride`: the map's pixel stride (the viewer shows which pixels the map took)."""

    def __init__(self, fused_stride: int) -> None:
        self.fused_stride = fused_stride
        self._last: tuple[float, int, dict[str, float]] = (0.0, 0, {})  # (time, frames placed, timings) last shown

    def start(self, t0: float) -> None:
        self._last = (t0, 0, {})

    def view(
        self,
        st: RunState,
        update: CoreUpdate,
        frames_meta: list[FrameMeta],
        colors: np.ndarray,
        pred: WindowPrediction,
        infer_s: float,
        voxel_map: VoxelMap | None,
    ) -> WindowView:
        """The window `update` registered (`colors` [S,H,W,3] uint8 at model resolution; `infer_s` the model's
        seconds on it); `st` the run so far, this window counted."""
        aligned, new = update.aligned, update.new
        assert voxel_map is not None  # made by the first window
        # Per window, not since the start: a plot of running totals hides a slow stretch behind the past. Frames
        # placed, not read: the reader runs ahead into a queue, and a short source is all read long before the end.
        now, (t_last, frames_last, timings_last) = time.perf_counter(), self._last
        self._last = (now, st.frames_written, dict(st.timings_s))
        stats: dict[str, float] = {
            "fps": (st.frames_written - frames_last) / (now - t_last) if now > t_last else 0.0,
            "rss_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
            "map_points": float(len(voxel_map)),
            "infer_ms_per_frame": 1e3 * infer_s / max(len(aligned), 1),
            **{f"window_s/{k}": v - timings_last.get(k, 0.0) for k, v in st.timings_s.items()},
            # Model-reported numbers (e.g. KV-cache bytes of a streaming model) are plotted as they come.
            **{
                f"model/{k}": float(v)
                for k, v in pred.info.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }
        gt = [m.gt_cam_from_world for m in frames_meta if m.gt_cam_from_world is not None]
        return WindowView(
            window=st.windows - 1,
            frame_indices=list(aligned.frame_indices),
            timestamps_s=[m.timestamp_s for m in frames_meta],
            new=new,
            images_rgb=colors,
            depth=aligned.depth.cpu().numpy(),
            conf=aligned.conf.cpu().numpy(),
            fused_conf=None if update.fused_conf is None else update.fused_conf.cpu().numpy(),
            fused_stride=self.fused_stride,
            new_points=lambda stride: aligned.world_points(new, stride).cpu().numpy(),
            cam_from_world=aligned.cam_from_world.double().cpu().numpy(),
            K=pred.K.double().cpu().numpy(),
            world_from_window=aligned.world_from_window,
            gt_cam_from_world=np.stack(gt) if gt and len(gt) == len(frames_meta) else None,
            alignment=aligned.report.brief(),
            stats=stats,
            map_points=lambda: voxel_map.points()[:2],
        )
