"""A subscriber to the feed (:class:`Subscriber`): a SUB socket for the monitor, the dashboard
and tests, connecting (and reconnecting) to the publisher, CURVE when the server has a key."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

__all__ = ["Subscriber"]


class Subscriber:
    """A SUB socket for monitors and tests: connects (and reconnects) to a publisher.

    Parameters
    ----------
    endpoint : str
        The publisher's endpoint (``tcp://HOST:PORT`` or ``ipc://``).
    topics : iterable of str
        Topic prefixes; ``("",)`` receives everything, ``state`` included.
    curve_server_key : Path, optional
        The server's certificate (public key); enables CURVE.
    curve_client_key : Path, optional
        This client's certificate with secret key (needed when the server authenticates
        clients); a throwaway key pair is generated otherwise.
    """

    def __init__(self, endpoint: str, *, topics: Iterable[str] = ("",),
                 curve_server_key: Path | None = None,
                 curve_client_key: Path | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 200)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        if endpoint.startswith("tcp://[") or endpoint.startswith("tcp://::"):
            self._sock.setsockopt(zmq.IPV6, 1)
        if curve_server_key is not None:
            server_public, _ = zmq.auth.load_certificate(str(curve_server_key))
            if curve_client_key is not None:
                public, secret = zmq.auth.load_certificate(str(curve_client_key))
                if secret is None:
                    raise ValueError(f"{curve_client_key}: certificate has no secret key")
            else:
                public, secret = zmq.curve_keypair()
            self._sock.curve_serverkey = server_public
            self._sock.curve_publickey = public
            self._sock.curve_secretkey = secret
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def receive(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        """The next ``(topic, body)``, or None after ``timeout_s`` without a message.

        A message that is not ``[topic, JSON object]`` comes back as
        ``("invalid", {"error": ...})`` rather than raising.
        """
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self._sock.recv_multipart()
        if len(frames) != 2:
            return "invalid", {"error": f"{len(frames)} frames, expected 2"}
        try:
            body = json.loads(frames[1])
            topic = frames[0].decode("ascii")
        except (ValueError, UnicodeDecodeError) as exc:
            return "invalid", {"error": str(exc)}
        if not isinstance(body, dict):
            return "invalid", {"error": "body is not a JSON object"}
        return topic, body

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
