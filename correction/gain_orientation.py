"""Check a gain reference's orientation against the movie it corrects.

A counting detector records ``raw ~ Poisson(dose / gain)`` per pixel (the multiplicative gain
convention of :mod:`correction.gain`: ``raw * gain`` is flat), so the raw sum of a movie carries
the pixel-to-pixel pattern of ``1 / gain`` in the orientation that fits the data, and none of it
in any other. :func:`gain_orientation_scores` correlates the two for each of the 8 distinct
orientations (MotionCor2's ``-RotGain 0-3`` x ``-FlipGain 0/1``; ``-FlipGain 2`` after ``-RotGain
K`` is the same mapping as ``-FlipGain 1`` after ``-RotGain K+2``), keeping those whose shape
fits the frames (4 on a non-square frame, all 8 on a square one).
:func:`check_gain_orientation` says whether another orientation fits clearly better than the
configured one, with a one-line message naming MotionCor2's flags.

Both images are high-passed first (minus their 7 x 7 box mean), so that smooth illumination,
specimen and the gain's smooth components do not count, and clipped to their median +- 8 robust
standard deviations, so that hot pixels and defects do not dominate. The correlation is
computed on a central crop (default 512 x 512, :data:`DEFAULT_CROP_PX`): with ``M`` pixels a
wrong orientation scores about ``0 +- 1/sqrt(M)`` (0.002 for 512^2), the right one about
``1 / sqrt(1 + 1/(N sigma^2))`` for ``N`` counts per pixel in the sum and a relative gain
pattern of standard deviation ``sigma`` (measured 0.18 for N = 10, sigma = 0.058: 5 % per
pixel, 3 % per column). Orientations that share a component of the pattern (column stripes
survive an up-down flip) score in between (0.04 there). "Clearly better" means a lead of at
least ``max(MIN_MARGIN_R, 10 / sqrt(M))`` = 0.03. A central crop keeps the pixel pattern;
binning would average it away.

A gain file that holds the reciprocal of the multiplier (a flat-field count image, or a gain
written as ``1 / g``) correlates negatively, about ``-r``, in the orientation that fits. When
some orientation scores below ``-margin`` and by more than the margin beyond the best positive
score, the check says the gain looks inverted (``inverted``) and proposes no orientation:
before, it named the orientation whose score was nearest zero, and following that left the
movie with no gain correction at all.

Cost, measured on a loaded 2-core machine at 4096^2 (10 frames): 0.04 s CPU per movie for the
default crop, 0.8 % of ``correct_frames`` (4.6 s CPU, 7.6 s wall); a 1024^2 crop costs 0.14 s
CPU, the whole frame (``crop_px=None``) about 5.5 s, so do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .params import Flip, flip_name

__all__ = ["Orientation", "ORIENTATIONS", "OrientationScore", "GainOrientationCheck",
           "central_window", "gain_orientation_scores", "check_gain_orientation",
           "MIN_MARGIN_R", "DEFAULT_CROP_PX"]

#: side of the central window correlated by default (pixels)
DEFAULT_CROP_PX = 512
#: smallest lead in correlation that counts as "clearly better"
MIN_MARGIN_R = 0.03
#: lead in units of the standard deviation of a correlation of unrelated images, 1/sqrt(M)
_MARGIN_SIGMAS = 10.0
_HIGH_PASS_BOX_PX = 7
_CLIP_SIGMAS = 8.0
_FLIP_NUMBER = {"none": 0, "updown": 1, "leftright": 2}


@dataclass(frozen=True, slots=True)
class Orientation:
    """A gain orientation as MotionCor2's flags (:func:`correction.gain.orient`).

    Attributes
    ----------
    rotate_quarter_turns : int
        ``-RotGain`` 0-3.
    flip : {"none", "updown", "leftright"}
        ``-FlipGain`` 0/1/2 (a number is accepted and stored as the name).
    """

    rotate_quarter_turns: int = 0
    flip: Flip = "none"

    def __post_init__(self) -> None:
        if self.rotate_quarter_turns not in (0, 1, 2, 3):
            raise ValueError(f"rotate_quarter_turns must be 0-3, got {self.rotate_quarter_turns!r}")
        object.__setattr__(self, "rotate_quarter_turns", int(self.rotate_quarter_turns))
        object.__setattr__(self, "flip", flip_name(self.flip))

    @property
    def flip_gain(self) -> int:
        """MotionCor2's ``-FlipGain`` number (0, 1, 2)."""
        return _FLIP_NUMBER[self.flip]

    @property
    def motioncor2_flags(self) -> str:
        """``"-RotGain K -FlipGain F"``."""
        return f"-RotGain {self.rotate_quarter_turns} -FlipGain {self.flip_gain}"

    @property
    def motioncor3_gain_file_flags(self) -> str:
        """The ``-RotGain K -FlipGain F`` that make MotionCor3 orient an EER ``.gain`` file as
        this orientation does here: MotionCor3 reads a ``.gain`` through its TIFF reader,
        rows reversed (``TiffUtil/CLoadTiffImage.cpp``, ``mReadByStrip``), where motionwatch
        keeps its stored rows, as RELION does; so its numbers differ (README, TIFF row order)."""
        canonical = self.canonical()
        return (f"-RotGain {(4 - canonical.rotate_quarter_turns) % 4} "
                f"-FlipGain {0 if canonical.flip == 'updown' else 1}")

    def canonical(self) -> Orientation:
        """The member of :data:`ORIENTATIONS` with the same pixel mapping."""
        if self.flip == "leftright":  # reversing columns after K turns = rows after K + 2
            return Orientation((self.rotate_quarter_turns + 2) % 4, "updown")
        return self

    def view(self, image: np.ndarray) -> np.ndarray:
        """``image`` oriented (a view, no copy); equal to :func:`correction.gain.orient`."""
        out = np.rot90(image, -self.rotate_quarter_turns)
        if self.flip == "updown":
            return out[::-1, :]
        if self.flip == "leftright":
            return out[:, ::-1]
        return out

    def inverse_view(self, oriented: np.ndarray) -> np.ndarray:
        """The image as stored, given it oriented (a view): undoes the flip, then the turns."""
        out = oriented
        if self.flip == "updown":
            out = out[::-1, :]
        elif self.flip == "leftright":
            out = out[:, ::-1]
        return np.rot90(out, self.rotate_quarter_turns)

    def to_record(self) -> dict[str, int]:
        """``{"rot_gain": K, "flip_gain": F}``."""
        return {"rot_gain": self.rotate_quarter_turns, "flip_gain": self.flip_gain}


#: the 8 distinct orientations: -RotGain 0-3, each with -FlipGain 0 and 1
ORIENTATIONS: tuple[Orientation, ...] = tuple(
    Orientation(k, f) for f in ("none", "updown") for k in range(4))


@dataclass(frozen=True, slots=True)
class OrientationScore:
    """Correlation of the high-passed raw sum with the high-passed ``1 / gain`` so oriented.

    Attributes
    ----------
    orientation : Orientation
    r : float
        Normalised correlation, -1 to 1; about 0 for an orientation that does not fit.
    """

    orientation: Orientation
    r: float


@dataclass(frozen=True, slots=True)
class GainOrientationCheck:
    """Result of :func:`check_gain_orientation`.

    Attributes
    ----------
    configured : Orientation
        As given (``-FlipGain 2`` stays 2).
    configured_r : float
    best : Orientation
        The best-fitting orientation (a member of :data:`ORIENTATIONS`).
    best_r : float
    clearly_better : bool
        ``best`` is not the configured mapping, ``best_r - configured_r >= margin_r``, and the
        gain does not look inverted.
    inverted : Orientation or None
        The orientation in which the gain's reciprocal fits, when it fits by the margin better
        than any orientation of the gain itself (the file is a count image, not a multiplier).
    inverted_r : float
        That orientation's (negative) correlation; 0.0 when ``inverted`` is None.
    margin_r : float
        ``max(MIN_MARGIN_R, 10 / sqrt(n_pixels))``.
    n_pixels : int
        Pixels correlated (the central crop).
    scores : tuple of OrientationScore
        Every candidate whose shape fits the frames, in :data:`ORIENTATIONS` order.
    """

    configured: Orientation
    configured_r: float
    best: Orientation
    best_r: float
    clearly_better: bool
    margin_r: float
    n_pixels: int
    scores: tuple[OrientationScore, ...]
    inverted: Orientation | None = None
    inverted_r: float = 0.0
    gain_file_rows_as_stored: bool = False

    def _flags(self, orientation: Orientation) -> str:
        """MotionCor2's flags (motionwatch's numbers), and for a ``.gain`` file (rows as
        stored) MotionCor3's, which differ: copied either way, they turned the gain over."""
        if not self.gain_file_rows_as_stored:
            return orientation.motioncor2_flags
        return (f"{orientation.motioncor2_flags} (MotionCor3 on this .gain: "
                f"{orientation.motioncor3_gain_file_flags})")

    @property
    def suspect(self) -> bool:
        """The gain as configured does not fit: another orientation, or its reciprocal, does."""
        return self.clearly_better or self.inverted is not None

    @property
    def message(self) -> str:
        """One line naming MotionCor2's flags (which are motionwatch's ``--gain-rotate/-flip``)."""
        conf = f"the configured {self._flags(self.configured)} (r={self.configured_r:.2f})"
        if self.inverted is not None:
            where = ("in the configured orientation"
                     if self.inverted == self.configured.canonical()
                     else f"as {self._flags(self.inverted)}")
            return (f"gain orientation: the gain looks inverted: its reciprocal fits {where} "
                    f"(r={-self.inverted_r:.2f}), better than any orientation of the gain "
                    f"(best {self._flags(self.best)}, r={self.best_r:.2f}); the gain must "
                    f"be a multiplier (raw x gain is flat), not a flat-field count image")
        if self.clearly_better:
            return (f"gain orientation: {self._flags(self.best)} fits better "
                    f"(r={self.best_r:.2f}) than {conf}")
        if self.best == self.configured.canonical():
            others = [s for s in self.scores if s.orientation != self.best]
            if not others:
                return f"gain orientation: {conf} is the only one that fits the frame shape"
            runner = max(others, key=lambda s: s.r)
            return (f"gain orientation: {conf} fits best; next "
                    f"{self._flags(runner.orientation)} (r={runner.r:.2f})")
        return (f"gain orientation: no orientation fits clearly better than {conf}; best "
                f"{self._flags(self.best)} (r={self.best_r:.2f})")

    def to_record(self) -> dict[str, Any]:
        """JSON-ready summary for the motion record (``"gain_orientation"``)."""
        return {"configured": {**self.configured.to_record(), "r": round(self.configured_r, 4)},
                "best": {**self.best.to_record(), "r": round(self.best_r, 4)},
                "clearly_better": self.clearly_better,
                **({"inverted": {**self.inverted.to_record(), "r": round(self.inverted_r, 4)}}
                   if self.inverted is not None else {}),
                "margin_r": round(self.margin_r, 4),
                "pixels": self.n_pixels, "message": self.message,
                "scores": [{**s.orientation.to_record(), "r": round(s.r, 4)}
                           for s in self.scores]}


def central_window(shape_yx: tuple[int, int], crop_px: int | None) -> tuple[slice, slice]:
    """Rows and columns of the central ``crop_px x crop_px`` window (the whole axis if shorter).

    ``crop_px=None`` is the whole frame.
    """
    out = []
    for n in shape_yx:
        c = int(n) if crop_px is None else min(int(n), int(crop_px))
        start = (int(n) - c) // 2
        out.append(slice(start, start + c))
    return out[0], out[1]


def _clip_robust(a: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Clip ``a`` in place to its median +- 8 robust standard deviations (MAD, subsampled)."""
    sample = a[valid] if valid is not None else a.ravel()
    sample = sample[:: max(1, sample.size // 100_000)]
    if sample.size == 0:
        return
    med = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - med)))
    if sigma == 0.0:
        sigma = float(sample.std())
    if sigma > 0.0:
        np.clip(a, med - _CLIP_SIGMAS * sigma, med + _CLIP_SIGMAS * sigma, out=a)


def _high_pass(a: np.ndarray) -> np.ndarray:
    """``a`` minus its 7 x 7 box mean (reflecting edges); float64."""
    return a - ndimage.uniform_filter(a, _HIGH_PASS_BOX_PX, mode="reflect")


def gain_orientation_scores(raw_sum: np.ndarray, gain: np.ndarray, *,
                            frame_shape_yx: tuple[int, int] | None = None,
                            crop_px: int | None = DEFAULT_CROP_PX) -> tuple[OrientationScore, ...]:
    """Correlate the raw sum with ``1 / gain`` in each orientation that fits the frames.

    Parameters
    ----------
    raw_sum : ndarray, shape (ny, nx), or the central crop of such a frame
        Sum of raw frames (counts), minus ``n x dark`` if there is a dark reference; NOT
        gain-corrected. With ``frame_shape_yx`` given it must be exactly
        ``frame[central_window(frame_shape_yx, crop_px)]`` (a caller may sum only that).
    gain : ndarray, shape (ny, nx) or (nx, ny)
        The gain reference as stored in its file (before any orientation). Pixels that are 0
        or not finite are left out.
    frame_shape_yx : (int, int), optional
        Shape of the frames; default ``raw_sum.shape``.
    crop_px : int or None
        Side of the central window correlated; None = the whole frame.

    Returns
    -------
    tuple of OrientationScore
        In :data:`ORIENTATIONS` order, only those whose oriented shape equals the frames'.

    Raises
    ------
    ValueError
        No orientation of ``gain`` fits the frame shape, ``raw_sum`` is not the expected
        window, or the window is smaller than 8 x 8 pixels.
    """
    frame = tuple(int(v) for v in (frame_shape_yx or raw_sum.shape))
    window = central_window(frame, crop_px)
    shape_w = (window[0].stop - window[0].start, window[1].stop - window[1].start)
    if frame_shape_yx is None:
        raw = raw_sum[window]
    elif tuple(raw_sum.shape) == shape_w:
        raw = raw_sum
    else:
        raise ValueError(f"raw_sum is {raw_sum.shape}, expected the {shape_w} central window of "
                         f"a {frame} frame")
    if min(shape_w) < 8:
        raise ValueError(f"the window correlated is {shape_w}; at least 8 x 8 pixels needed")
    candidates = [o for o in ORIENTATIONS if o.view(gain).shape == frame]
    if not candidates:
        raise ValueError(f"no orientation of a {gain.shape} gain fits {frame} frames")

    a = np.array(raw, dtype=np.float64)
    _clip_robust(a)
    a = _high_pass(a)
    a -= a.mean()
    # the window of each oriented candidate is a rectangle of the stored gain: process the
    # rectangle covering all of them once (1/gain, clip, high-pass commute with the mapping,
    # up to the box filter's reflected edges), then compare each candidate in the stored
    # orientation, with the raw window turned back instead
    spans = {o: _stored_span(o, gain.shape, window) for o in candidates}
    r0 = min(sp[0].start for sp in spans.values())
    r1 = max(sp[0].stop for sp in spans.values())
    c0 = min(sp[1].start for sp in spans.values())
    c1 = max(sp[1].stop for sp in spans.values())
    g = np.array(gain[r0:r1, c0:c1], dtype=np.float64)
    valid = np.isfinite(g) & (g > 0)
    if not valid.any():
        return tuple(OrientationScore(o, 0.0) for o in candidates)
    inv = np.divide(1.0, g, out=np.zeros_like(g), where=valid)
    del g
    inv[~valid] = float(np.median(inv[valid][:: max(1, int(valid.sum()) // 100_000)]))
    _clip_robust(inv, valid)
    b_all = _high_pass(inv)
    del inv
    scores = []
    for o in candidates:
        rs, cs = spans[o]
        sub = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
        b, ok = b_all[sub], valid[sub]
        a_back = np.ascontiguousarray(o.inverse_view(a))  # raw window in stored orientation
        b = np.where(ok, b - b[ok].mean(), 0.0)
        a_ok = np.where(ok, a_back, 0.0)
        denom = math.sqrt(_dot(a_ok, a_ok) * _dot(b, b))
        scores.append(OrientationScore(o, _dot(a_ok, b) / denom if denom > 0 else 0.0))
    return tuple(scores)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of ``a * b`` in one thread (a threaded BLAS dot stalls on a busy machine)."""
    return float(np.einsum("i,i->", a.ravel(), b.ravel()))


def _stored_span(o: Orientation, stored_shape: tuple[int, int],
                 window: tuple[slice, slice]) -> tuple[slice, slice]:
    """Rows and columns of the stored image that ``o`` maps onto ``window``."""
    rows = np.broadcast_to(np.arange(stored_shape[0])[:, None], stored_shape)
    cols = np.broadcast_to(np.arange(stored_shape[1])[None, :], stored_shape)
    wr, wc = o.view(rows)[window], o.view(cols)[window]
    corners = [(0, 0), (0, -1), (-1, 0), (-1, -1)]
    r = [int(wr[c]) for c in corners]
    c = [int(wc[c]) for c in corners]
    return slice(min(r), max(r) + 1), slice(min(c), max(c) + 1)


def check_gain_orientation(raw_sum: np.ndarray, gain_as_configured: np.ndarray, *,
                           configured: Orientation | tuple[int, Flip | int],
                           frame_shape_yx: tuple[int, int] | None = None,
                           crop_px: int | None = DEFAULT_CROP_PX,
                           gain_file_rows_as_stored: bool = False) -> GainOrientationCheck:
    """Does another gain orientation fit the movie clearly better than the configured one?

    Parameters
    ----------
    raw_sum : ndarray, shape (ny, nx), or its central window
        As :func:`gain_orientation_scores`.
    gain_as_configured : ndarray, shape (ny, nx)
        The gain as applied to the frames, i.e. already oriented by ``configured``
        (``GainReference.gain``); 0 at defects.
    configured : Orientation or (int, flip)
        The orientation that produced ``gain_as_configured`` (``-RotGain``, ``-FlipGain``).
    frame_shape_yx, crop_px
        As :func:`gain_orientation_scores`.
    gain_file_rows_as_stored : bool
        The gain is a ``.gain`` file, read in its stored row order: the message names
        MotionCor3's flags for it too.

    Returns
    -------
    GainOrientationCheck
        ``clearly_better`` when the best orientation leads the configured one by at least
        ``max(MIN_MARGIN_R, 10 / sqrt(pixels))`` in correlation; ``message`` names both as
        MotionCor2 flags.

    Raises
    ------
    ValueError
        ``gain_as_configured`` does not have the frames' shape, or as
        :func:`gain_orientation_scores`.
    """
    conf = configured if isinstance(configured, Orientation) else Orientation(*configured)
    frame = tuple(int(v) for v in (frame_shape_yx or raw_sum.shape))
    if tuple(gain_as_configured.shape) != frame:
        raise ValueError(f"the configured gain is {gain_as_configured.shape}; it does not fit "
                         f"{frame} frames")
    stored = conf.inverse_view(gain_as_configured)
    scores = gain_orientation_scores(raw_sum, stored, frame_shape_yx=frame_shape_yx,
                                     crop_px=crop_px)
    window = central_window(frame, crop_px)
    n_pixels = (window[0].stop - window[0].start) * (window[1].stop - window[1].start)
    by_orientation = {s.orientation: s.r for s in scores}
    conf_r = by_orientation[conf.canonical()]
    best = max(scores, key=lambda s: s.r)
    worst = min(scores, key=lambda s: s.r)
    margin = max(MIN_MARGIN_R, _MARGIN_SIGMAS / math.sqrt(n_pixels))
    inverted = worst.r <= -margin and -worst.r - max(best.r, 0.0) >= margin
    better = (not inverted and best.orientation != conf.canonical()
              and best.r - conf_r >= margin)
    return GainOrientationCheck(configured=conf, configured_r=conf_r, best=best.orientation,
                                best_r=best.r, clearly_better=better, margin_r=margin,
                                n_pixels=n_pixels, scores=scores,
                                inverted=worst.orientation if inverted else None,
                                inverted_r=worst.r if inverted else 0.0,
                                gain_file_rows_as_stored=gain_file_rows_as_stored)
