"""systemd notify as a service listener: ``READY=1``, ``STATUS=``, ``WATCHDOG=1`` (while healthy)
and ``STOPPING=1``, with the watchdog's options.

Watchdog policy (:class:`NotifyListener`). ``WATCHDOG=1`` is sent every quarter of
``$WATCHDOG_USEC`` by a thread of its own, and only while the service is healthy (so one or two
checks that fail in a row, a blip, do not get the service killed):

* the main loop turns: a heartbeat arrived less than ``watchdog_stall`` seconds ago (default
  ``max(3 x heartbeat, 3 x scan_interval, 10 s)``, capped at half the watchdog timeout, so a
  hung main loop stops the pings within ``WatchdogSec``; a larger value given is refused at
  start-up);
* the last heartbeat's :class:`~daemon.events.Health` is ok (scans happen, output folder there;
  correction paused by trouble outside the daemon, a full disk or a lost Dask scheduler, is
  listed but keeps it ok: a restart would not mend it);
* no movie has been in a worker longer than ``watchdog_stuck_after`` seconds (default
  ``movie_timeout + 60 s``: the pool kills a worker at ``movie_timeout``, so a movie still in
  flight after that means the workers are stuck), timed from when a worker started it: a movie
  waiting in a distributed executor's queue (``Heartbeat.queued``) is not stuck.

Pings stop when any of these fails; systemd then kills and restarts the service after
``WatchdogSec``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon.events import Heartbeat, ServiceInfo, ServiceListener
from daemon.settings.config import Config, ConfigError
from daemon.system.pace_text import pace_phrase
from daemon.system.sdnotify import Notifier, WatchdogPinger, watchdog_interval_s, watchdog_timeout_s

__all__ = ["add_watchdog_arguments", "NotifyListener", "watchdog_thresholds"]

_STUCK_MARGIN_S = 60.0


def add_watchdog_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the systemd watchdog (``motionwatch watch``)."""
    s = parser.add_argument_group("systemd watchdog")
    s.add_argument("--watchdog-stall", type=float, default=None, metavar="S",
                   help="no WATCHDOG=1 once the main loop has not turned for S seconds "
                        "(default max(3 x heartbeat, 3 x scan interval, 10 s), at most half "
                        "of WatchdogSec: a larger value is a configuration error)")
    s.add_argument("--watchdog-stuck-after", type=float, default=None, metavar="S",
                   help="no WATCHDOG=1 while a movie has been in a worker for over S seconds "
                        "(default movie timeout + 60 s)")


def _counts_text(counts: Mapping[str, int], waiting: int, running: int) -> str:
    put_back = counts.get("put_back", 0)
    return (f"{counts.get('done', 0)} done, {running} running, {counts.get('pending', 0)} pending, "
            f"{waiting} waiting, {counts.get('failed', 0)} failed, "
            f"{counts.get('quarantined', 0)} quarantined"
            + (f", {put_back} put back" if put_back else ""))


def watchdog_thresholds(config: Config, *, environ: Mapping[str, str] | None = None
                        ) -> tuple[float, float]:
    """The watchdog's ``(stall_s, stuck_after_s)`` (s) from the options and ``$WATCHDOG_USEC``.

    Raises
    ------
    ConfigError
        A threshold <= 0; a ``watchdog_stuck_after`` not above ``movie_timeout`` (a long
        movie taken for a stuck worker); a ``watchdog_stall`` over half of systemd's
        ``WatchdogSec`` (pings
        would go on after a hang until systemd's timeout, so a hung daemon is never killed); a
        heartbeat too slow for the watchdog (it must come well within the stall threshold).
    """
    env = os.environ if environ is None else environ
    timeout_s = watchdog_timeout_s(env)
    stall = config.options.get("watchdog_stall")
    stuck = config.options.get("watchdog_stuck_after")
    problems = []
    if stall is None:
        stall = max(3 * config.heartbeat_s, 3 * config.scan_interval_s, 10.0)
        if timeout_s is not None:
            stall = min(stall, timeout_s / 2)
    elif timeout_s is not None and stall > timeout_s / 2:
        problems.append(f"watchdog_stall ({stall:g} s) must be at most half of systemd's "
                        f"WatchdogSec ({timeout_s:g} s): at most {timeout_s / 2:g} s")
    if stuck is None:
        stuck = config.movie_timeout_s + _STUCK_MARGIN_S
    if not stall > 0:
        problems.append(f"watchdog_stall must be > 0 s, got {stall}")
    if not stuck > 0:
        problems.append(f"watchdog_stuck_after must be > 0 s, got {stuck}")
    elif stuck <= config.movie_timeout_s:
        # the workers end a movie at its time limit (at most movie_timeout): a movie under it
        # is no stuck worker, and taken for one the pings stopped and systemd killed the
        # daemon in the middle of a long movie
        problems.append(f"watchdog_stuck_after ({stuck:g} s) must be above movie_timeout "
                        f"({config.movie_timeout_s:g} s), when a worker's movie is ended: "
                        f"leave it out (movie_timeout + {_STUCK_MARGIN_S:g} s) or raise it")
    if stall > 0 and config.heartbeat_s >= stall / 2:
        problems.append(f"heartbeat ({config.heartbeat_s:g} s) must be under half the watchdog "
                        f"stall threshold ({stall:g} s): lower heartbeat"
                        + (f" (WatchdogSec is {timeout_s:g} s)" if timeout_s else ""))
    if problems:
        raise ConfigError(problems)
    return float(stall), float(stuck)


class NotifyListener(ServiceListener):
    """``READY=1``, ``STATUS=``, ``WATCHDOG=1`` (while healthy) and ``STOPPING=1`` to systemd.

    A no-op when ``$NOTIFY_SOCKET`` is unset. See the module docstring for the watchdog policy.

    Parameters
    ----------
    notifier : Notifier
    watchdog_interval_s : float or None
        Ping period (a quarter of ``$WATCHDOG_USEC``); None: no watchdog.
    stall_s, stuck_after_s : float
        Health thresholds (s): no heartbeat for ``stall_s``; a movie in flight for longer than
        ``stuck_after_s``.
    extend_s : float
        While draining a movie after SIGTERM, each heartbeat asks systemd for this much more
        stop time (``EXTEND_TIMEOUT_USEC``).
    clock : callable
        Monotonic clock (s).
    """

    def __init__(self, notifier: Any, *, watchdog_interval_s: float | None, stall_s: float,
                 stuck_after_s: float, extend_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.stall_s = float(stall_s)
        self.stuck_after_s = float(stuck_after_s)
        self.extend_s = float(extend_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat: float | None = None
        self._beat_ok = True
        self._in_flight_since: dict[str, float] = {}
        self._stopping = False
        self._pinger = None
        if watchdog_interval_s is not None and notifier.enabled:
            self._pinger = WatchdogPinger(notifier, self.healthy, interval_s=watchdog_interval_s,
                                          clock=clock)

    @classmethod
    def from_config(cls, config: Config, *, environ: Mapping[str, str] | None = None
                    ) -> NotifyListener:
        """From ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` and the ``watchdog_*`` options.

        Raises
        ------
        ConfigError
            See :func:`watchdog_thresholds`.
        """
        env = os.environ if environ is None else environ
        stall, stuck = watchdog_thresholds(config, environ=env)
        return cls(Notifier.from_environ(env), watchdog_interval_s=watchdog_interval_s(env),
                   stall_s=stall, stuck_after_s=stuck, extend_s=max(30.0, 3 * config.heartbeat_s))

    # the watchdog's health (called from the pinger thread)
    def healthy(self) -> bool:
        """Main loop turning, last heartbeat healthy, no movie stuck in a worker."""
        now = self._clock()
        with self._lock:
            if self._last_beat is None or now - self._last_beat > self.stall_s:
                return False
            if not self._beat_ok:
                return False
            oldest = min(self._in_flight_since.values(), default=now)
        return now - oldest <= self.stuck_after_s

    @property
    def pings_sent(self) -> int:
        return 0 if self._pinger is None else self._pinger.pings_sent

    # service events (main thread)
    def on_ready(self, info: ServiceInfo) -> None:
        with self._lock:
            self._last_beat = self._clock()
        self.notifier.ready(f"watching {info.watch_dir} ({info.discovery_mode}); "
                            f"{info.recovered} recovered")
        if self._pinger is not None:
            self._pinger.start()

    def on_heartbeat(self, beat: Heartbeat) -> None:
        now = self._clock()
        with self._lock:
            self._last_beat = now
            self._beat_ok = beat.health.ok
            # timed from when a worker has it: a movie waiting in a distributed executor's
            # queue (a SLURM job not started) is not stuck
            current = set(beat.in_flight) - set(beat.queued)
            self._in_flight_since = {p: self._in_flight_since.get(p, now) for p in current}
            stuck = [p for p, t in self._in_flight_since.items() if now - t > self.stuck_after_s]
        text = _counts_text(beat.counts, beat.waiting, len(beat.in_flight))
        phrase = pace_phrase(beat.pace)
        if phrase is not None and beat.pace.get("keeping_up") is False:
            text += f"; {phrase}"
        problems = list(beat.health.problems) + [f"stuck on {Path(p).name}" for p in stuck]
        if problems:
            text += "; UNHEALTHY: " + "; ".join(problems)
        if self._stopping:
            text = "stopping: " + text
            if beat.in_flight:
                self.notifier.extend_timeout(int(self.extend_s * 1e6))
        self.notifier.status(text)

    def on_stopping(self, reason: str) -> None:
        self._stopping = True
        self.notifier.stopping(f"stopping: {reason}")
        self.notifier.extend_timeout(int(self.extend_s * 1e6))

    def on_stopped(self, exit_status: int) -> None:
        self.close()

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.stop()
