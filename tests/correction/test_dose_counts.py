"""The dose the frames count against the dose given (correction/dose_counts.py): a counting
detector counts one per electron, so a dose setting several times away from the counts is a
setting gone wrong, said in the record and as a warning."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from eer_writer import write_eer

from correction.dose_counts import ABOVE, check_dose_count
from correction.params import (AlignParams, CorrectionParams, DoseParams, GainParams,
                               ReadParams)
from correction.pipeline import correct_frames, correct_movie
from correction.synthetic import render_movie


def test_counts_over_the_pixel_area_are_the_dose_and_alike_doses_say_nothing():
    count = check_dose_count(1.44, 1.2, 1.0, eer=True)  # 1.44 counts on 1.44 Å²
    assert count.counted_e_A2 == pytest.approx(1.0) and count.mismatch is None
    assert check_dose_count(1.0, 1.0, 0.7, eer=True).mismatch is None  # coincidence loss
    assert check_dose_count(1.0, 1.0, ABOVE * 0.99, eer=False).mismatch is None
    assert check_dose_count(0.36, 1.0, 1.0, eer=False).mismatch is None  # 66°, thick


def test_a_dose_given_far_above_the_counts_is_said_for_any_movie():
    """Super-resolution frames (0.5 Å) given the physical pixel (1 Å): 4 times too few e/Å²
    counted; a movie's total dose (40 e/Å²) given per frame."""
    assert "physical pixel size" in check_dose_count(0.25, 1.0, 1.0, eer=False).mismatch
    line = check_dose_count(1.0, 1.0, 40.0, eer=False).mismatch
    assert line.startswith("dose check: the dose given, 40 e/Å² per frame, is 40 times what "
                           "the frames count (1 e/Å² per frame at 1 Å per pixel)")


def test_a_dose_given_far_below_the_counts_is_said_only_for_eer():
    """Below the counts: MotionCor2's per-raw-frame -FmDose of an EER movie; other movies
    count more than one per electron when their frames are scaled or in ADUs."""
    assert check_dose_count(40.0, 1.0, 1.0, eer=False).mismatch is None
    line = check_dose_count(1.0, 1.0, 0.025, eer=True).mismatch
    assert "1/40 of what the frames count" in line and "MotionCor2's -FmDose" in line
    assert "times the raw frames of a fraction, or as the DOSE column of --fm-int-file" in line


def test_an_eer_movie_given_motioncor2s_per_raw_frame_dose_is_said_in_record_and_warning(
        tmp_path):
    """200 raw frames at 0.025 e/px each (5 e/Å² at 1 Å), grouped by 40: MotionCor2's -FmDose
    0.025 given as --dose-per-frame weighted 0.125 e/Å² in all, with no word; 1.0 (RELION's
    dose of a fraction) says nothing."""
    rng = np.random.default_rng(3)
    shape = (256, 256)
    raw = [(rng.random(shape) < 0.025).astype(np.uint8) for _ in range(200)]
    movie = write_eer(tmp_path / "m.eer", raw, shape_yx=shape,
                      metadata=[("sensorPixelSize.width", "m", "1e-10"),
                                ("sensorPixelSize.height", "m", "1e-10")])
    records = {}
    for given in (0.025, 1.0):
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=given, voltage_kV=300.0),
                                  read=ReadParams(pixel_size_A=1.0, eer_group_frames=40),
                                  align=AlignParams(patches_x=1, patches_y=1))
        with pytest.warns(UserWarning) as caught:
            result = correct_movie(movie, tmp_path / str(given), params)
        records[given] = (json.loads(result.outputs["motion"].read_text())["dose"],
                          [str(w.message) for w in caught])
    dose, said = records[0.025]
    assert dose["counted"]["per_frame_e_A2"] == pytest.approx(1.0, rel=0.05)
    assert "of what the frames count" in dose["counted"]["mismatch"]
    assert "MotionCor2's -FmDose" in dose["counted"]["mismatch"]
    assert any(line.startswith("dose check:") for line in said)
    dose, said = records[1.0]
    assert "mismatch" not in dose["counted"]
    assert not any(line.startswith("dose check:") for line in said)


def test_counting_movies_record_what_they_count_and_others_do_not():
    rng = np.random.default_rng(4)
    movie = render_movie(rng, shape_yx=(256, 256), n_frames=8, electrons_per_px_per_frame=1.5,
                         gain=None, n_hot_pixels=0, pixel_size_A=1.0, dtype=np.uint8)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.5),
                              align=AlignParams(patches_x=1, patches_y=1))
    out = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=1)
    assert out.dose_count.counted_e_A2 == pytest.approx(1.5, rel=0.03)
    assert out.dose_count.mismatch is None
    floats = correct_frames(movie.frames.astype(np.float32) * 16, pixel_size_A=1.0,
                            params=params, workers=1)  # gain-normalised, scaled: no count
    assert floats.dose_count is None


def test_the_dose_is_checked_against_the_counts_also_without_the_hot_pixel_search():
    """``--no-hot-pixels`` skipped the pass over the raw sum, and the dose check with it: a
    dose ten times the counted one was weighted with no word."""
    rng = np.random.default_rng(5)
    movie = render_movie(rng, shape_yx=(256, 256), n_frames=8, electrons_per_px_per_frame=1.5,
                         gain=None, n_hot_pixels=0, pixel_size_A=1.0, dtype=np.uint8)
    for given, said in ((1.5, False), (15.0, True)):
        params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=given),
                                  gain=GainParams(detect_hot_pixels=False),
                                  align=AlignParams(patches_x=1, patches_y=1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = correct_frames(movie.frames, pixel_size_A=1.0, params=params, workers=1)
        assert out.dose_count.counted_e_A2 == pytest.approx(1.5, rel=0.05)
        assert (out.dose_count.mismatch is not None) is said
        assert any("dose check:" in str(w.message) for w in caught) is said
