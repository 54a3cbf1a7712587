"""One daemon per output folder and per state folder, by kernel locks that cannot be deleted away.

The lock is ``flock`` on the folders themselves (an open directory descriptor), not only on a
file in them: deleting ``motionwatch.lock``, or a second daemon with another ``--state-dir``,
cannot get around it, and the kernel drops it when the process dies. ``motionwatch.lock`` in the
state folder is still locked and holds the pid, for people and older tools. When the output
folder is deleted and created again, :meth:`FolderLocks.check` locks the new folder (or reports
that another daemon holds it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from daemon.settings.config import ConfigError
from daemon.system.own_files import open_own_file

__all__ = ["FolderLocks", "LOCK_NAME"]

LOCK_NAME = "motionwatch.lock"
_UNSUPPORTED = (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP)


def _lock(path: Path, *, directory: bool) -> int | None:
    """An fd holding an exclusive flock on ``path``; None when the file system has no flock.

    Raises BlockingIOError when another process holds it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY) if directory else open_own_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        if exc.errno in _UNSUPPORTED:
            return None
        raise
    return fd


def _held(what: str, path: Path, directory: bool) -> ConfigError:
    return ConfigError([f"{what} {path if directory else path.parent}: another motionwatch "
                        f"watch is using it (locked)"])


class FolderLocks:
    """The locks of one service run.

    Parameters
    ----------
    out_dir, state_dir : Path
    """

    def __init__(self, out_dir: Path, state_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.state_dir = Path(state_dir)
        self._fds: dict[str, int] = {}
        #: folders or files whose file system has no flock (NFS without lockd, some FUSE
        #: shares): a second daemon there is not kept out
        self.unlocked: list[str] = []

    def acquire(self) -> None:
        """Lock the output folder, the state folder and its lock file.

        Raises
        ------
        ConfigError
            Another motionwatch holds one of them.
        """
        try:
            for name, path, directory, what in self._targets():
                try:
                    fd = _lock(path, directory=directory)
                except BlockingIOError:
                    raise _held(what, path, directory) from None
                except FileNotFoundError:
                    if not directory:
                        raise
                    continue  # absent for now: check() locks it once it is there
                if fd is not None:
                    self._fds[name] = fd
                else:
                    self.unlocked.append(str(path))
        except BaseException:
            self.release()
            raise
        if "file" in self._fds:
            fd = self._fds["file"]
            # for people and older tools: the locks hold without it (a full disk at start:
            # the service goes on, and says so when the state database cannot be written)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())

    def _targets(self) -> list[tuple[str, Path, bool, str]]:
        """(name, path, a folder?, what it is) of each lock."""
        targets = [("out", self.out_dir, True, "output folder"),
                   ("file", self.state_dir / LOCK_NAME, False, "state folder")]
        if self.state_dir != self.out_dir:
            targets.append(("state", self.state_dir, True, "state folder"))
        return targets

    def check_free(self) -> None:
        """Refuse, as :meth:`acquire` would, when another motionwatch holds one of the folders
        that exist already: called before any folder is made (a refused start makes none).
        Locks nothing.

        Raises
        ------
        ConfigError
        """
        for _, path, directory, what in self._targets():
            if not path.exists():
                continue
            try:
                fd = _lock(path, directory=directory)
            except BlockingIOError:
                raise _held(what, path, directory) from None
            except OSError:
                continue  # acquire() says what is wrong with it
            if fd is not None:
                os.close(fd)

    def check(self) -> str | None:
        """Follow a re-created output folder; a problem line when another daemon has it."""
        fd = self._fds.get("out")
        try:
            now = os.stat(self.out_dir)
        except OSError:
            return None  # gone: the service pauses for that reason
        if fd is not None:
            held = os.fstat(fd)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return None
        try:
            new = _lock(self.out_dir, directory=True)
        except BlockingIOError:
            return (f"output folder {self.out_dir} was re-created and another motionwatch "
                    f"watch holds it")
        except OSError as exc:
            return f"output folder {self.out_dir} cannot be locked ({exc.strerror or exc})"
        if fd is not None:
            os.close(fd)
        if new is not None:
            self._fds["out"] = new
        return None

    def release(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
