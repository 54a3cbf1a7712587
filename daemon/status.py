"""Show what the watch daemon has done: counts by status, last movies, failures, backlog.

Reads the state database in OUT_DIR (or the folder given by --state-dir) read-only, so it is safe
while ``motionwatch watch`` runs. ``--json`` prints one JSON object instead of text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import exitcodes
from .ledger import DB_NAME, Ledger, MovieRow

__all__ = ["add_arguments", "run", "collect_status"]

EXAMPLES = """examples:
  motionwatch status /data/session/motioncorr
  motionwatch status /data/session/motioncorr --json | jq .counts
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="the output folder of motionwatch watch (holds the state database)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="folder of the state database when it is not OUT_DIR")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--last", type=int, default=5, metavar="N",
                        help="how many recent movies and failures to list (default 5)")


def _brief(row: MovieRow) -> dict[str, Any]:
    out: dict[str, Any] = {"movie": row.key.path, "status": row.status, "attempts": row.attempts,
                           "updated": row.updated}
    if row.error:
        out["reason"] = row.error
    drift = row.summary.get("drift") if row.summary else None
    if drift:
        out["drift"] = drift
    if row.outputs:
        out["outputs"] = row.outputs
    return out


def collect_status(db_path: Path, *, last: int = 5, now: float | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as a JSON-serialisable dict."""
    now = time.time() if now is None else now
    with Ledger(db_path, read_only=True) as ledger:
        counts = ledger.counts()
        state = ledger.service_state()
        done = [_brief(r) for r in ledger.recent("done", last)]
        failures = [_brief(r) for r in ledger.recent("quarantined", last)]
        failures += [_brief(r) for r in ledger.recent("failed", last)]
        backlog = [_brief(r) for r in ledger.rows(status="pending")[:last]]
    beat = state.get("heartbeat_wall")
    running = bool(state.get("pid")) and beat is not None and now - beat < 3 * 60
    return {
        "database": str(db_path),
        "daemon": {"running": running, "pid": state.get("pid"),
                   "last_heartbeat_s_ago": None if beat is None else round(now - beat, 1),
                   "healthy": state.get("healthy"), "problems": state.get("problems", []),
                   "discovery": state.get("discovery"), "watch_dir": state.get("watch_dir")},
        "counts": counts,
        "backlog": {"pending": counts["pending"] + counts["failed"],
                    "waiting_for_completion": state.get("waiting", 0),
                    "in_flight": state.get("in_flight", []), "next": backlog},
        "last_done": done,
        "failures": failures,
    }


def _print_text(status: dict[str, Any]) -> None:
    d = status["daemon"]
    if d["running"]:
        print(f"daemon: running (pid {d['pid']}, heartbeat {d['last_heartbeat_s_ago']} s ago, "
              f"{'healthy' if d['healthy'] else 'UNHEALTHY'}; discovery: {d['discovery']})")
        for problem in d["problems"]:
            print(f"  problem: {problem}")
    else:
        print("daemon: not running")
    c = status["counts"]
    print("movies: " + ", ".join(f"{c[k]} {k}" for k in ("done", "pending", "running", "failed",
                                                            "quarantined")))
    b = status["backlog"]
    print(f"backlog: {b['pending']} to correct, {b['waiting_for_completion']} still being "
          f"written or settling, {len(b['in_flight'])} in progress")
    for path in b["in_flight"]:
        print(f"  in progress: {path}")
    if status["last_done"]:
        print("last done:")
        for row in status["last_done"]:
            drift = row.get("drift") or {}
            extra = f" (drift {drift['total_A']:.1f} Å)" if "total_A" in drift else ""
            print(f"  {row['movie']}{extra}")
    if status["failures"]:
        print("failures:")
        for row in status["failures"]:
            print(f"  {row['status']}: {row['movie']}: {row.get('reason', '')}")


def run(args: argparse.Namespace) -> int:
    """``motionwatch status``: 0 when read, 78 when there is no state database."""
    folder = args.state_dir if args.state_dir is not None else args.out_dir
    db_path = Path(folder) / DB_NAME
    try:
        status = collect_status(db_path, last=args.last)
    except FileNotFoundError:
        print(f"motionwatch status: {db_path}: no state database (is this the --out folder of "
              f"motionwatch watch?)", file=sys.stderr)
        return exitcodes.CONFIG
    if args.json:
        print(json.dumps(status))
    else:
        _print_text(status)
    return exitcodes.OK
