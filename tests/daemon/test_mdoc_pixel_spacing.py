"""A tilt whose pixel size is not its mdoc's: a pixel size given (or stored) for another
magnification is said (``pixel_size_differs_from_mdoc``), once per pair of values; frames
saved at twice or half the resolution of SerialEM's image (super-resolution, binned) are no
such case. Each tilt's record keeps the mdoc's ``PixelSpacing``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recording_log import RecordingLog
from series_session import N_FRAMES, PIXEL_A, SHAPE, copied_series
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.series.pixel_spacing import mdoc_pixel_size_warning
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config
from daemon.simulation.tilt_series import series_mdoc_text


def _run(watch: Path, out: Path) -> RecordingLog:
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=1.0, polling="on")
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.2), mode="on")
    log = RecordingLog()
    run_until_idle(Service(config, logger=log, resolver=resolver), guard_s=60.0)
    return log


@pytest.mark.parametrize("mdoc_pixel_A, said", [(0.9, True), (PIXEL_A, False),
                                                 (PIXEL_A / 2, False)])
def test_a_tilt_at_another_magnification_than_its_pixel_size_says_is_said_once(
        tmp_path, mdoc_pixel_A, said):
    """The movies' pixel size is 1.1 Å (their headers); the mdoc gives 0.9 Å (another
    magnification: said), 1.1 Å, or 0.55 Å (the movies binned by 2 against SerialEM's
    super-resolution image: agreed)."""
    watch, out, tilts = copied_series(tmp_path, seed=31)
    (watch / "TS_01.mrc.mdoc").write_text(series_mdoc_text(
        "TS_01", tilts, pixel_size_A=mdoc_pixel_A, shape_yx=SHAPE, n_frames=N_FRAMES,
        voltage_kV=300))
    log = _run(watch, out)
    assert len(log.named("movie_done")) == len(tilts)
    warned = log.named("pixel_size_differs_from_mdoc")
    assert len(warned) == int(said)  # the three tilts alike: said once
    if said:
        assert "1.1 Å, is not the 0.9 Å of its mdoc (PixelSpacing)" in warned[0]["reason"]
        assert warned[0]["series"] == "TS_01"
    for t in tilts:
        record = json.loads((out / f"{t.movie.path.stem}.motion.json").read_text())
        assert record["tilt"]["pixel_spacing_A"] == pytest.approx(mdoc_pixel_A)


def test_a_pixel_size_given_is_named_as_given_and_ratios_of_binning_agree():
    given = {"tilt": {"series": "TS_02", "pixel_spacing_A": 0.9},
             "movie_pixel_size": {"used_A": 1.5, "source": "given"}}
    (pair, line) = mdoc_pixel_size_warning(given)
    assert pair == (1.5, 0.9) and line.startswith("the pixel size given (--pixel-size")
    for used in (0.3, 0.6, 2.7):  # x 1/3, 2/3, 3: no power of two
        assert mdoc_pixel_size_warning({**given, "movie_pixel_size": {"used_A": used}})
    # the frames unbinned under a stack binned by 2, 4 or 8, super-resolution, binned
    for used in (0.1125, 0.225, 0.45, 0.9, 1.8, 3.6, 7.2, 0.905):
        assert mdoc_pixel_size_warning({**given, "movie_pixel_size": {"used_A": used}}) is None
    assert mdoc_pixel_size_warning({"movie_pixel_size": {"used_A": 1.5}}) is None  # no tilt
