"""Decides whether a settled movie may be read: ready, wait, or reject with a reason.

A settled movie (size and mtime steady, see :mod:`daemon.settle`) is checked at the format level
with :func:`correction.io.complete.check_complete` (an MRC's size against its header, a TIFF's or
EER's last page decoding). Where SerialEM writes a per-movie frame ``.mdoc`` (``<movie>.mdoc``
holding a ``[FrameSet = 0]`` section), it is written after the last frame, so its presence and its
``NumSubFrames`` count are a further signal: a movie whose frame count disagrees waits. A movie
that stays incomplete although its size has not changed for ``incomplete_grace_s`` is rejected
(truncated, or a writer that gave up); the caller quarantines it with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from correction.metadata_text import decode_metadata_text, read_regular_file

__all__ = ["UNREADABLE", "TAKEN_AS_IT_IS", "GONE_REASON", "Verdict", "FrameMdoc",
           "read_frame_mdoc", "frame_mdoc_path", "validate"]

Decision = Literal["ready", "wait", "reject"]

#: How the reason of a movie rejected as unreadable begins (stored with its quarantine).
UNREADABLE = "unreadable after"
#: How the reason of a full-size MRC whose last frame stayed zeros ends (corrected all the same).
TAKEN_AS_IT_IS = "taken as it is"
#: a movie no longer there when validated (a folder moved aside and back): waits, never rejected
GONE_REASON = "gone from its folder since it was listed (moved or deleted)"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of validating one movie.

    Attributes
    ----------
    decision : {"ready", "wait", "reject"}
    reason : str
        Why (one line); empty when ready without remark.
    n_frames : int or None
        Frames the format check found, where it says.
    unreadable : bool
        The file could not be read (permissions, I/O): a fault of its access, not of its
        content, so a rejection is undone once it reads (:data:`UNREADABLE`).
    """

    decision: Decision
    reason: str = ""
    n_frames: int | None = None
    unreadable: bool = False


@dataclass(frozen=True, slots=True)
class FrameMdoc:
    """The per-movie frame mdoc's facts that matter for completeness."""

    path: Path
    has_frameset: bool
    num_subframes: int | None


_SECTION = re.compile(r"^\s*\[\s*FrameSet\s*=\s*0\s*\]", re.MULTILINE | re.IGNORECASE)
#: at most 9 digits: a longer count is damage (and Python refuses ints of 4,300 digits)
_SUBFRAMES = re.compile(r"^\s*NumSubFrames\s*=\s*(\d{1,9})\b", re.MULTILINE | re.IGNORECASE)


def frame_mdoc_path(movie: Path) -> Path:
    """``<movie>.mdoc``: SerialEM's per-movie frame metadata file name."""
    return movie.with_name(movie.name + ".mdoc")


def read_frame_mdoc(path: Path) -> FrameMdoc | None:
    """Read a frame mdoc; None when absent or unreadable (it may be half-written)."""
    try:
        text = decode_metadata_text(read_regular_file(path)).text  # UTF-16, cp1252 too
    except OSError:
        return None
    match = _SUBFRAMES.search(text)
    return FrameMdoc(path, bool(_SECTION.search(text)), int(match.group(1)) if match else None)


def _default_check(path: Path):  # noqa: ANN202 - Completeness from correction.io.complete
    from correction.io.complete import check_complete

    return check_complete(path)


def validate(path: Path, *, stable_for_s: float, incomplete_grace_s: float,
             require_frame_mdoc: bool = False,
             check: Callable[[Path], object] = _default_check) -> Verdict:
    """Validate one settled movie.

    Parameters
    ----------
    path : Path
        The movie.
    stable_for_s : float
        Local seconds its size and mtime have not changed.
    incomplete_grace_s : float
        How long (s) an incomplete but unchanging movie may wait before it is rejected.
    require_frame_mdoc : bool
        Wait for ``<movie>.mdoc`` (SerialEM's "save frame mdoc" on) before reading.
    check : callable
        Format-level check returning an object with ``complete``, ``reason``, ``n_frames``.

    Returns
    -------
    Verdict
    """
    if not path.is_file():
        if not os.path.lexists(path):  # moved aside or deleted since it was listed: the scans
            return Verdict("wait", GONE_REASON)  # decide (it may come back, as it was)
        return Verdict("reject", "not a regular file")
    try:
        completeness = check(path)
    except Exception as exc:  # noqa: BLE001 - a reader bug must not stop the daemon
        return Verdict("reject", f"completeness check failed: {type(exc).__name__}: {exc}")
    n_frames = getattr(completeness, "n_frames", None)
    taken = ""
    if getattr(completeness, "zero_filled", False) and stable_for_s >= incomplete_grace_s:
        # a full-size MRC whose last frame read as zeros all this while: no copy is filling
        # it; a movie with a blank last frame is corrected as it is, not quarantined
        taken = f"{completeness.reason}; unchanged for {stable_for_s:.0f} s: {TAKEN_AS_IT_IS}"
    elif not completeness.complete:
        reason = str(completeness.reason) or "incomplete"
        if getattr(completeness, "not_a_movie", False):  # no valid header: settled, so final
            return Verdict("reject", reason, n_frames)
        if getattr(completeness, "unreadable", False):
            if stable_for_s >= incomplete_grace_s:
                return Verdict("reject", f"{UNREADABLE} {stable_for_s:.0f} s: {reason}",
                               n_frames, unreadable=True)
            return Verdict("wait", reason, n_frames, unreadable=True)
        if stable_for_s >= incomplete_grace_s:
            return Verdict("reject", f"incomplete after {stable_for_s:.0f} s unchanged: {reason}",
                           n_frames)
        return Verdict("wait", reason, n_frames)

    mdoc = read_frame_mdoc(frame_mdoc_path(path))
    if mdoc is None or not mdoc.has_frameset:
        if require_frame_mdoc:
            if stable_for_s >= incomplete_grace_s:
                return Verdict("reject", f"no frame mdoc {frame_mdoc_path(path).name} after "
                               f"{stable_for_s:.0f} s", n_frames)
            return Verdict("wait", f"waiting for {frame_mdoc_path(path).name}", n_frames)
        return Verdict("ready", taken, n_frames)
    if mdoc.num_subframes is not None and n_frames is not None and mdoc.num_subframes != n_frames:
        reason = f"frame mdoc says {mdoc.num_subframes} frames, file has {n_frames}"
        if stable_for_s >= incomplete_grace_s:
            return Verdict("reject", reason, n_frames)
        return Verdict("wait", reason, n_frames)
    return Verdict("ready", taken or "frame mdoc agrees", n_frames)
