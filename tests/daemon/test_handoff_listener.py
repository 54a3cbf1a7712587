"""The hand-off listener driven directly, without a daemon: restarts, moved and redone movies,
records another writer (``correct``) put in the output folder, and the Warp layout's names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import starfile

from daemon.events import MovieEvent, MovieKey, ServiceInfo
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics, movie_motion
from daemon.handoff.warp import warp_layout, warp_layout_in_place, warp_name


def _motion(out, movie, stem):
    """A movie ``movie`` whose outputs in ``out`` have the stem ``stem``."""
    for suffix in ("", "_DW", "_EVN", "_ODD"):
        (out / f"{stem}{suffix}.mrc").write_bytes(b"sum" + suffix.encode())
    record = {"movie": str(movie), "global_shifts_px": [[0.0, 0.0], [1.0, 0.0]],
              "pixel_size_A": 1.0, "voltage_kV": 300.0, "shape": [8, 8],
              "outputs": {"sum": f"{stem}.mrc", "dw": f"{stem}_DW.mrc",
                          "even": f"{stem}_EVN.mrc", "odd": f"{stem}_ODD.mrc"}}
    return movie_motion(record, out / f"{stem}.motion.json")


def test_a_layout_left_under_the_output_stem_is_not_in_place(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    motion = _motion(out, tmp_path / "w" / "TS_01_000_0.0.mrc", "TS_01_000_0.0_mrc")
    warp_layout(motion)
    assert warp_layout_in_place(motion)
    # an earlier release's layout of it by its output stem, beside the one by its name
    os.link(out / "TS_01_000_0.0_mrc_DW.mrc", out / "average" / "TS_01_000_0.0_mrc.mrc")
    (out / "TS_01_000_0.0_mrc.xml").write_text("<Movie />")
    assert not warp_layout_in_place(motion)  # so a restart's catch-up makes it again ...
    warp_layout(motion)
    assert warp_layout_in_place(motion)  # ... which removes the stem-named one
    assert not (out / "TS_01_000_0.0_mrc.xml").exists()


def test_a_warp_layout_made_again_leaves_no_hidden_names_of_its_images(tmp_path):
    """At a restart that adopts a movie's outputs the layout is made again: the hidden
    temporary link of each image stayed (``rename`` of two names of one file does nothing), a
    third name of the sum and halves per restart, whose space a redo could not free."""
    out = tmp_path / "out"
    out.mkdir()
    motion = _motion(out, tmp_path / "w" / "m.mrc", "m")
    for _ in range(3):
        warp_layout(motion)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["average/even/m.mrc", "average/m.mrc", "average/odd/m.mrc", "m.mrc",
                     "m.xml", "m_DW.mrc", "m_EVN.mrc", "m_ODD.mrc"]
    assert (out / "m_DW.mrc").stat().st_nlink == 2


def test_a_warp_name_too_long_in_bytes_though_short_in_characters_falls_back_to_the_stem(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    motion = _motion(out, tmp_path / "w" / ("é" * 130 + ".tif"), "short_stem")
    assert warp_name(motion) == "short_stem"
    made = warp_layout(motion)
    assert out / "average" / "short_stem.mrc" in made


@pytest.mark.parametrize("length", [229, 230, 242, 251])
def test_a_warp_name_whose_temporaries_would_not_fit_a_file_name_falls_back_to_the_stem(
        tmp_path, length):
    """Names of 242-251 bytes fitted ``<name>.mrc`` but not the writers' temporaries
    (``.<name>.mrc.tmp-<pid>``) or the ``<name>.motion.json`` looked for: no layout (``File
    name too long``). A name longer than an output stem may be takes the stem, as the
    outputs do."""
    out = tmp_path / "out"
    out.mkdir()
    motion = _motion(out, tmp_path / "w" / ("S" * length + ".tif"), "short_stem")
    made = warp_layout(motion)
    name = "S" * length if length <= 229 else "short_stem"
    assert warp_name(motion) == name
    assert out / "average" / f"{name}.mrc" in made and (out / f"{name}.xml").exists()


def test_a_layout_an_earlier_release_made_by_a_name_now_too_long_is_removed(tmp_path):
    """A release before took names of 230-241 bytes whole: its ``<name>.xml`` and
    ``average/<name>.mrc`` stayed beside the new layout by the stem, and Warp saw the movie
    twice."""
    out = tmp_path / "out"
    out.mkdir()
    root = "S" * 235
    motion = _motion(out, tmp_path / "w" / f"{root}.tif", "short_stem")
    (out / "average").mkdir()
    os.link(out / "short_stem_DW.mrc", out / "average" / f"{root}.mrc")  # the old layout
    (out / f"{root}.xml").write_text("<Movie/>")
    warp_layout(motion)
    assert not (out / "average" / f"{root}.mrc").exists() and not (out / f"{root}.xml").exists()
    assert (out / "average" / "short_stem.mrc").exists() and (out / "short_stem.xml").exists()


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _record(out: Path, watch: Path, stem: str, *, total=1.0, outputs=None) -> Path:
    """A single-particle motion record ``out/<stem>.motion.json`` with its sums on disk."""
    for suffix in ("", "_DW"):
        (out / f"{stem}{suffix}.mrc").write_bytes(b"x")
    record = {"movie": str(watch / f"{stem}.tif"), "global_shifts_px": [[0.0, 0.0], [total, 0.0]],
              "pixel_size_A": 1.0, "voltage_kV": 300.0, "shape": [8, 8],
              "dose": {"per_frame_e_A2": [1.0, 1.0]},
              "outputs": outputs if outputs is not None else {"sum": f"{stem}.mrc",
                                                               "dw": f"{stem}_DW.mrc"}}
    path = out / f"{stem}.motion.json"
    path.write_text(json.dumps(record))
    return path


def _ready(tmp_path, clock):
    watch, out, state = tmp_path / "w", tmp_path / "out", tmp_path / "state"
    for d in (watch, out, state):
        d.mkdir(exist_ok=True)
    listener = RelionListener(RelionOptics(), warp=False, clock=clock, logger=None)
    listener.on_ready(ServiceInfo(watch_dir=watch, out_dir=out, state_dir=state, gain=None,
                                  pid=1, discovery_mode="poll", discovery_reason="",
                                  recovered=0))
    return listener, watch, out


def _done(listener, watch, motion):
    movie = watch / (Path(motion).name[:-len(".motion.json")] + ".tif")
    listener.on_movie_done(MovieEvent(path=movie, key=MovieKey(str(movie), 1, 1, "f"),
                                      status="done", attempt=1, outputs={"motion": str(motion)}))


def _mics(out):
    star = out / "corrected_micrographs.star"
    if not star.exists():
        return []
    return sorted(starfile.read(star, always_dict=True)["micrographs"]["rlnMicrographName"])


def test_a_held_back_micrographs_star_is_written_at_the_first_heartbeat_ten_seconds_on(tmp_path):
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    clock.t = 10.0  # (the ready counts as a write)
    _done(listener, watch, _record(out, watch, "a"))
    assert _mics(out) == ["a_DW.mrc"]
    clock.t = 11.0
    _done(listener, watch, _record(out, watch, "b"))
    assert _mics(out) == ["a_DW.mrc"]  # held back: written less than 10 s ago
    clock.t = 15.0
    listener.on_heartbeat(None)
    assert _mics(out) == ["a_DW.mrc"]
    clock.t = 20.5
    listener.on_heartbeat(None)
    assert _mics(out) == ["a_DW.mrc", "b_DW.mrc"]


def test_a_foreign_record_corrected_again_is_listed_with_its_new_values(tmp_path):
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    foreign = _record(out, watch, "other", total=1.0)
    clock.t = 20.0
    _done(listener, watch, _record(out, watch, "a"))

    def other_total():
        rows = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
        return float(rows[rows["rlnMicrographName"] == "other_DW.mrc"]["rlnAccumMotionTotal"]
                     .iloc[0])

    before = other_total()
    _record(out, watch, "other", total=7.0)  # correct --out OUT ran again on it
    st = foreign.stat()
    os.utime(foreign, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    clock.t = 40.0
    _done(listener, watch, _record(out, watch, "b"))
    assert other_total() > before


def test_a_motion_star_an_earlier_release_of_correct_wrote_is_written_again_with_its_gain(
        tmp_path):
    """``correct --out OUT`` of a release before fe60fee wrote S.star with the first frame at
    zero and the gain it was given; the service lists the movie in its micrographs STAR, but
    wrote again only its own movies' STARs: one table of two conventions. Another writer's
    STAR without the stamp is written again from its record, naming the gain it named."""
    from daemon.handoff.relion import (MOTION_STAR_STAMP, motion_star_gain_name, movie_motion,
                                       write_motion_star)

    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    foreign = _record(out, watch, "other")
    record = json.loads(foreign.read_text())
    foreign.write_text(json.dumps({**record, "global_shifts_px": [[-2.0, 0.0], [2.0, 0.0]]}))
    star = write_motion_star(movie_motion(json.loads(foreign.read_text()), foreign),
                             gain_name="their_gain.mrc")
    now = star.read_text()
    old = now.split("\n", 2)[2].replace("1\t2.000000\t-0.000000\n2\t-2.000000",
                                          "1\t0.000000\t-0.000000\n2\t-4.000000")
    star.write_text(old)  # as the release before wrote it
    clock.t = 20.0
    _done(listener, watch, _record(out, watch, "a"))  # the micrographs STAR lists "other"
    assert "other_DW.mrc" in _mics(out) and star.read_text() == old
    listener.on_heartbeat(None)
    assert _unstamped(star.read_bytes()) == _unstamped(now.encode())
    assert now.startswith(MOTION_STAR_STAMP)
    assert motion_star_gain_name(star) == "their_gain.mrc"


def _unstamped(text: bytes) -> bytes:
    """A STAR file's bytes without starfile's "Created ... at HH:MM:SS" line (a file written
    again in the next second differs there alone)."""
    return b"".join(line for line in text.splitlines(keepends=True)
                    if not line.startswith(b"# Created by the starfile"))


def test_a_foreign_record_without_sums_is_not_listed(tmp_path):
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    _record(out, watch, "nosums", outputs={"even": "nosums_EVN.mrc"})
    clock.t = 20.0
    _done(listener, watch, _record(out, watch, "a"))
    assert _mics(out) == ["a_DW.mrc"]


def test_removing_a_stem_named_layout_leaves_another_movies_layout_of_that_name(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # s_mrc.tif: outputs s_mrc_tif* (s_mrc was taken), Warp name s_mrc
    other = _motion(out, tmp_path / "w" / "s_mrc.tif", "s_mrc_tif")
    warp_layout(other)
    # s.mrc: outputs s_mrc* (s was taken), Warp name s; its stem is the other's Warp name
    mine = _motion(out, tmp_path / "w" / "s.mrc", "s_mrc")
    warp_layout(mine)
    assert os.path.samefile(out / "average" / "s_mrc.mrc", out / "s_mrc_tif_DW.mrc")
    assert os.path.samefile(out / "average" / "odd" / "s_mrc.mrc", out / "s_mrc_tif_ODD.mrc")
    assert (out / "s_mrc.xml").exists()


def _ledger(tmp_path, rows):
    """The state database ``tmp_path/state`` with ``rows``: (path, fingerprint, kind, motion,
    at): kind "done" (adopted) or "quarantined"."""
    from daemon.state.ledger import DB_NAME, Ledger
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    t = {"now": 0.0}
    with Ledger(state / DB_NAME, clock=lambda: t["now"]) as ledger:
        for path, fp, kind, motion, at in rows:
            t["now"] = at
            key = MovieKey(str(path), 1, 1, fp)
            if kind == "done":
                ledger.adopt(key, outputs={"motion": str(motion)}, summary={}, timings={})
            else:
                ledger.add(key, status="quarantined", error="not an MRC file")


def test_a_restart_lists_a_movie_by_its_newest_done_row(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir(), out.mkdir()
    old = _record(out, watch, "old_stem")
    new = _record(out, watch, "new_stem")
    movie = watch / "m.tif"
    for p in (old, new):  # both records name the one movie m.tif
        r = json.loads(p.read_text())
        r["movie"] = str(movie)
        p.write_text(json.dumps(r))
    _ledger(tmp_path, [(movie, "params1", "done", old, 100.0),
                       (movie, "params2", "done", new, 200.0)])
    listener, _, _ = _ready(tmp_path, _Clock())
    assert _mics(out) == ["new_stem_DW.mrc"]


def test_a_quarantined_movies_old_record_is_not_listed_after_a_restart(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir(), out.mkdir()
    good = _record(out, watch, "good")
    _record(out, watch, "bad")  # from before the movie was replaced by a broken file
    _ledger(tmp_path, [(watch / "good.tif", "f", "done", good, 100.0),
                       (watch / "bad.tif", "f", "quarantined", None, 200.0)])
    listener, _, _ = _ready(tmp_path, _Clock())
    assert _mics(out) == ["good_DW.mrc"]


def test_a_failed_attempt_to_redo_a_movie_keeps_its_row(tmp_path):
    from daemon.events import MovieEvent as ME
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    clock.t = 20.0
    _done(listener, watch, _record(out, watch, "a"))
    clock.t = 40.0
    movie = watch / "a.tif"
    listener.on_movie_failed(ME(path=movie, key=MovieKey(str(movie), 1, 1, "f"),
                                status="failed", attempt=2, error="disk full"))
    clock.t = 60.0
    _done(listener, watch, _record(out, watch, "b"))
    assert _mics(out) == ["a_DW.mrc", "b_DW.mrc"]


def test_a_moved_tilt_corrected_again_as_another_series_tilt_is_listed_in_that_series(tmp_path):
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    motion = _record(out, watch, "a")

    def as_tilt_of(series):
        r = json.loads(motion.read_text())
        r["tilt"] = {"series": series, "tilt_deg": 0.0, "acquisition_index": 0, "movie": "a.tif",
                     "dose_e_A2": 1.0, "pre_exposure_e_A2": 0.0}
        motion.write_text(json.dumps(r))
        st = motion.stat()
        os.utime(motion, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))

    as_tilt_of("TS_02")
    movie = watch / "a.tif"
    key = MovieKey(str(movie), 1, 1, "f")
    listener.on_movie_moved(MovieEvent(
        path=movie, key=key, status="done", attempt=0, outputs={"motion": str(motion)},
        metadata={"extra_record": {"tilt": {"series": "TS_02"}},
                  "moved_from": [str(watch / "old.tif")]}))
    assert (out / "TS_02" / "TS_02.star").exists()
    as_tilt_of("TS_03")  # redone: its mdoc now says TS_03
    listener.on_movie_done(MovieEvent(path=movie, key=key, status="done", attempt=1,
                                      outputs={"motion": str(motion)}))
    assert (out / "TS_03" / "TS_03.star").exists()
    assert not (out / "TS_02" / "TS_02.star").exists()


def test_a_restart_rewrites_the_motion_star_of_a_movie_moved_before_it_was_heard_of(tmp_path):
    from daemon.state.ledger import DB_NAME, Ledger
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    motion = _record(out, watch, "a")  # names w/a.tif
    _done(listener, watch, motion)
    assert "a.tif" in (out / "a.star").read_text()
    new = watch / "sub" / "renamed.tif"
    with Ledger(tmp_path / "state" / DB_NAME) as ledger:
        ledger.adopt(MovieKey(str(new), 1, 1, "f"), outputs={"motion": str(motion)},
                     summary={}, timings={}, metadata={"moved_from": [str(watch / "a.tif")]})
    _ready(tmp_path, _Clock())  # the service restarted: the move is in its state database
    text = (out / "a.star").read_text()
    assert "renamed.tif" in text and "/w/a.tif" not in text


def _restarted_after_an_upgrade(tmp_path, watch, motion, star, old: str):
    """``star`` holding ``old`` (an earlier release's text), written after its record as that
    release did, the movie's row in the ledger; the listener of the upgraded service,
    started again."""
    from daemon.state.ledger import DB_NAME, Ledger

    star.write_text(old)
    later = motion.stat().st_mtime_ns + 5_000_000_000
    os.utime(star, ns=(later, later))
    with Ledger(tmp_path / "state" / DB_NAME) as ledger:
        ledger.adopt(MovieKey(str(watch / "a.tif"), 1, 1, "f"), outputs={"motion": str(motion)},
                     summary={}, timings={}, metadata={})
    restarted, _, _ = _ready(tmp_path, _Clock())
    return restarted


def test_a_restart_after_an_upgrade_writes_again_the_motion_stars_of_the_convention_before(
        tmp_path):
    """A release before fe60fee wrote each ``S.star`` with the first frame at zero, and no
    stamp; after an upgrade those files stayed (newer than their records), so one session's
    ``corrected_micrographs.star`` listed STARs of both conventions for polishing. A restart
    writes again every motion STAR that lacks this release's stamp, from its record: from its
    heartbeats on, so many at a time (READY waited for 20,000 of them, about 2 minutes)."""
    from daemon.handoff.relion import MOTION_STAR_STAMP, movie_motion, write_motion_star

    listener, watch, out = _ready(tmp_path, _Clock())
    motion = _record(out, watch, "a")
    record = json.loads(motion.read_text())
    motion.write_text(json.dumps({**record, "global_shifts_px": [[-2.0, 0.0], [2.0, 0.0]]}))
    _done(listener, watch, motion)
    star = out / "a.star"
    made_now = star.read_bytes()
    assert made_now.decode().splitlines()[0] == MOTION_STAR_STAMP
    assert "1\t2.000000\t-0.000000\n2\t-2.000000\t-0.000000" in made_now.decode()
    old = made_now.decode().split("\n", 2)[2].replace(  # the release before: frame 1 at 0
        "1\t2.000000\t-0.000000\n2\t-2.000000", "1\t0.000000\t-0.000000\n2\t-4.000000")
    restarted = _restarted_after_an_upgrade(tmp_path, watch, motion, star, old)
    assert star.read_text() == old  # not before READY
    restarted.on_heartbeat(None)
    assert _unstamped(star.read_bytes()) == _unstamped(made_now)
    record = json.loads(motion.read_text())
    again = tmp_path / "again"
    again.mkdir()
    (again / "a.motion.json").write_text(json.dumps(record))
    assert _unstamped(write_motion_star(movie_motion(record, again / "a.motion.json"))
                      .read_bytes()) == _unstamped(made_now)  # what this release writes from it


@pytest.mark.parametrize("thrown", [1, 0])
def test_a_restart_writes_again_the_motion_stars_whose_thrown_frames_were_not_observed(
        tmp_path, thrown):
    """Yesterday's release wrote thrown frames as -9999, which RELION reads as 0, several
    pixels off the first summed frame: its STARs of movies with thrown frames are written
    again from their records; those of movies with none are the same file and stay."""
    from daemon.handoff.relion import MOTION_STAR_STAMP

    listener, watch, out = _ready(tmp_path, _Clock())
    motion = _record(out, watch, "a")
    record = json.loads(motion.read_text())
    shifts = [[-2.0, 0.0], [2.0, 0.0]]
    motion.write_text(json.dumps({**record, "global_shifts_px": shifts,
                                  "frames_in_movie": 2 + thrown, "throw_frames": thrown}))
    _done(listener, watch, motion)
    star = out / "a.star"
    made_now = star.read_text()
    lines = made_now.splitlines()
    assert lines[0] == MOTION_STAR_STAMP
    before = "# motionwatch motion STAR 2: shifts bring each frame onto the micrograph"
    old = "\n".join([before] + lines[1:]) + "\n"
    if thrown:
        assert "1\t2.000000\t-0.000000\n2\t2.000000\t-0.000000" in made_now  # held
        old = old.replace("1\t2.000000\t-0.000000\n", "1\t-9999.000000\t-9999.000000\n")
    restarted = _restarted_after_an_upgrade(tmp_path, watch, motion, star, old)
    restarted.on_heartbeat(None)
    assert _unstamped(star.read_bytes()) == _unstamped((made_now if thrown else old).encode())


def test_a_series_star_that_moves_once_its_mdoc_is_known_leaves_no_copy_behind(tmp_path):
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    frames = out / "frames"
    frames.mkdir()
    (watch / "TS_01.mdoc").write_text("PixelSpacing = 1.0\n")

    def tilt(stem, index, mdoc):
        motion = _record(frames, watch / "frames", stem)
        r = json.loads(motion.read_text())
        r["tilt"] = {"series": "TS_01", "tilt_deg": 3.0 * index, "acquisition_index": index,
                     "movie": f"{stem}.tif", "dose_e_A2": 1.0, "mdoc": mdoc,
                     "pre_exposure_e_A2": float(index)}
        motion.write_text(json.dumps(r))
        return motion

    _done(listener, watch / "frames", tilt("t0", 0, None))
    first = frames / "TS_01" / "TS_01.star"
    assert first.exists()
    for motion in (tilt("t0", 0, str(watch / "TS_01.mdoc")),
                   tilt("t1", 1, str(watch / "TS_01.mdoc"))):
        st = motion.stat()
        os.utime(motion, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        _done(listener, watch / "frames", motion)
    assert (out / "TS_01" / "TS_01.star").exists()
    assert not first.exists()


def test_a_series_global_row_has_the_pixel_size_of_the_tilts_its_star_lists(tmp_path):
    """Its first tilt recorded at camera binning 2 (8 x 8 sums of 2.2 Å) is left out of the
    series' stacks and STAR, which list the three of 16 x 16 at 1.1 Å; the global row of
    ``corrected_tilt_series.star`` took the pixel size of the series' first movie by name, the
    left-out tilt (RELION 5 reconstructs at the global row's pixel size)."""
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    clock.t = 10.0
    for index, (pixel_A, side) in enumerate(((2.2, 8), (1.1, 16), (1.1, 16), (1.1, 16))):
        motion = _record(out, watch, f"TS_01_{index:03d}")
        r = json.loads(motion.read_text())
        r.update(pixel_size_A=pixel_A, shape=[side, side],
                 tilt={"series": "TS_01", "tilt_deg": 3.0 * index, "acquisition_index": index,
                       "movie": f"TS_01_{index:03d}.tif", "dose_e_A2": 1.0,
                       "pre_exposure_e_A2": float(index)})
        motion.write_text(json.dumps(r))
        _done(listener, watch, motion)
    clock.t = 30.0
    listener.on_heartbeat(None)
    listed = starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]
    assert len(listed) == 3 and "TS_01_000_DW.mrc" not in " ".join(listed["rlnMicrographName"])
    (row,) = starfile.read(out / "corrected_tilt_series.star",
                           always_dict=True)["global"].to_dict("records")
    assert row["rlnTomoTiltSeriesPixelSize"] == 1.1
    assert row["rlnMicrographOriginalPixelSize"] == 1.1


def test_a_movie_redone_as_a_tilt_leaves_the_micrographs_star(tmp_path):
    """Tomography 5 writes its series mdoc at the series' end: the tilts are corrected first
    as single movies, then again as tilts. The micrographs' STAR was not written again (a tilt
    does not make it due), and with no single movie left it would not have been: it listed
    the tilts, with motion of their first pass, for good."""
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    clock.t = 10.0
    for stem in ("a", "b"):
        _done(listener, watch, _record(out, watch, stem))
    clock.t = 30.0
    listener.on_heartbeat(None)
    assert _mics(out) == ["a_DW.mrc", "b_DW.mrc"]
    for index, stem in enumerate(("a", "b")):  # redone as tilts once the mdoc came
        motion = out / f"{stem}.motion.json"
        r = json.loads(motion.read_text())
        r["tilt"] = {"series": "Position_1", "tilt_deg": 3.0 * index, "acquisition_index": index,
                     "movie": f"{stem}.tif", "dose_e_A2": 1.0, "pre_exposure_e_A2": float(index)}
        motion.write_text(json.dumps(r))
        st = motion.stat()
        os.utime(motion, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        clock.t += 20.0
        _done(listener, watch, motion)
        assert _mics(out) == (["b_DW.mrc"] if stem == "a" else [])
    assert not (out / "corrected_micrographs.star").exists()
    assert (out / "Position_1" / "Position_1.star").exists()


def test_a_complete_series_star_lists_the_movies_of_its_stacks_not_a_discarded_retake(tmp_path):
    """The last tilt taken again: the discarded movie keeps its tilt record until it is redone
    on its own (a metadata wait later), and the series completes meanwhile. Its STAR listed
    the discarded movie too (12 rows for a stack of 11, both with the last index), for good
    when the daemon stopped within that wait; now, complete, it lists the stacks' movies."""
    from daemon.events import SeriesEvent

    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    for index, stem in ((0, "t0"), (1, "t1"), (1, "t1_retaken")):
        motion = _record(out, watch, stem)
        r = json.loads(motion.read_text())
        r["tilt"] = {"series": "TS_01", "tilt_deg": 3.0 * index, "acquisition_index": index,
                     "movie": f"{stem}.tif", "dose_e_A2": 1.0, "pre_exposure_e_A2": float(index)}
        motion.write_text(json.dumps(r))
        _done(listener, watch, motion)

    def listed():
        rows = starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]
        return sorted(Path(p).name for p in rows["rlnMicrographMovieName"])

    assert listed() == ["t0.tif", "t1.tif", "t1_retaken.tif"]
    listener.on_series_event(SeriesEvent("completed", "TS_01", 2, 2, 0,
                                         tilts=("t0.tif", "t1_retaken.tif")))
    assert listed() == ["t0.tif", "t1_retaken.tif"]
    listener.on_series_event(SeriesEvent("reopened", "TS_01", 3, 2, 0))
    assert listed() == ["t0.tif", "t1.tif", "t1_retaken.tif"]


def test_a_movie_whose_record_was_out_of_reach_gets_its_files_once_the_folder_is_back(tmp_path):
    """The output folder moved away as a movie finished and came back: the movie had no
    S.star (nor a row in the micrographs' STAR) until the daemon's next start."""
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    motion = _record(out, watch, "a")
    away = tmp_path / "out.away"
    out.rename(away)  # the operator moves the session's outputs ...
    _done(listener, watch, motion)
    listener.on_heartbeat(None)
    assert not (away / "a.star").exists()
    away.rename(out)  # ... and back
    clock.t = 20.0
    listener.on_heartbeat(None)
    assert (out / "a.star").is_file() and _mics(out) == ["a_DW.mrc"]


def test_a_movie_done_looks_at_its_own_record_not_at_every_record_of_the_night(tmp_path,
                                                                              monkeypatch):
    """Each movie done looked at (stat) every motion record of the folder, twice: 1,640 a
    movie late in a night, 43 ms on a local disk, seconds of the main loop on a share. The
    records are looked at again once a minute: one deleted by hand leaves the STAR then."""
    clock = _Clock()
    listener, watch, out = _ready(tmp_path, clock)
    for k in range(60):
        _done(listener, watch, _record(out, watch, f"m{k:02d}"))
    clock.t = 30.0  # the micrographs' STAR due again, the records looked at 30 s ago
    looked_at = []
    real_stat = Path.stat

    def counting_stat(self, *args, **kwargs):
        if self.name.endswith(".motion.json"):
            looked_at.append(self.name)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", counting_stat)
    _done(listener, watch, _record(out, watch, "last"))
    assert len(_mics(out)) == 61
    assert len(looked_at) <= 3, looked_at
    (out / "m07.motion.json").unlink()
    clock.t = 100.0
    _done(listener, watch, _record(out, watch, "after"))
    assert "m07_DW.mrc" not in _mics(out) and len(_mics(out)) == 61
