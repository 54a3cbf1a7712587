"""The service's pace: whether it keeps up, by the work waiting in minutes at the rate it
corrects, and the rates of acquisition and correction over the same span. The cases an audit
found the last-ten-minutes rates alone got wrong (a session starting, or restarting, onto more
than it corrects; old modification times; a slow steady overload; a burst; a lunch break)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from service_run import empty_session  # tests/helpers

from daemon.commands.cli import main
from daemon.engine.pace import MAX_BEHIND_MIN, PaceMeter
from daemon.state.ledger import Ledger

START = 1_000_000.0


def _meter() -> PaceMeter:
    return PaceMeter(START, window_s=600.0)


def test_a_session_starting_onto_more_than_it_corrects_falls_behind_within_minutes():
    """48 acquired a minute, 18 corrected: the rates of the last ten minutes said 'keeping up'
    for the first 4.5 minutes (acquisitions over 10 minutes, corrections over the uptime)."""
    meter = _meter()
    for k in range(int(48 * 3)):  # three minutes of acquisition, seen as written
        meter.arrived(START + k * 60 / 48, START + k * 60 / 48,
                      on_disk_at_start=False)
    for k in range(18 * 3):
        meter.corrected(START + 1 + k * 60 / 18)  # 1-177.7 s: within the span, before now
    pace = meter.pace(START + 180.0, waiting=48 * 3 - 18 * 3 + 10)
    assert pace.arrived_per_min == pytest.approx(48.0, rel=0.02)
    assert pace.corrected_per_min == pytest.approx(18.0, rel=0.02)
    assert pace.behind_min == pytest.approx(100 / 18.0) and pace.keeping_up is False


def test_a_restart_or_a_copy_with_old_modification_times_is_judged_by_its_backlog():
    """After a restart the backlog in the database was no arrival, and a copy delivering
    movies with mtimes over ten minutes old counted none: 'keeping up' with 80 waiting."""
    meter = _meter()
    for k in range(40):  # on disk at the start, recorded an hour ago: not acquisitions
        meter.arrived(START - 3600 + k, START + 1, on_disk_at_start=True)
    for k in range(120):  # copied in now, with the acquisition's old mtimes: seen now
        meter.arrived(START - 720 + k, START + 60 + k, on_disk_at_start=False)
    for k in range(40):
        meter.corrected(START + 10 + 4.5 * k)
    pace = meter.pace(START + 180.0, waiting=120)
    assert pace.arrived_per_min == pytest.approx(40.0)  # 120 seen in the 3 minutes run
    assert pace.behind_min == pytest.approx(120 / pace.corrected_per_min)
    assert pace.keeping_up is False


def test_a_slow_steady_overload_falls_behind_once_five_minutes_of_work_wait():
    """11 acquired a minute for 10 corrected kept 'keeping up' (within 90 %) for a whole night
    while the backlog grew 60 an hour."""
    meter = _meter()
    now = START + 3600.0
    for k in range(110):
        meter.arrived(now - 600 + k * 600 / 110, now - 600 + k * 600 / 110,
                      on_disk_at_start=False)
    for k in range(100):
        meter.corrected(now - 600 + k * 6.0 + 3)
    assert meter.pace(now, waiting=45).keeping_up is True   # 4.5 minutes of work
    late = meter.pace(now, waiting=60)                       # an hour on: 6 minutes
    assert late.behind_min == pytest.approx(6.0) and late.keeping_up is False
    assert MAX_BEHIND_MIN == 5.0


def test_a_lunch_break_keeps_up_once_what_waits_is_under_five_minutes_of_work():
    """Acquisition stopped: the last ten minutes' rates still said 'FALLING BEHIND' for five
    minutes while the backlog fell."""
    meter = _meter()
    now = START + 3600.0
    for k in range(450):  # 45 a minute until five minutes ago
        meter.arrived(now - 900 + k * 600 / 450, now - 900 + k * 600 / 450,
                      on_disk_at_start=False)
    for k in range(180):
        meter.corrected(now - 600 + k * 600 / 180)
    pace = meter.pace(now, waiting=40)
    assert pace.corrected_per_min < 0.9 * pace.arrived_per_min  # the old rule: falling behind
    assert pace.behind_min == pytest.approx(40 / pace.corrected_per_min) and pace.keeping_up


def test_movies_waiting_with_none_corrected_lately_is_falling_behind_and_nothing_waiting_keeps_up():
    meter = _meter()
    stalled = meter.pace(START + 300.0, waiting=3)
    assert stalled.behind_min is None and stalled.keeping_up is False
    idle = meter.pace(START + 300.0, waiting=0)
    assert idle.behind_min == 0.0 and idle.keeping_up is True


def test_no_verdict_before_a_minute_of_running_and_old_events_leave_the_window():
    meter = _meter()
    meter.arrived(START - 10, START + 10, on_disk_at_start=False)
    meter.corrected(START + 20.0)
    early = meter.pace(START + 30.0, waiting=5)
    assert early.corrected_per_min is None and early.keeping_up is None
    later = meter.pace(START + 2000.0, waiting=0)  # both events are older than the window now
    assert later.to_record() == {"arrived_per_min": 0.0, "corrected_per_min": 0.0,
                                 "waiting": 0, "behind_min": 0.0, "keeping_up": True,
                                 "window_s": 600.0, "span_s": 600.0}


def test_status_says_whether_the_running_daemon_keeps_up_and_a_stopped_ones_pace_is_gone(
        tmp_path, capsys):
    pace = {"arrived_per_min": 6.0, "corrected_per_min": 4.5, "waiting": 36, "behind_min": 8.0,
            "keeping_up": False, "window_s": 600.0}
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"pid": 1, "heartbeat_wall": time.time(), "healthy": True,
                              "problems": [], "discovery": "inotify", "waiting": 0,
                              "pace": pace})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert ("pace: FALLING BEHIND: 36 waiting, 8.0 min of work (6.0 movies/min acquired, 4.5 "
            "corrected, last 10 min)") in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["pace"]["keeping_up"] is False
    with Ledger(tmp_path / "motionwatch.sqlite") as db:  # its heartbeat long gone
        db.set_service_state({"pid": 1, "heartbeat_wall": time.time() - 3600, "pace": pace})
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["pace"] is None


def test_a_stopped_daemon_is_not_healthy_whatever_its_last_heartbeat_said(tmp_path, capsys):
    """A monitoring script reading ``healthy`` took a daemon killed in the night for a well
    one: the field was its last heartbeat's."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"pid": 1, "heartbeat_wall": time.time() - 3600, "healthy": True,
                              "problems": ["disk full"], "discovery": "inotify"})
    assert main(["status", str(tmp_path), "--json"]) == 0
    daemon = json.loads(capsys.readouterr().out)["daemon"]
    assert daemon["running"] is False
    assert daemon["healthy"] is False and daemon["problems"] == []
    with Ledger(tmp_path / "motionwatch.sqlite") as db:  # beating now
        db.set_service_state({"pid": os.getpid(), "host": socket.gethostname(),
                              "heartbeat_wall": time.time(), "healthy": True, "problems": []})
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["healthy"] is True


def test_the_running_service_records_its_pace_and_logs_falling_behind_and_catching_up(
        tmp_path, monkeypatch):
    """The journal told nothing of the pace (the heartbeat is logged at debug): falling behind
    and catching up are now one line each."""
    import numpy as np
    from recording_log import RecordingLog
    from service_run import run_until_idle  # tests/helpers

    import daemon.engine.pace as pace_module
    from correction.params import CorrectionParams, DoseParams
    from correction.synthetic import render_movie
    from daemon.engine.service import Service
    from daemon.events import NoMetadata
    from daemon.settings.config import Config
    from daemon.simulation.movies import write_movie_progressively

    monkeypatch.setattr(pace_module, "_MIN_SPAN_S", 0.0)  # a verdict from the first beat
    monkeypatch.setattr(pace_module, "MAX_BEHIND_MIN", 1e-6)  # any wait is 'behind'
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        movie = render_movie(rng, shape_yx=(96, 96), n_frames=4, gain=None, n_hot_pixels=0,
                             pixel_size_A=1.1)
        write_movie_progressively(watch / f"m_{i}.mrc", movie.frames, pixel_size_A=1.1,
                                  frame_interval_s=0)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.05,
                    exit_when_idle_s=0.6, polling="on")
    log = RecordingLog()
    run_until_idle(Service(config, resolver=NoMetadata(), logger=log))
    with Ledger(out / "motionwatch.sqlite") as db:
        pace = db.service_state()["pace"]
    assert pace["waiting"] == 0 and pace["keeping_up"] is True and pace["behind_min"] == 0.0
    events = [e for _, e, _ in log.events if e in ("falling_behind", "keeping_up_again")]
    assert events[-1:] == ["keeping_up_again"] and events.count("falling_behind") <= 1


def test_a_backlog_on_disk_when_the_service_starts_is_no_burst_of_acquisitions(
        tmp_path, monkeypatch):
    """Six movies recorded an hour before the start: they are dated by their modification
    times, outside the window, so nothing was acquired lately. The start-up scan admits none of
    them (a file settles over two scans), and every one was dated by when it was admitted: a
    burst of six acquisitions after each restart."""
    import os

    import numpy as np
    from recording_log import RecordingLog
    from service_run import run_until_idle

    import daemon.engine.pace as pace_module
    from correction.params import CorrectionParams, DoseParams
    from daemon.engine.service import Service
    from daemon.events import NoMetadata
    from daemon.settings.config import Config
    from daemon.simulation.movies import write_movie_progressively

    monkeypatch.setattr(pace_module, "_MIN_SPAN_S", 0.0)  # rates from the first beat
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    hour_ago = time.time() - 3600
    for i in range(6):
        frames = np.random.default_rng(i).poisson(2.0, (4, 64, 64)).astype(np.int16)
        write_movie_progressively(watch / f"m_{i}.mrc", frames, pixel_size_A=1.1,
                                  frame_interval_s=0)
        os.utime(watch / f"m_{i}.mrc", (hour_ago, hour_ago))
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.05,
                    exit_when_idle_s=0.6, polling="on")
    run_until_idle(Service(config, resolver=NoMetadata(), logger=RecordingLog()))
    with Ledger(out / "motionwatch.sqlite") as db:
        assert len(db.rows(status="done")) == 6
        pace = db.service_state()["pace"]
    assert pace["arrived_per_min"] == 0.0 and pace["corrected_per_min"] > 0


def test_the_log_says_caught_up_once_under_half_the_limit_not_at_each_crossing_of_it():
    """A backlog sitting at five minutes of work said falling_behind and keeping_up_again in
    turn (40 lines in ten minutes); 'paused' is the advice while correction is paused, not
    more workers."""
    from recording_log import RecordingLog

    from correction.params import CorrectionParams, DoseParams
    from daemon.engine.pace import Pace
    from daemon.engine.service import Service
    from daemon.settings.config import Config

    log = RecordingLog()
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    service = Service(Config(Path("/w"), Path("/o"), Path("/o"), params), logger=log)

    def beat(behind_min: float) -> None:
        service._say_pace(Pace(10.0, 10.0, int(10 * behind_min), behind_min,
                               behind_min <= MAX_BEHIND_MIN, 600.0, 600.0))

    for behind in (5.2, 4.9, 5.1, 4.8, 5.3, 4.0, 3.0, 5.4, 2.4, 5.1):
        beat(behind)
    said = [(e, f["behind_min"]) for _, e, f in log.events]
    assert said == [("falling_behind", 5.2), ("keeping_up_again", 2.4), ("falling_behind", 5.1)]
    assert "more --workers" in log.events[0][2]["note"]
    service.dispatcher.pause.failed("[Errno 28] No space left on device", 30.0)
    beat(2.0)
    beat(6.0)
    assert log.events[-1][1] == "falling_behind"
    assert "correction is paused ([Errno 28] No space left on device)" in log.events[-1][2]["note"]


def test_a_backlog_that_settles_under_the_limit_is_said_caught_up_once_it_has_lasted():
    """Behind, then a backlog between half the limit and the limit for good: the journal's
    last word stayed falling_behind all night while ``status`` said keeping up. It says
    keeping_up_again once that has lasted MAX_BEHIND_MIN minutes (a dip above the limit
    starts the count again)."""
    from recording_log import RecordingLog

    from correction.params import CorrectionParams, DoseParams
    from daemon.engine.pace import Pace
    from daemon.engine.service import Service
    from daemon.settings.config import Config

    now_s = [0.0]
    log = RecordingLog()
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    service = Service(Config(Path("/w"), Path("/o"), Path("/o"), params), logger=log,
                      clock=lambda: now_s[0])

    def beat(behind_min: float, at_min: float) -> None:
        now_s[0] = at_min * 60.0
        service._say_pace(Pace(10.0, 10.0, int(10 * behind_min), behind_min,
                               behind_min <= MAX_BEHIND_MIN, 600.0, 600.0))

    beat(6.0, 0.0)
    for minute, behind in enumerate((4.0, 4.5, 3.5, 5.5, 4.0, 4.2, 3.8, 4.1, 3.9, 4.0, 4.4), 1):
        beat(behind, minute)
    said = [(e, f["behind_min"]) for _, e, f in log.events]
    assert said == [("falling_behind", 6.0), ("keeping_up_again", 4.0)]  # minute 10: 5 after 5


def test_the_pace_phrase_names_the_span_the_rates_cover_the_uptime_when_shorter():
    from daemon.system.pace_text import pace_phrase

    pace = {"arrived_per_min": 5.0, "corrected_per_min": 5.0, "waiting": 0, "behind_min": 0.0,
            "keeping_up": True, "window_s": 600.0, "span_s": 120.0}
    assert pace_phrase(pace).endswith("(5.0 movies/min acquired, 5.0 corrected, last 2 min)")


def test_five_minutes_of_work_waiting_is_still_keeping_up():
    """Mutant P2 (pace.py:119, ``<``): the verdict is 'at most 5 minutes' (docs/zmq.md)."""
    from daemon.engine.pace import MAX_BEHIND_MIN, PaceMeter

    start = 1_000_000.0
    meter = PaceMeter(start, window_s=600.0)
    for k in range(100):  # 10 corrected a minute over the last 10 minutes
        meter.corrected(start + 1 + k * 6.0)
    pace = meter.pace(start + 600.0, waiting=50)
    assert pace.corrected_per_min == 10.0 and pace.behind_min == MAX_BEHIND_MIN == 5.0
    assert pace.keeping_up is True
    assert meter.pace(start + 600.0, waiting=51).keeping_up is False


def test_the_services_pace_is_counted_over_ten_minutes(tmp_path):
    """Mutant P5 (service.py:127, the service's PaceMeter window 600 -> 300 s): docs/zmq.md's
    heartbeat says window_s (600)."""
    from recording_log import RecordingLog

    from daemon.engine.service import Service
    from daemon.events import ServiceListener

    paces = []

    class Beats(ServiceListener):
        def on_heartbeat(self, beat):
            paces.append(beat.pace)

    service = Service(empty_session(tmp_path), listeners=[Beats()],
                      runner="fake_runners:correct", logger=RecordingLog())
    assert service.run() == 0
    assert paces and all(p["window_s"] == 600.0 for p in paces if p is not None)
    assert any(p is not None for p in paces)


def _heartbeats(meter, start_s, end_s, *, every_s=2.0, waiting=0):
    """Heartbeats every ``every_s`` seconds from ``start_s`` up to ``end_s``, with ``waiting``
    movies waiting and none running: the paces."""
    beats = []
    t = start_s
    while t < end_s:
        beats.append(meter.pace(t, waiting=waiting))
        t += every_s
    return beats


def test_a_burst_after_a_quiet_spell_is_judged_by_the_rate_it_corrects_while_it_has_work():
    """Twelve movies after a quiet quarter of an hour, corrected in 8 s: status said
    'FALLING BEHIND: 11 waiting' 2 s after they came (one corrected in ten minutes of mostly
    idle time: 100 minutes of work) and the journal logged falling_behind, then
    keeping_up_again. At the rate it corrects while it has work, it keeps up throughout."""
    meter = _meter()
    _heartbeats(meter, START, START + 900.0)
    burst = START + 900.5
    for _ in range(12):
        meter.arrived(burst, burst, on_disk_at_start=False)
    finished = [burst + 1.0 + 0.7 * k for k in range(12)]
    paces = []
    for beat in (burst + 1.5, burst + 3.5, burst + 5.5, burst + 7.5, burst + 9.5):
        for t in finished:
            if beat - 2.0 < t <= beat:
                meter.corrected(t)
        done = sum(t <= beat for t in finished)
        left = 12 - done
        paces.append(meter.pace(beat, waiting=max(left - 1, 0), running=min(left, 1)))
    assert [p.keeping_up for p in paces] == [True] * 5
    assert max(p.behind_min for p in paces) < 0.5  # minutes: seconds of work, not 100 minutes
    assert paces[0].corrected_per_min == pytest.approx(0.1)  # the rate over the span, as told


def test_movies_that_came_lately_with_none_corrected_yet_give_no_verdict_until_five_minutes():
    """Movies waiting for their first worker after a quiet spell: no verdict (status says it
    is starting on them), until they have waited five minutes of busy time with none done."""
    from daemon.system.pace_text import pace_phrase

    meter = _meter()
    _heartbeats(meter, START, START + 900.0)
    meter.arrived(START + 900.5, START + 900.5, on_disk_at_start=False)
    meter.arrived(START + 900.5, START + 900.5, on_disk_at_start=False)
    first = meter.pace(START + 901.0, waiting=1, running=1)
    assert first.keeping_up is None and first.behind_min is None
    assert pace_phrase(first.to_record()).startswith("starting on 1 waiting, none corrected yet")
    beats = _heartbeats(meter, START + 903.0, START + 900.5 + 301.0, waiting=2)
    assert all(b.keeping_up is None for b in beats[:-1]) and beats[-1].keeping_up is False
    assert pace_phrase(beats[-1].to_record()).startswith(
        "FALLING BEHIND: 2 waiting, none corrected lately")


def test_a_wall_clock_stepped_back_leaves_no_busy_time_after_now_to_subtract():
    """Busy slices after the clock stepped back 5 minutes were subtracted from the span's busy
    time (it went negative): 200 movies waiting at 2 corrected a minute said 'keeping up'."""
    meter = _meter()
    for i in range(0, 3600, 10):  # an hour of bursts: 3 movies every 2 minutes, done in 20 s
        t = START + i
        if i % 120 == 0:
            for _ in range(3):
                meter.arrived(t, t, on_disk_at_start=False)
        if i % 120 == 20:
            for _ in range(3):
                meter.corrected(t)
        meter.pace(t, waiting=3 if i % 120 < 20 else 0)
    stepped_back = START + 3590 - 300
    paces = []
    for j in range(0, 240, 10):  # a backlog now
        if j % 30 == 0:
            meter.corrected(stepped_back + j)
        paces.append(meter.pace(stepped_back + j, waiting=200, running=2))
    assert all(p.keeping_up is False for p in paces), [p.behind_min for p in paces]
    assert all(p.behind_min > 5.0 for p in paces)


def test_corrections_after_a_clock_stepped_back_are_not_counted_before_they_happened():
    """After the step back, corrections stamped after 'now' still counted: 200 waiting at one
    corrected every 12 s said 4.35 minutes of work, keeping up."""
    meter = _meter()
    _heartbeats(meter, START, START + 650.0)
    t = START + 650.0
    while t < START + 1200.0:
        if (t - START) % 12 < 2:
            meter.corrected(t)
        meter.pace(t, waiting=200, running=1)
        t += 2.0
    back = meter.pace(START + 700.0, waiting=200, running=1)
    assert back.keeping_up is False and back.behind_min > 30.0
