"""Where a recording goes: a native viewer (`spawn`), an in-process gRPC server plus a web viewer (`serve`), an
.rrd file, or a file beside either; and the rerun processes, ports and addresses behind them. rerun is imported
lazily: `recon view --help` and runs without a viewer never load it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from recon.errors import ReconError
from recon.viz import blueprint as paths
from recon.viz.rerun_viewer import RerunViewer
from recon.viz.viewer import MODES
from recon.viz.viewer_options import ViewerOptions

if TYPE_CHECKING:
    import rerun as rr

DEFAULT_GRPC_PORT = 9876  # Rerun's own defaults, so `rerun --connect` finds a spawned viewer
DEFAULT_WEB_PORT = 9090


def open_rerun_viewer(
    mode: str,
    rrd: Path | None,
    bind: str = "127.0.0.1",
    port: int | None = None,
    name: str = "recon",
    options: ViewerOptions | None = None,
) -> RerunViewer:
    """mode `spawn`: native viewer (port = its gRPC port); `serve`: gRPC server + web viewer (port = the web
    viewer's); `none`: no live viewer. `rrd`: also (or only) write the recording to this file."""
    import rerun as rr

    if mode not in MODES:
        raise ReconError(f"unknown viewer mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "none" and rrd is None:
        raise ReconError("nothing to view: viewer mode 'none' needs an .rrd file")
    recording = rr.RecordingStream(name)
    sinks: list[Any] = []
    cleanup: Callable[[], None] | None = None
    try:
        if mode == "spawn":
            sinks.append(_spawn_native_viewer(recording, port))
        elif mode == "serve":
            sink, cleanup = serve_web_viewer(bind, port)
            sinks.append(sink)
        if rrd is not None:
            sinks.append(rr.FileSink(str(_rrd_target(rrd))))
        try:
            recording.set_sinks(*sinks)
        except (
            RuntimeError
        ) as e:  # rerun creates the .rrd file here ("Failed to create file: Read-only file system ...")
            raise ReconError(
                f"cannot write the recording: {str(e).splitlines()[0]}; pass --rrd a file in a writable folder"
            ) from e
        recording.send_blueprint(paths.default_blueprint(), make_active=True, make_default=True)
    except BaseException:
        if cleanup is not None:
            cleanup()
        raise
    return RerunViewer(recording, options, cleanup)


def _rrd_target(rrd: Path) -> Path:
    rrd = Path(rrd)
    if rrd.is_dir():
        raise ReconError(f"--rrd {rrd}: is a directory; give a file name such as {rrd / 'recording.rrd'}")
    try:
        rrd.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReconError(f"--rrd {rrd}: cannot create its folder ({e.strerror})") from e
    return rrd


def _spawn_native_viewer(recording: rr.RecordingStream, port: int | None) -> Any:
    import rerun as rr

    require_display(
        "--viewer spawn",
        "use --viewer serve (web viewer), or --rrd FILE and `recon view FILE` on a machine with a screen",
    )
    binary = rerun_binary()
    port = port or DEFAULT_GRPC_PORT
    try:
        # An already running viewer on `port` is reused; otherwise a new one starts and waits for data.
        rr.spawn(port=port, connect=False, hide_welcome_screen=True, executable_path=str(binary), recording=recording)
    except RuntimeError as e:
        raise ReconError(f"cannot start the Rerun viewer ({str(e).splitlines()[0]})") from e
    if not wait_for_port("127.0.0.1", port, timeout_s=2.0):
        raise ReconError(
            f"the Rerun viewer did not start (nothing listens on port {port}; see its message above); "
            "use --viewer serve, or --rrd FILE"
        )
    return rr.GrpcSink(f"rerun+http://127.0.0.1:{port}/proxy")


def serve_web_viewer(
    bind: str, web_port: int | None, server_memory_limit: str = "1GiB"
) -> tuple[Any, Callable[[], None]]:
    """-> (a gRPC server sink bound to `bind`, a function that stops the web viewer). Prints the address to open."""
    import rerun as rr

    binary = rerun_binary()
    web_port = pick_port(bind, web_port, DEFAULT_WEB_PORT)  # first: a taken --port fails before a server starts
    grpc_port = pick_port(bind, None, DEFAULT_GRPC_PORT)
    try:
        sink = rr.GrpcServerSink(bind_ip=bind, port=grpc_port, server_memory_limit=server_memory_limit)
    except Exception as e:
        raise ReconError(f"cannot serve the recording on {bind}:{grpc_port} ({e})") from e
    grpc_url = f"rerun+http://{url_host(bind)}:{grpc_port}/proxy"
    # The in-process web server of rerun-sdk listens on all interfaces; the CLI's honours --bind.
    process = start_rerun_process(
        [str(binary), "--serve-web", "--bind", bind, "--web-viewer-port", str(web_port), grpc_url],
        wait_for=(url_host(bind), web_port),
        what="the web viewer",
    )
    print_viewer_url(bind, web_port, grpc_url)
    return sink, process.stop


# -- the rerun binary, displays, ports ---------------------------------------------------------------------
def rerun_binary() -> Path:
    """The Rerun viewer/CLI executable: $RERUN_CLI_PATH, the one rerun-sdk ships, or `rerun` on PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("RERUN_CLI_PATH"):
        candidates.append(Path(env))
    spec = importlib.util.find_spec("rerun_cli")
    if spec is not None and spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
        candidates += [
            base / "Rerun.app" / "Contents" / "MacOS" / "Rerun",
            base / ("rerun.exe" if sys.platform.startswith("win") else "rerun"),
        ]
    if found := shutil.which("rerun"):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ReconError(
        "the Rerun viewer executable was not found; install rerun-sdk in this environment "
        "(`pip install 'rerun-sdk>=0.36,<0.42'`) or set RERUN_CLI_PATH"
    )


def require_display(what: str, hint: str) -> None:
    if sys.platform.startswith("linux") and not any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET")
    ):
        raise ReconError(f"{what} needs a display and none is set (DISPLAY / WAYLAND_DISPLAY); {hint}")


def url_host(bind: str) -> str:
    """Where a local client reaches a server bound to `bind`."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)
    return f"[{host}]" if ":" in host else host


def web_viewer_url(bind: str, web_port: int, grpc_url: str) -> str:
    return f"http://{url_host(bind)}:{web_port}/?url={urllib.parse.quote(grpc_url, safe='')}"


def print_viewer_url(bind: str, web_port: int, grpc_url: str) -> None:
    print(
        f"recon: open {web_viewer_url(bind, web_port, grpc_url)} in a browser (or run `rerun --connect {grpc_url}`)",
        file=sys.stderr,
        flush=True,
    )
    if bind in ("0.0.0.0", "::", ""):
        print(
            f"recon: serving on all interfaces ({bind}); from another machine use this machine's address",
            file=sys.stderr,
            flush=True,
        )


def pick_port(bind: str, wanted: int | None, default: int) -> int:
    """`wanted` as given, if free; else `default`, or a free port when `default` is taken."""
    if wanted is not None:
        if not _can_bind(bind, wanted):  # the viewer would fail to start and the printed address reach that program
            raise ReconError(
                f"port {wanted} on {bind} is in use by another program; pass another --port, or none to get a free one"
            )
        return wanted
    return default if _can_bind(bind, default) else _free_port(bind)


def _can_bind(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as servers bind: a port in TIME_WAIT is free, a listening one not
        try:
            s.bind((bind, port))
        except OSError:
            return False
    return True


def _free_port(bind: str) -> int:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if port_is_open(host, port):
            return True
        time.sleep(0.1)
    return port_is_open(host, port)


@dataclass
class RerunProcess:
    """A rerun CLI process this module started; `stop()` ends exactly it."""

    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()

    def output_tail(self, lines: int = 3) -> str:
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace").strip().splitlines()
        return " / ".join(line.strip() for line in text[-lines:])


def start_rerun_process(cmd: list[str], wait_for: tuple[str, int], what: str, timeout_s: float = 15.0) -> RerunProcess:
    """Start the rerun CLI and wait until it listens on `wait_for`; a ReconError with its last output if not.
    Its output goes to a temporary file (a pipe nobody reads would stall it)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the process's log, closed with it
    try:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    except OSError as e:
        log.close()
        raise ReconError(f"cannot start {what} ({e.strerror}: {cmd[0]})") from e
    process = RerunProcess(popen, log)
    if not wait_for_port(*wait_for, timeout_s=timeout_s, alive=lambda: popen.poll() is None):
        tail = process.output_tail()
        process.stop()
        raise ReconError(f"{what} did not start on port {wait_for[1]}" + (f": {tail}" if tail else ""))
    return process
