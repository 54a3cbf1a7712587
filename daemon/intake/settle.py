"""Says when a file has stopped changing: size and mtime held across scans spanning a settle time.

A candidate is *settled* when the same ``(size, mtime_ns)`` pair has been observed in at least
``min_scans`` scans (default 2) and the local time between the first and the latest of those
observations is at least ``settle_time_s``. Observed values are compared only with each other:
a file's mtime is never compared with the local clock, because the camera PC that writes it may
keep a different time. The clock is injected (``time.monotonic`` by default) so tests can drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from daemon.events import Observation

__all__ = ["Observation", "Settler"]


@dataclass(slots=True)
class _Track:
    size: int
    mtime_ns: int
    first_seen_s: float  # local clock when this (size, mtime) was first observed
    scans: int  # scans that observed this same (size, mtime)


class Settler:
    """Tracks candidates across scans and reports which have settled.

    Parameters
    ----------
    settle_time_s : float
        Minimum local time (s) spanned by the identical observations.
    min_scans : int
        Minimum number of scans that must observe the identical ``(size, mtime_ns)``.
    clock : callable returning float, optional
        Local monotonic clock in seconds (``time.monotonic`` by default).
    """

    def __init__(self, settle_time_s: float, *, min_scans: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settle_time_s < 0:
            raise ValueError(f"settle_time_s must be >= 0 s, got {settle_time_s}")
        if min_scans < 2:
            raise ValueError(f"min_scans must be >= 2, got {min_scans}")
        self._settle_time_s = settle_time_s
        self._min_scans = min_scans
        self._clock = clock
        self._tracks: dict[Path, _Track] = {}

    def update(self, observations: Iterable[Observation]) -> list[Observation]:
        """Record one complete scan; return the observations that are settled now.

        Files absent from this scan are forgotten (a file that reappears starts over). A file whose
        size or mtime changed starts over. Settled files keep being reported on every later scan
        while unchanged; the caller decides what it has already handled.
        """
        now = self._clock()
        seen: dict[Path, _Track] = {}
        settled: list[Observation] = []
        for obs in observations:
            track = self._tracks.get(obs.path)
            if track is None or (track.size, track.mtime_ns) != (obs.size, obs.mtime_ns):
                track = _Track(obs.size, obs.mtime_ns, now, 1)
            else:
                track.scans += 1
            seen[obs.path] = track
            if track.scans >= self._min_scans and now - track.first_seen_s >= self._settle_time_s:
                settled.append(obs)
        self._tracks = seen
        return settled

    def stable_for_s(self, path: Path) -> float | None:
        """Local seconds the file has looked the same, or None if not tracked."""
        track = self._tracks.get(path)
        return None if track is None else self._clock() - track.first_seen_s

    def __len__(self) -> int:
        return len(self._tracks)
