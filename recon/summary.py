"""Reading a run folder's summary.json: the one reader every command that opens a finished run uses (`recon eval`,
`recon export`, the report of `recon run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recon.errors import ReconError

# The one-line errors name the command's own argument, so each command may word them ({run_dir}, {path}, {error}).
NOT_A_RUN = "'{run_dir}' is not a recon output folder (no summary.json); pass the --out folder of `recon run`"
UNREADABLE = "{path}: unreadable ({error}); the run may have been killed before its first window"


def read_summary(run_dir: Path, not_a_run: str = NOT_A_RUN, unreadable: str | None = UNREADABLE) -> dict[str, Any]:
    """summary.json of the run folder `run_dir`. No such file raises `not_a_run`; one that cannot be read or
    parsed raises `unreadable`, or (None) lets the OSError / JSONDecodeError through."""
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ReconError(not_a_run.format(run_dir=run_dir))
    if unreadable is None:
        return json.loads(path.read_text())
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReconError(unreadable.format(path=path, error=e)) from None
