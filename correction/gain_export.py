"""The gain reference exported for RELION: written once per output folder, in the movies'
orientation, named so that every motion STAR names the gain its movie was corrected with.

RELION's motion STARs name one gain file (``rlnMicrographGainName``) that its polishing applies
to the raw frames as they are stored. motionwatch orients the gain (``--gain-rotate``,
``--gain-flip``) and, for EER movies, may invert it (:func:`correction.gain.reference_for_movie`),
so the file RELION gets is that reference as applied, not the user's file.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import tifffile

from .gain import load_gain_reference, reference_for_movie
from .params import READING_CONVENTIONS
from .report import file_sha256
from .write import atomic_write, text_bytes, write_mrc_atomic

__all__ = ["RELION_GAIN_NAME", "relion_gain_stamp", "relion_gain_content", "relion_gain_names",
           "write_relion_gain"]

RELION_GAIN_NAME = "motionwatch_gain.mrc"
_GAIN_STAMP_PREFIX = "motionwatch gain stamp "
_GAIN_CONTENT_PREFIX = "motionwatch gain content "


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


def relion_gain_content(gain_params: Any, applied_sha256: Mapping[str, str] | None = None
                        ) -> str:
    """A digest of the gain settings (orientation, EER rule; not the files' paths) and of the
    content of the files they name: equal digests mean the same gain as RELION is given,
    wherever the files lie now. ``applied_sha256``: the SHA-256 of each file by kind
    (``gain``, ``dark``, ``defects``), as a motion record's ``references`` give those a movie
    was corrected with; a kind not given is hashed as the file is now (raises ``OSError``)."""
    settings = dataclasses.replace(gain_params, gain_path=None, dark_path=None,
                                   defects_path=None)
    parts = [repr(settings), f"reading_conventions={READING_CONVENTIONS}"]
    for kind, path in gain_params.files():
        known = (applied_sha256 or {}).get(kind)
        parts.append(f"{kind}={known or file_sha256(path)}")
    return hashlib.sha256(text_bytes("\n".join(parts))).hexdigest()[:16]


def _written_labels(path: Path) -> list[str]:
    """The labels of an earlier ``motionwatch_gain.mrc`` (header only), or the lines of the
    ImageDescription of an earlier ``motionwatch_gain.gain``; empty when unreadable."""
    try:
        if path.suffix == ".gain":
            with tifffile.TiffFile(path) as tif:
                return str(tif.pages.first.tags.valueof(270) or "").splitlines()
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            return [bytes(label).decode("ascii", "replace").strip()
                    for label in mrc.header.label[:int(mrc.header.nlabl)]]
    except (OSError, ValueError, IndexError):
        return []


def _labelled(path: Path, prefix: str) -> str | None:
    """The value after ``prefix`` in the labels of an earlier gain file, if any."""
    found = [line[len(prefix):] for line in _written_labels(path) if line.startswith(prefix)]
    return found[0] if found else None


def _written_stamp(path: Path) -> str | None:
    """The stamp (:func:`relion_gain_stamp`) of an earlier gain file, if any."""
    return _labelled(path, _GAIN_STAMP_PREFIX)


def _written_with_content(out_dir: Path, content: str, suffix: str) -> Path | None:
    """The gain file of the folder labelled with ``content`` (:func:`relion_gain_content`)."""
    for path in sorted(out_dir.glob(f"motionwatch_gain*{suffix}")):
        if path.is_file() and _labelled(path, _GAIN_CONTENT_PREFIX) == content:
            return path
    return None


def relion_gain_names(gain_params: Any, *, eer: bool = False) -> tuple[str, str]:
    """The file names the RELION gain of ``gain_params`` may have in an output folder:
    ``motionwatch_gain.mrc`` (the first gain written there) and
    ``motionwatch_gain_<stamp>.mrc`` (:func:`relion_gain_stamp`; any other gain or orientation
    written into the same folder later, by ``watch`` or ``correct``). ``eer``: the names of
    the gain for EER movies, the same with ``.gain`` (:func:`write_relion_gain`)."""
    suffix = ".gain" if eer else ".mrc"
    return (Path(RELION_GAIN_NAME).with_suffix(suffix).name,
            f"motionwatch_gain_{relion_gain_stamp(gain_params)}{suffix}")


def write_relion_gain(out_dir: str | Path, gain_params: Any, *, eer: bool = False,
                      applied_sha256: Mapping[str, str] | None = None) -> Path | None:
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
    multiplier, undoing its TIFF reader's row reversal, and inverts any other file.

    ``applied_sha256``: the content a movie was corrected with (its record's ``references``,
    SHA-256 by kind): the file written for that content (labelled with
    :func:`relion_gain_content`), also when the gain file was written anew since; written now
    when the files still hold it; None when they hold other content now and none was written
    for it (a gain rewritten before its first movie's STAR was written)."""
    if getattr(gain_params, "gain_path", None) is None:
        return None
    suffix = ".gain" if eer else ".mrc"
    if applied_sha256:
        wanted = relion_gain_content(gain_params, applied_sha256)
        found = _written_with_content(Path(out_dir), wanted, suffix)
        if found is not None:
            return found
        if wanted != relion_gain_content(gain_params):
            return None
    stamp = relion_gain_stamp(gain_params)
    first, own = (Path(out_dir) / name for name in relion_gain_names(gain_params, eer=eer))
    for path in (first, own):
        if path.is_file() and _written_stamp(path) == stamp:
            if _labelled(path, _GAIN_CONTENT_PREFIX) is None:  # an earlier release's: its
                # content is the files' as they are now (the stamp says so), labelled now so
                # that it is found for its movies once the gain file is written anew
                _add_label(path, _GAIN_CONTENT_PREFIX + relion_gain_content(gain_params))
            return path
    path = own if first.exists() else first
    reference = load_gain_reference(gain_params)
    if reference is None:
        return None
    read = {v.path: v.sha256 for v in reference.read}
    loaded = relion_gain_content(gain_params, {
        kind: read[str(path.absolute())] for kind, path in gain_params.files()
        if str(path.absolute()) in read})
    content = _GAIN_CONTENT_PREFIX + loaded
    if eer:
        reference = reference_for_movie(reference, gain_params, is_eer=True)
        written = _write_gain_tiff(path, np.asarray(reference.gain, dtype=np.float32),
                                   ("motionwatch: gain of EER movies, multiplicative, rows as "
                                    "stored, for RELION", _GAIN_STAMP_PREFIX + stamp, content))
    else:
        written = write_mrc_atomic(path, np.asarray(reference.gain, dtype=np.float32),
                                   pixel_size_A=None,
                                   labels=("motionwatch: gain in the movie orientation, for "
                                           "RELION", _GAIN_STAMP_PREFIX + stamp, content))
    if applied_sha256 and loaded != wanted:  # written anew between the look and the read
        return None
    return written


def _add_label(path: Path, line: str) -> None:
    """Add ``line`` to the labels of an earlier gain file (the header of an MRC, the
    ImageDescription of a ``.gain`` TIFF), in place."""
    if path.suffix == ".gain":
        text = "\n".join([*_written_labels(path), line])
        tifffile.tiffcomment(path, comment=text)
        return
    with mrcfile.mmap(path, mode="r+", permissive=True) as mrc:  # the header only is written
        mrc.add_label(line)


def _write_gain_tiff(path: Path, gain: np.ndarray, lines: tuple[str, ...]) -> Path:
    """``gain`` as a one-page float32 TIFF, row 0 first, ``lines`` in its ImageDescription,
    written atomically (:func:`correction.write.atomic_write`)."""
    def write(fh: Any) -> None:
        tifffile.imwrite(fh, gain, description="\n".join(lines), metadata=None)

    return atomic_write(path, write)
