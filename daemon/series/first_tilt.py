"""The first tilt of a series that comes with its frame mdoc alone waits for the next movie.

Under ``tilt_series = auto`` the series bookkeeping turns on when a frame mdoc shows a tilt of
a series: a dose before its exposure (``PriorRecordDose`` > 0) beside another stage angle
(the resolver's ``_tilt_frame_mdoc``). The first tilt's frame mdoc cannot show
that: no dose came before it and no other angle is seen yet. Corrected at once as a single
movie, it was corrected a second time as a tilt of its series when the second tilt came.

A movie that may be that first tilt waits, at most the metadata wait (seconds after it was
first seen), until another movie of its file-name series (same folder, same ``series`` group
of ``filename_pattern``) has a frame mdoc: by then the bookkeeping has turned on, or the two
are single movies (single-particle shots named with the stage angle, two a position), and it
is corrected once either way. It may be the first tilt when it is named like a tilt, its frame
mdoc's ``[FrameSet]`` gives a stage angle, and no other movie of its file-name series has a
frame mdoc yet. Other movies are not held, nor a movie corrected before (a restart). Once
movies of :data:`LONE_NAMES` names of a folder waited it all out alone, the folder's names are
taken as one shot each (single-particle shots named by their hole, ``sq5_h3_00003_0.0.mrc``:
each waited the whole wait): its later movies do not wait. One such name is a series aborted
at its first tilt, and the next series' first tilt still waits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from daemon.series.resolution import split_qualified

__all__ = ["FirstTiltWait", "LONE_NAMES"]

#: names of a folder whose movie waited the whole wait alone, after which its movies do not wait
LONE_NAMES = 2


class FirstTiltWait:
    """Whether a movie of no series yet waits for the next movie of its file-name series.

    Parameters
    ----------
    filename_pattern : str
        The series configuration's pattern (named groups ``series`` and ``angle``).
    wait_s : float
        The longest wait (s) after the movie was first seen: the metadata wait.
    """

    def __init__(self, filename_pattern: str, wait_s: float) -> None:
        self._rx = re.compile(filename_pattern)
        self._wait_s = float(wait_s)
        self._indexed: Mapping[str, Any] | None = None  # the frame mdocs counted below
        self._counts: Counter[tuple[str, str]] = Counter()  # (folder, series) -> frame mdocs
        self._lone: dict[str, set[str]] = {}  # folder -> names whose movie waited it out alone

    def why(self, name: str, frame_mdocs: Mapping[str, Any], waited_s: float) -> str | None:
        """The wait reason for movie ``name`` (qualified, as the keys of ``frame_mdocs``: movie
        -> its parsed frame mdoc, a mapping made anew at each scan, counted once) that came
        ``waited_s`` seconds ago and is not corrected yet, or None: go on."""
        group = self._group(name)
        if group is None or len(self._lone.get(group[0], ())) >= LONE_NAMES \
                or not _stage_angle_given(frame_mdocs.get(name)):
            return None
        if self._count(frame_mdocs)[group] > 1:
            return None
        if waited_s >= self._wait_s:
            self._lone.setdefault(group[0], set()).add(group[1])
            return None
        return (f"waiting up to {self._wait_s:g} s after first seen for the next movie named "
                f"like it ({group[1]}): the first tilt of a series saved with frame mdocs "
                "alone is corrected once, as a tilt, when the next tilt's frame mdoc shows "
                "the series within the wait")

    def _group(self, name: str) -> tuple[str, str] | None:
        folder, base = split_qualified(name)
        m = self._rx.search(base)
        return None if m is None else (folder, m.group("series"))

    def _count(self, frame_mdocs: Mapping[str, Any]) -> Counter[tuple[str, str]]:
        """Frame mdocs per file-name series, counted again when the mapping is another
        (the resolver makes one a scan)."""
        if frame_mdocs is not self._indexed:
            self._counts = Counter(g for n in frame_mdocs if (g := self._group(n)) is not None)
            self._indexed = frame_mdocs
        return self._counts


def _stage_angle_given(frame_mdoc: Any) -> bool:
    """A parsed frame mdoc whose ``[FrameSet]`` section gives a stage angle (TiltAngle)."""
    return frame_mdoc is not None and any(
        s.kind == "FrameSet" and s.tilt_deg is not None for s in frame_mdoc.sections)
