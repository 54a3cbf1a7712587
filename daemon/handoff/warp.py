"""Warp/WarpTools frame-series layout beside motionwatch's outputs.

WarpTools' ``ts_import`` (warpem/warp ``WarpTools/Commands/Tiltseries/ImportTiltseries.cs``)
lists every ``*.xml`` in the ``--frameseries`` folder, makes a movie of each (root name = the
file name without extension) and requires that movie's aligned average
``average/<root>.mrc``; it matches mdoc sections to movies by the ``SubFramePath`` file name.
So the layout names a movie ``S`` by its file name without its extension, as Warp does, even
where its outputs have another stem (``TS_01_000_0.0_mrc`` for a tilt of a new grid in a folder
whose old grid, renamed, still holds ``TS_01_000_0.0``): Warp would find the old grid's sums
under the name the new mdoc gives. One name is one movie for Warp; where another movie had the
name, the movie corrected last takes it (:func:`warp_name_taken` says so first). For each
corrected movie this module makes, in the movie's output folder:

* ``average/S.mrc`` -> the dose-weighted sum ``S_DW.mrc`` (the plain sum when there is none),
  ``average/even/S.mrc`` -> ``S_EVN.mrc``, ``average/odd/S.mrc`` -> ``S_ODD.mrc``: hard links
  (no extra disk), renewed each time the movie is written again;
* ``S.xml``: a minimal Warp movie metadata file: the root element ``Movie`` with one attribute,
  ``DataDirectory``, the movie's own folder (absolute), as Warp's ``Movie.SaveMeta`` writes it.
  ``Movie.LoadMeta`` (``WarpLib/Movie/Movie.cs``) reads every attribute and element as optional;
  ``DataDirectory`` makes ``Movie.DataPath`` (``DataDirectory/<movie file name>``) the movie
  itself, whose header ``TiltSeries.LoadMovieData`` reads for ``ts_ctf`` and
  ``ts_reconstruct``: without it Warp looks for ``<movie file name>`` in this folder, which holds
  only ``S.mrc`` (the steps after ``ts_import`` failed for TIFF and EER movies). Caveat: this
  file has not been opened by Warp itself here (no Warp in this environment).

``ts_import`` fails a whole series when one section of its mdoc names a movie without
``S.xml`` (a tilt lost, quarantined or left out of the stacks): "At least one of the referenced
frame series could not be found". So each assembled series also gets ``warp_mdocs/T.mdoc`` in
its tilts' output folder (``T`` the series' file stem, the name Warp gives its ``.tomostar``):
a hard link to the stack mdoc ``T.st.mdoc``, whose sections are the tilts of the stacks alone,
each with ``TiltAngle``, ``SubFramePath`` and ``DateTime`` (Warp sorts by it), under the
``Tilt axis angle = `` title Warp reads. ``ts_import --mdocs <folder>/warp_mdocs
--frameseries <folder>`` imports every series of the folder.

Warp reads no dose from the mdoc: ``ImportTiltseries`` sorts the tilts by ``DateTime`` and gives
the i-th (from 0) the pre-exposure ``i x --tilt_exposure``, so give ``--tilt_exposure`` the
series' mean dose per tilt (the mdoc's ``ExposureDose`` summed, divided by the tilt count);
RELION's files carry the exact pre-exposures.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from correction.stems import MAX_STEM_BYTES
from correction.write import replace_with_hard_link
from daemon.handoff.relion import MovieMotion, output_stem

__all__ = ["WARP_MDOCS", "WARP_XML", "warp_layout", "warp_series_mdoc", "warp_layout_displaced",
           "warp_layout_in_place", "warp_name", "warp_name_taken", "warp_remove_stem_layout",
           "warp_xml_path"]

WARP_XML = '<?xml version="1.0" encoding="utf-8"?>\n<Movie DataDirectory="{folder}" />\n'
WARP_MDOCS = "warp_mdocs"  # the folder of series mdocs for ts_import --mdocs


def warp_series_mdoc(stack_mdoc: Path, frameseries: Path, stem: str) -> Path:
    """Link ``frameseries/warp_mdocs/<stem>.mdoc`` to the series' stack mdoc (renewed at each
    assembly: the stack mdoc is replaced, a new file each time); returns the link.

    A link there that is its file's only name is removed: its series' stack mdoc is gone (the
    series renamed, its tilts moved to another) or was replaced without it, and
    ``ts_import`` would import its movies a second time, under the old name."""
    link = frameseries / WARP_MDOCS / f"{stem}.mdoc"
    _link(stack_mdoc, link)
    for other in link.parent.glob("*.mdoc"):
        with contextlib.suppress(OSError):  # gone meanwhile
            if other != link and other.stat().st_nlink == 1:
                other.unlink()
    return link


def _link(target: Path, link: Path) -> None:
    """``link`` a hard link to ``target`` (:func:`correction.write.replace_with_hard_link`:
    nothing to do when it already is one; ``rename`` of two names of one file does nothing,
    and a temporary name stayed, a third name of the image at every restart that adopted the
    movie's outputs)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    replace_with_hard_link(target, link)


def warp_name(motion: MovieMotion) -> str:
    """The movie's name for Warp: its file name without the extension (``x`` for ``x.tif``);
    its output stem where that name is longer than an output stem may be
    (:data:`correction.stems.MAX_STEM_BYTES`): the layout's files and their writers'
    temporaries (``.<name>.mrc.tmp-<pid>``, ``<name>.motion.json`` looked for) must fit a
    file name (255 bytes; a name of 242-251 bytes got no layout, ``File name too long``)."""
    root = Path(str(motion.movie)).stem
    if not root or len(os.fsencode(root)) > MAX_STEM_BYTES:
        return output_stem(motion.motion_path)
    return root


def _remove_own(pairs: list[tuple[str | None, Path]], xml: Path) -> None:
    """Remove the links of ``pairs`` that are links to this movie's sums, and ``xml`` with them."""
    own = False
    for target, link in pairs:
        try:
            if target is not None and os.path.samefile(link, target):
                link.unlink()
                own = True
        except OSError:
            continue
    if own:
        xml.unlink(missing_ok=True)


def warp_xml_path(motion: MovieMotion) -> Path:
    """``<name>.xml`` beside the movie's outputs (written last by :func:`warp_layout`)."""
    return motion.motion_path.with_name(f"{warp_name(motion)}.xml")


def _average(motion: MovieMotion) -> str | None:
    return motion.outputs.get("dw") or motion.outputs.get("sum")


def _own_average(motion: MovieMotion) -> bool:
    """Whether ``average/<name>.mrc`` is a link to the movie's average now."""
    link = motion.motion_path.parent / "average" / f"{warp_name(motion)}.mrc"
    average = _average(motion)
    try:
        return average is not None and os.path.samefile(link, average)
    except OSError:
        return False


def warp_name_taken(motion: MovieMotion) -> bool:
    """Whether the movie's Warp name is another movie's now (which :func:`warp_layout`
    replaces): its average is a link to another file that has a name of its own (another
    movie's sum; this movie corrected again has new sums, and its old average is held by the
    link alone)."""
    link = motion.motion_path.parent / "average" / f"{warp_name(motion)}.mrc"
    try:
        return not _own_average(motion) and link.stat().st_nlink > 1
    except OSError:
        return False


def warp_layout_in_place(motion: MovieMotion) -> bool:
    """Whether the movie's Warp layout is as :func:`warp_layout` makes it: its ``.xml`` and
    ``average/<name>.mrc``, a link to its own average, and no layout of it by its output stem
    (an earlier release's); or none can be (its average's name is the sum of a movie of a
    watched folder named ``average``: refused, and said, when it was first made)."""
    folder, name = motion.motion_path.parent, warp_name(motion)
    if (folder / "average" / f"{name}.motion.json").exists():
        return True
    stem = output_stem(motion.motion_path)
    return ((folder / f"{name}.xml").exists() and _own_links(motion, name)
            and (stem == name or not (folder / f"{stem}.xml").exists()))


def _own_links(motion: MovieMotion, root: str) -> bool:
    """Whether the average and the even and odd halves of the layout under ``root`` are links
    to the movie's own images now (a kill during a redo left old halves behind a new
    average)."""
    for target, link in _links(motion, root):
        try:
            if target is not None and not os.path.samefile(link, target):
                return False
        except OSError:
            return False
    return True


def _links(motion: MovieMotion, root: str) -> list[tuple[str | None, Path]]:
    """(the movie's sum, its link) of a layout under the name ``root``: average, even, odd."""
    average = motion.motion_path.parent / "average"
    return [(_average(motion), average / f"{root}.mrc"),
            (motion.outputs.get("even"), average / "even" / f"{root}.mrc"),
            (motion.outputs.get("odd"), average / "odd" / f"{root}.mrc")]


def warp_remove_stem_layout(motion: MovieMotion) -> None:
    """Remove the movie's layouts by the names that are not its Warp name: its output stem
    (an earlier release's), or its whole file name where that is now too long to be one (a
    release before names over 229 bytes took the stem); only links to its own sums, and
    their ``.xml`` (an ``.xml`` name too long for a file: nothing is there)."""
    name = warp_name(motion)
    root = Path(str(motion.movie)).stem
    for other in dict.fromkeys((output_stem(motion.motion_path), root)):
        if other and other != name:
            with contextlib.suppress(OSError):
                _remove_own(_links(motion, other), motion.motion_path.parent / f"{other}.xml")


def warp_layout_displaced(motion: MovieMotion) -> Path | None:
    """The ``.xml`` of another movie's Warp layout whose average is now this movie's sum: a
    movie of a watched folder named ``average`` has its sum where the layout of the movie of
    its name in the folder above had its link (that movie was corrected first); None if none.
    Warp would read this sum as that movie's average."""
    folder = motion.motion_path.parent
    sum_path = motion.outputs.get("sum")
    if folder.name != "average" or sum_path is None:
        return None
    xml = folder.parent / f"{output_stem(motion.motion_path)}.xml"
    link = folder / f"{output_stem(motion.motion_path)}.mrc"
    try:
        return xml if xml.exists() and os.path.samefile(link, sum_path) else None
    except OSError:
        return None


def warp_layout(motion: MovieMotion) -> tuple[Path, ...]:
    """Make (or renew) the Warp layout of one movie; returns the paths made.

    Raises
    ------
    OSError
        The file system refuses hard links or the folder is not writable;
        ``FileExistsError`` where a name of the layout is a movie's sum (a watched sub-folder
        named ``average``, whose outputs are in ``OUT/average``).
    """
    from correction.write import atomic_write, text_bytes

    made = []
    warp_remove_stem_layout(motion)
    pairs = _links(motion, warp_name(motion))
    for _, link in pairs:
        if link.with_name(f"{link.stem}.motion.json").exists():
            raise FileExistsError(
                f"{link} is the sum of a movie of a watched folder named "
                f"{link.parent.name}: no Warp layout for {motion.movie}")
    for target, link in pairs:
        if target is not None and Path(target).exists():
            _link(Path(target), link)
            made.append(link)
    if made:
        xml = warp_xml_path(motion)
        payload = text_bytes(WARP_XML.format(  # a folder name not in UTF-8: its bytes on disk
            folder=xml_escape(str(Path(motion.movie).parent), {'"': "&quot;"})))
        atomic_write(xml, lambda fh: fh.write(payload))
        made.append(xml)
    return tuple(made)
