"""Assembly of a completed tilt series into angle-sorted stacks, .tlt, CSV and mdoc."""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from aretomo3_rules import mdoc_key_counts

from correction.dose import dose_weights
from correction.errors import CorrectionError
from correction.stack import (StackTilt, aretomo_name, assemble_series, exposure_filter,
                              link_aretomo_inputs, remove_series, series_files)
from daemon.series.mdoc import read_mdoc

PIXEL_A = 2.0


def _write(path: Path, data: np.ndarray, pixel_size_A: float = PIXEL_A) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        m.voxel_size = pixel_size_A
    return path


def _series(tmp_path: Path, n=7, shape=(48, 64), dose=2.5):
    """Dose-symmetric tilts 0, +3, -3, ...; each image is filled with values that identify
    (kind, acquisition index), so the stack order can be checked pixel-exactly."""
    angles = [0.0]
    k = 1
    while len(angles) < n:
        angles += [3.0 * k, -3.0 * k]
        k += 1
    angles = angles[:n]
    rng = np.random.default_rng(0)
    tilts, images = [], {}
    for i, a in enumerate(angles):
        movie = f"TS_9_{i:03d}_{a:.1f}.tif"
        outputs = {}
        for j, kind in enumerate(("sum", "dw", "even", "odd")):
            img = rng.normal(size=shape).astype(np.float32) + 100 * i + j
            outputs[kind] = _write(tmp_path / f"{movie[:-4]}_{kind}.mrc", img)
            images[(kind, movie)] = img
        tilts.append(StackTilt(movie=movie, tilt_deg=a, acquisition_index=i, dose_e_A2=dose,
                               pre_exposure_e_A2=dose * i, dose_source="ExposureDose",
                               order_source="DateTime", outputs=outputs,
                               drift_total_A=1.5 + i, prior_record_dose_difference_e_A2=-0.07,
                               acquired_at=f"2024-05-17T10:{i:02d}:00",
                               exposure_time_s=None if i == 1 else 1.0 + 0.25 * i))
    return tilts, images


def test_assembled_stacks_are_sorted_by_angle_match_tlt_and_keep_pixel_size(tmp_path):
    tilts, images = _series(tmp_path)
    res = assemble_series("TS_9", tilts[::-1], tmp_path / "out")
    expected = sorted(tilts, key=lambda t: t.tilt_deg)
    assert res.order == tuple(t.movie for t in expected)
    tlt = [float(x) for x in res.tlt_path.read_text().split()]
    assert tlt == pytest.approx([t.tilt_deg for t in expected], abs=0.005)
    assert tlt == sorted(tlt)
    names = {"sum": "TS_9.mrc", "dw": "TS_9_DW.mrc", "even": "TS_9_EVN.mrc", "odd": "TS_9_ODD.mrc"}
    for kind, name in names.items():
        path = res.stacks[kind]
        assert path == tmp_path / "out" / "TS_9" / name
        with mrcfile.open(path, permissive=False) as m:
            assert m.data.dtype == np.float32 and m.data.shape == (7, 48, 64)
            assert float(m.voxel_size.x) == pytest.approx(PIXEL_A)
            for z, t in enumerate(expected):
                np.testing.assert_array_equal(m.data[z], images[(kind, t.movie)])
            assert float(m.header.dmean) == pytest.approx(float(m.data.mean()), rel=1e-5)
            assert float(m.header.dmax) == pytest.approx(float(m.data.max()))
    assert not list((tmp_path / "out" / "TS_9").glob(".*"))  # no temporary files left


def test_the_stacks_keep_the_pixel_size_the_tilts_were_written_with_to_the_digit(tmp_path):
    """An MRC header stores ``cella.x = mx * pixel`` in float32: 48 x 1.06 Å read back as
    1.0600001 Å, which went into the stacks' headers and mdocs (PixelSpacing)."""
    tilts, _ = _series(tmp_path, n=3, shape=(48, 48))
    for t in tilts:
        for path in t.outputs.values():
            with mrcfile.open(path, mode="r+") as m:
                m.voxel_size = 1.06
    res = assemble_series("TS_9", tilts, tmp_path / "out")
    assert res.pixel_size_A == 1.06
    mdoc = read_mdoc(res.stacks["sum"].with_name("TS_9.mrc.mdoc"))
    assert mdoc.pixel_spacing_A == 1.06


def test_per_tilt_table_and_stack_mdoc_agree_with_the_inputs(tmp_path):
    tilts, _ = _series(tmp_path)
    res = assemble_series("TS_9", tilts, tmp_path / "out")
    rows = list(csv.DictReader(res.csv_path.open()))
    expected = sorted(tilts, key=lambda t: t.tilt_deg)
    assert [r["movie"] for r in rows] == [t.movie for t in expected]
    for z, (r, t) in enumerate(zip(rows, expected)):
        assert int(r["stack_index"]) == z and int(r["acquisition_index"]) == t.acquisition_index
        assert float(r["tilt_deg"]) == pytest.approx(t.tilt_deg)
        assert float(r["dose_e_A2"]) == pytest.approx(t.dose_e_A2)
        assert float(r["pre_exposure_e_A2"]) == pytest.approx(t.pre_exposure_e_A2)
        assert float(r["accumulated_dose_e_A2"]) == pytest.approx(t.pre_exposure_e_A2 + t.dose_e_A2)
        assert r["dose_source"] == "ExposureDose" and r["order_source"] == "DateTime"
        assert float(r["drift_total_A"]) == pytest.approx(t.drift_total_A)
    md = read_mdoc(res.stacks["sum"].with_name("TS_9.mrc.mdoc"))
    assert md.kind == "tilt_series" and md.image_file == "TS_9.mrc"
    assert [s.tilt_deg for s in md.sections] == pytest.approx([t.tilt_deg for t in expected], abs=1e-4)
    assert [s.prior_record_dose_e_A2 for s in md.sections] == pytest.approx(
        [t.pre_exposure_e_A2 for t in expected])
    assert [s.sub_frame_name for s in md.sections] == [t.movie for t in expected]
    assert all(s.complete and s.datetime is not None for s in md.sections)
    # as SerialEM writes a stack's: sections numbered from 0 in stack order, each with its own
    # tilt's dose (RELION's import sums ExposureDose over the earlier tilts: an accumulated one
    # would count each dose again), the image size as nx ny
    assert [s.z_value for s in md.sections] == list(range(len(tilts)))
    assert [s.exposure_dose_e_A2 for s in md.sections] == pytest.approx(
        [t.dose_e_A2 for t in expected])
    assert "ImageSize = 64 48" in res.stacks["sum"].with_name("TS_9.mrc.mdoc").read_text()
    # NaN where the tilt's metadata gave none (as SerialEM writes a missing number)
    assert [s.exposure_time_s for s in md.sections] == [t.exposure_time_s for t in expected]
    assert sum("ExposureTime = NaN" in line for line in
               res.stacks["sum"].with_name("TS_9.mrc.mdoc").read_text().splitlines()) == 1
    assert len(res.mdoc_paths) == 5  # one per stack, and S.st's
    # IMOD looks for an image's metadata as "<image file>.mdoc": etomo is given TS_9.st
    st_mdoc = res.folder / "TS_9.st.mdoc"
    assert st_mdoc in res.mdoc_paths
    st = read_mdoc(st_mdoc)
    assert [s.tilt_deg for s in st.sections] == [s.tilt_deg for s in md.sections]
    assert [s.z_value for s in st.sections] == list(range(len(tilts)))
    assert "ImageFile = TS_9.st" in st_mdoc.read_text().splitlines()
    # AreTomo3 reads it: each of its keys once per tilt (and it needs at least 7 tilts)
    counts = mdoc_key_counts(res.stacks["sum"].with_name("TS_9.mrc.mdoc"))
    assert set(counts.values()) == {len(tilts)} and len(tilts) >= 7, counts


def test_exposure_filter_attenuates_each_frequency_by_the_critical_exposure_curve():
    ny, nx = 64, 128
    y, x = np.mgrid[0:ny, 0:nx]
    cycles = 20  # along x: k = 20 / (128 * 2 A)
    img = (5.0 + np.cos(2 * np.pi * cycles * x / nx)).astype(np.float32)
    out = exposure_filter(img, pixel_size_A=PIXEL_A, dose_e_A2=30.0, voltage_kV=300.0)
    assert out.dtype == np.float32
    k = cycles / (nx * PIXEL_A)
    amp = np.abs(np.fft.rfft(out[0] - out[0].mean()))[cycles] / (nx / 2)
    assert amp == pytest.approx(float(dose_weights(k, 30.0, 300.0)), rel=1e-4)
    assert float(out.mean()) == pytest.approx(5.0, rel=1e-5)  # k = 0 unchanged


def test_exposure_filtered_stack_weakens_later_tilts_more(tmp_path):
    tilts, images = _series(tmp_path, n=5)
    res = assemble_series("TS_9", tilts, tmp_path / "out", exposure_filtered=True)
    expected = sorted(tilts, key=lambda t: t.tilt_deg)
    with mrcfile.open(res.stacks["exposure_filtered"]) as m:
        for z, t in enumerate(expected):
            ref = exposure_filter(images[("sum", t.movie)], pixel_size_A=PIXEL_A,
                                  dose_e_A2=t.pre_exposure_e_A2 + t.dose_e_A2)
            np.testing.assert_allclose(m.data[z], ref, atol=1e-4)
            noise_in = np.std(images[("sum", t.movie)])
            assert np.std(m.data[z]) < noise_in


def test_a_tilt_of_another_image_shape_is_left_out_of_every_file_named_in_a_warning(tmp_path):
    """A movie of another camera setting in the series (192 px among 256): before, the whole
    series got no stacks at all; now the others are stacked, every file agreeing."""
    tilts, images = _series(tmp_path, n=5)
    odd = tilts[3]
    for kind in ("sum", "dw", "even", "odd"):
        _write(odd.outputs[kind], np.zeros((24, 40), np.float32))
    res = assemble_series("TS_9", tilts, tmp_path / "out")
    kept = [t for t in sorted(tilts, key=lambda t: t.tilt_deg) if t is not odd]
    assert res.order == tuple(t.movie for t in kept)
    assert any(f"{odd.movie} left out of the stacks: its images are (24, 40)" in w
               for w in res.warnings)
    with mrcfile.open(res.stacks["dw"]) as mrc:
        assert mrc.data.shape[0] == len(kept)
        for z, t in enumerate(kept):
            np.testing.assert_array_equal(mrc.data[z], images[("dw", t.movie)])
    assert len(res.tlt_path.read_text().split()) == len(kept)
    assert len(res.aretomo_tlt_path.read_text().splitlines()) == len(kept)


def test_a_tilt_of_another_pixel_size_is_left_out_of_every_file_named_in_a_warning(tmp_path):
    """Tilts recorded at another magnification (or corrected under another --pixel-size) were
    stacked with the others under the first tilt's pixel size: a reconstruction of mixed
    magnifications, with no word."""
    tilts, images = _series(tmp_path, n=5)
    odd = tilts[1]
    for kind in ("sum", "dw", "even", "odd"):
        _write(odd.outputs[kind], images[(kind, odd.movie)], pixel_size_A=1.2 * PIXEL_A)
    res = assemble_series("TS_9", tilts, tmp_path / "out")
    kept = [t for t in sorted(tilts, key=lambda t: t.tilt_deg) if t is not odd]
    assert res.order == tuple(t.movie for t in kept)
    assert any(f"{odd.movie} left out of the stacks: its pixel size is {1.2 * PIXEL_A:.4g} Å, "
               f"the series' {PIXEL_A:g} Å" in w for w in res.warnings)
    with mrcfile.open(res.stacks["sum"]) as mrc:
        assert mrc.data.shape[0] == len(kept)
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL_A)


def test_a_tilt_missing_an_output_is_an_error_naming_the_file(tmp_path):
    tilts, _ = _series(tmp_path, n=3)
    missing = StackTilt(**{**{f: getattr(tilts[2], f) for f in StackTilt.__slots__},
                           "outputs": {"sum": tilts[2].outputs["sum"]}})
    with pytest.raises(CorrectionError, match="no 'dw' output"):
        assemble_series("TS_9", [tilts[0], tilts[1], missing], tmp_path / "out")
    assert not list((tmp_path / "out" / "TS_9").glob("*.mrc"))


def test_aretomo3_tilt_table_lists_angle_1_based_acquisition_index_and_dose_in_stack_order(
        tmp_path):
    tilts, _ = _series(tmp_path)
    res = assemble_series("TS_9", tilts[::-1], tmp_path / "out")
    assert res.aretomo_tlt_path == tmp_path / "out" / "TS_9" / "TS_9_TLT.txt"
    expected = sorted(tilts, key=lambda t: t.tilt_deg)
    rows = [line.split() for line in res.aretomo_tlt_path.read_text().splitlines()]
    assert [float(r[0]) for r in rows] == pytest.approx([t.tilt_deg for t in expected], abs=0.005)
    assert [int(r[1]) for r in rows] == [t.acquisition_index + 1 for t in expected]
    assert [float(r[2]) for r in rows] == pytest.approx([t.dose_e_A2 for t in expected])


def test_imod_finds_the_stack_as_st_with_a_rawtlt_of_its_angles(tmp_path):
    tilts, _ = _series(tmp_path)
    res = assemble_series("TS_9", tilts, tmp_path / "out")
    folder = tmp_path / "out" / "TS_9"
    assert os.path.samefile(folder / "TS_9.st", res.stacks["sum"])
    assert res.rawtlt_path.read_text() == res.tlt_path.read_text()


def test_aretomo3_inputs_are_one_weighted_set_in_their_folder_renewed_by_a_reassembly(tmp_path):
    """AreTomo3 (``DataUtil/CTsPackage.cpp``, ``LoadTiltSeries``) reads ``<name>.mrc`` with
    ``<name>_EVN.mrc``/``<name>_ODD.mrc`` and ``<name>_TLT.txt`` from one folder, and its own
    motion correction weights the three alike. motionwatch's halves are dose-weighted, so
    ``aretomo3/<name>.mrc`` is the dose-weighted stack, never the plain one."""
    assert aretomo_name("TS_9.mrc.mdoc") == "TS_9.mrc" and aretomo_name("TS_9.mdoc") == "TS_9"
    tilts, images = _series(tmp_path, n=3)
    assemble_series("TS_9", tilts, tmp_path / "out", aretomo_name="TS_9.mrc")
    folder = tmp_path / "out" / "TS_9"
    given = folder / "aretomo3"
    for suffix, target in ((".mrc", "TS_9_DW.mrc"), ("_EVN.mrc", "TS_9_EVN.mrc"),
                           ("_ODD.mrc", "TS_9_ODD.mrc"), ("_TLT.txt", "TS_9_TLT.txt")):
        assert os.path.samefile(given / f"TS_9.mrc{suffix}", folder / target)
    assert not (folder / "TS_9.mrc.mrc").exists()  # nothing beside the plain stack
    # a second assembly replaces the stacks (new files): the links follow
    _write(Path(tilts[0].outputs["dw"]), images[("dw", tilts[0].movie)] + 1000)
    assemble_series("TS_9", tilts, tmp_path / "out", aretomo_name="TS_9.mrc")
    with mrcfile.open(given / "TS_9.mrc.mrc") as m:
        assert float(m.data.max()) > 900
    assert os.path.samefile(given / "TS_9.mrc.mrc", folder / "TS_9_DW.mrc")


def test_a_series_named_as_its_mdoc_gets_the_weighted_set_too_not_the_plain_stack(tmp_path):
    """``TS_9.mdoc``: AreTomo3's name is the series' own, and ``TS_9.mrc`` beside ``TS_9_EVN.mrc``
    is the plain stack; the set in ``aretomo3/`` pairs the halves with the weighted one."""
    tilts, _ = _series(tmp_path, n=3)
    assemble_series("TS_9", tilts, tmp_path / "out")
    folder = tmp_path / "out" / "TS_9"
    assert os.path.samefile(folder / "aretomo3" / "TS_9.mrc", folder / "TS_9_DW.mrc")
    assert os.path.samefile(folder / "aretomo3" / "TS_9_EVN.mrc", folder / "TS_9_EVN.mrc")
    assert os.path.samefile(folder / "aretomo3" / "TS_9_TLT.txt", folder / "TS_9_TLT.txt")


def test_links_of_the_old_layout_beside_the_stacks_are_removed(tmp_path):
    """An earlier version linked ``TS_9.mrc.mrc`` (the plain stack) beside ``TS_9.mrc_EVN.mrc``
    (weighted) in the series folder: relinking removes them."""
    tilts, _ = _series(tmp_path, n=3)
    assemble_series("TS_9", tilts, tmp_path / "out")
    folder = tmp_path / "out" / "TS_9"
    for suffix, target in ((".mrc", "TS_9.mrc"), ("_EVN.mrc", "TS_9_EVN.mrc")):
        os.link(folder / target, folder / f"TS_9.mrc{suffix}")
    link_aretomo_inputs(folder, "TS_9", "TS_9.mrc")
    assert not (folder / "TS_9.mrc.mrc").exists() and not (folder / "TS_9.mrc_EVN.mrc").exists()
    assert (folder / "TS_9.mrc").exists() and (folder / "TS_9_EVN.mrc").exists()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_removing_a_series_takes_exactly_what_its_assembly_wrote(tmp_path):
    """A series left with no tilts: every file its assembly wrote goes (the exposure-filtered
    stack, the pictures and AreTomo3's links too), then its folders, once empty."""
    tilts, _ = _series(tmp_path, n=3)
    res = assemble_series("TS_9", tilts, tmp_path / "out", exposure_filtered=True,
                          aretomo_name="TS_9.mrc")
    folder = res.folder
    written = _files(folder)
    assert written == set(series_files("TS_9")) | {
        f"aretomo3/TS_9.mrc{s}" for s in (".mrc", "_EVN.mrc", "_ODD.mrc", "_TLT.txt")}
    removed = remove_series(folder, "TS_9", aretomo_names=["TS_9.mrc"])
    assert {p.relative_to(folder).as_posix() for p in removed} == written
    assert not folder.exists()
    assert remove_series(folder, "TS_9", aretomo_names=["TS_9.mrc"]) == ()  # again: nothing


def test_removing_a_series_leaves_files_it_did_not_write_and_their_folders(tmp_path):
    """AreTomo3's outputs in ``aretomo3/`` (and its own ``_TLT.txt`` written over the link: no
    longer the same file), the user's notes, another series' stacks: they all stay."""
    tilts, _ = _series(tmp_path, n=3)
    res = assemble_series("TS_9", tilts, tmp_path / "out", aretomo_name="TS_9.mrc")
    folder = res.folder
    theirs = {"aretomo3/TS_9.mrc_Vol.mrc": b"tomogram", "notes.txt": b"mine",
              "TS_10.mrc": b"another series", "TS_9_Vol.mrc": b"IMOD's"}
    (folder / "aretomo3" / "TS_9.mrc_TLT.txt").unlink()
    theirs["aretomo3/TS_9.mrc_TLT.txt"] = b"AreTomo3's own table"
    for name, data in theirs.items():
        (folder / name).write_bytes(data)
    remove_series(folder, "TS_9", aretomo_names=["TS_9.mrc"])
    assert _files(folder) == set(theirs)
    assert all((folder / name).read_bytes() == data for name, data in theirs.items())


def test_a_removal_cut_short_is_finished_by_the_next(tmp_path):
    """Half the files gone (a killed service): the next call removes the rest, links first."""
    tilts, _ = _series(tmp_path, n=3)
    res = assemble_series("TS_9", tilts, tmp_path / "out", aretomo_name="TS_9.mrc")
    for name in ("aretomo3/TS_9.mrc.mrc", "TS_9.st", "TS_9.csv"):
        (res.folder / name).unlink()
    remove_series(res.folder, "TS_9", aretomo_names=["TS_9.mrc"])
    assert not res.folder.exists()


def test_the_csv_and_stack_mdocs_name_a_movie_not_named_in_utf8_by_its_bytes_on_disk(tmp_path):
    """A movie name that is not UTF-8 (Latin-1 ``µ`` and ``é`` from a share mounted with another
    iocharset; Python holds it with surrogate escapes): the series still assembles, and its
    table and the stacks' SubFramePath give the name as the bytes it has on disk."""
    tilts, _ = _series(tmp_path, n=3)
    raw = b"Grid_\xb5m_caf\xe9_000_0.0.tif"
    renamed = StackTilt(**{**{f: getattr(tilts[0], f) for f in StackTilt.__slots__},
                           "movie": os.fsdecode(raw)})
    res = assemble_series("TS_9", [renamed, *tilts[1:]], tmp_path / "out")
    rows = res.csv_path.read_bytes().splitlines()
    assert any(raw in row.split(b",") for row in rows)
    sub_frame_paths = [line for line in res.mdoc_paths[0].read_bytes().splitlines()
                       if line.startswith(b"SubFramePath")]
    assert sub_frame_paths.count(b"SubFramePath = " + raw) == 1


def test_a_series_named_near_the_file_name_limit_is_assembled_and_removed(tmp_path):
    """A series name of 246 bytes (its mdoc 249, legal for SerialEM): its files are named from
    the name shortened as movies' stems are (before: "File name too long" and no stacks),
    AreTomo3's links too, and removing the series finds them all."""
    from correction.stack import aretomo_name
    from correction.stems import fit_output_stem

    series = "TS_" + "x" * 243
    tilts, _ = _series(tmp_path, n=3)
    mdoc = f"{series}.mdoc"
    res = assemble_series(series, tilts, tmp_path / "out", exposure_filtered=True,
                          aretomo_name=aretomo_name(mdoc))
    stem = fit_output_stem(series)
    assert res.stacks["dw"].name == f"{stem}_DW.mrc" and res.folder.name == series
    written = _files(res.folder)
    assert set(series_files(series)) <= written
    assert all(len(os.fsencode(name.split("/")[-1])) <= 255 - 13 for name in written)
    removed = remove_series(res.folder, series, aretomo_names=[aretomo_name(mdoc)])
    assert {p.relative_to(res.folder).as_posix() for p in removed} == written


def _one_tilt(tmp_path, movie, angle, index, shape=(32, 32)):
    """A tilt of 2 e/Å² whose sum is filled with ``10 index + 1``."""
    path = tmp_path / f"{movie}_sum.mrc"
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.full(shape, 10.0 * index + 1, np.float32))
        m.voxel_size = 2.0
    return StackTilt(movie=movie, tilt_deg=angle, acquisition_index=index, dose_e_A2=2.0,
                     pre_exposure_e_A2=2.0 * index, dose_source="ExposureDose",
                     order_source="DateTime", outputs={"sum": path}, drift_total_A=1.0,
                     prior_record_dose_difference_e_A2=None, acquired_at=None,
                     exposure_time_s=1.0)


def test_repeated_angles_are_stacked_in_acquisition_order_whatever_the_movie_names(tmp_path):
    """A tilt taken again at the same angle: by acquisition order, as the warning says."""
    tilts = [_one_tilt(tmp_path, "a_retake.tif", 3.0, 2),
             _one_tilt(tmp_path, "z_first.tif", 3.0, 1), _one_tilt(tmp_path, "m_zero.tif", 0.0, 0)]
    res = assemble_series("TS_1", tilts, tmp_path / "out")
    assert res.order == ("m_zero.tif", "z_first.tif", "a_retake.tif")
    assert any("repeated tilt angles" in w for w in res.warnings)


def test_a_shape_tie_keeps_the_tilt_acquired_first(tmp_path):
    """One tilt of each shape: the shape of the tilt acquired first is the series'."""
    tilts = [_one_tilt(tmp_path, "zero.tif", 0.0, 1, shape=(32, 32)),
             _one_tilt(tmp_path, "three.tif", 3.0, 0, shape=(32, 48))]
    res = assemble_series("TS_1", tilts, tmp_path / "out")
    assert res.order == ("three.tif",)


def test_the_stack_mdocs_datetimes_rise_in_the_order_the_dose_was_accumulated_in(tmp_path):
    """The night daylight saving time ends: the last three tilts' DateTimes come an hour
    before the first ones'. motionwatch ordered and dosed them right (by PriorRecordDose),
    but the stack mdoc, which Warp's ts_import orders by DateTime (giving the i-th tilt i
    doses), kept the raw times: Warp would have dosed them as acquired first. Each time now
    comes after the one of the tilt acquired before it, the intervals kept (across the step
    too: the series' own, not 1 s)."""
    tilts, _ = _series(tmp_path, n=7)
    clock = [dt.datetime(2026, 11, 1, 1, 30) + dt.timedelta(minutes=4 * i) for i in range(7)]
    clock[4:] = [t - dt.timedelta(hours=1) for t in clock[4:]]
    tilts = [StackTilt(**{**{f: getattr(t, f) for f in StackTilt.__slots__},
                          "acquired_at": clock[t.acquisition_index].isoformat()})
             for t in tilts]
    res = assemble_series("TS_9", tilts, tmp_path / "out")
    for mdoc in res.mdoc_paths:
        sections = read_mdoc(mdoc).sections
        by_acquisition = [s.datetime for s in sorted(
            sections, key=lambda s: next(t.acquisition_index for t in tilts
                                         if t.movie == s.sub_frame_name))]
        assert by_acquisition == sorted(by_acquisition), mdoc
        assert len(set(by_acquisition)) == len(by_acquisition)
        assert by_acquisition[:4] == clock[:4]  # as acquired before the step
        steps = [b - a for a, b in zip(by_acquisition, by_acquisition[1:])]
        assert steps == [dt.timedelta(minutes=4)] * 6  # and the intervals, the step's too


def test_a_stack_mdocs_datetime_of_a_tilt_known_by_name_is_its_movies_time_wherever_run(
        tmp_path, monkeypatch):
    """Without a DateTime from any mdoc, a tilt's stack-mdoc time is its movie's modification
    time: the movie was looked up by its bare name in the process's working folder, so a
    daemon started elsewhere wrote the times its sums were written (several tilts in one
    second, Warp's order left to chance)."""
    tilts, _ = _series(tmp_path, n=5)
    watch = tmp_path / "session"
    watch.mkdir()
    recorded = dt.datetime(2026, 11, 1, 5, 30)
    moved = []
    for t in tilts:
        movie = watch / t.movie
        movie.write_bytes(b"frames")
        stamp = (recorded + dt.timedelta(minutes=3 * t.acquisition_index)).timestamp()
        os.utime(movie, (stamp, stamp))
        moved.append(StackTilt(**{**{f: getattr(t, f) for f in StackTilt.__slots__},
                                  "acquired_at": None, "movie_path": str(movie)}))
    monkeypatch.chdir(tmp_path)  # not the watched folder
    res = assemble_series("TS_9", moved, tmp_path / "out")
    sections = read_mdoc(res.folder / "TS_9.st.mdoc").sections
    got = {s.sub_frame_name: s.datetime for s in sections}
    assert got == {t.movie: recorded + dt.timedelta(minutes=3 * t.acquisition_index)
                   for t in moved}


def test_the_exposure_filtered_stack_uses_the_given_voltage(tmp_path):
    rng = np.random.default_rng(1)
    tilts = []
    for i, a in enumerate((0.0, 3.0)):
        p = tmp_path / f"t{i}_sum.mrc"
        with mrcfile.new(p, overwrite=True) as m:
            m.set_data(rng.normal(size=(32, 32)).astype(np.float32))
            m.voxel_size = 1.0
        tilts.append(StackTilt(movie=f"t{i}.tif", tilt_deg=a, acquisition_index=i,
                               dose_e_A2=20.0, pre_exposure_e_A2=20.0 * i,
                               dose_source="ExposureDose", order_source="DateTime",
                               outputs={"sum": p}, drift_total_A=1.0,
                               prior_record_dose_difference_e_A2=None, acquired_at=None,
                               exposure_time_s=1.0))
    res = assemble_series("TS_1", tilts, tmp_path / "out", voltage_kV=200.0,
                          exposure_filtered=True)
    with mrcfile.open(res.stacks["exposure_filtered"]) as m:
        got = np.array(m.data[1])
    with mrcfile.open(tilts[1].outputs["sum"]) as m:
        src = np.array(m.data)
    want = exposure_filter(src, pixel_size_A=1.0, dose_e_A2=40.0, voltage_kV=200.0)
    at300 = exposure_filter(src, pixel_size_A=1.0, dose_e_A2=40.0, voltage_kV=300.0)
    assert not np.allclose(want, at300, atol=1e-4)  # the test can tell the two apart
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_an_exposure_outside_the_stack_is_said_as_aretomo3s_table_cannot_carry_it(tmp_path):
    """A retake's first exposure (3.9 e/Å² before the 4th tilt) is in every later tilt's
    pre-exposure and RELION's STAR; AreTomo3's _TLT.txt sums the listed tilts' doses, so its
    pre-exposures fell short by it from the retake on, and nothing said so."""
    tilts, _ = _series(tmp_path, n=6)
    assert not any("AreTomo3" in w for w in assemble_series("TS_9", tilts,
                                                             tmp_path / "a").warnings)
    retaken = [t if t.acquisition_index < 3 else StackTilt(**{
        **{f: getattr(t, f) for f in StackTilt.__slots__},
        "pre_exposure_e_A2": t.pre_exposure_e_A2 + 3.9}) for t in tilts]
    warnings = assemble_series("TS_9", retaken, tmp_path / "b").warnings
    (said,) = [w for w in warnings if "AreTomo3" in w]
    assert said.startswith(f"TS_9: 3.90 e/Å² exposed outside the stacks' tilts before "
                           f"{tilts[3].movie}")
