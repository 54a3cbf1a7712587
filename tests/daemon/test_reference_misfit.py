"""A gain reference that fits no movie is a configuration error, not three bad movies.

Configuration errors fail fast: when the configured gain (dark, defects) fits none of the first
movies and none was corrected with it, the service stops with status 78 (EX_CONFIG: systemd does
not restart it) and the movies stay to be corrected after the restart with the right gain; they
were quarantined one by one before, as faults of the movies. Once a movie was corrected with the
gain, a movie it does not fit (another camera's file) is that movie's fault: quarantined alone.
"""

from __future__ import annotations

import mrcfile
import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams, GainParams
from daemon import exitcodes
from daemon.engine.service import Service
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively
from daemon.state.ledger import Ledger


def _movie(path, shape, seed, mtime_s):
    frames = np.random.default_rng(seed).poisson(2.0, (4, *shape)).astype(np.int16)
    write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0)
    import os
    os.utime(path, (mtime_s, mtime_s))  # oldest first is the order of correction


def _gain(path, shape):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ones(shape, np.float32))


def _run(watch, out, gain, log):
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=gain))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on", retry_delay_s=0.2)
    return Service(config, logger=log).run()


def _stopped_by_a_wrong_gain(tmp_path, *, n_movies=3, log=None):
    """Movies 64 x 96 and a gain 96 x 64 (a rotated K3-like gain without --gain-rotate): the
    first start stops (78); (watch, out)."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    for i in range(n_movies):
        _movie(watch / f"m{i}.mrc", (64, 96), i, 1_000_000 + i)
    _gain(tmp_path / "wrong.mrc", (96, 64))
    log = RecordingLog() if log is None else log
    assert _run(watch, out, tmp_path / "wrong.mrc", log) == exitcodes.CONFIG
    return watch, out


def _statuses(out):
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        return sorted((r.key.path.rsplit("/", 1)[-1], r.status) for r in ledger.rows())


def test_a_gain_that_fits_none_of_the_first_movies_stops_the_service_and_loses_none(tmp_path):
    log = RecordingLog()
    watch, out = _stopped_by_a_wrong_gain(tmp_path, n_movies=4, log=log)
    (problem,) = [f for level, e, f in log.events if e == "config_invalid"]
    assert "fit none of the first 3 movies" in problem["problems"][0]
    assert "96x64" in problem["problems"][0] or "96 x 64" in problem["problems"][0]
    assert not any(e == "movie_quarantined" for level, e, f in log.events)
    assert {s for _, s in _statuses(out)} <= {"failed", "pending"}
    _gain(tmp_path / "right.mrc", (64, 96))
    assert _run(watch, out, tmp_path / "right.mrc", RecordingLog()) == exitcodes.OK
    assert _statuses(out) == [(f"m{i}.mrc", "done") for i in range(4)]


def test_after_a_movie_fitted_the_gain_a_movie_it_does_not_fit_is_quarantined_alone(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    _movie(watch / "a.mrc", (64, 96), 1, 1_000_000)
    _movie(watch / "stray.mrc", (32, 32), 2, 1_000_001)  # another camera's file
    _movie(watch / "b.mrc", (64, 96), 3, 1_000_002)
    _gain(tmp_path / "gain.mrc", (64, 96))
    log = RecordingLog()
    assert _run(watch, out, tmp_path / "gain.mrc", log) == exitcodes.OK
    assert _statuses(out) == [("a.mrc", "done"), ("b.mrc", "done"), ("stray.mrc", "quarantined")]
    (quarantined,) = [f for level, e, f in log.events if e == "movie_quarantined"]
    assert quarantined["kind"] == "config" and "stray.mrc" in quarantined["reason"]


def test_movies_with_no_pixel_size_and_none_given_stop_the_service_and_lose_none(tmp_path):
    """TIFFs rarely carry a pixel size: without --pixel-size, every movie of the night was
    quarantined one by one while the daemon ran on. Like a gain that fits none, it is a
    configuration error once none of the first movies has one; the movies are kept."""
    from correction.params import ReadParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    for i in range(4):
        frames = np.random.default_rng(i).poisson(2.0, (4, 64, 96)).astype(np.int16)
        write_movie_progressively(watch / f"m{i}.mrc", frames, pixel_size_A=0.0,
                                  frame_interval_s=0)  # 0: the header knows none
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))

    def run(params, log):
        config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                        heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on",
                        retry_delay_s=0.2)
        return Service(config, logger=log).run()

    log = RecordingLog()
    assert run(params, log) == exitcodes.CONFIG
    (problem,) = [f for level, e, f in log.events if e == "config_invalid"]
    assert "fit none of the first 3 movies" in problem["problems"][0]
    assert "no pixel size" in problem["problems"][0] and "--pixel-size" in problem["note"]
    assert not any(e == "movie_quarantined" for level, e, f in log.events)
    given = CorrectionParams(dose=params.dose, read=ReadParams(pixel_size_A=1.1))
    assert run(given, RecordingLog()) == exitcodes.OK
    assert _statuses(out) == [(f"m{i}.mrc", "done") for i in range(4)]


def test_three_stray_movies_without_a_pixel_size_never_hold_back_the_movies_that_have_one(
        tmp_path):
    """The three oldest files have no pixel size (test exposures), the others 1.1 Å. The first
    start may stop on them (78: they fit none of the first movies); a restart retries them
    first, and they alone no longer stop it: the movies that have a pixel size are corrected
    (the stop came again at every restart, after at most one good movie)."""
    import os
    import time

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    now = time.time()
    for i in range(6):
        frames = np.random.default_rng(i).poisson(2.0, (4, 64, 96)).astype(np.int16)
        path = watch / f"m{i}.mrc"
        write_movie_progressively(path, frames, pixel_size_A=0.0 if i < 3 else 1.1,
                                  frame_interval_s=0)
        os.utime(path, (now - 600 + 10 * i, now - 600 + 10 * i))  # the stray ones oldest
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on", retry_delay_s=0.2)
    first = Service(config, logger=RecordingLog()).run()
    assert first in (exitcodes.CONFIG, exitcodes.OK)
    assert Service(config, logger=RecordingLog()).run() == exitcodes.OK
    statuses = dict(_statuses(out))
    assert [statuses[f"m{i}.mrc"] for i in range(3, 6)] == ["done"] * 3
    assert all(statuses[f"m{i}.mrc"] in ("failed", "quarantined") for i in range(3))


def test_a_restart_with_the_same_wrong_gain_stops_again_at_the_first_new_movie(tmp_path):
    """The retried misfits alone do not stop a restart, but a new movie the gain does not fit
    either does: a misconfiguration left as it was still stops the service (78)."""
    watch, out = _stopped_by_a_wrong_gain(tmp_path)
    _movie(watch / "m3.mrc", (64, 96), 3, 1_000_003)
    log = RecordingLog()
    assert _run(watch, out, tmp_path / "wrong.mrc", log) == exitcodes.CONFIG
    assert not any(e == "movie_quarantined" for level, e, f in log.events)
    assert {s for _, s in _statuses(out)} <= {"failed", "pending"}


def test_a_restart_with_the_same_wrong_gain_and_no_other_movie_stops_again_and_keeps_them(
        tmp_path):
    """Nothing new came, nothing was fixed: with no other movie waiting, the retried misfits
    stop the service again (78) and stay failed, rather than being quarantined one by one."""
    watch, out = _stopped_by_a_wrong_gain(tmp_path)
    log = RecordingLog()
    assert _run(watch, out, tmp_path / "wrong.mrc", log) == exitcodes.CONFIG
    assert not any(e == "movie_quarantined" for level, e, f in log.events)
    assert _statuses(out) == [(f"m{i}.mrc", "failed") for i in range(3)]


def test_a_throw_that_leaves_too_few_frames_of_the_first_movies_stops_the_service(tmp_path):
    """``--throw`` meant for 40-frame movies on a session of 4-frame ones: every movie of the
    night was quarantined one by one (kind ``data``) while the daemon ran on. Like a gain that
    fits none, it stops the service (78) once it fits none of the first movies; they are kept
    and corrected after the restart with a throw that fits."""
    from correction.params import ReadParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    for i in range(4):
        _movie(watch / f"m{i}.mrc", (64, 96), i, 1_000_000 + i)

    def run(throw, log):
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                                  read=ReadParams(throw_frames=throw))
        config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                        heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on",
                        retry_delay_s=0.2)
        return Service(config, logger=log).run()

    log = RecordingLog()
    assert run(3, log) == exitcodes.CONFIG
    (problem,) = [f for level, e, f in log.events if e == "config_invalid"]
    assert "fit none of the first 3 movies" in problem["problems"][0]
    assert "leave 1 of 4" in problem["problems"][0] and "--throw" in problem["note"]
    assert not any(e == "movie_quarantined" for level, e, f in log.events)
    assert run(1, RecordingLog()) == exitcodes.OK
    assert _statuses(out) == [(f"m{i}.mrc", "done") for i in range(4)]
