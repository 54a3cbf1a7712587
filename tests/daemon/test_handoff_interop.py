"""The hand-off files as RELION 5 and AreTomo3 read them, checked against those programs' source.

Each test writes a file the way the service does, reads it back (``starfile`` for STAR files) and
checks the exact column or link. The facts, paraphrased from the peers' source:

* RELION 5's tilt-series import (3dem/relion
  ``src/tomography_python_programs/import_tilt_series/serialem.py``,
  ``_generate_tilt_image_dataframe``) copies the mdoc's ``NumSubFrames`` into
  ``rlnTomoTiltMovieFrameCount`` as it is: the frames of the movie file (raw frames for an EER,
  whose mdoc counts them; the EER grouping is chosen later, in motion correction, and recorded
  in the movie's own STAR as ``rlnEERGrouping``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import starfile

from daemon.handoff.relion import RelionOptics, motion_star_blocks, movie_motion, write_star
from daemon.handoff.tomo import TiltEntry, series_block
from daemon.series.tilt_record import TiltRecord

OPTICS = RelionOptics()


def _record(movie: str, n_frames: int, *, eer: dict | None = None) -> dict:
    """A motion record as the correction writes it (the keys the hand-off reads)."""
    stem = Path(movie).stem
    record = {
        "movie": f"/data/frames/{movie}", "voltage_kV": 300.0, "pixel_size_A": 1.5,
        "shape": [64, 64], "frames_in_movie": n_frames,
        "global_shifts_px": [[0.1 * i, 0.0] for i in range(n_frames)],
        "dose": {"per_frame_e_A2": [3.0 / n_frames] * n_frames, "pre_exposure_e_A2": 0.0},
        "outputs": {"sum": f"{stem}.mrc", "dw": f"{stem}_DW.mrc", "even": f"{stem}_EVN.mrc",
                    "odd": f"{stem}_ODD.mrc"},
    }
    if eer is not None:
        record["eer"] = eer
    return record


def _tilt(movie: str, index: int, angle: float) -> TiltRecord:
    return TiltRecord(series="TS_01", movie=movie, tilt_deg=angle, acquisition_index=index,
                      dose_e_A2=3.0, pre_exposure_e_A2=3.0 * index)


def test_an_eer_tilt_lists_the_raw_frames_of_its_movie_as_relions_import_copies_numsubframes(
        tmp_path):
    """125 raw EER frames read as 10 fractions of 12 (the 5 left over join the last): the series
    STAR says 125, as RELION's import writes an EER tilt's ``NumSubFrames``; the movie's motion
    STAR keeps counting fractions as RELION renders them. A movie of plain frames keeps its
    frame count."""
    eer = {"raw_frames": 125, "fractions": 10, "group_frames": 12, "grouped_by": "frames",
           "raw_frames_per_fraction": [12] * 9 + [17], "sampling": 1}
    out = tmp_path / "out"
    out.mkdir()
    eer_motion = movie_motion(_record("a.eer", 10, eer=eer), out / "a.motion.json")
    thrown = _record("b.tif", 8) | {"throw_frames": 2}  # its file holds 8 frames all the same
    thrown["global_shifts_px"] = thrown["global_shifts_px"][2:]
    tif_motion = movie_motion(thrown, out / "b.motion.json")
    table = series_block([TiltEntry(eer_motion, _tilt("a.eer", 0, 0.0)),
                          TiltEntry(tif_motion, _tilt("b.tif", 1, 3.0))], out, OPTICS)
    star = write_star(out / "TS_01.star", {"TS_01": table})

    rows = starfile.read(star)
    assert list(rows["rlnMicrographMovieName"]) == ["/data/frames/a.eer", "/data/frames/b.tif"]
    assert list(rows["rlnTomoTiltMovieFrameCount"]) == [125, 8]
    general = motion_star_blocks(eer_motion)["general"]
    assert general["rlnImageSizeZ"] == 10 and general["rlnEERGrouping"] == 12
    assert np.issubdtype(rows["rlnTomoTiltMovieFrameCount"].dtype, np.integer)


# --- Cs and amplitude contrast ------------------------------------------------------------
# RELION 5's import (serialem.py) writes into ``data_global`` rlnVoltage,
# rlnSphericalAberration, rlnAmplitudeContrast, rlnMicrographOriginalPixelSize, rlnTomoHand and
# rlnOpticsGroupName, Cs and amplitude contrast from required options; its tomography programs
# read voltage, Cs and amplitude contrast per tomogram (src/jaz/tomography/tomogram_set.cpp,
# loadTomogram) and motion correction adds rlnTomoTiltSeriesPixelSize. RELION's import job
# offers Cs 2.7 mm and amplitude contrast 0.1 (src/pipeline_jobs.cpp).

RELION_IMPORT_GLOBAL = ["rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnVoltage",
                        "rlnSphericalAberration", "rlnAmplitudeContrast",
                        "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnOpticsGroupName"]


def _with_optics(record: dict, cs: float, ac: float) -> dict:
    return {**record, "optics": {"spherical_aberration_mm": cs, "amplitude_contrast": ac}}


def test_the_tilt_series_table_has_relions_import_columns_with_the_cs_and_ac_of_each_series(
        tmp_path):
    """Two series corrected under other Cs / amplitude contrast (two microscopes, one output
    folder): each row has the values its records keep, and its own optics group; a record
    written before they were recorded takes the writer's."""
    from daemon.handoff.tomo import global_block

    out = tmp_path / "out"
    out.mkdir()
    krios = movie_motion(_with_optics(_record("k.tif", 8), 2.7, 0.1), out / "k.motion.json")
    arm = movie_motion(_with_optics(_record("j.tif", 8), 1.4, 0.07), out / "j.motion.json")
    old = movie_motion(_record("o.tif", 8), out / "o.motion.json")
    writer = RelionOptics(spherical_aberration_mm=2.0, amplitude_contrast=0.2, tomo_hand=-1)
    table = global_block([("TS_K", out / "TS_K" / "TS_K.star", krios),
                          ("TS_J", out / "TS_J" / "TS_J.star", arm),
                          ("TS_O", out / "TS_O" / "TS_O.star", old)], out, writer)
    star = write_star(out / "corrected_tilt_series.star", {"global": table})

    rows = starfile.read(star, always_dict=True)["global"]
    assert list(rows.columns) == [*RELION_IMPORT_GLOBAL, "rlnTomoTiltSeriesPixelSize"]
    by_name = {r["rlnTomoName"]: r for _, r in rows.iterrows()}
    assert by_name["TS_K"]["rlnSphericalAberration"] == 2.7
    assert by_name["TS_K"]["rlnAmplitudeContrast"] == 0.1
    assert by_name["TS_J"]["rlnSphericalAberration"] == 1.4
    assert by_name["TS_J"]["rlnAmplitudeContrast"] == 0.07
    assert by_name["TS_O"]["rlnSphericalAberration"] == 2.0
    assert by_name["TS_O"]["rlnAmplitudeContrast"] == 0.2
    assert len({r["rlnOpticsGroupName"] for r in by_name.values()}) == 3
    for r in by_name.values():
        assert r["rlnVoltage"] == 300.0 and r["rlnTomoHand"] == -1
        assert r["rlnMicrographOriginalPixelSize"] == 1.5
        assert r["rlnTomoTiltSeriesPixelSize"] == 1.5


def _correct(*argv) -> int:
    from daemon.commands.cli import main

    return main(["correct", *map(str, argv)])


def _movie(path: Path, seed: int) -> Path:
    from correction.synthetic import render_movie
    from daemon.simulation.movies import write_movie_progressively

    m = render_movie(np.random.default_rng(seed), shape_yx=(96, 96), n_frames=4, gain=None,
                     n_hot_pixels=0, pixel_size_A=1.1)
    write_movie_progressively(path, m.frames, pixel_size_A=1.1, frame_interval_s=0)
    return path


def test_correct_records_its_cs_and_ac_and_a_later_writer_keeps_them_in_the_optics_table(
        tmp_path):
    """``a`` corrected with Cs 1.4 mm / amplitude contrast 0.07, then ``b`` with the defaults
    into the same folder: each record keeps its own values, and the rewritten
    ``corrected_micrographs.star`` has one optics group each, with those values."""
    import json

    out = tmp_path / "out"
    a, b = _movie(tmp_path / "a.mrc", 1), _movie(tmp_path / "b.mrc", 2)
    assert _correct(a, "--dose-per-frame", 1, "--out", out, "--spherical-aberration", 1.4,
                    "--amplitude-contrast", 0.07) == 0
    assert _correct(b, "--dose-per-frame", 1, "--out", out) == 0

    assert json.loads((out / "a.motion.json").read_text())["optics"] == {
        "spherical_aberration_mm": 1.4, "amplitude_contrast": 0.07}
    assert json.loads((out / "b.motion.json").read_text())["optics"] == {
        "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}
    blocks = starfile.read(out / "corrected_micrographs.star", always_dict=True)
    optics = blocks["optics"].set_index("rlnOpticsGroup")
    group = dict(zip(blocks["micrographs"]["rlnMicrographMetadata"],
                     blocks["micrographs"]["rlnOpticsGroup"]))
    assert group == {"a.star": 1, "b.star": 2}
    assert optics.loc[1, "rlnSphericalAberration"] == 1.4
    assert optics.loc[1, "rlnAmplitudeContrast"] == 0.07
    assert optics.loc[2, "rlnSphericalAberration"] == 2.7
    assert optics.loc[2, "rlnAmplitudeContrast"] == 0.1


def test_the_daemon_records_its_cs_and_ac_in_each_motion_record(tmp_path):
    """``watch --spherical-aberration 1.4 --amplitude-contrast 0.07``: the movie's record
    keeps them, and the daemon's ``corrected_micrographs.star`` says them."""
    import json

    from service_run import run_until_idle  # tests/helpers

    from daemon.commands.watch import build_listeners
    from daemon.engine.service import Service
    from daemon.settings.config import load_config

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    _movie(watch / "spa.mrc", 3)
    config = load_config(_watch_args(watch, "--out", out, "--dose-per-frame", "1",
                                     "--settle-time", "0.1", "--scan-interval", "0.05",
                                     "--heartbeat", "0.2", "--exit-when-idle", "0.6",
                                     "--polling", "on", "--no-publish",
                                     "--spherical-aberration", "1.4",
                                     "--amplitude-contrast", "0.07"))
    listeners = [x for x in build_listeners(config) if type(x).__name__ == "RelionListener"]
    run_until_idle(Service(config, listeners=listeners), guard_s=60.0)

    assert json.loads((out / "spa.motion.json").read_text())["optics"] == {
        "spherical_aberration_mm": 1.4, "amplitude_contrast": 0.07}
    optics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["optics"]
    assert list(optics["rlnSphericalAberration"]) == [1.4]
    assert list(optics["rlnAmplitudeContrast"]) == [0.07]


def _watch_args(*argv):
    import argparse

    from daemon.commands import watch as service

    parser = argparse.ArgumentParser()
    service.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_a_bad_amplitude_contrast_fails_at_start_up_even_without_the_hand_off_files(tmp_path):
    """Cs and amplitude contrast go into every motion record, so they are checked with the rest
    of the configuration (every problem at once, no folder made), ``--handoff off`` or not."""
    import pytest

    from daemon.settings.config import ConfigError, load_config

    (tmp_path / "w").mkdir()
    toml = tmp_path / "c.toml"
    toml.write_text("amplitude_contrast = 1.5\nspherical_aberration = -1.0\nworkers = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(_watch_args(tmp_path / "w", "--out", tmp_path / "o", "--config", toml,
                                "--handoff", "off"))
    assert "amplitude_contrast must be in [0, 1), got 1.5" in str(err.value)
    assert "workers must be >= 1" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_each_tilt_gets_its_own_sections_target_defocus_after_serialem_sorts_the_mdoc_by_angle(
        tmp_path):
    """At the end of a dose-symmetric series SerialEM rewrites the mdoc sorted by angle, which
    renumbers its sections. The ZValue a tilt recorded during acquisition then names another
    tilt's section: with a defocus per tilt, ``rlnTomoNominalDefocus`` went to the wrong rows.
    The section is found by its ``SubFramePath`` file name instead (ZValue without names)."""
    from daemon.handoff.tomo import mdoc_facts

    sorted_by_angle = [(-3.0, "c.tif", -4.0), (0.0, "a.tif", -3.0), (3.0, "b.tif", -3.5)]
    text = "PixelSpacing = 1.5\nVoltage = 300\nImageFile = TS_01.mrc\n\n"
    text += "[T = SerialEM: Digitized on EMBL Krios   Tilt axis angle = 85.3, binning = 1]\n\n"
    for z, (angle, movie, defocus) in enumerate(sorted_by_angle):
        text += (f"[ZValue = {z}]\nTiltAngle = {angle}\nExposureDose = 3\n"
                 f"TargetDefocus = {defocus}\nSubFramePath = X:\\frames\\{movie}\n\n")
    mdoc = tmp_path / "TS_01.mrc.mdoc"
    mdoc.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    # acquisition order 0, +3, -3: ZValues 0, 1, 2 when each was corrected
    acquired = [("a.tif", 0.0), ("b.tif", 3.0), ("c.tif", -3.0)]
    entries = [TiltEntry(movie_motion(_record(name, 8), out / f"{Path(name).stem}.motion.json"),
                         TiltRecord(series="TS_01", movie=name, tilt_deg=angle,
                                    acquisition_index=i, dose_e_A2=3.0,
                                    pre_exposure_e_A2=3.0 * i, z_value=i))
               for i, (name, angle) in enumerate(acquired)]
    star = write_star(out / "TS_01.star",
                      {"TS_01": series_block(entries, out, OPTICS, mdoc_facts(mdoc))})
    rows = starfile.read(star)
    assert list(rows["rlnTomoNominalStageTiltAngle"]) == [0.0, 3.0, -3.0]
    assert list(rows["rlnTomoNominalDefocus"]) == [-3.0, -3.5, -4.0]
    # a section without a TargetDefocus: no column rather than an empty cell in RELION's table
    mdoc.write_text(text.replace("TargetDefocus = -3.5\n", ""))
    star = write_star(out / "TS_01.star",
                      {"TS_01": series_block(entries, out, OPTICS, mdoc_facts(mdoc))})
    assert "rlnTomoNominalDefocus" not in starfile.read(star).columns
