"""``motionwatch retry`` while the daemon runs: a retried movie version is admitted afresh at
the next scan, even when another row of the same file version remains (done under earlier
parameters, e.g. before its series' dose moved)."""

from __future__ import annotations

import os
from pathlib import Path


import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.engine.admission import Admission, AdmissionSettings
from daemon.engine.faults import LedgerWrites
from daemon.events import MovieMetadata, Observation, ScanResult
from daemon.simulation.movies import write_movie_progressively
from daemon.state.ledger import Ledger


class _MovableDose:
    """A resolver whose dose the test moves, as a series mdoc's change would."""

    def __init__(self) -> None:
        self.dose = DoseParams(dose_per_frame_e_A2=1.0)
        self.changed: list = []

    def observe(self, scan):
        changed, self.changed = self.changed, []
        return changed

    def resolve(self, observation, params, n_frames=None):
        return MovieMetadata(dose=self.dose)


def test_a_version_quarantined_under_new_parameters_is_taken_up_again_after_retry(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "o"
    watch.mkdir()
    out.mkdir()
    movie = watch / "m.mrc"
    write_movie_progressively(movie, np.ones((3, 32, 32), np.int16), pixel_size_A=1.0,
                              frame_interval_s=0)
    stat = movie.stat()
    scan = ScanResult(observations=(Observation(movie, stat.st_size, stat.st_mtime_ns,
                                                "movie"),))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    settings = AdmissionSettings(watch_dir=watch, out_dir=out, params=params, settle_time_s=0.0,
                                 incomplete_grace_s=0.0, require_frame_mdoc=False)
    resolver, log, now = _MovableDose(), RecordingLog(), [0.0]
    ledger = Ledger(out / "state.sqlite3")
    admission = Admission(settings, ledger=lambda: ledger, resolver=resolver, log=log,
                          quarantined=lambda event: None, clock=lambda: now[0],
                          writes=LedgerWrites(log, lambda: now[0]))

    def scan_once() -> None:
        now[0] += 10.0
        admission.take(scan)

    scan_once()
    scan_once()
    (first,) = [r.key for r in ledger.rows()]
    ledger.claim(first)
    ledger.mark_done(first, outputs={}, timings={}, summary={})
    resolver.dose, resolver.changed = DoseParams(dose_per_frame_e_A2=2.0), [movie]
    scan_once()  # redone under the new dose: a second row, which then fails for good
    (second,) = [r.key for r in ledger.rows() if r.key != first]
    ledger.claim(second)
    ledger.mark_failed(second, "crashed", quarantine=True)

    assert Ledger(out / "state.sqlite3").requeue() == [second]  # motionwatch retry
    scan_once()
    scan_once()
    assert [(r.key, r.status) for r in ledger.rows()] == [(first, "done"), (second, "pending")]


def test_a_scan_admits_for_its_time_budget_and_the_next_scans_go_on(tmp_path):
    """After a start with weeks of sessions in the watched folder, every movie on disk is
    looked up once more: one scan admits for at most its budget, so the main loop turns
    (heartbeats, the watchdog, stop requests) while the next scans go on; the movies left for a
    later scan are counted (the service is not idle while there are any)."""
    watch, out = tmp_path / "w", tmp_path / "o"
    watch.mkdir()
    out.mkdir()
    observations = []
    for i in range(4):
        movie = watch / f"m_{i}.mrc"
        write_movie_progressively(movie, np.ones((3, 32, 32), np.int16), pixel_size_A=1.0,
                                  frame_interval_s=0)
        stat = movie.stat()
        observations.append(Observation(movie, stat.st_size, stat.st_mtime_ns, "movie"))
    scan = ScanResult(observations=tuple(observations))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    settings = AdmissionSettings(watch_dir=watch, out_dir=out, params=params, settle_time_s=0.0,
                                 incomplete_grace_s=0.0, require_frame_mdoc=False)
    log, now = RecordingLog(), [0.0]
    ledger = Ledger(out / "state.sqlite3")
    admission = Admission(settings, ledger=lambda: ledger, resolver=_MovableDose(), log=log,
                          quarantined=lambda event: None, clock=lambda: now[0],
                          writes=LedgerWrites(log, lambda: now[0]), budget_s=0.0)
    admitted = []
    for _ in range(5):
        now[0] += 10.0
        admission.take(scan)
        admitted.append(len(ledger.rows()))
        if admitted[-1] == 1:  # settled, left for the next scans: not idle, not "settling"
            assert admission.deferred == 3 and admission.waiting == {}
    # the first scan only sees the files (they settle at the second); then one a scan
    assert admitted == [0, 1, 2, 3, 4]
    assert admission.waiting == {} and admission.deferred == 0  # the service may be idle now


def test_a_movie_looked_at_again_at_every_scan_does_not_take_the_time_of_the_new_ones(
        tmp_path, monkeypatch):
    """An unreadable movie is tried again while the system says it is readable (a share
    answering an I/O error after a timeout): the movies not looked at yet go first, so a slow
    one at the head of the oldest-first order does not defer them forever; and it is tried
    again a minute later, not at every scan."""
    import correction.io.complete as complete

    watch, out = tmp_path / "w", tmp_path / "o"
    watch.mkdir()
    out.mkdir()
    now = [0.0]
    real_check = complete.check_complete

    reads = []

    def slow_io_error(path):
        if Path(path).name == "old.mrc":
            reads.append(now[0])
            now[0] += 3.0  # the share's I/O error comes after a timeout longer than a scan's
            return complete.Completeness(False, "cannot read: Input/output error", None,
                                         unreadable=True)
        return real_check(path)

    monkeypatch.setattr(complete, "check_complete", slow_io_error)
    observations = []
    for i, name in enumerate(["old.mrc", "new.mrc"]):
        movie = watch / name
        write_movie_progressively(movie, np.ones((3, 32, 32), np.int16), pixel_size_A=1.0,
                                  frame_interval_s=0)
        os.utime(movie, ns=(10**18 + i, 10**18 + i))  # old.mrc first in acquisition order
        stat = movie.stat()
        observations.append(Observation(movie, stat.st_size, stat.st_mtime_ns, "movie",
                                        (stat.st_dev, stat.st_ino)))
    settings = AdmissionSettings(watch_dir=watch, out_dir=out, params=CorrectionParams(
        dose=DoseParams(dose_per_frame_e_A2=1.0)), settle_time_s=0.0, incomplete_grace_s=0.0,
        require_frame_mdoc=False)
    log = RecordingLog()
    ledger = Ledger(out / "state.sqlite3")
    admission = Admission(settings, ledger=lambda: ledger, resolver=_MovableDose(), log=log,
                          quarantined=lambda event: None, clock=lambda: now[0],
                          writes=LedgerWrites(log, lambda: now[0]))
    statuses = []
    for _ in range(12):
        now[0] += 10.0
        admission.take(ScanResult(observations=tuple(observations)))
        statuses.append(({Path(r.key.path).name: r.status for r in ledger.rows()},
                         admission.deferred))
    # scan 2: old.mrc takes the scan's time, new.mrc waits; scan 3: new.mrc goes first
    assert statuses[1] == ({"old.mrc": "quarantined"}, 1)
    assert statuses[2] == statuses[-1] == ({"old.mrc": "quarantined", "new.mrc": "pending"}, 0)
    # and it is read again a minute after its I/O error, not at every scan
    assert len(reads) == 2 and 60.0 <= reads[1] - reads[0] < 75.0  # 12 scans, 10 s apart
