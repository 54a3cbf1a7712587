"""A metadata resolver that fails admits nothing in its place.

Before, a scan the resolver could not take in (``observe`` raised) went on to admit every
settled movie: a tilt was then corrected without its series' dose and pre-exposure, and a tilt
corrected before, looked up under that other dose, was corrected again (20,000 old tilts on
disk: all of them, in a benchmark whose resolver raised). A movie ``resolve`` raised for was
corrected with the configured parameters. Now the movies wait while ``observe`` fails (the
service lists why, and the watchdog keeps pinging), and a movie ``resolve`` fails for is
quarantined with why."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.engine.admission import Admission, AdmissionSettings
from daemon.engine.faults import LedgerWrites
from daemon.engine.service import Service
from daemon.events import MovieMetadata, NoMetadata, Observation, ScanResult
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively
from daemon.state.ledger import Ledger

CONFIGURED = DoseParams(dose_per_frame_e_A2=1.0)
SERIES = DoseParams(dose_per_frame_e_A2=0.3, pre_exposure_e_A2=12.0)


class SeriesResolver(NoMetadata):
    """Gives each movie its series' dose once it has taken a scan in (as the tilt-series
    resolver knows the series only from its mdocs); ``failures`` scans raise first, and
    ``resolve`` raises for the movies named in ``broken``."""

    def __init__(self, failures: int = 0, broken: tuple[str, ...] = ()) -> None:
        self.failures = failures
        self.broken = broken
        self.observed = False

    def observe(self, scan):
        if self.failures > 0:
            self.failures -= 1
            raise KeyError("TS_07")
        self.observed = True
        return None

    def resolve(self, movie, params, *, n_frames=None):
        if movie.path.name in self.broken:
            raise ValueError("no tilt angle")
        return MovieMetadata(dose=SERIES) if self.observed else MovieMetadata()


def _movies(watch: Path, names: tuple[str, ...]) -> ScanResult:
    observations = []
    for name in names:
        movie = watch / name
        write_movie_progressively(movie, np.ones((3, 32, 32), np.int16), pixel_size_A=1.0,
                                  frame_interval_s=0)
        st = movie.stat()
        observations.append(Observation(movie, st.st_size, st.st_mtime_ns, "movie", (st.st_dev, st.st_ino)))
    return ScanResult(observations=tuple(observations))


def _admission(watch: Path, out: Path, resolver, log) -> tuple[Admission, Ledger, list[float]]:
    params = CorrectionParams(dose=CONFIGURED)
    settings = AdmissionSettings(watch_dir=watch, out_dir=out, params=params, settle_time_s=0.0,
                                 incomplete_grace_s=0.0, require_frame_mdoc=False)
    ledger, now = Ledger(out / "state.sqlite3"), [0.0]
    admission = Admission(settings, ledger=lambda: ledger, resolver=resolver, log=log,
                          quarantined=lambda event: None, clock=lambda: now[0],
                          writes=LedgerWrites(log, lambda: now[0]))
    return admission, ledger, now


@pytest.fixture
def folders(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "o"
    watch.mkdir()
    out.mkdir()
    return watch, out


def _scans(admission: Admission, scan: ScanResult, now: list[float], n: int) -> None:
    for _ in range(n):
        now[0] += 10.0
        admission.take(scan)


def test_movies_wait_while_the_resolver_fails_and_get_its_dose_once_it_recovers(folders):
    watch, out = folders
    scan = _movies(watch, ("TS_07_001.mrc", "TS_07_002.mrc"))
    log = RecordingLog()
    admission, ledger, now = _admission(watch, out, SeriesResolver(failures=4), log)

    _scans(admission, scan, now, 4)
    assert ledger.rows() == []
    assert set(admission.waiting) == {o.path for o in scan.observations}
    assert all(why == "metadata resolver failed: KeyError: 'TS_07'"
               for why in admission.waiting.values())
    assert admission.resolver_problem == "metadata resolver failed: KeyError: 'TS_07'"
    assert len(log.named("metadata_observe_failed")) == 1  # once, not at every scan

    _scans(admission, scan, now, 2)
    rows = ledger.rows()
    assert len(rows) == 2 and admission.waiting == {} and admission.resolver_problem is None
    fingerprint = CorrectionParams(dose=SERIES).fingerprint()
    assert {r.key.fingerprint for r in rows} == {fingerprint}  # the series' dose, not ours
    assert len(log.named("metadata_observe_recovered")) == 1


def test_a_tilt_corrected_before_is_not_corrected_again_while_the_resolver_fails(folders):
    """After a restart with the resolver failing: the tilt's row (under its series' dose) is
    not found under the configured dose, so it was corrected again."""
    watch, out = folders
    scan = _movies(watch, ("TS_07_001.mrc",))
    admission, ledger, now = _admission(watch, out, SeriesResolver(), RecordingLog())
    _scans(admission, scan, now, 2)
    (row,) = ledger.rows()
    ledger.claim(row.key)
    ledger.mark_done(row.key, outputs={}, timings={}, summary={})

    restarted, ledger, now = _admission(watch, out, SeriesResolver(failures=10),
                                        RecordingLog())
    _scans(restarted, scan, now, 5)
    assert [(r.key, r.status) for r in ledger.rows()] == [(row.key, "done")]
    assert restarted.waiting == {}  # recorded: not waiting either


def test_a_movie_the_resolver_fails_for_is_quarantined_with_why_and_the_others_go_on(folders):
    watch, out = folders
    scan = _movies(watch, ("TS_07_001.mrc", "TS_07_002.mrc"))
    admission, ledger, now = _admission(watch, out, SeriesResolver(broken=("TS_07_002.mrc",)),
                                        RecordingLog())
    _scans(admission, scan, now, 3)
    rows = {Path(r.key.path).name: r for r in ledger.rows()}
    assert rows["TS_07_001.mrc"].status == "pending"
    assert rows["TS_07_002.mrc"].status == "quarantined"
    assert rows["TS_07_002.mrc"].error == "metadata failed: ValueError: no tilt angle"


def test_the_service_lists_a_failing_resolver_as_a_problem_and_stays_healthy(folders):
    watch, out = folders
    _movies(watch, ("TS_07_001.mrc",))
    resolver = SeriesResolver(failures=10**9)
    config = Config(watch, out, out, CorrectionParams(dose=CONFIGURED), settle_time_s=0.05,
                    scan_interval_s=0.05, heartbeat_s=0.2, polling="on")
    service = Service(config, runner="fake_runners:correct", resolver=resolver,
                      logger=RecordingLog())
    thread = threading.Thread(target=service.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20.0
        while service.admission.resolver_problem is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # scans go on failing
        health = service.health()
        with Ledger(out / "motionwatch.sqlite") as ledger:
            rows = ledger.rows()
        resolver.failures = 0
        while not rows and time.monotonic() < deadline:
            time.sleep(0.05)
            with Ledger(out / "motionwatch.sqlite") as ledger:
                rows = ledger.rows()
    finally:
        service.request_stop("test done")
        thread.join(60)
    assert health.ok
    assert "metadata resolver failed: KeyError: 'TS_07'" in health.problems
    assert [r.key.fingerprint for r in rows] == [CorrectionParams(dose=SERIES).fingerprint()]
