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

from .dose import half_inverse_critical_exposure
from .fourier import irfft2, radial_frequency_sq, shift_ramps

_BLOCK_ELEMENTS = 32768  # complex64 elements per block of rows (256 KiB)

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
    if isinstance(spectra, (list, tuple)) and len(spectra) == 0:
        raise ValueError("no frames to sum")
    inv_2ne = half_inverse_critical_exposure(
        radial_frequency_sq(padded_shape_yx, scale_yx=(pixel_size_A, pixel_size_A)), voltage_kV)
    shape_half = inv_2ne.shape
    rows, cols = shape_half
    # Real weights are kept interleaved (each value twice) so that a complex64 array viewed as
    # float32 pairs is weighted by one float32 multiply (numpy's complex-by-real multiply
    # converts the real operand to complex first, ~3x slower).
    inv_2ne = np.repeat(inv_2ne, 2, axis=1)
    plain = np.zeros(shape_half, np.complex64)
    even = np.zeros(shape_half, np.complex64)
    odd = np.zeros(shape_half, np.complex64)
    all_at_once = isinstance(spectra, (list, tuple))
    # sums of squared weights: per block when all spectra are at hand, else whole arrays
    w2_rows = _BLOCK_ELEMENTS // cols + 1 if all_at_once else rows
    w2_even = np.zeros((max(1, w2_rows), 2 * cols), np.float32)
    w2_odd = np.zeros_like(w2_even)
    dw = np.empty_like(even)
    # Work on blocks of rows that fit in cache, so every pass below runs from cache. With all
    # spectra at hand (a sequence), each block goes through all frames before the next block;
    # dose weights then follow the recursion w_i = w_(i-1) * exp(-(D_i - D_(i-1)) / 2Ne), one
    # multiply per frame for even doses instead of an exp.
    block = max(1, _BLOCK_ELEMENTS // cols)
    w = np.empty((block, 2 * cols), np.float32)
    q = np.empty_like(w)
    w_sq = np.empty_like(w)
    if all_at_once:
        chunks: Iterable[list[np.ndarray]] = [list(spectra)]
    else:
        chunks = ([spec] for spec in spectra)
    n = 0
    for chunk in chunks:
        first = n
        n += len(chunk)
        if n > len(shifts) or n > len(dose_end):
            raise ValueError(f"more spectra than shifts ({len(shifts)}) or doses ({len(dose_end)})")
        for spec in chunk:
            if spec.shape != shape_half or spec.dtype != np.complex64 \
                    or not spec.flags.c_contiguous:
                raise ValueError(f"spectra must be C-contiguous complex64 of shape {shape_half}, "
                                 f"got {spec.dtype} {spec.shape}")
        ramps = [shift_ramps(padded_shape_yx, -shifts[i]) for i in range(first, n)]
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            m = r1 - r0
            a_blk = inv_2ne[r0:r1]
            wb, qb, sq = w[:m], q[:m], w_sq[:m]
            o0, o1 = (0, m) if all_at_once else (r0, r1)  # rows in the w2 arrays
            if all_at_once:
                w2_even[:m] = 0.0
                w2_odd[:m] = 0.0
            q_step = None
            for j, spec in enumerate(chunk):
                i = first + j
                ry, rx = ramps[j]
                f = spec[r0:r1]
                f *= ry[r0:r1, None]
                f *= rx[None, :]
                plain[r0:r1] += f
                step = dose_end[i] - dose_end[i - 1] if j > 0 else None
                if step is None:
                    np.multiply(a_blk, np.float32(-dose_end[i]), out=wb)
                    np.exp(wb, out=wb)
                else:
                    if q_step is None or step != q_step:
                        np.multiply(a_blk, np.float32(-step), out=qb)
                        np.exp(qb, out=qb)
                        q_step = step
                    wb *= qb
                f_real = f.view(np.float32)
                f_real *= wb
                np.multiply(wb, wb, out=sq)
                if i % 2 == 0:
                    even[r0:r1] += f
                    w2_even[o0:o1] += sq
                else:
                    odd[r0:r1] += f
                    w2_odd[o0:o1] += sq
            if all_at_once:
                _normalise_block(even[r0:r1], odd[r0:r1], dw[r0:r1], w2_even[:m], w2_odd[:m], n)
        del chunk
    if n == 0:
        raise ValueError("no frames to sum")
    if n != len(shifts):
        raise ValueError(f"{n} spectra for {len(shifts)} shifts")
    if not all_at_once:
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            _normalise_block(even[r0:r1], odd[r0:r1], dw[r0:r1], w2_even[r0:r1],
                             w2_odd[r0:r1], n)
    del w2_even, w2_odd, inv_2ne
    return SumSpectra(sum=plain, dw=dw, even=even, odd=odd, n_frames=n)


def _normalise_block(even: np.ndarray, odd: np.ndarray, dw: np.ndarray, w2_even: np.ndarray,
                     w2_odd: np.ndarray, n: int) -> None:
    """Normalise one block of rows in place (see module docstring); weights interleaved."""
    n_even, n_odd = (n + 1) // 2, n // 2
    # dw = (even_raw + odd_raw) * sqrt(n / (w2_even + w2_odd)); halves on their own frames
    np.add(even, odd, out=dw)
    dw.view(np.float32)[...] *= np.sqrt(n / (w2_even + w2_odd))
    even.view(np.float32)[...] *= np.sqrt(n_even / w2_even)
    if n_odd:
        odd.view(np.float32)[...] *= np.sqrt(n_odd / w2_odd)


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
