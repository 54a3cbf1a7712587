"""A movie that is not valid at first sight and is mended later, its size and mtime unchanged.

Imported by name (``from movie_damage import spoil_mrc_header``): ``tests/conftest.py`` puts
this folder on ``sys.path``. The mend keeps the file's mtime, as a restore with ``cp -p`` or
``rsync -t`` does, so the mended file is the same version (path, size, mtime) as the spoiled one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["spoil_mrc_header", "mend_mrc_header"]

_MODE_OFFSET = 12  # the MRC header's MODE word
_BAD_MODE = 99


def _keep_times(path: Path, write: bytes, offset: int) -> None:
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(write)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def spoil_mrc_header(path: Path) -> bytes:
    """Give an MRC movie a mode no reader knows (validation: "not a movie"); returns the
    original mode word, for :func:`mend_mrc_header`."""
    with open(path, "rb") as fh:
        fh.seek(_MODE_OFFSET)
        original = fh.read(4)
    _keep_times(path, _BAD_MODE.to_bytes(4, "little"), _MODE_OFFSET)
    return original


def mend_mrc_header(path: Path, original: bytes) -> None:
    """Put the mode word back (size and mtime unchanged)."""
    _keep_times(path, original, _MODE_OFFSET)
