"""How often the daemon process runs Python's cyclic garbage collector.

CPython collects its youngest generation every 700 net allocations of container objects
(lists, dicts, tuples, dataclass instances), and promotes what survives two such collections to
the oldest generation; the oldest is collected whole once what was promoted since its last
collection exceeds a quarter of it. Each scan of the watched tree builds, for every movie on
disk, objects that live exactly one scan (observations, assignments, comparison records): with
700 allocations of patience they all reach the oldest generation, and the daemon walked its
whole heap (every state row and every listing, about 430,000 objects with 20,000 old movies on
disk) about once every second scan: ``benchmarks/bench_state_scale.py --old-rows 20000 --series
2 --old-on-disk --events --live-MB 100 --seconds 135 --steady-after 75 --cpython-gc`` measured
50 full collections taking 9.5 s of the 42.6 s the main loop spent scanning.

:func:`paced_garbage_collector` makes the youngest generation wait for
:data:`YOUNG_COLLECTION_ALLOCATIONS` allocations instead, so that objects of one scan die by
reference counting before they are promoted; the older generations keep CPython's thresholds
(so cycles are still collected, only later). Same benchmark without ``--cpython-gc``: one full
collection in 135 s; over the last 60 s the main loop scanned 9.4 s instead of 13.6 s, the
median resolver took 154 ms instead of 288 ms a scan, and the process used 48.3 s instead of
55.0 s of CPU. With 100,000 rows of archived sessions: 102 ms instead of 126 ms a scan.
Garbage in cycles waits for at most that many allocations more (a few MB).

The threshold is the process's, so only the command that owns the process (``motionwatch
watch``) sets it, while the service runs; the correction library never touches it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_COLLECTION_ALLOCATIONS", "paced_garbage_collector"]

#: Net allocations of container objects between collections of the youngest generation
#: (CPython's default: 700).
YOUNG_COLLECTION_ALLOCATIONS = 50_000


@contextmanager
def paced_garbage_collector() -> Iterator[None]:
    """Within: the youngest generation is collected every :data:`YOUNG_COLLECTION_ALLOCATIONS`
    allocations (the older generations' thresholds unchanged); after: the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
