"""A tilt SerialEM took again after motionwatch had corrected it.

SerialEM backs up and retakes a tilt: the series mdoc is rewritten with the retake's section in
place of the first exposure's, and the first exposure's movie stays on disk. When the daemon had
already corrected that movie as a tilt, its motion record still names the series with the
pre-exposure it had then. The movie is now no tilt of the series: it is corrected on its own
(README, "Pre-exposure"), and the hand-off files list only the tilts the mdoc lists, each with
its pre-exposure (the discarded exposure counts, from PriorRecordDose, from the retake on).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import starfile
from series_session import N_FRAMES, PIXEL_A, SHAPE, copied_series, write_series_mdoc
from service_run import run_until_idle  # tests/helpers

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.events import MovieEvent, SeriesEvent, ServiceInfo, ServiceListener
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.series.tilt_record import TiltRecord
from daemon.settings.config import Config
from daemon.state.ledger import Ledger
from daemon.simulation.tilt_series import series_mdoc_text


def _config(watch: Path, out: Path, dose: DoseParams = DoseParams(dose_per_frame_e_A2=1.0)
            ) -> Config:
    return Config(watch, out, out, CorrectionParams(dose=dose),
                  settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                  heartbeat_s=0.2, exit_when_idle_s=0.6, polling="on")


def _run(watch: Path, out: Path, *listeners: ServiceListener, wait_s: float = 0.5,
         dose: DoseParams = DoseParams(dose_per_frame_e_A2=1.0)) -> None:
    """The daemon until idle (``dose``: the configured one, for movies of no series): a movie
    the mdoc does not list is none of its tilts once the mdoc is unchanged for ``wait_s`` (the
    metadata wait), a series is complete once its mdoc is quiet for 0.2 s."""
    config = _config(watch, out, dose)
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=wait_s, mdoc_quiet_s=0.2),
                                  mode="on")
    run_until_idle(Service(config, listeners=[RelionListener(RelionOptics()), *listeners],
                           resolver=resolver), guard_s=20.0)


def _series_star(out: Path):
    return starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]


def _session(tmp_path: Path):
    """A 3-tilt series as SerialEM leaves it (movies, mdoc, no lock): (watch, out, tilts)."""
    return copied_series(tmp_path, seed=3)


def _retake(watch: Path, first):
    """SerialEM's second exposure of the tilt ``first``, 40 s later under the next file name:
    (its path, its simulated tilt, whose pre-exposure counts the first exposure)."""
    path = watch / f"TS_01_003_{first.tilt_deg:.1f}.mrc"
    return path, dataclasses.replace(
        first, movie=dataclasses.replace(first.movie, path=path),
        acquired_at=first.acquired_at + dt.timedelta(seconds=40),
        pre_exposure_e_A2=first.pre_exposure_e_A2 + first.dose_e_A2)


@pytest.mark.parametrize("configured, wait_s", [(True, 0.5), (False, 0.5), (True, 2.0)],
                         ids=["dose-configured", "dose-from-mdoc", "metadata-wait-over-idle"])
def test_a_tilt_retaken_after_it_was_corrected_leaves_the_series_star_and_is_corrected_alone(
        tmp_path, configured, wait_s):
    """Corrected on its own with the configured dose, else (tilt series take theirs from the
    mdoc) with the dose it had as a tilt: not quarantined for want of one. With a metadata
    wait longer than ``exit_when_idle`` (0.6 s), the daemon waits for the redo: it exited as
    idle while the mdoc that discarded the tilt was still settling, the movie left a tilt."""
    dose = DoseParams(dose_per_frame_e_A2=1.0) if configured else DoseParams()
    watch, out, tilts = _session(tmp_path)
    first = tilts[2]
    retake_path, retake = _retake(watch, first)

    class SerialEM(ServiceListener):
        """Once the three tilts are assembled, the last one is taken again: the mdoc lists the
        new exposure in its place (its PriorRecordDose counts the first one), and the first
        exposure's movie stays where it is."""

        tilts_listed_before: int | None = None

        def on_series_event(self, event):
            if event.kind == "completed" and not retake_path.exists():
                self.tilts_listed_before = len(_series_star(out))
                shutil.copy(tilts[1].movie.path, retake_path)  # other frames, a new file
                write_series_mdoc(watch, [tilts[0], tilts[1], retake])

    serialem = SerialEM()
    _run(watch, out, serialem, dose=dose, wait_s=wait_s)
    assert retake_path.exists() and serialem.tilts_listed_before == 3

    table = _series_star(out)
    listed = [str(watch / t.movie.path.name) for t in (tilts[0], tilts[1], retake)]
    assert list(table["rlnMicrographMovieName"]) == listed
    assert list(table["rlnMicrographPreExposure"]) == pytest.approx(
        [0.0, tilts[0].dose_e_A2, first.pre_exposure_e_A2 + first.dose_e_A2], abs=1e-4)
    # the retake's record says its pre-exposure holds more than the listed tilts' doses
    said = json.loads((out / f"{retake_path.stem}.motion.json").read_text())["tilt"]
    assert "PriorRecordDose" in said["pre_exposure_convention"]
    record = json.loads((out / f"{first.movie.path.stem}.motion.json").read_text())
    assert TiltRecord.from_json(record) is None  # corrected on its own, no tilt of TS_01
    assert record["dose"]["pre_exposure_e_A2"] == 0.0
    assert sum(record["dose"]["per_frame_e_A2"]) == pytest.approx(
        N_FRAMES * 1.0 if configured else first.dose_e_A2, abs=1e-4)


def test_a_discarded_exposure_met_after_its_retake_is_corrected_on_its_own_with_its_dose(
        tmp_path):
    """A session corrected after it was recorded (a backlog, a daemon started late): the mdoc
    already lists the retake in place of the first exposure, whose movie stays on disk. With
    the dose from the mdoc (none configured) it was quarantined for want of a dose, though
    the log said it was corrected on its own. SerialEM takes a tilt again with the same
    exposure: the first exposure is corrected on its own with the retake's dose."""
    watch, out, tilts = _session(tmp_path)
    first = tilts[2]
    retake_path, retake = _retake(watch, first)
    retake = dataclasses.replace(retake, dose_e_A2=first.dose_e_A2 * 1.25)  # told apart
    shutil.copy(tilts[1].movie.path, retake_path)
    write_series_mdoc(watch, [tilts[0], tilts[1], retake])
    _run(watch, out, dose=DoseParams())
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        statuses = {Path(r.key.path).name: r.status for r in ledger.rows()}
    assert statuses == {t.movie.path.name: "done" for t in (*tilts, retake)}
    record = json.loads((out / f"{first.movie.path.stem}.motion.json").read_text())
    assert TiltRecord.from_json(record) is None  # on its own, no tilt of TS_01
    assert record["dose"]["pre_exposure_e_A2"] == 0.0
    assert sum(record["dose"]["per_frame_e_A2"]) == pytest.approx(retake.dose_e_A2, abs=1e-4)
    assert list(_series_star(out)["rlnMicrographMovieName"]) == [
        str(watch / t.movie.path.name) for t in (tilts[0], tilts[1], retake)]


def test_a_discarded_exposure_in_a_session_of_two_grid_folders_takes_its_retakes_dose(
        tmp_path):
    """The same with another grid's series in a folder of its own beside it: the watched tree
    is resolved folder by folder, and their union left out the discarded exposures' angles,
    so the first exposure found no retake to take its dose from and was quarantined for want
    of a dose, though the log said it was corrected on its own."""
    watch, out, tilts = _session(tmp_path)
    grids = {g: watch / g for g in ("grid1", "grid2")}
    for folder in grids.values():
        folder.mkdir()
        for t in tilts:
            shutil.copy2(t.movie.path, folder / t.movie.path.name)
        write_series_mdoc(folder, tilts)  # TS_01 of each grid, as SerialEM names it again
    for t in tilts:
        (watch / t.movie.path.name).unlink()
    (watch / "TS_01.mrc.mdoc").unlink()
    first = tilts[2]
    retake_path, retake = _retake(grids["grid1"], first)
    retake = dataclasses.replace(retake, dose_e_A2=first.dose_e_A2 * 1.25)  # told apart
    shutil.copy(tilts[1].movie.path, retake_path)
    write_series_mdoc(grids["grid1"], [tilts[0], tilts[1], retake])
    _run(watch, out, dose=DoseParams())
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        statuses = {Path(r.key.path).relative_to(watch).as_posix(): r.status
                    for r in ledger.rows()}
    assert statuses == {**{f"grid1/{t.movie.path.name}": "done" for t in (*tilts, retake)},
                        **{f"grid2/{t.movie.path.name}": "done" for t in tilts}}
    record = json.loads((out / "grid1" / f"{first.movie.path.stem}.motion.json").read_text())
    assert TiltRecord.from_json(record) is None
    assert sum(record["dose"]["per_frame_e_A2"]) == pytest.approx(retake.dose_e_A2, abs=1e-4)


def test_a_discarded_tilt_corrected_on_its_own_keeps_its_series_voltage(tmp_path):
    """A 200 kV series: the discarded exposure, corrected on its own once SerialEM took its
    tilt again, is weighted at the 200 kV its series' mdoc gives (it fell back to the 300 kV
    assumed, with a warning to give --voltage that the session did not need)."""
    from recording_log import RecordingLog

    watch, out, tilts = _session(tmp_path)
    write_series_mdoc(watch, tilts, voltage_kV=200)
    first = tilts[2]
    retake_path, retake = _retake(watch, first)

    class SerialEM(ServiceListener):
        def on_series_event(self, event):
            if event.kind == "completed" and not retake_path.exists():
                shutil.copy(tilts[1].movie.path, retake_path)
                write_series_mdoc(watch, [tilts[0], tilts[1], retake], voltage_kV=200)

    log = RecordingLog()
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.2),
                                  mode="on")
    config = dataclasses.replace(_config(watch, out), options={"voltage": None})  # no option
    run_until_idle(Service(config, listeners=[SerialEM()], resolver=resolver, logger=log),
                   guard_s=20.0)
    record = json.loads((out / f"{first.movie.path.stem}.motion.json").read_text())
    assert TiltRecord.from_json(record) is None  # corrected on its own
    assert (record["voltage_kV"], record["voltage_source"]) == (200.0, "mdoc")
    assert not log.named("voltage_assumed")


@pytest.mark.parametrize("read_before_its_event", [False, True],
                         ids=["record-first-read-at-its-event", "record-read-before-its-event"])
def test_a_tilt_redone_as_no_tilt_leaves_its_series_star_whenever_its_redo_ends(
        tmp_path, read_before_its_event):
    """The series STAR may have been written last before the redo of the discarded tilt ended
    (its series re-assembled first): the redo's end rewrites the series it left, even when
    another event read the new record (written before its event comes) in between."""
    watch, out, tilts = _session(tmp_path)
    _run(watch, out)
    listener = RelionListener(RelionOptics())
    listener.on_ready(ServiceInfo(watch_dir=watch, out_dir=out, state_dir=out, gain=None, pid=0,
                                  discovery_mode="polling", discovery_reason="test", recovered=0))
    assert len(_series_star(out)) == 3
    movie = watch / tilts[2].movie.path.name
    motion = out / f"{movie.stem}.motion.json"
    record = json.loads(motion.read_text())
    del record["tilt"]  # what its redo as a movie of no series writes
    motion.write_text(json.dumps(record))
    if read_before_its_event:  # another series' event lists every movie's record again
        listener.on_series_event(SeriesEvent("updated", "TS_02", 1, 0, 0))
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        key = ledger.rows(path=str(movie))[-1].key
    listener.on_movie_done(MovieEvent(movie, key, "done", 2, outputs={"motion": str(motion)}))
    assert list(_series_star(out)["rlnMicrographMovieName"]) == [
        str(watch / t.movie.path.name) for t in tilts[:2]]


def test_an_mdoc_read_half_way_through_a_rewrite_leaves_each_tilt_with_the_whole_mdocs_dose(
        tmp_path):
    """SerialEM rewrites an mdoc whole, sorted by angle, after a dose-symmetric series: a scan
    may read it cut after a section, listing one tilt (pre-exposure 0 then) and not the others.
    Once the whole file is read, every tilt ends with the pre-exposure it gives: the tilt whose
    dose moved and moved back is corrected again with it, and the tilts missing for less than
    the metadata wait were not taken for discarded ones."""
    watch, out, tilts = _session(tmp_path)
    mdoc = watch / "TS_01.mrc.mdoc"
    resorted = series_mdoc_text("TS_01", tilts, pixel_size_A=PIXEL_A, shape_yx=SHAPE,
                                n_frames=N_FRAMES, sort_by_angle=True)
    half = resorted[:resorted.index("[ZValue = 1]")]  # lists the -3 deg tilt only

    class SerialEM(ServiceListener):
        def on_series_event(self, event):
            if event.kind == "completed" and not mdoc.read_text().startswith(half):
                mdoc.write_text(half)
                threading.Timer(0.3, mdoc.write_text, args=(resorted,)).start()

    _run(watch, out, SerialEM())
    assert mdoc.read_text() == resorted
    assert len(_series_star(out)) == 3
    for t in tilts:
        record = json.loads((out / f"{t.movie.path.stem}.motion.json").read_text())
        assert TiltRecord.from_json(record).pre_exposure_e_A2 == pytest.approx(
            t.pre_exposure_e_A2, abs=1e-4)


def test_a_tilt_its_mdoc_no_longer_lists_leaves_the_series_stacks_reassembled_without_it(
        tmp_path):
    """The 3-tilt series assembled, then its mdoc rewritten without the last tilt (SerialEM
    discarded it): the series is assembled again from the two it lists, and every stack, the
    tilt files and AreTomo3's links hold those two only."""
    import mrcfile

    watch, out, tilts = _session(tmp_path)
    _run(watch, out)
    folder = out / "TS_01"
    with mrcfile.open(folder / "TS_01_DW.mrc", header_only=True) as mrc:
        assert int(mrc.header.nz) == 3
    write_series_mdoc(watch, tilts[:2])
    _run(watch, out)
    kept = sorted(tilts[:2], key=lambda t: t.tilt_deg)
    for stack in ("TS_01.mrc", "TS_01_DW.mrc", "TS_01_EVN.mrc", "TS_01_ODD.mrc"):
        with mrcfile.open(folder / stack, header_only=True) as mrc:
            assert int(mrc.header.nz) == 2, stack
    rows = (folder / "TS_01.csv").read_text().splitlines()[1:]
    assert [r.split(",")[8] for r in rows] == [t.movie.path.name for t in kept]
    assert len((folder / "TS_01.tlt").read_text().splitlines()) == 2
    assert (folder / "aretomo3" / "TS_01.mrc.mrc").samefile(folder / "TS_01_DW.mrc")
    assert (folder / "aretomo3" / "TS_01.mrc_TLT.txt").read_text() == (
        folder / "TS_01_TLT.txt").read_text()
    assert len((folder / "TS_01_TLT.txt").read_text().splitlines()) == 2


def test_while_the_discarded_movie_waits_the_series_counts_only_its_listed_tilts_and_every_dose(
        tmp_path):
    """Before the discarded movie is redone on its own (the metadata wait, 60 s here), it was
    counted as a tilt of its series ("4/3 tilts done" in status and on the feed), and the feed's
    series dose left out its exposure, which PriorRecordDose counts and the pre-exposures and
    `motionwatch status` include."""
    from daemon.commands.status import collect_status
    from daemon.feed.listener import restored_state

    watch, out, tilts = _session(tmp_path)
    first = tilts[2]
    retake_path, retake = _retake(watch, first)

    class SerialEM(ServiceListener):
        def __init__(self):
            self.events = []

        def on_series_event(self, event):
            self.events.append(event)
            if event.kind == "completed" and not retake_path.exists():
                shutil.copy(tilts[1].movie.path, retake_path)
                write_series_mdoc(watch, [tilts[0], tilts[1], retake])
            elif event.kind == "completed":  # assembled with the retake: the operator stops
                os.kill(os.getpid(), signal.SIGTERM)  # it (the discarded movie still waits)

    serialem = SerialEM()
    _run(watch, out, serialem, wait_s=60.0)
    assert retake_path.exists()
    counted = [(e.n_done, e.n_expected) for e in serialem.events if e.n_expected]
    assert counted and all(done <= expected == 3 for done, expected in counted), counted
    last = [e for e in serialem.events if e.kind == "completed"][-1]
    exposures = sum(t.dose_e_A2 for t in tilts) + retake.dose_e_A2  # the first tilt 3 too
    assert last.n_done == 3
    assert last.accumulated_dose_e_A2 == pytest.approx(exposures, rel=1e-4)
    series = collect_status(out / "motionwatch.sqlite")["series"]
    assert [(s["tilts_done"], s["tilts_expected"]) for s in series] == [(3, 3)]
    assert series[0]["accumulated_dose_e_A2"] == pytest.approx(exposures, abs=1e-3)
    # and in the state a restarted daemon's feed gives a dashboard (it said 4 of 3)
    _, restored, _, _ = restored_state(out / "motionwatch.sqlite", out_dir=out)
    assert [(s["n_done"], s["n_expected"]) for s in restored] == [(3, 3)]
