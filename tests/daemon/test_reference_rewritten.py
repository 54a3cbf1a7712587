"""A gain reference rewritten in place between runs is said at the next start (the setting, its
path, is unchanged, so the movies done with the old one are not corrected again)."""

from __future__ import annotations

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
