"""`motionwatch correct`: one-line errors per bad movie, the others still written, --json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from correction.synthetic import render_movie
from daemon import exitcodes
from daemon.commands.cli import main


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
                   "--out", str(tmp / "out"), "--dose-per-frame", "1.0",
                   "--voltage", "300"])  # given: no note that 300 kV is assumed
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
    assert main(["correct", str(good), "--out", str(tmp / "o3")]) == exitcodes.USAGE
    assert capsys.readouterr().err == ("motionwatch correct: no dose given: use --dose-per-frame "
                                       "e/Å² or --total-dose e/Å² (or a --fm-int-file with a "
                                       "dose column)\n")
    assert not (tmp / "o3").exists()


@pytest.mark.parametrize("flag", ["--dose-per-frame", "--pre-exposure", "--voltage",
                                  "--pixel-size"])
def test_infinite_dose_voltage_or_pixel_size_is_a_usage_error_not_an_internal_error(
        folder, capsys, flag):
    tmp, good, _, _ = folder
    dose = [] if flag == "--dose-per-frame" else ["--dose-per-frame", "1"]
    status = main(["correct", str(good), "--out", str(tmp / "out"), *dose, flag, "inf"])
    assert status == exitcodes.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finite" in err and "internal error" not in err
    assert not (tmp / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--dose-per-frame", "-1"], "--dose-per-frame must be > 0 e/Å², got -1.0"),
    (["--dose-per-frame", "1", "--bin", "0.5"], "--bin must be a finite number >= 1, got 0.5"),
    (["--dose-per-frame", "1", "--voltage", "300000"], "--voltage must be 60-400 kV, got 300000.0"),
])
def test_a_bad_value_is_named_by_the_flag_that_gave_it(folder, capsys, flags, message):
    tmp, good, _, _ = folder
    assert main(["correct", str(good), "--out", str(tmp / "out"), *flags]) == exitcodes.USAGE
    assert capsys.readouterr().err == f"motionwatch correct: {message}\n"


def test_a_movie_without_a_pixel_size_says_so_once_with_the_flag_to_give(folder, capsys):
    tmp, _, _, nopix = folder
    main(["correct", str(nopix), "--out", str(tmp / "out"), "--dose-per-frame", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"motionwatch: {nopix}: no pixel size given and none usable in the header "
                   "(0, or exactly 1.0 Å, which writers leave when they know none); give it "
                   "with --pixel-size (Å)"]


def test_a_movie_named_relative_to_the_working_folder_is_recorded_by_its_absolute_path(
        folder, monkeypatch):
    """The record and RELION's motion STAR name the movie so that a program started in
    another folder (the daemon rewriting corrected_micrographs.star, RELION) finds it."""
    tmp, good, _, _ = folder
    monkeypatch.chdir(tmp)
    assert main(["correct", good.name, "--out", "out", "--dose-per-frame", "1"]) == 0
    record = json.loads((tmp / "out" / "good.motion.json").read_text())
    assert record["movie"] == str(good)
    assert f"rlnMicrographMovieName {good}" in " ".join(
        (tmp / "out" / "good.star").read_text().split())


def test_output_folder_below_a_regular_file_fails_once_before_any_work(folder, capsys):
    tmp, good, _, _ = folder
    (tmp / "afile").write_text("x")
    for out in (tmp / "afile", tmp / "afile" / "sub"):
        status = main(["correct", str(good), "--out", str(out), "--dose-per-frame", "1",
                       "--json"])
        assert status == exitcodes.CONFIG  # no movie could be tried
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1  # one line, however many movies
        assert captured.err.startswith(f"motionwatch: {out}: cannot create the output folder")
        assert json.loads(captured.out)["status"] == "failed"
        if out == tmp / "afile":
            assert "exists and is not a folder" in captured.err


def test_a_gain_reference_that_cannot_be_read_is_a_configuration_error_before_any_movie(
        folder, capsys):
    """Exit status 78, as for ``watch``: no movie was tried (1 says some movies failed and
    the others were written)."""
    tmp, good, _, _ = folder
    status = main(["correct", str(good), "--gain", str(tmp / "no-gain.mrc"), "--out",
                   str(tmp / "out"), "--dose-per-frame", "1"])
    assert status == exitcodes.CONFIG
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no-gain.mrc" in line
    assert not (tmp / "out").exists() or not list((tmp / "out").glob("*.mrc"))


def test_dark_reference_of_the_wrong_shape_is_named_as_the_dark_not_as_a_gain(folder, capsys):
    tmp, good, _, _ = folder
    with mrcfile.new(tmp / "dark.mrc") as mrc:
        mrc.set_data(np.zeros((64, 96), np.float32))
    status = main(["correct", str(good), "--dark", str(tmp / "dark.mrc"), "--out",
                   str(tmp / "out"), "--total-dose", "4"])
    assert status == exitcodes.SOME_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"motionwatch: {good}: {tmp / 'dark.mrc'}: dark reference is 64x96")


def test_truncated_tiff_gives_only_the_motionwatch_line_no_tifffile_log_lines(tmp_path, capsys,
                                                                              caplog):
    import logging

    import tifffile

    caplog.set_level(logging.WARNING)  # without a handler, Python prints these raw on stderr

    syn = render_movie(np.random.default_rng(2), shape_yx=(128, 128), n_frames=4, gain=None,
                       n_hot_pixels=0, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "full.tif", syn.frames, photometric="minisblack")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:len(data) // 2])
    status = main(["correct", str(tmp_path / "cut.tif"), "--pixel-size", "1", "--out",
                   str(tmp_path / "out"), "--dose-per-frame", "1"])
    assert status == exitcodes.SOME_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"motionwatch: {tmp_path / 'cut.tif'}: ")
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_python_warnings_while_correcting_become_one_motionwatch_line_naming_the_movie(
        folder, capsys):
    tmp, good, _, _ = folder  # 4 frames in one group of 8: nothing to align against
    status = main(["correct", str(good), "--out", str(tmp / "out"), "--dose-per-frame", "1",
                   "--group", "8", "--patches", "1", "1"])
    assert status == exitcodes.OK
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith(f"motionwatch: {good}: warning: ") for line in err)


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder nobody may write into: a read-only tmpfs as root (root ignores permission
    bits), a 0o555 folder otherwise; skipped when neither can be had."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                                 str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mount not permitted here: {result.stderr.strip()}")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_correct_into_a_read_only_folder_fails_at_once_naming_the_folder_before_any_movie(
        folder, read_only_folder, capsys, monkeypatch):
    """Faults issue item 13: it used to correct the whole movie, then fail naming a hidden
    temporary file."""
    import correction.pipeline

    tmp, good, _, _ = folder
    corrected = []
    real = correction.pipeline.correct_movie
    monkeypatch.setattr(correction.pipeline, "correct_movie",
                        lambda *a, **k: corrected.append(a) or real(*a, **k))
    status = main(["correct", str(good), "--out", str(read_only_folder),
                   "--dose-per-frame", "1.0", "--json"])
    assert status == exitcodes.CONFIG
    assert corrected == []  # no movie was corrected for nothing
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"motionwatch: {read_only_folder}: cannot write into the output "
                           f"folder: "), line
    assert ".tmp-" not in line and ".motionwatch" not in line
    (summary,) = [json.loads(x) for x in captured.out.splitlines()]
    assert summary["status"] == "failed" and str(read_only_folder) in summary["error"]


def test_movies_with_one_stem_and_two_extensions_write_two_output_sets(tmp_path, capsys):
    import shutil

    rng = np.random.default_rng(3)
    _movie(tmp_path / "x.mrc", rng)
    shutil.copy(tmp_path / "x.mrc", tmp_path / "x.mrcs")  # same stem, another movie extension
    out = tmp_path / "out"
    assert main(["correct", str(tmp_path / "x.mrc"), str(tmp_path / "x.mrcs"), "--out", str(out),
                 "--dose-per-frame", "1", "--patches", "1", "1"]) == 0
    assert json.loads((out / "x.motion.json").read_text())["movie"].endswith("x.mrc")
    assert json.loads((out / "x_mrcs.motion.json").read_text())["movie"].endswith("x.mrcs")


def test_a_later_run_into_the_same_folder_never_overwrites_another_movies_outputs(tmp_path):
    import shutil

    _movie(tmp_path / "x.mrc", np.random.default_rng(4))
    shutil.copy(tmp_path / "x.mrc", tmp_path / "x.mrcs")
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(tmp_path / "x.mrc"), *flags]) == 0
    first = (out / "x_DW.mrc").stat().st_mtime_ns
    assert main(["correct", str(tmp_path / "x.mrcs"), *flags]) == 0  # another run, same stem
    assert json.loads((out / "x.motion.json").read_text())["movie"].endswith("x.mrc")
    assert json.loads((out / "x_mrcs.motion.json").read_text())["movie"].endswith("x.mrcs")
    assert (out / "x_DW.mrc").stat().st_mtime_ns == first
    assert main(["correct", str(tmp_path / "x.mrc"), *flags]) == 0  # the same movie again
    assert (out / "x_DW.mrc").stat().st_mtime_ns != first
    assert not (out / "x_mrc.motion.json").exists()


def test_a_large_compressed_movie_is_decoded_into_the_scratch_folder_or_else_the_output_folder(
        tmp_path, monkeypatch, capsys):
    import tifffile

    import correction.io.spill as spill

    syn = render_movie(np.random.default_rng(2), shape_yx=(128, 160), n_frames=4,
                       electrons_per_px_per_frame=2.0, gain=None, n_hot_pixels=0)
    movie = tmp_path / "k3.tif"
    tifffile.imwrite(movie, np.clip(syn.frames, 0, 255).astype(np.uint8), compression="lzw",
                     photometric="minisblack")
    monkeypatch.setattr(spill, "SPILL_OVER_BYTES", 1024)  # this movie counts as large
    folders = []
    real = spill.tempfile.TemporaryFile
    monkeypatch.setattr(spill.tempfile, "TemporaryFile",
                        lambda *a, **k: folders.append(Path(k["dir"])) or real(*a, **k))
    common = ["--dose-per-frame", "1", "--pixel-size", "1.1"]
    assert main(["correct", str(movie), "--out", str(tmp_path / "o1"), "--scratch",
                 str(tmp_path / "scratch"), *common]) == 0
    assert main(["correct", str(movie), "--out", str(tmp_path / "o2"), *common]) == 0
    assert folders == [tmp_path / "scratch", tmp_path / "o2"]
    assert os.listdir(tmp_path / "scratch") == []
    (tmp_path / "afile").write_text("x")
    assert main(["correct", str(movie), "--out", str(tmp_path / "o3"), "--scratch",
                 str(tmp_path / "afile"), *common]) == exitcodes.CONFIG
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"motionwatch: {tmp_path / 'afile'}: cannot create the scratch folder")


def test_a_gain_that_fits_the_movies_better_turned_over_is_named_once_on_stderr(tmp_path,
                                                                                 capsys):
    """The orientation check of the record (correction.gain_orientation) reaches the user of
    ``correct`` as one warning line per run (it was in the motion record alone)."""
    rng = np.random.default_rng(7)
    gain = None
    movies = []
    for i in range(2):
        syn = render_movie(rng, shape_yx=(384, 512), n_frames=12, gain=True if gain is None
                           else gain, n_hot_pixels=0, electrons_per_px_per_frame=1.5)
        gain = syn.gain
        movies.append(tmp_path / f"m{i}.mrc")
        with mrcfile.new(movies[-1]) as mrc:
            mrc.set_data(syn.frames.astype(np.int16))
            mrc.voxel_size = 1.1
    with mrcfile.new(tmp_path / "gain.mrc") as mrc:
        mrc.set_data(np.ascontiguousarray(gain[::-1]).astype(np.float32))  # stored upside down
    assert main(["correct", *map(str, movies), "--gain", str(tmp_path / "gain.mrc"), "--out",
                 str(tmp_path / "out"), "--dose-per-frame", "1.5", "--patches", "1", "1"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "gain orientation" in x]
    assert len(lines) == 1 and "m0.mrc: warning:" in lines[0]
    assert "-RotGain 0 -FlipGain 1 fits better" in lines[0]


def test_an_unknown_flag_is_reported_with_the_subcommands_usage(folder, capsys):
    """Before, argparse's top-level parser reported it, with ``usage: motionwatch [-h]
    [--version] COMMAND ...``, which names no option of the command."""
    tmp, good, _, _ = folder
    with pytest.raises(SystemExit) as stopped:
        main(["correct", str(good), "--out", str(tmp / "out"), "--dose-per-frame", "1",
              "--frobnicate"])
    assert stopped.value.code == exitcodes.USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: motionwatch correct ")
    assert err.strip().endswith("motionwatch correct: error: unrecognized arguments: --frobnicate")


def _star_movies(out):
    import starfile

    table = starfile.read(out / "corrected_micrographs.star")["micrographs"]
    return sorted(table["rlnMicrographName"])


def test_a_movie_named_with_a_tab_is_corrected_and_named_and_the_folders_star_lists_the_rest(
        tmp_path, capsys):
    """A STAR row cannot hold a tab (nor a line break): one movie so named kept every later run
    from writing its folder's ``corrected_micrographs.star``. Its images are written, the two
    RELION files that cannot name it are said, and the others are listed."""
    rng = np.random.default_rng(8)
    movies = [_movie(tmp_path / "a.mrc", rng), _movie(tmp_path / "b\tc.mrc", rng)]
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", *map(str, movies), *flags]) == 0
    err = capsys.readouterr().err
    assert "RELION motion STAR not written" in err and "b\\tc.mrc' holds a tab" in err
    assert f"corrected_micrographs.star: {str(movies[1])!r} left out" in err
    assert (out / "b\tc_DW.mrc").is_file()
    assert _star_movies(out) == ["a_DW.mrc"]
    _movie(tmp_path / "d.mrc", rng)
    assert main(["correct", str(tmp_path / "d.mrc"), *flags]) == 0  # a later run: listed too
    assert _star_movies(out) == ["a_DW.mrc", "d_DW.mrc"]


def test_a_movie_whose_motion_star_is_not_written_says_so_in_its_json_line_and_by_name(
        tmp_path, capsys):
    """Its ``--json`` line said ``"status": "ok"`` and nothing more, and the stderr line named
    only the STAR's problem, not the movie."""
    movie = _movie(tmp_path / "b\tc.mrc", np.random.default_rng(8))
    out = tmp_path / "out"
    assert main(["correct", str(movie), "--out", str(out), "--dose-per-frame", "1",
                 "--patches", "1", "1", "--json"]) == 0
    captured = capsys.readouterr()
    (line,) = [json.loads(text) for text in captured.out.splitlines()]
    assert line["status"] == "ok" and "holds a tab" in line["relion_star_error"]
    assert f"motionwatch: {movie}: RELION motion STAR not written" in captured.err


def test_a_movie_given_twice_or_through_a_link_is_corrected_once_and_listed_once(tmp_path,
                                                                              capsys):
    """Overlapping globs, or the frames folder reached by two paths: one output set, one STAR
    row (two rows are the same particles twice, in both half-sets)."""
    _movie(tmp_path / "m.mrc", np.random.default_rng(6))
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "hard").mkdir()
    os.link(tmp_path / "m.mrc", tmp_path / "hard" / "m.mrc")
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(tmp_path / "m.mrc"), str(tmp_path / "m.mrc"),
                 str(tmp_path / "link" / "m.mrc"), str(tmp_path / "hard" / "m.mrc"),
                 *flags]) == 0
    assert "4 movies given, 1 distinct" in capsys.readouterr().err  # not "3 given twice"
    assert main(["correct", str(tmp_path / "link" / "m.mrc"), *flags]) == 0  # a later run
    assert sorted(p.name for p in out.glob("*.motion.json")) == ["m.motion.json"]
    assert _star_movies(out) == ["m_DW.mrc"]


def test_a_link_to_itself_among_the_movies_fails_alone_in_one_line(tmp_path, capsys):
    """A symbolic link loop named like a movie stopped the whole batch with a traceback before
    any movie was corrected (finding repeats resolved the path, which raises on a loop)."""
    _movie(tmp_path / "m.mrc", np.random.default_rng(6))
    (tmp_path / "z.eer").symlink_to(tmp_path / "z.eer")
    out = tmp_path / "out"
    assert main(["correct", str(tmp_path / "z.eer"), str(tmp_path / "m.mrc"), "--out", str(out),
                 "--dose-per-frame", "1", "--patches", "1", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (said,) = [line for line in err.splitlines() if "z.eer" in line]
    assert said.startswith(f"motionwatch: {tmp_path / 'z.eer'}: ")
    assert sorted(p.name for p in out.glob("*.motion.json")) == ["m.motion.json"]


def test_a_movie_moved_and_corrected_again_into_its_folder_overwrites_its_own_outputs(tmp_path):
    (tmp_path / "session").mkdir()
    _movie(tmp_path / "session" / "m.mrc", np.random.default_rng(7))
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(tmp_path / "session" / "m.mrc"), *flags]) == 0
    (tmp_path / "session").rename(tmp_path / "archive")
    assert main(["correct", str(tmp_path / "archive" / "m.mrc"), *flags]) == 0
    assert sorted(p.name for p in out.glob("*.motion.json")) == ["m.motion.json"]
    assert json.loads((out / "m.motion.json").read_text())["movie"].startswith(
        str(tmp_path / "archive"))


@pytest.mark.parametrize("order", [("x.mrc", "x_DW.mrc"), ("x_DW.mrc", "x.mrc")])
def test_a_movie_named_like_another_movies_dose_weighted_sum_gets_its_own_outputs(tmp_path,
                                                                                 order):
    """``x``'s dose-weighted sum is ``x_DW.mrc``, the name of ``x_DW``'s plain sum: in one run or
    two, each movie's record must name its own images."""
    rng = np.random.default_rng(8)
    for name in order:
        _movie(tmp_path / name, rng)
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    for name in order:
        assert main(["correct", str(tmp_path / name), *flags]) == 0
    records = [json.loads(p.read_text()) for p in out.glob("*.motion.json")]
    assert len(records) == 2
    images = [Path(record["outputs"][kind]).name for record in records
              for kind in ("sum", "dw", "even", "odd")]
    assert len(set(images)) == 8  # no file is two movies' outputs
    for record in records:
        sum_path = out / Path(record["outputs"]["sum"]).name
        with mrcfile.open(sum_path) as mrc:
            assert Path(record["movie"]).name.encode() in b"".join(mrc.header.label)


def test_correct_into_the_movies_own_folder_never_replaces_a_raw_movie(tmp_path, capsys):
    movie = _movie(tmp_path / "m.mrc", np.random.default_rng(9))
    before = movie.read_bytes()
    status = main(["correct", str(movie), "--out", str(tmp_path), "--dose-per-frame", "1",
                   "--patches", "1", "1"])
    assert status == exitcodes.SOME_FAILED
    err = capsys.readouterr().err
    assert f"{movie}: an output's name, but not a file motionwatch wrote" in err
    assert movie.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp-*"))


def test_the_movies_corrected_before_a_sigterm_are_listed_for_relion_with_their_gain(
        tmp_path):
    """A batch system's time limit: status 143, no temporaries, and the movies done so far in
    corrected_micrographs.star, each with its motion STAR naming the gain."""
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(10)
    movies = [str(_movie(tmp_path / f"m{i}.mrc", rng, shape=(256, 256))) for i in range(40)]
    with mrcfile.new(tmp_path / "gain.mrc") as mrc:
        mrc.set_data(np.ones((256, 256), np.float32))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "daemon.commands.cli", "correct", *movies,
                             "--out", str(out), "--dose-per-frame", "1", "--gain",
                             str(tmp_path / "gain.mrc")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.star"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.TERMINATED == 143, err
    assert "terminated (SIGTERM)" in err
    assert not list(out.glob(".*tmp-*"))
    done = sorted(p.name.removesuffix(".motion.json") for p in out.glob("*.motion.json"))
    assert 1 <= len(done) < len(movies)
    assert _star_movies(out) == sorted(f"{stem}_DW.mrc" for stem in done)
    for stem in done:
        assert "rlnMicrographGainName" in (out / f"{stem}.star").read_text()


def test_a_sigterm_while_the_gain_is_exported_for_relion_waits_for_the_motion_star(
        tmp_path, monkeypatch, capsys):
    """SIGTERM while the first movie's gain was exported for RELION (after its motion record
    was in place; seconds for a K3 super-resolution gain): its motion STAR was then written at
    the end without the gain (polishing would read the raw frames uncorrected), and an
    existing STAR is never replaced. Now the STAR is written, naming the gain, then the run
    stops (143)."""
    import os
    import signal

    from correction import gain_export

    rng = np.random.default_rng(12)
    movies = [str(_movie(tmp_path / f"m{i}.mrc", rng)) for i in range(2)]
    with mrcfile.new(tmp_path / "gain.mrc") as mrc:
        mrc.set_data(np.ones((128, 128), np.float32))
    real = gain_export.write_relion_gain

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the batch system's time limit, now
        return real(*args, **kwargs)

    monkeypatch.setattr(gain_export, "write_relion_gain", signalled)
    out = tmp_path / "out"
    status = main(["correct", *movies, "--out", str(out), "--dose-per-frame", "1",
                   "--gain", str(tmp_path / "gain.mrc"), "--patches", "1", "1"])
    assert status == exitcodes.TERMINATED
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.motion.json")) == ["m0.motion.json"]
    assert "rlnMicrographGainName" in (out / "m0.star").read_text()
    assert _star_movies(out) == ["m0_DW.mrc"]


_SIGNAL_WHILE_FINISHING = """
import os, signal, sys
from daemon.commands import correct, cli
# Ctrl-C taken as at a terminal (a background job of a shell, as a test runner may be, starts
# with SIGINT ignored, and a run started so keeps it ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
real = correct._RelionFiles.finish
def finish(self):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # the time limit, as the STAR is written
    return real(self)
correct._RelionFiles.finish = finish
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signal_name, status, said", [
    ("SIGTERM", exitcodes.TERMINATED, "terminated (SIGTERM)"),
    ("SIGINT", exitcodes.INTERRUPTED, "interrupted")])
def test_a_signal_while_the_runs_star_is_written_waits_for_it(tmp_path, signal_name, status,
                                                              said):
    """SIGTERM or Ctrl-C just after the last movie, while corrected_micrographs.star is
    written: the run died of the signal (or stopped half-way) with no STAR and its stem notes
    left. Now the STAR is written, the notes released, and the run exits as at any time."""
    import subprocess
    import sys

    rng = np.random.default_rng(13)
    movies = [str(_movie(tmp_path / f"m{i}.mrc", rng)) for i in range(2)]
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", _SIGNAL_WHILE_FINISHING, signal_name,
                          "correct", *movies, "--out", str(out), "--dose-per-frame", "1",
                          "--patches", "1", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == status, run.stderr
    assert said in run.stderr and "Traceback" not in run.stderr
    if signal_name == "SIGINT":  # told at once that the STAR is written first
        assert "the STAR of the movies corrected so far is written first" in run.stderr
    assert _star_movies(out) == ["m0_DW.mrc", "m1_DW.mrc"]
    assert not (out / ".motionwatch-correct-claims").exists()


def test_a_ctrl_c_while_the_subcommands_are_imported_is_an_interruption(monkeypatch, capsys):
    """The first half second of a run imports the subcommands: a Ctrl-C then printed a
    traceback and the run died of SIGINT instead of saying "interrupted" (130)."""
    from daemon.commands import cli

    def importing():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", importing)
    assert main(["correct", "m.mrc", "--out", "out"]) == exitcodes.INTERRUPTED == 130
    assert capsys.readouterr().err == "motionwatch: interrupted\n"


def test_a_writers_temporaries_left_an_hour_ago_are_removed_whatever_runs_under_its_pid(
        tmp_path):
    """A run killed in a container wrote as pid 1 there (or its pid was since reused): a pid
    that runs here told nothing, and its temporaries (270 MB a set at 4K) stayed for good.
    A temporary unchanged for an hour is a dead writer's; a fresh one of a running pid may be
    another run's, writing now, and stays."""
    rng = np.random.default_rng(14)
    movie = _movie(tmp_path / "m0.mrc", rng)
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".m0_DW.mrc.tmp-1", out / f".m0.motion.json.tmp-{os.getppid()}"]
    fresh = [out / ".m0_ODD.mrc.tmp-1", out / f".m0_EVN.mrc.tmp-{os.getppid()}"]
    hours_ago = time.time() - 2 * 3600
    for path in stale + fresh:
        path.write_bytes(b"\0" * 1024)
    for path in stale:
        os.utime(path, (hours_ago, hours_ago))
    assert main(["correct", str(movie), "--out", str(out), "--dose-per-frame", "1",
                 "--patches", "1", "1"]) == exitcodes.OK
    assert sorted(p.name for p in out.glob(".*tmp-*")) == sorted(p.name for p in fresh)


def test_correct_does_not_replace_a_tilt_the_daemon_corrected_in_its_series(tmp_path, capsys):
    """Its pre-exposure would drop to 0 and its series' stacks stay made of the old sums."""
    movie = _movie(tmp_path / "TS_01_001_3.0.mrc", np.random.default_rng(11))
    out = tmp_path / "motioncorr"
    out.mkdir()
    record = {"movie": str(movie), "tilt": {"series": "TS_01", "pre_exposure_e_A2": 6.61}}
    (out / "TS_01_001_3.0.motion.json").write_text(json.dumps(record))
    status = main(["correct", str(movie), "--out", str(out), "--dose-per-frame", "1"])
    assert status == exitcodes.SOME_FAILED
    err = capsys.readouterr().err
    assert "a tilt of TS_01 that motionwatch watch corrected" in err
    # what the user can do: retry requeues quarantined movies only, never a done tilt
    assert "correct it into another --out" in err and "retry" not in err
    assert json.loads((out / "TS_01_001_3.0.motion.json").read_text()) == record


def test_another_movie_of_a_name_whose_first_movie_is_gone_keeps_the_first_ones_outputs(
        tmp_path):
    """Session A's x.mrc corrected into out, session A archived away (or its share unmounted),
    then session B's own x.mrc: A's outputs stay, B's get their own stem."""
    for session, seed in (("A", 12), ("B", 13)):
        (tmp_path / session).mkdir()
        _movie(tmp_path / session / "x.mrc", np.random.default_rng(seed))
    os.utime(tmp_path / "B" / "x.mrc", ns=(1, 1))  # another file, another mtime
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(tmp_path / "A" / "x.mrc"), *flags]) == 0
    first = (out / "x_DW.mrc").read_bytes()
    (tmp_path / "A").rename(tmp_path / "archived")
    assert main(["correct", str(tmp_path / "B" / "x.mrc"), *flags]) == 0
    assert (out / "x_DW.mrc").read_bytes() == first
    assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(
        tmp_path / "B" / "x.mrc")


def test_two_grids_movies_copied_at_once_and_archived_each_overwrite_their_own_outputs(
        tmp_path):
    """grid1/x.mrc and grid2/x.mrc, of one size and copied a second apart, corrected into one
    out (``x`` and ``x_mrc``), then the session moved to an archive: grid2's movie corrected
    again took ``x``, grid1's outputs (both records fit by name, size and mtime within 2 s)."""
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    for grid, seed in (("grid1", 17), ("grid2", 18)):
        (tmp_path / "session" / grid).mkdir(parents=True)
        _movie(tmp_path / "session" / grid / "x.mrc", np.random.default_rng(seed))
    os.utime(tmp_path / "session" / "grid1" / "x.mrc", ns=(10**18, 10**18))
    os.utime(tmp_path / "session" / "grid2" / "x.mrc", ns=(10**18 + 10**9,) * 2)
    assert main(["correct", str(tmp_path / "session" / "grid1" / "x.mrc"),
                 str(tmp_path / "session" / "grid2" / "x.mrc"), *flags]) == 0
    grid1_sum = (out / "x_DW.mrc").read_bytes()
    (tmp_path / "archive").mkdir()
    (tmp_path / "session").rename(tmp_path / "archive" / "session")
    moved = tmp_path / "archive" / "session" / "grid2" / "x.mrc"
    assert main(["correct", str(moved), *flags]) == 0
    assert (out / "x_DW.mrc").read_bytes() == grid1_sum
    assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(moved)
    assert sorted(p.name for p in out.glob("*.motion.json")) == ["x.motion.json",
                                                                  "x_mrc.motion.json"]


def test_a_killed_runs_temporaries_are_removed_and_a_running_writers_are_kept(tmp_path):
    import subprocess
    import sys

    movie = _movie(tmp_path / "m.mrc", np.random.default_rng(14))
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = out / f".m_DW.mrc.tmp-{dead}"  # a correct killed while writing (SIGKILL)
        running = out / f".m_EVN.mrc.tmp-{other.pid}"  # another run writing now
        second = out / f".m_ODD.mrc.tmp-{other.pid}.1"  # its second thread on that name
        left.write_bytes(b"x" * 1000)
        running.write_bytes(b"y")
        second.write_bytes(b"z")
        assert main(["correct", str(movie), "--out", str(out), "--dose-per-frame", "1",
                     "--patches", "1", "1"]) == 0
        assert not left.exists() and running.exists() and second.exists()
    finally:
        other.kill()
        other.wait()


def test_correct_run_outside_the_main_thread_corrects_its_movies(tmp_path):
    """A GUI or a pipeline calling it from a thread: signal handlers are the main thread's."""
    import threading

    movie = _movie(tmp_path / "m.mrc", np.random.default_rng(15))
    status = []
    worker = threading.Thread(target=lambda: status.append(main([
        "correct", str(movie), "--out", str(tmp_path / "out"), "--dose-per-frame", "1",
        "--patches", "1", "1"])))
    worker.start()
    worker.join(timeout=120)
    assert status == [0] and (tmp_path / "out" / "m_DW.mrc").is_file()


def test_a_moved_movie_recorded_by_the_daemon_or_copied_with_coarse_mtimes_is_its_own(tmp_path):
    """The daemon's record notes the file as ``source_file``; a copy to a share may keep its
    mtime to the second: either way the movie corrected again overwrites its own outputs."""
    (tmp_path / "session").mkdir()
    movie = _movie(tmp_path / "session" / "m.mrc", np.random.default_rng(16))
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(movie), *flags]) == 0
    record = json.loads((out / "m.motion.json").read_text())
    noted = record.pop("movie_file")
    record["source_file"] = {"path": str(movie), **noted, "params_fingerprint": "x"}
    (out / "m.motion.json").write_text(json.dumps(record))
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "m.mrc").write_bytes(movie.read_bytes())
    whole_s = noted["mtime_ns"] // 10**9 * 10**9
    os.utime(archive / "m.mrc", ns=(whole_s, whole_s))
    movie.unlink()
    assert main(["correct", str(archive / "m.mrc"), *flags]) == 0
    assert sorted(p.name for p in out.glob("*.motion.json")) == ["m.motion.json"]


def test_a_run_never_takes_a_stem_another_running_run_chose_for_a_movie_of_the_same_name(
        tmp_path):
    """``xargs -P`` over two grids with SerialEM's names: a run chooses all its stems first and
    writes each record only when that movie is done, so a stem chosen by a running run is
    noted (``.motionwatch-correct-claims``) and the other run takes ``x_mrc``; the notes of a
    run that has ended hold nothing."""
    import subprocess
    import sys

    rng = np.random.default_rng(16)
    for grid in ("grid1", "grid2", "out"):
        (tmp_path / grid).mkdir()
    first = _movie(tmp_path / "grid1" / "x.mrc", rng)
    second = _movie(tmp_path / "grid2" / "x.mrc", rng)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path\n"
         "from daemon.commands.stem_claims import StemClaims\n"
         "StemClaims(Path(sys.argv[1])).claim(lambda held: {Path(sys.argv[2]): 'x'})\n"
         "print('claimed', flush=True); time.sleep(60)", str(out), str(first)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"  # a run correcting grid1/x.mrc
        flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
        assert main(["correct", str(second), *flags]) == 0
        assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(second)
        assert not (out / "x.motion.json").exists()  # left to the run that chose it
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert main(["correct", str(first), *flags]) == 0  # that run was killed: x is free
    assert json.loads((out / "x.motion.json").read_text())["movie"] == str(first)
    assert not (out / ".motionwatch-correct-claims").exists()


def test_a_movie_named_like_the_folders_micrographs_star_keeps_its_own_motion_star(tmp_path):
    """``corrected_micrographs.mrc``: its motion STAR ``corrected_micrographs.star`` was the
    folder's micrographs STAR, whose row for it then named the folder's STAR as its motion."""
    import starfile

    rng = np.random.default_rng(21)
    movies = [_movie(tmp_path / name, rng) for name in ("m1.mrc", "corrected_micrographs.mrc")]
    out = tmp_path / "out"
    assert main(["correct", *map(str, movies), "--out", str(out), "--dose-per-frame", "1",
                 "--patches", "1", "1"]) == 0
    assert (out / "corrected_micrographs_mrc.motion.json").is_file()
    rows = starfile.read(out / "corrected_micrographs.star", always_dict=True)["micrographs"]
    assert sorted(rows["rlnMicrographMetadata"]) == ["corrected_micrographs_mrc.star", "m1.star"]


def test_a_pixel_size_given_unlike_the_movie_files_is_used_recorded_and_named_once(
        tmp_path, capsys):
    """A `pixel_size` left in a TOML from another magnification silently replaced SerialEM's
    right headers in every output (CTF, resolution wrong by the ratio). It is still used
    (MotionCor2's -PixSize wins), but said once, and the record keeps the file's value."""
    rng = np.random.default_rng(17)
    movies = [_movie(tmp_path / f"m{i}.mrc", rng, pixel_size_A=1.06) for i in range(2)]
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", *map(str, movies), *flags, "--pixel-size", "0.83"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "pixel size given" in line]
    assert len(warned) == 1 and "0.83 Å, is not the movie file's, 1.06 Å (-22 %)" in warned[0]
    record = json.loads((out / "m0.motion.json").read_text())
    assert record["movie_pixel_size"] == {"used_A": 0.83, "source": "given", "in_file_A": 1.06}
    assert record["pixel_size_A"] == 0.83
    assert main(["correct", *map(str, movies), *flags, "--pixel-size", "1.065"]) == 0  # 0.5 %
    assert "pixel size given" not in capsys.readouterr().err
    assert main(["correct", *map(str, movies), *flags]) == 0
    assert "pixel size given" not in capsys.readouterr().err
    assert json.loads((out / "m1.motion.json").read_text())["movie_pixel_size"] == {
        "used_A": 1.06, "source": "file"}


def test_a_stem_noted_by_a_run_on_another_host_holds_for_days_and_then_frees(tmp_path):
    """An ``sbatch --array`` of ``correct`` runs on two nodes into one shared folder: a note of
    another host's run cannot be checked by its pid (4000000 runs nowhere here), so it holds
    its stem for FOREIGN_NOTE_DAYS; an older one (a killed run's) no longer does."""
    import time

    from daemon.commands.stem_claims import CLAIMS_NAME, FOREIGN_NOTE_DAYS

    rng = np.random.default_rng(18)
    for grid in ("grid1", "grid2", "out"):
        (tmp_path / grid).mkdir()
    second = _movie(tmp_path / "grid2" / "x.mrc", rng)
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]

    def note_of_another_node(age_s: float) -> None:
        (out / CLAIMS_NAME).write_text(json.dumps({"x": {
            "movie": str(tmp_path / "grid1" / "x.mrc"), "pid": 4000000,
            "runner": "node17/pid:[4026531836]", "since_s": time.time() - age_s}}))

    note_of_another_node(3600.0)
    assert main(["correct", str(second), *flags]) == 0
    assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(second)
    assert not (out / "x.motion.json").exists()
    assert "x" in json.loads((out / CLAIMS_NAME).read_text())  # the other node's note stays
    for name in ("x_mrc.mrc", "x_mrc.motion.json"):
        (out / name).unlink()
    note_of_another_node(FOREIGN_NOTE_DAYS * 86400.0 + 60.0)
    assert main(["correct", str(second), *flags]) == 0
    assert json.loads((out / "x.motion.json").read_text())["movie"] == str(second)
    assert not (out / CLAIMS_NAME).exists()


def test_a_claims_file_this_account_cannot_use_leaves_the_stems_unnoted_and_says_so(
        tmp_path, capsys):
    """Another account's run left its claims file in a shared folder (not writable here; a
    folder of that name stands in, which no account can open as a file): the run corrects its
    movies, choosing stems as runs did before claims, with one warning naming the file."""
    from daemon.commands.stem_claims import CLAIMS_NAME

    rng = np.random.default_rng(19)
    movie = _movie(tmp_path / "x.mrc", rng)
    out = tmp_path / "out"
    (out / CLAIMS_NAME).mkdir(parents=True)
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(movie), *flags]) == 0
    assert (out / "x.motion.json").exists()
    warned = [line for line in capsys.readouterr().err.splitlines() if CLAIMS_NAME in line]
    assert len(warned) == 1 and "output stems are not noted" in warned[0]


def test_the_claims_file_is_as_writable_as_the_umask_makes_it_for_a_group_shared_folder(
        tmp_path):
    """With the umask 002 of a lab's shared folder, the claims file is group-writable, so a
    colleague's run into the folder can note its stems too (it was 0644 whatever the umask)."""
    from pathlib import Path

    from daemon.commands.stem_claims import StemClaims

    claims = StemClaims(tmp_path)
    previous = os.umask(0o002)
    try:
        claims.claim(lambda held: {Path("/data/x.mrc"): "x"})
    finally:
        os.umask(previous)
    assert claims.path.stat().st_mode & 0o777 == 0o664
    claims.release()
    assert not claims.path.exists()


def test_claims_on_a_file_system_whose_inode_numbers_change_are_still_taken(
        tmp_path, monkeypatch):
    """The claims file is reopened while the name leads to another file than the one locked
    (a run removed it meanwhile); where inode numbers are not stable that was for ever."""
    import types
    from pathlib import Path

    import daemon.commands.stem_claims as stem_claims

    real_stat = os.stat
    monkeypatch.setattr(stem_claims.os, "stat", lambda path, *a, **k: types.SimpleNamespace(
        st_ino=real_stat(path, *a, **k).st_ino + 1))
    claims = stem_claims.StemClaims(tmp_path)
    assert claims.claim(lambda held: {Path("/data/x.mrc"): "x"}) == {Path("/data/x.mrc"): "x"}
    claims.release()


def test_a_claims_file_this_account_may_read_but_not_write_still_keeps_its_notes_stems(
        tmp_path, monkeypatch):
    """Another account's run, still running, left its claims file 0644 in a shared folder:
    this run cannot note its own stems (refused here as the file system would refuse it), but
    it reads the other run's notes and takes ``x_mrc``, never the ``x`` that run holds."""
    import daemon.commands.stem_claims as stem_claims

    out = tmp_path / "out"
    out.mkdir()
    theirs = {"x": {"movie": str(tmp_path / "grid1" / "x.mrc"), "pid": 4000000,
                    "runner": "node17/pid:[4026531836]", "since_s": time.time()}}
    (out / stem_claims.CLAIMS_NAME).write_text(json.dumps(theirs))

    def refused(path, mode=0o644):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(stem_claims, "open_own_file", refused)
    claims = stem_claims.StemClaims(out)
    mine = tmp_path / "grid2" / "x.mrc"
    chosen = claims.claim(lambda held: {mine: "x_mrc" if "x" in held else "x"})
    assert chosen == {mine: "x_mrc"}
    assert claims.unavailable is not None and "Permission denied" in claims.unavailable
    claims.release()
    assert json.loads((out / stem_claims.CLAIMS_NAME).read_text()) == theirs  # untouched


@pytest.mark.parametrize("fallocate", ["supported", "not supported"])
def test_a_claims_file_that_cannot_grow_keeps_the_other_runs_notes(tmp_path, fallocate):
    """A full disk while a run notes its stems: the file was emptied before the new notes were
    written, so the failed write left it empty or cut, and every other run's notes were gone
    (their stems free for a movie of the same name). A file size limit makes the write fail
    here as a full disk would; the run is told, and the other runs' notes stay, also on a file
    system that cannot take the space first (the cut write is undone)."""
    import subprocess
    import sys

    from daemon.commands.stem_claims import CLAIMS_NAME

    out = tmp_path / "out"
    out.mkdir()
    theirs = {"x": {"movie": str(tmp_path / "grid1" / "x.mrc"), "pid": 4000000,
                    "runner": "node17/pid:[4026531836]", "since_s": time.time()}}
    (out / CLAIMS_NAME).write_text(json.dumps(theirs, indent=1))
    limit = (out / CLAIMS_NAME).stat().st_size + 64  # room for part of one more note
    run = subprocess.run(
        [sys.executable, "-c",
         "import os, resource, signal, sys; from pathlib import Path\n"
         "from daemon.commands.stem_claims import StemClaims\n"
         "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
         "if sys.argv[3] == 'not supported':\n"
         "    def refuse(*args): raise OSError(95, 'Operation not supported')\n"
         "    os.posix_fallocate = refuse\n"
         "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))\n"
         "claims = StemClaims(Path(sys.argv[1]))\n"
         "chosen = claims.claim(lambda held: {Path(f'/data/grid2/m{i}.mrc'): f'm{i}'\n"
         "                                    for i in range(5)} if 'x' in held else {})\n"
         "print(len(chosen), claims.unavailable)\n"
         "claims.release()", str(out), str(limit), fallocate],
        capture_output=True, text=True, check=True)
    count, unavailable = run.stdout.split(maxsplit=1)
    assert count == "5" and "File too large" in unavailable
    assert json.loads((out / CLAIMS_NAME).read_text()) == theirs


def test_a_run_longer_than_the_days_a_note_holds_keeps_its_stems_to_the_end(tmp_path):
    """A note of another host holds for FOREIGN_NOTE_DAYS from when it was noted; a run on a
    cluster node that lasted longer lost its stems part-way to the other runs. Between movies
    it notes them again (once a day at most)."""
    from pathlib import Path

    from daemon.commands.stem_claims import FOREIGN_NOTE_DAYS, StemClaims

    now_s = [1.0e9]
    mine = StemClaims(tmp_path, clock=lambda: now_s[0])
    mine.claim(lambda held: {Path("/data/grid1/x.mrc"): "x"})
    other_node = StemClaims(tmp_path, clock=lambda: now_s[0])
    other_node.runner = "node17/pid:[4026531836]"  # the same folder, seen from another host
    seen: list[bool] = []
    for _day in range(int(FOREIGN_NOTE_DAYS) + 3):
        now_s[0] += 86400.0
        mine.keep()
        chosen = other_node.claim(lambda held: {Path("/data/grid2/x.mrc"): "x_mrc"
                                                if "x" in held else "x"})
        seen.append(chosen[Path("/data/grid2/x.mrc")] == "x_mrc")
        other_node.release()
    assert all(seen)
    mine.release()
    assert not mine.path.exists()


def test_a_run_that_may_not_remove_the_claims_file_still_takes_its_notes_out_of_it(
        tmp_path, monkeypatch):
    """In a sticky shared folder the claims file is another account's: this run may write
    it but not remove it. Its notes went on holding its stems, for 7 days on other hosts."""
    from pathlib import Path

    from daemon.commands.stem_claims import StemClaims

    claims = StemClaims(tmp_path)
    claims.claim(lambda held: {Path("/data/x.mrc"): "x"})

    def not_permitted(self, missing_ok=False):
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "unlink", not_permitted)
    claims.release()
    assert json.loads(claims.path.read_text()) == {}


def test_the_stems_of_a_run_that_died_on_this_host_are_free_again(tmp_path):
    """K1: a run killed (SIGKILL, OOM) leaves its notes; they hold only while its process
    lives, or every later run into the folder names its movies x_tif, x_tif_2 ..."""
    import subprocess
    import sys

    from daemon.commands.stem_claims import CLAIMS_NAME, StemClaims, runner_identity

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    (tmp_path / CLAIMS_NAME).write_text(json.dumps({
        "x": {"movie": "/data/a/x.tif", "pid": dead.pid, "runner": runner_identity(),
              "since_s": time.time()},
        "y": {"movie": "/data/a/y.tif", "pid": live, "runner": runner_identity(),
              "since_s": time.time()}}))
    claims = StemClaims(tmp_path)
    seen = {}
    claims.claim(lambda held: seen.update(held) or {})
    claims.release()
    assert seen == {"y": Path("/data/a/y.tif")}


def test_a_later_run_on_another_movie_of_the_same_name_still_there_keeps_the_first_ones_outputs(
        tmp_path):
    """C7: session A's x.mrc corrected into out, then (another run) session B's x.mrc, A's
    still in place: B gets its own stem; A's outputs are not overwritten by a movie that only
    shares their name (the record's movie exists and is another file)."""
    for session, seed in (("A", 12), ("B", 13)):
        (tmp_path / session).mkdir()
        _movie(tmp_path / session / "x.mrc", np.random.default_rng(seed))
    out = tmp_path / "out"
    flags = ["--out", str(out), "--dose-per-frame", "1", "--patches", "1", "1"]
    assert main(["correct", str(tmp_path / "A" / "x.mrc"), *flags]) == 0
    first = (out / "x_DW.mrc").read_bytes()
    assert main(["correct", str(tmp_path / "B" / "x.mrc"), *flags]) == 0
    assert (out / "x_DW.mrc").read_bytes() == first
    assert json.loads((out / "x.motion.json").read_text())["movie"] == str(tmp_path / "A" / "x.mrc")
    assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(
        tmp_path / "B" / "x.mrc")


def test_a_motion_record_whose_movie_cannot_be_told_is_not_taken_as_free(tmp_path):
    """C8: a stem whose motion record has a "movie" that names no usable path (null, a
    number: damaged) is not this movie's to overwrite; no record, or one of another tool
    without a "movie" at all, is free."""
    from daemon.commands.correct import _owned_by

    (tmp_path / "data").mkdir()
    movie = tmp_path / "data" / "x.mrc"
    movie.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    assert _owned_by(out, "x", movie)
    (out / "x.motion.json").write_text(json.dumps({"shifts": []}))
    assert _owned_by(out, "x", movie)
    (out / "x.motion.json").write_text(json.dumps({"movie": None}))
    assert not _owned_by(out, "x", movie)
