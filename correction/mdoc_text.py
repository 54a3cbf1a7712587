"""SerialEM mdoc text: the one writer of ``.mdoc`` files in motionwatch.

An mdoc (SerialEM's "autodoc") is plain text: global ``Key = value`` lines, ``[T = title]`` lines,
then one section per image, each opened by a ``[ZValue = i]`` header (or another bracket name,
``[FrameSet = 0]`` for a frame mdoc) and followed by its ``Key = value`` lines and a blank line.
:func:`format_mdoc` writes that layout from plain ``(key, value)`` pairs, formatting values the way
SerialEM does (:func:`format_value`): integers as integers, other numbers with C's ``%g`` (six
significant digits: ``0.000999877``, ``3.00113``), sequences space-separated, ``NaN`` for a
missing number, and ``DateTime`` as ``dd-Mon-yyyy  HH:MM:SS`` (:func:`serialem_datetime`; SerialEM
writes two spaces there, and readers such as WarpTools' ``ts_import`` parse exactly that).

Readers of the result: :func:`daemon.series.mdoc.read_mdoc`, AreTomo3 (``CReadMdoc.cpp``:
``TiltAngle``, ``ExposureDose``, ``SubFramePath``, ``ExposureTime`` and ``DateTime``, each once
per tilt, or it skips the file), RELION 5's tilt-series
import (via mdocfile) and WarpTools (``ts_import``: ``[ZValue``, ``TiltAngle``, ``SubFramePath``,
``DateTime``, the ``Tilt axis angle = x,`` title).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Sequence
from typing import Union

__all__ = ["MdocValue", "format_value", "format_mdoc", "serialem_datetime"]

#: A value of one ``Key = value`` line; None omits the line.
MdocValue = Union[str, int, float, bool, Sequence[Union[int, float]], _dt.datetime, None]

_DATETIME_FORMAT = "%d-%b-%Y  %H:%M:%S"


def serialem_datetime(value: str | _dt.datetime | None) -> str | None:
    """``DateTime`` text of an ISO time (or a datetime), e.g. ``17-May-2024  10:03:00``;
    None when ``value`` is None or not an ISO time."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return value.strftime(_DATETIME_FORMAT)


def format_value(value: MdocValue) -> str:
    """One value as SerialEM writes it.

    Integers (and bools, as 0/1) as integers; floats with ``%g`` (``NaN`` when not finite, as
    SerialEM writes an unknown ``CameraLength``); strings as they are; datetimes by
    :func:`serialem_datetime`; sequences space-separated.

    Raises
    ------
    ValueError
        A string with a line break (it would start a new line of the file).
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else "NaN"
    if isinstance(value, _dt.datetime):
        return value.strftime(_DATETIME_FORMAT)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"mdoc value contains a line break: {value!r}")
        return value
    if isinstance(value, Iterable):
        return " ".join(format_value(v) for v in value)
    return format_value(float(value))  # numpy scalars and other numbers


def _key(key: str) -> str:
    if not key or "=" in key or "\n" in key or key != key.strip() or key.startswith("["):
        raise ValueError(f"bad mdoc key {key!r}")
    return key


def _lines(items: Iterable[tuple[str, MdocValue]]) -> list[str]:
    out = []
    for key, value in items:
        if value is None:
            continue
        text = format_value(value)
        out.append(f"{_key(key)} = {text}" if text else f"{_key(key)} =")
    return out


def format_mdoc(header_items: Iterable[tuple[str, MdocValue]],
                sections: Iterable[Iterable[tuple[str, MdocValue]]], *,
                titles: Iterable[str] = (), section_key: str = "ZValue",
                first_index: int = 0) -> str:
    """The text of an mdoc file.

    Parameters
    ----------
    header_items : iterable of (str, value)
        Global ``Key = value`` lines, in order (e.g. ``PixelSpacing``, ``Voltage``,
        ``ImageFile``, ``ImageSize``, ``DataMode``).
    sections : iterable of iterable of (str, value)
        One entry per section, in file order; section ``k`` gets the header
        ``[<section_key> = first_index + k]``. A None value omits its line.
    titles : iterable of str
        ``[T = title]`` lines written after the global lines (e.g.
        ``"    Tilt axis angle = 85.3, binning = 1"``).
    section_key : str
        Bracket name of the sections (``ZValue``; ``FrameSet`` for a frame mdoc).
    first_index : int
        Number of the first section.

    Returns
    -------
    str
        The file's text, ending in a blank line after the last section.

    Raises
    ------
    ValueError
        A key with ``=``, a line break or leading/trailing blanks; a value with a line break.
    """
    parts = []
    head = _lines(header_items)
    if head:
        parts.append("\n".join(head) + "\n\n")
    for title in titles:
        if "\n" in title or "]" in title:
            raise ValueError(f"bad mdoc title {title!r}")
        parts.append(f"[T = {title}]\n\n")
    for k, items in enumerate(sections):
        body = _lines(items)
        parts.append(f"[{_key(section_key)} = {first_index + k}]\n"
                     + "".join(line + "\n" for line in body) + "\n")
    return "".join(parts)
