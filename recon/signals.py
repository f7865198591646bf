"""How a command meets SIGINT (Ctrl-C) and SIGTERM (a job scheduler, `kill`, a container stop): unwound like
Ctrl-C, deferred across native imports, or ignored while a stop is already under way."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `kill`, a container stop), unwinding a command like Ctrl-C."""


def ignore_signal(signum: int, frame: object) -> None:
    """A handler that does nothing. While a command runs, a signal is ignored with this, not SIG_IGN: one
    that arrived just before the switch (the two of a double Ctrl-C land together when the main thread was in
    native code) is still pending, and CPython reports a pending signal whose handler became SIG_IGN with
    "Signal 15 ignored due to race condition" and a traceback on stderr."""


@contextmanager
def _stop_signals_to(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM go to `handler`; after it, to the handlers from before. Only the
    main thread may set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


@contextmanager
def signals_unwind() -> Iterator[None]:
    """SIGINT and SIGTERM unwind the command (KeyboardInterrupt, Terminated): a model load or an evaluation
    stops, its lock is released, and the exit code says which signal. Once one has, further ones are ignored so
    they cannot cut the unwinding short. (`recon run` stops its stream at a window boundary instead, see
    recon.stopping.stop_on_signals.)"""

    def unwind(signum: int, frame: object) -> None:
        for other in (signal.SIGINT, signal.SIGTERM):
            signal.signal(other, ignore_signal)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    with _stop_signals_to(unwind):
        yield


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then reach the handler in place before it. For imports of
    native libraries (torch, OpenCV, GTSAM): a KeyboardInterrupt raised halfway through torch's import left its
    C++ side half set up, and the process died of SIGABRT instead of exiting 130 (soak run 79, a Ctrl-C 0.8 s
    after start). The wait is the import's length, about two seconds."""
    pending: list[int] = []
    try:
        with _stop_signals_to(lambda signum, frame: pending.append(signum)):
            yield
    finally:
        for signum in dict.fromkeys(pending):  # each signal once, in the order they came
            signal.raise_signal(signum)
