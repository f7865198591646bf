"""The streaming pipeline (ARCHITECTURE §1, §3), the driver: source -> windows -> model -> reconstruction core -> outputs.

Two threads joined by a bounded queue: the producer reads frames, cuts windows and runs the model (on as
many windows at once as its registration allows, results in stream order: recon/inflight.py); the
consumer hands each prediction to the core (recon/core.py: registration, pose graph, loop closure, map)
and writes what it returns. Nothing holds more than a few windows of frames,
so memory does not grow with the stream."""

from __future__ import annotations

import logging
import queue
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from recon.align import AlignedWindow, WindowLayers
from recon.core import CoreConfig, CoreUpdate, FramePose, Reconstruction, carried_frames
from recon.datasets.base import FrameSource, source_notes
from recon.depth_samples import DepthSample, write_depth_sample
from recon.errors import NonFiniteError, ReconError
from recon.fusion import VoxelMap
from recon.geometry import invert_rigid
from recon.inflight import WindowsInFlight
from recon.kernels.fusion_voxels import KEY_OFFSET
from recon.models.base import GeometryModel, StreamingModel
from recon.outputs import OutputConfig, TrajectoryWriter, atomic_write_json, prepare_out_dir, remove_run_files
from recon.registration import OverlappingWindows, Registration
from recon.schedule import KeyframeSelector, ScheduleConfig, WindowScheduler
from recon.types import FLAG_LOW_PARALLAX, FLAG_TOO_FEW_TRACKS, Frame, FrameMeta, WindowPrediction
from recon.viz.viewer import NullViewer, Viewer, WindowView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)


ALIGNMENT_LOG_WINDOWS = 200


@dataclass
class RunState:
    """What the run has done so far; becomes summary.json."""

    frames_read: int = 0
    frames_used: int = 0
    frames_skipped: int = 0
    frames_written: int = 0
    windows: int = 0
    map_ply_points: int = 0
    status: str = "running"
    timings_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("read", "infer", "align", "fuse", "write"), 0.0)
    )
    # The most recent windows' alignment (a bounded log: summary.json is rewritten every window), and the
    # count of every path taken over the whole run.
    alignment: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ALIGNMENT_LOG_WINDOWS))
    alignment_paths: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    skipped_windows: list[dict[str, Any]] = field(default_factory=list)  # predictions with NaN/inf, not fused
    frames_unregistered: int = 0  # trajectory frames no window could place (placeholder poses)
    loops: list[dict[str, Any]] = field(default_factory=list)  # loop closures (window, matched window, inliers)
    trajectory_rewrites: int = 0
    warnings: list[str] = field(default_factory=list)  # what the run could not do (e.g. no map), said at its end
    model_K: np.ndarray | None = None  # [3,3] the first window's first frame, source pixels: what the model used


def nothing_reconstructed(st: RunState, stride: int, images_skipped: int, points_off_grid: int = 0) -> str | None:
    """Why a finished run reconstructed nothing (not one frame placed, or not one 3D point), in a line that
    says what to change; None when it reconstructed something. `stride` and `images_skipped` (unreadable or
    odd-sized files) explain where the frames went; points that fell off the voxel grid were found all the
    same (a --voxel too small for a map is a warning, not an empty run)."""
    if st.frames_written - st.frames_unregistered > 0 and st.map_ply_points + points_off_grid > 0:
        return None
    read = f"{st.frames_read} frame{'s' if st.frames_read != 1 else ''} read"
    if st.frames_read == 0:
        return "the source gave no frames; nothing to reconstruct"
    if st.frames_used < 2 and st.frames_skipped:
        return (
            f"no motion: the camera did not move in the {read} (all after the first were skipped as without motion); "
            "nothing to reconstruct"
        )
    if st.frames_used < 2:
        why = [f"--stride {stride} keeps one frame in {stride}"] if stride > 1 else []
        why += [f"{images_skipped} unreadable or odd-sized images were skipped"] if images_skipped else []
        return (
            f"too few frames: {read}{' (' + '; '.join(why) + ')' if why else ''}; a reconstruction needs at least 2 frames "
            "of a moving camera"
        )
    used = f"the {st.frames_used} frames used"
    if st.flags.get(FLAG_TOO_FEW_TRACKS):
        return (
            f"no texture: the model found too few points to track in {used}, so none could be placed (blank, dark or "
            "blurred images, or images too small)"
        )
    if st.flags.get(FLAG_LOW_PARALLAX):
        return (
            f"no motion: the camera barely moved or only turned across {used}: too little parallax to find depth, "
            "so no 3D point; move the camera sideways or forward"
        )
    if st.skipped_windows:
        return f"nothing reconstructed from {used}: the model's predictions were not finite (NaN/inf)"
    return f"nothing reconstructed from {used}: no frame could be placed and no 3D point was found"


def unplaced_frames_notes(st: RunState) -> list[str]:
    """The part of a run that reconstructed something but not everything, one line (or none): frames no
    window could place (the core gives each its nearest placed neighbour's pose, not a measured one)."""
    if not st.frames_unregistered:
        return []
    return [
        f"{st.frames_unregistered} of the {st.frames_written} frames in the trajectory could not be placed (too little texture "
        "or motion there): each holds its nearest placed neighbour's pose (summary.json: frames_unregistered)"
    ]


@dataclass
class _Window:
    frames_meta: list[FrameMeta]
    colors: np.ndarray  # [S,H,W,3] uint8 at model resolution
    pred: WindowPrediction
    infer_s: float
    layers: WindowLayers | None  # Reconstruction.prepare(pred), worked out in the model thread


_DONE = object()
_STOPPED = object()  # request_stop: the run ends after the window being written
_NEW_ANCHOR = object()  # the model restarted mid-run: its next prediction has a new anchor


class Pipeline:
    """Feeds the model's predictions to the reconstruction core and writes what it returns. How windows are
    cut and registered is the model's `registration` strategy (its registry entry declares it)."""

    def __init__(
        self,
        source: FrameSource,
        model: GeometryModel | StreamingModel,
        out_dir: Path,
        config: PipelineConfig = PipelineConfig(),
        on_window: Callable[[RunState, VoxelMap | None], None] | None = None,
        viewer: Viewer | None = None,
        input_spec: dict[str, Any] | None = None,
        registration: Registration | None = None,
        run_config: Any = None,
    ) -> None:
        """`input_spec`: how the source was opened (recorded in summary.json so `recon eval` can reopen it
        for ground truth). `registration`: recon.models.base.registration_for(name); default overlapping windows.
        `run_config`: the command's recon.config.RunConfig, written to OUT/config.yaml so the run can be repeated."""
        self.source, self.model, self.config = source, model, config
        self.registration: Registration = registration or OverlappingWindows()
        self.overlap = self.registration.overlap(config.schedule.overlap)
        self.core = Reconstruction(self.overlap, config.core)
        self.out_dir = prepare_out_dir(Path(out_dir))
        self.on_window = on_window
        self.viewer: Viewer = viewer if viewer is not None else NullViewer()
        self.input_spec, self.run_config = input_spec, run_config
        self.state = RunState()
        self._stop = threading.Event()
        self._stop_requested = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=config.schedule.queue_windows)
        self._error: BaseException | None = None
        self._t0 = 0.0
        self._gt_writer: TrajectoryWriter | None = None
        self._last_pred: WindowPrediction | None = None
        self._last_view: tuple[float, int, dict[str, float]] = (
            0.0,
            0,
            {},
        )  # (time, frames placed, timings) at the last window shown

    # -- the run, top to bottom ------------------------------------------------------------------
    def run(self) -> RunState:
        self._t0 = time.perf_counter()
        self._last_view = (self._t0, 0, {})
        producer = threading.Thread(target=self._produce, name="recon-model", daemon=True)
        remove_run_files(self.out_dir)  # the folder holds this run's files only: no earlier map, metrics or depth
        if self.run_config is not None:
            from recon.config import CONFIG_FILE, write_config

            write_config(self.out_dir / CONFIG_FILE, self.run_config)
        writer = TrajectoryWriter(self.out_dir, frames_file=True)
        # The source's ground truth for the same frames, so any tool (ours, evo) can compare the two files.
        self._gt_writer = TrajectoryWriter(self.out_dir, "ground_truth") if self.source.has_ground_truth else None
        self.registration.start(self.model)
        try:
            self._write_summary()
            producer.start()
            while (item := self._next_item()) not in (_DONE, _STOPPED):
                if item is _NEW_ANCHOR:
                    self.core.restart()
                    continue
                assert isinstance(item, _Window)
                self._consume(item, writer)
            if self._error is not None:
                raise self._error
            self.state.status = "finished" if item is _DONE else "interrupted"
        except KeyboardInterrupt:
            self.state.status = "interrupted"
            raise
        except BaseException:
            self.state.status = "failed"
            raise
        finally:
            self._stop.set()
            self._drain()
            # Let the model finish its window before the interpreter exits: a thread killed inside native code
            # (torch, OpenCV) aborts the process (SIGABRT) and the exit code would lie.
            while producer.is_alive():
                producer.join(timeout=0.1)
                self._drain()
            self._flush_tail(writer)
            writer.close()
            if self._gt_writer is not None:
                self._gt_writer.close()
            try:
                self._write_map(final=self.state.status == "finished")
                self.state.warnings += _map_warnings(self.core.map, self.out_dir / "map.ply")
            except ReconError as e:  # e.g. the disk filled up: the summary must still say how the run ended
                if self.state.status != "finished":
                    log.warning("%s", e)  # the error that stopped the run is the one to report
                else:
                    self.state.status = "failed"
                    raise
            finally:
                self._write_summary()
                self.viewer.close()
        off_grid = self.core.map.points_out_of_range if self.core.map is not None else 0
        if why := nothing_reconstructed(
            self.state, getattr(self.source, "stride", 1), len(getattr(self.source, "skipped", [])), off_grid
        ):
            self.state.status = "failed"  # empty files must not pass for a result
            self._write_summary()
            raise ReconError(why)
        return self.state

    def request_stop(self) -> None:
        """End the run after the window being written, as a finished run ends (its last poses flushed, the
        map and summary written), with status "interrupted". Safe from a signal handler or another thread."""
        self._stop_requested.set()

    def _next_item(self) -> object:
        """The next item the producer queued, or _STOPPED once a stop is requested."""
        while not self._stop_requested.is_set():
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return _STOPPED

    # -- producer thread: read, cut windows, infer ---------------------------------------------------
    def _produce(self) -> None:
        windows: WindowsInFlight | None = None
        try:
            cfg = self.config.schedule
            scheduler = WindowScheduler(cfg.window, self.overlap, min_size=1 if self.overlap == 0 else 2)
            windows = WindowsInFlight(
                scheduler, self._timed_infer, self._settle, self.registration.in_flight(self.model), "recon-infer"
            )
            keyframes = KeyframeSelector(cfg.keyframes_detail) if cfg.keyframes else None
            t_read = time.perf_counter()
            for frame in self.source:
                self.state.timings_s["read"] += time.perf_counter() - t_read
                if self._stop.is_set():
                    return
                self.state.frames_read += 1
                if keyframes is not None and not keyframes.accept(frame):
                    self.state.frames_skipped += 1
                else:
                    self.state.frames_used += 1
                    windows.push(frame)
                t_read = time.perf_counter()
            if not self._stop.is_set():
                windows.finish()
        except BaseException as e:  # handed to the consumer, which re-raises it in the main thread
            self._error = e
        finally:
            if windows is not None:
                windows.close()
            self._put(_DONE)

    def _timed_infer(self, frames: list[Frame]) -> tuple[WindowPrediction | NonFiniteError, WindowLayers | None, float]:
        """In a model thread: the prediction (or why it is unusable), what the core prepares from it alone,
        and the seconds both took."""
        t = time.perf_counter()
        try:
            pred = self._infer(frames)
        except NonFiniteError as e:
            return e, None, time.perf_counter() - t
        return pred, self.core.prepare(pred), time.perf_counter() - t

    def _settle(
        self, frames: list[Frame], result: tuple[WindowPrediction | NonFiniteError, WindowLayers | None, float]
    ) -> str | int | None:
        """A window's prediction, in stream order: queued for the core, or skipped when unusable. -> how the
        next window is cut: as planned (None), after the last usable window ("reject"), or starting with
        the frames this one could not place (their count)."""
        pred, layers, infer_s = result
        if isinstance(pred, NonFiniteError):
            self._skip(frames, str(pred))
            return "reject"
        self.state.timings_s["infer"] += (
            infer_s  # with its depth layers; summed over windows, also those in flight together
        )
        H, W = pred.hw
        colors = np.stack(
            [
                f.image_rgb if f.hw == (H, W) else cv2.resize(f.image_rgb, (W, H), interpolation=cv2.INTER_AREA)
                for f in frames
            ]
        )
        meta = [f.meta for f in frames]
        self._put(_Window(meta, colors, pred, infer_s, layers))
        n = carried_frames(pred, self.overlap)
        return (
            n if n > self.overlap else None
        )  # the stream broke inside the window: the next one starts after the break

    def _infer(self, frames: list[Frame]) -> WindowPrediction:
        try:
            return self.registration.predict(self.model, frames)
        except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if not _is_out_of_memory(e):
                raise
            what = (
                "the KV cache budget (--cache-budget) or " if self.registration.overlap(1) == 0 else ""
            )  # causal steps: a KV cache
            raise ReconError(
                f"out of memory on frames {frames[0].index}..{frames[-1].index} ({len(frames)} frames of {frames[0].hw[1]}x{frames[0].hw[0]}): "
                f"lower {what}--window (now {self.config.schedule.window}), --dtype bf16 for learned models, or the input resolution"
            ) from e

    def _skip(self, frames: list[Frame], reason: str) -> None:
        """A prediction with NaN/inf is never fused: report it, drop its frames, keep the run going."""
        first, last = frames[0].index, frames[-1].index
        log.warning("frames %d..%d skipped: the model's prediction is not finite (%s)", first, last, reason)
        self.state.skipped_windows.append({"frames": [first, last], "reason": reason})
        if self.registration.restart(self.model):
            self._put(_NEW_ANCHOR)

    def _put(self, item: object) -> None:
        while True:  # a bounded put that still notices a stop request
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set() and item is not _DONE:
                    return

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    # -- consumer: the core registers, the driver writes ----------------------------------------------
    def _consume(self, item: _Window, writer: TrajectoryWriter) -> None:
        st = self.state
        t, map_s = time.perf_counter(), self.core.timings_s["map"]
        update = self.core.add(item.pred, item.frames_meta, item.colors, item.layers)
        fuse_s = self.core.timings_s["map"] - map_s
        st.timings_s["align"] += time.perf_counter() - t - fuse_s  # joins, pose graph, place recognition
        st.timings_s["fuse"] += fuse_s
        self._last_pred = item.pred
        if st.model_K is None:
            st.model_K = item.pred.resize.K_to_original(item.pred.K[0].double().cpu().numpy())

        t = time.perf_counter()
        if update.trajectory is not None:  # a loop closure moved earlier poses: rewrite, then append
            writer.rewrite(
                [p.timestamp_s for p in update.trajectory],
                np.stack([p.world_from_cam for p in update.trajectory]),
                [p.index for p in update.trajectory],
            )
            st.trajectory_rewrites += 1
            self.viewer.update_window_transforms(update.moved)
        if update.loop is not None:
            st.loops.append(update.loop)
        self._write_final(update.final, writer, item.pred, update.aligned)
        st.windows += 1
        for flag in item.pred.flags:
            st.flags[flag] = st.flags.get(flag, 0) + 1
        report = update.aligned.report
        st.alignment.append({"frames": [item.frames_meta[0].index, item.frames_meta[-1].index], **report.brief()})
        path = report.path
        st.alignment_paths[path] = st.alignment_paths.get(path, 0) + 1
        if st.windows % self.config.outputs.map_every == 0:
            self._write_map()
        self._write_summary()
        st.timings_s["write"] += time.perf_counter() - t
        self.viewer.log_window(self._window_view(item, update))
        if self.on_window is not None:
            self.on_window(st, self.core.map)

    def _flush_tail(self, writer: TrajectoryWriter) -> None:
        """The last window's shared tail waited for a next window: however the run ends, its poses are final."""
        try:
            self._write_final(self.core.finish(), writer, self._last_pred)
        except ReconError as e:
            if self.state.status == "finished":
                self.state.status = "failed"
                raise
            log.warning("%s", e)  # the error that stopped the run is the one to report

    def _write_final(
        self,
        final: list[tuple[int, FramePose]],
        writer: TrajectoryWriter,
        pred: WindowPrediction | None,
        aligned: AlignedWindow | None = None,
    ) -> None:
        """Append the poses that became final (positions in `aligned`, by default the last window), their
        ground truth and depth samples."""
        if not final:
            return
        poses = [p for _, p in final]
        aligned = aligned or self.core.last_window
        if aligned is not None and pred is not None:
            self._write_depth_samples(aligned, pred, [j for j, _ in final], first_ordinal=writer.count)
        stamps = [p.timestamp_s for p in poses]
        writer.append(stamps, np.stack([p.world_from_cam for p in poses]), [p.index for p in poses])
        if self._gt_writer is not None and all(p.gt_cam_from_world is not None for p in poses):
            self._gt_writer.append(stamps, invert_rigid(np.stack([p.gt_cam_from_world for p in poses])))  # type: ignore[misc]
        self.state.frames_written = writer.count
        self.state.frames_unregistered += sum(not p.registered for p in poses)

    def _write_depth_samples(
        self, aligned: AlignedWindow, pred: WindowPrediction, positions: list[int], first_ordinal: int
    ) -> None:
        every = self.config.outputs.depth_every
        if every <= 0:
            return
        for ordinal, j in enumerate(positions, start=first_ordinal):
            if ordinal % every == 0:
                sample = DepthSample(
                    aligned.frame_indices[j],
                    aligned.depth[j].cpu().numpy(),
                    aligned.conf[j].cpu().numpy(),
                    pred.K[j].double().cpu().numpy(),
                    aligned.cam_from_world[j].double().cpu().numpy(),
                    pred.resize,
                )
                write_depth_sample(self.out_dir, sample)

    def _window_view(self, item: _Window, update: CoreUpdate) -> WindowView:
        st, voxel_map, aligned, new = self.state, self.core.map, update.aligned, update.new
        assert voxel_map is not None  # made by the first window
        # Per window, not since the start: a plot of running totals hides a slow stretch behind the past. Frames
        # placed, not read: the reader runs ahead into a queue, and a short source is all read long before the end.
        now, (t_last, frames_last, timings_last) = time.perf_counter(), self._last_view
        self._last_view = (now, st.frames_written, dict(st.timings_s))
        stats: dict[str, float] = {
            "fps": (st.frames_written - frames_last) / (now - t_last) if now > t_last else 0.0,
            "rss_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
            "map_points": float(len(voxel_map)),
            "infer_ms_per_frame": 1e3 * item.infer_s / max(len(aligned), 1),
            **{f"window_s/{k}": v - timings_last.get(k, 0.0) for k, v in st.timings_s.items()},
            # Model-reported numbers (e.g. KV-cache bytes of a streaming model) are plotted as they come.
            **{
                f"model/{k}": float(v)
                for k, v in item.pred.info.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }
        gt = [m.gt_cam_from_world for m in item.frames_meta if m.gt_cam_from_world is not None]
        return WindowView(
            window=st.windows - 1,
            frame_indices=list(aligned.frame_indices),
            timestamps_s=[m.timestamp_s for m in item.frames_meta],
            new=new,
            images_rgb=item.colors,
            depth=aligned.depth.cpu().numpy(),
            conf=aligned.conf.cpu().numpy(),
            fused_conf=None if update.fused_conf is None else update.fused_conf.cpu().numpy(),
            fused_stride=self.config.core.map.pixel_stride,
            new_points=lambda stride: aligned.world_points(new, stride).cpu().numpy(),
            cam_from_world=aligned.cam_from_world.double().cpu().numpy(),
            K=item.pred.K.double().cpu().numpy(),
            world_from_window=aligned.world_from_window,
            gt_cam_from_world=np.stack(gt) if gt and len(gt) == len(item.frames_meta) else None,
            alignment=aligned.report.brief(),
            stats=stats,
            map_points=lambda: voxel_map.points()[:2],
        )

    def _write_map(self, final: bool = False) -> None:
        """Every window: the map as it is. At the end of a finished run: without statistical outliers."""
        if self.core.map is not None and len(self.core.map):
            self.state.map_ply_points = self.core.map.export_ply(
                self.out_dir / "map.ply", outlier_removal=final and self.config.outputs.final_outlier_removal
            )

    def _write_summary(self) -> None:
        st = self.state
        elapsed = time.perf_counter() - self._t0
        summary = {
            "status": st.status,
            "source": getattr(self.source, "name", str(self.source)),
            "input": self.input_spec,
            "model": getattr(self.model, "name", type(self.model).__name__),
            "frames_read": st.frames_read,
            "frames_used": st.frames_used,
            "frames_skipped_no_motion": st.frames_skipped,
            "frames_in_trajectory": st.frames_written,
            "windows": st.windows,
            "elapsed_s": elapsed,
            "fps": st.frames_read / elapsed if elapsed > 0 else 0.0,
            "peak_rss_mb": peak_rss_mb(),
            "timings_s": st.timings_s,
            "map_points": len(self.core.map) if self.core.map is not None else 0,
            "map_ply_points": st.map_ply_points,
            "map_voxel": self.core.map.voxel_m if self.core.map is not None else None,
            "frames_unregistered": st.frames_unregistered,
            "registration": self.registration.name,
            "back_end_s": dict(self.core.timings_s),
            "breaks": self.core.breaks[-ALIGNMENT_LOG_WINDOWS:],  # windows joined across a break in the stream
            "loops": st.loops[-ALIGNMENT_LOG_WINDOWS:],
            "loop_closures": len(st.loops),
            "trajectory_rewrites": st.trajectory_rewrites,
            "place_database_bytes": self.core.loop_closer.places.nbytes if self.core.loop_closer is not None else 0,
            "place_recognition": _place_stats(self.core),
            "scale": scale_note(self.model, self.source),
            "ground_truth_metric": bool(getattr(self.source, "metric", False))
            if self.source.has_ground_truth
            else None,
            "intrinsics": intrinsics_report(self.source, self.model, st.model_K),
            "settings": asdict(self.config),
            "model_flags": st.flags,
            "skipped_windows": st.skipped_windows,
            "source_notes": source_notes(self.source),  # what the source skipped or survived (unreadable images, ...)
            "warnings": st.warnings,
            "alignment_paths": st.alignment_paths,
            "alignment": list(st.alignment),  # the last ALIGNMENT_LOG_WINDOWS windows
        }
        atomic_write_json(self.out_dir / "summary.json", summary)


def _map_warnings(voxel_map: VoxelMap | None, ply: Path) -> list[str]:
    """Why map.ply is missing, or what it leaves out: a run that ends without a map says so."""
    lost = voxel_map.points_out_of_range if voxel_map is not None else 0
    grid = (
        f"outside the voxel grid at voxel {voxel_map.voxel_m:g} ({KEY_OFFSET:,} voxels each way from the origin); pass a larger --voxel"
        if voxel_map is not None
        else ""
    )
    if ply.is_file():
        return [f"map.ply leaves out {lost:,} points {grid}"] if lost else []
    if lost:
        return [f"no map.ply: every point fell {grid}"]
    return [
        "no map.ply: no window was registered"
        if voxel_map is None
        else "no map.ply: no point was confident enough to fuse"
    ]


def _place_stats(core: Reconstruction) -> dict[str, Any] | None:
    """What the place database did: queries, candidates verified, why they were rejected, loops the
    drift gate refused."""
    if core.loop_closer is None:
        return None
    st = core.loop_closer.places.stats
    return {
        "keyframes": len(core.loop_closer.places),
        "queries": st.queries,
        "candidates": st.candidates,
        "verified": st.verified,
        "rejected": dict(st.rejected),
        "gate_rejected": list(core.loop_closer.rejected)[-ALIGNMENT_LOG_WINDOWS:],
    }


def _is_out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's device OOM, or torch's CPU allocator failing."""
    return (
        isinstance(e, (MemoryError, torch.OutOfMemoryError))
        or "can't allocate memory" in str(e)
        or "out of memory" in str(e).lower()
    )


def scale_note(model: object, source: object) -> dict[str, Any]:
    metric = bool(getattr(model, "metric", False))
    return {
        "metric": metric,
        "note": "metres"
        if metric
        else "arbitrary but consistent units: the first window's median sparse depth is 1; "
        "align to ground truth with a Sim(3) to compare",
    }


def intrinsics_report(source: object, model: object, model_K: np.ndarray | None) -> dict[str, Any]:
    """Where the run's K came from and its values in source pixels (pixel centres at integers): the source's
    (a flag, a calibration file, a dataset's calibration) or, without one, the model's own estimate."""
    from recon.datasets import CalibratedSource, intrinsics_origin

    origin = intrinsics_origin(source)  # type: ignore[arg-type]
    K = getattr(source, "intrinsics", None)
    report: dict[str, Any] = {
        "origin": origin
        or f"none given: estimated by the {getattr(model, 'name', type(model).__name__)} model (pass --calib FILE or --intrinsics)",
        "K": (K if K is not None else model_K),
    }
    if isinstance(source, CalibratedSource) and source.calib.distorted:
        report["distortion"] = {
            "model": source.calib.model,
            "coefficients": source.calib.dist.tolist(),
            "K_distorted": source.calib.K,
        }
    if model_K is not None and K is not None and not np.allclose(model_K, K, rtol=1e-4, atol=1e-3):
        report["K_model"] = model_K  # a model that predicts its own K (learned ones) may differ from the source's
    return report


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Resident memory now (Linux /proc); the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mb()
    return pages * resource.getpagesize() / 2**20
