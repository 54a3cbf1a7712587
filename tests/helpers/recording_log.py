"""A structlog-like logger for tests that keeps every event.

Imported by name (``from recording_log import RecordingLog``): ``tests/conftest.py`` puts this
folder on ``sys.path``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RecordingLog"]


class RecordingLog:
    """Keeps ``(level, event, fields)`` of every call, bound fields included."""

    def __init__(self, events: list | None = None, **bound: Any) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = [] if events is None else events
        self._bound = bound

    def bind(self, **kw: Any) -> RecordingLog:
        return RecordingLog(self.events, **{**self._bound, **kw})

    def _emit(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((level, event, {**self._bound, **kw}))

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._emit("error", event, **kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._emit("critical", event, **kw)

    def named(self, event: str) -> list[dict[str, Any]]:
        """The fields of every ``event`` logged, in order."""
        return [kw for _, e, kw in self.events if e == event]
