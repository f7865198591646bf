"""Fixtures shared by several test modules."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from recon.native_logs import quiet_native_logs

# The command line quiets OpenCV's and FFmpeg's own logs as a command starts, before any capture opens (FFmpeg's
# level is read once per process, at the first capture). Many commands and captures share this test process:
# the same, once, before any of them.
quiet_native_logs()


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add hand-offs (6x slower on a shared 2-core box). Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def http_file() -> Iterator[Callable[..., str]]:
    """serve(data, cut_first_after=None) -> the http URL of `data` on a local server (a thread, closed after
    the test). With `cut_first_after`, the first download stops after that many bytes, as a dropped
    connection does; later ones are whole. The server offers no byte ranges: a reader cannot seek, it
    streams the file from the start, as many cameras' and media servers' http does."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(data: bytes, cut_first_after: int | None = None) -> str:
        downloads: list[int] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                downloads.append(1)
                self.send_response(200)
                self.send_header("Content-Type", "video/x-msvideo")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                cut = cut_first_after if cut_first_after is not None and len(downloads) == 1 else len(data)
                with contextlib.suppress(OSError):  # the reader hung up
                    self.wfile.write(data[:cut])
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/clip.avi"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
