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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["watch_argv", "spawn", "events", "events_in", "rows", "wait_for_heartbeats"]


def watch_argv(watch: Path, out: Path, *flags: str) -> list[str]:
    """The command line ``python -m daemon watch WATCH --out OUT FLAGS...``; the feed on a free
    loopback port unless the flags say where (the default port may be held by another daemon
    still exiting, or by anything else on the machine)."""
    feed = [] if {"--publish", "--no-publish"} & {f.split("=")[0] for f in flags} else \
        ["--publish", "tcp://127.0.0.1:*"]
    return [sys.executable, "-m", "daemon", "watch", str(watch), "--out", str(out), *feed,
            *flags]


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, *,
          new_session: bool = False) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr appended to ``log``, output unbuffered and outside
    any systemd journal (so the daemon logs JSON lines) and away from any real systemd notify
    socket, plus ``env`` (which may give a test's own ``NOTIFY_SOCKET``); ``new_session``: in
    a process group of its own (a signal to the group does not reach the tests)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    environ.update({"PYTHONUNBUFFERED": "1", **dict(env or {})})
    with open(log, "ab") as fh:
        return subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=environ,
                                start_new_session=new_session)


def events(log: Path) -> list[dict]:
    """The JSON log events in ``log`` so far (other lines skipped; [] before it exists)."""
    return events_in(log.read_text()) if log.exists() else []


def events_in(text: str) -> list[dict]:
    """The JSON log events among the lines of ``text`` (other lines skipped)."""
    out = []
    for line in text.splitlines():
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


def _heartbeat_wall(out: Path) -> float | None:
    try:
        db = sqlite3.connect(f"file:{out / 'motionwatch.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT value FROM service_state WHERE key = 'heartbeat_wall'")
            found = row.fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # not created yet, or busy
        return None
    return None if found is None else float(json.loads(found[0]))


def wait_for_heartbeats(out: Path, n: int, timeout_s: float = 60.0) -> None:
    """Return once the daemon writing ``out``'s state database has recorded ``n`` more
    heartbeats: its main loop turned at least ``n`` times (scanning as due), however slow the
    machine. The window in which a test sees that something did *not* happen."""
    deadline = time.monotonic() + timeout_s
    last, seen = _heartbeat_wall(out), 0
    while seen < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{seen} of {n} heartbeats in {timeout_s} s")
        time.sleep(0.05)
        beat = _heartbeat_wall(out)
        if beat is not None and beat != last:
            last, seen = beat, seen + 1
