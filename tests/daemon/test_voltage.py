"""The acceleration voltage of each movie: ``--voltage`` when given, else its metadata (the
tilt's mdoc ``Voltage``, a frame mdoc, the FEI header of an MRC movie), else 300 kV.

A 200 kV session (Glacios, Talos Arctica) run without ``--voltage`` is dose-weighted and
recorded at 200 kV; a ``--voltage`` unlike the metadata is used and warned about; a 300 kV
session keeps the parameters, and so the ledger keys, it had when ``--voltage`` defaulted to
300 kV.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from recording_log import RecordingLog
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from correction.pipeline import correct_movie
from correction.synthetic import render_movie
from daemon.commands.cli import main
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics
from daemon.series.mdoc import read_mdoc
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config, load_config
from daemon.simulation.tilt_series import series_mdoc_text, simulate_tilt_series

SHAPE = (96, 96)
N_FRAMES = 4
PIXEL_A = 1.1
OPTICS = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.07, tomo_hand=-1)


def _session(tmp_path: Path, *, mdoc_voltage_kV: float, n_tilts: int = 3):
    """A finished tilt series in ``watch`` whose mdoc says ``Voltage = mdoc_voltage_kV``."""
    staging, watch, out = tmp_path / "staging", tmp_path / "watch", tmp_path / "out"
    staging.mkdir()
    watch.mkdir()
    tilts = simulate_tilt_series(staging, rng=np.random.default_rng(3), n_tilts=n_tilts,
                                 shape_yx=SHAPE, n_frames=N_FRAMES, pixel_size_A=PIXEL_A,
                                 frame_interval_s=0, tilt_interval_s=0, lock=False,
                                 sleep=lambda s: None)
    for t in tilts:
        shutil.copy2(t.movie.path, watch / t.movie.path.name)
    (watch / "TS_01.mrc.mdoc").write_text(series_mdoc_text(
        "TS_01", tilts, pixel_size_A=PIXEL_A, shape_yx=SHAPE, n_frames=N_FRAMES,
        voltage_kV=mdoc_voltage_kV))
    return watch, out, tilts


def _watch_config(watch: Path, out: Path, *flags: str) -> Config:
    """The daemon's configuration as ``motionwatch watch WATCH --out OUT *flags`` builds it."""
    from daemon.commands import watch as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    config = load_config(parser.parse_args([str(watch), "--out", str(out), *flags]))
    return dataclasses.replace(config, settle_time_s=0.1, scan_interval_s=0.05,
                               incomplete_grace_s=2.0, heartbeat_s=0.2, exit_when_idle_s=0.5,
                               polling="on")


def _run(config: Config) -> RecordingLog:
    log = RecordingLog()
    run_until_idle(Service(config, listeners=[RelionListener(OPTICS)], logger=log,
                           # the series completes once its mdoc is quiet for 0.5 s
                           resolver=TiltSeriesResolver(SeriesConfig(mdoc_quiet_s=0.5),
                                                       mode="on")), guard_s=30)
    return log


def _record(out: Path, movie: Path) -> dict:
    return json.loads((out / f"{movie.stem}.motion.json").read_text())


def _dw(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float64)


def test_a_200_kV_tilt_series_without_voltage_is_weighted_and_recorded_at_its_mdoc_voltage(
        tmp_path):
    watch, out, tilts = _session(tmp_path, mdoc_voltage_kV=200, n_tilts=2)
    _run(_watch_config(watch, out))
    for t in tilts:
        record = _record(out, t.movie.path)
        assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "mdoc"
        general = starfile.read(out / f"{t.movie.path.stem}.star", always_dict=True)["general"]
        assert general["rlnVoltage"] == pytest.approx(200.0)
    glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
    assert glob["rlnVoltage"][0] == pytest.approx(200.0)
    stack_mdocs = sorted((out / "TS_01").glob("*.mdoc"))
    assert stack_mdocs and all(read_mdoc(p).voltage_kV == 200.0 for p in stack_mdocs)

    # the weights: the daemon's DW sum of the last tilt is the library's at 200 kV, not 300 kV
    last = tilts[-1]
    record = _record(out, last.movie.path)
    daemon_dw = _dw(out / record["outputs"]["dw"])
    truth = {}
    for kv in (200.0, 300.0):
        dose = DoseParams(voltage_kV=kv, frame_doses_e_A2=tuple([last.dose_e_A2 / N_FRAMES]
                                                                  * N_FRAMES),
                          pre_exposure_e_A2=last.pre_exposure_e_A2)
        result = correct_movie(last.movie.path, tmp_path / f"at{kv:g}",
                               CorrectionParams(dose=dose), workers=1)
        truth[kv] = _dw(Path(result.outputs["dw"]))
    off_200 = np.abs(daemon_dw - truth[200.0]).max()
    off_300 = np.abs(daemon_dw - truth[300.0]).max()
    assert off_300 > 20 * off_200


def test_an_explicit_voltage_unlike_the_mdocs_is_used_and_warned_about_once_per_series(
        tmp_path):
    watch, out, tilts = _session(tmp_path, mdoc_voltage_kV=200)
    log = _run(_watch_config(watch, out, "--voltage", "300"))
    warned = [f for level, event, f in log.events
              if level == "warning" and event == "voltage_differs_from_metadata"]
    assert len(warned) == 1  # one series: once, not once per tilt
    assert warned[0]["series"] == "TS_01"
    assert "--voltage 300 kV" in warned[0]["reason"] and "200 kV" in warned[0]["reason"]
    for t in tilts:
        record = _record(out, t.movie.path)
        assert record["voltage_kV"] == 300.0 and record["voltage_source"] == "option"


def test_a_300_kV_session_without_voltage_keeps_the_parameters_and_keys_it_had(tmp_path):
    watch, out, tilts = _session(tmp_path, mdoc_voltage_kV=300)
    config = _watch_config(watch, out)
    # as the former default --voltage 300 built them
    assert config.params == CorrectionParams(dose=DoseParams(voltage_kV=300.0))
    assert config.params.fingerprint() == CorrectionParams(
        dose=DoseParams(voltage_kV=300.0)).fingerprint()
    log = _run(config)
    assert not [e for _, e, _ in log.events if e == "voltage_differs_from_metadata"]
    for t in tilts:
        record = _record(out, t.movie.path)
        assert record["voltage_kV"] == 300.0 and record["voltage_source"] == "mdoc"
        tilt = record["tilt"]
        before = CorrectionParams(dose=DoseParams(
            voltage_kV=300.0, frame_doses_e_A2=tuple(tilt["frame_doses_e_A2"]),
            pre_exposure_e_A2=tilt["pre_exposure_e_A2"]))
        assert record["alignment"]["params_fingerprint"] == before.fingerprint()


def test_a_session_whose_metadata_gives_no_voltage_is_told_once_that_300_kV_is_assumed(
        tmp_path):
    """An mdoc without ``Voltage`` and no ``--voltage``: MotionCor2's 300 kV, said once per
    run (a 200 kV microscope's session would otherwise be weighted at 300 kV unnoticed)."""
    watch, out, tilts = _session(tmp_path, mdoc_voltage_kV=300)
    mdoc = watch / "TS_01.mrc.mdoc"
    mdoc.write_text("".join(line for line in mdoc.read_text().splitlines(keepends=True)
                            if not line.startswith("Voltage")))
    log = _run(_watch_config(watch, out))
    assumed = [f for level, event, f in log.events
               if level == "warning" and event == "voltage_assumed"]
    assert len(assumed) == 1  # once per run, not once per tilt
    assert "300 kV assumed" in assumed[0]["reason"] and "--voltage" in assumed[0]["reason"]
    for t in tilts:
        record = _record(out, t.movie.path)
        assert record["voltage_kV"] == 300.0 and record["voltage_source"] == "default"

    log = _run(_watch_config(watch, tmp_path / "out_option", "--voltage", "300"))
    assert not [e for _, e, _ in log.events if e == "voltage_assumed"]
    assert _record(tmp_path / "out_option", tilts[0].movie.path)["voltage_source"] == "option"


def test_the_feed_warns_once_when_300_kV_is_assumed_for_movies_without_any_voltage(tmp_path):
    from fake_publisher import FakePublisher

    from daemon.feed.listener import PublishListener

    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    for i in range(2):
        syn = render_movie(np.random.default_rng(i), shape_yx=SHAPE, n_frames=N_FRAMES,
                           electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
        with mrcfile.new(watch / f"loose_{i}.mrc") as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = PIXEL_A
    log, publisher = RecordingLog(), FakePublisher()
    run_until_idle(Service(_watch_config(watch, out, "--dose-per-frame", "1"),
                           listeners=[PublishListener(publisher)], logger=log,
                           resolver=TiltSeriesResolver(SeriesConfig(), mode="auto")),
                   guard_s=30)
    assert len([f for _, e, f in log.events if e == "movie_done"]) == 2
    assumed = [m for kind, m in publisher.warnings if kind == "voltage_assumed"]
    assert len(assumed) == 1 and "300 kV assumed" in assumed[0]
    assert _record(out, watch / "loose_1.mrc")["voltage_source"] == "default"


def test_correct_says_once_per_run_that_it_assumes_300_kV_for_movies_without_any_voltage(
        tmp_path, capsys):
    movies = []
    for i in range(2):
        syn = render_movie(np.random.default_rng(i), shape_yx=SHAPE, n_frames=N_FRAMES,
                           electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
        movies.append(tmp_path / f"plain_{i}.mrc")
        with mrcfile.new(movies[-1]) as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = PIXEL_A
    assert main(["correct", *map(str, movies), "--out", str(tmp_path / "a"),
                 "--dose-per-frame", "1"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "kV" in line]
    assert len(lines) == 1 and "300 kV assumed" in lines[0], lines
    for movie in movies:
        record = json.loads((tmp_path / "a" / f"{movie.stem}.motion.json").read_text())
        assert record["voltage_kV"] == 300.0 and record["voltage_source"] == "default"

    assert main(["correct", *map(str, movies), "--out", str(tmp_path / "b"),
                 "--dose-per-frame", "1", "--voltage", "300"]) == 0
    assert "kV" not in capsys.readouterr().err


def _fei_movie(path: Path, *, voltage_kV: float) -> Path:
    """A small MRC movie with an FEI1 extended header giving its pixel size and voltage."""
    syn = render_movie(np.random.default_rng(8), shape_yx=(96, 96), n_frames=4,
                       electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
    ext_dtype = mrcfile.dtypes.get_ext_header_dtype(b"FEI1", "<")
    ext = np.zeros(4, dtype=ext_dtype)
    ext["Metadata size"] = ext_dtype.itemsize
    ext["Pixel size X"] = ext["Pixel size Y"] = 1.2e-10  # m
    ext["HT"] = voltage_kV * 1e3  # V
    with mrcfile.new(path) as mrc:
        mrc.set_data(syn.frames)
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"
    return path


def _epu_metadata(voltage_V: str, *, root: str = "MicroscopeImage") -> str:
    """EPU's per-acquisition metadata file in outline (a data-contract XML in EPU's default
    namespace; the voltage in volts under ``microscopeData/gun``)."""
    return (f'<?xml version="1.0" encoding="utf-8"?>\n'
            f'<{root} xmlns="http://schemas.datacontract.org/2004/07/Fei.SharedObjects" '
            f'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
            f'<uniqueID>a1</uniqueID><microscopeData>'
            f'<acquisition><acquisitionDateTime>2025-01-08T15:49:15</acquisitionDateTime>'
            f'</acquisition><core><ApplicationSoftware>EPU</ApplicationSoftware></core>'
            f'<gun><AccelerationVoltage>{voltage_V}</AccelerationVoltage></gun>'
            f'<instrument><InstrumentModel>GLACIOS</InstrumentModel></instrument>'
            f'</microscopeData></{root}>')


def _epu_movie(folder: Path, name: str) -> Path:
    syn = render_movie(np.random.default_rng(6), shape_yx=SHAPE, n_frames=N_FRAMES,
                       electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
    with mrcfile.new(folder / name) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = PIXEL_A
    return folder / name


def test_an_epu_movie_takes_the_voltage_of_its_metadata_file_in_correct_and_in_the_daemon(
        tmp_path, capsys):
    """EPU writes ``<acquisition>.xml`` beside ``<acquisition>_Fractions.mrc`` (and K3's
    ``_fractions.tiff``, Falcon 4's ``_EER.eer``); EER and TIFF headers give no voltage."""
    watch = tmp_path / "Images-Disc1" / "GridSquare_8" / "Data"
    watch.mkdir(parents=True)
    stem = "FoilHole_9_Data_7_6_20250108_154915"
    movie = _epu_movie(watch, f"{stem}_Fractions.mrc")
    (watch / f"{stem}.xml").write_text(_epu_metadata("200000"))
    assert main(["correct", str(movie), "--out", str(tmp_path / "a"),
                 "--dose-per-frame", "1"]) == 0
    assert "kV" not in capsys.readouterr().err
    record = json.loads((tmp_path / "a" / f"{stem}_Fractions.motion.json").read_text())
    assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "EPU xml"

    _run(_watch_config(watch, tmp_path / "out", "--dose-per-frame", "1"))
    record = _record(tmp_path / "out", movie)
    assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "EPU xml"


def test_an_epu_movie_waits_for_its_metadata_file_written_after_it(tmp_path):
    """EPU writes each acquisition's metadata file apart from the camera's movie, so it can
    come (or be complete) after the movie: the daemon waits for it, where such files are
    written, instead of weighting a 200 kV movie at 300 kV; a partly written file is waited
    for too (completed here once the daemon says the movie waits)."""
    watch = tmp_path / "Images-Disc1" / "GridSquare_8" / "Data"
    watch.mkdir(parents=True)
    first, late = "FoilHole_9_Data_7_6_20250108_154915", "FoilHole_9_Data_7_7_20250108_155020"
    _epu_movie(watch, f"{first}_Fractions.mrc")
    (watch / f"{first}.xml").write_text(_epu_metadata("200000"))
    movie = _epu_movie(watch, f"{late}_Fractions.mrc")
    text = _epu_metadata("200000")
    (watch / f"{late}.xml").write_text(text[:len(text) // 2])  # being written

    log = RecordingLog()

    def finish_writing() -> None:  # once the daemon says the movie waits (at most 20 s)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not any(
                e == "movie_waiting" for _, e, _ in list(log.events)):
            time.sleep(0.05)
        (watch / f"{late}.xml").write_text(text)

    writer = threading.Thread(target=finish_writing)
    writer.start()
    try:
        run_until_idle(Service(_watch_config(watch, tmp_path / "out", "--dose-per-frame", "1"),
                               logger=log, resolver=TiltSeriesResolver(SeriesConfig(),
                                                                       mode="on")),
                       guard_s=30)
    finally:
        writer.join()
    for stem in (first, late):
        record = _record(tmp_path / "out", watch / f"{stem}_Fractions.mrc")
        assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "EPU xml", stem
    waits = [f["reason"] for _, e, f in log.events if e == "movie_waiting"]
    assert waits == [f"waiting for EPU's metadata file {late}.xml (its voltage), at most 60 s"]
    assert movie.exists()


EPU_STEM = "FoilHole_9_Data_7_6_20250108_154915"


def _late_epu_session(tmp_path: Path, volts: str) -> tuple[Path, Path, Path, Path, str]:
    """An EPU movie whose metadata file (``volts``) is cut short, as while EPU writes it:
    (watch, out, movie, the file, its whole text)."""
    watch, out = tmp_path / "Data", tmp_path / "out"
    watch.mkdir()
    movie = _epu_movie(watch, f"{EPU_STEM}_Fractions.mrc")
    text = _epu_metadata(volts)
    xml = watch / f"{EPU_STEM}.xml"
    xml.write_text(text[:100])
    return watch, out, movie, xml, text


def _run_with_metadata_wait(watch: Path, out: Path, *listeners: ServiceListener,
                            mode: str = "on") -> RecordingLog:
    """The daemon until idle, with a metadata wait of 1 s; its log."""
    log = RecordingLog()
    run_until_idle(Service(_watch_config(watch, out, "--dose-per-frame", "1"), logger=log,
                           listeners=list(listeners),
                           resolver=TiltSeriesResolver(SeriesConfig(metadata_wait_s=1.0),
                                                       mode=mode)), guard_s=30)
    return log


def test_an_epu_movie_whose_metadata_file_never_completes_goes_on_after_the_wait(tmp_path):
    watch, out, movie, _, _ = _late_epu_session(tmp_path, "200000")  # cut short for good
    log = _run_with_metadata_wait(watch, out)
    record = _record(out, movie)
    assert record["voltage_kV"] == 300.0 and record["voltage_source"] == "default"
    missing = [f["reason"] for _, e, f in log.events if e == "epu_metadata_missing"]
    assert missing == [f"EPU's metadata file {EPU_STEM}.xml was not complete within 1 s (or is "
                       "not readable XML: cut, or saved in another encoding than it declares): "
                       "the voltage from the movie's header, else 300 kV; give --voltage"]


@pytest.mark.parametrize("mode", ["on", "auto"], ids=["tilt-series-on", "single-particle"])
def test_an_epu_movie_corrected_before_its_metadata_file_came_is_redone_at_its_voltage(
        tmp_path, mode):
    """The metadata file came only after the wait, once the movie was corrected at 300 kV
    (its header gives no voltage): the movie is corrected again, once, at the file's 200 kV,
    and the log says why (``--tilt-series auto`` in a folder of single-particle movies, too)."""
    watch, out, movie, xml, text = _late_epu_session(tmp_path, "200000")

    class EPU(ServiceListener):
        """Finishes the metadata file once the movie is corrected without it."""

        def on_movie_done(self, event):
            if event.path == movie and _record(out, movie)["voltage_source"] == "default":
                xml.write_text(text)

    log = _run_with_metadata_wait(watch, out, EPU(), mode=mode)
    record = _record(out, movie)
    assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "EPU xml"
    redone = [f["reason"] for _, e, f in log.events if e == "movie_redo_metadata_changed"]
    assert redone == [f"EPU's metadata file {EPU_STEM}.xml came after the movie was corrected "
                      "and says 200 kV, where 300 kV was used: redone at its voltage"]
    assert [f["movie"] for _, e, f in log.events if e == "movie_done"] == [str(movie)] * 2


def test_the_first_epu_movie_of_a_new_grid_square_is_redone_when_its_metadata_file_comes(
        tmp_path):
    """A new grid square's first movie comes before any metadata file in its folder, so it
    waits for none and is corrected at 300 kV; its file (200 kV) came after. Before, it was
    never looked at again: the first movies of every grid square stayed weighted at 300 kV on
    a 200 kV microscope (and in an optics group of their own); now it is redone, once."""
    watch, out = tmp_path / "Data", tmp_path / "out"
    watch.mkdir()
    movie = _epu_movie(watch, f"{EPU_STEM}_Fractions.mrc")
    xml = watch / f"{EPU_STEM}.xml"

    class EPU(ServiceListener):
        """Writes the metadata file once the movie is corrected without it."""

        def on_movie_done(self, event):
            if not xml.exists():
                xml.write_text(_epu_metadata("200000"))

    log = _run_with_metadata_wait(watch, out, EPU(), mode="auto")
    record = _record(out, movie)
    assert (record["voltage_kV"], record["voltage_source"]) == (200.0, "EPU xml")
    assert [f["movie"] for _, e, f in log.events if e == "movie_done"] == [str(movie)] * 2
    assert not [e for _, e, _ in log.events if e == "movie_waiting"]


def test_an_epu_movie_whose_metadata_file_came_while_the_daemon_was_down_is_redone_at_restart(
        tmp_path):
    """The daemon stops after correcting an EPU movie at 300 kV (its metadata file was cut
    short for longer than the wait); the file is finished, with 200 kV, before the next start.
    The restarted daemon resolves the movie's voltage anew, so its parameters, and with them
    its ledger key, are new: it is corrected again, once, at 200 kV, however long ago the
    first correction was."""
    watch, out, movie, xml, text = _late_epu_session(tmp_path, "200000")
    _run_with_metadata_wait(watch, out)
    assert _record(out, movie)["voltage_source"] == "default"
    xml.write_text(text)  # finished while the daemon was down
    log = _run_with_metadata_wait(watch, out)
    record = _record(out, movie)
    assert (record["voltage_kV"], record["voltage_source"]) == (200.0, "EPU xml")
    assert [f["movie"] for _, e, f in log.events if e == "movie_done"] == [str(movie)]


def test_an_epu_movie_whose_late_metadata_file_agrees_is_not_corrected_again(tmp_path):
    watch, out, movie, xml, text = _late_epu_session(tmp_path, "300000")

    class EPU(ServiceListener):
        def on_movie_done(self, event):
            xml.write_text(text)

    log = _run_with_metadata_wait(watch, out, EPU())
    assert [f["movie"] for _, e, f in log.events if e == "movie_done"] == [str(movie)]
    assert not [e for _, e, _ in log.events if e == "movie_redo_metadata_changed"]


def test_only_epus_own_metadata_file_with_a_voltage_in_it_gives_one(tmp_path):
    from daemon.settings.voltage import epu_xml_path, epu_xml_voltage_kV

    stem = "FoilHole_9_Data_7_6_20250108_154915"
    for name in (f"{stem}_fractions.tiff", f"{stem}_Fractions.mrc", f"{stem}_EER.eer"):
        assert epu_xml_path(tmp_path / name) == tmp_path / f"{stem}.xml"
    assert epu_xml_path(tmp_path / "TS_01_003_9.0.mrc") is None  # SerialEM: its mdocs say
    movie = tmp_path / f"{stem}_EER.eer"
    assert epu_xml_voltage_kV(movie) is None  # no metadata file (yet)
    for text, kV in ((_epu_metadata("300000"), 300.0), (_epu_metadata("1.2E5"), 120.0),
                     (_epu_metadata("300000", root="EpuSessionXml"), None),  # not a movie's
                     (_epu_metadata("high"), None), (_epu_metadata("300000")[:-40], None)):
        (tmp_path / f"{stem}.xml").write_text(text)
        assert epu_xml_voltage_kV(movie) == kV, text


def test_correct_without_voltage_takes_the_fei_headers_and_an_unlike_option_warns(
        tmp_path, capsys):
    movie = _fei_movie(tmp_path / "glacios.mrc", voltage_kV=200.0)
    assert main(["correct", str(movie), "--out", str(tmp_path / "a"),
                 "--dose-per-frame", "1"]) == 0
    record = json.loads((tmp_path / "a" / "glacios.motion.json").read_text())
    assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "movie header"
    assert "warning" not in capsys.readouterr().err

    assert main(["correct", str(movie), "--out", str(tmp_path / "b"), "--dose-per-frame", "1",
                 "--voltage", "300"]) == 0
    record = json.loads((tmp_path / "b" / "glacios.motion.json").read_text())
    assert record["voltage_kV"] == 300.0 and record["voltage_source"] == "option"
    lines = [line for line in capsys.readouterr().err.splitlines() if "kV" in line]
    assert lines == [f"motionwatch: {movie}: warning: --voltage 300 kV used, but the movie "
                     f"header says 200 kV: dose weighting and records use 300 kV"]


def test_a_single_movie_in_the_daemon_takes_its_frame_mdocs_voltage(tmp_path):
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    syn = render_movie(np.random.default_rng(4), shape_yx=SHAPE, n_frames=N_FRAMES,
                       electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
    movie = watch / "single.mrc"
    with mrcfile.new(movie) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = PIXEL_A
    movie.with_name("single.mrc.mdoc").write_text(
        f"PixelSpacing = {PIXEL_A:g}\nVoltage = 200\nImageFile = single.mrc\n\n"
        f"[FrameSet = 0]\nTiltAngle = 0\nExposureDose = 4\nPixelSpacing = {PIXEL_A:g}\n"
        f"SubFramePath = X:\\frames\\single.mrc\nNumSubFrames = {N_FRAMES}\n"
        f"TimeStamp = 5\nDateTime = 24-Mar-2023  12:05:00\n")
    _run(_watch_config(watch, out))
    record = _record(out, movie)
    assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "frame mdoc"
    assert record["dose"]["total_e_A2"] == pytest.approx(4.0)


def test_a_voltage_option_more_than_1_kV_off_the_metadata_is_warned_about():
    """Mutant V1 (voltage.py:29, tolerance 1 -> 10 kV): --voltage's help says "more than 1 kV"."""
    from daemon.settings.voltage import resolve_voltage

    assert resolve_voltage(300.0, [(297.0, "mdoc")]).warning is not None
    assert resolve_voltage(300.0, [(300.5, "mdoc")]).warning is None


def test_a_series_whose_frame_mdocs_give_the_voltage_records_it_as_the_frame_mdocs(tmp_path):
    """The series mdoc gives no voltage, each tilt's frame mdoc gives 200 kV: weighted at 200
    kV, and the record said the voltage came from the series mdoc."""
    watch, out, tilts = _session(tmp_path, mdoc_voltage_kV=200, n_tilts=2)
    mdoc = watch / "TS_01.mrc.mdoc"
    mdoc.write_text("\n".join(line for line in mdoc.read_text().splitlines()
                              if not line.startswith("Voltage")) + "\n")
    for t in tilts:
        (watch / f"{t.movie.path.name}.mdoc").write_text(
            f"PixelSpacing = {PIXEL_A:g}\nVoltage = 200\nImageFile = {t.movie.path.name}\n\n"
            f"[FrameSet = 0]\nTiltAngle = {t.tilt_deg}\nExposureDose = {t.dose_e_A2}\n"
            f"PixelSpacing = {PIXEL_A:g}\nSubFramePath = X:\\frames\\{t.movie.path.name}\n"
            f"NumSubFrames = {N_FRAMES}\nTimeStamp = 5\n"
            f"DateTime = {t.acquired_at.strftime('%d-%b-%y  %H:%M:%S')}\n")
    _run(_watch_config(watch, out))
    for t in tilts:
        record = _record(out, t.movie.path)
        assert (record["voltage_kV"], record["voltage_source"]) == (200.0, "frame mdoc")


def test_a_voltage_the_metadata_gives_in_volts_is_said_to_be_left_out_not_missing():
    """``Voltage = 200000`` (V) was skipped and 300 kV assumed with 'no voltage in the
    metadata', though the metadata held one."""
    from daemon.settings.voltage import resolve_voltage

    said = resolve_voltage(None, [(200000.0, "mdoc"), (None, "movie header")])
    assert (said.kV, said.source) == (300.0, "default")
    assert said.ignored == ("the mdoc gives 200000 as the voltage, which is no voltage in kV "
                            "(60-400): left out")
    assert resolve_voltage(None, [(200000.0, "mdoc"), (200.0, "movie header")]).kV == 200.0
    assert resolve_voltage(None, [(200.0, "mdoc")]).ignored is None


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_a_movie_of_a_daemon_without_tilt_series_takes_its_own_headers_voltage(tmp_path, mode):
    """``--tilt-series off`` turns the series' dose bookkeeping off, not a movie's own
    metadata: a 200 kV FEI movie was weighted at 300 kV there, with no voltage_source and no
    word (``correct`` and ``--tilt-series auto`` took its header's 200 kV)."""
    from daemon.series.options import resolver_from_config

    watch = tmp_path / "watch"
    watch.mkdir()
    movie = _fei_movie(watch / "fei.mrc", voltage_kV=200)
    config = _watch_config(watch, tmp_path / "out", "--dose-per-frame", "1",
                           "--tilt-series", mode)
    log = RecordingLog()
    run_until_idle(Service(config, logger=log, resolver=resolver_from_config(config)),
                   guard_s=30)
    record = _record(tmp_path / "out", movie)
    assert record["voltage_kV"] == 200.0 and record["voltage_source"] == "movie header"


def test_a_movie_corrected_again_because_its_own_metadata_moved_is_said_with_what_moved(
        tmp_path):
    """A release that read no voltage under --tilt-series off weighted a 200 kV FEI movie at
    300 kV; the next start corrects it again at its header's 200 kV (right), but said it at
    info level only, and with --on-parameter-change keep kept it without a word."""
    from daemon.series.options import resolver_from_config

    watch = tmp_path / "watch"
    watch.mkdir()
    movie = _fei_movie(watch / "fei.mrc", voltage_kV=200)
    out = tmp_path / "out"
    config = _watch_config(watch, out, "--dose-per-frame", "1", "--tilt-series", "off")

    class Deaf(TiltSeriesResolver):
        """The release before: no metadata of its own under off."""

        def resolve(self, movie, params, *, n_frames=None):
            from daemon.events import MovieMetadata
            return MovieMetadata()

    run_until_idle(Service(config, logger=RecordingLog(),
                           resolver=Deaf(SeriesConfig(), mode="off")), guard_s=30)
    assert _record(out, movie)["voltage_kV"] == 300.0
    for policy, event in (("keep", "movie_kept"), ("redo", "movie_changed")):
        log = RecordingLog()
        run_until_idle(Service(dataclasses.replace(config, options={
            **config.options, "on_parameter_change": policy}), logger=log,
            resolver=resolver_from_config(config)), guard_s=30)
        [said] = [f for level, e, f in log.events if e == event and level == "warning"]
        assert "dose.voltage_kV: 300.0 -> 200.0" in said["changed"]
        assert _record(out, movie)["voltage_kV"] == (300.0 if policy == "keep" else 200.0)
