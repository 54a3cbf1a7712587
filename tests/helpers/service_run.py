"""Run an in-process :class:`daemon.engine.service.Service` until it goes idle, in tests.

Imported by name (``from service_run import run_until_idle``): ``tests/conftest.py`` puts this
folder on ``sys.path``.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["run_until_idle"]


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
