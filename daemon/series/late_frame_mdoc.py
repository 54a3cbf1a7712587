"""Movies of no series resolved before their frame mdoc came, looked at again when it does.

A movie outside any tilt series takes what is not configured from its own frame mdoc
(``<movie>.mdoc``, SerialEM's "save frame mdoc"): its dose (else its EER header's) and its
voltage (else EPU's metadata file's or its header's, else 300 kV). SerialEM may write the frame
mdoc seconds after the movie, and on a share it may arrive after the movie has settled. The
movie was then

- corrected without a dose, which fails: its row is quarantined for want of one
  (:data:`correction.dose.NO_DOSE_REASON`), and it is admitted again when its frame mdoc gives
  a dose (as a tilt quarantined for want of a dose is once its series' mdoc gives one); or
- corrected with its EER header's dose, or at a voltage no option or mdoc gave: it is admitted
  again when its frame mdoc weights it otherwise (another dose, another voltage; the resolver
  says, :meth:`LateFrameMdoc.found`'s ``moved``).

Either way the frame mdoc makes new parameters, so a new ledger key, and a restart resolves the
movie the same way (keeping the EER header's dose, and the key, when the two doses are alike).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from correction.dose import NO_DOSE_REASON

__all__ = ["LateFrameMdoc", "Unsettled", "DOSE_FOUND_REASON"]

_FINISHED = ("done", "quarantined")
DOSE_FOUND_REASON = "its frame mdoc came after it was quarantined for want of a dose"


@dataclass(frozen=True, slots=True)
class Unsettled:
    """What a movie's frame mdoc may still change.

    Attributes
    ----------
    name : str
        The movie's name below the watch folder (its frame mdoc's key).
    own_dose : bool
        It has a dose of its own (configured); else its EER header's, or none.
    voltage_kV : float or None
        The voltage it is weighted at (kV) when no option or mdoc gave it; None when one did.
    """

    name: str
    own_dose: bool
    voltage_kV: float | None


@dataclass
class LateFrameMdoc:
    """Movies of no series resolved without a frame mdoc in this run, by path. Each is kept
    until its frame mdoc comes (its dose, for one quarantined for want of one) or it leaves the
    disk.

    A restart needs none of this: it resolves every movie anew.
    """

    unsettled: dict[str, Unsettled] = field(default_factory=dict)

    def resolved(self, path: str, entry: Unsettled | None) -> None:
        """``path`` was resolved: ``entry`` says what its frame mdoc may still change (None:
        nothing, it had its frame mdoc or everything is configured)."""
        if entry is None:
            self.unsettled.pop(path, None)
        else:
            self.unsettled[path] = entry

    def found(self, on_disk: Container[str], frame_mdoc: Callable[[str], Any],
              gives_dose: Callable[[str], bool], rows: Callable[[], Mapping[str, Any]],
              moved: Callable[[Unsettled, Any], str | None]) -> list[tuple[str, str]]:
        """``(path, why)`` of the movies to admit again: those quarantined for want of a dose
        whose frame mdoc now gives one, and those done whose frame mdoc, come since, weights
        them otherwise (``moved(entry, row)``: why, or None).

        Forgets movies no longer ``on_disk``, and those finished once their frame mdoc has
        come (one quarantined, once it gives a dose); keeps those not finished yet.
        ``frame_mdoc(name)`` is a movie's frame mdoc or None, ``gives_dose(name)`` whether it
        gives a dose; ``rows()`` is the newest ledger row per path, read only when needed."""
        again: list[tuple[str, str]] = []
        newest: Mapping[str, Any] | None = None
        for path, entry in list(self.unsettled.items()):
            if path not in on_disk:
                del self.unsettled[path]
                continue
            if frame_mdoc(entry.name) is None:
                continue
            newest = rows() if newest is None else newest
            row = newest.get(path)
            if row is None or row.status not in _FINISHED:
                continue  # still to be corrected: it is resolved again when admitted
            if row.status == "quarantined":
                if NO_DOSE_REASON not in (row.error or ""):
                    del self.unsettled[path]
                elif gives_dose(entry.name):
                    del self.unsettled[path]
                    again.append((path, DOSE_FOUND_REASON))
                continue
            del self.unsettled[path]
            why = moved(entry, row)
            if why is not None:
                again.append((path, why))
        return again
