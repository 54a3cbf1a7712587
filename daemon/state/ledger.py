"""Durable state of every movie: SQLite in WAL mode; the only module that writes SQL.

A movie is keyed by ``(path, size, mtime_ns, fingerprint)``: the file as observed and the hash of
the parameters that affect its result (:meth:`correction.params.CorrectionParams.fingerprint`).
A changed file (new size or mtime) or new parameters make a new key, so a new row. Each row
also stores the file's ``(st_dev, st_ino)`` when admitted (columns ``dev``, ``ino``; added to an
older database when it is opened): :meth:`Ledger.rows_of_file` finds the rows of one file
version under any name, so that a link to a recorded movie or a renamed folder is recognised
(:meth:`Ledger.move` carries a moved movie's rows to its new name, outputs unchanged), and a
fingerprint of its content (column ``content``, :mod:`daemon.intake.content`; NULL in rows an
older version wrote), so that another file that got a deleted movie's inode, size and mtime is
not taken for it.

Statuses: ``pending`` (ready, waiting for a worker), ``running`` (a worker has it), ``done``
(outputs renamed into place, then the row written), ``failed`` (will be retried after
``retry_after``), ``quarantined`` (given up, with the reason). ``attempts`` counts worker starts,
``failures`` the failed ones that count towards quarantine.

A row's key and metadata are what admission decided for the movie when it was admitted (or
quarantined at validation, before any metadata). :meth:`Ledger.requeue` (``motionwatch retry``)
therefore does not set a quarantined row pending as it is: it drops the row and counts the
requeue (:meth:`Ledger.requeue_serial`), so that the daemon meets the movie again as a new one,
validated and with its metadata and dose resolved afresh.

Start-up recovery (:meth:`Ledger.recover_running`): rows left ``running`` by a crash go back to
``pending`` and are redone. The ``service_state`` table holds the daemon's heartbeat and
counters for ``motionwatch status``, which reads the database while the daemon runs.

Any path the file system gives is stored so that it round-trips: a name that is valid UTF-8 as
TEXT, any other (bytes that Python decodes with ``surrogateescape``, e.g. ``bad_\udce9.mrc``) as
a BLOB of its bytes. Any ``mtime_ns`` is stored too: one outside SQLite's 64-bit INTEGER (a file
dated 2300) as the TEXT ``ns:<digits>``, which sorts after every integer. Free text (errors) is
stored with undecodable characters backslash-escaped. :func:`open_or_rebuild` moves a corrupt
database aside (``motionwatch.sqlite.corrupt-<time>``) and starts a new one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.events import VANISHED, MovieKey

__all__ = ["DB_NAME", "MovieKey", "MovieRow", "Ledger", "STATUSES", "CorruptDatabase",
           "open_or_rebuild", "display_path", "VANISHED"]

DB_NAME = "motionwatch.sqlite"
STATUSES = ("pending", "running", "done", "failed", "quarantined")
#: rows put back by trouble outside the movie (failed, never counted against it)
_PUT_BACK = "status = 'failed' AND failures = 0"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS movies (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed','quarantined')),
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    outputs TEXT,
    timings TEXT,
    summary TEXT,
    metadata TEXT,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    retry_after REAL,
    dev INTEGER,
    ino INTEGER,
    content TEXT,
    UNIQUE (path, size, mtime_ns, fingerprint)
);
CREATE INDEX IF NOT EXISTS movies_status ON movies (status, mtime_ns);
CREATE TABLE IF NOT EXISTS service_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mdocs (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    unchanged_since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    name TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL
);
"""


#: the JSON columns of a row, in the order of :attr:`MovieRow.texts`
_JSON_COLUMNS = ("outputs", "timings", "summary", "metadata")


@dataclass(frozen=True, slots=True)
class MovieRow:
    """One row of the ``movies`` table.

    Its JSON columns (``outputs``, ``timings``, ``summary``, ``metadata``) are decoded when
    first read, and kept: a state database of months of sessions is read whole at start-up by
    several parts and kept by :class:`~daemon.state.newest.NewestRows`, and most of its rows'
    columns are never read (100,000 rows: 777 MB held decoded against 126 MB of JSON, 4.3 s
    to read against 1.6 s). :meth:`peek_metadata` decodes without keeping, for a look at every
    row.
    """

    key: MovieKey
    status: str
    attempts: int
    failures: int
    error: str | None
    first_seen: float
    updated: float
    finished: float | None
    retry_after: float | None
    inode: tuple[int, int] | None = None
    content: str | None = None
    row_id: int | None = None  # the table's id: which rows a cache holds (NewestRows)
    #: JSON text of outputs, timings, summary and metadata ("" or None: an empty dict)
    texts: tuple[str | None, ...] = ("", "", "", "")
    # the decoded columns, made afresh for every row (a copy by dataclasses.replace too)
    _decoded: list = field(default_factory=lambda: [None] * len(_JSON_COLUMNS), init=False,
                           compare=False, repr=False)

    def _column(self, index: int, keep: bool = True) -> dict[str, Any]:
        value = self._decoded[index]
        if value is None:
            text = self.texts[index]
            value = json.loads(text) if text else {}
            if keep:
                self._decoded[index] = value
        return value

    @property
    def outputs(self) -> dict[str, str]:
        return self._column(0)

    @property
    def timings(self) -> dict[str, float]:
        return self._column(1)

    @property
    def summary(self) -> dict[str, Any]:
        return self._column(2)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._column(3)

    def peek_metadata(self) -> dict[str, Any]:
        """``metadata``, decoded without keeping it (a look at every row of a long history)."""
        return self._column(3, keep=False)

    def peek_outputs(self) -> dict[str, str]:
        """``outputs``, decoded without keeping it (a series assembled once: its rows, held
        for the run by the newest-rows cache, need not hold the dict)."""
        return self._column(0, keep=False)

    def peek_summary(self) -> dict[str, Any]:
        """``summary``, decoded without keeping it."""
        return self._column(2, keep=False)


_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _path_in(path: str) -> str | bytes:
    """A path as stored: TEXT when it is valid UTF-8, else the file system's bytes (BLOB)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _path_out(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


#: the file name of a TEXT (UTF-8) path, as its bytes: what follows its last "/" (rtrim strips
#: every character but "/"; a BLOB path's bytes are not always read right by text functions)
_FILE_NAME_SQL = ("substr(CAST(path AS BLOB), "
                  "length(CAST(rtrim(path, replace(path, '/', '')) AS BLOB)) + 1)")


def _ns_in(value: int) -> int | str:
    """An integer as stored: itself when SQLite's INTEGER holds it, else ``ns:<digits>``."""
    return value if _INT64[0] <= value <= _INT64[1] else f"ns:{value}"


def _ns_out(value: int | str) -> int:
    return int(value[3:]) if isinstance(value, str) and value.startswith("ns:") else int(value)


def _text_in(text: str | None) -> str | None:
    """Free text as stored: characters UTF-8 cannot hold (surrogates) backslash-escaped."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def display_path(path: str) -> str:
    """A path for people and terminals: undecodable bytes shown as ``\\xe9`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _row(r: sqlite3.Row) -> MovieRow:
    names = r.keys()
    inode = ((int(r["dev"]), int(r["ino"])) if "ino" in names and r["ino"] is not None
             and r["dev"] is not None else None)
    return MovieRow(MovieKey(_path_out(r["path"]), r["size"], _ns_out(r["mtime_ns"]),
                             r["fingerprint"]), r["status"],
                    r["attempts"], r["failures"], r["error"], r["first_seen"], r["updated"],
                    r["finished"], r["retry_after"], inode,
                    r["content"] if "content" in names else None,
                    r["id"] if "id" in names else None,
                    tuple(r[c] for c in _JSON_COLUMNS))


_KEY_WHERE = "path = ? AND size = ? AND mtime_ns = ? AND fingerprint = ?"
#: the ``service_state`` key counting requeues (:meth:`Ledger.requeue`)
_REQUEUE_SERIAL = "requeue_serial"
#: the ``service_state`` key of the versions each requeue lifted,
#: ``[serial, path, size, mtime, wall time of the requeue]`` (entries written before the time
#: was kept have four items)
_REQUEUED_VERSIONS = "requeued_versions"
_REQUEUE_LOG_LENGTH = 5000


def _inode_in(inode: tuple[int, int] | None) -> tuple[Any, Any]:
    """``(dev, ino)`` as stored (SQLite's INTEGER is signed 64-bit: a larger number as TEXT)."""
    if inode is None:
        return (None, None)
    return (_ns_in(int(inode[0])), _ns_in(int(inode[1])))


def _k(key: MovieKey) -> tuple:
    return (_path_in(key.path), _ns_in(key.size), _ns_in(key.mtime_ns), key.fingerprint)


def _read_only_uri(path: Path) -> str:
    """SQLite URI to read ``path`` without writing anything beside it.

    While a daemon has the database open, its write-ahead log (``-wal``, ``-shm``) is there and
    is read with it. Once the daemon has closed it, the log is folded in and removed: the file
    is then read as immutable, because a plain read-only open would create a new ``-wal`` and
    ``-shm``, which fails for a reader who may not write in the folder (staff reading through
    the group) and, run as root, leaves files the daemon's own user cannot open.
    """
    quoted = urllib.parse.quote(str(Path(path).absolute()))
    if Path(f"{path}-wal").exists():
        return f"file:{quoted}?mode=ro"
    return f"file:{quoted}?mode=ro&immutable=1"


class Ledger:
    """The state database of one output (or state) folder.

    Parameters
    ----------
    path : Path
        Database file (created with its folder's permissions if absent).
    read_only : bool
        Open for reading only (``motionwatch status``), safe beside a running daemon.
    clock : callable
        Wall clock (s since the epoch) for ``updated`` / ``finished`` stamps.
    """

    def __init__(self, path: Path, *, read_only: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no motionwatch state database")
            self._db = sqlite3.connect(_read_only_uri(self.path), uri=True, timeout=10,
                                       isolation_level=None)
        else:
            self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # a database written before rows kept the inode (or the content fingerprint) gets
            # the columns; checked and added in one write transaction, so that two processes
            # opening it at once (the daemon starting, `motionwatch retry`) do not both add them
            with self._tx() as db:
                columns = {r[1] for r in db.execute("PRAGMA table_info(movies)")}
                for column, kind in (("dev", "INTEGER"), ("ino", "INTEGER"), ("content", "TEXT")):
                    if column not in columns:
                        try:
                            db.execute(f"ALTER TABLE movies ADD COLUMN {column} {kind}")
                        except sqlite3.OperationalError as exc:
                            if "duplicate column name" not in str(exc):
                                raise
                db.execute("CREATE INDEX IF NOT EXISTS movies_file ON movies (ino, dev)")
                db.execute("CREATE INDEX IF NOT EXISTS movies_version ON movies (mtime_ns, size)")
                # rows_named, asked for each new movie: one index entry per row, so that the
                # rows of one name are found without reading every row of the same size and
                # mtime (one camera writes movies of one size; a copied session can have
                # thousands of one mtime)
                db.execute(f"CREATE INDEX IF NOT EXISTS movies_name ON movies "
                           f"({_FILE_NAME_SQL}, size, mtime_ns)")
                # rows_signature and rows_written_since, at every scan and finished tilt: from
                # this index, not a pass over every row (28,000 rows: 12.8 -> 1.9 ms, 11.8 ->
                # 0.03 ms)
                db.execute("CREATE INDEX IF NOT EXISTS movies_updated ON movies (updated)")
                # and the few paths that are not UTF-8, which rows_named checks one by one
                db.execute("CREATE INDEX IF NOT EXISTS movies_blob_path ON movies "
                           "(size, mtime_ns) WHERE typeof(path) = 'blob'")
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- reads ----------------------------------------------------------------------------
    def get(self, key: MovieKey) -> MovieRow | None:
        r = self._db.execute(f"SELECT * FROM movies WHERE {_KEY_WHERE}", _k(key)).fetchone()
        return None if r is None else _row(r)

    def rows(self, *, status: str | None = None, path: str | None = None,
             limit: int | None = None) -> list[MovieRow]:
        """Rows (optionally of one status or one path; the first ``limit``) in acquisition
        order."""
        sql, args = "SELECT * FROM movies", []
        where = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if path is not None:
            where.append("path = ?")
            args.append(_path_in(path))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY mtime_ns, path, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_row(r) for r in self._db.execute(sql, args)]

    def done_outputs_below(self, folder: str, limit: int = 20) -> list[dict[str, str]]:
        """The outputs of at most ``limit`` done movies whose path lies below ``folder`` (a
        range of the path index, no row decoded but its outputs)."""
        prefix = folder.rstrip("/") + "/"
        found = self._db.execute(
            "SELECT outputs FROM movies WHERE path >= ? AND path < ? AND status = 'done' "
            "LIMIT ?", (prefix, prefix[:-1] + "0", int(limit)))  # '0' follows '/'
        return [outputs for (text,) in found if isinstance(outputs := json.loads(text or "{}"),
                                                          dict)]

    def versions(self) -> set[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` of every row (no column decoded but these)."""
        return {(_path_out(p), _ns_out(size), _ns_out(mtime)) for p, size, mtime in
                self._db.execute("SELECT path, size, mtime_ns FROM movies")}

    def done_times(self) -> dict[str, float]:
        """Path -> when its latest done row was last written (the ledger's clock, s)."""
        return {_path_out(p): float(t) for p, t in self._db.execute(
            "SELECT path, MAX(updated) FROM movies WHERE status = 'done' GROUP BY path")}

    def rows_signature(self) -> tuple[int, int, float, int, int]:
        """``(number of rows, sum of their ids, latest updated time, changes this connection
        made, the database's data version)``: any write to the database, by this connection
        or another, changes it; the first two change when rows come or go (a redo's new id)."""
        n, ids, updated = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(id), 0), COALESCE(MAX(updated), 0) FROM movies"
        ).fetchone()
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        return int(n), int(ids), float(updated), int(self._db.total_changes), int(version)

    def rows_written_since(self, updated: float, after_id: int) -> list[MovieRow]:
        """Rows updated at or after ``updated`` (the ledger's clock, s) or inserted after row
        ``after_id``."""
        return [_row(r) for r in self._db.execute(
            "SELECT * FROM movies WHERE updated >= ? OR id > ?", (updated, after_id))]

    def counts(self) -> dict[str, int]:
        """Rows per status (every status present, zero if none)."""
        out = {s: 0 for s in STATUSES}
        for r in self._db.execute("SELECT status, COUNT(*) AS n FROM movies GROUP BY status"):
            out[r["status"]] = r["n"]
        return out

    def movie_counts(self) -> dict[str, int]:
        """Movies per status, each file counted once by its newest row (a file that grew after
        it was corrected, or was redone with new parameters, has a row per version)."""
        out = {s: 0 for s in STATUSES}
        for r in self._db.execute(
                "SELECT status, COUNT(*) AS n FROM movies WHERE id IN "
                "(SELECT MAX(id) FROM movies GROUP BY path) GROUP BY status"):
            out[r["status"]] = r["n"]
        return out

    def next_pending(self, *, now: float | None = None, horizon_s: float | None = None,
                     pending_only: bool = False) -> MovieRow | None:
        """The oldest (by file mtime) movie ready to run: pending, or failed and due for retry
        (wall clock ``now``, s); with ``horizon_s``, a retry time more than that beyond ``now``
        counts as due (set before the wall clock stepped back); ``pending_only``: never
        failed (a movie to try whether trouble outside the movies has passed)."""
        now = self._clock() if now is None else now
        beyond = now + horizon_s if horizon_s is not None else float("inf")
        pending = ("SELECT * FROM (SELECT * FROM movies WHERE status = 'pending' "
                   "ORDER BY mtime_ns, path, id LIMIT 1)")
        if pending_only:
            r = self._db.execute(pending).fetchone()
            return None if r is None else _row(r)
        # two queries, each walking the (status, mtime_ns) index: one with OR sorted every
        # pending row at each claim (a backlog of thousands after a downtime)
        r = self._db.execute(
            f"{pending} UNION ALL "
            "SELECT * FROM (SELECT * FROM movies WHERE status = 'failed' "
            "AND (retry_after IS NULL OR retry_after <= ? OR retry_after > ?) "
            "ORDER BY mtime_ns, path, id LIMIT 1) "
            "ORDER BY mtime_ns, path, id LIMIT 1", (now, beyond)).fetchone()
        return None if r is None else _row(r)

    def recent(self, status: str, limit: int = 10) -> list[MovieRow]:
        """The latest rows of one status, newest first."""
        return [_row(r) for r in self._db.execute(
            "SELECT * FROM movies WHERE status = ? ORDER BY updated DESC, id DESC LIMIT ?",
            (status, limit))]

    def rows_of_file(self, inode: tuple[int, int], size: int, mtime_ns: int) -> list[MovieRow]:
        """Rows of one file version under any name: the same ``(st_dev, st_ino)``, size and
        mtime (a link to it, or its name before a rename), in acquisition order."""
        return [_row(r) for r in self._db.execute(
            "SELECT * FROM movies WHERE dev = ? AND ino = ? AND size = ? AND mtime_ns = ? "
            "ORDER BY id", (*_inode_in(inode), _ns_in(size), _ns_in(mtime_ns)))]

    def rows_of_inode_number(self, ino: int, size: int, mtime_ns: int) -> list[MovieRow]:
        """Rows of this inode number, size and mtime on any device, in acquisition order: the
        candidates of a file reached through another mount of its share."""
        return [_row(r) for r in self._db.execute(
            # "+": looked up by inode number (index movies_file), not by size and mtime, of
            # which a session may have thousands
            "SELECT * FROM movies WHERE ino = ? AND +size = ? AND +mtime_ns = ? ORDER BY id",
            (_ns_in(int(ino)), _ns_in(size), _ns_in(mtime_ns)))]

    def rows_named(self, file_name: str, size: int, mtime_ns: int) -> list[MovieRow]:
        """Rows whose path ends in the file name ``file_name`` (any folder), of this size and
        mtime, in acquisition order: the candidates of a renamed folder whose inode numbers
        changed (a remount, a share without stable inode numbers) or were never recorded.
        Looked up in an index, whatever the number of rows of that size and mtime; a path
        stored as a BLOB (not UTF-8), whose bytes SQLite's text functions may misread, is
        checked here instead."""
        args = (_ns_in(size), _ns_in(mtime_ns))
        rows = list(self._db.execute(
            f"SELECT * FROM movies WHERE {_FILE_NAME_SQL} = ? AND size = ? AND mtime_ns = ? "
            "AND typeof(path) = 'text'", (os.fsencode(file_name), *args)))
        rows += [r for r in self._db.execute(
            "SELECT * FROM movies WHERE typeof(path) = 'blob' AND size = ? AND mtime_ns = ?",
            args) if os.path.basename(bytes(r["path"])) == os.fsencode(file_name)]
        return [_row(r) for r in sorted(rows, key=lambda r: r["id"])]

    def fill_inodes(self) -> int:
        """Rows recorded before rows kept the inode learn it from their file, where it still
        is that version (the same size and mtime; a link on the way followed): a second name of
        it (a folder link the previous version visited) is then known as the same file.
        Returns how many rows learnt it."""
        rows = self._db.execute("SELECT DISTINCT path, size, mtime_ns FROM movies "
                                "WHERE ino IS NULL AND size >= 0").fetchall()
        updates = []
        for path, size, mtime_ns in rows:
            try:
                st = os.stat(_path_out(path))
            except (OSError, ValueError):
                continue
            if (st.st_size, st.st_mtime_ns) == (_ns_out(size), _ns_out(mtime_ns)):
                updates.append((*_inode_in((st.st_dev, st.st_ino)), path, size, mtime_ns))
        if updates:
            with self._tx() as db:
                db.executemany("UPDATE movies SET dev = ?, ino = ? WHERE path = ? AND size = ? "
                               "AND mtime_ns = ? AND ino IS NULL", updates)
        return len(updates)

    def mdoc_states(self) -> dict[str, dict[str, Any]]:
        """Every known mdoc by path: ``sha256``, ``size``, ``mtime_ns``, ``kind``,
        ``unchanged_since`` (wall clock s of its last content change)."""
        keys = ("sha256", "size", "kind", "unchanged_since")
        return {_path_out(r["path"]): {**{k: r[k] for k in keys}, "mtime_ns": _ns_out(r["mtime_ns"])}
                for r in self._db.execute("SELECT * FROM mdocs")}

    def series_states(self) -> dict[str, dict[str, Any]]:
        """Every tilt series' persisted state (JSON dict) by name."""
        return {_path_out(r["name"]): json.loads(r["state"])
                for r in self._db.execute("SELECT * FROM series")}

    def service_state(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in
                self._db.execute("SELECT key, value FROM service_state")}

    # --- writes ---------------------------------------------------------------------------
    def add(self, key: MovieKey, *, status: str = "pending", error: str | None = None,
            metadata: Mapping[str, Any] | None = None,
            inode: tuple[int, int] | None = None, content: str | None = None) -> MovieRow:
        """Insert a new movie version (no-op if the key exists); return its row. ``inode``:
        the file's ``(st_dev, st_ino)``, ``content`` its content fingerprint
        (:func:`daemon.intake.content.content_fingerprint`), when known."""
        if status not in ("pending", "quarantined"):
            raise ValueError(f"a new row is pending or quarantined, not {status!r}")
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO movies (path, size, mtime_ns, fingerprint, status, error, "
                "metadata, first_seen, updated, finished, dev, ino, content) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*_k(key), status, _text_in(error), json.dumps(dict(metadata or {})), now, now,
                 now if status == "quarantined" else None, *_inode_in(inode), content))
        row = self.get(key)
        assert row is not None
        return row

    def adopt(self, key: MovieKey, *, outputs: Mapping[str, str], summary: Mapping[str, Any],
              timings: Mapping[str, float], metadata: Mapping[str, Any] | None = None,
              inode: tuple[int, int] | None = None, content: str | None = None) -> None:
        """Record a movie as done from outputs found on disk (written before a crash)."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO movies (path, size, mtime_ns, fingerprint, status, outputs, timings, "
                "summary, metadata, first_seen, updated, finished, error, dev, ino, content) "
                "VALUES (?,?,?,?,'done',?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "status='done', "
                "outputs=excluded.outputs, timings=excluded.timings, summary=excluded.summary, "
                "updated=excluded.updated, finished=excluded.finished, error=excluded.error",
                (*_k(key), json.dumps(dict(outputs)), json.dumps(dict(timings)),
                 json.dumps(dict(summary)), json.dumps(dict(metadata or {})), now, now, now,
                 "adopted outputs found on disk", *_inode_in(inode), content))

    def claim(self, key: MovieKey) -> int:
        """Mark a pending/failed movie running; returns its attempt number (1 = first)."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE movies SET status='running', attempts=attempts+1, updated=? "
                f"WHERE {_KEY_WHERE} AND status IN ('pending','failed')", (self._clock(), *_k(key)))
            if cur.rowcount != 1:
                raise LookupError(f"{key.path}: not pending")
            return db.execute(f"SELECT attempts FROM movies WHERE {_KEY_WHERE}",
                              _k(key)).fetchone()[0]

    def mark_done(self, key: MovieKey, *, outputs: Mapping[str, str],
                  timings: Mapping[str, float], summary: Mapping[str, Any]) -> None:
        """The outputs are renamed into place: say so."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                f"UPDATE movies SET status='done', outputs=?, timings=?, summary=?, error=NULL, "
                f"updated=?, finished=?, retry_after=NULL WHERE {_KEY_WHERE}",
                (json.dumps(dict(outputs)), json.dumps(dict(timings)), json.dumps(dict(summary)),
                 now, now, *_k(key)))

    def mark_failed(self, key: MovieKey, error: str, *, quarantine: bool, count: bool = True,
                    retry_delay_s: float = 0.0, started: bool = True) -> str:
        """Record a failure; returns the new status (``failed`` or ``quarantined``).

        ``count=False`` (environmental trouble: full disk, missing output folder) retries
        without bringing the movie closer to quarantine; ``started=False`` (no worker could
        start on it) also takes back the attempt :meth:`claim` counted.
        """
        now = self._clock()
        status = "quarantined" if quarantine else "failed"
        with self._tx() as db:
            db.execute(
                f"UPDATE movies SET status=?, error=?, failures=failures+?, updated=?, "
                f"retry_after=?, finished=?, attempts=MAX(attempts-?, 0) WHERE {_KEY_WHERE}",
                (status, _text_in(error), 1 if count else 0, now,
                 None if quarantine else now + retry_delay_s, now if quarantine else None,
                 0 if started else 1, *_k(key)))
        return status

    def put_back_due_now(self) -> int:
        """Make the movies put back by trouble outside them (failed, never counted against:
        a full disk, a worker that could not start) due at once: the pause that held them
        was a process's that has ended, and a new one retries them first (oldest first),
        not after the newer movies. Returns how many."""
        with self._tx() as db:
            return db.execute(f"UPDATE movies SET retry_after=? WHERE {_PUT_BACK} "
                              "AND retry_after > ?",
                              (self._clock(), self._clock())).rowcount

    def put_back_count(self) -> int:
        """Movies put back by trouble outside them, waiting for it to pass (failed, never
        counted against; each file's newest row)."""
        # the newest row of the files that have a put-back row only (usually none): not a
        # second walk of every row at each heartbeat, beside movie_counts'
        return int(self._db.execute(
            f"SELECT COUNT(*) FROM movies WHERE {_PUT_BACK} AND id IN (SELECT MAX(id) FROM "
            f"movies WHERE path IN (SELECT path FROM movies WHERE {_PUT_BACK}) GROUP BY path)"
        ).fetchone()[0])

    def requeue(self, paths: Iterable[str] | None = None, *,
                leave: Collection[str] = ()) -> list[MovieKey]:
        """Lift the quarantine of movies (all, or those whose path or file name is in
        ``paths``): their rows are dropped and :meth:`requeue_serial` counts up, so the daemon
        admits each again as a new movie (validation, metadata, dose, key); returns their keys.

        A quarantined row keeps the key and metadata of its quarantine (none at all when
        validation rejected the file), so it is never set pending as it is. Rows of files that
        were never movies (ignored names, size -1) are left alone, and so are those of a version
        whose file has another version recorded since (a copy made again, a writer that went
        on): that file is not this version any more, and requeueing it did nothing. The rows
        of the paths in ``leave`` stay quarantined (files gone: requeued, they left no trace).
        """
        wanted = None if paths is None else {str(p) for p in paths}
        with self._tx() as db:
            found = [_row(r) for r in db.execute(
                "SELECT * FROM movies AS q WHERE status='quarantined' AND size >= 0 AND NOT "
                "EXISTS (SELECT 1 FROM movies AS n WHERE n.path = q.path AND n.id > q.id AND "
                "(n.size != q.size OR n.mtime_ns != q.mtime_ns)) ORDER BY mtime_ns, path, id")]
            chosen = [r.key for r in found if (wanted is None or r.key.path in wanted
                                               or os.path.basename(r.key.path) in wanted)
                      and r.key.path not in leave]
            db.executemany(f"DELETE FROM movies WHERE {_KEY_WHERE} AND status='quarantined'",
                           [_k(k) for k in chosen])
            if chosen:
                serial = self._state_json(db, _REQUEUE_SERIAL, 0) + 1
                log = self._state_json(db, _REQUEUED_VERSIONS, [])
                now = self._clock()
                log = (log + [[serial, k.path, k.size, k.mtime_ns, now] for k in chosen])
                for key, value in ((_REQUEUE_SERIAL, serial),
                                   (_REQUEUED_VERSIONS, log[-_REQUEUE_LOG_LENGTH:])):
                    db.execute("INSERT INTO service_state (key, value) VALUES (?, ?) ON CONFLICT "
                               "(key) DO UPDATE SET value = excluded.value",
                               (key, json.dumps(value)))
        return chosen

    @staticmethod
    def _state_json(db: sqlite3.Connection, key: str, default: Any) -> Any:
        r = db.execute("SELECT value FROM service_state WHERE key = ?", (key,)).fetchone()
        return default if r is None else json.loads(r[0])

    def requeue_serial(self) -> int:
        """How many times :meth:`requeue` lifted a quarantine in this database (0: never)."""
        return int(self._state_json(self._db, _REQUEUE_SERIAL, 0))

    def requeued_since(self, serial: int) -> list[tuple[str, int, int]]:
        """The movie versions ``(path, size, mtime_ns)`` whose quarantine :meth:`requeue`
        lifted after requeue number ``serial`` (the last few thousand are kept)."""
        log = self._state_json(self._db, _REQUEUED_VERSIONS, [])
        return [(str(p), int(size), int(mtime)) for n, p, size, mtime, *_ in log if n > serial]

    def requeued_unmet(self) -> list[tuple[str, int, int, float | None]]:
        """The movie versions ``(path, size, mtime_ns, requeued at)`` that :meth:`requeue`
        lifted and that the daemon has not admitted again yet: no row of that file version was
        added since (their quarantined rows were dropped, so until the daemon's next scan meets
        them they have none). Whether the file is still that version is the caller's to check."""
        log = self._state_json(self._db, _REQUEUED_VERSIONS, [])
        latest: dict[tuple[str, int, int], float | None] = {}
        for _, p, size, mtime, *rest in log:
            latest[(str(p), int(size), int(mtime))] = float(rest[0]) if rest else None
        out = []
        for (path, size, mtime), when in latest.items():
            since = -1.0 if when is None else when
            met = self._db.execute(
                "SELECT 1 FROM movies WHERE path = ? AND size = ? AND mtime_ns = ? AND "
                "first_seen >= ? LIMIT 1",
                (_path_in(path), _ns_in(size), _ns_in(mtime), since)).fetchone()
            if met is None:
                out.append((path, size, mtime, when))
        return out

    def set_inode(self, key: MovieKey, inode: tuple[int, int], *,
                  content: str | None = None, replace_content: bool = False) -> None:
        """Record the ``(st_dev, st_ino)`` a row's file has now (a row admitted before rows
        kept it, or whose file got another inode number: a remount) and, where the row has
        none yet (or ``replace_content``: another file), its content fingerprint."""
        value = "?" if replace_content else "COALESCE(content, ?)"
        with self._tx() as db:
            db.execute(f"UPDATE movies SET dev = ?, ino = ?, content = {value}, "
                       f"updated = ? WHERE {_KEY_WHERE}",
                       (*_inode_in(inode), content, self._clock(), *_k(key)))

    def move(self, old_path: str, new_path: str, *, size: int, mtime_ns: int,
             metadata: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
             inode: tuple[int, int] | None = None,
             content: str | None = None) -> list[MovieKey]:
        """A movie file was renamed (its folder, or itself): its rows of this version (any
        parameters; none running) take the new name, keeping status, outputs and metadata
        (``metadata``, when given, makes a row's new metadata from its old), and the metadata
        notes ``moved_from``; ``inode``, the file's, replaces the row's (none, or a stale one), and
        ``content``, its fingerprint, is kept where the row had none. A row
        quarantined because its file had vanished (:data:`VANISHED`: it was renamed before a
        worker took it) is set pending again, to be corrected under its new name. A series whose last tilt moved to another series' name is noted
        ``moved_to`` that name. Returns the new keys."""
        moved: list[MovieKey] = []
        with self._tx() as db:
            found = [_row(r) for r in db.execute(
                "SELECT * FROM movies WHERE path = ? AND size = ? AND mtime_ns = ? AND "
                "status != 'running' ORDER BY id",
                (_path_in(old_path), _ns_in(size), _ns_in(mtime_ns)))]
            for row in found:
                new = MovieKey(new_path, row.key.size, row.key.mtime_ns, row.key.fingerprint)
                if db.execute(f"SELECT 1 FROM movies WHERE {_KEY_WHERE}", _k(new)).fetchone():
                    continue  # the new name has this row already
                stored = dict(row.metadata) if metadata is None else metadata(dict(row.metadata))
                stored["moved_from"] = [*stored.get("moved_from", []), old_path]
                db.execute(f"UPDATE movies SET path = ?, metadata = ?, updated = ? "
                           f"WHERE {_KEY_WHERE}", (_path_in(new_path), json.dumps(stored),
                                                   self._clock(), *_k(row.key)))
                if inode is not None and row.inode != inode:  # none yet, or a stale one
                    db.execute(f"UPDATE movies SET dev = ?, ino = ? WHERE {_KEY_WHERE}",
                               (*_inode_in(inode), *_k(new)))
                if content is not None and row.content is None:  # recorded before it was kept
                    db.execute(f"UPDATE movies SET content = ? WHERE {_KEY_WHERE}",
                               (content, *_k(new)))
                if row.status == "quarantined" and (row.error or "").startswith(VANISHED):
                    db.execute(f"UPDATE movies SET status = 'pending', error = NULL, "
                               f"finished = NULL, retry_after = NULL WHERE {_KEY_WHERE}",
                               _k(new))
                moved.append(new)
                before = (row.metadata.get("log_context") or {}).get("series")
                after = (stored.get("log_context") or {}).get("series")
                if before and after and before != after:
                    self._retire_series(db, before, after)
        return moved

    def respell(self, old_folder: str, new_folder: str, *, out_dir: str) -> int:
        """Name the movies and mdocs recorded below ``old_folder`` below ``new_folder``, another
        spelling of the same folder (its real path, where a link to it was watched): their
        paths, and every path below it in their JSON columns, the series states and the requeue
        log. Only what belongs to the output folder ``out_dir`` is renamed (a state folder
        shared by sessions may hold another session's rows under the same link's name): a
        movie whose outputs lie in it, or, without outputs, whose file is at the new name (the
        same size and modification time), as for an mdoc and a requeued version; a series
        whose stacks lie in it. Rows whose new name is recorded already keep the old one.
        Returns the movie rows renamed."""
        old, new = old_folder.rstrip(os.sep) + os.sep, new_folder.rstrip(os.sep) + os.sep
        outs = tuple({str(out_dir).rstrip(os.sep) + os.sep,
                      os.path.realpath(out_dir).rstrip(os.sep) + os.sep})

        def spelt(value: Any) -> Any:
            if isinstance(value, str):
                return new + value[len(old):] if value.startswith(old) else value
            if isinstance(value, list):
                return [spelt(v) for v in value]
            if isinstance(value, dict):
                return {k: spelt(v) for k, v in value.items()}
            return value

        def spelt_json(text: str | None) -> str | None:
            return None if text is None else json.dumps(spelt(json.loads(text)))

        def in_out(values: Any) -> bool:
            return any(isinstance(v, str) and v.startswith(outs) for v in values)

        def there(path: str, size: Any, mtime_ns: Any) -> bool:
            try:
                st = os.stat(spelt(path))
            except OSError:
                return False
            return st.st_size == _ns_out(size) and st.st_mtime_ns == _ns_out(mtime_ns)

        renamed = 0
        with self._tx() as db:
            for r in db.execute("SELECT id, path, size, mtime_ns, outputs, summary, metadata "
                                "FROM movies").fetchall():
                path = _path_out(r[1])
                if not path.startswith(old):
                    continue
                outputs = json.loads(r[4]) if r[4] else {}
                if not (in_out(outputs.values()) if outputs else there(path, r[2], r[3])):
                    continue  # another output folder's (a shared state folder)
                # noted as a move (``moved_from``): the hand-off's files name it anew, as
                # those of a movie renamed (RELION's STARs named it through the old link)
                metadata = spelt(json.loads(r[6])) if r[6] else {}
                metadata["moved_from"] = [*metadata.get("moved_from", []), path]
                try:
                    db.execute("UPDATE movies SET path = ?, outputs = ?, summary = ?, "
                               "metadata = ? WHERE id = ?",
                               (_path_in(spelt(path)), *map(spelt_json, r[4:6]),
                                json.dumps(metadata), r[0]))
                except sqlite3.IntegrityError:
                    continue  # that version is recorded under the new name too
                renamed += 1
            for r in db.execute("SELECT path, size, mtime_ns FROM mdocs").fetchall():
                path = _path_out(r[0])
                if path.startswith(old) and there(path, r[1], r[2]):
                    db.execute("UPDATE OR IGNORE mdocs SET path = ? WHERE path = ?",
                               (_path_in(spelt(path)), r[0]))
                    db.execute("DELETE FROM mdocs WHERE path = ?", (r[0],))  # known anew
            for name, text in db.execute("SELECT name, state FROM series").fetchall():
                state = json.loads(text)
                if in_out([state.get("folder"), *(state.get("stacks") or {}).values()]):
                    db.execute("UPDATE series SET state = ? WHERE name = ?",
                               (json.dumps(spelt(state)), name))
            log = self._state_json(db, _REQUEUED_VERSIONS, None)
            if log is not None:
                log = [[n, spelt(p) if there(p, size, mtime) else p, size, mtime, *rest]
                       for n, p, size, mtime, *rest in log]
                db.execute("UPDATE service_state SET value = ? WHERE key = ?",
                           (json.dumps(log), _REQUEUED_VERSIONS))
        return renamed

    @staticmethod
    def _retire_series(db: sqlite3.Connection, name: str, moved_to: str) -> None:
        """A move took a tilt of series ``name`` to ``moved_to``: once no movie is left in
        ``name``, its state notes ``moved_to`` (``motionwatch status`` no longer lists it)."""
        left = db.execute("SELECT 1 FROM movies WHERE size >= 0 AND "
                          "json_extract(metadata, '$.log_context.series') = ? LIMIT 1",
                          (name,)).fetchone()
        r = db.execute("SELECT state FROM series WHERE name = ?", (_path_in(name),)).fetchone()
        if left is None and r is not None:
            state = {**json.loads(r[0]), "moved_to": moved_to}
            db.execute("UPDATE series SET state = ? WHERE name = ?",
                       (json.dumps(state), _path_in(name)))

    def release(self, key: MovieKey) -> None:
        """Give back a running movie untouched (abandoned at shutdown): pending, attempt undone."""
        with self._tx() as db:
            db.execute(f"UPDATE movies SET status='pending', attempts=MAX(attempts-1, 0), updated=? "
                       f"WHERE {_KEY_WHERE} AND status='running'", (self._clock(), *_k(key)))

    def redo(self, key: MovieKey, *, metadata: Mapping[str, Any] | None = None) -> bool:
        """A done row made pending again, as the newest row of its file (a new id: every reader
        takes a path's last row as its newest), keeping its first sight, inode and content,
        and its metadata unless ``metadata`` replaces it: the movie is corrected anew under
        this key (its outputs on disk were since written under other parameters, or its
        metadata moved without changing its parameters: another series). False when the row
        is not done."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE movies SET id=(SELECT MAX(id) + 1 FROM movies), status='pending', "
                f"attempts=0, failures=0, error=NULL, outputs=NULL, timings=NULL, summary=NULL, "
                f"finished=NULL, retry_after=NULL, updated=?, metadata=COALESCE(?, metadata) "
                f"WHERE {_KEY_WHERE} AND status='done'",
                (self._clock(), None if metadata is None else json.dumps(dict(metadata)),
                 *_k(key)))
            return cur.rowcount == 1

    def forget(self, key: MovieKey, *, statuses: tuple[str, ...] = ("pending", "failed")
               ) -> None:
        """Drop a row of one of ``statuses``: by default a pending or failed row superseded by
        the movie under other parameters (done and running rows are always kept)."""
        if {"done", "running"} & set(statuses):
            raise ValueError(f"done and running rows are kept, not {statuses}")
        marks = ",".join("?" * len(statuses))
        with self._tx() as db:
            db.execute(f"DELETE FROM movies WHERE {_KEY_WHERE} AND status IN ({marks})",
                       (*_k(key), *statuses))

    def recover_running(self) -> list[MovieKey]:
        """Start-up: rows left ``running`` by a crash go back to ``pending`` (to be redone)."""
        with self._tx() as db:
            rows = db.execute("SELECT path, size, mtime_ns, fingerprint FROM movies "
                              "WHERE status='running'").fetchall()
            db.execute("UPDATE movies SET status='pending', updated=? WHERE status='running'",
                       (self._clock(),))
        return [MovieKey(_path_out(r[0]), r[1], _ns_out(r[2]), r[3]) for r in rows]

    def set_mdoc_state(self, path: str, *, sha256: str, size: int, mtime_ns: int, kind: str,
                       unchanged_since: float) -> None:
        """Upsert what was last read of one mdoc."""
        with self._tx() as db:
            db.execute("INSERT INTO mdocs (path, sha256, size, mtime_ns, kind, unchanged_since) "
                       "VALUES (?,?,?,?,?,?) ON CONFLICT (path) DO UPDATE SET "
                       "sha256=excluded.sha256, "
                       "size=excluded.size, mtime_ns=excluded.mtime_ns, kind=excluded.kind, "
                       "unchanged_since=excluded.unchanged_since",
                       (_path_in(path), sha256, size, _ns_in(mtime_ns), kind, unchanged_since))

    def forget_mdoc(self, path: str) -> None:
        """An mdoc vanished."""
        with self._tx() as db:
            db.execute("DELETE FROM mdocs WHERE path = ?", (_path_in(path),))

    def set_series_state(self, name: str, state: Mapping[str, Any]) -> None:
        """Upsert one tilt series' state (JSON-serialisable)."""
        with self._tx() as db:
            db.execute("INSERT INTO series (name, state, updated) VALUES (?,?,?) "
                       "ON CONFLICT (name) DO UPDATE SET state=excluded.state, "
                       "updated=excluded.updated",
                       (_path_in(name), json.dumps(dict(state)), self._clock()))

    def set_service_state(self, values: Mapping[str, Any]) -> None:
        """Upsert heartbeat/counter values (JSON-serialisable) for ``motionwatch status``."""
        with self._tx() as db:
            db.executemany("INSERT INTO service_state (key, value) VALUES (?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           [(k, json.dumps(v)) for k, v in values.items()])


class CorruptDatabase(sqlite3.DatabaseError):
    """The state database file is damaged (not a database, or fails its integrity check)."""


def _check_integrity(ledger: Ledger) -> None:
    try:
        result = [r[0] for r in ledger._db.execute("PRAGMA quick_check").fetchall()]  # noqa: SLF001
    except sqlite3.DatabaseError as exc:
        raise CorruptDatabase(str(exc)) from exc
    if result != ["ok"]:
        raise CorruptDatabase("; ".join(str(r) for r in result[:3]))


_CORRUPT = ("file is not a database", "malformed", "corrupt")


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the database file is damaged (only then is it moved
    aside: any other error, such as a lock or a full disk, is raised)."""
    return isinstance(exc, CorruptDatabase) or any(m in str(exc).lower() for m in _CORRUPT)


def open_or_rebuild(path: Path, *, clock: Callable[[], float] = time.time
                    ) -> tuple[Ledger, Path | None, str | None]:
    """Open the state database read-write; a corrupt one is moved aside and a new one begun.

    The damaged file (with its ``-wal`` / ``-shm`` companions) is renamed to
    ``<name>.corrupt-<UTC time>`` beside it, for inspection; the caller rebuilds the state by
    adopting the outputs on disk.

    Returns
    -------
    ledger : Ledger
    moved_to : Path or None
        Where the corrupt database went (None when it was sound).
    reason : str or None
        What SQLite said was wrong with it.

    Raises
    ------
    OSError
        The corrupt file could not be moved aside.
    sqlite3.Error
        The database could not be opened for a reason other than damage (locked, a full disk):
        it is left as it is.
    """
    path = Path(path)
    try:
        ledger = Ledger(path, clock=clock)
    except sqlite3.DatabaseError as exc:
        if not _corrupt(exc):  # locked, busy, a full disk, ...: not the database's fault
            raise
        reason = str(exc)
    else:
        try:
            _check_integrity(ledger)
            return ledger, None, None
        except CorruptDatabase as exc:
            reason = str(exc)
            ledger.close()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while moved.exists():
        moved = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, moved)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, moved.with_name(moved.name + suffix))
    return Ledger(path, clock=clock), moved, reason
