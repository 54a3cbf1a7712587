"""One file is one movie, whatever its names: a folder linked into the watched tree a second
time, a hard link made later, a folder renamed while the daemon is stopped or running. Each
real file is corrected once, and a series' tilts keep the dose and pre-exposure of its mdoc
(real daemon runs on real files; corrections by the fake runner, which records the metadata it
was given)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest
from recording_log import RecordingLog
from service_run import more_heartbeats, running

from correction.params import CorrectionParams, DoseParams
from daemon.commands.cli import main as cli_main
from daemon.commands.status import collect_status
from daemon.engine.service import Service
from daemon.intake.discover import scan
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively
from daemon.simulation.tilt_series import simulate_tilt_series
from daemon.state.ledger import Ledger


def _config(watch: Path, out: Path, *, params: CorrectionParams | None = None,
            **fields) -> Config:
    out.mkdir(exist_ok=True)
    values = {"settle_time_s": 0.1, "scan_interval_s": 0.05, "heartbeat_s": 0.2,
              "exit_when_idle_s": 0.6, "polling": "on",
              "options": {"tilt_series": "auto", "mdoc_quiet": 0.3}, **fields}
    return Config(watch, out, out, params or CorrectionParams(dose=DoseParams()), **values)


def _run(config: Config, *, handoff: bool = False) -> RecordingLog:
    """One run of the daemon until idle: the fake runner, or with ``handoff`` real correction
    and the hand-off listener."""
    from daemon.handoff.listener import build_handoff_listener

    log = RecordingLog()
    kw = ({"listeners": [build_handoff_listener(config)]} if handoff
          else {"runner": "fake_runners:correct"})
    assert Service(config, resolver=resolver_from_config(config), logger=log, **kw).run() == 0
    return log


def _rows(out: Path) -> list:
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        return [r for r in ledger.rows() if r.key.size >= 0]


@contextlib.contextmanager
def _running(config, timeout_s: float = 60.0, make_service=None):
    """A daemon running in a thread on ``config`` (the fake runner, or ``make_service(log)``),
    stopped on leaving: yields its log and ``wait_for(condition)``, which polls until the
    condition holds or the time is up."""
    log = RecordingLog()
    service = (Service(config, runner="fake_runners:correct", logger=log)
               if make_service is None else make_service(log))
    with running(service, timeout_s=timeout_s) as wait_for:
        yield log, wait_for


def _rows_moved_to(out: Path, folder: Path, tilts) -> list:
    """The ledger's rows of ``tilts``, in their order, after checking that every row of the
    ledger names its movie in ``folder``."""
    rows = {r.key.path: r for r in _rows(out)}
    paths = [str(folder / t.movie.path.name) for t in tilts]
    assert sorted(rows) == sorted(paths)
    return [rows[p] for p in paths]


def _started(log: RecordingLog) -> list[str]:
    return [e["movie"] for e in log.named("movie_started")]


def _series(watch: Path, seed: int = 1) -> list:
    return simulate_tilt_series(watch, rng=np.random.default_rng(seed), n_tilts=3,
                                shape_yx=(32, 32), n_frames=4, frame_interval_s=0.0,
                                tilt_interval_s=0.0, lock=False)


def _tilt(row) -> dict:
    return row.metadata["extra_record"]["tilt"]


def _move_contents(src: Path, dst: Path) -> None:
    """``mkdir dst; mv src/* dst`` (``dst`` may be inside ``src``)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in list(src.iterdir()):
        if p != dst:
            os.rename(p, dst / p.name)


def _series_done(out: Path) -> dict[str, int]:
    """``motionwatch status``: series -> tilts done."""
    return {s["series"]: s["tilts_done"]
            for s in collect_status(out / "motionwatch.sqlite")["series"]}


def test_a_folder_linked_into_the_tree_again_is_not_corrected_twice(tmp_path):
    """``zz_all -> grid1`` made after grid1 was corrected: before, the second run listed grid1
    under the link's name and corrected its three tilts again as series ``zz_all/TS_01``."""
    watch, out = tmp_path / "session", tmp_path / "out"
    tilts = _series(watch / "grid1")
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    (watch / "zz_all").symlink_to(watch / "grid1", target_is_directory=True)
    (watch / "aa_all").symlink_to(watch / "grid1", target_is_directory=True)
    log = _run(config)
    assert _started(log) == []
    rows = _rows(out)
    assert sorted(Path(r.key.path).relative_to(watch).as_posix() for r in rows) == sorted(
        f"grid1/{t.movie.path.name}" for t in tilts)
    assert {_tilt(r)["series"] for r in rows} == {"grid1/TS_01"}
    assert not (out / "zz_all").exists() and not (out / "aa_all").exists()


def test_a_hard_link_made_later_under_a_name_listed_first_is_the_same_movie(tmp_path):
    """The scan lists one file once per scan, under the first name in order; a hard link
    ``a_copy.mrc`` made after ``b.mrc`` was corrected is now listed first. The ledger knows
    the file (device, inode, size, mtime): it stays recorded under ``b.mrc``."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    write_movie_progressively(watch / "b.mrc", frames, pixel_size_A=1.1, frame_interval_s=0)
    config = _config(watch, out, params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)))
    assert [Path(p).name for p in _started(_run(config))] == ["b.mrc"]
    os.link(watch / "b.mrc", watch / "a_copy.mrc")
    assert [o.path.name for o in scan(watch).observations] == ["a_copy.mrc"]
    log = _run(config)
    assert _started(log) == []
    assert [Path(e["movie"]).name for e in log.named("movie_alias")] == ["a_copy.mrc"]
    assert [(Path(r.key.path).name, r.status, r.attempts) for r in _rows(out)] == [
        ("b.mrc", "done", 1)]


def test_links_to_folders_inside_the_tree_or_above_it_are_not_followed_outside_ones_are(
        tmp_path):
    watch = tmp_path / "session"
    (watch / "grid1").mkdir(parents=True)
    (watch / "grid1" / "a.mrc").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "e.mrc").write_bytes(b"y")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "o.mrc").write_bytes(b"z")  # reached only through the link above
    (watch / "aa_grid").symlink_to(watch / "grid1", target_is_directory=True)  # inside
    (watch / "linked_in").symlink_to(elsewhere, target_is_directory=True)  # a session linked in
    (watch / "grid1" / "up").symlink_to(tmp_path, target_is_directory=True)  # above: a loop
    (watch / "grid1" / "self").symlink_to(watch, target_is_directory=True)
    paths = sorted(o.path.relative_to(watch).as_posix() for o in scan(watch).observations)
    assert paths == ["grid1/a.mrc", "linked_in/e.mrc"]


def test_a_folder_renamed_while_the_daemon_is_stopped_is_not_corrected_again(tmp_path):
    """``grid1`` renamed ``grid1_good`` between two runs: before, all its tilts were corrected
    again under the new name (and assembled twice). Now the rows follow the files, with the
    outputs as written and the mdoc's dose; the series is assembled under its new name."""
    watch, out = tmp_path / "session", tmp_path / "out"
    tilts = _series(watch / "grid1")
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    before = {Path(r.key.path).name: r for r in _rows(out)}
    os.rename(watch / "grid1", watch / "grid1_good")
    log = _run(config)
    assert _started(log) == []
    assert len(log.named("movie_moved")) == 3
    rows = _rows_moved_to(out, watch / "grid1_good", tilts)
    for t, row in zip(tilts, rows):
        assert (row.status, row.attempts) == ("done", 1)
        assert row.outputs == before[t.movie.path.name].outputs
        assert all(Path(p).exists() for p in row.outputs.values())
        assert row.metadata["moved_from"] == [str(watch / "grid1" / t.movie.path.name)]
        assert _tilt(row)["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
        assert _tilt(row)["dose_e_A2"] == pytest.approx(t.dose_e_A2, abs=1e-9)
        assert _tilt(row)["series"] == row.metadata["log_context"]["series"] == "grid1_good/TS_01"
    # the series is assembled again under its new name, from the outputs as written, and
    # status counts its tilts there
    assert [e["series"] for e in log.named("series_assembling")] == ["grid1_good/TS_01"]
    series = {s["series"]: s for s in collect_status(out / "motionwatch.sqlite")["series"]}
    assert series["grid1_good/TS_01"]["tilts_done"] == 3
    assert series["grid1_good/TS_01"]["accumulated_dose_e_A2"] == pytest.approx(
        tilts[-1].pre_exposure_e_A2 + tilts[-1].dose_e_A2, abs=1e-3)


def _corrected_series_in_a_frames_folder(tmp_path: Path):
    """A series whose mdoc lies in ``grid1`` and movies in ``grid1/frames``, corrected once:
    (output folder, grid folder, tilts, config)."""
    watch, out = tmp_path / "session", tmp_path / "out"
    grid = watch / "grid1"
    tilts = _series(grid)
    (grid / "frames").mkdir()
    for t in tilts:
        os.rename(t.movie.path, grid / "frames" / t.movie.path.name)
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    return out, grid, tilts, config


def test_a_renamed_frames_folder_keeps_its_tilts_in_their_series_with_the_mdocs_dose(tmp_path):
    """The mdoc stays in ``grid1``, its frames folder is renamed. Before, the ledger's rows kept
    the mdoc's listing under the old names, and the renamed movies became a series of their
    own, ``grid1/frames_sorted/TS_01``, with no dose (waiting for ever) or the configured dose
    per tilt counted from zero: a wrong pre-exposure."""
    out, grid, tilts, config = _corrected_series_in_a_frames_folder(tmp_path)
    os.rename(grid / "frames", grid / "frames_sorted")
    log = _run(config)
    assert _started(log) == []
    for t, row in zip(tilts, _rows_moved_to(out, grid / "frames_sorted", tilts)):
        assert (row.status, row.attempts) == ("done", 1)
        assert _tilt(row)["series"] == "grid1/TS_01"
        assert _tilt(row)["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)


def test_a_session_moved_down_into_a_grid_folder_is_named_after_that_folder(tmp_path):
    """TS_01 acquired in the watch folder itself, then ``mkdir grid1; mv * grid1``. Before,
    the moved rows kept the series ``TS_01`` (the old path a suffix of the new one) while the
    resolver named it ``grid1/TS_01``: a ghost series in status."""
    watch, out = tmp_path / "session", tmp_path / "out"
    _series(watch)
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    _move_contents(watch, watch / "grid1")
    log = _run(config)
    assert _started(log) == [] and len(log.named("movie_moved")) == 3
    assert [e["series"] for e in log.named("series_assembling")] == ["grid1/TS_01"]
    assert {_tilt(r)["series"] for r in _rows(out)} == {"grid1/TS_01"}
    assert _series_done(out) == {"grid1/TS_01": 3}


def test_a_session_folders_contents_moved_up_are_named_after_their_new_folder(tmp_path):
    """``s1/grid1/*`` moved to ``grid1/*``: before, the moved rows got the series
    ``/grid1/TS_01``, with a leading slash (the new path a suffix of the old one)."""
    watch, out = tmp_path / "session", tmp_path / "out"
    _series(watch / "s1" / "grid1")
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    _move_contents(watch / "s1", watch)
    (watch / "s1").rmdir()
    log = _run(config)
    assert _started(log) == [] and len(log.named("movie_moved")) == 3
    assert {_tilt(r)["series"] for r in _rows(out)} == {"grid1/TS_01"}
    assert _series_done(out) == {"grid1/TS_01": 3}


def test_a_series_moved_down_during_its_acquisition_is_one_relion_tomogram(tmp_path):
    """Tilts 0-2 corrected in the watch folder, the folder tidied into grid1, then tilts 3-4
    arrive in grid1. Before, corrected_tilt_series.star listed two tomograms, ``TS_01`` (the
    moved tilts) and ``grid1_TS_01``, both pointing at ``grid1/TS_01/TS_01.star``."""
    import starfile

    watch, out, hold = tmp_path / "session", tmp_path / "out", tmp_path / "hold"
    hold.mkdir()
    tilts = simulate_tilt_series(watch, rng=np.random.default_rng(1), n_tilts=5,
                                 shape_yx=(128, 128), n_frames=4, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False)
    late = [t.movie.path.name for t in tilts if t.acquisition_index >= 3]
    for name in late:
        os.rename(watch / name, hold / name)
    config = _config(watch, out)
    assert len(_started(_run(config, handoff=True))) == 3
    _move_contents(watch, watch / "grid1")
    for name in late:
        os.rename(hold / name, watch / "grid1" / name)
    assert len(_started(_run(config, handoff=True))) == 2
    glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
    assert list(glob["rlnTomoName"]) == ["grid1_TS_01"]
    assert list(glob["rlnTomoTiltSeriesStarFile"]) == ["grid1/TS_01/TS_01.star"]
    table = starfile.read(out / "grid1" / "TS_01" / "TS_01.star", always_dict=True)
    assert len(table["grid1_TS_01"]) == 5


def test_a_folder_renamed_while_the_daemon_runs_is_not_corrected_again(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    (watch / "grid1").mkdir(parents=True)
    for name in ("m1.mrc", "m2.mrc"):
        write_movie_progressively(watch / "grid1" / name, frames, pixel_size_A=1.1,
                                  frame_interval_s=0)
    config = _config(watch, out, exit_when_idle_s=30.0,
                     params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)))
    with _running(config) as (log, wait_for):
        wait_for(lambda: len(log.named("movie_done")) >= 2)
        os.rename(watch / "grid1", watch / "grid1_good")
        wait_for(lambda: len(log.named("movie_moved")) >= 2)
        more_heartbeats(log, wait_for)  # some more scans
    assert len(_started(log)) == 2
    assert sorted((Path(r.key.path).relative_to(watch).as_posix(), r.status, r.attempts)
                  for r in _rows(out)) == [("grid1_good/m1.mrc", "done", 1),
                                           ("grid1_good/m2.mrc", "done", 1)]


def test_a_database_from_before_rows_kept_the_inode_learns_it_at_the_next_run(tmp_path):
    """The columns are added when an older database is opened, and the next run records the
    inode of each movie it meets, so a rename after that is recognised."""
    import sqlite3

    watch, out = tmp_path / "w", tmp_path / "out"
    (watch / "grid1").mkdir(parents=True)
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    write_movie_progressively(watch / "grid1" / "m1.mrc", frames, pixel_size_A=1.1,
                              frame_interval_s=0)
    config = _config(watch, out, params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)))
    assert len(_started(_run(config))) == 1
    db = sqlite3.connect(out / "motionwatch.sqlite")  # as an earlier version wrote it
    db.execute("DROP INDEX movies_file")
    db.execute("ALTER TABLE movies DROP COLUMN dev")
    db.execute("ALTER TABLE movies DROP COLUMN ino")
    db.commit()
    db.close()
    assert _started(_run(config)) == []
    assert [r.inode is not None for r in _rows(out)] == [True]
    os.rename(watch / "grid1", watch / "grid1_good")
    log = _run(config)
    assert _started(log) == [] and len(log.named("movie_moved")) == 1
    assert [(Path(r.key.path).relative_to(watch).as_posix(), r.status) for r in _rows(out)] == [
        ("grid1_good/m1.mrc", "done")]


def _drop_inode_columns(db_path: Path) -> None:
    """Make a state database as the version before rows kept the inode wrote it."""
    import sqlite3

    db = sqlite3.connect(db_path)
    db.execute("DROP INDEX movies_file")
    db.execute("ALTER TABLE movies DROP COLUMN dev")
    db.execute("ALTER TABLE movies DROP COLUMN ino")
    db.commit()
    db.close()


@pytest.mark.parametrize("when", ["while it runs", "at the restart"])
def test_a_folder_renamed_while_its_movies_wait_for_a_worker_is_corrected_under_its_new_name(
        tmp_path, when):
    """grid1's movies wait while the one worker is busy; grid1 is renamed grid1_good. The
    worker frees before the new names have settled: dispatch finds the old names gone and
    quarantines them ('vanished'). Before, admission then moved the quarantined rows to the
    new names and the movies were never corrected. Now they are corrected under the new names,
    once; a movie whose folder was deleted stays quarantined as vanished."""
    vanished = "movie file vanished before correction"
    watch, out = tmp_path / "w", tmp_path / "out"
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    for folder in ("a_first", "grid1", "gone"):
        (watch / folder).mkdir(parents=True)
    write_movie_progressively(watch / "a_first" / "slow_a.mrc", frames, pixel_size_A=1.1,
                              frame_interval_s=0)
    time.sleep(0.05)
    for path in (watch / "grid1" / "m1.mrc", watch / "grid1" / "m2.mrc", watch / "gone" / "m3.mrc"):
        write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    # the renamed movies settle (3 s) after the busy worker frees (1.5 s)
    config = _config(watch, out, settle_time_s=3.0, exit_when_idle_s=30.0, params=params)
    with _running(config) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_started")))
        os.rename(watch / "grid1", watch / "grid1_good")
        for path in (watch / "gone" / "m3.mrc", watch / "gone"):
            path.unlink() if path.is_file() else path.rmdir()
        wait_for(lambda: len(log.named("movie_quarantined")) >= 3)
        if when == "while it runs":
            wait_for(lambda: len(log.named("movie_done")) >= 3)
            more_heartbeats(log, wait_for)  # some more scans
    assert sorted(Path(e["movie"]).relative_to(watch).as_posix()
                  for e in log.named("movie_quarantined")) == [
        "gone/m3.mrc", "grid1/m1.mrc", "grid1/m2.mrc"]
    started = [Path(p).relative_to(watch).as_posix() for p in _started(log)]
    if when == "at the restart":
        assert started == ["a_first/slow_a.mrc"]
        started += [Path(p).relative_to(watch).as_posix()
                    for p in _started(_run(_config(watch, out, params=params)))]
    assert sorted(started) == ["a_first/slow_a.mrc", "grid1_good/m1.mrc", "grid1_good/m2.mrc"]
    rows = {Path(r.key.path).relative_to(watch).as_posix(): r for r in _rows(out)}
    assert sorted(rows) == ["a_first/slow_a.mrc", "gone/m3.mrc", "grid1_good/m1.mrc",
                            "grid1_good/m2.mrc"]
    for name in ("grid1_good/m1.mrc", "grid1_good/m2.mrc"):
        assert (rows[name].status, rows[name].attempts, rows[name].error) == ("done", 1, None)
        assert Path(rows[name].outputs["motion"]).exists()
    assert (rows["gone/m3.mrc"].status, rows["gone/m3.mrc"].error) == ("quarantined", vanished)


@pytest.mark.parametrize("when", ["while it runs", "at the restart"])
def test_a_movie_gone_from_its_name_when_a_worker_was_free_is_corrected_once_it_is_back(
        tmp_path, when):
    """m1 waits while the one worker is busy; its folder is moved away (a share unmounted for a
    moment) when the worker frees, so dispatch quarantines it as vanished, and back. Before, it
    stayed quarantined for good, though readable (its version was handled, and a restart found
    its quarantined row); now it is corrected, once."""
    watch, out, away = tmp_path / "w", tmp_path / "out", tmp_path / "away"
    frames = np.random.default_rng(1).poisson(1.0, (4, 32, 32)).astype(np.int16)
    for folder in ("a_first", "grid1"):
        (watch / folder).mkdir(parents=True)
    write_movie_progressively(watch / "a_first" / "slow_a.mrc", frames, pixel_size_A=1.1,
                              frame_interval_s=0)
    write_movie_progressively(watch / "grid1" / "m1.mrc", frames, pixel_size_A=1.1,
                              frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    config = _config(watch, out, exit_when_idle_s=30.0, params=params)
    with _running(config) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_started")))
        os.rename(watch / "grid1", away)
        wait_for(lambda: bool(log.named("movie_quarantined")))
        more_heartbeats(log, wait_for)  # scans without it
        if when == "while it runs":
            os.rename(away, watch / "grid1")
            wait_for(lambda: len(log.named("movie_done")) >= 2)
    assert [e["reason"] for e in log.named("movie_quarantined")] == [
        "movie file vanished before correction"]
    if when == "at the restart":
        os.rename(away, watch / "grid1")
        log = _run(_config(watch, out, params=params))
    assert [Path(p).name for p in _started(log)][-1:] == ["m1.mrc"]
    assert [e["movie"] for e in log.named("movie_back")] == [str(watch / "grid1" / "m1.mrc")]
    rows = {Path(r.key.path).relative_to(watch).as_posix(): r for r in _rows(out)}
    assert sorted(rows) == ["a_first/slow_a.mrc", "grid1/m1.mrc"]
    assert (rows["grid1/m1.mrc"].status, rows["grid1/m1.mrc"].attempts) == ("done", 1)


def test_rows_an_older_version_recorded_under_a_folder_link_are_not_corrected_again(tmp_path):
    """The previous version visited ``aa_all -> grid1`` first and recorded grid1's tilts under
    ``aa_all/...`` (no inode). This version does not visit links inside the tree, so it meets
    them as ``grid1/...``: before, they were corrected a second time; now the old rows learn
    their file's inode at start-up (the link followed), and grid1's tilts are the same movies."""
    watch, out = tmp_path / "session", tmp_path / "out"
    _series(watch / "grid1")
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    import sqlite3

    db = sqlite3.connect(out / "motionwatch.sqlite")  # as the previous version recorded them
    db.execute("UPDATE movies SET path = replace(path, '/grid1/', '/aa_all/')")
    db.commit()
    db.close()
    _drop_inode_columns(out / "motionwatch.sqlite")
    os.rename(out / "grid1", out / "aa_all")
    (watch / "aa_all").symlink_to(watch / "grid1", target_is_directory=True)
    log = _run(config)
    assert _started(log) == []
    assert len(log.named("movie_alias")) == 3
    rows = _rows(out)
    assert sorted(Path(r.key.path).parent.name for r in rows) == ["aa_all"] * 3
    assert all(r.inode is not None and r.status == "done" for r in rows)


def test_a_folder_renamed_between_the_older_version_and_this_one_is_not_corrected_again(
        tmp_path):
    """Rows recorded without the inode, then grid1 renamed while stopped: the old name is gone,
    so the inode cannot be learnt there; a movie of the same name, size and mtime met at a new
    name, when only one such recorded file is gone, is that movie renamed."""
    watch, out = tmp_path / "session", tmp_path / "out"
    tilts = _series(watch / "grid1")
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    _drop_inode_columns(out / "motionwatch.sqlite")
    os.rename(watch / "grid1", watch / "grid1_good")
    log = _run(config)
    assert _started(log) == []
    assert len(log.named("movie_moved")) == 3
    for row in _rows_moved_to(out, watch / "grid1_good", tilts):
        assert (row.status, row.attempts) == ("done", 1) and row.inode is not None
        assert _tilt(row)["series"] == "grid1_good/TS_01"


def _open_as_daemon(path, barrier, results):  # noqa: ANN001
    from daemon.state.ledger import open_or_rebuild

    barrier.wait()
    try:
        ledger, moved, reason = open_or_rebuild(path)
        results.put(("daemon", moved is None, reason, len(ledger.rows())))
        ledger.close()
    except Exception as exc:  # noqa: BLE001
        results.put(("daemon", False, repr(exc), None))


def _open_as_retry(path, barrier, results):  # noqa: ANN001
    barrier.wait()
    try:
        Ledger(path).close()
        results.put(("retry", True, None, None))
    except Exception as exc:  # noqa: BLE001
        results.put(("retry", False, repr(exc), None))


def test_two_processes_opening_an_older_database_at_once_both_open_it_and_nothing_is_lost(
        tmp_path):
    """The daemon starting and ``motionwatch retry`` open a database from before rows kept the
    inode at the same moment. Before, both added the columns; the loser got 'duplicate column
    name', which the daemon took for a corrupt database: the whole ledger was moved aside."""
    import multiprocessing
    import shutil

    from daemon.state.ledger import MovieKey

    template = tmp_path / "old.sqlite"
    with Ledger(template) as ledger:
        for n in range(5):
            ledger.add(MovieKey(f"/w/m{n}.mrc", 100, n, "fp"))
    _drop_inode_columns(template)
    context = multiprocessing.get_context("fork")
    for trial in range(20):
        folder = tmp_path / str(trial)
        folder.mkdir()
        db = folder / "motionwatch.sqlite"
        shutil.copy(template, db)
        barrier, results = context.Barrier(2), context.Queue()
        processes = [context.Process(target=f, args=(db, barrier, results))
                     for f in (_open_as_daemon, _open_as_retry)]
        for p in processes:
            p.start()
        for p in processes:
            p.join(60)
        outcome = sorted(results.get(timeout=10) for _ in processes)
        assert outcome == [("daemon", True, None, 5), ("retry", True, None, None)], trial
        assert sorted(p.name for p in folder.iterdir() if "corrupt" in p.name) == []


def test_open_or_rebuild_moves_aside_only_a_damaged_database(tmp_path, monkeypatch):
    """An error that is not damage (here 'duplicate column name', as in a race to add the
    columns) is raised; the database stays where it is."""
    import sqlite3

    import daemon.state.ledger as ledger_module

    db = tmp_path / "motionwatch.sqlite"
    with Ledger(db) as ledger:
        ledger.add(ledger_module.MovieKey("/w/a.mrc", 1, 1, "fp"))

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise sqlite3.OperationalError("duplicate column name: dev")

    with monkeypatch.context() as m:
        m.setattr(ledger_module, "Ledger", refuse)
        with pytest.raises(sqlite3.OperationalError):
            ledger_module.open_or_rebuild(db)
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []
    with Ledger(db, read_only=True) as ledger:
        assert len(ledger.rows()) == 1


@pytest.mark.parametrize("when", ["while stopped", "while it runs"])
def test_the_hand_off_and_status_follow_a_renamed_folder(tmp_path, when):
    """A series corrected (real correction) and assembled in grid1, then grid1 renamed
    grid1_good. Before, each motion STAR and the series STAR still named the vanished movies,
    corrected_tilt_series.star the old series' STAR, and status listed a ghost series
    ``grid1/TS_01: completed, 0/3 tilts`` beside ``grid1_good/TS_01``."""
    import starfile

    from daemon.handoff.listener import build_handoff_listener

    watch, out = tmp_path / "session", tmp_path / "out"
    tilts = simulate_tilt_series(watch / "grid1", rng=np.random.default_rng(1), n_tilts=3,
                                 shape_yx=(128, 128), n_frames=4, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False)
    config = _config(watch, out, exit_when_idle_s=1.0 if when == "while stopped" else 30.0)

    def service(log: RecordingLog) -> Service:
        return Service(config, listeners=[build_handoff_listener(config)],
                       resolver=resolver_from_config(config), logger=log)

    log = RecordingLog()
    if when == "while stopped":
        assert service(log).run() == 0
        os.rename(watch / "grid1", watch / "grid1_good")
        log = RecordingLog()
        assert service(log).run() == 0
    else:
        with _running(config, 120.0, service) as (log, wait_for):
            wait_for(lambda: bool(log.named("series_completed")))
            time.sleep(0.3)
            os.rename(watch / "grid1", watch / "grid1_good")
            wait_for(lambda: len(log.named("movie_moved")) >= 3)
            wait_for(lambda: any(e.get("series") == "grid1_good/TS_01"
                                 for e in log.named("series_completed")))
            more_heartbeats(log, wait_for, 5)  # some more scans
    assert len(log.named("movie_moved")) == 3
    new = {str(watch / "grid1_good" / t.movie.path.name) for t in tilts}
    for t in tilts:  # each motion STAR names the movie where it is now
        general = starfile.read(out / "grid1" / f"{t.movie.path.stem}.star",
                                always_dict=True)["general"]
        assert general["rlnMicrographMovieName"] in new
    glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
    assert list(glob["rlnTomoName"]) == ["grid1_good_TS_01"]
    assert list(glob["rlnTomoTiltSeriesStarFile"]) == ["grid1_good/TS_01/TS_01.star"]
    table = starfile.read(out / "grid1_good" / "TS_01" / "TS_01.star", always_dict=True)
    assert sorted(table["grid1_good_TS_01"]["rlnMicrographMovieName"]) == sorted(new)
    series = {s["series"]: s for s in collect_status(out / "motionwatch.sqlite")["series"]}
    assert sorted(series) == ["grid1_good/TS_01"]
    assert series["grid1_good/TS_01"]["tilts_done"] == 3


def _movie(path: Path, seed: int = 0) -> None:
    """Write a small complete movie at ``path`` (its folder made)."""
    frames = np.random.default_rng(seed).poisson(1.0, (4, 32, 32)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0)


_DOSE1 = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))


def test_a_folder_renamed_and_renamed_back_while_its_movie_waits_is_corrected_once(tmp_path):
    """grid1 renamed grid1_x and back (an undo) while m1 waits for the one worker. Before, the
    move back was not seen (the old name was still taken as handled): m1's row kept naming
    grid1_x and dispatch quarantined it as vanished though the file was there."""
    watch, out = tmp_path / "w", tmp_path / "out"
    _movie(watch / "a_first" / "slow_a.mrc")  # holds the one worker for a while
    time.sleep(0.05)
    _movie(watch / "grid1" / "m1.mrc")
    with _running(_config(watch, out, params=_DOSE1, exit_when_idle_s=60.0)) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_started")) and any(
            e["movie"].endswith("grid1/m1.mrc") for e in log.named("movie_ready")))
        assert len(log.named("movie_started")) == 1  # m1 waits for the worker
        os.rename(watch / "grid1", watch / "grid1_x")
        wait_for(lambda: bool(log.named("movie_moved")))
        os.rename(watch / "grid1_x", watch / "grid1")
        wait_for(lambda: len(log.named("movie_done")) >= 2 or bool(log.named("movie_quarantined")))
    assert log.named("movie_quarantined") == []
    assert sorted(Path(p).relative_to(watch).as_posix() for p in _started(log)) == [
        "a_first/slow_a.mrc", "grid1/m1.mrc"]


def test_a_folder_renamed_and_renamed_back_after_its_movie_was_done_names_it_again(tmp_path):
    """After the undo, the done movie's row names it where it is again, not the intermediate
    folder."""
    watch, out = tmp_path / "w", tmp_path / "out"
    _movie(watch / "grid1" / "m1.mrc")
    with _running(_config(watch, out, params=_DOSE1, exit_when_idle_s=60.0)) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_done")))
        os.rename(watch / "grid1", watch / "grid1_x")
        wait_for(lambda: bool(log.named("movie_moved")))
        os.rename(watch / "grid1_x", watch / "grid1")
        wait_for(lambda: len(log.named("movie_moved")) >= 2)
    assert len(_started(log)) == 1
    assert [(Path(r.key.path).relative_to(watch).as_posix(), r.status) for r in _rows(out)] == [
        ("grid1/m1.mrc", "done")]


def _remount(db_path: Path) -> None:
    """Give every row another inode number, as a remount (or cifs ``noserverino``) gives the
    files."""
    import sqlite3

    db = sqlite3.connect(db_path)
    db.execute("UPDATE movies SET ino = ino + 1000000")
    db.commit()
    db.close()


def test_a_renamed_frames_folder_on_a_share_whose_inodes_changed_keeps_its_tilts(tmp_path):
    """Rows whose inode the file no longer has are recognised by file name, size and mtime
    (the old name gone), as rows without an inode are: before, the tilts waited for ever."""
    out, grid, tilts, config = _corrected_series_in_a_frames_folder(tmp_path)
    _remount(out / "motionwatch.sqlite")
    os.rename(grid / "frames", grid / "frames_sorted")
    # not idle-exited while it is watched (0.6 s idle: three more heartbeats could miss it)
    with _running(dataclasses.replace(config, exit_when_idle_s=30.0), timeout_s=20.0) as (
            log, wait_for):
        wait_for(lambda: len(log.named("movie_moved")) >= 3)
        more_heartbeats(log, wait_for)  # some more scans
    assert _started(log) == [] and len(log.named("movie_moved")) == 3
    rows = _rows_moved_to(out, grid / "frames_sorted", tilts)
    assert [r.inode for r in rows] == [
        (os.stat(r.key.path).st_dev, os.stat(r.key.path).st_ino) for r in rows]


def test_a_renamed_grid_folder_on_a_share_whose_inodes_changed_is_not_corrected_again(tmp_path):
    """Before, the renamed grid's tilts were corrected a second time, as a second series."""
    watch, out = tmp_path / "session", tmp_path / "out"
    tilts = _series(watch / "grid1")
    config = _config(watch, out)
    assert len(_started(_run(config))) == 3
    _remount(out / "motionwatch.sqlite")
    os.rename(watch / "grid1", watch / "grid1_good")
    assert _started(_run(config)) == []
    assert [r.status for r in _rows_moved_to(out, watch / "grid1_good", tilts)] == ["done"] * 3


def test_another_movie_renamed_in_with_the_same_name_size_and_mtime_is_corrected_while_running(
        tmp_path):
    """``rsync -a --checksum`` of another exposure of the same size over a corrected movie (a
    temporary renamed into place, the mtime kept): a running daemon had handled that name,
    size and mtime and never looked again; only a restart found the new file. Now its new
    inode is seen at the next scan and the file is corrected again, once."""
    watch, out = tmp_path / "w", tmp_path / "out"
    movie = watch / "grid1" / "m1.mrc"
    _movie(movie, seed=0)
    _movie(tmp_path / "other.mrc", seed=1)  # the same size: another movie
    config = _config(watch, out, params=_DOSE1, exit_when_idle_s=None)
    with _running(config) as (log, wait_for):
        wait_for(lambda: len(log.named("movie_done")) == 1)
        st = os.stat(movie)
        os.replace(tmp_path / "other.mrc", movie)
        os.utime(movie, ns=(st.st_atime_ns, st.st_mtime_ns))
        wait_for(lambda: len(log.named("movie_done")) == 2, timeout_s=15.0)
        time.sleep(0.5)  # scans go on: not corrected a third time
    assert _started(log) == [str(movie)] * 2 and len(log.named("movie_replaced")) == 1


def test_a_movie_whose_inode_changed_in_place_learns_its_new_inode(tmp_path):
    """A remount alone: nothing is corrected again and the rows learn the files' inodes, so a
    later link or rename is recognised by inode again."""
    watch, out = tmp_path / "w", tmp_path / "out"
    _movie(watch / "grid1" / "m1.mrc")
    config = _config(watch, out, params=_DOSE1)
    assert len(_started(_run(config))) == 1
    _remount(out / "motionwatch.sqlite")
    assert _started(_run(config)) == []
    st = os.stat(watch / "grid1" / "m1.mrc")
    assert [r.inode for r in _rows(out)] == [(st.st_dev, st.st_ino)]


def test_another_movie_copied_in_with_the_same_name_size_and_mtime_is_corrected_again(
        tmp_path):
    """A different file of the same size under the name, its mtime kept by the copy (``cp
    -p``, ``rsync -t``): a new inode whose content differs from the row's is another movie.
    Before, the row took the new inode and the outputs stayed the old movie's."""
    watch, out = tmp_path / "w", tmp_path / "out"
    movie = watch / "grid1" / "m1.mrc"
    _movie(movie, seed=0)
    config = _config(watch, out, params=_DOSE1)
    assert len(_started(_run(config))) == 1
    _movie(tmp_path / "other.mrc", seed=1)  # the same size: another movie
    st = os.stat(movie)
    os.replace(tmp_path / "other.mrc", movie)
    os.utime(movie, ns=(st.st_atime_ns, st.st_mtime_ns))
    log = _run(config)
    assert _started(log) == [str(movie)] and len(log.named("movie_replaced")) == 1
    assert _started(_run(config)) == []  # once
    _remount(out / "motionwatch.sqlite")  # and a remount alone is still no new movie
    assert _started(_run(config)) == []


def _give_row_inode_of(db_path: Path, path: Path) -> None:
    """Record ``path``'s inode in every row, as if the recorded files had had it."""
    import sqlite3

    st = os.stat(path)
    db = sqlite3.connect(db_path)
    db.execute("UPDATE movies SET dev = ?, ino = ?", (st.st_dev, st.st_ino))
    db.commit()
    db.close()


def test_a_new_movie_on_a_deleted_movies_inode_size_and_mtime_is_corrected(tmp_path):
    """m_001 deleted; m_002, of the same size, gets its inode (most file systems reuse it at
    once) and, on coarse timestamps, its mtime. Its content differs, so it is a new movie, not
    m_001 renamed: before, it was never corrected and inherited m_001's outputs."""
    watch, out = tmp_path / "w", tmp_path / "out"
    first, second = watch / "grid1" / "m_001.mrc", watch / "grid1" / "m_002.mrc"
    _movie(first, seed=1)
    config = _config(watch, out, params=_DOSE1)
    assert len(_started(_run(config))) == 1
    st = os.stat(first)
    first.unlink()
    _movie(second, seed=2)
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(second).st_size == st.st_size
    _give_row_inode_of(out / "motionwatch.sqlite", second)  # where the inode was not reused
    log = _run(config)
    assert [Path(p).name for p in _started(log)] == ["m_002.mrc"]
    assert log.named("movie_moved") == []
    assert _started(_run(config)) == []  # and not again after a restart


def test_a_renamed_movie_recorded_before_rows_kept_its_content_is_still_recognised(tmp_path):
    """Rows an older version wrote have no content fingerprint: a rename is recognised by
    inode, size and mtime as before, and the row learns the fingerprint."""
    import sqlite3

    watch, out = tmp_path / "w", tmp_path / "out"
    _movie(watch / "grid1" / "m1.mrc")
    config = _config(watch, out, params=_DOSE1)
    assert len(_started(_run(config))) == 1
    db = sqlite3.connect(out / "motionwatch.sqlite")  # as the version before wrote it
    db.execute("ALTER TABLE movies DROP COLUMN content")
    db.commit()
    db.close()
    os.rename(watch / "grid1", watch / "grid1_good")
    log = _run(config)
    assert _started(log) == [] and len(log.named("movie_moved")) == 1
    assert [(Path(r.key.path).relative_to(watch).as_posix(), r.content is not None)
            for r in _rows(out)] == [("grid1_good/m1.mrc", True)]


def _flaky_movie(watch: Path) -> tuple[Path, Path]:
    """A movie the fake runner fails while its ``.bad`` marker exists: (movie, marker)."""
    flaky = watch / "flaky_1.mrc"
    _movie(flaky)
    marker = flaky.with_name(flaky.name + ".bad")
    marker.write_text("")
    return flaky, marker


def test_a_retried_movie_with_a_hard_link_listed_first_is_corrected_while_the_daemon_runs(
        tmp_path):
    """flaky_1 quarantined, then a hard link a_copy made (the scan lists only a_copy). Before,
    `motionwatch retry` lifted the quarantine of flaky_1, which the scan never lists, and the
    movie was not met again until a restart, while `status` listed it requeued for ever."""
    watch, out = tmp_path / "w", tmp_path / "out"
    flaky, marker = _flaky_movie(watch)
    config = _config(watch, out, params=_DOSE1, max_attempts=1, retry_delay_s=0.0,
                     exit_when_idle_s=60.0)
    with _running(config, timeout_s=20.0) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_quarantined")))
        os.link(flaky, watch / "a_copy.mrc")
        assert [o.path.name for o in scan(watch).observations] == ["a_copy.mrc"]
        wait_for(lambda: bool(log.named("movie_alias")))
        marker.unlink()
        assert cli_main(["retry", str(out)]) == 0
        wait_for(lambda: bool(log.named("movie_done")))
    assert [Path(p).name for p in _started(log)] == ["flaky_1.mrc", "a_copy.mrc"]
    assert collect_status(out / "motionwatch.sqlite")["counts"]["requeued"] == 0


def test_a_retried_movie_met_under_its_hard_links_name_after_a_restart_is_not_listed_requeued(
        tmp_path):
    """Before, `status` kept listing flaky_1 as requeued (and in the backlog) after the
    restart corrected it as a_copy."""
    watch, out = tmp_path / "w", tmp_path / "out"
    flaky, marker = _flaky_movie(watch)
    config = _config(watch, out, params=_DOSE1, max_attempts=1, retry_delay_s=0.0)
    _run(config)
    os.link(flaky, watch / "a_copy.mrc")
    assert _run(config).named("movie_alias")
    marker.unlink()
    assert cli_main(["retry", str(out)]) == 0
    assert [Path(p).name for p in _started(_run(config))] == ["a_copy.mrc"]
    status = collect_status(out / "motionwatch.sqlite")
    assert status["counts"]["requeued"] == 0 and status["backlog"]["pending"] == 0


def _series_corrected_in_grid1(tmp_path: Path):
    """A three-tilt series written into ``session/grid1`` and corrected with the hand-off on:
    ``(watch folder, output folder, config)``."""
    watch, out = tmp_path / "session", tmp_path / "out"
    simulate_tilt_series(watch / "grid1", rng=np.random.default_rng(1), n_tilts=3,
                         shape_yx=(128, 128), n_frames=4, frame_interval_s=0.0,
                         tilt_interval_s=0.0, lock=False)
    config = _config(watch, out)
    _run(config, handoff=True)
    return watch, out, config


def test_a_renamed_folders_old_series_star_is_removed(tmp_path):
    """grid1 renamed grid1_good between two runs: the hand-off writes
    ``grid1_good/TS_01/TS_01.star``. Before, the old series' ``grid1/TS_01/TS_01.star`` stayed
    as it was, naming the movies at their vanished paths."""
    watch, out, config = _series_corrected_in_grid1(tmp_path)
    assert (out / "grid1" / "TS_01" / "TS_01.star").exists()
    os.rename(watch / "grid1", watch / "grid1_good")
    assert len(_run(config, handoff=True).named("movie_moved")) == 3
    assert (out / "grid1_good" / "TS_01" / "TS_01.star").exists()
    assert not (out / "grid1" / "TS_01" / "TS_01.star").exists()


def _assembled(folder: Path) -> set[str]:
    """The files below a series folder, relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


#: what the assembly and the hand-off write for series TS_01 of ``TS_01.mrc.mdoc``
_SERIES_FILES = {f"TS_01{s}" for s in (
    ".mrc", "_DW.mrc", "_EVN.mrc", "_ODD.mrc", ".mrc.mdoc", "_DW.mrc.mdoc", "_EVN.mrc.mdoc",
    "_ODD.mrc.mdoc", ".tlt", ".rawtlt", "_TLT.txt", ".st", ".st.mdoc", ".csv", ".sheet.png",
    ".chart.png", ".star")} | {f"aretomo3/TS_01.mrc{s}"
                               for s in (".mrc", "_EVN.mrc", "_ODD.mrc", "_TLT.txt")}


def test_a_renamed_folders_old_series_stacks_are_removed_and_stay_removed(tmp_path):
    """grid1 renamed grid1_good between two runs: its series is assembled again into
    ``grid1_good/TS_01/``. Before, the old ``grid1/TS_01/`` kept its stacks, tilt files,
    pictures and ``aretomo3/`` links: AreTomo3 or IMOD run over the output folder processed a
    ghost series beside the real one. Now what motionwatch wrote there is removed (the files
    AreTomo3 and the user put there stay), and a restart neither brings it back nor touches
    the live series."""
    watch, out, config = _series_corrected_in_grid1(tmp_path)
    old, new = out / "grid1" / "TS_01", out / "grid1_good" / "TS_01"
    assert _assembled(old) == _SERIES_FILES
    theirs = {"aretomo3/TS_01.mrc_Vol.mrc": b"AreTomo3's tomogram", "notes.txt": b"mine"}
    for name, data in theirs.items():
        (old / name).write_bytes(data)
    os.rename(watch / "grid1", watch / "grid1_good")
    log = _run(config, handoff=True)
    assert _assembled(new) == _SERIES_FILES
    assert _assembled(old) == set(theirs)
    assert all((old / name).read_bytes() == data for name, data in theirs.items())
    [removed] = log.named("series_outputs_removed")
    assert (removed["series"], removed["folder"]) == ("grid1/TS_01", str(old))
    assert len(removed["files"]) == len(_SERIES_FILES) - 1  # the STAR is the hand-off's
    log = _run(config, handoff=True)  # a restart
    assert log.named("series_outputs_removed") == []
    assert _assembled(old) == set(theirs) and _assembled(new) == _SERIES_FILES


def test_a_ghost_series_removal_cut_short_is_finished_at_the_restart(tmp_path):
    """A service killed half-way through removing a ghost series' files (the state database
    still names its stacks): the restart removes the rest, and the folder, now empty."""
    watch, out, config = _series_corrected_in_grid1(tmp_path)
    old = out / "grid1" / "TS_01"
    for name in ("aretomo3/TS_01.mrc.mrc", "aretomo3/TS_01.mrc_TLT.txt", "TS_01.st",
                 "TS_01.tlt", "TS_01.star"):
        (old / name).unlink()  # what the removal had done when it was killed
    os.rename(watch / "grid1", watch / "grid1_good")
    log = _run(config, handoff=True)
    assert not old.exists()
    assert [e["series"] for e in log.named("series_outputs_removed")] == ["grid1/TS_01"]
    assert _assembled(out / "grid1_good" / "TS_01") == _SERIES_FILES


def test_a_folder_renamed_before_the_worker_opened_its_movie_is_corrected_under_its_new_name(
        tmp_path):
    """grid1 renamed grid1_good after a worker took held_m1 and before it opened the file: the
    worker does not find it. Before, that was classed as trouble outside the movies: all
    correction paused (``movie_retry_later``) and the service reported itself unhealthy. The
    daemon still sees its watched folder, so the movie moved: it is quarantined as vanished
    and corrected once under its new name, nothing paused."""
    watch, out = tmp_path / "w", tmp_path / "out"
    _movie(watch / "grid1" / "held_m1.mrc")
    config = _config(watch, out, params=_DOSE1, exit_when_idle_s=60.0)
    (out / "HOLD").write_text("")  # the worker holds the movie, unopened, while this exists
    with _running(config, timeout_s=20.0) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_started")))
        os.rename(watch / "grid1", watch / "grid1_good")
        (out / "HOLD").unlink()
        wait_for(lambda: bool(log.named("movie_done")))
    assert log.named("movie_retry_later") == []
    assert [e["reason"] for e in log.named("movie_quarantined")] == [
        "movie file vanished before correction"]
    assert [Path(p).relative_to(watch).as_posix() for p in _started(log)] == [
        "grid1/held_m1.mrc", "grid1_good/held_m1.mrc"]
    assert [(Path(r.key.path).relative_to(watch).as_posix(), r.status, r.attempts)
            for r in _rows(out)] == [("grid1_good/held_m1.mrc", "done", 1)]


def test_a_new_version_renamed_over_a_movie_in_a_worker_is_the_one_whose_outputs_stay(tmp_path):
    """rsync (or a copy made again) renames another version over held_m1 while a worker holds
    it, before the worker opens it. Before, the worker corrected the new file under the old
    version's row (done), and the new version was corrected once more under its own; with two
    workers the old version's outputs could land over the new one's, which the state called
    done. Now the old version's outputs are not written (``movie_version_superseded``) and the
    new version is corrected once, its outputs the ones on disk."""
    import json

    watch, out = tmp_path / "w", tmp_path / "out"
    movie = watch / "grid1" / "held_m1.mrc"
    _movie(movie)
    config = _config(watch, out, params=_DOSE1, exit_when_idle_s=60.0)
    (out / "HOLD").write_text("")  # the worker holds the movie, unopened, while this exists
    with _running(config, timeout_s=20.0) as (log, wait_for):
        wait_for(lambda: bool(log.named("movie_started")))
        old_size = movie.stat().st_size
        frames = np.random.default_rng(5).poisson(1.0, (6, 32, 32)).astype(np.int16)
        write_movie_progressively(tmp_path / "held_m1.mrc", frames, pixel_size_A=1.1,
                                  frame_interval_s=0)
        os.rename(tmp_path / "held_m1.mrc", movie)  # as rsync puts a file in place
        new_size = movie.stat().st_size
        (out / "HOLD").unlink()
        wait_for(lambda: bool(log.named("movie_done")))
        more_heartbeats(log, wait_for)
    assert [e["attempt"] for e in log.named("movie_version_superseded")] == [1]
    (done,) = log.named("movie_done")
    record = json.loads((out / "grid1" / "held_m1.motion.json").read_text())
    assert record["source_file"]["size"] == new_size != old_size
    rows = sorted((r.key.size, r.status, r.attempts) for r in _rows(out))
    assert rows == sorted([(old_size, "quarantined", 1), (new_size, "done", 1)])


def test_a_series_is_not_assembled_without_a_tilt_renamed_while_it_waited_for_a_worker(
        tmp_path):
    """Tilts 0-1 corrected; tilt 2 waits for the one worker (held by another movie) when the
    frames folder is renamed. Dispatch finds its old name gone and quarantines it as vanished,
    while its new name settles. Before, the series counted that quarantined tilt as finished
    and was assembled at once with two tilts (then again with three once the tilt was moved
    and corrected); now it waits for the renamed tilt and is assembled once, with all three."""
    watch, out, hold = tmp_path / "session", tmp_path / "out", tmp_path / "hold"
    frames = watch / "grid1" / "frames"
    tilts = _series(watch / "grid1")
    for folder in (frames, hold):
        folder.mkdir()
    last = tilts[2].movie.path.name
    os.rename(watch / "grid1" / last, hold / last)
    for t in tilts[:2]:
        os.rename(t.movie.path, frames / t.movie.path.name)
    config = _config(watch, out, settle_time_s=0.5, exit_when_idle_s=60.0)

    def service(log: RecordingLog) -> Service:
        return Service(config, runner="fake_runners:correct",
                       resolver=resolver_from_config(config), logger=log)

    with _running(config, 20.0, service) as (log, wait_for):
        wait_for(lambda: len(log.named("movie_done")) >= 2)
        (out / "HOLD").write_text("")  # held_a holds the one worker while this exists
        _movie(watch / "a_first" / "held_a.mrc")
        wait_for(lambda: any("held_a" in e["movie"] for e in log.named("movie_started")))
        os.rename(hold / last, frames / last)
        wait_for(lambda: any(last in e["movie"] for e in log.named("movie_ready")))
        os.rename(frames, watch / "grid1" / "frames_sorted")
        (out / "HOLD").unlink()
        wait_for(lambda: any(e["tilts"] == 3 for e in log.named("series_assembling")))
    assert [Path(e["movie"]).name for e in log.named("movie_quarantined")] == [last]
    assert [e["tilts"] for e in log.named("series_assembling")] == [3]
    assert [Path(p).relative_to(watch).as_posix() for p in _started(log)][-1] == (
        f"grid1/frames_sorted/{last}")


def test_a_moved_tilt_redone_into_another_series_is_handed_off_under_that_series(tmp_path):
    """grid1's tilts corrected as series TS_01 from their file names (no mdoc yet), grid1
    renamed grid1_good, then their series mdoc arrives as ``tomoA.mrc.mdoc``: its doses redo
    them as series grid1_good/tomoA. Before, the hand-off kept the series the move had given
    them (``grid1_good/TS_01``) over the one their new records name."""
    import starfile

    from daemon.handoff.listener import build_handoff_listener

    watch, out, staging = tmp_path / "session", tmp_path / "out", tmp_path / "staging"
    tilts = simulate_tilt_series(staging, rng=np.random.default_rng(1), n_tilts=2,
                                 shape_yx=(128, 128), n_frames=4, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False)
    (watch / "grid1").mkdir(parents=True)
    for t in tilts:
        os.rename(t.movie.path, watch / "grid1" / t.movie.path.name)
    config = _config(watch, out, exit_when_idle_s=60.0,
                     options={"tilt_series": "auto", "dose_per_tilt": 10.0,
                              "metadata_wait": 0.2, "mdoc_quiet": 0.3})

    def service(log: RecordingLog) -> Service:
        return Service(config, listeners=[build_handoff_listener(config)],
                       resolver=resolver_from_config(config), logger=log)

    with _running(config, 60.0, service) as (log, wait_for):
        wait_for(lambda: len(log.named("movie_done")) >= 2)
        os.rename(watch / "grid1", watch / "grid1_good")
        wait_for(lambda: len(log.named("movie_moved")) >= 2)
        os.rename(staging / "TS_01.mrc.mdoc", watch / "grid1_good" / "tomoA.mrc.mdoc")
        wait_for(lambda: len(log.named("movie_done")) >= 4)
    assert len(log.named("movie_redo_metadata_changed")) == 2
    latest = {r.key.path: r for r in _rows(out)}  # the redone rows, recorded last
    assert {r.metadata["log_context"]["series"] for r in latest.values()} == {"grid1_good/tomoA"}
    glob = starfile.read(out / "corrected_tilt_series.star", always_dict=True)["global"]
    assert list(glob["rlnTomoName"]) == ["grid1_good_tomoA"]
    assert list(glob["rlnTomoTiltSeriesStarFile"]) == ["grid1_good/tomoA/tomoA.star"]


def test_a_movie_reached_through_a_second_mount_of_its_share_is_corrected_once(tmp_path):
    """One share mounted twice gives its files two ``st_dev`` values (NFS does with other
    mount options or another server address), and a folder link out of the watched tree is
    followed: ``also_grid1`` links to grid1 through the second mount. Before, grid1's movie
    was corrected twice, once under each name; now the second name is the same file
    (inode number, size, mtime and content fingerprint), recorded under the first."""
    from two_mounts import run_daemon_in_two_mounts

    log = run_daemon_in_two_mounts(tmp_path)
    if "skip" in log:
        pytest.skip(log["skip"])
    watch = tmp_path / "m1" / "session"
    assert [Path(p).relative_to(watch).as_posix() for p in log["movie_started"]] == [
        "also_grid1/m1.mrc"]
    assert [Path(p).relative_to(watch).as_posix() for p in log["movie_alias"]] == [
        "grid1/m1.mrc"]


def test_a_session_of_many_movies_of_one_size_and_mtime_is_admitted_reading_few_rows_each(
        tmp_path, monkeypatch):
    """A copied session can give thousands of movies one size and mtime. Looking for a new
    movie's earlier names (another mount, a rename the inodes do not tell) reads the rows of
    its own file name or inode number only. Before, each new movie read every row of its size
    and mtime, twice: 5,000 such movies held the main loop for minutes."""
    import daemon.state.ledger as ledger_module

    n_movies = 240
    watch, out = tmp_path / "w", tmp_path / "out"
    for i in range(n_movies):
        _movie(watch / f"grid{i % 3}" / f"m_{i:04d}.mrc")
    one_mtime_ns = os.stat(watch / "grid0" / "m_0000.mrc").st_mtime_ns
    for path in watch.glob("*/*.mrc"):
        os.utime(path, ns=(one_mtime_ns, one_mtime_ns))
    decoded = []
    decode = ledger_module._row
    monkeypatch.setattr(ledger_module, "_row", lambda r: decoded.append(1) or decode(r))
    log = _run(_config(watch, out, params=_DOSE1))
    assert len(_started(log)) == n_movies and log.named("movie_moved") == []
    assert len(decoded) < 20 * n_movies  # the old lookups alone read n_movies² rows


def test_a_file_of_two_gone_names_of_its_name_size_and_mtime_is_not_taken_for_either(tmp_path):
    """A2: where inodes do not tell (a remount), a file is taken for a renamed recorded movie
    only when one name of its file name, size and mtime is gone; with two gone (grid1/m1.mrc
    and grid2/m1.mrc, both moved away) which one it is cannot be told, and its rows must not
    be merged into one."""
    from types import SimpleNamespace

    from daemon.engine.admission import Admission
    from daemon.events import Observation

    def row(path):
        return SimpleNamespace(key=SimpleNamespace(path=str(path), size=10, mtime_ns=5))

    new = tmp_path / "sorted" / "m1.mrc"
    obs = Observation(new, 10, 5, "movie", (1, 2))
    one = SimpleNamespace(rows_named=lambda name, size, mtime: [row(tmp_path / "g1" / name)])
    assert [r.key.path for r in Admission._renamed_before_inodes(None, one, obs)] == [
        str(tmp_path / "g1" / "m1.mrc")]
    two = SimpleNamespace(rows_named=lambda name, size, mtime: [
        row(tmp_path / "g1" / name), row(tmp_path / "g2" / name)])
    assert Admission._renamed_before_inodes(None, two, obs) == []
    (tmp_path / "g2").mkdir()  # one of them still there: the other is the one gone
    (tmp_path / "g2" / "m1.mrc").write_bytes(b"x")
    assert [r.key.path for r in Admission._renamed_before_inodes(None, two, obs)] == [
        str(tmp_path / "g1" / "m1.mrc")]


def test_another_devices_file_of_a_recorded_inode_number_size_and_mtime_is_not_that_movie(
        tmp_path):
    """A3: a row on another device is this file only when its content fingerprint agrees; a
    different movie that shares the inode number, size and mtime (``cp -p`` onto a second
    disk of the same layout) would be taken for an alias of the recorded one, still there
    under its name, and never corrected."""
    from types import SimpleNamespace

    from daemon.engine.admission import Admission
    from daemon.events import Observation
    from daemon.intake.content import content_fingerprint

    new = tmp_path / "disk2" / "m.mrc"
    new.parent.mkdir()
    new.write_bytes(b"new movie" * 100)
    st = os.stat(new)
    other = SimpleNamespace(key=SimpleNamespace(path=str(tmp_path / "disk1" / "m.mrc")),
                            inode=(st.st_dev + 1, st.st_ino), content="another fingerprint")
    same = SimpleNamespace(key=SimpleNamespace(path=str(tmp_path / "disk1" / "n.mrc")),
                           inode=(st.st_dev + 1, st.st_ino), content=content_fingerprint(new))
    obs = Observation(new, st.st_size, st.st_mtime_ns, "movie", (st.st_dev, st.st_ino))
    ledger = SimpleNamespace(rows_of_inode_number=lambda ino, size, mtime: [other, same])
    assert Admission._on_another_mount(None, ledger, obs) == [same]
