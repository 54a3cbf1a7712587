"""EER tilt series the way SerialEM writes them: frame doses per RAW frame, summed per fraction.

A SerialEM EER session writes ``<movie>.eer`` plus ``<movie>.eer.mdoc`` whose ``[FrameSet = 0]``
gives ``NumSubFrames`` and ``FrameDosesAndNumber`` over the raw EER frames, and a series mdoc
listing the tilts. The correction reads an EER as fractions of ``--eer-group`` raw frames, so
each fraction's dose is the sum of the doses of exactly the raw frames it holds (truth computed
by hand below from the written FrameDosesAndNumber). The daemon needs no dose flag when every
movie's dose comes from an mdoc or the EER header; a movie without any dose is quarantined
with a clear reason.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from eer_writer import write_eer

from correction.dose import NO_DOSE_REASON, frame_doses_e_A2
from correction.errors import ParameterError
from correction.params import CorrectionParams, DoseParams, ReadParams
from daemon.engine.service import Service
from daemon.series.options import resolver_from_config
from daemon.settings.config import Config

SHAPE = (128, 128)
PIXEL_A = 1.1
GROUP = 12


# --- the dose arithmetic ------------------------------------------------------------------

def test_raw_frame_doses_are_summed_into_exactly_the_raw_frames_of_each_fraction():
    # FrameDosesAndNumber = "0.02 60  0.03 65": 125 raw frames in groups of 12 = 10 fractions,
    # the 5 left over (< half a group) join the last: 12 x 9 + 17 raw frames.
    raw = (0.02,) * 60 + (0.03,) * 65
    dp = DoseParams(frame_doses_e_A2=raw, frame_doses_per="raw_frame")
    doses = frame_doses_e_A2(dp, 10, raw_frames_per_frame=(12,) * 9 + (17,))
    expected = [0.24] * 5 + [0.36] * 4 + [17 * 0.03]
    np.testing.assert_allclose(doses, expected, rtol=1e-12)
    assert doses.sum() == pytest.approx(60 * 0.02 + 65 * 0.03)


def test_raw_frame_doses_that_do_not_fill_the_fractions_are_a_clear_error():
    dp = DoseParams(frame_doses_e_A2=(0.025,) * 120, frame_doses_per="raw_frame")
    with pytest.raises(ParameterError, match="120 raw-frame doses, but the movie's 10 frames "
                                             "hold 100 raw frames"):
        frame_doses_e_A2(dp, 10, raw_frames_per_frame=(10,) * 10)


def test_a_dose_params_without_dose_loads_but_cannot_weight_a_movie():
    dp = DoseParams()
    assert not dp.known
    with pytest.raises(ParameterError, match="no dose: give --dose-per-frame/--total-dose or a "
                                             "SerialEM mdoc"):
        frame_doses_e_A2(dp, 4)
    with pytest.raises(ParameterError, match="at most one of"):
        DoseParams(dose_per_frame_e_A2=1.0, total_dose_e_A2=4.0)


def test_the_params_fingerprint_changes_only_with_the_reading_conventions():
    """Options added since hash as before they existed; a release that reads files otherwise
    (READING_CONVENTIONS) keys every movie anew, so an upgraded daemon redoes the movies an
    earlier release read the other way instead of mixing two readings in one series."""
    from correction.params import READING_CONVENTIONS

    # values computed with the parameter classes before frame_doses_per existed
    old = {CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.2)): "79cb009e8e6590e3",
           CorrectionParams(dose=DoseParams(frame_doses_e_A2=(1.0, 2.0),
                                            pre_exposure_e_A2=3.0)): "62350d02d6ec14d7"}
    for params, before in old.items():
        assert params.fingerprint(reading_conventions=1) == before
        assert READING_CONVENTIONS > 1 and params.fingerprint() != before


# --- SerialEM EER sessions through the real daemon -------------------------------------------

def _eer(path: Path, n_raw: int, rng: np.random.Generator, metadata=()) -> Path:
    n = SHAPE[0] * SHAPE[1]
    frames = [np.flatnonzero(rng.random(n) < 0.05) for _ in range(n_raw)]
    return write_eer(path, frames, shape_yx=SHAPE, metadata=metadata)


def _frame_mdoc(movie: Path, *, tilt_deg: float, pairs: list[tuple[float, int]],
                timestamp: int, voltage_kV: float = 300) -> None:
    """``<movie>.mdoc`` as SerialEM writes it for an EER movie: counts are raw frames."""
    n_raw = sum(n for _, n in pairs)
    dose = sum(d * n for d, n in pairs)
    fdn = "  ".join(f"{d:g} {n}" for d, n in pairs)
    movie.with_name(movie.name + ".mdoc").write_text(
        f"PixelSpacing = {PIXEL_A:g}\nVoltage = {voltage_kV:g}\nImageFile = {movie.name}\n\n"
        f"[FrameSet = 0]\nTiltAngle = {tilt_deg:g}\nExposureDose = {dose:g}\n"
        f"PixelSpacing = {PIXEL_A:g}\nSubFramePath = X:\\frames\\{movie.name}\n"
        f"NumSubFrames = {n_raw}\nFrameDosesAndNumber = {fdn}\nTimeStamp = {timestamp}\n"
        f"DateTime = 24-Mar-2023  12:{timestamp % 60:02d}:00\n")


def _series_mdoc(path: Path, tilts: list[tuple[str, float, float, int, int]], *,
                 frame_doses: bool = True, voltage: bool = True) -> None:
    text = (f"PixelSpacing = {PIXEL_A:g}\n" + ("Voltage = 300\n" if voltage else "")
            + f"ImageFile = {path.name[:-5]}\n"
            f"ImageSize = {SHAPE[1]} {SHAPE[0]}\nDataMode = 1\n\n"
            "[T = SerialEM: Digitized on a Krios G4    24-Mar-2023  12:13:11    ]\n\n")
    for z, (movie, angle, dose, n_raw, stamp) in enumerate(tilts):
        text += (f"[ZValue = {z}]\nTiltAngle = {angle:g}\nExposureDose = {dose:g}\n"
                 f"PixelSpacing = {PIXEL_A:g}\nSubFramePath = X:\\frames\\{movie}\n"
                 f"NumSubFrames = {n_raw}\n"
                 + (f"FrameDosesAndNumber = {dose / n_raw:g} {n_raw}\n" if frame_doses else "")
                 + f"TimeStamp = {stamp}\nDateTime = 24-Mar-2023  12:{stamp % 60:02d}:00\n\n")
    path.write_text(text)


def _run(watch: Path, out: Path, dose: DoseParams, read: ReadParams | None = None,
         **options) -> None:
    out.mkdir()
    params = CorrectionParams(dose=dose, read=read or ReadParams(pixel_size_A=PIXEL_A,
                                                                 eer_group_frames=GROUP))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, exit_when_idle_s=0.8, polling="on", log_level="warning",
                    max_attempts=1, options={"tilt_series": "auto", "mdoc_quiet": 0.3,
                                             **options})
    assert Service(config, resolver=resolver_from_config(config)).run() in (0, 1)


def _record(out: Path, movie: Path) -> dict:
    return json.loads((out / f"{movie.stem}.motion.json").read_text())


def test_eer_tilt_series_with_frame_mdocs_sums_raw_frame_doses_into_each_fraction(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(7)
    # acquisition order 0, -3, +3 (dose-symmetric); 120 raw frames at 0.025 e/Å² each
    plan = [("Position_10_001_0.00_20230324_121311_EER.eer", 0.0, 3.0, 120, 1000),
            ("Position_10_002_-3.00_20230324_121400_EER.eer", -3.0, 3.6, 120, 1060),
            ("Position_10_003_3.00_20230324_121457_EER.eer", 3.0, 4.2, 120, 1120)]
    for name, angle, dose, n_raw, stamp in plan:
        movie = _eer(watch / name, n_raw, rng)
        _frame_mdoc(movie, tilt_deg=angle, pairs=[(dose / n_raw, n_raw)], timestamp=stamp)
    _series_mdoc(watch / "Position_10.mrc.mdoc", plan)
    # the setting: --eer-group 12 and a dose flag (the mdoc's doses win for tilts)
    _run(watch, out, DoseParams(dose_per_frame_e_A2=1.0))
    pre = 0.0
    for name, angle, dose, n_raw, _ in plan:
        record = _record(out, watch / name)
        assert record["eer"]["raw_frames_per_fraction"] == [GROUP] * 10
        # each fraction holds 12 raw frames of dose/120: dose/10 each, by hand
        np.testing.assert_allclose(record["dose"]["per_frame_e_A2"], [dose / 10] * 10,
                                   rtol=1e-5)
        assert record["tilt"]["series"] == "Position_10"
        assert record["tilt"]["pre_exposure_e_A2"] == pytest.approx(pre, abs=1e-9)
        assert record["dose"]["pre_exposure_e_A2"] == pytest.approx(pre, abs=1e-9)
        pre += dose
    assert (out / "Position_10" / "Position_10.tlt").is_file()  # the series was assembled


def test_a_frame_integration_file_groups_the_tilts_as_motioncor3_and_their_mdocs_dose_them(
        tmp_path):
    """``fm_int_file`` with '120 12 0.02' on tilts of 125 raw frames: 10 fractions, the 5 raw
    frames left over one each to the last 5 (MotionCor3's rule); the tilts' doses are their
    mdocs' (the file's dose stands for --dose-per-frame, which a tilt's mdoc dose replaces),
    each fraction holding the dose of exactly its raw frames."""
    from correction.frame_integration import parse_frame_integration

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(9)
    plan = [("TS_07_001_0.0.eer", 0.0, 2.5, 125, 1000),
            ("TS_07_002_3.0.eer", 3.0, 3.75, 125, 1060)]
    for name, angle, dose, n_raw, stamp in plan:
        movie = _eer(watch / name, n_raw, rng)
        _frame_mdoc(movie, tilt_deg=angle, pairs=[(dose / n_raw, n_raw)], timestamp=stamp)
    _series_mdoc(watch / "TS_07.mrc.mdoc", plan)
    integration = parse_frame_integration("120 12 0.02\n", "fmint.txt")
    _run(watch, out, DoseParams(dose_per_frame_e_A2=0.02 * 12),
         read=ReadParams(pixel_size_A=PIXEL_A, frame_integration=integration))
    sizes = [12] * 5 + [13] * 5
    pre = 0.0
    for name, _, dose, n_raw, _ in plan:
        record = _record(out, watch / name)
        assert record["eer"]["raw_frames_per_fraction"] == sizes
        assert record["eer"]["grouped_by"] == "frame integration file"
        np.testing.assert_allclose(record["dose"]["per_frame_e_A2"],
                                   [dose / n_raw * k for k in sizes], rtol=1e-5)
        assert record["tilt"]["pre_exposure_e_A2"] == pytest.approx(pre, abs=1e-9)
        pre += dose
    assert (out / "TS_07" / "TS_07.tlt").is_file()


def test_eer_movie_with_only_its_frame_mdoc_needs_no_dose_flag_and_uneven_doses_land_exactly(
        tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    # 125 raw frames: 60 at 0.02 then 65 at 0.03 e/Å²; fractions 12 x 9 + 17 (see above)
    movie = _eer(watch / "FoilHole_1_Data_2_3_20230324_121311_EER.eer", 125,
                 np.random.default_rng(8))
    _frame_mdoc(movie, tilt_deg=0.0, pairs=[(0.02, 60), (0.03, 65)], timestamp=5)
    _run(watch, out, DoseParams())  # no dose flag at all
    record = _record(out, movie)
    assert record["eer"]["raw_frames_per_fraction"] == [12] * 9 + [17]
    np.testing.assert_allclose(record["dose"]["per_frame_e_A2"],
                               [0.24] * 5 + [0.36] * 4 + [0.51], rtol=1e-5)
    assert record["dose"]["pre_exposure_e_A2"] == 0.0


def test_without_any_dose_a_movie_is_quarantined_with_the_reason_and_an_eer_header_dose_is_used(
        tmp_path):
    from daemon.state.ledger import DB_NAME, Ledger

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(9)
    # no mdoc, no flag: the EER header's totalDose (e/pixel) gives the dose
    header = _eer(watch / "header_dose.eer", 120, rng, metadata=[
        ("numberOfFrames", None, "120"), ("totalDose", "e/px", f"{5.0 * PIXEL_A ** 2:.6f}"),
        ("sensorPixelSize.width", "m", f"{PIXEL_A * 1e-10:g}")])
    # no mdoc, no flag, no header dose: nothing says the dose
    bare = _eer(watch / "no_dose.eer", 120, rng)
    _run(watch, out, DoseParams())
    record = _record(out, header)
    np.testing.assert_allclose(record["dose"]["per_frame_e_A2"], [0.5] * 10, rtol=1e-4)
    assert not (out / "no_dose.motion.json").exists()
    with Ledger(out / DB_NAME, read_only=True) as ledger:
        rows = [r for r in ledger.rows() if Path(r.key.path).name == bare.name]
    assert [r.status for r in rows] == ["quarantined"]
    assert NO_DOSE_REASON in rows[0].error


def test_correct_takes_an_eer_movies_dose_from_its_header_when_no_option_gives_one(
        tmp_path, capsys):
    """``--eer-dose-per-fraction`` promises the file's totalDose, the README "a dose from the
    EER header": ``correct`` refused every EER movie without a dose option (usage, 2)."""
    from daemon.commands.cli import main

    rng = np.random.default_rng(10)
    header = _eer(tmp_path / "header_dose.eer", 120, rng, metadata=[
        ("numberOfFrames", None, "120"), ("totalDose", "e/px", f"{5.0 * PIXEL_A ** 2:.6f}"),
        ("sensorPixelSize.width", "m", f"{PIXEL_A * 1e-10:g}")])
    bare = _eer(tmp_path / "no_dose.eer", 120, rng)
    out = tmp_path / "out"
    status = main(["correct", str(header), str(bare), "--out", str(out), "--eer-group",
                   str(GROUP), "--patches", "1", "1", "--pixel-size", f"{PIXEL_A:g}"])
    assert status == 1  # the bare one failed, on its own, naming itself
    record = json.loads((out / "header_dose.motion.json").read_text())
    np.testing.assert_allclose(record["dose"]["per_frame_e_A2"], [0.5] * 10, rtol=1e-4)
    (said,) = [line for line in capsys.readouterr().err.splitlines() if "no_dose.eer" in line]
    assert NO_DOSE_REASON in said
    # a batch with a movie of another format still needs the option, before any work
    mrc = tmp_path / "m.mrc"
    mrc.write_bytes(b"")
    assert main(["correct", str(header), str(mrc), "--out", str(tmp_path / "o2")]) == 2


def _service(watch: Path, out: Path, dose: DoseParams, log, **options) -> Service:
    out.mkdir(exist_ok=True)  # a restart: the same output folder and state
    params = CorrectionParams(dose=dose, read=ReadParams(pixel_size_A=PIXEL_A,
                                                         eer_group_frames=GROUP))
    config = Config(watch, out, out, params, settle_time_s=0.1, scan_interval_s=0.05,
                    heartbeat_s=0.2, polling="on", max_attempts=1,
                    options={"tilt_series": "auto", "mdoc_quiet": 0.3, **options})
    return Service(config, resolver=resolver_from_config(config), logger=log)


def _rows(out: Path, movie: Path) -> list:
    from daemon.state.ledger import DB_NAME, Ledger

    if not (out / DB_NAME).exists():  # the service has not started yet
        return []
    try:
        with Ledger(out / DB_NAME, read_only=True) as ledger:
            return [r for r in ledger.rows() if Path(r.key.path).name == movie.name]
    except sqlite3.OperationalError:  # made, its tables not yet
        return []


def test_an_eer_tilt_whose_frame_mdoc_comes_later_is_redone_only_if_its_doses_moved(tmp_path):
    """SerialEM may write an EER tilt's frame mdoc after the movie has settled. The tilt was
    corrected with its series section's ExposureDose spread evenly over its raw frames; a frame
    mdoc whose FrameDosesAndNumber spread that dose evenly changes nothing, and the tilt is not
    corrected again (every such tilt was: "frame doses changed"). Uneven doses of the same
    total do change the weighting: that tilt is redone with them."""
    from recording_log import RecordingLog
    from service_run import more_heartbeats, running

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(11)
    plan = [("Position_3_001_0.00_EER.eer", 0.0, 3.0, 120, 1000),
            ("Position_3_002_-3.00_EER.eer", -3.0, 3.0, 120, 1060),
            ("Position_3_003_3.00_EER.eer", 3.0, 3.0, 120, 1120)]
    movies = [_eer(watch / name, n_raw, rng) for name, _, _, n_raw, _ in plan]
    _series_mdoc(watch / "Position_3.mrc.mdoc", plan, frame_doses=False)
    log = RecordingLog()
    with running(_service(watch, out, DoseParams(), log)) as wait_for:
        wait_for(lambda: all((out / f"{m.stem}.motion.json").exists() for m in movies))
        first = {m.name: _record(out, m)["dose"]["per_frame_e_A2"] for m in movies}
        for movie, (_, angle, dose, n_raw, stamp) in zip(movies[:2], plan):
            _frame_mdoc(movie, tilt_deg=angle, pairs=[(dose / n_raw, n_raw)], timestamp=stamp)
        _, angle, _, _, stamp = plan[2]
        _frame_mdoc(movies[2], tilt_deg=angle, pairs=[(0.02, 60), (0.03, 60)], timestamp=stamp)
        wait_for(lambda: len([r for r in _rows(out, movies[2]) if r.status == "done"]) == 2)
        more_heartbeats(log, wait_for, n=5)
    np.testing.assert_allclose(first[movies[0].name], [0.3] * 10, rtol=1e-5)
    for movie in movies[:2]:
        assert [r.status for r in _rows(out, movie)] == ["done"]
    redone = [f["movie"] for _, e, f in log.events if e == "movie_redo_metadata_changed"]
    assert redone == [str(movies[2])]
    np.testing.assert_allclose(_record(out, movies[2])["dose"]["per_frame_e_A2"],
                               [0.24] * 5 + [0.36] * 5, rtol=1e-5)
    # a restart resolves every tilt anew: the even list is the dose they were corrected with
    # (their ledger key), not a new one to correct them again under
    again = RecordingLog()
    with running(_service(watch, out, DoseParams(), again)) as wait_for:
        more_heartbeats(again, wait_for, n=8)
    assert [len(_rows(out, m)) for m in movies] == [1, 1, 2]
    assert again.named("movie_ready") == []


def test_a_movie_of_no_series_quarantined_without_a_dose_is_corrected_once_its_frame_mdoc_comes(
        tmp_path):
    """No dose configured, none in its header, its frame mdoc not there yet when it settled:
    quarantined for want of a dose. The frame mdoc then comes (SerialEM or the share late): the
    running daemon corrects it with the mdoc's dose, as a restart would (it stayed
    quarantined until one)."""
    from recording_log import RecordingLog
    from service_run import running

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    movie = _eer(watch / "FoilHole_7_Data_1_EER.eer", 120, np.random.default_rng(12))
    log = RecordingLog()
    with running(_service(watch, out, DoseParams(), log)) as wait_for:
        wait_for(lambda: [r.status for r in _rows(out, movie)] == ["quarantined"])
        assert NO_DOSE_REASON in _rows(out, movie)[0].error
        _frame_mdoc(movie, tilt_deg=0.0, pairs=[(0.025, 120)], timestamp=5)
        wait_for(lambda: (out / f"{movie.stem}.motion.json").exists())
    np.testing.assert_allclose(_record(out, movie)["dose"]["per_frame_e_A2"], [0.3] * 10,
                               rtol=1e-5)
    assert [e for _, e, _ in log.events if e == "movie_dose_found"] == ["movie_dose_found"]


@pytest.mark.parametrize("mdoc_dose_e_A2, mdoc_kV, corrections", [
    (5.0, 300, 1),  # the header's dose and the voltage used: nothing moves
    (7.5, 300, 2),  # another dose
    (5.0, 200, 2),  # another voltage than the 300 kV assumed
])
def test_a_movie_of_no_series_corrected_before_its_frame_mdoc_came_is_redone_only_if_it_moves(
        tmp_path, mdoc_dose_e_A2, mdoc_kV, corrections):
    """No dose or voltage configured: an EER movie of no series is corrected with its header's
    dose (5 e/Å²) at 300 kV assumed before its frame mdoc comes. The frame mdoc's dose or
    voltage, when another, has it corrected again now, once (it stayed as it was until a
    restart redid it); when alike, it is not corrected again, not even at a restart (which
    took the frame mdoc's dose as new parameters and corrected it again)."""
    from recording_log import RecordingLog
    from service_run import more_heartbeats, running

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    movie = _eer(watch / "FoilHole_8_Data_1_EER.eer", 120, np.random.default_rng(15), metadata=[
        ("numberOfFrames", None, "120"), ("totalDose", "e/px", f"{5.0 * PIXEL_A ** 2:.6f}"),
        ("sensorPixelSize.width", "m", f"{PIXEL_A * 1e-10:g}")])
    log = RecordingLog()
    with running(_service(watch, out, DoseParams(), log, voltage=None)) as wait_for:
        wait_for(lambda: (out / f"{movie.stem}.motion.json").exists())
        _frame_mdoc(movie, tilt_deg=0.0, pairs=[(mdoc_dose_e_A2 / 120, 120)], timestamp=5,
                    voltage_kV=mdoc_kV)
        wait_for(lambda: [r.status for r in _rows(out, movie)] == ["done"] * corrections)
        more_heartbeats(log, wait_for, n=5)
    assert len(_rows(out, movie)) == corrections
    assert len(log.named("movie_redo_metadata_changed")) == corrections - 1
    again = RecordingLog()
    with running(_service(watch, out, DoseParams(), again, voltage=None)) as wait_for:
        more_heartbeats(again, wait_for, n=8)
    assert len(_rows(out, movie)) == corrections
    record = _record(out, movie)
    np.testing.assert_allclose(record["dose"]["total_e_A2"], mdoc_dose_e_A2, rtol=1e-4)
    assert record["voltage_kV"] == mdoc_kV


def test_a_voltage_option_removed_at_a_restart_lets_a_late_frame_mdoc_voltage_redo_the_tilt(
        tmp_path):
    """Corrected with ``--voltage 300`` (no voltage in the series mdoc), restarted without it:
    the same key, kept. A frame mdoc then says 200 kV: without ``--voltage`` the mdoc's rules
    (as a later restart would use it), so the tilt is redone at 200 kV now, once."""
    from recording_log import RecordingLog
    from service_run import more_heartbeats, running

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    plan = [("Position_5_001_0.00_EER.eer", 0.0, 3.0, 120, 1000)]
    movie = _eer(watch / plan[0][0], 120, np.random.default_rng(14))
    _series_mdoc(watch / "Position_5.mrc.mdoc", plan, frame_doses=False, voltage=False)
    log = RecordingLog()
    with running(_service(watch, out, DoseParams(), log, voltage=300.0)) as wait_for:
        wait_for(lambda: (out / f"{movie.stem}.motion.json").exists())
    assert _record(out, movie)["voltage_source"] == "option"
    log = RecordingLog()
    with running(_service(watch, out, DoseParams(), log, voltage=None)) as wait_for:
        more_heartbeats(log, wait_for, n=3)
        assert len(_rows(out, movie)) == 1  # the same key: kept
        _frame_mdoc(movie, tilt_deg=0.0, pairs=[(0.025, 120)], timestamp=1000, voltage_kV=200)
        wait_for(lambda: _record(out, movie)["voltage_kV"] == 200.0)
        more_heartbeats(log, wait_for, n=5)
    assert _record(out, movie)["voltage_source"] == "frame mdoc"  # the series mdoc gives none
    assert [r.status for r in _rows(out, movie)] == ["done", "done"]


@pytest.mark.parametrize("voltage_option_kV", [None, 300.0])
def test_an_eer_tilt_weighted_at_300_kV_assumed_is_redone_at_the_voltage_its_late_frame_mdoc_gives(
        tmp_path, voltage_option_kV):
    """Only the frame mdocs say the voltage (200 kV), and they come after the tilts were
    corrected at the 300 kV assumed without one: each tilt is redone once, at 200 kV (the
    redo came before only by a frame-dose comparison that also redid tilts whose doses had not
    moved). With ``--voltage`` the option wins over any mdoc: nothing is redone."""
    from recording_log import RecordingLog
    from service_run import more_heartbeats, running

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    rng = np.random.default_rng(13)
    plan = [("Position_4_001_0.00_EER.eer", 0.0, 3.0, 120, 1000),
            ("Position_4_002_-3.00_EER.eer", -3.0, 3.0, 120, 1060)]
    movies = [_eer(watch / name, n_raw, rng) for name, _, _, n_raw, _ in plan]
    _series_mdoc(watch / "Position_4.mrc.mdoc", plan, frame_doses=False, voltage=False)
    log = RecordingLog()
    with running(_service(watch, out, DoseParams(), log, voltage=voltage_option_kV)
                 ) as wait_for:
        wait_for(lambda: all((out / f"{m.stem}.motion.json").exists() for m in movies))
        assert {_record(out, m)["voltage_kV"] for m in movies} == {300.0}
        for movie, (_, angle, dose, n_raw, stamp) in zip(movies, plan):
            _frame_mdoc(movie, tilt_deg=angle, pairs=[(dose / n_raw, n_raw)], timestamp=stamp,
                        voltage_kV=200)
        if voltage_option_kV is None:
            wait_for(lambda: all(_record(out, m)["voltage_kV"] == 200.0 for m in movies))
        more_heartbeats(log, wait_for, n=5)
    redone = sorted(f["movie"] for f in log.named("movie_redo_metadata_changed"))
    if voltage_option_kV is None:
        assert redone == sorted(str(m) for m in movies)
        assert all("voltage 300 -> 200 kV" in f["reason"]
                   for f in log.named("movie_redo_metadata_changed"))
        assert {_record(out, m)["voltage_source"] for m in movies} == {"frame mdoc"}
    else:
        assert redone == []
    for movie in movies:
        assert len(_rows(out, movie)) == (2 if voltage_option_kV is None else 1)
