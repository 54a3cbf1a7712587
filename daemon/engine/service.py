"""The engine: the watch daemon's main loop, its lifecycle and its signals.

:class:`Service` wires the parts and nothing else: discovery (:mod:`daemon.intake.discover`) ->
:class:`~daemon.engine.admission.Admission` (settle, validate, metadata, ledger) ->
:class:`~daemon.engine.dispatch.Dispatcher` (ledger -> workers -> ledger) -> listeners
(:class:`~daemon.events.ServiceListener`: the feed, systemd notify) and the metadata resolver
(:class:`~daemon.events.MetadataResolver`, given a narrow
:class:`~daemon.events.ResolverContext`). The parts import the contract (:mod:`daemon.events`),
never each other's engine.

Movies already in the folder (the backlog) are corrected first, in acquisition order (file
mtime), then each new movie once its size and mtime have held for the settle time and its format
says it is complete. SIGTERM or Ctrl-C finishes the movie in hand and exits 0; SIGHUP does the
same and exits 75 so that the supervisor restarts it with its configuration read afresh; a second
signal exits at once (the movie in hand is redone at the next start).

Faults of the environment never stop it and are never blamed on a movie: a corrupt state
database is moved aside and rebuilt by adopting the outputs on disk; a database that cannot be
written, an output side that fails, or workers that cannot start pause correction and make the
service unhealthy (heartbeat, ``motionwatch status``, the feed, systemd STATUS) until they recover.
The output folder and the state folder are locked with ``flock`` on the folders themselves
(:mod:`daemon.engine.locks`).
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon import __version__, exitcodes
from daemon.engine.admission import Admission, AdmissionSettings
from daemon.engine.dispatch import Dispatcher, DispatchSettings
from daemon.engine.faults import LedgerWrites
from daemon.engine.locks import LOCK_NAME, FolderLocks
from daemon.engine.outputs import clean_temporary_outputs
from daemon.engine.ownership import other_watch_folder, respelled_from, served_folders
from daemon.engine.pace import MAX_BEHIND_MIN, Pace, PaceMeter
from daemon.engine.policy import EnginePolicy, parameter_snapshot, report_parameter_change
from daemon.engine.reference_change import rewritten_references
from daemon.engine.signals import StopSignals
from daemon.events import (Health, Heartbeat, MetadataResolver, MovieEvent, MovieKey,
                           NoMetadata, Observation, ResolverContext, SeriesEvent, ServiceInfo,
                           ServiceListener)
from daemon.intake.discover import LISTING_STILL_S, Discovery
from daemon.settings.config import Config, ConfigError, Unreachable
from daemon.state.ledger import DB_NAME, Ledger, open_or_rebuild
from daemon.state.newest import NewestRows
from daemon.system.logs import get_logger
from daemon.work.executor import build_executor
from daemon.work.jobs import JobRunner
from daemon.work.readahead import ReadAhead
from daemon.work.workers import DEFAULT_RUNNER, WorkerPool

__all__ = ["Service", "LOCK_NAME", "EVENT_SCAN_GAP_FACTOR"]

#: after an event, the next rescan waits at least this many times the last scan's length
#: from its end: scanning then takes at most a quarter of the main loop, however many events
EVENT_SCAN_GAP_FACTOR = 3.0


def _this_process() -> dict[str, Any]:
    """The service state naming this process (``motionwatch status`` finds it by them)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


class Service:
    """The watch daemon.

    Parameters
    ----------
    config : Config
    listeners : sequence of ServiceListener
        Event receivers (publisher, systemd notify).
    resolver : MetadataResolver, optional
        Per-movie metadata (default :class:`~daemon.events.NoMetadata`).
    runner : str
        ``"module:function"`` the workers call (default ``correction.pipeline:prepare_movie``).
    clock, wall_clock : callable
        Monotonic and wall clocks (s).
    """

    def __init__(self, config: Config, *, listeners: Sequence[ServiceListener] = (),
                 serving: Mapping[str, str] | None = None,
                 resolver: MetadataResolver | None = None, runner: str = DEFAULT_RUNNER,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, logger: Any = None) -> None:
        self.config = config
        self._listeners = list(listeners)
        # where this run serves its readers (``feed``: the bound ZeroMQ endpoint, ``dashboard``:
        # its URL), for ``motionwatch status``: with ``tcp://...:*`` the port is known only here
        self._serving = dict(serving or {})
        self._resolver: MetadataResolver = resolver or NoMetadata()
        self._runner = runner
        self._clock = clock
        self._wall = wall_clock
        self._log = logger if logger is not None else get_logger()
        self._signals = StopSignals()
        self._series_events: list[SeriesEvent] = []
        self._out_ok = True
        # the watch folder's real path at start (a ``current`` link re-pointed while the
        # service runs would bring the next session's movies into this output folder)
        self._watch_real = os.path.realpath(config.watch_dir)
        self._stop_problem: str | None = None  # a configuration problem met while running
        #: the configuration error :meth:`run` returned 78 (or 69) for, for the command to say
        self.config_error: ConfigError | None = None
        self._cluster_problem_said: str | None = None  # the last one logged
        self._started_s = clock()
        self._last_tick_s = clock()
        self._last_scan_s: float | None = None
        self._scan_took_s = 0.0  # the last scan's length, discovery and admission (seconds)
        self._idle_since: float | None = None
        self._recovered = 0
        self._running_at_crash: list[MovieKey] = []
        self._previous_parameters: Any = None  # the last start's (policy.parameter_snapshot)
        self._previous_start_wall: float | None = None  # when the last start began (wall, s)
        # movies recorded before the listeners heard on_ready (adopted at start-up, quarantined
        # in the first scan): told after it, so a feed names their outputs relative to its
        # output folder and shows each once (on_ready restores the state database's movies)
        self._ready = False
        self._before_ready: list[tuple[str, MovieEvent, bool]] = []
        self._writes = LedgerWrites(self._log, clock)
        self._lock_problem: str | None = None
        try:
            self._policy, self._policy_error = EnginePolicy.from_options(config.options), None
        except (TypeError, ValueError) as exc:
            self._policy, self._policy_error = EnginePolicy(), str(exc)
        self.ledger: Ledger | None = None
        self.discovery: Discovery | None = None
        self.pool: WorkerPool | None = None
        self._jobs = JobRunner()
        # the next movie into the page cache while the (local) workers are busy
        self._read_ahead = ReadAhead() if config.read_ahead else None
        self._pace = PaceMeter(wall_clock())  # movies acquired vs corrected per minute
        self._keeping_up: bool | None = None  # the pace verdict last logged
        self._keeping_up_from: float | None = None  # since when it keeps up again (clock, s)
        self._on_disk_at_start: frozenset[Path] | None = None  # the start-up scan's files
        self.admission = Admission(AdmissionSettings.of(config), ledger=lambda: self.ledger,
                                   resolver=self._resolver,
                                   log=self._log, clock=clock, writes=self._writes,
                                   policy=self._policy,
                                   arrived=self._arrived,
                                   quarantined=lambda e: self._finished("on_movie_failed", e),
                                   adopted=lambda e: self._finished("on_movie_done", e,
                                                                    corrected=False),
                                   moved=lambda e: self._notify("on_movie_moved", e))
        self.dispatcher = Dispatcher(DispatchSettings.of(config), ledger=lambda: self.ledger,
                                     pool=lambda: self.pool,
                                     log=self._log, finished=self._finished, wall_clock=wall_clock,
                                     clock=clock,
                                     writes=self._writes, policy=self._policy,
                                     read_ahead=self._read_ahead)
        self._locks = FolderLocks(config.out_dir, config.state_dir)

    # --- listeners ------------------------------------------------------------------------
    def add_listener(self, listener: ServiceListener) -> None:
        self._listeners.append(listener)

    def _notify(self, method: str, *args: Any) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a listener must not stop the service
                self._log.error("listener_failed", listener=type(listener).__name__,
                                method=method, error=f"{type(exc).__name__}: {exc}")

    def _finished(self, method: str, event: MovieEvent, *, corrected: bool = True) -> None:
        """A movie was recorded: the listeners hear it, then the resolver (whose series events
        follow, in order, after it). ``corrected=False``: done by adopting outputs found on
        disk (not counted in the pace)."""
        if not self._ready:
            self._before_ready.append((method, event, corrected))
            return
        if method == "on_movie_done" and corrected:
            self._pace.corrected(self._wall())
        self._notify(method, event)
        try:
            self._resolver.movie_finished(event)
        except Exception as exc:  # noqa: BLE001
            self._log.error("resolver_failed", method="movie_finished",
                            error=f"{type(exc).__name__}: {exc}")
        self._flush_series_events()

    def _flush_series_events(self) -> None:
        events = list(self._series_events)
        self._series_events.clear()  # in place: the resolver's emit appends to this list
        for event in events:
            self._notify("on_series_event", event)

    # --- stopping -----------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """First call: drain; second: stop at once. Thread-safe (sets Events, wakes the loop)."""
        self._signals.request_stop(reason)

    def wake(self) -> None:
        """Wake the main loop (thread-safe; used by discovery events)."""
        self._signals.wake()

    # --- health ---------------------------------------------------------------------------
    def health(self) -> Health:
        """Is the service doing its job? (loop turning, scans happening, output folder present;
        ``ok`` also while correction is paused by trouble outside it, which is listed).

        Safe to call from another thread (it only reads): an sd_notify watchdog thread can
        ping while ``service.health().ok``.
        """
        cfg = self.config
        now = self._clock()
        notes: list[str] = []
        # (problem, outside the daemon?): trouble outside it (a full disk, an output share, a
        # lost Dask scheduler, a watched share unmounted) is listed, but the daemon itself is
        # well and the watchdog keeps pinging; systemd restarting it would not mend it, and
        # after 5 restarts in 10 min would leave it stopped for the night
        listed: list[tuple[str, bool]] = []

        def problem(line: str | None, *, outside: bool) -> None:
            if line is not None:
                listed.append((line, outside))

        # the loop never waits on a movie (workers are processes): it turns every scan/heartbeat
        if now - self._last_tick_s > max(60.0, 10 * cfg.scan_interval_s, 3 * cfg.heartbeat_s):
            problem(f"main loop stalled for {now - self._last_tick_s:.0f} s", outside=False)
        if self._last_scan_s is not None and now - self._last_scan_s > max(
                60.0, 10 * cfg.scan_interval_s):
            problem(f"no scan for {now - self._last_scan_s:.0f} s", outside=False)
        if not self._out_ok:
            problem(self._lock_problem or f"output folder {cfg.out_dir} missing or unusable",
                    outside=False)
        # the state database's disk full or refusing writes (pings stopped, and systemd killed
        # and restarted it on the full disk every 2.5 min)
        problem(self._writes.problem(), outside=True)
        # a movie's trouble outside it, or outcomes the state database refuses to record
        trouble_outside = self.dispatcher.outside_trouble()
        problem(self.dispatcher.problem(),
                outside=trouble_outside or bool(self.dispatcher.unrecorded))
        if self.pool is not None and self.pool.alive() < cfg.workers:
            notes.append(f"{cfg.workers - self.pool.alive()} worker(s) being replaced")
        if self.discovery is not None and not self.discovery.uses_events:
            notes.append(f"discovery by rescans only: {self.discovery.state().reason}")
        # the metadata resolver failing on every scan (a bug): nothing is admitted (a restart
        # would meet the same files)
        problem(self.admission.resolver_problem, outside=True)
        problem(self.admission.watch_problem, outside=True)  # a restart finds no share
        problem(self.admission.folders_problem, outside=True)  # a grid's permissions
        problem(self._resolver.problem(), outside=True)  # stacks waiting on a full disk
        if not trouble_outside:  # a cluster that does not answer, also before any movie
            problem(self._cluster_problem(), outside=True)
        ok = all(outside for _, outside in listed)
        return Health(ok, tuple(line for line, _ in listed), tuple(notes))

    def _cluster_problem(self) -> str | None:
        """The executor's own problem line (a Dask scheduler that does not answer), or None."""
        problem = getattr(self.pool, "problem", None)
        return problem() if callable(problem) else None

    # --- lifecycle ------------------------------------------------------------------------
    def _open_ledger(self, *, check_ownership: bool = True) -> None:
        """Open the state database (``check_ownership``: refuse an output folder that serves
        another watch folder; a database made anew where the old one vanished holds none)."""
        path = self.config.state_dir / DB_NAME
        try:
            self.ledger, moved, reason = open_or_rebuild(path, clock=self._wall)
        except (sqlite3.Error, OSError) as exc:
            text = " ".join(str(exc).split())
            if _disk_trouble(exc):  # mended by the file system, not by hand: restarted (69)
                raise ConfigError([Unreachable(
                    f"state database {path}: cannot be opened or written ({text}); started "
                    "again once the disk has room or is writable")]) from None
            raise ConfigError([f"state database {path}: cannot be opened or moved aside "
                               f"({text}); move it away by hand and "
                               f"start again (the outputs are adopted)"]) from None
        if moved is not None:
            self._log.error("state_database_corrupt", path=str(path), moved_to=str(moved),
                            reason=reason, note="moved aside; a new database is built by "
                                                "adopting the complete outputs on disk")
        try:  # rows of an older version learn their file's inode (a second name is known)
            learnt = self.ledger.fill_inodes()
        except sqlite3.Error as exc:
            self._log.warning("ledger_inodes_not_filled", reason=str(exc))
        else:
            if learnt:
                self._log.info("ledger_inodes_filled", rows=learnt,
                               note="movies recorded before rows kept their file's inode")
        cfg = self.config
        recorded = self.ledger.service_state()
        folders = dict(watch_dir=cfg.watch_dir, out_dir=cfg.out_dir, state_dir=cfg.state_dir)
        problem = other_watch_folder(recorded, done_outputs_below=self.ledger.done_outputs_below,
                                     **folders) if check_ownership else None
        if problem is not None:  # nothing written: another watch folder's outputs are there
            self.ledger.close()
            self.ledger = None
            raise ConfigError([problem])
        try:  # the first writes: a database on a full disk, or left read-only (root's)
            if (was := respelled_from(recorded, **folders)) is not None:
                renamed = self.ledger.respell(was, str(cfg.watch_dir),
                                              out_dir=str(cfg.out_dir))
                self._log.info("state_respelled", was=was, now=str(cfg.watch_dir),
                               movies=renamed, note="the same folder, watched by another "
                               "spelling: the state names its movies as given now")
            # this process, starting (``status`` says so, not "silent", until its first beat);
            # what the last run's heartbeats said of themselves holds for nothing now
            # the last start's parameters, to name what changed (parameters_changed)
            self._previous_parameters = recorded.get("parameters")
            self._previous_start_wall = recorded.get("started_wall")
            self.ledger.set_service_state({
                **served_folders(recorded, **folders), **_this_process(),
                "parameters": parameter_snapshot(cfg.params),
                "serving": self._serving,
                "started_wall": self._wall(), "healthy": None, "problems": [], "pace": None,
                "cluster": None, "waiting": 0, "waiting_examples": {}, "admission_backlog": 0,
                "in_flight": []})
            self._running_at_crash = self.ledger.recover_running()  # see _recover_running
        except (sqlite3.Error, OSError) as exc:
            if not _disk_trouble(exc):
                raise
            self.ledger.close()
            self.ledger = None
            raise ConfigError([Unreachable(
                f"state database {path}: cannot be written ({' '.join(str(exc).split())}); "
                "started again once it can (a full disk, a read-only database)")]) from None
        self._recovered = len(self._running_at_crash)

    def _recover_running(self) -> None:
        """Pending movies whose complete outputs are on disk are adopted (the daemon died
        after renaming them into place, before recording it; or the database lost its last
        writes); the others that were running when the daemon stopped are corrected again."""
        running = set(self._running_at_crash)
        adopted = self.admission.adopt_complete(self.ledger.rows(status="pending"))
        for key in self._running_at_crash:
            self._log.warning("movie_recovered", movie=key.path, note=(
                "was running when the daemon stopped; its complete outputs were adopted"
                if key in adopted else "was running when the daemon stopped; will be redone"))
        for key in adopted - running:
            self._log.warning("movie_adopted", movie=key.path,
                              note="pending, but its complete outputs were on disk (written "
                                   "as the daemon was stopped by a second signal, or the state "
                                   "database had lost their record): adopted")
        self._running_at_crash = []

    def _resolver_context(self) -> ResolverContext:
        cfg = self.config
        return ResolverContext(store=_LedgerView(lambda: self.ledger), now=self._wall,
                               log=self._log, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir,
                               voltage_kV=_given_voltage_kV(cfg),
                               emit=self._series_events.append, run_job=self._jobs.run_job)

    def run(self) -> int:
        """Run until stopped (signal, :meth:`request_stop`, or ``exit_when_idle_s``); exit status.

        The stop signals stay handled until the listeners have stopped (they write what they
        held back, the RELION tables): a second signal just after ``service_stopped`` killed
        the process there, the tables unwritten."""
        self._signals.install()
        try:
            return self._run()
        finally:
            self._signals.restore()

    def _run(self) -> int:
        cfg = self.config
        crashed = False
        try:
            try:
                if self._policy_error is not None:
                    raise ConfigError([self._policy_error])
                self._locks.acquire()
                self._log.info("service_starting", config=cfg.describe(), pid=os.getpid(),
                               version=__version__)
                if self._locks.unlocked:
                    self._log.warning("locks_unsupported", paths=self._locks.unlocked,
                                      note="this file system cannot lock them: nothing keeps "
                                           "a second motionwatch watch out of this output "
                                           "folder; run one only")
                self._open_ledger()
            except ConfigError as exc:
                self.config_error = exc
                if exc.unreachable_only:  # the file system may mend it: systemd restarts
                    self._log.error("start_unavailable", problems=list(exc.problems),
                                    note="exits 69: systemd starts it again")
                    return exitcodes.UNAVAILABLE
                self._log.error("config_invalid", problems=list(exc.problems))
                return exitcodes.CONFIG
            rows = self.ledger.rows()
            report_parameter_change(self._log, rows, cfg.params, self._policy,
                                    frame_mdoc_gain=cfg.frame_mdoc_gain,
                                    previous_snapshot=self._previous_parameters,
                                    previous_start_wall=self._previous_start_wall)
            rewritten = rewritten_references(rows, cfg.params.gain)
            if rewritten:  # the same setting, another file: no movie is corrected again
                self._log.warning(
                    "reference_rewritten", references=rewritten,
                    note="written anew since the last movie was corrected with it: the movies "
                         "done keep the old one's correction, new ones take the new one; to "
                         "correct them again with it, give it under a new name (a copy)")
            del rows
            self._resolver.start(self._resolver_context())
            self._recover_running()
            self._safe(self.ledger.put_back_due_now)  # the last process's pause has ended
            removed = clean_temporary_outputs(cfg.out_dir)
            if removed:
                self._log.info("temporary_outputs_removed", count=len(removed),
                               files=[str(p) for p in removed[:20]])
            self.discovery = Discovery(cfg.watch_dir, exclude=[cfg.out_dir, cfg.state_dir],
                                       movie_patterns=cfg.movie_patterns,
                                       metadata_patterns=cfg.metadata_patterns,
                                       polling=cfg.polling, wake=self.wake, clock=self._clock,
                                       listing_still_s=max(
                                           LISTING_STILL_S, 2 * cfg.settle_time_s,
                                           self._resolver.quiet_s() + 2 * cfg.scan_interval_s),
                                       log=lambda event, **kw: self._log.warning(event, **kw))
            self.discovery.start()
            self.pool = build_executor(cfg, runner=self._runner)  # local WorkerPool by default
            self.pool.start()
            self._scan(timed=False)  # reads every row of the state: not a measure of scans
            state = self.discovery.state()
            # under Dask the workers are the cluster's (counted once connected; the heartbeat
            # and status give them): --workers, 1 by default, said nothing of them
            cluster_state = getattr(self.pool, "cluster_state", None)
            executor = ({"executor": "dask", "scheduler": cluster_state()["scheduler"]}
                        if callable(cluster_state) else {"workers": cfg.workers})
            self._log.info("service_ready", discovery=state.mode, reason=state.reason,
                           fs_type=state.fs_type, **executor,
                           recovered=self._recovered, counts=self.ledger.movie_counts())
            gain = cfg.params.gain if cfg.params.gain.gain_path is not None else None
            self._notify("on_ready", ServiceInfo(
                watch_dir=cfg.watch_dir, out_dir=cfg.out_dir, state_dir=cfg.state_dir, gain=gain,
                pid=os.getpid(), discovery_mode=state.mode, discovery_reason=state.reason,
                recovered=self._recovered, gain_settings=cfg.params.gain))
            self._ready = True
            for method, event, corrected in self._before_ready:
                self._finished(method, event, corrected=corrected)
            self._before_ready.clear()
            self._flush_series_events()
            try:
                status = self._loop()
            except Exception:
                self._log.exception("service_crashed")
                crashed = True
                raise
        finally:
            self._shutdown()
            if crashed:  # the listeners still write what they held back (hand-off files)
                self._notify("on_stopped", exitcodes.SOFTWARE)
        self._notify("on_stopped", status)
        return status

    def _loop(self) -> int:
        cfg = self.config
        next_scan = self._clock() + cfg.scan_interval_s
        next_beat = self._clock()
        draining = False
        while True:
            now = self._clock()
            self._last_tick_s = now
            if self._signals.abort.is_set():
                self.dispatcher.abandon()
                self._notify("on_stopping", "second signal: immediate stop")
                self._log.info("service_stopping", reason="second signal: immediate stop")
                return exitcodes.INTERRUPTED
            if self._signals.stop.is_set() and not draining:
                draining = True
                reason = self._signals.reason or "signal: finishing the movie in hand"
                self._notify("on_stopping", reason)
                self._log.info("service_stopping", reason=reason,
                               in_flight=len(self.dispatcher.in_flight))
                self.dispatcher.withdraw_unstarted()  # queued on a cluster: not in hand
            if draining and not self.dispatcher.in_flight:
                if self.dispatcher.config_error is not None or self._stop_problem is not None:
                    self.config_error = ConfigError(
                        [p for p in (self.dispatcher.config_error, self._stop_problem) if p])
                    return exitcodes.CONFIG
                return exitcodes.RESTART if self._signals.restart else exitcodes.OK
            if self.dispatcher.config_error is not None and not draining:
                self._log.error("config_invalid", problems=[self.dispatcher.config_error],
                                note=f"{self.dispatcher.config_fix} and start again; the "
                                     "movies are kept (movies corrected before are corrected "
                                     "again under a changed setting, unless "
                                     "--on-parameter-change keep)")
                self._signals.request_stop(f"configuration error: {self.dispatcher.config_error}",
                                           wake=False)
                continue

            self._check_output_folder()
            self.dispatcher.retry_unrecorded()
            if not draining and now >= next_scan:
                self._scan()
                next_scan = self._clock() + cfg.scan_interval_s
            if not draining and self._out_ok:
                self.dispatcher.dispatch()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + cfg.heartbeat_s
            if not draining and self._idle_exit_due(now):
                self._signals.request_stop(f"idle for {cfg.exit_when_idle_s:g} s (exit_when_idle)",
                                           wake=False)
                continue

            timeout = max(0.0, min(next_scan, next_beat) - self._clock())
            if draining:
                timeout = min(timeout, 0.5)
            outcomes = self.pool.wait(timeout, also=[self._signals.wake_fd])
            if self._signals.drain_wake() and not draining and self.discovery.uses_events:
                next_scan = min(next_scan, self._rescan_after_event())
            self.dispatcher.note_starts()
            for outcome in outcomes:
                self.dispatcher.record(outcome)
            if self.discovery is not None:
                self.discovery.check_observer()

    def _shutdown(self) -> None:
        if self.pool is not None:
            if self._signals.abort.is_set():
                self.dispatcher.abandon()
            self.pool.stop()
            self.pool = None
        self._jobs.close()
        if self._read_ahead is not None:
            self._read_ahead.close()
        try:
            self._resolver.stop()
        except Exception as exc:  # noqa: BLE001
            self._log.error("resolver_failed", method="stop", error=f"{type(exc).__name__}: {exc}")
        if self.discovery is not None:
            self.discovery.stop()
        if self.ledger is not None:
            counts = self._safe(self.ledger.movie_counts, write=False)  # each movie once
            self._safe(lambda: self.ledger.set_service_state(
                {"stopped_wall": self._wall(), "pid": None, "waiting": 0,
                 "waiting_examples": {}, "admission_backlog": 0, "in_flight": []}))
            self.ledger.close()
            self.ledger = None
            self._log.info("service_stopped", counts=counts)
        self._locks.release()
        self._signals.close()

    def _safe(self, action: Callable[[], Any], *, write: bool = True) -> Any:
        return self._writes.guard(action, write=write, state_dir=str(self.config.state_dir))

    def _idle_exit_due(self, now: float) -> bool:
        if self.config.exit_when_idle_s is None:
            return False
        counts = self.ledger.counts()
        busy = (self.dispatcher.in_flight or self.admission.waiting or self.admission.deferred
                or counts["pending"] or counts["running"] or counts["failed"]
                or self.dispatcher.unrecorded or self._resolver.busy()
                or self.admission.resolver_problem is not None)  # nothing looked at: not idle
        if busy:
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since < self.config.exit_when_idle_s:
            return False
        if self._resolver.end_of_run():  # an open series is assembled first
            self._idle_since = None
            return False
        return True

    # --- output folder --------------------------------------------------------------------
    def _check_output_folder(self) -> None:
        cfg = self.config
        ok = cfg.out_dir.is_dir() and cfg.state_dir.is_dir() and (cfg.state_dir / DB_NAME).exists()
        problem = self._locks.check() if cfg.out_dir.is_dir() else None
        if problem != self._lock_problem and problem is not None:
            self._log.error("output_folder_locked", problem=problem,
                            note="correction paused; another motionwatch has this folder")
        self._lock_problem = problem
        if problem is not None:
            self._out_ok = False
            return
        if ok and not self._out_ok:
            self._log.warning("output_folder_back", out_dir=str(cfg.out_dir))
        if not ok and self._out_ok:
            self._log.error("output_folder_missing", out_dir=str(cfg.out_dir),
                            note="correction paused until it is back")
        if not ok and cfg.out_dir.is_dir() and cfg.state_dir.is_dir():
            # the folder came back empty (remounted, recreated): start a new database there
            try:
                self.ledger.close()
                self._open_ledger(check_ownership=False)
                self.admission.forget_all()
                ok = True
                self._log.warning("ledger_reopened", path=str(cfg.state_dir / DB_NAME))
            except (sqlite3.Error, OSError, ConfigError) as exc:
                self._log.error("ledger_reopen_failed", error=str(exc))
        self._out_ok = ok

    # --- scans and heartbeats -------------------------------------------------------------
    def _scan(self, *, timed: bool = True) -> None:
        """Discover, then admit (``timed``: its length spaces the rescans events wake)."""
        if self._watch_moved():
            return
        started = self._clock()
        result = self.discovery.scan(fresh=self.admission.busy_folders())
        if self._on_disk_at_start is None:  # the start-up scan
            self._on_disk_at_start = frozenset(o.path for o in result.observations)
        self._last_scan_s = self._clock()
        self.admission.take(result)
        self._flush_series_events()
        if timed:
            self._scan_took_s = self._clock() - started

    def _rescan_after_event(self) -> float:
        """When to rescan after an event: soon (0.1 s), but not before the main loop has
        spent ``EVENT_SCAN_GAP_FACTOR`` times the last scan's length on other work, so that
        a stream of events cannot keep it scanning a large tree (at 20,000 movies on disk a
        scan takes about 0.5 s): movies are then found a little later, never lost."""
        now = self._clock()
        if self._last_scan_s is None:
            return now + 0.1
        return max(now + 0.1, self._last_scan_s + EVENT_SCAN_GAP_FACTOR * self._scan_took_s)

    def _watch_moved(self) -> bool:
        """The watch folder leads elsewhere than at start (a link re-pointed at the next
        session): say why once, take in nothing more, and stop as misconfigured (78) once the
        movies in hand are done: its movies would be written over those of the same names."""
        if self._stop_problem is not None:
            return True
        real = os.path.realpath(self.config.watch_dir)
        if real == self._watch_real:
            return False
        self._stop_problem = (
            f"the watch folder {self.config.watch_dir} now leads to {real}, not to "
            f"{self._watch_real} as at start: its movies would be corrected into "
            f"{self.config.out_dir} over those of the same names; start again with another --out")
        self._log.error("config_invalid", problems=[self._stop_problem])
        self._signals.request_stop(f"configuration error: {self._stop_problem}", wake=False)
        return True

    def _heartbeat(self) -> None:
        try:
            self._resolver.poll()
        except Exception as exc:  # noqa: BLE001
            self._log.error("resolver_failed", method="poll", error=f"{type(exc).__name__}: {exc}")
        self._flush_series_events()
        counts = self._safe(lambda: self.ledger.movie_counts(), write=False) or {}
        health = self.health()
        cluster_problem = self._cluster_problem()
        if cluster_problem != self._cluster_problem_said:
            if cluster_problem is not None:
                self._log.error("cluster_unreachable", reason=cluster_problem,
                                note="correction waits for the cluster; check the scheduler's "
                                     "address and that it runs")
            else:
                self._log.info("cluster_reachable", note="the Dask scheduler answers")
            self._cluster_problem_said = cluster_problem
        in_flight = tuple(e.key.path for e in self.dispatcher.in_flight.values())
        waiting = self.admission.waiting
        state = self.discovery.state()
        cluster_state = getattr(self.pool, "cluster_state", None)
        cluster = cluster_state() if callable(cluster_state) else None
        started = (cluster or {}).get("running_on")
        queued = () if started is None else tuple(
            e.key.path for tid, e in self.dispatcher.in_flight.items() if tid not in started)
        # waiting for a worker: pending, or put back by trouble outside the movies (a full
        # disk: '0 waiting' beside 'backlog: 2 to correct' before), or queued in a cluster; a
        # movie waiting out its own retry delay (it crashed) is not work the service could do
        put_back = self._safe(self.ledger.put_back_count, write=False) or 0
        if put_back:  # failed rows, never counted against them: said apart, as status does
            # (systemd's STATUS= and the feed said "2 failed" while status said "0 failed")
            counts = {**counts, "failed": max(0, int(counts.get("failed", 0)) - put_back),
                      "put_back": put_back}
        pace = self._pace.pace(self._wall(),
                               waiting=int(counts.get("pending", 0)) + put_back + len(queued),
                               running=len(in_flight) - len(queued))
        self._say_pace(pace)
        pace = pace.to_record()
        beat = Heartbeat(self._wall(), self._clock() - self._started_s, counts, len(waiting),
                         in_flight, state.mode, health, cluster, pace, queued)
        self._safe(lambda: self.ledger.set_service_state({
            **_this_process(), "heartbeat_wall": beat.wall_time_s,
            "heartbeat_s": self.config.heartbeat_s, "uptime_s": beat.uptime_s,
            "watch_dir": str(self.config.watch_dir), "waiting": len(waiting),
            "waiting_examples": {str(p): r for p, r in list(waiting.items())[:10]},
            "admission_backlog": self.admission.deferred,
            "in_flight": list(in_flight), "workers": self.config.workers,
            "discovery": state.mode, "healthy": health.ok, "problems": list(health.problems),
            "cluster": cluster, "pace": pace,
        }))
        self._log.debug("heartbeat", counts=counts, waiting=len(waiting),
                        in_flight=len(in_flight), healthy=health.ok)
        self._notify("on_heartbeat", beat)

    def _arrived(self, observation: Observation) -> None:
        """A movie joined the queue: counted for the pace (dated by its mtime when it was on
        disk at the start, :mod:`daemon.engine.pace`)."""
        self._pace.arrived(observation.mtime_ns / 1e9, self._wall(),
                           on_disk_at_start=observation.path in (self._on_disk_at_start or ()))

    def _say_pace(self, pace: Pace) -> None:
        """Log when the service falls behind (its backlog is more than ``MAX_BEHIND_MIN``
        minutes of work), and when it has caught up again, which the log says once the backlog
        is under half of that, or has kept under the limit for ``MAX_BEHIND_MIN`` minutes (a
        backlog sitting at five minutes said both in turn, 40 lines in ten minutes; one that
        settled between half and the limit left falling_behind the journal's last word while
        ``status`` said keeping up): the journal tells the night's pace."""
        if not pace.keeping_up:
            self._keeping_up_from = None
        if pace.keeping_up is None or pace.keeping_up == self._keeping_up:
            return
        if pace.keeping_up and self._keeping_up is False and pace.behind_min is not None \
                and pace.behind_min > MAX_BEHIND_MIN / 2:
            if self._keeping_up_from is None:
                self._keeping_up_from = self._clock()
            if self._clock() - self._keeping_up_from < MAX_BEHIND_MIN * 60.0:
                return  # caught up only just: said under half, or once it has lasted
        facts = {"waiting": pace.waiting, "behind_min": pace.behind_min,
                 "acquired_per_min": pace.arrived_per_min,
                 "corrected_per_min": pace.corrected_per_min}
        if not pace.keeping_up:
            paused = self.dispatcher.pause.reason
            advice = (f"correction is paused ({paused})" if paused is not None
                      else "more --workers (or a cluster) corrects faster")
            waited = (f"more than {MAX_BEHIND_MIN:g} minutes of work waiting"
                      if pace.behind_min is not None else
                      f"movies have waited {MAX_BEHIND_MIN:g} minutes with none corrected")
            self._log.warning("falling_behind", **facts, note=f"{waited}; {advice}")
        elif self._keeping_up is False:
            self._log.info("keeping_up_again", **facts)
        self._keeping_up = pace.keeping_up


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _disk_trouble(exc: BaseException) -> bool:
    """A full, read-only or failing disk (an OSError of those, or SQLite saying so)."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_ERRNOS
    text = str(exc).lower()
    return any(words in text for words in ("disk is full", "readonly database",
                                           "disk i/o error"))


def _given_voltage_kV(cfg: Any) -> float | None:
    """``--voltage`` (kV) when given; None when each movie's comes from its metadata. A config
    built without options (tests, embedding) keeps its parameters' voltage as given."""
    options = getattr(cfg, "options", None) or {}
    if "voltage" not in options:
        return cfg.params.dose.voltage_kV
    value = options["voltage"]
    return None if value is None else float(value)


class _LedgerView:
    """The resolver's view of the state database (:class:`~daemon.events.SeriesStore`): always
    the currently open ledger, and only the calls the protocol names."""

    def __init__(self, ledger: Callable[[], Ledger | None]) -> None:
        self._ledger = ledger
        self._newest: tuple[Ledger, NewestRows] | None = None  # of the ledger open now

    def _open(self) -> Ledger:
        ledger = self._ledger()
        if ledger is None:
            raise sqlite3.OperationalError("state database closed")
        return ledger

    def rows(self, *, status: str | None = None, path: str | None = None) -> list[Any]:
        return self._open().rows(status=status, path=path)

    def newest_rows(self) -> Mapping[str, Any]:
        """The newest row of each real movie's path (read incrementally: NewestRows)."""
        ledger = self._open()
        if self._newest is None or self._newest[0] is not ledger:  # a reopened database
            self._newest = (ledger, NewestRows())
        return self._newest[1].rows(ledger)

    def mdoc_states(self) -> dict[str, dict[str, Any]]:
        return self._open().mdoc_states()

    def set_mdoc_state(self, path: str, **kw: Any) -> None:
        self._open().set_mdoc_state(path, **kw)

    def forget_mdoc(self, path: str) -> None:
        self._open().forget_mdoc(path)

    def series_states(self) -> dict[str, dict[str, Any]]:
        return self._open().series_states()

    def set_series_state(self, name: str, state: Any) -> None:
        self._open().set_series_state(name, state)
