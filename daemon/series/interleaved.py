"""Series mdocs written in turns: a series is not done while a series written with it goes on.

A tilt series written without SerialEM's tilt-series controller leaves no ``.openTS`` lock, so
its end is taken from its mdoc staying unchanged for ``mdoc_quiet_s``. PACEtomo acquires many
series at once in one folder, one tilt of every target and then the next tilt
(its script opens and closes each target's file for each tilt): a round over 5-10
targets takes minutes, so each series' mdoc stays unchanged for longer than the quiet time
while the others are written, and each series was completed, assembled and announced after
every round, then re-opened by its next tilt.

Here two series mdocs of one folder are partners once one of them was seen changing between
two changes of the other (written in turns; series written one after the other never are), and
a series counts as unchanged only since the last change of it and its partners: the group
completes together, when its acquisition ends. Before a turn can be seen (a series of one
tilt, after the first round) every mdoc of its folder counts as a partner, for at most the
series idle timeout (the resolver's choice). Learnt from the changes seen in this run (a restart
learns it again within a round; until an mdoc unchanged since before the restart changes, the
resolver takes every mdoc of its folder as its partner, for at most the idle timeout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["InterleavedMdocs"]


@dataclass
class InterleavedMdocs:
    """Series mdocs' last changes and the partners each was seen written in turns with.

    Attributes
    ----------
    last_change_s : dict
        Series mdoc path -> when it last changed (the mdoc watcher's ``unchanged_since_s``,
        the service's clock, s).
    partners : dict
        Series mdoc path -> paths of the mdocs of its folder written in turns with it.
    """

    last_change_s: dict[str, float] = field(default_factory=dict)
    partners: dict[str, set[str]] = field(default_factory=dict)

    def look(self, changed_since_s: Mapping[str, float]) -> None:
        """The series mdocs now and when each last changed: one that changed again since the
        last look learns as partners the mdocs of its folder, known at the last look, whose
        last change is now after its previous one and not after its own (in between, or in the
        same scan). Mdocs gone are forgotten."""
        for path in [p for p in self.last_change_s if p not in changed_since_s]:
            del self.last_change_s[path]
            for other in self.partners.pop(path, set()):
                self.partners.get(other, set()).discard(path)
        before = dict(self.last_change_s)
        for path, since in changed_since_s.items():
            previous = before.get(path)
            self.last_change_s[path] = since
            if previous is None or since <= previous:
                continue
            folder = os.path.dirname(path)
            for other in before:  # known before: one that just appeared may be the next series
                other_since = changed_since_s.get(other)
                if other != path and other_since is not None and previous < other_since <= since \
                        and os.path.dirname(other) == folder:
                    self.partners.setdefault(path, set()).add(other)
                    self.partners.setdefault(other, set()).add(path)

    def unchanged_since_s(self, path: str, since_s: float, *, young: bool = False) -> float:
        """When ``path`` (last changed at ``since_s``) and every partner of it last changed:
        the latest of those times. A ``young`` series (one tilt: no turn seen yet, as after
        PACEtomo's first round) takes every mdoc of its folder as a partner."""
        others = self.partners.get(path, set())
        if young:
            folder = os.path.dirname(path)
            others = others | {p for p in self.last_change_s if os.path.dirname(p) == folder}
        return max([since_s] + [self.last_change_s[p] for p in others
                                if p in self.last_change_s])
