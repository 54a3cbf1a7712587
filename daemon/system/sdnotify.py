"""The systemd notify protocol without libsystemd: READY, STATUS, WATCHDOG, STOPPING.

systemd (``Type=notify``) passes the path of a datagram socket in ``$NOTIFY_SOCKET``; a message
is one datagram of newline-separated ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``STOPPING=1``, ``EXTEND_TIMEOUT_USEC=...``). A path starting with ``@`` names
an abstract socket (the ``@`` stands for a leading NUL byte). With ``WatchdogSec=`` set, systemd
also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process meant to ping) and restarts
the service when no ``WATCHDOG=1`` arrives within that time; we ping every quarter of it
(:func:`watchdog_interval_s`).

Nothing here raises into the caller on socket errors or logs: every send returns ``True`` if the
datagram left, ``False`` otherwise (not under systemd, socket gone, queue full). Nothing runs or
reads the environment at import; :meth:`Notifier.from_environ` reads it when called.

References
----------
sd_notify(3), systemd.service(5) (``Type=notify``, ``WatchdogSec=``, ``NotifyAccess=``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

__all__ = [
    "Notifier",
    "WatchdogPinger",
    "watchdog_interval_s",
    "watchdog_timeout_s",
]

_DEFAULT_SEND_TIMEOUT_S = 1.0


def _socket_address(raw: str | None) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``sendto`` address; ``None`` if unusable.

    Only AF_UNIX addresses are supported: an absolute path, or ``@name`` for an abstract
    socket (returned as bytes starting with NUL). Anything else (empty, relative, ``vsock:``)
    gives ``None``: the notifier is then disabled.
    """
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


class Notifier:
    """Sends notify messages to the service manager; a no-op when not run by systemd.

    Parameters
    ----------
    socket_path
        Value of ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for an abstract socket.
        ``None`` or ``""`` disables the notifier (every call returns ``False``).
    send_timeout_s
        Longest a send may block (s) if the manager's queue is full; the message is then dropped
        and ``False`` returned. A full queue must never hang the daemon.

    Notes
    -----
    Thread-safe: each message opens its own close-on-exec datagram socket (as ``sd_notify``
    does), so a worker process inherits nothing. With ``NotifyAccess=main`` systemd accepts only
    messages from the main process; call from the daemon's main process (any thread).

    Examples
    --------
    >>> notifier = Notifier.from_environ({})  # not under systemd
    >>> notifier.enabled, notifier.ready()
    (False, False)
    """

    __slots__ = ("_address", "_send_timeout_s")

    def __init__(
        self, socket_path: str | None, *, send_timeout_s: float = _DEFAULT_SEND_TIMEOUT_S
    ) -> None:
        if not send_timeout_s > 0:
            raise ValueError(f"send_timeout_s must be > 0 s, got {send_timeout_s!r}")
        self._address = _socket_address(socket_path)
        self._send_timeout_s = float(send_timeout_s)

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        send_timeout_s: float = _DEFAULT_SEND_TIMEOUT_S,
    ) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` in ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), send_timeout_s=send_timeout_s)

    @property
    def enabled(self) -> bool:
        """Whether a usable ``$NOTIFY_SOCKET`` was given (i.e. run by systemd, Type=notify)."""
        return self._address is not None

    def notify(self, fields: Mapping[str, str | int]) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines, in the mapping's order.

        Parameters
        ----------
        fields
            e.g. ``{"READY": 1, "STATUS": "watching /data"}``. Newlines in a value are replaced
            by spaces (a newline would end the line and start a bogus key).

        Returns
        -------
        bool
            ``True`` if the datagram was sent; ``False`` if disabled or the send failed.
        """
        if self._address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            if not key or "=" in key or "\n" in key:
                raise ValueError(f"notify key must be non-empty, without '=' or newline, "
                                 f"got {key!r}")
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        payload = ("\n".join(lines) + "\n").encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self._send_timeout_s)
                sock.sendto(payload, self._address)
        except OSError:  # socket.timeout is an OSError too
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up finished), with an optional ``STATUS=`` in the same datagram."""
        fields: dict[str, str | int] = {"READY": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(fields)

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line shown by ``systemctl status`` (e.g. live counts)."""
        return self.notify({"STATUS": text})

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive ping (prefer :class:`WatchdogPinger`)."""
        return self.notify({"WATCHDOG": 1})

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1`` (draining after SIGTERM), with an optional ``STATUS=``."""
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(fields)

    def extend_timeout(self, usec: int) -> bool:
        """``EXTEND_TIMEOUT_USEC=usec``: the current start/stop job gets ``usec`` more (us).

        While starting or stopping, systemd then waits at least ``usec`` microseconds from now
        (send again before it runs out); use it when a first scan or the last movie is slow.
        """
        usec = int(usec)
        if usec <= 0:
            raise ValueError(f"usec must be > 0 us, got {usec}")
        return self.notify({"EXTEND_TIMEOUT_USEC": usec})


def watchdog_timeout_s(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """The watchdog timeout systemd asked for (s), or ``None`` if none applies to us.

    Parameters
    ----------
    environ
        Default ``os.environ``. Reads ``$WATCHDOG_USEC`` (microseconds) and ``$WATCHDOG_PID``.
    pid
        This process's id (default ``os.getpid()``). If ``$WATCHDOG_PID`` is set and differs
        (a child that inherited the environment), the watchdog is not ours: ``None``.

    Returns
    -------
    float or None
        ``WATCHDOG_USEC / 1e6``; ``None`` if unset, not a positive integer, or not our pid.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            return None
        if watchdog_pid != (os.getpid() if pid is None else pid):
            return None
    return usec / 1e6


def watchdog_interval_s(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """How often to send ``WATCHDOG=1`` (s): a quarter of :func:`watchdog_timeout_s`, or
    ``None``.

    sd_watchdog_enabled(3) recommends half the timeout, which leaves no room for a ping held
    back: the pings go only while the daemon is healthy, and one health check that fails at a
    ping (a slow scan of a share, a blip) made a gap of the whole timeout, and systemd killed
    the service. Every quarter, one or two failed checks in a row leave a gap of at most three
    quarters; it takes unhealthiness at three checks in a row (about half the timeout) to stop
    the pings for good.
    """
    timeout_s = watchdog_timeout_s(environ, pid=pid)
    return None if timeout_s is None else timeout_s / 4


class WatchdogPinger:
    """Sends ``WATCHDOG=1`` every ``interval_s``, but only while ``health()`` returns True.

    A daemon that hangs (discovery stalled, workers stuck) makes ``health()`` return False (or
    hang, or raise): pings stop and systemd kills and restarts the service after
    ``WatchdogSec``. When health comes back before that, pings resume.

    Use it either as a background thread (:meth:`start` / :meth:`stop`, or ``with``) or by
    calling :meth:`tick` from the service's own loop at a period shorter than ``interval_s``.

    Parameters
    ----------
    notifier
        Where pings go; a disabled notifier makes every ping a no-op.
    health
        Called before each ping, from the pinger's thread (or the caller of :meth:`tick`): must be
        thread-safe and quick. An exception counts as unhealthy (and is not propagated).
    interval_s
        Seconds between pings, normally :func:`watchdog_interval_s` (a quarter of
        ``WatchdogSec``).
    clock
        Monotonic clock in seconds (injectable for tests).

    Attributes
    ----------
    pings_sent : int
        Pings that left successfully.
    """

    __slots__ = (
        "_notifier", "_health", "_interval_s", "_clock", "_last_ping", "_stop", "_thread",
        "pings_sent",
    )

    def __init__(
        self,
        notifier: Notifier,
        health: Callable[[], bool],
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 s, got {interval_s!r}")
        self._notifier = notifier
        self._health = health
        self._interval_s = float(interval_s)
        self._clock = clock
        self._last_ping: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings_sent = 0

    @property
    def interval_s(self) -> float:
        """Seconds between pings."""
        return self._interval_s

    def _healthy(self) -> bool:
        try:
            return self._health() is True
        except Exception:  # noqa: BLE001 - an unhealthy daemon must stop pinging, not crash
            return False

    def ping_if_healthy(self) -> bool:
        """Check health now and ping if healthy; returns whether a ping was sent."""
        if not self._healthy():
            return False
        sent = self._notifier.watchdog()
        if sent:
            self._last_ping = self._clock()
            self.pings_sent += 1
        return sent

    def tick(self) -> bool:
        """Ping if one is due (``interval_s`` since the last) and healthy; for a service loop.

        The loop must call it more often than every ``interval_s`` (pings then come every
        ``interval_s`` to ``interval_s`` + loop period, inside systemd's timeout of twice
        ``interval_s``). Returns whether a ping was sent.
        """
        if self._last_ping is not None and self._clock() - self._last_ping < self._interval_s:
            return False
        return self.ping_if_healthy()

    def _run(self) -> None:
        self.ping_if_healthy()
        while not self._stop.wait(self._interval_s):
            self.ping_if_healthy()

    def start(self) -> WatchdogPinger:
        """Start the background thread (daemon thread, named ``sd-watchdog``); returns self."""
        if self._thread is not None:
            raise RuntimeError("WatchdogPinger already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float | None = 5.0) -> None:
        """Stop the background thread (no more pings); waits up to ``timeout_s`` for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def __enter__(self) -> WatchdogPinger:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
