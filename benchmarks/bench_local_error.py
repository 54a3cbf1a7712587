"""Calibration of the local model's predicted error against known truth.

For each case (seed, frame size, frames, dose, corner field, contrast, patch frame grouping) a
synthetic movie with a known field is rendered, globally aligned at 1024² and its 5 x 5 patch
shifts measured as in the pipeline (:func:`correction.align_local.estimate_local_motion`);
then it prints, per case: the actual RMS error (vector length) of the fitted displacement at
the accepted patch centres against the truth, the predicted error (``predicted_error_px``),
their ratio, the gate's decision, and the RMS over the whole frame (edge to edge, corners
included, 17 x 17 points) of the field error with the fitted model (applied or not) and with
global alignment alone. A summary gives the ratio's median and spread per kind of case, how
often local correction was applied, helped (smaller RMS error over the frame than global
alone) or hurt, and the regression gain of the fitted on the true local displacement at the
patch centres (cases with a field at 0.3-3 e/px/frame; ``gain`` and ``motion_px``, the
fitted motion's RMS, per case in ``--json``). The numbers in the module docstring of
``correction/align_local.py`` come from the ``--full`` grid (183 cases, 12-20 min on 2 busy
cores); those of ``LocalParams.max_predicted_error_px`` from ``--low-contrast`` (162 cases).

The truth (global + local, temporal means removed, as ``tests/correction/test_align_local.py``
takes it) is the displacement of the feature at each position of the globally aligned sum,
what the local sums apply there
(:meth:`correction.synthetic_local.SyntheticLocalMovie.aligned_sum_displacement_yx_px`).
Before, it was the field at ``centre - mean offset`` (reference positions), which misses the
mean local displacement: 0.25-0.65 % of the motion for 3-8 px corner fields, seen as a gain
shortfall of the fit.

Usage::

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_local_error.py          # 12 cases
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_local_error.py --full   # 183
    ... --groups   # the 48 cases of the full grid with grouped patch frames (2-4), 3-4 min
    ... --low-contrast   # 162 cases at 0.1-0.5 e/px/frame and 5-10 % contrast
    ... --json out.json   # every case's figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from correction.align_global import estimate_shifts  # noqa: E402
from correction.align_local import LocalParams, estimate_local_motion  # noqa: E402
from correction.fourier import fourier_crop, rfft2  # noqa: E402
from correction.params import AlignParams  # noqa: E402
from correction.synthetic_local import (  # noqa: E402
    LocalDeformation,
    render_local_movie,
    smooth_global_drift,
)


def quick_cases() -> list[tuple]:
    """(seed, size, frames, e/px/frame, corner px, contrast, group) of a short run."""
    return [(s, 1024, 10, d, c, 0.3, 1) for s in (0, 1) for d in (0.1, 0.3, 1.0)
            for c in (0, 3)]


def full_cases() -> list[tuple]:
    """The grid behind the calibration table in ``correction/align_local.py``."""
    cases = []
    add = cases.append
    for seed in range(4):
        for dose in (0.1, 0.3, 1.0, 3.0):
            for corner in (0, 1, 3, 8):
                add((seed, 1024, 10, dose, corner, 0.3, 1))
    for seed in range(3):
        for corner in (1, 3, 8):
            add((seed, 1024, 8, 0.1, corner, 0.3, 1))
    for seed in range(2):
        for dose in (0.1, 0.3, 1.0, 3.0):
            for corner in (1, 3, 8):
                add((seed, 1024, 10, dose, corner, 0.1, 1))
    for seed in range(2):
        for dose in (0.1, 0.3):
            for corner in (0, 3, 8):
                for group in (2, 3, 4):
                    add((seed, 1024, 20, dose, corner, 0.3, group))
                add((seed, 1024, 10, dose, corner, 0.3, 2))
    for seed in range(3):
        for dose in (0.3, 1.0):
            for corner in (0, 3, 8):
                add((seed, 1024, 20, dose, corner, 0.3, 1))
    for seed in range(2):
        for dose in (0.3, 1.0, 3.0):
            for corner in (3, 8):
                add((seed, 1024, 40, dose, corner, 0.3, 1))
    for seed in range(2):
        for corner in (3, 8):
            add((seed, 2048, 10, 1.0, corner, 0.3, 1))
        add((seed, 2048, 40, 1.0, 8, 0.3, 1))
    add((0, 2048, 40, 0.3, 3, 0.3, 1))
    add((0, 2048, 40, 3.0, 8, 0.3, 1))
    return cases


def low_contrast_cases() -> list[tuple]:
    """Tomography doses at 5-10 % contrast, where the limit on the predicted error decides
    (``LocalParams.max_predicted_error_px``): 162 cases, 10-20 min on 2 cores."""
    cases = [(seed, 1024, 10, dose, corner, contrast, 1) for seed in range(10, 16)
             for dose in (0.2, 0.3, 0.5) for corner in (0, 2, 4, 8) for contrast in (0.05, 0.1)]
    cases += [(seed, 1024, 40, dose, corner, 0.1, 1) for seed in range(10, 13)
              for dose in (0.1, 0.2) for corner in (0, 3, 8)]
    return cases


def _rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(e * e, axis=-1))))


def run_case(seed: int, size: int, n: int, dose: float, corner: float, contrast: float,
             group: int) -> dict:
    """Render, align, fit; the figures of one case (output px)."""
    shape = (size, size)
    rng = np.random.default_rng(seed)
    field = (LocalDeformation(shape, n, corner_amplitude_px=corner, seed=seed)
             if corner else None)
    movie = render_local_movie(shape, n, dose_per_pixel=dose, deformation=field,
                               global_shifts_yx_px=smooth_global_drift(n, total_px=6.0, rng=rng),
                               rng=rng, contrast=contrast)
    t0 = time.perf_counter()
    params = AlignParams()
    spectra = rfft2(movie.frames.astype(np.float32), workers=2)
    m = min(1024, size)
    cropped = fourier_crop(spectra, shape, (m, m))
    del spectra
    ga = estimate_shifts(cropped, params=params, output_px_per_grid_px=size / m, workers=2)
    shifts = ga.shifts_yx_px * (size / m)
    lm = estimate_local_motion(cropped, (m, m), shape, shifts, params=params,
                               local=LocalParams(group_frames=group), workers=2)
    t_align = time.perf_counter() - t0

    def residual_truth(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """True displacement of the feature at ``(y, x)`` in the globally aligned sum minus
        the global shifts, temporal mean removed: what the local model should apply there."""
        t = movie.aligned_sum_displacement_yx_px(y, x, shifts)
        return t - (shifts - shifts.mean(axis=0)).reshape((n,) + (1,) * np.ndim(y) + (2,))

    c = lm.patch_centres_yx_px
    acc = ~lm.rejected
    true = residual_truth(c[:, 0], c[:, 1]).transpose(1, 0, 2)
    actual = _rms((lm.fitted_yx_px - true)[acc]) if acc.any() else float("nan")
    # gain of the fitted against the true local displacement (regression through 0)
    t2 = float(np.sum(true[acc] ** 2))
    gain = float(np.sum(lm.fitted_yx_px[acc] * true[acc]) / t2) if t2 > 0 else float("nan")
    yy, xx = np.meshgrid(np.linspace(0, size - 1, 17), np.linspace(0, size - 1, 17),
                         indexing="ij")
    tf = residual_truth(yy, xx)
    local = lm.model.displacement_yx_px(yy, xx)
    pred = float(lm.predicted_error_px)
    return {"seed": seed, "size": size, "frames": n, "dose": dose, "corner_px": corner,
            "contrast": contrast, "group": group, "actual_px": actual, "predicted_px": pred,
            "ratio": actual / pred if pred > 0 else float("nan"), "applied": bool(lm.applied),
            "reason": lm.reason, "gain": gain,
            "motion_px": _rms(lm.fitted_yx_px[acc]) if acc.any() else 0.0,
            "field_rms_local_px": _rms(local - tf), "field_rms_global_px": _rms(tf),
            "align_s": t_align}


def kind(r: dict) -> str:
    """The row of the summary a case belongs to."""
    if r["group"] > 1:
        return "groups of 2-4"
    if r["size"] > 1024:
        return f"{r['size']}^2, 10-40 frames"
    if r["frames"] >= 20:
        return "1024^2, 20-40 frames"
    return f"1024^2, 8-10 frames, {r['dose']:g} e/px"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the 183-case grid")
    ap.add_argument("--groups", action="store_true",
                    help="the cases of the full grid with grouped patch frames (48)")
    ap.add_argument("--low-contrast", action="store_true",
                    help="tomography doses at 5-10 %% contrast (162 cases)")
    ap.add_argument("--json", type=Path, help="write every case's figures here")
    a = ap.parse_args()
    rows = []
    cases = (full_cases() if a.full else
             [c for c in full_cases() if c[-1] > 1] if a.groups else
             low_contrast_cases() if a.low_contrast else quick_cases())
    for case in cases:
        r = run_case(*case)
        rows.append(r)
        print(f"seed {r['seed']} {r['size']}^2 x {r['frames']:2d} {r['dose']:4g} e/px "
              f"field {r['corner_px']:g} px contrast {r['contrast']} group {r['group']}: "
              f"actual {r['actual_px']:.4f} predicted {r['predicted_px']:.4f} px "
              f"ratio {r['ratio']:.2f}; {'applied' if r['applied'] else 'not applied'}, "
              f"field RMS over the frame with the model {r['field_rms_local_px']:.3f}, global "
              f"only {r['field_rms_global_px']:.3f} px", flush=True)
    groups = defaultdict(list)
    for r in rows:
        groups[kind(r)].append(r["ratio"])
    print("\nactual / predicted error at the patch centres: median (min-max)")
    for k in sorted(groups):
        v = np.array(groups[k])
        print(f"  {k:30s} {len(v):3d}  {np.nanmedian(v):.2f} ({np.nanmin(v):.2f}-"
              f"{np.nanmax(v):.2f})")
    ratios = np.array([r["ratio"] for r in rows])
    ratios = ratios[np.isfinite(ratios)]  # nan: no patch accepted, nothing predicted
    inside = np.mean((ratios >= 0.7) & (ratios <= 1.5))
    lo, hi = np.percentile(ratios, [10, 90])
    print(f"  all {len(ratios)}: median {np.median(ratios):.2f} ({lo:.2f}-{hi:.2f}, 10-90 %), "
          f"within 0.7-1.5: {inside:.0%}, above 1.5: {int(np.sum(ratios > 1.5))}")
    # judged by the patches with signal: where none has any, nothing is applied whatever
    # the predicted error says
    judged = [r for r in rows if "too little signal" not in r["reason"]]
    print("actual / predicted error by predicted error (movies with signal in their patches)")
    for lo, hi in ((0.0, 0.2), (0.2, 0.5), (0.5, np.inf)):
        v = np.array([r["ratio"] for r in judged if lo <= r["predicted_px"] < hi])
        if v.size:
            print(f"  predicted {lo:g}-{hi:g} px: {v.size:3d}  {np.median(v):.2f} "
                  f"({v.min():.2f}-{v.max():.2f})")
    gains = np.array([r["gain"] for r in rows if r["corner_px"] > 0 and r["dose"] >= 0.3])
    if gains.size:
        lo, hi = np.percentile(gains, [10, 90])
        print(f"fitted / true local displacement at the patch centres (fields, 0.3-3 e/px): "
              f"median {np.median(gains):.4f} ({lo:.4f}-{hi:.4f}, 10-90 %) over {gains.size}")
    applied = [r for r in rows if r["applied"]]
    helps = sum(r["field_rms_local_px"] < r["field_rms_global_px"] for r in applied)
    print(f"local correction applied on {len(applied)} of {len(rows)}: RMS field error over the "
          f"frame smaller than global alone on {helps}, larger on {len(applied) - helps}; "
          f"applied without a field: {sum(r['corner_px'] == 0 for r in applied)}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
