"""The live viewer's knobs (`RerunViewer`'s): how much it keeps in flight, how much of each window it logs, how
often the map goes out. Kept apart from the logger so that `recon run` can build them without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewerOptions:
    queue_windows: int = 4  # windows waiting for the viewer thread; one more is dropped
    jpeg_quality: int = 80
    window_points_max: int = 20_000  # per world/windows/<k>
    map_points_max: int = 200_000  # world/map
    map_interval_s: float = 2.0  # the global map (a copy of up to millions of points) at most this often
    trajectory_points_max: int = 20_000  # vertices per trajectory strip (longer paths are strided)
    flush_timeout_s: float = 30.0
    depth_every: int = 1  # every N-th frame's depth and confidence images (0: none): ~0.5 MB a frame of a recording
    linger: bool = False  # close() keeps a served recording up: `linger()` serves until Ctrl-C, then stops
