"""The titles a movie file carries: an MRC header's labels, a TIFF's first image description.

SerialEM's plugin titles each frame file it writes, e.g. ``SerialEMCCD: Dose frac. image,
scaled by 1.00  r/f 0`` (IMOD reads a TIFF's description as its labels). EER files carry XML
metadata, not titles: none. Reads the header only, never a frame.
"""

from __future__ import annotations

import struct
from pathlib import Path

import tifffile

__all__ = ["movie_titles"]

_MRC_LABELS_AT = 224  # 10 labels of 80 bytes; their count is the int32 at byte 220
_MRC_LABEL_BYTES = 80


def movie_titles(path: str | Path) -> tuple[str, ...]:
    """The titles of a movie: its MRC labels, or its TIFF's first page description split into
    lines (stripped, empty ones dropped); ``()`` for EER files and files without titles.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    from . import detect_format  # noqa: PLC0415 - the package imports this module's siblings

    path = Path(path)
    kind = detect_format(path)
    if kind == "tiff":
        with tifffile.TiffFile(path) as tif:
            description = tif.pages[0].tags.valueof(270) if len(tif.pages) else None
        text = description if isinstance(description, str) else ""
        return tuple(line.strip() for line in text.split("\n") if line.strip())
    if kind != "mrc":
        return ()
    with open(path, "rb") as handle:
        header = handle.read(1024)
    if len(header) < 1024:
        return ()
    count = next(n for n in (struct.unpack("<i", header[220:224])[0],
                             struct.unpack(">i", header[220:224])[0], 0) if 0 <= n <= 10)
    labels = (header[_MRC_LABELS_AT + i * _MRC_LABEL_BYTES:
                     _MRC_LABELS_AT + (i + 1) * _MRC_LABEL_BYTES] for i in range(count))
    return tuple(text for text in (label.decode("latin-1").strip(" \x00") for label in labels)
                 if text)
