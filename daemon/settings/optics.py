"""Microscope optics a movie does not carry: Cs and amplitude contrast, kept in its motion record.

RELION 5 needs both for every tilt series and every optics group: its tilt-series import writes
``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
``rlnMicrographOriginalPixelSize`` and ``rlnTomoHand`` into ``data_global``, all from the user
(3dem/relion ``src/tomography_python_programs/import_tilt_series/serialem.py``: required
options, no defaults there), and its tomography programs read them per tomogram
(``src/jaz/tomography/tomogram_set.cpp``, ``loadTomogram``: voltage, Cs and amplitude contrast
of ``data_global`` make each tilt's CTF). The defaults here are those of RELION's import job
(``src/pipeline_jobs.cpp``: Cs 2.7 mm, amplitude contrast 0.1). Voltage and pixel size are read
from each movie; these two are the writer's options (``--spherical-aberration``,
``--amplitude-contrast``), checked at start-up and written into each motion record it makes
(key ``optics``), so a movie keeps the values it was corrected under, whoever rewrites the
STAR files later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["OPTICS_KEY", "DEFAULT_SPHERICAL_ABERRATION_MM", "DEFAULT_AMPLITUDE_CONTRAST",
           "optics_record", "optics_record_from", "optics_problems", "recorded_optics"]

#: Key of the optics object in a motion record (``S.motion.json``).
OPTICS_KEY = "optics"
DEFAULT_SPHERICAL_ABERRATION_MM = 2.7
DEFAULT_AMPLITUDE_CONTRAST = 0.1
_MAX_CS_MM = 20.0  # microscopes' Cs are 0.001-6 mm


def _problems(cs: float, ac: float) -> list[str]:
    problems = []
    if not (math.isfinite(cs) and 0 <= cs <= _MAX_CS_MM):  # far above: a Cs in µm
        problems.append(f"spherical_aberration must be 0-{_MAX_CS_MM:g} mm, got {cs:g} (a value "
                        "in µm? 2.7 mm is 2700 µm)" if cs > _MAX_CS_MM else
                        f"spherical_aberration must be 0-{_MAX_CS_MM:g} mm, got {cs}")
    if not 0.0 <= ac < 1.0:
        problems.append(f"amplitude_contrast must be in [0, 1), got {ac}")
    return problems


def optics_record(spherical_aberration_mm: float, amplitude_contrast: float) -> dict[str, float]:
    """The ``optics`` object of a motion record.

    Raises
    ------
    ValueError
        Cs negative or not finite; amplitude contrast outside [0, 1) (each problem a line).
    """
    cs, ac = float(spherical_aberration_mm), float(amplitude_contrast)
    problems = _problems(cs, ac)
    if problems:
        raise ValueError("\n".join(problems))
    return {"spherical_aberration_mm": cs, "amplitude_contrast": ac}


def optics_problems(options: Mapping[str, Any]) -> list[str]:
    """Every problem of a configuration's Cs and amplitude contrast (none: both usable)."""
    try:
        optics_record_from(options)
    except ValueError as exc:
        return str(exc).splitlines()
    return []


def optics_record_from(options: Mapping[str, Any]) -> dict[str, float]:
    """:func:`optics_record` of a configuration's options (``spherical_aberration``,
    ``amplitude_contrast``; RELION's defaults when absent).

    Raises
    ------
    ValueError
        A bad value.
    """
    cs = options.get("spherical_aberration")
    ac = options.get("amplitude_contrast")
    try:
        return optics_record(DEFAULT_SPHERICAL_ABERRATION_MM if cs is None else cs,
                             DEFAULT_AMPLITUDE_CONTRAST if ac is None else ac)
    except TypeError as exc:
        raise ValueError(f"spherical_aberration / amplitude_contrast: {exc}") from None


def recorded_optics(record: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``(Cs in mm, amplitude contrast)`` a motion record was corrected under; Nones for a
    record without them (written before they were recorded) or with unusable values."""
    optics = record.get(OPTICS_KEY)
    if not isinstance(optics, Mapping):
        return None, None
    try:
        valid = optics_record(optics["spherical_aberration_mm"], optics["amplitude_contrast"])
    except (KeyError, TypeError, ValueError):
        return None, None
    return valid["spherical_aberration_mm"], valid["amplitude_contrast"]
