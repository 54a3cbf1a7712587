"""Gain, dark and defect references: load, orient, check against a movie, apply to frames.

``corrected = (raw - dark) * gain`` (multiplicative gain, as MotionCor, RELION and EER ``.gain``
files have it; for an EER movie a count image can be taken as ``mean / gain`` instead,
:func:`reference_for_movie`, "EER gain files" below). Orientation (:func:`orient`) means exactly MotionCor2's ``-RotGain K`` and
``-FlipGain F``: rotated by K quarter turns, each moving ``gain[y, x]`` to ``out[x, ny-1-y]``
(``numpy.rot90(ref, k=-K)``, clockwise as displayed with row 0 at the top), THEN flipped (1 =
``updown`` reverses the rows, 2 = ``leftright`` the columns); the dark reference gets the same
orientation (as MotionCor3's ``CLoadRefs`` gives it). A defect list (``x y w h``) or defect map
image refers to the movie's pixel grid and is not reoriented: "the coordinate system is the
same as the input movie before application of binning, rotation and/or flipping" (RELION's
motion-correction job; MotionCor's ``-DefectMap`` "must have the same dimension and
orientation as the input movie frame"). A defect list stays in the movie's grid when the gain
is moved to another (:meth:`GainReference.fit_to`, :meth:`GainReference.onto_coarser_grid`:
RELION fills its defect mask on the rendered EER frames); a defect map image has the gain's
shape and moves with it. SerialEM's camera defect list (``CameraSizeX`` ...) is fitted onto
each grid by its camera size (:mod:`correction.camera_defects`: scaled up, binned, flipped in
y as the frames are read). :mod:`correction.gain_orientation` checks the orientation against the
data.

Defects are the union of the defect list or map, the gain's zero and non-finite pixels, and the
dark's non-finite pixels; they are replaced in every frame by the mean of their valid
neighbours (:mod:`correction.defects`), never left at zero.

EER gain files
    RELION (3dem/relion ``src/renderEER.h``, ``EERRenderer::loadEERGain``, used for EER movies
    by motion correction, Bayesian polishing and ``relion_convert_to_tiff``): "The gain
    reference for EER is not multiplicative! So the inverse is taken here. 0 means defect."
    A file whose extension is ``gain`` is multiplicative and used as it is (read as a TIFF,
    rows in stored order); any other file (MRC, TIFF) is resampled to the rendering grid (a
    4K gain repeated over 2 x 2 for 8K, an 8K one summed over 2 x 2 for 4K) and then every
    non-zero pixel becomes ``mean / gain``, the mean taken over the whole resampled image
    (zeros included); zeros stay 0 (defects). Thermo Fisher's reader does the same
    (fei-company/EerReaderLib ``GainDefectCorrect.cpp``, ``PrepareGainImage_ExtractDefects``:
    ``mean / gain`` for every positive pixel, the mean over non-defect pixels), and its
    ``makeEerGain_raw2mrc.py`` writes the MRC from the raw electron counts of a flat exposure,
    defects 0: such an MRC is a count image (a pixel's response), not a correction factor.
    MotionCor3 applies every gain file as a multiplier; its ``-InvGain 1`` takes ``1 / gain``
    (0 stays 0; ``MrcUtil/GInverse2D.cu``, commented "for EER reciprocal gain"), without the
    mean, so its output is scaled by 1 / (counts per pixel of the flat exposure). The EPU
    gain files of Falcon 4/4i EER data met in public code and issues are
    ``<date>_<time>_EER_GainReference.gain`` TIFFs, which RELION takes as multiplicative;
    Murfey (DiamondLightSource, ``murfey/server/gain.py`` ``prepare_eer_gain``) converts such
    a ``.gain`` to ``gain.mrc`` with IMOD's ``tif2mrc`` without inverting it, so that MRC is
    multiplicative although it is not a ``.gain`` file (RELION would invert it).

    So the peers disagree about an MRC or TIFF gain of an EER movie. motionwatch's ``--gain``
    means MotionCor2's ``-Gain`` (the house rule for flags that share a name), so
    ``GainParams.eer_gain`` is ``"multiplicative"`` by default: every file as it is (EPU's
    ``.gain``, an MRC converted from it, as Murfey makes). ``"relion"`` follows RELION:
    ``.gain`` (any case) multiplicative, any other file reciprocal, ``mean / gain`` with the
    mean over the valid (non-zero, finite) pixels, as Thermo Fisher's reader (RELION's mean
    counts the defects as zeros: its result is lower by the defect fraction, a constant
    factor); ``"reciprocal"`` inverts any file. Movies that are not EER always use the gain as
    a multiplier. The record says which (``references.gain_applied_as``); a gain
    applied the wrong way leaves the detector's pattern in the frames, twice as strong, which
    :mod:`correction.detector_pattern` reports (its message names ``--eer-gain``).

    A gain of the physical grid is repeated onto frames decoded at sampling 2
    (:meth:`GainReference.fit_to`), and an 8K gain is combined onto frames decoded at 4K
    (:meth:`GainReference.onto_coarser_grid`), as RELION does both.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .camera_defects import CameraDefectList
from .defects import (
    DefectRect,
    ReplacementPlan,
    defect_mask_from_image,
    load_defect_list,
    plan_replacement,
    rasterize_defects,
)
from .errors import CorrectionError, GainReferenceError, ParameterError
from .params import Flip, GainParams, flip_name
from .report import FileVersion, file_stat_keys, file_version
from .threads import run_chunks

__all__ = ["GainReference", "load_gain_reference", "apply_gain", "gain_corrected_rows", "orient",
           "reference_for_movie", "eer_gain_is_reciprocal"]

KEPT_DERIVED = 4  # forms kept with a reference (its EER forms, expanded or combined grids)
_THREADED_PIXELS = 1 << 20  # frames from this size have their rows split over threads


def orient(image: np.ndarray, *, rotate_quarter_turns: int = 0,
           flip: Flip | int = "none") -> np.ndarray:
    """Orient a reference as MotionCor2's ``-RotGain K -FlipGain F``; a C-contiguous copy.

    One quarter turn (``-RotGain 1``) moves the pixel at ``[y, x]`` of an ``ny x nx`` image to
    ``[x, ny - 1 - y]`` of the ``nx x ny`` result, i.e. ``numpy.rot90(image, k=-1)``; it looks
    clockwise when displayed with row 0 at the top. K = 2 is half a turn, K = 3 the inverse of
    K = 1. The flip is applied after the rotation: 1 / ``"updown"`` reverses the rows
    (``numpy.flipud``), 2 / ``"leftright"`` the columns (``numpy.fliplr``).

    This is RELION's implementation of MotionCor2's flags (3dem/relion, checked at commit
    b0f6fae): ``src/jaz/image_op.h`` ``ImageOp::rotate90`` (commented as equivalent to
    MotionCor2's -RotGain 1; it writes source pixel (y, x) to destination row x, column
    ydim-1-y), ``rotate180`` and ``rotate270`` (RotGain 2 and 3), ``flipY`` (FlipGain 1: row y
    read from row ydim-1-y) and ``flipX`` (FlipGain 2: column x from column xdim-1-x), around
    lines 157-235; ``src/motioncorr_runner.cpp`` ``MotioncorrRunner::prepareGainReference``
    rotates first, then flips.

    Changed meaning: motionwatch's ``rotate_quarter_turns`` used to be ``numpy.rot90(image, k)``
    (counter-clockwise as displayed), the opposite turn, so an old setting of 1 is now 3 and
    an old 3 is now 1; 0, 2 and the flips are unchanged.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
    rotate_quarter_turns : int
        0-3, MotionCor2's ``-RotGain``.
    flip : {"none", "updown", "leftright", 0, 1, 2}
        MotionCor2's ``-FlipGain`` (number or name), applied after the rotation.

    Returns
    -------
    ndarray, shape (ny, nx) for K = 0, 2, (nx, ny) for K = 1, 3

    Raises
    ------
    ValueError
        A rotation outside 0-3 or an unknown flip (:class:`~correction.errors.ParameterError`).
    """
    k = int(rotate_quarter_turns)
    if k not in (0, 1, 2, 3):
        raise ParameterError(f"rotate_quarter_turns must be 0-3, got {rotate_quarter_turns!r}")
    out = np.rot90(image, -k)
    name = flip_name(flip)
    if name == "updown":
        out = out[::-1, :]
    elif name == "leftright":
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


@dataclass(frozen=True, slots=True)
class ListedPixels:
    """Reference values under a defect list that the references themselves hold valid.

    Attributes
    ----------
    index : ndarray of int
        Flat indices into the reference's grid.
    gain, dark : ndarray of float32 (dark None without a dark reference)
        Their values, as the reference applies them (after :meth:`GainReference.reciprocal`).
    """

    index: np.ndarray
    gain: np.ndarray
    dark: np.ndarray | None


@dataclass(frozen=True, slots=True)
class GainReference:
    """An oriented gain reference, with optional dark reference and defects.

    Build with :meth:`from_arrays` or :func:`load_gain_reference`.

    Attributes
    ----------
    gain : ndarray of float32, shape (ny, nx)
        Multiplicative gain in the movie's orientation; 0 at defects.
    dark : ndarray of float32, shape (ny, nx), or None
        Dark reference subtracted before the gain; 0 at defects.
    defect_mask : ndarray of bool, shape (ny, nx), or None
        All pixels replaced after gain correction; None when there are none.
    gain_path, dark_path, defects_path : Path or None
        Source files, for messages and records.
    plan : ReplacementPlan or None
        Precomputed replacement of ``defect_mask``.
    applied_as : {"multiplicative", "reciprocal"}
        How ``gain`` was made from the gain file: the file itself, or ``mean / file`` (an EER
        count image, :meth:`reciprocal`).
    eer_rule : str or None
        For a reference chosen for an EER movie (:func:`reference_for_movie`), why it is
        applied as it is (one line); None otherwise.
    defect_rects : tuple of (x, y, w, h)
        The defect list, in the movie's pixel grid: rasterized on this reference's grid, and
        again on the grid it is moved to (:meth:`fit_to`, :meth:`onto_coarser_grid`).
    listed : ListedPixels or None
        The gain and dark values under ``defect_rects`` that are not defects of the
        references themselves (0 in ``gain`` and ``dark``), kept for moving to another grid.
    camera_defects : CameraDefectList or None
        SerialEM's camera defect list when the defect file is one: ``defect_rects`` are its
        rectangles fitted onto this reference's grid (:meth:`CameraDefectList.rects_on`), made
        again for each grid the reference is moved to.
    on_movie_grid : bool
        A defect list given alone (as MotionCor2's ``-DefectFile`` and RELION's
        ``--defect_file`` take it, e.g. for gain-normalised movies): no reference file gives a
        grid, so ``gain`` is a 1 x 1 stand-in and :meth:`fit_to` makes the reference (a gain of
        ones, the list rasterized) on the grid of the movie's frames.
    read : tuple of FileVersion
        The versions of the gain, dark and defect files this reference was read from (size,
        modification time, SHA-256: :func:`load_gain_reference`), kept by every form derived
        from it; empty for a reference made from arrays.

    The forms a movie applies (:func:`reference_for_movie`: an EER gain inverted, or combined
    onto a coarser grid; :meth:`fit_to`, :meth:`onto_coarser_grid`) are made once and kept
    with the reference they come from (the last few; never the steps between, such as an 8K
    inverted gain combined onto 4K), so a worker that holds one reference for a session
    derives an 8K EER gain's 4K form, or a 4K gain's 8K form, once, not for every movie
    (0.3-0.9 s each). Threads share them (one makes a form while the others wait); a
    reference pickled travels without them.
    """

    gain: np.ndarray
    dark: np.ndarray | None = None
    defect_mask: np.ndarray | None = None
    gain_path: Path | None = None
    dark_path: Path | None = None
    defects_path: Path | None = None
    plan: ReplacementPlan | None = field(default=None, repr=False)
    applied_as: str = "multiplicative"
    eer_rule: str | None = None
    defect_rects: tuple[DefectRect, ...] = ()
    listed: ListedPixels | None = field(default=None, repr=False)
    camera_defects: CameraDefectList | None = field(default=None, repr=False)
    on_movie_grid: bool = False
    read: tuple[FileVersion, ...] = ()
    _derived: dict[tuple[Any, ...], GainReference] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _deriving: Any = field(  # a threading.RLock
        default_factory=threading.RLock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for array in (self.gain, self.dark, self.defect_mask):  # shared by a session's movies
            if array is not None:
                array.flags.writeable = False

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_derived", {})
        object.__setattr__(self, "_deriving", threading.RLock())
        self.__post_init__()

    def derived(self, key: tuple[Any, ...], make: Callable[[], GainReference]) -> GainReference:
        """The reference ``make()`` derives from this one, made at the first call for ``key``
        and kept (the :data:`KEPT_DERIVED` latest keys; references are never modified)."""
        with self._deriving:
            found = self._derived.get(key)
            if found is None:
                found = make()
                while len(self._derived) >= KEPT_DERIVED:
                    self._derived.pop(next(iter(self._derived)))
                self._derived[key] = found
            return found

    @classmethod
    def from_arrays(cls, gain: np.ndarray, *, dark: np.ndarray | None = None,
                    defects: np.ndarray | None = None, gain_path: Path | None = None,
                    dark_path: Path | None = None, defects_path: Path | None = None,
                    defect_rects: tuple[DefectRect, ...] = (),
                    camera_defects: CameraDefectList | None = None) -> GainReference:
        """Build a reference from already oriented arrays.

        Gain pixels that are 0 or non-finite, and dark pixels that are non-finite, are added
        to the defects; gain and dark are set to 0 there so that no NaN reaches a frame.

        Parameters
        ----------
        gain : ndarray, shape (ny, nx)
        dark : ndarray, shape (ny, nx), optional
        defects : ndarray of bool, shape (ny, nx), optional
            A defect map on this grid (moved with the gain to another grid).
        defect_rects : tuple of (x, y, w, h)
            A defect list in the movie's grid, rasterized on this one.
        camera_defects : CameraDefectList, optional
            SerialEM's camera defect list, fitted onto this grid (instead of ``defect_rects``).

        Raises
        ------
        GainReferenceError
            Shapes that differ, a gain that is not 2-D, or a gain with no valid pixel.
        """
        gain = np.array(gain, dtype=np.float32, order="C")
        if gain.ndim != 2:
            raise GainReferenceError(gain_path, f"gain must be a 2-D image, got shape {gain.shape}")
        bad = ~np.isfinite(gain) | (gain <= 0)  # a multiplier is never negative
        if dark is not None:
            dark = np.array(dark, dtype=np.float32, order="C")
            if dark.shape != gain.shape:
                raise GainReferenceError(dark_path, f"dark reference is {_fmt(dark.shape)}, "
                                                    f"gain is {_fmt(gain.shape)}")
            bad |= ~np.isfinite(dark)
        if defects is not None:
            defects = np.asarray(defects, dtype=bool)
            if defects.shape != gain.shape:
                raise GainReferenceError(defects_path, f"defect map is {_fmt(defects.shape)}, "
                                                       f"gain is {_fmt(gain.shape)}")
            bad |= defects
        listed = None
        if camera_defects is not None:
            defect_rects = camera_defects.rects_on(gain.shape)
        if defect_rects:
            in_list = rasterize_defects(defect_rects, gain.shape)
            only_listed = np.flatnonzero(in_list & ~bad)
            listed = ListedPixels(only_listed, gain.ravel()[only_listed],
                                  None if dark is None else dark.ravel()[only_listed])
            bad |= in_list
        if bad.all():
            raise GainReferenceError(gain_path, "gain has no valid pixel (all <= 0, NaN or defect)")
        mask = bad if bad.any() else None
        if mask is not None:
            gain[mask] = 0.0
            if dark is not None:
                dark[mask] = 0.0
        plan = plan_replacement(mask) if mask is not None else None
        return cls(gain=gain, dark=dark, defect_mask=mask, gain_path=gain_path,
                   dark_path=dark_path, defects_path=defects_path, plan=plan,
                   defect_rects=tuple(defect_rects), listed=listed,
                   camera_defects=camera_defects)

    def _unlisted(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Gain and dark with the values under the defect list put back (copies when any)."""
        if self.listed is None or not self.listed.index.size:
            return self.gain, self.dark
        gain = self.gain.copy()
        gain.ravel()[self.listed.index] = self.listed.gain
        dark = self.dark
        if dark is not None and self.listed.dark is not None:
            dark = dark.copy()
            dark.ravel()[self.listed.index] = self.listed.dark
        return gain, dark

    def reciprocal(self) -> GainReference:
        """This reference with the gain file taken as a flat-field count image: ``mean / gain``.

        Every valid pixel (non-zero; defects are 0 here) becomes ``m / gain`` with ``m`` the
        mean gain over the valid pixels, so the corrected frames keep the raw counts' scale;
        defects stay 0 (and keep their replacement plan). Applied twice, the original gain
        comes back up to a constant factor.

        Returns
        -------
        GainReference
            ``applied_as`` switched between ``"multiplicative"`` and ``"reciprocal"``.
        """
        valid = self.gain != 0
        mean = np.float32(self.gain[valid].mean(dtype=np.float64))
        inverse = np.zeros_like(self.gain)
        np.divide(mean, self.gain, out=inverse, where=valid)
        flipped = "multiplicative" if self.applied_as == "reciprocal" else "reciprocal"
        listed = self.listed
        if listed is not None:  # not defects of the gain itself: non-zero, finite
            listed = dataclasses.replace(listed, gain=mean / listed.gain)
        return dataclasses.replace(self, gain=inverse, applied_as=flipped, listed=listed)

    def onto_coarser_grid(self, factor: int) -> GainReference:
        """This reference for frames ``factor`` times coarser on each axis: an EER gain on the
        8K grid for frames decoded at 4K (RELION's ``EERRenderer::loadEERGain`` takes such a
        gain; MotionCor3 refuses it).

        A coarse pixel counts the events of its ``factor x factor`` sub-pixels, so its response
        is the mean of theirs: its multiplier is the harmonic mean of the sub-pixels'
        (``1 / mean(1 / gain)``: exact for any sub-pixel response, and what a count image
        summed, then inverted as ``mean / counts``, gives; RELION sums the multipliers, which
        differs by the sub-pixels' spread squared and scales the frames by ``factor**2``). Dark
        counts add up. A coarse pixel with any defect sub-pixel is a defect (a hot sub-pixel's
        events land in it).

        Raises
        ------
        GainReferenceError
            When the reference's shape is not a multiple of ``factor``.
        """
        ny, nx = self.shape_yx
        if factor < 2 or ny % factor or nx % factor:
            raise GainReferenceError(self.gain_path, f"gain of {_fmt(self.shape_yx)} cannot be "
                                                     f"binned by {factor}")
        return self.derived(("coarser", factor), lambda: self._binned(factor))

    def _binned(self, factor: int) -> GainReference:
        def block_sums(image: np.ndarray) -> np.ndarray:  # strided adds: 6x a reshaped sum
            out = image[0::factor, 0::factor].copy()
            for dy in range(factor):
                for dx in range(factor):
                    if dy or dx:
                        out += image[dy::factor, dx::factor]
            return out

        fine_gain, fine_dark = self._unlisted()  # the defect list is the movie's: 4K here
        with np.errstate(divide="ignore"):  # a defect (0) sub-pixel: inf, so its block is 0
            gain = np.float32(factor * factor) / block_sums(np.reciprocal(fine_gain))
        dark = None if fine_dark is None else block_sums(fine_dark)
        coarse = GainReference.from_arrays(gain, dark=dark, gain_path=self.gain_path,
                                           dark_path=self.dark_path,
                                           defects_path=self.defects_path,
                                           defect_rects=self.defect_rects,
                                           camera_defects=self.camera_defects)
        return dataclasses.replace(coarse, applied_as=self.applied_as, eer_rule=self.eer_rule,
                                   read=self.read)

    def eer_advice(self) -> str | None:
        """For a reference chosen for an EER movie: how its file was applied and which
        ``--eer-gain`` applies it the other way (a count image used as a multiplier, or a
        multiplier inverted, leaves the detector's pattern twice as strong); None otherwise."""
        if self.eer_rule is None:
            return None
        other = "multiplicative" if self.applied_as == "reciprocal" else "reciprocal"
        return f"{self.eer_rule}: if the file is the other kind, try --eer-gain {other}"

    @property
    def shape_yx(self) -> tuple[int, int]:
        """Shape (ny, nx) of the oriented reference."""
        return int(self.gain.shape[0]), int(self.gain.shape[1])

    def check_shape(self, shape_yx: tuple[int, int], movie_path: str | Path | None = None) -> None:
        """Raise unless the reference fits frames of ``shape_yx``.

        Raises
        ------
        GainReferenceError
            Naming the gain file, the gain's shape (after orientation) and the movie's.
        """
        shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
        if shape_yx != self.shape_yx:
            movie = f" {Path(movie_path).name}" if movie_path is not None else ""
            hint = ""
            if shape_yx == self.shape_yx[::-1]:
                hint = " (transposed: try a rotation by 1 or 3 quarter turns)"
            elif _multiple(shape_yx, self.shape_yx) or _multiple(self.shape_yx, shape_yx):
                hint = (" (super-resolution vs physical pixels? a reference is expanded only "
                        "onto a movie that declares that super-resolution factor, e.g. EER "
                        "sampling 2; give the reference of the movie's own pixel grid)")
            # without a gain file the shape came from the dark reference: name that one
            source, what = ((self.dark_path, "dark reference")
                            if self.gain_path is None and self.dark_path is not None
                            else (self.gain_path, "gain"))
            raise GainReferenceError(
                source, f"{what} is {_fmt(self.shape_yx)} (ny x nx, after orientation) "
                        f"but movie{movie} frames are {_fmt(shape_yx)}{hint}")


    def fit_to(self, shape_yx: tuple[int, int], movie_path: str | Path | None = None, *,
               super_resolution_factor: int | None = None) -> GainReference:
        """This reference for frames of ``shape_yx``: itself, or expanded to a finer grid
        (a defect list given alone: made on that grid, see ``on_movie_grid``).

        When the frames are an integer multiple (2, 3 ...) of the reference on both axes,
        as for EER movies decoded with ``eer_sampling=2`` against a physical-pixel ``.gain``,
        every reference pixel is repeated over the sub-pixels it covers (they share its
        gain, dark and defect state). Any other mismatch raises as :meth:`check_shape`.

        Parameters
        ----------
        shape_yx : (int, int)
            The frames' shape.
        movie_path : str or Path, optional
            For the message.
        super_resolution_factor : int, optional
            Sub-pixels per physical pixel on each axis that the movie itself declares (e.g. its
            EER sampling; 1 for a movie on its physical grid). When given, the reference is
            expanded only by exactly this factor: a gain of half the movie's size on a movie
            that is not super-resolution is refused, not used silently. None accepts any
            integer factor (for a caller that has checked the relation itself).

        Raises
        ------
        GainReferenceError
        """
        shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
        if self.on_movie_grid:  # a defect list alone: made on the frames' grid
            return self.derived(("movie grid", shape_yx), lambda: dataclasses.replace(
                GainReference.from_arrays(np.ones(shape_yx, np.float32),
                                          defects_path=self.defects_path,
                                          defect_rects=self.defect_rects,
                                          camera_defects=self.camera_defects),
                read=self.read))
        if shape_yx == self.shape_yx:
            return self
        fy, ry = divmod(shape_yx[0], self.shape_yx[0])
        fx, rx = divmod(shape_yx[1], self.shape_yx[1])
        if ry or rx or fy != fx or fy < 2 or (super_resolution_factor is not None
                                               and fy != int(super_resolution_factor)):
            self.check_shape(shape_yx, movie_path)
        return self.derived(("expanded", fy), lambda: self._expanded(fy))

    def _expanded(self, factor: int) -> GainReference:
        def grow(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)

        coarse_gain, coarse_dark = self._unlisted()  # the defect list is the movie's grid's
        grown = GainReference.from_arrays(grow(coarse_gain), dark=grow(coarse_dark),
                                          gain_path=self.gain_path, dark_path=self.dark_path,
                                          defects_path=self.defects_path,
                                          defect_rects=self.defect_rects,
                                          camera_defects=self.camera_defects)
        return dataclasses.replace(grown, applied_as=self.applied_as, eer_rule=self.eer_rule,
                                   read=self.read)


def _multiple(big: tuple[int, int], small: tuple[int, int]) -> bool:
    return big[0] % small[0] == 0 and big[1] % small[1] == 0


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


#: reads of a reference file that changes while it is read, before giving up
READ_TRIES = 3
#: pause before the second read of such a file (seconds; twice that before the third)
REREAD_PAUSE_S = 0.5


def _read_reference(path: Path, what: str) -> np.ndarray:
    from .io import read_image  # noqa: PLC0415 - io imports are heavier; keep gain light

    try:
        image, _ = read_image(path)
    except CorrectionError as exc:
        raise GainReferenceError(path, f"{what}: {exc.reason}") from None
    if image.ndim != 2:
        raise GainReferenceError(path, f"{what} must be a 2-D image, got shape {image.shape}")
    return image


def load_gain_reference(params: GainParams) -> GainReference | None:
    """Load and orient the references named in ``params``.

    Parameters
    ----------
    params : GainParams
        ``gain_path`` (MRC, TIFF, EER ``.gain`` or ``.dm4``), optional ``dark_path``, optional
        ``defects_path`` (a text defect list ``x y w h``, or a defect map image where non-zero
        marks a defect), ``rotate_quarter_turns`` and ``flip``.

    Returns
    -------
    GainReference or None
        None when no gain, dark or defects are given. Without a gain (dark or defects only),
        the gain is all ones; with a defect list alone, on the movie's grid once it is known
        (``on_movie_grid``, :meth:`GainReference.fit_to`).

    The files' versions (size, modification time, SHA-256) are in the reference's ``read``;
    a file written anew while it was read (its size or modification time changed between a
    look before and after) is read again, up to :data:`READ_TRIES` times, so that the arrays
    and the hashes are of one version.

    Raises
    ------
    GainReferenceError
        Naming the reference file that is missing, unreadable or does not fit, or that kept
        changing while it was read.
    """
    paths = [path for _, path in params.files()]
    if not paths:
        return None
    for attempt in range(READ_TRIES):
        before = file_stat_keys(paths)
        try:
            reference = _load_once(params)
            read = tuple(file_version(path) for path in paths)
        except (GainReferenceError, OSError):
            if file_stat_keys(paths) == before:
                raise
        else:
            if file_stat_keys(paths) == before == [v.stat_key() for v in read]:
                return dataclasses.replace(reference, read=read)
        time.sleep(REREAD_PAUSE_S * (attempt + 1))
    changing = [p for p, was, now in zip(paths, before, file_stat_keys(paths)) if was != now]
    raise GainReferenceError((changing or paths)[0],
                             f"kept changing while it was read ({READ_TRIES} tries): written "
                             "anew right now?")


def _load_once(params: GainParams) -> GainReference:
    """:func:`load_gain_reference` without the version checks (at least one file named)."""
    def oriented(image: np.ndarray) -> np.ndarray:
        return orient(image, rotate_quarter_turns=params.rotate_quarter_turns, flip=params.flip)

    gain = dark = None
    if params.gain_path is not None:
        gain = oriented(_read_reference(Path(params.gain_path), "gain reference"))
    if params.dark_path is not None:
        dark = oriented(_read_reference(Path(params.dark_path), "dark reference"))
    defects = None
    dpath = Path(params.defects_path) if params.defects_path is not None else None
    if dpath is not None and _is_image(dpath):
        defects = defect_mask_from_image(_read_reference(dpath, "defect map"))  # movie's grid
    if gain is None:  # dark or defects only: a gain of ones of their shape
        shape = dark.shape if dark is not None else defects.shape if defects is not None \
            else None
        if shape is None:  # a defect list alone: the movie gives the grid (fit_to)
            rects, camera = _defect_list(dpath)
            return GainReference(gain=np.ones((1, 1), np.float32), defects_path=dpath,
                                 defect_rects=rects, camera_defects=camera,
                                 on_movie_grid=True)
        gain = np.ones(shape, dtype=np.float32)
    rects, camera = _defect_list(dpath) if dpath is not None and defects is None else ((), None)
    return GainReference.from_arrays(
        gain, dark=dark, defects=defects, defect_rects=rects, camera_defects=camera,
        gain_path=Path(params.gain_path) if params.gain_path is not None else None,
        dark_path=Path(params.dark_path) if params.dark_path is not None else None,
        defects_path=Path(params.defects_path) if params.defects_path is not None else None)


def _defect_list(path: Path) -> tuple[tuple[DefectRect, ...], CameraDefectList | None]:
    """``(rectangles, None)`` of an ``x y w h`` list, ``((), list)`` of SerialEM's camera
    defect list (fitted onto a grid later)."""
    listed = load_defect_list(path)
    return ((), listed) if isinstance(listed, CameraDefectList) else (listed, None)


def eer_gain_is_reciprocal(gain_path: str | Path | None,
                           eer_gain: str = "multiplicative") -> bool:
    """Whether the gain file of an EER movie is a count image, applied as ``mean / gain``.

    ``eer_gain`` ``"multiplicative"`` (MotionCor2's ``-Gain``): never; ``"relion"``: as
    RELION's ``EERRenderer::loadEERGain``, every file except a ``.gain`` one (the suffix in
    any case; RELION compares it exactly, and EPU writes it in lower case); ``"reciprocal"``:
    always. No gain file: never.
    """
    if gain_path is None or eer_gain == "multiplicative":
        return False
    if eer_gain == "reciprocal":
        return True
    return Path(gain_path).suffix.lower() != ".gain"


def reference_for_movie(ref: GainReference | None, params: GainParams, *,
                        is_eer: bool, coarser_by: int = 1) -> GainReference | None:
    """The reference as it is applied to one movie (module docstring, "EER gain files").

    Parameters
    ----------
    ref : GainReference or None
        As :func:`load_gain_reference` made it from ``params`` (the file's values, oriented).
    params : GainParams
        ``gain_path`` and ``eer_gain``.
    is_eer : bool
        The movie is an EER movie (``Movie.header["format"] == "eer"``).
    coarser_by : int
        For an EER movie, its frames are this many times coarser than the reference on each
        axis (an 8K gain for frames decoded at 4K: 2): the EER form combined onto their grid
        (:meth:`GainReference.onto_coarser_grid`).

    Returns
    -------
    GainReference or None
        ``ref`` itself for a movie that is not EER, or without a gain file; for an EER movie,
        ``ref`` or its :meth:`~GainReference.reciprocal`, with ``eer_rule`` saying why, on the
        movie's grid. Made once per ``ref`` (:meth:`GainReference.derived`).
    """
    if ref is None or not is_eer:
        return ref
    if ref.gain_path is None:  # a dark reference or defect map only: no EER rule to apply
        return ref if coarser_by == 1 else ref.onto_coarser_grid(coarser_by)

    def make() -> GainReference:
        applied = _eer_reference(ref, params)
        return applied if coarser_by == 1 else applied.onto_coarser_grid(coarser_by)

    return ref.derived(("eer", params.eer_gain, coarser_by), make)


def _eer_reference(ref: GainReference, params: GainParams) -> GainReference:
    name = Path(str(ref.gain_path)).name
    if eer_gain_is_reciprocal(ref.gain_path, params.eer_gain):
        why = ("--eer-gain reciprocal" if params.eer_gain == "reciprocal" else
               "--eer-gain relion: a gain that is not a .gain file is a count image")
        rule = f"{name} applied as mean / gain ({why})"
        out = ref.reciprocal() if ref.applied_as == "multiplicative" else ref
    else:
        why = ("as MotionCor2's -Gain; --eer-gain relion or reciprocal for a count image"
               if params.eer_gain == "multiplicative" else
               "--eer-gain relion: a .gain file is multiplicative")
        rule = f"{name} applied as a multiplier ({why})"
        out = ref.reciprocal() if ref.applied_as == "reciprocal" else ref
    return dataclasses.replace(out, eer_rule=rule)


def _is_image(path: Path) -> bool:
    """True for a defect map image, False for a text defect list."""
    if path.suffix.lower() in {".txt", ".defects", ".list", ".dat"}:
        return False
    if path.suffix.lower() in {".mrc", ".tif", ".tiff", ".dm4", ".dm3", ".gain"}:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return b"\x00" in head


def gain_corrected_rows(raw: np.ndarray, gain: np.ndarray | None, dark: np.ndarray | None,
                        out: np.ndarray) -> np.ndarray:
    """``(raw - dark) * gain`` (float32) into ``out``, all of one shape (rows of a frame and the
    same rows of the references); ``gain`` None only converts.

    Integer counts are converted into ``out`` first, then the float32 references applied in
    place: numpy's mixed-type ufuncs convert through small buffers, about 1.5 times slower here
    than one conversion and one pass of float32 arithmetic (the same values, rounded alike).
    """
    if gain is None or raw.dtype != np.float32:
        np.copyto(out, raw, casting="unsafe")
        raw = out
    if gain is None:
        return out
    if dark is not None:
        np.subtract(raw, dark, out=out)
        raw = out
    return np.multiply(raw, gain, out=out)


def apply_gain(frame_raw: np.ndarray, ref: GainReference | None,
               out: np.ndarray | None = None, *, workers: int = 1) -> np.ndarray:
    """Gain-correct one frame: ``(raw - dark) * gain``, defects replaced; float32 out.

    Parameters
    ----------
    frame_raw : ndarray, shape (ny, nx)
        A frame in its stored dtype (any integer or float type, any byte order).
    ref : GainReference or None
        None only converts to float32.
    out : ndarray of float32, shape (ny, nx), optional
        Written in place and returned; may not alias ``frame_raw`` unless it is float32.
    workers : int
        Threads over which the rows are split (:mod:`correction.threads`; the defects are
        replaced afterwards, as their sources may lie in other rows).

    Returns
    -------
    ndarray of float32, shape (ny, nx)

    Raises
    ------
    GainReferenceError
        When the frame's shape differs from the reference's.
    """
    if out is None:
        out = np.empty(frame_raw.shape, dtype=np.float32)
    if ref is not None and frame_raw.shape != ref.gain.shape:
        ref.check_shape(frame_raw.shape)

    def rows(y0: int, y1: int) -> None:
        gain_corrected_rows(frame_raw[y0:y1], None if ref is None else ref.gain[y0:y1],
                            None if ref is None or ref.dark is None else ref.dark[y0:y1],
                            out[y0:y1])

    # threads pay off from about a million pixels (a 1K frame takes ~1 ms)
    run_chunks(rows, int(frame_raw.shape[0]), workers if frame_raw.size >= _THREADED_PIXELS else 1)
    if ref is not None and ref.plan is not None:
        ref.plan.apply(out)
    return out
