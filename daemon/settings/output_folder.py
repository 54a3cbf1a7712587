"""Whether a configured output folder is fit to hold a session's outputs (checked at start).

An output is named after its movie (``S.mrc`` for ``S.mrc``), so an output folder that holds
movies, the watch folder itself or another grid's frames folder (a typo, a link to it), would
have its raw movies replaced by the sums of movies of the same names, and movies in an output
folder below the watch folder are never seen (discovery skips the output folder). The writer
refuses to replace a file motionwatch did not write (:mod:`correction.write`); this refuses
the configuration before any movie is touched.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from correction.write import written_by_motionwatch

__all__ = ["output_folder_problem"]

_MAX_DEPTH = 2  # the output folder and two levels below it (grids, series folders)
_MAX_ENTRIES = 20_000  # entries looked at, at most: a large output folder is not read through
_MAX_READS = 200  # files whose first bytes are read, at most (a share answers each slowly)
_OWN_SUFFIXES = ("_DW", "_EVN", "_ODD")  # a movie's outputs beside its sum


def output_folder_problem(out_dir: Path, watch_dir: Path | None,
                          movie_patterns: Sequence[str]) -> str | None:
    """Why ``out_dir`` cannot take the outputs (one line), or None.

    It is the watch folder (also through a link), or it holds a movie: a file a movie pattern
    matches, of two frames or more, that motionwatch did not write
    (:func:`~correction.write.written_by_motionwatch`; a sum beside its motion record is not
    read). A single image there (a gain reference kept with the outputs) is no reason to
    refuse: the writer never replaces it either."""
    try:
        same = watch_dir is not None and out_dir.resolve() == watch_dir.resolve()
    except OSError:
        same = False
    if same:
        return (f"output folder {out_dir} is the watch folder {watch_dir}: use a subfolder or "
                "another folder")
    for read, path in enumerate(_movies_in(out_dir, movie_patterns)):
        if read >= _MAX_READS:
            break  # outputs of motionwatch so far: the writer guards the rest
        if not written_by_motionwatch(path) and _frames(path) >= 2:
            return (f"output folder {out_dir} holds movies ({path}): outputs named like them "
                    "would replace them, and movies there are not watched; give the outputs a "
                    "folder of their own")
    return None


def _movies_in(folder: Path, patterns: Sequence[str]) -> Iterator[Path]:
    """Files under ``folder`` (to ``_MAX_DEPTH``, ``_MAX_ENTRIES`` entries) that a movie
    pattern matches and that are not a sum of motionwatch's beside its record."""
    lowered = [p.lower() for p in patterns]
    seen = 0
    stack = [(folder, 0)]
    while stack and seen < _MAX_ENTRIES:
        here, depth = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError:
            continue
        names = {e.name for e in entries}
        for entry in entries:
            seen += 1
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if depth < _MAX_DEPTH:
                    stack.append((Path(entry.path), depth + 1))
                continue
            if not any(fnmatch.fnmatchcase(name.lower(), p) for p in lowered):
                continue
            stem = name.rsplit(".", 1)[0]
            for suffix in _OWN_SUFFIXES:
                stem = stem.removesuffix(suffix)
            if f"{stem}.motion.json" in names:
                continue  # a sum beside its record: motionwatch's
            yield Path(entry.path)


def _frames(path: Path) -> int:
    """Frames the file holds as its format says (0 when it reads as no movie)."""
    from correction.io.complete import check_complete

    try:
        return int(check_complete(path).n_frames or 0)
    except Exception:  # noqa: BLE001 - unreadable here: not known to be a movie
        return 0
