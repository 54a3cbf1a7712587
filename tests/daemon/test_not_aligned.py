"""A movie with too little signal to align is summed without shifts, and the service says so:
the log's ``movie_not_aligned`` and the feed's ``not_aligned`` warning, for each such movie
(``alignment.supported`` false in its record; correction/align_global.py)."""

from __future__ import annotations

import json

import numpy as np
from service_run import watch_once

from correction.params import AlignParams, CorrectionParams, DoseParams
from daemon.simulation.movies import write_movie_progressively


def test_a_movie_of_noise_alone_is_named_as_not_aligned_in_the_log_and_the_feed(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    frames = np.random.default_rng(2).poisson(0.05, (10, 384, 384)).astype(np.int16)
    write_movie_progressively(watch / "empty.mrc", frames, pixel_size_A=1.1, frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=0.05),
                              align=AlignParams(patches_x=1, patches_y=1))
    log, publisher = watch_once(watch, out, params)
    record = json.loads((out / "empty.motion.json").read_text())
    assert record["alignment"]["supported"] is False
    assert record["global_shifts_px"] == [[0.0, 0.0]] * 10
    (logged,) = [f for _, e, f in log.events if e == "movie_not_aligned"]
    assert logged["reason"].startswith("too little signal to align")
    assert [k for k, _ in publisher.warnings if k != "stopping"] == ["not_aligned"]


def test_every_frame_in_one_group_is_named_as_not_aligned_not_recorded_as_converged(tmp_path):
    """`group = 40` meant as `eer_group` on a 10-frame movie: every movie was summed without
    shifts, its record saying converged and supported, and the daemon said nothing (only a
    Python warning on a worker's stderr, once per process)."""
    from correction.synthetic import render_movie

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    syn = render_movie(np.random.default_rng(3), shape_yx=(192, 192), n_frames=10,
                       electrons_per_px_per_frame=3.0, gain=None, n_hot_pixels=0)
    write_movie_progressively(watch / "m.mrc", syn.frames.astype(np.int16), pixel_size_A=1.1,
                              frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1, group_frames=40))
    log, publisher = watch_once(watch, out, params)
    alignment = json.loads((out / "m.motion.json").read_text())["alignment"]
    assert alignment["supported"] is False and alignment["converged"] is False
    assert alignment["note"].startswith("10 frames in one group of 40 (--group)")
    (logged,) = [f for _, e, f in log.events if e == "movie_not_aligned"]
    assert logged["reason"] == alignment["note"]
    assert [k for k, _ in publisher.warnings if k != "stopping"] == ["not_aligned"]
