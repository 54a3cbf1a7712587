"""The per-tilt record: a movie's place in its tilt series and its dose history.

It is written into the movie's motion record (``S.motion.json`` key ``tilt``) and its state row,
and read back by series assembly, ``motionwatch status`` and the live feed. This module is its one
schema: :meth:`TiltRecord.to_json` writes it, :meth:`TiltRecord.from_json` reads it. All doses are
e/Å² on the specimen; ``pre_exposure_e_A2`` is the sum of the doses of the tilts of the same
series acquired before this one, and of exposures its mdoc does not list that SerialEM's
``PriorRecordDose`` counts (a tracking shot's), as :data:`PRE_EXPOSURE_CONVENTION` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from correction.report import read_motion_record

__all__ = ["TiltRecord", "PRE_EXPOSURE_CONVENTION", "read_motion_record"]

# the motion record's parser lives beside its writer; re-exported for the record's readers here

PRE_EXPOSURE_CONVENTION = ("sum of the doses of the tilts acquired before this one, and of the "
                           "exposures the series mdoc does not list that SerialEM's "
                           "PriorRecordDose counts before it")


@dataclass(frozen=True, slots=True)
class TiltRecord:
    """One tilt's record (see the module docstring for units and conventions).

    ``acquisition_index`` counts from 0 in acquisition order; ``frame_doses_e_A2`` is per
    SerialEM sub-frame (None = uniform); ``prior_record_dose_difference_e_A2`` =
    ``pre_exposure_e_A2 - PriorRecordDose``; ``acquired_at`` an ISO time; ``exposure_time_s``
    the section's ``ExposureTime`` (s); ``pixel_spacing_A`` its ``PixelSpacing`` (Å, of the
    image SerialEM saved: :mod:`daemon.series.pixel_spacing`).
    """

    series: str
    movie: str
    tilt_deg: float | None
    acquisition_index: int
    dose_e_A2: float
    pre_exposure_e_A2: float
    frame_doses_e_A2: tuple[float, ...] | None = None
    dose_source: str = ""
    order_source: str = ""
    match_source: str = ""
    mdoc: str | None = None
    z_value: int | None = None
    prior_record_dose_e_A2: float | None = None
    prior_record_dose_difference_e_A2: float | None = None
    acquired_at: str | None = None
    exposure_time_s: float | None = None
    warnings: tuple[str, ...] = ()
    pixel_spacing_A: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the motion record's ``tilt`` object)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["frame_doses_e_A2"] = list(self.frame_doses_e_A2) if self.frame_doses_e_A2 else None
        d["warnings"] = list(self.warnings)
        d["pre_exposure_convention"] = PRE_EXPOSURE_CONVENTION
        return d

    @classmethod
    def from_json(cls, d: Any) -> TiltRecord | None:
        """Inverse of :meth:`to_json`; None when ``d`` is not a tilt record of a series.

        Also accepts a whole motion record (its ``tilt`` key is read).
        """
        if isinstance(d, Mapping) and "tilt" in d and "series" not in d:
            d = d["tilt"]
        if not isinstance(d, Mapping) or not d.get("series"):
            return None
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        try:
            values["acquisition_index"] = int(values.get("acquisition_index", 0))
            values["dose_e_A2"] = float(values.get("dose_e_A2") or 0.0)
            values["pre_exposure_e_A2"] = float(values.get("pre_exposure_e_A2") or 0.0)
            if values.get("tilt_deg") is not None:
                values["tilt_deg"] = float(values["tilt_deg"])
        except (TypeError, ValueError):
            return None
        values.setdefault("movie", "")
        values.setdefault("tilt_deg", None)
        fd = values.get("frame_doses_e_A2")
        values["frame_doses_e_A2"] = tuple(float(v) for v in fd) if fd else None
        values["warnings"] = tuple(str(w) for w in values.get("warnings") or ())
        return cls(**values)
