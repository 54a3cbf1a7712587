"""Which watch folder an output folder's outputs belong to.

Outputs are named by the movie's path below the watch folder (``OUT/grid1/TS_01_001.mrc``), so
two watch folders corrected into one output folder write their same-named movies' outputs
over each other: a second session's ``m_001.mrc`` silently replaced the first's, whose state
row still said done. The service records the folders it serves in its state database; one
started on another watch folder with the same output folder stops at start-up with a one-line
reason, before anything is written. A state folder shared by runs that write their outputs to
different folders keeps which watch folder each output folder serves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.state.ledger import DB_NAME

__all__ = ["served_folders", "other_watch_folder"]


def _same(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _served(recorded: Mapping[str, Any], state_dir: Path) -> dict[str, str]:
    """Output folder (real path) -> the watch folder whose movies it holds, as recorded (a
    database written before the map was kept: its last run's watch folder, for the output
    folder it lives in)."""
    served = recorded.get("served")
    if isinstance(served, dict):
        return {str(k): str(v) for k, v in served.items()}
    was_watch = recorded.get("watch_dir")
    return {os.path.realpath(state_dir): was_watch} if isinstance(was_watch, str) else {}


def served_folders(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                   state_dir: Path) -> dict[str, Any]:
    """The service state to record at start-up: this output folder serves ``watch_dir``
    (beside the output folders of other runs that share the state folder)."""
    served = _served(recorded, state_dir)
    served[os.path.realpath(out_dir)] = str(watch_dir)
    return {"served": served}


def other_watch_folder(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                       state_dir: Path, movies_done: int) -> str | None:
    """One line of why this run may not start, or None.

    ``recorded`` is the state database's service state (the output folders it served, and
    for which watch folders); ``movies_done`` counts its movies with outputs.
    """
    was_watch = _served(recorded, state_dir).get(os.path.realpath(out_dir))
    if not movies_done or was_watch is None or _same(was_watch, watch_dir):
        return None
    database = Path(state_dir) / DB_NAME
    movies = f"{movies_done} movie{'s' if movies_done != 1 else ''}"
    return (f"{out_dir} holds the outputs of {movies} of watch folder {was_watch} "
            f"(state database {database}); watching {watch_dir} into it would write over "
            f"those of the movies with the same names: give another --out, or, if {was_watch} "
            f"was moved to {watch_dir}, move {database} aside (its movies are corrected again)")
