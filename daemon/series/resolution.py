"""Tilt series: which series and tilt each movie is, its dose, and the dose before it.

Pure logic: no files, no SQL, no threads, no clock. Inputs are parsed mdocs
(:mod:`daemon.series.mdoc`), what the daemon observed of each movie, and a clock value; outputs are
frozen records. Because every number is a pure function of the metadata, a restart, a
re-read mdoc or a movie that arrives late can never double-count or skip a tilt's dose: the
service simply resolves again and compares (:func:`daemon.series.lifecycle.assignment_change`).

Names: a movie is known by its path below the watch folder (``grid2/TS_01_001_0.0.eer``), a
series by its mdoc's folder and name (``grid2/TS_01``; a bare ``TS_01`` in the watch folder
itself), so equal names in two folders never share a series or a dose ledger
(:func:`qualified_name`). ``SubFramePath`` basenames are looked up in the mdoc's own folder,
then in the frames folder the path names below it, then in any folder up to three levels below
it that belongs to no other series mdoc (:func:`_listed_movie`).

Matching, in order:

1. ``series_mdoc``: a complete ``[ZValue]`` section of a tilt-series mdoc whose
   ``SubFramePath`` basename is the movie's name. Series name = the mdoc's name without
   ``.mdoc`` and the stack extension (``TS_01.mrc.mdoc`` -> ``TS_01``).
2. ``frame_mdoc``: the movie's own ``[FrameSet]`` mdoc gives dose and time; the series name and
   angle order come from the file-name pattern.
3. ``filename``: after ``SeriesConfig.metadata_wait_s`` without metadata, the file-name pattern
   (named groups ``series``, ``angle``, optional ``index``) and the configured dose per tilt.
   A movie that matches nothing is ``standalone`` (single-particle; no pre-exposure).

Dose per tilt, first that applies (the source is recorded): ``ExposureDose`` > 0; the sum of
``FrameDosesAndNumber``; the configured dose per tilt; ``DoseRate x ExposureTime /
(PixelSpacing / Binning)^2`` (DoseRate is electrons per *unbinned* camera pixel per second,
measured at the camera: a lower bound of the specimen dose when the specimen or energy filter
removes electrons, falling with the tilt; a dose the user configured comes first, as RELION's
``dose_per_tilt_image`` overrides the mdoc). The series section is tried before the frame mdoc
of the same movie, except that a DoseRate dose of one comes after an ExposureDose or frame
doses of the other. Per-frame doses
come from ``FrameDosesAndNumber`` (scaled to the tilt dose when the two disagree, with a
warning), else uniform.

Pre-exposure of a tilt = sum of the doses of the tilts of its series acquired *before* it,
ordered by ``TimeStamp`` when every tilt has one, else ``DateTime``, else the acquisition index
(mdoc section order of a growing file, or the file-name ``index`` group, or file mtimes) -
never ZValue after a re-sort, never angle. This is SerialEM's ``PriorRecordDose`` convention
(dose before the exposure, not including it); where ``PriorRecordDose`` is present the
difference is recorded, and an exposure it counts that the mdoc does not list (a retaken tilt:
``PriorRecordDose`` grows by more than half a tilt's dose beyond the listed doses) is added to
the pre-exposure from the next tilt on, with a warning. Tilts without any usable dose block the tilts after them (a reason is
given) rather than producing a silently wrong pre-exposure.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from correction.dose import dose_from_rate_e_A2
from correction.params import DoseParams

from daemon.series.mdoc import MdocFile, TiltSection
from daemon.series.tilt_record import TiltRecord

__all__ = [
    "DEFAULT_FILENAME_PATTERN",
    "ONE_ANGLE_DEG",
    "MdocObservation",
    "MovieObservation",
    "Resolution",
    "SeriesConfig",
    "SeriesSummary",
    "TiltAssignment",
    "classify_mdocs",
    "dose_of_section",
    "dose_params_of",
    "frame_mdoc_dose",
    "frame_mdoc_voltage_kV",
    "qualified_name",
    "relative_name",
    "resolve",
    "split_qualified",
    "series_name_of_mdoc",
]

#: stage angles (°) within this of each other are one angle
ONE_ANGLE_DEG = 0.5

#: ``TS_01_003_-3.0.mrc``, ``TS_019_0000_8.0.mrc``, ``chrom_07_ts_010_167_000_-0.0.mrc``,
#: ``Position_10_001_-20.00_20230324_121311_EER.eer``, ``s_mmm_00993_33.0_Oct08_07.39.05.tif``:
#: series, ``_``, acquisition index, ``_``, an angle that looks like one (a decimal number in
#: [-90, 90]), then optionally ``_`` and anything (date, time, ``EER``). A date or a clock time
#: after the angle is never read as index and angle: they are out of the angle's range.
# series_index_angle (SerialEM, Tomo 5: Position_1_001_30.00_...), or series_index[angle]
# (older Tomo 5: Position_1_001[30.00]_fractions.tiff, as Murfey reads them)
DEFAULT_FILENAME_PATTERN = (
    r"^(?P<series>.+)_(?P<index>\d+)(?:_|\[)(?P<angle>[-+]?(?:90\.0+|[0-8]?\d\.\d+))\]?"
    r"(?:_[^/\\]*)?\.(?i:mrc|mrcs|tif|tiff|eer)$")

_STACK_EXTENSIONS = (".mrc", ".st", ".mrcs", ".ali", ".tif", ".tiff")
#: How a series state's reason begins when its stacks could not be written (status says so).
ASSEMBLY_FAILED_REASON = "assembly failed"
#: The state reason of a series whose tilts all went to another (its mdoc renamed, its tilts
#: redone into another series): its assembled files were removed; ``status`` lists it no more.
REMOVED_SERIES_REASON = "no tilts left (moved to another series): its assembled files removed"
#: The reason of a series begun from its movies' names that never had a tilt: an mdoc that
#: came after them made them another series' tilts (Tomography 5 writes it at the end).
DROPPED_SERIES_REASON = "no tilts: its movies are another series' tilts"


#: Begins the quarantine reason of a tilt given up for want of a dose (:attr:`Resolution.no_dose`).
TILT_NO_DOSE_REASON = "no dose for this tilt (from its series mdoc, frame mdoc or dose_per_tilt)"


@dataclass(frozen=True, slots=True)
class SeriesConfig:
    """How movies are grouped into tilt series and when a series is complete.

    Attributes
    ----------
    filename_pattern : str
        Regular expression matched against the movie's file name (``re.search``), with named
        groups ``series`` and ``angle`` (degrees) and optionally ``index`` (acquisition order).
    dose_per_tilt_e_A2 : float or None
        Dose of one tilt (e/Å²) used when the metadata gives none.
    metadata_wait_s : float
        How long a complete movie waits for its mdoc section or frame mdoc before the
        file-name fallback is used; also how long a cut mdoc section is waited for.
    missing_tilt_wait_s : float
        In a series without series mdoc, a tilt whose file-name index comes after an index not
        seen yet waits this long (from its own first sight) for that tilt, whose dose it needs.
        One after a tilt seen but still waiting for its metadata waits for it whatever this.
    mdoc_quiet_s : float
        A series whose ``.openTS`` lock was never seen is "no longer written" once its mdoc
        has been unchanged this long.
    idle_timeout_s : float
        A series with no new movie and no mdoc change for this long is completed anyway, and
        its tilts without a dose (and those after one) stop waiting: they are quarantined.
    frame_dose_tolerance : float
        Relative disagreement between the sum of ``FrameDosesAndNumber`` and the tilt dose
        beyond which a warning is recorded (the frame doses are then scaled to the tilt dose).
    change_tolerance_e_A2 : float
        A dose, frame dose or pre-exposure that moves by more than this after a movie was
        corrected makes :func:`daemon.series.lifecycle.assignment_change` report it (the
        service redoes the movie).
    mdoc_vanish_grace_s : float
        How long an mdoc missing from the scans is kept as last read (SerialEM rewrites one
        by renaming, a share may hide a file for a moment); then its tilts are resolved
        without it (s).
    """

    filename_pattern: str = DEFAULT_FILENAME_PATTERN
    dose_per_tilt_e_A2: float | None = None
    metadata_wait_s: float = 60.0
    missing_tilt_wait_s: float = 300.0
    mdoc_quiet_s: float = 120.0
    idle_timeout_s: float = 1800.0
    frame_dose_tolerance: float = 0.05
    change_tolerance_e_A2: float = 0.01
    mdoc_vanish_grace_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            rx = re.compile(self.filename_pattern)
        except re.error as exc:
            raise ValueError(f"filename_pattern is not a regular expression: {exc}") from None
        if not {"series", "angle"} <= set(rx.groupindex):
            raise ValueError("filename_pattern needs named groups 'series' and 'angle', got "
                             f"{sorted(rx.groupindex)}")
        if self.dose_per_tilt_e_A2 is not None and not self.dose_per_tilt_e_A2 > 0:
            raise ValueError(f"dose_per_tilt_e_A2 must be > 0 e/Å², got {self.dose_per_tilt_e_A2}")
        for name in ("metadata_wait_s", "missing_tilt_wait_s", "mdoc_quiet_s", "idle_timeout_s",
                     "frame_dose_tolerance", "change_tolerance_e_A2", "mdoc_vanish_grace_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class MovieObservation:
    """What the daemon knows of a movie file.

    ``name`` is the movie's path below the watch folder, ``/`` separated (``grid2/x.eer``; a
    bare name in the watch folder itself, see :func:`qualified_name`). ``first_seen_s`` is on
    the daemon's clock (the one passed as ``now_s``); ``mtime_ns`` is the file's mtime (camera
    clock), compared only with other movies' mtimes. ``recorded_mdoc`` is the series mdoc
    (its path, as :attr:`TiltAssignment.mdoc_path` gives it) that the movie's state record
    names, if any: while that mdoc lists the movie, the movie stays its tilt.
    """

    name: str
    first_seen_s: float
    mtime_ns: int | None = None
    recorded_mdoc: str | None = None


@dataclass(frozen=True, slots=True)
class MdocObservation:
    """A parsed series or frame mdoc and since when (daemon clock) its content is unchanged.

    ``folder`` is the mdoc's folder below the watch folder (``"grid2"``, ``""`` for the watch
    folder itself, ``/`` separated): it qualifies its series' name and the movies it lists.
    """

    mdoc: MdocFile
    unchanged_since_s: float
    folder: str = ""


def relative_name(path: str | Path, watch_dir: Path, *, folder: bool = False) -> str:
    """A path's name in the resolution: below the watch folder, ``/`` separated; a path outside
    it keeps its whole name. ``folder``: the watch folder itself is ``""`` (not ``"."``)."""
    p = Path(path)
    try:
        name = p.relative_to(watch_dir).as_posix()
    except ValueError:
        name = p.as_posix()
    return "" if folder and name == "." else name


def qualified_name(folder: str, name: str) -> str:
    """``("grid2", "TS_01")`` -> ``"grid2/TS_01"``; ``("", "TS_01")`` -> ``"TS_01"``.

    Movies and series are known by these names, so equal names in two folders stay apart.
    """
    folder = folder.strip("/")
    return f"{folder}/{name}" if folder else name


_FRAMES_DEPTH = 3  # folders below an mdoc's own where the movies it lists are looked for


class _SeenMovies:
    """The movies seen, by file name (qualified names) and, for each file name, by the
    nearest folder above them that holds a series mdoc (:func:`_nearest_mdoc_folder`; made at
    a name's first lookup): a listing is matched among the movies its own mdoc folder owns,
    not among every session's movie of that name (``TS_01_001_3.0.tif`` in each of 500
    session folders: a section's lookup was O(sessions), a scan's O(sessions^2))."""

    def __init__(self, names: Sequence[str], mdoc_folders: frozenset[str]) -> None:
        self._by_base: dict[str, list[str]] = {}
        for name in names:
            self._by_base.setdefault(split_qualified(name)[1], []).append(name)
        self._names = frozenset(names)
        self._mdoc_folders = mdoc_folders
        self._owned: dict[str, dict[str | None, list[str]]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def owned_by(self, base: str, folder: str) -> list[str]:
        """The movies named ``base`` whose nearest series-mdoc folder is ``folder``."""
        owned = self._owned.get(base)
        if owned is None:
            owned = {}
            for name in self._by_base.get(base, ()):
                owned.setdefault(_nearest_mdoc_folder(name, self._mdoc_folders), []).append(name)
            self._owned[base] = owned
        return owned.get(folder, [])


def _listed_movie(folder: str, sub_frame_path: str, seen_movies: _SeenMovies) -> str:
    r"""The movie a series-mdoc section lists, by its qualified name.

    SerialEM writes the frames beside the mdoc or into a frames folder (``SubFramePath =
    X:\session\grid1\frames\TS_01_000_0.0.tif`` for ``grid1/TS_01.mrc.mdoc``). The movie
    is the seen one of that file name (``seen_movies``) beside the
    mdoc; else at ``folder/<the last j folders of SubFramePath>/<file name>`` for the smallest
    j; else the only one in a folder up to ``_FRAMES_DEPTH`` below the mdoc's whose nearest
    folder with a series mdoc is the mdoc's (a transfer may rename the
    frames folder; another grid's folder with its own mdoc is never searched). A movie not
    seen yet is named as if beside the mdoc.
    """
    parts = [p for p in re.split(r"[\\/]+", sub_frame_path.strip()) if p]
    base, dirs = parts[-1], parts[:-1]
    beside = qualified_name(folder, base)
    if beside in seen_movies:
        return beside
    folder = folder.strip("/")
    candidates = [m for m in seen_movies.owned_by(base, folder)
                  if 0 < _depth_below(split_qualified(m)[0], folder) <= _FRAMES_DEPTH]
    for j in range(1, min(len(dirs), _FRAMES_DEPTH) + 1):
        below = qualified_name(folder, "/".join(dirs[-j:] + [base]))
        if below in candidates:
            return below
    return candidates[0] if len(candidates) == 1 else beside


def _nearest_mdoc_folder(movie: str, mdoc_folders: frozenset[str]) -> str | None:
    """The deepest folder holding a series mdoc that contains ``movie`` (qualified names)."""
    folder = split_qualified(movie)[0]
    while True:
        if folder in mdoc_folders:
            return folder
        if not folder:
            return None
        folder = folder.rpartition("/")[0]


def _depth_below(folder: str, ancestor: str) -> int:
    """How many folders ``folder`` lies below ``ancestor`` (-1: not below it)."""
    if not ancestor:
        return len(folder.split("/")) if folder else 0
    if folder == ancestor:
        return 0
    if not folder.startswith(ancestor + "/"):
        return -1
    return len(folder[len(ancestor) + 1:].split("/"))


def split_qualified(name: str) -> tuple[str, str]:
    """Inverse of :func:`qualified_name`: ``"grid2/TS_01"`` -> ``("grid2", "TS_01")``."""
    folder, _, base = name.rpartition("/")
    return folder, base


@dataclass(frozen=True, slots=True)
class TiltAssignment:
    """A movie's place in its tilt series and its dose history (all doses in e/Å²).

    ``acquisition_index`` counts from 0 in acquisition order among the tilts of the series known
    now; ``frame_doses_e_A2`` is per SerialEM sub-frame (``None`` = uniform);
    ``prior_record_dose_difference_e_A2`` = ``pre_exposure_e_A2 - PriorRecordDose``;
    ``voltage_kV`` is the metadata's (its series section's ``Voltage`` or the mdoc's global one,
    else its frame mdoc's; None when neither gives one) and ``voltage_source`` which
    (``"mdoc"``, ``"frame mdoc"``); ``exposure_time_s`` its section's ``ExposureTime`` (s;
    None when no section gives one); ``pixel_spacing_A`` its ``PixelSpacing`` (Å, likewise).
    """

    movie: str
    series: str
    tilt_deg: float | None
    acquisition_index: int
    dose_e_A2: float
    frame_doses_e_A2: tuple[float, ...] | None
    pre_exposure_e_A2: float
    dose_source: str
    order_source: str
    match_source: str
    mdoc_path: str | None = None
    z_value: int | None = None
    prior_record_dose_e_A2: float | None = None
    prior_record_dose_difference_e_A2: float | None = None
    acquired_at: str | None = None
    warnings: tuple[str, ...] = ()
    num_subframes: int | None = None
    voltage_kV: float | None = None
    exposure_time_s: float | None = None
    voltage_source: str | None = None
    pixel_spacing_A: float | None = None

    def dose_params(self, *, voltage_kV: float, n_frames: int | None = None,
                    raw_frames: bool = False) -> DoseParams:
        """The :class:`~correction.params.DoseParams` for correcting this movie.

        ``n_frames`` is the frame count validation found; ``raw_frames`` says it counts raw
        frames that the correction groups into fewer frames (EER): the metadata's per-frame
        doses are then per raw frame and summed into each fraction by the correction.
        """
        return dose_params_of(self.dose_e_A2, self.frame_doses_e_A2, voltage_kV=voltage_kV,
                              pre_exposure_e_A2=self.pre_exposure_e_A2, n_frames=n_frames,
                              raw_frames=raw_frames)

    def record(self) -> dict[str, Any]:
        """JSON-ready dict (for ``extra_record={"tilt": ...}`` in ``S.motion.json`` and the ledger),
        in the schema of :class:`~daemon.series.tilt_record.TiltRecord`."""
        return TiltRecord(
            series=self.series, movie=self.movie, tilt_deg=self.tilt_deg,
            acquisition_index=self.acquisition_index, dose_e_A2=self.dose_e_A2,
            pre_exposure_e_A2=self.pre_exposure_e_A2, frame_doses_e_A2=self.frame_doses_e_A2,
            dose_source=self.dose_source, order_source=self.order_source,
            match_source=self.match_source, mdoc=self.mdoc_path, z_value=self.z_value,
            prior_record_dose_e_A2=self.prior_record_dose_e_A2,
            prior_record_dose_difference_e_A2=self.prior_record_dose_difference_e_A2,
            acquired_at=self.acquired_at, exposure_time_s=self.exposure_time_s,
            warnings=self.warnings, pixel_spacing_A=self.pixel_spacing_A).to_json()


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """A series as the metadata describes it now.

    ``listed_movies``: movie names the metadata lists (sections with a ``SubFramePath``);
    ``tilts``: (movie or None, tilt_deg, dose_e_A2 or None) in acquisition order;
    ``unlisted_dose_e_A2``: exposures SerialEM's ``PriorRecordDose`` counts that the mdoc does
    not list (a retaken tilt's discarded one), which irradiated the specimen all the same (e/Å²).
    """

    name: str
    match_source: str
    mdoc_path: str | None
    listed_movies: frozenset[str]
    tilts: tuple[tuple[str | None, float | None, float | None], ...]
    order_source: str
    warnings: tuple[str, ...] = ()
    unlisted_dose_e_A2: float = 0.0

    @property
    def accumulated_dose_e_A2(self) -> float | None:
        """The dose the specimen has received from the series so far (e/Å²): every tilt's,
        and the unlisted exposures'; None while a tilt's dose is unknown."""
        doses = [d for _, _, d in self.tilts]
        if not doses or any(d is None for d in doses):
            return None
        return float(sum(doses)) + self.unlisted_dose_e_A2


@dataclass(frozen=True, slots=True)
class Resolution:
    """Result of :func:`resolve`.

    ``assignments``: movie name -> :class:`TiltAssignment`; ``pending``: movie name -> reason it
    must wait (no metadata yet, no dose, an earlier tilt without dose, mdoc being written);
    ``standalone``: movies that belong to no series (correct without pre-exposure);
    ``series``: name -> :class:`SeriesSummary`; ``ignored_mdocs``: path -> reason (montages...);
    ``no_dose``: movie name -> why a tilt without a dose (or after one) stopped waiting, its
    series idle for ``SeriesConfig.idle_timeout_s`` (an aborted position whose mdoc never
    came): the service quarantines it, and redoes it once its series' metadata gives the dose.
    ``discarded``: movie name -> the series whose mdoc no longer lists it (a retaken tilt's
    first exposure, standalone: corrected at that series' voltage); ``discarded_deg``: the
    tilt angle (°) such a movie's name gives, where it gives one (its retake's dose is its own).
    ``warnings``: ``(series, text)``: what the operator should know of a series (two series
    mdocs of one name, a movie its mdoc no longer lists, exposures the mdoc left out).
    """

    assignments: Mapping[str, TiltAssignment]
    pending: Mapping[str, str]
    standalone: frozenset[str]
    series: Mapping[str, SeriesSummary]
    ignored_mdocs: Mapping[str, str]
    warnings: tuple[tuple[str, str], ...] = ()
    no_dose: Mapping[str, str] = field(default_factory=dict)
    discarded: Mapping[str, str] = field(default_factory=dict)
    discarded_deg: Mapping[str, float] = field(default_factory=dict)


def classify_mdocs(observations: Sequence[MdocObservation]
                   ) -> tuple[list[MdocObservation], dict[str, MdocFile], dict[str, str]]:
    """Split parsed mdocs into series mdocs, frame mdocs and ignored ones.

    Returns ``(series_mdocs, frame_mdocs, ignored)``: the tilt-series observations (for
    :func:`resolve`), frame mdocs keyed by their movie's qualified name (the mdoc's folder and
    name without ``.mdoc``, e.g. ``grid1/TS_019_0000_8.0.mrc``), and path -> reason for
    montages and empty files.
    """
    series: list[MdocObservation] = []
    frames: dict[str, MdocFile] = {}
    ignored: dict[str, str] = {}
    for ob in observations:
        md = ob.mdoc
        key = str(md.path)
        if md.kind == "frames":
            name = md.path.name if md.path is not None else ""
            movie = name[:-5] if name.lower().endswith(".mdoc") else md.sections[0].sub_frame_name
            if movie:
                frames[qualified_name(ob.folder, movie)] = md
            else:
                ignored[key] = "frame mdoc without a movie name"
        elif md.kind == "tilt_series":
            series.append(ob)
        else:
            ignored[key] = "montage mdoc, not a tilt series" if md.kind == "montage" else "no section yet"
    return series, frames, ignored


def series_name_of_mdoc(mdoc: MdocFile) -> str:
    """``TS_01.mrc.mdoc`` -> ``TS_01``; ``017.mdoc`` -> ``017``."""
    name = mdoc.path.name if mdoc.path is not None else (mdoc.image_file or "series")
    if name.lower().endswith(".mdoc"):
        name = name[:-5]
    for ext in _STACK_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def dose_params_of(dose_e_A2: float, frame_doses_e_A2: tuple[float, ...] | None, *,
                   voltage_kV: float, pre_exposure_e_A2: float = 0.0,
                   n_frames: int | None = None, raw_frames: bool = False) -> DoseParams:
    """DoseParams of a movie whose metadata gives ``dose_e_A2`` and maybe per-frame doses.

    The per-frame doses are used when their count is ``n_frames`` (per raw frame when
    ``raw_frames``: an EER movie, whose ``FrameDosesAndNumber`` counts raw frames), else the
    dose is spread evenly (over the raw frames, for EER, by the correction).
    """
    if n_frames is not None and n_frames >= 1 and frame_doses_e_A2 is not None \
            and len(frame_doses_e_A2) == n_frames and sum(frame_doses_e_A2) > 0:
        return DoseParams(voltage_kV=voltage_kV, frame_doses_e_A2=tuple(frame_doses_e_A2),
                          pre_exposure_e_A2=pre_exposure_e_A2,
                          frame_doses_per="raw_frame" if raw_frames else "frame")
    if n_frames is not None and n_frames >= 1 and not raw_frames:
        return DoseParams(voltage_kV=voltage_kV, frame_doses_e_A2=(dose_e_A2 / n_frames,) * n_frames,
                          pre_exposure_e_A2=pre_exposure_e_A2)
    return DoseParams(voltage_kV=voltage_kV, total_dose_e_A2=dose_e_A2,
                      pre_exposure_e_A2=pre_exposure_e_A2)


def frame_mdoc_voltage_kV(frame_mdoc: MdocFile | None) -> float | None:
    """Voltage (kV) a movie's own ``[FrameSet]`` mdoc gives, or None."""
    fsec = _frame_section(frame_mdoc)
    return fsec.voltage_kV if fsec is not None else None


def frame_mdoc_dose(frame_mdoc: MdocFile | None, *, config: SeriesConfig
                    ) -> tuple[float, tuple[float, ...] | None, str] | None:
    """Dose of a movie from its own ``[FrameSet]`` mdoc alone (a movie of no series):
    ``(dose_e_A2, per-frame doses or None, source)``, or None when it gives none."""
    fsec = _frame_section(frame_mdoc)
    if fsec is None:
        return None
    tilt = _Tilt(movie=None, tilt_deg=fsec.tilt_deg, sections=(fsec,), file_index=0,
                 timestamp_s=None, datetime=None, name_index=None, mtime_ns=None,
                 prior_record_dose=None, match_source="frame_mdoc", mdoc_path=None, z_value=None)
    dose, source, frames, _ = _dose(tilt, replace(config, dose_per_tilt_e_A2=None))
    if dose is None:
        return None
    return dose, frames, f"{source} (frame mdoc)"


def dose_of_section(section: TiltSection) -> tuple[float | None, str | None, str | None]:
    """Dose of one section from its own fields: ``(dose_e_A2, source, note)``.

    ``(None, None, reason)`` when none of ExposureDose, FrameDosesAndNumber, DoseRate gives one.
    """
    if section.exposure_dose_e_A2 is not None and section.exposure_dose_e_A2 > 0:
        return section.exposure_dose_e_A2, "ExposureDose", None
    if section.frame_doses_and_numbers:
        total = sum(d * n for d, n in section.frame_doses_and_numbers)
        if total > 0:
            return total, "FrameDosesAndNumber", None
    rate, t, pixel_A = section.dose_rate_e_px_s, section.exposure_time_s, section.pixel_spacing_A
    if rate and t and pixel_A and rate > 0 and t > 0 and pixel_A > 0:
        binning = section.binning if section.binning and section.binning > 0 else 1.0
        return dose_from_rate_e_A2(rate, t, pixel_A / binning), "DoseRate", None
    reasons = []
    reasons.append("ExposureDose missing" if section.exposure_dose_e_A2 is None
                   else f"ExposureDose = {section.exposure_dose_e_A2:g}")
    reasons.append("no FrameDosesAndNumber" if not section.frame_doses_and_numbers
                   else "FrameDosesAndNumber sums to 0")
    reasons.append("no usable DoseRate/ExposureTime/PixelSpacing")
    return None, None, ", ".join(reasons)


# ----------------------------------------------------------------------------------------------
# Resolution


@dataclass(slots=True)
class _Tilt:
    """Working record of one tilt while resolving (mutable, private)."""

    movie: str | None
    tilt_deg: float | None
    sections: tuple[TiltSection, ...]  # series section first, then frame-mdoc section
    file_index: int
    timestamp_s: int | None
    datetime: Any
    name_index: int | None
    mtime_ns: int | None
    prior_record_dose: float | None
    match_source: str
    mdoc_path: str | None
    z_value: int | None
    warnings: list[str] = field(default_factory=list)


def _owning_listing(movie: str, listings: Sequence[tuple[str, _Tilt]],
                    observed: MovieObservation | None, rx: re.Pattern[str]) -> int:
    """Which of the series mdocs that list ``movie`` (``listings``: (series, tilt), in the
    order of the mdocs' paths) it is the tilt of: the one its state record names, so that a
    movie once assigned never moves while that mdoc lists it (a copy of the mdoc made during
    the session, "TS_01.mrc - Copy.mdoc", sorts before it); else the one whose series the
    movie's file name carries (``filename_pattern``); else the first."""
    recorded = observed.recorded_mdoc if observed is not None else None
    for k, (_, tilt) in enumerate(listings):
        if recorded is not None and tilt.mdoc_path == recorded:
            return k
    match = rx.search(split_qualified(movie)[1])
    if match is not None:
        for k, (name, _) in enumerate(listings):
            if split_qualified(name)[1] == match.group("series"):
                return k
    return 0


def resolve(movies: Sequence[MovieObservation], series_mdocs: Sequence[MdocObservation],
            frame_mdocs: Mapping[str, MdocFile], *, config: SeriesConfig,
            now_s: float, series_mdocs_elsewhere: bool = False) -> Resolution:
    """Assign every movie to its series and tilt, with dose and pre-exposure.

    Parameters
    ----------
    movies : sequence of MovieObservation
        Every movie of the session the daemon knows (complete or not, done or not): the
        result must not depend on which ones were already processed.
    series_mdocs : sequence of MdocObservation
        Every parsed series mdoc (montages and frame mdocs given here are ignored with a reason).
    frame_mdocs : mapping of str to MdocFile
        Movie (qualified name, as in ``movies``) -> its parsed ``[FrameSet]`` mdoc.
    config : SeriesConfig
    now_s : float
        The daemon's clock (same clock as ``first_seen_s`` and ``unchanged_since_s``).
    series_mdocs_elsewhere : bool
        The session has series mdocs outside ``series_mdocs`` (another top-level folder's,
        :mod:`daemon.series.partition`): a tilt with a frame mdoc waits for one to list it
        as it does when ``series_mdocs`` has one.

    Returns
    -------
    Resolution
    """
    rx = re.compile(config.filename_pattern)
    obs_by_name = {m.name: m for m in movies}
    ignored: dict[str, str] = {}
    warnings: list[tuple[str, str]] = []  # (series, text)
    pending: dict[str, str] = {}
    no_dose: dict[str, str] = {}
    assignments: dict[str, TiltAssignment] = {}
    summaries: dict[str, SeriesSummary] = {}

    # 1. series mdocs -> series of tilts
    mdoc_folders = frozenset(ob.folder.strip("/") for ob in series_mdocs
                             if ob.mdoc.kind == "tilt_series")
    seen_movies = _SeenMovies([m.name for m in movies], mdoc_folders)
    claims: dict[str, list[tuple[str, _Tilt]]] = {}  # movie -> (series, tilt) of each listing
    series_tilts: dict[str, list[_Tilt]] = {}
    series_meta: dict[str, tuple[MdocFile, list[str]]] = {}
    held_series: dict[str, str] = {}
    mdoc_since: dict[str, float] = {}  # series -> its mdoc's last change (daemon clock, s)
    for ob in sorted(series_mdocs, key=lambda o: str(o.mdoc.path)):
        md = ob.mdoc
        key = str(md.path)
        if md.kind == "montage":
            ignored[key] = "montage mdoc, not a tilt series"
            continue
        if md.kind == "frames":
            ignored[key] = "frame mdoc given as a series mdoc"
            continue
        if md.kind == "empty":
            ignored[key] = "no section yet"
            continue
        name = qualified_name(ob.folder, series_name_of_mdoc(md))
        if name in series_tilts:
            warnings.append((name, f"two series mdocs named {name}: {key} ignored"))
            ignored[key] = f"duplicate series name {name}"
            continue
        swarn = list(md.warnings)
        incomplete = [s for s in md.sections if not s.complete]
        use_incomplete = False
        if incomplete:
            cut = incomplete[-1]
            label = f"{md.path.name if md.path else name} [ZValue = {cut.z_value}]"
            if now_s - ob.unchanged_since_s < config.metadata_wait_s:
                held_series[name] = f"mdoc section {label} is being written"
            elif cut.tilt_deg is not None and cut.sub_frame_name is not None:
                use_incomplete = True
                swarn.append(f"incomplete section {label} used after the mdoc was unchanged for "
                             f"{config.metadata_wait_s:g} s")
            else:
                swarn.append(f"incomplete section {label} (no TiltAngle or SubFramePath) left out")
        if any(s.frame_ts_start_end for s in md.sections):
            swarn.append(f"{name}: series recorded as one movie (FrameTSStartEndFrames) is not "
                         "split into tilts; its tilts count for dose but match no movie")
        tilts: list[_Tilt] = []
        for s in md.sections:
            if (not s.complete and not use_incomplete) or s.kind != "ZValue":
                continue
            swarn.extend(s.warnings)
            movie = _listed_movie(ob.folder, s.sub_frame_path, seen_movies) \
                if s.sub_frame_name else None
            fm = frame_mdocs.get(movie) if movie else None
            fsec = _frame_section(fm)
            sections = (s,) + ((fsec,) if fsec is not None else ())
            obs = obs_by_name.get(movie) if movie else None
            tilts.append(_Tilt(
                movie=movie, tilt_deg=s.tilt_deg, sections=sections, file_index=s.index,
                timestamp_s=s.timestamp_s, datetime=s.datetime,
                name_index=_name_index(rx, split_qualified(movie)[1] if movie else None),
                mtime_ns=obs.mtime_ns if obs else None,
                prior_record_dose=s.prior_record_dose_e_A2, match_source="series_mdoc",
                mdoc_path=str(md.path) if md.path else None, z_value=s.z_value))
            if movie is not None:
                claims.setdefault(movie, []).append((name, tilts[-1]))
        series_tilts[name] = tilts
        series_meta[name] = (md, swarn)
        mdoc_since[name] = ob.unchanged_since_s
    listed: dict[str, str] = {}  # movie -> the series it is a tilt of
    shared: dict[tuple[str, str], list[str]] = {}  # (kept in, also listed by) -> movies
    for movie, listings in claims.items():
        owner = _owning_listing(movie, listings, obs_by_name.get(movie), rx)
        listed[movie] = listings[owner][0]
        for k, (name, tilt) in enumerate(listings):
            if k != owner:  # the exposure still counts for dose in this series
                tilt.movie, tilt.sections = None, tilt.sections[:1]
                tilt.name_index = tilt.mtime_ns = None
                shared.setdefault((listed[movie], name), []).append(movie)
    for (owner_name, other), both in shared.items():
        # no count, one name: the text stays the same while both mdocs grow (said once)
        text = (f"movies listed by the mdocs of both {owner_name} and {other} stay tilts of "
                f"{owner_name} (the first: {both[0]})")
        warnings.append((owner_name, text))
        series_meta[other][1].append(text)

    # 2. movies not listed by a series mdoc: frame mdoc, file-name fallback or standalone
    series_folders = {ob.folder.strip("/") for ob in series_mdocs
                      if ob.mdoc.kind in ("tilt_series", "empty")}
    writes_series_mdocs = bool(series_folders) or series_mdocs_elsewhere
    # (folder, file-name series) of listed tilts -> their series: a movie named like them and
    # not listed is one of that series' that SerialEM discarded (also in a frames folder, or
    # when the mdoc's name is not the movies' prefix, as PACEtomo names them)
    listed_by_name: dict[tuple[str, str], str] = {}
    for movie, name in listed.items():
        folder, base = split_qualified(movie)
        if (m := rx.search(base)) is not None:
            listed_by_name.setdefault((folder, m.group("series")), name)
    other: dict[str, list[_Tilt]] = {}
    standalone: set[str] = set()
    discarded: dict[str, str] = {}  # movie -> the series that discarded it
    discarded_deg: dict[str, float] = {}  # movie -> the tilt angle its name gives (°)
    # file-name series -> name indices of its movies seen and waiting for their metadata: not
    # missing tilts, and their dose counts in the pre-exposure of the tilts after them
    awaiting: dict[str, set[int]] = {}
    for mv in sorted(movies, key=lambda m: m.name):
        if mv.name in listed:
            continue
        fm = frame_mdocs.get(mv.name)
        fsec = _frame_section(fm)
        folder, base = split_qualified(mv.name)
        m = rx.search(base)
        waited = now_s - mv.first_seen_s >= config.metadata_wait_s
        # only a movie that can be a tilt waits for tilt metadata: named like one, or in a folder
        # that holds a series mdoc (a single-particle movie elsewhere is corrected at once)
        could_be_tilt = m is not None or folder in series_folders
        if fsec is None and not waited and could_be_tilt:
            pending[mv.name] = (f"waiting for metadata (series mdoc section or frame mdoc) until "
                                f"{config.metadata_wait_s:g} s after first seen")
            if m is not None and (index := _name_index(rx, base)) is not None:
                awaiting.setdefault(qualified_name(folder, m.group("series")), set()).add(index)
            continue
        if m is None:
            standalone.add(mv.name)
            continue
        series = qualified_name(folder, m.group("series"))
        owner = series if series in series_tilts else listed_by_name.get(
            (folder, m.group("series")))
        if owner is not None and not waited:
            pending[mv.name] = f"waiting for the series mdoc of {owner} to list it"
            continue
        if owner is None and fsec is not None and not waited and writes_series_mdocs:
            # a session that writes series mdocs: the one listing this tilt may come after its
            # frame mdoc (the first tilt of a series, an mdoc copied over from the SerialEM
            # computer): corrected as its frame mdoc's series, each tilt was done twice
            pending[mv.name] = (f"waiting for a series mdoc to list it (else its frame mdoc "
                                f"alone) until {config.metadata_wait_s:g} s after first seen")
            if (index := _name_index(rx, base)) is not None:
                awaiting.setdefault(series, set()).add(index)
            continue
        if owner is not None:  # still not listed: SerialEM discarded it (a retaken tilt)
            standalone.add(mv.name)
            discarded[mv.name] = owner
            with contextlib.suppress(TypeError, ValueError, IndexError):
                discarded_deg[mv.name] = float(m.group("angle"))
            # true at once of a movie not corrected yet; one corrected as its tilt is redone
            # only once the mdoc has stayed so (a half-written mdoc read meanwhile lists it
            # again, and nothing was done)
            warnings.append((owner, f"{mv.name}: not listed by the series mdoc of {owner} (a "
                                    "discarded or retaken tilt?): a single movie, outside the "
                                    "series (corrected on its own; if already corrected as its "
                                    "tilt, again once the mdoc has stayed so for the metadata "
                                    "wait)"))
            continue
        try:
            angle = float(m.group("angle"))
        except ValueError:
            angle = None
        t = _Tilt(movie=mv.name, tilt_deg=fsec.tilt_deg if fsec and fsec.tilt_deg is not None
                  else angle, sections=(fsec,) if fsec is not None else (), file_index=0,
                  timestamp_s=fsec.timestamp_s if fsec else None,
                  datetime=fsec.datetime if fsec else None, name_index=_name_index(rx, base),
                  mtime_ns=mv.mtime_ns, prior_record_dose=fsec.prior_record_dose_e_A2 if fsec else None,
                  match_source="frame_mdoc" if fsec is not None else "filename",
                  mdoc_path=str(fm.path) if fm is not None and fm.path else None, z_value=None)
        if fsec is not None:
            t.warnings.extend(fsec.warnings)
        other.setdefault(series, []).append(t)

    for name in [n for n, tilts in other.items() if _single_movies(tilts)]:
        standalone.update(t.movie for t in other.pop(name) if t.movie)

    # 3. order, dose and pre-exposure per series
    groups: list[tuple[str, list[_Tilt], str, bool, list[str], str | None]] = []
    for name, tilts in series_tilts.items():
        md, swarn = series_meta[name]
        groups.append((name, tilts, "series_mdoc", True, swarn, str(md.path) if md.path else None))
    for name, tilts in other.items():
        src = "frame_mdoc" if any(t.match_source == "frame_mdoc" for t in tilts) else "filename"
        groups.append((name, tilts, src, False, [], None))

    for name, tilts, src, from_series_mdoc, swarn, mdoc_path in groups:
        ordered, order_source, owarn = _order(tilts, from_series_mdoc)
        swarn = swarn + owarn
        if name in held_series:
            for t in ordered:
                if t.movie in obs_by_name:
                    pending[t.movie] = held_series[name]
            summaries[name] = _summary(name, src, mdoc_path, ordered, order_source, [], swarn)
            continue
        # Without a series mdoc nothing lists the tilts; a gap in the file-name index means a
        # tilt not seen yet, whose dose the later tilts need: they wait for it (for a while).
        gaps: list[int] = []
        if not from_series_mdoc and all(t.name_index is not None for t in ordered) and ordered:
            idx = {t.name_index for t in ordered}
            gaps = sorted(set(range(min(idx), max(idx) + 1)) - idx)
        running = 0.0
        blocked: str | None = None
        doses: list[float | None] = []
        # an idle series (no new tilt, no mdoc change) no longer waits for a dose: its tilts
        # without one, and those after them, are given up (quarantined) rather than held
        activity = [obs_by_name[t.movie].first_seen_s for t in ordered if t.movie in obs_by_name]
        activity += [mdoc_since[name]] if name in mdoc_since else []
        idle = bool(activity) and now_s - max(activity) >= config.idle_timeout_s
        undosed = no_dose if idle else pending
        dose_info = [_dose(t, config) for t in ordered]
        jumps = _prior_record_dose_jumps(ordered, [d[0] for d in dose_info])
        warnings.extend((name, f"{name}, {label}: {why}") for label, _, why in jumps.values())
        for i, t in enumerate(ordered):
            dose, dsource, frames, dwarn = dose_info[i]
            if i in jumps:  # the unlisted exposure irradiated the specimen: it counts
                running += jumps[i][1]
                dwarn = dwarn + [jumps[i][2]]
            doses.append(dose)
            below = [g for g in gaps if t.name_index is not None and g < t.name_index]
            seen_below = sorted(set(below) & awaiting.get(name, set()))
            if seen_below and t.movie in obs_by_name:  # here, its dose not known yet
                pending[t.movie] = (f"waiting for the metadata of tilt index {seen_below[0]} of "
                                    f"{name}: its dose counts in this tilt's pre-exposure")
                running += dose or 0.0
                continue
            if below and t.movie in obs_by_name:
                if now_s - obs_by_name[t.movie].first_seen_s < config.missing_tilt_wait_s:
                    pending[t.movie] = (f"waiting for tilt index {below[0]} of {name}: its dose "
                                        "counts in this tilt's pre-exposure")
                    running += dose or 0.0
                    continue
                dwarn = dwarn + [f"tilt index(es) {below[:5]} of {name} never seen: pre-exposure "
                                 "counts only the tilts seen"]
            if t.movie is not None and t.movie in obs_by_name:
                if blocked is not None:
                    undosed[t.movie] = blocked
                elif dose is None:
                    undosed[t.movie] = f"no dose for {t.movie}: {dwarn[-1] if dwarn else 'unknown'}"
                else:
                    diff = None
                    if t.prior_record_dose is not None and t.prior_record_dose >= 0:
                        diff = running - t.prior_record_dose
                    acquired = t.sections[0].acquired_at if t.sections else None
                    assignments[t.movie] = TiltAssignment(
                        movie=t.movie, series=name, tilt_deg=t.tilt_deg, acquisition_index=i,
                        dose_e_A2=dose, frame_doses_e_A2=frames, pre_exposure_e_A2=running,
                        dose_source=dsource or "", order_source=order_source,
                        match_source=t.match_source, mdoc_path=t.mdoc_path or mdoc_path,
                        z_value=t.z_value, prior_record_dose_e_A2=t.prior_record_dose,
                        prior_record_dose_difference_e_A2=diff,
                        acquired_at=acquired.isoformat() if acquired else None,
                        warnings=tuple(swarn + t.warnings + dwarn),
                        num_subframes=next((s.num_subframes for s in t.sections
                                            if s.num_subframes), None),
                        voltage_kV=next((s.voltage_kV for s in t.sections if s.voltage_kV),
                                        None),
                        voltage_source=next(("frame mdoc" if s.kind == "FrameSet" else "mdoc"
                                             for s in t.sections if s.voltage_kV), None),
                        exposure_time_s=next((s.exposure_time_s for s in t.sections
                                              if s.exposure_time_s is not None), None),
                        pixel_spacing_A=next((s.pixel_spacing_A for s in t.sections
                                              if s.pixel_spacing_A), None))
            if dose is None:
                if blocked is None:
                    label = t.movie or f"section {t.z_value}"
                    blocked = (f"earlier tilt {label} of {name} has no dose "
                               f"({dwarn[-1] if dwarn else 'unknown'}): pre-exposure unknown")
            else:
                running += dose
        summaries[name] = _summary(name, src, mdoc_path, ordered, order_source, doses, swarn,
                                   unlisted_e_A2=sum(jump[1] for jump in jumps.values()))
    return Resolution(assignments=assignments, pending=pending, standalone=frozenset(standalone),
                      series=summaries, ignored_mdocs=ignored, warnings=tuple(warnings),
                      no_dose=no_dose, discarded=discarded, discarded_deg=discarded_deg)


#: an unlisted exposure is counted from this fraction of a typical tilt's dose
_UNLISTED_FRACTION = 0.2
#: steps of ``PriorRecordDose`` from which its usual pace is told (fewer: none)
_PACE_STEPS = 4


def _prior_record_dose_jumps(ordered: Sequence[_Tilt], doses: Sequence[float | None]
                             ) -> dict[int, tuple[str, float, str]]:
    """Tilts before which SerialEM's ``PriorRecordDose`` grows by more than the listed tilts'
    doses, beyond its usual pace, by over a fifth of a typical tilt's dose: an exposure it
    counted that the mdoc does not list (a retaken or discarded tilt, also one cut short),
    which irradiated the specimen all the same. Index in ``ordered`` -> (tilt label, the
    unlisted dose in e/Å², reason).

    The usual pace is the lower median of the steps (``PriorRecordDose`` less the listed doses
    before each tilt, from one tilt to the next), of at least :data:`_PACE_STEPS` steps and up to
    half a tilt's dose (more is an exposure left out at most tilts, not a drift): a calibration that
    makes it run ahead of the listed doses by the same amount at every tilt is no exposure. Before,
    without a pace, the threshold was half a tilt's dose: an exposure cut short at 45 % of one, or a
    deleted section of 1.77 e/Å² among 3.6, was dropped in silence. On real mdocs the steps differ
    from their median by 0.001 e/Å² but at the discarded exposure (cryoCAT's TS_017: 2.24)."""
    known = [d for d in doses if d is not None and d > 0]
    if not known:
        return {}
    typical = float(sorted(known)[len(known) // 2])
    threshold = max(0.05, _UNLISTED_FRACTION * typical)
    # PriorRecordDose less the listed doses before the tilt, at each tilt that gives it
    offsets: list[tuple[int, float]] = []
    listed = 0.0
    for i, (t, dose) in enumerate(zip(ordered, doses)):
        if dose is None:
            break  # the pre-exposures after an unknown dose are not given anyway
        if t.prior_record_dose is not None and t.prior_record_dose >= 0:
            offsets.append((i, t.prior_record_dose - listed))
        listed += dose
    steps = [(i, b - a) for (_, a), (i, b) in zip(offsets, offsets[1:])]
    pace = statistics.median_low(d for _, d in steps) if len(steps) >= _PACE_STEPS else 0.0
    if not 0.0 < pace <= 0.5 * typical:  # none, or more than a drift: an exposure at most tilts
        pace = 0.0
    # nothing unlisted before the first tilt: SerialEM's small offset there (0.07 e/Å² in
    # cryoCAT's TS_017) stays below the threshold, a first tilt taken again does not
    candidates = ([(offsets[0][0], offsets[0][1])] if offsets else []) + [
        (i, d - pace) for i, d in steps]
    jumps: dict[int, tuple[str, float, str]] = {}
    for i, unlisted in candidates:
        if unlisted > threshold:
            t = ordered[i]
            jumps[i] = (t.movie or f"section {t.z_value}", unlisted,
                        f"PriorRecordDose counts {unlisted:.3g} e/Å² more before this tilt than "
                        "the tilts the mdoc lists (an exposure SerialEM made but the mdoc does "
                        "not list, e.g. a retaken tilt): added to its pre-exposure and the "
                        "later ones")
    return jumps


def _summary(name: str, src: str, mdoc_path: str | None, ordered: list[_Tilt], order_source: str,
             doses: list[float | None], swarn: list[str], *,
             unlisted_e_A2: float = 0.0) -> SeriesSummary:
    doses = doses or [None] * len(ordered)
    return SeriesSummary(
        name=name, match_source=src, mdoc_path=mdoc_path,
        listed_movies=frozenset(t.movie for t in ordered if t.movie is not None),
        tilts=tuple((t.movie, t.tilt_deg, d) for t, d in zip(ordered, doses)),
        order_source=order_source, warnings=tuple(dict.fromkeys(swarn)),
        unlisted_dose_e_A2=float(unlisted_e_A2))


def _single_movies(tilts: Sequence[_Tilt]) -> bool:
    """Movies named like the tilts of one series whose frame mdocs say they are not: all at
    one stage angle, and none with a dose before it (``PriorRecordDose`` > 0) or more than one
    with none (two shots on each position). Single-particle movies named
    ``spa_00012_0.0.mrc`` in a session that also records tilt series were one series, each
    with the doses of those before it as its pre-exposure (40, 80, 120 e/Å²)."""
    if len(tilts) < 2 or any(t.match_source != "frame_mdoc" or t.tilt_deg is None
                             for t in tilts):
        return False
    angles = [float(t.tilt_deg) for t in tilts]
    priors = [t.prior_record_dose for t in tilts if t.prior_record_dose is not None]
    return max(angles) - min(angles) <= ONE_ANGLE_DEG and (
        not any(p > 0.0 for p in priors) or sum(p <= 0.0 for p in priors) > 1)


def _frame_section(fm: MdocFile | None) -> TiltSection | None:
    if fm is None:
        return None
    for s in fm.sections:
        if s.kind == "FrameSet" and s.complete:
            return s
    return None


def _name_index(rx: re.Pattern[str], name: str | None) -> int | None:
    if name is None or "index" not in rx.groupindex:
        return None
    m = rx.search(name)
    if m is None or m.group("index") is None:
        return None
    try:
        return int(m.group("index"))
    except ValueError:
        return None


def _order(tilts: list[_Tilt], from_series_mdoc: bool) -> tuple[list[_Tilt], str, list[str]]:
    """Acquisition order: TimeStamp, else DateTime, else acquisition index. A clock that went
    back once during the series (the acquisition PC's local time at the end of daylight
    saving time, a clock set by hand) is told by an order that does not depend on it:
    PriorRecordDose, else the series mdoc's section order, else the file names' acquisition
    index (:func:`_clock_went_back`)."""
    warn: list[str] = []
    if not tilts:
        return [], "none", warn
    if all(t.timestamp_s is not None for t in tilts):
        key, source = (lambda t: (t.timestamp_s, t.file_index, t.name_index or 0)), "TimeStamp"
        stamp_s = _timestamp_s
    elif all(t.datetime is not None for t in tilts):
        key, source = (lambda t: (t.datetime, t.file_index, t.name_index or 0)), "DateTime"
        stamp_s = _datetime_s
        times = [t.datetime for t in tilts]
        if len(set(times)) < len(times):
            warn.append("two tilts share a DateTime (1 s resolution): tie broken by "
                        + ("section order" if from_series_mdoc else "file-name index"))
    else:
        stamp_s = None
    if stamp_s is not None:
        by_time = sorted(tilts, key=key)
        by_prior = _prior_record_dose_order(tilts)
        if by_prior is not None and [id(t) for t in by_prior] != [id(t) for t in by_time]:
            # the stamps are the acquisition PC's local time: an autumn clock change (or a
            # clock set during the series) puts the last tilts first, while PriorRecordDose
            # grows on: in its order the clock went back once. Otherwise (SerialEM restarted
            # during the series, its PriorRecordDose counted from 0 again) the stamps stay
            falls = _falls([stamp_s(t) for t in by_prior])
            if falls == 0:  # they differ only where the stamps tie (1 s): PriorRecordDose says
                warn = [w for w in warn if not w.startswith("two tilts share a DateTime")]
                warn.append(f"two tilts share a {source} (1 s resolution): tie broken by "
                            "PriorRecordDose")
                return by_prior, source, warn
            if falls == 1:
                warn.append(f"{source} order contradicts PriorRecordDose, along which the "
                            "clock went back once (the PC's clock changed during the "
                            "series?): acquisition order from PriorRecordDose")
                return by_prior, "PriorRecordDose", warn
            warn.append(f"{source} order contradicts PriorRecordDose (counted anew: SerialEM "
                        f"restarted during the series?): acquisition order from {source}")
        elif by_prior is None:
            went_back = _clock_went_back(tilts, by_time, stamp_s, from_series_mdoc)
            if went_back is not None:
                written, written_source, what, fall_s = went_back
                warn.append(f"{source} goes back once, by {fall_s / 60:.0f} min, along the "
                            f"{what} (the PC's clock changed during the series: the end of "
                            f"daylight saving time?): acquisition order from the {what}")
                return written, written_source, warn
        return by_time, source, warn
    if (by_prior := _prior_record_dose_order(tilts)) is not None \
            and _datetime_falls(by_prior) == 0:  # the times there are agree with it
        n_dt = sum(t.datetime is not None for t in tilts)
        warn.append(f"only {n_dt} of {len(tilts)} tilts have a DateTime/TimeStamp: acquisition "
                    "order from PriorRecordDose")
        return by_prior, "PriorRecordDose", warn
    elif from_series_mdoc:
        key, source = (lambda t: (t.file_index,)), "mdoc_section_order"
        n_dt = sum(t.datetime is not None for t in tilts)
        warn.append(f"only {n_dt} of {len(tilts)} sections have a DateTime/TimeStamp: acquisition "
                    "order taken from the section order (wrong if the file was re-sorted by angle)")
        angles = [t.tilt_deg for t in tilts if t.tilt_deg is not None]
        if len(angles) > 2 and (angles == sorted(angles) or angles == sorted(angles, reverse=True)):
            warn.append("sections are sorted by angle: the file may have been re-sorted, so the "
                        "section order may not be the acquisition order")
    elif all(t.name_index is not None for t in tilts) and \
            len({t.name_index for t in tilts}) == len(tilts):
        key, source = (lambda t: (t.name_index, t.movie or "")), "filename_index"
    elif all(t.mtime_ns is not None for t in tilts):
        if all(t.name_index is not None for t in tilts):  # e.g. chrom_07_ts_010_167_000_3.0
            warn.append("the file-name index is the same for several tilts (not an acquisition "
                        "index): ordered by file modification time")
        key, source = (lambda t: (t.mtime_ns, t.movie or "")), "file_mtime"
    else:
        key, source = (lambda t: (t.movie or "",)), "file_name"
        warn.append("no acquisition time or index for every tilt: ordered by file name")
    return sorted(tilts, key=key), source, warn


def _datetime_falls(ordered: list[_Tilt]) -> int:
    """How often DateTime goes back along ``ordered`` (tilts without one skipped)."""
    return _falls([_datetime_s(t) for t in ordered if t.datetime is not None])


def _timestamp_s(t: _Tilt) -> float:
    return float(t.timestamp_s or 0)


_NAIVE_EPOCH = _dt.datetime(2000, 1, 1)


def _datetime_s(t: _Tilt) -> float:
    """DateTime (naive local time) as seconds from a fixed naive time: its steps as written,
    whatever the daemon's own time zone."""
    return (t.datetime - _NAIVE_EPOCH).total_seconds()


def _falls(times_s: list[float]) -> int:
    """How often ``times_s`` go back from one to the next."""
    return sum(later < earlier for earlier, later in zip(times_s, times_s[1:]))


#: the steps back of the clock taken for the end of daylight saving time rather than another
#: order (s): its hour less the time between two tilts (up to 20 min). A tilt retaken later
#: whose section stayed in place goes back minutes, not an hour: the times keep the order
_CLOCK_CHANGE_S = (40 * 60.0, 61 * 60.0)


def _clock_went_back(tilts: list[_Tilt], by_time: list[_Tilt],
                     stamp_s: Callable[[_Tilt], float], from_series_mdoc: bool
                     ) -> tuple[list[_Tilt], str, str, float] | None:
    """Where no PriorRecordDose says the order, the order the tilts were written in (the
    series mdoc's sections, which SerialEM appends as it acquires; else the file names'
    acquisition index, every tilt a different one) when it differs from the stamps' and
    along it the stamps go back exactly once, by about an hour (:data:`_CLOCK_CHANGE_S`):
    the clock changed during the series (the night daylight saving time ends, the last tilts
    took the first places and the earliest the most dose). Returns (that order, its order
    source, what it is, the step back in s), or None."""
    if from_series_mdoc:
        written = sorted(tilts, key=lambda t: t.file_index)
        source, what = "mdoc_section_order", "series mdoc's section order"
    elif all(t.name_index is not None for t in tilts) and \
            len({t.name_index for t in tilts}) == len(tilts):
        written = sorted(tilts, key=lambda t: (t.name_index, t.movie or ""))
        source, what = "filename_index", "file names' acquisition index"
    else:
        return None
    if [id(t) for t in written] == [id(t) for t in by_time]:
        return None
    times = [stamp_s(t) for t in written]
    steps = [later - earlier for earlier, later in zip(times, times[1:])]
    back = [-step for step in steps if step < 0]
    if len(back) != 1 or not _CLOCK_CHANGE_S[0] <= back[0] <= _CLOCK_CHANGE_S[1]:
        return None
    return written, source, what, back[0]


def _prior_record_dose_order(tilts: list[_Tilt]) -> list[_Tilt] | None:
    """The tilts by ``PriorRecordDose`` (the dose before each, which only grows in acquisition
    order), when every tilt has one and no two are within 1e-3 e/Å²; else None."""
    priors = [t.prior_record_dose for t in tilts]
    if any(p is None for p in priors):
        return None
    ordered = sorted(tilts, key=lambda t: float(t.prior_record_dose or 0.0))
    values = [float(t.prior_record_dose or 0.0) for t in ordered]
    if any(b - a < 1e-3 for a, b in zip(values, values[1:])):
        return None
    return ordered


def _dose(t: _Tilt, config: SeriesConfig
          ) -> tuple[float | None, str | None, tuple[float, ...] | None, list[str]]:
    """Dose of a tilt, its source, per-frame doses and warnings."""
    warn: list[str] = []
    dose = source = None
    notes = []
    found = [(k, *dose_of_section(s)) for k, s in enumerate(t.sections)]
    # a dose SerialEM calibrated at the specimen (ExposureDose, frame doses) in either section,
    # then the configured dose per tilt, then a DoseRate one (measured at the camera, through
    # the specimen and any energy filter: a lower bound that falls with the tilt, 0.61 of
    # ExposureDose at 8 degrees and 0.35 at 66 in a real series)
    rate_dose = None
    for k, d, src, note in sorted(found, key=lambda f: (f[2] == "DoseRate", f[0])):
        if d is not None and src == "DoseRate" and config.dose_per_tilt_e_A2 is not None:
            rate_dose = d
            break
        if d is not None:
            dose, source = d, src if k == 0 else f"{src} (frame mdoc)"
            break
        notes.append(note)
    if dose is None and config.dose_per_tilt_e_A2 is not None:
        dose, source = config.dose_per_tilt_e_A2, "configured"
        if rate_dose is not None:
            warn.append(f"{t.movie or 'tilt'}: no ExposureDose or FrameDosesAndNumber dose; "
                        f"configured dose per tilt {dose:g} e/Å² used, not the DoseRate "
                        f"estimate {rate_dose:.3f} e/Å² (measured at the camera)")
        elif t.sections:
            warn.append(f"{t.movie or 'tilt'}: no dose in the metadata ({notes[0]}); configured "
                        f"dose per tilt {dose:g} e/Å² used")
    if dose is None:
        why = notes[0] if notes else "no metadata"
        warn.append(f"{why}, and no dose_per_tilt_e_A2 configured")
        return None, None, None, warn
    if source and source.startswith("DoseRate"):
        warn.append(f"{t.movie or 'tilt'}: dose {dose:.3f} e/Å² from DoseRate (measured at the camera)")
    frames = None
    for s in t.sections:
        if s.frame_doses_and_numbers:
            fd = s.frame_doses_e_A2
            total = sum(fd) if fd else 0.0
            if fd and total > 0:
                if abs(total - dose) > config.frame_dose_tolerance * dose:
                    warn.append(f"{t.movie or 'tilt'}: FrameDosesAndNumber sums to {total:.4g} but "
                                f"the tilt dose is {dose:.4g} e/Å² ({source}): frame doses scaled")
                    fd = tuple(x * dose / total for x in fd)
                frames = tuple(fd)
                break
            if fd:
                warn.append(f"{t.movie or 'tilt'}: FrameDosesAndNumber are all 0: uniform frame doses")
    return dose, source, frames, warn
