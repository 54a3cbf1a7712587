"""A corrected tilt whose movie was moved: its series and mdoc as they are called now.

One rule for the state database's rows (:mod:`daemon.engine.admission`) and the hand-off files
(:mod:`daemon.handoff.listener`), decided from the tilt's mdoc, never from the two paths alone:

* the recorded mdoc is still there: only the movie (or its frames folder) moved; the series
  keeps its name and its mdoc;
* else the mdoc moved with the movie (found where it lies from the movie as it did before): a
  series named after its series mdoc takes the name the resolver gives it from the mdoc's new
  folder (:func:`~daemon.series.resolution.qualified_name`: ``grid1/TS_01``, ``TS_01`` in the
  watch folder itself);
* a series found by its frame mdoc or its file name is named after the movie's folder, as the
  resolver names it.

A series mdoc that is gone from both places leaves the name as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.series.resolution import qualified_name, relative_name, split_qualified

__all__ = ["moved_tilt"]

_BY_MOVIE_FOLDER = ("frame_mdoc", "filename")  # series the resolver names after the movie's folder


def _mdoc_now(mdoc: str, old: Path, new: Path) -> str:
    """Where the mdoc ``mdoc`` of the movie moved from ``old`` to ``new`` is now: where it was
    while it is still there, else where it lies from ``new`` as it lay from ``old`` (when there);
    else where it was."""
    if os.path.lexists(mdoc):
        return mdoc
    moved = os.path.normpath(new.parent / os.path.relpath(mdoc, old.parent))
    return moved if os.path.lexists(moved) else mdoc


def _series_now(series: str, folder: Path, watch_dir: Path) -> str:
    """``series`` named after ``folder`` (its mdoc's or its movie's), as the resolver names it."""
    return qualified_name(relative_name(folder, watch_dir, folder=True), split_qualified(series)[1])


def moved_tilt(tilt: Mapping[str, Any], old: Path, new: Path, watch_dir: Path) -> dict[str, Any]:
    """``tilt`` (a motion record's ``tilt`` object) of a movie moved from ``old`` to ``new``
    (absolute paths below ``watch_dir``), with its ``series`` and ``mdoc`` as called now."""
    tilt = dict(tilt)
    series, mdoc = tilt.get("series"), tilt.get("mdoc")
    if isinstance(mdoc, str) and mdoc:
        tilt["mdoc"] = _mdoc_now(mdoc, old, new)
    if not isinstance(series, str) or not series:
        return tilt
    if tilt.get("match_source") in _BY_MOVIE_FOLDER:
        tilt["series"] = _series_now(series, new.parent, watch_dir)
    elif isinstance(mdoc, str) and mdoc and tilt["mdoc"] != mdoc:
        tilt["series"] = _series_now(series, Path(tilt["mdoc"]).parent, watch_dir)
    return tilt
