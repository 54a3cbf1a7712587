"""Discovery takes a folder's listing from the scan before only where nothing waits on it: a
movie that admission still waits on is seen as it is at every scan, events or not."""

from __future__ import annotations

import mrcfile
import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.engine.admission import Admission, AdmissionSettings
from daemon.engine.faults import LedgerWrites
from daemon.events import NoMetadata
from daemon.intake.discover import Discovery
from daemon.state.ledger import Ledger

FRAME_BYTES = 32 * 32 * 2


def test_a_movie_paused_mid_write_is_not_quarantined_from_a_stale_listing(tmp_path):
    """The watched folder is given as a link, so inotify (which watchdog asks not to follow
    it) reports nothing for files directly in it; the writer pauses for less than the grace
    an incomplete movie gets, then writes on. Taken from a stale listing, the movie would look
    unchanged past the grace and be quarantined as incomplete."""
    real, watch, out = tmp_path / "real", tmp_path / "watch", tmp_path / "out"
    real.mkdir()
    out.mkdir()
    watch.symlink_to(real)
    full = real / "whole.mrc"
    with mrcfile.new(full) as mrc:
        mrc.set_data(np.ones((20, 32, 32), np.int16))
        mrc.voxel_size = 1.0
    data = full.read_bytes()
    full.unlink()
    movie = real / "m.mrc"
    movie.write_bytes(data[:-10 * FRAME_BYTES])  # 10 of the header's 20 frames
    now = [0.0]
    settings = AdmissionSettings(watch_dir=watch, out_dir=out,
                                 params=CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                                 settle_time_s=5.0, incomplete_grace_s=30.0,
                                 require_frame_mdoc=False)
    log = RecordingLog()
    ledger = Ledger(out / "state.sqlite3")
    admission = Admission(settings, ledger=lambda: ledger, resolver=NoMetadata(), log=log,
                          quarantined=lambda event: None, clock=lambda: now[0],
                          writes=LedgerWrites(log, lambda: now[0]))
    with Discovery(watch, polling="off", listing_still_s=10.0, full_scan_s=1000.0,
                   clock=lambda: now[0]) as discovery:
        assert discovery.uses_events
        reused = []
        while now[0] <= 60.0:
            if now[0] in (24.0, 50.0):  # the writer goes on after pauses under the 30 s grace
                with open(movie, "ab") as f:
                    f.write(data[-10 * FRAME_BYTES:-5 * FRAME_BYTES] if now[0] == 24.0
                            else data[-5 * FRAME_BYTES:])
            admission.take(discovery.scan(fresh=admission.busy_folders()))
            reused.append(discovery._counters.folders_reused)
            now[0] += 2.0
    assert [(r.key.size, r.status) for r in ledger.rows()] == [(len(data), "pending")], \
        "admitted once whole, never quarantined as incomplete"
    assert not any(reused[:-3]), "the folder of a waiting movie is listed at every scan"


def test_without_a_waiting_movie_the_same_folder_is_taken_from_the_last_listing(tmp_path):
    """The test above would pass if listings were never taken again: here they are."""
    real, watch = tmp_path / "real", tmp_path / "watch"
    real.mkdir()
    watch.symlink_to(real)
    (real / "done.mrc").write_bytes(b"x")
    now = [0.0]
    with Discovery(watch, polling="off", listing_still_s=10.0, full_scan_s=1000.0,
                   clock=lambda: now[0]) as discovery:
        for now[0] in (0.0, 10.0, 12.0):
            discovery.scan()
        assert discovery._counters.folders_reused == 1
        discovery.scan(fresh={str(watch)})
        assert discovery._counters.folders_reused == 0


def test_the_daemon_takes_listings_again_only_after_its_settle_time_and_mdoc_waits(
        tmp_path):
    """Longer than any: a file shown from a stale listing has already stood still long
    enough to count as complete, and a series mdoc as finished (its quiet time) or its last
    section as final (the metadata wait)."""
    from service_run import running

    from daemon.engine.service import Service
    from daemon.series.options import resolver_from_config
    from daemon.settings.config import Config

    (tmp_path / "w").mkdir()
    (tmp_path / "o").mkdir()
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    for settle_s, quiet_s, wait_s, expected_s in ((5.0, 10.0, 10.0, 60.0),
                                                  (45.0, 10.0, 10.0, 90.0),
                                                  (5.0, 300.0, 10.0, 304.0),
                                                  (5.0, 10.0, 3600.0, 3604.0)):
        config = Config(tmp_path / "w", tmp_path / "o", tmp_path / "o", params,
                        settle_time_s=settle_s, scan_interval_s=2.0, polling="off",
                        options={"tilt_series": "auto", "mdoc_quiet": quiet_s,
                                 "metadata_wait": wait_s})
        service = Service(config, runner="fake_runners:correct", logger=RecordingLog(),
                          resolver=resolver_from_config(config))
        with running(service) as wait_for:
            wait_for(lambda: service.discovery is not None and service.discovery.state().scans)
            assert service.discovery._listings.still_s == expected_s
