"""Shared test set-up: the modules in ``tests/helpers`` are importable by name
(``from daemon_process import events``; ``import eer_writer``)."""

import sys
from pathlib import Path

_HELPERS = str(Path(__file__).parent / "helpers")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)
