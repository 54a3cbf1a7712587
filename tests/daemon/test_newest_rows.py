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


def test_a_look_at_a_table_of_weeks_of_sessions_reads_an_index_not_every_row(tmp_path):
    """The signature and the rows written since the last look come from the ``updated``
    index (a pass over 28,000 rows with their JSON took 12 ms each, at every scan and
    finished tilt); the row objects of paths not written are the ones handed before."""
    import sqlite3

    wall = [1000.0]
    cache = NewestRows(clock=lambda: 0.0, wall=lambda: wall[0])
    with Ledger(tmp_path / "state.sqlite", clock=lambda: wall[0]) as ledger:
        keys = [MovieKey(f"/w/m_{i}.mrc", 100, 10 + i, "fp") for i in range(50)]
        for key in keys:
            ledger.add(key)
        cache.rows(ledger)
        wall[0] += 60.0
        ledger.claim(keys[3])
        first = cache.rows(ledger)  # rows written within a few seconds of this are read again
        wall[0] += 60.0
        ledger.claim(keys[7])
        statements: list[str] = []
        ledger._db.set_trace_callback(statements.append)
        rows = cache.rows(ledger)
        ledger._db.set_trace_callback(None)
        assert rows["/w/m_7.mrc"].status == "running" and rows == _whole(ledger)
        assert all(rows[k.path] is first[k.path] for k in keys if k not in (keys[3], keys[7]))
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")
                 and "movies" in s]
        assert len(reads) == 2  # the signature, the rows written
        plain = sqlite3.connect(tmp_path / "state.sqlite")
        for sql in reads:
            plan = [step[-1] for step in plain.execute("EXPLAIN QUERY PLAN " + sql)]
            assert not any(step == "SCAN movies" for step in plan), (sql, plan)


def test_rows_read_again_as_they_were_keep_their_objects_and_the_mapping_stays(tmp_path):
    """The slack re-reads the last seconds' rows at every look: those unchanged are the same
    objects, and with none changed the same mapping, so holders that tell a written row by
    identity (the resolver's view, its settled series) see no change."""
    wall = [1000.0]
    newest = NewestRows(clock=lambda: 0.0, wall=lambda: wall[0])
    with Ledger(tmp_path / "state.sqlite", clock=lambda: wall[0]) as ledger:
        keys = [MovieKey(f"/w/m_{i}.tif", 100, i, "fp") for i in range(3)]
        for key in keys:
            ledger.add(key)
        first = newest.rows(ledger)
        wall[0] += 1.0  # within the slack: every row is read again
        ledger.claim(keys[0])
        second = newest.rows(ledger)
        assert second is not first and second[keys[0].path].status == "running"
        assert all(second[k.path] is first[k.path] for k in keys[1:])
        wall[0] += 1.0
        ledger.set_service_state({"heartbeat": wall[0]})  # another table written
        assert newest.rows(ledger) is second
