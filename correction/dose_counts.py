"""The dose the frames count, against the dose given: a check of the dose and pixel settings.

On a counting detector (integer frames and no dark reference: K2, K3, Falcon 4, EER, DE in
counting mode) each count is one electron, so the frames' mean count per pixel and frame over
the pixel's area (``pixel_size_A ** 2``) is the dose per frame the specimen received, in e/Å²,
a little low by the detector's coincidence loss (at most about 30 % at the dose rates used for
counting), and low by the specimen's absorption: the dose given is the one on the specimen,
the frames count what passes it (an energy filter's slit removes more; a thick lamella at 60°
passes a third of it, or less). A dose given several times away from it is a setting gone
wrong, and the dose weighting that follows from it is wrong at every frequency:

* given :data:`ABOVE` times more than counted, or beyond: a movie's total dose given per frame,
  or super-resolution frames given the physical pixel size (4x their counts per sub-pixel, and
  more with absorption);
* given :data:`BELOW` times less, or below, on an EER movie: MotionCor2's ``-FmDose``, the
  dose of ONE raw frame, given as ``--dose-per-frame``, which for an EER movie is RELION's
  dose of a fraction (with 40 raw frames per fraction, 40x too little: weighting all but off).

Below the count is not checked for other movies: gain-normalised frames saved as scaled
integers, and the ADUs of an integrating camera, count more than one per electron.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ABOVE", "BELOW", "DoseCount", "check_dose_count"]

#: a dose given this many times what the frames count, or more: a setting gone wrong (a tilt's
#: specimen passes 1/1.6-1/2.8 of it at 0-66° in cryoCAT's TS_017, its mdoc's DoseRate)
ABOVE = 4.0
#: an EER movie's dose given this many times less than counted, or less
BELOW = 3.0


@dataclass(frozen=True, slots=True)
class DoseCount:
    """The dose per frame the frames count, and what it says of the dose given.

    Attributes
    ----------
    counted_e_A2 : float
        Mean counts per pixel and frame over the pixel's area (e/Å² per frame).
    given_e_A2 : float
        Mean dose per frame given, over the same frames (e/Å²).
    mismatch : str or None
        One line when the two differ by :data:`ABOVE` or :data:`BELOW` or more.
    """

    counted_e_A2: float
    given_e_A2: float
    mismatch: str | None = None

    def to_record(self) -> dict[str, object]:
        """The motion record's ``dose.counted`` (``per_frame_e_A2``, and ``mismatch``)."""
        return {"per_frame_e_A2": round(self.counted_e_A2, 6),
                **({"mismatch": self.mismatch} if self.mismatch else {})}


def check_dose_count(counts_per_px_per_frame: float, pixel_size_A: float,
                     given_e_A2_per_frame: float, *, eer: bool) -> DoseCount:
    """Compare the dose given with the one the frames count (module docstring).

    Parameters
    ----------
    counts_per_px_per_frame : float
        Mean raw count per pixel and frame of the frames used.
    pixel_size_A : float
        Pixel size of the frames as stored (Å; an EER movie's at its sampling).
    given_e_A2_per_frame : float
        Mean dose per frame given for the same frames (e/Å²).
    eer : bool
        An EER movie: a dose given too low is checked too.
    """
    counted = float(counts_per_px_per_frame) / float(pixel_size_A) ** 2
    given = float(given_e_A2_per_frame)
    head = (f"dose check: the dose given, {given:.4g} e/Å² per frame, is {{}} the frames count "
            f"({counted:.4g} e/Å² per frame at {pixel_size_A:.4g} Å per pixel)")
    mismatch = None
    if counted > 0 and given >= ABOVE * counted:
        mismatch = (head.format(f"{given / counted:.3g} times what") + ": a movie's total "
                    "dose given per frame, or the physical pixel size given for "
                    "super-resolution frames? (A very thick specimen at high tilt passes "
                    "few of its electrons.)")
    elif eer and given > 0 and counted >= BELOW * given:
        mismatch = (head.format(f"1/{counted / given:.3g} of what") + ": for an EER movie "
                    "--dose-per-frame is the dose of a fraction (RELION's), not of one raw "
                    "frame (MotionCor2's -FmDose: give that times the raw frames of a "
                    "fraction, or as the DOSE column of --fm-int-file)")
    return DoseCount(counted_e_A2=counted, given_e_A2=given, mismatch=mismatch)
