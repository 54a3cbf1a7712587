"""A movie's own gain reference, as SerialEM names it in the movie's frame mdoc.

SerialEM saving K2/K3 frames unnormalized (counts, not gain-corrected) copies the camera's gain
reference into the frames folder, ``CountRef_<first movie>.dm4`` (``SuperRef_`` in
super-resolution), a new copy each time the reference changes, and names it in each movie's
frame mdoc (``<movie>.mdoc``, section ``[FrameSet = 0]``): ``GainReference = CountRef_....dm4``
(SerialEM's help, "Frame File Options"; SerialEMCCD ``CopyK2ReferenceIfNeeded``). For a Falcon 4
saving EER it names the ``*_EER_GainReference.gain`` it copied there. The name is bare; the file
lies in the movie's folder, or in its parent when SerialEM files movies into sub-folders.

A session's gain reference is thus found without configuring it, and a movie always gets the one
it was recorded with. Beside it, SerialEM saves the camera's defect list for K2/K3 frames
(``defects_<frames name>.txt``, named ``DefectFile``; a K3 has one only when SerialEM's
properties define defects), in the frames' orientation (:mod:`correction.camera_defects`); it
goes with the gain unless ``--defects`` is given. Used only when no gain is configured
(``--gain`` wins, as MotionCor2's ``-Gain``) and ``frame_mdoc_gain`` is on.

Orientation (:func:`frame_gain_turn`): SerialEM copies the reference byte for byte, never turned,
while the frames are written turned by the camera's rotation/flip, unless "skip rotation/flip" is
set; the frames' title says which (``r/f N``). EER frames are never turned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tifffile
from correction.io.titles import movie_titles
from correction.metadata_text import decode_metadata_text, read_regular_file

from daemon.events import MovieGain

__all__ = ["GainLookup", "TURN_OF_SERIALEM_CODE", "gain_reference_name", "defect_file_name",
           "find_frame_mdoc_gain", "frame_gain_turn", "relocated", "defect_list_not_applied",
           "why_no_frame_mdoc_gain", "frame_mdoc_defects_notes", "UnappliedDefectLists"]

_FRAMESET = re.compile(r"^\s*\[\s*FrameSet\s*=\s*0\s*\]", re.MULTILINE | re.IGNORECASE)
_SECTION = re.compile(r"^\s*\[", re.MULTILINE)
#: keys SerialEM writes after GainReference in the section: a section holding one is written
#: past the gain's name
_LATER_KEY = re.compile(r"^\s*(NumSubFrames|DateTime)\s*=", re.MULTILINE)
#: folders searched for the named file: the movie's, then up to this many above it
_PARENTS_SEARCHED = 1
#: SerialEMCCD's title of the frame files it writes ends ``r/f N``: the code of the rotation and
#: flip it applied to the frames (0 with "skip rotation/flip")
_ROTATION_FLIP = re.compile(r"SerialEMCCD:.*\br/f\s+(\d+)")
#: SerialEM's rotation/flip code N (SerialEMCCD ``RotateFlip``, IMOD ``rotateFlipImage``, on
#: arrays whose row 0 is the top: N x 90 degrees counter-clockwise, + 4 mirroring x first),
#: applied to the raw reference, gives the frames as stored. Both are read here with their rows
#: reversed (a DM4 as IMOD reads it, a TIFF as IMOD, MotionCor2 and RELION read it; an MRC
#: frame the plugin stored reversed): the turn onto the frames is N seen through that reversal,
#: as MotionCor2's -RotGain K (clockwise quarter turns) then -FlipGain.
TURN_OF_SERIALEM_CODE: dict[int, tuple[int, str]] = {
    0: (0, "none"), 1: (1, "none"), 2: (2, "none"), 3: (3, "none"),
    4: (0, "leftright"), 5: (1, "updown"), 6: (0, "updown"), 7: (1, "leftright")}


@dataclass(frozen=True, slots=True)
class GainLookup:
    """What a movie's frame mdoc says of its gain reference.

    Attributes
    ----------
    gain : MovieGain or None
        The named file, found, and its turn onto the frames; None: no gain named (or no frame
        mdoc), or named and not found.
    named : str or None
        The file name the frame mdoc gives (``GainReference``).
    missing_reason : str or None
        Named but not found (one line naming the file and the folders searched).
    defects_missing : str or None
        The gain found, and the defect list named beside it not found (one line, as
        ``missing_reason``), or its name perhaps not written yet; ``gain`` then has no defect
        list.
    defects_named : str or None
        The file name the frame mdoc gives as ``DefectFile``.
    turn : str or None
        Where the gain's turn onto the frames comes from (:func:`frame_gain_turn`).
    has_mdoc : bool
        The movie has a frame mdoc, its ``[FrameSet = 0]`` section written (past the place of
        ``GainReference``).
    """

    gain: MovieGain | None = None
    named: str | None = None
    missing_reason: str | None = None
    turn: str | None = None
    has_mdoc: bool = False
    defects_missing: str | None = None
    defects_named: str | None = None


def gain_reference_name(mdoc_text: str) -> str | None:
    r"""The file name a frame mdoc's ``[FrameSet = 0]`` section gives as ``GainReference``
    (a Windows or POSIX path reduced to its last part), or None."""
    return _frameset_file_name(mdoc_text, "GainReference")


def defect_file_name(mdoc_text: str) -> str | None:
    """The file name the ``[FrameSet = 0]`` section gives as ``DefectFile``, or None."""
    return _frameset_file_name(mdoc_text, "DefectFile")


def _frameset_file_name(mdoc_text: str, key: str) -> str | None:
    """The last part of the path ``key`` holds in the ``[FrameSet = 0]`` section, or None."""
    start = _FRAMESET.search(mdoc_text)
    if start is None:
        return None
    body = mdoc_text[start.end():]
    following = _SECTION.search(body)
    pattern = re.compile(rf"^\s*{key}\s*=[ \t]*(\S[^\r\n]*?)\s*$", re.MULTILINE)
    match = pattern.search(body[:following.start()] if following else body)
    if match is None:
        return None
    name = re.split(r"[\\/]", match.group(1).strip())[-1].strip()
    return name or None


def _written(mdoc_text: str) -> bool:
    """The ``[FrameSet = 0]`` section is there and written past where SerialEM puts
    ``GainReference`` (its first key)."""
    start = _FRAMESET.search(mdoc_text)
    return start is not None and _LATER_KEY.search(mdoc_text, start.end()) is not None


def find_frame_mdoc_gain(movie: Path) -> GainLookup:
    """The gain reference ``<movie>.mdoc`` names, looked for in the movie's folder and its
    parent. An unreadable or absent frame mdoc names none."""
    try:
        text = decode_metadata_text(read_regular_file(movie.with_name(movie.name + ".mdoc"))).text
    except OSError:
        return GainLookup()
    name = gain_reference_name(text)
    if name is None:  # a frame mdoc still being written is not one yet
        return GainLookup(has_mdoc=_written(text), defects_named=defect_file_name(text))
    folders = [movie.parent, *list(movie.parent.parents)[:_PARENTS_SEARCHED]]
    gain = _found(name, folders)
    if gain is None:
        return GainLookup(None, name, _not_found("gain reference", name, folders),
                          has_mdoc=True)
    turns, flip, how = frame_gain_turn(movie, gain)
    defects_name, defects, defects_missing = defect_file_name(text), None, None
    if defects_name is not None:
        defects = _found(defects_name, folders)
        if defects is None:
            defects_missing = _not_found("camera defect list", defects_name, folders)
        elif _empty(defects):  # SerialEM writes none empty: a copy under way
            defects_missing = (f"its frame mdoc names the camera defect list {defects_name}, "
                               f"empty in {defects.parent}")
            defects = None
    elif not _written(text):  # the defect list's name may follow the gain's
        defects_missing = "its frame mdoc is written no further than its gain reference yet"
    return GainLookup(MovieGain(str(gain.absolute()), turns, flip,
                                None if defects is None else str(defects.absolute())),
                      name, turn=how, has_mdoc=True, defects_missing=defects_missing,
                      defects_named=defects_name)


def _found(name: str, folders: list[Path]) -> Path | None:
    """The first ``folder / name`` that is a file, or None."""
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def _empty(path: Path) -> bool:
    """Whether ``path`` holds nothing (gone since it was found: nothing either)."""
    try:
        return path.stat().st_size == 0
    except OSError:
        return True


def _not_found(what: str, name: str, folders: list[Path]) -> str:
    where = " or ".join(str(f) for f in folders)
    return f"its frame mdoc names the {what} {name}, not found in {where}"


def frame_mdoc_defects_notes(lookup: GainLookup, params: Any) -> dict[str, str]:
    """What the motion record's ``frame_mdoc_gain`` says of a named defect list that is not
    applied with the gain: ``defects_not_applied`` (``--defects`` is given) or
    ``defects_missing`` (the reason); empty otherwise."""
    if lookup.defects_named is None:
        return {}
    if params.gain.defects_path is not None:
        return {"defects_not_applied": f"{lookup.defects_named}: --defects is given"}
    return {"defects_missing": lookup.defects_missing} if lookup.defects_missing else {}


def defect_list_not_applied(movie: Path, why: str) -> str | None:
    """One line when ``<movie>.mdoc`` names a camera defect list that is not applied because
    no frame mdoc gain is (``why``: ``--gain`` given ...); None when it names none."""
    try:
        text = decode_metadata_text(read_regular_file(movie.with_name(movie.name + ".mdoc"))).text
    except OSError:
        return None
    name = defect_file_name(text)
    if name is None:
        return None
    folders = [movie.parent, *list(movie.parent.parents)[:_PARENTS_SEARCHED]]
    found = _found(name, folders)
    where = (f"give --defects {found} to apply it" if found is not None else
             f"not found in {' or '.join(str(f) for f in folders)} either")
    return (f"its frame mdoc names the camera defect list {name}, not applied: it goes with "
            f"the gain reference a frame mdoc names, and {why}; {where}")


def why_no_frame_mdoc_gain(params: Any, frame_mdoc_gain: bool = True) -> str | None:
    """Why no movie gets the gain its frame mdoc names under these settings (``params``: a
    ``correction.params.CorrectionParams``), or None when they may."""
    if params.gain.gain_path is not None:
        return "--gain is given"
    if params.gain.dark_path is not None:
        return "--dark is given"
    return None if frame_mdoc_gain else "--no-frame-mdoc-gain is given"


class UnappliedDefectLists:
    """The warnings that frame mdocs name a camera defect list that is not applied
    (:func:`defect_list_not_applied`): one per folder, none when ``--defects`` is given
    (``configured``: that list is the movies' own)."""

    def __init__(self, *, configured: bool) -> None:
        self.configured = configured
        self._told: set[Path] = set()  # folders told

    def line(self, movie: Path, why: str) -> str | None:
        """The warning for ``movie``'s folder the first time it has one; None otherwise."""
        if self.configured or movie.parent in self._told:
            return None
        line = defect_list_not_applied(movie, why)
        if line is not None:
            self._told.add(movie.parent)
        return line


def relocated(gain: MovieGain, movie: Path) -> MovieGain:
    """``gain`` (recorded for ``movie``) where it lies now: when its files are gone with their
    folder (renamed or moved), the ones the frame mdoc names found again, if they are the same
    file names and turn (:meth:`MovieGain.identity`; a gain recorded without a defect list, as
    with ``--defects`` given, stays without); else ``gain`` as it was."""
    if all(Path(f).exists() for f in gain.files()):
        return gain
    found = find_frame_mdoc_gain(movie).gain
    if found is not None and gain.defects is None:  # corrected without the frame mdoc's list
        found = replace(found, defects=None)
    return found if found is not None and found.identity() == gain.identity() else gain


def frame_gain_turn(movie: Path, gain: Path) -> tuple[int, str, str]:
    """``(rotate_quarter_turns, flip, how)`` fitting SerialEM's copy of the gain reference
    ``gain`` onto ``movie``'s frames (MotionCor2's ``-RotGain``, ``-FlipGain``); ``how`` says
    where the turn comes from.

    Only a DM4/DM3 reference beside K2/K3 frames is turned: by the code ``N`` of ``r/f N`` in
    the frames' title (:data:`TURN_OF_SERIALEM_CODE`). An EER movie's ``.gain`` fits as it is;
    frames without that title are taken as not turned (``N = 0``)."""
    if gain.suffix.lower() not in (".dm4", ".dm3"):
        return 0, "none", "as written (not a DM reference)"
    try:
        titles = movie_titles(movie)
    except (OSError, ValueError, tifffile.TiffFileError):  # unreadable: the reader will say
        titles = ()
    for title in titles:
        match = _ROTATION_FLIP.search(title)
        if match and int(match.group(1)) in TURN_OF_SERIALEM_CODE:
            code = int(match.group(1))
            return (*TURN_OF_SERIALEM_CODE[code], f"r/f {code} in the frames' title")
    return 0, "none", "no SerialEMCCD r/f in the frames' title: taken as 0"
