"""Movies of no series that had no dose, looked at again when their frame mdoc gives one.

A movie outside any tilt series, with no dose configured, takes its dose from its own frame
mdoc (``<movie>.mdoc``, SerialEM's "save frame mdoc") or from its EER header. SerialEM may write
the frame mdoc seconds after the movie, and on a share it may arrive after the movie has
settled: the movie was then corrected without a dose, which fails, and its row is quarantined
for want of one (:data:`correction.dose.NO_DOSE_REASON`). When its frame mdoc then gives a dose,
the movie is admitted again: the dose makes new parameters, so a new ledger key, and it is
corrected with it (as a tilt quarantined for want of a dose is once its series' mdoc gives one,
and as a restart would). A movie corrected with its EER header's dose is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from correction.dose import NO_DOSE_REASON

__all__ = ["LateFrameMdocDose"]

_FINISHED = ("done", "quarantined")


@dataclass
class LateFrameMdocDose:
    """Movies resolved without a dose in this run: path -> name below the watch folder.

    A restart needs none of this: it resolves every movie anew.
    """

    undosed: dict[str, str] = field(default_factory=dict)

    def resolved(self, path: str, name: str, *, has_dose: bool) -> None:
        """``path`` (named ``name``) was resolved, with a dose or without one."""
        if has_dose:
            self.undosed.pop(path, None)
        else:
            self.undosed[path] = name

    def finished(self, path: str, status: str) -> None:
        """``path`` was recorded with ``status``: one corrected (with its EER header's dose)
        is forgotten; one quarantined stays, for its frame mdoc's dose."""
        if status == "done":
            self.undosed.pop(path, None)

    def found(self, on_disk: Container[str], gives_dose: Callable[[str], bool],
              rows: Callable[[], Mapping[str, Any]]) -> list[str]:
        """Movies quarantined for want of a dose whose frame mdoc now gives one (to be
        admitted again). Forgets movies no longer ``on_disk``, and those finished otherwise
        once their frame mdoc gives a dose; keeps those not finished yet. ``gives_dose(name)``
        says whether a movie's frame mdoc gives a dose; ``rows()`` is the newest ledger row
        per path, read only when one does."""
        again: list[str] = []
        newest: Mapping[str, Any] | None = None
        for path, name in list(self.undosed.items()):
            if path not in on_disk:
                del self.undosed[path]
                continue
            if not gives_dose(name):
                continue
            newest = rows() if newest is None else newest
            row = newest.get(path)
            if row is None or row.status not in _FINISHED:
                continue  # still to be corrected: it is resolved again when admitted
            del self.undosed[path]
            if row.status == "quarantined" and NO_DOSE_REASON in (row.error or ""):
                again.append(path)
        return again
