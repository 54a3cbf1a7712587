"""Watch a folder and motion-correct every movie the detector writes into it, unattended.

Movies already in the folder (the backlog) are corrected first, in acquisition order (file
mtime), then each new movie once its size and mtime have held for the settle time and its format
says it is complete. State lives in an SQLite database in the output folder (``--state-dir`` to
move it): a restart never repeats a finished movie, and redoes one that was interrupted.
SIGTERM or Ctrl-C finishes the movie in hand and exits 0; a second signal exits at once (the
movie in hand is redone at the next start).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon import exitcodes
from daemon.settings.config import Config, ConfigError, add_watch_arguments, finalize_parser, load_config
from daemon.intake.discover import Discovery, ScanResult
from daemon.state.ledger import DB_NAME, Ledger, MovieKey, MovieRow
from daemon.intake.settle import Observation, Settler
from daemon.intake.validate import validate
from daemon.work.workers import DEFAULT_RUNNER, Outcome, Task, WorkerPool

__all__ = [
    "add_arguments", "run", "Service", "ServiceObserver", "MetadataResolver", "NoMetadata",
    "MovieMetadata", "MovieEvent", "SeriesEvent", "Heartbeat", "Health", "ServiceInfo",
    "SOURCE_KEY",
    "LOCK_NAME", "output_dir_for", "movie_stem", "build_observers", "build_resolver",
    "find_adoptable_outputs", "clean_temporary_outputs",
]

EXAMPLES = """examples:
  motionwatch watch /data/session --out /data/session/motioncorr --gain gain.mrc --dose-per-frame 1.2
  motionwatch watch /data/session --config session.toml --workers 2
  motionwatch watch /mnt/camera --out /scratch/mc --config session.toml --polling on
"""

SOURCE_KEY = "source_file"  # motion-record key naming the movie version and parameters
LOCK_NAME = "motionwatch.lock"
_MAX_RETRY_DELAY_S = 300.0


# ------------------------------------------------------------------------------------------
# seams: metadata resolution (tilt series, dose ledger) and observers (publisher, sd_notify)


@dataclass(frozen=True, slots=True)
class MovieMetadata:
    """Per-movie facts resolved before correction.

    Attributes
    ----------
    dose : DoseParams or None
        Replaces the configured dose for this movie (pre-exposure, per-frame doses); None keeps it.
    extra_record : dict
        Merged into the movie's motion record (``series``, ``tilt_deg`` ...).
    log_context : dict
        Bound to every log event of the movie (``series=...``).
    wait_reason : str or None
        Not resolvable yet (e.g. its mdoc section is not written): the movie waits and is
        offered again at the next scan.
    ignore_reason : str or None
        Not a movie to correct (e.g. SerialEM's own tilt-series stack): logged once as
        ``movie_ignored``, never recorded or corrected, and not counted as waiting.
    """

    dose: Any = None
    extra_record: Mapping[str, Any] = field(default_factory=dict)
    log_context: Mapping[str, Any] = field(default_factory=dict)
    wait_reason: str | None = None
    ignore_reason: str | None = None


class MetadataResolver(Protocol):
    """Resolves per-movie metadata (issue 6's tilt-series/mdoc dose ledger plugs in here)."""

    def observe(self, scan: ScanResult) -> Iterable[Path] | None:
        """See every scan (metadata files such as series ``.mdoc`` included).

        Returns the movies whose metadata may have changed (a series mdoc rewritten): they are
        resolved again at this scan, and a changed dose makes a new ledger key, so a redo.
        """

    def resolve(self, movie: Observation, params: Any) -> MovieMetadata:
        """Metadata of one complete movie; ``params`` are the configured CorrectionParams."""


class NoMetadata:
    """The default resolver: every movie gets the configured parameters."""

    def observe(self, scan: ScanResult) -> Iterable[Path] | None:
        return None

    def resolve(self, movie: Observation, params: Any) -> MovieMetadata:
        return MovieMetadata()


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What the service runs with, given to observers once ready."""

    config: Config
    pid: int
    discovery_mode: str
    discovery_reason: str
    recovered: int


@dataclass(frozen=True, slots=True)
class MovieEvent:
    """A movie finished (``status`` done) or failed (``failed``: will retry; ``quarantined``)."""

    path: Path
    key: MovieKey
    status: str
    attempt: int
    outputs: Mapping[str, str] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the service works (what an sd_notify watchdog ping should depend on)."""

    ok: bool
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic state, every ``heartbeat_s``."""

    wall_time_s: float
    uptime_s: float
    counts: Mapping[str, int]
    waiting: int
    in_flight: tuple[str, ...]
    workers_alive: int
    discovery_mode: str
    health: Health


@dataclass(frozen=True, slots=True)
class SeriesEvent:
    """A tilt series changed state.

    Attributes
    ----------
    kind : str
        ``"started"`` (first seen), ``"updated"`` (one of its movies done or failed),
        ``"completed"`` (stacks assembled) or ``"reopened"`` (movies arrived after completion).
    series : str
        Series name (the series mdoc's name without ``.mdoc``, or the file-name pattern's group).
    n_expected : int or None
        Tilts listed in its mdoc (None when known only from file names).
    n_done, n_failed : int
        Its movies corrected, and failed or quarantined.
    accumulated_dose_e_A2 : float or None
        Dose of all its listed tilts (e/A^2), None when unknown.
    mdoc : str or None
        Path of the series mdoc.
    stacks : dict
        Assembled outputs by name (paths; on ``completed``).
    """

    kind: str
    series: str
    n_expected: int | None
    n_done: int
    n_failed: int
    accumulated_dose_e_A2: float | None = None
    mdoc: str | None = None
    stacks: Mapping[str, str] = field(default_factory=dict)


class ServiceObserver:
    """Receives service events; subclass and override what you need (all no-ops here).

    Called from the service's main thread; keep each call short and non-blocking. An exception
    is logged and does not stop the service.
    """

    def on_ready(self, info: ServiceInfo) -> None:
        """The ledger is open, recovery done, the first scan made (sd_notify READY=1)."""

    def on_movie_done(self, event: MovieEvent) -> None:
        """A movie's outputs are in place and the ledger says done."""

    def on_movie_failed(self, event: MovieEvent) -> None:
        """A movie failed (``event.status`` is ``failed`` or ``quarantined``)."""

    def on_series_event(self, event: SeriesEvent) -> None:
        """A tilt series started, progressed, completed (stacks written) or re-opened."""

    def on_heartbeat(self, beat: Heartbeat) -> None:
        """Periodic state (sd_notify WATCHDOG=1 when ``beat.health.ok``; STATUS=...)."""

    def on_stopping(self, reason: str) -> None:
        """Shutdown began (sd_notify STOPPING=1)."""

    def on_stopped(self, exit_status: int) -> None:
        """The service has stopped; the last call."""


# ------------------------------------------------------------------------------------------
# helpers


def movie_stem(path: Path) -> str:
    """Output stem of a movie: its name without the last suffix."""
    return Path(path).stem


def output_dir_for(movie: Path, *, watch_dir: Path, out_dir: Path) -> Path:
    """Outputs mirror the movie's sub-folder below the watch folder."""
    try:
        rel = Path(movie).parent.relative_to(watch_dir)
    except ValueError:
        rel = Path()
    return out_dir / rel


def _source(key: MovieKey) -> dict[str, Any]:
    return {"path": key.path, "size": key.size, "mtime_ns": key.mtime_ns,
            "params_fingerprint": key.fingerprint}


def _mrc_complete(path: Path) -> bool:
    try:
        from correction.io.complete import check_complete

        return bool(check_complete(path).complete)
    except Exception:  # noqa: BLE001 - unreadable means not adoptable
        return False


def find_adoptable_outputs(key: MovieKey, out_dir: Path, stem: str) -> dict[str, str] | None:
    """Outputs on disk of exactly this movie version and parameters, all complete; else None."""
    motion = out_dir / f"{stem}.motion.json"
    try:
        record = json.loads(motion.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get(SOURCE_KEY) != _source(key):
        return None
    listed = record.get("outputs") or {}
    if not isinstance(listed, dict) or not listed:
        return None
    outputs: dict[str, str] = {}
    for name, value in listed.items():
        path = Path(value)
        path = path if path.is_absolute() else out_dir / path
        if not path.is_file():
            return None
        if path.suffix == ".mrc" and not _mrc_complete(path):
            return None
        outputs[name] = str(path)
    outputs.setdefault("motion", str(motion))
    return outputs


def clean_temporary_outputs(out_dir: Path) -> list[Path]:
    """Remove writers' temporaries (``.<name>.tmp-<pid>``) left by a killed process."""
    removed = []
    for folder, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") and ".tmp-" in name:
                path = Path(folder) / name
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


def summarise(record: Mapping[str, Any], timings_s: Mapping[str, float]) -> dict[str, Any]:
    """The per-movie summary kept in the ledger and logged: drift statistics and timings."""
    keep = ("frames", "shape", "pixel_size_A", "drift", "dose")
    out = {k: record[k] for k in keep if k in record}
    if isinstance(out.get("dose"), dict):
        out["dose"] = {k: v for k, v in out["dose"].items() if k != "per_frame_e_A2"}
    out["timings_s"] = dict(timings_s)
    return out


# ------------------------------------------------------------------------------------------
# the service


class _Stop(Exception):
    pass


class Service:
    """The watch daemon: wires the stages, runs the main loop, owns signals.

    Stages, wired here and only here (each passes frozen dataclasses, none imports another):
    discovery (:mod:`daemon.discover`) -> settle (:mod:`daemon.settle`) -> validate
    (:mod:`daemon.validate`) -> metadata (:class:`MetadataResolver`) -> ledger
    (:mod:`daemon.ledger`) -> workers (:mod:`daemon.workers`) -> observers
    (:class:`ServiceObserver`: publisher, systemd notify).

    Parameters
    ----------
    config : Config
    observers : sequence of ServiceObserver
        Event receivers (publisher, systemd notify).
    resolver : MetadataResolver, optional
        Per-movie metadata (default :class:`NoMetadata`).
    runner : str
        ``"module:function"`` the workers call (default ``correction.pipeline:correct_movie``).
    clock, wall_clock : callable
        Monotonic and wall clocks (s).
    """

    def __init__(self, config: Config, *, observers: Sequence[ServiceObserver] = (),
                 resolver: MetadataResolver | None = None, runner: str = DEFAULT_RUNNER,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, logger: Any = None) -> None:
        from daemon.system.logs import get_logger

        self.config = config
        self._observers = list(observers)
        self._resolver: MetadataResolver = resolver or NoMetadata()
        if isinstance(self._resolver, ServiceObserver):  # a resolver may follow movie events
            self._observers.append(self._resolver)
        self._runner = runner
        self._clock = clock
        self._wall = wall_clock
        self._log = logger if logger is not None else get_logger()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._abort = threading.Event()
        self._fingerprint = config.params.fingerprint()
        self._handled: set[tuple[str, int, int]] = set()
        self._reported: set[tuple[str, str]] = set()
        self._waiting: dict[Path, str] = {}
        self._in_flight: dict[int, tuple[MovieKey, int, dict[str, Any]]] = {}
        self._next_task = 0
        self._env_failures: dict[MovieKey, int] = {}
        self._unrecorded: list[Outcome] = []
        self._out_ok = True
        self._started_s = clock()
        self._last_tick_s = clock()
        self._last_scan_s: float | None = None
        self._idle_since: float | None = None
        self.ledger: Ledger | None = None
        self.discovery: Discovery | None = None
        self.pool: WorkerPool | None = None
        self._settler = Settler(config.settle_time_s, clock=clock)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock_fd: int | None = None

    # --- observers ------------------------------------------------------------------------
    def add_observer(self, observer: ServiceObserver) -> None:
        self._observers.append(observer)

    def notify_series(self, event: SeriesEvent) -> None:
        """Give a tilt-series event to every observer (called by the metadata resolver)."""
        self._notify("on_series_event", event)

    def _notify(self, method: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception as exc:  # noqa: BLE001 - an observer must not stop the service
                self._log.error("observer_failed", observer=type(observer).__name__,
                                method=method, error=f"{type(exc).__name__}: {exc}")

    # --- signals and wake-ups -------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """First call: drain; second: stop at once. Thread-safe (sets Events, wakes the loop)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()
        self.wake()

    def wake(self) -> None:
        """Wake the main loop (thread-safe; used by discovery events)."""
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):
            pass

    def _handle_signal(self, signum: int, frame: Any) -> None:
        # only sets Events; the wake-up byte is written by Python's C-level wakeup fd
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        previous = [(s, signal.signal(s, self._handle_signal)) for s in (signal.SIGTERM, signal.SIGINT)]
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: list[tuple[int, Any]]) -> None:
        for signum, handler in previous:
            signal.signal(signum, handler)
        if previous:
            signal.set_wakeup_fd(self._previous_wakeup)

    def _drain_wake(self) -> bool:
        woke = False
        try:
            while os.read(self._wake_r, 4096):
                woke = True
        except (BlockingIOError, OSError):
            pass
        return woke

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
        if self._last_scan_s is not None and now - self._last_scan_s > max(60.0, 10 * cfg.scan_interval_s):
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

    def run(self) -> int:
        """Run until stopped (signal, :meth:`request_stop`, or ``exit_when_idle_s``); exit status."""
        cfg = self.config
        previous = self._install_signals()
        try:
            try:
                self._acquire_lock()
            except ConfigError as exc:
                self._log.error("config_invalid", problems=list(exc.problems))
                return exitcodes.CONFIG
            self._log.info("service_starting", config=cfg.describe(), pid=os.getpid())
            self._open_ledger()
            bind = getattr(self._resolver, "bind", None)
            if bind is not None:  # the resolver reads the ledger, logs, emits series events
                bind(self)
            removed = clean_temporary_outputs(cfg.out_dir)
            if removed:
                self._log.info("temporary_outputs_removed", count=len(removed),
                               files=[str(p) for p in removed[:20]])
            exclude = [cfg.out_dir, cfg.state_dir]
            self.discovery = Discovery(cfg.watch_dir, exclude=exclude,
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
            try:
                status = self._loop()
            except Exception:
                self._log.exception("service_crashed")
                raise
        finally:
            self._shutdown()
            self._restore_signals(previous)
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
            if self._abort.is_set():
                abandoned = self.pool.abandon() if self.pool else []
                for task in abandoned:
                    key = self._in_flight.pop(task.task_id)[0]
                    self._safe(lambda: self.ledger.release(key))
                    self._log.warning("movie_abandoned", movie=key.path,
                                      note="second signal: stopped at once; redone at next start")
                self._notify("on_stopping", "second signal: immediate stop")
                self._log.info("service_stopping", reason="second signal: immediate stop")
                return exitcodes.OK
            if self._stop.is_set() and not draining:
                draining = True
                reason = self._stop_reason or "signal: finishing the movie in hand"
                self._notify("on_stopping", reason)
                self._log.info("service_stopping", reason=reason, in_flight=len(self._in_flight))
            if draining and not self._in_flight:
                return exitcodes.OK

            self._check_output_folder()
            if self._unrecorded:
                pending, self._unrecorded = self._unrecorded, []
                for outcome in pending:
                    self._record(outcome)
            if not draining and now >= next_scan:
                self._scan()
                next_scan = self._clock() + cfg.scan_interval_s
            if not draining:
                self._dispatch()
            if now >= next_beat:
                self._heartbeat()
                next_beat = now + cfg.heartbeat_s
            if not draining and self._idle_exit_due(now):
                self._stop_reason = f"idle for {cfg.exit_when_idle_s:g} s (exit_when_idle)"
                self._stop.set()
                continue

            timeout = max(0.0, min(next_scan, next_beat) - self._clock())
            if draining:
                timeout = min(timeout, 0.5)
            outcomes = self.pool.wait(timeout, also=[self._wake_r])
            if self._drain_wake() and not draining and self.discovery.uses_events:
                # an event: rescan soon, but not more often than every 0.1 s
                next_scan = min(next_scan, self._clock() + 0.1)
            for outcome in outcomes:
                self._record(outcome)
            if self.discovery is not None:
                self.discovery.check_observer()

    def _shutdown(self) -> None:
        if self.pool is not None:
            for task in self.pool.abandon() if self._abort.is_set() else []:
                entry = self._in_flight.pop(task.task_id, None)
                if entry:
                    self._safe(lambda: self.ledger.release(entry[0]))
            self.pool.stop()
            self.pool = None
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
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _safe(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except sqlite3.Error as exc:
            self._log.error("ledger_write_failed", error=str(exc), state_dir=str(self.config.state_dir))
            return None

    def _idle_exit_due(self, now: float) -> bool:
        if self.config.exit_when_idle_s is None:
            return False
        counts = self.ledger.counts()
        busy = (self._in_flight or self._waiting or counts["pending"] or counts["running"]
                or counts["failed"] or self._unrecorded
                or getattr(self._resolver, "busy", lambda: False)())
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
                self._handled.clear()
                ok = True
                self._log.warning("ledger_reopened", path=str(cfg.state_dir / DB_NAME))
            except (sqlite3.Error, OSError) as exc:
                self._log.error("ledger_reopen_failed", error=str(exc))
        self._out_ok = ok

    # --- discovery -> settle -> validate -> metadata -> ledger ----------------------------
    def _scan(self) -> None:
        result = self.discovery.scan(now_s=self._clock())
        self._last_scan_s = self._clock()
        for folder, reason in result.errors:
            self._report_once(str(folder), "folder_unreadable", reason, level="warning")
        for path, reason in result.skipped:
            if (str(path), "skip") not in self._reported:
                self._reported.add((str(path), "skip"))
                self._log.warning("movie_ignored", movie=str(path), reason=reason)
                key = MovieKey(str(path), -1, -1, self._fingerprint)
                self._safe(lambda: self.ledger.add(key, status="quarantined", error=reason))
        try:
            changed = {str(p) for p in (self._resolver.observe(result) or ())}
        except Exception as exc:  # noqa: BLE001 - a resolver bug must not stop discovery
            self._log.error("metadata_observe_failed", error=f"{type(exc).__name__}: {exc}")
            changed = set()
        if changed:
            self._handled = {h for h in self._handled if h[0] not in changed}
        movies = [o for o in result.observations if o.kind == "movie"]
        settled = {o.path for o in self._settler.update(movies)}
        waiting: dict[Path, str] = {}
        for obs in movies:
            ident = (str(obs.path), obs.size, obs.mtime_ns)
            if ident in self._handled:
                continue
            if obs.path not in settled:
                waiting[obs.path] = "settling"
                continue
            reason = self._admit(obs)
            if reason is not None:
                waiting[obs.path] = reason
        self._waiting = waiting

    def _report_once(self, subject: str, event: str, reason: str, *, level: str = "info") -> None:
        if (subject, reason) in self._reported:
            return
        self._reported.add((subject, reason))
        getattr(self._log, level)(event, movie=subject, reason=reason)

    def _admit(self, obs: Observation) -> str | None:
        """Handle a settled movie; returns a wait reason, or None once it is in the ledger."""
        cfg = self.config
        ident = (str(obs.path), obs.size, obs.mtime_ns)
        try:
            meta = self._resolver.resolve(obs, cfg.params)
        except Exception as exc:  # noqa: BLE001
            self._report_once(str(obs.path), "metadata_failed", f"{type(exc).__name__}: {exc}",
                              level="error")
            meta = MovieMetadata()
        if meta.wait_reason:
            self._report_once(str(obs.path), "movie_waiting", meta.wait_reason)
            return meta.wait_reason
        if meta.ignore_reason:
            self._report_once(str(obs.path), "movie_ignored", meta.ignore_reason)
            self._handled.add(ident)
            return None
        params = cfg.params if meta.dose is None else dataclasses.replace(cfg.params, dose=meta.dose)
        key = MovieKey(str(obs.path), obs.size, obs.mtime_ns, params.fingerprint())
        try:
            known = self.ledger.get(key) is not None
        except sqlite3.Error as exc:
            self._report_once(str(obs.path), "ledger_read_failed", str(exc), level="error")
            return "state database unavailable"
        if known:
            self._handled.add(ident)
            return None
        log = self._log.bind(movie=str(obs.path), **dict(meta.log_context))
        verdict = validate(obs.path, stable_for_s=self._settler.stable_for_s(obs.path) or 0.0,
                           incomplete_grace_s=cfg.incomplete_grace_s,
                           require_frame_mdoc=cfg.require_frame_mdoc)
        if verdict.decision == "wait":
            self._report_once(str(obs.path), "movie_incomplete", verdict.reason)
            return verdict.reason
        stored = {"extra_record": dict(meta.extra_record), "log_context": dict(meta.log_context),
                  "dose": None if meta.dose is None else dataclasses.asdict(meta.dose),
                  "n_frames": verdict.n_frames}
        if verdict.decision == "reject":
            if self._safe(lambda: self.ledger.add(key, status="quarantined", error=verdict.reason,
                                                  metadata=stored)) is None:
                return "state database unavailable"
            self._handled.add(ident)
            log.warning("movie_quarantined", reason=verdict.reason, stage="validate")
            self._notify("on_movie_failed", MovieEvent(obs.path, key, "quarantined", 0,
                                                       error=verdict.reason, metadata=stored))
            return None
        earlier = [r for r in self.ledger.rows(path=key.path) if r.key != key]
        if earlier:
            log.info("movie_changed", note="new size, mtime or parameters: treated as a new movie",
                     size=obs.size, previous=[r.status for r in earlier])
        out_dir = output_dir_for(obs.path, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir)
        adopted = find_adoptable_outputs(key, out_dir, movie_stem(obs.path))
        if adopted is not None:
            if self._safe(lambda: self.ledger.adopt(key, outputs=adopted, summary={},
                                                    timings={}) or True) is None:
                return "state database unavailable"
            log.info("movie_adopted", outputs=adopted,
                     note="complete outputs of this movie version were already on disk")
        else:
            if self._safe(lambda: self.ledger.add(key, metadata=stored)) is None:
                return "state database unavailable"
            log.info("movie_ready", size=obs.size, frames=verdict.n_frames)
        self._handled.add(ident)
        return None

    # --- ledger -> workers ----------------------------------------------------------------
    def _dispatch(self) -> None:
        cfg = self.config
        if not self._out_ok:
            return
        while self.pool.idle > 0:
            row = self._safe(lambda: self.ledger.next_pending(now=self._wall()))
            if row is None:
                return
            key = row.key
            problem = self._stale(row)
            if problem is not None:
                self._safe(lambda: self.ledger.mark_failed(key, problem, quarantine=True, count=False))
                self._log.warning("movie_quarantined", movie=key.path, reason=problem,
                                  stage="dispatch")
                continue
            attempt = self._safe(lambda: self.ledger.claim(key))
            if attempt is None:
                return
            params = cfg.params
            dose = row.metadata.get("dose")
            if dose is not None:
                if dose.get("frame_doses_e_A2") is not None:
                    dose = {**dose, "frame_doses_e_A2": tuple(dose["frame_doses_e_A2"])}
                params = dataclasses.replace(params, dose=type(params.dose)(**dose))
            extra = {**row.metadata.get("extra_record", {}), SOURCE_KEY: _source(key)}
            movie = Path(key.path)
            task_id = self._next_task
            self._next_task += 1
            task = Task(task_id, movie, output_dir_for(movie, watch_dir=cfg.watch_dir,
                                                       out_dir=cfg.out_dir),
                        cfg.out_dir, params, movie_stem(movie), extra)
            self.pool.submit(task)
            self._in_flight[task_id] = (key, attempt, row.metadata)
            self._log.info("movie_started", movie=key.path, attempt=attempt,
                           **dict(row.metadata.get("log_context", {})))

    @staticmethod
    def _stale(row: MovieRow) -> str | None:
        try:
            st = os.stat(row.key.path)
        except FileNotFoundError:
            return "movie file vanished before correction"
        except OSError as exc:
            return f"cannot stat movie: {exc.strerror or exc}"
        if (st.st_size, st.st_mtime_ns) != (row.key.size, row.key.mtime_ns):
            return "movie file changed before correction (the new version is handled separately)"
        return None

    # --- workers -> ledger -> observers ---------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        cfg = self.config
        entry = self._in_flight.get(outcome.task_id)
        if entry is None:
            return
        key, attempt, meta = entry
        log = self._log.bind(movie=key.path, **dict(meta.get("log_context", {})))
        try:
            if outcome.ok:
                summary = summarise(outcome.record, outcome.timings_s)
                self.ledger.mark_done(key, outputs=outcome.outputs, timings=outcome.timings_s,
                                      summary=summary)
                self._env_failures.pop(key, None)
                log.info("movie_done", attempt=attempt, drift=outcome.record.get("drift"),
                         timings_s=dict(outcome.timings_s), frames=outcome.record.get("frames"),
                         outputs=dict(outcome.outputs))
                event = MovieEvent(Path(key.path), key, "done", attempt, outcome.outputs,
                                   outcome.record, outcome.timings_s, None, meta)
                self._in_flight.pop(outcome.task_id)
                self._notify("on_movie_done", event)
                return
            row = self.ledger.get(key)
            failures = (row.failures if row else 0) + 1
            if outcome.kind == "environment":
                n = self._env_failures.get(key, 0) + 1
                self._env_failures[key] = n
                delay = min(_MAX_RETRY_DELAY_S, max(cfg.retry_delay_s, 1.0) * 2 ** (n - 1))
                status = self.ledger.mark_failed(key, outcome.error or "", quarantine=False,
                                                 count=False, retry_delay_s=delay)
                log.error("movie_retry_later", reason=outcome.error, retry_in_s=delay,
                          note="output folder or disk trouble; not counted against the movie")
            else:
                quarantine = outcome.kind == "data" or failures >= cfg.max_attempts
                delay = min(_MAX_RETRY_DELAY_S, cfg.retry_delay_s * 2 ** (failures - 1))
                status = self.ledger.mark_failed(key, outcome.error or outcome.kind,
                                                 quarantine=quarantine, retry_delay_s=delay)
                if quarantine:
                    log.error("movie_quarantined", reason=outcome.error, kind=outcome.kind,
                              attempt=attempt, failures=failures)
                else:
                    log.warning("movie_failed", reason=outcome.error, kind=outcome.kind,
                                attempt=attempt, failures=failures, retry_in_s=delay)
        except sqlite3.Error as exc:
            log.error("ledger_write_failed", error=str(exc), note="will retry recording")
            self._unrecorded.append(outcome)
            return
        self._in_flight.pop(outcome.task_id)
        self._notify("on_movie_failed", MovieEvent(Path(key.path), key, status, attempt,
                                                   timings_s=outcome.timings_s,
                                                   error=outcome.error, metadata=meta))

    def _heartbeat(self) -> None:
        counts = self._safe(lambda: self.ledger.counts()) or {}
        health = self.health()
        in_flight = tuple(k.path for k, _, _ in self._in_flight.values())
        state = self.discovery.state()
        beat = Heartbeat(self._wall(), self._clock() - self._started_s, counts, len(self._waiting),
                         in_flight, self.pool.alive(), state.mode, health)
        self._safe(lambda: self.ledger.set_service_state({
            "pid": os.getpid(), "heartbeat_wall": beat.wall_time_s, "uptime_s": beat.uptime_s,
            "watch_dir": str(self.config.watch_dir), "waiting": len(self._waiting),
            "waiting_examples": {str(p): r for p, r in list(self._waiting.items())[:10]},
            "in_flight": list(in_flight), "workers": self.config.workers,
            "discovery": state.mode, "healthy": health.ok, "problems": list(health.problems),
        }))
        self._log.debug("heartbeat", counts=counts, waiting=len(self._waiting),
                        in_flight=len(in_flight), healthy=health.ok)
        self._notify("on_heartbeat", beat)


# ------------------------------------------------------------------------------------------
# the subcommand


def add_arguments(parser: Any) -> None:
    """Options of ``motionwatch watch``: the daemon's own, then the correction options.

    Integrations add their options here, before :func:`finalize_parser` (which gives every
    option its TOML key); their values arrive in ``Config.options``.
    """
    from daemon.settings.correction_options import add_correction_arguments
    from daemon.feed.listener import add_observer_arguments
    from daemon.series.resolver import add_series_arguments

    add_watch_arguments(parser)
    add_correction_arguments(parser)
    add_series_arguments(parser)
    add_observer_arguments(parser)
    finalize_parser(parser)


def build_observers(config: Config) -> list[ServiceObserver]:
    """The observers ``motionwatch watch`` runs with: the publisher (started) and systemd notify.

    Raises ConfigError for bad publishing/watchdog options or an endpoint that cannot be bound.
    """
    from daemon.system.logs import get_logger
    from daemon.feed.listener import build_observers as build

    return build(config, logger=get_logger())


def build_resolver(config: Config) -> MetadataResolver:
    """The metadata resolver ``motionwatch watch`` runs with: tilt series and dose bookkeeping.

    Raises
    ------
    ConfigError
        Bad tilt-series options (file-name pattern, dose per tilt, times).
    """
    from daemon.series.resolver import TiltSeriesResolver

    return TiltSeriesResolver.from_config(config)


def run(args: Any) -> int:
    """``motionwatch watch``: returns 0 after a clean stop, 78 on a configuration error."""
    try:
        config = load_config(args)
        resolver = build_resolver(config)
    except ConfigError as exc:
        _print_config_error(exc)
        return exitcodes.CONFIG
    from daemon.system.logs import configure_logging

    configure_logging(level=config.log_level)
    try:
        observers = build_observers(config)  # the publisher binds here, before READY=1
    except ConfigError as exc:
        _print_config_error(exc)
        return exitcodes.CONFIG
    try:
        return Service(config, observers=observers, resolver=resolver).run()
    finally:
        for observer in observers:  # also when run() returns early (state folder locked)
            close = getattr(observer, "close", None)
            if close is not None:
                close()


def _print_config_error(exc: ConfigError) -> None:
    """Every line of a configuration error on stderr, as errors (``<3>``) under journald."""
    from daemon.system.logs import running_under_journald

    prefix = "<3>" if running_under_journald() else ""
    for line in f"motionwatch watch: {exc}".splitlines():
        print(f"{prefix}{line}", file=sys.stderr)
