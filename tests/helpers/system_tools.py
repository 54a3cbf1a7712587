"""System tools a test needs (imported by name: see ``tests/conftest.py``).

``.ci/run`` installs them, so on CI (``CI=true``) a missing one fails the test: CI never passes
by skipping. Elsewhere the test is skipped with the package to install.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["on_ci", "require_tool", "unavailable"]


def on_ci() -> bool:
    """True when the suite runs under ``.ci/run`` (or any CI that sets ``CI=true``)."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> None:
    """Fail on CI, skip elsewhere, saying what is missing."""
    if on_ci():
        pytest.fail(f"{what} on CI (.ci/run provides it)")
    pytest.skip(what)


def require_tool(command: str, package: str) -> str:
    """The path of ``command``; fails on CI, skips elsewhere, when it is not installed."""
    found = shutil.which(command)
    if found is None:
        unavailable(f"{command} is missing (apt-get install {package})")
    return found
