"""From a scan to the state database: settle -> validate -> metadata and dose -> ledger row.

:class:`Admission` takes each scan, tracks which movies have settled, validates a settled movie
once (format-level completeness, :func:`daemon.intake.validate.validate`), asks the metadata
resolver for its dose and record fields (with the frame count validation found), and adds it to the
ledger (or adopts outputs already on disk for exactly this version: an adopted movie is announced
as done, like a corrected one, so the hand-off files and the feed list it). A movie it has handled
is not looked at again until its size, mtime or metadata change, or ``motionwatch retry`` lifts
its quarantine (:meth:`~daemon.state.ledger.Ledger.requeue` drops its row): it is then admitted
again like a new movie, so a retried tilt gets its series' dose and is corrected once.

One file is one movie, whatever its names: a settled movie whose file version (``(st_dev,
st_ino)``, size, mtime, and content fingerprint where recorded) the ledger already holds under
another name is not corrected again (where the inode number changed, a remount, the same file
name, size and mtime under a name now gone tell it, if only one such name is gone; where the
device differs, one share mounted twice, the same inode number, size, mtime and content). If
that other name still is the same file (a hard link, a link to it, a folder linked into the
tree twice), the movie stays recorded under the name it was met by first (``movie_alias``); if
not (the file or a folder above it was renamed, while the daemon ran or while it was stopped),
its rows move to the new name with their status, outputs and dose (``movie_moved``): the outputs
keep the names they were written under, and the series it belongs to under the new name gets its
dose from the mdoc, as always (a moved tilt is redone only if that changes its dose).

No single file stops the service: an unexpected error while admitting one movie is logged once
(``movie_admission_failed``) and that movie is quarantined with the error (``motionwatch retry``
admits it again) and set aside until it changes. With
``on_parameter_change = "keep"``, a movie already done under other parameters (same file, same
size and mtime) is not corrected again.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from correction.errors import (FrameSelectionError, PageChainLoopError,
                               TruncatedMovieError, UnreadableMovieError,
                               UnsupportedFormatError)
from correction.report import read_motion_record
from correction.stems import folder_file_stem
from daemon.engine.faults import RETRY_NOTE, LedgerWrites
from daemon.engine.outputs import OutputStems, find_adoptable_outputs, movie_stem, summarise
from daemon.engine.policy import (CHANGES_SHOWN, EnginePolicy, finished_under_other_parameters,
                                  parameter_differences)
from daemon.events import (VANISHED, MetadataResolver, MovieEvent, MovieGain, MovieKey,
                           MovieMetadata, Observation, ScanResult, frame_mdoc_gains_apply,
                           movie_fingerprint, output_dir_for)
from daemon.intake.content import content_fingerprint
from daemon.intake.frame_gain import (UnappliedDefectLists, find_frame_mdoc_gain,
                                      frame_mdoc_defects_notes, why_no_frame_mdoc_gain)
from daemon.intake.settle import Settler
from daemon.intake.validate import GONE_REASON, TAKEN_AS_IT_IS, UNREADABLE, Verdict, validate
from daemon.series.assembly import recorded_tilt
from daemon.series.moved import moved_tilt
from daemon.state.codec import StoredMetadata, dose_to_json, metadata_from_json, metadata_to_json

__all__ = ["Admission", "AdmissionSettings"]

_DB_DOWN = "state database unavailable"
#: seconds of admission work in one scan: the rest waits for the next scans, so that the main
#: loop turns (heartbeats, the watchdog's pings, stop requests, dispatch) while a long backlog
#: is admitted, as after a start with weeks of sessions in the watched folder, each of whose
#: movies is looked up once more (20,000: 6.6 s in one scan before)
ADMISSION_BUDGET_S = 2.0
#: seconds before a movie that failed to read with an error other than a denied permission,
#: while the system calls it readable (an I/O error of a share, a bad sector), is read again;
#: one denied is read again as soon as it is readable (a chmod, a share mounted again)
UNREADABLE_RETRY_S = 60.0

_FOLDERS_REMEMBERED = 10_000  # folders whose last movie's frame count is kept
#: a movie of no mdoc waits when it has fewer frames than the movie admitted before it from
#: its folder: an EER by more than 2 raw frames and this fraction (the raw frames of one
#: exposure setting differ by one or two), an MRC or TIFF by any (its frames are an exposure
#: setting's: a writer that paused 2 frames short was corrected at 8, 9 and 10 of 10)
_EER_FRAMES_SLACK = 0.02


def _frames_slack(frames: int, suffix: str) -> float:
    """Frames two movies of one exposure setting may differ by (``suffix``: the movies')."""
    return max(2.0, _EER_FRAMES_SLACK * frames) if suffix == ".eer" else 0.0


def _series_renamed(old: Path, new: Path, watch_dir: Path
                    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The stored metadata of a movie moved from ``old`` to ``new``: its tilt's series and mdoc
    as called now (:func:`~daemon.series.moved.moved_tilt`: a series whose mdoc moved with it,
    ``grid1/TS_01`` when ``grid1`` became ``grid1_good``, takes the name the resolver gives it
    from now on; a renamed frames folder below the mdoc's leaves the series' name as it is)."""

    def update(metadata: dict[str, Any]) -> dict[str, Any]:
        extra = dict(metadata.get("extra_record") or {})
        if not isinstance(extra.get("tilt"), dict):
            return metadata
        extra["tilt"] = moved_tilt(extra["tilt"], old, new, watch_dir)
        metadata["extra_record"] = extra
        log_context = dict(metadata.get("log_context") or {})
        if "series" in log_context and "series" in extra["tilt"]:
            log_context["series"] = extra["tilt"]["series"]
            metadata["log_context"] = log_context
        return metadata

    return update


def _own_metadata_moved(done: Any, stored: Mapping[str, Any], params: Any) -> list[str]:
    """What of a movie's own metadata (its dose as corrected, the configured one where it had
    none of its own; its gain) differs between its done row and ``stored``, the metadata it
    is admitted under now (:func:`daemon.engine.policy.parameter_differences`)."""
    old = done.peek_metadata()

    def effective(metadata: Mapping[str, Any]) -> dict[str, Any]:
        dose = metadata.get("dose") or dose_to_json(params.dose)
        return {"dose": dose or {}, "gain": metadata.get("gain") or {}}

    return parameter_differences(effective(old), effective(stored))[:CHANGES_SHOWN]


def _written_under(record: dict[str, Any], extra_record: dict[str, Any]) -> bool:
    """Whether a motion record was written with this extra record (its tilt: series, dose and
    pre-exposure), compared as stored (JSON)."""
    return all(json.loads(json.dumps(record.get(k))) == json.loads(json.dumps(v))
               for k, v in extra_record.items())


def _record_outdated(row: Any, meta: MovieMetadata) -> bool:
    """A done row of this key whose tilt record the metadata now contradicts (the resolver's
    ``movie_redo_metadata_changed``): a tilt of another series (its series mdoc renamed), or
    one corrected with the same dose before its mdoc came (a file-name fallback's or a
    single-particle dose equal to the mdoc's: only the record moved). Left as it is, the
    movie would be flagged at every scan and its series never assembled."""
    if row.status != "done":
        return False
    if meta.redo_reason is not None:
        return True
    old = recorded_tilt(row)
    new = ((meta.extra_record or {}).get("tilt") or {}).get("series")
    return old is not None and bool(old.series) and bool(new) and old.series != new


def _may_be(row: Any, content: str | None) -> bool:
    """Whether a recorded row's file may be the file of fingerprint ``content`` (renamed):
    the fingerprints agree, or one is unknown (a row an older version wrote, a file that does
    not read)."""
    return row.content is None or content is None or row.content == content


def _same_file(a: str, b: str) -> bool:
    """Whether two names are the same file now (False if either is gone or unreadable)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


#: a worker's errors (recorded as ``"<class>: <reason>"``) that say a file is no movie: its
#: frames unusable, its format unread (PageChainLoopError is an UnsupportedFormatError)
_NOT_A_MOVIE_ERRORS = tuple(f"{cls.__name__}:" for cls in (
    FrameSelectionError, UnreadableMovieError, UnsupportedFormatError, PageChainLoopError,
    TruncatedMovieError))


@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """What admission reads of the configuration (folders, parameters, times in seconds)."""

    watch_dir: Path
    out_dir: Path
    params: Any  # the correction.params.CorrectionParams movies are admitted under
    settle_time_s: float
    incomplete_grace_s: float
    require_frame_mdoc: bool
    frame_mdoc_gain: bool = True  # without a configured gain, the one the frame mdoc names

    @classmethod
    def of(cls, config: Any) -> AdmissionSettings:
        """The settings of a :class:`~daemon.settings.config.Config`."""
        return cls(config.watch_dir, config.out_dir, config.params, config.settle_time_s,
                   config.incomplete_grace_s, config.require_frame_mdoc,
                   config.frame_mdoc_gain)


class Admission:
    """Admits settled, complete movies into the ledger.

    Parameters
    ----------
    settings : AdmissionSettings
        What it reads of the configuration (:meth:`AdmissionSettings.of`).
    ledger : callable
        Returns the open :class:`~daemon.state.ledger.Ledger` (it may be reopened).
    resolver : MetadataResolver
    log : structlog-like logger
    quarantined : callable
        ``quarantined(event)``: a movie validation rejected was recorded (listeners, resolver).
    moved : callable, optional
        ``moved(event)``: a recorded movie's rows took its new name (the event has the new
        name, the row's status, outputs and metadata), so the hand-off files name it.
    adopted : callable, optional
        ``adopted(event)``: a movie whose outputs were found on disk was recorded done (an
        event with status ``done``, attempt 0, its outputs and motion record).
    clock : callable
        Monotonic clock (s), for the settle time and the admission work of one scan.
    budget_s : float
        Seconds of that clock one scan admits movies for (:data:`ADMISSION_BUDGET_S`).
    writes : LedgerWrites
        Shared record of whether the state database takes writes.
    policy : EnginePolicy, optional
        ``on_parameter_change`` (default: redo).
    arrived : callable, optional
        ``arrived(observation)``: a movie joined the queue (its path and modification
        time), for the service's pace (:mod:`daemon.engine.pace`).
    """

    def __init__(self, settings: AdmissionSettings, *, ledger: Callable[[], Any],
                 resolver: MetadataResolver,
                 log: Any, quarantined: Callable[[MovieEvent], None], clock: Callable[[], float],
                 writes: LedgerWrites, policy: EnginePolicy | None = None,
                 arrived: Callable[[Observation], None] | None = None,
                 adopted: Callable[[MovieEvent], None] | None = None,
                 moved: Callable[[MovieEvent], None] | None = None,
                 budget_s: float = ADMISSION_BUDGET_S) -> None:
        self.settings = settings
        self._budget_s = budget_s  # of the clock ``clock``: admission work in one scan
        self._writes = writes
        self._policy = policy or EnginePolicy()
        self._ledger = ledger
        self._resolver = resolver
        self._log = log
        self._quarantined = quarantined
        self._arrived = arrived
        self._adopted = adopted
        self._moved = moved
        self._clock = clock
        self._settler = Settler(settings.settle_time_s, clock=clock)
        self._fingerprint = settings.params.fingerprint()
        self._handled: set[tuple[str, int, int]] = set()
        # movies quarantined as unreadable (path -> its version, the clock from which it is
        # read again): looked at again once they read
        self._unreadable: dict[str, tuple[tuple[str, int, int], float]] = {}
        # versions the ledger held at start-up: not "settling" while the first scans settle them
        self._recorded: set[tuple[str, int, int]] | None = None
        self._reported: set[tuple[str, str]] = set()
        self._requeue_serial: int | None = None  # the ledger's, when last looked at
        self.waiting: dict[Path, str] = {}
        #: why the resolver could not take the last scan in (nothing admitted), or None
        self.resolver_problem: str | None = None
        #: the watched folder could not be listed at the last scan (a share unmounted): why
        self.watch_problem: str | None = None
        #: folders below the watch folder that the last scan could not list (a grid written by
        #: another account with a strict umask): their movies are not seen until they can be
        self.folders_problem: str | None = None
        #: settled movies the last scan left for the next (its admission time was spent): the
        #: service is not idle while there are any
        self.deferred = 0
        self._deferred_paths: list[Path] = []
        self._looked: set[tuple[str, int, int]] = set()  # versions admission has looked at
        # the inode each handled path had when admission took it: another file renamed in
        # under the same name, size and mtime (rsync -a --checksum) is met again
        self._handled_inodes: dict[str, tuple[int, int] | None] = {}
        self._stems = OutputStems()
        #: folder and suffix (``/data/grid1/*.tif``) -> frames of the last movie of that kind
        #: admitted from it (a movie with fewer waits)
        self._folder_frames: dict[str, int] = {}
        self._folder_last: dict[str, str] = {}  # folder -> the movie its frame count is of
        #: folder -> the movies held for fewer frames (path -> frames): two alike are a
        #: shorter exposure setting
        self._held_short: dict[str, dict[str, int]] = {}
        self._gain_folders: set[str] = set()  # folders whose movies named their gain reference
        self._unapplied_lists = UnappliedDefectLists(
            configured=settings.params.gain.defects_path is not None)

    def forget_all(self) -> None:
        """Look at every movie again (the ledger was re-created)."""
        self._handled.clear()
        self._handled_inodes.clear()
        self._looked.clear()
        self._recorded = None
        self._requeue_serial = None
        self._stems = OutputStems()

    def _look_again_at_requeued(self) -> None:
        """After a ``motionwatch retry``, forget having handled the movie versions whose
        quarantine it lifted (the ledger lists them), so they are admitted afresh; another
        row of the same version (done under earlier parameters) does not hide them."""
        try:
            ledger = self._ledger()
            serial = ledger.requeue_serial()
            if serial == self._requeue_serial:
                return
            if self._requeue_serial is not None:
                self._forget_versions(ledger.requeued_since(self._requeue_serial))
        except sqlite3.Error:
            return  # looked at again at the next scan
        self._requeue_serial = serial

    def _forget_versions(self, versions: list[tuple[str, int, int]]) -> None:
        """Forget having handled these ``(path, size, mtime_ns)`` versions, under their own
        names and under any other name of the same file (a hard link the scan lists first:
        the requeued movie is met, and admitted, under that name)."""
        for path, size, mtime_ns in versions:
            self._handled.discard((path, size, mtime_ns))
            others = [h for h in self._handled if h[1:] == (size, mtime_ns)]
            self._handled.difference_update(h for h in others if _same_file(h[0], path))

    def _safe(self, action: Callable[[], Any], *, write: bool = True) -> Any:
        return self._writes.guard(action, write=write)

    def report_once(self, subject: str, event: str, reason: str, *, level: str = "info") -> None:
        """Log ``event`` for ``subject`` once per distinct reason."""
        if (subject, reason) in self._reported:
            return
        self._reported.add((subject, reason))
        getattr(self._log, level)(event, movie=subject, reason=reason)

    # --- one scan -------------------------------------------------------------------------
    def busy_folders(self) -> set[str]:
        """The folders of the movies the last scan left waiting or deferred: discovery lists
        them afresh at every scan (:class:`daemon.intake.discover.ListingCache`), as the
        waits (settling, a complete file, a frame mdoc, metadata) are measured over scans."""
        return {os.path.dirname(str(p)) for p in (*self.waiting, *self._deferred_paths)}

    def take(self, result: ScanResult) -> None:
        """Handle one scan: report unreadable folders and non-movies, then admit what settled."""
        root = os.path.abspath(self.settings.watch_dir)
        self.watch_problem = None
        unlisted = []
        for folder, reason in result.errors:
            self.report_once(str(folder), "folder_unreadable", reason, level="warning")
            if os.path.abspath(folder) == root:
                self.watch_problem = (f"watch folder {self.settings.watch_dir} cannot be listed "
                                      f"({reason}): no movie can arrive (a share unmounted?)")
            else:
                unlisted.append((folder, reason))
        self.folders_problem = None if not unlisted else (
            f"{len(unlisted)} folder(s) in the watch folder cannot be listed ({unlisted[0][0]}: "
            f"{unlisted[0][1]}{' ...' if len(unlisted) > 1 else ''}): their movies are not "
            "seen until they can be (permissions?)")
        for path, reason in result.skipped:
            if (str(path), "skip") not in self._reported:
                self._reported.add((str(path), "skip"))
                # recorded quarantined (status lists it), so logged as such: "movie_ignored"
                # is for what is never recorded (a single image, SerialEM's own stack)
                self._log.warning("movie_quarantined", movie=str(path), reason=reason,
                                  stage="discover")
                key = MovieKey(str(path), -1, -1, self._fingerprint)
                if self._safe(lambda: self._ledger().add(key, status="quarantined",
                                                         error=reason)) is not None:
                    # the feed's `error` too: a live view listed it only as a count
                    self._quarantined(MovieEvent(path, key, "quarantined", 0, error=reason))
        try:
            changed = {str(p) for p in (self._resolver.observe(result) or ())}
        except Exception as exc:  # noqa: BLE001 - a resolver bug must not stop the service
            self._resolver_failed(result, f"metadata resolver failed: {type(exc).__name__}: "
                                          f"{exc}")
            return
        if self.resolver_problem is not None:
            self._log.info("metadata_observe_recovered", was=self.resolver_problem)
            self.resolver_problem = None
        if changed:
            self._handled = {h for h in self._handled if h[0] not in changed}
        self._look_again_at_requeued()
        for path, (ident, not_before) in list(self._unreadable.items()):
            if self._clock() >= not_before and os.access(path, os.R_OK):  # permissions fixed,
                self._handled.discard(ident)  # share back, or a while after an I/O error
                del self._unreadable[path]
        movies = [o for o in result.observations if o.kind == "movie"]
        # a version no longer in the tree is no longer handled: back under its name (a share
        # unmounted for a while, a folder moved away and back), it is met again, and a movie
        # quarantined as vanished meanwhile is corrected (a version the ledger holds otherwise
        # is found there again)
        present = {(str(o.path), o.size, o.mtime_ns) for o in movies}
        unlisted = tuple(os.path.join(str(folder), "") for folder, _ in result.errors)
        self._handled = {h for h in self._handled  # a folder not listed this time: kept
                         if h in present or (unlisted and h[0].startswith(unlisted))}
        settled = {o.path for o in self._settler.update(movies)}
        waiting: dict[Path, str] = {}
        recorded = self._recorded_versions()
        to_admit = []
        present_paths = {h[0] for h in present}
        self._handled_inodes = {p: i for p, i in self._handled_inodes.items()
                                if p in present_paths}
        for obs in movies:
            ident = (str(obs.path), obs.size, obs.mtime_ns)
            if ident in self._handled:
                known = self._handled_inodes.setdefault(str(obs.path), obs.inode)
                if known is None or obs.inode is None or known == obs.inode:
                    continue
                # another file under the name, size and mtime: admission compares it with the
                # done row (movie_replaced), as a restart did
                self._handled.discard(ident)
            self._handled_inodes[str(obs.path)] = obs.inode
            if obs.path not in settled:
                if (str(obs.path), obs.size, obs.mtime_ns) not in recorded:
                    waiting[obs.path] = "settling"
                continue
            to_admit.append(obs)
        # the movies not looked at yet first, then those looked at before (still waiting, or
        # unreadable and tried again), each oldest first: one looked at again at every scan,
        # slowly (a share answering an I/O error after seconds), does not take every scan's
        # time from the movies behind it
        to_admit.sort(key=lambda o: (str(o.path), o.size, o.mtime_ns) in self._looked)
        ends = None  # the clock at which this scan's admission work ends (ADMISSION_BUDGET_S)
        deferred: list[Path] = []
        for obs in to_admit:
            if ends is None:
                ends = self._clock() + self._budget_s
            elif self._clock() >= ends:  # the next scans go on (at least one movie a scan)
                deferred.append(obs.path)
                continue
            self._looked.add((str(obs.path), obs.size, obs.mtime_ns))
            try:
                reason = self._admit(obs)
            except Exception as exc:  # noqa: BLE001 - no single file may stop the service
                why = f"admission failed: {type(exc).__name__}: {exc}"
                self.report_once(str(obs.path), "movie_admission_failed", why, level="error")
                self._handled.add((str(obs.path), obs.size, obs.mtime_ns))
                # quarantined, so that status lists it and `motionwatch retry` lifts it (unless
                # a row of this version says more: corrected before, under other parameters)
                key = MovieKey(str(obs.path), obs.size, obs.mtime_ns, self._fingerprint)
                self._safe(lambda key=key, why=why, obs=obs: self._quarantine_unless_recorded(
                    key, why, obs))
                reason = None
            if reason is not None:
                waiting[obs.path] = reason
        self.waiting = waiting
        self.deferred = len(deferred)
        self._deferred_paths = deferred

    def _resolver_failed(self, result: ScanResult, why: str) -> None:
        """The resolver could not take this scan in: nothing is admitted until it can. A movie
        admitted without what the resolver knows would be corrected without its series' dose
        and pre-exposure, and one corrected before, looked up under that other dose, would be
        corrected again. Every movie not recorded yet waits with ``why`` (listed by status;
        the service lists ``why`` as a problem); logged when it first fails and when the
        failure changes, and once it recovers."""
        if why != self.resolver_problem:
            self._log.error("metadata_observe_failed", error=why,
                            note="no movie is admitted until the resolver takes a scan in")
        self.resolver_problem = why
        recorded = self._recorded_versions()
        self.waiting = {o.path: why for o in result.observations if o.kind == "movie"
                        and (str(o.path), o.size, o.mtime_ns) not in self._handled
                        and (str(o.path), o.size, o.mtime_ns) not in recorded}
        self.deferred = 0
        self._deferred_paths = []

    def _version_recorded(self, key: MovieKey) -> bool:
        """A row of this file version (path, size, mtime) exists, under any parameters."""
        return any((r.key.size, r.key.mtime_ns) == (key.size, key.mtime_ns)
                   for r in self._ledger().rows(path=key.path))

    def _quarantine_unless_recorded(self, key: MovieKey, why: str,
                                    obs: Observation | None = None) -> bool:
        """Record the file version quarantined for ``why`` (with its inode and content
        fingerprint when ``obs`` is given) unless a row of it exists; whether it was added."""
        if self._version_recorded(key):
            return False
        self._ledger().add(key, status="quarantined", error=why,
                           inode=None if obs is None else obs.inode,
                           content=None if obs is None else content_fingerprint(obs.path))
        return True

    def _recorded_versions(self) -> set[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` of every row the ledger held when first asked (after a
        restart, the corrected and quarantined movies are not news while they settle again)."""
        if self._recorded is None:
            try:
                self._recorded = self._ledger().versions()
            except sqlite3.Error:
                return set()
        return self._recorded

    def _unchanged_for_s(self, obs: Observation) -> float:
        """How long the file has been seen unchanged (s); a version the ledger held at start
        (corrected or quarantined before a restart) at least ``incomplete_grace_s``: it was
        looked at, and waited for, then (a truncated file quarantined as incomplete is not
        waited for, nor said to be incomplete, again after each restart)."""
        seen = self._settler.stable_for_s(obs.path) or 0.0
        if (str(obs.path), obs.size, obs.mtime_ns) in self._recorded_versions():
            return max(seen, self.settings.incomplete_grace_s)
        return seen

    # --- one movie ------------------------------------------------------------------------
    def _admit(self, obs: Observation) -> str | None:
        """Handle a settled movie; returns a wait reason, or None once it is in the ledger."""
        cfg = self.settings
        ident = (str(obs.path), obs.size, obs.mtime_ns)
        if obs.inode is not None:
            known, reason = self._known_by_another_name(obs)
            if known:
                return reason
        verdict = self._known_complete(obs) or validate(
            obs.path, stable_for_s=self._unchanged_for_s(obs),
            incomplete_grace_s=cfg.incomplete_grace_s, require_frame_mdoc=cfg.require_frame_mdoc)
        if verdict.decision == "wait":
            if verdict.reason != GONE_REASON:  # gone: the next scans say whether it is back
                self.report_once(str(obs.path), "movie_incomplete", verdict.reason)
            return verdict.reason
        if verdict.decision == "reject":
            return self._reject(obs, verdict)
        if verdict.reason.endswith(TAKEN_AS_IT_IS):  # a full-size MRC ending in zeros
            self.report_once(str(obs.path), "movie_zero_filled", verdict.reason,
                             level="warning")
        if verdict.n_frames is not None and verdict.n_frames < 2:
            # EPU's atlas, grid-square and foil-hole images, SerialEM's single shots, a gain
            # reference: they share the movies' suffixes; a movie still being written is looked
            # at again when it grows
            self.report_once(str(obs.path), "movie_ignored",
                             f"a single image ({verdict.n_frames} frame), not a movie")
            self._handled.add(ident)
            return None
        try:
            meta = self._resolver.resolve(obs, cfg.params, n_frames=verdict.n_frames)
        except OSError as exc:  # a share's I/O error under its metadata: looked at again
            why = f"metadata unreadable: {type(exc).__name__}: {exc}; tried again at each scan"
            self.report_once(str(obs.path), "metadata_failed", why, level="warning")
            return why
        except Exception as exc:  # noqa: BLE001 - never corrected without its metadata
            why = f"metadata failed: {type(exc).__name__}: {exc}"
            key = MovieKey(str(obs.path), obs.size, obs.mtime_ns, self._fingerprint)
            recorded = self._safe(lambda: self._version_recorded(key), write=False)
            if recorded is None:
                return _DB_DOWN
            if recorded:  # corrected before (other parameters): it keeps that record, waits
                self.report_once(str(obs.path), "metadata_failed", why, level="error")
                return why
            meta = MovieMetadata(quarantine_reason=why)  # quarantined: status lists it
        if not (meta.wait_reason or meta.ignore_reason or meta.quarantine_reason):
            meta = self._with_own_gain(obs, meta)
        if meta.wait_reason:
            self.report_once(str(obs.path), "movie_waiting", meta.wait_reason)
            return meta.wait_reason
        if meta.ignore_reason:
            self.report_once(str(obs.path), "movie_ignored", meta.ignore_reason)
            self._handled.add(ident)
            return None
        if meta.quarantine_reason:
            key = MovieKey(str(obs.path), obs.size, obs.mtime_ns, self._fingerprint)
            added = self._safe(lambda: self._quarantine_unless_recorded(
                key, meta.quarantine_reason, obs))
            if added is None:
                return _DB_DOWN
            if added:  # said once recorded (whoever reads the state on the event finds the
                # row); a version recorded before a restart is no news (status lists it)
                self.report_once(str(obs.path), "movie_quarantined", meta.quarantine_reason,
                                 level="error")  # not corrected: an error, as a worker's
            self._handled.add(ident)
            return None
        short = self._short_of_frames(obs, verdict, meta)
        if short is not None:
            return short
        key = MovieKey(str(obs.path), obs.size, obs.mtime_ns,
                       movie_fingerprint(cfg.params, meta.dose, meta.gain))
        ledger = self._ledger()
        try:
            row = ledger.get(key)
        except sqlite3.Error as exc:
            self.report_once(str(obs.path), "ledger_read_failed", str(exc), level="error")
            return _DB_DOWN
        if row is not None and row.status == "quarantined" and \
                (row.error or "").startswith((UNREADABLE, VANISHED)):
            # it could not be read before, or was gone from its name when a worker was free
            # (a share's blip, a folder moved away and back); it reads and is complete now:
            # its fault is gone, and it is admitted afresh (with its metadata now)
            if self._safe(lambda: ledger.forget(key, statuses=("quarantined",)) or True) is None:
                return _DB_DOWN
            self._log.info("movie_back" if row.error.startswith(VANISHED)
                           else "movie_readable_again", movie=str(obs.path),
                           note=f"was quarantined as: {row.error}")
            row = None
        outdated = row is not None and _record_outdated(row, meta)
        content = self._replaced(row, obs) if row is not None and not outdated else None
        if content is not None:
            # another file under this name, size and mtime (a new inode whose content differs:
            # a different movie copied in with its mtime kept): corrected afresh
            if self._safe(lambda: (ledger.redo(key), ledger.set_inode(
                    key, obs.inode, content=content, replace_content=True)) and True) is None:
                return _DB_DOWN
            self._log.warning("movie_replaced", movie=str(obs.path),
                              note="another file now has this name, size and modification "
                                   "time (its content differs): corrected again")
            row = ledger.get(key)
        if row is not None and self._superseded(row):
            # done under these parameters, then again under others (metadata that moved and
            # moved back: an mdoc read half-way through a rewrite): the outputs on disk are
            # the others', so it is corrected again under these (with the record of now)
            redo_metadata = self._stored_now(row, meta, verdict, obs) if outdated else None
            if self._safe(lambda: ledger.redo(key, metadata=redo_metadata) or True) is None:
                return _DB_DOWN
            outdated = False
            self._log.warning("movie_redo_superseded", movie=str(obs.path),
                              note="its outputs were since written under other parameters or "
                                   "metadata: corrected again under these")
        if outdated:
            # its tilt record is stale at the same dose (another series' now, a series mdoc
            # renamed; or its mdoc came after it was corrected by its file name): the same
            # key, whose record, hand-off entries and stack must say what the metadata says
            stored_now = self._stored_now(row, meta, verdict, obs)
            if self._safe(lambda: ledger.redo(key, metadata=stored_now) or True) is None:
                return _DB_DOWN
        if row is not None:
            if obs.inode is not None and (row.inode != obs.inode or row.content is None):
                # admitted before rows kept the inode and content, or its inode changed
                content = content_fingerprint(obs.path) if row.content is None else None
                self._safe(lambda: ledger.set_inode(key, obs.inode, content=content) or True)
            self._handled.add(ident)
            return None
        log = self._log.bind(movie=str(obs.path), **dict(meta.log_context))
        out_dir = output_dir_for(obs.path, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir)
        stem = self._stems.stem_for(obs.path, out_dir, ledger)
        if stem != movie_stem(obs.path):
            why = (f"{movie_stem(obs.path)}.* names a file of the output folder itself"
                   if folder_file_stem(movie_stem(obs.path)) else
                   f"another movie already writes {movie_stem(obs.path)}.* into {out_dir}")
            log.warning("output_stem_changed", stem=stem,
                        note=f"{why}: this one's outputs are named {stem}.*")
        stored = metadata_to_json(StoredMetadata(meta.dose, meta.extra_record, meta.log_context,
                                                 verdict.n_frames, stem, meta.gain))
        try:
            earlier = [r for r in ledger.rows(path=key.path) if r.key != key]
        except sqlite3.Error as exc:
            self.report_once(str(obs.path), "ledger_read_failed", str(exc), level="error")
            return _DB_DOWN
        done_before = [r for r in earlier if r.status == "done"
                       and (r.key.size, r.key.mtime_ns) == (key.size, key.mtime_ns)]
        # what of its own metadata moved (a voltage its header gives, a dose its frame mdoc
        # gives, its gain): said loudly, as parameters_changed says the settings' changes
        moved = _own_metadata_moved(done_before[-1], stored, self.settings.params) \
            if done_before and meta.redo_reason is None else []  # (a reason: said already)
        if self._policy.on_parameter_change == "keep" and done_before:
            if moved:
                log.warning("movie_kept", changed=moved, note=(
                    "its own metadata, as read now, is not what it was corrected with (the "
                    "files changed, or this release reads them further); kept as it is "
                    "(on_parameter_change = keep)"))
            else:
                log.debug("movie_kept", note="done under other parameters; kept "
                                             "(on_parameter_change = keep)")
            self._handled.add(ident)
            return None
        if moved:
            log.warning("movie_changed", changed=moved, size=obs.size,
                        previous=[r.status for r in earlier],
                        note="its own metadata, as read now, is not what it was corrected "
                             "with (the files changed, or this release reads them further): "
                             "corrected anew")
        elif earlier:
            same_file = all((r.key.size, r.key.mtime_ns) == (key.size, key.mtime_ns)
                            for r in earlier)
            log.info("movie_changed", note=(
                "the same file under new metadata or settings (its dose, pre-exposure, gain or "
                "parameters): corrected anew" if same_file
                else "new size or mtime: treated as a new movie"),
                size=obs.size, previous=[r.status for r in earlier])
        content = content_fingerprint(obs.path)
        adopted = find_adoptable_outputs(key, out_dir, stem, content)
        if adopted is not None:
            if self._safe(lambda: ledger.adopt(key, outputs=adopted, summary={}, timings={},
                                               metadata=stored, inode=obs.inode,
                                               content=content) or True
                          ) is None:
                return _DB_DOWN
            log.info("movie_adopted", outputs=adopted,
                     note="complete outputs of this movie version were already on disk")
            self._announce_adopted(obs.path, key, adopted, stored)
        else:
            if self._safe(lambda: ledger.add(key, metadata=stored, inode=obs.inode,
                                             content=content)) is None:
                return _DB_DOWN
            log.info("movie_ready", size=obs.size, frames=verdict.n_frames)
            if self._arrived is not None:
                self._arrived(obs)
        self._handled.add(ident)
        return None

    @staticmethod
    def _stored_now(row: Any, meta: MovieMetadata, verdict: Verdict, obs: Observation
                    ) -> dict[str, Any]:
        """The stored metadata of ``row``'s movie under ``meta`` (its output stem kept)."""
        return metadata_to_json(StoredMetadata(
            meta.dose, meta.extra_record, meta.log_context, verdict.n_frames,
            (row.metadata or {}).get("stem") or movie_stem(obs.path), meta.gain))

    @staticmethod
    def _replaced(row: Any, obs: Observation) -> str | None:
        """The content fingerprint of the file now under a done row's name when it is another
        file: a new inode (not a remount: its content differs from the row's); else None."""
        if row.status != "done" or obs.inode is None or row.inode is None \
                or row.inode == obs.inode or row.content is None:
            return None
        now = content_fingerprint(obs.path)
        return now if now is not None and now != row.content else None

    def _superseded(self, row: Any) -> bool:
        """A done row of this file version whose outputs another done row (other parameters)
        wrote since; never under ``on_parameter_change = keep``."""
        if row.status != "done" or self._policy.on_parameter_change == "keep":
            return False
        try:
            others = self._ledger().rows(path=row.key.path)
        except sqlite3.Error:
            return False
        return any(r.key != row.key and r.status == "done"
                   and (r.key.size, r.key.mtime_ns) == (row.key.size, row.key.mtime_ns)
                   and (r.finished or 0.0) > (row.finished or 0.0) for r in others)

    def _known_by_another_name(self, obs: Observation) -> tuple[bool, str | None]:
        """Whether the ledger holds this file version under another name, and then the wait
        reason (None once handled): a second name of a recorded file is left alone, a renamed
        file's rows take its new name."""
        ident = (str(obs.path), obs.size, obs.mtime_ns)
        ledger = self._ledger()
        try:
            rows = [r for r in ledger.rows_of_file(obs.inode, obs.size, obs.mtime_ns)
                    if r.key.path != str(obs.path)]
            if not rows:
                rows = self._on_another_mount(ledger, obs)
            if not rows:
                rows = self._renamed_before_inodes(ledger, obs)
        except sqlite3.Error as exc:
            self.report_once(str(obs.path), "ledger_read_failed", str(exc), level="error")
            return True, _DB_DOWN
        if not rows:
            return False, None
        recorded = {r.key.path: r.inode for r in rows}  # name -> its file's (dev, ino)
        for name, inode in recorded.items():
            try:
                st = os.stat(name)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in (obs.inode, inode):
                self.report_once(str(obs.path), "movie_alias",
                                 f"the same file as {name}, recorded under that name: not "
                                 "corrected again")
                self._handled.add(ident)
                return True, None
        content = content_fingerprint(obs.path)
        rows = [r for r in rows if _may_be(r, content)]
        if not rows:  # another file on a deleted movie's inode, size and mtime: a new movie
            return False, None
        names = list(dict.fromkeys(r.key.path for r in rows))
        if any(r.status == "running" for r in rows):  # renamed while a worker has it
            return True, "renamed while it was being corrected under its earlier name"
        new_keys: list[MovieKey] = []
        for name in names:
            renamed = _series_renamed(Path(name), obs.path, self.settings.watch_dir)
            keys = self._safe(lambda name=name, renamed=renamed: ledger.move(
                name, str(obs.path), size=obs.size, mtime_ns=obs.mtime_ns,
                metadata=renamed, inode=obs.inode, content=content))
            if keys is None:
                return True, _DB_DOWN
            new_keys += keys
            self._forget_name(name)
            stems = {(r.metadata or {}).get("stem") or movie_stem(Path(name))
                     for r in rows if r.key.path == name}
            for stem in stems:
                self._stems.moved(name, str(obs.path), stem)
        self._announce_moved(obs.path, new_keys)
        if self._policy.on_parameter_change != "keep" and self._done_under_other_parameters(
                ledger, obs.path):
            # corrected under other parameters (another release's reading conventions, a
            # changed setting): admitted now under its new name, as the start's
            # parameters_changed warning says, not at the next start
            self._log.info("movie_moved", movie=str(obs.path), moved_from=names,
                           status="pending", note="renamed; corrected before under other "
                                                  "parameters: corrected again")
            return False, None
        revived = [r for r in rows if r.status == "quarantined"
                   and (r.error or "").startswith(VANISHED)]
        if revived:
            self._log.info("movie_moved", movie=str(obs.path), moved_from=names,
                           status="pending",
                           note="renamed before a worker read it (quarantined then as "
                                "vanished): corrected under its new name")
            if self._arrived is not None:
                self._arrived(obs)
        else:
            self._log.info("movie_moved", movie=str(obs.path), moved_from=names,
                           status=rows[-1].status,
                           note="renamed after it was recorded: recorded under its new name "
                                "with its outputs as written, not corrected again")
        self._handled.add(ident)
        return True, None

    def _done_under_other_parameters(self, ledger: Any, path: Path) -> bool:
        """Whether the movie's rows, now under ``path``, are done only under parameters other
        than those it would be corrected with now (:func:`finished_under_other_parameters`)."""
        rows = self._safe(lambda: ledger.rows(path=str(path)), write=False)
        return bool(rows) and bool(finished_under_other_parameters(
            rows, self.settings.params, frame_mdoc_gain=self.settings.frame_mdoc_gain))

    def _forget_name(self, path: str) -> None:
        """Forget having handled any version under ``path`` (its rows moved away): a file
        that comes back to that name (a rename undone) is met, and moved back, again."""
        self._handled = {h for h in self._handled if h[0] != path}

    def _announce_moved(self, path: Path, keys: list[MovieKey]) -> None:
        """Tell the listeners of a moved movie's rows under its new name (done ones)."""
        if self._moved is None:
            return
        for key in keys:
            try:
                row = self._ledger().get(key)
            except sqlite3.Error:
                return
            if row is not None and row.status == "done":
                self._moved(MovieEvent(path, key, row.status, row.attempts,
                                       outputs=row.outputs, metadata=row.metadata))

    def _on_another_mount(self, ledger: Any, obs: Observation) -> list[Any]:
        """Rows of this file reached through another mount of its share (one NFS export
        mounted twice, the watched folder linking to the second mount): another device, the
        same inode number, size and mtime, and the same content fingerprint as recorded."""
        ino = obs.inode[1]
        found = [r for r in ledger.rows_of_inode_number(ino, obs.size, obs.mtime_ns)
                 if r.key.path != str(obs.path) and r.inode is not None
                 and r.inode != obs.inode and r.content is not None]
        if not found:
            return []
        content = content_fingerprint(obs.path)
        return [r for r in found if r.content == content]

    def _renamed_before_inodes(self, ledger: Any, obs: Observation) -> list[Any]:
        """Rows of a file that is gone from its name and that this one may be, renamed, whose
        inode does not tell: none recorded (an older version), or one the file no longer has
        (a remount, a share without stable inode numbers). The same file name, size and mtime,
        nothing at the old name any more, and only one such name."""
        found = []
        for row in ledger.rows_named(obs.path.name, obs.size, obs.mtime_ns):
            if row.key.path == str(obs.path) or row.key.size < 0:
                continue
            if os.path.lexists(row.key.path):
                continue
            found.append(row)
        if len({r.key.path for r in found}) > 1:
            return []  # more than one such file gone: which one this is cannot be told
        return found

    def adopt_complete(self, rows: list[Any]) -> set[MovieKey]:
        """Start-up: of these pending rows (those a crash left running, and any other), the
        ones whose complete outputs are on disk, written under the row's own metadata, are
        recorded done and announced as adopted, not corrected again: the daemon died after
        renaming them into place, before recording it, or the state database lost its last
        writes (power cut, damaged WAL). A row made pending to be redone (its tilt record
        moved) does not match its outputs' record, and is redone. Returns the keys adopted."""
        cfg = self.settings
        ledger = self._ledger()
        adopted: set[MovieKey] = set()
        for row in rows:
            if row.status != "pending":
                continue
            key = row.key
            movie = Path(key.path)
            stored = dict(row.metadata or {})
            out_dir = output_dir_for(movie, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir)
            outputs = find_adoptable_outputs(key, out_dir, stored.get("stem") or movie_stem(movie),
                                             row.content)
            if outputs is None:
                continue
            record = read_motion_record(Path(outputs["motion"])) or {}
            if not _written_under(record, stored.get("extra_record") or {}):
                continue
            timings = record.get("timings_s") or {}
            ledger.adopt(key, outputs=outputs, summary=summarise(record, timings),
                         timings=timings, metadata=stored)
            adopted.add(key)
            self._announce_adopted(movie, key, outputs, stored)
        return adopted

    def _announce_adopted(self, path: Path, key: MovieKey, outputs: dict[str, str],
                          stored: dict[str, Any]) -> None:
        """Tell the listeners (and resolver) of an adopted movie as of a corrected one."""
        if self._adopted is None:
            return
        record = read_motion_record(Path(outputs["motion"])) or {}
        self._adopted(MovieEvent(path, key, "done", 0, outputs=outputs, record=record,
                                 metadata=stored))

    def _with_own_gain(self, obs: Observation, meta: MovieMetadata) -> MovieMetadata:
        """``meta`` with the gain reference the movie's frame mdoc names, where no gain is
        configured (:mod:`daemon.intake.frame_gain`; it is named in the motion record as
        ``frame_mdoc_gain``), and the camera defect list named beside it unless ``--defects``
        is given. Named and not found, the movie waits for it up to the incomplete grace (a
        share may deliver it after the movie), then is quarantined with the reason (a defect
        list: corrected without it, with a warning). A movie without a frame mdoc in a folder
        whose movies took their gain from theirs waits for its frame mdoc as long, then is
        corrected without, with a warning."""
        cfg = self.settings
        if not frame_mdoc_gains_apply(cfg.params, cfg.frame_mdoc_gain):
            self._tell_defects_not_applied(obs.path, why_no_frame_mdoc_gain(
                cfg.params, cfg.frame_mdoc_gain) or "none is applied")
            return meta
        lookup = find_frame_mdoc_gain(obs.path)
        folder = str(obs.path.parent)
        waited = self._unchanged_for_s(obs) >= cfg.incomplete_grace_s
        if lookup.gain is not None:
            self._gain_folders.add(folder)
            gain, notes = lookup.gain, frame_mdoc_defects_notes(lookup, cfg.params)
            if cfg.params.gain.defects_path is not None:  # --defects wins
                gain = dataclasses.replace(gain, defects=None)
            elif lookup.defects_missing is not None:  # the frames are fine without it
                # done with this gain (with the list, deleted since, or without it after the
                # wait): its outputs stand, not corrected again without it nor waited for
                recorded = self._recorded_gain(obs, lookup.named,
                                               defects=(lookup.defects_named, None))
                if recorded is not None:
                    return dataclasses.replace(meta, gain=recorded)
                if not waited:
                    return dataclasses.replace(meta, wait_reason=lookup.defects_missing)
                self.report_once(str(obs.path), "movie_without_frame_mdoc_defects",
                                 f"{lookup.defects_missing} after {cfg.incomplete_grace_s:g} "
                                 "s: corrected without it", level="warning")
            return dataclasses.replace(meta, gain=gain, extra_record={
                **meta.extra_record,
                "frame_mdoc_gain": {**gain.to_json(), "turn": lookup.turn, **notes}})
        # done with a gain it names no more (its reference or frame mdoc deleted or left
        # behind since): its outputs stand, not corrected again without it
        recorded = self._recorded_gain(obs, lookup.named)
        if recorded is not None:
            return dataclasses.replace(meta, gain=recorded)
        if lookup.missing_reason is not None:
            if not waited:
                return dataclasses.replace(meta, wait_reason=lookup.missing_reason)
            return dataclasses.replace(meta, quarantine_reason=(
                f"{lookup.missing_reason} after {cfg.incomplete_grace_s:g} s: put it there and "
                "run motionwatch retry, or give --gain"))
        if lookup.defects_named is not None:  # gain-normalised frames with a list?
            self._tell_defects_not_applied(obs.path, "it names no gain reference")
        if not lookup.has_mdoc and folder in self._gain_folders:
            # a share may bring the frame mdoc after its movie: not corrected without its gain
            why = ("no frame mdoc yet; the movies before it here took their gain reference "
                   "from theirs")
            if not waited:
                return dataclasses.replace(meta, wait_reason=why)
            self.report_once(str(obs.path), "movie_without_frame_mdoc_gain",
                             f"{why}: after {cfg.incomplete_grace_s:g} s corrected without a "
                             "gain", level="warning")
        return meta

    def _tell_defects_not_applied(self, movie: Path, why: str) -> None:
        """Warn once per folder that its movies' frame mdocs name a camera defect list that is
        not applied (it goes with the frame mdoc's gain; ``why`` none is applied)."""
        line = self._unapplied_lists.line(movie, why)
        if line is not None:
            self.report_once(str(movie.parent), "frame_mdoc_defects_not_applied", line,
                             level="warning")

    def _recorded_gain(self, obs: Observation, named: str | None,
                       defects: tuple[str | None, ...] | None = None) -> MovieGain | None:
        """The own gain a done row of this file version was corrected with, when it is the file
        its frame mdoc names (by name; ``named`` None: it names none now) and, when
        ``defects`` is given, its defect list one of those names (None: without one), else
        None. Asked of the versions the state held at the start only."""
        if (str(obs.path), obs.size, obs.mtime_ns) not in self._recorded_versions():
            return None
        try:
            rows = self._ledger().rows(path=str(obs.path))
        except sqlite3.Error:
            return None
        for row in rows:
            gain = metadata_from_json(row.metadata).gain
            if (row.status == "done" and (row.key.size, row.key.mtime_ns) == (obs.size,
                                                                             obs.mtime_ns)
                    and gain is not None and named in (None, Path(gain.path).name)
                    and (defects is None or (gain.defects and Path(gain.defects).name)
                         in defects)):
                return gain
        return None

    def _short_of_frames(self, obs: Observation, verdict: Verdict, meta: MovieMetadata
                         ) -> str | None:
        """A wait reason while a movie has fewer frames than its mdoc says or, with no mdoc
        to say, than the movie admitted before it from its folder (a TIFF, EER or MRC whose
        writer paused between frames for longer than the settle time is a whole file of fewer
        frames; it was corrected as it stood, again at every pause, and for good if the writer
        died); after the incomplete grace the movie is corrected with the frames it has, with
        a warning. None: nothing to wait for."""
        expected, found = meta.expected_frames, verdict.n_frames
        # movies of one kind (an EER's raw frames are no MRC's frames) in one folder
        folder = f"{obs.path.parent}/*{obs.path.suffix.lower()}"
        said = "the mdoc says"
        held = self._held_short.setdefault(folder, {})
        # a version the state held at the start is no news, whatever came before it
        if not expected and found is not None and (
                str(obs.path), obs.size, obs.mtime_ns) not in self._recorded_versions():
            usual = self._folder_frames.get(folder)
            if usual is not None and self._given_up(self._folder_last.get(folder)):
                # the movie it came from failed (a 10,000-page file of 4 x 4 px): no measure
                usual = None
                self._folder_frames.pop(folder, None)
            suffix = obs.path.suffix.lower()
            if usual is not None and found < usual - _frames_slack(usual, suffix):
                held[str(obs.path)] = found
                if any(other != str(obs.path) and abs(n - found) <= _frames_slack(found, suffix)
                       for other, n in held.items()):
                    # two movies alike: a shorter exposure setting, not a paused writer
                    self.report_once(str(obs.path.parent), "folder_exposure_changed",
                                     f"movies of {found} frames after {usual}: taken as a "
                                     "new exposure setting")
                    self._folder_frames[folder] = found
                    self._folder_last[folder] = str(obs.path)
                else:
                    expected, said = usual, "the movie before it here had"
        if not expected or found is None or found >= expected:
            held.pop(str(obs.path), None)
            self._folder_seen(folder, found, str(obs.path))
            return None
        reason = f"{said} {expected} frames, the file has {found} so far"
        if self._unchanged_for_s(obs) < self.settings.incomplete_grace_s:
            self.report_once(str(obs.path), "movie_incomplete", reason)
            return reason
        self.report_once(str(obs.path), "movie_short_of_frames",
                         f"{reason} after {self.settings.incomplete_grace_s:g} s unchanged: "
                         f"corrected with its {found} frames", level="warning")
        held.pop(str(obs.path), None)
        self._folder_seen(folder, found, str(obs.path))
        return None

    def _folder_seen(self, folder: str, frames: int | None, movie: str) -> None:
        """Remember the frames of the movie admitted last from ``folder`` (bounded), and
        which movie it was."""
        if frames is None:
            return
        if len(self._folder_frames) >= _FOLDERS_REMEMBERED and folder not in self._folder_frames:
            self._folder_frames.clear()
            self._folder_last.clear()
            self._held_short.clear()
        self._folder_frames[folder] = frames
        self._folder_last[folder] = movie

    def _given_up(self, movie: str | None) -> bool:
        """Whether ``movie`` was refused for its content and never corrected (its frame count
        measures nothing: a file no movie is); one that timed out or met trouble outside it
        (retried) still counts."""
        if movie is None:
            return False
        try:
            rows = self._ledger().rows(path=movie)
        except sqlite3.Error:
            return False
        return any(r.status in ("failed", "quarantined")
                   and (r.error or "").startswith(_NOT_A_MOVIE_ERRORS) for r in rows) \
            and not any(r.status == "done" for r in rows)

    def _known_complete(self, obs: Observation) -> Verdict | None:
        """The verdict of a movie version this ledger already found complete (same path, size
        and mtime; any parameters): a restart does not re-read every corrected movie's last
        page. None when unknown, so the movie is validated."""
        try:
            rows = self._ledger().rows(path=str(obs.path))
        except sqlite3.Error:
            return None
        for row in rows:
            n_frames = (row.metadata or {}).get("n_frames")
            if ((row.key.size, row.key.mtime_ns) == (obs.size, obs.mtime_ns)
                    and row.status != "quarantined" and n_frames is not None):
                return Verdict("ready", "", int(n_frames))
        return None

    def _reject(self, obs: Observation, verdict: Verdict) -> str | None:
        """Quarantine a movie validation rejected (once: a restart finds its row); one that
        could not be read is looked at again once it reads."""
        ident = (str(obs.path), obs.size, obs.mtime_ns)
        if verdict.unreadable:
            denied = any(os.strerror(code) in verdict.reason for code in (errno.EACCES,
                                                                            errno.EPERM))
            self._unreadable[str(obs.path)] = (ident, self._clock() + (
                0.0 if denied or not os.access(obs.path, os.R_OK) else UNREADABLE_RETRY_S))
        key = MovieKey(str(obs.path), obs.size, obs.mtime_ns, self._fingerprint)
        ledger = self._ledger()
        try:
            known = ledger.get(key) is not None
        except sqlite3.Error as exc:
            self.report_once(str(obs.path), "ledger_read_failed", str(exc), level="error")
            return _DB_DOWN
        if not known:
            stored = metadata_to_json(StoredMetadata(n_frames=verdict.n_frames))
            if self._safe(lambda: ledger.add(key, status="quarantined", error=verdict.reason,
                                             metadata=stored, inode=obs.inode,
                                             content=content_fingerprint(obs.path))) is None:
                return _DB_DOWN
            self._log.error("movie_quarantined", movie=str(obs.path), reason=verdict.reason,
                            stage="validate", note=RETRY_NOTE)
            self._quarantined(MovieEvent(obs.path, key, "quarantined", 0, error=verdict.reason,
                                         metadata=stored))
        self._handled.add(ident)
        return None

    def stable_for_s(self, path: Path) -> float | None:
        return self._settler.stable_for_s(path)
