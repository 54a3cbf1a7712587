"""`motionwatch status` read-out and the simulated-session demo."""

import json
import os
import time
from pathlib import Path

from aretomo3_rules import mdoc_key_counts

from daemon.commands.cli import main
from daemon.series.mdoc import read_mdoc
from daemon.state.ledger import Ledger, MovieKey


def test_status_shows_counts_last_done_failures_and_backlog(tmp_path, capsys):
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        for name, mtime in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
            db.add(MovieKey(f"/d/{name}.mrc", 10, mtime, "f"))
        db.claim(MovieKey("/d/a.mrc", 10, 1, "f"))
        db.mark_done(MovieKey("/d/a.mrc", 10, 1, "f"), outputs={"sum": "/o/a.mrc"},
                     timings={"total": 1.0}, summary={"drift": {"total_A": 4.25}})
        db.claim(MovieKey("/d/b.mrc", 10, 2, "f"))
        db.mark_failed(MovieKey("/d/b.mrc", 10, 2, "f"), "b.mrc: 3 of 6 frames readable",
                       quarantine=True)
        db.set_service_state({"pid": 1, "heartbeat_wall": 0.0, "waiting": 2})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "daemon: not running" in text  # the heartbeat is ancient
    assert "1 done, 2 pending, 0 running, 0 failed, 1 quarantined" in text
    # what it last saw being written is no news once it is gone (stopped, or killed)
    assert "backlog: 2 to correct\n" in text and "being written" not in text
    assert "/d/a.mrc (drift 4.2 Å)" in text or "/d/a.mrc (drift 4.3 Å)" in text
    assert "quarantined: /d/b.mrc: b.mrc: 3 of 6 frames readable" in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["movie"] for r in status["backlog"]["next"]] == ["/d/c.mrc", "/d/d.mrc"]
    assert status["failures"][0]["reason"] == "b.mrc: 3 of 6 frames readable"


def test_status_of_a_folder_without_a_database_says_so(tmp_path, capsys):
    """And where else it may be: a service whose state_dir is set (its state on local disk,
    the outputs on a share) keeps it there, which the folder given does not show."""
    for command in ("status", "retry"):
        assert main([command, str(tmp_path)]) == 78
        err = capsys.readouterr().err
        assert "no state database" in err and "give --state-dir" in err


def test_demo_session_corrects_every_simulated_movie_accurately(tmp_path):
    lines = []
    done = __import__("daemon.commands.demo", fromlist=["demo_session"]).demo_session(
        tmp_path, n_movies=2, size_px=256, n_frames=6, say=lines.append)
    assert done == 2
    errors = [float(line.split("shift error ")[1].split()[0]) for line in lines
              if "shift error" in line]
    assert len(errors) == 2 and max(errors) < 0.2  # px RMS against the rendered truth
    assert (tmp_path / "motioncorr" / "demo_001_DW.mrc").is_file()
    # the optics go into every motion record, as `watch` writes them (RELION's defaults)
    record = json.loads((tmp_path / "motioncorr" / "demo_001.motion.json").read_text())
    assert record["optics"] == {"spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}


def _tilt_movie(db, name, mtime, series, pre, dose=3.0, *, done=True):
    key = MovieKey(f"/d/{name}", 10, mtime, "f")
    tilt = {"series": series, "movie": name, "dose_e_A2": dose, "pre_exposure_e_A2": pre}
    db.add(key, metadata={"extra_record": {"tilt": tilt}, "log_context": {"series": series}})
    if done:
        db.claim(key)
        db.mark_done(key, outputs={"sum": f"/o/{name}"}, timings={"total": 1.0}, summary={})


def test_status_lists_tilt_series_with_tilts_done_of_expected_dose_and_stack_folder(
        tmp_path, capsys):
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.add(MovieKey("/d/spa.mrc", 10, 1, "f"))  # a single-particle movie: no series
        # TS_01: three tilts acquired 0, +3, -3 (pre-exposures 0, 3, 6), complete and assembled
        for i, pre in enumerate((0.0, 3.0, 6.0)):
            _tilt_movie(db, f"TS_01_{i:03d}.tif", 10 + i, "TS_01", pre)
        db.set_series_state("TS_01", {
            "status": "complete", "expected_tilts": 3, "mdoc": "/d/TS_01.mrc.mdoc",
            "folder": "/o/TS_01", "stacks": {"sum": "/o/TS_01/TS_01.mrc"}})
        # TS_02: five tilts listed, one corrected, one waiting for a worker
        _tilt_movie(db, "TS_02_000.tif", 20, "TS_02", 0.0, 2.5)
        _tilt_movie(db, "TS_02_001.tif", 21, "TS_02", 2.5, 2.5, done=False)
        db.set_series_state("TS_02", {"status": "open", "expected_tilts": 5,
                                      "folder": "/o/TS_02", "stacks": {}})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "tilt series: 2 (1 completed, 1 open)" in text
    assert ("TS_01: completed, 3/3 tilts done, 9.0 e/Å² accumulated, stacks in /o/TS_01"
            in text)
    # its folder holds no stacks yet: not said to hold them (an --exit-when-idle run said so)
    assert ("TS_02: open, 1/5 tilts done, 5.0 e/Å² accumulated, no stacks yet (to be in "
            "/o/TS_02)") in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    series = {s["series"]: s for s in json.loads(capsys.readouterr().out)["series"]}
    assert set(series) == {"TS_01", "TS_02"}
    assert series["TS_01"]["status"] == "completed"
    assert (series["TS_01"]["tilts_done"], series["TS_01"]["tilts_expected"]) == (3, 3)
    assert series["TS_01"]["accumulated_dose_e_A2"] == 9.0
    assert series["TS_01"]["stack_folder"] == "/o/TS_01"
    assert series["TS_02"]["status"] == "open"
    assert (series["TS_02"]["tilts_done"], series["TS_02"]["tilts_expected"]) == (1, 5)
    assert series["TS_02"]["accumulated_dose_e_A2"] == 5.0


def test_status_says_when_a_completed_series_has_no_stacks(tmp_path, capsys):
    """Its assembly failed (a full disk, a name too long): before, plain "completed"."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        _tilt_movie(db, "TS_03_000.tif", 30, "TS_03", 0.0)
        db.set_series_state("TS_03", {
            "status": "complete", "expected_tilts": 1, "folder": "/o/TS_03", "stacks": {},
            "reason": "assembly failed: OSError: [Errno 28] No space left on device"})
    assert main(["status", str(tmp_path)]) == 0
    assert ("TS_03: completed, 1/1 tilts done, 3.0 e/Å² accumulated, stacks NOT written "
            "(assembly failed: OSError: [Errno 28] No space left on device)"
            in capsys.readouterr().out)


def test_a_stopped_daemons_countdown_to_the_next_assembly_try_is_not_shown_as_running(
        tmp_path, capsys):
    """The daemon persisted "(tried again in 10 s)" with a full disk's failure: once it has
    stopped, nothing is tried in 10 s; it is when the daemon starts again."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        _tilt_movie(db, "TS_04_000.tif", 40, "TS_04", 0.0)
        db.set_series_state("TS_04", {
            "status": "open", "expected_tilts": 1, "folder": "/o/TS_04", "stacks": {},
            "reason": "assembly failed: OSError: [Errno 28] No space left on device "
                      "(tried again in 10 s)"})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "daemon: not running" in text
    assert ("stacks NOT written (assembly failed: OSError: [Errno 28] No space left on device "
            "(tried again when the daemon starts))") in text
    assert "in 10 s" not in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert series["reason"].endswith("(tried again when the daemon starts)")


def test_status_of_a_session_without_tilt_series_has_an_empty_series_list(tmp_path, capsys):
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.add(MovieKey("/d/a.mrc", 10, 1, "f"))
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["series"] == []
    assert main(["status", str(tmp_path)]) == 0
    assert "tilt series" not in capsys.readouterr().out


def test_demo_run_twice_into_the_same_folder_starts_afresh_and_assembles_the_series(tmp_path):
    from daemon.commands.demo import demo_tilt_series

    kwargs = dict(n_tilts=2, size_px=128, n_frames=4)
    assert demo_tilt_series(tmp_path, say=lambda line: None, **kwargs)
    lines = []
    assert demo_tilt_series(tmp_path, say=lines.append, **kwargs)  # was: 300 s wait, "not assembled"
    assert any("removing the previous demo's frames/ and motioncorr/" in line for line in lines)
    with Ledger(tmp_path / "motioncorr" / "motionwatch.sqlite") as db:
        assert db.counts()["done"] == 2  # one row per movie, not the first run's as well
    # the stack mdoc has each key AreTomo3 needs once per tilt, ExposureTime from SerialEM's
    stack_mdoc = read_mdoc(tmp_path / "motioncorr" / "TS_01" / "TS_01.mrc.mdoc")
    source = read_mdoc(tmp_path / "frames" / "TS_01.mrc.mdoc")
    assert set(mdoc_key_counts(stack_mdoc.path).values()) == {2}
    assert sorted(s.exposure_time_s for s in stack_mdoc.sections) == sorted(
        s.exposure_time_s for s in source.sections)


def test_a_demo_given_a_relative_folder_records_absolute_paths(tmp_path, monkeypatch, capsys):
    """As the README runs it (``motionwatch demo ./motionwatch-demo``): the state database
    names each movie by its absolute path, as ``watch`` does, so a ``watch`` of the demo's
    folder afterwards finds them corrected. Before, the paths were relative: that ``watch``
    took them for new movies under other names (aliases), re-opened the series and made a
    second, phantom series of their file names."""
    from daemon.commands.demo import demo_tilt_series

    monkeypatch.chdir(tmp_path)
    assert demo_tilt_series(Path("demo"), say=lambda line: None, n_tilts=2, size_px=128,
                            n_frames=4)
    with Ledger(tmp_path / "demo" / "motioncorr" / "motionwatch.sqlite") as db:
        paths = {Path(r.key.path) for r in db.rows()}
    assert paths == set((tmp_path / "demo" / "frames").glob("TS_01_*.mrc")) and len(paths) == 2
    # the watch a user runs next, with the demo's settings: nothing to correct again
    capsys.readouterr()
    assert main(["watch", "demo/frames", "--out", "demo/motioncorr", "--gain",
                 "demo/demo_gain.mrc", "--dose-per-frame", "1.0", "--tilt-series", "on",
                 "--exit-when-idle", "1", "--no-publish", "--settle-time", "0.2"]) == 0
    logged = capsys.readouterr()
    assert "movie_started" not in logged.out + logged.err


def test_demo_refuses_a_folder_whose_frames_no_demo_wrote(tmp_path, capsys):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "precious.mrc").write_bytes(b"x")
    assert main(["demo", str(tmp_path), "--tilts", "1", "--size", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"motionwatch demo: {tmp_path}: holds frames/") and err.count("\n") == 1
    assert (tmp_path / "frames" / "precious.mrc").is_file()


def test_status_of_a_corrupt_or_empty_state_database_is_one_line_not_a_traceback(tmp_path,
                                                                                 capsys):
    for content in (b"garbage, not sqlite", b""):
        (tmp_path / "motionwatch.sqlite").write_bytes(content)
        for extra in ([], ["--json"]):
            assert main(["status", str(tmp_path), *extra]) == 78
            captured = capsys.readouterr()
            assert captured.out == ""
            assert captured.err.startswith(f"motionwatch status: {tmp_path / 'motionwatch.sqlite'}"
                                           ": not a readable state database")
            assert captured.err.count("\n") == 1


def _session_with_a_retried_movie(folder, n_done=40, heartbeat_wall=1_700_000_000.25):
    """a.mrc failed once then succeeded on retry; b.mrc's first version was quarantined and its
    rewritten version corrected; c.mrc is quarantined for good; two files still settle."""
    clock = iter(range(1_000_000_000, 2_000_000_000, 10))
    with Ledger(folder / "motionwatch.sqlite", clock=lambda: float(next(clock))) as db:
        a = MovieKey("/d/a.mrc", 10, 1, "f")
        db.add(a)
        db.claim(a)
        db.mark_failed(a, "worker crashed", quarantine=False)
        db.claim(a)
        db.mark_done(a, outputs={}, timings={}, summary={})
        b_old, b_new = MovieKey("/d/b.mrc", 10, 2, "f"), MovieKey("/d/b.mrc", 20, 3, "f")
        db.add(b_old)
        db.claim(b_old)
        db.mark_failed(b_old, "b.mrc: 3 of 6 frames readable", quarantine=True)
        db.add(b_new)
        db.claim(b_new)
        db.mark_done(b_new, outputs={}, timings={}, summary={})
        c = MovieKey("/d/c.mrc", 10, 4, "f")
        db.add(c)
        db.claim(c)
        db.mark_failed(c, "c.mrc: not an MRC movie", quarantine=True)
        for i in range(n_done):
            key = MovieKey(f"/d/many_{i:03d}.mrc", 10, 10 + i, "f")
            db.add(key)
            db.claim(key)
            db.mark_done(key, outputs={}, timings={}, summary={})
        db.set_service_state({"pid": 1, "heartbeat_wall": heartbeat_wall, "waiting": 2,
                              "waiting_examples": {"/d/e.tif": "settling",
                                                   "/d/f.mrc": "file is 100 bytes, header "
                                                               "needs 2048"}})


def test_status_lists_only_failures_not_corrected_since_and_waiting_files_by_name(
        tmp_path, capsys):
    """Faults issue item 11: failures of movies that later succeeded were listed, and waiting
    files were only counted."""
    _session_with_a_retried_movie(tmp_path, heartbeat_wall=time.time())  # a running daemon
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(f["movie"], f["status"]) for f in status["failures"]] == [("/d/c.mrc",
                                                                        "quarantined")]
    assert status["backlog"]["waiting"] == [
        {"movie": "/d/e.tif", "reason": "settling"},
        {"movie": "/d/f.mrc", "reason": "file is 100 bytes, header needs 2048"}]
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "waiting: /d/e.tif: settling" in text and "waiting: /d/f.mrc: file is 100" in text
    assert "/d/a.mrc" not in text.split("failures:")[1] and "b.mrc: 3 of 6" not in text


def test_status_times_are_iso_utc_like_the_feed(tmp_path, capsys):
    _session_with_a_retried_movie(tmp_path)
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["daemon"]["last_heartbeat"] == "2023-11-14T22:13:20.250Z"
    assert status["failures"][0]["updated"].endswith("Z")
    assert status["failures"][0]["updated"].startswith("2001-09-09T01:4")


def test_status_piped_into_head_stops_quietly_without_a_traceback(tmp_path):
    import subprocess
    import sys

    _session_with_a_retried_movie(tmp_path, n_done=2000)
    script = (f"{sys.executable} -m daemon status {tmp_path} --last 2000 | head -n 1; "
              f"exit ${{PIPESTATUS[0]}}")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("daemon: ")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0


def test_status_shows_where_each_movie_ran_and_the_clusters_state(tmp_path, capsys):
    key = MovieKey("/d/a.mrc", 10, 1, "f")
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.add(key)
        db.claim(key)
        db.mark_done(key, outputs={"sum": "/o/a.mrc"}, timings={"total": 1.0},
                     summary={"drift": {"total_A": 4.25},
                              "ran_on": {"host": "node7", "worker": "tcp://10.0.0.7:4100"}})
        db.set_service_state({"pid": 1, "heartbeat_wall": time.time(), "cluster": {
            "executor": "dask", "scheduler": "tcp://head:8786", "connected": True,
            "workers": 2, "threads": 2, "in_flight": 1, "max_in_flight": 2}})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "cluster: tcp://head:8786 connected, 2 workers / 2 threads, 1/2 in flight" in text
    assert "/d/a.mrc (drift 4.2 Å) on tcp://10.0.0.7:4100" in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["last_done"][0]["ran_on"]["host"] == "node7"
    assert status["daemon"]["cluster"]["workers"] == 2
    # the daemon gone (stopped, killed): its last view of the cluster is no news
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"heartbeat_wall": 0.0})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "daemon: not running" in text and "cluster:" not in text


def test_a_daemon_killed_outright_on_this_host_is_not_running_though_it_beat_a_moment_ago(
        tmp_path, capsys):
    """A SIGKILLed daemon cannot record that it stopped; its last heartbeat looked alive for
    3 minutes, with the movies it had in hand listed as in progress. On its own host, its
    process being gone says it at once; on another host the heartbeat's age still decides."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for host, pid, running in ((socket.gethostname(), gone.pid, False),
                               (socket.gethostname(), os.getpid(), True),
                               ("another-host", gone.pid, True)):
        with Ledger(tmp_path / "motionwatch.sqlite") as db:
            db.set_service_state({"pid": pid, "host": host, "heartbeat_wall": time.time(),
                                  "heartbeat_s": 10.0, "in_flight": ["/d/a.mrc"]})
        assert main(["status", str(tmp_path), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["daemon"]["running"] is running, (host, pid)
        assert status["backlog"]["in_flight"] == (["/d/a.mrc"] if running else [])


def test_a_movie_a_killed_daemon_was_correcting_counts_as_pending_not_running(tmp_path,
                                                                                capsys):
    """SIGKILLed while correcting a movie: its row still says running. Nothing runs once the
    daemon is gone; the movie is corrected again at the next start, so it is pending (and
    said to be interrupted), in the counts and the backlog alike."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        for name, mtime in (("a", 1), ("b", 2), ("c", 3)):
            db.add(MovieKey(f"/d/{name}.mrc", 10, mtime, "f"))
        db.claim(MovieKey("/d/a.mrc", 10, 1, "f"))
        db.set_service_state({"pid": 1, "heartbeat_wall": 0.0})  # long gone
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "daemon: not running" in text
    assert "0 done, 3 pending, 0 running, 0 failed, 0 quarantined (1 of the pending " \
           "interrupted" in text
    assert "backlog: 3 to correct\n" in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["running"] == 0 and status["counts"]["interrupted"] == 1
    assert status["counts"]["pending"] == status["backlog"]["pending"] == 3


def test_a_daemon_is_running_within_three_of_its_own_heartbeat_periods(tmp_path, capsys):
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"pid": 1, "heartbeat_wall": time.time() - 400,
                              "heartbeat_s": 300.0})
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["running"] is True


def test_status_of_a_running_daemon_counts_the_settled_movies_left_for_admission(tmp_path,
                                                                                capsys):
    """After a start with weeks of sessions in the watched folder a scan admits for at most
    2 s: status says how many settled movies its last scan left for the next."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.add(MovieKey("/d/a.mrc", 10, 1, "f"))
        db.set_service_state({"pid": os.getpid(), "heartbeat_wall": time.time(),
                              "heartbeat_s": 30.0, "waiting": 1,
                              "waiting_examples": {"/d/b.mrc": "settling"},
                              "admission_backlog": 5000, "in_flight": []})
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert ("backlog: 1 to correct, 1 waiting (being written, settling, or for their metadata), "
            "0 in progress, 5000 settled and waiting for admission (a scan admits for at most "
            "2 s)") in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backlog"]["waiting_for_admission"] == 5000


def test_a_file_quarantined_again_under_other_settings_is_one_failure(tmp_path, capsys):
    """An empty file fails alike whatever the settings: after a change of settings it was
    quarantined again under the new ones, and status (and a restarted feed's state) listed
    it twice."""
    from daemon.feed.listener import restored_state

    with Ledger(tmp_path / "motionwatch.sqlite") as ledger:
        for fingerprint in ("patches-5", "patches-1"):
            key = MovieKey("/d/empty.mrc", 0, 1, fingerprint)
            ledger.add(key)
            ledger.claim(key)
            ledger.mark_failed(key, "file is 0 bytes", quarantine=True)
            time.sleep(0.01)
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(f["movie"], f["status"]) for f in status["failures"]] == [("/d/empty.mrc",
                                                                        "quarantined")]
    _, _, errors, _ = restored_state(tmp_path / "motionwatch.sqlite", out_dir=tmp_path)
    assert [e["path"] for e in errors] == ["/d/empty.mrc"]


def test_status_shows_a_refused_name_with_an_escape_sequence_without_running_it(tmp_path,
                                                                               capsys):
    """A movie named with an OSC sequence is refused at intake and listed as a failure: the
    terminal must not have its title set or its line erased by ``status``."""
    name = "/d/osc\x1b]0;PWNED\x07\x1b[2K\rlooks fine.mrc"
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.add(MovieKey(name, -1, -1, "f"), status="quarantined",
               error="its name holds a control character")
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "osc\ufffd]0;PWNED\ufffd\ufffd[2K\ufffdlooks fine.mrc" in out


def test_status_backlog_counts_failed_movies_waiting_for_their_retry(tmp_path):
    """Mutant R1 (status.py:188, failed rows left out of the backlog)."""
    from daemon.commands.status import collect_status
    from daemon.state.ledger import DB_NAME, Ledger, MovieKey

    with Ledger(tmp_path / DB_NAME) as db:
        for name in ("a", "b", "c"):
            db.add(MovieKey(f"/d/{name}.mrc", 100, 1, "f"))
        db.claim(MovieKey("/d/a.mrc", 100, 1, "f"))
        assert db.mark_failed(MovieKey("/d/a.mrc", 100, 1, "f"), "worker died",
                              quarantine=False, retry_delay_s=60) == "failed"
    status = collect_status(tmp_path / DB_NAME)
    assert (status["counts"]["pending"], status["counts"]["failed"]) == (2, 1)
    assert status["backlog"]["pending"] == 3


def test_status_lists_the_failed_tilts_of_a_series(tmp_path, monkeypatch):
    """Mutant R4 (status.py:98, tilts_failed always 0)."""
    from daemon.commands import status as status_cmd
    from daemon.series.stored_state import SeriesTally

    tally = SeriesTally()
    tally.done, tally.failed, tally.records = 5, 2, 7
    monkeypatch.setattr(status_cmd, "series_tallies", lambda *a, **k: {"TS_01": tally})
    (entry,) = status_cmd._series({"TS_01": {"status": "open", "expected_tilts": 41}}, [], None,
                                      running=True)
    assert (entry["tilts_done"], entry["tilts_failed"], entry["tilts_expected"]) == (5, 2, 41)


def test_movies_put_back_by_trouble_outside_them_are_not_shown_as_failed(tmp_path, capsys):
    """While a Dask scheduler is gone (or the disk is full) the movies it had in hand wait,
    never counted against them; status called them failed beside the movie that truly failed
    (a worker that died on it)."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        for name in ("a", "b", "c"):
            db.add(MovieKey(f"/d/{name}.mrc", 100, 1, "f"))
            db.claim(MovieKey(f"/d/{name}.mrc", 100, 1, "f"))
        for name in ("a", "b"):
            db.mark_failed(MovieKey(f"/d/{name}.mrc", 100, 1, "f"),
                           "Dask scheduler tcp://h:8786 unreachable; the movie waits and is "
                           "redone when it is back", quarantine=False, count=False,
                           retry_delay_s=60)
        db.mark_failed(MovieKey("/d/c.mrc", 100, 1, "f"), "worker died", quarantine=False,
                       retry_delay_s=60)
    assert main(["status", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert ("movies: 0 done, 0 pending, 0 running, 1 failed, 0 quarantined, 2 put back "
            "(trouble outside them; they wait for it to pass)") in text
    assert "  put back: /d/a.mrc: Dask scheduler tcp://h:8786 unreachable" in text
    assert "  failed: /d/c.mrc: worker died" in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["counts"]["failed"], status["counts"]["put_back"]) == (3, 2)
    assert status["backlog"]["pending"] == 3
    assert {r["movie"]: r.get("put_back", False) for r in status["failures"]} == {
        "/d/a.mrc": True, "/d/b.mrc": True, "/d/c.mrc": False}


def test_a_movie_corrected_again_under_other_settings_is_listed_once_among_the_last_done(
        tmp_path, capsys):
    """Each parameter set keeps its done row: the movie was listed twice under "last done"."""
    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        for key in (MovieKey("/d/a.mrc", 10, 1, "300kV"), MovieKey("/d/b.mrc", 10, 2, "f"),
                    MovieKey("/d/a.mrc", 10, 1, "200kV")):
            db.add(key)
            db.claim(key)
            db.mark_done(key, outputs={"sum": "/o/x.mrc"}, timings={"total": 1.0}, summary={})
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["movie"] for r in status["last_done"]] == ["/d/a.mrc", "/d/b.mrc"]


def test_a_daemon_that_holds_its_folder_but_stopped_beating_is_running_and_silent(tmp_path,
                                                                                  capsys):
    """A daemon stopped by SIGSTOP (or hung on a share) read 'running, healthy' for three
    minutes, then 'not running' while it still held the folder: a second daemon was refused
    as 'locked'. Its lock says it runs; its heartbeat's age says it is silent."""
    import fcntl

    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"pid": os.getpid(), "host": "another-host", "healthy": True,
                              "heartbeat_wall": time.time() - 400, "heartbeat_s": 10.0})
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["running"] is False  # no lock held
    lock = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the daemon holds its folder
    try:
        assert main(["status", str(tmp_path), "--json"]) == 0
        daemon = json.loads(capsys.readouterr().out)["daemon"]
        assert daemon["running"] is True and daemon["healthy"] is False
        assert 395 <= daemon["silent_s"] <= 405
        assert daemon["problems"][0].startswith("SILENT: no heartbeat for 400 s")
        assert main(["status", str(tmp_path)]) == 0
        assert "heartbeat 400" in capsys.readouterr().out
    finally:
        os.close(lock)
    import socket

    with Ledger(tmp_path / "motionwatch.sqlite") as db:  # 70 s, on this host: silent too
        db.set_service_state({"pid": os.getpid(), "host": socket.gethostname(),
                              "healthy": True, "heartbeat_wall": time.time() - 70,
                              "heartbeat_s": 10.0})
    assert main(["status", str(tmp_path)]) == 0
    assert "SILENT" in capsys.readouterr().out


def test_a_daemon_starting_after_a_stop_is_starting_not_silent(tmp_path, capsys):
    """Restarted a while after a clean stop, a daemon holds its folder from its first moment
    and beats only after its first scan (seconds to minutes): status read the last run's
    heartbeat and called it SILENT."""
    import fcntl
    import socket

    with Ledger(tmp_path / "motionwatch.sqlite") as db:
        db.set_service_state({"pid": os.getpid(), "host": socket.gethostname(),
                              "healthy": True, "heartbeat_wall": time.time() - 400,
                              "heartbeat_s": 10.0, "started_wall": time.time() - 20})
    lock = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert main(["status", str(tmp_path), "--json"]) == 0
        daemon = json.loads(capsys.readouterr().out)["daemon"]
        assert daemon["running"] is True and daemon["starting"] is True
        assert daemon["silent_s"] is None and not any("SILENT" in p for p in daemon["problems"])
        assert main(["status", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "daemon: starting (pid" in out and "longer than" not in out
        with Ledger(tmp_path / "motionwatch.sqlite") as db:  # an hour in its first scan
            db.set_service_state({"pid": os.getpid(), "host": socket.gethostname(),
                                  "healthy": True, "heartbeat_s": 10.0,
                                  "heartbeat_wall": time.time() - 4000,
                                  "started_wall": time.time() - 3600})
        assert main(["status", str(tmp_path)]) == 0
        assert ("its first scan under way; longer than a first scan takes: a share that does "
                "not answer?)") in capsys.readouterr().out
    finally:
        os.close(lock)
