"""`recon demo` / `make demo`: render a synthetic street drive in the KITTI layout, then run the main job
on it exactly as a user would (`recon run demo_out/kitti/sequences/demo`), saving a Rerun recording, and
report its accuracy against the renderer's ground truth."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from recon.commands import run

help = "render a short street drive and run recon on it"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="where the demo writes (default: demo_out)")
    p.add_argument("--frames", type=int, default=200, help="length of the demo drive (default 200)")


def main(args: argparse.Namespace) -> int:
    from recon.datasets.synthetic import render_sequence

    out = Path(args.out)
    shutil.rmtree(out / "kitti", ignore_errors=True)  # the demo owns this folder: a second run starts fresh
    seq_dir = render_sequence(
        out / "kitti", scene="street", name="demo", fmt="kitti", num_frames=args.frames, seed=0, progress=True
    )
    print(f"rendered {args.frames} frames of a street drive with turns to {seq_dir}")
    rrd = out / "run" / "recording.rrd"
    run_args = [str(seq_dir), "--out", str(out / "run"), "--overwrite", "--rrd", str(rrd)]
    print("running: recon run " + " ".join(run_args))
    parser = argparse.ArgumentParser(prog="recon run")
    run.add_args(parser)
    code = run.main(parser.parse_args(run_args))
    if code == 0:
        print(f"watch it: recon view {rrd}   (or add --viewer spawn / --viewer serve to `recon run` to watch live)")
    return code
