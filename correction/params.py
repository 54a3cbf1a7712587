"""Frozen parameter dataclasses of the correction library.

Every value carries its unit in its name; ``__post_init__`` rejects bad values with a
:class:`~correction.errors.ParameterError` naming the field, the value and the unit.
:meth:`CorrectionParams.fingerprint` hashes everything that changes a result, for the daemon's
state keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import ParameterError
from .frame_integration import FrameIntegration

__all__ = [
    "Flip",
    "EerGain",
    "EER_GAIN_MODES",
    "flip_name",
    "pixel_size_problem",
    "ReadParams",
    "GainParams",
    "AlignParams",
    "DoseParams",
    "CorrectionParams",
]

Flip = Literal["none", "updown", "leftright"]
#: How the gain file is applied to an EER movie (:func:`correction.gain.reference_for_movie`)
EerGain = Literal["multiplicative", "relion", "reciprocal"]
EER_GAIN_MODES: tuple[str, ...] = ("multiplicative", "relion", "reciprocal")

#: MotionCor2's ``-FlipGain`` number -> motionwatch's name (RELION: 1 = ``flipY``, 2 = ``flipX``)
_FLIP_BY_NUMBER: dict[int, Flip] = {0: "none", 1: "updown", 2: "leftright"}


def flip_name(value: object) -> Flip:
    """The gain flip as a name, from a name or MotionCor2's ``-FlipGain`` number.

    Parameters
    ----------
    value : {"none", "updown", "leftright", 0, 1, 2, "0", "1", "2"}
        0 = none, 1 = upside down (rows reversed), 2 = left-right (columns reversed), as
        MotionCor2's ``-FlipGain``.

    Raises
    ------
    ParameterError
        Any other value, quoted.
    """
    if isinstance(value, str) and value.strip() in ("none", "updown", "leftright"):
        return value.strip()  # type: ignore[return-value]
    number = value.strip() if isinstance(value, str) else value
    if isinstance(number, str) and number in ("0", "1", "2"):
        number = int(number)
    if not isinstance(number, bool) and isinstance(number, numbers.Integral) \
            and int(number) in _FLIP_BY_NUMBER:
        return _FLIP_BY_NUMBER[int(number)]
    raise ParameterError(f"flip must be none, updown, leftright or MotionCor2's -FlipGain "
                         f"0, 1, 2, got {value!r}")


_MIN_VOLTAGE_KV, _MAX_VOLTAGE_KV = 60.0, 400.0  # accepted acceleration voltages
#: accepted pixel sizes (Å): no detector's is finer than 0.1 Å (below: a value in nm)
_MIN_PIXEL_A, _MAX_PIXEL_A = 0.1, 1000.0


def pixel_size_problem(pixel_A: float) -> str | None:
    """Why ``pixel_A`` (Å) is no pixel size a detector has, or None: outside 0.1-1000 Å (below,
    a value in nm), or not finite."""
    if _MIN_PIXEL_A <= pixel_A <= _MAX_PIXEL_A:
        return None
    finite = "" if math.isfinite(pixel_A) else "a finite number of "
    return (f"must be {finite}{_MIN_PIXEL_A:g}-{_MAX_PIXEL_A:g} Å, got {pixel_A}"
            + (" (a value in nm? 0.83 Å is 0.083 nm)" if 0 < pixel_A < _MIN_PIXEL_A else ""))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)


#: what each annotation of the parameter classes accepts (``None`` besides, where it says so)
_KINDS: dict[str, tuple[str, Any]] = {
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "int": ("a whole number", lambda v: isinstance(v, numbers.Integral)
            and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, (bool, np.bool_))),
    "Path": ("a path", lambda v: isinstance(v, (str, os.PathLike))),
}


def _require_types(params: object) -> None:
    """Raise :class:`ParameterError` naming the field, the value and the kind it must be, for a
    value of another kind (``pixel_size_A="0.83"`` read from a text file, ``patches_x=2.5``):
    they failed later, inside numpy, as a ``TypeError`` naming nothing."""
    for f in fields(params):  # type: ignore[arg-type]
        annotation = str(f.type)
        kinds = [k.strip() for k in annotation.split("|")]
        base = [k for k in kinds if k != "None"]
        if len(base) != 1 or base[0] not in _KINDS:
            continue  # literals, tuples, nested parameters: checked by their own rules
        value = getattr(params, f.name)
        what, accepts = _KINDS[base[0]]
        if value is None and "None" in kinds:
            continue
        _require(accepts(value), f"{f.name} must be {what}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ReadParams:
    """How a movie is read and resampled to the output grid.

    Attributes
    ----------
    pixel_size_A : float or None
        Pixel size of the *movie as stored* in Å; ``None`` takes it from the header.
    bin_factor : float
        Fourier binning of every frame (super-resolution to physical pixels); 1 = none,
        non-integer allowed. Output pixel size = ``pixel_size_A * bin_factor``.
    throw_frames, trunc_frames : int
        Frames skipped at the start / end of the movie (their dose still counts).
    eer_group_frames : int or None
        EER raw frames summed into one fraction; ``None`` uses ``eer_dose_per_fraction_e_A2``
        or, failing that, 40 raw frames per fraction.
    eer_dose_per_fraction_e_A2 : float or None
        Target dose per EER fraction (e/Å²), used when ``eer_group_frames`` is None.
    eer_sampling : int
        1 decodes EER on the 4K grid, 2 on the 8K super-resolution grid.
    frame_integration : FrameIntegration or None
        MotionCor2's frame integration file (:mod:`correction.frame_integration`): how an EER
        movie's raw frames are grouped into fractions, instead of ``eer_group_frames`` and
        ``eer_dose_per_fraction_e_A2``; a movie of other frames takes it only when it sums
        one raw frame per fraction (its doses alone).
    """

    pixel_size_A: float | None = None
    bin_factor: float = 1.0
    throw_frames: int = 0
    trunc_frames: int = 0
    eer_group_frames: int | None = None
    eer_dose_per_fraction_e_A2: float | None = None
    eer_sampling: int = 1
    frame_integration: FrameIntegration | None = None

    def __post_init__(self) -> None:
        _require_types(self)
        if self.pixel_size_A is not None and (
                problem := pixel_size_problem(self.pixel_size_A)) is not None:
            raise ParameterError(f"pixel_size_A {problem}")
        _require(1.0 <= self.bin_factor < math.inf,
                 f"bin_factor must be a finite number >= 1, got {self.bin_factor}")
        _require(self.throw_frames >= 0, f"throw_frames must be >= 0, got {self.throw_frames}")
        _require(self.trunc_frames >= 0, f"trunc_frames must be >= 0, got {self.trunc_frames}")
        _require(self.eer_group_frames is None or self.eer_group_frames >= 1,
                 f"eer_group_frames must be >= 1, got {self.eer_group_frames}")
        _require(self.eer_dose_per_fraction_e_A2 is None or self.eer_dose_per_fraction_e_A2 > 0,
                 f"eer_dose_per_fraction_e_A2 must be > 0 e/Å², got {self.eer_dose_per_fraction_e_A2}")
        _require(self.eer_sampling in (1, 2), f"eer_sampling must be 1 or 2, got {self.eer_sampling}")
        _require(self.frame_integration is None
                 or (self.eer_group_frames is None and self.eer_dose_per_fraction_e_A2 is None),
                 "give one of frame_integration, eer_group_frames and "
                 "eer_dose_per_fraction_e_A2")


@dataclass(frozen=True, slots=True)
class GainParams:
    """Gain, dark and defect references and how they are oriented.

    ``corrected = (raw - dark) * gain``. Orientation means exactly MotionCor2's flags, as RELION
    implements them (:func:`correction.gain.orient`): ``rotate_quarter_turns`` K is
    ``-RotGain K``, a quarter turn moving ``gain[y, x]`` to ``out[x, ny - 1 - y]`` (clockwise
    as displayed with row 0 at the top; ``numpy.rot90(gain, k=-K)``); THEN ``flip`` is
    ``-FlipGain``: ``"none"``/0, ``"updown"``/1 (rows reversed), ``"leftright"``/2 (columns
    reversed). The number is accepted and stored as the name. The dark reference gets the same
    orientation; a defect list or map is in the movie's grid and is not turned (as MotionCor3's
    ``-DefectMap``, "the same dimension and orientation as the input movie frame").

    ``eer_gain`` says how the gain file is applied to an EER movie (other movies: always
    multiplicative): ``"multiplicative"`` (default) as MotionCor2/3's ``-Gain``, any file;
    ``"relion"`` as RELION's ``EERRenderer::loadEERGain``: a ``.gain`` file is multiplicative,
    any other (MRC, TIFF) is a flat-field count image applied as its reciprocal, ``mean /
    gain``; ``"reciprocal"``: ``mean / gain`` for any file
    (:func:`correction.gain.reference_for_movie`).

    Changed meaning: before this convention, ``rotate_quarter_turns`` turned the other way
    (``numpy.rot90(gain, k=K)``), so a setting of 1 is now the old 3 and vice versa; 0 and 2
    and the flips are unchanged.
    """

    gain_path: Path | None = None
    dark_path: Path | None = None
    rotate_quarter_turns: int = 0
    flip: Flip = "none"
    defects_path: Path | None = None
    hot_pixel_sigma: float = 8.0
    detect_hot_pixels: bool = True
    eer_gain: EerGain = "multiplicative"

    def __post_init__(self) -> None:
        _require_types(self)
        _require(self.eer_gain in EER_GAIN_MODES,
                 f"eer_gain must be one of {', '.join(EER_GAIN_MODES)}, got {self.eer_gain!r}")
        _require(self.rotate_quarter_turns in (0, 1, 2, 3),
                 f"rotate_quarter_turns must be 0-3, got {self.rotate_quarter_turns}")
        object.__setattr__(self, "flip", flip_name(self.flip))  # 0/1/2 -> the name
        _require(self.hot_pixel_sigma > 0, f"hot_pixel_sigma must be > 0, got {self.hot_pixel_sigma}")

    def files(self) -> tuple[tuple[str, Path], ...]:
        """``(kind, path)`` of the reference files named (``gain``, ``dark``, ``defects``, in
        the order of a motion record's ``references``)."""
        return tuple((kind, Path(path)) for kind, path in (
            ("gain", self.gain_path), ("dark", self.dark_path), ("defects", self.defects_path))
            if path is not None)


@dataclass(frozen=True, slots=True)
class AlignParams:
    """Whole-frame and patch alignment.

    Attributes
    ----------
    align_size_px : int
        Short side of the Fourier-cropped copy the correlations are computed on (pixels).
    bfactor_px2 : float
        Starting B-factor of the low-pass applied to correlations (in output pixels², on the
        ``exp(-B k²/4)`` convention with k in 1/pixel); lowered over the iterations.
    max_shift_px : float
        Search window: largest displacement of a frame from the reference (output pixels).
    max_iterations : int
        Upper bound on refinement iterations.
    tolerance_px : float
        Iteration stops when no frame's shift changed by more than this (output pixels).
    group_frames : int
        Consecutive frames summed for the correlation (low dose); shifts are still per frame.
    patch_group_frames : int or None
        The same for the patches' correlations (MotionCor2's second ``-Group`` value); None:
        ``group_frames`` (:attr:`patch_group`).
    patches_x, patches_y : int
        Patch grid for local motion; 0 or 1 in either means global only.
    """

    align_size_px: int = 1024
    bfactor_px2: float = 500.0
    max_shift_px: float = 80.0
    max_iterations: int = 10
    tolerance_px: float = 0.02
    group_frames: int = 1
    patch_group_frames: int | None = None
    patches_x: int = 5
    patches_y: int = 5

    def __post_init__(self) -> None:
        _require_types(self)
        _require(self.align_size_px >= 64, f"align_size_px must be >= 64 px, got {self.align_size_px}")
        _require(self.bfactor_px2 >= 0, f"bfactor_px2 must be >= 0 px², got {self.bfactor_px2}")
        _require(0 < self.max_shift_px < math.inf,
                 f"max_shift_px must be a finite number > 0 px, got {self.max_shift_px}")
        _require(self.max_iterations >= 1, f"max_iterations must be >= 1, got {self.max_iterations}")
        _require(self.tolerance_px > 0, f"tolerance_px must be > 0 px, got {self.tolerance_px}")
        _require(self.group_frames >= 1, f"group_frames must be >= 1, got {self.group_frames}")
        _require(self.patch_group_frames is None or self.patch_group_frames >= 1,
                 f"patch_group_frames must be >= 1, got {self.patch_group_frames}")
        negative = [f"{axis} is {count}" for axis, count in
                    (("NX (across x)", self.patches_x), ("NY (down y)", self.patches_y))
                    if count < 0]
        _require(not negative, f"patches must be >= 0 on each axis: {', '.join(negative)}")

    @property
    def patch_group(self) -> int:
        """Frames per group for the patches' correlations (``patch_group_frames``, else
        ``group_frames``)."""
        return self.group_frames if self.patch_group_frames is None else self.patch_group_frames

    @property
    def local_enabled(self) -> bool:
        """True when a patch grid is asked for (more than one patch on each axis)."""
        return self.patches_x > 1 and self.patches_y > 1


@dataclass(frozen=True, slots=True)
class DoseParams:
    """Exposure of one movie and the dose-weighting model.

    At most one of ``dose_per_frame_e_A2``, ``total_dose_e_A2`` or ``frame_doses_e_A2`` gives the
    dose (all in e/Å² on the specimen, counted over *all* frames of the movie, including frames
    skipped with throw/trunc). None of them means "not known yet" (:attr:`known` is False): the
    daemon supplies the dose per movie from its metadata (a SerialEM mdoc, the EER header), and
    correcting a movie whose dose is still unknown fails (:func:`correction.dose.frame_doses_e_A2`).
    ``pre_exposure_e_A2`` is the dose the specimen had received before this movie (earlier tilts
    of its series).

    ``frame_doses_per`` says what ``frame_doses_e_A2`` lists: ``"frame"``, one dose per frame of
    the movie as read; ``"raw_frame"``, one dose per raw frame of the file (SerialEM's
    ``FrameDosesAndNumber`` of an EER movie counts raw EER frames), summed into the frames
    (EER fractions) they are read into.
    """

    voltage_kV: float = 300.0
    dose_per_frame_e_A2: float | None = None
    total_dose_e_A2: float | None = None
    frame_doses_e_A2: tuple[float, ...] | None = None
    pre_exposure_e_A2: float = 0.0
    frame_doses_per: Literal["frame", "raw_frame"] = "frame"

    def __post_init__(self) -> None:
        _require_types(self)
        doses = self.frame_doses_e_A2
        if doses is not None:  # a tuple of floats whatever was given (a list, an array, numpy
            # floats): hashable, and one fingerprint for one list of doses
            try:  # taken once: a generator is read here, and only here
                values = None if isinstance(doses, (str, bytes)) else tuple(doses)
            except TypeError:  # not iterable (a number, a 0-d array)
                values = None
            if values is None or not all(isinstance(v, (int, float, np.integer, np.floating))
                                         and not isinstance(v, (bool, np.bool_))
                                         for v in values):
                raise ParameterError(f"frame_doses_e_A2 must be a sequence of doses (e/Å²), "
                                     f"got {doses!r}")
            object.__setattr__(self, "frame_doses_e_A2", tuple(float(v) for v in values))
        for name in ("voltage_kV", "dose_per_frame_e_A2", "total_dose_e_A2", "pre_exposure_e_A2"):
            value = getattr(self, name)
            _require(value is None or math.isfinite(value),
                     f"{name} must be a finite number, got {value}")
        # cryo-EM microscopes run at 100-300 kV; far outside is a unit mistake (V, MV)
        _require(_MIN_VOLTAGE_KV <= self.voltage_kV <= _MAX_VOLTAGE_KV,
                 f"voltage_kV must be {_MIN_VOLTAGE_KV:g}-{_MAX_VOLTAGE_KV:g} kV, got "
                 f"{self.voltage_kV}")
        _require(self.frame_doses_e_A2 is None
                 or all(math.isfinite(v) for v in self.frame_doses_e_A2),
                 "frame_doses_e_A2 must be finite numbers")
        given = [v is not None for v in (self.dose_per_frame_e_A2, self.total_dose_e_A2,
                                         self.frame_doses_e_A2)]
        _require(sum(given) <= 1,
                 "give at most one of dose_per_frame_e_A2, total_dose_e_A2, frame_doses_e_A2")
        _require(self.frame_doses_per in ("frame", "raw_frame"),
                 f"frame_doses_per must be 'frame' or 'raw_frame', got {self.frame_doses_per!r}")
        _require(self.dose_per_frame_e_A2 is None or self.dose_per_frame_e_A2 > 0,
                 f"dose_per_frame_e_A2 must be > 0 e/Å², got {self.dose_per_frame_e_A2}")
        _require(self.total_dose_e_A2 is None or self.total_dose_e_A2 > 0,
                 f"total_dose_e_A2 must be > 0 e/Å², got {self.total_dose_e_A2}")
        _require(self.frame_doses_e_A2 is None
                 or (len(self.frame_doses_e_A2) > 0 and min(self.frame_doses_e_A2) >= 0),
                 "frame_doses_e_A2 must be a non-empty list of doses >= 0 e/Å²")
        _require(self.pre_exposure_e_A2 >= 0,
                 f"pre_exposure_e_A2 must be >= 0 e/Å², got {self.pre_exposure_e_A2}")

    @property
    def known(self) -> bool:
        """True when one of the three dose fields gives the movie's dose."""
        return (self.dose_per_frame_e_A2 is not None or self.total_dose_e_A2 is not None
                or self.frame_doses_e_A2 is not None)

    @property
    def movie_dose_e_A2(self) -> float | None:
        """The dose given for the whole movie (e/Å²): ``total_dose_e_A2``, or the sum of the
        frame doses (an EER tilt's, per raw frame); None when only a dose per frame (an EER
        fraction) is given, which says none before the movie is grouped."""
        if self.total_dose_e_A2 is not None:
            return float(self.total_dose_e_A2)
        if self.frame_doses_e_A2:
            return float(sum(self.frame_doses_e_A2))
        return None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DoseParams:
        """From ``dataclasses.asdict`` of one, as JSON keeps it (lists for tuples); keys this
        version does not know (written by a newer one) are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if values.get("frame_doses_e_A2") is not None:
            values["frame_doses_e_A2"] = tuple(float(v) for v in values["frame_doses_e_A2"])
        return cls(**values)


#: How this release reads files: a count bumped whenever a release reads a movie or a reference
#: otherwise (its orientation, its scale), part of :meth:`CorrectionParams.fingerprint`, so that
#: the daemon redoes what an earlier release corrected (``on_parameter_change = redo``, the
#: default) and a session never mixes two readings. 2: TIFF frames and TIFF gains read top row
#: first reversed, as IMOD and MotionCor2 read them; DM4 gains in their stored order; a defect
#: map no longer turned with the gain (all since 2026-12-03; 1 before).
READING_CONVENTIONS = 2


@dataclass(frozen=True, slots=True)
class CorrectionParams:
    """Everything that determines the result of correcting one movie."""

    dose: DoseParams
    read: ReadParams = field(default_factory=ReadParams)
    gain: GainParams = field(default_factory=GainParams)
    align: AlignParams = field(default_factory=AlignParams)

    def __post_init__(self) -> None:
        for name, kind in (("dose", DoseParams), ("read", ReadParams), ("gain", GainParams),
                           ("align", AlignParams)):
            value = getattr(self, name)
            _require(isinstance(value, kind),
                     f"{name} must be a {kind.__name__}, got {type(value).__name__}")

    def fingerprint(self, *, reading_conventions: int = READING_CONVENTIONS) -> str:
        """A short stable hash of all parameters and of :data:`READING_CONVENTIONS` (hex), for
        state keys and records: a release that reads files otherwise keys every movie anew."""
        def default(value: object) -> str:
            return str(value)

        values: dict[str, object] = dataclasses.asdict(self)
        if reading_conventions != 1:  # 1: before it was counted, hashed as then
            values["reading_conventions"] = reading_conventions
        if values["dose"]["frame_doses_per"] == "frame":  # the default: hashes as before it existed
            del values["dose"]["frame_doses_per"]
        if values["gain"]["eer_gain"] == "multiplicative":  # the default: hashes as before
            del values["gain"]["eer_gain"]
        if values["align"]["patch_group_frames"] is None:  # the default: hashes as before
            del values["align"]["patch_group_frames"]
        if values["read"]["frame_integration"] is None:  # the default: hashes as before
            del values["read"]["frame_integration"]
        else:  # its content, wherever the file lies
            del values["read"]["frame_integration"]["source"]
        text = json.dumps(values, sort_keys=True, default=default)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
