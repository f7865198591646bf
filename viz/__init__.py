"""recon.viz: the live Rerun viewer and `recon view`.

`open_viewer` is what `recon run` calls; with viewing off it returns `NullViewer` and never imports rerun."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from recon.errors import ReconError
from recon.viz.viewer import MODES, NullViewer, Viewer, WindowView

if TYPE_CHECKING:
    from recon.viz.rerun_viewer import RerunViewer
    from recon.viz.viewer_options import ViewerOptions

__all__ = ["MODES", "NullViewer", "RerunViewer", "Viewer", "ViewerOptions", "WindowView", "open_viewer"]


def open_viewer(
    mode: str,
    rrd: Path | None,
    bind: str = "127.0.0.1",
    port: int | None = None,
    name: str = "recon",
    options: ViewerOptions | None = None,
) -> Viewer:
    """mode: `none` (no live viewer), `spawn` (native Rerun viewer; `port` = its port, default 9876) or `serve`
    (gRPC server + web viewer bound to `bind`; `port` = the web viewer's, default 9090). `rrd`: also save the
    recording there (with `none`: only that). `none` without `rrd` is a `NullViewer`."""
    if mode not in MODES:
        raise ReconError(f"unknown viewer mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "none" and rrd is None:
        return NullViewer()
    from recon.viz.sinks import open_rerun_viewer

    return open_rerun_viewer(
        mode, Path(rrd) if rrd is not None else None, bind=bind, port=port, name=name, options=options
    )


def __getattr__(name: str) -> Any:  # RerunViewer / ViewerOptions without importing rerun up front
    if name == "RerunViewer":
        from recon.viz.rerun_viewer import RerunViewer

        return RerunViewer
    if name == "ViewerOptions":
        from recon.viz.viewer_options import ViewerOptions

        return ViewerOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
