"""Saved recordings (.rrd) for `recon view`: the check that a file is one, and serving one to a browser."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from recon.errors import ReconError
from recon.viz.blueprint import default_blueprint
from recon.viz.sinks import serve_web_viewer

RRD_MAGIC = b"RRF"  # every .rrd version starts with RRF0 / RRF1 / RRF2


def check_rrd(path: Path) -> Path:
    if not path.exists():
        raise ReconError(f"{path}: no such file")
    if not path.is_file():
        raise ReconError(f"{path}: not a file; give a recording saved with `recon run --rrd FILE`")
    try:
        with path.open("rb") as f:
            magic = f.read(len(RRD_MAGIC))
    except OSError as e:
        raise ReconError(f"{path}: cannot read it ({e.strerror})") from e
    if magic != RRD_MAGIC:
        raise ReconError(f"{path}: not a Rerun recording (.rrd); save one with `recon run --rrd FILE`")
    return path


def serve_rrd(path: Path, bind: str, web_port: int | None) -> int:
    """Replay the file into an in-process gRPC server bound to `bind` and serve the web viewer beside it, until
    Ctrl-C. (`rerun FILE --serve-web` would do both, but keeps a CPU core busy for as long as it serves.)"""
    import rerun as rr
    from rerun.chunk import RrdReader

    try:
        reader = RrdReader(path)
        entry = reader.recordings()[0]
    except (ValueError, IndexError, OSError, RuntimeError) as e:  # RuntimeError: rerun's decoder on a corrupt file
        raise ReconError(f"{path}: cannot read the recording ({e})") from e
    recording = rr.RecordingStream(entry.application_id, recording_id=entry.recording_id)
    # The server keeps everything for browsers that connect later: room for the whole file.
    sink, stop_web_viewer = serve_web_viewer(
        bind, web_port, server_memory_limit=f"{max(1, math.ceil(2 * path.stat().st_size / 2**30))}GiB"
    )
    try:
        recording.set_sinks(sink)
        recording.send_blueprint(default_blueprint(), make_active=True, make_default=True)
        recording.send_chunks(reader.stream())
        recording.flush()
        print("recon: serving until Ctrl-C", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        recording.disconnect()
        stop_web_viewer()
