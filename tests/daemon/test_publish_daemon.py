"""The live feed of a running `motionwatch watch`: a real SUB socket against the real daemon.

The daemon runs as a subprocess (``python -m daemon watch``) with the real pipeline on a simulated
tilt series (:mod:`daemon.simulate_series`, 128^2 x 6 frames) plus one loose movie rendered with a
large known drift; the feed is bound on an ``ipc://`` endpoint in the test's folder.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
from daemon_process import spawn, watch_argv
import pytest
import zmq

from correction.synthetic import render_movie
from daemon.feed.subscriber import Subscriber
from daemon.simulation.movies import simulate_session, write_movie_progressively
from daemon.simulation.tilt_series import simulate_tilt_series

SHAPE = (128, 128)
PIXEL_A = 1.1


def watch_command(watch: Path, out: Path, endpoint: str, *extra: str) -> list[str]:
    return watch_argv(watch, out, "--dose-per-frame", "1.0", "--settle-time", "0.2",
                      "--scan-interval", "0.1", "--heartbeat", "0.3", "--metadata-wait", "1",
                      "--mdoc-quiet", "1", "--publish", endpoint, "--drift-warning-total", "20",
                      *extra)


start = spawn  # the daemon as a subprocess (tests/helpers/daemon_process.py)


def drifty_movie(folder: Path, rng: np.random.Generator, total_px: float = 40.0) -> Path:
    """A movie whose specimen moves ``total_px`` along x (44 Å at 1.1 Å/px)."""
    shifts = np.zeros((6, 2))
    shifts[:, 1] = np.linspace(0.0, total_px, 6)
    shifts -= shifts.mean(axis=0)
    movie = render_movie(rng, shape_yx=SHAPE, n_frames=6, shifts_yx_px=shifts,
                         pixel_size_A=PIXEL_A, gain=None, n_hot_pixels=0)
    path = folder / "drifty.mrc"
    write_movie_progressively(path, movie.frames, pixel_size_A=PIXEL_A, frame_interval_s=0)
    return path


def collect(sub: Subscriber, until, timeout_s: float) -> list[tuple[str, dict]]:
    got: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = sub.receive(0.2)
        if message is not None:
            got.append(message)
        if until(got):
            return got
    raise AssertionError(f"timed out; got {Counter(t for t, _ in got)}")


def test_a_subscriber_receives_one_movie_message_per_movie_equal_to_its_motion_record_series_heartbeats_and_a_drift_warning(
        tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(3)
    endpoint = f"ipc://{tmp_path}/feed.ipc"
    sub = Subscriber(endpoint)
    daemon = start(watch_command(watch, out, endpoint), tmp_path / "log")
    late = None
    try:
        # the subscription is in place once a heartbeat arrives; then the session is acquired
        got = collect(sub, lambda g: any(t == "heartbeat" for t, _ in g), timeout_s=30)
        tilts = simulate_tilt_series(watch, rng=rng, n_tilts=3, shape_yx=SHAPE,
                                     frame_interval_s=0.01, tilt_interval_s=0.05,
                                     pixel_size_A=PIXEL_A)
        drifty = drifty_movie(watch, rng)
        movies = [t.movie.path for t in tilts] + [drifty]
        # (the drift warning follows its movie message: wait for it too, or a fast collector
        # stops between the two)
        got += collect(sub, lambda g: sum(t == "movie" for t, _ in g) >= 4
                      and any(t == "series" and b["event"] == "completed" for t, b in g)
                      and any(t == "warning" and b["kind"] == "drift_total" for t, b in g)
                      and sum(t == "heartbeat" for t, _ in g) >= 3, timeout_s=60)
        # a dashboard that connects now gets the state at once, without waiting for a movie
        late = Subscriber(endpoint, topics=("state",))
        state = collect(late, lambda g: any(t == "state" for t, _ in g), timeout_s=10)[-1][1]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()
        if late is not None:
            late.close()

    by_topic: dict[str, list[dict]] = {}
    for topic, body in got:
        by_topic.setdefault(topic, []).append(body)
        assert body["schema"] == "motionwatch/1" and body["session"] == got[0][1]["session"]
    seqs = [b["seq"] for _, b in got if _ != "state"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # one movie message per movie, values equal to the motion records
    movie_msgs = {Path(b["path"]).name: b for b in by_topic["movie"]}
    assert sorted(movie_msgs) == sorted([p.name for p in movies])
    assert len(by_topic["movie"]) == len(movies)
    for name, body in movie_msgs.items():
        record = json.loads((out / (Path(name).stem + ".motion.json")).read_text())
        shifts_A = np.asarray(record["global_shifts_px"]) * record["pixel_size_A"]
        np.testing.assert_allclose(body["shifts_A"], shifts_A, rtol=1e-12, atol=1e-12)
        assert body["drift"] == record["drift"]
        assert body["dose"]["total_e_A2"] == record["dose"]["total_e_A2"]
        assert body["resolution"] == record["resolution"]
        assert body["resolution"]["status"] in ("crossing", "nyquist")
        assert body["resolution"]["resolution_A"] >= 2 * PIXEL_A
        tilt = record.get("tilt")
        if name != "drifty.mrc":
            assert body["series"] == tilt["series"] == "TS_01"
            assert body["tilt_deg"] == tilt["tilt_deg"]
            assert body["acquisition_index"] == tilt["acquisition_index"]
            assert body["dose"]["pre_exposure_e_A2"] == pytest.approx(tilt["pre_exposure_e_A2"])
        else:
            assert body["series"] is None
    # the series: started, one update per movie, completed with every tilt done
    series = [b for b in by_topic["series"] if b["series"] == "TS_01"]
    assert series[0]["event"] == "started" and series[-1]["event"] == "completed"
    assert series[-1]["n_done"] == 3 and series[-1]["n_expected"] == 3
    assert [b["n_done"] for b in series if b["event"] == "updated"][-1] == 3
    # heartbeats with the counts
    beats = by_topic["heartbeat"]
    assert len(beats) >= 3 and beats[-1]["done"] >= 3 and beats[-1]["interval_s"] == 0.3
    # the movie with 44 Å of drift raises a warning naming it; the others do not
    drift_warnings = [b for b in by_topic.get("warning", []) if b["kind"] == "drift_total"]
    assert [Path(b["path"]).name for b in drift_warnings] == ["drifty.mrc"]
    assert drift_warnings[0]["value"] == movie_msgs["drifty.mrc"]["drift"]["total_A"] > 20
    # the late subscriber's state: the series and its tilts, the loose movie, the warning
    (entry,) = [s for s in state["series"] if s["series"] == "TS_01"]
    assert sorted(t["name"] for t in entry["tilts"]) == sorted(p.name for p in movies[:3])
    assert [m["name"] for m in state["movies"]] == ["drifty.mrc"]
    assert any(w["kind"] == "drift_total" for w in state["warnings"])
    assert state["heartbeat"]["done"] >= 3


def _run_backlog(tmp_path: Path, name: str, n: int, stuck_subscriber: bool) -> tuple[float, int]:
    """Correct a backlog of ``n`` movies to idle exit; returns (elapsed s, movies done)."""
    watch, out = tmp_path / f"w_{name}", tmp_path / f"out_{name}"
    simulate_session(watch, n_movies=n, rng=np.random.default_rng(5), shape_yx=SHAPE,
                     frame_interval_s=0, movie_interval_s=0, rename_indices=())
    endpoint = f"ipc://{tmp_path}/{name}.ipc"
    ctx = sock = None
    if stuck_subscriber:  # subscribes to everything and never reads
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 1024)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
    try:
        t0 = time.monotonic()
        daemon = start(watch_command(watch, out, endpoint, "--heartbeat", "0.01",
                                     "--exit-when-idle", "0.5", "--tilt-series", "off"),
                       tmp_path / f"{name}.log")
        assert daemon.wait(90) == 0
        elapsed = time.monotonic() - t0
    finally:
        if sock is not None:
            sock.close(linger=0)
            ctx.term()
    done = len(list(out.glob("*.motion.json")))
    return elapsed, done


def test_a_subscriber_that_never_reads_does_not_stop_correction(tmp_path):
    """Publishing never waits for a subscriber: with a stuck subscriber flooded by heartbeats
    every 10 ms, every movie is still corrected and the daemon exits as idle. (How long it takes
    beside a run without subscriber is a figure of benchmarks/bench_publish_frc.py, not a test.)"""
    n = 6
    _, stuck_done = _run_backlog(tmp_path, "stuck", n, stuck_subscriber=True)
    assert stuck_done == n


def test_an_endpoint_in_use_stops_the_daemon_with_a_config_error(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        result = subprocess.run(watch_command(watch, out, f"tcp://127.0.0.1:{port}"),
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.close(linger=0)
        ctx.term()
    assert result.returncode == 78
    assert f"tcp://127.0.0.1:{port}" in result.stderr and "--publish" in result.stderr
    assert not out.exists()  # a configuration with any error creates no folder


def test_a_network_endpoint_without_allow_remote_is_a_config_error_naming_the_key(tmp_path):
    watch = tmp_path / "w"
    watch.mkdir()
    result = subprocess.run(watch_command(watch, tmp_path / "out", "tcp://*:5557"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "publish_allow_remote" in result.stderr
    assert not (tmp_path / "out").exists()


def test_watch_with_its_dashboard_starts_into_an_output_folder_not_made_yet(tmp_path):
    """A new session's output folder with ``--dashboard``: the folder is made, then the
    dashboard serves it (made after the dashboard, the start was refused with 78, which systemd
    does not restart)."""
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    watch, out = tmp_path / "w", tmp_path / "new-session"
    watch.mkdir()
    result = subprocess.run(
        watch_command(watch, out, f"tcp://127.0.0.1:{free_port()}", "--dashboard",
                      f"127.0.0.1:{free_port()}", "--exit-when-idle", "1"),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_dir()


def test_status_names_where_a_running_daemon_serves_its_feed_and_dashboard(tmp_path):
    """With ``tcp://127.0.0.1:*`` the feed's port was only in the log's ``publisher_started``:
    ``motionwatch status`` names the bound endpoint and the dashboard's URL while the daemon
    runs, and nothing once it has stopped."""
    from daemon_process import events, wait_for_heartbeats

    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    daemon = start(watch_argv(watch, out, "--heartbeat", "0.3", "--scan-interval", "0.1",
                              "--dashboard", "127.0.0.1:0"), log)
    try:
        wait_for_heartbeats(out, 1)
        said = json.loads(subprocess.run(
            [*watch_argv(watch, out)[:3], "status", str(out), "--json"],
            capture_output=True, text=True, check=True).stdout)["daemon"]["serving"]
        text = subprocess.run([*watch_argv(watch, out)[:3], "status", str(out)],
                              capture_output=True, text=True, check=True).stdout
        logged = {e["event"]: e for e in events(log)}
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    endpoint = logged["publisher_started"]["endpoint"]
    assert endpoint.startswith("tcp://127.0.0.1:") and endpoint.rsplit(":", 1)[1].isdigit()
    assert said["feed"] == endpoint
    assert said["dashboard"].startswith("http://127.0.0.1:") and not said["dashboard"].endswith(
        ":0/")
    assert f"serving: feed {endpoint}, dashboard {said['dashboard']}" in text
    after = subprocess.run([*watch_argv(watch, out)[:3], "status", str(out), "--json"],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(after)["daemon"]["serving"] == {}
