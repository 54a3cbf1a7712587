"""Faults of the world the daemon lives in, each injected: odd file names and dates, workers that
cannot start, an output side that fails, a state database that cannot be written or is corrupt,
a second daemon, SIGHUP, a runaway movie, changed settings. Each test is the regression test of
one item of the faults issue; the service must survive and never blame a movie for the
environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from movie_damage import mend_mrc_header, spoil_mrc_header
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.system.notify_listener import _counts_text
from daemon.commands.cli import main as cli_main
from daemon.engine.locks import FolderLocks
from daemon.engine.policy import movie_time_limit_s
from daemon.engine.service import Service
from daemon.events import SOURCE_KEY, ServiceListener
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively
from daemon.state.ledger import Ledger, MovieKey



@pytest.fixture
def setup(tmp_path, monkeypatch):
    watch, out = tmp_path / "w", tmp_path / "run" / "out"
    watch.mkdir()
    out.mkdir(parents=True)
    return Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                  settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=1.0,
                  max_attempts=2, retry_delay_s=0.0, heartbeat_s=0.1, exit_when_idle_s=0.5,
                  polling="on")


def movie(folder: Path, name: str | bytes) -> Path:
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    path = folder / (os.fsdecode(name) if isinstance(name, bytes) else name)
    write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0)
    return path


class Beats(ServiceListener):
    def __init__(self, on_beat=None) -> None:
        self.health = []
        self._on_beat = on_beat

    def on_heartbeat(self, beat):
        self.health.append(beat.health)
        if self._on_beat is not None:
            self._on_beat(beat)


def rows(config: Config) -> dict[str, object]:
    with Ledger(config.state_dir / "motionwatch.sqlite", read_only=True) as ledger:
        return {Path(r.key.path).name: r for r in ledger.rows()}


def run(config: Config, *listeners, log: RecordingLog | None = None) -> int:
    return Service(config, listeners=list(listeners), runner="fake_runners:correct",
                   logger=log or RecordingLog()).run()


def run_until(config: Config, seen, *, log: RecordingLog | None = None,
              guard_s: float = 30.0) -> None:
    """Run the service until a heartbeat is ``seen(beat)`` (then stopped as by the
    operator), at most ``guard_s``."""
    service = Service(config, runner="fake_runners:correct", logger=log or RecordingLog())

    def stop_once_seen(beat):
        if seen(beat):
            service.request_stop("test: seen")

    service._listeners.append(Beats(stop_once_seen))
    guard = threading.Timer(guard_s, service.request_stop, args=("test guard",))
    guard.start()
    try:
        service.run()
    finally:
        guard.cancel()


# --- 1, 2: file names that are not UTF-8, files dated 2300 ----------------------------------

def test_a_file_name_with_non_utf8_bytes_is_corrected_and_its_path_round_trips(setup):
    bad = movie(setup.watch_dir, b"odd_\xe9\xff_name.mrc")
    movie(setup.watch_dir, "ok.mrc")
    assert run(setup) == 0
    with Ledger(setup.state_dir / "motionwatch.sqlite", read_only=True) as ledger:
        table = {os.fsencode(r.key.path): r for r in ledger.rows()}
    row = table[os.fsencode(bad)]
    assert row.status == "done" and Path(row.key.path).exists()
    assert table[os.fsencode(setup.watch_dir / "ok.mrc")].status == "done"


def test_status_shows_a_non_utf8_movie_in_one_readable_line_and_as_json(setup, capsys):
    bad = movie(setup.watch_dir, b"odd_\xe9\xff.mrc")
    assert run(setup) == 0
    capsys.readouterr()
    assert cli_main(["status", str(setup.out_dir)]) == 0  # capsys' stdout is strict UTF-8
    assert "odd_\\udce9\\udcff.mrc" in capsys.readouterr().out
    assert cli_main(["status", str(setup.out_dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert os.fsencode(status["last_done"][0]["movie"]) == os.fsencode(bad)


def test_a_file_dated_2300_is_corrected_and_does_not_stop_the_service(setup):
    path = movie(setup.watch_dir, "future.mrc")
    year_2300_ns = 10_413_792_000 * 10**9
    os.utime(path, ns=(year_2300_ns, year_2300_ns))
    movie(setup.watch_dir, "ok.mrc")
    assert run(setup) == 0
    table = rows(setup)
    assert table["future.mrc"].status == "done"
    assert table["future.mrc"].key.mtime_ns == year_2300_ns == path.stat().st_mtime_ns
    assert table["ok.mrc"].status == "done"


# --- 3: a worker that cannot start ----------------------------------------------------------

def test_a_worker_that_cannot_start_leaves_no_row_running_and_makes_the_service_unhealthy(
        setup, monkeypatch):
    import multiprocessing.spawn

    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", b"/nonexistent/python3")
    movie(setup.watch_dir, "ok.mrc")
    seen = []

    def stop_when_reported(beat):
        if any("workers cannot start" in p for p in beat.health.problems):
            seen.append(beat.health)
            service.request_stop("test")

    service = Service(setup, listeners=[Beats(stop_when_reported)],
                      runner="fake_runners:correct", logger=RecordingLog())
    assert service.run() == 0
    row = rows(setup)["ok.mrc"]
    assert seen and (row.status, row.attempts, row.failures) == ("failed", 0, 0)
    assert "could not start" in row.error


# --- a worker lost for the movie after the one it was writing ------------------------------

def test_a_movie_whose_worker_died_for_the_next_movie_is_redone_without_a_failure(setup):
    """``later`` leaves its outputs to write (1 s), during which the worker takes ``crash``
    and dies: ``later`` was not at fault, so it is pending again, redone and done with no
    failure counted; ``crash`` is quarantined after its attempts."""
    later = movie(setup.watch_dir, "later.mrc")
    movie(setup.watch_dir, "crash.mrc")
    older = later.stat().st_mtime_ns - 10**9  # oldest first: ``later`` is corrected first
    os.utime(later, ns=(older, older))
    log = RecordingLog()
    assert run(setup, log=log) == 0
    table = rows(setup)
    assert (table["later.mrc"].status, table["later.mrc"].failures) == ("done", 0)
    assert table["crash.mrc"].status == "quarantined"
    assert any(kw["movie"].endswith("later.mrc") for kw in log.named("movie_interrupted"))


def test_a_worker_killed_while_writing_leaves_no_half_written_outputs(setup):
    """Its hidden temporaries stayed until the next start of the daemon (and a worker killed
    on each attempt left a set each time)."""
    movie(setup.watch_dir, "torn.mrc")
    movie(setup.watch_dir, "ok.mrc")
    assert run(setup) == 0
    assert rows(setup)["torn.mrc"].status == "quarantined"
    assert rows(setup)["ok.mrc"].status == "done"
    assert [p.name for p in setup.out_dir.rglob(".*.tmp-*")] == []


# --- 4: the output side fails for a while ---------------------------------------------------

def test_an_unwritable_output_side_pauses_reports_unhealthy_and_resumes_without_quarantine(
        setup):
    locked = setup.out_dir.parent / "OUTPUT_LOCKED"
    locked.write_text("")
    for name in ("a.mrc", "b.mrc", "c.mrc"):
        movie(setup.watch_dir, name)
    unhealthy = []

    counted = []

    def unlock_after_reported(beat):
        if any("trouble outside the movies" in p for p in beat.health.problems):
            unhealthy.append(beat.health)
            counted.append(dict(beat.counts))
            if len(unhealthy) >= 3:
                locked.unlink(missing_ok=True)  # writable again

    beats = Beats(unlock_after_reported)
    log = RecordingLog()
    assert run(setup, beats, log=log) == 0
    table = rows(setup)
    assert {n: (r.status, r.failures) for n, r in table.items()} == {
        "a.mrc": ("done", 0), "b.mrc": ("done", 0), "c.mrc": ("done", 0)}
    assert unhealthy and beats.health[-1].ok
    # the movies put back are no failures: the heartbeat (systemd's STATUS=, the feed) said
    # "1 failed" while `motionwatch status` said "0 failed, 1 put back"
    assert any(c.get("put_back") for c in counted)
    assert all(c.get("failed", 0) == 0 for c in counted), counted
    assert _counts_text({"done": 2, "failed": 1, "put_back": 3}, 0, 0).endswith(
        "1 failed, 0 quarantined, 3 put back")
    # the daemon itself was well: the watchdog kept pinging (a restart frees no disk)
    assert all(health.ok for health in unhealthy)
    assert not log.named("movie_quarantined")
    # paused: while the output side failed, no other movie was tried
    assert len(log.named("movie_retry_later")) == len(log.named("movie_started")) - 3
    # levels: the pause is one error (nothing was lost), each movie put back a warning; the
    # errors were one per movie put back, above movies quarantined at validation (warnings)
    levels = {(level, event) for level, event, _ in log.events
              if event in ("correction_paused", "movie_retry_later", "correction_resumed")}
    assert levels == {("error", "correction_paused"), ("warning", "movie_retry_later"),
                      ("warning", "correction_resumed")}
    assert len(log.named("correction_paused")) == 1


def test_a_wall_clock_stepped_back_an_hour_does_not_hold_correction_back_for_that_hour(setup):
    """The output side fails (a full disk): correction pauses for a second and each movie is to
    be retried a second later. NTP then steps the wall clock back an hour (a PC booted with
    its hardware clock on local time) and the disk has room again: the movies are corrected at
    once. The pause and the retry times were wall-clock times: nothing ran for the hour."""
    config = dataclasses.replace(setup, retry_delay_s=1.0, exit_when_idle_s=3.0,
                                 max_attempts=5)
    full = config.out_dir.parent / "OUTPUT_FULL"
    full.write_text("")
    for name in ("a.mrc", "b.mrc"):
        movie(config.watch_dir, name)
    offset = [0.0]
    log = RecordingLog()

    def step_back_once_paused(beat):
        if log.named("movie_retry_later") and not offset[0]:
            offset[0] = -3600.0
            full.unlink()

    service = Service(config, listeners=[Beats(step_back_once_paused)],
                      runner="fake_runners:correct", logger=log,
                      wall_clock=lambda: time.time() + offset[0])
    guard = threading.Timer(40.0, service.request_stop, args=("test guard",))
    guard.start()
    try:
        service.run()
    finally:
        guard.cancel()
    assert offset[0] == -3600.0
    assert {n: r.status for n, r in rows(config).items()} == {"a.mrc": "done", "b.mrc": "done"}


def test_movies_in_flight_when_the_disk_fills_share_one_pause_not_one_doubling_each(setup):
    """Three workers' movies fail on one full disk: each doubled the shared pause (1, 2, 4 s;
    six workers reached 64 s and correction came back minutes after the disk was freed).
    They now wait out one pause, and each is told the time it really waits."""
    config = dataclasses.replace(setup, workers=3, retry_delay_s=1.0, exit_when_idle_s=1.5,
                                 max_attempts=5)
    full = config.out_dir.parent / "OUTPUT_FULL"
    full.write_text("")
    for name in ("a.mrc", "b.mrc", "c.mrc"):
        movie(config.watch_dir, name)
    log = RecordingLog()

    def free_once_all_three_failed(beat):
        if len(log.named("movie_retry_later")) >= 3:
            full.unlink(missing_ok=True)

    assert run(config, Beats(free_once_all_three_failed), log=log) == 0
    assert {n: r.status for n, r in rows(config).items()} == dict.fromkeys(
        ("a.mrc", "b.mrc", "c.mrc"), "done")
    waits = [e["retry_in_s"] for e in log.named("movie_retry_later")][:3]
    assert waits[0] == 1.0 and all(w <= 1.0 for w in waits), waits


def test_a_movie_put_back_by_a_full_disk_is_retried_at_once_by_the_next_start(setup):
    """The pause is the process's, but the movie's retry time was stored with it: a restart on
    a disk with room again corrected the newer movies and left it waiting (a 30 s pause here;
    up to 300 s), out of its order."""
    config = dataclasses.replace(setup, retry_delay_s=30.0, exit_when_idle_s=1.0,
                                 max_attempts=5)
    full = config.out_dir.parent / "OUTPUT_FULL"
    full.write_text("")
    movie(config.watch_dir, "a.mrc")
    log = RecordingLog()
    run_until(config, lambda beat: bool(log.named("movie_retry_later")), log=log)  # restarted
    assert rows(config)["a.mrc"].status == "failed"
    full.unlink()
    movie(config.watch_dir, "b.mrc")  # acquired meanwhile
    log = RecordingLog()
    assert run(config, log=log) == 0
    assert [Path(e["movie"]).name for e in log.named("movie_started")] == ["a.mrc", "b.mrc"]
    assert {n: r.status for n, r in rows(config).items()} == {"a.mrc": "done", "b.mrc": "done"}


def test_a_movie_whose_output_side_fails_alone_waits_its_delay_while_the_others_succeed(
        setup):
    """Only one movie's output side fails (its folder not writable, a cluster worker without
    the mount). It was retried at the end of every pause before the other movies, so none of
    them was ever corrected; with other movies in flight, each success cleared the pause and
    it was retried after every one of them. Now the others are tried first while the trouble
    lasts, and its failing again after they were corrected counts against it (quarantined at
    max_attempts, not pausing all correction for ever)."""
    config = dataclasses.replace(setup, retry_delay_s=10.0, max_attempts=3, exit_when_idle_s=30.0)
    movie(config.watch_dir, "denied_a.mrc")
    for i in range(8):
        movie(config.watch_dir, f"m{i}.mrc")
    log = RecordingLog()
    run_until(config, lambda beat: sum(r.status == "done" for r in rows(config).values()) == 8,
              log=log, guard_s=40.0)
    put_back = [e for e in log.named("movie_retry_later") if "denied_a" in e["movie"]]
    assert sum(r.status == "done" for r in rows(config).values()) == 8
    assert len(put_back) <= 2, len(put_back)
    # failing again after the others were corrected: its own trouble, counted against it
    (counted,) = [e for e in log.named("movie_failed") if "denied_a" in e["movie"]]
    assert "its own trouble" in counted["note"] and rows(config)["denied_a.mrc"].failures == 1


# --- 5: the state database cannot be written ------------------------------------------------

def test_an_unwritable_state_database_is_reported_once_counts_nothing_and_recovers(
        setup, monkeypatch):
    full = setup.out_dir.parent / "OUTPUT_FULL"
    full.write_text("")
    movie(setup.watch_dir, "disk.mrc")
    state = {"failing": True, "raised": 0, "beats": 0}
    original = Ledger.mark_failed

    def mark_failed(self, *args, **kw):
        if state["failing"]:
            state["raised"] += 1
            raise sqlite3.OperationalError("database or disk is full")
        full.unlink(missing_ok=True)
        return original(self, *args, **kw)

    monkeypatch.setattr(Ledger, "mark_failed", mark_failed)

    def free_space_later(beat):
        if state["raised"]:
            state["beats"] += 1
            if state["beats"] >= 6:
                state["failing"] = False

    beats = Beats(free_space_later)
    log = RecordingLog()
    assert run(setup, beats, log=log) == 0
    assert state["raised"] > 2  # retried while failing ...
    assert len(log.named("ledger_write_failed")) == 1  # ... but said once
    assert log.named("ledger_write_recovered")
    assert [e["retry_in_s"] for e in log.named("movie_retry_later")] == [1.0]
    unwritable = [h for h in beats.health if any("state database" in p for p in h.problems)]
    assert unwritable
    # trouble outside the daemon, as a full output disk is: the watchdog keeps pinging (it
    # stopped, and systemd killed and restarted the daemon on the full disk every 2.5 min)
    assert all(h.ok for h in unwritable), [h.problems for h in unwritable if not h.ok]
    assert beats.health[-1].ok
    row = rows(setup)["disk.mrc"]
    assert (row.status, row.failures) == ("done", 0)


# --- 6: a corrupt state database ------------------------------------------------------------

def _adoptable(config: Config, name: str) -> Path:
    path = movie(config.watch_dir, name)
    st = path.stat()
    key = MovieKey(str(path), st.st_size, st.st_mtime_ns, config.params.fingerprint())
    out = movie(config.out_dir, Path(name).stem + "_DW.mrc")
    record = {SOURCE_KEY: {"path": key.path, "size": key.size, "mtime_ns": key.mtime_ns,
                           "params_fingerprint": key.fingerprint},
              "outputs": {"dw": out.name, "motion": Path(name).stem + ".motion.json"}}
    (config.out_dir / (Path(name).stem + ".motion.json")).write_text(json.dumps(record))
    return path


def _damage(db: Path, how: str) -> None:
    if how == "random bytes":
        db.write_bytes(np.random.default_rng(1).bytes(8192))
    elif how == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[:100])
    else:  # damaged pages: every page after the first overwritten
        data = bytearray(db.read_bytes())
        data[4096:] = np.random.default_rng(2).bytes(len(data) - 4096)
        db.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["random bytes", "truncated", "damaged pages"])
def test_a_corrupt_state_database_is_moved_aside_and_rebuilt_from_the_outputs(setup, how):
    db = setup.state_dir / "motionwatch.sqlite"
    with Ledger(db) as ledger:
        for i in range(200):
            ledger.add(MovieKey(f"/old/{i}.mrc", 1, i, "x" * 16))
    _damage(db, how)
    _adoptable(setup, "never.mrc")
    log = RecordingLog()
    assert run(setup, log=log) == 0
    moved = [p for p in setup.state_dir.glob("motionwatch.sqlite.corrupt-*")
             if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1 and log.named("state_database_corrupt")
    row = rows(setup)["never.mrc"]
    assert row.status == "done" and "adopted" in row.error


def test_status_of_a_corrupt_state_database_is_one_line(setup, capsys):
    (setup.state_dir / "motionwatch.sqlite").write_bytes(b"\x00garbage" * 1000)
    assert cli_main(["status", str(setup.out_dir)]) == 78
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- 7: one daemon per output folder --------------------------------------------------------

def test_a_second_daemon_with_another_state_dir_on_the_same_output_folder_is_refused(
        setup, tmp_path):
    holder = FolderLocks(setup.out_dir, tmp_path / "other-state")
    (tmp_path / "other-state").mkdir()
    holder.acquire()  # the first daemon, with its own state folder
    try:
        assert run(setup) == 78
    finally:
        holder.release()


def test_a_second_daemon_refused_for_a_held_state_folder_makes_no_output_folder(setup,
                                                                                tmp_path):
    """``motionwatch watch W --out new --state-dir <held by a running daemon>``: refused (78),
    and ``new`` is not made (it was, then the start was refused)."""
    state = tmp_path / "held-state"
    state.mkdir()
    holder = FolderLocks(tmp_path / "first-out", state)
    holder.acquire()
    try:
        status = cli_main(["watch", str(setup.watch_dir), "--out", str(tmp_path / "new-out"),
                           "--state-dir", str(state), "--dose-per-frame", "1", "--no-publish"])
    finally:
        holder.release()
    assert status == 78
    assert not (tmp_path / "new-out").exists()


class _FirstDaemonsFeed:
    """A feed bound on an ``ipc://`` path (as the running daemon's), sending a message every
    20 ms; :meth:`reaches_subscribers` says whether a new subscriber still gets them."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        self.endpoint, self._zmq = endpoint, zmq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        while not self._stop.wait(0.02):
            self._sock.send_multipart([b"heartbeat", b"{}"])

    def reaches_subscribers(self) -> bool:
        sub = self._ctx.socket(self._zmq.SUB)
        sub.setsockopt(self._zmq.SUBSCRIBE, b"")
        sub.connect(self.endpoint)
        try:
            return bool(sub.poll(3000))
        finally:
            sub.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close(linger=0)
        self._ctx.term()


@pytest.mark.parametrize("same_out", [True, False], ids=["same-out", "other-out"])
def test_a_second_daemon_given_the_running_ones_ipc_feed_is_refused_and_leaves_it_whole(
        setup, tmp_path, same_out):
    """The same ``watch`` started twice, or another session given the feed path of the
    units: libzmq binds an ``ipc://`` path by replacing the socket file, so the second daemon
    took the first one's subscribers away for good, even when refused for its output folder
    (over TCP the bind fails). Refused (78), it makes no folder, and the first feed still
    reaches new subscribers."""
    endpoint = f"ipc://{tmp_path}/feed.ipc"
    first_out = setup.out_dir if same_out else tmp_path / "first-out"
    first_out.mkdir(exist_ok=True)
    holder = FolderLocks(first_out, first_out)
    holder.acquire()
    feed = _FirstDaemonsFeed(endpoint)
    try:
        assert feed.reaches_subscribers()
        out = setup.out_dir if same_out else tmp_path / "second-out"
        status = cli_main(["watch", str(setup.watch_dir), "--out", str(out),
                           "--dose-per-frame", "1", "--publish", endpoint,
                           "--exit-when-idle", "0.5"])  # were it to start
        assert status == 78
        assert same_out or not out.exists()
        assert feed.reaches_subscribers()
    finally:
        feed.close()
        holder.release()


def test_a_dashboard_address_in_use_makes_no_output_folder(setup, tmp_path, capsys):
    """"A configuration with any error creates no folder": a ``--dashboard`` port in use was
    found only once the output folder was made; the message named ``--listen``, an option of
    ``motionwatch dashboard``, not of ``watch``."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        out = tmp_path / "new" / "out"
        status = cli_main(["watch", str(setup.watch_dir), "--out", str(out),
                           "--dose-per-frame", "1", "--publish", "tcp://127.0.0.1:*",
                           "--dashboard", f"127.0.0.1:{taken.getsockname()[1]}"])
    finally:
        taken.close()
    assert status == 78
    assert not (tmp_path / "new").exists()
    err = capsys.readouterr().err
    assert "--dashboard" in err and "--listen" not in err


def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(setup):
    first = Service(dataclasses.replace(setup, exit_when_idle_s=None),
                    runner="fake_runners:correct", logger=RecordingLog())
    ready = threading.Event()

    class Ready(ServiceListener):
        def on_ready(self, info):
            ready.set()

    first.add_listener(Ready())
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        assert ready.wait(30)
        (setup.state_dir / "motionwatch.lock").unlink()
        assert run(setup) == 78
    finally:
        first.request_stop("test")
        thread.join(30)


def test_a_recreated_output_folder_is_locked_again(setup, tmp_path):
    import shutil

    locks = FolderLocks(setup.out_dir, setup.state_dir)
    locks.acquire()
    try:
        shutil.rmtree(setup.out_dir)
        setup.out_dir.mkdir()
        assert locks.check() is None
        other = FolderLocks(setup.out_dir, tmp_path / "elsewhere")
        (tmp_path / "elsewhere").mkdir()
        with pytest.raises(Exception, match="another motionwatch"):
            other.acquire()
    finally:
        locks.release()


# --- 8: SIGHUP ------------------------------------------------------------------------------

def test_sighup_drains_like_sigterm_and_exits_75_to_be_restarted(setup, monkeypatch):
    got = []
    monkeypatch.setattr(signal, "SIGHUP", signal.SIGHUP)
    previous = signal.signal(signal.SIGHUP, lambda *a: got.append("test handler"))
    try:
        movie(setup.watch_dir, "slow_1.mrc")
        movie(setup.watch_dir, "slow_2.mrc")

        def hangup_when_busy(beat):
            if beat.in_flight and not got:
                got.append("sent")
                os.kill(os.getpid(), signal.SIGHUP)

        assert run(setup, Beats(hangup_when_busy)) == 75
    finally:
        signal.signal(signal.SIGHUP, previous)
    statuses = sorted((name, r.status) for name, r in rows(setup).items())
    assert statuses == [("slow_1.mrc", "done"), ("slow_2.mrc", "pending")]


def test_a_sighup_while_watch_starts_exits_75_to_be_restarted_not_killed_by_it(
        tmp_path, monkeypatch, capsys):
    """Before the service's handlers were installed SIGHUP killed the process (status 129):
    systemd counts a death by SIGHUP as clean, and did not restart it."""
    import daemon.commands.watch as watch_command

    loaded = watch_command.load_config

    def hangup_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGHUP)  # the operator's `systemctl reload` at start
        return loaded(*args, **kwargs)

    monkeypatch.setattr(watch_command, "load_config", hangup_while_loading)
    (tmp_path / "w").mkdir()
    before = signal.getsignal(signal.SIGHUP)
    status = cli_main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                       "--dose-per-frame", "1", "--no-publish"])
    err = capsys.readouterr().err
    assert status == 75 and "SIGHUP before or after the service took signals" in err
    assert signal.getsignal(signal.SIGHUP) is before


def test_a_sighup_while_watch_imports_its_modules_exits_75(tmp_path, monkeypatch, capsys):
    """The handler came after the imports (most of a second): a SIGHUP then still killed it."""
    import daemon.commands.cli as cli

    built = cli.build_parser

    def hangup_while_importing():
        os.kill(os.getpid(), signal.SIGHUP)
        return built()

    monkeypatch.setattr(cli, "build_parser", hangup_while_importing)
    (tmp_path / "w").mkdir()
    assert cli.main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                     "--dose-per-frame", "1", "--no-publish"]) == 75
    assert "SIGHUP before or after the service took signals" in capsys.readouterr().err


def test_an_internal_error_exits_70_with_its_traceback_not_1(tmp_path, monkeypatch, capsys):
    """A crash ended with Python's status 1, which says 'some movies failed'."""
    import daemon.commands.status as status_command

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(status_command, "run", broken)
    assert cli_main(["status", str(tmp_path)]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err and "exit 70" in err


# --- 9: a runaway movie ---------------------------------------------------------------------

def test_the_time_limit_scales_with_the_movie_size_between_floor_and_cap():
    assert movie_time_limit_s(10**6, floor_s=600, per_gb_s=900, cap_s=1800) == 600
    assert movie_time_limit_s(10**9, floor_s=600, per_gb_s=900, cap_s=1800) == 900
    assert movie_time_limit_s(5 * 10**9, floor_s=600, per_gb_s=900, cap_s=1800) == 1800


def test_a_runaway_small_movie_times_out_by_its_size_and_is_quarantined_sooner(setup):
    config = dataclasses.replace(setup, movie_timeout_s=1800.0, options={
        "movie_timeout_floor": 1.0, "movie_timeout_per_gb": 0.0})
    movie(config.watch_dir, "hang.mrc")
    movie(config.watch_dir, "ok.mrc")
    log = RecordingLog()
    assert run(config, log=log) == 0
    table = rows(config)
    assert (table["hang.mrc"].status, table["hang.mrc"].failures) == ("quarantined", 1)
    assert "timed out after 1 s" in table["hang.mrc"].error
    assert table["ok.mrc"].status == "done"
    assert {e["time_limit_s"] for e in log.named("movie_started")} == {1.0}


# --- 11: changed settings, and retry --------------------------------------------------------

def test_changed_settings_are_announced_and_keep_leaves_finished_movies_alone(setup):
    movie(setup.watch_dir, "ok.mrc")
    assert run(setup) == 0
    changed = dataclasses.replace(
        setup, params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=2.0)),
        options={"on_parameter_change": "keep"})
    log = RecordingLog()
    assert run(changed, log=log) == 0
    [said] = log.named("parameters_changed")
    assert (said["finished_movies"], said["policy"]) == (1, "keep")
    # named: the fingerprints alone never said what changed (a new gain, a dose)
    before = setup.params.dose.dose_per_frame_e_A2
    assert said["changed_since_last_start"] == [f"dose.dose_per_frame_e_A2: {before} -> 2.0"]
    assert [r.status for r in rows(setup).values()] == ["done"]  # one row: not redone
    log = RecordingLog()
    assert run(dataclasses.replace(changed, options={"on_parameter_change": "redo"}),
               log=log) == 0
    [said] = log.named("parameters_changed")
    assert (said["finished_movies"], said["policy"]) == (1, "redo")
    assert "changed_since_last_start" not in said  # the policy is no correction parameter
    with Ledger(setup.state_dir / "motionwatch.sqlite", read_only=True) as ledger:
        assert sorted(r.status for r in ledger.rows()) == ["done", "done"]
    # said as what it is: the file did not change ("new size, mtime or parameters" before)
    assert [e["note"].startswith("the same file under new metadata or settings")
            for e in log.named("movie_changed")] == [True]
    # back to the first settings (A -> B -> A): its outputs are B's, and it is said so (the
    # movie was corrected again, with no word at the start)
    log = RecordingLog()
    assert run(setup, log=log) == 0
    [said] = log.named("parameters_changed")
    assert (said["finished_movies"], said["policy"]) == (1, "redo")
    assert said["changed_since_last_start"] == [f"dose.dose_per_frame_e_A2: 2.0 -> {before}"]
    assert "corrected_before_last_start" not in said  # corrected by the last start, under B
    assert len(log.named("movie_done")) == 1


def test_a_change_named_since_the_last_start_says_how_many_were_corrected_before_it(setup):
    """Settings A, then B with keep (the movie stays A's), then C: the change named is B ->
    C, but the movie was corrected under A: said so."""
    movie(setup.watch_dir, "ok.mrc")
    assert run(setup) == 0
    keep = {"on_parameter_change": "keep"}
    for dose in (2.0, 3.0):
        log = RecordingLog()
        assert run(dataclasses.replace(setup, params=CorrectionParams(
            dose=DoseParams(dose_per_frame_e_A2=dose)), options=keep), log=log) == 0
    [said] = log.named("parameters_changed")
    assert said["changed_since_last_start"] == ["dose.dose_per_frame_e_A2: 2.0 -> 3.0"]
    assert said["corrected_before_last_start"] == 1


def test_what_changed_since_the_last_start_is_named_setting_by_setting(tmp_path):
    """The facility's new gain reference for the later movies: the warning names it."""
    from correction.params import GainParams

    from daemon.engine.policy import parameter_differences, parameter_snapshot

    old = CorrectionParams(dose=DoseParams(), gain=GainParams(gain_path=tmp_path / "g1.mrc"))
    new = CorrectionParams(dose=DoseParams(),
                           gain=GainParams(gain_path=tmp_path / "g2.mrc", flip="updown"))
    changed = parameter_differences(parameter_snapshot(old), parameter_snapshot(new))
    assert changed == ["gain.flip: none -> updown",
                       f"gain.gain_path: {tmp_path / 'g1.mrc'} -> {tmp_path / 'g2.mrc'}"]
    assert parameter_differences(None, parameter_snapshot(new)) == []
    assert parameter_differences(parameter_snapshot(new), parameter_snapshot(new)) == []


def test_retry_requeues_quarantined_movies_by_name_or_all_and_the_next_start_takes_them_up(
        setup, capsys):
    """A quarantine holds across restarts until it is retried: a retried movie's quarantine is
    lifted (its row goes), the daemon meets it again as a new movie, and one still bad is
    quarantined again after one more attempt."""
    movie(setup.watch_dir, "bad_1.mrc")
    movie(setup.watch_dir, "bad_2.mrc")
    assert run(setup) == 0
    assert {r.status for r in rows(setup).values()} == {"quarantined"}
    log = RecordingLog()
    assert run(setup, log=log) == 0  # a restart, nothing retried: nothing is tried again
    assert {name: (r.status, r.attempts) for name, r in rows(setup).items()} == {
        "bad_1.mrc": ("quarantined", 1), "bad_2.mrc": ("quarantined", 1)}
    assert not log.named("movie_started")
    assert cli_main(["retry", str(setup.out_dir), "bad_1.mrc"]) == 0
    assert {name: r.status for name, r in rows(setup).items()} == {"bad_2.mrc": "quarantined"}
    assert cli_main(["retry", str(setup.out_dir), "nope.mrc"]) == 1
    assert cli_main(["retry", str(setup.out_dir)]) == 0
    assert rows(setup) == {}
    assert "1 quarantined movie(s) requeued" in capsys.readouterr().out
    assert run(setup) == 0
    assert {name: (r.status, r.attempts) for name, r in rows(setup).items()} == {
        "bad_1.mrc": ("quarantined", 1), "bad_2.mrc": ("quarantined", 1)}


def _mdoc_dose_fixed(watch: Path, tilt, dose_e_A2: float) -> None:
    """The operator corrects one tilt's ExposureDose in the series mdoc."""
    mdoc = watch / "flaky.mrc.mdoc"
    old = f"ExposureDose = {tilt.dose_e_A2:.4f}"
    assert mdoc.read_text().count(old) == 1
    mdoc.write_text(mdoc.read_text().replace(old, f"ExposureDose = {dose_e_A2:.4f}"))


def test_a_tilt_retried_after_its_correction_failed_is_corrected_once_with_its_dose_of_now(
        setup):
    """A tilt quarantined by its correction kept, in its row, the pre-exposure of that time.
    The first tilt's dose is then corrected in the mdoc (the later tilts are redone with their
    new pre-exposures), the tilt mended and retried: it was corrected with the old
    pre-exposure, then redone. A retried tilt's metadata is resolved afresh, as a new one's."""
    from daemon.series.options import resolver_from_config
    from daemon.simulation.tilt_series import simulate_tilt_series

    tilts = simulate_tilt_series(setup.watch_dir, rng=np.random.default_rng(8), name="flaky",
                                 n_tilts=3, shape_yx=(32, 32), n_frames=4, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False)
    flaky, last = tilts[1].movie.path, tilts[2].movie.path
    marker = flaky.with_name(flaky.name + ".bad")
    marker.write_text("")
    config = dataclasses.replace(setup, exit_when_idle_s=1.0, options={
        "tilt_series": "on", "metadata_wait": 5, "mdoc_quiet": 0.5})

    class Operator(ServiceListener):
        """Fixes the first dose once the tilt is quarantined; retries it once the last tilt was
        redone with the new pre-exposure (the service logs a listener's exception and goes
        on: what it did is checked after the run)."""

        retry_status: int | None = None

        def on_movie_failed(self, event):
            if event.path == flaky and event.status == "quarantined":
                _mdoc_dose_fixed(setup.watch_dir, tilts[0], 5.0)

        def on_movie_done(self, event):
            tilt = event.metadata["extra_record"]["tilt"]
            if event.path == last and tilt["pre_exposure_e_A2"] == pytest.approx(
                    5.0 + tilts[1].dose_e_A2):
                marker.unlink()
                self.retry_status = cli_main(["retry", str(setup.out_dir)])

    log, operator = RecordingLog(), Operator()
    assert Service(config, listeners=[operator], resolver=resolver_from_config(config),
                   runner="fake_runners:correct", logger=log).run() == 0
    assert operator.retry_status == 0 and not log.named("listener_failed")
    assert not marker.exists()  # retried
    started = [Path(e["movie"]).name for e in log.named("movie_started")]
    assert started.count(flaky.name) == 2  # failed, then corrected once after the retry
    redone = {Path(e["movie"]).name for e in log.named("movie_redo_metadata_changed")}
    assert redone == {tilts[0].movie.path.name, last.name}
    tilt = json.loads((setup.out_dir / f"{flaky.stem}.motion.json").read_text())["tilt"]
    assert tilt["pre_exposure_e_A2"] == pytest.approx(5.0)
    assert tilt["dose_e_A2"] == pytest.approx(tilts[1].dose_e_A2)


def test_a_movie_of_no_series_retried_after_validation_gets_the_dose_of_its_frame_mdoc(setup):
    """No dose configured: a movie of no series takes its dose from its own frame mdoc. Not a
    valid MRC at first sight, it was quarantined before its metadata was resolved; mended and
    retried, it was corrected with no dose at all, failed for it and was quarantined again."""
    from correction.synthetic import render_movie
    from daemon.series.options import resolver_from_config

    path = setup.watch_dir / "single.mrc"
    frames = render_movie(np.random.default_rng(9), shape_yx=(128, 128), n_frames=4, gain=None,
                          n_hot_pixels=0, pixel_size_A=1.1).frames
    write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0)
    path.with_name("single.mrc.mdoc").write_text(  # as SerialEM writes it
        "PixelSpacing = 1.1\nVoltage = 300\nImageFile = single.mrc\n\n[FrameSet = 0]\n"
        "TiltAngle = 0\nExposureDose = 3\nPixelSpacing = 1.1\n"
        "SubFramePath = X:\\frames\\single.mrc\nNumSubFrames = 4\n"
        "FrameDosesAndNumber = 0.75 4\nTimeStamp = 5\nDateTime = 24-Mar-2023  12:05:00\n")
    mode = spoil_mrc_header(path)
    config = dataclasses.replace(setup, params=CorrectionParams(dose=DoseParams()),
                                 exit_when_idle_s=1.0)

    class Operator(ServiceListener):
        retry_status: int | None = None

        def on_movie_failed(self, event):
            if event.status == "quarantined" and self.retry_status is None:
                mend_mrc_header(path, mode)
                self.retry_status = cli_main(["retry", str(setup.out_dir)])

    log, operator = RecordingLog(), Operator()
    assert Service(config, listeners=[operator], resolver=resolver_from_config(config),
                   logger=log).run() == 0
    assert operator.retry_status == 0 and not log.named("listener_failed")
    assert [e.get("stage") for e in log.named("movie_quarantined")] == ["validate"]
    assert len(log.named("movie_started")) == 1
    assert [r.status for r in rows_of(config)] == ["done"]
    dose = json.loads((setup.out_dir / "single.motion.json").read_text())["dose"]
    assert dose["per_frame_e_A2"] == pytest.approx([0.75] * 4)
    assert dose["pre_exposure_e_A2"] == 0.0


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_non_utf8_path_is_logged_without_error_on_a_console_and_as_json(json_lines):
    code = ("import os\nfrom daemon.system.logs import configure_logging, get_logger\n"
            f"configure_logging(json_lines={json_lines}, journald=False)\n"
            "get_logger().info('movie_ready', movie=os.fsdecode(b'/w/odd_\\xe9\\xff.mrc'))\n")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    line = done.stdout.decode().strip()
    assert "odd_" in line
    if json_lines:
        assert os.fsencode(json.loads(line)["movie"]) == b"/w/odd_\xe9\xff.mrc"


# --- a movie that could not be read: permissions fixed later, a share back --------------------

@pytest.fixture
def unreadable_until(monkeypatch):
    """Completeness checks read the file as unreadable (permission denied) until the event is
    set: the service runs in this process, as root here, which no file mode shuts out. That
    a real ``chmod 000`` reads so is
    ``test_a_movie_the_reader_may_not_open_is_unreadable_not_incomplete_nor_bad``."""
    import correction.io.complete as complete

    readable = threading.Event()
    real = complete.check_complete

    def check(path):
        if not readable.is_set():
            return complete.Completeness(False, "cannot read: Permission denied", None,
                                         unreadable=True)
        return real(path)

    monkeypatch.setattr(complete, "check_complete", check)
    return readable


def test_a_movie_quarantined_as_unreadable_is_corrected_once_it_reads(setup, unreadable_until):
    """``chmod`` changes neither size nor mtime: the quarantine stuck (only ``retry`` freed it,
    even across restarts). The fault was the access, not the movie."""
    movie(setup.watch_dir, "locked.mrc")
    config = dataclasses.replace(setup, incomplete_grace_s=0.3, exit_when_idle_s=2.0)

    class FixPermissionsOnceQuarantined(ServiceListener):  # the admin runs chmod
        def on_movie_failed(self, event):
            unreadable_until.set()

    log = RecordingLog()
    assert run(config, FixPermissionsOnceQuarantined(), log=log) == 0
    events = [e for _, e, f in log.events if f.get("movie", "").endswith("locked.mrc")]
    assert events.index("movie_quarantined") < events.index("movie_readable_again")
    assert [(r.status, r.attempts) for r in rows_of(config)] == [("done", 1)]


def test_a_restart_corrects_a_movie_quarantined_as_unreadable_that_reads_now(setup,
                                                                           unreadable_until):
    movie(setup.watch_dir, "locked.mrc")
    config = dataclasses.replace(setup, incomplete_grace_s=0.3)
    assert run(config) == 0
    (row,) = rows_of(config)
    assert row.status == "quarantined"
    assert row.error.startswith("unreadable after") and "Permission denied" in row.error
    unreadable_until.set()
    assert run(config) == 0
    assert [r.status for r in rows_of(config)] == ["done"]


def rows_of(config: Config) -> list:
    with Ledger(config.state_dir / "motionwatch.sqlite", read_only=True) as ledger:
        return ledger.rows()


def test_a_start_on_a_full_disk_exits_69_to_be_restarted_not_with_a_traceback(setup,
                                                                               monkeypatch):
    """systemd restarts the daemon after the output disk filled overnight: the pid could not be
    written into the lock file (a traceback, exit 1, every 30 s), and the state database not
    created (exit 78: systemd would not restart it once the disk had room). Now the pid is
    left out and the start ends with one line and 69, which systemd restarts."""
    import errno

    import daemon.engine.locks as locks
    import daemon.engine.service as service_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_database(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(locks.os, "write", full)
    monkeypatch.setattr(service_module, "open_or_rebuild", full_database)
    log = RecordingLog()
    assert run(setup, log=log) == 69
    (said,) = log.named("start_unavailable")
    assert "disk is full" in said["problems"][0] and not log.named("config_invalid")


def test_a_watched_folder_gone_makes_the_service_say_so_and_its_return_clears_it(setup):
    """The share with the watched folder is unmounted at night: nothing can arrive. Status,
    the feed and systemd's STATUS said healthy with no problem (one folder_unreadable line in
    the log). Now a problem is listed until the folder is back; the watchdog keeps pinging
    (a restart would find no share either)."""
    import shutil

    movie(setup.watch_dir, "a.mrc")
    seen: list = []
    gone = setup.watch_dir.with_name("away")

    def unmount_then_mount(beat):
        seen.append(beat.health)
        if len(seen) == 3:
            setup.watch_dir.rename(gone)
        problem = any("watch folder" in p for p in beat.health.problems)
        if problem and gone.exists():
            gone.rename(setup.watch_dir)

    beats = Beats(unmount_then_mount)
    assert run(setup, beats) == 0
    flagged = [h for h in seen if any("watch folder" in p and "cannot be listed" in p
                                      for p in h.problems)]
    assert flagged and all(h.ok for h in flagged)
    assert not any("watch folder" in p for p in seen[-1].problems)
    assert {n: r.status for n, r in rows(setup).items()} == {"a.mrc": "done"}
    shutil.rmtree(gone, ignore_errors=True)


def test_a_grid_folder_that_cannot_be_listed_is_a_problem_until_it_can(setup, monkeypatch):
    """A grid written by another account with a strict umask: one folder_unreadable line in
    the log, then status said healthy, no problem, while its movies sat unseen. Now a problem
    is listed until the folder reads; its movie is then corrected (no restart, no retry)."""
    import daemon.intake.discover as discover

    grid = setup.watch_dir / "grid2"
    grid.mkdir()
    movie(grid, "b.mrc")
    movie(setup.watch_dir, "a.mrc")
    real_scandir = discover.os.scandir
    denied = {"on": True}

    def scandir(path):
        if denied["on"] and os.path.abspath(path) == str(grid):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discover.os, "scandir", scandir)
    seen: list = []

    def grant_after_a_while(beat):
        seen.append(beat.health)
        if len(seen) == 6:
            denied["on"] = False

    assert run(setup, Beats(grant_after_a_while)) == 0
    flagged = [h for h in seen if any("1 folder(s) in the watch folder cannot be listed" in p
                                      and "grid2: Permission denied" in p for p in h.problems)]
    assert flagged and all(h.ok for h in flagged)
    assert not any("cannot be listed" in p for p in seen[-1].problems)
    assert {n: r.status for n, r in rows(setup).items()} == {"a.mrc": "done", "b.mrc": "done"}


def test_a_file_system_without_locks_is_said_at_start(setup, monkeypatch):
    """NFS without lockd, some FUSE shares: flock fails with ENOLCK and the folders cannot be
    locked, so nothing keeps a second daemon out. That was silent; now it is logged once."""
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    movie(setup.watch_dir, "a.mrc")
    log = RecordingLog()
    assert run(setup, log=log) == 0
    (said,) = log.named("locks_unsupported")
    assert str(setup.out_dir) in said["paths"]


def test_a_state_database_left_read_only_exits_69_with_one_line(setup, monkeypatch):
    """The database opens but its first write fails (left owned by root after a ``sudo
    motionwatch watch``, or the disk full): one line and 69, not a traceback and 1."""
    def read_only(self, *args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Ledger, "set_service_state", read_only)
    log = RecordingLog()
    assert run(setup, log=log) == 69
    (said,) = log.named("start_unavailable")
    assert "readonly database" in said["problems"][0]


def test_a_read_between_failed_writes_is_no_recovery_of_the_state_database():
    """On a full disk reads go through: a read right after a failed write said
    ledger_write_recovered 0.1 ms after ledger_write_failed, cleared the health problem, and
    the rest of the outage was silent. Only a write that goes through is a recovery."""
    from daemon.engine.faults import LedgerWrites

    log = RecordingLog()
    writes = LedgerWrites(log, clock=lambda: 0.0)

    def full():
        raise sqlite3.OperationalError("database or disk is full")

    assert writes.guard(full) is None
    assert writes.guard(lambda: 7, write=False) == 7
    assert not log.named("ledger_write_recovered")
    assert writes.problem() == "state database cannot be written (database or disk is full)"
    assert writes.guard(lambda: None) is None  # a write that went through
    assert len(log.named("ledger_write_recovered")) == 1 and writes.problem() is None


def test_movies_put_back_by_a_full_disk_are_work_waiting_in_the_pace(setup, monkeypatch):
    """The pace counted only pending movies: with movies put back by a full disk, status said
    'keeping up: 0 waiting' beside 'backlog: 2 to correct'."""
    import daemon.engine.pace as pace_module

    monkeypatch.setattr(pace_module, "_MIN_SPAN_S", 0.0)
    config = dataclasses.replace(setup, retry_delay_s=30.0, exit_when_idle_s=1.0,
                                 max_attempts=5)
    (config.out_dir.parent / "OUTPUT_FULL").write_text("")
    for name in ("a.mrc", "b.mrc"):
        movie(config.watch_dir, name)
    paces = []

    def put_back(beat):
        statuses = [r.status for r in rows(config).values()]
        if "failed" in statuses and "running" not in statuses and beat.pace is not None:
            paces.append((beat.pace, sorted(statuses)))
        return bool(paces)

    run_until(config, put_back)
    pace, statuses = paces[0]
    assert len(statuses) == 2 and pace["waiting"] == 2, (pace, statuses)


def test_a_movie_waiting_out_its_own_retry_delay_is_not_work_waiting(setup, monkeypatch):
    """A movie that crashed its worker waits its back-off (up to 300 s): counted as waiting,
    an idle daemon said falling_behind and advised more workers."""
    import daemon.engine.pace as pace_module

    monkeypatch.setattr(pace_module, "_MIN_SPAN_S", 0.0)
    config = dataclasses.replace(setup, retry_delay_s=30.0, exit_when_idle_s=1.0,
                                 max_attempts=5)
    movie(config.watch_dir, "crash_a.mrc")
    paces = []
    log = RecordingLog()

    def waits(beat):
        if rows(config).get("crash_a.mrc") and rows(config)["crash_a.mrc"].failures == 1:
            paces.append(beat.pace)
        return bool(paces)

    run_until(config, waits, log=log)
    assert paces and paces[0]["waiting"] == 0 and paces[0]["keeping_up"] is True
    assert not log.named("falling_behind")


def test_a_watched_share_unmounted_is_a_problem_until_it_is_mounted_again(tmp_path):
    """An unmounted share leaves its mount point, an empty folder that lists fine: the daemon
    said 'healthy' with no problem while no movie could arrive (a tmpfs stands in for the
    share here: a file system of its own, as a share is)."""
    from service_run import running

    watch, out = tmp_path / "mnt", tmp_path / "out"
    for folder in (watch, out):
        folder.mkdir()

    def mount() -> None:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "share", str(watch)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounts not permitted here")

    mount()
    log = RecordingLog()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.1, polling="on")
    service = Service(config, runner="fake_runners:correct", logger=log)
    mounted = True
    try:
        with running(service) as wait_for:
            wait_for(lambda: service.health().ok and log.named("service_ready"), 20)
            assert not service.health().problems
            subprocess.run(["umount", str(watch)], check=True)
            mounted = False
            wait_for(lambda: service.health().problems, 20)
            (problem,) = service.health().problems
            assert f"the share mounted at {watch} at start is not mounted now" in problem
            assert "no movie can arrive" in problem
            mount()
            mounted = True
            wait_for(lambda: not service.health().problems, 20)
            assert not service.health().problems
    finally:
        if mounted:
            subprocess.run(["umount", str(watch)], capture_output=True)
