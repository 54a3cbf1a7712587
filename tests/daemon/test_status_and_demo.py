"""`motionwatch status` read-out and the simulated-session demo."""

import json

from daemon.cli import main
from daemon.ledger import Ledger, MovieKey


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
    assert "2 to correct, 2 still being written or settling" in text
    assert "/d/a.mrc (drift 4.2 Å)" in text or "/d/a.mrc (drift 4.3 Å)" in text
    assert "quarantined: /d/b.mrc: b.mrc: 3 of 6 frames readable" in text
    assert main(["status", str(tmp_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["movie"] for r in status["backlog"]["next"]] == ["/d/c.mrc", "/d/d.mrc"]
    assert status["failures"][0]["reason"] == "b.mrc: 3 of 6 frames readable"


def test_status_of_a_folder_without_a_database_says_so(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 78
    assert "no state database" in capsys.readouterr().err


def test_demo_session_corrects_every_simulated_movie_accurately(tmp_path):
    lines = []
    done = __import__("daemon.demo", fromlist=["demo_session"]).demo_session(
        tmp_path, n_movies=2, size_px=256, n_frames=6, say=lines.append)
    assert done == 2
    errors = [float(line.split("shift error ")[1].split()[0]) for line in lines
              if "shift error" in line]
    assert len(errors) == 2 and max(errors) < 0.2  # px RMS against the rendered truth
    assert (tmp_path / "motioncorr" / "demo_001_DW.mrc").is_file()
