"""Noise power of weighted sums against the plain sum, band by band (tests of the dose
weights' normalisation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Bands (1/Å) in which the dose weights of a few e/Å² differ most from frame to frame.
HIGH_BANDS_PER_A = ((0.2, 0.3), (0.3, 0.45))


def band_power(image: np.ndarray, pixel_A: float, lo: float, hi: float) -> float:
    """Mean power of ``image``'s spectrum between ``lo`` and ``hi`` (1/Å)."""
    spec = np.fft.rfft2(image - image.mean())
    ky = np.fft.fftfreq(image.shape[0], d=pixel_A)[:, None]
    kx = np.fft.rfftfreq(image.shape[1], d=pixel_A)[None, :]
    k = np.sqrt(ky ** 2 + kx ** 2)
    band = (k >= lo) & (k < hi)
    return float(np.mean(np.abs(spec[band]) ** 2))


def noise_power_ratios(images: Mapping[str, np.ndarray], frame_doses: Sequence[float],
                       pixel_A: float) -> dict[tuple[str, float, float], float]:
    """Noise power of the ``dw``, ``even`` and ``odd`` sums over that of the plain sum
    (``images["sum"]``) of their own frames, per band of :data:`HIGH_BANDS_PER_A`: 1 when
    each is normalised as the plain sum of its frames (frames counted by their dose, as their
    shot noise is; frames counted from 0 for the parity). The images must hold noise alone
    at these frequencies."""
    d = np.asarray(frame_doses, dtype=np.float64)
    share = {"dw": 1.0, "even": d[0::2].sum() / d.sum(), "odd": d[1::2].sum() / d.sum()}
    ratios = {}
    for lo, hi in HIGH_BANDS_PER_A:
        plain = band_power(images["sum"], pixel_A, lo, hi)
        for name, fraction in share.items():
            ratios[name, lo, hi] = band_power(images[name], pixel_A, lo, hi) / (plain * fraction)
    return ratios
