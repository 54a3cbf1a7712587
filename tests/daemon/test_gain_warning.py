"""A gain reference given in the wrong orientation is named once per run (science issue, item 6):
the daemon logs ``gain_orientation_suspect`` and the feed publishes one ``gain_orientation``
warning naming the MotionCor2 flags that fit, however many movies show it. A gain given as its
reciprocal (a flat-field count image) is said to be inverted, with no orientation proposed."""

from __future__ import annotations

import mrcfile
import numpy as np
from service_run import watch_once

from correction.params import CorrectionParams, DoseParams, GainParams
from correction.synthetic import render_movie
from daemon.commands.cli import main
from daemon.simulation.movies import write_movie_progressively


def test_a_rotated_gain_is_named_once_with_the_motioncor2_flags_that_fit(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(4)
    shape = (384, 512)  # non-square, as a K3 frame: only shape-keeping orientations compete
    gain = None
    for i in range(2):
        movie = render_movie(rng, shape_yx=shape, n_frames=12, gain=True if gain is None else gain,
                             n_hot_pixels=0, pixel_size_A=1.1, electrons_per_px_per_frame=1.5)
        gain = movie.gain
        write_movie_progressively(watch / f"m{i}.mrc", movie.frames, pixel_size_A=1.1,
                                  frame_interval_s=0)
    with mrcfile.new(tmp_path / "gain.mrc") as mrc:
        mrc.set_data(np.ascontiguousarray(np.rot90(gain, 2)).astype(np.float32))  # stored upside down
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=tmp_path / "gain.mrc"))
    log, publisher = watch_once(watch, out, params, log_level="warning")
    done = [f for level, e, f in log.events if e == "movie_done"]
    suspects = [f for level, e, f in log.events if e == "gain_orientation_suspect"]
    assert len(done) == 2 and len(suspects) == 1
    assert suspects[0]["fits"] == "--gain-rotate 2 --gain-flip 0"
    gain_warnings = [m for k, m in publisher.warnings if k == "gain_orientation"]
    assert len(gain_warnings) == 1 and "-RotGain 2" in gain_warnings[0]


def test_a_gain_given_as_its_reciprocal_is_named_inverted_once(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(5)
    movie = render_movie(rng, shape_yx=(384, 512), n_frames=12, gain=True, n_hot_pixels=0,
                         pixel_size_A=1.1, electrons_per_px_per_frame=1.5)
    write_movie_progressively(watch / "m0.mrc", movie.frames, pixel_size_A=1.1,
                              frame_interval_s=0)
    with mrcfile.new(tmp_path / "counts.mrc") as mrc:
        mrc.set_data((1.0 / movie.gain).astype(np.float32))
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=tmp_path / "counts.mrc"))
    log, publisher = watch_once(watch, out, params, log_level="warning")
    suspects = [f for level, e, f in log.events if e == "gain_orientation_suspect"]
    assert len(suspects) == 1
    assert suspects[0]["fits"] == "the reciprocal of the gain file, --gain-rotate 0 --gain-flip 0"
    assert "the gain looks inverted" in suspects[0]["reason"]
    gain_warnings = [m for k, m in publisher.warnings if k == "gain_orientation"]
    assert len(gain_warnings) == 1 and "inverted" in gain_warnings[0]


def test_the_correct_command_says_an_inverted_gain_is_inverted_not_turned(tmp_path, capsys):
    rng = np.random.default_rng(12)
    syn = render_movie(rng, shape_yx=(192, 320), n_frames=12, electrons_per_px_per_frame=1.0,
                       pixel_size_A=1.1, dtype=np.uint8)
    with mrcfile.new(tmp_path / "movie.mrc") as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.1
    with mrcfile.new(tmp_path / "counts.mrc") as mrc:
        mrc.set_data((1.0 / syn.gain).astype(np.float32))
    err = _correct_stderr(capsys, tmp_path / "movie.mrc", tmp_path / "counts.mrc")
    assert "the gain looks inverted" in err and "give its reciprocal" in err
    assert "check --gain-rotate" not in err


def test_an_eer_multiplier_taken_as_a_count_image_is_told_to_be_multiplicative(tmp_path,
                                                                               capsys):
    """A multiplier given with --eer-gain reciprocal looks inverted; the advice was to give its
    reciprocal with --eer-gain reciprocal, the flag already given."""
    from eer_writer import write_eer

    from correction.synthetic import gain_pattern

    rng = np.random.default_rng(9)
    gain = gain_pattern(rng, (256, 256)).astype(np.float32)
    raw = [(rng.random((256, 256)) < 0.06 / gain).astype(np.uint8) for _ in range(200)]
    write_eer(tmp_path / "m.eer", raw, shape_yx=(256, 256))
    with mrcfile.new(tmp_path / "gain.mrc") as mrc:
        mrc.set_data(gain)
    err = _correct_stderr(capsys, tmp_path / "m.eer", tmp_path / "gain.mrc",
                          "--eer-gain", "reciprocal", "--eer-group", "40", "--pixel-size", "1")
    assert "the gain looks inverted" in err and "give --eer-gain multiplicative" in err
    assert "give its reciprocal" not in err


def _correct_stderr(capsys, movie, gain, *flags: str) -> str:
    """What ``motionwatch correct`` says on stderr of ``movie`` with ``gain`` (global only)."""
    status = main(["correct", str(movie), "--gain", str(gain), "--dose-per-frame", "1",
                   "--voltage", "300", "--patches", "1", "1", "--out",
                   str(movie.parent / "out"), *flags])
    assert status == 0
    return capsys.readouterr().err
