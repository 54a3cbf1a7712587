"""Where the feed is published: the endpoint's form and whether it is local (the feed is
exposed beyond this machine only when allowed), for the publisher and its subscribers."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence

__all__ = ["DEFAULT_ENDPOINT", "PublishConfigError", "endpoint_is_local", "feed_endpoint"]

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
