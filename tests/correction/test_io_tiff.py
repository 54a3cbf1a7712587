"""TIFF reader: K2/K3-style multi-page movies decode exactly; cut files and odd layouts fail
with one-line errors naming the file. Fixtures are written with tifffile."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tifffile

from correction.errors import TruncatedMovieError, UnreadableMovieError, UnsupportedFormatError
from correction.io import check_complete, read_image, read_movie


def _movie(dtype, shape=(8, 48, 40), seed=7):
    rng = np.random.default_rng(seed)
    hi = 4 if dtype == np.uint8 else 3000
    return rng.integers(0, hi, size=shape).astype(dtype)


def mrc_rows(stored: np.ndarray) -> np.ndarray:
    """A TIFF's pages as the readers give them: rows reversed (the stored top row last), the
    MRC row order in which IMOD, SerialEM, MotionCor2 and RELION read a TIFF."""
    return stored[..., ::-1, :]


def test_a_tiff_movie_is_read_bottom_row_first_as_imod_motioncor2_and_relion_read_it(tmp_path):
    """RELION (``src/rwTIFF.h``): "IMOD, EMAN2, SerialEM and MotionCor2 flip the Y axis whenever
    they read or write a TIFF file". Before, frames kept the stored order: every TIFF movie's
    sums were the mirror image of MotionCor2's and RELION's (a tomogram of the other hand, the
    mdoc's tilt axis mirrored) and an MRC gain from SerialEM needed a flip theirs does not."""
    page = np.zeros((2, 6, 10), np.uint16)
    page[:, 0, 1] = 7  # stored first row (a TIFF's top row)
    page[:, 5, 2] = 9  # stored last row
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, page, compression="lzw")
    frames = read_movie(path).frames
    assert frames[0, 5, 1] == 7 and frames[1, 0, 2] == 9 and frames.sum() == 2 * (7 + 9)
    assert frames.flags.c_contiguous
    gain = np.ones((6, 10), np.float32)
    gain[0, 3] = 2.0
    tifffile.imwrite(tmp_path / "gain.tif", gain)
    assert read_image(tmp_path / "gain.tif")[0][5, 3] == 2.0  # a TIFF gain likewise


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("compression", [None, "lzw"])
def test_multipage_tiff_decodes_exactly_in_stored_dtype(tmp_path, dtype, compression):
    data = _movie(dtype)
    path = tmp_path / "k3.tif"
    tifffile.imwrite(path, data, compression=compression)
    movie = read_movie(path)
    assert movie.frames.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(movie.frames, mrc_rows(data))
    assert movie.header["compression"] == (5 if compression == "lzw" else 1)
    assert movie.pixel_size_A is None


def test_pages_written_one_by_one_as_serialem_does_are_one_movie(tmp_path):
    data = _movie(np.uint8, shape=(5, 32, 32))
    path = tmp_path / "frames.tiff"
    with tifffile.TiffWriter(path) as tif:
        for frame in data:
            tif.write(frame, compression="lzw", contiguous=False)
    np.testing.assert_array_equal(read_movie(path).frames, mrc_rows(data))


def test_pixel_size_from_centimetre_resolution_tags(tmp_path):
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, _movie(np.uint16, shape=(2, 16, 16)),
                     resolution=(1e8 / 1.1, 1e8 / 1.1), resolutionunit="CENTIMETER")
    assert read_movie(path).pixel_size_A == pytest.approx(1.1, rel=1e-6)


@pytest.mark.parametrize("dpi, pixel_A", [(round(2.54e8 / 0.83), 0.83), (72, None), (1, None)])
def test_pixel_size_from_serialems_pixels_per_inch(tmp_path, dpi, pixel_A):
    """SerialEM writes round(2.54e8 / pixel size in Å) pixels per inch (IMOD's
    tiffWriteSection); 72 or 1 per inch is an image writer's placeholder."""
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, _movie(np.uint8, shape=(2, 16, 16)), resolution=(dpi, dpi),
                     resolutionunit="INCH")
    assert read_movie(path).pixel_size_A == (None if pixel_A is None else pytest.approx(pixel_A))


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_tiff_cut_while_being_written_is_truncated_not_short(tmp_path, compression):
    data = _movie(np.uint8, shape=(10, 64, 64))
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, data, compression=compression)
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * 0.8)])
    with pytest.raises(TruncatedMovieError, match=r"cut\.tif: .*frames readable"):
        read_movie(path)


def _ifd_cut_points(path, page):
    """Byte counts that end a file inside the IFD of ``page``: just after its start, among
    its tags, and inside its next-IFD pointer (where a writer's file ends while it writes
    that IFD, the previous page already linking to it)."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[page].offset
        n_tags = len(tif.pages[page].tags)
    return [offset + 1, offset + 2 + 12 * 3, offset + 2 + 12 * n_tags + 2]


@pytest.mark.parametrize("where", [0, 1, 2])
def test_tiff_cut_inside_the_ifd_being_written_is_truncated_not_a_shorter_movie(tmp_path,
                                                                                where):
    data = _movie(np.uint8, shape=(6, 32, 40))
    path = tmp_path / "cut.tif"
    with tifffile.TiffWriter(path) as tif:  # page by page, as a camera writes frames
        for frame in data:
            tif.write(frame, compression="lzw", contiguous=False, photometric="minisblack")
    cut = _ifd_cut_points(path, 4)[where]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(TruncatedMovieError, match=r"cut\.tif: .*4 .*frames readable"):
        read_movie(path)
    assert not check_complete(path).complete


def test_tiff_with_mixed_page_shapes_is_unsupported(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((32, 32), np.uint8))
        tif.write(np.zeros((16, 32), np.uint8))
    with pytest.raises(UnsupportedFormatError, match=r"mixed\.tif: TIFF pages differ: page 1 "
                                                     r"is 16x32 uint8, page 0 is 32x32 uint8"):
        read_movie(path)


def test_rgb_tiff_is_unsupported(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(UnsupportedFormatError, match=r"rgb\.tif: .*single-channel"):
        read_movie(path)


def test_garbage_with_tif_suffix_is_unreadable(tmp_path):
    path = tmp_path / "junk.tif"
    path.write_bytes(b"this is not a tiff at all" * 10)
    with pytest.raises(UnreadableMovieError, match=r"junk\.tif: not a TIFF"):
        read_movie(path)


def test_unknown_suffix_is_unreadable(tmp_path):
    path = tmp_path / "movie.xyz"
    path.write_bytes(b"\x01" * 2000)
    with pytest.raises(UnreadableMovieError, match=r"movie\.xyz: unknown movie format"):
        read_movie(path)


def test_tiff_reference_image_reads_as_2d(tmp_path):
    gain = np.linspace(0.9, 1.1, 30 * 20, dtype=np.float32).reshape(30, 20)
    path = tmp_path / "gain.tif"
    tifffile.imwrite(path, gain)
    image, pix = read_image(path)
    np.testing.assert_array_equal(image, mrc_rows(gain))
    assert pix is None


def test_multipage_tiff_is_not_a_reference_image(tmp_path):
    path = tmp_path / "gain.tif"
    tifffile.imwrite(path, np.ones((2, 8, 8), np.float32))
    with pytest.raises(UnsupportedFormatError, match=r"gain\.tif: expected one 2-D image"):
        read_image(path)


def test_tiff_with_a_compression_nobody_decodes_is_unsupported(tmp_path):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint16))
    with tifffile.TiffFile(path) as tif:
        tag_offsets = [page.tags["Compression"].offset for page in tif.pages]
    raw = bytearray(path.read_bytes())
    for offset in tag_offsets:          # classic TIFF entry: tag, type, count, then the value
        raw[offset + 8:offset + 10] = (54321).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedFormatError, match=r"odd\.tif: TIFF compression 54321 is "
                                                     r"not supported"):
        read_movie(path)


@pytest.mark.parametrize("dtype, compression, layout", [
    (np.uint8, "lzw", {"rowsperstrip": 1}),     # SerialEM/IMOD: 16 KB strips, super-res rows
    (np.uint8, "lzw", {"rowsperstrip": 3}),     # a K3 frame's 16 KB strips
    (np.uint16, "lzw", {"rowsperstrip": 7}),
    (np.uint8, None, {"rowsperstrip": 5}),
    (np.uint16, "lzw", {"tile": (32, 48)}),
])
def test_libtiff_and_tifffile_decode_every_layout_to_the_same_frames(tmp_path, monkeypatch,
                                                                     dtype, compression, layout):
    import correction.io.tiff as tiff_module

    data = _movie(dtype, shape=(5, 70, 96))
    path = tmp_path / "frames.tif"
    with tifffile.TiffWriter(path) as tif:
        for frame in data:
            tif.write(frame, compression=compression, contiguous=False, **layout)
    decoded = {}
    with monkeypatch.context() as only_libtiff:  # tifffile must not be the one that decodes
        only_libtiff.setattr(tifffile.TiffFile, "asarray", None)
        decoded[True] = read_movie(path).frames
    monkeypatch.setattr(tiff_module, "_LIBTIFF", False)
    decoded[False] = read_movie(path).frames
    np.testing.assert_array_equal(decoded[True], mrc_rows(data))
    np.testing.assert_array_equal(decoded[False], mrc_rows(data))


@pytest.mark.parametrize("libtiff", [True, False])
def test_a_corrupt_strip_names_its_page_whichever_decoder_reads_it(tmp_path, monkeypatch,
                                                                    libtiff):
    import correction.io.tiff as tiff_module

    data = _movie(np.uint8, shape=(6, 64, 96))
    path = tmp_path / "bad.tif"
    with tifffile.TiffWriter(path) as tif:
        for frame in data:
            tif.write(frame, compression="lzw", contiguous=False, rowsperstrip=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[3].dataoffsets[5], tif.pages[3].databytecounts[5]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + count] = b"\xff" * count  # not an LZW stream
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(tiff_module, "_LIBTIFF", libtiff)
    with pytest.raises(TruncatedMovieError, match=r"bad\.tif: 3 of 6 frames readable \(page 3"):
        read_movie(path)


def _pack_4bit(counts):
    """SerialEMCCD's packing: two 4-bit counts per byte along x, the first in the low nibble."""
    return (counts[..., 0::2] | (counts[..., 1::2] << 4)).astype(np.uint8)


def _serialem_packed_tiff(path, packed_pages, description=None):
    with tifffile.TiffWriter(path) as tif:  # IMOD's writer: minisblack bytes with a DateTime
        for page in packed_pages:
            tif.write(page, photometric="minisblack", datetime=True, contiguous=False,
                      description=description)
    return path


def test_serialems_4bit_super_resolution_tiff_unpacks_to_full_width_counts(tmp_path):
    # K2 super-resolution 7676 x 7420 saved as 4-bit: pages of 3838 x 7420 bytes
    tile = np.random.default_rng(11).integers(0, 16, size=(1, 20, 76), dtype=np.uint8)
    reps = (1, 7420 // 20, 7676 // 76)
    path = _serialem_packed_tiff(tmp_path / "sr.tif", np.tile(_pack_4bit(tile), reps))
    movie = read_movie(path)
    assert movie.frames.shape == (1, 7420, 7676)
    assert movie.header["packed_4bit"] == "half_width"
    assert np.array_equal(movie.frames, mrc_rows(np.tile(tile, reps)))


@pytest.mark.parametrize("nx, ny, packed", [
    (3838, 7420, True), (3710, 7676, True), (3840, 7424, True), (3712, 7680, True),
    (5760, 8184, True), (4092, 11520, True), (5761, 8183, True),      # K2, K3, IMOD's +-2 px
    (5760, 4092, False), (4092, 5760, False), (11520, 8184, False), (3838, 3710, False)])
def test_packed_4bit_page_sizes_are_imods(nx, ny, packed):
    from correction.io.tiff import _packed_4bit_size

    assert _packed_4bit_size(nx, ny) is packed


def test_serialemccd_packed_description_marks_a_small_tiff_as_4bit(tmp_path):
    counts = np.random.default_rng(12).integers(0, 16, size=(3, 12, 20), dtype=np.uint8)
    path = _serialem_packed_tiff(tmp_path / "p.tif", _pack_4bit(counts),
                                 "SerialEMCCD: Dose frac. image, 4 bits packed  r/f 0")
    np.testing.assert_array_equal(read_movie(path).frames, mrc_rows(counts))


def test_bytes_of_a_packed_size_without_datetime_stay_bytes(tmp_path):
    # IMOD unpacks only pages with a DateTime tag (as its writer leaves); others are 8-bit data
    data = np.full((1, 7420, 3838), 200, dtype=np.uint8)
    path = tmp_path / "b.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    movie = read_movie(path)
    assert movie.frames.shape == (1, 7420, 3838) and "packed_4bit" not in movie.header


def _set_tag(path, name: str, value: int) -> None:
    """Overwrite tag ``name`` of every page in place (a damaged header)."""
    with tifffile.TiffFile(path) as tif:
        fields = [(page.tags[name].valueoffset, page.tags[name].dtype) for page in tif.pages]
    data = bytearray(path.read_bytes())
    for offset, dtype in fields:
        struct.pack_into("<H" if dtype == 3 else "<I", data, offset, value)
    path.write_bytes(bytes(data))


def _declare_size(path, width: int, length: int) -> None:
    _set_tag(path, "ImageWidth", width)
    _set_tag(path, "ImageLength", length)


def test_a_header_declaring_frames_no_detector_writes_is_damaged_not_decoded(tmp_path):
    """A 12 KB LZW TIFF whose header declares 65535 x 65535 pixels: before, the completeness
    check (in the daemon's own process) and the reader decoded gigabytes for it."""
    path = tmp_path / "damaged.tif"
    frames = np.random.default_rng(0).poisson(1.0, (3, 64, 64)).astype(np.uint8)
    tifffile.imwrite(path, frames, compression="lzw", photometric="minisblack", metadata=None)
    _declare_size(path, 65535, 65535)
    verdict = check_complete(path)
    assert not verdict.complete and "no detector writes" in verdict.reason
    with pytest.raises(UnreadableMovieError, match="65535 x 65535 pixels"):
        read_movie(path)


@pytest.mark.parametrize("tag, value", [("BitsPerSample", 65535), ("RowsPerStrip", 0)])
def test_a_damaged_tag_tifffile_trips_over_is_an_unreadable_movie_naming_the_file(
        tmp_path, tag, value):
    """Before, tifffile's own AssertionError or ZeroDivisionError reached the worker, which
    took it for an internal error and retried the movie."""
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.ones((3, 32, 32), np.uint16), photometric="minisblack",
                     metadata=None)
    _set_tag(path, tag, value)
    with pytest.raises(UnreadableMovieError, match=r"damaged\.tif: damaged TIFF file: \w+Error"):
        read_movie(path)


def test_a_fifo_named_like_a_movie_is_refused_without_blocking(tmp_path):
    """Opening a FIFO blocks until a writer comes: before, read_movie and the completeness
    check waited for ever (the alarm ends the test if it does)."""
    import os
    import signal

    path = tmp_path / "pipe.tif"
    os.mkfifo(path)

    class Blocked(BaseException):
        """Not an OSError: nothing may take it for one."""

    def interrupt(signum, frame):
        raise Blocked("blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(10)
    try:
        with pytest.raises(UnreadableMovieError, match="not a regular file"):
            read_movie(path)
        assert "not a regular file" in check_complete(path).reason
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("compression", ["jpeg", "jpeg2000"])
def test_a_tiff_movie_through_a_lossy_codec_is_refused_naming_it_not_read_as_counts(
        tmp_path, compression):
    """A JPEG TIFF (a movie converted after acquisition) was decoded and corrected: half its
    pixels changed, its sum 1 % off, with no warning."""
    pytest.importorskip("imagecodecs")
    path = tmp_path / "converted.tif"
    frames = np.random.default_rng(0).poisson(2.0, (3, 64, 64)).astype(np.uint8)
    tifffile.imwrite(path, frames, compression=compression, photometric="minisblack")
    with pytest.raises(UnsupportedFormatError, match=r"converted\.tif: TIFF compression "
                                                     r"JPEG( 2000)? \(\d+\) may lose information"):
        read_movie(path)


def test_a_packed_title_followed_by_another_programs_title_is_not_unpacked(tmp_path):
    data = np.random.default_rng(12).integers(0, 256, size=(2, 12, 20), dtype=np.uint8)
    path = tmp_path / "p.tif"
    with tifffile.TiffWriter(path) as tif:
        for page in data:
            tif.write(page, photometric="minisblack", datetime=True, contiguous=False,
                      description="SerialEMCCD: Dose frac. image, 4 bits packed  r/f 0\n"
                                  "clip: 8-bit copy")
    movie = read_movie(path)
    assert movie.frames.shape == (2, 12, 20) and "packed_4bit" not in movie.header



def test_an_upper_case_gain_suffix_keeps_the_stored_row_order(tmp_path):
    gain = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    for name in ("r.gain", "R.GAIN"):
        tifffile.imwrite(tmp_path / name, gain)
        np.testing.assert_array_equal(read_image(tmp_path / name)[0], gain)
