"""How `recon run` stops on SIGINT / SIGTERM: at a window boundary, with what it has written (ARCHITECTURE §3)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from recon.signals import ignore_signal


@dataclass
class StopRequest:
    """The signal that asked the run to stop (None: none did)."""

    signum: int | None = None

    @property
    def terminated(self) -> bool:
        return self.signum == signal.SIGTERM


@contextmanager
def stop_on_signals(request_stop: Callable[[], None]) -> Iterator[StopRequest]:
    """SIGINT (Ctrl-C) and SIGTERM (a job scheduler, `kill`, a container stop) ask the run to stop after the
    window it is writing: every finished window's output is flushed and summary.json says "interrupted".
    Further signals change nothing: raised into the shutdown, a second one cut the final summary short (it
    stayed "running") and let the interpreter exit while the model thread was inside native code (SIGABRT).
    Once a stop was asked for they stay ignored after the run too: the command is only closing up then, and a
    KeyboardInterrupt raised into a finalizer there (tqdm's, a generator's) printed a traceback."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def on_signal(signum: int, frame: object) -> None:
        if stop.signum is None:
            stop.signum = signum
            request_stop()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if stop.signum is None else ignore_signal)
