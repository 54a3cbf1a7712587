"""The watch daemon's observers: the ZeroMQ feed (:mod:`daemon.publish`) and systemd notify
(:mod:`daemon.sdnotify`), with their options.

:func:`add_observer_arguments` adds the options to ``motionwatch watch`` (each gets its TOML key
like every other option); :func:`build_observers` turns ``Config.options`` into the observers
and starts the publisher, so that a bad endpoint or an address in use stops the daemon before it
reports ``READY=1`` (a :class:`~daemon.config.ConfigError`: exit status 78).

Watchdog policy (:class:`NotifyObserver`). ``WATCHDOG=1`` is sent every half of
``$WATCHDOG_USEC`` by a thread of its own, and only while the service is healthy:

* the main loop turns: a heartbeat arrived less than ``watchdog_stall`` seconds ago (default
  ``max(3 x heartbeat, 3 x scan_interval, 10 s)``, capped at half the watchdog timeout, so a
  hung main loop stops the pings within ``WatchdogSec``);
* the last heartbeat's :class:`~daemon.service.Health` is ok (scans happen, output folder there);
* no movie has been in a worker longer than ``watchdog_stuck_after`` seconds (default
  ``movie_timeout + 60 s``: the pool kills a worker at ``movie_timeout``, so a movie still in
  flight after that means the workers are stuck).

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

from daemon.settings.config import Config, ConfigError
from daemon.engine.service import Heartbeat, MovieEvent, SeriesEvent, ServiceInfo, ServiceObserver

__all__ = [
    "add_observer_arguments",
    "build_observers",
    "publish_config_from",
    "PublishObserver",
    "NotifyObserver",
]

_STUCK_MARGIN_S = 60.0


def add_observer_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the live feed and of the systemd watchdog (``motionwatch watch``)."""
    from daemon.feed.publisher import DEFAULT_ENDPOINT

    g = parser.add_argument_group("live feed (ZeroMQ, docs/zmq.md)")
    g.add_argument("--publish", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help="ZeroMQ endpoint the feed binds (default %(default)s; ipc:///path, "
                        "tcp://127.0.0.1:* for a free port)")
    g.add_argument("--no-publish", action="store_true", default=False,
                   help="no live feed")
    g.add_argument("--publish-allow-remote", action="store_true", default=False,
                   help="allow a non-loopback endpoint (the feed is then on the network)")
    g.add_argument("--publish-curve-secret-key", type=Path, default=None, metavar="FILE",
                   help="CURVE server certificate (secret key): encrypts the feed")
    g.add_argument("--publish-curve-authorized-keys", type=Path, default=None, metavar="DIR",
                   help="folder of client public certificates allowed to connect")
    g.add_argument("--drift-warning-total", type=float, default=40.0, metavar="A",
                   help="warn when a movie's total drift exceeds this (Å; 0: never; default 40)")
    g.add_argument("--drift-warning-jump", type=float, default=10.0, metavar="A",
                   help="warn when a frame-to-frame jump exceeds this (Å; 0: never; default 10)")
    g.add_argument("--drift-warning-early", type=float, default=0.0, metavar="A",
                   help="warn when the early drift exceeds this (Å; default 0: never)")
    s = parser.add_argument_group("systemd watchdog")
    s.add_argument("--watchdog-stall", type=float, default=None, metavar="S",
                   help="no WATCHDOG=1 once the main loop has not turned for S seconds "
                        "(default max(3 x heartbeat, 3 x scan interval, 10 s), at most half "
                        "of WatchdogSec)")
    s.add_argument("--watchdog-stuck-after", type=float, default=None, metavar="S",
                   help="no WATCHDOG=1 while a movie has been in a worker for over S seconds "
                        "(default movie timeout + 60 s)")


def _opt(options: Mapping[str, Any], name: str, default: Any = None) -> Any:
    return options.get(name, default)


def publish_config_from(config: Config) -> Any:
    """The :class:`~daemon.publish.PublishConfig` of ``config``, or None with ``no_publish``.

    Raises
    ------
    ConfigError
        With the publisher's problems (non-local endpoint without ``publish_allow_remote``,
        missing CURVE files, bad thresholds).
    """
    from daemon.feed.publisher import DEFAULT_ENDPOINT, DriftRules, PublishConfig, PublishConfigError

    options = config.options
    if _opt(options, "no_publish", False):
        return None
    problems: list[str] = []
    thresholds = {}
    for key, name in (("drift_warning_total", "max_total_drift_A"),
                      ("drift_warning_jump", "max_frame_jump_A"),
                      ("drift_warning_early", "max_early_drift_A")):
        value = _opt(options, key, None)
        if value is not None and value < 0:
            problems.append(f"{key} must be >= 0 Å (0: no warning), got {value}")
            value = None
        thresholds[name] = value if value else None
    try:
        drift = DriftRules(**thresholds)
        secret = _opt(options, "publish_curve_secret_key")
        allowed = _opt(options, "publish_curve_authorized_keys")
        publish = PublishConfig(
            endpoint=str(_opt(options, "publish", DEFAULT_ENDPOINT)),
            allow_remote=bool(_opt(options, "publish_allow_remote", False)),
            curve_secret_key=None if secret is None else Path(secret),
            curve_authorized_keys=None if allowed is None else Path(allowed),
            heartbeat_interval_s=config.heartbeat_s, drift=drift)
    except PublishConfigError as exc:
        problems.extend(exc.problems)
        publish = None
    if problems:
        raise ConfigError(problems)
    return publish


def build_observers(config: Config, *, environ: Mapping[str, str] | None = None,
                    logger: Any = None) -> list[ServiceObserver]:
    """The publisher (started: bound before READY=1) and the systemd notifier, in that order.

    Raises
    ------
    ConfigError
        Bad publishing options, or the publisher cannot bind (endpoint in use, CURVE keys
        unreadable): exit status 78, systemd does not restart.
    """
    from daemon.feed.publisher import PublishError, Publisher

    observers: list[ServiceObserver] = []
    publish = publish_config_from(config)
    notify = NotifyObserver.from_config(config, environ=environ)
    if publish is not None:
        publisher = Publisher(publish)
        try:
            publisher.start()
        except PublishError as exc:
            publisher.close()
            raise ConfigError([f"publisher: {exc} (choose another endpoint with --publish, "
                               f"or --no-publish)"]) from exc
        if logger is not None:
            logger.info("publisher_started", endpoint=publisher.endpoint,
                        session=publisher.session, curve=publish.curve_enabled)
        observers.append(PublishObserver(publisher))
    observers.append(notify)
    return observers


# ------------------------------------------------------------------------------------------
# the live feed


class PublishObserver(ServiceObserver):
    """Forwards service events to a started :class:`~daemon.publish.Publisher` (never blocks:
    the publisher queues and its own thread sends)."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher
        self._last_movie: str | None = None

    def on_movie_done(self, event: MovieEvent) -> None:
        self._last_movie = str(event.path)
        record = dict(event.record)
        if event.timings_s and "timings_s" not in record:
            record["timings_s"] = dict(event.timings_s)
        self.publisher.movie(record, path=event.path)

    def on_movie_failed(self, event: MovieEvent) -> None:
        self.publisher.error(event.path, f"{event.status}: {event.error or 'failed'}")

    def on_series_event(self, event: SeriesEvent) -> None:
        self.publisher.series(event.kind, event.series, n_done=event.n_done,
                              n_failed=event.n_failed, n_expected=event.n_expected,
                              accumulated_dose_e_A2=event.accumulated_dose_e_A2, mdoc=event.mdoc,
                              stacks=dict(event.stacks) or None)

    def on_heartbeat(self, beat: Heartbeat) -> None:
        counts = beat.counts
        self.publisher.heartbeat(
            backlog=beat.waiting + int(counts.get("pending", 0)),
            done=int(counts.get("done", 0)), failed=int(counts.get("failed", 0)),
            running=len(beat.in_flight), quarantined=int(counts.get("quarantined", 0)),
            last_movie=self._last_movie)

    def on_stopping(self, reason: str) -> None:
        self.publisher.warning("stopping", f"daemon stopping: {reason}")

    def on_stopped(self, exit_status: int) -> None:
        self.close()

    def close(self) -> None:
        self.publisher.close()


# ------------------------------------------------------------------------------------------
# systemd notify


def _counts_text(counts: Mapping[str, int], waiting: int, running: int) -> str:
    return (f"{counts.get('done', 0)} done, {running} running, {counts.get('pending', 0)} pending, "
            f"{waiting} waiting, {counts.get('failed', 0)} failed, "
            f"{counts.get('quarantined', 0)} quarantined")


class NotifyObserver(ServiceObserver):
    """``READY=1``, ``STATUS=``, ``WATCHDOG=1`` (while healthy) and ``STOPPING=1`` to systemd.

    A no-op when ``$NOTIFY_SOCKET`` is unset. See the module docstring for the watchdog policy.

    Parameters
    ----------
    notifier : Notifier
    watchdog_interval_s : float or None
        Ping period (half of ``$WATCHDOG_USEC``); None: no watchdog.
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
        from daemon.system.sdnotify import WatchdogPinger

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
                    ) -> NotifyObserver:
        """From ``$NOTIFY_SOCKET`` / ``$WATCHDOG_USEC`` and the ``watchdog_*`` options.

        Raises
        ------
        ConfigError
            A threshold <= 0, or a heartbeat too slow for the watchdog (the heartbeat must come
            well within the stall threshold).
        """
        from daemon.system.sdnotify import Notifier, watchdog_interval_s, watchdog_timeout_s

        env = os.environ if environ is None else environ
        options = config.options
        timeout_s = watchdog_timeout_s(env)
        interval_s = watchdog_interval_s(env)
        stall = _opt(options, "watchdog_stall")
        problems = []
        if stall is None:
            stall = max(3 * config.heartbeat_s, 3 * config.scan_interval_s, 10.0)
            if timeout_s is not None:
                stall = min(stall, timeout_s / 2)
        stuck = _opt(options, "watchdog_stuck_after")
        if stuck is None:
            stuck = config.movie_timeout_s + _STUCK_MARGIN_S
        if not stall > 0:
            problems.append(f"watchdog_stall must be > 0 s, got {stall}")
        if not stuck > 0:
            problems.append(f"watchdog_stuck_after must be > 0 s, got {stuck}")
        if stall > 0 and config.heartbeat_s >= stall / 2:
            problems.append(f"heartbeat ({config.heartbeat_s:g} s) must be under half the watchdog "
                            f"stall threshold ({stall:g} s): lower heartbeat"
                            + (f" (WatchdogSec is {timeout_s:g} s)" if timeout_s else ""))
        if problems:
            raise ConfigError(problems)
        return cls(Notifier.from_environ(env), watchdog_interval_s=interval_s, stall_s=stall,
                   stuck_after_s=stuck, extend_s=max(30.0, 3 * config.heartbeat_s))

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
        self.notifier.ready(f"watching {info.config.watch_dir} ({info.discovery_mode}); "
                            f"{info.recovered} recovered")
        if self._pinger is not None:
            self._pinger.start()

    def on_heartbeat(self, beat: Heartbeat) -> None:
        now = self._clock()
        with self._lock:
            self._last_beat = now
            self._beat_ok = beat.health.ok
            current = set(beat.in_flight)
            self._in_flight_since = {p: self._in_flight_since.get(p, now) for p in current}
            stuck = [p for p, t in self._in_flight_since.items() if now - t > self.stuck_after_s]
        text = _counts_text(beat.counts, beat.waiting, len(beat.in_flight))
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
