"""Sequences x settings -> one markdown table of accuracy, speed and memory, so any change can be compared
with the last in one run.

Each cell is its own `recon run` process (peak RSS is per run) on a sequence read from disk as a user's
data would be; `recon run` evaluates itself against the source's ground truth (metrics.json), and the
table reads that and summary.json (recon/run_table.py: the table `recon batch` writes). Synthetic sequences are rendered once to bench/out/matrix/data/.

Run: .venv/bin/python bench/bench_matrix.py [--sequences street room fox] [--frames 300]
     [--setting NAME='--flags ...' ...] [--setting NAME=FILE.yaml ...] [--out bench/out/matrix/table.md]

A setting is `recon run` flags, or a config file (a value ending in .yaml / .yml: `--config FILE`, the same
nested settings OUT/config.yaml holds)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from recon.run_table import RunRow, markdown_table, read_run_row

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "matrix"
REAL = HERE.parent.parent / "shared" / "data" / "real" / "sequences"

DEFAULT_SETTINGS = {
    "default": "",
    "sim3-only": "--align sim3",
    "window 12/3": "--window 12 --overlap 3",
}


def synthetic_sequence(scene: str, frames: int) -> Path:
    """Rendered once in the KITTI layout (it carries the calibration) and reused."""
    from recon.datasets.synthetic import render_sequence

    root = OUT / "data" / f"{scene}_{frames}"
    seq = root / "sequences" / scene
    marker = root / ".complete"
    if not marker.exists():
        print(f"rendering {scene}, {frames} frames ...", file=sys.stderr, flush=True)
        render_sequence(root, scene=scene, name=scene, fmt="kitti", num_frames=frames, seed=5)
        marker.write_text("ok")
    return seq


def sequence_path(name: str, frames: int) -> Path | None:
    if name in ("street", "room"):
        return synthetic_sequence(name, frames)
    path = REAL / name
    return path if path.is_dir() else None


def run_cell(seq: Path, out: Path, flags: str, name: str) -> RunRow:
    setting = ["--config", flags] if flags.strip().endswith((".yaml", ".yml")) else shlex.split(flags)
    cmd = [
        sys.executable,
        "-m",
        "recon",
        "run",
        str(seq),
        "--out",
        str(out),
        "--overwrite",
        "--depth-every",
        "10",
        *setting,
    ]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return RunRow(name, "failed", error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return read_run_row(name, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sequences",
        nargs="+",
        default=["street", "room", "fox"],
        help="street, room (rendered) or a folder name under shared/data/real/sequences",
    )
    ap.add_argument("--frames", type=int, default=300, help="length of the rendered sequences (default 300)")
    ap.add_argument(
        "--setting",
        action="append",
        metavar="NAME=FLAGS",
        help="a column: `recon run` flags, or a config file (.yaml) (repeatable; default: a built-in set)",
    )
    ap.add_argument("--out", type=Path, default=OUT / "table.md")
    args = ap.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting) if args.setting else DEFAULT_SETTINGS

    rows: list[RunRow] = []
    for name in args.sequences:
        seq = sequence_path(name, args.frames)
        if seq is None:
            print(f"skipping {name}: not found", file=sys.stderr)
            continue
        for label, flags in settings.items():
            cell = OUT / "runs" / f"{name}_{label.replace(' ', '_').replace('/', '-')}"
            rows.append(run_cell(seq, cell, flags, f"{name} / {label}"))
            print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()
