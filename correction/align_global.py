"""Whole-frame sub-pixel alignment of a stack of Fourier-transformed frames.

The frames are transformed once by the caller (usually Fourier-cropped to about
``AlignParams.align_size_px``); everything here works on their half spectra, so no frame is
ever re-sampled in real space. Each iteration correlates every frame (or group of consecutive
frames) with the sum of all *other* frames shifted by the current estimates (leave-one-out
reference), under a Gaussian B-factor low-pass that is lowered from iteration to iteration. The
first iteration searches the whole window ``max_shift_px``; later ones evaluate the correlation
only on a 5 x 5 neighbourhood of the expected peak by a direct (matrix) DFT. From the second
iteration on, the B-factor low-pass is replaced by a matched filter measured on the data: the
per-frame signal power ``S(k)`` and noise power ``N(k)`` are estimated in rings of spatial
frequency from the aligned stack (``S`` from the cross power between frames, ``|sum|^2 - sum
|frame|^2``), and each frequency is weighted by ``S / (n S + N)``, the weight that minimises the
variance of a leave-one-out correlation shift for ``n`` frames; it is measured again after every
iteration that still moved a shift by more than 0.05 grid pixels, so that it follows the
alignment it steers. A fixed B-factor is right only
for the content it was chosen for: low-contrast counted exposures need a much stronger low-pass
than high-contrast synthetic ones, and the measured weight adapts to both. The sub-pixel peak
is a 3-point parabola per axis. Because each iteration re-centres the frames on the current
estimate, the residual peak converges to zero offset, where the parabola's interpolation bias
vanishes; iteration stops when no shift changed by more than ``tolerance_px``.

The central cross of every cross-power spectrum (the row ``ky = 0`` and the column ``kx = 0``)
is left out, as Unblur does: stripes along rows or columns that are the same in every frame
(per-column gain, a frame's read-out pattern, padding edges) put their power there and would
hold the shifts at zero; the cross holds a negligible part of the specimen's signal
(``benchmarks/bench_central_cross.py``: 1024^2 x 10 frames, 3 % contrast, 2 e/px/frame, a
3 % per-column pattern left uncorrected, 3 seeds: 1.37 px RMS error with the cross, 0.49 px
without it, against 0.48 px with the gain applied).

Shifts follow :mod:`correction.conventions`: the displacement of the specimen in a frame
relative to the aligned sum, ``[dy, dx]``, here in pixels of the grid of the given spectra.
The common offset is removed so that the shifts average to zero over the frames: the aligned
sum is placed at the mean position of the specimen during the movie.

References
----------
Li, X. et al. (2013) Electron counting and beam-induced motion correction of
macromolecules by cryo-EM. Nat. Methods 10, 584-590.
Zheng, S. Q. et al. (2017) MotionCor2. Nat. Methods 14, 331-332.
Guizar-Sicairos, M., Thurman, S. T. & Fienup, J. R. (2008) Efficient subpixel image
registration algorithms. Opt. Lett. 33, 156-158.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

from .fourier import (bfactor_filter_1d, frequency_indices, radial_frequency_sq,
                      shift_ramps, shift_ramps_stack)
from .params import AlignParams
from .threads import run_chunks

__all__ = ["FittedPath", "GlobalAlignment", "alignment_working_bytes", "dark_frames",
           "estimate_shifts", "frame_groups", "interpolate_group_shifts",
           "leave_one_out_oracle"]

# B-factor schedule: B_i = B_0 * max(_B_FLOOR, _B_DECAY ** i) for iteration i.
_B_DECAY = 0.6
_B_FLOOR = 0.25
_LOCAL_RADIUS = 2  # half-width (grid px) of the local correlation window after iteration 0
#: first-search peaks far from their neighbours' path count as stray below noise + this (sigma)
_STRAY_MARGIN_SIGMAS = 1.0
_STRAY_NEIGHBOURS = 2  # groups on each side that place a group's expected peak
_RING_WIDTH_PX = 2.0  # width of the frequency rings of the matched filter (grid frequency px)
_MIN_RINGS = 16  # below this many rings (tiny grids) the B-factor schedule is kept
#: the matched filter is measured again after each iteration that moved a shift by more (grid px)
_FILTER_SETTLED_PX = 0.05
_MAPS_BATCH_BYTES = 64 << 20  # spectra per batched inverse FFT of full correlation maps
#: a search window of at most this many grid px (e.g. the patches: 12 output px / 4) is searched
#: in the first iteration by the local DFT too, on offsets one beyond the window
_FIRST_LOCAL_MAX_PX = 5
#: a frame with less than this fraction of the frames' upper quartile of power above half
#: Nyquist has no counts to align (a beam blanked before the last frame, a late shutter)
_DARK_POWER_FRACTION = 0.02


@dataclass(frozen=True, slots=True)
class FittedPath:
    """The path the frames were shifted along instead of their measured shifts
    (:func:`correction.path_fit.with_fitted_path`).

    Attributes
    ----------
    degree : int
        Degree of the polynomial in frame index (1 or 2).
    scatter_px : float
        RMS length of (measured - its fitted path) over the frames with counts, output
        pixels: why a path was fitted (above :data:`NOISY_PATH_PX`).
    measured_shifts_yx_px : ndarray, shape (n_frames, 2)
        The shifts as the whole-frame alignment measured them, output pixels, mean zero.
    realigned_shifts_yx_px : ndarray, shape (n_frames, 2), or None
        The shifts of the second alignment, started from the first path, to which the path
        used was fitted (output pixels, mean zero); None: fitted to the measured ones.
    """

    degree: int
    scatter_px: float
    measured_shifts_yx_px: np.ndarray
    realigned_shifts_yx_px: np.ndarray | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready, shifts as ``[dx, dy]`` per frame, as the record's ``global_shifts_px``."""
        def xy(shifts: np.ndarray) -> list:
            return np.round(shifts[:, ::-1], 3).tolist()

        return {"degree": self.degree, "scatter_px": round(float(self.scatter_px), 3),
                "measured_shifts_px": xy(self.measured_shifts_yx_px),
                **({"realigned_shifts_px": xy(self.realigned_shifts_yx_px)}
                   if self.realigned_shifts_yx_px is not None else {})}


@dataclass(frozen=True, slots=True)
class GlobalAlignment:
    """Result of :func:`estimate_shifts`.

    Attributes
    ----------
    shifts_yx_px : ndarray, shape (n_frames, 2), float64
        Displacement ``[dy, dx]`` of the specimen in each frame relative to the aligned sum,
        in pixels of the grid of the spectra given (see :mod:`correction.conventions`);
        averages to zero over the frames.
    peak_quality : ndarray, shape (n_frames,), float64
        Normalised cross-correlation coefficient (-1..1) between each frame's group and its
        leave-one-out reference at the found shift, under the last B-factor (DC excluded).
        Frames of one group share a value. NaN when fewer than two groups exist.
    iterations : int
        Iterations run.
    converged : bool
        True when the last update was below the tolerance.
    last_update_px : float
        Largest change of a group shift in the last iteration (grid pixels).
    peak_significance : float
        Median over the groups of the first whole-window search's peak, in standard deviations
        of its correlation map above the map's mean; NaN when no such search ran (a small
        window, initial shifts).
    noise_peak_significance : float
        What the highest of the window's values reaches on noise alone,
        ``sqrt(2 ln(window pixels)) + 0.5`` (the bound for a Gaussian maximum, plus a margin).
    supported : bool
        False when the peaks of the first search were noise (too little signal: low-dose
        tilts, thick ice; :func:`_peaks_are_noise`): the shifts are then left at their initial
        values (zero) rather than following the noise, which scatters frames by tens of
        pixels; also when all frames are in one group (``--group`` of the frame count or
        more): nothing to align against.
    note : str
        Why, when not supported for a reason other than the peaks (one group); else "".
    dark_frames : tuple of int
        Frames (indices into the spectra given) that hold no counts to align
        (:func:`dark_frames`): not aligned, their shifts interpolated between the frames
        around them (held beyond the first and last), their ``peak_quality`` NaN.
    fitted_path : FittedPath or None
        Set when ``shifts_yx_px`` are a smooth path in time fitted to shifts that followed
        noise (:func:`correction.path_fit.with_fitted_path`, which the pipeline applies to
        the whole-frame alignment); None: the shifts as measured.
    """

    shifts_yx_px: np.ndarray
    peak_quality: np.ndarray
    iterations: int
    converged: bool
    last_update_px: float
    peak_significance: float = float("nan")
    noise_peak_significance: float = float("nan")
    supported: bool = True
    note: str = ""
    dark_frames: tuple[int, ...] = ()
    fitted_path: FittedPath | None = None


def alignment_working_bytes(spectra_bytes: int) -> int:
    """Memory :func:`estimate_shifts` allocates beyond its input spectra of ``spectra_bytes``:
    the aligned stack (which the cross spectra of one-frame groups overwrite) and two batches
    of full correlation maps, each at most the spectra's size (bytes)."""
    return int(spectra_bytes) + 2 * min(_MAPS_BATCH_BYTES, int(spectra_bytes))


def frame_groups(n_frames: int, group_frames: int) -> list[np.ndarray]:
    """Split frame indices ``0..n_frames-1`` into consecutive groups of about ``group_frames``.

    Groups differ in size by at most one frame (``numpy.array_split``); with
    ``group_frames=1`` every frame is its own group.
    """
    n_groups = max(1, int(np.ceil(n_frames / max(1, group_frames))))
    return [g for g in np.array_split(np.arange(n_frames), n_groups) if len(g)]


def interpolate_group_shifts(groups: list[np.ndarray], group_shifts_yx_px: np.ndarray,
                             n_frames: int) -> np.ndarray:
    """Per-frame shifts from group shifts, linear in frame index between group centres.

    Each group's shift is taken to be the shift at its mean frame index; frames before the
    first or after the last centre are extrapolated linearly from the nearest two centres
    (constant when there is one group).

    Returns
    -------
    ndarray, shape (n_frames, 2), float64
    """
    group_shifts_yx_px = np.asarray(group_shifts_yx_px, dtype=np.float64)
    if len(groups) == n_frames:
        out = np.empty((n_frames, 2))
        for g, s in zip(groups, group_shifts_yx_px):
            out[g[0]] = s
        return out
    centres = np.array([g.mean() for g in groups])
    t = np.arange(n_frames, dtype=np.float64)
    out = np.empty((n_frames, 2))
    if len(groups) == 1:
        out[:] = group_shifts_yx_px[0]
        return out
    for axis in range(2):
        v = group_shifts_yx_px[:, axis]
        inner = np.interp(t, centres, v)
        lo = v[0] + (t - centres[0]) * (v[1] - v[0]) / (centres[1] - centres[0])
        hi = v[-1] + (t - centres[-1]) * (v[-1] - v[-2]) / (centres[-1] - centres[-2])
        out[:, axis] = np.where(t < centres[0], lo, np.where(t > centres[-1], hi, inner))
    return out


def _parabola_offset(minus: float, centre: float, plus: float) -> float:
    """Vertex of the parabola through (-1, minus), (0, centre), (1, plus), clamped to +-0.5."""
    denom = minus - 2.0 * centre + plus
    if denom >= 0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / denom, -0.5, 0.5))


def _window_extent(shape: tuple[int, int], window_px: float) -> tuple[int, int]:
    """Half-widths ``(wy, wx)`` (grid px) of the searched window of a full map."""
    ny, nx = shape
    return (int(min(np.floor(window_px), ny // 2 - 1)),
            int(min(np.floor(window_px), nx // 2 - 1)))


def _window_maps(corr: np.ndarray, shape: tuple[int, int], window_px: float,
                 workers: int) -> np.ndarray:
    """Correlation maps of half spectra ``corr`` (modified) on the searched window and a
    border of one: ``out[j, wy + 1 + dy, wx + 1 + dx]`` is map ``j`` at offset ``(dy, dx)``,
    ``|dy| <= wy + 1``, ``|dx| <= wx + 1``.

    The inverse along y runs on every column; the inverse along x only on the window's rows
    (the same values as a whole ``irfft2``; K3 x 40 on the 1024-px grid: 0.13 -> 0.07 s)."""
    ny, nx = shape
    wy, wx = _window_extent(shape, window_px)
    cols = scipy.fft.ifft(corr, n=ny, axis=-2, workers=workers, overwrite_x=True)
    rows = scipy.fft.irfft(cols[:, np.arange(-wy - 1, wy + 2) % ny], n=nx, axis=-1,
                           workers=workers)
    return rows[:, :, np.arange(-wx - 1, wx + 2) % nx]


def _peak_significance(block: np.ndarray) -> float:
    """The maximum of a window map (inside its border, :func:`_window_maps`) in standard
    deviations above the map's mean."""
    inner = block[1:-1, 1:-1]
    spread = float(inner.std())
    return float((inner.max() - inner.mean()) / spread) if spread > 0 else 0.0


def noise_peak_significance(window_px: int) -> float:
    """What the maximum of a correlation map over ``window_px`` pixels reaches on noise:
    ``sqrt(2 ln N) + 0.5`` standard deviations (neighbouring values of a filtered map are
    correlated, so fewer independent ones: the Gaussian bound is on the safe side). Measured on
    pure-noise movies (768^2 x 10, ±80 px window, 26,000 pixels): medians 3.5-4.1, at most 4.7,
    against 5.0 here; a movie aligned to 1.8 px had 5.6, to 0.6 px 8.9, at 1 e/px 14.7."""
    return float(np.sqrt(2.0 * np.log(max(2, int(window_px))))) + 0.5


def _peaks_are_noise(peaks_yx: np.ndarray, significance: np.ndarray, noise_level: float,
                     window_px: float) -> bool:
    """True when the first whole-window search found noise: the groups' peaks do not stand
    out from their maps (median significance below what noise reaches) AND they scatter over
    the window (consecutive groups a median of more than a tenth of the window, at least 4 px,
    apart), as a specimen that drifts does not. A map that the specimen's own structure
    widens can look insignificant though its peaks are right; they then follow a path. Two
    groups' peaks mirror each other (each against the other): their distance is the one step,
    and following noise there put the halves of a pure-noise EER tens of pixels apart with
    ``supported`` true."""
    if peaks_yx.shape[0] < 2 or not float(np.median(significance)) < noise_level:
        return False
    steps = np.hypot(*np.diff(peaks_yx, axis=0).T)
    return float(np.median(steps)) > max(4.0, 0.1 * float(window_px))


def _neighbour_path(peaks_yx: np.ndarray, reach: int = _STRAY_NEIGHBOURS) -> np.ndarray:
    """Where its neighbours in time place each group: of up to ``reach`` groups on each side
    of it (itself left out), every pair's straight line evaluated at the group, and the median
    of those per axis (a drift's ends are extrapolated, and one wild neighbour cannot pull the
    prediction)."""
    n = peaks_yx.shape[0]
    offsets = [k for k in range(-reach, reach + 1) if k]
    pairs = np.array([(a, b) for i, a in enumerate(offsets) for b in offsets[i + 1:]])
    j = np.arange(n)[:, None]
    first, second = j + pairs[None, :, 0], j + pairs[None, :, 1]  # (n, n_pairs)
    valid = (first >= 0) & (second < n)
    first, second = np.clip(first, 0, n - 1), np.clip(second, 0, n - 1)
    fraction = (j - first) / np.where(second != first, second - first, 1)
    lines = peaks_yx[first] + (peaks_yx[second] - peaks_yx[first]) * fraction[..., None]
    lines[~valid] = np.nan
    return np.nanmedian(lines, axis=1)


def _replace_stray_peaks(peaks_yx: np.ndarray, significance: np.ndarray, noise_level: float,
                         window_px: float) -> np.ndarray:
    """The first search's peaks with each stray one replaced by the others' path interpolated
    at its group. At low dose a few groups' maxima are noise tens of pixels away, which a later
    iteration's small window can never bring back. Stray is:

    * a peak that does not stand out from noise and lies more than a tenth of the window (at
      least 4 px) from the others' median (0.05 e/px/frame: 2 of 10 at 70 px);
    * a peak more than a quarter of the window (at least 8 px) from where its neighbours in
      time place it (:func:`_neighbour_path`: a drift, however large, keeps neighbouring
      groups together) that stands out from noise by less than
      :data:`_STRAY_MARGIN_SIGMAS`: an isolated maximum that barely clears the noise is still
      more likely noise than a jump of tens of pixels and back (0.03 e/px/frame in groups of
      2: the first group at 78 px with 5.07 sigma against noise's 4.96 put the frames 26 px
      RMS off). The farthest is taken first, as it displaces its neighbours' predictions.
    """
    n = peaks_yx.shape[0]
    if n < 3:
        return peaks_yx
    index = np.arange(n)

    def others_path(stray: np.ndarray) -> np.ndarray:
        out = peaks_yx.copy()
        for axis in range(2):
            out[stray, axis] = np.interp(index[stray], index[~stray], peaks_yx[~stray, axis])
        return out

    distance = np.hypot(*(peaks_yx - np.median(peaks_yx, axis=0)).T)
    stray = (significance < noise_level) & (distance > max(4.0, 0.1 * float(window_px)))
    if stray.all():
        return peaks_yx
    work = others_path(stray)
    weak = significance < noise_level + _STRAY_MARGIN_SIGMAS
    far = max(8.0, 0.25 * float(window_px))
    while True:
        predicted = _neighbour_path(work)
        off = np.hypot(*(work - predicted).T)
        candidates = ~stray & weak & (off > far)
        if not candidates.any() or stray.sum() + 1 >= n:
            break
        j = int(np.argmax(np.where(candidates, off, -1.0)))
        stray[j] = True
        work[j] = predicted[j]
    return others_path(stray) if stray.any() else peaks_yx


def _window_peak(block: np.ndarray) -> np.ndarray:
    """Sub-pixel peak ``[dy, dx]`` of a map on a window with a border of one
    (:func:`_window_maps`): the maximum inside the border, a parabola through it and its
    neighbours per axis."""
    wy, wx = (block.shape[0] - 3) // 2, (block.shape[1] - 3) // 2
    iy, ix = np.unravel_index(int(np.argmax(block[1:-1, 1:-1])), (2 * wy + 1, 2 * wx + 1))
    iy, ix = iy + 1, ix + 1
    fy = _parabola_offset(block[iy - 1, ix], block[iy, ix], block[iy + 1, ix])
    fx = _parabola_offset(block[iy, ix - 1], block[iy, ix], block[iy, ix + 1])
    return np.array([iy - wy - 1 + fy, ix - wx - 1 + fx])


def _local_dft_kernels(shape: tuple[int, int], radius: int, gy: np.ndarray, gx: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Matrices that evaluate a filtered correlation spectrum at integer offsets.

    ``(ey @ X @ ex).real`` is the correlation map of half spectrum ``X`` (filtered by the
    separable ``gy[:, None] * gx[None, :]``) at offsets ``-radius..radius`` on both axes, up to
    the constant factor ``1 / (ny nx)``; the rfft column weights (1 for DC/Nyquist, 2 otherwise)
    are folded into ``ex``.
    """
    ny, nx = shape
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    ky = frequency_indices(ny)
    kx = frequency_indices(nx, half=True)
    col_w = np.full(kx.size, 2.0)
    col_w[0] = 1.0
    if nx % 2 == 0:
        col_w[-1] = 1.0
    ey = (np.exp(2j * np.pi * np.outer(off, ky) / ny) * gy[None, :]).astype(np.complex64)
    ex = (np.exp(2j * np.pi * np.outer(kx, off) / nx) * (gx * col_w)[:, None]
          ).astype(np.complex64)
    return ey, ex


def _local_peaks(corr: np.ndarray, ey: np.ndarray, ex: np.ndarray, workers: int = 1
                 ) -> list[np.ndarray | None]:
    """Sub-pixel peaks of a stack of correlation spectra evaluated near zero offset.

    ``corr`` has shape (n_groups, ny, nx // 2 + 1); each map is evaluated on a small grid of
    integer offsets by ``Re(ey @ corr_j @ ex)``. The groups are split over ``workers``
    threads, each making ONE real matrix product of its groups (one BLAS call per thread
    instead of one per group: on a busy machine each threaded BLAS call can wait milliseconds
    for its threads; BLAS itself runs one thread, ``OPENBLAS_NUM_THREADS=1``, so the split is
    what uses every core: K3 x 40 on the 1024-px grid, 50 -> 27 ms per iteration on 2 cores).
    An entry is None when the maximum lies on the border of the window (the peak is further
    away: search the full map instead).
    """
    g, ny, nxh = corr.shape
    radius = (ey.shape[0] - 1) // 2
    k = ex.shape[1]
    # corr @ ex as a real product of corr's (re, im) pairs: [Re | Im] of the result (a real
    # BLAS product here is several times faster than the complex one)
    real = corr.real.dtype
    kern = np.empty((nxh, 2, 2 * k), real)
    kern[:, 0, :k], kern[:, 1, :k] = ex.real, -ex.imag
    kern[:, 0, k:], kern[:, 1, k:] = ex.imag, ex.real
    kern = kern.reshape(2 * nxh, 2 * k)
    ey_re, ey_im = ey.real.astype(real), ey.imag.astype(real)
    maps = np.empty((g, ey.shape[0], k), real)

    def chunk(lo: int, hi: int) -> None:
        half = (corr[lo:hi].view(real).reshape((hi - lo) * ny, 2 * nxh) @ kern
                ).reshape(hi - lo, ny, 2 * k)
        maps[lo:hi] = np.matmul(ey_re, half[..., :k]) - np.matmul(ey_im, half[..., k:])

    run_chunks(chunk, g, workers)
    peaks: list[np.ndarray | None] = []
    for c in maps:
        iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
        if iy in (0, c.shape[0] - 1) or ix in (0, c.shape[1] - 1):
            peaks.append(None)
            continue
        fy = _parabola_offset(c[iy - 1, ix], c[iy, ix], c[iy + 1, ix])
        fx = _parabola_offset(c[iy, ix - 1], c[iy, ix], c[iy, ix + 1])
        peaks.append(np.array([iy - radius + fy, ix - radius + fx]))
    return peaks


def _rings(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frequency rings of the half-spectrum grid for the matched filter.

    Returns
    -------
    index : ndarray, shape (ny, nx // 2 + 1), int64
        Ring of each element: ``floor(|k| * min(ny, nx) / _RING_WIDTH_PX)`` with ``k`` in cycles
        per pixel, so each ring is ``_RING_WIDTH_PX`` frequency pixels of the short side wide.
    multiplicity : ndarray, shape (ny, nx // 2 + 1), float64
        How often each element stands in the full spectrum (2, or 1 for the DC/Nyquist columns).
    """
    ny, nx = shape
    k = np.sqrt(radial_frequency_sq(shape).astype(np.float64))
    index = np.floor(k * (min(ny, nx) / _RING_WIDTH_PX)).astype(np.int64)
    col_w = np.full(nx // 2 + 1, 2.0)
    col_w[0] = 1.0
    if nx % 2 == 0:
        col_w[-1] = 1.0
    return index, np.broadcast_to(col_w[None, :], index.shape)


def _power_sum(stack: np.ndarray, workers: int = 1) -> np.ndarray:
    """``sum_i |stack_i|^2`` over the first axis (real), frames split over threads."""
    partial: dict[int, np.ndarray] = {}
    real = stack.real.dtype

    def chunk(lo: int, hi: int) -> None:
        # |X|^2 summed frame by frame with one plane of scratch (numpy's einsum over
        # (frame, re/im) took 4x as long)
        acc = np.zeros(stack.shape[1:], real)
        square = np.empty(stack.shape[1:], real)
        for i in range(lo, hi):
            for plane in (stack[i].real, stack[i].imag):
                np.multiply(plane, plane, out=square)
                acc += square
        partial[lo] = acc

    run_chunks(chunk, stack.shape[0], workers)
    return sum(partial[lo] for lo in sorted(partial))


def _matched_filter(aligned: np.ndarray, total: np.ndarray, groups: list[np.ndarray],
                    rings: tuple[np.ndarray, np.ndarray], workers: int = 1,
                    frame_power: np.ndarray | None = None) -> np.ndarray:
    """Weight ``S / (n S + N)`` per frequency ring, measured on an aligned stack (float32).

    ``S`` is the signal power per group (the ring average of ``(|total|^2 - sum_j |part_j|^2) /
    (n (n - 1))``: the cross power between groups, to which their independent noise does not
    contribute), ``N`` the noise power per group (``mean_j |part_j|^2 - S``), ``n`` the number
    of groups. The weight minimises the variance of the shift found by correlating one group
    with the sum of the ``n - 1`` others; rings without measurable signal get 0; DC gets 0.
    ``frame_power``: ``sum_j |part_j|^2`` when already known (one frame per group: it is the
    frames' power, which no shift changes).
    """
    index, mult = rings
    n = len(groups)
    ny, nxh = total.shape
    real = total.real.dtype
    if frame_power is not None:
        power = frame_power
    elif len(groups) == aligned.shape[0]:  # one frame per group: one pass, no temporaries
        power = _power_sum(aligned, workers)
    else:
        power = np.zeros((ny, nxh), real)
        for part, _ in _leave_one_out(aligned, total, groups):
            power += part.real ** 2
            power += part.imag ** 2
    total_power = total.real ** 2 + total.imag ** 2
    flat, w = index.ravel(), mult.ravel()
    n_rings = int(flat.max()) + 1
    count = np.maximum(np.bincount(flat, w, n_rings), 1.0)
    mean_power = np.bincount(flat, power.ravel() * w, n_rings) / count
    mean_total = np.bincount(flat, total_power.ravel() * w, n_rings) / count
    signal = np.maximum((mean_total - mean_power) / (n * (n - 1)), 0.0)
    noise = np.maximum(mean_power / n - signal, 0.0)
    denom = n * signal + noise
    weight = np.divide(signal, denom, out=np.zeros_like(signal), where=denom > 0)
    out = weight[index].astype(np.float32)
    out[0, 0] = 0.0
    return out


def _mask_central_cross(spectrum: np.ndarray) -> np.ndarray:
    """Zero the row ``ky = 0`` and the column ``kx = 0`` of a half spectrum (or a stack of
    them, the last two axes), in place; returns it."""
    spectrum[..., 0, :] = 0
    spectrum[..., :, 0] = 0
    return spectrum


def _cross_spectra(aligned: np.ndarray, total: np.ndarray, groups: list[np.ndarray],
                   out: np.ndarray, workers: int = 1, weight: np.ndarray | None = None
                   ) -> np.ndarray:
    """``out[j] = part_j * conj(total - part_j)``: each group's cross-power spectrum with the
    sum of all other frames (its leave-one-out reference), its central cross left out (see
    the module docstring; DC adds a constant only). ``out`` may be ``aligned`` itself when
    every group is one frame (each is read before it is written). ``weight`` (real, one plane)
    multiplies each while it is in cache (the matched filter: a pass over the stack less)."""
    def chunk(lo: int, hi: int) -> None:
        ref = np.empty(total.shape, total.dtype)  # this thread's scratch
        for j in range(lo, hi):
            part = _group_sum(aligned, groups[j])
            np.subtract(total, part, out=ref)
            np.multiply(part, np.conjugate(ref, out=ref), out=out[j])
            if weight is not None:
                out[j] *= weight
            _mask_central_cross(out[j])

    run_chunks(chunk, len(groups), workers)
    return out


def _align_stack(spectra: np.ndarray, shifts_yx_px: np.ndarray, shape: tuple[int, int],
                 out: np.ndarray, workers: int = 1) -> np.ndarray:
    """Shift every spectrum by minus its shift into ``out``; return their sum (frames split
    over ``workers`` threads, each summing its own frames). Each frame is added to its
    thread's sum while it is in cache, and the ramps of all frames are made at once: a third
    less time than a ramp call per frame and a summing pass afterwards (patch stacks of
    40 x 324 x 241, one thread: 8.0 against 12.1 ms), with the same result."""
    partial: dict[int, np.ndarray] = {}
    ramps_y, ramps_x = shift_ramps_stack(shape, -np.asarray(shifts_yx_px, dtype=np.float64))

    def chunk(lo: int, hi: int) -> None:
        total = np.zeros(spectra.shape[1:], out.dtype)
        for i in range(lo, hi):
            np.multiply(spectra[i], ramps_y[i, :, None], out=out[i])
            out[i] *= ramps_x[i, None, :]
            total += out[i]
        partial[lo] = total

    run_chunks(chunk, spectra.shape[0], workers)
    sums = [partial[lo] for lo in sorted(partial)]
    total = sums[0]
    for extra in sums[1:]:
        total += extra
    return total


def _part_and_rest(aligned: np.ndarray, total: np.ndarray, group: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A group's sum and the sum of all other frames (its leave-one-out reference)."""
    part = _group_sum(aligned, group)
    return part, total - part


def _group_sum(aligned: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The sum of a group's aligned spectra (the frame itself for a one-frame group)."""
    return aligned[group].sum(axis=0) if len(group) > 1 else aligned[group[0]]


def _leave_one_out(aligned: np.ndarray, total: np.ndarray, groups: list[np.ndarray]):
    """Yield ``(group sum, sum of all other frames)`` of aligned spectra, group by group."""
    for g in groups:
        yield _part_and_rest(aligned, total, g)


def dark_frames(spectra: np.ndarray, shape_yx: tuple[int, int] | None = None) -> np.ndarray:
    """Which frames of a stack of half spectra hold no counts to align, shape (n_frames,).

    A frame is dark when its power above half the Nyquist frequency (the sum of ``|F|^2``
    over spatial frequencies of at least 0.25 cycles/px) is below
    :data:`_DARK_POWER_FRACTION` of the upper quartile of the frames' (a beam blanked for most
    of the movie still leaves the lit frames' power there). There, the shot noise of a frame of
    counts has a power in proportion to its counts, while the edges of a dark frame padded
    with the movie's mean (the pipeline pads every frame so) have almost none: a frame with a
    fiftieth of those counts is dark. A dark frame's correlation with the others
    is flat, and its peak would be taken anywhere in the search window: at its edge, tens of
    pixels off. The quartile is taken as at least a tenth of the brightest frame's power (the
    beam blanked for most of the movie); when no frame has any (a movie of zeros: the column
    valves closed), all are dark.
    """
    n = spectra.shape[0]
    shape = (spectra.shape[1], 2 * (spectra.shape[2] - 1)) if shape_yx is None else \
        tuple(int(v) for v in shape_yx)
    outer = radial_frequency_sq(shape) >= np.float32(0.25 ** 2)
    power = np.empty(n)
    for i in range(n):  # one frame at a time: no stack-sized temporary
        band = spectra[i][outer]
        power[i] = float(np.vdot(band, band).real)
    # a tenth of the brightest frame's stands for the quartile when most frames are dark (the
    # beam blanked for most of the movie: their padded edges leave the quartile a little)
    lit_power = max(float(np.percentile(power, 75)), 0.1 * float(power.max(initial=0.0)))
    if not lit_power > 0:  # a movie of zeros
        return np.ones(n, bool)
    return power < _DARK_POWER_FRACTION * lit_power


def _with_dark_frames(result: GlobalAlignment, lit: np.ndarray, n: int) -> GlobalAlignment:
    """A result for the ``lit`` frames of ``n`` widened to all: the dark frames' shifts
    interpolated over the frame index between their lit neighbours (held beyond the ends),
    all shifts centred again on their mean."""
    frames = np.arange(n)
    shifts = np.column_stack([np.interp(frames, lit, result.shifts_yx_px[:, a])
                              for a in range(2)])
    quality = np.full(n, np.nan)
    quality[lit] = result.peak_quality
    dark = np.setdiff1d(frames, lit)
    return dataclasses.replace(result, shifts_yx_px=shifts - shifts.mean(axis=0),
                               peak_quality=quality,
                               dark_frames=tuple(int(i) for i in dark))


def estimate_shifts(spectra: np.ndarray, *, params: AlignParams = AlignParams(),
                    shape_yx: tuple[int, int] | None = None,
                    output_px_per_grid_px: float = 1.0,
                    initial_shifts_yx_px: np.ndarray | None = None,
                    workers: int = -1) -> GlobalAlignment:
    """Estimate the whole-frame displacement of every frame (see :func:`_estimate_shifts`).

    A large drift (a stage that had not settled: 40-80 px over a movie) streaks the unaligned
    sum that the first search uses as its reference, and some frames lock onto a ghost of it
    tens of pixels away, which the later, small windows never leave: the stack is split in two
    offset groups. When the result jumps between neighbouring groups (more than 3 px and four
    times the median step), the alignment is run again from the path that chains each group to
    the one before (:func:`_chained_start`), and the result whose groups correlate better with
    their references (mean ``peak_quality``, the quantity the alignment maximises) is kept.

    Frames without counts (:func:`dark_frames`) are left out when at least two others have
    counts; each is given the shift of the frames beside it (``dark_frames`` in the result).
    With fewer, nothing is aligned (``supported`` false, the shifts zero: a movie of zeros
    searched its flat correlations and said it did not converge, a frame moved 72 px).
    """
    spectra = np.asarray(spectra)
    dark = dark_frames(spectra, shape_yx)
    if not dark.any():
        return _estimate_with_restart(spectra, params, shape_yx, output_px_per_grid_px,
                                      initial_shifts_yx_px, workers)
    if np.sum(~dark) < 2:
        n = spectra.shape[0]
        note = (f"{int(np.sum(~dark))} of {n} frames hold counts (the beam blanked, the column "
                "valves closed?): nothing to align; the frames are summed without shifts "
                "(alignment.supported false in the motion record)")
        warnings.warn(note, stacklevel=2)
        return GlobalAlignment(np.zeros((n, 2)), np.full(n, np.nan), 0, True, 0.0,
                               supported=False, note=note,
                               dark_frames=tuple(int(i) for i in np.flatnonzero(dark)))
    lit = np.flatnonzero(~dark)  # align the frames that hold counts
    start = None if initial_shifts_yx_px is None else np.asarray(initial_shifts_yx_px)[lit]
    return _with_dark_frames(_estimate_with_restart(spectra[lit], params, shape_yx,
                                                    output_px_per_grid_px, start, workers),
                             lit, spectra.shape[0])


def _estimate_with_restart(spectra: np.ndarray, params: AlignParams,
                           shape_yx: tuple[int, int] | None, output_px_per_grid_px: float,
                           initial_shifts_yx_px: np.ndarray | None,
                           workers: int) -> GlobalAlignment:
    """:func:`_estimate_shifts`, run again from the chained start when the stack split in
    two offset groups (:func:`estimate_shifts`)."""
    result = _estimate_shifts(spectra, params=params, shape_yx=shape_yx,
                              output_px_per_grid_px=output_px_per_grid_px,
                              initial_shifts_yx_px=initial_shifts_yx_px, workers=workers)
    groups = frame_groups(spectra.shape[0], params.group_frames)
    if initial_shifts_yx_px is not None or not result.supported or len(groups) < 3:
        return result
    path = np.array([result.shifts_yx_px[g].mean(axis=0) for g in groups])
    steps = np.hypot(*np.diff(path, axis=0).T)
    if not steps.max() > max(3.0, 4.0 * float(np.median(steps))):
        return result
    shape = (spectra.shape[1], 2 * (spectra.shape[2] - 1)) if shape_yx is None else \
        tuple(int(s) for s in shape_yx)
    start = _chained_start(spectra, groups, shape,
                           window_px=params.max_shift_px / float(output_px_per_grid_px),
                           bfactor_px2=params.bfactor_px2 / float(output_px_per_grid_px) ** 2,
                           workers=workers)
    chained = _estimate_shifts(spectra, params=params, shape_yx=shape_yx,
                               output_px_per_grid_px=output_px_per_grid_px,
                               initial_shifts_yx_px=start, workers=workers)
    if np.nanmean(chained.peak_quality) > np.nanmean(result.peak_quality):
        return dataclasses.replace(chained, peak_significance=result.peak_significance,
                                   noise_peak_significance=result.noise_peak_significance)
    return result


def _chained_start(spectra: np.ndarray, groups: list[np.ndarray], shape: tuple[int, int], *,
                   window_px: float, bfactor_px2: float, workers: int) -> np.ndarray:
    """Per-frame starting shifts from each group's peak against the group before it (over
    the whole window, B-factor filtered), added up along the movie: neighbouring groups are
    sharp references for each other however far the specimen drifts in all."""
    gy, gx = bfactor_filter_1d(shape, bfactor_px2)
    weight = (gy[:, None] * gx[None, :]).astype(np.float32)
    sums = [_group_sum(spectra, g) for g in groups]
    steps = np.zeros((len(groups), 2))
    for k in range(1, len(groups)):
        corr = _mask_central_cross((sums[k] * np.conjugate(sums[k - 1]) * weight)[None])
        steps[k] = _window_peak(_window_maps(corr, shape, window_px, workers)[0])
    path = np.cumsum(steps, axis=0)
    shifts = interpolate_group_shifts(groups, path, spectra.shape[0])
    return shifts - shifts.mean(axis=0)


def _estimate_shifts(spectra: np.ndarray, *, params: AlignParams = AlignParams(),
                     shape_yx: tuple[int, int] | None = None,
                     output_px_per_grid_px: float = 1.0,
                     initial_shifts_yx_px: np.ndarray | None = None,
                     workers: int = -1) -> GlobalAlignment:
    """Estimate the whole-frame displacement of every frame of a Fourier-transformed stack.

    Parameters
    ----------
    spectra : ndarray, shape (n_frames, ny, nx // 2 + 1), complex64
        Half spectra (:func:`correction.fourier.rfft2`) of the frames, usually Fourier-cropped.
        Not modified. Works for any size (whole frames or small patches).
    params : AlignParams
        ``bfactor_px2``, ``max_shift_px``, ``max_iterations``, ``tolerance_px`` and
        ``group_frames`` are used; lengths are in *output* pixels and converted with
        ``output_px_per_grid_px``. ``align_size_px`` is the caller's business.
    shape_yx : (int, int), optional
        Real-space shape of the frames; default ``(ny, 2 * (nx_half - 1))`` (even width).
    output_px_per_grid_px : float
        Size of a pixel of this grid in output pixels (the Fourier-crop factor, >= 1).
    initial_shifts_yx_px : ndarray, shape (n_frames, 2), optional
        Starting estimates in grid pixels (e.g. global shifts when aligning patches); the
        first iteration then searches around them.
    workers : int
        Threads for :mod:`scipy.fft`.

    Returns
    -------
    GlobalAlignment
        Shifts in pixels of THIS grid (multiply by ``output_px_per_grid_px`` for output pixels),
        sign per :mod:`correction.conventions`, mean zero over frames.
    """
    spectra = np.asarray(spectra)
    if spectra.ndim != 3:
        raise ValueError(f"spectra must be (n_frames, ny, nx//2+1), got shape {spectra.shape}")
    n, ny, nxh = spectra.shape
    shape = (int(ny), int(2 * (nxh - 1))) if shape_yx is None else tuple(int(s) for s in shape_yx)
    if shape[0] != ny or shape[1] // 2 + 1 != nxh:
        raise ValueError(f"shape_yx {shape} does not fit spectra of shape {spectra.shape}")
    scale = float(output_px_per_grid_px)
    groups = frame_groups(n, params.group_frames)
    n_groups = len(groups)

    shifts = np.zeros((n, 2)) if initial_shifts_yx_px is None else \
        np.array(initial_shifts_yx_px, dtype=np.float64).reshape(n, 2)
    shifts -= shifts.mean(axis=0)
    if n_groups < 2:
        note = (f"{n} frames in one group of {params.group_frames} (--group): nothing to align "
                "against; the frames are summed without shifts (alignment.supported false in "
                "the motion record)")
        if n > 1:
            warnings.warn(note, stacklevel=2)
        return GlobalAlignment(shifts, np.full(n, np.nan), 0, n < 2, 0.0, supported=n < 2,
                               note=note if n > 1 else "")

    b0 = params.bfactor_px2 / scale**2
    window = params.max_shift_px / scale
    tol = params.tolerance_px / scale
    group_shifts = np.array([shifts[g].mean(axis=0) for g in groups])
    aligned = np.empty_like(spectra)
    # one frame per group: the cross spectra overwrite the aligned stack, which each iteration
    # rebuilds from ``spectra`` (a stack's worth of memory less: 0.2 GB for K3 x 40)
    corr_buf = aligned if n_groups == n else \
        np.empty((n_groups,) + spectra.shape[1:], spectra.dtype)
    update = np.inf
    iteration = 0
    gy = gx = None
    rings = _rings(shape) if min(shape) / (2 * _RING_WIDTH_PX) >= _MIN_RINGS else None
    flat_gy, flat_gx = np.ones(shape[0]), np.ones(shape[1] // 2 + 1)
    unit_ey, unit_ex = _local_dft_kernels(shape, _LOCAL_RADIUS, flat_gy, flat_gx)
    # a small window around zero (no initial shifts) is searched in the first iteration by the
    # local DFT on the window's offsets plus a border: the same correlation values as the full
    # maps (a peak on the border is searched in the full map), without their inverse FFTs (the
    # patch stacks: 40 x 324 x 241, about 12 of 67 ms per patch here)
    first_radius = int(np.floor(window)) + 1
    first_local = initial_shifts_yx_px is None and first_radius <= _FIRST_LOCAL_MAX_PX
    matched = None
    frame_power = None  # sum_i |S_i|^2 (one frame per group)
    significance = np.full(n_groups, np.nan)  # of the first whole-window search
    noise_level = float("nan")
    for iteration in range(1, params.max_iterations + 1):
        bfac = b0 * max(_B_FLOOR, _B_DECAY ** (iteration - 1))
        gy, gx = bfactor_filter_1d(shape, bfac)
        total = _align_stack(spectra, shifts, shape, aligned, workers)
        if rings is not None and iteration > 1 and (iteration <= 3
                                                    or update > _FILTER_SETTLED_PX):
            # measured on the stack as aligned so far (good to a fraction of a pixel after
            # the first iteration), and again after each iteration that still moved a shift
            # by more than _FILTER_SETTLED_PX: a filter measured while the shifts were off
            # underrates the signal at high frequency, and the alignment it steers stays off
            # (measured only at iterations 2 and 3, a real K2 exposure split into frames:
            # 1.76x the oracle's error, 1.14x now; benchmarks/bench_oracle.py)
            if frame_power is None and n_groups == n:  # shift-invariant: once per stack
                frame_power = _power_sum(spectra, workers)
            matched = _matched_filter(aligned, total, groups, rings, workers, frame_power)
        corr = _cross_spectra(aligned, total, groups, corr_buf, workers, matched)
        if matched is not None:
            peaks = _local_peaks(corr, unit_ey, unit_ex, workers)
        elif iteration > 1:
            peaks = _local_peaks(corr, *_local_dft_kernels(shape, _LOCAL_RADIUS, gy, gx),
                                 workers)
        elif first_local:
            peaks = _local_peaks(corr, *_local_dft_kernels(shape, first_radius, gy, gx),
                                 workers)
        else:
            peaks = [None] * n_groups
        search = [j for j, peak in enumerate(peaks) if peak is None]
        for j in search:
            # search the whole window around zero displacement from the aligned sum
            c = corr[j]
            ry, rx = shift_ramps(shape, group_shifts[j])
            if matched is None:
                ry = ry * gy.astype(np.float32)
                rx = rx * gx.astype(np.float32)
            c *= ry[:, None]
            c *= rx[None, :]
        # the full maps in batched inverse FFTs of about _MAPS_BATCH_BYTES each
        batch = max(1, _MAPS_BATCH_BYTES // max(1, corr[0].nbytes))
        for b in range(0, len(search), batch):
            chosen = search[b:b + batch]
            maps = _window_maps(corr[chosen[0]:chosen[-1] + 1] if chosen[-1] - chosen[0] + 1
                                == len(chosen) else corr[chosen], shape, window, workers)
            for m, j in enumerate(chosen):
                peaks[j] = _window_peak(maps[m]) - group_shifts[j]
                if iteration == 1:
                    significance[j] = _peak_significance(maps[m])
            if iteration == 1 and b == 0:
                noise_level = noise_peak_significance((maps.shape[1] - 2) * (maps.shape[2] - 2))
            del maps
        if iteration == 1 and len(search) == n_groups and initial_shifts_yx_px is None \
                and _peaks_are_noise(np.array(peaks, dtype=np.float64), significance,
                                     noise_level, window):
            # following them scatters the frames by tens of pixels
            return GlobalAlignment(shifts, np.full(n, np.nan), 1, False, 0.0,
                                   float(np.median(significance)), noise_level, False)
        if iteration == 1 and len(search) == n_groups:
            peaks = _replace_stray_peaks(np.array(peaks, dtype=np.float64), significance,
                                         noise_level, window)
        # a group's peak against the sum of the others lies at its error minus the others'
        # mean error, n / (n - 1) times its error from the mean of all: stepping by the full
        # peak overshoots (two frames would swap places every iteration and never settle)
        residuals = np.array(peaks, dtype=np.float64).reshape(n_groups, 2)
        residuals *= (n_groups - 1) / n_groups
        group_shifts = group_shifts + residuals
        shifts = interpolate_group_shifts(groups, group_shifts, n)
        common = shifts.mean(axis=0)
        shifts -= common
        group_shifts -= common
        update = float(np.max(np.abs(residuals)))
        if update < tol and iteration > 1:
            break

    # quality: normalised correlation coefficient at the final shifts (Parseval, half spectrum)
    total = _align_stack(spectra, shifts, shape, aligned, workers)
    weight = (gy[:, None] * gx[None, :]).astype(np.float32)
    weight[:, 1:] *= 2.0
    if shape[1] % 2 == 0:
        weight[:, -1] /= 2.0
    _mask_central_cross(weight)  # as in the correlations (DC included)
    quality = np.full(n_groups, np.nan)
    # sums of products of real and imaginary parts (float32 views, einsum: no BLAS call)
    weight2 = np.repeat(weight, 2, axis=-1)

    # with the reference r = t - p: e_ref = T - 2 B + A and c_peak = B - A, where A = sum w
    # |p|^2, B = sum w Re(t p*) and T = sum w |t|^2 (no reference array per group)
    total_weighted = (total.view(np.float32) * weight2).reshape(-1)
    t_energy = float(np.einsum("i,i->", total.view(np.float32).reshape(-1), total_weighted))
    flat_weight = weight2.reshape(-1)

    def group_quality(lo: int, hi: int) -> None:
        square = np.empty(weight2.size, np.float32)
        for j in range(lo, hi):
            pf = _group_sum(aligned, groups[j]).view(np.float32).reshape(-1)
            np.multiply(pf, pf, out=square)
            e_part = float(np.einsum("i,i->", square, flat_weight))
            cross = float(np.einsum("i,i->", pf, total_weighted))
            e_ref = t_energy - 2.0 * cross + e_part
            if e_part > 0 and e_ref > 0:
                quality[j] = (cross - e_part) / np.sqrt(e_part * e_ref)

    run_chunks(group_quality, n_groups, workers)
    del aligned

    frame_quality = np.empty(n)
    for j, g in enumerate(groups):
        frame_quality[g] = quality[j]
    measured = significance[np.isfinite(significance)]
    return GlobalAlignment(shifts, frame_quality, iteration, bool(update < tol), update,
                           float(np.median(measured)) if measured.size else float("nan"),
                           noise_level)


def leave_one_out_oracle(spectra: np.ndarray, truth_shifts_yx_px: np.ndarray, *,
                         shape_yx: tuple[int, int] | None = None,
                         bfactor_px2: float | None = None,
                         group_frames: int = 1, max_iterations: int = 20,
                         tolerance_px: float = 1e-3) -> np.ndarray:
    """The precision bound of leave-one-out alignment: align each frame against the truth.

    Every group of frames is correlated with the sum of all *other* frames shifted by their
    TRUE displacements (a reference no estimator can build better), filtered and peak-fitted as
    :func:`estimate_shifts` does (5 x 5 local DFT, 3-point parabola, re-centred until the peak
    sits at zero offset). What
    remains is the error set by the noise of the frame and of the reference: the figure an
    estimator's error is compared with. It starts at the truth and searches near it, so it is a
    bound only where the frames' peaks stand out from noise (about 0.2 e/px/frame and more on
    a cryo-like field at 7 % contrast): below, noise pulls it towards the truth (on pure noise
    it reports 0.25 px; started 1 px off, 1.7 px), and an estimator within 1.5 x of it there
    proves nothing. Its matched filter, measured on these very frames aligned by the truth,
    also favours the truth where the signal is weak: rings whose noise happens to agree at
    the true shifts get weight. Against the same oracle with the filter measured on another
    noise draw of the same specimen and motion, and its peak searched over the whole window,
    on 1024^2 x 10 frames (3 seeds, RMS px): 10 % contrast at 0.1 e/px/frame 0.17 here against
    1.29 there (motionwatch 1.12); at 0.2 e/px/frame 0.16 against 0.64 (0.50); 3 % contrast at
    1.0 e/px/frame 0.21 against 1.92 (1.50); 30 % contrast at 0.05 e/px/frame 0.13 against
    0.23 (0.20). Where the ratio of an estimator to this oracle exceeds 2 at such signal, the
    oracle is the cause.

    Parameters
    ----------
    spectra : ndarray, shape (n_frames, ny, nx // 2 + 1), complex
        Half spectra of the frames (padded so that shifting does not wrap content, ideally).
    truth_shifts_yx_px : ndarray, shape (n_frames, 2)
        True displacement ``[dy, dx]`` of the specimen in each frame, pixels of this grid,
        :mod:`correction.conventions`.
    shape_yx : (int, int), optional
        Real-space shape; default ``(ny, 2 * (nx_half - 1))``.
    bfactor_px2 : float, optional
        A Gaussian B-factor low-pass (grid pixels²) instead of the matched filter measured on
        the truth-aligned stack (the filter :func:`estimate_shifts` converges to).
    group_frames : int
        Frames per group, as ``AlignParams.group_frames``.
    max_iterations, tolerance_px : int, float
        Each group is re-centred on its estimate until the step is below ``tolerance_px``
        (grid pixels); its reference stays the truth-aligned sum of the others.

    Returns
    -------
    ndarray, shape (n_frames, 2), float64
        Shifts found (grid pixels, truth plus the error of the bound; the common offset is not
        removed).
    """
    spectra = np.asarray(spectra)
    n, ny, nxh = spectra.shape
    shape = (int(ny), int(2 * (nxh - 1))) if shape_yx is None else tuple(int(s) for s in shape_yx)
    truth = np.asarray(truth_shifts_yx_px, dtype=np.float64).reshape(n, 2)
    groups = frame_groups(n, group_frames)
    if len(groups) < 2:
        raise ValueError(f"the oracle needs at least two groups of frames, got {len(groups)}")
    aligned = np.empty_like(spectra)
    total = _align_stack(spectra, truth, shape, aligned)
    parts, refs = [], []
    for part, ref in _leave_one_out(aligned, total, groups):
        parts.append(np.array(part))
        refs.append(np.conjugate(ref))
    if bfactor_px2 is None:
        weight = _matched_filter(aligned, total, groups, _rings(shape))
    else:
        gy, gx = bfactor_filter_1d(shape, bfactor_px2)
        weight = (gy[:, None] * gx[None, :]).astype(np.float32)
    del aligned, total
    kernels = _local_dft_kernels(shape, _LOCAL_RADIUS, np.ones(shape[0]),
                                 np.ones(shape[1] // 2 + 1))
    # each group is re-centred on its own estimate until its peak sits at zero offset, as in
    # estimate_shifts (a single parabola step from the truth would be biased towards it)
    error = np.zeros((len(groups), 2))
    corr = np.empty((len(groups),) + spectra.shape[1:], spectra.dtype)
    for _ in range(max_iterations):
        for j, (part, ref) in enumerate(zip(parts, refs)):
            ry, rx = shift_ramps(shape, -error[j])
            np.multiply(part, ref, out=corr[j])
            corr[j] *= (ry[:, None] * weight) * rx[None, :]
            _mask_central_cross(corr[j])
        peaks = _local_peaks(corr, *kernels)
        step = np.array([np.full(2, np.nan) if p is None else p for p in peaks])
        error += step
        if not np.nanmax(np.abs(step)) > tolerance_px:
            break
    group_truth = np.array([truth[g].mean(axis=0) for g in groups])
    return interpolate_group_shifts(groups, group_truth + error, n)
