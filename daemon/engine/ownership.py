"""Which watch folder an output folder's outputs belong to.

Outputs are named by the movie's path below the watch folder (``OUT/grid1/TS_01_001.mrc``), so
two watch folders corrected into one output folder write their same-named movies' outputs
over each other: a second session's ``m_001.mrc`` silently replaced the first's, whose state
row still said done. The service records the folders it serves in its state database; one
started on another watch folder with the same output folder stops at start-up with a one-line
reason, before anything is written, when the output folder holds a motion record of a done
movie of the watch folder it serves. A state folder shared by runs that write their outputs
to different folders keeps which watch folder each output folder serves.

One folder has many spellings (its real path, a link to it, a path through a linked parent);
the state's rows name movies by the spelling of the run that met them. A run started on a
link to the folder an earlier run watched by its real path (a unit file installed again with
the link's name) watches it by that real path (:func:`recorded_spelling`): under the link,
every tilt of a finished series read as another file and the series was re-opened for good.
The other way round (a link recorded, the real path given: so that re-pointing the link at
the next session does not stop the service) the state's rows are named anew below the path
given (:func:`respelled_from`, :meth:`Ledger.respell`): left as they were, every tilt was met
again as another file, and its series re-opened and never assembled again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.state.ledger import DB_NAME, Ledger

__all__ = ["ServedWatch", "served_folders", "other_watch_folder", "recorded_spelling",
           "recorded_spelling_in", "respelled_from"]


@dataclass(frozen=True)
class ServedWatch:
    """The watch folder an output folder serves: as given (the spelling of its rows' paths)
    and its real path when it was served (a ``current`` link pointed at each new session
    resolves elsewhere each time)."""

    given: str
    real: str

    def to_record(self) -> dict[str, str]:
        return {"watch_dir": self.given, "real": self.real}


def _served(recorded: Mapping[str, Any], state_dir: Path) -> dict[str, ServedWatch]:
    """Output folder (real path) -> the watch folder whose movies it holds, as recorded (a
    database written before the map was kept: its last run's watch folder, for the output
    folder it lives in; whether that run wrote there is told by its outputs)."""
    served = recorded.get("served")
    if isinstance(served, dict):
        return {str(out): ServedWatch(str(w.get("watch_dir")), str(w.get("real")))
                for out, w in served.items() if isinstance(w, dict)}
    was_watch = recorded.get("watch_dir")
    if not isinstance(was_watch, str):
        return {}
    return {os.path.realpath(state_dir): ServedWatch(was_watch, os.path.realpath(was_watch))}


def served_folders(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                   state_dir: Path) -> dict[str, Any]:
    """The service state to record at start-up: this output folder serves ``watch_dir``
    (beside the output folders of other runs that share the state folder)."""
    served = _served(recorded, state_dir)
    served[os.path.realpath(out_dir)] = ServedWatch(str(watch_dir), os.path.realpath(watch_dir))
    return {"served": {out: w.to_record() for out, w in served.items()}}


def other_watch_folder(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                       state_dir: Path,
                       done_outputs_below: Callable[[str], Iterable[Mapping[str, str]]]
                       ) -> str | None:
    """One line of why this run may not start, or None.

    ``recorded`` is the state database's service state (the output folders it served, and
    for which watch folders); ``done_outputs_below(folder)`` gives the outputs of some done
    movies below a folder (the ledger's). A run may not start when the output folder serves
    another watch folder (by real path) and holds the motion record of one of its movies.
    """
    out_real = os.path.realpath(out_dir)
    was = _served(recorded, state_dir).get(out_real)
    if was is None or was.real == os.path.realpath(watch_dir):
        return None
    held = [motion for outputs in done_outputs_below(was.given)
            if (motion := outputs.get("motion")) and Path(motion).is_file()
            and os.path.realpath(motion).startswith(out_real.rstrip(os.sep) + os.sep)]
    if not held:
        return None  # none of its outputs is there (emptied, or written elsewhere)
    database = Path(state_dir) / DB_NAME
    return (f"{out_dir} holds the outputs of watch folder {was.given} (e.g. {held[0]}; state "
            f"database {database}); watching {watch_dir} into it would write over those of "
            f"the movies with the same names: give another --out, or, if {was.given} was moved "
            f"to {watch_dir}, move {database} aside (its movies are corrected again)")


def recorded_spelling(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                      state_dir: Path) -> Path | None:
    """The real path under which the output folder's state names ``watch_dir`` when that is
    given by another spelling (a link to it): the one to watch it by; None when it is spelled
    so already, when the recorded spelling leads elsewhere now or nowhere, or when it goes
    through a link itself (watched by it, the service would stop at the link's next
    re-pointing, which a real path given instead is meant to avoid)."""
    was = _served(recorded, state_dir).get(os.path.realpath(out_dir))
    if was is None or was.given == str(watch_dir) or os.path.realpath(was.given) != was.given:
        return None
    try:
        same = os.path.samefile(was.given, watch_dir)
    except OSError:
        return None
    return Path(was.given) if same else None


def respelled_from(recorded: Mapping[str, Any], *, watch_dir: Path, out_dir: Path,
                   state_dir: Path) -> str | None:
    """The spelling the state's rows name ``watch_dir`` by when it is another one of the same
    folder (a link to it, or a path through one, that the last run watched), to be named anew
    by the one given; None when it is spelled so already or was another folder then (a
    ``current`` link since re-pointed at the next session: its rows stay its own). Only a
    recorded map says which folder a spelling led to when it was served."""
    if not isinstance(recorded.get("served"), dict):
        return None
    was = _served(recorded, state_dir).get(os.path.realpath(out_dir))
    if was is None or was.given == str(watch_dir) or was.real != os.path.realpath(watch_dir):
        return None
    return was.given


def recorded_spelling_in(state_dir: Path, *, watch_dir: Path, out_dir: Path) -> Path | None:
    """:func:`recorded_spelling` read from the state database in ``state_dir`` (read only);
    None without a readable one."""
    path = Path(state_dir) / DB_NAME
    if not path.is_file():
        return None
    try:
        with Ledger(path, read_only=True) as ledger:
            recorded = ledger.service_state()
    except (sqlite3.Error, OSError, ValueError):
        return None
    return recorded_spelling(recorded, watch_dir=watch_dir, out_dir=out_dir,
                             state_dir=state_dir)
