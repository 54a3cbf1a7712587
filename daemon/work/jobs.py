"""Short jobs beside the movie workers (series assembly), each in a process of its own.

:class:`JobRunner` runs a picklable function in one ``spawn``-ed worker process that ignores
SIGINT/SIGTERM (the daemon decides when it stops), started on first use, and again after it
died; ``run_job`` returns a :class:`concurrent.futures.Future` the caller polls. Like the movie
workers, a job never logs.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["JobRunner"]


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class JobRunner:
    """One worker process for background jobs (at most ``max_workers`` at a time)."""

    def __init__(self, max_workers: int = 1) -> None:
        self.max_workers = max_workers
        self._executor: ProcessPoolExecutor | None = None

    def run_job(self, function: Callable[..., Any], *args: Any) -> Future:
        """Run ``function(*args)`` in the job process; the Future holds its result or error.
        A job process that died (killed: out of memory ...) is replaced by a new one."""
        try:
            return self._pool().submit(function, *args)
        except BrokenProcessPool:
            self.close()
            return self._pool().submit(function, *args)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.max_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_signals)
        return self._executor

    def close(self) -> None:
        """Cancel queued jobs; a running one is left to finish on its own (its output is
        written atomically, and redone at the next start if not recorded)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
