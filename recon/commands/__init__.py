"""The `recon` subcommands, one module each: its one-line `help`, `add_args(parser)` for its flags and
`main(args) -> int` (an exit code of recon.errors). recon.cli builds the parser from COMMANDS, in this order."""

from __future__ import annotations

import argparse
from typing import Protocol

from recon.commands import batch, demo, eval, export, render, run, view


class Command(Protocol):
    """What recon.cli needs of a command module."""

    __name__: str
    help: str

    def add_args(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


COMMANDS: tuple[Command, ...] = (run, batch, eval, export, view, render, demo)


def command_name(command: Command) -> str:
    """The word a user types: the module's own name (recon.commands.run -> run)."""
    return command.__name__.rpartition(".")[2]
