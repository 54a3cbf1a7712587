"""Complete series whose last look changed nothing: the resolver skips them until something
they read changes.

A state database kept for months holds thousands of complete series of sessions whose files
are gone. At every scan the resolver looked at each of them: its movies' rows, its lock and
mdoc on disk, its completion state, for a state that could not change (100,000 rows, about
2,400 series: 0.3 s a scan). A complete series changes only through what
:func:`daemon.series.lifecycle.update_series_state` reads of it: the movies it knows, lists or
was assembled with (their rows, whether they are on disk, whether their metadata moved) and its
summary in the resolution. So a series whose look left it as it was is *settled* with what it
read, and looked at again only when

* the resolution gives another summary object for it (its top-level folder was resolved again,
  :mod:`daemon.series.partition`: a movie or mdoc of it changed, or a wait ended);
* its state object is another (assembled, re-opened, removed, by any path of the resolver);
* a movie name it read is *touched*: its row was written or forgotten
  (:meth:`daemon.series.rows_view.RowsView.take_touched`), its file appeared on disk or went,
  or its metadata moved (to be redone);
* for a series with a tilt quarantined as vanished: the files on disk without a row changed
  (such a tilt renamed while it waited is found again by its inode).

What a complete series notes of its stack's ``.openTS`` lock (``lock_seen``: a lock, or its
mdoc missing, seen once; it decides whether the series, once re-opened, completes when the
lock goes or when its mdoc has been quiet) is still looked for at every scan, by the resolver,
while a settled series has not seen one: its lock and mdoc are looked up (three stat calls),
not its movies.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Set
from dataclasses import dataclass
from typing import Any

__all__ = ["SettledSeries"]


@dataclass(frozen=True, slots=True)
class _Settled:
    summary: Any  # the SeriesSummary it was looked at with (compared by identity)
    state: Any  # the SeriesState it was left in (compared by identity)
    names: frozenset[str]  # movie names it read: known, listed and assembled with
    watches_renames: bool  # one of its tilts is quarantined as vanished


class SettledSeries:
    """The settled series and the movie names each read (an index from name to series)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Settled] = {}
        self._by_name: dict[str, set[str]] = {}
        self._disk_names: frozenset[str] = frozenset()
        self._unrecorded: frozenset[Hashable] = frozenset()

    def __len__(self) -> int:
        return len(self._entries)

    def look(self, series: Set[str], *, touched: Iterable[str], disk_names: Set[str],
             unrecorded: Set[Hashable]) -> None:
        """Before a scan's look at the series: forget those no longer in the resolution
        (``series``), and those that read a ``touched`` name or a name whose file appeared on
        disk or went (``disk_names``: the movies on disk now), or that watch renames when the
        files on disk without a row (``unrecorded``) changed."""
        for name in [n for n in self._entries if n not in series]:
            self.forget(name)
        disk = frozenset(disk_names)
        for movie in set(touched) | (disk ^ self._disk_names):
            for name in list(self._by_name.get(movie, ())):
                self.forget(name)
        self._disk_names = disk
        if unrecorded != self._unrecorded:
            self._unrecorded = frozenset(unrecorded)
            for name in [n for n, e in self._entries.items() if e.watches_renames]:
                self.forget(name)

    def holds(self, name: str, summary: Any, state: Any) -> bool:
        """Series ``name`` is settled with this very summary and state."""
        entry = self._entries.get(name)
        return entry is not None and entry.summary is summary and entry.state is state

    def settle(self, name: str, summary: Any, state: Any, names: Iterable[str], *,
               watches_renames: bool) -> None:
        """Series ``name`` was looked at with ``summary`` and left in ``state``, reading the
        movie names ``names``."""
        self.forget(name)
        entry = _Settled(summary, state, frozenset(names), watches_renames)
        self._entries[name] = entry
        for movie in entry.names:
            self._by_name.setdefault(movie, set()).add(name)

    def forget(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        for movie in entry.names:
            holders = self._by_name.get(movie)
            if holders is not None:
                holders.discard(name)
                if not holders:
                    del self._by_name[movie]
