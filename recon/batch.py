"""`recon batch`: one `recon run` per input, each a Ray task with the CPUs (and GPUs) it declares, on a Ray
cluster or on Ray started on this machine. Each run writes OUT/<name>/ exactly as `recon run --out` does and
runs in its own process (its peak memory is its own, and a crash stays in it). An input that fails is
reported and the others go on; an input whose folder holds a finished run is skipped, so a re-run resumes.
At the end OUT/batch.md and OUT/batch.json hold one row per input (recon/run_table.py).

On a cluster, every node needs recon installed and the inputs and OUT at the same paths (shared storage)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from recon.datasets import detect_kind
from recon.datasets.video import VIDEO_EXTENSIONS
from recon.errors import ReconError, SourceError
from recon.outputs import atomic_write_json, atomic_write_text, prepare_out_dir
from recon.ray_cluster import check_resources, import_ray, start_ray
from recon.run_table import RunRow, markdown_table, read_run_row
from recon.summary import RunSummary

BATCH_TABLE, BATCH_JSON = "batch.md", "batch.json"


@dataclass(frozen=True)
class BatchInput:
    name: str  # its run's folder under OUT
    spec: str  # what `recon run` reads


def expand_inputs(specs: Sequence[str]) -> list[BatchInput]:
    """One input per spec, except folders that hold several: a KITTI `sequences/` folder (or the KITTI root
    above it) gives each sequence in it, a folder of videos each video. Nothing is read: an input that cannot
    be opened fails in its own run, with `recon run`'s message."""
    found: list[tuple[str, str]] = []
    for spec in specs:
        path = Path(spec).expanduser()
        members = _members(path) if path.is_dir() else None
        if members:
            found += [(_name(m), str(m.resolve())) for m in members]
        else:  # a sequence, a video, a camera, a stream URL, synthetic:SCENE
            found.append((_name(path), str(path.resolve()) if path.exists() else spec))
    taken: dict[str, int] = {}
    inputs = []
    for name, spec in found:  # the same name twice (two 'video.mp4' in two folders): name-2, name-3
        clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"
        taken[clean] = taken.get(clean, 0) + 1
        inputs.append(BatchInput(clean if taken[clean] == 1 else f"{clean}-{taken[clean]}", spec))
    return inputs


def _members(folder: Path) -> list[Path] | None:
    """The sequences or videos a folder holds; None when it is one input itself (or holds neither)."""
    try:
        detect_kind(folder)
        return None  # a KITTI or TUM sequence, or a folder of images: one input
    except SourceError:
        pass
    root = folder / "sequences" if (folder / "sequences").is_dir() else folder
    sequences = sorted(d for d in root.iterdir() if d.is_dir() and (d / "image_2").is_dir())
    if sequences:
        return sequences
    videos = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
    return videos or None


def _name(path: Path) -> str:
    if path.name == "image_2":  # a KITTI sequence given by its image folder
        path = path.parent
    return (path.name if path.is_dir() else path.stem) or str(path)


def finished(run_dir: Path) -> bool:
    """The folder holds a run that ran to its end."""
    try:
        return RunSummary.read(run_dir).status == "finished"
    except ReconError:
        return False


# A run must not outlive the Ray worker that started it (a batch stopped by Ctrl-C shuts Ray down, and its
# workers are killed): the child asks Linux for SIGTERM when its parent exits, on which `recon run` flushes its
# finished windows and stops, and only then becomes `recon run`.
_CHILD = """import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit(143)  # the parent is gone already
os.execv(sys.executable, [sys.executable, "-m", "recon", *sys.argv[2:]])
"""


def run_one(spec: str, out_dir: str, config: str | None) -> tuple[int, str]:
    """In a Ray worker: `recon run spec --out out_dir` as its own process -> (exit code, its last error line)."""
    cmd = [sys.executable, "-c", _CHILD, str(os.getpid()), "run", spec, "--out", out_dir, "--overwrite"]
    if config is not None:
        cmd += ["--config", config]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    if proc.returncode == 0:
        return 0, ""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("recon: error:")]
    return proc.returncode, (errors or lines or [f"recon run ended with exit code {proc.returncode}"])[-1]


def run_batch(
    inputs: list[BatchInput],
    out: Path,
    *,
    config: str | None = None,
    address: str | None = None,
    cpus_per_run: float = 2,
    gpus_per_run: float = 0,
    log: Callable[[str], None] = print,
) -> list[RunRow]:
    """Every input's run (those finished before are skipped) -> one row per input, in the inputs' order;
    OUT/batch.md and OUT/batch.json hold them."""
    prepare_out_dir(out)  # a folder it cannot write is one line before any run starts
    rows: dict[str, RunRow] = {}
    todo = []
    for inp in inputs:
        if finished(out / inp.name):
            rows[inp.name] = read_run_row(inp.name, out / inp.name)
            log(f"[{len(rows)}/{len(inputs)}] {inp.name}: finished in an earlier batch, skipped")
        else:
            todo.append(inp)
    if todo:
        ray = import_ray("batch")
        start_ray(ray, address)
        try:
            check_resources(ray, cpus_per_run, gpus_per_run)
            task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(run_one)
            pending = {task.remote(inp.spec, str(out / inp.name), config): inp for inp in todo}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                inp = pending.pop(ready[0])
                code, error = ray.get(ready[0])
                row = read_run_row(inp.name, out / inp.name, error)
                if code and row.status == "finished":  # it finished, then failed (e.g. its evaluation)
                    row = RunRow(inp.name, "failed", error=error)
                rows[inp.name] = row
                log(f"[{len(rows)}/{len(inputs)}] {inp.name}: {_progress(row)}")
        finally:
            ray.shutdown()
    ordered = [rows[inp.name] for inp in inputs]
    atomic_write_text(out / BATCH_TABLE, markdown_table(ordered) + "\n")
    atomic_write_json(out / BATCH_JSON, {"runs": [dict(r.to_json(), input=i.spec) for r, i in zip(ordered, inputs)]})
    return ordered


def _progress(row: RunRow) -> str:
    if row.error:
        return f"{row.status}: {row.error}"
    parts = [row.status, f"{row.frames} frames", f"{row.fps:.1f} frames/s", f"peak {row.peak_rss_mb:.0f} MB"]
    if row.ate_pct is not None:
        parts.append(f"ATE {row.ate_pct:.2f}% of path")
    return ", ".join(parts)
