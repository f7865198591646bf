"""`recon run --workers N` (recon/ray_windows.py): the windows inferred on Ray actors, each with its own model,
aligned and fused in order by the run: the same run as a local one."""

from __future__ import annotations

from pathlib import Path

import pytest

from recon.cli import main
from recon.datasets.synthetic import render_sequence
from recon.errors import EXIT_USAGE, ReconError
from recon.summary import RunSummary


def test_windows_on_two_workers_make_the_local_run(tmp_path: Path) -> None:
    seq = render_sequence(tmp_path / "data", scene="street", name="d", num_frames=60, width=320, height=96, seed=2)
    assert main(["run", str(seq), "--out", str(tmp_path / "local")]) == 0
    assert main(["run", str(seq), "--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    for name in ("trajectory.kitti", "trajectory.tum", "frames.txt"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    local, remote = RunSummary.read(tmp_path / "local"), RunSummary.read(tmp_path / "ray")
    assert remote.status == "finished" and remote.model == "classical" and remote.windows == local.windows == 5


def test_a_workers_error_is_the_one_line_a_local_run_gives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.safetensors").write_text("not a checkpoint")
    flags = ["--model", "vggt", "--weights", str(tmp_path / "bad.safetensors"), "--model-config", "tiny"]
    errors = []
    for i, extra in enumerate(([], ["--workers", "1"])):
        assert main(["run", "synthetic:street", "--out", str(tmp_path / str(i)), *flags, *extra]) == EXIT_USAGE
        errors.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert errors[0] == errors[1] and errors[0].startswith("recon: error: cannot read safetensors file")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--address", "auto"], r"--address is where --workers run; pass --workers N too"),
        (["--workers", "0"], r"--workers must be >= 1, got 0"),
        (
            ["--workers", "2", "--model", "streamvggt", "--cache", "none", "--model-config", "tiny"],
            r"--workers needs a model whose windows are independent; streamvggt carries its state",
        ),
    ],
)
def test_workers_flags_are_checked_before_ray_starts(tmp_path: Path, flags: list[str], message: str) -> None:
    with pytest.raises(ReconError, match=message):
        main(["--debug", "run", "synthetic:street", "--out", str(tmp_path), *flags])
