"""The dashboard's web server: one page, server-sent events, files from the output folder.

:class:`Dashboard` runs two kinds of threads: one reads the ZeroMQ feed
(:class:`daemon.feed.subscriber.Subscriber`) into a :class:`~daemon.dashboard.state.SessionView`,
and a stdlib :class:`http.server.ThreadingHTTPServer` answers

``/``, ``/static/app.js``, ``/static/app.css``
    the page, from this package's ``static/`` folder (no CDN: it works offline);
``/api/state``
    the current :meth:`SessionView.snapshot` as JSON;
``/events``
    a ``text/event-stream``: the snapshot whenever it changes (at most every 0.25 s), when the
    daemon's state changes with time (looked at every second: a silent daemon shows as
    silent), and every ``_PUSH_IDLE_S`` otherwise (the rates fall while nothing is corrected);
``/files/<path>``
    a picture or table below the output folder (``.png``, ``.json``, ``.csv``, ``.tlt``,
    ``.mdoc``, ``.txt``): the path is resolved (symbolic links included) and refused with 404
    unless it stays inside the output folder and names a regular file.

It only reads: GET and HEAD, nothing else. It listens on loopback unless ``allow_remote`` is
set; on a loopback address (with or without it) it refuses requests whose ``Host`` is not a
loopback name (DNS rebinding). A connection idle for ``_IDLE_TIMEOUT_S`` is closed; pages may
not be framed by other sites.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from daemon.dashboard.state import SessionView
from daemon.feed.subscriber import Subscriber

__all__ = ["DEFAULT_LISTEN", "DashboardConfig", "DashboardError", "Dashboard", "is_loopback",
           "parse_listen", "resolve_inside"]

DEFAULT_LISTEN = "127.0.0.1:8765"
STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
                 "/static/app.css": ("app.css", "text/css; charset=utf-8")}
_FILE_TYPES = {".png": "image/png", ".json": "application/json", ".csv": "text/csv",
               ".tlt": "text/plain", ".mdoc": "text/plain", ".txt": "text/plain"}
_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
_PUSH_MIN_S = 0.25
_PUSH_MAX_S = 1.0  # how often a stream looks whether the daemon's state changed with time
_PUSH_IDLE_S = 10.0  # an unchanged view is sent again this often (its rates fall with time)
_IDLE_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed
#: connections served at once (each a thread and a socket); more are answered 503 at once:
#: a thousand clients that never left took the daemon's file descriptors (its correction
#: stopped on "Too many open files") and its accept loop spun at a whole core
MAX_CONNECTIONS = 64
#: live pages (``/events`` streams) at once, within MAX_CONNECTIONS
MAX_EVENT_STREAMS = 32
_BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
               b"Content-Length: 20\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
               b"503 too many clients")
_MISS_KEPT_S = 5.0  # a picture not found is looked for again after this long
_SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                     ("Content-Security-Policy",
                      "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"))


class DashboardError(ValueError):
    """Bad dashboard options (the message names the option and the value)."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise DashboardError(f"--listen {text!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN})")
    try:
        number = int(port)
    except ValueError:
        raise DashboardError(f"--listen {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise DashboardError(f"--listen {text!r}: port {number} out of range 0..65535")
    return host.strip("[]"), number


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """Where the dashboard reads and listens.

    Attributes
    ----------
    feed : str
        The daemon's ZeroMQ endpoint (``tcp://127.0.0.1:5557``, ``ipc://...``).
    out_dir : Path
        The daemon's output folder; the only folder files are served from.
    listen : str
        ``HOST:PORT`` to serve on (default loopback port 8765).
    allow_remote : bool
        Must be true to listen on anything but a loopback address.
    """

    feed: str
    out_dir: Path
    listen: str = DEFAULT_LISTEN
    allow_remote: bool = False

    def __post_init__(self) -> None:
        host, _ = parse_listen(self.listen)
        if not is_loopback(host) and not self.allow_remote:
            raise DashboardError(f"--listen {self.listen}: {host} is not a loopback address; "
                                 "add --allow-remote to serve the dashboard on the network")
        if not Path(self.out_dir).is_dir():
            raise DashboardError(f"--out {self.out_dir}: no such folder")


class _Locator:
    """An output file -> its ``/files/...`` URL, with ``?v=`` its modification time (a picture
    written again, e.g. a series' contact sheet after a re-assembly, gets a new URL, so a page
    never shows the copy it cached). A path relative to the output folder (``grid2/a.thumb.png``)
    is that file; a bare name is looked for up to ``depth`` folders down (cached)."""

    def __init__(self, root: Path, *, depth: int = 3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.depth = depth
        self._cache: dict[str, str] = {}
        self._missed: dict[str, float] = {}  # name -> when it was last looked for in vain
        self._clock = clock
        self._lock = threading.Lock()

    def _url(self, rel: str) -> str | None:
        try:
            st = (self.root / rel).stat()
        except OSError:
            return None
        # a name that is not UTF-8 is quoted as the bytes it has on disk
        return f"/files/{urllib.parse.quote(os.fsencode(rel))}?v={st.st_mtime_ns}"

    def __call__(self, name: str) -> str | None:
        parts = name.split("/") if name else []
        if not parts or any(p in ("", "..") or p.startswith(".") for p in parts):
            return None
        if len(parts) > 1:
            return self._url(name)
        now = self._clock()
        with self._lock:
            rel = self._cache.get(name)
            missed = self._missed.get(name)
        if rel is not None and (url := self._url(rel)) is not None:
            return url
        if missed is not None and now - missed < _MISS_KEPT_S:
            return None  # not there a moment ago: not looked for at every push
        pattern = glob.escape(name)  # a name is a name: ``**``, ``[x]`` or ``*`` match only it
        for _ in range(self.depth + 1):
            for hit in self.root.glob(pattern):
                if hit.is_file():
                    rel = hit.relative_to(self.root).as_posix()
                    with self._lock:
                        self._cache[name] = rel
                        self._missed.pop(name, None)
                    return self._url(rel)
            pattern = "*/" + pattern
        with self._lock:
            if len(self._missed) > 10_000:
                self._missed.clear()
            self._missed[name] = now
        return None


def resolve_inside(root: Path, url_path: str) -> Path | None:
    """The regular file ``url_path`` (URL-encoded, relative) names inside ``root``, or None when
    it would leave ``root`` (``..``, absolute, a symbolic link out) or is not a served type."""
    rel = urllib.parse.unquote(url_path, errors="surrogateescape")  # bytes as on disk
    if "\0" in rel or rel.startswith("/") or "\\" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        return None
    base = root.resolve()
    try:
        target = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # a link loop: RuntimeError before Python 3.13
        return None
    if target != base and base not in target.parents:
        return None
    try:  # a name too long for the file system, a folder it may not enter
        if target.suffix.lower() not in _FILE_TYPES or not target.is_file():
            return None
    except OSError:
        return None
    return target


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most :data:`MAX_CONNECTIONS` connections at
    once and answers the others ``503`` without a thread."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog (5 made a burst of pages wait a second)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):  # gone already: nothing to tell it
                request.sendall(_BUSY_REPLY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (reset, broken pipe, timed out) is no error to print into
        the daemon's log; anything else is, with its traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Dashboard:
    """The feed reader and the web server of ``motionwatch dashboard``.

    Parameters
    ----------
    config : DashboardConfig
    clock : callable
        Monotonic seconds (rates, heartbeat age).
    """

    def __init__(self, config: DashboardConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.root = Path(config.out_dir).resolve()
        self.view = SessionView(locate=_Locator(self.root), clock=clock, own_folder=self.root,
                                feed=config.feed)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._httpd: ThreadingHTTPServer | None = None
        self.streams = threading.BoundedSemaphore(MAX_EVENT_STREAMS)  # live pages served

    # -- lifecycle

    def start(self) -> Dashboard:
        """Bind the HTTP server and start the feed and server threads; returns self.

        Raises
        ------
        DashboardError
            The address cannot be bound (in use, not local).
        """
        host, port = parse_listen(self.config.listen)
        handler = type("Handler", (_Handler,), {"dashboard": self})
        server_class: type[ThreadingHTTPServer] = _BoundedServer
        if ":" in host:
            server_class = type("Server6", (_BoundedServer,), {"address_family": socket.AF_INET6})
        try:
            self._httpd = server_class((host, port), handler)
        except OSError as exc:
            raise DashboardError(f"--listen {self.config.listen}: {exc.strerror or exc}") from exc
        self._httpd.daemon_threads = True
        for target, name in ((self._read_feed, "dashboard-feed"),
                             (self._httpd.serve_forever, "dashboard-http")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` actually bound (the real port when 0 was asked)."""
        assert self._httpd is not None, "start() first"
        host, port = self._httpd.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def close(self) -> None:
        """Stop the threads and close the sockets (idempotent)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait(self) -> None:
        """Block until :meth:`close` (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass

    # -- state

    def _read_feed(self) -> None:
        with Subscriber(self.config.feed) as sub:
            while not self._stop.is_set():
                got = sub.receive(0.2)
                if got is None or got[0] == "invalid":
                    continue
                with self._lock:
                    self.view.apply(*got)  # never raises: a malformed message is counted
                    self._lock.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.view.snapshot()

    def daemon_state(self) -> str:
        """The daemon's state now (:meth:`SessionView.daemon_state`: it changes with time)."""
        with self._lock:
            return self.view.daemon_state()

    def wait_change(self, version: int, timeout_s: float) -> int:
        """Wait until the view's version differs from ``version`` (or the timeout); returns
        the version now."""
        with self._lock:
            if self.view.version == version and not self._stop.is_set():
                self._lock.wait(timeout_s)
            return self.view.version

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "motionwatch-dashboard"
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT_S  # the socket's: an idle (or half-sent) request is dropped
    error_content_type = "text/plain; charset=utf-8"  # the stdlib's own errors (400, 501 ...)
    error_message_format = "%(code)d %(message)s: %(explain)s\n"

    def end_headers(self) -> None:
        for name, value in _SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: the dashboard is read by people, not logged per request

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _refuse(self, status: HTTPStatus, why: str) -> None:
        body = f"{status.value} {status.phrase}: {why}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send(self, body: bytes, content_type: str, *, head: bool,
              cache: str = "no-store") -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _host_ok(self) -> bool:
        if self.dashboard.config.allow_remote and not is_loopback(
                str(self.server.server_address[0])):
            return True  # listening for other hosts: any name of this one
        host = (self.headers.get("Host") or "").strip()
        name = host.rpartition(":")[0] if host.count(":") == 1 or host.startswith("[") else host
        return is_loopback(name.strip("[]") or host)

    def _route(self, *, head: bool) -> None:
        if self.headers.get("Content-Length") not in (None, "0") \
                or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a GET's body is never read as another request
        if not self._host_ok():
            self._refuse(HTTPStatus.FORBIDDEN, "Host is not a loopback name")
            return
        path = urllib.parse.urlsplit(self.path).path
        if path in _STATIC_FILES:
            name, content_type = _STATIC_FILES[path]
            self._send((STATIC / name).read_bytes(), content_type, head=head)
        elif path == "/api/state":
            self._send(json.dumps(self.dashboard.snapshot()).encode(), "application/json",
                       head=head)
        elif path == "/events":
            self._events(head=head)
        elif path.startswith("/files/"):
            target = resolve_inside(self.dashboard.root, path[len("/files/"):])
            if target is None:
                self._refuse(HTTPStatus.NOT_FOUND, "no such file in the output folder")
                return
            try:
                body = target.read_bytes()
            except OSError:  # gone since, or not readable by this account
                self._refuse(HTTPStatus.NOT_FOUND, "no such file in the output folder")
                return
            self._send(body, _FILE_TYPES[target.suffix.lower()], head=head, cache="no-cache")
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "no such page")

    def _events(self, *, head: bool) -> None:
        if not self.dashboard.streams.acquire(blocking=False):
            self.close_connection = True
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE,
                         f"{MAX_EVENT_STREAMS} live pages are open already")
            return
        try:
            self._stream(head=head)
        finally:
            self.dashboard.streams.release()

    def _stream(self, *, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if head:
            return
        # sent when the view changed, when the daemon's state changed with time (silent), and
        # every _PUSH_IDLE_S: an idle page was sent the whole view every second (half a MB
        # for a full page, and a fifth of a core to draw it again)
        version, state = -1, None
        last = 0.0
        try:
            while not self.dashboard.stopped:
                changed = self.dashboard.wait_change(version, _PUSH_MAX_S) != version
                if changed or self.dashboard.daemon_state() != state \
                        or time.monotonic() - last >= _PUSH_IDLE_S:
                    wait = _PUSH_MIN_S - (time.monotonic() - last)
                    if wait > 0 and version >= 0:
                        time.sleep(wait)
                    snap = self.dashboard.snapshot()
                    version, state = snap["version"], snap["daemon"]["state"]
                    self.wfile.write(b"data: " + json.dumps(snap).encode() + b"\n\n")
                    self.wfile.flush()
                    last = time.monotonic()
                else:  # a comment line, which pages ignore: a page closed since is seen
                    # within two of them (its thread and slot given back), not at the next
                    # push, up to _PUSH_IDLE_S later
                    self.wfile.write(b":\n\n")
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            return

