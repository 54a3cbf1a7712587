"""The service's pace: movies acquired (by their modification times) against movies corrected
(by the wall time they were recorded done) per minute, and whether it keeps up."""

from __future__ import annotations

import json
import time

import pytest

from daemon.commands.cli import main
from daemon.engine.pace import PaceMeter
from daemon.state.ledger import Ledger


def test_rates_count_the_last_ten_minutes_and_a_backlog_counts_at_its_recording_rate():
    start = 1_000_000.0
    meter = PaceMeter(start, window_s=600.0)
    for k in range(30):  # a backlog found at start-up: one movie every 20 s over 10 minutes
        meter.arrived(start - 600.0 + 20.0 * k + 10.0)
    for k in range(10):  # the first 300 s: one movie corrected every 30 s
        meter.corrected(start + 30.0 * (k + 1))
    pace = meter.pace(start + 300.0, pending=20)
    # acquired: the 15 movies of the last 600 s (mtimes after start - 300) -> 1.5 per minute
    assert pace.arrived_per_min == pytest.approx(1.5)
    # corrected over the 300 s the service has run: 10 -> 2.0 per minute
    assert pace.corrected_per_min == pytest.approx(2.0)
    assert pace.keeping_up is True


def test_falling_behind_needs_a_backlog_and_less_than_ninety_percent_of_the_acquisition_rate():
    start = 0.0
    meter = PaceMeter(start, window_s=600.0)
    for k in range(60):  # acquired: 6 per minute over the last 600 s
        meter.arrived(605.0 + 10.0 * k)
    for k in range(50):  # corrected: 5 per minute
        meter.corrected(1200.0 - 12.0 * k)
    behind = meter.pace(1200.0, pending=10)
    assert behind.arrived_per_min == pytest.approx(6.0)
    assert behind.corrected_per_min == pytest.approx(5.0)
    assert behind.keeping_up is False  # 5 < 0.9 x 6
    assert meter.pace(1200.0, pending=0).keeping_up is True  # nothing waits: keeping up


def test_no_verdict_before_a_minute_of_running_and_old_events_leave_the_window():
    meter = PaceMeter(100.0, window_s=600.0)
    meter.arrived(90.0)
    meter.corrected(120.0)
    early = meter.pace(130.0, pending=5)
    assert early.corrected_per_min is None and early.keeping_up is None
    later = meter.pace(2000.0, pending=0)  # both events are older than the window now
    assert later.arrived_per_min == 0.0 and later.corrected_per_min == 0.0
    assert later.to_record() == {"arrived_per_min": 0.0, "corrected_per_min": 0.0,
                                 "keeping_up": True, "window_s": 600.0}


def test_status_says_whether_the_running_daemon_keeps_up(tmp_path, capsys):
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"pid": 1, "heartbeat_wall": time.time(), "healthy": True,
                              "problems": [], "discovery": "inotify", "waiting": 0,
                              "pace": {"arrived_per_min": 6.0, "corrected_per_min": 4.5,
                                       "keeping_up": False, "window_s": 600.0}})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "pace: FALLING BEHIND: 6.0 movies/min acquired, 4.5 corrected (last 10 min)" in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["pace"]["keeping_up"] is False


def test_the_running_service_records_its_pace_with_every_heartbeat(tmp_path):
    """Two movies written just now: the heartbeat's state holds 2 acquired in the last 10
    minutes (0.2 per minute); a run shorter than a minute gives no corrected rate yet."""
    import numpy as np
    from service_run import run_until_idle  # tests/helpers

    from correction.params import CorrectionParams, DoseParams
    from correction.synthetic import render_movie
    from daemon.engine.service import Service
    from daemon.events import NoMetadata
    from daemon.settings.config import Config
    from daemon.simulation.movies import write_movie_progressively

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(4)
    for i in range(2):
        movie = render_movie(rng, shape_yx=(96, 96), n_frames=4, gain=None, n_hot_pixels=0,
                             pixel_size_A=1.0)
        write_movie_progressively(watch / f"m_{i}.mrc", movie.frames, pixel_size_A=1.0,
                                  frame_interval_s=0)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                    exit_when_idle_s=0.6, polling="on")
    run_until_idle(Service(config, resolver=NoMetadata()))
    with Ledger(out / "motionwatch.sqlite") as db:
        pace = db.service_state()["pace"]
    assert pace["arrived_per_min"] == pytest.approx(0.2)
    assert pace["corrected_per_min"] is None and pace["keeping_up"] is None
