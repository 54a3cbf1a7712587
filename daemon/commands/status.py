"""Show what the watch daemon has done: counts by status, last movies, failures, backlog, series.

Reads the state database in OUT_DIR (or the folder given by --state-dir) read-only, so it is safe
while ``motionwatch watch`` runs. ``--json`` prints one JSON object instead of text. Tilt series
are listed with their status (open or completed), tilts corrected out of those their mdoc lists,
the dose the specimen has accumulated (the series metadata's: every tilt listed, a quarantined one
too), and their stack folder.
Failures list only movies that have not been corrected since (a retried movie that succeeded
is no longer a failure); a movie ``motionwatch retry`` requeued is listed as ``requeued`` (and
counted in the backlog) until the daemon meets it again and gives it a row; files still being
written, settling or waiting for their metadata are listed by name with what they wait for.
Times are ISO 8601 UTC (``2026-11-26T00:12:03.412Z``), as in the live feed.
Piped into ``head``, it stops quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from daemon import exitcodes
from daemon.state.ledger import DB_NAME, Ledger, MovieRow
from daemon.series.resolution import ASSEMBLY_FAILED_REASON
from daemon.series.stored_state import (SeriesTally, accumulated_dose_e_A2, series_gone,
                                         series_tallies)
from daemon.system.pace_text import pace_phrase
from daemon.system.processes import flock_holder, process_exists
from daemon.system.terminal_text import printable

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
                        help="how many recent movies to list, and twice as many failures "
                             "(default 5)")


def iso_utc(wall_s: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds (the live feed's ``time``)."""
    if wall_s is None:
        return None
    return datetime.fromtimestamp(wall_s, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _brief(row: MovieRow) -> dict[str, Any]:
    out: dict[str, Any] = {"movie": row.key.path, "status": row.status, "attempts": row.attempts,
                           "updated": iso_utc(row.updated)}
    if row.error:
        out["reason"] = row.error
    if row.status == "failed" and row.failures == 0:
        # put back by trouble outside it (a full disk, a Dask scheduler gone): it waits for
        # that to pass, never counted against it; no failure of the movie's
        out["put_back"] = True
    drift = row.summary.get("drift") if row.summary else None
    if drift:
        out["drift"] = drift
    if row.outputs:
        out["outputs"] = row.outputs
    ran_on = row.summary.get("ran_on") if row.summary else None
    if ran_on:
        out["ran_on"] = ran_on  # host and worker (a Dask worker's address)
    return out


#: the daemon's own countdown to an assembly's next try, as it persisted it in the reason
_RETRY_COUNTDOWN = re.compile(r" \(tried again in [0-9.e+]+ s\)$")


def _reason_seen(reason: str | None, running: bool) -> str | None:
    """A series' persisted reason as it holds now: a stopped daemon's countdown to the next
    try of an assembly is void (it is tried again when the daemon starts)."""
    if reason is None or running:
        return reason
    return _RETRY_COUNTDOWN.sub(" (tried again when the daemon starts)", reason)


def _series(states: dict[str, dict[str, Any]], rows: list[MovieRow], watch_dir: str | None,
            *, running: bool) -> list[dict[str, Any]]:
    """One entry per tilt series, from its persisted state and its movies' tilt records
    (counted as the feed counts them: :func:`daemon.series.stored_state.series_tallies`);
    ``running``: whether its daemon runs now."""
    tallies = series_tallies(states, rows, watch_dir)
    out = []
    for name in sorted(set(states) | set(tallies)):
        state = states.get(name, {})
        tally = tallies.get(name, SeriesTally())
        if series_gone(state, tally):
            continue  # its tilts are another series': a ghost
        stacks = state.get("stacks") or {}
        folder = state.get("folder")
        if folder is None and stacks.get("sum"):
            folder = str(Path(stacks["sum"]).parent)
        out.append({
            "series": name,
            "status": "completed" if state.get("status") == "complete" else "open",
            "tilts_done": tally.done,
            "tilts_failed": tally.failed,
            "tilts_expected": state.get("expected_tilts"),
            "accumulated_dose_e_A2": None if (dose := accumulated_dose_e_A2(state, tally)) is None
            else round(dose, 3),
            "stack_folder": folder, "stacks": stacks, "mdoc": state.get("mdoc"),
            "reason": _reason_seen(state.get("reason"), running)})
    return out


def _met_by_another_name(ledger: Ledger, st: os.stat_result, since: float | None) -> bool:
    """Whether the daemon admitted this file version again, under any name, since it was
    requeued at ``since`` (unknown: at any time)."""
    try:
        rows = ledger.rows_of_file((st.st_dev, st.st_ino), st.st_size, st.st_mtime_ns)
    except sqlite3.Error:  # a database from before rows kept the inode
        return False
    return any(since is None or r.first_seen >= since for r in rows)


def _requeued(ledger: Ledger) -> list[dict[str, Any]]:
    """Movies ``motionwatch retry`` requeued that the daemon has not met again yet (their
    quarantined rows are gone, no new row yet): still on disk as the version requeued."""
    out = []
    for path, size, mtime_ns, when in ledger.requeued_unmet():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue  # gone: nothing to correct
        except OSError:
            st = None  # not readable from here: listed all the same
        if st is not None and (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            continue  # changed since: the daemon meets the new version as a new movie
        if st is not None and _met_by_another_name(ledger, st, when):
            continue  # admitted again under another name of the file (a hard link)
        out.append({"movie": path, "status": "requeued", "requeued": iso_utc(when)})
    return out


def _recorded_since(ledger: Ledger, path: str, beat_wall: float | None) -> bool:
    """Whether ``path`` has a row written after the heartbeat at ``beat_wall`` (admitted,
    corrected or quarantined since that heartbeat listed it as waiting)."""
    if beat_wall is None:
        return False
    return any((row.updated or 0.0) > float(beat_wall) for row in ledger.rows(path=path))


def _daemon_running(state: dict[str, Any], now: float) -> bool:
    """Whether the daemon that wrote ``state`` still runs: it beat within three of its
    heartbeat periods (at least 3 minutes), and, when it ran on this host, its process exists
    (a daemon killed outright cannot say it stopped: without this check it looked alive for
    minutes)."""
    pid, beat = state.get("pid"), _last_sign_wall(state)
    if not pid or beat is None:
        return False
    if now - beat >= max(180.0, 3.0 * float(state.get("heartbeat_s") or 0.0)):
        return False
    if state.get("host") == socket.gethostname():
        return process_exists(int(pid))
    return True


#: a daemon still in its first scan after this long (s) is said to take long (a scan of a
#: large folder on a share takes minutes; one that does not answer, for ever)
STARTING_LONG_S = 600.0

#: a running daemon that has not beaten for this long (or three of its periods) is silent
SILENT_AFTER_S = 60.0


def _last_sign_wall(state: dict[str, Any]) -> float | None:
    """The wall time of the daemon's last sign of life: its last heartbeat, or its start."""
    signs = [float(v) for v in (state.get("heartbeat_wall"), state.get("started_wall"))
             if v is not None]
    return max(signs) if signs else None


def _starting(state: dict[str, Any]) -> bool:
    """The daemon has started and not beaten yet (its first scan may take minutes)."""
    started, beat = state.get("started_wall"), state.get("heartbeat_wall")
    return started is not None and (beat is None or float(beat) < float(started))


def _silent_s(state: dict[str, Any], now: float) -> float | None:
    """Seconds since the last heartbeat of a daemon taken to be running, when that is more
    than three of its periods and at least :data:`SILENT_AFTER_S` (else None); None while it
    is starting."""
    beat = state.get("heartbeat_wall")
    if beat is None or _starting(state):
        return None
    age = now - float(beat)
    limit = max(SILENT_AFTER_S, 3.0 * float(state.get("heartbeat_s") or 0.0))
    return age if age >= limit else None


def collect_status(db_path: Path, *, last: int = 5, now: float | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as a JSON-serialisable dict."""
    now = time.time() if now is None else now
    with Ledger(db_path, read_only=True) as ledger:
        counts = ledger.movie_counts()  # a file once, by its newest version
        state = ledger.service_state()
        # a file once, by its newest row (a movie corrected again under other settings keeps
        # a done row per parameter set: it was listed twice)
        newest_done: dict[str, MovieRow] = {}
        for r in ledger.recent("done", 4 * last):
            newest_done.setdefault(r.key.path, r)
        done = [_brief(r) for r in list(newest_done.values())[:last]]
        # a movie corrected after it failed (a retry, a new version) is no longer a failure
        done_since = ledger.done_times()
        # a file once, by its newest failure (quarantined again under other settings: an
        # empty or cut file fails alike whatever they are)
        newest_failure: dict[str, MovieRow] = {}
        for status in ("quarantined", "failed"):
            for r in ledger.recent(status, 2 * last + len(done_since)):
                known = newest_failure.get(r.key.path)
                if not done_since.get(r.key.path, -1.0) >= r.updated and (
                        known is None or r.updated > known.updated):
                    newest_failure[r.key.path] = r
        failures = [_brief(r) for r in sorted(newest_failure.values(), key=lambda r: r.updated,
                                              reverse=True)][:2 * last]
        backlog = [_brief(r) for r in ledger.rows(status="pending", limit=last)]
        requeued = _requeued(ledger)
        put_back = ledger.put_back_count()
        beat = state.get("heartbeat_wall")
        holder = flock_holder(db_path.parent)  # a daemon holds its folder's lock while it runs
        running = _daemon_running(state, now) or holder is not None
        series = _series(ledger.series_states(), ledger.rows(), state.get("watch_dir"),
                         running=running)
        # the heartbeat's examples are as old as it is: one admitted since is not waiting
        examples = (state.get("waiting_examples") or {}) if running else {}
        waiting = {path: reason for path, reason in examples.items()
                   if not _recorded_since(ledger, path, beat)}
    if not running and counts.get("running"):  # rows of a daemon stopped while correcting
        # them (killed): none is running; each is corrected again at the next start
        counts = {**counts, "pending": counts["pending"] + counts["running"], "running": 0,
                  "interrupted": counts["running"]}
    silent_s = _silent_s(state, now) if running else None
    problems = list(state.get("problems", [])) if running else []
    if silent_s is not None:
        problems.insert(0, f"SILENT: no heartbeat for {silent_s:.0f} s while its process "
                           f"(pid {holder or state.get('pid')}) holds the folder: stopped "
                           "(SIGSTOP), swapping, or hung (a share that stopped answering?)")
    return {
        "database": str(db_path),
        "daemon": {"running": running, "pid": state.get("pid"),
                   "last_heartbeat": iso_utc(beat),
                   "last_heartbeat_s_ago": None if beat is None else round(now - beat, 1),
                   "silent_s": None if silent_s is None else round(silent_s, 1),
                   "starting": running and _starting(state),
                   "started_s_ago": None if state.get("started_wall") is None
                   else round(now - float(state["started_wall"]), 1),
                   # a stopped daemon serves nothing, whatever its last heartbeat said (a
                   # check on ``healthy`` alone read a daemon killed overnight as well)
                   "healthy": bool(state.get("healthy")) and running and silent_s is None,
                   "problems": problems,
                   "discovery": state.get("discovery"), "watch_dir": state.get("watch_dir"),
                   "cluster": state.get("cluster") if running else None,
                   "serving": (state.get("serving") or {}) if running else {},
                   "pace": state.get("pace") if running else None},
        # "failed" counts the movies put back as well ("put_back": waiting for trouble outside
        # them to pass, never counted against them)
        "counts": {**counts, "requeued": len(requeued), "put_back": put_back},
        # what a daemon saw being written or had in hand is its own live view: once it is gone
        # (stopped, or killed before it could say so) it holds for nothing
        "backlog": {"pending": counts["pending"] + counts["failed"] + len(requeued),
                    "requeued": requeued,
                    "waiting_for_completion": max(0, state.get("waiting", 0)
                                                  - len(examples) + len(waiting)) if running
                    else 0,
                    # settled movies a scan left for the next (admission's time a scan spent)
                    "waiting_for_admission": state.get("admission_backlog", 0) if running
                    else 0,
                    "waiting": [{"movie": path, "reason": reason}
                                for path, reason in waiting.items()],
                    "in_flight": state.get("in_flight", []) if running else [],
                    "next": backlog},
        "last_done": done,
        "failures": failures,
        "series": series,
    }


def _say(text: str = "") -> None:
    """Print a line that may hold file names, made safe for a terminal: a control character
    in a refused movie's name (an escape sequence) is shown, not run."""
    print(printable(text, keep_undecodable=True))


def _print_text(status: dict[str, Any]) -> None:
    d = status["daemon"]
    if d["running"]:
        verdict = ("SILENT" if d.get("silent_s") is not None
                   else "healthy" if d["healthy"] else "UNHEALTHY")
        if d.get("starting"):  # no heartbeat of this run yet: its first scan
            slow = (d["started_s_ago"] or 0) > STARTING_LONG_S
            _say(f"daemon: starting (pid {d['pid']}, started {d['started_s_ago']} s ago, "
                 "its first scan under way" + ("; longer than a first scan takes: a share "
                                               "that does not answer?)" if slow else ")"))
        else:
            _say(f"daemon: running (pid {d['pid']}, heartbeat {d['last_heartbeat_s_ago']} s "
                 f"ago, {verdict}; discovery: {d['discovery']})")
        for problem in d["problems"]:
            _say(f"  problem: {problem}")
        serving = d.get("serving") or {}
        if serving:
            _say("serving: " + ", ".join(f"{name} {where}" for name, where in serving.items()))
        phrase = pace_phrase(d.get("pace"))
        if phrase is not None:
            _say(f"pace: {phrase}")
    else:
        _say("daemon: not running")
    cluster = status["daemon"].get("cluster")
    if cluster:
        _say(f"cluster: {cluster.get('scheduler')} "
              f"{'connected' if cluster.get('connected') else 'NOT connected'}, "
              f"{cluster.get('workers', 0)} workers / {cluster.get('threads', 0)} threads, "
              f"{cluster.get('in_flight', 0)}/{cluster.get('max_in_flight', 0)} in flight")
    c = status["counts"]
    shown = {**c, "failed": c["failed"] - c.get("put_back", 0)}
    _say("movies: " + ", ".join(f"{shown[k]} {k}" for k in ("done", "pending", "running",
                                                                "failed", "quarantined"))
          + (f", {c['put_back']} put back (trouble outside them; they wait for it to pass)"
             if c.get("put_back") else "")
          + (f", {c['requeued']} requeued" if c.get("requeued") else "")
          + (f" ({c['interrupted']} of the pending interrupted: the daemon stopped while "
             "correcting them; corrected again at its next start)"
             if c.get("interrupted") else ""))
    b = status["backlog"]
    if not d["running"]:  # what is being written is the daemon's live view
        _say(f"backlog: {b['pending']} to correct")
    else:
        _say(f"backlog: {b['pending']} to correct, {b['waiting_for_completion']} waiting (being "
              f"written, settling, or for their metadata), {len(b['in_flight'])} in progress"
              + (f", {b['waiting_for_admission']} settled and waiting for admission (a scan "
                 "admits for at most 2 s)" if b["waiting_for_admission"] else ""))
    for path in b["in_flight"]:
        _say(f"  in progress: {path}")
    for entry in b["requeued"]:
        _say(f"  requeued: {entry['movie']} (by retry; the daemon takes it up at its next scan)")
    for entry in b["waiting"]:
        _say(f"  waiting: {entry['movie']}: {entry['reason']}")
    if len(b["waiting"]) < b["waiting_for_completion"]:
        _say(f"  (and {b['waiting_for_completion'] - len(b['waiting'])} more waiting)")
    if status["last_done"]:
        _say("last done:")
        for row in status["last_done"]:
            drift = row.get("drift") or {}
            extra = f" (drift {drift['total_A']:.1f} Å)" if "total_A" in drift else ""
            if row.get("ran_on"):
                extra += f" on {row['ran_on'].get('worker') or row['ran_on'].get('host')}"
            _say(f"  {row['movie']}{extra}")
    if status["failures"]:
        _say("failures:")
        for row in status["failures"]:
            state = "put back" if row.get("put_back") else row["status"]
            _say(f"  {state}: {row['movie']}: {row.get('reason', '')}")
    if status["series"]:
        n_done = sum(s["status"] == "completed" for s in status["series"])
        _say(f"tilt series: {len(status['series'])} ({n_done} completed, "
              f"{len(status['series']) - n_done} open)")
        for s in status["series"]:
            expected = "?" if s["tilts_expected"] is None else s["tilts_expected"]
            dose = s["accumulated_dose_e_A2"]
            parts = [f"{s['tilts_done']}/{expected} tilts done"]
            if s["tilts_failed"]:
                parts.append(f"{s['tilts_failed']} failed")
            parts.append("dose ?" if dose is None else f"{dose:.1f} e/Å² accumulated")
            if (s["reason"] or "").startswith(ASSEMBLY_FAILED_REASON):
                parts.append(f"stacks NOT written ({s['reason']})")
            elif s["stacks"] and s["stack_folder"]:
                parts.append(f"stacks in {s['stack_folder']}")
            elif s["stack_folder"]:  # the series' folder, its stacks not assembled yet
                parts.append(f"no stacks yet (to be in {s['stack_folder']})")
            _say(f"  {s['series']}: {s['status']}, " + ", ".join(parts))


def run(args: argparse.Namespace) -> int:
    """``motionwatch status``: 0 when read, 78 when there is no readable state database."""
    folder = args.state_dir if args.state_dir is not None else args.out_dir
    db_path = Path(folder) / DB_NAME
    try:
        status = collect_status(db_path, last=args.last)
    except FileNotFoundError:
        print(f"motionwatch status: {db_path}: no state database (is this the --out folder of "
              f"motionwatch watch? one whose state_dir is set keeps it there: give "
              f"--state-dir)", file=sys.stderr)
        return exitcodes.CONFIG
    except (sqlite3.Error, OSError) as exc:  # a file that is not (or no longer) our database
        reason = " ".join(str(exc).split())
        print(f"motionwatch status: {db_path}: not a readable state database ({reason})",
              file=sys.stderr)
        return exitcodes.CONFIG
    try:
        if args.json:
            print(json.dumps(status))
        else:
            getattr(sys.stdout, "reconfigure", lambda **kw: None)(errors="backslashreplace")
            _print_text(status)  # (a file name that is not UTF-8 is shown with \u escapes)
        sys.stdout.flush()
    except BrokenPipeError:  # `status | head`: the reader has gone; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        os.close(devnull)
    return exitcodes.OK
