"""The one-frame walk, measured (issue 18): which of recon's files a frame passes through on its way from the
video to the map, read off the call stacks of a real `recon run` on a short video.

The run goes through the console script's own entry (recon.__main__.entry). Four moments are caught, each the
first time it happens: a frame is read from the video, the model gets a window, the window is placed in the
world, the map takes its points. For each, the recon files on that thread's stack are printed; the walk is
their union, in order of first appearance, with the process plumbing (the entry's signal set-up, the
command dispatcher and its one-line errors) listed apart from the path of the frame.

    python bench/frame_walk.py
"""

from __future__ import annotations

import sys
import tempfile
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import cv2

import recon
from recon.datasets.synthetic import SyntheticSource

REPO = Path(recon.__file__).resolve().parent.parent
PLUMBING = ("recon/__main__.py", "recon/cli.py")
MOMENTS = {
    ("datasets/video.py", "__iter__"): "a frame is read",
    ("recon/models/classical/model.py", "infer"): "the model gets its window",
    ("recon/align/window.py", "place_window"): "the window is placed in the world",
    ("recon/fusion.py", "integrate"): "the map takes its points",
}


def _repo_file(filename: str) -> str | None:
    path = Path(filename).resolve()
    inside = path.is_relative_to(REPO) and "site-packages" not in filename and not filename.endswith("frame_walk.py")
    return str(path.relative_to(REPO)) if inside else None


def main() -> None:
    stacks: dict[str, list[str]] = {}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        what = MOMENTS.get((_repo_file(frame.f_code.co_filename) or "", frame.f_code.co_name))
        if what is not None and what not in stacks:
            stacks[what] = [
                f"{f}:{s.name}" for s in traceback.extract_stack(frame) if (f := _repo_file(s.filename)) is not None
            ]

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "walk.mp4"
        writer = None
        for f in SyntheticSource("street", num_frames=30, width=320, height=96, seed=1):
            if writer is None:
                writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 10, (320, 96))
            writer.write(cv2.cvtColor(f.image_rgb, cv2.COLOR_RGB2BGR))
        assert writer is not None
        writer.release()
        sys.argv = ["recon", "run", str(video), "--out", f"{tmp}/out", "--viewer", "none", "--no-loop-closure"]
        sys.setprofile(profile)
        threading.setprofile(profile)
        try:
            from recon.__main__ import entry

            entry()
        except SystemExit:
            pass
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]

    for what in MOMENTS.values():
        print(f"== {what}")
        for call in stacks.get(what, ["(not reached)"]):
            print(f"     {call}")
    # In the order the frame meets them: the command's stack down to the pipeline, then the model thread's
    # stacks (read, infer), then the rest of the command's (core, the window placed, the map).
    main_stack, thread_stacks = stacks.get(list(MOMENTS.values())[-1], []), []
    for what in list(MOMENTS.values())[:2]:
        thread_stacks += stacks.get(what, [])
    cut = next((i for i, c in enumerate(main_stack) if c.startswith("recon/pipeline.py")), len(main_stack))
    walk: list[str] = []
    placed = stacks.get(list(MOMENTS.values())[2], [])
    for call in main_stack[: cut + 1] + thread_stacks + placed + main_stack[cut:]:
        file = call.split(":")[0]
        if file not in walk and file not in PLUMBING:
            walk.append(file)
    print(f"\nprocess plumbing (entry, dispatch, one-line errors): {', '.join(PLUMBING)}")
    print(f"the frame's walk, from the command's flags to the map: {len(walk)} files")
    for file in walk:
        print(f"  {file}")


if __name__ == "__main__":
    main()
