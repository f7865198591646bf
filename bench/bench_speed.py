"""Speed of the default pipeline (issue 13): frames/s per stage and end to end, against a baseline commit
measured in the same run (these machines are noisy: ratios within one run, not absolute times across runs).

Sequences (rendered once to bench/out/speed/, read back through the KITTI source as a user's data would be):
    drive   the synthetic street drive, 640x192, 300 frames
    room    the synthetic room walk, 640x480, 200 frames
    dtu24   a real 640x480 capture (../shared/data/real; the real ones are skipped where it is absent): a robot
            arm's ~10 degree steps, so most frames need the tracker's full ORB rescue
    dtu37   another DTU scan (the same robot arm and views, another object)
    temple  a real 480x640 (portrait) capture: a gantry's 7.5 degree steps around a plaster temple
    fox     a real 360x640 hand-held phone video orbiting a toy

Each (revision, sequence) is one `recon run` process at default settings (--repeat N: N runs, baseline and now
taking turns, and the median of each figure: one run's end to end moves 5-10% from run to run here). The
baseline revision is built into its own folder (`pip install --no-deps --target`, from a git worktree) and run
by the same interpreter with `-S` (so the editable install's import hook cannot shadow it) and the
environment's site-packages on PYTHONPATH after it: both revisions see the same dependencies. Frames/s come
from the run's summary.json: end to end is frames read over the pipeline's wall time (model start-up excluded,
reported apart: the process's wall time minus the pipeline's and the evaluation's); a stage's figure is frames
read over that stage's seconds (stages overlap in time: the model runs in its own threads, on two windows at
once where it allows, and "infer" sums the seconds of every window, so it can fall while end to end rises).

Run: .venv/bin/python bench/bench_speed.py [--baseline REV] [--only drive room] [--repeat N]"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "speed"
REAL = ROOT.parent / "shared" / "data" / "real" / "sequences"
BASELINE = "df19b9a"  # the last commit before the speed work (issue 13)
STAGES = ("read", "infer", "align", "fuse", "write")


def sequences() -> dict[str, Path]:
    from recon.datasets.synthetic import render_sequence

    seqs: dict[str, Path] = {}
    for name, scene, frames in (("drive", "street", 300), ("room", "room", 200)):
        seq = OUT / name / "sequences" / name
        if not (seq / "times.txt").exists():
            print(f"rendering {name} ({frames} frames) ...", flush=True)
            shutil.rmtree(OUT / name, ignore_errors=True)
            render_sequence(OUT / name, scene=scene, name=name, fmt="kitti", num_frames=frames, seed=5)
        seqs[name] = seq
    for name in ("dtu24", "dtu37", "temple", "fox"):
        if (REAL / name).is_dir():
            seqs[name] = REAL / name
    return seqs


def build_baseline(rev: str, into: Path) -> Path:
    """The package at `rev`, installed (without dependencies) into `into`: a folder for PYTHONPATH."""
    tree = into / "tree"
    added = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], capture_output=True, text=True
    )
    if added.returncode != 0:
        raise SystemExit(
            f"{Path(sys.argv[0]).name}: no revision {rev!r} in {ROOT} ({added.stderr.strip().splitlines()[-1]})"
        )
    try:
        site = into / "site"
        built = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(site),
                str(tree),
            ],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            lines = built.stderr.strip().splitlines()
            raise SystemExit(f"{Path(sys.argv[0]).name}: {rev} did not build: {lines[-1] if lines else 'pip failed'}")
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True, capture_output=True
        )
    where = subprocess.run(
        python(site) + ["-c", "import recon.pipeline; print(recon.pipeline.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        env=environment(site),
        cwd=into,
    ).stdout.strip()
    if not where.startswith(str(site)):
        raise SystemExit(f"bench_speed: the baseline imports {where}, not its own build in {site}")
    return site


def python(baseline_site: Path | None) -> list[str]:
    return [sys.executable, "-S"] if baseline_site is not None else [sys.executable]


def environment(baseline_site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if baseline_site is not None:
        paths = sysconfig.get_paths()
        env["PYTHONPATH"] = os.pathsep.join([str(baseline_site), paths["purelib"], paths["platlib"]])
    return env


def run(seq: Path, out: Path, baseline_site: Path | None) -> dict:
    t = time.perf_counter()
    cmd = python(baseline_site) + ["-m", "recon", "run", str(seq), "--out", str(out), "--overwrite"]
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(baseline_site),
        cwd=out.parent,
    )
    process_s = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    frames = summary["frames_read"]
    figures = {"end_to_end": frames / summary["elapsed_s"]}
    figures |= {stage: frames / max(summary["timings_s"][stage], 1e-9) for stage in STAGES}
    figures["startup_s"] = process_s - summary["elapsed_s"]  # model start-up, imports and the closing evaluation
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help=f"git revision to compare with (default {BASELINE})")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="some of: drive room dtu24 dtu37 temple fox")
    ap.add_argument("--repeat", type=int, default=1, help="runs per revision and sequence; medians (default 1)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    seqs = {k: v for k, v in sequences().items() if not args.only or k in args.only}
    with tempfile.TemporaryDirectory(prefix="bench_speed.") as tmp:
        site = build_baseline(args.baseline, Path(tmp))
        print(
            f"| sequence | revision | end to end f/s{' (min-max)' if args.repeat > 1 else ''} | {' | '.join(STAGES)} (f/s) "
            "| start-up + eval s |\n|" + "---|" * (4 + len(STAGES))
        )
        revisions = (("baseline", site), ("now", None))
        for name, seq in seqs.items():
            runs: dict[str, list[dict]] = {label: [] for label, _ in revisions}
            for _ in range(args.repeat):
                for label, path in revisions:
                    out = OUT / "runs" / f"{name}_{label}"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    runs[label].append(run(seq, out, path))
            rows = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
            for label, path in revisions:
                f = rows[label]
                e2e = [r["end_to_end"] for r in runs[label]]
                spread = f" ({min(e2e):.2f}-{max(e2e):.2f})" if len(e2e) > 1 else ""
                print(
                    f"| {name} | {label if path is None else args.baseline} | {f['end_to_end']:.2f}{spread} | "
                    f"{' | '.join(f'{f[s]:.1f}' for s in STAGES)} | {f['startup_s']:.1f} |",
                    flush=True,
                )
            ratio = rows["now"]["end_to_end"] / rows["baseline"]["end_to_end"]
            stage_ratios = " | ".join(f"{rows['now'][s] / rows['baseline'][s]:.2f}" for s in STAGES)
            print(f"| {name} | now / baseline | **{ratio:.2f}x** | {stage_ratios} | |", flush=True)


if __name__ == "__main__":
    main()
