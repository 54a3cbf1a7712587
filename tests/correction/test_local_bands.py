"""Local sums band by band: memory of one band (not of the whole frame), the same result from
every kind of frame source, and gain-corrected rows equal to the whole-frame correction."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import correction.local_apply as local_apply
from correction import memory_model
from correction.defects import plan_replacement
from correction.gain import GainReference, apply_gain
from correction.gained_rows import GainedRows
from correction.local_apply import local_sums
from correction.synthetic_local import LocalDeformation

SHAPE = (1024, 1024)
N_FRAMES = 4


@pytest.fixture(scope="module")
def frames_and_field():
    rng = np.random.default_rng(5)
    frames = rng.poisson(2.0, size=(N_FRAMES,) + SHAPE).astype(np.float32)
    # 4 px at the corners of 1024 px: the gradient of a 16 px field at 4K (first-order term on)
    field = LocalDeformation(SHAPE, N_FRAMES, corner_amplitude_px=4.0, seed=5)
    shifts = rng.normal(scale=3.0, size=(N_FRAMES, 2))
    return frames, field, shifts


def _sums(frames, field, shifts):
    return local_sums(frames, shifts, field, pixel_size_A=1.0, shape_yx=SHAPE,
                      dose_end_e_A2=np.arange(1, N_FRAMES + 1) * 1.5, workers=1)


def test_local_sums_working_memory_is_the_four_images_plus_one_band(frames_and_field):
    """Beyond its four output images, the application holds one band of tiles (here two tile
    rows of 13, fifteen accumulators): its peak allocation stays below ten frames of float32.
    Accumulators for the whole frame (nine half spectra of all tiles) took about 24."""
    frames, field, shifts = frames_and_field
    assert local_apply.plan_tiles(field, SHAPE).taylor
    tracemalloc.start()
    try:
        _sums(frames, field, shifts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frame_bytes = SHAPE[0] * SHAPE[1] * 4
    assert peak < 10 * frame_bytes, peak / frame_bytes


def test_a_plain_sequence_read_in_blocks_of_frames_gives_the_array_result(frames_and_field,
                                                                          monkeypatch):
    """Frames given as a plain sequence (made on access, e.g. Fourier-binned) are read in
    blocks that fit the block budget; several blocks give the same four sums as the array."""
    frames, field, shifts = frames_and_field
    expected = _sums(frames, field, shifts)

    class Lazy:  # each access makes a new array, as a Fourier-binning source does
        def __len__(self):
            return N_FRAMES

        def __getitem__(self, i):
            return frames[i] * 1.0

    monkeypatch.setattr(local_apply, "_BLOCK_BYTES", 2 * SHAPE[0] * SHAPE[1] * 4)
    got = _sums(Lazy(), field, shifts)
    for name in ("plain", "dose_weighted", "even", "odd"):
        a, b = getattr(got, name), getattr(expected, name)
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)), name


@pytest.mark.parametrize("split", [1, 3])
def test_the_sums_made_in_two_parts_of_the_movie_add_up_to_the_sums_of_all_frames(
        frames_and_field, split):
    """Frames ``0:split`` read as one block and the rest in blocks of one frame (the
    Fourier-binned frames whose spectra were kept, then those made again): each part given
    the movie's doses, where it starts and the sums so far, the field of the whole movie; the
    four sums are those of all frames at once, parity and dose normalisation included (an odd
    split puts the second part's first frame among the odd ones)."""
    frames, field, shifts = frames_and_field
    expected = _sums(frames, field, shifts)
    dose = np.arange(1, N_FRAMES + 1) * 1.5
    kw = dict(pixel_size_A=1.0, shape_yx=SHAPE, movie_dose_end_e_A2=dose, workers=1)
    first = local_sums(list(frames[:split]), shifts[:split], field, dose_end_e_A2=dose[:split],
                       block_bytes=split * SHAPE[0] * SHAPE[1] * 4, **kw)
    got = local_sums(list(frames[split:]), shifts[split:], field, dose_end_e_A2=dose[split:],
                     first_frame=split, add_to=first, block_bytes=SHAPE[0] * SHAPE[1] * 4,
                     **kw)
    assert got.plain is first.plain  # added into the first part's images
    for name in ("plain", "dose_weighted", "even", "odd"):
        a, b = getattr(got, name), getattr(expected, name)
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)), name
    with pytest.raises(ValueError, match="doses"):
        local_sums(list(frames[split:]), shifts[split:], field, dose_end_e_A2=dose[split:] + 1,
                   first_frame=split, **kw)


def test_frames_made_new_on_each_access_are_read_without_a_copy():
    """A source whose frames are new arrays (``fresh_frames``, as the Fourier-binned frames
    are) is read as it is: no second copy of each frame in flight; any other source is
    copied, as it may reuse one buffer for every frame."""
    frames = [np.full((8, 8), float(i), np.float32) for i in range(3)]

    class Source:
        def __init__(self, fresh: bool) -> None:
            self.fresh_frames = fresh

        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            return frames[i][:, :6]  # a view, as the binned frames' crop of the padded grid

    for fresh in (True, False):
        source = local_apply._RowSource(Source(fresh), 3, (8, 6), None)
        source.load_block(0, 3)
        shared = [np.shares_memory(block, frame) for block, frame in zip(source._block, frames)]
        assert shared == [fresh] * 3
        np.testing.assert_array_equal(source.values, [0.0, 1.0, 2.0])


def test_a_row_of_large_tiles_cut_into_segments_gives_the_same_sums(frames_and_field,
                                                                     monkeypatch):
    """A row of large tiles is processed in segments whose accumulators fit the band budget
    (less memory per thread, more bands to share between threads): the four sums equal those of
    whole tile rows, for frames read as arrays and through gain-corrected column windows."""
    frames, _, shifts = frames_and_field
    field = LocalDeformation(SHAPE, N_FRAMES, corner_amplitude_px=1.0, seed=6)
    plan = local_apply.plan_tiles(field, SHAPE)
    assert local_apply._tile_rows_per_band(plan.tile_px) == 1 and plan.taylor
    whole_rows = _sums(frames, field, shifts)
    tile_acc = 9 * (plan.tile_px + 2 * plan.overlap_px) ** 2 * 4
    monkeypatch.setattr(local_apply, "_BAND_ACC_BYTES", 2 * tile_acc)  # two tiles a band
    n_tx = local_apply.tile_layout(SHAPE, tile_px=plan.tile_px,
                                   overlap_px=plan.overlap_px).n_tiles_yx[1]
    assert len(local_apply._bands(4, n_tx, 1, tile_acc)) == 4 * ((n_tx + 1) // 2)
    assert n_tx >= 5
    padded = (SHAPE[0] + 64, SHAPE[1] + 64)
    sources = {"array": frames,
               "rows": GainedRows(frames, None, None, None, padded)}
    for kind, source in sources.items():
        got = _sums(source, field, shifts)
        for name in ("plain", "dose_weighted", "even", "odd"):
            a, b = getattr(got, name), getattr(whole_rows, name)
            assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), (kind, name)


def test_gain_corrected_rows_equal_the_whole_frame_correction_with_defects_replaced():
    """Rows asked for by the band-wise sums equal ``(raw - dark) * gain`` of the whole frame
    with defects and hot pixels replaced on the padded frame, including defects at the
    frame's edge whose replacement reads the padding (the fill value)."""
    rng = np.random.default_rng(9)
    ny, nx, py, px = 96, 80, 112, 96
    raw = rng.integers(0, 50, size=(2, ny, nx)).astype(np.int16)
    gain = rng.uniform(0.8, 1.2, size=(ny, nx)).astype(np.float32)
    dark = rng.uniform(0.0, 2.0, size=(ny, nx)).astype(np.float32)
    bad = np.zeros((ny, nx), bool)
    bad[40, :] = True           # a bad row
    bad[:, nx - 1] = True       # the last column: sources in the padding
    bad[ny - 1, 5:9] = True     # the last row
    bad[rng.integers(0, ny, 30), rng.integers(0, nx, 30)] = True
    bad_padded = np.zeros((py, px), bool)
    bad_padded[:ny, :nx] = bad
    plan = plan_replacement(bad_padded)
    ref = GainReference(gain=gain, dark=dark)
    fill = 17.5
    rows = GainedRows(raw, ref, plan, fill, (py, px))
    for i in range(2):
        padded = np.full((py, px), fill, np.float32)
        apply_gain(raw[i], ref, out=padded[:ny, :nx])
        plan.apply(padded)
        for y0, y1 in ((0, ny), (0, 41), (35, 60), (90, ny)):
            np.testing.assert_allclose(rows.rows(i, y0, y1), padded[y0:y1, :nx], rtol=1e-6,
                                       atol=1e-5)
        # column windows (segments of a tile row): the same values, defects included
        for y0, y1, x0, x1 in ((0, ny, 0, 40), (35, 60, 30, nx), (38, 45, 10, 11)):
            np.testing.assert_allclose(rows.rows(i, y0, y1, x0, x1), padded[y0:y1, x0:x1],
                                       rtol=1e-6, atol=1e-5)


def _resident_kB_of_mapping(array: np.ndarray) -> int:
    """Resident kB of the file mapping that holds ``array`` (Linux /proc/self/smaps)."""
    address = array.ctypes.data
    with open("/proc/self/smaps", encoding="ascii") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("mapping not found")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_rows_of_a_large_mapped_movie_leave_no_page_resident_even_with_defects_replaced(
        tmp_path, monkeypatch):
    """A mapped movie over the budget has each band's pages dropped once its rows are made,
    after the defects' sources were read: a plan with bad pixels in every band re-read them,
    and the whole movie stayed resident (a spilled 60-frame super-resolution movie: 6.9 GB)."""
    monkeypatch.setattr(memory_model, "MAPPED_BUDGET_BYTES", 0)  # every mapping is "large"
    n, ny, nx = 2, 1024, 2048  # 2 MB per frame
    path = tmp_path / "frames.u8"
    rng = np.random.default_rng(4)
    rng.integers(0, 4, size=(n, ny, nx), dtype=np.uint8).tofile(path)
    frames = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, ny, nx))
    bad = np.zeros((ny + 16, nx + 16), bool)
    bad[rng.integers(0, ny, 4000), rng.integers(0, nx, 4000)] = True  # in every band
    rows = GainedRows(frames, GainReference(gain=np.ones((ny, nx), np.float32)),
                       plan_replacement(bad), 1.0, bad.shape)
    assert rows.drop
    for y0 in range(0, ny, 64):
        rows.rows(0, y0, y0 + 64)
    assert _resident_kB_of_mapping(frames) <= 64  # of 2048 kB read


def test_without_hot_pixel_detection_the_tiles_read_the_frame_means_of_the_forward_pass(
        monkeypatch):
    """With no hot-pixel sum there is no common fill value: the tiles read each frame's own
    mean outside the frame, as the forward pass measured it (not one more pass over every
    frame), equal to the mean of the gain-corrected frame."""
    import correction.pipeline as pipeline
    from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
    from correction.synthetic import render_movie

    syn = render_movie(np.random.default_rng(9), shape_yx=(384, 320), n_frames=6,
                       electrons_per_px_per_frame=2.0, gain=None, dtype=np.int16)
    seen = {}
    real = pipeline.local_sums

    def spy(*args, **kwargs):
        seen["fill"] = kwargs["fill"]
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "local_sums", spy)
    monkeypatch.setattr(memory_model, "SPECTRA_BUDGET_BYTES", 0)  # none kept: the tiles sum
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0), align=AlignParams(),
                              gain=GainParams(detect_hot_pixels=False))
    pipeline.correct_frames(syn.frames, pixel_size_A=1.1, params=params)
    expected = syn.frames.astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(seen["fill"], expected, rtol=1e-6)
