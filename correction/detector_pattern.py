"""Is a pattern fixed to the detector left in the frames? (a missing or unfitting gain reference)

A counting detector's pixels differ in gain by a few per cent. Without a gain reference (frames
saved unnormalised, ``--gain`` forgotten), or with one that does not fit (another camera mode,
an old session, a wrong orientation), every frame carries the same pixel-by-pixel pattern.
The whole-frame alignment then meets that pattern in its reference: on a specimen of low
contrast (a few per cent, as in ice) it holds every shift near zero with a high correlation
peak, and nothing else looks wrong.

The check: sum the gain-corrected frames (defects and hot pixels replaced) of even and of odd
index in a central window, in detector coordinates, and compute the Fourier ring correlation
of the two sums. Shot noise is independent between them; a fixed pattern is the same in both.
Its pixels vary independently, so its FRC is flat up to Nyquist (about ``s^2 N / (1 + s^2 N)``
for a relative pattern ``s`` and ``N`` counts per pixel in a half sum), while a specimen's
falls off with frequency (the detector's MTF, the microscope's envelope, damage) and its high
frequencies are blurred by the drift within each half. A pattern is reported when the FRC
over 0.8-1.0 Nyquist is clearly above noise (significance, its mean over ``1/sqrt(M/2)`` for
``M`` coefficients in the band, at least :data:`MIN_SIGNIFICANCE`) and at least
:data:`FLATNESS` times the FRC over 0.5-0.65 Nyquist. Axis bands are left out (the window's
edges, and stripes along rows or columns, put their power there).

Measured (1024^2 x 10 frames, 2 e/px/frame, 6 px drift, specimen of 3 % contrast, gain pattern
of 5 % per pixel and 3 % per column, ``tests/correction/test_detector_pattern.py``): without the
gain, FRC 0.024 over 0.8-1.0 Nyquist, flat, significance about 9 in a 1024^2 window, and the
shifts held at 0 (1.9 px RMS error); with the gain, 0.00 +- 0.003.

Cost: two window sums and two 1024^2 transforms per movie (0.012-0.018 s at 4K here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .frc import fourier_ring_correlation

__all__ = ["DetectorPatternCheck", "HalfSumWindows", "WINDOW_PX", "MIN_SIGNIFICANCE",
           "FLATNESS"]

#: side of the central window summed (pixels)
WINDOW_PX = 1024
#: smallest significance of the FRC near Nyquist that counts as a pattern
MIN_SIGNIFICANCE = 8.0
#: FRC near Nyquist over FRC at mid frequencies from which the curve counts as flat
FLATNESS = 0.7
_HIGH_BAND = (0.8, 1.0)  # fractions of Nyquist
_MID_BAND = (0.5, 0.65)


@dataclass(frozen=True, slots=True)
class DetectorPatternCheck:
    """The even/odd FRC of the frames in detector coordinates, and what it says.

    Attributes
    ----------
    frc_high : float
        Mean FRC over 0.8-1.0 Nyquist (dimensionless).
    frc_mid : float
        Mean FRC over 0.5-0.65 Nyquist.
    significance : float
        ``frc_high`` in standard deviations of the FRC of independent noise over that band.
    window_yx_px : (int, int)
        The central window summed (the detector's physical pixels).
    detected : bool
        A pattern fixed to the detector: significant and flat (see the module docstring).
    """

    frc_high: float
    frc_mid: float
    significance: float
    window_yx_px: tuple[int, int]
    detected: bool

    def to_record(self, *, gain_given: bool, gain_advice: str | None = None,
                  hot_pixels_searched: bool = True) -> dict[str, Any]:
        """JSON-ready dict (the motion record's ``detector_pattern``; ``message`` when
        detected)."""
        message = self.message(gain_given=gain_given, gain_advice=gain_advice,
                               hot_pixels_searched=hot_pixels_searched)
        return {"detected": self.detected,
                **({"message": message} if self.detected else {}),
                "frc_0.8_1.0_nyquist": round(self.frc_high, 4),
                "frc_0.5_0.65_nyquist": round(self.frc_mid, 4),
                "significance": round(self.significance, 1),
                "window_px": list(self.window_yx_px),
                "rule": f"significance >= {MIN_SIGNIFICANCE:g}, 0.8-1.0 >= {FLATNESS:g} x "
                        "0.5-0.65 Nyquist"}

    def message(self, *, gain_given: bool, gain_advice: str | None = None,
                hot_pixels_searched: bool = True) -> str:
        """One line for a movie whose frames share a fixed pattern.

        ``gain_advice``: for an EER movie, how its gain file was applied and the other way
        (:meth:`correction.gain.GainReference.eer_advice`), added to the cause.
        ``hot_pixels_searched``: False with ``--no-hot-pixels``, when hot pixels left in the
        frames are a pattern of their own (ten of them in a normalised 512^2 movie suffice).
        """
        cause = ("the gain reference does not remove it (another camera mode, session or "
                 "orientation?)" if gain_given else
                 "no gain reference was given (--gain): the frames are unnormalised, or were "
                 "normalised with a gain that does not fit them")
        if gain_given and gain_advice:
            cause += f"; {gain_advice}"
        if not hot_pixels_searched:
            cause += "; or hot pixels left in the frames (--no-hot-pixels)"
        return (f"the frames share a pattern fixed to the detector (even/odd FRC "
                f"{self.frc_high:.3f} at 0.8-1.0 Nyquist in detector coordinates, "
                f"{self.significance:.0f} sigma, as high as at mid frequencies, where a "
                f"specimen's falls off): {cause}; it pulls the shifts towards zero")


class HalfSumWindows:
    """Sums of the central window of the even and of the odd frames, frame by frame.

    :meth:`add` takes each frame once (a frame given again is skipped), gain-corrected, in
    detector coordinates; :meth:`check` gives the :class:`DetectorPatternCheck` (None for a
    window under 64 pixels on a side, or without a frame of each parity). Frames rendered on
    a finer grid than the detector's pixels (``subpixels``: an EER at sampling 2) are summed
    over each physical pixel's sub-pixels first (the window is ``window_px`` physical pixels):
    a pattern of the physical pixels lies below half the fine grid's Nyquist, and was not seen
    at 0.8-1.0 of it.
    """

    def __init__(self, frame_shape_yx: tuple[int, int], window_px: int = WINDOW_PX, *,
                 subpixels: int = 1) -> None:
        ny, nx = (int(v) for v in frame_shape_yx)
        self.subpixels = max(1, int(subpixels))
        step = 2 * self.subpixels  # whole physical pixels, an even count of them
        window_px = int(window_px) * self.subpixels
        wy, wx = min(ny, window_px) // step * step, min(nx, window_px) // step * step
        y0 = (ny - wy) // 2 // self.subpixels * self.subpixels
        x0 = (nx - wx) // 2 // self.subpixels * self.subpixels
        self.window = (slice(y0, y0 + wy), slice(x0, x0 + wx))
        self.sums = np.zeros((2, wy, wx), np.float32)
        self.seen: set[int] = set()
        self.count = [0, 0]

    def add(self, index: int, frame: np.ndarray) -> None:
        """Add frame ``index`` (its movie index gives the parity) unless it was added before."""
        if index not in self.seen:
            self.add_window(index, frame[self.window])

    def add_window(self, index: int, values: np.ndarray) -> None:
        """:meth:`add` given the frame's pixels in :attr:`window` alone (a frame never made
        whole)."""
        if index in self.seen:
            return
        self.seen.add(index)
        parity = index % 2
        self.sums[parity] += values
        self.count[parity] += 1

    def check(self) -> DetectorPatternCheck | None:
        b = self.subpixels
        wy, wx = self.sums.shape[1] // b, self.sums.shape[2] // b
        if min(wy, wx) < 64 or min(self.count) < 1:
            return None
        physical = self.sums.reshape(2, wy, b, wx, b).sum(axis=(2, 4)) if b > 1 else self.sums
        centred = [total - np.float32(total.mean()) for total in physical]
        curve = fourier_ring_correlation(*centred, axis_mask_px=None)
        nyquist = 0.5
        high, n_high = curve.band_mean(_HIGH_BAND[0] * nyquist, _HIGH_BAND[1] * nyquist)
        mid, _ = curve.band_mean(_MID_BAND[0] * nyquist, _MID_BAND[1] * nyquist)
        # conjugate coefficients are counted twice by the ring sums: n / 2 are independent
        significance = high * math.sqrt(n_high / 2.0) if n_high else 0.0
        detected = bool(significance >= MIN_SIGNIFICANCE and high >= FLATNESS * max(mid, 0.0))
        return DetectorPatternCheck(high, mid, significance, (wy, wx), detected)
