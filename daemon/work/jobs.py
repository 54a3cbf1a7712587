"""Short jobs beside the movie workers (series assembly), each in a process of its own.

:class:`JobRunner` runs a picklable function in one ``spawn``-ed worker process that ignores
SIGINT/SIGTERM (the daemon decides when it stops) and dies with the daemon
(:mod:`daemon.work.orphans`: a killed daemon's assembly does not go on writing a series' files
beside the next daemon's), started on first use, and again after it died; ``run_job`` returns
a :class:`concurrent.futures.Future` the caller polls. Like the movie workers, a job never
logs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from daemon.work.orphans import die_with_parent

__all__ = ["JobRunner"]


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
                initializer=die_with_parent, initargs=(os.getpid(),))
        return self._executor

    def close(self) -> None:
        """Cancel queued jobs; a running one is left to finish on its own (its output is
        written atomically, and redone at the next start if not recorded)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
