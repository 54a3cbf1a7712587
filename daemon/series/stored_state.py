"""What the state database keeps of a tilt series for readers other than the resolver.

``motionwatch status`` and the feed's restored state read a series' stored state (written by
:mod:`daemon.series.resolver`) without resolving its metadata. Of its fields, ``listed_movies``
names the movies its mdoc lists now (below the watch folder), or is absent or None when no
series mdoc lists them: a retaken tilt's discarded movie, corrected as a tilt before the mdoc
dropped it, keeps a record naming the series but is no tilt of it. ``accumulated_dose_e_A2``
is the dose its metadata says the specimen has received (every tilt listed, corrected or not,
and discarded exposures), the live feed's; None while a tilt's dose is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.series.resolution import DROPPED_SERIES_REASON, REMOVED_SERIES_REASON
from daemon.series.tilt_record import TiltRecord

__all__ = ["ACCUMULATED_DOSE", "LISTED_MOVIES", "SeriesTally", "accumulated_dose_e_A2",
           "failed_tilt", "listed_now", "series_gone", "series_tallies"]

LISTED_MOVIES = "listed_movies"
ACCUMULATED_DOSE = "accumulated_dose_e_A2"


def listed_now(state: Mapping[str, Any], movie_path: str) -> bool:
    """Whether the series whose stored state is ``state`` still lists the movie at
    ``movie_path`` (an absolute path, or one as the state database holds it); True when the
    state lists no movies (no series mdoc: nothing to go by)."""
    listed = state.get(LISTED_MOVIES)
    if not isinstance(listed, list):
        return True
    return any(movie_path == name or movie_path.endswith("/" + name) for name in listed)


def accumulated_dose_e_A2(state: Mapping[str, Any], tally: SeriesTally) -> float | None:
    """The dose (e/Å²) a series' specimen has received, as the live feed says it: its stored
    metadata's (a quarantined tilt irradiated the specimen all the same), else the largest its
    tilts reached (``tally.reached_e_A2``; a state stored before the metadata's was kept, or a
    tilt's dose unknown)."""
    stored = state.get(ACCUMULATED_DOSE)
    if isinstance(stored, (int, float)) and not isinstance(stored, bool) \
            and math.isfinite(stored) and stored >= 0:
        return float(stored)
    return tally.reached_e_A2


def series_gone(state: Mapping[str, Any], tally: SeriesTally) -> bool:
    """A series none of whose movies is its tilt any more, or ever was (its tilts renamed or
    redone into another series; begun from its movies' names before the mdoc that made them
    another series' tilts): a ghost, which the views do not list."""
    return not tally.records and bool(
        state.get("moved_to") or state.get("reason") in (REMOVED_SERIES_REASON,
                                                          DROPPED_SERIES_REASON))


@dataclass
class SeriesTally:
    """A series' movies as the state database holds them (the newest row of each file).

    ``done`` and ``failed`` (failed or quarantined) count the tilts its mdoc lists now; a
    listed movie quarantined before it was resolved as a tilt (a corrupt header) counts among
    the failed. ``reached_e_A2``: the dose its tilts reached (pre-exposure + own dose, e/Å²,
    the largest), None without any. ``records``: movies whose tilt record names the series,
    listed now or not (none: a series whose tilts went to another name)."""

    done: int = 0
    failed: int = 0
    reached_e_A2: float | None = None
    records: int = 0


def _listing_owner(listing: Mapping[str, Mapping[str, Any]], path: str,
                   watch_dir: str | None) -> str | None:
    """The series whose mdoc lists the movie at ``path``: by its name below ``watch_dir``
    (the names mdocs list are so), or without it, by the longest name that ends the path
    (``grid1/x.mrc``, listed by ``grid1/TS_01``, is also ``x.mrc`` of the watch folder's own)."""
    root = None if watch_dir is None else watch_dir.rstrip("/") + "/"
    if root is not None and path.startswith(root):  # else a path of another mount: by suffix
        relative = path[len(root):]
        return next((name for name, state in listing.items()
                     if relative in state[LISTED_MOVIES]), None)
    best, best_len = None, -1
    for name, state in listing.items():
        for listed in state[LISTED_MOVIES]:
            if (path == listed or path.endswith("/" + listed)) and len(listed) > best_len:
                best, best_len = name, len(listed)
    return best


def failed_tilt(row: Any) -> bool:
    """Whether a movie's newest row counts as a failed tilt: quarantined, or failed against it.
    A row put back by trouble outside the movie (failed, never counted against it: a full
    disk, workers that cannot start) is none: "3 failed" beside "0 failed, 6 put back" sent
    the operator after three good tilts."""
    return row.status == "quarantined" or (row.status == "failed"
                                           and getattr(row, "failures", 1) > 0)


def series_tallies(states: Mapping[str, Mapping[str, Any]], rows: Iterable[Any],
                   watch_dir: str | None = None) -> dict[str, SeriesTally]:
    """:class:`SeriesTally` by series name, from the stored ``states`` and the database's movie
    ``rows`` (any order; the newest row of each file counts; moved rows, of size < 0, not);
    ``watch_dir``, the service's watch folder (its heartbeat's), when known."""
    latest: dict[str, Any] = {}
    for row in rows:
        prev = latest.get(row.key.path)
        if row.key.size >= 0 and (prev is None or (row.updated or 0) >= (prev.updated or 0)):
            latest[row.key.path] = row
    tallies: dict[str, SeriesTally] = {}
    listing = {name: state for name, state in states.items()
               if isinstance(state, Mapping) and isinstance(state.get(LISTED_MOVIES), list)}
    for path, row in latest.items():
        tilt = TiltRecord.from_json(((row.metadata or {}).get("extra_record") or {}).get("tilt"))
        failed = failed_tilt(row)
        if tilt is None:
            if failed:  # quarantined before it was resolved: a tilt of the series listing it
                owner = _listing_owner(listing, path, watch_dir)
                if owner is not None:
                    tallies.setdefault(owner, SeriesTally()).failed += 1
            continue
        tally = tallies.setdefault(tilt.series, SeriesTally())
        tally.records += 1
        reached = tilt.pre_exposure_e_A2 + tilt.dose_e_A2
        tally.reached_e_A2 = reached if tally.reached_e_A2 is None \
            else max(tally.reached_e_A2, reached)
        if listed_now(states.get(tilt.series) or {}, path):
            tally.done += row.status == "done"
            tally.failed += failed
    return tallies
