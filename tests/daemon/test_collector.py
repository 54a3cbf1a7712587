"""The daemon process collects its youngest garbage generation every 50,000 allocations, not
700: objects that live one scan die by reference counting before they reach the oldest
generation, whose collections walked the whole heap about every second scan."""

import gc

import pytest

from daemon.commands.cli import main
from daemon.system.collector import YOUNG_COLLECTION_ALLOCATIONS, paced_garbage_collector


@pytest.fixture
def thresholds_given_back():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_pacing_raises_only_the_youngest_generations_threshold_and_gives_it_back(
        thresholds_given_back):
    gc.set_threshold(700, 10, 10)
    with paced_garbage_collector():
        assert gc.get_threshold() == (YOUNG_COLLECTION_ALLOCATIONS, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)
    assert YOUNG_COLLECTION_ALLOCATIONS >= 50 * 700


def test_objects_of_one_scan_are_not_promoted_to_the_oldest_generation(thresholds_given_back):
    """A scan's worth of short-lived records (made, kept for the scan, dropped) beside a large
    long-lived heap: with CPython's default pace they reach the oldest generation and trigger
    collections of the whole heap; with the daemon's, none."""
    long_lived = [{"row": i} for i in range(200_000)]  # the state rows and listings
    gc.collect()

    def full_collections_over_scans() -> int:
        counts = []
        gc.callbacks.append(lambda phase, info: counts.append(info["generation"])
                            if phase == "stop" else None)
        try:
            for _ in range(10):
                scan = [(i, [i]) for i in range(20_000)]  # lives one scan
                del scan
        finally:
            gc.callbacks.pop()
        return counts.count(2)

    gc.set_threshold(700, 10, 10)
    assert full_collections_over_scans() >= 2
    with paced_garbage_collector():
        assert full_collections_over_scans() == 0
    assert long_lived[-1] == {"row": 199_999}


def test_the_watch_command_paces_the_collector_before_the_service_runs(
        tmp_path, monkeypatch, thresholds_given_back):
    seen = []

    class RecordingService:
        config_error = None  # no refusal to say

        def __init__(self, *args, **kwargs):
            pass

        def run(self):
            seen.append(gc.get_threshold())
            return 0

    monkeypatch.setattr("daemon.commands.watch.Service", RecordingService)
    gc.set_threshold(700, 10, 10)
    (tmp_path / "w").mkdir()
    assert main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1.0"]) == 0
    assert seen == [(YOUNG_COLLECTION_ALLOCATIONS, 10, 10)]
    assert gc.get_threshold() == (700, 10, 10)  # the command leaves the process as it found it
