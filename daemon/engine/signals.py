"""How the engine is told to stop: SIGTERM/SIGINT/SIGHUP (a first drains, a second stops at once)
and a wake-up pipe the main loop waits on.

SIGHUP drains exactly like SIGTERM, then the service exits with status 75 (``exitcodes.RESTART``)
instead of 0: a supervisor (systemd's ``Restart=on-failure``) starts it again, and the new process
reads its configuration afresh. So ``kill -HUP`` means "reload by restarting, finishing the movie
in hand first" and never kills the daemon undrained.

Signal handlers only set Events; the wake-up byte is written by Python's C-level wakeup fd, so a
signal also wakes a loop blocked in ``select``. Handlers are installed only in the main thread.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

__all__ = ["StopSignals"]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """The stop Events, the signal handlers and the wake-up pipe of one service run."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.reason: str | None = None
        self.restart = False  # the first stop came from SIGHUP: exit so as to be restarted
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._previous: list[tuple[int, Any]] = []
        self._previous_wakeup: int | None = None

    @property
    def wake_fd(self) -> int:
        """The read end the main loop waits on."""
        return self._wake_r

    def request_stop(self, reason: str = "stop requested", *, wake: bool = True) -> None:
        """First call: drain; second: stop at once. Thread-safe."""
        if self.reason is None:
            self.reason = reason
        if self.stop.is_set():
            self.abort.set()
        self.stop.set()
        if wake:
            self.wake()

    def wake(self) -> None:
        """Wake the main loop (thread-safe)."""
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):
            pass

    def drain_wake(self) -> bool:
        """Empty the pipe; True when something had woken the loop."""
        woke = False
        try:
            while os.read(self._wake_r, 4096):
                woke = True
        except (BlockingIOError, OSError):
            pass
        return woke

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            self.abort.set()
        elif signum == signal.SIGHUP:
            self.restart = True
            self.reason = "SIGHUP: finishing the movie in hand, then exiting to be restarted"
        elif self.reason is None:  # the journal says which (systemctl stop: SIGTERM)
            self.reason = f"{signal.Signals(signum).name}: finishing the movie in hand"
        self.stop.set()

    def install(self) -> None:
        """Handle SIGTERM, SIGINT and SIGHUP (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = [(s, signal.signal(s, self._handle)) for s in _STOP_SIGNALS]
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def restore(self) -> None:
        """Put back the handlers found by :meth:`install`."""
        for signum, handler in self._previous:
            signal.signal(signum, handler)
        if self._previous:
            signal.set_wakeup_fd(self._previous_wakeup if self._previous_wakeup is not None
                                 else -1)
        self._previous = []

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
