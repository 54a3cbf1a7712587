"""A stand-in for :class:`daemon.feed.publisher.Publisher` that keeps the warnings it is given
(``from fake_publisher import FakePublisher``; ``tests/conftest.py`` puts this folder on
``sys.path``)."""

from __future__ import annotations

__all__ = ["FakePublisher"]


class FakePublisher:
    endpoint = "inproc://none"
    session = "s"

    def __init__(self) -> None:
        self.warnings: list[tuple[str, str]] = []

    def movie(self, *a, **k): ...

    def heartbeat(self, **k): ...

    def error(self, *a, **k): ...

    def series(self, *a, **k): ...

    def restore(self, *a, **k): ...

    def close(self): ...

    def warning(self, kind, message, **k):
        self.warnings.append((kind, message))
