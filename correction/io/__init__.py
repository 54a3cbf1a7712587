"""Readers for detector movies and 2-D references, dispatched by file suffix and magic bytes.

* MRC (``.mrc``, ``.mrcs``, ``.st``): modes 0, 1, 2, 6, 12 memory-mapped; 4-bit mode 101.
* TIFF (``.tif``, ``.tiff``): one frame per page, uncompressed or LZW (K2/K3); SerialEM's
  4-bit super-resolution pages (two counts per byte, half width) unpacked.
* EER (``.eer``, or a TIFF whose pages use compression 65000-65002): raw frames grouped into
  fractions while decoding (see :mod:`correction.io.eer`).

Frames keep their stored dtype; nothing here converts to float or resamples. Throwing away
frames (``ReadParams.throw_frames``/``trunc_frames``) and Fourier binning
(``ReadParams.bin_factor``) are left to the pipeline.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from ..errors import (CorrectionError, ParameterError, UnreadableMovieError,
                      UnsupportedFormatError)
from ..movie import Movie
from ..params import ReadParams
from .complete import Completeness, check_complete

__all__ = ["read_movie", "read_image", "detect_format", "check_complete", "Completeness"]

_MRC_SUFFIXES = {".mrc", ".mrcs", ".st", ".map", ".ali", ".rec"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".gain"}
_EER_SUFFIXES = {".eer", ".ecc"}
_DM_SUFFIXES = {".dm4", ".dm3"}
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def detect_format(path: str | Path) -> str:
    """Say which reader a file needs: ``"mrc"``, ``"tiff"``, ``"eer"`` or ``"dm"``.

    The magic bytes decide where they are clear (a TIFF signature; ``MAP `` at byte 208 of an
    MRC2014 header); otherwise the suffix. A TIFF whose first page uses an EER compression is
    ``"eer"`` whatever its suffix.

    Raises
    ------
    UnreadableMovieError
        Missing or unreadable file, or a format that is neither.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not path.is_dir():
            # a FIFO would block the open for good; a device or socket is no movie either
            raise UnreadableMovieError(path, "not a regular file (a FIFO, device or socket)")
        with open(path, "rb") as fh:
            head = fh.read(224)
    except FileNotFoundError:
        raise UnreadableMovieError(path, "no such file") from None
    except IsADirectoryError:
        raise UnreadableMovieError(path, "is a directory, not a file") from None
    except OSError as exc:
        raise UnreadableMovieError(path, f"cannot open: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if head[:4] in _TIFF_MAGICS:
        if suffix in _EER_SUFFIXES:
            return "eer"
        from .eer import is_eer  # noqa: PLC0415 - cheap, but keeps the dispatch readable

        return "eer" if is_eer(path) else "tiff"
    if head[208:212] == b"MAP " or suffix in _MRC_SUFFIXES:
        return "mrc"
    if suffix in _DM_SUFFIXES:
        return "dm"
    if len(head) == 0:
        raise UnreadableMovieError(path, "file is empty")
    if suffix in _TIFF_SUFFIXES or suffix in _EER_SUFFIXES:
        raise UnreadableMovieError(path, f"not a TIFF: file starts with {head[:4]!r}")
    raise UnreadableMovieError(path, f"unknown movie format (suffix {suffix or 'none'!r}, "
                                     "not MRC, TIFF or EER)")


def read_movie(path: str | Path, *, params: ReadParams | None = None,
               spill_dir: str | Path | None = None,
               movie_dose_e_A2: float | None = None) -> Movie:
    """Read a movie in its stored dtype, shape (n_frames, ny, nx).

    Parameters
    ----------
    path : str or Path
        An MRC, TIFF or EER movie.
    params : ReadParams, optional
        Used for EER grouping and sampling (``eer_group_frames``,
        ``eer_dose_per_fraction_e_A2``, ``frame_integration``, ``eer_sampling``; a
        ``frame_integration`` that sums raw frames of another movie is refused).
        ``pixel_size_A`` given here overrides the header's: the pixel of the frames as
        returned (for EER, of the grid decoded onto: at ``eer_sampling`` 2, half the physical
        pixel, as MotionCor2's ``-PixSize``; the file's own ``sensorPixelSize`` is the physical
        pixel, divided by the sampling when none is given). Use the returned
        ``Movie.pixel_size_A``.
    spill_dir : str or Path, optional
        For TIFF and EER: a decoded movie over
        :data:`~correction.io.spill.SPILL_OVER_BYTES` goes to an unnamed temporary file here
        and is returned memory-mapped (:mod:`correction.io.spill`); None decodes in memory.
    movie_dose_e_A2 : float, optional
        EER: the dose given for the whole movie, which ``eer_dose_per_fraction_e_A2`` groups
        by (:func:`~correction.io.eer.read_eer`).

    Returns
    -------
    Movie
        MRC frames are memory-mapped (read-only); TIFF frames decoded in memory (or spilled:
        memory-mapped from the temporary file); EER frames are fractions (sums of raw frames;
        uint8 up to 255 raw frames each, else uint16) with ``raw_frames_per_frame`` set.

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
        Each with a one-line reason naming the file.
    """
    params = ReadParams() if params is None else params
    if not isinstance(params, ReadParams):
        raise ParameterError(f"params must be a ReadParams, got {type(params).__name__}")
    path = Path(path)
    kind = detect_format(path)
    _check_integration(kind, path, params)
    try:
        movie = _read_kind(kind, path, params, spill_dir, movie_dose_e_A2)
    except (CorrectionError, OSError, MemoryError, ImportError, NotImplementedError):
        raise  # OSError: the environment's (a share's I/O error), told apart by the daemon;
        # ImportError, NotImplementedError: this installation's, not the file's
    except Exception as exc:  # noqa: BLE001 - a damaged file trips a library's own checks
        raise UnreadableMovieError(path, f"damaged {kind.upper()} file: "
                                         f"{type(exc).__name__}: {exc}") from exc
    # EER readers apply params.pixel_size_A themselves (the physical pixel, divided by the
    # sampling); for the others the given value is the pixel of the frames as stored.
    if (kind != "eer" and params.pixel_size_A is not None
            and movie.pixel_size_A != params.pixel_size_A):
        header = dict(movie.header, header_pixel_size_A=movie.pixel_size_A)
        movie = Movie(frames=movie.frames, path=movie.path, pixel_size_A=params.pixel_size_A,
                      voltage_kV=movie.voltage_kV,
                      dose_per_frame_e_A2=movie.dose_per_frame_e_A2,
                      raw_frames_per_frame=movie.raw_frames_per_frame, header=header)
    return movie


def _check_integration(kind: str, path: Path, params: ReadParams) -> None:
    """Refuse a frame integration file that sums raw frames of a movie other than EER: its
    frames are read as they are (MotionCor2/3 would sum them)."""
    integration = params.frame_integration
    if kind == "eer" or integration is None:
        return
    summed = max(entry.per_fraction for entry in integration.entries)
    if summed > 1:
        raise UnsupportedFormatError(
            path, f"the frame integration file {integration.source} sums {summed} raw frames "
                  f"per fraction: motionwatch sums the raw frames of EER movies only, and "
                  f"reads a {kind.upper()} movie's frames as they are; give a file whose "
                  "second column is 1 (its doses alone), or align sums of frames with --group")


def _read_kind(kind: str, path: Path, params: ReadParams, spill_dir: str | Path | None,
               movie_dose_e_A2: float | None) -> Movie:
    """The reader of ``kind`` (:func:`detect_format`) on ``path``."""
    if kind == "mrc":
        from .mrc import read_mrc  # noqa: PLC0415

        return read_mrc(path)
    if kind == "tiff":
        from .tiff import read_tiff  # noqa: PLC0415

        return read_tiff(path, spill_dir=spill_dir)
    if kind == "eer":
        from .eer import read_eer  # noqa: PLC0415

        return read_eer(path, params=params, spill_dir=spill_dir,
                        movie_dose_e_A2=movie_dose_e_A2)
    raise UnsupportedFormatError(path, f"a {kind.upper()} file is a reference image, "
                                       "not a movie")


def read_image(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read a 2-D reference image (gain, dark, defect map) into memory.

    Parameters
    ----------
    path : str or Path
        MRC (one section), TIFF (one page; EER ``.gain`` files are such TIFFs) or Gatan
        ``.dm4``/``.dm3``.

    Returns
    -------
    image : ndarray, shape (ny, nx)
        In the stored dtype, native byte order.
    pixel_size_A : float or None
        From the file, when it records one.

    Raises
    ------
    UnreadableMovieError, TruncatedMovieError, UnsupportedFormatError
    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "mrc":
        from .mrc import read_mrc_image  # noqa: PLC0415

        return read_mrc_image(path)
    if kind in ("tiff", "eer"):
        from .tiff import read_tiff_image  # noqa: PLC0415

        return read_tiff_image(path)
    from .dm import read_dm_image  # noqa: PLC0415

    return read_dm_image(path)
