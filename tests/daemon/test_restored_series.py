"""After a restart, the live views learn a tilt series' figures from the state database: its
tilts done and failed and the dose reached, of all its movies, as ``motionwatch status`` and
the live feed count them (before, of the 200 movies restored only, and never a failure)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.commands.cli import main
from daemon.engine.service import Service
from daemon.feed.listener import restored_state
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.simulation.tilt_series import simulate_tilt_series
from daemon.state.ledger import DB_NAME


def test_a_restored_series_has_every_tilt_done_its_failures_and_its_dose(tmp_path, capsys):
    """Its dose is what its mdoc says the specimen received, as the live feed said it: the
    last tilt, quarantined as a file, irradiated the specimen all the same (before, status and
    the restored feed gave the largest dose a corrected tilt reached: the dose dropped at a
    restart)."""
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    tilts = simulate_tilt_series(watch, rng=np.random.default_rng(3), n_tilts=4,
                                 shape_yx=(64, 64), n_frames=4, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False)
    bad = [tilts[1], tilts[-1]]  # a transfer's garbage: quarantined before they are tilts
    for tilt in bad:
        cut = Path(tilt.movie.path)
        cut.write_bytes(os.urandom(cut.stat().st_size))
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()), settle_time_s=0.1,
                    scan_interval_s=0.05, heartbeat_s=0.2, exit_when_idle_s=0.8,
                    incomplete_grace_s=0.5, polling="on",
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    run_until_idle(Service(config, resolver=resolver_from_config(config)))

    received = tilts[-1].pre_exposure_e_A2 + tilts[-1].dose_e_A2  # acquisition order
    assert received > max(t.pre_exposure_e_A2 + t.dose_e_A2 for t in tilts if t not in bad)
    capsys.readouterr()  # the service's log
    assert main(["status", str(out), "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)["series"]
    assert (status["tilts_done"], status["tilts_failed"]) == (2, 2)
    assert status["accumulated_dose_e_A2"] == pytest.approx(received, abs=1e-3)
    for limit in (200, 1):  # however few movies the restored state carries
        _, (series,), errors, _ = restored_state(out / DB_NAME, out_dir=out, limit=limit)
        assert (series["n_done"], series["n_failed"]) == (2, 2)
        assert series["accumulated_dose_e_A2"] == pytest.approx(received, abs=1e-3)
        assert all(e["seq"] is None for e in errors)  # docs/zmq.md: no message carried them
        paths = sorted(e["path"] for e in errors)  # the newest ``limit`` of them
        assert len(paths) == min(limit, 2) and set(paths) <= {str(t.movie.path) for t in bad}


def test_a_series_stored_without_its_metadata_dose_gives_the_dose_its_tilts_reached():
    """A state stored by an earlier release (or while a tilt's dose is unknown) has no
    metadata dose: the largest a tilt reached stands in for it."""
    from daemon.series.stored_state import SeriesTally, accumulated_dose_e_A2

    tally = SeriesTally(done=3, reached_e_A2=9.0)
    assert accumulated_dose_e_A2({"accumulated_dose_e_A2": 12.0}, tally) == 12.0
    for stored in ({}, {"accumulated_dose_e_A2": None}, {"accumulated_dose_e_A2": "12"},
                   {"accumulated_dose_e_A2": float("nan")}, {"accumulated_dose_e_A2": True}):
        assert accumulated_dose_e_A2(stored, tally) == 9.0
    assert accumulated_dose_e_A2({}, SeriesTally()) is None


def test_a_movie_quarantined_before_it_was_a_tilt_counts_for_the_series_listing_it_by_path():
    """``grid1/TS_01_002_-3.0.mrc`` quarantined at validation (no tilt record yet), listed by
    ``grid1/TS_01``'s mdoc; a series ``TS_01`` in the watch folder itself lists the same file
    name, which also ends the path: it was counted as that series' failure."""
    from types import SimpleNamespace

    from daemon.series.stored_state import series_tallies

    def row(path, status, updated, series=None, index=0):
        tilt = {"series": series, "movie": path.rpartition("/")[2], "tilt_deg": 0.0,
                "acquisition_index": index, "dose_e_A2": 3.0,
                "pre_exposure_e_A2": 3.0 * index} if series else None
        return SimpleNamespace(key=SimpleNamespace(path=path, size=10), status=status,
                               updated=updated,
                               metadata={"extra_record": {"tilt": tilt}} if tilt else {})

    names = [f"TS_01_00{i}_{a}.mrc" for i, a in enumerate(("0.0", "3.0", "-3.0"))]
    states = {"TS_01": {"listed_movies": names},
              "grid1/TS_01": {"listed_movies": [f"grid1/{n}" for n in names]}}
    rows = [row(f"/w/{n}", "done", 1.0 + i, "TS_01", i) for i, n in enumerate(names)]
    rows += [row(f"/w/grid1/{n}", "done", 10.0 + i, "grid1/TS_01", i)
             for i, n in enumerate(names[:2])]
    rows.append(row(f"/w/grid1/{names[2]}", "quarantined", 20.0))
    tallies = series_tallies(states, rows)
    assert (tallies["TS_01"].done, tallies["TS_01"].failed) == (3, 0)
    assert (tallies["grid1/TS_01"].done, tallies["grid1/TS_01"].failed) == (2, 1)
    # a watch folder named otherwise now (another mount): the longest listed name, as without
    tallies = series_tallies(states, rows, watch_dir="/mnt/other/w")
    assert (tallies["grid1/TS_01"].done, tallies["grid1/TS_01"].failed) == (2, 1)
    # grid1's mdoc not stored yet (Tomography 5 writes it at the series' end): by the path
    # below the watch folder, the watch folder's own series does not list that movie
    del states["grid1/TS_01"]
    tallies = series_tallies(states, rows, watch_dir="/w")
    assert (tallies["TS_01"].done, tallies["TS_01"].failed) == (3, 0)
    assert series_tallies(states, [rows[-1]], watch_dir="/w/") == {}
    # a movie redone after a failure counts by its newest row; a retaken tilt's first take,
    # which the mdoc no longer lists, is not one of the series' tilts
    redone = [row(f"/w/{names[0]}", "failed", 30.0, "TS_01", 0),
              row(f"/w/{names[0]}", "done", 31.0, "TS_01", 0),
              row("/w/TS_01_009_3.0.mrc", "done", 32.0, "TS_01", 1)]
    tallies = series_tallies({"TS_01": states["TS_01"]}, redone, watch_dir="/w")
    assert (tallies["TS_01"].done, tallies["TS_01"].failed) == (1, 0)


def test_a_tilt_put_back_by_trouble_outside_it_is_no_failed_tilt_of_its_series():
    """Workers that could not start put every movie back (failed, never counted against):
    ``status`` said "0 failed, 6 put back" and, below it, "TS_01: 0/3 tilts done, 3 failed"."""
    from types import SimpleNamespace

    from daemon.series.stored_state import series_tallies

    def row(name, status, failures, index):
        tilt = {"series": "TS_01", "movie": name, "tilt_deg": 0.0, "acquisition_index": index,
                "dose_e_A2": 3.0, "pre_exposure_e_A2": 3.0 * index}
        return SimpleNamespace(key=SimpleNamespace(path=f"/w/{name}", size=10), status=status,
                               failures=failures, updated=1.0 + index,
                               metadata={"extra_record": {"tilt": tilt}})

    names = [f"TS_01_00{i}.mrc" for i in range(3)]
    rows = [row(names[0], "failed", 0, 0), row(names[1], "failed", 1, 1),
            row(names[2], "quarantined", 2, 2)]
    tally = series_tallies({"TS_01": {"listed_movies": names}}, rows)["TS_01"]
    assert (tally.done, tally.failed) == (0, 2)  # the put-back tilt waits; it did not fail
