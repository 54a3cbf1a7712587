"""Whether the service keeps pace with the microscope: the work waiting, in minutes, and movies
acquired vs corrected per minute.

The verdict is the backlog's: the service keeps up while nothing waits for a worker, or while
what waits would be done within ``MAX_BEHIND_MIN`` (5) minutes at the rate it corrects now
(``behind_min`` = waiting / corrected per minute). So a session that starts, or restarts, onto
more than it can correct, a copy that delivers movies with old modification times, a slow
steady overload (11 acquired a minute for 10 corrected) and a burst all say "falling behind"
once the backlog is five minutes of work, and a lunch break says "keeping up" once what is
left is under five minutes (the rates of the last ten minutes alone said the opposite in each).

"The rate it corrects now" is its rate while it has work: the movies corrected in the span over
the seconds of the span during which movies waited or were being corrected (heartbeat by
heartbeat). Over the whole span, idle time included, twelve movies that came after a quiet
quarter of an hour, corrected in 8 s, were "more than 5 minutes of work": a false "falling
behind" at every burst after a pause. Movies waiting with none corrected yet give no verdict
until they have had the service's work for ``MAX_BEHIND_MIN`` minutes (then: falling behind).

The rates are counted over the last ``window_s`` (10 minutes), or the service's uptime when
shorter, the same span for both: corrections by the wall times the movies were recorded done;
acquisitions by the wall times the service admitted the movies, except those on disk when it
started (listed by its start-up scan), dated by their modification times: a backlog recorded
before the start is not a burst of acquisitions (it is in ``behind_min``), while a copy with old
modification times that comes in later is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Pace", "PaceMeter", "MAX_BEHIND_MIN"]

#: minutes of work waiting beyond which the service is falling behind
MAX_BEHIND_MIN = 5.0
_MIN_SPAN_S = 60.0  # rates over less than this are not told


@dataclass(frozen=True, slots=True)
class Pace:
    """The service's pace at a moment.

    Attributes
    ----------
    arrived_per_min : float or None
        Movies first seen (acquired) per minute over the last ``window_s`` seconds, or the
        uptime when shorter; None before the service has run 60 s.
    corrected_per_min : float or None
        Movies recorded done per minute over the same span; None before 60 s.
    waiting : int
        Movies to correct: pending, or put back by trouble outside them (a full disk), or
        queued in a cluster (not those waiting out their own retry delay after a crash).
    behind_min : float or None
        Minutes of work waiting: ``waiting`` over the movies corrected per minute of the span's
        busy time (0 when nothing waits); None while nothing was corrected in the span (or
        before 60 s).
    keeping_up : bool or None
        Nothing waits, or ``behind_min`` <= :data:`MAX_BEHIND_MIN`; False when movies have
        waited through ``MAX_BEHIND_MIN`` minutes of busy time with none corrected; None
        before 60 s, and while movies wait that have not had that long.
    window_s : float
        The longest span the rates are counted over (s).
    span_s : float
        The span they are counted over now: ``window_s``, or the uptime when shorter (s).
    """

    arrived_per_min: float | None
    corrected_per_min: float | None
    waiting: int
    behind_min: float | None
    keeping_up: bool | None
    window_s: float
    span_s: float

    def to_record(self) -> dict[str, float | int | bool | None]:
        """JSON-ready, rates and minutes rounded to 0.01."""
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {"arrived_per_min": rounded(self.arrived_per_min),
                "corrected_per_min": rounded(self.corrected_per_min),
                "waiting": self.waiting, "behind_min": rounded(self.behind_min),
                "keeping_up": self.keeping_up, "window_s": self.window_s,
                "span_s": round(self.span_s, 1)}


class PaceMeter:
    """Counts acquisitions and corrections (wall times, s since the epoch) and gives the
    :class:`Pace` at a moment.

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
        self._seen: deque[float] = deque()  # wall times movies were admitted (s)
        self._corrected: deque[float] = deque()
        self._busy: deque[tuple[float, float]] = deque()  # (from, to) with work, wall s
        self._last_s: float | None = None  # the last pace() call: its time and whether
        self._last_had_work = False  # movies waited or were being corrected then

    def arrived(self, mtime_s: float, seen_s: float, *, on_disk_at_start: bool) -> None:
        """A movie joined the queue: its modification time and the wall time it was admitted;
        the first dates it when it was on disk when the service started, the second else."""
        self._arrived.append(float(mtime_s if on_disk_at_start else seen_s))
        self._seen.append(float(seen_s))

    def corrected(self, wall_s: float) -> None:
        """A movie was recorded done at ``wall_s``."""
        self._corrected.append(float(wall_s))

    def pace(self, now_s: float, *, waiting: int, running: int = 0) -> Pace:
        """The pace at ``now_s`` with ``waiting`` movies waiting for a worker and ``running``
        being corrected (called at every heartbeat: the busy time is counted between calls)."""
        span = min(self.window_s, now_s - self.started_s)
        since = now_s - span
        self._corrected = deque(t for t in self._corrected if t > now_s - self.window_s)
        self._arrived = deque(t for t in self._arrived if t > now_s - self.window_s)
        self._seen = deque(t for t in self._seen if t > now_s - self.window_s)
        self._count_busy(now_s, since, has_work=waiting > 0 or running > 0)
        if span < _MIN_SPAN_S:
            return Pace(None, None, int(waiting), None, None, self.window_s, max(span, 0.0))
        arrived = 60.0 * sum(1 for t in self._arrived if since < t <= now_s) / span
        n_corrected = sum(1 for t in self._corrected if since < t <= now_s)  # (clock back)
        corrected = 60.0 * n_corrected / span
        busy_s = sum(max(0.0, min(b, now_s) - max(a, since)) for a, b in self._busy)
        if waiting <= 0:
            behind, keeping_up = 0.0, True
        elif n_corrected > 0:
            behind = waiting / (60.0 * n_corrected / max(busy_s, 1.0))
            keeping_up = behind <= MAX_BEHIND_MIN
        elif busy_s >= MAX_BEHIND_MIN * 60.0:
            behind, keeping_up = None, False
        else:
            behind, keeping_up = None, None
        return Pace(arrived, corrected, int(waiting), behind, keeping_up, self.window_s, span)

    def _count_busy(self, now_s: float, since: float, *, has_work: bool) -> None:
        """Add the time since the last call that the service had work: all of it when movies
        waited or ran at the last call, else from the first movie admitted since, else all of
        it when movies wait now or one was corrected since (one that ran unseen between two
        calls). At the first call, the span up to now when movies wait or were corrected in
        it."""
        last = self._last_s
        if last is not None and now_s < last:  # the clock stepped back: what lies after now
            # is not busy time of the span (it was subtracted), and counting goes on from now
            self._busy = deque((a, min(b, now_s)) for a, b in self._busy if a < now_s)
            last = now_s
        if last is None:
            if has_work or any(t > since for t in self._corrected):
                self._busy.append((since, now_s))
        elif now_s > last:
            came = min((t for t in self._seen if last < t <= now_s), default=None)
            start = None
            if self._last_had_work:
                start = last
            elif came is not None and (has_work or any(came <= t <= now_s
                                                       for t in self._corrected)):
                start = came
            elif has_work or any(last < t <= now_s for t in self._corrected):
                start = last
            if start is not None:
                if self._busy and self._busy[-1][1] >= start:  # one slice while it lasts
                    self._busy[-1] = (self._busy[-1][0], now_s)
                else:
                    self._busy.append((start, now_s))
        self._last_s, self._last_had_work = now_s, has_work
        while self._busy and self._busy[0][1] <= now_s - self.window_s:
            self._busy.popleft()
