"""The resolution of a watched tree by top-level folder, each folder resolved again only when
what it holds changed or a wait in it ends.

A service that runs for weeks into one output folder resolves, at every scan, every movie its
state names: the sessions of weeks before (20,000 rows and more) beside the one being
acquired. Nothing of an old session's folder changes, yet :func:`resolve` over the whole tree
costs the main loop O(rows) a scan. The resolution of a tree is the union of the resolutions
of its top-level folders (``session1/``, ``session2/``; and the watch folder's own files): a
series and its name live in the folder of its mdoc or of its movies, and a series mdoc lists
only movies in its own folder or below it (:func:`daemon.series.resolution._listed_movie`), so
no series, tilt or pre-exposure reaches from one top-level folder into another. Only a series
mdoc in the watch folder itself reaches below every folder: then the tree is one part.

A part is resolved again when its movies (name, first seen, mtime, recorded mdoc), its series
mdocs or frame mdocs (the parsed objects, which the mdoc watcher replaces when it reads a file
again, and the time since each is unchanged) differ from those of its last resolution, or when
the clock reaches a wait that may end in it (a movie's or mdoc's time plus the metadata wait,
the missing-tilt wait or the idle timeout), or goes back before the time it was resolved
at (a wall clock stepped back), or the configuration changes: the result then has the
mappings and sets :func:`resolve` over the whole tree gives (``tests/daemon/test_partition.py``
compares the two; their order of iteration is by part).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from daemon.series.mdoc import MdocFile
from daemon.series.resolution import (MdocObservation, MovieObservation, Resolution,
                                      SeriesConfig, resolve, split_qualified)

__all__ = ["PartitionedResolution", "top_folder"]


def top_folder(folder: str) -> str:
    """The top-level folder of a folder below the watch folder (``""``: the watch folder)."""
    return folder.strip("/").partition("/")[0]


@dataclass(frozen=True)
class _Inputs:
    """What one part was resolved from; mdocs compared by identity (parsed once per read)."""

    movies: tuple[MovieObservation, ...]
    series_mdocs: tuple[tuple[MdocFile, float, str], ...]
    frame_mdocs: tuple[tuple[str, MdocFile], ...]
    series_mdocs_elsewhere: bool  # another part has a series mdoc (the session writes them)

    def same_as(self, other: _Inputs) -> bool:
        return (self.movies == other.movies
                and self.series_mdocs_elsewhere == other.series_mdocs_elsewhere
                and len(self.series_mdocs) == len(other.series_mdocs)
                and all(a[0] is b[0] and a[1:] == b[1:]
                        for a, b in zip(self.series_mdocs, other.series_mdocs))
                and len(self.frame_mdocs) == len(other.frame_mdocs)
                and all(a[0] == b[0] and a[1] is b[1]
                        for a, b in zip(self.frame_mdocs, other.frame_mdocs)))


@dataclass(frozen=True)
class _Part:
    inputs: _Inputs
    resolution: Resolution
    resolved_at_s: float  # the clock it was resolved at
    stable_until_s: float  # the clock at which a wait in it may end

    def holds(self, inputs: _Inputs, now_s: float) -> bool:
        """Its resolution is what resolving ``inputs`` at ``now_s`` gives (a clock stepped
        back before its time may undo an ended wait: resolved again)."""
        return self.resolved_at_s <= now_s < self.stable_until_s and inputs.same_as(self.inputs)


def _stable_until(inputs: _Inputs, config: SeriesConfig, now_s: float) -> float:
    """The earliest time after ``now_s`` at which :func:`resolve` may decide otherwise for the
    same inputs: a movie's first sighting or an mdoc's quiet start plus any of its waits."""
    waits = (config.metadata_wait_s, config.missing_tilt_wait_s, config.idle_timeout_s)
    times = [m.first_seen_s for m in inputs.movies] + [t for _, t, _ in inputs.series_mdocs]
    ends = [t + w for t in times for w in waits if t + w > now_s]
    return min(ends, default=float("inf"))


class PartitionedResolution:
    """:func:`resolve` of a watched tree, made from its top-level folders' resolutions, each
    kept until its inputs change or a wait in it may end."""

    def __init__(self) -> None:
        self._parts: dict[str | None, _Part] = {}
        self._config: SeriesConfig | None = None
        self.resolved_parts = 0  # parts resolved (again) so far

    def resolve(self, movies: Sequence[MovieObservation],
                series_mdocs: Sequence[MdocObservation], frame_mdocs: Mapping[str, MdocFile],
                *, config: SeriesConfig, now_s: float) -> Resolution:
        """As :func:`resolve` with the same arguments: the same mappings and sets (their
        order of iteration is by part)."""
        if config != self._config:  # another configuration: every part anew
            self._parts, self._config = {}, config
        grouped: dict[str | None, tuple[list, list, list]] = {}

        def part(key: str | None) -> tuple[list, list, list]:
            return grouped.setdefault(key, ([], [], []))

        one_part = any(not ob.folder.strip("/") for ob in series_mdocs)
        for m in movies:
            part(None if one_part else top_folder(split_qualified(m.name)[0]))[0].append(m)
        for ob in series_mdocs:
            part(None if one_part else top_folder(ob.folder))[1].append(
                (ob.mdoc, ob.unchanged_since_s, ob.folder))
        for name, md in frame_mdocs.items():
            part(None if one_part else top_folder(split_qualified(name)[0]))[2].append((name, md))

        # the parts holding a series mdoc (a session that writes them: resolve's wait of a
        # tilt with a frame mdoc for one to list it reaches across parts)
        with_series = {key for key, (_, mdocs_k, _) in grouped.items()
                       if any(md.kind in ("tilt_series", "empty") for md, _, _ in mdocs_k)}
        results: list[Resolution] = []
        kept: dict[str | None, _Part] = {}
        for key in sorted(grouped, key=lambda k: (k is not None, k or "")):
            movies_k, mdocs_k, frames_k = grouped[key]
            inputs = _Inputs(tuple(movies_k), tuple(mdocs_k), tuple(frames_k),
                             bool(with_series - {key}))
            last = self._parts.get(key)
            if last is None or not last.holds(inputs, now_s):
                res = resolve(movies_k, [MdocObservation(md, t, f) for md, t, f in mdocs_k],
                              dict(frames_k), config=config, now_s=now_s,
                              series_mdocs_elsewhere=inputs.series_mdocs_elsewhere)
                last = _Part(inputs, res, now_s, _stable_until(inputs, config, now_s))
                self.resolved_parts += 1
            kept[key] = last
            results.append(last.resolution)
        self._parts = kept  # a part gone from the tree is forgotten
        return _union(results)


def _union(parts: Sequence[Resolution]) -> Resolution:
    """One resolution of disjoint parts: each field of :class:`Resolution` merged by its kind
    (mappings updated, sets joined, tuples chained), so that a field added later is merged
    too (the retaken tilts' angles were left out: a discarded first exposure found no retake
    to take its dose from, and was quarantined, wherever the watch folder had two folders)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:  # an empty tree
        return Resolution(assignments={}, pending={}, standalone=frozenset(), series={},
                          ignored_mdocs={})
    merged: dict[str, Any] = {}
    for f in fields(Resolution):
        values = [getattr(r, f.name) for r in parts]
        if isinstance(values[0], frozenset):
            merged[f.name] = frozenset().union(*values)
        elif isinstance(values[0], tuple):
            merged[f.name] = tuple(item for v in values for item in v)
        elif isinstance(values[0], Mapping):
            merged[f.name] = {k: x for v in values for k, x in v.items()}
        else:
            raise TypeError(f"Resolution.{f.name}: no rule to merge a "
                            f"{type(values[0]).__name__} of disjoint parts")
    return Resolution(**merged)
