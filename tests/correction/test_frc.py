"""Fourier ring correlation: values against known truths, ring bookkeeping, crossing rules."""

from __future__ import annotations

import numpy as np
import pytest

from correction.errors import ParameterError
from correction.frc import (
    HALF_SET_THRESHOLD,
    FRCCurve,
    even_odd_resolution,
    even_odd_resolution_fast,
    even_odd_resolution_from_spectra,
    fourier_ring_correlation,
    frc_against_truth,
    full_set_frc,
    resolution_from_frc,
)


def _band_limited(rng: np.random.Generator, shape: tuple[int, int], cutoff_per_px: float) -> np.ndarray:
    """White noise with every Fourier coefficient beyond ``cutoff_per_px`` set to zero."""
    ny, nx = shape
    f = np.fft.rfft2(rng.standard_normal(shape))
    k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :])
    f[k > cutoff_per_px] = 0
    return np.fft.irfft2(f, s=shape)


def test_frc_of_identical_images_is_one_at_every_ring_and_resolution_is_nyquist():
    image = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    curve = fourier_ring_correlation(image, image, pixel_size_A=1.5)
    assert curve.frc.shape == (129,)
    np.testing.assert_allclose(curve.frc[1:], 1.0, atol=1e-6)
    res = resolution_from_frc(curve)
    assert res.status == "nyquist"
    assert res.resolution_A == pytest.approx(3.0)  # 2 x pixel size: a bound


def test_frc_of_independent_noise_is_zero_within_statistical_error_per_ring():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 256, 256))
    curve = fourier_ring_correlation(a, b)
    sigma = 1.0 / np.sqrt(curve.n_coefficients[1:] / 2)  # independent complex pairs per ring
    assert np.all(np.abs(curve.frc[1:]) < 5 * sigma)
    assert abs(np.mean(curve.frc[10:])) < 0.01


def test_frc_of_an_image_and_its_negative_is_minus_one_and_gives_no_resolution():
    a = np.random.default_rng(3).standard_normal((128, 128))
    curve = fourier_ring_correlation(a, -a)
    np.testing.assert_allclose(curve.frc[1:], -1.0, atol=1e-9)
    res = resolution_from_frc(curve)
    assert res.status == "none" and res.resolution_A is None and res.frequency_per_px is None


def test_band_limited_signal_in_white_noise_gives_snr_over_one_plus_snr_and_crosses_at_band_edge():
    """Signal power P_s inside |k| < 0.2 cycles/px, noise power P_n everywhere, P_s = P_n:
    FRC = P_s / (P_s + P_n) = 0.5 inside the band and 0 outside; the 1/7 crossing is the band
    edge, 5 px (7.5 Å at 1.5 Å/px), within one ring width (1/512 cycles/px)."""
    rng = np.random.default_rng(4)
    shape = (512, 512)
    cutoff = 0.2
    # zeroing out-of-band coefficients leaves in-band power per coefficient equal to that of
    # unit white noise: P_s = P_n inside the band
    signal = _band_limited(rng, shape, cutoff)
    half1 = signal + rng.standard_normal(shape)
    half2 = signal + rng.standard_normal(shape)
    res, curve = even_odd_resolution(half1, half2, pixel_size_A=1.5)
    inside = (curve.frequency_per_px > 0.02) & (curve.frequency_per_px < cutoff - 0.01)
    outside = curve.frequency_per_px > cutoff + 0.01
    assert np.mean(curve.frc[inside]) == pytest.approx(0.5, abs=0.03)
    assert abs(np.mean(curve.frc[outside])) < 0.02
    assert res.status == "crossing"
    assert res.frequency_per_px == pytest.approx(cutoff, abs=1.0 / 512 + 1e-9)
    assert res.resolution_A == pytest.approx(1.5 / cutoff, rel=0.02)
    record = res.to_record()
    assert record["method"] == "even_odd_frc" and record["status"] == "crossing"
    assert record["threshold"] == pytest.approx(1 / 7, abs=1e-6)


def _direct_ring_frc(a: np.ndarray, b: np.ndarray, rings: tuple[int, ...], *,
                     row_step: int = 1, axis_mask: int = 0) -> dict[int, tuple[float, int]]:
    """For each ring, the FRC summed directly over the full-plane coefficients (every
    ``row_step``-th row, those within ``axis_mask`` of an axis left out) and their number."""
    n_ref = min(a.shape)
    fa, fb = np.fft.fft2(a)[::row_step], np.fft.fft2(b)[::row_step]
    ky = np.fft.fftfreq(a.shape[0])[::row_step, None] * n_ref
    kx = np.fft.fftfreq(a.shape[1])[None, :] * n_ref
    index = np.rint(np.hypot(ky, kx)).astype(int)
    index[(np.abs(ky) < axis_mask) | (np.abs(kx) < axis_mask)] = -1
    out = {}
    for ring in rings:
        m = index == ring
        frc = np.sum((fa[m] * fb[m].conj()).real) / np.sqrt(
            np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2))
        out[ring] = (float(frc), int(m.sum()))
    return out


def test_half_plane_sums_equal_the_full_plane_frc_for_odd_and_even_non_square_images():
    rng = np.random.default_rng(5)
    for shape in [(64, 96), (65, 81)]:
        a = rng.standard_normal(shape)
        b = a + rng.standard_normal(shape)
        curve = fourier_ring_correlation(a, b)
        for r, (expected, count) in _direct_ring_frc(a, b, (0, 1, 7, min(shape) // 2)).items():
            assert curve.frc[r] == pytest.approx(expected, abs=1e-9)
            assert curve.n_coefficients[r] == count


def test_every_other_row_with_axis_bands_left_out_equals_the_direct_sums_over_those_rows():
    """The spectral even/odd FRC of a large grid reads rows 0, 2, 4, ... of the spectra and
    leaves out the axis bands; rows ky and -ky are summed together, which must change nothing
    (1024 and 1025 rows taken; square grids, whose integer frequencies never lie within
    rounding of a ring's border)."""
    rng = np.random.default_rng(6)
    for shape in [(2048, 2048), (2050, 2050)]:
        a = rng.standard_normal(shape)
        b = a + 2 * rng.standard_normal(shape)
        _, curve = even_odd_resolution_from_spectra(np.fft.rfft2(a), np.fft.rfft2(b),
                                                    shape_yx=shape, pixel_size_A=1.0,
                                                    axis_mask_px=4)
        direct = _direct_ring_frc(a, b, (6, 9, 100, min(shape) // 2), row_step=2, axis_mask=4)
        for r, (expected, count) in direct.items():
            assert curve.frc[r] == pytest.approx(expected, abs=1e-6)
            assert curve.n_coefficients[r] == count


def test_last_criterion_steps_over_a_ctf_like_dip_and_first_criterion_stops_at_it():
    frc = np.full(101, 0.02)
    frc[:41] = 0.9
    frc[10:13] = 0.01  # a CTF zero: three rings below threshold
    frc[41] = 0.0
    curve = FRCCurve(frc=frc, frequency_per_px=np.arange(101) / 200, n_coefficients=np.ones(101, int),
                     pixel_size_A=1.0)
    last = resolution_from_frc(curve)
    first = resolution_from_frc(curve, criterion="first")
    # last: crossing between ring 40 (0.9) and 41 (0.0) at 0.9 - t*0.9 = 1/7
    t = (0.9 - HALF_SET_THRESHOLD) / 0.9
    assert last.frequency_per_px == pytest.approx((40 + t) / 200)
    assert first.frequency_per_px == pytest.approx((9 + (0.9 - 1 / 7) / (0.9 - 0.01)) / 200)
    # a single noisy ring above threshold at high frequency is not a run of three
    frc2 = frc.copy()
    frc2[80] = 0.5
    curve2 = FRCCurve(frc=frc2, frequency_per_px=curve.frequency_per_px,
                      n_coefficients=curve.n_coefficients, pixel_size_A=1.0)
    assert resolution_from_frc(curve2).frequency_per_px == pytest.approx(last.frequency_per_px)


def test_frc_against_truth_measures_a_blurred_copy_and_full_set_conversion_maps_one_seventh_to_quarter():
    rng = np.random.default_rng(6)
    truth = rng.standard_normal((256, 256))
    f = np.fft.rfft2(truth)
    k = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.rfftfreq(256)[None, :])
    blurred = np.fft.irfft2(f * (k <= 0.25), s=truth.shape) + 0.01 * rng.standard_normal(truth.shape)
    res, curve = frc_against_truth(blurred, truth, pixel_size_A=1.0)
    assert curve.mean_up_to(0.24) > 0.99
    assert res.resolution_px == pytest.approx(4.0, abs=0.1)
    assert full_set_frc(np.array([1 / 7]))[0] == pytest.approx(0.25)


def test_edge_taper_removes_the_false_correlation_of_a_shared_non_periodic_background():
    """Independent noise on a shared ramp (an ice gradient): the jump where opposite edges meet
    correlates the halves at every frequency (a false resolution) unless the edges are tapered."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[:512, :512]
    ramp = 0.02 * x + 0.01 * y
    even, odd = ramp + rng.standard_normal((2, 512, 512))
    plain = fourier_ring_correlation(even, odd)
    assert np.mean(plain.frc[50:]) > 0.1  # the bias the taper is for
    assert resolution_from_frc(plain).frequency_per_px > 0.2  # a false 4-5 px "resolution"
    res, curve = even_odd_resolution(even, odd, pixel_size_A=1.0)  # default taper, 32 px
    assert abs(np.mean(curve.frc[50:])) < 0.01
    # what remains is the ramp's own (shared, real) low-frequency content
    assert res.status == "none" or res.frequency_per_px < 0.06


def test_frc_rejects_mismatched_or_tiny_images_with_a_clear_message():
    with pytest.raises(ParameterError, match="one shape"):
        fourier_ring_correlation(np.zeros((16, 16)), np.zeros((16, 17)))
    with pytest.raises(ParameterError, match="at least 8"):
        fourier_ring_correlation(np.zeros((4, 4)), np.zeros((4, 4)))


def test_spectral_even_odd_frc_matches_the_image_space_frc_on_a_band_limited_signal_with_a_ramp():
    """The cheap estimate (half spectra, axis bands left out, no taper) against the tapered
    image-space one, on halves that share a non-periodic ramp: same crossing within 2 %, and the
    ramp's edge jump does not raise the curve above the band (|FRC| < 0.02 beyond it)."""
    rng = np.random.default_rng(11)
    shape = (384, 512)
    cutoff = 0.25
    signal = _band_limited(rng, shape, cutoff)
    y, x = np.mgrid[:shape[0], :shape[1]]
    ramp = 0.02 * x + 0.01 * y
    even = (ramp + signal + rng.standard_normal(shape)).astype(np.float32)
    odd = (ramp + signal + rng.standard_normal(shape)).astype(np.float32)
    reference, _ = even_odd_resolution(even, odd, pixel_size_A=1.2)
    spectra = np.fft.rfft2(even), np.fft.rfft2(odd)
    fast, curve = even_odd_resolution_from_spectra(*spectra, shape_yx=shape, pixel_size_A=1.2)
    assert fast.status == reference.status == "crossing"
    assert fast.resolution_A == pytest.approx(reference.resolution_A, rel=0.02)
    assert fast.resolution_A == pytest.approx(1.2 / cutoff, rel=0.02)
    assert abs(np.mean(curve.frc[curve.frequency_per_px > cutoff + 0.02])) < 0.02
    # dose weighting scales each ring by one factor: the curve does not change
    k = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    weight = np.exp(-30.0 * k)
    weighted, _ = even_odd_resolution_from_spectra(spectra[0] * weight, spectra[1] * weight,
                                                   shape_yx=shape, pixel_size_A=1.2)
    assert weighted.resolution_A == pytest.approx(fast.resolution_A, rel=0.01)
    from_images, _ = even_odd_resolution_fast(even, odd, pixel_size_A=1.2)
    assert from_images.resolution_A == pytest.approx(fast.resolution_A, rel=1e-4)
    # without the axis mask the shared edge jump correlates the halves beyond the band
    unmasked = fourier_ring_correlation(even, odd)
    assert np.mean(unmasked.frc[unmasked.frequency_per_px > cutoff + 0.02]) > 0.02


def test_even_odd_frc_of_large_images_folds_them_instead_of_transforming_them_whole():
    """At 2048 px and more the FRC reads every other row of the spectra; from images, those
    rows come from the transform of each image folded in half (half the work and memory): the
    curve equals the one from the full spectra to float32 precision."""
    rng = np.random.default_rng(12)
    shape = (2048, 2176)
    signal = 3.0 * _band_limited(rng, shape, 0.2)  # FRC 9 / 10 in its band
    even = (signal + rng.standard_normal(shape)).astype(np.float32)
    odd = (signal + rng.standard_normal(shape)).astype(np.float32)
    _, from_spectra = even_odd_resolution_from_spectra(
        np.fft.rfft2(even), np.fft.rfft2(odd), shape_yx=shape, pixel_size_A=1.0)
    _, folded = even_odd_resolution_fast(even, odd, pixel_size_A=1.0)
    np.testing.assert_array_equal(folded.n_coefficients, from_spectra.n_coefficients)
    np.testing.assert_allclose(folded.frc, from_spectra.frc, atol=2e-4)
    band = (folded.frequency_per_px > 0.02) & (folded.frequency_per_px < 0.18)
    assert np.min(folded.frc[band]) > 0.8
    assert abs(np.mean(folded.frc[folded.frequency_per_px > 0.22])) < 0.01


def test_spectral_even_odd_frc_rejects_spectra_of_the_wrong_shape():
    f = np.zeros((64, 33), np.complex64)
    with pytest.raises(ParameterError, match="half spectra"):
        even_odd_resolution_from_spectra(f, f, shape_yx=(64, 66), pixel_size_A=1.0)
