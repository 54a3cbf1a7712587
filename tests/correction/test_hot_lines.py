"""Hot rows and columns: found on the movie's sum, replaced, and no longer biasing alignment."""

from __future__ import annotations

import numpy as np
import pytest

from correction.hot_lines import MAX_HOT_LINES, detect_hot_lines
from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.pipeline import correct_frames
from correction.synthetic import render_movie


def _poisson_sum(rng, shape=(1024, 1024), counts=9.0, specimen=None):
    mean = counts * (np.ones(shape) if specimen is None else specimen)
    return rng.poisson(mean).astype(np.float32)


@pytest.mark.parametrize("counts", [0.3, 9.0, 300.0])
def test_a_clean_sum_has_no_hot_lines_at_any_dose(counts):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        assert not detect_hot_lines(_poisson_sum(rng, counts=counts))


def test_an_edge_of_the_specimen_or_of_the_beam_along_a_column_is_not_a_hot_line():
    """A step up (carbon to hole, 30 %) steps up on one side only, and a bright band of eight
    columns is wider than the three lines each side is compared with: neither is flagged."""
    rng = np.random.default_rng(3)
    specimen = np.ones((1024, 1024))
    specimen[:, 400:] = 1.3
    specimen[200:, 700:708] = 1.5  # a bright band (a specimen feature)
    found = detect_hot_lines(_poisson_sum(rng, counts=100.0, specimen=specimen))
    assert not found.columns and not found.rows


def test_a_stuck_column_and_a_partly_hot_row_are_found_however_faint_per_pixel():
    """+1.5 counts per pixel over 9 expected (the per-pixel test finds none of them) on a whole
    column, and on 700 of a row's 1024 pixels."""
    rng = np.random.default_rng(4)
    image = _poisson_sum(rng, counts=9.0)
    image[:, 300] += rng.poisson(1.5, 1024)
    image[700, 200:900] += 2.0
    found = detect_hot_lines(image)
    assert found.columns == (300,) and found.rows == (700,)
    mask = found.mask(image.shape)
    assert mask[:, 300].all() and mask[700].all() and int(mask.sum()) == 2 * 1024 - 1


def test_lines_in_gain_units_are_tested_in_counts_and_excluded_pixels_do_not_count():
    rng = np.random.default_rng(5)
    gain = rng.uniform(0.8, 1.2, (512, 512)).astype(np.float32)
    counts = _poisson_sum(rng, shape=(512, 512), counts=20.0)
    counts[:, 100] += 2.0
    counts[:, 200] += 50.0  # a column the defect list already names
    exclude = np.zeros((512, 512), bool)
    exclude[:, 200] = True
    found = detect_hot_lines(counts * gain, gain=gain, exclude=exclude)
    assert found.columns == (100,) and not found.rows


def test_a_pattern_of_the_whole_detector_is_not_taken_for_hot_lines():
    """Every 16th column 10 % brighter (a missing gain reference): a fixed pattern, which the
    detector-pattern check reports; replacing 64 columns would not be right."""
    rng = np.random.default_rng(6)
    image = _poisson_sum(rng, counts=50.0)
    image[:, ::16] *= 1.1
    assert 1024 // 16 > MAX_HOT_LINES
    assert not detect_hot_lines(image)


def test_a_stuck_column_no_longer_pulls_the_shifts_towards_zero():
    """1024^2 x 30 frames at 0.3 e/px/frame of a weak (cryo-like, 7 %) specimen, with a column
    and 700 pixels of a row at +1 count per frame (the classic cause of zero-shift bias): the
    lines are found and replaced, and the shifts are as accurate as those of the same movie
    without them (before: 0.80 px RMS against 0.35 px, the drift found 28 % short)."""
    def shifts_error(add_line: bool) -> tuple[float, object]:
        rng = np.random.default_rng(8)
        movie = render_movie(rng, shape_yx=(1024, 1024), n_frames=30,
                             electrons_per_px_per_frame=0.3, gain=None, n_hot_pixels=0,
                             dtype=np.int16, contrast=0.07)
        frames = movie.frames.copy()
        if add_line:
            frames[:, :, 300] += rng.poisson(1.0, (30, 1024)).astype(frames.dtype)
            frames[:, 700, 200:900] += rng.poisson(1.0, (30, 700)).astype(frames.dtype)
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.3),
                                  align=AlignParams(patches_x=1, patches_y=1))
        out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=1)
        truth = movie.shifts_yx_px - movie.shifts_yx_px.mean(axis=0)
        found = out.shifts_yx_px - out.shifts_yx_px.mean(axis=0)
        return float(np.sqrt(np.mean(np.sum((found - truth) ** 2, axis=1)))), out

    clean, _ = shifts_error(False)
    with_line, out = shifts_error(True)
    assert out.hot_lines.columns == (300,) and out.hot_lines.rows == (700,)
    assert with_line <= 1.1 * clean + 0.01, (with_line, clean)


def test_a_column_the_gain_reference_corrects_is_not_a_hot_line_but_a_stuck_one_is():
    """A column 6 % more sensitive than the rest, which the gain corrects exactly: the
    detector's pattern, not a stuck column (it was flagged on the raw counts and replaced).
    A column stuck at +1 count per frame on top of the same gain is still found."""
    from correction.gain import GainReference

    rng = np.random.default_rng(3)
    gain = np.ones((1024, 1024), np.float32)
    gain[:, 512] = 1 / 1.06
    frames = rng.poisson(1.0 / gain, (40, 1024, 1024)).astype(np.uint8)
    params = CorrectionParams(dose=DoseParams(total_dose_e_A2=40.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    reference = GainReference.from_arrays(gain)
    out = correct_frames(frames, pixel_size_A=1.0, params=params, gain_reference=reference,
                         workers=1)
    assert not out.hot_lines
    frames[:, :, 300] += rng.poisson(1.0, (40, 1024)).astype(np.uint8)
    out = correct_frames(frames, pixel_size_A=1.0, params=params, gain_reference=reference,
                         workers=1)
    assert out.hot_lines.columns == (300,)


def test_a_column_dead_since_the_gain_reference_was_taken_is_found_and_leaves_no_streak():
    """1024^2 x 10 frames at 1 e/px/frame, a column reading zero that the gain reference does
    not mark: it is found dead (not hot) and replaced, so the sum has no dark streak (before:
    the column, smeared over the drift, stood 6 robust spreads below its neighbours; now less
    than 3 anywhere)."""
    rng = np.random.default_rng(9)
    movie = render_movie(rng, shape_yx=(1024, 1024), n_frames=10,
                         electrons_per_px_per_frame=1.0, gain=None, n_hot_pixels=0,
                         dtype=np.int16, contrast=0.3)
    frames = movie.frames.copy()
    frames[:, :, 512] = 0
    frames[:, 400, 100:800] = 0  # 700 pixels of a row
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(frames, pixel_size_A=1.0, params=params, workers=1)
    assert out.alignment.supported
    assert out.hot_lines.dead_columns == (512,) and out.hot_lines.dead_rows == (400,)
    assert not out.hot_lines.columns and not out.hot_lines.rows
    column_means = out.images.sum.mean(axis=0)[16:-16]
    residual = column_means - np.median(column_means)
    spread = 1.4826 * np.median(np.abs(residual))
    assert np.abs(residual).max() < 4.5 * spread, np.abs(residual).max() / spread


def test_a_dark_band_of_the_specimen_is_not_a_dead_line():
    """Wider than the three lines each side, a step down on one side only, or a thin dark
    line at 80 % transmission (a filament along a detector row with the drift parallel to it,
    which was taken for a dead row): none reads next to nothing."""
    rng = np.random.default_rng(10)
    specimen = np.ones((1024, 1024))
    specimen[:, 300:308] = 0.6
    specimen[:, 600:] = 0.7
    specimen[500:503, :] = 0.8
    found = detect_hot_lines(_poisson_sum(rng, counts=100.0, specimen=specimen))
    assert not found
