"""Synthetic movies with known motion, for tests, the demo and benchmarks.

A specimen-like image (positive, with a ``1/k`` amplitude spectrum plus compact "particles")
is rendered on a canvas larger than the frame, moved by exact sub-pixel Fourier shifts, and
cropped, so no content wraps around. Optionally each frame's signal is attenuated by radiation
damage following the critical-exposure curve of :mod:`correction.dose`. Counts are Poisson
draws of ``signal / gain`` (so that ``raw * gain`` recovers the signal, the multiplicative
gain convention), plus hot pixels. Shifts follow :mod:`correction.conventions`: frame ``i``
shows the specimen displaced by ``shifts_yx_px[i]`` relative to :attr:`SyntheticMovie.truth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dose import accumulated_dose_e_A2, critical_exposure_e_A2
from .fourier import apply_shift, irfft2, radial_frequency_sq, rfft2

__all__ = ["SyntheticMovie", "specimen_image", "gain_pattern", "drift_trajectory",
           "render_movie"]


@dataclass(frozen=True, slots=True)
class SyntheticMovie:
    """A rendered movie and the truth it was made from.

    Attributes
    ----------
    frames : ndarray, shape (n_frames, ny, nx)
        Counts in the requested dtype.
    gain : ndarray, shape (ny, nx), float32
        Multiplicative gain reference: ``frames * gain`` estimates the signal.
    shifts_yx_px : ndarray, shape (n_frames, 2)
        True displacement ``[dy, dx]`` of the specimen in each frame (pixels).
    truth : ndarray, shape (ny, nx), float32
        Undamaged expected electrons per pixel per frame at zero shift.
    hot_pixels_yx : ndarray, shape (n_hot, 2), int
        Row/column of the hot pixels.
    frame_doses_e_A2 : ndarray, shape (n_frames,)
        Dose per frame implied by ``electrons_per_px_per_frame`` and ``pixel_size_A``.
    pixel_size_A : float
    """

    frames: np.ndarray
    gain: np.ndarray
    shifts_yx_px: np.ndarray
    truth: np.ndarray
    hot_pixels_yx: np.ndarray
    frame_doses_e_A2: np.ndarray
    pixel_size_A: float


def specimen_image(rng: np.random.Generator, shape_yx: tuple[int, int], *,
                   contrast: float = 0.3, n_particles: int | None = None,
                   particle_radius_px: float = 6.0) -> np.ndarray:
    """A positive specimen-like image of mean 1 (float32).

    A ``1/k`` amplitude (``1/k^2`` power) random field plus dark Gaussian "particles", scaled
    so that its relative standard deviation is ``contrast``, and clipped at 5 % of the mean.
    """
    ny, nx = shape_yx
    k2 = radial_frequency_sq((ny, nx))
    amp = 1.0 / np.sqrt(k2 + (4.0 / max(ny, nx)) ** 2)
    noise = rfft2(rng.standard_normal((ny, nx), dtype=np.float32))
    field = irfft2(noise * amp.astype(np.float32), (ny, nx))
    if n_particles is None:
        n_particles = int(ny * nx / (12 * particle_radius_px) ** 2)
    if n_particles:
        blobs = np.zeros((ny, nx), np.float32)
        ys = rng.integers(0, ny, n_particles)
        xs = rng.integers(0, nx, n_particles)
        np.add.at(blobs, (ys, xs), 1.0)
        g = np.exp(-2 * np.pi**2 * particle_radius_px**2 * k2 / 4).astype(np.float32)
        blobs = irfft2(rfft2(blobs) * g, (ny, nx))
        field -= blobs * (3.0 * field.std() / max(float(blobs.max()), 1e-12))
    field = (field - field.mean()) / max(float(field.std()), 1e-12)
    return np.maximum(1.0 + contrast * field, 0.05).astype(np.float32)


def gain_pattern(rng: np.random.Generator, shape_yx: tuple[int, int], *,
                 pixel_sigma: float = 0.05, column_sigma: float = 0.03) -> np.ndarray:
    """A multiplicative gain reference near 1: per-pixel and per-column variations (float32)."""
    ny, nx = shape_yx
    g = 1.0 + pixel_sigma * rng.standard_normal((ny, nx))
    g += column_sigma * rng.standard_normal(nx)[None, :]
    return np.clip(g, 0.5, 1.5).astype(np.float32)


def drift_trajectory(rng: np.random.Generator, n_frames: int, *, total_px: float = 8.0,
                     jitter_px: float = 0.3) -> np.ndarray:
    """A plausible drift: fast at the start, slowing down, with sub-pixel jitter.

    Returns ``shifts_yx_px`` of shape (n_frames, 2), mean zero.
    """
    t = np.arange(n_frames, dtype=np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    path = total_px * (1 - np.exp(-t / max(n_frames / 3.0, 1.0)))
    path /= max(path[-1], 1e-12) / total_px if n_frames > 1 else 1.0
    s = np.stack([path * np.sin(angle), path * np.cos(angle)], axis=1)
    s += jitter_px * rng.standard_normal((n_frames, 2))
    return s - s.mean(axis=0)


def render_movie(rng: np.random.Generator, *, shape_yx: tuple[int, int] = (1024, 1024),
                 n_frames: int = 10, shifts_yx_px: np.ndarray | None = None,
                 electrons_per_px_per_frame: float = 1.0, pixel_size_A: float = 1.0,
                 gain: np.ndarray | bool | None = True, n_hot_pixels: int = 20,
                 hot_pixel_counts: float = 40.0, damage: bool = False,
                 voltage_kV: float = 300.0, pre_exposure_e_A2: float = 0.0,
                 dtype: np.dtype | type = np.int16, specimen: np.ndarray | None = None,
                 contrast: float = 0.3) -> SyntheticMovie:
    """Render a counting movie of a drifting specimen with known shifts.

    Parameters
    ----------
    rng : numpy.random.Generator
        All randomness comes from here.
    shape_yx : (int, int)
        Frame shape (pixels).
    n_frames : int
    shifts_yx_px : ndarray, shape (n_frames, 2), optional
        Displacement of the specimen per frame (:mod:`correction.conventions`); default a
        :func:`drift_trajectory`.
    electrons_per_px_per_frame : float
        Mean counts per pixel per frame (the dose per frame is this / pixel_size_A²).
    pixel_size_A : float
    gain : ndarray, bool or None
        ``True`` renders a :func:`gain_pattern`; an array is used as is; None/False = all ones.
    n_hot_pixels, hot_pixel_counts : int, float
        Hot pixels get an extra Poisson(``hot_pixel_counts``) in every frame.
    damage : bool
        Attenuate frame ``i``'s signal at frequency ``k`` by ``exp(-D_i / (2 Ne(k)))`` with
        ``D_i`` the accumulated dose at the end of frame ``i`` plus pre-exposure.
    dtype : dtype
        Stored dtype of the counts (int16, uint16, uint8 ...); values are clipped to its range.
    specimen : ndarray, shape (ny + 2m, nx + 2m), optional
        A canvas to use instead of :func:`specimen_image` (mean ~1).

    Returns
    -------
    SyntheticMovie
    """
    ny, nx = (int(v) for v in shape_yx)
    if shifts_yx_px is None:
        shifts_yx_px = drift_trajectory(rng, n_frames)
    shifts = np.asarray(shifts_yx_px, dtype=np.float64).reshape(n_frames, 2)
    margin = int(np.ceil(np.abs(shifts).max(initial=0.0))) + 16
    cy, cx = ny + 2 * margin, nx + 2 * margin
    canvas = specimen if specimen is not None else specimen_image(rng, (cy, cx), contrast=contrast)
    if canvas.shape != (cy, cx):
        margin = (canvas.shape[0] - ny) // 2
        cy, cx = canvas.shape
    canvas_spec = rfft2(np.asarray(canvas, np.float32) * np.float32(electrons_per_px_per_frame))
    truth = canvas[margin:margin + ny, margin:margin + nx] * np.float32(electrons_per_px_per_frame)

    if gain is True:
        gain_arr = gain_pattern(rng, (ny, nx))
    elif gain is None or gain is False:
        gain_arr = np.ones((ny, nx), np.float32)
    else:
        gain_arr = np.asarray(gain, np.float32)
    doses = np.full(n_frames, electrons_per_px_per_frame / pixel_size_A**2)
    dose_end = accumulated_dose_e_A2(doses, pre_exposure_e_A2)
    if damage:
        k = np.sqrt(radial_frequency_sq((cy, cx), scale_yx=(pixel_size_A, pixel_size_A)))
        inv_2ne = (1.0 / (2.0 * critical_exposure_e_A2(k, voltage_kV))).astype(np.float32)

    hot = np.stack([rng.integers(0, ny, n_hot_pixels), rng.integers(0, nx, n_hot_pixels)], 1)
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    frames = np.empty((n_frames, ny, nx), dtype=dtype)
    for i in range(n_frames):
        spec = apply_shift(canvas_spec, (cy, cx), shifts[i])
        if damage:
            spec *= np.exp(-dose_end[i] * inv_2ne)
        signal = irfft2(spec, (cy, cx))[margin:margin + ny, margin:margin + nx]
        lam = np.maximum(signal, 0) / gain_arr
        counts = rng.poisson(lam).astype(np.float64)
        if n_hot_pixels:
            counts[hot[:, 0], hot[:, 1]] += rng.poisson(hot_pixel_counts, n_hot_pixels)
        if info is not None:
            counts = np.clip(counts, info.min, info.max)
        frames[i] = counts
    return SyntheticMovie(frames=frames, gain=gain_arr, shifts_yx_px=shifts,
                          truth=np.ascontiguousarray(truth, dtype=np.float32),
                          hot_pixels_yx=hot, frame_doses_e_A2=doses,
                          pixel_size_A=float(pixel_size_A))
