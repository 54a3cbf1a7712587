"""Read the next movie into the page cache while the workers correct the current ones.

A movie from a network share or a cold disk costs seconds to read (335 MB took 2.2 s from this
machine's disk, against 0.03 s from the page cache). While every worker is busy, the movie next
in line is handed to :class:`ReadAhead`, whose thread asks the kernel to read it
(``posix_fadvise(WILLNEED)``, in pieces of ``piece_bytes``: one call for a whole file reads
only its first few MiB). The worker that takes it later finds its pages in memory, so reading
one movie overlaps correcting another even with a single worker process.

A hint only: nothing is read into this process, a file already cached costs nothing, a file
that vanished is ignored, and a file larger than ``memory_fraction`` of the memory available
is left alone (its pages would push out those of the movies being corrected). Only for
executors whose workers read the files on this machine (``Executor.reads_files_here``).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["ReadAhead", "memory_available_bytes"]

_PIECE_BYTES = 8 << 20
_RECENT = 64  # paths remembered, so that a movie waiting for a worker is hinted once


def memory_available_bytes() -> int:
    """Memory available to new work without swapping (``MemAvailable`` of /proc/meminfo, bytes;
    free pages where that is missing)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class ReadAhead:
    """A background thread that asks the kernel to read the files it is told of.

    Parameters
    ----------
    piece_bytes : int
        Bytes per ``posix_fadvise`` call.
    memory_fraction : float
        Files larger than this fraction of :func:`memory_available_bytes` are skipped.
    available_bytes : callable
        Memory available now (bytes); for tests.

    Attributes
    ----------
    files, bytes, skipped : int
        Files read ahead, their bytes, files skipped (too large, unreadable, or no
        ``posix_fadvise`` on this platform).
    """

    def __init__(self, *, piece_bytes: int = _PIECE_BYTES, memory_fraction: float = 0.25,
                 available_bytes: Callable[[], int] = memory_available_bytes) -> None:
        self._piece = max(4096, int(piece_bytes))
        self._fraction = float(memory_fraction)
        self._available = available_bytes
        self._cond = threading.Condition()
        self._wanted: Path | None = None
        self._recent: collections.deque[Path] = collections.deque(maxlen=_RECENT)
        self._closed = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.files = 0
        self.bytes = 0
        self.skipped = 0

    def hint(self, path: str | Path) -> None:
        """Read ``path`` ahead (once; a newer hint replaces one not yet started)."""
        path = Path(path)
        with self._cond:
            if self._closed or path in self._recent:
                return
            self._recent.append(path)
            self._wanted = path
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="read-ahead",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no hint is waiting or being read (True), or ``timeout_s`` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._wanted is None and not self._busy,
                                       timeout_s)

    def close(self) -> None:
        """Stop the thread (a file being read is left after its current piece); a later hint
        starts a new one."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5.0)
        with self._cond:
            self._closed, self._thread, self._wanted = False, None, None

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted is not None or self._closed)
                if self._closed:
                    return
                path, self._wanted, self._busy = self._wanted, None, True
            try:
                self._advise(path)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _advise(self, path: Path) -> None:
        advise = getattr(os, "posix_fadvise", None)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            self.skipped += 1
            return
        try:
            size = os.fstat(fd).st_size
            if advise is None or size > self._fraction * self._available():
                self.skipped += 1
                return
            for offset in range(0, size, self._piece):
                if self._closed:
                    return
                advise(fd, offset, min(self._piece, size - offset), os.POSIX_FADV_WILLNEED)
            self.files += 1
            self.bytes += size
        except OSError:
            self.skipped += 1
        finally:
            os.close(fd)
