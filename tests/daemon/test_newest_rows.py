"""The newest row of each movie path, read incrementally: always what reading the whole table
gives (a real ledger through inserts, status changes, a redo's new id, a move, a requeue), and
the table is not read whole while only rows are added or updated."""

from __future__ import annotations

from daemon.state.ledger import Ledger, MovieKey
from daemon.state.newest import FULL_READ_S, NewestRows


def _whole(ledger: Ledger) -> dict[str, object]:
    """What reading every row gives: by mtime, then insertion, the last is newest."""
    newest = {}
    for row in ledger.rows():
        if row.key.size >= 0:
            newest[row.key.path] = row
    return newest


def test_incremental_reads_agree_with_whole_reads_through_every_kind_of_write(tmp_path):
    clock = [0.0]
    wall = [1000.0]
    cache = NewestRows(clock=lambda: clock[0])
    with Ledger(tmp_path / "state.sqlite", clock=lambda: wall[0]) as ledger:
        def check() -> None:
            wall[0] += 1.0
            assert cache.rows(ledger) == _whole(ledger)

        keys = [MovieKey(f"/w/m_{i}.mrc", 100, 10 + i, "fp") for i in range(6)]
        for key in keys:
            ledger.add(key)
            check()
        assert cache.whole_reads == 1  # the first look only
        ledger.claim(keys[0])
        check()
        ledger.mark_done(keys[0], outputs={"sum": "/o/m_0.mrc"}, timings={}, summary={})
        check()
        grown = MovieKey(keys[1].path, 200, 99, "fp")  # the file grew: a newer row, same path
        ledger.add(grown)
        check()
        ledger.add(MovieKey("/w/skipped.txt", -1, -1, "fp"), status="quarantined", error="x")
        check()
        assert cache.whole_reads == 1
        ledger.redo(keys[0])  # a new id: the old one is gone
        check()
        ledger.move(keys[2].path, "/w/renamed/m_2.mrc", size=keys[2].size,
                    mtime_ns=keys[2].mtime_ns)
        check()
        ledger.mark_failed(keys[3], "bad", quarantine=True)
        check()
        ledger.requeue([keys[3].path])  # its row dropped
        check()
        clock[0] += FULL_READ_S  # and every FULL_READ_S in any case
        check()
        reads = cache.whole_reads
        check()  # nothing written: nothing read
        assert cache.whole_reads == reads


def test_writes_the_latest_stamp_does_not_tell_are_seen_at_once(tmp_path):
    """A status change stamped with the latest ``updated`` already seen (one clock tick), one
    stamped below it (the wall clock stepped back) and an inode learnt: each is seen at the
    next look, not after the periodic whole read."""
    wall = [1000.0]
    cache = NewestRows(clock=lambda: 0.0, wall=lambda: wall[0])
    with Ledger(tmp_path / "state.sqlite", clock=lambda: wall[0]) as ledger:
        a, b = (MovieKey(f"/w/{n}.mrc", 100, 10, "fp") for n in "ab")
        ledger.add(a)
        ledger.add(b)
        assert cache.rows(ledger)["/w/a.mrc"].status == "pending"
        ledger.claim(a)  # the same tick
        assert cache.rows(ledger)["/w/a.mrc"].status == "running"
        wall[0] = 900.0  # stepped back by 100 s
        ledger.claim(b)
        assert cache.rows(ledger)["/w/b.mrc"].status == "running"
        wall[0] = 1010.0
        ledger.set_inode(a, (5, 6))
        assert cache.rows(ledger)["/w/a.mrc"].inode == (5, 6)
        assert cache.rows(ledger) == _whole(ledger)
