"""Where the frames of a compressed movie go once decoded: memory, or an unnamed file.

A memory-mapped MRC movie costs no memory of its own: its pages are read as used and dropped
again (:func:`correction.allocator.drop_mapped_pages`). A compressed movie (LZW TIFF, EER) must
be decoded first, and decoded in memory it grows with its frame count: a 60-frame K3
super-resolution LZW TIFF is 5.7 GB of uint8 frames before any work. :class:`FrameSink`
keeps decoded frames in memory up to ``budget_bytes`` (1 GiB, the budget the pipeline keeps
for a mapped movie's resident pages) and beyond it writes them, as they are decoded, to an
unnamed temporary file in ``spill_dir``; the reader then hands out a read-only memory map of
that file, which the pipeline treats as it treats an MRC: memory no longer grows with the
frame count.

The file has no name (``O_TMPFILE`` where the file system has it, else created and unlinked
at once), so nothing is left behind however the process ends; its space is freed when the last
map of it goes. Choose ``spill_dir`` on a disk, not a RAM-backed ``/tmp`` (tmpfs pages are
memory): :func:`correction.pipeline.correct_movie` uses the output folder. A write that fails
(full disk, quota, read-only) raises the ``OSError`` with its errno, which the daemon treats
as a problem of the machine, not of the movie.
"""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["FrameSink", "SPILL_OVER_BYTES"]

#: decoded movies larger than this go to a temporary file (when a spill folder is given)
SPILL_OVER_BYTES = 1 << 30


class FrameSink:
    """Decoded frames, shape ``(n, ny, nx)``, written in blocks of consecutive frames.

    Use: ``block = sink.target(i0, i1)``, decode frames ``i0:i1`` into ``block``, then
    ``sink.commit(i0, block)``; finally ``sink.frames()``. ``target`` and ``commit`` may be
    called from several threads for different frames. In memory, ``target`` is a view of the
    result and ``commit`` does nothing; spilled, ``target`` is a fresh buffer that ``commit``
    hands to a writer thread (``os.pwrite``: the decoded pages never enter this process's
    mapping, so they do not count in its resident memory), so that the next block is decoded
    while this one is written. One write is in flight at a time: ``commit`` first waits for
    the one before, so at most two blocks are held (the one written, the one decoded). A
    60-frame K3 super-resolution LZW TIFF (5.3 GiB decoded) in blocks of two pages, on the
    2-core test machine (``benchmarks/bench_io.py --spill``, a fresh process per read): 20.8-28.6
    s, against 26.3-34.5 s with each block written before the next was decoded (14.4-18.8 s
    decoded in memory; writing 5.3 GiB into the page cache alone costs this virtual machine 20
    s of CPU). A failed write raises its ``OSError`` at the next ``commit`` or at ``frames``.

    Parameters
    ----------
    shape : (int, int, int)
        Frames, rows, columns.
    dtype : numpy dtype
    spill_dir : Path, optional
        Folder for the temporary file; None keeps every movie in memory.
    budget_bytes : int, optional
        Largest movie kept in memory when ``spill_dir`` is given; default
        :data:`SPILL_OVER_BYTES`.
    zeroed : bool
        Targets start at zero (for decoders that accumulate, e.g. EER fractions).
    """

    def __init__(self, shape: tuple[int, int, int], dtype: np.dtype | type, *,
                 spill_dir: str | Path | None = None, budget_bytes: int | None = None,
                 zeroed: bool = False) -> None:
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self.zeroed = zeroed
        self.frame_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        nbytes = self.shape[0] * self.frame_bytes
        budget = SPILL_OVER_BYTES if budget_bytes is None else int(budget_bytes)
        self.spilled = spill_dir is not None and nbytes > budget
        self._file = None
        self._array: np.ndarray | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None  # the write in flight
        self._lock = threading.Lock()
        if self.spilled:
            self._file = tempfile.TemporaryFile(dir=spill_dir)  # unnamed: nothing left behind
            try:
                os.ftruncate(self._file.fileno(), nbytes)  # sparse until written
            except OSError:
                self._file.close()
                raise
        else:
            self._array = (np.zeros if zeroed else np.empty)(self.shape, self.dtype)

    def target(self, i0: int, i1: int) -> np.ndarray:
        """An array of shape ``(i1 - i0, ny, nx)`` to decode frames ``i0:i1`` into."""
        if self._array is not None:
            return self._array[i0:i1]
        return (np.zeros if self.zeroed else np.empty)((i1 - i0,) + self.shape[1:], self.dtype)

    def commit(self, i0: int, block: np.ndarray) -> None:
        """Store the decoded frames ``block`` as frames ``i0, i0 + 1 ...``."""
        if self._array is not None:
            return
        data = np.ascontiguousarray(block, self.dtype)
        with self._lock:
            self._wait()  # one write in flight; raises the one before's error
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="spill-writer")
            self._pending = self._writer.submit(self._write, data, i0 * self.frame_bytes)

    def _write(self, block: np.ndarray, offset: int) -> None:
        data = memoryview(block.reshape(-1).view(np.uint8))
        while len(data):
            written = os.pwrite(self._file.fileno(), data, offset)
            data, offset = data[written:], offset + written

    def _wait(self) -> None:
        """Wait for the write in flight (raising its error); call with the lock held."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def frames(self) -> np.ndarray:
        """All frames: the in-memory array, or a read-only memory map of the spill file."""
        if self._array is not None:
            return self._array
        try:
            with self._lock:
                self._wait()
            return np.memmap(self._file, dtype=self.dtype, mode="r", shape=self.shape)
        finally:  # the map keeps its own handle on the (unnamed) file
            self.close()

    def close(self) -> None:
        """Wait for a write in flight (its error is not raised: the caller is already failing
        or done), stop the writer and release the file handle (a map made by :meth:`frames`
        keeps the file alive)."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.exception()  # waits; an error here is the caller's to have seen
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
