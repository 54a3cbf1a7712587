"""Whether a process of this host still runs, and which one holds a folder's lock."""

from __future__ import annotations

import os

__all__ = ["flock_holder", "process_exists"]


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts: signal 0 is refused
    it, not sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def flock_holder(path: str | os.PathLike[str]) -> int | None:
    """The pid of a process of this host holding an ``flock`` on ``path`` (a daemon's lock of
    its folders), from ``/proc/locks``: read only, so it cannot race a daemon taking its lock
    as a probing lock would. None when no one holds one, or where ``/proc/locks`` is missing."""
    try:
        st = os.stat(path)
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None
