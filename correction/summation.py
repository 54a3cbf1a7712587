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
    frames (frames of unequal dose counted by their dose: :mod:`correction.dose`), so
    ``even`` and ``odd`` are independent half-data maps, each normalised like ``dw`` (each
    holds about half its intensity: ``even + odd`` is ``dw`` up to the weights'
    normalisation). Only three spectra are accumulated (plain,
    unnormalised even and odd); ``dw`` is their combination, so four inverse FFTs finish the
    job.

Shifts follow :mod:`correction.conventions`: frame ``i`` is moved by ``-shifts_yx_px[i]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .dose import half_inverse_critical_exposure, relative_frame_doses
from .fourier import frequency_indices, shift_ramps
from .threads import run_chunks

_BLOCK_ELEMENTS = 32768  # complex64 elements per block of rows (256 KiB)
_GROUP_BYTES = 512 << 20  # spectra made on the fly held at once (summed as a group)

__all__ = ["SumSpectra", "SumImages", "frame_mean", "pad_frame", "accumulate_sums",
           "sums_to_images"]


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
    """The four real-space sums, float32, shape (ny, nx) (possibly views of wider arrays:
    ``np.ascontiguousarray`` where contiguity matters)."""

    sum: np.ndarray
    dw: np.ndarray
    even: np.ndarray
    odd: np.ndarray


_THREADED_PIXELS = 1 << 20  # images from this size have their rows summed in threads


def frame_mean(frame: np.ndarray, workers: int = 1) -> float:
    """Mean of a 2-D image (the padding value of a frame): each row summed in float32 (numpy's
    pairwise sum: about 1e-7 relative for rows of 10^4 pixels) and the row sums in float64,
    rows split over ``workers`` threads. Equal to ``frame.mean(dtype=np.float64)`` to about
    1e-7 relative and faster (no float64 copy of each block): a K3 frame on one thread 8.1
    against 19.6 ms here (``benchmarks/bench_io.py``). Used for the sum's mean (the padding value of every frame when hot
    pixels are detected) and for each frame's mean when they are not."""
    frame = np.asarray(frame)
    ny = int(frame.shape[0])
    if frame.size == 0:
        return float("nan")
    row_sums = np.empty(ny, np.float64)

    def rows(y0: int, y1: int) -> None:
        row_sums[y0:y1] = np.add.reduce(frame[y0:y1], axis=1, dtype=np.float32)

    run_chunks(rows, ny, workers if frame.size >= _THREADED_PIXELS else 1)
    return float(row_sums.sum()) / frame.size


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
    value = frame_mean(frame) if fill is None else float(fill)
    out[:ny, nx:] = value
    out[ny:, :] = value
    return out


def accumulate_sums(spectra: Iterable[np.ndarray], shifts_yx_px: np.ndarray, *,
                    padded_shape_yx: tuple[int, int], dose_end_e_A2: np.ndarray,
                    pixel_size_A: float, voltage_kV: float = 300.0,
                    workers: int = 1, group_bytes: int | None = None,
                    frame_dose_e_A2: np.ndarray | None = None) -> SumSpectra:
    """Shift, dose-weight and sum frames given as half spectra.

    Parameters
    ----------
    spectra : sequence or iterable of ndarray, each shape (py, px // 2 + 1), complex64
        The frames' spectra on the padded output grid, in frame order. They are consumed: a
        list or tuple (all spectra at hand) is summed block of rows by block of rows, and the
        memory of its first four spectra is reused for the four sums; an iterator (spectra
        made on the fly) is read in groups of frames that fit ``group_bytes``, each group
        summed block by block into running sums. A caller that keeps the spectra must pass
        copies.
    shifts_yx_px : ndarray, shape (n, 2)
        Displacement of the specimen per frame (:mod:`correction.conventions`), output pixels.
    padded_shape_yx : (int, int)
        Real-space shape of the padded grid.
    dose_end_e_A2 : ndarray, shape (n,)
        Accumulated dose at the end of each summed frame plus pre-exposure (e/Å²).
    pixel_size_A : float
        Output pixel size (Å), to put frequencies in 1/Å.
    voltage_kV : float
    workers : int
        Threads for the blocks of rows (:mod:`correction.threads`).
    group_bytes : int, optional
        Spectra held at once when ``spectra`` is an iterator (default ``_GROUP_BYTES``; at
        least one spectrum).
    frame_dose_e_A2 : ndarray, shape (n,), optional
        Each summed frame's own dose (e/Å²): frames of unequal dose count by it in the
        normalisation (:mod:`correction.dose`); default equal.

    Returns
    -------
    SumSpectra
    """
    shifts = np.asarray(shifts_yx_px, dtype=np.float64)
    dose_end = np.asarray(dose_end_e_A2, dtype=np.float64)
    grid = _SumGrid(padded_shape_yx, pixel_size_A, voltage_kV,
                    relative_frame_doses(frame_dose_e_A2, len(shifts)))
    if isinstance(spectra, (list, tuple)):
        specs = list(spectra)
        if len(specs) != len(shifts) or len(specs) > len(dose_end):
            _count_error(len(specs), shifts, dose_end)
        return _accumulate_blocks(specs, shifts, dose_end, grid, workers=workers)
    return _accumulate_groups(iter(spectra), shifts, dose_end, grid, workers,
                              _GROUP_BYTES if group_bytes is None else int(group_bytes))


def _count_error(n: int, shifts: np.ndarray, dose_end: np.ndarray) -> None:
    if n == 0:
        raise ValueError("no frames to sum")
    if n > len(shifts) or n > len(dose_end):
        raise ValueError(f"more spectra than shifts ({len(shifts)}) or doses ({len(dose_end)})")
    raise ValueError(f"{n} spectra for {len(shifts)} shifts")


def _check_spectrum(spec: np.ndarray, shape_half: tuple[int, int]) -> None:
    if spec.shape != shape_half or spec.dtype != np.complex64 or not spec.flags.c_contiguous:
        raise ValueError(f"spectra must be C-contiguous complex64 of shape {shape_half}, "
                         f"got {spec.dtype} {spec.shape}")


def _interleave(half: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write each value of ``half`` (m, c) twice into ``out`` (m, 2c): real weights that scale
    a complex64 array viewed as float32 pairs with one float32 multiply (numpy's
    complex-by-real multiply converts the real operand to complex first, ~3x slower)."""
    pairs = out.reshape(half.shape + (2,))
    pairs[..., 0] = half
    pairs[..., 1] = half
    return out


@dataclass(frozen=True, slots=True)
class _SumGrid:
    """The padded grid's geometry: its shape, half-spectrum shape, squared frequencies (1/Å²)
    and the blocks of rows (none straddles the first row of negative ``ky``); and the frames'
    relative doses (:func:`correction.dose.relative_frame_doses`) for the normalisation."""

    padded_yx: tuple[int, int]
    pixel_size_A: float
    voltage_kV: float
    relative_dose: np.ndarray

    @property
    def half(self) -> tuple[int, int]:
        return int(self.padded_yx[0]), int(self.padded_yx[1]) // 2 + 1

    def blocks(self) -> tuple[int, list[int], list[int]]:
        """(rows per block, block starts, block ends)."""
        rows, cols = self.half
        block = max(1, min(rows, _BLOCK_ELEMENTS // cols))
        split = (rows + 1) // 2
        starts = [r for lo, hi in ((0, split), (split, rows)) for r in range(lo, hi, block)]
        ends = [min(r + block, split if r < split else rows) for r in starts]
        return block, starts, ends


@dataclass(frozen=True, slots=True)
class _Running:
    """Sums carried from one group of frames to the next (unnormalised, whole grid): plain,
    dose-weighted even and odd, and the squared weights of the even and odd frames."""

    plain: np.ndarray
    even: np.ndarray
    odd: np.ndarray
    w2_even: np.ndarray
    w2_odd: np.ndarray

    @classmethod
    def make(cls, shape_half: tuple[int, int]) -> _Running:
        c = [np.empty(shape_half, np.complex64) for _ in range(3)]
        return cls(*c, *(np.empty(shape_half, np.float32) for _ in range(2)))


@dataclass(frozen=True, slots=True)
class _BlockScratch:
    """One thread's buffers for a block of rows of :func:`_accumulate_blocks`."""

    acc_plain: np.ndarray  # (block, cols) complex64: plain sum
    acc_even: np.ndarray   # unnormalised dose-weighted sums of even and odd frames
    acc_odd: np.ndarray
    f: np.ndarray          # the current frame, shifted (and weighted)
    a: np.ndarray          # (block, cols) float32: 1 / (2 Ne)
    tmp: np.ndarray
    w: np.ndarray          # (block, 2 cols) float32: interleaved weights of the current frame
    q: np.ndarray          # the weight step from the previous frame
    w_sq: np.ndarray
    w2_even: np.ndarray    # sums of squared weights of the even and odd frames
    w2_odd: np.ndarray

    @classmethod
    def make(cls, block: int, cols: int) -> _BlockScratch:
        c = [np.empty((block, cols), np.complex64) for _ in range(4)]
        r = [np.empty((block, cols), np.float32) for _ in range(2)]
        w = [np.empty((block, 2 * cols), np.float32) for _ in range(5)]
        return cls(*c, *r, *w)


def _accumulate_groups(spectra: Iterator[np.ndarray], shifts: np.ndarray, dose_end: np.ndarray,
                       grid: _SumGrid, workers: int, group_bytes: int) -> SumSpectra:
    """Spectra made on the fly: groups of frames summed block by block into running sums."""
    shape_half = grid.half
    per_group = max(1, group_bytes // (shape_half[0] * shape_half[1] * 8))
    running = None
    start = 0
    while True:
        group = list(itertools.islice(spectra, per_group))
        if not group:
            _count_error(start, shifts, dose_end)
        end = start + len(group)
        if end > len(shifts) or end > len(dose_end):
            _count_error(end, shifts, dose_end)
        final = end == len(shifts)
        if final and next(spectra, None) is not None:
            _count_error(end + 1, shifts, dose_end)
        if running is None and not final:
            running = _Running.make(shape_half)
        result = _accumulate_blocks(group, shifts, dose_end, grid, workers=workers,
                                    start=start, running=running, final=final)
        if final:
            return result
        start = end


def _accumulate_blocks(specs: list[np.ndarray], shifts: np.ndarray, dose_end: np.ndarray,
                       grid: _SumGrid, *, workers: int = 1, start: int = 0,
                       running: _Running | None = None, final: bool = True
                       ) -> SumSpectra | None:
    """Frames ``start .. start + len(specs)`` at hand: one block of rows at a time through
    them, in cache.

    Per block and frame the spectrum is read once (never written): multiplied by a per-frame
    tile of the separable phase ramp times a scalar for the block's first row (the row ramp of
    consecutive frequencies is geometric), accumulated plain, weighted and accumulated even or
    odd; dose weights follow the recursion ``w_i = w_(i-1) * exp(-(D_i - D_(i-1)) / 2Ne)``, one
    multiply per frame for even doses instead of an exp, from ``w_0 = 1``: weights relative to
    the first frame, whose common factor ``exp(-D_0 / 2Ne)`` cancels in the normalisation and
    would underflow float32 at high pre-exposure (:mod:`correction.dose`). A group after the
    first starts from the running sums and from ``w_start = exp(-(D_start - D_0) / 2Ne)``; a
    group that is not the last stores the block's sums back into ``running``. The last one
    normalises them and writes them into memory at hand (the running sums and its first
    spectrum, or its first four spectra, or new arrays) and returns the four sums.
    """
    n = len(specs)
    py, px = grid.padded_yx
    shape_half = grid.half
    for spec in specs:
        _check_spectrum(spec, shape_half)
    rows, cols = shape_half
    block, starts, ends = grid.blocks()
    ky = frequency_indices(py)
    fy2 = (ky / (py * grid.pixel_size_A)) ** 2
    fx2 = ((frequency_indices(px, half=True) / (px * grid.pixel_size_A)) ** 2
           ).astype(np.float32)
    own = shifts[start:start + n]
    # row ramp of frame i at row r0 + t (t < block, no Nyquist jump inside a block):
    # ramp_y(ky(r0)) * ramp_y(t); the tiles hold ramp_y(t) * ramp_x, one per frame
    tiles = np.empty((n, block, cols), np.complex64)
    for i in range(n):
        ry, rx = shift_ramps(grid.padded_yx, -own[i])
        np.multiply(ry[:block, None], rx[None, :], out=tiles[i])
    row_phase = 2.0 * np.pi * own[:, 0] / py  # ramp_y(ky) = exp(1j * ky * row_phase)
    total = start + n
    outputs = None
    if final and running is not None:  # each block reads its rows before writing them
        outputs = [running.plain, specs[0], running.even, running.odd]
    elif final:
        outputs = specs[:4] if n >= 4 else [np.empty(shape_half, np.complex64)
                                            for _ in range(4)]
    rel = grid.relative_dose
    unequal = bool(np.any(rel[:total] != 1.0))
    # sum of the frames' relative doses: the frame counts for frames of equal dose
    n_all, n_even, n_odd = (float(rel[:total].sum()), float(rel[:total:2].sum()),
                            float(rel[1:total:2].sum()))

    def blocks(lo: int, hi: int) -> None:
        """Blocks ``lo:hi`` (each thread its own scratch; blocks write disjoint rows)."""
        scratch = _BlockScratch.make(block, cols)
        for r0, r1 in zip(starts[lo:hi], ends[lo:hi]):
            _sum_block(r0, r1, scratch)

    def _sum_block(r0: int, r1: int, sc: _BlockScratch) -> None:
        acc_plain, acc_even, acc_odd, f = sc.acc_plain, sc.acc_even, sc.acc_odd, sc.f
        a, tmp, w, q, w_sq, w2_even, w2_odd = sc.a, sc.tmp, sc.w, sc.q, sc.w_sq, sc.w2_even, \
            sc.w2_odd
        m = r1 - r0
        ab, tb, wb, qb, sq = a[:m], tmp[:m], w[:m], q[:m], w_sq[:m]
        np.add(fy2[r0:r1, None].astype(np.float32), fx2[None, :], out=ab)
        half_inverse_critical_exposure(ab, grid.voltage_kV)
        if start == 0:
            wb.fill(1.0)  # relative to frame 0: w_0 / w_0
        else:
            np.multiply(ab, -np.float32(dose_end[start] - dose_end[0]), out=tb)
            _interleave(np.exp(tb, out=tb), wb)
        q_step = None
        pb, eb, ob, fb = acc_plain[:m], acc_even[:m], acc_odd[:m], f[:m]
        e2, o2 = w2_even[:m], w2_odd[:m]
        if start == 0:
            eb.fill(0)
            ob.fill(0)
            e2.fill(0)
            o2.fill(0)
        else:  # the sums of the groups before
            pb[...] = running.plain[r0:r1]
            eb[...] = running.even[r0:r1]
            ob[...] = running.odd[r0:r1]
            _interleave(running.w2_even[r0:r1], e2)  # stored once per pair
            _interleave(running.w2_odd[r0:r1], o2)
        phase = np.exp(1j * ky[r0] * row_phase).astype(np.complex64)
        for i, spec in enumerate(specs):
            frame = start + i
            np.multiply(spec[r0:r1], tiles[i, :m], out=fb)
            fb *= phase[i]
            if frame == 0:
                pb[...] = fb
            else:
                pb += fb
            if i > 0:
                # steps compared as the float32 factor they enter as (even doses whose
                # float64 differences vary in the last bit still take one exp per block)
                step = np.float32(dose_end[frame] - dose_end[frame - 1])
                if q_step is None or step != q_step:
                    np.multiply(ab, -step, out=tb)
                    _interleave(np.exp(tb, out=tb), qb)
                    q_step = step
                wb *= qb
            fb.view(np.float32)[...] *= wb
            np.multiply(wb, wb, out=sq)
            if unequal and rel[frame] != 1.0:  # noise power in proportion to the dose
                sq *= np.float32(rel[frame])
            if frame % 2 == 0:
                eb += fb
                e2 += sq
            else:
                ob += fb
                o2 += sq
        if not final:
            running.plain[r0:r1] = pb
            running.even[r0:r1] = eb
            running.odd[r0:r1] = ob
            running.w2_even[r0:r1] = e2[:, ::2]
            running.w2_odd[r0:r1] = o2[:, ::2]
            return
        plain_out, dw_out, even_out, odd_out = outputs
        plain_out[r0:r1] = pb
        # dw = (even + odd) * sqrt(n / (w2_even + w2_odd)); halves on their own frames
        np.add(e2, o2, out=sq)
        np.divide(np.float32(n_all), sq, out=sq)
        np.sqrt(sq, out=sq)
        dw_rows = dw_out[r0:r1]
        np.add(eb, ob, out=dw_rows)
        dw_rows.view(np.float32)[...] *= sq
        np.divide(np.float32(n_even), e2, out=e2)
        np.sqrt(e2, out=e2)
        np.multiply(eb.view(np.float32), e2, out=even_out[r0:r1].view(np.float32))
        if n_odd:
            np.divide(np.float32(n_odd), o2, out=o2)
            np.sqrt(o2, out=o2)
            np.multiply(ob.view(np.float32), o2, out=odd_out[r0:r1].view(np.float32))
        else:
            odd_out[r0:r1] = 0

    run_chunks(blocks, len(starts), workers)
    specs.clear()
    if not final:
        return None
    plain_out, dw_out, even_out, odd_out = outputs
    return SumSpectra(sum=plain_out, dw=dw_out, even=even_out, odd=odd_out, n_frames=total)


def sums_to_images(sums: SumSpectra, *, padded_shape_yx: tuple[int, int],
                   shape_yx: tuple[int, int], workers: int = -1) -> SumImages:
    """Four inverse FFTs and a crop to the frame region ``[:ny, :nx]`` (float32 out; the crop
    is a view whose rows are contiguous, not a copy).

    The spectra in ``sums`` are overwritten (scipy may use them as work space).
    """
    ny, nx = shape_yx
    py, px = padded_shape_yx

    def one(spec: np.ndarray) -> np.ndarray:
        # inverse along y in place, then along x only for the ny rows kept (the padding rows
        # are never transformed back); same scaling as irfft2
        cols = scipy.fft.ifft(spec, n=py, axis=0, workers=workers, overwrite_x=True)
        img = scipy.fft.irfft(cols[:ny], n=px, axis=1, workers=workers, overwrite_x=True)
        return img[:, :nx]  # a view: rows written from it in blocks (correction.write)

    return SumImages(sum=one(sums.sum), dw=one(sums.dw), even=one(sums.even), odd=one(sums.odd))
