"""Map streaks: point-map accuracy and completeness with and without a filter at fusion (`map.consistency_rel`,
multi-view consistency, or `map.edge_jump_rel`, depth edges; issue 14: accuracy must improve, completeness must
not drop by more than 5%).

Each cell is one `recon run` on a rendered sequence (KITTI layout, exact depth), evaluated by the run itself
against the ground-truth depth (`recon eval`'s point-map metrics: accuracy = distance from each map point to the
ground-truth surface, completeness = from the ground truth to the map; means, in metres after the run's Sim(3)
alignment). The two settings differ only in one map setting (--filter; a --config file each).

Run: .venv/bin/python bench/bench_map_filter.py [--scenes street room] [--seeds 1 2] [--frames 90] [--filter consistency_rel=0.05]"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "map_filter"
SIZES = {"street": (640, 192), "room": (320, 240)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=["street", "room"], choices=sorted(SIZES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--filter", default="consistency_rel=0.05", metavar="SETTING=VALUE",
                    help="the map setting compared with the default (default consistency_rel=0.05; or edge_jump_rel=0.1)")
    args = ap.parse_args()
    key, value = args.filter.split("=", 1)
    from recon.datasets.synthetic import render_sequence

    settings = {"no filter (default)": {}, args.filter: {"map": {key: float(value)}}}
    rows = []
    for scene in args.scenes:
        for seed in args.seeds:
            w, h = SIZES[scene]
            seq = OUT / "data" / f"{scene}_{seed}" / "sequences" / scene
            if not (seq / "calib.txt").is_file():
                render_sequence(seq.parent.parent, scene=scene, name=scene, fmt="kitti", num_frames=args.frames, width=w, height=h, seed=seed)
            for name, cfg in settings.items():
                run = OUT / "runs" / f"{scene}_{seed}_{'filter' if cfg else 'none'}"
                config = run.with_suffix(".yaml")
                config.parent.mkdir(parents=True, exist_ok=True)
                config.write_text(yaml.safe_dump(cfg))
                cmd = [sys.executable, "-m", "recon", "run", str(seq), "--config", str(config), "--out", str(run), "--overwrite",
                       "--depth-every", "3"]
                subprocess.run(cmd, check=True, capture_output=True)
                pm = json.loads((run / "metrics.json").read_text()).get("pointmap", {})
                points = json.loads((run / "summary.json").read_text())["map_ply_points"]
                rows.append((f"{scene} s{seed}", name, pm.get("accuracy_mean"), pm.get("completeness_mean"), pm.get("accuracy_median"),
                             pm.get("completeness_median"), points))
                print(f"{rows[-1][0]:10} {name:22} accuracy {rows[-1][2]:.4f} completeness {rows[-1][3]:.4f} points {points}", flush=True)
    print("\n| sequence | setting | accuracy mean (m) | completeness mean (m) | accuracy median | completeness median | map points |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} | {r[6]} |")
    print("\nratios, filter / no filter (accuracy: lower is better; completeness: must stay within 5%)")
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        print(f"  {a[0]:10} accuracy {b[2] / a[2]:.3f}, completeness {b[3] / a[3]:.3f}, points {b[6] / a[6]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
