"""Warp/WarpTools frame-series layout beside motionwatch's outputs.

WarpTools' ``ts_import`` (warpem/warp ``WarpTools/Commands/Tiltseries/ImportTiltseries.cs``)
lists every ``*.xml`` in the ``--frameseries`` folder, makes a movie of each (root name = the
file name without extension) and requires that movie's aligned average
``average/<root>.mrc``; it matches mdoc sections to movies by the ``SubFramePath`` file name.
So for each corrected movie with output stem ``S`` (the movie's root name; ``x_tif`` for an
``x.tif`` beside an ``x.mrc``, whose layout is then ``x``'s: never another movie's sums under
a name) this module makes, in the movie's output folder:

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

Warp reads no dose from the mdoc: ``ImportTiltseries`` sorts the tilts by ``DateTime`` and gives
the i-th (from 0) the pre-exposure ``i x --tilt_exposure``, so give ``--tilt_exposure`` the
series' mean dose per tilt (the mdoc's ``ExposureDose`` summed, divided by the tilt count);
RELION's files carry the exact pre-exposures.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

from daemon.handoff.relion import MovieMotion, output_stem

__all__ = ["WARP_XML", "warp_layout", "warp_xml_path"]

WARP_XML = '<?xml version="1.0" encoding="utf-8"?>\n<Movie DataDirectory="{folder}" />\n'


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.link(target, tmp)
    os.replace(tmp, link)


def warp_xml_path(motion: MovieMotion) -> Path:
    """``<root>.xml`` beside the movie's outputs (written last by :func:`warp_layout`)."""
    return motion.motion_path.with_name(f"{output_stem(motion.motion_path)}.xml")


def warp_layout(motion: MovieMotion) -> tuple[Path, ...]:
    """Make (or renew) the Warp layout of one movie; returns the paths made.

    Raises
    ------
    OSError
        The file system refuses hard links or the folder is not writable.
    """
    from correction.write import atomic_write, text_bytes

    folder = motion.motion_path.parent
    root = output_stem(motion.motion_path)
    made = []
    average = motion.outputs.get("dw") or motion.outputs.get("sum")
    pairs = [(average, folder / "average" / f"{root}.mrc"),
             (motion.outputs.get("even"), folder / "average" / "even" / f"{root}.mrc"),
             (motion.outputs.get("odd"), folder / "average" / "odd" / f"{root}.mrc")]
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
