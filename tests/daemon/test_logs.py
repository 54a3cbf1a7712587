"""Logging: JSON lines off a terminal, journald priority prefixes under systemd."""

import io
import json
import os

import structlog

from daemon.system.logs import configure_logging, get_logger, running_under_journald


def test_json_lines_carry_the_movie_path_and_level():
    out = io.StringIO()
    configure_logging(stream=out, journald=False)
    get_logger(movie="/d/a.mrc").warning("movie_failed", reason="x")
    line = json.loads(out.getvalue())
    assert (line["event"], line["movie"], line["level"]) == ("movie_failed", "/d/a.mrc", "warning")
    structlog.reset_defaults()


def test_under_journald_every_line_starts_with_its_priority():
    out = io.StringIO()
    configure_logging(stream=out, journald=True)
    log = get_logger()
    log.error("e")
    log.warning("w")
    log.info("i")
    prefixes = [line[:3] for line in out.getvalue().splitlines()]
    assert prefixes == ["<3>", "<4>", "<6>"]
    assert json.loads(out.getvalue().splitlines()[0][3:])["event"] == "e"
    structlog.reset_defaults()


def test_journald_is_detected_from_journal_stream_naming_the_stream_written(tmp_path):
    """systemd sets ``JOURNAL_STREAM`` to the journal stream's ``device:inode``; a terminal
    of a user service inherits the variable but writes elsewhere (its refusals went unsaid
    on stderr, and its log lines took ``<N>`` prefixes)."""
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert running_under_journald(journal, streams=(stream.fileno(),))
        with open(tmp_path / "terminal", "w") as terminal:
            assert not running_under_journald(journal, streams=(terminal.fileno(),))
    assert not running_under_journald({})
    assert not running_under_journald({"JOURNAL_STREAM": "garbage"})


def test_debug_events_are_filtered_at_info_level():
    out = io.StringIO()
    configure_logging(stream=out, level="info", journald=False)
    get_logger().debug("hidden")
    assert out.getvalue() == ""
    structlog.reset_defaults()


def test_a_tiff_still_being_written_leaves_no_raw_tifffile_lines_in_the_daemon_log(
        tmp_path, caplog):
    import logging

    import numpy as np
    import pytest
    import tifffile

    from correction.errors import TruncatedMovieError
    from correction.io.tiff import read_tiff

    tifffile.imwrite(tmp_path / "full.tif", np.zeros((4, 64, 64), np.uint16),
                     photometric="minisblack")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "growing.tif").write_bytes(data[:len(data) // 2])
    caplog.set_level(logging.WARNING)  # without a handler, Python prints these raw on stderr
    configure_logging(stream=io.StringIO(), journald=False)
    with pytest.raises(TruncatedMovieError):
        read_tiff(tmp_path / "growing.tif")
    structlog.reset_defaults()
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_a_workers_correction_warnings_stay_off_its_stderr_and_others_still_show():
    """Each is in the movie's record and logged from it as a JSON event; raw on a worker's
    stderr they reached the journal at info, two lines per movie, not JSON."""
    import subprocess
    import sys

    script = (
        "import sys, warnings, numpy as np\n"
        "from daemon.system.logs import quiet_correction_warnings\n"
        "if sys.argv[1] == 'quiet': quiet_correction_warnings()\n"
        "from correction.params import AlignParams, CorrectionParams, DoseParams\n"
        "from correction.pipeline import correct_frames\n"
        "frames = np.random.default_rng(0).poisson(2.0, (4, 64, 64)).astype(np.int16)\n"
        "params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),\n"
        "                          align=AlignParams(patches_x=1, patches_y=1, group_frames=8))\n"
        "correct_frames(frames, pixel_size_A=1.1, params=params)\n"
        "warnings.warn('a library of another name speaks')\n")
    said = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                                 text=True, check=True).stderr for mode in ("loud", "quiet")}
    assert "4 frames in one group of 8" in said["loud"]
    assert "group" not in said["quiet"] and "a library of another name speaks" in said["quiet"]


def test_the_start_and_stop_lines_count_each_movie_once_as_status_does(tmp_path):
    """A movie redone under new parameters has a row per version: service_ready and
    service_stopped counted rows ({'done': 2} for one movie) where status and the heartbeat
    say movies ({'done': 1})."""
    import numpy as np
    from recording_log import RecordingLog
    from service_run import run_until_idle

    from correction.params import CorrectionParams, DoseParams
    from daemon.engine.service import Service
    from daemon.events import NoMetadata
    from daemon.settings.config import Config
    from daemon.simulation.movies import write_movie_progressively

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    frames = np.random.default_rng(3).poisson(2.0, (4, 64, 64)).astype(np.int16)
    write_movie_progressively(watch / "m.mrc", frames, pixel_size_A=1.1, frame_interval_s=0)
    for dose in (1.0, 2.0):  # the second run redoes it under the new dose
        config = Config(watch, out, out,
                        CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose)),
                        settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.05,
                        exit_when_idle_s=0.6, polling="on")
        log = RecordingLog()
        run_until_idle(Service(config, resolver=NoMetadata(), logger=log))
    (stopped,) = [fields for _, event, fields in log.events if event == "service_stopped"]
    assert stopped["counts"]["done"] == 1
    (ready,) = [fields for _, event, fields in log.events if event == "service_ready"]
    assert ready["counts"]["done"] == 1
