"""Patch-based local motion: the model, its robust fit, the tile-wise application and the
end-to-end accuracy against synthetic movies with a known deformation field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from local_movies import local_movie
from scipy.ndimage import gaussian_filter

from correction.align_global import estimate_shifts
from correction.align_local import (
    LocalMotionModel,
    LocalParams,
    estimate_local_motion,
    fit_local_model,
    local_motion_record,
    patch_grid,
)
from correction.dose import accumulated_dose_e_A2
from correction.errors import ParameterError
from correction.fourier import fast_length, fourier_crop, rfft2, shift_image
from correction.local_apply import local_sums, tile_layout
from correction.params import AlignParams
from correction.summation import accumulate_sums, pad_frame, sums_to_images
from correction.synthetic_local import (
    LocalDeformation,
    frc_band_against_truth,
    render_local_movie,
    smooth_global_drift,
)

ALIGN_SIZE = 1024


def _rms(err: np.ndarray) -> float:
    """RMS length of 2-vectors in the last axis."""
    return float(np.sqrt(np.mean(np.sum(err * err, axis=-1))))


def _global_then_local(frames: np.ndarray, params: AlignParams = AlignParams(),
                       local: LocalParams = LocalParams()):
    n, ny, nx = frames.shape
    spectra = rfft2(frames.astype(np.float32), workers=2)
    m = min(ALIGN_SIZE, ny)
    cropped = fourier_crop(spectra, (ny, nx), (m, m))
    del spectra
    ga = estimate_shifts(cropped, params=params, output_px_per_grid_px=ny / m, workers=2)
    shifts = ga.shifts_yx_px * (ny / m)
    lm = estimate_local_motion(cropped, (m, m), (ny, nx), shifts, params=params, local=local,
                               workers=2)
    return shifts, lm


def _displacements_at_patch_centres(movie, shifts, lm) -> tuple[np.ndarray, np.ndarray]:
    """``(estimated, true)`` displacements (global + local) at the patch centres, shape
    (n_frames, n_patches, 2), temporal means removed (px); the truth is that of the feature
    at each centre in the globally aligned sum, what the local sums apply there."""
    c = lm.patch_centres_yx_px
    true = movie.aligned_sum_displacement_yx_px(c[:, 0], c[:, 1], shifts)
    est = shifts[:, None, :] + lm.fitted_yx_px.transpose(1, 0, 2)
    return est - est.mean(axis=0), true


def _error_at_patch_centres(movie, shifts, lm) -> tuple[float, float]:
    """RMS error of (global + local) and of global only vs truth, temporal means removed."""
    est, true = _displacements_at_patch_centres(movie, shifts, lm)
    glob = np.broadcast_to(shifts[:, None, :] - shifts.mean(axis=0), true.shape)
    return _rms(est - true), _rms(glob - true)


def _field_errors_over_frame(movie, shifts, lm, step: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-point RMS over frames of the (global + local) and of the global-only displacement
    minus the truth, temporal means removed, on a grid over the whole frame from edge to edge
    (corners included): ``(local, global_only)``, each of shape (points_y, points_x), px."""
    ny, nx = movie.frames.shape[1:]
    y, x = np.meshgrid(np.linspace(0, ny - 1, ny // step + 1),
                       np.linspace(0, nx - 1, nx // step + 1), indexing="ij")
    true = movie.aligned_sum_displacement_yx_px(y, x, shifts)
    global_only = np.broadcast_to((shifts - shifts.mean(axis=0))[:, None, None, :], true.shape)
    local = global_only + (lm.model.displacement_yx_px(y, x) if lm.applied else 0.0)
    return (np.sqrt(np.mean(np.sum((local - true) ** 2, axis=-1), axis=0)),
            np.sqrt(np.mean(np.sum((global_only - true) ** 2, axis=-1), axis=0)))


# ----------------------------------------------------------------------------- model + fit

def _random_model(rng, shape, n_frames, amplitude=1.5) -> LocalMotionModel:
    coeffs = rng.normal(scale=amplitude, size=(2, 6, 3))
    return LocalMotionModel(shape, n_frames, 2, 3, coeffs)


def test_model_displacement_has_zero_temporal_mean_and_zero_model_is_zero():
    rng = np.random.default_rng(0)
    model = _random_model(rng, (4096, 4096), 10)
    y, x = np.meshgrid(np.linspace(0, 4095, 7), np.linspace(0, 4095, 5), indexing="ij")
    d = model.displacement_yx_px(y, x)
    assert d.shape == (10, 7, 5, 2)
    np.testing.assert_allclose(d.mean(axis=0), 0.0, atol=1e-12)
    assert np.abs(d).max() > 0.1
    zero = LocalMotionModel.zero((4096, 4096), 10).displacement_yx_px(y, x)
    assert zero.shape == (10, 7, 5, 2) and not zero.any()


def test_model_fit_recovers_known_field_from_noisy_patch_shifts_with_outliers_within_0_03_px():
    rng = np.random.default_rng(1)
    shape, n_frames = (4096, 4096), 10
    truth = _random_model(rng, shape, n_frames)
    grid = patch_grid((1024, 1024), shape, (5, 5))
    c = grid.centres_yx_px
    true = truth.displacement_yx_px(c[:, 0], c[:, 1]).transpose(1, 0, 2)  # (P, F, 2)
    measured = true + rng.normal(scale=0.05, size=true.shape)
    measured += rng.normal(scale=3.0, size=(len(c), 1, 2))  # unknown constant per patch
    bad_patches = [3, 11, 17]
    measured[bad_patches] += rng.normal(scale=2.0, size=(3, n_frames, 2))
    measured[20, 4] += [1.5, -2.0]  # one wrong peak in an otherwise good patch
    fit = fit_local_model(c, measured, shape_yx=shape)
    assert set(bad_patches) <= set(np.flatnonzero(fit.rejected))
    assert np.sum(fit.rejected) <= 5
    assert _rms(fit.fitted_yx_px - true) < 0.03
    # the model evaluated anywhere matches the truth field, not just at the patch centres
    y, x = np.meshgrid(np.linspace(500, 3600, 6), np.linspace(500, 3600, 6), indexing="ij")
    assert _rms(fit.model.displacement_yx_px(y, x) - truth.displacement_yx_px(y, x)) < 0.05
    assert 0.03 < fit.residual_sigma_px < 0.08
    assert fit.predicted_error_px < 0.05


@pytest.mark.parametrize("wrong_px", [1.0, 2.5, 8.0])
def test_one_wrong_peak_costs_its_frame_not_the_patch(wrong_px):
    """A patch whose correlation peak was wrong in one frame keeps its other frames: the wrong
    frame gets no weight, the patch stays in the fit, and the fit is as good as without it."""
    rng = np.random.default_rng(1)
    shape, n_frames = (4096, 4096), 10
    truth = _random_model(rng, shape, n_frames)
    c = patch_grid((1024, 1024), shape, (5, 5)).centres_yx_px
    true = truth.displacement_yx_px(c[:, 0], c[:, 1]).transpose(1, 0, 2)  # (P, F, 2)
    measured = true + rng.normal(scale=0.05, size=true.shape)
    measured += rng.normal(scale=3.0, size=(len(c), 1, 2))  # unknown constant per patch
    clean = fit_local_model(c, measured, shape_yx=shape)
    measured[12, 4] += wrong_px * np.array([0.6, -0.8])   # the centre patch, frame 4
    fit = fit_local_model(c, measured, shape_yx=shape)
    assert not fit.rejected[12] and np.array_equal(fit.rejected, clean.rejected)
    assert fit.weights[12, 4] == 0 and np.all(fit.weights[12, np.arange(n_frames) != 4] > 0.5)
    assert _rms(fit.fitted_yx_px - true) < 1.05 * _rms(clean.fitted_yx_px - true)


def test_model_is_fitted_to_what_patches_measure_the_field_averaged_over_their_tapers():
    """A patch's shift is the displacement averaged over its pixels (weights: the taper
    squared), not the value at its centre; where the field curves the two differ (here 2-3 %
    of the motion), and a model fitted to the centres' values under-reports the field. Given
    exact patch means of a cubic field, the fit returns the field's point values."""
    from correction.align_local import _taper

    rng = np.random.default_rng(3)
    shape, n_frames = (4096, 4096), 10
    truth = LocalMotionModel(shape, n_frames, 3, 3, rng.normal(scale=1.5, size=(2, 10, 3)))
    grid = patch_grid((1024, 1024), shape, (5, 5))
    factor = grid.output_px_per_grid_px_yx
    py, px = grid.patch_shape_yx
    wy, wx = _taper(py).astype(np.float64) ** 2, _taper(px).astype(np.float64) ** 2
    means = []
    for oy, ox in grid.origins_yx:  # the field averaged over each patch's grid pixels
        y, x = np.meshgrid((oy + np.arange(py)) * factor[0], (ox + np.arange(px)) * factor[1],
                           indexing="ij")
        d = truth.displacement_yx_px(y, x)  # (F, py, px, 2)
        means.append(np.einsum("y,x,fyxa->fa", wy, wx, d) / (wy.sum() * wx.sum()))
    means = np.array(means)
    c = grid.centres_yx_px
    true = truth.displacement_yx_px(c[:, 0], c[:, 1]).transpose(1, 0, 2)
    assert _rms(means - true) > 0.02 * _rms(true)  # the curvature is there
    from correction import align_local

    fit = fit_local_model(c, means, shape_yx=shape, spatial_degree=3, temporal_degree=3,
                          choose_degree=False,
                          patch_spread_yx_px2=align_local.patch_spread_px2(grid))
    assert not fit.rejected.any()
    assert _rms(fit.fitted_yx_px - true) < 1e-3 * _rms(true)
    y, x = np.meshgrid(np.linspace(0, 4095, 9), np.linspace(0, 4095, 9), indexing="ij")
    d_true = truth.displacement_yx_px(y, x)
    assert _rms(fit.model.displacement_yx_px(y, x) - d_true) < 1e-3 * _rms(d_true)


def test_patch_grid_overlaps_and_covers_the_frame():
    grid = patch_grid((512, 512), (4096, 4096), (5, 5))
    size = grid.patch_shape_yx[0]
    assert len(grid.origins_yx) == 25
    assert grid.origins_yx.min() == 0 and grid.origins_yx.max() + size == 512
    stride = np.diff(np.unique(grid.origins_yx[:, 0]))
    assert np.all(stride <= size / 2 + 1)  # at least ~50 % overlap
    np.testing.assert_allclose(grid.centres_yx_px[12], [(256 - 0.5) * 8] * 2, atol=8)


def test_local_params_reject_bad_values_by_name():
    with pytest.raises(ParameterError, match="spatial_degree"):
        LocalParams(spatial_degree=5)
    with pytest.raises(ParameterError, match="max_predicted_error_px"):
        LocalParams(max_predicted_error_px=0)


# ----------------------------------------------------------------------------- tile sums

def test_tile_weights_form_a_partition_of_unity_over_the_frame():
    layout = tile_layout((1000, 1300), tile_px=256, overlap_px=32)
    total = np.zeros((1000, 1300))
    size = layout.tile_size
    for (oy, ox), wy, wx in zip(layout.origins_yx, layout.weights_y, layout.weights_x):
        w = wy[:, None] * wx[None, :]
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + size, 1000), min(ox + size, 1300)
        total[y0:y1, x0:x1] += w[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tile_sums_without_local_motion_equal_exact_global_fourier_shift_sums():
    rng = np.random.default_rng(2)
    n = 768
    base = (gaussian_filter(rng.normal(size=(n, n)), 2.0) * 50 + 10).astype(np.float32)
    shifts = rng.uniform(-6, 6, size=(6, 2))
    frames = np.stack([shift_image(base, s) for s in shifts])  # circular, exact
    dose_end = accumulated_dose_e_A2(np.full(6, 3.0))
    sums = local_sums(frames, shifts, None, pixel_size_A=1.0, dose_end_e_A2=dose_end,
                      tile_px=256, workers=2)
    for image in (sums.plain, sums.dose_weighted, sums.even, sums.odd):
        assert image.dtype == np.float32 and image.shape == (n, n)
    inner = (slice(16, -16), slice(16, -16))  # the reference wraps at the frame edges
    truth = 6 * base
    err = np.abs(sums.plain - truth)[inner]
    assert err.mean() < 0.003 * truth.std() and err.max() < 0.03 * truth.std()
    # dose weighting keeps the mean (k = 0) and the halves sum to the whole at k = 0
    assert sums.dose_weighted.mean() == pytest.approx(sums.plain.mean(), rel=1e-4)
    assert (sums.even + sums.odd).mean() == pytest.approx(sums.plain.mean(), rel=1e-4)
    assert sums.even[inner].mean() == pytest.approx(3 * base[inner].mean(), rel=1e-3)
    assert sums.odd[inner].mean() == pytest.approx(3 * base[inner].mean(), rel=1e-3)


def test_tile_sums_without_local_motion_match_the_global_summation_module():
    """Same frames, same global shifts: tile sums == correction.summation's four sums."""
    rng = np.random.default_rng(3)
    n, n_frames = 640, 5
    shifts = rng.uniform(-4, 4, size=(n_frames, 2))
    base = (gaussian_filter(rng.normal(size=(n + 40, n + 40)), 1.5) * 40 + 20).astype(np.float32)
    frames = np.stack([shift_image(base, s)[20:-20, 20:-20] for s in shifts])
    dose_end = accumulated_dose_e_A2(np.full(n_frames, 4.0))
    padded = (fast_length(n + 16), fast_length(n + 16))
    spectra = [rfft2(pad_frame(f, padded)) for f in frames]
    ref = sums_to_images(accumulate_sums(spectra, shifts, padded_shape_yx=padded,
                                         dose_end_e_A2=dose_end, pixel_size_A=1.2),
                         padded_shape_yx=padded, shape_yx=(n, n))
    tiles = local_sums(frames, shifts, None, pixel_size_A=1.2, dose_end_e_A2=dose_end,
                       tile_px=256, workers=2)
    inner = (slice(16, -16), slice(16, -16))  # edges: different fill conventions
    for mine, theirs in ((tiles.plain, ref.sum), (tiles.dose_weighted, ref.dw),
                         (tiles.even, ref.even), (tiles.odd, ref.odd)):
        err = np.abs(mine - theirs)[inner]
        assert err.mean() < 0.003 * theirs.std() and err.max() < 0.03 * theirs.std()


def test_spot_displaced_by_global_plus_local_shift_lands_back_at_its_place_in_the_sum():
    """Sign pin: a spot displaced by +d in frame i lands back at its place in the sum."""
    n, n_frames = 512, 4
    model = LocalMotionModel((n, n), n_frames, 1, 1,
                             np.array([[[0.0], [4.0], [0.0]], [[0.0], [0.0], [-6.0]]]))
    spot = np.array([100.0, 400.0])  # (y, x) in the sum
    yy, xx = np.mgrid[0:n, 0:n]
    local = model.displacement_yx_px(spot[0], spot[1])  # (F, 2)
    glob = np.array([[1.0, -2.0], [0.5, 0.5], [-0.25, 1.0], [-1.25, 0.5]])
    frames = np.stack([np.exp(-((yy - spot[0] - d[0]) ** 2 + (xx - spot[1] - d[1]) ** 2) / 8.0)
                       for d in glob + local]).astype(np.float32)
    sums = local_sums(frames, glob, model, pixel_size_A=1.0,
                      dose_end_e_A2=accumulated_dose_e_A2(np.full(n_frames, 1.0)),
                      tile_px=128, workers=2)
    peak = np.unravel_index(np.argmax(sums.plain), sums.plain.shape)
    np.testing.assert_array_equal(peak, spot.astype(int))
    reference = n_frames * np.exp(-((yy - spot[0]) ** 2 + (xx - spot[1]) ** 2) / 8.0)
    assert np.abs(sums.plain - reference).max() < 0.02 * n_frames


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def deformed_movie():
    """2048^2 x 10 frames at 1.5 e/px/frame, 8 px global drift, 3 px local field at corners."""
    rng = np.random.default_rng(7)
    shape = (2048, 2048)
    field = LocalDeformation(shape, 10, corner_amplitude_px=3.0, seed=7)
    drift = smooth_global_drift(10, total_px=8.0, rng=rng)
    movie = render_local_movie(shape, 10, dose_per_pixel=1.5, deformation=field,
                               global_shifts_yx_px=drift, rng=rng, contrast=0.2)
    shifts, lm = _global_then_local(movie.frames)
    return movie, shifts, lm


def test_local_displacements_at_patch_centres_within_0_07_px_of_known_field(deformed_movie):
    movie, shifts, lm = deformed_movie
    assert lm.applied, lm.reason
    local_err, global_err = _error_at_patch_centres(movie, shifts, lm)
    assert local_err < 0.07
    assert global_err > 0.2  # the field is really there and global alignment cannot take it


def test_local_correction_sharpens_every_sum_against_noise_free_truth(deformed_movie):
    movie, shifts, lm = deformed_movie
    n = movie.frames.shape[0]
    kw = dict(pixel_size_A=1.0, dose_end_e_A2=accumulated_dose_e_A2(np.full(n, 1.5)), workers=2)
    with_local = local_sums(movie.frames, shifts, lm.model, **kw)
    global_only = local_sums(movie.frames, shifts, None, **kw)
    for name in ("plain", "dose_weighted"):
        frc_local = frc_band_against_truth(getattr(with_local, name), movie.truth_sum)
        frc_global = frc_band_against_truth(getattr(global_only, name), movie.truth_sum)
        assert frc_local > frc_global + 0.01, name
    half_local = frc_band_against_truth(with_local.even + with_local.odd, movie.truth_sum)
    half_global = frc_band_against_truth(global_only.even + global_only.odd, movie.truth_sum)
    assert half_local > half_global + 0.01


def test_motion_record_local_object_has_measured_and_fitted_patch_shifts(deformed_movie):
    movie, shifts, lm = deformed_movie
    record = json.loads(json.dumps(local_motion_record(lm, shifts)))
    assert record["applied"] is True and record["patches_xy"] == [5, 5]
    assert record["model"]["name"] == "polynomial_xy_logt"
    assert len(record["patch_centres_px"]) == 25
    measured = np.array(record["measured_shifts_px"])
    fitted = np.array(record["fitted_shifts_px"])
    assert measured.shape == fitted.shape == (25, 10, 2)
    # [dx, dy], total (global + local) displacement
    np.testing.assert_allclose(fitted[:, :, 0],
                               shifts[None, :, 1] + lm.fitted_yx_px[:, :, 1], atol=1e-3)
    assert _rms(measured - fitted) < 0.2
    assert isinstance(record["rejected_patches"], list)
    choice = record["model"]["spatial_degree_choice"]
    assert choice["max_spatial_degree"] == LocalParams().spatial_degree
    lowered = choice["border_lowered_to"]                  # None: the chosen degree is used
    assert record["model"]["spatial_degree"] == (
        choice["chosen_spatial_degree"] if lowered is None else lowered)
    assert choice["degrees"] == [0, 1, 2, 3] and len(choice["cv_rms_px"]) == 4
    chosen_cv = choice["cv_rms_px"][choice["chosen_spatial_degree"]]
    assert min(choice["cv_rms_px"]) <= chosen_cv <= choice["cv_threshold_px"]


def test_the_recorded_model_evaluated_as_its_formula_says_gives_the_models_field(
        deformed_movie):
    """A reader of S.motion.json evaluates the local model from its record alone: the
    coefficients indexed [spatial term j][time term k], (a, b) = spatial_terms_uv[j] (the
    formula said c[a][b][k], the two exponents, which the arrays are not)."""
    movie, shifts, lm = deformed_movie
    model = json.loads(json.dumps(local_motion_record(lm, shifts)))["model"]
    assert "coefficients_x_px[j][k]" in model["formula"]
    assert "(a, b) = spatial_terms_uv[j]" in model["formula"]
    n, (ny, nx) = lm.model.n_frames, lm.model.shape_yx
    frame = np.arange(n, dtype=np.float64)
    s = np.log1p(frame) / np.log(n)
    time = np.stack([frame / (n - 1)] + [s ** k for k in range(1, model["temporal_degree"])],
                    axis=-1)
    time -= time.mean(axis=0)
    y, x = np.array([0.0, 100.0, ny - 1.0]), np.array([nx - 1.0, 37.0, 0.0])
    u, v = x / nx - 0.5, y / ny - 0.5
    terms = np.stack([u ** a * v ** b for a, b in model["spatial_terms_uv"]], axis=-1)
    d_x = np.einsum("pj,jk,fk->fp", terms, np.array(model["coefficients_x_px"]), time)
    d_y = np.einsum("pj,jk,fk->fp", terms, np.array(model["coefficients_y_px"]), time)
    field = lm.model.displacement_yx_px(y, x)  # (n, points, [dy, dx])
    np.testing.assert_allclose(d_x, field[..., 1], atol=1e-4)
    np.testing.assert_allclose(d_y, field[..., 0], atol=1e-4)


def test_without_local_motion_the_global_result_is_kept():
    rng = np.random.default_rng(11)
    shape = (1024, 1024)
    movie = render_local_movie(shape, 10, dose_per_pixel=1.5,
                               global_shifts_yx_px=smooth_global_drift(10, total_px=6.0, rng=rng),
                               rng=rng, contrast=0.2)
    shifts, lm = _global_then_local(movie.frames)
    assert not lm.applied
    assert "no significant local motion" in lm.reason
    assert local_motion_record(lm, shifts)["applied"] is False


def test_half_a_frame_of_vacuum_does_not_pass_for_local_motion():
    """A tilt whose right half is a hole (flat counts, no specimen) and no local motion: the
    model's extrapolation over the empty patches counted as local motion (RMS 0.27 px against
    a predicted error of 0.045 px), and a spurious field was applied, 2-4x further from the
    truth than the global result. Motion counts where patches measured it, and the predicted
    error allows for the parameters the fit spent."""
    movie, _, rng = local_movie(11, (1024, 1024), 10, e_per_px=0.3, corner_px=0.0,
                                drift_px=6.0, contrast=0.3)
    frames = movie.frames.copy()
    frames[:, :, 512:] = rng.poisson(0.36, (10, 1024, 512))
    _, lm = _global_then_local(frames)
    assert not lm.applied
    assert "no significant local motion" in lm.reason


def test_a_frame_mostly_of_vacuum_is_judged_by_its_specimen():
    """60 % of the frame a hole (flat counts), an 8-px corner field on the specimen: the empty
    patches counted as patches that disagree (only 11 of 25), and the field was not applied.
    Patches without signal count neither for nor against the fit."""
    movie, _, rng = local_movie(22, (1024, 1024), 10, e_per_px=0.5, corner_px=8.0,
                                drift_px=6.0, contrast=0.3)
    frames = movie.frames.copy()
    frames[:, :, 410:] = rng.poisson(0.6, (10, 1024, 1024 - 410))
    shifts, lm = _global_then_local(frames)
    assert lm.applied, lm.reason
    specimen = ~lm.rejected & (lm.confidence >= LocalParams().min_confidence)
    c = lm.patch_centres_yx_px[specimen]
    true = movie.aligned_sum_displacement_yx_px(c[:, 0], c[:, 1], shifts)
    found = shifts[:, None, :] + lm.fitted_yx_px[specimen].transpose(1, 0, 2)
    found -= found.mean(axis=0)
    global_only = np.broadcast_to(shifts[:, None, :] - shifts.mean(axis=0), true.shape)
    assert _rms(found - true) < 0.4 * _rms(global_only - true)  # 0.17 against 0.65 px


def test_a_small_patch_grid_with_signal_everywhere_is_not_called_empty():
    """A 2 x 2 grid holds fewer than six patches: all four with signal is enough to judge its
    model, and the reason must not say the patches lack signal."""
    movie, _, _ = local_movie(7, (1024, 1024), 10, e_per_px=1.5, corner_px=6.0, drift_px=6.0,
                              contrast=0.3)
    _, lm = _global_then_local(movie.frames, AlignParams(patches_x=2, patches_y=2))
    assert "too little signal" not in lm.reason
    assert int(np.sum(lm.confidence >= LocalParams().min_confidence)) == 4


def test_tomography_dose_falls_back_to_global_only_and_says_why():
    rng = np.random.default_rng(12)
    shape = (1024, 1024)
    field = LocalDeformation(shape, 10, corner_amplitude_px=2.0, seed=12)
    movie = render_local_movie(shape, 10, dose_per_pixel=0.2, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(10, total_px=6.0, rng=rng),
                               rng=rng, contrast=0.1)
    shifts, lm = _global_then_local(movie.frames)
    assert not lm.applied
    assert "global only" in lm.reason
    record = local_motion_record(lm, shifts)
    assert record["applied"] is False and record["reason"] == lm.reason


def test_at_tomography_dose_local_correction_is_nowhere_worse_than_global_only():
    """8 frames at 0.1 e/px/frame, a 3-px corner field at 1024²: the cubic model fitted to the
    noisy patches swung beyond the outer patch centres: 1.31 px off at a corner, 0.97 px more
    than global alignment alone there (0.37 px RMS over the frame against 0.44 global).
    The spatial degree is chosen by leave-one-patch-out cross-validation: a lower one here,
    better everywhere, corners included."""
    movie, _, _ = local_movie(0, (1024, 1024), 8, e_per_px=0.1, corner_px=3.0, drift_px=6.0,
                              contrast=0.3)
    shifts, lm = _global_then_local(movie.frames)
    assert lm.applied, lm.reason
    local, global_only = _field_errors_over_frame(movie, shifts, lm)
    assert (local - global_only).max() < 0.15  # 0.97 px worse at a corner with the cubic
    assert local.max() < global_only.max()
    assert _rms(local[..., None]) < 0.5 * _rms(global_only[..., None])  # 0.13 against 0.44
    assert lm.model.spatial_degree == lm.degree_choice.chosen < LocalParams().spatial_degree


def test_a_strong_field_at_tomography_dose_and_low_contrast_is_corrected_when_trusted():
    """10 frames at 0.3 e/px/frame, 10 % contrast, an 8-px corner field: the model's predicted
    error (0.26 px, the actual one about as large) was above the old 0.2 px limit, and the
    movie kept global alignment alone, 1.43 px off (RMS over the frame) where the model
    leaves 0.28 px. The limit is now 0.5 px, up to which the predicted error is calibrated
    (``max_predicted_error_px``)."""
    movie, _, _ = local_movie(14, (1024, 1024), 10, e_per_px=0.3, corner_px=8.0, drift_px=6.0,
                              contrast=0.1)
    shifts, lm = _global_then_local(movie.frames)
    assert lm.applied, lm.reason
    assert 0.2 < lm.predicted_error_px <= LocalParams().max_predicted_error_px
    actual, _ = _error_at_patch_centres(movie, shifts, lm)
    assert 0.7 < actual / lm.predicted_error_px < 1.3
    local, global_only = _field_errors_over_frame(movie, shifts, lm)
    assert local.max() < global_only.max()
    assert _rms(local[..., None]) < 0.3 * _rms(global_only[..., None])


def test_patch_frame_grouping_for_low_dose_still_recovers_the_field():
    rng = np.random.default_rng(13)
    shape = (1024, 1024)
    field = LocalDeformation(shape, 12, corner_amplitude_px=3.0, seed=13)
    movie = render_local_movie(shape, 12, dose_per_pixel=1.0, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(12, total_px=6.0, rng=rng),
                               rng=rng, contrast=0.2)
    shifts, lm = _global_then_local(movie.frames, local=LocalParams(group_frames=2))
    assert lm.group_frames == 2 and local_motion_record(lm, shifts)["group_frames"] == 2
    assert lm.applied, lm.reason
    local_err, global_err = _error_at_patch_centres(movie, shifts, lm)
    assert local_err < 0.1 < global_err


def test_the_patch_grouping_is_the_second_value_of_motioncor2s_group_else_the_first():
    """``--patch-group`` (MotionCor2's second -Group value) groups the patches' frames alone;
    without it the patches take ``--group``'s value."""
    from daemon.commands.cli import build_parser
    from daemon.settings.correction_options import params_from_args

    def align(*flags: str) -> AlignParams:
        args = build_parser().parse_args(["correct", "m.mrc", "--out", "o",
                                          "--dose-per-frame", "1", *flags])
        return params_from_args(args).align

    assert (align().group_frames, align().patch_group) == (1, 1)
    assert (align("--group", "3").group_frames, align("--group", "3").patch_group) == (3, 3)
    both = align("--group", "1", "--patch-group", "2")
    assert (both.group_frames, both.patch_group_frames, both.patch_group) == (1, 2, 2)
    rng = np.random.default_rng(5)
    movie = render_local_movie((512, 512), 8, dose_per_pixel=2.0, rng=rng, contrast=0.3)
    shifts, lm = _global_then_local(movie.frames, params=both)
    assert lm.group_frames == 2 and local_motion_record(lm, shifts)["group_frames"] == 2


def test_patch_grid_off_means_global_only():
    spectra = np.zeros((10, 64, 33), dtype=np.complex64)
    lm = estimate_local_motion(spectra, (64, 64), (256, 256), np.zeros((10, 2)),
                               params=AlignParams(patches_x=1, patches_y=1))
    assert not lm.applied and "global only" in lm.reason
    assert not lm.model.displacement_yx_px(np.array([10.0]), np.array([10.0])).any()


# ----------------------------------------------------------------------------- pipeline

def test_correct_movie_applies_local_motion_to_all_four_outputs_and_records_it(tmp_path):
    import mrcfile

    from correction.params import CorrectionParams, DoseParams
    from correction.pipeline import correct_movie

    rng = np.random.default_rng(21)
    shape = (1024, 1024)
    field = LocalDeformation(shape, 10, corner_amplitude_px=3.0, seed=21)
    movie = render_local_movie(shape, 10, dose_per_pixel=1.5, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(10, total_px=6.0, rng=rng),
                               rng=rng, contrast=0.2)
    path = tmp_path / "deformed.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(movie.frames)
        mrc.voxel_size = 1.1  # (1.0 reads as "no pixel size" in MRC headers)
    dose = DoseParams(dose_per_frame_e_A2=1.5 / 1.1**2)
    results = {}
    for label, patches in (("local", 5), ("global", 1)):
        params = CorrectionParams(dose=dose, align=AlignParams(patches_x=patches,
                                                               patches_y=patches))
        res = correct_movie(path, tmp_path / label, params, workers=2)
        images = {}
        for kind in ("sum", "dw", "even", "odd"):
            with mrcfile.open(res.outputs[kind]) as mrc:
                images[kind] = mrc.data.astype(np.float32)
        results[label] = (res, images)
    res, images = results["local"]
    record = json.loads(res.outputs["motion"].read_text())
    assert record["local"]["applied"] is True, record["local"]["reason"]
    assert np.array(record["local"]["fitted_shifts_px"]).shape == (25, 10, 2)
    assert results["global"][0].record["local"]["applied"] is False
    glob_images = results["global"][1]
    for kind in ("sum", "dw"):
        assert (frc_band_against_truth(images[kind], movie.truth_sum)
                > frc_band_against_truth(glob_images[kind], movie.truth_sum) + 0.005), kind
    assert (frc_band_against_truth(images["even"] + images["odd"], movie.truth_sum)
            > frc_band_against_truth(glob_images["even"] + glob_images["odd"],
                                     movie.truth_sum) + 0.005)


# ----------------------------------------------------------------------------- strong fields

def _centred_truth_at(field: LocalDeformation, centres: np.ndarray) -> np.ndarray:
    """True local displacements at ``centres``, temporal mean removed, (P, F, 2)."""
    d = field.displacement_yx_px(centres[:, 0], centres[:, 1])
    return (d - d.mean(axis=0)).transpose(1, 0, 2)


def _default_fits_at_4k(seed: int, n_frames: int, *, corner_px: float, noise_px: float):
    """The true displacements of a 4K field at a 5 x 5 patch grid's centres, the default
    model fitted to them (its own floor), and fitted to them with ``noise_px`` of noise and
    an unknown offset per patch (as measured): ``(true, oracle_fit, fit)``."""
    rng = np.random.default_rng(seed)
    shape = (4096, 4096)
    field = LocalDeformation(shape, n_frames, corner_amplitude_px=corner_px, seed=seed)
    centres = patch_grid((1024, 1024), shape, (5, 5)).centres_yx_px
    true = _centred_truth_at(field, centres)
    defaults = LocalParams()
    degrees = dict(spatial_degree=defaults.spatial_degree,
                   temporal_degree=defaults.temporal_degree)
    oracle = fit_local_model(centres, true, shape_yx=shape, **degrees)
    measured = (true + rng.normal(scale=noise_px, size=true.shape)
                + rng.normal(scale=3.0, size=(len(centres), 1, 2)))
    return true, oracle, fit_local_model(centres, measured, shape_yx=shape, **degrees)


def test_default_model_fits_a_strong_non_polynomial_field_within_0_03_px_at_patch_centres():
    """10 px corner field at 4K (fast early motion, doming, swirl): the default model's own
    floor (fit to the true displacements) is below 0.01 px, and the fit to patch shifts with
    0.03 px noise and unknown per-patch offsets is within 0.03 px of the truth."""
    true, oracle, fit = _default_fits_at_4k(41, 10, corner_px=10.0, noise_px=0.03)
    assert _rms(oracle.fitted_yx_px - true) < 0.01
    assert not fit.rejected.any()
    assert _rms(fit.fitted_yx_px - true) < 0.03


@pytest.mark.parametrize("n_frames", [40, 60])
def test_default_model_follows_the_fast_early_motion_of_long_movies(n_frames):
    """Beam-induced motion settles within a few frames, however long the movie: in time
    polynomials of frame / (n - 1) the fit to the true displacements of an 8-px corner field
    erred by 0.22 px RMS and 1.8 px in the first frame at 40 frames, and noisy patch shifts
    had half their patches rejected (the shared misfit counted as disagreement)."""
    true, oracle, fit = _default_fits_at_4k(44, n_frames, corner_px=8.0, noise_px=0.04)
    assert _rms(oracle.fitted_yx_px - true) < 0.03
    assert np.abs(oracle.fitted_yx_px - true).max() < 0.15
    assert not fit.rejected.any()
    assert _rms(fit.fitted_yx_px - true) < 0.04


def test_predicted_error_does_not_scale_with_the_confidences_absolute_size():
    """Only the ratios of the patch confidences weight the fit: confidences 20x smaller (as
    at low dose) give the same fit and the same predicted error, and that prediction is
    within a factor of 2 of the actual error."""
    rng = np.random.default_rng(42)
    shape, n_frames = (4096, 4096), 10
    truth = _random_model(rng, shape, n_frames)
    centres = patch_grid((1024, 1024), shape, (5, 5)).centres_yx_px
    true = truth.displacement_yx_px(centres[:, 0], centres[:, 1]).transpose(1, 0, 2)
    measured = true + rng.normal(scale=0.05, size=true.shape)
    confidence = rng.uniform(0.3, 0.9, size=len(centres))
    fits = [fit_local_model(centres, measured, shape_yx=shape, patch_weights=scale * confidence,
                            spatial_degree=2, temporal_degree=3) for scale in (1.0, 0.05)]
    assert fits[1].predicted_error_px == pytest.approx(fits[0].predicted_error_px, rel=1e-6)
    np.testing.assert_allclose(fits[1].fitted_yx_px, fits[0].fitted_yx_px, atol=1e-9)
    actual = _rms(fits[0].fitted_yx_px - true)
    assert 0.5 * actual < fits[0].predicted_error_px < 2.0 * actual


@pytest.fixture(scope="module")
def strongly_deformed_movie():
    """2048^2 x 10 at 1.5 e/px/frame, 5 px corner field (the gradient of 10 px at 4K)."""
    rng = np.random.default_rng(43)
    shape = (2048, 2048)
    field = LocalDeformation(shape, 10, corner_amplitude_px=5.0, seed=43)
    movie = render_local_movie(shape, 10, dose_per_pixel=1.5, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(10, total_px=8.0, rng=rng),
                               rng=rng, contrast=0.2)
    shifts, lm = _global_then_local(movie.frames)
    return movie, shifts, lm


def test_strong_field_is_accepted_and_estimated_within_0_025_px_at_patch_centres(
        strongly_deformed_movie):
    movie, shifts, lm = strongly_deformed_movie
    assert lm.applied, lm.reason
    local_err, global_err = _error_at_patch_centres(movie, shifts, lm)
    assert local_err < 0.025
    assert global_err > 0.4


def test_strong_field_at_high_dose_keeps_the_cubic_model(strongly_deformed_movie):
    """The cross-validated spatial degree stays at the cubic where the data support it (a
    quadratic misses the swirl at the corners), and the field is right over the whole frame."""
    movie, shifts, lm = strongly_deformed_movie
    assert lm.degree_choice.chosen == lm.model.spatial_degree == 3
    local, global_only = _field_errors_over_frame(movie, shifts, lm)
    assert local.max() < 0.2 < 1.0 < global_only.max()  # 0.12 px at a corner


def test_tomography_dose_without_local_motion_is_rejected_with_a_reason():
    rng = np.random.default_rng(44)
    shape = (1024, 1024)
    movie = render_local_movie(shape, 10, dose_per_pixel=0.2,
                               global_shifts_yx_px=smooth_global_drift(10, total_px=6.0, rng=rng),
                               rng=rng, contrast=0.1)
    shifts, lm = _global_then_local(movie.frames)
    assert not lm.applied
    assert "global only" in lm.reason


# ----------------------------------------------------------------------------- predicted error

def _fits_with_correlated_noise(n_frames: int, group: int, draws: int = 30):
    """Fits to the 4K 5 x 5 patch centres of a known model plus patch errors correlated as the
    patches overlap (one error per group of frames, interpolated): (actual, predicted) RMS
    errors at the centres, one per draw. The shifts are residuals after global alignment on the
    same pixels, whose error per frame is the patches' mean error: it leaves the measurements
    and joins the truth they are compared with."""
    from correction.align_global import frame_groups, interpolate_group_shifts
    from correction.align_local import patch_error_correlation

    rng = np.random.default_rng(5)
    shape = (4096, 4096)
    grid = patch_grid((1024, 1024), shape, (5, 5))
    centres = grid.centres_yx_px
    rho = patch_error_correlation(grid)
    chol = np.linalg.cholesky(rho)
    # a gentle field: the prediction's allowance for the model's misfit (1 % of the motion,
    # none here) stays small against the noise
    truth = _random_model(rng, shape, n_frames, amplitude=0.3)
    true = truth.displacement_yx_px(centres[:, 0], centres[:, 1]).transpose(1, 0, 2)
    groups = frame_groups(n_frames, group)
    actual, predicted = [], []
    for _ in range(draws):
        eps = np.einsum("pq,qga->pga", chol, rng.normal(scale=0.05, size=(25, len(groups), 2)))
        noise = np.stack([interpolate_group_shifts(groups, e, n_frames) for e in eps])
        global_error = noise.mean(axis=0)
        target = true - (global_error - global_error.mean(axis=0))
        measured = target + noise + rng.normal(scale=2.0, size=(25, 1, 2))  # unknown offsets
        fit = fit_local_model(centres, measured, shape_yx=shape, spatial_degree=2,
                              temporal_degree=3, error_correlation=rho, group_frames=group)
        actual.append(_rms(fit.fitted_yx_px - target))
        predicted.append(fit.predicted_error_px)
    return np.array(actual), np.array(predicted)


@pytest.mark.parametrize("n_frames, group", [(10, 1), (20, 2), (20, 4)])
def test_predicted_error_allows_for_overlapping_patches_and_grouped_frames(n_frames, group):
    """Neighbouring patches share half their pixels and grouped frames share one measurement,
    so the patches' errors are not independent: the predicted error is the RMS error of the
    fit on average (within 15 %; 0.90-0.93x here); taking them as independent (grouped frames
    by a factor sqrt(n / n_groups)) predicted 0.57-0.64x of it."""
    actual, predicted = _fits_with_correlated_noise(n_frames, group)
    assert np.sqrt(np.mean(predicted**2)) == pytest.approx(np.sqrt(np.mean(actual**2)), rel=0.15)


def test_patch_error_correlation_is_the_overlap_of_the_squared_tapers():
    """Each pair's correlation is the normalised overlap of the two patches' squared tapers
    laid on the grid (computed here pixel by pixel in 2-D): about 0.47 between neighbours of
    the default grid (measured on synthetic movies without local motion: 0.44), their product
    diagonally, next to nothing beyond."""
    from correction.align_local import _taper, patch_error_correlation

    grid = patch_grid((1024, 1024), (4096, 4096), (5, 5))
    rho = patch_error_correlation(grid)
    np.testing.assert_allclose(rho, rho.T)
    np.testing.assert_allclose(np.diag(rho), 1.0)
    (py, px), weights = grid.patch_shape_yx, []
    taper2 = np.outer(_taper(py), _taper(px)).astype(np.float64) ** 2
    for oy, ox in np.asarray(grid.origins_yx)[[0, 1, 2, 5, 6, 12]]:
        laid = np.zeros(grid.grid_shape_yx)
        laid[oy:oy + py, ox:ox + px] = taper2
        weights.append(laid)
    overlap = [float(np.sum(weights[0] * w) / np.sum(weights[0] ** 2)) for w in weights]
    np.testing.assert_allclose(rho[0, [0, 1, 2, 5, 6, 12]], overlap, rtol=1e-6, atol=1e-12)
    assert 0.4 < rho[0, 1] < 0.55 and rho[0, 6] == pytest.approx(rho[0, 1] ** 2)
    assert rho[0, 2] < 1e-3 and rho[0, 12] < 1e-6  # tapered ends overlap next-but-one


@pytest.mark.parametrize("seed, e_per_px, n_frames, corner_px, group", [
    (0, 0.3, 10, 3.0, 1),  # actual / predicted 2.08 before, 1.15 now
    (1, 0.3, 10, 0.0, 1),  # no field: 2.39, 1.00
    (1, 0.1, 8, 3.0, 1),  # 1.97, 1.04
    (0, 0.3, 20, 3.0, 2),  # grouped frames: 2.13, 0.88
])
def test_predicted_error_at_low_dose_is_the_actual_error_at_the_patch_centres(
        seed, e_per_px, n_frames, corner_px, group):
    """The error of the fitted displacement at the patch centres against the known field is
    within 0.6-1.5x of the predicted error (``motion.json``'s ``predicted_error_px``); it was
    1.8-2.4x, the error correlated between overlapping patches and grouped frames."""
    movie, _, _ = local_movie(seed, (1024, 1024), n_frames, e_per_px=e_per_px,
                              corner_px=corner_px, drift_px=6.0, contrast=0.3)
    shifts, lm = _global_then_local(movie.frames, local=LocalParams(group_frames=group))
    assert not lm.rejected.any()
    actual, _ = _error_at_patch_centres(movie, shifts, lm)
    assert 0.6 * lm.predicted_error_px < actual < 1.5 * lm.predicted_error_px


def test_predicted_error_of_a_strong_field_over_40_frames_at_high_dose():
    """At 3 e/px/frame an 8-px corner field over 40 frames leaves, beside the noise, an
    error that grows with the motion (the time basis's misfit, about 1 % of it), so the
    prediction allows 1 % of the fitted motion. Against the truth the aligned sum refers
    to, the mean ratio actual / predicted over two movies is 0.93-1.1: the 1.5 % allowed
    for a gain shortfall against the field at reference positions, which the right truth
    does not show (regression gain 0.997-0.998 here), made it 0.88."""
    ratios = []
    for seed in (0, 1):
        movie, _, _ = local_movie(seed, (1024, 1024), 40, e_per_px=3.0, corner_px=8.0,
                                  drift_px=6.0, contrast=0.3)
        shifts, lm = _global_then_local(movie.frames)
        assert lm.applied, lm.reason
        actual, _ = _error_at_patch_centres(movie, shifts, lm)
        ratios.append(actual / lm.predicted_error_px)
    assert 0.93 < np.mean(ratios) < 1.1, ratios


# ----------------------------------------------------------------------------- grouped frames

def test_grouped_frames_are_fitted_as_group_means_resolving_the_first_frames():
    """A group sum's alignment measures the mean displacement over its frames: the model,
    averaged over each group's frames, is fitted to those and evaluated per frame, so a field
    in the model's span comes back exactly in every frame, the first ones included. Fitted to
    the per-frame shifts interpolated between group centres it missed them by up to 0.09 px
    here (linear extrapolation across the fast early motion)."""
    from correction.align_global import frame_groups, interpolate_group_shifts

    rng = np.random.default_rng(2)
    shape = (4096, 4096)
    centres = patch_grid((1024, 1024), shape, (5, 5)).centres_yx_px
    n_frames, group = 20, 3
    truth = LocalMotionModel(shape, n_frames, 2, 2, rng.normal(scale=1.5, size=(2, 6, 2)))
    true = truth.displacement_yx_px(centres[:, 0], centres[:, 1]).transpose(1, 0, 2)
    groups = frame_groups(n_frames, group)
    means = np.stack([true[:, g].mean(axis=1) for g in groups], axis=1)  # what is measured
    measured = np.stack([interpolate_group_shifts(groups, m, n_frames) for m in means])
    measured += rng.normal(scale=2.0, size=(25, 1, 2))  # unknown offsets
    fit = fit_local_model(centres, measured, shape_yx=shape, spatial_degree=2, temporal_degree=2,
                          group_frames=group, choose_degree=False)
    np.testing.assert_allclose(fit.fitted_yx_px, true, atol=1e-9)
    np.testing.assert_allclose(fit.model.coefficients_yx, truth.coefficients_yx, atol=1e-9)


@pytest.mark.parametrize("seed, e_per_px, group", [
    (1, 0.1, 3),  # first 3 frames 0.31 px before, 0.12 now; actual / predicted 1.88, 0.80
    (0, 0.3, 4),  # 0.36, 0.12; 2.61, 1.06
])
def test_grouped_frames_follow_the_fast_early_motion_of_a_strong_field(seed, e_per_px, group):
    """At low dose with frames grouped in threes and fours, a strong (8 px) field that moves
    fastest in the first frames: the fitted displacement at the patch centres is within
    0.2 px over the first three frames (it was 0.31-0.36 px, the model fitted to shifts
    interpolated between group centres), and the predicted error is the actual one within
    0.6-1.5x (it was 1.9-2.6x optimistic)."""
    movie, _, _ = local_movie(seed, (1024, 1024), 20, e_per_px=e_per_px, corner_px=8.0,
                              drift_px=6.0, contrast=0.3)
    shifts, lm = _global_then_local(movie.frames, local=LocalParams(group_frames=group))
    assert lm.applied and not lm.rejected.any()
    est, true = _displacements_at_patch_centres(movie, shifts, lm)
    assert _rms((est - true)[:3]) < 0.2
    actual = _rms(est - true)
    assert 0.6 * lm.predicted_error_px < actual < 1.5 * lm.predicted_error_px


def test_patches_without_signal_predict_no_error_and_the_record_says_none():
    """10 % contrast at 0.05 e/px/frame: no patch has signal. The model fitted to the noise
    peaks had a small residual, and the record said a predicted error of 0.36 px (0.14 px on
    a cryo-like field) where the shifts erred by pixels: a claim the data cannot make."""
    from correction.align_local import local_motion_record

    movie, _, _ = local_movie(2, (1024, 1024), 10, e_per_px=0.05, corner_px=0.0, drift_px=6.0,
                              contrast=0.1)
    shifts, lm = _global_then_local(movie.frames)
    assert not lm.applied and lm.reason.startswith("too little signal")
    assert not np.isfinite(lm.predicted_error_px)
    assert local_motion_record(lm, shifts)["predicted_error_px"] is None


def test_a_frame_whose_patches_are_all_rejected_leaves_a_finite_predicted_error():
    """A stage jerk in one frame that the time basis cannot follow: the robust fit rejects
    every patch in that frame. Its weight (0) made the frame-common error 0 / 0 (a floor of
    1e-300 squared underflows), the predicted error NaN, and the pipeline refused the model
    as "too uncertain (predicted error nan px)"."""
    rng = np.random.default_rng(0)
    shape = (1024, 1440)
    cy, cx = np.meshgrid(np.linspace(170, 853, 5), np.linspace(240, 1200, 5), indexing="ij")
    centres = np.column_stack([cy.ravel(), cx.ravel()])
    measured = np.zeros((25, 10, 2))
    measured[:, 5, 0] = 1.0                                # every patch: frame 5 jumps 1 px
    measured -= measured.mean(axis=1, keepdims=True)
    measured += rng.normal(scale=0.02, size=measured.shape)
    fit = fit_local_model(centres, measured, shape_yx=shape, spatial_degree=3, temporal_degree=5)
    assert np.any(fit.weights.sum(axis=0) == 0)           # the jerk's frame: all rejected
    assert np.isfinite(fit.predicted_error_px) and 0 < fit.predicted_error_px < 0.2


def _corrected_dome(seed: int, dose: float, contrast: float, corner_px: float,
                    grid_yx: tuple[int, int]):
    """A 1440 x 1024 x 10 movie with a dome of ``corner_px`` at the corners, through the
    pipeline: its local motion and, on a ``grid_yx`` of points from edge to edge, the true
    displacement, global alignment's and the applied model's, each (F, gy, gx, 2) px."""
    from correction.params import CorrectionParams, DoseParams
    from correction.pipeline import correct_frames

    shape, n = (1024, 1440), 10
    rng = np.random.default_rng(seed)
    movie = render_local_movie(shape, n, dose_per_pixel=dose,
                               deformation=LocalDeformation(shape, n,
                                                            corner_amplitude_px=corner_px,
                                                            seed=seed),
                               global_shifts_yx_px=smooth_global_drift(n, total_px=8.0, rng=rng),
                               rng=rng, contrast=contrast)
    out = correct_frames(movie.frames, pixel_size_A=1.0, workers=2,
                         params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose)))
    shifts = out.shifts_yx_px
    yy, xx = np.meshgrid(np.linspace(0, shape[0] - 1, grid_yx[0]),
                         np.linspace(0, shape[1] - 1, grid_yx[1]), indexing="ij")
    truth = movie.aligned_sum_displacement_yx_px(yy, xx, shifts)
    global_only = np.broadcast_to((shifts - shifts.mean(0))[:, None, None, :], truth.shape)
    applied = global_only + out.local.model.displacement_yx_px(yy, xx)
    return out.local, truth, global_only, applied


def test_a_model_that_would_swing_at_the_frame_border_is_lowered_to_a_degree_that_does_not():
    """0.3 e/px/frame, a gentle 0.7 px dome: the cross-validation at the patch centres chose a
    cubic, whose corners swung 0.3-0.5 px off the truth where leaving the local model out
    errs by 0.2 px (found by an audit of 63 synthetic movies). The degree is lowered while the
    model's border displacement does not stand out from its predicted error there; the
    applied model is then no worse than global-only at any corner or edge midpoint, and
    better over the frame."""
    local, truth, global_only, applied = _corrected_dome(101, 0.3, 0.3, 0.7, (9, 9))
    assert local.applied and local.degree_choice.chosen == 3
    assert local.degree_choice.border_lowered_to == local.model.spatial_degree < 3

    def per_point(err):
        return np.sqrt(np.mean(np.sum(err ** 2, axis=-1), axis=0))  # (9, 9), px

    g, m = per_point(global_only - truth), per_point(applied - truth)
    border = np.zeros((9, 9), bool)
    border[[0, 0, 0, 4, 4, 8, 8, 8], [0, 4, 8, 0, 8, 0, 4, 8]] = True
    assert np.all(m[border] <= g[border] + 0.02), (m[border], g[border])
    assert _rms(applied - truth) < 0.7 * _rms(global_only - truth)


def test_a_dome_measured_at_one_and_a_half_times_its_predicted_error_is_applied():
    """0.6 e/px/frame, 10% contrast, a 2 px dome: the fitted motion stood 1.8 times its
    predicted error, under the 2 asked before, so the model that halves the error global
    alignment leaves was refused. Without a field the ratio stays at or below 1.23 (162
    synthetic movies: LocalParams.min_significance), so 1.5 is asked now."""
    local, truth, global_only, applied = _corrected_dome(103, 0.6, 0.1, 2.0, (17, 23))
    assert local.applied, local.reason
    assert _rms(applied - truth) < 0.6 * _rms(global_only - truth)


def test_the_patches_aligned_at_once_stay_within_the_aligned_frames_size_on_a_many_core_pc(
        monkeypatch):
    """A thread per CPU aligned a patch stack each: on a 16-core PC, 120-frame movies peaked
    1.6 GB above the memory model. Beyond the first patch, those in flight now hold at most
    the aligned frames' size (numpy's allocations, traced)."""
    import threading
    import tracemalloc

    import correction.align_local as align_local
    from correction.align_local import measure_patch_shifts, patch_scratch_bytes
    from correction.params import AlignParams

    monkeypatch.setattr(align_local, "thread_count", lambda workers: 12)  # as on a big PC
    frames = np.random.default_rng(0).poisson(3.0, (60, 256, 256)).astype(np.float32)
    grid = patch_grid((256, 256), (1024, 1024), (5, 5))
    params = AlignParams(patches_x=5, patches_y=5)
    per_patch = patch_scratch_bytes(60, grid.patch_shape_yx)
    assert 12 * per_patch > 2 * frames.nbytes  # the old way: far above the budget
    running = []
    original = align_local.estimate_shifts

    def counted(*args, **kwargs):
        running.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(align_local, "estimate_shifts", counted)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        measure_patch_shifts(frames, grid, params=params, local=LocalParams(), workers=-1)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert 1 < len(set(running)) <= 1 + frames.nbytes // per_patch  # threaded, within budget
    assert peak <= frames.nbytes + 2 * per_patch, (peak / 2**20, per_patch / 2**20)
