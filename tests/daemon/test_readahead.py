"""Read-ahead: the movie next in line is in the page cache before a worker reads it."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

import numpy as np
import pytest

from dispatch_harness import RecordingPool, three_movie_dispatcher  # tests/helpers
from recording_log import RecordingLog

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


class _Hints:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def hint(self, path) -> None:
        self.paths.append(str(path))


def test_with_every_worker_busy_the_movie_next_in_line_is_read_ahead(tmp_path):
    pool, hints = RecordingPool(), _Hints()
    dispatcher, ledger, movies = three_movie_dispatcher(tmp_path, pool, read_ahead=hints)
    try:
        dispatcher.dispatch()
        assert [t.movie_path for t in pool.tasks] == [movies[0]]
        assert hints.paths == [str(movies[1])]  # the next one, not claimed
        assert ledger.counts()["pending"] == 2
    finally:
        ledger.close()


def test_no_read_ahead_when_the_workers_read_the_files_elsewhere(tmp_path):
    pool, hints = RecordingPool(reads_files_here=False), _Hints()  # a Dask cluster's workers
    dispatcher, ledger, _ = three_movie_dispatcher(tmp_path, pool, read_ahead=hints)
    try:
        dispatcher.dispatch()
        assert len(pool.tasks) == 1 and hints.paths == []
    finally:
        ledger.close()


def test_a_movie_that_grew_after_admission_is_superseded_quietly_not_quarantined(tmp_path):
    """A writer that wrote on after the movie was admitted: that version is set aside for the
    new one, which is admitted anew. It was logged as a warning, movie_quarantined, which
    alarms an operator for a movie that will be corrected."""
    pool, log = RecordingPool(), RecordingLog()
    dispatcher, ledger, movies = three_movie_dispatcher(tmp_path, pool, read_ahead=_Hints(),
                                                        log=log)
    with open(movies[0], "ab") as fh:
        fh.write(b"more frames")
    try:
        dispatcher.dispatch()
        said = [(level, event) for level, event, _ in log.events]
        assert ("info", "movie_version_superseded") in said
        assert not [s for s in said if s[0] not in ("debug", "info")]
        assert [t.movie_path for t in pool.tasks] == [movies[1]]
    finally:
        ledger.close()
