"""Whole-frame shifts at weak correlation peaks: as measured, along the fitted path, unaligned.

For each case, --seeds synthetic movies with known motion (:func:`correction.synthetic.
render_movie`: a drift that slows down plus 0.3 px of frame-to-frame jitter per axis) are
corrected by :func:`correction.pipeline.correct_frames` (whole-frame alignment only) and the
RMS shift error against the truth (common offset removed, output px) is printed for:

* ``first``: the first pass's shifts, as whole-frame alignment measured them before any path
  was fitted (what the sums were shifted by before paths were fitted);
* ``used``: what the sums were shifted by (the fitted path where one was fitted, else the
  shifts of the second pass started from the first's path, or the first's);
* ``unaligned``: no shifts at all (what an alignment must beat to be worth anything);
* ``floor``: the same polynomial fitted to the TRUE shifts (what a smooth path leaves of the
  jitter: the bound of the fitted path).

Cases: ``late3``/``late5``/``late10``: a late tilt (8 frames of 1.5 e/px after 100 e/Å² at 3,
5 and 10 % contrast, 768^2, 2 Å/px); ``few7``: 20 frames of 0.15 e/px at 7 % (512 x 720);
``dim10``: 10 frames of 0.08 e/px at 10 % (1024^2); ``strong``: 20 frames of 0.06 e/px at 30 %;
``small``: 12 frames of 2 e/px at 30 % on 192 x 256; ``late30jump``/``late5jump``: the late
tilt at 30 and 5 % contrast whose specimen jumps 10 px between its first two frames (a stage
that had not settled), a path no quadratic follows. The cases with strong peaks must keep
their shifts as measured (``fitted 0/N``), the jumps too where the alignment finds them again
from the path.

    .venv/bin/python benchmarks/bench_fitted_path.py [--seeds 4] [--cases late3 few7 ...]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from correction import path_fit  # noqa: E402
from correction.params import AlignParams, CorrectionParams, DoseParams  # noqa: E402
from correction.pipeline import correct_frames  # noqa: E402
from correction.synthetic import drift_trajectory, render_movie  # noqa: E402

CASES = {
    "late3": dict(shape=(768, 768), frames=8, e_px=1.5, contrast=0.03, pre_e_A2=100.0, px=2.0),
    "late5": dict(shape=(768, 768), frames=8, e_px=1.5, contrast=0.05, pre_e_A2=100.0, px=2.0),
    "late10": dict(shape=(768, 768), frames=8, e_px=1.5, contrast=0.10, pre_e_A2=100.0, px=2.0),
    "few7": dict(shape=(512, 720), frames=20, e_px=0.15, contrast=0.07, pre_e_A2=0.0, px=1.0),
    "dim10": dict(shape=(1024, 1024), frames=10, e_px=0.08, contrast=0.10, pre_e_A2=0.0, px=1.0),
    "strong": dict(shape=(512, 720), frames=20, e_px=0.06, contrast=0.30, pre_e_A2=0.0, px=1.0),
    "small": dict(shape=(192, 256), frames=12, e_px=2.0, contrast=0.30, pre_e_A2=0.0, px=1.0),
    "late30jump": dict(shape=(768, 768), frames=8, e_px=1.5, contrast=0.30, pre_e_A2=100.0,
                       px=2.0, jump_px=10.0),
    "late5jump": dict(shape=(768, 768), frames=8, e_px=1.5, contrast=0.05, pre_e_A2=100.0,
                      px=2.0, jump_px=10.0),
}


def _centred(shifts: np.ndarray) -> np.ndarray:
    return shifts - shifts.mean(axis=0)


def _rms(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((_centred(found) - _centred(truth)) ** 2, axis=1))))


def _polynomial_path(shifts: np.ndarray, degree: int) -> np.ndarray:
    t = np.arange(len(shifts), dtype=np.float64)
    coefficients = np.polyfit(t, shifts, degree)
    return np.stack([np.polyval(coefficients[:, a], t) for a in (0, 1)], axis=1)


class _FirstPass:
    """Wraps :func:`correction.path_fit.with_fitted_path` to keep the shifts it is first given
    for a movie (output px): the first pass's, as measured."""

    def __init__(self) -> None:
        self.shifts_yx_px: np.ndarray | None = None
        self._fit = path_fit.with_fitted_path

    def __call__(self, alignment, scale_yx):
        if self.shifts_yx_px is None:
            self.shifts_yx_px = np.asarray(alignment.shifts_yx_px) * np.asarray(scale_yx)
        return self._fit(alignment, scale_yx)


def run_case(name: str, seeds: int) -> None:
    case = CASES[name]
    rows, fitted = [], 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        shifts = None
        if case.get("jump_px"):  # the default drift, and a jump after the first frame
            angle = rng.uniform(0, 2 * np.pi)
            shifts = drift_trajectory(rng, case["frames"])
            shifts[1:] += case["jump_px"] * np.array([np.sin(angle), np.cos(angle)])
            shifts -= shifts.mean(axis=0)
        movie = render_movie(rng, shape_yx=case["shape"], shifts_yx_px=shifts,
                             n_frames=case["frames"], electrons_per_px_per_frame=case["e_px"],
                             gain=None, n_hot_pixels=0, damage=case["pre_e_A2"] > 0,
                             pre_exposure_e_A2=case["pre_e_A2"], pixel_size_A=case["px"],
                             contrast=case["contrast"], dtype=np.int16)
        dose = DoseParams(dose_per_frame_e_A2=case["e_px"] / case["px"] ** 2,
                          pre_exposure_e_A2=case["pre_e_A2"])
        params = CorrectionParams(dose=dose, align=AlignParams(patches_x=1, patches_y=1))
        first = _FirstPass()
        path_fit.with_fitted_path = first
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = correct_frames(movie.frames, pixel_size_A=case["px"], params=params,
                                     workers=2)
        finally:
            path_fit.with_fitted_path = first._fit
        path = out.alignment.fitted_path
        measured = first.shifts_yx_px
        degree = 2 if path is None else path.degree
        truth = movie.shifts_yx_px
        rows.append((_rms(measured, truth), _rms(out.shifts_yx_px, truth),
                     _rms(np.zeros_like(truth), truth),
                     _rms(_polynomial_path(truth, degree), truth)))
        fitted += path is not None
    a = np.array(rows)
    rms = np.sqrt(np.mean(a ** 2, axis=0))
    print(f"{name:7s} fitted {fitted}/{seeds}  first {rms[0]:.2f} ({a[:, 0].min():.2f}-"
          f"{a[:, 0].max():.2f})  used {rms[1]:.2f} ({a[:, 1].min():.2f}-{a[:, 1].max():.2f})"
          f"  unaligned {rms[2]:.2f}  floor {rms[3]:.2f}  px RMS", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    for name in args.cases:
        run_case(name, args.seeds)


if __name__ == "__main__":
    main()
