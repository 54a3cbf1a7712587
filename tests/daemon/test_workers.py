"""Worker pool: one movie per process, crashes and hangs isolated, memory bounded by n_workers."""

import os
import time
from pathlib import Path

import pytest

from daemon.work.workers import Task, WorkerPool



@pytest.fixture
def runners(tmp_path, monkeypatch):
    return "fake_runners:correct"  # tests/helpers/fake_runners.py


def task(tmp_path, n, name, params=None):
    (tmp_path / name).touch()  # the fake runners read nothing; the worker checks it is there
    return Task(n, tmp_path / name, tmp_path / "out", tmp_path, params, Path(name).stem,
                {"source": n})


def test_a_movie_the_worker_cannot_see_is_trouble_outside_it_not_its_fault(tmp_path, runners):
    """A cluster worker whose path_map or mounts miss the session reads no movie: every movie
    was quarantined as bad data on its first attempt; the movie is not at fault."""
    missing = Task(0, tmp_path / "elsewhere" / "bad.mrc", tmp_path / "out", tmp_path, None,
                   "bad", {"source": 0})
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        (outcome,) = run_all(pool, [missing]).values()
    assert outcome.kind == "environment"


def run_all(pool, tasks, timeout_s=30):
    pending, outcomes = list(tasks), []
    deadline = time.monotonic() + timeout_s
    while (pending or pool.in_flight) and time.monotonic() < deadline:
        while pending and pool.idle:
            pool.submit(pending.pop(0))
        outcomes += pool.wait(1.0)
    return {o.task_id: o for o in outcomes}


def test_a_crashing_worker_is_replaced_and_later_movies_are_still_corrected(tmp_path, runners):
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        results = run_all(pool, [task(tmp_path, 0, "crash.mrc"), task(tmp_path, 1, "ok.mrc")])
        assert results[0].kind == "crash" and "SIGKILL" in results[0].error
        assert results[1].kind == "done"
        assert Path(results[1].outputs["sum"]).read_text().endswith("{'source': 1}")
        assert pool.replaced == 1


def test_a_worker_is_replaced_after_its_bound_of_movies_and_no_movie_is_lost(tmp_path, runners):
    with WorkerPool(1, runner=runners, gain_loader=None, max_tasks_per_worker=2) as pool:
        results = run_all(pool, [task(tmp_path, i, f"ok{i}.mrc") for i in range(5)])
    assert sorted(results) == list(range(5))
    assert {r.kind for r in results.values()} == {"done"}
    pids = [results[i].record["pid"] for i in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] != pids[0]


def test_the_daemons_local_workers_are_replaced_after_a_bounded_number_of_movies():
    """A night of thousands of movies must not run in processes that only ever grow: the
    daemon's pool replaces a worker after ``worker_max_movies`` (the pool had the bound;
    nothing set it)."""
    import argparse

    from correction.params import CorrectionParams, DoseParams
    from daemon.settings.config import Config, ConfigError
    from daemon.work.executor import (DEFAULT_WORKER_MAX_MOVIES, add_executor_arguments,
                                      build_executor, executor_settings)

    def config(*argv: str) -> Config:
        parser = argparse.ArgumentParser()
        add_executor_arguments(parser)
        params = CorrectionParams(DoseParams(dose_per_frame_e_A2=1.0))
        return Config(Path("/w"), Path("/o"), Path("/o"), params,
                      options=vars(parser.parse_args(list(argv))))

    def bound(*argv: str) -> int | None:
        return build_executor(config(*argv))._max_tasks  # noqa: SLF001

    assert bound() == DEFAULT_WORKER_MAX_MOVIES == 200
    assert bound("--worker-max-movies", "25") == 25
    assert bound("--worker-max-movies", "0") is None  # never
    with pytest.raises(ConfigError, match="worker_max_movies must be >= 0"):
        executor_settings(config("--worker-max-movies", "-1"))


def test_a_hanging_movie_is_killed_after_the_timeout(tmp_path, runners):
    with WorkerPool(1, runner=runners, gain_loader=None, timeout_s=1.0) as pool:
        results = run_all(pool, [task(tmp_path, 0, "hang.mrc"), task(tmp_path, 1, "ok.mrc")])
    assert results[0].kind == "timeout" and "1 s" in results[0].error
    assert results[1].kind == "done"


def test_errors_are_classified_for_the_retry_policy(tmp_path, runners):
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        results = run_all(pool, [task(tmp_path, 0, "bad.mrc"), task(tmp_path, 1, "enospc.mrc"),
                                 task(tmp_path, 2, "bug.mrc")])
    assert results[0].kind == "data" and "3 of 6 frames" in results[0].error
    assert results[1].kind == "environment" and "No space" in results[1].error
    assert results[2].kind == "error" and "KeyError" in results[2].error


def test_the_gain_reference_is_loaded_once_per_worker(tmp_path, runners):
    from types import SimpleNamespace

    params = SimpleNamespace(gain=SimpleNamespace(gain_path="g.mrc"))
    with WorkerPool(1, runner=runners, gain_loader="fake_runners:load_gain") as pool:
        results = run_all(pool, [task(tmp_path, i, f"ok{i}.mrc", params) for i in range(3)])
    texts = {Path(r.outputs["sum"]).read_text().split()[1] for r in results.values()}
    pids = {r.record["pid"] for r in results.values()}
    assert len(pids) == 1 and texts == {f"gain-loaded-in-{pids.pop()}"}


def _rss_MB(pid: int) -> float:
    """Resident memory of process ``pid`` now, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_a_worker_keeps_freed_memory_between_movies_in_a_row_and_returns_it_when_idle(
        tmp_path, runners):
    """Movies in a row reuse the memory the one before freed (no page faults to fill it
    again, correction.allocator); a worker that waits for work hands it back."""
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        first = run_all(pool, [task(tmp_path, 0, "alloc0.mrc"), task(tmp_path, 1, "alloc1.mrc")])
        worker = first[1].record["pid"]
        held_MB = _rss_MB(worker)
        deadline = time.monotonic() + 60  # the hold is 2 s; a loaded machine may run it late
        while _rss_MB(worker) > held_MB - 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        later = run_all(pool, [task(tmp_path, 2, "alloc2.mrc")])
    rss = [r.record["rss_at_start_MB"] for r in (first[0], first[1], later[2])]
    assert rss[1] - rss[0] > 200, rss  # the first movie's 256 MiB still held for the next
    assert rss[1] - rss[2] > 200, rss  # returned while the worker waited


def test_a_worker_corrects_the_next_movie_while_the_outputs_of_one_are_written(
        tmp_path, runners):
    """One worker, two movies whose writes take 1 s each: the second is begun before the
    first's outputs are in place, and each comes back done only once its own are."""
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        results = run_all(pool, [task(tmp_path, 0, "later0.mrc"), task(tmp_path, 1, "later1.mrc")])
    first, second = results[0], results[1]
    assert first.kind == second.kind == "done"
    assert second.record["began_at"] < first.record["written_at"]
    assert all(Path(p).exists() for r in (first, second) for p in r.outputs.values())
    # the writes yield the cores to the next movie's threads
    assert first.record["writer_niceness"] == min(19, first.record["worker_niceness"] + 10)


def test_a_worker_that_dies_on_the_next_movie_interrupts_the_one_being_written(
        tmp_path, runners):
    """The crash is the next movie's; the movie whose outputs were being written comes back
    ``interrupted`` (not counted against it), and a new worker goes on."""
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        results = run_all(pool, [task(tmp_path, 0, "later0.mrc"), task(tmp_path, 1, "crash.mrc"),
                                 task(tmp_path, 2, "ok.mrc")])
        assert pool.replaced == 1
    assert results[0].kind == "interrupted"
    assert "while the outputs were written" in results[0].error
    assert results[1].kind == "crash"
    assert results[2].kind == "done"


def test_a_movie_whose_writes_hang_times_out_and_the_next_one_is_interrupted(
        tmp_path, runners):
    with WorkerPool(1, runner=runners, gain_loader=None, timeout_s=1.5) as pool:
        # the next movie hangs too, so the writing movie's limit is always reached first
        results = run_all(pool, [task(tmp_path, 0, "stuck0.mrc"), task(tmp_path, 1, "hang1.mrc")])
    assert results[0].kind == "timeout" and "writing its outputs" in results[0].error
    assert results[1].kind == "interrupted"


def test_no_more_tasks_are_in_flight_than_workers(tmp_path, runners):
    with WorkerPool(2, runner=runners, gain_loader=None) as pool:
        pool.submit(task(tmp_path, 0, "hang0.mrc"))
        pool.submit(task(tmp_path, 1, "hang1.mrc"))
        assert pool.idle == 0
        with pytest.raises(RuntimeError, match="no idle worker"):
            pool.submit(task(tmp_path, 2, "ok.mrc"))
        assert len(pool.abandon()) == 2


def test_a_worker_whose_interpreter_is_gone_gives_an_unstarted_outcome_not_an_exception(
        tmp_path, runners, monkeypatch):
    import multiprocessing.spawn

    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", b"/nonexistent/python3")
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        results = run_all(pool, [task(tmp_path, 0, "ok.mrc")], timeout_s=10)
    assert results[0].kind == "unstarted" and "could not start" in results[0].error


def test_a_worker_that_dies_during_start_up_gives_an_unstarted_outcome(tmp_path, runners,
                                                                       monkeypatch):
    import multiprocessing.spawn

    dies = tmp_path / "python-that-dies"
    dies.write_text("#!/bin/sh\nexit 1\n")
    dies.chmod(0o755)
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", os.fsencode(dies))
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        time.sleep(0.5)  # let it die before the task is sent (the broken-pipe case)
        results = run_all(pool, [task(tmp_path, 0, "ok.mrc"), task(tmp_path, 1, "ok1.mrc")],
                          timeout_s=10)
    assert {r.kind for r in results.values()} == {"unstarted"}


def test_a_task_time_limit_replaces_the_pools(tmp_path, runners):
    from dataclasses import replace

    with WorkerPool(1, runner=runners, gain_loader=None, timeout_s=600.0) as pool:
        results = run_all(pool, [replace(task(tmp_path, 0, "hang.mrc"), timeout_s=0.5)])
    assert results[0].kind == "timeout" and "0.5 s" in results[0].error


def test_output_side_errors_are_environmental_not_the_movies(tmp_path, runners):
    (tmp_path / "a-file").write_text("")
    below_a_file = Task(0, tmp_path / "ok.mrc", tmp_path / "a-file" / "sub", tmp_path, None,
                        "ok", {})
    with WorkerPool(1, runner="fake_runners:correct", gain_loader=None) as pool:
        results = run_all(pool, [below_a_file, task(tmp_path, 1, "denied.mrc")])
    assert results[0].kind == "environment"
    assert results[1].kind == "environment" and "Permission denied" in results[1].error


def test_the_runner_gets_the_scratch_folder_only_when_the_task_has_one(tmp_path):
    """Custom runners written before ``scratch_dir`` existed keep working: it is passed only
    when configured."""
    from types import SimpleNamespace

    from daemon.work.workers import GainCache, execute_task

    seen = []

    def runner(movie_path, out_dir, params, **kwargs):
        seen.append(kwargs)
        return SimpleNamespace(outputs={}, record={}, timings_s={})

    for scratch in (None, tmp_path / "scratch"):
        outcome = execute_task(Task(1, tmp_path / "m.mrc", tmp_path / "out", tmp_path, None, "m",
                                    {}, scratch_dir=scratch), runner, GainCache(None),
                               worker="test")
        assert outcome.kind == "done", outcome.error
    assert "scratch_dir" not in seen[0]
    assert seen[1]["scratch_dir"] == tmp_path / "scratch"


def test_an_output_name_the_file_system_refuses_is_the_movies_fault_not_the_output_sides(
        tmp_path):
    """ENAMETOOLONG on an output (a movie named with 240 characters: its outputs' names
    were too long) was taken for the output side's fault, never counted: the movie was retried
    without end. A name the file system refuses fails the same way every time: ``data``."""
    import errno

    from daemon.work.workers import _classify

    t = task(tmp_path, 0, "ok.mrc")
    Path(t.movie_path).write_bytes(b"x")
    t.out_dir.mkdir(parents=True, exist_ok=True)
    too_long = OSError(errno.ENAMETOOLONG, "File name too long", str(t.out_dir / ".L_DW.mrc"))
    denied = PermissionError(errno.EACCES, "Permission denied", str(t.out_dir / "x_DW.mrc"))
    assert _classify(too_long, t) == "data"
    assert _classify(denied, t) == "environment"


def test_a_reference_this_worker_cannot_see_is_trouble_outside_the_movie_not_a_config_error(
        tmp_path):
    """A Dask worker whose node misses the share with the gain: the daemon checked the file at
    start-up, so this is its mount, not the configuration. It was taken for a reference that
    fits no movie, and after three movies the daemon stopped as misconfigured (exit 78, which
    systemd does not restart). A reference that is there but does not fit stays a config error."""
    from correction.errors import GainReferenceError
    from correction.params import CorrectionParams, DoseParams, GainParams

    from daemon.work.workers import _classify

    gain = tmp_path / "gain.mrc"
    params = CorrectionParams(dose=DoseParams(total_dose_e_A2=10.0),
                              gain=GainParams(gain_path=gain))
    t = task(tmp_path, 0, "m.mrc", params)
    (tmp_path / "out").mkdir()
    error = GainReferenceError(gain, "no such file")
    assert _classify(error, t) == "environment"
    gain.write_bytes(b"not an image")
    assert _classify(GainReferenceError(gain, "not an MRC, TIFF or DM4 image"), t) == "config"
    # another reference missing does not excuse a broken gain
    dark = tmp_path / "dark.mrc"
    t = task(tmp_path, 1, "n.mrc", CorrectionParams(
        dose=DoseParams(total_dose_e_A2=10.0), gain=GainParams(gain_path=gain, dark_path=dark)))
    assert _classify(GainReferenceError(gain, "not an MRC, TIFF or DM4 image"), t) == "config"


def test_an_error_naming_the_output_folder_itself_is_environmental(tmp_path):
    """W3: "a path on the output side" includes the output folder itself (mkdir or open of
    the folder denied: ``filename`` is the folder), not only paths below it."""
    import errno

    from daemon.work.workers import _classify

    t = task(tmp_path, 0, "m.mrc")
    t.out_dir.mkdir()
    for folder in (t.out_dir, t.out_root):
        exc = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
        assert _classify(exc, t) == "environment", folder


def test_a_worker_never_makes_an_output_folder_that_went_away_again(tmp_path, runners):
    """The session's output folder moved away (``mv out out.moved``) while a movie waited: the
    worker made it again, the daemon took the empty folder as remounted, started a new state
    database there and corrected the movies done before once more."""
    gone = tmp_path / "out"  # never made, or moved away
    (tmp_path / "m.mrc").touch()
    moved = Task(0, tmp_path / "m.mrc", gone / "grid2", gone, None, "m", {"source": 0})
    with WorkerPool(1, runner=runners, gain_loader=None) as pool:
        (outcome,) = run_all(pool, [moved]).values()
    assert outcome.kind == "environment" and "output folder gone" in outcome.error
    assert not gone.exists()


def test_outputs_being_written_time_out_on_their_own_limit_while_a_longer_next_movie_runs(
        tmp_path):
    """W4: a movie whose writes hang (the pool's 1.5 s limit, begun at 99 s) is due at 100.5 s,
    even while the next movie in the same worker has a 20 s limit of its own (due at 120 s)."""
    from dataclasses import replace

    from daemon.work.workers import _Slot

    slot = _Slot(process=None, conn=None,
                 task=replace(task(tmp_path, 1, "next.mrc"), timeout_s=20.0), started_s=100.0,
                 writing=task(tmp_path, 0, "written.mrc"), writing_started_s=99.0)
    assert slot.deadline(1.5, startup_s=5.0) == pytest.approx(100.5)


def test_a_movie_over_its_time_limit_when_its_outputs_are_due_does_not_write_them(tmp_path):
    """A Dask worker asked to restart after a timeout closes gracefully and lets its task run
    on: the movie's outputs appeared after the daemon had quarantined it (and a retry could be
    writing the same movie meanwhile). A task over its limit when its outputs are due writes
    none and says it timed out; one within its limit writes them."""
    from types import SimpleNamespace

    from daemon.work.workers import _Begun, finish_task

    written = []

    def result(name):
        def write():
            written.append(name)
            return SimpleNamespace(outputs={}, timings_s={}, record={})
        return SimpleNamespace(write=write)

    late = Task(1, tmp_path / "late.mrc", tmp_path, tmp_path, None, timeout_s=5.0)
    outcome = finish_task(_Begun(late, result("late"), time.perf_counter() - 6.0, "w"))
    assert (outcome.kind, written) == ("timeout", [])
    assert outcome.error.startswith("over its time limit of 5 s")
    in_time = Task(2, tmp_path / "ok.mrc", tmp_path, tmp_path, None, timeout_s=5.0)
    assert finish_task(_Begun(in_time, result("ok"), time.perf_counter() - 1.0, "w")).kind == "done"
    assert written == ["ok"]


def test_a_worker_whose_daemon_is_gone_sends_its_outcome_into_nothing_without_a_traceback():
    """Killed daemon (SIGKILL) while a worker's writer thread finished a movie: each worker
    printed a BrokenPipeError traceback into the daemon's JSON log."""
    import multiprocessing
    import threading

    from daemon.work.workers import _send_to_parent

    daemon_end, worker_end = multiprocessing.Pipe()
    assert _send_to_parent(worker_end, threading.Lock(), ("started", 1))
    assert daemon_end.recv() == ("started", 1)
    daemon_end.close()  # the daemon is gone
    assert _send_to_parent(worker_end, threading.Lock(), ("done", 1)) is False


def _gain_mrc(path, value, *, age_s=60.0, rows=16):
    import mrcfile
    import numpy as np

    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.full((rows, 16), value, np.float32))
    when = time.time() - age_s
    os.utime(path, (when, when))


def test_a_gain_written_anew_is_taken_once_settled_and_the_old_one_kept_meanwhile(tmp_path,
                                                                                 monkeypatch):
    """A new gain saved over the configured file: before its next movie a worker waits until it
    has seen the file unchanged for REWRITE_SETTLE_S, and takes it. While a copy is still going
    on after REWRITE_WAIT_MAX_S (once; later movies do not wait for it), or when the settled
    file cannot be read, the movie is corrected with the content read before and ``note``
    says so, naming the file's size and time. Before, a half-written file was loaded and the
    movie quarantined as having a reference that does not fit, and a pre-sized copy's zeros
    were taken at once when the share's clock dated it back."""
    import threading

    import numpy as np

    import daemon.work.gain_cache as gain_cache
    from correction.params import GainParams

    monkeypatch.setattr(gain_cache, "REWRITE_SETTLE_S", 0.4)
    monkeypatch.setattr(gain_cache, "REWRITE_WAIT_MAX_S", 1.0)
    gain = tmp_path / "gain.mrc"
    _gain_mrc(gain, 2.0)
    whole = gain.read_bytes()
    params = GainParams(gain_path=gain)
    cache = gain_cache.GainCache("correction.gain:load_gain_reference")
    held = cache.get(params)
    assert float(np.asarray(held.gain).mean()) == 2.0 and cache.note is None

    def copy_slowly():  # a copy onto a share: the bytes come over 2 s
        for k in range(1, 21):
            gain.write_bytes(whole[:len(whole) * k // 20])
            time.sleep(0.1)
        _gain_mrc(gain, 3.0, age_s=60.0)  # done; its time the source's, a minute back

    copier = threading.Thread(target=copy_slowly)
    copier.start()
    time.sleep(0.15)
    began = time.monotonic()
    assert cache.get(params) is held and time.monotonic() - began >= 0.9  # waited, in vain
    assert "bytes, modified" in cache.note
    assert cache.note.endswith("is being written anew: this movie was corrected with the "
                               "content read before (references in its record)")
    began = time.monotonic()
    assert cache.get(params) is held and time.monotonic() - began < 0.6  # not again
    copier.join()  # done: seen unchanged long enough from the next movie but one
    assert cache.get(params) is held and "is being written anew" in cache.note
    time.sleep(0.45)
    assert float(np.asarray(cache.get(params).gain).mean()) == 3.0 and cache.note is None

    taken = cache.get(params)
    gain.write_bytes(whole[:600])  # cut short, and left so
    assert cache.get(params) is taken and "was written anew but cannot be used" in cache.note
    began = time.monotonic()
    assert cache.get(params) is taken and time.monotonic() - began < 0.6


def test_a_worker_that_starts_while_the_gain_is_being_written_waits_for_it_within_its_limit(
        tmp_path, monkeypatch):
    """A worker that replaced one (killed at its movie's time limit, or after its bound of
    movies) loaded a gain being copied at once: the movie was quarantined as having a gain
    that does not fit. It now waits for a file that is changing to settle, within the wait
    limit it is given (a quarter of the movie's time limit); a file that cannot be read and
    does not change fails at once, as before."""
    import threading

    import numpy as np

    import daemon.work.gain_cache as gain_cache
    from correction.errors import GainReferenceError
    from correction.params import GainParams

    monkeypatch.setattr(gain_cache, "REWRITE_SETTLE_S", 1.0)
    gain = tmp_path / "gain.mrc"
    _gain_mrc(gain, 3.0)
    whole = gain.read_bytes()
    gain.write_bytes(whole[:700])

    def copy_slowly():
        for k in range(2, 11):
            time.sleep(0.15)
            gain.write_bytes(whole[:len(whole) * k // 10])

    copier = threading.Thread(target=copy_slowly)
    copier.start()
    cache = gain_cache.GainCache("correction.gain:load_gain_reference")
    reference = cache.get(GainParams(gain_path=gain), wait_limit_s=10.0)
    copier.join()
    assert float(np.asarray(reference.gain).mean()) == 3.0 and cache.note is None

    broken = tmp_path / "broken.mrc"
    broken.write_bytes(whole[:700])
    fresh = gain_cache.GainCache("correction.gain:load_gain_reference")
    began = time.monotonic()
    with pytest.raises(GainReferenceError):
        fresh.get(GainParams(gain_path=broken), wait_limit_s=10.0)
    assert 1.0 <= time.monotonic() - began < 5.0  # the settle time, not the limit
    began = time.monotonic()
    with pytest.raises(GainReferenceError):  # the same version: at once
        fresh.get(GainParams(gain_path=broken), wait_limit_s=10.0)
    assert time.monotonic() - began < 0.9

    growing = tmp_path / "growing.mrc"
    growing.write_bytes(whole[:100])
    stop = threading.Event()

    def never_done():
        k = 100
        while not stop.is_set() and k < len(whole):
            time.sleep(0.1)
            k += 20
            growing.write_bytes(whole[:k])

    copier = threading.Thread(target=never_done)
    copier.start()
    try:
        with pytest.raises(gain_cache.ReferenceBeingWritten, match="still being written"):
            gain_cache.GainCache("correction.gain:load_gain_reference").get(
                GainParams(gain_path=growing), wait_limit_s=2.5)
    finally:
        stop.set()
        copier.join()
