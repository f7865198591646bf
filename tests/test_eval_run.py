"""`recon eval` and the metrics `recon run` writes: what a user reads in the table and metrics.json, the
ways to give ground truth, agreement with evo on the files themselves, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.trajectory_io import read_frames, read_kitti, read_tum, write_kitti, write_tum

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sequences"


@pytest.fixture(scope="module")
def street_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 45-frame street drive read from disk in the KITTI layout, run with default settings."""
    from recon.datasets.synthetic import render_sequence

    root = tmp_path_factory.mktemp("street")
    seq = render_sequence(
        root / "data", scene="street", name="s", fmt="kitti", num_frames=45, width=320, height=96, seed=3
    )
    out = root / "run"
    assert main(["run", str(seq), "--out", str(out), "--window", "12", "--overlap", "3", "--depth-every", "5"]) == 0
    return out


def test_run_with_ground_truth_writes_metrics_and_plots(street_run: Path) -> None:
    metrics = json.loads((street_run / "metrics.json").read_text())
    traj = metrics["trajectory"]
    assert traj["frames"] == 45 and traj["alignment"] == "sim3"
    assert traj["ate"]["rmse_percent_of_path"] < 2.0
    assert traj["rpe_frame"]["rotation_deg"]["rmse"] < 0.5
    assert (
        traj["gt_metric"] and "KITTI drift needs a metric path of at least 100 m" in traj["kitti_drift"]["skipped"]
    )  # a 45 m drive
    assert traj["ate"]["rotation_deg_orientation_aligned"]["rmse"] < 0.5
    depth = metrics["depth"]
    assert depth["frames"] == 9  # every 5th of 45 frames kept
    # At 320x96 the classical model's depth is coarse (0.11 measured; 0.03 per window at 640x192 in
    # bench_classical): this guards against a broken pixel mapping or scale, which reads > 0.3.
    assert depth["confident_half"]["abs_rel"] < 0.15 and depth["confident_half"]["delta1"] > 0.8
    assert depth["abs_rel"] > depth["confident_half"]["abs_rel"]  # confidence ranks error
    pm = metrics["pointmap"]
    assert pm["accuracy_median"] < 0.05 * 20  # well under the street's typical 20 m depth
    assert 0 < pm["normal_consistency"] <= 1
    for name in metrics["plots"]:
        png = street_run / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {Path(p).name for p in metrics["plots"]} == {"trajectory_top.png", "ate_over_time.png", "depth_samples.png"}


def test_frames_file_names_every_pose(street_run: Path) -> None:
    indices, stamps = read_frames(street_run / "frames.txt")
    tum_stamps, _ = read_tum(street_run / "trajectory.tum")
    np.testing.assert_array_equal(indices, np.arange(45))
    np.testing.assert_allclose(stamps, tum_stamps, atol=1e-6)


def test_eval_prints_the_table_and_agrees_with_the_run(street_run: Path, capsys: pytest.CaptureFixture) -> None:
    before = json.loads((street_run / "metrics.json").read_text())
    assert main(["eval", str(street_run), "--no-plots"]) == 0
    out = capsys.readouterr().out
    for row in (
        "ATE RMSE",
        "ATE rotation RMSE",
        "RPE per frame",
        "KITTI drift  ",
        "depth (9 frames, sequence scale)",
        "point map: accuracy",
        "errors in m; path",
        " m  (",
    ):
        assert row in out
    after = json.loads((street_run / "metrics.json").read_text())
    assert after["trajectory"]["ate"]["rmse"] == pytest.approx(before["trajectory"]["ate"]["rmse"], rel=1e-12)


def test_eval_with_gt_file_in_either_format(street_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reference = json.loads((street_run / "metrics.json").read_text())["trajectory"]["ate"]["rmse"]
    # TUM: matched by timestamp. Drop every 3rd ground-truth pose: those frames must go unmatched.
    stamps, gt = read_tum(street_run / "ground_truth.tum")
    write_tum(tmp_path / "gt.tum", stamps[::3], gt[::3])
    assert main(["eval", str(street_run), "--gt", str(tmp_path / "gt.tum"), "--no-geometry", "--no-plots"]) == 0
    m = json.loads((street_run / "metrics.json").read_text())
    assert m["trajectory"]["frames"] == 15
    # KITTI: a poses file of the whole sequence, matched through frames.txt; any world frame will do.
    gt_kitti = read_kitti(street_run / "ground_truth.kitti")
    moved = np.einsum("ij,njk->nik", _rigid(0.3, [5.0, -2.0, 1.0]), gt_kitti)
    write_kitti(tmp_path / "poses.txt", moved)
    assert main(["eval", str(street_run), "--gt", str(tmp_path / "poses.txt"), "--no-geometry", "--no-plots"]) == 0
    m = json.loads((street_run / "metrics.json").read_text())
    assert m["trajectory"]["frames"] == 45
    assert m["trajectory"]["ate"]["rmse"] == pytest.approx(reference, rel=1e-6)
    capsys.readouterr()


def _rigid(yaw: float, t: list[float]) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = t
    return T


def test_eval_numbers_match_evo_on_the_run_files(street_run: Path) -> None:
    pytest.importorskip("evo")
    from evo.core import metrics as evo_metrics
    from evo.core import sync
    from evo.tools import file_interface

    ref = file_interface.read_tum_trajectory_file(str(street_run / "ground_truth.tum"))
    est = file_interface.read_tum_trajectory_file(str(street_run / "trajectory.tum"))
    ref, est = sync.associate_trajectories(ref, est)
    est.align(ref, correct_scale=True)
    ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    ours = json.loads((street_run / "metrics.json").read_text())["trajectory"]["ate"]
    for name, stat in (("rmse", "rmse"), ("mean", "mean"), ("median", "median"), ("max", "max")):
        assert ours[name] == pytest.approx(
            ape.get_statistic(getattr(evo_metrics.StatisticsType, stat)), rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "{tmp}"], "not a recon output folder"),
        (["eval", "{run}", "--format", "tum"], "--format describes --gt"),
        (["eval", "{run}", "--gt", "{tmp}/missing.txt"], "no such file"),
        (["eval", "{run}", "--depth-samples", "0"], "--depth-samples must be >= 1"),
    ],
)
def test_eval_rejects_bad_input_in_one_line(
    args: list[str], message: str, street_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(street_run)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recon: error:") and message in err[0], err


def test_eval_without_ground_truth_says_how_to_give_it(
    street_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(street_run, run)
    for name in ("ground_truth.kitti", "ground_truth.tum"):
        (run / name).unlink()
    assert main(["eval", str(run)]) == 2
    assert "pass --gt FILE" in capsys.readouterr().err


@pytest.mark.skipif(not (REAL / "fox").is_dir(), reason="real captures live in ../shared (not in a clean clone)")
def test_the_real_fox_capture_is_whole_across_its_gap_and_evaluates(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Fox jumps 43 degrees between frames 36 and 37 (no match across): every frame is still placed, the
    stretch after the gap is relocalised onto the one before, and the trajectory holds to 2% of its path."""
    out = tmp_path / "fox"
    assert main(["run", str(REAL / "fox"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    table = capsys.readouterr().out
    assert "ATE RMSE" in table and "depth" in table  # fox has no ground-truth depth: the row says why
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_unregistered"] == 0 and summary["breaks"] and summary["loop_closures"] >= 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["trajectory"]["frames"] == 67 and m["trajectory"]["ate"]["rmse_percent_of_path"] <= 2.0
    assert "ground-truth depth" in m["depth_skipped"]


def _straight(n: int, step_m: float, roll_deg: float = 0.0) -> np.ndarray:
    """world_from_cam of a camera driving along z, rolled about its own axis by roll_deg."""
    from scipy.spatial.transform import Rotation

    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = Rotation.from_euler("z", roll_deg, degrees=True).as_matrix()
    T[:, 2, 3] = np.arange(n) * step_m
    return T


def test_rotation_error_is_measured_after_aligning_orientations_and_drift_only_on_long_metric_paths() -> None:
    from recon.eval.pairing import PairedTrajectory
    from recon.eval.trajectory_metrics import trajectory_metrics

    gt = _straight(60, 2.0)
    est = _straight(60, 2.0, roll_deg=10.0)  # every orientation off by the same roll: the world's, not the run's
    est[:, 0, 3] += 0.01 * np.sin(np.arange(60))
    pair = PairedTrajectory(est, gt, np.arange(60) * 0.1, "test")
    metrics, _ = trajectory_metrics(pair, metric=False, gt_metric=True)
    assert metrics["ate"]["rotation_deg_orientation_aligned"]["max"] < 1e-6
    assert "translation_percent" in metrics["kitti_drift"]  # 118 m, metric
    short, _ = trajectory_metrics(
        PairedTrajectory(est[:40], gt[:40], np.arange(40) * 0.1, "test"), metric=False, gt_metric=True
    )
    assert "78 m" in short["kitti_drift"]["skipped"]
    unknown, _ = trajectory_metrics(pair, metric=False, gt_metric=False)
    assert "not known to be metres" in unknown["kitti_drift"]["skipped"]


def test_the_error_plot_marks_window_joins_and_fallback_windows(tmp_path: Path) -> None:
    from recon.eval.run_plots import window_marks
    from recon.summary import RunSummary

    (tmp_path / "frames.txt").write_text("".join(f"{i} {0.1 * i:.6f}\n" for i in range(40)))
    summary = RunSummary(
        alignment=[
            {"frames": [0, 11], "path": "first"},
            {"frames": [8, 19], "path": "lsa"},
            {"frames": [16, 27], "path": "pose_fallback"},
            {"frames": [24, 35], "path": "joint"},
        ]
    )
    joins, fallbacks = window_marks(tmp_path, summary, 0.0)
    assert joins == pytest.approx([0.8, 1.6, 2.4]) and fallbacks == [pytest.approx((1.6, 2.7))]


def test_the_top_view_looks_down_on_a_straight_drive_whatever_the_world_convention() -> None:
    from recon.eval.plots import ground_plane_axes

    # A straight drive along z in a camera-style world (y down): spread only along z, yet the view is x-z.
    drive = np.repeat(np.eye(4)[None], 20, axis=0)
    drive[:, 2, 3] = np.arange(20.0)
    assert ground_plane_axes(drive) == (0, 2)
    # The same cameras in a z-up world (TUM-like: camera y = -world z): x-y.
    z_up = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    assert ground_plane_axes(z_up @ drive) == (0, 1)
