"""An output folder serves one watch folder: a run on another watch folder into it stops at
start-up with a one-line reason, before anything is written (a second session's movie of the
same name wrote over the first session's outputs, whose row still said done)."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon import exitcodes
from daemon.engine.service import Service
from daemon.settings.config import Config


def _movie(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(np.random.default_rng(seed).poisson(2.0, (3, 32, 32)).astype(np.int16))
        mrc.voxel_size = 1.1


def _run(watch: Path, out: Path, state: Path | None = None) -> tuple[int, RecordingLog]:
    out.mkdir(exist_ok=True)
    config = Config(watch, out, state or out,
                    CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                    exit_when_idle_s=0.6, polling="on")
    log = RecordingLog()
    return Service(config, runner="fake_runners:correct", logger=log).run(), log


def _source(out: Path, stem: str) -> str:
    return json.loads((out / f"{stem}.motion.json").read_text())["source_file"]["path"]


def test_the_command_says_why_it_refuses_another_watch_folder_on_stderr(tmp_path, capsys,
                                                                         monkeypatch):
    """``motionwatch watch`` on another session into an output folder that serves the first
    exited 78 with the reason in a JSON log line on stdout only; every other refusal is said
    on stderr, as the README promises."""
    from daemon.commands.cli import main

    first, second, out = tmp_path / "sessionA", tmp_path / "sessionB", tmp_path / "out"
    _movie(first / "m_001.mrc", 0)
    second.mkdir()
    assert _run(first, out)[0] == 0
    capsys.readouterr()
    status = main(["watch", str(second), "--out", str(out), "--dose-per-frame", "1"])
    err = capsys.readouterr().err
    assert status == exitcodes.CONFIG
    assert err.startswith("motionwatch watch: invalid configuration:") and str(first) in err
    # under journald the service's log line is in the journal already: said once there
    import daemon.commands.watch as watch_command

    monkeypatch.setattr(watch_command, "running_under_journald", lambda: True)
    assert main(["watch", str(second), "--out", str(out), "--dose-per-frame", "1"]) == 78
    assert "invalid configuration" not in capsys.readouterr().err


def test_another_watch_folder_into_the_same_output_folder_stops_before_writing(tmp_path):
    first, second, out = tmp_path / "sessionA", tmp_path / "sessionB", tmp_path / "out"
    _movie(first / "m_001.mrc", 0)
    _movie(second / "m_001.mrc", 1)  # the same name in the next session
    assert _run(first, out)[0] == 0
    assert _source(out, "m_001") == str(first / "m_001.mrc")

    status, log = _run(second, out)
    assert status == exitcodes.CONFIG
    (problem,) = [p for _, event, fields in log.events if event == "config_invalid"
                  for p in fields["problems"]]
    assert str(first) in problem and str(second) in problem and "--out" in problem
    assert "\n" not in problem
    assert _source(out, "m_001") == str(first / "m_001.mrc")  # the first session's, kept

    assert _run(first, out)[0] == 0  # its own watch folder again: it runs
    other_out = tmp_path / "outB"  # another output folder, the state folder shared: it runs
    assert _run(second, other_out, state=out)[0] == 0
    assert _source(other_out, "m_001") == str(second / "m_001.mrc")
    assert _source(out, "m_001") == str(first / "m_001.mrc")
    # the shared state folder still knows whose outputs the first output folder holds
    third = tmp_path / "sessionC"
    _movie(third / "m_001.mrc", 2)
    assert _run(third, out)[0] == exitcodes.CONFIG
    assert _run(second, other_out, state=out)[0] == 0
    assert _source(out, "m_001") == str(first / "m_001.mrc")


def test_a_shared_state_folders_movies_of_another_watch_folder_are_no_tilts_of_this_one(
        tmp_path):
    """Two sessions into two output folders, one state folder (``--state-dir`` kept across
    sessions). The second session's series mdoc, in its watch folder itself, lists a tilt whose
    movie never came: the first session's movie of that name (a row of the shared state,
    outside this watch folder) was taken for it, and its image went into the second session's
    stack. Its stack now holds its own two tilts."""
    import shutil
    import tempfile

    from daemon.series.options import resolver_from_config
    from daemon.simulation.tilt_series import simulate_tilt_series

    state = tmp_path / "state"
    state.mkdir()
    # shallow folders, as ``/data/sessionA``: the names a state row keeps for a movie outside
    # the watch folder are its whole path, within reach of a listing three folders deep
    roots = [Path(tempfile.mkdtemp(prefix="mw-", dir="/tmp")) for _ in range(2)]
    try:
        for k, watch in enumerate(roots):
            tilts = simulate_tilt_series(watch, rng=np.random.default_rng(k), n_tilts=3,
                                         shape_yx=(64, 64), n_frames=3, frame_interval_s=0.0,
                                         tilt_interval_s=0.0, lock=False)
            if k == 1:
                missing = next(t for t in tilts if t.acquisition_index == 1)
                missing.movie.path.unlink()  # the second session's tilt 1 never came
            out = tmp_path / f"out{k}"
            out.mkdir()
            config = Config(watch, out, state, CorrectionParams(dose=DoseParams()),
                            settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                            exit_when_idle_s=0.6, polling="on",
                            options={"tilt_series": "on", "mdoc_quiet": 0.3})
            assert Service(config, resolver=resolver_from_config(config)).run() == 0
        angles = [float(a) for a in (out / "TS_01" / "TS_01.tlt").read_text().split()]
        assert sorted(angles) == sorted(t.tilt_deg for t in tilts if t is not missing)
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def test_a_database_of_the_last_version_knows_its_watch_folder_from_its_heartbeat(tmp_path):
    """A state database written before the served folders were recorded holds its last run's
    ``watch_dir`` (the heartbeat's): the output folder it lives in serves that folder when it
    holds one of its outputs (in a shared state folder the last run may have written
    elsewhere: no refusal then)."""
    from daemon.engine.ownership import other_watch_folder

    out, a, b = tmp_path / "out", tmp_path / "a", tmp_path / "b"
    (out / "a").mkdir(parents=True)
    motion = out / "a" / "m.motion.json"
    motion.write_text("{}")
    legacy = {"watch_dir": str(a), "pid": None}

    def done(outputs: list[dict]):
        return lambda folder: outputs if folder == str(a) else []

    ask = dict(out_dir=out, state_dir=out, done_outputs_below=done([{"motion": str(motion)}]))
    assert other_watch_folder(legacy, watch_dir=a, **ask) is None
    assert str(a) in other_watch_folder(legacy, watch_dir=b, **ask)
    elsewhere = dict(ask, done_outputs_below=done([{"motion": str(tmp_path / "y" / "m.json")}]))
    assert other_watch_folder(legacy, watch_dir=b, **elsewhere) is None
    motion.unlink()  # the output folder emptied
    assert other_watch_folder(legacy, watch_dir=b, **ask) is None


def test_a_current_link_pointed_at_the_next_session_is_another_watch_folder(tmp_path):
    """``current`` -> sessionA, then -> sessionB, both into one output folder: the second run
    is refused (the link's name was the same, and sessionA's m_001 outputs were overwritten)."""
    first, second, out = tmp_path / "sessionA", tmp_path / "sessionB", tmp_path / "out"
    _movie(first / "m_001.mrc", 0)
    _movie(second / "m_001.mrc", 1)
    current = tmp_path / "current"
    current.symlink_to(first)
    assert _run(current, out)[0] == 0
    current.unlink()
    current.symlink_to(second)
    assert _run(current, out)[0] == exitcodes.CONFIG
    assert json.loads((out / "m_001.motion.json").read_text())["source_file"]["mtime_ns"] == \
        (first / "m_001.mrc").stat().st_mtime_ns


def test_an_emptied_output_folder_serves_the_next_watch_folder(tmp_path):
    """A shared state folder: the first session's output folder removed, the next session's
    outputs go to a new folder of that name (it was refused: done rows elsewhere counted)."""
    import shutil

    first, second, state = tmp_path / "p", tmp_path / "q", tmp_path / "state"
    _movie(first / "m_001.mrc", 0)
    _movie(second / "m_001.mrc", 1)
    state.mkdir()
    assert _run(first, tmp_path / "o1", state=state)[0] == 0
    shutil.rmtree(tmp_path / "o1")
    assert _run(second, tmp_path / "o1", state=state)[0] == 0
    assert _source(tmp_path / "o1", "m_001") == str(second / "m_001.mrc")


def test_a_current_link_re_pointed_while_the_service_runs_stops_it_before_the_next_session(
        tmp_path):
    """The link re-pointed at the next session while the service runs: it takes in none of
    the next session's movies (its ``m_001`` would be corrected over the first's outputs) and
    stops as misconfigured (78) with the reason, once the movies in hand are done."""
    from daemon.events import ServiceListener

    first, second, out = tmp_path / "sessionA", tmp_path / "sessionB", tmp_path / "out"
    _movie(first / "m_001.mrc", 0)
    _movie(second / "m_001.mrc", 1)
    _movie(second / "m_002.mrc", 2)
    current = tmp_path / "current"
    current.symlink_to(first)

    class Repoint(ServiceListener):
        def on_movie_done(self, event):
            current.unlink()
            current.symlink_to(second)

    out.mkdir()
    config = Config(current, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                    exit_when_idle_s=5.0, polling="on")
    log = RecordingLog()
    status = Service(config, runner="fake_runners:correct", logger=log,
                     listeners=[Repoint()]).run()
    assert status == exitcodes.CONFIG
    (problem,) = [p for _, event, fields in log.events if event == "config_invalid"
                  for p in fields["problems"]]
    assert str(first) in problem and str(second) in problem and "\n" not in problem
    assert json.loads((out / "m_001.motion.json").read_text())["source_file"]["mtime_ns"] == \
        (first / "m_001.mrc").stat().st_mtime_ns
    assert not (out / "m_002.motion.json").exists()
