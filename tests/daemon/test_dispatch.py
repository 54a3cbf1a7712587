"""The dispatcher between the state database and the workers: a movie is handed on once,
under the parameters it was admitted with, and the listeners hear of it after it is recorded."""

from __future__ import annotations

import signal

from dispatch_harness import RecordingPool, three_movie_dispatcher  # tests/helpers

from daemon.events import MovieKey
from daemon.work.workers import Outcome


def test_a_movie_gone_before_a_worker_took_it_is_quarantined_and_the_next_ones_go_on(tmp_path):
    """Deleted between admission and dispatch: quarantined with the reason, never retried in a
    loop that would hold every later movie back."""
    pool = RecordingPool(workers=2)
    dispatcher, ledger, movies = three_movie_dispatcher(tmp_path, pool)
    movies[0].unlink()
    previous = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(
        TimeoutError("dispatch went round a vanished movie for 5 s")))
    signal.alarm(5)
    try:
        dispatcher.dispatch()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    try:
        assert [t.movie_path for t in pool.tasks] == movies[1:]
        assert ledger.counts()["quarantined"] == 1
        assert ledger.get(_key(ledger, movies[0])).status == "quarantined"
    finally:
        ledger.close()


def test_a_movie_waiting_under_other_parameters_is_not_corrected_under_them(tmp_path):
    """A row left pending by a run with other correction parameters (the config changed): the
    worker would correct it with parameters the service no longer has."""
    pool = RecordingPool(workers=4)  # one free for it
    dispatcher, ledger, movies = three_movie_dispatcher(tmp_path, pool)
    stale = movies[1].with_name("TS_01_000.mrc")
    stale.write_bytes(b"y" * 1024)
    st = stale.stat()
    ledger.add(MovieKey(str(stale), st.st_size, st.st_mtime_ns, "another-run's-parameters"))
    try:
        dispatcher.dispatch()
        assert stale not in [t.movie_path for t in pool.tasks]
        assert [t.movie_path for t in pool.tasks] == movies
    finally:
        ledger.close()


def test_the_listeners_hear_of_a_movie_done_once_the_state_database_says_so(tmp_path):
    """A listener (the hand-off files, the feed) reads the database when told: told before the
    row is done, a crash between the two leaves a published movie that a restart redoes."""
    heard = []
    pool = RecordingPool()
    dispatcher, ledger, movies = three_movie_dispatcher(
        tmp_path, pool, finished=lambda name, event: heard.append(
            (name, ledger.get(_key(ledger, movies[0])).status)))
    try:
        dispatcher.dispatch()
        [task] = pool.tasks
        dispatcher.record(Outcome(task.task_id, "done", outputs={"sum": str(tmp_path / "s.mrc")},
                                  record={}, timings_s={}))
        assert heard == [("on_movie_done", "done")]
    finally:
        ledger.close()


def test_a_reference_that_fits_other_movies_but_not_this_one_quarantines_it_at_once(tmp_path):
    """The gain fitted the movie corrected before: a movie it does not fit is the odd one
    (another detector's shape), and retrying it with the same gain cannot help."""
    pool = RecordingPool(workers=2)
    dispatcher, ledger, movies = three_movie_dispatcher(tmp_path, pool)
    try:
        dispatcher.dispatch()
        fits, misfit = pool.tasks
        dispatcher.record(Outcome(fits.task_id, "done", outputs={}, record={}, timings_s={}))
        dispatcher.record(Outcome(misfit.task_id, "config", error="gain 4096 x 4096, movie "
                                  "5760 x 4092"))
        row = ledger.get(_key(ledger, misfit.movie_path))
        assert (row.status, row.failures) == ("quarantined", 1)
    finally:
        ledger.close()


def _key(ledger, path) -> MovieKey:
    (row,) = [r for r in ledger.rows() if r.key.path == str(path)]
    return row.key


def test_the_first_movies_failing_for_pixel_size_and_an_unreadable_dm4_stop_naming_the_extra(
        tmp_path):
    """Two movies without a pixel size, then one whose DM4 gain this installation cannot read:
    the stop says to install the dm4 extra (then the pixel size is said in turn), in whichever
    order they failed."""
    from correction.io.dm import DM4_EXTRA_NEEDED

    dm4 = f"CountRef_a.dm4: reading a Gatan DM4/DM3 file {DM4_EXTRA_NEEDED}: pip install"
    for order in ((0, 1, 2), (2, 0, 1)):
        folder = tmp_path / "".join(map(str, order))
        folder.mkdir()
        pool = RecordingPool(workers=3)
        dispatcher, ledger, _ = three_movie_dispatcher(folder, pool)
        try:
            dispatcher.dispatch()
            errors = ["m.mrc: no pixel size given", "n.mrc: no pixel size given", dm4]
            for task, which in zip(pool.tasks, order):
                dispatcher.record(Outcome(task.task_id, "config", error=errors[which]))
            assert dispatcher.config_error == (
                f"this installation cannot read the gain references of the first 3 movies: "
                f"{dm4}"), order
            assert dispatcher.config_fix.startswith("install the dm4 extra")
        finally:
            ledger.close()


def test_a_pause_whose_wait_is_over_is_not_said_to_hold_correction_back(tmp_path):
    """A Dask scheduler lost, then back: status said "unreachable ... (correction paused)"
    beside "connected" until a movie was corrected, minutes later on long movies."""
    import time

    pool = RecordingPool(workers=1)
    dispatcher, ledger, _ = three_movie_dispatcher(tmp_path, pool)
    with ledger:
        dispatcher.dispatch()
        (task,) = pool.tasks
        dispatcher.record(Outcome(task.task_id, "environment",
                                  error="Dask scheduler tcp://h:8786 unreachable"))
        assert dispatcher.problem() == ("trouble outside the movies: Dask scheduler "
                                        "tcp://h:8786 unreachable (correction paused, retrying)")
        time.sleep(dispatcher.pause.until - time.monotonic() + 0.05)  # the pause's 1 s
        assert dispatcher.problem() == ("trouble outside the movies when last tried: Dask "
                                        "scheduler tcp://h:8786 unreachable (trying again)")
