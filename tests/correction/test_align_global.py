"""Whole-frame alignment: sign, sub-pixel accuracy, grouping, and the 0.1 px requirement."""

from __future__ import annotations

import numpy as np

from correction.align_global import (estimate_shifts, frame_groups,
                                     interpolate_group_shifts)
from correction.fourier import apply_shift, rfft2
from correction.gain import GainReference
from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.pipeline import correct_frames
from correction.synthetic import render_movie, specimen_image


def _stack(image: np.ndarray, shifts_yx: np.ndarray) -> np.ndarray:
    spec = rfft2(image.astype(np.float32))
    return np.stack([apply_shift(spec, image.shape, s) for s in shifts_yx])


def _rms(found: np.ndarray, truth: np.ndarray) -> float:
    err = (found - found.mean(0)) - (truth - truth.mean(0))
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def test_one_bright_blob_displaced_by_plus_dx_gives_positive_dx():
    """Frame 1 shows the feature 4 columns right of and 2 rows below frame 0."""
    y, x = np.mgrid[:128, :128]
    blob = np.exp(-((y - 60) ** 2 + (x - 50) ** 2) / (2 * 2.0**2)).astype(np.float32)
    frames = np.stack([blob, np.roll(blob, (2, 4), axis=(0, 1))] * 2)
    result = estimate_shifts(rfft2(frames), params=AlignParams(bfactor_px2=20))
    # mean zero: frames 0, 2 at -(1, 2), frames 1, 3 at +(1, 2)
    np.testing.assert_allclose(result.shifts_yx_px[1] - result.shifts_yx_px[0], [2, 4],
                               atol=0.02)
    np.testing.assert_allclose(result.shifts_yx_px.mean(0), 0, atol=1e-9)


def test_global_alignment_recovers_known_subpixel_shifts_noise_free_within_0_01_px():
    rng = np.random.default_rng(0)
    image = specimen_image(rng, (256, 256))
    truth = rng.uniform(-6, 6, (8, 2))
    result = estimate_shifts(_stack(image, truth), params=AlignParams())
    assert _rms(result.shifts_yx_px, truth) < 0.01
    assert result.converged
    assert np.all(result.peak_quality > 0.9)


def test_alignment_of_small_patch_stack_with_output_pixel_scaling():
    """B's use: a 10 x 128^2 patch stack cropped 2x from the output grid."""
    rng = np.random.default_rng(1)
    image = specimen_image(rng, (128, 128))
    truth = rng.uniform(-3, 3, (10, 2))
    result = estimate_shifts(_stack(image, truth), params=AlignParams(),
                             output_px_per_grid_px=2.0)
    assert result.shifts_yx_px.shape == (10, 2)
    assert _rms(result.shifts_yx_px, truth) < 0.02


def test_frame_groups_and_interpolation_of_group_centres():
    groups = frame_groups(10, 3)
    assert [len(g) for g in groups] == [3, 3, 2, 2]
    assert np.array_equal(np.concatenate(groups), np.arange(10))
    linear = np.stack([np.arange(10) * 0.5, -np.arange(10) * 0.25], 1)
    centres = np.array([linear[g].mean(0) for g in groups])
    np.testing.assert_allclose(interpolate_group_shifts(groups, centres, 10), linear, atol=1e-12)


def test_grouped_alignment_recovers_linear_drift_at_very_low_dose():
    rng = np.random.default_rng(2)
    truth = np.stack([np.linspace(-4, 4, 12), np.linspace(3, -3, 12)], 1)
    movie = render_movie(rng, shape_yx=(512, 512), n_frames=12, shifts_yx_px=truth,
                         electrons_per_px_per_frame=0.25, gain=None, n_hot_pixels=0)
    spectra = rfft2(movie.frames.astype(np.float32))
    grouped = estimate_shifts(spectra, params=AlignParams(group_frames=3))
    assert _rms(grouped.shifts_yx_px, truth) < 0.1


def test_global_shifts_within_0_1_px_rms_on_1024_movie_at_1_e_per_px_with_gain_and_hot_pixels():
    """The issue's accuracy requirement, through the pipeline (gain, hot pixels, padding)."""
    rng = np.random.default_rng(7)
    movie = render_movie(rng, shape_yx=(1024, 1024), n_frames=10,
                         electrons_per_px_per_frame=1.0, pixel_size_A=1.1, n_hot_pixels=30,
                         dtype=np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0 / 1.1**2),
                              align=AlignParams(patches_x=1, patches_y=1))  # global only
    out = correct_frames(movie.frames, pixel_size_A=1.1, params=params,
                         gain_reference=GainReference.from_arrays(movie.gain))
    rms = _rms(out.shifts_yx_px, movie.shifts_yx_px)
    assert rms < 0.1, rms
    assert rms < 0.05  # we aim well below the requirement
    assert out.n_hot_pixels >= 30 - 1  # two hot pixels may coincide
    # sign: the found trajectory follows the true one (not its mirror image)
    assert np.corrcoef(out.shifts_yx_px[:, 1], movie.shifts_yx_px[:, 1])[0, 1] > 0.99
