"""The live Rerun viewer: what the pipeline's windows look like in Rerun, logged off the pipeline's thread.

`log_window` (pipeline thread) takes cheap copies of what one window shows and puts them on a bounded queue;
a viewer thread turns them into Rerun archetypes. When that thread is behind, whole windows are dropped
(the camera path still includes their frames) and a warning says so once: the run never waits for the viewer.
What crosses between the two threads: `recon.viz.viewer_packets`; the arrays each archetype is made of:
`recon.viz.window_arrays`; the knobs: `recon.viz.viewer_options`. Where the recording goes (a native viewer, a
web viewer, an .rrd file): `recon.viz.sinks`. rerun is imported lazily: runs without a viewer never load it."""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from recon.errors import ReconError
from recon.geometry import invert_rigid
from recon.types import Sim3
from recon.viz import blueprint as paths
from recon.viz.viewer import WindowView
from recon.viz.viewer_options import ViewerOptions
from recon.viz.viewer_packets import Rows, TransformUpdate, WindowPacket
from recon.viz.window_arrays import (
    confidence_u8,
    confident,
    depth_f16,
    entity_part,
    frustum_size,
    numeric_values,
    point_grid,
    robust_max,
    stats_path,
    strided,
)

if TYPE_CHECKING:
    import rerun as rr

logger = logging.getLogger(__name__)

TRAJECTORY_RGB = (255, 150, 0)
TRAJECTORY_GT_RGB = (40, 200, 80)
_STOP = object()  # on the queue after the last item: the viewer thread ends


# -- the viewer --------------------------------------------------------------------------------------------
class RerunViewer:
    """A `Viewer` that logs to a ready `rr.RecordingStream` (sinks already set). `cleanup` runs after the
    sinks are closed (e.g. stopping a web-viewer process)."""

    def __init__(
        self,
        recording: rr.RecordingStream,
        options: ViewerOptions | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        import rerun as rr

        self._rr = rr
        self._rec = recording
        self.options = options or ViewerOptions()
        self._cleanup = cleanup
        self._queue: queue.Queue[object] = queue.Queue()  # unbounded: `_slots` bounds the heavy items
        self._slots = threading.Semaphore(self.options.queue_windows)
        self._map_pending = threading.Event()
        self._last_map_s = -math.inf
        self._centres_world = Rows(3)
        self._gt_centres = Rows(3)
        self._has_gt = False
        self._closed = False
        self._failed = False
        self.windows_seen = 0
        self.windows_dropped = 0
        self._warned_drop = False
        # viewer-thread state
        self._series: set[str] = set()
        self._plane_distance: float | None = None
        self._time: tuple[int, float] = (0, 0.0)
        self._reported_drops = 0
        self._warned_worker = False

        recording.log(paths.WORLD, rr.ViewCoordinates.RDF, static=True)
        self._thread = threading.Thread(target=self._serve, name="recon-viewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the sinks (the file sink writes its footer) and stop what `cleanup` stops (a web viewer)."""
        cleanup, self._cleanup = self._cleanup, None
        try:
            self._rec.disconnect()
        finally:
            if cleanup is not None:
                cleanup()

    def linger(self) -> None:
        """After the run: a served recording stays up until Ctrl-C (or SIGTERM), so it can still be looked at."""
        if self._cleanup is None:
            return
        print("recon: the run has ended; the web viewer keeps serving it until Ctrl-C", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (recon.signals.Terminated): what ends serving
            pass
        finally:
            self.stop()

    # -- pipeline thread ----------------------------------------------------------------------------------
    def log_window(self, view: WindowView) -> None:
        if self._closed or self._failed:
            return
        try:
            self._accept(view)
        except Exception:  # a viewer bug must not end a run
            self._failed = True
            logger.exception("viewer: cannot log window %d; viewing is off for the rest of the run", view.window)

    def update_window_transforms(self, moved: dict[int, Sim3]) -> None:
        for window, world_from_window in moved.items():
            self.update_window_transform(window, world_from_window)

    def update_window_transform(self, window: int, world_from_window: Sim3) -> None:
        """Move window `window`'s points to a corrected pose: re-logs only its Transform3D (tiny, never dropped)."""
        if not self._closed:
            self._queue.put(TransformUpdate(window, world_from_window))

    def wait_until_idle(self) -> None:
        """Block until the viewer thread has logged everything queued so far (tests, and callers that want
        a window fully on screen before going on)."""
        if not self._closed:
            self._queue.join()

    def close(self) -> None:
        """Log what is queued, then flush and close the sinks (the .rrd is complete afterwards); with
        `options.linger` and a server to keep (`cleanup`), flush only: `linger()` or `stop()` ends it."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        try:
            self._rec.flush(timeout_sec=self.options.flush_timeout_s)
        finally:
            if not (self.options.linger and self._cleanup is not None):
                self.stop()
        if self.windows_dropped:
            logger.info(
                "viewer: %d of %d windows were not shown (the viewer was behind)",
                self.windows_dropped,
                self.windows_seen,
            )

    def _accept(self, view: WindowView) -> None:
        self.windows_seen += 1
        new = range(*view.new.indices(len(view.frame_indices)))
        world_from_cam = invert_rigid(np.asarray(view.cam_from_world[view.new], dtype=np.float64))
        # The camera path is kept for every window, dropped or not, so the strip has no gaps.
        self._centres_world.append(world_from_cam[:, :3, 3])
        self._gt_centres.append(self._gt_centres_of(view))
        if not self._slots.acquire(blocking=False):
            self.windows_dropped += 1
            if not self._warned_drop:
                self._warned_drop = True
                logger.warning(
                    "viewer: the viewer is behind, dropping windows (the run is not slowed; "
                    "the viewer shows fewer windows)"
                )
            return
        try:
            packet = self._packet(view, new, world_from_cam)
        except BaseException:
            self._slots.release()
            raise
        self._queue.put(packet)

    def _gt_centres_of(self, view: WindowView) -> np.ndarray:
        n = len(range(*view.new.indices(len(view.frame_indices))))
        if view.gt_cam_from_world is None:
            return np.full((n, 3), np.nan)
        self._has_gt = True
        return invert_rigid(np.asarray(view.gt_cam_from_world[view.new], dtype=np.float64))[:, :3, 3]

    def _packet(self, view: WindowView, new: range, world_from_cam: np.ndarray) -> WindowPacket:
        last = new[-1] if len(new) else len(view.frame_indices) - 1
        stride, points_conf = point_grid(view, len(new), self.options.window_points_max)
        sel = (view.new, slice(None, None, stride), slice(None, None, stride))
        map_xyz, map_rgb = self._map_if_due(view)
        return WindowPacket(
            window=view.window,
            frame_indices=[int(view.frame_indices[i]) for i in new],
            timestamps_s=[float(view.timestamps_s[i]) for i in new],
            window_frame=int(view.frame_indices[last]) if last >= 0 else 0,
            window_time_s=float(view.timestamps_s[last]) if last >= 0 else 0.0,
            images_rgb=np.array(view.images_rgb[view.new]),
            depth=np.array(view.depth[view.new], dtype=np.float32),
            conf=np.array(view.conf[view.new], dtype=np.float32),
            world_from_cam=world_from_cam,
            K=np.array(view.K[view.new], dtype=np.float64),
            points_world=np.array(view.new_points(stride), dtype=np.float32).reshape(-1, 3),
            points_conf=points_conf,
            points_fused=view.fused_conf is not None,
            points_rgb=np.array(view.images_rgb[sel], dtype=np.uint8).reshape(-1, 3),
            world_from_window=view.world_from_window,
            centres_world=self._centres_world.snapshot(),
            gt_centres_gt_world=self._gt_centres.snapshot() if self._has_gt else None,
            alignment=dict(view.alignment),
            stats=dict(view.stats),
            map_xyz_world=map_xyz,
            map_rgb=map_rgb,
            frame_range=(int(view.frame_indices[0]), int(view.frame_indices[-1])) if view.frame_indices else (0, 0),
            dropped_windows=self.windows_dropped,
        )

    def _map_if_due(self, view: WindowView) -> tuple[np.ndarray | None, np.ndarray | None]:
        # `map_points()` copies the whole map on this thread: only when it will be logged, never while the
        # viewer thread still holds the previous copy, and at most every `map_interval_s`.
        now = time.monotonic()
        if self._map_pending.is_set() or now - self._last_map_s < self.options.map_interval_s:
            return None, None
        xyz, rgb = view.map_points()
        self._last_map_s = now
        self._map_pending.set()
        return xyz, rgb

    # -- viewer thread --------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                self._handle(item)
            except Exception:
                if not self._warned_worker:
                    self._warned_worker = True
                    logger.exception("viewer: logging failed (the run goes on; further failures are not reported)")
            finally:
                if isinstance(item, WindowPacket):
                    if item.map_xyz_world is not None:
                        self._map_pending.clear()
                    self._slots.release()
                self._queue.task_done()

    def _handle(self, item: object) -> None:
        if isinstance(item, WindowPacket):
            self._log_packet(item)
        elif isinstance(item, TransformUpdate):
            self._set_time(*self._time)
            self._rec.log(paths.window_path(item.window), self._sim3_transform(item.world_from_window))

    def _set_time(self, frame: int, time_s: float) -> None:
        self._time = (frame, time_s)
        self._rec.set_time("frame", sequence=frame)
        self._rec.set_time("time", duration=time_s)

    def _log_packet(self, p: WindowPacket) -> None:
        if self._plane_distance is None:
            self._plane_distance = frustum_size(p.depth)
            # Rerun frames a new view on the bounds of everything: place the eye on the first camera instead.
            depth = p.depth[np.isfinite(p.depth) & (p.depth > 0)]
            if depth.size:
                eye = paths.Eye.behind(p.world_from_cam[-1], float(np.median(depth)))
                self._rec.send_blueprint(paths.default_blueprint(eye), make_active=True, make_default=True)
        conf_top = robust_max(p.conf)
        for j, (frame, time_s) in enumerate(zip(p.frame_indices, p.timestamps_s, strict=True)):
            self._set_time(frame, time_s)
            self._log_frame(p, j, conf_top)
        self._set_time(p.window_frame, p.window_time_s)
        self._log_trajectories(p)
        self._log_window_points(p)
        if p.map_xyz_world is not None and p.map_rgb is not None:
            self._log_map(p.map_xyz_world, p.map_rgb)
        self._log_window_text(p)
        self._log_series(p)

    def _log_frame(self, p: WindowPacket, j: int, conf_top: float) -> None:
        rr, rec = self._rr, self._rec
        world_from_cam = p.world_from_cam[j]
        H, W = p.depth.shape[1:]
        rec.log(paths.CAMERA, rr.Transform3D(translation=world_from_cam[:3, 3], mat3x3=world_from_cam[:3, :3]))
        rec.log(
            paths.IMAGE_PLANE,
            rr.Pinhole(
                image_from_camera=p.K[j],
                width=W,
                height=H,
                camera_xyz=rr.ViewCoordinates.RDF,
                image_plane_distance=self._plane_distance,
            ),
        )
        rec.log(paths.RGB, rr.Image(p.images_rgb[j]).compress(jpeg_quality=self.options.jpeg_quality))
        if self.options.depth_every and p.frame_indices[j] % self.options.depth_every == 0:
            rec.log(paths.DEPTH, rr.DepthImage(depth_f16(p.depth[j]), meter=1.0))
            rec.log(paths.CONFIDENCE, rr.Image(confidence_u8(p.conf[j], conf_top)))

    def _log_trajectories(self, p: WindowPacket) -> None:
        rr, rec = self._rr, self._rec
        centres = p.centres_world
        radius = rr.components.Radius.ui_points(1.5)
        if len(centres) >= 2:
            rec.log(
                paths.TRAJECTORY,
                rr.LineStrips3D(
                    [strided(centres, self.options.trajectory_points_max)], colors=[TRAJECTORY_RGB], radii=radius
                ),
            )
        if p.gt_centres_gt_world is None:
            return
        known = np.all(np.isfinite(p.gt_centres_gt_world), axis=1)
        if known.sum() < 3:
            return
        # GT lives in the source's world and units: move it onto the estimate with one Sim(3) over all
        # frames so far (re-fitted every window, so the whole strip is re-logged).
        from recon.pose_fit import umeyama_sim3

        try:
            est_from_gt = umeyama_sim3(p.gt_centres_gt_world[known], centres[known])
        except (ReconError, ValueError, np.linalg.LinAlgError):  # degenerate so far (e.g. no motion yet)
            return
        gt_in_est = est_from_gt.apply(p.gt_centres_gt_world[known])
        rec.log(
            paths.TRAJECTORY_GT,
            rr.LineStrips3D(
                [strided(gt_in_est, self.options.trajectory_points_max)], colors=[TRAJECTORY_GT_RGB], radii=radius
            ),
        )

    def _log_window_points(self, p: WindowPacket) -> None:
        # Logged once, in the window's own frame: a later correction re-logs only the transform.
        rr = self._rr
        keep = confident(p.points_world, p.points_conf, median=not p.points_fused)
        stride = max(1, math.ceil(len(keep) / self.options.window_points_max))
        keep = keep[::stride]
        points_window = p.world_from_window.inverse().apply(p.points_world[keep].astype(np.float64))
        self._rec.log(
            paths.window_path(p.window),
            self._sim3_transform(p.world_from_window),
            rr.Points3D(
                points_window.astype(np.float32), colors=p.points_rgb[keep], radii=rr.components.Radius.ui_points(1.0)
            ),
        )

    def _sim3_transform(self, world_from_window: Sim3) -> rr.Transform3D:
        return self._rr.Transform3D(
            translation=world_from_window.t, mat3x3=world_from_window.R, scale=world_from_window.s
        )

    def _log_map(self, xyz_world: np.ndarray, rgb: np.ndarray) -> None:
        stride = max(1, math.ceil(len(xyz_world) / self.options.map_points_max))
        self._rec.log(
            paths.MAP,
            self._rr.Points3D(
                np.ascontiguousarray(xyz_world[::stride], dtype=np.float32),
                colors=np.ascontiguousarray(rgb[::stride], dtype=np.uint8),
                radii=self._rr.components.Radius.ui_points(1.5),
            ),
        )

    def _log_window_text(self, p: WindowPacket) -> None:
        a = p.alignment
        parts = [f"window {p.window}: frames {p.frame_range[0]}-{p.frame_range[1]} ({len(p.frame_indices)} new)"]
        if "path" in a:
            parts.append(str(a["path"]))
        for key, fmt in (("scale", ".4g"), ("seam_rotation_deg", ".2f"), ("seam_offset_rel", ".3f")):
            if isinstance(a.get(key), (int, float)) and not isinstance(a.get(key), bool):
                parts.append(f"{key} {a[key]:{fmt}}")
        level = "INFO"
        if p.dropped_windows > self._reported_drops:
            parts.append(f"viewer behind: {p.dropped_windows} windows not shown so far")
            self._reported_drops = p.dropped_windows
            level = "WARN"
        self._rec.log(paths.WINDOW_LOG, self._rr.TextLog(", ".join(parts), level=level))

    def _log_series(self, p: WindowPacket) -> None:
        for key, value in numeric_values(p.alignment):
            self._scalar(f"{paths.ALIGNMENT_PLOTS}/{entity_part(key)}", value)
        for key, value in numeric_values(p.stats):
            self._scalar(stats_path(key), value)
        self._scalar(f"{paths.PLOTS}/viewer/dropped_windows", float(p.dropped_windows))

    def _scalar(self, path: str, value: float) -> None:
        if path not in self._series:
            self._series.add(path)
            self._rec.log(path, self._rr.SeriesLines(names=[path.rsplit("/", 1)[-1]]), static=True)
        self._rec.log(path, self._rr.Scalars(value))
