"""Cheap format-level completeness checks: is this movie fully written?

Reads the header (MRC) or the page directory and the last page (TIFF, EER); never decodes the
whole movie. Used by the daemon's validate stage after the file's size has settled.

* MRC: the file size must equal exactly what the header asks for. SerialEM writes the header
  with nz = the expected frame count at the first frame and rewrites it with the actual count
  at the end, so a file shorter than its header is still being written (or was cut). A file
  longer than its header says also fails: its header is not (yet) the final one.
* TIFF / EER: every page's IFD is inside the file, the last page's next-IFD pointer is 0 and
  the last page decodes, and the file does not end in zeros (4 KiB) unless its first
  page's data does too: a copy that sizes the file first (Windows over SMB) and stalls leaves zeros
  at its end, which read as a page chain's end (a zero next-IFD pointer) and as frames' data.
  Such a file is ``zero_filled``, as an MRC is, and taken as it is after the incomplete grace.

A format's reader failing on a half-written structure (tifffile on a zeroed tag) is an
incomplete file, not an error of the check (it was a rejection at once).

A file that can be read but has no valid movie header (neither MRC, TIFF nor EER; an MRC header
with an impossible mode or size; a reference image) is *not a movie*: no amount of waiting will
complete it, so :attr:`Completeness.not_a_movie` says so and its reason starts with
``"not a movie: "``, for the caller to reject it once its size has settled rather than wait for
it as incomplete. An empty file, one shorter than an MRC header, or one whose first 1 KiB is
zeros (a copy that sized the file first) may still be being written and stays merely incomplete.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (CorrectionError, PageChainLoopError, TruncatedMovieError,
                      UnreadableMovieError)

__all__ = ["Completeness", "check_complete"]


@dataclass(frozen=True, slots=True)
class Completeness:
    """Result of :func:`check_complete`.

    Attributes
    ----------
    complete : bool
        True when the file holds every frame its structure announces.
    reason : str
        One line: what was checked (complete) or what is missing (incomplete), without the
        file name.
    n_frames : int or None
        Frames (pages, raw EER frames, MRC sections) found, when it could be told.
    not_a_movie : bool
        The file is readable but has no valid movie header (``reason`` then starts with
        ``"not a movie: "``): it will never be complete, whatever the wait.
    unreadable : bool
        The file could not be opened or read (permissions, an I/O error): nothing is known
        of its content.
    zero_filled : bool
        An MRC of its full size whose last frame ends in zeros where its first has counts, or
        whose middle is zeros too: most likely a copy that gave the file its size first and
        fills it (Windows over SMB), stalled; perhaps a movie whose last frame is blank
        (:func:`_last_frame_unwritten`).
    """

    complete: bool
    reason: str
    n_frames: int | None
    not_a_movie: bool = False
    unreadable: bool = False
    zero_filled: bool = False


def check_complete(path: str | Path) -> Completeness:
    """Tell cheaply whether a movie file is completely written.

    Parameters
    ----------
    path : str or Path
        An MRC, TIFF or EER movie.

    Returns
    -------
    Completeness
        Never raises for a bad movie: a missing, unreadable or unsupported file is reported as
        incomplete with the reason.
    """
    from . import detect_format  # noqa: PLC0415 - io/__init__ imports this module

    path = Path(path)
    try:
        try:
            kind = detect_format(path)
        except UnreadableMovieError as exc:
            has_bytes, denied = _first_byte(path)
            if has_bytes:  # bytes there, but no format's signature
                return _not_a_movie(exc.reason, path)
            if denied is not None:  # permission denied, a share's I/O error: not the movie's
                raise denied from None
            raise
        if kind == "mrc":
            try:
                return _check_mrc(path)
            except TruncatedMovieError:
                raise  # shorter than a header: perhaps still being written
            except CorrectionError as exc:  # a full header that no movie has
                return _not_a_movie(exc.reason, path)
        try:
            if kind == "eer":
                return _check_eer(path)
            if kind == "tiff":
                return _check_tiff(path)
        except PageChainLoopError as exc:  # no more bytes will end it
            return _not_a_movie(exc.reason, path)
        return _not_a_movie(f"{kind} files are references, not movies", path)
    except CorrectionError as exc:
        return Completeness(False, exc.reason, None)
    except OSError as exc:
        return Completeness(False, f"cannot read: {exc.strerror or exc}", None, unreadable=True)
    except Exception as exc:  # noqa: BLE001 - a reader failing on a half-written structure
        return Completeness(False, f"does not read yet: {type(exc).__name__}: {exc}", None)


def _not_a_movie(reason: str, path: Path) -> Completeness:
    if _head_is_zeros(path):  # no header yet: a copy that sized the file first, stalled
        return Completeness(False, "its header is zeros (from its first bytes on): not written "
                                   "yet (a copy that sized the file first)?", None)
    return Completeness(False, f"not a movie: {reason}", None, not_a_movie=True)


#: the start of a file looked at for a header not written yet (an MRC's whole main header)
_HEAD_BYTES = 1024
#: bytes a stalled copy may have written of a header that is otherwise zeros (a TIFF's 8-byte
#: header and a little more: an MRC's nx, ny, nz and mode are its first 16)
_HEAD_WRITTEN_BYTES = 16


def _head_is_zeros(path: Path) -> bool:
    """Whether the file's first bytes (up to :data:`_HEAD_BYTES`) are zeros after its first
    :data:`_HEAD_WRITTEN_BYTES`: no format has such a header (an MRC's has its axes' order
    at bytes 64-75 and ``MAP`` at 208, a TIFF's its first IFD's tags), so nobody has written
    it yet: a Windows copy over SMB sizes the file first and fills it from the start, and
    stalled in its first bytes it was quarantined as not a movie at once. Only a file whose
    format was not recognised is asked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        head = os.read(fd, _HEAD_BYTES)
    except OSError:
        return False
    finally:
        os.close(fd)
    return len(head) > _HEAD_WRITTEN_BYTES and len(head.rstrip(b"\0")) <= _HEAD_WRITTEN_BYTES


def _first_byte(path: Path) -> tuple[bool, OSError | None]:
    """Whether ``path`` is a regular file with a first byte, and why one that exists cannot
    be read (permission denied on opening, a share's I/O error on that byte; None when it
    reads, is gone or is no regular file). Opened without blocking: a FIFO put in its place
    between two looks never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False, None  # gone, or not a file: not a matter of access
    except OSError as exc:
        return False, exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False, None
        return bool(os.read(fd, 1)), None
    except OSError as exc:
        return False, exc
    finally:
        os.close(fd)


def _check_mrc(path: Path) -> Completeness:
    from .mrc import read_mrc_layout  # noqa: PLC0415

    layout = read_mrc_layout(path)
    if layout.file_size < layout.expected_size:
        n_full = max(0, (layout.file_size - layout.data_offset) // max(layout.frame_bytes, 1))
        return Completeness(False, layout.shortfall_reason() + f" ({n_full} complete)", n_full)
    if layout.file_size > layout.expected_size:
        return Completeness(False, f"file is {layout.file_size} bytes, more than the "
                                   f"{layout.expected_size} its header gives for {layout.nz} "
                                   f"frames of {layout.nx}x{layout.ny} mode {layout.mode}",
                            layout.nz)
    if layout.nz == 0:
        return Completeness(False, "header gives 0 frames", 0)
    if _last_frame_unwritten(path, layout):
        return Completeness(False, f"its size matches its header ({layout.nz} frames), but its "
                                   "last frame ends in zeros: still being filled (a copy that "
                                   "sized the file first)?", layout.nz, zero_filled=True)
    return Completeness(True, f"size matches header: {layout.nz} frames of "
                              f"{layout.nx}x{layout.ny} mode {layout.mode}", layout.nz)


def _last_frame_unwritten(path: Path, layout: Any) -> bool:
    """Whether an MRC's last frame looks not filled yet by a copy that sized the file first
    and fills it from the start. Two signs, from three small reads (a single image, one
    frame, is not looked at):

    * the end of the last frame (up to 64 KiB, a quarter of a small frame) is zeros while its
      middle is zeros too or the first frame's end is not (a detector's dead rows at the edge
      are zeros at the end of every frame, and a movie's frames have counts in their middle;
      a whole blank last frame is taken after the incomplete grace);
    * the file ends in a run of zero samples that the first frame's end, where it has counts,
      makes improbable (:func:`_improbable_zero_run`): a copy stalled with less than that
      window left."""
    if layout.nz < 2:
        return False
    size = max(1, min(64 << 10, layout.frame_bytes // 4))
    last = layout.data_offset + (layout.nz - 1) * layout.frame_bytes
    end = layout.frame_bytes - size
    fd = os.open(path, os.O_RDONLY)
    try:
        tail = os.pread(fd, size, last + end)
        first_tail = os.pread(fd, size, layout.data_offset + end)
        if tail.strip(b"\0"):
            sample_bytes = 1 if layout.mode == 101 else layout.dtype.itemsize
            return _improbable_zero_run(tail, first_tail, sample_bytes)
        return (not os.pread(fd, size, last + layout.frame_bytes // 2).strip(b"\0")
                or bool(first_tail.strip(b"\0")))
    finally:
        os.close(fd)


#: a complete movie taken for a stalled copy (it then waits the incomplete grace) this seldom
_FALSE_STALL_ODDS = 1e-9


def _improbable_zero_run(tail: bytes, reference: bytes, sample_bytes: int) -> bool:
    """Whether ``tail`` (the end of the last frame) ends in more zero samples than chance
    gives, judged from ``reference`` (the end of the first frame, the same bytes of the
    frame): with ``q`` the reference's fraction of zero samples, ``r`` zero samples end a frame
    with odds ``q**r``. Zeros where the reference is zero too (dead pixels, rows or columns:
    the same in every frame) prove nothing. At 1 e/px a run of 21 samples says a copy is not
    done, at 0.1 e/px 208."""
    run_bytes = len(tail) - len(tail.rstrip(b"\0"))
    run = run_bytes // sample_bytes
    if run == 0 or not reference[len(reference) - run * sample_bytes:].strip(b"\0"):
        return False
    samples = np.frombuffer(reference[:len(reference) // sample_bytes * sample_bytes],
                            dtype=f"V{sample_bytes}")
    zero = np.zeros(1, dtype=f"V{sample_bytes}")[0]
    q = (np.count_nonzero(samples == zero) + 1) / (samples.size + 2)
    return run * math.log(q) < math.log(_FALSE_STALL_ODDS)


def _check_eer(path: Path) -> Completeness:
    """An EER file is complete when its page chain ends in the file and its last raw frame
    decodes; an uncompressed integrated image before the raw frames (EerReaderLib's "final
    image", ``EerFile::EerFile``) is not one of them."""
    from .eer import decode_eer_page, scan_eer  # noqa: PLC0415
    from .tiff import open_tiff  # noqa: PLC0415

    with open_tiff(path) as tif:
        n = scan_eer(tif, path, all_pages=False).n_raw  # a cut chain or page: raises
        try:
            decode_eer_page(tif, n - 1, path)
        except CorrectionError as exc:
            return Completeness(False, exc.reason, n)
        except Exception as exc:  # noqa: BLE001 - any decode failure means not complete
            return Completeness(False, f"last raw frame ({n - 1}) does not decode: {exc}", n)
        if _ends_in_zeros(path, tif):
            return _zero_tail(n, "raw EER frames")
        # a copy that sized the file first, stalled in the last IFD's entries: tifffile drops
        # zero entries (a strip's offset or count among them) and the last frame decoded
        # short or empty (one raw frame's counts lost, corrected again once whole)
        unwritten = _unwritten_after_last_page(tif, tif.pages[len(tif.pages) - 1].offset,
                                               os.fstat(tif.filehandle.fileno()).st_size)
        if unwritten:
            return Completeness(False, f"{n} raw EER frames read, but {unwritten}: still being "
                                       "filled (a copy that sized the file first)?", n,
                                zero_filled=True)
    return Completeness(True, f"{n} raw EER frames, last frame decodes", n)


#: the end of a TIFF or EER file looked at for zeros: a copy stalled with less than this left
#: is not seen (a chance of 4 KiB in the size of a frame); the end of a compressed page or of
#: an IFD is never zeros, an uncompressed frame's last 4096 bytes at 0.01 counts per pixel
#: about 1 in e^40 (64 bytes: 11 of 40 complete low-dose movies waited), and dead rows at its
#: end are zeros in the first page too
_TAIL_BYTES = 4096


def _ends_in_zeros(path: Path, tif: Any) -> bool:
    """Whether the file's last bytes (:data:`_TAIL_BYTES`, at most an eighth of it) are zeros
    while the end of its first page's data is not (uncompressed frames whose last rows are
    dead end in zeros in every page)."""
    size = os.stat(path).st_size
    tail = max(1, min(_TAIL_BYTES, size // 8))
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.pread(fd, tail, size - tail).strip(b"\0"):
            return False
        page = tif.pages[0]
        ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts) if c]
        if not ends:
            return True
        first_end = max(ends)
        first = min(tail, first_end)
        return bool(os.pread(fd, first, first_end - first).strip(b"\0"))
    finally:
        os.close(fd)


def _zero_tail(n: int, what: str) -> Completeness:
    return Completeness(False, f"{n} {what} read, but the file ends in zeros: still being filled "
                               "(a copy that sized the file first)?", n, zero_filled=True)


def _check_tiff(path: Path) -> Completeness:
    from .tiff import chain_cut_reason, open_tiff, scan_tiff  # noqa: PLC0415

    with open_tiff(path) as tif:
        layout = scan_tiff(tif, path, all_pages=False)
        n = layout.n_pages
        if layout.chain_cut_at is not None:
            return Completeness(False, chain_cut_reason(layout.chain_cut_at, layout.file_size,
                                                        n, "pages present"), n)
        if layout.first_short_page is not None:
            return Completeness(False, f"page {layout.first_short_page} of {n} runs past the "
                                       f"end of the file ({layout.file_size} bytes)", n)
        try:
            tif.pages[n - 1].asarray()
        except CorrectionError as exc:
            return Completeness(False, exc.reason, n)
        except Exception as exc:  # noqa: BLE001 - any decode failure means not complete
            return Completeness(False, f"last page ({n - 1}) does not decode: {exc}", n)
        if _ends_in_zeros(path, tif):
            return _zero_tail(n, "pages")
        unwritten = _unwritten_after_last_page(tif, tif.pages[n - 1].offset, layout.file_size)
        if unwritten:
            return Completeness(False, f"{n} pages read, but {unwritten}: still being filled "
                                       "(a copy that sized the file first)?", n,
                                zero_filled=True)
    return Completeness(True, f"{n} pages, last page decodes", n)


#: bytes of TIFF value types (type code -> bytes per value), for values stored out of line
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}
#: zeros after the last byte a TIFF's last page refers to that a writer's padding may leave
_PADDING_BYTES = 16


def _unwritten_after_last_page(tif: Any, ifd_offset: int, size: int) -> str:
    """What says that a TIFF whose page chain ends at the IFD at ``ifd_offset`` is not
    written yet ("" when nothing does): an entry of that IFD that is zeros (no tag has type
    0), or zeros from the end of everything that page refers to (its IFD, its tags' values,
    its data) to the end of the file. A writer that puts the IFDs after all image data
    (tifffile's layout), copied by one that sizes the file first and stalled among them,
    left a chain cut short at a zero link, and the movie was corrected with the pages found
    (the file's last 4 KiB are not all zeros when less is left)."""
    fmt = tif.tiff
    fh = tif.filehandle
    fh.seek(ifd_offset)
    (n_tags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
    entries = fh.read(n_tags * fmt.tagsize)
    referenced = ifd_offset + fmt.tagnosize + n_tags * fmt.tagsize + fmt.offsetsize
    inline = fmt.tagsize - 4 - fmt.offsetsize  # bytes a value holds in its entry
    count_format = fmt.byteorder + ("Q" if fmt.offsetsize == 8 else "I")
    for i in range(n_tags):
        entry = entries[i * fmt.tagsize:(i + 1) * fmt.tagsize]
        _, kind = struct.unpack(fmt.byteorder + "HH", entry[:4])
        if kind not in _TIFF_TYPE_BYTES:
            return f"entry {i} of its last page's IFD (at byte {ifd_offset}) is not written"
        (count,) = struct.unpack(count_format, entry[4:4 + fmt.offsetsize])
        if count * _TIFF_TYPE_BYTES[kind] > inline:
            (at,) = struct.unpack(fmt.offsetformat, entry[4 + fmt.offsetsize:])
            referenced = max(referenced, at + count * _TIFF_TYPE_BYTES[kind])
    page = tif.pages[len(tif.pages) - 1]
    if not all(page.dataoffsets) or not all(page.databytecounts):  # a strip never starts at
        # byte 0 (the header) nor is empty (an EER or LZW strip of no counts has its codes)
        return "its last page's strip offsets or byte counts are zeros"
    referenced = max([referenced] + [int(o) + int(c) for o, c in
                                     zip(page.dataoffsets, page.databytecounts)])
    if size - referenced <= _PADDING_BYTES:
        return ""
    fd = tif.filehandle.fileno()
    window = 64 << 10
    last = os.pread(fd, min(window, size - referenced), max(referenced, size - window))
    if not os.pread(fd, min(window, size - referenced), referenced).strip(b"\0") and \
            not last.strip(b"\0"):
        return (f"its bytes {referenced}-{size} after the last page found are zeros (pages "
                "not linked yet)")
    zeros = len(last) - len(last.rstrip(b"\0"))
    if zeros > _PADDING_BYTES:
        # a page's data written after the last linked one, and zeros after it: a writer
        # that puts each page's IFD after its data, copied by one that sized the file first
        return (f"its bytes {referenced}-{size} after the last page found end in {zeros} "
                "zero bytes (a page not linked yet)")
    return ""
