"""The streaming pipeline end to end: windows, outputs written as it goes, a run killed mid-stream."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recon.core import carried_frames
from recon.datasets.synthetic import SyntheticSource
from recon.models.classical import ClassicalModel
from recon.pipeline import Pipeline, PipelineConfig
from recon.trajectory_io import read_kitti, read_tum
from recon.types import Frame
from recon.windows import KeyframeSelector, ScheduleConfig, WindowScheduler


def frames(n: int) -> list[Frame]:
    return [Frame(i, 0.1 * i, np.zeros((4, 4, 3), np.uint8)) for i in range(n)]


def test_scheduler_cuts_overlapping_windows_and_keeps_a_useful_tail() -> None:
    sched = WindowScheduler(size=5, overlap=2)
    windows = [w for f in frames(12) if (w := sched.push(f)) is not None]
    assert [[f.index for f in w] for w in windows] == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [6, 7, 8, 9, 10]]
    assert [f.index for f in sched.finish()] == [9, 10, 11]  # adds frame 11 beyond the overlap
    sched = WindowScheduler(size=5, overlap=2)
    for f in frames(8):
        sched.push(f)
    assert sched.finish() is None  # [3, 4] would add nothing new
    with pytest.raises(ValueError):
        WindowScheduler(size=4, overlap=4)


def test_after_a_break_the_next_window_starts_where_the_model_stopped_placing_frames() -> None:
    sched = WindowScheduler(size=5, overlap=2)
    first = next(w for f in frames(5) if (w := sched.push(f)) is not None)
    sched.carry(3)  # frames 2, 3, 4: the model placed only 0, 1
    windows = [w for f in frames(12)[5:] if (w := sched.push(f)) is not None]
    assert [[f.index for f in w] for w in [first, *windows]] == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [5, 6, 7, 8, 9]]
    with pytest.raises(ValueError):
        sched.carry(5)  # the next window would add nothing


class Pred:
    """The part of a prediction carried_frames reads: which frames the model placed."""

    def __init__(self, placed: list[bool]) -> None:
        self.registered = np.array(placed)

    def __len__(self) -> int:
        return len(self.registered)


def test_the_next_window_carries_the_frames_after_the_last_placed_one() -> None:
    assert carried_frames(Pred([True] * 5), 2) == 2  # placed to the end: the overlap
    assert carried_frames(Pred([True, True, True, True, False]), 2) == 2  # a short unplaced tail stays within it
    assert carried_frames(Pred([True, True, False, False, False]), 2) == 3  # the next window starts at the break
    assert carried_frames(Pred([True, False, False, False, False]), 2) == 4
    assert carried_frames(Pred([True] * 5), 0) == 0  # causal steps share nothing


def test_keyframes_skip_a_parked_camera() -> None:
    src = list(SyntheticSource("street", num_frames=6, width=320, height=96, seed=2))
    parked = [src[0]] * 4 + src[1:]
    selector = KeyframeSelector()
    kept = [selector.accept(f) for f in parked]
    assert kept == [True, False, False, False, True, True, True, True, True]


def test_run_writes_consistent_outputs(tmp_path: Path) -> None:
    source = SyntheticSource("street", num_frames=60, width=320, height=96, seed=4)
    state = Pipeline(source, ClassicalModel(), tmp_path, PipelineConfig(ScheduleConfig(window=12, overlap=3))).run()
    assert state.status == "finished" and state.windows == 7  # 12 + 5 x 9 new frames, then a tail of 3
    est, gt = read_kitti(tmp_path / "trajectory.kitti"), read_kitti(tmp_path / "ground_truth.kitti")
    stamps, est_tum = read_tum(tmp_path / "trajectory.tum")
    assert len(est) == len(gt) == len(stamps) == 60
    np.testing.assert_allclose(est_tum, est, atol=1e-6)
    np.testing.assert_allclose(stamps, np.arange(60) / 10.0)
    from recon.eval.trajectory import absolute_trajectory_error

    ate = absolute_trajectory_error(est, gt)
    assert ate.rmse_percent_of_length < 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["frames_in_trajectory"] == 60
    assert {"read", "infer", "align", "fuse", "write"} <= set(summary["timings_s"])
    assert summary["scale"]["metric"] is False and len(summary["alignment"]) == 7
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(tmp_path / "map.ply"))
    assert len(cloud.points) == summary["map_ply_points"] > 1000
    assert summary["map_ply_points"] <= summary["map_points"]  # the final map has its outliers removed
    # What the run writes is what every reader gets: each key a RunSummary field, none dropped or renamed.
    from recon.summary import RunSummary

    typed = RunSummary.read(tmp_path)
    assert list(typed.to_json()) == list(summary) and typed.windows == 7 and typed.alignment[0]["path"] == "first"


def test_a_summary_from_an_older_run_reads_with_defaults_and_a_missing_one_is_a_one_line_error(tmp_path: Path) -> None:
    from recon.errors import ReconError
    from recon.summary import RunSummary

    with pytest.raises(ReconError, match="not a recon output folder"):
        RunSummary.read(tmp_path)
    (tmp_path / "summary.json").write_text('{"status": "finished", "frames_read": 5, "a_key_from_elsewhere": 1}')
    old = RunSummary.read(tmp_path)
    assert old.status == "finished" and old.frames_read == 5 and old.alignment == [] and not old.metric
    (tmp_path / "summary.json").write_text('{"status": "fini')  # killed mid-write by something else
    with pytest.raises(ReconError, match="unreadable"):
        RunSummary.read(tmp_path)


def start_run_until(out: Path, windows: int) -> subprocess.Popen:
    """`recon run` of a 400-frame drive in windows of 10 (overlap 2), returned once `windows` are written."""
    cmd = [
        sys.executable,
        "-m",
        "recon",
        "run",
        "synthetic:street",
        "--max-frames",
        "400",
        "--window",
        "10",
        "--overlap",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        summary = out / "summary.json"
        if summary.exists() and json.loads(summary.read_text())["windows"] >= windows:
            return proc
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run produced no windows in time")


def assert_whole_windows_written(out: Path, stopped_cleanly: bool) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    est = read_kitti(out / "trajectory.kitti")
    assert len(est) >= summary["frames_in_trajectory"]
    # Whole windows only: 8 frames a window become final (the 2 it shares with the next wait to be fused
    # with it); a stop the run survives (Ctrl-C, SIGTERM) also writes the last window's 2, a kill cannot.
    assert len(est) % 8 == (2 if stopped_cleanly else 0)
    stamps, _ = read_tum(out / "trajectory.tum")
    assert len(stamps) == len(est)
    import open3d as o3d

    assert len(o3d.io.read_point_cloud(str(out / "map.ply")).points) > 0
    return summary


def test_a_killed_run_leaves_valid_outputs_up_to_the_last_window(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_run_until(out, windows=3)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: only what was already written counts
    proc.wait(timeout=30)
    assert assert_whole_windows_written(out, stopped_cleanly=False)["windows"] >= 3


def test_sigterm_flushes_finished_windows_and_exits_143(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_run_until(out, windows=2)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "Traceback" not in stderr and "recon: terminated; outputs up to the last finished window are in" in stderr
    summary = assert_whole_windows_written(out, stopped_cleanly=True)
    assert summary["status"] == "interrupted"
    assert len(read_kitti(out / "trajectory.kitti")) == summary["frames_in_trajectory"]


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_the_shutdown_changes_nothing(tmp_path: Path, first: signal.Signals) -> None:
    """Ctrl-C pressed again while the run is stopping: the shutdown still ends with a final status, never an
    abort (SIGABRT) and never a summary stuck at "running"."""
    out = tmp_path / "out"
    proc = start_run_until(out, windows=2)
    proc.send_signal(first)
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + first, stderr
    assert "Traceback" not in stderr
    summary = assert_whole_windows_written(out, stopped_cleanly=True)
    assert summary["status"] == "interrupted"
    assert len(read_kitti(out / "trajectory.kitti")) == summary["frames_in_trajectory"]


def test_the_entry_point_sets_its_signals_before_any_slow_import() -> None:
    """A Ctrl-C in the first instants of `recon` must not print a KeyboardInterrupt traceback from inside an
    import: the entry module ignores SIGINT/SIGTERM before it imports the command line (and through it
    logging, argparse, torch ...)."""
    probe = "import sys, recon.__main__; print(sorted(m for m in sys.modules if m.startswith('recon')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "['recon', 'recon.__main__']"


def test_after_a_stop_request_later_signals_stay_ignored_while_the_command_closes() -> None:
    """The first Ctrl-C asks the run to stop; one pressed again after the stream has stopped must not raise a
    KeyboardInterrupt into the closing code (a finalizer printed a traceback). Without a stop request the
    handlers the command had before are put back."""
    from recon.signals import ignore_signal
    from recon.stopping import stop_on_signals

    def sentinel(signum: int, frame: object) -> None:
        raise AssertionError("the earlier handler ran")

    before = {s: signal.signal(s, sentinel) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        asked: list[bool] = []
        with stop_on_signals(lambda: asked.append(True)) as stop:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)  # a second signal while stopping: nothing more
        assert asked == [True] and stop.signum == signal.SIGINT and not stop.terminated
        assert signal.getsignal(signal.SIGINT) is ignore_signal and signal.getsignal(signal.SIGTERM) is ignore_signal
        signal.raise_signal(signal.SIGINT)  # ignored: no KeyboardInterrupt, no sentinel

        for s in before:
            signal.signal(s, sentinel)
        with stop_on_signals(lambda: None) as quiet:
            pass
        assert quiet.signum is None
        assert signal.getsignal(signal.SIGINT) is sentinel and signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_two_signals_that_land_together_unwind_without_a_race_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """A double Ctrl-C (or SIGTERM then Ctrl-C) while the main thread is in native code is handled as two
    pending signals at once: the first unwinds the command, the second must be ignored quietly (ignored with
    SIG_IGN, CPython printed "Signal 15 ignored due to race condition" with a traceback)."""
    from recon.signals import signals_unwind

    both = {signal.SIGINT, signal.SIGTERM}
    reports: list[str] = []  # CPython reports the race through sys.unraisablehook (the traceback on stderr)
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reports.append(str(unraisable.exc_value)))
    main_thread = threading.get_ident()
    with pytest.raises(KeyboardInterrupt), signals_unwind():
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        try:  # sent to this thread, not the process: another thread (torch's) would take them at once
            signal.pthread_kill(main_thread, signal.SIGTERM)
            signal.pthread_kill(main_thread, signal.SIGINT)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both delivered now; SIGINT's handler runs first
        sum(range(1000))
    assert reports == []


def test_a_signal_that_breaks_an_import_is_reported_as_the_signal(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Ctrl-C while a command imports torch or OpenCV: the extension's initialisation turns the KeyboardInterrupt
    into "ImportError: initialization failed". The user pressed Ctrl-C: exit 130 and "interrupted", not an
    internal error."""
    import recon.cli as cli
    import recon.commands.eval as eval_command

    def interrupted_import(args: object) -> int:
        try:
            signal.raise_signal(signal.SIGINT)
            sum(range(1000))  # the handler raises here
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e
        return 0

    monkeypatch.setattr(eval_command, "main", interrupted_import)
    capfd.readouterr()
    assert cli.main(["eval", "somewhere"]) == cli.EXIT_INTERRUPTED
    assert capfd.readouterr().err.strip() == "recon: interrupted"


def test_a_signal_during_the_libraries_imports_waits_for_them_then_stops_the_run(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """A KeyboardInterrupt raised halfway through torch's import left its C++ side half set up, and the process
    died of SIGABRT (soak run 79: Ctrl-C 0.8 s after start). The run imports its native libraries with signals
    held back: the import finishes, then the signal stops the run with exit 143 before any window."""
    import recon.cli as cli
    import recon.models.base as base

    real_factory = base.model_factory
    imported: list[str] = []

    def slow_import(name: str):  # type: ignore[no-untyped-def]
        signal.raise_signal(signal.SIGTERM)
        sum(range(1000))  # a handler that unwinds raises here, halfway through the "import"
        imported.append(name)
        return real_factory(name)

    monkeypatch.setattr(base, "model_factory", slow_import)
    capfd.readouterr()
    found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    code = cli.main(["run", "synthetic:street", "--max-frames", "4", "--out", str(tmp_path / "out")])
    assert imported == ["classical"]
    assert code == cli.EXIT_TERMINATED
    assert capfd.readouterr().err.strip() == "recon: terminated"
    assert {s: signal.getsignal(s) for s in found} == found  # the command put back what it found
