"""A restart after a crash: what the killed daemon had in hand.

The outputs of a movie are renamed into place, then its row is marked done. A daemon killed
between the two left a row ``running`` over a complete set of outputs: the restart adopts them
(recorded done, announced to the listeners as corrected) instead of correcting the movie a
second time. A movie killed before its set was complete is corrected again, as before.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.settings.config import Config
from daemon.simulation.movies import simulate_session
from daemon.state.ledger import Ledger


class _DoneMovies(ServiceListener):
    def __init__(self) -> None:
        self.done: list[str] = []
        self.heard: list[str] = []  # on_ready and the movies done, in order

    def on_ready(self, info) -> None:
        self.heard.append("ready")

    def on_movie_done(self, event) -> None:
        self.done.append(Path(event.path).name)
        self.heard.append(Path(event.path).name)


def _run_until_idle(watch: Path, out: Path, params: CorrectionParams
                    ) -> tuple[RecordingLog, _DoneMovies]:
    log, listener = RecordingLog(), _DoneMovies()
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on")
    assert Service(config, listeners=[listener], logger=log).run() == 0
    return log, listener


def _two_movies_corrected(tmp_path: Path) -> tuple[Path, Path, CorrectionParams]:
    """``movie_000.mrc`` and ``movie_001.mrc`` corrected by a daemon run until idle:
    (watch, out, params)."""
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    simulate_session(watch, n_movies=2, rng=np.random.default_rng(4), shape_yx=(96, 96),
                     n_frames=4, frame_interval_s=0, movie_interval_s=0, rename_indices=())
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    log, _ = _run_until_idle(watch, out, params)
    assert len(log.named("movie_done")) == 2
    return watch, out, params


def _as_if_killed_while_running(out: Path, *names: str) -> None:
    """The rows of ``names`` as a daemon killed while it had them in hand leaves them."""
    with sqlite3.connect(out / "motionwatch.sqlite") as db:
        for name in names:
            db.execute("UPDATE movies SET status='running' WHERE path LIKE ?", (f"%/{name}",))


def test_a_movie_whose_outputs_were_in_place_when_the_daemon_died_is_adopted_not_redone(
        tmp_path):
    watch, out, params = _two_movies_corrected(tmp_path)
    first_record = (out / "movie_000.motion.json").read_bytes()
    # killed after movie_000's outputs were renamed into place, before its row said done;
    # and while movie_001 was being written (its motion record, renamed last, not yet there)
    _as_if_killed_while_running(out, "movie_000.mrc", "movie_001.mrc")
    (out / "movie_001.motion.json").unlink()

    log, listener = _run_until_idle(watch, out, params)

    assert [Path(f["movie"]).name for f in log.named("movie_started")] == ["movie_001.mrc"]
    notes = {Path(f["movie"]).name: f["note"] for f in log.named("movie_recovered")}
    assert "outputs were adopted" in notes["movie_000.mrc"]
    assert "will be redone" in notes["movie_001.mrc"]
    assert sorted(listener.done) == ["movie_000.mrc", "movie_001.mrc"]  # both announced
    # after on_ready, which restores the feed's state from the database: a feed names the
    # adopted movie's outputs relative to its folder and lists it once
    assert listener.heard[0] == "ready"
    assert (out / "movie_000.motion.json").read_bytes() == first_record  # not rewritten
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        rows = {Path(r.key.path).name: r for r in ledger.rows()}
    assert {r.status for r in rows.values()} == {"done"} and len(rows) == 2
    assert rows["movie_000.mrc"].summary["drift"]["total_A"] > 0  # as if corrected now


def test_pending_rows_whose_outputs_are_on_disk_are_adopted_unless_made_pending_to_be_redone(
        tmp_path):
    """A state database that lost its last writes (a power cut, a damaged WAL: an audit saw 3
    of 5 such movies corrected again) holds rows still pending over complete outputs written
    under their metadata: adopted at start-up. A row made pending to be redone under new
    metadata (its tilt record moved) does not match its outputs' record: corrected again."""
    import json

    watch, out, params = _two_movies_corrected(tmp_path)
    with sqlite3.connect(out / "motionwatch.sqlite") as db:
        db.execute("UPDATE movies SET status='pending', outputs=NULL WHERE path LIKE ?",
                   ("%/movie_000.mrc",))
        (metadata,) = db.execute("SELECT metadata FROM movies WHERE path LIKE ?",
                                 ("%/movie_001.mrc",)).fetchone()
        moved = json.loads(metadata)
        moved.setdefault("extra_record", {})["tilt"] = {"series": "TS_02", "movie": "x"}
        db.execute("UPDATE movies SET status='pending', metadata=? WHERE path LIKE ?",
                   (json.dumps(moved), "%/movie_001.mrc"))

    log, listener = _run_until_idle(watch, out, params)

    assert [Path(f["movie"]).name for f in log.named("movie_adopted")] == ["movie_000.mrc"]
    assert [Path(f["movie"]).name for f in log.named("movie_started")] == ["movie_001.mrc"]
    assert sorted(listener.done) == ["movie_000.mrc", "movie_001.mrc"]


def test_a_replaced_movie_made_pending_to_be_redone_is_not_adopted_from_the_old_outputs(
        tmp_path):
    """Another file copied in under a done movie's name, size and mtime is made pending again
    with the new file's content fingerprint; a daemon stopped before redoing it must not adopt
    the old file's outputs at the next start (the motion record names the content it was
    made from)."""
    from daemon.intake.content import content_fingerprint

    watch, out, params = _two_movies_corrected(tmp_path)
    movie = watch / "movie_000.mrc"
    data = bytearray(movie.read_bytes())
    data[-100:] = bytes(100)  # other pixels, the same size
    st = movie.stat()
    movie.write_bytes(bytes(data))
    os.utime(movie, ns=(st.st_atime_ns, st.st_mtime_ns))
    with Ledger(out / "motionwatch.sqlite") as ledger:  # as admission leaves it, then a stop
        (row,) = [r for r in ledger.rows() if r.key.path == str(movie)]
        assert ledger.redo(row.key)
        ledger.set_inode(row.key, (st.st_dev, st.st_ino), content=content_fingerprint(movie),
                         replace_content=True)

    log, _ = _run_until_idle(watch, out, params)

    assert log.named("movie_adopted") == []
    assert [Path(f["movie"]).name for f in log.named("movie_started")] == ["movie_000.mrc"]
