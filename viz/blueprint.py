"""The layout a recording opens with: the 3D scene large, the current frame's image / depth / confidence
beside it, the run's plots and the window log below. The entity paths the logger
(`recon.viz.rerun_viewer`) writes to are defined here too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import rerun.blueprint as rrb

# Entity paths shared with the logger (kept here so the layout and the data cannot drift apart).
WORLD = "world"
CAMERA = "world/camera"  # Transform3D world_from_cam
IMAGE_PLANE = "world/camera/image"  # Pinhole (K); the images below it
RGB = f"{IMAGE_PLANE}/rgb"
DEPTH = f"{IMAGE_PLANE}/depth"
CONFIDENCE = f"{IMAGE_PLANE}/confidence"
TRAJECTORY = "world/trajectory/estimate"
TRAJECTORY_GT = "world/trajectory/ground_truth"
WINDOWS = "world/windows"  # world/windows/<k>: Transform3D world_from_window + points in the window frame
MAP = "world/map"  # the fused global map, replaced in place
PLOTS = "plots"
ALIGNMENT_PLOTS = "plots/alignment"
RUN_PLOTS = "plots/run"  # stats keys without a '/' (fps, rss_mb, map_points, ...)
WINDOW_LOG = "log/windows"


@dataclass(frozen=True)
class Eye:
    """Where the 3D eye starts, world coordinates."""

    position: tuple[float, float, float]
    look_target: tuple[float, float, float]
    up: tuple[float, float, float]

    @classmethod
    def behind(cls, world_from_cam: np.ndarray, scene_depth: float) -> Eye:
        """Behind and above a camera (OpenCV axes), looking past it at what it sees: the camera and the map in
        front of it both in view, at the scene's own scale."""
        R, c = world_from_cam[:3, :3], world_from_cam[:3, 3]
        forward, up = R[:, 2], -R[:, 1]
        position = c - 1.5 * scene_depth * forward + 1.0 * scene_depth * up
        target = c + 0.7 * scene_depth * forward
        return cls(tuple(map(float, position)), tuple(map(float, target)), tuple(map(float, up)))  # type: ignore[arg-type]


def window_path(window: int) -> str:
    return f"{WINDOWS}/{window}"


def default_blueprint(eye: Eye | None = None) -> rrb.Blueprint:
    """The layout; `eye` places the 3D eye (world coordinates), which then follows the current camera."""
    import rerun.blueprint as rrb

    # The eye follows the current camera: the view stays on where the run is, not zoomed out to the bounds of a
    # map that may span kilometres.
    placed: dict[str, Any] = (
        {} if eye is None else {"position": eye.position, "look_target": eye.look_target, "eye_up": eye.up}
    )
    # The depth image stays in its 2D view: under the pinhole, the 3D view would draw it as a cloud of every
    # pixel, unconfident sky and blends included, over the filtered map.
    scene = rrb.Spatial3DView(
        name="Scene",
        origin=WORLD,
        contents=["+ $origin/**", f"- /{DEPTH}", f"- /{CONFIDENCE}"],
        eye_controls=rrb.EyeControls3D(tracking_entity=CAMERA, **placed),
    )
    frame_views = rrb.Vertical(
        rrb.Spatial2DView(name="Image", origin=IMAGE_PLANE, contents=["$origin/rgb"]),
        rrb.Spatial2DView(name="Depth", origin=IMAGE_PLANE, contents=["$origin/depth"]),
        rrb.Spatial2DView(name="Confidence", origin=IMAGE_PLANE, contents=["$origin/confidence"]),
    )
    # Quantities of very different magnitude get their own tab rather than sharing one y axis.
    alignment = rrb.Tabs(
        rrb.TimeSeriesView(name="Scale", origin=ALIGNMENT_PLOTS, contents=["$origin/scale"]),
        rrb.TimeSeriesView(name="Seam rotation (deg)", origin=ALIGNMENT_PLOTS, contents=["$origin/seam_rotation_deg"]),
        rrb.TimeSeriesView(name="Seam offset (/ depth)", origin=ALIGNMENT_PLOTS, contents=["$origin/seam_offset_rel"]),
        rrb.TimeSeriesView(name="Alignment (all)", origin=ALIGNMENT_PLOTS),
    )
    performance = rrb.Tabs(
        rrb.TimeSeriesView(name="Frames/s", origin=RUN_PLOTS, contents=["$origin/fps"]),
        rrb.TimeSeriesView(name="Memory (MB)", origin=RUN_PLOTS, contents=["$origin/rss_mb", "$origin/peak_rss_mb"]),
        rrb.TimeSeriesView(name="Map points", origin=RUN_PLOTS, contents=["$origin/map_points"]),
        rrb.TimeSeriesView(name="Run (all)", origin=RUN_PLOTS),
    )
    stages = rrb.Tabs(
        rrb.TimeSeriesView(name="Stage time per window (s)", origin=f"{PLOTS}/window_s"),
        rrb.TimeSeriesView(name="Model", origin=f"{PLOTS}/model"),
        rrb.TimeSeriesView(name="All plots", origin=PLOTS),
    )
    bottom = rrb.Horizontal(alignment, performance, stages, rrb.TextLogView(name="Windows", origin=WINDOW_LOG))
    top = rrb.Horizontal(scene, frame_views, column_shares=[3, 1])
    return rrb.Blueprint(
        rrb.Vertical(top, bottom, row_shares=[3, 1]),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(timeline="frame"),
        auto_views=False,
    )
