"""The gain reference exported for RELION: written once per output folder, in the movies'
orientation, named so that every motion STAR names the gain its movie was corrected with.

RELION's motion STARs name one gain file (``rlnMicrographGainName``) that its polishing applies
to the raw frames as they are stored. motionwatch orients the gain (``--gain-rotate``,
``--gain-flip``) and, for EER movies, may invert it (:func:`correction.gain.reference_for_movie`),
so the file RELION gets is that reference as applied, not the user's file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import tifffile

from .gain import load_gain_reference, reference_for_movie
from .params import READING_CONVENTIONS
from .write import atomic_write, text_bytes, write_mrc_atomic

__all__ = ["RELION_GAIN_NAME", "relion_gain_stamp", "relion_gain_names", "write_relion_gain"]

RELION_GAIN_NAME = "motionwatch_gain.mrc"
_GAIN_STAMP_PREFIX = "motionwatch gain stamp "


#: gain file suffixes read otherwise since READING_CONVENTIONS 2 (rows reversed or kept)
_READ_OTHERWISE = frozenset({".dm4", ".dm3", ".tif", ".tiff"})


def relion_gain_stamp(gain_params: Any) -> str:
    """A digest of the gain settings and of the files they name (absolute path, size,
    modification time): equal stamps mean the same gain in the same orientation. The default
    ``eer_gain`` (``multiplicative``) is left out of it, so that a gain written before that
    setting existed keeps its stamp (and is not written again beside itself). For a gain file
    of a format whose reading changed (DM4/DM3 and TIFF rows: :data:`_READ_OTHERWISE`), the
    reading conventions count too (:data:`correction.params.READING_CONVENTIONS`): a gain an
    earlier release read the other way is written again as this one reads it."""
    text = repr(gain_params)
    if getattr(gain_params, "eer_gain", "multiplicative") == "multiplicative":
        text = text.replace(", eer_gain='multiplicative'", "")
    parts = [text]
    gain_path = getattr(gain_params, "gain_path", None)
    if READING_CONVENTIONS != 1 and gain_path is not None \
            and Path(gain_path).suffix.lower() in _READ_OTHERWISE:
        parts.append(f"reading_conventions={READING_CONVENTIONS}")
    for name in ("gain_path", "dark_path", "defects_path"):
        path = getattr(gain_params, name, None)
        if path is not None:
            st = Path(path).stat()
            parts.append(f"{name}={Path(path).absolute()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256(text_bytes("\n".join(parts))).hexdigest()[:16]


def _written_stamp(path: Path) -> str | None:
    """The stamp in the labels of an earlier ``motionwatch_gain.mrc`` (header only), or in the
    ImageDescription of an earlier ``motionwatch_gain.gain``, if any."""
    if path.suffix == ".gain":
        return _written_tiff_stamp(path)
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            labels = [bytes(label).decode("ascii", "replace").strip()
                      for label in mrc.header.label[:int(mrc.header.nlabl)]]
    except (OSError, ValueError):
        return None
    stamps = [label[len(_GAIN_STAMP_PREFIX):] for label in labels
              if label.startswith(_GAIN_STAMP_PREFIX)]
    return stamps[0] if stamps else None


def _written_tiff_stamp(path: Path) -> str | None:
    """The stamp in the ImageDescription of an earlier ``motionwatch_gain.gain``, if any."""
    try:
        with tifffile.TiffFile(path) as tif:
            text = str(tif.pages.first.tags.valueof(270) or "")
    except (OSError, ValueError, IndexError):
        return None
    stamps = [line[len(_GAIN_STAMP_PREFIX):] for line in text.splitlines()
              if line.startswith(_GAIN_STAMP_PREFIX)]
    return stamps[0] if stamps else None


def relion_gain_names(gain_params: Any, *, eer: bool = False) -> tuple[str, str]:
    """The file names the RELION gain of ``gain_params`` may have in an output folder:
    ``motionwatch_gain.mrc`` (the first gain written there) and
    ``motionwatch_gain_<stamp>.mrc`` (:func:`relion_gain_stamp`; any other gain or orientation
    written into the same folder later, by ``watch`` or ``correct``). ``eer``: the names of
    the gain for EER movies, the same with ``.gain`` (:func:`write_relion_gain`)."""
    suffix = ".gain" if eer else ".mrc"
    return (Path(RELION_GAIN_NAME).with_suffix(suffix).name,
            f"motionwatch_gain_{relion_gain_stamp(gain_params)}{suffix}")


def write_relion_gain(out_dir: str | Path, gain_params: Any, *, eer: bool = False
                      ) -> Path | None:
    """The gain reference as RELION's polishing reads it: an MRC in the movie's orientation
    (the ``--gain-rotate``/``--gain-flip`` applied), multiplicative, 0 at defects; None without
    a gain. Used by ``watch`` (the hand-off listener) and ``motionwatch correct`` alike.

    Its labels hold :func:`relion_gain_stamp`: a restart with the same gain files and settings
    finds the file and leaves it as it is (a super-resolution gain takes 2 s to load and 377 MB
    to write). The first gain written into a folder is ``OUT/motionwatch_gain.mrc``; a gain
    with another stamp (another file, orientation, or the file written anew) never replaces
    it, since the motion STARs of the movies corrected with it name it: it is written as
    ``OUT/motionwatch_gain_<stamp>.mrc`` (:func:`relion_gain_names`), which the motion STARs
    of the movies corrected with that gain name.

    ``eer``: the gain of EER movies, as motionwatch applies it to them
    (:func:`correction.gain.reference_for_movie`: an EER count image already inverted), written
    as a float32 TIFF named ``.gain`` (:func:`relion_gain_names` with ``eer``), rows in the
    movie's stored order: RELION's ``EERRenderer::loadEERGain`` uses a ``.gain`` file as a
    multiplier, undoing its TIFF reader's row reversal, and inverts any other file."""
    if getattr(gain_params, "gain_path", None) is None:
        return None
    stamp = relion_gain_stamp(gain_params)
    first, own = (Path(out_dir) / name for name in relion_gain_names(gain_params, eer=eer))
    for path in (first, own):
        if path.is_file() and _written_stamp(path) == stamp:
            return path
    path = own if first.exists() else first
    reference = load_gain_reference(gain_params)
    if reference is None:
        return None
    if eer:
        reference = reference_for_movie(reference, gain_params, is_eer=True)
        return _write_gain_tiff(path, np.asarray(reference.gain, dtype=np.float32),
                                ("motionwatch: gain of EER movies, multiplicative, rows as "
                                 "stored, for RELION", _GAIN_STAMP_PREFIX + stamp))
    return write_mrc_atomic(path, np.asarray(reference.gain, dtype=np.float32),
                            pixel_size_A=None,
                            labels=("motionwatch: gain in the movie orientation, for RELION",
                                    _GAIN_STAMP_PREFIX + stamp))


def _write_gain_tiff(path: Path, gain: np.ndarray, lines: tuple[str, ...]) -> Path:
    """``gain`` as a one-page float32 TIFF, row 0 first, ``lines`` in its ImageDescription,
    written atomically (:func:`correction.write.atomic_write`)."""
    def write(fh: Any) -> None:
        tifffile.imwrite(fh, gain, description="\n".join(lines), metadata=None)

    return atomic_write(path, write)
