"""`motionwatch watch` end to end: a simulated acquisition, SIGKILL restarts, bad files.

The daemon runs as a real subprocess (``python -m daemon watch``) with the real correction
pipeline on small synthetic MRC movies (256^2 x 6 frames) written the way a detector writes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
from daemon_process import events, rows, spawn, watch_argv

from daemon.simulation.movies import simulate_session, write_movie_progressively

N_FRAMES = 6
SHAPE = (256, 256)
OUTPUT_SUFFIXES = (".mrc", "_DW.mrc", "_EVN.mrc", "_ODD.mrc", ".motion.json")
PICTURE_SUFFIXES = (".thumb.png", ".spectrum.png", ".drift.png")  # quick-look, with the set
HANDOFF_SUFFIXES = (".star", ".xml")  # RELION motion STAR, Warp's per-movie xml (daemon/handoff)


def start_daemon(watch: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    return spawn(watch_argv(
        watch, out, "--dose-per-frame", "1.0", "--settle-time", "0.3", "--scan-interval", "0.1",
        "--heartbeat", "0.5", "--incomplete-grace", "2", "--retry-delay", "0.2",
        "--publish", "tcp://127.0.0.1:*", *extra), log)  # a free port: runs may overlap


def check_outputs(out: Path, movie: Path, n_frames: int) -> dict:
    """Exactly one complete, readable set of outputs of the final version of ``movie``."""
    stem = movie.stem
    for suffix in OUTPUT_SUFFIXES:
        assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix} missing"
    record = json.loads((out / f"{stem}.motion.json").read_text())
    st = movie.stat()
    assert record["source_file"]["size"] == st.st_size
    assert record["source_file"]["mtime_ns"] == st.st_mtime_ns
    assert record["frames"] == n_frames
    for suffix in OUTPUT_SUFFIXES[:4]:
        with mrcfile.open(out / f"{stem}{suffix}", permissive=False) as mrc:
            assert mrc.data.shape == SHAPE and np.isfinite(mrc.data).all()
    return record


def test_simulated_acquisition_every_movie_corrected_exactly_once_never_before_complete(tmp_path):
    watch, out, log = tmp_path / "session", tmp_path / "session" / "motioncorr", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(5)
    backlog = simulate_session(watch, n_movies=2, rng=rng, name="backlog_{index:02d}.mrc",
                               frame_interval_s=0.0, movie_interval_s=0.0, rename_indices=())
    # the slow writer below pauses 0.6 s between frames: an incomplete grace of 10 s (not the
    # helper's 2 s) keeps a load-delayed frame from turning the partial movie into a rejection
    daemon = start_daemon(watch, out, log, "--exit-when-idle", "2", "--incomplete-grace", "10")
    try:
        # `motionwatch status` reads the state while the daemon runs
        deadline = time.monotonic() + 30
        while True:
            report = subprocess.run([sys.executable, "-m", "daemon", "status", str(out), "--json"],
                                    capture_output=True, text=True)
            live_status = json.loads(report.stdout) if report.returncode == 0 else None
            if (live_status and live_status["counts"]["done"] >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        live = simulate_session(watch, n_movies=4, rng=rng, frame_interval_s=0.1,
                                movie_interval_s=0.2, rename_indices=(1,),
                                early_stop_indices=(2,))
        # one slow writer: frames arrive more slowly than the settle time, so only the format
        # check (file size vs header) keeps the partial movie from being read
        from correction.synthetic import render_movie

        slow = watch / "slow.mrc"
        frames = render_movie(rng, shape_yx=SHAPE, n_frames=N_FRAMES, gain=None, n_hot_pixels=0,
                              pixel_size_A=1.1).frames
        write_movie_progressively(slow, frames, pixel_size_A=1.1, frame_interval_s=0.6)
        assert daemon.wait(timeout=90) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert live_status["daemon"]["running"] is True and live_status["counts"]["done"] >= 1
    movies = [m.path for m in backlog + live] + [slow]
    for movie in movies:
        check_outputs(out, movie, N_FRAMES)
    table = rows(out)
    assert sorted(r["path"] for r in table) == sorted(str(m) for m in movies)
    assert {(r["status"], r["attempts"]) for r in table} == {("done", 1)}
    done = [e["movie"] for e in events(log) if e.get("event") == "movie_done"]
    assert sorted(done) == sorted(str(m) for m in movies)  # each exactly once
    assert done[:2] == [str(m.path) for m in backlog]  # backlog first, in acquisition order
    summary = next(e for e in events(log) if e.get("event") == "movie_done")
    assert {"total_A", "max_frame_jump_A"} <= set(summary["drift"]) and summary["timings_s"]["total"] > 0
    # the journal's line a movie: timings in ms (unrounded, 416 characters of each ~1 KB line)
    assert all(round(v, 3) == v for v in summary["timings_s"].values()), summary["timings_s"]
    assert not any(e.get("level") == "error" for e in events(log))
    assert not list(out.glob(".*tmp*"))


def test_sigkill_at_random_points_then_restart_leaves_exactly_one_complete_set_per_movie(tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    n_movies = 20
    rng = np.random.default_rng(11)
    writer = threading.Thread(target=simulate_session, args=(watch,), kwargs=dict(
        n_movies=n_movies, rng=np.random.default_rng(12), frame_interval_s=0.02,
        movie_interval_s=0.05, rename_indices=(3, 9)))
    writer.start()
    kills = 0
    try:
        for attempt in range(6):
            started = sum(e.get("event") == "movie_started" for e in events(log))
            daemon = start_daemon(watch, out, log)
            if attempt % 2:  # anywhere: during start-up, scanning, correcting or idle
                time.sleep(rng.uniform(0.5, 2.5))
            else:  # while a movie is in hand: reading, aligning or writing its outputs
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline and sum(
                        e.get("event") == "movie_started" for e in events(log)) <= started:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 0.5))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            kills += 1
        writer.join(60)
        final = start_daemon(watch, out, log, "--exit-when-idle", "2")
        assert final.wait(timeout=90) == 0
    finally:
        writer.join(60)
    movies = sorted(watch.glob("movie_*.mrc"))
    assert len(movies) == n_movies and kills == 6
    for movie in movies:
        check_outputs(out, movie, N_FRAMES)
    expected = {"motionwatch.sqlite", "motionwatch.lock", "corrected_micrographs.star",
                "average"} | {f"{m.stem}{s}" for m in movies
                              for s in OUTPUT_SUFFIXES + PICTURE_SUFFIXES + HANDOFF_SUFFIXES}
    assert {p.name for p in out.iterdir()} == expected  # no temporaries, nothing extra
    table = rows(out)
    assert len(table) == n_movies and {r["status"] for r in table} == {"done"}
    for row in table:
        outputs = json.loads(row["outputs"])
        assert {Path(p).name for p in outputs.values()} == {
            f"{Path(row['path']).stem}{s}" for s in OUTPUT_SUFFIXES}
        assert all(Path(p).is_file() for p in outputs.values())
    # a restart recovers (redoes) only movies a killed daemon had in hand: started (or
    # recovered at its own start) and not logged finished since. Not only the daemon just
    # before: one killed during its start-up, before it recovered anything, leaves the movies
    # of the one before it still claimed, for the next. The ledger claims a movie just
    # before the "movie_started" line, so a kill in between leaves a claimed movie that no
    # line names yet: such a movie may be recovered too, but never one logged finished. (A
    # kill between the ledger's "done" and its log line may leave a finished movie unlogged,
    # so the converse is not asserted; the outputs above are the outcome.)
    runs: list[list[dict]] = []
    for e in events(log):
        if e.get("event") == "service_starting":
            runs.append([])
        if runs:
            runs[-1].append(e)
    logged: set[str] = set()  # movies named by a start or finish line so far
    in_hand: set[str] = set()  # taken by a daemon and not logged finished since
    for killed, following in zip(runs, runs[1:]):
        started = {e["movie"] for e in killed if e.get("event") == "movie_started"}
        finished = {e["movie"] for e in killed if e.get("event") in ("movie_done",
                                                                      "movie_quarantined")}
        in_hand |= started | {e["movie"] for e in killed if e.get("event") == "movie_recovered"}
        in_hand -= finished
        logged |= started | finished
        recovered = {e["movie"] for e in following if e.get("event") == "movie_recovered"}
        claimed_unlogged = {str(m) for m in movies} - logged
        assert recovered <= in_hand | claimed_unlogged


def test_bad_files_are_quarantined_with_reasons_and_later_movies_still_corrected(tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    rng = np.random.default_rng(3)
    simulate_session(watch, n_movies=1, rng=rng, name="good_first.mrc", frame_interval_s=0,
                     movie_interval_s=0, rename_indices=())
    # truncated: a complete movie cut short
    simulate_session(watch, n_movies=1, rng=rng, name="truncated.mrc", frame_interval_s=0,
                     movie_interval_s=0, rename_indices=())
    data = (watch / "truncated.mrc").read_bytes()
    (watch / "truncated.mrc").write_bytes(data[: len(data) - 70_000])
    # never completes: the writer stops after 3 of 6 frames and never rewrites the header
    from correction.synthetic import render_movie

    frames = render_movie(rng, shape_yx=SHAPE, n_frames=N_FRAMES, gain=None, n_hot_pixels=0,
                          pixel_size_A=1.1).frames
    write_movie_progressively(watch / "never.mrc", frames, pixel_size_A=1.1, stop_after=3,
                              frame_interval_s=0)
    (watch / "notamovie.mrc").write_bytes(b"PK\x03\x04 a zip file, not a movie" * 50)
    (watch / "garbage.tif").write_bytes(os.urandom(5000))
    (watch / "folder.mrc").mkdir()  # unreadable as a movie (chmod 000 does not stop root)
    daemon = start_daemon(watch, out, log, "--exit-when-idle", "2")
    try:
        time.sleep(1.0)
        simulate_session(watch, n_movies=1, rng=rng, name="good_after.mrc", frame_interval_s=0.05,
                         movie_interval_s=0, rename_indices=())
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    check_outputs(out, watch / "good_first.mrc", N_FRAMES)
    check_outputs(out, watch / "good_after.mrc", N_FRAMES)
    status = {Path(r["path"]).name: r for r in rows(out)}
    assert status["good_first.mrc"]["status"] == status["good_after.mrc"]["status"] == "done"
    for name in ("truncated.mrc", "never.mrc", "notamovie.mrc", "garbage.tif", "folder.mrc"):
        assert status[name]["status"] == "quarantined", name
        assert status[name]["error"], name
        assert not (out / f"{Path(name).stem}.mrc").exists()
    assert "not a regular file" in status["folder.mrc"]["error"]
    assert "incomplete" in status["never.mrc"]["error"]
    assert "incomplete" in status["truncated.mrc"]["error"]
    quarantined = {Path(e["movie"]).name for e in events(log)
                   if e.get("event") == "movie_quarantined"}
    assert quarantined >= {"truncated.mrc", "never.mrc", "notamovie.mrc", "garbage.tif",
                           "folder.mrc"}  # each logged as it is recorded (folder.mrc was
    # "movie_ignored", though status counts it quarantined)

    report = subprocess.run([sys.executable, "-m", "daemon", "status", str(out), "--json"],
                            capture_output=True, text=True, check=True)
    summary = json.loads(report.stdout)
    assert summary["counts"]["done"] == 2 and summary["counts"]["quarantined"] == 5
    assert {Path(f["movie"]).name for f in summary["failures"]} >= {"never.mrc", "folder.mrc"}
    assert summary["daemon"]["running"] is False


def test_sigterm_stops_the_daemon_cleanly_with_status_0(tmp_path):
    watch, out, log = tmp_path / "w", tmp_path / "out", tmp_path / "log"
    watch.mkdir()
    daemon = start_daemon(watch, out, log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                e.get("event") == "service_ready" for e in events(log)):
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    logged = events(log)
    names = [e.get("event") for e in logged]
    assert names[-2:] == ["service_stopping", "service_stopped"]
    assert not (out / "motionwatch.sqlite-wal").exists()  # closed cleanly
    # the journal says which signal, which release started, and what the run left
    assert logged[-2]["reason"].startswith("SIGTERM: ")
    assert logged[-1]["counts"]["done"] == 0
    from daemon import __version__
    assert [e["version"] for e in logged if e.get("event") == "service_starting"] == [__version__]
