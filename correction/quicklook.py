"""Quick-look pictures of corrected movies and tilt series: small PNGs a person glances at.

Per movie (:func:`write_movie_quicklook`, beside the other outputs, names from
:func:`quicklook_names`):

``S.thumb.png``
    the dose-weighted sum block-averaged to at most ``512`` pixels on its long side, grey levels
    from its 0.5 and 99.5 percentiles (a few hot or dead pixels cannot flatten the contrast);
``S.spectrum.png``
    the log power spectrum of the dose-weighted sum, averaged over overlapping Hann-windowed
    boxes (Welch), DC at the centre, ``+kx`` to the right and ``+ky`` down; the rotational average
    of the log power (smoothed over a few rings) is subtracted, so Thon rings show on a flat
    background, and a yellow circle marks the even/odd FRC resolution;
``S.drift.png``
    the global trajectory (the specimen displacement of :mod:`correction.conventions`, in Å,
    ``+x`` right and ``+y`` down, as in the image), equal aspect, the early steps (the first
    fifth, :func:`correction.report.early_steps`) in orange and the rest in blue, frame numbers
    beside the markers; with local motion applied, a second panel shows each patch's local
    trajectory (patch minus global) from its centre, magnified by the factor printed.

Per tilt series (:func:`write_series_quicklook`, in the series folder):

``T.sheet.png``
    a contact sheet of the tilts' dose-weighted sums sorted by tilt angle, one grey scale for
    the whole sheet (a tilt that went dark looks dark), the angle on each tile;
``T.chart.png``
    drift, resolution, dose and pre-exposure against tilt angle, one panel each; drift above
    its threshold in red.

Every PNG carries a ``tEXt`` chunk ``motionwatch`` holding JSON that says how data map to
pixels (``col = a + b * x``, ``row = c + d * y`` per plot, tile rectangles of a sheet), so
tests and tools can read a picture back as data (:func:`read_png_text`).

Drawing is done here with a few vectorised numpy rasterisers (lines by dense sampling, disks,
a 3 x 5 bitmap font): no plotting library is imported, and a worker pays about nothing for it.
PNG encoding uses :func:`imagecodecs.png_encode` when present, else a small zlib writer.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .report import read_motion_record

__all__ = [
    "QUICKLOOK_KINDS",
    "SERIES_QUICKLOOK_KINDS",
    "SeriesTilt",
    "quicklook_names",
    "thumbnail",
    "power_spectrum",
    "drift_plot",
    "contact_sheet",
    "series_chart",
    "encode_png",
    "read_png_text",
    "write_png_atomic",
    "movie_quicklook_files",
    "write_movie_quicklook",
    "write_series_quicklook",
    "motion_record_beside",
]

#: picture kind -> file-name suffix after the stem
QUICKLOOK_KINDS: dict[str, str] = {"thumbnail": ".thumb.png", "spectrum": ".spectrum.png",
                                   "drift": ".drift.png"}
#: series picture kind -> file-name suffix after the series name (:func:`write_series_quicklook`)
SERIES_QUICKLOOK_KINDS: dict[str, str] = {"sheet": ".sheet.png", "chart": ".chart.png"}
_SERIES_KINDS = SERIES_QUICKLOOK_KINDS
_TEXT_KEY = b"motionwatch"
#: zlib level of the PNGs: 1 writes a 512^2 spectrum in 16 ms (343 KB) where 6 took 81 ms
#: (313 KB); a picture is written with every movie
_PNG_LEVEL = 1

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
DARK = (60, 60, 60)
ORANGE = (230, 120, 0)          # early markers
ORANGE_LINE = (245, 190, 130)   # early path
BLUE = (20, 90, 200)            # late markers
BLUE_LINE = (140, 180, 235)     # late path
RED = (215, 30, 30)
YELLOW = (255, 215, 0)
GREEN = (20, 150, 60)


def quicklook_names(stem: str) -> dict[str, str]:
    """File names of the quick-look pictures of a movie with output stem ``stem``."""
    return {kind: f"{stem}{suffix}" for kind, suffix in QUICKLOOK_KINDS.items()}


# --------------------------------------------------------------------------- PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_zlib(image: np.ndarray) -> bytes:
    """A minimal PNG (8-bit grey or RGB, filter 0 on every row) with zlib."""
    h, w = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    rows = np.ascontiguousarray(image, np.uint8).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, _PNG_LEVEL)) + _chunk(b"IEND", b""))


def encode_png(image: np.ndarray, *, text: Mapping[str, Any] | None = None,
               use_imagecodecs: bool = True) -> bytes:
    """PNG bytes of an 8-bit grey ``(h, w)`` or RGB ``(h, w, 3)`` image.

    Parameters
    ----------
    image : ndarray of uint8
    text : mapping, optional
        Stored as JSON in a ``tEXt`` chunk with keyword ``motionwatch`` (right after ``IHDR``).
    use_imagecodecs : bool
        Use :func:`imagecodecs.png_encode` when available (else the built-in zlib writer).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3
                                                                and image.shape[2] != 3):
        raise ValueError(f"PNG image must be uint8 (h, w) or (h, w, 3), got {image.dtype} "
                         f"{image.shape}")
    data = None
    if use_imagecodecs:
        try:
            import imagecodecs  # noqa: PLC0415 - optional fast path
            if getattr(imagecodecs, "PNG", None) is not None and imagecodecs.PNG.available:
                data = bytes(imagecodecs.png_encode(np.ascontiguousarray(image), level=_PNG_LEVEL))
        except ImportError:
            data = None
    if data is None:
        data = _png_zlib(image)
    if text:
        payload = _TEXT_KEY + b"\0" + json.dumps(dict(text), separators=(",", ":"),
                                                 allow_nan=False).encode("latin-1")
        data = data[:33] + _chunk(b"tEXt", payload) + data[33:]  # 8 signature + 25 IHDR
    return data


def read_png_text(data: bytes) -> dict[str, Any]:
    """The JSON of a PNG's ``motionwatch`` text chunk ({} when there is none)."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and body.startswith(_TEXT_KEY + b"\0"):
            return json.loads(body[len(_TEXT_KEY) + 1:].decode("latin-1"))
        if kind == b"IEND":
            break
        pos += 12 + length
    return {}


def write_png_atomic(path: str | Path, image: np.ndarray, *,
                     text: Mapping[str, Any] | None = None) -> Path:
    """Write a PNG atomically (:func:`correction.write.atomic_write`)."""
    from .write import atomic_write  # noqa: PLC0415 - mrcfile is not needed to draw

    payload = encode_png(image, text=text)
    return atomic_write(path, lambda fh: fh.write(payload))


# --------------------------------------------------------------------------- raster


_FONT_ROWS = {  # 3 x 5 glyphs, '#' = ink
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###",
    "3": "### ..# .## ..# ###", "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###",
    "6": "### #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ###", ".": "... ... ... ... .#.", "-": "... ... ### ... ...",
    "+": "... .#. ### .#. ...", ":": "... .#. ... .#. ...", "/": "..# ..# .#. #.. #..",
    "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.", "=": "... ### ... ### ...",
    ">": "#.. .#. ..# .#. #..", "<": "..# .#. #.. .#. ..#", "%": "#.# ..# .#. #.. #.#",
    " ": "... ... ... ... ...", "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###", "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#", "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
}
_FONT = {ch: np.array([[c == "#" for c in row] for row in rows.split()], bool)
         for ch, rows in _FONT_ROWS.items()}


def _canvas(h: int, w: int, colour: tuple[int, int, int] = WHITE) -> np.ndarray:
    out = np.empty((h, w, 3), np.uint8)
    out[...] = colour
    return out


def _put(canvas: np.ndarray, rows: np.ndarray, cols: np.ndarray,
         colour: tuple[int, int, int]) -> None:
    rows = np.asarray(rows).astype(np.int64).ravel()
    cols = np.asarray(cols).astype(np.int64).ravel()
    ok = (rows >= 0) & (rows < canvas.shape[0]) & (cols >= 0) & (cols < canvas.shape[1])
    canvas[rows[ok], cols[ok]] = colour


def _polyline(canvas: np.ndarray, cols: np.ndarray, rows: np.ndarray,
              colour: tuple[int, int, int], *, width: int = 1, dash_px: int = 0) -> None:
    """Straight segments through ``(cols[i], rows[i])``, sampled densely (vectorised)."""
    cols = np.asarray(cols, np.float64)
    rows = np.asarray(rows, np.float64)
    if cols.size < 2:
        return
    seg = np.hypot(np.diff(cols), np.diff(rows))
    n = np.maximum(2, np.ceil(seg * 2).astype(np.int64) + 1)
    idx = np.repeat(np.arange(seg.size), n)
    first = np.cumsum(n) - n  # index of each segment's first sample
    t = (np.arange(int(n.sum())) - first[idx]) / (n[idx] - 1)  # 0..1 along each segment
    c = cols[idx] + t * (cols[idx + 1] - cols[idx])
    r = rows[idx] + t * (rows[idx + 1] - rows[idx])
    if dash_px:
        along = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(c), np.diff(r)))])
        keep = (along // dash_px) % 2 == 0
        c, r = c[keep], r[keep]
    c, r = np.rint(c), np.rint(r)
    half = width // 2
    for dr in range(-half, width - half):
        for dc in range(-half, width - half):
            _put(canvas, r + dr, c + dc, colour)


def _disks(canvas: np.ndarray, cols: np.ndarray, rows: np.ndarray, radius: float,
           colour: tuple[int, int, int]) -> None:
    k = int(math.ceil(radius))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    inside = dy ** 2 + dx ** 2 <= radius ** 2 + 1e-9
    dy, dx = dy[inside], dx[inside]
    r = np.rint(np.asarray(rows, np.float64))[:, None] + dy[None, :]
    c = np.rint(np.asarray(cols, np.float64))[:, None] + dx[None, :]
    _put(canvas, r, c, colour)


def _text(canvas: np.ndarray, col: int, row: int, text: str, colour: tuple[int, int, int],
          *, scale: int = 2) -> int:
    """Draw ``text`` (upper-cased; unknown characters as blanks) with its top-left at
    ``(row, col)``; returns the column after the last character."""
    for ch in text.upper():
        glyph = _FONT.get(ch, _FONT[" "])
        r, c = np.nonzero(glyph)
        for dr in range(scale):
            for dc in range(scale):
                _put(canvas, row + r * scale + dr, col + c * scale + dc, colour)
        col += 4 * scale
    return col


def _text_width(text: str, scale: int = 2) -> int:
    return 4 * scale * len(text) - scale


def _circle(canvas: np.ndarray, col: float, row: float, radius: float,
            colour: tuple[int, int, int], *, dash_px: int = 0) -> None:
    t = np.linspace(0, 2 * np.pi, max(16, int(2 * np.pi * radius * 2)) + 1)
    _polyline(canvas, col + radius * np.cos(t), row + radius * np.sin(t), colour, dash_px=dash_px)


def _nice_step(span: float, n: int = 5) -> float:
    raw = max(span, 1e-12) / n
    p = 10 ** math.floor(math.log10(raw))
    return next(m * p for m in (1, 2, 2.5, 5, 10) if m * p >= raw)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"


# --------------------------------------------------------------------------- images


def _robust_grey(image: np.ndarray, *, low: float = 0.5, high: float = 99.5,
                 sample: np.ndarray | None = None) -> np.ndarray:
    """``image`` mapped to 0..255 between its ``low`` and ``high`` percentiles (of ``sample``)."""
    values = np.asarray(sample if sample is not None else image, np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size > 262_144:
        values = values[:: values.size // 262_144]
    if values.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = np.percentile(values, [low, high])
    if not hi > lo:
        hi = lo + 1.0
    out = (np.asarray(image, np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.nan_to_num(out, nan=0.0), 0, 255).astype(np.uint8)


def _bin_to(image: np.ndarray, max_px: int) -> np.ndarray:
    """Block average by the smallest integer factor that brings the long side to ``max_px``
    or below (float32)."""
    image = np.asarray(image)
    ny, nx = image.shape
    f = max(1, math.ceil(max(ny, nx) / max_px))
    if f == 1:
        return image.astype(np.float32, copy=False)
    my, mx = ny // f * f, nx // f * f
    # the rows of each block added first (contiguous), then the columns: a third of the time
    # of one mean over both block axes (K3 sum: 61 -> 19 ms, benchmarks/bench_io.py)
    rows = image[:my, :mx].reshape(my // f, f, mx).sum(axis=1, dtype=np.float32)
    blocks = rows.reshape(my // f, mx // f, f).sum(axis=2)
    blocks *= np.float32(1.0 / (f * f))
    return blocks


def thumbnail(image: np.ndarray, *, max_px: int = 512) -> np.ndarray:
    """The grey thumbnail of an image: block-averaged to at most ``max_px`` on its long side,
    grey levels between the 0.5 and 99.5 percentiles.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
    max_px : int

    Returns
    -------
    ndarray of uint8, shape (ceil-binned ny, nx)
    """
    return _robust_grey(_bin_to(image, max_px))


def _spectrum_box(shape_yx: tuple[int, int], box_px: int) -> int:
    """Box side: ``box_px``, or half the short side when that is smaller (so that at least a
    few boxes are averaged), even."""
    short = min(shape_yx)
    return int(min(box_px, short if short < 64 else short // 2) // 2 * 2)


def power_spectrum(image: np.ndarray, *, pixel_size_A: float, resolution_A: float | None = None,
                   box_px: int = 512, max_boxes: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """Flattened log power spectrum (RGB) with the resolution ring, and its geometry.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        A dose-weighted sum.
    pixel_size_A : float
        Its pixel size (Å).
    resolution_A : float, optional
        Even/odd FRC resolution (Å); a yellow circle of radius ``box * pixel_size_A /
        resolution_A`` pixels marks it.
    box_px : int
        Side of the Welch boxes and of the picture (at most half the short side of the image
        when that is over 64 px; even). The flattened log power is smoothed over 3 x 3 pixels.
    max_boxes : int
        At most this many boxes are averaged (on a regular grid over the image).

    Returns
    -------
    picture : ndarray of uint8, shape (box, box, 3)
        DC at ``(box // 2, box // 2)``; column ``box // 2 + kx``, row ``box // 2 + ky`` for a
        frequency of ``(ky, kx) / box`` cycles per pixel.
    info : dict
        ``box_px``, ``pixel_size_A``, ``resolution_A``, ``ring_radius_px`` (None without a ring).
    """
    import scipy.fft  # noqa: PLC0415

    image = np.asarray(image, np.float32)
    box = _spectrum_box(image.shape, box_px)
    if box < 16:
        raise ValueError(f"image {image.shape} too small for a power spectrum (need 16 px)")
    ny, nx = image.shape
    per_axis = max(1, int(math.isqrt(max_boxes)))
    starts_y = np.unique(np.linspace(0, ny - box, min(per_axis, max(1, 2 * ny // box - 1)))
                         .astype(int))
    starts_x = np.unique(np.linspace(0, nx - box, min(per_axis, max(1, 2 * nx // box - 1)))
                         .astype(int))
    window = np.hanning(box).astype(np.float32)
    window = window[:, None] * window[None, :]
    power = np.zeros((box, box // 2 + 1), np.float64)
    for y0 in starts_y:
        tiles = np.stack([image[y0:y0 + box, x0:x0 + box] for x0 in starts_x])
        tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
        spec = scipy.fft.rfft2(tiles * window, axes=(1, 2), workers=1)
        power += (spec.real ** 2 + spec.imag ** 2).sum(axis=0)
    half = box // 2
    full = np.empty((box, box), np.float64)
    full[:, :half + 1] = power
    ky = (-np.arange(box)) % box
    kx = box - np.arange(half + 1, box)
    full[:, half + 1:] = power[ky][:, kx]
    logp = np.fft.fftshift(np.log10(full + 1e-12 * max(full.max(), 1e-30)))
    yy, xx = np.mgrid[:box, :box]
    radius = np.hypot(yy - half, xx - half)
    rbin = np.minimum(np.rint(radius).astype(np.int64), 2 * half)
    counts = np.bincount(rbin.ravel(), minlength=2 * half + 1)
    profile = np.bincount(rbin.ravel(), logp.ravel(), minlength=2 * half + 1) / np.maximum(counts, 1)
    width = max(3, box // 64) | 1
    padded = np.pad(profile, width // 2, mode="edge")
    smooth = np.convolve(padded, np.ones(width) / width, mode="valid")
    flat = logp - np.interp(radius, np.arange(smooth.size), smooth)
    flat = sum(np.roll(flat, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    ring_mask = (radius > max(2.0, 0.02 * box)) & (radius < half)
    grey = _robust_grey(flat, low=1.0, high=99.7, sample=flat[ring_mask])
    grey[radius <= max(2.0, 0.02 * box)] = 128
    picture = np.repeat(grey[:, :, None], 3, axis=2)
    ring = None
    if resolution_A is not None and resolution_A > 0:
        ring = float(box * pixel_size_A / resolution_A)
        if ring <= half + 0.5:
            _circle(picture, half, half, ring, YELLOW)
        _text(picture, 6, 6, f"{resolution_A:.1f} A", YELLOW)
    return picture, {"kind": "spectrum", "box_px": box, "pixel_size_A": float(pixel_size_A),
                     "resolution_A": resolution_A, "ring_radius_px": ring}


# --------------------------------------------------------------------------- drift plot


def _axes(canvas: np.ndarray, left: int, top: int, size_px: tuple[int, int],
          x_range: tuple[float, float], y_range: tuple[float, float], *, y_down: bool,
          x_label: str = "", y_label: str = "") -> dict[str, list[float]]:
    """Frame, ticks and labels of a plot; returns ``{"x_px": [a, b], "y_px": [c, d]}`` with
    ``col = a + b x`` and ``row = c + d y``."""
    h, w = size_px
    (x0, x1), (y0, y1) = x_range, y_range
    b = (w - 1) / (x1 - x0)
    a = left - b * x0
    if y_down:
        d = (h - 1) / (y1 - y0)
        c = top - d * y0
    else:
        d = -(h - 1) / (y1 - y0)
        c = top + h - 1 - d * y0
    for axis, (lo, hi) in (("x", x_range), ("y", y_range)):
        step = _nice_step(hi - lo)
        for v in np.arange(math.ceil(lo / step) * step, hi + 1e-9 * step, step):
            v = 0.0 if abs(v) < 1e-9 * step else float(v)
            label = _fmt(v)
            if axis == "x":
                col = a + b * v
                _polyline(canvas, [col, col], [top, top + h - 1], (232, 232, 232))
                _polyline(canvas, [col, col], [top + h, top + h + 3], DARK)
                _text(canvas, int(col - _text_width(label, 1) / 2), top + h + 6, label, DARK,
                      scale=1)
            else:
                row = c + d * v
                _polyline(canvas, [left, left + w - 1], [row, row], (232, 232, 232))
                _polyline(canvas, [left - 4, left - 1], [row, row], DARK)
                _text(canvas, left - 6 - _text_width(label, 1), int(row - 2), label, DARK,
                      scale=1)
    _polyline(canvas, [left - 1, left + w, left + w, left - 1, left - 1],
              [top - 1, top - 1, top + h, top + h, top - 1], DARK)
    if x_label:
        _text(canvas, left + w - _text_width(x_label, 1), top + h + 14, x_label, DARK, scale=1)
    if y_label:
        _text(canvas, 2, top - 10, y_label, DARK, scale=1)
    return {"x_px": [float(a), float(b)], "y_px": [float(c), float(d)]}


def _padded_range(values: np.ndarray, min_span: float) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    centre, span = (lo + hi) / 2, max(hi - lo, min_span) * 1.15
    return centre - span / 2, centre + span / 2


def drift_plot(record: Mapping[str, Any], *, size_px: int = 360) -> tuple[np.ndarray, dict[str, Any]]:
    """The drift picture of a motion record (RGB) and how its data map to pixels.

    Parameters
    ----------
    record : mapping
        A ``motion.json`` record: ``global_shifts_px`` (``[dx, dy]`` per frame), ``pixel_size_A``,
        optionally ``drift``, ``shape`` and ``local`` (patch centres and ``fitted_shifts_px``).
    size_px : int
        Height of the picture; the trajectory panel is square, the local panel (only when
        ``local.applied``) as wide again.

    Returns
    -------
    picture : ndarray of uint8, shape (size_px, size_px or 2 size_px, 3)
    info : dict
        ``x_px``/``y_px`` (trajectory panel: ``col = a + b dx_A``, ``row = c + d dy_A``),
        ``early_steps``, ``n_frames``, ``marker_radius_px``, ``colours``; with local motion,
        ``local_magnification``.
    """
    from .report import early_steps  # noqa: PLC0415

    pixel_A = float(record["pixel_size_A"])
    xy_A = np.asarray(record["global_shifts_px"], np.float64).reshape(-1, 2) * pixel_A
    n = len(xy_A)
    local = record.get("local") or {}
    show_local = bool(local.get("applied")) and local.get("fitted_shifts_px")
    width = 2 * size_px if show_local else size_px
    canvas = _canvas(size_px, width)
    margin_l, margin_t, margin_b = 44, 30, 30
    side = size_px - margin_t - margin_b
    span = max(np.ptp(xy_A[:, 0]) if n else 0.0, np.ptp(xy_A[:, 1]) if n else 0.0, 1.0) * 1.15
    cx, cy = (xy_A.min(axis=0) + xy_A.max(axis=0)) / 2 if n else (0.0, 0.0)
    geometry = _axes(canvas, margin_l, margin_t, (side, side), (cx - span / 2, cx + span / 2),
                     (cy - span / 2, cy + span / 2), y_down=True, x_label="DX (A)",
                     y_label="DY (A)")
    (a, b), (c, d) = geometry["x_px"], geometry["y_px"]
    cols, rows = a + b * xy_A[:, 0], c + d * xy_A[:, 1]
    m = early_steps(n)
    _polyline(canvas, cols[m:], rows[m:], BLUE_LINE, width=2)
    _polyline(canvas, cols[:m + 1], rows[:m + 1], ORANGE_LINE, width=2)
    label_every = max(1, math.ceil(n / 12))
    for i in range(0, n, label_every):
        _text(canvas, int(cols[i]) + 5, int(rows[i]) - 9, str(i), DARK, scale=1)
    radius = 3.0
    _disks(canvas, cols[m + 1:], rows[m + 1:], radius, BLUE)
    _disks(canvas, cols[:m + 1], rows[:m + 1], radius, ORANGE)
    drift = record.get("drift") or {}
    title = "DRIFT"
    if drift.get("total_A") is not None:
        title += f" {drift['total_A']:.1f} A"
    if drift.get("early_A") is not None:
        title += f"  EARLY {drift['early_A']:.1f}"
    _text(canvas, 6, 6, title, BLACK)
    info: dict[str, Any] = {"kind": "drift", **geometry, "early_steps": m, "n_frames": n,
                            "marker_radius_px": radius,
                            "colours": {"early": list(ORANGE), "late": list(BLUE)}}
    if show_local:
        info["local_magnification"] = _local_panel(canvas, size_px, record, local,
                                                   xy_A / pixel_A)
    return canvas, info


def _local_panel(canvas: np.ndarray, left: int, record: Mapping[str, Any],
                 local: Mapping[str, Any], global_xy_px: np.ndarray) -> float:
    """Arrows of the local motion (patch minus global) from each patch centre; returns the
    magnification."""
    size = canvas.shape[0]
    shape = record.get("shape") or [1, 1]
    ny, nx = float(shape[0]), float(shape[1])
    box = size - 60
    scale = box / max(ny, nx)
    top, x0 = 30, left + (size - nx * scale) / 2
    _polyline(canvas, [x0, x0 + nx * scale, x0 + nx * scale, x0, x0],
              [top, top, top + ny * scale, top + ny * scale, top], DARK)
    centres = np.asarray(local.get("patch_centres_px") or [], np.float64).reshape(-1, 2)
    fitted = np.asarray(local["fitted_shifts_px"], np.float64)
    if fitted.ndim != 3 or fitted.shape[0] != len(centres) or fitted.shape[1] != len(global_xy_px):
        return 1.0
    loc = fitted - global_xy_px[None]
    spacing = box / max(1.0, math.sqrt(len(centres)))
    biggest = float(np.abs(loc).max(initial=0.0)) * scale
    mag = max(1.0, round(0.4 * spacing / max(biggest, 1e-6)))
    rejected = set(int(i) for i in local.get("rejected_patches") or [])
    for p, (px_, py_) in enumerate(centres):
        colour = GREY if p in rejected else GREEN
        col0, row0 = x0 + px_ * scale, top + py_ * scale
        path_c = col0 + (loc[p, :, 0] - loc[p, 0, 0]) * scale * mag
        path_r = row0 + (loc[p, :, 1] - loc[p, 0, 1]) * scale * mag
        _polyline(canvas, path_c, path_r, colour)
        _disks(canvas, [col0], [row0], 1.5, colour)
        _disks(canvas, path_c[-1:], path_r[-1:], 2.0, RED if p not in rejected else GREY)
    _text(canvas, left + 6, 6, f"LOCAL X{mag:g}", BLACK)
    return float(mag)


# --------------------------------------------------------------------------- series


@dataclass(frozen=True, slots=True)
class SeriesTilt:
    """One tilt of a series for the series pictures.

    Attributes
    ----------
    tilt_deg : float
    image_path : Path or None
        Its dose-weighted sum (MRC); None leaves its tile blank.
    drift_total_A, resolution_A, dose_e_A2, pre_exposure_e_A2 : float or None
        Drift (Å), even/odd resolution (Å), dose and pre-exposure (e/Å²).
    """

    tilt_deg: float
    image_path: Path | None = None
    drift_total_A: float | None = None
    resolution_A: float | None = None
    dose_e_A2: float | None = None
    pre_exposure_e_A2: float | None = None


def contact_sheet(images: Sequence[np.ndarray | None], tilt_deg: Sequence[float], *,
                  tile_px: int = 160, columns: int | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Tiles of the images sorted by tilt angle, one grey scale for all, angle on each tile.

    Parameters
    ----------
    images : sequence of 2-D arrays (None: a blank tile)
    tilt_deg : sequence of float
        Same length; the sort key (ties keep the given order).
    tile_px : int
        Long side of each tile.
    columns : int, optional
        Default: about square.

    Returns
    -------
    picture : ndarray of uint8, shape (h, w, 3)
    info : dict
        ``tiles``: in sheet order (row by row), ``{"tilt_deg", "index", "col", "row", "w", "h"}``
        with ``index`` the position in the input.
    """
    if len(images) != len(tilt_deg):
        raise ValueError(f"{len(images)} images but {len(tilt_deg)} tilt angles")
    order = sorted(range(len(images)), key=lambda i: float(tilt_deg[i]))
    small = [None if im is None else _bin_to(im, tile_px) for im in images]
    shapes = [s.shape for s in small if s is not None]
    th, tw = (max(h for h, _ in shapes), max(w for _, w in shapes)) if shapes else (tile_px,
                                                                                      tile_px)
    n = max(1, len(images))
    columns = columns or max(1, math.ceil(math.sqrt(n * th / max(tw, 1))))
    nrows = math.ceil(n / columns)
    gap = 4
    sheet = _canvas(nrows * (th + gap) + gap, columns * (tw + gap) + gap, (30, 30, 30))
    sample = np.concatenate([s.ravel()[:: max(1, s.size // 20000)] for s in small
                             if s is not None]) if shapes else None
    tiles = []
    for k, i in enumerate(order):
        r0 = gap + (k // columns) * (th + gap)
        c0 = gap + (k % columns) * (tw + gap)
        if small[i] is not None:
            grey = _robust_grey(small[i], sample=sample)
            h, w = grey.shape
            sheet[r0:r0 + h, c0:c0 + w] = grey[:, :, None]
        else:
            h, w = th, tw
        label = f"{float(tilt_deg[i]):+.1f}"
        sheet[r0:r0 + 12, c0:c0 + _text_width(label) + 4] = BLACK
        _text(sheet, c0 + 2, r0 + 1, label, YELLOW)
        tiles.append({"tilt_deg": float(tilt_deg[i]), "index": i, "col": c0, "row": r0, "w": w,
                      "h": h})
    return sheet, {"kind": "contact_sheet", "tiles": tiles, "label_height_px": 12}


_CHART_PANELS = (("drift_total_A", "DRIFT (A)"), ("resolution_A", "RESOLUTION (A)"),
                 ("dose_e_A2", "DOSE (E/A2)"), ("pre_exposure_e_A2", "PRE-EXPOSURE (E/A2)"))


def series_chart(tilts: Sequence[SeriesTilt], *, drift_threshold_A: float | None = None,
                 width_px: int = 640, panel_px: int = 130) -> tuple[np.ndarray, dict[str, Any]]:
    """Drift, resolution, dose and pre-exposure against tilt angle (one panel each).

    Returns
    -------
    picture : ndarray of uint8, shape (4 panel_px, width_px, 3)
    info : dict
        ``panels``: per quantity (``drift_total_A`` ...), ``x_px``/``y_px`` as in
        :func:`drift_plot` (x = tilt angle in degrees, y = the value) and ``colour``.
    """
    ordered = sorted(tilts, key=lambda t: t.tilt_deg)
    angles = np.array([t.tilt_deg for t in ordered], np.float64)
    canvas = _canvas(len(_CHART_PANELS) * panel_px, width_px)
    x_range = _padded_range(angles, 10.0) if angles.size else (-60.0, 60.0)
    panels: dict[str, Any] = {}
    left, top_pad, bottom_pad = 56, 16, 22
    for p, (key, label) in enumerate(_CHART_PANELS):
        top = p * panel_px + top_pad
        h = panel_px - top_pad - bottom_pad
        values = np.array([np.nan if getattr(t, key) is None else float(getattr(t, key))
                           for t in ordered], np.float64)
        ok = np.isfinite(values)
        extra = [drift_threshold_A] if key == "drift_total_A" and drift_threshold_A else []
        shown = np.concatenate([values[ok], extra, [0.0]])
        y_range = _padded_range(shown, 1.0)
        geometry = _axes(canvas, left, top, (h, width_px - left - 10), x_range, y_range,
                         y_down=False, x_label="TILT (DEG)" if p == len(_CHART_PANELS) - 1 else "")
        _text(canvas, left + 4, p * panel_px + 3, label, BLACK, scale=1)
        (a, b), (c, d) = geometry["x_px"], geometry["y_px"]
        cols, rows = a + b * angles[ok], c + d * values[ok]
        if extra:
            _polyline(canvas, [left, width_px - 11], [c + d * extra[0]] * 2, RED, dash_px=4)
        _polyline(canvas, cols, rows, BLUE_LINE)
        _disks(canvas, cols, rows, 2.5, BLUE)
        if extra:
            high = values[ok] > extra[0]
            _disks(canvas, cols[high], rows[high], 2.5, RED)
        panels[key] = {**geometry, "colour": list(BLUE)}
    return canvas, {"kind": "series_chart", "panels": panels, "marker_radius_px": 2.5,
                    "drift_threshold_A": drift_threshold_A}


# --------------------------------------------------------------------------- writers


def movie_quicklook_files(out_dir: str | Path, stem: str, *, dw_image: np.ndarray,
                          record: Mapping[str, Any], max_px: int = 512
                          ) -> list[tuple[Path, Callable[[IO[bytes]], None]]]:
    """The quick-look pictures of a movie as ``(path, writer)`` pairs, rendered now and written
    by whoever calls the writers (e.g. :func:`correction.write.write_output_set`, so that they
    appear with the movie's other outputs or not at all).

    Parameters
    ----------
    out_dir : str or Path
        The movie's output folder (beside ``S_DW.mrc``).
    stem : str
        Output stem S; names from :func:`quicklook_names`.
    dw_image : ndarray, shape (ny, nx)
        The dose-weighted sum.
    record : mapping
        The motion record (``pixel_size_A``, ``global_shifts_px``, ``drift``, ``local``,
        ``resolution``).
    max_px : int
        Long side of the thumbnail; side of the spectrum (at most).

    Returns
    -------
    list of (Path, callable)
        Thumbnail, spectrum, drift plot, in the order of :data:`QUICKLOOK_KINDS`.
    """
    out_dir = Path(out_dir)
    names = quicklook_names(stem)
    pixel_A = float(record["pixel_size_A"])
    resolution = (record.get("resolution") or {}).get("resolution_A")
    spectrum, spec_info = power_spectrum(dw_image, pixel_size_A=pixel_A, resolution_A=resolution,
                                         box_px=max_px)
    drift, drift_info = drift_plot(record)
    thumb = thumbnail(dw_image, max_px=max_px)
    binned = math.ceil(max(dw_image.shape) / max_px)
    payloads = {"thumbnail": encode_png(thumb, text={"kind": "thumbnail", "bin": binned}),
                "spectrum": encode_png(spectrum, text=spec_info),
                "drift": encode_png(drift, text=drift_info)}
    return [(out_dir / names[kind], lambda fh, data=payloads[kind]: fh.write(data))
            for kind in QUICKLOOK_KINDS]


def write_movie_quicklook(out_dir: str | Path, stem: str, *, dw_image: np.ndarray,
                          record: Mapping[str, Any], max_px: int = 512) -> dict[str, Path]:
    """Write ``S.thumb.png``, ``S.spectrum.png`` and ``S.drift.png``, each atomically
    (arguments as :func:`movie_quicklook_files`).

    Returns
    -------
    dict
        Kind (``thumbnail``, ``spectrum``, ``drift``) -> written Path.
    """
    from .write import atomic_write  # noqa: PLC0415

    files = movie_quicklook_files(out_dir, stem, dw_image=dw_image, record=record,
                                  max_px=max_px)
    return {kind: atomic_write(path, writer) for kind, (path, writer) in
            zip(QUICKLOOK_KINDS, files)}


def motion_record_beside(dw_path: str | Path) -> dict[str, Any]:
    """The motion record ``S.motion.json`` beside a dose-weighted sum ``S_DW.mrc`` ({} if none
    can be read)."""
    dw_path = Path(dw_path)
    stem = dw_path.name[:-len("_DW.mrc")] if dw_path.name.endswith("_DW.mrc") else dw_path.stem
    return read_motion_record(dw_path.with_name(f"{stem}.motion.json")) or {}


def write_series_quicklook(folder: str | Path, series: str, tilts: Sequence[SeriesTilt], *,
                           drift_threshold_A: float | None = None,
                           tile_px: int = 160) -> dict[str, Path]:
    """Write the contact sheet ``T.sheet.png`` and chart ``T.chart.png`` of a series.

    Images are read memory-mapped and block-averaged one at a time.

    Returns
    -------
    dict
        ``sheet`` and ``chart`` -> written Path.
    """
    import mrcfile  # noqa: PLC0415

    folder = Path(folder)
    images: list[np.ndarray | None] = []
    for t in tilts:
        small = None
        if t.image_path is not None:
            try:
                with mrcfile.mmap(t.image_path, mode="r", permissive=True) as mrc:
                    small = _bin_to(np.asarray(mrc.data).reshape(mrc.data.shape[-2:]), tile_px)
            except (OSError, ValueError):
                small = None
        images.append(small)
    sheet, sheet_info = contact_sheet(images, [t.tilt_deg for t in tilts], tile_px=tile_px)
    chart, chart_info = series_chart(tilts, drift_threshold_A=drift_threshold_A)
    return {
        "sheet": write_png_atomic(folder / f"{series}{_SERIES_KINDS['sheet']}", sheet,
                                  text=sheet_info),
        "chart": write_png_atomic(folder / f"{series}{_SERIES_KINDS['chart']}", chart,
                                  text=chart_info),
    }
