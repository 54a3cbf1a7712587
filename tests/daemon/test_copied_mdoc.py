"""A copy of a series mdoc made in the session folder during the session.

An operator copies ``TS_01.mrc.mdoc`` in the session folder (Windows names the copy
``TS_01.mrc - Copy.mdoc``, which sorts before the original). Both list the same movies. The
movies stay the tilts of TS_01, whose name their file names carry: none is corrected again,
neither while the daemon runs nor after a restart, and their records, pre-exposures and TS_01's
stack are unchanged. The copy's series is reported (``series_warning``, in the log and on the
feed, naming TS_01) and gets no movie.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from recording_log import RecordingLog
from series_session import copied_series
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config

COPY = "TS_01.mrc - Copy.mdoc"


def _run(watch: Path, out: Path, *listeners: ServiceListener) -> RecordingLog:
    """The daemon on ``watch`` until idle (state and outputs in ``out``); its log."""
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=1.0, polling="on")
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.5, mdoc_quiet_s=0.2), mode="on")
    log = RecordingLog()
    run_until_idle(Service(config, logger=log, resolver=resolver, listeners=list(listeners)),
                   guard_s=30.0)
    return log


def test_a_copy_of_the_series_mdoc_neither_takes_its_tilts_nor_has_them_corrected_again(
        tmp_path):
    watch, out, tilts = copied_series(tmp_path, seed=9)
    mdoc = watch / "TS_01.mrc.mdoc"

    class Operator(ServiceListener):
        """Copies the series mdoc once TS_01 is assembled."""

        def on_series_event(self, event):
            if event.kind == "completed" and event.series == "TS_01" and \
                    not (watch / COPY).exists():
                shutil.copy(mdoc, watch / COPY)

    class Feed(ServiceListener):
        """The series warnings a live view hears."""

        def __init__(self):
            self.warnings = []

        def on_series_event(self, event):
            if event.kind == "warning":
                self.warnings.append((event.series, event.reason))

    feed = Feed()
    runs = [_run(watch, out, Operator(), feed), _run(watch, out)]  # then a restart
    assert (watch / COPY).exists()
    names = sorted(t.movie.path.name for t in tilts)
    done = [Path(f["movie"]).name for log in runs for _, e, f in log.events if e == "movie_done"]
    assert sorted(done) == names  # each once, in the first run
    for log in runs:
        assert [f for _, e, f in log.events if e == "movie_redo_metadata_changed"] == []
    warned = [(f.get("series"), f["reason"])
              for log in runs for _, e, f in log.events if e == "series_warning"]
    shared = ("TS_01", "movies listed by the mdocs of both TS_01 and TS_01.mrc - Copy stay "
                       f"tilts of TS_01 (the first: {names[0]})")
    assert warned == [shared] * 2  # once in each run, naming the series in its own field
    assert feed.warnings == [shared]  # and on the feed, as an assembly's warnings are
    for t in tilts:
        tilt = json.loads((out / f"{t.movie.path.stem}.motion.json").read_text())["tilt"]
        assert tilt["series"] == "TS_01" and tilt["mdoc"] == str(mdoc)
        assert tilt["pre_exposure_e_A2"] == pytest.approx(t.pre_exposure_e_A2, abs=1e-9)
    angles = [float(a) for a in (out / "TS_01" / "TS_01.tlt").read_text().split()]
    assert angles == sorted(t.tilt_deg for t in tilts)
    assert not (out / "TS_01.mrc - Copy").exists()
