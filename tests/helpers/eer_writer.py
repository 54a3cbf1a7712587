"""A small EER writer for tests and benchmarks, written from the format description.

imagecodecs can decode EER but not encode it, so fixtures are made here, independently of the
reader under test. Format (FIELD-NOTES.md, "Reading files"):

* A little-endian BigTIFF, one page per raw frame; page 0 carries the acquisition metadata
  XML (``<metadata><item name=".." unit="..">value</item>...</metadata>``) in tag 65001.
* A raw frame is ONE bit stream, read least-significant bit first, stored in one strip or cut
  into several at byte boundaries (``rows_per_strip``; the cut may fall inside a code), as
  the reference readers read them: they join a frame's strips before decoding
  (fei-company/EerReaderLib ``EerFrame``, RELION ``EERRenderer::lazyReadFrames``, MotionCor3
  ``CLoadEerFrames::mReadFrame``, cisTEM ``EerFile::ReadSlicesFromDisk``). A code is a run length of
  ``skip_bits`` bits (the number of empty pixels before the next event); the all-ones run
  means "skip that many and continue" and has no sub-pixel bits. Every other run is followed
  by ``horz_bits`` then ``vert_bits`` sub-pixel bits, each stored XOR its half range (2 for
  2-bit fields). After an event the position moves one pixel on. The stream ends with a run
  reaching exactly one past the last pixel of the frame; its length is padded to an even
  number of bytes.
* Compression 65001 uses 7-bit runs, 65000 8-bit runs (both with 2+2 sub-pixel bits); 65002
  stores the three widths in tags 65007-65009.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["encode_strip", "split_stream", "write_eer", "write_drifting_eer", "events_from_counts"]

_TYPE_SHORT, _TYPE_LONG, _TYPE_UNDEFINED, _TYPE_LONG8 = 3, 4, 7, 16


def encode_strip(positions: np.ndarray, n_pixels: int, *, skip_bits: int = 7,
                 horz_bits: int = 2, vert_bits: int = 2,
                 subpixels: np.ndarray | None = None) -> bytes:
    """Encode the events of one strip.

    Parameters
    ----------
    positions : ndarray of int
        Flat pixel indices (row-major within the strip) of the events, strictly increasing.
    n_pixels : int
        Pixels in the strip.
    skip_bits, horz_bits, vert_bits : int
        Bit widths of run lengths and sub-pixel fields.
    subpixels : ndarray of int, shape (n_events, 2), optional
        True sub-pixel position (x, y) of each event, each in ``[0, 2**bits)``; default the
        centre-most values that decode to sub-pixel 0 at every super-resolution level (0).

    Returns
    -------
    bytes
    """
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and (np.any(np.diff(positions) <= 0) or positions[0] < 0
                           or positions[-1] >= n_pixels):
        raise ValueError("positions must be strictly increasing and inside the strip")
    n_ev = positions.size
    if subpixels is None:
        subpixels = np.zeros((n_ev, 2), dtype=np.int64)
    subpixels = np.asarray(subpixels, dtype=np.int64)
    sx = subpixels[:, 0] ^ (1 << (horz_bits - 1))
    sy = subpixels[:, 1] ^ (1 << (vert_bits - 1))
    sub = np.concatenate([sx | (sy << horz_bits), [0]])  # terminator gets sub-pixel 0
    prev = np.concatenate([[-1], positions])
    ends = np.concatenate([positions, [n_pixels]])
    gaps = ends - prev - 1                                # empty pixels before each event
    full = (1 << skip_bits) - 1
    n_skip = gaps // full
    rest = gaps % full
    sub_bits = horz_bits + vert_bits
    code_bits = skip_bits + sub_bits
    # Codes in order: for each event, n_skip all-ones codes then (rest | sub << skip_bits).
    n_codes_each = n_skip + 1
    total = int(n_codes_each.sum())
    values = np.full(total, full, dtype=np.int64)
    lengths = np.full(total, skip_bits, dtype=np.int64)
    last = np.cumsum(n_codes_each) - 1
    values[last] = rest | (sub << skip_bits)
    lengths[last] = code_bits
    shifts = np.arange(code_bits, dtype=np.int64)
    bits = ((values[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    keep = shifts[None, :] < lengths[:, None]
    stream = bits[keep]
    packed = np.packbits(stream, bitorder="little").tobytes()
    if len(packed) % 2:
        packed += b"\x00"
    return packed


def split_stream(stream: bytes, n_strips: int) -> list[bytes]:
    """Cut one frame's bit stream into ``n_strips`` pieces of about equal byte counts (the
    cuts ignore code boundaries), in order; joined they give ``stream`` back."""
    cuts = [len(stream) * k // n_strips for k in range(n_strips + 1)]
    return [stream[a:b] for a, b in zip(cuts, cuts[1:])]


def events_from_counts(frame: np.ndarray) -> np.ndarray:
    """Flat positions of the events of a 0/1 frame (ny, nx)."""
    frame = np.asarray(frame)
    if frame.max(initial=0) > 1:
        raise ValueError("an EER raw frame holds at most one event per pixel")
    return np.flatnonzero(frame.ravel())


def _xml(items: Sequence[tuple[str, str | None, str]]) -> bytes:
    body = "".join(f'<item name="{n}"' + (f' unit="{u}"' if u else "") + f">{v}</item>"
                   for n, u, v in items)
    return f"<metadata>{body}</metadata>".encode()


def write_eer(path: str | Path, frames: Iterable[np.ndarray], *, shape_yx: tuple[int, int],
              compression: int = 65001, bits: tuple[int, int, int] | None = None,
              rows_per_strip: int | None = None,
              subpixels: Iterable[np.ndarray | None] | None = None,
              metadata: Sequence[tuple[str, str | None, str]] = (),
              integrated_image: np.ndarray | None = None) -> Path:
    """Write an EER file.

    Parameters
    ----------
    path : str or Path
    frames : iterable of ndarray
        Raw frames, each (ny, nx) of 0/1 (bool or int), or a 1-D array of flat event
        positions (strictly increasing).
    shape_yx : tuple of int
        Frame shape (physical pixels).
    compression : {65000, 65001, 65002}
    bits : tuple of int, optional
        (skip, horz, vert) bit widths; default (8, 2, 2) for 65000, (7, 2, 2) otherwise.
    rows_per_strip : int, optional
        The RowsPerStrip tag (default: the frame's rows). With fewer rows than the frame, each
        frame's one bit stream is cut into ``ceil(ny / rows_per_strip)`` strips of about
        equal byte counts (a cut may fall inside a code, or at an odd byte), and each strip
        is written at its own place in the file (strips not contiguous).
    subpixels : iterable of (n_events, 2) arrays or None, optional
        True sub-pixel (x, y) per event of each frame.
    metadata : sequence of (name, unit or None, value)
        Acquisition metadata items for tag 65001 of the first page.
    integrated_image : ndarray of uint16, optional
        An uncompressed image written as page 0 before the raw frames (as some files have).

    Returns
    -------
    Path
    """
    path = Path(path)
    ny, nx = shape_yx
    if bits is None:
        bits = (8, 2, 2) if compression == 65000 else (7, 2, 2)
    rps = rows_per_strip or ny
    xml = _xml(list(metadata) or [("numberOfFrames", None, "0")])
    sub_iter = iter(subpixels) if subpixels is not None else None
    with open(path, "wb") as fh:
        fh.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
        link_at = 8                                       # where the next IFD offset goes
        first = True

        def write_ifd(entries: list[tuple[int, int, int, bytes]]) -> None:
            nonlocal link_at
            # Values longer than 8 bytes go before the IFD.
            laid = []
            for tag, typ, count, payload in sorted(entries):
                if len(payload) > 8:
                    off = fh.tell()
                    fh.write(payload)
                    if fh.tell() % 2:
                        fh.write(b"\x00")
                    laid.append((tag, typ, count, struct.pack("<Q", off)))
                else:
                    laid.append((tag, typ, count, payload.ljust(8, b"\x00")))
            ifd_at = fh.tell()
            fh.write(struct.pack("<Q", len(laid)))
            for tag, typ, count, value in laid:
                fh.write(struct.pack("<HHQ", tag, typ, count) + value)
            end = fh.tell()
            fh.write(struct.pack("<Q", 0))
            fh.seek(link_at)
            fh.write(struct.pack("<Q", ifd_at))
            fh.seek(0, 2)
            link_at = end

        def common(comp: int, bps: int, strip_offsets: list[int], strip_counts: list[int],
                   rows: int) -> list[tuple[int, int, int, bytes]]:
            n = len(strip_offsets)
            return [
                (256, _TYPE_LONG, 1, struct.pack("<I", nx)),
                (257, _TYPE_LONG, 1, struct.pack("<I", ny)),
                (258, _TYPE_SHORT, 1, struct.pack("<H", bps)),
                (259, _TYPE_SHORT, 1, struct.pack("<H", comp)),
                (262, _TYPE_SHORT, 1, struct.pack("<H", 1)),
                (273, _TYPE_LONG8, n, struct.pack(f"<{n}Q", *strip_offsets)),
                (277, _TYPE_SHORT, 1, struct.pack("<H", 1)),
                (278, _TYPE_LONG, 1, struct.pack("<I", rows)),
                (279, _TYPE_LONG8, n, struct.pack(f"<{n}Q", *strip_counts)),
            ]

        if integrated_image is not None:
            img = np.ascontiguousarray(integrated_image, dtype="<u2")
            off = fh.tell()
            fh.write(img.tobytes())
            entries = common(1, 16, [off], [img.nbytes], ny)
            entries.append((65001, _TYPE_UNDEFINED, len(xml), xml))
            write_ifd(entries)
            first = False
        for frame in frames:
            frame = np.asarray(frame)
            positions = events_from_counts(frame) if frame.ndim == 2 else frame.astype(np.int64)
            sub = next(sub_iter) if sub_iter is not None else None
            stream = encode_strip(positions, ny * nx, skip_bits=bits[0], horz_bits=bits[1],
                                  vert_bits=bits[2], subpixels=sub)
            offsets, counts = [], []
            for piece in split_stream(stream, -(-ny // rps)):
                offsets.append(fh.tell())
                counts.append(len(piece))
                fh.write(piece)
                fh.write(b"\x00")  # a gap: a reader must follow the offsets, not read on
            if fh.tell() % 2:
                fh.write(b"\x00")
            entries = common(compression, 1, offsets, counts, rps)
            if first:
                entries.append((65001, _TYPE_UNDEFINED, len(xml), xml))
                first = False
            if compression == 65002:
                entries += [(65007, _TYPE_SHORT, 1, struct.pack("<H", bits[0])),
                            (65008, _TYPE_SHORT, 1, struct.pack("<H", bits[1])),
                            (65009, _TYPE_SHORT, 1, struct.pack("<H", bits[2]))]
            write_ifd(entries)
    return path


def write_drifting_eer(path: str | Path, *, shape: tuple[int, int], sizes: Sequence[int],
                       rate: float, truth_yx: np.ndarray, seed: int,
                       pixel_size_m: str = "1.1e-10") -> Path:
    """An EER movie of a specimen that moves by ``truth_yx[f]`` (pixels, ``[dy, dx]``) in the
    fraction ``f`` of ``sizes[f]`` raw frames (events drawn with probability ``rate *
    specimen`` per pixel and raw frame); its metadata gives the raw frame count, the pixel
    size (m) and the total dose (e/px)."""
    from correction.fourier import apply_shift, irfft2, rfft2
    from correction.synthetic import specimen_image

    rng = np.random.default_rng(seed)
    margin = 24
    canvas = (shape[0] + 2 * margin, shape[1] + 2 * margin)
    spec = rfft2(specimen_image(rng, canvas) * np.float32(rate))
    raw = []
    for f, n in enumerate(sizes):
        p = np.clip(irfft2(apply_shift(spec, canvas, truth_yx[f]), canvas)
                    [margin:margin + shape[0], margin:margin + shape[1]], 0, 1)
        raw += [np.flatnonzero(rng.random(p.shape, dtype=np.float32).ravel() < p.ravel())
                for _ in range(n)]
    n_raw = int(sum(sizes))
    return write_eer(path, raw, shape_yx=shape, metadata=[
        ("numberOfFrames", None, str(n_raw)), ("sensorPixelSize.width", "m", pixel_size_m),
        ("totalDose", "e/px", str(rate * n_raw))])
