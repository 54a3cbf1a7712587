"""Output stems of movies whose names are too long to name their outputs.

A movie named with 240 characters fits a file system (255 bytes), but ``<name>_DW.mrc`` and
the writer's temporary ``.<name>_DW.mrc.tmp-<pid>`` do not: before, every correction of it
failed with ENAMETOOLONG, and the daemon, taking the error for the output side's, retried it
without end (attempt 14 of 3 in an audit).
"""

from __future__ import annotations

import os

import mrcfile
import numpy as np

from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.pipeline import correct_movie
from correction.stems import MAX_STEM_BYTES, fit_output_stem
from daemon.engine.outputs import movie_stem


def test_a_stem_that_fits_is_kept_and_its_longest_temporary_fits_a_file_name():
    """Every stem that could name its outputs before keeps its name (outputs already written
    are found again): the longest file made from it, a picture's temporary with a 7-digit
    pid, has 255 bytes at most."""
    assert fit_output_stem("TS_01_000_0.0") == "TS_01_000_0.0"
    assert fit_output_stem("L" * MAX_STEM_BYTES) == "L" * MAX_STEM_BYTES
    assert len(f".{'L' * MAX_STEM_BYTES}.spectrum.png.tmp-4194304") == 255


def test_a_long_stem_is_cut_on_a_character_and_named_apart_by_its_digest():
    a, b = "é" * 150 + "_a", "é" * 150 + "_b"  # 302 bytes each, the same first 219
    short_a, short_b = fit_output_stem(a), fit_output_stem(b)
    assert short_a != short_b and short_a.startswith("é" * 109 + "~")
    assert all(len(os.fsencode(s)) <= MAX_STEM_BYTES for s in (short_a, short_b))
    assert fit_output_stem(a) == short_a  # the same every time (restarts, workers)


def test_a_movie_with_a_240_character_name_is_corrected_and_its_outputs_named_shorter(tmp_path):
    name = "L" * 240 + ".mrc"
    with mrcfile.new(tmp_path / name) as mrc:
        mrc.set_data(np.random.default_rng(0).poisson(2.0, (4, 64, 64)).astype(np.int16))
        mrc.voxel_size = 1.1
    result = correct_movie(tmp_path / name, tmp_path / "out", CorrectionParams(
        dose=DoseParams(dose_per_frame_e_A2=1.0), align=AlignParams(patches_x=1, patches_y=1)))
    stem = movie_stem(tmp_path / name)
    assert stem == fit_output_stem("L" * 240) and len(stem) < 240
    assert result.outputs["dw"].name == f"{stem}_DW.mrc" and result.outputs["dw"].is_file()
    assert result.record["movie"] == str(tmp_path / name)


def test_output_tails_name_every_file_a_movies_outputs_comprise():
    """The tails are the one list stem clashes and a killed writer's temporaries are found by:
    the images and record, the RELION motion STAR, the quick-look pictures."""
    from correction.pipeline import output_names
    from correction.quicklook import quicklook_names
    from correction.stems import OUTPUT_TAILS

    names = {*output_names("S").values(), *quicklook_names("S").values(), "S.star"}
    assert {f"S{tail}" for tail in OUTPUT_TAILS} == names
