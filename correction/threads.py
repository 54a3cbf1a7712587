"""Element-wise work on stacks split over threads (numpy releases the GIL in its loops).

numpy's element-wise passes run on one core while :mod:`scipy.fft` uses ``workers`` threads;
on a 2-core acquisition PC a movie's non-FFT work (phase ramps, leave-one-out references,
accumulations) would otherwise leave half the machine idle. ``workers`` has scipy.fft's meaning
everywhere: -1 = all cores, a positive number = that many threads, 1 = no threads (callers that
already run one item per thread pass 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["thread_count", "run_chunks"]


def thread_count(workers: int) -> int:
    """Threads for ``workers`` (-1 = the CPUs this process may use, -k = all but k - 1)."""
    if workers > 0:
        return int(workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores + 1 + int(workers))


def run_chunks(work: Callable[[int, int], None], n_items: int, workers: int) -> None:
    """Call ``work(lo, hi)`` on contiguous chunks covering ``range(n_items)``, one per thread.

    ``work`` must write disjoint outputs per item (or per chunk) and release the GIL for its
    bulk (numpy ufuncs and einsum do). With one thread or one item it runs in the caller.
    """
    k = max(1, min(thread_count(workers), n_items))
    if k == 1:
        if n_items:
            work(0, n_items)
        return
    bounds = [round(j * n_items / k) for j in range(k + 1)]
    with ThreadPoolExecutor(max_workers=k) as pool:
        for future in [pool.submit(work, lo, hi) for lo, hi in zip(bounds, bounds[1:])]:
            future.result()
