"""Tilt series in the running daemon: exact pre-exposures, restarts, late arrivals, stacks.

The daemon runs as a real subprocess (``python -m daemon watch``) with the real correction
pipeline on small synthetic MRC movies (128^2 x 4 frames) of a dose-symmetric series written the
way SerialEM writes one (:mod:`daemon.simulate_series`): movies frame by frame, the series mdoc
growing by one section per tilt, the ``.openTS`` lock removed at the end, the mdoc re-sorted by
angle. Truth: each tilt's pre-exposure is the sum of the ``ExposureDose`` of the tilts acquired
before it, exactly as written in the mdoc.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from aretomo3_rules import mdoc_key_counts
from daemon_process import events, rows, spawn, wait_for_heartbeats, watch_argv
from movie_damage import mend_mrc_header, spoil_mrc_header

from daemon.commands.cli import main
from daemon.series.mdoc import read_mdoc
from daemon.simulation.tilt_series import series_mdoc_text, simulate_tilt_series


def start_daemon(watch: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    return spawn(watch_argv(watch, out, "--dose-per-frame", "1.0", "--settle-time", "0.3",
                            "--scan-interval", "0.1", "--heartbeat", "0.5",
                            "--incomplete-grace", "5", *extra), log)


@contextmanager
def running_daemon(watch: Path, out: Path, log: Path, *extra: str
                   ) -> Iterator[subprocess.Popen]:
    """:func:`start_daemon`, stopped by SIGTERM (and waited for) when the block ends."""
    daemon = start_daemon(watch, out, log, *extra)
    try:
        yield daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


SHAPE = (128, 128)
N_FRAMES = 4
SERIES_FLAGS = ("--tilt-series", "on", "--metadata-wait", "30", "--mdoc-quiet", "60")


def simulate(watch: Path, seed: int, **kw):
    defaults = dict(rng=np.random.default_rng(seed), n_tilts=7, shape_yx=SHAPE,
                    n_frames=N_FRAMES, frame_interval_s=0.02, tilt_interval_s=0.2)
    return simulate_tilt_series(watch, **{**defaults, **kw})


def wait_for(log: Path, event: str, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(e.get("event") == event for e in events(log)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {event} events"
        time.sleep(0.05)


def motion(out: Path, movie: Path) -> dict:
    return json.loads((out / f"{movie.stem}.motion.json").read_text())


def check_pre_exposures_exact(out: Path, tilts) -> None:
    for t in tilts:
        record = motion(out, t.movie.path)
        tilt = record["tilt"]
        assert tilt["series"] == "TS_01" and tilt["tilt_deg"] == t.tilt_deg
        assert tilt["acquisition_index"] == t.acquisition_index
        assert tilt["dose_e_A2"] == pytest.approx(t.dose_e_A2, abs=1e-9)
        assert tilt["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
        assert record["dose"]["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
        assert tilt["dose_source"] == "ExposureDose" and tilt["order_source"] == "TimeStamp"
        assert tilt["prior_record_dose_difference_e_A2"] == pytest.approx(0.0, abs=1e-3)


def check_stack(out: Path, tilts, *, tilt_axis_deg: float = 85.3) -> None:
    """The angle-sorted stacks; their mdocs carry the tilt axis (default: the series mdoc's
    title, as Warp's ts_import reads it from an mdoc)."""
    folder = out / "TS_01"
    angles = [float(a) for a in (folder / "TS_01.tlt").read_text().split()]
    assert angles == sorted(t.tilt_deg for t in tilts)
    for kind in ("", "_DW", "_EVN", "_ODD"):
        with mrcfile.open(folder / f"TS_01{kind}.mrc", permissive=False) as mrc:
            assert mrc.data.shape == (len(tilts), *SHAPE) and np.isfinite(mrc.data).all()
            assert mrc.voxel_size.x == pytest.approx(1.1, rel=1e-5)
        stack_mdoc = read_mdoc(folder / f"TS_01{kind}.mrc.mdoc")
        assert [s.tilt_deg for s in stack_mdoc.sections] == pytest.approx(angles)
        assert stack_mdoc.tilt_axis_deg == pytest.approx(tilt_axis_deg)
    with open(folder / "TS_01.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["tilt_deg"]) for r in table] == angles
    by_movie = {t.movie.path.name: t for t in tilts}
    for z, r in enumerate(table):
        record = motion(out, by_movie[r["movie"]].movie.path)
        assert int(r["stack_index"]) == z
        assert float(r["tilt_deg"]) == record["tilt"]["tilt_deg"]
        assert int(r["acquisition_index"]) == record["tilt"]["acquisition_index"]
        assert float(r["pre_exposure_e_A2"]) == pytest.approx(record["tilt"]["pre_exposure_e_A2"],
                                                               abs=1e-4)
        assert float(r["dose_e_A2"]) == pytest.approx(record["tilt"]["dose_e_A2"], abs=1e-4)
        assert float(r["drift_total_A"]) == pytest.approx(record["drift"]["total_A"], abs=1e-3)
    # each stack section is that tilt's sum, in angle order
    with mrcfile.open(folder / "TS_01.mrc") as stack:
        for z, r in enumerate(table):
            with mrcfile.open(out / f"{Path(r['movie']).stem}.mrc") as single:
                np.testing.assert_array_equal(stack.data[z], np.squeeze(single.data))


def test_dose_symmetric_session_with_late_arrival_gives_exact_pre_exposures_and_sorted_stack(
        tmp_path, capsys):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    # the mdoc re-sorted at the end keeps the run going for the metadata wait (it may move a
    # tilt's metadata): 8 s here, against 0.2 s between tilts
    daemon = start_daemon(watch, out, log, *SERIES_FLAGS, "--metadata-wait", "8",
                          "--exit-when-idle", "2")
    try:
        wait_for(log, "service_ready", 1, 30)
        # tilts 3 and 4 (acquisition order) arrive the other way round; re-sorted mdoc at the end
        tilts = simulate(watch, 21, swap_arrival=(3, 4), resort_at_end=True)
        assert daemon.wait(timeout=90) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    done = [Path(e["movie"]).name for e in events(log) if e.get("event") == "movie_done"]
    assert sorted(done) == sorted(t.movie.path.name for t in tilts)  # each exactly once
    assert done.index(tilts[4].movie.path.name) < done.index(tilts[3].movie.path.name)
    check_pre_exposures_exact(out, tilts)
    check_stack(out, tilts)
    completed = [e for e in events(log) if e.get("event") == "series_completed"]
    assert len(completed) == 1 and ".openTS lock gone" in completed[0]["reason"]
    assert not any(e.get("event") == "movie_redo_metadata_changed" for e in events(log))
    assert not any(e.get("level") == "error" for e in events(log))
    assert main(["status", str(out), "--json"]) == 0  # what the operator sees of the series
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert (series["series"], series["status"]) == ("TS_01", "completed")
    assert (series["tilts_done"], series["tilts_expected"]) == (len(tilts), len(tilts))
    assert series["accumulated_dose_e_A2"] == pytest.approx(sum(t.dose_e_A2 for t in tilts),
                                                            abs=1e-3)
    assert series["stack_folder"] == str(out / "TS_01")


def test_a_batch_run_on_a_finished_session_assembles_its_series_with_the_tilt_axis_given(
        tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    tilts = simulate(watch, 5, n_tilts=3, frame_interval_s=0.0, tilt_interval_s=0.0)
    # acquired before the start (no .openTS lock seen): the series completes once its mdoc is
    # quiet for 6 s, and the idle exit (after 1 s) waits for that (it left without stacks)
    daemon = start_daemon(watch, out, log, "--tilt-series", "on", "--mdoc-quiet", "6",
                          "--tilt-axis", "-94.7", "--exit-when-idle", "1")
    assert daemon.wait(timeout=90) == 0
    (completed,) = [e for e in events(log) if e.get("event") == "series_completed"]
    assert "mdoc unchanged for 6 s" in completed["reason"]
    check_stack(out, tilts, tilt_axis_deg=-94.7)  # not the series mdoc's 85.3
    table = starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]
    assert list(table["rlnTomoNominalTiltAxisAngle"]) == pytest.approx([-94.7] * len(tilts))


def test_sigkill_half_way_then_restart_keeps_every_pre_exposure_exact(tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    result: list = []
    writer = threading.Thread(target=lambda: result.extend(simulate(
        watch, 22, tilt_interval_s=0.4)))
    daemon = start_daemon(watch, out, log, *SERIES_FLAGS)
    try:
        wait_for(log, "service_ready", 1, 30)
        writer.start()
        wait_for(log, "movie_done", 3)
        wait_for(log, "movie_started", 4)  # killed with a movie in hand
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        writer.join(60)
        daemon = start_daemon(watch, out, log, *SERIES_FLAGS, "--exit-when-idle", "2")
        assert daemon.wait(timeout=90) == 0
    finally:
        writer.join(60)
        if daemon.poll() is None:
            daemon.kill()
    tilts = result
    assert len(tilts) == 7
    check_pre_exposures_exact(out, tilts)
    check_stack(out, tilts)
    table = rows(out)
    assert len(table) == 7 and {r["status"] for r in table} == {"done"}
    assert sum(e.get("event") == "series_started" for e in events(log)) == 1  # state persisted


def _write_movies(watch: Path, names: list[str], seed: int) -> None:
    from correction.synthetic import render_movie
    from daemon.simulation.movies import write_movie_progressively

    rng = np.random.default_rng(seed)
    for name in names:
        frames = render_movie(rng, shape_yx=SHAPE, n_frames=N_FRAMES, gain=None, n_hot_pixels=0,
                              pixel_size_A=1.1).frames
        write_movie_progressively(watch / name, frames, pixel_size_A=1.1, frame_interval_s=0)


def test_truncated_section_and_missing_mdoc_give_warnings_and_recorded_fallbacks(tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    # TS_01: its mdoc's last section was cut after SubFramePath (no TimeStamp, no DateTime)
    tilts = simulate(watch, 23, n_tilts=3, tilt_interval_s=0.0, frame_interval_s=0.0, lock=False)
    text = series_mdoc_text("TS_01", tilts, pixel_size_A=1.1, shape_yx=SHAPE, n_frames=N_FRAMES)
    cut = text.rindex("NumSubFrames")
    (watch / "TS_01.mrc.mdoc").write_text(text[:cut])
    # TS_02: no mdoc at all; the file-name pattern and the configured dose per tilt are used
    names = ["TS_02_002_-3.0.mrc", "TS_02_000_0.0.mrc", "TS_02_001_3.0.mrc"]
    _write_movies(watch, names, 24)
    daemon = start_daemon(watch, out, log, "--tilt-series", "on", "--metadata-wait", "1.5",
                          "--dose-per-tilt", "2.5", "--mdoc-quiet", "1",
                          "--series-idle-timeout", "1",
                          "--exit-when-idle", "2")
    assert daemon.wait(timeout=90) == 0
    for t in tilts:
        tilt = motion(out, t.movie.path)["tilt"]
        assert tilt["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
        assert tilt["dose_e_A2"] == pytest.approx(t.dose_e_A2, abs=1e-9)  # read before the cut
        # the cut section has no time, but every section its PriorRecordDose
        assert tilt["order_source"] == "PriorRecordDose"
        assert any("incomplete section" in w for w in tilt["warnings"])
    for k, name in enumerate(sorted(names)):
        record = motion(out, watch / name)
        tilt = record["tilt"]
        assert (tilt["match_source"], tilt["dose_source"]) == ("filename", "configured")
        assert tilt["pre_exposure_e_A2"] == pytest.approx(2.5 * k)
        assert record["dose"]["pre_exposure_e_A2"] == pytest.approx(2.5 * k)
    warned = {e.get("event") for e in events(log) if e.get("level") == "warning"}
    assert {"movie_metadata_warning", "movie_metadata_fallback"} <= warned
    assert (out / "TS_01" / "TS_01.mrc").is_file() and (out / "TS_02" / "TS_02.mrc").is_file()
    assert not any(e.get("level") == "error" for e in events(log))
    # AreTomo3 reads both stack mdocs: one line of each key per tilt. A tilt whose time no
    # mdoc gave (the cut section, the series of no mdoc) had no DateTime line: skipped whole
    for series in ("TS_01", "TS_02"):
        stack_mdocs = sorted((out / series).glob("*.mdoc"))  # one per stack, and S.st's
        assert len(stack_mdocs) == 5
        for stack_mdoc in stack_mdocs:
            assert set(mdoc_key_counts(stack_mdoc).values()) == {3}, stack_mdoc.name


def test_metadata_changed_after_correction_redoes_the_movies_and_reassembles(tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    tilts = simulate(watch, 25, n_tilts=3, tilt_interval_s=0.0, frame_interval_s=0.0)
    daemon = start_daemon(watch, out, log, "--tilt-series", "on", "--metadata-wait", "8",
                          "--mdoc-quiet", "1", "--exit-when-idle", "2")
    try:
        wait_for(log, "series_completed", 1)
        # the operator corrects the first tilt's dose: every later pre-exposure moves
        mdoc = watch / "TS_01.mrc.mdoc"
        text = mdoc.read_text()
        old = f"ExposureDose = {tilts[0].dose_e_A2:.4f}"
        assert text.count(old) == 1
        mdoc.write_text(text.replace(old, "ExposureDose = 5.0000"))
        assert daemon.wait(timeout=90) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    redo = [e for e in events(log) if e.get("event") == "movie_redo_metadata_changed"]
    assert sorted(Path(e["movie"]).name for e in redo) == sorted(t.movie.path.name for t in tilts)
    assert all(e["reason"] for e in redo)
    running = 0.0
    for k, t in enumerate(tilts):
        dose = 5.0 if k == 0 else t.dose_e_A2
        tilt = motion(out, t.movie.path)["tilt"]
        assert tilt["dose_e_A2"] == pytest.approx(dose, abs=1e-9)
        assert tilt["pre_exposure_e_A2"] == pytest.approx(running, abs=1e-9)
        running += dose
    assert [e.get("event") for e in events(log) if e.get("event", "").startswith("series_")
            and e.get("event") in ("series_completed", "series_reopened")] == [
        "series_completed", "series_reopened", "series_completed"]
    with open(out / "TS_01" / "TS_01.csv") as fh:
        table = {r["movie"]: r for r in csv.DictReader(fh)}
    assert float(table[tilts[2].movie.path.name]["pre_exposure_e_A2"]) == pytest.approx(
        5.0 + tilts[1].dose_e_A2, abs=1e-4)


def test_bad_filename_pattern_is_a_configuration_error(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    argv = ["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--dose-per-frame", "1"]
    assert main([*argv, "--filename-pattern", "(unclosed"]) == 78
    assert "--filename-pattern is not a regular expression" in capsys.readouterr().err
    assert main([*argv, "--filename-pattern", r"(?P<series>\w+)"]) == 78  # no angle group
    (tmp_path / "c.toml").write_text('dose_per_tilt = -1.0\n')
    assert main([*argv, "--config", str(tmp_path / "c.toml")]) == 78
    assert "--dose-per-tilt must be > 0" in capsys.readouterr().err  # a known key, checked


def test_demo_runs_a_tilt_series_session_by_default_and_one_movie_with_single(tmp_path, capsys):
    import structlog

    try:  # the demo configures logging onto capsys' stream, which closes after this test
        assert main(["demo", str(tmp_path / "tomo"), "--size", "128", "--frames", "4",
                     "--tilts", "5"]) == 0
    finally:
        structlog.reset_defaults()
    text = capsys.readouterr().out
    assert "5 of 5 movies corrected" in text and "5 pre-exposures exact" in text
    errors = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("  ") and line.split()[-1].replace(".", "").isdigit()
              and "/" in line]
    assert len(errors) == 5 and max(errors) < 0.3  # px RMS against the rendered drift
    with mrcfile.open(tmp_path / "tomo" / "motioncorr" / "TS_01" / "TS_01_DW.mrc") as mrc:
        assert mrc.data.shape == (5, 128, 128)
    assert main(["demo", str(tmp_path / "one"), "--single", "--size", "128", "--frames", "4"]) == 0
    assert (tmp_path / "one" / "corrected" / "demo_movie_DW.mrc").is_file()


def test_observers_receive_series_started_updated_per_movie_and_completed_with_stacks(tmp_path):
    from correction.params import CorrectionParams, DoseParams
    from daemon.settings.config import Config
    from daemon.engine.service import Service
    from daemon.events import ServiceListener
    from daemon.series.options import resolver_from_config

    watch, out = tmp_path / "w", tmp_path / "out"
    tilts = simulate(watch, 26, n_tilts=3, tilt_interval_s=0.0, frame_interval_s=0.0, lock=False)
    out.mkdir()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.1,
                    exit_when_idle_s=0.5, polling="on", log_level="warning",
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3, "exposure_filtered": True})
    seen = []

    class Recorder(ServiceListener):
        def on_series_event(self, event):
            seen.append(event)

    resolver = resolver_from_config(config)
    assert Service(config, listeners=[Recorder()], resolver=resolver).run() == 0
    assert [e.kind for e in seen] == ["started", "updated", "updated", "updated", "completed"]
    assert [e.n_done for e in seen] == [0, 1, 2, 3, 3] and {e.n_failed for e in seen} == {0}
    last = seen[-1]
    assert (last.series, last.n_expected) == ("TS_01", 3)
    assert last.mdoc == str(watch / "TS_01.mrc.mdoc")
    assert last.accumulated_dose_e_A2 == pytest.approx(sum(t.dose_e_A2 for t in tilts))
    assert {"sum", "dw", "even", "odd", "exposure_filtered", "tlt", "csv"} <= set(last.stacks)
    assert all(Path(p).is_file() for p in last.stacks.values())


def _write_pausing_until_held(movie: Path, frames: np.ndarray, log: Path, said: str) -> None:
    """Write ``movie`` as a TIFF page by page, pausing after 3 pages until the daemon says it
    waits for more (``movie_incomplete``, its reason starting ``said``), then the rest."""
    import tifffile

    with open(movie, "wb") as fh, tifffile.TiffWriter(fh) as writer:
        for frame in frames[:3]:
            writer.write(frame, contiguous=False)
        fh.flush()
        deadline = time.monotonic() + 60
        while not any(e.get("event") == "movie_incomplete" and e.get("reason", "").startswith(
                f"{said}, the file has 3 so far") for e in events(log)):
            assert time.monotonic() < deadline, "the paused TIFF was not held back"
            time.sleep(0.05)
        for frame in frames[3:]:
            writer.write(frame, contiguous=False)


def test_a_tilt_whose_tiff_writer_pauses_between_pages_waits_for_the_frames_its_section_lists(
        tmp_path):
    """The section of a tilt can be in the series mdoc while its frames are still being saved;
    a TIFF that pauses between pages reads as complete (its last page decodes). The section's
    ``NumSubFrames`` says it is not: the tilt waits and is corrected once, with every frame
    (it was corrected with 3 of 6 frames, published as done, then redone)."""
    import datetime as dt
    from types import SimpleNamespace

    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    movie = watch / "TS_01_000_0.0.tif"
    tilt = SimpleNamespace(movie=SimpleNamespace(path=movie), tilt_deg=0.0, acquisition_index=0,
                           dose_e_A2=3.0, pre_exposure_e_A2=0.0,
                           acquired_at=dt.datetime(2026, 1, 1, 9))
    (watch / "TS_01.mrc.openTS").write_text("")
    (watch / "TS_01.mrc.mdoc").write_text(series_mdoc_text(
        "TS_01", [tilt], pixel_size_A=1.1, shape_yx=SHAPE, n_frames=6))
    frames = np.random.default_rng(5).poisson(2.0, (6, *SHAPE)).astype(np.uint8)
    with running_daemon(watch, out, log, *SERIES_FLAGS, "--incomplete-grace", "60",
                         "--pixel-size", "1.1"):
        _write_pausing_until_held(movie, frames, log, "the mdoc says 6 frames")
        wait_for(log, "movie_done", 1)
        wait_for_heartbeats(out, 3)  # a redo would follow within a few scans
    assert [(r["status"], r["path"]) for r in rows(out)] == [("done", str(movie))]
    assert motion(out, movie)["frames"] == 6
    assert not any(e.get("event") == "movie_changed" for e in events(log))


def test_a_movie_of_no_mdoc_whose_tiff_writer_pauses_waits_for_the_frames_of_the_one_before(
        tmp_path):
    """No mdoc says how many frames a single-particle movie has; a TIFF whose writer pauses
    between pages for longer than the settle time is a whole TIFF of fewer frames. It was
    corrected with 3 of 6 frames, then again with each page (for good if the writer died).
    The movie before it in its folder had 6: it waits for them, and is corrected once."""
    import tifffile

    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    frames = np.random.default_rng(6).poisson(2.0, (2, 6, *SHAPE)).astype(np.uint8)
    tifffile.imwrite(watch / "FoilHole_1_Data_1_fractions.tiff", frames[0])
    paused = watch / "FoilHole_1_Data_2_fractions.tiff"
    with running_daemon(watch, out, log, "--tilt-series", "off", "--incomplete-grace", "60",
                         "--pixel-size", "1.1"):
        wait_for(log, "movie_done", 1)
        _write_pausing_until_held(paused, frames[1], log, "the movie before it here had 6 frames")
        wait_for(log, "movie_done", 2)
        wait_for_heartbeats(out, 3)  # a redo would follow within a few scans
    assert sorted(r["path"] for r in rows(out) if r["status"] == "done") == sorted(
        str(p) for p in watch.glob("*.tiff"))
    assert motion(out, paused)["frames"] == 6
    assert sum(e.get("event") == "movie_done" for e in events(log)) == 2


_HELD_FOR_200_S = ("--tilt-series", "off", "--pixel-size", "1.1", "--incomplete-grace", "200")


def _drop_movie(rng: np.random.Generator, written: Path, watch: Path, n_frames: int) -> None:
    """A whole MRC of ``n_frames`` counted frames, moved into ``watch`` complete."""
    with mrcfile.new(written) as mrc:
        mrc.set_data(rng.poisson(1.0, (n_frames, 64, 64)).astype(np.int16))
    written.rename(watch / written.name)


def test_an_eer_a_raw_frame_or_two_short_of_the_one_before_is_not_held_back(tmp_path):
    """EER exposures of one setting differ by a raw frame or two: within 2 % a movie is not
    taken for a paused writer's and is corrected at once, not after the incomplete grace."""
    from eer_writer import write_eer

    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(7)
    with running_daemon(watch, out, log, *_HELD_FOR_200_S, "--eer-group", "5"):
        for count, (name, n) in enumerate((("a.eer", 50), ("b.eer", 49)), start=1):
            write_eer(tmp_path / name, [(rng.random((64, 64)) < 0.2).astype(np.uint8)
                                        for _ in range(n)], shape_yx=(64, 64))
            (tmp_path / name).rename(watch / name)
            wait_for(log, "movie_done", count, timeout_s=100)  # held: 200 s
    assert not any(e.get("event") == "movie_incomplete" for e in events(log))


def test_an_mrc_a_frame_short_of_the_one_before_waits_for_the_rest(tmp_path):
    """An MRC's or TIFF's frames are its exposure setting's, exactly: a writer that paused a
    frame or two short (a TIFF appended page by page on a slow share) was corrected then, and
    again at each frame after, within the EER's slack of 2 frames."""
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(7)
    with running_daemon(watch, out, log, "--tilt-series", "off", "--pixel-size", "1.1",
                         "--incomplete-grace", "3"):
        for count, (name, n) in enumerate((("a.mrc", 10), ("b.mrc", 9)), start=1):
            _drop_movie(rng, tmp_path / name, watch, n)
            wait_for(log, "movie_done", count, timeout_s=100)
    held = [e for e in events(log) if e.get("event") == "movie_short_of_frames"]
    assert [Path(e["movie"]).name for e in held] == ["b.mrc"]
    assert "the movie before it here had 10 frames, the file has 9" in held[0]["reason"]


def test_a_change_to_a_shorter_exposure_holds_its_first_movie_only_until_the_second(tmp_path):
    """Two movies of the same shorter count are a new exposure setting, not a paused writer:
    every shorter movie waited for the first one's incomplete grace (120 s by default), and the
    first said it was corrected short."""
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(9)
    with running_daemon(watch, out, log, *_HELD_FOR_200_S):
        _drop_movie(rng, tmp_path / "a.mrc", watch, 20)
        wait_for(log, "movie_done", 1)
        for name in ("b.mrc", "c.mrc"):
            _drop_movie(rng, tmp_path / name, watch, 10)
        wait_for(log, "movie_done", 3, timeout_s=100)  # held: 200 s
    assert not any(e.get("event") == "movie_short_of_frames" for e in events(log))
    assert any(e.get("event") == "folder_exposure_changed" for e in events(log))


def test_a_quarantined_file_does_not_set_the_frames_the_next_movie_waits_for(tmp_path):
    """A file of 400 frames of 8 x 8 pixels (no movie: refused by its worker) set the count
    the next movie of its folder was held to: a whole movie of 10 frames waited the
    incomplete grace and was said to be corrected short. Once the file it came from has
    failed, the count measures nothing."""
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(12)
    with running_daemon(watch, out, log, *_HELD_FOR_200_S):
        with mrcfile.new(tmp_path / "junk.mrc") as mrc:
            mrc.set_data(rng.poisson(1.0, (400, 8, 8)).astype(np.int16))
        (tmp_path / "junk.mrc").rename(watch / "junk.mrc")
        wait_for(log, "movie_started", 1)
        _drop_movie(rng, tmp_path / "good.mrc", watch, 10)
        wait_for(log, "movie_done", 1, timeout_s=100)  # held: 200 s
    assert not any(e.get("event") == "movie_short_of_frames" for e in events(log))


def test_movies_of_another_kind_in_the_folder_are_not_compared_frame_for_frame(tmp_path):
    """An EER counts raw frames, an MRC frames: an MRC of 8 frames after an EER of 40 raw
    frames in the same folder is no paused writer's (it was held for the incomplete grace)."""
    from eer_writer import write_eer

    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(10)
    write_eer(tmp_path / "e.eer", [(rng.random((64, 64)) < 0.2).astype(np.uint8)
                                   for _ in range(40)], shape_yx=(64, 64))
    (tmp_path / "e.eer").rename(watch / "e.eer")
    with running_daemon(watch, out, log, *_HELD_FOR_200_S, "--eer-group", "5"):
        wait_for(log, "movie_done", 1)
        _drop_movie(rng, tmp_path / "m.mrc", watch, 8)
        wait_for(log, "movie_done", 2, timeout_s=100)  # held: 200 s
    assert not any(e.get("event") == "movie_incomplete" for e in events(log))


def test_a_short_movie_corrected_before_a_restart_is_not_held_back_again(tmp_path):
    """After a restart nothing remembers the frames of the movie before it: a version the
    state already holds is no news (it waited the incomplete grace again and said it was
    corrected with its frames, though it was not corrected again)."""
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(8)
    flags = ("--tilt-series", "off", "--pixel-size", "1.1", "--incomplete-grace", "3",
             "--exit-when-idle", "2")
    _drop_movie(rng, tmp_path / "a.mrc", watch, 12)
    first = start_daemon(watch, out, log, *flags)
    try:
        wait_for(log, "movie_done", 1)
        _drop_movie(rng, tmp_path / "b.mrc", watch, 6)  # half the frames of the one before
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
    assert [e["event"] for e in events(log) if e.get("event") in (
        "movie_short_of_frames", "movie_done")] == ["movie_done", "movie_short_of_frames",
                                                     "movie_done"]
    seen = len(events(log))
    assert start_daemon(watch, out, log, *flags).wait(timeout=60) == 0
    again = [e.get("event") for e in events(log)[seen:]]
    assert "movie_incomplete" not in again and "movie_short_of_frames" not in again


def test_a_series_folder_that_lists_empty_for_a_while_does_not_complete_its_series_early(
        tmp_path):
    """A network share reconnecting (or a mount dropped for seconds) lists the series folder
    empty: the ``.openTS`` lock is missing, but so is the mdoc. The series was completed with
    the tilts done so far (a false completion on the feed, partial stacks for the next step),
    then re-opened."""
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    session, away = watch / "session", tmp_path / "away"
    session.mkdir(parents=True)
    away.mkdir()
    daemon = start_daemon(watch, out, log, *SERIES_FLAGS)

    def blip_after_the_third_tilt(tilt) -> None:
        blip_after_the_third_tilt.n += 1
        if blip_after_the_third_tilt.n == 3:
            wait_for(log, "movie_done", 3)
            # the lock goes last and comes back first: no scan may see the mdoc without it,
            # which is SerialEM's real end of a series
            def lock_last(entry: Path) -> bool:
                return entry.name.endswith(".openTS")

            for entry in sorted(session.iterdir(), key=lock_last):
                entry.rename(away / entry.name)
            wait_for_heartbeats(out, 4)  # 2 s: 20 scans, at least 4 however slow
            for entry in sorted(away.iterdir(), key=lock_last, reverse=True):
                entry.rename(session / entry.name)

    blip_after_the_third_tilt.n = 0
    try:
        simulate(session, 31, n_tilts=5, on_tilt=blip_after_the_third_tilt)
        wait_for(log, "series_completed", 1)
        wait_for_heartbeats(out, 2)  # a re-opening would follow
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    series_events = [(e["event"], e.get("tilts")) for e in events(log)
                     if e.get("event") in ("series_completed", "series_reopened")]
    assert series_events == [("series_completed", 5)]


@pytest.mark.parametrize("daemon_running", [True, False], ids=["retry-while-running",
                                                                 "retry-while-stopped"])
def test_a_tilt_quarantined_at_validation_then_retried_is_corrected_once_with_its_series_dose(
        tmp_path, daemon_running):
    """A tilt whose file is not a valid movie at first sight is quarantined before any metadata
    is resolved; the file is mended (its size and mtime unchanged) and ``motionwatch retry``
    issued, while the daemon runs or while it is stopped. Its quarantined row had the configured
    dose and no tilt: it was corrected with 1 e/Å² per frame and no pre-exposure, then redone
    with its series' dose ("no tilt record"); retried while stopped, both rows were corrected at
    the next start. It goes the way of a new tilt now: corrected once, with its series' dose and
    pre-exposure, and into its series' stacks."""
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    tilts = simulate(watch, 27, n_tilts=3, tilt_interval_s=0.0, frame_interval_s=0.0, lock=False)
    bad = tilts[1].movie.path
    mode = spoil_mrc_header(bad)
    flags = ("--tilt-series", "on", "--metadata-wait", "30", "--mdoc-quiet", "1",
             "--exit-when-idle", "2")
    daemon = start_daemon(watch, out, log, *flags)
    try:
        wait_for(log, "movie_quarantined", 1)
        mend_mrc_header(bad, mode)
        if not daemon_running:
            assert daemon.wait(timeout=90) == 0
        assert main(["retry", str(out)]) == 0
        if not daemon_running:
            daemon = start_daemon(watch, out, log, *flags)
        assert daemon.wait(timeout=90) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    (quarantined,) = [e for e in events(log) if e.get("event") == "movie_quarantined"]
    assert quarantined["movie"] == str(bad) and "not a movie" in quarantined["reason"]
    started = [Path(e["movie"]).name for e in events(log) if e.get("event") == "movie_started"]
    assert sorted(started) == sorted(t.movie.path.name for t in tilts)  # each exactly once
    assert not any(e.get("event") == "movie_redo_metadata_changed" for e in events(log))
    check_pre_exposures_exact(out, tilts)
    assert [(r["path"], r["status"]) for r in rows(out)] == [
        (str(t.movie.path), "done") for t in tilts]
    check_stack(out, tilts)  # retried after its series completed without it: assembled again
