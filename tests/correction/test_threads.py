"""Work split over threads gives exactly what one thread gives: bands of the local sums (with
gain-corrected rows read by several threads at once), blocks of the global sums, strips of the
hot-pixel test and frames of the global alignment."""

from __future__ import annotations

import numpy as np
import pytest

from correction.align_global import estimate_shifts
from correction.defects import detect_hot_pixels, plan_replacement
from correction.fourier import fourier_crop, rfft2, rfft2_cropped
from correction.gain import GainReference
from correction.local_apply import local_sums
from correction.params import AlignParams
from correction.gained_rows import GainedRows
from correction.summation import accumulate_sums
from correction.synthetic import render_movie
from correction.synthetic_local import LocalDeformation
from correction.threads import run_chunks, thread_count

SHAPE = (512, 640)
N_FRAMES = 5


def test_run_chunks_covers_every_item_once_in_contiguous_chunks():
    seen: list[tuple[int, int]] = []
    run_chunks(lambda lo, hi: seen.append((lo, hi)), 7, 3)
    assert sorted(seen) == [(0, 2), (2, 5), (5, 7)]
    seen.clear()
    run_chunks(lambda lo, hi: seen.append((lo, hi)), 1, 4)
    assert seen == [(0, 1)]
    assert thread_count(3) == 3 and thread_count(-1) >= 1


def test_run_chunks_raises_what_a_chunk_raises():
    def work(lo, hi):
        if lo > 0:
            raise ValueError("chunk failed")

    with pytest.raises(ValueError, match="chunk failed"):
        run_chunks(work, 4, 2)


@pytest.fixture(scope="module")
def movie():
    rng = np.random.default_rng(11)
    raw = rng.poisson(1.5, size=(N_FRAMES,) + SHAPE).astype(np.int16)
    gain = rng.uniform(0.8, 1.2, size=SHAPE).astype(np.float32)
    field = LocalDeformation(SHAPE, N_FRAMES, corner_amplitude_px=3.0, seed=3)
    shifts = rng.normal(scale=2.0, size=(N_FRAMES, 2))
    return raw, gain, field, shifts


@pytest.mark.parametrize("threads", [2, 3])
def test_local_sums_in_parallel_bands_equal_one_thread(movie, threads):
    """Bands run on several threads, each reading gain-corrected rows (with defects replaced)
    through its own buffer: the four sums equal one thread's up to float rounding in the rows
    where neighbouring bands overlap (added in the order the bands finish)."""
    raw, gain, field, shifts = movie
    bad = np.zeros(SHAPE, bool)
    bad[100, 200] = bad[300, 17] = True
    padded = (SHAPE[0] + 16, SHAPE[1] + 16)
    bad_padded = np.zeros(padded, bool)
    bad_padded[:SHAPE[0], :SHAPE[1]] = bad
    ref = GainReference(gain=gain, dark=None, defect_mask=None, plan=None)

    def sums(workers):
        rows = GainedRows(raw, ref, plan_replacement(bad_padded), 1.5, padded)
        return local_sums(rows, shifts, field, pixel_size_A=1.0, shape_yx=SHAPE,
                          dose_end_e_A2=np.arange(1, N_FRAMES + 1) * 2.0, workers=workers)

    one, many = sums(1), sums(threads)
    for name in ("plain", "dose_weighted", "even", "odd"):
        expected = getattr(one, name)
        np.testing.assert_allclose(getattr(many, name), expected, rtol=0,
                                   atol=1e-6 * np.abs(expected).max(), err_msg=name)


def test_global_sums_in_parallel_blocks_equal_one_thread(movie):
    raw, _, _, shifts = movie
    spectra = [rfft2(f.astype(np.float32)) for f in raw]
    kw = dict(padded_shape_yx=SHAPE, dose_end_e_A2=np.arange(1, N_FRAMES + 1) * 2.0,
              pixel_size_A=1.0)
    one = accumulate_sums([s.copy() for s in spectra], shifts, workers=1, **kw)
    two = accumulate_sums([s.copy() for s in spectra], shifts, workers=2, **kw)
    for name in ("sum", "dw", "even", "odd"):
        np.testing.assert_array_equal(getattr(two, name), getattr(one, name), err_msg=name)


def test_hot_pixel_strips_in_parallel_flag_what_one_thread_flags(movie):
    raw = movie[0]
    summed = raw.sum(axis=0).astype(np.float32)
    summed[50, 60] += 80
    summed[400, 600] += 80
    one = detect_hot_pixels(summed, workers=1)
    two = detect_hot_pixels(summed, workers=2)
    np.testing.assert_array_equal(two, one)
    assert one[50, 60] and one[400, 600]


def test_global_alignment_with_threads_finds_the_shifts_one_thread_finds():
    """Frames split over threads sum in a different order (float rounding only)."""
    syn = render_movie(np.random.default_rng(2), shape_yx=(384, 384), n_frames=8,
                       electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0,
                       dtype=np.float32)
    spectra = rfft2(syn.frames.astype(np.float32))
    one = estimate_shifts(spectra, params=AlignParams(), shape_yx=(384, 384), workers=1)
    two = estimate_shifts(spectra, params=AlignParams(), shape_yx=(384, 384), workers=2)
    np.testing.assert_allclose(two.shifts_yx_px, one.shifts_yx_px, atol=1e-4)
    truth = syn.shifts_yx_px - syn.shifts_yx_px.mean(axis=0)
    assert np.sqrt(np.mean((one.shifts_yx_px - truth) ** 2)) < 0.1


def test_cropped_transform_equals_the_crop_of_the_full_transform():
    """rfft2_cropped (rows in blocks, only the kept columns along y) equals fourier_crop of the
    full rfft2, for even and odd output shapes."""
    img = np.random.default_rng(4).normal(size=(300, 420)).astype(np.float32)
    full = rfft2(img)
    for out_shape in ((128, 128), (151, 97), (300, 420)):
        np.testing.assert_allclose(rfft2_cropped(img, out_shape),
                                   fourier_crop(full, img.shape, out_shape),
                                   rtol=0, atol=1e-5 * np.abs(full).max())
