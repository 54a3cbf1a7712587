"""Apply global + local motion in every sum by tile-wise Fourier shifts blended smoothly.

Design
    The output frame is covered by square tiles on a ``tile_px`` stride, each ``tile_px + 2 *
    tile_overlap_px`` wide (rounded up to a fast FFT length). For every frame and tile the
    total displacement at the tile's core centre, ``global + local``, is split into an integer
    part, taken by cutting the input tile at the displaced position (exact; no wrap-around of
    content from the opposite edge of the frame; pixels outside the frame read as the frame's
    mean), and a fractional part (at most half a pixel), applied exactly as a Fourier phase
    ramp. The frame is processed in bands of tile rows: for each band, every frame's tiles
    are transformed in one batched FFT and the plain sum and the dose-weighted sums of the
    even and of the odd frames are accumulated per tile in Fourier space (dose weights
    evaluated on the tile's frequency grid; the dose-weighted sum of all frames is even + odd,
    so three sets of accumulators), then batched inverse FFTs give the band's tiles of the
    four sums. One band's accumulators stay in cache over the frames, and the memory beyond
    the four images is one band's, whatever the frame count (before, accumulators for the
    whole frame were streamed from memory once per frame: 9 sets with the first-order term,
    about 0.8 GB at 4K). Neighbouring tiles are blended with separable
    raised-cosine weights that sum to one (a partition of unity) over the overlap, and are zero
    on the outermost ``_MARGIN_PX`` pixels of each tile, where the circular sub-pixel shift
    wraps.

Within a tile the field is not constant
    A constant shift per tile errs by (field gradient x distance from the tile centre): 0.9 px
    at the corners of a 512-px tile for a 10-px corner field at 4K, and blending two tiles
    that disagree by that much blurs the seams. :func:`plan_tiles` sizes the tiles from the
    field's largest gradient. Weak fields get constant shifts on tiles small enough that the
    gradient leaves at most 0.03 px (with the field's curvature and the blending, measured
    below: 0.037 px for a 1-px field at 4K). Strong fields get, in addition, the first-order
    term of the displacement within each tile, ``d(q) - d(c) ~ J (q - c)`` with ``J`` the
    field's Jacobian at the tile centre ``c``: ``F(q + d(c) + J (q - c)) ~ S(q) + sum_b
    (q - c)_b sum_a J_ab dS/dq_a`` where ``S`` is the tile shifted by ``d(c)``. The
    derivative is exact (spectral) and linear in the frames: ``G_b = sum_a i k_a H_ab`` with
    ``H_ab = sum_i J_i,ab S_i``, so the four ``H_ab`` are accumulated in Fourier space
    beside each sum, ``G_b`` is formed once per band, and its inverse FFT is multiplied by
    ``(q - c)_b``. For each tile, a group of
    frames' shifted spectra is one matrix (frames x frequencies) and a sum family's ``S`` and
    four ``H_ab`` are one matrix product with the frames' coefficients (1 and ``J_i,ab``;
    BLAS ``sgemm``): each spectrum is read once per family, not once per sum (13 passes per
    frame and tile before: a one-D ramp product, the multiply, ten BLAS ``saxpy``/adds and the
    dose weights; ``local_sums`` 4096^2 x 10 with a 3-px field on 2 threads 1.69-1.99 ->
    1.51-1.60 s, 4092 x 5760 x 24 4.6-6.9 -> 3.6-6.1 s, same runs alternated). Tiles are sized so that ``|J (q - c)| <= 0.4`` px, where the
    first-order term leaves at most about ``|d|^3 k^2 / 3`` px of displacement error at
    spatial frequency ``k`` (rad/px) and ``0.5 |H| |q - c|^2`` (below 0.01 px) from the
    field's curvature ``H``. Measured (``benchmarks/bench_local.py``, true field applied to a
    noise-free 4K render, residual displacement in 32-px windows): at most 0.030 px (RMS
    0.0035 px) with the first-order term for 3-10 px corner fields, 0.037 px with constant
    shifts on 128-px tiles for a 1 px field, against 0.09-0.78 px for constant shifts on
    512-px tiles. Cost at 4K x 10 frames (``bench_local.py``, ``local_apply_s`` against
    ``global_only_apply_s``): 2.0 s against 1.3 s for a 3-px field (464-px tiles), 2.8 s
    against 1.4 s for a 10-px field (176-px tiles): four more accumulators per sum and five
    inverse passes instead of two; the whole ``correct`` with a 3-px field measures 2.2-2.4x
    the floor of ``benchmarks/bench_correct.py`` on the shared 2-core machine.

Why this and not interpolation
    A Fourier shift keeps every spatial frequency (bilinear interpolation loses about a third
    of the power at half Nyquist; a cubic spline with prefilter costs about 2.3 s per 4K
    frame here, more than the whole tile path). With no local motion the result equals the
    global Fourier-shift sums of whole frames, except at Nyquist, where a fractional shift is
    ambiguous and each grid size resolves it its own way, and where a tile's periodic shift
    meets its blending band: on shot noise the difference below 0.8 Nyquist is 0.3 % of the
    noise (``tests/correction/test_memory_model.py``); with integer shifts the two are equal
    to float rounding.

Conventions: shifts per :mod:`correction.conventions`; dose weighting and its normalisation per
:mod:`correction.dose` (``sqrt(n) * sum w F / sqrt(sum w^2)`` over the frames of each sum).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.fft

from .allocator import zeros_written
from .dose import dose_weights, relative_frame_doses, weight_normalisation
from .fourier import fast_length, irfft2, radial_frequency_sq, rfft2
from .summation import frame_mean
from .threads import thread_count

__all__ = ["TileLayout", "TilePlan", "LocalSums", "DisplacementField", "FrameRows",
           "default_tile_px",
           "tile_layout", "field_jacobian", "plan_tiles", "local_sums", "band_scratch_bytes"]

_MARGIN_PX = 3  # outer pixels of a tile that get zero weight (circular-shift wrap)
_PRODUCT_BYTES = 8 << 20  # one family's matrix product for one tile (5 spectra of <= 576 px)
_GROUP_BYTES = 32 << 20  # tile spectra of a group of frames, per thread (summed tile by tile)
_CONSTANT_ERROR_PX = 0.03  # largest residual the gradient leaves a constant shift per tile
_TAYLOR_RESIDUAL_PX = 0.4  # largest residual the first-order (gradient) term takes up
_TAYLOR_OVERLAP_PX = 8
_MIN_TAYLOR_TILE_PX = 48  # smallest core with the first-order term
_MIN_CONSTANT_TILE_PX = 128  # below this, the first-order term is cheaper than more tiles
_TILE_OVERHEAD_PX = 4096  # a tile's fixed cost per frame (ramps, calls), in pixels of work
_JACOBIAN_STEP_PX = 8.0
_N_JACOBIAN = 4  # terms J[a, b] of the field's Jacobian (a, b = y, x), index 2 a + b
_BAND_ROWS_PX = 128  # frame rows per band (whole tile rows): its accumulators stay in cache
_BAND_ACC_BYTES = 32 << 20  # accumulators of one band of large tiles (a segment of a tile row)
_BLOCK_BYTES = 256 << 20  # float32 frames read at once from a plain sequence of frames


class DisplacementField(Protocol):
    """Anything that gives displacements ``[dy, dx]`` of shape ``(n_frames,) + S + (2,)`` at
    output positions of shape ``S`` (e.g. :class:`~correction.align_local.LocalMotionModel`)."""

    def displacement_yx_px(self, y: np.ndarray, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class TileLayout:
    """Square tiles covering a frame, with blending weights that sum to one.

    Attributes
    ----------
    shape_yx : (int, int)
        Frame shape.
    tile_size : int
        Side of every tile (pixels; an FFT-friendly length).
    origins_yx : ndarray, shape (n_tiles, 2), int
        Top-left corner of each tile in frame pixels (may be negative or run past the edge).
    centres_yx : ndarray, shape (n_tiles, 2), float
        Centre of each tile's core (the part it mostly owns), clipped to the frame.
    weights_y, weights_x : ndarray, shape (n_tiles, tile_size), float32
        Separable blending weights of each tile.
    n_tiles_yx : (int, int)
        Tiles along y and x (tiles are in row-major order, y slow).
    core_px, overlap_px : int
        Tile stride and the overlap per side (tile ``k`` starts at ``k * core - overlap``).
    """

    shape_yx: tuple[int, int]
    tile_size: int
    origins_yx: np.ndarray
    centres_yx: np.ndarray
    weights_y: np.ndarray
    weights_x: np.ndarray
    n_tiles_yx: tuple[int, int] = (0, 0)
    core_px: int = 0
    overlap_px: int = 0


def _axis_tiles(length: int, core: int, size: int, overlap: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origins, core centres and weights of the tiles along one axis."""
    n_t = max(1, int(np.ceil(length / core)))
    origins = np.arange(n_t) * core - overlap
    centres = np.array([(k * core + min(length, (k + 1) * core)) / 2.0 - 0.5
                        for k in range(n_t)])
    half = overlap - _MARGIN_PX  # half-width of the blending ramp around each boundary
    weights = np.ones((n_t, size))
    for k in range(n_t):
        p = origins[k] + np.arange(size) + 0.5  # pixel centres (continuous coordinate)
        w = np.ones(size)
        if k > 0:
            b = k * core
            w *= np.clip((p - (b - half)) / (2 * half), 0.0, 1.0)
        if k < n_t - 1:
            b = (k + 1) * core
            w *= 1.0 - np.clip((p - (b - half)) / (2 * half), 0.0, 1.0)
        # raised cosine of the linear ramp keeps the partition of unity (sin^2 + cos^2)
        weights[k] = np.where((w > 0) & (w < 1), 0.5 - 0.5 * np.cos(np.pi * w), w)
        weights[k, :_MARGIN_PX] = np.where(k > 0, 0.0, weights[k, :_MARGIN_PX])
        weights[k, size - _MARGIN_PX:] = np.where(k < n_t - 1, 0.0, weights[k, size - _MARGIN_PX:])
    return origins, centres, weights.astype(np.float32)


def tile_layout(shape_yx: tuple[int, int], *, tile_px: int = 512, overlap_px: int = 32
                ) -> TileLayout:
    """Tiles of core ``tile_px`` and ``overlap_px`` extra pixels per side covering a frame."""
    ny, nx = (int(v) for v in shape_yx)
    size = fast_length(tile_px + 2 * overlap_px)
    oy, cy, wy = _axis_tiles(ny, tile_px, size, overlap_px)
    ox, cx, wx = _axis_tiles(nx, tile_px, size, overlap_px)
    iy, ix = np.meshgrid(np.arange(len(oy)), np.arange(len(ox)), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    return TileLayout((ny, nx), size, np.column_stack([oy[iy], ox[ix]]),
                      np.column_stack([cy[iy], cx[ix]]), wy[iy], wx[ix],
                      (len(oy), len(ox)), int(tile_px), int(overlap_px))


def default_tile_px(shape_yx: tuple[int, int]) -> int:
    """Tile core scale for a frame: about an eighth of the short side, a power of two in
    128-512; :func:`plan_tiles` considers cores up to 1/16 above it.

    The shift is constant within a tile (up to the first-order term), so the tile must be small
    against the scale on which the local field changes (the whole frame): an 8 x 8 grid keeps
    the within-tile error near 0.02 px RMS for a 3 px corner field, while 512-pixel tiles keep
    the FFT overhead of the overlaps at about a quarter.
    """
    short = max(1, min(int(v) for v in shape_yx))
    return int(np.clip(2 ** int(np.round(np.log2(max(short / 8, 1)))), 128, 512))


def field_jacobian(field: DisplacementField, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Spatial derivatives of a displacement field by central differences.

    Returns
    -------
    ndarray, shape (n_frames,) + S + (2, 2), float64
        ``J[..., a, b] = d(displacement_a) / d(position_b)`` (a, b = y, x), dimensionless.
        Exact for fields of degree <= 2 (the default local model).
    """
    h = _JACOBIAN_STEP_PX
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    d_dy = (field.displacement_yx_px(y + h, x) - field.displacement_yx_px(y - h, x)) / (2 * h)
    d_dx = (field.displacement_yx_px(y, x + h) - field.displacement_yx_px(y, x - h)) / (2 * h)
    return np.stack([d_dy, d_dx], axis=-1)


@dataclass(frozen=True, slots=True)
class TilePlan:
    """How :func:`local_sums` applies a field: tiles and whether the gradient term is on.

    Attributes
    ----------
    tile_px : int
        Tile core (pixels).
    overlap_px : int
        Extra pixels on each side of the core (the blending band).
    taylor : bool
        True: within each tile the displacement is the exact shift at the core centre plus a
        first-order (gradient) term; False: a constant shift per tile.
    max_gradient : float
        Largest spectral norm of the field's Jacobian over the frame and the frames (px/px).
    bound_px : float
        Largest displacement difference between a tile's centre and any pixel it weights
        (``max_gradient`` times that distance): the error of a constant shift, or the
        residual the first-order term takes up when ``taylor``.
    """

    tile_px: int
    overlap_px: int
    taylor: bool
    max_gradient: float
    bound_px: float


def _default_overlap_px(tile_px: int) -> int:
    return max(16, tile_px // 16)


def _reach_px(tile_px: int, overlap_px: int) -> float:
    """Farthest distance from a tile's core centre to a pixel it gives weight to."""
    return (tile_px / 2.0 + overlap_px) * np.sqrt(2.0)


def _tile_work(shape_yx: tuple[int, int], core: int, overlap: int) -> float:
    """Work of one frame's tiles: their pixels (each transformed and accumulated) plus a fixed
    cost per tile, for cores of ``core`` px and ``overlap`` px per side."""
    size = fast_length(core + 2 * overlap)
    n_tiles = int(np.ceil(shape_yx[0] / core)) * int(np.ceil(shape_yx[1] / core))
    return n_tiles * (size * size + _TILE_OVERHEAD_PX)


def _quick_tile(size: int) -> bool:
    """A tile length that transforms fast per pixel: 2, 3, 5-smooth with a factor 16 and at
    most 3^2 (measured here, one thread, batches of tiles: 512, 480, 576, 400 and 384 px within
    3 % of each other; 540 = 2^2 3^3 5, 500 and 432 = 2^4 3^3 about 8 % slower per pixel)."""
    return fast_length(size) == size and size % 16 == 0 and size % 27 != 0


def _least_work(shape_yx: tuple[int, int], cores: list[int], overlap_of) -> int | None:
    """The core of ``cores`` whose tiles cost least (:func:`_tile_work`; the larger core on a
    tie); None for no cores."""
    if not cores:
        return None
    return min(cores, key=lambda c: (_tile_work(shape_yx, c, overlap_of(c)), -c))


def plan_tiles(field: DisplacementField | None, shape_yx: tuple[int, int]) -> TilePlan:
    """Choose the tiles from the field's largest gradient, and among those the cheapest.

    A constant shift per tile leaves an error of (gradient x distance from the tile's centre).
    When a core of at least 128 px keeps that below 0.03 px (fields up to about 1 px at the
    corners of a 4K frame), tiles get constant shifts. Otherwise the displacement within a
    tile must stay within 0.4 px of its centre's, and that departure is applied to first order
    (``F(q + d) ~ F(q) + d . grad F(q)`` with the exact spectral gradient, accumulated over
    the frames in Fourier space), with an 8-px overlap (the two tiles of a seam agree to the
    first order, so a narrow blending band suffices). The error left at spatial frequency k
    (rad/px) is at most about ``|d|^3 k^2 / 3``; measured on the blob specimen (windows of
    32 px, noise-free, ``tests/correction/test_local_apply.py`` and
    ``benchmarks/bench_local.py``), it stays below 0.035 px everywhere.

    Among the cores that keep their bound (at most :func:`default_tile_px` + 1/16, tiles of
    a length that transforms fast, :func:`_quick_tile`), the one whose tiles hold the fewest
    pixels (plus a fixed cost per tile) is taken: a frame is rarely a multiple of the largest
    core, and the tiles of its last row and column lie mostly outside it. With a 3-px field the
    first-order tiles hold 1.11 times the frame's pixels at 4096^2 instead of 1.27 (81 tiles of
    480 px instead of 512), and 1.12 instead of 1.20 at 5760 x 4092 (165 of 400 px instead of
    108 of 512): 4-6 % less time in the local sums here.
    """
    base = default_tile_px(shape_yx)
    cap = base + base // 16
    constant = [c for c in range(_MIN_CONSTANT_TILE_PX, max(cap, _MIN_CONSTANT_TILE_PX) + 1, 2)
                if _quick_tile(c + 2 * _default_overlap_px(c))]
    if field is None:  # no error to bound: the cheapest constant-shift tiles
        core = _least_work(shape_yx, constant, _default_overlap_px)
        return TilePlan(core, _default_overlap_px(core), False, 0.0, 0.0)
    ny, nx = (int(v) for v in shape_yx)
    y, x = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 9), indexing="ij")
    jac = field_jacobian(field, y, x)
    gradient = float(np.max(np.linalg.norm(jac, ord=2, axis=(-2, -1)))) if jac.size else 0.0
    constant = [c for c in constant
                if gradient * _reach_px(c, _default_overlap_px(c)) <= _CONSTANT_ERROR_PX]
    core = _least_work(shape_yx, constant, _default_overlap_px)
    if core is not None:
        overlap = _default_overlap_px(core)
        return TilePlan(core, overlap, False, gradient, gradient * _reach_px(core, overlap))
    # first-order term: cores whose tile (core + 2 x 8 px) is an FFT-friendly length
    overlap = _TAYLOR_OVERLAP_PX
    friendly = [c for c in range(_MIN_TAYLOR_TILE_PX, max(cap, _MIN_TAYLOR_TILE_PX) + 1, 2)
                if _quick_tile(c + 2 * overlap)]
    bounded = [c for c in friendly if gradient * _reach_px(c, overlap) <= _TAYLOR_RESIDUAL_PX]
    core = _least_work(shape_yx, bounded, lambda c: overlap) or _MIN_TAYLOR_TILE_PX
    return TilePlan(core, overlap, True, gradient, gradient * _reach_px(core, overlap))


@dataclass(frozen=True, slots=True)
class LocalSums:
    """The four motion-corrected sums (float32, shape (ny, nx)).

    Attributes
    ----------
    plain : sum of all frames, no weighting
    dose_weighted : dose-weighted sum of all frames
    even, odd : dose-weighted sums of frames 0, 2, 4 ... and 1, 3, 5 ... (0-based)
    """

    plain: np.ndarray
    dose_weighted: np.ndarray
    even: np.ndarray
    odd: np.ndarray


def _cut_tiles(frame: np.ndarray, origins: np.ndarray, size: int, fill: float,
               out: np.ndarray) -> None:
    """Copy ``size``-square windows of ``frame`` at ``origins`` into ``out`` (float32)."""
    ny, nx = frame.shape
    for t, (oy, ox) in enumerate(origins):
        y0, y1 = max(oy, 0), min(oy + size, ny)
        x0, x1 = max(ox, 0), min(ox + size, nx)
        if y0 == oy and x0 == ox and y1 == oy + size and x1 == ox + size:
            out[t] = frame[y0:y1, x0:x1]
            continue
        out[t].fill(fill)
        if y1 > y0 and x1 > x0:
            out[t, y0 - oy:y1 - oy, x0 - ox:x1 - ox] = frame[y0:y1, x0:x1]


class FrameRows(Protocol):
    """Frames read a band of rows at a time (e.g. gain-corrected on access)."""

    def __len__(self) -> int: ...

    def rows(self, i: int, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` (default to the last) of frame ``i`` (shape
        ``(y1 - y0, x1 - x0)``, any real dtype); may be a buffer that the next call from the
        same thread overwrites. Called from several threads at once (one per band being
        processed)."""
        ...


def _tile_rows_per_band(core: int) -> int:
    """Tile rows per band: about ``_BAND_ROWS_PX`` frame rows (at least one tile row)."""
    return max(1, int(round(_BAND_ROWS_PX / core)))


def _bands(n_ty: int, n_tx: int, rows_per_band: int, acc_bytes_per_tile: int
           ) -> list[tuple[int, int, int, int]]:
    """Bands of tiles ``(ty0, ty1, tx0, tx1)`` (tile rows, tile columns, ends excluded).

    Several whole tile rows per band for small tiles; a row of large tiles is cut into
    segments of about equal width whose accumulators fit ``_BAND_ACC_BYTES``. Either way a
    band's tiles are consecutive in the row-major tile order.
    """
    if rows_per_band > 1:
        return [(ty, min(n_ty, ty + rows_per_band), 0, n_tx)
                for ty in range(0, n_ty, rows_per_band)]
    per_band = max(1, _BAND_ACC_BYTES // max(1, acc_bytes_per_tile))
    segments = np.array_split(np.arange(n_tx), -(-n_tx // per_band))
    return [(ty, ty + 1, int(seg[0]), int(seg[-1]) + 1) for ty in range(n_ty) for seg in segments]


def _band_tiles(band: tuple[int, int, int, int], n_tx: int) -> tuple[int, int]:
    """First and end index of a band's tiles in the row-major tile order."""
    ty0, ty1, tx0, tx1 = band
    return ty0 * n_tx + tx0, (ty1 - 1) * n_tx + tx1


class _RowSource:
    """Uniform band access to the frames: an array's rows are views, a :class:`FrameRows`
    computes them, any other sequence is read frame by frame into blocks of float32 frames
    that fit ``block_bytes`` (each frame read once)."""

    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray | FrameRows, n: int,
                 shape_yx: tuple[int, int], fill: float | np.ndarray | None,
                 block_bytes: int = _BLOCK_BYTES) -> None:
        self.frames, self.n, self.shape_yx = frames, n, shape_yx
        ny, nx = shape_yx
        if isinstance(frames, np.ndarray):
            if frames.shape[1:] != (ny, nx):
                raise ValueError(f"frames have shape {frames.shape[1:]}, expected {(ny, nx)}")
            self.kind = "array"
        elif hasattr(frames, "rows"):
            self.kind = "rows"
        else:
            self.kind = "sequence"
        per_block = max(1, int(block_bytes) // max(1, ny * nx * 4))
        self.blocks = ([(0, n)] if self.kind != "sequence" else
                       [(b, min(n, b + per_block)) for b in range(0, n, per_block)])
        self.fill = fill
        self.values = (np.zeros(n) if fill is None else  # one value for all frames, or one each
                       np.broadcast_to(np.asarray(fill, dtype=np.float64), (n,)).copy())
        self._block: list[np.ndarray] = []
        self._block_start = 0
        if fill is None and self.kind != "sequence":  # each frame's mean, one pass
            for i in range(n):
                self.values[i] = frame_mean(self._rows(i, 0, ny))

    def load_block(self, i0: int, i1: int) -> None:
        """Read frames ``i0:i1`` of a plain sequence (no-op for arrays and row sources)."""
        if self.kind != "sequence":
            return
        self._block = []
        fresh = getattr(self.frames, "fresh_frames", False)
        for i in range(i0, i1):
            # a copy, as sources may reuse their buffers, unless each frame is a new array
            frame = (np.asarray(self.frames[i], dtype=np.float32) if fresh else
                     np.array(self.frames[i], dtype=np.float32))
            if frame.shape != self.shape_yx:
                raise ValueError(f"frame {i} has shape {frame.shape}, expected {self.shape_yx}")
            if self.fill is None:
                self.values[i] = frame_mean(frame)
            self._block.append(frame)
        self._block_start = i0

    def _rows(self, i: int, y0: int, y1: int, x0: int = 0, x1: int | None = None
              ) -> np.ndarray:
        if self.kind == "array":
            return self.frames[i, y0:y1, x0:x1]
        if self.kind == "rows":
            return self.frames.rows(i, y0, y1, x0, x1)
        return self._block[i - self._block_start][y0:y1, x0:x1]

    def cut(self, i: int, origins: np.ndarray, size: int, out: np.ndarray) -> None:
        """Tiles of frame ``i`` at ``origins`` (frame pixels) into ``out``; outside: fill."""
        ny, nx = self.shape_yx
        y0 = int(np.clip(origins[:, 0].min(), 0, ny))
        y1 = int(np.clip(origins[:, 0].max() + size, 0, ny))
        x0 = int(np.clip(origins[:, 1].min(), 0, nx))
        x1 = int(np.clip(origins[:, 1].max() + size, 0, nx))
        if y1 <= y0 or x1 <= x0:
            out.fill(self.values[i])
            return
        band = self._rows(i, y0, y1, x0, x1)
        # pixels outside the window are outside the frame (it spans all the tiles' pixels
        # inside the frame)
        _cut_tiles(band, origins - np.array([y0, x0]), size, float(self.values[i]), out)


def band_scratch_bytes(shape_yx: tuple[int, int], workers: int = -1) -> int:
    """Upper bound of the working memory of :func:`local_sums` beyond its four images (bytes).

    Per thread: a group of frames' shifted tile spectra (``_GROUP_BYTES``), one family's
    matrix product for a tile (``_PRODUCT_BYTES``), and one band. A band of large tiles is a
    segment of a tile row whose accumulators fit ``_BAND_ACC_BYTES`` (fifteen half spectra,
    60 bytes per tile pixel, with the first-order term; three, 12 bytes, without), with 12
    bytes per tile pixel of cut tiles, gain-corrected rows and one frame's tile spectra before
    they are shifted into the group: at most twice that budget. A band of small tiles is whole
    tile rows of about ``_BAND_ROWS_PX`` rows (at most 160 rows, 1.8 tile pixels per frame
    pixel with the overlaps, 72 bytes each). None of it grows with the frame count.
    """
    large_band = 2 * _BAND_ACC_BYTES
    small_band = 72 * int(160 * 1.8 * int(shape_yx[1]))
    per_thread = _GROUP_BYTES + _PRODUCT_BYTES + max(large_band, small_band)
    return int(thread_count(workers) * per_thread)


@dataclass(slots=True)
class _BandScratch:
    """One thread's buffers for the bands it processes (reused band after band)."""

    tiles: np.ndarray   # (max_band, size, size) float32: the cut tiles of one frame
    products: np.ndarray  # (1 + 4, size * (size // 2 + 1) * 2) float32: one family's product
    accs: np.ndarray    # (n_acc, max_band, size, size // 2 + 1) complex64: the band's sums

    @classmethod
    def make(cls, max_band: int, size: int, n_acc: int) -> _BandScratch:
        half = size // 2 + 1
        return cls(np.empty((max_band, size, size), np.float32),
                   np.empty((1 + _N_JACOBIAN, 2 * size * half), np.float32),
                   np.empty((n_acc, max_band, size, half), np.complex64))


@dataclass(frozen=True, slots=True)
class _FramesOf:
    """Frames ``first:first + n`` of a field of the whole movie."""

    field: DisplacementField
    first: int
    n: int

    def displacement_yx_px(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.field.displacement_yx_px(y, x)[self.first:self.first + self.n]


def _frames_of(field: DisplacementField, first: int, n: int, n_movie: int
               ) -> DisplacementField:
    """``field`` for ``n`` frames from ``first``: as it is when it has ``n`` frames, else its
    frames ``first:first + n`` when it has the movie's ``n_movie``."""
    frames = field.displacement_yx_px(np.zeros(1), np.zeros(1)).shape[0]
    if frames == n_movie and n < n_movie:
        return _FramesOf(field, first, n)
    if frames == n:
        return field
    raise ValueError(f"the local model has {frames} frames: neither these {n} nor the "
                     f"movie's {n_movie}")


def local_sums(frames: Sequence[np.ndarray] | np.ndarray | FrameRows,
               global_shifts_yx_px: np.ndarray,
               model: DisplacementField | None, *, pixel_size_A: float,
               dose_end_e_A2: np.ndarray, voltage_kV: float = 300.0,
               tile_px: int | None = None, overlap_px: int | None = None,
               fill: float | np.ndarray | None = None,
               shape_yx: tuple[int, int] | None = None, taylor: bool | None = None,
               workers: int = -1, first_frame: int = 0,
               movie_dose_end_e_A2: np.ndarray | None = None,
               movie_frame_dose_e_A2: np.ndarray | None = None,
               add_to: LocalSums | None = None,
               block_bytes: int | None = None) -> LocalSums:
    """Motion-corrected plain, dose-weighted, even and odd sums with global + local shifts.

    The frame is processed in bands of tile rows (about ``_BAND_ROWS_PX`` rows): for each band
    every frame's rows are cut into tiles and accumulated into the band's spectra, which are
    then transformed back and blended into the four images. The accumulators of one band stay
    in the processor's cache over all frames, and memory beyond the four images and the frames
    is that of one band, whatever the frame count. A plain sequence of frames (no rows access)
    is read in blocks of frames that fit ``block_bytes``; with more than one block the parts
    of each sum (``S``, and ``G_y``, ``G_x`` with the first-order term) are kept for all
    bands, each block's added to them.

    The sums of a movie can be made in parts (consecutive frames, each call given the
    movie's doses, where its frames start, and the sums of the parts before): each sum's
    normalisation and the parity of its frames are the movie's, so the parts add up to the
    sums of all frames at once (to float rounding).

    Parameters
    ----------
    frames : ndarray (n_frames, ny, nx), a :class:`FrameRows`, or a sequence of (ny, nx) arrays
        Gain-corrected frames (any real dtype; cut into float32 tiles). A :class:`FrameRows`
        is asked for each band's rows of each frame; a plain sequence is read once per frame,
        in order, so it may produce frames lazily.
    global_shifts_yx_px : ndarray, shape (n_frames, 2)
        Global displacements (output px, :mod:`correction.conventions`).
    model : LocalMotionModel or DisplacementField or None
        Local displacement field added to the global shifts; None = global only.
    pixel_size_A : float
        Pixel size in Å (for the dose weights' spatial frequencies).
    dose_end_e_A2 : ndarray, shape (n_frames,)
        Accumulated dose at the end of each frame, pre-exposure included (e/Å²).
    voltage_kV : float
    tile_px, overlap_px : int, optional
        Tile core and overlap per side (pixels); default from :func:`plan_tiles` (the
        field's gradient) and ``max(16, tile_px // 16)``.
    fill : float or ndarray of shape (n_frames,), optional
        Value read outside the frame: one for all frames or one per frame; default each
        frame's mean (one more pass over the frames when they are not a plain sequence).
    shape_yx : (int, int), optional
        Frame shape; needed only when ``frames`` has no ``shape``.
    taylor : bool, optional
        Apply the first-order (gradient) term of the field within each tile; default from
        :func:`plan_tiles`. Ignored without a model.
    workers : int
        Threads for :mod:`scipy.fft`.
    first_frame : int
        Index of ``frames[0]`` in the movie (even/odd are the movie's 0-based indices).
    movie_dose_end_e_A2 : ndarray, optional
        Accumulated dose at the end of every frame of the movie (default: these frames); the
        dose weights' normalisation of each sum is taken over the movie's frames of that sum.
        ``dose_end_e_A2`` must be its part from ``first_frame``. A model of the movie's
        frames is read from ``first_frame`` on.
    movie_frame_dose_e_A2 : ndarray, optional
        Each of those frames' own dose (e/Å²): frames of unequal dose count by it in the
        normalisation (:mod:`correction.dose`); default equal.
    add_to : LocalSums, optional
        Sums of the movie's other parts: this part's are added into them (and returned).
    block_bytes : int, optional
        Frames of a plain sequence read at once (default ``_BLOCK_BYTES``); all frames in one
        block keep no parts across blocks.

    Returns
    -------
    LocalSums
        Each sum has the frame's shape, float32. Even/odd are 0-based frame indices.
    """
    n = len(frames)
    ny, nx = (int(v) for v in (shape_yx if shape_yx is not None else frames.shape[1:]))
    g = np.asarray(global_shifts_yx_px, dtype=np.float64).reshape(n, 2)
    dose_end = np.asarray(dose_end_e_A2, dtype=np.float64).reshape(n)
    first = int(first_frame)
    movie_dose = (dose_end if movie_dose_end_e_A2 is None else
                  np.asarray(movie_dose_end_e_A2, dtype=np.float64).ravel())
    if first < 0 or first + n > movie_dose.size or \
            not np.allclose(movie_dose[first:first + n], dose_end, rtol=1e-12, atol=0):
        raise ValueError(f"frames {first}..{first + n - 1}: their doses are not the movie's "
                         f"from frame {first} ({movie_dose.size} frames)")
    plan = plan_tiles(model, (ny, nx))  # the movie's field: every part gets the same tiles
    if model is not None:
        model = _frames_of(model, first, n, movie_dose.size)
    taylor = plan.taylor if taylor is None else bool(taylor and model is not None)
    if tile_px is None:
        tile_px = plan.tile_px
        if overlap_px is None:
            overlap_px = plan.overlap_px
    tile_px = int(tile_px)
    overlap_px = _default_overlap_px(tile_px) if overlap_px is None else int(overlap_px)
    layout = tile_layout((ny, nx), tile_px=tile_px, overlap_px=overlap_px)
    size, core = layout.tile_size, layout.core_px
    shape_t = (size, size)
    n_tiles = len(layout.origins_yx)
    n_ty, n_tx = layout.n_tiles_yx
    source = _RowSource(frames, n, (ny, nx), fill,
                        _BLOCK_BYTES if block_bytes is None else int(block_bytes))

    shifts = np.broadcast_to(g[:, None, :], (n, n_tiles, 2)).copy()
    if model is not None:
        shifts += model.displacement_yx_px(layout.centres_yx[:, 0], layout.centres_yx[:, 1])
    whole = np.round(shifts).astype(np.int64)
    frac = shifts - whole
    # jacobian[i, t, a, b] = d(displacement_a) / d(position_b) at tile t's core centre
    jacobian = (field_jacobian(model, layout.centres_yx[:, 0], layout.centres_yx[:, 1])
                .astype(np.float32) if taylor else None)
    # J_i[a, b] of each frame and tile as (n, n_tiles, 4), index 2 a + b
    jacobian_flat = jacobian.reshape(n, n_tiles, _N_JACOBIAN) if taylor else None

    k_per_A = np.sqrt(radial_frequency_sq(shape_t, scale_yx=(pixel_size_A, pixel_size_A)))
    even = (first + np.arange(n)) % 2 == 0  # the movie's parity
    half_t = (size, size // 2 + 1)
    # real weights interleaved (each value twice) to scale complex64 viewed as float32 pairs
    weights = np.repeat(dose_weights(k_per_A, dose_end, voltage_kV,  # relative: no underflow
                                     reference_dose_e_A2=movie_dose[0]).astype(np.float32), 2,
                        axis=-1)  # (n, T, 2 * (T // 2 + 1))

    def norm2(selected: np.ndarray) -> np.ndarray | None:
        # sqrt(n / sum w^2) over the movie's frames of this sum (correction.dose), interleaved
        if not selected.any():
            return None
        norm = weight_normalisation(k_per_A, movie_dose[selected], voltage_kV,
                                    reference_dose_e_A2=movie_dose[0],
                                    frame_dose_e_A2=own_dose[selected])
        return np.repeat(norm.astype(np.float32), 2, axis=-1)

    own_dose = relative_frame_doses(movie_frame_dose_e_A2, movie_dose.size)
    movie_even = np.arange(movie_dose.size) % 2 == 0
    norms = {"dw": norm2(np.ones(movie_dose.size, bool)), "even": norm2(movie_even),
             "odd": norm2(~movie_even)}
    two_pi = 2.0 * np.pi / size
    k_y = np.fft.fftfreq(size, d=1.0 / size)  # integer frequencies of the tile
    k_x = np.arange(size // 2 + 1, dtype=np.float64)
    # derivative factors (radians per pixel); zero at Nyquist, where the derivative of a
    # real sampled signal is undefined
    d_y = two_pi * k_y
    d_x = two_pi * k_x
    if size % 2 == 0:
        d_y[size // 2] = 0.0
        d_x[-1] = 0.0
    # k_a as real factors interleaved for complex64 viewed as float32 pairs: the spectral
    # derivative d/dq_a is i k_a, applied once per band to the sums H_ab (k_a in
    # gradient_terms, the i in to_tiles)
    kk_y = np.repeat(np.broadcast_to(d_y[:, None], half_t).astype(np.float32), 2, axis=-1)
    kk_x = np.repeat(np.broadcast_to(d_x[None, :], half_t).astype(np.float32), 2, axis=-1)
    # position of every tile pixel relative to its tile's core centre (output px)
    rel_y = (layout.origins_yx[:, 0, None] + np.arange(size)[None, :]
             - layout.centres_yx[:, 0, None]).astype(np.float32)
    rel_x = (layout.origins_yx[:, 1, None] + np.arange(size)[None, :]
             - layout.centres_yx[:, 1, None]).astype(np.float32)
    i_rel_y = (1j * rel_y).astype(np.complex64)

    tile_bytes = size * (size // 2 + 1) * 8
    # plain, even, odd, each S (+ four first-order sums, H_ab = sum_i J_i[a, b] S_i, index
    # 2 a + b) in consecutive rows; with several blocks of frames, the parts S (+ G_y, G_x)
    # of each sum are kept for all tiles
    n_family = 1 + _N_JACOBIAN if taylor else 1
    n_acc = 3 * n_family
    n_parts = 3 if taylor else 1
    bands = _bands(n_ty, n_tx, _tile_rows_per_band(core), n_acc * size * (size // 2 + 1) * 8)
    max_band = max((ty1 - ty0) * (tx1 - tx0) for ty0, ty1, tx0, tx1 in bands)
    # frames summed at once (a group's stack of shifted tile spectra fits _GROUP_BYTES)
    group = max(1, min(_GROUP_BYTES // max(1, max_band * tile_bytes),
                       max(i1 - i0 for i0, i1 in source.blocks)))
    single = len(source.blocks) == 1
    # bands run on a pool of threads, each with its own scratch and one-thread FFTs (numpy's
    # element-wise passes and the tile placement are single-threaded: band parallelism is
    # what uses every core); with several blocks of frames, every band's parts are kept
    n_threads = max(1, min(len(bands), thread_count(workers)))
    fft_workers = 1 if n_threads > 1 else workers
    all_accs = None
    if not single:
        all_accs = zeros_written((3 * n_parts, n_tiles) + half_t, np.complex64)
    # written zeros, not np.zeros: the tiles are added into them (allocator.zeros_written)
    if add_to is None:
        images = {name: zeros_written((ny, nx)) for name in ("plain", "dw", "even", "odd")}
    else:
        images = {"plain": add_to.plain, "dw": add_to.dose_weighted, "even": add_to.even,
                  "odd": add_to.odd}
        if any(im.shape != (ny, nx) or im.dtype != np.float32 for im in images.values()):
            raise ValueError(f"add_to must hold float32 images of shape {(ny, nx)}")
    place_lock = threading.Lock()  # neighbouring bands share the rows of their overlap
    local = threading.local()

    def scratch() -> _BandScratch:
        if getattr(local, "scratch", None) is None:
            local.scratch = _BandScratch.make(max_band, size, n_acc)
        return local.scratch

    def transform(i: int, b0: int, b1: int, mine: _BandScratch) -> np.ndarray:
        """Half spectra of the tiles ``b0:b1`` of frame ``i``, cut at the whole-pixel shift."""
        tiles = mine.tiles[:b1 - b0]
        source.cut(i, layout.origins_yx[b0:b1] + whole[i, b0:b1], size, tiles)
        return rfft2(tiles, workers=fft_workers, overwrite_x=True)

    def shifted(i: int, b0: int, b1: int, spec: np.ndarray, out: np.ndarray) -> None:
        """Frame ``i``'s tile spectra ``spec`` (tiles ``b0:b1``) moved by their fractional
        shifts into ``out``: content at output q comes from q + shift, so each tile moves by
        -frac (the sign of :func:`fourier.shift_ramps`); the ramp is separable, two passes."""
        ramp_y = np.exp(1j * two_pi * frac[i, b0:b1, 0, None] * k_y[None, :]).astype(np.complex64)
        ramp_x = np.exp(1j * two_pi * frac[i, b0:b1, 1, None] * k_x[None, :]).astype(np.complex64)
        np.multiply(spec, ramp_y[:, :, None], out=out)
        out *= ramp_x[:, None, :]

    def add_family(rows: np.ndarray, frames_f: np.ndarray, tile: int, acc_rows: np.ndarray,
                   first: bool, mine: _BandScratch) -> None:
        """Add one sum family's part of a group to a tile's accumulators: ``rows`` (frames x
        tile spectrum, complex viewed as float32 pairs) are the shifted (and for the
        dose-weighted families weighted) spectra of ``frames_f``; ``acc_rows`` is ``[S]`` or
        ``[S, H_yy, H_yx, H_xy, H_xx]`` of the family (``H_ab = sum_i J_i[a, b] S_i``). One
        matrix product (BLAS ``sgemm``): the frames' spectra are read once for all the
        family's sums, instead of once per sum and frame."""
        q = acc_rows.shape[0]
        coefficients = np.ones((q, len(frames_f)), np.float32)
        if q > 1:
            coefficients[1:] = jacobian_flat[frames_f, tile].T
        product = mine.products[:q]
        np.matmul(coefficients, rows, out=product)
        if first:
            acc_rows[...] = product
        else:
            acc_rows += product

    def gradient_terms(h: np.ndarray) -> list[np.ndarray]:
        """``[G_y, G_x]`` with ``G_b = sum_a k_a H_ab`` from a sum's four ``H_ab`` (index
        ``2 a + b``), made in place in the memory of ``H_yy`` and ``H_yx``."""
        hv = h.view(np.float32)
        for b in range(2):
            hv[b] *= kk_y
            hv[2 + b] *= kk_x
            hv[b] += hv[2 + b]
        return [h[0], h[1]]

    def to_tiles(parts: list[np.ndarray], b0: int, b1: int) -> np.ndarray:
        """Tiles of ``S + (y - y0) G_y + (x - x0) G_x`` (consumes ``parts``), where ``G_b =
        sum_i sum_a J_i[a, b] dS_i/dq_a`` (the first-order terms).

        The inverse is two passes, along y (complex) then along x (complex to real). The factor
        ``i (y - y0)`` does not depend on x, so it is applied to ``G_y`` between the passes
        and ``S`` and ``G_y`` share one pass along x: five passes instead of six."""
        if len(parts) == 1:
            return irfft2(parts[0], shape_t, workers=fft_workers, overwrite_x=True)
        cols = scipy.fft.ifft(parts[0], n=size, axis=-2, workers=fft_workers, overwrite_x=True)
        cols_y = scipy.fft.ifft(parts[1], n=size, axis=-2, workers=fft_workers,
                                overwrite_x=True)
        cols_y *= i_rel_y[b0:b1, :, None]  # i of the spectral derivative, times (y - y0)
        cols += cols_y
        del cols_y
        tiles = scipy.fft.irfft(cols, n=size, axis=-1, workers=fft_workers, overwrite_x=True)
        del cols
        parts[2] *= np.complex64(1j)  # the i of the spectral derivative i k_x
        part = irfft2(parts[2], shape_t, workers=fft_workers, overwrite_x=True)
        part *= rel_x[b0:b1, None, :]
        tiles += part
        return tiles

    def place(tiles: np.ndarray, band: tuple[int, int, int, int], out: np.ndarray) -> None:
        """Blend the weighted tiles of ``band`` into the image ``out``."""
        ty0, ty1, tx0, tx1 = band
        b0, b1 = _band_tiles(band, n_tx)
        grid = tiles.reshape(ty1 - ty0, tx1 - tx0, size, size)
        grid *= layout.weights_y[b0:b1].reshape(ty1 - ty0, tx1 - tx0, size)[:, :1, :, None]
        grid *= layout.weights_x[b0:b1].reshape(ty1 - ty0, tx1 - tx0, size)[:1, :, None, :]
        with place_lock:  # neighbouring bands share the pixels of their overlaps
            for r, ty in enumerate(range(ty0, ty1)):
                y0 = ty * core - overlap_px  # tile origin in the frame (may lie outside it)
                ys, ye = max(0, y0), min(ny, y0 + size)
                if ye <= ys:
                    continue
                for c, tx in enumerate(range(tx0, tx1)):
                    x0 = tx * core - overlap_px
                    xs, xe = max(0, x0), min(nx, x0 + size)
                    if xe > xs:
                        out[ys:ye, xs:xe] += grid[r, c, ys - y0:ye - y0, xs - x0:xe - x0]

    def band_families(acc: np.ndarray) -> list[list[np.ndarray]]:
        """``[S]`` or ``[S, G_y, G_x]`` of the plain, even and odd sums from a band's
        accumulators (the gradient terms made in place)."""
        return [[acc[n_family * j]] + (gradient_terms(acc[n_family * j + 1:n_family * (j + 1)])
                                       if taylor else []) for j in range(3)]

    def finish(band: tuple[int, int, int, int], families: list[list[np.ndarray]]) -> None:
        """The band's tiles of the four images from its sums' parts (consumed)."""
        b0, b1 = _band_tiles(band, n_tx)
        place(to_tiles(families[0], b0, b1), band, images["plain"])
        dw = [e + o for e, o in zip(families[1], families[2])]
        for part in dw:
            part.view(np.float32)[...] *= norms["dw"]
        place(to_tiles(dw, b0, b1), band, images["dw"])
        del dw
        for j, name in ((1, "even"), (2, "odd")):
            parts = families[j]
            if norms[name] is not None:
                for part in parts:
                    part.view(np.float32)[...] *= norms[name]
            place(to_tiles(parts, b0, b1), band, images[name])

    def family_rows(acc_rows: np.ndarray, j: int, t: int) -> np.ndarray:
        """Tile ``t``'s accumulators of family ``j`` (plain, even, odd): ``[S]``, then with
        the first-order term its ``H_ab`` (a view)."""
        return acc_rows[n_family * j:n_family * (j + 1), t]

    def band_frames(band: tuple[int, int, int, int], i0: int, i1: int) -> None:
        """Accumulate frames ``i0:i1`` into one band (and finish it with a single block)."""
        b0, b1 = _band_tiles(band, n_tx)
        nb = b1 - b0
        mine = scratch()
        acc = mine.accs[:, :nb]
        acc_rows = acc.view(np.float32).reshape(n_acc, nb, -1)  # complex as float32 pairs
        # a group of frames is transformed into one stack (its even frames first), then summed
        # tile by tile and family by family as matrix products: each frame's tile spectrum is
        # read once per family (before: thirteen passes per frame and tile, two per sum). The
        # stack is the band's own, released before the band is finished (whose inverse
        # transforms need memory of their own)
        stack_memory = np.empty((min(group, i1 - i0), nb, size, size // 2 + 1), np.complex64)
        for g0 in range(i0, i1, group):
            frames_g = np.arange(g0, min(i1, g0 + group))
            frames_g = np.concatenate([frames_g[even[frames_g]], frames_g[~even[frames_g]]])
            m, m_even = len(frames_g), int(np.count_nonzero(even[frames_g]))
            stack = stack_memory[:m]
            for j, i in enumerate(frames_g):
                shifted(i, b0, b1, transform(i, b0, b1, mine), stack[j])
            rows = stack.view(np.float32).reshape(m, nb, -1)
            first = g0 == i0
            for t in range(nb):
                add_family(rows[:, t], frames_g, b0 + t, family_rows(acc_rows, 0, t), first, mine)
            rows *= weights[frames_g].reshape(m, 1, -1)
            for t in range(nb):
                for j, part in ((1, slice(0, m_even)), (2, slice(m_even, m))):
                    if part.stop > part.start:
                        add_family(rows[part, t], frames_g[part], b0 + t,
                                   family_rows(acc_rows, j, t), first, mine)
                    elif first:
                        family_rows(acc_rows, j, t)[...] = 0.0
        del stack_memory, stack, rows
        if single:
            finish(band, band_families(acc))
            return
        # several blocks: this block's parts added to the band's kept parts
        kept = all_accs[:, b0:b1]
        for j, parts in enumerate(band_families(acc)):
            for m, part in enumerate(parts):
                kept[n_parts * j + m] += part

    def band_finish(band: tuple[int, int, int, int]) -> None:  # several blocks: kept parts
        b0, b1 = _band_tiles(band, n_tx)
        kept = all_accs[:, b0:b1]
        finish(band, [[kept[n_parts * j + m] for m in range(n_parts)] for j in range(3)])

    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for i0, i1 in source.blocks:
            source.load_block(i0, i1)
            list(pool.map(lambda band: band_frames(band, i0, i1), bands))
        source.load_block(0, 0)
        if not single:
            list(pool.map(band_finish, bands))
    del all_accs
    return LocalSums(images["plain"], images["dw"], images["even"], images["odd"])
