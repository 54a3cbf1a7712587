"""SerialEM mdoc parsing: real files (tests/data/mdoc, see PROVENANCE.md) and damaged variants."""

from __future__ import annotations

import datetime as dt

import pytest
from mdoc_data import CRYOCAT, DATA, needs_cryocat

from daemon.series.mdoc import (
    TIMESTAMP_EPOCH,
    frame_path_basename,
    parse_datetime,
    parse_mdoc,
    parse_mdoc_text,
    read_mdoc,
)


def test_ts01_has_41_tilt_sections_with_two_digit_year_datetimes_and_windows_paths():
    md = read_mdoc(DATA / "TS_01.mrc.mdoc")
    assert md.kind == "tilt_series" and not md.is_montage
    assert len(md.sections) == 41 and all(s.complete for s in md.sections)
    s0 = md.sections[0]
    assert s0.z_value == 0 and s0.tilt_deg == pytest.approx(0.000999877)
    assert s0.exposure_dose_e_A2 == 0.0 and s0.dose_rate_e_px_s is None
    assert s0.datetime == dt.datetime(2015, 11, 30, 15, 21, 38)
    assert s0.sub_frame_name == "TS_01_000_0.0.mrc"
    assert s0.num_subframes == 8 and s0.pixel_spacing_A == 5.4 and s0.exposure_time_s == 0.8
    assert md.image_file == "TS_01.mrc" and md.warnings == ()


@pytest.mark.parametrize("name, axis_deg", [("TS_01.mrc.mdoc", 85.3), ("test_1.mdoc", 83.8),
                                             ("close-TS_run1.mdoc", 84.7),
                                             ("montage_section.mdoc", -86.7),
                                             ("frame_set_single.mdoc", None)])
def test_the_tilt_axis_is_read_from_serialems_title_line(name, axis_deg):
    assert read_mdoc(DATA / name).tilt_axis_deg == axis_deg


def test_tomography_5s_tilt_axis_title_is_not_taken_for_serialems():
    """Tomo 5 (the Ot2Rec mdoc: "[T = TiltAxisAngle = -171.35 ...]", RotationAngle 81.35) uses
    another convention: SerialEM's tilt axis is RotationAngle - 90 (84.7 and 174.7 in
    close-TS_run1.mdoc), Tomo 5's TiltAxisAngle + 90 = -RotationAngle. It is kept apart, never
    passed on as the tilt axis."""
    tomo5 = read_mdoc(DATA / "Position_10.mdoc")
    assert tomo5.tilt_axis_deg is None and tomo5.tomo5_tilt_axis_deg == -171.35
    rotation = float(dict(tomo5.sections[0].items)["RotationAngle"])
    assert tomo5.tomo5_tilt_axis_deg + 90 == pytest.approx(-rotation)
    serialem = read_mdoc(DATA / "close-TS_run1.mdoc")
    assert serialem.tomo5_tilt_axis_deg is None
    assert serialem.tilt_axis_deg == pytest.approx(
        float(dict(serialem.sections[0].items)["RotationAngle"]) - 90)


def test_murfey_file_four_digit_years_unc_paths_dose_rate_and_zero_frame_doses():
    md = read_mdoc(DATA / "test_1.mdoc")
    assert md.kind == "tilt_series" and len(md.sections) == 11
    s = md.sections[0]
    assert s.datetime == dt.datetime(2022, 8, 1, 18, 58, 35)
    assert s.sub_frame_name == "chrom_07_ts_010_167_000_-0.0.mrc"
    assert s.dose_rate_e_px_s == pytest.approx(5.45454)
    assert s.frame_doses_and_numbers == ((0.0, 7), (0.0, 3))
    assert s.voltage_kV == 300  # from the global value


def test_crlf_and_lf_versions_parse_to_the_same_sections():
    raw = (DATA / "test_1.mdoc").read_bytes()
    lf = parse_mdoc(raw)
    crlf = parse_mdoc(raw.replace(b"\n", b"\r\n"))
    assert [s.items for s in crlf.sections] == [s.items for s in lf.sections]
    assert all(s.complete for s in crlf.sections)


def _dose_fields(s):
    return (s.tilt_deg, s.exposure_dose_e_A2, s.frame_doses_and_numbers, s.sub_frame_name,
            s.datetime, s.prior_record_dose_e_A2, s.dose_rate_e_px_s, s.exposure_time_s,
            s.pixel_spacing_A, s.binning, s.num_subframes, s.timestamp_s)


@pytest.mark.parametrize("name, step", [("TS_01.mrc.mdoc", 61), ("test_1.mdoc", 29),
                                        ("Position_10.mdoc", 3), ("frame_set_single.mdoc", 2)])
def test_every_cut_point_keeps_complete_sections_exact_and_marks_the_cut_one(name, step):
    """A file read while SerialEM appends: whatever the byte at which it is cut, the parser
    never raises, every section it calls complete has the full file's values, and only the
    last section can be incomplete. (Checked at every byte offset of these files once; the
    test samples offsets to stay fast.)"""
    raw = (DATA / name).read_bytes()
    full = parse_mdoc(raw).sections
    for cut in list(range(0, len(raw), step)) + [len(raw) - 1]:
        md = parse_mdoc(raw[:cut])
        incomplete = [s for s in md.sections if not s.complete]
        assert len(incomplete) <= 1
        if incomplete:
            assert incomplete[0] is md.sections[-1] and incomplete[0].warnings
        for s in md.sections:
            if s.complete:
                assert _dose_fields(s) == _dose_fields(full[s.index]), cut


def test_file_without_final_newline_keeps_its_complete_last_section():
    md = read_mdoc(DATA / "Position_10.mdoc")
    assert len(md.sections) == 3 and all(s.complete for s in md.sections)
    assert any("no newline" in w for w in md.warnings)
    last = md.sections[-1]
    assert last.sub_frame_name == "Position_10_003_-23.00_20230324_121457_EER.eer"
    assert last.prior_record_dose_e_A2 == pytest.approx(13.58)
    assert last.datetime == dt.datetime(2023, 3, 24, 12, 15, 0)


def test_montage_mdoc_is_recognised_and_not_a_tilt_series():
    md = read_mdoc(DATA / "montage_section.mdoc")
    assert md.kind == "montage" and md.is_montage
    text = "ImageFile = m.mrc\n\n[MontSection = 0]\nTiltAngle = 0\n\n[ZValue = 0]\nTiltAngle = 0\n"
    assert parse_mdoc_text(text).kind == "montage"


def test_frame_mdoc_is_kind_frames_with_expanded_frame_doses():
    md = read_mdoc(DATA / "frame_set_single.mdoc")
    assert md.kind == "frames" and len(md.sections) == 1
    s = md.sections[0]
    assert s.kind == "FrameSet" and s.complete
    assert s.sub_frame_name == "s_mmm_00993_33.0_Oct08_07.39.05.tif"
    assert s.frame_doses_e_A2 == (0.63824,) * 12 and s.num_subframes == 12
    assert s.binning == 0.5 and s.exposure_dose_e_A2 == pytest.approx(7.65892)
    assert md.titles and md.titles[0].startswith("SerialEM: UMass_Krios")


def test_a_series_recorded_as_one_movie_is_that_movies_frame_mdoc():
    """SerialEM's frame tilt series: one 243-frame movie, its ``[FrameSet = 0]`` followed by
    20 ``[ZValue]`` frame ranges (``FrameTSStartEndFrames``). Read as a series mdoc, its movie
    was taken for the series' stack and never corrected (``movie_ignored``), the series open
    for good with 0 of 20 tilts. It is the movie's frame mdoc, and says it is not split."""
    md = read_mdoc(DATA / "frame_set_multiple.mdoc")
    assert md.kind == "frames"
    assert [s.kind for s in md.sections] == ["FrameSet"] + ["ZValue"] * 20
    assert md.sections[0].sub_frame_name == "s_mmm_01013_33.0_Oct08_07.46.46.tif"
    assert md.sections[1].frame_ts_start_end == (0, 12)
    assert any("recorded as one movie" in w and "20 frame ranges" in w for w in md.warnings)
    # a series mdoc whose sections carry frame ranges without a movie's [FrameSet] stays one
    text = "ImageFile = ts.mrc\n\n[ZValue = 0]\nTiltAngle = 0\nFrameTSStartEndFrames = 0 9\n"
    assert parse_mdoc_text(text).kind == "tilt_series"


def test_hand_edited_portal_mdoc_parses_with_sections_lacking_dose_and_time():
    md = read_mdoc(DATA / "close-TS_run1.mdoc")
    assert md.kind == "tilt_series" and len(md.sections) == 9
    assert md.sections[0].exposure_dose_e_A2 == pytest.approx(2.35936)
    rest = md.sections[1:]
    assert all(s.exposure_dose_e_A2 is None and s.datetime is None for s in rest)
    assert [s.sub_frame_name for s in rest] == [f"TS_run1_{i}.tiff" for i in range(2, 10)]


def test_bad_values_become_warnings_not_errors():
    text = ("[ZValue = 0]\nTiltAngle = abc\nExposureDose = 3\nFrameDosesAndNumber = 0.1 2 0.3\n"
            "DateTime = 31-Foo-23 10:00:00\nnot a key value line\nExposureDose = 4\n")
    md = parse_mdoc_text(text, path="x.mdoc")
    s = md.sections[0]
    assert s.tilt_deg is None and s.frame_doses_and_numbers is None and s.datetime is None
    assert s.exposure_dose_e_A2 == 4.0  # the last value wins, with a warning
    joined = " ".join(s.warnings)
    for expected in ("TiltAngle", "FrameDosesAndNumber", "DateTime", "no '='", "repeats ExposureDose"):
        assert expected in joined


@pytest.mark.parametrize("line", ["FrameDosesAndNumber = 0.1 inf",
                                  "FrameDosesAndNumber = inf 4",
                                  "FrameDosesAndNumber = 0.1 3e8"])
def test_frame_doses_beyond_any_movie_are_a_warning_not_an_error_or_a_huge_list(line):
    """A damaged FrameDosesAndNumber (an infinite or absurd count: before, an OverflowError
    that stopped every mdoc's reading at each scan, or a list of 3e8 doses) is ignored with a
    warning; the section keeps its other values."""
    s = parse_mdoc_text(f"[ZValue = 0]\nTiltAngle = 3\n{line}\n", path="x.mdoc").sections[0]
    assert s.frame_doses_and_numbers is None and s.frame_doses_e_A2 is None
    assert s.tilt_deg == 3.0
    assert any("FrameDosesAndNumber" in w for w in s.warnings)


def test_a_timestamp_out_of_any_calendar_falls_back_to_the_datetime():
    text = "[ZValue = 0]\nTiltAngle = 0\nTimeStamp = 1e15\nDateTime = 01-Jan-2020  00:00:00\n"
    assert parse_mdoc_text(text).sections[0].acquired_at == dt.datetime(2020, 1, 1)


def test_timestamp_is_seconds_since_2020_and_preferred_for_acquisition_time():
    text = "[ZValue = 0]\nTiltAngle = 0\nTimeStamp = 86461\nDateTime = 01-Jan-2020  00:00:00\n"
    s = parse_mdoc_text(text).sections[0]
    assert s.timestamp_s == 86461
    assert s.acquired_at == TIMESTAMP_EPOCH + dt.timedelta(days=1, seconds=61)


@pytest.mark.parametrize("text, expected", [
    ("30-Nov-15  15:21:38", dt.datetime(2015, 11, 30, 15, 21, 38)),
    ("01-Aug-2022  18:58:35", dt.datetime(2022, 8, 1, 18, 58, 35)),
    ("6-Jun-23 23:19:46", dt.datetime(2023, 6, 6, 23, 19, 46)),
    ("31-Feb-23 10:00:00", None), ("", None), ("yesterday", None)])
def test_datetime_accepts_two_and_four_digit_years_and_rejects_nonsense(text, expected):
    assert parse_datetime(text) == expected


@pytest.mark.parametrize("path, name", [
    (r"D:\DATA\Flo\frames\TS_01_000_0.0.mrc", "TS_01_000_0.0.mrc"),
    (r"\\192.168.10.81\Storage\\x\chrom_000_-0.0.mrc", "chrom_000_-0.0.mrc"),
    ("/data/frames/a.tif", "a.tif"), ("a.eer", "a.eer"), ("  ", None), (None, None)])
def test_sub_frame_path_is_matched_on_its_basename(path, name):
    assert frame_path_basename(path) == name


@needs_cryocat
def test_ts017_and_ts019_frame_mdocs_parse_completely():
    md = read_mdoc(CRYOCAT / "017.mdoc")
    assert md.kind == "tilt_series" and len(md.sections) == 60
    assert all(s.complete and s.prior_record_dose_e_A2 is not None for s in md.sections)
    assert md.sections[0].frame_doses_and_numbers == ((0.023687, 3), (0.035531, 7))
    frames = sorted((CRYOCAT / "frames_mdoc").glob("*.mdoc"))
    assert len(frames) == 61
    for f in frames:
        fm = read_mdoc(f)
        assert fm.kind == "frames" and fm.sections[0].complete
        assert fm.sections[0].sub_frame_name == f.name[: -len(".mdoc")]


@pytest.mark.parametrize("encode, said", [
    (lambda text: "\ufeff".encode("utf-16-be") + text.encode("utf-16-be"), "UTF-16"),
    (lambda text: text.encode("utf-16"), "UTF-16"),
    (lambda text: b"\xef\xbb\xbf" + text.encode("utf-8"), None),
])
def test_an_mdoc_saved_as_utf16_or_with_a_byte_order_mark_reads_as_serialem_wrote_it(encode,
                                                                                      said):
    """PowerShell 5.1's `>` and Out-File write UTF-16: read as UTF-8 it was NULs between the
    letters, no section at all, and the series' doses and voltage were taken as absent."""
    text = (DATA / "TS_01.mrc.mdoc").read_text()
    plain, other = parse_mdoc(text.encode()), parse_mdoc(encode(text))
    assert [_dose_fields(s) for s in other.sections] == [_dose_fields(s) for s in plain.sections]
    assert other.global_items == plain.global_items and other.kind == plain.kind
    assert any(said in w for w in other.warnings) if said else other.warnings == plain.warnings


def test_a_cp1252_movie_name_matches_its_movie_and_a_nul_run_loses_no_section():
    """A name with an accent written by a Windows program in its code page matched no movie
    (the series left to file names and configured doses); 300 NULs before a section header (a
    range a copy never wrote) merged two sections, a tilt lost from its series."""
    text = (DATA / "TS_01.mrc.mdoc").read_text()
    plain = parse_mdoc(text.encode())
    accented = text.replace("TS_01_", "TSé_01_")
    windows = parse_mdoc(accented.encode("cp1252"))
    assert [s.sub_frame_name for s in windows.sections] == [
        s.sub_frame_name.replace("TS_01_", "TSé_01_") for s in plain.sections]
    assert any("read as Windows cp1252" in w for w in windows.warnings)
    cut = text.encode().replace(b"[ZValue = 2]", b"\x00" * 300 + b"[ZValue = 2]")
    holed = parse_mdoc(cut)
    assert [_dose_fields(s) for s in holed.sections] == [_dose_fields(s) for s in plain.sections]
    assert any("NUL bytes dropped" in w for w in holed.warnings)


_REPEATS_MDOC = """PixelSpacing = 1.1
Voltage = 300

[ZValue = 7]
TiltAngle = 3.0
ExposureDose = 2.5
ExposureDose = 3.5
FrameDosesAndNumbers = 0.5 7
SubFramePath = X:\\a\\t7.tif
DateTime = 01-Aug-2022  18:58:35

"""



def test_a_section_keeps_its_own_zvalue_the_last_repeat_and_the_first_token():
    (s,) = parse_mdoc_text(_REPEATS_MDOC).sections
    assert s.z_value == 7                                  # MD6
    assert s.get("ExposureDose") == "3.5"                  # MD5
    assert s.exposure_dose_e_A2 == 3.5
    assert s.frame_doses_and_numbers == ((0.5, 7),)        # MD8



def test_a_utf16_mdoc_cut_mid_unit_keeps_every_whole_character():
    from correction.metadata_text import decode_metadata_text

    data = "\ufeffTiltAngle = 3\n".encode("utf-16-le") + b"\x41"   # cut after one byte
    decoded = decode_metadata_text(data)
    assert decoded.text == "TiltAngle = 3\n"



def test_a_last_line_cut_inside_frame_doses_leaves_the_section_incomplete():
    sec = "TiltAngle = {a}\nFrameDosesAndNumber = 0.5 8\nDateTime = 01-Aug-2022  18:58:35\n"
    text = ("[ZValue = 0]\n" + sec.format(a=0) + "\n[ZValue = 1]\nTiltAngle = 3\n"
            "DateTime = 01-Aug-2022  18:59:35\nFrameDosesAndNumber = 0.5")   # cut, no newline
    last = parse_mdoc_text(text).sections[-1]
    assert not last.complete


def test_a_file_of_junk_named_mdoc_gives_a_few_warnings_not_one_a_line():
    """200 kB of random bytes named ``x.mdoc`` gave 1,044 ``mdoc_warning`` log lines, one per
    line of junk (a 50 MB file about 250,000): five and one that counts the rest."""
    import random

    rng = random.Random(3)
    junk = "\n".join("".join(chr(rng.randrange(33, 127)) for _ in range(60))
                     .replace("=", "").replace("[", "") for _ in range(1000))
    md = parse_mdoc_text(junk, path="/w/x.mdoc")
    assert len(md.warnings) == 6
    assert md.warnings[-1].startswith("x.mdoc: and ") and "more such warnings" in md.warnings[-1]
