"""The grids one movie is corrected on: the input frame padded for its forward transforms,
the output grid (Fourier-binned by ``--bin``), the output image and the alignment grid, and
whether alignment crops come from 2 x 2 block sums.

Sizes are (ny, nx) in pixels of the grid named; ``out_px_per_align_px`` and ``bin_yx`` are
ratios per axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fourier import binned_length, fast_length

__all__ = ["Grids", "plan_grids", "align_from_block_sums", "EXTRA_MARGIN_PX",
           "BLOCK_SUM_MIN_RATIO"]

#: pixels of padding beyond the largest shift searched (``max_shift_px``)
EXTRA_MARGIN_PX = 2
#: alignment crops from 2 x 2 block sums when the frame is this many times the alignment grid
BLOCK_SUM_MIN_RATIO = 8


@dataclass(frozen=True, slots=True)
class Grids:
    frame_yx: tuple[int, int]    # input frame
    padded_in: tuple[int, int]   # padded input grid (forward FFT)
    padded_out: tuple[int, int]  # padded output grid (after Fourier binning)
    out_yx: tuple[int, int]      # output image
    align: tuple[int, int]       # alignment grid
    out_px_per_align_px: tuple[float, float]
    bin_yx: tuple[float, float]  # input px per output px, per axis


def plan_grids(frame_yx: tuple[int, int], bin_factor: float, margin_out_px: int,
           align_size_px: int) -> Grids:
    padded_in, padded_out, out_yx, bins = [], [], [], []
    for n in frame_yx:
        if bin_factor == 1:
            q = fast_length(n + margin_out_px)
            p = q
        else:
            q = fast_length(binned_length(n, bin_factor) + margin_out_px)
            p = int(round(q * bin_factor))
            p += p % 2
            if p < n + int(np.ceil(margin_out_px * bin_factor)):
                p = fast_length(n + int(np.ceil(margin_out_px * bin_factor)))
                q = int(round(p / bin_factor))
                q -= q % 2
        padded_in.append(p)
        padded_out.append(q)
        out_yx.append(int(np.floor(n * q / p)))
        bins.append(p / q)
    scale = min(1.0, align_size_px / min(padded_out))
    align = tuple(max(16, int(round(q * scale / 2)) * 2) for q in padded_out)
    return Grids(tuple(frame_yx), tuple(padded_in), tuple(padded_out), tuple(out_yx), align,
                  (padded_out[0] / align[0], padded_out[1] / align[1]), tuple(bins))


def align_from_block_sums(g: Grids) -> bool:
    """Whether the alignment crops are made from the padded frame's 2 x 2 block sums
    (:func:`correction.fourier.rfft2_cropped_2x2`): when the padded input grid is at least
    ``BLOCK_SUM_MIN_RATIO`` times the alignment grid on both axes (even sides), as for
    super-resolution frames (8640 x 11664 padded, 1024 x 1382 alignment grid). There the
    alignment band ends below 1/16 cycle per input pixel, where the block sums keep >= 0.98 of
    the signal's amplitude and fold back at most 0.038 of the shot noise's power, and the
    crop costs 0.10 s per super-resolution frame on 2 cores against 0.20 s from the whole
    frame (0.35 s for the binned output grid's crop). Every frame's crop is made this way
    (kept spectra or not), so the alignment does not depend on how many spectra the memory
    budget keeps. Shift error against the truth, whole frame -> block sums (RMS, 6 synthetic
    movies of 16 frames each): 0.121 -> 0.123 px at 0.15 e/px per frame on an alignment grid
    8 times smaller; at 4 times smaller (a K3 frame) 0.081 -> 0.084 px, and 0.039 -> 0.040 px at
    0.5 e/px: that 3-4 % is why K3 frames (43 against 90 ms per frame) are not cropped so
    (``benchmarks/bench_block_sums.py``)."""
    return all(p % 2 == 0 and p >= BLOCK_SUM_MIN_RATIO * a
               for p, a in zip(g.padded_in, g.align))
