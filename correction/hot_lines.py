"""Hot and dead lines: whole detector rows or columns that count more, or less, than their
neighbours.

A row or column of a counting detector can stick high: each of its pixels counts a little more
than it should, too little for the per-pixel test of :func:`correction.defects.detect_hot_pixels`
(two of a line pixel's 8 neighbours are on the line too, which raises its expected count), but
summed along the line it stands far out. Left in, it shows as a line in every sum and pulls the
whole-frame alignment towards zero shift (the line does not move with the specimen): measured
on 1024^2 x 30 frames at 0.3 e/px/frame with a column at +1 count/frame, shifts 0.44 px RMS off
against 0.23 px without the line, 0.26 px with the line replaced. A column that died after the
gain reference was taken (the gain does not mark it) reads zero: it left a dark streak in every
sum, smeared over the drift (6-10 robust spreads of the column means below its neighbours).

The test runs on the mean of each line of the movie's gain-corrected sum (a column more
sensitive than its neighbours, which the gain reference corrects, is the detector's pattern,
not a stuck column; :mod:`correction.pipeline` passes no ``gain``). A line is hot when its
mean exceeds the median of the 3 lines on EACH side by more than ``max(sigma, z)`` robust
spreads of the line means about their neighbours' (``z``: the normal quantile of
``false_positives`` over the number of lines, as a Bonferroni bound), dead when it falls below
both by as much and to less than :data:`DEAD_FRACTION` of them (a dead line reads next to
nothing; a dark specimen feature along a detector row, a filament with the drift parallel to
it, stays a feature: a 3-row band at 80 % transmission was taken for a dead row), so an edge of
the specimen or of the illuminated area, which steps up on one side only, is not one, nor is a
feature wider than three lines. More than
:data:`MAX_HOT_FRACTION` of the lines (at least :data:`MAX_HOT_LINES`) standing out is a fixed
pattern of the whole detector (no gain reference, a wrong one; :mod:`correction.detector_pattern`
says so), not hot lines: none are flagged then. Lines mostly excluded already (a defect list's
rectangle) are left out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

from .threads import run_chunks

__all__ = ["HotLines", "detect_hot_lines", "DEAD_FRACTION", "MAX_HOT_FRACTION", "MAX_HOT_LINES"]

MAX_HOT_FRACTION = 0.01  # more lines than this standing out: a fixed pattern, not hot lines
MAX_HOT_LINES = 8  # ... and at least this many
DEAD_FRACTION = 0.5  # a dead line's mean is below this fraction of its neighbours' on each side
_SIDE_LINES = 3  # neighbouring lines on each side the expected mean is taken from
_ROWS_PER_CHUNK_PX = 1 << 20  # pixels of the sum read at once


@dataclass(frozen=True, slots=True)
class HotLines:
    """Hot (``rows``, ``columns``) and dead rows and columns of a frame (indices from 0)."""

    rows: tuple[int, ...] = ()
    columns: tuple[int, ...] = ()
    dead_rows: tuple[int, ...] = ()
    dead_columns: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rows or self.columns or self.dead_rows or self.dead_columns)

    def mask(self, shape_yx: tuple[int, int]) -> np.ndarray:
        """Their pixels, hot and dead, as a boolean image of ``shape_yx``."""
        out = np.zeros(shape_yx, dtype=bool)
        out[list(self.rows + self.dead_rows), :] = True
        out[:, list(self.columns + self.dead_columns)] = True
        return out

    def to_record(self) -> dict[str, list[int]]:
        """The motion record's ``alignment.hot_lines``: ``rows``, ``columns`` and, where there
        are any, ``dead_rows``, ``dead_columns``."""
        return {"rows": list(self.rows), "columns": list(self.columns),
                **({"dead_rows": list(self.dead_rows)} if self.dead_rows else {}),
                **({"dead_columns": list(self.dead_columns)} if self.dead_columns else {})}


def detect_hot_lines(summed_frames: np.ndarray, *, gain: np.ndarray | None = None,
                     exclude: np.ndarray | None = None, sigma: float = 8.0,
                     false_positives: float = 0.01, workers: int = 1) -> HotLines:
    """Rows and columns of ``summed_frames`` (the gain-corrected sum of a movie, as
    :func:`~correction.defects.detect_hot_pixels` takes it) that stand out from their
    neighbours on both sides, above (hot) or below (dead) (module docstring).

    Parameters
    ----------
    summed_frames : ndarray, shape (ny, nx)
    gain : ndarray, shape (ny, nx), optional
        The gain ``summed_frames`` was multiplied by: divided out (pixels with gain <= 0 are
        left out).
    exclude : ndarray of bool, shape (ny, nx), optional
        Pixels known bad (defects, hot pixels), left out of the line means.
    sigma : float
        Least excess, in robust spreads of the line means.
    false_positives : float
        Lines expected to be flagged in a clean image (rows and columns each).
    workers : int
        Threads summing the lines.
    """
    img = np.asarray(summed_frames)
    ny, nx = img.shape
    col_sum = np.zeros(nx, np.float64)
    col_n = np.zeros(nx, np.int64)
    row_sum = np.zeros(ny, np.float64)
    row_n = np.zeros(ny, np.int64)
    lock = threading.Lock()

    def add(y0: int, y1: int) -> None:
        step = max(1, _ROWS_PER_CHUNK_PX // max(1, nx))
        for a in range(y0, y1, step):
            b = min(y1, a + step)
            block = img[a:b].astype(np.float32)
            valid = np.isfinite(block)
            if gain is not None:
                g = gain[a:b]
                valid &= g > 0
                np.divide(block, g, out=block, where=valid)
            if exclude is not None:
                valid &= ~exclude[a:b]
            block[~valid] = 0.0
            row_sum[a:b] = block.sum(axis=1, dtype=np.float64)
            row_n[a:b] = valid.sum(axis=1)
            cols, n = block.sum(axis=0, dtype=np.float64), valid.sum(axis=0)
            with lock:
                col_sum[:] += cols
                col_n[:] += n

    run_chunks(add, ny, workers)
    hot_rows, dead_rows = _outstanding(row_sum, row_n, sigma, false_positives)
    hot_columns, dead_columns = _outstanding(col_sum, col_n, sigma, false_positives)
    return HotLines(rows=hot_rows, columns=hot_columns, dead_rows=dead_rows,
                    dead_columns=dead_columns)


def _outstanding(sums: np.ndarray, counts: np.ndarray, sigma: float, false_positives: float
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Indices of the lines whose mean (``sums / counts``) stands out above (first) and below
    (second) the lines on both sides; lines of which fewer than half the pixels count take the
    mean of their nearest usable neighbour (and are never flagged); the first and last lines are
    compared with their mirror images."""
    n = sums.size
    usable = counts >= 0.5 * counts.max(initial=0)
    if n < 2 * _SIDE_LINES + 1 or usable.sum() < 2 * _SIDE_LINES + 1:
        return (), ()
    index = np.arange(n)
    means = np.interp(index, index[usable], sums[usable] / counts[usable])
    windows = sliding_window_view(np.pad(means, _SIDE_LINES, mode="reflect"),
                                  2 * _SIDE_LINES + 1)  # (n, 7): line j in the middle
    left = np.median(windows[:, :_SIDE_LINES], axis=1)
    right = np.median(windows[:, _SIDE_LINES + 1:], axis=1)
    around = np.median(np.delete(windows, _SIDE_LINES, axis=1), axis=1)
    residual = means - around
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    if not spread > 0:
        return (), ()
    least = max(sigma, float(-special.ndtri(min(0.5, false_positives / n)))) * spread
    hot = usable & (means - np.maximum(left, right) > least)
    dead = usable & (np.minimum(left, right) - means > least) \
        & (means < DEAD_FRACTION * np.minimum(left, right))
    if int(hot.sum() + dead.sum()) > max(MAX_HOT_LINES, MAX_HOT_FRACTION * n):
        return (), ()  # a pattern of the whole detector, not a few stuck lines
    return (tuple(int(i) for i in np.flatnonzero(hot)),
            tuple(int(i) for i in np.flatnonzero(dead)))
