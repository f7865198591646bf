"""The command line a user meets: help for every subcommand, one-line errors, render and demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recon.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("sub", ["run", "eval", "export", "view", "demo", "render"])
def test_every_subcommand_has_help(sub: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert "usage: recon " + sub in capsys.readouterr().out


def test_python_dash_m_and_top_level_help() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    for sub in ("run", "eval", "export", "view", "demo", "render"):
        assert sub in res.stdout


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    res = run_cli("render", "--scene", "moon", "--frames", "3", "--out", str(tmp_path))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr
    assert lines[-1].startswith("recon: error:") or "invalid choice" in lines[-1]


def test_render_writes_a_kitti_sequence_the_sources_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from recon.datasets import open_source

    assert (
        main(
            ["render", "--scene", "room", "--frames", "3", "--width", "160", "--height", "120", "--out", str(tmp_path)]
        )
        == 0
    )
    seq = next((tmp_path / "sequences").iterdir())
    frames = list(open_source(str(seq)))
    assert len(frames) == 3 and frames[0].hw == (120, 160) and frames[0].gt_depth_m is not None
    assert str(seq) in capsys.readouterr().out


def test_demo_runs_twice_in_the_same_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for _ in range(2):
        assert main(["demo", "--out", str(tmp_path), "--frames", "20"]) == 0
    out = capsys.readouterr().out
    assert "ATE RMSE" in out and (tmp_path / "run" / "map.ply").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "synthetic:street", "--window", "8", "--overlap", "8"], "--overlap must be in [1, 7]"),
        (["run", "synthetic:street", "--stride", "0"], "--stride must be >= 1"),
        (["run", "synthetic:street", "--intrinsics", "1,2,3"], "--intrinsics must be four numbers"),
        (["run", "/nonexistent/video.mp4"], "cannot open"),
        (["run", "synthetic:street", "--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_run_rejects_bad_input_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recon: error:") and message in err[0]


def test_run_hands_free_heap_pages_back_once_per_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Soak (bench/bench_soak.py): with the map and the place database full, RSS still crept up with the
    stream: freed heap blocks between live ones stay resident. `recon run` trims the heaps every window."""
    import json

    import recon.commands.run
    import recon.run_report

    recon.commands.run.heap_trimmer()()  # safe to call anywhere (a no-op off glibc)
    calls: list[int] = []
    monkeypatch.setattr(recon.commands.run, "heap_trimmer", lambda: lambda: calls.append(1))
    monkeypatch.setattr(recon.run_report, "evaluate", lambda out: None)  # the evaluation is not under test
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "synthetic:street",
                "--max-frames",
                "8",
                "--window",
                "4",
                "--overlap",
                "1",
                "--no-loop-closure",
                "--depth-every",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    windows = json.loads((out / "summary.json").read_text())["windows"]
    assert windows >= 2 and len(calls) == windows


def test_progress_counts_frames_done_and_logs_plain_lines_without_a_terminal(capsys: pytest.CaptureFixture) -> None:
    from recon.progress import Progress
    from recon.summary import RunState

    progress = Progress(total=100, every_s=0.0, first_after_s=0.0)
    state = RunState(
        frames_read=100, frames_written=40, frames_skipped=5, windows=4
    )  # the reader is ahead of the windows
    progress.update(state, map_points=1234)
    assert progress.done == 45  # not 100: the bar ends when the work does
    line = capsys.readouterr().err.strip()
    assert line.startswith("recon: 45/100 frames, 4 windows,") and line.endswith("map 1234 points")
    state.frames_written = 95
    progress.close(state)
    assert progress.done == 100
