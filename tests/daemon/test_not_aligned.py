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
