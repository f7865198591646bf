"""What a user sees first: a headless Chromium screenshot of the live web viewer (`recon run --viewer serve`)
while it serves a finished run, and the run's plots beside it.

`make screenshot` installs Debian's Chromium when missing, and Playwright (the `screenshot` extra) to drive
it, and runs this. The run is a rendered street (the embedded default model); the viewer keeps serving after
the run ends (until Ctrl-C), which is when the page is loaded, given time to draw, and photographed.

Run: .venv/bin/python bench/screenshot_viewer.py [--frames 60] [--wait 25] [--chromium /usr/bin/chromium]"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "screenshots"
URL = re.compile(r"open (http://\S+) in a browser")
SERVING = "keeps serving it until Ctrl-C"
# Chromium on a machine without a GPU or a network: software WebGL, no background connections.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def photograph(url: str, shot: Path, chromium: str, wait_s: float, size: tuple[int, int]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url)
            page.wait_for_selector("canvas", timeout=60_000)
            page.wait_for_timeout(wait_s * 1000)  # the viewer streams the recording in, then lays it out
            page.screenshot(path=str(shot))
        finally:
            browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument(
        "--wait", type=float, default=30.0, help="seconds the viewer gets to load and draw before the screenshot"
    )
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--size", default="1600,1000", help="window size W,H")
    args = ap.parse_args()
    if not Path(args.chromium).is_file():
        print(f"no Chromium at {args.chromium}: `make screenshot` installs Debian's", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = OUT / "run"
    cmd = [
        sys.executable,
        "-m",
        "recon",
        "run",
        "synthetic:street",
        "--max-frames",
        str(args.frames),
        "--viewer",
        "serve",
        "--out",
        str(run_dir),
        "--overwrite",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            url = url or (m.group(1) if (m := URL.search(line)) else None)
            if SERVING in line:
                break
        if url is None or proc.poll() is not None:
            print("the run ended without serving a viewer", file=sys.stderr)
            return 1
        shot = OUT / "viewer.png"
        t = time.perf_counter()
        photograph(url, shot, args.chromium, args.wait, tuple(int(v) for v in args.size.split(",")))
        print(f"viewer screenshot ({time.perf_counter() - t:.0f} s in Chromium): {shot}")
        for plot in sorted((run_dir / "plots").glob("*.png")):
            shutil.copy(plot, OUT / plot.name)
            print(f"plot: {OUT / plot.name}")
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: what ends serving
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
