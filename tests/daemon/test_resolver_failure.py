"""A metadata resolver that fails admits nothing in its place.

Before, a scan the resolver could not take in (``observe`` raised) went on to admit every
settled movie: a tilt was then corrected without its series' dose and pre-exposure, and a tilt
corrected before, looked up under that other dose, was corrected again (20,000 old tilts on
disk: all of them, in a benchmark whose resolver raised). A movie ``resolve`` raised for was
corrected with the configured parameters. Now the movies wait while ``observe`` fails (the
service lists why, and the watchdog keeps pinging), and a movie ``resolve`` fails for is
quarantined with why."""

from __future__ import annotations

import dataclasses
import errno
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

    def __init__(self, failures: int = 0, broken: tuple[str, ...] = (),
                 io_errors: int = 0) -> None:
        self.failures = failures
        self.broken = broken
        self.io_errors = io_errors  # resolve calls that meet an I/O error of the share
        self.observed = False

    def observe(self, scan):
        if self.failures < 0:  # for ever
            raise KeyError("TS_07")
        if self.failures > 0:
            self.failures -= 1
            raise KeyError("TS_07")
        self.observed = True
        return None

    def resolve(self, movie, params, *, n_frames=None):
        if movie.path.name in self.broken:
            raise ValueError("no tilt angle")
        if self.io_errors > 0:
            self.io_errors -= 1
            raise OSError(errno.EIO, "Input/output error")
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


def _one_tilt_corrected(watch: Path, out: Path) -> tuple[ScanResult, object]:
    """A tilt on disk, admitted with its series' dose and corrected (its done row)."""
    scan = _movies(watch, ("TS_07_001.mrc",))
    admission, ledger, now = _admission(watch, out, SeriesResolver(), RecordingLog())
    _scans(admission, scan, now, 2)
    (row,) = ledger.rows()
    ledger.claim(row.key)
    ledger.mark_done(row.key, outputs={}, timings={}, summary={})
    return scan, row


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
    scan, row = _one_tilt_corrected(watch, out)

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


def test_an_io_error_under_a_movies_metadata_makes_it_wait_not_quarantined(folders):
    """The resolver reads files beside the movie (an EPU xml, an EER header) on the share: an
    I/O error there is looked at again at the next scans (before: quarantined until retried)."""
    watch, out = folders
    scan = _movies(watch, ("TS_07_001.mrc",))
    resolver = SeriesResolver(io_errors=3)
    admission, ledger, now = _admission(watch, out, resolver, RecordingLog())
    _scans(admission, scan, now, 3)  # seen, then two I/O errors
    assert ledger.rows() == []
    assert list(admission.waiting.values()) == [
        "metadata unreadable: OSError: [Errno 5] Input/output error; tried again at each scan"]
    _scans(admission, scan, now, 2)
    assert [(r.status, r.key.fingerprint) for r in ledger.rows()] == [
        ("pending", CorrectionParams(dose=SERIES).fingerprint())]


def test_a_movie_recorded_before_whose_metadata_fails_waits_and_is_redone_once_it_resolves(
        folders):
    """Done under other parameters, then its metadata fails: nothing to quarantine under (a row
    of the version exists), so it waits, listed, and is taken up once the resolver can (before:
    dropped without a row, until a restart)."""
    watch, out = folders
    scan, row = _one_tilt_corrected(watch, out)

    resolver = SeriesResolver(broken=("TS_07_001.mrc",))
    restarted, ledger, now = _admission(watch, out, resolver, RecordingLog())
    SERIES_LATER = dataclasses.replace(SERIES, pre_exposure_e_A2=15.0)
    resolver.resolve = lambda movie, params, n_frames=None: (  # the mdoc moved its dose
        MovieMetadata(dose=SERIES_LATER) if not resolver.broken else SeriesResolver.resolve(
            resolver, movie, params, n_frames=n_frames))
    _scans(restarted, scan, now, 3)
    assert [r.status for r in ledger.rows()] == ["done"]
    assert list(restarted.waiting.values()) == ["metadata failed: ValueError: no tilt angle"]
    resolver.broken = ()
    _scans(restarted, scan, now, 2)
    assert sorted((r.status, r.key.fingerprint) for r in ledger.rows()) == sorted([
        ("done", row.key.fingerprint),
        ("pending", CorrectionParams(dose=SERIES_LATER).fingerprint())])


def test_a_service_whose_resolver_fails_is_not_idle(folders):
    """--exit-when-idle: every movie on disk recorded, the resolver failing at every scan; the
    service must not stop as idle (before: exit 0 after the idle time, nothing looked at)."""
    watch, out = folders
    _movies(watch, ("a.mrc",))

    def config():
        return Config(watch, out, out, CorrectionParams(dose=CONFIGURED), settle_time_s=0.05,
                      scan_interval_s=0.05, heartbeat_s=0.2, polling="on", exit_when_idle_s=0.5)

    assert Service(config(), runner="fake_runners:correct", logger=RecordingLog()).run() == 0
    service = Service(config(), runner="fake_runners:correct",
                      resolver=SeriesResolver(failures=-1), logger=RecordingLog())
    thread = threading.Thread(target=service.run)
    started = time.monotonic()
    thread.start()
    thread.join(3.0)
    still_running = thread.is_alive()
    service.request_stop("test done")
    thread.join(60)
    assert still_running, f"stopped as idle after {time.monotonic() - started:.1f} s"


def test_a_series_whose_assembly_cannot_start_does_not_hold_back_other_movies(tmp_path):
    """The real tilt-series resolver: a complete series whose assembly job cannot be started
    (no process can be spawned: too many open files) raised out of observe at every scan, and
    a single-particle movie in another folder was never admitted."""
    from daemon.engine.service import _LedgerView
    from daemon.events import ResolverContext
    from daemon.intake.discover import Discovery
    from daemon.series.resolution import SeriesConfig
    from daemon.series.resolver import TiltSeriesResolver
    from daemon.simulation.tilt_series import simulate_tilt_series

    watch, out = tmp_path / "w", tmp_path / "o"
    (watch / "grid1").mkdir(parents=True)
    out.mkdir()
    simulate_tilt_series(watch / "grid1", rng=np.random.default_rng(1), n_tilts=3,
                         shape_yx=(32, 32), n_frames=3, frame_interval_s=0, tilt_interval_s=0,
                         lock=False, sleep=lambda s: None)
    submitted = []

    def run_job(fn, *args):
        submitted.append(fn)
        raise OSError(errno.EMFILE, "Too many open files")

    log, now = RecordingLog(), [1000.0]
    ledger = Ledger(out / "state.sqlite3")
    resolver = TiltSeriesResolver(SeriesConfig(), mode="auto")
    resolver.start(ResolverContext(store=_LedgerView(lambda: ledger), now=lambda: now[0],
                                   log=log, watch_dir=watch, out_dir=out, voltage_kV=300.0,
                                   emit=lambda event: None, run_job=run_job))
    settings = AdmissionSettings(watch_dir=watch, out_dir=out,
                                 params=CorrectionParams(dose=CONFIGURED), settle_time_s=0.0,
                                 incomplete_grace_s=0.0, require_frame_mdoc=False)
    admission = Admission(settings, ledger=lambda: ledger, resolver=resolver, log=log,
                          quarantined=lambda event: None, clock=lambda: now[0],
                          writes=LedgerWrites(log, lambda: now[0]))
    discovery = Discovery(watch, exclude=[out], polling="on", clock=lambda: now[0])

    def scans(n: int) -> None:
        for _ in range(n):
            now[0] += 5.0
            admission.take(discovery.scan(fresh=admission.busy_folders()))

    now[0] += 10_000  # the series mdoc is quiet
    scans(3)
    for row in ledger.rows():  # the workers corrected every tilt
        ledger.claim(row.key)
        ledger.mark_done(row.key, outputs={"sum": str(out / f"{Path(row.key.path).stem}.mrc")},
                         timings={}, summary={})
    (watch / "spa").mkdir()
    _movies(watch / "spa", ("movie_0001.mrc",))  # an unrelated single-particle movie
    now[0] += 10_000  # the mdoc has been quiet for long
    scans(10)
    assert submitted, "the series was never ready to assemble: the test proves nothing"
    spa = [r.status for r in ledger.rows() if r.key.path.endswith("movie_0001.mrc")]
    assert spa == ["pending"] and admission.resolver_problem is None
    failed = log.named("series_advance_failed")
    assert len(failed) == 1 and failed[0]["series"] == "grid1/TS_01"
