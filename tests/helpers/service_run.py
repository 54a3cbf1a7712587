"""Run an in-process :class:`daemon.engine.service.Service` until it goes idle, in tests.

Imported by name (``from service_run import run_until_idle``): ``tests/conftest.py`` puts this
folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["run_until_idle", "running", "watch_once", "more_heartbeats", "empty_session"]


def run_until_idle(service: Any, *, guard_s: float = 60.0,
                   reason: str = "test guard: never went idle") -> None:
    """``service.run()`` (its config's ``exit_when_idle_s`` ends it), stopped after ``guard_s``
    seconds at the latest; asserts exit status 0."""
    guard = threading.Timer(guard_s, service.request_stop, args=(reason,))
    guard.start()
    try:
        assert service.run() == 0
    finally:
        guard.cancel()


def watch_once(watch: Any, out: Any, params: Any, **config: Any) -> tuple[Any, Any]:
    """Run a service on ``watch`` (outputs and state in ``out``) until it is idle, its feed
    going to a :class:`FakePublisher` and its log to a :class:`RecordingLog`; returns
    ``(log, publisher)``. Fast test timings; ``config`` overrides any :class:`Config` field."""
    from fake_publisher import FakePublisher  # noqa: PLC0415 - test helpers, on sys.path
    from recording_log import RecordingLog  # noqa: PLC0415

    from daemon.engine.service import Service  # noqa: PLC0415
    from daemon.feed.listener import PublishListener  # noqa: PLC0415
    from daemon.settings.config import Config  # noqa: PLC0415

    fields = {"settle_time_s": 0.1, "scan_interval_s": 0.05, "heartbeat_s": 0.2,
              "exit_when_idle_s": 0.5, "polling": "on", **config}
    log, publisher = RecordingLog(), FakePublisher()
    service = Service(Config(watch, out, out, params, **fields),
                      listeners=[PublishListener(publisher)], logger=log)
    assert service.run() == 0
    return log, publisher


@contextlib.contextmanager
def running(service: Any, *, timeout_s: float = 60.0) -> Iterator[Callable[..., None]]:
    """``service.run()`` in a thread, stopped (and joined) on leaving; yields
    ``wait_for(condition, timeout_s=None)``, which polls until the condition holds or its time
    is up (by default the time left of ``timeout_s`` from the start)."""
    thread = threading.Thread(target=service.run)
    deadline = time.monotonic() + timeout_s

    def wait_for(condition: Callable[[], bool], timeout_s: float | None = None) -> None:
        until = deadline if timeout_s is None else time.monotonic() + timeout_s
        while not condition() and time.monotonic() < until:
            time.sleep(0.02)

    thread.start()
    try:
        yield wait_for
    finally:
        service.request_stop("test done")
        thread.join(60)


def more_heartbeats(log: Any, wait_for: Callable[..., None], n: int = 3) -> None:
    """Wait until the service logging to ``log`` (a RecordingLog) has beaten ``n`` more times:
    its main loop turned at least ``n`` times, scanning as due, however slow the machine. The
    window in which a test sees that something did *not* happen."""
    seen = len(log.named("heartbeat"))
    wait_for(lambda: len(log.named("heartbeat")) >= seen + n, timeout_s=30.0)
    assert len(log.named("heartbeat")) >= seen + n, f"fewer than {n} more heartbeats"


def empty_session(tmp_path: Any) -> Any:
    """The :class:`Config` of a service on an empty watch folder (``tmp_path/w``, outputs and
    state in ``tmp_path/out``), 1 e/Å² a frame, fast test timings, idle after 0.3 s."""
    from correction.params import CorrectionParams, DoseParams  # noqa: PLC0415
    from daemon.settings.config import Config  # noqa: PLC0415

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    return Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                  settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.1,
                  exit_when_idle_s=0.3, polling="on")
