"""systemd notify from a running `motionwatch watch`: a fake ``$NOTIFY_SOCKET`` of the test's own.

The socket is an abstract AF_UNIX datagram socket (``@name``, as systemd may pass), read by a
thread that timestamps every datagram. The daemon runs as a subprocess with the real pipeline,
except for the stuck-worker test, which runs the service in-process with a stand-in correction
that hangs on cue (as in test_service_policy.py).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mrcfile
import numpy as np
from daemon_process import events as log_events
from daemon_process import spawn, watch_argv
from service_run import empty_session
import pytest

from correction.params import CorrectionParams, DoseParams
from daemon import exitcodes
from daemon.settings.config import Config
from daemon.system.notify_listener import NotifyListener
from daemon.system.sdnotify import Notifier, watchdog_interval_s
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.simulation.movies import simulate_session, write_movie_progressively

OUTPUT_SUFFIXES = (".mrc", "_DW.mrc", "_EVN.mrc", "_ODD.mrc", ".motion.json")


class FakeSystemd:
    """Receives notify datagrams: ``messages`` is a list of (monotonic time, {KEY: VALUE})."""

    def __init__(self) -> None:
        self.name = f"@motionwatch-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str) -> list[float]:
        return [t for t, m in list(self.messages) if key in m]

    def values(self, key: str) -> list[str]:
        return [m[key] for _, m in list(self.messages) if key in m]

    def wait_for(self, key: str, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.times(key)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {key} within {timeout_s} s; got {self.messages}")

    def wait_until(self, condition, timeout_s: float) -> None:
        """Poll ``condition()`` until it holds; fail naming what was received."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout_s} s; got {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def systemd():
    fake = FakeSystemd()
    yield fake
    fake.close()


def start_daemon(watch: Path, out: Path, log: Path, env_extra: dict[str, str],
                 *extra: str) -> subprocess.Popen:
    return spawn(watch_argv(watch, out, "--dose-per-frame", "1.0", "--settle-time", "0.2",
                            "--scan-interval", "0.1", "--heartbeat", "0.2", "--tilt-series", "off",
                            "--publish", f"ipc://{out.parent}/feed-{uuid.uuid4().hex[:8]}.ipc",
                            *extra), log, env_extra)


def test_ready_after_start_up_watchdog_pings_while_healthy_and_stopping_on_sigterm(
        tmp_path, systemd):
    watch, out = tmp_path / "w", tmp_path / "out"
    simulate_session(watch, n_movies=2, rng=np.random.default_rng(1), shape_yx=(128, 128),
                     frame_interval_s=0, movie_interval_s=0, rename_indices=())
    daemon = start_daemon(watch, out, tmp_path / "log",
                          {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "2000000"})
    try:
        ready = systemd.wait_for("READY", 60)
        # by READY=1 the state database is open and the publisher bound (it is started first)
        assert (out / "motionwatch.sqlite").exists()
        assert any(e["event"] == "publisher_started" for e in log_events(tmp_path / "log"))
        # both movies done and two watchdog periods seen, however loaded the machine
        systemd.wait_until(lambda: any("2 done" in s for s in systemd.values("STATUS"))
                           and len(systemd.times("WATCHDOG")) >= 2, 60)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    # the daemon has exited: what it sent is in the socket, the receiver reads it in time
    systemd.wait_until(lambda: systemd.values("STATUS")[-1:] != []
                       and systemd.values("STATUS")[-1].startswith("stopping"), 10)
    pings = systemd.times("WATCHDOG")
    assert len(systemd.times("READY")) == 1 and all(t >= ready for t in pings)
    # WATCHDOG_USEC = 2 s: pings while healthy (their period is tested with a fake clock in
    # tests/daemon/test_sdnotify.py; wall-clock gaps are not asserted here)
    assert len(pings) >= 2
    status = systemd.values("STATUS")
    assert any("2 done" in s for s in status), status
    stopping = systemd.times("STOPPING")
    assert len(stopping) == 1 and stopping[0] > ready
    assert systemd.values("STATUS")[-1].startswith("stopping")




def test_watchdog_pings_stop_while_a_worker_is_stuck_on_a_movie(tmp_path, monkeypatch, systemd):
    """A movie that hangs in its worker (the pool's timeout is far off): once it has been in
    flight longer than ``watchdog_stuck_after`` the pings stop, while heartbeats go on; the
    status names the stuck movie."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    write_movie_progressively(watch / "hang.mrc", frames, pixel_size_A=1.1, frame_interval_s=0)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.05,
                    movie_timeout_s=60.0, polling="on")
    # the pool's own time limit failed (a stuck threshold under it is refused as a setting:
    # the listener is given it directly, as a pool that does not end the movie would need)
    environ = {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "600000"}
    notify = NotifyListener(Notifier.from_environ(environ),
                            watchdog_interval_s=watchdog_interval_s(environ), stall_s=0.3,
                            stuck_after_s=1.5, extend_s=30.0)
    seen: dict[str, float] = {}

    class Clock(ServiceListener):
        def on_heartbeat(self, beat):
            now = time.monotonic()
            if beat.in_flight and "started" not in seen:
                seen["started"] = now
            if "started" in seen and now - seen["started"] > 4.0:
                service.request_stop("test")
                service.request_stop("test")  # abandon the hung movie

    service = Service(config, listeners=[notify, Clock()], runner="fake_runners:correct")
    try:
        assert service.run() == exitcodes.INTERRUPTED
    finally:
        notify.close()
    systemd.wait_until(lambda: any("stuck on hang.mrc" in s for s in systemd.values("STATUS")), 10)
    assert "started" in seen  # the hung movie was seen in flight
    pings = systemd.times("WATCHDOG")
    assert pings  # healthy before the movie got stuck
    # once stuck, STATUS says so (when pings stop is the policy's matter: tested with a fake
    # clock below, not with wall-clock windows here)
    assert any("stuck on hang.mrc" in s for s in systemd.values("STATUS"))
    assert len(systemd.times("STATUS")) > 20  # the main loop kept turning: heartbeats went on


def test_sigterm_during_a_movie_ends_with_it_done_or_redone_never_half_written_exit_0(
        tmp_path, systemd):
    watch, out = tmp_path / "w", tmp_path / "out"
    movies = simulate_session(watch, n_movies=2, rng=np.random.default_rng(2),
                              shape_yx=(512, 512), n_frames=10, frame_interval_s=0,
                              movie_interval_s=0, rename_indices=())
    log = tmp_path / "log"
    daemon = start_daemon(watch, out, log, {"NOTIFY_SOCKET": systemd.name})
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "movie_started" for e in log_events(log)):
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.01)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    systemd.wait_until(lambda: systemd.values("STOPPING"), 10)
    assert systemd.values("STOPPING") == ["1"]
    assert systemd.values("EXTEND_TIMEOUT_USEC")  # asked for stop time while draining
    # nothing half-written: complete sets of outputs only, no temporaries
    assert not [p for p in out.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    db = sqlite3.connect(out / "motionwatch.sqlite")
    status = dict(db.execute("SELECT path, status FROM movies").fetchall())
    db.close()
    for movie in movies:
        present = [(out / f"{movie.path.stem}{s}").exists() for s in OUTPUT_SUFFIXES]
        if status.get(str(movie.path)) == "done":
            assert all(present)
        else:
            assert status.get(str(movie.path)) in (None, "pending")
            assert not present[-1]  # no motion record says done without the ledger
    assert "done" in status.values()  # the movie in hand was finished
    # the next start does the rest, each movie exactly once
    daemon = start_daemon(watch, out, log, {}, "--exit-when-idle", "0.5")
    assert daemon.wait(90) == 0
    for movie in movies:
        for suffix in OUTPUT_SUFFIXES[:4]:
            with mrcfile.open(out / f"{movie.path.stem}{suffix}", permissive=False) as mrc:
                assert mrc.data.shape == (512, 512) and np.isfinite(mrc.data).all()
    done = [e["movie"] for e in log_events(log) if e["event"] == "movie_done"]
    assert sorted(done) == sorted(str(m.path) for m in movies)


def test_a_sighup_to_the_whole_process_group_lets_the_movie_in_hand_finish_exit_75(tmp_path):
    """A closed terminal (or ``systemctl kill -s HUP``) signals every process of the group.
    Before, the worker died of it: the movie in hand failed as a crash (three such nights
    quarantine a good movie); now the daemon drains as for a SIGHUP to it alone."""
    watch, out = tmp_path / "w", tmp_path / "out"
    simulate_session(watch, n_movies=2, rng=np.random.default_rng(4), shape_yx=(512, 512),
                     n_frames=10, frame_interval_s=0, movie_interval_s=0, rename_indices=())
    log = tmp_path / "log"
    daemon = spawn(watch_argv(watch, out, "--dose-per-frame", "1.0", "--settle-time", "0.2",
                              "--scan-interval", "0.1", "--tilt-series", "off", "--no-publish"),
                   log, new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "movie_started" for e in log_events(log)):
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.01)
        os.killpg(daemon.pid, signal.SIGHUP)
        assert daemon.wait(60) == exitcodes.RESTART
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
    events = [e["event"] for e in log_events(log)]
    assert "movie_failed" not in events and events.count("movie_done") >= 1


@pytest.mark.parametrize("problem, status", [("--workers 0", 78), ("missing watch folder", 69)])
def test_config_errors_are_printed_as_journald_errors_and_exit_78_or_69(tmp_path, problem,
                                                                         status):
    """A wrong value exits 78 (not restarted); a watch folder out of reach (a share not mounted
    yet) 69, which systemd restarts. Both print their reasons as journald errors."""
    (tmp_path / "w").mkdir()
    watch = tmp_path / ("missing" if problem == "missing watch folder" else "w")
    extra = problem.split() if problem.startswith("--") else []
    journal = tmp_path / "journal"  # the stream journald reads, as systemd names it
    with open(journal, "w") as stream:
        st = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        result = subprocess.run([sys.executable, "-m", "daemon", "watch", str(watch),
                                 "--out", str(tmp_path / "out"), "--dose-per-frame", "1", *extra],
                                stdout=subprocess.DEVNULL, stderr=stream, env=env, timeout=60)
    assert result.returncode == status
    lines = journal.read_text().splitlines()
    assert lines and all(line.startswith("<3>") for line in lines), lines
    assert any(("watch folder" if status == 69 else "workers") in line for line in lines)


def test_the_watchdog_turns_unhealthy_once_a_movie_is_in_flight_longer_than_stuck_after():
    """The policy on a fake clock: healthy while a movie is young, unhealthy once it has been in
    flight for more than ``stuck_after_s``, healthy again when it leaves; and unhealthy when no
    heartbeat came for ``stall_s``."""
    from daemon.events import Health, Heartbeat

    now = [100.0]

    class NoSystemd:
        enabled = False

        def status(self, text): ...

        def ready(self, text): ...

    listener = NotifyListener(NoSystemd(), watchdog_interval_s=None, stall_s=5.0,
                              stuck_after_s=1.5, extend_s=30.0, clock=lambda: now[0])

    def beat(in_flight):
        listener.on_heartbeat(Heartbeat(0.0, 0.0, {}, 0, tuple(in_flight), "poll",
                                        Health(True)))

    beat(["a.mrc"])
    assert listener.healthy()
    now[0] += 1.0
    beat(["a.mrc"])
    assert listener.healthy()
    now[0] += 1.0
    beat(["a.mrc"])
    assert not listener.healthy()  # 2.0 s in flight > 1.5 s
    beat([])
    assert listener.healthy()
    now[0] += 6.0
    assert not listener.healthy()  # no heartbeat for 6 s > stall 5 s


def test_a_movie_waiting_in_a_distributed_executors_queue_is_not_stuck():
    """With Dask (SLURM jobs), a movie is in flight from submission but waits for a worker:
    its time counts from when a worker has it (the heartbeat's ``queued`` drops it), so a long
    queue does not stop the pings; once started, the same limit holds."""
    from daemon.events import Health, Heartbeat

    now = [100.0]

    class NoSystemd:
        enabled = False

        def status(self, text): ...

    listener = NotifyListener(NoSystemd(), watchdog_interval_s=None, stall_s=50.0,
                              stuck_after_s=1.5, extend_s=30.0, clock=lambda: now[0])

    def beat(queued):
        listener.on_heartbeat(Heartbeat(0.0, 0.0, {}, 0, ("a.mrc",), "poll", Health(True),
                                        {"executor": "dask"}, None, tuple(queued)))

    for _ in range(10):  # ten seconds in the queue
        beat(["a.mrc"])
        assert listener.healthy()
        now[0] += 1.0
    beat([])  # a worker has it now
    now[0] += 1.0
    beat([])
    assert listener.healthy()  # 1.0 s in a worker
    now[0] += 1.0
    beat([])
    assert not listener.healthy()  # 2.0 s in a worker > 1.5 s


def test_the_status_line_says_falling_behind_only_when_the_pace_says_so():
    from daemon.events import Health, Heartbeat

    class RecordingSystemd:
        enabled = True

        def __init__(self):
            self.lines = []

        def status(self, text):
            self.lines.append(text)

        def ready(self, text): ...

    systemd = RecordingSystemd()
    listener = NotifyListener(systemd, watchdog_interval_s=None, stall_s=5.0,
                              stuck_after_s=60.0, extend_s=30.0, clock=lambda: 0.0)
    counts = {"done": 40, "pending": 12}
    for keeping_up, corrected in ((False, 4.5), (True, 6.0), (None, None)):
        pace = {"arrived_per_min": 6.0, "corrected_per_min": corrected, "waiting": 12,
                "behind_min": None if corrected is None else 12 / corrected,
                "keeping_up": keeping_up, "window_s": 600.0}
        listener.on_heartbeat(Heartbeat(0.0, 0.0, counts, 0, (), "poll", Health(True),
                                        None, pace))
    behind, ok, unknown = systemd.lines
    assert behind.endswith("; FALLING BEHIND: 12 waiting, 2.7 min of work (6.0 movies/min "
                           "acquired, 4.5 corrected, last 10 min)")
    # keeping up, or not known yet: the counts alone
    assert ok == unknown == "40 done, 0 running, 12 pending, 0 waiting, 0 failed, 0 quarantined"


def _watchdog_config(**options) -> Config:
    return Config(Path("/w"), Path("/o"), Path("/o"),
                  CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)), options=options)


def test_a_watchdog_stall_over_half_of_watchdogsec_is_a_config_error_naming_the_limit():
    """With WatchdogSec=2min a stall threshold of 600 s would let a hung daemon ping on."""
    from daemon.settings.config import ConfigError

    env = {"WATCHDOG_USEC": "120000000"}
    with pytest.raises(ConfigError) as info:
        NotifyListener.from_config(_watchdog_config(watchdog_stall=600.0), environ=env)
    assert info.value.problems == ("watchdog_stall (600 s) must be at most half of systemd's "
                                   "WatchdogSec (120 s): at most 60 s",)
    assert NotifyListener.from_config(_watchdog_config(watchdog_stall=60.0),
                                      environ=env).stall_s == 60.0
    assert NotifyListener.from_config(_watchdog_config(), environ=env).stall_s == 30.0
    # without a systemd watchdog any positive stall is fine
    assert NotifyListener.from_config(_watchdog_config(watchdog_stall=600.0),
                                      environ={}).stall_s == 600.0


def test_watch_exits_78_at_start_up_on_a_watchdog_stall_over_half_of_watchdogsec(tmp_path):
    (tmp_path / "w").mkdir()
    env = {**os.environ, "WATCHDOG_USEC": "120000000"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_PID", None)
    result = subprocess.run([sys.executable, "-m", "daemon", "watch", str(tmp_path / "w"),
                             "--out", str(tmp_path / "out"), "--watchdog-stall", "600",
                             "--no-publish", "--exit-when-idle", "0"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "at most half of systemd's WatchdogSec (120 s): at most 60 s" in result.stderr
    assert not (tmp_path / "out").exists()


def test_ready_is_sent_only_after_the_first_scan(tmp_path, monkeypatch):
    """Mutant D6 (service.py:365, the start-up scan left to the main loop): events.py says
    on_ready (READY=1) comes with "the first scan made"; READY before it tells systemd a
    daemon is up that has not yet looked at the watch folder (minutes on a large share)."""
    from recording_log import RecordingLog

    from daemon.engine.service import Service
    from daemon.events import ServiceListener

    order = []
    original = Service._scan

    def scan(self, *args, **kwargs):
        order.append("scan")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Service, "_scan", scan)

    class Ready(ServiceListener):
        def on_ready(self, info):
            order.append("ready")

    service = Service(empty_session(tmp_path), listeners=[Ready()],
                      runner="fake_runners:correct", logger=RecordingLog())
    assert service.run() == 0
    assert "ready" in order and order.index("scan") < order.index("ready")


def test_stopping_asks_systemd_for_more_stop_time_and_again_each_beat_while_a_movie_drains():
    """Mutants D11 (notify_listener.py:203, no EXTEND_TIMEOUT_USEC with STOPPING=1) and D12
    (:197, extended also with nothing in flight): systemd/motionwatch.service counts on it."""
    from daemon.events import Health, Heartbeat
    from daemon.system.notify_listener import NotifyListener

    class Systemd:
        enabled = True

        def __init__(self):
            self.sent = []

        def status(self, text):
            self.sent.append(("STATUS", text))

        def stopping(self, text):
            self.sent.append(("STOPPING", text))

        def extend_timeout(self, usec):
            self.sent.append(("EXTEND_TIMEOUT_USEC", usec))

    systemd = Systemd()
    listener = NotifyListener(systemd, watchdog_interval_s=None, stall_s=5.0,
                              stuck_after_s=60.0, extend_s=30.0, clock=lambda: 0.0)
    listener.on_stopping("SIGTERM")
    assert systemd.sent == [("STOPPING", "stopping: SIGTERM"), ("EXTEND_TIMEOUT_USEC", 30_000_000)]

    def beat(in_flight):
        systemd.sent.clear()
        listener.on_heartbeat(Heartbeat(0.0, 0.0, {"done": 1}, 0, in_flight, "poll",
                                        Health(True), None, None))
        return [kind for kind, _ in systemd.sent]

    assert beat(("/w/a.mrc",)) == ["EXTEND_TIMEOUT_USEC", "STATUS"]
    assert beat(()) == ["STATUS"]
