"""Process memory settings for correcting a movie: reuse freed blocks, no synchronous huge pages.

Correcting a 4K movie allocates hundreds of MB in blocks of 1-75 MB (FFT results, kept
spectra, tile batches). Two defaults of the C library and numpy make that slow:

* glibc unmaps freed blocks above its mmap threshold and maps them afresh at the next request,
  so every block pays its page faults again, and each fault has the kernel clear a 4 KiB
  page (``clear_page_erms`` was 10 % of all CPU time of a K3 movie in ``perf``). While a
  movie is corrected, no block is mapped on its own (``M_MMAP_MAX`` 0): every block comes
  from the heap, freed ones are reused whatever their size (the threshold itself cannot be
  set above 32 MiB), and the heap's free memory is handed back to the system afterwards
  (``malloc_trim``), so a long-lived worker does not hold its peak. Measured here, one
  ``correct`` each: K3 5760 x 4092 x 40 with local motion, 685,000 -> 412,000 page faults,
  system time 3.2-4.8 -> 2.4-2.7 s, wall 14.6-15.8 -> 13.3-13.5 s; super-resolution
  11520 x 8184 x 20 binned by 2, 1.74 million -> 457,000 faults, system time 11.9 -> 4.7 s,
  wall 24.7 -> 18.6 s; peak resident memory 1.69 -> 1.67 GB and 2.04 -> 2.17 GB (freed
  blocks stay resident until reused). The heap's free top is still handed back once it exceeds
  1 GiB (``M_TRIM_THRESHOLD``), which a movie whose heap passed that leaves when it is done (a
  K3 movie decoded in memory, an EER movie's fractions): the next movie faults it in again.
  Never trimming within the block was measured and not kept: ``motionwatch correct`` on five
  copies of the K3 x 40 LZW movie with local motion took 14.4-19.0 s per movie after the first
  (17.2-19.8 s trimmed), and a 4096^2 EER movie of 1,000 raw frames 11.3-13.8 s (13.1-13.9 s),
  but the process's peak rose from 1.67-1.69 to 1.93 GB from the second K3 movie on (the heap's
  extent over two movies, held instead of handed back; the bound is 2 GB), and most of the time
  saved is this virtual machine's: a page its host had taken back cost 25-30 us to fault in,
  against about 2 us otherwise. Keeping only the block of the decoded movie for the next movie
  (the rest of the heap then stays below the threshold) came to the same: 15.4-16.8 s and 1.93
  GB. All threads allocate from one arena (``M_ARENA_MAX`` 1): the band threads of the local
  sums would otherwise each get a heap of at most 64 MiB that glibc unmaps whenever it empties,
  and fault it in again for the next band (about 60,000 extra faults per 4K movie here).
  After the block only ``M_MMAP_MAX`` is restored: the arena limit, the 32 MiB mmap threshold
  and the 1 GiB trim threshold stay set for the rest of the process (glibc has no call that
  gives back its self-adjusting thresholds once they were set; a program that embeds the
  library and minds its allocator should correct its movies in a process of their own, as
  the daemon's workers do).
* numpy asks the kernel for transparent huge pages on every large array
  (``madvise(MADV_HUGEPAGE)``). With the kernel's default ``defrag=madvise`` a fault in such
  an array compacts memory synchronously: on the 2-core test machine, first touching a fresh
  75 MB array took 0.16 s with the advice and 0.036 s without it (``benchmarks/bench_io.py
  --faults``), and the 10 kept spectra of a 4K movie pay that once each. The advice is off
  while a movie is corrected and restored afterwards.

:func:`zeros_written` makes zero-filled arrays that are then accumulated into without the
kernel's zero-page detour (see there);
:func:`drop_mapped_pages` keeps a memory-mapped movie's resident part small;
:func:`peak_resident_MB` is the process's own peak resident memory.
:func:`movie_memory_settings` is a context manager; the settings are process-wide (C library
and numpy), so they are applied around each movie, not at import.
"""

from __future__ import annotations

import ctypes
import mmap
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["movie_memory_settings", "zeros_written", "drop_mapped_pages", "peak_resident_MB"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8  # mallopt
_KEEP_FREED_BYTES = 32 << 20
_DEFAULT_MMAP_MAX = 65536  # glibc's default number of blocks mapped on their own
_TRIM_THRESHOLD_BYTES = 1 << 30
_MADV_DONTNEED = 4


@lru_cache(maxsize=1)
def _glibc() -> Any | None:
    """glibc, or None (another C library or platform: the allocator is left alone)."""
    try:
        lib = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


def _numpy_hugepage(enabled: bool | None) -> bool | None:
    """Set numpy's huge-page advice (None: leave it); returns the previous setting, or None
    where this numpy has no such switch."""
    try:
        from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
    except ImportError:  # pragma: no cover - numpy < 2 or another platform
        return None
    previous = bool(_get_madvise_hugepage())
    if enabled is not None:
        _set_madvise_hugepage(enabled)
    return previous


class _Depth:
    """The :func:`movie_memory_settings` blocks open in this process, and numpy's huge-page
    advice from before the first (the settings are process-wide, so the count is too)."""

    lock = threading.Lock()
    open_blocks = 0
    numpy_advice: bool | None = None


@contextmanager
def movie_memory_settings() -> Iterator[None]:
    """Within the block: every block comes from the heap and freed ones are reused, and numpy
    gives no huge-page advice; afterwards the heap's free memory is returned, large blocks
    are mapped on their own again and numpy's advice is restored.

    Blocks nest, also across threads: the first to open applies the settings and the last to
    close undoes them. A caller that corrects several movies in a row (``motionwatch correct``
    on a list, a worker with movies waiting) opens one around them all, so that each movie
    reuses the memory the one before freed instead of faulting it in afresh (about 137,000
    faults per 4096^2 x 10 movie with local motion), and the memory is returned once the run
    is over.
    """
    lib = _glibc()
    with _Depth.lock:
        _Depth.open_blocks += 1
        if _Depth.open_blocks == 1:
            if lib is not None:
                lib.mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)
                lib.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
                lib.mallopt(_M_ARENA_MAX, 1)
                lib.mallopt(_M_MMAP_MAX, 0)
            _Depth.numpy_advice = _numpy_hugepage(False)
    try:
        yield
    finally:
        with _Depth.lock:
            _Depth.open_blocks -= 1
            if _Depth.open_blocks == 0:
                if _Depth.numpy_advice is not None:
                    _numpy_hugepage(_Depth.numpy_advice)
                if lib is not None:
                    lib.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                    lib.malloc_trim(0)


def zeros_written(shape: int | tuple[int, ...], dtype: np.typing.DTypeLike = np.float32
                  ) -> np.ndarray:
    """A zero-filled array whose pages are written at once, for sums accumulated in place.

    ``np.zeros`` takes fresh memory from the kernel untouched; an array accumulated into
    (``+=``) then reads each page before writing it, and the kernel first maps the read to
    its shared zero page, then on the write replaces that mapping and flushes the TLB of every
    CPU that runs the process: two faults and an inter-processor interrupt per 4 KiB page.
    Writing the zeros first costs one fault per page. Measured on the 2-core test machine,
    eight 67 MB arrays accumulated from two threads: 1.2-1.4 s with ``np.zeros``, 0.19-0.25 s
    with this (system time 2.2-2.6 against 0.24-0.35 s).
    """
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


def drop_mapped_pages(part: np.ndarray) -> None:
    """Unmap the resident pages of a C-contiguous piece of a read-only file mapping.

    The pages of a memory-mapped movie count in the process's resident memory once read and
    stay there: a pass over a 60-frame super-resolution movie would hold all of it. Dropping
    the pages of what has been used (``madvise(MADV_DONTNEED)``; the file is unchanged and a
    later access reads it again) keeps the resident part to the frames at hand.
    """
    if not isinstance(part, np.memmap) or part.size == 0 or not part.flags.c_contiguous:
        return
    lib = _glibc()
    if lib is None or not hasattr(lib, "madvise"):
        return
    start = part.ctypes.data
    aligned = start - start % mmap.PAGESIZE
    lib.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(start + part.nbytes - aligned),
                _MADV_DONTNEED)


def peak_resident_MB() -> float:
    """Peak resident memory of this process so far (MiB): ``VmHWM`` of /proc/self/status.

    Unlike ``getrusage``'s ``ru_maxrss``, which a process started by fork and exec inherits
    from its parent (a benchmark that rendered a 14 GB movie reported 14 GB for every child),
    ``VmHWM`` starts afresh with the new program. ``ru_maxrss`` where /proc is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
