"""The hand-off files as RELION 5 and AreTomo3 read them, checked against those programs' source.

Each test writes a file the way the service does, reads it back (``starfile`` for STAR files) and
checks the exact column or link. The facts, paraphrased from the peers' source:

* RELION 5's tilt-series import (3dem/relion
  ``src/tomography_python_programs/import_tilt_series/serialem.py``,
  ``_generate_tilt_image_dataframe``) copies the mdoc's ``NumSubFrames`` into
  ``rlnTomoTiltMovieFrameCount`` as it is: the frames of the movie file (raw frames for an EER,
  whose mdoc counts them; the EER grouping is chosen later, in motion correction, and recorded
  in the movie's own STAR as ``rlnEERGrouping``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import starfile

from daemon.handoff.relion import RelionOptics, motion_star_blocks, movie_motion, write_star
from daemon.handoff.tomo import TiltEntry, series_block
from daemon.series.tilt_record import TiltRecord

OPTICS = RelionOptics()


def _record(movie: str, n_frames: int, *, eer: dict | None = None) -> dict:
    """A motion record as the correction writes it (the keys the hand-off reads)."""
    stem = Path(movie).stem
    record = {
        "movie": f"/data/frames/{movie}", "voltage_kV": 300.0, "pixel_size_A": 1.5,
        "shape": [64, 64], "frames_in_movie": n_frames,
        "global_shifts_px": [[0.1 * i, 0.0] for i in range(n_frames)],
        "dose": {"per_frame_e_A2": [3.0 / n_frames] * n_frames, "pre_exposure_e_A2": 0.0},
        "outputs": {"sum": f"{stem}.mrc", "dw": f"{stem}_DW.mrc", "even": f"{stem}_EVN.mrc",
                    "odd": f"{stem}_ODD.mrc"},
    }
    if eer is not None:
        record["eer"] = eer
    return record


def _tilt(movie: str, index: int, angle: float) -> TiltRecord:
    return TiltRecord(series="TS_01", movie=movie, tilt_deg=angle, acquisition_index=index,
                      dose_e_A2=3.0, pre_exposure_e_A2=3.0 * index)


def test_an_eer_tilt_lists_the_raw_frames_of_its_movie_as_relions_import_copies_numsubframes(
        tmp_path):
    """125 raw EER frames read as 10 fractions of 12 (the 5 left over join the last): the series
    STAR says 125, as RELION's import writes an EER tilt's ``NumSubFrames``; the movie's motion
    STAR keeps counting fractions as RELION renders them. A movie of plain frames keeps its
    frame count."""
    eer = {"raw_frames": 125, "fractions": 10, "group_frames": 12, "grouped_by": "frames",
           "raw_frames_per_fraction": [12] * 9 + [17], "sampling": 1}
    out = tmp_path / "out"
    out.mkdir()
    eer_motion = movie_motion(_record("a.eer", 10, eer=eer), out / "a.motion.json")
    tif_motion = movie_motion(_record("b.tif", 8), out / "b.motion.json")
    table = series_block([TiltEntry(eer_motion, _tilt("a.eer", 0, 0.0)),
                          TiltEntry(tif_motion, _tilt("b.tif", 1, 3.0))], out, OPTICS)
    star = write_star(out / "TS_01.star", {"TS_01": table})

    rows = starfile.read(star)
    assert list(rows["rlnMicrographMovieName"]) == ["/data/frames/a.eer", "/data/frames/b.tif"]
    assert list(rows["rlnTomoTiltMovieFrameCount"]) == [125, 8]
    general = motion_star_blocks(eer_motion)["general"]
    assert general["rlnImageSizeZ"] == 10 and general["rlnEERGrouping"] == 12
    assert np.issubdtype(rows["rlnTomoTiltMovieFrameCount"].dtype, np.integer)
