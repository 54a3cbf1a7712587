"""The file-name fallback reads series, acquisition index and angle from the naming styles of
real sessions, and never takes a date or clock time for an angle.

The table lists every naming style of ``SubFramePath`` in the real mdocs (tests/data/mdoc and
../shared/data/mdoc; only the names are copied here), with the series, index and angle a person
reads in them. The second test checks the pattern against the ``TiltAngle`` of every section of
those mdocs themselves (the shared ones only where that folder exists).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.series.mdoc import read_mdoc
from daemon.series.resolution import DEFAULT_FILENAME_PATTERN, MovieObservation, SeriesConfig, \
    resolve

RX = re.compile(DEFAULT_FILENAME_PATTERN)
DATA = Path(__file__).resolve().parents[1] / "data" / "mdoc"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "mdoc"

#: name -> (series, index, angle) or None (no angle in the name: no file-name match)
NAMES = {
    # ot2rec (Tomo 5, Falcon EER): date and time after the angle
    "Position_10_001_-20.00_20230324_121311_EER.eer": ("Position_10", 1, -20.0),
    "Position_10_003_-23.00_20230324_121457_EER.eer": ("Position_10", 3, -23.0),
    "Position_1_2_002_-17.00_20230324_121400_EER.eer": ("Position_1_2", 2, -17.0),
    # Tomo 5 movies named in public issues (3dem/relion#1158, warpem/warp#143)
    "Position_1_008_24.00_20240509_232041_Fractions.mrc": ("Position_1", 8, 24.0),
    "Position_1_001_0.00_20230927_180658_Fractions.mrc": ("Position_1", 1, 0.0),
    # older Tomo 5: the angle in brackets (Murfey's tomo context, _get_tilt_angle_v5_7;
    # I2PC/scipion#1625 "xxxxx_YYY[angle]_Fractions.mrc")
    "Position_1_001[30.00]_fractions.tiff": ("Position_1", 1, 30.0),
    "Position_37_002[-0.04]_Fractions.mrc": ("Position_37", 2, -0.04),
    # EMPIAR-10164 (teamtomo mdocfile), SerialEM's series_index_angle
    "TS_01_000_0.0.mrc": ("TS_01", 0, 0.0),
    "TS_01_002_-3.0.mrc": ("TS_01", 2, -3.0),
    "TS_01_040_60.0.mrc": ("TS_01", 40, 60.0),
    # cryoCAT TS_019 frame mdocs: four-digit index, "-0.0"
    "TS_019_0000_8.0.mrc": ("TS_019", 0, 8.0),
    "TS_019_0008_-0.0.mrc": ("TS_019", 8, -0.0),
    # cryoet portal: underscores and numbers inside the series name
    "chrom_07_ts_010_167_000_-12.0.mrc": ("chrom_07_ts_010_167", 0, -12.0),
    "chrom_07_ts_010_167_000_18.0.mrc": ("chrom_07_ts_010_167", 0, 18.0),
    # teamtomo frame_set_single (K3): month-day and a dotted clock time after the angle
    "s_mmm_00993_33.0_Oct08_07.39.05.tif": ("s_mmm", 993, 33.0),
    "s_mmm_01013_33.0_Oct08_07.46.46.tif": ("s_mmm", 1013, 33.0),
    # no angle in the name: the fallback must not invent one
    "017_01.mrc": None,
    "017_60.mrc": None,
    "TS_run1_1.tiff": None,
    "TS_run1_9.tiff": None,
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_default_pattern_reads_each_real_naming_style(name):
    m = RX.search(name)
    if NAMES[name] is None:
        assert m is None
        return
    assert m is not None
    series, index, angle = NAMES[name]
    assert (m.group("series"), int(m.group("index")), float(m.group("angle"))) == \
        (series, index, angle)


@pytest.mark.parametrize("name", ["TS_01_003_91.0.mrc", "TS_01_003_-90.5.mrc",
                                  "S_20230324_121311.eer", "S_001_121311.mrc"])
def test_a_number_outside_minus_90_to_90_is_not_an_angle(name):
    assert RX.search(name) is None


def test_the_issue_name_resolves_to_its_series_index_and_angle_after_the_wait():
    name = "Position_10_001_-20.00_20230324_121311_EER.eer"
    res = resolve([MovieObservation(name, 0.0)], [], {},
                  config=SeriesConfig(dose_per_tilt_e_A2=3.0), now_s=100.0)
    a = res.assignments[name]
    assert (a.series, a.tilt_deg, a.match_source) == ("Position_10", -20.0, "filename")


def _mdocs() -> list[Path]:
    found = sorted(DATA.glob("*.mdoc"))
    if SHARED.is_dir():
        found += sorted(SHARED.rglob("*.mdoc"))
    return found


def test_every_sub_frame_path_of_the_real_mdocs_parses_to_its_tilt_angle():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} absent: only tests/data/mdoc checked in the table test")
    checked = 0
    for path in _mdocs():
        md = read_mdoc(path)
        for s in md.sections:
            name = s.sub_frame_name
            if not name:
                continue
            m = RX.search(name)
            if m is None:
                assert not re.search(r"_[-+]?\d+\.\d+(_|\.\w+$)", name), (path.name, name)
                continue
            assert s.tilt_deg is not None
            # names carry the nominal angle, the section the stage's (within a tenth of a degree)
            assert float(m.group("angle")) == pytest.approx(s.tilt_deg, abs=0.1), (path, name)
            checked += 1
    assert checked >= 100
