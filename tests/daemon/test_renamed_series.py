"""A series mdoc renamed after its series was assembled.

The operator renames ``TS_01.mrc.mdoc`` to ``TS_02.mrc.mdoc`` once TS_01 is assembled; the
doses are unchanged. The tilts are now TS_02's: each movie's record, its RELION entry and the
stacks name their series, so they are corrected again as tilts of TS_02 (log event
``movie_redo_metadata_changed``, reason ``series TS_01 -> TS_02``), TS_02 is assembled with the
same pre-exposures, and TS_01, left without tilts, has its assembled files removed. The old
mdoc is kept as last read for ``mdoc_vanish_grace_s`` (SerialEM rewrites an mdoc by renaming a
new file over it), so nothing moves before that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import starfile
from recording_log import RecordingLog
from series_session import copied_series
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.commands.status import collect_status
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config


class _RenamesTheMdocOnceAssembled(ServiceListener):
    """The operator: renames ``TS_01.mrc.mdoc`` to ``TS_02.mrc.mdoc`` once TS_01 is assembled."""

    def __init__(self, watch: Path, out: Path) -> None:
        self.mdoc, self.out = watch / "TS_01.mrc.mdoc", out

    def on_series_event(self, event):
        if event.kind == "completed" and event.series == "TS_01" and self.mdoc.exists():
            assert (self.out / "TS_01" / "TS_01.mrc").exists()
            self.mdoc.rename(self.mdoc.with_name("TS_02.mrc.mdoc"))


def _run_renaming_the_mdoc(watch: Path, out: Path, *listeners: ServiceListener,
                           **service: object) -> RecordingLog:
    """The daemon until idle while the operator renames the series mdoc; its log."""
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=1.0, polling="on", max_attempts=1)
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.2,
                                               mdoc_vanish_grace_s=0.3), mode="on")
    log = RecordingLog()
    run_until_idle(Service(config, logger=log, resolver=resolver, **service,
                           listeners=[*listeners, _RenamesTheMdocOnceAssembled(watch, out)]),
                   guard_s=30.0)
    return log


def test_a_series_mdoc_renamed_after_assembly_moves_its_tilts_to_the_new_series(tmp_path):
    watch, out, tilts = copied_series(tmp_path, seed=5)
    mdoc = watch / "TS_01.mrc.mdoc"
    log = _run_renaming_the_mdoc(watch, out, RelionListener(RelionOptics()))

    assert not mdoc.exists()
    redone = [f for _, e, f in log.events if e == "movie_redo_metadata_changed"]
    assert sorted(Path(f["movie"]).name for f in redone) == sorted(
        t.movie.path.name for t in tilts)
    assert {f["reason"] for f in redone} == {"series TS_01 -> TS_02"}
    completed = [f["series"] for _, e, f in log.events if e == "series_completed"]
    assert completed == ["TS_01", "TS_02"]
    for t in tilts:
        tilt = json.loads((out / f"{t.movie.path.stem}.motion.json").read_text())["tilt"]
        assert tilt["series"] == "TS_02"
        assert tilt["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
    angles = [float(a) for a in (out / "TS_02" / "TS_02.tlt").read_text().split()]
    assert angles == sorted(t.tilt_deg for t in tilts)
    table = starfile.read(out / "TS_02" / "TS_02.star", always_dict=True)["TS_02"]
    assert sorted(Path(m).name for m in table["rlnMicrographMovieName"]) == sorted(
        t.movie.path.name for t in tilts)
    assert not (out / "TS_01").exists()  # stacks, links, STAR, then the folder
    # Warp's mdocs: the new name's alone (the old one imported its movies a second time)
    assert sorted(p.name for p in (out / "warp_mdocs").iterdir()) == ["TS_02.mdoc"]
    global_star = starfile.read(out / "corrected_tilt_series.star", always_dict=True)
    assert list(global_star["global"]["rlnTomoName"]) == ["TS_02"]
    assert [f["series"] for _, e, f in log.events if e == "series_outputs_removed"] == ["TS_01"]
    # status lists the series the tilts are in, not the one left without them (it showed
    # "TS_01: open, 0/5 tilts done, stacks in" a folder removed)
    status = collect_status(out / "motionwatch.sqlite")
    assert [s["series"] for s in status["series"]] == ["TS_02"]


def test_a_quarantined_tilt_of_the_renamed_series_does_not_keep_its_old_files(tmp_path):
    """One tilt of TS_01 could not be corrected (quarantined, left out of the stacks; its row
    still names TS_01, as nothing corrects it again). The mdoc renamed, the other tilts move to
    TS_02 and TS_01's assembled files are removed all the same: a quarantined row keeps no
    series alive (retried, it is admitted afresh, as a tilt of TS_02)."""
    watch, out, tilts = copied_series(tmp_path, seed=6, n_tilts=4)
    bad = watch / tilts[2].movie.path.name
    bad.with_name(bad.name + ".bad").write_text("")
    log = _run_renaming_the_mdoc(watch, out, runner="fake_runners:prepare_unless_bad")

    assert [Path(f["movie"]).name for _, e, f in log.events if e == "movie_quarantined"] == [
        bad.name]
    completed = [f["series"] for _, e, f in log.events if e == "series_completed"]
    assert completed == ["TS_01", "TS_02"]
    angles = [float(a) for a in (out / "TS_02" / "TS_02.tlt").read_text().split()]
    assert angles == sorted(t.tilt_deg for k, t in enumerate(tilts) if k != 2)
    assert [f["series"] for _, e, f in log.events if e == "series_outputs_removed"] == ["TS_01"]
    assert not (out / "TS_01").exists()
