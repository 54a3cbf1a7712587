"""A small fingerprint of a movie file's content, to tell a renamed file from another file.

An inode number, size and mtime are not proof that a file is the one recorded: a deleted
movie's inode is reused at once by most file systems, one camera writes movies of one size,
and coarse timestamps (FAT/exFAT 2 s, HFS+ or ext3 1 s) give two movies the same mtime. The
first and last 64 KiB of a movie (its header, its first frames, its last frames and any
trailing metadata) differ between two acquisitions, and reading them is cheap.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["content_fingerprint"]

_CHUNK = 64 * 1024


def content_fingerprint(path: Path | str, *, chunk: int = _CHUNK) -> str | None:
    """A hash of the file's size and its first and last ``chunk`` bytes; None if it cannot
    be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest.update(size.to_bytes(8, "little", signed=False))
            digest.update(f.read(chunk))
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                digest.update(f.read(chunk))
    except (OSError, OverflowError):
        return None
    return digest.hexdigest()
