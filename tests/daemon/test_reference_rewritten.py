"""A gain reference rewritten in place between runs is said at the next start (the setting, its
path, is unchanged, so the movies done with the old one are not corrected again)."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
from recording_log import RecordingLog
from service_run import run_until_idle

from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
from daemon.engine.service import Service
from daemon.settings.config import Config


def _gain(path: Path, value: float) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.full((48, 48), value, dtype=np.float32))


def _run(watch: Path, out: Path, gain: Path) -> RecordingLog:
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1),
                              gain=GainParams(gain_path=gain))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, polling="on", exit_when_idle_s=0.5)
    log = RecordingLog()
    run_until_idle(Service(config, logger=log))
    return log


def test_a_gain_written_anew_under_its_name_is_said_at_the_next_start(tmp_path):
    watch, out, gain = tmp_path / "w", tmp_path / "out", tmp_path / "gain.mrc"
    watch.mkdir()
    out.mkdir()
    _gain(gain, 2.0)
    with mrcfile.new(watch / "m.mrc") as mrc:
        mrc.set_data(np.random.default_rng(1).poisson(2.0, (4, 48, 48)).astype(np.int16))
        mrc.voxel_size = 1.1
    first = _run(watch, out, gain)
    assert len(first.named("movie_done")) == 1 and not first.named("reference_rewritten")
    again = _run(watch, out, gain)  # the same file: nothing said, nothing redone
    assert not again.named("reference_rewritten") and not again.named("movie_done")
    _gain(gain, 3.0)  # another gain saved over it
    rewritten = _run(watch, out, gain)
    (said,) = rewritten.named("reference_rewritten")
    assert said["references"] == [f"gain {gain}"]
    assert "under a new name" in said["note"]


def _movie_through(gain: np.ndarray, path: Path, seed: int, *, frames: int = 6) -> None:
    """A flat specimen counted through a detector whose gain reference is ``gain``
    (multiplicative: raw counts ~ 20 / gain), written as ``path`` (int16 MRC, 1 Å/px)."""
    rng = np.random.default_rng(seed)
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.poisson(20.0 / gain, (frames,) + gain.shape).astype(np.int16))
        mrc.voxel_size = 1.0


def _flatness(corrected: np.ndarray, gain: np.ndarray) -> float:
    """Correlation of a corrected sum with the gain's pattern (1 / gain): about 0 once the
    gain that made the counts is applied, about 0.7 with another gain's."""
    return float(np.corrcoef(corrected.ravel(), (1.0 / gain).ravel())[0, 1])


def test_a_gain_written_anew_while_the_daemon_runs_is_applied_and_named_from_then_on(tmp_path):
    """SerialEM saves a new gain reference over the configured file mid-session: the movies
    after it are corrected with the new content (each worker loads the file again once its
    size or modification time changes), their records hash the content applied, and their
    RELION STARs name a gain file holding it; the movies before keep theirs."""
    import json
    import os
    import time

    import starfile
    from daemon_process import events, spawn, watch_argv

    from correction.report import file_sha256

    rng = np.random.default_rng(7)
    shape = (96, 128)
    old_gain = rng.uniform(0.7, 1.3, shape).astype(np.float32)
    new_gain = rng.uniform(0.7, 1.3, shape).astype(np.float32)
    watch, out, gain = tmp_path / "w", tmp_path / "out", tmp_path / "gain.mrc"
    watch.mkdir()
    out.mkdir()
    with mrcfile.new(gain) as mrc:
        mrc.set_data(old_gain)
    old_sha = file_sha256(gain)
    _movie_through(old_gain, watch / "a.mrc", 1)
    log = tmp_path / "watch.log"
    daemon = spawn(watch_argv(watch, out, "--dose-per-frame", "1.0", "--pixel-size", "1.0",
                              "--gain", str(gain),
                              "--patches", "1", "1", "--settle-time", "0.3",
                              "--scan-interval", "0.1", "--heartbeat", "0.5",
                              "--exit-when-idle", "4"), log)
    try:
        deadline = time.monotonic() + 120
        while not (out / "a.star").exists():
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with mrcfile.new(gain, overwrite=True) as mrc:  # the new reference, same name
            mrc.set_data(new_gain)
        saved = time.time_ns() - 60 * 10**9  # saved a while before the next movie: settled
        os.utime(gain, ns=(saved, saved))
        _movie_through(new_gain, watch / "b.mrc", 2)
        assert daemon.wait(timeout=120) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    for stem, made_by, sha in (("a", old_gain, old_sha), ("b", new_gain, file_sha256(gain))):
        assert abs(_flatness(mrcfile.read(out / f"{stem}.mrc"), made_by)) < 0.1, stem
        record = json.loads((out / f"{stem}.motion.json").read_text())
        assert record["references"]["gain"]["sha256"] == sha
        named = starfile.read(out / f"{stem}.star")["general"]["rlnMicrographGainName"]
        np.testing.assert_allclose(mrcfile.read(out / named), made_by, rtol=1e-6)
    assert starfile.read(out / "a.star")["general"]["rlnMicrographGainName"] == \
        "motionwatch_gain.mrc"
    (said,) = [e for e in events(log) if e.get("event") == "reference_rewritten"]
    assert said["movie"].endswith("b.mrc") and said["gain"] == str(gain)


def test_a_newest_movie_corrected_with_the_content_before_a_rewrite_is_no_news_at_start(
        tmp_path):
    """Two workers: a long movie began with the old gain, the gain was saved anew, a short one
    was corrected with the new gain and finished first. The long one is the newest done row,
    and its record (rightly) hashes the old gain: the start-up check said the gain had been
    written anew though every movie since was corrected with what it holds."""
    import json
    from types import SimpleNamespace

    from correction.report import file_sha256
    from daemon.engine.reference_change import rewritten_references

    gain = tmp_path / "gain.mrc"
    _gain(gain, 2.0)
    old = file_sha256(gain)
    _gain(gain, 3.0)
    os.utime(gain, ns=(10**18, 10**18))

    def row(name, sha, updated):
        motion = tmp_path / f"{name}.motion.json"
        motion.write_text(json.dumps({"references": {"gain": {"path": str(gain),
                                                                "sha256": sha}}}))
        return SimpleNamespace(status="done", updated=updated, outputs={"motion": str(motion)})

    params = GainParams(gain_path=gain)
    finished = [row("short", file_sha256(gain), 10.0), row("long", old, 11.0)]
    assert rewritten_references(finished, params) == []
    assert rewritten_references([row("long", old, 11.0)], params) == [f"gain {gain}"]
