"""Frames that share a pattern fixed to the detector (no gain reference for unnormalised
frames) are named once per run: the log's ``detector_pattern`` and one feed warning of that
kind, however many movies show it; every movie's record keeps its figures
(correction/detector_pattern.py)."""

from __future__ import annotations

import json

import numpy as np
from service_run import watch_once

from correction.params import AlignParams, CorrectionParams, DoseParams
from correction.synthetic import gain_pattern, render_movie
from daemon.simulation.movies import write_movie_progressively


def test_unnormalised_frames_without_a_gain_are_named_once_per_run(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(5)
    gain = gain_pattern(rng, (512, 512), pixel_sigma=0.05, column_sigma=0.0)
    for i in range(2):  # unnormalised counts: the camera's gain pattern in every frame
        movie = render_movie(rng, shape_yx=(512, 512), n_frames=10, gain=gain, n_hot_pixels=0,
                             pixel_size_A=1.1, electrons_per_px_per_frame=8.0, contrast=0.03)
        write_movie_progressively(watch / f"m{i}.mrc", movie.frames, pixel_size_A=1.1,
                                  frame_interval_s=0)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=6.6),
                              align=AlignParams(patches_x=1, patches_y=1))
    log, publisher = watch_once(watch, out, params)
    for i in range(2):
        record = json.loads((out / f"m{i}.motion.json").read_text())
        assert record["detector_pattern"]["detected"] is True
    (logged,) = [f for _, e, f in log.events if e == "detector_pattern"]
    assert "no gain reference was given" in logged["reason"]
    warned = [m for k, m in publisher.warnings if k == "detector_pattern"]
    assert len(warned) == 1 and "pattern fixed to the detector" in warned[0]
