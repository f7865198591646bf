"""`recon batch INPUTS... --out DIR`: one `recon run` per input, as Ray tasks on this machine or a cluster
(recon/batch.py). Prints a line as each input finishes and ends with the table of all (DIR/batch.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recon.errors import ReconError

help = "run many inputs, one `recon run` each, on Ray (this machine or a cluster)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="what `recon run` reads; a folder of videos gives each video, a KITTI sequences/ folder each sequence",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder of the runs: DIR/<name>/ per input, DIR/batch.md, batch.json",
    )
    p.add_argument(
        "--address",
        metavar="ADDRESS",
        help="the Ray cluster: auto (the one this machine is in) or ray://HOST:PORT (default: start Ray here)",
    )
    p.add_argument("--cpus-per-run", type=float, default=2, metavar="N", help="CPUs each run takes (default 2)")
    p.add_argument("--gpus-per-run", type=float, default=0, metavar="G", help="GPUs each run takes (default 0)")
    p.add_argument("--config", metavar="FILE", help="settings for every run (a config file, as `recon run --config`)")


def main(args: argparse.Namespace) -> int:
    from recon.batch import BATCH_JSON, BATCH_TABLE, expand_inputs, run_batch
    from recon.run_table import markdown_table

    if not args.cpus_per_run > 0 or args.gpus_per_run < 0:
        raise ReconError(
            f"need --cpus-per-run > 0 and --gpus-per-run >= 0, got {args.cpus_per_run:g} and {args.gpus_per_run:g}"
        )
    config = None
    if args.config is not None:
        if not Path(args.config).is_file():
            raise ReconError(f"--config {args.config}: no such file")
        config = str(Path(args.config).resolve())
    out = Path(args.out).expanduser().resolve()  # the runs start in Ray's workers, elsewhere
    inputs = expand_inputs(args.inputs)
    print(f"recon batch: {len(inputs)} input{'s' * (len(inputs) != 1)} -> {out}/", flush=True)
    rows = run_batch(
        inputs,
        out,
        config=config,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        log=lambda line: print(line, flush=True),
    )
    print("\n" + markdown_table(rows) + f"\n  -> {out / BATCH_TABLE}, {out / BATCH_JSON}")
    if failed := [r.name for r in rows if r.status != "finished"]:  # the user's inputs: each row says why
        raise ReconError(f"{len(failed)} of {len(rows)} inputs did not finish: {', '.join(failed)}")
    return 0
