"""motionwatch's pure correction library: read, gain-correct, align, dose-weight, sum, write.

Imports numpy, scipy, mrcfile and tifffile (+ imagecodecs) only. Conventions (axis order, shift
sign, units) are stated once in :mod:`correction.conventions`.
"""

from .errors import (
    CorrectionError,
    GainReferenceError,
    MissingPixelSizeError,
    ParameterError,
    TruncatedMovieError,
    UnreadableMovieError,
    UnsupportedFormatError,
)
from .movie import Movie
from .params import AlignParams, CorrectionParams, DoseParams, GainParams, ReadParams

__all__ = [
    "AlignParams",
    "CorrectionError",
    "CorrectionParams",
    "DoseParams",
    "GainParams",
    "GainReferenceError",
    "MissingPixelSizeError",
    "Movie",
    "ParameterError",
    "ReadParams",
    "TruncatedMovieError",
    "UnreadableMovieError",
    "UnsupportedFormatError",
]
