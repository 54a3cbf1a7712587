"""A series mdoc written after its tilts, as Thermo Fisher's Tomography 5 writes
``Position_1.mdoc`` when the series ends (Murfey's tests: the mdoc "completes this position").

Until it comes, the tilts are corrected from their file names (series, angle, order) with the
configured dose, or quarantined when no dose is configured; when it comes, each tilt whose
record it contradicts is corrected again under its metadata, and the series is assembled. Two
ways this used to go wrong, both tested here on real daemon runs:

- a tilt whose dose did not move (the configured dose per tilt equal to the mdoc's) kept its
  key, so it was flagged as changed at every scan and never redone: its series was never
  assembled;
- a tilt quarantined for want of a dose stayed quarantined while the daemon ran, and its series
  was assembled without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from recording_log import RecordingLog
from service_run import running

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.series.resolution import TILT_NO_DOSE_REASON, SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config
from daemon.simulation.tilt_series import series_mdoc_text, simulate_tilt_series
from daemon.state.ledger import Ledger

SHAPE, N_FRAMES, PIXEL_A, N_TILTS = (64, 64), 4, 1.1, 4


def _tomo5_series(tmp_path: Path, *, dose_growth: float):
    """Tilts of ``Position_1`` rendered in a staging folder and renamed as Tomography 5 names
    them (``Position_1_002_3.00_<date>_<time>_Fractions.mrc``): (watch, out, tilts)."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, out, staging):
        folder.mkdir()
    rendered = simulate_tilt_series(staging, rng=np.random.default_rng(5), name="Position_1",
                                    n_tilts=N_TILTS, shape_yx=SHAPE, n_frames=N_FRAMES,
                                    pixel_size_A=PIXEL_A, frame_interval_s=0, tilt_interval_s=0,
                                    lock=False, dose_growth=dose_growth, sleep=lambda s: None)
    tilts = []
    for t in rendered:
        name = (f"Position_1_{t.acquisition_index + 1:03d}_{t.tilt_deg:.2f}_20260101_"
                f"09{t.acquisition_index:02d}00_Fractions.mrc")
        shutil.copy2(t.movie.path, watch / name)
        tilts.append(dataclasses.replace(t, movie=dataclasses.replace(t.movie,
                                                                      path=watch / name)))
    return watch, out, tilts


def _write_tomo5_mdoc(watch: Path, tilts) -> None:
    (watch / "Position_1.mdoc").write_text(series_mdoc_text(
        "Position_1", tilts, pixel_size_A=PIXEL_A, shape_yx=SHAPE, n_frames=N_FRAMES))


@contextlib.contextmanager
def _daemon(watch: Path, out: Path, dose: DoseParams, series: SeriesConfig, mode: str = "auto"):
    """The daemon running in a thread (real correction), stopped on leaving: yields its log
    and ``wait_for(condition, timeout_s)``."""
    config = Config(watch, out, out, CorrectionParams(dose=dose), settle_time_s=0.1,
                    scan_interval_s=0.05, incomplete_grace_s=2.0, heartbeat_s=0.2,
                    polling="on")
    log = RecordingLog()
    service = Service(config, logger=log, resolver=TiltSeriesResolver(series, mode=mode))
    with running(service, timeout_s=120) as wait_for:
        yield log, wait_for


def _finished(log: RecordingLog) -> int:
    return len(log.named("movie_done")) + len(log.named("movie_quarantined"))


def _newest_rows(out: Path) -> dict[str, object]:
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        return {Path(r.key.path).name: r for r in ledger.rows() if r.key.size >= 0}


def _assert_done_with_true_doses_and_assembled(out: Path, tilts) -> None:
    """Every tilt corrected with its rendered dose and pre-exposure; the series assembled."""
    rows = _newest_rows(out)
    for t in tilts:
        row = rows[t.movie.path.name]
        assert row.status == "done"
        tilt = row.metadata["extra_record"]["tilt"]
        assert abs(tilt["dose_e_A2"] - t.dose_e_A2) < 0.01
        assert abs(tilt["pre_exposure_e_A2"] - t.pre_exposure_e_A2) < 0.01
    assert len((out / "Position_1" / "Position_1.tlt").read_text().split()) == N_TILTS


def test_tilts_corrected_by_name_at_the_mdocs_own_dose_are_recorded_anew_and_assembled(
        tmp_path):
    """The configured dose per tilt is the mdoc's (every tilt 3.31 e/Å²), so the mdoc moves no
    dose and no pre-exposure: only the tilt records (file name -> series mdoc). Each tilt is
    corrected once more under its mdoc record, and the series is assembled."""
    watch, out, tilts = _tomo5_series(tmp_path, dose_growth=0.0)
    doses = {round(t.dose_e_A2, 6) for t in tilts}
    assert len(doses) == 1
    series = SeriesConfig(dose_per_tilt_e_A2=tilts[0].dose_e_A2, metadata_wait_s=0.5,
                          mdoc_quiet_s=0.3)
    with _daemon(watch, out, DoseParams(dose_per_frame_e_A2=1.0), series) as (log, wait_for):
        wait_for(lambda: _finished(log) >= N_TILTS, 60)
        assert {r.metadata["extra_record"]["tilt"]["match_source"]
                for r in _newest_rows(out).values()} == {"filename"}
        _write_tomo5_mdoc(watch, tilts)
        wait_for(lambda: bool(log.named("series_completed")), 60)
    assert [f["series"] for f in log.named("series_completed")] == ["Position_1"]
    assert [f["series"] for f in log.named("series_mdoc_after_tilts")] == ["Position_1"]
    started = Counter(Path(f["movie"]).name for f in log.named("movie_started"))
    assert sorted(started.values()) == [2] * N_TILTS
    rows = _newest_rows(out)
    for t in tilts:
        tilt = rows[t.movie.path.name].metadata["extra_record"]["tilt"]
        assert tilt["match_source"] == "series_mdoc"
        assert abs(tilt["pre_exposure_e_A2"] - t.pre_exposure_e_A2) < 0.01
    assert (out / "Position_1" / "Position_1.tlt").read_text().split() == [
        f"{a:.2f}" for a in sorted(t.tilt_deg for t in tilts)]


def test_tilts_quarantined_for_want_of_a_dose_are_corrected_when_their_series_mdoc_comes(
        tmp_path):
    """No dose configured: the tilts, corrected as single movies before any series mdoc was
    seen, are quarantined (no dose). The mdoc gives their doses: each is corrected with its own
    dose and pre-exposure, and the series is assembled with every tilt."""
    watch, out, tilts = _tomo5_series(tmp_path, dose_growth=0.1)
    series = SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.3)
    with _daemon(watch, out, DoseParams(), series) as (log, wait_for):
        wait_for(lambda: len(log.named("movie_quarantined")) >= N_TILTS, 60)
        assert {r.status for r in _newest_rows(out).values()} == {"quarantined"}
        _write_tomo5_mdoc(watch, tilts)
        wait_for(lambda: bool(log.named("series_completed")), 60)
    assert [f["series"] for f in log.named("series_completed")] == ["Position_1"]
    assert [f["series"] for f in log.named("series_mdoc_after_tilts")] == ["Position_1"]
    # said as what happened: they were never corrected ("its metadata changed after
    # correction: redone" before)
    notes = {f["note"] for f in log.named("movie_redo_metadata_changed")}
    assert notes == {"quarantined for want of a dose: corrected now with the one its metadata "
                     "gives"}
    _assert_done_with_true_doses_and_assembled(out, tilts)


def test_tilts_of_a_position_whose_mdoc_never_comes_are_quarantined_once_it_is_idle(tmp_path):
    """``tilt_series = "on"`` without a dose per tilt (the README's advice for Tomography 5):
    tilts wait for their mdoc. A position aborted before its mdoc was written no longer holds
    them for ever: once it is idle (``idle_timeout_s``) they are quarantined with the reason,
    which status lists and ``motionwatch retry`` lifts; if the mdoc comes after all, each is
    corrected with its dose and pre-exposure and the series is assembled. Before, they waited
    without end."""
    watch, out, tilts = _tomo5_series(tmp_path, dose_growth=0.1)
    series = SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.3, idle_timeout_s=2.0)
    with _daemon(watch, out, DoseParams(), series, mode="on") as (log, wait_for):
        wait_for(lambda: len(log.named("movie_quarantined")) >= N_TILTS, 60)
        rows = _newest_rows(out)
        assert {r.status for r in rows.values()} == {"quarantined"} and len(rows) == N_TILTS
        assert all(TILT_NO_DOSE_REASON in r.error and "idle for 2 s" in r.error
                   for r in rows.values())
        assert not log.named("movie_started")
        _write_tomo5_mdoc(watch, tilts)
        wait_for(lambda: bool(log.named("series_completed")), 60)
    _assert_done_with_true_doses_and_assembled(out, tilts)


def test_a_series_begun_from_the_tilts_names_before_their_mdoc_is_not_listed_once_it_came(
        tmp_path, capsys):
    """Tomography 5 puts the tilts into ``Position_1/`` and writes ``Position_1.mdoc`` beside
    that folder at the end. While the tilts waited, a series named from their file names,
    ``Position_1/Position_1``, was begun and stored; it never had a tilt, yet status listed
    it as open (0 tilts) for good, after restarts too. Now it is dropped once its movies are
    the mdoc's series' tilts."""
    import json

    from daemon.commands.cli import main

    watch, out, tilts = _tomo5_series(tmp_path, dose_growth=0.1)
    (watch / "Position_1").mkdir()
    moved = []
    for t in tilts:
        path = watch / "Position_1" / t.movie.path.name
        t.movie.path.rename(path)
        moved.append(dataclasses.replace(t, movie=dataclasses.replace(t.movie, path=path)))
    series = SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.3)
    with _daemon(watch, out, DoseParams(), series, mode="on") as (log, wait_for):
        wait_for(lambda: bool(log.named("series_started")), 60)
        (watch / "Position_1.mdoc").write_text(series_mdoc_text(
            "Position_1", moved, pixel_size_A=PIXEL_A, shape_yx=SHAPE, n_frames=N_FRAMES,
            frames_folder=r"X:\Position_1"))
        wait_for(lambda: bool(log.named("series_completed")), 60)
    assert [f["series"] for f in log.named("series_started")] == ["Position_1/Position_1",
                                                                  "Position_1"]
    assert [f["series"] for f in log.named("series_dropped")] == ["Position_1/Position_1"]
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["series"]
    assert [(s["series"], s["status"], s["tilts_done"]) for s in listed] == [
        ("Position_1", "completed", N_TILTS)]
