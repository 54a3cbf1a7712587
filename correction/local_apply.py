"""Apply global + local motion in every sum by tile-wise Fourier shifts blended smoothly.

Design
    The output frame is covered by square tiles on a ``tile_px`` stride, each ``tile_px + 2 *
    tile_overlap_px`` wide (rounded up to a fast FFT length). For every frame and tile the
    total displacement at the tile's core centre, ``global + local``, is split into an integer
    part, taken by cutting the input tile at the displaced position (exact; no wrap-around of
    content from the opposite edge of the frame; pixels outside the frame read as the frame's
    mean), and a fractional part (at most half a pixel), applied exactly as a Fourier phase
    ramp. All tiles of a frame are transformed in one batched FFT; the plain sum and the
    dose-weighted sums of the even and of the odd frames are accumulated per tile in Fourier
    space (dose weights evaluated on the tile's frequency grid), and batched inverse FFTs at
    the end give the tiles of the four sums. Neighbouring tiles are blended with separable
    raised-cosine weights that sum to one (a partition of unity) over the overlap, and are zero
    on the outermost ``_MARGIN_PX`` pixels of each tile, where the circular sub-pixel shift
    wraps.

Within a tile the field is not constant
    A constant shift per tile errs by (field gradient x distance from the tile centre): 0.9 px
    at the corners of a 512-px tile for a 10-px corner field at 4K, and blending two tiles
    that disagree by that much blurs the seams. :func:`plan_tiles` sizes the tiles from the
    field's largest gradient. Weak fields get constant shifts on tiles small enough that the
    error stays below 0.03 px. Strong fields get, in addition, the first-order term of the
    displacement within each tile, ``d(q) - d(c) ~ J (q - c)`` with ``J`` the field's Jacobian
    at the tile centre ``c``: ``F(q + d(c) + J (q - c)) ~ S(q) + sum_b (q - c)_b sum_a J_ab
    dS/dq_a`` where ``S`` is the tile shifted by ``d(c)``. The derivative is exact (spectral)
    and linear in the frames, so ``sum_i sum_a J_i,ab i k_a S_i`` is accumulated in Fourier
    space beside each sum (two more accumulators per sum) and multiplied by ``(q - c)_b``
    after the inverse FFT. Tiles are sized so that ``|J (q - c)| <= 0.4`` px, where the
    first-order term leaves at most about ``|d|^3 k^2 / 3`` px of displacement error at
    spatial frequency ``k`` (rad/px) and ``0.5 |H| |q - c|^2`` (below 0.01 px) from the
    field's curvature ``H``. Measured (``benchmarks/bench_local.py``, true field applied to a
    noise-free 4K render, residual displacement in 32-px windows): at most 0.034 px (RMS
    0.004 px) for 1-10 px corner fields, against 0.09-0.78 px for constant shifts on 512-px
    tiles. Cost at 4K x 10 frames: about 2.5x the constant-shift application (two more
    accumulators per sum and twice the inverse FFTs).

Why this and not interpolation
    A Fourier shift keeps every spatial frequency (bilinear interpolation loses about a third
    of the power at half Nyquist; a cubic spline with prefilter costs about 2.3 s per 4K
    frame here, more than the whole tile path). With no local motion the result equals the
    global Fourier-shift sums up to the tile seams' float rounding.

Conventions: shifts per :mod:`correction.conventions`; dose weighting and its normalisation per
:mod:`correction.dose` (``sqrt(n) * sum w F / sqrt(sum w^2)`` over the frames of each sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .dose import dose_weights, weight_normalisation
from .fourier import fast_length, irfft2, radial_frequency_sq, rfft2

__all__ = ["TileLayout", "TilePlan", "LocalSums", "DisplacementField", "default_tile_px",
           "tile_layout", "field_jacobian", "plan_tiles", "local_sums"]

_MARGIN_PX = 3  # outer pixels of a tile that get zero weight (circular-shift wrap)
_CHUNK_BYTES = 1 << 20  # tile spectra processed together (about 1 MiB of complex64: in cache)
_CONSTANT_ERROR_PX = 0.03  # largest residual left by a constant shift per tile
_TAYLOR_RESIDUAL_PX = 0.4  # largest residual the first-order (gradient) term takes up
_TAYLOR_OVERLAP_PX = 8
_TAYLOR_CORES_PX = (496, 368, 304, 240, 208, 176, 144, 112, 80, 48)  # + 16: FFT-friendly
_MIN_CONSTANT_TILE_PX = 128  # below this, the first-order term is cheaper than more tiles
_JACOBIAN_STEP_PX = 8.0


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
    """Tile core for a frame: about an eighth of the short side, a power of two in 128-512.

    The shift is constant within a tile, so the tile must be small against the scale on which
    the local field changes (the whole frame): an 8 x 8 grid keeps the within-tile error
    near 0.02 px RMS for a 3 px corner field, while 512-pixel tiles keep the FFT overhead of
    the overlaps at about a quarter.
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


def plan_tiles(field: DisplacementField | None, shape_yx: tuple[int, int]) -> TilePlan:
    """Choose the tiles from the field's largest gradient.

    A constant shift per tile leaves an error of (gradient x distance from the tile's centre).
    When a core of at least 128 px keeps that below 0.03 px (fields up to about 1 px at the
    corners of a 4K frame), tiles get constant shifts. Otherwise the core is the largest that
    keeps the displacement within a tile within 0.4 px of its centre's, and that departure is
    applied to first order (``F(q + d) ~ F(q) + d . grad F(q)`` with the exact spectral
    gradient, accumulated over the frames in Fourier space), with an 8-px overlap (the two
    tiles of a seam agree to the first order, so a narrow blending band suffices). The error
    left at spatial frequency k (rad/px) is at most about ``|d|^3 k^2 / 3``; measured on the
    blob specimen (windows of 32 px, noise-free, ``tests/correction/test_local_apply.py`` and
    ``benchmarks/bench_local.py``), it stays below 0.035 px everywhere.
    """
    base = default_tile_px(shape_yx)
    overlap = _default_overlap_px(base)
    if field is None:
        return TilePlan(base, overlap, False, 0.0, 0.0)
    ny, nx = (int(v) for v in shape_yx)
    y, x = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 9), indexing="ij")
    jac = field_jacobian(field, y, x)
    gradient = float(np.max(np.linalg.norm(jac, ord=2, axis=(-2, -1)))) if jac.size else 0.0
    for core in range(base, _MIN_CONSTANT_TILE_PX - 1, -32):
        overlap = _default_overlap_px(core)
        if gradient * _reach_px(core, overlap) <= _CONSTANT_ERROR_PX:
            return TilePlan(core, overlap, False, gradient, gradient * _reach_px(core, overlap))
    # first-order term: cores whose tile (core + 2 x 8 px) is an FFT-friendly length
    cores = [c for c in _TAYLOR_CORES_PX if c <= base] or [_TAYLOR_CORES_PX[-1]]
    for core in cores:
        if gradient * _reach_px(core, _TAYLOR_OVERLAP_PX) <= _TAYLOR_RESIDUAL_PX:
            break
    return TilePlan(core, _TAYLOR_OVERLAP_PX, True, gradient,
                    gradient * _reach_px(core, _TAYLOR_OVERLAP_PX))


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


def _add_along(out: np.ndarray, parts: np.ndarray, axis: int, core: int, size: int) -> None:
    """``out[..., k * core : k * core + size, ...] += parts[k]`` along ``axis`` for all k.

    Tiles of one parity never overlap (``size <= 2 * core``), so each parity is one
    vectorised add through a view of ``out`` cut into blocks of ``2 * core``.
    """
    n = parts.shape[0]
    for parity in (0, 1):
        m = len(range(parity, n, 2))
        if m == 0:
            continue
        start = parity * core
        sl = [slice(None)] * out.ndim
        sl[axis] = slice(start, start + 2 * core * m)
        region = out[tuple(sl)]
        shape = region.shape[:axis] + (m, 2 * core) + region.shape[axis + 1:]
        strides = (region.strides[:axis] + (2 * core * region.strides[axis], region.strides[axis])
                   + region.strides[axis + 1:])
        blocks = np.lib.stride_tricks.as_strided(region, shape, strides, writeable=True)
        sl = [slice(None)] * blocks.ndim
        sl[axis + 1] = slice(0, size)
        blocks[tuple(sl)] += np.moveaxis(parts[parity::2], 0, axis)


def _blend(tiles: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Weighted sum of tiles into a frame (the tiles are multiplied by their weights in place)."""
    ny, nx = layout.shape_yx
    size, core, overlap = layout.tile_size, layout.core_px, layout.overlap_px
    n_ty, n_tx = layout.n_tiles_yx
    grid = tiles.reshape(n_ty, n_tx, size, size)
    grid *= layout.weights_y.reshape(n_ty, n_tx, size)[:, :1, :, None]
    grid *= layout.weights_x.reshape(n_ty, n_tx, size)[:1, :, None, :]
    if size > 2 * core:  # tiles of one parity would overlap: add them one by one
        out = np.zeros((n_ty * core + size, n_tx * core + size), np.float32)
        for ty in range(n_ty):
            for tx in range(n_tx):
                out[ty * core:ty * core + size, tx * core:tx * core + size] += grid[ty, tx]
    else:
        height = 2 * core * (n_ty // 2 + 1) + size
        width = 2 * core * (n_tx // 2 + 1) + size
        strip = np.zeros((n_ty, size, width), np.float32)
        # tile rows first (along x), then the rows into the frame (along y)
        _add_along(strip, np.moveaxis(grid, 1, 0), 2, core, size)
        out = np.zeros((height, width), np.float32)
        _add_along(out, strip, 0, core, size)
    # padded coordinate = frame coordinate + overlap (a view: no copy of the frame)
    return out[overlap:overlap + ny, overlap:overlap + nx]


def local_sums(frames: Sequence[np.ndarray] | np.ndarray, global_shifts_yx_px: np.ndarray,
               model: DisplacementField | None, *, pixel_size_A: float,
               dose_end_e_A2: np.ndarray, voltage_kV: float = 300.0,
               tile_px: int | None = None, overlap_px: int | None = None, fill: float | None = None,
               shape_yx: tuple[int, int] | None = None, taylor: bool | None = None,
               workers: int = -1) -> LocalSums:
    """Motion-corrected plain, dose-weighted, even and odd sums with global + local shifts.

    Parameters
    ----------
    frames : ndarray, shape (n_frames, ny, nx), or a sequence of n_frames (ny, nx) arrays
        Gain-corrected frames (any real dtype; cut into float32 tiles). A sequence is read
        once per frame, in order, so it may produce frames lazily (e.g. gain-correct on
        access).
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
    fill : float, optional
        Value read outside the frame; default each frame's mean.
    shape_yx : (int, int), optional
        Frame shape; needed only when ``frames`` has no ``shape``.
    taylor : bool, optional
        Apply the first-order (gradient) term of the field within each tile; default from
        :func:`plan_tiles`. Ignored without a model.
    workers : int
        Threads for :mod:`scipy.fft`.

    Returns
    -------
    LocalSums
        Each sum has the frame's shape, float32. Even/odd are 0-based frame indices.
    """
    n = len(frames)
    ny, nx = (int(v) for v in (shape_yx if shape_yx is not None else frames.shape[1:]))
    g = np.asarray(global_shifts_yx_px, dtype=np.float64).reshape(n, 2)
    dose_end = np.asarray(dose_end_e_A2, dtype=np.float64).reshape(n)
    plan = plan_tiles(model, (ny, nx))
    taylor = plan.taylor if taylor is None else bool(taylor and model is not None)
    if tile_px is None:
        tile_px = plan.tile_px
        if overlap_px is None:
            overlap_px = plan.overlap_px
    tile_px = int(tile_px)
    overlap_px = _default_overlap_px(tile_px) if overlap_px is None else int(overlap_px)
    layout = tile_layout((ny, nx), tile_px=tile_px, overlap_px=overlap_px)
    size = layout.tile_size
    shape_t = (size, size)
    n_tiles = len(layout.origins_yx)

    shifts = np.broadcast_to(g[:, None, :], (n, n_tiles, 2)).copy()
    if model is not None:
        shifts += model.displacement_yx_px(layout.centres_yx[:, 0], layout.centres_yx[:, 1])
    whole = np.round(shifts).astype(np.int64)
    frac = shifts - whole
    # jacobian[i, t, a, b] = d(displacement_a) / d(position_b) at tile t's core centre
    jacobian = (field_jacobian(model, layout.centres_yx[:, 0], layout.centres_yx[:, 1])
                .astype(np.float32) if taylor else None)

    k_per_A = np.sqrt(radial_frequency_sq(shape_t, scale_yx=(pixel_size_A, pixel_size_A)))
    even = np.arange(n) % 2 == 0
    half = (n_tiles, size, size // 2 + 1)
    acc_plain = np.zeros(half, dtype=np.complex64)
    acc_even = np.zeros(half, dtype=np.complex64)
    acc_odd = np.zeros(half, dtype=np.complex64)
    # first-order terms: sum_i sum_a J_i[a, b] * (2 pi k_a / size) * F_i, per family and b
    grad = {name: (np.zeros(half, np.complex64), np.zeros(half, np.complex64))
            for name in ("plain", "even", "odd")} if taylor else None
    # real weights interleaved (each value twice) to scale complex64 viewed as float32 pairs
    weights = np.repeat(dose_weights(k_per_A, dose_end, voltage_kV,  # relative: no underflow
                                     reference_dose_e_A2=dose_end[0]).astype(np.float32), 2,
                        axis=-1)  # (n, T, 2 * (T // 2 + 1))
    buf = np.empty((n_tiles, size, size), dtype=np.float32)
    two_pi = 2.0 * np.pi / size
    k_y = np.fft.fftfreq(size, d=1.0 / size)  # integer frequencies of the tile
    k_x = np.arange(size // 2 + 1, dtype=np.float64)
    # derivative factors (radians per pixel); zero at Nyquist, where the derivative of a
    # real sampled signal is undefined
    d_y = 1j * two_pi * k_y
    d_x = 1j * two_pi * k_x
    if size % 2 == 0:
        d_y[size // 2] = 0.0
        d_x[-1] = 0.0
    d_y = d_y.astype(np.complex64)  # i k: the spectral derivative d/dq
    d_x = d_x.astype(np.complex64)
    chunk = max(1, _CHUNK_BYTES // (size * (size // 2 + 1) * 8))
    cshape = (min(chunk, n_tiles), size, size // 2 + 1)
    f_buf = np.empty(cshape, np.complex64)
    if taylor:
        lin = np.empty((2,) + cshape, np.complex64)
        prod = np.empty(cshape, np.complex64)
    for i in range(n):
        frame = frames[i]
        if frame.shape != (ny, nx):
            raise ValueError(f"frame {i} has shape {frame.shape}, expected {(ny, nx)}")
        value = float(frame.mean(dtype=np.float64)) if fill is None else float(fill)
        _cut_tiles(frame, layout.origins_yx + whole[i], size, value, buf)
        spec = rfft2(buf, workers=workers, overwrite_x=True)
        # content at output q comes from q + shift: move each tile by -frac (shift_ramps sign)
        ramp_y = np.exp(1j * two_pi * frac[i, :, 0, None] * k_y[None, :]).astype(np.complex64)
        ramp_x = np.exp(1j * two_pi * frac[i, :, 1, None] * k_x[None, :]).astype(np.complex64)
        family = "even" if even[i] else "odd"
        acc_dw = acc_even if even[i] else acc_odd
        w_i = weights[i]
        # a few tiles at a time, so that every pass over them runs from cache
        for c0 in range(0, n_tiles, chunk):
            c1 = min(n_tiles, c0 + chunk)
            f = f_buf[:c1 - c0]
            np.multiply(spec[c0:c1], ramp_y[c0:c1, :, None], out=f)
            f *= ramp_x[c0:c1, None, :]
            acc_plain[c0:c1] += f
            if taylor:
                # lin[b] = sum_a J[a, b] * i k_a: the derivative along the residual
                # displacement per pixel of position b (complex: no mixed-type products)
                jac = jacobian[i, c0:c1]
                for bb in range(2):
                    lb = lin[bb, :c1 - c0]
                    np.multiply(jac[:, 0, bb, None, None], d_y[None, :, None], out=lb)
                    lb += jac[:, 1, bb, None, None] * d_x[None, None, :]
                    np.multiply(f, lb, out=prod[:c1 - c0])
                    grad["plain"][bb][c0:c1] += prod[:c1 - c0]
            f.view(np.float32)[...] *= w_i
            acc_dw[c0:c1] += f
            if taylor:
                for bb in range(2):
                    np.multiply(f, lin[bb, :c1 - c0], out=prod[:c1 - c0])
                    grad[family][bb][c0:c1] += prod[:c1 - c0]
        del spec
    del buf
    # position of every tile pixel relative to its tile's core centre (output px)
    rel_y = (layout.origins_yx[:, 0, None] + np.arange(size)[None, :]
             - layout.centres_yx[:, 0, None]).astype(np.float32)
    rel_x = (layout.origins_yx[:, 1, None] + np.arange(size)[None, :]
             - layout.centres_yx[:, 1, None]).astype(np.float32)

    def to_image(accs: list[np.ndarray]) -> np.ndarray:
        """Tiles of ``S + (y - y0) G_y + (x - x0) G_x``, blended (consumes accs), where
        ``G_b = sum_i sum_a J_i[a, b] dS_i/dq_a`` (the first-order terms)."""
        tiles = irfft2(accs[0], shape_t, workers=workers, overwrite_x=True)
        for bb, rel in ((1, rel_y[:, :, None]), (2, rel_x[:, None, :])):
            if len(accs) > bb:
                part = irfft2(accs[bb], shape_t, workers=workers, overwrite_x=True)
                part *= rel
                tiles += part
                del part
        return _blend(tiles, layout)

    def family(name: str, acc: np.ndarray) -> list[np.ndarray]:
        return [acc] + (list(grad[name]) if taylor else [])

    def normalise(accs: list[np.ndarray], selected: np.ndarray) -> None:
        # sqrt(n / sum w^2) over the frames of this sum (correction.dose)
        norm = weight_normalisation(k_per_A, dose_end[selected], voltage_kV,
                                    reference_dose_e_A2=dose_end[0])
        norm2 = np.repeat(norm.astype(np.float32), 2, axis=-1)
        for acc in accs:
            acc.view(np.float32)[...] *= norm2

    plain = to_image(family("plain", acc_plain))
    del acc_plain
    all_frames = [e + o for e, o in zip(family("even", acc_even), family("odd", acc_odd))]
    normalise(all_frames, np.ones(n, bool))
    dose_weighted = to_image(all_frames)
    del all_frames
    halves = []
    for name, acc, selected in (("even", acc_even, even), ("odd", acc_odd, ~even)):
        accs = family(name, acc)
        if selected.any():
            normalise(accs, selected)
        halves.append(to_image(accs))
    return LocalSums(plain, dose_weighted, halves[0], halves[1])
