"""EPU movies corrected before their metadata file came: redone at the voltage it gives.

EPU writes each acquisition's metadata file (``<acquisition>.xml``, the voltage under
``microscopeData/gun``) apart from the camera's movie. A movie whose voltage is not configured
and comes from no mdoc waits for that file at most ``--metadata-wait``
(:meth:`~daemon.series.resolver.TiltSeriesResolver._epu_metadata_wait`); after that it is
weighted at its header's voltage, else 300 kV. When the file comes later (a copy to the
watched share that lags, an EPU that writes it late) and gives another voltage, the movie is
redone once with it, as a movie whose mdoc dose changed is (log event
``movie_redo_metadata_changed``; the new voltage makes a new ledger key). The movies tracked
are those that waited in vain in this run, each for an hour (``LATE_WINDOW_S``) from then: a
stat per movie and scan, which on a network share must not grow with the session. A restart
needs none of this: it resolves every movie's voltage anew, and a movie whose file came while
the daemon was down gets new parameters, so a new ledger key, and is corrected again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from daemon.settings.voltage import VOLTAGE_TOLERANCE_KV, epu_xml_path, epu_xml_voltage_kV

__all__ = ["LATE_WINDOW_S", "LateEpuMetadata"]

#: how long after a movie went on without its metadata file the file is still looked for (s)
LATE_WINDOW_S = 3600.0


@dataclass
class LateEpuMetadata:
    """EPU-named movies weighted without their metadata file's voltage, and what they used.

    Attributes
    ----------
    waited_in_vain : set of str
        Movies that waited the metadata wait for their file and went on without it.
    used_kV : dict
        Movie path -> the voltage (kV) it was weighted at.
    since_s : dict
        Movie path -> when it went on without the file (the service's clock, s).
    corrected : set of str
        Those of them recorded done: looked at on every scan (:meth:`due`).
    window_s : float
        How long after ``since_s`` a movie is looked at (s).
    """

    waited_in_vain: set[str] = field(default_factory=set)
    used_kV: dict[str, float] = field(default_factory=dict)
    since_s: dict[str, float] = field(default_factory=dict)
    corrected: set[str] = field(default_factory=set)
    window_s: float = LATE_WINDOW_S

    def gave_up(self, movie: str | Path) -> None:
        """``movie`` waited the metadata wait for its file in vain and goes on without it."""
        self.waited_in_vain.add(str(movie))

    def weighted(self, movie: str | Path, voltage_kV: float, source: str, now_s: float) -> None:
        """``movie`` is weighted at ``voltage_kV`` from ``source`` (as
        :mod:`daemon.settings.voltage` names them): kept when it waited in vain and the
        voltage is its header's or the default."""
        if str(movie) not in self.waited_in_vain or source not in ("movie header", "default"):
            self.forget(movie)
        elif epu_xml_path(movie) is not None:
            self.used_kV[str(movie)] = float(voltage_kV)
            self.since_s.setdefault(str(movie), float(now_s))
            self.corrected.discard(str(movie))

    def forget(self, movie: str | Path) -> None:
        """``movie`` is no longer looked at (weighted at its file's or a configured voltage,
        redone, gone, failed or past its window)."""
        self.waited_in_vain.discard(str(movie))
        self.used_kV.pop(str(movie), None)
        self.since_s.pop(str(movie), None)
        self.corrected.discard(str(movie))

    def finished(self, movie: str | Path, status: str) -> None:
        """``movie`` was recorded ``status`` (``done``: from now on :meth:`due` looks at it)."""
        if str(movie) in self.used_kV:
            if status == "done":
                self.corrected.add(str(movie))
            else:
                self.forget(movie)

    def due(self, now_s: float) -> list[tuple[str, str]]:
        """``(movie, reason)`` for each corrected movie whose metadata file has come since and
        gives a voltage other than the one it was weighted at (each once); movies whose file
        agrees, that are gone, or whose window has passed are forgotten."""
        redo = []
        for movie in sorted(self.corrected):
            if now_s - self.since_s[movie] > self.window_s or not Path(movie).exists():
                self.forget(movie)
                continue
            kV = epu_xml_voltage_kV(movie)
            if kV is None:  # not come yet (or not complete, or without a voltage)
                continue
            used = self.used_kV[movie]
            self.forget(movie)
            if abs(kV - used) > VOLTAGE_TOLERANCE_KV:
                name = epu_xml_path(movie).name  # type: ignore[union-attr]
                redo.append((movie, f"EPU's metadata file {name} came after the movie was "
                                    f"corrected and says {kV:g} kV, where {used:g} kV was "
                                    "used: redone at its voltage"))
        return redo
