"""Dose weighting: the closed form (Grant & Grigorieff 2015) and its physics."""

from __future__ import annotations

import numpy as np
import pytest
from noise_power import noise_power_ratios  # tests/helpers (on sys.path via tests/conftest.py)

from correction.dose import (accumulated_dose_e_A2, critical_exposure_e_A2, dose_weights,
                             frame_doses_e_A2, half_inverse_critical_exposure, voltage_factor,
                             weight_normalisation)
from correction.errors import ParameterError
from correction.fourier import radial_frequency_sq, rfft2
from correction.params import DoseParams
from correction.summation import accumulate_sums, sums_to_images
from correction.synthetic import render_movie


def test_critical_exposure_at_300_kV_is_0_245_k_pow_minus_1_665_plus_2_81():
    k = np.array([0.05, 0.1, 0.25, 0.5])
    np.testing.assert_allclose(critical_exposure_e_A2(k), 0.245 * k**-1.665 + 2.81)
    assert critical_exposure_e_A2(0.0) == np.inf


@pytest.mark.parametrize("kv, factor", [(300, 1.0), (200, 0.8), (100, 0.5), (120, 0.56),
                                        (250, 0.9), (80, 0.5), (400, 1.0)])
def test_voltage_factor_table(kv, factor):
    assert voltage_factor(kv) == pytest.approx(factor)
    assert critical_exposure_e_A2(0.2, kv) == pytest.approx(factor * critical_exposure_e_A2(0.2))


def test_voltage_factor_follows_beta_squared_within_2_percent_between_100_and_300_kV():
    def beta2(kv):
        gamma = 1 + kv / 510.999
        return 1 - 1 / gamma**2

    for kv in (100, 120, 200, 300):
        assert voltage_factor(kv) == pytest.approx(beta2(kv) / beta2(300), rel=0.02)


def test_weights_use_dose_at_end_of_frame_plus_pre_exposure_counting_all_frames():
    params = DoseParams(total_dose_e_A2=12.0, pre_exposure_e_A2=30.0)
    doses = frame_doses_e_A2(params, 6)  # includes frames later thrown away
    np.testing.assert_allclose(doses, 2.0)
    d_end = accumulated_dose_e_A2(doses, params.pre_exposure_e_A2)
    np.testing.assert_allclose(d_end, [32, 34, 36, 38, 40, 42])
    k = np.array([0.0, 0.1, 0.3])
    w = dose_weights(k, d_end[2:])  # throw 2 frames: their dose still counts
    ne = 0.245 * np.array([np.inf, 0.1, 0.3]) ** -1.665 + 2.81
    ne[0] = np.inf
    np.testing.assert_allclose(w, np.exp(-d_end[2:, None] / (2 * ne[None, :])))
    assert np.all(w[:, 0] == 1.0)


def test_non_uniform_frame_doses_and_wrong_length_is_an_error():
    params = DoseParams(frame_doses_e_A2=(1.0, 2.0, 0.5))
    np.testing.assert_allclose(accumulated_dose_e_A2(frame_doses_e_A2(params, 3)), [1, 3, 3.5])
    with pytest.raises(ParameterError, match="3 doses for a movie of 4 frames"):
        frame_doses_e_A2(params, 4)


def test_normalisation_is_sqrt_n_over_sum_of_squared_weights():
    k = np.array([0.0, 0.05, 0.2, 0.4])
    d = np.arange(1, 9) * 1.5
    w = dose_weights(k, d, 200)
    np.testing.assert_allclose(weight_normalisation(k, d, 200),
                               np.sqrt(8 / np.sum(w**2, axis=0)))
    assert weight_normalisation(k, d)[0] == pytest.approx(1.0)
    # the normalised weights have the noise power of a plain sum at every frequency
    norm = weight_normalisation(k, d, 200)
    np.testing.assert_allclose(np.sum((w * norm) ** 2, axis=0), 8)


def test_float32_half_inverse_critical_exposure_matches_closed_form():
    k = np.array([0.0, 0.01, 0.1, 0.3, 0.5])
    got = half_inverse_critical_exposure((k**2).astype(np.float32), 200)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 0.5 / critical_exposure_e_A2(k, 200), rtol=1e-5)


def _band_correlation(image: np.ndarray, truth: np.ndarray, pixel_size_A: float,
                      k_lo: float, k_hi: float) -> float:
    k = np.sqrt(radial_frequency_sq(image.shape, scale_yx=(pixel_size_A, pixel_size_A)))
    band = (k >= k_lo) & (k < k_hi)
    a, b = rfft2(image.astype(np.float64))[band], rfft2(truth.astype(np.float64))[band]
    return float(np.real(np.vdot(a, b)) / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real))


def test_dose_weighted_sum_is_closer_to_undamaged_truth_at_high_frequency_than_plain_sum():
    """Frames attenuated by exp(-D/2Ne) (the same curve); 10 frames x 4 e/Å²."""
    rng = np.random.default_rng(4)
    pixel, n = 1.0, 10
    movie = render_movie(rng, shape_yx=(256, 256), n_frames=n, shifts_yx_px=np.zeros((n, 2)),
                         electrons_per_px_per_frame=4.0, pixel_size_A=pixel, gain=None,
                         n_hot_pixels=0, damage=True, contrast=0.5)
    shape = (256, 256)
    spectra = [rfft2(f.astype(np.float32)) for f in movie.frames]
    sums = accumulate_sums(spectra, np.zeros((n, 2)), padded_shape_yx=shape,
                           dose_end_e_A2=accumulated_dose_e_A2(movie.frame_doses_e_A2),
                           pixel_size_A=pixel)
    images = sums_to_images(sums, padded_shape_yx=shape, shape_yx=shape)
    high_plain = _band_correlation(images.sum, movie.truth, pixel, 0.25, 0.5)
    high_dw = _band_correlation(images.dw, movie.truth, pixel, 0.25, 0.5)
    assert high_dw > high_plain + 0.02, (high_dw, high_plain)
    # at low frequency (little damage) both are equally good
    low_plain = _band_correlation(images.sum, movie.truth, pixel, 0.01, 0.05)
    low_dw = _band_correlation(images.dw, movie.truth, pixel, 0.01, 0.05)
    assert low_dw == pytest.approx(low_plain, abs=0.01)
    # the DW sum keeps the plain sum's mean (all weights are 1 at k = 0)
    assert images.dw.mean() == pytest.approx(images.sum.mean(), rel=1e-4)


def test_eer_fractions_of_uneven_size_get_dose_in_proportion_to_their_raw_frames():
    """The dose per frame of EER fractions is that of a whole group of raw frames, as RELION's:
    each raw frame receives it over the group, whatever the fractions' sizes."""
    sizes = (19, 19, 22)  # 60 raw frames grouped by 19: the last fraction took the remainder
    per_fraction = frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=1.0), 3,
                                    raw_frames_per_frame=sizes)
    np.testing.assert_allclose(per_fraction, [1.0, 1.0, 22 / 19], rtol=1e-12)
    # 50 raw frames grouped by 20: [20, 20, 10]; 45: [20, 25]; 2 e/Å² per 20 raw frames
    for raw, truth in [((20, 20, 10), [2.0, 2.0, 1.0]), ((20, 25), [2.0, 2.5])]:
        np.testing.assert_allclose(frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=2.0),
                                                    len(raw), raw_frames_per_frame=raw,
                                                    raw_frames_per_group=20), truth,
                                   rtol=1e-12)
    one = frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=2.0), 1, raw_frames_per_frame=(25,),
                           raw_frames_per_group=20)  # one fraction of 25 raw frames
    np.testing.assert_allclose(one, [2.5], rtol=1e-12)
    total = frame_doses_e_A2(DoseParams(total_dose_e_A2=6.0), 3, raw_frames_per_frame=sizes)
    np.testing.assert_allclose(total, [1.9, 1.9, 2.2], rtol=1e-12)
    even = frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=1.5), 4,
                            raw_frames_per_frame=(20, 20, 20, 20))
    np.testing.assert_allclose(even, frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=1.5), 4))
    listed = frame_doses_e_A2(DoseParams(frame_doses_e_A2=(1.0, 2.0, 3.0)), 3,
                              raw_frames_per_frame=sizes)
    np.testing.assert_array_equal(listed, [1.0, 2.0, 3.0])  # an explicit list is used as given
    with pytest.raises(ParameterError):
        frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=1.0), 3, raw_frames_per_frame=(20, 40))


def test_dose_parameters_weight_alike_when_every_frame_has_received_the_same_dose():
    """A total and an even list of it, SerialEM's rounded per-frame doses and the exact spread,
    weight a movie alike (within 0.01 e/Å² at every frame); another voltage, pre-exposure,
    order of doses, kind of list or length does not."""
    from correction.dose import same_weighting

    total = DoseParams(total_dose_e_A2=4.0)
    raw_even = DoseParams(frame_doses_e_A2=(0.02,) * 200, frame_doses_per="raw_frame")
    assert same_weighting(total, raw_even, 200, tolerance_e_A2=0.01)
    rounded = DoseParams(frame_doses_e_A2=(0.63824,) * 12)
    spread = DoseParams(frame_doses_e_A2=(7.658916 / 12,) * 12)
    assert same_weighting(rounded, spread, 12, tolerance_e_A2=0.01)
    uneven = DoseParams(frame_doses_e_A2=(0.015,) * 100 + (0.025,) * 100,
                        frame_doses_per="raw_frame")
    each_a_little_more = DoseParams(frame_doses_e_A2=(0.0201,) * 200, frame_doses_per="raw_frame")
    for other, n in [(uneven, 200), (each_a_little_more, 200),
                     (DoseParams(total_dose_e_A2=4.0, voltage_kV=200.0), 200),
                     (DoseParams(total_dose_e_A2=4.0, pre_exposure_e_A2=3.0), 200),
                     (DoseParams(frame_doses_e_A2=(0.02,) * 200), 200),  # per frame, not raw
                     (DoseParams(dose_per_frame_e_A2=0.02), 200)]:
        assert not same_weighting(raw_even, other, n, tolerance_e_A2=0.01), other
    assert not same_weighting(total, raw_even, 199, tolerance_e_A2=0.01)  # another length


def test_correct_frames_weights_uneven_eer_fractions_by_their_raw_frame_counts():
    from correction.params import AlignParams, CorrectionParams
    from correction.pipeline import correct_frames

    rng = np.random.default_rng(3)
    movie = render_movie(rng, shape_yx=(128, 128), n_frames=3, shifts_yx_px=np.zeros((3, 2)),
                         electrons_per_px_per_frame=4.0, pixel_size_A=1.0, gain=None,
                         n_hot_pixels=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=2.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(movie.frames, pixel_size_A=1.0, params=params,
                         raw_frames_per_frame=(19, 19, 22))
    np.testing.assert_allclose(out.frame_doses_e_A2, [2.0, 2.0, 2 * 22 / 19], rtol=1e-12)


# --- late tilts: pre-exposure must not turn the weighted sums into NaN -----------------------
# At 0.5 Å pixels the absolute weight exp(-D / 2Ne) squared leaves float32's range at the
# Nyquist corner from ~255 e/Å² (300 kV), ~205 (200 kV), ~140 (120 kV), ~127 (100 kV).
_LATE_TILTS = [(kv, pre) for kv in (100, 200, 300) for pre in (150.0, 250.0, 300.0)] + [
    (120, 150.0), (120, 300.0)]


def _late_tilt_movie(n=6, shape=(64, 64)):
    rng = np.random.default_rng(21)
    frames = rng.poisson(3.0, size=(n, *shape)).astype(np.float32)
    shifts = rng.uniform(-2, 2, size=(n, 2))
    return frames, shifts, accumulated_dose_e_A2(np.full(n, 2.5))


def _global_images(frames, shifts, dose_end, kv, *, as_list):
    spectra = [rfft2(f) for f in frames]
    sums = accumulate_sums(spectra if as_list else iter(spectra), shifts,
                           padded_shape_yx=frames.shape[1:], dose_end_e_A2=dose_end,
                           pixel_size_A=0.5, voltage_kV=kv)
    return sums_to_images(sums, padded_shape_yx=frames.shape[1:], shape_yx=frames.shape[1:])


@pytest.mark.parametrize("as_list", [True, False])
@pytest.mark.parametrize("kv, pre_e_A2", _LATE_TILTS)
def test_late_tilt_dose_weighted_even_odd_sums_are_finite_and_equal_the_unexposed_ones(
        kv, pre_e_A2, as_list):
    """sqrt(n / sum w^2) cancels the common factor exp(-D_pre / 2Ne) exactly, so a late tilt's
    per-tilt dw/even/odd images equal those of the same frames without pre-exposure."""
    frames, shifts, dose_end = _late_tilt_movie()
    fresh = _global_images(frames, shifts, dose_end, kv, as_list=as_list)
    late = _global_images(frames, shifts, dose_end + pre_e_A2, kv, as_list=as_list)
    for name in ("sum", "dw", "even", "odd"):
        image, reference = getattr(late, name), getattr(fresh, name)
        assert np.isfinite(image).all(), f"{name} at {kv} kV, {pre_e_A2} e/Å²"
        np.testing.assert_allclose(image, reference, rtol=0,
                                   atol=2e-6 * float(np.abs(reference).max()), err_msg=name)


@pytest.mark.parametrize("kv, pre_e_A2", [(100, 150.0), (100, 300.0), (200, 250.0),
                                          (300, 300.0), (120, 300.0)])
def test_late_tilt_local_sums_are_finite_and_equal_the_unexposed_ones(kv, pre_e_A2):
    from correction.local_apply import local_sums

    frames, shifts, dose_end = _late_tilt_movie(shape=(96, 96))
    kw = dict(pixel_size_A=0.5, voltage_kV=kv, tile_px=48, workers=1)
    fresh = local_sums(frames, shifts, None, dose_end_e_A2=dose_end, **kw)
    late = local_sums(frames, shifts, None, dose_end_e_A2=dose_end + pre_e_A2, **kw)
    for name in ("plain", "dose_weighted", "even", "odd"):
        image, reference = getattr(late, name), getattr(fresh, name)
        assert np.isfinite(image).all(), f"{name} at {kv} kV, {pre_e_A2} e/Å²"
        np.testing.assert_allclose(image, reference, rtol=0,
                                   atol=2e-6 * float(np.abs(reference).max()), err_msg=name)


def test_relative_weights_times_their_normalisation_equal_the_absolute_ones():
    """Where the absolute float64 weights are representable, taking them relative to the first
    frame changes neither the normalised product nor anything beyond rounding."""
    k = np.array([0.0, 0.05, 0.2, 0.5, 1.0, 1.4])
    for kv in (100, 120, 200, 300):
        d = 40.0 + np.cumsum(np.full(8, 2.0))
        absolute = dose_weights(k, d, kv) * weight_normalisation(k, d, kv)
        relative = (dose_weights(k, d, kv, reference_dose_e_A2=d[0])
                    * weight_normalisation(k, d, kv, reference_dose_e_A2=d[0]))
        np.testing.assert_allclose(relative, absolute, rtol=1e-12)
        late = d + 2000.0  # exp(-D / 2Ne) underflows even float64 here
        w = (dose_weights(k, late, kv, reference_dose_e_A2=late[0])
             * weight_normalisation(k, late, kv, reference_dose_e_A2=late[0]))
        np.testing.assert_allclose(w, relative, rtol=1e-9)
        assert dose_weights(k, late[0], kv, reference_dose_e_A2=late[0]).max() == 1.0


# An EER movie's last fraction of a remainder of raw frames: 9 whole fractions of 1 e/Å² and
# one of half a group (or one with a small remainder joined: 1.45 groups)
_RAGGED = [(1.0,) * 9 + (0.5,), (1.0,) * 9 + (1.45,)]


def _noise_frames(doses: tuple[float, ...], shape: tuple[int, int], seed: int) -> np.ndarray:
    """Shot noise of a flat specimen: white, its variance in proportion to each frame's dose."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(100.0 * d, np.sqrt(100.0 * d), shape) for d in doses]
                    ).astype(np.float32)


def _assert_noise_power_of_the_plain_sums(images: dict[str, np.ndarray], doses, pixel_A: float
                                          ) -> None:
    """Each weighted sum has, at every frequency, the noise power of the plain sum of its own
    frames: all of them (``dw``), the even or the odd ones (counted by their dose)."""
    for key, ratio in noise_power_ratios(images, doses, pixel_A).items():
        assert ratio == pytest.approx(1.0, abs=0.02), (key, ratio)

@pytest.mark.parametrize("doses", _RAGGED)
@pytest.mark.parametrize("as_list", [True, False])
def test_frames_of_unequal_dose_count_by_their_dose_in_the_weighted_sums(doses, as_list):
    """The normalisation sqrt(sum d / sum d w^2): with the frame count instead, the odd half of
    a movie whose last fraction holds half a group had 5-8 % too much noise power."""
    n, shape, pixel = len(doses), (384, 384), 1.0
    frames = _noise_frames(doses, shape, seed=11)
    spectra = [rfft2(f) for f in frames]
    sums = accumulate_sums(spectra if as_list else iter(spectra), np.zeros((n, 2)),
                           padded_shape_yx=shape, dose_end_e_A2=accumulated_dose_e_A2(doses),
                           frame_dose_e_A2=np.array(doses), pixel_size_A=pixel,
                           group_bytes=3 * spectra[0].nbytes)
    images = sums_to_images(sums, padded_shape_yx=shape, shape_yx=shape)
    _assert_noise_power_of_the_plain_sums(
        {k: getattr(images, k) for k in ("sum", "dw", "even", "odd")}, doses, pixel)


@pytest.mark.parametrize("doses", _RAGGED)
def test_frames_of_unequal_dose_count_by_their_dose_in_the_local_sums(doses):
    from correction.local_apply import local_sums

    n, shape, pixel = len(doses), (384, 384), 1.0
    frames = _noise_frames(doses, shape, seed=12)
    dose_end = accumulated_dose_e_A2(doses)
    kw = dict(pixel_size_A=pixel, tile_px=128, workers=1, movie_dose_end_e_A2=dose_end,
              movie_frame_dose_e_A2=np.array(doses))
    whole = local_sums(frames, np.zeros((n, 2)), None, dose_end_e_A2=dose_end, **kw)
    _assert_noise_power_of_the_plain_sums(
        {"sum": whole.plain, "dw": whole.dose_weighted, "even": whole.even, "odd": whole.odd},
        doses, pixel)
    # in two parts (as the binned path makes them): the same sums
    first = local_sums(frames[:4], np.zeros((4, 2)), None, dose_end_e_A2=dose_end[:4], **kw)
    parts = local_sums(frames[4:], np.zeros((n - 4, 2)), None, dose_end_e_A2=dose_end[4:],
                       first_frame=4, add_to=first, **kw)
    for name in ("plain", "dose_weighted", "even", "odd"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=0,
                                   atol=1e-4 * float(np.abs(getattr(whole, name)).max()))


def test_equal_frame_doses_give_exactly_the_frame_count_normalisation():
    k = np.linspace(0.0, 0.5, 6)
    d = accumulated_dose_e_A2([0.1] * 7, 40.0)
    np.testing.assert_array_equal(
        weight_normalisation(k, d, 300, frame_dose_e_A2=np.full(7, 0.1)),
        weight_normalisation(k, d, 300))
    # doses that tell the frames apart: by dose; none positive: equal
    ragged = weight_normalisation(k, d, 300, frame_dose_e_A2=[0.1] * 6 + [0.05])
    assert ragged[0] == pytest.approx(1.0) and not np.allclose(ragged,
                                                                weight_normalisation(k, d, 300))
    np.testing.assert_array_equal(weight_normalisation(k, d, 300, frame_dose_e_A2=np.zeros(7)),
                                  weight_normalisation(k, d, 300))
