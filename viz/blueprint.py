"""The layout a recording opens with: the 3D scene large, the current frame's image / depth / confidence
beside it, the run's plots and the window log below. Entity paths come from `recon.viz.rerun_viewer`."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def window_path(window: int) -> str:
    return f"{WINDOWS}/{window}"


def default_blueprint() -> rrb.Blueprint:
    import rerun.blueprint as rrb

    # The eye follows the current camera (an orbit about it): the view opens on where the run is, not zoomed out
    # to the bounds of a map that may span kilometres.
    scene = rrb.Spatial3DView(name="Scene", origin=WORLD, eye_controls=rrb.EyeControls3D(tracking_entity=CAMERA))
    frame_views = rrb.Vertical(
        rrb.Spatial2DView(name="Image", origin=IMAGE_PLANE, contents=["$origin/rgb"]),
        rrb.Spatial2DView(name="Depth", origin=IMAGE_PLANE, contents=["$origin/depth"]),
        rrb.Spatial2DView(name="Confidence", origin=IMAGE_PLANE, contents=["$origin/confidence"]),
    )
    # Quantities of very different magnitude get their own tab rather than sharing one y axis.
    alignment = rrb.Tabs(
        rrb.TimeSeriesView(name="Residual", origin=ALIGNMENT_PLOTS, contents=["$origin/residual_rms"]),
        rrb.TimeSeriesView(name="Inlier share", origin=ALIGNMENT_PLOTS, contents=["$origin/inlier_share"]),
        rrb.TimeSeriesView(name="Scale", origin=ALIGNMENT_PLOTS, contents=["$origin/scale"]),
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
