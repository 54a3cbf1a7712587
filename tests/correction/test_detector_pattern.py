"""A pattern fixed to the detector (a gain reference missing or not fitting the frames).

Without its gain, every frame of a counting movie carries the same pixel-to-pixel pattern; on a
specimen of low contrast it holds the whole-frame shifts at zero. Stripes along columns are left
out of the alignment (the central cross of the cross-power spectra); a pattern of single pixels
cannot be, and is named instead.
"""

from __future__ import annotations

import json
import warnings

import mrcfile
import numpy as np
import pytest

from correction.detector_pattern import MIN_SIGNIFICANCE, HalfSumWindows
from correction.gain import GainReference
from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
from correction.pipeline import correct_frames, correct_movie
from correction.synthetic import drift_trajectory, gain_pattern, render_movie


def _movie(seed, *, e_per_px, contrast, pixel_sigma, column_sigma, total_px=6.0,
           shape=(512, 512)):
    rng = np.random.default_rng(seed)
    gain = gain_pattern(rng, shape, pixel_sigma=pixel_sigma, column_sigma=column_sigma)
    shifts = drift_trajectory(rng, 10, total_px=total_px)
    return render_movie(rng, shape_yx=shape, n_frames=10, electrons_per_px_per_frame=e_per_px,
                        gain=gain, shifts_yx_px=shifts, contrast=contrast, n_hot_pixels=0)


def _check(frames, gain=None):
    windows = HalfSumWindows(frames.shape[1:])
    for i, frame in enumerate(frames):
        windows.add(i, frame.astype(np.float32) * (1.0 if gain is None else gain))
    return windows.check()


def _rms_error(shifts, truth):
    e = (shifts - shifts.mean(axis=0)) - (truth - truth.mean(axis=0))
    return float(np.sqrt((e ** 2).sum(axis=1).mean()))


def _params(e_per_px):
    return CorrectionParams(align=AlignParams(patches_x=1, patches_y=1),
                            dose=DoseParams(dose_per_frame_e_A2=e_per_px))


def test_frames_without_their_gain_share_a_flat_pattern_and_with_it_none():
    movie = _movie(1, e_per_px=8.0, contrast=0.03, pixel_sigma=0.05, column_sigma=0.0)
    without = _check(movie.frames)
    assert without.detected
    assert without.significance > 12  # 0.09 expected (s^2 N / (1 + s^2 N)), 17 sigma measured
    assert without.frc_high == pytest.approx(0.09, abs=0.03)
    with_gain = _check(movie.frames, movie.gain)
    assert not with_gain.detected
    assert abs(with_gain.significance) < 4


def test_a_pattern_of_the_physical_pixels_is_found_in_frames_rendered_on_a_finer_grid():
    """An EER at sampling 2 without its gain: each physical pixel's gain is shared by its 2 x 2
    sub-pixels, whose events fall at random among them, so the pattern lies below half the
    8K grid's Nyquist: the check looked at 0.8-1.0 of it and said nothing (it did at
    sampling 1). Summed over each pixel's sub-pixels, it is found; with the gain, not."""
    movie = _movie(1, e_per_px=8.0, contrast=0.03, pixel_sigma=0.05, column_sigma=0.0)
    rng = np.random.default_rng(2)
    events = movie.frames.astype(np.int64)  # each pixel's events, spread over its sub-pixels
    top = rng.binomial(events, 0.5)
    bottom = events - top
    tl, bl = rng.binomial(top, 0.5), rng.binomial(bottom, 0.5)
    fine = np.empty((events.shape[0], 2 * events.shape[1], 2 * events.shape[2]), np.float32)
    fine[:, 0::2, 0::2], fine[:, 0::2, 1::2] = tl, top - tl
    fine[:, 1::2, 0::2], fine[:, 1::2, 1::2] = bl, bottom - bl

    def check(frames, subpixels, gain=None):
        windows = HalfSumWindows(frames.shape[1:], subpixels=subpixels)
        for i, frame in enumerate(frames):
            windows.add(i, frame * (1.0 if gain is None else gain))
        return windows.check()

    assert not check(fine, 1).detected  # at 0.8-1.0 of the fine grid's Nyquist: blind
    found = check(fine, 2)
    assert found.detected and found.window_yx_px == (512, 512)
    gain_fine = np.repeat(np.repeat(movie.gain, 2, axis=0), 2, axis=1)
    assert not check(fine, 2, gain_fine).detected


@pytest.mark.parametrize("drift_px", [0.2, 3.0])
def test_a_strong_specimen_at_high_dose_is_not_taken_for_a_pattern(drift_px):
    # a specimen's FRC falls off towards Nyquist even when it barely moves (0.2 px)
    movie = _movie(3, e_per_px=10.0, contrast=0.3, pixel_sigma=0.05, column_sigma=0.03,
                   total_px=drift_px)
    check = _check(movie.frames, movie.gain)
    assert check.significance > MIN_SIGNIFICANCE  # the specimen is plainly there at Nyquist
    assert not check.detected  # ... but not flat (0.07 near Nyquist, 0.36 at mid frequencies)


def test_correct_names_a_missing_gain_in_a_warning_and_the_record(tmp_path):
    movie = _movie(1, e_per_px=8.0, contrast=0.03, pixel_sigma=0.05, column_sigma=0.0)
    path = tmp_path / "unnormalised.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(movie.frames)
        mrc.voxel_size = 1.05
    with pytest.warns(UserWarning, match="pattern fixed to the detector.*no gain reference"):
        result = correct_movie(path, out_dir=tmp_path / "out", params=_params(8.0))
    record = json.loads(result.outputs["motion"].read_text())
    assert record["detector_pattern"]["detected"] is True
    assert "no gain reference" in record["detector_pattern"]["message"]

    gain_path = tmp_path / "gain.mrc"
    with mrcfile.new(gain_path) as mrc:
        mrc.set_data(movie.gain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = correct_movie(path, out_dir=tmp_path / "out_gain",
                               params=CorrectionParams(
                                   align=AlignParams(patches_x=1, patches_y=1),
                                   dose=DoseParams(dose_per_frame_e_A2=8.0),
                                   gain=GainParams(gain_path=gain_path)))
    record = json.loads(result.outputs["motion"].read_text())
    assert record["detector_pattern"]["detected"] is False
    assert "message" not in record["detector_pattern"]


def test_a_gain_that_does_not_fit_is_named_as_such_not_as_missing():
    movie = _movie(1, e_per_px=8.0, contrast=0.03, pixel_sigma=0.05, column_sigma=0.0)
    flipped = GainReference.from_arrays(np.ascontiguousarray(movie.gain[::-1]))
    with pytest.warns(UserWarning, match="the gain reference does not remove it"):
        out = correct_frames(movie.frames, pixel_size_A=1.0, params=_params(8.0),
                             gain_reference=flipped)
    assert out.detector_pattern.detected


@pytest.mark.parametrize("seed", [1, 2])
def test_column_stripes_left_in_the_frames_do_not_hold_the_shifts_at_zero(seed):
    # 5 % per-column gain left uncorrected, 5 % contrast: with the cross in the correlations
    # the shifts were 0.38 and 0.96 px RMS off; gain-corrected frames align to 0.15-0.16 px
    movie = _movie(seed, e_per_px=4.0, contrast=0.05, pixel_sigma=0.0, column_sigma=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unnormalised = correct_frames(movie.frames, pixel_size_A=1.0, params=_params(4.0))
        normalised = correct_frames(movie.frames, pixel_size_A=1.0, params=_params(4.0),
                                    gain_reference=GainReference.from_arrays(movie.gain))
    truth = movie.shifts_yx_px
    assert _rms_error(normalised.shifts_yx_px, truth) < 0.25
    assert _rms_error(unnormalised.shifts_yx_px, truth) < 0.25
    assert not unnormalised.detector_pattern.detected  # stripes are on the FRC's axis bands
