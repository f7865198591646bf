"""The `recon` executable and `python -m recon`. Kept apart from recon.cli so the signal set-up below comes
before any import that takes time: a Ctrl-C in the first tens of milliseconds otherwise printed a
KeyboardInterrupt traceback from inside an import."""

import signal
import sys
from typing import NoReturn


def entry() -> NoReturn:
    """main() in a process set up for it. SIGINT and SIGTERM are ignored outside the command (main() handles
    them while it runs, then puts this back): the interpreter's teardown resets Python's handlers to the
    default action, so a late Ctrl-C turned a finished command into a death by signal. A file-size limit
    (ulimit -f) fails a write with EFBIG, which every command reports like a full disk, instead of SIGXFSZ
    killing recon halfway through a file."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_IGN)
    from recon.cli import main

    sys.exit(main())


if __name__ == "__main__":
    entry()
