"""Whole-frame shifts that follow noise are replaced by a smooth path in time; shifts that do
not (strong peaks, or weak peaks that agree with a smooth path to within real jitter) are kept
as measured. Known truth: paths made here, and a rendered late tilt with known motion."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from correction.align_global import GlobalAlignment
from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.path_fit import NOISY_PATH_PX, with_fitted_path
from correction.pipeline import correct_movie
from correction.synthetic import render_movie

WEAK, STRONG, NOISE = 5.5, 12.0, 5.0  # peak significances: weak and strong against noise's


def _drift(n: int) -> np.ndarray:
    """A drift that slows down (px, [dy, dx], mean zero)."""
    t = np.arange(n, dtype=np.float64)
    path = 6.0 * (1 - np.exp(-t / (n / 3)))
    shifts = np.stack([0.6 * path, -0.8 * path], axis=1)
    return shifts - shifts.mean(axis=0)


def _alignment(shifts, significance, *, dark=()) -> GlobalAlignment:
    n = len(shifts)
    return GlobalAlignment(np.asarray(shifts, float), np.full(n, 0.1), 10, False, 0.1,
                           peak_significance=significance, noise_peak_significance=NOISE,
                           dark_frames=tuple(dark))


def _rms(a, b) -> float:
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


def test_weak_peaks_whose_shifts_scatter_by_pixels_are_replaced_by_a_quadratic_path():
    rng = np.random.default_rng(0)
    truth = _drift(10)
    measured = truth + 2.0 * rng.standard_normal(truth.shape)
    out = with_fitted_path(_alignment(measured, WEAK), np.array([1.0, 1.0]))
    assert out.fitted_path is not None and out.fitted_path.degree == 2
    assert out.fitted_path.scatter_px > NOISY_PATH_PX
    np.testing.assert_allclose(out.fitted_path.measured_shifts_yx_px,
                               measured - measured.mean(axis=0))
    np.testing.assert_allclose(out.shifts_yx_px.mean(axis=0), 0.0, atol=1e-12)
    assert _rms(out.shifts_yx_px, truth) < 0.5 * _rms(measured - measured.mean(0), truth)


def test_shifts_are_kept_as_measured_when_the_peaks_are_strong_or_the_path_scatters_little():
    rng = np.random.default_rng(1)
    truth = _drift(10)
    noisy = truth + 2.0 * rng.standard_normal(truth.shape)
    jittery = truth + 0.3 * rng.standard_normal(truth.shape)  # real frame-to-frame jitter
    for alignment in (_alignment(noisy, STRONG), _alignment(jittery, WEAK),
                      _alignment(noisy, float("nan"))):  # peaks not measured
        assert with_fitted_path(alignment, np.array([1.0, 1.0])) is alignment


def test_the_scatter_is_judged_in_output_pixels_and_the_path_returned_in_grid_pixels():
    """Shifts on an alignment grid 4 times coarser than the output: 0.4 grid px of scatter
    are 1.6 output px, and the fitted path comes back on the grid."""
    rng = np.random.default_rng(2)
    truth = _drift(12) / 4
    measured = truth + 0.4 * rng.standard_normal(truth.shape)
    scale = np.array([4.0, 4.0])
    assert with_fitted_path(_alignment(measured, WEAK), np.array([1.0, 1.0])).fitted_path is None
    out = with_fitted_path(_alignment(measured, WEAK), scale)
    assert out.fitted_path.scatter_px > NOISY_PATH_PX
    np.testing.assert_allclose(out.fitted_path.measured_shifts_yx_px,
                               (measured - measured.mean(axis=0)) * scale)
    assert _rms(out.shifts_yx_px, truth) < _rms(measured - measured.mean(axis=0), truth)


@pytest.mark.parametrize("n_frames, degree", [(3, None), (4, 1), (5, 1), (6, 2)])
def test_few_frames_get_a_straight_path_and_fewer_than_four_none(n_frames, degree):
    rng = np.random.default_rng(3)
    measured = _drift(n_frames) + 3.0 * rng.standard_normal((n_frames, 2))
    out = with_fitted_path(_alignment(measured, WEAK), np.array([1.0, 1.0]))
    assert (None if out.fitted_path is None else out.fitted_path.degree) == degree


def test_frames_without_counts_are_left_out_of_the_fit_and_hold_the_path_beyond_it():
    rng = np.random.default_rng(4)
    truth = _drift(10)
    measured = truth + 2.0 * rng.standard_normal(truth.shape)
    measured[9] = measured[8]  # a dark last frame holds its neighbour's shift
    out = with_fitted_path(_alignment(measured, WEAK, dark=[9]), np.array([1.0, 1.0]))
    lit_only = with_fitted_path(_alignment(measured[:9], WEAK), np.array([1.0, 1.0]))
    np.testing.assert_allclose(out.fitted_path.scatter_px, lit_only.fitted_path.scatter_px)
    first = np.polyfit(np.arange(9.0), measured[:9], 2)
    held = np.minimum(np.arange(10.0), 8.0)  # the dark last frame holds the last lit one's
    expected = np.stack([np.polyval(first[:, a], held) for a in (0, 1)], axis=1)
    np.testing.assert_allclose(out.shifts_yx_px, expected - expected.mean(axis=0))


def test_frames_without_counts_before_the_first_lit_one_hold_the_paths_value_there():
    """Six dark frames first (a late shutter): the quadratic was carried on over them, 15 px
    out, and the mean of all frames with it, which moved the lit frames by pixels too."""
    rng = np.random.default_rng(5)
    truth = _drift(16)
    measured = truth + 1.5 * rng.standard_normal(truth.shape)
    measured[:6] = measured[6]  # held, as the alignment holds the dark frames' shifts
    out = with_fitted_path(_alignment(measured, WEAK, dark=range(6)), np.array([1.0, 1.0]))
    assert out.fitted_path is not None
    np.testing.assert_allclose(out.shifts_yx_px[:6], out.shifts_yx_px[6][None].repeat(6, 0))
    assert np.abs(out.shifts_yx_px).max() <= np.abs(measured - measured.mean(0)).max() + 1.0


def test_a_weak_late_tilt_is_shifted_along_its_fitted_path_and_the_record_keeps_both(tmp_path):
    """A late tilt (8 frames of 1.5 e/px at 3 % contrast after 100 e/Å², 2 Å/px): measured
    shifts 4 px off the truth, 2.7 px unaligned; the sums follow the fitted path, and the
    motion record gives the path's shifts as ``global_shifts_px`` and the measured ones under
    ``alignment.fitted_path`` ([dx, dy] per frame, output px)."""
    movie = render_movie(np.random.default_rng(2), shape_yx=(768, 768), n_frames=8,
                         electrons_per_px_per_frame=1.5, gain=None, n_hot_pixels=0,
                         damage=True, pre_exposure_e_A2=100.0, pixel_size_A=2.0,
                         contrast=0.03, dtype=np.int16)
    path = tmp_path / "TS_01_031_60.0.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(movie.frames)
        mrc.voxel_size = 2.0
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.375, pre_exposure_e_A2=100),
                              align=AlignParams(patches_x=1, patches_y=1))
    with pytest.warns(UserWarning, match="shifts fitted to a smooth path"):
        done = correct_movie(path, tmp_path / "out", params, workers=2)
    record = json.loads(done.outputs["motion"].read_text())
    fitted = record["alignment"]["fitted_path"]
    truth_xy = (movie.shifts_yx_px - movie.shifts_yx_px.mean(axis=0))[:, ::-1]
    used_xy = np.asarray(record["global_shifts_px"])
    measured_xy = np.asarray(fitted["measured_shifts_px"])
    unaligned = _rms(np.zeros_like(truth_xy), truth_xy)
    assert fitted["degree"] == 2 and fitted["scatter_px"] > NOISY_PATH_PX
    assert _rms(measured_xy, truth_xy) > unaligned  # as measured: worse than no alignment
    assert _rms(used_xy, truth_xy) < 0.5 * unaligned
    assert any(line.startswith("shifts fitted to a smooth path")
               for line in record["alignment"]["advice"])


def test_a_strong_specimen_that_jumps_after_its_first_frame_keeps_its_measured_shifts():
    """The late tilt at 30 % contrast whose stage jumped 10 px after the first frame: its
    peaks count as weak against the unaligned first reference and its shifts scatter by 2 px
    about any quadratic, so they were replaced by one, 1.9 px off (0.09 px as measured). A
    second alignment started from that path finds the measured shifts again: they stay."""
    from correction.pipeline import correct_frames
    from correction.synthetic import drift_trajectory

    rng = np.random.default_rng(1)
    truth = drift_trajectory(rng, 8)
    truth[1:] += np.array([6.0, -8.0])  # 10 px after the first frame
    movie = render_movie(rng, shape_yx=(768, 768), n_frames=8, shifts_yx_px=truth,
                         electrons_per_px_per_frame=1.5, gain=None, n_hot_pixels=0,
                         damage=True, pre_exposure_e_A2=100.0, pixel_size_A=2.0,
                         contrast=0.3, dtype=np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.375, pre_exposure_e_A2=100),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(movie.frames, pixel_size_A=2.0, params=params, workers=2)
    assert out.alignment.fitted_path is None
    assert _rms(out.shifts_yx_px - out.shifts_yx_px.mean(0), truth - truth.mean(0)) < 0.2
