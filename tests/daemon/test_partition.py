"""The watched tree resolved by top-level folder gives what one resolution of the whole tree
gives, scan after scan (waits ending, movies arriving, an mdoc growing, a series mdoc in the
watch folder itself), and a folder whose files did not change is not resolved again."""

from __future__ import annotations

import dataclasses
import random

import pytest
from mdoc_data import DATA

from daemon.series.mdoc import parse_mdoc_text
from daemon.series.partition import PartitionedResolution
from daemon.series.resolution import (MdocObservation, MovieObservation, SeriesConfig, resolve)

CONFIG = SeriesConfig(dose_per_tilt_e_A2=3.0, metadata_wait_s=30.0, missing_tilt_wait_s=60.0,
                      idle_timeout_s=600.0)
SECTIONS = 11  # tilts of test_1.mdoc


def _session(folder: str, *, first_seen_s: float, n_listed: int = SECTIONS, mdoc_at: float = 0.0):
    """A session folder: ``grid1`` with a series mdoc (a real SerialEM file) listing
    ``n_listed`` tilts whose frames are in ``nt29812_98_frames/``; ``grid2`` with tilts named
    by pattern only (no mdoc, one index missing); a single-particle movie."""
    text = (DATA / "test_1.mdoc").read_text()
    md = parse_mdoc_text(text, path=f"/w/{folder}/grid1/test_1.mdoc")
    movies = [MovieObservation(f"{folder}/grid1/nt29812_98_frames/{s.sub_frame_name}",
                               first_seen_s, mtime_ns=i)
              for i, s in enumerate(md.sections[:n_listed])]
    movies += [MovieObservation(f"{folder}/grid2/Pos1_{i:03d}_{a:.1f}.tif", first_seen_s + i,
                                mtime_ns=100 + i)
               for i, a in ((0, 0.0), (1, 3.0), (3, 6.0))]
    movies.append(MovieObservation(f"{folder}/square_17.tif", first_seen_s, mtime_ns=1000))
    # named like the listed tilts, not listed: an exposure SerialEM discarded (a retake's first)
    first = md.sections[0].sub_frame_name
    movies.append(MovieObservation(f"{folder}/grid1/nt29812_98_frames/{first[:-13]}_001_3.0.mrc",
                                   first_seen_s, mtime_ns=2000))
    return movies, [MdocObservation(md, mdoc_at, f"{folder}/grid1")]


def _same(a, b) -> None:
    """Every field of the two resolutions alike (warnings in any order)."""
    for f in dataclasses.fields(a):
        if f.name == "warnings":
            assert sorted(a.warnings) == sorted(b.warnings)
        else:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


def _tree(t0: float):
    movies, mdocs = [], []
    for k in range(6):  # old sessions and the one being acquired (the last)
        m, d = _session(f"session{k}", first_seen_s=t0 + 100.0 * k)
        movies += m
        mdocs += d
    movies.append(MovieObservation("loose_0001.tif", t0))  # a movie in the watch folder
    return movies, mdocs


@pytest.mark.parametrize("now_s", [0.0, 10.0, 35.0, 120.0, 505.0, 530.0, 565.0, 2000.0])
def test_the_parts_give_the_whole_trees_resolution_at_every_stage_of_its_waits(now_s):
    movies, mdocs = _tree(0.0)
    random.Random(int(now_s)).shuffle(movies)
    parts = PartitionedResolution().resolve(movies, mdocs, {}, config=CONFIG, now_s=now_s)
    whole = resolve(movies, mdocs, {}, config=CONFIG, now_s=now_s)
    _same(parts, whole)
    assert whole.assignments  # the cases are not empty
    if now_s >= 565.0:  # every wait over: the sessions' tilts are all resolved
        assert len(whole.assignments) == 6 * (SECTIONS + 3)
        assert len(whole.discarded_deg) == 6  # each session's discarded exposure, at 3.0°


def test_a_scan_resolves_again_only_the_folders_that_changed_or_whose_wait_ended():
    movies, mdocs = _tree(0.0)
    parts = PartitionedResolution()
    parts.resolve(movies, mdocs, {}, config=CONFIG, now_s=2000.0)
    first = parts.resolved_parts
    assert first == 7  # six sessions and the watch folder's own files

    parts.resolve(movies, mdocs, {}, config=CONFIG, now_s=2001.0)
    assert parts.resolved_parts == first  # nothing changed, no wait ends: none again

    # the session being acquired gets a tilt (and a movie still being written grows)
    new = MovieObservation("session5/grid2/Pos1_002_-3.0.tif", 2002.0, mtime_ns=500)
    grown = [MovieObservation(m.name, m.first_seen_s, m.mtime_ns + 1)
             if m.name == "session5/square_17.tif" else m for m in movies]
    now = 2003.0
    res = parts.resolve(grown + [new], mdocs, {}, config=CONFIG, now_s=now)
    assert parts.resolved_parts == first + 1
    _same(res, resolve(grown + [new], mdocs, {}, config=CONFIG, now_s=now))
    assert new.name in res.pending  # named like a tilt: it waits for metadata

    for now in (2030.0, 2033.0):  # its metadata wait ends at 2032 s: resolved again then
        res = parts.resolve(grown + [new], mdocs, {}, config=CONFIG, now_s=now)
        _same(res, resolve(grown + [new], mdocs, {}, config=CONFIG, now_s=now))
    assert parts.resolved_parts == first + 2
    assert res.assignments[new.name].pre_exposure_e_A2 == pytest.approx(2 * 3.0)


def test_an_mdoc_read_again_and_a_series_mdoc_in_the_watch_folder_are_seen():
    movies, mdocs = _tree(0.0)
    parts = PartitionedResolution()
    parts.resolve(movies, mdocs, {}, config=CONFIG, now_s=2000.0)
    # the mdoc of session 5 read again (a new parsed object, the same text): resolved again
    again = [MdocObservation(parse_mdoc_text((DATA / "test_1.mdoc").read_text(),
                                             path=str(ob.mdoc.path)), 1990.0, ob.folder)
             if ob.folder.startswith("session5/") else ob for ob in mdocs]
    before = parts.resolved_parts
    res = parts.resolve(movies, again, {}, config=CONFIG, now_s=2000.5)
    assert parts.resolved_parts == before + 1
    _same(res, resolve(movies, again, {}, config=CONFIG, now_s=2000.5))

    # a series mdoc in the watch folder itself may list movies in any folder: one part
    root_text = (DATA / "test_1.mdoc").read_text()
    root = MdocObservation(parse_mdoc_text(root_text, path="/w/test_1.mdoc"), 0.0, "")
    res = parts.resolve(movies, again + [root], {}, config=CONFIG, now_s=2001.0)
    _same(res, resolve(movies, again + [root], {}, config=CONFIG, now_s=2001.0))


def test_a_clock_stepped_back_or_another_configuration_resolves_the_parts_again():
    """The daemon's clock is the wall clock: stepped back before a wait's end, the tilts that
    had stopped waiting wait again, as the whole tree's resolution says (they kept the later
    answer); a part resolved under one configuration is not kept under another."""
    movies, mdocs = _tree(0.0)
    parts = PartitionedResolution()
    for now in (35.0, 25.0):  # session 0's tilts stop waiting for metadata at 30 s
        res = parts.resolve(movies, mdocs, {}, config=CONFIG, now_s=now)
        _same(res, resolve(movies, mdocs, {}, config=CONFIG, now_s=now))
    assert "session0/grid2/Pos1_000_0.0.tif" in res.pending
    longer = SeriesConfig(dose_per_tilt_e_A2=4.0, metadata_wait_s=30.0,
                          missing_tilt_wait_s=60.0, idle_timeout_s=600.0)
    res = parts.resolve(movies, mdocs, {}, config=longer, now_s=2000.0)
    _same(res, resolve(movies, mdocs, {}, config=longer, now_s=2000.0))
    assert res.assignments["session5/grid2/Pos1_000_0.0.tif"].dose_e_A2 == 4.0


def test_an_empty_tree_resolves_to_nothing():
    """A watch folder with nothing in it yet: the union of no parts (an IndexError, once)."""
    empty = PartitionedResolution().resolve([], [], {}, config=CONFIG, now_s=0.0)
    _same(empty, resolve([], [], {}, config=CONFIG, now_s=0.0))
