"""Whether a configured output folder is fit to hold a session's outputs (checked at start).

A movie's outputs go to the output folder's mirror of the movie's folder (``OUT/grid1/S.mrc``
for ``WATCH/grid1/S.mrc``) and are named after it, so an output folder that is the watch
folder (also through a link), or another grid's frames folder (a typo:
``watch session/grid2 --out session/grid1``), would have its raw movies replaced by the sums of
movies of the same names; an output folder below the watch folder that holds a grid's movies
would also hide them from discovery, which skips the output folder. The writer refuses to
replace a file motionwatch did not write (:mod:`correction.write`); this refuses such a
configuration at start, before any movie is touched. Only the folders outputs can go to are
looked in (the output folder and its mirrors of the watch folder's first two levels), and only
a file of two frames or more that motionwatch did not write counts: a gain kept with the
outputs, AreTomo3's or RELION's results in their own folders, or the watch folder inside the
output folder (a RELION project with its frames in ``PROJ/frames``) are no reason to refuse.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from correction.write import written_by_motionwatch

__all__ = ["output_folder_problem"]

_MIRROR_DEPTH = 2  # the watch folder's levels whose mirrors in the output folder are looked in
_MAX_FOLDERS = 2_000  # watch folders looked at, at most (a large session is not walked through)
_MAX_READS = 200  # files whose first bytes are read, at most (a share answers each slowly)
_OWN_SUFFIXES = ("_DW", "_EVN", "_ODD")  # a movie's outputs beside its sum


def output_folder_problem(out_dir: Path, watch_dir: Path | None,
                          movie_patterns: Sequence[str]) -> str | None:
    """Why ``out_dir`` cannot take the outputs (one line), or None.

    It is the watch folder (also through a link), or a folder an output can go to holds a movie
    motionwatch did not write (:func:`~correction.write.written_by_motionwatch`; two frames or
    more; a sum beside its motion record is not read)."""
    if watch_dir is None:
        return None
    try:
        out_real, watch_real = out_dir.resolve(), watch_dir.resolve()
    except OSError:
        return None
    if out_real == watch_real:
        return (f"output folder {out_dir} is the watch folder {watch_dir}: use a subfolder or "
                "another folder")
    reads = 0
    for path in _movies_where_outputs_go(out_dir, watch_dir, watch_real, movie_patterns):
        if reads >= _MAX_READS:
            break  # the writer guards the rest
        reads += 1
        if not written_by_motionwatch(path) and _frames(path) >= 2:
            return (f"output folder {out_dir} holds movies ({path}), where the outputs of "
                    "movies of the same names would go: they would replace them (and movies "
                    "in the output folder are not watched); give the outputs a folder of their "
                    "own")
    return None


def _movies_where_outputs_go(out_dir: Path, watch_dir: Path, watch_real: Path,
                             patterns: Sequence[str]) -> Iterator[Path]:
    """Files a movie pattern matches in the output folder's mirrors of the watch folder's
    folders (to ``_MIRROR_DEPTH``), not a sum of motionwatch's beside its record, nor, for an
    output folder outside the watch folder, inside the watch folder."""
    lowered = [p.lower() for p in patterns]
    try:
        out_in_watch = out_dir.resolve().is_relative_to(watch_real)
    except OSError:
        return
    for relative in _watch_folders(watch_dir):
        mirror = out_dir / relative
        try:
            if not out_in_watch and mirror.resolve().is_relative_to(watch_real):
                continue  # the watched movies themselves (the watch folder inside the output's)
            with os.scandir(mirror) as it:
                entries = list(it)
        except OSError:
            continue
        names = {e.name for e in entries}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not any(fnmatch.fnmatchcase(name.lower(), p)
                                               for p in lowered):
                continue
            stem = name.rsplit(".", 1)[0]
            for suffix in _OWN_SUFFIXES:
                stem = stem.removesuffix(suffix)
            if f"{stem}.motion.json" in names:
                continue  # a sum beside its record: motionwatch's
            try:
                if entry.is_file():
                    yield Path(entry.path)
            except OSError:
                continue


def _watch_folders(watch_dir: Path) -> Iterator[str]:
    """The watch folder's folders to ``_MIRROR_DEPTH`` below it, relative to it (``""`` first),
    at most ``_MAX_FOLDERS``; hidden folders left out, as discovery leaves them."""
    queue = [("", 0)]
    seen = 0
    while queue and seen < _MAX_FOLDERS:
        relative, depth = queue.pop(0)
        seen += 1
        yield relative
        if depth >= _MIRROR_DEPTH:
            continue
        try:
            with os.scandir(watch_dir / relative) as it:
                subfolders = sorted(e.name for e in it
                                    if not e.name.startswith(".") and _is_folder(e))
        except OSError:
            continue
        queue.extend((os.path.join(relative, name), depth + 1) for name in subfolders)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _frames(path: Path) -> int:
    """Frames the file holds as its format says (0 when it reads as no movie)."""
    from correction.io.complete import check_complete

    try:
        return int(check_complete(path).n_frames or 0)
    except Exception:  # noqa: BLE001 - unreadable here: not known to be a movie
        return 0
