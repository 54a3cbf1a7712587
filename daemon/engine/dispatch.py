"""From the state database to the workers and back: ledger -> worker -> outputs -> ledger.

:class:`Dispatcher` gives pending movies to idle workers (oldest first), and records each outcome:
``done`` only after the worker renamed the outputs into place; a failure is retried after a
growing delay, then quarantined (a bad movie at once, a timed-out one after one failure less than
a crash). Environmental trouble is never the movie's fault: an error on the output side (full
disk, permission denied, vanished or replaced output folder) or a worker that cannot start pauses
all correction with a growing delay (:class:`~daemon.engine.faults.Pause`), without counting
against the movie, and the service lists the problem until a movie succeeds again (it stays
healthy: a restart would not mend a full disk).
A movie its worker could not find that the daemon, which still sees the watched folder, finds
gone or changed too was renamed or deleted, not hidden from the worker: it is quarantined as
vanished (a renamed one is corrected under its new name) and nothing is paused.

A movie a worker held while it died or was killed for another one (its outputs were being
written while the next movie was corrected) comes back ``interrupted``: it is pending again at
once, its attempt taken back, nothing counted against it.

Each movie's time limit scales with its size (:class:`~daemon.engine.policy.EnginePolicy`) and is
logged with ``movie_started``, when a worker takes the movie (on a cluster, a movie handed over
first waits in the scheduler's queue: ``movie_queued``). Counters change only once the ledger
has recorded the outcome: an outcome that could not be recorded is retried as it was, as soon
as the database takes writes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from correction.camera_defects import SUBAREA_FIT, SUBAREA_NOTE
from correction.io.dm import DM4_EXTRA_NEEDED
from correction.report import pixel_size_warning, unlisted_pixels_warning
from daemon.engine.faults import MAX_PAUSE_S, RETRY_NOTE, LedgerWrites, Pause
from daemon.engine.outputs import movie_stem, remove_partial_outputs, source_identity, summarise
from daemon.engine.policy import EnginePolicy
from daemon.events import (SOURCE_KEY, VANISHED, MovieEvent, MovieGain, MovieKey,
                           gain_in_force, movie_fingerprint, movie_params, output_dir_for)
from daemon.intake.frame_gain import relocated
from daemon.series.pixel_spacing import mdoc_pixel_size_warning
from daemon.settings.optics import OPTICS_KEY, optics_record_from
from daemon.state.codec import metadata_from_json
from daemon.work.workers import Outcome, Task

__all__ = ["Dispatcher", "DispatchSettings", "InFlight", "MAX_RETRY_DELAY_S", "REFERENCE_MISFITS_TO_STOP",
           "timeout_quarantine_after"]

MAX_RETRY_DELAY_S = 300.0
#: movies the configured references (gain, dark, defects) must fail to fit, with none corrected
#: since the start, before the service stops as misconfigured: a stray movie of another camera
#: is quarantined alone once any movie was corrected
REFERENCE_MISFITS_TO_STOP = 3
_CONFIG_FIX = ("fix --gain, --gain-rotate, --gain-flip, --dark, --defects, --pixel-size, "
               "--throw, --trunc, --bin or the EER grouping")


@dataclasses.dataclass(frozen=True, slots=True)
class InFlight:
    """A movie a worker has: its key, attempt number and stored metadata (row JSON)."""

    key: MovieKey
    attempt: int
    metadata: dict[str, Any]


#: outcomes only a worker that ran the task returns (a cancelled or lost one never started)
_RAN_ON_A_WORKER = ("done", "data", "config", "error", "superseded")
#: outcomes of a worker that died or was killed with the movie in hand
_WORKER_KILLED = ("crash", "timeout", "interrupted")


def _recorded_optics(options: dict[str, Any]) -> dict[str, Any]:
    """The microscope optics each motion record keeps (:mod:`daemon.settings.optics`: Cs and
    amplitude contrast, checked by :func:`~daemon.settings.config.load_config`, which gives
    every configuration both); nothing for a configuration built without them, or with values
    it got wrong (the hand-off then uses its own options for the movie)."""
    if "spherical_aberration" not in options and "amplitude_contrast" not in options:
        return {}
    try:
        return {OPTICS_KEY: optics_record_from(options)}
    except ValueError:
        return {}



@dataclasses.dataclass(frozen=True, slots=True)
class DispatchSettings:
    """What the dispatcher reads of the configuration (folders, parameters, limits; times in
    seconds) and the optics every motion record keeps (:func:`_recorded_optics`)."""

    watch_dir: Path
    out_dir: Path
    params: Any  # the correction.params.CorrectionParams movies are corrected under
    max_attempts: int
    retry_delay_s: float
    movie_timeout_s: float
    scratch_dir: Path | None
    optics: dict[str, Any]
    frame_mdoc_gain: bool = True  # without a configured gain, the one the frame mdoc names

    @classmethod
    def of(cls, config: Any) -> DispatchSettings:
        """The settings of a :class:`~daemon.settings.config.Config`."""
        return cls(config.watch_dir, config.out_dir, config.params, config.max_attempts,
                   config.retry_delay_s, config.movie_timeout_s, config.scratch_dir,
                   _recorded_optics(config.options), config.frame_mdoc_gain)


class Dispatcher:
    """Feeds the worker pool from the ledger and records what comes back.

    Parameters
    ----------
    settings : DispatchSettings
        What it reads of the configuration (:meth:`DispatchSettings.of`).
    ledger : callable
        Returns the open :class:`~daemon.state.ledger.Ledger`.
    pool : callable
        Returns the :class:`~daemon.work.workers.WorkerPool`.
    log : structlog-like logger
    finished : callable
        ``finished(method, event)``: a movie was recorded done (``"on_movie_done"``) or failed
        (``"on_movie_failed"``).
    wall_clock : callable
        Wall clock (s since the epoch), for retry times.
    writes : LedgerWrites
        Shared record of whether the state database takes writes (rate-limited log, health).
    policy : EnginePolicy, optional
        Time limits (default: the defaults).
    read_ahead : ReadAhead, optional
        Told of the movie next in line whenever every worker is busy, for executors whose
        workers read the files here (:mod:`daemon.work.readahead`).
    """

    def __init__(self, settings: DispatchSettings, *, ledger: Callable[[], Any],
                 pool: Callable[[], Any],
                 log: Any, finished: Callable[[str, MovieEvent], None],
                 wall_clock: Callable[[], float], writes: LedgerWrites,
                 policy: EnginePolicy | None = None, read_ahead: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._ledger = ledger
        self._pool = pool
        self._log = log
        self._finished = finished
        self._wall = wall_clock
        self._writes = writes
        self._policy = policy or EnginePolicy()
        self._read_ahead = read_ahead
        self.in_flight: dict[int, InFlight] = {}
        #: task id -> what ``movie_started`` will say, for tasks queued for a cluster's worker
        self._queued: dict[int, dict[str, Any]] = {}
        self._gain_warned = False
        self._pattern_warned = False
        self._fits_warned: set[str | None] = set()  # defect lists said fitted as a subarea
        self._advice_warned: set[str] = set()  # the kinds of alignment advice said
        self._gain_notes_warned: set[str] = set()  # gain notes of workers (GainCache) said
        self._dose_warned = False  # a dose far from the frames' counts said
        self._replaced_warned = False
        self._pixel_warned = False  # a pixel size given unlike the movie files' said
        self._mdoc_pixels_warned: set[tuple[float, float]] = set()  # (used, mdoc) pairs said
        self.unrecorded: list[Outcome] = []
        self._next_task = 0
        # monotonic: a wall clock stepped back (NTP mending a PC's clock) must not hold all
        # correction back for the length of the step
        self.pause = Pause(clock, first_s=max(settings.retry_delay_s, 1.0))
        # the longest a failed movie waits to be retried (s): a retry time further ahead was
        # set before the wall clock stepped back, and is due now
        self._retry_horizon_s = max(MAX_PAUSE_S, settings.retry_delay_s) + 60.0
        self._trouble_kind: str | None = None
        self._corrected = 0  # movies done since the start (the settings fit them)
        self._reference_misfits: dict[str, str] = {}  # movie -> why, while none was corrected
        self._first_misfit_seen = False  # a misfit among them that had not failed before
        #: movie -> movies corrected when trouble outside the movies last put it back
        self._put_back_at: dict[str, int] = {}
        #: set when the settings (references, pixel size) fit none of the first movies: the
        #: service stops with the configuration-error status
        self.config_error: str | None = None
        self.config_fix = _CONFIG_FIX  # what to do about it (one phrase)

    def _safe(self, action: Callable[[], Any], *, write: bool = True) -> Any:
        return self._writes.guard(action, write=write)

    def problem(self) -> str | None:
        """A health problem line while the output side or the workers fail, or outcomes wait
        to be recorded."""
        if self.unrecorded:
            return (f"state database cannot be written: {len(self.unrecorded)} outcome(s) "
                    f"waiting to be recorded")
        if self.pause.reason is None:
            return None
        what = ("workers cannot start" if self._trouble_kind == "unstarted"
                else "trouble outside the movies")
        if not self.pause.active:  # its wait is over: tried again (no movie done since)
            return f"{what} when last tried: {self.pause.reason} (trying again)"
        return f"{what}: {self.pause.reason} (correction paused, retrying)"

    def outside_trouble(self) -> bool:
        """True while correction is paused by trouble outside the daemon (a full disk, an
        output share, a lost Dask scheduler): it retries on its own, and a restart would not
        mend it."""
        return (not self.unrecorded and self.pause.reason is not None
                and self._trouble_kind != "unstarted")

    # --- ledger -> workers ----------------------------------------------------------------
    def dispatch(self) -> None:
        """Give pending movies to idle workers; with every worker busy, read the next one
        ahead."""
        pool = self._pool()
        if self.pause.active or self.unrecorded:
            return
        self._fill(pool)
        if pool.idle == 0 and self._read_ahead is not None \
                and getattr(pool, "reads_files_here", False):
            row = self._safe(lambda: self._ledger().next_pending(
                now=self._wall(), horizon_s=self._retry_horizon_s), write=False)
            if row is not None:
                self._read_ahead.hint(row.key.path)

    def _next(self) -> Any:
        """The movie to give a worker next: the oldest due; while trouble outside the movies
        has not passed (no success since the pause), a movie not yet put back is tried first,
        so one movie whose own output side fails (its folder not writable) is not retried at
        the end of every pause before every other movie, holding them all back."""
        def next_pending(pending_only: bool) -> Any:
            return self._safe(lambda: self._ledger().next_pending(
                now=self._wall(), horizon_s=self._retry_horizon_s, pending_only=pending_only),
                write=False)

        if self.pause.reason is not None:
            row = next_pending(True)
            if row is not None:
                return row
        return next_pending(False)

    def _fill(self, pool: Any) -> None:
        """Claim pending movies (oldest first) while a worker is idle."""
        cfg = self.settings
        while pool.idle > 0:
            row = self._next()
            if row is None:
                return
            key = row.key
            problem = _stale(row.key)
            if problem is not None:
                self._safe(lambda: self._ledger().mark_failed(key, problem, quarantine=True,
                                                              count=False))
                if problem == _CHANGED:  # a file still growing: its new version follows
                    self._log.info("movie_version_superseded", movie=key.path, reason=problem)
                else:
                    self._log.warning("movie_quarantined", movie=key.path, reason=problem,
                                      stage="dispatch")
                continue
            stored = metadata_from_json(row.metadata)
            own_gain = gain_in_force(stored.gain, cfg.params, cfg.frame_mdoc_gain)
            if movie_fingerprint(cfg.params, stored.dose, own_gain) != key.fingerprint:
                # waiting from a run with other parameters (e.g. another gain after a stop for
                # a misfitting one): the movie is admitted under these, never corrected twice
                if self._safe(lambda: self._ledger().forget(key) or True) is None:
                    return
                self._log.info("movie_superseded", movie=key.path,
                               note="waiting under other parameters; corrected under these")
                continue
            movie = Path(key.path)
            own_gain = None if own_gain is None else relocated(own_gain, movie)
            gone = [] if own_gain is None else [f for f in own_gain.files()
                                                  if not Path(f).is_file()]
            if gone:
                # gone since admission (deleted, or the movie moved alone): never corrected
                # without it, nor retried for ever as a trouble of the output side
                what = "gain reference" if gone[0] == own_gain.path else "camera defect list"
                problem = (f"the {what} its frame mdoc names, {gone[0]}, is gone since the "
                           "movie was admitted: put it back and run motionwatch retry")
                self._safe(lambda: self._ledger().mark_failed(key, problem, quarantine=True,
                                                              count=False))
                self._log.error("movie_quarantined", movie=key.path, reason=problem,
                                stage="dispatch")
                continue
            attempt = self._safe(lambda: self._ledger().claim(key))
            if attempt is None:
                return
            extra = {**stored.extra_record, SOURCE_KEY: source_identity(key, row.content),
                     **cfg.optics}
            if own_gain is not None:  # where it lies now, for the record (RELION's S.star)
                extra["frame_mdoc_gain"] = {**dict(extra.get("frame_mdoc_gain") or {}),
                                            **own_gain.to_json()}
            params = movie_params(cfg.params, stored.dose, own_gain)
            task_id = self._next_task
            self._next_task += 1
            out_dir = output_dir_for(movie, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir)
            limit_s = self._policy.time_limit_s(key.size, cfg.movie_timeout_s)
            self.in_flight[task_id] = InFlight(key, attempt, row.metadata)
            pool.submit(Task(task_id, movie, out_dir, cfg.out_dir, params,
                             stored.stem or movie_stem(movie),
                             extra, timeout_s=limit_s,
                             scratch_dir=cfg.scratch_dir))
            said = dict(movie=key.path, attempt=attempt, time_limit_s=round(limit_s, 1),
                        size=key.size, **dict(stored.log_context))
            if pool.starts_when_submitted:
                self._log.info("movie_started", **said)
            else:
                self._queued[task_id] = said
                self._log.info("movie_queued", **said)

    def note_starts(self) -> None:
        """Log ``movie_started`` for the queued movies a cluster's worker has taken since."""
        pool = self._pool()
        for task_id, worker in pool.started() if pool is not None else []:
            said = self._queued.pop(task_id, None)
            if said is not None:
                self._log.info("movie_started", **said, worker=worker)

    def abandon(self) -> None:
        """Second signal: give the movies in hand back to the ledger (redone at next start)."""
        pool = self._pool()
        for task in pool.abandon() if pool is not None else []:
            entry = self._give_back(task)
            if entry is None:
                continue
            if pool.abandon_stops_workers:  # killed, perhaps writing: no temporaries left
                remove_partial_outputs(task.out_dir, task.stem or movie_stem(task.movie_path))
            self._log.warning("movie_abandoned", movie=entry.key.path,
                              note="second signal: stopped at once; redone at next start")

    def withdraw_unstarted(self) -> None:
        """The service stops: the movies no worker has started (queued on a Dask cluster) go
        back to the ledger untouched, corrected at the next start; those in hand finish."""
        withdraw = getattr(self._pool(), "withdraw_unstarted", None)
        for task in withdraw() if withdraw is not None else []:
            entry = self._give_back(task)
            if entry is not None:
                self._log.info("movie_withdrawn", movie=entry.key.path,
                               note="no worker had started it when the daemon began to stop; "
                                    "corrected at the next start")

    def _give_back(self, task: Any) -> InFlight | None:
        """A task taken back from the workers: its movie pending again in the ledger, its
        attempt undone; returns what was in flight (None: not this dispatcher's)."""
        self._queued.pop(task.task_id, None)
        entry = self.in_flight.pop(task.task_id, None)
        if entry is not None:
            self._safe(lambda: self._ledger().release(entry.key))
        return entry

    def retry_unrecorded(self) -> None:
        """Record outcomes whose ledger write failed earlier."""
        pending, self.unrecorded = self.unrecorded, []
        for outcome in pending:
            self.record(outcome)

    # --- workers -> ledger -> listeners ---------------------------------------------------
    def record(self, outcome: Outcome) -> None:
        """Record one outcome in the ledger, then tell the listeners."""
        cfg = self.settings
        self.note_starts()  # its start first, when the outcome came with it
        said = self._queued.pop(outcome.task_id, None)
        if said is not None and outcome.kind in _RAN_ON_A_WORKER:  # its start said late
            self._log.info("movie_started", **said, worker=None)
        entry = self.in_flight.get(outcome.task_id)
        if entry is None:
            return
        key, attempt, meta = entry.key, entry.attempt, entry.metadata
        log = self._log.bind(movie=key.path, **dict(meta.get("log_context") or {}))
        if outcome.kind in _WORKER_KILLED:  # it may have died writing: no half set left behind
            movie = Path(key.path)
            remove_partial_outputs(
                output_dir_for(movie, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir),
                metadata_from_json(meta).stem or movie_stem(movie))
        ledger = self._ledger()
        try:
            if outcome.ok:
                ledger.mark_done(key, outputs=outcome.outputs, timings=outcome.timings_s,
                                 summary=summarise(outcome.record, outcome.timings_s))
                self._writes.succeeded()
                if self.pause.reason is not None:
                    log.warning("correction_resumed", previous_problem=self.pause.reason)
                self.pause.cleared()
                log.info("movie_done", attempt=attempt, drift=outcome.record.get("drift"),
                         timings_s={k: round(float(v), 3) for k, v in outcome.timings_s.items()},
                         frames=outcome.record.get("frames"), outputs=dict(outcome.outputs))
                self._check_gain_orientation(outcome.record, log)
                self._check_detector_pattern(outcome.record, log)
                self._check_defect_list_fit(outcome.record, log)
                self._check_replaced_pixels(outcome.record, log)
                self._check_alignment_advice(outcome.record, log)
                self._check_gain_note(outcome.record, log)
                self._check_dose_count(outcome.record, log)
                self._check_pixel_size(outcome.record, log)
                self._check_mdoc_pixel_size(outcome.record, log)
                alignment = outcome.record.get("alignment") or {}
                if alignment.get("supported") is False:  # each such movie is news
                    log.warning("movie_not_aligned", reason=alignment.get("note"))
                self._corrected += 1
                self._put_back_at.pop(key.path, None)
                self._reference_misfits.clear()
                self._first_misfit_seen = False
                self.in_flight.pop(outcome.task_id)
                self._finished("on_movie_done", MovieEvent(
                    Path(key.path), key, "done", attempt, outcome.outputs, outcome.record,
                    outcome.timings_s, None, meta))
                return
            if outcome.kind == "superseded":  # another version took its name: that one's
                ledger.mark_failed(key, outcome.error or outcome.kind, quarantine=True,
                                   count=False)
                self._writes.succeeded()
                log.info("movie_version_superseded", reason=outcome.error, attempt=attempt)
                self.in_flight.pop(outcome.task_id)
                return
            if outcome.kind == "interrupted":  # lost with its worker for another movie
                ledger.release(key)
                self._writes.succeeded()
                log.warning("movie_interrupted", reason=outcome.error, attempt=attempt,
                            note="the worker was lost for another movie; redone at once, "
                                 "not counted against this one")
                self.in_flight.pop(outcome.task_id)
                return
            status = self._record_failure(
                ledger, key, attempt, outcome, log,
                own_gain=_own_gain_misfit(outcome, metadata_from_json(meta).gain))
            self._writes.succeeded()
        except sqlite3.Error as exc:
            self._writes.failed(exc, movie=key.path)
            self.unrecorded.append(outcome)
            return
        self.in_flight.pop(outcome.task_id)
        self._finished("on_movie_failed", MovieEvent(Path(key.path), key, status, attempt,
                                                     timings_s=outcome.timings_s,
                                                     error=outcome.error, metadata=meta))

    def _check_gain_orientation(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run when a movie's raw sum says another gain orientation, or the
        gain's reciprocal, fits clearly better than the gain as configured
        (:mod:`correction.gain_orientation`)."""
        check = record.get("gain_orientation") or {}
        inverted = check.get("inverted")
        if not (check.get("clearly_better") or inverted) or self._gain_warned:
            return
        self._gain_warned = True
        fit = inverted or check.get("best") or {}
        flags = f"--gain-rotate {fit.get('rot_gain')} --gain-flip {fit.get('flip_gain')}"
        if inverted:  # the file as a multiplier, if it was taken as a count image (eer_gain)
            counts = (record.get("references") or {}).get("gain_applied_as") == "reciprocal"
            flags = (f"the gain file as a multiplier (eer_gain multiplicative), {flags}"
                     if counts else f"the reciprocal of the gain file, {flags}")
        log.warning("gain_orientation_suspect", reason=check.get("message"), fits=flags,
                    note="the flags mean MotionCor2's -RotGain/-FlipGain, of an EER .gain in "
                         "the TIFF's row order (MotionCor3 reverses its rows first: its "
                         "-FlipGain differs); said once per run")

    def _check_detector_pattern(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run when a movie's frames share a pattern fixed to the detector (a
        missing or unfitting gain reference: :mod:`correction.detector_pattern`)."""
        check = record.get("detector_pattern") or {}
        if not check.get("detected") or self._pattern_warned:
            return
        self._pattern_warned = True
        log.warning("detector_pattern", reason=check.get("message"),
                    note="said once per run; each movie's record has its detector_pattern")

    def _check_defect_list_fit(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run and defect list when SerialEM's camera defect list was fitted
        onto a movie's frames as a subarea of its camera (``correct`` says it as a warning
        line; the workers of ``watch`` keep the library's warnings quiet)."""
        defects = (record.get("references") or {}).get("defects") or {}
        fitted = defects.get("fitted") or ""
        if SUBAREA_FIT not in fitted or defects.get("path") in self._fits_warned:
            return
        self._fits_warned.add(defects.get("path"))
        log.warning("defect_list_subarea", reason=f"{Path(defects.get('path', '')).name}: "
                                                  f"{fitted}: {SUBAREA_NOTE}",
                    movie=record.get("movie"), note="said once per run and list")

    def _check_dose_count(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run when a movie's frames count a dose far from the one it was given
        (:mod:`correction.dose_counts`)."""
        mismatch = ((record.get("dose") or {}).get("counted") or {}).get("mismatch")
        if not mismatch or self._dose_warned:
            return
        self._dose_warned = True
        log.warning("dose_mismatch", reason=mismatch, movie=record.get("movie"),
                    note="said once per run; each movie's record has dose.counted")

    def _check_pixel_size(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run when the pixel size given is not the movie file's
        (:func:`correction.report.pixel_size_warning`)."""
        warning = pixel_size_warning(record)
        if warning is None or self._pixel_warned:
            return
        self._pixel_warned = True
        log.warning("pixel_size_differs_from_file", reason=warning, movie=record.get("movie"),
                    note="said once per run; each movie's record has movie_pixel_size")

    def _check_mdoc_pixel_size(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run and pair of values when a tilt's pixel size is no binning of its
        mdoc's (:func:`daemon.series.pixel_spacing.mdoc_pixel_size_warning`): a magnification
        changed under a ``--pixel-size`` given for the last."""
        found = mdoc_pixel_size_warning(record)
        if found is None or found[0] in self._mdoc_pixels_warned:
            return
        self._mdoc_pixels_warned.add(found[0])
        log.warning("pixel_size_differs_from_mdoc", reason=found[1], movie=record.get("movie"),
                    series=(record.get("tilt") or {}).get("series"),
                    note="said once per run for these two values; each tilt's record has "
                         "movie_pixel_size and tilt.pixel_spacing_A")

    def _check_alignment_advice(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run and kind when a movie's alignment the data may not support (too
        few electrons per frame for single frames, no convergence:
        :func:`correction.pipeline.alignment_advice`)."""
        for line in (record.get("alignment") or {}).get("advice") or ():
            kind = "electrons" if "electrons per frame" in str(line) else str(line).split(":")[0]
            if kind in self._advice_warned:
                continue
            self._advice_warned.add(kind)
            log.warning("alignment_advice", reason=line, movie=record.get("movie"),
                        note="said once per run; each movie's record has alignment.advice")

    def _check_gain_note(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per note when a movie was corrected with a gain, dark or defect content
        read before because its file was being written anew, or cannot be used as written
        (:class:`daemon.work.workers.GainCache`: the record's ``gain_reference_note``)."""
        note = record.get("gain_reference_note")
        if note and note not in self._gain_notes_warned:
            self._gain_notes_warned.add(str(note))
            log.warning("gain_reference_kept", reason=note, movie=record.get("movie"),
                        note="said once per file version; each such movie's record has "
                             "gain_reference_note")

    def _check_replaced_pixels(self, record: dict[str, Any], log: Any) -> None:
        """Warn once per run when a movie replaced more pixels than its record lists (RELION's
        polishing masks only those listed: :class:`correction.report.ReplacedPixels`)."""
        warning = unlisted_pixels_warning(record)
        if warning is None or self._replaced_warned:
            return
        self._replaced_warned = True
        log.warning("replaced_pixels_not_all_listed", reason=warning,
                    note="said once per run; each movie's record has its replaced_pixels")

    def _reference_misfit(self, ledger: Any, key: MovieKey, outcome: Outcome, log: Any) -> str:
        """The configured references do not fit a movie, or it has no pixel size and none is
        configured, or the frames and pixels the settings select leave too little of it
        (``FrameSelectionError``), and no movie was corrected yet (or, corrected movies or not, this
        installation cannot read its DM4 reference: the dm4 extra is missing): it is retried
        like a failed movie
        (quarantined only after ``max_attempts``), and once the settings fit none of
        ``REFERENCE_MISFITS_TO_STOP`` movies the service is to stop as misconfigured (the
        movies stay failed, retried at the restart with the right settings). At a restart the
        failed movies are retried first: while other movies wait they alone never stop it, so
        three stray files (no pixel size: a test exposure) cannot hold back the movies that fit
        at every restart; a misconfiguration still stops it at the first new movie that does
        not fit either, or once no other movie waits."""
        row = ledger.get(key)
        failures = (row.failures if row else 0) + 1
        status = ledger.mark_failed(key, outcome.error or outcome.kind,
                                    quarantine=failures >= self.settings.max_attempts,
                                    retry_delay_s=self.settings.retry_delay_s)
        self._reference_misfits[key.path] = outcome.error or outcome.kind
        self._first_misfit_seen |= failures == 1
        unreadable = DM4_EXTRA_NEEDED in (outcome.error or "")
        log.error("movie_reference_misfit", reason=outcome.error, failures=failures,
                  note="this installation cannot read its DM4 gain reference" if unreadable
                  else "the configured gain, dark or defect reference does not fit this movie "
                       "(or it has no pixel size and --pixel-size is not given, or --throw, "
                       "--trunc, --bin or the EER grouping leave too little of it), and no "
                       "movie was corrected with the settings yet")
        if len(self._reference_misfits) >= REFERENCE_MISFITS_TO_STOP \
                and self.config_error is None \
                and (self._first_misfit_seen or not self._other_movies_waiting(ledger)):
            unreadable = [e for e in self._reference_misfits.values() if DM4_EXTRA_NEEDED in e]
            what = ("this installation cannot read the gain references" if unreadable else
                    "the configured references, pixel size or frame selection fit none")
            first = "" if self._corrected else "the first "
            self.config_error = (f"{what} of {first}{len(self._reference_misfits)} movies: "
                                 f"{unreadable[0] if unreadable else outcome.error}")
            self.config_fix = ("install the dm4 extra (pip install -e '.[dm4]' in the checkout)"
                               if unreadable else _CONFIG_FIX)
        return status

    @staticmethod
    def _other_movies_waiting(ledger: Any) -> bool:
        """Whether movies wait to be corrected, or are being corrected, beside the misfits
        (which are failed): one of them may fit the settings."""
        counts = ledger.movie_counts()
        return counts.get("pending", 0) + counts.get("running", 0) > 0

    def _record_failure(self, ledger: Any, key: MovieKey, attempt: int, outcome: Outcome,
                        log: Any, *, own_gain: bool = False) -> str:
        """Record a failed attempt; ``own_gain``: the gain reference its frame mdoc names does
        not fit the movie or does not read (:func:`_own_gain_misfit`): the movie's fault
        (quarantined), never the settings' (no stop as misconfigured)."""
        cfg = self.settings
        moved = self._moved_away(key) if outcome.kind == "environment" else None
        if moved is not None:
            status = ledger.mark_failed(key, moved, quarantine=True, count=False, started=False)
            log.warning("movie_quarantined", reason=moved, stage="worker",
                        note="gone from its name before the worker read it: a renamed movie "
                             "is corrected under its new name")
            return status
        # permission refused again on its output side after other movies were corrected since
        # it was put back (its output folder alone not writable: made by another account): its
        # own trouble, counted against it like any failure, so it cannot pause all correction
        # for ever; a full disk, a read-only share, a worker that cannot see the movie are
        # never one movie's
        own = (outcome.kind == "environment" and _permission_refused(outcome.error)
               and self._put_back_at.get(key.path, self._corrected) < self._corrected)
        if outcome.kind in ("environment", "unstarted"):
            self._put_back_at[key.path] = self._corrected
        if outcome.kind in ("environment", "unstarted") and not own:
            delay = self.pause.next_delay_s()
            # its own retry time too: another movie's success clears the pause, and a trouble
            # of this movie's output folder alone would have it retried after each (the next
            # process, whose pause is fresh, retries it at once: Ledger.put_back_due_now)
            status = ledger.mark_failed(key, outcome.error or outcome.kind, quarantine=False,
                                        count=False, retry_delay_s=delay,
                                        started=outcome.kind != "unstarted")
            pausing = self.pause.reason is None
            self.pause.failed(outcome.error or outcome.kind, delay)  # only once recorded
            self._trouble_kind = outcome.kind
            note = ("no worker process could start; not counted against the movie"
                    if outcome.kind == "unstarted" else
                    "trouble outside the movie (the output side: disk, permissions, folder; "
                    "a worker that cannot see the session: a cluster's path_map or mounts; a "
                    "lost Dask scheduler); not counted against the movie; all correction paused")
            if pausing:  # the error, once; each movie put back is a warning
                log.error("correction_paused", reason=outcome.error, note=note)
            log.warning("movie_retry_later", reason=outcome.error, retry_in_s=round(delay, 1),
                        note=note)
            return status
        if outcome.kind == "config" and not own_gain and (
                not self._corrected or DM4_EXTRA_NEEDED in (outcome.error or "")):
            # an installation that cannot read DM4 references fails every such movie alike,
            # whatever was corrected before (a gain-normalised test exposure)
            return self._reference_misfit(ledger, key, outcome, log)
        row = ledger.get(key)
        failures = (row.failures if row else 0) + 1
        limit = (timeout_quarantine_after(cfg.max_attempts) if outcome.kind == "timeout"
                 else cfg.max_attempts)
        # references that fit other movies of this run: this movie is the odd one
        quarantine = outcome.kind in ("data", "config") or failures >= limit
        delay = min(MAX_RETRY_DELAY_S, cfg.retry_delay_s * 2 ** (failures - 1))
        status = ledger.mark_failed(key, outcome.error or outcome.kind, quarantine=quarantine,
                                    retry_delay_s=delay)
        if quarantine:
            self._put_back_at.pop(key.path, None)
            log.error("movie_quarantined", reason=outcome.error, kind=outcome.kind,
                      attempt=attempt, failures=failures, note=RETRY_NOTE)
        else:
            extra = {"note": "its output side failed again while other movies were "
                             "corrected: its own trouble, counted against it"} \
                if outcome.kind == "environment" else {}
            log.warning("movie_failed", reason=outcome.error, kind=outcome.kind,
                        attempt=attempt, failures=failures, retry_in_s=delay, **extra)
        return status

    def _moved_away(self, key: MovieKey) -> str | None:
        """Why a movie whose worker could not see it is the movie's own doing: gone from its
        name, or changed, while the daemon still sees the watched folder (renamed or deleted
        there, not a share or mount the worker lacks); None otherwise."""
        problem = _stale(key)
        if problem is None or problem.startswith("cannot stat"):
            return None
        return problem if self.settings.watch_dir.is_dir() else None


def _own_gain_misfit(outcome: Outcome, gain: MovieGain | None) -> bool:
    """A reference failure (``config``) of the movie's own gain file or defect list (named
    first in the error, by its file name: it may have moved with its folder), not of a
    configured dark or defect file, a missing pixel size, or an installation without the
    ``dm4`` extra (the settings' or the machine's, met by every movie alike)."""
    if gain is None or outcome.kind != "config" or not outcome.error:
        return False
    # "[ErrorType: ]/path/to/file: reason", the folders' names may hold ": " themselves
    names = "|".join(re.escape(Path(f).name) for f in gain.files())
    named = re.search(rf"(^|[/\\ ])({names}): ", outcome.error)
    return named is not None and DM4_EXTRA_NEEDED not in outcome.error


def timeout_quarantine_after(max_attempts: int) -> int:
    """Failures after which a movie that keeps timing out is quarantined: one fewer than for a
    crash (at least 1), since every timeout holds a worker for the whole time limit."""
    return max(1, max_attempts - 1)


def _permission_refused(error: str | None) -> bool:
    """Whether a worker's error is a permission refused (a folder another account made), the
    one trouble outside the movies that may be one movie's own."""
    return "Permission denied" in (error or "") or "Operation not permitted" in (error or "")


def _stale(key: MovieKey) -> str | None:
    """Why a pending movie can no longer be corrected as recorded (gone or changed), or None."""
    try:
        st = os.stat(key.path)
    except FileNotFoundError:
        return VANISHED
    except OSError as exc:
        return f"cannot stat movie: {exc.strerror or exc}"
    if (st.st_size, st.st_mtime_ns) != (key.size, key.mtime_ns):
        return _CHANGED
    return None


_CHANGED = "movie file changed before correction (the new version is handled separately)"
