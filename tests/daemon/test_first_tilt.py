"""Which movies may be a tilt series' first tilt, come with their frame mdocs alone, and wait
(at most the metadata wait) for the next movie of their name (daemon/series/first_tilt.py)."""

from __future__ import annotations

from correction.mdoc_text import format_mdoc
from daemon.series.first_tilt import FirstTiltWait
from daemon.series.mdoc import parse_mdoc_text
from daemon.series.resolution import DEFAULT_FILENAME_PATTERN

WAIT_S = 60.0


def _frame_mdoc(name: str, tilt_deg: float | None = 0.0):
    """A parsed SerialEM frame mdoc of movie ``name`` (its [FrameSet] with a stage angle)."""
    section = [("ExposureDose", 3.0), ("SubFramePath", f"X:\\frames\\{name}"),
               ("NumSubFrames", 8), ("DateTime", "07-Dec-26  10:00:00")]
    if tilt_deg is not None:
        section.insert(0, ("TiltAngle", tilt_deg))
    return parse_mdoc_text(format_mdoc([("PixelSpacing", 1.1)], [section],
                                       section_key="FrameSet"), path=f"/w/{name}.mdoc")


def test_the_first_movie_of_its_name_waits_until_the_next_comes_or_the_wait_ends():
    wait = FirstTiltWait(DEFAULT_FILENAME_PATTERN, WAIT_S)
    mdocs = {"TS_01_000_0.0.mrc": _frame_mdoc("TS_01_000_0.0.mrc")}
    assert "for the next movie named like it (TS_01)" in wait.why("TS_01_000_0.0.mrc", mdocs, 5.0)
    assert wait.why("TS_01_000_0.0.mrc", dict(mdocs), WAIT_S) is None  # waited it all out
    later = {**mdocs, "TS_01_001_3.0.mrc": _frame_mdoc("TS_01_001_3.0.mrc", 3.0)}  # a scan on
    assert wait.why("TS_01_000_0.0.mrc", later, 5.0) is None  # the next one came


def test_movies_not_named_like_tilts_or_without_a_stage_angle_do_not_wait():
    wait = FirstTiltWait(DEFAULT_FILENAME_PATTERN, WAIT_S)
    mdocs = {"square_17.mrc": _frame_mdoc("square_17.mrc"),
             "TS_02_000_0.0.mrc": _frame_mdoc("TS_02_000_0.0.mrc", tilt_deg=None)}
    assert wait.why("square_17.mrc", mdocs, 0.0) is None
    assert wait.why("TS_02_000_0.0.mrc", mdocs, 0.0) is None
    assert wait.why("TS_03_000_0.0.mrc", mdocs, 0.0) is None  # no frame mdoc (yet)


def test_once_two_names_of_a_folder_waited_it_out_alone_its_names_are_single_shots():
    """Single-particle shots named by their hole (``sq5_h3_00003_0.0.mrc``): each is the first
    of its name, and each waited the whole metadata wait."""
    wait = FirstTiltWait(DEFAULT_FILENAME_PATTERN, WAIT_S)
    mdocs = {f"grid1/sq5_h{i}_0000{i}_0.0.mrc": _frame_mdoc(f"sq5_h{i}_0000{i}_0.0.mrc")
             for i in range(1, 4)}
    for i in (1, 2):
        assert wait.why(f"grid1/sq5_h{i}_0000{i}_0.0.mrc", mdocs, 1.0) is not None
        assert wait.why(f"grid1/sq5_h{i}_0000{i}_0.0.mrc", mdocs, WAIT_S) is None
    assert wait.why("grid1/sq5_h3_00003_0.0.mrc", mdocs, 1.0) is None
    other = {"grid2/TS_01_000_0.0.mrc": _frame_mdoc("TS_01_000_0.0.mrc")}
    assert wait.why("grid2/TS_01_000_0.0.mrc", other, 1.0) is not None  # another folder


def test_after_a_series_aborted_at_its_first_tilt_the_next_series_first_tilt_still_waits():
    """One name that waited it out alone turned the wait off for the folder: the next series'
    first tilt was corrected alone, then again as a tilt."""
    wait = FirstTiltWait(DEFAULT_FILENAME_PATTERN, WAIT_S)
    mdocs = {"TS_00_000_0.0.mrc": _frame_mdoc("TS_00_000_0.0.mrc")}
    assert wait.why("TS_00_000_0.0.mrc", mdocs, WAIT_S) is None  # aborted: corrected alone
    later = {**mdocs, "TS_01_000_0.0.mrc": _frame_mdoc("TS_01_000_0.0.mrc")}
    assert wait.why("TS_01_000_0.0.mrc", later, 1.0) is not None


def test_a_movie_came_when_first_seen_not_when_admitted_after_its_wait():
    """A series that nothing lists is written while movies come to it or to the series written
    in turns with it. A movie's arrival was its state row's stamp, made when it was admitted:
    a first tilt admitted when its wait ended made PACEtomo's first target look written
    before the second, which completed it after its second round (assembled twice)."""
    from types import SimpleNamespace

    from daemon.series.resolution import SeriesConfig
    from daemon.series.resolver import TiltSeriesResolver

    resolver = TiltSeriesResolver(SeriesConfig(), mode="auto")
    resolver._first_seen = {"/w/TS_01_000_0.0.mrc": 100.0}  # seen, then waited
    resolver._rows = {"/w/TS_01_000_0.0.mrc": SimpleNamespace(first_seen=105.5),  # admitted
                      "/w/TS_01_001_3.0.mrc": SimpleNamespace(first_seen=105.5)}
    by_name = {"TS_01_000_0.0.mrc": "/w/TS_01_000_0.0.mrc",
               "TS_01_001_3.0.mrc": "/w/TS_01_001_3.0.mrc"}
    assert resolver._came_at("TS_01_000_0.0.mrc", by_name) == 100.0
    assert resolver._came_at("TS_01_001_3.0.mrc", by_name) == 105.5  # after a restart: the row
    assert resolver._came_at("TS_09_000_0.0.mrc", by_name) is None
