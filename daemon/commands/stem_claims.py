"""The output stems that the ``correct`` runs writing into one folder at the same time have chosen.

A run chooses every movie's stem before it corrects the first, but writes a stem's motion record
only when that movie is done: until then, another run into the same folder (``xargs -P``, two
terminals) would see the stem free and give it to another movie of the same name (``grid1/x.tif``
and ``grid2/x.tif``), and the two would write the same outputs. So a run notes its stems in
``.motionwatch-correct-claims`` in the output folder (JSON: stem -> the movie's resolved path and
the run's pid), chosen and noted under an ``flock`` of that file, and removes its notes when it
ends. Notes of a process that no longer runs (killed) are ignored and dropped. On a file system
without ``flock`` the notes are still read and written, unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from daemon.system.own_files import open_own_file
from daemon.system.processes import process_exists

__all__ = ["CLAIMS_NAME", "StemClaims", "resolved_movie"]

CLAIMS_NAME = ".motionwatch-correct-claims"
_NO_FLOCK = (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP)

#: chooses stems given those other runs hold: {stem: resolved movie} -> {movie: stem}
Chooser = Callable[[dict[str, Path]], dict[Path, str]]


class StemClaims:
    """One run's claims on output stems in ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / CLAIMS_NAME
        self.pid = os.getpid()

    def claim(self, choose: Chooser) -> dict[Path, str]:
        """Stems chosen by ``choose`` (given the stems other running runs hold), noted for this
        run; choosing and noting are one step for every run into the folder."""
        with self._locked() as fd:
            notes = self._live_notes(fd)
            held = {stem: Path(note["movie"]) for stem, note in notes.items()
                    if note["pid"] != self.pid}
            stems = choose(held)
            notes.update({stem: {"movie": str(resolved_movie(movie)), "pid": self.pid}
                          for movie, stem in stems.items()})
            _write(fd, notes)
        return stems

    def release(self) -> None:
        """Remove this run's notes (the file with them, when no other run has any)."""
        with contextlib.suppress(OSError), self._locked() as fd:
            notes = {stem: note for stem, note in self._live_notes(fd).items()
                     if note["pid"] != self.pid}
            if notes:
                _write(fd, notes)
            else:  # under the lock: a run waiting for it finds the file gone and opens anew
                self.path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """An fd of the claims file, locked; the file at ``path`` (never one unlinked while
        this run waited for the lock)."""
        while True:
            fd = open_own_file(self.path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    if exc.errno not in _NO_FLOCK:
                        raise
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = None
                if current == os.fstat(fd).st_ino:
                    yield fd
                    return
            finally:
                os.close(fd)  # also releases the lock

    def _live_notes(self, fd: int) -> dict[str, dict[str, Any]]:
        """The notes in the file whose run still runs (unreadable notes count as none)."""
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        try:
            notes = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            return {}
        if not isinstance(notes, dict):
            return {}
        return {stem: note for stem, note in notes.items()
                if isinstance(note, dict) and isinstance(note.get("pid"), int)
                and isinstance(note.get("movie"), str)
                and (note["pid"] == self.pid or process_exists(note["pid"]))}


def _write(fd: int, notes: dict[str, dict[str, Any]]) -> None:
    data = json.dumps(notes, indent=1).encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    while data:
        data = data[os.write(fd, data):]


def resolved_movie(movie: Path) -> Path:
    """``movie`` with links and ``..`` resolved (absolute only, where that fails)."""
    try:
        return movie.resolve()
    except OSError:
        return movie.absolute()
