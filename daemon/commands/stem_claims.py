"""The output stems that the ``correct`` runs writing into one folder at the same time have chosen.

A run chooses every movie's stem before it corrects the first, but writes a stem's motion record
only when that movie is done: until then, another run into the same folder (``xargs -P``, two
terminals) would see the stem free and give it to another movie of the same name (``grid1/x.tif``
and ``grid2/x.tif``), and the two would write the same outputs. So a run notes its stems in
``.motionwatch-correct-claims`` in the output folder (JSON: stem -> the movie's resolved path and
the run's pid, host and start), chosen and noted under an ``flock`` of that file, and removes
its notes when it ends. Notes of a process of this host that no longer runs (killed) are
ignored and dropped. A note of another host (a cluster node sharing the folder) or another container
cannot be checked that way: it holds for :data:`FOREIGN_NOTE_DAYS` from when that run last noted it
(:meth:`StemClaims.keep`, once a day): a stem taken meanwhile by a note left by a killed run costs
another stem, ``x_mrc``; a stem given twice would cost a movie's outputs. On a file system without
``flock`` the notes are still read and written, unlocked. Where the file cannot be made or written
(a shared folder where another account's run left it, not group-writable), the run chooses its stems
given the notes it can read there, and does not note its own: it says so
(:attr:`StemClaims.unavailable`); a write that fails part-way (a full disk) leaves the file as it
was. A run removes its notes when it ends, also from a file it may not remove (a sticky folder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from daemon.system.own_files import open_own_file
from daemon.system.processes import process_exists

__all__ = ["CLAIMS_NAME", "FOREIGN_NOTE_DAYS", "StemClaims", "resolved_movie"]

CLAIMS_NAME = ".motionwatch-correct-claims"
#: days a note of a run on another host (or in another PID namespace) holds its stem
FOREIGN_NOTE_DAYS = 7.0
_NO_FLOCK = (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP)
_MAX_REOPENS = 100  # another run removed the file while this one waited: opened anew
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV, errno.ESPIPE)
_KEEP_EVERY_S = 86400.0  # a long run notes its stems again once a day (StemClaims.keep)

#: chooses stems given those other runs hold: {stem: resolved movie} -> {movie: stem}
Chooser = Callable[[dict[str, Path]], dict[Path, str]]


class _NotOpened(Exception):
    """The claims file could not be opened for writing, or locked."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class StemClaims:
    """One run's claims on output stems in ``out_dir``."""

    def __init__(self, out_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(out_dir) / CLAIMS_NAME
        self.pid = os.getpid()
        self.runner = runner_identity()
        self._clock = clock
        #: why the notes could not be kept (``None`` while they are): stems chosen unnoted
        self.unavailable: str | None = None
        self._noted_at_s: float | None = None  # when this run's notes were last written

    def claim(self, choose: Chooser) -> dict[Path, str]:
        """Stems chosen by ``choose`` (given the stems other running runs hold), noted for this
        run; choosing and noting are one step for every run into the folder. Where the claims
        file cannot be written, the stems ``choose`` gives holding the notes it can read there,
        this run's unnoted (:attr:`unavailable` says why)."""
        try:
            with self._locked() as fd:
                was = _read_all(fd)
                notes = self._live_notes(was)
                stems = choose(self._held(notes))
                now_s = round(self._clock(), 3)
                self._noted_at_s = now_s
                notes.update({stem: {"movie": str(resolved_movie(movie)), "pid": self.pid,
                                     "runner": self.runner, "since_s": now_s}
                              for movie, stem in stems.items()})
                try:
                    _write(fd, notes, was)
                except OSError as exc:  # a full disk: chosen given the others' notes
                    self.unavailable = f"{self.path}: {exc.strerror or exc}"
        except _NotOpened as exc:
            self.unavailable = f"{self.path}: {exc.cause.strerror or exc.cause}"
            return choose(self._held(self._read_notes()))  # the others' notes, if readable
        return stems

    def _held(self, notes: dict[str, dict[str, Any]]) -> dict[str, Path]:
        return {stem: Path(note["movie"]) for stem, note in notes.items()
                if not self._mine(note)}

    def _read_notes(self) -> dict[str, dict[str, Any]]:
        """The live notes of a claims file this run cannot write (another account's, 0644),
        read under a shared lock where it can be read; none where it cannot."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError:
            return {}
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH)
            return self._live_notes(_read_all(fd))
        except OSError:
            return {}
        finally:
            os.close(fd)

    def keep(self) -> None:
        """Note again that this run holds its stems, once a day at most: a note of another host
        holds for :data:`FOREIGN_NOTE_DAYS` from when it was last noted, so a run that lasts
        longer (call this between movies) keeps its stems to the end."""
        if self.unavailable is not None or self._noted_at_s is None \
                or self._clock() - self._noted_at_s < _KEEP_EVERY_S:
            return
        with contextlib.suppress(OSError, _NotOpened), self._locked() as fd:
            was = _read_all(fd)
            notes = self._live_notes(was)
            now_s = round(self._clock(), 3)
            for note in notes.values():
                if self._mine(note):
                    note["since_s"] = now_s
            _write(fd, notes, was)
            self._noted_at_s = now_s

    def release(self) -> None:
        """Remove this run's notes (the file with them, when no other run has any)."""
        if self.unavailable is not None:
            return
        with contextlib.suppress(OSError, _NotOpened), self._locked() as fd:
            was = _read_all(fd)
            notes = {stem: note for stem, note in self._live_notes(was).items()
                     if not self._mine(note)}
            _write(fd, notes, was)  # first: a file this run may not remove (a sticky folder)
            if not notes:  # under the lock: a run waiting for it finds it gone, opens anew
                self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """An fd of the claims file, locked; the file at ``path`` (never one unlinked while
        this run waited for the lock)."""
        for attempt in range(_MAX_REOPENS + 1):
            try:
                fd = open_own_file(self.path, 0o666)  # the umask decides (a shared folder)
            except OSError as exc:
                raise _NotOpened(exc) from exc
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    if exc.errno not in _NO_FLOCK:
                        raise _NotOpened(exc) from exc
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = None
                # a file system whose inode numbers are not stable: the file as it is
                if current == os.fstat(fd).st_ino or attempt == _MAX_REOPENS:
                    yield fd
                    return
            finally:
                os.close(fd)  # also releases the lock

    def _mine(self, note: dict[str, Any]) -> bool:
        return note["pid"] == self.pid and note.get("runner", self.runner) == self.runner

    def _holds(self, note: dict[str, Any]) -> bool:
        """Whether a note still holds its stem: this run's, a running process's of this host
        (notes without a runner are of a release that ran on one host only), or another
        host's of the last :data:`FOREIGN_NOTE_DAYS`."""
        runner = note.get("runner", self.runner)
        if runner == self.runner:
            return note["pid"] == self.pid or process_exists(note["pid"])
        since_s = note.get("since_s")
        return isinstance(since_s, (int, float)) \
            and self._clock() - since_s < FOREIGN_NOTE_DAYS * 86400.0

    def _live_notes(self, text: bytes) -> dict[str, dict[str, Any]]:
        """The notes in the file's ``text`` that still hold (unreadable notes count as none)."""
        try:
            notes = json.loads(text or b"{}")
        except ValueError:
            return {}
        if not isinstance(notes, dict):
            return {}
        return {stem: note for stem, note in notes.items()
                if isinstance(note, dict) and isinstance(note.get("pid"), int)
                and isinstance(note.get("movie"), str) and self._holds(note)}


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write(fd: int, notes: dict[str, dict[str, Any]], was: bytes) -> None:
    """The file holds ``notes`` now, or, where they cannot be written (a full disk, a file
    size limit), still the text it had (``was``): the other runs' notes are never lost. The
    space is taken first where the file system can; the new text is written over the old,
    never into an emptied file, and the old text written back where that fails."""
    data = json.dumps(notes, indent=1).encode()
    try:
        try:
            os.posix_fallocate(fd, 0, max(len(data), 1))
        except OSError as exc:
            if exc.errno not in _NO_FALLOCATE:
                raise
        _write_at_start(fd, data)
    except OSError:
        with contextlib.suppress(OSError):
            _write_at_start(fd, was)
            os.ftruncate(fd, len(was))
        raise
    os.ftruncate(fd, len(data))


def _write_at_start(fd: int, data: bytes) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], done)


def runner_identity() -> str:
    """This process's host and PID namespace (``host/pid:[inode]``): where its pids mean
    something (a container on the same host has pids of its own)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def resolved_movie(movie: Path) -> Path:
    """``movie`` with links and ``..`` resolved (absolute only, where that fails)."""
    try:
        return movie.resolve()
    except (OSError, RuntimeError):  # a link loop: RuntimeError before Python 3.13
        return movie.absolute()
