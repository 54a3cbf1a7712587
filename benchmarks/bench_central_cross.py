"""Whole-frame shifts with per-column stripes left in the frames: the central cross left out.

A gain reference that is missing (or taken for another camera mode) leaves every frame of a
counting movie with the same per-column pattern. Its power lies on the column ``kx = 0`` of
every cross-power spectrum and, fixed to the detector, it pulls each correlation peak towards
zero shift. :mod:`correction.align_global` zeroes the central cross (the row ``ky = 0`` and the
column ``kx = 0``) of the cross spectra, as Unblur does. This script measures the shift error
(RMS over frames and seeds after removing the common offset, px) of the whole-frame alignment of
:func:`correction.pipeline.correct_frames` on movies with known drift, in three settings:

* ``gain applied``: the frames divided by their true gain: no stripes (the reference case);
* ``stripes, cross out``: no gain given, the stripes left in: the estimator as shipped;
* ``stripes, cross in``: the same frames with the cross kept in the correlations (the masking
  function replaced by the identity for this run only).

The bound: with the cross out, the stripes should cost at most ``RATIO_BOUND`` times the error
of the gain-applied frames (the docstring of :mod:`correction.align_global` quotes the figures
of its default case, 1024^2 x 10 frames, 3 % contrast, 2 e/px/frame, a 3 % per-column gain).

    .venv/bin/python benchmarks/bench_central_cross.py [--size 1024] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from correction import align_global  # noqa: E402
from correction.gain import GainReference  # noqa: E402
from correction.params import AlignParams, CorrectionParams, DoseParams  # noqa: E402
from correction.pipeline import correct_frames  # noqa: E402
from correction.synthetic import drift_trajectory, gain_pattern, render_movie  # noqa: E402

#: stripes with the cross out cost at most this many times the gain-applied error
RATIO_BOUND = 1.5


def rms_px(errors: list[np.ndarray]) -> float:
    """RMS over all frames of per-frame shift errors ``[dy, dx]`` (px)."""
    return float(np.sqrt(np.mean(np.sum(np.concatenate(errors) ** 2, axis=1))))


def offset_free(shifts: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame error of ``shifts`` against ``truth`` with each one's mean removed (px)."""
    return (shifts - shifts.mean(axis=0)) - (truth - truth.mean(axis=0))


def shifts_px(frames: np.ndarray, e_per_px: float, gain: np.ndarray | None) -> np.ndarray:
    params = CorrectionParams(align=AlignParams(patches_x=1, patches_y=1),
                              dose=DoseParams(dose_per_frame_e_A2=e_per_px))
    reference = GainReference.from_arrays(gain) if gain is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the detector-pattern warning, expected here
        return correct_frames(frames, pixel_size_A=1.0, params=params,
                              gain_reference=reference).shifts_yx_px


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="frame side (pixels)")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dose", type=float, default=2.0, help="e/px per frame")
    parser.add_argument("--contrast", type=float, default=0.03)
    parser.add_argument("--column-sigma", type=float, default=0.03,
                        help="per-column gain variation left in the frames (fraction)")
    parser.add_argument("--drift", type=float, default=6.0, help="total drift (px)")
    args = parser.parse_args()

    errors: dict[str, list[np.ndarray]] = {"gain applied": [], "stripes, cross out": [],
                                           "stripes, cross in": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed + 1)
        shape = (args.size, args.size)
        gain = gain_pattern(rng, shape, pixel_sigma=0.0, column_sigma=args.column_sigma)
        truth = drift_trajectory(rng, args.frames, total_px=args.drift)
        movie = render_movie(rng, shape_yx=shape, n_frames=args.frames,
                             electrons_per_px_per_frame=args.dose, gain=gain,
                             shifts_yx_px=truth, contrast=args.contrast, n_hot_pixels=0)
        truth = movie.shifts_yx_px
        errors["gain applied"].append(offset_free(shifts_px(movie.frames, args.dose, gain),
                                                  truth))
        errors["stripes, cross out"].append(
            offset_free(shifts_px(movie.frames, args.dose, None), truth))
        with mock.patch.object(align_global, "_mask_central_cross", lambda spectrum: spectrum):
            errors["stripes, cross in"].append(
                offset_free(shifts_px(movie.frames, args.dose, None), truth))

    print(f"{args.size}^2 x {args.frames} frames, {args.dose} e/px/frame, "
          f"{100 * args.contrast:.0f} % contrast, {100 * args.column_sigma:.0f} % per-column "
          f"gain, {args.seeds} seeds; shift error RMS (px):")
    rms = {name: rms_px(found) for name, found in errors.items()}
    for name, value in rms.items():
        print(f"  {name:20s} {value:.3f}")
    ratio = rms["stripes, cross out"] / max(rms["gain applied"], 1e-12)
    verdict = "within" if ratio <= RATIO_BOUND else "OUTSIDE"
    print(f"  cross out / gain applied: {ratio:.2f} (bound <= {RATIO_BOUND}: {verdict}); "
          f"cross in / cross out: "
          f"{rms['stripes, cross in'] / max(rms['stripes, cross out'], 1e-12):.2f}")


if __name__ == "__main__":
    main()
