"""Live drift statistics over ZeroMQ: the publisher thread (the bodies it sends are built in
:mod:`daemon.feed.messages`; :mod:`daemon.feed.subscriber` reads them).

:class:`Publisher` owns one XPUB socket in one dedicated
thread; the rest of the daemon calls its methods (:meth:`~Publisher.movie`,
:meth:`~Publisher.series`, :meth:`~Publisher.heartbeat`, :meth:`~Publisher.error`,
:meth:`~Publisher.warning`) from any thread. They put a message on a bounded in-memory queue and
return at once: when the queue is full the *oldest* queued message is dropped and counted, so
no subscriber (none, slow, stuck or dead) can slow or block correction. The socket sends with
``NOBLOCK``; a subscriber that does not read loses messages past the high-water mark
(``send_hwm``), which it sees as a gap in ``seq``.

Wire format
    Multipart ``[topic, body]``: ``topic`` is ASCII (``movie``, ``series``, ``heartbeat``,
    ``error``, ``warning``, ``state``), ``body`` is UTF-8 JSON, an object that always carries
    ``schema`` (``"motionwatch/1"``), ``seq`` (one counter across all topics, from 1 per
    session), ``time`` (ISO 8601 UTC of the event), ``host`` and ``session`` (a UUID per daemon
    run). A subscriber to every topic sees consecutive ``seq``; a jump means messages were lost
    (queue overflow or high-water mark), a new ``session`` means the daemon restarted. The full
    schema, with real examples, is in ``docs/zmq.md``.

Late joiners
    The socket is an XPUB with ``XPUB_VERBOSE``: every subscription reaches the publisher thread.
    A frame from a subscriber is at most :data:`_MAX_SUBSCRIBER_FRAME` bytes (a subscription is
    a topic prefix; a larger frame drops its connection): libzmq keeps every subscription in a
    trie of about 50 bytes a character, for good (one client's 10,000 distinct 1 kB
    subscriptions held 470 MB of the daemon's memory, one 5 MB frame 240 MB).
    When one arrives that covers the ``state`` topic (a subscription to ``""``, ``"s"``, ...,
    ``"state"``), the thread sends a ``state`` message: the open tilt series with their tilts
    so far, the last few completed series, recent loose movies, warnings and errors, and the last
    heartbeat. ``state`` is a full replacement; every subscriber of ``state`` receives it, at
    any time, and should treat it idempotently (tilts are keyed by ``path``).

Security
    The default endpoint is ``tcp://127.0.0.1:5557``. ``ipc://`` endpoints and TCP on a
    loopback address are local (``inproc://`` is refused: nothing outside the publisher's own
    ZeroMQ context could read it). Any other endpoint (``tcp://*:5557``, an interface name,
    a routable address, another transport) is refused unless ``allow_remote`` is set: exposing
    the feed is an explicit choice. CURVE encryption and authentication (``zmq.auth``) are
    available for any endpoint: ``curve_secret_key`` is the server certificate (written by
    ``zmq.auth.create_certificates``), ``curve_authorized_keys`` a folder of the public
    certificates of allowed clients (without it, any client that knows the server's public key
    may connect; traffic is still encrypted).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from correction.write import plain
from daemon import __version__
from daemon.feed.endpoint import (DEFAULT_ENDPOINT, PublishConfigError, endpoint_is_local,
                                  ipc_socket_path, unix_connect_error)
from daemon.feed.messages import (SCHEMA, SERIES_EVENTS, DriftRules, TiltInfo, movie_message,
                                  movie_warnings, series_status, tilt_summary)

__all__ = ["PublishConfig", "PublishError", "Publisher", "PublisherStats"]

SeriesEvent = Literal["started", "updated", "completed", "reopened"]

_STATE_TOPIC = b"state"
#: bytes: a subscription is 1 + a topic prefix (at most 9 bytes); CURVE's handshake commands
#: count too (its INITIATE with metadata, about 300 bytes: 256 failed)
_MAX_SUBSCRIBER_FRAME = 512
_RECENT = 20  # warnings, errors and loose movies kept for the state message
_COMPLETED_KEPT = 4  # completed series kept (with their tilts) in the state message
_OPEN_SERIES_KEPT = 64
_FLUSH_INTERVAL_MS = 20  # the socket thread drains the queue this often (callers make no syscall)
_RESTORE = "restore:"  # queue topic prefix: applied to the state only (Publisher.restore)


class PublishError(OSError):
    """The publisher could not start (e.g. the endpoint is in use); names the endpoint."""


@dataclass(frozen=True, slots=True)
class PublishConfig:
    """Where and how the daemon publishes.

    Attributes
    ----------
    endpoint : str
        ZeroMQ endpoint to bind (``tcp://HOST:PORT``, ``tcp://127.0.0.1:*`` for a free port,
        ``ipc:///path``).
    allow_remote : bool
        Must be true to bind anything but a local endpoint (see :func:`endpoint_is_local`).
    curve_secret_key : Path or None
        Server certificate file holding the secret key; enables CURVE.
    curve_authorized_keys : Path or None
        Folder of client public certificates allowed to connect (needs ``curve_secret_key``);
        None admits any client that has the server's public key.
    queue_size : int
        Messages held between the daemon and the socket thread; the oldest is dropped past it.
    send_hwm : int
        ZeroMQ send high-water mark per subscriber (messages).
    heartbeat_interval_s : float
        How often the service should call :meth:`Publisher.heartbeat` (s); sent in each
        heartbeat so subscribers can tell a late one.
    drift : DriftRules
        Thresholds of the drift warnings.
    max_tilts_per_series : int
        Tilts kept per series for the state message (the most recent).
    """

    endpoint: str = DEFAULT_ENDPOINT
    allow_remote: bool = False
    curve_secret_key: Path | None = None
    curve_authorized_keys: Path | None = None
    queue_size: int = 10_000
    send_hwm: int = 10_000
    heartbeat_interval_s: float = 5.0
    drift: DriftRules = field(default_factory=DriftRules)
    max_tilts_per_series: int = 400

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            local = endpoint_is_local(self.endpoint)
        except PublishConfigError as exc:
            problems.extend(exc.problems)
        else:
            if self.endpoint.startswith("inproc://"):
                problems.append(
                    f"publish endpoint {self.endpoint}: inproc:// reaches only sockets inside "
                    "the publisher's own ZeroMQ context, so no dashboard, monitor or "
                    "subscriber could ever read the feed; use ipc://PATH or "
                    "tcp://127.0.0.1:PORT")
            elif not local and not self.allow_remote:
                problems.append(
                    f"publish endpoint {self.endpoint} is not a loopback or ipc:// address; "
                    "set publish_allow_remote = true to expose the feed on the network "
                    "(and consider CURVE: publish_curve_secret_key)")
        if self.curve_secret_key is not None and not Path(self.curve_secret_key).is_file():
            problems.append(f"publish_curve_secret_key {self.curve_secret_key}: no such file")
        if self.curve_authorized_keys is not None:
            if self.curve_secret_key is None:
                problems.append("publish_curve_authorized_keys needs publish_curve_secret_key")
            if not Path(self.curve_authorized_keys).is_dir():
                problems.append(f"publish_curve_authorized_keys {self.curve_authorized_keys}: "
                                "no such folder")
        if not (isinstance(self.queue_size, int) and self.queue_size >= 1):
            problems.append(f"publish_queue_size must be an integer >= 1, got {self.queue_size!r}")
        if not (isinstance(self.send_hwm, int) and self.send_hwm >= 1):
            problems.append(f"publish_send_hwm must be an integer >= 1, got {self.send_hwm!r}")
        if not (isinstance(self.heartbeat_interval_s, (int, float)) and self.heartbeat_interval_s > 0):
            problems.append(f"heartbeat_interval_s must be > 0 s, got {self.heartbeat_interval_s!r}")
        if not (isinstance(self.max_tilts_per_series, int) and self.max_tilts_per_series >= 1):
            problems.append(f"max_tilts_per_series must be >= 1, got {self.max_tilts_per_series!r}")
        if problems:
            raise PublishConfigError(problems)

    @property
    def curve_enabled(self) -> bool:
        return self.curve_secret_key is not None


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


# --------------------------------------------------------------------------- publisher


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters of a publisher (messages)."""

    queued: int
    sent: int
    dropped: int
    subscriptions: int
    build_errors: int


class _Feed:
    """Open series, recent movies, warnings: what a late joiner is sent (socket thread only)."""

    def __init__(self, max_tilts: int) -> None:
        self.max_tilts = max_tilts
        self.open: dict[str, dict] = {}
        self.completed: collections.deque[dict] = collections.deque(maxlen=_COMPLETED_KEPT)
        self.movies: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.warnings: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.errors: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.heartbeat: dict | None = None

    def _series(self, name: str, body: Mapping) -> dict:
        entry = self.open.get(name)
        if entry is None:
            for done in self.completed:
                if done["series"] == name:
                    return done
            entry = {"series": name, "status": "open", "started": body.get("time"),
                     "n_done": 0, "n_failed": 0, "n_expected": None,
                     "accumulated_dose_e_A2": None, "tilts": []}
            self.open[name] = entry
            while len(self.open) > _OPEN_SERIES_KEPT:
                self.open.pop(next(iter(self.open)))
        return entry

    def apply(self, topic: str, body: dict) -> None:
        if topic == "movie":
            summary = tilt_summary(body)
            # a movie corrected after it failed (retried, rewritten) is no longer a failure
            for failure in [e for e in self.errors if e.get("path") == summary["path"]]:
                self.errors.remove(failure)
            name = body.get("series")
            if name is None:  # one entry per movie: restored at start-up, then announced
                for known in [m for m in self.movies if m["path"] == summary["path"]]:
                    self.movies.remove(known)
                self.movies.append(summary)
                return
            tilts = self._series(name, body)["tilts"]
            tilts[:] = [t for t in tilts if t["path"] != summary["path"]] + [summary]
            del tilts[:-self.max_tilts]
        elif topic == "series":
            entry = self._series(body["series"], body)
            for key in ("n_done", "n_failed", "n_expected", "accumulated_dose_e_A2"):
                if key in body:
                    entry[key] = body[key]
            entry["updated"] = body.get("time")
            entry["status"] = series_status(entry["status"], topic, body)
            if entry["status"] == "completed" and entry not in self.completed:
                self.open.pop(body["series"], None)
                self.completed.append(entry)
            elif entry["status"] == "open" and entry in self.completed:  # reopened
                self.completed.remove(entry)
                self.open[body["series"]] = entry
        elif topic == "warning":
            self.warnings.append(body)
            for entry in [*self.open.values(), *self.completed]:  # stacks not written
                if entry["series"] == body.get("series"):
                    entry["status"] = series_status(entry["status"], topic, body)
        elif topic == "error":
            self.errors.append(body)
        elif topic == "heartbeat":
            self.heartbeat = body

    def snapshot(self) -> dict:
        return {
            "series": [*self.completed, *self.open.values()],
            "movies": list(self.movies),
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "heartbeat": self.heartbeat,
        }


class Publisher:
    """Publishes the daemon's events on a ZeroMQ XPUB socket owned by one thread.

    All public methods are thread-safe and never block: they stamp ``time``, put the message
    on a bounded queue (dropping the oldest when full); the socket thread drains it every 20 ms
    (callers make no system call, and no GIL hand-off per message). ``seq`` is
    given at send time, advanced over dropped messages, so subscribers see every loss as a gap.

    Parameters
    ----------
    config : PublishConfig, optional
        Endpoint, security, queue bounds and drift rules (defaults: loopback port 5557).
    host : str, optional
        Reported host name (default ``socket.gethostname()``).
    session : str, optional
        Session id (default: a new UUID4, hex).
    version : str
        Reported in heartbeats.
    clock : callable
        Wall clock, seconds since the epoch (``time``); ``monotonic`` for the uptime.

    Examples
    --------
    >>> with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*")) as pub:   # doctest: +SKIP
    ...     pub.series("started", "TS_01", n_done=0, n_expected=41)
    ...     pub.movie(record, TiltInfo(series="TS_01", tilt_deg=0.0, acquisition_index=0))
    """

    def __init__(self, config: PublishConfig | None = None, *, host: str | None = None,
                 session: str | None = None, version: str = __version__,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else PublishConfig()
        self.host = host if host is not None else socket.gethostname()
        self.session = session if session is not None else uuid.uuid4().hex
        self._envelope = {"host": self.host, "session": self.session}
        self.version = version
        self._clock = clock
        self._monotonic = monotonic
        self._started_at = monotonic()
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[str, dict]] = collections.deque()
        self._dropped = 0  # total, for stats
        self._dropped_pending = 0  # not yet turned into a seq gap
        self._sent = 0
        self._accepted = 0  # messages put on the queue
        self._handled = 0  # messages taken off the queue by the socket thread (sent or not)
        self._overflow = 0  # messages dropped from a full queue
        self._subscriptions = 0
        self._build_errors = 0
        self._closed = False
        self._state_held = False  # a state sent before restore() goes again: hold_state()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._endpoint: str | None = None
        #: the daemon's output folder, named in movie, heartbeat and state messages (movie
        #: outputs are relative to it); set by the service's listener once it is known
        self.out_dir: str | None = None

    # -- lifecycle

    def start(self, timeout_s: float = 10.0) -> Publisher:
        """Start the socket thread and bind; returns self once bound.

        Raises
        ------
        PublishError
            The endpoint cannot be bound or the CURVE keys cannot be loaded.
        """
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="motionwatch-publish", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise PublishError(f"{self.config.endpoint}: publisher did not start in {timeout_s} s")
        if self._start_error is not None:
            self._thread.join()
            raise PublishError(f"{self.config.endpoint}: {self._start_error}") from self._start_error
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (best effort), close the socket and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every message put before this call has left the queue (sent, or dropped).

        For shutdown paths and tests; the daemon's normal calls never wait. Returns False on
        timeout (e.g. the publisher was never started).
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            target = self._accepted
        while True:
            with self._lock:
                if self._handled + self._overflow >= target:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str | None:
        """The bound endpoint (with the real port when bound to ``:*``); None before start."""
        return self._endpoint

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(queued=len(self._queue), sent=self._sent, dropped=self._dropped,
                                  subscriptions=self._subscriptions,
                                  build_errors=self._build_errors)

    # -- the daemon's calls (any thread, never block)

    def movie(self, record: Mapping[str, Any], tilt: TiltInfo | None = None, *,
              path: str | Path | None = None,
              outputs: Mapping[str, Any] | None = None) -> bool:
        """Publish a corrected movie, then any warning it raises under ``config.drift``.

        ``outputs`` (the written files, absolute) are sent relative to :attr:`out_dir`.
        Returns False (and publishes an ``error`` instead) when the record is malformed; never
        raises for bad records, so a publishing problem cannot stop correction.
        """
        try:
            body = movie_message(record, tilt, path=path, outputs=outputs, out_dir=self.out_dir)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            with self._lock:
                self._build_errors += 1
            self.error(path if path is not None else record.get("movie", "?")
                       if isinstance(record, Mapping) else "?",
                       f"movie message not built: {exc}")
            return False
        self._put("movie", body, sanitised=True)
        for warning in movie_warnings(body, self.config.drift):
            self._put("warning", warning)
        return True

    def hold_state(self) -> None:
        """Until :meth:`restore` has seeded the state, answer a subscription with the state so
        far and again once it is restored: a subscriber that was connected while the daemon
        was down (a dashboard left running over a restart) subscribes at the bind, before the
        state database is read, and was answered with an empty state that nothing replaced.
        (Held back instead, `monitor --once` found no daemon during a long start-up scan.)"""
        with self._lock:
            self._state_held = True

    def restore(self, movies: Iterable[Mapping[str, Any]] = (),
                series: Iterable[Mapping[str, Any]] = (),
                errors: Iterable[Mapping[str, Any]] = (),
                warnings: Iterable[Mapping[str, Any]] = ()) -> None:
        """Seed the late joiners' state with what an earlier run did (nothing is sent).

        Parameters
        ----------
        movies : iterable of mapping
            ``movie`` message bodies (:func:`movie_message`), oldest first; a ``time`` they
            carry (when the movie was done) is kept. The warnings each raises under
            ``config.drift`` are restored with it (a dashboard opened after a restart lists the
            night's drift warnings, not only this run's).
        series : iterable of mapping
            ``series`` message bodies (``event`` ``updated`` or ``completed``), applied after
            the movies.
        errors : iterable of mapping
            ``error`` message bodies (``path``, ``reason``): the movies still quarantined.
        warnings : iterable of mapping
            ``warning`` message bodies (``kind``, ``series``, ``message``): the series whose
            stacks were not written.
        """
        for body in movies:
            self._put(_RESTORE + "movie", dict(body), keep_time=True)
            for warning in movie_warnings(body, self.config.drift):
                self._put(_RESTORE + "warning", {**warning, "time": body.get("time")},
                          keep_time=True)
        for body in series:
            self._put(_RESTORE + "series", dict(body), keep_time=True)
        for body in errors:
            self._put(_RESTORE + "error", dict(body), keep_time=True)
        for body in warnings:
            self._put(_RESTORE + "warning", dict(body), keep_time=True)
        with self._lock:
            self._state_held = False  # after the seeds: the thread sees them first
        self._wake()

    def series(self, event: SeriesEvent, series: str, *, n_done: int, n_failed: int = 0,
               n_expected: int | None = None, accumulated_dose_e_A2: float | None = None,
               mdoc: str | Path | None = None,
               stacks: Mapping[str, str | Path] | None = None) -> None:
        """Publish a tilt-series event.

        Parameters
        ----------
        event : {"started", "updated", "completed", "reopened"}
            ``started`` when the series is first seen, ``updated`` after each of its movies is
            done or failed, ``completed`` when the series is closed (lock file gone, all movies
            done, stacks written), ``reopened`` when movies arrive after that.
        series : str
            Series name (as in ``TiltInfo.series``).
        n_done, n_failed : int
            Movies of the series corrected / failed so far.
        n_expected : int, optional
            Tilts the series will have, when known (mdoc sections).
        accumulated_dose_e_A2 : float, optional
            Dose received by the specimen so far (e/Å²).
        mdoc : str or Path, optional
            The series' mdoc file.
        stacks : mapping, optional
            Assembled outputs by name (paths), on ``completed``.
        """
        if event not in SERIES_EVENTS:
            raise ValueError(f"series event must be one of {SERIES_EVENTS}, got {event!r}")
        self._put("series", {"event": event, "series": series, "n_done": n_done,
                             "n_failed": n_failed, "n_expected": n_expected,
                             "accumulated_dose_e_A2": accumulated_dose_e_A2,
                             "mdoc": None if mdoc is None else str(mdoc),
                             "stacks": None if not stacks else
                             {str(k): str(v) for k, v in stacks.items()}})

    def heartbeat(self, *, backlog: int, done: int, failed: int, running: int = 0,
                  quarantined: int = 0, last_movie: str | Path | None = None,
                  cluster: Mapping[str, Any] | None = None,
                  pace: Mapping[str, Any] | None = None) -> None:
        """Publish a heartbeat; call every ``config.heartbeat_interval_s`` from the service loop.

        Adds ``uptime_s``, ``interval_s``, ``version``, the drift thresholds and the publisher's
        own ``dropped`` count; ``cluster`` is a distributed executor's state (workers connected,
        tasks in flight), null for the local worker processes; ``pace`` the service's movies
        acquired vs corrected per minute and whether it keeps up (:mod:`daemon.engine.pace`).
        """
        with self._lock:
            dropped = self._dropped
        self._put("heartbeat", {
            "uptime_s": round(self._monotonic() - self._started_at, 3),
            "interval_s": self.config.heartbeat_interval_s,
            "backlog": backlog, "running": running, "done": done, "failed": failed,
            "quarantined": quarantined,
            "last_movie": None if last_movie is None else str(last_movie),
            "version": self.version,
            "drift_thresholds": self.config.drift.as_dict(),
            "dropped": dropped,
            "out_dir": self.out_dir,
            "cluster": None if cluster is None else dict(cluster),
            "pace": None if pace is None else dict(pace),
        })

    def error(self, path: str | Path | None, reason: str) -> None:
        """Publish a failure: the file and a one-line reason."""
        self._put("error", {"path": None if path is None else str(path),
                            "reason": " ".join(str(reason).split())})

    def warning(self, kind: str, message: str, *, path: str | Path | None = None,
                series: str | None = None, value: float | None = None,
                threshold: float | None = None, unit: str | None = None) -> None:
        """Publish a warning of any ``kind`` (drift warnings come from :meth:`movie` itself)."""
        self._put("warning", {"kind": kind, "path": None if path is None else str(path),
                              "series": series, "tilt_deg": None, "value": value,
                              "threshold": threshold, "unit": unit,
                              "message": " ".join(str(message).split())})

    # -- internals

    def _put(self, topic: str, body: dict[str, Any], *, sanitised: bool = False,
             keep_time: bool = False) -> None:
        body = dict(body) if sanitised else plain(body)
        if not (keep_time and body.get("time")):
            body["time"] = _now_iso(self._clock())
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            if len(self._queue) >= self.config.queue_size:
                self._queue.popleft()
                self._dropped += 1
                self._overflow += 1
                self._dropped_pending += 1
            self._queue.append((topic, body))
            self._accepted += 1

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe already wakes the thread

    def _run(self) -> None:
        ctx = zmq.Context()
        try:
            try:
                sock, auth, self._endpoint = _bind_xpub(ctx, self.config)
            except Exception as exc:  # reported to start(), which raises PublishError
                self._start_error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                self._loop(sock)
            finally:
                sock.close()
                if auth is not None:
                    auth.stop()
        finally:
            ctx.term()

    def _loop(self, sock: zmq.Socket) -> None:
        feed = _Feed(self.config.max_tilts_per_series)
        seq = 0
        asked_while_held = False  # the state goes out again once restored (hold_state)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            events = dict(poller.poll(_FLUSH_INTERVAL_MS))
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            want_state = False
            n_subs = 0
            if sock in events:
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if frame[:1] == b"\x01":
                        n_subs += 1
                        want_state |= _STATE_TOPIC.startswith(frame[1:])
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                gap, self._dropped_pending = self._dropped_pending, 0
                closing = self._closed
                held = self._state_held
                self._subscriptions += n_subs
            seq += gap
            sent = 0
            for topic, body in batch:
                if topic.startswith(_RESTORE):  # state from an earlier run: kept, not sent
                    topic = topic[len(_RESTORE):]
                else:
                    seq += 1
                    sent += _send(sock, self._envelope, topic, body, seq)
                try:
                    feed.apply(topic, body)
                except (KeyError, TypeError, ValueError, AttributeError):
                    pass  # an odd body must not stop the socket thread; it was still sent
            asked_while_held |= want_state and held
            if asked_while_held and not held:
                asked_while_held, want_state = False, True
            if want_state:
                seq += 1
                state = {**feed.snapshot(), "out_dir": self.out_dir,
                         "time": _now_iso(self._clock()),
                         # sent before the state database is read: another state follows
                         "provisional": held}
                sent += _send(sock, self._envelope, "state", state, seq)
            with self._lock:
                self._sent += sent
                self._handled += len(batch)
            if closing:
                return


def _bind_xpub(ctx: zmq.Context, cfg: PublishConfig
               ) -> tuple[zmq.Socket, ThreadAuthenticator | None, str]:
    """The feed's XPUB socket bound to ``cfg.endpoint`` (CURVE when configured), its
    authenticator and the endpoint actually bound (a ``*`` port resolved)."""
    auth = None
    sock = None
    try:
        if cfg.curve_enabled:
            public, secret = zmq.auth.load_certificate(str(cfg.curve_secret_key))
            if secret is None:
                raise PublishConfigError(
                    [f"{cfg.curve_secret_key}: certificate has no secret key"])
            auth = ThreadAuthenticator(ctx)
            auth.start()
            location = (str(cfg.curve_authorized_keys) if cfg.curve_authorized_keys
                        else zmq.auth.CURVE_ALLOW_ANY)
            auth.configure_curve(domain="*", location=location)
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, _MAX_SUBSCRIBER_FRAME)
        sock.setsockopt(zmq.SNDHWM, cfg.send_hwm)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if cfg.endpoint.startswith("tcp://[") or cfg.endpoint.startswith("tcp://::"):
            sock.setsockopt(zmq.IPV6, 1)
        if cfg.curve_enabled:
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
        _refuse_live_ipc(cfg.endpoint)
        sock.bind(cfg.endpoint)
        _group_may_connect(cfg.endpoint)
        return sock, auth, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    except BaseException:
        if sock is not None:
            sock.close(linger=0)
        if auth is not None:
            auth.stop()
        raise


def _refuse_live_ipc(endpoint: str) -> None:
    """Raise ``OSError`` when ``endpoint`` is an ``ipc://`` path another process listens on.

    libzmq binds an ``ipc://`` path by replacing whatever socket file is there: a second
    daemon given the same feed took the running one's subscribers away for good (over TCP the
    bind fails with "Address already in use"). A socket file nobody answers on (left by a
    daemon killed outright) is replaced as before. Abstract names (``ipc://@name``) are
    refused by the kernel when taken.
    """
    path = ipc_socket_path(endpoint)
    if path is None or unix_connect_error(path) is not None:
        return  # no such file, not a socket, or nobody listening: free to bind
    raise OSError(f"Address already in use (another process, a motionwatch watch?, listens "
                  f"on {path})")


def _group_may_connect(endpoint: str) -> None:
    """Give an ``ipc://`` socket file's group write permission where it has read permission.

    Connecting to a Unix socket takes write permission; libzmq makes the file under the
    process's umask, so the units' ``UMask=0027`` left ``srwxr-x---``: the people of the
    service's group, whom the docs send to the feed, were refused (``monitor`` said "is the
    daemon running?"). Others stay as the umask left them.
    """
    path = ipc_socket_path(endpoint)
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
        if mode & stat.S_IRGRP and not mode & stat.S_IWGRP:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IWGRP)
    except OSError:  # not ours to change (a file system without modes): as it was
        pass


def _send(sock: zmq.Socket, envelope: Mapping[str, Any], topic: str, body: dict,
          seq: int) -> int:
    """Send one message (envelope keys first); 1 if sent, 0 past the high-water mark (XPUB
    drops silently) or when the body cannot be serialised."""
    body["seq"] = seq
    head = {"schema": SCHEMA, "seq": seq, "time": body.get("time"), **envelope}
    message = {**head, **{k: v for k, v in body.items() if k not in head}}
    try:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        sock.send_multipart([topic.encode(), data], flags=zmq.NOBLOCK)
    except (zmq.ZMQError, ValueError, TypeError):
        return 0
    return 1


