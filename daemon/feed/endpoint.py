"""Where the feed is published: the endpoint's form and whether it is local (the feed is
exposed beyond this machine only when allowed), for the publisher and its subscribers."""

from __future__ import annotations

import argparse
import errno
import grp
import ipaddress
import os
import socket
from collections.abc import Sequence

__all__ = ["DEFAULT_ENDPOINT", "PublishConfigError", "endpoint_is_local", "feed_endpoint",
           "ipc_connect_problem", "ipc_socket_path", "unix_connect_error"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
_LOOPBACK_NAMES = {"localhost", "lo", "ip6-localhost"}
_LOCAL_TRANSPORTS = ("ipc://", "inproc://")


class PublishConfigError(ValueError):
    """Invalid publishing configuration; ``problems`` lists each one (one line each)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


def feed_endpoint(text: str) -> str:
    """An ``argparse`` type for the endpoint a subscriber connects to: ``transport://address``
    (one line naming the problem otherwise, e.g. ``127.0.0.1:5557`` without ``tcp://``)."""
    try:
        endpoint_is_local(text)
    except PublishConfigError as exc:
        raise argparse.ArgumentTypeError("; ".join(exc.problems)) from None
    return text


def endpoint_is_local(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and TCP on a loopback address or the ``lo`` interface.

    Raises
    ------
    PublishConfigError
        The endpoint is not ``transport://address`` or a TCP endpoint has no port.
    """
    if "://" not in endpoint:
        raise PublishConfigError([f"endpoint {endpoint!r} is not transport://address "
                                  f"(e.g. {DEFAULT_ENDPOINT} or ipc:///run/motionwatch/feed)"])
    if endpoint.startswith(_LOCAL_TRANSPORTS):
        return True
    if not endpoint.startswith("tcp://"):
        return False  # pgm, epgm, udp, ws, tipc, vmci ...: a network by nature
    address = endpoint[len("tcp://"):]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port:
        raise PublishConfigError([f"endpoint {endpoint!r} has no port (tcp://HOST:PORT)"])
    if ";" in host:  # "source;destination" form (connect only); treat as remote
        return False
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


def ipc_socket_path(endpoint: str) -> str | None:
    """The socket file of an ``ipc://`` endpoint; None for another transport or an abstract
    name (``ipc://@name``), which has no file."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    return endpoint[len("ipc://"):]


def unix_connect_error(path: str) -> OSError | None:
    """Why connecting once to the Unix stream socket at ``path`` fails; None when something
    listens there. Connecting takes write permission on the socket file."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        return exc
    finally:
        probe.close()
    return None


def ipc_connect_problem(endpoint: str) -> str | None:
    """Why a subscriber cannot reach an ``ipc://`` feed, told by connecting to its socket file
    once (None when it connects, or for any other transport: ZeroMQ retries a refused connect
    in silence, so a subscriber refused for lack of permission heard nothing and asked "is the
    daemon running?")."""
    path = ipc_socket_path(endpoint)
    exc = None if path is None else unix_connect_error(path)
    if exc is None:
        return None
    if isinstance(exc, PermissionError):
        return f"this account may not connect to {path} (permission denied){_group_hint(path)}"
    if isinstance(exc, FileNotFoundError):
        return f"no socket at {path}: is the daemon running, with this feed?"
    if exc.errno == errno.ECONNREFUSED:
        return f"nothing listens on {path}: the daemon that made it has stopped"
    return f"cannot connect to {path}: {exc.strerror or exc}"


def _group_hint(path: str) -> str:
    """Whom to ask: the group that may connect to the socket file (as the units make it)."""
    try:
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return ""
    return f": its group {group} may; ask to be added to it"
