"""Tilts that come with their frame mdocs alone: SerialEM saves the frames to a share and
the series mdoc beside its stack elsewhere. Under ``--tilt-series auto`` (the default) each
tilt was corrected as a single movie with no dose before it, whatever its frame mdoc's
``PriorRecordDose`` said (134 e/Å² at the end of a real series), with not a word."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from daemon_process import events_in

from correction.mdoc_text import format_mdoc
from daemon.commands.cli import main
from daemon.simulation.tilt_series import series_mdoc_text, simulate_tilt_series

FAST = ["--settle-time", "0.2", "--scan-interval", "0.1", "--mdoc-quiet", "0.5",
        "--metadata-wait", "1", "--exit-when-idle", "2", "--no-publish"]


def _frame_mdoc_tilts(tmp_path, n_tilts=3):
    """Tilts rendered in ``staging`` with the truth; each is copied in with its frame mdoc."""
    staging = tmp_path / "staging"
    staging.mkdir()
    tilts = simulate_tilt_series(staging, rng=np.random.default_rng(8), n_tilts=n_tilts,
                                 shape_yx=(64, 64), n_frames=4, pixel_size_A=1.1,
                                 frame_interval_s=0, tilt_interval_s=0, sleep=lambda s: None)
    return sorted(tilts, key=lambda t: t.acquisition_index)


def _copy_in(watch, tilt):
    shutil.copy2(tilt.movie.path, watch / tilt.movie.path.name)
    text = format_mdoc([("PixelSpacing", 1.1)], [[
        ("TiltAngle", tilt.tilt_deg), ("ExposureDose", tilt.dose_e_A2),
        ("PixelSpacing", 1.1), ("PriorRecordDose", tilt.pre_exposure_e_A2),
        ("SubFramePath", f"X:\\frames\\{tilt.movie.path.name}"), ("NumSubFrames", 4),
        ("DateTime", tilt.acquired_at.strftime("%d-%b-%y  %H:%M:%S"))]], section_key="FrameSet")
    (watch / f"{tilt.movie.path.name}.mdoc").write_text(text)


def _each_a_tilt_with_its_pre_exposure(out, tilts) -> None:
    """Each tilt's motion record names its series, TS_01, and its pre-exposure (e/Å²)."""
    for tilt in tilts:
        record = json.loads((out / f"{tilt.movie.path.stem}.motion.json").read_text())
        assert record["tilt"]["series"] == "TS_01", tilt.movie.path
        assert record["dose"]["pre_exposure_e_A2"] == pytest.approx(tilt.pre_exposure_e_A2,
                                                                    abs=1e-3), tilt.movie.path


def test_tilts_with_frame_mdocs_alone_get_the_dose_before_them(tmp_path, capsys):
    """The first tilt (no dose before it) is corrected alone; the next ones' frame mdocs say
    a dose came before them (``PriorRecordDose`` > 0): the resolver turns on, each tilt gets
    its pre-exposure, and the first is corrected again as a tilt of its series."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    tilts = _frame_mdoc_tilts(tmp_path)
    _copy_in(watch, tilts[0])  # the first tilt: no dose before it, and corrected alone
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    for tilt in tilts[1:]:
        _copy_in(watch, tilt)
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    said = events_in(capsys.readouterr().out)
    assert [e for e in said if e["event"] == "tilt_series_on"]
    # said as what it is: no series mdoc came ("series_mdoc_after_tilts" said one had)
    assert not [e for e in said if e["event"] == "series_mdoc_after_tilts"]
    redone = [e for e in said if e["event"] == "movie_redo_metadata_changed"]
    assert [e["movie"] for e in redone] == [str(watch / tilts[0].movie.path.name)]
    assert "a single movie before it was known as a tilt of TS_01" in redone[0]["reason"]
    # said as what happened (not "its metadata changed after correction": nothing moved)
    assert redone[0]["note"] == "corrected alone before its series was known: redone as its tilt"
    _each_a_tilt_with_its_pre_exposure(out, tilts)
    assert (out / "TS_01" / "TS_01.tlt").read_text().split() == [
        f"{t.tilt_deg:.2f}" for t in sorted(tilts, key=lambda t: t.tilt_deg)]


def test_a_series_mdoc_copied_in_after_the_stacks_gives_them_its_tilt_axis(tmp_path, capsys):
    """Frames on a share, the series mdoc copied over after the series was assembled from its
    frame mdocs (as Murfey and facilities copy it, at the end): RELION's series STAR kept the
    tilt axis 0 (the tilt records name the frame mdocs, which give none) and the stacks were
    never assembled again. The series is assembled again with it; no tilt is corrected again
    (nothing that weights them changed)."""
    import starfile

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    tilts = _frame_mdoc_tilts(tmp_path)
    for tilt in tilts:
        _copy_in(watch, tilt)
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    star = out / "TS_01" / "TS_01.star"
    assert float(starfile.read(star, always_dict=True)["TS_01"][
        "rlnTomoNominalTiltAxisAngle"].iloc[0]) == 0.0
    (watch / "TS_01.mrc.mdoc").write_text(series_mdoc_text(
        "TS_01", tilts, pixel_size_A=1.1, shape_yx=(64, 64), n_frames=4))
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    said = events_in(capsys.readouterr().out)
    assert not [e for e in said if e["event"] in ("movie_done", "movie_redo_metadata_changed")]
    assert [e["event"] for e in said if e["event"].startswith("series_")].count(
        "series_completed") == 1
    table = starfile.read(star, always_dict=True)["TS_01"]
    assert set(table["rlnTomoNominalTiltAxisAngle"]) == {85.3}
    assert "Tilt axis angle = 85.3" in (out / "TS_01" / "TS_01.st.mdoc").read_text()


def test_single_particle_shots_with_a_dose_before_some_do_not_turn_tilt_series_on(tmp_path,
                                                                                  capsys):
    """Two shots on each position, named with the stage angle (``grid1_00002_0.00.mrc``):
    every second frame mdoc gives a dose before it. One such mdoc turned the tilt-series
    bookkeeping on, and the movies became one series with pre-exposures 0, 45, 90, 135 e/Å².
    Frame mdocs at one stage angle are not a tilt series: each is a single movie."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(2)
    from daemon.simulation.movies import write_movie_progressively

    names = [f"grid1_{i:05d}_0.00.mrc" for i in range(4)]
    for i, name in enumerate(names):
        frames = rng.poisson(1.0, (4, 64, 64)).astype(np.int16)
        write_movie_progressively(watch / name, frames, pixel_size_A=1.1, frame_interval_s=0)
        (watch / f"{name}.mdoc").write_text(format_mdoc([("PixelSpacing", 1.1)], [[
            ("TiltAngle", 0.0), ("ExposureDose", 45.0), ("PriorRecordDose", 45.0 * (i % 2)),
            ("SubFramePath", f"X:\\frames\\{name}"), ("NumSubFrames", 4),
            ("DateTime", f"07-Dec-26  10:0{i}:00")]], section_key="FrameSet"))
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    said = events_in(capsys.readouterr().out)
    assert not [e for e in said if e["event"] == "tilt_series_on"]
    # but it is said, once, that a dose before some of them was not counted (a dose series at
    # one angle had 0 without a word)
    unused = [e for e in said if e["event"] == "movie_prior_dose_unused"]
    assert len(unused) == 1 and "45 e/Å² fell on it before" in unused[0]["reason"]
    for name in names:
        record = json.loads((out / f"{name[:-4]}.motion.json").read_text())
        assert record["dose"]["pre_exposure_e_A2"] == 0.0 and "tilt" not in record


def test_a_first_tilt_with_its_frame_mdoc_alone_is_corrected_once_as_a_tilt(tmp_path, capsys):
    """Tilts coming one by one with their frame mdocs alone, the daemon running: the first
    (no dose before it, no other angle seen yet) was corrected at once as a single movie and
    a second time as a tilt when the next came. It waits for the next movie of its name (at
    most the metadata wait), then each tilt is corrected once, with its pre-exposure."""
    import threading

    import os

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    tilts = _frame_mdoc_tilts(tmp_path)
    _copy_in(watch, tilts[0])
    first = watch / tilts[0].movie.path.name
    old = first.stat().st_mtime - 300.0  # copied keeping a time of 5 minutes ago (cp -p)
    os.utime(first, (old, old))
    later = threading.Timer(2.0, lambda: [_copy_in(watch, t) for t in tilts[1:]])
    later.start()
    try:
        args = [a if a != "1" else "30" for a in FAST]  # a metadata wait of 30 s
        assert main(["watch", str(watch), "--out", str(out), *args]) == 0
    finally:
        later.join()
    said = events_in(capsys.readouterr().out)
    assert not [e for e in said if e["event"] == "movie_redo_metadata_changed"]
    done = [e["movie"] for e in said if e["event"] == "movie_done"]
    assert sorted(done) == sorted(str(watch / t.movie.path.name) for t in tilts)
    waited = [e for e in said if e["event"] == "movie_waiting"]
    assert [e["movie"] for e in waited] == [str(watch / tilts[0].movie.path.name)]
    assert "for the next movie named like it" in waited[0]["reason"]
    # complete once no tilt came for --mdoc-quiet (0.5 s): nothing lists its tilts, and it
    # waited for the series idle timeout (30 minutes) for its stacks
    (completed,) = [e for e in said if e["event"] == "series_completed"]
    assert completed["reason"] == ("every tilt corrected or quarantined; no new tilt for 0.5 s "
                                   "(no series mdoc lists its tilts)")
    _each_a_tilt_with_its_pre_exposure(out, tilts)


def test_a_single_movie_named_like_a_tilt_waits_at_most_the_metadata_wait(tmp_path, capsys):
    """A lone movie named like a tilt with its frame mdoc (a series aborted at its first tilt,
    or the last shot of a session) is corrected alone after the metadata wait, not held."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    tilts = _frame_mdoc_tilts(tmp_path, n_tilts=1)
    _copy_in(watch, tilts[0])
    assert main(["watch", str(watch), "--out", str(out), *FAST]) == 0
    said = events_in(capsys.readouterr().out)
    assert [e["movie"] for e in said if e["event"] == "movie_done"] == [
        str(watch / tilts[0].movie.path.name)]
    record = json.loads((out / f"{tilts[0].movie.path.stem}.motion.json").read_text())
    assert record["dose"]["pre_exposure_e_A2"] == 0.0
    assert record.get("tilt") is None
    # a restart finds it corrected: it does not wait again (it did, the whole wait, each time)
    args = [a if a != "1" else "30" for a in FAST]  # a wait longer than the run would last
    assert main(["watch", str(watch), "--out", str(out), *args]) == 0
    said = events_in(capsys.readouterr().out)
    assert not [e for e in said if e["event"] in ("movie_waiting", "movie_done")]
