"""Alignment, the join of a window to the previous one (ARCHITECTURE §4): the Sim(3) `prev_from_cur` that maps the new window's
frame into the previous window's frame through the frames both share (the core composes these joins in
its pose graph; with `prev` None the window defines its own frame).

1. Correspondences: the same pixels of the overlap frames, confident in both windows (VGGT-Long rule:
   confidence > conf_rel x the smaller of the two windows' median confidences; or LASER's top-p),
   weighted sqrt(c_prev c_cur), on a pixel stride that keeps at most `max_correspondences` candidates.
2. Joint fit (`fit_join`): rotation from the shared cameras' orientations in both windows; scale from the
   dense depth ratios of the correspondences (the models' own depths: the layer scales the previous
   window's map points carry are undone, the edge relates the windows' frames), the shared keypoints'
   depth ratios and the ratios of the shared cameras' baselines, combined by their uncertainty;
   translation from the shared camera centres. An overlap that measures no scale
   (empty, low-parallax, rotation-only) inherits it through the shared frames' median depths, flagged —
   the scale never jumps. The fit's uncertainty becomes the pose-graph edge's noise.
3. Layer-wise scale (mode "lsa", as LASER): segment every depth map of the window
   into depth layers; link layers of each overlap frame across the two windows (IoU >= cross_iou); per
   link a robust scale of this window's Sim(3)-aligned depth onto the previous window's depth over the
   two layers' intersection; propagate forward through the window's frames along links between
   consecutive frames (IoU >= within_iou, IoU-weighted mean of the incoming scales; pixels carried to the
   next frame by the window's own points and poses); unreached layers keep the window scale. The
   per-pixel scale multiplies the camera-frame point. With `lsa_refine`, the Sim(3) is re-fitted on the
   layer-corrected points (off by default: it would replace the joint fit's camera rotation by a fit to
   depth). With `lsa_depth` False the layer scales serve only that re-fit.
4. No shared camera placed by both windows and too few confident pixels: the overlap camera poses as
   given (`pose_fallback_sim3`), with a warning.

Outputs keep the window's own point map (`points`) and its depth head (`depth`), mapped by the Sim(3);
`conf` is the window's `points_conf`.

Modules: `contracts` (settings, `AlignedWindow`, `WindowFit`, `AlignmentReport`), `window` (the entry points),
`join` (the joint fit), `layer_scale` (layer-wise scale). Kernels: `recon.kernels.align_sim3`,
`recon.kernels.align_layers`."""

from recon.align.contracts import (
    AlignConfig,
    AlignedWindow,
    AlignmentReport,
    Correspondences,
    WindowFit,
    median_depth,
    registered_frames,
)
from recon.align.join import fit_join, pose_fallback_sim3, select_correspondences
from recon.align.layer_scale import WindowLayers, window_layers
from recon.align.window import align_window, anchored_fit, fit_window, place_window

__all__ = [
    "AlignConfig",
    "AlignedWindow",
    "AlignmentReport",
    "Correspondences",
    "WindowFit",
    "WindowLayers",
    "align_window",
    "anchored_fit",
    "fit_join",
    "fit_window",
    "median_depth",
    "place_window",
    "pose_fallback_sim3",
    "registered_frames",
    "select_correspondences",
    "window_layers",
]
