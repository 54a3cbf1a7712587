"""motionwatch's pure correction library: read, gain-correct, align, dose-weight, sum, write.

Imports numpy, scipy, mrcfile and tifffile (+ imagecodecs) only. Conventions (axis order, shift
sign, units) are stated once in :mod:`correction.conventions`.

The entry points (the README's "From Python" shows them at work)::

    correct_movie(movie, out_dir, params)   # read, correct and write one movie's outputs
    prepare_movie(movie, out_dir, params)   # the same up to the writing (.write() writes)
    correct_frames(frames, pixel_size_A=..., params=...)   # an array in memory, nothing written
    read_movie(path)                        # the frames and header facts of a movie file
    load_gain_reference(GainParams(...))    # the references, loaded once for many movies

The parameter dataclasses (:class:`CorrectionParams` and its parts) refuse values out of range
or of the wrong kind with a :class:`ParameterError`; every error of a movie or reference is a
:class:`CorrectionError` whose message is one line naming the file. ``import correction`` loads
numpy only; the entry points load the rest when first used.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CorrectionError,
    ForeignOutputError,
    GainReferenceError,
    MissingPixelSizeError,
    OutputClashError,
    ParameterError,
    TruncatedMovieError,
    UnreadableMovieError,
    UnsupportedFormatError,
)
from .movie import Movie
from .params import AlignParams, CorrectionParams, DoseParams, GainParams, ReadParams

#: entry points loaded when first used (they import scipy, mrcfile, tifffile): name -> module
_LAZY = {"correct_movie": "pipeline", "prepare_movie": "pipeline", "correct_frames": "pipeline",
         "CorrectionResult": "pipeline", "PreparedMovie": "pipeline", "read_movie": "io",
         "load_gain_reference": "gain", "GainReference": "gain"}

__all__ = [
    "AlignParams",
    "CorrectionError",
    "CorrectionParams",
    "DoseParams",
    "ForeignOutputError",
    "GainParams",
    "GainReferenceError",
    "MissingPixelSizeError",
    "Movie",
    "OutputClashError",
    "ParameterError",
    "ReadParams",
    "TruncatedMovieError",
    "UnreadableMovieError",
    "UnsupportedFormatError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """The entry points of :data:`_LAZY`, imported on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
