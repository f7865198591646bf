"""`recon export RUN --format colmap|nerfstudio`: a finished run as a COLMAP model or a nerfstudio dataset
(recon.export writes them)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from recon.errors import ReconError
from recon.export import IMAGE_FORMATS, export_run
from recon.outputs import EXPORT_FORMATS

help = "write a run as a COLMAP model or a nerfstudio dataset (images, poses, points)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run's output folder (what `recon run --out` wrote)")
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="colmap",
        help="colmap: images/ + sparse/0/ (cameras, images, points3D); nerfstudio: images/ + transforms.json + sparse_pc.ply",
    )
    p.add_argument("--to", metavar="DIR", help="where to write (default: RUN/colmap or RUN/nerfstudio)")
    p.add_argument(
        "--every", type=int, default=1, metavar="N", help="export every N-th trajectory frame (default 1: all)"
    )
    p.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default="jpg",
        help="images as jpg (quality 95, default) or png (lossless)",
    )
    p.add_argument(
        "--text", action="store_true", help="colmap: write the text format (cameras.txt, ...) instead of the binary one"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in the target folder")


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if args.every < 1:
        raise ReconError(f"--every must be >= 1, got {args.every}")
    target = Path(args.to) if args.to else run_dir / args.format
    scene = export_run(
        run_dir,
        target,
        args.format,
        every=args.every,
        image_format=args.image_format,
        text=args.text,
        overwrite=args.overwrite,
    )
    observations = sum(len(i) for i, _ in scene.observed)
    print(
        f"{len(scene.views)} images, {len(np.unique(np.concatenate([i for i, _ in scene.observed] or [np.zeros(0, np.int64)])))} "
        f"of {len(scene.xyz)} map points observed ({observations} observations) -> {target}/"
    )
    return 0
