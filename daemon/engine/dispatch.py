"""From the state database to the workers and back: ledger -> worker -> outputs -> ledger.

:class:`Dispatcher` gives pending movies to idle workers (oldest first), and records each outcome:
``done`` only after the worker renamed the outputs into place; a failure is retried after a
growing delay, then quarantined (a bad movie at once); environmental trouble (full disk, vanished
output folder) is retried without counting against the movie.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.engine.outputs import source_identity, summarise
from daemon.events import SOURCE_KEY, MovieEvent, MovieKey, movie_stem, output_dir_for
from daemon.state.codec import metadata_from_json
from daemon.work.workers import Outcome, Task

__all__ = ["Dispatcher", "InFlight", "MAX_RETRY_DELAY_S"]

MAX_RETRY_DELAY_S = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class InFlight:
    """A movie a worker has: its key, attempt number and stored metadata (row JSON)."""

    key: MovieKey
    attempt: int
    metadata: dict[str, Any]


class Dispatcher:
    """Feeds the worker pool from the ledger and records what comes back.

    Parameters
    ----------
    config : Config
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
    """

    def __init__(self, config: Any, *, ledger: Callable[[], Any], pool: Callable[[], Any],
                 log: Any, finished: Callable[[str, MovieEvent], None],
                 wall_clock: Callable[[], float]) -> None:
        self.config = config
        self._ledger = ledger
        self._pool = pool
        self._log = log
        self._finished = finished
        self._wall = wall_clock
        self.in_flight: dict[int, InFlight] = {}
        self.unrecorded: list[Outcome] = []
        self._next_task = 0
        self._env_failures: dict[MovieKey, int] = {}

    def _safe(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except sqlite3.Error as exc:
            self._log.error("ledger_write_failed", error=str(exc))
            return None

    # --- ledger -> workers ----------------------------------------------------------------
    def dispatch(self) -> None:
        """Give pending movies to idle workers."""
        cfg = self.config
        pool = self._pool()
        while pool.idle > 0:
            row = self._safe(lambda: self._ledger().next_pending(now=self._wall()))
            if row is None:
                return
            key = row.key
            problem = _stale(row.key)
            if problem is not None:
                self._safe(lambda: self._ledger().mark_failed(key, problem, quarantine=True,
                                                              count=False))
                self._log.warning("movie_quarantined", movie=key.path, reason=problem,
                                  stage="dispatch")
                continue
            attempt = self._safe(lambda: self._ledger().claim(key))
            if attempt is None:
                return
            stored = metadata_from_json(row.metadata)
            params = cfg.params if stored.dose is None else dataclasses.replace(cfg.params,
                                                                                dose=stored.dose)
            extra = {**stored.extra_record, SOURCE_KEY: source_identity(key)}
            movie = Path(key.path)
            task_id = self._next_task
            self._next_task += 1
            out_dir = output_dir_for(movie, watch_dir=cfg.watch_dir, out_dir=cfg.out_dir)
            pool.submit(Task(task_id, movie, out_dir, cfg.out_dir, params, movie_stem(movie),
                             extra))
            self.in_flight[task_id] = InFlight(key, attempt, row.metadata)
            self._log.info("movie_started", movie=key.path, attempt=attempt,
                           **dict(stored.log_context))

    def abandon(self) -> None:
        """Second signal: give the movies in hand back to the ledger (redone at next start)."""
        pool = self._pool()
        for task in pool.abandon() if pool is not None else []:
            entry = self.in_flight.pop(task.task_id, None)
            if entry is None:
                continue
            self._safe(lambda: self._ledger().release(entry.key))
            self._log.warning("movie_abandoned", movie=entry.key.path,
                              note="second signal: stopped at once; redone at next start")

    def retry_unrecorded(self) -> None:
        """Record outcomes whose ledger write failed earlier."""
        pending, self.unrecorded = self.unrecorded, []
        for outcome in pending:
            self.record(outcome)

    # --- workers -> ledger -> listeners ---------------------------------------------------
    def record(self, outcome: Outcome) -> None:
        """Record one outcome in the ledger, then tell the listeners."""
        cfg = self.config
        entry = self.in_flight.get(outcome.task_id)
        if entry is None:
            return
        key, attempt, meta = entry.key, entry.attempt, entry.metadata
        log = self._log.bind(movie=key.path, **dict(meta.get("log_context") or {}))
        ledger = self._ledger()
        try:
            if outcome.ok:
                ledger.mark_done(key, outputs=outcome.outputs, timings=outcome.timings_s,
                                 summary=summarise(outcome.record, outcome.timings_s))
                self._env_failures.pop(key, None)
                log.info("movie_done", attempt=attempt, drift=outcome.record.get("drift"),
                         timings_s=dict(outcome.timings_s), frames=outcome.record.get("frames"),
                         outputs=dict(outcome.outputs))
                self.in_flight.pop(outcome.task_id)
                self._finished("on_movie_done", MovieEvent(
                    Path(key.path), key, "done", attempt, outcome.outputs, outcome.record,
                    outcome.timings_s, None, meta))
                return
            status = self._record_failure(ledger, key, attempt, outcome, log)
        except sqlite3.Error as exc:
            log.error("ledger_write_failed", error=str(exc), note="will retry recording")
            self.unrecorded.append(outcome)
            return
        self.in_flight.pop(outcome.task_id)
        self._finished("on_movie_failed", MovieEvent(Path(key.path), key, status, attempt,
                                                     timings_s=outcome.timings_s,
                                                     error=outcome.error, metadata=meta))

    def _record_failure(self, ledger: Any, key: MovieKey, attempt: int, outcome: Outcome,
                        log: Any) -> str:
        cfg = self.config
        if outcome.kind == "environment":
            n = self._env_failures.get(key, 0) + 1
            self._env_failures[key] = n
            delay = min(MAX_RETRY_DELAY_S, max(cfg.retry_delay_s, 1.0) * 2 ** (n - 1))
            status = ledger.mark_failed(key, outcome.error or "", quarantine=False, count=False,
                                        retry_delay_s=delay)
            log.error("movie_retry_later", reason=outcome.error, retry_in_s=delay,
                      note="output folder or disk trouble; not counted against the movie")
            return status
        row = ledger.get(key)
        failures = (row.failures if row else 0) + 1
        quarantine = outcome.kind == "data" or failures >= cfg.max_attempts
        delay = min(MAX_RETRY_DELAY_S, cfg.retry_delay_s * 2 ** (failures - 1))
        status = ledger.mark_failed(key, outcome.error or outcome.kind, quarantine=quarantine,
                                    retry_delay_s=delay)
        if quarantine:
            log.error("movie_quarantined", reason=outcome.error, kind=outcome.kind,
                      attempt=attempt, failures=failures)
        else:
            log.warning("movie_failed", reason=outcome.error, kind=outcome.kind,
                        attempt=attempt, failures=failures, retry_in_s=delay)
        return status


def _stale(key: MovieKey) -> str | None:
    """Why a pending movie can no longer be corrected as recorded (gone or changed), or None."""
    try:
        st = os.stat(key.path)
    except FileNotFoundError:
        return "movie file vanished before correction"
    except OSError as exc:
        return f"cannot stat movie: {exc.strerror or exc}"
    if (st.st_size, st.st_mtime_ns) != (key.size, key.mtime_ns):
        return "movie file changed before correction (the new version is handled separately)"
    return None
