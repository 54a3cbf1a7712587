"""Ledger: durable per-movie state keyed by path, size, mtime and parameter fingerprint."""

import sqlite3

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


def test_a_changed_file_or_new_parameters_is_a_new_movie(ledger):
    ledger.add(key())
    ledger.claim(key())
    ledger.mark_done(key(), outputs={}, timings={}, summary={})
    ledger.add(key(size=200))
    ledger.add(key(fp="f2"))
    assert ledger.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 0, "quarantined": 0}


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


def test_read_only_open_of_a_missing_database_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no motionwatch state database"):
        Ledger(tmp_path / "nope.sqlite", read_only=True)
