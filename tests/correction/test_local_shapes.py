"""Local motion through the whole pipeline on the frame shapes detectors write: non-square
frames in both orientations (a K3 frame is 4092 x 5760; a camera rotated in SerialEM gives
5760 x 4092) and Fourier-binned super-resolution frames (output pixels twice the input's).

An x/y swap of the patch grid or of the model's axes, or a model or tile shift left in input
pixels on binned output, cancels on a square unbinned frame and shows only here. Each case is
checked against the known field and against the noise-free truth sum, never against an
earlier output."""

from __future__ import annotations

import numpy as np
import pytest

from correction.fourier import fourier_crop, irfft2, rfft2
from correction.params import AlignParams, CorrectionParams, DoseParams, ReadParams
from correction.pipeline import correct_frames
from correction.synthetic_local import (
    LocalDeformation,
    frc_band_against_truth,
    render_local_movie,
    smooth_global_drift,
)

N_FRAMES = 10
DOSE_E_PER_PX = 1.5
CORNER_FIELD_PX = 6.0  # input pixels, last frame against the first


def _binned(image: np.ndarray, out_shape_yx: tuple[int, int]) -> np.ndarray:
    """``image`` Fourier-binned to ``out_shape_yx``, as the pipeline bins the frames."""
    spectrum = fourier_crop(rfft2(image.astype(np.float32)), image.shape, out_shape_yx)
    return irfft2(spectrum, out_shape_yx)


def _rms_px(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(error**2, axis=-1))))


@pytest.fixture(scope="module", params=[((512, 768), 1), ((768, 512), 1), ((1024, 1536), 2)],
                ids=["wide", "tall", "wide-binned-by-2"])
def corrected(request):
    """A movie with a known drift and local field, corrected with the default 5 x 5 patches,
    and once more with global alignment only."""
    shape, bin_factor = request.param
    rng = np.random.default_rng(11)
    field = LocalDeformation(shape, N_FRAMES, corner_amplitude_px=CORNER_FIELD_PX, seed=11)
    drift = smooth_global_drift(N_FRAMES, total_px=10.0, rng=rng)
    movie = render_local_movie(shape, N_FRAMES, dose_per_pixel=DOSE_E_PER_PX, deformation=field,
                               global_shifts_yx_px=drift, rng=rng, contrast=0.2)
    results = {}
    for name, patches in (("local", 5), ("global", 1)):
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=DOSE_E_PER_PX),
                                  read=ReadParams(bin_factor=bin_factor),
                                  align=AlignParams(patches_x=patches, patches_y=patches))
        results[name] = correct_frames(movie.frames, pixel_size_A=1.0, params=params,
                                       workers=2)
    return movie, bin_factor, results


def test_the_fitted_field_is_the_true_one_over_the_whole_frame(corrected):
    movie, bin_factor, results = corrected
    out = results["local"]
    assert out.local.applied, out.local.reason
    ny, nx = movie.frames.shape[1:]
    y, x = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 13), indexing="ij")
    shifts_in_px = out.shifts_yx_px * bin_factor  # the record's shifts are in output pixels
    true = movie.aligned_sum_displacement_yx_px(y, x, shifts_in_px)
    global_only = np.broadcast_to((shifts_in_px - shifts_in_px.mean(axis=0))[:, None, None, :],
                                  true.shape)
    # the model takes output-pixel positions and gives output-pixel displacements
    local = out.local.model.displacement_yx_px(y / bin_factor, x / bin_factor) * bin_factor
    error, error_global_only = _rms_px(global_only + local - true), _rms_px(global_only - true)
    assert error_global_only > 0.6  # the field is there, and global alignment cannot take it
    assert error < 0.1, (error, error_global_only)


def test_every_sum_is_sharper_against_the_truth_than_with_global_alignment_only(corrected):
    movie, bin_factor, results = corrected
    out_shape = results["local"].images.sum.shape
    assert out_shape == tuple(int(n // bin_factor) for n in movie.frames.shape[1:])
    truth = movie.truth_sum if bin_factor == 1 else _binned(movie.truth_sum, out_shape)
    # binned output: its band 0.4-0.9 of Nyquist is 0.2-0.45 of the input's; lower, the blur of
    # a few pixels costs little (0.2-0.7 there: local 0.874 against global only 0.854, the gain
    # the unbinned sums show at the same frequencies, 0.873 against 0.851)
    band = (0.2, 0.7) if bin_factor == 1 else (0.4, 0.9)
    for name in ("sum", "dw", "even", "odd"):
        with_local, global_only = (
            frc_band_against_truth(getattr(results[kind].images, name), truth, band_nyquist=band)
            for kind in ("local", "global"))
        assert with_local > global_only + 0.02, (name, with_local, global_only)
