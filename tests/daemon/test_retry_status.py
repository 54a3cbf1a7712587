"""``motionwatch status`` after ``motionwatch retry``: the retried movie's quarantined row is
dropped (it is met again as a new movie), and until the daemon's next scan (or next start) it
had no row at all, so status did not show it. It is listed as ``requeued`` and counted in the
backlog until the daemon gives it a row again (real daemon runs, the fake runner)."""

from __future__ import annotations

import json
import os

import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.commands.cli import main as cli_main
from daemon.commands.status import collect_status
from daemon.engine.service import Service
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively


def _movie(path):
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0)
    return path


def _session(tmp_path):
    """``(watch folder, output folder, config)``: one attempt per movie, exit when idle."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, max_attempts=1, retry_delay_s=0.0,
                    heartbeat_s=0.1, exit_when_idle_s=0.5, polling="on")
    return watch, out, config


def _run(config):
    assert Service(config, runner="fake_runners:correct", logger=RecordingLog()).run() == 0


def test_a_retried_movie_is_listed_as_requeued_until_the_daemon_meets_it_again(tmp_path,
                                                                                capsys):
    watch, out, config = _session(tmp_path)
    flaky = _movie(watch / "flaky_1.mrc")
    _movie(watch / "bad_2.mrc")
    marker = flaky.with_name(flaky.name + ".bad")
    marker.write_text("")  # the fake runner fails flaky_1 while this exists
    _run(config)
    db = out / "motionwatch.sqlite"
    assert collect_status(db)["counts"]["quarantined"] == 2
    from daemon.state.ledger import Ledger

    with Ledger(db, read_only=True) as ledger:  # its start, then its beats, were recorded
        state = ledger.service_state()
    assert state["started_wall"] <= state["heartbeat_wall"] <= state["stopped_wall"]

    marker.unlink()  # mended
    assert cli_main(["retry", str(out)]) == 0
    capsys.readouterr()
    status = collect_status(db)
    assert status["counts"]["quarantined"] == 0
    assert status["counts"]["requeued"] == 2
    assert status["backlog"]["pending"] == 2
    assert sorted(os.path.basename(e["movie"]) for e in status["backlog"]["requeued"]) == [
        "bad_2.mrc", "flaky_1.mrc"]
    assert cli_main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 requeued" in text and f"requeued: {flaky}" in text
    assert cli_main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["requeued"] == 2

    _run(config)  # met again: flaky_1 corrected, bad_2 quarantined again
    status = collect_status(db)
    assert (status["counts"]["done"], status["counts"]["quarantined"]) == (1, 1)
    assert status["counts"]["requeued"] == 0 and status["backlog"]["requeued"] == []
    assert status["backlog"]["pending"] == 0


def test_a_requeued_movie_that_was_replaced_or_deleted_since_is_not_listed(tmp_path):
    watch, out, config = _session(tmp_path)
    gone, replaced = _movie(watch / "bad_gone.mrc"), _movie(watch / "bad_replaced.mrc")
    _run(config)
    assert cli_main(["retry", str(out)]) == 0
    gone.unlink()
    with open(replaced, "ab") as fh:  # a new version: the daemon meets it as a new movie
        fh.write(b"\0" * 16)
    assert collect_status(out / "motionwatch.sqlite")["backlog"]["requeued"] == []


def test_retry_on_a_read_only_mount_of_the_database_changes_nothing_and_says_why(
        tmp_path, capsys):
    """A database that cannot be written (a read-only bind mount: root ignores permission
    bits) is left as it is, and the reason is the file system's (it was said to be another
    account's, root's, and root told to run it as root)."""
    import subprocess

    import pytest

    from daemon.state.ledger import DB_NAME, Ledger

    folder, view = tmp_path / "out", tmp_path / "view"
    folder.mkdir()
    view.mkdir()
    with Ledger(folder / DB_NAME):
        pass
    mounted = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("bind mounts not permitted here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)],
                          capture_output=True).returncode != 0:
            pytest.skip("read-only remounts not permitted here")
        assert cli_main(["retry", str(view)]) == 78
        err = capsys.readouterr().err
        assert f"{view / DB_NAME}: on a read-only file system" in err
        assert "nothing was changed" in err and "sudo" not in err
        assert sorted(p.name for p in folder.iterdir()) == [DB_NAME]
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_retry_on_the_service_accounts_database_is_refused_also_to_root(tmp_path, capsys):
    """``sudo motionwatch retry`` passed the writability check (root may write anything); a
    retry stopped mid-way then left root's -wal and -shm files, which the service's account
    cannot open. As root the database is given to another account here; as anyone else it is
    made read-only: either way retry refuses, naming the owner, and changes nothing."""
    from daemon.state.ledger import DB_NAME, Ledger

    out = tmp_path / "out"
    out.mkdir()
    with Ledger(out / DB_NAME):
        pass
    if os.geteuid() == 0:
        os.chown(out / DB_NAME, 4242, 4242)  # the service's account
    else:
        os.chmod(out / DB_NAME, 0o444)
    assert cli_main(["retry", str(out)]) == 78
    err = capsys.readouterr().err
    assert f"{out / DB_NAME}: not writable by this account" in err
    assert "sudo -u" in err and "nothing was changed" in err
    assert sorted(p.name for p in out.iterdir()) == [DB_NAME]


def _quarantined(folder, paths):
    from daemon.state.ledger import DB_NAME, Ledger, MovieKey

    with Ledger(folder / DB_NAME) as db:
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"\0" * 100)
            key = MovieKey(str(p), 100, 1, "f")
            db.add(key)
            db.claim(key)
            db.mark_failed(key, "bad", quarantine=True)


def test_retry_names_a_movie_by_a_relative_path_and_exits_1_for_one_not_quarantined(
        tmp_path, monkeypatch, capsys):
    """Mutants R3 (retry.py:79, a relative path not made absolute) and R5 (retry.py:98, exit 0
    when a named movie is not quarantined: its docstring says 1)."""
    out = tmp_path / "out"
    out.mkdir()
    _quarantined(out, [tmp_path / "grid1" / "a.mrc", tmp_path / "grid2" / "b.mrc"])
    monkeypatch.chdir(tmp_path)
    assert cli_main(["retry", str(out), os.path.join("grid1", "a.mrc")]) == 0
    assert "1 quarantined movie(s) requeued" in capsys.readouterr().out
    assert cli_main(["retry", str(out), "nothing_such.mrc"]) == 1
    assert "nothing_such.mrc: not a quarantined movie" in capsys.readouterr().err


def test_a_quarantined_movie_whose_file_is_gone_stays_quarantined_and_retry_says_so(
        tmp_path, capsys):
    """Requeued, a deleted movie's quarantined row was dropped and the daemon never met it
    again: it vanished from status, its series and every record, retry saying 'requeued'."""
    out = tmp_path / "out"
    out.mkdir()
    kept, gone = tmp_path / "grid1" / "a.mrc", tmp_path / "grid1" / "b.mrc"
    _quarantined(out, [kept, gone])
    gone.unlink()
    assert cli_main(["retry", str(out)]) == 0  # all: the others are requeued
    captured = capsys.readouterr()
    assert f"requeued: {kept}" in captured.out and str(gone) not in captured.out
    assert f"{gone}: no such file" in captured.err and "left quarantined" in captured.err
    status = collect_status(out / "motionwatch.sqlite")
    assert status["counts"]["quarantined"] == 1
    assert [f["movie"] for f in status["failures"]] == [str(gone)]
    assert cli_main(["retry", str(out), "b.mrc"]) == 1  # named: it was not requeued
    assert "b.mrc: not a quarantined movie" not in capsys.readouterr().err


def test_retry_on_a_read_only_file_system_says_so_and_changes_nothing(tmp_path, capsys,
                                                                     monkeypatch):
    """Root on a read-only mount was told the database was another account's, root's, and to
    run retry as root."""
    import daemon.commands.retry as retry

    out = tmp_path / "out"
    out.mkdir()
    _quarantined(out, [tmp_path / "a.mrc"])
    monkeypatch.setattr(retry, "_read_only", lambda path: True)
    assert cli_main(["retry", str(out)]) == 78
    err = capsys.readouterr().err
    assert "read-only file system" in err and "nothing was changed" in err
    assert "sudo" not in err
    assert collect_status(out / "motionwatch.sqlite")["counts"]["quarantined"] == 1


def test_a_starting_daemon_records_itself_and_drops_what_the_last_run_said(tmp_path):
    """Until its first heartbeat, ``status`` read the last run's problems, health and pace as
    the starting daemon's (and its start not at all)."""
    from daemon.events import ServiceListener
    from daemon.state.ledger import Ledger

    watch, out, config = _session(tmp_path)
    db = out / "motionwatch.sqlite"
    with Ledger(db) as ledger:
        ledger.set_service_state({"pid": 1, "healthy": False, "pace": {"behind_min": 9.0},
                                  "problems": ["the disk is full"], "in_flight": ["/d/a.mrc"]})
    seen = {}

    class _AtReady(ServiceListener):  # before the first heartbeat
        def on_ready(self, info):
            with Ledger(db, read_only=True) as ledger:
                seen.update(ledger.service_state())

    assert Service(config, runner="fake_runners:correct", logger=RecordingLog(),
                   listeners=[_AtReady()]).run() == 0
    assert seen["pid"] == os.getpid() and seen["started_wall"] > 0
    assert seen["problems"] == [] and seen["in_flight"] == []
    assert seen["healthy"] is None and seen["pace"] is None


def test_status_does_not_list_as_waiting_a_movie_done_since_the_last_heartbeat(tmp_path):
    """The waiting movies are the last heartbeat's (up to 10 s old): a movie corrected since was
    shown both as waiting ("settling") and among the last done."""
    import socket
    import time

    from daemon.commands.status import collect_status
    from daemon.events import MovieKey
    from daemon.state.ledger import Ledger

    db = tmp_path / "motionwatch.sqlite"
    beat = time.time() - 5.0
    clock = [beat - 30.0]
    with Ledger(db, clock=lambda: clock[0]) as ledger:
        ledger.set_service_state({
            "pid": os.getpid(), "host": socket.gethostname(), "heartbeat_wall": beat,
            "started_wall": beat - 60.0, "heartbeat_s": 10.0, "waiting": 3,
            "waiting_examples": {"/w/a.mrc": "settling", "/w/b.mrc": "settling"}})
        key = MovieKey("/w/a.mrc", 10, 1, "f")
        ledger.add(key)
        clock[0] = beat + 2.0  # corrected after that heartbeat
        ledger.claim(key)
        ledger.mark_done(key, outputs={}, timings={}, summary={})
    backlog = collect_status(db)["backlog"]
    assert backlog["waiting"] == [{"movie": "/w/b.mrc", "reason": "settling"}]
    assert backlog["waiting_for_completion"] == 2
