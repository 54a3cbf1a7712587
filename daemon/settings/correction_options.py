"""Correction options shared by ``motionwatch correct`` and ``motionwatch watch``.

:func:`add_correction_arguments` adds the flags; :func:`params_from_args` turns a parsed
namespace into :class:`correction.params.CorrectionParams`. Each flag's ``dest`` is its long
name with ``_`` for ``-`` (``--dose-per-frame`` -> ``dose_per_frame``), which is also its TOML
key in the daemon's config. To add a flag: add it to one of the groups below and read it in
:func:`params_from_args`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from correction.frame_integration import FrameIntegration
    from correction.params import CorrectionParams

__all__ = ["add_correction_arguments", "params_from_args"]

# the flag that sets each checked field of correction.params (its messages name the field)
_FLAG_OF_FIELD = {
    "pixel_size_A": "--pixel-size", "bin_factor": "--bin", "throw_frames": "--throw",
    "trunc_frames": "--trunc", "eer_group_frames": "--eer-group",
    "eer_dose_per_fraction_e_A2": "--eer-dose-per-fraction", "eer_sampling": "--eer-sampling",
    "voltage_kV": "--voltage", "dose_per_frame_e_A2": "--dose-per-frame",
    "total_dose_e_A2": "--total-dose", "pre_exposure_e_A2": "--pre-exposure",
    "rotate_quarter_turns": "--gain-rotate", "group_frames": "--group",
    "patch_group_frames": "--patch-group",
    "max_shift_px": "--max-shift", "patches": "--patches", "eer_gain": "--eer-gain",
    "frame_integration": "--fm-int-file",
}


def _flip(value: str) -> str:
    """``--gain-flip`` value (name, or MotionCor2's -FlipGain number) -> the name."""
    from correction.params import flip_name

    try:
        return flip_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_correction_arguments(parser: argparse.ArgumentParser, *,
                             series_mdocs: bool = False) -> None:
    """Add the correction flags to ``parser`` (in three argument groups). No dose flag is
    required here: :func:`params_from_args` asks for a dose where one is needed (a
    ``--fm-int-file`` can give it).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    series_mdocs : bool
        The command reads tilt-series mdocs (``watch``; ``correct`` reads frame mdocs only):
        the help names them among the voltage's sources.
    """
    from correction.params import AlignParams

    align_defaults = AlignParams()
    ref = parser.add_argument_group("gain and references")
    ref.add_argument("--gain", type=Path, default=None, metavar="PATH",
                     help="gain reference (MRC, TIFF, EER .gain, DM4); corrected = "
                          "(raw - dark) * gain")
    ref.add_argument("--no-frame-mdoc-gain", dest="frame_mdoc_gain", action="store_false",
                     default=True,
                     help="do not apply the gain reference a movie's frame mdoc names "
                          "(GainReference = CountRef_*.dm4: SerialEM's copy beside unnormalized "
                          "K2/K3 frames, turned by the frames' r/f; a Falcon's EER .gain), nor "
                          "the camera defect list named with it (DefectFile). Applied by "
                          "default, unless --gain or --dark is given (a warning then names a "
                          "defect list left out: give it as --defects)")
    ref.add_argument("--gain-rotate", type=int, choices=(0, 1, 2, 3), default=0, metavar="0-3",
                     help="MotionCor2's -RotGain K, as RELION implements it: rotate the gain "
                          "(and dark; not --defects, which is in the movie's grid) by K "
                          "quarter turns, each moving gain[y, x] to [x, ny-1-y] (clockwise "
                          "as displayed with row 0 at the top), before flipping. Changed: 1 and 3 turned the other way in motionwatch "
                          "before; swap them in old settings (default %(default)s)")
    ref.add_argument("--gain-flip", type=_flip, choices=("none", "updown", "leftright"),
                     default="none", metavar="{none,updown,leftright} or 0-2",
                     help="MotionCor2's -FlipGain, applied after the rotation: 0 or none, 1 or "
                          "updown (rows reversed, upside down), 2 or leftright (columns "
                          "reversed) (default %(default)s). A .gain file keeps its stored "
                          "rows here, as in RELION; MotionCor3 reverses them, so its numbers "
                          "for a .gain differ (README, TIFF row order; warnings name both)")
    ref.add_argument("--eer-gain", choices=("multiplicative", "relion", "reciprocal"),
                     default="multiplicative",
                     help="EER movies only: how the --gain file is applied. multiplicative: "
                          "the file as it is, as MotionCor2's -Gain (EPU's .gain, an MRC "
                          "converted from it, e.g. by Murfey); relion, as RELION's "
                          "loadEERGain: a .gain file is a multiplier, any other file (MRC, "
                          "TIFF) a flat-field count image, applied as mean / gain (0 stays a "
                          "defect); reciprocal: mean / gain for any file. Not MotionCor's "
                          "-InvGain, which takes 1 / gain for any movie (default %(default)s)")
    ref.add_argument("--dark", type=Path, default=None, metavar="PATH",
                     help="dark reference of one frame (not of the whole exposure), "
                          "subtracted from each frame before the gain")
    ref.add_argument("--defects", type=Path, default=None, metavar="PATH",
                     help="defect list ('x y w h' per line, row 0 the frames' first row as "
                          "read: a TIFF's bottom row) or defect map image (non-zero: defect), "
                          "both in the movie's pixel grid, as RELION and MotionCor2 take them: "
                          "neither is turned or flipped with the gain; or SerialEM's camera "
                          "defect list (defects_*.txt), fitted onto the frames as IMOD's "
                          "alignframes fits it. Given, it replaces the list a frame mdoc names")
    ref.add_argument("--no-hot-pixels", dest="hot_pixels", action="store_false", default=True,
                     help="do not detect and replace hot pixels")

    mov = parser.add_argument_group("movie")
    mov.add_argument("--pixel-size", type=float, default=None, metavar="Å",
                     help="pixel size of the movie as stored (Å), as MotionCor2's -PixSize: for "
                          "EER at --eer-sampling 2, the 8K grid's (half the physical); default "
                          "from the header")
    mov.add_argument("--voltage", type=float, default=None, metavar="kV",
                     help="acceleration voltage (kV), scales dose weighting; default from the "
                          "metadata: " + ("the tilt's series mdoc Voltage, else " if series_mdocs
                                          else "") +
                          "the movie's frame mdoc (S.mrc.mdoc), else EPU's metadata file, else "
                          "the movie header's (FEI MRC), else 300. Given and unlike the "
                          "metadata by more than 1 kV: used, with a warning")
    dose = mov.add_mutually_exclusive_group()
    dose.add_argument("--dose-per-frame", type=float, default=None, metavar="e/Å²",
                      help="dose per frame on the specimen (e/Å²); for EER, per fraction "
                           "of --eer-group raw frames (or of --fm-int-file's first "
                           "PER_FRACTION), as RELION's 'dose per frame' (not per raw EER "
                           "frame)")
    dose.add_argument("--total-dose", type=float, default=None, metavar="e/Å²",
                      help="dose of the whole movie (e/Å²), spread evenly over its frames")
    mov.add_argument("--pre-exposure", type=float, default=0.0, metavar="e/Å²",
                     help="dose the specimen received before this movie (e/Å²" + (
                         "; a tilt of a tilt series gets its series' accumulated dose instead"
                         if series_mdocs else "; correct reads no series mdoc: a tilt's "
                         "accumulated dose is the watch daemon's") + ") (default %(default)s)")
    mov.add_argument("--bin", type=float, default=1.0, metavar="F",
                     help="Fourier binning of the output (e.g. 2 for super-resolution; "
                          "non-integer allowed) (default %(default)s)")
    mov.add_argument("--throw", type=int, default=0, metavar="N",
                     help="skip N frames at the start (their dose still counts)")
    mov.add_argument("--trunc", type=int, default=0, metavar="N",
                     help="skip N frames at the end")
    eer = mov.add_mutually_exclusive_group()
    eer.add_argument("--eer-group", type=int, default=None, metavar="N",
                     help="EER: raw frames summed into one fraction (default: by "
                          "--eer-dose-per-fraction, else 40)")
    eer.add_argument("--eer-dose-per-fraction", type=float, default=None, metavar="e/Å²",
                     help="EER: group raw frames to about this dose per fraction (e/Å²), "
                          "by the movie's dose given (--total-dose, a tilt's ExposureDose), "
                          "else the file's totalDose, else its counted events")
    eer.add_argument("--fm-int-file", type=Path, default=None, metavar="PATH",
                     help="MotionCor2's -FmIntFile: lines of 'RAW_FRAMES PER_FRACTION DOSE' "
                          "('1000 25 0.02': EER raw frames summed 25 at a time, 0.02 e/Å² "
                          "each), grouped as MotionCor3 groups them; its dose per raw frame "
                          "replaces --dose-per-frame/--total-dose, which a file without the "
                          "DOSE column needs (then per fraction of the first line's "
                          "PER_FRACTION). Other movies: PER_FRACTION 1 only (the doses)")
    mov.add_argument("--eer-sampling", type=int, choices=(1, 2), default=1,
                     help="EER: decode on the physical (1) or 2x super-resolution (8K) grid "
                          "(2), as MotionCor2's -EerSampling: 2 gives 8K sums unless --bin 2 "
                          "(MotionCor2's -FtBin 2) bins them back to the physical pixel "
                          "(default %(default)s)")

    ali = parser.add_argument_group("alignment")
    ali.add_argument("--group", type=int, default=1, metavar="N",
                     help="correlate sums of N consecutive frames in the whole-frame "
                          "alignment, as the first value of MotionCor2's -Group (its second, "
                          "for the patches, is --patch-group here): for very low dose, fewer "
                          "than about 250,000 electrons per frame over the whole frame (0.25 "
                          "e/px on 1024^2, 0.015 on 4096^2), group so that each sum holds that "
                          "many (1.5-3x more precise at 40-80 frames; a tilt of 8-10 frames "
                          "aligns best ungrouped, 1.6-5x better at 0.1-0.2 e/px, unless the "
                          "record's advice says otherwise); above, 1 is best, as a fast early "
                          "jump is kept (default %(default)s)")
    ali.add_argument("--patch-group", type=int, default=None, metavar="P",
                     help="the same for the patches' alignment, as the second value of "
                          "MotionCor2's -Group (default: --group's value; MotionCor2's is 4)")
    ali.add_argument("--max-shift", type=float, default=None, metavar="PX",
                     help="largest displacement searched (output pixels, default "
                          f"{align_defaults.max_shift_px:g})")
    ali.add_argument("--patches", type=int, nargs=2, default=None, metavar=("NX", "NY"),
                     help="patch grid for local (beam-induced) motion, as MotionCor2's -Patch "
                          "NX NY; a count of 0 or 1 on either axis = global only (default "
                          f"{align_defaults.patches_x} {align_defaults.patches_y}; MotionCor2's "
                          "is global only, and its third value, the patches' overlap in %%, "
                          "has no equivalent: the patches overlap by about half)")


def params_from_args(args: argparse.Namespace | Any, *, dose_required: bool = True
                     ) -> CorrectionParams:
    """Build :class:`~correction.params.CorrectionParams` from parsed flags.

    Parameters
    ----------
    args : Namespace
    dose_required : bool
        Refuse to go on without a dose: ``--dose-per-frame`` / ``--total-dose``, or the dose
        column of ``--fm-int-file`` (read here, once). False (the daemon)
        gives a :class:`~correction.params.DoseParams` without dose when neither is given: each
        movie's dose then comes from its metadata (SerialEM mdoc, EER header), and a movie
        without any fails with :data:`correction.dose.NO_DOSE_REASON`.

    Raises
    ------
    correction.errors.ParameterError
        A missing dose (when required), a dose given twice, an out-of-range value or a frame
        integration file that cannot be read or is refused, as a one-line message naming it.
    """
    from correction.errors import ParameterError

    from daemon.settings.flags import in_flag_terms

    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    integration = None
    if get("fm_int_file") is not None:
        from correction.frame_integration import read_frame_integration

        integration = read_frame_integration(get("fm_int_file"))
    dose_flags = [flag for flag, name in (("--dose-per-frame", "dose_per_frame"),
                                          ("--total-dose", "total_dose")) if get(name) is not None]
    file_dose = integration is not None and integration.dose_per_raw_frame_e_A2 is not None
    if dose_required and not dose_flags and not file_dose:
        raise ParameterError("no dose given: use --dose-per-frame e/Å² or --total-dose e/Å² "
                             "(or a --fm-int-file with a dose column)")
    if len(dose_flags) > 1:
        raise ParameterError("give only one of --dose-per-frame and --total-dose")
    if file_dose and dose_flags:
        raise ParameterError(f"give the dose once: --fm-int-file {get('fm_int_file')} gives "
                             f"one per raw frame, and {dose_flags[0]} another")
    try:
        return _params(get, integration)
    except ParameterError as exc:
        raise ParameterError(in_flag_terms(str(exc), _FLAG_OF_FIELD)) from None


def _params(get: Any, integration: FrameIntegration | None = None) -> CorrectionParams:
    """:class:`correction.params.CorrectionParams` from the options ``get(name, default)``
    and the frame integration file's entries (read from ``fm_int_file``)."""
    from correction.params import (AlignParams, CorrectionParams, DoseParams, GainParams,
                                   ReadParams)

    from daemon.settings.voltage import DEFAULT_VOLTAGE_KV

    voltage = get("voltage")  # None: from each movie's metadata (daemon.settings.voltage)
    dose_per_frame = get("dose_per_frame")
    if integration is not None and integration.dose_per_raw_frame_e_A2 is not None:
        # a fraction of the first entry's raw frames: each fraction gets the dose of the raw
        # frames it holds (correction.dose.frame_doses_e_A2), MotionCor2's sum of -FmDose
        dose_per_frame = integration.dose_per_raw_frame_e_A2 * integration.per_fraction
    dose = DoseParams(voltage_kV=float(DEFAULT_VOLTAGE_KV if voltage is None else voltage),
                      dose_per_frame_e_A2=dose_per_frame,
                      total_dose_e_A2=get("total_dose"),
                      pre_exposure_e_A2=float(get("pre_exposure", 0.0)))
    read = ReadParams(pixel_size_A=get("pixel_size"), bin_factor=float(get("bin", 1.0)),
                      throw_frames=int(get("throw", 0)), trunc_frames=int(get("trunc", 0)),
                      eer_group_frames=get("eer_group"),
                      eer_dose_per_fraction_e_A2=get("eer_dose_per_fraction"),
                      eer_sampling=int(get("eer_sampling", 1)),
                      frame_integration=integration)
    gain = GainParams(gain_path=get("gain"), dark_path=get("dark"),
                      defects_path=get("defects"),
                      rotate_quarter_turns=int(get("gain_rotate", 0)),
                      flip=get("gain_flip", "none"),
                      detect_hot_pixels=bool(get("hot_pixels", True)),
                      eer_gain=get("eer_gain", "multiplicative"))
    align_kwargs: dict[str, Any] = {"group_frames": int(get("group", 1))}
    if get("patch_group") is not None:
        align_kwargs["patch_group_frames"] = int(get("patch_group"))
    if get("max_shift") is not None:
        align_kwargs["max_shift_px"] = float(get("max_shift"))
    if get("patches") is not None:
        align_kwargs["patches_x"], align_kwargs["patches_y"] = (int(v) for v in get("patches"))
    align = AlignParams(**align_kwargs)
    return CorrectionParams(dose=dose, read=read, gain=gain, align=align)
