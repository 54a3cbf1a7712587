"""The acceleration voltage of a movie: the option, else its metadata, else 300 kV.

Resolution order (:func:`resolve_voltage`): ``--voltage`` (TOML ``voltage``) when given;
else the first voltage the metadata gives, in the order the caller lists it (the tilt's
series mdoc section or the mdoc's global ``Voltage``, a frame mdoc, EPU's metadata file of the
movie (:func:`epu_xml_voltage_kV`), the movie header: the FEI extended header of an MRC movie);
else :data:`DEFAULT_VOLTAGE_KV`, which the caller says once per run
(:data:`ASSUMED_VOLTAGE_NOTE`: a 200 kV session weighted at 300 kV must not pass unnoticed).
An option that differs from the metadata by more than :data:`VOLTAGE_TOLERANCE_KV` is used,
with a warning: never silently.

The resolved value goes into :attr:`correction.params.DoseParams.voltage_kV` (a float, as
before): a 300 kV session gets the same parameters, and so the same fingerprint, as when the
option defaulted to 300 kV.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_VOLTAGE_KV", "VOLTAGE_TOLERANCE_KV", "Voltage", "resolve_voltage",
           "header_voltage_kV", "epu_xml_path", "epu_xml_pending", "epu_xml_voltage_kV",
           "files_voltage_kV", "ASSUMED_VOLTAGE_NOTE"]

DEFAULT_VOLTAGE_KV = 300.0  # no option and no metadata (the former --voltage default)
VOLTAGE_TOLERANCE_KV = 1.0  # option vs metadata: a larger difference is warned about
_PLAUSIBLE_KV = (60.0, 400.0)  # as correction.params accepts; outside: not a voltage in kV
#: said once per run when a movie's voltage is :data:`DEFAULT_VOLTAGE_KV` for want of any other
ASSUMED_VOLTAGE_NOTE = (
    f"no --voltage and no voltage in the metadata: {DEFAULT_VOLTAGE_KV:g} kV assumed for dose "
    "weighting (as MotionCor2's -kV default); give --voltage (TOML voltage) on a 200 or 100 kV "
    "microscope")


@dataclass(frozen=True, slots=True)
class Voltage:
    """A resolved voltage (kV), where it came from (``"option"``, ``"mdoc"``, ``"frame mdoc"``,
    ``"movie header"``, ``"default"``), a warning when the option contradicts the metadata, and
    what was left out of the metadata as no voltage in kV (``Voltage = 200000``, in V)."""

    kV: float
    source: str
    warning: str | None = None
    ignored: str | None = None  # a value the metadata gives that is no voltage in kV


def _plausible(value: float | None) -> bool:
    return value is not None and _PLAUSIBLE_KV[0] <= float(value) <= _PLAUSIBLE_KV[1]


def resolve_voltage(option_kV: float | None,
                    metadata: Iterable[tuple[float | None, str]] = ()) -> Voltage:
    """Resolve a movie's voltage.

    Parameters
    ----------
    option_kV : float or None
        ``--voltage`` (kV); None: not given.
    metadata : iterable of (kV or None, source)
        What the metadata says, first source first; None or implausible values are skipped.
    """
    found, ignored = None, None
    for value, source in metadata:
        if _plausible(value):
            found = (float(value), source)
            break
        if value is not None and ignored is None:  # the first such value is said
            ignored = (f"the {source} gives {float(value):g} as the voltage, which is no "
                       f"voltage in kV ({_PLAUSIBLE_KV[0]:g}-{_PLAUSIBLE_KV[1]:g}): left out")
    if option_kV is not None:
        warning = None
        if found is not None and abs(found[0] - float(option_kV)) > VOLTAGE_TOLERANCE_KV:
            warning = (f"--voltage {float(option_kV):g} kV used, but the {found[1]} says "
                       f"{found[0]:g} kV: dose weighting and records use {float(option_kV):g} kV")
        return Voltage(float(option_kV), "option", warning, ignored)
    if found is not None:
        return Voltage(found[0], found[1], ignored=ignored)
    return Voltage(DEFAULT_VOLTAGE_KV, "default", ignored=ignored)


def files_voltage_kV(movie: str | Path) -> Iterator[tuple[float | None, str]]:
    """What the files of a movie say of its voltage, after its mdocs: EPU's metadata file,
    then the movie header, each read only when the one before gave nothing (for
    :func:`resolve_voltage`)."""
    yield epu_xml_voltage_kV(movie), "EPU xml"
    yield header_voltage_kV(movie), "movie header"


def header_voltage_kV(path: str | Path) -> float | None:
    """Voltage (kV) a movie's header gives without reading its frames (the FEI extended header
    of an MRC movie; EER and TIFF headers as read give none), or None."""
    from correction.io import detect_format
    from correction.io.mrc import read_mrc_layout

    try:
        if detect_format(Path(path)) == "mrc":
            return read_mrc_layout(Path(path)).voltage_kV
    except Exception:  # noqa: BLE001 - unreadable here: the correction names the fault
        return None
    return None


#: what EPU and Tomo 5 append to the acquisition's name for its movie (K3 LZW TIFF, Falcon MRC,
#: Falcon 4 EER), lower case; the metadata file is the name alone with ``.xml``
_EPU_MOVIE_SUFFIXES = ("_fractions", "_eer")
_EPU_XML_MAX_BYTES = 4 << 20  # EPU writes tens of kB; anything larger is not its metadata


def epu_xml_path(movie: str | Path) -> Path | None:
    """EPU's metadata file of a movie: ``FoilHole_..._Data_..._<date>_<time>.xml`` beside
    ``..._fractions.tiff``, ``..._Fractions.mrc`` or ``..._EER.eer`` (the name without the
    suffix EPU appends, any case), or None when the name has no such suffix."""
    movie = Path(movie)
    stem = movie.name[:-len(movie.suffix)] if movie.suffix else movie.name
    for suffix in _EPU_MOVIE_SUFFIXES:
        if stem.lower().endswith(suffix):
            return movie.with_name(stem[:-len(suffix)] + ".xml")
    return None


def epu_xml_pending(movie: str | Path) -> Path | None:
    """EPU's metadata file of a movie (:func:`epu_xml_path`) while it is still to come: missing,
    or not yet a whole XML document (being written); None for a name EPU does not give, or once
    the file is complete."""
    path = epu_xml_path(movie)
    if path is None:
        return None
    try:
        if path.stat().st_size > _EPU_XML_MAX_BYTES:
            return None  # not EPU's: nothing to wait for
        ET.fromstring(path.read_bytes())
    except (OSError, ET.ParseError):
        return path
    return None


def epu_xml_voltage_kV(movie: str | Path) -> float | None:
    """Voltage (kV) from EPU's metadata file of a movie (:func:`epu_xml_path`):
    ``MicroscopeImage/microscopeData/gun/AccelerationVoltage``, in volts there; None when the
    file is missing, unreadable, not EPU's or without it (the caller falls back)."""
    path = epu_xml_path(movie)
    try:
        if path is None or not path.is_file() or path.stat().st_size > _EPU_XML_MAX_BYTES:
            return None
        root = ET.fromstring(path.read_bytes())
    except (OSError, ET.ParseError):
        return None
    if _local_name(root.tag) != "MicroscopeImage":
        return None
    volts = [child.text for gun in root.iter() if _local_name(gun.tag) == "gun"
             for child in gun if _local_name(child.tag) == "AccelerationVoltage"]
    try:
        return float((volts[0] or "").strip()) / 1000.0 if volts else None
    except ValueError:
        return None


def _local_name(tag: str) -> str:
    """An XML tag without its namespace (``{uri}name`` -> ``name``)."""
    return tag.rsplit("}", 1)[-1]
