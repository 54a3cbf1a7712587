"""Fourier-space helpers: real FFTs, Fourier cropping (binning), exact shifts and filters.

All functions are pure and cache-free. Spectra are the half spectra of :func:`scipy.fft.rfft2`
over the last two axes: an image of shape ``(ny, nx)`` has a spectrum of shape
``(ny, nx // 2 + 1)``. Frequencies are in cycles per pixel of the grid the spectrum belongs to,
unless a name says ``_per_A``. Shifts follow :mod:`correction.conventions` (``[dy, dx]`` order,
``+`` = content moves towards increasing index).

Scaling
    The forward transform is unnormalised and the inverse divides by the number of pixels of
    the *output* grid (scipy's ``norm="backward"``). Cropping a spectrum without rescaling
    therefore preserves the **total** intensity of an image: Fourier-binning a counting
    movie by 2 gives pixels that hold the electrons of the 2 x 2 pixels they replace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.fft

from .threads import run_chunks

__all__ = [
    "rfft2",
    "irfft2",
    "fast_length",
    "binned_length",
    "fourier_crop",
    "rfft2_cropped",
    "rfft2_cropped_of_rows",
    "sum_2x2",
    "sum_2x2_of_rows",
    "rfft2_cropped_2x2",
    "rfft2_cropped_of_2x2",
    "frequency_indices",
    "shift_ramps",
    "shift_ramps_stack",
    "apply_shift",
    "shift_image",
    "radial_frequency_sq",
    "bfactor_filter",
    "bfactor_filter_1d",
]


def rfft2(image: np.ndarray, *, workers: int = -1, overwrite_x: bool = False) -> np.ndarray:
    """Real 2-D FFT over the last two axes (float32 in -> complex64 out).

    Parameters
    ----------
    image : ndarray, shape (..., ny, nx)
        Real image(s). float32 gives complex64; float64 gives complex128.
    workers : int
        Threads for :mod:`scipy.fft` (-1 = all cores).
    overwrite_x : bool
        Allow scipy to overwrite ``image``.
    """
    return scipy.fft.rfft2(image, workers=workers, overwrite_x=overwrite_x)


def irfft2(spectrum: np.ndarray, shape_yx: tuple[int, int], *, workers: int = -1,
           overwrite_x: bool = False) -> np.ndarray:
    """Inverse of :func:`rfft2` onto a real grid of ``shape_yx`` (complex64 -> float32).

    Done as two 1-D passes, a complex inverse along y (in place when ``overwrite_x``) and a
    real inverse along x: the same result as :func:`scipy.fft.irfft2`, which copies the
    spectrum first and takes about twice as long here (4096^2 and batches of 576^2 tiles).
    """
    ny, nx = (int(s) for s in shape_yx)
    cols = scipy.fft.ifft(spectrum, n=ny, axis=-2, workers=workers, overwrite_x=overwrite_x)
    return scipy.fft.irfft(cols, n=nx, axis=-1, workers=workers, overwrite_x=True)


def fast_length(n: int) -> int:
    """Smallest length >= ``n`` that :mod:`scipy.fft` transforms quickly (2, 3, 5, 7 smooth),
    rounded up to an even number."""
    m = scipy.fft.next_fast_len(int(n), real=True)
    while m % 2:
        m = scipy.fft.next_fast_len(m + 1, real=True)
    return int(m)


def binned_length(n: int, bin_factor: float) -> int:
    """Length of an axis of ``n`` pixels after Fourier binning by ``bin_factor`` (>= 1).

    The result is even (so the cropped half spectrum has a clean Nyquist column) unless
    ``bin_factor`` is 1, where ``n`` is returned unchanged.
    """
    if bin_factor == 1:
        return int(n)
    m = int(round(n / bin_factor))
    return max(2, m - (m % 2))


def fourier_crop(spectrum: np.ndarray, shape_yx: tuple[int, int], out_shape_yx: tuple[int, int]
                 ) -> np.ndarray:
    """Fourier-crop a half spectrum: bin (low-pass and resample) an image without aliasing.

    Parameters
    ----------
    spectrum : ndarray, shape (..., ny, nx // 2 + 1)
        :func:`rfft2` of images of real shape ``shape_yx``.
    shape_yx : (int, int)
        Real-space shape ``(ny, nx)`` of the input grid.
    out_shape_yx : (int, int)
        Real-space shape ``(my, mx)`` of the output grid, ``my <= ny``, ``mx <= nx``. The pixel
        of the output grid is ``ny / my`` (rows) by ``nx / mx`` (columns) input pixels; any ratio
        >= 1 works (non-integer binning).

    Returns
    -------
    ndarray, shape (..., my, mx // 2 + 1), same dtype
        A new array; frequencies ``-(my // 2) .. (my - 1) // 2`` in y and ``0 .. mx // 2`` in x.
        Not rescaled: the total intensity is preserved (see module docstring).
    """
    ny, nx = (int(v) for v in shape_yx)
    my, mx = (int(v) for v in out_shape_yx)
    if my > ny or mx > nx:
        raise ValueError(f"cannot Fourier-crop {ny}x{nx} to a larger {my}x{mx}")
    if spectrum.shape[-2:] != (ny, nx // 2 + 1):
        raise ValueError(f"spectrum shape {spectrum.shape[-2:]} does not fit a {ny}x{nx} image")
    out = np.empty(spectrum.shape[:-2] + (my, mx // 2 + 1), dtype=spectrum.dtype)
    top = my - my // 2  # rows with ky >= 0 (plus Nyquist for odd my)
    out[..., :top, :] = spectrum[..., :top, : mx // 2 + 1]
    if my // 2:
        out[..., top:, :] = spectrum[..., ny - my // 2:, : mx // 2 + 1]
    return out


_ROW_BLOCK_BYTES = 4 << 20  # float32 rows transformed together in rfft2_cropped


def rfft2_cropped(image: np.ndarray, out_shape_yx: tuple[int, int], *, workers: int = -1,
                  work: np.ndarray | None = None) -> np.ndarray:
    """``fourier_crop(rfft2(image), image.shape, out_shape_yx)`` without the full spectrum.

    The rows are transformed in blocks, keeping only the ``mx // 2 + 1`` columns of the
    output, and only those columns are transformed along y: about 0.6 of a full
    :func:`rfft2` for a crop to a quarter, and no full-size spectrum is allocated (its page
    faults cost as much as the transform on the test machine).

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float32
    out_shape_yx : (int, int)
        ``(my, mx)`` with ``my <= ny``, ``mx <= nx`` (see :func:`fourier_crop`).
    work : ndarray, optional
        1-D complex buffer of the result's dtype with at least ``ny * (mx // 2 + 1)``
        elements, for the row transforms (overwritten): a caller transforming frame after
        frame saves a fresh buffer's page faults each time (0.65 -> 0.40 s per
        super-resolution frame, 8640 x 12000 cropped to 4320 x 6000, on 2 cores).

    Returns
    -------
    ndarray, shape (my, mx // 2 + 1), complex64
        Equal to the cropped full transform up to float rounding.
    """
    ny, nx = (int(v) for v in image.shape)
    my, mx = (int(v) for v in out_shape_yx)
    if my > ny or mx > nx:
        raise ValueError(f"cannot Fourier-crop {ny}x{nx} to a larger {my}x{mx}")
    cx = mx // 2 + 1
    dtype = np.complex64 if image.dtype == np.float32 else np.complex128
    cols = _columns_buffer(ny, cx, dtype, work)
    block = max(1, _ROW_BLOCK_BYTES // max(1, nx * image.itemsize))
    for r0 in range(0, ny, block):
        r1 = min(ny, r0 + block)
        cols[r0:r1] = scipy.fft.rfft(image[r0:r1], axis=-1, workers=workers)[:, :cx]
    return _crop_columns(cols, my, workers)


def _columns_buffer(ny: int, cx: int, dtype: Any, work: np.ndarray | None) -> np.ndarray:
    """``(ny, cx)`` of ``work`` when it is of ``dtype`` and large enough, else a new array."""
    if work is not None and work.dtype == dtype and work.size >= ny * cx:
        return work[:ny * cx].reshape(ny, cx)
    return np.empty((ny, cx), dtype)


def _crop_columns(cols: np.ndarray, my: int, workers: int, fresh: bool = False) -> np.ndarray:
    """The rows' kept columns ``cols`` (overwritten) transformed along y and cropped to ``my``
    rows, as :func:`fourier_crop` keeps them; ``fresh``: ``cols`` is the caller's own, and
    is returned itself when all its rows are kept."""
    ny = cols.shape[0]
    cols = scipy.fft.fft(cols, axis=0, workers=workers, overwrite_x=True)
    if fresh and my == ny:
        return cols
    out = np.empty((my, cols.shape[1]), cols.dtype)
    top = my - my // 2  # as fourier_crop
    out[:top] = cols[:top]
    if my // 2:
        out[top:] = cols[ny - my // 2:]
    return out


def rfft2_cropped_of_rows(fill_rows: Callable[[int, int, np.ndarray], None],
                          shape_yx: tuple[int, int], out_shape_yx: tuple[int, int], *,
                          workers: int = -1, work: np.ndarray | None = None,
                          sums_2x2: np.ndarray | None = None) -> np.ndarray:
    """:func:`rfft2_cropped` of a float32 image of ``shape_yx`` given band by band:
    ``fill_rows(r0, r1, band)`` writes its rows ``r0:r1`` into ``band`` (float32, shape
    ``(r1 - r0, nx)``). The rows are split over ``workers`` threads, each filling a band of a
    few MB and transforming it (one FFT thread each), so an image made on the fly
    (gain-corrected, padded rows of a raw frame) is never made whole: a super-resolution frame
    on 2 cores 0.28 s against 0.30 s for making the padded frame and cropping it (the sums'
    pass of a 60-frame one binned by 2, 54 frames made again: 22.0 -> 17.1 s). Equal to
    :func:`rfft2_cropped` of the whole image bit for bit.

    ``sums_2x2`` (shape ``(ny // 2, nx // 2)``, both sides even): also the image's 2 x 2 block
    sums, as :func:`sum_2x2` makes them (to the bit), from each band while it is in cache,
    so that both are made in one pass over the image's rows (a super-resolution frame
    that is also summed: :func:`correction.pipeline._transform_align_sum`)."""
    ny, nx = (int(v) for v in shape_yx)
    my, mx = (int(v) for v in out_shape_yx)
    if my > ny or mx > nx:
        raise ValueError(f"cannot Fourier-crop {ny}x{nx} to a larger {my}x{mx}")
    pair = 1 if sums_2x2 is None else 2  # rows per unit: bands of whole row pairs
    if sums_2x2 is not None and (ny % 2 or nx % 2 or sums_2x2.shape != (ny // 2, nx // 2)):
        raise ValueError(f"2 x 2 sums of {ny}x{nx} need even sides and a "
                         f"{ny // 2}x{nx // 2} array, got {sums_2x2.shape}")
    cx = mx // 2 + 1
    cols = _columns_buffer(ny, cx, np.complex64, work)
    fresh = work is None or not np.may_share_memory(cols, work)
    block = max(1, _ROW_BLOCK_BYTES // max(1, pair * nx * 4))  # units per band

    def chunk(lo: int, hi: int) -> None:
        band_of = np.empty((pair * min(block, hi - lo), nx), np.float32)
        pairs = None if sums_2x2 is None else np.empty((min(block, hi - lo), nx), np.float32)
        for u0 in range(lo, hi, block):
            u1 = min(hi, u0 + block)
            r0, r1 = pair * u0, pair * u1
            band = band_of[:r1 - r0]
            fill_rows(r0, r1, band)
            if pairs is not None:
                vertical = pairs[:u1 - u0]
                np.add(band[0::2], band[1::2], out=vertical)
                np.add(vertical[:, 0::2], vertical[:, 1::2], out=sums_2x2[u0:u1])
            cols[r0:r1] = scipy.fft.rfft(band, axis=-1, workers=1)[:, :cx]

    run_chunks(chunk, ny // pair, workers)
    return _crop_columns(cols, my, workers, fresh)


def sum_2x2(image: np.ndarray, *, out: np.ndarray | None = None, workers: int = -1
            ) -> np.ndarray:
    """Each 2 x 2 block of ``image`` (both sides even) summed: shape ``(ny // 2, nx // 2)``.

    Bands of row pairs are split over ``workers`` threads, each summing its rows through a
    scratch band of a few MB (in cache), so the image is read once.
    """
    ny, nx = (int(v) for v in image.shape)
    if out is None and not (ny % 2 or nx % 2):
        out = np.empty((ny // 2, nx // 2), image.dtype)
    return sum_2x2_of_rows(lambda y0, y1: image[y0:y1], (ny, nx), out=out, dtype=image.dtype,
                           workers=workers)


def sum_2x2_of_rows(rows: Callable[[int, int], np.ndarray], shape_yx: tuple[int, int], *,
                    out: np.ndarray, dtype: Any = np.float32, workers: int = -1) -> np.ndarray:
    """:func:`sum_2x2` of an image of ``shape_yx`` given band by band: ``rows(y0, y1)`` returns
    its rows ``y0:y1`` (``y0``, ``y1`` even; called from ``workers`` threads at once, each
    band used before the calling thread asks for its next one), so that an image made on
    the fly (gain-corrected rows of a raw frame) is never made whole. ``out``: shape ``(ny //
    2, nx // 2)``, may be a view with a longer row stride."""
    ny, nx = (int(v) for v in shape_yx)
    if ny % 2 or nx % 2:
        raise ValueError(f"2 x 2 sums need even sides, got {ny}x{nx}")
    my = ny // 2
    itemsize = np.dtype(dtype).itemsize
    step = max(1, _ROW_BLOCK_BYTES // max(1, 2 * nx * itemsize))  # block rows per band

    def chunk(lo: int, hi: int) -> None:
        scratch = np.empty((min(step, hi - lo), nx), dtype)
        for r0 in range(lo, hi, step):
            r1 = min(hi, r0 + step)
            band = rows(2 * r0, 2 * r1)
            pairs = scratch[:r1 - r0]
            np.add(band[0::2], band[1::2], out=pairs)
            np.add(pairs[:, 0::2], pairs[:, 1::2], out=out[r0:r1])

    run_chunks(chunk, my, workers)
    return out


def rfft2_cropped_2x2(image: np.ndarray, out_shape_yx: tuple[int, int], *, workers: int = -1,
                      work: np.ndarray | None = None, sums: np.ndarray | None = None
                      ) -> np.ndarray:
    """The Fourier crop of ``image`` to ``out_shape_yx``, made from its 2 x 2 block sums.

    Transforming the block sums (:func:`sum_2x2`, into ``sums`` when given) costs a quarter
    of the rows' transforms of :func:`rfft2_cropped`. The result is the crop of the whole
    spectrum times the block's transfer function ``cos(pi ky / ny) cos(pi kx / nx)`` (``k``
    the integer frequency indices), plus what the block sums fold back from the top octave
    of each axis (``|k| > 3/8`` of the axis's length, attenuated by ``cos`` there). Each
    block's centre lies half an input pixel beyond its first pixel; that phase is undone, so
    the content is not moved. For a crop to at most an eighth of each side (frequencies
    below 1/16 cycle per input pixel) the signal keeps >= 0.98 of its amplitude and what
    folds back is at most 0.038 of the noise power of white (shot) noise.

    Parameters
    ----------
    image : ndarray, shape (ny, nx), float32, both sides even
    out_shape_yx : (int, int)
        ``(my, mx)`` with ``my <= ny / 2``, ``mx <= nx / 2``.
    work : ndarray, optional
        Row buffer of :func:`rfft2_cropped`.
    sums : ndarray, shape (ny // 2, nx // 2), optional
        Buffer for the block sums (overwritten).
    """
    half = sum_2x2(image, out=sums, workers=workers)
    return rfft2_cropped_of_2x2(half, image.shape, out_shape_yx, workers=workers, work=work)


def rfft2_cropped_of_2x2(sums: np.ndarray, shape_yx: tuple[int, int],
                         out_shape_yx: tuple[int, int], *, workers: int = -1,
                         work: np.ndarray | None = None) -> np.ndarray:
    """:func:`rfft2_cropped_2x2` of an image of ``shape_yx`` from its 2 x 2 block sums
    ``sums`` (:func:`sum_2x2`, :func:`sum_2x2_of_rows`)."""
    ny, nx = (int(v) for v in shape_yx)
    my, mx = (int(v) for v in out_shape_yx)
    spectrum = rfft2_cropped(sums, (my, mx), workers=workers, work=work)
    ramp_y = np.exp(-1j * np.pi * frequency_indices(my) / ny).astype(spectrum.dtype)
    ramp_x = np.exp(-1j * np.pi * frequency_indices(mx, half=True) / nx).astype(spectrum.dtype)
    spectrum *= ramp_y[:, None]
    spectrum *= ramp_x[None, :]
    return spectrum


def frequency_indices(n: int, *, half: bool = False) -> np.ndarray:
    """Integer frequency indices of an axis of ``n`` pixels (``fftfreq(n) * n``), float64.

    ``half=True`` gives the ``n // 2 + 1`` non-negative indices of the rfft (last) axis.
    """
    if half:
        return np.arange(n // 2 + 1, dtype=np.float64)
    return np.fft.fftfreq(n, d=1.0 / n)


def shift_ramps(shape_yx: tuple[int, int], shift_yx_px: tuple[float, float] | np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Separable phase ramps that move image content by ``shift_yx_px`` (pixels).

    Multiplying a half spectrum by ``ramp_y[:, None] * ramp_x[None, :]`` moves the content of
    the image by ``+shift`` (a feature at ``(y, x)`` goes to ``(y + dy, x + dx)``), circularly.
    The shift is exact (band-limited interpolation) for any sub-pixel value.

    Parameters
    ----------
    shape_yx : (int, int)
        Real-space shape ``(ny, nx)``.
    shift_yx_px : (float, float)
        ``[dy, dx]`` in pixels of this grid.

    Returns
    -------
    ramp_y : ndarray, shape (ny,), complex64
    ramp_x : ndarray, shape (nx // 2 + 1,), complex64
    """
    ramps_y, ramps_x = shift_ramps_stack(shape_yx, np.asarray(shift_yx_px).reshape(1, 2))
    return ramps_y[0], ramps_x[0]


def shift_ramps_stack(shape_yx: tuple[int, int], shifts_yx_px: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`shift_ramps` for many shifts at once: row ``i`` of each is the ramp of
    ``shifts_yx_px[i]`` (one call for a stack of frames instead of one per frame).

    Returns
    -------
    ramps_y : ndarray, shape (n, ny), complex64
    ramps_x : ndarray, shape (n, nx // 2 + 1), complex64
    """
    ny, nx = (int(v) for v in shape_yx)
    shifts = np.asarray(shifts_yx_px, dtype=np.float64).reshape(-1, 2)
    ky = frequency_indices(ny)
    kx = frequency_indices(nx, half=True)
    ramps_y = np.exp(-2j * np.pi * ky[None, :] * (shifts[:, 0, None] / ny)).astype(np.complex64)
    ramps_x = np.exp(-2j * np.pi * kx[None, :] * (shifts[:, 1, None] / nx)).astype(np.complex64)
    return ramps_y, ramps_x


def apply_shift(spectrum: np.ndarray, shape_yx: tuple[int, int],
                shift_yx_px: tuple[float, float] | np.ndarray, *, out: np.ndarray | None = None
                ) -> np.ndarray:
    """Move the content of a half spectrum by ``shift_yx_px`` (see :func:`shift_ramps`).

    ``out`` may be ``spectrum`` itself (in place, no temporary of the full size).
    """
    ramp_y, ramp_x = shift_ramps(shape_yx, shift_yx_px)
    if out is None:
        out = spectrum * ramp_y[:, None]
    else:
        np.multiply(spectrum, ramp_y[:, None], out=out)
    out *= ramp_x[None, :]
    return out


def shift_image(image: np.ndarray, shift_yx_px: tuple[float, float] | np.ndarray, *,
                workers: int = -1) -> np.ndarray:
    """Circularly shift a real image by ``shift_yx_px`` with a Fourier phase ramp (same dtype)."""
    shape = image.shape[-2:]
    spec = rfft2(image, workers=workers)
    apply_shift(spec, shape, shift_yx_px, out=spec)
    return irfft2(spec, shape, workers=workers).astype(image.dtype, copy=False)


def radial_frequency_sq(shape_yx: tuple[int, int], *, scale_yx: tuple[float, float] = (1.0, 1.0)
                        ) -> np.ndarray:
    """Squared spatial frequency ``k^2`` on the half-spectrum grid, float32.

    Parameters
    ----------
    shape_yx : (int, int)
        Real-space shape ``(ny, nx)``.
    scale_yx : (float, float)
        Size of a pixel along y and x in the unit wanted: ``(1, 1)`` gives cycles/pixel;
        ``(pixel_size_A, pixel_size_A)`` gives 1/Å.

    Returns
    -------
    ndarray, shape (ny, nx // 2 + 1), float32
        ``(ky / (ny * sy))^2 + (kx / (nx * sx))^2``.
    """
    ny, nx = (int(v) for v in shape_yx)
    fy = (frequency_indices(ny) / (ny * scale_yx[0])).astype(np.float32)
    fx = (frequency_indices(nx, half=True) / (nx * scale_yx[1])).astype(np.float32)
    return fy[:, None] ** 2 + fx[None, :] ** 2


def bfactor_filter(shape_yx: tuple[int, int], bfactor_px2: float) -> np.ndarray:
    """Gaussian low-pass ``exp(-B k^2 / 4)`` on the half-spectrum grid, float32.

    ``k`` in cycles per pixel of this grid, ``B`` in pixels². Built separably (an outer product
    of two 1-D exponentials), so it costs one multiply per element.
    """
    ny, nx = (int(v) for v in shape_yx)
    fy = frequency_indices(ny) / ny
    fx = frequency_indices(nx, half=True) / nx
    gy = np.exp(-bfactor_px2 * fy * fy / 4.0).astype(np.float32)
    gx = np.exp(-bfactor_px2 * fx * fx / 4.0).astype(np.float32)
    return gy[:, None] * gx[None, :]


def bfactor_filter_1d(shape_yx: tuple[int, int], bfactor_px2: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The two factors of :func:`bfactor_filter`: ``gy[:, None] * gx[None, :]`` (float64).

    Returns
    -------
    gy : ndarray, shape (ny,)
    gx : ndarray, shape (nx // 2 + 1,)
    """
    ny, nx = (int(v) for v in shape_yx)
    fy = frequency_indices(ny) / ny
    fx = frequency_indices(nx, half=True) / nx
    return np.exp(-bfactor_px2 * fy * fy / 4.0), np.exp(-bfactor_px2 * fx * fx / 4.0)
