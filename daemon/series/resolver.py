"""Tilt series in the watch daemon: mdocs read as they grow, dose bookkeeping, assembled stacks.

:class:`TiltSeriesResolver` is the service's :class:`~daemon.events.MetadataResolver` (told of
each finished movie through its ``movie_finished``). At every scan it

1. re-reads each ``.mdoc`` whose size or mtime changed (:func:`daemon.series.mdoc.read_mdoc`), keeps
   the last good parse when a read fails, and records in the ledger since when each one's
   content is unchanged (so a restart keeps the mdoc's quiet time);
2. resolves every movie of the session - those on disk and every one in the ledger, whatever
   its status - with :func:`daemon.series.resolution.resolve`, so each tilt's dose and
   pre-exposure are a function of the metadata alone, never of processing order, restarts or
   late arrivals (by top-level folder, :mod:`daemon.series.partition`: a folder whose files
   did not change is not resolved again);
3. compares each corrected movie's recorded tilt (its ``S.motion.json`` ``tilt`` object) with
   the new resolution (:func:`daemon.series.lifecycle.assignment_change`): a moved dose, frame
   dose or pre-exposure makes the movie be **redone** (log event ``movie_redo_metadata_changed``; the new
   dose makes a new ledger key);
4. advances each series' completion state (:func:`daemon.series.lifecycle.update_series_state`; the
   ``<stack>.openTS`` lock next to the mdoc, the mdoc's quiet time, the idle timeout) and
   assembles a completed series (:func:`correction.stack.assemble_series`) in a separate worker
   process into ``OUT_DIR/<series>/``; a series re-opens when more movies arrive, or when one of
   its movies is redone, and is then assembled again (files replaced atomically);
5. removes the assembled files of a series left with no tilts (:meth:`_remove_ghosts`: every
   one recorded under another series' name, its folder renamed or its tilts redone into another
   series), so that AreTomo3 or IMOD run over the output folder find no ghost of it beside the
   series it became.

Movies and series are known by their folder below the watch folder and their name
(``grid2/TS_01_001_0.0.eer``, series ``grid2/TS_01``), so two grids' ``TS_01`` never share a
dose ledger; a series' stacks still go to ``OUT/<folder>/<series name>/``.

Dose without any dose flag: a movie of a series gets its dose from the series mdoc or its frame
mdoc; a movie of no series from its frame mdoc when no ``--dose-per-frame``/``--total-dose``
is configured (a configured dose wins for single-particle movies, as before). An EER movie's
``FrameDosesAndNumber`` counts raw frames and is handed on per raw frame (the correction sums
it into the fractions it reads). A movie with none of these is corrected with the EER header's
dose where there is one, else it fails as a data error (no dose) and is quarantined.

A movie waits (``wait_reason``) while its metadata is pending (mdoc section not written yet, an
earlier tilt without dose ...); after ``--metadata-wait`` without metadata the file-name
pattern and ``--dose-per-tilt`` are used, with the fallback recorded; a movie that matches no
series is corrected alone with the configured dose and no pre-exposure.

``--tilt-series auto`` (default) turns this on once a tilt-series mdoc is seen in the watched
tree or a dose per tilt is configured; before that, movies are corrected at once as
single-particle movies (no wait for metadata).
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections import ChainMap
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from correction.dose import NO_DOSE_REASON, same_weighting
from correction.params import DoseParams
from daemon.events import (VANISHED, MovieEvent, MovieGain, MovieMetadata, Observation,
                           ResolverContext, ScanResult, SeriesEvent, SeriesEventKind,
                           gain_in_force, movie_fingerprint, output_dir_for)
from daemon.series.assembly import (assemble_job, assembly_tilts, recorded_tilt,
                                    remove_assembled, series_voltage_kV)
from daemon.series.first_tilt import FirstTiltWait
from daemon.series.interleaved import InterleavedMdocs
from daemon.series.late_frame_mdoc import DOSE_FOUND_REASON, LateFrameMdoc, Unsettled
from daemon.series.late_epu import LateEpuMetadata
from daemon.series.mdoc_watch import MdocWatcher
from daemon.series.partition import PartitionedResolution
from daemon.series.rows_view import RowsView, recorded_tilt_field, row_series
from daemon.series.settled import SettledSeries
from daemon.series.stored_state import ACCUMULATED_DOSE, LISTED_MOVIES
from daemon.series.tilt_record import TiltRecord
from daemon.series.lifecycle import (SINGLE_BEFORE_TILT, SeriesObservation, SeriesState,
                                     assignment_change, last_arrival_of_turns,
                                     update_series_state)
from daemon.series.resolution import (ASSEMBLY_FAILED_REASON, DROPPED_SERIES_REASON,
                                      ONE_ANGLE_DEG, REMOVED_SERIES_REASON,
                                      TILT_NO_DOSE_REASON, MdocObservation,
                                      MovieObservation, Resolution, SeriesConfig, SeriesSummary,
                                      TiltAssignment,
                                      classify_mdocs, dose_params_of, frame_mdoc_dose,
                                      frame_mdoc_voltage_kV, relative_name, split_qualified)
from daemon.settings.voltage import (ASSUMED_VOLTAGE_NOTE, DEFAULT_VOLTAGE_KV,
                                     VOLTAGE_TOLERANCE_KV, Voltage, epu_xml_pending,
                                     files_voltage_kV, resolve_voltage)

__all__ = ["TiltSeriesResolver", "lock_paths", "standalone_metadata"]

_FINISHED = ("done", "quarantined")
#: paths whose relative names are remembered (a few weeks of sessions; then it starts over)
_REL_NAMES_KEPT = 200_000
_STACK_REASON = "a tilt-series stack (its .mdoc is a series mdoc), not a movie: not corrected"
_UNDECIDED_REASON = ("its .mdoc has no section yet: a tilt-series stack or a frame mdoc still "
                     "being written")


def metadata_changed(movies: Mapping[str, Observation], rows: Mapping[str, Any],
                     res: Resolution, *, relative: Any, tolerance_e_A2: float,
                     settled_series: frozenset[str] = frozenset(),
                     memo: dict[str, tuple[Any, Any, str, Any, str | None]] | None = None,
                     voltage_option_kV: float | None = None) -> dict[str, tuple[str, str]]:
    """Corrected movies whose tilt metadata (dose, frame doses, pre-exposure) moved since they
    were corrected: path -> (series, why). Such a movie is redone (its new dose is a new key;
    under the same key its record is stale, and it is redone all the same). So is a movie
    quarantined for want of a dose that its series' metadata now gives (an mdoc written after
    the tilts, as Tomography 5 writes it).
    So is a movie corrected as a tilt of one of ``settled_series`` (series whose mdoc has not
    changed for the metadata wait: not one read while SerialEM rewrites it) that its mdoc no
    longer lists (SerialEM took the tilt again): it is corrected on its own, and leaves its
    series' files. So is a tilt weighted at another voltage than its mdoc gives now
    (:func:`voltage_change`), unless ``voltage_option_kV`` (``--voltage``) is given, which the
    mdoc does not override.

    ``memo`` (path -> (scan observation, row, name, assignment, why)), kept by the caller from
    scan to scan: a done tilt whose row and assignment are the very objects of the last scan
    is not compared again, nor looked at further when its scan observation is too (weeks of
    sessions left in the watched folder: every one of their tilts, at every scan)."""
    changed = {}
    seen: dict[str, tuple[Any, Any, str, Any, str | None]] = {}
    for path, o in movies.items():
        row = rows.get(path)
        held = memo.get(path) if memo is not None else None
        if held is not None and held[0] is o and held[1] is row \
                and res.assignments.get(held[2]) is held[3]:  # all as at the last scan
            seen[path] = held
            if held[4]:
                changed[path] = (held[3].series, held[4])
            continue
        if row is None or (row.key.size, row.key.mtime_ns) != (o.size, o.mtime_ns):
            continue
        name = relative(path)
        a = res.assignments.get(name)
        if row.status == "quarantined" and a is not None and (
                NO_DOSE_REASON in (row.error or "") or TILT_NO_DOSE_REASON in (row.error or "")):
            changed[path] = (a.series, f"quarantined for want of a dose, which its series' "
                                       f"metadata now gives ({a.dose_e_A2:.4f} e/Å²)")
            continue
        if row.status != "done":
            continue
        if a is None:
            series = recorded_tilt_field(row, "series")
            if series in settled_series and name in res.standalone:
                changed[path] = (series, f"no longer listed by the series mdoc of {series} (a "
                                         "discarded or retaken tilt): corrected on its own")
            continue
        if held is not None and held[1] is row and held[3] is a:  # another scan observation
            reason = held[4]
        else:
            tilt = recorded_tilt(row)
            reason = "; ".join(r for r in (
                assignment_change(None if tilt is None else tilt.to_json(), a,
                                  tolerance_e_A2=tolerance_e_A2),
                None if voltage_option_kV is not None else voltage_change(row, a)) if r) or None
        seen[path] = (o, row, name, a, reason)
        if reason:
            changed[path] = (a.series, reason)
    if memo is not None:
        memo.clear()
        memo.update(seen)
    return changed


def voltage_change(row: Any, assignment: Any) -> str | None:
    """Why a tilt weighted at one voltage must be redone at the one its mdoc gives now (a
    frame mdoc that came after the tilt was corrected at the 300 kV assumed without it), or
    None: the same voltage, or none in the mdoc. Only for a run without ``--voltage`` (which
    the mdoc does not override), whatever gave the voltage it was weighted at: a ``--voltage``
    of an earlier run too, as then its mdoc's would be used now."""
    said = resolve_voltage(None, [(assignment.voltage_kV, "mdoc")])
    if said.source == "default":
        return None
    used = (row.peek_metadata().get("dose") or {}).get("voltage_kV")
    if used is None:
        return None
    if abs(float(used) - said.kV) <= VOLTAGE_TOLERANCE_KV:
        return None
    return f"voltage {float(used):g} -> {said.kV:g} kV"


def unrecorded_files(movies: Mapping[str, Observation], rows: Mapping[str, Any]
                     ) -> set[tuple[tuple[int, int], int, int]]:
    """``(inode, size, mtime_ns)`` of the movies on disk under a name the ledger has no row of
    yet (settling: a new movie, or a recorded one renamed)."""
    return {(o.inode, o.size, o.mtime_ns) for path, o in movies.items()
            if o.inode is not None and path not in rows}


def vanished_row(row: Any) -> bool:
    """A row quarantined because its file vanished from its name (its inode known)."""
    return (row.status == "quarantined" and (row.error or "").startswith(VANISHED)
            and row.inode is not None)


def renamed_away(row: Any, unrecorded: set[tuple[tuple[int, int], int, int]]) -> bool:
    """A row quarantined because its file vanished from its name while that file is on disk
    under a name not recorded yet: renamed while it waited for a worker, it is still to be
    corrected there (admission moves the row once the new name has settled)."""
    return vanished_row(row) and (row.inode, row.key.size, row.key.mtime_ns) in unrecorded


def _exists(path: str) -> bool:
    """As ``Path.exists``, on a path's text: False when it is not there; any other error (a
    share's I/O error, a permission) raises, so that its series waits for the next scan."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ELOOP):
            return False
        raise
    return True


def lock_paths(mdoc_path: Path, series: str) -> tuple[Path, Path]:
    """SerialEM's acquisition lock of a series: ``<stack>.openTS`` (the mdoc's name without
    ``.mdoc``), or ``<series>.openTS``, next to the mdoc."""
    name = mdoc_path.name[:-5] if mdoc_path.name.lower().endswith(".mdoc") else mdoc_path.name
    return mdoc_path.with_name(name + ".openTS"), mdoc_path.with_name(series + ".openTS")


_INFO_KEYS = ("expected_tilts", "mdoc", "folder", LISTED_MOVIES, ACCUMULATED_DOSE)


def standalone_metadata(movie: Observation, params: Any, n_frames: int | None,
                        log_context: dict[str, Any], frame_mdoc: Any,
                        series_config: SeriesConfig,
                        recorded: TiltRecord | None = None,
                        retake: TiltAssignment | None = None) -> MovieMetadata:
    """A movie of no series: the configured dose, else its frame mdoc's, else the dose it was
    corrected with as a tilt (``recorded``: a tilt its series mdoc no longer lists, SerialEM
    took it again), else the dose of the exposure that took its place (``retake``: the mdoc
    listed the retake before the daemon first met the movie, a session corrected after it
    was recorded), else none (the correction uses the EER header's dose or fails with a
    clear reason)."""
    if params.dose.known:
        return MovieMetadata(log_context=log_context)
    found = frame_mdoc_dose(frame_mdoc, config=series_config)
    if found is None and recorded is not None and recorded.dose_e_A2 > 0:
        found = (recorded.dose_e_A2, recorded.frame_doses_e_A2,
                 f"{recorded.dose_source} (as a tilt of {recorded.series})")
    if found is None and retake is not None and retake.dose_e_A2 > 0:
        # SerialEM takes a tilt again with the same exposure: the same dose
        found = (retake.dose_e_A2, retake.frame_doses_e_A2,
                 f"{retake.dose_source} of {retake.movie}, listed in its place by the mdoc of "
                 f"{retake.series} (a retaken tilt)")
    if found is None:
        return MovieMetadata(log_context=log_context)
    dose_e_A2, frames, source = found
    dose = dose_params_of(dose_e_A2, frames, voltage_kV=params.dose.voltage_kV,
                          n_frames=n_frames, raw_frames=_is_eer(movie.path))
    return MovieMetadata(dose=dose, log_context={**log_context, "dose_source": source})


def with_voltage(meta: MovieMetadata, params: Any, voltage: Voltage) -> MovieMetadata:
    """``meta`` with the movie's resolved voltage (kV) in its dose and its source recorded
    (``voltage_source`` in the motion record). The dose is left as it was (None: the configured
    one) when the voltage is the configured one: the movie's key stays as before."""
    base = params.dose if meta.dose is None else meta.dose
    dose = meta.dose if base.voltage_kV == voltage.kV else replace(base, voltage_kV=voltage.kV)
    return replace(meta, dose=dose,
                   extra_record={**meta.extra_record, "voltage_source": voltage.source})


#: an assembly that met trouble outside its series (an OSError: a full disk, a share gone) is
#: tried again after this long, doubled at each failure up to ASSEMBLY_RETRY_MAX_S (s)
ASSEMBLY_RETRY_FIRST_S = 10.0
ASSEMBLY_RETRY_MAX_S = 300.0

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
#: decimals of a tilt warning within this factor of one another's ratios read alike
_ALIKE_RATIO = 1.1


def warning_template(text: str) -> str:
    """A tilt's metadata warning without its movie, each number as its ratio to the warning's
    first (bucketed by 10 %): the tilts of a series whose calibration disagrees the same way
    (every ``FrameDosesAndNumber`` 1.25x its ``ExposureDose``, whatever the tilt's dose) have
    one template, logged once; a tilt that disagrees by another factor has its own (it was
    hidden behind the first). Numbers as written (``3`` for a sum of 3.0), all alike."""
    head, sep, rest = text.partition(": ")
    if sep and " " not in head:  # "<movie>: ..."
        text = rest
    values = [float(n) for n in _NUMBER.findall(text)]
    unit = next((abs(v) for v in values if v != 0.0), 1.0)

    def shown(match: re.Match[str]) -> str:
        value = float(match.group(0))
        if value == 0.0:
            return "#0"
        bucket = round(math.log(abs(value) / unit) / math.log(_ALIKE_RATIO))
        return f"#{'-' if value < 0 else ''}{bucket}"

    return _NUMBER.sub(shown, text)


class _DoselessKey(NamedTuple):
    """The dose parameters of a done row's key that give no dose of their own (the movie was
    corrected with its EER header's): ``stored``, or None for the configured ones."""

    stored: DoseParams | None


def _header_dosed(row: Any) -> _DoselessKey | None:
    """A done row's key's dose parameters when they give no dose (corrected with the EER
    header's dose, or under configured parameters that give none), else None."""
    stored = row.peek_metadata().get("dose")
    if not stored:
        return _DoselessKey(None)
    try:
        keyed = DoseParams.from_json(stored)
    except (TypeError, ValueError):  # a row of another version: its own spelling
        return None
    return None if keyed.known else _DoselessKey(keyed)


def _series_voltage(res: Resolution, series: str | None) -> float | None:
    """The voltage (kV) a series' mdoc gives its tilts, or None (no such series, none given)."""
    if series is None:
        return None
    return next((a.voltage_kV for a in res.assignments.values()
                 if a.series == series and a.voltage_kV), None)


#: largest difference (°) between a discarded movie's angle and the retake taken in its place
_RETAKE_ANGLE_DEG = 0.5


def _retake_of(res: Resolution, name: str) -> TiltAssignment | None:
    """The tilt a series mdoc lists in place of the discarded movie ``name``: of the series
    that discarded it, the one at its angle (its name's, within 0.5°), the first acquired when
    SerialEM took it more than once; None when none is (or the name gives no angle)."""
    series, angle = res.discarded.get(name), res.discarded_deg.get(name)
    if series is None or angle is None:
        return None
    near = [a for a in res.assignments.values() if a.series == series
            and a.tilt_deg is not None and abs(a.tilt_deg - angle) <= _RETAKE_ANGLE_DEG]
    return min(near, key=lambda a: (abs(a.tilt_deg - angle), a.acquisition_index),
               default=None)


def _is_eer(path: Path) -> bool:
    """An EER movie: its frame count (validation's, the frame mdoc's) counts raw frames."""
    return Path(path).suffix.lower() == ".eer"


def _state_dict(state: SeriesState, stacks: Mapping[str, str] | None = None,
                info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ledger's JSON of a series: its state, its stacks and, for ``motionwatch status``,
    ``expected_tilts`` (tilts its mdoc lists; None without one), ``listed_movies`` (their movies'
    names below the watch folder), ``accumulated_dose_e_A2`` (its metadata's, as the live feed
    gives it), ``mdoc`` and ``folder`` (where its stacks are assembled)."""
    return {"status": state.status, "generation": state.generation, "lock_seen": state.lock_seen,
            "assembled_movies": sorted(state.assembled_movies), "reason": state.reason,
            "assembled_rows": sorted([m, i, f] for m, (i, f) in state.assembled_rows),
            **({"assembled_mdoc": state.assembled_mdoc} if state.mdoc_known else {}),
            "stacks": dict(stacks or {}), **{k: (info or {}).get(k) for k in _INFO_KEYS}}


def _state_from(name: str, d: Mapping[str, Any]) -> SeriesState:
    return SeriesState(name, status=d.get("status", "open"), generation=int(d.get("generation", 0)),
                       lock_seen=bool(d.get("lock_seen", False)),
                       assembled_movies=frozenset(d.get("assembled_movies", ())),
                       reason=d.get("reason"),  # a state of an earlier version: no rows
                       assembled_rows=frozenset(
                           (str(r[0]), (int(r[1]), r[2] if len(r) > 2 else None))
                           for r in d.get("assembled_rows") or ()),
                       **_assembled_mdoc(d))


def _assembled_mdoc(d: Mapping[str, Any]) -> dict[str, Any]:
    """The series mdoc a stored state was assembled with: recorded, or, in a state of an
    earlier version, the one it last named (none: a series of frame mdocs, whose series mdoc
    copied in after an upgrade re-assembles it too); unknown without either."""
    for key in ("assembled_mdoc", "mdoc"):
        if key in d and (key == "assembled_mdoc" or d.get("status") == "complete"):
            return {"assembled_mdoc": d.get(key), "mdoc_known": True}
    return {"assembled_mdoc": None, "mdoc_known": False}


def _tilt_frame_mdoc(mdocs: Mapping[str, Any]) -> str | None:
    """The path of a frame mdoc that says its movie is a tilt of a series, else None: its
    ``[FrameSet]`` has a dose before it (``PriorRecordDose`` > 0) and another frame mdoc's a
    stage angle more than :data:`ONE_ANGLE_DEG` from its own. Single-particle shots at one
    angle (tilted or not) may show a dose before them (two shots on one position); the
    ``[ZValue]`` frame ranges of a series recorded as one movie count doses within it."""
    angles: list[float] = []
    dosed: list[tuple[str, float]] = []
    for path, m in mdocs.items():
        if m.parsed.kind != "frames":
            continue
        for section in m.parsed.sections:
            if section.kind != "FrameSet" or section.tilt_deg is None:
                continue
            angles.append(float(section.tilt_deg))
            if (section.prior_record_dose_e_A2 or 0.0) > 0.0:
                dosed.append((path, float(section.tilt_deg)))
    for path, angle in dosed:
        if any(abs(a - angle) > ONE_ANGLE_DEG for a in angles):
            return path
    return None


class TiltSeriesResolver:
    """Tilt-series metadata, dose bookkeeping and series assembly (a
    :class:`~daemon.events.MetadataResolver`).

    Parameters
    ----------
    series_config : SeriesConfig
    mode : {"auto", "on", "off"}
    exposure_filtered : bool
        Also assemble the exposure-filtered stack.
    tilt_axis_deg : float or None
        Nominal tilt-axis angle written into the stacks' mdocs (°); None: each series mdoc's
        ``Tilt axis angle`` title, when it has one.
    """

    def __init__(self, series_config: SeriesConfig, *, mode: str = "auto",
                 exposure_filtered: bool = False, tilt_axis_deg: float | None = None) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"mode must be auto, on or off, got {mode!r}")
        if tilt_axis_deg is not None and not math.isfinite(tilt_axis_deg):
            raise ValueError(f"tilt axis must be a finite angle, got {tilt_axis_deg}")
        self.series_config = series_config
        self.mode = mode
        self.exposure_filtered = exposure_filtered
        self.tilt_axis_deg = tilt_axis_deg
        self._ctx: ResolverContext | None = None
        self._log: Any = None
        self._watcher: MdocWatcher | None = None
        self._first_seen: dict[str, float] = {}
        self._res: Resolution | None = None
        self._active = mode == "on" or (mode == "auto" and series_config.dose_per_tilt_e_A2
                                          is not None)
        self._states: dict[str, SeriesState] = {}
        self._stacks: dict[str, dict[str, str]] = {}
        self._assembling: dict[str, tuple[Future, SeriesState, str]] = {}
        self._completing: set[str] = set()  # series waiting only for their mdoc to be quiet
        self._run_ending = False  # the service exits when idle: no series waits any longer
        # series whose assembly met trouble outside it (a full disk, a share gone):
        # name -> (failures, daemon clock of the next try); tried again, 10 s doubling to 300 s
        self._assembly_retry: dict[str, tuple[int, float]] = {}
        self._retry_problem: str | None = None  # problem(): a line made from the above
        self.assembly_retry_first_s = ASSEMBLY_RETRY_FIRST_S
        # series -> (exception class, errno, text unless an OSError) of its last failed
        # assembly: the same trouble again is said once
        self._assembly_trouble: dict[str, tuple[str, int | None, str]] = {}
        self._once: set[tuple[str, str]] = set()
        # (series, warning_template) of the movie warnings said (one line a series, not a tilt)
        self._said_alike: set[tuple[str, str]] = set()
        self._stack_files: set[str] = set()
        self._undecided_files: set[str] = set()
        self._rows: Mapping[str, Any] = {}
        self._view = RowsView(self._rel)  # what scans read of the rows, kept up to date
        self._settled = SettledSeries()  # complete series skipped until what they read changes
        # metadata_changed's memo: path -> (scan observation, row, name, assignment, why)
        self._tilts_compared: dict[str, tuple[Any, Any, str, Any, str | None]] = {}
        self._partitions = PartitionedResolution()  # top-level folders resolved when changed
        self._changed: dict[str, tuple[str, str]] = {}  # path -> (series, why): redo these
        self._rel_names: dict[str, str] = {}  # path -> its name below the watch folder
        self._lock_names: dict[tuple[str, str], tuple[str, ...]] = {}  # series, mdoc -> locks
        # path -> (its scan's Observation, its rows' MovieObservation or None, the one made of
        # them): a movie whose two are the very objects of the last scan is observed as then
        self._observed: dict[str, tuple[Any, Any, MovieObservation]] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._frame_mdocs: dict[str, Any] = {}
        self._quiet_without_mdoc: dict[str, float] = {}  # _no_mdoc_quiet_since of this scan
        # under auto, before it turns on: a possible first tilt waits for the next movie
        self._first_tilt = FirstTiltWait(series_config.filename_pattern,
                                         series_config.metadata_wait_s)
        # EPU movies weighted without their metadata file's voltage: redone if it comes
        self._late_epu = LateEpuMetadata()
        self._run_start_s: float | None = None  # this run's first scan (the service's clock)
        # movies of no series resolved before their frame mdoc came: redone if it moves them
        self._late_frame_mdoc = LateFrameMdoc()
        self._interleaved = InterleavedMdocs()  # series mdocs written in turns (PACEtomo)

    # --- wiring ---------------------------------------------------------------------------
    def start(self, context: ResolverContext) -> None:
        """Called once the state database is open: read the persisted mdoc and series state."""
        self._ctx = context
        self._log = context.log
        self._watcher = MdocWatcher(context.store, log=context.log, log_once=self._once_log,
                                    vanish_grace_s=self.series_config.mdoc_vanish_grace_s)
        sc = self.series_config
        self._log.info("tilt_series_config", mode=self.mode, active=self._active,
                       filename_pattern=sc.filename_pattern, dose_per_tilt=sc.dose_per_tilt_e_A2,
                       metadata_wait_s=sc.metadata_wait_s, mdoc_quiet_s=sc.mdoc_quiet_s,
                       series_idle_timeout_s=sc.idle_timeout_s,
                       exposure_filtered=self.exposure_filtered)
        try:
            self._watcher.load()
            for name, d in context.store.series_states().items():
                self._states[name] = _state_from(name, d)
                if str(d.get("reason") or "").startswith(ASSEMBLY_FAILED_REASON):
                    # its stacks were not written: assembled again at this start
                    self._states[name] = replace(self._states[name], status="open")
                self._stacks[name] = dict(d.get("stacks") or {})
                self._info[name] = {k: d.get(k) for k in _INFO_KEYS}
        except Exception as exc:  # noqa: BLE001 - an unreadable state only costs a re-assembly
            self._log.error("series_state_unreadable", error=f"{type(exc).__name__}: {exc}")

    def busy(self) -> bool:
        """An assembly is running, a series whose tilts are all corrected waits only for its
        mdoc to be quiet, or a series mdoc rewritten while watched has not settled for the
        metadata wait yet: what it lists may still move a corrected tilt (a tilt it no longer
        lists is redone on its own once it settles). The service must not exit as idle: it
        did, the movie left a tilt. (An mdoc as first read, a finished session's, holds
        nothing back.)"""
        if self._assembling or self._completing or self._assembly_retry:
            return True
        if self._ctx is None:
            return False
        now, wait = self._now(), self.series_config.metadata_wait_s
        return any(m.rewritten and now - m.unchanged_since_s < wait
                   for m in self._mdocs.values() if m.parsed.kind == "tilt_series")

    def end_of_run(self) -> bool:
        """The service would exit as idle (``--exit-when-idle``): each open series is assembled
        with the tilts it has, as after its idle timeout, without waiting for it (a tilt its
        mdoc lists whose movie never came held its stacks back for 30 minutes, and the run
        exited without them). True, once (until a movie finishes again), when there is such
        a series: not idle yet."""
        if self._run_ending:
            return False
        self._run_ending = True
        return any(state.status != "complete" for state in self._states.values())

    def problem(self) -> str | None:
        """The series whose assembly waits to be tried again (a full disk, a share gone): a
        line made on the main thread as that changes (read from the watchdog's)."""
        return self._retry_problem

    def _set_assembly_retry(self, retry: dict[str, tuple[int, float]]) -> None:
        """Replace the series waiting to be tried again, and the problem line they make."""
        self._assembly_retry = retry
        waiting = sorted(retry)
        line = None
        if waiting:
            state = self._states.get(waiting[0])
            more = f" (and {len(waiting) - 1} more series)" if len(waiting) > 1 else ""
            line = (f"series {waiting[0]}: stacks not written: "
                    f"{state.reason if state is not None else ASSEMBLY_FAILED_REASON}{more}")
        self._retry_problem = line

    def quiet_s(self) -> float:
        """A series mdoc unchanged this long is taken as finished (``mdoc_quiet_s``) or its
        incomplete last section as final (``metadata_wait_s``)."""
        return float(max(self.series_config.mdoc_quiet_s, self.series_config.metadata_wait_s))

    def _now(self) -> float:
        return self._ctx.now()

    def _rel(self, path: str | Path) -> str:
        """:func:`relative_name` below the watch folder, remembered (pathlib's relative_to
        over every row of a long-lived state database at every scan cost seconds)."""
        key = str(path)
        name = self._rel_names.get(key)
        if name is None:
            if len(self._rel_names) >= _REL_NAMES_KEPT:
                self._rel_names.clear()
            name = self._rel_names[key] = relative_name(path, self._ctx.watch_dir)
        return name

    @property
    def _mdocs(self) -> dict[str, Any]:
        return self._watcher.mdocs if self._watcher is not None else {}

    def _once_log(self, level: str, event: str, subject: str, reason: str, **kw: Any) -> None:
        if (subject, reason) in self._once:
            return
        self._once.add((subject, reason))
        getattr(self._log, level)(event, reason=reason, **kw)

    def _mdoc_warnings(self, mdoc_path: str | None) -> frozenset[str]:
        """The warnings of the mdoc at ``mdoc_path`` as last read (its file's and its complete
        sections'), each logged once as ``mdoc_warning`` by the watcher: every tilt it lists
        carries them in its record, but the log says them once, not once per tilt."""
        watched = self._watcher.mdocs.get(mdoc_path or "") if self._watcher else None
        if watched is None:
            return frozenset()
        md = watched.parsed
        return frozenset(md.warnings).union(
            *(s.warnings for s in md.sections if s.complete))

    def _emit(self, kind: SeriesEventKind, name: str,
              stacks: Mapping[str, str] | None = None, *, reason: str | None = None,
              tilts: Iterable[str] = ()) -> None:
        summary = self._res.series.get(name) if self._res is not None else None
        listed = summary.listed_movies \
            if summary is not None and summary.match_source == "series_mdoc" else None
        n_done, n_failed = self._view.done_and_failed(name, listed)
        n_expected = dose = None
        mdoc = None
        if summary is not None:
            if summary.match_source == "series_mdoc":
                n_expected = len(summary.tilts)
                mdoc = summary.mdoc_path
            dose = summary.accumulated_dose_e_A2
        self._ctx.emit(SeriesEvent(kind, name, n_expected, n_done, n_failed, dose, mdoc,
                                   dict(stacks or {}), reason, tuple(sorted(tilts))))

    def _refresh_rows(self) -> None:
        """Newest ledger row per movie path (real movies only; read incrementally by the
        store, never modified here)."""
        self._rows = self._ctx.store.newest_rows()
        self._view.update(self._rows)

    # --- MetadataResolver -----------------------------------------------------------------
    def observe(self, scan: ScanResult) -> Iterable[Path] | None:
        if self._ctx is None:
            return None
        now = self._now()
        if self._run_start_s is None:
            self._run_start_s = now
        self.poll()
        late = self._late_epu.due(now)
        for path, reason in late:
            self._once_log("warning", "movie_redo_metadata_changed", path, reason, movie=path,
                           note="its metadata changed after correction: redone with the new "
                                "voltage")
        self._watcher.read(scan, now)
        movies = {str(o.path): o for o in scan.observations if o.kind == "movie"}
        for p in movies:
            self._first_seen.setdefault(p, now)
        stacks = {k[:-5] for k, m in self._mdocs.items() if m.parsed.kind == "tilt_series"}
        self._stack_files = {p for p in stacks if p in movies}  # TS_01.mrc beside TS_01.mrc.mdoc
        # x.mrc beside an x.mrc.mdoc without a section yet: a series stack (a [ZValue] comes)
        # or a movie whose frame mdoc is being written (a [FrameSet] comes): not decided yet
        undecided = {k[:-5] for k, m in self._mdocs.items() if m.parsed.kind == "empty"}
        self._undecided_files = {p for p in undecided if p in movies
                                 and not self._undecided_long(Path(p), now)}
        series_obs, frame_map, _ = classify_mdocs(
            [MdocObservation(m.parsed, m.unchanged_since_s,
                             relative_name(Path(k).parent, self._ctx.watch_dir, folder=True))
             for k, m in self._mdocs.items()])
        self._frame_mdocs = frame_map
        for path, why in self._late_frame_mdoc.found(
                movies, self._frame_mdocs.get, self._frame_mdoc_gives_dose,
                self._ctx.store.newest_rows, self._frame_mdoc_moved):
            late = [*late, (path, why)]
            if why == DOSE_FOUND_REASON:
                self._once_log("info", "movie_dose_found", path, why, movie=path,
                               note="corrected with the dose its frame mdoc gives")
            else:
                self._once_log("warning", "movie_redo_metadata_changed", path, why, movie=path,
                               note="its metadata changed after correction: redone with what "
                                    "its frame mdoc gives")
        if self.mode == "off":  # no series ever: each movie a single one, with its own metadata
            return [Path(p) for p, _ in late] or None
        if not self._active and any(m.parsed.kind == "tilt_series" for m in self._mdocs.values()):
            self._active = True
            self._log.info("tilt_series_on", note="a tilt-series mdoc was seen: movies now wait "
                           "for their metadata and get their series' pre-exposure")
        elif not self._active and (tilt := _tilt_frame_mdoc(self._mdocs)) is not None:
            # frames saved to a share and the series mdoc beside the stack elsewhere: each tilt
            # comes with its frame mdoc only, and was corrected as a single movie with no
            # dose before it (134 e/Å² at the end of a series), with not a word
            self._active = True
            self._log.info("tilt_series_on", mdoc=tilt, note="a frame mdoc with a dose before "
                           "its exposure (PriorRecordDose > 0), beside frame mdocs of other "
                           "stage angles, was seen (tilts of a series): movies now wait for "
                           "their metadata and get their series' pre-exposure")
        if not self._active:
            return [Path(p) for p, _ in late] or None
        self._refresh_rows()
        not_movies = self._stack_files | self._undecided_files
        observations: dict[str, MovieObservation] = {
            o.name: o for path, o in self._view.observations.items() if path not in not_movies}
        built = self._observed  # path -> (its scan observation, its rows', what they made)
        for path, o in movies.items():
            if path in not_movies:
                continue
            held = built.get(path)
            if held is not None and held[0] is o \
                    and observations.get(held[2].name) is held[1]:
                observations[held[2].name] = held[2]  # the same objects: the same observation
                continue
            name = self._rel(o.path)
            recorded = observations.get(name)
            first = self._first_seen[path]
            if recorded is not None:
                first = min(first, recorded.first_seen_s)
            made = MovieObservation(name, first, o.mtime_ns,
                                    None if recorded is None else recorded.recorded_mdoc)
            observations[name] = made
            built[path] = (o, recorded, made)
        if len(built) > len(movies):  # movies gone from the disk
            for path in [p for p in built if p not in movies]:
                del built[path]
        res = self._partitions.resolve(list(observations.values()), series_obs, frame_map,
                                       config=self.series_config, now_s=now)
        self._res = res
        for path, why in res.ignored_mdocs.items():
            self._once_log("info", "mdoc_ignored", path, why, mdoc=path)
        for series, text in res.warnings:  # in the log and on the feed, once each
            if (series, text) not in self._once:
                self._once_log("warning", "series_warning", series, text, series=series)
                self._emit("warning", series, reason=text)

        changed = metadata_changed(movies, self._rows, res, relative=self._rel,
                                   tolerance_e_A2=self.series_config.change_tolerance_e_A2,
                                   settled_series=self._settled_series(res, now),
                                   memo=self._tilts_compared,
                                   voltage_option_kV=self._ctx.voltage_kV)
        self._changed = changed
        for path, (series, _) in changed.items():
            row = self._rows.get(path)
            tilt = recorded_tilt(row) if row is not None and row.status == "done" else None
            now_by = res.assignments.get(self._rel(path))
            if row is not None and (tilt is None or tilt.match_source == "filename") \
                    and now_by is not None and now_by.match_source == "series_mdoc":
                self._once_log("warning", "series_mdoc_after_tilts", series,
                               "its series mdoc came after tilts were corrected without it "
                               "(as Tomography 5 writes it, when the series ends): they are "
                               "corrected again; to correct each tilt once, use tilt_series = "
                               "on without dose_per_tilt, or a metadata_wait longer than a "
                               "series", series=series)
        for path, (series, reason) in changed.items():
            row = self._rows.get(path)
            if row is not None and row.status == "quarantined":
                note = ("quarantined for want of a dose: corrected now with the one its "
                        "metadata gives")
            elif reason.startswith(SINGLE_BEFORE_TILT):  # dose and pre-exposure may be alike
                note = "corrected alone before its series was known: redone as its tilt"
            else:
                note = ("its metadata changed after correction: redone with the new dose and "
                        "pre-exposure")
            self._once_log("warning", "movie_redo_metadata_changed", path, reason, movie=path,
                           series=series, note=note)
        self._advance_series(res, movies, list(changed), now)
        try:
            self._remove_ghosts(res)
        except Exception as exc:  # noqa: BLE001 - files of gone series: tried at the next scan
            self._once_log("error", "series_cleanup_failed", "", f"{type(exc).__name__}: {exc}",
                           note="tried again at the next scan")
        return [Path(p) for p in changed] + [Path(p) for p, _ in late if p not in changed]

    def _settled_series(self, res: Resolution, now: float) -> frozenset[str]:
        """Series whose mdoc has been unchanged for the metadata wait (s): what it lists is
        not a file read half-way through a rewrite."""
        wait = self.series_config.metadata_wait_s
        return frozenset(name for name, s in res.series.items() if s.mdoc_path is not None
                         and (m := self._mdocs.get(s.mdoc_path)) is not None
                         and now - m.unchanged_since_s >= wait)

    def resolve(self, movie: Observation, params: Any, *, n_frames: int | None = None
                ) -> MovieMetadata:
        if self._ctx is None:
            return MovieMetadata()
        if self.mode == "off":  # a single movie: its frame mdoc, EPU file and header's voltage
            return self._standalone(movie, params, n_frames, {})
        if not self._active and (why := self._first_tilt_wait(movie)):
            return MovieMetadata(wait_reason=why)
        if not self._active or self._res is None:
            return self._standalone(movie, params, n_frames, {})
        name = self._rel(movie.path)
        if str(movie.path) in self._stack_files:
            return self._ignore_stack(movie)
        if str(movie.path) in self._undecided_files:
            return MovieMetadata(wait_reason=_UNDECIDED_REASON)
        res = self._res
        if name in res.pending:
            return MovieMetadata(wait_reason=res.pending[name])
        if name in res.no_dose:
            return MovieMetadata(quarantine_reason=(
                f"{TILT_NO_DOSE_REASON}: {res.no_dose[name]}; given up after its series was "
                f"idle for {self.series_config.idle_timeout_s:g} s (redone if its mdoc comes; "
                "or set dose_per_tilt and run motionwatch retry)"))
        a = res.assignments.get(name)
        if a is None:
            if name in res.standalone:
                return self._standalone(movie, params, n_frames, {"series": None},
                                        series_kV=_series_voltage(res, res.discarded.get(name)),
                                        retake=_retake_of(res, name))
            return MovieMetadata(wait_reason="not resolved yet (seen after this scan's metadata)")
        voltage = self._voltage(movie.path, a.voltage_kV, a.voltage_source or "mdoc", a.series,
                                series=a.series)
        dose = self._as_corrected(movie, a.dose_params(voltage_kV=voltage.kV,
                                                       n_frames=n_frames,
                                                       raw_frames=_is_eer(movie.path)),
                                  n_frames)
        if params.dose.pre_exposure_e_A2 > 0:
            self._once_log("warning", "pre_exposure_flag_not_used", "",
                           f"--pre-exposure {params.dose.pre_exposure_e_A2:g} e/Å² is for movies "
                           "outside a tilt series: a tilt's pre-exposure is the dose of the "
                           "tilts of its series acquired before it", series=a.series)
        logged = self._mdoc_warnings(a.mdoc_path)  # said once for its mdoc (mdoc_warning)
        for w in a.warnings:
            if w in logged:
                continue
            alike = (a.series, warning_template(w))
            if alike in self._said_alike:  # every tilt's calibration alike: its record has it
                continue
            self._said_alike.add(alike)
            self._once_log("warning", "movie_metadata_warning", str(movie.path), w,
                           movie=str(movie.path), series=a.series,
                           alike="said once in its series for the tilts that disagree alike "
                                 "(by the same factors); each tilt's record keeps its own")
        if a.match_source == "filename":
            self._once_log("warning", "movie_metadata_fallback", str(movie.path),
                           f"no mdoc section or frame mdoc within "
                           f"{self.series_config.metadata_wait_s:g} s: series and angle from the "
                           f"file name, dose {a.dose_e_A2:g} e/Å² ({a.dose_source})",
                           movie=str(movie.path), series=a.series)
        changed = self._changed.get(str(movie.path))
        return MovieMetadata(dose=dose, extra_record={"tilt": a.record(),
                                                      "voltage_source": voltage.source},
                             log_context={"series": a.series, "tilt_deg": a.tilt_deg},
                             expected_frames=a.num_subframes,
                             redo_reason=None if changed is None else changed[1])

    def _first_tilt_wait(self, movie: Observation) -> str | None:
        """Why a movie that may be a series' first tilt waits (:mod:`.first_tilt`), or None:
        not for a version corrected before (a restart). The wait counts from its first sight
        in this run: not from its modification time, which a copy keeps (``cp -p``, rsync) or
        another clock gives."""
        now = self._now()
        came = self._first_seen.get(str(movie.path), now)
        why = self._first_tilt.why(self._rel(movie.path), self._frame_mdocs, now - came)
        if why is None:
            return None
        row = self._ctx.store.newest_rows().get(str(movie.path))  # rows are read once active
        if row is not None and row.status == "done" \
                and (row.key.size, row.key.mtime_ns) == (movie.size, movie.mtime_ns):
            return None
        return why

    def _as_corrected(self, movie: Observation, dose: DoseParams, n_frames: int | None
                      ) -> DoseParams:
        """The dose parameters this file version of a tilt was corrected with, when they weight
        it as ``dose`` does (:func:`correction.dose.same_weighting`, within the change
        tolerance): ``dose`` spelled otherwise (the series section's ``ExposureDose`` alone,
        then its frame mdoc's even ``FrameDosesAndNumber``; SerialEM's rounded values) must
        not give it a new ledger key, which a restart would correct again although
        :func:`metadata_changed` saw nothing move. Else ``dose``."""
        path = str(movie.path)
        row = self._rows.get(path)
        if (n_frames is None or row is None or row.status != "done" or path in self._changed
                or (row.key.size, row.key.mtime_ns) != (movie.size, movie.mtime_ns)):
            return dose
        stored = row.peek_metadata().get("dose")
        if not stored:
            return dose
        try:
            corrected = DoseParams.from_json(stored)
        except (TypeError, ValueError):  # a row of another version: its own spelling
            return dose
        if corrected == dose or not same_weighting(
                corrected, dose, n_frames,
                tolerance_e_A2=self.series_config.change_tolerance_e_A2):
            return dose
        return corrected

    def _voltage(self, path: Path, metadata_kV: float | None, source: str, subject: str,
                 **kw: Any) -> Voltage:
        """A movie's voltage (:mod:`daemon.settings.voltage`): ``--voltage``, else the mdoc's
        (``metadata_kV``), else EPU's metadata file's, else its header's, else 300 kV. A
        ``--voltage`` that contradicts the metadata is used and warned about once per
        ``subject`` (its series, or the movie); the 300 kV assumed for want of any voltage is
        warned about once per run."""
        def found() -> Iterable[tuple[float | None, str]]:  # each read only if needed
            yield metadata_kV, source
            yield from files_voltage_kV(path)

        voltage = resolve_voltage(self._ctx.voltage_kV, found())
        if voltage.ignored:
            self._once_log("warning", "voltage_ignored", subject, voltage.ignored, **kw)
        if voltage.warning:
            self._once_log("warning", "voltage_differs_from_metadata", subject, voltage.warning,
                           **kw)
        if voltage.source == "default":  # once per run: the same for every movie of it
            self._once_log("warning", "voltage_assumed", "", ASSUMED_VOLTAGE_NOTE,
                           voltage_kV=voltage.kV)
        return voltage

    def _standalone(self, movie: Observation, params: Any, n_frames: int | None,
                    log_context: dict[str, Any], *, series_kV: float | None = None,
                    retake: TiltAssignment | None = None) -> MovieMetadata:
        """A movie of no series; ``series_kV``: the voltage (kV) of the series whose mdoc
        discarded it (a retaken tilt's first exposure), when its own frame mdoc gives none;
        ``retake``: the tilt that mdoc lists in its place (:func:`_retake_of`)."""
        row = self._rows.get(str(movie.path))
        recorded = TiltRecord.from_json(
            ((row.metadata.get("extra_record") or {}).get("tilt")) if row is not None else None)
        frame_mdoc = self._frame_mdocs.get(self._rel(movie.path))
        mdoc_kV = frame_mdoc_voltage_kV(frame_mdoc)
        kV_source = "frame mdoc" if mdoc_kV is not None or series_kV is None else "mdoc"
        mdoc_kV = series_kV if mdoc_kV is None else mdoc_kV
        wait = self._epu_metadata_wait(movie.path, mdoc_kV)
        if wait is not None:
            return MovieMetadata(wait_reason=wait)
        meta = standalone_metadata(movie, params, n_frames, log_context, frame_mdoc,
                                   self.series_config, recorded, retake)
        self._prior_dose_unused(movie, frame_mdoc, params)
        if meta.dose is not None:
            meta = replace(meta, dose=self._header_dose_kept(movie, params, meta.dose, n_frames))
        voltage = self._voltage(movie.path, mdoc_kV, kV_source, str(movie.path),
                                movie=str(movie.path))
        own_dose = params.dose.known or (meta.dose is not None and meta.dose.known)
        open_kV = None if voltage.source in ("option", "frame mdoc", "mdoc") else voltage.kV
        self._late_frame_mdoc.resolved(
            str(movie.path), None if frame_mdoc is not None or (own_dose and open_kV is None)
            else Unsettled(self._rel(movie.path), own_dose, open_kV))
        self._late_epu.weighted(movie.path, voltage.kV, voltage.source, self._now())
        return with_voltage(meta, params, voltage)

    def _prior_dose_unused(self, movie: Observation, frame_mdoc: Any, params: Any) -> None:
        """Say once a run that a movie of no series is weighted without the dose its frame
        mdoc says fell on it before (``PriorRecordDose``): a dose series at one stage angle,
        which ``--tilt-series auto`` does not take for a tilt series, had none, without a
        word (135 e/Å² before its fourth exposure)."""
        prior = max((s.prior_record_dose_e_A2 or 0.0 for s in
                     (frame_mdoc.sections if frame_mdoc is not None else ())
                     if s.kind == "FrameSet"), default=0.0)
        if prior <= 0.0:
            return
        self._once_log("warning", "movie_prior_dose_unused", "prior_dose_unused",
                       f"its frame mdoc says {prior:g} e/Å² fell on it before "
                       "(PriorRecordDose), which a movie of no series is not weighted with "
                       f"(its pre-exposure: {params.dose.pre_exposure_e_A2:g} e/Å², "
                       "--pre-exposure): a dose series at one stage angle? --tilt-series on "
                       "counts it; said once a run", movie=str(movie.path))

    def _header_dose_kept(self, movie: Observation, params: Any, dose: DoseParams,
                          n_frames: int | None) -> DoseParams | None:
        """``dose`` (a movie of no series, its frame mdoc's), or the parameters this file
        version was corrected with when that was with its EER header's dose and ``dose``
        weights it alike: it keeps its key, and is not corrected again at a restart for a dose
        spelled otherwise (:func:`correction.dose.same_weighting`)."""
        row = self._ctx.store.newest_rows().get(str(movie.path))  # also outside tilt series
        if (n_frames is None or row is None or row.status != "done"
                or (row.key.size, row.key.mtime_ns) != (movie.size, movie.mtime_ns)):
            return dose
        corrected = _header_dosed(row)
        own_gain = gain_in_force(MovieGain.from_json(row.peek_metadata().get("gain")), params)
        if corrected is None or row.key.fingerprint != movie_fingerprint(
                params, corrected.stored, own_gain):
            return dose
        if self._header_dose_moved_by(row, dose, n_frames):
            return dose
        return corrected.stored

    def _frame_mdoc_moved(self, entry: Unsettled, row: Any) -> str | None:
        """Why a movie of no series, done before its frame mdoc came, is weighted otherwise
        by it (another dose than its EER header's; another voltage than the one used when no
        option or mdoc gave one), or None."""
        frame_mdoc = self._frame_mdocs.get(entry.name)
        moved = []
        n_frames = row.peek_metadata().get("n_frames")
        found = frame_mdoc_dose(frame_mdoc, config=self.series_config)
        if not entry.own_dose and _header_dosed(row) is not None and found is not None \
                and isinstance(n_frames, int):
            dose_e_A2, frames, _ = found
            dose = dose_params_of(dose_e_A2, frames, voltage_kV=DEFAULT_VOLTAGE_KV,
                                  n_frames=n_frames, raw_frames=_is_eer(Path(row.key.path)))
            if self._header_dose_moved_by(row, dose, n_frames):
                moved.append(f"gives another dose ({dose_e_A2:g} e/Å²) than its EER header's, "
                             "which it was corrected with")
        kV = frame_mdoc_voltage_kV(frame_mdoc)
        if entry.voltage_kV is not None and kV is not None \
                and abs(kV - entry.voltage_kV) > VOLTAGE_TOLERANCE_KV:
            moved.append(f"says {kV:g} kV, where {entry.voltage_kV:g} kV was used")
        if not moved:
            return None
        return "its frame mdoc came after it was corrected, and " + "; and ".join(moved)

    def _header_dose_moved_by(self, row: Any, dose: DoseParams, n_frames: int) -> bool:
        """Whether ``dose`` weights a movie of ``n_frames`` frames otherwise than the EER
        header's dose ``row`` records (its total, spread evenly over the raw frames, and its
        pre-exposure); the voltage is compared apart (:func:`with_voltage`)."""
        recorded = row.summary.get("dose") or {}
        total, pre = recorded.get("total_e_A2"), recorded.get("pre_exposure_e_A2") or 0.0
        if not isinstance(total, (int, float)) or not total > 0:
            return True
        header = DoseParams(voltage_kV=dose.voltage_kV, total_dose_e_A2=float(total),
                            pre_exposure_e_A2=float(pre))
        return not same_weighting(header, dose, n_frames,
                                  tolerance_e_A2=self.series_config.change_tolerance_e_A2)

    def _frame_mdoc_gives_dose(self, name: str) -> bool:
        """The frame mdoc of the movie named ``name`` (below the watch folder) gives a dose."""
        frame_mdoc = self._frame_mdocs.get(name)
        return frame_mdoc is not None and frame_mdoc_dose(
            frame_mdoc, config=self.series_config) is not None

    def _epu_metadata_wait(self, path: Path, mdoc_kV: float | None) -> str | None:
        """Why an EPU movie waits for EPU's metadata file of it (:func:`epu_xml_pending`), or
        None.

        When no ``--voltage`` is given and no frame mdoc gives one, the voltage comes from that
        file; EPU writes it beside each acquisition, apart from the camera's movie, so it may
        appear (or be complete) after the movie. A movie then waits for it while metadata files
        are written in its folder, for at most the metadata wait; after that it goes on, with a
        warning (the voltage from its header, else 300 kV). A folder of movies alone waits for
        nothing (EPU's files may never be copied), but its movies are looked at for their file
        as one that waited in vain is (:mod:`daemon.series.late_epu`): the first movies of a new
        grid square come before any file, and were weighted at 300 kV for good on a 200 kV
        microscope."""
        if self._ctx.voltage_kV is not None or mdoc_kV is not None:
            return None
        xml = epu_xml_pending(path)
        if xml is None:
            return None
        if next(xml.parent.glob("*.xml"), None) is None:
            self._late_epu.gave_up(path)
            return None
        now, wait_s = self._now(), self.series_config.metadata_wait_s
        if now - self._first_seen.get(str(path), now) < wait_s:
            return f"waiting for EPU's metadata file {xml.name} (its voltage), at most {wait_s:g} s"
        self._late_epu.gave_up(path)
        self._once_log("warning", "epu_metadata_missing", str(path),
                       f"EPU's metadata file {xml.name} was not complete within {wait_s:g} s "
                       "(or is not readable XML: cut, or saved in another encoding than it "
                       "declares): the voltage from the movie's header, else 300 kV; give "
                       "--voltage", movie=str(path))
        return None

    def _undecided_long(self, movie: Path, now: float) -> bool:
        """True once a movie beside an mdoc without sections has waited the metadata wait and
        no ``.openTS`` lock says SerialEM is still writing a series: it is then resolved as a
        movie (a junk or abandoned mdoc must not hold it for ever)."""
        if now - self._first_seen.get(str(movie), now) < self.series_config.metadata_wait_s:
            return False
        try:
            if any(lock.exists() for lock in lock_paths(Path(str(movie) + ".mdoc"), movie.stem)):
                return False
        except OSError:  # the share answers an I/O error: undecided still, looked at again
            return False
        self._once_log("warning", "movie_mdoc_without_section", str(movie),
                       f"its .mdoc has no section after {self.series_config.metadata_wait_s:g} "
                       "s: resolved as a movie", movie=str(movie))
        return True

    def _ignore_stack(self, movie: Observation) -> MovieMetadata:
        """A SerialEM stack beside its series mdoc is not a movie: ignored (not waiting, so
        ``--exit-when-idle`` still fires in a tilt-series folder). While its ``.openTS`` lock is
        present SerialEM is still appending tilts, and it waits."""
        if any(lock.exists() for lock in lock_paths(Path(str(movie.path) + ".mdoc"),
                                                     movie.path.stem)):
            return MovieMetadata(wait_reason=_STACK_REASON + " (being written: .openTS lock)")
        return MovieMetadata(ignore_reason=_STACK_REASON)

    # --- steps ----------------------------------------------------------------------------
    def _advance_series(self, res: Resolution, movies: Mapping[str, Observation],
                        changed: list[str], now: float) -> None:
        self._completing &= set(res.series)  # a series no longer described waits for nothing
        if set(self._assembly_retry) - set(res.series):  # a series no longer described
            self._set_assembly_retry({k: v for k, v in self._assembly_retry.items()
                                      if k in res.series})
        self._interleaved.look({path: m.unchanged_since_s for path, m in self._mdocs.items()
                                if m.parsed.kind == "tilt_series"})
        on_disk = {self._rel(p): p for p in movies}
        by_name = ChainMap(on_disk, self._view.path_of_name)  # a movie on disk: its own path
        changed_names = {self._rel(p) for p in changed}
        unrecorded = unrecorded_files(movies, self._rows)
        self._settled.look(res.series.keys(), touched=self._view.take_touched() | changed_names,
                           disk_names=on_disk.keys(), unrecorded=unrecorded)
        assigned: dict[str, set[str]] = {}  # series -> its movies' names
        for m, a in res.assignments.items():
            assigned.setdefault(a.series, set()).add(m)
        self._quiet_without_mdoc = self._no_mdoc_quiet_since(res, assigned, by_name)
        for name, summary in res.series.items():
            try:
                self._advance_one(name, summary, assigned, by_name, changed_names, unrecorded,
                                  now)
            except Exception as exc:  # noqa: BLE001 - one series' trouble waits for the next
                # scan (an I/O error of the share under its lock or mdoc, an assembly job that
                # could not be started): the other series, and admission, go on
                self._once_log("error", "series_advance_failed", name,
                               f"{type(exc).__name__}: {exc}", series=name,
                               note="tried again at the next scan")

    def _no_mdoc_quiet_since(self, res: Resolution, assigned: Mapping[str, set[str]],
                             by_name: Mapping[str, str]) -> dict[str, float]:
        """Open series that no series mdoc describes (tilts by their frame mdocs or file
        names) -> since when (the service's clock, s) no movie came to them: a series
        written in turns with others of its folder (PACEtomo's targets: their movies' arrival
        spans overlap) counts the last movie of them all. Such a series is not written any more
        once that is ``mdoc_quiet_s`` ago: it waited for the idle timeout (30 minutes) for
        its stacks, as nothing lists its tilts."""
        spans: dict[str, list[tuple[float, float, str]]] = {}  # folder -> (first, last, series)
        for name, summary in res.series.items():
            state = self._states.get(name)
            if summary.mdoc_path is not None or (state is not None
                                                 and state.status == "complete"):
                continue
            times = [t for m in assigned.get(name, ()) if (t := self._came_at(m, by_name))]
            if times:
                spans.setdefault(split_qualified(name)[0], []).append(
                    (min(times), max(times), name))
        quiet: dict[str, float] = {}
        for folder_spans in spans.values():
            quiet.update(last_arrival_of_turns(folder_spans))
        return quiet

    def _came_at(self, movie: str, by_name: Mapping[str, str]) -> float | None:
        """When a movie came (the service's clock, s): the earlier of this run's first sight
        and its state row's (made when it was admitted, which a restart keeps; a first tilt
        is admitted only once its wait ends, and its series looked written after the series
        written in turns with it: a PACEtomo target completed after its second round)."""
        path = by_name.get(movie)
        if path is None:
            return None
        row = self._rows.get(path)
        times = [t for t in (self._first_seen.get(path), row.first_seen if row else None)
                 if t is not None]
        return min(times) if times else None

    def _advance_one(self, name: str, summary: SeriesSummary, assigned: Mapping[str, set[str]],
                     by_name: Mapping[str, str], changed_names: set[str],
                     unrecorded: set[tuple[tuple[int, int], int, int]], now: float) -> None:
        """One series' step of :meth:`_advance_series`: its state, completion, assembly."""
        state = self._states.get(name)
        if (state is not None and self._settled.holds(name, summary, state)
                and (state.lock_seen or not self._lock_present(name, summary))):
            return  # complete, and nothing it reads changed (daemon/series/settled.py)
        if state is None:
            state = SeriesState(name)
            self._states[name] = state
            self._persist(name, state)
            self._log.info("series_started", series=name, source=summary.match_source,
                           mdoc=summary.mdoc_path)
            self._emit("started", name)
        if name in self._assembling or now < self._assembly_retry.get(name, (0, -math.inf))[1]:
            return
        known = set(assigned.get(name, ()))
        known |= {m for m in summary.listed_movies if m in by_name}
        finished_rows = {(m, (row.row_id, row.finished))
                         for m in known | summary.listed_movies
                         if m in by_name and m not in changed_names
                         and (row := self._rows.get(by_name[m])) is not None
                         and row.status in _FINISHED and not renamed_away(row, unrecorded)}
        finished = {m for m, _ in finished_rows}
        lock = self._lock_present(name, summary)
        mdoc_since = None
        folder_of = Path(by_name[sorted(known)[0]]) if known else None
        if summary.mdoc_path is not None:
            m = self._mdocs.get(summary.mdoc_path)
            # not quiet while a series written in turns with it goes on (PACEtomo); one of a
            # single tilt, no turn seen yet (PACEtomo's first round), waits for its folder, for
            # at most the idle timeout (one aborted at its first tilt must not wait for the
            # end of the next series of its folder)
            idle_s = self.series_config.idle_timeout_s
            young = m is not None and len(summary.tilts) < 2 \
                and now - m.unchanged_since_s < idle_s
            # unchanged since before this run: its turns with the mdocs of its folder, learnt
            # in memory, are not known yet; written in turns with them (PACEtomo, restarted
            # between rounds), it completed at the first scan with the tilts of then, and was
            # assembled again at its end. Its folder's mdocs are its partners until one is
            # seen (a round), for at most the idle timeout from the start
            restarted = m is not None and self._run_start_s is not None \
                and m.unchanged_since_s < self._run_start_s \
                and now - self._run_start_s < idle_s
            mdoc_since = (self._interleaved.unchanged_since_s(
                summary.mdoc_path, m.unchanged_since_s, young=young or restarted)
                if m is not None else None)
            folder_of = Path(summary.mdoc_path)
        self._update_info(name, state, summary, folder_of)
        times = [self._first_seen.get(by_name[m], 0.0) for m in known if m in by_name]
        times += [r.first_seen for m in known if (r := self._rows.get(by_name.get(m, "")))]
        if mdoc_since is not None:
            times.append(mdoc_since)
        listed = frozenset(summary.listed_movies)
        by_arrival = summary.mdoc_path is None and name in self._quiet_without_mdoc
        if by_arrival:  # nothing lists its tilts: those known are its tilts, and it is
            # written while movies come to it (or to the series written in turns with it)
            listed, mdoc_since = frozenset(known), self._quiet_without_mdoc[name]
        obs = SeriesObservation(listed, frozenset(known),
                                frozenset(finished), lock, mdoc_since,
                                max(times) if times else now, frozenset(finished_rows),
                                summary.mdoc_path, by_arrival)
        if state.status == "complete" and changed_names & state.assembled_movies:
            new, assemble = replace(state, status="open", reason="re-opened: metadata of "
                                    f"{sorted(changed_names & state.assembled_movies)[0]} "
                                    "changed"), False
        else:
            new, assemble = update_series_state(state, obs, now_s=now,
                                                config=self.series_config,
                                                run_ending=self._run_ending)
        # every tilt corrected, nothing writing: it completes once its mdoc is quiet, and
        # the service is not idle until then (a batch run on a finished session's folder
        # gets its stacks)
        awaited = obs.known_movies | (obs.listed_movies if new.generation == 0 else set())
        if (new.status != "complete" and not assemble and not lock and not new.lock_seen
                and mdoc_since is not None and summary.listed_movies and obs.known_movies
                and awaited <= obs.finished_movies and not by_arrival):
            self._completing.add(name)
        else:
            self._completing.discard(name)
        if state.status == "complete" and new.status == "open":
            self._log.info("series_reopened", series=name, reason=new.reason)
            self._states[name] = new
            self._persist(name, new)
            self._emit("reopened", name)
            return
        if assemble and folder_of is not None:
            self._submit(name, new, summary, by_name, folder_of)
            return
        if new != state:
            self._states[name] = new
            self._persist(name, new)
        elif new.status == "complete":
            read = known | summary.listed_movies | state.assembled_movies
            self._settled.settle(name, summary, state, read, watches_renames=any(
                vanished_row(row) for m in read
                if (row := self._rows.get(by_name.get(m, ""))) is not None))

    def _lock_present(self, name: str, summary: SeriesSummary) -> bool:
        """The series' ``.openTS`` lock is beside its mdoc, or the mdoc is missing: a lock
        missing from a folder whose mdoc is missing too is a doubtful listing (a network share
        reconnecting, a mount dropped for seconds), not the end of the series. False without
        a series mdoc. (A settled series looks for it while it has never seen one: what a
        complete series notes of it, ``lock_seen``, decides how it completes once re-opened.)"""
        if summary.mdoc_path is None:
            return False
        looked = self._lock_names.get((name, summary.mdoc_path))
        if looked is None:  # made once a series: a settled one is looked at every scan
            if len(self._lock_names) >= _REL_NAMES_KEPT:
                self._lock_names.clear()
            looked = self._lock_names[(name, summary.mdoc_path)] = tuple(
                str(p) for p in lock_paths(Path(summary.mdoc_path), split_qualified(name)[1]))
        return any(_exists(p) for p in looked) or not _exists(summary.mdoc_path)

    def _update_info(self, name: str, state: SeriesState, summary: SeriesSummary,
                     folder_of: Path | None) -> None:
        """Record what ``motionwatch status`` shows of a series (written only when it changes)."""
        ctx = self._ctx
        folder = None
        if folder_of is not None:
            folder = str(output_dir_for(folder_of, watch_dir=ctx.watch_dir,
                                        out_dir=ctx.out_dir) / split_qualified(name)[1])
        from_mdoc = summary.match_source == "series_mdoc"
        info = {"expected_tilts": len(summary.tilts) if from_mdoc else None,
                "mdoc": summary.mdoc_path, "folder": folder,
                LISTED_MOVIES: sorted(summary.listed_movies) if from_mdoc else None,
                ACCUMULATED_DOSE: summary.accumulated_dose_e_A2}
        if self._info.get(name) != info:
            self._info[name] = info
            self._persist(name, state)

    def _persist(self, name: str, state: SeriesState, keep: tuple[str, ...] = ()) -> None:
        """Store the series' state; ``keep``: fields of the stored state kept (``moved_to``,
        written by the ledger when the series' last tilt moved away)."""
        try:
            stored = self._ctx.store.series_states().get(name, {}) if keep else {}
            self._ctx.store.set_series_state(
                name, {**{k: stored[k] for k in keep if k in stored},
                       **_state_dict(state, self._stacks.get(name), self._info.get(name))})
        except Exception as exc:  # noqa: BLE001
            self._once_log("error", "ledger_write_failed", name, str(exc))

    # --- assembly -------------------------------------------------------------------------
    def _submit(self, name: str, state: SeriesState, summary: SeriesSummary,
                by_name: Mapping[str, str], folder_of: Path) -> None:
        ctx = self._ctx
        rows = [self._rows.get(by_name.get(m, "")) for m in sorted(state.assembled_movies)]
        tilts = assembly_tilts(rows, log=self._log, series=name)
        if not tilts:
            self._states[name] = state
            self._persist(name, state)
            self._log.warning("series_not_assembled", series=name, reason="no corrected tilt")
            return
        out = output_dir_for(folder_of, watch_dir=ctx.watch_dir, out_dir=ctx.out_dir)
        stem = split_qualified(name)[1]  # OUT/<folder>/<series name>/<series name>.mrc ...
        voltage_kV, note = series_voltage_kV(
            rows, DEFAULT_VOLTAGE_KV if ctx.voltage_kV is None else ctx.voltage_kV)
        if note is not None:
            self._log.warning("series_voltages_differ", series=name, reason=note)
        mdoc_name = Path(summary.mdoc_path).name if summary.mdoc_path else None
        future = ctx.run_job(assemble_job, stem, tilts, str(out), voltage_kV,
                             self.exposure_filtered, self._tilt_axis_of(summary), mdoc_name)
        self._assembling[name] = (future, state, str(out / stem))
        level = "debug" if name in self._assembly_trouble else "info"  # a try again: quiet
        getattr(self._log, level)("series_assembling", series=name, tilts=len(tilts),
                                  reason=state.reason, folder=str(out / stem))

    def _remove_ghosts(self, res: Resolution) -> None:
        """Remove the assembled files of every series with stacks recorded and no tilt left:
        none in the resolution, none assembling, no state row naming it (the rows are the
        truth: a tilt moved away is recorded under its new series), except quarantined rows
        (left out of the stacks and never corrected again as they are: retried, a movie is
        admitted afresh with the metadata of then). The stacks stay recorded until their files
        are gone, so a removal cut short is finished at the next scan or restart, and a
        series that is gone is never assembled again from the record."""
        alive = set(res.series) | set(self._assembling)
        # begun from its movies' names, never assembled, and gone from the metadata: an mdoc
        # that came after them made them another series' tilts
        begun = [n for n, state in self._states.items() if n not in alive and not
                 self._stacks.get(n) and state.reason not in (REMOVED_SERIES_REASON,
                                                              DROPPED_SERIES_REASON)]
        if not begun and all(n in alive for n, stacks in self._stacks.items() if stacks):
            return  # the common scan: every assembled series is in the metadata (rows unread)
        alive |= {name for row in self._rows.values() if row.status != "quarantined"
                  for name in row_series(row)}
        for name in sorted(n for n, stacks in self._stacks.items() if stacks and n not in alive):
            self._remove_ghost(name, self._live_folders(alive))
        for name in sorted(n for n in begun if n not in alive):
            state = SeriesState(name, reason=DROPPED_SERIES_REASON)
            self._states[name] = state
            self._persist(name, state, keep=("moved_to",))
            self._log.info("series_dropped", series=name, reason=state.reason)

    def _live_folders(self, alive: set[str]) -> set[Path]:
        """The stack folders of the series in ``alive`` (recorded or to be assembled)."""
        folders = {Path(v).parent for n in alive for v in self._stacks.get(n, {}).values() if v}
        return folders | {Path(f) for n in alive if (f := (self._info.get(n) or {}).get("folder"))}

    def _remove_ghost(self, name: str, live: set[Path]) -> None:
        """Remove series ``name``'s assembled files (none where a live series' stacks are: they
        are that series'), then forget its stacks and make it open, so that tilts coming back
        assemble it anew (log event ``series_outputs_removed``)."""
        stacks = self._stacks[name]
        folder = Path(stacks.get("sum") or stacks.get("dw") or "").parent
        removed: list[str] = []
        if folder not in live:
            try:
                _, removed = remove_assembled(stacks, split_qualified(name)[1],
                                              (self._info.get(name) or {}).get("mdoc"))
            except Exception as exc:  # noqa: BLE001 - logged; tried again at the next scan
                self._once_log("error", "series_outputs_not_removed", name,
                               f"{type(exc).__name__}: {exc}", series=name, folder=str(folder))
                return
        state = SeriesState(name, reason=REMOVED_SERIES_REASON)
        self._stacks[name] = {}
        self._states[name] = state
        self._persist(name, state, keep=("moved_to",))
        self._log.info("series_outputs_removed", series=name, folder=str(folder), files=removed,
                       reason=state.reason if folder not in live else
                       "no tilts left; its folder holds a live series' stacks: kept")

    def _tilt_axis_of(self, summary: SeriesSummary) -> float | None:
        """The series' nominal tilt axis (°): the setting, else its mdoc's title, else None."""
        if self.tilt_axis_deg is not None:
            return self.tilt_axis_deg
        watched = self._watcher.mdocs.get(summary.mdoc_path or "") if self._watcher else None
        tomo5 = watched.parsed.tomo5_tilt_axis_deg if watched is not None else None
        if watched is not None and watched.parsed.tilt_axis_deg is None and tomo5 is not None:
            self._once_log("warning", "tilt_axis_unknown", summary.name,
                           f"Tomography 5's TiltAxisAngle = {tomo5:g} is not SerialEM's tilt "
                           "axis (another convention) and is not used: set tilt_axis "
                           "(--tilt-axis) for the stacks' mdoc and RELION", series=summary.name)
        elif watched is None or watched.parsed.tilt_axis_deg is None:
            # RELION's import requires the axis (its alignment hands it to IMOD); written as 0
            # it sent the alignment ~85 degrees off, with nothing said
            self._once_log("warning", "tilt_axis_unknown", summary.name,
                           "no tilt axis: no series mdoc with SerialEM's 'Tilt axis angle' "
                           "title; RELION's rlnTomoNominalTiltAxisAngle is written as 0 and the "
                           "stacks' mdocs give none: set tilt_axis (--tilt-axis)",
                           series=summary.name)
        return None if watched is None else watched.parsed.tilt_axis_deg

    def poll(self) -> None:
        """Collect finished assemblies (each completes its series)."""
        for name, (future, state, folder) in list(self._assembling.items()):
            if not future.done():
                continue
            del self._assembling[name]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - recorded; the series re-opens on new movies
                reason = f"{ASSEMBLY_FAILED_REASON}: {exc}"
                again = None
                retry = {k: v for k, v in self._assembly_retry.items() if k != name}
                if isinstance(exc, OSError):  # the disk, the share: not the series' fault
                    failures = self._assembly_retry.get(name, (0, 0.0))[0] + 1
                    again = min(ASSEMBLY_RETRY_MAX_S,
                                self.assembly_retry_first_s * 2 ** (failures - 1))
                    retry[name] = (failures, self._now() + again)
                    reason += f" (tried again in {again:g} s)"
                # (else the series' own trouble: tried again at the next start)
                # open again when it is tried again (now, or at the next start)
                self._states[name] = replace(state, reason=reason,
                                             status="open" if again is not None
                                             else state.status)
                self._set_assembly_retry(retry)
                self._persist(name, self._states[name])
                # the same trouble again (a folder still not writable) is the journal's news
                # once, not at every try all night; at debug level, the tries go on
                trouble = (type(exc).__name__, getattr(exc, "errno", None),
                           "" if isinstance(exc, OSError) else str(exc))  # (temporary names)
                level = "debug" if self._assembly_trouble.get(name) == trouble else "error"
                self._assembly_trouble[name] = trouble
                getattr(self._log, level)("series_assembly_failed", series=name, folder=folder,
                                          error=f"{type(exc).__name__}: {exc}",
                                          **({} if again is None else {"retry_in_s": again}))
                self._emit("assembly_failed", name, reason=f"{type(exc).__name__}: {exc}")
                continue
            if name in self._assembly_retry:
                self._set_assembly_retry({k: v for k, v in self._assembly_retry.items()
                                          if k != name})
            self._assembly_trouble.pop(name, None)
            self._stacks[name] = result["stacks"]
            self._states[name] = state
            self._persist(name, state)
            for w in result["warnings"]:
                self._log.warning("series_warning", series=name, reason=w)
                self._emit("warning", name, reason=w)  # the feed: a tilt left out, shown live
            self._log.info("series_completed", series=name, folder=result["folder"],
                           tilts=len(result["order"]), reason=state.reason,
                           stacks=result["stacks"])
            self._emit("completed", name, result["stacks"], tilts=state.assembled_movies)

    # --- movie events ---------------------------------------------------------------------
    def movie_finished(self, event: MovieEvent) -> None:
        """A movie was recorded (an EPU movie weighted without its metadata file's voltage is
        then looked at for it); a movie of a series: the series is ``updated``."""
        self._late_epu.finished(event.path, event.status)
        self._run_ending = False  # work again: the run goes on (end_of_run says when it ends)
        name = (event.metadata.get("log_context") or {}).get("series")
        if not name or self._ctx is None:
            return
        self._refresh_rows()
        self._emit("updated", name)

    def stop(self) -> None:
        """Nothing to release (assembly jobs belong to the service's job runner)."""
        self._assembling.clear()
