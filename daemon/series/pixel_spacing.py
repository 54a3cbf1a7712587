"""A tilt's pixel size against its mdoc's: a ``--pixel-size`` left from another magnification.

SerialEM writes ``PixelSpacing`` (Å) of the image it saved into each tilt's section, at its
``Binning``: the frames may be saved unbinned under an image binned by 2, 4 or 8 (a Falcon's
EER frames under a binned stack), at twice its resolution (super-resolution frames of a
counted image) or binned against it, so a movie's pixel size is the mdoc's times a power of
two (1/8 to 8); any other ratio (1 %) is another magnification (their steps are no power of
two): a pixel size given for the session's first target, still given at the next one, whose
TIFF frames carry none of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PIXEL_SPACING_TOLERANCE", "BINNING_RATIOS", "mdoc_pixel_size_warning"]

#: a movie's pixel size within this fraction of the mdoc's (or of a binning of it) agrees
PIXEL_SPACING_TOLERANCE = 0.01
#: movie pixel / mdoc PixelSpacing of frames saved as SerialEM saves them (binnings)
BINNING_RATIOS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def mdoc_pixel_size_warning(record: Mapping[str, Any]
                            ) -> tuple[tuple[float, float], str] | None:
    """``((used Å, mdoc Å), one line)`` when a corrected tilt's motion record has a movie pixel
    size (``movie_pixel_size.used_A``, on the grid decoded onto) that is no binning of its
    mdoc's ``PixelSpacing`` (``tilt.pixel_spacing_A``), else None."""
    tilt = record.get("tilt")
    pixel = record.get("movie_pixel_size")
    if not isinstance(tilt, Mapping) or not isinstance(pixel, Mapping):
        return None
    used, spacing = pixel.get("used_A"), tilt.get("pixel_spacing_A")
    if not isinstance(used, (int, float)) or not isinstance(spacing, (int, float)) \
            or used <= 0 or spacing <= 0:
        return None
    ratio = float(used) / float(spacing)
    if any(abs(ratio / r - 1.0) <= PIXEL_SPACING_TOLERANCE for r in BINNING_RATIOS):
        return None
    whose = ("the pixel size given (--pixel-size, TOML pixel_size)"
             if pixel.get("source") == "given" else "the movie file's pixel size")
    return ((round(float(used), 4), round(float(spacing), 4)),
            f"{whose}, {float(used):g} Å, is not the {float(spacing):g} Å of its mdoc "
            f"(PixelSpacing), nor a binning of it: another magnification? {float(used):g} Å "
            "is used in every output and the dose; check --pixel-size if the magnification "
            "changed")
