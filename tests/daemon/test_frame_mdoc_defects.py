"""The camera defect list a SerialEM frame mdoc names beside the gain is applied to the frames.

SerialEM saving unnormalized K2 frames (and K3 frames when its properties define defects)
writes the camera's defect list beside them, already in the frames' orientation, with
``WasScaled 1`` (super-resolution coordinates), and names it ``DefectFile`` in each frame mdoc.
The movies here (``tests/helpers/serialem_frames.py``, of a still specimen with strong
contrast, so that they align to no motion) have pixels that read 0 in every frame where the
list says so: with the list applied, those pixels of the sum come near the truth (the
specimen's counts); without it, they stay dark.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import starfile
from recording_log import RecordingLog  # tests/helpers
from scipy import ndimage
from serialem_frames import (camera_defect_list, frames_session, serialem_turn,
                             write_serialem_movie)

from daemon.commands.cli import main
from daemon.engine.policy import finished_under_other_parameters
from daemon.engine.service import Service
from daemon.events import MovieGain, NoMetadata
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics
from daemon.intake.frame_gain import defect_file_name, relocated
from daemon.state.ledger import DB_NAME, Ledger

RAW_SHAPE = (48, 80)  # the camera's raw image; r/f 3 writes frames of 80 rows x 48 columns
CODE = 3
COUNTS = 30.0
N_FRAMES = 4
FLAGS = ("--pixel-size", "1", "--dose-per-frame", "1", "--no-hot-pixels")

#: on the frames as written (80 x 48, row 0 at the top), as SerialEM writes it for them:
#: super-resolution coordinates on the 96 x 160 camera, a bad pixel the 2 x 2 block from it
DEFECT_LIST = camera_defect_list((96, 160), "PartialBadColumn 20 2 10 41\nBadPixels 60 100\n",
                                 rotation_flip=3)


def dead_top_down() -> np.ndarray:
    """The frames' pixels the list names (frame pixel = list pixel // 2), row 0 at the top."""
    dead = np.zeros((80, 48), bool)
    dead[5:21, 10] = True   # PartialBadColumn 20 2 10 41
    dead[50, 30] = True     # BadPixels 60 100
    return dead


def _specimen_raw() -> np.ndarray:
    """Smooth blobs of 0.3-1.7 transmission on the raw image (the same for every movie)."""
    field = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=RAW_SHAPE), 2.0)
    return 1.0 + 0.7 * field / np.abs(field).max()


def _movie(folder: Path, name: str, seed: int, *, defect_list: str | None = DEFECT_LIST
           ) -> Path:
    gain = np.random.default_rng(seed).uniform(0.8, 1.2, size=RAW_SHAPE).astype(np.float32)
    return write_serialem_movie(folder, name, gain_raw=gain, counts_per_frame=COUNTS,
                                n_frames=N_FRAMES, code=CODE, rng=np.random.default_rng(seed),
                                defect_list=defect_list, dead_top_down_yx=dead_top_down(),
                                specimen_raw=_specimen_raw())


def _dead_level(path: Path, where: np.ndarray | None = None) -> float:
    """The sum at the dead pixels (``where``: some of them) over the truth there, the lowest
    (the sum's rows are the frames' rows reversed: row 0 at the bottom)."""
    where = dead_top_down() if where is None else where
    truth = N_FRAMES * COUNTS * serialem_turn(_specimen_raw(), CODE)
    image = np.flipud(mrcfile.read(path).astype(np.float64))
    return float((image[where] / truth[where]).min())


def test_correct_replaces_the_pixels_the_named_defect_list_gives_in_the_frames_orientation(
        tmp_path):
    movie = _movie(tmp_path / "frames", "m.tif", 1)
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *FLAGS]) == 0
    assert _dead_level(tmp_path / "out" / "m.mrc") > 0.6
    record = json.loads((tmp_path / "out" / "m.motion.json").read_text())
    listed = tmp_path / "frames" / "defects_m.txt"
    assert record["frame_mdoc_gain"]["defects"] == str(listed)
    assert record["references"]["defects"]["path"] == str(listed)
    assert record["references"]["defects"]["fitted"] == (
        "SerialEM camera defect list of a 96 x 160 camera, binned by 2")
    # the truth holds without the list: the same movie leaves those pixels dark
    assert main(["correct", str(movie), "--out", str(tmp_path / "plain"), *FLAGS,
                 "--defects", str(_xywh(tmp_path, []))]) == 0
    assert _dead_level(tmp_path / "plain" / "m.mrc") < 0.3


def _xywh(tmp_path: Path, rects: list[tuple[int, int, int, int]]) -> Path:
    path = tmp_path / "given.txt"
    path.write_text("".join(f"{x} {y} {w} {h}\n" for x, y, w, h in rects))
    return path


def test_a_configured_defect_list_wins_over_the_frame_mdoc_s(tmp_path):
    movie = _movie(tmp_path / "frames", "m.tif", 2)
    given = _xywh(tmp_path, [(10, 80 - 21, 1, 16)])  # the partial column only, rows reversed
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *FLAGS,
                 "--defects", str(given)]) == 0
    record = json.loads((tmp_path / "out" / "m.motion.json").read_text())
    assert "defects" not in record["frame_mdoc_gain"]
    assert record["frame_mdoc_gain"]["defects_not_applied"] == (
        "defects_m.txt: --defects is given")
    assert record["references"]["defects"]["path"] == str(given)
    column, pixel = np.zeros((80, 48), bool), np.zeros((80, 48), bool)
    column[5:21, 10], pixel[50, 30] = True, True
    assert _dead_level(tmp_path / "out" / "m.mrc", column) > 0.6
    assert _dead_level(tmp_path / "out" / "m.mrc", pixel) < 0.3


def test_correct_without_the_named_list_says_so_in_one_line_and_corrects_the_movie(
        tmp_path, capsys):
    movie = _movie(tmp_path / "frames", "m.tif", 3)
    (tmp_path / "frames" / "defects_m.txt").unlink()
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *FLAGS]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert any("m.tif: warning: its frame mdoc names the camera defect list defects_m.txt, "
               "not found in" in line and line.endswith("corrected without it")
               for line in warned), warned
    record = json.loads((tmp_path / "out" / "m.motion.json").read_text())
    assert record["references"]["defects"] is None
    assert record["frame_mdoc_gain"]["defects_missing"].startswith(
        "its frame mdoc names the camera defect list defects_m.txt, not found in")


def test_watch_applies_each_movie_s_list_waits_for_a_missing_one_and_a_restart_redoes_none(
        tmp_path):
    config = frames_session(tmp_path, incomplete_grace_s=0.5, exit_when_idle_s=1.5)
    frames = config.watch_dir / "frames"
    _movie(frames, "listed.tif", 4)
    _movie(frames, "unlisted.tif", 5)
    (frames / "defects_unlisted.txt").unlink()
    log = RecordingLog()
    optics = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    assert Service(config, resolver=NoMetadata(), logger=log,
                   listeners=[RelionListener(optics)]).run() == 0
    out = config.out_dir / "frames"
    assert _dead_level(out / "listed.mrc") > 0.6
    assert _dead_level(out / "unlisted.mrc") < 0.3
    for stem, zeros in (("listed", True), ("unlisted", False)):  # RELION's polishing: 0 = defect
        name = starfile.read(out / f"{stem}.star", always_dict=True)["general"][
            "rlnMicrographGainName"]
        exported = np.flipud(mrcfile.read(config.out_dir / name))[dead_top_down()]
        assert np.all(exported == 0) if zeros else np.all(exported > 0), stem
    assert any(e.get("movie") == str(frames / "unlisted.tif") for e in log.named("movie_waiting"))
    warned = log.named("movie_without_frame_mdoc_defects")
    assert len(warned) == 1 and "defects_unlisted.txt" in warned[0]["reason"]
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    assert [r.status for r in rows] == ["done"] * 2
    assert finished_under_other_parameters(rows, config.params) == []
    restarted = RecordingLog()
    assert Service(config, resolver=NoMetadata(), logger=restarted).run() == 0
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        assert all(r.attempts == 1 for r in ledger.rows())


def test_a_named_list_of_another_camera_quarantines_its_movie_not_the_service(tmp_path):
    config = frames_session(tmp_path)
    frames = config.watch_dir / "frames"
    for i in range(3):  # three movies: a configured list would stop the service (78)
        _movie(frames, f"m_{i}.tif", 10 + i,
               defect_list=DEFECT_LIST.replace("CameraSizeY 160", "CameraSizeY 40"))
    assert Service(config, resolver=NoMetadata()).run() == 0
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    assert [r.status for r in rows] == ["quarantined"] * 3
    assert "defects_m_0.txt: camera defect list" in rows[0].error


def test_the_list_name_is_read_from_the_frameset_section_whatever_path_it_carries():
    text = ("ImageFile = m.tif\r\nDefectFile = elsewhere.txt\r\n\r\n[FrameSet = 0]\r\n"
            "GainReference = CountRef_m.dm4\r\n"
            "DefectFile = X:\\frames\\session\\defects_first_0001.txt\r\n"
            "NumSubFrames = 4\r\n")
    assert defect_file_name(text) == "defects_first_0001.txt"
    assert defect_file_name(text.replace("DefectFile = X:", "Other = X:")) is None


def test_a_movie_done_without_its_list_is_corrected_once_more_with_it(tmp_path):
    """As after an upgrade from a release that did not read the list: the movie's parameters
    now include it, so it is corrected again, once, and not at the next start."""
    config = frames_session(tmp_path)
    frames = config.watch_dir / "frames"
    movie = _movie(frames, "m.tif", 20, defect_list=None)
    assert Service(config, resolver=NoMetadata()).run() == 0
    assert _dead_level(config.out_dir / "frames" / "m.mrc") < 0.3
    (frames / "defects_m.txt").write_text(DEFECT_LIST)
    mdoc = movie.with_name("m.tif.mdoc")
    mdoc.write_text(mdoc.read_text().replace("GainReference = CountRef_m.dm4\n",
                                             "GainReference = CountRef_m.dm4\n"
                                             "DefectFile = defects_m.txt\n"))
    for _ in range(2):
        assert Service(config, resolver=NoMetadata()).run() == 0
    assert _dead_level(config.out_dir / "frames" / "m.mrc") > 0.6
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    # one row per parameter set it was corrected under, each corrected once
    assert [(r.status, r.attempts) for r in rows] == [("done", 1), ("done", 1)]
    assert finished_under_other_parameters(rows, config.params) == []


def test_a_done_movie_keeps_its_outputs_when_its_list_goes_and_one_done_without_is_not_held(
        tmp_path):
    """A list deleted after its movie was corrected: the movie is not corrected again without
    it; a movie corrected without its list (never delivered) is not held for it again at each
    start."""
    config = frames_session(tmp_path, incomplete_grace_s=0.5, exit_when_idle_s=1.5)
    frames = config.watch_dir / "frames"
    _movie(frames, "listed.tif", 30)
    _movie(frames, "unlisted.tif", 31)
    (frames / "defects_unlisted.txt").unlink()
    assert Service(config, resolver=NoMetadata()).run() == 0
    (frames / "defects_listed.txt").unlink()
    log = RecordingLog()
    assert Service(config, resolver=NoMetadata(), logger=log).run() == 0
    assert not log.named("movie_waiting") and not log.named("movie_without_frame_mdoc_defects")
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        assert [(r.status, r.attempts) for r in ledger.rows()] == [("done", 1)] * 2
    assert _dead_level(config.out_dir / "frames" / "listed.mrc") > 0.6


def test_with_defects_given_a_missing_frame_mdoc_list_holds_nothing_and_a_moved_folder_is_found(
        tmp_path):
    """``--defects`` wins: the frame mdoc's list, there or not, is not waited for, the gain
    exported for RELION masks the given list's pixels, and a session folder moved before its
    movies were corrected finds their gain there, without the list."""
    given = tmp_path / "given.txt"
    given.write_text("10 59 1 16\n")  # the partial column, rows reversed
    config = frames_session(tmp_path, incomplete_grace_s=30.0, exit_when_idle_s=1.5)
    config = dataclasses.replace(config, params=dataclasses.replace(
        config.params, gain=dataclasses.replace(config.params.gain, defects_path=given)))
    frames = config.watch_dir / "frames"
    movie = _movie(frames, "m.tif", 32)
    (frames / "defects_m.txt").unlink()
    log = RecordingLog()
    optics = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    assert Service(config, resolver=NoMetadata(), logger=log,
                   listeners=[RelionListener(optics)]).run() == 0
    assert not log.named("movie_waiting")
    # RELION's polishing masks what the movie was corrected with: the given list's pixels
    name = starfile.read(config.out_dir / "frames" / "m.star", always_dict=True)["general"][
        "rlnMicrographGainName"]
    exported = np.flipud(mrcfile.read(config.out_dir / name))
    assert np.all(exported[5:21, 10] == 0) and exported[50, 30] > 0
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        (row,) = ledger.rows()
    stored = MovieGain.from_json(row.metadata["gain"])
    assert stored.defects is None
    _movie(frames, "m.tif", 32)  # the list back, and the folder moved: the same gain found
    shutil.move(frames, config.watch_dir / "moved")
    found = relocated(stored, config.watch_dir / "moved" / movie.name)
    assert found.path == str(config.watch_dir / "moved" / "CountRef_m.dm4")
    assert found.defects is None


def test_correct_says_when_it_takes_the_frames_for_a_subarea_of_the_list_s_camera(
        tmp_path, capsys):
    """As IMOD says it: frames smaller than the camera, and no binning of it, are a subarea
    centred on it, or the list is another camera's."""
    movie = _normalised_movie(tmp_path / "normalised.mrc", 40)
    listed = tmp_path / "defects.txt"
    listed.write_text(camera_defect_list((128, 96), "BadPixels 40 30\n", was_scaled=0))
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *FLAGS,
                 "--defects", str(listed)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert any("defects.txt: SerialEM camera defect list of a 128 x 96 camera, frames a "
               "subarea from column 24, row 18: taken as a subarea centred on the camera"
               in line for line in warned), warned


def test_a_list_not_applied_with_a_gain_given_is_said_once_per_folder_with_the_option_to_use(
        tmp_path, capsys):
    """The list goes with the frame mdoc's gain: with ``--gain`` given it is not applied, and
    ``correct`` and ``watch`` say so (once per folder), naming ``--defects`` and the file."""
    frames = tmp_path / "frames"
    movies = [_movie(frames, f"m_{i}.tif", 50 + i) for i in range(2)]
    given = ("--gain", str(frames / "CountRef_m_0.dm4"), "--gain-rotate", "3")
    assert main(["correct", *map(str, movies), "--out", str(tmp_path / "out"), *FLAGS,
                 *given]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "not applied" in line]
    assert len(lines) == 1 and lines[0].endswith(
        "its frame mdoc names the camera defect list defects_m_0.txt, not applied: it goes "
        "with the gain reference a frame mdoc names, and --gain is given; give --defects "
        f"{frames / 'defects_m_0.txt'} to apply it"), lines
    config = frames_session(tmp_path)
    config = dataclasses.replace(config, params=dataclasses.replace(
        config.params, gain=dataclasses.replace(config.params.gain, gain_path=frames / (
            "CountRef_m_0.dm4"), rotate_quarter_turns=3)))
    shutil.copytree(frames, config.watch_dir / "frames")
    log = RecordingLog()
    assert Service(config, resolver=NoMetadata(), logger=log).run() == 0
    told = log.named("frame_mdoc_defects_not_applied")
    assert len(told) == 1 and "--gain is given" in told[0]["reason"], told


def test_an_empty_named_list_is_a_copy_under_way_not_an_empty_list(tmp_path, capsys):
    movie = _movie(tmp_path / "frames", "m.tif", 60)
    (tmp_path / "frames" / "defects_m.txt").write_text("")
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *FLAGS]) == 0
    assert "names the camera defect list defects_m.txt, empty in" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "m.motion.json").read_text())
    assert record["references"]["defects"] is None


def _normalised_movie(path: Path, seed: int) -> Path:
    """Gain-normalised frames of 60 x 80 pixels (an MRC), smaller than the lists' cameras."""
    rng = np.random.default_rng(seed)
    mrcfile.new(path, data=rng.poisson(20.0, size=(4, 60, 80)).astype(np.int16)).close()
    return path


def test_watch_warns_once_when_a_list_is_fitted_as_a_subarea_of_its_camera(tmp_path):
    """The workers keep the library's warnings quiet: the service says it from the record."""
    listed = tmp_path / "defects.txt"
    listed.write_text(camera_defect_list((128, 96), "BadPixels 40 30\n", was_scaled=0))
    config = frames_session(tmp_path)
    config = dataclasses.replace(config, params=dataclasses.replace(
        config.params, gain=dataclasses.replace(config.params.gain, defects_path=listed)))
    for i in range(2):
        _normalised_movie(config.watch_dir / f"n_{i}.mrc", 70 + i)
    log = RecordingLog()
    assert Service(config, resolver=NoMetadata(), logger=log).run() == 0
    said = log.named("defect_list_subarea")
    assert len(said) == 1 and said[0]["reason"].startswith(
        "defects.txt: SerialEM camera defect list of a 128 x 96 camera, frames a subarea from "
        "column 24, row 18: taken as a subarea centred on the camera"), said


def test_the_list_to_give_is_named_where_it_lies_beside_or_above_the_movie(tmp_path, capsys):
    frames = tmp_path / "session" / "frames"
    movie = _movie(frames, "m.tif", 80)
    (frames / "defects_m.txt").rename(tmp_path / "session" / "defects_m.txt")
    given = ("--gain", str(frames / "CountRef_m.dm4"), "--gain-rotate", "3")
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *FLAGS, *given]) == 0
    assert f"give --defects {tmp_path / 'session' / 'defects_m.txt'} to apply it" in (
        capsys.readouterr().err)
    (tmp_path / "session" / "defects_m.txt").unlink()
    assert main(["correct", str(movie), "--out", str(tmp_path / "again"), *FLAGS, *given]) == 0
    assert f"not found in {frames} or {frames.parent} either" in capsys.readouterr().err
