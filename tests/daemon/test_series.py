"""Tilt-series grouping, dose per tilt, pre-exposure and completion (pure logic)."""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mdoc_data import CRYOCAT, DATA, needs_cryocat

from daemon.series.lifecycle import (SeriesObservation, SeriesState, assignment_change,
                                     update_series_state)
from daemon.series.mdoc import parse_mdoc_text, read_mdoc
from daemon.series.resolution import (MdocObservation, MovieObservation, SeriesConfig,
                                      classify_mdocs, resolve)


def _movies(md, first_seen_s=0.0):
    return [MovieObservation(s.sub_frame_name, first_seen_s) for s in md.sections if s.sub_frame_name]


def _resolve(md, *, config=SeriesConfig(), now_s=1000.0, movies=None, frame_mdocs=None):
    return resolve(movies if movies is not None else _movies(md), [MdocObservation(md, 0.0)],
                   frame_mdocs or {}, config=config, now_s=now_s)


def _independent_sections(path):
    """(movie, ExposureDose, PriorRecordDose, DateTime) read with a plain regex, to check the
    module against an independent reading of the file."""
    out = []
    for block in re.split(r"\n(?=\[ZValue)", Path(path).read_text()):
        if not block.startswith("[ZValue"):
            continue
        get = lambda key: re.search(rf"^{key} = (.*)$", block, re.M).group(1).strip()  # noqa: E731
        out.append((re.split(r"[\\/]", get("SubFramePath"))[-1], float(get("ExposureDose")),
                    float(get("PriorRecordDose")),
                    dt.datetime.strptime(" ".join(get("DateTime").split()), "%d-%b-%y %H:%M:%S")))
    return out


def _prior(dose, i, restart_at):
    """PriorRecordDose of exposure ``i``; counted anew from ``restart_at`` (SerialEM restarted)."""
    return dose * i if restart_at is None or i < restart_at else 0.05 + dose * (i - restart_at)


def dose_symmetric_mdoc(n_tilts=9, *, dose=2.5, step=3.0, sort_by_angle=False, timestamps=False,
                        n_sections=None, path="/w/TS_7.mrc.mdoc", omit=(), clock_back_at=None,
                        no_datetime=(), prior_restart_at=None, same_second=(), prior=True):
    """A series mdoc of a dose-symmetric scheme 0, +3, -3, +6, -6 ... acquired 40 s apart
    (``clock_back_at``: the PC's clock set back an hour before that exposure; ``prior``
    False: no PriorRecordDose, as older SerialEM writes; ``timestamps``: TimeStamp from the
    same local clock as DateTime)."""
    angles = [0.0]
    k = 1
    while len(angles) < n_tilts:
        angles += [k * step, -k * step]
        k += 1
    angles = angles[:n_tilts]
    t0 = dt.datetime(2024, 5, 17, 9, 58, 10)
    rows = []
    for i, a in enumerate(angles):
        t = t0 + dt.timedelta(seconds=40 * i)
        if clock_back_at is not None and i >= clock_back_at:
            t -= dt.timedelta(hours=1)
        if i in same_second:  # within the second of the exposure before (DateTime ties)
            t = rows[-1][2]
        rows.append((i, a, t))
    if sort_by_angle:
        rows.sort(key=lambda r: r[1])
    rows = rows[:n_sections] if n_sections is not None else rows
    lines = ["PixelSpacing = 1.5", "Voltage = 300", "ImageFile = TS_7.mrc", "",
             "[T = SerialEM: simulated dose-symmetric series]", ""]
    rows = [r for r in rows if r[0] not in omit]  # exposures made, not listed (retaken)
    for z, (i, a, t) in enumerate(rows):
        lines += [f"[ZValue = {z}]", f"TiltAngle = {a:.3f}", f"ExposureDose = {dose}",
                  "PixelSpacing = 1.5", "ExposureTime = 1", "NumSubFrames = 10",
                  f"FrameDosesAndNumber = {dose / 10:g} 10",
                  *([f"PriorRecordDose = {_prior(dose, i, prior_restart_at):g}"] if prior
                    else []),
                  rf"SubFramePath = X:\session\frames\TS_7_{i:03d}_{a:.1f}.tif"]
        if timestamps:
            lines.append(f"TimeStamp = {int((t - dt.datetime(2020, 1, 1)).total_seconds())}")
        if i not in no_datetime:
            lines.append(f"DateTime = {t.strftime('%d-%b-%Y  %H:%M:%S')}")
        lines.append("")
    return parse_mdoc_text("\n".join(lines) + "\n", path=path), angles


# ---------------------------------------------------------------------------- real files


def test_ts01_dose_comes_from_configuration_and_order_from_datetime():
    md = read_mdoc(DATA / "TS_01.mrc.mdoc")
    res = _resolve(md, config=SeriesConfig(dose_per_tilt_e_A2=3.0))
    assert len(res.assignments) == 41 and not res.pending
    by_time = sorted(md.sections, key=lambda s: s.datetime)
    for rank, s in enumerate(by_time):
        a = res.assignments[s.sub_frame_name]
        assert a.series == "TS_01" and a.match_source == "series_mdoc"
        assert (a.dose_e_A2, a.dose_source, a.order_source) == (3.0, "configured", "DateTime")
        assert a.acquisition_index == rank
        assert a.pre_exposure_e_A2 == pytest.approx(3.0 * rank)
        assert a.frame_doses_e_A2 is None and any("configured" in w for w in a.warnings)


def test_ts01_without_a_configured_dose_waits_with_a_reason_instead_of_guessing():
    res = _resolve(read_mdoc(DATA / "TS_01.mrc.mdoc"))
    assert not res.assignments and len(res.pending) == 41
    first = res.pending["TS_01_000_0.0.mrc"]
    assert "ExposureDose = 0" in first and "dose_per_tilt_e_A2" in first


def test_tilts_without_a_dose_stop_waiting_once_their_series_is_idle_and_say_why():
    """An idle series (no new tilt, its mdoc unchanged for idle_timeout_s) no longer holds its
    tilts without a dose, and those after them, as waiting: they are given up (the service
    quarantines them), each with the reason it waited for."""
    md = read_mdoc(DATA / "TS_01.mrc.mdoc")
    config = SeriesConfig(idle_timeout_s=1800.0)
    before = _resolve(md, config=config, now_s=1799.0)     # movies and mdoc seen at 0 s
    assert len(before.pending) == 41 and not before.no_dose
    after = _resolve(md, config=config, now_s=1800.0)
    assert not after.pending and not after.assignments and len(after.no_dose) == 41
    assert "ExposureDose = 0" in after.no_dose["TS_01_000_0.0.mrc"]
    assert all("has no dose" in why for name, why in after.no_dose.items()
               if name != "TS_01_000_0.0.mrc")


def test_murfey_dose_comes_from_dose_rate_times_exposure_over_pixel_area():
    """No dose calibrated at the specimen (ExposureDose 0, frame doses 0) and none configured:
    DoseRate x ExposureTime over the unbinned pixel area."""
    md = read_mdoc(DATA / "test_1.mdoc")
    res = _resolve(md)
    assert len(res.assignments) == 11
    running = 0.0
    for s in sorted(md.sections, key=lambda s: s.datetime):
        a = res.assignments[s.sub_frame_name]
        expected = s.dose_rate_e_px_s * s.exposure_time_s / 1.94 ** 2
        assert a.dose_source == "DoseRate" and a.dose_e_A2 == pytest.approx(expected, rel=1e-12)
        assert 2.0 < a.dose_e_A2 < 2.4
        assert a.pre_exposure_e_A2 == pytest.approx(running)
        assert a.frame_doses_e_A2 is None  # FrameDosesAndNumber are zeros: uniform
        running += expected


def test_a_configured_dose_per_tilt_comes_before_the_dose_rate_measured_at_the_camera():
    """DoseRate is measured at the camera, through the specimen and the energy filter (a lower
    bound that falls with the tilt): a dose per tilt the user configured is used before it, as
    RELION's dose_per_tilt_image overrides the mdoc, and each tilt says so."""
    md = read_mdoc(DATA / "test_1.mdoc")
    res = _resolve(md, config=SeriesConfig(dose_per_tilt_e_A2=3.0))
    assert len(res.assignments) == 11
    for k, s in enumerate(sorted(md.sections, key=lambda s: s.datetime)):
        a = res.assignments[s.sub_frame_name]
        assert (a.dose_source, a.dose_e_A2, a.pre_exposure_e_A2) == ("configured", 3.0, 3.0 * k)
        rate = s.dose_rate_e_px_s * s.exposure_time_s / 1.94 ** 2
        assert any("configured dose per tilt 3 e/Å² used, not the DoseRate estimate "
                   f"{rate:.3f} e/Å²" in w for w in a.warnings), a.warnings


def test_movies_in_the_frames_folder_the_sub_frame_paths_name_are_the_tilts_of_each_grids_mdoc():
    """SerialEM often saves frames into a folder of their own (murfey's mdoc lists
    ``...\\nt29812_98_frames\\chrom_..._000_-0.0.mrc``): with the mdoc in ``gridN/`` and the
    movies in ``gridN/nt29812_98_frames/``, each grid's movies get their own mdoc's doses in
    DateTime order (they waited for metadata, then fell back to file names, before)."""
    text = (DATA / "test_1.mdoc").read_text()
    series, movies = [], []
    for grid in ("grid1", "grid2"):
        md = parse_mdoc_text(text, path=f"/w/{grid}/test_1.mdoc")
        series.append(MdocObservation(md, 0.0, grid))
        movies += [MovieObservation(f"{grid}/nt29812_98_frames/{s.sub_frame_name}", 0.0)
                   for s in md.sections]
    res = resolve(movies, series, {}, config=SeriesConfig(), now_s=1.0)  # no wait has passed
    assert not res.pending and len(res.assignments) == 22
    for grid in ("grid1", "grid2"):
        running = 0.0
        for s in sorted(md.sections, key=lambda s: s.datetime):
            a = res.assignments[f"{grid}/nt29812_98_frames/{s.sub_frame_name}"]
            assert a.series == f"{grid}/test_1" and a.dose_source == "DoseRate"
            assert a.order_source == "DateTime"
            assert a.pre_exposure_e_A2 == pytest.approx(running, abs=1e-9)
            running += a.dose_e_A2


def test_many_sessions_of_the_same_file_names_match_each_mdoc_to_its_own_frames_at_linear_cost(
        monkeypatch):
    """Weeks of sessions in one watched tree repeat the same names (``sessionK/grid1/
    test_1.mdoc`` with its frames in ``nt29812_98_frames/``): each mdoc's tilts are its own
    folder's movies, and finding them looks up each movie's owning mdoc folder once per
    scan (it was once per movie of that file name and section: O(sessions^2) a scan)."""
    import daemon.series.resolution as resolution

    calls = []
    nearest = resolution._nearest_mdoc_folder
    monkeypatch.setattr(resolution, "_nearest_mdoc_folder",
                        lambda movie, folders: calls.append(movie) or nearest(movie, folders))
    text = (DATA / "test_1.mdoc").read_text()
    series, movies = [], []
    sessions = [f"session{k:02d}/grid1" for k in range(12)]
    for folder in sessions:
        md = parse_mdoc_text(text, path=f"/w/{folder}/test_1.mdoc")
        series.append(MdocObservation(md, 0.0, folder))
        movies += [MovieObservation(f"{folder}/nt29812_98_frames/{s.sub_frame_name}", 0.0)
                   for s in md.sections]
    res = resolve(movies, series, {}, config=SeriesConfig(), now_s=1.0)
    assert not res.pending and len(res.assignments) == len(movies) == 12 * 11
    for folder in sessions:
        tilts = {m for m, a in res.assignments.items() if a.series == f"{folder}/test_1"}
        assert tilts == {m.name for m in movies if m.name.startswith(f"{folder}/")}
    assert len(calls) <= len(movies)  # 12 x 11 x 12 before


def test_a_renamed_frames_folder_still_holds_the_tilts_but_never_another_grids_folder():
    md, _ = dose_symmetric_mdoc(3)  # SubFramePath X:\\session\\frames\\TS_7_000_0.0.tif ...
    names = [s.sub_frame_name for s in md.sections]
    nested, _ = dose_symmetric_mdoc(3, path="/w/gridX/TS_7.mrc.mdoc")  # a grid folder inside
    movies = ([MovieObservation(f"copied_frames/{n}", 0.0) for n in names[:2]]
              + [MovieObservation(f"gridX/{n}", 0.0) for n in names])
    res = resolve(movies, [MdocObservation(md, 0.0), MdocObservation(nested, 0.0, "gridX")], {},
                  config=SeriesConfig(), now_s=1.0)
    assert {m: a.series for m, a in res.assignments.items()} == {
        **{f"copied_frames/{n}": "TS_7" for n in names[:2]},
        **{f"gridX/{n}": "gridX/TS_7" for n in names}}


def test_a_movie_beside_its_mdoc_is_the_tilt_even_when_its_frames_folder_has_one_too():
    md, _ = dose_symmetric_mdoc(3)  # SubFramePath X:\\session\\frames\\TS_7_000_0.0.tif ...
    names = [s.sub_frame_name for s in md.sections]
    movies = [MovieObservation(names[0], 0.0), MovieObservation(f"frames/{names[0]}", 0.0),
              MovieObservation(f"frames/{names[1]}", 0.0)]
    res = resolve(movies, [MdocObservation(md, 0.0)], {}, config=SeriesConfig(), now_s=1.0)
    assert set(res.assignments) == {names[0], f"frames/{names[1]}"}


def test_an_exposure_serialem_counted_but_the_mdoc_does_not_list_is_reported_at_the_next_tilt():
    md, _ = dose_symmetric_mdoc(7, dose=2.5, omit=(3,))  # the 4th exposure was discarded
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    # the discarded exposure irradiated the specimen: it counts from the tilt after it on
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([0, 2.5, 5, 10, 12.5, 15])
    assert all(a.prior_record_dose_difference_e_A2 == pytest.approx(0) for a in by_index)
    flagged = [a.movie for a in by_index if any("PriorRecordDose" in w for w in a.warnings)]
    assert flagged == ["TS_7_004_-6.0.tif"]  # the first tilt after the missing exposure
    assert any(series == "TS_7" and "TS_7_004_-6.0.tif" in w and "2.5 e/Å² more" in w
               for series, w in res.warnings)
    assert not any("PriorRecordDose" in w
                   for _, w in _resolve(dose_symmetric_mdoc(7)[0]).warnings)


def _mdoc_of_prior_record_doses(dose: float, priors: list[float]):
    """A dose-symmetric series mdoc whose tilts list ``dose`` each and SerialEM's
    ``PriorRecordDose`` as given, acquired 40 s apart: (the mdoc, its movies' names)."""
    t0 = dt.datetime(2024, 5, 17, 9, 58, 10)
    lines, names = ["PixelSpacing = 1.5", "Voltage = 300", "ImageFile = TS_7.mrc", ""], []
    for i, prior in enumerate(priors):
        angle = 3.0 * ((i + 1) // 2) * (1 if i % 2 else -1)
        names.append(f"TS_7_{i:03d}_{angle:.1f}.tif")
        lines += [f"[ZValue = {i}]", f"TiltAngle = {angle:.3f}", f"ExposureDose = {dose}",
                  f"PriorRecordDose = {prior:g}", rf"SubFramePath = X:\s\{names[-1]}",
                  f"DateTime = {(t0 + dt.timedelta(seconds=40 * i)):%d-%b-%Y  %H:%M:%S}", ""]
    return parse_mdoc_text("\n".join(lines) + "\n", path="/w/TS_7.mrc.mdoc"), names


def test_a_prior_record_dose_running_slowly_ahead_of_the_listed_doses_is_no_lost_exposure():
    """PriorRecordDose 1.4 times the listed doses before it (1 e/Å² more a tilt, below the
    2.5 e/Å² of a whole exposure: a calibration's drift, not an exposure the mdoc left out):
    every pre-exposure stays the sum of the listed doses before it."""
    dose = 2.5
    md, names = _mdoc_of_prior_record_doses(dose, [dose * 1.4 * i for i in range(7)])
    res = _resolve(md, movies=[MovieObservation(n, 0.0) for n in names])
    assert [res.assignments[n].pre_exposure_e_A2 for n in names] == pytest.approx(
        [dose * i for i in range(7)])


@pytest.mark.parametrize("unlisted, drift", [(1.35, 1.0), (0.7, 1.0), (1.35, 1.3)])
def test_an_unlisted_exposure_cut_short_counts_also_beside_a_prior_record_dose_running_ahead(
        unlisted, drift):
    """An exposure before the 6th tilt stopped early (1.35 e/Å² of 3.0) and was discarded:
    under half a tilt's dose, it was dropped in silence (every later pre-exposure 1.35 low),
    as was a deleted section of 1.77 among 3.6. Measured against PriorRecordDose's own pace
    (here also 1.3 times the listed doses: a calibration's drift, no exposure), a fifth of a
    tilt's dose counts."""
    dose = 3.0
    md, names = _mdoc_of_prior_record_doses(
        dose, [dose * drift * i + (unlisted if i >= 5 else 0.0) for i in range(9)])
    res = _resolve(md, movies=[MovieObservation(n, 0.0) for n in names])
    assert [res.assignments[n].pre_exposure_e_A2 for n in names] == pytest.approx(
        [dose * i + (unlisted if i >= 5 else 0.0) for i in range(9)], abs=1e-3)
    flagged = [n for n in names if any("PriorRecordDose" in w
                                       for w in res.assignments[n].warnings)]
    assert flagged == [names[5]]


def test_a_tilt_waiting_for_a_missing_index_still_counts_for_a_later_tilt_that_stopped_waiting():
    """No mdoc, 2 e/Å² a tilt by configuration, index 2 never came: tilt 4, seen long ago, has
    waited out the gap; tilt 3, seen just now, still waits. Tilt 4's pre-exposure counts
    tilts 0, 1 and 3 (6 e/Å²), not only those already assigned, and never less."""
    cfg = SeriesConfig(dose_per_tilt_e_A2=2.0, metadata_wait_s=0.0, missing_tilt_wait_s=100.0)
    seen = [MovieObservation("S_000_0.0.tif", 0.0), MovieObservation("S_001_3.0.tif", 0.0),
            MovieObservation("S_004_-6.0.tif", 0.0), MovieObservation("S_003_6.0.tif", 95.0)]
    res = resolve(seen, [], {}, config=cfg, now_s=101.0)
    assert "S_003_6.0.tif" in res.pending
    assert res.assignments["S_004_-6.0.tif"].pre_exposure_e_A2 == pytest.approx(6.0)
    # tilt 3 still waiting for its metadata (a frame mdoc may come): its dose is not known,
    # so tilt 4 waits too; it took 4 e/Å², and was corrected again once tilt 3 was resolved
    cfg = replace(cfg, metadata_wait_s=30.0)
    res = resolve(seen, [], {}, config=cfg, now_s=101.0)
    assert "S_004_-6.0.tif" not in res.assignments
    assert "metadata of tilt index 3" in res.pending["S_004_-6.0.tif"]
    res = resolve(seen, [], {}, config=cfg, now_s=126.0)
    assert res.assignments["S_004_-6.0.tif"].pre_exposure_e_A2 == pytest.approx(6.0)


def test_a_first_tilt_taken_again_counts_its_discarded_exposure_from_the_retake_on():
    """SerialEM took the first tilt, discarded it and took it again: the retake's
    PriorRecordDose (2.5 e/Å²) counts the discarded exposure, which irradiated the specimen.
    Every pre-exposure includes it, with a warning at the retake (it was taken as an offset
    before the first tilt and dropped: every tilt 2.5 e/Å² low)."""
    md, _ = dose_symmetric_mdoc(7, dose=2.5, omit=(0,))  # the first exposure was discarded
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5, 5, 7.5, 10, 12.5, 15])
    flagged = [a.movie for a in by_index if any("PriorRecordDose" in w for w in a.warnings)]
    assert flagged == [by_index[0].movie]


@pytest.mark.parametrize("dose_per_tilt", [None, 3.0])
def test_a_discarded_tilts_movie_the_mdoc_no_longer_lists_stays_out_of_the_series(dose_per_tilt):
    """SerialEM backs up and retakes a tilt: the first movie stays on disk, the mdoc lists only
    the retake. After the metadata wait that movie is corrected on its own: it neither joined
    the stacks with a pre-exposure of 0 and a duplicate acquisition index (with a configured dose)
    nor held the series open for ever (without one)."""
    md, angles = dose_symmetric_mdoc(5, omit=(1,))  # exposure 1 (+3 deg) was discarded
    names = [f"TS_7_{i:03d}_{a:.1f}.tif" for i, a in enumerate(angles)]
    res = _resolve(md, movies=[MovieObservation(n, 0.0) for n in names], now_s=1000.0,
                   config=SeriesConfig(dose_per_tilt_e_A2=dose_per_tilt))
    assert res.standalone == {names[1]} and not res.pending
    assert res.series["TS_7"].listed_movies == frozenset(names[:1] + names[2:])
    assert [a.acquisition_index for a in sorted(res.assignments.values(),
                                                key=lambda a: a.acquisition_index)] == [0, 1, 2, 3]
    assert any(series == "TS_7" and names[1] in w and "not listed by the series mdoc" in w
               for series, w in res.warnings)
    # said when it is first seen so: of a tilt corrected already, the redo waits for the mdoc
    # to stay so (one read half-written lists it again, and nothing is done)
    [said] = [w for _, w in res.warnings if names[1] in w]
    assert "if already corrected as its tilt, again once the mdoc has stayed so" in said


@pytest.mark.parametrize("dose_per_tilt", [None, 3.0])
@pytest.mark.parametrize("mdoc_name", ["TS_7", "L1_tgt_007"])
def test_a_discarded_tilts_movie_in_the_frames_folder_stays_out_of_the_series(dose_per_tilt,
                                                                              mdoc_name):
    """As above, with the movies in SerialEM's frames folder below the mdoc (its usual layout),
    and with an mdoc named otherwise than the movies (as PACEtomo names its series): the
    discarded movie is corrected on its own, not made the one tilt of a series
    ``frames/TS_7`` (with a configured dose) nor quarantined for want of a dose."""
    md, angles = dose_symmetric_mdoc(5, omit=(1,), path=f"/w/{mdoc_name}.mrc.mdoc")
    names = [f"frames/TS_7_{i:03d}_{a:.1f}.tif" for i, a in enumerate(angles)]
    res = _resolve(md, movies=[MovieObservation(n, 0.0) for n in names], now_s=1000.0,
                   config=SeriesConfig(dose_per_tilt_e_A2=dose_per_tilt))
    assert res.standalone == {names[1]} and not res.pending and not res.no_dose
    assert set(res.series) == {mdoc_name}
    assert res.series[mdoc_name].listed_movies == frozenset(names[:1] + names[2:])
    assert any(series == mdoc_name and names[1] in w and f"series mdoc of {mdoc_name}" in w
               for series, w in res.warnings)
    # before the metadata wait, it waits for the mdoc to list it
    early = _resolve(md, movies=[MovieObservation(n, 999.0) for n in names], now_s=1000.0)
    assert names[1] in early.pending


def test_hand_edited_portal_mdoc_first_tilt_from_metadata_rest_blocked_or_configured():
    md = read_mdoc(DATA / "close-TS_run1.mdoc")
    res = _resolve(md)
    assert set(res.assignments) == {"TS_run1_1.tiff"}
    assert res.assignments["TS_run1_1.tiff"].dose_e_A2 == pytest.approx(2.35936)
    assert "no dose" in res.pending["TS_run1_2.tiff"]
    assert "earlier tilt TS_run1_2.tiff" in res.pending["TS_run1_5.tiff"]
    res = _resolve(md, config=SeriesConfig(dose_per_tilt_e_A2=2.0))
    assert len(res.assignments) == 9
    a5 = res.assignments["TS_run1_5.tiff"]
    assert a5.order_source == "mdoc_section_order" and a5.acquisition_index == 4
    assert a5.pre_exposure_e_A2 == pytest.approx(2.35936 + 3 * 2.0)
    assert any("only 1 of 9 sections" in w for w in a5.warnings)


def test_a_clock_set_back_during_a_series_does_not_reorder_its_tilts_by_datetime():
    """The autumn clock change at 3:00 during a night's series (DateTime is the PC's local
    time, without TimeStamp in older SerialEM): the last tilts' DateTimes come an hour before
    the first ones'. PriorRecordDose, which only grows, gives the order (every tilt's
    pre-exposure was wrong: the last five came first)."""
    md, _ = dose_symmetric_mdoc(9, dose=2.5, clock_back_at=5)
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(9)])
    assert [a.movie.split("_")[2] for a in by_index] == [f"{i:03d}" for i in range(9)]
    assert all(a.order_source == "PriorRecordDose" for a in by_index)
    assert any("contradicts PriorRecordDose" in w
               for w in [w for _, w in res.warnings] + list(by_index[0].warnings))
    plain = _resolve(dose_symmetric_mdoc(9, dose=2.5)[0])  # in order: DateTime as before
    assert {a.order_source for a in plain.assignments.values()} == {"DateTime"}


@pytest.mark.parametrize("timestamps", [False, True])
def test_the_night_daylight_saving_time_ends_without_prior_record_dose_keeps_the_section_order(
        timestamps):
    """The clock goes back an hour during a night's series in an mdoc without PriorRecordDose
    (older SerialEM): the last four tilts sorted first by DateTime (or TimeStamp), each
    pre-exposure wrong (9.5-20.5 e/Å² for the first tilts, 0 for the sixth) with nothing
    said. The sections, which SerialEM appends as it acquires, hold the order; along them the
    clock went back once, by an hour less the 40 s between two tilts."""
    md, _ = dose_symmetric_mdoc(9, dose=2.5, clock_back_at=5, prior=False,
                                timestamps=timestamps)
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.movie.split("_")[2] for a in by_index] == [f"{i:03d}" for i in range(9)]
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(9)])
    assert {a.order_source for a in by_index} == {"mdoc_section_order"}
    said = [w for _, w in res.warnings] + list(by_index[0].warnings)
    assert any("goes back once, by 59 min, along the series mdoc's section order" in w
               for w in said), said


def test_frame_mdocs_alone_across_the_clock_change_are_ordered_by_the_file_names_index():
    """Tilts known by their frame mdocs only (no series mdoc, no PriorRecordDose): the last
    three, an hour earlier by DateTime, took the first places and their pre-exposures. The
    file names' acquisition index (000, 001 ...), every tilt a different one, holds the
    order; along it the clock went back once."""
    angles = [0.0, 3.0, -3.0, 6.0, -6.0, 9.0, -9.0]
    t0 = dt.datetime(2026, 11, 1, 1, 30, 0)
    frames = {}
    for i, angle in enumerate(angles):
        t = t0 + dt.timedelta(seconds=240 * i) - dt.timedelta(hours=1 if i >= 4 else 0)
        frames[f"TS_7_{i:03d}_{angle:.1f}.tif"] = parse_mdoc_text(
            f"[FrameSet = 0]\nTiltAngle = {angle}\nExposureDose = 2.5\nNumSubFrames = 8\n"
            f"DateTime = {t.strftime('%d-%b-%Y  %H:%M:%S')}\n", path=f"/w/TS_7_{i:03d}.mdoc")
    res = resolve([MovieObservation(n, 0.0) for n in frames], [], frames,
                  config=SeriesConfig(), now_s=0.0)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.movie for a in by_index] == list(frames)
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(7)])
    assert {a.order_source for a in by_index} == {"filename_index"}


def test_a_time_stamp_from_the_local_clock_set_back_is_ordered_by_prior_record_dose():
    """TimeStamp was trusted without the check DateTime had: set back an hour with the clock,
    it put the last tilts first, and PriorRecordDose's disagreement was then read as a
    retaken tilt: 12.5 e/Å² of phantom dose added to every pre-exposure, with a warning of a
    retake that never was."""
    md, _ = dose_symmetric_mdoc(9, dose=2.5, clock_back_at=5, timestamps=True)
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(9)])
    assert {a.order_source for a in by_index} == {"PriorRecordDose"}
    said = [w for _, w in res.warnings] + [w for a in by_index for w in a.warnings]
    assert any("TimeStamp order contradicts PriorRecordDose" in w for w in said)
    assert not any("retaken" in w for w in said)


def test_a_tilt_retaken_later_in_its_sections_place_keeps_the_datetime_order():
    """A tilt taken again three tilts later, its section rewritten in place (no
    PriorRecordDose): along the sections the clock goes back once, by minutes, not by the
    hour daylight saving time takes back: the DateTime order stays."""
    md, _ = dose_symmetric_mdoc(8, dose=2.5, prior=False)
    lines = []  # the same sections, section 2's time 40 s after the last tilt's
    for section in md.sections:
        t = section.datetime + (dt.timedelta(seconds=40 * 6) if section.z_value == 2
                                else dt.timedelta(0))
        lines += [f"[ZValue = {section.z_value}]", f"TiltAngle = {section.tilt_deg:.3f}",
                  "ExposureDose = 2.5", "PixelSpacing = 1.5", "NumSubFrames = 10",
                  rf"SubFramePath = X:\session\frames\{section.sub_frame_name}",
                  f"DateTime = {t.strftime('%d-%b-%Y  %H:%M:%S')}", ""]
    retaken = parse_mdoc_text("PixelSpacing = 1.5\nVoltage = 300\nImageFile = TS_7.mrc\n\n"
                              + "\n".join(lines) + "\n", path="/w/TS_7.mrc.mdoc")
    res = _resolve(retaken)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert {a.order_source for a in by_index} == {"DateTime"}
    assert [a.movie.split("_")[2] for a in by_index] == ["000", "001", "003", "004", "005",
                                                         "006", "007", "002"]


def test_a_file_sorted_by_angle_is_not_taken_for_a_clock_change():
    """Along sections re-sorted by angle the clock goes back and forth (a dose-symmetric
    scheme): no clock change; DateTime keeps the order, whatever the hour."""
    md, _ = dose_symmetric_mdoc(9, dose=2.5, sort_by_angle=True, prior=False)
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.movie.split("_")[2] for a in by_index] == [f"{i:03d}" for i in range(9)]
    assert {a.order_source for a in by_index} == {"DateTime"}


def test_two_tilts_in_one_second_of_a_file_sorted_by_angle_are_ordered_by_prior_record_dose():
    """Two exposures within one second (DateTime's resolution) in a file re-sorted by angle:
    the section order would break the tie the wrong way round; PriorRecordDose breaks it,
    without taking it for a restarted SerialEM."""
    md, _ = dose_symmetric_mdoc(7, dose=2.5, sort_by_angle=True, same_second=(4,))
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.movie.split("_")[2] for a in by_index] == [f"{i:03d}" for i in range(7)]
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(7)])
    warnings = res.warnings + tuple(w for a in by_index for w in a.warnings)
    assert any("tie broken by PriorRecordDose" in w for w in warnings)
    assert not any("counted anew" in w for w in warnings)


def test_a_prior_record_dose_counted_anew_mid_series_leaves_the_datetime_order():
    """SerialEM restarted during the series and PriorRecordDose counts from 0 again: its order
    interleaves the two parts, and along it the clock goes back and forth, not back once. The
    DateTime order stays (it was overruled: every pre-exposure wrong)."""
    md, _ = dose_symmetric_mdoc(16, dose=2.5, prior_restart_at=8)
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(16)])
    assert {a.order_source for a in by_index} == {"DateTime"}
    assert any("counted anew" in w
               for w in [w for _, w in res.warnings] + list(by_index[0].warnings))


def test_a_section_without_datetime_in_a_file_sorted_by_angle_is_ordered_by_prior_record_dose():
    """One section lost its DateTime and the file was re-sorted by angle: the section order
    is not the acquisition order (pre-exposures were scrambled, with a warning), but
    PriorRecordDose is there for every tilt and gives it."""
    md, _ = dose_symmetric_mdoc(7, dose=2.5, sort_by_angle=True, no_datetime=(3,))
    res = _resolve(md)
    by_index = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    assert [a.movie.split("_")[2] for a in by_index] == [f"{i:03d}" for i in range(7)]
    assert [a.pre_exposure_e_A2 for a in by_index] == pytest.approx([2.5 * i for i in range(7)])
    assert {a.order_source for a in by_index} == {"PriorRecordDose"}


def test_ot2rec_exposures_counted_by_prior_record_dose_but_not_listed_are_added():
    """Ot2Rec's excerpt lists 3 tilts of 2.3 e/Å² whose PriorRecordDose says 4.52 and 13.58
    e/Å² came before the 2nd and 3rd: the unlisted exposures count, with a warning each."""
    md = read_mdoc(DATA / "Position_10.mdoc")
    res = _resolve(md)
    a = [res.assignments[s.sub_frame_name] for s in md.sections]
    assert [x.pre_exposure_e_A2 for x in a] == pytest.approx([0.0, 4.52, 13.58])
    assert [x.prior_record_dose_difference_e_A2 for x in a] == pytest.approx([0.0, 0.0, 0.0])
    assert [any("PriorRecordDose" in w for w in x.warnings) for x in a] == [False, True, True]


def test_montage_mdoc_is_ignored_with_a_reason():
    md = read_mdoc(DATA / "montage_section.mdoc")
    res = _resolve(md, movies=[])
    assert "montage" in res.ignored_mdocs[str(md.path)] and not res.series


@needs_cryocat
def test_ts017_pre_exposure_is_running_exposure_dose_sum_in_datetime_order_not_file_order():
    md = read_mdoc(CRYOCAT / "017.mdoc")
    res = _resolve(md)
    assert len(res.assignments) == 60 and not res.pending
    truth = sorted(_independent_sections(CRYOCAT / "017.mdoc"), key=lambda r: r[3])
    running = np.concatenate([[0.0], np.cumsum([r[1] for r in truth])[:-1]])
    # SerialEM counted 0.0728 e/A^2 before the first tilt, and one exposure the file does not
    # list (2.2388 e/A^2, a 68 deg tilt taken again) before the last two tilts: that one is
    # added, so every pre-exposure is PriorRecordDose less the first tilt's offset
    extra = np.where(np.arange(len(truth)) >= len(truth) - 2, 2.3116 - 0.0728, 0.0)
    for (movie, _dose, prior, _t), pre, more in zip(truth, running, extra):
        a = res.assignments[movie]
        assert a.dose_source == "ExposureDose" and a.order_source == "DateTime"
        assert a.pre_exposure_e_A2 == pytest.approx(pre + more, abs=1e-3)
        assert a.prior_record_dose_difference_e_A2 == pytest.approx(-0.0728, abs=1e-3)
    # the file is sorted by angle: its first section (-52 deg) was acquired last
    assert res.assignments["017_01.mrc"].acquisition_index == 59
    assert any("017_02.mrc" in w and "PriorRecordDose" in w for _, w in res.warnings)
    # frame doses keep FrameDosesAndNumber's shape, scaled to ExposureDose, with a warning
    fd = res.assignments["017_01.mrc"].frame_doses_e_A2
    assert len(fd) == 10 and sum(fd) == pytest.approx(2.23843)
    assert fd[0] / fd[-1] == pytest.approx(0.023687 / 0.035531)


@needs_cryocat
def test_ts019_frame_mdocs_alone_give_series_tilts_doses_and_pre_exposures():
    frames = {p.name[:-5]: read_mdoc(p) for p in (CRYOCAT / "frames_mdoc").glob("*.mdoc")}
    movies = [MovieObservation(n, 0.0) for n in frames]
    res = resolve(movies, [], frames, config=SeriesConfig(), now_s=0.0)  # no wait needed
    assert len(res.assignments) == 61 and not res.pending and set(res.series) == {"TS_019"}
    ordered = sorted(res.assignments.values(), key=lambda a: a.acquisition_index)
    times = [frames[a.movie].sections[0].datetime for a in ordered]
    assert times == sorted(times)
    running = 0.0
    for a in ordered:
        s = frames[a.movie].sections[0]
        assert a.match_source == "frame_mdoc" and a.dose_source == "ExposureDose"
        assert a.tilt_deg == s.tilt_deg and a.pre_exposure_e_A2 == pytest.approx(running)
        assert a.prior_record_dose_difference_e_A2 == pytest.approx(running - s.prior_record_dose_e_A2)
        running += s.exposure_dose_e_A2
    assert ordered[0].movie == "TS_019_0000_8.0.mrc"


# ---------------------------------------------------------------------------- simulated sessions


@pytest.mark.parametrize("timestamps", [False, True])
def test_dose_symmetric_pre_exposures_are_exact_in_any_arrival_order_and_after_resort(timestamps):
    md, angles = dose_symmetric_mdoc(13, timestamps=timestamps)
    names = [f"TS_7_{i:03d}_{a:.1f}.tif" for i, a in enumerate(angles)]
    expected = {n: 2.5 * i for i, n in enumerate(names)}
    rng = random.Random(5)
    for _ in range(5):
        shuffled = names[:]
        rng.shuffle(shuffled)
        subset = shuffled[: rng.randint(1, len(names))]
        res = _resolve(md, movies=[MovieObservation(n, 0.0) for n in subset])
        assert {n: a.pre_exposure_e_A2 for n, a in res.assignments.items()} == pytest.approx(
            {n: expected[n] for n in subset})
    resorted, _ = dose_symmetric_mdoc(13, timestamps=timestamps, sort_by_angle=True)
    res = _resolve(resorted, movies=[MovieObservation(n, 0.0) for n in names])
    assert {n: a.pre_exposure_e_A2 for n, a in res.assignments.items()} == pytest.approx(expected)
    assert res.assignments[names[1]].order_source == ("TimeStamp" if timestamps else "DateTime")


def test_growing_mdoc_never_changes_an_assignment_already_made():
    """Restart safety: resolving again from the metadata (after a restart, a re-read, or with
    more sections) gives every earlier movie the same record, so nothing is counted twice."""
    full, angles = dose_symmetric_mdoc(11)
    names = [f"TS_7_{i:03d}_{a:.1f}.tif" for i, a in enumerate(angles)]
    final = _resolve(full, movies=[MovieObservation(n, 0.0) for n in names]).assignments
    for k in range(1, 12):
        partial, _ = dose_symmetric_mdoc(11, n_sections=k)
        res = _resolve(partial, movies=[MovieObservation(n, 0.0) for n in names], now_s=10.0)
        assert set(res.assignments) == set(names[:k])
        assert all("waiting" in res.pending[n] for n in names[k:])
        for n, a in res.assignments.items():
            assert assignment_change(a.record(), final[n], tolerance_e_A2=1e-9) is None


def _resolve_mdocs(mdocs, names, recorded=None):
    """Resolve ``names`` against several series mdocs; ``recorded``: movie -> recorded mdoc."""
    recorded = recorded or {}
    return resolve([MovieObservation(n, 0.0, recorded_mdoc=recorded.get(n)) for n in names],
                   [MdocObservation(md, 0.0) for md in mdocs], {}, config=SeriesConfig(),
                   now_s=1000.0)


def test_a_copy_of_a_series_mdoc_does_not_take_its_tilts_though_its_name_sorts_first():
    """An operator's copy of the mdoc in the session folder ("TS_7.mrc - Copy.mdoc", as
    Windows names it, sorts before "TS_7.mrc.mdoc") lists the same movies: each stays the tilt
    of the series its file name carries, with the same dose and pre-exposure as without the
    copy; the copy's series keeps the exposures for its dose but no movie, and says why."""
    original, angles = dose_symmetric_mdoc(7, path="/w/TS_7.mrc.mdoc")
    copy, _ = dose_symmetric_mdoc(7, path="/w/TS_7.mrc - Copy.mdoc")
    names = [f"TS_7_{i:03d}_{a:.1f}.tif" for i, a in enumerate(angles)]
    alone = _resolve_mdocs([original], names).assignments
    for order in ([copy, original], [original, copy]):
        res = _resolve_mdocs(order, names)
        assert set(res.assignments) == set(names)
        for n in names:
            assert res.assignments[n].series == "TS_7"
            assert res.assignments[n].mdoc_path == "/w/TS_7.mrc.mdoc"
            assert assignment_change(alone[n].record(), res.assignments[n],
                                     tolerance_e_A2=1e-9) is None
        copy_series = res.series["TS_7.mrc - Copy"]
        assert len(copy_series.tilts) == 7 and all(m is None for m, _, _ in copy_series.tilts)
        both = ("movies listed by the mdocs of both TS_7 and TS_7.mrc - Copy stay tilts "
                f"of TS_7 (the first: {names[0]})")
        assert list(res.warnings) == [("TS_7", both)] and both in copy_series.warnings
    # both mdocs growing, tilt by tilt: the warning reads the same (it is said once, in the log
    # and on the feed; with a count in it, once per tilt)
    texts = set()
    for k in range(1, 8):
        grown = [dose_symmetric_mdoc(7, path=path, n_sections=k)[0]
                 for path in ("/w/TS_7.mrc.mdoc", "/w/TS_7.mrc - Copy.mdoc")]
        texts.update(res_k.warnings for res_k in [_resolve_mdocs(grown, names[:k])])
    assert texts == {(("TS_7", both),)}


def test_a_movie_listed_by_two_mdocs_stays_the_tilt_of_the_mdoc_its_record_names():
    """Two mdocs whose series no file name carries (A and B) list the same movies: a movie
    not corrected yet goes to the first by path (A); one whose state record names B stays in
    B while B lists it, so a restart, or a third mdoc that sorts first, never moves it (it
    would be corrected again); when B no longer lists it, the first rule applies again."""
    a, angles = dose_symmetric_mdoc(5, path="/w/A.mrc.mdoc")
    b, _ = dose_symmetric_mdoc(5, path="/w/B.mrc.mdoc")
    first, _ = dose_symmetric_mdoc(5, path="/w/0_copy.mrc.mdoc")
    names = [f"TS_7_{i:03d}_{x:.1f}.tif" for i, x in enumerate(angles)]
    fresh = _resolve_mdocs([b, a], names)
    assert {x.series for x in fresh.assignments.values()} == {"A"}
    in_b = {names[1]: "/w/B.mrc.mdoc", names[4]: "/w/B.mrc.mdoc"}
    res = _resolve_mdocs([first, a, b], names, recorded=in_b)
    assert {n: x.series for n, x in res.assignments.items()} == {
        n: "B" if n in in_b else "0_copy" for n in names}
    gone = _resolve_mdocs([first, a], names, recorded=in_b)
    assert {x.series for x in gone.assignments.values()} == {"0_copy"}


def test_changed_metadata_after_correction_is_detected_for_redo():
    md, angles = dose_symmetric_mdoc(5)
    name = f"TS_7_002_{angles[2]:.1f}.tif"
    before = _resolve(md).assignments[name].record()
    changed, _ = dose_symmetric_mdoc(5, dose=3.0)
    after = _resolve(changed).assignments[name]
    why = assignment_change(before, after, tolerance_e_A2=0.01)
    assert "dose" in why and "pre-exposure" in why and "frame doses" in why
    assert assignment_change(None, after, tolerance_e_A2=0.01) == (
        "corrected as a single movie before it was known as a tilt of TS_7 (by its series mdoc)")


def test_a_done_tilts_record_is_compared_again_only_when_its_row_or_assignment_changes(
        tmp_path, monkeypatch):
    """The resolver compares every corrected tilt on disk with its assignment at every scan;
    with weeks of sessions left in the watched folder it keeps each verdict while the row and
    the assignment are the very objects it compared (the store and the partitioned resolution
    hand the same objects while nothing changed)."""
    import daemon.series.resolver as resolver_module
    from daemon.events import Observation
    from daemon.state.ledger import Ledger, MovieKey
    from daemon.state.newest import NewestRows

    compared = []
    real = resolver_module.recorded_tilt
    monkeypatch.setattr(resolver_module, "recorded_tilt",
                        lambda row: compared.append(row.key.path) or real(row))
    md, _ = dose_symmetric_mdoc(5)
    res = _resolve(md)
    movies = {}
    with Ledger(tmp_path / "state.sqlite") as ledger:
        for k, (name, a) in enumerate(sorted(res.assignments.items())):
            key = MovieKey(f"/w/{name}", 100, k, "fp")
            ledger.add(key, metadata={"extra_record": {"tilt": a.record()}})
            ledger.claim(key)
            ledger.mark_done(key, outputs={}, timings={}, summary={})
            movies[key.path] = Observation(Path(key.path), 100, k, "movie", None)
        rows = NewestRows().rows(ledger)
    memo: dict = {}

    def changed(resolution):
        return resolver_module.metadata_changed(
            movies, rows, resolution, relative=lambda p: str(p).removeprefix("/w/"),
            tolerance_e_A2=0.01, memo=memo)

    assert changed(res) == {} and len(compared) == 5
    assert changed(res) == {} and len(compared) == 5  # nothing compared again
    moved = _resolve(dose_symmetric_mdoc(5, dose=3.0)[0])  # the operator's dose: all redone
    assert len(changed(moved)) == 5 and len(compared) == 10
    assert len(changed(moved)) == 5 and len(compared) == 10
    assert changed(res) == {} and len(compared) == 15


def test_section_being_written_holds_its_series_then_is_used_after_the_wait():
    md, angles = dose_symmetric_mdoc(4)
    cut_text = _mdoc_text_cut_before_datetime_of_last(md)
    cut = parse_mdoc_text(cut_text, path="/w/TS_7.mrc.mdoc")
    assert not cut.sections[-1].complete
    movies = [MovieObservation(f"TS_7_{i:03d}_{a:.1f}.tif", 0.0) for i, a in enumerate(angles)]
    held = resolve(movies, [MdocObservation(cut, 100.0)], {}, config=SeriesConfig(), now_s=110.0)
    assert not held.assignments and all("being written" in r for r in held.pending.values())
    later = resolve(movies, [MdocObservation(cut, 100.0)], {}, config=SeriesConfig(), now_s=200.0)
    assert len(later.assignments) == 4
    last = later.assignments[movies[-1].name]
    assert last.pre_exposure_e_A2 == pytest.approx(7.5)
    assert any("incomplete section" in w for w in last.warnings)


def _mdoc_text_cut_before_datetime_of_last(md):
    lines = []
    for s in md.sections:
        lines.append(f"[ZValue = {s.z_value}]")
        items = list(s.items)
        if s is md.sections[-1]:
            items = [kv for kv in items if kv[0] != "DateTime"]
        lines += [f"{k} = {v}" for k, v in items] + [""]
    return "\n".join(lines)


def test_movie_without_metadata_waits_then_uses_file_name_and_configured_dose():
    cfg = SeriesConfig(dose_per_tilt_e_A2=3.0, metadata_wait_s=30.0)
    names = ["Pos3_002_3.0.tif", "Pos3_000_0.0.tif", "Pos3_001_-3.0.tif", "gridsquare_17.tif"]
    movies = [MovieObservation(n, 100.0, mtime_ns=i) for i, n in enumerate(names)]
    early = resolve(movies, [], {}, config=cfg, now_s=120.0)
    # the three named like tilts wait; a movie that cannot be a tilt is not held (faults item 10)
    assert not early.assignments and set(early.pending) == set(names[:3])
    assert early.standalone == {"gridsquare_17.tif"}
    late = resolve(movies, [], {}, config=cfg, now_s=131.0)
    assert late.standalone == {"gridsquare_17.tif"}
    a = late.assignments
    assert {n: (x.series, x.tilt_deg, x.pre_exposure_e_A2) for n, x in a.items()} == {
        "Pos3_000_0.0.tif": ("Pos3", 0.0, 0.0), "Pos3_001_-3.0.tif": ("Pos3", -3.0, 3.0),
        "Pos3_002_3.0.tif": ("Pos3", 3.0, 6.0)}
    assert all(x.match_source == "filename" and x.order_source == "filename_index"
               and x.dose_source == "configured" for x in a.values())


def test_a_file_name_index_shared_by_every_tilt_is_not_an_acquisition_order():
    """murfey's names ``chrom_07_ts_010_167_000_<angle>.mrc`` carry the same ``000`` for every
    tilt: without metadata the tilts are ordered by their files' mtimes (the tie used to be
    broken by file name: +3.0 deg, acquired 2nd, got the pre-exposure of the 4th)."""
    cfg = SeriesConfig(dose_per_tilt_e_A2=2.0, metadata_wait_s=0.0)
    acquired = ["-0.0", "3.0", "6.0", "-3.0", "-6.0"]  # dose-symmetric, first to last
    movies = [MovieObservation(f"chrom_07_ts_010_167_000_{a}.mrc", 0.0, mtime_ns=10**9 * i)
              for i, a in enumerate(acquired)]
    res = resolve(movies, [], {}, config=cfg, now_s=1.0)
    pre = {m.name: res.assignments[m.name].pre_exposure_e_A2 for m in movies}
    assert list(pre.values()) == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])
    a = res.assignments[movies[1].name]
    assert a.order_source == "file_mtime" and any("same for several tilts" in w
                                                  for w in a.warnings)


def test_assignment_gives_dose_params_with_frame_doses_when_counts_match():
    md, angles = dose_symmetric_mdoc(3)
    a = _resolve(md).assignments[f"TS_7_002_{angles[2]:.1f}.tif"]
    p = a.dose_params(voltage_kV=300.0, n_frames=10)
    assert p.frame_doses_e_A2 == pytest.approx((0.25,) * 10) and p.pre_exposure_e_A2 == 5.0
    p = a.dose_params(voltage_kV=300.0, n_frames=7)  # e.g. EER fractions
    assert p.frame_doses_e_A2 == pytest.approx((2.5 / 7,) * 7)
    p = a.dose_params(voltage_kV=200.0)
    assert p.total_dose_e_A2 == 2.5 and p.voltage_kV == 200.0
    rec = a.record()
    assert rec["pre_exposure_e_A2"] == 5.0 and rec["dose_source"] == "ExposureDose"


def test_frame_doses_move_only_when_the_dose_each_frame_has_received_moves():
    """No per-frame list is the tilt's dose spread evenly: the same as an even list of it.
    The comparison is of the running sums (what dose weighting reads), so values each off by
    less than the tolerance still move when they add up over 200 raw frames."""
    from dataclasses import replace

    md, angles = dose_symmetric_mdoc(3)
    a = replace(_resolve(md).assignments[f"TS_7_002_{angles[2]:.1f}.tif"], dose_e_A2=4.0,
                frame_doses_e_A2=None)
    even = (0.02,) * 200
    uneven = (0.015,) * 100 + (0.025,) * 100  # the same 4 e/Å²
    with_list = {fd: replace(a, frame_doses_e_A2=fd) for fd in (even, uneven)}
    assert assignment_change(a.record(), with_list[even], tolerance_e_A2=0.01) is None
    assert assignment_change(with_list[even].record(), a, tolerance_e_A2=0.01) is None
    for recorded, new in [(a, with_list[uneven]), (with_list[uneven], a),
                          (with_list[even], with_list[uneven])]:
        assert assignment_change(recorded.record(), new,
                                 tolerance_e_A2=0.01) == "frame doses changed"
    higher = replace(a, frame_doses_e_A2=(0.029,) * 200)  # 0.009 above each, 5.8 in all
    assert assignment_change(with_list[even].record(), higher,
                             tolerance_e_A2=0.01) == "frame doses changed"


def test_config_rejects_a_pattern_without_series_and_angle_groups():
    with pytest.raises(ValueError, match="series"):
        SeriesConfig(filename_pattern=r"^(?P<series>\w+)\.tif$")
    with pytest.raises(ValueError, match="regular expression"):
        SeriesConfig(filename_pattern="(")
    with pytest.raises(ValueError, match="dose_per_tilt"):
        SeriesConfig(dose_per_tilt_e_A2=0.0)


# ---------------------------------------------------------------------------- completion


def _obs(listed, known, finished, *, lock=False, mdoc_since=0.0, activity=0.0):
    return SeriesObservation(frozenset(listed), frozenset(known), frozenset(finished), lock,
                             mdoc_since, activity)


def test_series_completes_when_all_tilts_done_and_lock_removed_and_reopens_on_new_movie():
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st = SeriesState("TS_7")
    st, go = update_series_state(st, _obs("ab", "ab", "a", lock=True), now_s=10, config=cfg)
    assert not go and st.lock_seen
    st, go = update_series_state(st, _obs("ab", "ab", "ab", lock=True), now_s=500, config=cfg)
    assert not go  # lock still there, mdoc quiet does not matter
    st, go = update_series_state(st, _obs("ab", "ab", "ab"), now_s=501, config=cfg)
    assert go and st.status == "complete" and st.generation == 1 and "lock gone" in st.reason
    st, go = update_series_state(st, _obs("ab", "ab", "ab"), now_s=502, config=cfg)
    assert not go and st.status == "complete"
    st, go = update_series_state(st, _obs("abc", "abc", "ab"), now_s=600, config=cfg)
    assert not go and st.status == "open" and "re-opened" in st.reason
    st, go = update_series_state(st, _obs("abc", "abc", "abc"), now_s=601, config=cfg)
    assert go and st.generation == 2 and st.assembled_movies == frozenset("abc")


def test_a_complete_series_reopens_when_a_tilt_it_was_assembled_with_is_no_longer_its_tilt():
    """Its mdoc no longer lists c (SerialEM discarded it) or c moved to another series: the
    stacks still held c, so the series re-opens and is assembled again from a and b."""
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st, go = update_series_state(SeriesState("TS_9"), _obs("abc", "abc", "abc", lock=True),
                                 now_s=10, config=cfg)
    st, go = update_series_state(st, _obs("abc", "abc", "abc"), now_s=11, config=cfg)
    assert go and st.assembled_movies == frozenset("abc")
    st, go = update_series_state(st, _obs("ab", "ab", "ab"), now_s=20, config=cfg)
    assert not go and st.status == "open" and "no longer its tilts, e.g. c" in st.reason
    st, go = update_series_state(st, _obs("ab", "ab", "ab"), now_s=21, config=cfg)
    assert go and st.generation == 2 and st.assembled_movies == frozenset("ab")


def test_a_complete_series_reopens_when_a_tilt_it_was_assembled_with_is_corrected_again():
    """A tilt quarantined when the series completed is left out of its stacks; retried
    (``motionwatch retry``), it is corrected again: the stacks stayed without it."""
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st, go = update_series_state(SeriesState("TS_8"), _obs("abc", "abc", "abc", lock=True),
                                 now_s=10, config=cfg)
    st, go = update_series_state(st, _obs("abc", "abc", "abc"), now_s=11, config=cfg)
    assert go and st.assembled_movies == frozenset("abc")  # b quarantined, not in the stacks
    st, go = update_series_state(st, _obs("abc", "abc", "abc"), now_s=12, config=cfg)
    assert not go and st.status == "complete"
    st, go = update_series_state(st, _obs("abc", "abc", "ac"), now_s=20, config=cfg)
    assert not go and st.status == "open" and "b" in st.reason and "again" in st.reason
    st, go = update_series_state(st, _obs("abc", "abc", "ac"), now_s=21, config=cfg)
    assert not go  # b is being corrected
    st, go = update_series_state(st, _obs("abc", "abc", "abc"), now_s=22, config=cfg)
    assert go and st.generation == 2


def test_a_complete_series_reopens_when_a_tilt_was_corrected_again_between_two_looks():
    """A tilt finished again since the assembly (another row: a new version of its file,
    corrected faster than a scan; or the same row id finished again) re-opens the series; the
    same rows leave it complete."""
    cfg = SeriesConfig(mdoc_quiet_s=1.0)
    rows = frozenset({("a", (1, 5.0)), ("b", (2, 6.0))})  # (row id, finished stamp)
    obs = replace(_obs("ab", "ab", "ab", mdoc_since=0.0), finished_rows=rows)
    st, go = update_series_state(SeriesState("TS_7"), obs, now_s=10, config=cfg)
    assert go and st.assembled_rows == rows
    st2, go = update_series_state(st, obs, now_s=11, config=cfg)
    assert not go and st2.status == "complete"
    again = replace(obs, finished_rows=frozenset({("a", (7, 11.0)), ("b", (2, 6.0))}))
    st3, go = update_series_state(st, again, now_s=12, config=cfg)
    assert not go and st3.status == "open" and "corrected again, e.g. a" in st3.reason
    # SQLite gives a deleted row's id anew (a retried tilt): the same id, finished again
    same_id = replace(obs, finished_rows=frozenset({("a", (1, 11.5)), ("b", (2, 6.0))}))
    st4, go = update_series_state(st, same_id, now_s=12, config=cfg)
    assert not go and st4.status == "open" and "corrected again, e.g. a" in st4.reason


def test_series_without_lock_completes_only_after_the_mdoc_is_quiet():
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st = SeriesState("TS_1")
    st, go = update_series_state(st, _obs("ab", "ab", "ab", mdoc_since=100.0), now_s=150, config=cfg)
    assert not go  # all corrected, but the mdoc changed 50 s ago: more tilts may come
    st, go = update_series_state(st, _obs("ab", "ab", "ab", mdoc_since=100.0), now_s=221, config=cfg)
    assert go and "unchanged" in st.reason


def test_a_finished_discarded_take_does_not_stand_in_for_a_listed_tilt_not_yet_corrected():
    """Listed a, b, c; c not yet here; x, a retaken tilt's first take the mdoc dropped, is
    finished: as many finished movies as listed tilts, but not the listed ones."""
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st, go = update_series_state(SeriesState("TS_1"), _obs("abc", "abx", "abx"), now_s=200,
                                 config=cfg)
    assert not go and st.status != "complete"


def test_series_with_missing_movies_completes_after_idle_timeout_only_when_nothing_in_flight():
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st = SeriesState("TS_2")
    st, go = update_series_state(st, _obs("abc", "ab", "a", activity=0.0), now_s=2000, config=cfg)
    assert not go  # b is still being corrected
    st, go = update_series_state(st, _obs("abc", "ab", "ab", activity=0.0), now_s=2000, config=cfg)
    assert go and "idle" in st.reason and "1 listed tilt(s) never corrected (c)" in st.reason


def test_a_tilt_with_a_frame_mdoc_waits_for_a_series_mdoc_in_a_session_that_writes_them():
    """grid1's series mdoc is there; grid2's tilts come with their frame mdocs and grid2's
    series mdoc after them (copied over from the SerialEM computer, or the first tilt before
    its section): each was corrected at once as its frame mdoc's series, then again when the
    series mdoc listed it. It waits for the metadata wait; a session without series mdocs
    corrects it at once."""
    md, _ = dose_symmetric_mdoc(3)
    tilt = "grid2/frames/TS_01_000_0.0.tif"
    frame = parse_mdoc_text("[FrameSet = 0]\nTiltAngle = 0\nExposureDose = 2.5\n"
                            "SubFramePath = X:\\frames\\TS_01_000_0.0.tif\n"
                            "DateTime = 17-May-2024  10:00:00\n", path=f"/w/{tilt}.mdoc")
    movies = [MovieObservation(tilt, 0.0)]
    config = SeriesConfig(metadata_wait_s=60.0)
    grid1 = [MdocObservation(md, 0.0, folder="grid1")]
    res = resolve(movies, grid1, {tilt: frame}, config=config, now_s=10.0)
    assert "waiting for a series mdoc to list it" in res.pending[tilt]
    assert tilt not in res.assignments
    # as the daemon resolves a tree, by top-level folder: grid1's mdoc is another part's
    from daemon.series.partition import PartitionedResolution

    res = PartitionedResolution().resolve(movies, grid1, {tilt: frame}, config=config,
                                          now_s=10.0)
    assert "waiting for a series mdoc to list it" in res.pending[tilt]
    res = resolve(movies, grid1, {tilt: frame}, config=config, now_s=61.0)
    assert res.assignments[tilt].match_source == "frame_mdoc"  # the wait is over
    res = resolve(movies, [], {tilt: frame}, config=config, now_s=10.0)
    assert res.assignments[tilt].match_source == "frame_mdoc"


def test_classify_mdocs_separates_series_frame_and_montage_files():
    obs = [MdocObservation(read_mdoc(DATA / n), 0.0)
           for n in ("TS_01.mrc.mdoc", "frame_set_single.mdoc", "montage_section.mdoc")]
    series, frames, ignored = classify_mdocs(obs)
    assert [o.mdoc.path.name for o in series] == ["TS_01.mrc.mdoc"]
    assert list(frames) == ["frame_set_single"]  # keyed by the mdoc's name without .mdoc
    assert list(ignored.values()) == ["montage mdoc, not a tilt series"]


def test_frame_mdoc_of_a_series_with_a_series_mdoc_waits_for_its_section():
    md, angles = dose_symmetric_mdoc(3, n_sections=2)
    late = f"TS_7_002_{angles[2]:.1f}.tif"
    frame = parse_mdoc_text("[FrameSet = 0]\nTiltAngle = -3\nExposureDose = 2.5\n"
                            f"SubFramePath = {late}\nDateTime = 17-May-2024  10:00:00\n",
                            path=f"/w/{late}.mdoc")
    movies = [MovieObservation(n, 0.0) for n in
              [f"TS_7_{i:03d}_{a:.1f}.tif" for i, a in enumerate(angles)]]
    res = resolve(movies, [MdocObservation(md, 0.0)], {late: frame},
                  config=SeriesConfig(metadata_wait_s=60.0), now_s=10.0)
    assert "series mdoc of TS_7" in res.pending[late]
    full, _ = dose_symmetric_mdoc(3)
    res = resolve(movies, [MdocObservation(full, 0.0)], {late: frame},
                  config=SeriesConfig(metadata_wait_s=60.0), now_s=10.0)
    assert res.assignments[late].match_source == "series_mdoc"
    assert res.assignments[late].pre_exposure_e_A2 == pytest.approx(5.0)


def test_a_frame_mdocs_exposure_dose_comes_before_the_series_sections_dose_rate():
    """ExposureDose (SerialEM's calibrated specimen dose) of the frame mdoc is used before a
    DoseRate dose of the series section (measured at the camera: a lower bound; behind a slit
    and a thick lamella, 0.82 against 7.66 e/Å² in the real frame mdoc of this test)."""
    movie = "TS_7_000_0.0.tif"
    series = parse_mdoc_text(
        "PixelSpacing = 1.2827\n\n[ZValue = 0]\nTiltAngle = 0\nExposureDose = 0\n"
        "DoseRate = 4.97858\nExposureTime = 1.07856\nPixelSpacing = 1.2827\nBinning = 0.5\n"
        f"SubFramePath = X:\\s\\{movie}\nDateTime = 08-Oct-21  07:39:08\n",
        path="/w/TS_7.mrc.mdoc")
    frame = read_mdoc(DATA / "frame_set_single.mdoc")
    res = resolve([MovieObservation(movie, 0.0)], [MdocObservation(series, 0.0)],
                  {movie: frame}, config=SeriesConfig(), now_s=1.0)
    a = res.assignments[movie]
    assert (a.dose_e_A2, a.dose_source) == (pytest.approx(7.65892), "ExposureDose (frame mdoc)")
    alone = resolve([MovieObservation(movie, 0.0)], [MdocObservation(series, 0.0)], {},
                    config=SeriesConfig(), now_s=1.0).assignments[movie]
    assert alone.dose_source == "DoseRate" and alone.dose_e_A2 == pytest.approx(0.816, abs=1e-3)


def test_late_tilt_in_a_series_without_mdoc_holds_later_tilts_then_they_get_exact_doses():
    cfg = SeriesConfig(dose_per_tilt_e_A2=2.0, metadata_wait_s=30.0, missing_tilt_wait_s=100.0)
    seen = [MovieObservation("S_000_0.0.tif", 0.0), MovieObservation("S_001_3.0.tif", 0.0),
            MovieObservation("S_003_6.0.tif", 0.0)]  # S_002_-3.0 is late
    res = resolve(seen, [], {}, config=cfg, now_s=40.0)
    assert res.assignments["S_001_3.0.tif"].pre_exposure_e_A2 == 2.0
    assert "waiting for tilt index 2" in res.pending["S_003_6.0.tif"]
    res = resolve(seen + [MovieObservation("S_002_-3.0.tif", 45.0)], [], {}, config=cfg, now_s=80.0)
    assert {n: a.pre_exposure_e_A2 for n, a in res.assignments.items()} == {
        "S_000_0.0.tif": 0.0, "S_001_3.0.tif": 2.0, "S_002_-3.0.tif": 4.0, "S_003_6.0.tif": 6.0}
    gave_up = resolve(seen, [], {}, config=cfg, now_s=101.0).assignments["S_003_6.0.tif"]
    assert gave_up.pre_exposure_e_A2 == 4.0 and any("never seen" in w for w in gave_up.warnings)


def test_a_reopened_series_is_assembled_again_though_a_listed_tilt_never_came():
    """A section inserted into an assembled series' mdoc (an exposure SerialEM listed late)
    whose movie never comes: the later tilts are redone with their new pre-exposures, and the
    stacks must follow at once; they stayed stale until the idle timeout (30 min), and a batch
    run exited with them."""
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1000.0)
    st = SeriesState("TS_3")
    st, go = update_series_state(st, _obs("ab", "ab", "a", lock=True), now_s=10, config=cfg)
    st, go = update_series_state(st, _obs("ab", "ab", "ab"), now_s=20, config=cfg)
    assert go and st.generation == 1
    st = replace(st, status="open", reason="re-opened: metadata of b changed")
    st, go = update_series_state(st, _obs("abx", "ab", "a"), now_s=30, config=cfg)
    assert not go  # b is being redone
    st, go = update_series_state(st, _obs("abx", "ab", "ab"), now_s=31, config=cfg)
    assert go and st.generation == 2 and st.assembled_movies == frozenset("ab")
    assert "1 listed tilt(s) never corrected" in st.reason
    # a series never assembled still waits for what its mdoc lists
    fresh, go = update_series_state(SeriesState("TS_4"), _obs("abx", "ab", "ab", lock=True),
                                    now_s=40, config=cfg)
    fresh, go = update_series_state(fresh, _obs("abx", "ab", "ab"), now_s=41, config=cfg)
    assert not go and fresh.status == "open"


def _frame_mdoc(name: str, angle: float, prior: float | None, minute: int):
    prior_line = "" if prior is None else f"PriorRecordDose = {prior}\n"
    return parse_mdoc_text(f"[FrameSet = 0]\nTiltAngle = {angle}\nExposureDose = 40\n"
                           f"{prior_line}SubFramePath = X:\\frames\\{name}\n"
                           f"DateTime = 17-May-2024  10:{minute:02d}:00\n", path=f"/w/{name}.mdoc")


def test_single_particle_movies_named_like_tilts_are_not_one_series():
    """Movies named ``spa_00012_0.0.mrc`` (the default pattern's series, index and angle) in a
    session where tilt series are on: their frame mdocs say one stage angle and no dose before
    any of them, yet they were one series, each weighted with the doses of those before it as
    its pre-exposure (0, 40, 80, 120 e/Å²). A dose series at one angle, whose PriorRecordDose
    counts up, and a tilt series stay series."""
    config = SeriesConfig(metadata_wait_s=60.0)
    spa = [f"spa_{i:05d}_0.0.mrc" for i in range(4)]
    frames = {n: _frame_mdoc(n, 0.01 * (i % 2), None if i == 2 else 0.0, i)
              for i, n in enumerate(spa)}
    res = resolve([MovieObservation(n, 0.0) for n in spa], [], frames, config=config,
                  now_s=100.0)
    assert set(spa) <= set(res.standalone) and not res.series
    # two shots on each position: a dose before every second one, none before the others
    frames = {n: _frame_mdoc(n, 0.0, 45.0 * (i % 2), i) for i, n in enumerate(spa)}
    res = resolve([MovieObservation(n, 0.0) for n in spa], [], frames, config=config,
                  now_s=100.0)
    assert set(spa) <= set(res.standalone) and not res.series
    doses = [f"ds_{i:05d}_30.0.mrc" for i in range(3)]
    frames = {n: _frame_mdoc(n, 30.0, 40.0 * i, i) for i, n in enumerate(doses)}
    res = resolve([MovieObservation(n, 0.0) for n in doses], [], frames, config=config,
                  now_s=100.0)
    assert [res.assignments[n].pre_exposure_e_A2 for n in doses] == [0.0, 40.0, 80.0]
    tilts = [f"TS_03_{i:03d}_{a:.1f}.mrc" for i, a in enumerate((0.0, 3.0, -3.0))]
    frames = {n: _frame_mdoc(n, a, None, i) for i, (n, a) in enumerate(zip(tilts, (0, 3, -3)))}
    res = resolve([MovieObservation(n, 0.0) for n in tilts], [], frames, config=config,
                  now_s=100.0)
    assert [res.assignments[n].pre_exposure_e_A2 for n in tilts] == [0.0, 40.0, 80.0]


def test_a_series_assembled_without_its_series_mdoc_reopens_when_it_comes_not_after_upgrade():
    """Assembled from frame mdocs (no series mdoc), it re-opens when its series mdoc comes, to
    be assembled with its tilt axis; a series state an earlier version wrote does not say
    which mdoc it was assembled with, and does not re-open for it (weeks of sessions' series
    assembled again at the first start after an upgrade)."""
    from dataclasses import replace

    cfg = SeriesConfig(mdoc_quiet_s=1.0, idle_timeout_s=1000.0)
    frames_only = _obs("", "ab", "ab", mdoc_since=None)
    st, go = update_series_state(SeriesState("TS_7"), frames_only, now_s=2000.0, config=cfg,
                                 run_ending=True)
    assert go and st.status == "complete" and st.mdoc_known and st.assembled_mdoc is None
    with_mdoc = replace(_obs("ab", "ab", "ab"), mdoc_path="/w/TS_7.mrc.mdoc")
    again, _ = update_series_state(st, with_mdoc, now_s=2001.0, config=cfg)
    assert again.status == "open" and "TS_7.mrc.mdoc came" in again.reason
    again, go = update_series_state(again, with_mdoc, now_s=2002.0, config=cfg)
    assert go and again.assembled_mdoc == "/w/TS_7.mrc.mdoc"
    assert update_series_state(again, with_mdoc, now_s=2003.0, config=cfg)[0].status == \
        "complete"
    # a second copy of its mdoc, or the mdoc renamed, takes the series over: nothing to add
    copy = replace(with_mdoc, mdoc_path="/w/TS_7.mdoc")
    assert update_series_state(again, copy, now_s=2004.0, config=cfg)[0].status == "complete"
    earlier = replace(st, mdoc_known=False)  # read from an earlier version's state
    assert update_series_state(earlier, with_mdoc, now_s=2001.0, config=cfg)[0].status == \
        "complete"


def test_an_earlier_versions_state_says_which_mdoc_it_was_assembled_with_by_the_one_it_named():
    """A series an earlier release assembled from frame mdocs named no series mdoc in its
    state: its series mdoc copied in after the upgrade left the stacks' mdocs without the
    tilt axis RELION's STAR then gave. A complete state's last ``mdoc`` is the one it was
    assembled with."""
    from daemon.series.resolver import _state_from

    frames = _state_from("TS_2", {"status": "complete", "mdoc": None})
    assert frames.mdoc_known and frames.assembled_mdoc is None
    listed = _state_from("TS_1", {"status": "complete", "mdoc": "/w/TS_1.mrc.mdoc"})
    assert listed.mdoc_known and listed.assembled_mdoc == "/w/TS_1.mrc.mdoc"
    assert not _state_from("TS_3", {"status": "open", "mdoc": None}).mdoc_known
    assert not _state_from("TS_4", {"status": "complete"}).mdoc_known


def test_series_without_a_series_mdoc_written_in_turns_wait_for_the_last_of_their_turns():
    """Frame-mdoc series of one folder: PACEtomo's targets (overlapping arrivals) are written
    until the last of them gets a movie; one written after another is its own."""
    from daemon.series.lifecycle import last_arrival_of_turns

    spans = [(0.0, 100.0, "TS_01"), (10.0, 110.0, "TS_02"), (20.0, 120.0, "TS_03"),
             (200.0, 300.0, "TS_04"), (300.5, 310.0, "TS_05")]
    assert last_arrival_of_turns(spans) == {"TS_01": 120.0, "TS_02": 120.0, "TS_03": 120.0,
                                            "TS_04": 300.0, "TS_05": 310.0}
    assert last_arrival_of_turns([]) == {}


def test_a_series_nothing_lists_completes_once_no_tilt_came_for_the_quiet_time():
    """It waited for the idle timeout (30 minutes) for its stacks."""
    cfg = SeriesConfig(mdoc_quiet_s=120.0, idle_timeout_s=1800.0)
    obs = SeriesObservation(frozenset("ab"), frozenset("ab"), frozenset("ab"), False, 100.0,
                            100.0, by_arrival=True)
    st, go = update_series_state(SeriesState("TS_1"), obs, now_s=150, config=cfg)
    assert not go
    st, go = update_series_state(st, obs, now_s=221, config=cfg)
    assert go and st.reason == ("every tilt corrected or quarantined; no new tilt for 120 s (no "
                                "series mdoc lists its tilts)")
