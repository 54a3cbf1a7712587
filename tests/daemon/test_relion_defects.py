"""RELION's per-movie motion STAR tells polishing which pixels to mask, on the movie's own grid.

Bayesian polishing reads the raw movie again. ``Micrograph::fillDefectAndHotpixels``
(3dem/relion ``src/micrograph_model.cpp``) builds its mask as ``rlnImageSizeY`` x
``rlnImageSizeX`` and sets ``mask[y][x]`` for each row of ``data_hot_pixels``
(``rlnCoordinateX/Y``) and each pixel of ``rlnMicrographDefectFile``. Before, the STAR gave
the output size times the binning (510 x 508 for a 511 x 509 movie binned by 2, a mask that
does not fit the gain or the movie) and neither the hot pixels motionwatch found nor the
defect file it was given."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import starfile

from correction.synthetic import render_movie
from daemon.commands.cli import main


def _write(path, frames, pixel_size_A=1.1):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(frames)
        mrc.voxel_size = pixel_size_A


def test_the_hot_pixels_found_are_listed_in_movie_pixels_x_then_y(tmp_path):
    movie = render_movie(np.random.default_rng(3), shape_yx=(160, 192), n_frames=6,
                         gain=None, n_hot_pixels=6, hot_pixel_counts=200.0,
                         pixel_size_A=1.0)
    _write(tmp_path / "m.mrc", movie.frames.astype(np.int16))
    assert main(["correct", str(tmp_path / "m.mrc"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1"]) == 0

    record = json.loads((tmp_path / "out" / "m.motion.json").read_text())
    planted = {(int(y), int(x)) for y, x in movie.hot_pixels_yx}
    found = {tuple(yx) for yx in record["replaced_pixels"]["yx"]}
    assert planted <= found and len(found) <= len(planted) + 2
    assert record["replaced_pixels"]["count"] == len(found)
    assert record["movie_shape"] == [160, 192]

    star = starfile.read(tmp_path / "out" / "m.star", always_dict=True)
    hot = star["hot_pixels"]
    assert list(hot.columns) == ["rlnCoordinateX", "rlnCoordinateY"]
    assert {(int(y), int(x)) for x, y in zip(hot["rlnCoordinateX"], hot["rlnCoordinateY"])} \
        == found
    general = star["general"]
    assert (general["rlnImageSizeX"], general["rlnImageSizeY"]) == (192, 160)


def test_an_odd_sized_movie_binned_by_2_names_its_own_size_and_its_defect_file(tmp_path):
    movie = render_movie(np.random.default_rng(4), shape_yx=(511, 509), n_frames=5,
                         gain=None, n_hot_pixels=0, pixel_size_A=1.0)
    _write(tmp_path / "odd.mrc", movie.frames.astype(np.int16))
    defects = tmp_path / "defects.mrc"  # a defect map: non-zero is a defect
    bad = np.zeros((511, 509), np.int8)
    bad[200:230, 100] = 1  # a bad column segment
    _write(defects, bad)
    assert main(["correct", str(tmp_path / "odd.mrc"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1", "--bin", "2", "--defects", str(defects)]) == 0

    record = json.loads((tmp_path / "out" / "odd.motion.json").read_text())
    assert record["shape"] == [255, 254]  # the binned output
    star = starfile.read(tmp_path / "out" / "odd.star", always_dict=True)
    general = star["general"]
    assert (general["rlnImageSizeX"], general["rlnImageSizeY"]) == (509, 511)
    assert general["rlnMicrographBinning"] == 2
    # a defect map without a gain: RELION would read it only at the movie's size and as MRC or
    # TIFF; its pixels are listed instead, as hot pixels (x = column, y = row)
    assert "rlnMicrographDefectFile" not in general
    hot = star["hot_pixels"]
    assert {(200 + i, 100) for i in range(30)} <= {
        (int(y), int(x)) for x, y in zip(hot["rlnCoordinateX"], hot["rlnCoordinateY"])}


def test_a_defect_list_alone_masks_its_pixels_on_the_movies_grid_and_is_named(tmp_path):
    """Gain-normalised movies with a MotionCor-style defect list and no gain: before, refused
    ("a defect list alone has no frame shape")."""
    movie = render_movie(np.random.default_rng(1), shape_yx=(256, 200), n_frames=6, gain=None,
                         n_hot_pixels=0, pixel_size_A=1.1)
    frames = movie.frames.astype(np.int16)
    frames[:, 50:60, 30] = 3000  # a bad column segment: x = 30, y = 50-59
    _write(tmp_path / "m.mrc", frames)
    defects = tmp_path / "defects.txt"
    defects.write_text("30 50 1 10\n")  # x y w h
    assert main(["correct", str(tmp_path / "m.mrc"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1", "--defects", str(defects)]) == 0
    image = mrcfile.read(tmp_path / "out" / "m.mrc")
    assert abs(float(image[50:60, 28:33].mean()) - float(image.mean())) < 3 * float(image.std())
    general = starfile.read(tmp_path / "out" / "m.star", always_dict=True)["general"]
    assert general["rlnMicrographDefectFile"] == str(defects)
    assert (general["rlnImageSizeX"], general["rlnImageSizeY"]) == (200, 256)


def test_a_defect_list_relion_cannot_read_is_not_named_and_its_pixels_are_listed(tmp_path):
    """RELION reads a defect list with ``f >> x >> y >> w >> h`` until end of file, only from a
    ``*.txt``: a comment or a comma never reaches the end, and polishing hangs. motionwatch
    reads such a list; RELION is told its pixels as hot pixels instead."""
    movie = render_movie(np.random.default_rng(2), shape_yx=(64, 80), n_frames=4, gain=None,
                         n_hot_pixels=0, pixel_size_A=1.1)
    _write(tmp_path / "m.mrc", movie.frames.astype(np.int16))
    defects = tmp_path / "defects.txt"
    defects.write_text("# x y w h\n30, 50, 2, 1\n")
    assert main(["correct", str(tmp_path / "m.mrc"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1", "--defects", str(defects)]) == 0
    star = starfile.read(tmp_path / "out" / "m.star", always_dict=True)
    assert "rlnMicrographDefectFile" not in star["general"]
    hot = star["hot_pixels"]
    assert {(50, 30), (50, 31)} <= {
        (int(y), int(x)) for x, y in zip(hot["rlnCoordinateX"], hot["rlnCoordinateY"])}


def test_without_a_gain_a_dark_references_bad_pixels_are_listed(tmp_path):
    """With only a dark reference, no gain is exported whose zeros would mask them."""
    movie = render_movie(np.random.default_rng(5), shape_yx=(64, 80), n_frames=4, gain=None,
                         n_hot_pixels=0, pixel_size_A=1.1)
    _write(tmp_path / "m.mrc", movie.frames.astype(np.int16))
    dark = np.zeros((64, 80), np.float32)
    dark[5, 7] = np.nan
    _write(tmp_path / "dark.mrc", dark)
    assert main(["correct", str(tmp_path / "m.mrc"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1", "--dark", str(tmp_path / "dark.mrc")]) == 0
    record = json.loads((tmp_path / "out" / "m.motion.json").read_text())
    assert [5, 7] in record["replaced_pixels"]["yx"]
    hot = starfile.read(tmp_path / "out" / "m.star", always_dict=True)["hot_pixels"]
    assert (7.0, 5.0) in set(zip(hot["rlnCoordinateX"], hot["rlnCoordinateY"]))


def _movie_with_a_damaged_band(folder, name):
    """A 512 x 512 movie and a defect list of a band of 102,400 pixels (over the 100,000 a
    record lists) that RELION cannot read (a comment): every pixel of it is to be listed."""
    movie = render_movie(np.random.default_rng(7), shape_yx=(512, 512), n_frames=6, gain=None,
                         n_hot_pixels=0, pixel_size_A=1.1)
    _write(folder / name, movie.frames.astype(np.int16))
    defects = folder.parent / "band.txt"
    defects.write_text("# x y w h: a dead band\n0 0 512 200\n")
    return defects


def test_a_movie_with_more_replaced_pixels_than_listed_says_so(tmp_path, capsys):
    """RELION's polishing masks only the pixels ``data_hot_pixels`` lists: a movie that
    replaced more than the record lists warns, naming both counts."""
    (tmp_path / "in").mkdir()
    defects = _movie_with_a_damaged_band(tmp_path / "in", "m.mrc")
    assert main(["correct", str(tmp_path / "in" / "m.mrc"), "--out", str(tmp_path / "out"),
                 "--dose-per-frame", "1", "--defects", str(defects)]) == 0
    replaced = json.loads((tmp_path / "out" / "m.motion.json").read_text())["replaced_pixels"]
    assert replaced["count"] >= 102_400 and replaced["listed"] == 100_000
    warned = [line for line in capsys.readouterr().err.splitlines()
              if "m.mrc: warning:" in line and "pixels were replaced" in line]
    assert len(warned) == 1
    assert f"{replaced['count']:,} pixels" in warned[0] and "first 100,000" in warned[0]


def test_the_daemon_says_once_per_run_that_replaced_pixels_went_unlisted(tmp_path):
    from service_run import watch_once

    from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams

    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    defects = _movie_with_a_damaged_band(watch, "a.mrc")
    _movie_with_a_damaged_band(watch, "b.mrc")
    params = CorrectionParams(gain=GainParams(defects_path=defects),
                              dose=DoseParams(dose_per_frame_e_A2=1.0),
                              align=AlignParams(patches_x=1, patches_y=1))
    log, publisher = watch_once(watch, out, params)
    for name in ("a", "b"):
        replaced = json.loads((out / f"{name}.motion.json").read_text())["replaced_pixels"]
        assert replaced["count"] > replaced["listed"] == 100_000
    (logged,) = [f for _, e, f in log.events if e == "replaced_pixels_not_all_listed"]
    assert "first 100,000" in logged["reason"]
    warned = [m for k, m in publisher.warnings if k == "replaced_pixels_not_all_listed"]
    assert len(warned) == 1 and "does not mask the others" in warned[0]
