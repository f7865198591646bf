"""`recon` command line: the top-level parser and its global flags, dispatch to the subcommands (recon.commands),
and the error handling. Heavy modules are imported inside the subcommands so `recon --help` is instant. Every
error a user can cause ends as one line on stderr and a non-zero exit code (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from recon import __version__
from recon.allocator import reuse_freed_memory
from recon.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, ReconError
from recon.signals import Terminated, signals_deferred, signals_unwind


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its whole usage block above an error; a user gets the one line that says what is wrong
    and where the help is. Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="recon",
        description="Streaming 3D reconstruction: video in, camera trajectory and 3D map out, on bounded memory.",
    )
    parser.add_argument("--version", action="version", version=f"recon {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # Imported when a parser is built, not with recon.cli: the flags' choices import the stages' name lists (OpenCV
    # through recon.datasets), which `import recon.cli` alone does not need.
    from recon.commands import COMMANDS, command_name

    for command in COMMANDS:
        p = sub.add_parser(command_name(command), help=command.help)
        command.add_args(p)
        p.set_defaults(func=command.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    reuse_freed_memory()
    with signals_deferred():  # OpenCV
        from recon.native_logs import quiet_native_logs

    quiet_native_logs()
    # Our own messages at INFO; libraries' (numexpr, open3d, ...) only when they warn, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="recon: %(levelname)s: %(message)s" if not args.debug else "%(name)s: %(levelname)s: %(message)s",
    )
    logging.getLogger("recon").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with signals_unwind():
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed stdout (BrokenPipeError) surfaces here, not in the interpreter's exit
        return code
    except ReconError as e:
        if args.debug:
            raise
        print(f"recon: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `recon run ... | head`: the reader left. Commands print after their files are written, so only the
        # report is lost. stdout goes to /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(
            "recon: error: standard output was closed before the report was printed; the files are written",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except Exception as e:  # a bug: still one line, the traceback is one flag away
        if args.debug:
            raise
        if isinstance(stopped := _signal_behind(e), KeyboardInterrupt):
            # The signal's KeyboardInterrupt, turned into another error by native code it interrupted (an
            # extension module's import gives "ImportError: initialization failed"): a stop, not a bug.
            return _report_stop(stopped)
        first = (str(e).strip().splitlines() or [""])[0]
        print(
            f"recon: error: internal error ({type(e).__name__}: {first}); rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except KeyboardInterrupt as e:
        return _report_stop(e)


def _report_stop(e: KeyboardInterrupt) -> int:
    terminated = isinstance(e, Terminated)
    print(f"recon: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def _signal_behind(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt an exception was raised from or while handling, if any (None otherwise)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen and not isinstance(cause, KeyboardInterrupt):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return cause
