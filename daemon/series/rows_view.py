"""What the tilt-series resolver reads of the state rows, derived once per version of them.

The store hands the newest row of each movie as one mapping per version
(:class:`daemon.state.newest.NewestRows`: the same object while no row was written). A scan
needs, of every row of the session and of weeks of sessions before it (20,000 rows and more
in one output folder): the movie's name below the watch folder and what the resolution is
told of it, the path of each name, and per series the rows done and failed. Made at every
scan and every series event, they cost the main loop O(rows) each time; a :class:`RowsView`
makes each at its first use and keeps it until the rows change. The rows are only read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from daemon.series.resolution import MovieObservation

__all__ = ["RowsView", "recorded_tilt_field", "row_series"]


def recorded_tilt_field(row: Any, name: str) -> str | None:
    """Field ``name`` of a state row's tilt record (from the row alone: no file read), or
    None: ``series``, the series it was corrected as a tilt of; ``mdoc``, the series mdoc
    (path) it was assigned from."""
    tilt = (row.metadata.get("extra_record") or {}).get("tilt")
    value = tilt.get(name) if isinstance(tilt, Mapping) else None
    return value if isinstance(value, str) and value else None


def row_series(row: Any) -> set[str]:
    """Every series a state row names (its recorded tilt's, its log context's): a series any
    row names still has a tilt."""
    names = {recorded_tilt_field(row, "series"),
             (row.metadata.get("log_context") or {}).get("series")}
    return {n for n in names if isinstance(n, str) and n}


class RowsView:
    """Derived views of one version of the newest rows (``rows``: movie path -> row), each
    made at its first use; ``relative`` gives a path's name below the watch folder."""

    def __init__(self, rows: Mapping[str, Any], relative: Callable[[str], str]) -> None:
        self.rows = rows
        self._relative = relative

    @cached_property
    def observations(self) -> dict[str, MovieObservation]:
        """Movie path -> what the resolution is told of the movie of each row (its name, first
        seen, mtime and the series mdoc its record names)."""
        return {path: MovieObservation(self._relative(path), row.first_seen, row.key.mtime_ns,
                                       recorded_tilt_field(row, "mdoc"))
                for path, row in self.rows.items()}

    @cached_property
    def path_of_name(self) -> dict[str, str]:
        """Name below the watch folder -> movie path, of every row."""
        return {self._relative(path): path for path in self.rows}

    @cached_property
    def done_and_failed(self) -> dict[str, tuple[int, int]]:
        """Series (the rows' log context) -> (rows done, rows failed or quarantined)."""
        counts: dict[str, tuple[int, int]] = {}
        for row in self.rows.values():
            series = (row.metadata.get("log_context") or {}).get("series")
            if series is None:
                continue
            done, failed = counts.get(series, (0, 0))
            counts[series] = (done + (row.status == "done"),
                              failed + (row.status in ("failed", "quarantined")))
        return counts
