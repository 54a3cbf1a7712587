"""Text from file names made safe to print on a terminal."""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["printable"]

#: bidirectional controls: U+202E shows a name reordered
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


def printable(value: Any, *, keep_undecodable: bool = False) -> str:
    """``value`` as text a terminal shows as it is: control characters (an escape sequence in
    a file name would be run by the terminal: a window title set, a line erased) and
    bidirectional controls become U+FFFD; so do undecodable bytes (surrogate escapes) unless
    ``keep_undecodable``, for a writer that shows them as ``\\xNN``."""
    hidden = ("Cc",) if keep_undecodable else ("Cc", "Cs")
    return "".join("\ufffd" if c in _BIDI_CONTROLS or unicodedata.category(c) in hidden
                   else c for c in str(value))
