"""The newest state row of each movie path, kept without decoding the whole table each time.

The tilt-series resolver looks at every movie's newest row at every scan and after every
finished tilt. Read whole, a state database of 20,000 rows (a few weeks of sessions in one
output folder) cost 1.9 s a scan and 1.2 s a finished tilt, most of it decoding JSON: the
daemon fell behind a microscope that writes a tilt every few seconds. :class:`NewestRows` reads
only the rows written since its last look (``updated`` at or after the latest it saw, less a
slack for writes within the same clock tick, and every id above the largest it holds). The
database's signature (row count, sum of ids, latest ``updated``, the changes of the writing
connection and the data version other connections' writes move) says when nothing changed at
all, and when rows went away (a requeue, a redo's new id, a ghost removed): the table is then
read whole. So it is while the wall clock is behind the latest ``updated`` (stepped back: a
write then may stamp a row below what was seen), and every :data:`FULL_READ_S` seconds in any
case.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["NewestRows", "FULL_READ_S", "SLACK_S"]

#: seconds between whole reads of the table, whatever the signature says
FULL_READ_S = 300.0
#: seconds of ``updated`` re-read before the latest seen (writes within one clock tick)
SLACK_S = 5.0


class NewestRows:
    """The newest row (latest mtime, then latest id) of each path of real movies (size >= 0)
    of one state database, read incrementally (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall  # the ledger's clock, whose ``updated`` stamps are compared
        self._by_id: dict[int, Any] = {}
        self._newest: dict[str, Any] = {}
        self._signature: tuple[int, int, float, int, int] | None = None
        self._read_whole_at: float | None = None
        self.whole_reads = 0  # for tests and profiles: how often the table was read whole

    def rows(self, ledger: Any) -> dict[str, Any]:
        """Path -> newest row, as of now (``ledger``: a :class:`~daemon.state.ledger.Ledger`)."""
        signature = ledger.rows_signature()
        now = self._clock()
        due = self._read_whole_at is None or now - self._read_whole_at >= FULL_READ_S
        if signature == self._signature and not due:
            return self._newest
        latest = self._signature[2] if self._signature is not None else 0.0
        if due or self._wall() < latest - SLACK_S:  # or a clock stepped back
            self._read_whole(ledger, now)
        else:
            written = ledger.rows_written_since(latest - SLACK_S, max(self._by_id, default=0))
            before = [self._by_id.get(row.row_id) for row in written]
            # a row read again as it was (the slack re-reads the last seconds' rows) keeps its
            # object, and the mapping stays the same object while no row changed: those who
            # hold rows tell a written one by identity (RowsView; a complete series is looked
            # at again when a row of its tilts is another object, daemon/series/settled.py)
            changed = [(old, row) for old, row in zip(before, written) if old != row]
            for _, row in changed:
                self._by_id[row.row_id] = row
            if (len(self._by_id), sum(self._by_id)) != signature[:2]:  # rows went away
                self._read_whole(ledger, now)
            elif not changed:  # another table written (the heartbeat), or rows read again
                self._signature = signature
                return self._newest
            elif all(old is None or _place(old) == _place(row) for old, row in changed):
                # rows added, or updated where they were (a status, its outputs): the newest
                # of the other paths stand; each written row is weighed against its path's
                # (O(written), not O(rows): a finished tilt no longer costs the main loop a
                # pass over weeks of sessions' rows)
                self._signature = signature
                self._newest = dict(self._newest)
                for _, row in changed:
                    self._weigh(self._newest, row)
                return self._newest
        self._signature = signature
        self._newest = self._newest_of(self._by_id.values())
        return self._newest

    def _read_whole(self, ledger: Any, now: float) -> None:
        self._by_id = {row.row_id: row for row in ledger.rows()}
        self._read_whole_at = now
        self.whole_reads += 1

    @staticmethod
    def _newest_of(rows: Any) -> dict[str, Any]:
        newest: dict[str, Any] = {}
        for row in rows:
            NewestRows._weigh(newest, row)
        return newest

    @staticmethod
    def _weigh(newest: dict[str, Any], row: Any) -> None:
        """Make ``row`` its path's entry of ``newest`` if it is the newest there (latest
        mtime, then latest id; itself written again) - real movies only (size >= 0)."""
        if row.key.size < 0:
            return
        held = newest.get(row.key.path)
        if (held is None or held.row_id == row.row_id
                or (row.key.mtime_ns, row.row_id) > (held.key.mtime_ns, held.row_id)):
            newest[row.key.path] = row


def _place(row: Any) -> tuple[str, int, int]:
    """Where a row stands among its path's rows: path, size, mtime."""
    return row.key.path, row.key.size, row.key.mtime_ns
