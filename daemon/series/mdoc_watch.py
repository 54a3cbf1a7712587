"""The series mdocs of the watched tree, re-read as they grow.

:class:`MdocWatcher` re-reads each ``.mdoc`` whose size or mtime changed
(:func:`daemon.series.mdoc.read_mdoc`), keeps the last good parse when a read fails, and records
in the state database since when each one's content is unchanged (so a restart keeps the mdoc's
quiet time). An mdoc missing from a scan is kept as last read for ``vanish_grace_s``: SerialEM
(IMOD's autodoc writer) rewrites an mdoc whole by renaming the old file to ``name~`` first, and a
network share may hide a file for a moment; forgetting the mdoc at once would send its tilts to
the file-name fallback and redo every corrected tilt twice (with other doses, then back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.events import ScanResult, SeriesStore
from daemon.series.mdoc import MdocFile, read_mdoc

__all__ = ["MdocWatcher", "WatchedMdoc"]


@dataclass(frozen=True, slots=True)
class WatchedMdoc:
    """One mdoc as last read: its size and mtime then, its parse, since when (wall clock, s)
    its content has not changed, and whether it changed after this process first read it
    (``rewritten``: SerialEM appending a tilt, or rewriting it for a retake)."""

    size: int
    mtime_ns: int
    parsed: MdocFile
    unchanged_since_s: float
    rewritten: bool = False


class MdocWatcher:
    """The mdocs seen by the scans.

    Parameters
    ----------
    store : SeriesStore
        Where each mdoc's hash and quiet time are kept across restarts.
    log : structlog-like logger
    log_once : callable
        ``log_once(level, event, subject, reason, **fields)``: logs a reason once per subject.
    vanish_grace_s : float
        How long an mdoc may be missing from the scans before it is forgotten (seconds).
    """

    def __init__(self, store: SeriesStore, *, log: Any,
                 log_once: Callable[..., None], vanish_grace_s: float = 30.0) -> None:
        self._store = store
        self._log = log
        self._log_once = log_once
        self._vanish_grace_s = float(vanish_grace_s)
        self.mdocs: dict[str, WatchedMdoc] = {}
        self._stored: dict[str, dict[str, Any]] = {}
        self._missing_since: dict[str, float] = {}  # mdocs absent from the scans since (s)

    def load(self) -> None:
        """Read the persisted hashes and quiet times (at start-up)."""
        self._stored = self._store.mdoc_states()

    def read(self, scan: ScanResult, now: float) -> None:
        """Re-read every changed mdoc of ``scan``; forget those gone (unless a folder could not
        be listed, when they may only be hidden)."""
        seen = set()
        for o in scan.observations:
            if o.kind != "metadata" or not o.path.name.lower().endswith(".mdoc"):
                continue
            key = str(o.path)
            seen.add(key)
            prev = self.mdocs.get(key)
            if prev is not None and (prev.size, prev.mtime_ns) == (o.size, o.mtime_ns):
                continue
            try:
                md = read_mdoc(o.path)
            except OSError as exc:
                self._log_once("warning", "mdoc_unreadable", key, exc.strerror or str(exc),
                               mdoc=key, note="the last content read is kept")
                continue
            except Exception as exc:  # noqa: BLE001 - one damaged mdoc must not stop the others
                self._log_once("error", "mdoc_unreadable", key, f"{type(exc).__name__}: {exc}",
                               mdoc=key, note="the last content read is kept")
                continue
            since = self._unchanged_since(key, prev, md, now)
            rewritten = prev is not None and (prev.rewritten or prev.parsed.sha256 != md.sha256)
            self.mdocs[key] = WatchedMdoc(o.size, o.mtime_ns, md, since, rewritten)
            try:
                self._store.set_mdoc_state(key, sha256=md.sha256, size=o.size,
                                           mtime_ns=o.mtime_ns, kind=md.kind,
                                           unchanged_since=since)
            except Exception as exc:  # noqa: BLE001 - sqlite trouble: the quiet time restarts
                self._log_once("error", "ledger_write_failed", key, str(exc))
            for w in md.warnings:
                self._log_once("warning", "mdoc_warning", key, w, mdoc=key)
            for s in md.sections:
                if s.complete:
                    for w in s.warnings:
                        self._log_once("warning", "mdoc_warning", key, w, mdoc=key)
        for key in seen:
            self._missing_since.pop(key, None)
        if scan.errors:
            return  # a folder could not be listed: absent mdocs may only be hidden
        for key in [k for k in self.mdocs if k not in seen]:
            since = self._missing_since.setdefault(key, now)
            if now - since < self._vanish_grace_s:
                continue  # being rewritten, or hidden for a moment: kept as last read
            del self.mdocs[key]
            del self._missing_since[key]
            self._log.warning("mdoc_vanished", mdoc=key,
                              note="its tilts are resolved without it from now on")
            try:
                self._store.forget_mdoc(key)
            except Exception:  # noqa: BLE001
                pass

    def _unchanged_since(self, key: str, prev: WatchedMdoc | None, md: MdocFile,
                         now: float) -> float:
        stored = self._stored.get(key)
        if prev is not None and prev.parsed.sha256 == md.sha256:
            return prev.unchanged_since_s
        if prev is None and stored is not None and stored["sha256"] == md.sha256:
            return float(stored["unchanged_since"])
        return now
