"""A pixel size set for the daemon that the movie files contradict is used, as MotionCor2's
-PixSize is, but said once on the log and the feed: a `pixel_size` left in a TOML from another
magnification replaced SerialEM's right headers in every output without a word (real daemon
runs on real files)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import mrcfile
import numpy as np
from fake_publisher import FakePublisher
from recording_log import RecordingLog
from service_run import run_until_idle

from correction.synthetic import render_movie
from daemon.engine.service import Service
from daemon.feed.listener import PublishListener
from daemon.settings.config import Config, load_config


def _config(watch: Path, out: Path, *flags: str) -> Config:
    """As ``motionwatch watch WATCH --out OUT *flags`` builds it, quick."""
    from daemon.commands import watch as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    config = load_config(parser.parse_args([str(watch), "--out", str(out), *flags]))
    return dataclasses.replace(config, settle_time_s=0.1, scan_interval_s=0.05,
                               heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on")


def _session(watch: Path, header_pixel_A: float) -> None:
    watch.mkdir()
    for i in range(3):
        syn = render_movie(np.random.default_rng(i), shape_yx=(96, 96), n_frames=4,
                           electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
        with mrcfile.new(watch / f"m{i}.mrc") as mrc:
            mrc.set_data(syn.frames)
            mrc.voxel_size = header_pixel_A


def _run(config: Config) -> tuple[RecordingLog, FakePublisher]:
    log, publisher = RecordingLog(), FakePublisher()
    run_until_idle(Service(config, listeners=[PublishListener(publisher)], logger=log),
                   guard_s=30)
    assert len(log.named("movie_done")) == 3
    return log, publisher


def test_a_pixel_size_setting_unlike_the_movie_headers_is_used_and_said_once(tmp_path):
    watch, out = tmp_path / "watch", tmp_path / "out"
    _session(watch, header_pixel_A=1.1)
    log, publisher = _run(_config(watch, out, "--dose-per-frame", "1", "--voltage", "300",
                                  "--pixel-size", "1.3"))
    (warned,) = log.named("pixel_size_differs_from_file")
    assert "1.3 Å, is not the movie file's, 1.1 Å (+18 %)" in warned["reason"]
    (feed,) = [m for kind, m in publisher.warnings if kind == "pixel_size_differs_from_file"]
    assert feed == warned["reason"]
    record = json.loads((out / "m2.motion.json").read_text())
    assert record["pixel_size_A"] == 1.3
    assert record["movie_pixel_size"] == {"used_A": 1.3, "source": "given", "in_file_A": 1.1}


def test_a_pixel_size_setting_that_agrees_with_the_headers_is_not_warned_of(tmp_path):
    watch, out = tmp_path / "watch", tmp_path / "out"
    _session(watch, header_pixel_A=1.1)
    log, publisher = _run(_config(watch, out, "--dose-per-frame", "1", "--voltage", "300",
                                  "--pixel-size", "1.1"))
    assert log.named("pixel_size_differs_from_file") == []
    assert not [kind for kind, _ in publisher.warnings if kind == "pixel_size_differs_from_file"]
