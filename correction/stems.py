"""Output stems: the name every output of a movie is made from (``<stem>.mrc``, ``<stem>_DW.mrc``
...), its name without the last suffix, as MotionCor2 and RELION name outputs, shortened when
too long to name files."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

__all__ = ["MAX_STEM_BYTES", "OUTPUT_TAILS", "fit_output_stem", "folder_file_stem",
           "stem_recorded_for_another", "stems_sharing_an_output"]

#: Longest output stem (bytes): every file named from it, with the longest suffix
#: (``.spectrum.png``) and as a writer's temporary (``.<name>.tmp-<pid>``, a pid of up to 7
#: digits), stays within the 255 bytes a file name may have on Linux file systems:
#: 255 - 1 - 13 - 5 - 7. Every stem that fitted keeps its name. (A second thread of one process
#: writing the same name at once adds ``.<k>`` to its temporary; at this length that write
#: fails with ENAMETOOLONG, named, rather than mixing the two sets.)
MAX_STEM_BYTES = 229
_KEPT_BYTES = MAX_STEM_BYTES - 10  # then "~" and 8 hex digits


def fit_output_stem(stem: str) -> str:
    """``stem``, or for a name too long to name the outputs (:data:`MAX_STEM_BYTES`), its first
    219 bytes (whole characters), ``~`` and 8 hex digits of its SHA-1: distinct names stay
    distinct. The motion record names the movie either way."""
    encoded = os.fsencode(stem)
    if len(encoded) <= MAX_STEM_BYTES:
        return stem
    head = stem[:_KEPT_BYTES]
    while len(os.fsencode(head)) > _KEPT_BYTES:
        head = head[:-1]
    return f"{head}~{hashlib.sha1(encoded).hexdigest()[:8]}"


#: What follows the stem in the name of each file of a movie's outputs: the images and motion
#: record (:func:`correction.pipeline.output_names`), RELION's motion STAR, the quick-look
#: pictures (:func:`correction.quicklook.quicklook_names`).
OUTPUT_TAILS: tuple[str, ...] = (".mrc", "_DW.mrc", "_EVN.mrc", "_ODD.mrc", ".motion.json",
                                 ".star", ".thumb.png", ".spectrum.png", ".drift.png")


def stems_sharing_an_output(stem: str) -> frozenset[str]:
    """The stems whose outputs and ``stem``'s share a file name, ``stem`` included: ``x`` and
    ``x_DW`` share ``x_DW.mrc`` (the dose-weighted sum of the one, the sum of the other), so two
    movies named so must not both get their plain stems in one folder."""
    shared = {stem}
    for tail in OUTPUT_TAILS:
        name = stem + tail
        for other_tail in OUTPUT_TAILS:
            if other_tail != tail and name.endswith(other_tail):
                other = name[:-len(other_tail)]
                if other:
                    shared.add(other)
    return frozenset(shared)


#: Stems of the files motionwatch writes once per output folder, whose names a movie's outputs
#: would take: the RELION gain (``motionwatch_gain.mrc``, ``motionwatch_gain_<16 hex>.mrc``,
#: :func:`correction.gain_export.relion_gain_names`) and the folder's STAR files
#: (``corrected_micrographs.star``, ``corrected_tilt_series.star``).
_FOLDER_FILE_STEMS = re.compile(
    r"motionwatch_gain(_[0-9a-f]{16})?|corrected_micrographs|corrected_tilt_series")


def folder_file_stem(stem: str) -> bool:
    """Whether a movie's outputs under ``stem`` would replace one of the output folder's own
    files (a movie named ``motionwatch_gain.mrc`` wrote its sum over the RELION gain that every
    motion STAR names): such a movie gets another stem, as ``x_DW`` does."""
    return _FOLDER_FILE_STEMS.fullmatch(stem) is not None


def stem_recorded_for_another(out_dir: str | Path, stem: str, movie: str | Path) -> Path | None:
    """The other movie whose outputs are recorded under ``stem`` in ``out_dir`` (its motion
    record ``<stem>.motion.json`` names a movie that is still there and is not ``movie``:
    ``Grid1/TS_01_001.mrc`` beside ``Grid2/TS_01_001.mrc``), or None (no readable record, one
    of ``movie``, or of a movie no longer there: a session moved to an archive)."""
    try:
        recorded = Path(json.loads((Path(out_dir) / f"{stem}.motion.json").read_text())["movie"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        return None if os.path.samefile(recorded, movie) else recorded
    except OSError:  # either is gone: no other movie's outputs to keep
        return None
