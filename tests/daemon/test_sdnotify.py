"""The notify protocol spoken to a fake ``$NOTIFY_SOCKET`` (a datagram socket of the test's own)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.system.sdnotify import Notifier, WatchdogPinger, watchdog_interval_s, watchdog_timeout_s


class FakeManager:
    """Receives notify datagrams like systemd does, with their arrival times (monotonic s)."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what systemd would put in $NOTIFY_SOCKET

    def receive(self, timeout_s: float = 2.0) -> tuple[float, dict[str, str]] | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        arrived = time.monotonic()
        text = data.decode()
        assert text.endswith("\n")
        return arrived, dict(line.split("=", 1) for line in text.splitlines())

    def drain(self) -> list[dict[str, str]]:
        messages = []
        while (got := self.receive(timeout_s=0.01)) is not None:
            messages.append(got[1])
        return messages


@pytest.fixture
def path_manager() -> Iterator[FakeManager]:
    # a short folder: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        path = str(Path(folder) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield FakeManager(sock, path)


@pytest.fixture
def abstract_manager() -> Iterator[FakeManager]:
    name = f"motionwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield FakeManager(sock, "@" + name)


@pytest.mark.parametrize("manager_fixture", ["path_manager", "abstract_manager"])
def test_ready_status_stopping_reach_a_path_or_abstract_notify_socket(
    manager_fixture: str, request: pytest.FixtureRequest
) -> None:
    manager: FakeManager = request.getfixturevalue(manager_fixture)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": manager.env_value})
    assert notifier.enabled

    assert notifier.ready(status="watching /data/frames") is True
    assert notifier.status("done 3, running 1, failed 0") is True
    assert notifier.extend_timeout(90_000_000) is True
    assert notifier.stopping() is True

    assert manager.drain() == [
        {"READY": "1", "STATUS": "watching /data/frames"},
        {"STATUS": "done 3, running 1, failed 0"},
        {"EXTEND_TIMEOUT_USEC": "90000000"},
        {"STOPPING": "1"},
    ]


def test_newline_in_a_status_cannot_inject_another_key(path_manager: FakeManager) -> None:
    Notifier(path_manager.env_value).status("bad movie\nREADY=1")
    assert path_manager.drain() == [{"STATUS": "bad movie READY=1"}]


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}):
        notifier = Notifier.from_environ(environ)
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False


def test_socket_errors_return_false_instead_of_raising(tmp_path: Path) -> None:
    missing = Notifier(str(tmp_path / "no-such-socket"))
    assert missing.enabled
    assert missing.ready() is False
    not_a_socket = tmp_path / "plain-file"
    not_a_socket.write_text("")
    assert Notifier(str(not_a_socket)).watchdog() is False


def test_full_manager_queue_drops_the_message_after_the_send_timeout(
    path_manager: FakeManager,
) -> None:
    notifier = Notifier(path_manager.env_value, send_timeout_s=0.05)
    assert notifier.status("first") is True
    # nobody reads: the queue fills after a few hundred datagrams, then sends give up
    for _ in range(5000):
        if not notifier.status("x" * 1000):
            break
    else:
        pytest.fail("5000 datagrams queued without the manager reading any")
    assert path_manager.drain()[0] == {"STATUS": "first"}


def test_watchdog_interval_is_a_quarter_of_watchdog_usec_for_our_pid_only() -> None:
    """A quarter: a ping held back by one or two failed health checks in a row still leaves a
    gap under the timeout (at half, one failed check was a gap of the whole timeout)."""
    pid = os.getpid()
    env = {"WATCHDOG_USEC": "30000000"}
    assert watchdog_timeout_s(env) == 30.0
    assert watchdog_interval_s(env) == 7.5
    assert watchdog_interval_s({**env, "WATCHDOG_PID": str(pid)}) == 7.5
    assert watchdog_interval_s({**env, "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_interval_s({**env, "WATCHDOG_PID": "1"}, pid=1) == 7.5
    for bad in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        assert watchdog_interval_s(bad) is None


def test_pinger_thread_pings_at_a_quarter_of_watchdog_usec(abstract_manager: FakeManager
                                                           ) -> None:
    env = {"NOTIFY_SOCKET": abstract_manager.env_value, "WATCHDOG_USEC": "800000"}
    interval_s = watchdog_interval_s(env)
    assert interval_s == 0.2
    with WatchdogPinger(Notifier.from_environ(env), lambda: True, interval_s=interval_s):
        arrivals = []
        for _ in range(6):
            got = abstract_manager.receive()
            assert got is not None, "no WATCHDOG=1 within 2 s"
            assert got[1] == {"WATCHDOG": "1"}
            arrivals.append(got[0])
    assert arrivals == sorted(arrivals)  # the period itself is a clock matter: see the tick test


def test_pinger_stops_pinging_while_unhealthy_and_resumes_after(
    path_manager: FakeManager,
) -> None:
    healthy = threading.Event()
    healthy.set()
    pinger = WatchdogPinger(Notifier(path_manager.env_value), healthy.is_set, interval_s=0.05)
    with pinger:
        assert path_manager.receive() is not None
        healthy.clear()  # e.g. workers stuck on a movie
        time.sleep(0.06)  # let a ping already decided on arrive
        path_manager.drain()
        assert path_manager.receive(timeout_s=0.4) is None, "pinged while unhealthy"
        healthy.set()
        got = path_manager.receive()
        assert got is not None and got[1] == {"WATCHDOG": "1"}


def test_health_check_that_raises_counts_as_unhealthy_and_keeps_the_pinger_alive(
    path_manager: FakeManager,
) -> None:
    calls = []

    def health() -> bool:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("discovery state unavailable")
        return True

    with WatchdogPinger(Notifier(path_manager.env_value), health, interval_s=0.02):
        got = path_manager.receive()
    assert got is not None and got[1] == {"WATCHDOG": "1"}
    assert len(calls) >= 4


def test_tick_from_a_service_loop_pings_once_per_interval_and_only_when_healthy(
    path_manager: FakeManager,
) -> None:
    now = [100.0]
    healthy = [True]
    pinger = WatchdogPinger(
        Notifier(path_manager.env_value), lambda: healthy[0], interval_s=15.0,
        clock=lambda: now[0],
    )
    sent = []
    for t in (100.0, 105.0, 114.9, 115.0, 120.0, 130.1):
        now[0] = t
        sent.append(pinger.tick())
    assert sent == [True, False, False, True, False, True]
    healthy[0] = False
    now[0] = 200.0
    assert pinger.tick() is False
    assert pinger.pings_sent == 3
    assert path_manager.drain() == [{"WATCHDOG": "1"}] * 3


@pytest.mark.parametrize("failed_checks, killed", [(1, False), (2, False), (3, True)])
def test_health_checks_failing_in_a_row_get_the_service_killed_only_from_three(
        path_manager: FakeManager, failed_checks: int, killed: bool) -> None:
    """WatchdogSec = 120 s, checks (and pings) every 30 s: one or two failed checks in a row (a
    slow scan of a share at the wrong moment) leave a gap between pings under 120 s; three, the
    daemon unhealthy for about a minute, reach it, and systemd kills the service."""
    timeout_s = watchdog_timeout_s({"WATCHDOG_USEC": "120000000"})
    interval_s = watchdog_interval_s({"WATCHDOG_USEC": "120000000"})
    now = [0.0]
    failing = set(range(2, 2 + failed_checks))  # the check numbers that fail
    check = [0]

    def health() -> bool:
        check[0] += 1
        return check[0] - 1 not in failing

    pinger = WatchdogPinger(Notifier(path_manager.env_value), health, interval_s=interval_s,
                            clock=lambda: now[0])
    pings = []
    for k in range(10):
        now[0] = k * interval_s
        if pinger.tick():
            pings.append(now[0])
    largest_gap = max(b - a for a, b in zip(pings, pings[1:]))
    assert largest_gap == (failed_checks + 1) * interval_s
    assert (largest_gap >= timeout_s) == killed


def test_pinger_with_disabled_notifier_sends_nothing_and_stops_cleanly() -> None:
    pinger = WatchdogPinger(Notifier(None), lambda: True, interval_s=0.01).start()
    time.sleep(0.05)
    pinger.stop()
    assert pinger.pings_sent == 0


def test_bad_arguments_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        WatchdogPinger(Notifier(None), lambda: True, interval_s=0)
    with pytest.raises(ValueError, match="usec must be > 0"):
        Notifier("/run/x").extend_timeout(0)
    with pytest.raises(ValueError, match="send_timeout_s must be > 0"):
        Notifier("/run/x", send_timeout_s=0)
