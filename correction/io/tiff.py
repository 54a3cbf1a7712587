"""TIFF movie reader: one frame per page, uint8/uint16 (K2/K3), uncompressed or LZW (or another
lossless compression tifffile decodes; a JPEG, JPEG 2000, WebP ... TIFF is refused).

tifffile parses the pages; imagecodecs' libtiff decodes them (tifffile where it cannot). A
TIFF cut while being written can look complete to tifffile, which silently stops at the first
page whose IFD lies beyond or is cut by the end of the file, so the reader checks three things
itself without decoding: the last page found links to no further IFD and every IFD ends
inside the file (else pages are missing), every page's strips lie inside the file, and all
pages have one shape and dtype. A movie too large to decode in memory goes to an unnamed
temporary file when the caller gives a folder for it (:mod:`correction.io.spill`).

Row order: a TIFF page stores its top row first; an MRC section its bottom row first (origin at
the lower left, as 3dmod displays it). IMOD, SerialEM, EMAN2, MotionCor2/3 and RELION reverse a
TIFF's rows whenever they read or write one (RELION ``src/rwTIFF.h``, ``readTIFF``: "IMOD,
EMAN2, SerialEM and MotionCor2 flip the Y axis whenever they read or write a TIFF file"), so the
readers here do too: frame row 0 is the page's last row. A TIFF movie's sums are then the
images MotionCor2 and RELION make of it (not their mirror image: a tomogram of the other hand),
an MRC or DM4 gain fits it as it fits theirs, ``--gain-rotate``/``--gain-flip`` copied from
their jobs mean the same, and the tilt axis of its mdoc holds. EER movies and EER ``.gain``
files keep their stored order, as RELION (which reverts the flip for ``.gain``) keeps them.
MotionCor3 decodes EER frames in stored order but reads a ``.gain`` through its TIFF reader,
rows reversed (``TiffUtil/CLoadTiffImage.cpp``), so its ``-FlipGain`` of an EER job differs
from ``--gain-flip`` by that reversal (README, "TIFF row order").

SerialEM saves K2/K3 super-resolution frames as 4-bit counts packed two to a byte into 8-bit
pages of half the width (low nibble first). As IMOD (``libiimod/iitif.c``, ``iiTIFFCheck``)
does, such a file is recognised by a page of one of the packed super-resolution sizes
(``sizeCanBe4BitK2SuperRes``: half the width of a 7676x7420, 7680x7424 or 11520x8184 frame
in either orientation, within 2 pixels) or a SerialEMCCD "4 bits packed" description, on
unsigned 8-bit single-sample pages with a DateTime tag, and unpacked to twice the width.
"""

from __future__ import annotations

import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from ..errors import (PageChainLoopError, TruncatedMovieError, UnreadableMovieError,
                      UnsupportedFormatError)
from ..movie import Movie
from .frame_size import check_frame_size
from .spill import FrameSink

__all__ = ["TiffLayout", "open_tiff", "scan_tiff", "read_tiff", "read_tiff_image",
           "chain_cut_reason", "EER_COMPRESSIONS"]

#: TIFF compression codes used by EER files (Falcon 4/4i).
EER_COMPRESSIONS = (65000, 65001, 65002)
_SPILL_BLOCK_BYTES = 256 << 20  # pages decoded together before they are written to the spill
_LIBTIFF = bool(getattr(getattr(imagecodecs, "TIFF", None), "available", False))
#: Full (unpacked) super-resolution sizes (x, y) SerialEMCCD packs to 4 bits: K2, K3.
_PACKED_4BIT_FULL_XY = ((7676, 7420), (7680, 7424), (11520, 8184))
_PACKED_4BIT_TOLERANCE = 2  # pixels, as IMOD


@dataclass(frozen=True, slots=True)
class TiffLayout:
    """What the IFDs of a TIFF say, checked without decoding pixels.

    Attributes
    ----------
    n_pages : int
        Pages tifffile found.
    shape_yx : tuple of int
        Shape of every page.
    dtype : numpy.dtype
        Sample dtype of every page.
    compression : int
        TIFF compression code of the first page.
    chain_cut_at : int or None
        Offset of the next IFD that the last page found links to but tifffile could not read
        (beyond or cut at the end of the file: pages lost to truncation).
    first_short_page : int or None
        Index of the first page whose strips run past the end of the file.
    file_size : int
    """

    n_pages: int
    shape_yx: tuple[int, int]
    dtype: np.dtype
    compression: int
    chain_cut_at: int | None
    first_short_page: int | None
    file_size: int


def loop_reason(n_pages: int, loops_to: int) -> str:
    """Why a TIFF or EER whose page chain loops is no movie (:func:`page_chain_loop`)."""
    return (f"its page chain loops: after page {n_pages - 1} it links back to the page "
            f"directory of page {loops_to}")


def open_tiff(path: str | Path) -> tifffile.TiffFile:
    """Open a TIFF, turning every failure into :class:`UnreadableMovieError` naming the file."""
    path = Path(path)
    try:
        return tifffile.TiffFile(path)
    except FileNotFoundError:
        raise UnreadableMovieError(path, "no such file") from None
    except (tifffile.TiffFileError, ValueError, struct.error, EOFError) as exc:
        raise UnreadableMovieError(path, f"not a readable TIFF: {exc}") from None
    except OSError as exc:
        raise UnreadableMovieError(path, f"cannot open: {exc.strerror or exc}") from None


def _next_ifd_offset(tif: tifffile.TiffFile, page_offset: int) -> int:
    """The next-IFD pointer stored after the IFD at ``page_offset``: 0 for the last page, -1
    when that IFD runs past the end of the file."""
    fmt = tif.tiff
    fh = tif.filehandle
    fh.seek(page_offset)
    raw = fh.read(fmt.tagnosize)
    if len(raw) < fmt.tagnosize:
        return -1
    (ntags,) = struct.unpack(fmt.tagnoformat, raw)
    fh.seek(page_offset + fmt.tagnosize + ntags * fmt.tagsize)
    raw = fh.read(fmt.offsetsize)
    if len(raw) < fmt.offsetsize:
        return -1
    return int(struct.unpack(fmt.offsetformat, raw)[0])


def scan_tiff(tif: tifffile.TiffFile, path: str | Path, *,
              all_pages: bool = True) -> TiffLayout:
    """Check the page structure of an open TIFF without decoding pixels.

    Parameters
    ----------
    tif : tifffile.TiffFile
    path : str or Path
        Named in errors.
    all_pages : bool
        Check the shape and strips of every page (True) or of the first and last only (cheap
        completeness check).

    Raises
    ------
    UnreadableMovieError
        No pages, or pages that are not single-channel 2-D images.
    UnsupportedFormatError
        Pages of different shapes or dtypes.
    """
    path = Path(path)
    size = os.fstat(tif.filehandle.fileno()).st_size if hasattr(tif.filehandle, "fileno") \
        else os.path.getsize(path)
    loop = page_chain_loop(tif)
    if loop is not None:
        raise PageChainLoopError(path, loop_reason(*loop))
    pages = tif.pages
    n = len(pages)
    if n == 0:
        raise UnreadableMovieError(path, "TIFF has no pages")
    first = pages.first if hasattr(pages, "first") else pages[0]
    if len(first.shape) != 2:
        raise UnsupportedFormatError(path, f"TIFF page 0 has shape {first.shape}; "
                                           "expected single-channel 2-D frames")
    shape = tuple(int(v) for v in first.shape)
    check_frame_size(path, shape)
    dtype = np.dtype(first.dtype)
    indices = range(n) if all_pages else sorted({0, n - 1})
    first_short = None
    for i in indices:
        try:
            page = pages[i]
        except (tifffile.TiffFileError, ValueError, struct.error, OSError) as exc:
            raise TruncatedMovieError(path, f"{i} of {n} frames readable (page {i}: "
                                            f"{exc})") from None
        if _next_ifd_offset(tif, page.offset) < 0:  # tifffile reads the tags that are there
            raise TruncatedMovieError(path, f"{i} of {n} frames readable (page {i}'s IFD runs "
                                            f"past the end of the file at byte {size})")
        if tuple(page.shape) != shape or np.dtype(page.dtype) != dtype:
            raise UnsupportedFormatError(
                path, f"TIFF pages differ: page {i} is {'x'.join(map(str, page.shape))} "
                      f"{np.dtype(page.dtype)}, page 0 is {shape[0]}x{shape[1]} {dtype}")
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
        if first_short is None and ends and max(ends) > size:
            first_short = i
    last_offset = pages[n - 1].offset
    # A writer links the next IFD before (libtiff) or while writing it: tifffile stops at one
    # cut short inside the file as at one past its end, so any link from the last page tifffile
    # found means pages are missing.
    nxt = _next_ifd_offset(tif, last_offset)
    chain_cut = nxt if nxt != 0 else None
    return TiffLayout(n_pages=n, shape_yx=(shape[0], shape[1]), dtype=dtype,
                      compression=int(first.compression), chain_cut_at=chain_cut,
                      first_short_page=first_short, file_size=size)


def page_chain_loop(tif: tifffile.TiffFile) -> tuple[int, int] | None:
    """``(pages before the link back, index of the page linked to again)`` when the file's
    chain of page directories loops, else None (it ends, or runs past the end of the file).

    Followed here, two small reads a page, before tifffile lists the pages: tifffile looks for
    a link back once, at its 100th page, and lists a longer loop for ever (the daemon's
    completeness check hung on a TIFF of 150 pages linking back, memory growing)."""
    fmt = tif.tiff
    fh = tif.filehandle
    fh.seek(8 if fmt.offsetsize == 8 else 4)
    raw = fh.read(fmt.offsetsize)
    if len(raw) < fmt.offsetsize:
        return None
    offset = int(struct.unpack(fmt.offsetformat, raw)[0])
    seen: dict[int, int] = {}
    while offset > 0:
        if offset in seen:
            return len(seen), seen[offset]
        seen[offset] = len(seen)
        offset = _next_ifd_offset(tif, offset)
    return None


def chain_cut_reason(next_ifd_at: int, file_size: int, readable: int,
                     unit: str = "frames readable") -> str:
    """Why a TIFF's (or an EER's) page chain stops at a link to ``next_ifd_at`` that could not
    be read: the next page's IFD lies past the end of the ``file_size``-byte file (cut short,
    or still being written), or inside it but is no whole IFD (cut off while being written,
    or a damaged file: it said "file cut" of a whole file with one damaged page directory)."""
    if next_ifd_at < file_size:
        return (f"{readable} {unit}; the next page's IFD, at byte {next_ifd_at} of the file's "
                f"{file_size}, is not a whole IFD (cut off while being written, or a damaged "
                "file)")
    return (f"file cut at byte {file_size}: {readable} {unit}, the next page's IFD (at byte "
            f"{next_ifd_at}) lies past its end")


def _truncation_reason(layout: TiffLayout, readable: int) -> str:
    if layout.chain_cut_at is not None:
        return chain_cut_reason(layout.chain_cut_at, layout.file_size, readable)
    return f"{readable} of {layout.n_pages} frames readable"


def read_tiff(path: str | Path, *, spill_dir: str | Path | None = None) -> Movie:
    """Read a multi-page TIFF movie in its stored dtype.

    Parameters
    ----------
    path : str or Path
    spill_dir : str or Path, optional
        Where a movie of more than :data:`~correction.io.spill.SPILL_OVER_BYTES` decoded goes
        (an unnamed temporary file, returned memory-mapped; see :mod:`correction.io.spill`);
        None decodes every movie in memory.

    Returns
    -------
    Movie
        ``frames`` shape (n_pages, ny, nx), rows in MRC order (module notes), e.g. uint8 (K3 LZW) or uint16; SerialEM's
        packed 4-bit pages are unpacked to uint8 counts of twice the stored width.

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
    OSError
        The spill file cannot be written (full disk ...), with its errno.
    """
    path = Path(path)
    with open_tiff(path) as tif:
        layout = scan_tiff(tif, path)
        if layout.compression in EER_COMPRESSIONS:
            raise UnsupportedFormatError(path, "TIFF holds EER frames; read it as EER")
        if layout.first_short_page is not None:
            raise TruncatedMovieError(path, _truncation_reason(layout, layout.first_short_page))
        n = layout.n_pages
        _require_decoder(path, layout.compression)
        packed = _is_packed_4bit(tif.pages[0], layout)
        ny, nx_stored = layout.shape_yx
        sink = FrameSink((n, ny, 2 * nx_stored if packed else nx_stored), layout.dtype,
                         spill_dir=spill_dir)
        try:
            # in memory: all pages in one call; spilled or packed: blocks of pages
            stored_bytes = ny * nx_stored * layout.dtype.itemsize
            per_block = n if not (sink.spilled or packed) \
                else max(2, _SPILL_BLOCK_BYTES // stored_bytes)
            for i0 in range(0, n, per_block):
                i1 = min(n, i0 + per_block)
                block = sink.target(i0, i1)
                if packed:
                    stored = np.empty((i1 - i0, ny, nx_stored), dtype=np.uint8)
                    _decode_pages(tif, layout, path, i0, i1, stored)
                    _unpack_nibbles(stored, block)
                    del stored
                else:
                    _decode_pages(tif, layout, path, i0, i1, block)
                sink.commit(i0, block)
                del block
            frames = sink.frames()
        finally:
            sink.close()
        if layout.chain_cut_at is not None:
            raise TruncatedMovieError(path, _truncation_reason(layout, n))
        pixel_size_A = _pixel_size_from_tags(tif.pages[0])
        header = {
            "format": "tiff",
            "compression": layout.compression,
            "dtype": layout.dtype.str,
            "pages": n,
            "decoded_to": "temporary file" if sink.spilled else "memory",
        }
        if packed:
            header["packed_4bit"] = "half_width"
    return Movie(frames=frames, path=path, pixel_size_A=pixel_size_A, header=header)


def _is_packed_4bit(page: tifffile.TiffPage, layout: TiffLayout) -> bool:
    """True when the pages hold SerialEM's 4-bit super-resolution counts, two per byte.

    IMOD's rule: unsigned 8-bit, one grey sample, a DateTime tag on the first page, and a
    packed super-resolution size or SerialEMCCD's "4 bits packed" description.
    """
    if (layout.dtype != np.uint8 or int(page.samplesperpixel) != 1
            or int(page.photometric) > 1 or 306 not in page.tags):  # 306: DateTime
        return False
    ny, nx = layout.shape_yx
    return _packed_4bit_size(nx, ny) or _serialemccd_packed(page.tags.valueof(270))


def _packed_4bit_size(nx: int, ny: int) -> bool:
    """IMOD's ``sizeCanBe4BitK2SuperRes``: half of a K2/K3 super-resolution width (either
    orientation), within 2 pixels."""
    tol = _PACKED_4BIT_TOLERANCE
    return any((abs(nx - fx // 2) <= tol and abs(ny - fy) <= tol)
               or (abs(nx - fy // 2) <= tol and abs(ny - fx) <= tol)
               for fx, fy in _PACKED_4BIT_FULL_XY)


def _serialemccd_packed(description: object) -> bool:
    """SerialEMCCD's title for packed frames, with no later title of another program (a line
    whose first colon comes before its first blank)."""
    if not isinstance(description, str) or "SerialEMCCD" not in description \
            or "4 bits packed" not in description:
        return False
    for line in description.split("\n")[1:]:
        colon, blank = line.find(":"), line.find(" ")
        if 0 <= colon < blank:
            return False
    return True


def _reverse_rows(frames: np.ndarray) -> None:
    """Reverse the rows of each frame of ``frames`` (k, ny, nx) in place (a TIFF page's top
    row last, as in an MRC), through a copy of half a frame (numpy's ``frame[::-1]`` onto
    itself would copy the whole frame first)."""
    ny = frames.shape[1]
    half = ny // 2
    for frame in frames:
        top = frame[:half].copy()
        frame[:half] = frame[ny - half:][::-1]
        frame[ny - half:] = top[::-1]


def _unpack_nibbles(stored: np.ndarray, out: np.ndarray) -> None:
    """Unpack bytes (k, ny, nx) into ``out`` (k, ny, 2 nx): low nibble first, as SerialEMCCD
    packs them."""
    pairs = out.reshape(*stored.shape, 2)
    np.bitwise_and(stored, 0x0F, out=pairs[..., 0])
    np.right_shift(stored, 4, out=pairs[..., 1])


def _decode_pages(tif: tifffile.TiffFile, layout: TiffLayout, path: Path, i0: int, i1: int,
                  out: np.ndarray) -> None:
    """Decode pages ``i0:i1`` into ``out`` (two threads), rows reversed into MRC order (module
    notes); name the first page that fails.

    libtiff (imagecodecs' ``tiff_decode``, on a read-only map of the file) decodes a page's
    strips in C without holding the GIL: SerialEM writes LZW strips of about 16 KB (one row of
    a super-resolution frame), and tifffile's per-strip work in Python made a 94-Mpixel page
    take 0.5-0.9 s against 0.22 s (0.06 s against 0.15 s for a K3 page). tifffile decodes
    where imagecodecs has no libtiff, and names the page when anything fails.
    """
    if _decoded_by_libtiff(path, i0, i1, out):
        return
    try:
        tif.asarray(key=range(i0, i1), out=out, maxworkers=2)
        _reverse_rows(out)
    except Exception:  # noqa: BLE001 - find which page fails, then report it
        for i in range(i0, i1):
            try:
                tif.pages[i].asarray(out=out[i - i0])
            except Exception as exc:  # noqa: BLE001 - a page that fails to decode
                raise TruncatedMovieError(
                    path, f"{_truncation_reason(layout, i)} (page {i}: {exc})") from None
        raise


def _decoded_by_libtiff(path: Path, i0: int, i1: int, out: np.ndarray) -> bool:
    """Pages ``i0:i1`` into ``out`` with libtiff, two pages at a time, each page's rows reversed
    by its thread right after it is decoded (0.36 s for K3 x 40 bytes on one thread after the
    decoding); False when imagecodecs has no libtiff or any page fails (tifffile then decodes,
    or names the bad page). The file's pages read through the map are dropped afterwards, so
    the compressed movie does not stay resident."""
    if not _LIBTIFF:
        return False
    try:
        with open(path, "rb") as fh, \
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            def page(i: int) -> None:
                imagecodecs.tiff_decode(mapped, index=i, out=out[i - i0])
                _reverse_rows(out[i - i0:i - i0 + 1])

            try:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    list(pool.map(page, range(i0, i1)))
            finally:
                if hasattr(mapped, "madvise"):
                    mapped.madvise(mmap.MADV_DONTNEED)
    except Exception:  # noqa: BLE001 - any libtiff failure: tifffile decodes or reports
        return False
    return True


#: TIFF compressions that may lose information (the JPEG family, JPEG 2000, JPEG XR, JPEG XL,
#: WebP, LERC: whether a file's was lossless is not told by its tags): counts decoded from them
#: are not the detector's counts (a movie converted after acquisition), so they are refused
_MAYBE_LOSSY = {6: "old-style JPEG", 7: "JPEG", 99: "JPEG", 22610: "JPEG XR", 33003: "JPEG 2000",
                33004: "JPEG 2000", 33005: "JPEG 2000", 33007: "JPEG", 34712: "JPEG 2000",
                34887: "LERC", 34892: "lossy JPEG", 34927: "WebP",
                34934: "JPEG XR", 50001: "WebP", 50002: "JPEG XL", 52546: "JPEG XL"}


def _require_decoder(path: Path, compression: int) -> None:
    """Raise :class:`UnsupportedFormatError` for a compression tifffile cannot decode, or one
    that may lose information (:data:`_MAYBE_LOSSY`)."""
    if compression in _MAYBE_LOSSY:
        raise UnsupportedFormatError(path, f"TIFF compression {_MAYBE_LOSSY[compression]} "
                                           f"({compression}) may lose information: counts must "
                                           "be stored losslessly (none, LZW, deflate, zstd); "
                                           "use the file the detector wrote")
    try:
        known = compression in tifffile.TIFF.DECOMPRESSORS
    except Exception:  # noqa: BLE001 - an unknown code is simply not known
        known = False
    if not known:
        raise UnsupportedFormatError(path, f"TIFF compression {compression} is not supported")


_A_PER_RESOLUTION_UNIT = {2: 2.54e8, 3: 1e8}  # TIFF ResolutionUnit inch, centimetre -> Å


def _pixel_size_from_tags(page: tifffile.TiffPage) -> float | None:
    """Pixel size in Å from XResolution per inch or centimetre, when the value is plausible.

    SerialEM (through IMOD's ``tiffWriteSection``) stores ``round(2.54e8 / pixel_A)`` pixels per
    inch. Image writers that know nothing of pixel sizes leave 72 or 1 pixels per inch, or no
    unit; those (and anything outside 0.1-100 Å) give None.
    """
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres = tags.get("XResolution")
    if unit is None or xres is None or int(unit.value) not in _A_PER_RESOLUTION_UNIT:
        return None
    try:
        num, den = xres.value
        px_per_unit = num / den
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not px_per_unit > 0:
        return None
    pixel_A = _A_PER_RESOLUTION_UNIT[int(unit.value)] / px_per_unit
    return float(f"{pixel_A:.6g}") if 0.1 <= pixel_A <= 100 else None


def read_tiff_image(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read a single-page TIFF image (gain, dark, defect map, EER ``.gain``), its rows reversed
    as a TIFF movie's (module notes), except in an EER ``.gain`` file (stored order, as EER
    frames).

    Returns
    -------
    image : ndarray, shape (ny, nx), stored dtype
    pixel_size_A : float or None

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
        Including a TIFF with more than one page.
    """
    path = Path(path)
    with open_tiff(path) as tif:
        layout = scan_tiff(tif, path)
        if layout.n_pages != 1:
            raise UnsupportedFormatError(path, f"expected one 2-D image, TIFF has "
                                               f"{layout.n_pages} pages")
        if layout.first_short_page is not None:
            raise TruncatedMovieError(path, "image data runs past the end of the file")
        _require_decoder(path, layout.compression)
        try:
            image = tif.pages[0].asarray()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is an unreadable file
            raise UnreadableMovieError(path, f"cannot decode TIFF image: {exc}") from None
        image = np.asarray(image)
        if path.suffix.lower() != ".gain":
            image = np.ascontiguousarray(image[::-1])
        return image, _pixel_size_from_tags(tif.pages[0])
