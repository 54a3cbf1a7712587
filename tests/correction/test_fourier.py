"""Fourier helpers: shift sign, exactness, cropping (binning), filters."""

from __future__ import annotations

import numpy as np
import pytest

from correction.fourier import (apply_shift, bfactor_filter, bfactor_filter_1d, binned_length,
                                fast_length, fourier_crop, frequency_indices, irfft2,
                                radial_frequency_sq, rfft2, rfft2_cropped_2x2, shift_image,
                                shift_ramps, shift_ramps_stack, sum_2x2)


def test_fourier_shift_moves_one_bright_pixel_by_plus_dy_dx():
    image = np.zeros((64, 80), np.float32)
    image[10, 20] = 1.0
    moved = shift_image(image, (3, -5))
    assert np.unravel_index(np.argmax(moved), moved.shape) == (13, 15)
    assert moved[13, 15] == pytest.approx(1.0, abs=1e-5)


def test_integer_fourier_shift_equals_roll_and_keeps_float32():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((48, 50)).astype(np.float32)
    moved = shift_image(image, (-7, 4))
    assert moved.dtype == np.float32
    np.testing.assert_allclose(moved, np.roll(image, (-7, 4), axis=(0, 1)), atol=1e-5)


def test_subpixel_shift_moves_centroid_of_smooth_blob_exactly():
    y, x = np.mgrid[:64, :64]
    blob = np.exp(-((y - 30) ** 2 + (x - 33) ** 2) / (2 * 3.0**2)).astype(np.float32)
    moved = shift_image(blob, (0.37, -1.81)).astype(np.float64)
    cy = (moved * y).sum() / moved.sum()
    cx = (moved * x).sum() / moved.sum()
    assert cy == pytest.approx(30.37, abs=1e-3)
    assert cx == pytest.approx(33 - 1.81, abs=1e-3)


def test_shift_ramps_are_complex64_and_compose():
    ry, rx = shift_ramps((32, 40), (1.25, -0.5))
    assert ry.dtype == np.complex64 and rx.shape == (21,)
    spec = rfft2(np.random.default_rng(1).standard_normal((32, 40)).astype(np.float32))
    once = apply_shift(spec, (32, 40), (2.5, -1.0))
    twice = apply_shift(apply_shift(spec, (32, 40), (1.25, -0.5)), (32, 40), (1.25, -0.5))
    np.testing.assert_allclose(once, twice, atol=1e-3)


def test_stacked_shift_ramps_are_the_single_ramps_row_by_row_bit_for_bit():
    shifts = np.array([[1.25, -0.5], [0.0, 0.0], [-7.3, 12.01], [0.5, 0.5]])
    ramps_y, ramps_x = shift_ramps_stack((33, 40), shifts)
    assert ramps_y.shape == (4, 33) and ramps_x.shape == (4, 21)
    assert ramps_y.dtype == ramps_x.dtype == np.complex64
    for i, shift in enumerate(shifts):
        ry, rx = shift_ramps((33, 40), shift)
        assert np.array_equal(ramps_y[i], ry) and np.array_equal(ramps_x[i], rx)


def test_fourier_crop_by_two_preserves_total_counts_and_samples_smooth_image_at_even_pixels():
    rng = np.random.default_rng(2)
    k2 = radial_frequency_sq((128, 128))
    smooth = irfft2(rfft2(rng.standard_normal((128, 128)).astype(np.float32))
                    * np.exp(-k2 * 400).astype(np.float32), (128, 128)) + 5.0
    binned = irfft2(fourier_crop(rfft2(smooth), (128, 128), (64, 64)), (64, 64))
    assert binned.sum() == pytest.approx(smooth.sum(), rel=1e-5)
    # output pixel (i, j) sits on input pixel (2i, 2j) and holds the counts of 2 x 2 pixels
    np.testing.assert_allclose(binned, 4 * smooth[::2, ::2], rtol=1e-4)


def test_non_integer_fourier_crop_preserves_total():
    rng = np.random.default_rng(3)
    image = rng.random((100, 90)).astype(np.float32)
    out = irfft2(fourier_crop(rfft2(image), (100, 90), (80, 72)), (80, 72))
    assert out.shape == (80, 72)
    assert out.sum() == pytest.approx(image.sum(), rel=1e-4)
    with pytest.raises(ValueError):
        fourier_crop(rfft2(image), (100, 90), (120, 72))


def test_binned_length_and_fast_length():
    assert binned_length(4096, 1.0) == 4096
    assert binned_length(8192, 2.0) == 4096
    assert binned_length(1000, 1.5) == 666  # 666.7 rounded, then even: never past the crop
    for n in (999, 1000, 4092, 5760, 11520):  # a binned axis holds no more than n / factor
        for factor in (1.5, 2.0, 3.0):
            assert binned_length(n, factor) <= n / factor + 0.5
    assert fast_length(4178) >= 4178 and fast_length(4178) % 2 == 0
    assert fast_length(1024) == 1024


def test_bfactor_filter_is_exp_minus_b_k2_over_4_and_separable():
    shape = (40, 50)
    f = bfactor_filter(shape, 300.0)
    k2 = radial_frequency_sq(shape)
    np.testing.assert_allclose(f, np.exp(-300.0 * k2 / 4), rtol=1e-5)
    gy, gx = bfactor_filter_1d(shape, 300.0)
    np.testing.assert_allclose(f, gy[:, None] * gx[None, :], rtol=1e-5)
    assert f.dtype == np.float32 and f[0, 0] == 1.0


def test_radial_frequency_in_inverse_angstrom_uses_pixel_size():
    k2 = radial_frequency_sq((100, 100), scale_yx=(2.0, 2.0))
    # x Nyquist of a 2 Å pixel is 0.25 / Å
    assert np.sqrt(k2[0, 50]) == pytest.approx(0.25)
    assert np.sqrt(k2[10, 0]) == pytest.approx(10 / 200)


def test_rfft2_cropped_with_a_reused_buffer_equals_the_fresh_one_and_leaves_no_view_of_it():
    from correction.fourier import rfft2_cropped

    image = np.random.default_rng(2).standard_normal((96, 80)).astype(np.float32)
    fresh = rfft2_cropped(image, (48, 40))
    work = np.full(96 * 21 + 5, np.nan, np.complex64)  # larger than needed, garbage inside
    reused = rfft2_cropped(image, (48, 40), work=work)
    np.testing.assert_array_equal(reused, fresh)
    np.testing.assert_allclose(fresh, fourier_crop(rfft2(image), (96, 80), (48, 40)),
                               rtol=1e-5, atol=1e-4)
    assert not np.shares_memory(reused, work)
    again = rfft2_cropped(image[::-1].copy(), (48, 40), work=work)  # the next frame
    np.testing.assert_array_equal(reused, fresh)  # the first result is not overwritten
    assert not np.array_equal(again, fresh)


def test_2x2_block_sums_are_the_sums_of_each_block_of_four_pixels():
    image = np.random.default_rng(0).random((66, 90), dtype=np.float32)
    want = image.reshape(33, 2, 45, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(sum_2x2(image, workers=2), want, rtol=1e-6)
    with pytest.raises(ValueError, match="even"):
        sum_2x2(image[:65])


def test_crop_from_2x2_block_sums_is_the_spectrum_crop_times_the_block_transfer_unshifted():
    """A band-limited image: the crop made from the block sums equals the crop of the whole
    spectrum times cos(pi ky / ny) cos(pi kx / nx), with no phase (the content is not moved
    by the half pixel of the blocks' centres); on white noise it keeps the power within the
    bound of the docstring (>= 0.98^2 of the signal, plus at most 0.038 folded back)."""
    rng = np.random.default_rng(1)
    ny, nx, my, mx = 512, 640, 64, 80
    ky, kx = frequency_indices(ny), frequency_indices(nx, half=True)
    band = (np.abs(ky)[:, None] < my // 2 - 1) & (kx[None, :] < mx // 2 - 1)
    spectrum = np.zeros((ny, nx // 2 + 1), complex)
    spectrum[band] = rng.normal(size=band.sum()) + 1j * rng.normal(size=band.sum())
    image = np.fft.irfft2(spectrum, s=(ny, nx)).astype(np.float32)

    exact = fourier_crop(rfft2(image), (ny, nx), (my, mx))
    got = rfft2_cropped_2x2(image, (my, mx), workers=2)
    transfer = (np.cos(np.pi * frequency_indices(my) / ny)[:, None]
                * np.cos(np.pi * frequency_indices(mx, half=True) / nx)[None, :])
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, exact * transfer, atol=1e-5 * np.abs(exact).max())

    noise = rng.normal(size=(ny, nx)).astype(np.float32)
    ratio = (np.mean(np.abs(rfft2_cropped_2x2(noise, (my, mx))) ** 2)
             / np.mean(np.abs(fourier_crop(rfft2(noise), (ny, nx), (my, mx))) ** 2))
    assert 0.98 ** 2 - 0.02 <= ratio <= 1.0 + 0.038


def test_crop_from_rows_filled_band_by_band_equals_the_crop_of_the_whole_image_bit_for_bit():
    """Rows written into bands by two threads give the same crop as the whole image: each row
    is transformed alone either way."""
    from correction.fourier import rfft2_cropped, rfft2_cropped_of_rows

    image = np.random.default_rng(5).normal(size=(1500, 1240)).astype(np.float32)
    asked = []

    def fill_rows(r0: int, r1: int, band: np.ndarray) -> None:
        asked.append((r0, r1))
        band[...] = image[r0:r1]

    got = rfft2_cropped_of_rows(fill_rows, image.shape, (640, 500), workers=2)
    np.testing.assert_array_equal(got, rfft2_cropped(image, (640, 500), workers=2))
    assert sorted(r for band in asked for r in range(*band)) == list(range(1500))


def test_crop_from_rows_also_gives_the_block_sums_of_the_same_pass_bit_for_bit():
    """Asked for the 2 x 2 block sums too, the pass over the rows (bands of whole row pairs,
    two threads) gives the crop of the whole image and its sum_2x2, each to the bit."""
    from correction.fourier import rfft2_cropped, rfft2_cropped_of_rows, sum_2x2

    image = np.random.default_rng(6).normal(size=(1502, 1240)).astype(np.float32)
    asked = []

    def fill_rows(r0: int, r1: int, band: np.ndarray) -> None:
        asked.append((r0, r1))
        band[...] = image[r0:r1]

    sums = np.full((751, 620), np.nan, np.float32)
    got = rfft2_cropped_of_rows(fill_rows, image.shape, (640, 500), workers=2, sums_2x2=sums)
    np.testing.assert_array_equal(got, rfft2_cropped(image, (640, 500), workers=2))
    np.testing.assert_array_equal(sums, sum_2x2(image, workers=2))
    assert all(r0 % 2 == 0 and r1 % 2 == 0 for r0, r1 in asked)
    with pytest.raises(ValueError, match="even sides"):
        rfft2_cropped_of_rows(fill_rows, (1501, 1240), (640, 500), sums_2x2=sums)
