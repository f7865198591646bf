"""Where a `recon run` spends its CPU (issue 13): the top functions by self time over every thread of the
pipeline (the producer, the model's window and flow threads, the core), before and after, in one run.

cProfile runs on each thread from the moment the pipeline starts until it ends (the evaluation afterwards
is left out), timing with the thread's CPU clock: a thread waiting for a core (two cores, busier threads)
is not charged for it. Native worker threads (OpenCV's parallel_for_, OpenMP) are not Python threads and
are not seen: what OpenCV and Open3D run there is missing from the totals. The waits (locks, queues, sleeps) are dropped, so what remains is work. cProfile slows
Python-level code more than native code, so read the shares, not the seconds, and compare revisions only
within one run of this script. The baseline revision is built and run as bench/bench_speed.py does it.

Run: .venv/bin/python bench/profile_run.py [SEQ] [--baseline REV] [--top 10]
     (SEQ defaults to bench_speed's drive, rendered on first use)"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WAITS = ("acquire' of '_thread", "get' of '_queue", "'wait'", "time.sleep", "select", "'poll'", "_wait_for_tstate_lock")


def profile_here(seq: str, out: str) -> list[dict[str, Any]]:
    """`recon run seq` in this process, every pipeline thread profiled -> rows {function, self_s, calls}."""
    import recon.pipeline as pipeline_module

    profiles: list[cProfile.Profile] = []
    on = threading.Event()
    thread_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        if not on.is_set():
            return thread_run(self)
        p = cProfile.Profile(time.thread_time)
        profiles.append(p)
        p.enable()
        try:
            thread_run(self)
        finally:
            p.disable()

    pipeline_run = pipeline_module.Pipeline.run

    def profiled_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        p = cProfile.Profile(time.thread_time)
        profiles.append(p)
        on.set()
        p.enable()
        try:
            return pipeline_run(self, *args, **kwargs)
        finally:
            p.disable()
            on.clear()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    pipeline_module.Pipeline.run = profiled_pipeline  # type: ignore[method-assign]
    from recon.cli import main

    sys.argv = ["recon", "run", seq, "--out", out, "--overwrite"]
    with contextlib.suppress(SystemExit):  # the command's exit status: the profile is what is wanted
        main()
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    rows = []
    for (filename, line, name), (_, calls, self_s, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        label = f"{name}" if filename == "~" else f"{_short(filename)}:{line}({name})"
        if not any(w in label for w in WAITS):
            rows.append({"function": label, "self_s": self_s, "calls": calls})
    return sorted(rows, key=lambda r: -r["self_s"])


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/recon/", "/kernels/", "/datasets/", "/eval/", "/viz/"):
        if marker in filename:
            return (
                filename.split(marker, 1)[1]
                if marker == "site-packages/"
                else marker.strip("/") + "/" + filename.split(marker, 1)[1]
            )
    return Path(filename).name


def table(rows: list[dict[str, Any]], top: int) -> str:
    total = sum(r["self_s"] for r in rows)
    lines = ["| # | function | self CPU s | share | calls |", "|---|---|---|---|---|"]
    for i, r in enumerate(rows[:top], 1):
        lines.append(
            f"| {i} | `{r['function']}` | {r['self_s']:.2f} | {100 * r['self_s'] / total:.1f}% | {r['calls']} |"
        )
    lines.append(f"| | all work (CPU seconds, waits left out) | {total:.2f} | 100% | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seq", nargs="?", help="a sequence `recon run` reads (default: bench_speed's drive)")
    ap.add_argument("--baseline", help="also profile this git revision (built as bench_speed does)")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", help=argparse.SUPPRESS)  # internal: profile here, rows to this file
    args = ap.parse_args()
    if args.json:
        with tempfile.TemporaryDirectory() as tmp:
            Path(args.json).write_text(json.dumps(profile_here(args.seq, f"{tmp}/run")))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_speed

    # The runs start in a scratch folder, so a relative path is made absolute here.
    seq = str(Path(args.seq).resolve()) if args.seq else str(bench_speed.sequences()["drive"])
    revisions: list[tuple[str, Path | None]] = [("now", None)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            print(f"building {args.baseline} ...", flush=True)
            revisions.insert(0, (args.baseline, bench_speed.build_baseline(args.baseline, Path(tmp))))
        for name, site in revisions:
            print(f"profiling {name} on {seq} ...", flush=True)
            rows_file = Path(tmp) / f"{name}.json"
            subprocess.run(
                [*bench_speed.python(site), str(Path(__file__).resolve()), seq, "--json", str(rows_file)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=bench_speed.environment(site),
                cwd=tmp,
            )
            print(f"\n### {name}: top {args.top} by self time, every pipeline thread\n")
            print(table(json.loads(rows_file.read_text()), args.top))


if __name__ == "__main__":
    main()
