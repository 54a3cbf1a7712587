"""Gatan Digital Micrograph (.dm4/.dm3) reference images, read through ncempy.

K2/K3 gain references saved by SerialEM or GMS are often DM4. ncempy (openNCEM, maintained,
pure Python on numpy) parses the tag tree; it is imported here only when such a file is read,
so the rest of the library does not need it. It is the optional extra ``dm4`` (``pip install
-e '.[dm4]'`` in the checkout), because it pulls in matplotlib, h5py and hdf5plugin. Gatan
files start with a small RGB thumbnail, which ncempy skips.

Row order: a DM image stores its top row first, as a TIFF page does, and IMOD reads it upside
down (``libiimod/iilikemrc.c``, ``analyzeDM3``: ``info->yInverted = 1``), as it reads TIFF
strips: the image is returned in MRC row order (its first stored row last), so a DM4 gain fits a
movie as IMOD's ``dm2mrc`` copy of it does, the MRC that RELION and MotionCor2 are given
(:mod:`correction.io.tiff`, "Row order").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnreadableMovieError, UnsupportedFormatError

__all__ = ["read_dm_image", "DM4_EXTRA_NEEDED"]

#: what a DM4/DM3 read without ncempy says (an installation's fault, not the file's)
DM4_EXTRA_NEEDED = "needs the optional 'dm4' extra"

_UNIT_TO_A = {"nm": 10.0, "Å": 1.0, "A": 1.0, "\u00c5": 1.0, "µm": 1e4, "um": 1e4}


def read_dm_image(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read the (first non-thumbnail) 2-D image of a DM3/DM4 file.

    Returns
    -------
    image : ndarray, shape (ny, nx)
        In its stored dtype, native byte order, rows in MRC order (the first stored row last).
    pixel_size_A : float or None
        From the calibration when its unit is a length.

    Raises
    ------
    UnreadableMovieError
        Missing, cut or corrupt file.
    UnsupportedFormatError
        ncempy not installed, or not a 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableMovieError(path, "no such file")
    try:
        from ncempy.io import dm  # noqa: PLC0415 - optional, only for Gatan files
    except ImportError:
        raise UnsupportedFormatError(path, f"reading a Gatan DM4/DM3 file {DM4_EXTRA_NEEDED}: "
                                           "pip install -e '.[dm4]' in the checkout") from None
    try:
        with dm.fileDM(str(path), on_memory=True) as handle:
            dataset = handle.getDataset(0)
    except Exception as exc:  # noqa: BLE001 - ncempy raises IOError, AssertionError, IndexError...
        raise UnreadableMovieError(path, f"not a readable DM3/DM4 image "
                                         f"({type(exc).__name__}: {exc})") from None
    image = np.asarray(dataset["data"])
    if image.ndim != 2:
        raise UnsupportedFormatError(path, f"expected one 2-D image, DM file holds shape "
                                           f"{image.shape}")
    image = np.ascontiguousarray(image[::-1].astype(image.dtype.newbyteorder("="), copy=False))
    pixel = None
    sizes, units = dataset.get("pixelSize", []), dataset.get("pixelUnit", [])
    if len(sizes) >= 2 and len(units) >= 2:
        scale = _UNIT_TO_A.get(str(units[-1]).strip())
        value = float(str(np.float32(sizes[-1])))  # shortest decimal of the float32
        if scale is not None and value > 0:
            pixel = value * scale
    return image, pixel
