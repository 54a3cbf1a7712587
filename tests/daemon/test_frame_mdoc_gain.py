"""The gain reference a SerialEM frame mdoc names is found and applied, turned as the frames are.

SerialEM saving unnormalized K2/K3 frames copies the gain reference into the frames folder
(``CountRef_<movie>.dm4``, never turned) and names it in each movie's frame mdoc
(``GainReference``); the frames are written turned by the camera's rotation/flip, recorded in
their title as ``r/f N``. The movies here are written that way by ``tests/helpers/
serialem_frames.py`` (SerialEMCCD's index rules), of a flat specimen through a strong gain
pattern: the truth is a flat sum. A sum corrected with the right gain, turned right, has the
Poisson noise of its counts alone (variance / mean about 1); without the gain, or turned wrong,
the pattern stays (variance / mean over 10).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from recording_log import RecordingLog  # tests/helpers
from serialem_frames import frames_session, serialem_turn, write_serialem_movie

from correction.gain import orient
from correction.params import ReadParams
from daemon.commands.cli import main
from daemon.engine.policy import finished_under_other_parameters
from daemon.engine.service import Service
from daemon.events import NoMetadata
from daemon.handoff.listener import RelionListener
from daemon.handoff.relion import RelionOptics
from daemon.intake.frame_gain import TURN_OF_SERIALEM_CODE, find_frame_mdoc_gain
from daemon.settings.config import Config
from daemon.state.ledger import DB_NAME, Ledger

SHAPE = (48, 80)  # not square: a turn that swaps the axes must be the right one
COUNTS = 30.0  # electrons per pixel and frame
FLAT = 1.3  # variance / mean of a sum whose gain was applied right: about 1
CORRECT_FLAGS = ("--pixel-size", "1", "--dose-per-frame", "1", "--no-hot-pixels")


def _gain(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.6, 1.4, size=SHAPE).astype(np.float32)


def _flatness(path: Path) -> float:
    """Variance / mean of a sum's inner pixels (Poisson counts: about 1)."""
    image = mrcfile.read(path).astype(np.float64)[4:-4, 4:-4]
    return float(image.var() / image.mean())


@pytest.mark.parametrize("code", range(8))
def test_each_serialem_rotation_flip_code_turns_the_gain_as_the_frames_were_turned(code):
    """motionwatch reads a DM4 reference and a TIFF frame with their rows reversed (as IMOD);
    SerialEM's code N on the raw arrays, seen so, is the table's -RotGain/-FlipGain."""
    raw = np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)
    turns, flip = TURN_OF_SERIALEM_CODE[code]
    read_gain = raw[::-1]
    read_frame = serialem_turn(raw, code)[::-1]
    np.testing.assert_array_equal(orient(read_gain, rotate_quarter_turns=turns, flip=flip),
                                  read_frame)


@pytest.mark.parametrize("kind, code", [("tif", c) for c in range(8)]
                         + [("mrc", 0), ("mrc", 1), ("mrc", 5)])
def test_correct_applies_the_gain_the_frame_mdoc_names_turned_by_the_frames_r_f(
        tmp_path, kind, code):
    movie = write_serialem_movie(tmp_path / "frames", f"m_{code}.{kind}", gain_raw=_gain(1),
                                 counts_per_frame=COUNTS, n_frames=6, code=code,
                                 rng=np.random.default_rng(code))
    assert main(["correct", str(movie), "--out", str(tmp_path / "out"), *CORRECT_FLAGS]) == 0
    assert _flatness(tmp_path / "out" / f"m_{code}.mrc") < FLAT
    record = json.loads((tmp_path / "out" / f"m_{code}.motion.json").read_text())
    own = record["frame_mdoc_gain"]
    assert Path(own["path"]) == tmp_path / "frames" / f"CountRef_m_{code}.dm4"
    assert (own["rotate_quarter_turns"], own["flip"]) == TURN_OF_SERIALEM_CODE[code]
    assert own["turn"] == f"r/f {code} in the frames' title"
    assert record["references"]["gain"]["path"] == own["path"]
    assert not record["gain_orientation"]["clearly_better"]  # the check agrees


def test_without_the_frame_mdoc_gain_or_with_another_gain_given_it_is_not_applied(tmp_path):
    """``--no-frame-mdoc-gain`` leaves the counts as they are (the pattern stays); ``--gain``
    wins over the frame mdoc, as MotionCor2's -Gain is the gain."""
    movie = write_serialem_movie(tmp_path / "frames", "m.tif", gain_raw=_gain(2),
                                 counts_per_frame=COUNTS, n_frames=6, code=1,
                                 rng=np.random.default_rng(2))
    assert main(["correct", str(movie), "--out", str(tmp_path / "off"), *CORRECT_FLAGS,
                 "--no-frame-mdoc-gain"]) == 0
    assert _flatness(tmp_path / "off" / "m.mrc") > 5 * FLAT
    flat = tmp_path / "ones.mrc"
    mrcfile.new(flat, data=np.ones((SHAPE[1], SHAPE[0]), np.float32)).close()
    assert main(["correct", str(movie), "--out", str(tmp_path / "given"), *CORRECT_FLAGS,
                 "--gain", str(flat)]) == 0
    record = json.loads((tmp_path / "given" / "m.motion.json").read_text())
    assert "frame_mdoc_gain" not in record
    assert record["references"]["gain"]["path"] == str(flat)


def test_correct_fails_a_movie_whose_named_gain_is_missing_with_one_line_and_goes_on(
        tmp_path, capsys):
    frames = tmp_path / "frames"
    lost = write_serialem_movie(frames, "lost.tif", gain_raw=_gain(3), counts_per_frame=COUNTS,
                                n_frames=4, code=0, rng=np.random.default_rng(3))
    (frames / "CountRef_lost.dm4").unlink()
    fine = write_serialem_movie(frames, "fine.tif", gain_raw=_gain(3), counts_per_frame=COUNTS,
                                n_frames=4, code=0, rng=np.random.default_rng(4))
    assert main(["correct", str(lost), str(fine), "--out", str(tmp_path / "out"),
                 *CORRECT_FLAGS]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "lost.tif" in line]
    assert any("names the gain reference CountRef_lost.dm4, not found in" in line
               and "--no-frame-mdoc-gain" in line for line in lines), lines
    assert _flatness(tmp_path / "out" / "fine.mrc") < FLAT


def test_the_reference_is_looked_for_beside_the_movie_then_in_the_folder_above(tmp_path):
    movie = write_serialem_movie(tmp_path / "session" / "frames", "m.tif", gain_raw=_gain(4),
                                 counts_per_frame=COUNTS, n_frames=2, code=0,
                                 rng=np.random.default_rng(5))
    gain = movie.parent / "CountRef_m.dm4"
    above = gain.rename(movie.parent.parent / gain.name)
    assert find_frame_mdoc_gain(movie).gain.path == str(above)
    above.unlink()
    missing = find_frame_mdoc_gain(movie)
    assert missing.gain is None and missing.named == "CountRef_m.dm4"
    assert str(movie.parent) in missing.missing_reason


def test_watch_corrects_each_movie_with_its_own_reference_and_a_restart_redoes_none(tmp_path):
    """A session whose reference was taken anew half-way: each movie gets the one its frame
    mdoc names (flat sums), RELION's motion STARs name each as polishing reads it, and the
    restart finds every movie done under the parameters it would use now, also one whose
    reference, and one whose frame mdoc, was deleted since."""
    config = frames_session(tmp_path)
    frames = config.watch_dir / "frames"
    first, second = _gain(5), _gain(6)
    for i in range(2):
        write_serialem_movie(frames, f"a_{i}.tif", gain_raw=first, counts_per_frame=COUNTS,
                             n_frames=4, code=3, rng=np.random.default_rng(10 + i),
                             gain_name="CountRef_a_0.dm4")
    write_serialem_movie(frames, "b_0.tif", gain_raw=second, counts_per_frame=COUNTS,
                         n_frames=4, code=3, rng=np.random.default_rng(12))
    optics = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    assert Service(config, listeners=[RelionListener(optics)], resolver=NoMetadata()).run() == 0
    out = config.out_dir / "frames"
    for stem, gain in (("a_0", "CountRef_a_0.dm4"), ("a_1", "CountRef_a_0.dm4"),
                       ("b_0", "CountRef_b_0.dm4")):
        assert _flatness(out / f"{stem}.mrc") < FLAT, stem
        record = json.loads((out / f"{stem}.motion.json").read_text())
        assert Path(record["frame_mdoc_gain"]["path"]).name == gain
    names = {stem: starfile.read(out / f"{stem}.star", always_dict=True)["general"][
        "rlnMicrographGainName"] for stem in ("a_0", "a_1", "b_0")}
    assert names["a_0"] == names["a_1"] != names["b_0"]
    for stem in ("a_0", "b_0"):  # each as polishing reads it: the movie's orientation
        written = mrcfile.read(config.out_dir / names[stem])
        applied = orient(np.asarray((first if stem == "a_0" else second)[::-1]),
                         rotate_quarter_turns=3)
        np.testing.assert_allclose(written, applied, rtol=1e-6)
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    assert [r.status for r in rows] == ["done"] * 3
    assert finished_under_other_parameters(rows, config.params) == []
    log_before = len(list(config.out_dir.glob("**/*.motion.json")))
    (frames / "CountRef_b_0.dm4").unlink()  # its row names it: not waited for, nor quarantined
    (frames / "a_1.tif.mdoc").unlink()  # nor corrected again without its gain
    log = RecordingLog()
    assert Service(config, resolver=NoMetadata(), logger=log).run() == 0
    assert not log.named("movie_waiting") and not log.named("movie_quarantined")
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        assert len(ledger.rows()) == 3 and all(r.attempts == 1 for r in ledger.rows())
    assert len(list(config.out_dir.glob("**/*.motion.json"))) == log_before


def test_watch_holds_a_movie_whose_named_reference_is_missing_then_quarantines_it(tmp_path):
    """A named reference not there is waited for (up to the incomplete grace); one that never
    comes quarantines its movie with the reason (the service goes on and exits 0), never a
    movie corrected without its gain."""
    config = frames_session(tmp_path, incomplete_grace_s=0.5, exit_when_idle_s=1.5)
    frames = config.watch_dir / "frames"
    write_serialem_movie(frames, "lost.tif", gain_raw=_gain(7), counts_per_frame=COUNTS,
                         n_frames=4, code=0, rng=np.random.default_rng(13))
    (frames / "CountRef_lost.dm4").unlink()
    write_serialem_movie(frames, "fine.tif", gain_raw=_gain(7), counts_per_frame=COUNTS,
                         n_frames=4, code=0, rng=np.random.default_rng(14))
    assert Service(config, resolver=NoMetadata()).run() == 0
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = {Path(r.key.path).name: r for r in ledger.rows()}
    assert rows["fine.tif"].status == "done"
    assert rows["lost.tif"].status == "quarantined"
    assert "names the gain reference CountRef_lost.dm4, not found" in rows["lost.tif"].error
    assert not (config.out_dir / "frames" / "lost.mrc").exists()
    # the row knows its file (a restart said ledger_inodes_filled "movies recorded before
    # rows kept their file's inode"), and a restart does not say the quarantine again (it
    # logged a new movie_quarantined at every start, "after 0.5 s" though nothing waited)
    assert rows["lost.tif"].inode is not None and rows["lost.tif"].content is not None
    log = RecordingLog()
    assert Service(config, resolver=NoMetadata(), logger=log).run() == 0
    assert not log.named("movie_quarantined") and not log.named("ledger_inodes_filled")


def test_a_named_reference_that_does_not_fit_quarantines_its_movies_not_the_service(tmp_path):
    """The configured references not fitting the first three movies stops the service as
    misconfigured (78); a frame mdoc's reference is the movie's own: its movies are
    quarantined, the service goes on."""
    config = frames_session(tmp_path)
    frames = config.watch_dir / "grid 1: good"  # its error names the folder before the file
    for i in range(3):
        write_serialem_movie(frames, f"m_{i}.tif", gain_raw=_gain(8), counts_per_frame=COUNTS,
                             n_frames=4, code=0, rng=np.random.default_rng(20 + i),
                             gain_name="CountRef_small.dm4")
    from dm4_writer import write_dm4

    write_dm4(frames / "CountRef_small.dm4", np.ones((16, 16), np.float32))
    assert Service(config, resolver=NoMetadata()).run() == 0
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        assert [r.status for r in ledger.rows()] == ["quarantined"] * 3


def test_an_eer_movie_gets_the_falcon_gain_its_frame_mdoc_names_as_it_is(tmp_path):
    """SerialEM saving EER copies the Falcon's ``*_EER_GainReference.gain`` beside the movie
    and names it: EER frames are never turned, so it fits as written (a multiplier, as
    MotionCor3 and RELION use a ``.gain``)."""
    import tifffile
    from eer_writer import write_eer

    gain = _gain(9)
    rng = np.random.default_rng(9)
    frames = tmp_path / "frames"
    frames.mkdir()
    write_eer(frames / "e.eer", [rng.random(SHAPE) < 0.3 / gain for _ in range(200)],
              shape_yx=SHAPE)
    tifffile.imwrite(frames / "20250419_040033_EER_GainReference.gain", gain)
    (frames / "e.eer.mdoc").write_text(
        "Voltage = 300\n\n[FrameSet = 0]\nGainReference = 20250419_040033_EER_GainReference.gain"
        "\nTiltAngle = 0\nNumSubFrames = 200\nDateTime = 19-Apr-25  04:01:00\n")
    assert main(["correct", str(frames / "e.eer"), "--out", str(tmp_path / "out"),
                 *CORRECT_FLAGS, "--eer-group", "20"]) == 0
    assert _flatness(tmp_path / "out" / "e.mrc") < FLAT
    own = json.loads((tmp_path / "out" / "e.motion.json").read_text())["frame_mdoc_gain"]
    assert (own["rotate_quarter_turns"], own["flip"]) == (0, "none")
    assert own["turn"] == "as written (not a DM reference)"


def test_the_eer_gain_exported_for_relion_is_the_own_gain_under_the_configured_eer_rule(
        tmp_path):
    """With ``--eer-gain reciprocal`` and no gain file configured, the Falcon gain a frame mdoc
    names is applied as ``mean / gain``: the ``.gain`` RELION's polishing applies as it is must
    be that too (it was written under the default rule, the file itself)."""
    import tifffile
    from eer_writer import write_eer

    from correction.gain import load_gain_reference, reference_for_movie

    config = frames_session(tmp_path)
    config = dataclasses.replace(config, params=dataclasses.replace(
        config.params, gain=dataclasses.replace(config.params.gain, eer_gain="reciprocal"),
        read=dataclasses.replace(config.params.read, eer_group_frames=20)))
    frames = config.watch_dir / "frames"
    frames.mkdir()
    counts = _gain(11)  # a flat-field count image, as the reciprocal rule takes it
    rng = np.random.default_rng(11)
    write_eer(frames / "e.eer", [rng.random(SHAPE) < 0.01 * counts for _ in range(100)],
              shape_yx=SHAPE)
    tifffile.imwrite(frames / "E_EER_GainReference.gain", counts)
    (frames / "e.eer.mdoc").write_text(
        "Voltage = 300\n\n[FrameSet = 0]\nGainReference = E_EER_GainReference.gain\n"
        "TiltAngle = 0\nNumSubFrames = 100\nDateTime = 19-Apr-25  04:01:00\n")
    optics = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    assert Service(config, listeners=[RelionListener(optics)], resolver=NoMetadata()).run() == 0
    name = starfile.read(config.out_dir / "frames" / "e.star", always_dict=True)["general"][
        "rlnMicrographGainName"]
    exported = tifffile.imread(config.out_dir / name)
    gain_params = dataclasses.replace(config.params.gain,
                                      gain_path=frames / "E_EER_GainReference.gain")
    applied = reference_for_movie(load_gain_reference(gain_params), gain_params, is_eer=True)
    np.testing.assert_allclose(exported, applied.gain, rtol=1e-6)
    assert not np.allclose(exported, counts, rtol=0.01)


def test_a_movie_whose_frame_mdoc_comes_late_waits_for_it_where_its_folder_names_gains(
        tmp_path):
    """A share may bring a frame mdoc after its movie. In a folder whose movies took their gain
    from their frame mdocs, a movie without one yet is not corrected without a gain: it waits,
    and is corrected with the gain once its frame mdoc comes."""
    from service_run import more_heartbeats, running

    config = frames_session(tmp_path, incomplete_grace_s=60.0, exit_when_idle_s=None)
    frames = config.watch_dir / "frames"
    write_serialem_movie(frames, "a.tif", gain_raw=_gain(10), counts_per_frame=COUNTS,
                         n_frames=4, code=2, rng=np.random.default_rng(30))
    log = RecordingLog()
    with running(Service(config, resolver=NoMetadata(), logger=log)) as wait_for:
        wait_for(lambda: (config.out_dir / "frames" / "a.motion.json").exists())
        late = write_serialem_movie(frames, "b.tif", gain_raw=_gain(10),
                                    counts_per_frame=COUNTS, n_frames=4, code=2,
                                    rng=np.random.default_rng(31), gain_name="CountRef_a.dm4")
        mdoc = late.with_name("b.tif.mdoc")
        held = mdoc.rename(tmp_path / mdoc.name)
        more_heartbeats(log, wait_for, n=5)
        assert not (config.out_dir / "frames" / "b.motion.json").exists()
        assert any(e == "movie_waiting" and "no frame mdoc yet" in f.get("reason", "")
                   for _, e, f in log.events)
        held.rename(mdoc)
        wait_for(lambda: (config.out_dir / "frames" / "b.motion.json").exists())
    assert _flatness(config.out_dir / "frames" / "b.mrc") < FLAT


def test_a_session_folder_renamed_between_runs_is_not_corrected_again(tmp_path):
    """The reference lies in the renamed folder: the movies' keys know it by its file name, so
    the rows follow the files and no later start corrects anything again (with its full path
    in the key, the start after the one that followed the rename corrected every movie
    again, under "new parameters")."""
    import os

    config = frames_session(tmp_path)
    for i in range(2):
        write_serialem_movie(config.watch_dir / "grid1", f"m_{i}.tif", gain_raw=_gain(11),
                             counts_per_frame=COUNTS, n_frames=4, code=1,
                             rng=np.random.default_rng(40 + i), gain_name="CountRef_m_0.dm4")
    optics = RelionOptics(spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    assert Service(config, listeners=[RelionListener(optics)], resolver=NoMetadata()).run() == 0
    os.rename(config.watch_dir / "grid1", config.watch_dir / "grid1_good")
    for _ in range(2):  # the rows follow the files, then the next start finds them as they are
        assert Service(config, listeners=[RelionListener(optics)],
                       resolver=NoMetadata()).run() == 0
    stars = [p for p in config.out_dir.glob("**/m_*.star")]
    assert len(stars) == 2
    for star in stars:  # RELION's gain still named (the recorded path is gone with its folder)
        name = starfile.read(star, always_dict=True)["general"]["rlnMicrographGainName"]
        assert (config.out_dir / name).is_file(), star
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    assert sorted((Path(r.key.path).parent.name, r.status, r.attempts) for r in rows) == [
        ("grid1_good", "done", 1)] * 2


def test_the_reference_name_is_read_from_the_frameset_section_whatever_path_it_carries():
    """A real K3 frame mdoc (teamtomo's ``frame_set_single.mdoc``), then its value as a
    Windows path, and the key outside the ``[FrameSet = 0]`` section."""
    from daemon.intake.frame_gain import gain_reference_name

    text = (Path(__file__).parents[1] / "data" / "mdoc" / "frame_set_single.mdoc").read_text()
    assert gain_reference_name(text) == "SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4"
    windows = text.replace("GainReference = ", "GainReference = X:\\session\\frames\\")
    assert gain_reference_name(windows) == "SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4"
    assert gain_reference_name(text.replace("GainReference", "Gain")) is None
    outside = "GainReference = CountRef_a.dm4\n\n[FrameSet = 0]\nTiltAngle = 0\n"
    assert gain_reference_name(outside) is None  # SerialEM writes it in the section
    assert gain_reference_name("[ZValue = 0]\nGainReference = CountRef_a.dm4\n") is None


def _admitted_then_stopped(config: Config, movie: Path) -> None:
    """The ledger as a run without a gain setting leaves it when stopped before correcting
    ``movie``: pending, keyed and stored with the gain its frame mdoc names."""
    from daemon.events import MovieKey, movie_fingerprint
    from daemon.intake.content import content_fingerprint
    from daemon.state.codec import StoredMetadata, metadata_to_json

    found = find_frame_mdoc_gain(movie)
    stat = movie.stat()
    key = MovieKey(str(movie), stat.st_size, stat.st_mtime_ns,
                   movie_fingerprint(config.params, None, found.gain))
    stored = StoredMetadata(None, {"frame_mdoc_gain": found.gain.to_json()}, {}, 4, movie.stem,
                            found.gain)
    with Ledger(config.state_dir / DB_NAME) as ledger:
        ledger.add(key, metadata=metadata_to_json(stored), inode=(stat.st_dev, stat.st_ino),
                   content=content_fingerprint(movie))


@pytest.mark.parametrize("setting", ["gain", "off"])
def test_a_movie_admitted_with_its_frame_mdoc_gain_is_corrected_once_under_new_settings(
        tmp_path, setting):
    """Admitted by a run without a gain setting and stopped before its correction; restarted
    with ``--gain`` (or ``--no-frame-mdoc-gain``): the row keyed with the frame mdoc's gain
    no longer stands. It was corrected under it as well as under the new settings, both at
    once into the same outputs."""
    config = frames_session(tmp_path)
    movie = write_serialem_movie(config.watch_dir / "frames", "m.tif", gain_raw=_gain(12),
                                 counts_per_frame=COUNTS, n_frames=4, code=1,
                                 rng=np.random.default_rng(50))
    _admitted_then_stopped(config, movie)
    ones = tmp_path / "ones.mrc"
    mrcfile.new(ones, data=np.ones((SHAPE[1], SHAPE[0]), np.float32)).close()
    if setting == "gain":
        gain = dataclasses.replace(config.params.gain, gain_path=ones)
        config = dataclasses.replace(config, params=dataclasses.replace(config.params, gain=gain))
    else:
        config = dataclasses.replace(config, frame_mdoc_gain=False)
    assert Service(config, resolver=NoMetadata()).run() == 0
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    assert [(r.status, r.attempts) for r in rows] == [("done", 1)]
    record = json.loads((config.out_dir / "frames" / "m.motion.json").read_text())
    assert "frame_mdoc_gain" not in record
    assert (record["references"]["gain"] or {}).get("path") == (
        str(ones) if setting == "gain" else None)


def test_a_movie_whose_reference_is_gone_after_its_admission_is_quarantined_with_the_reason(
        tmp_path):
    """Its worker could not read the gain: taken for trouble outside the movie, all correction
    paused and the movie retried for ever."""
    config = frames_session(tmp_path, incomplete_grace_s=0.5)  # admission's own wait for the file
    movie = write_serialem_movie(config.watch_dir / "frames", "m.tif", gain_raw=_gain(13),
                                 counts_per_frame=COUNTS, n_frames=4, code=0,
                                 rng=np.random.default_rng(51))
    _admitted_then_stopped(config, movie)
    (movie.parent / "CountRef_m.dm4").unlink()
    run = Service(config, resolver=NoMetadata())
    guard = threading.Timer(30.0, run.request_stop, args=("test guard",))
    guard.start()
    try:
        assert run.run() == 0
    finally:
        guard.cancel()
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        rows = ledger.rows()
    assert [r.status for r in rows] == ["quarantined"]
    assert "CountRef_m.dm4, is gone since the movie was admitted" in rows[0].error


def test_three_movies_without_a_pixel_size_stop_the_service_though_their_gain_is_their_own(
        tmp_path):
    """A movie's own gain makes a misfit of that gain the movie's, not the settings' (above);
    a missing pixel size is still the settings' (78)."""
    config = frames_session(tmp_path)
    config = dataclasses.replace(config, params=dataclasses.replace(
        config.params, read=ReadParams()))
    for i in range(3):
        write_serialem_movie(config.watch_dir / "frames", f"m_{i}.tif", gain_raw=_gain(14),
                             counts_per_frame=COUNTS, n_frames=4, code=0,
                             rng=np.random.default_rng(60 + i), gain_name="CountRef_m_0.dm4")
    assert Service(config, resolver=NoMetadata()).run() == 78


def test_an_installation_without_the_dm4_extra_stops_saying_so_not_blaming_the_settings(
        tmp_path, monkeypatch):
    """Nothing was configured: the first three movies' DM4 references cannot be read by this
    installation (ncempy, the ``dm4`` extra, missing in the worker processes). The service
    stops (78), saying to install the extra, not to fix --gain and the like."""
    shadow = tmp_path / "no_ncempy" / "ncempy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.syspath_prepend(str(shadow.parent))  # a spawned worker takes the parent's path
    config = frames_session(tmp_path)
    for i in range(3):
        write_serialem_movie(config.watch_dir / "frames", f"m_{i}.tif", gain_raw=_gain(17),
                             counts_per_frame=COUNTS, n_frames=4, code=0,
                             rng=np.random.default_rng(80 + i), gain_name="CountRef_m_0.dm4")
    log = RecordingLog()
    service = Service(config, resolver=NoMetadata(), logger=log)
    assert service.run() == 78
    (problem,) = service.config_error.problems
    assert str(problem).startswith("this installation cannot read the gain references of the "
                                   "first 3 movies:"), problem
    (invalid,) = log.named("config_invalid")
    assert invalid["note"].startswith("install the dm4 extra"), invalid


def test_without_the_dm4_extra_a_service_that_corrected_a_movie_first_stops_too(
        tmp_path, monkeypatch):
    """A gain-normalised test exposure corrected first: the DM4 references that follow are
    still this installation's trouble, met by every such movie. Before, each was quarantined
    alone (a retry each, after installing the extra); now the service stops saying so, the
    movies failed, not quarantined (retried at the restart)."""
    shadow = tmp_path / "no_ncempy" / "ncempy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.syspath_prepend(str(shadow.parent))  # a spawned worker takes the parent's path
    config = frames_session(tmp_path, exit_when_idle_s=5.0)
    mrcfile.new(config.watch_dir / "test_exposure.mrc", data=np.random.default_rng(1).poisson(
        20.0, size=(4, *SHAPE)).astype(np.int16)).close()
    service = Service(config, resolver=NoMetadata())
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(service.run()))
    runner.start()
    deadline = time.monotonic() + 60
    while not (config.out_dir / "test_exposure.mrc").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(3):  # the session's movies come after the test exposure was corrected
        write_serialem_movie(config.watch_dir / "frames", f"m_{i}.tif", gain_raw=_gain(18),
                             counts_per_frame=COUNTS, n_frames=4, code=0,
                             rng=np.random.default_rng(90 + i), gain_name="CountRef_m_0.dm4")
    runner.join(timeout=120)
    assert status == [78]
    with Ledger(config.state_dir / DB_NAME, read_only=True) as ledger:
        statuses = {Path(r.key.path).name: r.status for r in ledger.rows()}
    (problem,) = service.config_error.problems
    assert str(problem).startswith("this installation cannot read the gain references of 3 "
                                   "movies:"), (problem, statuses)
    assert statuses == {"test_exposure.mrc": "done", "m_0.tif": "failed", "m_1.tif": "failed",
                        "m_2.tif": "failed"}


def test_a_frame_mdoc_still_being_written_is_not_yet_one_without_a_gain(tmp_path):
    movie = write_serialem_movie(tmp_path, "m.tif", gain_raw=_gain(16), counts_per_frame=1.0,
                                 n_frames=2, code=0, rng=np.random.default_rng(71))
    mdoc = movie.with_name("m.tif.mdoc")
    full = mdoc.read_text()
    mdoc.write_text(full[:full.index("[FrameSet")])
    assert not find_frame_mdoc_gain(movie).has_mdoc
    mdoc.write_text(full[:full.index("GainReference")])
    assert not find_frame_mdoc_gain(movie).has_mdoc
    mdoc.write_text("".join(line for line in full.splitlines(keepends=True)
                            if not line.startswith("GainReference")))
    lookup = find_frame_mdoc_gain(movie)
    assert lookup.has_mdoc and lookup.gain is None and lookup.named is None


def test_a_configured_dark_or_gain_turn_without_a_gain(tmp_path):
    """A dark belongs with a configured gain and its turn (turned with the frame mdoc's gain
    it was silently wrong where the shape still fitted): with one, no frame mdoc's gain is
    applied. ``--gain-rotate``/``--gain-flip`` turn a configured gain only: the frame mdoc's
    comes with its own turn."""
    movie = write_serialem_movie(tmp_path / "frames", "m.tif", gain_raw=_gain(17),
                                 counts_per_frame=COUNTS, n_frames=4, code=1,
                                 rng=np.random.default_rng(72))
    dark = tmp_path / "dark.mrc"
    mrcfile.new(dark, data=np.zeros((SHAPE[1], SHAPE[0]), np.float32)).close()
    assert main(["correct", str(movie), "--out", str(tmp_path / "dark"), *CORRECT_FLAGS,
                 "--dark", str(dark)]) == 0
    record = json.loads((tmp_path / "dark" / "m.motion.json").read_text())
    assert "frame_mdoc_gain" not in record and record["references"]["gain"] is None
    assert main(["correct", str(movie), "--out", str(tmp_path / "turned"), *CORRECT_FLAGS,
                 "--gain-rotate", "2", "--gain-flip", "updown"]) == 0
    assert _flatness(tmp_path / "turned" / "m.mrc") < FLAT
