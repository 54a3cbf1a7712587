"""MotionCor2/3's frame integration file (``-FmIntFile``) groups raw frames as MotionCor3 does.

The expected groupings follow MotionCor3's ``CFmIntParam::mCalcIntFms`` (DataUtil/
CFmIntParam.cpp), worked by hand: the lines fitted to the movie (its extra raw frames join
the last line, the lines' extra taken off the last lines), ``RAW // PER`` fractions a line,
each line's remainder carried to the next, the last remainder one each to the last fractions.
"""

from __future__ import annotations

import pytest

from correction.errors import ParameterError
from correction.frame_integration import (IntegrationEntry, parse_frame_integration,
                                          read_frame_integration)


@pytest.mark.parametrize("text, n_raw, expected", [
    ("1000 25 0.02", 1000, [25] * 40),
    ("1000 25 0.02", 1010, [25] * 30 + [26] * 10),             # 10 more: one each to the last
    ("1000 25 0.02", 1030, [25] * 36 + [26] * 5),              # 30 more: a fraction, and 5
    ("1000 25 0.02", 990, [25] * 24 + [26] * 15),              # written for a longer movie
    ("2000 25 0.02", 1000, [25] * 40),
    ("200 10 0.02\n800 40 0.02", 1000, [10] * 20 + [40] * 20),  # finer early fractions
    ("10 3 0.1\n90 10 0.1", 100, [3, 3, 3] + [10] * 8 + [11]),  # a line's rest joins the next
    ("10 4 0.1\n10 3 0.1", 20, [4, 4, 3, 3, 3, 3]),
    ("30 3 0.1\n30 6 0.1", 75, [3] * 10 + [6] * 4 + [7] * 3),   # the movie's extra: last line
    ("10 5 0.1\n100 2 0.1", 12, [5, 5, 2]),                     # the lines' extra: off the last
    ("200 10 0.1\n800 40 0.1", 200, [10] * 20),  # the last line used up (MotionCor3: none)
    ("1000 25 0.02", 52, [26, 26]),                            # 2 left: one each to the two
])
def test_raw_frames_are_grouped_as_motioncor3_groups_them(text, n_raw, expected):
    sizes = parse_frame_integration(text, "fm.txt").fraction_sizes(n_raw)
    assert list(sizes) == expected and sum(sizes) == n_raw


def test_the_dose_column_is_per_raw_frame_and_may_be_left_out_on_every_line():
    three = parse_frame_integration("# EER, Falcon 4i\n\n1000 25 0.02  # 40 fractions\n",
                                    "fm.txt")
    assert three.entries == (IntegrationEntry(1000, 25, 0.02),)
    assert (three.per_fraction, three.dose_per_raw_frame_e_A2) == (25, 0.02)
    two = parse_frame_integration("200 10\n800 40\n", "fm.txt")
    assert two.per_fraction == 10 and two.dose_per_raw_frame_e_A2 is None
    zero = parse_frame_integration("1000 25 0", "fm.txt")  # MotionCor2: no dose in the file
    assert zero.dose_per_raw_frame_e_A2 is None


@pytest.mark.parametrize("text, said", [
    ("1000 25 0.02\n500 20\n", "line 2: 2 values where the lines before have 3"),
    ("200 10 0.02\n800 40 0.03\n", "doses differ (0.02, 0.03 e/Å² per raw frame)"),
    ("1000 twenty-five 0.02\n", "line 1: expected 'RAW_FRAMES PER_FRACTION [DOSE]'"),
    ("1000\n", "line 1: expected 'RAW_FRAMES PER_FRACTION [DOSE]', got 1 values"),
    ("1000 25 0.02 7\n", "got 4 values"),
    ("1000 0 0.02\n", "must be >= 1, got 1000 and 0"),
    ("1000 25 -0.02\n", "must be a number >= 0 e/Å², got -0.02"),
    ("1000 25 nan\n", "must be a number >= 0 e/Å², got nan"),
    ("# nothing\n", "no entries"),
])
def test_a_file_motionwatch_cannot_take_is_refused_in_one_line_naming_file_and_line(text, said):
    with pytest.raises(ParameterError) as caught:
        parse_frame_integration(text, "/data/fmint.txt")
    message = str(caught.value)
    assert "frame integration file /data/fmint.txt" in message and said in message
    assert "\n" not in message


def test_a_movie_too_short_for_its_fractions_is_refused():
    integration = parse_frame_integration("1000 25 0.02", "fm.txt")
    with pytest.raises(ParameterError, match="makes no fraction of the movie's 24 raw frames"):
        integration.fraction_sizes(24)
    with pytest.raises(ParameterError, match="makes 1 fraction of the movie's 30 raw frames: "
                                             "the 5 left over are more than its 1 fraction"):
        integration.fraction_sizes(30)  # MotionCor3 writes past its array


def test_the_file_is_read_as_text_and_a_missing_or_binary_one_is_a_one_line_error(tmp_path):
    good = tmp_path / "fmint.txt"
    good.write_bytes(b"\xef\xbb\xbf1000 25 0.02\r\n")  # a BOM and CRLF, as Windows editors save
    assert read_frame_integration(good).entries == (IntegrationEntry(1000, 25, 0.02),)
    with pytest.raises(ParameterError, match="fmint-gone.txt: cannot be read"):
        read_frame_integration(tmp_path / "fmint-gone.txt")
    (tmp_path / "gain.tif").write_bytes(b"II*\x00\xff\xfe\x00\x80")
    with pytest.raises(ParameterError, match="gain.tif: not text"):
        read_frame_integration(tmp_path / "gain.tif")
