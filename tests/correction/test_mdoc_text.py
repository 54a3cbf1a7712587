"""The one mdoc writer: SerialEM's layout and number formatting, read back by our mdoc reader."""

from __future__ import annotations

import datetime as dt

import pytest

from correction.mdoc_text import format_mdoc, format_value, serialem_datetime
from daemon.series.mdoc import read_mdoc


def test_values_are_formatted_as_serialem_writes_them():
    assert format_value(3) == "3" and format_value(True) == "1"
    assert format_value(0.000999877) == "0.000999877"  # %g: six significant digits
    assert format_value(3.001126) == "3.00113"
    assert format_value(float("nan")) == "NaN"
    assert format_value((4096, 4096)) == "4096 4096"
    assert format_value([20.7936, 155.287]) == "20.7936 155.287"
    assert format_value(dt.datetime(2015, 11, 30, 15, 21, 38)) == "30-Nov-2015  15:21:38"
    assert serialem_datetime("2024-05-17T10:03:00") == "17-May-2024  10:03:00"
    assert serialem_datetime("not a time") is None and serialem_datetime(None) is None


def test_a_series_mdoc_written_here_reads_back_section_by_section(tmp_path):
    sections = [[("TiltAngle", a), ("ExposureDose", 2.5 + k), ("PriorRecordDose", 2.5 * k),
                 ("SubFramePath", f"X:\\frames\\TS_1_{k:03d}.tif"), ("NumSubFrames", 8),
                 ("TargetDefocus", None),  # None: the line is left out
                 ("DateTime", dt.datetime(2024, 5, 17, 10, k))]
                for k, a in enumerate([0.0, 3.0, -3.0])]
    text = format_mdoc([("PixelSpacing", 1.35), ("ImageFile", "TS_1.mrc"),
                        ("ImageSize", (4096, 4096)), ("DataMode", 1)], sections,
                       titles=["SerialEM: test", "    Tilt axis angle = 85.3, binning = 1"])
    assert "[ZValue = 2]\nTiltAngle = -3\n" in text and "TargetDefocus" not in text
    assert text.endswith("\n\n")
    path = tmp_path / "TS_1.mrc.mdoc"
    path.write_text(text)
    md = read_mdoc(path)
    assert md.kind == "tilt_series" and md.image_file == "TS_1.mrc"
    assert md.pixel_spacing_A == pytest.approx(1.35)
    assert any("Tilt axis angle = 85.3" in t for t in md.titles)
    assert [s.z_value for s in md.sections] == [0, 1, 2]
    assert [s.tilt_deg for s in md.sections] == [0.0, 3.0, -3.0]
    assert [s.exposure_dose_e_A2 for s in md.sections] == [2.5, 3.5, 4.5]
    assert [s.prior_record_dose_e_A2 for s in md.sections] == [0.0, 2.5, 5.0]
    assert [s.num_subframes for s in md.sections] == [8, 8, 8]
    assert [s.datetime for s in md.sections] == [dt.datetime(2024, 5, 17, 10, k) for k in range(3)]
    assert all(s.complete for s in md.sections)


def test_frame_mdoc_sections_take_another_bracket_name():
    text = format_mdoc([], [[("NumSubFrames", 40)]], section_key="FrameSet")
    assert text == "[FrameSet = 0]\nNumSubFrames = 40\n\n"


def test_keys_or_values_that_would_break_the_file_are_refused():
    with pytest.raises(ValueError, match="bad mdoc key"):
        format_mdoc([("Tilt = Angle", 1.0)], [])
    with pytest.raises(ValueError, match="line break"):
        format_mdoc([], [[("SubFramePath", "a\nb")]])
