"""A tilt series' lifecycle: when a corrected movie must be redone because its series or dose
moved (:func:`assignment_change`), and when a series is complete, assembled, or re-opened
(:func:`update_series_state`). Pure logic on what :mod:`daemon.series.resolution` resolved and
what the service observed; times are the daemon's clock, in seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from correction.dose import doses_received_alike
from daemon.series.resolution import SeriesConfig, TiltAssignment

__all__ = ["SeriesObservation", "SeriesState", "assignment_change", "update_series_state",
           "last_arrival_of_turns", "SINGLE_BEFORE_TILT"]

#: how the reason to redo a movie corrected alone, then known as a tilt, begins
SINGLE_BEFORE_TILT = "corrected as a single movie before it was known as a tilt of"


def assignment_change(recorded: Mapping[str, Any] | None, new: TiltAssignment, *,
                      tolerance_e_A2: float) -> str | None:
    """Why a movie corrected with ``recorded`` (a :meth:`TiltAssignment.record` dict, e.g. from
    the ledger) must be redone under ``new``; ``None`` when nothing that affects its result moved.

    Dose, frame doses and pre-exposure all change the dose-weighted sums, so any change beyond
    ``tolerance_e_A2`` means the outputs are wrong: the service redoes the movie (its file is
    still there; the cost is one correction). So does another series (a series mdoc renamed):
    the movie's record, its RELION and AreTomo3 entries and the stack it goes into name its
    series, and the old series, left without tilts, is removed. So does a tilt corrected by
    its file name's guess once its series mdoc or frame mdoc describes it, whatever its dose.
    Angle changes only affect the stack.
    """
    if recorded is None:
        return (f"{SINGLE_BEFORE_TILT} {new.series} "
                f"(by its {new.match_source.replace('_', ' ')})")
    def moved(a: Any, b: float) -> bool:
        return a is None or not math.isfinite(float(a)) or abs(float(a) - b) > tolerance_e_A2
    reasons = []
    if recorded.get("series") != new.series:
        reasons.append(f"series {recorded.get('series')} -> {new.series}")
    if recorded.get("match_source") == "filename" and new.match_source != "filename":
        # its record (mdoc, acquisition order, dose source) is the file name's guess
        reasons.append(f"found by its file name before, now by its {new.match_source}")
    if moved(recorded.get("dose_e_A2"), new.dose_e_A2):
        reasons.append(f"dose {recorded.get('dose_e_A2')} -> {new.dose_e_A2:.4f} e/Å²")
    if moved(recorded.get("pre_exposure_e_A2"), new.pre_exposure_e_A2):
        reasons.append(f"pre-exposure {recorded.get('pre_exposure_e_A2')} -> "
                       f"{new.pre_exposure_e_A2:.4f} e/Å²")
    if _frame_doses_moved(recorded.get("frame_doses_e_A2"), recorded.get("dose_e_A2"),
                          new.frame_doses_e_A2, new.dose_e_A2, tolerance_e_A2):
        reasons.append("frame doses changed")
    return "; ".join(reasons) or None


def _frame_doses_moved(old: Any, old_dose_e_A2: Any, new: tuple[float, ...] | None,
                       new_dose_e_A2: float, tolerance_e_A2: float) -> bool:
    """Per-frame doses (e/Å², per raw frame for EER) whose running sums, the dose each frame
    has received, differ by more than the tolerance at any frame (equal values off by the
    tolerance each add up over 200 raw frames). No list (None) means the tilt's dose spread
    evenly, the same as a list of equal values of that dose: a tilt corrected by its series
    section's ``ExposureDose`` is not redone when its frame mdoc comes with
    ``FrameDosesAndNumber = 0.02 200`` for 4 e/Å²."""
    if old is None and new is None:
        return False
    if old is None or new is None:
        listed, dose = (new, old_dose_e_A2) if old is None else (old, new_dose_e_A2)
        if dose is None or not listed or not math.isfinite(float(dose)):
            return True
        even = [float(dose) / len(listed)] * len(listed)
        old, new = (even, listed) if old is None else (listed, even)
    return not doses_received_alike(old, new, tolerance_e_A2=tolerance_e_A2)


@dataclass(frozen=True, slots=True)
class SeriesState:
    """Persisted completion state of one series (the service stores it in the ledger)."""

    name: str
    status: Literal["open", "complete"] = "open"
    generation: int = 0
    lock_seen: bool = False
    assembled_movies: frozenset[str] = frozenset()
    reason: str | None = None
    #: (movie, (state row id, its finished stamp)) of the rows the stacks were assembled
    #: from: a movie corrected again since (another version of its file, a redo, a retry) has
    #: another row, or the same id finished again (SQLite gives a deleted row's id anew)
    assembled_rows: frozenset[tuple[str, tuple[int, float | None]]] = frozenset()
    #: the series mdoc the stacks were assembled with (None: none, from frame mdocs or file
    #: names), once known (a state of an earlier version does not say: ``mdoc_known`` False)
    assembled_mdoc: str | None = None
    mdoc_known: bool = False


@dataclass(frozen=True, slots=True)
class SeriesObservation:
    """What the service sees of a series at one scan.

    ``listed_movies``: names the metadata lists; ``known_movies``: movies of the series seen
    on disk; ``finished_movies``: those done or quarantined; ``lock_present``: the stack's
    ``.openTS`` exists; ``mdoc_unchanged_since_s``: daemon clock of the last mdoc change (None
    without mdoc); ``last_activity_s``: latest new movie or mdoc change (daemon clock);
    ``finished_rows``: (movie, (state row id, finished stamp)) of the finished movies' rows;
    ``mdoc_path``: the series mdoc describing it (None without one); ``by_arrival``: no series
    mdoc lists its tilts (frame mdocs, file names): ``listed_movies`` are the known ones and
    ``mdoc_unchanged_since_s`` the last arrival of a movie, its own or of a series written in
    turns with it.
    """

    listed_movies: frozenset[str]
    known_movies: frozenset[str]
    finished_movies: frozenset[str]
    lock_present: bool
    mdoc_unchanged_since_s: float | None
    last_activity_s: float
    finished_rows: frozenset[tuple[str, tuple[int, float | None]]] = frozenset()
    mdoc_path: str | None = None
    by_arrival: bool = False


def _reopened(state: SeriesState, obs: SeriesObservation) -> SeriesState:
    """A complete series, re-opened when its stacks are out of date: a known movie it was not
    assembled with, one it was assembled with that is no longer its tilt (its mdoc no longer
    lists it, or it moved to another series: the stacks are assembled again without it), or
    one it was assembled with that is unfinished again."""
    new = obs.known_movies - state.assembled_movies
    if new:
        return replace(state, status="open",
                       reason=f"re-opened: {len(new)} new movie(s), e.g. {sorted(new)[0]}")
    gone = state.assembled_movies - obs.known_movies
    if gone and obs.known_movies:
        return replace(state, status="open", reason=f"re-opened: {len(gone)} movie(s) no "
                                                    f"longer its tilts, e.g. {sorted(gone)[0]}")
    again = (obs.known_movies & state.assembled_movies) - obs.finished_movies
    # finished again since the assembly, between two looks (a correction faster than a scan)
    rows_now = dict(obs.finished_rows)
    again |= {m for m, row in state.assembled_rows
              if m in obs.known_movies and rows_now.get(m, row) != row}
    if again:
        return replace(state, status="open", reason=f"re-opened: {len(again)} movie(s) "
                                                     f"corrected again, e.g. {sorted(again)[0]}")
    if state.mdoc_known and state.assembled_mdoc is None and obs.mdoc_path is not None:
        # assembled from frame mdocs (or file names), its series mdoc copied in since: the
        # stacks' mdocs and RELION's STAR get the tilt axis and target defocus it gives (a
        # second copy or a new name of the mdoc it was assembled with changes nothing)
        return replace(state, status="open", reason=f"re-opened: its series mdoc "
                                                     f"{os.path.basename(obs.mdoc_path)} came")
    return state


def update_series_state(state: SeriesState, obs: SeriesObservation, *, now_s: float,
                        config: SeriesConfig, run_ending: bool = False
                        ) -> tuple[SeriesState, bool]:
    """Advance a series' completion state; returns ``(new_state, assemble_now)``.

    Complete when every listed and every known movie is finished and the series is no longer
    written: its ``.openTS`` lock is gone (when a lock was ever seen), or its mdoc has been
    unchanged for ``mdoc_quiet_s``. Or, whatever is missing, when nothing happened for
    ``idle_timeout_s`` and no known movie is still in flight. A complete series re-opens when a
    movie arrives that it was not assembled with (or one's metadata moved), or when one it was
    assembled with is being corrected again (a quarantined tilt retried, a rewritten file); it
    is assembled again once its known movies are finished and it is not written, listed tilts
    that never came notwithstanding. When the run ends (``run_ending``: the service exits as
    idle) no series waits for its idle timeout but one whose ``.openTS`` lock is there.
    """
    lock_seen = state.lock_seen or obs.lock_present
    state = replace(state, lock_seen=lock_seen)
    if state.status == "complete":
        return _reopened(state, obs), False
    if not obs.known_movies:
        return state, False
    all_known_finished = obs.known_movies <= obs.finished_movies
    all_listed_finished = obs.listed_movies <= obs.finished_movies
    quiet = (obs.mdoc_unchanged_since_s is not None
             and now_s - obs.mdoc_unchanged_since_s >= config.mdoc_quiet_s)
    if obs.lock_present:
        not_written, why = False, ""
    elif lock_seen:
        not_written, why = True, ".openTS lock gone"
    elif obs.by_arrival:  # tilts by their frame mdocs: the movies' last arrival
        not_written, why = quiet, (f"no new tilt for {config.mdoc_quiet_s:g} s (no series "
                                   "mdoc lists its tilts)")
    else:
        not_written, why = quiet, f"mdoc unchanged for {config.mdoc_quiet_s:g} s"
    finished = frozenset(obs.known_movies & obs.finished_movies)
    rows = frozenset(p for p in obs.finished_rows if p[0] in finished)  # assembled from
    # a series assembled before (re-opened: a late movie, a dose that moved) is brought up to
    # date at once: a tilt listed whose movie never came cannot hold its stacks stale
    missing = obs.listed_movies - obs.finished_movies
    if all_known_finished and not_written and obs.listed_movies and (
            all_listed_finished or state.generation > 0):
        which = "every tilt" if obs.by_arrival else "every listed tilt"
        reason = f"{which} corrected or quarantined; {why}" if not missing else (
            f"re-assembled; {why}; {_never_corrected(missing)}")
        return replace(state, status="complete", generation=state.generation + 1,
                       assembled_movies=finished, assembled_rows=rows, reason=reason,
                       assembled_mdoc=obs.mdoc_path, mdoc_known=True), True
    ending = run_ending and not obs.lock_present  # a series SerialEM still writes waits
    if all_known_finished and (ending or now_s - obs.last_activity_s >= config.idle_timeout_s):
        missing = obs.listed_movies - obs.finished_movies
        reason = ("the run ended idle (exit_when_idle)" if ending
                  else f"idle for {config.idle_timeout_s:g} s")
        if missing:
            reason += f"; {_never_corrected(missing)}"
        return replace(state, status="complete", generation=state.generation + 1,
                       assembled_movies=finished, assembled_rows=rows, reason=reason,
                       assembled_mdoc=obs.mdoc_path, mdoc_known=True), True
    return state, False


def _never_corrected(missing: frozenset[str]) -> str:
    """``N listed tilt(s) never corrected (names...)``: the operator need not compare the mdoc
    with the stacks to find the gap."""
    names = sorted(missing)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} listed tilt(s) never corrected ({shown})"


def last_arrival_of_turns(spans: Iterable[tuple[float, float, str]]) -> dict[str, float]:
    """Series of one folder that nothing lists the tilts of, each ``(first, last, name)``: its
    movies' first and last arrival (s). Series whose spans overlap (chained) were written in
    turns (PACEtomo's targets: a round of first tilts, then of second ones): each -> the last
    arrival of them all; a series written alone -> its own last arrival."""
    quiet: dict[str, float] = {}
    group: list[str] = []
    group_end = -math.inf
    for first, last, name in sorted(spans):
        if group and first > group_end:  # the turns before ended: one group
            quiet.update(dict.fromkeys(group, group_end))
            group, group_end = [], -math.inf
        group.append(name)
        group_end = max(group_end, last)
    quiet.update(dict.fromkeys(group, group_end))
    return quiet
