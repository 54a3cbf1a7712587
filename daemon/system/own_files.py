"""Files of motionwatch's own in folders other accounts may write into (a group-shared output
folder): opened without following a symbolic link planted in their place."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["open_own_file"]


def open_own_file(path: Path, mode: int = 0o644) -> int:
    """An fd of ``path`` for reading and writing, made when missing. A symbolic link in its
    place (another account's, to make this process write a file elsewhere: the lock file gets
    the pid, the claims file JSON) is removed and the file made anew, never written through."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    os.unlink(path)  # the link itself
    return os.open(path, flags, mode)

