"""SerialEM metadata (``.mdoc`` autodoc files) read as they grow.

Two kinds of file matter to motionwatch:

* the **series mdoc** (``TS_01.mrc.mdoc``): global values, ``[T = ...]`` titles, then one
  ``[ZValue = n]`` section per tilt, appended during acquisition, sometimes rewritten whole,
  and after a dose-symmetric series possibly re-sorted by angle (ZValue then follows angle,
  not acquisition);
* the **frame mdoc** (``movie.tif.mdoc``): one ``[FrameSet = 0]`` section written after all
  frames of that movie are saved.

Montage mdocs (global ``Montage = 1``, ``[MontSection = n]`` sections or ``PieceCoordinates``
entries) are recognised and reported as ``kind == "montage"``; callers must not treat them as
tilt series.

Why not mdocfile (teamtomo)? mdocfile 0.2.3 was evaluated on every real file in the test data
plus cut and CRLF variants. It reads them all, but: (1) a file cut mid-section parses
without any sign of it, yielding a last row with missing fields, which for a file that is
being written is exactly the case we must recognise; (2) it neither parses ``DateTime``
(two- and four-digit years) nor knows ``TimeStamp``; (3) it logs from library code on every
file ("mapped to", "Unknown fields"); (4) it drags pandas and pydantic into the daemon
(~0.5 s import) for what is a line-oriented ``key = value`` format. This module is a small
tolerant parser that never raises on content: every problem becomes a warning string on the
file or section, and the caller decides.

Completeness of the last section (the one that may be still being written): it must have
every key the previous section has (a lone section: ``TiltAngle`` and ``DateTime``), and a last
line without a newline must still read as a whole value of its key. Checked at every byte
offset of the real test files: a section called complete always carries the dose, time,
angle and path values of the full file.

Units and conventions:

* ``ExposureDose``: e/Å² on the specimen during this exposure (SerialEM, MdocDefines.h).
* ``PriorRecordDose``: cumulative Record-area dose before this image, e/Å².
* ``DoseRate``: dose rate *measured at the camera*, electrons per **unbinned** camera pixel
  per second. It varies with tilt while ``ExposureDose`` does not (TS_017), i.e. it is a
  through-specimen measurement; converting it needs the unbinned pixel size,
  ``PixelSpacing / Binning`` (Binning 0.5 = super-resolution on a K2/K3).
* ``TimeStamp``: integer seconds since 2020-01-01 (newer SerialEM). Only its *order* is used
  for dose bookkeeping, so the epoch does not affect any dose. ``DateTime`` is local time,
  ``dd-Mon-yy  HH:MM:SS`` or (since 2022) ``dd-Mon-yyyy HH:MM:SS``, 1 s resolution.
* ``SubFramePath`` is usually a Windows or UNC path: it is matched on its basename.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from correction.metadata_text import decode_metadata_text, read_regular_file

__all__ = [
    "TIMESTAMP_EPOCH",
    "MdocFile",
    "TiltSection",
    "frame_path_basename",
    "parse_datetime",
    "parse_mdoc",
    "parse_mdoc_text",
    "read_mdoc",
]

#: More sub-frames than any movie has (an EER movie of a minute at 1,000 raw frames per second
#: has 60,000): a ``FrameDosesAndNumber`` beyond it is damaged, and ignored.
MAX_SUB_FRAMES = 1_000_000
#: seconds within which a ``TimeStamp`` is a date (about 1,000 years either way of 2020)
_TIMESTAMP_SPAN_S = 3.1e10
#: ``TimeStamp`` counts seconds from this instant (SerialEM >= 4.1).
TIMESTAMP_EPOCH = _dt.datetime(2020, 1, 1)

MdocKind = Literal["tilt_series", "frames", "montage", "empty"]

_SECTION_RE = re.compile(r"^\[\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*\]$")
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DATETIME_RE = re.compile(
    r"^\s*(\d{1,2})-([A-Za-z]{3})-(\d{2}|\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})\s*$")
#: Keys SerialEM writes last in a section; a last section without them is still being written.
_TAIL_KEYS = ("DateTime",)
# SerialEM's title line "    Tilt axis angle = 85.3, binning = 1  spot = 8 ..." (degrees)
_TILT_AXIS_RE = re.compile(r"tilt\s+axis\s+angle\s*=\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)",
                           re.IGNORECASE)
# Tomography 5's title "[T = TiltAxisAngle = -171.35 Binning = 1 SpotSize = 5]": another
# convention (in two real files TiltAxisAngle + 90 = -RotationAngle, where SerialEM's tilt axis
# is RotationAngle - 90; WarpTools warns that "Tomo5 mdoc files are known to provide incorrect
# values"), so it is not taken for SerialEM's
_TOMO5_TILT_AXIS_RE = re.compile(r"TiltAxisAngle\s*=\s*([-+]?[0-9.]+)")


def frame_path_basename(path: str | None) -> str | None:
    r"""File name of a ``SubFramePath``, whether Windows (``D:\a\b.tif``), UNC
    (``\\host\share\b.tif``) or POSIX; ``None`` for an empty value."""
    if path is None:
        return None
    name = re.split(r"[\\/]", path.strip())[-1].strip()
    return name or None


def parse_datetime(text: str | None) -> _dt.datetime | None:
    """Parse SerialEM's ``DateTime`` (``30-Nov-15  15:21:38`` or ``01-Aug-2022  18:58:35``).

    Two-digit years are 2000 + yy. Returns a naive local datetime, or ``None`` when the text
    does not parse (never raises).
    """
    if not text:
        return None
    m = _DATETIME_RE.match(text)
    if not m:
        return None
    day, mon, year, hh, mm, ss = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    y = int(year)
    if len(year) == 2:
        y += 2000
    try:
        return _dt.datetime(y, month, int(day), int(hh), int(mm), int(ss))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TiltSection:
    """One section of an mdoc file (a tilt, a frame set or a montage piece).

    Attributes
    ----------
    index : int
        Position of the section in the file, from 0 (file order, *not* acquisition order).
    kind : str
        Section type: ``"ZValue"``, ``"FrameSet"``, ``"MontSection"`` or another bracket name.
    z_value : int or None
        The section's number (``[ZValue = 3]`` -> 3).
    tilt_deg : float or None
        ``TiltAngle`` in degrees.
    exposure_dose_e_A2, prior_record_dose_e_A2 : float or None
        ``ExposureDose`` and ``PriorRecordDose`` in e/Å².
    frame_doses_and_numbers : tuple of (float, int) or None
        ``FrameDosesAndNumber`` pairs: (dose per frame in e/Å², number of frames at it).
    num_subframes : int or None
        ``NumSubFrames``.
    dose_rate_e_px_s : float or None
        ``DoseRate``, electrons per unbinned camera pixel per second (at the camera).
    exposure_time_s, pixel_spacing_A, binning, voltage_kV : float or None
        ``ExposureTime``, ``PixelSpacing`` (of the saved image), ``Binning``, ``Voltage``
        (the section's own, else the file's global value).
    timestamp_s : int or None
        ``TimeStamp``, seconds since :data:`TIMESTAMP_EPOCH`.
    datetime : datetime.datetime or None
        ``DateTime`` parsed (naive local time); ``datetime_text`` keeps the original.
    sub_frame_path : str or None
        ``SubFramePath`` as written; ``sub_frame_name`` is its basename.
    frame_ts_start_end : tuple of int or None
        ``FrameTSStartEndFrames`` (a whole series recorded as one movie).
    has_piece_coordinates : bool
        The section carries ``PieceCoordinates`` (a montage piece).
    complete : bool
        False for a last section that is still being written (file ends inside it, or it lacks
        keys SerialEM writes last that every earlier section has).
    warnings : tuple of str
        Problems found in this section (unparsable values, duplicate keys, ...).
    items : tuple of (str, str)
        Every ``key = value`` pair in file order, unknown keys included.
    """

    index: int
    kind: str
    z_value: int | None
    tilt_deg: float | None
    exposure_dose_e_A2: float | None
    prior_record_dose_e_A2: float | None
    frame_doses_and_numbers: tuple[tuple[float, int], ...] | None
    num_subframes: int | None
    dose_rate_e_px_s: float | None
    exposure_time_s: float | None
    pixel_spacing_A: float | None
    binning: float | None
    voltage_kV: float | None
    timestamp_s: int | None
    datetime: _dt.datetime | None
    datetime_text: str | None
    sub_frame_path: str | None
    sub_frame_name: str | None
    frame_ts_start_end: tuple[int, int] | None
    has_piece_coordinates: bool
    complete: bool
    warnings: tuple[str, ...]
    items: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """Raw text of ``key`` in this section (last occurrence), or ``None``."""
        for k, v in reversed(self.items):
            if k == key:
                return v
        return None

    @property
    def frame_doses_e_A2(self) -> tuple[float, ...] | None:
        """Per-frame doses expanded from ``FrameDosesAndNumber`` (e/Å²), or ``None``."""
        if not self.frame_doses_and_numbers:
            return None
        out: list[float] = []
        for dose, count in self.frame_doses_and_numbers:
            out.extend([dose] * count)
        return tuple(out)

    @property
    def acquired_at(self) -> _dt.datetime | None:
        """Acquisition time: from ``TimeStamp`` when present, else ``DateTime``."""
        if self.timestamp_s is not None and abs(self.timestamp_s) < _TIMESTAMP_SPAN_S:
            return TIMESTAMP_EPOCH + _dt.timedelta(seconds=self.timestamp_s)
        return self.datetime  # none, or a damaged TimeStamp (beyond datetime's years)


@dataclass(frozen=True, slots=True)
class MdocFile:
    """A parsed mdoc file.

    Attributes
    ----------
    path : pathlib.Path or None
        Where it was read from.
    kind : {"tilt_series", "frames", "montage", "empty"}
        ``frames`` when the sections are ``[FrameSet]``; ``montage`` when the global
        ``Montage`` is set or any section is a ``MontSection`` or has ``PieceCoordinates``;
        ``empty`` when there is no section yet.
    sections : tuple of TiltSection
        In file order. An incomplete last section is kept, with ``complete=False``.
    global_items : tuple of (str, str)
        ``key = value`` pairs before the first section (``[T = ...]`` titles excluded).
    titles : tuple of str
        The ``[T = ...]`` (and frame-mdoc ``T = ...``) title lines.
    image_file : str or None
        Global ``ImageFile``.
    pixel_spacing_A, voltage_kV : float or None
        Global values.
    sha256 : str
        Hash of the bytes read: equal hashes mean an unchanged file.
    size_bytes : int
        Number of bytes read.
    warnings : tuple of str
        File-level problems (and a copy of none of the section warnings).
    """

    path: Path | None
    kind: MdocKind
    sections: tuple[TiltSection, ...]
    global_items: tuple[tuple[str, str], ...]
    titles: tuple[str, ...]
    image_file: str | None
    pixel_spacing_A: float | None
    voltage_kV: float | None
    sha256: str
    size_bytes: int
    warnings: tuple[str, ...]

    @property
    def is_montage(self) -> bool:
        """True for a montage mdoc (not a tilt series)."""
        return self.kind == "montage"

    @property
    def tilt_axis_deg(self) -> float | None:
        """The nominal tilt-axis angle of the first ``Tilt axis angle = x`` title (degrees, as
        SerialEM gives it); None without such a title (Tomography 5's ``TiltAxisAngle`` is
        not it: :attr:`tomo5_tilt_axis_deg`)."""
        return _title_number(self.titles, _TILT_AXIS_RE)

    @property
    def tomo5_tilt_axis_deg(self) -> float | None:
        """Tomography 5's ``TiltAxisAngle = x`` title value (degrees, its own convention, not
        SerialEM's; reported, never used as the tilt axis); None without one."""
        return _title_number(self.titles, _TOMO5_TILT_AXIS_RE)


def _title_number(titles: Sequence[str], pattern: re.Pattern[str]) -> float | None:
    """The first finite number ``pattern`` (one group) finds in ``titles``; None if none."""
    for title in titles:
        m = pattern.search(title)
        if m:
            try:
                value = float(m.group(1))
            except ValueError:
                continue
            if math.isfinite(value):
                return value
    return None


def read_mdoc(path: str | Path) -> MdocFile:
    """Read and parse an mdoc file.

    Raises
    ------
    OSError
        When the file cannot be read (missing, permissions). Content problems never raise.
    """
    p = Path(path)
    return parse_mdoc(read_regular_file(p), path=p)


def parse_mdoc(data: bytes, *, path: str | Path | None = None) -> MdocFile:
    """Parse the bytes of an mdoc file (UTF-8, or as a byte-order mark says, or cp1252 line by
    line: :func:`correction.metadata_text.decode_metadata_text`)."""
    decoded = decode_metadata_text(data)
    parsed = parse_mdoc_text(decoded.text, path=path, sha256=hashlib.sha256(data).hexdigest(),
                             size_bytes=len(data))
    if not decoded.notes:
        return parsed
    name = Path(path).name if path is not None else "<mdoc>"
    return dataclasses.replace(parsed, warnings=(*(f"{name}: {note}" for note in decoded.notes),
                                                 *parsed.warnings))


def parse_mdoc_text(text: str, *, path: str | Path | None = None, sha256: str | None = None,
                    size_bytes: int | None = None) -> MdocFile:
    """Parse mdoc text; see :func:`parse_mdoc`. Tolerates CRLF/CR line ends, a missing final
    newline, lines without ``=``, unknown keys and sections."""
    p = Path(path) if path is not None else None
    name = p.name if p is not None else "<mdoc>"
    if sha256 is None:
        raw = text.encode("utf-8")
        sha256 = hashlib.sha256(raw).hexdigest()
        size_bytes = len(raw)
    file_warnings: list[str] = []
    if "\ufffd" in text:
        file_warnings.append(f"{name}: undecodable bytes replaced")
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    ends_with_newline = normalized.endswith("\n") or normalized == ""
    lines = normalized.split("\n")
    if ends_with_newline:
        lines = lines[:-1] if lines and lines[-1] == "" else lines

    global_items: list[tuple[str, str]] = []
    titles: list[str] = []
    raw_sections: list[tuple[str, str, list[tuple[str, str]], list[str], int]] = []
    current: tuple[str, str, list[tuple[str, str]], list[str], int] | None = None
    partial_item: tuple[int, str] | None = None  # (section, key) of a last line without newline
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        is_last_partial = (lineno == len(lines)) and not ends_with_newline
        m = _SECTION_RE.match(stripped)
        if m:
            key, value = m.group(1), m.group(2)
            if key == "T":
                titles.append(value)
                continue
            current = (key, value, [], [], lineno)
            raw_sections.append(current)
            continue
        if stripped.startswith("["):
            if is_last_partial:
                continue  # a section header being written; nothing in it yet
            file_warnings.append(f"{name}: line {lineno}: malformed section header {stripped[:60]!r}")
            continue
        if "=" not in stripped:
            if not is_last_partial:
                where = current[3] if current is not None else file_warnings
                where.append(f"{name}: line {lineno}: no '=' in {stripped[:60]!r}; ignored")
            continue
        key, _, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        if is_last_partial:
            if not value:
                continue  # cut right after the '='
            partial_item = (len(raw_sections) - 1, key)
        if current is None:
            if key == "T":
                titles.append(value)
            else:
                global_items.append((key, value))
        else:
            current[2].append((key, value))

    g = dict(global_items)
    g_pixel = _to_float(g.get("PixelSpacing"))
    g_voltage = _to_float(g.get("Voltage"))
    sections: list[TiltSection] = []
    for i, (skind, sval, items, warns, _lineno) in enumerate(raw_sections):
        is_last = i == len(raw_sections) - 1
        complete = True
        if is_last:
            # A section being written lacks keys: it must have every key the previous section
            # has (or, alone, TiltAngle and the keys SerialEM writes last).
            keys = {k for k, _ in items}
            needed = ({k for k, _ in raw_sections[i - 1][2]} if i > 0
                      else {"TiltAngle", *_TAIL_KEYS})
            missing = sorted(needed - keys)
            cut_value = (partial_item is not None and partial_item[0] == i and items
                         and not _plausible(*items[-1]))
            if cut_value:
                missing.append(f"{items[-1][0]} (cut value)")
            if not items or missing:
                complete = False
                if partial_item is not None and partial_item[0] == i and items:
                    items.pop()  # the last line may be cut inside its value
                warns.append(f"{name}: last section [{skind} = {sval}] is incomplete (still being "
                             f"written or cut; missing {', '.join(missing[:5]) or 'every key'})")
            elif not ends_with_newline:
                file_warnings.append(f"{name}: no newline at the end of the file; last line kept")
        sections.append(_make_section(name, i, skind, sval, items, warns, g_pixel, g_voltage,
                                      complete))
    kinds = {s.kind for s in sections}
    montage_flag = g.get("Montage", "0").strip() not in ("0", "")
    if not sections:
        kind: MdocKind = "empty"
    elif montage_flag or "MontSection" in kinds or any(s.has_piece_coordinates for s in sections):
        kind = "montage"
    elif kinds == {"FrameSet"}:
        kind = "frames"
    elif kinds == {"FrameSet", "ZValue"} and all(
            s.frame_ts_start_end for s in sections if s.kind == "ZValue"):
        # a series recorded as one movie (SerialEM's frame tilt series): the [FrameSet] is the
        # movie's, and each [ZValue] a frame range of it; taken for a series mdoc, its movie
        # read as the series' stack and was never corrected, its series open for good
        kind = "frames"
        n_ranges = sum(s.kind == "ZValue" for s in sections)
        file_warnings.append(f"{name}: a tilt series recorded as one movie "
                             f"(FrameTSStartEndFrames, {n_ranges} frame ranges): the movie is "
                             "corrected whole, not split into its tilts")
    else:
        kind = "tilt_series"
        if kinds - {"ZValue", "FrameSet"}:
            file_warnings.append(f"{name}: unexpected section types {sorted(kinds - {'ZValue', 'FrameSet'})}")
    return MdocFile(path=p, kind=kind, sections=tuple(sections), global_items=tuple(global_items),
                    titles=tuple(titles), image_file=g.get("ImageFile"), pixel_spacing_A=g_pixel,
                    voltage_kV=g_voltage, sha256=sha256, size_bytes=int(size_bytes or 0),
                    warnings=_capped(file_warnings))


#: warnings kept of one file's (or section's) lines, the rest counted in one more line
_WARNINGS_KEPT = 5


def _capped(warnings: list[str]) -> tuple[str, ...]:
    """At most :data:`_WARNINGS_KEPT` warnings and one counting the rest: a file of junk gave
    a log line for each of its lines (1,044 for 200 kB of random bytes)."""
    if len(warnings) <= _WARNINGS_KEPT + 1:
        return tuple(warnings)
    rest = len(warnings) - _WARNINGS_KEPT
    return (*warnings[:_WARNINGS_KEPT],
            f"{warnings[_WARNINGS_KEPT].split(':', 1)[0]}: and {rest} more such warnings "
            "(lines not read as an mdoc's: is it one?)")


_NUMERIC_KEYS = frozenset((
    "TiltAngle", "StagePosition", "StageZ", "Magnification", "Intensity", "ExposureDose",
    "DoseRate", "PixelSpacing", "SpotSize", "Defocus", "ImageShift", "RotationAngle",
    "ExposureTime", "Binning", "CameraIndex", "DividedBy2", "MagIndex", "MinMaxMean",
    "TargetDefocus", "PriorRecordDose", "NumSubFrames", "FrameDosesAndNumber", "TimeStamp",
    "CountsPerElectron", "FilterSlitAndLoss", "UncroppedSize", "CameraLength", "Voltage"))


def _plausible(key: str, value: str) -> bool:
    """Whether a value that may have been cut still reads as a whole value of its key."""
    if key == "DateTime":
        return parse_datetime(value) is not None
    if key in _NUMERIC_KEYS:
        try:
            [float(t) for t in value.split()]
        except ValueError:
            return False
        return key != "FrameDosesAndNumber" or len(value.split()) % 2 == 0
    return True


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.split()[0]) if text.split() else None
    except ValueError:
        return None
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def _to_int(text: str | None) -> int | None:
    value = _to_float(text)
    if value is None or value != int(value):
        return None
    return int(value)


def _make_section(name: str, index: int, kind: str, value: str, items: list[tuple[str, str]],
                  warns: list[str], g_pixel: float | None, g_voltage: float | None,
                  complete: bool) -> TiltSection:
    d: dict[str, str] = {}
    for k, v in items:
        if k in d and d[k] != v:
            warns.append(f"{name}: [{kind} = {value}] repeats {k} ({d[k]!r} then {v!r}); last kept")
        d[k] = v
    where = f"{name}: [{kind} = {value}]"

    def num(key: str, *, integer: bool = False) -> float | int | None:
        text = d.get(key)
        if text is None or text == "":
            return None
        out = _to_int(text) if integer else _to_float(text)
        if out is None:
            warns.append(f"{where}: {key} = {text!r} is not a number; ignored")
        return out

    pairs: tuple[tuple[float, int], ...] | None = None
    fdn = d.get("FrameDosesAndNumber", d.get("FrameDosesAndNumbers"))
    if fdn:
        tokens = fdn.split()
        try:
            if len(tokens) % 2:
                raise ValueError("odd number of values")
            parsed = [(float(tokens[j]), int(float(tokens[j + 1]))) for j in range(0, len(tokens), 2)]
            if any(c < 0 or dd < 0 or not math.isfinite(dd) for dd, c in parsed):
                raise ValueError("negative or not finite")
            if sum(c for _, c in parsed) > MAX_SUB_FRAMES:
                raise ValueError(f"more than {MAX_SUB_FRAMES} sub-frames")
            pairs = tuple(parsed)
        except (ValueError, OverflowError) as exc:
            warns.append(f"{where}: FrameDosesAndNumber = {fdn!r} unusable ({exc}); ignored")
    ts_pair = None
    fts = d.get("FrameTSStartEndFrames")
    if fts:
        try:
            a, b = (int(t) for t in fts.split()[:2])
            ts_pair = (a, b)
        except ValueError:
            warns.append(f"{where}: FrameTSStartEndFrames = {fts!r} unusable; ignored")
    dt_text = d.get("DateTime")
    dt = parse_datetime(dt_text)
    if dt_text and dt is None:
        warns.append(f"{where}: DateTime = {dt_text!r} does not parse; ignored")
    z = _to_int(value)
    pixel = num("PixelSpacing")
    voltage = num("Voltage")
    return TiltSection(
        index=index, kind=kind, z_value=z,
        tilt_deg=num("TiltAngle"),
        exposure_dose_e_A2=num("ExposureDose"),
        prior_record_dose_e_A2=num("PriorRecordDose"),
        frame_doses_and_numbers=pairs,
        num_subframes=num("NumSubFrames", integer=True),
        dose_rate_e_px_s=num("DoseRate"),
        exposure_time_s=num("ExposureTime"),
        pixel_spacing_A=pixel if pixel is not None else g_pixel,
        binning=num("Binning"),
        voltage_kV=voltage if voltage is not None else g_voltage,
        timestamp_s=num("TimeStamp", integer=True),
        datetime=dt, datetime_text=dt_text,
        sub_frame_path=d.get("SubFramePath") or None,
        sub_frame_name=frame_path_basename(d.get("SubFramePath")),
        frame_ts_start_end=ts_pair,
        has_piece_coordinates="PieceCoordinates" in d,
        complete=complete,
        warnings=_capped(warns),
        items=tuple(items),
    )
