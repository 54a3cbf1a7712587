"""Complete series are not looked at again at every scan, only when something they read
changes (a state database of months holds thousands of them: daemon/series/settled.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import daemon.series.resolver as resolver_module
from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.series.options import resolver_from_config
from daemon.series.settled import SettledSeries
from daemon.settings.config import Config
from daemon.state.ledger import Ledger
from daemon.simulation.tilt_series import simulate_tilt_series

import numpy as np

SERIES = {"TS_01", "TS_02"}


def _settled_ts01(settled: SettledSeries, summary: object, state: object, *,
                  watches_renames: bool = False) -> None:
    settled.settle("TS_01", summary, state, ["TS_01_001.tif", "TS_01_002.tif"],
                   watches_renames=watches_renames)


def test_a_settled_series_holds_until_a_movie_it_read_is_written_comes_or_goes():
    settled, summary, state = SettledSeries(), object(), object()
    _settled_ts01(settled, summary, state)
    assert settled.holds("TS_01", summary, state)
    assert not settled.holds("TS_01", object(), state)  # its folder was resolved again
    assert not settled.holds("TS_01", summary, object())  # assembled, re-opened, removed
    settled.look(SERIES, touched=["TS_02_001.tif"], disk_names={"TS_02_001.tif"},
                 unrecorded=set())
    assert settled.holds("TS_01", summary, state)  # another series' movie
    settled.look(SERIES, touched=["TS_01_002.tif"], disk_names={"TS_02_001.tif"},
                 unrecorded=set())
    assert not settled.holds("TS_01", summary, state)  # its tilt's row was written

    _settled_ts01(settled, summary, state)
    settled.look(SERIES, touched=[], disk_names={"TS_02_001.tif", "TS_01_001.tif"},
                 unrecorded=set())
    assert not settled.holds("TS_01", summary, state)  # a file of its name came
    _settled_ts01(settled, summary, state)
    settled.look(SERIES, touched=[], disk_names={"TS_02_001.tif", "TS_01_001.tif"},
                 unrecorded=set())
    assert settled.holds("TS_01", summary, state)  # still there: nothing changed
    settled.look(SERIES, touched=[], disk_names={"TS_02_001.tif"}, unrecorded=set())
    assert not settled.holds("TS_01", summary, state)  # and went


def test_only_a_series_with_a_tilt_quarantined_as_vanished_follows_new_unrecorded_files():
    settled, summary, state = SettledSeries(), object(), object()
    _settled_ts01(settled, summary, state, watches_renames=True)
    settled.settle("TS_02", summary, state, ["TS_02_001.tif"], watches_renames=False)
    settled.look(SERIES, touched=[], disk_names=set(), unrecorded={((1, 2), 3, 4)})
    assert not settled.holds("TS_01", summary, state)  # its tilt may be that file, renamed
    assert settled.holds("TS_02", summary, state)


def test_a_series_gone_from_the_resolution_is_forgotten():
    settled, summary, state = SettledSeries(), object(), object()
    _settled_ts01(settled, summary, state)
    settled.look({"TS_02"}, touched=[], disk_names=set(), unrecorded=set())
    assert not settled.holds("TS_01", summary, state) and len(settled) == 0


@pytest.fixture
def evaluations(monkeypatch):
    """(series, status before) of every look the resolver takes at a series."""
    calls: list[tuple[str, str]] = []
    original = resolver_module.update_series_state

    def counted(state, obs, **kw):
        calls.append((state.name, state.status))
        return original(state, obs, **kw)

    monkeypatch.setattr(resolver_module, "update_series_state", counted)
    return calls


def test_complete_series_are_not_looked_at_again_until_the_metadata_of_their_tilts_moves(
        tmp_path, evaluations):
    watch, out = tmp_path / "w", tmp_path / "out"
    tilts = {}
    for k, grid in enumerate(("grid1", "grid2")):
        tilts[grid] = simulate_tilt_series(
            watch / grid, rng=np.random.default_rng(40 + k), name="TS_01", n_tilts=3,
            shape_yx=(32, 32), n_frames=3, frame_interval_s=0.0, tilt_interval_s=0.0,
            lock=False, sleep=lambda s: None)
    out.mkdir()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.1,
                    exit_when_idle_s=3.0, polling="on", log_level="warning",
                    # the service is not idle until grid1's rewritten mdoc has settled
                    options={"tilt_series": "on", "mdoc_quiet": 0.3, "metadata_wait": 1.0})
    seen: list[tuple[str, str]] = []
    beats_after: dict[str, int] = {}
    lock = watch / "grid2" / "TS_01.mrc.openTS"

    class Retake(ServiceListener):
        """Once grid1's series is complete, and a few quiet heartbeats later, the operator
        corrects its first tilt's dose in the mdoc: its tilts are redone and it re-opens."""

        def on_series_event(self, event):
            seen.append((event.series, event.kind))

        def on_heartbeat(self, beat):
            for name in beats_after:
                beats_after[name] += 1
            if ("grid1/TS_01", "completed") in seen and "grid1/TS_01" not in beats_after:
                beats_after["grid1/TS_01"] = 0
            if beats_after.get("grid1/TS_01") == 5:
                mdoc = watch / "grid1" / "TS_01.mrc.mdoc"
                old = f"ExposureDose = {tilts['grid1'][0].dose_e_A2:.4f}"
                mdoc.write_text(mdoc.read_text().replace(old, "ExposureDose = 5.0000"))
            # SerialEM's lock appears beside grid2's mdoc for a few beats while it is settled
            if beats_after.get("grid1/TS_01") == 2:
                lock.touch()
            if beats_after.get("grid1/TS_01") == 4:
                lock.unlink()

    assert Service(config, listeners=[Retake()], resolver=resolver_from_config(config)).run() == 0
    assert beats_after.get("grid1/TS_01", 0) > 5  # heartbeats after it completed

    def complete_looks(series: str) -> int:
        return sum(1 for name, status in evaluations if name == series and status == "complete")

    # each complete series is looked at once more after it completes (it settles), not at
    # every scan (over a hundred here): grid2's once more when its lock appears and when it
    # goes (below), grid1's again when its mdoc moved its tilts' doses (re-assembled); the
    # run lasts until grid1's rewritten mdoc has settled (1 s), and grid2 may settle in it
    assert complete_looks("grid2/TS_01") <= 5
    assert [kind for series, kind in seen if series == "grid1/TS_01"
            and kind in ("completed", "reopened")] == ["completed", "reopened", "completed"]
    assert complete_looks("grid1/TS_01") <= 4
    assert Path(out / "grid1" / "TS_01" / "TS_01.mrc").is_file()
    # the lock that came and went while grid2's series was settled is noted, as it would be
    # were the series looked at at every scan: once re-opened, it completes when its lock goes
    with Ledger(out / "motionwatch.sqlite") as ledger:
        assert ledger.series_states()["grid2/TS_01"]["lock_seen"] is True


def test_a_tilt_corrected_again_between_two_scans_reopens_its_complete_series(tmp_path):
    """A tilt's file written again after its series was assembled (a new version: corrected
    again) re-opens the series though the service never saw it unfinished (its correction took
    less than a scan): the stacks are assembled again from the rows of now."""
    import os

    watch, out = tmp_path / "w", tmp_path / "out"
    tilts = simulate_tilt_series(watch, rng=np.random.default_rng(44), name="TS_01", n_tilts=3,
                                 shape_yx=(32, 32), n_frames=3, frame_interval_s=0.0,
                                 tilt_interval_s=0.0, lock=False, sleep=lambda s: None)
    out.mkdir()
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.1,
                    exit_when_idle_s=3.0, polling="on", log_level="warning",
                    options={"tilt_series": "on", "mdoc_quiet": 0.3})
    seen: list[str] = []
    beats = [0]

    class Rewrite(ServiceListener):
        def on_series_event(self, event):
            seen.append(event.kind)

        def on_heartbeat(self, beat):
            if "completed" in seen:
                beats[0] += 1
            if beats[0] == 5:  # the first tilt's file written again (another mtime)
                movie = tilts[0].movie.path
                mtime = movie.stat().st_mtime_ns + 10**9
                os.utime(movie, ns=(mtime, mtime))

    assert Service(config, listeners=[Rewrite()], resolver=resolver_from_config(config)).run() == 0
    assert [k for k in seen if k in ("completed", "reopened")] == [
        "completed", "reopened", "completed"]
    with Ledger(out / "motionwatch.sqlite") as ledger:
        state = ledger.series_states()["TS_01"]
        versions = ledger.rows(path=str(tilts[0].movie.path))
    # both versions corrected; the stacks of now are assembled from the newer one's row
    assert [r.status for r in versions] == ["done", "done"] and state["generation"] == 2
    assembled = {m: (i, f) for m, i, f in state["assembled_rows"]}
    assert assembled["TS_01_000_0.0.mrc"] == (versions[-1].row_id, versions[-1].finished)
