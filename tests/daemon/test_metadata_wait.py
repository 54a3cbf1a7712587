"""Only a movie that can be a tilt waits for tilt-series metadata (faults issue, item 10).

A tilt-series mdoc anywhere in the watched tree used to make every movie wait ``metadata_wait``
seconds, single-particle movies in another folder included. Now a movie waits only when it is
named like a tilt (series_index_angle, the angle a decimal number) or sits in a folder that holds
a series mdoc.
"""

from __future__ import annotations

from correction.mdoc_text import format_mdoc

from daemon.series.mdoc import parse_mdoc_text
from daemon.series.resolution import MdocObservation, MovieObservation, SeriesConfig, resolve

WAIT = SeriesConfig(metadata_wait_s=60.0)


def dose_symmetric_mdoc(n_tilts: int):
    """A complete series mdoc ``TS_01.mrc.mdoc`` of ``n_tilts`` tilts, 2.5 e/A^2 each."""
    angles = [0.0, 3.0, -3.0, 6.0, -6.0][:n_tilts]
    text = format_mdoc([("PixelSpacing", 1.1), ("ImageFile", "TS_01.mrc")], [
        [("TiltAngle", a), ("ExposureDose", 2.5), ("SubFramePath", f"X:\\TS_01_{i:03d}_{a:.1f}.mrc"),
         ("DateTime", f"17-May-2024  10:0{i}:00")] for i, a in enumerate(angles)])
    return parse_mdoc_text(text, path="/w/tomo/TS_01.mrc.mdoc"), angles


def test_single_particle_movies_beside_a_tilt_series_elsewhere_are_not_held_for_metadata():
    md, _ = dose_symmetric_mdoc(3)
    epu = "spa/FoilHole_1234_Data_5678_9_20230101_120000_fractions.tiff"
    plain = "spa/movie_0007.mrc"
    res = resolve([MovieObservation(epu, 0.0), MovieObservation(plain, 0.0)],
                  [MdocObservation(md, 0.0, folder="tomo")], {}, config=WAIT, now_s=1.0)
    assert epu not in res.pending and plain not in res.pending
    assert {epu, plain} <= res.standalone


def test_a_movie_in_the_folder_of_a_series_mdoc_still_waits_for_its_section():
    md, _ = dose_symmetric_mdoc(3)
    unlisted = "tomo/late_tilt.mrc"
    res = resolve([MovieObservation(unlisted, 0.0)],
                  [MdocObservation(md, 0.0, folder="tomo")], {}, config=WAIT, now_s=1.0)
    assert "waiting for metadata" in res.pending[unlisted]


def test_a_movie_named_like_a_tilt_waits_wherever_it_is():
    md, _ = dose_symmetric_mdoc(3)
    tilt = "other/TS_09_004_6.0.mrc"
    res = resolve([MovieObservation(tilt, 0.0)],
                  [MdocObservation(md, 0.0, folder="tomo")], {}, config=WAIT, now_s=1.0)
    assert tilt in res.pending
