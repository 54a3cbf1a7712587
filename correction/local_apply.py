"""Apply global + local motion in every sum by tile-wise Fourier shifts blended smoothly.

Design
    The output frame is covered by square tiles on a ``tile_px`` stride, each ``tile_px + 2 *
    tile_overlap_px`` wide (rounded up to a fast FFT length). For every frame and tile the
    total displacement at the tile's centre, ``global + local``, is split into an integer part,
    taken by cutting the input tile at the displaced position (exact; no wrap-around of content
    from the opposite edge of the frame; pixels outside the frame read as the frame's mean), and
    a fractional part (at most half a pixel), applied exactly as a Fourier phase ramp. All tiles
    of a frame are transformed in one batched FFT; the plain sum and the dose-weighted sums of
    the even and of the odd frames are accumulated per tile in Fourier space (dose weights
    evaluated on the tile's frequency grid), then four batched inverse FFTs give the plain,
    dose-weighted, even and odd tiles. Neighbouring tiles are blended with separable
    raised-cosine weights that sum to one (a partition of unity) over the overlap, and are zero
    on the outermost ``_MARGIN_PX`` pixels of each tile, where the circular sub-pixel shift
    wraps.

Why this and not interpolation
    A Fourier shift keeps every spatial frequency (bilinear interpolation loses about a third
    of the power at half Nyquist, cubic splines less but cost more than an FFT here). Within a
    tile the shift is constant; the local field changes by a few hundredths of a pixel over a
    512-pixel tile, and blending tiles whose shifts differ by that much blurs less than any
    affordable interpolator. With no local motion the result equals the global Fourier-shift
    sums up to the tile seams' float rounding.

Conventions: shifts per :mod:`correction.conventions`; dose weighting and its normalisation per
:mod:`correction.dose` (``sqrt(n) * sum w F / sqrt(sum w^2)`` over the frames of each sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .align_local import LocalMotionModel
from .dose import dose_weights, weight_normalisation
from .fourier import fast_length, irfft2, radial_frequency_sq, rfft2

__all__ = ["TileLayout", "LocalSums", "default_tile_px", "tile_layout", "local_sums"]

_MARGIN_PX = 3  # outer pixels of a tile that get zero weight (circular-shift wrap)
_ROW_BLOCK = 64  # spectrum rows processed together (about 150 KiB of complex64: in cache)


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
    """

    shape_yx: tuple[int, int]
    tile_size: int
    origins_yx: np.ndarray
    centres_yx: np.ndarray
    weights_y: np.ndarray
    weights_x: np.ndarray


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
                      np.column_stack([cy[iy], cx[ix]]), wy[iy], wx[ix])


def default_tile_px(shape_yx: tuple[int, int]) -> int:
    """Tile core for a frame: about an eighth of the short side, a power of two in 128-512.

    The shift is constant within a tile, so the tile must be small against the scale on which
    the local field changes (the whole frame): an 8 x 8 grid keeps the within-tile error
    near 0.02 px RMS for a 3 px corner field, while 512-pixel tiles keep the FFT overhead of
    the overlaps at about a quarter.
    """
    short = max(1, min(int(v) for v in shape_yx))
    return int(np.clip(2 ** int(np.round(np.log2(max(short / 8, 1)))), 128, 512))


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


def _ramp_extent(w: np.ndarray) -> tuple[int, int]:
    """``(a, b)``: the weight is exactly 1 on ``[a, b)`` and differs from 1 outside it."""
    ones = np.flatnonzero(w == 1.0)
    return (int(ones[0]), int(ones[-1]) + 1) if ones.size else (w.size, w.size)


def _blend(tiles: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Weighted sum of tiles into a frame (tiles are multiplied by their weights in place;
    only the border strips where a weight is not 1 are touched)."""
    ny, nx = layout.shape_yx
    size = layout.tile_size
    out = np.zeros((ny, nx), dtype=np.float32)
    for t, (oy, ox) in enumerate(layout.origins_yx):
        tile = tiles[t]
        wy, wx = layout.weights_y[t], layout.weights_x[t]
        a, b = _ramp_extent(wy)
        tile[:a] *= wy[:a, None]
        tile[b:] *= wy[b:, None]
        a, b = _ramp_extent(wx)
        tile[:, :a] *= wx[None, :a]
        tile[:, b:] *= wx[None, b:]
        y0, y1 = max(oy, 0), min(oy + size, ny)
        x0, x1 = max(ox, 0), min(ox + size, nx)
        out[y0:y1, x0:x1] += tile[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return out


def local_sums(frames: Sequence[np.ndarray] | np.ndarray, global_shifts_yx_px: np.ndarray,
               model: LocalMotionModel | None, *, pixel_size_A: float,
               dose_end_e_A2: np.ndarray, voltage_kV: float = 300.0,
               tile_px: int | None = None, overlap_px: int | None = None, fill: float | None = None,
               shape_yx: tuple[int, int] | None = None, workers: int = -1) -> LocalSums:
    """Motion-corrected plain, dose-weighted, even and odd sums with global + local shifts.

    Parameters
    ----------
    frames : ndarray, shape (n_frames, ny, nx), or a sequence of n_frames (ny, nx) arrays
        Gain-corrected frames (any real dtype; cut into float32 tiles). A sequence is read
        once per frame, in order, so it may produce frames lazily (e.g. gain-correct on
        access).
    global_shifts_yx_px : ndarray, shape (n_frames, 2)
        Global displacements (output px, :mod:`correction.conventions`).
    model : LocalMotionModel or None
        Local displacement field added to the global shifts; None = global only.
    pixel_size_A : float
        Pixel size in Å (for the dose weights' spatial frequencies).
    dose_end_e_A2 : ndarray, shape (n_frames,)
        Accumulated dose at the end of each frame, pre-exposure included (e/Å²).
    voltage_kV : float
    tile_px, overlap_px : int, optional
        Tile core and overlap per side (pixels); default :func:`default_tile_px` and
        ``max(16, tile_px // 16)``.
    fill : float, optional
        Value read outside the frame; default each frame's mean.
    shape_yx : (int, int), optional
        Frame shape; needed only when ``frames`` has no ``shape``.
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
    tile_px = default_tile_px((ny, nx)) if tile_px is None else int(tile_px)
    overlap_px = max(16, tile_px // 16) if overlap_px is None else int(overlap_px)
    layout = tile_layout((ny, nx), tile_px=tile_px, overlap_px=overlap_px)
    size = layout.tile_size
    shape_t = (size, size)
    n_tiles = len(layout.origins_yx)

    shifts = np.broadcast_to(g[:, None, :], (n, n_tiles, 2)).copy()
    if model is not None:
        shifts += model.displacement_yx_px(layout.centres_yx[:, 0], layout.centres_yx[:, 1])
    whole = np.round(shifts).astype(np.int64)
    frac = shifts - whole

    k_per_A = np.sqrt(radial_frequency_sq(shape_t, scale_yx=(pixel_size_A, pixel_size_A)))
    even = np.arange(n) % 2 == 0
    half = (n_tiles, size, size // 2 + 1)
    acc_plain = np.zeros(half, dtype=np.complex64)
    acc_even = np.zeros(half, dtype=np.complex64)
    acc_odd = np.zeros(half, dtype=np.complex64)
    # real weights interleaved (each value twice) to scale complex64 viewed as float32 pairs
    weights = np.repeat(dose_weights(k_per_A, dose_end, voltage_kV).astype(np.float32), 2,
                        axis=-1)  # (n, T, 2 * (T // 2 + 1))
    buf = np.empty((n_tiles, size, size), dtype=np.float32)
    # Rows are processed in blocks that never straddle the jump from positive to negative ky,
    # so the row ramp of a block is its first row's phase times the ramp of rows 0, 1, ...:
    # per frame one tile of ramp_y(0..block) x ramp_x per tile, and a scalar per block.
    ky = np.fft.fftfreq(size, d=1.0 / size)
    kx = np.arange(size // 2 + 1, dtype=np.float64)
    split = (size + 1) // 2
    starts = [r for lo, hi in ((0, split), (split, size)) for r in range(lo, hi, _ROW_BLOCK)]
    ends = [min(r + _ROW_BLOCK, split if r < split else size) for r in starts]
    block = max(e - r for r, e in zip(starts, ends))
    scratch = np.empty((block, size // 2 + 1), dtype=np.complex64)
    for i in range(n):
        frame = frames[i]
        if frame.shape != (ny, nx):
            raise ValueError(f"frame {i} has shape {frame.shape}, expected {(ny, nx)}")
        value = float(frame.mean(dtype=np.float64)) if fill is None else float(fill)
        _cut_tiles(frame, layout.origins_yx + whole[i], size, value, buf)
        spec = rfft2(buf, workers=workers, overwrite_x=True)
        # content at output q comes from q + shift: move each tile by -frac (shift_ramps sign)
        phase_y = 2.0 * np.pi * frac[i, :, 0] / size  # ramp_y(ky) = exp(1j * ky * phase_y)
        phase_x = 2.0 * np.pi * frac[i, :, 1] / size
        ramp_tiles = (np.exp(1j * np.arange(block)[None, :, None] * phase_y[:, None, None]
                             ).astype(np.complex64)
                      * np.exp(1j * kx[None, None, :] * phase_x[:, None, None]
                               ).astype(np.complex64))
        block_phase = np.exp(1j * ky[np.array(starts)][None, :] * phase_y[:, None]
                             ).astype(np.complex64)  # (n_tiles, n_blocks)
        acc_dw = acc_even if even[i] else acc_odd
        w_i = weights[i]
        # tile by tile, a block of rows at a time: the spectrum is read once (never written)
        # and the five passes run from cache
        for t in range(n_tiles):
            spec_t, plain_t, dw_t, ramp_t = spec[t], acc_plain[t], acc_dw[t], ramp_tiles[t]
            for b, (r0, r1) in enumerate(zip(starts, ends)):
                f = scratch[:r1 - r0]
                np.multiply(spec_t[r0:r1], ramp_t[:r1 - r0], out=f)
                f *= block_phase[t, b]
                plain_t[r0:r1] += f
                f.view(np.float32)[...] *= w_i[r0:r1]
                dw_t[r0:r1] += f
        del spec
    del buf

    def to_image(acc: np.ndarray) -> np.ndarray:
        return _blend(irfft2(acc, shape_t, workers=workers, overwrite_x=True), layout)

    def normalise(acc: np.ndarray, selected: np.ndarray) -> None:
        # sqrt(n / sum w^2) over the frames of this sum (correction.dose)
        norm = weight_normalisation(k_per_A, dose_end[selected], voltage_kV)
        acc.view(np.float32)[...] *= np.repeat(norm.astype(np.float32), 2, axis=-1)

    plain = to_image(acc_plain)
    del acc_plain
    acc_all = acc_even + acc_odd
    normalise(acc_all, np.ones(n, bool))
    dose_weighted = to_image(acc_all)
    del acc_all
    if even.any():
        normalise(acc_even, even)
    if (~even).any():
        normalise(acc_odd, ~even)
    return LocalSums(plain, dose_weighted, to_image(acc_even), to_image(acc_odd))
