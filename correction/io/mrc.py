"""MRC movie reader: modes 0, 1, 2, 6, 12 (memory-mapped) and SerialEM's 4-bit mode 101.

The header is decoded with mrcfile's header dtype; the data block is memory-mapped with numpy
(modes 0-12) so a movie costs no memory until its frames are touched, or unpacked (mode 101,
which mrcfile refuses). Every check that fails raises a :mod:`correction.errors` error naming
the file.

Header facts used
-----------------
* Byte order from the machine stamp (``DA`` little, ``DD`` big-endian; a missing stamp is
  guessed from which order gives a plausible mode).
* Mode 0 is signed 8-bit by MRC2014 but unsigned in IMOD/SerialEM files: when the IMOD stamp
  (1146047817 at byte 152) is present, bit 0 of the IMOD flags (byte 156) clear means unsigned,
  and set means IMOD stored each value - 128 (its writers' default, ``b3dShiftBytes``): read
  back + 128 into uint8, as IMOD reads it. Without the stamp, a header range inside 0-255 that
  exceeds 127 means unsigned, else signed.
* SerialEM's older 4-bit K2/K3 frames are mode 0 with half the width in ``nx``: IMOD flag bit 4
  (16, ``MRC_FLAGS_4BIT_BYTES``), or a single title with "4 bits packed" (IMOD's
  ``PACKED_HALF_XSIZE``). They are read as mode 101 of twice that width (low nibble first).
* Pixel size = ``cella.x / mx`` in Å. 0 (unset) and exactly 1.0 (the value writers leave when
  they do not know it, ``cella == mx``) are reported as unknown (None).
* FEI1/FEI2 extended headers: pixel size (m), high tension (V) and dose (e/m²) from the first
  record, when positive, override the main header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mrcfile.dtypes
import numpy as np

from ..errors import TruncatedMovieError, UnreadableMovieError, UnsupportedFormatError
from ..movie import Movie

__all__ = ["MrcLayout", "read_mrc_layout", "read_mrc", "read_mrc_image", "MRC_MODES",
           "header_pixel_size_A"]

HEADER_BYTES = 1024
_IMOD_STAMP = 1146047817
_MRC_FLAGS_4BIT_BYTES = 16  # IMOD flag: mode 0 bytes each hold two 4-bit pixels
#: MRC modes read, with the stored sample type (mode 0 may become uint8, see module doc).
MRC_MODES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2", 101: "u1"}
_MODE_NAMES = {3: "complex int16", 4: "complex float32"}


@dataclass(frozen=True, slots=True)
class MrcLayout:
    """Where the frames of an MRC file are and how they are stored.

    Attributes
    ----------
    path : Path
    nx, ny, nz : int
        Width (columns), height (rows) and number of sections (frames) from the header.
    mode : int
        MRC mode.
    dtype : numpy.dtype
        Stored sample dtype with byte order (uint8 for mode 101 after unpacking).
    data_offset : int
        Byte offset of the first frame (1024 + extended header).
    frame_bytes : int
        Bytes per stored frame.
    file_size : int
        Size of the file in bytes when the header was read.
    pixel_size_A : float or None
    voltage_kV, dose_per_frame_e_A2 : float or None
        From an FEI extended header, when present.
    header : dict
        JSON-serialisable facts for :attr:`Movie.header`.
    """

    path: Path
    nx: int
    ny: int
    nz: int
    mode: int
    dtype: np.dtype
    data_offset: int
    frame_bytes: int
    file_size: int
    pixel_size_A: float | None
    voltage_kV: float | None
    dose_per_frame_e_A2: float | None
    header: dict

    @property
    def expected_size(self) -> int:
        """File size in bytes the header asks for (header + extended header + nz frames)."""
        return self.data_offset + self.nz * self.frame_bytes

    def shortfall_reason(self) -> str:
        """One-line reason for a file shorter than its header says."""
        return (f"file is {self.file_size} bytes, header needs {self.expected_size} for "
                f"{self.nz} frames of {self.nx}x{self.ny} mode {self.mode}")


def _byte_order(raw: bytes, file_size: int | None = None) -> str:
    stamp = raw[212:214]
    if stamp[0] == 0x44 and stamp[1] in (0x41, 0x44):
        return "<"
    if stamp[0] == 0x11 and stamp[1] == 0x11:
        return ">"
    # No usable stamp: take the order that makes the mode a known one; for mode 0, the same in
    # both orders, the one that makes the image sizes plausible (as RELION checks nx)
    little = int.from_bytes(raw[12:16], "little")
    if little == 0:
        def sizes(order: str) -> list[int]:
            return [int.from_bytes(raw[i:i + 4], order, signed=True) for i in (0, 4, 8)]

        def plausible(order: str) -> bool:
            return all(0 < n < 1 << 20 for n in sizes(order))

        def fits(order: str) -> bool:  # mode 0: one byte per pixel, after the extended header
            nx, ny, nz = sizes(order)
            extended = int.from_bytes(raw[92:96], order, signed=True)
            return file_size is not None and 1024 + max(0, extended) + nx * ny * nz <= file_size

        if plausible("big") and plausible("little"):  # both: the one the file holds
            return ">" if fits("big") and not fits("little") else "<"
        return ">" if plausible("big") else "<"
    return "<" if little in MRC_MODES or little in _MODE_NAMES or little < 1 << 16 else ">"


def read_mrc_layout(path: str | Path) -> MrcLayout:
    """Decode an MRC header (no data read) and check it describes a readable movie.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    MrcLayout

    Raises
    ------
    UnreadableMovieError
        Missing file, shorter than a header, or not an MRC header.
    UnsupportedFormatError
        A mode motionwatch does not read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(HEADER_BYTES)
    except FileNotFoundError:
        raise UnreadableMovieError(path, "no such file") from None
    except OSError as exc:
        raise UnreadableMovieError(path, f"cannot open: {exc.strerror or exc}") from None
    if len(raw) < HEADER_BYTES:
        raise TruncatedMovieError(path, f"file is {size} bytes, shorter than the "
                                        f"{HEADER_BYTES}-byte MRC header")
    order = _byte_order(raw, size)
    hdr = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE.newbyteorder(order))[0]
    nx, ny, nz, mode = (int(hdr["nx"]), int(hdr["ny"]), int(hdr["nz"]), int(hdr["mode"]))
    nsymbt = int(hdr["nsymbt"])
    if mode in _MODE_NAMES:
        raise UnsupportedFormatError(path, f"MRC mode {mode} ({_MODE_NAMES[mode]}) is not a "
                                           "movie format; motionwatch reads modes 0, 1, 2, 6, "
                                           "12 and 101")
    if not 0 <= mode <= 255 and raw[208:212] != b"MAP ":  # text, an image of another kind
        raise UnreadableMovieError(path, f"not an MRC file: no 'MAP ' stamp and the header's "
                                         f"mode word reads {mode} (MRC modes are small numbers)")
    if mode not in MRC_MODES:
        raise UnsupportedFormatError(path, f"unknown MRC mode {mode}; motionwatch reads modes "
                                           "0, 1, 2, 6, 12 and 101")
    if nx <= 0 or ny <= 0 or nz < 0 or nsymbt < 0:
        raise UnreadableMovieError(path, f"not an MRC movie: header gives nx={nx} ny={ny} "
                                         f"nz={nz} nsymbt={nsymbt}")
    data_offset = HEADER_BYTES + nsymbt
    if mode == 101:
        frame_bytes = ny * ((nx + 1) // 2)
        dtype = np.dtype("u1")
    else:
        dtype = np.dtype(MRC_MODES[mode]).newbyteorder(order)
        frame_bytes = nx * ny * dtype.itemsize

    imod_stamp = int.from_bytes(raw[152:156], "little" if order == "<" else "big")
    imod_flags = int.from_bytes(raw[156:160], "little" if order == "<" else "big")
    dmin, dmax = float(hdr["dmin"]), float(hdr["dmax"])
    signed_source = "mrc2014"
    packed_half_width = mode == 0 and (
        (imod_stamp == _IMOD_STAMP and imod_flags & _MRC_FLAGS_4BIT_BYTES)
        or (int(hdr["nlabl"]) == 1 and b"4 bits packed" in bytes(hdr["label"][0])))
    if packed_half_width:  # the bytes of mode 101 frames twice as wide
        mode, nx, dtype = 101, 2 * nx, np.dtype("u1")
    elif mode == 0:
        imod_shifted = False
        if imod_stamp == _IMOD_STAMP:
            # IMOD's "bytes signed" (flags bit 0): it stored each byte value - 128 and reads it
            # back + 128 (libcfshr/b3dutil.c b3dShiftBytes; tif2mrc writes so by default): the
            # values are unsigned, 0-255 (RELION and mrcfile read the stored int8)
            signed = imod_shifted = bool(imod_flags & 1)
            signed_source = "imod_flags"
        else:
            signed = not (0 <= dmin <= dmax <= 255 and dmax > 127)
            signed_source = "header_range"
        dtype = np.dtype("i1" if signed and not imod_shifted else "u1")

    raw_voxel = header_pixel_size_A(float(hdr["cella"]["x"]), int(hdr["mx"]))
    pixel_size_A = raw_voxel if np.isfinite(raw_voxel) and raw_voxel > 0 and raw_voxel != 1.0 \
        else None

    exttyp = bytes(hdr["exttyp"])
    voltage_kV = dose = None
    header: dict = {
        "format": "mrc",
        "mode": mode,
        "dtype": dtype.str,
        "byte_order": "little" if order == "<" else "big",
        "header_voxel_size_A": raw_voxel,
        "nsymbt": nsymbt,
        "exttyp": exttyp.decode("ascii", "replace").strip("\x00 "),
    }
    if packed_half_width:
        header["mode"] = 0
        header["packed_4bit"] = "half_width"
    elif mode == 0:
        header["mode0_signed"] = dtype.kind == "i"
        header["mode0_signed_from"] = signed_source
        if imod_shifted:
            header["mode0_imod_shifted"] = True  # stored value - 128: read back + 128
    if nsymbt and exttyp in (b"FEI1", b"FEI2"):
        fei = _read_fei(path, exttyp, order, nsymbt)
        if fei is not None:
            pix, voltage_kV, dose = fei
            if pix is not None:
                header["fei_pixel_size_A"] = pix
                pixel_size_A = pix
            if voltage_kV is not None:
                header["fei_voltage_kV"] = voltage_kV
            if dose is not None:
                header["fei_dose_e_A2"] = dose
    return MrcLayout(path=path, nx=nx, ny=ny, nz=nz, mode=mode, dtype=dtype,
                     data_offset=data_offset, frame_bytes=frame_bytes, file_size=size,
                     pixel_size_A=pixel_size_A, voltage_kV=voltage_kV,
                     dose_per_frame_e_A2=dose, header=header)


def header_pixel_size_A(cella_x_A: float, mx: int) -> float:
    """Pixel size in Å from the header's cell length ``cella.x`` (Å) and sampling ``mx``.

    Writers store ``cella.x = mx * pixel`` as float32, which keeps only about 7 significant
    digits (5760 x 1.06 Å is stored as 6105.6001), so the quotient is rounded to 6 significant
    digits: a pixel size given with up to 6 digits reads back exactly. 0 when ``mx`` is not
    positive.
    """
    if mx <= 0:
        return 0.0
    value = cella_x_A / mx
    return float(f"{value:.6g}") if np.isfinite(value) else value


def _read_fei(path: Path, exttyp: bytes, order: str,
              nsymbt: int) -> tuple[float | None, float | None, float | None] | None:
    """Pixel size (Å), voltage (kV) and dose per frame (e/Å²) from an FEI extended header."""
    dtype = mrcfile.dtypes.get_ext_header_dtype(exttyp, order)
    if dtype is None or nsymbt < dtype.itemsize:
        return None
    with open(path, "rb") as fh:
        fh.seek(HEADER_BYTES)
        block = fh.read(dtype.itemsize)
    if len(block) < dtype.itemsize:
        return None
    rec = np.frombuffer(block, dtype=dtype)[0]

    def positive(value: float, scale: float) -> float | None:
        value = float(value)
        return value * scale if np.isfinite(value) and value > 0 else None

    pix = positive(rec["Pixel size X"], 1e10)          # m -> Å
    if pix is not None:
        pix = float(f"{pix:.6g}")
    if pix is not None and not 0.01 < pix < 1000:
        pix = None
    voltage = positive(rec["HT"], 1e-3)                # V -> kV
    dose = positive(rec["Dose"], 1e-20)                # e/m² -> e/Å²
    return pix, voltage, dose


def _check_size(layout: MrcLayout) -> None:
    if layout.file_size < layout.expected_size:
        raise TruncatedMovieError(layout.path, layout.shortfall_reason())


def read_mrc(path: str | Path) -> Movie:
    """Read an MRC movie; frames keep their stored dtype.

    Modes 0, 1, 2, 6 and 12 are memory-mapped (read-only, nothing loaded until used); mode 101
    (4-bit) is unpacked into uint8, two pixels per byte, low nibble first, rows starting on a
    byte boundary.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Movie
        ``frames`` shape (nz, ny, nx).

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
    """
    layout = read_mrc_layout(path)
    _check_size(layout)
    header = dict(layout.header)
    trailing = layout.file_size - layout.expected_size
    if trailing:
        header["trailing_bytes"] = trailing
    if layout.nz == 0:
        raise UnreadableMovieError(layout.path, "header gives 0 frames")
    shape = (layout.nz, layout.ny, layout.nx)
    if layout.mode == 101:
        frames = _unpack_4bit(layout)
    elif header.get("mode0_imod_shifted"):  # stored value - 128: + 128 is the top bit flipped
        frames = np.bitwise_xor(np.memmap(layout.path, dtype=np.uint8, mode="r",
                                          offset=layout.data_offset, shape=shape), 0x80)
    else:
        frames = np.memmap(layout.path, dtype=layout.dtype, mode="r",
                           offset=layout.data_offset, shape=shape)
    return Movie(frames=frames, path=layout.path, pixel_size_A=layout.pixel_size_A,
                 voltage_kV=layout.voltage_kV, dose_per_frame_e_A2=layout.dose_per_frame_e_A2,
                 header=header)


def _unpack_4bit(layout: MrcLayout) -> np.ndarray:
    """Unpack mode-101 frames into uint8, one frame at a time (bounded temporary memory)."""
    row_bytes = (layout.nx + 1) // 2
    packed = np.memmap(layout.path, dtype=np.uint8, mode="r", offset=layout.data_offset,
                       shape=(layout.nz, layout.ny, row_bytes))
    out = np.empty((layout.nz, layout.ny, layout.nx), dtype=np.uint8)
    even_nx = layout.nx % 2 == 0
    for i in range(layout.nz):
        frame = np.asarray(packed[i])
        if even_nx:
            pair = out[i].reshape(layout.ny, row_bytes, 2)
            np.bitwise_and(frame, 0x0F, out=pair[..., 0])
            np.right_shift(frame, 4, out=pair[..., 1])
        else:
            full = np.empty((layout.ny, row_bytes, 2), dtype=np.uint8)
            np.bitwise_and(frame, 0x0F, out=full[..., 0])
            np.right_shift(frame, 4, out=full[..., 1])
            out[i] = full.reshape(layout.ny, 2 * row_bytes)[:, :layout.nx]
    del packed
    return out


def read_mrc_image(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read a single 2-D MRC image (gain, dark or defect map) into memory.

    Returns
    -------
    image : ndarray, shape (ny, nx), stored dtype (native byte order)
    pixel_size_A : float or None

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
        Including a file with more than one section.
    """
    movie = read_mrc(path)
    if movie.n_frames != 1:
        raise UnsupportedFormatError(movie.path, f"expected one 2-D image, file has "
                                                 f"{movie.n_frames} sections")
    image = np.array(movie.frames[0])
    return image.astype(image.dtype.newbyteorder("="), copy=False), movie.pixel_size_A
