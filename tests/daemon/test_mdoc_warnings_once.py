"""A warning about an mdoc's file (its text encoding, a hole in it) is said once in the log.

A Windows PC writes an accented folder in SubFramePath in cp1252; the mdoc is read as written and
its warning is kept in every tilt's record, but the log says it once, as ``mdoc_warning``: it was
said again at every section the growing mdoc gained (the note held a count of lines), and once
more per tilt as ``movie_metadata_warning``, about 80 lines for a 41-tilt series.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from recording_log import RecordingLog
from service_run import run_until_idle

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.events import Observation, ScanResult
from daemon.series.mdoc_watch import MdocWatcher
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config
from daemon.simulation.tilt_series import simulate_tilt_series

_REAL_MDOC = Path(__file__).parent.parent / "data" / "mdoc" / "TS_01.mrc.mdoc"


class _NoStore:
    def set_mdoc_state(self, *args: object, **kwargs: object) -> None:
        pass

    def mdoc_states(self) -> dict:
        return {}


def test_a_growing_cp1252_mdoc_is_warned_about_once_not_at_each_new_section(tmp_path):
    text = _REAL_MDOC.read_text().replace("D:\\DATA\\Flo", "D:\\Données\\Flo")
    head, *sections = re.split(r"(?=\[ZValue = )", text)
    assert len(sections) == 41 and "Données" in text
    said: list[str] = []
    once: set[tuple[str, str]] = set()

    def log_once(level: str, event: str, subject: str, reason: str, **kw: object) -> None:
        if (subject, reason) not in once:  # as the resolver's once-log keys it
            once.add((subject, reason))
            said.append(f"{event}: {reason}")

    watcher = MdocWatcher(_NoStore(), log=RecordingLog(), log_once=log_once)
    mdoc = tmp_path / "TS_01.mrc.mdoc"
    for n in range(1, len(sections) + 1):  # SerialEM appends a section per tilt
        mdoc.write_bytes((head + "".join(sections[:n])).encode("cp1252"))
        os.utime(mdoc, ns=(n * 10**9, n * 10**9))
        size = mdoc.stat().st_size
        watcher.read(ScanResult(observations=(
            Observation(mdoc, size, n * 10**9, "metadata", None),)), now=float(n))
    assert said == ["mdoc_warning: TS_01.mrc.mdoc: lines not UTF-8 read as Windows cp1252"]


def _watch_until_idle(watch: Path, out: Path) -> RecordingLog:
    """A tilt-series daemon (fake corrections) run on ``watch`` until idle: its log."""
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams()), settle_time_s=0.1,
                    scan_interval_s=0.05, heartbeat_s=0.2, polling="on", exit_when_idle_s=1.0,
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3})
    log = RecordingLog()
    run_until_idle(Service(config, runner="fake_runners:correct",
                           resolver=resolver_from_config(config), logger=log))
    return log


def test_a_cp1252_series_mdoc_is_warned_about_once_not_once_more_per_tilt(tmp_path):
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    simulate_tilt_series(watch, rng=np.random.default_rng(1), n_tilts=7, shape_yx=(32, 32),
                         n_frames=4, frame_interval_s=0.0, tilt_interval_s=0.0, lock=False)
    mdoc = watch / "TS_01.mrc.mdoc"
    lines = [line.replace("SubFramePath = ", "SubFramePath = D:\\Données\\frames\\")
             if line.startswith("SubFramePath") else line
             for line in mdoc.read_text().splitlines()]
    mdoc.write_bytes("\n".join(lines).encode("cp1252") + b"\n")
    log = _watch_until_idle(watch, out)
    assert len(log.named("movie_done")) == 7
    said = [event for _, event, fields in log.events if "cp1252" in str(fields.get("reason"))]
    assert said == ["mdoc_warning"]


def test_a_series_whose_every_tilt_disagrees_alike_is_warned_about_once_its_records_keep_each(
        tmp_path):
    """TS_017's FrameDosesAndNumber disagreed with its ExposureDose in every tilt: 60 warning
    lines, one per tilt, the same calibration each time. One is said for the series; every
    tilt's record keeps its own (with its numbers); a warning of another kind is still said."""
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    simulate_tilt_series(watch, rng=np.random.default_rng(2), n_tilts=6, shape_yx=(32, 32),
                         n_frames=4, frame_interval_s=0.0, tilt_interval_s=0.0, lock=False)
    mdoc = watch / "TS_01.mrc.mdoc"

    def frame_doses_high(match: re.Match) -> str:  # each tilt's frames sum to 1.25 x its dose
        return f"FrameDosesAndNumber = {float(match.group(1)) * 1.25:.5f} {match.group(2)}"

    mdoc.write_text(re.sub(r"FrameDosesAndNumber = (\S+) (\d+)", frame_doses_high,
                           mdoc.read_text()))
    log = _watch_until_idle(watch, out)
    done = log.named("movie_done")
    assert len(done) == 6
    said = [fields["reason"] for _, event, fields in log.events
            if event == "movie_metadata_warning"]
    assert len(said) == 1 and "FrameDosesAndNumber sums to" in said[0], said
    records = [json.loads(path.read_text()) for path in sorted(out.rglob("*.motion.json"))]
    kept = [w for r in records for w in r["tilt"]["warnings"] if "FrameDosesAndNumber" in w]
    assert len(kept) == 6 and len(set(kept)) == 6  # each with its own movie and sums


def test_a_tilt_that_disagrees_by_another_factor_than_its_series_is_warned_about_as_well(
        tmp_path):
    """Every tilt's frames sum to 1.25x its dose but one's to 3x (its frame mdoc from
    another session): the one was hidden behind the series' first warning."""
    watch, out = tmp_path / "session", tmp_path / "out"
    out.mkdir()
    simulate_tilt_series(watch, rng=np.random.default_rng(2), n_tilts=6, shape_yx=(32, 32),
                         n_frames=4, frame_interval_s=0.0, tilt_interval_s=0.0, lock=False)
    mdoc = watch / "TS_01.mrc.mdoc"
    seen = iter(range(100))

    def frame_doses_high(match: re.Match) -> str:
        factor = 3.0 if next(seen) == 4 else 1.25
        return f"FrameDosesAndNumber = {float(match.group(1)) * factor:.5f} {match.group(2)}"

    mdoc.write_text(re.sub(r"FrameDosesAndNumber = (\S+) (\d+)", frame_doses_high,
                           mdoc.read_text()))
    log = _watch_until_idle(watch, out)
    assert len(log.named("movie_done")) == 6
    said = [fields["reason"] for _, event, fields in log.events
            if event == "movie_metadata_warning"]
    assert len(said) == 2 and all("FrameDosesAndNumber sums to" in s for s in said), said


def test_the_template_of_a_tilt_warning_drops_its_movie_and_numbers_only():
    from daemon.series.resolver import warning_template

    a = "TS_01_003_9.0.tif: FrameDosesAndNumber sums to 3.1 but the tilt dose is 2.48 e/Å²"
    b = "TS_01_004_-9.0.tif: FrameDosesAndNumber sums to 2.9 but the tilt dose is 2.32 e/Å²"
    assert warning_template(a) == warning_template(b)  # both 1.25x
    assert warning_template(a) != warning_template(
        "TS_01_005_12.0.tif: FrameDosesAndNumber sums to 7.5 but the tilt dose is 2.5 e/Å²")
    # a sum written as a whole number (3.0 as "3") is a number like the others
    whole = warning_template("a.tif: FrameDosesAndNumber sums to 3 but the tilt dose is 2.4")
    assert whole == warning_template(
        "b.tif: FrameDosesAndNumber sums to 3.125 but the tilt dose is 2.5")
    assert whole != warning_template(
        "c.tif: FrameDosesAndNumber sums to 3 but the tilt dose is 1.2")
    # another tilt missing is another warning
    assert (warning_template("tilt index(es) [3] of TS_01 never seen")
            != warning_template("tilt index(es) [3, 7] of TS_01 never seen"))
    assert warning_template(a) != warning_template("TS_01_004_-9.0.tif: dose 2.3 e/Å² from "
                                                   "DoseRate (measured at the camera)")
