"""``--fm-int-file`` (TOML ``fm_int_file``) is MotionCor2/3's ``-FmIntFile``: EER raw frames
grouped as MotionCor3 groups them, each raw frame given the file's dose."""

from __future__ import annotations

import argparse
import contextlib
import json

import eer_writer  # tests/helpers (on sys.path via tests/conftest.py)
import mrcfile
import numpy as np
import pytest
import starfile

from correction.synthetic import render_movie
from daemon import exitcodes
from daemon.commands.cli import main
from daemon.commands import watch
from daemon.settings.config import ConfigError, load_config

_PIXEL_A = 1.1  # the writer's sensorPixelSize


def _watch_args(argv):
    parser = argparse.ArgumentParser()
    watch.add_arguments(parser)
    return parser.parse_args(argv)


def _eer(tmp_path, truth_yx, sizes):
    return eer_writer.write_drifting_eer(tmp_path / "tilt.eer", shape=(256, 256), sizes=sizes,
                                         rate=0.1, truth_yx=truth_yx, seed=8)


def _correct(tmp_path, movie, *flags):
    return main(["correct", str(movie), "--out", str(tmp_path / "out"), "--voltage", "300",
                 "--patches", "1", "1", *flags])


def _record(tmp_path, stem="tilt"):
    return json.loads((tmp_path / "out" / f"{stem}.motion.json").read_text())


def test_an_eer_movie_is_grouped_and_dose_weighted_as_motioncor2_reads_the_file(tmp_path,
                                                                                 capsys):
    """63 raw frames, '60 20 0.05': the 3 raw frames beyond the line join it, three fractions
    of 20 and the 3 left over one each to the last three (MotionCor3's rule; --eer-group 20
    would give 20, 20 and 23), each fraction 21 x 0.05 e/Å²."""
    truth = np.array([[-1.5, 2.0], [0.2, -0.4], [1.3, -1.6]])
    movie = _eer(tmp_path, truth, sizes=[21, 21, 21])
    (tmp_path / "fmint.txt").write_text("60 20 0.05\n")
    status = _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "fmint.txt"))
    assert status == 0, capsys.readouterr().err
    record = _record(tmp_path)
    eer = record["eer"]
    assert eer["raw_frames_per_fraction"] == [21, 21, 21] and eer["raw_frames"] == 63
    assert eer["grouped_by"] == "frame integration file" and eer["group_frames"] == 20
    assert eer["frame_integration"] == {"file": str(tmp_path / "fmint.txt"),
                                        "entries": [[60, 20, 0.05]]}
    np.testing.assert_allclose(record["dose"]["per_frame_e_A2"], [1.05, 1.05, 1.05])
    found = np.array(record["global_shifts_px"])[:, ::-1]  # [dx, dy] -> [dy, dx]
    np.testing.assert_allclose(found, truth - truth.mean(0), atol=0.15)
    # RELION's polishing renders 63 // 20 = 3 fractions of 20 raw frames, 1.0 e/Å² each
    general = starfile.read(tmp_path / "out" / "tilt.star")["general"]
    assert (general["rlnEERGrouping"], general["rlnImageSizeZ"]) == (20, 3)
    assert general["rlnMicrographDoseRate"] == pytest.approx(0.05 * 20)


def test_a_file_without_doses_takes_dose_per_frame_as_the_dose_of_its_first_fractions(
        tmp_path, capsys):
    """'60 20': the dose comes from --dose-per-frame, RELION's dose of a fraction of 20 raw
    frames; a fraction of 21 gets 21/20 of it."""
    movie = _eer(tmp_path, np.zeros((3, 2)), sizes=[21, 21, 21])
    (tmp_path / "fmint.txt").write_text("60 20\n")
    assert _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "fmint.txt")) \
        == exitcodes.USAGE
    assert "no dose given" in capsys.readouterr().err
    status = _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "fmint.txt"),
                      "--dose-per-frame", "2")
    assert status == 0, capsys.readouterr().err
    np.testing.assert_allclose(_record(tmp_path)["dose"]["per_frame_e_A2"], [2.1, 2.1, 2.1])


@pytest.mark.parametrize("flags, said", [
    (["--dose-per-frame", "1"], "give the dose once"),
    (["--eer-group", "20"], "not allowed with argument"),
])
def test_a_dose_or_a_grouping_given_twice_is_a_usage_error(tmp_path, capsys, flags, said):
    movie = _eer(tmp_path, np.zeros((3, 2)), sizes=[20, 20, 20])
    (tmp_path / "fmint.txt").write_text("60 20 0.05\n")
    with pytest.raises(SystemExit) if "--eer-group" in flags else contextlib.nullcontext():
        status = _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "fmint.txt"), *flags)
        assert status == exitcodes.USAGE
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out" / "tilt.mrc").exists()


def test_an_eer_movie_the_file_cannot_group_fails_alone_with_one_line(tmp_path, capsys):
    movie = _eer(tmp_path, np.zeros((3, 2)), sizes=[20, 20, 20])
    (tmp_path / "fmint.txt").write_text("1000 50 0.05\n")  # 60 raw frames: 1 of 50 and 10 left
    assert _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "fmint.txt")) \
        == exitcodes.SOME_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"motionwatch: {movie}: frame integration file {tmp_path / 'fmint.txt'} "
                   "makes 1 fraction of the movie's 60 raw frames: the 10 left over are more "
                   "than its 1 fraction can take (one each)"]


def _mrc(tmp_path):
    syn = render_movie(np.random.default_rng(2), shape_yx=(128, 128), n_frames=6,
                       electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
    with mrcfile.new(tmp_path / "k3.mrc") as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.2
    return tmp_path / "k3.mrc"


def test_an_mrc_movie_takes_the_files_doses_and_is_refused_a_file_that_sums_its_frames(
        tmp_path, capsys):
    movie = _mrc(tmp_path)
    (tmp_path / "doses.txt").write_text("6 1 0.7\n")
    assert _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "doses.txt")) == 0
    np.testing.assert_allclose(_record(tmp_path, "k3")["dose"]["per_frame_e_A2"], [0.7] * 6)
    (tmp_path / "sums.txt").write_text("6 2 0.7\n")
    assert _correct(tmp_path, movie, "--fm-int-file", str(tmp_path / "sums.txt")) \
        == exitcodes.SOME_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"motionwatch: {movie}: the frame integration "
                                               "file")
    assert "sums 2 raw frames per fraction" in err[0] and "EER movies only" in err[0]


def test_the_daemon_reads_fm_int_file_from_its_toml_and_a_bad_file_is_a_config_error(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "fmint.txt").write_text("1000 25 0.02\n")
    (tmp_path / "c.toml").write_text(f'fm_int_file = "{tmp_path / "fmint.txt"}"\n')
    config = load_config(_watch_args([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                                "--config", str(tmp_path / "c.toml")]))
    integration = config.params.read.frame_integration
    assert integration.per_fraction == 25 and integration.dose_per_raw_frame_e_A2 == 0.02
    assert config.params.dose.dose_per_frame_e_A2 == pytest.approx(0.5)  # a fraction of 25
    (tmp_path / "fmint.txt").write_text("1000 25 0.02\n1000 25\n")
    with pytest.raises(ConfigError, match=r"fmint\.txt line 2: 2 values where the lines before "
                                          "have 3"):
        load_config(_watch_args([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                           "--config", str(tmp_path / "c.toml")]))
