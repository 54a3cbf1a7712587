"""Dose weighting after Grant & Grigorieff (2015): critical exposure and per-frame weights.

Model
    The critical exposure of a spatial frequency ``k`` (1/Å) at 300 kV is
    ``Ne(k) = 0.245 k^-1.665 + 2.81`` e/Å² (``Ne = inf`` at ``k = 0``). At other voltages it is
    multiplied by :func:`voltage_factor`. The amplitude of frequency ``k`` in a frame whose
    specimen has received an accumulated dose ``D`` is weighted by ``w = exp(-D / (2 Ne(k)))``,
    with ``D`` the dose at the **end** of the frame plus the pre-exposure; frame doses are
    counted over *all* frames of the movie, including thrown and truncated ones.

Voltage
    Radiation damage per electron follows the inelastic cross-section, which falls as
    ``1 / beta^2`` (Bethe), so the critical exposure scales with ``beta^2``. ``beta^2`` relative
    to 300 kV is 0.80 at 200 kV (the factor cisTEM and RELION use), 0.57 at 120 kV and 0.50 at
    100 kV. motionwatch uses the piecewise-linear table 100 kV -> 0.5, 200 kV -> 0.8,
    300 kV -> 1.0 (so 120 kV -> 0.56, within 2 % of the ``beta^2`` value), clamped outside
    100-300 kV. (RELION's 0.64 at 100 kV and MotionCor3's 0.45 at 120 kV bracket it.)

Normalisation
    The dose-weighted sum of frames ``F_i`` is
    ``sqrt(n) * sum_i w_i F_i / sqrt(sum_i w_i^2)`` per frequency (``n`` frames summed): its
    noise power equals that of the plain sum at every frequency, and it equals the plain sum at
    ``k = 0`` (where all weights are 1). Frames of unequal dose ``d_i`` (an EER movie's last
    fraction of a remainder of raw frames) count by their dose, as their noise power does:
    ``sqrt(sum_i d_i) * sum_i w_i F_i / sqrt(sum_i d_i w_i^2)``.

Underflow
    A factor common to all frames cancels in that normalisation, so the sums are computed from
    weights relative to a reference dose ``D_ref`` (the first summed frame's):
    ``w_i / w_ref = exp(-(D_i - D_ref) / 2Ne)``. The pre-exposure then never enters the
    exponent, and the weights cannot underflow however late the tilt; the absolute
    ``exp(-D / 2Ne)`` underflows float32 at high frequency from about 250-280 e/Å² of
    pre-exposure at 300 kV (140-155 at 100-120 kV), which made ``0 * inf = NaN`` images.

References
----------
Grant, T. & Grigorieff, N. (2015) Measuring the optimal exposure for single particle cryo-EM
using a 2.6 Å reconstruction of rotavirus VP6. eLife 4, e06980.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import ParameterError
from .params import DoseParams

__all__ = [
    "same_weighting",
    "doses_received_alike",
    "CRITICAL_EXPOSURE_A",
    "CRITICAL_EXPOSURE_B",
    "CRITICAL_EXPOSURE_C",
    "VOLTAGE_FACTORS",
    "voltage_factor",
    "critical_exposure_e_A2",
    "dose_from_rate_e_A2",
    "NO_DOSE_REASON",
    "frame_doses_e_A2",
    "accumulated_dose_e_A2",
    "dose_weights",
    "half_inverse_critical_exposure",
    "weight_normalisation",
    "relative_frame_doses",
]

CRITICAL_EXPOSURE_A = 0.245
CRITICAL_EXPOSURE_B = -1.665
CRITICAL_EXPOSURE_C = 2.81
#: (voltage kV, factor on Ne) anchors, linearly interpolated, clamped outside.
VOLTAGE_FACTORS: tuple[tuple[float, float], ...] = ((100.0, 0.5), (200.0, 0.8), (300.0, 1.0))
#: Why a movie whose dose nobody gave cannot be dose-weighted (a data error, not a retry).
NO_DOSE_REASON = "no dose: give --dose-per-frame/--total-dose or a SerialEM mdoc"


def dose_from_rate_e_A2(rate_e_per_px_s: float, exposure_s: float, pixel_size_A: float
                        ) -> float:
    """Dose on the specimen (e/Å²) from a dose rate in electrons per camera pixel per second
    (SerialEM's ``DoseRate``, per *unbinned* pixel) over ``exposure_s`` seconds, with
    ``pixel_size_A`` the unbinned pixel's size in Å."""
    return rate_e_per_px_s * exposure_s / pixel_size_A ** 2


def voltage_factor(voltage_kV: float) -> float:
    """Factor on the 300 kV critical exposure at ``voltage_kV`` (see module docstring)."""
    if not voltage_kV > 0:
        raise ParameterError(f"voltage_kV must be > 0 kV, got {voltage_kV}")
    kv = [v for v, _ in VOLTAGE_FACTORS]
    f = [x for _, x in VOLTAGE_FACTORS]
    return float(np.interp(float(voltage_kV), kv, f))


def critical_exposure_e_A2(k_per_A: np.ndarray | float, voltage_kV: float = 300.0
                           ) -> np.ndarray:
    """Critical exposure ``Ne(k)`` in e/Å² (``inf`` at ``k = 0``).

    Parameters
    ----------
    k_per_A : array_like
        Spatial frequency magnitude in 1/Å (>= 0).
    voltage_kV : float
        Acceleration voltage in kV (scales Ne by :func:`voltage_factor`).
    """
    k = np.asarray(k_per_A, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ne = CRITICAL_EXPOSURE_A * np.power(k, CRITICAL_EXPOSURE_B) + CRITICAL_EXPOSURE_C
    return ne * voltage_factor(voltage_kV)


def half_inverse_critical_exposure(k2_per_A2: np.ndarray, voltage_kV: float = 300.0
                                   ) -> np.ndarray:
    """``1 / (2 Ne(k))`` in Å²/e from the squared frequency, float32, computed in place.

    The weight of a frame with accumulated dose ``D`` is then ``exp(-D * result)``; 0 at
    ``k = 0``. Same model as :func:`critical_exposure_e_A2`, evaluated in float32 for big
    frequency grids.

    Parameters
    ----------
    k2_per_A2 : ndarray, float32
        Squared spatial frequency in 1/Å² (e.g. :func:`correction.fourier.radial_frequency_sq`
        with the pixel size as scale). Overwritten with the result.
    voltage_kV : float
    """
    out = np.asarray(k2_per_A2, dtype=np.float32)
    with np.errstate(divide="ignore"):
        np.log(out, out=out)  # ln k^2 (-inf at k = 0)
    out *= np.float32(CRITICAL_EXPOSURE_B / 2.0)
    np.exp(out, out=out)  # k^b (inf at k = 0)
    out *= np.float32(CRITICAL_EXPOSURE_A)
    out += np.float32(CRITICAL_EXPOSURE_C)
    out *= np.float32(2.0 * voltage_factor(voltage_kV))
    np.reciprocal(out, out=out)
    return out


def frame_doses_e_A2(params: DoseParams, n_frames: int, *,
                     raw_frames_per_frame: tuple[int, ...] | np.ndarray | None = None,
                     raw_frames_per_group: int | None = None) -> np.ndarray:
    """Dose of every frame of the movie as stored (e/Å²), shape (n_frames,), float64.

    ``n_frames`` counts *all* frames in the file (before throw/trunc). ``frame_doses_e_A2``
    per ``"frame"`` must list exactly ``n_frames`` values and is used as given; per
    ``"raw_frame"`` (SerialEM's ``FrameDosesAndNumber`` of an EER movie) it lists one dose per
    raw frame, and each frame gets the sum of the doses of exactly the raw frames it holds
    (``raw_frames_per_frame``, consecutive; they must account for every listed raw frame).
    Without ``raw_frames_per_frame`` a raw-frame list is taken per frame when its length is
    ``n_frames`` (a movie whose frames are its raw frames). Otherwise ``total_dose_e_A2`` is
    spread over the frames in proportion to ``raw_frames_per_frame`` when given (EER fractions
    of uneven size), else evenly; ``dose_per_frame_e_A2`` is the dose of each frame, and with
    ``raw_frames_per_frame`` the dose of a whole fraction of ``raw_frames_per_group`` raw
    frames (the EER group; default: the first fraction's count, as every fraction but the last
    holds a whole group), as RELION's "dose per frame" of EER fractions: each fraction gets it
    times its raw frames over the group (fractions of 19, 19 and 22 raw frames grouped by 19:
    1, 1 and 22/19 of it; the leftover raw frames RELION drops keep their dose here).

    Raises
    ------
    ParameterError
        When no dose is known (:data:`NO_DOSE_REASON`), when ``frame_doses_e_A2`` or
        ``raw_frames_per_frame`` has the wrong length, or a raw frame count is not positive.
    """
    raw = None
    if raw_frames_per_frame is not None:
        raw = np.asarray(raw_frames_per_frame, dtype=np.int64).reshape(-1)
        if raw.size != n_frames or not np.all(raw > 0):
            raise ParameterError(f"raw_frames_per_frame must list {n_frames} positive counts, "
                                 f"got {raw.tolist()}")
    if params.frame_doses_e_A2 is not None:
        doses = np.asarray(params.frame_doses_e_A2, dtype=np.float64)
        if params.frame_doses_per == "raw_frame" and raw is not None:
            if doses.size != int(raw.sum()):
                raise ParameterError(
                    f"frame_doses_e_A2 lists {doses.size} raw-frame doses, but the movie's "
                    f"{n_frames} frames hold {int(raw.sum())} raw frames")
            starts = np.concatenate([[0], np.cumsum(raw)[:-1]])
            return np.add.reduceat(doses, starts)
        if doses.size != n_frames:
            per = "raw-frame doses" if params.frame_doses_per == "raw_frame" else "doses"
            raise ParameterError(f"frame_doses_e_A2 lists {doses.size} {per} for a movie of "
                                 f"{n_frames} frames")
        return doses
    if params.dose_per_frame_e_A2 is not None and raw is not None:
        group = int(raw[0]) if raw_frames_per_group is None else int(raw_frames_per_group)
        if group <= 0:
            raise ParameterError(f"raw_frames_per_group must be positive, got {group}")
        return float(params.dose_per_frame_e_A2) * raw.astype(np.float64) / group
    if params.dose_per_frame_e_A2 is not None:
        total = float(params.dose_per_frame_e_A2) * n_frames
    elif params.total_dose_e_A2 is not None:
        total = float(params.total_dose_e_A2)
    else:
        raise ParameterError(NO_DOSE_REASON)
    if raw is None:
        return np.full(n_frames, total / n_frames)
    raw = raw.astype(np.float64)
    return total * raw / raw.sum()


def same_weighting(a: DoseParams, b: DoseParams, n_frames: int, *,
                   tolerance_e_A2: float) -> bool:
    """Whether two dose parameters weight one movie of ``n_frames`` frames alike: the same
    voltage (kV), pre-exposures within ``tolerance_e_A2``, and at every frame the dose received
    (the running sum of the frame doses, e/Å²) within it. ``n_frames`` counts the frames a
    list gives doses for (raw frames of an EER movie, as a list per raw frame does); a total
    dose is spread evenly over them, as :func:`frame_doses_e_A2` spreads it (in proportion to
    the raw frames of EER fractions). A list of another length, a list per frame against one
    per raw frame, or ``dose_per_frame_e_A2`` (whose meaning depends on the EER grouping) is
    alike only when equal. So ``total 4`` and 200 raw frames of ``0.02`` are alike; so are
    SerialEM's rounded ``0.63824`` and the spread ``0.638243``."""
    if a == b:
        return True
    if abs(a.voltage_kV - b.voltage_kV) > 1e-6 \
            or abs(a.pre_exposure_e_A2 - b.pre_exposure_e_A2) > tolerance_e_A2:
        return False
    spread_a, spread_b = _spread(a, n_frames), _spread(b, n_frames)
    if spread_a is None or spread_b is None:
        return False
    (doses_a, per_a), (doses_b, per_b) = spread_a, spread_b
    if per_a is not None and per_b is not None and per_a != per_b:
        return False
    return doses_received_alike(doses_a, doses_b, tolerance_e_A2=tolerance_e_A2)


def doses_received_alike(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                         tolerance_e_A2: float) -> bool:
    """Whether two lists of per-frame doses (e/Å²) have the same length and, at every frame,
    running sums (the dose received so far, what dose weighting reads) within the tolerance:
    values each off by less than it still differ when they add up over many frames."""
    if len(a) != len(b):
        return False
    received = np.cumsum(np.asarray(a, np.float64)) - np.cumsum(np.asarray(b, np.float64))
    return bool(np.all(np.abs(received) <= tolerance_e_A2))


def _spread(params: DoseParams, n_frames: int) -> tuple[np.ndarray, str | None] | None:
    """``(dose of each of n_frames, what they are)``: a list as given ("frame" or
    "raw_frame"), a total spread evenly (None: either); None when not comparable."""
    if n_frames < 1:
        return None
    if params.frame_doses_e_A2 is not None:
        if len(params.frame_doses_e_A2) != n_frames:
            return None
        return np.asarray(params.frame_doses_e_A2, np.float64), params.frame_doses_per
    if params.total_dose_e_A2 is not None:
        return np.full(n_frames, float(params.total_dose_e_A2) / n_frames), None
    return None


def accumulated_dose_e_A2(frame_doses: np.ndarray, pre_exposure_e_A2: float = 0.0
                          ) -> np.ndarray:
    """Accumulated dose at the END of each frame plus pre-exposure (e/Å²), shape (n,)."""
    return float(pre_exposure_e_A2) + np.cumsum(np.asarray(frame_doses, dtype=np.float64))


def dose_weights(k_per_A: np.ndarray | float, dose_end_e_A2: np.ndarray | float,
                 voltage_kV: float = 300.0, *, reference_dose_e_A2: float = 0.0
                 ) -> np.ndarray:
    """Unnormalised weights ``exp(-(D - D_ref) / (2 Ne(k)))``.

    Parameters
    ----------
    k_per_A : array_like, shape K
        Spatial frequencies in 1/Å.
    dose_end_e_A2 : array_like, shape (n,) or scalar
        Accumulated dose at the end of each frame, pre-exposure included (e/Å²).
    voltage_kV : float
    reference_dose_e_A2 : float
        ``D_ref`` (e/Å²). 0 gives the absolute weights ``exp(-D / 2Ne)`` (what an
        exposure-filtered image needs); a sum normalised by :func:`weight_normalisation`
        passes the first summed frame's dose, so the weights are relative to it, at most 1
        and never underflow (see the module docstring). Give the same value to both.

    Returns
    -------
    ndarray, shape (n,) + K (or K for a scalar dose), float64
    """
    ne = critical_exposure_e_A2(k_per_A, voltage_kV)
    d = np.asarray(dose_end_e_A2, dtype=np.float64) - float(reference_dose_e_A2)
    return np.exp(-d.reshape(d.shape + (1,) * ne.ndim) / (2.0 * ne))


def weight_normalisation(k_per_A: np.ndarray | float, dose_end_e_A2: np.ndarray,
                         voltage_kV: float = 300.0, *, reference_dose_e_A2: float = 0.0,
                         frame_dose_e_A2: np.ndarray | None = None) -> np.ndarray:
    """Factor ``sqrt(sum_i d_i) / sqrt(sum_i d_i w_i(k)^2)`` that normalises a dose-weighted
    sum (``sqrt(n / sum_i w_i^2)`` for frames of equal dose).

    ``dose_end_e_A2`` lists the frames actually summed (n of them), ``frame_dose_e_A2`` their
    own doses ``d_i`` (default: equal; see :func:`relative_frame_doses`). With it, the
    dose-weighted sum has the noise power of the plain sum and equals it at ``k = 0``. The
    weights are :func:`dose_weights` with the same ``reference_dose_e_A2``; the product
    ``w_i * factor`` does not depend on it (up to rounding), but only a reference near the
    frames' doses keeps both finite at high pre-exposure.
    """
    w = dose_weights(k_per_A, dose_end_e_A2, voltage_kV,
                     reference_dose_e_A2=reference_dose_e_A2)
    n = np.asarray(dose_end_e_A2).size
    r = relative_frame_doses(frame_dose_e_A2, n)
    r = r.reshape(r.shape + (1,) * (w.ndim - 1))
    return np.sqrt(float(r.sum()) / np.sum(r * w * w, axis=0))


def relative_frame_doses(frame_dose_e_A2: np.ndarray | None, n_frames: int) -> np.ndarray:
    """Each summed frame's own dose over their mean, shape (n_frames,), float64: ones when
    the doses are not given, equal, or not all positive (nothing to tell them apart by).

    A frame's noise power is in proportion to its dose, so a normalisation that keeps the
    dose-weighted sum's noise power that of the plain sum counts each frame by its dose: an
    EER movie's last fraction of a remainder of raw frames holds fewer (or more) electrons
    than the others.
    """
    ones = np.ones(n_frames)
    if frame_dose_e_A2 is None:
        return ones
    d = np.asarray(frame_dose_e_A2, dtype=np.float64).reshape(-1)
    if d.size != n_frames:
        raise ValueError(f"{d.size} frame doses for {n_frames} frames")
    if not np.all(np.isfinite(d)) or not np.all(d > 0) or np.allclose(d, d[0], rtol=1e-6,
                                                                       atol=0):
        return ones  # equal to float rounding: exactly the frame count's normalisation
    return d / d.mean()
