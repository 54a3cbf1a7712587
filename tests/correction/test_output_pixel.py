"""What the pipeline hands on at the output pixel: dose weighting, the even/odd resolution and
the even/odd sums, with ``--bin`` and on both sum paths (whole frames, and the local tiles).

The truth is the closed form, not an earlier output. With identical noise-free frames the
dose-weighted sum's spectrum over the plain sum's is, at each spatial frequency k (1/Å, on
the OUTPUT grid), ``sum_i w_i / sqrt(n sum_i w_i^2)`` with ``w_i = exp(-D_i / (2 Ne(k)))``
(Grant & Grigorieff 2015; :mod:`correction.dose`). At k = 0 every weight is 1, so the mean of
the even sum is the sum of the even frames' means.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from correction import pipeline
from correction.dose import accumulated_dose_e_A2, dose_weights
from correction.fourier import radial_frequency_sq
from correction.params import AlignParams, CorrectionParams, DoseParams, ReadParams
from correction.pipeline import correct_frames

# identical frames are a pattern fixed to the detector, and pure counts have nothing to align:
# both said as warnings, as they should be, and not what these tests are about
pytestmark = [pytest.mark.filterwarnings("ignore:the frames share a pattern fixed"),
              pytest.mark.filterwarnings("ignore:too little signal to align")]

PIXEL_A = 1.0
N_FRAMES = 6
DOSE_PER_FRAME_E_A2 = 8.0


def _identical_frames(n: int = N_FRAMES, size: int = 512, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = (gaussian_filter(rng.normal(size=(size, size)), 0.7) * 30 + 100).astype(np.float32)
    return np.repeat(base[None], n, axis=0)


@pytest.fixture(params=["whole frames", "local tiles"])
def sum_path(request, monkeypatch) -> int:
    """Patches per axis of a run that takes that sum path: identical frames fit a local model
    of about zero, which the pipeline would not apply; on the tile path it is applied anyway."""
    if request.param == "whole frames":
        return 1
    fitted = pipeline.estimate_local_motion
    monkeypatch.setattr(pipeline, "estimate_local_motion",
                        lambda *a, **k: dataclasses.replace(fitted(*a, **k), applied=True))
    return 3


def _params(patches: int, *, bin_factor: float = 1.0, voltage_kV: float = 300.0,
            dose: float = DOSE_PER_FRAME_E_A2) -> CorrectionParams:
    return CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose, voltage_kV=voltage_kV),
                            read=ReadParams(bin_factor=bin_factor),
                            align=AlignParams(patches_x=patches, patches_y=patches))


def _weighting_error(out, voltage_kV: float) -> float:
    """Median |measured - closed form| of the dose-weighted over plain spectrum, in a band of
    mid frequencies where the plain sum has power (32 px of each edge left out)."""
    pix = out.pixel_size_A
    inner = (slice(32, -32), slice(32, -32))
    plain = np.fft.rfft2(out.images.sum.astype(np.float64)[inner])
    weighted = np.fft.rfft2(out.images.dw.astype(np.float64)[inner])
    k = np.sqrt(radial_frequency_sq(out.images.sum[inner].shape, scale_yx=(pix, pix))
                .astype(np.float64))
    w = dose_weights(k, accumulated_dose_e_A2(np.full(N_FRAMES, DOSE_PER_FRAME_E_A2)),
                     voltage_kV)
    truth = w.sum(0) / np.sqrt(N_FRAMES * (w * w).sum(0))
    band = (k > 0.05 / pix) & (k < 0.35 / pix) & (np.abs(plain) > np.median(np.abs(plain)))
    return float(np.median(np.abs((weighted[band] / plain[band]).real - truth[band])))


@pytest.mark.parametrize("bin_factor, voltage_kV", [(1.0, 300.0), (2.0, 300.0), (1.0, 200.0),
                                                    (2.0, 100.0)])
def test_each_frequency_is_dose_weighted_by_the_closed_form_at_the_output_pixel(
        sum_path, bin_factor, voltage_kV):
    """Binned by 2, a frequency of the output grid is half as many cycles per Å as the same
    index at the movie's pixel: weighted with the movie's pixel, the sum came out filtered as
    if every frequency were half its value. The voltage reaches both paths."""
    out = correct_frames(_identical_frames(), pixel_size_A=PIXEL_A,
                         params=_params(sum_path, bin_factor=bin_factor, voltage_kV=voltage_kV))
    assert out.pixel_size_A == pytest.approx(PIXEL_A * bin_factor)
    assert (out.local is not None and out.local.applied) == (sum_path > 1)
    assert _weighting_error(out, voltage_kV) < 0.02


def test_the_even_odd_resolution_of_identical_halves_is_the_output_nyquist_in_angstrom(
        sum_path):
    """Noise-free identical frames: even and odd agree to Nyquist, which at ``--bin 2`` is
    twice the OUTPUT pixel (4 Å here), not the movie's (2 Å)."""
    out = correct_frames(_identical_frames(), pixel_size_A=PIXEL_A,
                         params=_params(sum_path, bin_factor=2.0, dose=1.0))
    assert out.resolution.resolution_A >= 2 * out.pixel_size_A * 0.99, out.resolution


def test_the_even_sum_holds_frames_0_2_4_and_the_odd_sum_frames_1_3_5(sum_path):
    rng = np.random.default_rng(1)
    base = (gaussian_filter(rng.normal(size=(384, 384)), 1.0) * 5).astype(np.float32)
    offsets = np.array([10.0, 20.0] * 3, np.float32)  # even frames +10, odd frames +20
    out = correct_frames(base[None] + offsets[:, None, None], pixel_size_A=PIXEL_A,
                         params=_params(sum_path, dose=2.0))
    assert out.images.even.mean() == pytest.approx(3 * 10.0, abs=0.5)
    assert out.images.odd.mean() == pytest.approx(3 * 20.0, abs=0.5)


@pytest.mark.parametrize("bin_factor", [1.0, 2.0])
def test_the_counted_dose_is_counts_over_the_movies_pixel_area_and_the_given_of_frames_used(
        bin_factor):
    """Counting frames of 2 e/px/frame on a 0.8 Å pixel hold 3.125 e/Å² a frame, whatever
    ``--bin`` (it bins after counting); the dose given is the mean of the frames used, not of
    the two thrown frames of another dose."""
    rng = np.random.default_rng(3)
    counts_per_px, pixel_A = 2.0, 0.8
    frames = rng.poisson(counts_per_px, size=(8, 256, 256)).astype(np.uint8)
    per_frame = counts_per_px / pixel_A ** 2
    params = CorrectionParams(dose=DoseParams(frame_doses_e_A2=(50.0, 50.0) + (per_frame,) * 6),
                              read=ReadParams(bin_factor=bin_factor, throw_frames=2),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(frames, pixel_size_A=pixel_A, params=params)
    assert out.dose_count is not None
    assert out.dose_count.counted_e_A2 == pytest.approx(per_frame, rel=0.02)
    assert out.dose_count.given_e_A2 == pytest.approx(per_frame, rel=1e-6)
    assert out.dose_count.mismatch is None
