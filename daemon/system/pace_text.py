"""One phrase for the service's pace (a heartbeat's ``pace`` record, :mod:`daemon.engine.pace`),
as ``motionwatch status`` and systemd's status line say it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["pace_phrase"]


def pace_phrase(pace: Mapping[str, Any] | None) -> str | None:
    """``keeping up (...)`` or ``FALLING BEHIND: ...``, with the work waiting in minutes and the
    rates; ``starting on N waiting (...)`` while movies that came lately wait with none
    corrected yet; None in the service's first minute or for a record of an older release (no
    ``behind_min``)."""
    if not pace or "waiting" not in pace or pace.get("arrived_per_min") is None \
            or pace.get("corrected_per_min") is None:
        return None
    if pace.get("keeping_up") is None and int(pace["waiting"]) <= 0:
        return None
    span_s = float(pace.get("span_s", pace["window_s"]))  # the uptime, when shorter
    rates = (f"{pace['arrived_per_min']:.1f} movies/min acquired, "
             f"{pace['corrected_per_min']:.1f} corrected, last "
             f"{span_s / 60:.0f} min")
    waiting, behind = int(pace["waiting"]), pace.get("behind_min")
    if behind is None:
        backlog = f"{waiting} waiting, none corrected lately"
    else:
        backlog = f"{waiting} waiting, {float(behind):.1f} min of work"
    if pace.get("keeping_up") is None:
        return f"starting on {waiting} waiting, none corrected yet ({rates})"
    verdict = "keeping up" if pace["keeping_up"] else "FALLING BEHIND"
    return f"{verdict}: {backlog} ({rates})"
