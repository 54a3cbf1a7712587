"""Where an image sits relative to a reference: an independent measure for tests.

``displacement_yx_px(image, reference)`` is ``d`` with ``image(q) ~ reference(q - d)`` (the
displacement of :mod:`correction.conventions`), found as the integer peak of the windowed
cross-correlation, then refined by a least-squares fit of the cross-spectrum's phase slope
over the low frequencies (accurate to a few hundredths of a pixel on a noisy sum); numpy only,
nothing of motionwatch's own alignment.
"""

from __future__ import annotations

import numpy as np


def _window(shape_yx: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape_yx[0]), np.hanning(shape_yx[1]))


def displacement_yx_px(image: np.ndarray, reference: np.ndarray, *,
                       max_frequency: float = 0.2) -> np.ndarray:
    """``[dy, dx]`` (pixels) moving ``reference`` onto ``image`` (same shape)."""
    a = np.asarray(image, np.float64)
    b = np.asarray(reference, np.float64)
    w = _window(a.shape)
    fa = np.fft.fft2((a - a.mean()) * w)
    fb = np.fft.fft2((b - b.mean()) * w)
    cross = fa * np.conj(fb)
    cc = np.fft.ifft2(cross).real
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape), float)
    shape = np.array(a.shape, float)
    peak = np.where(peak > shape / 2, peak - shape, peak)
    ky = np.fft.fftfreq(a.shape[0])[:, None] * np.ones((1, a.shape[1]))
    kx = np.fft.fftfreq(a.shape[1])[None, :] * np.ones((a.shape[0], 1))
    # the integer part removed: the residual phase -2 pi k.r is small, no wrapping
    residual = cross * np.exp(2j * np.pi * (ky * peak[0] + kx * peak[1]))
    low = (np.hypot(ky, kx) < max_frequency) & (np.hypot(ky, kx) > 0)
    weight = np.abs(residual[low])
    phase = np.angle(residual[low])
    design = -2 * np.pi * np.stack([ky[low], kx[low]], axis=1)
    sw = np.sqrt(weight)[:, None]
    fine, *_ = np.linalg.lstsq(design * sw, phase * sw[:, 0], rcond=None)
    return peak + fine
