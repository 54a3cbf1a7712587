"""Gain-corrected frames read by rows: the raw sum of a movie (for the hot-pixel search) and
:class:`GainedRows`, the rows of gain-corrected, defect-replaced frames made on demand from the
raw frames, so that no whole gain-corrected frame need exist beside its transform.

A memory-mapped movie over :data:`correction.memory_model.MAPPED_BUDGET_BYTES` has the pages
of the rows it has used dropped (the movie's resident share stays about a frame).
"""

from __future__ import annotations

import threading

import numpy as np

from . import memory_model
from .allocator import drop_mapped_pages as _drop_mapped
from .allocator import zeros_written
from .defects import ReplacementPlan
from .gain import GainReference, gain_corrected_rows
from .summation import frame_mean
from .threads import run_chunks

__all__ = ["sum_raw_frames", "GainedRows"]

_DROP_CHUNK_BYTES = 4 << 20  # rows of each frame dropped together in the raw sum


def sum_raw_frames(frames: np.ndarray, workers: int = 1) -> np.ndarray:
    """Sum of frames as float32 (integer frames are summed exactly in int32 first), the rows
    split over ``workers`` threads (:mod:`correction.threads`)."""
    if frames.dtype.kind in "iub" and frames.dtype.itemsize <= 2 and frames.shape[0] < 32768:
        out = np.empty(frames.shape[1:], np.float32)
        drop = memory_model.mapped_bytes(frames) > memory_model.MAPPED_BUDGET_BYTES
        run_chunks(lambda y0, y1: raw_sum_rows(frames, out, y0, y1, drop), out.shape[0],
                   workers)
        return out
    acc = zeros_written(frames.shape[1:])
    drop = memory_model.mapped_bytes(frames) > memory_model.MAPPED_BUDGET_BYTES
    for frame in frames:
        np.add(acc, frame, out=acc, casting="unsafe")
        if drop:  # a float movie's pages too (2 GB of float32 frames stayed resident)
            _drop_mapped(frame)
    return acc


def raw_sum_rows(frames: np.ndarray, out: np.ndarray, y0: int, y1: int, drop: bool) -> None:
    """Rows ``y0:y1`` of :func:`sum_raw_frames` for integer frames: strips of rows through all
    frames, so that the int32 accumulator stays in cache; the rows' mapped pages dropped as
    they are done when ``drop``."""
    nx = out.shape[1]
    strip = max(1, 65536 // max(1, nx))
    acc = np.empty((strip, nx), np.int32)
    dropped = y0  # rows of every frame whose mapped pages are dropped
    for r0 in range(y0, y1, strip):
        r1 = min(y1, r0 + strip)
        a = acc[:r1 - r0]
        a[...] = frames[0, r0:r1]
        for frame in frames[1:]:
            np.add(a, frame[r0:r1], out=a)
        out[r0:r1] = a
        if drop and ((r1 - dropped) * nx * frames.itemsize >= _DROP_CHUNK_BYTES or r1 == y1):
            for frame in frames:
                _drop_mapped(frame[dropped:r1])
            dropped = r1


class GainedRows:
    """Gain-corrected rows of the frames on demand (a :class:`correction.local_apply.FrameRows`).

    ``(raw - dark) * gain`` on the rows asked for only, with the defects and hot pixels of
    ``plan`` (made on the padded input grid, whose padding holds ``fill``) replaced from their
    planned sources, each source value computed from the raw frame: the same values as
    gain-correcting, padding and replacing the whole frame, at the cost of the rows read.
    """

    def __init__(self, used: np.ndarray, arith: GainReference | None,
                 plan: ReplacementPlan | None, fill: float | None,
                 padded_shape_yx: tuple[int, int]) -> None:
        self.used, self.arith, self.fill = used, arith, fill
        n, ny, nx = used.shape
        self._local = threading.local()  # each thread's row buffer (bands run in threads)
        self._means: dict[int, float] = {}
        self.drop = memory_model.mapped_bytes(used) > memory_model.MAPPED_BUDGET_BYTES
        self.plan = plan if plan is not None and plan.targets.size else None
        if self.plan is not None:
            px = int(padded_shape_yx[1])
            order = np.argsort(self.plan.targets, kind="stable")
            targets = self.plan.targets[order]
            self.t_y, self.t_x = targets // px, targets % px  # all inside the frame
            s_y, s_x = self.plan.sources[order] // px, self.plan.sources[order] % px
            self.inside = (s_y < ny) & (s_x < nx)
            self.src = np.where(self.inside, s_y * nx + s_x, 0)
            self.w = self.plan.weights[order]

    def __len__(self) -> int:
        return int(self.used.shape[0])

    def _gain(self, raw: np.ndarray, window: tuple[slice, slice], out: np.ndarray
              ) -> np.ndarray:
        ref = self.arith
        return gain_corrected_rows(raw, None if ref is None else ref.gain[window],
                                   None if ref is None or ref.dark is None else ref.dark[window],
                                   out)

    def _mean(self, i: int) -> float:
        """Padding value of frame ``i``: ``fill``, else the gain-corrected frame's mean."""
        if self.fill is not None:
            return float(self.fill)
        if i not in self._means:
            frame = self._gain(self.used[i], (slice(None), slice(None)),
                               np.empty(self.used.shape[1:], np.float32))
            self._means[i] = frame_mean(frame)
        return self._means[i]

    def rows(self, i: int, y0: int, y1: int, x0: int = 0, x1: int | None = None, *,
             out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` of gain-corrected frame ``i``: into ``out``
        (float32, that shape) when given, else a buffer the calling thread's next call
        reuses."""
        nx = int(self.used.shape[2])
        x1 = nx if x1 is None else x1
        size = (y1 - y0) * (x1 - x0)
        if out is None:
            buf = getattr(self._local, "buf", None)
            if buf is None or buf.size < size:
                buf = self._local.buf = np.empty(size, np.float32)
            out = buf[:size].reshape(y1 - y0, x1 - x0)
        window = (slice(y0, y1), slice(x0, x1))
        out = self._gain(self.used[i][window], window, out)
        if self.plan is not None:
            lo, hi = np.searchsorted(self.t_y, [y0, y1])
            picked: slice | np.ndarray = slice(lo, hi)
            if hi > lo and (x0 > 0 or x1 < nx):  # the targets in the window's columns
                picked = lo + np.flatnonzero((self.t_x[lo:hi] >= x0) & (self.t_x[lo:hi] < x1))
            if self.t_y[picked].size:
                src = self.src[picked]
                raw = np.asarray(self.used[i]).reshape(-1)[src]
                ref = self.arith
                if ref is None:
                    values = raw.astype(np.float32)
                elif ref.dark is not None:
                    values = ((raw - ref.dark.reshape(-1)[src]) * ref.gain.reshape(-1)[src]
                              ).astype(np.float32)
                else:
                    values = (raw * ref.gain.reshape(-1)[src]).astype(np.float32)
                inside = self.inside[picked]
                if not inside.all():
                    values[~inside] = self._mean(i)
                out[self.t_y[picked] - y0, self.t_x[picked] - x0] = np.einsum(
                    "ij,ij->i", values, self.w[picked], dtype=np.float64)
        if self.drop and x1 == nx:  # the rows' last columns: their pages are done with, and
            # those of the row above, which the replaced pixels' sources may have read again
            # (after the rows' pages were dropped, a super-resolution movie of 60 frames with
            # hot pixels stayed resident: 6.9 GB)
            _drop_mapped(self.used[i, max(0, y0 - 1):y1])
        return out
