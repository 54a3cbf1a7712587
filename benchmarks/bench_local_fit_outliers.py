"""Wrong patch peaks against the local model's robust fit: error beside the clean-data bound.

A fit-level ensemble (no movie is rendered): a random smooth model (quadratic in space, cubic
in time, coefficients N(0, 1.5) px) gives the true displacement at the centres of a 5 x 5
patch grid on a 4096² frame; each patch measures it up to an unknown constant (N(0, 3) px)
with Gaussian noise (0.05, 0.15 or 0.4 px per component), 0-2 patches are pure noise (2 px
per component in every frame), and a fraction of the (patch, frame) peaks (0, 2, 5, 10 %) are
wrong: off by 1-10 px in a random direction, as a correlation peak picked from the noise. Each
trial is fitted (:func:`correction.align_local.fit_local_model`) twice: with the wrong peaks,
and, as the bound, the same measurements without them (what the fit would give if every
wrong peak were found and dropped). Prints per fraction of wrong peaks: the RMS error of the
fitted model over the whole frame (9 x 9 points, edge to edge) against the truth, median and
mean, beside the bound's, and the patches rejected beside the patches that are pure noise.

    .venv/bin/python benchmarks/bench_local_fit_outliers.py [--trials 80] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from correction.align_local import LocalMotionModel, fit_local_model, patch_grid

SHAPE_YX = (4096, 4096)


def _rms(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(err * err, axis=-1))))


def _trial(rng: np.random.Generator) -> tuple[float, dict[str, float]]:
    n_frames = int(rng.choice([10, 20, 40]))
    noise_px = float(rng.choice([0.05, 0.15, 0.4]))
    p_wrong = float(rng.choice([0.0, 0.02, 0.05, 0.1]))
    n_noise_patches = int(rng.integers(0, 3))
    truth = LocalMotionModel(SHAPE_YX, n_frames, 2, 3, rng.normal(scale=1.5, size=(2, 6, 3)))
    centres = patch_grid((1024, 1024), SHAPE_YX, (5, 5)).centres_yx_px
    true = truth.displacement_yx_px(centres[:, 0], centres[:, 1]).transpose(1, 0, 2)
    clean = (true + rng.normal(scale=noise_px, size=true.shape)
             + rng.normal(scale=3.0, size=(len(centres), 1, 2)))
    noisy = rng.choice(len(centres), n_noise_patches, replace=False)
    clean[noisy] += rng.normal(scale=2.0, size=(n_noise_patches, n_frames, 2))
    wrong = rng.random(true.shape[:2]) < p_wrong
    angle = rng.uniform(0, 2 * np.pi, int(wrong.sum()))
    length = rng.uniform(1, 10, int(wrong.sum()))
    measured = clean.copy()
    measured[wrong] += np.stack([length * np.sin(angle), length * np.cos(angle)], axis=-1)
    y, x = np.meshgrid(np.linspace(0, 4095, 9), np.linspace(0, 4095, 9), indexing="ij")
    at_points = truth.displacement_yx_px(y, x)
    fit = fit_local_model(centres, measured, shape_yx=SHAPE_YX)
    bound = fit_local_model(centres, clean, shape_yx=SHAPE_YX)
    return p_wrong, {"error_px": _rms(fit.model.displacement_yx_px(y, x) - at_points),
                     "bound_px": _rms(bound.model.displacement_yx_px(y, x) - at_points),
                     "rejected": float(fit.rejected.sum()),
                     "noise_patches": float(n_noise_patches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    by_fraction: dict[float, list[dict[str, float]]] = collections.defaultdict(list)
    for _ in range(args.trials):
        p_wrong, figures = _trial(rng)
        by_fraction[p_wrong].append(figures)
    print(f"{args.trials} trials, seed {args.seed}: RMS model error over the frame (px), "
          "with the wrong peaks against the bound (the same trials without them)")
    for p_wrong in sorted(by_fraction):
        rows = by_fraction[p_wrong]
        col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        print(f"  wrong peaks {p_wrong:4.0%} ({len(rows):3d} trials): error median "
              f"{np.median(col['error_px']):.4f} mean {col['error_px'].mean():.4f}; bound median "
              f"{np.median(col['bound_px']):.4f} mean {col['bound_px'].mean():.4f}; patches "
              f"rejected {col['rejected'].mean():.2f} per trial, pure noise "
              f"{col['noise_patches'].mean():.2f}")


if __name__ == "__main__":
    main()
