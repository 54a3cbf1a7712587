"""MRC reader: every supported mode decodes exactly; header facts; clear errors naming the file.

Fixtures are written with mrcfile (modes 0-12) or raw numpy bytes (mode 101, FEI headers
patched with mrcfile's own dtypes), never with motionwatch's writer.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from correction.errors import TruncatedMovieError, UnreadableMovieError, UnsupportedFormatError
from correction.io import read_image, read_movie
from correction.params import ReadParams

RNG_SEED = 20261126


def _write_mrc(path, data, voxel_size=None):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size
    return path


@pytest.mark.parametrize("dtype, mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2),
                                         (np.uint16, 6), (np.float16, 12)])
def test_each_mrc_mode_reads_back_exactly_in_its_stored_dtype(tmp_path, dtype, mode):
    rng = np.random.default_rng(RNG_SEED)
    data = rng.integers(-100 if np.dtype(dtype).kind != "u" else 0, 100,
                        size=(5, 40, 36)).astype(dtype)
    path = _write_mrc(tmp_path / "m.mrc", data, voxel_size=1.06)
    movie = read_movie(path)
    assert movie.header["mode"] == mode
    assert movie.frames.dtype == np.dtype(dtype)
    assert movie.frames.shape == (5, 40, 36)
    np.testing.assert_array_equal(movie.frames, data)
    assert movie.pixel_size_A == pytest.approx(1.06, abs=1e-6)


def test_mrc_frames_are_memory_mapped_not_loaded(tmp_path):
    data = np.arange(3 * 16 * 16, dtype=np.int16).reshape(3, 16, 16)
    movie = read_movie(_write_mrc(tmp_path / "m.mrcs", data))
    assert isinstance(movie.frames, np.memmap)


@pytest.mark.parametrize("voxel", [0.0, 1.0])
def test_unset_or_placeholder_pixel_size_reads_as_unknown(tmp_path, voxel):
    data = np.zeros((2, 8, 8), dtype=np.int16)
    path = _write_mrc(tmp_path / "m.mrc", data, voxel_size=voxel)
    assert read_movie(path).pixel_size_A is None


def _patch(path, offset, values, fmt):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + np.dtype(fmt).itemsize * len(values)] = np.array(values, fmt).tobytes()
    path.write_bytes(bytes(raw))


def test_mode_0_with_imod_unsigned_flag_reads_as_uint8(tmp_path):
    values = np.array([[0, 100, 200, 255]], dtype=np.uint8).reshape(1, 2, 2)
    path = _write_mrc(tmp_path / "u.mrc", values.view(np.int8))
    _patch(path, 152, [1146047817, 0], "<i4")       # IMOD stamp, flags: bytes unsigned
    movie = read_movie(path)
    assert movie.frames.dtype == np.uint8
    np.testing.assert_array_equal(movie.frames, values)

def test_mode_0_bytes_imod_wrote_signed_are_read_back_as_imod_reads_them(tmp_path):
    """IMOD's flag bit 0 ("bytes signed", the default of its writers, e.g. tif2mrc of a K3
    TIFF): it stored each value - 128 (b3dShiftBytes) and reads it + 128, so counts of 0-255
    come back as they were, not as int8 -128..127 (as RELION and mrcfile would read them)."""
    counts = np.array([[0, 5, 127, 128, 200, 255]], dtype=np.uint8).reshape(1, 2, 3)
    stored = (counts.astype(np.int16) - 128).astype(np.int8)
    path = _write_mrc(tmp_path / "s.mrc", stored)
    _patch(path, 152, [1146047817, 1], "<i4")       # IMOD stamp, flags: bytes signed
    movie = read_movie(path)
    assert movie.frames.dtype == np.uint8 and movie.header["mode0_imod_shifted"]
    np.testing.assert_array_equal(movie.frames, counts)


def _write_mode101(path, frames_u4, nx):
    """SerialEM 4-bit: low nibble first, each row starting on a byte."""
    nz, ny, _ = frames_u4.shape
    row_bytes = (nx + 1) // 2
    padded = np.zeros((nz, ny, 2 * row_bytes), dtype=np.uint8)
    padded[..., :nx] = frames_u4
    packed = (padded[..., 0::2] | (padded[..., 1::2] << 4)).astype(np.uint8)
    header = np.zeros((), dtype=mrcfile.dtypes.HEADER_DTYPE)
    header["nx"], header["ny"], header["nz"], header["mode"] = nx, ny, nz, 101
    header["mx"], header["my"], header["mz"] = nx, ny, nz
    header["cella"]["x"], header["cella"]["y"], header["cella"]["z"] = nx * 0.83, ny * 0.83, nz
    header["mapc"], header["mapr"], header["maps"] = 1, 2, 3
    header["map"] = b"MAP "
    header["machst"] = [0x44, 0x44, 0, 0]
    path.write_bytes(header.tobytes() + packed.tobytes())
    return path


@pytest.mark.parametrize("nx", [64, 63])
def test_mode_101_four_bit_serialem_frames_unpack_exactly(tmp_path, nx):
    rng = np.random.default_rng(RNG_SEED)
    truth = rng.integers(0, 16, size=(4, 30, nx)).astype(np.uint8)
    path = _write_mode101(tmp_path / "s.mrc", truth, nx)
    movie = read_movie(path)
    assert movie.frames.dtype == np.uint8
    np.testing.assert_array_equal(movie.frames, truth)
    assert movie.pixel_size_A == pytest.approx(0.83, abs=1e-5)


def _as_half_width_mode0(path, *, flag: bool, title: bytes = b""):
    """Rewrite a 4-bit mode-101 file as SerialEMCCD's older layout: mode 0, nx the byte width
    (half the pixels), IMOD stamp and flag 16 (``MRC_FLAGS_4BIT_BYTES``) and/or the title."""
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(raw[:1024]), dtype=mrcfile.dtypes.HEADER_DTYPE).copy()[0]
    header["nx"] //= 2
    header["mx"] //= 2
    header["cella"]["x"] /= 2
    header["mode"] = 0
    if flag:
        raw[152:160] = np.array([1146047817, 16], "<i4").tobytes()
    if title:
        header["nlabl"] = 1
        header["label"][0] = title
    raw[:152] = header.tobytes()[:152]
    raw[160:1024] = header.tobytes()[160:1024]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("flag, title", [(True, b""), (False, b"SerialEMCCD: Dose frac. image, "
                                                              b"4 bits packed  r/f 0")])
def test_serialems_half_width_mode_0_four_bit_frames_unpack_to_the_full_width(tmp_path, flag,
                                                                               title):
    """As IMOD reads them (PACKED_HALF_XSIZE): they were 8-bit pixels of half the width."""
    rng = np.random.default_rng(RNG_SEED)
    truth = rng.integers(0, 16, size=(3, 30, 64)).astype(np.uint8)
    path = _write_mode101(tmp_path / "k2.mrc", truth, 64)
    _as_half_width_mode0(path, flag=flag, title=title)
    movie = read_movie(path)
    assert movie.frames.shape == (3, 30, 64) and movie.frames.dtype == np.uint8
    np.testing.assert_array_equal(movie.frames, truth)
    assert movie.header["packed_4bit"] == "half_width"
    assert movie.pixel_size_A == pytest.approx(0.83, abs=1e-5)


def test_truncated_mode_101_is_reported_with_sizes(tmp_path):
    truth = np.zeros((4, 30, 64), dtype=np.uint8)
    path = _write_mode101(tmp_path / "s.mrc", truth, 64)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TruncatedMovieError, match=r"s\.mrc: file is 4764 bytes, header needs "
                                                  r"4864 for 4 frames of 64x30 mode 101"):
        read_movie(path)


def test_fei_extended_header_gives_pixel_size_voltage_and_dose(tmp_path):
    data = np.zeros((3, 16, 16), dtype=np.float32)
    ext_dtype = mrcfile.dtypes.get_ext_header_dtype(b"FEI1", "<")
    ext = np.zeros(3, dtype=ext_dtype)
    ext["Metadata size"] = ext_dtype.itemsize
    ext["Pixel size X"] = ext["Pixel size Y"] = 1.25e-10      # m
    ext["HT"] = 300000.0                                     # V
    ext["Dose"] = 1.5e20                                     # e/m² = 1.5 e/Å²
    path = tmp_path / "fei.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"
    movie = read_movie(path)
    assert movie.pixel_size_A == pytest.approx(1.25)
    assert movie.voltage_kV == pytest.approx(300.0)
    assert movie.dose_per_frame_e_A2 == pytest.approx(1.5)
    np.testing.assert_array_equal(movie.frames, data)


@pytest.mark.parametrize("stored_m", [1.25, 1.25e-13])  # Å and fm stored as if metres
def test_an_fei_pixel_size_in_another_unit_is_not_taken_and_the_header_voxel_size_is(
        tmp_path, stored_m):
    """An FEI extended header's pixel size is in metres; a value that is no pixel size once
    read so (1.25e10 Å, 0.00125 Å) is left out, and the main header's voxel size stands."""
    ext_dtype = mrcfile.dtypes.get_ext_header_dtype(b"FEI1", "<")
    ext = np.zeros(2, dtype=ext_dtype)
    ext["Metadata size"] = ext_dtype.itemsize
    ext["Pixel size X"] = ext["Pixel size Y"] = stored_m
    ext["HT"] = 200000.0
    path = tmp_path / "fei.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((2, 16, 16), dtype=np.float32))
        mrc.set_extended_header(ext)
        mrc.header.exttyp = b"FEI1"
        mrc.voxel_size = 0.83
    movie = read_movie(path)
    assert movie.pixel_size_A == pytest.approx(0.83)
    assert "fei_pixel_size_A" not in movie.header
    assert movie.voltage_kV == pytest.approx(200.0)


def test_truncated_mrc_names_file_and_sizes(tmp_path):
    data = np.zeros((10, 32, 32), dtype=np.int16)
    path = _write_mrc(tmp_path / "a.mrc", data)
    path.write_bytes(path.read_bytes()[:1024 + 7 * 32 * 32 * 2 + 5])
    with pytest.raises(TruncatedMovieError) as info:
        read_movie(path)
    message = str(info.value)
    assert message == (f"{path}: file is {1024 + 7 * 2048 + 5} bytes, header needs "
                       f"{1024 + 10 * 2048} for 10 frames of 32x32 mode 1")
    assert "\n" not in message


def test_file_shorter_than_a_header_is_truncated(tmp_path):
    path = tmp_path / "tiny.mrc"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(TruncatedMovieError, match="tiny.mrc: file is 100 bytes"):
        read_movie(path)


@pytest.mark.parametrize("mode, words", [(3, "complex"), (4, "complex"), (7, "unknown MRC mode 7")])
def test_unsupported_mrc_modes_are_named(tmp_path, mode, words):
    path = _write_mrc(tmp_path / "odd.mrc", np.zeros((2, 8, 8), dtype=np.int16))
    _patch(path, 12, [mode], "<i4")
    with pytest.raises(UnsupportedFormatError, match=rf"odd\.mrc: .*{words}"):
        read_movie(path)


def test_a_text_file_named_mrc_is_called_not_an_mrc_file(tmp_path):
    path = tmp_path / "notes.mrc"
    path.write_text("exposure notes for grid 2\n" * 60)
    with pytest.raises(UnreadableMovieError, match=r"notes\.mrc: not an MRC file"):
        read_movie(path)


def test_missing_file_is_unreadable_and_named(tmp_path):
    with pytest.raises(UnreadableMovieError, match=r"nothere\.mrc: no such file"):
        read_movie(tmp_path / "nothere.mrc")


def test_read_image_returns_2d_reference_and_pixel_size(tmp_path):
    gain = np.linspace(0.5, 1.5, 24 * 20, dtype=np.float32).reshape(24, 20)
    image, pix = read_image(_write_mrc(tmp_path / "g.mrc", gain, voxel_size=0.5))
    assert image.shape == (24, 20)
    np.testing.assert_array_equal(image, gain)
    assert pix == pytest.approx(0.5)


def test_read_image_refuses_a_stack(tmp_path):
    path = _write_mrc(tmp_path / "g.mrc", np.ones((2, 4, 4), dtype=np.float32))
    with pytest.raises(UnsupportedFormatError, match=r"g\.mrc: expected one 2-D image"):
        read_image(path)


def test_big_endian_mrc_reads_exactly(tmp_path):
    data = np.arange(2 * 6 * 5, dtype=">i2").reshape(2, 6, 5)
    path = _write_mrc(tmp_path / "be.mrc", data, voxel_size=2.5)
    movie = read_movie(path)
    assert movie.header["byte_order"] == "big"
    np.testing.assert_array_equal(movie.frames, data)
    assert movie.pixel_size_A == 2.5


@pytest.mark.parametrize("shape", [(3, 12, 10), (256, 256, 256)])
def test_a_big_endian_mode_0_mrc_without_a_machine_stamp_reads_exactly(tmp_path, shape):
    """Mode 0 reads 0 in either byte order: the order was taken as little, and the file
    refused as truncated (its header 'needing' 4e17 bytes). The image sizes decide, and where
    both orders give plausible sizes (multiples of 256), the file's size."""
    import struct

    data = np.random.default_rng(2).integers(0, 100, shape).astype(np.int8)
    nz, ny, nx = shape
    header = bytearray(1024)
    struct.pack_into(">4i", header, 0, nx, ny, nz, 0)             # nx, ny, nz, mode 0
    struct.pack_into(">3i3f", header, 28, nx, ny, nz, nx * 1.0, ny * 1.0, nz * 1.0)  # mx.., cella
    struct.pack_into(">3i", header, 64, 1, 2, 3)                   # mapc, mapr, maps
    header[208:212] = b"MAP "                                       # no machine stamp
    path = tmp_path / "be0.mrc"
    path.write_bytes(bytes(header) + data.tobytes())
    movie = read_movie(path, params=ReadParams(pixel_size_A=1.0))
    assert movie.header["byte_order"] == "big"
    np.testing.assert_array_equal(np.asarray(movie.frames).astype(np.int16), data)


def test_mode_0_without_imod_stamp_follows_the_header_range(tmp_path):
    values = np.array([0, 3, 130, 200], dtype=np.uint8).reshape(1, 2, 2)
    path = _write_mrc(tmp_path / "u.mrc", values.view(np.int8))
    _patch(path, 76, [0.0, 200.0], "<f4")           # dmin, dmax: an unsigned range
    movie = read_movie(path)
    assert movie.frames.dtype == np.uint8 and movie.header["mode0_signed_from"] == "header_range"
    np.testing.assert_array_equal(movie.frames, values)
    _patch(path, 76, [-126.0, 100.0], "<f4")        # a signed range: MRC2014 int8
    assert read_movie(path).frames.dtype == np.int8


@pytest.mark.parametrize("width, pixel_A", [(5760, 1.06), (4096, 0.83), (11520, 0.415),
                                            (4092, 1.327), (48, 1.06)])
def test_header_pixel_size_reads_back_as_the_writer_gave_it(tmp_path, width, pixel_A):
    # A writer stores cella.x = mx * pixel as float32 (5760 x 1.06 -> 6105.6001): the pixel
    # size read back is the value given, not 1.0600001.
    path = _write_mrc(tmp_path / "k3.mrc", np.zeros((2, 8, 8), dtype=np.uint16))
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.mx = width
        mrc.header.cella.x = width * pixel_A
    assert read_movie(path).pixel_size_A == pixel_A
