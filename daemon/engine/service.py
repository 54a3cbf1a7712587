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
says it is complete. SIGTERM or Ctrl-C finishes the movie in hand and exits 0; a second signal
exits at once (the movie in hand is redone at the next start).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from daemon import exitcodes
from daemon.engine.admission import Admission
from daemon.engine.dispatch import Dispatcher
from daemon.engine.outputs import clean_temporary_outputs
from daemon.engine.signals import StopSignals
from daemon.events import (Health, Heartbeat, MetadataResolver, MovieEvent, NoMetadata,
                           ResolverContext, SeriesEvent, ServiceInfo, ServiceListener)
from daemon.intake.discover import Discovery
from daemon.settings.config import Config, ConfigError
from daemon.state.ledger import DB_NAME, Ledger
from daemon.system.logs import get_logger
from daemon.work.jobs import JobRunner
from daemon.work.workers import DEFAULT_RUNNER, WorkerPool

__all__ = ["Service", "LOCK_NAME"]

LOCK_NAME = "motionwatch.lock"


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
        ``"module:function"`` the workers call (default ``correction.pipeline:correct_movie``).
    clock, wall_clock : callable
        Monotonic and wall clocks (s).
    """

    def __init__(self, config: Config, *, listeners: Sequence[ServiceListener] = (),
                 resolver: MetadataResolver | None = None, runner: str = DEFAULT_RUNNER,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, logger: Any = None) -> None:
        self.config = config
        self._listeners = list(listeners)
        self._resolver: MetadataResolver = resolver or NoMetadata()
        self._runner = runner
        self._clock = clock
        self._wall = wall_clock
        self._log = logger if logger is not None else get_logger()
        self._signals = StopSignals()
        self._series_events: list[SeriesEvent] = []
        self._out_ok = True
        self._started_s = clock()
        self._last_tick_s = clock()
        self._last_scan_s: float | None = None
        self._idle_since: float | None = None
        self._recovered = 0
        self.ledger: Ledger | None = None
        self.discovery: Discovery | None = None
        self.pool: WorkerPool | None = None
        self._jobs = JobRunner()
        self.admission = Admission(config, ledger=lambda: self.ledger, resolver=self._resolver,
                                   log=self._log, clock=clock,
                                   quarantined=lambda e: self._finished("on_movie_failed", e))
        self.dispatcher = Dispatcher(config, ledger=lambda: self.ledger, pool=lambda: self.pool,
                                     log=self._log, finished=self._finished, wall_clock=wall_clock)
        self._lock_fd: int | None = None

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

    def _finished(self, method: str, event: MovieEvent) -> None:
        """A movie was recorded: the listeners hear it, then the resolver (whose series events
        follow, in order, after it)."""
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
        """Is the service doing its job? (loop turning, scans happening, output folder present).

        Safe to call from another thread (it only reads): an sd_notify watchdog thread can
        ping while ``service.health().ok``.
        """
        cfg = self.config
        now = self._clock()
        problems, notes = [], []
        # the loop never waits on a movie (workers are processes): it turns every scan/heartbeat
        if now - self._last_tick_s > max(60.0, 10 * cfg.scan_interval_s, 3 * cfg.heartbeat_s):
            problems.append(f"main loop stalled for {now - self._last_tick_s:.0f} s")
        if self._last_scan_s is not None and now - self._last_scan_s > max(
                60.0, 10 * cfg.scan_interval_s):
            problems.append(f"no scan for {now - self._last_scan_s:.0f} s")
        if not self._out_ok:
            problems.append(f"output folder {cfg.out_dir} missing or unusable")
        if self.pool is not None and self.pool.alive() < cfg.workers:
            notes.append(f"{cfg.workers - self.pool.alive()} worker(s) being replaced")
        if self.discovery is not None and not self.discovery.uses_events:
            notes.append(f"discovery by rescans only: {self.discovery.state().reason}")
        return Health(not problems, tuple(problems), tuple(notes))

    # --- lifecycle ------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        path = self.config.state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError([f"state folder {self.config.state_dir}: another motionwatch "
                               f"watch is using it ({path} is locked)"]) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _open_ledger(self) -> None:
        self.ledger = Ledger(self.config.state_dir / DB_NAME, clock=self._wall)
        recovered = self.ledger.recover_running()
        for key in recovered:
            self._log.warning("movie_recovered", movie=key.path,
                              note="was running when the daemon stopped; will be redone")
        self._recovered = len(recovered)

    def _resolver_context(self) -> ResolverContext:
        cfg = self.config
        return ResolverContext(store=_LedgerView(lambda: self.ledger), now=self._wall,
                               log=self._log, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir,
                               voltage_kV=cfg.params.dose.voltage_kV,
                               emit=self._series_events.append, run_job=self._jobs.run_job)

    def run(self) -> int:
        """Run until stopped (signal, :meth:`request_stop`, or ``exit_when_idle_s``); exit status."""
        cfg = self.config
        self._signals.install()
        try:
            try:
                self._acquire_lock()
            except ConfigError as exc:
                self._log.error("config_invalid", problems=list(exc.problems))
                return exitcodes.CONFIG
            self._log.info("service_starting", config=cfg.describe(), pid=os.getpid())
            self._open_ledger()
            self._resolver.start(self._resolver_context())
            removed = clean_temporary_outputs(cfg.out_dir)
            if removed:
                self._log.info("temporary_outputs_removed", count=len(removed),
                               files=[str(p) for p in removed[:20]])
            self.discovery = Discovery(cfg.watch_dir, exclude=[cfg.out_dir, cfg.state_dir],
                                       movie_patterns=cfg.movie_patterns,
                                       metadata_patterns=cfg.metadata_patterns,
                                       polling=cfg.polling, wake=self.wake,
                                       log=lambda event, **kw: self._log.warning(event, **kw))
            self.discovery.start()
            self.pool = WorkerPool(cfg.workers, timeout_s=cfg.movie_timeout_s, runner=self._runner,
                                   preload_gain=cfg.params.gain)
            self.pool.start()
            self._scan()
            state = self.discovery.state()
            self._log.info("service_ready", discovery=state.mode, reason=state.reason,
                           fs_type=state.fs_type, workers=cfg.workers,
                           recovered=self._recovered, counts=self.ledger.counts())
            self._notify("on_ready", ServiceInfo(cfg, os.getpid(), state.mode, state.reason,
                                                 self._recovered))
            self._flush_series_events()
            try:
                status = self._loop()
            except Exception:
                self._log.exception("service_crashed")
                raise
        finally:
            self._shutdown()
            self._signals.restore()
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
                return exitcodes.OK
            if self._signals.stop.is_set() and not draining:
                draining = True
                reason = self._signals.reason or "signal: finishing the movie in hand"
                self._notify("on_stopping", reason)
                self._log.info("service_stopping", reason=reason,
                               in_flight=len(self.dispatcher.in_flight))
            if draining and not self.dispatcher.in_flight:
                return exitcodes.OK

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
                # an event: rescan soon, but not more often than every 0.1 s
                next_scan = min(next_scan, self._clock() + 0.1)
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
        try:
            self._resolver.stop()
        except Exception as exc:  # noqa: BLE001
            self._log.error("resolver_failed", method="stop", error=f"{type(exc).__name__}: {exc}")
        if self.discovery is not None:
            self.discovery.stop()
        if self.ledger is not None:
            self._safe(lambda: self.ledger.set_service_state(
                {"stopped_wall": self._wall(), "pid": None}))
            self.ledger.close()
            self.ledger = None
            self._log.info("service_stopped")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._signals.close()

    def _safe(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except sqlite3.Error as exc:
            self._log.error("ledger_write_failed", error=str(exc),
                            state_dir=str(self.config.state_dir))
            return None

    def _idle_exit_due(self, now: float) -> bool:
        if self.config.exit_when_idle_s is None:
            return False
        counts = self.ledger.counts()
        busy = (self.dispatcher.in_flight or self.admission.waiting or counts["pending"]
                or counts["running"] or counts["failed"] or self.dispatcher.unrecorded
                or self._resolver.busy())
        if busy:
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= self.config.exit_when_idle_s

    # --- output folder --------------------------------------------------------------------
    def _check_output_folder(self) -> None:
        cfg = self.config
        ok = cfg.out_dir.is_dir() and cfg.state_dir.is_dir() and (cfg.state_dir / DB_NAME).exists()
        if ok and not self._out_ok:
            self._log.warning("output_folder_back", out_dir=str(cfg.out_dir))
        if not ok and self._out_ok:
            self._log.error("output_folder_missing", out_dir=str(cfg.out_dir),
                            note="correction paused until it is back")
        if not ok and cfg.out_dir.is_dir() and cfg.state_dir.is_dir():
            # the folder came back empty (remounted, recreated): start a new database there
            try:
                self.ledger.close()
                self._open_ledger()
                self.admission.forget_all()
                ok = True
                self._log.warning("ledger_reopened", path=str(cfg.state_dir / DB_NAME))
            except (sqlite3.Error, OSError) as exc:
                self._log.error("ledger_reopen_failed", error=str(exc))
        self._out_ok = ok

    # --- scans and heartbeats -------------------------------------------------------------
    def _scan(self) -> None:
        result = self.discovery.scan(now_s=self._clock())
        self._last_scan_s = self._clock()
        self.admission.take(result)
        self._flush_series_events()

    def _heartbeat(self) -> None:
        try:
            self._resolver.poll()
        except Exception as exc:  # noqa: BLE001
            self._log.error("resolver_failed", method="poll", error=f"{type(exc).__name__}: {exc}")
        self._flush_series_events()
        counts = self._safe(lambda: self.ledger.counts()) or {}
        health = self.health()
        in_flight = tuple(e.key.path for e in self.dispatcher.in_flight.values())
        waiting = self.admission.waiting
        state = self.discovery.state()
        beat = Heartbeat(self._wall(), self._clock() - self._started_s, counts, len(waiting),
                         in_flight, self.pool.alive(), state.mode, health)
        self._safe(lambda: self.ledger.set_service_state({
            "pid": os.getpid(), "heartbeat_wall": beat.wall_time_s, "uptime_s": beat.uptime_s,
            "watch_dir": str(self.config.watch_dir), "waiting": len(waiting),
            "waiting_examples": {str(p): r for p, r in list(waiting.items())[:10]},
            "in_flight": list(in_flight), "workers": self.config.workers,
            "discovery": state.mode, "healthy": health.ok, "problems": list(health.problems),
        }))
        self._log.debug("heartbeat", counts=counts, waiting=len(waiting),
                        in_flight=len(in_flight), healthy=health.ok)
        self._notify("on_heartbeat", beat)


class _LedgerView:
    """The resolver's view of the state database (:class:`~daemon.events.SeriesStore`): always
    the currently open ledger, and only the calls the protocol names."""

    def __init__(self, ledger: Callable[[], Ledger | None]) -> None:
        self._ledger = ledger

    def _open(self) -> Ledger:
        ledger = self._ledger()
        if ledger is None:
            raise sqlite3.OperationalError("state database closed")
        return ledger

    def rows(self, *, status: str | None = None, path: str | None = None) -> list[Any]:
        return self._open().rows(status=status, path=path)

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
