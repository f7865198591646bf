"""Config files: every stage's settings in one nested RunConfig, read from YAML, overridden by flags, written to
OUT/config.yaml so a run can be repeated exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recon.cli import main
from recon.config import RunConfig, from_dict, read_config_file, run_config, to_dict
from recon.errors import ReconError

RUN = ["synthetic:street", "--max-frames", "28", "--window", "10", "--overlap", "3"]


def test_a_run_repeats_bit_for_bit_from_its_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *RUN, "--voxel", "0.2", "--out", str(tmp_path / "a")]) == 0
    assert main(["run", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b")]) == 0
    for name in ("trajectory.tum", "frames.txt", "map.ply"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    written = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert (
        written["map"]["voxel"] == 0.2
        and written["schedule"]["window"] == 10
        and written["outputs"]["out"] == str(tmp_path / "b")
    )


def test_flags_override_the_file_and_research_knobs_reach_their_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump(
            {
                "source": {"path": "synthetic:street", "max_frames": 28},
                "schedule": {"window": 14, "overlap": 3},
                "map": {"pixel_stride": 8},  # a knob without a flag
                "model": {"classical": {"dense": {"threads": 1}}},
            }
        )
    )
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--window", "10", "--out", str(tmp_path / "sparse")]) == 0
    effective = yaml.safe_load((tmp_path / "sparse" / "config.yaml").read_text())
    assert effective["schedule"] == {**effective["schedule"], "window": 10, "overlap": 3}
    assert effective["map"]["pixel_stride"] == 8 and effective["model"]["classical"]["dense"]["threads"] == 1
    assert (
        main(
            [
                "run",
                "--config",
                str(tmp_path / "c.yaml"),
                "--window",
                "10",
                "--out",
                str(tmp_path / "dense"),
                "--depth-every",
                "0",
            ]
        )
        == 0
    )
    sparse_ply, dense_ply = (
        (tmp_path / "sparse" / "map.ply").stat().st_size,
        (tmp_path / "dense" / "map.ply").stat().st_size,
    )
    assert sparse_ply == dense_ply  # --depth-every changes no map: the two runs differ in nothing else
    (tmp_path / "d.yaml").write_text(
        yaml.safe_dump(
            {"source": {"path": "synthetic:street", "max_frames": 28}, "schedule": {"window": 10, "overlap": 3}}
        )
    )
    assert main(["run", "--config", str(tmp_path / "d.yaml"), "--out", str(tmp_path / "default_stride")]) == 0
    assert (
        tmp_path / "default_stride" / "map.ply"
    ).stat().st_size > 2 * sparse_ply  # stride 8 fuses ~1/16 of stride 2's pixels


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"schedule": {"windw": 10}}, "schedule.windw: no such setting; schedule has window, overlap"),
        ({"align": {"mode": "affine"}}, "align.mode: 'affine' is not one of 'sim3', 'lsa'"),
        ({"map": {"max_points": "many"}}, "map.max_points: expected a whole number"),
        ({"graph": {"places": {"vocabulary_shape": [32]}}}, "graph.places.vocabulary_shape: expected 2 values"),
        ([1, 2], "expected a mapping of settings"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_setting(
    settings: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(settings))
    assert (
        main(["run", "synthetic:street", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_not_yaml_and_no_source_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.yaml").write_text("schedule: {window: 10\n")
    assert main(["run", "--config", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "o")]) == 2
    assert "no source" in capsys.readouterr().err


def test_every_setting_round_trips_through_a_file() -> None:
    config = RunConfig()
    again = from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(config))))
    assert again == config
    with pytest.raises(ReconError, match=r"model\.classical\.bundle"):
        from_dict(RunConfig, {"model": {"classical": {"bundle": {"no_such": 1}}}})


def test_a_number_in_exponent_notation_is_a_number(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e9 and 1.0e9 as text; a user writing them means a number.
    (tmp_path / "c.yaml").write_text("model:\n  classical:\n    cull_noise_factor: 1.0e9\n    cull_floor_px: 2e-1\n")
    config = run_config(read_config_file(tmp_path / "c.yaml"), {})
    assert config.model.classical.cull_noise_factor == 1e9
    assert config.model.classical.cull_floor_px == 0.2
    with pytest.raises(ReconError, match="expected a whole number"):
        from_dict(RunConfig, {"map": {"max_points": "1e6"}})  # a count stays a whole number
    with pytest.raises(ReconError, match="expected a number"):
        from_dict(RunConfig, {"model": {"classical": {"cull_floor_px": "e9"}}})
