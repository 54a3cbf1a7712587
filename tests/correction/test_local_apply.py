"""Applying a known displacement field: the tile-wise Fourier shifts with a first-order term
reproduce an exact render of the moved specimen (noise-free), for fields up to 10 px."""

from __future__ import annotations

import numpy as np
import pytest

from correction.dose import accumulated_dose_e_A2
from correction.local_apply import field_jacobian, local_sums, plan_tiles, tile_layout
from correction.synthetic_local import (
    LocalDeformation,
    local_displacement_yx_px,
    render_local_movie,
    smooth_global_drift,
)


class _OneFrame:
    """Frame ``i`` of a field, as a field of one frame."""

    def __init__(self, field, i: int) -> None:
        self.field, self.i = field, i

    def displacement_yx_px(self, y, x):
        return self.field.displacement_yx_px(y, x)[self.i:self.i + 1]


@pytest.fixture(scope="module")
def clean_movie():
    """2048^2 x 4 noise-free frames, 6 px global drift, a 10 px local field at the corners
    (twice the gradient of a 10 px field at 4K)."""
    rng = np.random.default_rng(31)
    shape = (2048, 2048)
    field = LocalDeformation(shape, 4, corner_amplitude_px=10.0, seed=31)
    return render_local_movie(shape, 4, dose_per_pixel=1.5, deformation=field,
                              global_shifts_yx_px=smooth_global_drift(4, total_px=6.0, rng=rng),
                              rng=rng, contrast=0.2, noise_free=True)


def _applied_frame(movie, i: int, **kw) -> np.ndarray:
    field = _OneFrame(movie.sum_referenced_field(), i)
    sums = local_sums(movie.frames[i:i + 1], np.zeros((1, 2)), field, pixel_size_A=1.0,
                      dose_end_e_A2=np.array([1.5]), workers=2, **kw)
    return sums.plain


def test_known_10_px_field_is_applied_within_0_05_px_everywhere(clean_movie):
    """Every frame, corrected with its true field, matches the exact render of the specimen at
    its mean position: residual displacement below 0.05 px in every 32-px window."""
    n = clean_movie.frames.shape[0]
    truth_frame = clean_movie.truth_sum / n
    for i in (0, n - 1):  # the two frames farthest from the mean position
        corrected = _applied_frame(clean_movie, i)
        _, residual = local_displacement_yx_px(corrected, truth_frame, window_px=32)
        assert np.max(np.hypot(residual[:, 0], residual[:, 1])) < 0.05, i
        inner = (slice(32, -32), slice(32, -32))
        rel = np.std((corrected - truth_frame)[inner]) / np.std(truth_frame[inner])
        assert rel < 0.03, i


def test_the_residual_measure_sees_a_constant_shift_per_large_tile(clean_movie):
    """The same check fails for constant shifts on 512-px tiles (the error it guards)."""
    corrected = _applied_frame(clean_movie, 0, tile_px=512, taylor=False)
    _, residual = local_displacement_yx_px(corrected, clean_movie.truth_sum / 4, window_px=32)
    assert np.max(np.hypot(residual[:, 0], residual[:, 1])) > 0.3


class _Centred:
    """A deformation with its temporal mean removed (as the fitted local model is)."""

    def __init__(self, field) -> None:
        self.field = field

    def displacement_yx_px(self, y, x):
        d = self.field.displacement_yx_px(y, x)
        return d - d.mean(axis=0)


def test_tiles_follow_the_field_gradient():
    shape = (4096, 4096)
    weak = _Centred(LocalDeformation(shape, 10, corner_amplitude_px=1.0, seed=0))
    strong = _Centred(LocalDeformation(shape, 10, corner_amplitude_px=10.0, seed=0))
    weak_plan, strong_plan = plan_tiles(weak, shape), plan_tiles(strong, shape)
    assert not weak_plan.taylor and weak_plan.bound_px <= 0.03
    assert strong_plan.taylor and strong_plan.bound_px <= 0.4
    assert strong_plan.max_gradient == pytest.approx(10 * weak_plan.max_gradient, rel=1e-6)
    assert plan_tiles(None, shape).tile_px == 512 and not plan_tiles(None, shape).taylor


@pytest.mark.parametrize("shape, most_pixels", [((4096, 4096), 1.12), ((4092, 5760), 1.13)])
def test_tiles_fit_the_frame_with_few_pixels_beyond_it(shape, most_pixels):
    """With the first-order term, the tiles are the layout of least work whose bound holds:
    a frame is rarely a multiple of the largest core, and 512-px tiles put 1.27 (4096^2) and
    1.20 (K3) times the frame's pixels through the transforms and sums."""
    field = _Centred(LocalDeformation(shape, 10, corner_amplitude_px=3.0, seed=0))
    plan = plan_tiles(field, shape)
    layout = tile_layout(shape, tile_px=plan.tile_px, overlap_px=plan.overlap_px)
    tile_pixels = len(layout.origins_yx) * layout.tile_size ** 2
    assert plan.taylor and plan.bound_px <= 0.4
    assert tile_pixels <= most_pixels * shape[0] * shape[1]


def test_field_jacobian_of_a_linear_field_is_its_matrix():
    class Linear:
        def displacement_yx_px(self, y, x):
            y, x = np.asarray(y, float), np.asarray(x, float)
            return np.stack([1e-3 * y - 2e-3 * x, 4e-3 * x], axis=-1)[None]

    jac = field_jacobian(Linear(), np.array([10.0, 900.0]), np.array([5.0, 300.0]))
    np.testing.assert_allclose(jac[0, 1], [[1e-3, -2e-3], [0.0, 4e-3]], atol=1e-12)


def test_first_order_term_keeps_float32_and_the_dose_weighted_mean():
    rng = np.random.default_rng(4)
    shape, n = (512, 512), 4
    field = _Centred(LocalDeformation(shape, n, corner_amplitude_px=6.0, seed=4))
    frames = rng.poisson(3.0, size=(n,) + shape).astype(np.float32)
    sums = local_sums(frames, np.zeros((n, 2)), field, pixel_size_A=1.0,
                      dose_end_e_A2=accumulated_dose_e_A2(np.full(n, 3.0)), workers=2)
    assert plan_tiles(field, shape).taylor
    for image in (sums.plain, sums.dose_weighted, sums.even, sums.odd):
        assert image.dtype == np.float32 and image.shape == shape
    assert sums.plain.mean() == pytest.approx(frames.sum(axis=0).mean(), rel=2e-3)
    assert sums.dose_weighted.mean() == pytest.approx(sums.plain.mean(), rel=1e-3)
    assert (sums.even + sums.odd).mean() == pytest.approx(sums.plain.mean(), rel=1e-3)


def test_a_weak_field_on_constant_shift_tiles_is_applied_within_0_05_px():
    """A weak field (the gradient of a 1-px field at 4K) gets constant shifts on small tiles,
    without the first-order term. The tests held the plan's own arithmetic (its gradient
    bound, 0.03 px); the field applied to a noise-free render is measured against the truth
    here, as the strong field's is above (on 512-px tiles it leaves more than 0.05 px)."""
    rng = np.random.default_rng(7)
    shape = (1024, 1024)
    field = LocalDeformation(shape, 4, corner_amplitude_px=0.25, seed=7)  # 1 px at 4K
    movie = render_local_movie(shape, 4, dose_per_pixel=1.5, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(4, total_px=4.0, rng=rng),
                               rng=rng, contrast=0.2, noise_free=True)
    plan = plan_tiles(movie.sum_referenced_field(), shape)
    assert not plan.taylor
    for i in (0, 3):
        corrected = _applied_frame(movie, i)
        _, residual = local_displacement_yx_px(corrected, movie.truth_sum / 4, window_px=32)
        assert np.max(np.hypot(residual[:, 0], residual[:, 1])) < 0.05, i
    coarse = _applied_frame(movie, 0, tile_px=512, taylor=False)
    _, residual = local_displacement_yx_px(coarse, movie.truth_sum / 4, window_px=32)
    assert np.max(np.hypot(residual[:, 0], residual[:, 1])) > 0.05
