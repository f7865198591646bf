"""Map streaks: the map with and without the fusion filters (issue 14: accuracy must improve, completeness
must not drop by more than 5%). "no filter" turns the multi-view consistency check off (`map.consistency_px:
null`); "default" is recon's defaults; each --filter adds a setting (YAML values, `;` between settings).

Each cell is one `recon run` on a rendered sequence (KITTI layout, exact depth), its map.ply compared with the
ground-truth depth of the sampled frames back-projected by the ground-truth poses. The map is placed in the
ground truth's world by the run's own poses only (no ICP: a filter changes the map, never the trajectory, so
every setting of one sequence is judged in the same frame and the differences are the map's alone).
Accuracy = est -> gt distance, completeness = gt -> est (means, metres); precision / recall = shares within
5 voxels (5% of the median depth). Recall is the completeness that counts: the mean distance is dominated by
the far background rows (40-80 m, 8% of the ground truth, most of the mean) and grows whenever a map thins,
covered or not. With ../shared present, temple (a real capture of one object on black) follows: the share of
map points off the object's silhouettes.

Run: .venv/bin/python bench/bench_map_filter.py [--scenes street room] [--seeds 1 2 3] [--frames 90]
     [--filter edge_jump_rel=0.1 'consistency_px=2;consistency_offsets=[-2,2]' ...]"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "map_filter"
REAL = HERE.parent.parent / "shared" / "data" / "real"
SIZES = {"street": (640, 192), "room": (320, 240)}


@dataclass(frozen=True)
class Row:
    sequence: str
    setting: str
    accuracy: float
    completeness: float
    precision: float
    recall: float
    points: int


def evaluate(run: Path) -> dict[str, float | int]:
    from recon.eval.geometry_inputs import load_geometry_inputs
    from recon.eval.geometry_metrics import pointmap_metrics
    from recon.summary import read_summary

    summary = read_summary(run)
    g = load_geometry_inputs(run, summary, max_samples=1000)
    assert not isinstance(g, str), g
    pm = pointmap_metrics(run, g, metric=False, icp="none")
    assert not isinstance(pm, str), pm
    return {
        "accuracy": pm["accuracy_mean"],
        "completeness": pm["completeness_mean"],
        "precision": pm["precision"],
        "recall": pm["recall"],
        "points": summary["map_ply_points"],
    }


def off_silhouette(run: Path, seq: Path, dark: int = 10, margin_px: int = 8, min_share: float = 0.9) -> float:
    """Share of map points off the object: a capture of one object on a black background (temple) bounds the
    object by its silhouettes (the visual hull). A map point placed in the ground truth's world by the run's
    poses must land on the silhouette (grey level above `dark`, grown by margin_px) in at least min_share
    of the views it projects into; streaks and background do not."""
    import cv2
    import numpy as np

    from recon.datasets import open_source
    from recon.geometry import invert_rigid
    from recon.map_ply import read_map_ply
    from recon.pose_fit import sim3_from_poses
    from recon.trajectory_io import read_frames, read_tum

    _, est_world_from_cam = read_tum(run / "trajectory.tum")
    indices, _ = read_frames(run / "frames.txt")
    frames = {f.index: f for f in open_source(seq)}
    pairs = [
        (est_world_from_cam[n], frames[i]) for n, i in enumerate(indices[: len(est_world_from_cam)]) if i in frames
    ]
    gt_from_est = sim3_from_poses(
        np.stack([e for e, _ in pairs]),
        np.stack([invert_rigid(f.gt_cam_from_world) for _, f in pairs]),
        with_scale=True,
    )
    xyz = read_map_ply(run / "map.ply")[0].astype(np.float64)
    xyz = gt_from_est.s * xyz @ gt_from_est.R.T + gt_from_est.t
    seen, on = np.zeros(len(xyz)), np.zeros(len(xyz))
    grow = np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8)
    for _, f in pairs:
        silhouette = cv2.dilate((f.image_rgb.mean(axis=2) > dark).astype(np.uint8), grow) > 0
        p = xyz @ f.gt_cam_from_world[:3, :3].T + f.gt_cam_from_world[:3, 3]
        z = np.maximum(p[:, 2], 1e-9)
        u = np.round(f.K[0, 0] * p[:, 0] / z + f.K[0, 2]).astype(np.int64)
        v = np.round(f.K[1, 1] * p[:, 1] / z + f.K[1, 2]).astype(np.int64)
        H, W = silhouette.shape
        inside = (p[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        seen += inside
        on[inside] += silhouette[v[inside], u[inside]]
    return float(np.mean(on < min_share * seen))


def run_recon(seq: Path, run: Path, cfg: dict, *extra: str) -> None:
    config = run.with_suffix(".yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "recon",
        "run",
        str(seq),
        "--config",
        str(config),
        "--out",
        str(run),
        "--overwrite",
        *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=["street", "room"], choices=sorted(SIZES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument(
        "--filter",
        nargs="*",
        default=[],
        metavar="SETTING=VALUE[;SETTING=VALUE]",
        help="more map settings, each compared with no filter (YAML values; e.g. edge_jump_rel=0.1 or 'consistency_px=2;consistency_offsets=[-2,2]')",
    )
    args = ap.parse_args()
    from recon.datasets.synthetic import render_sequence

    settings: dict[str, dict] = {"no filter": {"map": {"consistency_px": None}}, "default": {}}
    for f in args.filter:
        settings[f] = {"map": {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in f.split(";"))}}
    rows = []
    for scene in args.scenes:
        for seed in args.seeds:
            w, h = SIZES[scene]
            seq = OUT / "data" / f"{scene}_{seed}" / "sequences" / scene
            if not (seq / "calib.txt").is_file():
                render_sequence(
                    seq.parent.parent,
                    scene=scene,
                    name=scene,
                    fmt="kitti",
                    num_frames=args.frames,
                    width=w,
                    height=h,
                    seed=seed,
                )
            for name, cfg in settings.items():
                run = OUT / "runs" / f"{scene}_{seed}_{_slug(name)}"
                run_recon(seq, run, cfg, "--depth-every", "3")
                rows.append(Row(f"{scene} s{seed}", name, **evaluate(run)))
                r = rows[-1]
                print(
                    f"{r.sequence:10} {name:30} accuracy {r.accuracy:.4f} completeness {r.completeness:.4f} precision {r.precision:.3f} "
                    f"recall {r.recall:.3f} points {r.points}",
                    flush=True,
                )
    print("\n| sequence | setting | accuracy mean (m) | completeness mean (m) | precision | recall | map points |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.sequence} | {r.setting} | {r.accuracy:.4f} | {r.completeness:.4f} | {r.precision:.3f} | {r.recall:.3f} | {r.points} |"
        )
    print(
        "\nratios, setting / no filter (accuracy: lower is better; recall, the share of the ground truth the map covers: "
        "must not drop by more than 5%; mean completeness distance also grows as a map thins)"
    )
    n = len(settings)
    for name in list(settings)[1:]:
        pairs = [(rows[i], rows[i + list(settings).index(name)]) for i in range(0, len(rows), n)]
        for a, b in pairs:
            print(
                f"  {a.sequence:10} {name:30} accuracy {b.accuracy / a.accuracy:.3f}, completeness {b.completeness / a.completeness:.3f}, "
                f"precision {b.precision / a.precision:.3f}, recall {b.recall / a.recall:.3f}, points {b.points / a.points:.3f}"
            )
        worst = [
            max(b.accuracy / a.accuracy for a, b in pairs),
            max(b.completeness / a.completeness for a, b in pairs),
            min(b.recall / a.recall for a, b in pairs),
        ]
        print(f"  {'worst':10} {name:30} accuracy {worst[0]:.3f}, completeness {worst[1]:.3f}, recall {worst[2]:.3f}")

    temple = REAL / "sequences" / "temple"
    if not temple.is_dir():
        print(f"\ntemple: skipped ({temple} is absent)")
        return 0
    print("\ntemple (real, black background): share of map points off the object's silhouettes")
    for name, cfg in settings.items():
        run = OUT / "runs" / f"temple_{_slug(name)}"
        run_recon(temple, run, cfg)
        points = read_summary_points(run)
        print(f"  {name:30} off the object {100 * off_silhouette(run, temple):5.1f}%  points {points}", flush=True)
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def read_summary_points(run: Path) -> int:
    import json

    return int(json.loads((run / "summary.json").read_text())["map_ply_points"])


if __name__ == "__main__":
    raise SystemExit(main())
