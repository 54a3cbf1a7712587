"""What the tilt-series resolver reads of the state rows, derived once per version of them.

The store hands the newest row of each movie as one mapping per version
(:class:`daemon.state.newest.NewestRows`: the same object while no row was written). A scan
needs, of every row of the session and of weeks of sessions before it (20,000 rows and more
in one output folder): the movie's name below the watch folder and what the resolution is
told of it, the path of each name, and per series the rows done and failed. Made afresh at
every scan and every series event, they cost the main loop O(rows) each time (about 0.1 s
at 28,000 rows); a :class:`RowsView` reads a row once and again only when the store hands a
new object for it (a row written), and keeps the counts up to date. The rows are only read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.series.resolution import MovieObservation
from daemon.series.stored_state import failed_tilt

__all__ = ["RowsView", "recorded_tilt_field", "row_series"]


def recorded_tilt_field(row: Any, name: str) -> str | None:
    """Field ``name`` of a state row's tilt record (from the row alone: no file read), or
    None: ``series``, the series it was corrected as a tilt of; ``mdoc``, the series mdoc
    (path) it was assigned from. The row's metadata is decoded for this look only: a look at
    every row of a long history leaves none of them held decoded
    (:class:`~daemon.state.ledger.MovieRow`)."""
    return _tilt_field(row.peek_metadata(), name)


def _tilt_field(metadata: Mapping[str, Any], name: str) -> str | None:
    tilt = (metadata.get("extra_record") or {}).get("tilt")
    value = tilt.get(name) if isinstance(tilt, Mapping) else None
    return value if isinstance(value, str) and value else None


def row_series(row: Any) -> set[str]:
    """Every series a state row names (its recorded tilt's, its log context's): a series any
    row names still has a tilt."""
    names = {recorded_tilt_field(row, "series"),
             (row.peek_metadata().get("log_context") or {}).get("series")}
    return {n for n in names if isinstance(n, str) and n}


@dataclass(frozen=True, slots=True)
class _RowFacts:
    """What the resolver reads of one row (``row``, the object they were read from)."""

    row: Any
    observation: MovieObservation
    series: str | None  # the row's log context's series


class RowsView:
    """What the resolver reads of the newest rows, kept up to date by :meth:`update` (row
    objects the store hands again are not read again); ``relative`` gives a path's name below
    the watch folder."""

    def __init__(self, relative: Callable[[str], str]) -> None:
        self._relative = relative
        self.rows: Mapping[str, Any] = {}
        self._facts: dict[str, _RowFacts] = {}
        #: movie path -> what the resolution is told of its movie (name, first seen, mtime
        #: and the series mdoc its record names), of the movies in the watched tree: a row of
        #: a movie outside it (the state of an earlier run that watched another folder, its
        #: name left whole by ``relative``, ``/``-rooted) is no tilt of this tree's series
        #: (an mdoc in the watch folder itself took an old session's movie of a listed name
        #: in ``/data/old/`` for its tilt)
        self.observations: dict[str, MovieObservation] = {}
        #: name below the watch folder -> movie path, of every row
        self.path_of_name: dict[str, str] = {}
        self._paths_named: dict[str, set[str]] = {}  # name -> its paths (one, but for a
        # database that holds both a relative and an absolute path of one movie)
        self._counts: dict[str, list[int]] = {}  # series -> [rows done, failed or quarantined]
        self._members: dict[str, set[str]] = {}  # series -> paths of the rows that name it
        self.rows_read = 0  # rows whose facts were read (for tests and profiles)
        self._touched: set[str] = set()  # names whose row was read or forgotten since taken

    def update(self, rows: Mapping[str, Any]) -> None:
        """Take a new version of the newest rows (movie path -> row): the facts of a row are
        read again only when the store hands another object for its path."""
        if rows is self.rows:
            return
        for path in self._facts.keys() - rows.keys():
            self._forget(path)
        for path, row in rows.items():
            facts = self._facts.get(path)
            if facts is not None and facts.row is row:
                continue
            if facts is not None:
                self._forget(path)
            self._read(path, row)
        self.rows = rows

    def take_touched(self) -> set[str]:
        """The names whose row was read (new or written) or forgotten since the last call."""
        touched, self._touched = self._touched, set()
        return touched

    def done_and_failed(self, series: str, listed: frozenset[str] | None = None
                        ) -> tuple[int, int]:
        """(rows done, rows failed or quarantined) whose log context names ``series``; with
        ``listed``, only those of the movies so named (the tilts its mdoc lists now: a retaken
        tilt's discarded movie, corrected as a tilt before the mdoc dropped it, is no longer
        one of them). A listed movie quarantined before its series was resolved (at validation:
        a corrupt header, a truncated file) has no series in its log context: it is counted
        among the failed all the same."""
        if listed is None:
            done, failed = self._counts.get(series, (0, 0))
            return done, failed
        members = self._members.get(series, set())
        rows = [self._facts[path] for path in members]
        rows = [facts.row for facts in rows if facts.observation.name in listed]
        unresolved = [self._facts[path] for name in listed
                      if (path := self.path_of_name.get(name)) is not None
                      and path not in members and path in self._facts]
        return (sum(row.status == "done" for row in rows),
                sum(failed_tilt(row) for row in rows)
                + sum(facts.series is None and failed_tilt(facts.row) for facts in unresolved))

    def _read(self, path: str, row: Any) -> None:
        metadata = row.peek_metadata()  # one decoding for both fields, not kept
        observation = MovieObservation(self._relative(path), row.first_seen, row.key.mtime_ns,
                                       _tilt_field(metadata, "mdoc"))
        series = (metadata.get("log_context") or {}).get("series")
        facts = _RowFacts(row, observation, series if isinstance(series, str) else None)
        self._facts[path] = facts
        if not observation.name.startswith("/"):
            self.observations[path] = observation
        self.path_of_name[observation.name] = path
        self._paths_named.setdefault(observation.name, set()).add(path)
        self._count(path, facts, +1)
        self.rows_read += 1
        self._touched.add(observation.name)

    def _forget(self, path: str) -> None:
        facts = self._facts.pop(path)
        self.observations.pop(path, None)
        name = facts.observation.name
        self._touched.add(name)
        paths = self._paths_named[name]
        paths.discard(path)
        if not paths:
            del self._paths_named[name], self.path_of_name[name]
        elif self.path_of_name[name] == path:  # the name stays, with another of its paths
            self.path_of_name[name] = max(paths)
        self._count(path, facts, -1)

    def _count(self, path: str, facts: _RowFacts, sign: int) -> None:
        if facts.series is None:
            return
        members = self._members.setdefault(facts.series, set())
        if sign > 0:
            members.add(path)
        else:
            members.discard(path)
        counts = self._counts.setdefault(facts.series, [0, 0])
        counts[0] += sign * (facts.row.status == "done")
        counts[1] += sign * failed_tilt(facts.row)
