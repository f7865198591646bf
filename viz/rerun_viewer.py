"""The live Rerun viewer: what the pipeline's windows look like in Rerun, logged off the pipeline's thread.

`log_window` (pipeline thread) takes cheap copies of what one window shows and puts them on a bounded queue;
a viewer thread turns them into Rerun archetypes. When that thread is behind, whole windows are dropped
(the camera path still includes their frames) and a warning says so once: the run never waits for the viewer.
Where the recording goes (a native viewer, a web viewer, an .rrd file): `recon.viz.sinks`. rerun is imported
lazily: runs without a viewer never load it."""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.errors import ReconError
from recon.geometry import grid_stride, invert_rigid
from recon.types import Sim3
from recon.viz import blueprint as paths
from recon.viz.viewer import WindowView

if TYPE_CHECKING:
    import rerun as rr

logger = logging.getLogger(__name__)

TRAJECTORY_RGB = (255, 150, 0)
TRAJECTORY_GT_RGB = (40, 200, 80)
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ViewerOptions:
    queue_windows: int = 4  # windows waiting for the viewer thread; one more is dropped
    jpeg_quality: int = 80
    window_points_max: int = 20_000  # per world/windows/<k>
    map_points_max: int = 200_000  # world/map
    map_interval_s: float = 2.0  # the global map (a copy of up to millions of points) at most this often
    trajectory_points_max: int = 20_000  # vertices per trajectory strip (longer paths are strided)
    flush_timeout_s: float = 30.0
    depth_every: int = 1  # every N-th frame's depth and confidence images (0: none): ~0.5 MB a frame of a recording
    linger: bool = False  # close() keeps a served recording up: `linger()` serves until Ctrl-C, then stops


# -- what crosses from the pipeline thread to the viewer thread ---------------------------------------------
@dataclass(frozen=True)
class _WindowPacket:
    window: int
    frame_indices: list[int]  # [N] the window's new frames
    timestamps_s: list[float]  # [N]
    window_frame: int  # timeline position of per-window data: the window's last new frame
    window_time_s: float
    images_rgb: np.ndarray  # [N,H,W,3] uint8
    depth: np.ndarray  # [N,H,W] float32
    conf: np.ndarray  # [N,H,W] float32
    world_from_cam: np.ndarray  # [N,4,4]
    K: np.ndarray  # [N,3,3]
    points_world: np.ndarray  # [P,3] float32, strided pixels of the new frames
    points_conf: np.ndarray  # [P] what the map fused (0: left out), or with points_fused False the model's confidence
    points_fused: bool
    points_rgb: np.ndarray  # [P,3] uint8
    world_from_window: Sim3
    centres_world: np.ndarray  # [F,3] every camera centre so far (F >= frames logged)
    gt_centres_gt_world: np.ndarray | None  # [F,3] ground-truth centres in the source's world, NaN where unknown
    alignment: dict[str, Any]
    stats: dict[str, float]
    map_xyz_world: np.ndarray | None  # [M,3] float32, only on windows that log the map
    map_rgb: np.ndarray | None
    frame_range: tuple[int, int]  # first and last source frame of the whole window (overlap included)
    dropped_windows: int  # windows dropped before this one


@dataclass(frozen=True)
class _TransformUpdate:
    window: int
    world_from_window: Sim3


_STOP = object()


class _Rows:
    """Append-only [n, width] float64 rows. `snapshot()` returns a view the appender never writes into again
    (appends go past it or into a new buffer), so the viewer thread can read it without a lock or a copy."""

    def __init__(self, width: int) -> None:
        self._buf = np.empty((256, width))
        self._n = 0

    def append(self, rows: np.ndarray) -> None:
        k = len(rows)
        if self._n + k > len(self._buf):
            grown = np.empty((max(2 * len(self._buf), self._n + k), self._buf.shape[1]))
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : self._n + k] = rows
        self._n += k

    def snapshot(self) -> np.ndarray:
        return self._buf[: self._n]

    def __len__(self) -> int:
        return self._n


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
        self._centres_world = _Rows(3)
        self._gt_centres = _Rows(3)
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
            self._queue.put(_TransformUpdate(window, world_from_window))

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

    def _packet(self, view: WindowView, new: range, world_from_cam: np.ndarray) -> _WindowPacket:
        o = self.options
        last = new[-1] if len(new) else len(view.frame_indices) - 1
        stride = grid_stride(len(new) * int(view.depth.shape[1]) * int(view.depth.shape[2]), 4 * o.window_points_max)
        if view.fused_conf is not None:  # the map's own pixels: what it fused, so the view shows no streak it left out
            k = max(1, math.ceil(stride / view.fused_stride))
            stride = k * view.fused_stride
            points_conf = np.array(view.fused_conf[:, ::k, ::k], dtype=np.float32).reshape(-1)
        sel = (view.new, slice(None, None, stride), slice(None, None, stride))
        if view.fused_conf is None:
            points_conf = np.array(view.conf[sel], dtype=np.float32).reshape(-1)
        map_xyz, map_rgb = self._map_if_due(view)
        return _WindowPacket(
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
                if isinstance(item, _WindowPacket):
                    if item.map_xyz_world is not None:
                        self._map_pending.clear()
                    self._slots.release()
                self._queue.task_done()

    def _handle(self, item: object) -> None:
        if isinstance(item, _WindowPacket):
            self._log_packet(item)
        elif isinstance(item, _TransformUpdate):
            self._set_time(*self._time)
            self._rec.log(paths.window_path(item.window), self._sim3_transform(item.world_from_window))

    def _set_time(self, frame: int, time_s: float) -> None:
        self._time = (frame, time_s)
        self._rec.set_time("frame", sequence=frame)
        self._rec.set_time("time", duration=time_s)

    def _log_packet(self, p: _WindowPacket) -> None:
        if self._plane_distance is None:
            self._plane_distance = _frustum_size(p.depth)
            # Rerun frames a new view on the bounds of everything: place the eye on the first camera instead.
            depth = p.depth[np.isfinite(p.depth) & (p.depth > 0)]
            if depth.size:
                eye = paths.Eye.behind(p.world_from_cam[-1], float(np.median(depth)))
                self._rec.send_blueprint(paths.default_blueprint(eye), make_active=True, make_default=True)
        conf_top = _robust_max(p.conf)
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

    def _log_frame(self, p: _WindowPacket, j: int, conf_top: float) -> None:
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
            # float16 halves the recording's largest stream; ~0.05 % relative precision is plenty to look at.
            depth = np.where(np.isfinite(p.depth[j]), np.clip(p.depth[j], 0.0, _F16_MAX), 0.0).astype(np.float16)
            rec.log(paths.DEPTH, rr.DepthImage(depth, meter=1.0))
            rec.log(paths.CONFIDENCE, rr.Image(_confidence_u8(p.conf[j], conf_top)))

    def _log_trajectories(self, p: _WindowPacket) -> None:
        rr, rec = self._rr, self._rec
        centres = p.centres_world
        radius = rr.components.Radius.ui_points(1.5)
        if len(centres) >= 2:
            rec.log(
                paths.TRAJECTORY,
                rr.LineStrips3D(
                    [_strided(centres, self.options.trajectory_points_max)], colors=[TRAJECTORY_RGB], radii=radius
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
                [_strided(gt_in_est, self.options.trajectory_points_max)], colors=[TRAJECTORY_GT_RGB], radii=radius
            ),
        )

    def _log_window_points(self, p: _WindowPacket) -> None:
        # Logged once, in the window's own frame: a later correction re-logs only the transform.
        rr = self._rr
        keep = _confident(p.points_world, p.points_conf, median=not p.points_fused)
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

    def _log_window_text(self, p: _WindowPacket) -> None:
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

    def _log_series(self, p: _WindowPacket) -> None:
        for key, value in _numeric(p.alignment):
            self._scalar(f"{paths.ALIGNMENT_PLOTS}/{_entity_part(key)}", value)
        for key, value in _numeric(p.stats):
            self._scalar(stats_path(key), value)
        self._scalar(f"{paths.PLOTS}/viewer/dropped_windows", float(p.dropped_windows))

    def _scalar(self, path: str, value: float) -> None:
        if path not in self._series:
            self._series.add(path)
            self._rec.log(path, self._rr.SeriesLines(names=[path.rsplit("/", 1)[-1]]), static=True)
        self._rec.log(path, self._rr.Scalars(value))


# -- small numeric helpers ------------------------------------------------------------------------------
def stats_path(key: str) -> str:
    """`fps` -> plots/run/fps; `window_s/infer` -> plots/window_s/infer (grouped keys keep their group)."""
    key = _entity_part(key)
    return f"{paths.PLOTS}/{key}" if "/" in key else f"{paths.RUN_PLOTS}/{key}"


def _entity_part(key: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-./" else "_" for c in str(key)).strip("/")
    return cleaned or "_"


def _numeric(values: dict[str, Any]) -> list[tuple[str, float]]:
    return [
        (k, float(v))
        for k, v in values.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]


def _confident(points: np.ndarray, conf: np.ndarray, median: bool = True) -> np.ndarray:
    """Indices of valid points (confidence > 0), with `median` only those at or above the valid ones' median."""
    valid = np.all(np.isfinite(points), axis=1) & np.isfinite(conf) & (conf > 0)
    if not valid.any() or not median:
        return np.flatnonzero(valid)
    return np.flatnonzero(valid & (conf >= np.median(conf[valid])))


def _strided(rows: np.ndarray, max_rows: int) -> np.ndarray:
    if len(rows) <= max_rows:
        return rows
    stride = math.ceil(len(rows) / max_rows)
    return np.concatenate([rows[::stride], rows[-1:]])  # keep the current position


def _robust_max(values: np.ndarray) -> float:
    """The 99th percentile of the finite values (1 when none is > 0): one outlier cannot darken the rest."""
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    return top if top > 0 else 1.0


def _confidence_u8(conf: np.ndarray, top: float) -> np.ndarray:
    # One scale per window (`top`), so the frames of a window compare.
    scaled = np.nan_to_num(conf, nan=0.0, posinf=top, neginf=0.0) / top
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _frustum_size(depth: np.ndarray) -> float:
    valid = depth[np.isfinite(depth) & (depth > 0)]
    return 0.1 * float(np.median(valid)) if valid.size else 0.1


# -- sinks ----------------------------------------------------------------------------------------------------
