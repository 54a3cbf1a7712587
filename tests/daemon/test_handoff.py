"""Hand-off files read back with teamtomo's ``starfile`` and checked against the truth.

Truth: the motion records (``S.motion.json``), the simulated acquisition (its mdoc: angles,
doses, pre-exposures = the doses of the tilts acquired before), the files on disk, and a movie of
known motion. No RELION program runs here (ccpem-pipeliner installs but pulls in ~40 packages; it
was used once by hand, see the report), so the RELION source lines defining each column are
paraphrased here (3dem/relion):

* ``src/micrograph_model.cpp``, ``Micrograph::write``: block ``general`` (a list) holds
  rlnImageSizeX/Y/Z (Z = frame count), rlnMicrographMovieName, rlnMicrographBinning,
  rlnMicrographOriginalPixelSize, rlnMicrographDoseRate, rlnMicrographPreExposure, rlnVoltage,
  rlnMicrographStartFrame (1-indexed), rlnMotionModelVersion (0 = no local model); block
  ``global_shift`` one row per frame: rlnMicrographFrameNumber (frame + 1), rlnMicrographShiftX/Y;
  ``getShiftAt`` treats -9999 (NOT_OBSERVED) as a frame without a shift.
* ``src/motioncorr_runner.cpp``, ``generateLogFilePDFAndWriteStarFiles``: the cutoff frame is
  (dose_motionstats_cutoff - pre_exposure) / dose_per_frame; for each frame from 2 on whose shift
  is observed, the distance to the previous observed shift is added to the total, and to the
  early sum when the frame is <= the cutoff frame, else to the late sum; written as
  rlnAccumMotionTotal/Early/Late next to rlnMicrographName, rlnMicrographMetadata (the per-movie
  STAR), rlnOpticsGroup; the optics table gains rlnMicrographPixelSize = original x binning.
* ``src/tomography_python_programs/import_tilt_series/serialem.py``: ``data_global`` with
  rlnTomoName, rlnTomoTiltSeriesStarFile, rlnVoltage, rlnSphericalAberration,
  rlnAmplitudeContrast, rlnMicrographOriginalPixelSize, rlnTomoHand (-1 when the defocus
  handedness is inverted); per series a block named after it with rlnMicrographMovieName,
  rlnTomoTiltMovieFrameCount (NumSubFrames), rlnTomoTiltMovieIndex (1-based, time order),
  rlnTomoNominalStageTiltAngle, rlnTomoNominalTiltAxisAngle, rlnMicrographPreExposure,
  rlnTomoNominalDefocus (TargetDefocus).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from image_offset import displacement_yx_px  # tests/helpers
from service_run import run_until_idle  # tests/helpers

from correction.fourier import fourier_crop, irfft2, rfft2
from correction.params import CorrectionParams, DoseParams, ReadParams
from correction.pipeline import correct_movie
from correction.synthetic import render_movie
from daemon.engine.service import Service
from daemon.events import MovieEvent, MovieKey, NoMetadata
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import (MovieMotion, RelionOptics, accumulated_motion_px,
                                   motion_records_in, movie_motion, write_motion_star,
                                   write_single_particle_star)
from daemon.series.mdoc import read_mdoc
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively
from daemon.simulation.tilt_series import series_mdoc_text, simulate_tilt_series

SHAPE = (128, 128)
N_FRAMES = 4
PIXEL_A = 1.1
OPTICS = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.07, tomo_hand=-1)


def _motion(shifts_x, doses, pre):
    n = len(shifts_x)
    shifts = np.stack([np.asarray(shifts_x, float), np.zeros(n)], axis=1)
    return MovieMotion(motion_path=Path("m.motion.json"), movie=Path("/m.mrc"), shape_yx=(8, 8),
                       frames_in_movie=n, first_frame=1, shifts_px=shifts,
                       frame_doses_e_A2=np.asarray(doses, float), pre_exposure_e_A2=pre,
                       voltage_kV=300.0, movie_pixel_size_A=1.0, output_pixel_size_A=1.0,
                       bin_factor=1.0, outputs={})


def test_accumulated_motion_splits_early_and_late_at_relions_dose_cutoff():
    # dose 1 per frame, pre-exposure 1.5: frame f ends at 1.5 + f e/Å²; cutoff 4 -> f <= 2.5
    m = _motion([0, 1, 3, 6, 10], [1] * 5, 1.5)
    assert accumulated_motion_px(m, dose_cutoff_e_A2=4.0) == pytest.approx((10.0, 1.0, 9.0))
    # a late tilt (pre-exposure above the cutoff): all motion is late, as RELION counts it
    assert accumulated_motion_px(_motion([0, 1, 3], [1] * 3, 20.0)) == pytest.approx((3, 0, 3))
    # a frame without a shift (thrown) is skipped; the next step is from the last observed one
    m = _motion([0, 1, 3, 6], [1] * 4, 0.0)
    m.shifts_px[2] = np.nan
    assert accumulated_motion_px(m, dose_cutoff_e_A2=100.0) == pytest.approx((6, 6, 0))


def test_an_eers_fraction_of_leftover_raw_frames_adds_no_motion_as_relion_lists_it_not():
    """100 raw frames in groups of 40: motionwatch sums 40, 40 and a fraction of the 20 left;
    RELION renders 100 // 40 = 2 fractions, and ``S.star`` lists those two. The step into the
    third was counted in ``rlnAccumMotionTotal`` (4.83 px against RELION's 2.80)."""
    m = dataclasses.replace(_motion([0, 2.8, 4.83], [2.0, 2.0, 1.0], 0.0), eer_grouping=40,
                            eer_raw_frames=100, eer_upsampling=1)
    assert accumulated_motion_px(m, dose_cutoff_e_A2=100.0) == pytest.approx((2.8, 2.8, 0.0))
    plain = _motion([0, 2.8, 4.83], [2.0, 2.0, 1.0], 0.0)  # three frames of an MRC: all count
    assert accumulated_motion_px(plain, dose_cutoff_e_A2=100.0)[0] == pytest.approx(4.83)


def test_accumulated_motion_of_a_long_walk_with_thrown_frames_follows_relions_rule():
    """60 frames of a random 2-D walk, some frames without a shift (the first two among
    them): every step between consecutive observed frames counts, a step into frame f is early
    when the dose at the end of frame f is at most the cutoff, and the first observed frame
    adds nothing, whatever its shift (RELION's own output has it at 0: its origin)."""
    rng = np.random.default_rng(3)
    m = _motion(np.zeros(60), [0.5] * 60, 1.0)
    m.shifts_px[:] = np.cumsum(rng.normal(0, 0.7, (60, 2)), axis=0)
    m.shifts_px[[0, 1, 17, 18, 40]] = np.nan
    dose_at_end = 1.0 + 0.5 * np.arange(1, 61)
    total = early = late = 0.0
    last = m.shifts_px[2]
    for f in range(60):
        if not np.isfinite(m.shifts_px[f]).all():
            continue
        step = float(np.linalg.norm(m.shifts_px[f] - last))
        total += step
        if dose_at_end[f] <= 4.0:
            early += step
        else:
            late += step
        last = m.shifts_px[f]
    assert accumulated_motion_px(m, dose_cutoff_e_A2=4.0) == pytest.approx((total, early, late))


def test_motion_star_shifts_bring_each_frame_onto_the_written_micrograph_in_unbinned_pixels(
        tmp_path):
    """A movie with a known drift of ~12 px, binned 2x, first frame thrown. Polishing puts a
    particle picked at ``p`` on the micrograph at ``p - shift(f)`` in frame ``f``: the shift is
    where the micrograph sits minus where frame ``f``'s content sits, measured here on
    ``S.mrc`` against the truth. Before, frame 2 (the first summed) was taken as 0 as in
    RELION's own output, whose sum is made at that frame; motionwatch's sits at the frames'
    mean, and every track was off by about 5.5 px."""
    rng = np.random.default_rng(5)
    n = 8
    t = np.arange(n, dtype=float)
    truth_yx = np.stack([-0.9 * t, 1.6 * t], axis=1)  # [dy, dx] displacement, unbinned px
    movie = render_movie(rng, shape_yx=(256, 256), n_frames=n, shifts_yx_px=truth_yx,
                         electrons_per_px_per_frame=4.0, gain=None, n_hot_pixels=0,
                         pixel_size_A=1.3, contrast=1.0)
    path = tmp_path / "known.mrc"
    write_movie_progressively(path, movie.frames, pixel_size_A=1.3, frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(bin_factor=2.0, throw_frames=1))
    result = correct_movie(path, tmp_path / "out", params, workers=1)
    motion = movie_motion(result.record, result.outputs["motion"])
    star_path = write_motion_star(motion)
    assert star_path == tmp_path / "out" / "known.star"
    blocks = starfile.read(star_path, always_dict=True)
    general, shifts = blocks["general"], blocks["global_shift"]
    assert general["rlnImageSizeX"] == 256 and general["rlnImageSizeY"] == 256
    assert general["rlnImageSizeZ"] == n and general["rlnMicrographStartFrame"] == 2
    assert general["rlnMicrographBinning"] == pytest.approx(2.0)
    assert general["rlnMicrographOriginalPixelSize"] == pytest.approx(1.3)
    assert general["rlnMicrographMovieName"] == str(path)
    assert general["rlnMotionModelVersion"] == 0
    assert list(shifts["rlnMicrographFrameNumber"]) == list(range(1, n + 1))
    # the thrown frame held at the first summed one's shift: RELION's getShiftAt takes a frame
    # before the first observed one as 0 (its own origin), 4+ px off here (it was -9999)
    assert shifts["rlnMicrographShiftX"][0] == shifts["rlnMicrographShiftX"][1]
    assert shifts["rlnMicrographShiftY"][0] == shifts["rlnMicrographShiftY"][1]
    # where the written micrograph sits, in unbinned pixels: against the truth binned as it is
    with mrcfile.open(result.outputs["sum"]) as mrc:
        micrograph = mrc.data.astype(np.float64)
    truth_binned = irfft2(fourier_crop(rfft2(movie.truth), (256, 256), (128, 128)), (128, 128))
    at_yx = 2.0 * displacement_yx_px(micrograph[16:112, 16:112], truth_binned[16:112, 16:112])
    expected = at_yx - truth_yx[1:]  # [y, x] shift to apply onto the micrograph
    assert np.hypot(*expected[0]) > 4.0  # the first summed frame's is far from 0
    np.testing.assert_allclose(shifts["rlnMicrographShiftX"][1:], expected[:, 1], atol=0.15)
    np.testing.assert_allclose(shifts["rlnMicrographShiftY"][1:], expected[:, 0], atol=0.15)
    total = float(np.hypot(*np.diff(expected, axis=0).T).sum())
    assert accumulated_motion_px(motion, dose_cutoff_e_A2=0.0)[0] == pytest.approx(total, abs=1.0)


def test_a_simple_blocks_floats_are_written_to_six_decimals_as_its_loops_are(tmp_path):
    """``rlnMicrographDoseRate 0.49999999999999994``: a mean of per-frame doses written with
    every digit of its float noise, unlike the loops' 6 decimals (RELION's own %12.6f)."""
    from daemon.handoff.relion import write_star

    dose_rate = 1.5 / 3.0000000000000004  # 0.49999999999999994
    path = write_star(tmp_path / "m.star", {"general": {"rlnMicrographDoseRate": dose_rate,
                                                        "rlnVoltage": 300.0}})
    text = path.read_text()
    assert "0.49999999999999" not in text
    assert starfile.read(path)["rlnMicrographDoseRate"] == pytest.approx(0.5, abs=1e-12)


def test_single_particle_star_lists_each_movie_once_with_its_records_values(tmp_path):
    rng = np.random.default_rng(7)
    out = tmp_path / "out"
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.2))
    for i in range(3):
        m = render_movie(rng, shape_yx=SHAPE, n_frames=N_FRAMES, gain=None, n_hot_pixels=0,
                         pixel_size_A=PIXEL_A)
        write_movie_progressively(tmp_path / f"mic_{i}.mrc", m.frames, pixel_size_A=PIXEL_A,
                                  frame_interval_s=0)
        correct_movie(tmp_path / f"mic_{i}.mrc", out, params, workers=1)
    for _ in range(2):  # written twice (a second `motionwatch correct` run): no duplicates
        star = write_single_particle_star(out, motion_records_in(out), OPTICS)
    assert star == out / "corrected_micrographs.star"
    blocks = starfile.read(star, always_dict=True)
    optics, mics = blocks["optics"], blocks["micrographs"]
    assert list(optics["rlnOpticsGroupName"]) == ["optics1"]
    assert optics["rlnMicrographOriginalPixelSize"][0] == pytest.approx(PIXEL_A)
    assert optics["rlnMicrographPixelSize"][0] == pytest.approx(PIXEL_A)
    assert optics["rlnSphericalAberration"][0] == pytest.approx(2.7)
    assert optics["rlnAmplitudeContrast"][0] == pytest.approx(0.07)
    assert optics["rlnVoltage"][0] == pytest.approx(300.0)
    assert len(mics) == 3
    for _, row in mics.iterrows():
        stem = Path(row["rlnMicrographName"]).name.removesuffix("_DW.mrc")
        # each sum by its own name, relative to the project folder (RELION's CTF job reads
        # NoDW when told to use the sums without dose weighting)
        assert [row[f"rlnMicrographName{kind}"] for kind in ("", "NoDW", "Even", "Odd")] == [
            f"{stem}_DW.mrc", f"{stem}.mrc", f"{stem}_EVN.mrc", f"{stem}_ODD.mrc"]
        for label in ("rlnMicrographName", "rlnMicrographNameNoDW", "rlnMicrographNameEven",
                      "rlnMicrographNameOdd", "rlnMicrographMetadata"):
            assert (out / row[label]).is_file(), label
        record = next(r for p, r in motion_records_in(out) if p.name == f"{stem}.motion.json")
        steps = np.hypot(*np.diff(np.asarray(record["global_shifts_px"]), axis=0).T)
        assert row["rlnAccumMotionTotal"] == pytest.approx(steps.sum(), abs=1e-3)  # bin 1
        # 1.2 e/Å² per frame, cutoff 4: frames 2 and 3 are early (1.2 x 3 = 3.6 <= 4)
        assert row["rlnAccumMotionEarly"] == pytest.approx(steps[:2].sum(), abs=1e-3)
        assert row["rlnAccumMotionLate"] == pytest.approx(steps[2:].sum(), abs=1e-3)
        assert row["rlnOpticsGroup"] == 1


# --- a tilt series written live, with a restart ------------------------------------------


def _run(watch: Path, out: Path, listener: RelionListener, *, guard_s: float = 60.0) -> None:
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=0.6, polling="on")
    run_until_idle(Service(config, listeners=[listener],
                           resolver=TiltSeriesResolver(SeriesConfig(), mode="on")),
                   guard_s=guard_s)


def _acquire(staging: Path):
    staging.mkdir()
    return simulate_tilt_series(staging, rng=np.random.default_rng(11), n_tilts=6,
                                shape_yx=SHAPE, n_frames=N_FRAMES, pixel_size_A=PIXEL_A,
                                frame_interval_s=0, tilt_interval_s=0, sleep=lambda s: None)


def _deliver(staging: Path, watch: Path, tilts, upto: int, *, finished: bool) -> None:
    """What SerialEM has written after ``upto`` tilts: their movies, the mdoc listing them, and
    the ``.openTS`` lock until the series is finished."""
    for t in tilts[:upto]:
        if not (watch / t.movie.path.name).exists():
            shutil.copy2(t.movie.path, watch / t.movie.path.name)
    text = series_mdoc_text("TS_01", tilts[:upto], pixel_size_A=PIXEL_A, shape_yx=SHAPE,
                            n_frames=N_FRAMES)
    (watch / "TS_01.mrc.mdoc").write_text(text)
    lock = watch / "TS_01.mrc.openTS"
    if finished:
        lock.unlink(missing_ok=True)
    else:
        lock.write_text("")


def _check_series_star(out: Path, watch: Path, tilts) -> None:
    glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
    assert list(glob["rlnTomoName"]) == ["TS_01"]
    assert glob["rlnTomoTiltSeriesStarFile"][0] == "TS_01/TS_01.star"
    assert glob["rlnMicrographOriginalPixelSize"][0] == pytest.approx(PIXEL_A)
    assert glob["rlnTomoTiltSeriesPixelSize"][0] == pytest.approx(PIXEL_A)
    assert glob["rlnSphericalAberration"][0] == pytest.approx(2.7)
    assert glob["rlnAmplitudeContrast"][0] == pytest.approx(0.07)
    assert glob["rlnTomoHand"][0] == -1 and glob["rlnVoltage"][0] == pytest.approx(300.0)
    assert glob["rlnOpticsGroupName"][0] == "optics1"
    table = starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]
    assert len(table) == len(tilts)  # one row per tilt: no duplicate after the restart
    mdoc = read_mdoc(watch / "TS_01.mrc.mdoc")
    for (_, row), t, section in zip(table.iterrows(), tilts, mdoc.sections):  # acquisition order
        assert row["rlnMicrographMovieName"] == str(watch / t.movie.path.name)
        assert row["rlnTomoTiltMovieIndex"] == t.acquisition_index + 1
        assert row["rlnTomoTiltMovieFrameCount"] == section.num_subframes == N_FRAMES
        assert row["rlnTomoNominalStageTiltAngle"] == pytest.approx(section.tilt_deg)
        assert row["rlnTomoNominalTiltAxisAngle"] == pytest.approx(85.3)  # the mdoc's title
        assert row["rlnMicrographPreExposure"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
        expected_pre = sum(s.exposure_dose_e_A2 for s in mdoc.sections[:t.acquisition_index])
        assert row["rlnMicrographPreExposure"] == pytest.approx(expected_pre, abs=1e-9)
        assert row["rlnTomoNominalDefocus"] == pytest.approx(-3.5)
        stem = t.movie.path.stem
        # the main image weighted as its halves are (S_EVN/S_ODD are dose-weighted)
        record = read_motion(out / f"{stem}.motion.json")
        assert row["rlnMicrographName"] == record["outputs"]["dw"] == f"{stem}_DW.mrc"
        assert row["rlnMicrographNameEven"] == f"{stem}_EVN.mrc"
        assert row["rlnMicrographNameOdd"] == f"{stem}_ODD.mrc"
        assert row["rlnMicrographMetadata"] == f"{stem}.star"
        for label in ("rlnMicrographName", "rlnMicrographNameEven", "rlnMicrographNameOdd",
                      "rlnMicrographMetadata"):
            assert (out / row[label]).is_file()
        record = read_motion(out / f"{stem}.motion.json")
        assert record["tilt"]["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2)
        steps = np.hypot(*np.diff(np.asarray(record["global_shifts_px"]), axis=0).T)
        assert row["rlnAccumMotionTotal"] == pytest.approx(steps.sum(), abs=1e-3)
        # RELION's cutoff counts the pre-exposure: only the first tilt can have early motion
        dose_end = t.pre_exposure_e_A2 + np.cumsum(record["dose"]["per_frame_e_A2"])[1:]
        assert row["rlnAccumMotionEarly"] == pytest.approx(steps[dose_end <= 4.0].sum(), abs=1e-3)
        assert row["rlnAccumMotionLate"] == pytest.approx(steps[dose_end > 4.0].sum(), abs=1e-3)
        general = starfile.read(out / f"{stem}.star", always_dict=True)["general"]
        assert general["rlnMicrographPreExposure"] == pytest.approx(t.pre_exposure_e_A2)


def test_a_tilt_of_another_pixel_size_is_left_out_of_the_stacks_and_the_series_star_alike(
        tmp_path):
    """Two tilts whose headers say another pixel size (another magnification) were stacked with
    the others under the first tilt's pixel size, and listed in the series STAR: a
    reconstruction of mixed magnifications, with no word. Both now leave them out."""
    import mrcfile

    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    out.mkdir()
    tilts = _acquire(staging)
    odd = [tilts[1], tilts[4]]
    for t in odd:
        with mrcfile.open(t.movie.path, mode="r+") as mrc:
            mrc.voxel_size = 1.2 * PIXEL_A
    _deliver(staging, watch, tilts, len(tilts), finished=True)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                    exit_when_idle_s=1.5, polling="on")
    run_until_idle(Service(config, listeners=[RelionListener(OPTICS)], resolver=(
        TiltSeriesResolver(SeriesConfig(mdoc_quiet_s=0.3), mode="on"))), guard_s=60)
    table = starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]
    kept = [t for t in tilts if t not in odd]
    assert list(table["rlnMicrographMovieName"]) == [str(watch / t.movie.path.name)
                                                     for t in kept]
    with mrcfile.open(out / "TS_01" / "TS_01.mrc", header_only=True) as mrc:
        assert int(mrc.header.nz) == len(kept)
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL_A)


def read_motion(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_tilt_series_star_files_are_written_live_and_a_restart_updates_rows_without_duplicates(
        tmp_path):
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    out.mkdir()
    tilts = _acquire(staging)
    _deliver(staging, watch, tilts, 3, finished=False)
    _run(watch, out, RelionListener(OPTICS))  # first run: three tilts, series still open
    _check_series_star(out, watch, tilts[:3])
    assert not (out / "TS_01" / "TS_01.mrc").exists()  # not assembled yet
    _deliver(staging, watch, tilts, len(tilts), finished=True)
    _run(watch, out, RelionListener(OPTICS))  # restart: a new listener seeded from the ledger
    _check_series_star(out, watch, tilts)
    folder = out / "TS_01"
    # AreTomo3 -Cmd 1 with TS_01.mrc.mdoc: name TS_01.mrc -> the weighted stack, its halves
    # (weighted alike) and the tilt table, in aretomo3/
    stack = folder / "TS_01.mrc"
    angles_in_stack_order = sorted(tilts, key=lambda t: t.tilt_deg)
    for suffix, target in zip(ARETOMO_SUFFIXES, ARETOMO_TARGETS):
        assert os.path.samefile(folder / "aretomo3" / f"TS_01.mrc{suffix}", folder / target)
    _only_the_mdocs_set(folder)
    lines = [line.split() for line in (folder / "TS_01_TLT.txt").read_text().splitlines()]
    assert len(lines) == len(tilts)
    for (angle, acq, dose), t in zip(lines, angles_in_stack_order):
        assert float(angle) == pytest.approx(t.tilt_deg, abs=0.005)
        assert int(acq) == t.acquisition_index + 1
        assert float(dose) == pytest.approx(t.dose_e_A2, abs=5e-5)
    # IMOD: TS_01.st is the stack, TS_01.rawtlt its angles
    assert os.path.samefile(folder / "TS_01.st", stack)
    rawtlt = [float(a) for a in (folder / "TS_01.rawtlt").read_text().split()]
    assert rawtlt == pytest.approx([t.tilt_deg for t in angles_in_stack_order], abs=0.005)
    # Warp: average/, average/even, average/odd are the sums; one .xml per movie
    for t in tilts:
        stem = t.movie.path.stem
        assert os.path.samefile(out / "average" / f"{stem}.mrc", out / f"{stem}_DW.mrc")
        assert os.path.samefile(out / "average" / "even" / f"{stem}.mrc", out / f"{stem}_EVN.mrc")
        assert os.path.samefile(out / "average" / "odd" / f"{stem}.mrc", out / f"{stem}_ODD.mrc")
        # read as Warp's Movie.LoadMeta reads it: DataDirectory/<movie file name> is the movie
        root = ET.parse(out / f"{stem}.xml").getroot()
        assert root.tag == "Movie"
        movie = Path(root.get("DataDirectory"), t.movie.path.name)
        assert movie.is_absolute() and movie.resolve() == (watch / t.movie.path.name).resolve()
    assert not (out / "corrected_micrographs.star").exists()  # no movie outside the series
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left


ARETOMO_SUFFIXES = (".mrc", "_EVN.mrc", "_ODD.mrc", "_TLT.txt")
ARETOMO_TARGETS = ("TS_01_DW.mrc", "TS_01_EVN.mrc", "TS_01_ODD.mrc", "TS_01_TLT.txt")


def _only_the_mdocs_set(folder: Path) -> None:
    """``aretomo3/`` holds one set, under the mdoc's AreTomo3 name: before, the assembly also
    linked one under the series name (``TS_01.mrc``, ``TS_01_EVN.mrc``...), which AreTomo3 run
    over the folder takes for a second tilt series."""
    assert sorted(p.name for p in (folder / "aretomo3").iterdir()) == sorted(
        f"TS_01.mrc{suffix}" for suffix in ARETOMO_SUFFIXES)


def _lose_state_database(out: Path) -> None:
    """The state database and its WAL files deleted (a cleanup script, a new disk)."""
    for path in out.glob("motionwatch.sqlite*"):
        path.unlink()


def test_a_restart_links_the_aretomo3_names_a_kill_after_assembly_left_missing(tmp_path):
    """A service killed after a series was assembled (the ledger says complete) and before the
    listener linked the AreTomo3 names: the next start links them, though no ``completed``
    event comes again."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    out.mkdir()
    tilts = _acquire(staging)
    _deliver(staging, watch, tilts, 3, finished=False)  # SerialEM's lock seen, then gone:
    _run(watch, out, RelionListener(OPTICS))
    _deliver(staging, watch, tilts, len(tilts), finished=True)
    _run(watch, out, RelionListener(OPTICS))  # the series is complete
    folder = out / "TS_01"
    for suffix in ARETOMO_SUFFIXES:  # as if killed before the listener heard "completed"
        (folder / "aretomo3" / f"TS_01.mrc{suffix}").unlink()
    stack = (folder / "TS_01.mrc").stat()
    _run(watch, out, RelionListener(OPTICS))
    again = (folder / "TS_01.mrc").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stack.st_ino, stack.st_mtime_ns)  # not redone
    for suffix, target in zip(ARETOMO_SUFFIXES, ARETOMO_TARGETS):
        assert os.path.samefile(folder / "aretomo3" / f"TS_01.mrc{suffix}", folder / target)


def test_a_series_in_a_sub_folder_gets_its_aretomo3_names_beside_its_stacks(tmp_path):
    """``grid2/TS_01.mrc.mdoc`` (series ``grid2/TS_01``): stacks in ``OUT/grid2/TS_01/``, and
    the AreTomo3 names of its mdoc linked in its ``aretomo3/``."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    (watch / "grid2").mkdir(parents=True)
    out.mkdir()
    tilts = _acquire(staging)
    _deliver(staging, watch / "grid2", tilts, 3, finished=False)
    _run(watch, out, RelionListener(OPTICS))
    _deliver(staging, watch / "grid2", tilts, len(tilts), finished=True)
    _run(watch, out, RelionListener(OPTICS))
    folder = out / "grid2" / "TS_01"
    for suffix, target in zip(ARETOMO_SUFFIXES, ARETOMO_TARGETS):
        assert os.path.samefile(folder / "aretomo3" / f"TS_01.mrc{suffix}", folder / target)
    _only_the_mdocs_set(folder)


def test_tilts_adopted_after_the_state_database_was_lost_stay_in_the_series_star(tmp_path):
    """The state database lost mid-series: the tilts corrected before are adopted from their
    outputs on disk, and the series STAR written as the next tilts arrive lists them too."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    out.mkdir()
    tilts = _acquire(staging)
    _deliver(staging, watch, tilts, 3, finished=False)
    _run(watch, out, RelionListener(OPTICS))
    _lose_state_database(out)
    _deliver(staging, watch, tilts, len(tilts), finished=False)
    _run(watch, out, RelionListener(OPTICS))
    _check_series_star(out, watch, tilts)  # all six rows, the three adopted ones included


def _single_particle_session(tmp_path: Path, seed: int) -> tuple[Path, Config]:
    """Two single-particle movies in a watch folder; the output folder and a quick config."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(2):
        m = render_movie(rng, shape_yx=SHAPE, n_frames=N_FRAMES, gain=None, n_hot_pixels=0,
                         pixel_size_A=PIXEL_A)
        write_movie_progressively(watch / f"spa_{i}.mrc", m.frames, pixel_size_A=PIXEL_A,
                                  frame_interval_s=0)
    return out, Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                       settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                       exit_when_idle_s=0.6, polling="on")


def _warp_ts_import(mdocs: Path, frameseries: Path) -> dict[str, list[tuple[float, str]]]:
    """What WarpTools ``ts_import --mdocs MDOCS --frameseries FRAMESERIES`` would import, read
    as its ``ImportTiltseries.cs`` reads (warpem/warp): every ``*.mdoc`` of MDOCS (not below);
    the tilt axis from a ``Tilt axis angle = A,`` line; each ``[ZValue = n]`` section up to a
    blank line, its movie the ``SubFramePath`` name after the last slash or backslash, which
    must have ``<root>.xml`` and ``average/<root>.mrc`` in FRAMESERIES, and a ``DateTime`` of
    ``dd-MMM-yy[yy]  HH:mm:ss``; any fault fails the whole series. Returns, per ``.tomostar``
    name, its tilts ``(angle, movie)`` in time order."""
    import datetime as dt

    roots = {p.stem for p in frameseries.glob("*.xml")}
    imported = {}
    for mdoc in sorted(mdocs.glob("*.mdoc")):
        lines, entries, axis_found = mdoc.read_text().splitlines(), [], False
        for i, line in enumerate(lines):
            axis_found |= "Tilt axis angle = " in line
            if line[1:7] != "ZValue":
                continue
            fields = {}
            for following in lines[i + 1:]:
                key, sep, value = following.partition(" = ")
                if not sep:
                    break
                fields[key] = value
            name = re.split(r"[/\\]", fields["SubFramePath"])[-1]
            root = name.rsplit(".", 1)[0]
            assert root in roots, f"{mdoc.name}: frame series not found: {name}"
            assert (frameseries / "average" / f"{root}.mrc").is_file()
            when = dt.datetime.strptime(fields["DateTime"], "%d-%b-%Y  %H:%M:%S")
            entries.append((when, float(fields["TiltAngle"]), name))
        assert axis_found and entries
        name = mdoc.name.replace(".mrc.mdoc", ".mdoc").rsplit(".", 1)[0]
        imported[name] = [(angle, movie) for _, angle, movie in sorted(entries)]
    return imported


def test_warp_imports_a_series_with_a_lost_tilt_from_the_mdocs_motionwatch_writes(tmp_path):
    """A tilt listed in the session's mdoc whose movie never came failed Warp's ts_import for
    the whole series ("At least one of the referenced frame series could not be found"), the
    README's command pointing at the session's mdocs. warp_mdocs/ holds an mdoc per series
    that lists the tilts of its stacks alone."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    watch.mkdir()
    out.mkdir()
    tilts = _acquire(staging)
    _deliver(staging, watch, tilts, len(tilts), finished=True)
    lost = tilts[3]
    (watch / lost.movie.path.name).unlink()
    _run(watch, out, RelionListener(OPTICS))
    with pytest.raises(AssertionError, match="frame series not found"):
        _warp_ts_import(watch, out)  # the session's own mdoc
    imported = _warp_ts_import(out / "warp_mdocs", out)
    expected = sorted((t.acquisition_index, t.tilt_deg, t.movie.path.name) for t in tilts
                      if t is not lost)
    assert list(imported) == ["TS_01"]
    assert imported["TS_01"] == [(angle, name) for _, angle, name in expected]


def _run_single_particle(config: Config) -> None:
    """One run of the service with the hand-off listener, until idle (60 s guard)."""
    run_until_idle(Service(config, listeners=[RelionListener(OPTICS)], resolver=NoMetadata()))


def test_single_particle_movies_in_the_daemon_fill_corrected_micrographs_star(tmp_path):
    out, config = _single_particle_session(tmp_path, seed=3)
    for _ in range(2):  # and once more: the restart rewrites the same two rows
        _run_single_particle(config)
        mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
        assert sorted(mics["rlnMicrographName"]) == ["spa_0_DW.mrc", "spa_1_DW.mrc"]
        assert all(math.isfinite(v) for v in mics["rlnAccumMotionTotal"])
    assert not (out / "corrected_tilt_series.star").exists()


def test_the_folders_micrographs_star_is_rewritten_at_most_every_ten_seconds_and_at_the_stop(
        tmp_path, monkeypatch):
    """It lists every movie of the folder: rewritten after each movie, a night of 5,000 movies
    cost minutes of the main loop. On a clock that stands still, it is written when the
    service is ready (with no movie yet: nothing to write) and once at the stop, with every
    movie; before, once per movie."""
    import daemon.handoff.listener as listener_module

    out, config = _single_particle_session(tmp_path, seed=4)
    written = []
    write = listener_module.write_star
    monkeypatch.setattr(listener_module, "write_star",
                        lambda path, blocks, **kw: written.append(Path(path).name) or
                        write(path, blocks, **kw))
    run_until_idle(Service(config, resolver=NoMetadata(),
                           listeners=[RelionListener(OPTICS, clock=lambda: 0.0)]))
    assert written == ["corrected_micrographs.star"]
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographName"]) == ["spa_0_DW.mrc", "spa_1_DW.mrc"]


def test_a_service_that_crashes_still_writes_the_folders_star_it_held_back(tmp_path,
                                                                          monkeypatch):
    """The listeners hear on_stopped (exit status 70) after a crash of the service loop too:
    the movies corrected since the last rewrite are in corrected_micrographs.star."""
    from daemon import exitcodes
    from daemon.events import ServiceListener

    out, config = _single_particle_session(tmp_path, seed=5)
    stopped = []

    class Crash(ServiceListener):
        def on_movie_done(self, event):
            stopped.append("done")

        def on_stopped(self, exit_status):
            stopped.append(exit_status)

    heartbeat = Service._heartbeat

    def crashing_heartbeat(self):
        if stopped.count("done") == 2:
            raise RuntimeError("a bug in the loop")
        heartbeat(self)

    monkeypatch.setattr(Service, "_heartbeat", crashing_heartbeat)
    service = Service(config, resolver=NoMetadata(),
                      listeners=[RelionListener(OPTICS, clock=lambda: 0.0), Crash()])
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        service.run()
    assert stopped[-1] == exitcodes.SOFTWARE
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographName"]) == ["spa_0_DW.mrc", "spa_1_DW.mrc"]


def test_movies_adopted_after_the_state_database_was_lost_stay_in_corrected_micrographs_star(
        tmp_path):
    """Outputs adopted after the state database was lost count as corrected movies: the STAR
    rewritten when a new movie is corrected still lists them."""
    out, config = _single_particle_session(tmp_path, seed=6)
    _run_single_particle(config)
    _lose_state_database(out)
    m = render_movie(np.random.default_rng(9), shape_yx=SHAPE, n_frames=N_FRAMES, gain=None,
                     n_hot_pixels=0, pixel_size_A=PIXEL_A)
    write_movie_progressively(config.watch_dir / "spa_2.mrc", m.frames, pixel_size_A=PIXEL_A,
                              frame_interval_s=0)
    _run_single_particle(config)
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographName"]) == ["spa_0_DW.mrc", "spa_1_DW.mrc", "spa_2_DW.mrc"]


def test_a_movie_named_in_another_charset_is_listed_under_its_name_on_disk(tmp_path):
    """A file name that is not UTF-8 (``Grid_µm_café.mrc`` in Latin-1, from a share mounted
    with another iocharset): its motion STAR and its row in corrected_micrographs.star name the
    files by their bytes on disk, so RELION finds them."""
    out, config = _single_particle_session(tmp_path, seed=10)
    raw = b"Grid_\xb5m_caf\xe9"
    os.rename(config.watch_dir / "spa_1.mrc",
              os.path.join(os.fsencode(config.watch_dir), raw + b".mrc"))
    _run_single_particle(config)
    lines = (out / "corrected_micrographs.star").read_bytes().splitlines()
    rows = [line.split() for line in lines if line.split()[:1] and
            line.split()[0].endswith(b"_DW.mrc")]
    names = sorted(row[0] for row in rows)
    assert names == [raw + b"_DW.mrc", b"spa_0_DW.mrc"]
    row = next(r for r in rows if r[0].startswith(raw))
    for name in row:
        if name.endswith((b".mrc", b".star")):
            assert os.path.isfile(os.path.join(os.fsencode(out), name)), name
    motion_star = os.path.join(os.fsencode(out), raw + b".star")
    movie = os.path.join(os.fsencode(config.watch_dir), raw + b".mrc")
    assert movie in open(motion_star, "rb").read().split()  # rlnMicrographMovieName


def _table(path: Path) -> list[str]:
    """A STAR file's lines without starfile's "# Created ... at <time>" line."""
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_a_restart_writes_the_per_movie_files_a_kill_left_unwritten(tmp_path):
    """A service killed after the ledger recorded a movie done and before the listener wrote
    its motion STAR and Warp xml: the next start writes them (no later event would)."""
    out, config = _single_particle_session(tmp_path, seed=5)

    _run_single_particle(config)
    star, xml = out / "spa_0.star", out / "spa_0.xml"
    written = _table(star)
    star.unlink()  # as if killed before the listener heard of spa_0
    xml.unlink()
    untouched = (out / "spa_1.star").stat().st_mtime_ns
    _run_single_particle(config)
    assert _table(star) == written and xml.exists()
    assert (out / "spa_1.star").stat().st_mtime_ns == untouched  # present files are left alone


def test_a_restart_renews_the_per_movie_files_a_kill_during_a_redo_left_stale(tmp_path):
    """A movie corrected again (new settings), the service killed after its new record and
    before the listener rewrote its motion STAR and Warp halves: the STAR kept the old
    correction's values and ``average/even|odd`` the old halves, as both were present."""
    import shutil

    out, config = _single_particle_session(tmp_path, seed=5)

    _run_single_particle(config)
    star, record = out / "spa_0.star", out / "spa_0.motion.json"
    written = _table(star)
    stale = re.sub(r"(_rlnVoltage\s+)300\.0", r"\g<1>200.0", star.read_text())  # the old run's
    assert stale != star.read_text()
    star.write_text(stale)
    old = record.stat().st_mtime_ns - 10**9
    os.utime(star, ns=(old, old))
    even = out / "average" / "even" / "spa_0.mrc"
    shutil.copy(out / "spa_0_EVN.mrc", tmp_path / "old_EVN.mrc")
    even.unlink()
    os.link(tmp_path / "old_EVN.mrc", even)  # the old half, held by the link alone
    _run_single_particle(config)
    assert _table(star) == written
    assert os.path.samefile(even, out / "spa_0_EVN.mrc")


def test_polishing_gets_the_gain_as_mrc_in_the_movies_orientation_named_in_each_motion_star(
        tmp_path):
    """RELION's Bayesian polishing reads the gain named by ``rlnMicrographGainName`` (an MRC,
    multiplicative, in the movie's orientation): a gain stored turned (``-RotGain 1``) is written
    turned back."""
    import mrcfile

    from correction.params import GainParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(8)
    shape = (96, 128)  # non-square: a wrong orientation could not even fit
    m = render_movie(rng, shape_yx=shape, n_frames=N_FRAMES, gain=True, n_hot_pixels=0,
                     pixel_size_A=PIXEL_A)
    write_movie_progressively(watch / "spa_0.mrc", m.frames, pixel_size_A=PIXEL_A,
                              frame_interval_s=0)
    with mrcfile.new(tmp_path / "gain_turned.mrc") as mrc:  # as the camera stored it
        mrc.set_data(np.ascontiguousarray(np.rot90(m.gain, k=1)).astype(np.float32))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=tmp_path / "gain_turned.mrc",
                                              rotate_quarter_turns=1))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.6, polling="on")
    assert Service(config, listeners=[RelionListener(OPTICS)], resolver=NoMetadata()).run() == 0
    with mrcfile.open(out / "motionwatch_gain.mrc") as mrc:
        np.testing.assert_allclose(mrc.data, m.gain.astype(np.float32), rtol=1e-6)
    general = starfile.read(out / "spa_0.star", always_dict=True)["general"]
    assert general["rlnMicrographGainName"] == "motionwatch_gain.mrc"


def test_a_relion_gain_written_before_eer_gain_existed_is_found_again_not_written_beside_itself(
        tmp_path):
    """``GainParams`` gained ``eer_gain``; the stamp of a gain used as a multiplier (the
    default, as before) is the one the earlier version wrote into ``motionwatch_gain.mrc``, so
    a daemon restarted after the upgrade names the same file instead of writing a second copy
    (64 MB at 4K, 377 MB super-resolution) for its new movies."""
    import hashlib

    import mrcfile

    from correction.params import GainParams
    from correction.write import text_bytes
    from correction.gain_export import relion_gain_stamp, write_relion_gain

    gain_path = tmp_path / "gain.mrc"
    mrcfile.new(gain_path, data=np.ones((16, 16), np.float32)).close()
    params = GainParams(gain_path=gain_path)
    st = gain_path.stat()
    earlier_repr = ("GainParams(gain_path=" + repr(gain_path) + ", dark_path=None, "
                    "rotate_quarter_turns=0, flip='none', defects_path=None, "
                    "hot_pixel_sigma=8.0, detect_hot_pixels=True)")  # as the version before
    earlier = hashlib.sha256(text_bytes("\n".join(
        [earlier_repr, f"gain_path={gain_path.absolute()}:{st.st_size}:{st.st_mtime_ns}"]))
    ).hexdigest()[:16]
    assert relion_gain_stamp(params) == earlier
    assert relion_gain_stamp(GainParams(gain_path=gain_path, eer_gain="relion")) != earlier
    out = tmp_path / "out"
    out.mkdir()
    assert write_relion_gain(out, params) == out / "motionwatch_gain.mrc"
    assert write_relion_gain(out, GainParams(gain_path=gain_path)) == out / "motionwatch_gain.mrc"


def test_a_relion_gain_an_earlier_release_read_the_other_way_is_written_again(tmp_path,
                                                                             monkeypatch):
    """A DM4 or TIFF gain was read with its rows the other way before READING_CONVENTIONS 2:
    its stamp changes, so the gain RELION is given is written again as the movies are now
    corrected; an MRC gain, read as before, keeps its stamp (no second copy)."""
    import correction.gain_export as gain_export
    from correction.params import GainParams

    stamps = {}
    for suffix in (".dm4", ".tif", ".mrc"):
        path = tmp_path / f"gain{suffix}"
        path.write_bytes(b"x")
        now = gain_export.relion_gain_stamp(GainParams(gain_path=path))
        with monkeypatch.context() as patch:
            patch.setattr(gain_export, "READING_CONVENTIONS", 1)
            stamps[suffix] = now != gain_export.relion_gain_stamp(GainParams(gain_path=path))
    assert stamps == {".dm4": True, ".tif": True, ".mrc": False}


def test_the_relion_gain_is_written_again_only_when_the_gain_or_its_orientation_changes(
        tmp_path, monkeypatch):
    """A restart with the same gain leaves ``motionwatch_gain.mrc`` alone (a super-resolution
    gain takes seconds to load and 377 MB to write on every start); another orientation, or
    a gain file written anew, is written beside it under its own name, the first left as it
    was: the motion STARs of the movies corrected with the first still name it."""
    import mrcfile

    import correction.gain
    from correction.params import GainParams
    from correction.gain_export import relion_gain_names, write_relion_gain

    rng = np.random.default_rng(4)
    gain = rng.uniform(0.8, 1.2, (48, 64)).astype(np.float32)
    gain_path = tmp_path / "gain.mrc"
    with mrcfile.new(gain_path) as mrc:
        mrc.set_data(gain)
    out = tmp_path / "out"
    out.mkdir()
    upright = GainParams(gain_path=gain_path)
    written = write_relion_gain(out, upright)
    assert written == out / "motionwatch_gain.mrc"
    first = written.stat()

    def must_not_load(*args, **kwargs):
        raise AssertionError("the gain was loaded again for an unchanged file")

    with monkeypatch.context() as patch:
        patch.setattr(correction.gain, "load_gain_reference", must_not_load)
        assert write_relion_gain(out, upright) == written
    again = written.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    turned = GainParams(gain_path=gain_path, rotate_quarter_turns=1)
    second = write_relion_gain(out, turned)
    assert second == out / relion_gain_names(turned)[1] != written
    with mrcfile.open(second) as mrc:  # MotionCor2's -RotGain 1: numpy rot90(k=-1)
        np.testing.assert_array_equal(mrc.data, np.rot90(gain, k=-1))
    with mrcfile.open(written) as mrc:  # the first gain as it was
        np.testing.assert_array_equal(mrc.data, gain)
    with monkeypatch.context() as patch:  # each found again under its own name
        patch.setattr(correction.gain, "load_gain_reference", must_not_load)
        assert write_relion_gain(out, turned) == second
        assert write_relion_gain(out, upright) == written

    with mrcfile.new(gain_path, overwrite=True) as mrc:  # the same name, a new gain
        mrc.set_data(2 * gain)
    os.utime(gain_path, ns=(first.st_mtime_ns + 10**9, first.st_mtime_ns + 10**9))
    third = write_relion_gain(out, turned)
    assert third not in (written, second)
    with mrcfile.open(third) as mrc:
        np.testing.assert_allclose(mrc.data, np.rot90(2 * gain, k=-1), rtol=1e-6)
    with mrcfile.open(second) as mrc:
        np.testing.assert_array_equal(mrc.data, np.rot90(gain, k=-1))


def test_two_grids_with_the_same_series_name_get_one_relion_tilt_series_each(tmp_path):
    """``grid1/TS_01`` and ``grid2/TS_01``: each series STAR beside its stacks
    (``OUT/grid2/TS_01/TS_01.star``; it was written to ``OUT/grid2/grid2/TS_01/grid2/...``),
    and ``rlnTomoName`` (also the STAR's data block) without a ``/``, which RELION puts into
    file names (``rec_<name>.mrc``)."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    tilts = _acquire(staging)
    for finished in (False, True):  # SerialEM's lock seen, then gone
        for grid in ("grid1", "grid2"):
            (watch / grid).mkdir(parents=True, exist_ok=True)
            _deliver(staging, watch / grid, tilts, len(tilts), finished=finished)
        _run(watch, out, RelionListener(OPTICS))
    glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
    assert list(glob["rlnTomoName"]) == ["grid1_TS_01", "grid2_TS_01"]
    assert list(glob["rlnTomoTiltSeriesStarFile"]) == ["grid1/TS_01/TS_01.star",
                                                       "grid2/TS_01/TS_01.star"]
    for grid in ("grid1", "grid2"):
        (table,) = starfile.read(out / grid / "TS_01" / "TS_01.star", always_dict=True).items()
        assert table[0] == f"{grid}_TS_01"
        assert sorted(table[1]["rlnMicrographMovieName"]) == sorted(
            str(watch / grid / t.movie.path.name) for t in tilts)
        assert all((out / name).is_file() for name in table[1]["rlnMicrographName"])
    assert not (out / "grid1" / "grid1").exists() and not (out / "grid2" / "grid2").exists()


def test_a_series_named_like_another_grids_series_gets_a_relion_name_of_its_own(tmp_path):
    """``grid1/TS_01`` and a series ``grid1_TS_01`` in the watch folder itself: RELION finds a
    tomogram by ``rlnTomoName`` (the first row of that name), and both were ``grid1_TS_01``,
    so the second series' particles would be read against the first's tilts. The series named
    first keeps its name, across restarts (its STAR's data block says it); the one that comes
    later takes ``grid1_TS_01_2``, in the global table and as its STAR's data block. (The
    later one took the name, the first was renamed: a RELION job run on ``grid1_TS_01`` then
    pointed at the other series' tilts.)"""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    tilts = _acquire(staging)
    (watch / "grid1").mkdir(parents=True)
    for finished in (False, True):  # SerialEM's lock seen, then gone
        _deliver(staging, watch / "grid1", tilts, len(tilts), finished=finished)
        _run(watch, out, RelionListener(OPTICS))
    (block, _), = starfile.read(out / "grid1" / "TS_01" / "TS_01.star", always_dict=True).items()
    assert block == "grid1_TS_01"  # alone, it has the name

    for t in tilts:  # then the same tilts as the watch folder's own series grid1_TS_01
        shutil.copy2(t.movie.path, watch / f"grid1_{t.movie.path.name}")
    text = series_mdoc_text("grid1_TS_01", tilts, pixel_size_A=PIXEL_A, shape_yx=SHAPE,
                            n_frames=N_FRAMES)
    (watch / "grid1_TS_01.mrc.mdoc").write_text(text.replace("\\frames\\", "\\frames\\grid1_"))
    for lock in (True, False):
        if lock:
            (watch / "grid1_TS_01.mrc.openTS").write_text("")
        else:
            (watch / "grid1_TS_01.mrc.openTS").unlink()
        listener = RelionListener(OPTICS)
        _run(watch, out, listener)
        (block, _), = starfile.read(out / "grid1" / "TS_01" / "TS_01.star",
                                    always_dict=True).items()
        assert block == "grid1_TS_01"  # kept when the other series came (a new listener)

    def names_by_star() -> dict:
        glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
        return dict(zip(glob["rlnTomoTiltSeriesStarFile"], glob["rlnTomoName"]))

    by_star = names_by_star()
    assert by_star == {"grid1/TS_01/TS_01.star": "grid1_TS_01",
                       "grid1_TS_01/grid1_TS_01.star": "grid1_TS_01_2"}
    for star, name in by_star.items():
        (block, table), = starfile.read(out / star, always_dict=True).items()
        assert block == name and len(table) == len(tilts)
    # the watch folder's own series goes (its tilts quarantined on a redo): grid1/TS_01 has its
    # plain name still, in the global table and as its STAR's block alike
    for t in tilts:
        movie = watch / f"grid1_{t.movie.path.name}"
        listener.on_movie_failed(MovieEvent(path=movie, key=MovieKey(str(movie), 0, 0, "x"),
                                            status="quarantined", attempt=3))
    listener.on_stopped(0)
    assert names_by_star() == {"grid1/TS_01/TS_01.star": "grid1_TS_01"}
    (block, _), = starfile.read(out / "grid1" / "TS_01" / "TS_01.star", always_dict=True).items()
    assert block == "grid1_TS_01"


def test_relion_tomo_names_are_one_per_series_whatever_the_names():
    from daemon.handoff.tomo import relion_tomo_names

    assert relion_tomo_names(["grid2/TS_01", "TS_01", "grid1/TS_01"]) == {
        "grid2/TS_01": "grid2_TS_01", "TS_01": "TS_01", "grid1/TS_01": "grid1_TS_01"}
    names = relion_tomo_names(["a_b/c", "a/b_c", "a_b_c_2", "a_b_c"])
    assert names == {"a_b_c": "a_b_c", "a/b_c": "a_b_c_3", "a_b/c": "a_b_c_4",
                     "a_b_c_2": "a_b_c_2"}
    assert relion_tomo_names(reversed(list(names))) == names  # whatever the order given
    # names given before are kept: a series that comes later takes none of them
    assert relion_tomo_names(["a_b/TS_01", "a/b/TS_01"], {"a_b/TS_01": "a_b_TS_01"}) == {
        "a_b/TS_01": "a_b_TS_01", "a/b/TS_01": "a_b_TS_01_2"}
    assert relion_tomo_names(["a_b_c", "a/b_c"], {"a/b_c": "a_b_c"}) == {
        "a/b_c": "a_b_c", "a_b_c": "a_b_c_2"}  # the very name too
    assert relion_tomo_names(["x/y", "x_y"], {"x/y": "x_y", "x_y": "x_y"}) == {
        "x/y": "x_y", "x_y": "x_y_2"}  # one name kept twice (older files): once


# --- motionwatch correct: the gain, optics groups, EER -------------------------------------


def _correct(*argv) -> int:
    from daemon.commands.cli import main

    return main(["correct", *map(str, argv)])


def _mrc_movie(path: Path, rng, *, shape=SHAPE, gain=None, pixel_size_A=PIXEL_A) -> Path:
    m = render_movie(rng, shape_yx=shape, n_frames=N_FRAMES, gain=gain, n_hot_pixels=0,
                     pixel_size_A=pixel_size_A)
    write_movie_progressively(path, m.frames, pixel_size_A=pixel_size_A, frame_interval_s=0)
    return m


def test_the_movies_pixel_size_for_relion_is_its_own_under_a_non_integer_bin(tmp_path):
    """302 x 250 px at 0.85 Å binned by 1.5: the sums' pixel is 1.2767 Å (250 / 1.5 is no whole
    number of output pixels), and the movie's pixel RELION was told, output / 1.5, was
    0.851133 Å; it is the movie's, 0.85 Å, as its motion record keeps it."""
    _mrc_movie(tmp_path / "odd.mrc", np.random.default_rng(31), shape=(250, 302),
               pixel_size_A=0.85)
    out = tmp_path / "out"
    assert _correct(tmp_path / "odd.mrc", "--bin", 1.5, "--dose-per-frame", 1.0, "--out", out,
                    "--patches", 1, 1) == 0
    record = read_motion(out / "odd.motion.json")
    assert record["pixel_size_A"] != pytest.approx(0.85 * 1.5, rel=1e-4)  # not the nominal bin
    general = starfile.read(out / "odd.star", always_dict=True)["general"]
    assert general["rlnMicrographOriginalPixelSize"] == pytest.approx(0.85, rel=1e-6)
    optics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["optics"]
    assert list(optics["rlnMicrographOriginalPixelSize"]) == pytest.approx([0.85], rel=1e-6)
    assert list(optics["rlnMicrographPixelSize"]) == pytest.approx([record["pixel_size_A"]])


def test_correct_with_a_gain_names_it_in_each_motion_star_in_the_movies_orientation(tmp_path):
    """``correct --gain`` keeps the gain as polishing reads it, as ``watch`` does: an MRC in the
    movie's orientation (``-RotGain 1`` undone), named by ``rlnMicrographGainName`` in the
    movie's motion STAR (3dem/relion ``Micrograph::write``: written when a gain is set)."""
    import mrcfile

    rng = np.random.default_rng(21)
    shape = (96, 128)
    m = _mrc_movie(tmp_path / "g.mrc", rng, shape=shape, gain=True)
    with mrcfile.new(tmp_path / "gain_turned.mrc") as mrc:  # as the camera stored it
        mrc.set_data(np.ascontiguousarray(np.rot90(m.gain, k=1)).astype(np.float32))
    out = tmp_path / "out"
    assert _correct(tmp_path / "g.mrc", "--gain", tmp_path / "gain_turned.mrc",
                    "--gain-rotate", 1, "--dose-per-frame", 1.0, "--out", out) == 0
    general = starfile.read(out / "g.star", always_dict=True)["general"]
    name = general["rlnMicrographGainName"]
    assert name == "motionwatch_gain.mrc"
    with mrcfile.open(out / name) as mrc:
        np.testing.assert_allclose(mrc.data, m.gain.astype(np.float32), rtol=1e-6)


def test_correct_into_the_daemons_folder_keeps_the_daemons_gain_names_and_adds_its_own(
        tmp_path):
    """The daemon corrected ``spa_0`` with gain A (its STAR names ``motionwatch_gain.mrc``);
    ``correct`` then corrects ``other`` with gain B into the same folder. Before, ``correct``
    rewrote every STAR of the folder without a gain and wrote no gain file. Now the daemon's
    STAR is untouched, and ``other``'s names a file that holds gain B."""
    import mrcfile

    from correction.params import GainParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(22)
    a = _mrc_movie(watch / "spa_0.mrc", rng, gain=True)
    with mrcfile.new(tmp_path / "gain_a.mrc") as mrc:
        mrc.set_data(a.gain.astype(np.float32))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=tmp_path / "gain_a.mrc"))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.6, polling="on")
    assert Service(config, listeners=[RelionListener(OPTICS)], resolver=NoMetadata()).run() == 0
    daemon_star = (out / "spa_0.star").read_bytes()
    assert starfile.read(out / "spa_0.star", always_dict=True)["general"][
        "rlnMicrographGainName"] == "motionwatch_gain.mrc"

    b = _mrc_movie(tmp_path / "other.mrc", rng, gain=True)
    with mrcfile.new(tmp_path / "gain_b.mrc") as mrc:
        mrc.set_data(b.gain.astype(np.float32))
    assert _correct(tmp_path / "other.mrc", "--gain", tmp_path / "gain_b.mrc",
                    "--dose-per-frame", 1.0, "--out", out) == 0
    assert (out / "spa_0.star").read_bytes() == daemon_star
    with mrcfile.open(out / "motionwatch_gain.mrc") as mrc:  # the daemon's gain, as it was
        np.testing.assert_allclose(mrc.data, a.gain.astype(np.float32), rtol=1e-6)
    name = starfile.read(out / "other.star", always_dict=True)["general"][
        "rlnMicrographGainName"]
    assert name != "motionwatch_gain.mrc"
    with mrcfile.open(out / name) as mrc:
        np.testing.assert_allclose(mrc.data, b.gain.astype(np.float32), rtol=1e-6)
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographMetadata"]) == ["other.star", "spa_0.star"]


def test_each_micrograph_points_at_an_optics_group_with_its_own_pixel_size_and_voltage(
        tmp_path):
    """Movies of 1.1 Å at 300 kV, binned 2 (2.2 Å), and at 200 kV in one folder: one optics
    group per distinct optics (RELION's optics table: each micrograph's ``rlnOpticsGroup`` is
    the row with its pixel sizes and voltage); Cs and amplitude contrast from ``correct``'s
    options, named as ``watch``'s."""
    rng = np.random.default_rng(23)
    out = tmp_path / "out"
    for name in ("a", "b", "c", "d"):
        _mrc_movie(tmp_path / f"{name}.mrc", rng)
    common = ["--dose-per-frame", 1.0, "--out", out, "--spherical-aberration", 1.4,
              "--amplitude-contrast", 0.07]
    assert _correct(tmp_path / "a.mrc", tmp_path / "d.mrc", *common) == 0
    assert _correct(tmp_path / "b.mrc", "--bin", 2, *common) == 0
    assert _correct(tmp_path / "c.mrc", "--voltage", 200, *common) == 0
    blocks = starfile.read(out / "corrected_micrographs.star", always_dict=True)
    optics, mics = blocks["optics"], blocks["micrographs"]
    assert list(optics["rlnOpticsGroupName"]) == ["optics1", "optics2", "optics3"]
    assert list(optics["rlnOpticsGroup"]) == [1, 2, 3]
    assert list(optics["rlnSphericalAberration"]) == pytest.approx([1.4] * 3)
    assert list(optics["rlnAmplitudeContrast"]) == pytest.approx([0.07] * 3)
    by_id = {int(r["rlnOpticsGroup"]): r for _, r in optics.iterrows()}
    assert len(mics) == 4
    seen = set()
    for _, row in mics.iterrows():
        stem = Path(row["rlnMicrographMetadata"]).stem
        record = read_motion(out / f"{stem}.motion.json")
        group = by_id[int(row["rlnOpticsGroup"])]
        bin_factor = record["alignment"]["bin_factor"]
        assert group["rlnMicrographPixelSize"] == pytest.approx(record["pixel_size_A"])
        assert group["rlnMicrographOriginalPixelSize"] == pytest.approx(
            record["pixel_size_A"] / bin_factor)
        assert group["rlnVoltage"] == pytest.approx(record["voltage_kV"])
        seen.add(int(row["rlnOpticsGroup"]))
    assert seen == {1, 2, 3}
    a_group = mics.loc[mics["rlnMicrographMetadata"] == "a.star", "rlnOpticsGroup"].item()
    d_group = mics.loc[mics["rlnMicrographMetadata"] == "d.star", "rlnOpticsGroup"].item()
    assert a_group == d_group  # same optics, one group


def test_a_movie_of_new_optics_joining_a_folder_gets_the_next_group_and_the_first_keeps_its_own(
        tmp_path):
    """Groups are numbered in the order their first movie was corrected: a 200-kV movie after
    a 300-kV one is group 2, and the 300-kV movies stay in group 1 (numbered by ascending
    voltage, they moved to group 2, unlike what RELION jobs already run on the file read)."""
    rng = np.random.default_rng(25)
    out = tmp_path / "out"
    for name in ("a", "b"):
        _mrc_movie(tmp_path / f"{name}.mrc", rng)
    assert _correct(tmp_path / "a.mrc", "--dose-per-frame", 1.0, "--out", out) == 0
    before = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert list(before["rlnOpticsGroup"]) == [1]
    time.sleep(0.05)  # the second record is written later, whatever the clock's resolution
    assert _correct(tmp_path / "b.mrc", "--dose-per-frame", 1.0, "--voltage", 200,
                    "--out", out) == 0
    blocks = starfile.read(out / "corrected_micrographs.star", always_dict=True)
    group = dict(zip(blocks["micrographs"]["rlnMicrographMetadata"],
                     blocks["micrographs"]["rlnOpticsGroup"]))
    assert group == {"a.star": 1, "b.star": 2}
    voltage = dict(zip(blocks["optics"]["rlnOpticsGroup"], blocks["optics"]["rlnVoltage"]))
    assert voltage == pytest.approx({1: 300.0, 2: 200.0})


def test_correct_refuses_an_amplitude_contrast_outside_0_1_as_a_usage_error(tmp_path, capsys):
    from daemon import exitcodes

    _mrc_movie(tmp_path / "a.mrc", np.random.default_rng(24))
    assert _correct(tmp_path / "a.mrc", "--dose-per-frame", 1, "--out", tmp_path / "o",
                    "--amplitude-contrast", 1.5) == exitcodes.USAGE
    assert "amplitude_contrast" in capsys.readouterr().err


@pytest.mark.parametrize("n_raw, group, sampling", [(50, 12, 1), (45, 10, 1), (45, 10, 2)])
def test_the_motion_star_of_an_eer_movie_counts_fractions_as_relion_renders_them(
        tmp_path, n_raw, group, sampling):
    """3dem/relion ``Micrograph::write`` writes ``rlnEERUpsampling``/``rlnEERGrouping`` for an
    EER movie (``read`` takes -1 without them) and ``setMovie`` renders ``raw // grouping``
    fractions of ``upsampling`` x 4K. 50 raw frames in groups of 12: 4 fractions (the 2 left
    over join the last here; RELION drops them); 45 in groups of 10: 5 here (5 left over make
    one), 4 for RELION, whose rows only are written. Dose per frame = dose of one fraction."""
    from eer_writer import write_eer

    rng = np.random.default_rng(25)
    shape = (128, 128)
    frames = [np.flatnonzero(rng.random(shape[0] * shape[1]) < 0.05) for _ in range(n_raw)]
    movie = write_eer(tmp_path / "m.eer", frames, shape_yx=shape)
    out = tmp_path / "out"
    total = 0.2 * n_raw  # 0.2 e/Å² per raw frame
    assert _correct(movie, "--eer-group", group, "--eer-sampling", sampling, "--pixel-size",
                    0.9, "--total-dose", total, "--out", out) == 0
    record = read_motion(out / "m.motion.json")
    assert record["eer"]["raw_frames"] == n_raw and record["eer"]["sampling"] == sampling
    blocks = starfile.read(out / "m.star", always_dict=True)
    general, table = blocks["general"], blocks["global_shift"]
    assert general["rlnEERGrouping"] == group
    assert general["rlnEERUpsampling"] == sampling
    assert general["rlnImageSizeZ"] == n_raw // group == len(table)
    assert list(table["rlnMicrographFrameNumber"]) == list(range(1, n_raw // group + 1))
    assert general["rlnImageSizeX"] == shape[1] * sampling
    assert general["rlnImageSizeY"] == shape[0] * sampling
    assert general["rlnMicrographDoseRate"] == pytest.approx(0.2 * group)
    assert general["rlnMicrographStartFrame"] == 1
    if sampling == 1:  # a plain MRC movie has neither label
        _mrc_movie(tmp_path / "plain.mrc", rng)
        assert _correct(tmp_path / "plain.mrc", "--dose-per-frame", 1, "--out", out) == 0
        plain = starfile.read(out / "plain.star", always_dict=True)["general"]
        assert "rlnEERGrouping" not in plain and "rlnEERUpsampling" not in plain


@pytest.mark.parametrize("n_raw, fractions", [(50, [2.0, 2.0, 1.0]), (45, [2.0, 2.5])])
def test_eer_dose_per_frame_is_that_of_a_whole_group_whatever_is_left_over(
        tmp_path, n_raw, fractions):
    """``--dose-per-frame`` of an EER movie is the dose of one fraction of ``--eer-group`` raw
    frames (RELION's dose per frame): 2 e/Å² per 20 raw frames is 0.1 per raw frame, so 50 raw
    frames ([20, 20, 10] here) receive 5 e/Å² and 45 ([20, 25]) 4.5, by hand; and RELION is
    told 2 e/Å² per fraction. (They received 6 and 4: the value was taken as the dose of a
    fraction of the mean size.)"""
    from eer_writer import write_eer

    rng = np.random.default_rng(26)
    shape = (128, 128)
    frames = [np.flatnonzero(rng.random(shape[0] * shape[1]) < 0.05) for _ in range(n_raw)]
    movie = write_eer(tmp_path / "m.eer", frames, shape_yx=shape)
    out = tmp_path / "out"
    assert _correct(movie, "--eer-group", 20, "--pixel-size", 0.9, "--dose-per-frame", 2.0,
                    "--out", out) == 0
    record = read_motion(out / "m.motion.json")
    np.testing.assert_allclose(record["dose"]["per_frame_e_A2"], fractions, rtol=1e-9)
    general = starfile.read(out / "m.star", always_dict=True)["general"]
    assert general["rlnMicrographDoseRate"] == pytest.approx(2.0)


def _written_motion(folder, stem, pixel_A, mtime_s):
    """A motion of ``pixel_A`` Å whose record ``folder/stem.motion.json`` was written at
    ``mtime_s`` (the order of first movies goes by it)."""
    from dataclasses import replace

    path = folder / f"{stem}.motion.json"
    path.write_text("{}")
    os.utime(path, (mtime_s, mtime_s))
    return replace(_motion([0, 1], [1, 1], 0.0), motion_path=path, movie=folder / f"{stem}.mrc",
                   movie_pixel_size_A=pixel_A, output_pixel_size_A=pixel_A,
                   outputs={"dw": str(folder / f"{stem}_DW.mrc")})


def test_optics_groups_keep_their_numbers_when_a_movie_of_the_first_is_corrected_again(tmp_path):
    """0.85 Å movies were group 1, 1.0 Å group 2; one 0.85 Å movie corrected again (its record
    now the newest) swapped them: particles extracted from the first file would point at the
    other pixel size. The file written before keeps the numbers (also when the folder is
    copied without its times); a group left without movies gives its number up."""
    from daemon.handoff.relion import SINGLE_PARTICLE_STAR, single_particle_blocks, write_star

    a = _written_motion(tmp_path, "a", 0.85, 1000)
    b = _written_motion(tmp_path, "b", 1.0, 2000)

    def groups(motions):
        blocks = single_particle_blocks(tmp_path, motions, OPTICS)
        write_star(tmp_path / SINGLE_PARTICLE_STAR, blocks)
        optics = blocks["optics"]
        return dict(zip(optics["rlnMicrographOriginalPixelSize"], optics["rlnOpticsGroup"]))

    assert groups([a, b]) == {0.85: 1, 1.0: 2}
    a = _written_motion(tmp_path, "a", 0.85, 3000)  # corrected again: newer than b
    assert groups([a, b]) == {0.85: 1, 1.0: 2}
    c = _written_motion(tmp_path, "c", 1.3, 2500)  # new optics: the next number
    assert groups([a, b, c]) == {0.85: 1, 1.0: 2, 1.3: 3}
    assert groups([b, c]) == {1.0: 1, 1.3: 2}  # the 0.85 Å movies gone
    (tmp_path / SINGLE_PARTICLE_STAR).unlink()  # no file: by the first movies' times
    assert groups([a, b, c]) == {1.0: 1, 1.3: 2, 0.85: 3}


def test_tilt_series_optics_names_keep_their_numbers_when_a_series_is_corrected_again(tmp_path):
    from daemon.handoff.relion import write_star
    from daemon.handoff.tomo import TILT_SERIES_STAR, global_block

    def names(series):
        table = global_block([(n, tmp_path / f"{n}.star", m) for n, m in series], tmp_path,
                             OPTICS)
        write_star(tmp_path / TILT_SERIES_STAR, {"global": table})
        return dict(zip(table["rlnTomoName"], table["rlnOpticsGroupName"]))

    fine = _written_motion(tmp_path, "TS_01_000", 1.1, 1000)
    coarse = _written_motion(tmp_path, "TS_02_000", 2.2, 2000)
    assert names([("TS_01", fine), ("TS_02", coarse)]) == {"TS_01": "optics1",
                                                            "TS_02": "optics2"}
    fine = _written_motion(tmp_path, "TS_01_000", 1.1, 3000)  # redone: its records newer
    assert names([("TS_01", fine), ("TS_02", coarse)]) == {"TS_01": "optics1",
                                                            "TS_02": "optics2"}


def test_tilt_series_of_distinct_optics_get_distinct_optics_group_names(tmp_path):
    """``corrected_tilt_series.star``: two series at 1.1 Å and one binned to 2.2 Å: the binned
    one gets its own ``rlnOpticsGroupName`` (it had the same name as the others)."""
    from dataclasses import replace

    from daemon.handoff.tomo import global_block

    base = _motion([0, 1], [1, 1], 0.0)
    fine = replace(base, movie_pixel_size_A=1.1, output_pixel_size_A=1.1)
    binned = replace(base, movie_pixel_size_A=1.1, output_pixel_size_A=2.2, bin_factor=2.0)
    table = global_block([("TS_01", tmp_path / "TS_01.star", fine),
                          ("TS_02", tmp_path / "TS_02.star", binned),
                          ("TS_03", tmp_path / "TS_03.star", fine)], tmp_path, OPTICS)
    names = dict(zip(table["rlnTomoName"], table["rlnOpticsGroupName"]))
    assert names == {"TS_01": "optics1", "TS_02": "optics2", "TS_03": "optics1"}
    assert list(table["rlnTomoTiltSeriesPixelSize"]) == pytest.approx([1.1, 2.2, 1.1])
    # the movies' pixel, binned or not (RELION's import writes the nominal one there)
    assert list(table["rlnMicrographOriginalPixelSize"]) == pytest.approx([1.1, 1.1, 1.1])
    one = global_block([("TS_01", tmp_path / "TS_01.star", fine)], tmp_path,
                       RelionOptics(optics_group_name="krios"))
    assert list(one["rlnOpticsGroupName"]) == ["krios"]


def test_the_daemons_rewrite_of_corrected_micrographs_star_keeps_the_movies_correct_added(
        tmp_path):
    """``correct --out OUT`` into the daemon's folder adds ``other``; the daemon, rewriting
    ``corrected_micrographs.star`` for its next movie (here after a restart), lists it still
    (it listed only the movies of its state database), and leaves its motion STAR alone."""
    out, config = _single_particle_session(tmp_path, seed=26)
    watch = config.watch_dir
    _run_single_particle(config)
    rng = np.random.default_rng(27)
    _mrc_movie(tmp_path / "other.mrc", rng)
    assert _correct(tmp_path / "other.mrc", "--dose-per-frame", 1.0, "--out", out) == 0
    other_star = (out / "other.star").read_bytes()
    _mrc_movie(watch / "spa_2.mrc", rng)
    _run_single_particle(config)
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographMetadata"]) == ["other.star", "spa_0.star", "spa_1.star",
                                                     "spa_2.star"]
    assert (out / "other.star").read_bytes() == other_star
    for _, row in mics.iterrows():
        assert (out / row["rlnMicrographName"]).is_file()


def test_an_eer_movies_star_names_a_dot_gain_that_relion_applies_as_motionwatch_did(
        tmp_path, capsys):
    """RELION loads an EER movie's gain with ``EERRenderer::loadEERGain`` (src/renderEER.h):
    a ``.gain`` file as it is (a TIFF, rows as stored), any other file inverted
    (``mean / gain``). So an EER movie's STAR names ``motionwatch_gain.gain``: the gain
    motionwatch applied (here, under ``--eer-gain relion``, the reciprocal of an MRC count
    image), which RELION uses as it is; the multiplicative MRC, which RELION would invert,
    stays for other movies."""
    import mrcfile
    import tifffile
    from eer_writer import write_eer

    from correction.gain import load_gain_reference, reference_for_movie
    from correction.params import GainParams
    from correction.gain_export import write_relion_gain

    rng = np.random.default_rng(26)
    shape = (128, 128)
    counts = rng.uniform(3000, 7000, shape).astype(np.float32)    # a flat exposure's counts
    counts[5, 7] = 0                                              # a defect
    mrcfile.new(tmp_path / "count.mrc", data=counts).close()
    movie = write_eer(tmp_path / "m.eer", [np.flatnonzero(rng.random(shape[0] * shape[1]) < 0.05)
                                           for _ in range(40)], shape_yx=shape)
    out = tmp_path / "out"
    assert _correct(movie, "--gain", tmp_path / "count.mrc", "--eer-gain", "relion",
                    "--eer-group", 10, "--pixel-size", 0.9, "--total-dose", 8, "--no-hot-pixels",
                    "--out", out) == 0
    assert ("note: EER gain: count.mrc applied as mean / gain (--eer-gain relion: a gain that "
            "is not a .gain file is a count image)") in capsys.readouterr().err
    general = starfile.read(out / "m.star", always_dict=True)["general"]
    assert general["rlnMicrographGainName"] == "motionwatch_gain.gain"
    params = GainParams(gain_path=tmp_path / "count.mrc", detect_hot_pixels=False,
                        eer_gain="relion")  # as run
    applied = reference_for_movie(load_gain_reference(params), params, is_eer=True)
    assert applied.applied_as == "reciprocal"
    relion_reads = tifffile.imread(out / "motionwatch_gain.gain")  # a .gain: used as it is
    np.testing.assert_array_equal(relion_reads, applied.gain)
    assert relion_reads[5, 7] == 0
    # a restart finds it (the stamp in its description) and leaves it alone
    before = (out / "motionwatch_gain.gain").stat()
    assert write_relion_gain(out, params, eer=True) == out / "motionwatch_gain.gain"
    after = (out / "motionwatch_gain.gain").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # a plain MRC movie in the same folder names the multiplicative MRC, the file as it is
    _mrc_movie(tmp_path / "plain.mrc", rng, shape=shape)
    assert _correct(tmp_path / "plain.mrc", "--gain", tmp_path / "count.mrc", "--dose-per-frame",
                    1, "--no-hot-pixels", "--out", out) == 0
    plain = starfile.read(out / "plain.star", always_dict=True)["general"]
    assert plain["rlnMicrographGainName"] == "motionwatch_gain.mrc"
    with mrcfile.open(out / "motionwatch_gain.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, counts)


@pytest.mark.parametrize("gain_name, said", [("20240627_EER_GainReference.gain", False),
                                             ("gain.mrc", True)])
def test_correct_says_how_an_eer_gain_is_applied_only_where_the_peers_differ(tmp_path, capsys,
                                                                             gain_name, said):
    """EPU's ``.gain`` used as a multiplier is what MotionCor2 and RELION both do: no note. An
    MRC gain of an EER movie is a multiplier to MotionCor2 and a count image to RELION: the
    run says once which way it was applied and how to choose the other."""
    import mrcfile
    import tifffile
    from eer_writer import write_eer

    rng = np.random.default_rng(31)
    shape = (128, 128)
    gain = rng.uniform(0.8, 1.2, shape).astype(np.float32)
    if gain_name.endswith(".gain"):
        tifffile.imwrite(tmp_path / gain_name, gain)
    else:
        mrcfile.new(tmp_path / gain_name, data=gain).close()
    for k in range(2):
        write_eer(tmp_path / f"m{k}.eer", [np.flatnonzero(rng.random(shape[0] * shape[1]) < 0.05)
                                           for _ in range(40)], shape_yx=shape)
    assert _correct(tmp_path / "m0.eer", tmp_path / "m1.eer", "--gain", tmp_path / gain_name,
                    "--eer-group", 10, "--pixel-size", 0.9, "--total-dose", 8, "--no-hot-pixels",
                    "--out", tmp_path / "out") == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note: EER gain" in line]
    if said:
        assert len(notes) == 1
        assert ("gain.mrc applied as a multiplier (as MotionCor2's -Gain; --eer-gain relion or "
                "reciprocal for a count image)") in notes[0]
    else:
        assert notes == []


@pytest.mark.parametrize("eer_gain", ["multiplicative", "relion"])
def test_watch_names_the_dot_gain_for_eer_movies_and_the_mrc_for_others(tmp_path, eer_gain):
    """The hand-off listener writes the EER movies' ``.gain`` when the first EER movie comes
    (an MRC session never gets one) and names it in their STARs: the gain as applied, the file
    itself by default (RELION would invert the MRC) or its reciprocal under RELION's rule."""
    import mrcfile
    import tifffile
    from eer_writer import write_eer

    from correction.params import GainParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(27)
    counts = rng.uniform(3000, 7000, SHAPE).astype(np.float32)
    mrcfile.new(tmp_path / "count.mrc", data=counts).close()
    write_eer(watch / "e_0.eer", [np.flatnonzero(rng.random(SHAPE[0] * SHAPE[1]) < 0.05)
                                  for _ in range(40)], shape_yx=SHAPE)
    _mrc_movie(watch / "spa_0.mrc", rng)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(eer_group_frames=10, pixel_size_A=PIXEL_A),
                              gain=GainParams(gain_path=tmp_path / "count.mrc",
                                              eer_gain=eer_gain))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.6, polling="on")
    assert Service(config, listeners=[RelionListener(OPTICS)], resolver=NoMetadata()).run() == 0
    eer_star = starfile.read(out / "e_0.star", always_dict=True)["general"]
    mrc_star = starfile.read(out / "spa_0.star", always_dict=True)["general"]
    assert eer_star["rlnMicrographGainName"] == "motionwatch_gain.gain"
    assert mrc_star["rlnMicrographGainName"] == "motionwatch_gain.mrc"
    valid = counts != 0
    applied = counts if eer_gain == "multiplicative" else counts[valid].mean() / counts
    np.testing.assert_allclose(tifffile.imread(out / "motionwatch_gain.gain"), applied,
                               rtol=1e-5)


def test_a_movie_in_a_folder_named_in_another_charset_gets_its_warp_xml(tmp_path):
    """Warp finds a movie's folder through its ``.xml`` (``DataDirectory``): a folder name that
    is not UTF-8 is written as its bytes on disk (the xml was not written at all)."""
    out, config = _single_particle_session(tmp_path, seed=12)
    raw = b"grille_\xe9t\xe9"
    folder = os.path.join(os.fsencode(config.watch_dir), raw)
    os.mkdir(folder)
    os.rename(config.watch_dir / "spa_1.mrc", os.path.join(folder, b"spa_1.mrc"))
    _run_single_particle(config)
    xml = os.path.join(os.fsencode(out), raw, b"spa_1.xml")
    assert os.path.isfile(xml)
    assert b'DataDirectory="' + folder + b'"' in open(xml, "rb").read()


def test_a_name_starting_as_a_star_label_or_comment_is_quoted(tmp_path):
    """Folders ``_a/`` and ``;x/``: RELION's reader takes a row starting ``_a/...`` for a label
    and one starting ``;`` for a comment; quoted, the rows read as rows."""
    out, config = _single_particle_session(tmp_path, seed=13)
    for folder, name in (("_a", "spa_0.mrc"), (";x", "spa_1.mrc")):
        (config.watch_dir / folder).mkdir()
        os.rename(config.watch_dir / name, config.watch_dir / folder / name)
    _run_single_particle(config)
    lines = (out / "corrected_micrographs.star").read_text().splitlines()
    rows = [line for line in lines if "_DW.mrc" in line]
    assert len(rows) == 2 and not any(row.startswith(("_", ";")) for row in rows), rows
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographName"]) == [";x/spa_1_DW.mrc", "_a/spa_0_DW.mrc"]


def test_names_starting_with_a_stars_reserved_word_are_quoted_and_read_back(tmp_path):
    """A movie ``data_0001.mrc``: its bare row started a new block (to ``starfile`` and to
    RELION's reader; the writer even put its version line before it), and the folder's whole
    micrographs table read back empty. Names starting with any of STAR's reserved words, in
    any case, are quoted."""
    import pandas as pd

    from daemon.handoff.relion import write_star

    names = ["data_0001_DW.mrc", "DATA_2_DW.mrc", "loop_3_DW.mrc", "save_4_DW.mrc",
             "global_5_DW.mrc", "stop_6_DW.mrc", "mydata_7_DW.mrc"]
    write_star(tmp_path / "r.star", {"micrographs": pd.DataFrame(
        {"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names)})})
    text = (tmp_path / "r.star").read_text()
    assert text.count("# version") == 1 and text.count("\ndata_") == 1
    back = starfile.read(tmp_path / "r.star", always_dict=True)["micrographs"]
    assert list(back["rlnMicrographName"]) == names
    rows = [line.split("\t")[0] for line in text.splitlines() if "_DW.mrc" in line]
    assert rows[:-1] == [f'"{name}"' for name in names[:-1]] and rows[-1] == names[-1]


def test_names_starting_with_a_quote_or_holding_a_hash_read_back_as_written(tmp_path):
    """A value starting with a quote is read by RELION as quoted, up to its closing quote: a
    movie ``'x.mrc`` left bare made its folder's whole STAR unreadable. Every value holding a
    ``#`` (a folder ``grid#2/``: every row) is quoted, in one pass over the file."""
    import pandas as pd

    from daemon.handoff.relion import write_star

    names = ["plain_DW.mrc", "grid 1#2/x y_DW.mrc"] + [f"grid#2/m{i}_DW.mrc" for i in range(2000)]
    write_star(tmp_path / "t.star", {"micrographs": pd.DataFrame(
        {"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names)})})
    back = starfile.read(tmp_path / "t.star", always_dict=True)["micrographs"]
    assert list(back["rlnMicrographName"]) == names
    # starfile reads every ' as " (no file with a quote in a name reads back there): the
    # rows as RELION's reader takes them, quoted by the other quote
    write_star(tmp_path / "q.star", {"micrographs": pd.DataFrame(
        {"rlnMicrographName": ["'single_DW.mrc", '"double_DW.mrc'], "rlnOpticsGroup": [1, 1]})})
    rows = [line.split("\t") for line in (tmp_path / "q.star").read_text().splitlines()
            if "_DW.mrc" in line]
    assert rows == [["\"'single_DW.mrc\"", "1"], ["'\"double_DW.mrc'", "1"]]
    # a space beside a ": quoted by ' (RELION ends a "-quoted value at a " and a space); a name
    # like the writer's own placeholder is quoted, never taken for it
    write_star(tmp_path / "s.star", {"micrographs": pd.DataFrame(
        {"rlnMicrographName": ['my "best" grid/x_DW.mrc', "@motionwatch-name-7@_DW.mrc",
                               "#a_DW.mrc"], "rlnOpticsGroup": [1, 1, 1]})})
    rows = [line.split("\t") for line in (tmp_path / "s.star").read_text().splitlines()
            if "_DW.mrc" in line]
    assert rows == [["'my \"best\" grid/x_DW.mrc'", "1"],
                    ['"@motionwatch-name-7@_DW.mrc"', "1"], ['"#a_DW.mrc"', "1"]]


def test_a_row_naming_a_tab_or_a_line_break_is_left_out_and_said_and_the_rest_is_written(
        tmp_path):
    """A STAR row ends at a line break and splits at a tab, quoted or not, and ``starfile``
    refused to write either: one movie so named kept its folder's whole micrographs STAR from
    being written, all night. Its row is left out and named; a simple block with such a value
    is not written, and the error names the file."""
    import pandas as pd

    from daemon.handoff.relion import UnwritableStarValue, write_star

    names = ["a_DW.mrc", "tab\there_DW.mrc", "b_DW.mrc", "line\nbreak_DW.mrc", "cr\r_DW.mrc"]
    left_out: list[str] = []
    write_star(tmp_path / "t.star", {"micrographs": pd.DataFrame(
        {"rlnMicrographName": names, "rlnOpticsGroup": [1, 2, 3, 4, 5]})}, left_out=left_out)
    back = starfile.read(tmp_path / "t.star", always_dict=True)["micrographs"]
    assert list(back["rlnMicrographName"]) == ["a_DW.mrc", "b_DW.mrc"]
    assert list(back["rlnOpticsGroup"]) == [1, 3]
    assert left_out == ["tab\there_DW.mrc", "line\nbreak_DW.mrc", "cr\r_DW.mrc"]
    with pytest.raises(UnwritableStarValue, match=r"g\.star': 'x\\ty\.mrc' holds a tab"):
        write_star(tmp_path / "g.star", {"general": {"rlnMicrographMovieName": "x\ty.mrc"}})
    assert not (tmp_path / "g.star").exists()


def test_a_movie_corrected_by_hand_with_a_tab_in_its_name_leaves_the_daemons_star_whole(
        tmp_path):
    """The daemon never takes such a movie (discovery refuses its name), but ``correct`` does,
    into the daemon's output folder: the folder's STAR lists every other movie, and the daemon
    names the one left out once."""
    from recording_log import RecordingLog

    from daemon.commands.cli import main

    out, config = _single_particle_session(tmp_path, seed=15)
    by_hand = tmp_path / "by hand"
    by_hand.mkdir()
    m = render_movie(np.random.default_rng(16), shape_yx=SHAPE, n_frames=N_FRAMES, gain=None,
                     n_hot_pixels=0, pixel_size_A=PIXEL_A)
    write_movie_progressively(by_hand / "x\ty.mrc", m.frames, pixel_size_A=PIXEL_A,
                              frame_interval_s=0)
    assert main(["correct", str(by_hand / "x\ty.mrc"), "--out", str(out),
                 "--dose-per-frame", "1", "--patches", "1", "1"]) == 0
    log = RecordingLog()
    run_until_idle(Service(config, listeners=[RelionListener(OPTICS, logger=log)],
                           resolver=NoMetadata()))
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographName"]) == ["spa_0_DW.mrc", "spa_1_DW.mrc"]
    assert [f["name"] for _, e, f in log.events if e == "star_row_left_out"] == ["x\ty_DW.mrc"]


def test_a_name_holding_a_hash_keeps_the_folders_star_readable(tmp_path):
    """``#1_001.mrc`` (a position numbered so) and a folder ``grid#2/``: a ``#`` inside a value
    left unquoted cut the row where pandas (``starfile``) reads a comment, and the folder's
    whole micrographs STAR failed to read."""
    out, config = _single_particle_session(tmp_path, seed=14)
    (config.watch_dir / "grid#2").mkdir()
    os.rename(config.watch_dir / "spa_0.mrc", config.watch_dir / "grid#2" / "spa_0.mrc")
    os.rename(config.watch_dir / "spa_1.mrc", config.watch_dir / "#1_001.mrc")
    _run_single_particle(config)
    mics = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(mics["rlnMicrographName"]) == ["#1_001_DW.mrc", "grid#2/spa_0_DW.mrc"]
    assert sorted(mics["rlnMicrographMetadata"]) == ["#1_001.star", "grid#2/spa_0.star"]


@pytest.mark.parametrize("make_link", ["warp", "stack"])
def test_a_link_left_half_made_by_a_killed_daemon_is_removed_at_the_next_start(
        tmp_path, monkeypatch, make_link):
    """SIGKILL between making a hand-off link's new name and renaming it over the old one
    (Warp's ``average/``, AreTomo3's ``aretomo3/``, ``S.st``): the hidden name had a pattern of
    its own that the start-up clean-up did not know, and a third name of the image stayed."""
    import daemon.handoff.warp as warp
    from correction import stack
    from daemon.engine.outputs import clean_temporary_outputs

    target = tmp_path / "x_DW.mrc"
    target.write_bytes(b"image")
    link = tmp_path / "average" / "x.mrc"
    link.parent.mkdir()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        if make_link == "warp":
            warp._link(target, link)
        else:
            stack.replace_with_hard_link(target, link)  # S.st, aretomo3/
    monkeypatch.undo()
    assert [p.name for p in link.parent.iterdir() if p.name.startswith(".")]  # left behind
    clean_temporary_outputs(tmp_path)
    assert list(link.parent.iterdir()) == [] and os.stat(target).st_nlink == 1


def test_the_relion_gain_of_a_movie_is_the_content_it_was_corrected_with(tmp_path):
    """A motion STAR names the gain of the content its movie was corrected with (its record's
    hashes), found by the content label of each gain file written, also after the gain file
    was written anew; when that content is gone and no file holds it, there is none to name."""
    import hashlib

    import mrcfile

    from correction.gain_export import write_relion_gain
    from correction.params import GainParams

    gain_path, out = tmp_path / "gain.mrc", tmp_path / "out"
    out.mkdir()
    values = {}
    for value in (2.0, 3.0):
        with mrcfile.new(gain_path, overwrite=True) as mrc:
            mrc.set_data(np.full((8, 8), value, np.float32))
        stat = gain_path.stat()
        os.utime(gain_path, ns=(stat.st_mtime_ns + 10**9, stat.st_mtime_ns + 10**9))
        sha = hashlib.sha256(gain_path.read_bytes()).hexdigest()
        values[value] = {"gain": sha}
        assert write_relion_gain(out, GainParams(gain_path=gain_path)) is not None
    params = GainParams(gain_path=gain_path)
    for value, applied in values.items():
        named = write_relion_gain(out, params, applied_sha256=applied)
        assert float(mrcfile.read(named)[0, 0]) == value
    first = write_relion_gain(out, params, applied_sha256=values[2.0])
    assert first.name == "motionwatch_gain.mrc"
    assert write_relion_gain(out, params, applied_sha256={"gain": "0" * 64}) is None
    turned = GainParams(gain_path=gain_path, rotate_quarter_turns=1)  # not written yet: the
    assert write_relion_gain(out, turned, applied_sha256=values[2.0]) is None  # 2.0 is gone
    assert float(mrcfile.read(write_relion_gain(out, turned, applied_sha256=values[3.0]))[0, 0]
                 ) == 3.0


def test_a_relion_gain_an_earlier_release_wrote_is_found_for_its_movies_after_a_rewrite(
        tmp_path):
    """The previous release wrote ``motionwatch_gain.mrc`` without a content label. Found by
    its stamp while the gain file still holds that content, it is labelled then, so that once
    the gain file is written anew the movies corrected with the first content still name it
    (they named the new gain's file after a restart before)."""
    import hashlib

    import mrcfile

    from correction.gain_export import write_relion_gain
    from correction.params import GainParams

    gain_path, out = tmp_path / "gain.mrc", tmp_path / "out"
    out.mkdir()
    with mrcfile.new(gain_path) as mrc:
        mrc.set_data(np.full((8, 8), 2.0, np.float32))
    params = GainParams(gain_path=gain_path)
    first = write_relion_gain(out, params)
    with mrcfile.mmap(first, mode="r+") as mrc:  # as the previous release left it
        labels = [bytes(label).decode().strip() for label in mrc.header.label[:mrc.header.nlabl]]
        assert labels[-1].startswith("motionwatch gain content")
        mrc.header.nlabl = len(labels) - 1
        mrc.header.label[len(labels) - 1] = b""
    old = {"gain": hashlib.sha256(gain_path.read_bytes()).hexdigest()}
    assert write_relion_gain(out, params, applied_sha256=old) == first  # by its stamp
    with mrcfile.new(gain_path, overwrite=True) as mrc:
        mrc.set_data(np.full((8, 8), 3.0, np.float32))
    stat = gain_path.stat()
    os.utime(gain_path, ns=(stat.st_mtime_ns + 10**9, stat.st_mtime_ns + 10**9))
    assert write_relion_gain(out, params, applied_sha256=old) == first
    assert float(mrcfile.read(write_relion_gain(out, params))[0, 0]) == 3.0


def test_frames_left_out_before_and_after_the_summed_ones_read_as_relion_continues_them():
    """RELION's ``getShiftAt``: a frame not observed takes the last observed shift before it,
    and 0 before the first (its own origin is that frame). Thrown frames are written with the
    first summed frame's shift, truncated ones as not observed (-9999)."""
    from daemon.handoff.relion import held_before_first_summed

    shifts = np.full((6, 2), np.nan)
    shifts[2:5] = [[4.5, -1.8], [4.0, -1.5], [3.5, -1.2]]
    held = held_before_first_summed(shifts, first_frame=3)
    np.testing.assert_array_equal(held[:2], [[4.5, -1.8], [4.5, -1.8]])
    np.testing.assert_array_equal(held[2:5], shifts[2:5])
    assert np.isnan(held[5]).all() and np.isnan(shifts[:2]).all()  # the input is left alone
    np.testing.assert_array_equal(held_before_first_summed(shifts[2:], first_frame=1),
                                  shifts[2:])
