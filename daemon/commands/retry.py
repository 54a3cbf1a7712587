"""Requeue quarantined movies: their quarantine is lifted, and the daemon takes each up again as
a new movie.

With no MOVIE, every quarantined movie of OUT_DIR's state database is requeued; otherwise those
whose path or file name is given. Each is met again as at its arrival: validated, its metadata,
dose and pre-exposure resolved afresh (a tilt gets its series' dose, not the configured one),
then corrected once; one still bad is quarantined again. A running ``motionwatch watch`` picks
them up at its next scan; a stopped one at its next start (until then ``motionwatch status``
lists them as ``requeued``). Files that were never movies (ignored
names) stay as they are.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from daemon import exitcodes
from daemon.state.ledger import DB_NAME, Ledger, display_path

__all__ = ["add_arguments", "run"]

EXAMPLES = """examples:
  motionwatch retry /data/session/motioncorr
  motionwatch retry /data/session/motioncorr movie_0012.tif /data/session/movie_0013.tif
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="the output folder of motionwatch watch (holds the state database)")
    parser.add_argument("movies", nargs="*", metavar="MOVIE",
                        help="movies to requeue (path or file name); default: all quarantined")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="folder of the state database when it is not OUT_DIR")


def _owner(path: Path) -> str:
    """The name of the account that owns ``path`` (its uid when it has no name)."""
    import pwd

    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _root_on_anothers(db_path: Path, euid: int) -> bool:
    """Whether this is root acting on a database another account (the service's) owns."""
    return euid == 0 and db_path.stat().st_uid != 0


def _read_only(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    """``motionwatch retry``: 0 when requeued (or nothing to do), 1 when a named movie is not
    quarantined or its file is gone (left quarantined; without names such files are said and
    left, and the status is 0), 78 without a usable state database."""
    folder = args.state_dir if args.state_dir is not None else args.out_dir
    db_path = Path(folder) / DB_NAME
    if not db_path.is_file():
        print(f"motionwatch retry: {db_path}: no state database (is this the --out folder of "
              f"motionwatch watch? one whose state_dir is set keeps it there: give "
              f"--state-dir)", file=sys.stderr)
        return exitcodes.CONFIG
    if _read_only(db_path):
        print(f"motionwatch retry: {db_path}: on a read-only file system (mounted read-only "
              "here?): nothing was changed", file=sys.stderr)
        return exitcodes.CONFIG
    # another account's database: SQLite would make its -wal and -shm files ours (root's too:
    # root may write anything), and the service could not open the database again
    if not os.access(db_path, os.W_OK) or _root_on_anothers(db_path, os.geteuid()):
        owner = _owner(db_path)
        print(f"motionwatch retry: {db_path}: not writable by this account (the service's "
              f"database, {owner}'s): run it as that account (sudo -u {owner} motionwatch "
              "retry ...); nothing was changed", file=sys.stderr)
        return exitcodes.CONFIG
    wanted = None
    if args.movies:
        wanted = set()
        for name in args.movies:
            wanted.add(name)
            if os.sep in name:
                wanted.add(os.path.abspath(name))
    try:
        with Ledger(db_path, read_only=True) as ledger:  # files looked at outside any write
            quarantined = {row.key.path for row in ledger.rows(status="quarantined")}
        gone = sorted(path for path in quarantined if not os.path.lexists(path))
        with Ledger(db_path) as ledger:
            keys = ledger.requeue(wanted, leave=gone)
    except (sqlite3.Error, OSError) as exc:
        reason = " ".join(str(exc).split())
        print(f"motionwatch retry: {db_path}: cannot be written ({reason}: "
              f"{_write_hint(db_path)}); nothing was changed", file=sys.stderr)
        return exitcodes.CONFIG
    for key in keys:
        print(f"requeued: {display_path(key.path)}")
    print(f"{len(keys)} quarantined movie(s) requeued")
    if wanted is not None:  # only those named
        gone = [p for p in gone if p in wanted or os.path.basename(p) in wanted]
    for path in gone:
        print(f"motionwatch retry: {display_path(path)}: no such file (deleted, moved, or a "
              "share not mounted): left quarantined", file=sys.stderr)
    if wanted is not None:
        found = {k.path for k in keys} | {os.path.basename(k.path) for k in keys}
        found |= set(gone) | {os.path.basename(p) for p in gone}
        missing = [m for m in args.movies if m not in found and os.path.abspath(m) not in found]
        for name in missing:
            print(f"motionwatch retry: {name}: not a quarantined movie", file=sys.stderr)
        if missing or gone:
            return exitcodes.SOME_FAILED
    return exitcodes.OK


def _write_hint(db_path: Path) -> str:
    """Why SQLite may not write the state database (not on a read-only file system: said
    before): a folder in which it cannot make its ``-wal`` and ``-shm`` files."""
    return (f"can {db_path.parent} be written? SQLite makes its -wal and -shm files beside "
            "the database; or it is not a motionwatch state database")
