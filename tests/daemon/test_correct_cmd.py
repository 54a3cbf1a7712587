"""`motionwatch correct`: one-line errors per bad movie, the others still written, --json."""

from __future__ import annotations

import json
import os

import mrcfile
import numpy as np
import pytest

from correction.synthetic import render_movie
from daemon import exitcodes
from daemon.cli import main


def _movie(path, rng, *, pixel_size_A=1.2, shape=(128, 128)):
    syn = render_movie(rng, shape_yx=shape, n_frames=4, electrons_per_px_per_frame=2.0,
                       gain=None, n_hot_pixels=0)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(syn.frames)
        if pixel_size_A is not None:
            mrc.voxel_size = pixel_size_A
    return path


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(5)
    good = _movie(tmp_path / "good.mrc", rng)
    truncated = _movie(tmp_path / "cut.mrc", rng)
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(truncated) - 128 * 128)
    nopix = _movie(tmp_path / "nopix.mrc", rng, pixel_size_A=None)
    return tmp_path, good, truncated, nopix


def test_bad_movies_give_one_line_errors_naming_them_and_the_good_one_is_still_written(
        folder, capsys):
    tmp, good, truncated, nopix = folder
    missing = tmp / "missing.mrc"
    status = main(["correct", str(truncated), str(missing), str(good), str(nopix),
                   "--out", str(tmp / "out"), "--dose-per-frame", "1.0"])
    assert status == exitcodes.SOME_FAILED == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    for line, path in zip(err, (truncated, missing, nopix)):
        assert line.startswith(f"motionwatch: {path}: "), line
    assert "pixel size" in err[2]
    for name in ("good.mrc", "good_DW.mrc", "good_EVN.mrc", "good_ODD.mrc", "good.motion.json"):
        assert (tmp / "out" / name).is_file(), name
    assert not (tmp / "out" / "cut.mrc").exists()


def test_gain_of_wrong_shape_fails_each_movie_with_a_line_naming_movie_and_gain(folder, capsys):
    tmp, good, _, _ = folder
    with mrcfile.new(tmp / "gain.mrc") as mrc:
        mrc.set_data(np.ones((64, 96), np.float32))
    status = main(["correct", str(good), "--gain", str(tmp / "gain.mrc"), "--out",
                   str(tmp / "out"), "--total-dose", "4"])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"motionwatch: {good}: ") and "gain.mrc" in err[0]
    assert "64x96" in err[0] and "128x128" in err[0]


def test_json_prints_one_summary_line_per_movie(folder, capsys):
    tmp, good, truncated, _ = folder
    status = main(["correct", str(good), str(truncated), "--out", str(tmp / "out"),
                   "--dose-per-frame", "1.0", "--json"])
    assert status == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [d["status"] for d in lines] == ["ok", "failed"]
    assert lines[0]["movie"] == str(good) and lines[0]["frames"] == 4
    assert lines[0]["outputs"]["dw"].endswith("good_DW.mrc")
    assert str(truncated) in lines[1]["error"]


def test_all_good_exits_zero_and_missing_dose_is_a_usage_error(folder, capsys):
    tmp, good, _, _ = folder
    assert main(["correct", str(good), "--out", str(tmp / "o2"), "--total-dose", "8"]) == 0
    assert "good.mrc" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["correct", str(good), "--out", str(tmp / "o3")])
    assert exc.value.code == exitcodes.USAGE
