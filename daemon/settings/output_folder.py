"""Whether a configured output folder is fit to hold a session's outputs (checked at start).

A movie's outputs go to the output folder's mirror of the movie's folder (``OUT/grid1/S.mrc``
for ``WATCH/grid1/S.mrc``) and are named after it. So an output folder that is the watch folder
(also through a link), or another grid's frames folder (a typo:
``watch session/grid2 --out session/grid1``; SerialEM gives every grid the same names), would
have its raw movies replaced by the sums of the movies of their names. And an output folder
inside the watch folder that holds a grid's movies hides them: discovery skips the output
folder. The writer refuses to replace a file motionwatch did not write (:mod:`correction.write`);
this refuses such a configuration at start, before any movie is touched.

Nothing else refuses a start (status 78, which systemd does not restart). Refused: a movie (a
file of two frames or more that motionwatch did not write; an MRC of space group 0) in the
output folder's mirror of a watch folder, named as a watched movie there is (another grid's
frames folder) or as one of its outputs would be; and, in an output folder inside the watch
folder, a movie a detector wrote there (a TIFF or EER of two frames or more, an MRC labelled by
SerialEM), which is not watched. RELION, IMOD and AreTomo3 write image stacks of space group 0
too (classes, aligned stacks, tomograms), so an MRC is no proof of a movie: a gain, a mask, a
map, class averages or a tomogram kept with the outputs, or the frames folder inside a RELION
project, are no reason to refuse. A typo met before the other grid has a movie (a start before
acquisition) is not seen here; the writer's guard keeps the raw movies then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from correction.stems import OUTPUT_TAILS, fit_output_stem
from correction.write import written_by_motionwatch
from daemon.intake.discover import name_matcher

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
    except (OSError, RuntimeError):  # a link loop: RuntimeError before Python 3.13
        return None
    if out_real == watch_real:
        return (f"output folder {out_dir} is the watch folder {watch_dir}: use a subfolder or "
                "another folder")
    match = name_matcher(tuple(movie_patterns))  # discovery's own test of a movie's name

    def is_movie(name: str) -> bool:
        return match(name.lower()) is not None

    if out_real.is_relative_to(watch_real):
        candidates = (Path(here) / name for here, names in _folders(out_dir)
                      for name in names if is_movie(name))
        hidden = _first_movie(candidates, detector_only=True)
        if hidden is not None:
            return (f"output folder {out_dir} holds movies ({hidden}); inside the watch folder, "
                    "it is not watched: give the outputs a folder of their own")
    taken = _first_movie(_output_names_taken(out_dir, watch_dir, is_movie))
    if taken is not None:
        return (f"output folder {out_dir} holds movies ({taken}) whose names the outputs of "
                "watched movies would take (is it a frames folder?): give the outputs a folder "
                "of their own")
    return None


def _output_names_taken(out_dir: Path, watch_dir: Path,
                        is_movie: Callable[[str], bool]) -> Iterator[Path]:
    """Files in the output folder's mirror of each watch folder (to ``_DEPTH``) named as a movie
    there is, or as an output of one would be (``S.mrc``, ``S_DW.mrc`` ... of ``S.tif``)."""
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
            if name in present:
                yield mirror / name
            stem = fit_output_stem(Path(name).stem)
            for tail in OUTPUT_TAILS:
                if stem + tail in present and stem + tail != name:
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


def _first_movie(paths: Iterator[Path], *, detector_only: bool = False) -> Path | None:
    """The first of ``paths`` that is a movie motionwatch did not write (at most
    ``_MAX_READS`` read: the writer guards the rest); ``detector_only``: one a detector wrote
    (an MRC only when SerialEM's label says so)."""
    read = 0
    for path in paths:
        if written_by_motionwatch(path):
            continue  # motionwatch's own (a look at its first bytes, not counted)
        read += 1
        if read > _MAX_READS:
            return None
        if _is_movie_file(path, detector_only=detector_only):
            return path
    return None


def _is_movie_file(path: Path, *, detector_only: bool) -> bool:
    """Two frames or more as its format says; an MRC of space group 0 (an image stack; a map
    or mask has 1), and with ``detector_only`` labelled by SerialEM."""
    from correction.io.complete import check_complete

    try:
        if path.suffix.lower() in (".mrc", ".mrcs"):
            with open(path, "rb") as fh:
                header = fh.read(1024)
            if len(header) < 1024 or int.from_bytes(header[88:92], "little") != 0:
                return False  # ISPG (bytes 88-92): a volume's is 1 or more
            if detector_only and not header[224:232] == b"SerialEM":
                return False
        return int(check_complete(path).n_frames or 0) >= 2
    except Exception:  # noqa: BLE001 - unreadable here: not known to be a movie
        return False
