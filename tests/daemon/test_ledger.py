"""Ledger: durable per-movie state keyed by path, size, mtime and parameter fingerprint."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon.state.ledger import Ledger, MovieKey


def key(path="/d/a.mrc", size=100, mtime=1, fp="f1") -> MovieKey:
    return MovieKey(path, size, mtime, fp)


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "state.sqlite") as db:
        yield db


def test_database_uses_write_ahead_logging(tmp_path):
    Ledger(tmp_path / "s.sqlite").close()
    mode = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_movie_goes_pending_running_done_with_one_attempt(ledger):
    ledger.add(key())
    assert ledger.claim(key()) == 1
    assert ledger.get(key()).status == "running"
    ledger.mark_done(key(), outputs={"sum": "/o/a.mrc"}, timings={"total": 1.0},
                     summary={"drift": {"total_A": 3.0}})
    row = ledger.get(key())
    assert (row.status, row.attempts, row.outputs["sum"]) == ("done", 1, "/o/a.mrc")


def test_adding_the_same_key_twice_keeps_one_row(ledger):
    ledger.add(key())
    ledger.add(key())
    assert ledger.counts()["pending"] == 1


def test_a_movie_is_claimed_once_and_added_again_it_stays_done_with_its_outputs(ledger):
    """One movie, one correction, whatever the caller checked before: a running or done row
    cannot be claimed again, and a done movie seen again (another scan, a restart) keeps its
    state and outputs."""
    ledger.add(key())
    ledger.claim(key())
    with pytest.raises(LookupError):
        ledger.claim(key())  # running: a second worker would correct it twice
    ledger.mark_done(key(), outputs={"sum": "/o/a.mrc"}, timings={}, summary={})
    with pytest.raises(LookupError):
        ledger.claim(key())
    ledger.add(key())
    row = ledger.get(key())
    assert (row.status, row.attempts, row.outputs) == ("done", 1, {"sum": "/o/a.mrc"})


def test_a_rename_leaves_a_movie_being_corrected_under_the_name_its_worker_has(ledger):
    ledger.add(key("/d/b.mrc"))
    ledger.claim(key("/d/b.mrc"))
    assert ledger.move("/d/b.mrc", "/e/b.mrc", size=100, mtime_ns=1) == []
    assert ledger.get(key("/d/b.mrc")).status == "running"
    assert ledger.get(key("/e/b.mrc")) is None


def test_a_changed_file_or_new_parameters_is_a_new_movie(ledger):
    ledger.add(key())
    ledger.claim(key())
    ledger.mark_done(key(), outputs={}, timings={}, summary={})
    ledger.add(key(size=200))
    ledger.add(key(fp="f2"))
    assert ledger.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 0, "quarantined": 0}
    # what an operator is shown: one movie, its newest version pending (rows stay per version)
    assert ledger.movie_counts() == {"pending": 1, "running": 0, "done": 0, "failed": 0,
                                     "quarantined": 0}


def test_running_rows_left_by_a_crash_are_redone_after_restart(tmp_path):
    db = Ledger(tmp_path / "s.sqlite")
    db.add(key())
    db.claim(key())
    db.add(key("/d/b.mrc"))
    db.close()  # the daemon dies here
    db = Ledger(tmp_path / "s.sqlite")
    assert db.recover_running() == [key()]
    assert db.get(key()).status == "pending"
    assert db.next_pending().key == key()  # oldest first
    assert db.claim(key()) == 2
    db.close()


def test_backlog_is_served_in_acquisition_order_by_mtime(ledger):
    ledger.add(key("/d/late.mrc", mtime=30))
    ledger.add(key("/d/early.mrc", mtime=10))
    ledger.add(key("/d/mid.mrc", mtime=20))
    order = []
    while (row := ledger.next_pending()) is not None:
        order.append(row.key.path)
        ledger.claim(row.key)
    assert order == ["/d/early.mrc", "/d/mid.mrc", "/d/late.mrc"]


def test_failed_movie_waits_for_its_retry_time_then_quarantine_records_the_reason(tmp_path):
    now = [1000.0]
    db = Ledger(tmp_path / "s.sqlite", clock=lambda: now[0])
    db.add(key())
    db.claim(key())
    assert db.mark_failed(key(), "worker died", quarantine=False, retry_delay_s=10) == "failed"
    assert db.next_pending() is None
    now[0] += 11
    assert db.next_pending().key == key()
    db.claim(key())
    assert db.mark_failed(key(), "worker died again", quarantine=True) == "quarantined"
    row = db.get(key())
    assert (row.status, row.attempts, row.failures, row.error) == ("quarantined", 2, 2,
                                                                   "worker died again")
    assert db.next_pending() is None
    db.close()


def test_environment_failures_do_not_count_towards_quarantine(ledger):
    ledger.add(key())
    ledger.claim(key())
    ledger.mark_failed(key(), "No space left on device", quarantine=False, count=False)
    assert ledger.get(key()).failures == 0


def test_release_gives_back_an_abandoned_movie_without_counting_the_attempt(ledger):
    ledger.add(key())
    ledger.claim(key())
    ledger.release(key())
    row = ledger.get(key())
    assert (row.status, row.attempts) == ("pending", 0)


def test_redo_makes_a_done_row_the_newest_pending_row_of_its_file_with_its_metadata(ledger):
    """Done under f1, then under f2 (metadata that moved), then f1 again (it moved back): the
    f1 row is corrected anew, and every reader of a path's last row sees it."""
    ledger.add(key(fp="f1"), metadata={"dose": 1}, inode=(1, 2))
    ledger.claim(key(fp="f1"))
    ledger.mark_done(key(fp="f1"), outputs={"sum": "/o/a.mrc"}, timings={}, summary={})
    ledger.add(key(fp="f2"))
    assert not ledger.redo(key(fp="f2"))  # pending, not done
    assert ledger.redo(key(fp="f1"))
    rows = ledger.rows(path="/d/a.mrc")
    assert [(r.key.fingerprint, r.status) for r in rows] == [("f2", "pending"), ("f1", "pending")]
    assert (rows[-1].metadata, rows[-1].inode, rows[-1].outputs) == ({"dose": 1}, (1, 2), {})
    assert ledger.movie_counts()["pending"] == 1


def test_adopted_outputs_are_recorded_as_done(ledger):
    ledger.adopt(key(), outputs={"sum": "/o/a.mrc"}, summary={}, timings={})
    row = ledger.get(key())
    assert row.status == "done" and row.attempts == 0 and "adopted" in row.error


def test_a_read_only_reader_sees_the_writers_state_while_it_is_open(tmp_path):
    writer = Ledger(tmp_path / "s.sqlite")
    writer.add(key())
    writer.set_service_state({"pid": 123, "waiting": 2})
    with Ledger(tmp_path / "s.sqlite", read_only=True) as reader:
        assert reader.counts()["pending"] == 1
        assert reader.service_state() == {"pid": 123, "waiting": 2}
        with pytest.raises(sqlite3.OperationalError):
            reader._db.execute("DELETE FROM movies")
    writer.close()


def test_reading_a_stopped_daemons_database_writes_nothing_beside_it(tmp_path):
    """``motionwatch status`` after the daemon stopped: the write-ahead log is gone, and a
    plain read-only open made a new ``-wal`` and ``-shm``, which a reader who may not write in
    the folder cannot (staff reading through the group), and which, made by root, lock the
    daemon's own user out of its database."""
    with Ledger(tmp_path / "s.sqlite") as writer:
        writer.add(key())
    assert os.listdir(tmp_path) == ["s.sqlite"]
    with Ledger(tmp_path / "s.sqlite", read_only=True) as reader:
        assert reader.counts()["pending"] == 1
    assert os.listdir(tmp_path) == ["s.sqlite"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to act as another user")
def test_a_group_member_who_may_not_write_in_the_folder_reads_a_stopped_daemons_state():
    folder = Path(tempfile.mkdtemp(prefix="mw-group-"))  # not below pytest's 0700 folders
    try:
        with Ledger(folder / "s.sqlite") as writer:
            writer.add(key())
        os.chown(folder, 0, 65534)
        os.chown(folder / "s.sqlite", 0, 65534)
        folder.chmod(0o2750)  # as the systemd notes set the output folder up
        (folder / "s.sqlite").chmod(0o640)
        def as_group_member(code: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-c", code, str(folder / "s.sqlite")], capture_output=True,
                text=True, cwd="/", env={**os.environ,
                                         "PYTHONPATH": str(Path(__file__).parents[2])})

        if as_group_member("import daemon.state.ledger").returncode != 0:
            pytest.skip("this checkout or its interpreter is not readable by another user")
        result = as_group_member("import sys; from daemon.state.ledger import Ledger; "
                                 "print(Ledger(sys.argv[1], read_only=True).counts()['pending'])")
        assert (result.returncode, result.stdout.strip()) == (0, "1"), result.stderr
    finally:
        shutil.rmtree(folder)


def test_read_only_open_of_a_missing_database_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no motionwatch state database"):
        Ledger(tmp_path / "nope.sqlite", read_only=True)


def test_a_path_that_is_not_utf8_round_trips_and_stays_distinct(ledger):
    odd = os.fsdecode(b"/d/bad_\xe9\xff.mrc")
    ledger.add(key(odd))
    ledger.add(key("/d/bad_\u00e9\u00ff.mrc"))  # the same characters, validly encoded
    ledger.claim(key(odd))
    ledger.mark_failed(key(odd), f"UnreadableMovieError: {odd}: bad", quarantine=True)
    row = ledger.get(key(odd))
    assert os.fsencode(row.key.path) == b"/d/bad_\xe9\xff.mrc" and row.status == "quarantined"
    assert [os.fsencode(r.key.path) for r in ledger.rows(path=odd)] == [b"/d/bad_\xe9\xff.mrc"]
    assert ledger.counts()["pending"] == 1
    assert ledger.recover_running() == []


def test_a_far_future_mtime_round_trips_and_sorts_after_the_present(ledger):
    year_2300_ns = 10_413_792_000 * 10**9  # beyond SQLite's 64-bit INTEGER
    ledger.add(key("/d/future.mrc", mtime=year_2300_ns))
    ledger.add(key("/d/now.mrc", mtime=1_700_000_000 * 10**9))
    assert ledger.get(key("/d/future.mrc", mtime=year_2300_ns)).key.mtime_ns == year_2300_ns
    assert [r.key.path for r in ledger.rows()] == ["/d/now.mrc", "/d/future.mrc"]
    ledger.set_mdoc_state("/d/future.mdoc", sha256="x", size=1, mtime_ns=year_2300_ns,
                          kind="series", unchanged_since=0.0)
    assert ledger.mdoc_states()["/d/future.mdoc"]["mtime_ns"] == year_2300_ns


def test_an_unstarted_attempt_is_not_counted(ledger):
    ledger.add(key())
    ledger.claim(key())
    ledger.mark_failed(key(), "worker could not start", quarantine=False, count=False,
                       started=False)
    row = ledger.get(key())
    assert (row.status, row.attempts, row.failures) == ("failed", 0, 0)


def test_requeue_lifts_quarantines_by_dropping_their_rows_and_counts_the_requeues(ledger):
    """A quarantined row holds the key and metadata of its quarantine (none, when validation
    rejected the file): a requeued movie is admitted afresh, never set pending as it was."""
    ledger.add(key("/d/a.mrc"))
    ledger.add(key("/d/b.mrc"))
    for name in ("/d/a.mrc", "/d/b.mrc"):
        ledger.claim(key(name))
        ledger.mark_failed(key(name), "crashed", quarantine=True)
    ledger.add(key("/d/c.mrc"))
    ledger.add(MovieKey("/d/notes.txt", -1, -1, "f1"), status="quarantined", error="not a movie")
    assert ledger.requeue_serial() == 0
    assert ledger.requeue(["b.mrc"]) == [key("/d/b.mrc")]
    assert ledger.requeue_serial() == 1
    assert ledger.requeue() == [key("/d/a.mrc")]
    assert ledger.requeue() == []
    assert ledger.requeue_serial() == 2  # counts requeues that lifted a quarantine
    # what each lifted, for a running daemon's admission to look at again
    assert ledger.requeued_since(0) == [("/d/b.mrc", key("/d/b.mrc").size,
                                         key("/d/b.mrc").mtime_ns),
                                        ("/d/a.mrc", key("/d/a.mrc").size,
                                         key("/d/a.mrc").mtime_ns)]
    assert [v[0] for v in ledger.requeued_since(1)] == ["/d/a.mrc"]
    assert [(r.key.path, r.status) for r in ledger.rows()] == [
        ("/d/notes.txt", "quarantined"), ("/d/c.mrc", "pending")]


def test_requeue_leaves_a_version_whose_file_has_another_version_recorded_since(ledger):
    """rep.mrc's first version was quarantined (its copy stalled), then the copy made again
    was corrected; ``retry`` said it requeued the first (and counted it), though its file was
    the second version: nothing came of it. A version quarantined under other parameters
    (the same file) and the newest version quarantined are requeued."""
    old, new = key("/d/rep.mrc", size=100, mtime=1), key("/d/rep.mrc", size=200, mtime=2)
    for version in (old, new):
        ledger.add(version)
        ledger.claim(version)
    ledger.mark_failed(old, "stalled", quarantine=True)
    ledger.mark_done(new, outputs={}, timings={}, summary={})
    twice = key("/d/b.mrc", fp="f0"), key("/d/b.mrc", fp="f1")  # parameters changed
    for version in twice:
        ledger.add(version)
        ledger.claim(version)
        ledger.mark_failed(version, "bad", quarantine=True)
    newest = key("/d/c.mrc", size=300, mtime=3)
    for version in (key("/d/c.mrc"), newest):
        ledger.add(version)
        ledger.claim(version)
        ledger.mark_failed(version, "bad", quarantine=True)
    assert ledger.requeue(["rep.mrc"]) == []
    assert sorted(ledger.requeue(), key=str) == sorted([*twice, newest], key=str)


def test_a_corrupt_database_is_moved_aside_and_a_new_one_begun(tmp_path):
    from daemon.state.ledger import open_or_rebuild

    db = tmp_path / "motionwatch.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    ledger, moved, reason = open_or_rebuild(db, clock=lambda: 0.0)
    with ledger:
        assert ledger.counts()["pending"] == 0
    assert moved.name == "motionwatch.sqlite.corrupt-19700101T000000Z"
    assert moved.read_bytes().startswith(b"this is not") and reason


def test_rows_named_finds_a_file_name_in_any_folder_and_only_that_name(ledger):
    """The candidates of a renamed folder: the same file name, size and mtime, under any
    folder, names the file system gives that are not UTF-8 included, and no other name (a
    folder called like the file, a longer name ending in it)."""
    names = ["/s/grid1/m_01.tif", "/s/grid1_x/m_01.tif", "/s/\udcff/m_01.tif", "m_01.tif",
             "/s/m_01.tif/m_02.tif", "/s/grid1/am_01.tif", "/s/\udce9/bad_\udce9.tif",
             # Latin-1 'café/µm.tif', and a folder ending in a lead byte before a file name
             # starting with a continuation byte: read as UTF-8 they run into one character
             os.fsdecode(b"/s/caf\xe9/\xb5m.tif"), os.fsdecode(b"/s/d\xc3/\x80x.tif")]
    for i, name in enumerate(names):
        ledger.add(MovieKey(name, 100, 7, "fp"), inode=(1, i))
    ledger.add(MovieKey("/s/grid2/m_01.tif", 100, 8, "fp"))  # another mtime
    ledger.add(MovieKey("/s/grid3/m_01.tif", 101, 7, "fp"))  # another size
    assert [r.key.path for r in ledger.rows_named("m_01.tif", 100, 7)] == names[:4]
    assert [r.key.path for r in ledger.rows_named("bad_\udce9.tif", 100, 7)] == [names[6]]
    assert ledger.rows_named("grid1", 100, 7) == []
    for odd in names[7:]:
        assert [r.key.path for r in ledger.rows_named(os.path.basename(odd), 100, 7)] == [odd]
    assert [r.key.path for r in ledger.rows_of_inode_number(2, 100, 7)] == [names[2]]
    assert ledger.rows_of_inode_number(2, 100, 8) == []


def test_a_rows_json_columns_are_decoded_from_its_own_text_also_in_a_copy(tmp_path):
    """Rows keep their JSON columns as text until read (a history of months read whole); a
    copy made with other columns reads its own, not what the original decoded."""
    import dataclasses

    with Ledger(tmp_path / "state.sqlite") as ledger:
        key = MovieKey("/w/a.tif", 10, 1, "fp")
        ledger.add(key, metadata={"stem": "a"})
        row = ledger.get(key)
    assert row.metadata["stem"] == "a" and row.peek_metadata() == {"stem": "a"}
    copy = dataclasses.replace(row, texts=row.texts[:3] + ('{"stem": "b"}',))
    assert copy.metadata["stem"] == "b" and row.metadata["stem"] == "a"
    assert copy != row and dataclasses.replace(row) == row
