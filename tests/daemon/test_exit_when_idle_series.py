"""A run that ends when idle (``--exit-when-idle``: a batch run over a finished session) ends
with every series assembled from the tilts it has: one whose mdoc lists a tilt that never came
would otherwise wait for its idle timeout (30 minutes), and the run exited without its stacks."""

from __future__ import annotations

import mrcfile
import numpy as np
from recording_log import RecordingLog
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.simulation.tilt_series import simulate_tilt_series


def test_a_series_missing_a_listed_tilt_is_assembled_before_an_idle_run_ends(tmp_path):
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    tilts = simulate_tilt_series(watch, rng=np.random.default_rng(3), n_tilts=5,
                                 shape_yx=(64, 64), n_frames=4, pixel_size_A=1.1,
                                 frame_interval_s=0.0, tilt_interval_s=0.0, lock=False)
    lost = tilts[2].movie.path  # listed in the mdoc, never written (the PC lost it)
    lost.unlink()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()), settle_time_s=0.1,
                    scan_interval_s=0.05, heartbeat_s=0.2, polling="on", exit_when_idle_s=1.0,
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    log = RecordingLog()
    run_until_idle(Service(config, resolver=resolver_from_config(config), logger=log))
    assert len(log.named("movie_done")) == 4
    (completed,) = log.named("series_completed")
    assert "the run ended idle" in completed["reason"] and lost.name in completed["reason"]
    folder = out / completed["series"]
    with mrcfile.open(folder / f"{completed['series']}.mrc", header_only=True) as stack:
        assert int(stack.header.nz) == 4
    angles = (folder / f"{completed['series']}.tlt").read_text().split()
    assert sorted(float(a) for a in angles) == sorted(t.tilt_deg for t in tilts if
                                                      t.movie.path != lost)


def test_the_end_of_a_run_is_called_off_when_a_movie_finishes_after_it():
    """Once said, the run's end held: a tilt that came during the last idle wait had its
    series assembled at once, and again after every later tilt, as if the run were over."""
    from pathlib import Path

    from daemon.events import MovieEvent, MovieKey
    from daemon.series.lifecycle import SeriesState
    from daemon.series.resolution import SeriesConfig
    from daemon.series.resolver import TiltSeriesResolver

    resolver = TiltSeriesResolver(SeriesConfig(), mode="on")
    resolver._states["TS_01"] = SeriesState("TS_01")  # noqa: SLF001 - an open series
    assert resolver.end_of_run() is True  # assembled with what it has, then ...
    assert resolver.end_of_run() is False  # ... the run ends
    late = Path("/w/TS_01_009_27.0.mrc")
    resolver.movie_finished(MovieEvent(path=late, key=MovieKey(str(late), 1, 1, "f"),
                                       status="done", attempt=1))
    assert resolver.end_of_run() is True  # the run went on: its end is said again
