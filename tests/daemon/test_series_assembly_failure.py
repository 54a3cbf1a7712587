"""A series assembly that fails (a tilt sum that cannot be read, an assembly process killed)
is reported with its reason and does not stop later series from being assembled (real daemon
runs on real files; corrections by the fake runner, whose sums are not images)."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.feed.listener import restored_state
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.simulation.tilt_series import simulate_tilt_series
from daemon.state.ledger import DB_NAME
from daemon.work.jobs import JobRunner


def _series(folder: Path) -> None:
    simulate_tilt_series(folder, rng=np.random.default_rng(1), n_tilts=2, shape_yx=(32, 32),
                         n_frames=4, frame_interval_s=0.0, tilt_interval_s=0.0, lock=False)


def test_a_failed_assembly_is_reported_and_later_series_are_still_assembled(tmp_path):
    """grid1's assembly fails (the fake sums are not images); grid2 arrives after. Before, the
    failure's CorrectionError could not be unpickled: it was reported as BrokenProcessPool,
    and the broken process pool refused grid2's assembly at every scan
    (``metadata_observe_failed``) until a restart."""
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    _series(watch / "grid1")
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()), settle_time_s=0.1,
                    scan_interval_s=0.05, heartbeat_s=0.2, polling="on",
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    log = RecordingLog()
    service = Service(config, runner="fake_runners:correct",
                      resolver=resolver_from_config(config), logger=log)
    thread = threading.Thread(target=service.run)
    deadline = time.monotonic() + 30.0

    def wait_for(count: int) -> None:
        while len(log.named("series_assembly_failed")) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    thread.start()
    try:
        wait_for(1)
        _series(watch / "grid2")
        wait_for(2)
    finally:
        service.request_stop("test done")
        thread.join(60)
    assert [e["series"] for e in log.named("series_assembling")] == ["grid1/TS_01",
                                                                     "grid2/TS_01"]
    failed = log.named("series_assembly_failed")
    assert [e["series"] for e in failed] == ["grid1/TS_01", "grid2/TS_01"]
    assert all("cannot read tilt image" in e["error"] for e in failed)
    assert log.named("metadata_observe_failed") == []
    # after a restart, the live views' state says so too (not "completed" with no stacks)
    _, series, _, warnings = restored_state(out / DB_NAME, out_dir=out)
    assert {s["series"]: s["event"] for s in series} == {"grid1/TS_01": "updated",
                                                         "grid2/TS_01": "updated"}
    assert sorted((w["kind"], w["series"]) for w in warnings) == [
        ("series_assembly_failed", "grid1/TS_01"), ("series_assembly_failed", "grid2/TS_01")]
    assert all("stacks not written: assembly failed" in w["message"] for w in warnings)


def test_a_job_runner_whose_process_died_starts_a_new_one():
    """An assembly process killed (out of memory) broke the pool for good: every later job
    raised BrokenProcessPool."""
    runner = JobRunner()
    try:
        died = runner.run_job(os._exit, 3)
        assert isinstance(died.exception(timeout=30), Exception)
        assert runner.run_job(math.sqrt, 4.0).result(timeout=30) == 2.0
    finally:
        runner.close()


def _start(service: Service) -> threading.Thread:
    thread = threading.Thread(target=service.run)
    thread.start()
    return thread


def _wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def _blocked_series(tmp_path: Path, *, retry_first_s: float):
    """A 3-tilt series whose stacks' folder cannot be made (a file has its name, as a full disk
    refuses it), and a service for it whose assembly retries start at ``retry_first_s``:
    ``(tilts, out, blocker, resolver, log, service)``."""
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    tilts = simulate_tilt_series(watch, rng=np.random.default_rng(1), n_tilts=3,
                                 shape_yx=(64, 64), n_frames=4, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False)
    blocker = out / "TS_01"
    blocker.write_text("a file where the series' folder goes: no folder can be made there")
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()), settle_time_s=0.1,
                    scan_interval_s=0.05, heartbeat_s=0.2, polling="on",
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    log = RecordingLog()
    resolver = resolver_from_config(config)
    resolver.assembly_retry_first_s = retry_first_s
    return tilts, out, blocker, resolver, log, Service(config, resolver=resolver, logger=log)


def test_an_assembly_that_met_a_full_disk_is_tried_again_and_completes_once_there_is_room(
        tmp_path):
    """A series' stacks hit a full disk (or a share gone): the series stayed 'assembly failed'
    for good, its AreTomo3 and IMOD inputs never written, not even after a restart. Trouble
    outside the series (an OSError) is tried again, 10 s doubling to 300 s (here 0.2 s)."""
    _, out, blocker, resolver, log, service = _blocked_series(tmp_path, retry_first_s=0.2)
    thread = _start(service)
    try:
        _wait_until(lambda: len(log.named("series_assembly_failed")) >= 3)
        failed = log.named("series_assembly_failed")
        assert [f["retry_in_s"] for f in failed[:3]] == [0.2, 0.4, 0.8]
        # the same trouble said once at error level (and its tries quietly): it was an
        # identical error line at every try, about 240 a night
        failures = [level for level, event, _ in log.events if event == "series_assembly_failed"]
        assert failures[0] == "error" and set(failures[1:]) == {"debug"}
        assert [level for level, event, _ in log.events if event == "series_assembling"][:2] \
            == ["info", "debug"]
        # listed as trouble outside the daemon (status, STATUS=), the watchdog still pinged
        health = service.health()
        assert health.ok and any(p.startswith("series TS_01: stacks not written: assembly "
                                              "failed") for p in health.problems)
        blocker.unlink()  # room again
        _wait_until(lambda: log.named("series_completed"))
    finally:
        service.request_stop("test done")
        thread.join(60)
    (completed,) = log.named("series_completed")
    assert (blocker / "TS_01.mrc").is_file() and (blocker / "TS_01_TLT.txt").is_file()
    assert len(log.named("series_assembling")) == len(log.named("series_assembly_failed")) + 1


def test_a_series_whose_assembly_failed_is_assembled_again_at_the_next_start(tmp_path):
    """A failure of the series' own (here the fake runner's sums, no images) is not tried
    again in the run: at the next start it is (a release that mends the cause gets the
    stacks written), and reported again when it fails again."""
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    _series(watch)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()), settle_time_s=0.1,
                    scan_interval_s=0.05, heartbeat_s=0.2, polling="on", exit_when_idle_s=0.5,
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    for run in range(2):
        log = RecordingLog()
        thread = _start(Service(config, runner="fake_runners:correct",
                                resolver=resolver_from_config(config), logger=log))
        thread.join(60)
        assert [e["series"] for e in log.named("series_assembly_failed")] == ["TS_01"], run
        assert "retry_in_s" not in log.named("series_assembly_failed")[0]


def test_a_retried_assembly_that_then_fails_on_its_own_holds_the_service_no_longer(tmp_path):
    """Tried again after a full disk, the assembly failed on a tilt image that cannot be read:
    the retry it had been waiting for stayed, and the service was never idle again."""
    tilts, out, blocker, resolver, log, service = _blocked_series(tmp_path, retry_first_s=0.5)
    thread = _start(service)
    try:
        _wait_until(lambda: log.named("series_assembly_failed"))
        blocker.unlink()
        sums = sorted(out.glob(f"{tilts[0].movie.path.stem}*.mrc"))
        for image in sums:  # the tilt's images damaged meanwhile: the series' own trouble
            image.write_bytes(b"not an image")
        _wait_until(lambda: len(log.named("series_assembly_failed")) == 2)
        assert "retry_in_s" not in log.named("series_assembly_failed")[1]
        _wait_until(lambda: not resolver.busy(), 10)
        assert not resolver.busy()
    finally:
        service.request_stop("test done")
        thread.join(60)
