"""Drift statistics and the ``motion.json`` record (schema ``motionwatch.motion/1``).

Drift statistics are path lengths of the global trajectory (the specimen displacement of
:mod:`correction.conventions`) in Å, over the frames aligned:

``total_A``
    path length over all frames: ``sum_i |s[i+1] - s[i]|``;
``early_A``
    path length over the first ``early_frames`` steps, ``max(1, ceil(0.2 * (n - 1)))`` (the first
    fifth of the movie, where beam-induced motion is fastest);
``late_A``
    path length over the remaining steps (``early_A + late_A = total_A``);
``max_frame_jump_A``
    the largest single step between consecutive frames.
"""

from __future__ import annotations

import json

import functools
import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .conventions import SHIFT_CONVENTION, yx_to_xy

__all__ = ["SCHEMA", "MAX_REPLACED_PIXELS_LISTED", "ReplacedPixels", "unlisted_pixels_message",
           "unlisted_pixels_warning", "PIXEL_SIZE_TOLERANCE", "movie_pixel_size_record",
           "pixel_size_warning",
           "DriftStats", "drift_stats", "early_steps", "motion_record", "read_motion_record",
           "FileVersion", "file_sha256", "file_stat_key", "file_stat_keys", "file_version",
           "reference_record", "software_record"]

SCHEMA = "motionwatch.motion/1"
#: Replaced pixels whose coordinates a record lists (a damaged movie may have millions)
MAX_REPLACED_PIXELS_LISTED = 100_000
_DISTRIBUTION = "motionwatch"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ReplacedPixels:
    """Replaced pixels that a program reading the raw movie again must be told of (RELION's
    ``data_hot_pixels``).

    Attributes
    ----------
    yx : ndarray of int, shape (n, 2)
        ``[row, column]`` (0-based, the movie's frame grid) of the first
        :data:`MAX_REPLACED_PIXELS_LISTED` of them, in row order.
    count : int
        How many there are.
    others_in : {"gain", "defect_file"} or None
        Where the other replaced pixels are given: the zeros of the gain exported beside the
        outputs, or the defect file (named as it is); None when nothing else is replaced.
    """

    yx: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    count: int = 0
    others_in: str | None = None

    @property
    def truncated(self) -> bool:
        """More were replaced than are listed: RELION's polishing does not mask the rest."""
        return self.count > len(self.yx)

    def message(self) -> str:
        """What a truncated list leaves unmasked (:func:`unlisted_pixels_message`)."""
        return unlisted_pixels_message(self.count, len(self.yx))

    def to_record(self) -> dict[str, Any]:
        yx = np.asarray(self.yx, dtype=np.int64).reshape(-1, 2)
        return {"count": int(self.count), "listed": int(len(yx)), "yx": yx.tolist(),
                "others_in": self.others_in}


def unlisted_pixels_message(count: int, listed: int) -> str:
    """One line: ``count`` pixels replaced, ``listed`` of them in the record (a motion
    record's ``replaced_pixels``), what RELION's polishing leaves unmasked and what to give."""
    return (f"{count:,} pixels were replaced (defects, hot or damaged pixels); the motion "
            f"record and RELION's data_hot_pixels list the first {listed:,}, so RELION's "
            "polishing, which reads the raw movie again, does not mask the others: give the bad "
            "pixels as zeros of a gain reference or as a defect list RELION reads (x y w h per "
            "line, .txt)")


def unlisted_pixels_warning(record: Mapping[str, Any]) -> str | None:
    """The warning of a motion record whose ``replaced_pixels`` list fewer than were replaced
    (:func:`unlisted_pixels_message`), else None."""
    replaced = record.get("replaced_pixels") or {}
    count, listed = int(replaced.get("count", 0)), int(replaced.get("listed", 0))
    return unlisted_pixels_message(count, listed) if count > listed else None


#: a pixel size given that differs from the movie file's by more than this is warned of
PIXEL_SIZE_TOLERANCE = 0.01


def movie_pixel_size_record(given_A: float | None, in_file_A: float | None,
                            used_A: float) -> dict[str, Any]:
    """The motion record's ``movie_pixel_size``: the movie's pixel (Å, on the grid decoded onto,
    before ``--bin``) ``used_A``, its ``source`` (``given``: ``--pixel-size``, which wins over
    the file's as MotionCor2's ``-PixSize`` does; ``file``: the header, EER metadata), and
    ``in_file_A``, the file's own value, when one was given and the file has one."""
    out: dict[str, Any] = {"used_A": float(used_A),
                           "source": "given" if given_A is not None else "file"}
    if given_A is not None and in_file_A is not None and in_file_A > 0:
        out["in_file_A"] = float(in_file_A)
    return out


def pixel_size_warning(record: Mapping[str, Any]) -> str | None:
    """One line when the pixel size given differs from the movie file's by more than
    :data:`PIXEL_SIZE_TOLERANCE` (a setting left from another magnification), else None."""
    pixel = record.get("movie_pixel_size") or {}
    used, in_file = pixel.get("used_A"), pixel.get("in_file_A")
    if pixel.get("source") != "given" or not in_file or not used:
        return None
    change = used / in_file - 1.0
    if abs(change) <= PIXEL_SIZE_TOLERANCE:
        return None
    return (f"the pixel size given, {used:g} Å, is not the movie file's, {in_file:g} Å "
            f"({100 * change:+.0f} %): the given one is used (as MotionCor2's -PixSize), in every "
            "output and the dose; check --pixel-size (TOML pixel_size) if the magnification "
            "changed")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content, computed once per process for each file version.

    Cached by ``(absolute path, size, mtime_ns)``: a reference rewritten in place (new size or
    mtime) is hashed again.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    path = Path(path).absolute()
    st = os.stat(path)
    return _sha256_of_version(str(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class FileVersion:
    """The version of a file that was read: absolute path, size (bytes), modification time
    (ns) and the SHA-256 (hex) of its content."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    def stat_key(self) -> tuple[str, int, int]:
        """``(path, size, mtime_ns)``: what :func:`file_stat_key` gives while it is current."""
        return self.path, self.size, self.mtime_ns

    def is_rewritten(self) -> bool:
        """Whether the file now has another size or modification time (written anew); False
        while it cannot be seen (being replaced, a share that does not answer)."""
        try:
            return file_stat_key(self.path) != self.stat_key()
        except OSError:
            return False


def file_stat_key(path: str | Path) -> tuple[str, int, int]:
    """``(absolute path, size, mtime_ns)`` of a file as it is now; raises ``OSError``."""
    absolute = Path(path).absolute()
    st = os.stat(absolute)
    return str(absolute), st.st_size, st.st_mtime_ns


def file_stat_keys(paths: list[str] | list[Path]) -> list[tuple[str, int, int] | None]:
    """:func:`file_stat_key` of each file now; None where it cannot be seen."""
    keys: list[tuple[str, int, int] | None] = []
    for path in paths:
        try:
            keys.append(file_stat_key(path))
        except OSError:
            keys.append(None)
    return keys


def file_version(path: str | Path) -> FileVersion:
    """The file's current :class:`FileVersion` (its content hashed once per version, as
    :func:`file_sha256`); raises ``OSError``."""
    key = file_stat_key(path)
    return FileVersion(*key, _sha256_of_version(*key))


@functools.lru_cache(maxsize=64)  # a session's gain, dark and defect files, a few versions each
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 (hex) of ``path``'s content; ``size`` and ``mtime_ns`` key its version."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def reference_record(gain_path: str | Path | None = None, dark_path: str | Path | None = None,
                     defects_path: str | Path | None = None, *,
                     expanded_by: int = 1, binned_by: int = 1,
                     applied_as: str = "multiplicative",
                     eer_rule: str | None = None,
                     defects_fitted: str | None = None,
                     read: tuple[FileVersion, ...] = ()) -> dict[str, Any]:
    """The ``references`` object of the motion record: which gain, dark and defect files.

    Parameters
    ----------
    gain_path, dark_path, defects_path : str or Path or None
        The files used (None: not used, written as null).
    expanded_by : int
        Sub-pixels per reference pixel on each axis when a physical-pixel reference was
        repeated onto a super-resolution movie (1: used as it is).
    binned_by : int
        Reference pixels per frame pixel on each axis when a reference on a finer grid was
        combined onto the frames' (an 8K EER gain for 4K frames; 1: used as it is). Written
        only when not 1.
    applied_as : {"multiplicative", "reciprocal"}
        How the gain file was applied: as a multiplier, or as ``mean / gain`` (an EER count
        image, :func:`correction.gain.reference_for_movie`).
    eer_rule : str, optional
        For an EER movie, the one line saying why (:attr:`correction.gain.GainReference.eer_rule`).
    defects_fitted : str, optional
        For SerialEM's camera defect list, how it was fitted onto the frames (one line,
        :meth:`correction.camera_defects.CameraDefectList.describe_fit`): ``defects.fitted``.
    read : tuple of FileVersion
        The versions of the files that were read (:attr:`correction.gain.GainReference.read`):
        a file's SHA-256 is the one of the content applied, even when the file was written
        anew since; a file not among them is hashed as it is now.

    Returns
    -------
    dict
        ``gain``, ``dark``, ``defects``: null or ``{"path": absolute path, "sha256": hex}``;
        ``gain_expanded_by``; ``gain_applied_as`` (null without a gain file); ``eer_gain_rule``
        for an EER movie with a gain file.
    """
    def one(path: str | Path | None) -> dict[str, str] | None:
        if path is None:
            return None
        absolute = str(Path(path).absolute())
        known = [v.sha256 for v in read if v.path == absolute]
        return {"path": absolute, "sha256": known[0] if known else file_sha256(path)}

    defects = one(defects_path)
    if defects is not None and defects_fitted:
        defects["fitted"] = defects_fitted
    return {"gain": one(gain_path), "dark": one(dark_path), "defects": defects,
            "gain_expanded_by": int(expanded_by),
            **({"gain_binned_by": int(binned_by)} if binned_by != 1 else {}),
            "gain_applied_as": applied_as if gain_path is not None else None,
            **({"eer_gain_rule": eer_rule} if eer_rule else {})}


def software_record() -> dict[str, str]:
    """The ``software`` object of the motion record: the program and its installed version."""
    try:
        version = metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": _DISTRIBUTION, "version": version}


@dataclass(frozen=True, slots=True)
class DriftStats:
    """Drift of one movie in Å (see module docstring for definitions)."""

    total_A: float
    early_A: float
    late_A: float
    max_frame_jump_A: float
    early_frames: int

    def as_dict(self) -> dict[str, float | int]:
        return {"total_A": self.total_A, "early_A": self.early_A, "late_A": self.late_A,
                "max_frame_jump_A": self.max_frame_jump_A, "early_frames": self.early_frames}


def early_steps(n_frames: int) -> int:
    """Number of frame-to-frame steps counted as early: ``max(1, ceil(0.2 * (n - 1)))``,
    0 for a single frame."""
    if n_frames < 2:
        return 0
    return max(1, math.ceil(0.2 * (n_frames - 1)))


def drift_stats(shifts_yx_px: np.ndarray, pixel_size_A: float) -> DriftStats:
    """Drift statistics of a trajectory.

    Parameters
    ----------
    shifts_yx_px : ndarray, shape (n_frames, 2)
        Displacements ``[dy, dx]`` in output pixels (:mod:`correction.conventions`).
    pixel_size_A : float
        Output pixel size in Å.
    """
    s = np.asarray(shifts_yx_px, dtype=np.float64).reshape(-1, 2)
    steps = np.hypot(*np.diff(s, axis=0).T) * float(pixel_size_A) if len(s) > 1 else np.zeros(0)
    m = early_steps(len(s))
    return DriftStats(total_A=float(steps.sum()), early_A=float(steps[:m].sum()),
                      late_A=float(steps[m:].sum()),
                      max_frame_jump_A=float(steps.max(initial=0.0)), early_frames=m)


def _r(x: float, digits: int = 4) -> float:
    return float(round(float(x), digits))


def motion_record(*, movie: str, shape_yx: tuple[int, int], pixel_size_A: float,
                  voltage_kV: float, shifts_yx_px: np.ndarray, frame_doses_e_A2: np.ndarray,
                  pre_exposure_e_A2: float, outputs: dict[str, str],
                  timings_s: dict[str, float], frames_in_movie: int | None = None,
                  throw_frames: int = 0, trunc_frames: int = 0,
                  alignment: dict[str, Any] | None = None, local: dict[str, Any] | None = None,
                  resolution: dict[str, Any] | None = None,
                  references: dict[str, Any] | None = None,
                  software: dict[str, Any] | None = None,
                  movie_shape_yx: tuple[int, int] | None = None,
                  replaced_pixels: ReplacedPixels | None = None,
                  dose_counted: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the JSON-serialisable ``motion.json`` record of one corrected movie.

    Parameters
    ----------
    movie : str
        The movie's absolute path (files for other programs name the movie from here, e.g.
        RELION's ``rlnMicrographMovieName``, read in whatever folder they run).
    shape_yx : (int, int)
        Output image shape ``(ny, nx)``.
    pixel_size_A : float
        Output pixel size (Å).
    shifts_yx_px : ndarray, shape (n_frames, 2)
        Global shifts of the frames aligned, output pixels, ``[dy, dx]``; written as
        ``global_shifts_px`` ``[dx, dy]`` (:data:`correction.conventions.SHIFT_CONVENTION`).
    frame_doses_e_A2 : ndarray, shape (frames_in_movie,)
        Dose of every frame in the file, thrown/truncated ones included.
    pre_exposure_e_A2 : float
    dose_counted : dict, optional
        The dose per frame the frames count (:meth:`correction.dose_counts.DoseCount.to_record`);
        written as ``dose.counted``.
    outputs : dict
        Output kind (``sum``, ``dw``, ``even``, ``odd``, ``motion``) -> file name.
    timings_s : dict
        Stage -> seconds.
    frames_in_movie, throw_frames, trunc_frames : int
        Frames in the file and frames skipped at its start / end.
    alignment : dict, optional
        Facts about the alignment (iterations, peak quality ...).
    local, resolution : dict, optional
        Local-motion and resolution-estimate objects added by later stages; included only
        when given.
    references : dict, optional
        The gain, dark and defect files with their checksums (:func:`reference_record`).
    software : dict, optional
        Program and version (:func:`software_record`).
    movie_shape_yx : (int, int), optional
        The movie's frame size as read (an EER movie's at its sampling), movie pixels; written
        as ``movie_shape`` ``[ny, nx]`` (RELION's ``rlnImageSizeY/X``).
    replaced_pixels : ReplacedPixels, optional
        The replaced pixels RELION's polishing must be told of; written as ``replaced_pixels``
        (``count``, ``listed``, ``yx`` [row, column], ``others_in``), for ``data_hot_pixels``.
    extra : dict, optional
        Further top-level fields (e.g. tilt-series facts from the daemon); must not clash with
        the schema's own keys.

    Returns
    -------
    dict
    """
    s = np.asarray(shifts_yx_px, dtype=np.float64).reshape(-1, 2)
    doses = np.asarray(frame_doses_e_A2, dtype=np.float64)
    drift = drift_stats(s, pixel_size_A)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "movie": str(movie),
        "frames": int(len(s)),
        "frames_in_movie": int(frames_in_movie if frames_in_movie is not None else len(s)),
        "throw_frames": int(throw_frames),
        "trunc_frames": int(trunc_frames),
        "shape": [int(shape_yx[0]), int(shape_yx[1])],
        "pixel_size_A": float(pixel_size_A),
        "voltage_kV": float(voltage_kV),
        "shift_convention": SHIFT_CONVENTION,
        "global_shifts_px": [[_r(dx), _r(dy)] for dx, dy in yx_to_xy(s)],
        "dose": {
            "per_frame_e_A2": [_r(d, 6) for d in doses],
            "pre_exposure_e_A2": float(pre_exposure_e_A2),
            "total_e_A2": _r(doses.sum(), 6),
            **({"counted": dict(dose_counted)} if dose_counted else {}),
        },
        "drift": {k: (_r(v) if isinstance(v, float) else v) for k, v in drift.as_dict().items()},
        "outputs": dict(outputs),
        "timings_s": {k: _r(v, 3) for k, v in timings_s.items()},
    }
    if movie_shape_yx is not None:
        record["movie_shape"] = [int(movie_shape_yx[0]), int(movie_shape_yx[1])]
    if replaced_pixels is not None:
        record["replaced_pixels"] = replaced_pixels.to_record()
    if alignment is not None:
        record["alignment"] = alignment
    if local is not None:
        record["local"] = local
    if resolution is not None:
        record["resolution"] = resolution
    if references is not None:
        record["references"] = references
    if software is not None:
        record["software"] = software
    if extra:
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"extra record fields clash with schema keys: {clash}")
        record.update(extra)
    return record


def read_motion_record(path: str | Path | None) -> dict[str, Any] | None:
    """A motion record (``S.motion.json``, written by :func:`motion_record` and
    :func:`correction.write.json_writer`) as a dict; None when absent, unreadable or not a
    record. The one parser of the file."""
    if not path:
        return None
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
