"""``x.mrc`` and ``x.tif`` in one folder never write the same output names (science issue, item
4): the first keeps the plain stem, the other gets its extension, and the choice survives a
restart."""

from __future__ import annotations

import json
import os

import numpy as np
import tifffile

from correction.params import AlignParams, CorrectionParams, DoseParams, ReadParams

from daemon.engine.service import Service
from daemon.handoff.listener import build_handoff_listener
from daemon.settings.config import Config
from daemon.simulation.movies import write_movie_progressively


def _run(watch, out, *, handoff=False, log=None, dose_per_frame_e_A2=1.0):
    params = CorrectionParams(align=AlignParams(patches_x=1, patches_y=1),
                              dose=DoseParams(dose_per_frame_e_A2=dose_per_frame_e_A2),
                              read=ReadParams(pixel_size_A=1.1))  # TIFFs carry none
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on", log_level="warning",
                    options={"handoff": "on" if handoff else "off"})
    listeners = [build_handoff_listener(config, logger=log)] if handoff else []
    assert Service(config, listeners=listeners).run() == 0


def _write(path, rng, electrons_per_px: float) -> None:
    """A 4-frame 96 x 96 MRC movie of Poisson counts at ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_movie_progressively(path, rng.poisson(electrons_per_px, (4, 96, 96)).astype(np.int16),
                              pixel_size_A=1.1, frame_interval_s=0)


def _first_movie(tmp_path, name: str, seed: int, electrons_per_px: float):
    """``watch/<name>`` written and corrected with the hand-off on; ``(watch, out, rng)``."""
    watch, out = tmp_path / "w", tmp_path / "out"
    out.mkdir()
    rng = np.random.default_rng(seed)
    _write(watch / name, rng, electrons_per_px)
    _run(watch, out, handoff=True)
    return watch, out, rng


def test_same_stem_with_two_extensions_writes_two_output_sets_and_keeps_them_on_restart(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(0)
    mrc_frames = rng.poisson(2.0, (4, 96, 96)).astype(np.int16)
    tif_frames = rng.poisson(2.0, (4, 96, 96)).astype(np.uint8)
    write_movie_progressively(watch / "x.mrc", mrc_frames, pixel_size_A=1.1, frame_interval_s=0)
    _run(watch, out, handoff=True)
    with tifffile.TiffWriter(watch / "x.tif") as tif:  # one page per frame, as detectors write
        for frame in tif_frames:
            tif.write(frame, photometric="minisblack", metadata=None)
    from recording_log import RecordingLog

    log = RecordingLog()
    _run(watch, out, handoff=True, log=log)
    assert [f["name"] for _, e, f in log.events if e == "warp_name_reused"] == ["x"]
    first = json.loads((out / "x.motion.json").read_text())
    second = json.loads((out / "x_tif.motion.json").read_text())
    assert first["movie"].endswith("x.mrc") and second["movie"].endswith("x.tif")
    assert (out / "x_tif_DW.mrc").is_file() and (out / "x_DW.mrc").is_file()
    # the RELION motion STARs follow the output names; Warp tells movies apart by file name
    # without extension only, so its layout of x is the movie corrected last, x.tif's
    for stem in ("x", "x_tif"):
        assert (out / f"{stem}.star").is_file()
    assert os.path.samefile(out / "average" / "x.mrc", out / "x_tif_DW.mrc")
    assert os.path.samefile(out / "average" / "even" / "x.mrc", out / "x_tif_EVN.mrc")
    assert (out / "x.xml").is_file() and not (out / "x_tif.xml").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("x*")}
    _run(watch, out)  # a restart keeps both names and redoes nothing
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("x*")} == before


def test_a_new_grid_in_the_folder_of_a_renamed_one_has_the_warp_names_its_mdoc_gives(tmp_path):
    """The operator renames the finished grid's folder (grid1 -> grid1_done) and SerialEM
    writes the next grid into a new grid1, with the same movie names. Their outputs take the
    stem ``x_mrc`` (the old movie keeps ``x`` in OUT/grid1), and the Warp layout followed the
    stem: ``average/x.mrc`` and ``x.xml``, which Warp finds by the mdoc's file name, stayed the
    old grid's, so Warp would have built the new series from the old grid's images. The name
    is the new movie's now, and the log says the old one's was replaced."""
    from recording_log import RecordingLog

    watch, out, rng = _first_movie(tmp_path, "grid1/x.mrc", 5, 2.0)
    (watch / "grid1").rename(watch / "grid1_done")
    (watch / "grid1").mkdir()
    _write(watch / "grid1" / "x.mrc", rng, 9.0)
    log = RecordingLog()
    _run(watch, out, handoff=True, log=log)
    new = json.loads((out / "grid1" / "x_mrc.motion.json").read_text())
    assert new["movie"] == str(watch / "grid1" / "x.mrc")
    assert os.path.samefile(out / "grid1" / "average" / "x.mrc", out / "grid1" / "x_mrc_DW.mrc")
    assert os.path.samefile(out / "grid1" / "average" / "odd" / "x.mrc",
                            out / "grid1" / "x_mrc_ODD.mrc")
    xml = (out / "grid1" / "x.xml").read_text()
    assert f'DataDirectory="{watch / "grid1"}"' in xml
    assert not (out / "grid1" / "x_mrc.xml").exists()
    assert not (out / "grid1" / "average" / "x_mrc.mrc").exists()
    (reused,) = [f for _, e, f in log.events if e == "warp_name_reused"]
    assert reused["name"] == "x" and reused["movie"] == str(watch / "grid1" / "x.mrc")

    # an output folder as the release before wrote it (the layout by output stem, so x still
    # the old grid's): a restart puts the new movie's layout in place
    grid = out / "grid1"
    for folder in (grid / "average", grid / "average" / "even", grid / "average" / "odd"):
        (folder / "x.mrc").unlink()
    os.link(grid / "x_DW.mrc", grid / "average" / "x.mrc")
    os.link(grid / "x_mrc_DW.mrc", grid / "average" / "x_mrc.mrc")
    (grid / "x.xml").write_text(f'<Movie DataDirectory="{watch / "grid1_done"}" />\n')
    (grid / "x_mrc.xml").write_text(f'<Movie DataDirectory="{watch / "grid1"}" />\n')
    _run(watch, out, handoff=True)
    assert os.path.samefile(grid / "average" / "x.mrc", grid / "x_mrc_DW.mrc")
    assert f'DataDirectory="{watch / "grid1"}"' in (grid / "x.xml").read_text()
    assert not (grid / "x_mrc.xml").exists() and not (grid / "average" / "x_mrc.mrc").exists()
    assert os.path.samefile(grid / "average" / "odd" / "x.mrc", grid / "x_mrc_ODD.mrc")
    assert (grid / "x_DW.mrc").is_file()  # the old grid's own sums stay


def test_movies_named_like_the_output_folders_own_files_never_replace_them(tmp_path):
    """A movie ``motionwatch_gain.mrc`` wrote its sum over the RELION gain that every motion
    STAR names (polishing would have divided by a micrograph), and ``corrected_micrographs.mrc``
    its motion STAR over the folder's micrographs STAR. They get their extension in their
    stems, as ``x_DW.mrc`` beside ``x.mrc`` does."""
    import mrcfile
    import starfile
    from recording_log import RecordingLog

    from correction.params import GainParams

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(6)
    for name in ("m1.mrc", "motionwatch_gain.mrc", "corrected_micrographs.mrc"):
        _write(watch / name, rng, 2.0)
    gain = tmp_path / "gain_ref.mrc"
    with mrcfile.new(gain) as mrc:
        mrc.set_data(np.full((96, 96), 1.25, np.float32))
    params = CorrectionParams(align=AlignParams(patches_x=1, patches_y=1),
                              dose=DoseParams(dose_per_frame_e_A2=1.0),
                              gain=GainParams(gain_path=gain))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.5, polling="on", log_level="warning",
                    options={"handoff": "on"})
    log = RecordingLog()
    assert Service(config, listeners=[build_handoff_listener(config)], logger=log).run() == 0
    notes = sorted(f["note"] for _, e, f in log.events if e == "output_stem_changed")
    assert notes == ["corrected_micrographs.* names a file of the output folder itself: this "
                     "one's outputs are named corrected_micrographs_mrc.*",
                     "motionwatch_gain.* names a file of the output folder itself: this one's "
                     "outputs are named motionwatch_gain_mrc.*"]
    with mrcfile.open(out / "motionwatch_gain.mrc") as mrc:
        np.testing.assert_allclose(mrc.data, 1.25)  # the gain (multiplicative), not a sum
    for stem in ("motionwatch_gain_mrc", "corrected_micrographs_mrc"):
        assert json.loads((out / f"{stem}.motion.json").read_text())["movie"].endswith(
            stem.replace("_mrc", ".mrc"))
    blocks = starfile.read(out / "corrected_micrographs.star", always_dict=True)
    assert sorted(blocks["micrographs"]["rlnMicrographMetadata"]) == [
        "corrected_micrographs_mrc.star", "m1.star", "motionwatch_gain_mrc.star"]


def test_a_watched_folder_named_average_keeps_its_sums_from_the_warp_layout(tmp_path):
    """``session/average/x.mrc`` has its sum in ``OUT/average/x.mrc``, the name of Warp's
    average of ``session/x.mrc``: the layout's link replaced that sum (its record and the STAR
    still named it). The layout is refused, said in the log, and the sum stays."""
    import mrcfile
    from recording_log import RecordingLog

    watch, out, rng = _first_movie(tmp_path, "average/x.mrc", 7, 40.0)
    with mrcfile.open(out / "average" / "x.mrc") as mrc:
        own_sum = mrc.data.copy()
    _write(watch / "x.mrc", rng, 2.0)
    log = RecordingLog()
    _run(watch, out, handoff=True, log=log)
    assert (out / "x_DW.mrc").is_file()
    with mrcfile.open(out / "average" / "x.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, own_sum)
    assert not (out / "x.xml").exists()
    (refused,) = [f for _, e, f in log.events
                  if e == "handoff_write_failed" and f["step"] == "warp_layout"]
    assert "a watched folder named average" in refused["error"]


def test_a_watched_folder_named_average_corrected_second_takes_warps_average_from_no_one(
        tmp_path):
    """``session/x.mrc`` first (its Warp link ``OUT/average/x.mrc``), then
    ``session/average/x.mrc``, whose sum is written at that name: ``x.xml`` stayed, and Warp
    read the other movie's plain sum as x's average. The layout is taken out, and said."""
    import mrcfile
    from recording_log import RecordingLog

    watch, out, rng = _first_movie(tmp_path, "x.mrc", 8, 2.0)
    assert (out / "x.xml").is_file()
    (watch / "average").mkdir()
    _write(watch / "average" / "x.mrc", rng, 40.0)
    log = RecordingLog()
    _run(watch, out, handoff=True, log=log)
    with mrcfile.open(out / "average" / "x.mrc") as mrc:
        assert mrc.data.mean() > 100  # its own sum (40 e/px per frame), not x's
    assert not (out / "x.xml").exists()
    assert [f["xml"] for _, e, f in log.events if e == "warp_layout_removed"] == [
        str(out / "x.xml")]
    star = (out / "x.star").stat().st_mtime_ns
    restart = RecordingLog()
    _run(watch, out, handoff=True, log=restart)  # a restart does not make it again over that sum
    assert not (out / "x.xml").exists()
    assert (out / "x.star").stat().st_mtime_ns == star  # nor write x's files again
    assert not [e for _, e, _ in restart.events
                if e in ("warp_name_reused", "handoff_write_failed")]


def test_a_movie_corrected_again_keeps_its_warp_name_without_a_warning(tmp_path):
    """Corrected again under another dose, a movie has new sums: its Warp average was no longer
    the same file, and every movie said ``warp_name_reused`` (another movie's name taken)."""
    from recording_log import RecordingLog

    watch, out, _ = _first_movie(tmp_path, "x.mrc", 9, 2.0)
    log = RecordingLog()
    _run(watch, out, handoff=True, log=log, dose_per_frame_e_A2=2.0)
    assert json.loads((out / "x.motion.json").read_text())["dose"]["per_frame_e_A2"] == [2.0] * 4
    assert os.path.samefile(out / "average" / "x.mrc", out / "x_DW.mrc")
    assert not [e for _, e, _ in log.events if e == "warp_name_reused"]


def test_a_restart_does_not_reread_movies_the_ledger_already_found_complete(tmp_path,
                                                                           monkeypatch):
    """Work not done twice: a corrected movie, unchanged on disk, is not validated again (its
    last page or header re-read) at the next start; a new movie still is."""
    import daemon.engine.admission as admission

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    frames = np.random.default_rng(1).poisson(2.0, (4, 96, 96)).astype(np.int16)
    write_movie_progressively(watch / "a.mrc", frames, pixel_size_A=1.1, frame_interval_s=0)
    _run(watch, out)
    write_movie_progressively(watch / "b.mrc", frames, pixel_size_A=1.1, frame_interval_s=0)
    validated = []
    real = admission.validate
    monkeypatch.setattr(admission, "validate",
                        lambda path, **kw: validated.append(path.name) or real(path, **kw))
    _run(watch, out)
    assert validated == ["b.mrc"]
    assert json.loads((out / "b.motion.json").read_text())["frames"] == 4


def test_a_movie_named_like_another_movies_dose_weighted_sum_writes_its_own_outputs(tmp_path):
    """``x``'s dose-weighted sum is ``x_DW.mrc``, the name of ``x_DW``'s plain sum: each record
    must name images of its own movie, before and after a restart."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(2)
    for name in ("x.mrc", "x_DW.mrc"):
        _write(watch / name, rng, 2.0)
    _run(watch, out)
    records = [json.loads(p.read_text()) for p in out.glob("*.motion.json")]
    images = [os.path.basename(r["outputs"][k]) for r in records
              for k in ("sum", "dw", "even", "odd")]
    assert len(records) == 2 and len(set(images)) == 8, images
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("x*")}
    _run(watch, out)  # a restart keeps the names and redoes nothing
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("x*")} == before


def test_a_movie_whose_stem_clashes_with_a_record_the_ledger_does_not_know_takes_the_next(tmp_path):
    """`motionwatch correct x_DW.mrc --out OUT` into the daemon's folder, then the daemon meets
    x.mrc: its plain stem would replace x_DW's sum with its own dose-weighted sum; the library
    refuses that (OutputClashError) and the daemon quarantined a good movie. It takes x_mrc."""
    from daemon.commands.cli import main

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    rng = np.random.default_rng(3)
    other = tmp_path / "elsewhere" / "x_DW.mrc"
    other.parent.mkdir()
    for path in (other, watch / "x.mrc"):
        write_movie_progressively(path, rng.poisson(2.0, (4, 96, 96)).astype(np.int16),
                                  pixel_size_A=1.1, frame_interval_s=0)
    assert main(["correct", str(other), "--out", str(out), "--dose-per-frame", "1",
                 "--patches", "1", "1"]) == 0
    _run(watch, out)
    assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(watch / "x.mrc")
    assert json.loads((out / "x_DW.motion.json").read_text())["movie"] == str(other)


def test_the_daemon_never_writes_over_outputs_correct_gave_another_movie_of_the_name(tmp_path):
    """`correct grid1/x.mrc grid2/x.mrc --out OUT` gives them x and x_mrc; a daemon then
    watching grid2 into OUT gave grid2/x.mrc the stem x, replacing grid1's outputs with no
    word, and corrected it a second time. The record under x names grid1/x.mrc, which is still
    there: grid2/x.mrc takes the next stem, x_mrc, where its own outputs already are."""
    from daemon.commands.cli import main

    grid1, grid2, out = tmp_path / "grid1", tmp_path / "grid2", tmp_path / "out"
    for folder in (grid1, grid2, out):
        folder.mkdir()
    rng = np.random.default_rng(5)
    for path in (grid1 / "x.mrc", grid2 / "x.mrc"):
        write_movie_progressively(path, rng.poisson(2.0, (4, 96, 96)).astype(np.int16),
                                  pixel_size_A=1.1, frame_interval_s=0)
    assert main(["correct", str(grid1 / "x.mrc"), str(grid2 / "x.mrc"), "--out", str(out),
                 "--dose-per-frame", "1", "--patches", "1", "1"]) == 0
    _run(grid2, out)
    assert json.loads((out / "x.motion.json").read_text())["movie"] == str(grid1 / "x.mrc")
    assert json.loads((out / "x_mrc.motion.json").read_text())["movie"] == str(grid2 / "x.mrc")
