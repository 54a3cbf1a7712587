"""Whether a configured output folder is fit to hold a session's outputs (checked at start).

A movie's outputs go to the output folder's mirror of the movie's folder (``OUT/grid1/S.mrc``
for ``WATCH/grid1/S.mrc``) and are named after it. So an output folder that is the watch folder
(also through a link), or another grid's frames folder (a typo:
``watch session/grid2 --out session/grid1``; SerialEM gives every grid the same names), would
have its raw movies replaced by the sums of the movies of their names. And an output folder
inside the watch folder that holds a grid's movies hides them: discovery skips the output
folder. The writer refuses to replace a file motionwatch did not write (:mod:`correction.write`);
this refuses such a configuration at start, before any movie is touched.

Nothing else refuses a start (status 78, which systemd does not restart): only a movie (a file
of two frames or more that motionwatch did not write, not a volume) whose name an output of a
watched movie would take, or, for an output folder inside the watch folder, any movie in it.
A gain kept with the outputs, AreTomo3's or RELION's results (a mask, a map, a particle stack),
or the frames folder inside a RELION project are no reason to refuse.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from correction.stems import OUTPUT_TAILS, fit_output_stem
from correction.write import written_by_motionwatch

__all__ = ["output_folder_problem"]

_DEPTH = 2  # folders looked in: the output (or watch) folder and two levels below it
_MAX_FOLDERS = 2_000  # folders looked at, at most (a large session is not walked through)
_MAX_READS = 200  # files whose first bytes are read, at most (a share answers each slowly)


def output_folder_problem(out_dir: Path, watch_dir: Path | None,
                          movie_patterns: Sequence[str]) -> str | None:
    """Why ``out_dir`` cannot take the outputs (one line), or None."""
    if watch_dir is None:
        return None
    try:
        out_real, watch_real = out_dir.resolve(), watch_dir.resolve()
    except OSError:
        return None
    if out_real == watch_real:
        return (f"output folder {out_dir} is the watch folder {watch_dir}: use a subfolder or "
                "another folder")
    is_movie = _matcher(movie_patterns)
    if out_real.is_relative_to(watch_real):
        candidates = (Path(here) / name for here, names in _folders(out_dir)
                      for name in names if is_movie(name))
        hidden = _first_movie(candidates)
        if hidden is not None:
            return (f"output folder {out_dir} holds movies ({hidden}); inside the watch folder, "
                    "it is not watched, and outputs of movies of their names would replace "
                    "them: give the outputs a folder of their own")
        return None
    taken = _first_movie(_output_names_taken(out_dir, watch_dir, is_movie))
    if taken is not None:
        return (f"output folder {out_dir} holds movies ({taken}) whose names the outputs of "
                "watched movies would take (is it a frames folder?): give the outputs a folder "
                "of their own")
    return None


def _matcher(patterns: Sequence[str]):  # noqa: ANN202 - a predicate on file names
    lowered = [p.lower() for p in patterns]
    return lambda name: any(fnmatch.fnmatchcase(name.lower(), p) for p in lowered)


def _output_names_taken(out_dir: Path, watch_dir: Path, is_movie) -> Iterator[Path]:  # noqa: ANN001
    """Files in the output folder's mirror of each watch folder (to ``_DEPTH``) named as an
    output of a movie there would be (``S.mrc``, ``S_DW.mrc`` ... of ``S.tif``)."""
    for here, names in _folders(watch_dir):
        relative = os.path.relpath(here, watch_dir)
        movies = [name for name in names if is_movie(name)]
        if not movies:
            continue
        mirror = out_dir if relative == "." else out_dir / relative
        try:
            present = set(os.listdir(mirror))
        except OSError:
            continue
        for name in movies:
            stem = fit_output_stem(Path(name).stem)
            for tail in OUTPUT_TAILS:
                if stem + tail in present:
                    yield mirror / (stem + tail)


def _folders(top: Path) -> Iterator[tuple[str, list[str]]]:
    """``(folder, its file names)`` of ``top`` and its folders to ``_DEPTH`` below it, at most
    ``_MAX_FOLDERS``; hidden folders left out, as discovery leaves them."""
    queue = [(str(top), 0)]
    seen = 0
    while queue and seen < _MAX_FOLDERS:
        here, depth = queue.pop(0)
        seen += 1
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except OSError:
            continue
        files, subfolders = [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.path)
                elif entry.is_file():
                    files.append(entry.name)
            except OSError:
                continue
        yield here, files
        if depth < _DEPTH:
            queue.extend((path, depth + 1) for path in sorted(subfolders))


def _first_movie(paths: Iterator[Path]) -> Path | None:
    """The first of ``paths`` that is a movie motionwatch did not write (at most
    ``_MAX_READS`` read: the writer guards the rest)."""
    for read, path in enumerate(paths):
        if read >= _MAX_READS:
            return None
        if not written_by_motionwatch(path) and _is_movie_file(path):
            return path
    return None


def _is_movie_file(path: Path) -> bool:
    """Two frames or more as its format says, and for an MRC not a volume (space group 0: an
    image stack; a map or mask has 1)."""
    from correction.io.complete import check_complete

    try:
        if path.suffix.lower() in (".mrc", ".mrcs"):
            with open(path, "rb") as fh:
                header = fh.read(1024)
            if len(header) < 1024 or int.from_bytes(header[88:92], "little") not in (0,):
                return False  # ISPG (bytes 88-92): a volume's is 1 or more
        return int(check_complete(path).n_frames or 0) >= 2
    except Exception:  # noqa: BLE001 - unreadable here: not known to be a movie
        return False
