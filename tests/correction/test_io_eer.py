"""EER reader: raw frames written by an independent EER writer (tests/helpers/eer_writer.py,
made from the format description) decode, group and super-sample to exact counts."""

from __future__ import annotations

import eer_writer  # tests/helpers (on sys.path via tests/conftest.py)
import numpy as np
import pytest
import tifffile

from correction.errors import (CorrectionError, TruncatedMovieError, UnreadableMovieError,
                               UnsupportedFormatError)
from correction.io import check_complete, read_image, read_movie
from correction.io.eer import group_sizes
from correction.params import ReadParams


SHAPE = (48, 80)
META = [("numberOfFrames", None, "30"), ("sensorPixelSize.width", "m", "8.3e-11"),
        ("totalDose", "e/px", "1.5")]


def _raw_frames(n=30, shape=SHAPE, rate=0.05, seed=4):
    return np.random.default_rng(seed).random((n, *shape)) < rate


@pytest.mark.parametrize("compression, bits, rows_per_strip", [
    (65001, None, None), (65000, None, None), (65002, (7, 2, 2), 16), (65002, (8, 2, 2), None)])
def test_each_eer_compression_decodes_and_groups_to_exact_counts(tmp_path, compression, bits,
                                                                 rows_per_strip):
    raw = _raw_frames()
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, compression=compression,
                                bits=bits, rows_per_strip=rows_per_strip, metadata=META)
    movie = read_movie(path, params=ReadParams(eer_group_frames=7))
    # 30 raw frames in groups of 7: 4 full groups; the 2 left over join the last.
    assert movie.raw_frames_per_frame == (7, 7, 7, 9)
    expected = np.stack([raw[0:7].sum(0), raw[7:14].sum(0), raw[14:21].sum(0), raw[21:30].sum(0)])
    np.testing.assert_array_equal(movie.frames, expected)
    assert movie.frames.dtype == np.uint8
    assert movie.header["compression"] == compression
    assert movie.pixel_size_A == pytest.approx(0.83)


@pytest.mark.parametrize("compression, bits", [(65001, None), (65000, None), (65002, (7, 2, 2))])
def test_a_raw_frame_stored_in_several_strips_is_one_bit_stream_joined_before_decoding(
        tmp_path, compression, bits):
    """The strips of a raw frame are pieces of one stream, cut anywhere (inside a code, at an
    odd byte), as Thermo Fisher's reference reader, RELION, MotionCor3 and cisTEM read them
    (correction/io/eer.py, "Strips"); decoding each strip as an image of its own rows fails."""
    raw = _raw_frames(n=6)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, compression=compression,
                                bits=bits, rows_per_strip=16, metadata=META)
    with tifffile.TiffFile(path) as tif:
        counts = [list(page.databytecounts) for page in tif.pages]
    assert all(len(c) == 3 for c in counts)               # 48 rows, 16 per strip
    assert any(n % 2 for c in counts for n in c)          # some cuts at an odd byte
    movie = read_movie(path, params=ReadParams(eer_group_frames=1))
    np.testing.assert_array_equal(movie.frames, raw)


def test_one_multi_strip_raw_frame_decodes_alone_and_on_the_8k_grid(tmp_path):
    from correction.io.eer import decode_eer_page

    raw = _raw_frames(n=3)
    rng = np.random.default_rng(8)
    sub = [rng.integers(0, 4, (int(f.sum()), 2)) for f in raw]
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, rows_per_strip=10,
                                subpixels=sub, metadata=META)
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(decode_eer_page(tif, -1, path), raw[-1])
    fine = read_movie(path, params=ReadParams(eer_group_frames=1, eer_sampling=2)).frames
    for f, events in enumerate(raw):
        y, x = np.nonzero(events)
        expected = np.zeros((SHAPE[0] * 2, SHAPE[1] * 2), dtype=fine.dtype)
        expected[2 * y + (sub[f][:, 1] >> 1), 2 * x + (sub[f][:, 0] >> 1)] = 1
        np.testing.assert_array_equal(fine[f], expected)


def test_the_independent_writer_agrees_with_tifffile(tmp_path):
    raw = _raw_frames(n=5)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, metadata=META)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_eer
        np.testing.assert_array_equal(tif.asarray(), raw)


def test_default_grouping_is_40_raw_frames(tmp_path):
    raw = _raw_frames(n=100, rate=0.02)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, metadata=META)
    movie = read_movie(path)
    assert movie.raw_frames_per_frame == (40, 40, 20)   # 20 left over: half a group or more
    assert movie.frames.sum() == raw.sum()


def test_grouping_by_target_dose_uses_metadata_dose(tmp_path):
    # totalDose 1.5 e/px over 30 frames = 0.05 e/px per raw frame = 0.05/0.83² e/Å².
    raw = _raw_frames()
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, metadata=META)
    per_raw = 0.05 / 0.83 ** 2
    movie = read_movie(path, params=ReadParams(eer_dose_per_fraction_e_A2=6 * per_raw))
    assert movie.raw_frames_per_frame == (6,) * 5
    assert movie.dose_per_frame_e_A2 == pytest.approx(6 * per_raw)
    assert movie.header["eer_dose_source"] == "metadata"


def test_grouping_by_dose_without_metadata_dose_measures_counts(tmp_path):
    raw = np.zeros((20, *SHAPE), bool)
    raw.reshape(20, -1)[:, ::10] = True               # exactly 0.1 events per pixel per frame
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE,
                                metadata=[("numberOfFrames", None, "20")])
    movie = read_movie(path, params=ReadParams(pixel_size_A=1.0, eer_dose_per_fraction_e_A2=0.5))
    assert movie.raw_frames_per_frame == (5, 5, 5, 5)
    assert movie.header["eer_dose_source"] == "counts"


def test_grouping_by_dose_takes_the_dose_given_for_the_movie_over_the_counted_one(tmp_path):
    """The counts fall 1.6-2.8 times below the specimen's dose at high tilt: grouped by the
    counted dose, fractions carried twice the dose asked for while the weighting spread the
    dose given over them (the dose given decides, as it does the weights)."""
    raw = np.zeros((20, *SHAPE), bool)
    raw.reshape(20, -1)[:, ::10] = True               # counted: 0.1 e/Å² per raw frame at 1 Å
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE,
                                metadata=[("numberOfFrames", None, "20")])
    params = ReadParams(pixel_size_A=1.0, eer_dose_per_fraction_e_A2=1.0)
    movie = read_movie(path, params=params, movie_dose_e_A2=4.0)  # 0.2 e/Å² per raw frame
    assert movie.raw_frames_per_frame == (5, 5, 5, 5)
    assert movie.header["eer_dose_source"] == "given"
    assert read_movie(path, params=params).raw_frames_per_frame == (10, 10)  # counted
    from correction.params import AlignParams, CorrectionParams, DoseParams
    from correction.pipeline import correct_movie

    record = correct_movie(path, tmp_path / "out", CorrectionParams(
        dose=DoseParams(total_dose_e_A2=4.0), read=params,
        align=AlignParams(patches_x=1, patches_y=1))).record
    assert record["eer"]["raw_frames_per_fraction"] == [5, 5, 5, 5]  # the movie's, as given


def test_dose_grouping_without_any_pixel_size_is_a_clear_error(tmp_path):
    path = eer_writer.write_eer(tmp_path / "m.eer", _raw_frames(n=4), shape_yx=SHAPE,
                                metadata=[("numberOfFrames", None, "4")])
    with pytest.raises(UnreadableMovieError, match=r"m\.eer: cannot group EER frames by dose"):
        read_movie(path, params=ReadParams(eer_dose_per_fraction_e_A2=1.0))


def test_sampling_2_places_events_by_their_first_subpixel_bit_on_the_8k_grid(tmp_path):
    rng = np.random.default_rng(9)
    raw = _raw_frames(n=6)
    subpixels = [rng.integers(0, 4, (int(f.sum()), 2)) for f in raw]
    path = eer_writer.write_eer(tmp_path / "s.eer", raw, shape_yx=SHAPE, subpixels=subpixels,
                                metadata=META)
    movie = read_movie(path, params=ReadParams(eer_group_frames=6, eer_sampling=2))
    expected = np.zeros((2 * SHAPE[0], 2 * SHAPE[1]), np.int64)
    for frame, sub in zip(raw, subpixels):
        yy, xx = np.nonzero(frame)
        np.add.at(expected, (2 * yy + (sub[:, 1] >> 1), 2 * xx + (sub[:, 0] >> 1)), 1)
    assert movie.frames.shape == (1, 2 * SHAPE[0], 2 * SHAPE[1])
    np.testing.assert_array_equal(movie.frames[0], expected)
    assert movie.pixel_size_A == pytest.approx(0.415)
    assert movie.header["super_resolution_factor"] == 2


def test_integrated_image_page_before_the_raw_frames_is_skipped(tmp_path):
    raw = _raw_frames(n=8)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, metadata=META,
                                integrated_image=raw.sum(0).astype(np.uint16))
    movie = read_movie(path, params=ReadParams(eer_group_frames=4))
    assert movie.header["raw_frames"] == 8
    np.testing.assert_array_equal(movie.frames, [raw[:4].sum(0), raw[4:].sum(0)])


def test_an_eer_with_an_integrated_image_first_is_complete_and_every_cut_of_it_is_not(tmp_path):
    """EerReaderLib's EerFile takes a first page that is not EER-compressed as the file's final
    (integrated) image and reads the raw frames after it. Before, the completeness check
    compared that page with the raw frames ("TIFF pages differ") and the movie was quarantined
    as incomplete; a cut before the first raw frame raised tifffile's own error."""
    raw = _raw_frames(n=8)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, metadata=META,
                                integrated_image=raw.sum(0).astype(np.uint16))
    verdict = check_complete(path)
    assert verdict.complete and verdict.n_frames == 8, verdict.reason
    data = path.read_bytes()
    cut = tmp_path / "cut.eer"
    for size in range(64, len(data), max(1, len(data) // 97)):
        cut.write_bytes(data[:size])
        assert not check_complete(cut).complete, size
        with pytest.raises(CorrectionError):
            read_movie(cut, params=ReadParams(eer_group_frames=4))


def test_more_than_255_raw_frames_per_fraction_use_uint16(tmp_path):
    raw = np.ones((300, 4, 6), bool)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(4, 6), metadata=META)
    movie = read_movie(path, params=ReadParams(eer_group_frames=300))
    assert movie.frames.dtype == np.uint16
    assert np.all(movie.frames == 300)


def test_eer_cut_while_being_written_is_truncated_and_incomplete(tmp_path):
    path = eer_writer.write_eer(tmp_path / "cut.eer", _raw_frames(), shape_yx=SHAPE, metadata=META)
    assert check_complete(path).complete
    assert check_complete(path).n_frames == 30
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * 0.6)])
    with pytest.raises(TruncatedMovieError, match=r"cut\.eer: .*raw frames readable"):
        read_movie(path)
    assert not check_complete(path).complete


@pytest.mark.parametrize("where", ["start", "tags", "next pointer"])
def test_eer_cut_inside_the_ifd_being_written_is_truncated_and_incomplete(tmp_path, where):
    path = eer_writer.write_eer(tmp_path / "cut.eer", _raw_frames(n=6), shape_yx=SHAPE,
                                metadata=META)
    with tifffile.TiffFile(path) as tif:
        offset, n_tags = tif.pages[4].offset, len(tif.pages[4].tags)
    # BigTIFF IFD: 8-byte tag count, 20-byte entries, 8-byte next pointer
    cut = {"start": offset + 1, "tags": offset + 8 + 20 * 2,
           "next pointer": offset + 8 + 20 * n_tags + 4}[where]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(TruncatedMovieError, match=r"cut\.eer: .*4 .*raw frames readable"):
        read_movie(path, params=ReadParams(eer_group_frames=6))
    assert not check_complete(path).complete


def test_unknown_eer_compression_is_unsupported(tmp_path):
    path = eer_writer.write_eer(tmp_path / "new.eer", _raw_frames(n=2), shape_yx=SHAPE,
                                compression=65003, metadata=META)
    with pytest.raises(UnsupportedFormatError, match=r"new\.eer: EER page 0 has compression "
                                                     r"65003"):
        read_movie(path)


def test_eer_gain_file_is_a_tiff_reference(tmp_path):
    gain = np.random.default_rng(2).uniform(0.8, 1.2, SHAPE).astype(np.float32)
    path = tmp_path / "20240101_gain.gain"
    tifffile.imwrite(path, gain)
    image, _ = read_image(path)
    np.testing.assert_array_equal(image, gain)


@pytest.mark.parametrize("n_raw, group, expected", [
    (600, 40, (40,) * 15), (610, 40, (40,) * 14 + (50,)), (620, 40, (40,) * 15 + (20,)),
    (30, 40, (30,)), (1, 1, (1,))])
def test_group_sizes_cover_every_raw_frame(n_raw, group, expected):
    sizes = group_sizes(n_raw, group)
    assert sizes == expected and sum(sizes) == n_raw


def test_a_given_pixel_size_is_the_decoded_grids_and_the_files_own_the_physical_one(tmp_path):
    """As MotionCor2's -PixSize with -EerSampling and RELION's EER import ("the physical pixel
    size unless you plan to render EER on the 8K grid"): a pixel size given is that of the grid
    decoded onto; the file's sensorPixelSize is the physical pixel, halved on the 8K grid."""
    path = eer_writer.write_eer(tmp_path / "m.eer", _raw_frames(n=4), shape_yx=SHAPE,
                                metadata=[("numberOfFrames", None, "4"),
                                          ("sensorPixelSize.width", "m", "0.9e-10")])
    assert read_movie(path, params=ReadParams(pixel_size_A=0.8)).pixel_size_A == 0.8
    assert read_movie(path, params=ReadParams(pixel_size_A=0.45, eer_sampling=2)
                      ).pixel_size_A == 0.45
    assert read_movie(path).pixel_size_A == 0.9  # 0.9e-10 m: not 0.8999999999999999
    assert read_movie(path, params=ReadParams(eer_sampling=2)).pixel_size_A == 0.45
    # the file's own value on the decoded grid, kept beside a given one (to warn of a mismatch)
    assert read_movie(path, params=ReadParams(pixel_size_A=0.8)
                      ).header["header_pixel_size_A"] == 0.9
    assert read_movie(path, params=ReadParams(pixel_size_A=0.45, eer_sampling=2)
                      ).header["header_pixel_size_A"] == 0.45


def test_decoder_adds_events_into_uint8_and_uint16_fractions_with_this_imagecodecs():
    """The fast path (decoding straight into the fraction) is taken with the pinned imagecodecs;
    if a new version stops accumulating, the reader falls back to a buffer (test below)."""
    from correction.io.eer import EerLayout, _decoder_accumulates

    layout = EerLayout(first_page=0, n_raw=1, shape_yx=(4, 4), compression=65001, skip_bits=7,
                       horz_bits=2, vert_bits=2, strips=[], rows_per_strip=4, metadata={},
                       units={}, file_size=0)
    assert _decoder_accumulates(np.dtype(np.uint8), layout)
    assert _decoder_accumulates(np.dtype(np.uint16), layout)


@pytest.mark.parametrize("group", [7, 300])
def test_buffered_fallback_decodes_the_same_counts_as_direct_accumulation(tmp_path, monkeypatch,
                                                                         group):
    import correction.io.eer as eer

    raw = _raw_frames(n=30)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=SHAPE, rows_per_strip=16,
                                metadata=META)
    direct = read_movie(path, params=ReadParams(eer_group_frames=group)).frames
    monkeypatch.setattr(eer, "_decoder_accumulates", lambda dtype, layout: False)
    buffered = read_movie(path, params=ReadParams(eer_group_frames=group)).frames
    expected = np.stack([raw[s:s + n].sum(0) for s, n in
                         zip(np.cumsum((0,) + group_sizes(30, group))[:-1], group_sizes(30, group))])
    np.testing.assert_array_equal(direct, expected)
    np.testing.assert_array_equal(buffered, expected)


def _drifting_eer(path, *, shape, n_raw, group, rate, truth_yx, seed):
    """An EER movie of a specimen that moves by ``truth_yx[f]`` in fraction f of the reader's
    grouping by ``group`` (:func:`eer_writer.write_drifting_eer`)."""
    return eer_writer.write_drifting_eer(path, shape=shape, sizes=group_sizes(n_raw, group),
                                         rate=rate, truth_yx=truth_yx, seed=seed)


def test_eer_movie_corrected_end_to_end_records_its_grouping_in_motion_json(tmp_path):
    import json

    from correction.params import AlignParams, CorrectionParams, DoseParams
    from correction.pipeline import correct_movie

    truth = np.array([[-1.5, 2.0], [0.2, -0.4], [1.3, -1.6]])
    path = _drifting_eer(tmp_path / "e2e.eer", shape=(512, 512), n_raw=60, group=20, rate=0.1,
                         truth_yx=truth, seed=5)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=2.0 / 1.1 ** 2),
                              read=ReadParams(eer_group_frames=20),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=20))
    result = correct_movie(path, tmp_path / "out", params)
    record = json.loads(result.outputs["motion"].read_text())
    assert record["frames"] == 3 and record["frames_in_movie"] == 3
    assert record["shape"] == [512, 512] and record["pixel_size_A"] == pytest.approx(1.1)
    assert record["eer"] == {"raw_frames": 60, "fractions": 3, "group_frames": 20,
                             "grouped_by": "frames", "raw_frames_per_fraction": [20, 20, 20],
                             "sampling": 1}
    found = np.array(record["global_shifts_px"])[:, ::-1]          # [dx, dy] -> [dy, dx]
    np.testing.assert_allclose(found, truth - truth.mean(0), atol=0.15)


def test_eer_grouped_by_dose_records_the_dose_per_raw_frame_and_uneven_last_fraction(tmp_path):
    import json

    from correction.params import AlignParams, CorrectionParams, DoseParams
    from correction.pipeline import correct_movie

    truth = np.zeros((3, 2))
    # 0.1 e/px per raw frame at 1.1 Å: 0.0826 e/Å² each; 1.6 e/Å² per fraction -> 19 raw frames
    path = _drifting_eer(tmp_path / "dose.eer", shape=(256, 256), n_raw=60, group=20, rate=0.1,
                         truth_yx=truth, seed=6)
    params = CorrectionParams(dose=DoseParams(total_dose_e_A2=60 * 0.1 / 1.1 ** 2),
                              read=ReadParams(eer_dose_per_fraction_e_A2=1.6, throw_frames=1),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=20))
    record = correct_movie(path, tmp_path / "out", params).record
    assert record == json.loads((tmp_path / "out" / "dose.motion.json").read_text())
    assert record["eer"]["grouped_by"] == "dose" and record["eer"]["group_frames"] == 19
    assert record["eer"]["raw_frames_per_fraction"] == [19, 19, 22]
    assert record["eer"]["dose_per_raw_frame_e_A2"] == pytest.approx(0.1 / 1.1 ** 2)
    assert record["frames_in_movie"] == 3 and record["frames"] == 2 and record["throw_frames"] == 1


def test_physical_eer_gain_applies_to_a_sampling_2_movie_through_correct_movie(tmp_path):
    """A 4K-like ``.gain`` (TIFF) with an 8K-like decoding: the pipeline repeats each gain pixel
    over its 2 x 2 sub-pixels; the left half's gain of 3 triples that half's corrected counts."""
    import mrcfile

    from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
    from correction.pipeline import correct_movie

    shape = (128, 128)
    path = _drifting_eer(tmp_path / "g.eer", shape=shape, n_raw=40, group=10, rate=0.2,
                         truth_yx=np.zeros((4, 2)), seed=9)
    gain = np.ones(shape, np.float32)
    gain[:, :64] = 3.0
    tifffile.imwrite(tmp_path / "ref.gain", gain)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(eer_group_frames=10, eer_sampling=2,
                                              bin_factor=2.0),  # back to the physical grid
                              gain=GainParams(gain_path=tmp_path / "ref.gain",
                                              detect_hot_pixels=False),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=8))
    result = correct_movie(path, tmp_path / "out", params)
    assert result.record["shape"] == list(shape)
    with mrcfile.open(result.outputs["sum"]) as mrc:
        image = mrc.data.astype(np.float64)
    raw = read_movie(path, params=ReadParams(eer_group_frames=10)).frames.sum(0, dtype=np.int64)
    # away from the gain step (Fourier binning rings across it) and the frame edges
    left, right = np.s_[8:-8, 8:48], np.s_[8:-8, 80:-8]
    assert image[left].sum() / raw[left].sum() == pytest.approx(3.0, rel=0.03)
    assert image[right].sum() / raw[right].sum() == pytest.approx(1.0, rel=0.03)


def _flat_field_eer(tmp_path, response, *, n_raw=40, rate=0.25, seed=12):
    """An EER movie of an empty (uniform) beam on a detector whose pixels respond by
    ``response``: each pixel holds an event with probability ``rate * response``."""
    rng = np.random.default_rng(seed)
    raw = rng.random((n_raw, *response.shape)) < rate * response
    return eer_writer.write_eer(tmp_path / "flat.eer", raw, shape_yx=response.shape, metadata=[
        ("numberOfFrames", None, str(n_raw)), ("sensorPixelSize.width", "m", "1.1e-10")])


def _correct_flat_field(tmp_path, path, gain_name: str, gain: np.ndarray, eer_gain: str, *,
                        flip_tiff: bool, defects_path=None):
    """``path`` corrected with ``gain`` written as ``gain_name`` (MRC, or TIFF with its rows
    reversed when ``flip_tiff``) under ``--eer-gain eer_gain`` ("default": not given), and
    the defect list ``defects_path`` if given."""
    import mrcfile

    from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
    from correction.pipeline import correct_movie

    if gain_name.endswith(".mrc"):
        mrcfile.new(tmp_path / gain_name, data=gain).close()
    else:
        tifffile.imwrite(tmp_path / gain_name, gain[::-1] if flip_tiff else gain)
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(eer_group_frames=10),
                              gain=GainParams(gain_path=tmp_path / gain_name,
                                              detect_hot_pixels=False,
                                              defects_path=defects_path,
                                              **({} if eer_gain == "default" else
                                                 {"eer_gain": eer_gain})),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=4))
    return correct_movie(path, tmp_path / "out", params)


def _assert_flat_at_raw_scale(result, response: np.ndarray) -> None:
    """The corrected sum of an empty beam (40 raw frames at 0.25 events per pixel) no longer
    follows the detector's response and keeps the raw counts' scale."""
    import mrcfile

    with mrcfile.open(result.outputs["sum"]) as mrc:
        image = mrc.data.astype(np.float64)[8:-8, 8:-8]
    inner = response[8:-8, 8:-8].ravel()
    assert abs(np.corrcoef(image.ravel(), inner)[0, 1]) < 0.1   # the response is gone
    assert image.mean() == pytest.approx(40 * 0.25 * response.mean(), rel=0.05)  # raw scale


@pytest.mark.parametrize("gain_name, eer_gain", [("count.mrc", "relion"), ("count.tif", "relion"),
                                                 ("count.mrc", "reciprocal"),
                                                 ("mult.mrc", "default"), ("mult.gain", "default"),
                                                 ("mult.gain", "relion")])
def test_each_eer_gain_rule_flattens_an_empty_beam_with_the_gain_file_it_is_meant_for(
        tmp_path, gain_name, eer_gain):
    """``--eer-gain relion`` (RELION's EERRenderer::loadEERGain): an EER gain that is not a
    ``.gain`` file is a count image (a flat exposure's counts, as Thermo Fisher's
    makeEerGain_raw2mrc.py writes it), applied as mean / gain, and a ``.gain`` is a multiplier;
    the default (MotionCor2's ``-Gain``) multiplies by any file. Each way an empty beam comes
    out flat with its kind of file: the corrected sum no longer follows the detector's
    response (a count image used as a multiplier squares it)."""
    shape = (128, 128)
    response = np.random.default_rng(3).uniform(0.6, 1.4, shape).astype(np.float32)
    path = _flat_field_eer(tmp_path, response)
    counts = response * 5000                      # the flat exposure of the gain reference
    gain = counts if gain_name.startswith("count") else counts.mean() / counts
    # a TIFF's rows are stored top row first (a .gain is read in stored order)
    result = _correct_flat_field(tmp_path, path, gain_name, gain, eer_gain,
                                 flip_tiff=not gain_name.endswith(".gain"))
    _assert_flat_at_raw_scale(result, response)
    refs = result.record["references"]
    assert refs["gain_applied_as"] == ("reciprocal" if gain_name.startswith("count")
                                       else "multiplicative")
    assert gain_name in refs["eer_gain_rule"]


@pytest.mark.parametrize("gain_name, eer_gain", [("mult.gain", "default"),
                                                 ("count.mrc", "relion")])
def test_an_8k_eer_gain_flattens_a_movie_decoded_at_4k(tmp_path, gain_name, eer_gain):
    """An EER gain on the sub-pixel (8K) grid for frames decoded on the physical (4K) grid,
    as RELION's EERRenderer::loadEERGain accepts it: each physical pixel counts the events of
    its 2 x 2 sub-pixels, so its response is their mean response. An empty beam comes out flat
    at the raw counts' scale, whichever kind of file; before, the gain was refused."""
    physical = (128, 128)
    sub_response = np.random.default_rng(4).uniform(0.5, 1.5, (256, 256)).astype(np.float32)
    response = sub_response.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    path = _flat_field_eer(tmp_path, response)
    counts = sub_response * 5000                  # the flat exposure on the 8K grid
    gain = counts if gain_name.startswith("count") else counts.mean() / counts
    result = _correct_flat_field(tmp_path, path, gain_name, gain, eer_gain, flip_tiff=False)
    assert result.record["shape"] == list(physical)
    _assert_flat_at_raw_scale(result, response)
    refs = result.record["references"]
    assert refs["gain_binned_by"] == 2 and refs["gain_expanded_by"] == 1


def test_a_defect_list_with_an_8k_gain_names_pixels_of_the_movie_decoded_at_4k(tmp_path):
    """The defect list is in the movie's pixel grid (RELION fills its defect mask on the
    rendered frames), whatever the gain's grid: a hot column of the 4K frames listed as
    ``50 0 1 128`` is replaced; before, the list was read on the 8K gain's grid, so column 25
    was replaced and the hot column stayed (3.4 times its neighbours)."""
    sub_response = np.random.default_rng(6).uniform(0.8, 1.2, (256, 256)).astype(np.float32)
    response = sub_response.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    hot = response.copy()
    hot[:, 50] = 3.5                              # a column the gain reference does not show
    path = _flat_field_eer(tmp_path, hot)
    gain = (sub_response * 5000).mean() / (sub_response * 5000)
    (tmp_path / "defects.txt").write_text("50 0 1 128\n")
    result = _correct_flat_field(tmp_path, path, "mult.gain", gain, "default",
                                 flip_tiff=False, defects_path=tmp_path / "defects.txt")
    import mrcfile

    with mrcfile.open(result.outputs["sum"]) as mrc:
        image = mrc.data.astype(np.float64)[8:-8]
    assert image[:, 50].mean() / image.mean() == pytest.approx(1.0, abs=0.1)
    assert image[:, 25].mean() / image.mean() == pytest.approx(1.0, abs=0.1)


def test_an_8k_gain_combines_sub_pixels_by_their_mean_response_and_any_defect():
    """A physical pixel's multiplier is the harmonic mean of its sub-pixels' (1 / mean
    response); one defect sub-pixel (a hot one's events land in it) makes it a defect; dark
    counts add up."""
    from correction.gain import GainReference

    gain = np.array([[1.0, 2.0, 1.0, 1.0],
                     [4.0, 4.0, 0.0, 1.0]], np.float32)
    dark = np.array([[1.0, 2.0, 0.5, 0.5],
                     [3.0, 4.0, 0.5, 0.5]], np.float32)
    coarse = GainReference.from_arrays(gain, dark=dark).onto_coarser_grid(2)
    assert coarse.shape_yx == (1, 2)
    np.testing.assert_allclose(coarse.gain, [[4 / (1 + 0.5 + 0.25 + 0.25), 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(coarse.defect_mask, [[False, True]])
    np.testing.assert_allclose(coarse.dark, [[10.0, 0.0]])


def test_an_eer_count_image_used_as_a_multiplier_is_reported_with_the_other_way(tmp_path):
    """Forced the wrong way (a count image as a multiplier), the response is squared into the
    frames; the detector-pattern check reports it and names the --eer-gain to try."""
    import mrcfile

    from correction.params import AlignParams, CorrectionParams, DoseParams, GainParams
    from correction.pipeline import correct_movie

    response = np.random.default_rng(3).uniform(0.6, 1.4, (128, 128)).astype(np.float32)
    path = _flat_field_eer(tmp_path, response)
    mrcfile.new(tmp_path / "count.mrc", data=response * 5000).close()
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(eer_group_frames=10),
                              gain=GainParams(gain_path=tmp_path / "count.mrc",
                                              eer_gain="multiplicative", detect_hot_pixels=False),
                              align=AlignParams(patches_x=1, patches_y=1, max_shift_px=4))
    with pytest.warns(UserWarning, match="pattern fixed to the detector"):
        record = correct_movie(path, tmp_path / "out", params).record
    pattern = record["detector_pattern"]
    assert pattern["detected"]
    assert "count.mrc applied as a multiplier (as MotionCor2's -Gain" in pattern["message"]
    assert "try --eer-gain reciprocal" in pattern["message"]


def test_an_8k_gains_defect_sub_pixel_is_listed_for_relion_on_the_4k_grid(tmp_path):
    """One defect sub-pixel makes its physical pixel a defect here; RELION combines the 8K gain
    itself (summing multipliers) and masks a pixel only where all four sub-pixels are zero, so
    the pixel must be listed for polishing (``replaced_pixels``), not left to the gain."""
    sub_response = np.random.default_rng(7).uniform(0.8, 1.2, (256, 256)).astype(np.float32)
    response = sub_response.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    path = _flat_field_eer(tmp_path, response)
    gain = (sub_response * 5000).mean() / (sub_response * 5000)
    gain[81, 40] = 0.0  # one defect sub-pixel: physical pixel (40, 20)
    result = _correct_flat_field(tmp_path, path, "mult.gain", gain, "default", flip_tiff=False)
    replaced = result.record["replaced_pixels"]
    assert [40, 20] in replaced["yx"] and replaced["others_in"] is None


def test_sampling_2_of_an_eer_file_with_wider_sub_pixel_fields_is_refused_and_sampling_1_reads(
        tmp_path):
    """RELION reads 2-bit sub-pixel fields only; the decoder put 3-bit fields' sub-pixels on
    the wrong 8K column (it XORs as for 2 bits), so such files were read at sampling 2 with
    their events misplaced. Sampling 1 does not use the fields."""
    frames = [np.random.default_rng(i).random((16, 16)) < 0.05 for i in range(3)]
    path = eer_writer.write_eer(tmp_path / "wide.eer", frames, shape_yx=(16, 16), compression=65002,
                     bits=(6, 3, 3))
    with pytest.raises(UnsupportedFormatError, match=r"wide\.eer: EER sub-pixel fields of 3 x 3 "
                                                     r"bits: sampling 2 is read only"):
        read_movie(path, params=ReadParams(pixel_size_A=1.0, eer_sampling=2, eer_group_frames=1))
    movie = read_movie(path, params=ReadParams(pixel_size_A=1.0, eer_group_frames=1))
    np.testing.assert_array_equal(np.asarray(movie.frames), np.array(frames))


def test_256_raw_frames_per_fraction_count_to_256_not_0(tmp_path):
    raw = np.ones((256, 4, 6), bool)
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(4, 6))
    movie = read_movie(path, params=ReadParams(eer_group_frames=256))
    assert movie.raw_frames_per_frame == (256,)
    assert np.all(movie.frames == 256)



def test_dose_grouping_rounds_to_the_nearest_raw_frame_count(tmp_path):
    raw = np.random.default_rng(4).random((30, 48, 80)) < 0.05
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(48, 80), metadata=META)
    per_raw = 0.05 / 0.83 ** 2
    movie = read_movie(path, params=ReadParams(eer_dose_per_fraction_e_A2=5.7 * per_raw))
    assert movie.header["eer_group_frames"] == 6
    assert movie.raw_frames_per_frame == (6,) * 5



def test_sensor_pixel_size_in_nanometres(tmp_path):
    raw = np.random.default_rng(4).random((4, 48, 80)) < 0.05
    meta = [("sensorPixelSize.width", "nm", "0.083")]
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(48, 80), metadata=meta)
    assert read_movie(path).pixel_size_A == pytest.approx(0.83)



def test_a_raw_frame_stored_in_an_odd_number_of_bytes_decodes(tmp_path, monkeypatch):
    original = eer_writer.encode_strip

    def unpadded(positions, n_pixels, **kw):
        stream = original(positions, n_pixels, **kw)
        assert n_pixels < 127                      # no run codes: (events + 1) codes of 11 bits
        return stream[:(11 * (len(positions) + 1) + 7) // 8]

    monkeypatch.setattr(eer_writer, "encode_strip", unpadded)
    raw = np.zeros((3, 4, 6), bool)
    raw[:, 1, 2] = True                            # one event: 22 bits, 3 bytes
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(4, 6))
    with tifffile.TiffFile(path) as tif:
        assert all(int(p.databytecounts[0]) % 2 for p in tif.pages)
    movie = read_movie(path, params=ReadParams(eer_group_frames=3))
    np.testing.assert_array_equal(movie.frames[0], raw.sum(axis=0))



def test_no_dose_per_fraction_is_reported_when_the_dose_was_only_measured(tmp_path):
    raw = np.random.default_rng(4).random((30, 48, 80)) < 0.05
    meta = [("sensorPixelSize.width", "m", "8.3e-11")]          # no totalDose
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(48, 80), metadata=meta)
    movie = read_movie(path, params=ReadParams(eer_dose_per_fraction_e_A2=0.4))
    assert movie.header["eer_dose_source"] == "counts"
    assert movie.dose_per_frame_e_A2 is None                    # read_eer docstring



def test_an_eer_with_an_integrated_image_first_is_eer_whatever_its_suffix(tmp_path):
    from correction.io import detect_format

    raw = np.random.default_rng(4).random((8, 48, 80)) < 0.05
    path = eer_writer.write_eer(tmp_path / "m.tif", raw, shape_yx=(48, 80),
                                integrated_image=raw.sum(0).astype(np.uint16))
    assert detect_format(path) == "eer"
    movie = read_movie(path, params=ReadParams(eer_group_frames=8))
    np.testing.assert_array_equal(movie.frames[0], raw.sum(0))


def test_a_movie_shorter_than_one_group_reports_a_whole_groups_dose_that_scales_to_its_own(
        tmp_path):
    """30 raw frames and the default group of 40: one fraction of 30. The reader reports the
    dose of a whole group (40 raw frames), as for every movie; scaled by the fraction's 30 of
    40 (:func:`correction.dose.frame_doses_e_A2`), it gives the metadata's totalDose."""
    from correction.dose import frame_doses_e_A2
    from correction.params import DoseParams

    path = eer_writer.write_eer(tmp_path / "short.eer", _raw_frames(n=30), shape_yx=SHAPE,
                                metadata=META)             # totalDose 1.5 e/px, 0.83 Å
    movie = read_movie(path)
    assert movie.raw_frames_per_frame == (30,) and movie.header["eer_group_frames"] == 40
    per_raw_e_A2 = 1.5 / 30 / 0.83 ** 2
    assert movie.dose_per_frame_e_A2 == pytest.approx(40 * per_raw_e_A2)
    doses = frame_doses_e_A2(DoseParams(dose_per_frame_e_A2=movie.dose_per_frame_e_A2), 1,
                             raw_frames_per_frame=movie.raw_frames_per_frame,
                             raw_frames_per_group=movie.header["eer_group_frames"])
    assert doses.sum() == pytest.approx(1.5 / 0.83 ** 2)


def test_an_eer_movie_grouped_into_one_fraction_is_named_as_such_not_as_a_single_image(
        tmp_path):
    """50 raw frames under the default group of 40 make one fraction (the 10 left over join
    it): the movie cannot be aligned, and the error says why and what to change."""
    from correction.params import CorrectionParams, DoseParams
    from correction.pipeline import correct_movie

    path = eer_writer.write_eer(tmp_path / "short.eer", _raw_frames(n=50), shape_yx=SHAPE,
                                metadata=META)
    params = CorrectionParams(dose=DoseParams(total_dose_e_A2=2.0))
    with pytest.raises(CorrectionError) as info:
        correct_movie(path, tmp_path / "out", params)
    assert str(info.value) == (
        f"{path}: its 50 raw EER frames grouped by 40 make 1 fraction: nothing to align; group "
        "fewer raw frames per fraction (--eer-group or --eer-dose-per-fraction; TOML eer_group "
        "or eer_dose_per_fraction)")
    params = CorrectionParams(dose=DoseParams(total_dose_e_A2=2.0),
                              read=ReadParams(eer_group_frames=10))
    assert correct_movie(path, tmp_path / "out", params).record["frames"] == 5


def test_a_raw_frame_whose_data_are_all_zero_bytes_is_damaged_not_a_frame(tmp_path):
    """Zero bytes are codes of zero-length runs: an event on every pixel. A raw frame whose
    stored data were zeroed (a disk error) was decoded as a frame lit all over, without a
    word, and the movie aligned to nothing (drift 0 against 32 Å intact)."""
    rng = np.random.default_rng(6)
    raw = [(rng.random((64, 64)) < 0.1).astype(np.uint8) for _ in range(20)]
    path = eer_writer.write_eer(tmp_path / "m.eer", raw, shape_yx=(64, 64))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[7]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableMovieError, match="raw frame 7's data .* all zero bytes"):
        read_movie(path, params=ReadParams(eer_group_frames=5))


def test_a_whole_eer_with_a_damaged_page_directory_is_not_said_to_be_cut(tmp_path):
    """As a TIFF's: the reason said "file cut at byte <its size>" of a whole file."""
    import struct

    path = tmp_path / "m.eer"
    rng = np.random.default_rng(3)
    eer_writer.write_eer(path, [(rng.random((64, 64)) < 0.05).astype(np.uint8)
                                for _ in range(8)], shape_yx=(64, 64))
    whole = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        fifth = tif.pages[4].offset
    damaged = bytearray(whole)
    struct.pack_into("<H", damaged, fifth, 0xFFFF)
    path.write_bytes(bytes(damaged))
    with pytest.raises(TruncatedMovieError, match=rf"4 raw frames readable; the next page's "
                                                  rf"IFD, at byte {fifth} of the file's "
                                                  rf"{len(whole)}, is not a whole IFD"):
        read_movie(path)



@pytest.mark.parametrize("from_tiles", [False, True])
def test_an_eer_movies_last_fraction_of_half_a_group_counts_by_its_dose_in_the_weighted_sums(
        tmp_path, monkeypatch, from_tiles):
    """95 raw frames grouped by 10: nine fractions of 10 and one of the 5 left (half the dose,
    half the shot noise). Each dose-weighted sum keeps, at high frequency, the noise power of
    the plain sum of its own frames; counting the last fraction as a whole one gave the
    dose-weighted sum 3.5 % and the odd half (which holds it) 5-8 % too much. The sums are
    made from the frames' spectra, or from tiles (a patch grid, no spectra kept: as for a
    movie too large to keep them)."""
    import mrcfile
    from noise_power import noise_power_ratios
    from scipy.ndimage import gaussian_filter

    import correction.pipeline as pipeline
    from correction.params import AlignParams, CorrectionParams, DoseParams

    rng = np.random.default_rng(21)
    shape, rate = (512, 512), 0.1
    # a specimen of low frequencies only (it pins the alignment at zero shift and leaves shot
    # noise alone above 0.2 1/Å)
    specimen = 1.0 + 0.5 * gaussian_filter(rng.normal(size=shape), 6.0) / 0.05
    p = np.clip(rate * specimen, 0, 1).astype(np.float32)
    raw = [rng.random(shape, dtype=np.float32) < p for _ in range(95)]
    path = eer_writer.write_eer(tmp_path / "ragged.eer", raw, shape_yx=shape, metadata=[
        ("numberOfFrames", None, "95"), ("sensorPixelSize.width", "m", "1.0e-10")])
    tile_calls = []
    if from_tiles:
        monkeypatch.setattr(pipeline, "frames_kept_for", lambda *args, **kwargs: 0)
        real_local_sums = pipeline.local_sums
        monkeypatch.setattr(pipeline, "local_sums", lambda *args, **kwargs: (
            tile_calls.append(1), real_local_sums(*args, **kwargs))[1])
    patches = 3 if from_tiles else 1
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0),
                              read=ReadParams(eer_group_frames=10),
                              align=AlignParams(patches_x=patches, patches_y=patches,
                                                max_shift_px=4))
    result = pipeline.correct_movie(path, tmp_path / "out", params)
    assert result.record["eer"]["raw_frames_per_fraction"] == [10] * 9 + [5]
    assert len(tile_calls) == int(from_tiles)
    images = {}
    for name in ("sum", "dw", "even", "odd"):
        with mrcfile.open(result.outputs[name], permissive=True) as mrc:
            images[name] = np.asarray(mrc.data, dtype=np.float64)
    for key, ratio in noise_power_ratios(images, [1.0] * 9 + [0.5], 1.0).items():
        assert ratio == pytest.approx(1.0, abs=0.025), (key, ratio)
