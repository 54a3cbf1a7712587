"""Memory bounded by design: a memory-mapped movie's pages are not kept once used, and the
predicted peak of a movie does not grow with its frame count beyond the alignment data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import correction.pipeline as pipeline
from correction import memory_model
from correction.gained_rows import sum_raw_frames
from correction.grids import EXTRA_MARGIN_PX, plan_grids
from correction.memory_model import frames_kept_for
from correction.params import AlignParams, CorrectionParams, DoseParams, ReadParams

PAGE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _mapped_movie(path: Path, shape: tuple[int, int, int], dtype=np.uint16) -> np.memmap:
    """A movie file of ``shape`` (sparse: reads as zeros) opened as a read-only memmap."""
    with open(path, "wb") as fh:
        fh.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_memory_mapped_movie_over_the_budget_is_not_kept_resident(tmp_path, monkeypatch,
                                                                    dtype):
    """The raw sum reads every page of a 192 MB mapped movie; with the mapped budget below
    the movie's size, its pages are dropped as they are used, so resident memory grows by
    far less than the movie (without dropping it grows by all of it: a float32 movie's did,
    2 GB of it for 2048^2 x 120)."""
    monkeypatch.setattr(memory_model, "MAPPED_BUDGET_BYTES", 16 << 20)
    frames = _mapped_movie(tmp_path / "movie.raw", (24 // np.dtype(dtype).itemsize * 2, 2048,
                                                    2048), dtype)
    before = _resident_bytes()
    total = sum_raw_frames(frames)
    grown = _resident_bytes() - before
    assert total.shape == (2048, 2048) and float(total.max()) == 0.0
    assert grown < 48 << 20, grown / 2**20


def test_predicted_peak_of_super_resolution_does_not_grow_with_the_frame_count(tmp_path):
    """K3 super-resolution (11520 x 8184, binned by 2), mapped MRC: 20 and 60 frames are both
    predicted under 3 GB, and 40 more frames add only their alignment data (< 15 MB each)."""
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(bin_factor=2.0), align=AlignParams())
    peaks = {}
    for n in (20, 60):
        frames = _mapped_movie(tmp_path / f"sr{n}.raw", (n, 8184, 11520))
        peaks[n] = pipeline.predict_peak_bytes(frames, params).peak_bytes
    assert max(peaks.values()) < 3 * 2**30, peaks
    assert peaks[60] - peaks[20] < 40 * (15 << 20), peaks


def test_the_motion_record_states_the_predicted_peak_and_the_stage_that_sets_it(tmp_path):
    """``S.motion.json`` carries ``memory``: the predicted peak (MB, what ``correct --json``
    prints), the stage that sets it, its parts, and the process's measured peak."""
    import mrcfile

    from correction.pipeline import correct_movie
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(3), shape_yx=(256, 256), n_frames=6,
                       electrons_per_px_per_frame=1.0, gain=None, dtype=np.int16)
    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.1  # 1.0 counts as unset
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    memory = correct_movie(path, tmp_path / "out", params).record["memory"]
    frames_MB = syn.frames.nbytes / 2**20
    assert memory["stage"] in {"hot_pixels", "fft", "align", "sums"}
    assert memory["terms_MB"]["movie"] == round(frames_MB)
    assert abs(memory["predicted_peak_MB"] - sum(memory["terms_MB"].values())) <= 2
    assert memory["process_peak_MB"] > 0


def test_the_recorded_process_peak_counts_what_happens_after_the_correction(tmp_path):
    """The measured peak is read when the record is written (it was read before the outputs
    and pictures, 50-55 MB under the process's real peak for a TIFF or EER)."""
    import mrcfile

    from correction.allocator import peak_resident_MB
    from correction.pipeline import prepare_movie
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(4), shape_yx=(128, 128), n_frames=4,
                       electrons_per_px_per_frame=1.0, gain=None, dtype=np.int16)
    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.1
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    prepared = prepare_movie(path, tmp_path / "out", params)
    # something after the correction raises this process's high-water mark well above it
    above = peak_resident_MB() + 300
    np.ones(int(above * 2**20) // 8)  # touched, then freed
    written = prepared.write().record["memory"]["process_peak_MB"]
    assert written >= above - 1
    on_disk = json.loads(Path(prepared.outputs["motion"]).read_text())
    assert on_disk["memory"]["process_peak_MB"] == written


def test_spectra_over_the_budget_are_not_kept_and_each_frame_is_transformed_once_more_for_the_sums(
        monkeypatch):
    """Spectra over the budget: none is kept, the forward pass makes the alignment crop alone
    (exact, without the full spectrum) and every frame is transformed once for the sums; the
    shifts and sums are those of all kept."""
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(5), shape_yx=(192, 160), n_frames=8,
                       electrons_per_px_per_frame=2.0, gain=None, dtype=np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),  # a crop to align on
                              align=AlignParams(patches_x=1, patches_y=1, align_size_px=128))

    def run() -> tuple[pipeline.CorrectedFrames, int]:
        calls = _count_whole_spectra(monkeypatch)
        out = pipeline.correct_frames(syn.frames, pixel_size_A=1.1, params=params)
        monkeypatch.undo()
        return out, len(calls)

    reference, transforms = run()
    assert transforms == 8  # all kept (the default budget): one transform per frame
    grid = plan_grids((192, 160), 1.0, int(np.ceil(params.align.max_shift_px))
                           + EXTRA_MARGIN_PX, params.align.align_size_px)
    one = grid.padded_out[0] * (grid.padded_out[1] // 2 + 1) * 8
    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 7 * one)  # all but one would fit
    result, transforms = run()
    assert transforms == 8  # the sums' pass; the forward pass computed the alignment crop only
    np.testing.assert_array_equal(result.shifts_yx_px, reference.shifts_yx_px)
    for name in ("sum", "dw", "even", "odd"):
        got, want = getattr(result.images, name), getattr(reference.images, name)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * float(np.abs(want).max()))


def test_a_frame_whose_spectrum_is_not_kept_gets_its_alignment_crop_from_gain_corrected_rows(
        monkeypatch):
    """Unbinned frames whose output spectra are not kept: the forward pass makes each one's
    alignment crop from gain-corrected bands of its raw rows (defects, a bad column, one on
    the last row, and hot pixels replaced as on the padded frame), and the sums' pass its
    spectrum, never a padded frame; the crop is that of the padded frame to the bit, so the
    shifts and the detector-pattern check are those of the movie whose spectra are all kept,
    and so are the four sums (summed in another order)."""
    from correction.defects import plan_replacement
    from correction.gain import GainReference
    from correction.synthetic import render_movie

    n = 6
    syn = render_movie(np.random.default_rng(12), shape_yx=(256, 320), n_frames=n,
                       electrons_per_px_per_frame=1.0, gain=True, n_hot_pixels=15,
                       dtype=np.uint8)
    defects = np.zeros(syn.frames.shape[1:], bool)
    defects[:, 201] = True  # a bad column
    defects[255, :30] = True  # on the last row: replaced partly from the padding
    reference = GainReference(gain=syn.gain, defect_mask=defects, plan=plan_replacement(defects))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1, align_size_px=128))
    all_kept = pipeline.correct_frames(syn.frames, pixel_size_A=1.1, params=params,
                                       gain_reference=reference)
    assert all_kept.n_hot_pixels >= 15

    padded, from_rows = [], []
    real_gain, real_rows = pipeline.apply_gain, pipeline.rfft2_cropped_of_rows
    monkeypatch.setattr(pipeline, "apply_gain",
                        lambda *a, **k: padded.append(1) or real_gain(*a, **k))
    monkeypatch.setattr(pipeline, "rfft2_cropped_of_rows",
                        lambda *a, **k: from_rows.append(1) or real_rows(*a, **k))
    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 0)  # no output spectrum kept
    none_kept = pipeline.correct_frames(syn.frames, pixel_size_A=1.1, params=params,
                                        gain_reference=reference)
    assert len(from_rows) == 2 * n  # each frame's alignment crop, then its spectrum for the sums
    assert not padded  # never a padded frame
    np.testing.assert_array_equal(none_kept.shifts_yx_px, all_kept.shifts_yx_px)
    assert none_kept.detector_pattern == all_kept.detector_pattern
    for name in ("sum", "dw", "even", "odd"):
        want = getattr(all_kept.images, name)
        np.testing.assert_allclose(getattr(none_kept.images, name), want, rtol=1e-5,
                                   atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("corner_px", [0.0, 8.0])
def test_the_first_frames_spectra_that_raise_no_peak_are_kept_and_give_the_same_sums(
        monkeypatch, corner_px):
    """Fourier-binned output (``--bin 2``), spectra over the budget: the first frames'
    spectra are kept as far as the budget goes and no stage of the predicted peak rises (the
    local sums' working memory is larger), the others get the alignment crop alone and are
    made again for the sums. Each kept frame is transformed once, each other twice; the
    shifts and the four sums are those of all kept and of none kept, whether the sums come
    from the kept spectra (no local motion: the model is not applied) or from tiles of the
    Fourier-binned frames, the kept ones as one block (an 8-px local field: applied)."""
    from correction.synthetic_local import LocalDeformation, render_local_movie

    shape, n = (1024, 1024), 8
    field = (LocalDeformation(shape, n, corner_amplitude_px=corner_px, seed=3)
             if corner_px else None)
    movie = render_local_movie(shape, n, dose_per_pixel=4.0, deformation=field,
                               rng=np.random.default_rng(4), contrast=0.4)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(bin_factor=2.0))
    ap = params.align
    grid = plan_grids(shape, 2.0, int(np.ceil(ap.max_shift_px)) + EXTRA_MARGIN_PX,
                           ap.align_size_px)
    one = grid.padded_out[0] * (grid.padded_out[1] // 2 + 1) * 8

    def run(budget_spectra: int) -> tuple[pipeline.CorrectedFrames, int, int]:
        monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", budget_spectra * one)
        kept = frames_kept_for(grid, n, params, one)
        calls = []
        for name in ("rfft2_cropped", "rfft2_cropped_of_rows"):  # of a frame, or of its rows
            real = getattr(pipeline, name)
            monkeypatch.setattr(pipeline, name,
                                lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
        out = pipeline.correct_frames(movie.frames, pixel_size_A=1.0, params=params)
        monkeypatch.undo()
        return out, kept, len(calls)

    everything, kept, transforms = run(n)
    assert (kept, transforms) == (n, n)
    assert everything.local.applied == bool(corner_px), everything.local.reason
    some, kept, transforms = run(5)
    assert kept == 5 and transforms == 5 + 2 * 3
    nothing, kept, transforms = run(0)
    assert (kept, transforms) == (0, 2 * n)
    for result in (some, nothing):
        np.testing.assert_allclose(result.shifts_yx_px, everything.shifts_yx_px, atol=1e-4)
        assert result.local.applied == everything.local.applied
        for name in ("sum", "dw", "even", "odd"):
            got, want = getattr(result.images, name), getattr(everything.images, name)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _count_whole_spectra(monkeypatch) -> list[int]:
    """A list that gets an item for each whole (uncropped) spectrum the pipeline makes: of a
    padded frame, or of its gain-corrected rows."""
    calls: list[int] = []
    real_fft, real_rows = pipeline.rfft2, pipeline.rfft2_cropped_of_rows

    def rows(fill_rows, shape_yx, out_shape_yx, **kw):
        if tuple(out_shape_yx) == tuple(shape_yx):
            calls.append(1)
        return real_rows(fill_rows, shape_yx, out_shape_yx, **kw)

    monkeypatch.setattr(pipeline, "rfft2", lambda *a, **k: calls.append(1) or real_fft(*a, **k))
    monkeypatch.setattr(pipeline, "rfft2_cropped_of_rows", rows)
    return calls


def _count_transforms_and_tile_runs(monkeypatch, frames: np.ndarray, params: CorrectionParams
                                    ) -> tuple[pipeline.CorrectedFrames, int, int]:
    """Correct ``frames``, counting whole-spectrum transforms and calls of the local sums."""
    tiles: list[int] = []
    full = _count_whole_spectra(monkeypatch)
    real_tiles = pipeline.local_sums
    monkeypatch.setattr(pipeline, "local_sums",
                        lambda *a, **k: tiles.append(1) or real_tiles(*a, **k))
    out = pipeline.correct_frames(frames, pixel_size_A=1.1, params=params)
    monkeypatch.undo()
    return out, len(full), len(tiles)


def _assert_same_shifts_and_sums(got: pipeline.CorrectedFrames,
                                  want: pipeline.CorrectedFrames, *, rtol: float) -> None:
    """Equal shifts, and the four sums equal within ``rtol`` (0: exactly)."""
    np.testing.assert_array_equal(got.shifts_yx_px, want.shifts_yx_px)
    for name in ("sum", "dw", "even", "odd"):
        a, b = getattr(got.images, name), getattr(want.images, name)
        if rtol == 0.0:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-4 * float(np.abs(b).max()))


def test_with_a_patch_grid_a_movie_without_local_motion_is_summed_from_its_kept_spectra(
        monkeypatch):
    """Local correction on, unbinned output, a movie without local motion (the model is not
    applied, as is common at tomography dose): the spectra the forward pass kept give the
    four sums, one transform per frame and no second pass over the frames, and the sums are
    exactly those of the whole-frame path (no patch grid). With some kept, the others are
    transformed again for the sums; with none kept (over the budget), the tiles, with the
    global shifts alone, give the same sums."""
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(8), shape_yx=(512, 448), n_frames=8,
                       electrons_per_px_per_frame=2.0, gain=None, dtype=np.int16)
    dose = DoseParams(dose_per_frame_e_A2=1.0)
    patches = AlignParams(align_size_px=256)  # the default grid of patches, a crop to align on
    whole, transforms, tile_runs = _count_transforms_and_tile_runs(
        monkeypatch, syn.frames, CorrectionParams(dose=dose, align=AlignParams(
            patches_x=1, patches_y=1, align_size_px=256)))
    assert (transforms, tile_runs) == (8, 0)
    assert patches.local_enabled
    kept, transforms, tile_runs = _count_transforms_and_tile_runs(
        monkeypatch, syn.frames, CorrectionParams(dose=dose, align=patches))
    assert not kept.local.applied
    assert (transforms, tile_runs) == (8, 0)
    _assert_same_shifts_and_sums(kept, whole, rtol=0.0)

    grid = plan_grids((512, 448), 1.0, int(np.ceil(patches.max_shift_px))
                           + EXTRA_MARGIN_PX, patches.align_size_px)
    one = grid.padded_out[0] * (grid.padded_out[1] // 2 + 1) * 8
    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 5 * one)  # some kept, not all
    some = frames_kept_for(grid, 8, CorrectionParams(dose=dose, align=patches), one)
    assert 0 < some < 8
    part, transforms, tile_runs = _count_transforms_and_tile_runs(
        monkeypatch, syn.frames, CorrectionParams(dose=dose, align=patches))
    assert (transforms, tile_runs) == (8, 0)  # the kept ones once, the others for the sums
    _assert_same_shifts_and_sums(part, whole, rtol=1e-5)

    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 0)  # none kept: the tiles
    tiled, transforms, tile_runs = _count_transforms_and_tile_runs(
        monkeypatch, syn.frames, CorrectionParams(dose=dose, align=patches))
    assert not tiled.local.applied
    assert (transforms, tile_runs) == (0, 1)
    np.testing.assert_array_equal(tiled.shifts_yx_px, whole.shifts_yx_px)
    for name in ("sum", "dw", "even", "odd"):
        got, want = (_below_nyquist(getattr(run.images, name)[32:-32, 32:-32])
                     for run in (tiled, whole))
        assert np.std(got - want) < 5e-3 * np.std(want), name  # measured 0.0026 (sum)


def test_with_local_motion_applied_the_kept_spectra_are_released_for_the_tiles(monkeypatch):
    """A movie with a local field (the model applied): the spectra kept by the forward pass
    are released unused and the tiles make the sums; the shifts, the model and the four sums
    are those of a run that kept none (the alignment crop cut from the whole spectrum instead
    of transformed alone: equal to float rounding)."""
    from correction.synthetic_local import LocalDeformation, render_local_movie

    shape, n = (1024, 1024), 8
    movie = render_local_movie(shape, n, dose_per_pixel=4.0,
                               deformation=LocalDeformation(shape, n, corner_amplitude_px=6.0,
                                                            seed=3),
                               rng=np.random.default_rng(4), contrast=0.4)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    kept, transforms, tile_runs = _count_transforms_and_tile_runs(monkeypatch, movie.frames,
                                                                  params)
    assert kept.local.applied, kept.local.reason
    assert (transforms, tile_runs) == (n, 1)
    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 0)
    none, transforms, tile_runs = _count_transforms_and_tile_runs(monkeypatch, movie.frames,
                                                                  params)
    assert none.local.applied
    assert (transforms, tile_runs) == (0, 1)
    np.testing.assert_allclose(kept.shifts_yx_px, none.shifts_yx_px, atol=1e-4)
    for name in ("sum", "dw", "even", "odd"):
        got, want = getattr(kept.images, name), getattr(none.images, name)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _below_nyquist(image: np.ndarray, fraction: float = 0.8) -> np.ndarray:
    """``image`` without its spatial frequencies beyond ``fraction`` of Nyquist on either axis.

    A fractional Fourier shift is ambiguous at Nyquist (the rows and columns at Nyquist of a
    real image keep only the cosine part of their phase ramp), and the whole-frame shift and
    the tiles' shift resolve it on grids of different sizes: on shot noise the two sums differ
    there by about 2/N of the noise's power. Below it they differ only where a tile's
    periodic shift meets its blending band, at a few thousandths of the noise."""
    spectrum = np.fft.fft2(image)
    ky = 2 * np.abs(np.fft.fftfreq(image.shape[0]))
    kx = 2 * np.abs(np.fft.fftfreq(image.shape[1]))
    spectrum[(ky[:, None] >= fraction) | (kx[None, :] >= fraction)] = 0
    return np.fft.ifft2(spectrum).real


@pytest.mark.parametrize("given, bytes_per_px", [
    ({}, 0), ({"gain_path": "g.mrc"}, 5), ({"defects_path": "d.txt"}, 5),
    ({"dark_path": "k.mrc"}, 9), ({"gain_path": "g.mrc", "dark_path": "k.mrc"}, 9)])
def test_the_references_term_counts_the_arrays_each_reference_makes(given, bytes_per_px):
    """A gain (float32) and its defect mask (bool) for any reference, a dark (float32) beside:
    a dark or a defect list given alone come with a gain of ones on the movie's grid."""
    from correction.params import GainParams

    frames = np.zeros((3, 64, 96), np.uint8)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(**given))
    estimate = memory_model.predict_peak_bytes(frames, params)
    assert estimate.terms_bytes["references"] == 64 * 96 * bytes_per_px
