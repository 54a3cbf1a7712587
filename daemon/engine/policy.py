"""The engine's own settings: per-movie time limits and what a parameter change does.

Options of ``motionwatch watch`` (each with its TOML key, like every other option), read back from
``Config.options`` by :meth:`EnginePolicy.from_config`:

``--movie-timeout-floor S`` / ``--movie-timeout-per-gb S``
    A movie's time limit scales with its size: ``max(floor, per_gb x size in GB)``, capped by
    ``--movie-timeout``, so a runaway small movie does not hold the queue for the full cap. A
    movie that times out is quarantined one failure sooner than one that crashes.
``--on-parameter-change {redo,keep}``
    After a setting that changes the results (``Config.params``), ``redo`` corrects every
    finished movie again under the new parameters (overwriting its outputs); ``keep`` leaves
    movies finished under other parameters as they are and corrects only new ones. Either way
    the start-up log says how many finished movies are affected and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.events import gain_in_force, movie_fingerprint
from daemon.state.codec import metadata_from_json

__all__ = ["EnginePolicy", "add_engine_arguments", "movie_time_limit_s", "PARAMETER_CHANGE",
           "finished_under_other_parameters", "report_parameter_change",
           "parameter_snapshot", "parameter_differences", "CHANGES_SHOWN"]

PARAMETER_CHANGE = ("redo", "keep")
_FLOOR_S = 600.0
_PER_GB_S = 900.0


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the engine (``motionwatch watch``)."""
    g = parser.add_argument_group("time limits and re-correction")
    g.add_argument("--movie-timeout-floor", type=float, default=_FLOOR_S, metavar="S",
                   help="shortest per-movie time limit (default %(default)s s); the limit is "
                        "max(floor, per-GB x size), capped by --movie-timeout")
    g.add_argument("--movie-timeout-per-gb", type=float, default=_PER_GB_S, metavar="S",
                   help="per-movie time limit per GB of movie file (default %(default)s s)")
    g.add_argument("--on-parameter-change", choices=PARAMETER_CHANGE, default="redo",
                   help="after a change of correction settings: correct finished movies again "
                        "(redo, overwriting their outputs) or keep them (default %(default)s)")


def movie_time_limit_s(size_bytes: int, *, floor_s: float, per_gb_s: float,
                       cap_s: float) -> float:
    """A movie's time limit (s): ``min(cap_s, max(floor_s, per_gb_s x size_bytes / 1e9))``.

    Parameters
    ----------
    size_bytes : int
        Movie file size (bytes; negative counts as 0).
    floor_s, per_gb_s, cap_s : float
        Shortest limit (s), seconds per 10^9 bytes, longest limit (s).
    """
    scaled = per_gb_s * max(size_bytes, 0) / 1e9
    return float(min(cap_s, max(floor_s, scaled)))


@dataclass(frozen=True, slots=True)
class EnginePolicy:
    """The engine's settings (see the module docstring).

    Attributes
    ----------
    movie_timeout_floor_s, movie_timeout_per_gb_s : float
    on_parameter_change : {"redo", "keep"}
    """

    movie_timeout_floor_s: float = _FLOOR_S
    movie_timeout_per_gb_s: float = _PER_GB_S
    on_parameter_change: str = "redo"

    def __post_init__(self) -> None:
        if not self.movie_timeout_floor_s > 0:
            raise ValueError(f"movie_timeout_floor must be > 0 s, got {self.movie_timeout_floor_s}")
        if self.movie_timeout_per_gb_s < 0:
            raise ValueError(f"movie_timeout_per_gb must be >= 0 s, got "
                             f"{self.movie_timeout_per_gb_s}")
        if self.on_parameter_change not in PARAMETER_CHANGE:
            raise ValueError(f"on_parameter_change must be one of {', '.join(PARAMETER_CHANGE)}, "
                             f"got {self.on_parameter_change!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EnginePolicy:
        """From ``Config.options`` (missing keys: the defaults). Raises ValueError."""
        return cls(float(options.get("movie_timeout_floor", _FLOOR_S)),
                   float(options.get("movie_timeout_per_gb", _PER_GB_S)),
                   str(options.get("on_parameter_change", "redo")))

    def time_limit_s(self, size_bytes: int, cap_s: float) -> float:
        """This movie's time limit (s)."""
        return movie_time_limit_s(size_bytes, floor_s=self.movie_timeout_floor_s,
                                  per_gb_s=self.movie_timeout_per_gb_s, cap_s=cap_s)


def finished_under_other_parameters(rows: Sequence[Any], params: Any, *,
                                    frame_mdoc_gain: bool = True) -> list[Any]:
    """Movies (ledger rows) done only under parameters other than ``params``.

    For each movie's newest file version, the parameters it would be corrected with now are its
    stored dose and own gain (from its metadata; the gain only where ``frame_mdoc_gain`` and no
    configured gain let it stand, :func:`daemon.events.gain_in_force`) over ``params``; a version with a done row under another
    fingerprint and no row under that one would be corrected again (``redo``) or is kept
    (``keep``), and so would one whose row under that one was done before another's (settings
    changed A -> B -> A: its outputs are B's). Returns the newest such done row of each movie.
    """
    versions: dict[str, dict[tuple[int, int], list[Any]]] = {}
    for row in rows:
        if row.key.size >= 0:
            versions.setdefault(row.key.path, {}).setdefault(
                (row.key.size, row.key.mtime_ns), []).append(row)
    out = []
    memo: dict[str, str] = {}  # stored dose -> fingerprint: one per dose, not per row
    for by_version in versions.values():
        newest = by_version[max(by_version, key=lambda v: v[1])]
        current = {_fingerprint_now(r, params, memo, frame_mdoc_gain) for r in newest}
        done = sorted((r for r in newest if r.status == "done"),
                      key=lambda r: r.finished or 0.0)
        if not done or done[-1].key.fingerprint in current:
            continue  # nothing done, or done last under these parameters
        if any(r.key.fingerprint in current and r.status != "done" for r in newest):
            continue  # waiting to be corrected under these anyway
        out.append(done[-1])
    return out


def _fingerprint_now(row: Any, params: Any, memo: dict[str, str],
                     frame_mdoc_gain: bool = True) -> str:
    """The fingerprint ``row``'s movie is corrected under now: its stored dose and gain over
    ``params`` (``memo``: by the stored dose's text; 100,000 rows at start-up 5.7 -> 0.6 s)."""
    metadata = row.peek_metadata()
    key = repr((metadata.get("dose"), metadata.get("gain")))
    fingerprint = memo.get(key)
    if fingerprint is None:
        stored = metadata_from_json(metadata)
        fingerprint = memo[key] = movie_fingerprint(
            params, stored.dose, gain_in_force(stored.gain, params, frame_mdoc_gain))
    return fingerprint


#: settings named in ``parameters_changed`` (and a movie's own in ``movie_changed``) at most
CHANGES_SHOWN = 8


def parameter_snapshot(params: Any) -> dict[str, Any]:
    """The correction parameters as plain JSON values (paths and other objects as text), kept
    in the state database at each start, so the next start can name what changed."""
    return json.loads(json.dumps(dataclasses.asdict(params), default=str))


def parameter_differences(previous: Mapping[str, Any] | None, current: Mapping[str, Any]
                          ) -> list[str]:
    """``"group.name: old -> new"`` for each setting that differs between two
    :func:`parameter_snapshot` (none when there is no previous one: a database of a release
    that kept none)."""
    if not isinstance(previous, Mapping):
        return []

    def flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, now = flat(previous), flat(current)
    return [f"{key}: {before.get(key)} -> {now.get(key)}"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def report_parameter_change(log: Any, rows: Sequence[Any], params: Any,
                            policy: EnginePolicy, *, frame_mdoc_gain: bool = True,
                            previous_snapshot: Mapping[str, Any] | None = None,
                            previous_start_wall: float | None = None) -> int:
    """Say loudly (``parameters_changed``, a warning) how many finished movies the current
    parameters would correct again, what changed since the last start (its
    :func:`parameter_snapshot`, when it kept one; and how many of those movies were corrected
    before it, under settings older still, when it began at ``previous_start_wall``), and
    what the policy does about it; returns that number."""
    stale = finished_under_other_parameters(rows, params, frame_mdoc_gain=frame_mdoc_gain)
    if not stale:
        return 0
    keep = policy.on_parameter_change == "keep"
    changed = parameter_differences(previous_snapshot, parameter_snapshot(params))
    extra: dict[str, Any] = {}
    if changed:
        extra["changed_since_last_start"] = changed[:CHANGES_SHOWN]
        if previous_start_wall is not None:
            older = sum(1 for r in stale if (r.finished or 0.0) < previous_start_wall)
            if older:  # kept by keep at the last start: their settings are older than its
                extra["corrected_before_last_start"] = older
    log.warning(
        "parameters_changed", finished_movies=len(stale), policy=policy.on_parameter_change,
        fingerprint=params.fingerprint(),
        previous_fingerprints=sorted({r.key.fingerprint for r in stale})[:5],
        examples=[r.key.path for r in stale[:5]], **extra,
        note=("these movies were corrected under other settings and are kept as they are "
              "(on_parameter_change = keep)" if keep else
              "these movies were corrected under other settings and will be corrected again, "
              "overwriting their outputs (on_parameter_change = redo; set keep to leave them)"))
    return len(stale)
