"""Errors of the correction library: each names the file and what is wrong with it.

``str(error)`` is one line, ``"<file name>: <reason>"``, fit for a log line or a terminal.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CorrectionError",
    "UnreadableMovieError",
    "TruncatedMovieError",
    "UnsupportedFormatError",
    "PageChainLoopError",
    "GainReferenceError",
    "MissingPixelSizeError",
    "FrameSelectionError",
    "ParameterError",
    "ForeignOutputError",
    "OutputClashError",
]


class CorrectionError(ValueError):
    """A movie or reference cannot be corrected; carries the path and a one-line reason."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)

    def __reduce__(self) -> tuple:
        """Pickled with its path and reason, whatever the subclass's arguments (it crosses a
        process boundary: a worker's or an assembly job's error)."""
        return _rebuilt, (type(self), self.path, self.reason)


def _rebuilt(cls: type[CorrectionError], path: Path | None, reason: str) -> CorrectionError:
    """A :class:`CorrectionError` (or subclass) unpickled from its path and reason."""
    error = cls.__new__(cls)
    CorrectionError.__init__(error, path, reason)
    return error


class UnreadableMovieError(CorrectionError):
    """The file is missing, unreadable, or not a movie of a known format."""


class TruncatedMovieError(CorrectionError):
    """The file is shorter than its header says (still being written, or cut)."""


class UnsupportedFormatError(CorrectionError):
    """A valid file of a variant motionwatch does not read (mode, compression, layout)."""


class PageChainLoopError(UnsupportedFormatError):
    """A TIFF or EER whose chain of page directories links back to a page it had: no writer
    makes one, and no more bytes end it (not a movie)."""


class GainReferenceError(CorrectionError):
    """A gain, dark or defect reference is unreadable or does not fit the movie."""


class MissingPixelSizeError(CorrectionError):
    """Neither the command line nor the movie header gives a pixel size."""


class FrameSelectionError(CorrectionError):
    """The frames or pixels the settings select leave too little of the movie to correct
    (``--throw``/``--trunc``, ``--bin``, EER grouping): the settings' fault where they fit no
    movie of a session, the movie's where others fitted."""


class ParameterError(CorrectionError):
    """A parameter value is out of range (raised by the parameter dataclasses)."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


class ForeignOutputError(CorrectionError):
    """An output's name is taken by a file motionwatch did not write (a raw movie, when the
    output folder is a frames folder): it is never replaced. The path is that file's."""


class OutputClashError(CorrectionError):
    """The movie's outputs would take the names of another stem's in the output folder (``x``
    and ``x_DW`` share ``x_DW.mrc``: :func:`correction.stems.stems_sharing_an_output`), whose
    motion record is there: they are not replaced. The path is the movie's."""
