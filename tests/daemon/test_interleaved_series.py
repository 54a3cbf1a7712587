"""Series acquired in turns in one folder (PACEtomo), with no ``.openTS`` lock.

PACEtomo takes one tilt of every target, then the next tilt, appending each target's section
to its own mdoc. A round over the targets takes minutes, longer than the mdoc quiet time by
which a series without a lock is taken to have ended: each series was completed, assembled
and announced after every round, then re-opened by its next tilt (stacks re-read each time,
and a feed subscriber starting a reconstruction on ``completed`` got partial series).
"""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
from recording_log import RecordingLog
from series_session import N_FRAMES, PIXEL_A, SHAPE, write_series_mdoc
from service_run import run_until_idle  # tests/helpers

from correction.params import CorrectionParams, DoseParams
from daemon.engine.service import Service
from daemon.series.interleaved import InterleavedMdocs
from daemon.series.resolution import SeriesConfig
from daemon.series.resolver import TiltSeriesResolver
from daemon.settings.config import Config
from daemon.simulation.tilt_series import simulate_tilt_series

QUIET_S = 0.9  # mdoc quiet time (s); a round of the targets takes longer


def _targets(staging, names) -> dict:
    """Three tilts of each PACEtomo target ``names``, rendered in ``staging``: name -> tilts."""
    return {name: simulate_tilt_series(staging / name, rng=np.random.default_rng(k), name=name,
                                       n_tilts=3, shape_yx=SHAPE, n_frames=N_FRAMES,
                                       pixel_size_A=PIXEL_A, frame_interval_s=0,
                                       tilt_interval_s=0, lock=False, sleep=lambda s: None)
            for k, name in enumerate(names)}


def test_series_written_in_turns_complete_once_each_when_the_acquisition_ends(tmp_path):
    """Four targets, three rounds of one tilt each, a target every 0.35 s (a round takes
    1.4 s, the quiet time is 0.9 s): each series completes once, with all its tilts (it
    completed after each round)."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, out, staging):
        folder.mkdir()
    names = ("L1_tgt_001", "L1_tgt_002", "L1_tgt_003", "L1_tgt_004")
    series = _targets(staging, names)

    def pacetomo() -> None:  # a target every 0.35 s: a round of 1.4 s, longer than quiet
        for k in range(3):
            for name, tilts in series.items():
                shutil.copy2(tilts[k].movie.path, watch / tilts[k].movie.path.name)
                write_series_mdoc(watch, tilts[:k + 1], name=name)
                time.sleep(0.35)

    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=1.5, polling="on")
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.3, mdoc_quiet_s=QUIET_S),
                                  mode="on")
    log = RecordingLog()
    writer = threading.Thread(target=pacetomo, daemon=True)
    writer.start()
    run_until_idle(Service(config, resolver=resolver, logger=log), guard_s=40.0)
    writer.join(timeout=5)
    completed = [e["series"] for e in log.named("series_completed")]
    assert sorted(completed) == sorted(names), completed
    assert all(e["tilts"] == 3 for e in log.named("series_completed"))


@pytest.mark.parametrize("tilts_of_the_first", [1, 2])
def test_a_series_aborted_early_does_not_wait_for_the_next_series_of_its_folder(
        tmp_path, tilts_of_the_first):
    """A series without a lock stops after one or two tilts; the next series of the folder
    starts within the quiet time and runs for 6 s. The first completes before the second
    ends: by its own quiet time (two tilts: no turn was seen), or by the series idle timeout
    (one tilt, taken as PACEtomo's first round: it waited for the whole folder, the session)."""
    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, out, staging):
        folder.mkdir()

    def series(name, n, seed):
        return simulate_tilt_series(staging / name, rng=np.random.default_rng(seed), name=name,
                                    n_tilts=n, shape_yx=SHAPE, n_frames=N_FRAMES,
                                    pixel_size_A=PIXEL_A, frame_interval_s=0,
                                    tilt_interval_s=0, lock=False, sleep=lambda s: None)

    first, second = series("TS_01", tilts_of_the_first, 1), series("TS_02", 12, 2)
    ended: dict[str, float] = {}

    def serialem() -> None:
        for k in range(len(first)):
            shutil.copy2(first[k].movie.path, watch / first[k].movie.path.name)
            write_series_mdoc(watch, first[:k + 1], name="TS_01")
            time.sleep(0.3)
        for k in range(12):
            shutil.copy2(second[k].movie.path, watch / second[k].movie.path.name)
            write_series_mdoc(watch, second[:k + 1], name="TS_02")
            time.sleep(0.5)
        ended["TS_02"] = time.monotonic()

    class Completions(RecordingLog):
        def info(self, event, **kw):
            if event == "series_completed":
                ended.setdefault(f"{kw['series']} completed", time.monotonic())
            super().info(event, **kw)

    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                    heartbeat_s=0.2, exit_when_idle_s=1.5, polling="on")
    resolver = TiltSeriesResolver(SeriesConfig(metadata_wait_s=0.3, mdoc_quiet_s=QUIET_S,
                                               idle_timeout_s=2.5), mode="on")
    writer = threading.Thread(target=serialem, daemon=True)
    writer.start()
    run_until_idle(Service(config, resolver=resolver, logger=Completions()), guard_s=40.0)
    writer.join(timeout=5)
    assert ended["TS_01 completed"] < ended["TS_02"] - 1.0, ended


def test_mdocs_become_partners_only_when_one_changed_between_two_changes_of_the_other():
    """Written in turns: partners, each unchanged only since the last change of both. Written
    one after the other, or in another folder: not partners."""
    seen = InterleavedMdocs()
    seen.look({"/w/a.mrc.mdoc": 1.0, "/w/b.mrc.mdoc": 2.0, "/x/c.mrc.mdoc": 2.5})
    seen.look({"/w/a.mrc.mdoc": 3.0, "/w/b.mrc.mdoc": 2.0, "/x/c.mrc.mdoc": 2.5})
    assert seen.partners == {"/w/a.mrc.mdoc": {"/w/b.mrc.mdoc"},
                             "/w/b.mrc.mdoc": {"/w/a.mrc.mdoc"}}
    seen.look({"/w/a.mrc.mdoc": 3.0, "/w/b.mrc.mdoc": 4.0, "/x/c.mrc.mdoc": 2.5})
    assert seen.unchanged_since_s("/w/a.mrc.mdoc", 3.0) == 4.0
    assert seen.unchanged_since_s("/x/c.mrc.mdoc", 2.5) == 2.5
    sequential = InterleavedMdocs()
    sequential.look({"/w/a.mrc.mdoc": 1.0})
    sequential.look({"/w/a.mrc.mdoc": 2.0})
    sequential.look({"/w/a.mrc.mdoc": 2.0, "/w/b.mrc.mdoc": 3.0})
    sequential.look({"/w/a.mrc.mdoc": 2.0, "/w/b.mrc.mdoc": 4.0})
    assert not sequential.partners
    seen.look({"/w/a.mrc.mdoc": 3.0})  # b gone: forgotten
    assert seen.partners == {"/w/a.mrc.mdoc": set()} or not seen.partners.get("/w/a.mrc.mdoc")


def test_series_written_in_turns_do_not_complete_at_a_restart_between_rounds(tmp_path):
    """The daemon restarts between two rounds; the first target's next tilt came while it was
    down. Which mdocs are written in turns is learnt in memory: at the first scan after the
    restart the other targets, unchanged for longer than the quiet time, had no partner and
    completed at once with the tilts of then (announced complete, partial stacks), then were
    assembled again at their end. Now every series completes once, with all its tilts."""
    from service_run import running

    watch, out, staging = tmp_path / "w", tmp_path / "out", tmp_path / "staging"
    for folder in (watch, out, staging):
        folder.mkdir()
    names = ("L1_tgt_001", "L1_tgt_002", "L1_tgt_003")
    series = _targets(staging, names)
    quiet_s = 2.0

    def tilt(name: str, k: int) -> None:
        tilts = series[name]
        shutil.copy2(tilts[k].movie.path, watch / tilts[k].movie.path.name)
        write_series_mdoc(watch, tilts[:k + 1], name=name)

    def service(log: RecordingLog) -> Service:
        config = Config(watch, out, out,
                        CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                        settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=2.0,
                        heartbeat_s=0.2, exit_when_idle_s=1.5, polling="on")
        return Service(config, logger=log, resolver=TiltSeriesResolver(
            SeriesConfig(metadata_wait_s=0.3, mdoc_quiet_s=quiet_s), mode="on"))

    first = RecordingLog()
    with running(service(first)):
        for k in range(2):  # two rounds, a target every 0.4 s (a round well within quiet)
            for name in names:
                tilt(name, k)
                time.sleep(0.4)
    assert not first.named("series_completed")
    time.sleep(quiet_s + 0.5)  # down for longer than the quiet time
    tilt(names[0], 2)  # the next round began while it was down

    def next_round() -> None:
        for name in names[1:]:
            time.sleep(0.4)
            tilt(name, 2)

    second = RecordingLog()
    writer = threading.Thread(target=next_round, daemon=True)
    writer.start()
    run_until_idle(service(second), guard_s=40.0)
    writer.join(timeout=5)
    completed = [(e["series"], e["tilts"]) for e in second.named("series_completed")]
    assert sorted(completed) == [(name, 3) for name in names], completed
