"""A :class:`~daemon.engine.dispatch.Dispatcher` over a real state database and three movie
files, with a pool of workers that only records the tasks it is given."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from recording_log import RecordingLog

from correction.params import CorrectionParams, DoseParams
from daemon.engine.dispatch import Dispatcher, DispatchSettings
from daemon.engine.faults import LedgerWrites
from daemon.events import MovieKey
from daemon.state.ledger import Ledger

MOVIE_NAMES = ("TS_01_001.mrc", "TS_01_002.mrc", "TS_01_003.mrc")


class RecordingPool:
    """``workers`` local workers that take a task each and then stay busy."""

    def __init__(self, workers: int = 1, *, reads_files_here: bool = True) -> None:
        self.workers, self.reads_files_here = workers, reads_files_here
        self.starts_when_submitted = True
        self.tasks: list = []

    def started(self) -> list:
        return []

    @property
    def idle(self) -> int:
        return max(0, self.workers - len(self.tasks))

    def submit(self, task) -> None:
        self.tasks.append(task)


def three_movie_dispatcher(tmp_path: Path, pool, *, read_ahead=None,
                           finished: Callable[..., None] = lambda *a: None,
                           log: RecordingLog | None = None
                           ) -> tuple[Dispatcher, Ledger, list[Path]]:
    """Three movies admitted (pending rows, in acquisition order by mtime) and a dispatcher
    over them, logging into ``log``; the caller closes the ledger."""
    ledger = Ledger(tmp_path / "state.sqlite")
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    movies = []
    for i, name in enumerate(MOVIE_NAMES):
        path = tmp_path / name
        path.write_bytes(b"x" * 1024)
        os.utime(path, ns=(10**18 + i, 10**18 + i))
        st = path.stat()
        ledger.add(MovieKey(str(path), st.st_size, st.st_mtime_ns, params.fingerprint()))
        movies.append(path)
    settings = DispatchSettings(watch_dir=tmp_path, out_dir=tmp_path / "out", params=params,
                                max_attempts=3, retry_delay_s=1.0, movie_timeout_s=600.0,
                                scratch_dir=None, optics={})
    log = RecordingLog() if log is None else log
    dispatcher = Dispatcher(settings, ledger=lambda: ledger, pool=lambda: pool, log=log,
                            finished=finished, wall_clock=time.time,
                            writes=LedgerWrites(log, clock=time.monotonic),
                            read_ahead=read_ahead)
    return dispatcher, ledger, movies
