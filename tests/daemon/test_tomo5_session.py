"""A tilt series whose mdoc Thermo Fisher's Tomography 5 wrote.

Tomo 5's title line gives ``TiltAxisAngle = -171.35`` in a convention of its own (the Ot2Rec
mdoc in tests/data/mdoc: TiltAxisAngle + 90 = -RotationAngle, where SerialEM's tilt axis is
RotationAngle - 90). The daemon never passes it on as the tilt axis: the stacks' mdoc and
RELION's table do not carry it, and the log says to set ``tilt_axis`` (once).
"""

from __future__ import annotations

import starfile
from recording_log import RecordingLog
from series_session import copied_series
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics
from daemon.series.mdoc import read_mdoc
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config


def _run(watch, out) -> RecordingLog:
    """The daemon with the RELION hand-off until idle; its log."""
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=1.0, polling="on")
    log = RecordingLog()
    run_until_idle(Service(config, logger=log, listeners=[RelionListener(RelionOptics())],
                           resolver=TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.5,
                                                                    mdoc_quiet_s=0.2),
                                                       mode="on")), guard_s=30.0)
    return log


def test_tomography_5s_tilt_axis_is_not_taken_for_serialems_and_the_log_says_so(tmp_path):
    watch, out, tilts = copied_series(tmp_path, seed=4)
    mdoc = watch / "TS_01.mrc.mdoc"
    text = mdoc.read_text()
    serialem_title = "    Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 1"
    assert serialem_title in text
    mdoc.write_text(text.replace(serialem_title, "TiltAxisAngle = -171.35 Binning = 1 "
                                                 "SpotSize = 8"))
    log = _run(watch, out)

    assert [f["series"] for _, e, f in log.events if e == "series_completed"] == ["TS_01"]
    unknown = [f["reason"] for _, e, f in log.events if e == "tilt_axis_unknown"]
    assert unknown == ["Tomography 5's TiltAxisAngle = -171.35 is not SerialEM's tilt axis "
                       "(another convention) and is not used: set tilt_axis (--tilt-axis) for "
                       "the stacks' mdoc and RELION"]
    stack_mdoc = read_mdoc(out / "TS_01" / "TS_01.mrc.mdoc")
    assert stack_mdoc.tilt_axis_deg is None and stack_mdoc.tomo5_tilt_axis_deg is None
    table = starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]
    assert -171.35 not in set(table["rlnTomoNominalTiltAxisAngle"])
    assert len(table) == len(tilts)


def test_a_series_whose_mdoc_gives_no_tilt_axis_says_so_once(tmp_path):
    """No ``Tilt axis angle`` title (a series mdoc written by a script, or only frame mdocs):
    RELION's table got a tilt axis of 0, which its alignment hands to IMOD (85 degrees off
    here), and nothing was said."""
    watch, out, tilts = copied_series(tmp_path, seed=4)
    mdoc = watch / "TS_01.mrc.mdoc"
    text = mdoc.read_text()
    serialem_title = "    Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 1"
    mdoc.write_text(text.replace(serialem_title, "    binning = 1  spot = 8  camera = 1"))
    log = _run(watch, out)
    assert [f["series"] for _, e, f in log.events if e == "series_completed"] == ["TS_01"]
    (unknown,) = [f["reason"] for _, e, f in log.events if e == "tilt_axis_unknown"]
    assert unknown.startswith("no tilt axis") and "--tilt-axis" in unknown
    assert len(starfile.read(out / "TS_01" / "TS_01.star", always_dict=True)["TS_01"]) == len(tilts)
