"""RELION's view of a corrected movie: its motion STAR, accumulated motion, single-particle STAR.

Everything here is read from the motion record (``S.motion.json``, schema
``motionwatch.motion/1``, :mod:`correction.report`) and written with teamtomo's ``starfile``
through :func:`write_star` (temporary name, fsync, rename: never a half-written file; each block
preceded by RELION 5's ``# version 50001`` line). A file name that is not valid UTF-8 (a share
mounted with another iocharset; Python holds it with surrogate escapes) is written as the bytes
it has on disk (:func:`star_table`, :func:`write_star`).

The mapping to RELION (labels and meanings read in 3dem/relion ``src/micrograph_model.cpp``
``Micrograph::write`` and ``src/motioncorr_runner.cpp``):

* **per-movie motion STAR** ``S.star`` beside ``S.motion.json`` (RELION: ``<root>.star`` beside
  ``<root>.mrc``): block ``data_general`` (``rlnImageSizeX/Y`` the movie frame size and
  ``rlnImageSizeZ`` its frame count, ``rlnMicrographMovieName``, ``rlnMicrographBinning`` =
  motionwatch's ``bin_factor``, ``rlnMicrographOriginalPixelSize`` = the movie's pixel size,
  ``rlnMicrographDoseRate`` = mean dose per frame, ``rlnMicrographPreExposure``, ``rlnVoltage``,
  ``rlnMicrographStartFrame`` = 1 + thrown frames, ``rlnMotionModelVersion`` = 0) and block
  ``data_global_shift`` (``rlnMicrographFrameNumber`` 1-based over every frame of the movie,
  ``rlnMicrographShiftX/Y``). Shifts are RELION's: the shift to APPLY, i.e. minus motionwatch's
  displacement (``global_shifts_px``, :mod:`correction.conventions`), in unbinned movie pixels
  (output pixels x ``bin_factor``), with the sums' own origin: polishing puts a particle
  picked at ``p`` on the micrograph at ``p - shift(f)`` in frame ``f``
  (``MicrographHandler::loadInitialTracks``, no frame taken as zero), so the shifts are those
  that bring each frame onto the micrograph motionwatch wrote, whose origin is the frames' mean
  position (:mod:`correction.conventions`), and the first summed frame's is not 0 as in
  RELION's own output (its sum is made at that frame, ``-FmRef 0``: taking that frame as zero
  here put every particle's starting track off by the first frame's displacement, several
  pixels on a drifting movie); frames skipped by ``--trunc`` get RELION's "not observed"
  value -9999 (RELION holds the last observed shift for them), those skipped by ``--throw``
  the first summed frame's shift (:func:`held_before_first_summed`: RELION takes a frame
  before the first observed one as 0, its own origin). The local model is not exported
  (version 0, ``MOTION_MODEL_NULL``): motionwatch's local model is not RELION's
  18-coefficient polynomial, and Bayesian polishing re-estimates local motion from the
  global track anyway.
  With ``data_hot_pixels`` (``rlnCoordinateX/Y``) the pixels motionwatch replaced that
  polishing, which reads the raw movie again, would not mask otherwise (the record's
  ``replaced_pixels``: not the zeros of the gain exported for it), and without a gain
  ``rlnMicrographDefectFile``, the defect list, when RELION reads it as it is (a strict
  ``x y w h`` ``.txt``; a comment or a comma would hang its reader).
* **accumulated motion** (:func:`accumulated_motion_px`), as ``generateLogFilePDFAndWriteStarFiles``
  computes ``rlnAccumMotionTotal/Early/Late``: the sum over frames f >= 2 with a shift of
  ``|s(f) - s(previous observed frame)|`` in unbinned pixels (the first observed frame, RELION's
  origin, adds nothing); a step is early when frame f lies
  before the dose cutoff (``--dose_motionstats_cutoff``, default 4 e/Å²):
  ``f <= (cutoff - pre_exposure) / dose_per_frame``, i.e. the dose received by the end of frame f,
  pre-exposure included, is at most the cutoff (here with the actual per-frame doses).
* **single particle** ``corrected_micrographs.star`` (:func:`write_single_particle_star`):
  ``data_optics`` (``rlnOpticsGroupName``, ``rlnOpticsGroup``, ``rlnMicrographOriginalPixelSize``,
  ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``,
  ``rlnMicrographPixelSize``; one row per distinct movie pixel size, output pixel size,
  voltage, Cs and amplitude contrast, :func:`_optics_groups`; Cs and amplitude contrast those
  each movie's record keeps, :mod:`daemon.settings.optics`) and ``data_micrographs`` (``rlnMicrographName`` = the
  dose-weighted sum, ``rlnMicrographNameNoDW`` = the plain sum, ``rlnMicrographNameEven/Odd``,
  ``rlnMicrographMetadata``, ``rlnOpticsGroup``, ``rlnAccumMotionTotal/Early/Late``), one row per
  movie outside tilt series, ``rlnOpticsGroup`` its own group. Paths inside the output folder
  are relative to it (the folder a user opens as the RELION project); the movies, outside it,
  are absolute.
* **the gain** polishing reads (``rlnMicrographGainName``, written by
  :func:`correction.gain_export.write_relion_gain`): one file per gain and orientation, never
  replaced by another, so every movie's STAR names the gain it was corrected with, whichever
  writer (``watch``, ``correct``) put it there. An EER movie's STAR names a ``.gain`` TIFF
  instead (``motionwatch_gain.gain``): RELION loads an EER movie's gain with
  ``EERRenderer::loadEERGain``, which inverts any file that is not a ``.gain`` one
  (src/renderEER.h) and would turn the multiplicative MRC into the detector's response.
* **EER movies**: ``rlnEERGrouping`` and ``rlnEERUpsampling`` in ``data_general``, frames
  counted in fractions as RELION renders them (:func:`motion_star_blocks`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from correction.conventions import shift_to_apply
from daemon.events import MovieGain
from daemon.settings.optics import (DEFAULT_AMPLITUDE_CONTRAST, DEFAULT_SPHERICAL_ABERRATION_MM,
                                    optics_record, recorded_optics)

__all__ = ["RELION_VERSION_LINE", "NOT_OBSERVED", "RelionOptics", "MovieMotion", "movie_motion",
           "accumulated_motion_px", "held_before_first_summed", "output_stem",
           "motion_star_path", "motion_star_blocks",
           "star_table", "write_star", "UnwritableStarValue", "write_motion_star", "relative_to",
           "single_particle_blocks", "write_single_particle_star", "motion_records_in",
           "SINGLE_PARTICLE_STAR", "optics_group_names", "optics_key", "optics_keys_in_order",
           "written_optics_order", "MOTION_STAR_STAMP", "motion_star_stamped",
           "motion_star_gain_name",
           "MOTION_SUFFIX"]

RELION_VERSION_LINE = "# version 50001"
#: the first line of every motion STAR written here: which convention its shifts follow
#: (2: each frame brought onto the written micrograph; the releases before it wrote none, and
#: put the first frame at zero). RELION and starfile skip comment lines.
MOTION_STAR_STAMP = ("# motionwatch motion STAR 3: shifts bring each frame onto the micrograph; "
                     "thrown frames hold the first summed one's")
#: the stamp before thrown frames held the first summed frame's shift (they were -9999): the
#: same file for a movie with none thrown
_STAMP_BEFORE_THROWN_HELD = ("# motionwatch motion STAR 2: shifts bring each frame onto the "
                             "micrograph")
#: RELION's value for a frame without a shift (``Micrograph::NOT_OBSERVED``)
NOT_OBSERVED = -9999.0
SINGLE_PARTICLE_STAR = "corrected_micrographs.star"
MOTION_SUFFIX = ".motion.json"


@dataclass(frozen=True, slots=True)
class RelionOptics:
    """Microscope facts RELION needs that a movie does not carry.

    Attributes
    ----------
    spherical_aberration_mm : float
        Cs (mm).
    amplitude_contrast : float
        Fraction, in [0, 1).
    optics_group_name : str
    tomo_hand : int
        ``rlnTomoHand``: +1, or -1 to flip the defocus handedness (RELION's import writes -1
        when "invert defocus handedness" is set, the usual case on Krios/SerialEM data).
    tilt_axis_deg : float or None
        Nominal tilt-axis angle (°); None: the mdoc's ``Tilt axis angle``, else 0.
    motionstats_dose_cutoff_e_A2 : float
        Dose separating early from late accumulated motion (RELION's
        ``--dose_motionstats_cutoff``, default 4 e/Å²).
    """

    spherical_aberration_mm: float = DEFAULT_SPHERICAL_ABERRATION_MM
    amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST
    optics_group_name: str = "optics1"
    tomo_hand: int = -1
    tilt_axis_deg: float | None = None
    motionstats_dose_cutoff_e_A2: float = 4.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.spherical_aberration_mm) and self.spherical_aberration_mm >= 0):
            raise ValueError("spherical_aberration_mm must be >= 0 mm, got "
                             f"{self.spherical_aberration_mm}")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise ValueError(f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}")
        if self.tomo_hand not in (1, -1):
            raise ValueError(f"tomo_hand must be 1 or -1, got {self.tomo_hand}")
        if not self.optics_group_name or any(c.isspace() for c in self.optics_group_name):
            raise ValueError(f"optics_group_name must be one word, got {self.optics_group_name!r}")
        if self.tilt_axis_deg is not None and not math.isfinite(self.tilt_axis_deg):
            raise ValueError(f"tilt_axis_deg must be finite, got {self.tilt_axis_deg}")
        if not self.motionstats_dose_cutoff_e_A2 >= 0:
            raise ValueError("motionstats_dose_cutoff_e_A2 must be >= 0 e/Å², got "
                             f"{self.motionstats_dose_cutoff_e_A2}")

    def record(self) -> dict[str, float]:
        """The ``optics`` object a writer puts into the motion records it makes
        (:mod:`daemon.settings.optics`)."""
        return optics_record(self.spherical_aberration_mm, self.amplitude_contrast)


@dataclass(frozen=True, slots=True)
class MovieMotion:
    """One corrected movie as RELION sees it (built by :func:`movie_motion`).

    Attributes
    ----------
    motion_path : Path
        The motion record (``S.motion.json``).
    movie : Path
        The movie (absolute).
    shape_yx : (int, int)
        Movie frame size (unbinned pixels).
    frames_in_movie : int
    first_frame : int
        First frame summed, 1-based (RELION's ``rlnMicrographStartFrame``).
    shifts_px : ndarray, shape (frames_in_movie, 2)
        RELION shifts ``[x, y]`` (shift to apply onto the micrograph, unbinned movie pixels, the
        sums' origin); NaN where not observed.
    frame_doses_e_A2 : ndarray, shape (frames_in_movie,)
    pre_exposure_e_A2, voltage_kV : float
    movie_pixel_size_A, output_pixel_size_A, bin_factor : float
    outputs : dict of str to Path
        Absolute output paths by kind (``sum``, ``dw``, ``even``, ``odd``, ``motion``).
    eer_grouping : int or None
        EER movies: raw frames per fraction (RELION's ``rlnEERGrouping``); None otherwise.
    eer_upsampling : int or None
        EER movies: 1 (4K grid) or 2 (8K grid, RELION's ``rlnEERUpsampling``); None otherwise.
    eer_raw_frames : int or None
        EER movies: raw frames in the file.
    spherical_aberration_mm, amplitude_contrast : float or None
        The Cs (mm) and amplitude contrast the movie was corrected under (its record's
        ``optics``); None for a record written before they were recorded.
    hot_pixels_xy : ndarray of int, shape (n, 2)
        ``[x, y]`` (column, row; 0-based movie pixels) of the replaced pixels polishing must be
        told of (the record's ``replaced_pixels``).
    defect_file : str or None
        The defect file the movie was corrected with (absolute path), when RELION is to read
        the defects from it (see :func:`_defect_file`).
    own_gain : MovieGain or None
        The gain reference its frame mdoc named, which it was corrected with instead of a
        configured one (the record's ``frame_mdoc_gain``: path, quarter turns, flip).
    reference_sha256 : tuple of (str, str)
        ``(kind, SHA-256)`` of the gain, dark and defect files it was corrected with (the
        record's ``references``): the content, which a file written anew since no longer has.
    """

    motion_path: Path
    movie: Path
    shape_yx: tuple[int, int]
    frames_in_movie: int
    first_frame: int
    shifts_px: np.ndarray
    frame_doses_e_A2: np.ndarray
    pre_exposure_e_A2: float
    voltage_kV: float
    movie_pixel_size_A: float
    output_pixel_size_A: float
    bin_factor: float
    outputs: Mapping[str, Path]
    eer_grouping: int | None = None
    eer_upsampling: int | None = None
    eer_raw_frames: int | None = None
    spherical_aberration_mm: float | None = None
    amplitude_contrast: float | None = None
    hot_pixels_xy: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    defect_file: str | None = None
    image_shape_yx: tuple[int, int] | None = None  # the sums' (the record's ``shape``)
    own_gain: MovieGain | None = None  # its frame mdoc's
    reference_sha256: tuple[tuple[str, str], ...] = ()  # (kind, SHA-256) of the files applied


def _hot_pixels_xy(record: Mapping[str, Any]) -> np.ndarray:
    """``[x, y]`` (column, row; 0-based movie pixels) of the replaced pixels the record lists
    for polishing (``replaced_pixels``); empty for a record without them."""
    listed = (record.get("replaced_pixels") or {}).get("yx") or []
    yx = np.asarray(listed, dtype=np.int64).reshape(-1, 2)
    return yx[:, ::-1].copy()


def _own_gain(record: Mapping[str, Any]) -> MovieGain | None:
    """The record's ``frame_mdoc_gain``, or None."""
    own = record.get("frame_mdoc_gain")
    return MovieGain.from_json(own) if isinstance(own, Mapping) and own.get("path") else None


def _reference_sha256(record: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``(kind, SHA-256)`` of the record's ``references`` (gain, dark, defects) that name one."""
    references = record.get("references") or {}
    return tuple((kind, str(one["sha256"])) for kind in ("gain", "dark", "defects")
                 if isinstance(one := references.get(kind), Mapping) and one.get("sha256"))


def _defect_file(record: Mapping[str, Any]) -> str | None:
    """The defect file (absolute path) to name as ``rlnMicrographDefectFile``: only when the
    record says RELION is to learn the defects from it (``replaced_pixels.others_in``: no gain
    exported, and a list RELION reads as it is); else its pixels are zeros of the exported gain
    or listed as hot pixels. A file RELION cannot read hangs or aborts polishing."""
    defects = (record.get("references") or {}).get("defects")
    named = (record.get("replaced_pixels") or {}).get("others_in") == "defect_file"
    return str(defects["path"]) if named and isinstance(defects, Mapping) \
        and defects.get("path") else None


def _movie_shape_yx(record: Mapping[str, Any], bin_factor: float) -> tuple[int, int]:
    """The movie's frame size (``movie_shape``); for a record written before it was recorded,
    the output size times the binning (exact unless a side did not divide by it)."""
    shape = record.get("movie_shape")
    if shape is not None:
        return int(shape[0]), int(shape[1])
    out = record["shape"]
    return int(round(out[0] * bin_factor)), int(round(out[1] * bin_factor))


def _image_shape_yx(record: Mapping[str, Any]) -> tuple[int, int] | None:
    """The sums' size (the record's ``shape``), or None."""
    try:
        return int(record["shape"][0]), int(record["shape"][1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _eer_facts(record: Mapping[str, Any]) -> tuple[int | None, int | None, int | None]:
    """``(grouping, upsampling, raw frames)`` of an EER movie's record (its ``eer`` object,
    :func:`correction.io.eer.grouping_record`); Nones for other movies."""
    eer = record.get("eer")
    if not isinstance(eer, Mapping):
        return None, None, None
    per_fraction = [int(n) for n in eer.get("raw_frames_per_fraction") or []]
    group = int(eer.get("group_frames") or (per_fraction[0] if per_fraction else 0))
    raw = int(eer.get("raw_frames") or sum(per_fraction))
    if group < 1 or raw < 1:
        return None, None, None
    return group, int(eer.get("sampling") or 1), raw


def _movie_pixel_A(record: Mapping[str, Any], out_px: float, bin_factor: float) -> float:
    """The movie's pixel (Å, on the grid decoded onto): the record's ``movie_pixel_size``
    (``used_A``), else the output pixel over the bin (a record before it was kept; a
    non-integer bin of a small odd frame bins a little unlike its nominal factor: 0.13 % at
    302 x 250 by 1.5)."""
    used = (record.get("movie_pixel_size") or {}).get("used_A")
    if isinstance(used, (int, float)) and not isinstance(used, bool) and used > 0:
        return float(used)
    return out_px / bin_factor


def movie_motion(record: Mapping[str, Any], motion_path: str | Path) -> MovieMotion:
    """RELION's view of one motion record.

    Raises
    ------
    ValueError
        The record lacks a needed key, or its shift count does not match its frame counts.
    """
    motion_path = Path(motion_path)
    try:
        shifts = np.asarray(record["global_shifts_px"], dtype=np.float64).reshape(-1, 2)
        n_movie = int(record.get("frames_in_movie") or len(shifts))
        throw = int(record.get("throw_frames") or 0)
        trunc = int(record.get("trunc_frames") or 0)
        bin_factor = float((record.get("alignment") or {}).get("bin_factor") or 1.0)
        out_px = float(record["pixel_size_A"])
        shape_yx = _movie_shape_yx(record, bin_factor)
        doses = np.asarray((record.get("dose") or {}).get("per_frame_e_A2") or [],
                           dtype=np.float64)
        pre = float((record.get("dose") or {}).get("pre_exposure_e_A2") or 0.0)
        movie = Path(str(record["movie"])).absolute()
        voltage = float(record["voltage_kV"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{motion_path}: not a usable motion record ({exc})") from None
    if len(shifts) != n_movie - throw - trunc or len(shifts) == 0:
        raise ValueError(f"{motion_path}: {len(shifts)} shifts for {n_movie} frames "
                         f"({throw} thrown, {trunc} truncated)")
    if len(doses) != n_movie:
        doses = np.full(n_movie, float(np.mean(doses)) if len(doses) else 0.0)
    relion = np.full((n_movie, 2), np.nan)
    # RELION: the shift that brings each frame onto the sums, [x, y], unbinned movie pixels
    relion[throw:throw + len(shifts)] = shift_to_apply(shifts) * bin_factor
    outputs = {str(k): motion_path.parent / str(v)
               for k, v in (record.get("outputs") or {}).items()}
    outputs["motion"] = motion_path
    return MovieMotion(
        motion_path=motion_path, movie=movie,
        shape_yx=shape_yx,
        frames_in_movie=n_movie, first_frame=throw + 1, shifts_px=relion,
        frame_doses_e_A2=doses, pre_exposure_e_A2=pre, voltage_kV=voltage,
        movie_pixel_size_A=_movie_pixel_A(record, out_px, bin_factor), output_pixel_size_A=out_px,
        bin_factor=bin_factor, outputs=outputs, hot_pixels_xy=_hot_pixels_xy(record),
        defect_file=_defect_file(record), image_shape_yx=_image_shape_yx(record),
        own_gain=_own_gain(record), reference_sha256=_reference_sha256(record),
        **dict(zip(("eer_grouping", "eer_upsampling", "eer_raw_frames"), _eer_facts(record))),
        **dict(zip(("spherical_aberration_mm", "amplitude_contrast"), recorded_optics(record))))


def accumulated_motion_px(motion: MovieMotion, *, dose_cutoff_e_A2: float = 4.0
                          ) -> tuple[float, float, float]:
    """``(total, early, late)`` accumulated motion in unbinned movie pixels, as RELION computes
    ``rlnAccumMotionTotal/Early/Late`` (module docstring).

    Frames without a shift (thrown) are skipped: each step runs from the last observed shift;
    the first observed frame adds nothing, whatever its shift (RELION's own output has it at 0,
    its origin, so a step into it from 0 is 0 there; here the origin is the sums').
    Only the frames RELION lists count (:func:`relion_frame_count`: an EER's fraction of a
    remainder is none of them; its step was counted, 4.83 px against RELION's 2.80 from the
    movie's own ``S.star``).
    Vectorised: the micrographs STAR file is rewritten with every movie of a session as each
    one finishes, so this runs for all of them each time (a loop over frames took 0.3 s per
    rewrite at 1,000 movies of 40 frames).
    """
    shifts = np.asarray(motion.shifts_px, dtype=np.float64)[:relion_frame_count(motion)]
    dose_at_end = motion.pre_exposure_e_A2 + np.cumsum(motion.frame_doses_e_A2)
    observed = np.flatnonzero(np.all(np.isfinite(shifts), axis=1))
    if observed.size == 0:
        return 0.0, 0.0, 0.0
    at = shifts[observed]
    before = np.vstack([at[:1], at[:-1]])  # the last observed shift (the first: itself)
    step = np.hypot(at[:, 0] - before[:, 0], at[:, 1] - before[:, 1])
    counted = observed >= 1  # RELION counts steps into frames 2, 3 ... (1-based)
    early = dose_at_end[observed] <= dose_cutoff_e_A2 + 1e-9
    return (float(step[counted].sum()), float(step[counted & early].sum()),
            float(step[counted & ~early].sum()))


def relion_frame_count(motion: MovieMotion) -> int:
    """The frames of the movie as RELION counts them: an EER's ``raw // grouping`` fractions
    (:func:`motion_star_blocks`), any other movie's frames."""
    if motion.eer_grouping is not None and motion.eer_raw_frames is not None:
        return min(motion.frames_in_movie, max(1, motion.eer_raw_frames // motion.eer_grouping))
    return motion.frames_in_movie


def output_stem(motion_path: str | Path) -> str:
    """``S.motion.json`` -> ``S``: the stem of a movie's outputs (its name without suffix, or
    ``x_tif`` when an ``x.mrc`` in the same folder has ``x``)."""
    name = Path(motion_path).name
    return name[: -len(MOTION_SUFFIX)] if name.endswith(MOTION_SUFFIX) else Path(name).stem


def motion_star_path(motion_path: str | Path) -> Path:
    """``S.motion.json`` -> ``S.star`` (RELION's ``<root>.star`` beside ``<root>.mrc``)."""
    return Path(motion_path).with_name(output_stem(motion_path) + ".star")


def motion_star_blocks(motion: MovieMotion, *, gain_name: str | None = None) -> dict[str, Any]:
    """The blocks of the per-movie motion STAR (``general``, ``global_shift`` and, when the
    movie had any, ``hot_pixels``); ``gain_name`` is the gain MRC in the movie's orientation
    that polishing reads (``rlnMicrographGainName``).

    Polishing masks the pixels of ``data_hot_pixels`` (``rlnCoordinateX/Y``, 0-based column
    and row of the movie, as ``Micrograph::fillDefectAndHotpixels`` indexes its mask) and of
    ``rlnMicrographDefectFile`` (the defect file the movie was corrected with) on a mask of
    ``rlnImageSizeY`` x ``rlnImageSizeX``, the movie's own frame size (``movie_shape``).

    EER movies (3dem/relion ``src/micrograph_model.cpp``: ``Micrograph::write`` adds
    ``rlnEERUpsampling`` and ``rlnEERGrouping`` for an EER movie, ``Micrograph::read`` takes -1
    when they are absent, and ``Micrograph::setMovie`` renders ``raw frames / grouping``
    fractions, integer division, the raw frames left over dropped): "frames" are fractions
    throughout, as RELION counts them (``src/pipeline_jobs.cpp``, the EER fractionation help:
    "all 'frames' ... (e.g. first and last frame for corrected sum, dose per frame) refer to
    fractions, not raw detector frames"). So ``rlnImageSizeZ`` is RELION's fraction count
    ``raw // grouping`` (motionwatch makes a fraction of a remainder of at least half a group,
    which RELION does not render: its row is left out), ``rlnMicrographDoseRate`` the dose of
    one fraction of ``grouping`` raw frames, ``rlnMicrographStartFrame`` and
    ``rlnMicrographFrameNumber`` count fractions, and ``rlnImageSizeX/Y`` are the rendered
    frame (8K with upsampling 2).
    """
    import pandas as pd

    n_frames = relion_frame_count(motion)
    dose_rate = float(np.mean(motion.frame_doses_e_A2))
    eer = motion.eer_grouping is not None and motion.eer_raw_frames is not None
    if eer:
        dose_rate = (float(np.sum(motion.frame_doses_e_A2)) / motion.eer_raw_frames
                     * motion.eer_grouping)
    general = {
        "rlnImageSizeX": motion.shape_yx[1], "rlnImageSizeY": motion.shape_yx[0],
        "rlnImageSizeZ": n_frames, "rlnMicrographMovieName": str(motion.movie),
        "rlnMicrographBinning": motion.bin_factor,
        "rlnMicrographOriginalPixelSize": motion.movie_pixel_size_A,
        "rlnMicrographDoseRate": dose_rate,
        "rlnMicrographPreExposure": motion.pre_exposure_e_A2, "rlnVoltage": motion.voltage_kV,
        "rlnMicrographStartFrame": motion.first_frame,
    }
    if eer:
        general["rlnEERUpsampling"] = int(motion.eer_upsampling or 1)
        general["rlnEERGrouping"] = int(motion.eer_grouping)
    general["rlnMotionModelVersion"] = 0
    if gain_name:
        general["rlnMicrographGainName"] = gain_name
    if motion.defect_file:
        general["rlnMicrographDefectFile"] = motion.defect_file
    shifts = held_before_first_summed(motion.shifts_px, motion.first_frame)
    shifts = np.where(np.isfinite(shifts), shifts, NOT_OBSERVED)[:n_frames]
    table = pd.DataFrame({
        "rlnMicrographFrameNumber": np.arange(1, n_frames + 1),
        "rlnMicrographShiftX": shifts[:, 0], "rlnMicrographShiftY": shifts[:, 1]})
    blocks = {"general": general, "global_shift": table}
    if len(motion.hot_pixels_xy):
        blocks["hot_pixels"] = pd.DataFrame({
            "rlnCoordinateX": motion.hot_pixels_xy[:, 0].astype(np.float64),
            "rlnCoordinateY": motion.hot_pixels_xy[:, 1].astype(np.float64)})
    return blocks


def held_before_first_summed(shifts_px: np.ndarray, first_frame: int) -> np.ndarray:
    """``shifts_px`` (frames x 2, NaN where not summed) with the frames before the first summed
    one (1-based ``first_frame``: ``--throw``) given its shift. RELION's ``getShiftAt`` takes
    a frame before the first observed one as 0 (its own origin is that frame); with the sums'
    origin here a thrown frame at 0 was several pixels off its neighbour in polishing's
    starting tracks. Frames after the last summed one (``--trunc``) stay not observed: RELION
    holds the last observed shift for them itself."""
    held = np.array(shifts_px, dtype=np.float64, copy=True)
    first = int(first_frame) - 1
    if 0 < first < len(held) and np.all(np.isfinite(held[first])):
        held[:first] = held[first]
    return held


def star_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A STAR loop (DataFrame) of ``rows``, a value missing from a row as NaN/None. Text columns
    are kept as Python strings (object dtype): pandas' Arrow-backed strings refuse a file name
    that is not UTF-8."""
    import pandas as pd

    columns = list(dict.fromkeys(label for row in rows for label in row))
    data = {}
    for label in columns:
        values = [row.get(label) for row in rows]
        data[label] = pd.Series(values, dtype=object if any(isinstance(v, str) for v in values)
                                else None)
    return pd.DataFrame(data)


def _not_utf8(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


#: First characters that make RELION's STAR reader take a value for something else: before a
#: loop's first row, a line starting with ``_`` is a label and one starting with ``;`` or ``#``
#: is skipped (``MetaDataTable::readStarLoop``); a value starting with a quote is read as
#: quoted, up to its closing quote (``nextTokenInSTAR``). A value so named (a folder ``_a/``)
#: is quoted.
_STAR_SPECIAL_FIRST = ("_", ";", "#", '"', "'")
#: STAR's reserved words (any case): a row starting with ``data_`` is a new block to RELION's
#: reader and ``starfile``'s (``data_0001.mrc``: the table ended before it, and motionwatch's
#: own version line went in before it); the others end or open loops and frames
_STAR_RESERVED_FIRST = ("data_", "loop_", "save_", "global_", "stop_")


def _needs_quotes(value: Any) -> bool:
    """A value quoted in STAR files: one starting with :data:`_STAR_SPECIAL_FIRST` or a
    reserved word (:data:`_STAR_RESERVED_FIRST`), or holding a ``#`` anywhere
    (``grid1/#1_002_DW.mrc``: RELION reads it as it is, but ``starfile``, through pandas, cut
    the line there, and the whole file failed to read)."""
    return isinstance(value, str) and (value.startswith(_STAR_SPECIAL_FIRST) or "#" in value
                                       or value.lower().startswith(_STAR_RESERVED_FIRST))


def _spaced_with_quote(value: Any) -> bool:
    """A value with a space and a ``"``: ``starfile`` puts it between ``"``, and RELION ends a
    quoted value at a ``"`` followed by a space (two values); it is quoted by ``'``."""
    return isinstance(value, str) and " " in value and '"' in value


def _quoted(value: str) -> str:
    """``value`` between double quotes, or single ones where it holds a double quote (RELION
    reads a quoted value up to the quote that opened it)."""
    return f"'{value}'" if '"' in value else f'"{value}"'


_TOKEN = re.compile(r"@motionwatch-name-(\d+)@")


def _shield_names(blocks: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``blocks`` with each text that is not UTF-8 (``starfile`` maps cells through pandas'
    Arrow-backed strings, which refuse it) or that must be quoted (:data:`_STAR_SPECIAL_FIRST`)
    replaced by a plain token (:data:`_TOKEN`, numbered), and the text of each, by number."""
    import pandas as pd

    names: list[str] = []

    def shield(value: Any) -> Any:
        if not (_not_utf8(value) or _needs_quotes(value) or _spaced_with_quote(value)
                or (isinstance(value, str) and "@motionwatch-name-" in value)):
            return value
        # starfile quotes a text with a space; the token has none, so quote it here
        names.append(_quoted(value) if " " in value or _needs_quotes(value)
                     or "@motionwatch-name-" in value else value)
        return f"@motionwatch-name-{len(names) - 1}@"

    shielded: dict[str, Any] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            text = [c for c in block.columns  # object, or pandas 3's own text dtype
                    if block[c].dtype == object or pd.api.types.is_string_dtype(block[c])]
            shielded[name] = block.assign(**{c: block[c].map(shield) for c in text})
        elif isinstance(block, Mapping):
            shielded[name] = {k: shield(v) for k, v in block.items()}
        else:
            shielded[name] = block
    return shielded, names


#: Characters no STAR value can hold: a line break ends RELION's row (it reads a loop line by
#: line) and a tab splits it, quoted or not; ``starfile`` refuses to write either.
_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnwritableStarValue(ValueError):
    """A value of a simple STAR block holds a tab, a line break or another control character."""


def _unwritable(value: Any) -> bool:
    return isinstance(value, str) and _LINE_CONTROL.search(value) is not None


def _writable_rows(path: Path, blocks: Mapping[str, Any], left_out: list[str] | None
                   ) -> dict[str, Any]:
    """``blocks`` without the loop rows holding an unwritable value (each such value is added to
    ``left_out``); :class:`UnwritableStarValue` for one in a simple block."""
    import pandas as pd

    kept: dict[str, Any] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            bad = np.zeros(len(block), dtype=bool)
            for column in block.columns:
                if block[column].dtype == object or pd.api.types.is_string_dtype(block[column]):
                    bad |= block[column].map(_unwritable).to_numpy(dtype=bool)
            if bad.any() and left_out is not None:
                left_out.extend(next(v for v in row if _unwritable(v))
                                for row in block[bad].itertuples(index=False))
            kept[name] = block[~bad] if bad.any() else block
        elif isinstance(block, Mapping) and any(_unwritable(v) for v in block.values()):
            value = next(v for v in block.values() if _unwritable(v))
            raise UnwritableStarValue(f"{str(path)!r}: {value!r} holds a tab or a line break, "
                                      "which a STAR value cannot hold")
        else:
            kept[name] = block
    return kept


def write_star(path: str | Path, blocks: Mapping[str, Any], *,
               left_out: list[str] | None = None, first_line: str | None = None) -> Path:
    """Write STAR ``blocks`` (name -> DataFrame for a loop, dict for a simple block) to ``path``
    atomically, each block preceded by ``# version 50001``; file names that are not UTF-8
    as the bytes they have on disk.

    A loop row with a value holding a tab or a line break (a movie named so) is left out, so
    that one such name never keeps a folder's STAR from being written; the value is added to
    ``left_out`` for the caller to say. Such a value in a simple block raises
    :class:`UnwritableStarValue` (nothing is written). ``first_line``: a comment line put
    first (a stamp)."""
    import starfile

    from correction.write import atomic_write, text_bytes

    # a simple block's floats as its loops' are (6 decimals, RELION's own %12.6f): not the
    # float noise of repr (rlnMicrographDoseRate 0.49999999999999994)
    blocks = {name: ({k: round(v, 6) if isinstance(v, float) and math.isfinite(v) else v
                      for k, v in block.items()} if isinstance(block, Mapping) else block)
              for name, block in blocks.items()}
    shielded, names = _shield_names(_writable_rows(Path(path), blocks, left_out))
    text = starfile.to_string(shielded)
    if names:  # in one pass (a replace per name was quadratic: 200 s for 16,000 movies)
        text = _TOKEN.sub(lambda m: names[int(m.group(1))], text)
    lines = [] if first_line is None else [first_line, ""]
    for line in text.splitlines():
        if line.startswith("data_"):
            lines.extend([RELION_VERSION_LINE, ""])
        lines.append(line)
    payload = text_bytes("\n".join(lines) + "\n")  # names as they are on disk
    return atomic_write(Path(path), lambda fh: fh.write(payload))


def write_motion_star(motion: MovieMotion, *, gain_name: str | None = None) -> Path:
    """Write ``S.star`` beside ``S.motion.json``, stamped (:data:`MOTION_STAR_STAMP`);
    returns its path."""
    return write_star(motion_star_path(motion.motion_path),
                      motion_star_blocks(motion, gain_name=gain_name),
                      first_line=MOTION_STAR_STAMP)


def motion_star_gain_name(path: str | Path) -> str | None:
    """The ``rlnMicrographGainName`` a motion STAR written here names (what only its writer
    knew: kept when it is written again); None without one or a readable file."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as star:
            for line in star:
                if line.startswith("_rlnMicrographGainName"):
                    value = line.split(None, 1)[1].strip() if len(line.split()) > 1 else ""
                    return value.strip("\"'") or None
                if line.startswith("data_global_shift"):
                    return None
    except OSError:
        return None
    return None


def motion_star_stamped(path: str | Path, motion: MovieMotion | None = None) -> bool:
    """Whether the motion STAR at ``path`` follows this release's convention: it starts with
    its stamp, or, for a ``motion`` with no frame thrown, with the stamp before thrown frames
    held the first summed one's shift (the same file then). One written before the shifts'
    convention changed has none: written again from its record."""
    try:
        with open(path, "rb") as star:
            head = star.read(len(MOTION_STAR_STAMP) + 1).split(b"\n", 1)[0].rstrip(b"\r")
    except OSError:
        return False
    if head == MOTION_STAR_STAMP.encode():
        return True
    return (motion is not None and motion.first_frame <= 1
            and head == _STAMP_BEFORE_THROWN_HELD.encode())


def relative_to(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` when inside it (RELION project paths), else absolute."""
    path, root = Path(path).absolute(), Path(root).absolute()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


OpticsKey = tuple[float, float, float, float, float]


def optics_key(motion: MovieMotion, optics: RelionOptics | None = None) -> OpticsKey:
    """What tells optics groups apart among the movies: (voltage, movie pixel size, output
    pixel size, Cs, amplitude contrast), rounded so that float noise of a record does not
    split a group. Cs and amplitude contrast are those the movie's record keeps, else the
    writer's ``optics`` (a record written before they were recorded)."""
    optics = optics or RelionOptics()
    cs = (motion.spherical_aberration_mm if motion.spherical_aberration_mm is not None
          else optics.spherical_aberration_mm)
    ac = (motion.amplitude_contrast if motion.amplitude_contrast is not None
          else optics.amplitude_contrast)
    return _rounded_key(motion.voltage_kV, motion.movie_pixel_size_A, motion.output_pixel_size_A,
                        cs, ac)


def _rounded_key(voltage_kV: float, movie_pixel_A: float, output_pixel_A: float, cs_mm: float,
                 amplitude_contrast: float) -> OpticsKey:
    return (round(voltage_kV, 3), round(movie_pixel_A, 5), round(output_pixel_A, 5),
            round(cs_mm, 5), round(amplitude_contrast, 5))


def _first_loop_rows(path: Path) -> list[dict[str, str]]:
    """The rows (label -> text) of the first loop of a STAR file written here (its first data
    block only is read: the optics table of ``corrected_micrographs.star`` is a few lines
    above thousands of micrographs); [] when there is none or it cannot be read."""
    import shlex

    labels: list[str] = []
    rows: list[dict[str, str]] = []
    blocks = 0
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                text = line.strip()
                if text.startswith("data_"):
                    blocks += 1
                    if blocks > 1:
                        break
                elif text.startswith("_"):
                    labels.append(text.split()[0][1:])
                elif text and labels and not text.startswith("#"):
                    values = shlex.split(text)
                    if len(values) == len(labels):
                        rows.append(dict(zip(labels, values)))
    except (OSError, ValueError):
        return []
    return rows


def written_optics_order(path: str | Path, *, output_pixel_label: str = "rlnMicrographPixelSize"
                         ) -> list[OpticsKey]:
    """The optics keys of the STAR file at ``path`` (as written here before) in the order of
    their group numbers: ``rlnOpticsGroup`` of ``corrected_micrographs.star``'s optics table,
    or the number ending ``rlnOpticsGroupName`` in ``corrected_tilt_series.star``'s global
    table (``output_pixel_label`` its ``rlnTomoTiltSeriesPixelSize``); [] without a file."""
    keyed = []
    for row in _first_loop_rows(Path(path)):
        try:
            key = _rounded_key(float(row["rlnVoltage"]),
                               float(row["rlnMicrographOriginalPixelSize"]),
                               float(row[output_pixel_label]),
                               float(row["rlnSphericalAberration"]),
                               float(row["rlnAmplitudeContrast"]))
            number = row.get("rlnOpticsGroup")
            if number is None:
                digits = re.search(r"(\d+)$", row.get("rlnOpticsGroupName", ""))
                number = digits.group(1) if digits else 0
            keyed.append((int(number), key))
        except (KeyError, ValueError):
            continue
    return list(dict.fromkeys(key for _, key in sorted(keyed)))


def optics_group_names(name: str, count: int) -> list[str]:
    """Names of ``count`` optics groups: ``name`` alone for one group; else ``name`` without
    its trailing digits followed by 1, 2, ... (``optics1``, ``optics2``, ...)."""
    if count == 1:
        return [name]
    base = name.rstrip("0123456789") or name
    return [f"{base}{i}" for i in range(1, count + 1)]


def optics_keys_in_order(motions: Iterable[MovieMotion], optics: RelionOptics | None = None,
                         earlier: Sequence[OpticsKey] = ()) -> list[OpticsKey]:
    """The distinct :func:`optics_key` of ``motions``: first those of ``earlier`` (the order of
    the file written before, :func:`written_optics_order`) that still have movies, in that
    order, then the others in the order their first movie was corrected (its motion record
    written; ties and unreadable records by the key itself). A movie of new optics joining a
    folder gets the next number, and the groups already numbered keep theirs (RELION jobs run
    on an earlier file still agree), also when a movie is corrected again (its record newer
    than the other groups') or the folder was copied without its times; only a group left
    without movies gives its number up to the groups after it."""
    first: dict[OpticsKey, tuple[int, int]] = {}
    for m in motions:
        try:
            written = (0, os.stat(m.motion_path).st_mtime_ns)
        except OSError:
            written = (1, 0)
        key = optics_key(m, optics)
        first[key] = min(first.get(key, written), written)
    kept = [key for key in dict.fromkeys(earlier) if key in first]
    return kept + sorted((k for k in first if k not in kept), key=lambda k: (first[k], k))


def _optics_groups(motions: Sequence[MovieMotion], optics: RelionOptics,
                   earlier: Sequence[OpticsKey] = ()) -> tuple[dict[OpticsKey, int], Any]:
    """One optics group per distinct (voltage, movie pixel size, output pixel size, Cs,
    amplitude contrast), numbered 1, 2, ... as the file written before (``earlier``) numbered
    them, new ones in the order of their first movie (:func:`optics_keys_in_order`), and the
    ``data_optics`` table. Columns as RELION's motion correction writes them
    (3dem/relion ``src/motioncorr_runner.cpp``, ``generateLogFilePDFAndWriteStarFiles``: the
    input optics table with ``rlnMicrographPixelSize`` = original pixel size x binning added;
    each micrograph's ``rlnOpticsGroup`` names its row). Cs and amplitude contrast are those
    each movie's record keeps (the options of the writer that corrected it), else this
    writer's (``--spherical-aberration``, ``--amplitude-contrast``)."""
    import pandas as pd

    keys = optics_keys_in_order(motions, optics, earlier)
    ids = {key: i + 1 for i, key in enumerate(keys)}
    table = pd.DataFrame({
        "rlnOpticsGroupName": optics_group_names(optics.optics_group_name, len(keys)),
        "rlnOpticsGroup": [ids[k] for k in keys],
        "rlnMicrographOriginalPixelSize": [k[1] for k in keys],
        "rlnVoltage": [k[0] for k in keys],
        "rlnSphericalAberration": [k[3] for k in keys],
        "rlnAmplitudeContrast": [k[4] for k in keys],
        "rlnMicrographPixelSize": [k[2] for k in keys]})
    return ids, table


def single_particle_blocks(out_dir: str | Path, motions: Iterable[MovieMotion],
                           optics: RelionOptics) -> dict[str, Any] | None:
    """Blocks of ``corrected_micrographs.star`` (None without movies), rows sorted by name,
    one optics group per distinct optics (:func:`_optics_groups`)."""
    motions = sorted(motions, key=lambda m: str(m.motion_path))
    if not motions:
        return None
    group_of, optics_table = _optics_groups(
        motions, optics, written_optics_order(Path(out_dir) / SINGLE_PARTICLE_STAR))
    rows = []
    for m in motions:
        total, early, late = accumulated_motion_px(
            m, dose_cutoff_e_A2=optics.motionstats_dose_cutoff_e_A2)
        name = m.outputs.get("dw") or m.outputs["sum"]
        row = {"rlnMicrographName": relative_to(name, out_dir)}
        if "dw" in m.outputs and "sum" in m.outputs:
            row["rlnMicrographNameNoDW"] = relative_to(m.outputs["sum"], out_dir)
        for kind, label in (("even", "rlnMicrographNameEven"), ("odd", "rlnMicrographNameOdd")):
            if kind in m.outputs:
                row[label] = relative_to(m.outputs[kind], out_dir)
        row.update({"rlnMicrographMetadata": relative_to(motion_star_path(m.motion_path), out_dir),
                    "rlnOpticsGroup": group_of[optics_key(m, optics)],
                    "rlnAccumMotionTotal": total,
                    "rlnAccumMotionEarly": early, "rlnAccumMotionLate": late})
        rows.append(row)
    return {"optics": optics_table, "micrographs": star_table(rows)}


def motion_records_in(folder: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` of every readable ``*.motion.json`` directly in ``folder``."""
    import json

    out = []
    for path in sorted(Path(folder).glob("*" + MOTION_SUFFIX)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            out.append((path, record))
    return out


def write_single_particle_star(out_dir: str | Path,
                               records: Iterable[tuple[str | Path, Mapping[str, Any]]],
                               optics: RelionOptics | None = None, *,
                               motion_stars: bool = True,
                               left_out: list[str] | None = None) -> Path | None:
    """Write ``OUT/corrected_micrographs.star`` for the movies of ``records`` outside tilt series.

    Parameters
    ----------
    out_dir : str or Path
        The output folder (RELION project folder): the file goes there, paths are relative to it.
    records : iterable of (path, dict)
        Motion records and where they are (``S.motion.json``); records with a ``tilt`` object
        (tilt-series movies) and unusable records are left out.
    optics : RelionOptics, optional
        Defaults when None.
    motion_stars : bool
        Also write the ``S.star`` (its ``rlnMicrographMetadata``) of each movie that has none.
        An existing one is never replaced: another writer (the daemon, or ``correct`` with its
        gain) put it there, with what only that writer knows (``rlnMicrographGainName``); the
        writer of a movie writes its STAR itself (:func:`write_motion_star`).
    left_out : list, optional
        Gets the name of each movie left out because a name of it holds a tab or a line break
        (:func:`write_star`).

    Returns
    -------
    Path or None
        The file written; None when no movie qualifies (nothing is written).
    """
    optics = optics or RelionOptics()
    motions = []
    for path, record in records:
        if record.get("tilt"):
            continue
        try:
            motion = movie_motion(record, path)
        except ValueError:
            continue
        if "sum" not in motion.outputs and "dw" not in motion.outputs:
            continue
        if motion_stars and not motion_star_path(motion.motion_path).exists():
            try:
                write_motion_star(motion)
            except UnwritableStarValue:
                if left_out is not None:
                    left_out.append(str(motion.movie))
                continue
        motions.append(motion)
    blocks = single_particle_blocks(out_dir, motions, optics)
    if blocks is None:
        return None
    return write_star(Path(out_dir) / SINGLE_PARTICLE_STAR, blocks, left_out=left_out)

