"""Errors a user can cause or meet. Each carries a one-line message that names the problem and the fix;
the CLI prints it without a traceback (unless --debug)."""

# Exit codes of every command.
EXIT_FAILURE = 1  # a bug, not the user's doing
EXIT_USAGE = 2  # the user's input: a one-line error says what and how to fix it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class ReconError(Exception):
    """Base of every error recon reports to a user as one line."""


class SourceError(ReconError):
    """An input (path, URL, dataset layout) cannot be opened or read."""


class FormatError(SourceError):
    """A text file (calib, times, poses, trajectory) is malformed; the message names file and line."""

    def __init__(self, path: object, line_no: int | None, message: str) -> None:
        where = f"{path}:{line_no}" if line_no is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line_no = line_no


class OutputError(ReconError):
    """An output folder or file cannot be written (not a folder, no permission, disk full); the message
    names the path and the fix."""


class ContractError(ReconError, ValueError):
    """A data contract (Frame, WindowPrediction, Sim3) was violated: wrong shape, dtype or non-finite values."""


class ModelError(ReconError):
    """A model cannot be built or its weights cannot be read or do not match (missing/unexpected/mis-shaped keys)."""


class NonFiniteError(ContractError):
    """A model's prediction holds NaN/inf. The pipeline skips (and reports) the window rather than fuse it."""
