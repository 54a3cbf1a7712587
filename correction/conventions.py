"""The one statement of axis order, shift sign and units used throughout motionwatch.

Axis order
    Arrays follow numpy order: a movie is ``(n_frames, ny, nx)``; an image is ``(ny, nx)``.
    ``y`` is the row index, ``x`` the column index. A two-component name states its order:
    ``shifts_yx_px`` is ``(..., 2)`` with ``[dy, dx]``; the JSON motion record alone writes
    ``[dx, dy]`` (``global_shifts_px``).

Row order
    Row 0 of a frame is the first row of an MRC section (the bottom row as 3dmod displays it).
    A TIFF stores its top row first, so its rows are reversed on reading, as IMOD, SerialEM,
    MotionCor2/3 and RELION reverse them; EER frames and EER ``.gain`` files keep their stored
    order (:mod:`correction.io.tiff`).

Gain direction
    ``corrected = (raw - dark) * gain``, the gain file as it is (MotionCor2's ``-Gain``). For
    EER movies ``--eer-gain relion`` takes a gain file that is not a ``.gain`` file as a
    flat-field count image, ``gain = mean / file``, as RELION's ``EERRenderer::loadEERGain``
    does (:func:`correction.gain.reference_for_movie`).

Shift sign
    A shift is the **displacement of the specimen** in a frame relative to the aligned sum, in
    output pixels: a feature at ``(y0, x0)`` in the aligned sum is found at
    ``(y0 + dy, x0 + dx)`` in that frame. ``+x`` is increasing column index, ``+y`` increasing
    row index. To align a frame, it is shifted by ``-shift`` (see :func:`shift_to_apply`).
    MotionCor2/3 and RELION store the shift to *apply* (``-shift``) in (x, y).

Units
    Lengths in pixels carry ``_px``, in Ångström ``_A``; doses ``_e_A2`` (electrons per Å²);
    voltages ``_kV``; times ``_s``. Spatial frequency ``k`` is in 1/Å.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SHIFT_CONVENTION",
    "shift_to_apply",
    "yx_to_xy",
]

SHIFT_CONVENTION = (
    "global_shifts_px[i] = [dx, dy]: displacement of the specimen in frame i relative to the "
    "aligned sum, in output pixels; +x = increasing column index, +y = increasing row index; "
    "the frame is aligned by shifting it by [-dx, -dy]."
)


def shift_to_apply(shifts_yx_px: np.ndarray) -> np.ndarray:
    """The shift that aligns a frame (MotionCor/RELION convention): minus the displacement."""
    return -np.asarray(shifts_yx_px)


def yx_to_xy(shifts_yx: np.ndarray) -> np.ndarray:
    """Swap the last axis from ``[dy, dx]`` to ``[dx, dy]`` (for the JSON record only)."""
    return np.asarray(shifts_yx)[..., ::-1]
