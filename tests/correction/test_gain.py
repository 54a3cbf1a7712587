"""Gain references: orientation (rotate, then flip), shape check, (raw - dark) * gain, defects.

The orientation truth is written independently of numpy.rot90/flip, as a pixel-coordinate
mapping taken from RELION's implementation of MotionCor2's flags (src/jaz/image_op.h,
ImageOp::rotate90 "equivalent to MotionCor2's -RotGain 1", flipY = FlipGain 1, flipX = FlipGain
2): a quarter turn moves the pixel at (row y, column x) of an ny x nx image to (x, ny - 1 - y)
(clockwise as displayed, row 0 at the top); up-down (1) maps (r, c) to (H - 1 - r, c); left-right
(2) maps (r, c) to (r, W - 1 - c); rotation first, then flip.
"""

from __future__ import annotations

import itertools
import os

import mrcfile
import numpy as np
import pytest
import tifffile

from correction.errors import GainReferenceError, ParameterError
from correction.gain import KEPT_DERIVED as KEPT
from correction.gain import GainReference, apply_gain, load_gain_reference, orient
from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
from correction.pipeline import correct_frames


def _truth_orient(image, k, flip):
    out = image
    for _ in range(k):
        h, w = out.shape
        turned = np.empty((w, h), dtype=out.dtype)
        y, x = np.indices((h, w))
        turned[x, h - 1 - y] = out[y, x]
        out = turned
    h, w = out.shape
    r, c = np.indices((h, w))
    flipped = np.empty_like(out)
    if flip in ("updown", 1):
        flipped[h - 1 - r, c] = out[r, c]
    elif flip in ("leftright", 2):
        flipped[r, w - 1 - c] = out[r, c]
    else:
        flipped = out
    return flipped


def _marked_gain(ny=12, nx=20):
    gain = np.full((ny, nx), 1.0, dtype=np.float32)
    gain[0, 0] = 5.0          # top-left corner marked
    gain[0, 1] = 3.0          # and its right neighbour, so flips are not rotations
    return gain


def test_truth_mapping_turns_clockwise_as_displayed_like_relion_rotate90():
    # A mark at the top-left, turned by -RotGain 1, lands at the top-right (RELION: "In
    # relion_display, this looks clock-wise"); its right neighbour lands below it.
    gain = _marked_gain()
    turned = _truth_orient(gain, 1, "none")
    assert turned.shape == (20, 12)
    assert turned[0, 11] == 5.0 and turned[1, 11] == 3.0


def test_gain_rotate_1_is_motioncor2_rotgain_1_moving_y_x_to_x_ny_minus_1_minus_y():
    # the issue: --gain-rotate 1 used to turn the other way (numpy.rot90(g, 1))
    ny, nx = 6, 10
    gain = np.arange(ny * nx, dtype=np.float32).reshape(ny, nx)
    out = orient(gain, rotate_quarter_turns=1)
    assert out.shape == (nx, ny)
    for y in range(ny):
        for x in range(nx):
            assert out[x, ny - 1 - y] == gain[y, x]
    np.testing.assert_array_equal(out, np.rot90(gain, k=-1))
    assert not np.array_equal(out, np.rot90(gain, k=1))
    np.testing.assert_array_equal(orient(gain, rotate_quarter_turns=3), np.rot90(gain, k=1))


def test_flip_numbers_are_motioncor2_flipgain_after_the_rotation():
    gain = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(orient(gain, flip=1), np.flipud(gain))
    np.testing.assert_array_equal(orient(gain, flip=2), np.fliplr(gain))
    np.testing.assert_array_equal(orient(gain, rotate_quarter_turns=1, flip=1),
                                  np.flipud(np.rot90(gain, k=-1)))
    assert GainParams(flip=1).flip == "updown" and GainParams(flip="2").flip == "leftright"
    assert GainParams(flip=0).flip == "none" and GainParams(flip="leftright").flip == "leftright"
    for bad in (3, "3", "sideways", True, 1.0):
        with pytest.raises(ParameterError, match="flip must be"):
            GainParams(flip=bad)


def test_a_motioncor3_eer_jobs_turns_of_a_gain_file_translate_as_the_readme_says():
    """MotionCor3 reads an EER ``.gain`` rows reversed (its TIFF reader), then turns it; the
    ``.gain`` is read here in stored order. README ("TIFF row order"): its ``-RotGain K
    -FlipGain F`` is ``--gain-rotate (4 - K) % 4`` with updown for F = 0 and none for F = 1,
    and ``--gain-rotate (2 - K) % 4`` with none for F = 2."""
    gain = np.arange(24, dtype=np.float32).reshape(4, 6)
    for k in range(4):
        for f in (0, 1, 2):
            motioncor3 = orient(gain[::-1], rotate_quarter_turns=k, flip=f)
            ours = (orient(gain, rotate_quarter_turns=(2 - k) % 4) if f == 2 else
                    orient(gain, rotate_quarter_turns=(4 - k) % 4, flip=1 if f == 0 else 0))
            np.testing.assert_array_equal(ours, motioncor3)


@pytest.mark.parametrize("k, flip", list(itertools.product(
    range(4), ["none", "updown", "leftright", 0, 1, 2])))
@pytest.mark.parametrize("fmt", ["mrc", "tif"])
def test_gain_is_rotated_then_flipped_like_the_independent_truth(tmp_path, k, flip, fmt):
    gain = _marked_gain()
    gain[5, 7] = 2.0
    path = tmp_path / f"gain.{fmt}"
    if fmt == "mrc":
        with mrcfile.new(path) as mrc:
            mrc.set_data(gain)
    else:
        tifffile.imwrite(path, gain)
    ref = load_gain_reference(GainParams(gain_path=path, rotate_quarter_turns=k, flip=flip))
    # a TIFF's rows are read bottom-up, in MRC order, as MotionCor2 and RELION read them
    stored = gain if fmt == "mrc" else gain[::-1]
    np.testing.assert_array_equal(ref.gain, _truth_orient(stored, k, flip))
    assert ref.defect_mask is None


def test_dark_reference_gets_the_same_orientation_and_is_subtracted(tmp_path):
    rng = np.random.default_rng(3)
    gain = rng.uniform(0.8, 1.2, (10, 14)).astype(np.float32)
    dark = rng.uniform(0, 2, (10, 14)).astype(np.float32)
    tifffile.imwrite(tmp_path / "g.tif", gain)
    tifffile.imwrite(tmp_path / "d.tif", dark)
    ref = load_gain_reference(GainParams(gain_path=tmp_path / "g.tif", dark_path=tmp_path / "d.tif",
                                         rotate_quarter_turns=3, flip="updown"))
    raw = rng.integers(0, 50, (14, 10)).astype(np.uint16)
    # both TIFFs read in MRC row order (last stored row first), then oriented alike
    expected = (raw - _truth_orient(dark[::-1], 3, "updown")) * _truth_orient(gain[::-1], 3,
                                                                              "updown")
    out = apply_gain(raw, ref)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_wrong_shape_error_names_gain_file_and_both_shapes(tmp_path):
    path = tmp_path / "K3gain.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ones((30, 20), np.float32))
    ref = load_gain_reference(GainParams(gain_path=path))
    with pytest.raises(GainReferenceError) as info:
        ref.check_shape((40, 20), "movie_001.tif")
    message = str(info.value)
    assert message.startswith(f"{path}: gain is 30x20")
    assert "movie_001.tif frames are 40x20" in message


def test_transposed_gain_error_suggests_a_rotation(tmp_path):
    ref = GainReference.from_arrays(np.ones((30, 20)), gain_path=tmp_path / "g.mrc")
    with pytest.raises(GainReferenceError, match="try a rotation"):
        ref.check_shape((20, 30))


def test_missing_gain_file_is_named(tmp_path):
    with pytest.raises(GainReferenceError, match=r"nogain\.mrc: gain reference: no such file"):
        load_gain_reference(GainParams(gain_path=tmp_path / "nogain.mrc"))


def test_no_references_gives_none():
    assert load_gain_reference(GainParams()) is None


def test_zero_negative_and_nan_gain_pixels_become_defects_replaced_by_neighbour_mean():
    """A multiplier is never negative: a negative gain pixel (a masked region written as -1)
    made a negative output pixel, and stayed negative in the gain exported for RELION."""
    gain = np.ones((8, 8), np.float32) * 2
    gain[3, 4] = 0.0
    gain[6, 1] = np.nan
    gain[1, 6] = -1.0
    ref = GainReference.from_arrays(gain)
    assert ref.defect_mask.sum() == 3 and ref.defect_mask[3, 4] and ref.defect_mask[6, 1]
    assert ref.defect_mask[1, 6] and ref.gain[1, 6] == 0.0
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8)
    out = apply_gain(raw, ref)
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    for y, x in [(3, 4), (6, 1), (1, 6)]:
        neighbours = [2.0 * raw[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                      if (dy, dx) != (0, 0)]
        assert out[y, x] == pytest.approx(np.mean(neighbours))
        assert out[y, x] != 0


def test_apply_gain_writes_into_out_and_handles_big_endian_frames():
    rng = np.random.default_rng(5)
    gain = rng.uniform(0.5, 1.5, (16, 16)).astype(np.float32)
    ref = GainReference.from_arrays(gain)
    raw = rng.integers(0, 9, (16, 16)).astype(">i2")
    out = np.empty((16, 16), np.float32)
    result = apply_gain(raw, ref, out=out)
    assert result is out
    np.testing.assert_allclose(out, raw.astype(np.float32) * gain, rtol=1e-6)


def test_apply_gain_refuses_a_frame_of_another_shape():
    ref = GainReference.from_arrays(np.ones((16, 16)))
    with pytest.raises(GainReferenceError, match="gain is 16x16"):
        apply_gain(np.zeros((16, 8), np.uint8), ref)


def test_physical_gain_expands_over_the_subpixels_of_a_super_resolution_movie():
    gain = np.array([[1.0, 2.0], [0.0, 4.0]], np.float32)       # one defect
    ref = GainReference.from_arrays(gain)
    fine = ref.fit_to((4, 4))
    np.testing.assert_array_equal(fine.gain, [[1, 1, 2, 2], [1, 1, 2, 2],
                                              [0, 0, 4, 4], [0, 0, 4, 4]])
    assert fine.defect_mask.sum() == 4 and fine.defect_mask[2:, :2].all()
    assert ref.fit_to((2, 2)) is ref
    with pytest.raises(GainReferenceError, match="gain is 2x2"):
        ref.fit_to((4, 6))


def test_a_defect_list_is_in_the_movie_grid_when_a_gain_is_expanded_onto_it():
    """EER sampling 2 with a physical-pixel gain: the list's rectangles are the 8K movie's
    pixels (RELION fills its defect mask on the rendered grid), so one listed sub-pixel is one
    defect, and its neighbours keep the gain of the pixel they share; before, the list was
    read on the gain's grid (this one fell outside it and was lost)."""
    gain = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    ref = GainReference.from_arrays(gain, defect_rects=((3, 3, 1, 1),))
    assert ref.defect_mask is None                  # (3, 3) lies outside the 2 x 2 gain
    fine = ref.fit_to((4, 4), super_resolution_factor=2)
    expected_mask = np.zeros((4, 4), bool)
    expected_mask[3, 3] = True
    np.testing.assert_array_equal(fine.defect_mask, expected_mask)
    np.testing.assert_array_equal(fine.gain, [[1, 1, 2, 2], [1, 1, 2, 2],
                                              [3, 3, 4, 4], [3, 3, 4, 0]])


def test_a_defect_list_is_in_the_movie_grid_when_an_8k_gain_is_combined_onto_4k():
    """An 8K EER gain for frames decoded at 4K: the listed pixel (0, 1) of the 4K movie is the
    defect, and the 8K pixel (0, 1), inside 4K pixel (0, 0), takes part in that pixel's gain
    as any other; before, the list was rasterized on the 8K grid and moved there."""
    gain = np.array([[1.0, 2.0, 1.0, 1.0],
                     [4.0, 4.0, 1.0, 1.0]], np.float32)
    dark = np.full_like(gain, 0.5)
    ref = GainReference.from_arrays(gain, dark=dark, defect_rects=((1, 0, 1, 1),))
    assert ref.defect_mask[0, 1] and ref.gain[0, 1] == 0     # on its own grid, as given
    coarse = ref.onto_coarser_grid(2)
    np.testing.assert_array_equal(coarse.defect_mask, [[False, True]])
    np.testing.assert_allclose(coarse.gain, [[4 / (1 + 0.5 + 0.25 + 0.25), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(coarse.dark, [[2.0, 0.0]])


def test_a_reciprocal_gain_keeps_the_values_under_the_defect_list_for_another_grid():
    """A count image (EER, applied as mean / gain) moved to another grid gives the same gain
    whether or not a defect list was rasterized on the way, away from the listed pixels."""
    counts = np.random.default_rng(5).uniform(0.5, 1.5, (8, 8)).astype(np.float32)
    listed = GainReference.from_arrays(counts, defect_rects=((2, 2, 1, 1),))
    plain = GainReference.from_arrays(counts)
    coarse_listed = listed.reciprocal().onto_coarser_grid(2)
    coarse_plain = plain.reciprocal().onto_coarser_grid(2)
    assert coarse_listed.defect_mask.sum() == 1 and coarse_listed.defect_mask[2, 2]
    keep = ~coarse_listed.defect_mask
    # the mean of mean / counts excludes the listed pixel in one, not the other: a constant
    ratio = coarse_listed.gain[keep] / coarse_plain.gain[keep]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


def test_a_sessions_reference_derives_each_form_once_and_none_can_be_modified(tmp_path):
    """A worker holds one reference for a whole session: the EER form of a count image, the 4K
    form of an 8K gain and the 8K form of a 4K gain are derived at the first movie and reused
    (they took 0.3-0.9 s per movie), each still what it derives; the steps between are not
    kept (the 8K inverted gain of a 4K form: 256 MB per worker); a reference shared so cannot
    be changed in place by one movie's correction, nor carry its forms when pickled."""
    import pickle

    from correction.gain import reference_for_movie

    counts = np.random.default_rng(2).uniform(0.5, 1.5, (8, 8)).astype(np.float32)
    mrcfile.new(tmp_path / "gain.mrc", data=counts).close()
    relion = GainParams(gain_path=tmp_path / "gain.mrc", eer_gain="relion")
    held = load_gain_reference(relion)
    eer = reference_for_movie(held, relion, is_eer=True)
    assert reference_for_movie(held, relion, is_eer=True) is eer
    coarse = reference_for_movie(held, relion, is_eer=True, coarser_by=2)
    assert reference_for_movie(held, relion, is_eer=True, coarser_by=2) is coarse
    assert eer.fit_to((16, 16)) is eer.fit_to((16, 16), super_resolution_factor=2)
    kept = {id(r) for r in held._derived.values()}
    assert kept == {id(eer), id(coarse)}                 # no inverted 8K step beside them
    # each kept form is the one its own rule gives, the mode is part of its key
    as_given = GainParams(gain_path=tmp_path / "gain.mrc", eer_gain="multiplicative")
    np.testing.assert_array_equal(reference_for_movie(held, as_given, is_eer=True).gain, counts)
    np.testing.assert_allclose(eer.gain, counts.mean() / counts, rtol=1e-6)
    inverse_gain = counts / counts.mean()            # 2 x 2 sub-pixels: a harmonic mean
    np.testing.assert_allclose(coarse.gain, 4 / inverse_gain.reshape(4, 2, 4, 2).sum(axis=(1, 3)),
                               rtol=1e-5)
    for ref in (held, eer, coarse, eer.fit_to((16, 16))):
        with pytest.raises(ValueError, match="read-only"):
            ref.gain[0, 0] = 2.0
    travelled = pickle.loads(pickle.dumps(eer))
    np.testing.assert_array_equal(travelled.gain, eer.gain)
    assert travelled._derived == {} and not travelled.gain.flags.writeable


def test_threads_sharing_a_reference_make_a_form_once_and_keep_at_most_four():
    """A Dask worker's threads share its reference: one makes a form while the others wait
    for it, and evicting the oldest of more than four forms never fails (before: several
    threads made the same form at once, and the eviction could raise KeyError)."""
    import threading

    ref = GainReference.from_arrays(np.ones((8, 8), np.float32))
    made: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(24)

    def make(key: int) -> GainReference:
        made.append(key)
        return GainReference.from_arrays(np.full((8, 8), key + 1.0, np.float32))

    def derive(key: int) -> None:
        try:
            start.wait()
            assert ref.derived(("k", key), lambda: make(key)).gain[0, 0] == key + 1.0
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def run_together(keys: list[int]) -> None:
        threads = [threading.Thread(target=derive, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run_together([k % 2 for k in range(24)])         # two forms asked for by 12 threads each
    assert errors == [] and sorted(made) == [0, 1]
    run_together(list(range(2, 26)))                 # 24 forms: the oldest evicted as they come
    assert errors == [] and len(ref._derived) == KEPT


def test_load_gain_reference_keeps_the_defect_list_for_the_movie_grid(tmp_path):
    mrcfile.new(tmp_path / "gain.mrc", data=np.ones((4, 4), np.float32)).close()
    (tmp_path / "defects.txt").write_text("# x y w h\n6 0 1 8\n")
    ref = load_gain_reference(GainParams(gain_path=tmp_path / "gain.mrc",
                                         defects_path=tmp_path / "defects.txt"))
    assert ref.defect_rects == ((6, 0, 1, 8),) and ref.defect_mask is None
    fine = ref.fit_to((8, 8), super_resolution_factor=2)
    assert fine.defect_mask[:, 6].all() and fine.defect_mask.sum() == 8


def _stored_as_written(gain_true, k, flip):
    """The gain file that -RotGain k -FlipGain flip turns into ``gain_true`` (truth inverse)."""
    unflipped = _truth_orient(gain_true, 0, flip)           # a flip is its own inverse
    return _truth_orient(unflipped, (4 - k) % 4, "none")    # then undo the k quarter turns


@pytest.mark.parametrize("shape_yx", [(96, 160), (71, 100)])     # K3-like aspect, odd rows
@pytest.mark.parametrize("k, flip", list(itertools.product(range(4), [0, 1, 2])))
def test_gain_file_stored_in_any_orientation_with_the_motioncor2_flags_gives_flat_frames(
        tmp_path, shape_yx, k, flip):
    rng = np.random.default_rng(10 * k + flip)
    gain_true = np.clip(1 + 0.15 * rng.standard_normal(shape_yx), 0.5, 1.5).astype(np.float32)
    dose_per_frame = 100.0
    frames = rng.poisson(dose_per_frame / gain_true, (4,) + shape_yx).astype(np.uint16)
    stored = _stored_as_written(gain_true, k, flip)
    path = tmp_path / "gain.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ascontiguousarray(stored))
    ref = load_gain_reference(GainParams(gain_path=path, rotate_quarter_turns=k, flip=flip))
    np.testing.assert_array_equal(ref.gain, gain_true)
    corrected = sum(apply_gain(frame, ref) for frame in frames)
    poisson_rel_sd = np.sqrt(float(gain_true.mean()) / (4 * dose_per_frame))     # 0.05
    assert corrected.std() / corrected.mean() < 1.3 * poisson_rel_sd
    if stored.shape == shape_yx and not np.array_equal(stored, gain_true):
        # the same file applied without orientation leaves the pattern (the check can fail)
        wrong = sum(apply_gain(frame, GainReference.from_arrays(stored)) for frame in frames)
        assert wrong.std() / wrong.mean() > 2 * poisson_rel_sd


def test_a_reference_is_expanded_only_by_the_super_resolution_factor_the_movie_declares():
    """Faults issue item 12: a gain of half the movie's size is refused unless the movie is
    super-resolution by exactly that factor (EER sampling 2)."""
    ref = GainReference.from_arrays(np.ones((2, 2), np.float32))
    assert ref.fit_to((4, 4), super_resolution_factor=2).shape_yx == (4, 4)
    assert ref.fit_to((2, 2), super_resolution_factor=1) is ref
    with pytest.raises(GainReferenceError, match="gain is 2x2 .* frames are 4x4"):
        ref.fit_to((4, 4), super_resolution_factor=1)
    with pytest.raises(GainReferenceError, match="gain is 2x2 .* frames are 8x8"):
        ref.fit_to((8, 8), super_resolution_factor=2)


def test_reference_checksums_are_computed_once_per_file_version(tmp_path):
    import hashlib
    import os

    from correction.report import file_sha256

    path = tmp_path / "gain.mrc"
    path.write_bytes(b"A" * 64)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"A" * 64).hexdigest()
    st = os.stat(path)
    path.write_bytes(b"B" * 64)  # same size, mtime put back: the same version for the cache
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(path) == first
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new version
    assert file_sha256(path) == hashlib.sha256(b"B" * 64).hexdigest()


def test_gain_correction_split_over_threads_equals_one_thread_with_dark_and_defects():
    """Rows split over threads (frames of a million pixels and more) give the same frame,
    defects replaced after all rows are corrected (their sources lie in other rows)."""
    rng = np.random.default_rng(7)
    shape = (1024, 1100)
    gain = rng.uniform(0.8, 1.2, shape).astype(np.float32)
    dark = rng.uniform(0.0, 2.0, shape).astype(np.float32)
    defects = np.zeros(shape, bool)
    defects[511:514, :] = True  # a bad row band across the split between two threads
    defects[::97, ::89] = True
    raw = rng.poisson(5.0, shape).astype(np.uint16)
    for ref in (GainReference.from_arrays(gain, defects=defects),
                GainReference.from_arrays(gain, dark=dark, defects=defects), None):
        one = apply_gain(raw, ref, workers=1)
        threads = apply_gain(raw, ref, workers=2)
        np.testing.assert_array_equal(threads, one)
        if ref is not None:
            assert np.isfinite(threads).all()
            assert abs(float(threads[512].mean()) - float(one[100].mean())) < 1.0  # replaced


# --- EER gain files: RELION's EERRenderer::loadEERGain (correction/gain.py, "EER gain files") ---

def _count_image(shape=(12, 20), seed=5):
    """A flat exposure's electron counts per pixel (a pixel's response x 5000), one defect 0."""
    response = np.random.default_rng(seed).uniform(0.7, 1.3, shape).astype(np.float32)
    counts = (response * 5000).astype(np.float32)
    counts[3, 4] = 0.0
    return response, counts


def test_with_relions_rule_an_eer_gain_that_is_not_a_gain_file_is_a_count_image_applied_as_mean_over_gain(
        tmp_path):
    from correction.gain import reference_for_movie

    response, counts = _count_image()
    mrcfile.new(tmp_path / "gain.mrc", data=counts).close()
    params = GainParams(gain_path=tmp_path / "gain.mrc", eer_gain="relion")
    applied = reference_for_movie(load_gain_reference(params), params, is_eer=True)
    valid = counts != 0
    np.testing.assert_allclose(applied.gain[valid], counts[valid].mean() / counts[valid],
                               rtol=1e-5)
    assert applied.gain[3, 4] == 0 and applied.defect_mask[3, 4]    # 0 stays a defect
    assert applied.applied_as == "reciprocal"
    assert "gain.mrc applied as mean / gain (--eer-gain relion" in applied.eer_rule
    # a flat exposure's raw counts (the response) come out flat, on the raw counts' scale
    flat = apply_gain(response * 8, applied)
    np.testing.assert_allclose(flat[valid], flat[valid].mean(), rtol=1e-5)
    assert flat[valid].mean() == pytest.approx(8 * response[valid].mean(), rel=0.01)


def test_by_default_every_gain_file_is_a_multiplier_as_motioncor2s_gain_and_relion_keeps_dot_gain(
        tmp_path):
    """``--gain`` means MotionCor2's ``-Gain``: the file as it is, for EER movies too (an MRC
    converted from EPU's ``.gain``); RELION's rule also uses a ``.gain`` file as it is."""
    from correction.gain import reference_for_movie

    _, counts = _count_image()
    multiplier = np.where(counts > 0, 5000 / np.maximum(counts, 1), 0).astype(np.float32)
    tifffile.imwrite(tmp_path / "20240627_EER_GainReference.gain", multiplier)
    mrcfile.new(tmp_path / "gain.mrc", data=multiplier).close()
    for name, is_eer, mode, rule in (
            ("20240627_EER_GainReference.gain", True, "multiplicative",
             "applied as a multiplier (as MotionCor2's -Gain"),
            ("gain.mrc", True, "multiplicative", "applied as a multiplier (as MotionCor2's -Gain"),
            ("20240627_EER_GainReference.gain", True, "relion",
             "applied as a multiplier (--eer-gain relion: a .gain file is multiplicative"),
            ("gain.mrc", False, "relion", None)):       # a K3 / Falcon MRC movie's gain
        params = GainParams(gain_path=tmp_path / name, eer_gain=mode)
        loaded = load_gain_reference(params)
        applied = reference_for_movie(loaded, params, is_eer=is_eer)
        np.testing.assert_array_equal(applied.gain, loaded.gain)
        assert applied.applied_as == "multiplicative"
        assert (rule in applied.eer_rule) if rule else applied.eer_rule is None


def test_eer_gain_multiplicative_and_reciprocal_force_either_way(tmp_path):
    from correction.gain import reference_for_movie

    _, counts = _count_image()
    mrcfile.new(tmp_path / "gain.mrc", data=counts).close()
    tifffile.imwrite(tmp_path / "x.gain", counts)
    as_is = GainParams(gain_path=tmp_path / "gain.mrc", eer_gain="multiplicative")
    applied = reference_for_movie(load_gain_reference(as_is), as_is, is_eer=True)
    np.testing.assert_array_equal(applied.gain, counts)
    assert "applied as a multiplier" in applied.eer_rule
    inverted = GainParams(gain_path=tmp_path / "x.gain", eer_gain="reciprocal")
    applied = reference_for_movie(load_gain_reference(inverted), inverted, is_eer=True)
    assert applied.applied_as == "reciprocal"
    valid = counts != 0
    np.testing.assert_allclose(applied.gain[valid], counts[valid].mean() / counts[valid],
                               rtol=1e-5)
    with pytest.raises(ParameterError, match="eer_gain must be one of multiplicative, relion, "
                                             "reciprocal"):
        GainParams(eer_gain="inverse")


def test_the_default_eer_gain_mode_leaves_the_parameter_fingerprint_as_it_was():
    """A daemon's state keys use the fingerprint: adding the option must not redo old movies
    (the reading conventions, which do redo them on purpose, set aside)."""
    import dataclasses
    import hashlib
    import json

    from correction.params import CorrectionParams, DoseParams

    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    values = dataclasses.asdict(params)
    del values["dose"]["frame_doses_per"], values["gain"]["eer_gain"]
    del values["align"]["patch_group_frames"]  # added later, None by default
    del values["read"]["frame_integration"]  # added later, None by default
    before = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()
                            ).hexdigest()[:16]
    assert params.fingerprint(reading_conventions=1) == before
    assert dataclasses.replace(params, gain=GainParams(eer_gain="relion")
                               ).fingerprint() != before
    assert dataclasses.replace(params, align=dataclasses.replace(
        params.align, patch_group_frames=4)).fingerprint() != before

    from correction.frame_integration import parse_frame_integration

    def integrated(text: str, source: str) -> CorrectionParams:
        read = dataclasses.replace(params.read,
                                   frame_integration=parse_frame_integration(text, source))
        return dataclasses.replace(params, read=read)

    # a frame integration file keys by its lines, not by where it lies
    assert integrated("1000 25", "/a/fm.txt").fingerprint() != params.fingerprint()
    assert integrated("1000 25", "/a/fm.txt").fingerprint() \
        == integrated("1000 25", "/b/fm.txt").fingerprint()
    assert integrated("1000 25", "/a/fm.txt").fingerprint() \
        != integrated("1000 20", "/a/fm.txt").fingerprint()


def test_a_dark_of_the_whole_exposure_is_refused_naming_the_file_and_one_frames_dark_works(
        tmp_path):
    """An integrating camera's frames: a dark of 20 per pixel plus 2 counts of signal. The dark
    of one frame gives the signal back; the dark of all 16 frames (what a dark exposure of the
    same length holds) made every pixel about -300 with no error before."""
    rng = np.random.default_rng(14)
    dark = rng.uniform(18.0, 22.0, (256, 256)).astype(np.float32)
    frames = (rng.poisson(2.0, (16, 256, 256)) + np.rint(dark)).astype(np.int16)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    gain = np.ones((256, 256), np.float32)
    one_frame = GainReference.from_arrays(gain, dark=np.rint(dark), dark_path=tmp_path / "d.mrc")
    out = correct_frames(frames, pixel_size_A=1.0, params=params, gain_reference=one_frame,
                         workers=1)
    assert 1.9 < float(out.images.sum.mean()) / 16 < 2.1
    exposure = GainReference.from_arrays(gain, dark=16 * np.rint(dark),
                                         dark_path=tmp_path / "dark_exposure.mrc")
    with pytest.raises(GainReferenceError, match=r"dark_exposure\.mrc: dark reference above "
                                                 r"the frames.*dark of one frame"):
        correct_frames(frames, pixel_size_A=1.0, params=params, gain_reference=exposure,
                       workers=1)


def _gain_file(path, value):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.full((16, 24), value, np.float32))


def test_a_reference_remembers_the_version_of_each_file_it_was_read_from(tmp_path):
    """The files' size, modification time and SHA-256 travel with the reference and every form
    derived from it, so a record states the content applied, not the file as it is later."""
    import hashlib

    from correction.gain import reference_for_movie
    from correction.report import reference_record

    gain, defects = tmp_path / "gain.mrc", tmp_path / "defects.txt"
    _gain_file(gain, 2.0)
    defects.write_text("3 4 2 2\n")
    params = GainParams(gain_path=gain, defects_path=defects, eer_gain="reciprocal")
    ref = load_gain_reference(params)
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (gain, defects)}
    assert {(v.path, v.sha256) for v in ref.read} == {(str(p), s) for p, s in sha.items()}
    derived = [ref.fit_to((32, 48)), ref.onto_coarser_grid(2),
               reference_for_movie(ref, params, is_eer=True)]
    assert all(d is not ref and d.read == ref.read for d in derived)
    _gain_file(gain, 3.0)  # written anew after it was read
    record = reference_record(gain, None, defects, read=derived[0].read)
    assert record["gain"]["sha256"] == sha[gain] != hashlib.sha256(gain.read_bytes()).hexdigest()
    assert reference_record(gain)["gain"]["sha256"] != sha[gain]  # not read: as it is now


def test_a_gain_written_anew_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    """A file whose size or modification time changes between the looks before and after it
    is read is read again, so the arrays and the hashes are of one version."""
    import correction.gain as gain_module

    gain = tmp_path / "gain.mrc"
    _gain_file(gain, 2.0)
    real = gain_module._load_once
    calls = []
    monkeypatch.setattr(gain_module, "REREAD_PAUSE_S", 0.0)

    def rewritten_during_the_first_read(params):
        loaded = real(params)
        calls.append(float(loaded.gain[0, 0]))
        if len(calls) == 1:
            _gain_file(gain, 3.0)
            stat = gain.stat()
            os.utime(gain, ns=(stat.st_mtime_ns + 10**9, stat.st_mtime_ns + 10**9))
        return loaded

    monkeypatch.setattr(gain_module, "_load_once", rewritten_during_the_first_read)
    ref = load_gain_reference(GainParams(gain_path=gain))
    assert calls == [2.0, 3.0] and float(ref.gain[0, 0]) == 3.0
    assert ref.read[0].sha256 == __import__("hashlib").sha256(gain.read_bytes()).hexdigest()

    def always_rewritten(params):
        stat = gain.stat()
        os.utime(gain, ns=(stat.st_mtime_ns + 10**9, stat.st_mtime_ns + 10**9))
        return real(params)

    monkeypatch.setattr(gain_module, "_load_once", always_rewritten)
    with pytest.raises(GainReferenceError, match="gain.mrc: kept changing while it was read"):
        load_gain_reference(GainParams(gain_path=gain))
