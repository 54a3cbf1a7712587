"""Fourier ring correlation (FRC) between two images, and resolution estimates from it.

Two uses:

* **Even/odd resolution of a corrected movie.** The even-frame and odd-frame sums are two
  half-sets of the same exposure. Their FRC is a *half-set* FRC, and the resolution is where it
  falls below **1/7 ≈ 0.143, applied directly to the half-set curve** (the gold-standard rule of
  Rosenthal & Henderson 2003). Why 1/7: if FRC_half is the correlation of the halves, the
  full sum (even + odd) correlates with the noise-free image as
  ``C_ref = sqrt(2 FRC_half / (1 + FRC_half))``; ``FRC_half = 1/7`` gives ``C_ref = 0.5``.
  Equivalently, 1/7 on the half-set curve is 0.25 on the Spearman-Brown corrected full-set curve
  ``2 FRC_half / (1 + FRC_half)`` (:func:`full_set_frc`); we threshold the *uncorrected* half-set
  curve, never the corrected one at 0.143 (that would claim too much).
* **FRC against a known truth** (tests of alignment and summation): :func:`frc_against_truth`;
  here the matching threshold is ``C_ref = 0.5`` (:data:`TRUTH_THRESHOLD`).

Crossing rule (:func:`resolution_from_frc`). A micrograph's FRC dips at the zeros of the
contrast transfer function, so the *first* dip below threshold says more about defocus than about
motion. The default criterion ``"last"`` therefore takes the highest frequency at which the curve
is still at or above threshold for ``min_run`` consecutive rings (a run of three rules out noise
excursions: a ring of n independent coefficients fluctuates by about ``1/sqrt(n)``). ``"first"``
gives the first crossing instead. Limitations: fixed-pattern noise (gain-reference error, defects)
is common to both halves and raises the FRC at all frequencies, making the estimate optimistic.

Edges: both halves show the same field, so they share the jump a periodic transform sees where
opposite edges meet; that alone correlates them at every frequency (a false resolution of a few
pixels on a micrograph with an ice gradient). :func:`even_odd_resolution` therefore subtracts the
mean and tapers the borders (raised cosine over 1/16 of the short side) before the transform.

No crossing: a curve at or above threshold up to Nyquist gives ``status="nyquist"`` and
``resolution_A = 2 * pixel_size_A`` (a bound: at least that good); a curve below threshold at
every ring above DC gives ``status="none"`` and ``resolution_A = None``.

Rings. For a ``(ny, nx)`` image the ring width is ``1 / min(ny, nx)`` cycles per pixel; ring
``r`` collects Fourier coefficients with ``round(|k| * min(ny, nx)) == r`` for ``r = 0 ..
min(ny, nx) // 2`` (DC to Nyquist of the short side; corners beyond are left out). Sums run over
the real-input half plane with the conjugate-symmetric coefficients counted twice, so the result
equals the FRC over the full plane.

References
----------
Saxton & Baumeister (1982), J. Microsc. 127:127-138 (Fourier ring correlation).
Rosenthal & Henderson (2003), J. Mol. Biol. 333:721-745 (the 0.143 threshold).
van Heel & Schatz (2005), J. Struct. Biol. 151:250-262 (threshold curves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.fft

from .errors import ParameterError

__all__ = [
    "HALF_SET_THRESHOLD",
    "TRUTH_THRESHOLD",
    "FRCCurve",
    "FRCResolution",
    "edge_taper",
    "fourier_ring_correlation",
    "resolution_from_frc",
    "even_odd_resolution",
    "even_odd_resolution_from_spectra",
    "even_odd_resolution_fast",
    "frc_against_truth",
    "full_set_frc",
]

HALF_SET_THRESHOLD = 1.0 / 7.0
"""Threshold on the half-set (even vs odd) FRC; Rosenthal & Henderson 2003."""

TRUTH_THRESHOLD = 0.5
"""Threshold on the FRC of an image against its noise-free truth (C_ref = 0.5)."""

Criterion = Literal["last", "first"]


@dataclass(frozen=True, slots=True)
class FRCCurve:
    """The FRC of two images, ring by ring from DC to Nyquist.

    Attributes
    ----------
    frc : ndarray, shape (n_rings,)
        Correlation per ring, in [-1, 1]; NaN for a ring whose power is zero in either image.
    frequency_per_px : ndarray, shape (n_rings,)
        Ring centre in cycles per pixel (0 to 0.5).
    n_coefficients : ndarray of int, shape (n_rings,)
        Fourier coefficients in each ring, over the full plane.
    pixel_size_A : float or None
        Pixel size in Å, when given.
    """

    frc: np.ndarray
    frequency_per_px: np.ndarray
    n_coefficients: np.ndarray
    pixel_size_A: float | None = None

    @property
    def frequency_per_A(self) -> np.ndarray:
        """Ring centres in 1/Å (needs ``pixel_size_A``)."""
        if self.pixel_size_A is None:
            raise ParameterError("frequency_per_A needs pixel_size_A")
        return self.frequency_per_px / self.pixel_size_A

    def band_mean(self, low_per_px: float, high_per_px: float) -> tuple[float, int]:
        """FRC over the rings from ``low_per_px`` to ``high_per_px`` (cycles/px), each ring
        weighted by its coefficients, and how many coefficients that is (full plane); ``(0.0,
        0)`` for an empty band."""
        band = ((self.frequency_per_px >= low_per_px) & (self.frequency_per_px <= high_per_px)
                & np.isfinite(self.frc) & (self.n_coefficients > 0))
        n = int(self.n_coefficients[band].sum())
        if n == 0:
            return 0.0, 0
        return float(np.average(self.frc[band], weights=self.n_coefficients[band])), n

    def mean_up_to(self, frequency_per_px: float) -> float:
        """Mean FRC over the rings from the first above DC up to ``frequency_per_px`` (cycles/px)."""
        band = (self.frequency_per_px > 0) & (self.frequency_per_px <= frequency_per_px)
        return float(np.nanmean(self.frc[band]))


@dataclass(frozen=True, slots=True)
class FRCResolution:
    """A resolution estimate read from an FRC curve.

    Attributes
    ----------
    status : {"crossing", "nyquist", "none"}
        ``crossing``: the curve fell below threshold; ``nyquist``: it never did (the resolution
        is a bound); ``none``: below threshold at every ring above DC.
    frequency_per_px : float or None
        Frequency of the crossing (linear interpolation between rings), cycles per pixel.
    resolution_A : float or None
        ``pixel_size_A / frequency_per_px`` when a pixel size was given.
    resolution_px : float or None
        ``1 / frequency_per_px`` (pixels per cycle).
    threshold, criterion, min_run
        The rule that was applied.
    """

    status: Literal["crossing", "nyquist", "none"]
    frequency_per_px: float | None
    resolution_px: float | None
    resolution_A: float | None
    threshold: float
    criterion: Criterion
    min_run: int

    def to_record(self, *, threshold_rule: str | None = None) -> dict:
        """JSON-ready dict for ``motion.json`` (the ``resolution`` object) and the live feed."""
        return {
            "method": "even_odd_frc",
            "resolution_A": _round(self.resolution_A, 3),
            "resolution_px": _round(self.resolution_px, 4),
            "status": self.status,
            "threshold": round(self.threshold, 6),
            "threshold_rule": threshold_rule or (
                "1/7 on the half-set (even vs odd) FRC, Rosenthal & Henderson 2003"
                if abs(self.threshold - HALF_SET_THRESHOLD) < 1e-9 else "custom"),
            "criterion": self.criterion,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def edge_taper(shape: tuple[int, int], width_px: int, dtype: type = np.float32) -> np.ndarray:
    """A separable window, 1 inside and a raised cosine from 0 to 1 over ``width_px`` at each edge.

    Returns
    -------
    ndarray, shape ``shape``
    """
    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, dtype=np.float64)
        k = min(width_px, n // 2)
        if k > 0:
            edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
            w[:k] = edge
            w[n - k:] = edge[::-1]
        return w

    return np.outer(ramp(shape[0]), ramp(shape[1])).astype(dtype)


def fourier_ring_correlation(image1: np.ndarray, image2: np.ndarray, *,
                             pixel_size_A: float | None = None,
                             edge_taper_px: int = 0, axis_mask_px: int | None = 0,
                             workers: int | None = None) -> FRCCurve:
    """Fourier ring correlation of two images of the same shape.

    Parameters
    ----------
    image1, image2 : ndarray, shape (ny, nx)
        Real images (any real dtype; computed in float64 sums over float32/64 transforms).
    pixel_size_A : float, optional
        Pixel size in Å, carried into the result for conversions.
    edge_taper_px : int
        When > 0, each image's mean is subtracted and the borders are brought smoothly to zero
        over this many pixels (:func:`edge_taper`) before the transform. Two images of one field
        share its edge discontinuity (a periodic transform sees a jump where opposite edges
        meet), which correlates them at every frequency; the taper removes that bias.
    axis_mask_px : int or None
        When > 0, the coefficients with ``|kx|`` or ``|ky|`` below that many rings are left out
        (where that edge discontinuity, and stripes along rows or columns, put their power);
        None: the even/odd estimates' default (a 128th of the short side, at least 2).
    workers : int, optional
        Threads for ``scipy.fft`` (default: scipy's default, one).

    Returns
    -------
    FRCCurve
        ``frc[r] = sum Re(F1 F2*) / sqrt(sum |F1|^2 sum |F2|^2)`` over ring ``r`` (see module
        docstring for the ring definition).

    Raises
    ------
    ParameterError
        Shapes differ, an image is not 2-D, or smaller than 8 pixels on a side.
    """
    a = np.asarray(image1)
    b = np.asarray(image2)
    if a.ndim != 2 or a.shape != b.shape:
        raise ParameterError(f"FRC needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    ny, nx = a.shape
    if min(ny, nx) < 8:
        raise ParameterError(f"FRC needs images of at least 8 x 8 pixels, got {ny} x {nx}")
    if pixel_size_A is not None and not pixel_size_A > 0:
        raise ParameterError(f"pixel_size_A must be > 0 Å, got {pixel_size_A}")
    if not (np.isrealobj(a) and np.isrealobj(b)):
        raise ParameterError("FRC needs real images")
    if edge_taper_px < 0:
        raise ParameterError(f"edge_taper_px must be >= 0 px, got {edge_taper_px}")
    dtype = np.float32 if (a.dtype == np.float32 and b.dtype == np.float32) else np.float64
    a = a.astype(dtype, copy=False)
    b = b.astype(dtype, copy=False)
    if edge_taper_px > 0:
        window = edge_taper(a.shape, edge_taper_px, dtype)
        a = (a - a.mean(dtype=np.float64).astype(dtype)) * window
        b = (b - b.mean(dtype=np.float64).astype(dtype)) * window
    f1 = scipy.fft.rfft2(a, workers=workers)
    f2 = scipy.fft.rfft2(b, workers=workers)
    mask = _default_axis_mask((ny, nx)) if axis_mask_px is None else int(axis_mask_px)
    return _frc_of_half_spectra(f1, f2, (ny, nx), pixel_size_A=pixel_size_A, axis_mask_px=mask)


#: short side (px) from which the spectral even/odd FRC uses every other row of the spectra
_ROW_STEP_FROM_PX = 2048


def _frc_of_half_spectra(f1: np.ndarray, f2: np.ndarray, shape_yx: tuple[int, int], *,
                         pixel_size_A: float | None, axis_mask_px: int = 0,
                         row_step: int = 1, rows_taken: bool = False) -> FRCCurve:
    """Ring sums over two real-input half spectra of an image of ``shape_yx`` (see module).

    ``axis_mask_px`` > 0 leaves out the coefficients with ``|kx|`` or ``|ky|`` below that many
    rings (the axis bands), where a shared edge discontinuity puts its power. ``row_step`` > 1
    uses every ``row_step``-th row of the spectra only: each ring is then estimated from that
    fraction of its coefficients (ample for large images, and proportionally cheaper).
    ``rows_taken``: the spectra given are those rows already (:func:`_even_rows_spectrum`).

    The rows of ``ky`` and ``-ky`` lie on the same rings: their products are added before the
    ring sums, which then read half the rows (with the pair products made on the spectra
    viewed as real (re, im) pairs, about half the time of summing every row: 0.1 against
    0.2 s for the even/odd spectra of a 4320^2 grid).
    """
    ny, nx = shape_yx
    n_ref = min(ny, nx)
    n_rings = n_ref // 2 + 1
    rows = slice(None, None, row_step)
    if not rows_taken:
        f1, f2 = f1[rows], f2[rows]
    m, nxh = f1.shape
    ky = (scipy.fft.fftfreq(ny) * n_ref).astype(np.float32)[rows]
    kx = (scipy.fft.rfftfreq(nx) * n_ref).astype(np.float32)
    # row j and row m - j hold ky and -ky when the rows taken are symmetric (ny a multiple of
    # row_step): rows 1 .. m - 1 - half are added to their partners m - 1 .. half + 1
    half = m // 2 if ny % row_step == 0 else m - 1
    paired = m - 1 - half  # rows with a partner among the rows beyond ``half``
    ring = np.rint(np.sqrt(ky[:half + 1, None] ** 2 + kx[None, :] ** 2)).astype(np.intp)
    np.minimum(ring, n_rings, out=ring)  # beyond Nyquist of the short side: one overflow bin
    if axis_mask_px > 0:  # masked coefficients go to the overflow bin too
        ring[np.abs(ky[:half + 1]) < axis_mask_px, :] = n_rings
        ring[:, np.abs(kx) < axis_mask_px] = n_rings
    # columns 1 .. nx/2 - 1 of the half plane stand for two coefficients of the full plane
    interior = slice(1, nx // 2 if nx % 2 == 0 else nx // 2 + 1)
    real = f1.real.dtype
    if f1.strides[-1] != f1.itemsize or f2.strides[-1] != f2.itemsize:
        f1, f2 = np.ascontiguousarray(f1), np.ascontiguousarray(f2)
    pairs1, pairs2 = f1.view(real), f2.view(real)  # (m, 2 nxh): re, im, re, im, ...
    products = np.empty(pairs1.shape, real)

    def ring_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Ring sums of Re(A conj(B)) over the full plane."""
        np.multiply(a, b, out=products)
        products[1:paired + 1] += products[m - 1:m - 1 - paired:-1]
        top = products[:half + 1]
        values = top[:, 0::2] + top[:, 1::2]
        values[:, interior] *= 2
        return np.bincount(ring.ravel(), weights=values.ravel(),
                           minlength=n_rings + 1)[:n_rings]

    cross = ring_sums(pairs1, pairs2)
    p1 = ring_sums(pairs1, pairs1)
    p2 = ring_sums(pairs2, pairs2)
    del products
    row_count = np.ones(half + 1)
    row_count[1:paired + 1] = 2
    col_count = np.ones(nxh)
    col_count[interior] = 2
    count = np.bincount(ring.ravel(), weights=(row_count[:, None] * col_count[None, :]).ravel(),
                        minlength=n_rings + 1)
    count = np.rint(count[:n_rings]).astype(np.int64)
    denom = np.sqrt(p1 * p2)
    with np.errstate(invalid="ignore", divide="ignore"):
        frc = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    frequency = np.arange(n_rings) / n_ref
    return FRCCurve(frc=np.clip(frc, -1.0, 1.0), frequency_per_px=frequency,
                    n_coefficients=count, pixel_size_A=pixel_size_A)


def resolution_from_frc(curve: FRCCurve, *, threshold: float = HALF_SET_THRESHOLD,
                        criterion: Criterion = "last", min_run: int = 3) -> FRCResolution:
    """Read a resolution from an FRC curve at a threshold.

    Parameters
    ----------
    curve : FRCCurve
        From :func:`fourier_ring_correlation`.
    threshold : float
        Correlation threshold (default 1/7 for half-sets; use :data:`TRUTH_THRESHOLD` against
        a noise-free truth).
    criterion : {"last", "first"}
        ``last``: the highest frequency of a run of at least ``min_run`` consecutive rings at or
        above threshold (robust to CTF zeros); ``first``: the first ring, from low frequency,
        below threshold. DC is never considered.
    min_run : int
        Rings in the run that qualifies a ``last`` crossing (>= 1).

    Returns
    -------
    FRCResolution
        The crossing is interpolated linearly between the last ring at or above threshold and
        the next ring.
    """
    if criterion not in ("last", "first"):
        raise ParameterError(f"criterion must be 'last' or 'first', got {criterion!r}")
    if min_run < 1:
        raise ParameterError(f"min_run must be >= 1, got {min_run}")
    frc = np.nan_to_num(curve.frc[1:], nan=-1.0)  # skip DC; empty rings count as below
    freq = curve.frequency_per_px[1:]
    above = frc >= threshold

    def result(status: str, f: float | None) -> FRCResolution:
        res_px = None if f is None else 1.0 / f
        res_A = None if res_px is None or curve.pixel_size_A is None else res_px * curve.pixel_size_A
        return FRCResolution(status=status, frequency_per_px=f, resolution_px=res_px,
                             resolution_A=res_A, threshold=threshold, criterion=criterion,
                             min_run=min_run)

    if above.all():
        return result("nyquist", float(freq[-1]))
    if criterion == "first":
        last_ok = int(np.argmin(above)) - 1  # index of the ring before the first one below
        if last_ok < 0:
            return result("none", None)
    else:
        # end index of each run of consecutive True values, with its length
        padded = np.concatenate(([False], above, [False])).astype(np.int8)
        starts = np.flatnonzero(np.diff(padded) == 1)
        ends = np.flatnonzero(np.diff(padded) == -1)  # exclusive
        long_runs = ends[(ends - starts) >= min(min_run, len(above))]
        if long_runs.size == 0:
            return result("none", None)
        last_ok = int(long_runs[-1]) - 1
        if last_ok == len(above) - 1:
            return result("nyquist", float(freq[-1]))
    # linear interpolation of the crossing between ring last_ok (>= t) and last_ok + 1 (< t)
    y0, y1 = frc[last_ok], frc[last_ok + 1]
    f0, f1 = freq[last_ok], freq[last_ok + 1]
    t = 0.0 if y0 == y1 else float(np.clip((y0 - threshold) / (y0 - y1), 0.0, 1.0))
    return result("crossing", float(f0 + t * (f1 - f0)))


def even_odd_resolution(even_sum: np.ndarray, odd_sum: np.ndarray, *, pixel_size_A: float,
                        criterion: Criterion = "last", min_run: int = 3,
                        edge_taper_px: int | None = None,
                        workers: int | None = None) -> tuple[FRCResolution, FRCCurve]:
    """Resolution of a corrected movie from its even-frame and odd-frame sums (1/7 rule).

    Parameters
    ----------
    even_sum, odd_sum : ndarray, shape (ny, nx)
        Aligned sums of the even and of the odd frames (same weighting for both).
    pixel_size_A : float
        Output pixel size in Å.
    edge_taper_px : int, optional
        Border taper (see :func:`fourier_ring_correlation`); default ``max(8, min(ny, nx) // 16)``
        pixels, since both halves show the same field and so share its edge discontinuity.

    Returns
    -------
    (FRCResolution, FRCCurve)
        ``resolution.to_record()`` is the ``resolution`` object of ``motion.json``.
    """
    if edge_taper_px is None:
        edge_taper_px = max(8, min(np.shape(even_sum)[-2:]) // 16)
    curve = fourier_ring_correlation(even_sum, odd_sum, pixel_size_A=pixel_size_A,
                                     edge_taper_px=edge_taper_px, workers=workers)
    return resolution_from_frc(curve, threshold=HALF_SET_THRESHOLD, criterion=criterion,
                               min_run=min_run), curve


def _default_axis_mask(shape_yx: tuple[int, int]) -> int:
    return max(2, min(shape_yx) // 128)


def _check_frc_inputs(shape_yx: tuple[int, int], pixel_size_A: float) -> None:
    ny, nx = shape_yx
    if min(ny, nx) < 8:
        raise ParameterError(f"FRC needs images of at least 8 x 8 pixels, got {ny} x {nx}")
    if not pixel_size_A > 0:
        raise ParameterError(f"pixel_size_A must be > 0 Å, got {pixel_size_A}")


def even_odd_resolution_from_spectra(even_spectrum: np.ndarray, odd_spectrum: np.ndarray, *,
                                     shape_yx: tuple[int, int], pixel_size_A: float,
                                     axis_mask_px: int | None = None,
                                     criterion: Criterion = "last", min_run: int = 3
                                     ) -> tuple[FRCResolution, FRCCurve]:
    """Even/odd resolution (1/7 rule) straight from the half spectra of the two sums.

    For the pipeline, which holds the even and odd sums in Fourier space before its inverse
    transforms: no transform is needed here, only ring sums (a few tenths of a second at 4096²,
    against ~2 s for :func:`even_odd_resolution` with its taper and two forward transforms).

    Dose weighting multiplies each coefficient by a function of ``|k|`` only, the same for
    coefficients of one ring up to its width; the ring correlation is invariant to such a
    per-ring scale, so the FRC of the dose-weighted halves equals that of the unweighted ones.

    Edges: without a taper, the edge discontinuity that both halves share (a periodic transform
    sees a jump where opposite edges meet, and where a padded frame's fill meets the image)
    puts its power along the ``kx = 0`` and ``ky = 0`` axes, falling off as ``1/|k|`` away from
    them. The coefficients within ``axis_mask_px`` rings of either axis are left out instead of
    tapering; a ring keeps most of its coefficients once its radius is a few times the mask.

    Parameters
    ----------
    even_spectrum, odd_spectrum : ndarray, complex, shape (ny, nx // 2 + 1)
        ``rfft2`` half spectra of the even and odd sums (any consistent per-frequency weighting).
    shape_yx : (int, int)
        Real-space shape ``(ny, nx)`` the spectra belong to (e.g. a padded grid).
    pixel_size_A : float
        Pixel size in Å.
    axis_mask_px : int, optional
        Half-width of the left-out axis bands, in rings (default ``max(2, min(ny, nx) // 128)``).

    Returns
    -------
    (FRCResolution, FRCCurve)
        As :func:`even_odd_resolution`; ``n_coefficients`` counts the coefficients kept.
    """
    ny, nx = (int(v) for v in shape_yx)
    expected = (ny, nx // 2 + 1)
    if even_spectrum.shape != expected or odd_spectrum.shape != expected:
        raise ParameterError(f"half spectra of a {ny} x {nx} image must have shape {expected}, "
                             f"got {even_spectrum.shape} and {odd_spectrum.shape}")
    _check_frc_inputs((ny, nx), pixel_size_A)
    mask = _default_axis_mask((ny, nx)) if axis_mask_px is None else int(axis_mask_px)
    if mask < 0:
        raise ParameterError(f"axis_mask_px must be >= 0, got {axis_mask_px}")
    # large images: every other row of the spectra (each ring keeps half its coefficients,
    # thousands at the frequencies that matter), at half the cost
    row_step = 2 if min(ny, nx) >= _ROW_STEP_FROM_PX else 1
    curve = _frc_of_half_spectra(even_spectrum, odd_spectrum, (ny, nx),
                                 pixel_size_A=pixel_size_A, axis_mask_px=mask,
                                 row_step=row_step)
    return resolution_from_frc(curve, threshold=HALF_SET_THRESHOLD, criterion=criterion,
                               min_run=min_run), curve


def even_odd_resolution_fast(even_sum: np.ndarray, odd_sum: np.ndarray, *, pixel_size_A: float,
                             axis_mask_px: int | None = None, criterion: Criterion = "last",
                             min_run: int = 3, workers: int | None = None
                             ) -> tuple[FRCResolution, FRCCurve]:
    """Even/odd resolution of two real sums: float32 transforms, axis bands left out, no taper.

    The cheap counterpart of :func:`even_odd_resolution` (see
    :func:`even_odd_resolution_from_spectra` for the edge treatment), for sums that are no
    longer in Fourier space (e.g. after local-motion correction).
    """
    a = np.asarray(even_sum, dtype=np.float32)
    b = np.asarray(odd_sum, dtype=np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise ParameterError(f"FRC needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    ny, nx = a.shape
    if min(ny, nx) < _ROW_STEP_FROM_PX or ny % 2:
        f1 = scipy.fft.rfft2(a, workers=workers)
        f2 = scipy.fft.rfft2(b, workers=workers)
        return even_odd_resolution_from_spectra(f1, f2, shape_yx=a.shape,
                                                pixel_size_A=pixel_size_A,
                                                axis_mask_px=axis_mask_px, criterion=criterion,
                                                min_run=min_run)
    # large images: the FRC reads every other row of the spectra (as from the spectra), and
    # those rows alone are the transform of the image folded in half: half the work and memory
    _check_frc_inputs((ny, nx), pixel_size_A)
    mask = _default_axis_mask((ny, nx)) if axis_mask_px is None else int(axis_mask_px)
    curve = _frc_of_half_spectra(_even_rows_spectrum(a, workers), _even_rows_spectrum(b, workers),
                                 (ny, nx), pixel_size_A=pixel_size_A, axis_mask_px=mask,
                                 row_step=2, rows_taken=True)
    return resolution_from_frc(curve, threshold=HALF_SET_THRESHOLD, criterion=criterion,
                               min_run=min_run), curve


def _even_rows_spectrum(image: np.ndarray, workers: int | None) -> np.ndarray:
    """Rows ``0, 2, 4, ...`` of ``rfft2(image)`` (an even number of rows ``N``): the transform
    of the two halves of the image added, ``X[2k] = sum_{n < N/2} (x[n] + x[n + N/2])
    exp(-2 pi i n k / (N/2))``."""
    half = image.shape[0] // 2
    folded = image[:half] + image[half:]
    return scipy.fft.rfft2(folded, workers=workers, overwrite_x=True)


def frc_against_truth(image: np.ndarray, truth: np.ndarray, *, pixel_size_A: float | None = None,
                      workers: int | None = None) -> tuple[FRCResolution, FRCCurve]:
    """FRC of an image against its noise-free truth, with the C_ref = 0.5 resolution.

    For tests of alignment and summation on synthetic data: e.g. assert that
    ``curve.mean_up_to(0.25) > 0.9`` or that ``resolution.resolution_px < 3``.
    The resolution uses the ``first`` crossing (a truth has no CTF zeros to step over).
    """
    curve = fourier_ring_correlation(image, truth, pixel_size_A=pixel_size_A, workers=workers)
    return resolution_from_frc(curve, threshold=TRUTH_THRESHOLD, criterion="first", min_run=1), curve


def full_set_frc(frc_half: np.ndarray) -> np.ndarray:
    """Spearman-Brown estimate of the full-set FRC from a half-set FRC: ``2 f / (1 + f)``.

    1/7 on the half-set curve corresponds to 0.25 on this one.
    """
    f = np.asarray(frc_half, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * f / (1.0 + f)
