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
