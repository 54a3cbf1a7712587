"""Shifted, weighted sums of frames in Fourier space: plain, dose-weighted, even and odd.

Frames arrive as half spectra of frames that were padded in real space (:func:`pad_frame`):
the frame sits at the origin of a larger grid whose extra rows and columns hold the frame's
mean. A Fourier shift is circular on the padded grid, so content leaving one edge of the frame
travels into the padding and never reaches the opposite edge of the frame as long as no shift
exceeds the padding (``padded - frame`` pixels on each axis); pixels near an edge that a frame
does not cover receive that frame's mean, so there is no step. After the inverse FFT the frame
region is cropped out.

Sums
    ``sum``  plain sum of the aligned frames;
    ``even`` dose-weighted sum of frames 0, 2, 4, ... (counted among the frames summed, i.e.
    after ``throw_frames``); ``odd`` of frames 1, 3, 5, ...; ``dw`` dose-weighted sum of all.
    Each dose-weighted sum is normalised per frequency by ``sqrt(n / sum w^2)`` over its own
    frames (:mod:`correction.dose`), so ``even`` and ``odd`` are independent half-data maps
    on the same scale as ``dw``. Only three spectra are accumulated (plain, unnormalised even
    and odd); ``dw`` is their combination, so four inverse FFTs finish the job.

Shifts follow :mod:`correction.conventions`: frame ``i`` is moved by ``-shifts_yx_px[i]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .dose import critical_exposure_e_A2
from .fourier import irfft2, radial_frequency_sq, shift_ramps

__all__ = ["SumSpectra", "SumImages", "pad_frame", "accumulate_sums", "sums_to_images"]


@dataclass(frozen=True, slots=True)
class SumSpectra:
    """Half spectra (complex64, on the padded grid) of the four sums; see module docstring."""

    sum: np.ndarray
    dw: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    n_frames: int


@dataclass(frozen=True, slots=True)
class SumImages:
    """The four real-space sums, float32, shape (ny, nx)."""

    sum: np.ndarray
    dw: np.ndarray
    even: np.ndarray
    odd: np.ndarray


def pad_frame(frame: np.ndarray, padded_shape_yx: tuple[int, int], *,
              out: np.ndarray | None = None, fill: float | None = None) -> np.ndarray:
    """Place ``frame`` at the origin of a larger float32 grid filled with its mean.

    Parameters
    ----------
    frame : ndarray, shape (ny, nx)
    padded_shape_yx : (int, int)
        ``(py, px)`` with ``py >= ny``, ``px >= nx``.
    out : ndarray, shape (py, px), float32, optional
        Buffer to fill (reused frame after frame).
    fill : float, optional
        Value of the padding; default the frame's mean.
    """
    ny, nx = frame.shape
    py, px = padded_shape_yx
    if out is None:
        out = np.empty((py, px), dtype=np.float32)
    out[:ny, :nx] = frame
    value = float(frame.mean(dtype=np.float64)) if fill is None else float(fill)
    out[:ny, nx:] = value
    out[ny:, :] = value
    return out


def accumulate_sums(spectra: Iterable[np.ndarray], shifts_yx_px: np.ndarray, *,
                    padded_shape_yx: tuple[int, int], dose_end_e_A2: np.ndarray,
                    pixel_size_A: float, voltage_kV: float = 300.0) -> SumSpectra:
    """Shift, dose-weight and sum frames given as half spectra.

    Parameters
    ----------
    spectra : iterable of ndarray, each shape (py, px // 2 + 1), complex64
        The frames' spectra on the padded output grid, in frame order. Each is modified in
        place (consumed), so a caller that keeps them should pass copies.
    shifts_yx_px : ndarray, shape (n, 2)
        Displacement of the specimen per frame (:mod:`correction.conventions`), output pixels.
    padded_shape_yx : (int, int)
        Real-space shape of the padded grid.
    dose_end_e_A2 : ndarray, shape (n,)
        Accumulated dose at the end of each summed frame plus pre-exposure (e/Å²).
    pixel_size_A : float
        Output pixel size (Å), to put frequencies in 1/Å.
    voltage_kV : float

    Returns
    -------
    SumSpectra
    """
    shifts = np.asarray(shifts_yx_px, dtype=np.float64)
    dose_end = np.asarray(dose_end_e_A2, dtype=np.float64)
    k = np.sqrt(radial_frequency_sq(padded_shape_yx, scale_yx=(pixel_size_A, pixel_size_A)))
    with np.errstate(divide="ignore"):
        inv_2ne = (0.5 / critical_exposure_e_A2(k, voltage_kV)).astype(np.float32)
    del k
    plain = even = odd = None
    w2_even = np.zeros(inv_2ne.shape, np.float32)
    w2_odd = np.zeros(inv_2ne.shape, np.float32)
    w = np.empty_like(inv_2ne)
    n = 0
    for i, spec in enumerate(spectra):
        if i >= len(shifts) or i >= len(dose_end):
            raise ValueError(f"more spectra than shifts ({len(shifts)}) or doses ({len(dose_end)})")
        ry, rx = shift_ramps(padded_shape_yx, -shifts[i])
        spec *= ry[:, None]
        spec *= rx[None, :]
        if plain is None:
            plain = spec.copy()
            even = np.zeros_like(spec)
            odd = np.zeros_like(spec)
        else:
            plain += spec
        np.multiply(inv_2ne, np.float32(-dose_end[i]), out=w)
        np.exp(w, out=w)
        spec *= w
        if i % 2 == 0:
            even += spec
            w2_even += w * w
        else:
            odd += spec
            w2_odd += w * w
        n += 1
    if n == 0:
        raise ValueError("no frames to sum")
    if n != len(shifts):
        raise ValueError(f"{n} spectra for {len(shifts)} shifts")
    n_even, n_odd = (n + 1) // 2, n // 2
    # dw = (even_raw + odd_raw) * sqrt(n / (w2_even + w2_odd)); halves on their own frames
    dw = even + odd
    total_w2 = w2_even + w2_odd
    np.divide(n, total_w2, out=total_w2)
    np.sqrt(total_w2, out=total_w2)
    dw *= total_w2
    del total_w2
    np.divide(n_even, w2_even, out=w2_even)
    np.sqrt(w2_even, out=w2_even)
    even *= w2_even
    del w2_even
    if n_odd:
        np.divide(n_odd, w2_odd, out=w2_odd)
        np.sqrt(w2_odd, out=w2_odd)
        odd *= w2_odd
    del w2_odd
    return SumSpectra(sum=plain, dw=dw, even=even, odd=odd, n_frames=n)


def sums_to_images(sums: SumSpectra, *, padded_shape_yx: tuple[int, int],
                   shape_yx: tuple[int, int], workers: int = -1) -> SumImages:
    """Four inverse FFTs and a crop to the frame region ``[:ny, :nx]`` (float32 out).

    The spectra in ``sums`` are overwritten (scipy may use them as work space).
    """
    ny, nx = shape_yx

    def one(spec: np.ndarray) -> np.ndarray:
        img = irfft2(spec, padded_shape_yx, workers=workers, overwrite_x=True)
        return np.ascontiguousarray(img[:ny, :nx], dtype=np.float32)

    return SumImages(sum=one(sums.sum), dw=one(sums.dw), even=one(sums.even), odd=one(sums.odd))
