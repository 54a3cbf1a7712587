"""Output stems: the name every output of a movie is made from (``<stem>.mrc``, ``<stem>_DW.mrc``
...), its name without the last suffix, as MotionCor2 and RELION name outputs, shortened when
too long to name files."""

from __future__ import annotations

import hashlib
import os

__all__ = ["MAX_STEM_BYTES", "fit_output_stem"]

#: Longest output stem (bytes): every file named from it, with the longest suffix
#: (``.spectrum.png``) and as a writer's temporary (``.<name>.tmp-<pid>``, a pid of up to 7
#: digits), stays within the 255 bytes a file name may have on Linux file systems:
#: 255 - 1 - 13 - 5 - 7. Every stem that fitted keeps its name.
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
