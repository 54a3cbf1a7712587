"""Shifted weighted sums: even/odd are disjoint halves, nothing wraps around, float32 out."""

from __future__ import annotations

import numpy as np
import pytest

from correction.fourier import fast_length, rfft2
from correction.summation import accumulate_sums, frame_mean, pad_frame, sums_to_images


def _sum_frames(frames, shifts, *, padding=0, dose_step=1e-6, pixel_size_A=1.0):
    ny, nx = frames[0].shape
    padded = (fast_length(ny + padding), fast_length(nx + padding)) if padding else (ny, nx)
    spectra = [rfft2(pad_frame(f, padded)) for f in frames]
    sums = accumulate_sums(spectra, shifts, padded_shape_yx=padded,
                           dose_end_e_A2=dose_step * np.arange(1, len(frames) + 1),
                           pixel_size_A=pixel_size_A)
    return sums_to_images(sums, padded_shape_yx=padded, shape_yx=(ny, nx))


def test_even_and_odd_sums_hold_disjoint_frames_0_2_4_and_1_3_5():
    n, shape = 6, (64, 64)
    frames = []
    for i in range(n):
        frame = np.full(shape, 1.0, np.float32)
        frame[8 + 8 * i, 10] = 100.0  # marker of frame i
        frames.append(frame)
    images = _sum_frames(frames, np.zeros((n, 2)))
    for i in range(n):
        marker = (8 + 8 * i, 10)
        even_has, odd_has = images.even[marker] > 50, images.odd[marker] > 50
        assert (even_has, odd_has) == ((True, False) if i % 2 == 0 else (False, True)), i
        assert images.sum[marker] == pytest.approx(100 + (n - 1), rel=1e-3)
    for image in (images.sum, images.dw, images.even, images.odd):
        assert image.dtype == np.float32 and image.shape == shape


def test_dw_sum_equals_plain_sum_when_dose_is_negligible_and_halves_sum_their_own_frames():
    rng = np.random.default_rng(0)
    frames = [rng.poisson(5.0, (48, 40)).astype(np.float32) for _ in range(4)]
    images = _sum_frames(frames, np.zeros((4, 2)), dose_step=1e-9)
    np.testing.assert_allclose(images.dw, images.sum, rtol=1e-4, atol=1e-3)
    # each half is the dose-weighted sum of its own frames (same per-frame scale)
    np.testing.assert_allclose(images.even, frames[0] + frames[2], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(images.odd, frames[1] + frames[3], rtol=1e-4, atol=1e-3)


def test_bright_feature_near_left_edge_does_not_wrap_to_right_edge_under_large_shift():
    shape = (64, 96)
    frame = np.full(shape, 1.0, np.float32)
    frame[30:33, 2:5] = 500.0  # near the left edge
    frames = [frame, frame]
    # specimen displaced +30 px in x: aligning moves content 30 px to the left, off the frame
    shifts = np.array([[0.0, 30.0], [0.0, 30.0]])
    padded = _sum_frames(frames, shifts, padding=40)
    assert padded.sum[:, 40:].max() < 5.0  # the right part of the frame stays empty
    assert padded.sum.min() > 1.0  # uncovered pixels hold the frames' mean, not zeros
    # without padding the same shift wraps the feature round to the right edge
    wrapped = _sum_frames(frames, shifts)
    assert wrapped.sum[:, 40:].max() > 500.0


def test_pad_frame_fills_with_the_mean():
    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = pad_frame(frame, (5, 6))
    np.testing.assert_array_equal(out[:3, :4], frame)
    assert np.all(out[3:, :] == frame.mean()) and np.all(out[:, 4:] == frame.mean())


@pytest.mark.parametrize("workers", [1, 2])
def test_the_frame_mean_equals_the_float64_mean_on_a_k3_frame_of_counts_and_of_a_gain_corrected_view(
        workers):
    """A K3-sized frame of counts (uint8) and a gain-corrected float32 view inside a padded
    buffer (rows not contiguous with each other): the mean of float32 row sums added in
    float64 is the float64 mean to 1e-7 relative, with the rows in one thread or two."""
    rng = np.random.default_rng(2)
    counts = rng.poisson(1.3, size=(4092, 5760)).astype(np.uint8)
    assert frame_mean(counts, workers) == pytest.approx(counts.mean(dtype=np.float64), rel=1e-7)
    padded = np.full((4320, 6000), -7.0, np.float32)
    view = padded[:4092, :5760]
    np.multiply(counts, rng.uniform(0.5, 2.0, size=counts.shape).astype(np.float32), out=view)
    assert frame_mean(view, workers) == pytest.approx(view.mean(dtype=np.float64), rel=1e-7)
    assert np.isnan(frame_mean(np.empty((0, 5), np.float32)))


@pytest.mark.parametrize("n_spectra", [0, 2, 4])
@pytest.mark.parametrize("as_list", [True, False])
def test_accumulate_rejects_a_number_of_spectra_other_than_of_shifts(n_spectra, as_list):
    spec = rfft2(np.ones((8, 8), np.float32))
    specs = [spec.copy() for _ in range(n_spectra)]
    with pytest.raises(ValueError, match="spectra|frames"):
        accumulate_sums(specs if as_list else iter(specs), np.zeros((3, 2)),
                        padded_shape_yx=(8, 8), dose_end_e_A2=np.ones(3), pixel_size_A=1.0,
                        group_bytes=None if as_list else 2 * 8 * 5 * 8)


@pytest.mark.parametrize("group_frames", [None, 5, 2, 1])
@pytest.mark.parametrize("block_elements", [32768, 200])
def test_sums_match_closed_form_with_non_uniform_doses_for_lists_and_streams(
        group_frames, block_elements, monkeypatch):
    """plain = sum F_i R_i; half/dw sums = sqrt(n_set / sum w^2) * sum w_i F_i R_i: for a
    list (None) and for a stream read in groups of 5, 2 or 1 frames, whose sums run on from
    group to group (even/odd parity and dose weights by the frame's place in the movie)."""
    import correction.summation as summation
    from correction.dose import dose_weights
    from correction.fourier import apply_shift, radial_frequency_sq

    monkeypatch.setattr(summation, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(0)
    shape, n, pixel = (64, 96), 5, 1.3
    spectra = [(rng.standard_normal((64, 49)) + 1j * rng.standard_normal((64, 49)))
               .astype(np.complex64) for _ in range(n)]
    shifts = rng.standard_normal((n, 2)) * 3
    dose_end = np.cumsum([1.0, 1.0, 2.0, 1.0, 1.0]) + 5.0
    k = np.sqrt(radial_frequency_sq(shape, scale_yx=(pixel, pixel)).astype(np.float64))
    w = dose_weights(k, dose_end)
    aligned = [apply_shift(s.astype(np.complex128), shape, -t) for s, t in zip(spectra, shifts)]
    even = sum(w[i] * aligned[i] for i in range(0, n, 2))
    odd = sum(w[i] * aligned[i] for i in range(1, n, 2))
    expect = {"sum": sum(aligned),
              "even": even * np.sqrt(3 / (w[0::2] ** 2).sum(0)),
              "odd": odd * np.sqrt(2 / (w[1::2] ** 2).sum(0)),
              "dw": (even + odd) * np.sqrt(5 / (w**2).sum(0))}
    source = [s.copy() for s in spectra]
    as_list = group_frames is None
    got = accumulate_sums(source if as_list else iter(source), shifts, padded_shape_yx=shape,
                          dose_end_e_A2=dose_end, pixel_size_A=pixel,
                          group_bytes=None if as_list else group_frames * 64 * 49 * 8)
    for name, value in expect.items():
        np.testing.assert_allclose(getattr(got, name), value, atol=1e-5 * np.abs(value).max())
