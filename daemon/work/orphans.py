"""Child processes that die with the daemon: no orphan goes on writing outputs after it.

:func:`die_with_parent` is called first thing in a worker or job process: the kernel kills it
when its parent dies (``PR_SET_PDEATHSIG``, Linux), and a thread checks the parent pid every
second as well (the signal is tied to the thread that started the child, and absent
elsewhere). Signals SIGINT, SIGTERM and SIGHUP are ignored: the daemon decides when its
children stop, so a first signal can let the movie in hand finish (also one sent to the whole
process group: Ctrl-C, a closed terminal, ``systemctl kill``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

__all__ = ["STOP_SIGNALS", "die_with_parent"]

_PR_SET_PDEATHSIG = 1
#: the signals that ask the daemon to stop (drain: 0, or 75 for SIGHUP), never its children
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def die_with_parent(parent_pid: int) -> None:
    """Ignore SIGINT/SIGTERM/SIGHUP, and exit (status 70) when the process ``parent_pid`` is
    gone."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass
    if os.getppid() != parent_pid:  # it died before the signal was asked for
        os._exit(70)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="watch-parent").start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)
        time.sleep(1.0)
