"""Hot pixels, defect lists and maps, and their replacement."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from correction.defects import (
    defect_mask_from_image,
    detect_hot_pixels,
    first_coordinates_yx,
    plan_replacement,
    read_defect_list,
    relion_reads_defect_list,
    replace_pixels,
)
from correction.errors import GainReferenceError
from correction.gain import load_gain_reference
from correction.params import GainParams


def _specimen(shape, rng, n_blobs=300, sigma_px=1.0, contrast=1.0):
    """Background 1 with bright Gaussian blobs peaking at 1 + contrast (sharp features)."""
    ny, nx = shape
    image = np.ones(shape)
    yy, xx = np.mgrid[-4:5, -4:5]
    kernel = contrast * np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma_px ** 2))
    centres = np.column_stack([rng.integers(5, ny - 5, n_blobs), rng.integers(5, nx - 5, n_blobs)])
    for cy, cx in centres:
        image[cy - 4:cy + 5, cx - 4:cx + 5] += kernel
    return image, centres


def _poisson_movie_with_hot_pixels(rng, *, n_frames=10, shape=(512, 512), dose_px=1.0,
                                   n_hot=30, hot_rate=5.0):
    specimen, centres = _specimen(shape, rng)
    frames = rng.poisson(dose_px * specimen, size=(n_frames, *shape)).astype(np.float32)
    hot_idx = rng.choice(shape[0] * shape[1], n_hot, replace=False)
    hy, hx = np.unravel_index(hot_idx, shape)
    frames[:, hy, hx] += rng.poisson(hot_rate, size=(n_frames, n_hot))
    return frames, (hy, hx), centres


def test_hot_pixels_injected_into_a_poisson_movie_are_all_found():
    rng = np.random.default_rng(11)
    frames, (hy, hx), _ = _poisson_movie_with_hot_pixels(rng)
    mask = detect_hot_pixels(frames.sum(axis=0), sigma=8.0)
    assert mask[hy, hx].all()
    false_positives = int(mask.sum()) - len(hy)
    assert false_positives <= 2


def test_sharp_bright_specimen_features_at_normal_dose_are_not_flagged():
    rng = np.random.default_rng(12)
    specimen, centres = _specimen((512, 512), rng, n_blobs=600, sigma_px=1.0, contrast=1.0)
    # 40 frames at 1 e/pixel: 40 counts of background, features up to 80.
    summed = rng.poisson(40 * specimen).astype(np.float32)
    mask = detect_hot_pixels(summed, sigma=8.0)
    assert int(mask.sum()) == 0


def test_adjacent_hot_pixels_are_both_found():
    rng = np.random.default_rng(13)
    summed = rng.poisson(20.0, (256, 256)).astype(np.float32)
    summed[100, 100] += 400
    summed[100, 101] += 300
    mask = detect_hot_pixels(summed, sigma=8.0)
    assert mask[100, 100] and mask[100, 101]


def test_gain_scaled_sum_uses_the_measured_spread():
    # The same counts times a gain of 0.01: the scale is measured, so the same pixels are hot.
    rng = np.random.default_rng(14)
    frames, (hy, hx), _ = _poisson_movie_with_hot_pixels(rng)
    mask = detect_hot_pixels(frames.sum(axis=0) * 0.01, sigma=8.0)
    assert mask[hy, hx].all() and int(mask.sum()) - len(hy) <= 2


def test_replaced_pixels_take_the_mean_of_valid_neighbours_not_zero():
    frame = np.arange(100, dtype=np.float32).reshape(10, 10) + 1
    mask = np.zeros((10, 10), bool)
    mask[4, 4] = mask[4, 5] = True          # a pair: each excludes the other
    mask[0, 0] = True                       # a corner: 3 neighbours
    out = replace_pixels(frame.copy(), mask)
    expected_44 = np.mean([frame[3, 3], frame[3, 4], frame[3, 5], frame[4, 3],
                           frame[5, 3], frame[5, 4], frame[5, 5]])
    assert out[4, 4] == pytest.approx(expected_44)
    assert out[0, 0] == pytest.approx(np.mean([frame[0, 1], frame[1, 0], frame[1, 1]]))
    untouched = ~mask
    np.testing.assert_array_equal(out[untouched], frame[untouched])


def test_pixels_inside_a_large_defect_take_the_nearest_valid_pixel():
    frame = np.full((20, 20), 7.0, np.float32)
    frame[:, :5] = 3.0
    mask = np.zeros((20, 20), bool)
    mask[8:13, 5:12] = True                 # a 5 x 7 block: its core has no valid neighbour
    out = replace_pixels(frame.copy(), mask)
    assert np.all(out[mask] > 0)
    assert out[10, 8] in (3.0, 7.0)          # core pixel: nearest valid value
    assert out[10, 11] == pytest.approx(7.0)  # edge pixel: mean of valid neighbours


def test_plan_is_reusable_across_frames():
    mask = np.zeros((8, 8), bool)
    mask[2, 2] = True
    plan = plan_replacement(mask)
    for value in (1.0, 5.0):
        frame = np.full((8, 8), value, np.float32)
        frame[2, 2] = 1000
        assert plan.apply(frame)[2, 2] == pytest.approx(value)


def test_defect_list_rectangles_become_a_mask(tmp_path):
    path = tmp_path / "defects.txt"
    path.write_text("# x y w h\n3 1 2 4\n\n0 9 10 1\n")
    mask = read_defect_list(path, (10, 12))
    expected = np.zeros((10, 12), bool)
    expected[1:5, 3:5] = True
    expected[9, 0:10] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("bad_line", ["5 six 7 8", "5 inf 7 8", "5 1e400 7 8"])
def test_malformed_defect_list_line_is_quoted(tmp_path, bad_line):
    """An infinite value too (before, an OverflowError that the daemon took for an internal
    error of each movie, not a configuration error)."""
    path = tmp_path / "defects.txt"
    path.write_text(f"1 2 3 4\n{bad_line}\n")
    with pytest.raises(GainReferenceError, match=r"defects\.txt: defect list line 2 is not "
                                                 rf"'x y w h': '{bad_line}'"):
        read_defect_list(path, (10, 10))


def test_defect_list_through_gain_params_is_replaced_in_frames(tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", np.ones((16, 16), np.float32))
    (tmp_path / "d.txt").write_text("4 2 1 3\n")
    ref = load_gain_reference(GainParams(gain_path=tmp_path / "g.tif",
                                         defects_path=tmp_path / "d.txt"))
    assert ref.defect_mask.sum() == 3 and ref.defect_mask[2:5, 4].all()


def test_a_defect_map_image_is_in_the_movies_grid_and_not_turned_with_the_gain(tmp_path):
    """As RELION and MotionCor2 take it ("the coordinate system is the same as the input movie
    before application of binning, rotation and/or flipping"): the gain stored 8 x 12 and
    turned by -RotGain 1 fits 12 x 8 frames, and so does the map, as it is."""
    tifffile.imwrite(tmp_path / "g.tif", np.ones((8, 12), np.float32))
    defect_map = np.zeros((12, 8), np.uint8)
    defect_map[2, 5] = 1
    tifffile.imwrite(tmp_path / "map.tif", defect_map)
    ref = load_gain_reference(GainParams(gain_path=tmp_path / "g.tif",
                                         defects_path=tmp_path / "map.tif",
                                         rotate_quarter_turns=1, flip="leftright"))
    # the TIFF's first stored row is read as the last (MRC row order, as for the movie):
    # stored [2, 5] is frame [12 - 1 - 2, 5]; no turn and no flip after that
    assert ref.defect_mask.shape == (12, 8)
    assert ref.defect_mask[9, 5] and ref.defect_mask.sum() == 1


def test_a_defect_map_image_alone_gives_a_gain_of_ones_and_a_list_alone_its_movies_grid(
        tmp_path):
    """A defect map has the frame's shape, so it needs no gain (gain-normalised frames); a
    text list alone is rasterized on the grid of each movie's frames, as MotionCor2's
    -DefectFile and RELION's --defect_file take it (before, it was refused)."""
    defect_map = np.zeros((8, 12), np.uint8)
    defect_map[3, 5] = 1
    tifffile.imwrite(tmp_path / "map.tif", defect_map)
    ref = load_gain_reference(GainParams(defects_path=tmp_path / "map.tif"))
    assert ref.shape_yx == (8, 12) and ref.gain_path is None
    assert np.all(ref.gain[~ref.defect_mask] == 1) and ref.defect_mask.sum() == 1
    (tmp_path / "d.txt").write_text("4 2 1 3\n")  # x y w h
    listed = load_gain_reference(GainParams(defects_path=tmp_path / "d.txt"))
    assert listed.on_movie_grid and listed.defects_path == tmp_path / "d.txt"
    for shape in ((8, 12), (6, 5)):
        on_grid = listed.fit_to(shape)
        assert on_grid.shape_yx == shape and not on_grid.on_movie_grid
        expected = np.zeros(shape, bool)
        expected[2:5, 4] = True  # rows y .. y + h - 1 of column x, clipped to the frame
        np.testing.assert_array_equal(on_grid.defect_mask, expected)
        assert np.all(on_grid.gain[~expected] == 1)
    assert listed.fit_to((8, 12)) is listed.fit_to((8, 12))  # made once per grid


def test_defect_map_nonzero_and_nonfinite_are_defects():
    image = np.array([[0.0, 1.0], [np.nan, 0.0]])
    np.testing.assert_array_equal(defect_mask_from_image(image), [[False, True], [True, False]])


# --- Poisson test at any dose ------------------------------------------------------------------
# The sum of n frames of Poisson(dose) counts is drawn directly as Poisson(n * dose) (the same
# distribution); a hot pixel gets 20 extra counts per frame (Poisson(20 n) on top).
_N_FRAMES = 10
_SHAPE = (1024, 1024)
_N_PLANTED = 40


def _summed_counts(rng, dose_px, *, gain=None, planted=True):
    """Raw summed counts (over a flat-field gain pattern when given), planted hot pixels."""
    rate = _N_FRAMES * dose_px / (1.0 if gain is None else gain)
    raw = rng.poisson(rate, _SHAPE).astype(np.float32)
    flat = rng.choice(raw.size, _N_PLANTED, replace=False) if planted else np.zeros(0, int)
    hy, hx = np.unravel_index(flat, _SHAPE)
    raw[hy, hx] += rng.poisson(20.0 * _N_FRAMES, flat.size)
    return raw, (hy, hx)


def _gain_pattern(rng):
    return rng.uniform(0.8, 1.25, _SHAPE).astype(np.float32)


@pytest.mark.parametrize("dose_px", [0.01, 0.03, 0.1, 1.0, 10.0])
def test_clean_poisson_sum_flags_at_most_2_of_1024_squared_pixels_at_any_dose(dose_px):
    rng = np.random.default_rng(int(dose_px * 1000))
    raw, _ = _summed_counts(rng, dose_px, planted=False)
    assert int(detect_hot_pixels(raw, sigma=8.0).sum()) <= 2
    gain = _gain_pattern(rng)
    raw, _ = _summed_counts(rng, dose_px, gain=gain, planted=False)
    assert int(detect_hot_pixels(raw * gain, sigma=8.0, gain=gain).sum()) <= 2


@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("dose_px", [0.01, 0.03, 0.1, 1.0, 10.0])
def test_pixels_20_counts_per_frame_above_background_are_all_caught_at_any_dose(
        dose_px, with_gain):
    rng = np.random.default_rng(7 + int(dose_px * 1000))
    gain = _gain_pattern(rng) if with_gain else None
    raw, (hy, hx) = _summed_counts(rng, dose_px, gain=gain)
    mask = (detect_hot_pixels(raw * gain, sigma=8.0, gain=gain) if with_gain
            else detect_hot_pixels(raw, sigma=8.0))
    assert mask[hy, hx].all()
    assert int(mask.sum()) - _N_PLANTED <= 2


@pytest.mark.parametrize("dose_px", [0.03, 1.0])
def test_gain_multiplied_float_sum_without_its_gain_is_tested_as_scaled_counts(dose_px):
    """Gain-normalised data (counts times a 0.8-1.25 pattern, gain not given): not integers,
    so the measured dispersion scales the Poisson test."""
    rng = np.random.default_rng(31)
    gain = _gain_pattern(rng) * np.float32(0.05)
    raw, (hy, hx) = _summed_counts(rng, dose_px, gain=gain / np.float32(0.05))
    mask = detect_hot_pixels(raw * gain, sigma=8.0)
    assert mask[hy, hx].all() and int(mask.sum()) - _N_PLANTED <= 2


def test_integer_adu_of_an_integrating_camera_use_their_measured_dispersion():
    """37 ADU per electron: integers, but far from Poisson; the dispersion is measured."""
    rng = np.random.default_rng(32)
    raw, (hy, hx) = _summed_counts(rng, 1.0)
    adu = np.round(raw * 37 + rng.normal(0, 5, _SHAPE)).astype(np.float32)
    mask = detect_hot_pixels(adu, sigma=8.0)
    assert mask[hy, hx].all() and int(mask.sum()) - _N_PLANTED <= 2


def test_dark_subtracted_data_with_negative_values_get_a_robust_gaussian_test():
    rng = np.random.default_rng(33)
    image = rng.normal(0.0, 5.0, (512, 512)).astype(np.float32)
    image[100, 200] += 200.0
    image[300, 17] += 150.0
    mask = detect_hot_pixels(image, sigma=8.0)
    assert mask[100, 200] and mask[300, 17] and int(mask.sum()) <= 4


def test_excluded_defects_are_never_flagged_and_do_not_break_the_count_test():
    rng = np.random.default_rng(34)
    raw, (hy, hx) = _summed_counts(rng, 0.03)
    exclude = np.zeros(_SHAPE, bool)
    exclude[hy[:5], hx[:5]] = True
    raw[500:510, 500] = 0.37  # already replaced defects: not integers
    exclude[500:510, 500] = True
    mask = detect_hot_pixels(raw, sigma=8.0, exclude=exclude)
    assert not mask[exclude].any() and mask[hy[5:], hx[5:]].all()
    assert int(mask.sum()) - (_N_PLANTED - 5) <= 2


def test_correct_frames_keeps_99_percent_of_electrons_of_a_0_03_e_per_px_movie():
    """1024^2 x 10 Poisson frames at 0.03 e/px/frame, no gain reference: the plain sum keeps
    its electrons (the 8-sigma test on the MAD of a nearly all-zero image replaced 62 %)."""
    from correction.params import AlignParams, CorrectionParams, DoseParams
    from correction.pipeline import correct_frames

    rng = np.random.default_rng(35)
    frames = rng.poisson(0.03, (_N_FRAMES, *_SHAPE)).astype(np.uint8)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.03),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=1)
    kept = float(out.images.sum.sum(dtype=np.float64)) / float(frames.sum(dtype=np.float64))
    assert kept >= 0.99, kept
    assert out.n_hot_pixels <= 2


def test_relion_reads_only_a_strict_txt_defect_list(tmp_path):
    """RELION's reader: ``f >> x >> y >> w >> h`` until end of file, only for ``*.txt``."""
    cases = {"plain.txt": "30 50 1 10\n\n4 5 6 7", "comment.txt": "# x y w h\n30 50 1 10\n",
             "commas.txt": "30, 50, 1, 10\n", "other.dat": "30 50 1 10\n",
             "upper.TXT": "30 50 1 10\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    assert {name: relion_reads_defect_list(tmp_path / name) for name in cases} == {
        "plain.txt": True, "comment.txt": False, "commas.txt": False, "other.dat": False,
        "upper.TXT": False}


def test_first_coordinates_lists_a_bounded_number_of_pixels_in_row_order():
    mask = np.zeros((3000, 700), bool)
    mask[::2, ::3] = True  # 1500 x 234 pixels
    yx, count = first_coordinates_yx(mask, 1000)
    assert count == int(mask.sum()) and len(yx) == 1000
    np.testing.assert_array_equal(yx, np.argwhere(mask)[:1000])
    yx, count = first_coordinates_yx(mask, 10**6)
    assert count == len(yx) == int(mask.sum())


def test_a_defect_list_saved_with_a_byte_order_mark_or_as_utf16_reads_its_rectangles(tmp_path):
    """Notepad's UTF-8 byte-order mark made the first line unparseable ('\\ufeff10'), and a
    UTF-16 list was refused: the same rectangles as plain text."""
    from correction.defects import parse_defect_list

    text = "10 20 1 5\n30 40 2 2\n"
    plain = tmp_path / "plain.txt"
    plain.write_text(text)
    for name, data in (("bom.txt", b"\xef\xbb\xbf" + text.encode()),
                       ("utf16.txt", text.encode("utf-16"))):
        (tmp_path / name).write_bytes(data)
        assert parse_defect_list(tmp_path / name) == parse_defect_list(plain) == (
            (10, 20, 1, 5), (30, 40, 2, 2))
