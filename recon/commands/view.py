"""`recon view FILE.rrd`: open a saved recording in the native Rerun viewer, or serve it to a browser."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from recon.viz.sinks import require_display, rerun_binary
from recon.viz.view import check_rrd, serve_rrd

help = "open a saved recording (.rrd) in the Rerun viewer"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a recording saved with `recon run --rrd FILE`")
    parser.add_argument("--web", action="store_true", help="serve it to a browser instead of opening the native viewer")
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address the --web servers listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port of the web viewer with --web (default 9090, or a free one)"
    )


def main(args: argparse.Namespace) -> int:
    path = check_rrd(Path(args.file))
    if args.web:
        return serve_rrd(path, args.bind, args.port)
    require_display("`recon view`", f"use `recon view --web {args.file}` and open the printed address in a browser")
    return subprocess.call([str(rerun_binary()), str(path)])  # returns when the viewer window closes
