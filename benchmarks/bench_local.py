"""Benchmark of patch-based local motion correction on synthetic movies with known motion.

Renders a movie (default 4096^2 x 10 frames, 1.5 e/px/frame) with global drift plus a known
smooth local deformation (default 3 px at the corners), then, in a fresh child process (so its
peak RSS is the correction's own), runs: one FFT of every frame, Fourier crop, global alignment,
patch alignment and the local model fit, and the tile-wise local sums (plain, dose-weighted,
even, odd); the same sums with global shifts only are computed for comparison. Prints

* the local error: RMS length of (fitted - true) displacement at the patch centres, each
  position's temporal mean removed (and the same for global-only correction);
* the sharpness gained: mean FRC against the noise-free truth over 0.2-0.7 Nyquist, with and
  without local correction;
* wall times of each stage and the child's peak RSS.

Usage::

    .venv/bin/python benchmarks/bench_local.py                       # 4096^2 x 10, 1.5 e/px
    .venv/bin/python benchmarks/bench_local.py --size 2048 --dose 1.0 --contrast 0.1
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_local.py   # see note below
    .venv/bin/python benchmarks/bench_local.py --correct   # + whole correct vs the floor

Note: numpy's OpenBLAS threads make the many tiny matrix products of the correlation-peak
search several times slower on a busy 2-core machine; ``OPENBLAS_NUM_THREADS=1`` avoids that.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _render(args: argparse.Namespace, folder: Path) -> None:
    from correction.synthetic_local import (LocalDeformation, render_local_movie,
                                            smooth_global_drift)
    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size)
    field = LocalDeformation(shape, args.frames, corner_amplitude_px=args.amplitude,
                             seed=args.seed)
    drift = smooth_global_drift(args.frames, total_px=args.drift, rng=rng)
    t = time.perf_counter()
    movie = render_local_movie(shape, args.frames, dose_per_pixel=args.dose, deformation=field,
                               global_shifts_yx_px=drift, rng=rng, contrast=args.contrast)
    print(f"rendered {args.size}^2 x {args.frames} at {args.dose} e/px/frame, contrast "
          f"{args.contrast}, local field {args.amplitude} px at the corners, global drift "
          f"{args.drift} px in {time.perf_counter() - t:.1f} s")
    np.save(folder / "frames.npy", movie.frames)
    with open(folder / "movie.pkl", "wb") as fh:
        pickle.dump(dataclass_without_frames(movie), fh, protocol=4)


def dataclass_without_frames(movie):
    from correction.synthetic_local import SyntheticLocalMovie
    return SyntheticLocalMovie(np.zeros((0, 0, 0), np.uint16), movie.truth_sum,
                               movie.global_shifts_yx_px, movie.deformation,
                               movie.dose_per_pixel)


def _child(folder: Path, workers: int) -> None:
    from correction.align_global import estimate_shifts
    from correction.align_local import estimate_local_motion
    from correction.dose import accumulated_dose_e_A2
    from correction.fourier import fourier_crop, rfft2
    from correction.local_apply import local_sums
    from correction.params import AlignParams
    from correction.synthetic_local import frc_band_against_truth

    frames_u16 = np.load(folder / "frames.npy")
    with open(folder / "movie.pkl", "rb") as fh:
        movie = pickle.load(fh)
    n, ny, nx = frames_u16.shape
    params = AlignParams()
    times = {}
    t0 = time.perf_counter()
    frames = frames_u16.astype(np.float32)
    del frames_u16
    align = min(params.align_size_px, ny)
    crop_shape = (align, int(round(nx * align / ny)) // 2 * 2)
    cropped = np.empty((n, crop_shape[0], crop_shape[1] // 2 + 1), dtype=np.complex64)
    for i in range(n):  # one frame at a time: bounded memory
        cropped[i] = fourier_crop(rfft2(frames[i], workers=workers), (ny, nx), crop_shape)
    times["fft_and_crop_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    ga = estimate_shifts(cropped, params=params, output_px_per_grid_px=ny / crop_shape[0],
                         workers=workers)
    shifts = ga.shifts_yx_px * (ny / crop_shape[0])
    times["global_align_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lm = estimate_local_motion(cropped, crop_shape, (ny, nx), shifts, params=params,
                               workers=workers)
    times["local_estimate_s"] = time.perf_counter() - t
    dose_end = accumulated_dose_e_A2(np.full(n, movie.dose_per_pixel))  # 1 Å/px
    t = time.perf_counter()
    with_local = local_sums(frames, shifts, lm.model if lm.applied else None, pixel_size_A=1.0,
                            dose_end_e_A2=dose_end, workers=workers)
    times["local_apply_s"] = time.perf_counter() - t
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    global_only = local_sums(frames, shifts, None, pixel_size_A=1.0, dose_end_e_A2=dose_end,
                             workers=workers)

    c = lm.patch_centres_yx_px
    offset = (movie.global_shifts_yx_px - shifts).mean(axis=0)
    true = movie.true_displacement_yx_px(c[:, 0] - offset[0], c[:, 1] - offset[1])
    true -= true.mean(axis=0)
    est = shifts[:, None, :] + lm.fitted_yx_px.transpose(1, 0, 2)
    est -= est.mean(axis=0)
    glob = np.broadcast_to(shifts[:, None, :] - shifts.mean(axis=0), true.shape)

    def rms(e: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.sum(e * e, axis=-1)))) if e.size else float("nan")

    frc = {name: (frc_band_against_truth(getattr(with_local, name), movie.truth_sum),
                  frc_band_against_truth(getattr(global_only, name), movie.truth_sum))
           for name in ("plain", "dose_weighted")}
    halves = (frc_band_against_truth(with_local.even + with_local.odd, movie.truth_sum),
              frc_band_against_truth(global_only.even + global_only.odd, movie.truth_sum))
    print(json.dumps({
        "applied": lm.applied, "reason": lm.reason,
        "local_error_px": rms(est - true), "global_only_error_px": rms(glob - true),
        "rejected_patches": int(lm.rejected.sum()),
        "median_patch_confidence": float(np.median(lm.confidence)) if lm.confidence.size else None,
        "frc_plain": frc["plain"], "frc_dose_weighted": frc["dose_weighted"],
        "frc_even_plus_odd": halves, "times_s": times, "peak_rss_mb": peak_rss_mb,
    }))


def _correct_vs_floor(args: argparse.Namespace, folder: Path) -> None:
    """The whole ``motionwatch correct`` (5x5 local by default) against the floor, in fresh
    child processes of ``bench_correct.py`` (same floor definition), plus the accuracy of the
    written ``local`` record and the sharpness of the written sums."""
    import mrcfile

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_correct  # noqa: PLC0415 - sibling benchmark script

    from correction.synthetic_local import frc_band_against_truth

    frames = np.load(folder / "frames.npy")
    with open(folder / "movie.pkl", "rb") as fh:
        movie = pickle.load(fh)
    movie_path, gain_path = folder / "local.mrc", folder / "gain.mrc"
    with mrcfile.new(movie_path, overwrite=True) as mrc:
        mrc.set_data(frames.astype(np.int16))
        mrc.voxel_size = bench_correct.PIXEL_SIZE_A
    with mrcfile.new(gain_path, overwrite=True) as mrc:
        mrc.set_data(np.ones(frames.shape[1:], np.float32))
    del frames
    runs: dict[str, list[dict]] = {"floor": [], "correct": [], "global": []}
    extra = {"floor": "", "correct": "", "global": "--patches 1 1"}
    for _ in range(args.repeats):
        for kind in ("floor", "correct", "global"):
            child = "floor" if kind == "floor" else "correct"
            runs[kind].append(bench_correct._run_child(child, movie_path, gain_path,
                                                       folder / f"out_{kind}", extra[kind]))
    best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["maxrss_MB"] for r in v) for k, v in runs.items()}
    for kind in ("floor", "global", "correct"):
        print(f"  {kind:>7}: best wall {best[kind]:.2f} s (x{best[kind] / best['floor']:.2f} "
              f"floor), best CPU {cpu[kind]:.2f} s (x{cpu[kind] / cpu['floor']:.2f}), "
              f"peak RSS {rss[kind]:.0f} MB")
    print(f"  correct stages (last run): {json.dumps(runs['correct'][-1]['timings_s'])}")
    record = json.loads((folder / "out_correct" / "local.motion.json").read_text())
    local = record["local"]
    print(f"  local applied: {local['applied']} ({local['reason']})")
    if local["applied"]:
        c = np.array(local["patch_centres_px"])[:, ::-1]
        fitted = np.array(local["fitted_shifts_px"])[..., ::-1].transpose(1, 0, 2)  # (F,P,yx)
        shifts = np.array(record["global_shifts_px"])[:, ::-1]
        offset = (movie.global_shifts_yx_px - shifts).mean(axis=0)
        true = movie.true_displacement_yx_px(c[:, 0] - offset[0], c[:, 1] - offset[1])
        err = (fitted - fitted.mean(0)) - (true - true.mean(0))
        print(f"  local error of the written record at patch centres: "
              f"{float(np.sqrt(np.mean(np.sum(err * err, axis=-1)))):.4f} px RMS")
    for name in ("", "_DW"):
        imgs = {}
        for kind in ("correct", "global"):
            with mrcfile.open(folder / f"out_{kind}" / f"local{name}.mrc") as mrc:
                imgs[kind] = np.asarray(mrc.data, dtype=np.float32)
        print(f"  written S{name}.mrc FRC vs truth 0.2-0.7 Nyquist: local "
              f"{frc_band_against_truth(imgs['correct'], movie.truth_sum):.4f}, global only "
              f"{frc_band_against_truth(imgs['global'], movie.truth_sum):.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--dose", type=float, default=1.5, help="e/px/frame")
    parser.add_argument("--amplitude", type=float, default=3.0, help="local field at corners, px")
    parser.add_argument("--drift", type=float, default=8.0, help="global drift, px")
    parser.add_argument("--contrast", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--correct", action="store_true",
                        help="also time the whole motionwatch correct (5x5 local, and "
                             "--patches 1 1) against the floor of bench_correct.py")
    parser.add_argument("--repeats", type=int, default=2, help="repeats with --correct")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.workers)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _render(args, folder)
        out = subprocess.run([sys.executable, __file__, "--child", str(folder),
                              "--workers", str(args.workers)],
                             check=True, capture_output=True, text=True, env=os.environ.copy())
        if args.correct:
            print("whole correct vs floor (fresh processes, int16 MRC + flat gain):")
            _correct_vs_floor(args, folder)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    t = r["times_s"]
    print(f"local correction applied: {r['applied']} ({r['reason']})")
    print(f"local error at patch centres: {r['local_error_px']:.4f} px RMS "
          f"(global only: {r['global_only_error_px']:.4f} px); rejected patches "
          f"{r['rejected_patches']}, median confidence {r['median_patch_confidence']:.3f}")
    for key, label in (("frc_plain", "plain"), ("frc_dose_weighted", "dose-weighted"),
                       ("frc_even_plus_odd", "even+odd")):
        loc, glo = r[key]
        print(f"FRC vs truth 0.2-0.7 Nyquist, {label:>13}: local {loc:.4f}  global only "
              f"{glo:.4f}  gain {loc - glo:+.4f}")
    print("times: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
          + f"; local total {t['local_estimate_s'] + t['local_apply_s']:.2f} s")
    print(f"peak RSS of the correction process: {r['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
