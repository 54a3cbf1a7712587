"""The environment failing, as the engine sees it: the state database that cannot be written,
and the output side (or the workers) that cannot be used. Neither is any movie's fault.

:class:`LedgerWrites` logs ``ledger_write_failed`` once, then at most once a minute with how many
were suppressed, and ``ledger_write_recovered`` when a write succeeds again; while it fails, the
service is unhealthy. :class:`Pause` holds all correction back with a growing delay (1 s doubling,
at most 300 s) while the output side or the workers fail, and is cleared by the first success;
the delay doubles once per round of retries, not once per movie that was in flight when the
trouble began (six workers' movies failing on one full disk held correction for minutes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LedgerWrites", "Pause", "MAX_PAUSE_S", "RETRY_NOTE"]

MAX_PAUSE_S = 300.0
#: what to do about a quarantined movie, said with it
RETRY_NOTE = ("not corrected; once the cause is mended (a file written again, a setting given: "
              "restart with it), `motionwatch retry OUT` requeues it")
T = TypeVar("T")


class LedgerWrites:
    """Whether the state database can be written, with a rate-limited error log.

    Parameters
    ----------
    log : structlog-like logger
    clock : callable
        Monotonic clock (s).
    every_s : float
        Shortest interval between two ``ledger_write_failed`` lines (s).
    """

    def __init__(self, log: Any, clock: Callable[[], float], *, every_s: float = 60.0) -> None:
        self._log = log
        self._clock = clock
        self._every_s = every_s
        self._last_logged: float | None = None
        self._suppressed = 0
        self._logged_failure = False
        self.error: str | None = None

    def failed(self, exc: BaseException, **context: Any) -> None:
        """A write failed: log it (rate-limited) and remember it."""
        self.error = " ".join(str(exc).split()) or type(exc).__name__
        now = self._clock()
        if self._last_logged is None or now - self._last_logged >= self._every_s:
            extra = {"suppressed": self._suppressed} if self._suppressed else {}
            self._log.error("ledger_write_failed", error=self.error, **context, **extra,
                            note="state database cannot be written; correction paused, "
                                 "retried until it can")
            self._last_logged = now
            self._suppressed = 0
            self._logged_failure = True
        else:
            self._suppressed += 1

    def succeeded(self) -> None:
        """A write went through (the rate limit stands: a database that fails on and off is
        still reported at most once a minute)."""
        if self._logged_failure:
            self._log.warning("ledger_write_recovered", previous_error=self.error,
                              suppressed=self._suppressed)
            self._logged_failure = False
        self.error = None

    def guard(self, action: Callable[[], T], *, write: bool = True, **context: Any) -> T | None:
        """Run ``action``; None (and :meth:`failed`) on ``sqlite3.Error``. Only a ``write``
        that goes through is :meth:`succeeded`: reads go through on a full disk too (a read
        between two failed writes said 'recovered' at once, and hid the outage)."""
        try:
            result = action()
        except sqlite3.Error as exc:
            self.failed(exc, **context)
            return None
        if write:
            self.succeeded()
        return result

    def problem(self) -> str | None:
        """A health problem line while writes fail."""
        return None if self.error is None else f"state database cannot be written ({self.error})"


class Pause:
    """A back-off shared by all movies while something outside them fails.

    Parameters
    ----------
    clock : callable
        Monotonic clock (s): a wall clock stepped back would hold correction back.
    first_s : float
        First delay (s); doubled per consecutive failure, capped at :data:`MAX_PAUSE_S`.
    """

    def __init__(self, clock: Callable[[], float], *, first_s: float = 1.0) -> None:
        self._clock = clock
        self._first_s = max(first_s, 0.1)
        self.streak = 0
        self.until: float = 0.0
        self.reason: str | None = None

    def next_delay_s(self) -> float:
        """How long correction waits after a failure now (s): what is left of the pause
        running, else the next delay of the streak (nothing changes until :meth:`failed`)."""
        if self.active:
            return self.until - self._clock()
        return min(MAX_PAUSE_S, self._first_s * 2 ** self.streak)

    def failed(self, reason: str, delay_s: float) -> None:
        """A failure outside the movies: a new pause of ``delay_s``, or, while one runs (the
        other movies in flight when the trouble began), the same pause."""
        self.reason = reason
        if self.active:
            return
        self.streak += 1
        self.until = self._clock() + delay_s

    def cleared(self) -> None:
        self.streak = 0
        self.reason = None
        self.until = 0.0

    @property
    def active(self) -> bool:
        """True while correction must wait."""
        return self.reason is not None and self._clock() < self.until
