"""EER reader (Falcon 4/4i): raw electron-event frames decoded and grouped into fractions.

An EER file is a BigTIFF with one page per raw frame, compressed with 65000 (8-bit run
lengths), 65001 (7-bit) or 65002 (run-length and sub-pixel bit widths in tags 65007-65009).
A page may be preceded by an uncompressed integrated image, which is skipped. tifffile parses
the page directory; each raw frame's strips are read with ``os.pread``, joined into one bit
stream ("Strips" below) and decoded by ``imagecodecs.eer_decode`` straight into the fraction
it belongs to (the decoder adds one per event to its output, a fact checked on a 4-pixel
probe stream before each read; where an imagecodecs version does not, each raw frame goes
through a reused boolean buffer that is then added). Memory holds the fractions (uint8 when at most 255 raw frames are summed, else uint16),
never all raw frames; fractions are decoded by ``max_workers`` threads (the decoder releases
the GIL).

Strips
    A raw frame's strips are pieces of ONE bit stream: the stream runs on from the last bit
    of a strip into the next one, and only the frame's last code ends the image, so the strips
    are joined (in order) before decoding, never decoded one by one. This is how every reader
    written by or with the format's makers reads them: Thermo Fisher's reference reader
    (fei-company/EerReaderLib ``EerFrame::EerFrame`` appends ``TIFFReadRawStrip`` of every
    strip to one buffer, which ``ElectronCountedFramesDecompressor`` decodes as one stream of
    width x length pixels), RELION (3dem/relion ``src/renderEER.cpp``
    ``EERRenderer::lazyReadFrames`` reads all ``TIFFNumberOfStrips`` strips of a frame back to
    back; ``renderFrames`` runs one bit position over them), MotionCor3
    (``EerUtil/CLoadEerFrames.cpp`` ``mReadFrame``) and cisTEM (``src/core/eer_file.cpp``
    ``ReadSlicesFromDisk``). tifffile (``TiffPage.decode``, ``decode_eer``) decodes each strip
    as an image of its own rows, as TIFF strips usually are; that is right only for a frame
    stored in one strip, and a stream cut mid-code into several strips does not decode so
    (imagecodecs: ``IMCD_OUTPUT_TOO_SMALL``). EerReaderLib's README says a frame "is stored in
    one or more strips. If multiple strips are used, the entire frame can be reconstructed by
    concatenating the data in the separate strips"; joining gives the same result for one.
    The joined stream is padded to an even number of bytes (``eer_decode`` refuses odd ones).

Grouping
    ``ReadParams.frame_integration`` (MotionCor2's ``-FmIntFile``) groups as MotionCor3 does
    (:mod:`correction.frame_integration`); else
    ``ReadParams.eer_group_frames`` raw frames per fraction; else ``eer_dose_per_fraction_e_A2``
    divided by the dose per raw frame (from the acquisition metadata ``totalDose`` in e/pixel
    and the pixel size, else measured from the counts of the first raw frames); else 40. Raw
    frames left over after the last full fraction form a fraction of their own when they are at
    least half a group, else they join the last fraction. ``Movie.raw_frames_per_frame`` records
    the grouping exactly.

Sampling
    ``eer_sampling=1`` decodes on the physical (4K) grid. ``eer_sampling=2`` decodes the first
    sub-pixel bit of each event onto the 8K grid and returns 8K fractions with half the physical
    pixel size, as MotionCor2's ``-EerSampling 2`` and RELION's ``--eer_upsampling 2`` render
    them: the output stays on that grid unless binned (``ReadParams.bin_factor = 2`` gives the
    physical grid back, as their ``-FtBin 2`` / ``--bin_factor 2``), and a pixel size given
    (``ReadParams.pixel_size_A``) is that of the grid decoded onto, as MotionCor2's
    ``-PixSize`` and RELION's ("the physical pixel size unless you render EER on the 8K grid");
    the file's own ``sensorPixelSize`` is the physical one. ``Movie.header
    ["super_resolution_factor"]`` is 2.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from ..errors import (PageChainLoopError, ParameterError, TruncatedMovieError,
                      UnreadableMovieError, UnsupportedFormatError)
from ..movie import Movie
from ..params import ReadParams
from .frame_size import check_frame_size
from .spill import FrameSink
from .tiff import EER_COMPRESSIONS, chain_cut_reason, loop_reason, open_tiff, page_chain_loop

__all__ = [
    "EerLayout",
    "is_eer",
    "scan_eer",
    "read_eer",
    "decode_eer_page",
    "group_sizes",
    "parse_eer_metadata",
    "DEFAULT_GROUP_FRAMES",
    "grouping_record",
]

#: Raw frames per fraction when neither a count nor a dose per fraction is given (as RELION).
DEFAULT_GROUP_FRAMES = 40
_SAMPLE_FRAMES = 10


@dataclass(frozen=True, slots=True)
class EerLayout:
    """Where the raw frames of an EER file are and how they are coded.

    Attributes
    ----------
    first_page : int
        Index of the first raw-frame page (1 when an integrated image comes first).
    n_raw : int
        Number of raw frames.
    shape_yx : tuple of int
        Physical frame shape (sampling 1).
    compression : int
        65000, 65001 or 65002.
    skip_bits, horz_bits, vert_bits : int
        Run-length and sub-pixel bit widths.
    strips : list of tuple
        Per raw frame, ((offset, bytecount), ...) of its strips.
    rows_per_strip : int
        The RowsPerStrip tag, kept for the record; decoding joins a frame's strips instead.
    metadata : dict
        Acquisition metadata items (name -> value, numbers as float) from tag 65001.
    units : dict
        Units of those items where given.
    file_size : int
    """

    first_page: int
    n_raw: int
    shape_yx: tuple[int, int]
    compression: int
    skip_bits: int
    horz_bits: int
    vert_bits: int
    strips: list[tuple[tuple[int, int], ...]]
    rows_per_strip: int
    metadata: dict
    units: dict
    file_size: int


def is_eer(path: str | Path) -> bool:
    """True when ``path`` is a TIFF whose first raw-frame page uses an EER compression."""
    try:
        with tifffile.TiffFile(path) as tif:
            first = tif.pages.first          # parses page 0 only, not the whole chain
            if first.compression in EER_COMPRESSIONS:
                return True
            # An uncompressed integrated image may come first; look at page 1 only then.
            return first.compression == 1 and tif.pages[1].compression in EER_COMPRESSIONS
    except Exception:  # noqa: BLE001 - anything unreadable (or one page only) is not EER
        return False


def parse_eer_metadata(xml: bytes | str | None) -> tuple[dict, dict]:
    """Parse EER acquisition metadata ``<metadata><item name=".." unit="..">v</item>..``.

    Returns
    -------
    values : dict
        Item name -> float where the text is a number, else the text.
    units : dict
        Item name -> unit, for items that have one.
    """
    if not xml:
        return {}, {}
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8", "replace")
    xml = xml.strip("\x00 \r\n\t")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}, {}
    values: dict = {}
    units: dict = {}
    for item in root.iter("item"):
        name = item.get("name")
        if not name:
            continue
        text = (item.text or "").strip()
        try:
            values[name] = float(text)
        except ValueError:
            values[name] = text
        if item.get("unit"):
            units[name] = item.get("unit")
    return values, units


def _bits(page: tifffile.TiffPage, compression: int) -> tuple[int, int, int]:
    if compression == 65000:
        return 8, 2, 2
    if compression == 65001:
        return 7, 2, 2
    tags = page.tags
    return (int(tags.valueof(65007, 7)), int(tags.valueof(65008, 2)),
            int(tags.valueof(65009, 2)))


def scan_eer(tif: tifffile.TiffFile, path: str | Path, *, all_pages: bool = True) -> EerLayout:
    """Read the page directory of an EER file (no pixel decoding).

    Raises
    ------
    UnreadableMovieError
        No raw frames.
    UnsupportedFormatError
        A compression that is not EER, pages of different shapes or codings.
    TruncatedMovieError
        Strips past the end of the file (``all_pages``) or a cut page chain.
    """
    from .tiff import _next_ifd_offset  # noqa: PLC0415 - shared private helper

    path = Path(path)
    size = os.fstat(tif.filehandle.fileno()).st_size
    loop = page_chain_loop(tif)
    if loop is not None:  # tifffile would list a long loop for ever
        raise PageChainLoopError(path, loop_reason(*loop))
    pages = tif.pages
    n_pages = len(pages)
    if n_pages == 0:
        raise UnreadableMovieError(path, "EER file has no pages")
    first_page = 0
    page0 = pages[0]
    if page0.compression == 1 and n_pages > 1:
        first_page = 1
    try:
        key = pages[first_page]
    except (tifffile.TiffFileError, ValueError, struct.error, OSError) as exc:
        raise TruncatedMovieError(path, f"0 of {n_pages - first_page} raw frames readable "
                                        f"(page {first_page}: {exc})") from None
    compression = int(key.compression)
    if compression not in EER_COMPRESSIONS:
        raise UnsupportedFormatError(path, f"EER page {first_page} has compression "
                                           f"{compression}; EER uses 65000, 65001 or 65002")
    skip_bits, horz_bits, vert_bits = _bits(key, compression)
    shape = (int(key.imagelength), int(key.imagewidth))
    check_frame_size(path, shape)
    rows_per_strip = int(key.rowsperstrip) if key.rowsperstrip else shape[0]
    xml = page0.tags.valueof(65001)
    metadata, units = parse_eer_metadata(xml if isinstance(xml, (bytes, str)) else None)
    strips: list[tuple[tuple[int, int], ...]] = []
    indices = range(first_page, n_pages)
    for i in indices:
        try:
            page = pages[i] if (all_pages or i in (first_page, n_pages - 1)) else None
        except (tifffile.TiffFileError, ValueError, struct.error, OSError) as exc:
            raise TruncatedMovieError(path, f"{i - first_page} of {n_pages - first_page} raw "
                                            f"frames readable (page {i}: {exc})") from None
        if page is None:
            strips.append(())
            continue
        if _next_ifd_offset(tif, page.offset) < 0:
            raise TruncatedMovieError(path, f"{i - first_page} of {n_pages - first_page} raw "
                                            f"frames readable (page {i}'s IFD runs past the "
                                            f"end of the file at byte {size})")
        if int(page.compression) != compression:
            if int(page.compression) in EER_COMPRESSIONS:
                raise UnsupportedFormatError(path, f"EER pages mix compressions {compression} "
                                                   f"and {page.compression} (page {i})")
            raise UnsupportedFormatError(path, f"EER page {i} has compression "
                                               f"{page.compression}, not an EER code")
        if (int(page.imagelength), int(page.imagewidth)) != shape:
            raise UnsupportedFormatError(path, f"EER pages differ: page {i} is "
                                               f"{page.imagelength}x{page.imagewidth}, page "
                                               f"{first_page} is {shape[0]}x{shape[1]}")
        if compression == 65002 and _bits(page, compression) != (skip_bits, horz_bits,
                                                                 vert_bits):
            raise UnsupportedFormatError(path, f"EER page {i} changes its bit widths")
        segs = tuple((int(o), int(c)) for o, c in zip(page.dataoffsets, page.databytecounts))
        if segs and max(o + c for o, c in segs) > size:
            raise TruncatedMovieError(path, f"{i - first_page} of {n_pages - first_page} raw "
                                            f"frames readable (page {i} runs past the end of "
                                            f"the file at byte {size})")
        strips.append(segs)
    nxt = _next_ifd_offset(tif, pages[n_pages - 1].offset)
    if nxt != 0:  # a link tifffile could not follow: the next IFD is missing or cut short
        raise TruncatedMovieError(path, chain_cut_reason(nxt, size, n_pages - first_page,
                                                         "raw frames readable"))
    return EerLayout(first_page=first_page, n_raw=n_pages - first_page, shape_yx=shape,
                     compression=compression, skip_bits=skip_bits, horz_bits=horz_bits,
                     vert_bits=vert_bits, strips=strips, rows_per_strip=rows_per_strip,
                     metadata=metadata, units=units, file_size=size)


def _decode_into(fd: int, layout: EerLayout, raw_index: int, buf: np.ndarray, superres: int,
                 path: Path, *, accumulate: bool = False) -> None:
    """Decode raw frame ``raw_index`` into ``buf`` (shape of the output grid).

    ``accumulate=False``: ``buf`` is a bool buffer, cleared first, that ends up holding the
    frame's events. ``accumulate=True``: one is added to ``buf`` (uint8 or uint16, a fraction)
    per event; only valid where :func:`_decoder_accumulates` says so.
    """
    data = _frame_stream(fd, layout.strips[raw_index], raw_index, path)
    if not accumulate:
        buf.fill(False)  # the decoder only touches the pixels that hold events
    try:
        imagecodecs.eer_decode(data, buf.shape, layout.skip_bits, layout.horz_bits,
                               layout.vert_bits, superres=superres, out=buf)
    except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error types
        raise UnreadableMovieError(path, f"raw frame {raw_index} does not decode "
                                         f"(compression {layout.compression}, "
                                         f"{len(layout.strips[raw_index])} strip(s) joined): "
                                         f"{exc}") from None


def _frame_stream(fd: int, strips: tuple[tuple[int, int], ...], raw_index: int,
                  path: Path) -> bytes:
    """The bit stream of one raw frame: its strips ``((offset, bytecount), ...)`` joined in
    order (module docstring, "Strips"), padded with a zero byte to an even length.

    Strips that follow each other in the file are read with one ``os.pread``.

    Raises
    ------
    TruncatedMovieError
        A strip runs past the end of the file.
    """
    if not strips:
        return b""
    start = strips[0][0]
    end = strips[-1][0] + strips[-1][1]
    contiguous = all(o + c == o2 for (o, c), (o2, _) in zip(strips, strips[1:]))
    if contiguous:
        data = os.pread(fd, end - start, start)
        complete = len(data) == end - start
    else:
        pieces = [os.pread(fd, c, o) for o, c in strips]
        complete = all(len(p) == c for p, (_, c) in zip(pieces, strips))
        data = b"".join(pieces)
    if not complete:
        raise TruncatedMovieError(path, f"raw frame {raw_index} is cut short")
    if data.count(0) == len(data):
        # codes of zero-length runs: an event on every pixel, which no exposure records; a
        # damaged file (or one sized first and not written yet) decoded as a frame lit all over
        raise UnreadableMovieError(path, f"raw frame {raw_index}'s data ({len(data)} bytes) "
                                         "are all zero bytes: damaged or not written yet")
    return data + b"\x00" if len(data) % 2 else data


def _decoder_accumulates(dtype: np.dtype, layout: EerLayout) -> bool:
    """True when ``imagecodecs.eer_decode`` adds one per event into an ``out`` of ``dtype``.

    Decodes a hand-made 4-pixel stream (one event on pixel 0, then a run to the end) with the
    file's bit widths into ``[1, 0, 0, 0]``; an accumulating decoder leaves 2 on pixel 0.
    """
    nbits = layout.skip_bits + layout.horz_bits + layout.vert_bits
    stream = (3 << nbits).to_bytes(6, "little")  # code 1: run 0, event; code 2: run 3, end
    probe = np.array([[1, 0, 0, 0]], dtype=dtype)
    try:
        imagecodecs.eer_decode(stream, probe.shape, layout.skip_bits, layout.horz_bits,
                               layout.vert_bits, superres=0, out=probe)
    except Exception:  # noqa: BLE001 - a decoder that refuses this dtype: use the bool buffer
        return False
    return probe.tolist() == [[2, 0, 0, 0]]


def decode_eer_page(tif: tifffile.TiffFile, page_index: int, path: str | Path) -> np.ndarray:
    """Decode one raw frame (index among the raw frames; negative counts from the end).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        Electron events on the physical grid.
    """
    path = Path(path)
    layout = scan_eer(tif, path, all_pages=False)
    if page_index < 0:
        page_index += layout.n_raw
    if not layout.strips[page_index]:
        page = tif.pages[layout.first_page + page_index]
        segs = tuple((int(o), int(c)) for o, c in zip(page.dataoffsets, page.databytecounts))
        strips = list(layout.strips)
        strips[page_index] = segs
        layout = dataclasses.replace(layout, strips=strips)
    buf = np.zeros(layout.shape_yx, dtype=bool)
    _decode_into(tif.filehandle.fileno(), layout, page_index, buf, 0, path)
    return buf


def group_sizes(n_raw: int, group: int) -> tuple[int, ...]:
    """Raw frames per fraction for ``n_raw`` raw frames in groups of ``group``.

    A remainder of at least half a group is a fraction of its own; a smaller one joins the
    last fraction. Fewer raw frames than a group make one fraction.
    """
    if n_raw <= 0:
        return ()
    group = max(1, int(group))
    n_full, rest = divmod(n_raw, group)
    if n_full == 0:
        return (n_raw,)
    sizes = [group] * n_full
    if rest * 2 >= group:
        sizes.append(rest)
    elif rest:
        sizes[-1] += rest
    return tuple(sizes)


def _pixel_size_A(layout: EerLayout) -> float | None:
    value = layout.metadata.get("sensorPixelSize.width")
    unit = layout.units.get("sensorPixelSize.width", "m")
    if not isinstance(value, float) or not value > 0:
        return None
    scale = {"m": 1e10, "nm": 10.0, "A": 1.0, "Å": 1.0}.get(unit)
    if scale is None:
        return None
    pix = float(f"{value * scale:.6g}")  # 0.8e-10 m is 0.8 Å, not 0.7999999999999999
    return pix if 0.01 < pix < 100 else None


def _metadata_dose_per_raw_e_px(layout: EerLayout) -> float | None:
    total = layout.metadata.get("totalDose")
    n = layout.metadata.get("numberOfFrames")
    if isinstance(total, float) and total > 0 and isinstance(n, float) and n > 0:
        return total / n
    return None


def read_eer(path: str | Path, *, params: ReadParams | None = None,
             max_workers: int = 2, spill_dir: str | Path | None = None,
             movie_dose_e_A2: float | None = None) -> Movie:
    """Read an EER movie as fractions of grouped raw frames.

    Parameters
    ----------
    path : str or Path
    params : ReadParams, optional
        ``eer_group_frames``, ``eer_dose_per_fraction_e_A2``, ``eer_sampling`` and
        ``pixel_size_A`` (physical pixel, Å; used for dose grouping when the file has none).
    max_workers : int
        Threads decoding raw frames (imagecodecs releases the GIL).
    spill_dir : str or Path, optional
        Where fractions of more than :data:`~correction.io.spill.SPILL_OVER_BYTES` in all go
        (an unnamed temporary file, returned memory-mapped; :mod:`correction.io.spill`);
        None keeps them in memory.
    movie_dose_e_A2 : float, optional
        The dose given for the whole movie (e/Å²): ``eer_dose_per_fraction_e_A2`` groups by
        it, spread evenly over the raw frames, before the metadata's or the counted dose (the
        counts fall 1.6-2.8 times below the specimen's dose at high tilt).

    Returns
    -------
    Movie
        ``frames`` (n_fractions, ny, nx) uint8 or uint16 counts on the 4K (sampling 1) or 8K
        (sampling 2) grid; ``raw_frames_per_frame`` the grouping; ``pixel_size_A`` of the
        returned grid; ``dose_per_frame_e_A2`` the dose of a fraction of ``eer_group_frames``
        raw frames (:func:`correction.dose.frame_doses_e_A2`) when the metadata gives the total
        dose and a pixel size is known.

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
    """
    params = ReadParams() if params is None else params
    path = Path(path)
    superres = 1 if params.eer_sampling == 2 else 0
    with open_tiff(path) as tif:
        layout = scan_eer(tif, path)
        fd = os.open(path, os.O_RDONLY)
    try:
        return _read_frames(fd, layout, path, params, superres, max_workers, spill_dir,
                            movie_dose_e_A2)
    finally:
        os.close(fd)


def _read_frames(fd: int, layout: EerLayout, path: Path, params: ReadParams, superres: int,
                 max_workers: int, spill_dir: str | Path | None,
                 movie_dose_e_A2: float | None) -> Movie:
    factor = 2 if superres else 1
    if superres and (layout.horz_bits < 1 or layout.vert_bits < 1):
        raise UnsupportedFormatError(path, "EER file has no sub-pixel bits; use sampling 1")
    if superres and (layout.horz_bits, layout.vert_bits) != (2, 2):
        # RELION decodes 2-bit fields only (renderEER.cpp), and the decoder's placement of
        # wider fields on the 8K grid has no authority to check it against
        raise UnsupportedFormatError(path, f"EER sub-pixel fields of {layout.horz_bits} x "
                                           f"{layout.vert_bits} bits: sampling 2 is read only "
                                           "from 2-bit fields (as RELION reads them); use "
                                           "sampling 1")
    ny, nx = layout.shape_yx[0] * factor, layout.shape_yx[1] * factor
    # a given pixel size is the decoded grid's (MotionCor2's -PixSize); the file's, physical
    file_pixel = _pixel_size_A(layout)
    phys_pixel = params.pixel_size_A * factor if params.pixel_size_A is not None else file_pixel
    header: dict = {
        "format": "eer",
        "compression": layout.compression,
        "raw_frames": layout.n_raw,
        "eer_sampling": factor,
        "super_resolution_factor": factor,
        "physical_shape_yx": list(layout.shape_yx),
        "eer_bits": [layout.skip_bits, layout.horz_bits, layout.vert_bits],
        "eer_metadata": {k: v for k, v in layout.metadata.items()
                         if isinstance(v, (float, str))},
    }
    if params.pixel_size_A is not None:  # the file's own, on the decoded grid (None: none)
        header["header_pixel_size_A"] = (float(f"{file_pixel / factor:.6g}")
                                         if file_pixel is not None else None)
    dose_per_raw_e_px = _metadata_dose_per_raw_e_px(layout)
    dose_source = "metadata" if dose_per_raw_e_px is not None else None
    integration = params.frame_integration
    if integration is not None:  # MotionCor2's -FmIntFile: its own sizes, its first group
        group = integration.per_fraction
        header["eer_grouping"] = "frame integration file"
        header["eer_frame_integration"] = integration.to_record()
        try:
            sizes = integration.fraction_sizes(layout.n_raw)
        except ParameterError as exc:
            raise UnreadableMovieError(path, exc.reason) from None
    elif params.eer_group_frames is not None:
        group = params.eer_group_frames
        header["eer_grouping"] = "frames"
    elif params.eer_dose_per_fraction_e_A2 is not None:
        # the dose given for the movie, else the file's, else its counted events
        if movie_dose_e_A2 is not None and movie_dose_e_A2 > 0:
            dose_per_raw_e_A2 = movie_dose_e_A2 / max(1, layout.n_raw)
            dose_source = "given"
        else:
            if phys_pixel is None:
                raise UnreadableMovieError(path, "cannot group EER frames by dose: no pixel "
                                                 "size in the file; give one")
            if dose_per_raw_e_px is None:
                dose_per_raw_e_px = _measure_counts(fd, layout, path)
                dose_source = "counts"
            dose_per_raw_e_A2 = dose_per_raw_e_px / phys_pixel ** 2
        group = max(1, round(params.eer_dose_per_fraction_e_A2 / dose_per_raw_e_A2)) \
            if dose_per_raw_e_A2 > 0 else layout.n_raw
        header["eer_grouping"] = "dose"
        header["eer_dose_per_raw_frame_e_A2"] = dose_per_raw_e_A2
        header["eer_dose_source"] = dose_source
    else:
        group = DEFAULT_GROUP_FRAMES
        header["eer_grouping"] = "default"
    if integration is None:
        sizes = group_sizes(layout.n_raw, group)
    header["eer_group_frames"] = int(group)
    dtype = np.uint8 if max(sizes) <= 255 else np.uint16
    sink = FrameSink((len(sizes), ny, nx), dtype, spill_dir=spill_dir, zeroed=True)
    header["decoded_to"] = "temporary file" if sink.spilled else "memory"
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)

    direct = _decoder_accumulates(np.dtype(dtype), layout)

    def work(fraction: int) -> None:
        block = sink.target(fraction, fraction + 1)
        target = block[0]
        raws = range(starts[fraction], starts[fraction] + sizes[fraction])
        if direct:                          # events land in the fraction: no buffer, no add
            for raw in raws:
                _decode_into(fd, layout, raw, target, superres, path, accumulate=True)
        else:
            buf = np.empty((ny, nx), dtype=bool)
            as_u8 = buf.view(np.uint8)          # 0/1 bytes: add without a cast
            for raw in raws:
                _decode_into(fd, layout, raw, buf, superres, path)
                if target.dtype == np.uint8:
                    np.add(target, as_u8, out=target)
                else:
                    np.add(target, as_u8, out=target, casting="unsafe")
        sink.commit(fraction, block)

    try:
        _run(work, range(len(sizes)), max_workers)
        frames = sink.frames()
    finally:
        sink.close()
    pixel = phys_pixel / factor if phys_pixel is not None else None
    dose_per_fraction = None
    if dose_per_raw_e_px is not None and phys_pixel is not None and dose_source == "metadata":
        dose_per_fraction = dose_per_raw_e_px / phys_pixel ** 2 * group  # a whole group's
    return Movie(frames=frames, path=path, pixel_size_A=pixel,
                 dose_per_frame_e_A2=dose_per_fraction, raw_frames_per_frame=sizes,
                 header=header)


def _run(work, items: Sequence[int], max_workers: int) -> None:
    items = list(items)
    if max_workers <= 1 or len(items) <= 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()


def _measure_counts(fd: int, layout: EerLayout, path: Path) -> float:
    """Mean events per physical pixel per raw frame over the first raw frames."""
    n = min(_SAMPLE_FRAMES, layout.n_raw)
    buf = np.empty(layout.shape_yx, dtype=bool)
    total = 0
    for raw in range(n):
        _decode_into(fd, layout, raw, buf, 0, path)
        total += int(np.count_nonzero(buf))
    return total / (n * buf.size)


def grouping_record(movie: Movie) -> dict | None:
    """The EER grouping of a movie read by :func:`read_eer`, for ``motion.json``; else None.

    Returns
    -------
    dict or None
        ``raw_frames`` (in the file), ``fractions``, ``group_frames`` (the grouping asked
        for: a frame integration file's first entry's), ``grouped_by`` (``"frames"``,
        ``"dose"``, ``"frame integration file"`` or ``"default"``),
        ``raw_frames_per_fraction`` (exact, the last fraction may differ), ``sampling``,
        with a frame integration file its ``frame_integration`` (``file`` and ``entries``) and,
        when grouped by dose, ``dose_per_raw_frame_e_A2`` and its source.
    """
    if movie.raw_frames_per_frame is None or movie.header.get("format") != "eer":
        return None
    header = movie.header
    record = {
        "raw_frames": int(header.get("raw_frames", sum(movie.raw_frames_per_frame))),
        "fractions": len(movie.raw_frames_per_frame),
        "group_frames": int(header.get("eer_group_frames", 0)),
        "grouped_by": header.get("eer_grouping"),
        "raw_frames_per_fraction": [int(n) for n in movie.raw_frames_per_frame],
        "sampling": int(header.get("eer_sampling", 1)),
    }
    if "eer_frame_integration" in header:
        record["frame_integration"] = header["eer_frame_integration"]
    if "eer_dose_per_raw_frame_e_A2" in header:
        record["dose_per_raw_frame_e_A2"] = float(header["eer_dose_per_raw_frame_e_A2"])
        record["dose_source"] = header.get("eer_dose_source")
    return record
