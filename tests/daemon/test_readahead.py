"""Read-ahead: the movie next in line is in the page cache before a worker reads it."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from daemon.engine.dispatch import Dispatcher, DispatchSettings
from daemon.engine.faults import LedgerWrites
from daemon.events import MovieKey
from daemon.state.ledger import Ledger
from daemon.work.readahead import ReadAhead

SIZE = 48 << 20


def resident_fraction(path: Path) -> float:
    """Fraction of the file's pages in the page cache (``mincore`` on a read-only map)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mapped:
        view = np.frombuffer(mapped, np.uint8)
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec) == 0
        del view
        return float(np.mean(np.frombuffer(vec, np.uint8) & 1))


def cold_file(path: Path, size: int = SIZE) -> Path:
    """A file written to disk and dropped from the page cache (skips where that is not
    possible, e.g. on tmpfs)."""
    with open(path, "wb") as fh:
        fh.write(np.random.default_rng(0).integers(0, 255, size, np.uint8).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if resident_fraction(path) > 0.1:
        pytest.skip("this file system keeps the file's pages (tmpfs?): nothing to read ahead")
    return path


def test_a_hinted_movie_is_read_into_the_page_cache_in_the_background(tmp_path):
    movie = cold_file(tmp_path / "next.mrc")
    read_ahead = ReadAhead()
    try:
        read_ahead.hint(movie)
        assert read_ahead.wait_idle(10.0)
        deadline = time.monotonic() + 10.0
        while resident_fraction(movie) < 0.99 and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel reads after the hints return
        assert resident_fraction(movie) >= 0.99
        assert (read_ahead.files, read_ahead.bytes, read_ahead.skipped) == (1, SIZE, 0)
        read_ahead.hint(movie)  # hinted once: not again
        assert read_ahead.wait_idle(5.0) and read_ahead.files == 1
    finally:
        read_ahead.close()


def test_a_movie_too_large_for_the_memory_available_or_gone_is_left_alone(tmp_path):
    movie = cold_file(tmp_path / "big.mrc")
    read_ahead = ReadAhead(available_bytes=lambda: 2 * SIZE)  # a quarter of it: too small
    try:
        read_ahead.hint(movie)
        assert read_ahead.wait_idle(10.0)
        read_ahead.hint(tmp_path / "vanished.mrc")
        assert read_ahead.wait_idle(10.0)
        time.sleep(0.2)
        assert resident_fraction(movie) < 0.1
        assert (read_ahead.files, read_ahead.skipped) == (0, 2)
    finally:
        read_ahead.close()


class _BusyPool:
    """One local worker: takes one task, then is busy."""

    reads_files_here = True

    def __init__(self) -> None:
        self.tasks: list = []

    @property
    def idle(self) -> int:
        return 0 if self.tasks else 1

    def submit(self, task) -> None:
        self.tasks.append(task)


class _Hints:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def hint(self, path) -> None:
        self.paths.append(str(path))


def _dispatcher(tmp_path: Path, pool, hints) -> tuple[Dispatcher, Ledger, list[Path]]:
    from correction.params import CorrectionParams, DoseParams

    ledger = Ledger(tmp_path / "state.sqlite")
    params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
    movies = []
    for i, name in enumerate(("TS_01_001.mrc", "TS_01_002.mrc", "TS_01_003.mrc")):
        path = tmp_path / name
        path.write_bytes(b"x" * 1024)
        os.utime(path, ns=(10**18 + i, 10**18 + i))  # acquisition order
        st = path.stat()
        ledger.add(MovieKey(str(path), st.st_size, st.st_mtime_ns, params.fingerprint()))
        movies.append(path)
    settings = DispatchSettings(watch_dir=tmp_path, out_dir=tmp_path / "out", params=params,
                                max_attempts=3, retry_delay_s=1.0, movie_timeout_s=600.0,
                                scratch_dir=None, optics={})
    log = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None,
                          error=lambda *a, **k: None)
    dispatcher = Dispatcher(settings, ledger=lambda: ledger, pool=lambda: pool, log=log,
                            finished=lambda *a: None, wall_clock=time.time,
                            writes=LedgerWrites(log, clock=time.monotonic),
                            read_ahead=hints)
    return dispatcher, ledger, movies


def test_with_every_worker_busy_the_movie_next_in_line_is_read_ahead(tmp_path):
    pool, hints = _BusyPool(), _Hints()
    dispatcher, ledger, movies = _dispatcher(tmp_path, pool, hints)
    try:
        dispatcher.dispatch()
        assert [t.movie_path for t in pool.tasks] == [movies[0]]
        assert hints.paths == [str(movies[1])]  # the next one, not claimed
        assert ledger.counts()["pending"] == 2
    finally:
        ledger.close()


def test_no_read_ahead_when_the_workers_read_the_files_elsewhere(tmp_path):
    pool, hints = _BusyPool(), _Hints()
    pool.reads_files_here = False  # a Dask cluster's workers
    dispatcher, ledger, _ = _dispatcher(tmp_path, pool, hints)
    try:
        dispatcher.dispatch()
        assert len(pool.tasks) == 1 and hints.paths == []
    finally:
        ledger.close()


def test_a_movie_that_grew_after_admission_is_superseded_quietly_not_quarantined(tmp_path):
    """A writer that wrote on after the movie was admitted: that version is set aside for the
    new one, which is admitted anew. It was logged as a warning, movie_quarantined, which
    alarms an operator for a movie that will be corrected."""
    pool, hints = _BusyPool(), _Hints()
    dispatcher, ledger, movies = _dispatcher(tmp_path, pool, hints)
    said = []
    dispatcher._log = SimpleNamespace(
        info=lambda event, **k: said.append(("info", event)),
        warning=lambda event, **k: said.append(("warning", event)),
        error=lambda event, **k: said.append(("error", event)))
    with open(movies[0], "ab") as fh:
        fh.write(b"more frames")
    try:
        dispatcher.dispatch()
        assert ("info", "movie_version_superseded") in said
        assert not [s for s in said if s[0] != "info"]
        assert [t.movie_path for t in pool.tasks] == [movies[1]]
    finally:
        ledger.close()
