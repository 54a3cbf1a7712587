"""The terminal monitor: its state model, its rendering, and the real command in a terminal."""

from __future__ import annotations

import grp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from system_tools import require_tool

from daemon.feed.endpoint import ipc_connect_problem
from daemon.feed.monitor import MonitorState, render, sparkline
from daemon.feed.messages import SCHEMA, DriftRules, movie_message, movie_warnings, TiltInfo
from daemon.feed.publisher import PublishConfig, Publisher

REPO = Path(__file__).resolve().parents[2]


def record(name: str, total_A: float, jump_A: float = 1.0) -> dict:
    return {
        "schema": "motionwatch.motion/1", "movie": f"/data/{name}", "pixel_size_A": 1.0,
        "global_shifts_px": [[0.0, 0.0], [1.0, 0.5], [2.0, 1.0]],
        "drift": {"total_A": total_A, "early_A": total_A / 2, "late_A": total_A / 4,
                  "max_frame_jump_A": jump_A},
        "dose": {"total_e_A2": 3.0}, "local": {"applied": False},
        "resolution": {"resolution_A": 3.9}, "timings_s": {"total": 1.0}, "outputs": {},
    }


def envelope(body: dict, seq: int, session: str = "a" * 32) -> dict:
    return {"schema": SCHEMA, "seq": seq, "time": "2026-11-25T23:10:00.000Z", "host": "em-pc",
            "session": session, **body}


def screen_text(state: MonitorState, now: float, width: int = 160) -> str:
    console = Console(record=True, width=width, file=open(os.devnull, "w"))
    console.print(render(state, now))
    return console.export_text()


def test_render_shows_the_focused_series_its_tilts_drift_bars_warnings_and_heartbeat_age():
    state = MonitorState("tcp://127.0.0.1:5557")
    seq = 0

    def feed(topic: str, body: dict, at: float) -> None:
        nonlocal seq
        seq += 1
        state.apply(topic, envelope(body, seq), at)

    feed("heartbeat", {"interval_s": 5.0, "done": 3, "failed": 1, "backlog": 2, "running": 1,
                       "uptime_s": 3725, "version": "0.1.0",
                       "drift_thresholds": {"max_total_drift_A": 40.0, "max_frame_jump_A": 10.0}},
         100.0)
    feed("series", {"event": "started", "series": "TS_07", "n_done": 0, "n_expected": 41,
                    "accumulated_dose_e_A2": 0.0}, 100.0)
    for i, (angle, total) in enumerate([(0.0, 5.0), (3.0, 12.0), (-3.0, 55.0)]):
        body = movie_message(record(f"TS_07_{i:03d}.tif", total),
                             TiltInfo(series="TS_07", tilt_deg=angle, acquisition_index=i,
                                      pre_exposure_e_A2=3.0 * i))
        feed("movie", body, 101.0 + i)
        for warning in movie_warnings(body, DriftRules()):
            feed("warning", warning, 101.0 + i)
    feed("series", {"event": "updated", "series": "TS_07", "n_done": 3, "n_expected": 41,
                    "accumulated_dose_e_A2": 9.0}, 104.0)
    text = screen_text(state, now=102.0)
    assert "TS_07 (open) · 3/41 tilts · dose 9.0 e/Å²" in text
    for name in ("TS_07_000.tif", "TS_07_001.tif", "TS_07_002.tif"):
        assert name in text
    rows = {line.split("│")[11].strip(): line for line in text.splitlines()
            if line.startswith("│") and "TS_07_0" in line}
    assert rows["TS_07_002.tif"].count("█") == 20  # the largest drift fills the bar
    assert rows["TS_07_000.tif"].count("█") == round(5 / 55 * 20)
    assert "-3.0" in rows["TS_07_002.tif"] and "55.0" in rows["TS_07_002.tif"]
    assert "total drift 55.0 Å above 40 Å" in text
    assert "heartbeat 2 s ago" in text and "done 3  failed 1  backlog 2" in text
    assert "uptime 1:02:05" in text
    assert "no heartbeat for 40 s: daemon down?" in screen_text(state, now=140.0)


def test_names_are_shown_as_they_are_never_as_markup_or_terminal_control_sequences():
    """A series in folder ``x[`` named ``b]TS`` made ``x[/b]TS``, which rich read as markup:
    the monitor crashed (MarkupError); ``[red]`` was styled, ``[link=...]`` made a hyperlink,
    and an escape sequence in a movie's name reached the terminal raw."""
    state = MonitorState("tcp://127.0.0.1:5557")
    names = ["x[/b]TS_001_3.0.mrc", "[red]rich[blink] markup.mrc",
             "esc\x1b]0;PWNED\x07\x1b[31mred.mrc", "TS_01_\u202egpj.mrc"]
    for seq, name in enumerate(names, start=1):
        state.apply("movie", envelope(movie_message(
            record(name, 2.0), TiltInfo(series="x[/b]TS", tilt_deg=0.0 + seq,
                                        acquisition_index=seq)), seq), 100.0)
    state.apply("error", envelope({"path": "/d/\x1b[2Jwiped.mrc", "reason": "[bold]x"}, 9),
                100.0)
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    console.print(render(state, 100.0))
    plain = console.export_text(clear=False)
    sent = console.export_text(styles=True)  # what the terminal is sent, style codes included
    assert "x[/b]TS (open)" in plain and "[red]rich[blink] markup.mrc" in plain
    assert "esc\ufffd]0;PWNED\ufffd\ufffd[31mred.mrc" in plain
    assert "TS_01_\ufffdgpj.mrc" in plain      # not shown reordered by a bidi override
    assert "\x1b]0;" not in sent and "\x1b[2J" not in sent


def test_a_malformed_message_is_counted_and_the_monitor_goes_on():
    state = MonitorState("tcp://127.0.0.1:5557")
    state.apply("series", envelope({"event": "started"}, 1), 100.0)  # no "series"
    state.apply("heartbeat", envelope({"interval_s": "soon", "done": 1}, 2), 100.0)
    assert state.invalid == 1
    assert "heartbeat 0 s ago" in screen_text(state, now=100.0)


def test_state_model_counts_seq_gaps_and_notes_a_new_session_as_a_restart():
    state = MonitorState("ipc:///x")
    state.apply("heartbeat", envelope({"interval_s": 5}, 1), 0.0)
    state.apply("heartbeat", envelope({"interval_s": 5}, 2), 1.0)
    state.apply("heartbeat", envelope({"interval_s": 5}, 6), 2.0)  # 3, 4 and 5 lost
    assert state.missed == 3 and state.restarts == 0
    state.apply("series", envelope({"event": "started", "series": "TS_09", "n_done": 0}, 1,
                                   session="b" * 32), 3.0)
    assert state.restarts == 1 and state.missed == 3 and state.last_seq == 1
    assert state.heartbeat is None  # the old daemon's heartbeat no longer counts
    state.apply("invalid", {"error": "not JSON"}, 4.0)
    assert state.invalid == 1
    assert "daemon restarted 1x" in screen_text(state, now=4.0)


def test_state_snapshot_merges_with_what_is_known_and_repeats_no_warning():
    state = MonitorState("ipc:///x")
    body = movie_message(record("TS_01_000.tif", 50.0), TiltInfo(series="TS_01", acquisition_index=0))
    warning = movie_warnings(body, DriftRules())[0]
    state.apply("movie", envelope(body, 1), 0.0)
    state.apply("warning", envelope(warning, 2), 0.0)
    snapshot = {"series": [{"series": "TS_01", "status": "open", "n_done": 2, "tilts": [
        {"path": "/data/TS_01_000.tif", "name": "TS_01_000.tif", "acquisition_index": 0,
         "total_A": 50.0},
        {"path": "/data/TS_01_001.tif", "name": "TS_01_001.tif", "acquisition_index": 1,
         "total_A": 4.0}]}],
        "movies": [], "warnings": [{**warning, "seq": 2, "time": "2026-11-25T23:10:00.000Z"}],
        "errors": [], "heartbeat": None}
    snapshot["heartbeat"] = {"seq": 1, "time": "2026-11-25T23:09:57.000Z", "interval_s": 5.0,
                             "done": 2}
    state.apply("state", envelope(snapshot, 3), 100.0)  # state sent at 23:10:00.000Z
    assert list(state.series["TS_01"].tilts) == ["/data/TS_01_000.tif", "/data/TS_01_001.tif"]
    assert len(state.warnings) == 1
    # the heartbeat's age comes from two daemon-clock times: 3 s old when the state arrived
    assert state.heartbeat["done"] == 2 and state.heartbeat_at == pytest.approx(97.0)


def test_restored_errors_of_two_movies_with_one_reason_are_two_errors():
    """The state message rebuilt from the database after a restart carries its errors without a
    seq: grid1/x.mrc and grid2/x.mrc, both cut short by one failing transfer, showed as one."""
    state = MonitorState("ipc:///x")
    errors = [{"kind": "quarantined", "path": f"/data/{grid}/x.mrc", "series": None,
               "reason": "not an MRC file", "seq": None} for grid in ("grid1", "grid2")]
    snapshot = {"series": [], "movies": [], "warnings": [], "errors": errors, "heartbeat": None}
    for seq in (1, 2):  # and a second snapshot repeats them
        state.apply("state", envelope(snapshot, seq), 0.0)
    assert [e["path"] for e in state.errors] == ["/data/grid1/x.mrc", "/data/grid2/x.mrc"]


def test_a_movies_error_is_listed_once_across_restarts_and_gone_once_it_is_corrected():
    """A quarantined movie was listed once more after each restart (the restored error, of
    another session and without a seq, matched nothing); a movie retried and corrected stayed
    under errors, while status, the dashboard and a monitor started later showed none."""
    state = MonitorState("ipc:///x")
    bad = {"kind": "quarantined", "path": "/data/bad.mrc", "series": None,
           "reason": "quarantined: not a movie: unknown MRC mode 99"}
    state.apply("error", envelope(bad, 1), 0.0)
    restored = {"series": [], "movies": [], "warnings": [], "heartbeat": None,
                "errors": [{"path": "/data/bad.mrc", "reason": bad["reason"],
                            "time": "2026-12-07T03:57:43.000Z", "seq": None}]}
    for session in ("b" * 32, "c" * 32):  # two restarts
        state.apply("state", envelope(restored, 1, session), 0.0)
    assert [e["path"] for e in state.errors] == ["/data/bad.mrc"]
    other = {**bad, "path": "/data/other.mrc"}
    state.apply("error", envelope(other, 2, "c" * 32), 0.0)
    body = movie_message({**record("bad.mrc", 3.0), "movie": "/data/bad.mrc"}, TiltInfo())
    state.apply("movie", envelope(body, 3, "c" * 32), 0.0)  # retried, corrected
    assert [e["path"] for e in state.errors] == ["/data/other.mrc"]


def test_sparkline_scales_to_the_maximum_and_leaves_gaps_for_missing_values():
    assert sparkline([0.0, 5.0, 10.0, None]) == "▁▅█ "
    assert sparkline([]) == ""


def test_monitor_once_prints_the_state_of_a_running_publisher_and_exits():
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    endpoint = f"ipc://{folder}/feed"
    try:
        with Publisher(PublishConfig(endpoint=endpoint)) as pub:
            pub.series("started", "TS_05", n_done=1, n_expected=3, accumulated_dose_e_A2=3.0)
            pub.movie(record("TS_05_000.tif", 8.5), TiltInfo(series="TS_05", tilt_deg=0.0,
                                                             acquisition_index=0))
            assert pub.flush()
            done = subprocess.run([sys.executable, "-m", "daemon", "monitor", endpoint, "--once"],
                                  capture_output=True, text=True, timeout=60, cwd=REPO,
                                  env={**os.environ, "COLUMNS": "150"})
        assert done.returncode == 0, done.stderr
        assert "TS_05 (open) · 1/3 tilts · dose 3.0 e/Å²" in done.stdout
        assert "TS_05_000.tif" in done.stdout and "8.5" in done.stdout
        missing = subprocess.run([sys.executable, "-m", "daemon", "monitor", f"ipc://{folder}/none",
                                  "--once", "--wait", "0.5"], capture_output=True, text=True,
                                 timeout=60, cwd=REPO)
        assert missing.returncode == 1 and "is the daemon running" in missing.stderr
        assert f"no socket at {folder}/none" in missing.stderr
        assert "--curve-server-key" not in missing.stderr  # a local feed has no keys
        remote = subprocess.run([sys.executable, "-m", "daemon", "monitor",
                                 "tcp://192.0.2.1:5557", "--once", "--wait", "0.5"],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert remote.returncode == 1 and "--curve-server-key" in remote.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_monitor_once_waits_past_the_state_a_starting_daemon_sends_before_it_read_its_own():
    """Started with the daemon, ``--once`` took the first, provisional, state (sent before the
    state database was read) and printed "no movies yet" for a session of 14 tilts."""
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    endpoint = f"ipc://{folder}/feed"
    try:
        with Publisher(PublishConfig(endpoint=endpoint)) as pub:
            pub.hold_state()  # a daemon starting: its state database not read yet
            monitor = subprocess.Popen([sys.executable, "-m", "daemon", "monitor", endpoint,
                                        "--once", "--wait", "30"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, cwd=REPO,
                                       env={**os.environ, "COLUMNS": "150"})
            time.sleep(3)  # it has subscribed and had the provisional state
            body = movie_message(record("TS_05_000.tif", 8.5),
                                 TiltInfo(series="TS_05", tilt_deg=0.0, acquisition_index=0))
            pub.restore(movies=[body], series=[{"event": "updated", "series": "TS_05",
                                                "n_done": 1, "n_expected": 3}])
            out, err = monitor.communicate(timeout=60)
        assert monitor.returncode == 0, err
        assert "TS_05 (open) · 1/3 tilts" in out and "TS_05_000.tif" in out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_daemon_that_said_it_stops_is_shown_stopped_then_not_after_its_restart():
    """A clean SIGTERM: "no heartbeat: daemon down?" in red where the dashboard said
    "daemon stopped"; after the restart its "stopping" warning was still listed."""
    state = MonitorState("tcp://127.0.0.1:5557")
    state.apply("heartbeat", envelope({"interval_s": 1.0}, 1), 0.0)
    state.apply("warning", envelope({"kind": "stopping", "message": "daemon stopping: SIGTERM"},
                                    2), 0.5)
    text = screen_text(state, 10.0)
    assert "daemon stopped (daemon stopping: SIGTERM)" in text and "daemon down?" not in text
    state.apply("heartbeat", envelope({"interval_s": 1.0}, 1, "c" * 32), 11.0)
    text = screen_text(state, 11.5)
    assert "SIGTERM" not in text and "heartbeat 0 s ago" in text


def test_another_daemon_writing_elsewhere_on_the_feed_is_not_merged_with_the_last_one():
    """Daemon B (out b/, TS_01 of 8 tilts) stopped, daemon A (out a/, its own TS_01) started
    on the same endpoint: the monitor showed "TS_01 · 14/6 tilts"."""
    state = MonitorState("tcp://127.0.0.1:5557")
    state.apply("heartbeat", envelope({"out_dir": "/o/b", "interval_s": 1.0}, 1, "b" * 32), 0.0)
    for i in range(8):
        body = movie_message(record(f"TS_01_{i:03d}.tif", 5.0),
                             TiltInfo(series="TS_01", tilt_deg=3.0 * i, acquisition_index=i))
        state.apply("movie", envelope(body, 2 + i, "b" * 32), 1.0)
    state.apply("heartbeat", envelope({"out_dir": "/o/a", "interval_s": 1.0}, 1, "a" * 32), 2.0)
    body = movie_message(record("TS_01_000.tif", 6.0),
                         TiltInfo(series="TS_01", tilt_deg=0.0, acquisition_index=0))
    state.apply("movie", envelope(body, 2, "a" * 32), 3.0)
    assert len(state.series["TS_01"].tilts) == 1


def test_the_series_being_corrected_is_shown_after_a_state_that_names_every_series_at_once():
    """``--once`` on a backlog of 40 series: TS_40 (0/41, idle) was shown as the series being
    acquired, TS_21 (21 tilts, the one being corrected) nowhere; at 80 columns 41 tilts' drift
    sparkline cut the other columns to "T…"."""
    series = []
    for k in range(1, 41):
        tilts = [{**movie_message(record(f"TS_{k:02d}_{i:03d}.tif", 3.0 + i % 5),
                                  TiltInfo(series=f"TS_{k:02d}", tilt_deg=0.0,
                                           acquisition_index=i)),
                  "time": f"2026-11-25T23:{k:02d}:{i:02d}.000Z"}
                 for i in range(41 if k < 21 else 21 if k == 21 else 0)]
        series.append({"series": f"TS_{k:02d}", "status": "completed" if k < 21 else "open",
                       "n_done": len(tilts), "n_expected": 41, "tilts": tilts})
    state = MonitorState("tcp://127.0.0.1:5557")
    state.apply("state", envelope({"series": series, "movies": [], "out_dir": "/o"}, 1), 0.0)
    assert state.focus().name == "TS_21"
    text = screen_text(state, 0.0, width=80)
    assert "TS_21 (open) · 21/41 tilts" in text
    assert "TS_20" in text and "completed" in text and "41/41" in text  # other series, whole
    assert sparkline([1.0, 9.0, 2.0, 2.0, None, None], width=3) == "█▃ "


def _wait_for_screen(tmux: list[str], check: Callable[[str], bool], timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < deadline:
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "mon"], capture_output=True,
                                text=True).stdout
        if check(screen):
            return screen
        time.sleep(0.2)
    size = subprocess.run([*tmux, "display", "-p", "-t", "mon", "#{window_width}x#{window_height}"],
                          capture_output=True, text=True).stdout.strip()
    pytest.fail(f"screen ({size}) never showed what was expected; last screen:\n{screen}")


def test_monitor_command_in_a_terminal_shows_the_series_and_its_tilts_and_survives_a_restart():
    require_tool("tmux", "tmux")  # a real terminal
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))  # ipc:// paths must stay short
    endpoint = f"ipc://{folder}/feed"
    tmux = ["tmux", "-S", str(folder / "tmux.sock")]
    pub = Publisher(PublishConfig(endpoint=endpoint)).start()
    try:
        pub.series("started", "TS_01", n_done=0, n_expected=5)
        for i, angle in enumerate([0.0, 3.0]):  # before the monitor starts: comes as state
            pub.movie(record(f"TS_01_{i:03d}.tif", 4.0 + i),
                      TiltInfo(series="TS_01", tilt_deg=angle, acquisition_index=i))
        # COLUMNS/LINES inherited from the test runner would override the pane size
        command = (f"env -u COLUMNS -u LINES {sys.executable} -m daemon monitor {endpoint}; "
                   "echo monitor exited with $?; sleep 60")
        subprocess.run([*tmux, "new-session", "-d", "-s", "mon", "-x", "160", "-y", "45", command],
                       check=True, cwd=REPO)
        _wait_for_screen(tmux, lambda s: "TS_01_001.tif" in s and "TS_01 (open)" in s)

        pub.movie(record("TS_01_002.tif", 70.0), TiltInfo(series="TS_01", tilt_deg=-3.0,
                                                          acquisition_index=2))
        pub.series("updated", "TS_01", n_done=3, n_expected=5, accumulated_dose_e_A2=9.0)
        pub.heartbeat(backlog=0, done=3, failed=0)
        screen = _wait_for_screen(tmux, lambda s: "TS_01_002.tif" in s
                                  and re.search(r"heartbeat \d+ s ago  done 3", s) is not None
                                  and "total drift 70.0 Å above 40 Å" in s)
        assert "3/5 tilts" in screen and "TS_01_000.tif" in screen

        pub.close()  # the daemon restarts: a new session on the same endpoint
        pub = Publisher(PublishConfig(endpoint=endpoint)).start()
        pub.series("started", "TS_02", n_done=0, n_expected=3)
        pub.movie(record("TS_02_000.tif", 6.0), TiltInfo(series="TS_02", tilt_deg=0.0,
                                                         acquisition_index=0))
        screen = _wait_for_screen(tmux, lambda s: "TS_02_000.tif" in s and "restarted 1x" in s)
        assert "TS_01" in screen  # the earlier series is still listed
    finally:
        pub.close()
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_after_a_restart_the_monitor_shows_the_movies_the_ledger_holds_not_no_movies_yet(
        tmp_path):
    """Faults issue item 15: the late-joiner state is rebuilt from the state database at
    start-up (read-only), with the done movies' motion records and their series."""
    import json

    from daemon.events import MovieKey, ServiceInfo
    from daemon.feed.listener import PublishListener
    from daemon.feed.subscriber import Subscriber
    from daemon.state.ledger import Ledger

    out = tmp_path / "out"
    (out / "TS_01").mkdir(parents=True)
    with Ledger(out / "motionwatch.sqlite") as db:
        for i in range(19):
            name = f"TS_01_{i:03d}" if i < 12 else f"loose_{i:03d}"
            folder = out / "TS_01" if i < 12 else out
            body = record(f"{name}.tif", 4.0 + i)
            if i < 12:
                body["tilt"] = {"series": "TS_01", "movie": f"{name}.tif", "tilt_deg": 3.0 * i,
                                "acquisition_index": i, "dose_e_A2": 3.0,
                                "pre_exposure_e_A2": 3.0 * i, "dose_source": "ExposureDose"}
            motion = folder / f"{name}.motion.json"
            motion.write_text(json.dumps(body))
            key = MovieKey(f"/data/{name}.tif", 10, i, "f")
            # the tilt in the row too, as admission records it (what status and the state count)
            db.add(key, metadata={"extra_record": {"tilt": body["tilt"]}} if i < 12 else None)
            db.claim(key)
            db.mark_done(key, outputs={"sum": str(folder / f"{name}.mrc"),
                                       "motion": str(motion)}, timings={}, summary={})
        db.set_series_state("TS_01", {"status": "complete", "expected_tilts": 12,
                                      "mdoc": "/data/TS_01.mrc.mdoc"})
    endpoint = f"ipc://{tmp_path}/feed.ipc"
    publisher = Publisher(PublishConfig(endpoint=endpoint)).start()
    listener = PublishListener(publisher)
    try:
        listener.on_ready(ServiceInfo(watch_dir=tmp_path, out_dir=out, state_dir=out, gain=None,
                                      pid=1, discovery_mode="inotify", discovery_reason="",
                                      recovered=0))
        with Subscriber(endpoint, topics=("state",)) as late:
            message = late.receive(10)
    finally:
        listener.close()
    assert message is not None and message[0] == "state"
    state = message[1]
    assert state["out_dir"] == str(out)
    (series,) = state["series"]
    assert series["series"] == "TS_01" and series["status"] == "completed"
    assert series["n_done"] == 12 and series["n_expected"] == 12
    assert series["accumulated_dose_e_A2"] == 36.0  # 3 e/Å² each, the twelfth after 33
    assert [t["name"] for t in series["tilts"]] == [f"TS_01_{i:03d}.tif" for i in range(12)]
    assert [m["name"] for m in state["movies"]] == [f"loose_{i:03d}.tif" for i in range(12, 19)]
    view = MonitorState(endpoint)
    view.apply("state", state, received_at=time.time())
    console = Console(width=160, record=True)
    console.print(render(view, time.time()))
    screen = console.export_text()
    assert "no movies yet" not in screen
    assert "TS_01_011.tif" in screen and "loose_018.tif" in screen


def test_monitor_and_dashboard_refuse_an_endpoint_without_its_transport_in_one_line(capsys):
    """``127.0.0.1:5557`` typed without ``tcp://``: the monitor printed a ZeroMQ traceback,
    the dashboard served a page that waited for ever."""
    import pytest

    from daemon.commands.cli import main

    for argv in (["monitor", "127.0.0.1:5557", "--once"],
                 ["dashboard", "--feed", "127.0.0.1:5557", "--out", "."]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert "endpoint '127.0.0.1:5557' is not transport://address" in err.splitlines()[-1]


def _menv(body, seq, session="a" * 32):
    return {"schema": "motionwatch/1", "seq": seq, "time": "2026-11-25T23:10:00.000Z",
            "host": "em-pc", "session": session, **body}


def test_a_late_lower_seq_does_not_make_the_next_message_count_as_missed():
    state = MonitorState("ipc:///x")
    state.apply("heartbeat", _menv({"interval_s": 5}, 5), 0.0)
    state.apply("heartbeat", _menv({"interval_s": 5}, 3), 0.5)  # late (a state answer, say)
    state.apply("heartbeat", _menv({"interval_s": 5}, 6), 1.0)
    assert state.missed == 0 and state.last_seq == 6


def test_a_state_snapshots_older_heartbeat_does_not_replace_the_newer_one():
    state = MonitorState("ipc:///x")
    state.apply("heartbeat", _menv({"interval_s": 5, "done": 9, "version": "2.0"}, 10), 0.0)
    old = {"seq": 4, "interval_s": 5, "done": 3, "version": "1.0",
           "time": "2026-11-25T23:09:00.000Z"}
    state.apply("state", _menv({"series": [], "movies": [], "warnings": [], "errors": [],
                                "heartbeat": old}, 11), 1.0)
    assert state.heartbeat["done"] == 9 and state.heartbeat_at == 0.0


def _connect_problem_as_nobody(endpoint: str) -> str | None:
    """:func:`ipc_connect_problem` asked by the account ``nobody`` (a forked child that drops
    root, which ignores a socket's permissions; the interpreter is not readable by others)."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(writer, repr(ipc_connect_problem(endpoint)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        said = pipe.read()
    os.waitpid(child, 0)
    return None if said == "None" else said.strip("'\"")


def test_a_subscriber_refused_by_the_feed_socket_is_told_so_not_asked_if_the_daemon_runs():
    """The units make the feed's socket group-writable; a user outside that group was refused
    in silence by ZeroMQ's retries, and ``monitor --once`` asked "is the daemon running?"
    of a daemon that ran. The probe names the socket and its group."""
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    endpoint = f"ipc://{folder}/feed"
    try:
        folder.chmod(0o755)
        with Publisher(PublishConfig(endpoint=endpoint)):
            (folder / "feed").chmod(0o750)
            assert ipc_connect_problem(endpoint) is None  # its owner connects
            if os.geteuid() == 0:
                said = _connect_problem_as_nobody(endpoint)
            else:
                (folder / "feed").chmod(0o000)
                said = ipc_connect_problem(endpoint)
            group = grp.getgrgid((folder / "feed").stat().st_gid).gr_name
            assert said == (f"this account may not connect to {folder}/feed (permission denied)"
                            f": its group {group} may; ask to be added to it")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # left by a killed daemon
        stale.bind(str(folder / "stale"))
        try:
            assert ipc_connect_problem(f"ipc://{folder}/stale") == \
                f"nothing listens on {folder}/stale: the daemon that made it has stopped"
        finally:
            stale.close()
        assert ipc_connect_problem("tcp://127.0.0.1:5557") is None  # only ipc is probed
    finally:
        shutil.rmtree(folder, ignore_errors=True)
