"""A smooth path in time for whole-frame shifts that follow noise.

Where the correlation peaks of the whole-frame alignment stand barely above what noise reaches
(a weak specimen: thick ice, a high tilt, a late tilt after 100 e/Å²; too few electrons per
frame), each frame's peak may be a noise peak, and the measured shifts scatter by pixels about
the specimen's real path. Such shifts put frames further apart than no alignment at all: on 8
frames of 1.5 e/px after 100 e/Å² at 3 % contrast (768^2, 2 Å/px), 2.7-3.6 px RMS off the
truth against 2.7 px unaligned. The specimen's motion over a movie is smooth (a drift that
slows down), so the frames are shifted along a low-degree polynomial in time fitted to the
shifts instead (least squares, each axis): it keeps what the noise shares with the path and
averages the rest away. The frames are first aligned again, starting from the path fitted to
the measured shifts (:func:`whole_frame_alignment`): where that second alignment finds the
measured shifts again, to within :data:`REPRODUCED_PX`, they are the specimen's (a path no
polynomial follows: a stage that jumped 10 px after the first frame; noise's peaks are not
found again from elsewhere: the second alignment moved noise-led shifts by 1.2-4.0 px, a
jump's weak but real ones by 0.55-0.94 px) and are kept as measured; otherwise the frames
are shifted along the path fitted to the second alignment's shifts.

Measured (``benchmarks/bench_fitted_path.py``, 4 movies each, RMS px against the truth, as
measured -> used, beside no alignment and the floor: the same polynomial fitted to the true
shifts, which leaves the synthetic jitter, and any jump, it cannot follow): that late tilt
2.71-3.56 -> 0.84-1.67 px (unaligned 2.67, floor 0.43); 20 frames of 0.15 e/px at 7 %
contrast 1.66-3.22 -> 0.72-1.49 px (2.39, 0.44); 10 frames of 0.08 e/px at 10 % on 1024^2
1.51-2.24 -> 0.68-1.51 px (2.56, 0.44; a path for 3 of 4); the late tilt at 5 % 0.82-1.30 ->
0.60-1.30 px (a path for 2 of 4). Strong peaks keep their shifts: the late tilt at 10 %
contrast 0.16-0.37 px, 30 % contrast at 0.06 e/px 0.17-0.22 px, and the late tilt at 30 %
whose specimen jumps 10 px after its first frame 0.08-0.11 px (unaligned 5.04), all as
measured. What it costs: that jump at 5 % contrast, 0.70-1.36 px as measured, 0.70-2.54 px
used (a path for 1 of 4, which cannot follow the jump: floor 2.12).

Only a path that both follows weak peaks and scatters by more than :data:`NOISY_PATH_PX`
(output px, RMS) about the fit is replaced: the synthetic movies' own frame-to-frame jitter of
0.3 px per axis leaves 0.36-0.67 px about a quadratic, and a precise path with real jitter is
kept as measured (strong peaks, or weak but consistent ones). The degree is 2 (a drift that
slows down) with 6 or more frames with counts, 1 with 4 or 5, and nothing is fitted to fewer.

Shifts follow :mod:`correction.conventions` (``[dy, dx]``, specimen displacement, mean zero).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .align_global import FittedPath, GlobalAlignment, estimate_shifts
from .params import AlignParams

__all__ = ["NOISY_PATH_PX", "WEAK_PEAK_FACTOR", "peaks_are_weak",
           "whole_frame_alignment", "with_fitted_path"]

#: correlation peaks this many times above what noise reaches stand out: strong enough
WEAK_PEAK_FACTOR = 1.5
#: RMS scatter (output px) about a smooth path above which weak peaks' shifts follow noise
NOISY_PATH_PX = 1.0
#: RMS difference (output px) within which a second alignment, started from the fitted path,
#: finds the measured shifts again: they are the specimen's, not noise's (the module's figures)
REPRODUCED_PX = 1.0
_MIN_FRAMES_QUADRATIC = 6
_MIN_FRAMES_LINEAR = 4


def peaks_are_weak(alignment: GlobalAlignment) -> bool:
    """True when the first search's peaks were measured and stand less than
    :data:`WEAK_PEAK_FACTOR` times above what noise reaches."""
    significance = alignment.peak_significance
    return bool(np.isfinite(significance)
                and not significance >= WEAK_PEAK_FACTOR * alignment.noise_peak_significance)


def _lit_frames(alignment: GlobalAlignment) -> np.ndarray:
    """Indices of the frames with counts (the others' shifts were only interpolated)."""
    dark = np.zeros(len(alignment.shifts_yx_px), bool)
    dark[list(alignment.dark_frames)] = True
    return np.flatnonzero(~dark)


def _polynomial_path(shifts_yx_px: np.ndarray, lit: np.ndarray,
                     degree: int) -> tuple[np.ndarray, float]:
    """The least-squares polynomial in frame index through the ``lit`` frames' shifts, at
    every frame (mean zero), and the RMS scatter of those shifts about it (same units).
    Frames without counts before the first lit frame or after the last hold its value, as
    :func:`~correction.align_global.estimate_shifts` holds their shifts: a quadratic carried
    on over six dark frames went 15 px out, and the mean with it."""
    frames = np.arange(len(shifts_yx_px), dtype=np.float64)
    coefficients = np.polyfit(frames[lit], shifts_yx_px[lit], degree)  # (degree + 1, 2)
    held = np.clip(frames, lit.min(), lit.max())
    path = np.stack([np.polyval(coefficients[:, axis], held) for axis in range(2)], axis=1)
    scatter = float(np.sqrt(np.mean(np.sum((shifts_yx_px[lit] - path[lit]) ** 2, axis=1))))
    return path - path.mean(axis=0), scatter


def _in_output_px(alignment: GlobalAlignment, scale: np.ndarray) -> np.ndarray:
    shifts = np.asarray(alignment.shifts_yx_px, dtype=np.float64) * scale
    return shifts - shifts.mean(axis=0)


def with_fitted_path(alignment: GlobalAlignment,
                     output_px_per_grid_px_yx: np.ndarray) -> GlobalAlignment:
    """``alignment`` with its shifts replaced by a smooth path in time where they follow
    noise (see the module), its ``fitted_path`` set; otherwise ``alignment`` itself.
    ``output_px_per_grid_px_yx``: the size of a grid pixel of the shifts in output pixels,
    per axis."""
    scale = np.asarray(output_px_per_grid_px_yx, dtype=np.float64).reshape(1, 2)
    lit = _lit_frames(alignment)
    if not alignment.supported or not peaks_are_weak(alignment) \
            or len(lit) < _MIN_FRAMES_LINEAR:
        return alignment
    degree = 2 if len(lit) >= _MIN_FRAMES_QUADRATIC else 1
    measured = _in_output_px(alignment, scale)
    path, scatter = _polynomial_path(measured, lit, degree)
    if not scatter > NOISY_PATH_PX:
        return alignment
    return dataclasses.replace(alignment, shifts_yx_px=path / scale,
                               fitted_path=FittedPath(degree, scatter, measured))


def whole_frame_alignment(spectra: np.ndarray, *, params: AlignParams,
                          shape_yx: tuple[int, int], scale_yx: np.ndarray,
                          workers: int) -> GlobalAlignment:
    """The whole-frame alignment of the pipeline: :func:`~correction.align_global.
    estimate_shifts` on the alignment grid's spectra (``scale_yx``: output px per grid px);
    where its shifts may follow noise (:func:`with_fitted_path`), the frames are aligned again
    starting from the path fitted to them (each peak then searched near the path, where the
    specimen's is, rather than over the whole window, where noise's may be higher). Shifts
    found again (within :data:`REPRODUCED_PX`) are kept as measured; otherwise the frames are
    shifted along the path fitted to the second shifts (on the cases of the module's figures,
    against the path of the first alignment's shifts: that late tilt 1.27-1.95 -> 0.84-1.67
    px). Shifts in grid px, as ``estimate_shifts`` gives them."""
    scale = np.asarray(scale_yx, dtype=np.float64).reshape(1, 2)
    output_px_per_grid_px = float(np.sqrt(np.prod(scale)))
    measured = estimate_shifts(spectra, params=params, shape_yx=shape_yx,
                               output_px_per_grid_px=output_px_per_grid_px, workers=workers)
    first = with_fitted_path(measured, scale)
    if first.fitted_path is None:
        return measured
    again = estimate_shifts(spectra, params=params, shape_yx=shape_yx,
                            output_px_per_grid_px=output_px_per_grid_px,
                            initial_shifts_yx_px=first.shifts_yx_px, workers=workers)
    realigned = _in_output_px(again, scale)
    lit = _lit_frames(again)
    moved = realigned[lit] - first.fitted_path.measured_shifts_yx_px[lit]
    if float(np.sqrt(np.mean(np.sum(moved ** 2, axis=1)))) <= REPRODUCED_PX:
        return measured  # found again from elsewhere: a real path that is not smooth
    path, _ = _polynomial_path(realigned, _lit_frames(again), first.fitted_path.degree)
    # the whole-window search of the first alignment judged the peaks: the second ran none
    return dataclasses.replace(
        again, shifts_yx_px=path / scale, peak_significance=measured.peak_significance,
        noise_peak_significance=measured.noise_peak_significance,
        fitted_path=dataclasses.replace(first.fitted_path, realigned_shifts_yx_px=realigned))
