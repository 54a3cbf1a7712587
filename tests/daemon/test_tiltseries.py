"""The tilt-series resolver inside the service: SerialEM's own stack is not a movie.

SerialEM writes a tilt series' stack ``TS_01.mrc`` beside its mdoc ``TS_01.mrc.mdoc``. The stack
has a movie's name and is a valid MRC, but it must not be corrected, and it must not keep the
daemon busy: ``--exit-when-idle`` has to fire in such a folder.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mdoc_data import DATA
from service_run import run_until_idle  # tests/helpers

from correction.params import CorrectionParams, DoseParams
from daemon.settings.config import Config
from daemon.state.ledger import Ledger
from daemon.series.resolution import SeriesConfig
from daemon.engine.service import Service
from daemon.events import ServiceListener
from daemon.simulation.movies import write_movie_progressively
from daemon.series.resolver import TiltSeriesResolver


class StopReason(ServiceListener):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def on_stopping(self, reason: str) -> None:
        self.reasons.append(reason)


def _serialem_folder(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    shutil.copy(DATA / "TS_01.mrc.mdoc", watch / "TS_01.mrc.mdoc")
    stack = np.random.default_rng(0).poisson(1.0, (3, 32, 32)).astype(np.int16)
    write_movie_progressively(watch / "TS_01.mrc", stack, pixel_size_A=1.1, frame_interval_s=0)
    return watch, out


def _run_until_idle(watch, out, *, guard_s: float,
                    series_config: SeriesConfig = SeriesConfig()) -> list[str]:
    """Run the service with the tilt-series resolver; its stop reasons (a guard stops it after
    ``guard_s`` if it never goes idle)."""
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=1.0,
                    heartbeat_s=0.1, exit_when_idle_s=0.5, polling="on")
    stopping = StopReason()
    run_until_idle(Service(config, listeners=[stopping],
                           resolver=TiltSeriesResolver(series_config, mode="on")),
                   guard_s=guard_s)
    return stopping.reasons


def _stack_rows(watch, out):
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        return ledger.rows(path=str(watch / "TS_01.mrc"))


def test_a_serialem_stack_beside_its_series_mdoc_is_ignored_and_the_daemon_goes_idle(tmp_path):
    watch, out = _serialem_folder(tmp_path)
    reasons = _run_until_idle(watch, out, guard_s=30.0)
    assert reasons and "exit_when_idle" in reasons[0], reasons
    assert _stack_rows(watch, out) == []  # ignored: never recorded as a movie
    assert not list(out.glob("TS_01*.mrc")) and not list(out.glob("*.motion.json"))


def test_a_stack_still_locked_by_serialem_waits_until_the_lock_is_gone_then_is_ignored(tmp_path):
    watch, out = _serialem_folder(tmp_path)
    lock = watch / "TS_01.mrc.openTS"
    lock.write_text("")
    assert _run_until_idle(watch, out, guard_s=2.0) == ["test guard: never went idle"]
    assert _stack_rows(watch, out) == []  # no row per version of a stack SerialEM still grows
    lock.unlink()
    reasons = _run_until_idle(watch, out, guard_s=30.0)
    assert reasons and "exit_when_idle" in reasons[0], reasons
    assert _stack_rows(watch, out) == []
    assert not list(out.glob("TS_01*.mrc")) and not list(out.glob("*.motion.json"))


def _one_movie(tmp_path, name, n_frames):
    """A watch folder holding one small movie, and an output folder."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    frames = np.random.default_rng(n_frames).poisson(1.0, (n_frames, 32, 32)).astype(np.int16)
    write_movie_progressively(watch / name, frames, pixel_size_A=1.1, frame_interval_s=0)
    return watch, out, watch / name


def test_a_movie_whose_frame_mdoc_has_no_section_yet_waits_for_it_then_is_corrected(tmp_path):
    """``x.mrc`` beside an ``x.mrc.mdoc`` that has only its title so far may be a series stack
    or a movie whose frame mdoc is being written: it waits until a section says which (it was
    ignored for good as a stack before)."""
    watch, out, movie = _one_movie(tmp_path, "s_mmm_00993_33.0_Oct08_07.39.05.mrc", 12)
    full = (DATA / "frame_set_single.mdoc").read_text().replace(".tif", ".mrc")
    # its GainReference (SerialEM's copy beside the frames) is not among the test files
    full = "".join(line for line in full.splitlines(keepends=True)
                   if not line.startswith("GainReference"))
    frame_mdoc = watch / f"{movie.name}.mdoc"
    frame_mdoc.write_text(full[:full.index("[FrameSet")])  # title and Voltage written so far
    assert _run_until_idle(watch, out, guard_s=2.0) == ["test guard: never went idle"]
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        assert [r.status for r in ledger.rows(path=str(movie))] in ([], ["pending"])
    frame_mdoc.write_text(full)
    reasons = _run_until_idle(watch, out, guard_s=30.0)
    assert reasons and "exit_when_idle" in reasons[0], reasons
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        assert [r.status for r in ledger.rows(path=str(movie))] == ["done"]
    record = json.loads((out / f"{movie.stem}.motion.json").read_text())
    assert sum(record["dose"]["per_frame_e_A2"]) == pytest.approx(7.65892, rel=1e-4)


def test_a_tilt_series_recorded_as_one_movie_is_corrected_as_that_movie(tmp_path):
    """SerialEM's frame tilt series: one movie (243 frames) whose mdoc holds its [FrameSet]
    and 20 [ZValue] frame ranges. The movie was ignored as the series' stack (``movie_ignored``,
    never corrected, nothing quarantined) and ``status`` showed a series open for good with
    0 of 20 tilts. It is corrected, whole, with its frame mdoc's dose."""
    watch, out, movie = _one_movie(tmp_path, "s_mmm_01013_33.0_Oct08_07.46.46.mrc", 243)
    text = (DATA / "frame_set_multiple.mdoc").read_text().replace(".tif", ".mrc")
    text = "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("GainReference"))  # not among the test files
    (watch / f"{movie.name}.mdoc").write_text(text)
    reasons = _run_until_idle(watch, out, guard_s=60.0)
    assert reasons and "exit_when_idle" in reasons[0], reasons
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        assert [r.status for r in ledger.rows(path=str(movie))] == ["done"]
        # a series of its own name (the resolver is on): the one tilt it holds, completed
        assert {n: s["status"] for n, s in ledger.series_states().items()} == {
            "s_mmm": "complete"}
    record = json.loads((out / f"{movie.stem}.motion.json").read_text())
    assert sum(record["dose"]["per_frame_e_A2"]) == pytest.approx(291.302, rel=1e-4)


def test_a_movie_beside_an_mdoc_that_never_gets_a_section_is_corrected_after_the_wait(tmp_path):
    watch, out, movie = _one_movie(tmp_path, "single_a.mrc", 4)
    (watch / "single_a.mrc.mdoc").write_text("T = SerialEM: a file cut before its section\n")
    reasons = _run_until_idle(watch, out, guard_s=30.0,
                              series_config=SeriesConfig(metadata_wait_s=1.0))
    assert reasons and "exit_when_idle" in reasons[0], reasons
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        assert [r.status for r in ledger.rows(path=str(movie))] == ["done"]


def test_a_pre_exposure_flag_is_named_once_as_not_used_for_the_tilts_of_a_series(tmp_path):
    """``--pre-exposure`` is the dose before a movie outside a series; a tilt's is its series'
    accumulated dose. The flag was dropped for tilts without a word."""
    from recording_log import RecordingLog

    from daemon.simulation.tilt_series import simulate_tilt_series

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    tilts = simulate_tilt_series(watch, rng=np.random.default_rng(3), n_tilts=3,
                                 shape_yx=(32, 32), n_frames=4, frame_interval_s=0,
                                 tilt_interval_s=0, lock=False)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0, pre_exposure_e_A2=5.0))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.1, exit_when_idle_s=0.5, polling="on")
    log = RecordingLog()
    run_until_idle(Service(config, logger=log, runner="fake_runners:correct",
                           resolver=TiltSeriesResolver(SeriesConfig(mdoc_quiet_s=0.2),
                                                       mode="on")), guard_s=30.0)
    warned = [f for _, e, f in log.events if e == "pre_exposure_flag_not_used"]
    assert len(warned) == 1 and "--pre-exposure 5 e/Å²" in warned[0]["reason"]
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        stored = {r.key.path: r.metadata["dose"]["pre_exposure_e_A2"] for r in ledger.rows()}
    assert stored == pytest.approx({str(t.movie.path): t.pre_exposure_e_A2 for t in tilts})
