"""The streaming pipeline (ARCHITECTURE §1, §3), the driver: source -> windows -> model -> reconstruction core -> outputs.

Two threads joined by a bounded queue: the producer reads frames, cuts windows and runs the model (on as
many windows at once as its registration allows, results in stream order: recon/windows.py); the
consumer hands each prediction to the core (recon/core.py: registration, pose graph, loop closure, map)
and writes what it returns. Nothing holds more than a few windows of frames,
so memory does not grow with the stream."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.align import AlignedWindow, WindowLayers
from recon.core import CoreConfig, FramePose, Reconstruction, carried_frames
from recon.datasets.base import FrameSource
from recon.datasets.resize import resample_image
from recon.errors import NonFiniteError, ReconError
from recon.fusion import VoxelMap
from recon.models.base import GeometryModel, StreamingModel
from recon.outputs import OutputConfig, prepare_out_dir
from recon.run_files import RunFiles, map_warnings
from recon.summary import RunState, RunSummary, nothing_reconstructed, summarise
from recon.types import Frame, FrameMeta, WindowPrediction
from recon.viewer_feed import ViewerFeed
from recon.viz.viewer import NullViewer, Viewer
from recon.windows import (
    KeyframeSelector,
    OverlappingWindows,
    Registration,
    ScheduleConfig,
    WindowScheduler,
    WindowsInFlight,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)


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
        self._last_pred: WindowPrediction | None = None
        self._feed = ViewerFeed(config.core.map.pixel_stride)

    # -- the run, top to bottom ------------------------------------------------------------------
    def run(self) -> RunState:
        self._t0 = time.perf_counter()
        self._feed.start(self._t0)
        producer = threading.Thread(target=self._produce, name="recon-model", daemon=True)
        files = RunFiles(self.out_dir, self.config.outputs, self.source.has_ground_truth, self.run_config)
        self.registration.start(self.model)
        try:
            files.write_summary(self._summary())
            producer.start()
            while (item := self._next_item()) not in (_DONE, _STOPPED):
                if item is _NEW_ANCHOR:
                    self.core.restart()
                    continue
                assert isinstance(item, _Window)
                self._consume(item, files)
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
            self._flush_tail(files)
            files.close()
            try:
                self._write_map(files, final=self.state.status == "finished")
                self.state.warnings += map_warnings(self.core.map, self.out_dir / "map.ply")
            except ReconError as e:  # e.g. the disk filled up: the summary must still say how the run ended
                if self.state.status != "finished":
                    log.warning("%s", e)  # the error that stopped the run is the one to report
                else:
                    self.state.status = "failed"
                    raise
            finally:
                files.write_summary(self._summary())
                self.viewer.close()
        off_grid = self.core.map.points_out_of_range if self.core.map is not None else 0
        if why := nothing_reconstructed(
            self.state, getattr(self.source, "stride", 1), len(getattr(self.source, "skipped", [])), off_grid
        ):
            self.state.status = "failed"  # empty files must not pass for a result
            files.write_summary(self._summary())
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
        colors = np.stack(
            [resample_image(f.image_rgb, pred.resize, allow_warp=True) for f in frames]
        )  # as the model saw
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
    def _consume(self, item: _Window, files: RunFiles) -> None:
        st = self.state
        t, map_s = time.perf_counter(), self.core.clock.wall_s["map"]
        update = self.core.add(item.pred, item.frames_meta, item.colors, item.layers)
        fuse_s = self.core.clock.wall_s["map"] - map_s
        st.timings_s["align"] += time.perf_counter() - t - fuse_s  # joins, pose graph, place recognition
        st.timings_s["fuse"] += fuse_s
        self._last_pred = item.pred
        if st.model_K is None:
            st.model_K = item.pred.resize.K_to_original(item.pred.K[0].double().cpu().numpy())

        t = time.perf_counter()
        if update.trajectory is not None:  # a loop closure moved earlier poses: rewrite, then append
            files.rewrite(update.trajectory)
            st.trajectory_rewrites += 1
            self.viewer.update_window_transforms(update.moved)
        if update.loop is not None:
            st.loops.append(update.loop)
        self._write_final(files, update.final, item.pred, update.aligned)
        st.windows += 1
        for flag in item.pred.flags:
            st.flags[flag] = st.flags.get(flag, 0) + 1
        report = update.aligned.report
        st.alignment.append({"frames": [item.frames_meta[0].index, item.frames_meta[-1].index], **report.brief()})
        path = report.path
        st.alignment_paths[path] = st.alignment_paths.get(path, 0) + 1
        if st.windows % self.config.outputs.map_every == 0:
            self._write_map(files)
        files.write_summary(self._summary())
        st.timings_s["write"] += time.perf_counter() - t
        self.viewer.log_window(
            self._feed.view(st, update, item.frames_meta, item.colors, item.pred, item.infer_s, self.core.map)
        )
        if self.on_window is not None:
            self.on_window(st, self.core.map)

    def _flush_tail(self, files: RunFiles) -> None:
        """The last window's shared tail waited for a next window: however the run ends, its poses are final."""
        try:
            self._write_final(files, self.core.finish(), self._last_pred)
        except ReconError as e:
            if self.state.status == "finished":
                self.state.status = "failed"
                raise
            log.warning("%s", e)  # the error that stopped the run is the one to report

    def _write_final(
        self,
        files: RunFiles,
        final: list[tuple[int, FramePose]],
        pred: WindowPrediction | None,
        aligned: AlignedWindow | None = None,
    ) -> None:
        """The poses that became final (positions in `aligned`, by default the last window) into the files."""
        aligned = aligned or self.core.last_window
        if not final or aligned is None or pred is None:
            return
        files.append(final, aligned, pred)
        self.state.frames_written = files.frames_written
        self.state.frames_unregistered += sum(not p.registered for _, p in final)

    def _write_map(self, files: RunFiles, final: bool = False) -> None:
        if (points := files.write_map(self.core.map, final)) is not None:
            self.state.map_ply_points = points

    def _summary(self) -> RunSummary:
        return summarise(
            self.state,
            self.core,
            self.source,
            self.model,
            self.registration.name,
            asdict(self.config),
            self.input_spec,
            time.perf_counter() - self._t0,
        )


def _is_out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's device OOM, or torch's CPU allocator failing."""
    return (
        isinstance(e, (MemoryError, torch.OutOfMemoryError))
        or "can't allocate memory" in str(e)
        or "out of memory" in str(e).lower()
    )
