"""Which watch folder an output folder's outputs belong to.

Outputs are named by the movie's path below the watch folder (``OUT/grid1/TS_01_001.mrc``), so
two watch folders corrected into one output folder write their same-named movies' outputs
over each other: a second session's ``m_001.mrc`` silently replaced the first's, whose state
row still said done. The service records the folders it serves in its state database; one
started on another watch folder with the same output folder stops at start-up with a one-line
reason, before anything is written. A state folder shared by runs that write their outputs to
different folders is left alone (no output is at risk).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.state.ledger import DB_NAME

__all__ = ["served_folders", "other_watch_folder"]


def served_folders(watch_dir: Path, out_dir: Path) -> dict[str, str]:
    """What the service records of the folders it serves (service state keys)."""
    return {"watch_dir": str(watch_dir), "out_dir": str(out_dir)}


def _same(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def other_watch_folder(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                       state_dir: Path, movies_done: int) -> str | None:
    """One line of why this run may not start, or None.

    ``recorded`` is the state database's service state (``watch_dir`` and ``out_dir`` of the
    run that wrote it; a database written before ``out_dir`` was recorded lived in its output
    folder when the two were the same folder); ``movies_done`` counts its movies with outputs.
    """
    was_watch = recorded.get("watch_dir")
    was_out = recorded.get("out_dir") or (str(state_dir) if _same(state_dir, out_dir) else None)
    if (not movies_done or not isinstance(was_watch, str) or not isinstance(was_out, str)
            or _same(was_watch, watch_dir) or not _same(was_out, out_dir)):
        return None
    database = Path(state_dir) / DB_NAME
    movies = f"{movies_done} movie{'s' if movies_done != 1 else ''}"
    return (f"{out_dir} holds the outputs of {movies} of watch folder {was_watch} "
            f"(state database {database}); watching {watch_dir} into it would write over "
            f"those of the movies with the same names: give another --out, or, if {was_watch} "
            f"was moved to {watch_dir}, move {database} aside (its movies are corrected again)")
