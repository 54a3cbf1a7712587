"""The gain reference a worker holds, loaded again when its files are written anew.

A worker corrects every movie with the gain, dark and defect files as they are when the movie
starts: the reference is loaded at the first movie and again when the settings change or a
file is written anew (a new gain reference saved over the configured one). Workers never log:
what a movie was corrected with is in its record (``references``, ``gain_reference_note``).
"""

from __future__ import annotations

import errno
import time
from typing import Any

from correction.errors import CorrectionError
from correction.report import file_stat_key, file_stat_keys

from daemon.work.runner_names import resolve_runner

__all__ = ["GainCache", "ReferenceBeingWritten", "REWRITE_SETTLE_S", "REWRITE_WAIT_MAX_S"]


#: a reference file written anew is taken once this worker has seen it unchanged this long
#: (seconds; the file's own modification time may be a share's clock, or a copy's source's)
REWRITE_SETTLE_S = 5.0
#: the longest a worker waits for a rewritten reference file to settle before a movie (s)
REWRITE_WAIT_MAX_S = 60.0


class ReferenceBeingWritten(OSError):
    """A gain, dark or defect file still being written when a worker had to read it: trouble
    outside the movie (``environment``), which waits until it has settled."""


class GainCache:
    """The gain reference one worker holds: loaded once, loaded again when the gain parameters
    change or one of its files is written anew (another size or modification time: a new gain
    reference saved over the old one), so that every movie is corrected with the files as
    they are when it starts, and its record's hashes are of the content applied.

    A file written anew is taken once it has settled: the worker waits, before the movie,
    until it has seen the file unchanged for :data:`REWRITE_SETTLE_S` (a copy onto a share
    takes seconds to minutes, and a pre-sized one is zeros at the end until done; a
    half-written gain would quarantine the movie as a reference that does not fit, or leave
    its zeros as defects), at most :data:`REWRITE_WAIT_MAX_S` (once: the next movies do not
    wait while that copy goes on). While it is still being written then, and when the new
    content cannot be read, the movie is corrected with the content read before, and
    :attr:`note` says so, naming the file's size and modification time (the task adds it to
    the record: ``gain_reference_note``).

    Parameters
    ----------
    gain_loader : str or None
        ``"module:function"`` turning ``GainParams`` into the reference passed to the runner;
        None: the runner gets no reference.
    """

    def __init__(self, gain_loader: str | None) -> None:
        self._load = resolve_runner(gain_loader) if gain_loader else None
        self._key: Any = None
        self._reference: Any = None
        self._first_seen: dict[tuple[Any, ...], float] = {}  # rewritten versions, monotonic s
        self._unreadable: dict[tuple[Any, ...], str] = {}  # settled versions that failed
        self._waited_in_vain = False  # for a rewrite still going on after REWRITE_WAIT_MAX_S
        self._failed_versions: list[Any] | None = None  # files a first load failed on
        self.note: str | None = None

    def preload(self, gain_params: Any) -> None:
        """Load ``gain_params`` now; a failure shows up again at the first movie that needs it."""
        if self._load is not None and getattr(gain_params, "gain_path", None) is not None:
            try:
                self._reference, self._key = self._load(gain_params), gain_params
            except Exception:  # noqa: BLE001
                self._reference, self._key = None, None

    def get(self, gain_params: Any, *, wait_limit_s: float | None = None) -> Any:
        """The reference for ``gain_params`` (None without a gain); raises what the loader
        raises, except for a file written anew while a reference read before is held
        (:attr:`note`). ``wait_limit_s``: the longest wait for a file being written (the
        movie's time limit runs meanwhile), below :data:`REWRITE_WAIT_MAX_S`."""
        self.note = None
        if self._load is None or getattr(gain_params, "gain_path", None) is None:
            return None
        patience = REWRITE_WAIT_MAX_S if wait_limit_s is None \
            else max(0.0, min(REWRITE_WAIT_MAX_S, wait_limit_s))
        if gain_params != self._key:
            self._reference, self._key = None, None
            self._reference = self._first_load(gain_params, patience)
            self._key = gain_params
            return self._reference
        rewritten = self._rewritten()
        if not rewritten:
            return self._reference
        versions = tuple(rewritten)
        if versions not in self._unreadable:
            versions = self._settled(rewritten, patience)
        names = ", ".join(f"{path} ({size:,} bytes, modified "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(mtime / 1e9))})"
                          for path, size, mtime in versions or rewritten)
        if versions in self._unreadable:
            self.note = self._unreadable[versions]
        elif versions is None:
            self.note = (f"{names} is being written anew: this movie was corrected with the "
                         "content read before (references in its record)")
        else:
            try:
                self._reference = self._load(gain_params)
                self._first_seen.clear()
                self._unreadable.clear()
                self._waited_in_vain = False
            except (CorrectionError, OSError) as exc:
                self.note = self._unreadable[versions] = (
                    f"{names} was written anew but cannot be used ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())}): movies "
                    "are corrected with the content read before (references in each record) "
                    "until it is written again")
        return self._reference

    def _rewritten(self) -> list[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` now of the files the reference was read from that have
        been written anew since (not those out of sight)."""
        changed = []
        for version in getattr(self._reference, "read", ()):
            if version.is_rewritten():
                try:
                    changed.append(file_stat_key(version.path))
                except OSError:
                    continue
        return changed

    def _first_load(self, gain_params: Any, patience_s: float) -> Any:
        """Load ``gain_params`` with no reference held (a worker's first movie, one that
        replaced a worker, new settings): a file that cannot be read is looked at for
        :data:`REWRITE_SETTLE_S`; when it is changing (being written: a copy onto a share) it
        is read again once it has settled, waiting at most ``patience_s``.

        Raises
        ------
        ReferenceBeingWritten
            Still changing after ``patience_s``: not read half-written (its movie waits).
        Exception
            What the loader raises for a file that does not change (at once for the version
            that failed before).
        """
        try:
            return self._load(gain_params)
        except (CorrectionError, OSError):
            paths = [str(path) for _, path in gain_params.files()]
            before = file_stat_keys(paths)
            if before == self._failed_versions:  # failed as it is before: not waited for
                raise
            self._failed_versions = before
            began = time.monotonic()
            while time.monotonic() - began < min(REWRITE_SETTLE_S, patience_s):
                time.sleep(0.25)
                if file_stat_keys(paths) != before:  # being written: wait until it settles
                    break
            else:
                raise  # unchanged: a reference that cannot be read
        before, settled_at = file_stat_keys(paths), time.monotonic()
        while time.monotonic() - settled_at < REWRITE_SETTLE_S:
            if time.monotonic() - began >= patience_s:
                raise ReferenceBeingWritten(
                    errno.EBUSY, f"still being written after {patience_s:.0f} s (a copy onto "
                                 "a share?): not read half-written; its movies wait",
                    paths[0])
            time.sleep(0.25)
            now = file_stat_keys(paths)
            if now != before:
                before, settled_at = now, time.monotonic()
        self._failed_versions = None
        return self._load(gain_params)

    def _settled(self, keys: list[tuple[str, int, int]], patience_s: float
                 ) -> tuple[tuple[str, int, int], ...] | None:
        """The rewritten files' ``(path, size, mtime_ns)`` once this worker has seen them
        unchanged for :data:`REWRITE_SETTLE_S` (waiting for it, at most ``patience_s``);
        None when they were still changing then."""
        started = time.monotonic()
        keys = list(keys)
        for key in keys:
            self._first_seen.setdefault(key, started)
        # waited for once, in vain: the next movies are not held up while the copy goes on
        patience = 0.0 if self._waited_in_vain else patience_s
        while True:
            now = time.monotonic()
            if all(now - self._first_seen[key] >= REWRITE_SETTLE_S for key in keys):
                return tuple(keys)
            if now - started >= patience:
                self._waited_in_vain = True
                return None
            time.sleep(min(0.25, REWRITE_SETTLE_S))
            latest = self._rewritten()
            if latest != keys:  # still being written: its settling starts again
                keys = latest
                for key in keys:
                    self._first_seen.setdefault(key, time.monotonic())
