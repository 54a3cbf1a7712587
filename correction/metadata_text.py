"""Text of the metadata files written beside movies (SerialEM's mdocs, defect lists) as the
programs and copies of a Windows acquisition PC leave it.

SerialEM writes single-byte text; a script that rewrites an mdoc with Windows PowerShell 5.1
(``>``, ``Out-File``) writes UTF-16 with a byte-order mark, Notepad may add a UTF-8 one, and a
name with an accent in a Windows program's file comes in the code page cp1252. Read as UTF-8 with
replacement, a UTF-16 file became NULs between the letters (no section at all: the series' doses
and voltage taken as absent) and a cp1252 name matched no movie. :func:`decode_metadata_text`
reads each of them as written, and says which it was.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from dataclasses import dataclass

__all__ = ["DecodedText", "decode_metadata_text", "read_regular_file"]


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``; ``OSError`` when it is no regular file.

    Opened without blocking: a named pipe (FIFO) named like a metadata file (``x.mrc.mdoc``)
    blocked ``open`` until a writer came, which held the daemon (and ``correct``) for good,
    deaf to SIGTERM.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            return handle.read()
    finally:
        if fd >= 0:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class DecodedText:
    """``text`` of a file, with ``notes``: what in its bytes was not plain UTF-8 (an encoding
    told by a byte-order mark, lines read as cp1252, NUL bytes dropped)."""

    text: str
    notes: tuple[str, ...] = ()


def decode_metadata_text(data: bytes) -> DecodedText:
    """The text of a metadata file's bytes: UTF-16 or UTF-8 as its byte-order mark says (the
    mark dropped), else each line as UTF-8 or, where that fails, as Windows' cp1252; NUL bytes
    (a range of a copy never written) are dropped, and said."""
    notes = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        even = data[:len(data) - len(data) % 2]  # a file cut while written: a whole unit
        text = even.decode("utf-16", errors="replace")
        notes.append("UTF-16 (byte-order mark), not the single-byte text SerialEM writes")
    else:
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        lines = data.split(b"\n")
        decoded = []
        cp1252 = 0
        for line in lines:
            try:
                decoded.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(line.decode("cp1252", errors="replace"))
                cp1252 += 1
        text = "\n".join(decoded)
        if cp1252:
            notes.append("lines not UTF-8 read as Windows cp1252")  # no count: a growing
            # mdoc would say it again with each count
    if "\x00" in text:
        notes.append("NUL bytes dropped (a range of the file never written: a copy or a "
                     "share that lost it)")
        text = text.replace("\x00", "")
    return DecodedText(text, tuple(notes))
