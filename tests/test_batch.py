"""`recon batch` (recon/batch.py): one `recon run` per input as Ray tasks on a local Ray, a failing input
reported without stopping the others, finished inputs skipped on a re-run, one table of them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from recon.batch import BatchInput, expand_inputs
from recon.cli import main
from recon.datasets.synthetic import render_sequence
from recon.errors import EXIT_USAGE, ReconError
from recon.ray_cluster import check_resources
from recon.summary import RunSummary


def test_a_batch_runs_every_input_reports_the_broken_one_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        render_sequence(tmp_path / "kitti", scene="street", name=f"s{i}", num_frames=16, width=320, height=96, seed=i)
    (tmp_path / "broken" / "image_2").mkdir(parents=True)  # a KITTI sequence without calib.txt
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "kitti"), str(tmp_path / "broken"), "--out", str(out), "--cpus-per-run", "1"]

    assert main(argv) == EXIT_USAGE
    printed = capsys.readouterr()
    for name in ("s0", "s1", "s2"):
        summary = RunSummary.read(out / name)
        assert summary.status == "finished" and summary.frames_read == 16
        assert (out / name / "trajectory.kitti").read_text().count("\n") == 16 and (out / name / "map.ply").is_file()
        assert f"] {name}: finished, 16 frames" in printed.out
    assert "] broken: failed: recon: error: " in printed.out and "no calib.txt" in printed.out
    assert "1 of 4 inputs did not finish: broken" in printed.err
    runs = {r["name"]: r for r in json.loads((out / "batch.json").read_text())["runs"]}
    assert [r["status"] for r in runs.values()] == ["finished"] * 3 + ["failed"]
    assert all(runs[f"s{i}"]["ate_pct"] is not None and runs[f"s{i}"]["peak_rss_mb"] > 0 for i in range(3))
    table = (out / "batch.md").read_text()
    assert table.count("| finished |") == 3 and "| broken | failed: recon: error:" in table

    written = {name: (out / name / "summary.json").stat().st_mtime_ns for name in ("s0", "s1", "s2")}
    assert main(argv) == EXIT_USAGE  # the broken input is tried again, the others not
    printed = capsys.readouterr()
    assert printed.out.count("finished in an earlier batch, skipped") == 3
    assert {name: (out / name / "summary.json").stat().st_mtime_ns for name in written} == written
    assert (out / "batch.md").read_text() == table


def test_folders_of_sequences_and_videos_expand_to_one_input_each(tmp_path: Path) -> None:
    seq = render_sequence(tmp_path / "kitti", scene="street", name="07", num_frames=2, width=64, height=32)
    render_sequence(tmp_path / "kitti", scene="street", name="08", num_frames=2, width=64, height=32)
    videos = tmp_path / "videos"
    (videos / "a").mkdir(parents=True)
    for name in ("drive.mp4", "walk.MOV", "notes.txt"):
        (videos / name).write_bytes(b"")
    (videos / "a" / "drive.mp4").write_bytes(b"")
    inputs = expand_inputs(
        [str(tmp_path / "kitti"), str(seq), str(seq / "image_2"), str(videos), str(videos / "a"), "synthetic:room"]
    )
    assert [i.name for i in inputs] == ["07", "08", "07-2", "07-3", "drive", "walk", "drive-2", "synthetic_room"]
    assert inputs[0] == BatchInput("07", str(seq.resolve())) and inputs[-1].spec == "synthetic:room"
    assert expand_inputs([str(tmp_path / "missing.mp4")]) == [BatchInput("missing", str(tmp_path / "missing.mp4"))]


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    with pytest.raises(ReconError, match=r"^recon batch runs on Ray, which is not installed here; .*'recon\[ray\]'$"):
        main(["--debug", "batch", "synthetic:street", "--out", str(tmp_path)])


def test_a_run_asking_for_more_than_the_cluster_has_is_refused() -> None:
    ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    check_resources(ray, 2, 0)  # type: ignore[arg-type]
    with pytest.raises(ReconError, match=r"--cpus-per-run 4 is more than the cluster has \(2 CPUs\)"):
        check_resources(ray, 4, 0)  # type: ignore[arg-type]
    with pytest.raises(ReconError, match=r"--gpus-per-run 1 is more than the cluster has \(0 GPUs\)"):
        check_resources(ray, 1, 1)  # type: ignore[arg-type]


def test_a_run_stops_when_the_worker_that_started_it_is_killed(tmp_path: Path) -> None:
    """Ray kills its workers when a batch is stopped: their `recon run` gets SIGTERM, flushes its finished
    windows and exits, instead of running on as an orphan."""
    out = tmp_path / "run"
    code = f"from recon.batch import run_one; run_one('synthetic:street', {str(out)!r}, None)"
    worker = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120
        while not _trajectory_lines(out) or not _children(worker.pid):  # its first windows are written
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.2)
        (run,) = _children(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 60
        while Path(f"/proc/{run}").exists() and _state(run) != "Z":
            assert time.monotonic() < deadline, "the run outlived its worker"
            time.sleep(0.2)
    finally:
        worker.kill()
    summary = RunSummary.read(out)
    assert summary.status == "interrupted" and 0 < summary.frames_in_trajectory < 300


def _trajectory_lines(run_dir: Path) -> int:
    path = run_dir / "trajectory.kitti"
    return path.read_text().count("\n") if path.is_file() else 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_an_out_folder_it_cannot_create_is_one_line_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert main(["batch", "synthetic:street", "--out", str(tmp_path / "file" / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recon: error: cannot create output folder")
