"""A stream of file-system events cannot keep the daemon's main loop rescanning a large tree."""

import threading
import time

from recording_log import RecordingLog
from service_run import running

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import EVENT_SCAN_GAP_FACTOR, Service
from daemon.intake.discover import Discovery
from daemon.settings.config import Config

SCAN_S = 0.15  # what each scan takes here, as listing a tree of about 10,000 movies does


def test_rescans_woken_by_events_leave_the_main_loop_three_times_a_scan_for_other_work(
        tmp_path, monkeypatch):
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    scans: list[tuple[float, float]] = []
    real_scan = Discovery.scan

    def slow_scan(self, **kwargs):
        started = time.monotonic()
        time.sleep(SCAN_S)
        result = real_scan(self, **kwargs)
        scans.append((started, time.monotonic()))
        return result

    monkeypatch.setattr(Discovery, "scan", slow_scan)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=30.0, heartbeat_s=0.2, polling="off")
    service = Service(config, runner="fake_runners:correct", logger=RecordingLog())
    with running(service) as wait_for:
        wait_for(lambda: len(scans) >= 1)  # the first scan, at start
        assert service.discovery.uses_events
        burst_from = time.monotonic()
        stop = threading.Event()

        def arrive() -> None:  # a movie made (and closed) every 20 ms: two events each
            i = 0
            while not stop.is_set():
                (watch / f"burst_{i:04d}.mrc").write_bytes(b"")
                i += 1
                time.sleep(0.02)

        writer = threading.Thread(target=arrive)
        writer.start()
        try:  # at least 3 s, and until events have woken 3 scans (a slow machine scans slower)
            wait_for(lambda: time.monotonic() - burst_from > 3.0 and sum(
                s[0] > burst_from for s in scans) >= 3, timeout_s=20.0)
        finally:
            stop.set()
            writer.join()
        burst_s = time.monotonic() - burst_from
    woken = [s for s in scans if s[0] > burst_from]
    assert len(woken) >= 2, "events woke the scanner"
    for (start, end), (next_start, _) in zip(woken, woken[1:]):
        # the service counts admission in the scan's length too: the gap is at least this
        assert next_start - end >= (EVENT_SCAN_GAP_FACTOR - 0.5) * (end - start)
    # without the gap, a scan every 0.1 s after the one before: about 12 in 3 s
    assert len(woken) <= burst_s / ((1 + EVENT_SCAN_GAP_FACTOR) * SCAN_S) + 1


def test_the_start_up_scan_does_not_hold_back_the_rescans_events_wake(tmp_path, monkeypatch):
    """The first scan reads every row of the state (seconds, with months of sessions): its
    length is not what the next scans cost, and must not space them."""
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    starts: list[float] = []
    real_scan = Discovery.scan

    def scan(self, **kwargs):
        starts.append(time.monotonic())
        if len(starts) == 1:
            time.sleep(2.0)  # the start-up scan
        return real_scan(self, **kwargs)

    monkeypatch.setattr(Discovery, "scan", scan)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=30.0, heartbeat_s=0.2, polling="off")
    service = Service(config, runner="fake_runners:correct", logger=RecordingLog())
    with running(service) as wait_for:
        wait_for(lambda: service.discovery is not None and service.discovery.state().scans)
        made = time.monotonic()
        (watch / "new.mrc").write_bytes(b"")
        wait_for(lambda: len(starts) >= 2, timeout_s=10.0)
    assert len(starts) >= 2
    # three times the start-up scan would be 6 s; the periodic rescan 30 s
    assert starts[1] - made < 4.0
