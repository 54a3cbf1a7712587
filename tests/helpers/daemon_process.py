"""Run ``python -m daemon watch`` as a subprocess in tests and read what it left behind.

Imported by name (``from daemon_process import ...``): ``tests/conftest.py`` puts this folder on
``sys.path``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["watch_argv", "spawn", "events", "rows"]


def watch_argv(watch: Path, out: Path, *flags: str) -> list[str]:
    """The command line ``python -m daemon watch WATCH --out OUT FLAGS...``; the feed on a free
    loopback port unless the flags say where (the default port may be held by another daemon
    still exiting, or by anything else on the machine)."""
    feed = [] if {"--publish", "--no-publish"} & {f.split("=")[0] for f in flags} else \
        ["--publish", "tcp://127.0.0.1:*"]
    return [sys.executable, "-m", "daemon", "watch", str(watch), "--out", str(out), *feed,
            *flags]


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
          ) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr appended to ``log``, output unbuffered and outside
    any systemd journal (so the daemon logs JSON lines) and away from any real systemd notify
    socket, plus ``env`` (which may give a test's own ``NOTIFY_SOCKET``)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    environ.update({"PYTHONUNBUFFERED": "1", **dict(env or {})})
    with open(log, "ab") as fh:
        return subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=environ)


def events(log: Path) -> list[dict]:
    """The JSON log events in ``log`` so far (other lines skipped; [] before it exists)."""
    out = []
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def rows(out: Path) -> list[dict]:
    """Every row of the ``movies`` table of the state database in ``out``, by file mtime."""
    db = sqlite3.connect(out / "motionwatch.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM movies ORDER BY mtime_ns")]
    finally:
        db.close()
