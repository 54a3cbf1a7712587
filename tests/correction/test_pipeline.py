"""correct_movie end to end: outputs, their format, the motion record and its sign."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from correction.errors import GainReferenceError, MissingPixelSizeError
from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams, ReadParams
from correction.pipeline import correct_frames, correct_movie, prepare_movie
from correction.synthetic import render_movie

PIXEL = 1.3
GLOBAL = AlignParams(patches_x=1, patches_y=1)


def _write_movie(path, frames, pixel_size_A=PIXEL):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(frames)
        if pixel_size_A is not None:
            mrc.voxel_size = pixel_size_A


@pytest.fixture(scope="module")
def movie_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("movie")
    rng = np.random.default_rng(11)
    truth = np.stack([np.linspace(-3, 3, 8), np.linspace(2, -2, 8)], 1)
    syn = render_movie(rng, shape_yx=(256, 320), n_frames=8, shifts_yx_px=truth,
                       electrons_per_px_per_frame=2.0, pixel_size_A=PIXEL, n_hot_pixels=5)
    _write_movie(folder / "mov.mrc", syn.frames)
    with mrcfile.new(folder / "gain.mrc") as mrc:
        mrc.set_data(syn.gain)
    return folder, syn


def test_correct_movie_writes_four_float32_mrcs_with_pixel_size_and_a_motion_record(
        movie_files, tmp_path):
    folder, syn = movie_files
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.2, pre_exposure_e_A2=3.0,
                                              voltage_kV=200),
                              gain=GainParams(gain_path=folder / "gain.mrc"))
    result = correct_movie(folder / "mov.mrc", tmp_path / "out", params,
                           extra_record={"tilt_deg": 12.0})
    names = {k: p.name for k, p in result.outputs.items()}
    assert names == {"sum": "mov.mrc", "dw": "mov_DW.mrc", "even": "mov_EVN.mrc",
                     "odd": "mov_ODD.mrc", "motion": "mov.motion.json"}
    for kind in ("sum", "dw", "even", "odd"):
        with mrcfile.open(result.outputs[kind]) as mrc:
            assert mrc.data.dtype == np.float32 and mrc.data.shape == (256, 320)
            assert float(mrc.voxel_size.x) == pytest.approx(PIXEL, rel=1e-5)
            assert np.isfinite(mrc.data).all()
    record = json.loads(result.outputs["motion"].read_text())
    assert record == json.loads(json.dumps(result.record))
    for key in ("schema", "movie", "frames", "shape", "pixel_size_A", "voltage_kV",
                "shift_convention", "global_shifts_px", "dose", "drift", "outputs",
                "timings_s"):
        assert key in record, key
    assert record["schema"] == "motionwatch.motion/1"
    assert record["frames"] == 8 and record["shape"] == [256, 320]
    assert record["voltage_kV"] == 200 and record["tilt_deg"] == 12.0
    counted = record["dose"].pop("counted")  # 2 counts per pixel and frame of PIXEL^2 Å^2
    assert counted == {"per_frame_e_A2": pytest.approx(2.0 / PIXEL**2, rel=0.05)}
    assert record["dose"] == {"per_frame_e_A2": [1.2] * 8, "pre_exposure_e_A2": 3.0,
                              "total_e_A2": pytest.approx(9.6)}
    assert set(record["drift"]) >= {"total_A", "early_A", "late_A", "max_frame_jump_A"}
    # [dx, dy] per frame, the displacement of the specimen (+x = columns), mean zero
    found_xy = np.array(record["global_shifts_px"])
    truth_xy = syn.shifts_yx_px[:, ::-1] - syn.shifts_yx_px[:, ::-1].mean(0)
    np.testing.assert_allclose(found_xy, truth_xy, atol=0.15)
    path_A = np.sum(np.hypot(*np.diff(truth_xy, axis=0).T)) * PIXEL
    assert record["drift"]["total_A"] == pytest.approx(path_A, rel=0.05)
    assert result.shifts_yx_px.shape == (8, 2)


def test_a_prepared_movie_writes_nothing_until_asked_and_then_what_correct_movie_writes(
        movie_files, tmp_path):
    """The daemon's workers correct the next movie while one is written: preparing leaves
    the output folder empty of results; writing gives the same set as correct_movie."""
    folder, _ = movie_files
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.2),
                              gain=GainParams(gain_path=folder / "gain.mrc"))
    prepared = prepare_movie(folder / "mov.mrc", tmp_path / "later", params)
    assert not any(p.exists() for p in prepared.outputs.values())
    result = prepared.write()
    direct = correct_movie(folder / "mov.mrc", tmp_path / "now", params)
    assert set(result.outputs) == set(direct.outputs)
    for kind in ("sum", "dw", "even", "odd"):
        with mrcfile.open(result.outputs[kind]) as a, mrcfile.open(direct.outputs[kind]) as b:
            # equal up to the float rounding of threads summing in either order
            np.testing.assert_allclose(a.data, b.data, rtol=0,
                                       atol=1e-5 * float(np.abs(b.data).max()))
    written = json.loads(result.outputs["motion"].read_text())
    np.testing.assert_allclose(written["global_shifts_px"], direct.record["global_shifts_px"],
                               atol=1e-6)
    assert "write" in result.timings_s and "quicklook" in written["timings_s"]


@pytest.mark.parametrize("bin_factor", [1.0, 2.0])
def test_a_corrected_movie_leaves_no_reference_cycle_that_holds_its_frames(
        movie_files, tmp_path, bin_factor):
    """In a run of movies (``correct`` on a list, a daemon worker) the next movie must not
    start while the previous one's frames wait for the garbage collector: everything the
    correction made is freed when it returns (a class defined per call once kept the
    decoded frames, 0.9 GB for K3 x 40, alive through the closures it referred to)."""
    import gc

    folder, _ = movie_files
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.2),
                              read=ReadParams(bin_factor=bin_factor),
                              gain=GainParams(gain_path=folder / "gain.mrc"))
    gc.collect()
    gc.disable()
    try:
        correct_movie(folder / "mov.mrc", tmp_path / "out", params)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        held = [o for o in gc.garbage if isinstance(o, np.ndarray)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not held, [(a.shape, a.dtype) for a in held]


def test_movie_without_pixel_size_in_header_or_params_is_an_error(movie_files, tmp_path):
    folder, syn = movie_files
    _write_movie(tmp_path / "nopix.mrc", syn.frames[:3], pixel_size_A=None)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    with pytest.raises(MissingPixelSizeError, match="nopix.mrc"):
        correct_movie(tmp_path / "nopix.mrc", tmp_path / "out", params)
    given = CorrectionParams(dose=params.dose, read=ReadParams(pixel_size_A=0.9))
    result = correct_movie(tmp_path / "nopix.mrc", tmp_path / "out", given)
    assert result.record["pixel_size_A"] == pytest.approx(0.9)


def test_fourier_binning_by_two_halves_shape_doubles_pixel_size_and_scales_shifts(movie_files):
    _, syn = movie_files
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(bin_factor=2.0), align=GLOBAL)
    out = correct_frames(syn.frames, pixel_size_A=PIXEL, params=params)
    assert out.shape_yx == (128, 160) and out.pixel_size_A == pytest.approx(2 * PIXEL)
    truth = syn.shifts_yx_px - syn.shifts_yx_px.mean(0)
    np.testing.assert_allclose(out.shifts_yx_px, truth / 2, atol=0.1)
    assert out.images.sum.dtype == np.float32


def test_throw_and_trunc_frames_are_dropped_but_their_dose_counts(movie_files):
    _, syn = movie_files
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(throw_frames=2, trunc_frames=1), align=GLOBAL)
    out = correct_frames(syn.frames, pixel_size_A=PIXEL, params=params)
    assert out.shifts_yx_px.shape == (5, 2) and out.frames_used == (2, 7)
    assert len(out.frame_doses_e_A2) == 8


def test_even_odd_resolution_in_the_record_agrees_with_the_image_space_frc_of_the_written_halves(
        tmp_path):
    """The pipeline reads the even/odd FRC off the half spectra before its inverse transforms
    (global) or off the locally corrected halves; the tapered image-space FRC of the written
    _EVN/_ODD images is the reference: same status, resolution within 10 %."""
    from correction.frc import even_odd_resolution

    rng = np.random.default_rng(21)
    movie = render_movie(rng, shape_yx=(384, 384), n_frames=8, electrons_per_px_per_frame=1.0,
                         pixel_size_A=PIXEL, gain=None, n_hot_pixels=0)
    path = tmp_path / "res.mrc"
    _write_movie(path, movie.frames)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=GLOBAL)
    result = correct_movie(path, tmp_path / "out", params)
    record = json.loads(result.outputs["motion"].read_text())["resolution"]
    with mrcfile.open(result.outputs["even"]) as even, mrcfile.open(result.outputs["odd"]) as odd:
        reference, _ = even_odd_resolution(even.data, odd.data, pixel_size_A=PIXEL)
    assert record["method"] == "even_odd_frc" and record["status"] == reference.status == "crossing"
    assert record["threshold"] == pytest.approx(1 / 7, abs=1e-6)
    assert record["resolution_A"] == pytest.approx(reference.resolution_A, rel=0.10)


def test_even_odd_resolution_after_local_correction_agrees_with_the_image_space_frc():
    """With local correction applied, the halves are images again: the estimate comes from
    their float32 spectra with the axis bands left out; the tapered image-space FRC is the
    reference (within 10 %)."""
    from local_movies import local_movie

    from correction.frc import even_odd_resolution

    movie, _, _ = local_movie(7, (1024, 1024), 10, e_per_px=1.5, corner_px=3.0, drift_px=8.0,
                              contrast=0.2)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.5),
                              align=AlignParams(patches_x=3, patches_y=3))
    corrected = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=2)
    assert corrected.local.applied
    reference, _ = even_odd_resolution(corrected.images.even, corrected.images.odd,
                                       pixel_size_A=1.0)
    assert corrected.resolution.status == reference.status == "crossing"
    assert corrected.resolution.resolution_A == pytest.approx(reference.resolution_A, rel=0.10)


def test_a_gain_of_half_the_movies_size_is_refused_not_used_silently(movie_files, tmp_path):
    """Faults issue item 12: a 128 x 160 gain on a 256 x 320 movie (not super-resolution) used
    to be repeated over 2 x 2 pixels without a word."""
    folder, syn = movie_files
    half = tmp_path / "half_gain.mrc"
    with mrcfile.new(half) as mrc:
        mrc.set_data(np.ascontiguousarray(syn.gain[::2, ::2]))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL,
                              gain=GainParams(gain_path=half))
    with pytest.raises(GainReferenceError, match=r"gain is 128x160 .* frames are 256x320"):
        correct_movie(folder / "mov.mrc", tmp_path / "out", params)
    assert not (tmp_path / "out" / "mov.motion.json").exists()


def test_motion_record_names_the_gain_dark_and_defect_files_with_their_sha256_and_the_version(
        movie_files, tmp_path):
    import hashlib
    from importlib import metadata

    folder, syn = movie_files
    dark = tmp_path / "dark.mrc"
    with mrcfile.new(dark) as mrc:
        mrc.set_data(np.zeros(syn.gain.shape, np.float32))
    defects = tmp_path / "defects.txt"
    defects.write_text("10 12 1 3\n")
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL,
                              gain=GainParams(gain_path=folder / "gain.mrc", dark_path=dark,
                                              defects_path=defects))
    record = correct_movie(folder / "mov.mrc", tmp_path / "out", params).record
    on_disk = json.loads((tmp_path / "out" / "mov.motion.json").read_text())
    assert on_disk["references"] == record["references"]
    for kind, path in (("gain", folder / "gain.mrc"), ("dark", dark), ("defects", defects)):
        assert record["references"][kind] == {
            "path": str(path.absolute()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert record["references"]["gain_expanded_by"] == 1
    assert record["references"]["gain_applied_as"] == "multiplicative"  # not an EER movie
    assert "eer_gain_rule" not in record["references"]
    assert record["software"] == {"name": "motionwatch",
                                  "version": metadata.version("motionwatch")}
    plain = correct_movie(folder / "mov.mrc", tmp_path / "out2",
                          CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                                           align=GLOBAL)).record
    assert plain["references"] == {"gain": None, "dark": None, "defects": None,
                                   "gain_expanded_by": 1, "gain_applied_as": None}


def _float_movie(tmp_path, damaged_value):
    """A float32 MRC movie of Poisson counts with one damaged pixel (a byte flipped in a
    float's exponent gives NaN, Inf or a value near float32's largest)."""
    frames = np.random.default_rng(0).poisson(2.0, (6, 96, 96)).astype(np.float32)
    frames[2, 40, 50] = damaged_value
    path = tmp_path / "float.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames)
        mrc.voxel_size = 1.1
    return path


@pytest.mark.parametrize("damaged_value", [np.nan, np.inf, -np.inf, 1e30, -1e25, 3e38])
def test_a_nan_inf_or_absurd_pixel_of_a_float_movie_is_replaced_as_a_defect(tmp_path,
                                                                         damaged_value):
    """Before, NaN or Inf made every written sum NaN, and the movie was reported done; 1e30
    overflowed the hot-pixel test's statistics, which then flagged nothing, so the sums were
    finite garbage (mean 1.5e25); 3e38 made them infinite (an error)."""
    path = _float_movie(tmp_path, damaged_value)
    result = correct_movie(path, tmp_path / "out", CorrectionParams(
        dose=DoseParams(dose_per_frame_e_A2=1.0), align=AlignParams(patches_x=1, patches_y=1)))
    for kind in ("sum", "dw", "even", "odd"):
        with mrcfile.open(result.outputs[kind]) as mrc:
            assert np.isfinite(mrc.data).all(), kind
    with mrcfile.open(result.outputs["sum"]) as mrc:
        assert mrc.data.mean() == pytest.approx(6 * 2.0, rel=0.05)
        assert mrc.data.max() < 6 * 2.0 + 10 * np.sqrt(6 * 2.0)


def test_a_damaged_band_of_absurd_values_in_a_float_movie_is_replaced_as_defects(tmp_path):
    """Two rows of 1e30 (2 % of the pixels: more than a percentile near the top allows) are
    found as well as one pixel is."""
    frames = np.random.default_rng(0).poisson(2.0, (6, 96, 96)).astype(np.float32)
    frames[2, 40:42, :] = 1e30
    path = tmp_path / "band.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames)
        mrc.voxel_size = 1.1
    result = correct_movie(path, tmp_path / "out", CorrectionParams(
        dose=DoseParams(dose_per_frame_e_A2=1.0), align=AlignParams(patches_x=1, patches_y=1)))
    with mrcfile.open(result.outputs["sum"]) as mrc:
        assert mrc.data.mean() == pytest.approx(6 * 2.0, rel=0.05)
        assert mrc.data.max() < 6 * 2.0 + 10 * np.sqrt(6 * 2.0)


def _normalised_movie(seed=5, shape=(256, 256), n_frames=12):
    """A gain-normalised float32 movie (1 e/px/frame, 30 % contrast) with known drift."""
    movie = render_movie(np.random.default_rng(seed), shape_yx=shape, n_frames=n_frames,
                         electrons_per_px_per_frame=1.0, gain=None, n_hot_pixels=0,
                         dtype=np.int16, contrast=0.3)
    return movie, movie.frames.astype(np.float32)


@pytest.mark.parametrize("rows, share", [(slice(128, None), "50 %"), (slice(None), "100 %")])
def test_a_float_movie_with_part_of_a_frame_lost_to_nan_is_an_error_naming_the_frame(rows,
                                                                                    share):
    """NaN pixels in any frame are replaced in every frame, as defects: right for a few dead
    pixels, but half a frame of NaN in one of 12 left the sums' half noise (and a frame all
    NaN left them zeros, with the movie said done). Beyond 1 % of a frame the movie is a
    damaged one: an error naming the frames."""
    from correction.errors import UnreadableMovieError

    _, frames = _normalised_movie()
    frames[4, rows] = np.nan
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    with pytest.raises(UnreadableMovieError, match=rf"\({share} of a frame\) are NaN or Inf in "
                                                   r"1 of 12 frames \(4, 0-based\)"):
        correct_frames(frames, pixel_size_A=1.0, params=params, workers=1)
    thrown = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),  # numbered in the movie
                              align=AlignParams(patches_x=1, patches_y=1),
                              read=ReadParams(throw_frames=2))
    with pytest.raises(UnreadableMovieError, match=r"in 1 of 12 frames \(4, 0-based\)"):
        correct_frames(frames, pixel_size_A=1.0, params=thrown, workers=1)


def test_a_float_movies_nan_pixels_are_replaced_without_the_hot_pixel_search_too():
    """Four NaN pixels of a normalised float movie: the hot-pixel search replaced them, but
    with ``--no-hot-pixels`` the movie failed (its frames' means NaN: "0 of 12 frames hold
    counts", then sums not finite). They are defects either way now."""
    import warnings as w

    movie, frames = _normalised_movie()
    frames[3, 10, 20] = frames[7, 100, 200] = np.nan
    frames[5, 50, 60] = np.inf
    frames[9, 200, 30] = -np.inf
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1),
                              gain=GainParams(detect_hot_pixels=False))
    with w.catch_warnings():
        w.simplefilter("ignore")
        out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=1)
    assert out.alignment.supported and _shift_error_px(out, movie) < 0.1
    assert all(np.isfinite(image).all() for image in (out.images.sum, out.images.dw))


def test_a_detector_pattern_names_hot_pixels_left_in_without_the_hot_pixel_search():
    """With ``--no-hot-pixels`` a few hot pixels left in a normalised movie are a pattern fixed
    to the detector: the warning blamed the gain alone."""
    from correction.detector_pattern import HalfSumWindows

    windows = HalfSumWindows((64, 64))
    rng = np.random.default_rng(1)
    for i in range(8):
        frame = rng.poisson(1.0, (64, 64)).astype(np.float32)
        frame[10, 10] = frame[30, 40] = 50.0
        windows.add(i, frame)
    found = windows.check()
    said = found.message(gain_given=False, hot_pixels_searched=False)
    assert "or hot pixels left in the frames (--no-hot-pixels)" in said
    assert "hot pixels" not in found.message(gain_given=False)


def test_a_float_movie_whose_sums_cannot_be_finite_is_an_error_and_nothing_is_written(tmp_path):
    """Without the hot-pixel search, which replaces such pixels, a value near float32's
    largest overflows the sums."""
    from correction.errors import UnreadableMovieError

    path = _float_movie(tmp_path, 3e38)
    with pytest.raises(UnreadableMovieError, match="not finite"):
        correct_movie(path, tmp_path / "out", CorrectionParams(
            dose=DoseParams(dose_per_frame_e_A2=1.0),
            gain=GainParams(detect_hot_pixels=False),
            align=AlignParams(patches_x=1, patches_y=1)))
    assert not list((tmp_path / "out").glob("*.mrc"))


def _shift_error_px(out, movie, shifts_yx_px=None) -> float:
    """RMS length (px) of the found shifts' error (or of ``shifts_yx_px``') against the rendered
    truth, the common offset removed."""
    truth = movie.shifts_yx_px - movie.shifts_yx_px.mean(axis=0)
    found = out.shifts_yx_px if shifts_yx_px is None else shifts_yx_px
    found = found - found.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum((found - truth) ** 2, axis=1))))


def test_too_few_electrons_per_frame_for_single_frames_is_said_with_the_group_that_helps():
    """A weak (7 %) specimen at 0.15 e/px/frame on 512 x 720 (55,000 electrons a frame):
    single frames' correlation peaks barely clear noise's, and the shifts are hardly better than
    none, with nothing said. Now the record and a warning advise --group, and the frames are
    shifted along a smooth path fitted to their scattered shifts (2.1 -> 0.8 px); aligning sums
    of that many frames, as advised, does better still. A strong specimen at fewer electrons
    aligns well frame by frame: nothing is said, nothing fitted."""
    import warnings as w

    def corrected(contrast, dose, group):
        movie = render_movie(np.random.default_rng(7), shape_yx=(512, 720), n_frames=20,
                             electrons_per_px_per_frame=dose, gain=None, n_hot_pixels=0,
                             dtype=np.int16, contrast=contrast)
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose),
                                  align=AlignParams(patches_x=1, patches_y=1,
                                                    group_frames=group))
        with w.catch_warnings(record=True) as caught:
            w.simplefilter("always")
            out = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=1)
        measured = (None if out.alignment.fitted_path is None
                    else _shift_error_px(out, movie,
                                         out.alignment.fitted_path.measured_shifts_yx_px))
        return out, _shift_error_px(out, movie), [str(c.message) for c in caught], measured

    single, single_error, said, measured_error = corrected(0.07, 0.15, 1)
    advice, fitted = single.alignment_advice
    assert "electrons per frame" in advice and any(advice == s for s in said)
    assert fitted.startswith("shifts fitted to a smooth path") and fitted in said
    assert single_error < 0.5 * measured_error, (single_error, measured_error)
    group = int(advice.split("--group ")[1].split()[0])
    grouped, grouped_error, _, _ = corrected(0.07, 0.15, group)
    assert not grouped.alignment_advice and grouped.alignment.fitted_path is None
    assert grouped_error < min(single_error, 0.5 * measured_error), (grouped_error, single_error)
    strong, strong_error, _, _ = corrected(0.3, 0.06, 1)
    assert not strong.alignment_advice and strong_error < 0.4
    assert strong.alignment.fitted_path is None


@pytest.mark.parametrize("seed", [1, 2])
def test_frames_too_weak_to_align_alone_are_advised_the_group_that_aligns_them(seed):
    """A 7 % specimen at 0.08 e/px/frame on 512 x 720 (29,000 electrons a frame), 16 frames:
    single frames' peaks do not clear noise's, so the frames are summed without shifts (2.4-2.6
    px off). Before, nothing but that was said; now the record and a warning advise
    ``--group`` (enough frames for 250,000 electrons, at least four groups: 4), and aligning
    sums of that many frames finds the shifts (1.1 and 1.8 px off)."""
    import warnings as w

    movie = render_movie(np.random.default_rng(seed), shape_yx=(512, 720), n_frames=16,
                         electrons_per_px_per_frame=0.08, gain=None, n_hot_pixels=0,
                         dtype=np.int16, contrast=0.07)

    def corrected(group):
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.08),
                                  align=AlignParams(patches_x=1, patches_y=1,
                                                    group_frames=group))
        with w.catch_warnings(record=True) as caught:
            w.simplefilter("always")
            out = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=2)
        return out, [str(c.message) for c in caught]

    single, said = corrected(1)
    assert not single.alignment.supported
    (advice,) = [a for a in single.alignment_advice if "electrons per frame" in a]
    assert "summed without shifts; --group 4 (MotionCor2's -Group)" in advice and advice in said
    unaligned = _shift_error_px(single, movie)
    grouped, _ = corrected(4)
    assert grouped.alignment.supported
    assert _shift_error_px(grouped, movie) < 0.8 * unaligned


def test_a_movie_with_counts_in_one_frame_is_advised_no_group():
    """A beam blanked after the first frame: one of 16 frames holds counts, so there is
    nothing to align, as the note says; the electrons rule advised ``--group 4`` all the same
    (the empty frames pulled the mean count under its bound)."""
    import warnings as w

    frames = np.zeros((16, 256, 256), np.int16)
    frames[0] = np.random.default_rng(3).poisson(4.0, (256, 256))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.25),
                              align=AlignParams(patches_x=1, patches_y=1))
    with w.catch_warnings():
        w.simplefilter("ignore")
        out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=1)
    assert not out.alignment.supported and "1 of 16 frames hold counts" in out.alignment.note
    assert not any("--group" in line for line in out.alignment_advice)


def test_one_group_is_advised_however_many_lines_advise_one():
    """At 42,000 electrons a frame over 12 frames, the electrons rule asked for ``--group 6``
    (two groups: their shifts a straight line, 1.5-3.3 px off against 1.1-2.1 ungrouped in
    the audit's three movies) while the fitted-path line of the same movie asked for 2. Both
    now name the same group, of at least four groups."""
    from correction.align_global import FittedPath, GlobalAlignment
    from correction.pipeline import alignment_advice

    alignment = GlobalAlignment(
        shifts_yx_px=np.zeros((12, 2)), peak_quality=np.full(12, 0.01), iterations=3,
        converged=True, last_update_px=0.01, peak_significance=6.0, noise_peak_significance=5.0,
        fitted_path=FittedPath(degree=2, scatter_px=2.1,
                               measured_shifts_yx_px=np.zeros((12, 2))))
    lines = alignment_advice(alignment, 0.04, (1024, 1024), n_used=12, group_frames=1,
                             counting=True)
    groups = {line.split("--group ")[1].split()[0] for line in lines if "--group" in line}
    assert len(lines) == 2 and groups == {"3"}


@pytest.mark.parametrize("contrast, said", [(0.03, "fitted"), (0.05, "weak"), (0.3, None)])
def test_a_weak_tilt_at_many_electrons_per_frame_is_said_to_be_possibly_pixels_off(contrast,
                                                                                  said):
    """A late high tilt: 8 frames of 1.5 e/px (1.5 million electrons a frame, so the electrons
    rule above is silent) of a 3-5 % specimen after 100 e/Å². The peaks stand barely above
    noise's and the alignment never settles; its shifts were 1.1-4.0 px off (2.7 px
    unaligned: worse than none) with ``supported`` true and nothing said. Now the record and a
    warning say so. At 3 % the shifts follow noise (a second alignment from a smooth path
    does not find them again): the frames are shifted along the path, closer to the truth
    than measured and less than half as far as unaligned. At 5 % they are found again and
    kept, with the warning. A 30 % specimen at the same counts aligns to 0.1 px: nothing is
    said, its shifts are kept as measured."""
    import warnings as w

    movie = render_movie(np.random.default_rng(2), shape_yx=(768, 768), n_frames=8,
                         electrons_per_px_per_frame=1.5, gain=None, n_hot_pixels=0,
                         damage=True, pre_exposure_e_A2=100.0, pixel_size_A=2.0,
                         contrast=contrast, dtype=np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.375, pre_exposure_e_A2=100),
                              align=AlignParams(patches_x=1, patches_y=1))
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        out = correct_frames(movie.frames, pixel_size_A=2.0, params=params, workers=2)
    error = _shift_error_px(out, movie)
    unaligned = _shift_error_px(out, movie, np.zeros_like(movie.shifts_yx_px))
    assert out.alignment.supported
    assert set(out.alignment_advice) <= {str(c.message) for c in caught}
    path = out.alignment.fitted_path
    if said == "fitted":
        (fitted,) = [a for a in out.alignment_advice if a.startswith("shifts fitted")]
        measured = _shift_error_px(out, movie, path.measured_shifts_yx_px)
        assert measured > 1.0  # pixels off, as measured
        assert error < min(measured, 0.5 * unaligned), (error, measured, unaligned)  # the path
        assert f"scattered by {path.scatter_px:.1f} px (RMS) about a quadratic path" in fitted
        assert fitted.endswith("; --group 2 (MotionCor2's -Group) aligns sums of frames")
    elif said == "weak":
        (advice,) = out.alignment_advice
        assert path is None and error > 1.0  # the failure said
        assert advice.endswith("whose shifts may be pixels off; --group 2 (MotionCor2's -Group) "
                               "aligns sums of frames")
    else:
        assert out.alignment_advice == () and error < 0.2 and path is None


@pytest.mark.parametrize("first, second", [("x", "x_DW"), ("x_DW", "x")])
def test_the_library_never_lets_one_movies_outputs_replace_anothers_of_a_clashing_stem(
        tmp_path, first, second):
    """``x``'s dose-weighted sum is ``x_DW.mrc``, the name of ``x_DW``'s plain sum. The command
    line and the daemon give such a movie another stem (``x_DW_mrc``); a library caller who
    gave none silently replaced x's dose-weighted sum, its record still naming it."""
    from correction.errors import OutputClashError

    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    for name, seed in ((first, 1), (second, 2)):
        syn = render_movie(np.random.default_rng(seed), shape_yx=(128, 128), n_frames=4,
                           gain=None, n_hot_pixels=0)
        with mrcfile.new(tmp_path / f"{name}.mrc") as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = 1.3
    done = correct_movie(tmp_path / f"{first}.mrc", tmp_path / "out", params, workers=1)
    kept = {kind: path.read_bytes() for kind, path in done.outputs.items()}
    with pytest.raises(OutputClashError, match=f"{second}.mrc: .*would replace those of "
                                                f"'{first}'.*give another stem"):
        correct_movie(tmp_path / f"{second}.mrc", tmp_path / "out", params, workers=1)
    assert {kind: path.read_bytes() for kind, path in done.outputs.items()} == kept
    again = correct_movie(tmp_path / f"{second}.mrc", tmp_path / "out", params, workers=1,
                          stem=f"{second}_mrc")  # as the command line names it
    assert json.loads(again.outputs["motion"].read_text())["movie"].endswith(f"{second}.mrc")
    assert correct_movie(tmp_path / f"{first}.mrc", tmp_path / "out", params,
                         workers=1).outputs == done.outputs  # the same movie again: its own


@pytest.mark.parametrize("pixel", [0.0, -1.0, float("nan"), "1.1"])
def test_correct_frames_refuses_a_pixel_size_that_is_not_a_positive_number_naming_it(pixel):
    """0 raised ZeroDivisionError from the dose count, deep inside."""
    from correction.errors import ParameterError

    syn = render_movie(np.random.default_rng(3), shape_yx=(64, 64), n_frames=4, gain=None,
                       n_hot_pixels=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL)
    with pytest.raises(ParameterError, match=r"pixel_size_A must be a finite number > 0 Å"):
        correct_frames(syn.frames, pixel_size_A=pixel, params=params)


@pytest.mark.parametrize("pixel", [0.083, 1e9])
def test_correct_frames_refuses_a_pixel_size_no_detector_has(pixel):
    """0.083 (0.83 Å typed in nm) was accepted by correct_frames, which ReadParams refuses:
    every weight on a tenfold wrong frequency scale."""
    from correction.errors import CorrectionError

    syn = render_movie(np.random.default_rng(3), shape_yx=(64, 64), n_frames=4, gain=None,
                       n_hot_pixels=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL)
    with pytest.raises(CorrectionError, match=r"pixel size must be 0.1-1000 Å") as caught:
        correct_frames(syn.frames, pixel_size_A=pixel, params=params)
    assert ("a value in nm?" in str(caught.value)) == (pixel < 0.1)


@pytest.mark.parametrize("frames, said", [
    (np.ones((4, 64, 64), np.complex64), "frames of dtype complex64"),
    (np.ones((4, 64, 64), bool), "frames of dtype bool"),
    (np.full((4, 64, 64), "1"), "frames of dtype <U1"),
    ([np.ones((64, 64))] * 4, "frames must be a numpy array (frames, ny, nx), got list"),
    (np.ones((0, 64, 64), np.float32), "no frames"),  # "a single image (0 frame)"
])
def test_correct_frames_refuses_frames_that_are_no_counts_in_one_line(frames, said):
    """Complex frames lost their imaginary part with 84 numpy warnings, text frames failed
    inside numpy, a list with an AttributeError: none was a CorrectionError."""
    from correction.errors import CorrectionError

    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL)
    with pytest.raises(CorrectionError) as caught:
        correct_frames(frames, pixel_size_A=1.0, params=params)
    assert said in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("stem", ["../escape", "sub/name", "", ".."])
def test_a_stem_with_a_folder_is_refused_before_anything_is_written(movie_files, tmp_path,
                                                                    stem):
    """``stem="../escape"`` wrote the four sums and the record beside the output folder."""
    from correction.errors import ParameterError

    out = tmp_path / "deep" / "out"
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL)
    with pytest.raises(ParameterError, match=r"stem must be a file name without a folder"):
        correct_movie(movie_files[0] / "mov.mrc", out, params, stem=stem, workers=1)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_parameters_of_the_wrong_kind_are_refused_naming_what_is_expected(movie_files,
                                                                          tmp_path):
    """ReadParams given to correct_movie (or CorrectionParams to read_movie) failed with an
    AttributeError naming nothing."""
    from correction.errors import ParameterError
    from correction.io import read_movie

    with pytest.raises(ParameterError, match=r"^params must be a CorrectionParams, got "
                                             r"ReadParams$"):
        correct_movie(movie_files[0] / "mov.mrc", tmp_path, ReadParams(), workers=1)
    with pytest.raises(ParameterError, match=r"^params must be a ReadParams, got "
                                             r"CorrectionParams$"):
        read_movie(movie_files[0] / "mov.mrc",
                   params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)))


def test_an_absurd_max_shift_or_bin_fails_at_once_or_corrects_not_after_minutes():
    """--max-shift 1e9 padded each frame by 1e9 px (MemoryError, 900 PiB, three times per
    movie); --bin 600 on 512 px frames worked 7 minutes for a 0 x 0 micrograph; inf was an
    internal OverflowError."""
    from correction.errors import CorrectionError, ParameterError

    syn = render_movie(np.random.default_rng(4), shape_yx=(96, 96), n_frames=4, gain=None,
                       n_hot_pixels=0)
    dose = DoseParams(dose_per_frame_e_A2=1.0)
    wide = CorrectionParams(dose=dose, align=AlignParams(patches_x=1, patches_y=1,
                                                         max_shift_px=1e9))
    assert correct_frames(syn.frames, pixel_size_A=PIXEL, params=wide).images.sum.shape \
        == (96, 96)
    binned = CorrectionParams(dose=dose, read=ReadParams(bin_factor=600), align=GLOBAL)
    with pytest.raises(CorrectionError, match=r"--bin 600 leaves images of 0 x 0 px of the "
                                              r"96 x 96 frames"):
        correct_frames(syn.frames, pixel_size_A=PIXEL, params=binned)
    for bad in (lambda: ReadParams(bin_factor=float("inf")),
                lambda: AlignParams(max_shift_px=float("inf"))):
        with pytest.raises(ParameterError, match="must be a finite number"):
            bad()


def test_a_defect_list_with_no_defect_within_the_frames_is_a_reference_error_naming_it(tmp_path):
    """A list of another camera (600 600 10 10 for 96 px frames) was clipped away without a
    word, every defect left in."""
    from correction.gain import load_gain_reference

    defects = tmp_path / "defects.txt"
    defects.write_text("600 600 10 10\n700 20 1 5\n")
    syn = render_movie(np.random.default_rng(5), shape_yx=(96, 96), n_frames=4, gain=None,
                       n_hot_pixels=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL,
                              gain=GainParams(defects_path=defects))
    with pytest.raises(GainReferenceError, match=r"defects\.txt: none of its 2 defects lies "
                                                 r"within the 96 x 96 frames"):
        correct_frames(syn.frames, pixel_size_A=PIXEL, params=params,
                       gain_reference=load_gain_reference(params.gain))
    defects.write_text("600 600 10 10\n10 20 1 5\n")  # one within: the list is the movie's
    correct_frames(syn.frames, pixel_size_A=PIXEL, params=params,
                   gain_reference=load_gain_reference(params.gain))


def test_the_default_stem_never_replaces_another_movies_outputs_recorded_under_it(tmp_path):
    """SerialEM gives every grid the same names: a library loop over frames/** corrected
    Grid2/TS_01_001.mrc over Grid1's outputs, without a word. The same movie again, or one
    whose recorded movie is gone (a session moved), still writes its own."""
    from correction.errors import OutputClashError

    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=GLOBAL)
    movies = []
    for grid, seed in (("Grid1", 1), ("Grid2", 2)):
        (tmp_path / grid).mkdir()
        syn = render_movie(np.random.default_rng(seed), shape_yx=(96, 96), n_frames=4,
                           gain=None, n_hot_pixels=0)
        movies.append(tmp_path / grid / "TS_01_001.mrc")
        with mrcfile.new(movies[-1]) as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = PIXEL
    out = tmp_path / "out"
    first = correct_movie(movies[0], out, params, workers=1)
    kept = first.outputs["sum"].read_bytes()
    with pytest.raises(OutputClashError, match=r"Grid2/TS_01_001\.mrc: its outputs \(stem "
                                               r"'TS_01_001'\) would replace those of .*Grid1"):
        correct_movie(movies[1], out, params, workers=1)
    assert first.outputs["sum"].read_bytes() == kept
    correct_movie(movies[1], out, params, workers=1, stem="TS_01_001_grid2")  # a stem given
    correct_movie(movies[0], out, params, workers=1)  # the same movie again: its own
    movies[0].rename(tmp_path / "Grid1" / "moved.mrc")
    correct_movie(movies[1], out, params, workers=1)  # the recorded movie is gone


@pytest.mark.parametrize("lit", [0, 1])
def test_a_movie_with_fewer_than_two_frames_of_counts_is_not_aligned_and_says_so(lit):
    """A movie of zeros (the column valves closed at night) was aligned on flat correlations:
    "did not converge ... moved a frame 72 px", alignment supported, no dark frame. Now, as
    with one frame of counts, nothing is aligned: shifts zero, ``supported`` false, one line
    saying why; the sums are the frames summed."""
    import warnings

    frames = np.zeros((10, 128, 128), np.float32)
    if lit:
        frames[4] = np.random.default_rng(0).poisson(1.0, (128, 128))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = correct_frames(frames, pixel_size_A=1.0, params=params)
    assert not result.alignment.supported and np.all(result.shifts_yx_px == 0)
    assert result.alignment.dark_frames == tuple(i for i in range(10) if not (lit and i == 4))
    said = [str(w.message) for w in caught]
    assert [line for line in said if "hold counts" in line] == [
        f"{lit} of 10 frames hold counts (the beam blanked, the column valves closed?): nothing "
        "to align; the frames are summed without shifts (alignment.supported false in the "
        "motion record)"]
    assert not [line for line in said if "converge" in line or "no counts to align" in line]
    np.testing.assert_allclose(result.images.sum, frames.sum(axis=0), atol=1e-3)


@pytest.mark.parametrize("dark_frame", [0, 11])
def test_a_frame_without_counts_is_shifted_as_its_neighbour_and_said_not_sent_to_the_window_edge(
        dark_frame):
    """A frame with no counts (the beam blanked before the last frame, a shutter late for the
    first) correlates with nothing: its peak was taken at the edge of the search window, 80 px
    off, and the movie was said to drift beyond --max-shift. It is now left out of the
    alignment and shifted as the frame beside it; the others align as well as without it."""
    import warnings

    movie = render_movie(np.random.default_rng(3), shape_yx=(512, 512), n_frames=12,
                         electrons_per_px_per_frame=1.0, gain=None, n_hot_pixels=0)
    frames = movie.frames.copy()
    frames[dark_frame] = 0
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = correct_frames(frames, pixel_size_A=1.0, params=params)
    lit = np.arange(12) != dark_frame
    without = correct_frames(movie.frames[lit], pixel_size_A=1.0, params=params).shifts_yx_px
    found = result.shifts_yx_px[lit] - result.shifts_yx_px[lit].mean(axis=0)
    assert np.abs(found - (without - without.mean(axis=0))).max() < 0.01
    truth = movie.shifts_yx_px[lit] - movie.shifts_yx_px[lit].mean(axis=0)
    assert np.abs(found - truth).max() < 0.06
    neighbour = 1 if dark_frame == 0 else 10
    np.testing.assert_allclose(result.shifts_yx_px[dark_frame], result.shifts_yx_px[neighbour])
    assert result.alignment.dark_frames == (dark_frame,)
    said = [str(w.message) for w in caught]
    assert [line for line in said if "no counts" in line] == [
        f"frame {dark_frame} of 12 (0-based) holds no counts to align (a beam blanked before the "
        "last frame, a late shutter?): not aligned, shifted as the frame beside it "
        "(alignment.dark_frames in the motion record); --throw or --trunc leaves such frames out"]
    assert not [line for line in said if "search limit" in line]
