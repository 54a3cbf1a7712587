"""Whether the service keeps pace with the microscope: movies acquired vs corrected per minute.

Acquisition is timed by the movies' own modification times (when the detector finished
writing them), so a backlog found at start-up counts at the rate it was recorded, not all at
once; correction by the wall-clock times of the movies recorded done. Both are counted over
the last ``window_s`` (10 minutes), correction over at most the service's uptime. The service
keeps up when nothing is pending, or when it corrects at least 90 % as fast as movies arrive
(the same rule as the dashboard's, :mod:`daemon.dashboard.state`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Pace", "PaceMeter", "KEEPING_UP_FRACTION"]

#: corrected per minute over arrived per minute at or above which the service keeps up
KEEPING_UP_FRACTION = 0.9


@dataclass(frozen=True, slots=True)
class Pace:
    """Movies per minute over the last ``window_s`` seconds.

    Attributes
    ----------
    arrived_per_min : float
        Movies whose modification time falls in the window.
    corrected_per_min : float or None
        Movies recorded done in the window; None before the service has run 60 s.
    keeping_up : bool or None
        Nothing pending, or corrected >= 0.9 x arrived; None while ``corrected_per_min`` is.
    window_s : float
    """

    arrived_per_min: float
    corrected_per_min: float | None
    keeping_up: bool | None
    window_s: float

    def to_record(self) -> dict[str, float | bool | None]:
        """JSON-ready, rates rounded to 0.01 per minute."""
        return {"arrived_per_min": round(self.arrived_per_min, 2),
                "corrected_per_min": None if self.corrected_per_min is None
                else round(self.corrected_per_min, 2),
                "keeping_up": self.keeping_up, "window_s": self.window_s}


class PaceMeter:
    """Counts arrivals (movie modification times) and corrections (wall times), both in
    seconds since the epoch, and gives the :class:`Pace` at a moment.

    Parameters
    ----------
    started_s : float
        Wall time the service started (s since the epoch).
    window_s : float
        Length of the window the rates are counted over (s).
    """

    def __init__(self, started_s: float, window_s: float = 600.0) -> None:
        self.started_s = float(started_s)
        self.window_s = float(window_s)
        self._arrived: deque[float] = deque()
        self._corrected: deque[float] = deque()

    def arrived(self, mtime_s: float) -> None:
        """A movie joined the queue; ``mtime_s`` is its modification time."""
        self._arrived.append(float(mtime_s))

    def corrected(self, wall_s: float) -> None:
        """A movie was recorded done at ``wall_s``."""
        self._corrected.append(float(wall_s))

    def pace(self, now_s: float, *, pending: int) -> Pace:
        """The rates at ``now_s`` with ``pending`` movies waiting for a worker."""
        since = now_s - self.window_s
        self._corrected = deque(t for t in self._corrected if t > since)
        self._arrived = deque(t for t in self._arrived if t > since)
        arrived = 60.0 * sum(1 for t in self._arrived if t <= now_s) / self.window_s
        running_s = min(self.window_s, now_s - self.started_s)
        corrected = 60.0 * len(self._corrected) / running_s if running_s >= 60.0 else None
        if corrected is None:
            keeping_up = None
        else:
            keeping_up = pending == 0 or corrected >= KEEPING_UP_FRACTION * arrived
        return Pace(arrived, corrected, keeping_up, self.window_s)
