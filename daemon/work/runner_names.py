"""The callable a ``"module:function"`` name names (a worker's runner, a gain loader)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["resolve_runner"]


def resolve_runner(runner: str) -> Callable[..., Any]:
    """The callable named by ``"module:function"``."""
    module_name, _, attr = runner.partition(":")
    return getattr(importlib.import_module(module_name), attr)
