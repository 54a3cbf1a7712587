"""Benchmark of patch-based local motion correction on synthetic movies with known motion.

Renders a movie (default 4096^2 x 10 frames, 1.5 e/px/frame) with global drift plus a known
smooth local deformation (``--amplitudes``, px at the corners, last frame vs first), then, in a
fresh child process (so its peak RSS is the correction's own), runs: one FFT of every frame,
Fourier crop, global alignment, patch alignment and the local model fit, and the tile-wise
local sums (plain, dose-weighted, even, odd). Prints, per field:

* the estimation error: RMS length of (fitted - true) displacement at the patch centres, each
  position's temporal mean removed; beside it the model's own floor (the same robust fit to the
  *true* displacements at the patch centres) and global-only correction;
* the application error: the true field applied by the local-sum code to a noise-free render
  of the same movie, frame by frame (first and last), against the exact render, as residual
  displacement in 32-px windows (max and RMS), for the tiles chosen from the field's gradient
  and for the former constant shifts on 512-px tiles;
* the sharpness: mean FRC against the noise-free truth over 0.2-0.7 Nyquist of the locally
  corrected, the global-only and the oracle sums (the oracle: the *true* field applied by the
  same code), and the fraction of the oracle recovered;
* wall times of each stage (the application with and without the first-order term) and the
  child's peak RSS.

Usage::

    .venv/bin/python benchmarks/bench_local.py --amplitudes 1 3 5 10   # 4096^2 x 10, 1.5 e/px
    .venv/bin/python benchmarks/bench_local.py --size 2048 --dose 1.0 --contrast 0.1
    .venv/bin/python benchmarks/bench_local.py --correct   # + whole correct vs the floor
    .venv/bin/python benchmarks/bench_local.py --tmc       # + torch-motion-correction, if installed

Note: numpy's OpenBLAS threads make the many tiny matrix products of the correlation-peak
search several times slower on a busy 2-core machine: the child runs, as the ``motionwatch``
command does, with ``OPENBLAS_NUM_THREADS=1`` unless it is set.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from daemon.commands.cli import single_threaded_blas_environment


#: the largest residual displacement the applied field may leave (README, tests)
APPLICATION_BOUND_PX = 0.05

def _render_movie(args: argparse.Namespace, *, noise_free: bool = False):
    from correction.synthetic_local import (LocalDeformation, render_local_movie,
                                            smooth_global_drift)
    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size)
    field = LocalDeformation(shape, args.frames, corner_amplitude_px=args.amplitude,
                             seed=args.seed)
    drift = smooth_global_drift(args.frames, total_px=args.drift, rng=rng)
    # same seed, same draws: the noise-free render has the same specimen, drift and field
    return render_local_movie(shape, args.frames, dose_per_pixel=args.dose, deformation=field,
                              global_shifts_yx_px=drift, rng=rng, contrast=args.contrast,
                              noise_free=noise_free)


def _render(args: argparse.Namespace, folder: Path) -> None:
    if (folder / "movie.pkl").exists():
        print(f"reusing the movie rendered in {folder}")
        return
    t = time.perf_counter()
    movie = _render_movie(args)
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


class _OneFrame:
    """Frame ``i`` of a displacement field, as a one-frame field."""

    def __init__(self, field, i: int) -> None:
        self.field, self.i = field, i

    def displacement_yx_px(self, y, x):
        return self.field.displacement_yx_px(y, x)[self.i:self.i + 1]


def _rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(e * e, axis=-1)))) if e.size else float("nan")


def _application_error(args: argparse.Namespace, workers: int) -> dict:
    """The true field applied by local_sums to a noise-free render, frame by frame."""
    from correction.local_apply import local_sums, plan_tiles
    from correction.synthetic_local import local_displacement_yx_px

    clean = _render_movie(args, noise_free=True)
    n = clean.frames.shape[0]
    oracle = clean.sum_referenced_field()
    plan = plan_tiles(oracle, clean.frames.shape[1:])
    out = {"tile_px": plan.tile_px, "taylor": plan.taylor,
           "max_gradient": plan.max_gradient, "bound_px": float(plan.bound_px)}
    for label, kw in (("planned", {}), ("constant_512", {"tile_px": 512, "taylor": False})):
        errors = []
        for i in (0, n - 1):
            one = local_sums(clean.frames[i:i + 1], np.zeros((1, 2)), _OneFrame(oracle, i),
                             pixel_size_A=1.0, dose_end_e_A2=np.array([args.dose]),
                             workers=workers, **kw)
            _, d = local_displacement_yx_px(one.plain, clean.truth_sum / n, window_px=32)
            errors.append(d)
        e = np.concatenate(errors)
        out[label] = {"max_px": float(np.max(np.hypot(e[:, 0], e[:, 1]))), "rms_px": _rms(e)}
    return out


def _child(folder: Path, workers: int) -> None:
    from correction.allocator import peak_resident_MB
    from correction.align_global import estimate_shifts
    from correction.align_local import LocalParams, estimate_local_motion, fit_local_model
    from correction.dose import accumulated_dose_e_A2
    from correction.fourier import fourier_crop, rfft2
    from correction.local_apply import local_sums, plan_tiles
    from correction.params import AlignParams
    from correction.synthetic_local import frc_band_against_truth, frc_band_tiled

    args = argparse.Namespace(**json.loads((folder / "args.json").read_text()))
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
    del cropped
    dose_end = accumulated_dose_e_A2(np.full(n, movie.dose_per_pixel))  # 1 Å/px
    kw = dict(pixel_size_A=1.0, dose_end_e_A2=dose_end, workers=workers)
    model = lm.model if lm.applied else None
    plan = plan_tiles(model, (ny, nx))
    t = time.perf_counter()
    with_local = local_sums(frames, shifts, model, **kw)
    times["local_apply_s"] = time.perf_counter() - t
    peak_rss_mb = peak_resident_MB()
    if model is not None:
        t = time.perf_counter()
        local_sums(frames, shifts, model, taylor=False, tile_px=512, **kw)
        times["constant_512_apply_s"] = time.perf_counter() - t
    t = time.perf_counter()
    global_only = local_sums(frames, shifts, None, **kw)
    times["global_only_apply_s"] = time.perf_counter() - t
    oracle = local_sums(frames, np.zeros((n, 2)), movie.sum_referenced_field(), **kw)

    c = lm.patch_centres_yx_px
    # the feature at each centre of the aligned sum: what the local sums apply there
    true = movie.aligned_sum_displacement_yx_px(c[:, 0], c[:, 1], shifts)
    est = shifts[:, None, :] + lm.fitted_yx_px.transpose(1, 0, 2)
    est -= est.mean(axis=0)
    glob = np.broadcast_to(shifts[:, None, :] - shifts.mean(axis=0), true.shape)
    floor = float("nan")
    if len(c):  # the model's own floor: the same fit to the true displacements
        local_true = true - (shifts - shifts.mean(axis=0))[:, None, :]
        defaults = LocalParams()
        fit = fit_local_model(c, local_true.transpose(1, 0, 2), shape_yx=(ny, nx),
                              spatial_degree=defaults.spatial_degree,
                              temporal_degree=defaults.temporal_degree,
                              choose_degree=False)  # the model class at its highest degree
        floor = _rms(fit.fitted_yx_px - local_true.transpose(1, 0, 2))

    frc = {}
    for name in ("plain", "dose_weighted"):
        frc[name] = {kind: frc_band_against_truth(getattr(sums, name), movie.truth_sum)
                     for kind, sums in (("local", with_local), ("global", global_only),
                                        ("oracle", oracle))}
    frc["plain_tiled"] = {kind: frc_band_tiled(sums.plain, movie.truth_sum)
                          for kind, sums in (("local", with_local), ("global", global_only),
                                             ("oracle", oracle))}
    print(json.dumps({
        "applied": lm.applied, "reason": lm.reason,
        "local_error_px": _rms(est - true), "global_only_error_px": _rms(glob - true),
        "model_floor_px": floor,
        "rejected_patches": int(lm.rejected.sum()),
        "median_patch_confidence": float(np.median(lm.confidence)) if lm.confidence.size else None,
        "predicted_error_px": lm.predicted_error_px,
        "tile_plan": {"tile_px": plan.tile_px, "taylor": plan.taylor},
        "frc": frc, "times_s": times, "peak_rss_mb": peak_rss_mb,
        "application": _application_error(args, workers) if args.application else None,
    }))


def _tmc(args: argparse.Namespace, folder: Path) -> None:
    """torch-motion-correction on the same movie, if installed (optional comparison): global
    motion, then its local cubic-spline field (n_frames x 5 x 5, 512-px patches), then its
    correction; the plain sum's FRC against the truth, whole-image and per 512-px tile (its
    sum may keep the geometry of another reference than the mean position)."""
    try:
        import torch
        import torch_motion_correction as tmc
    except ImportError as exc:
        print(f"  torch-motion-correction not available ({exc}); skipped")
        return
    from importlib.metadata import version

    from correction.synthetic_local import frc_band_against_truth, frc_band_tiled

    frames = np.load(folder / "frames.npy").astype(np.float32)
    with open(folder / "movie.pkl", "rb") as fh:
        movie = pickle.load(fh)
    torch.set_num_threads(args.workers)
    n = frames.shape[0]
    t = time.perf_counter()
    image = torch.from_numpy(frames)
    global_field = tmc.estimate_global_motion(image=image, pixel_spacing=1.0)
    local_field, _ = tmc.estimate_local_motion(
        image=image, pixel_spacing=1.0, deformation_field_resolution=(n, 5, 5),
        patch_sampling=tmc.PatchSamplingConfig(patch_shape=(512, 512)),
        initial_deformation_field=global_field)
    with torch.no_grad():
        corrected = tmc.correct_motion(image=image, deformation_field=local_field,
                                       pixel_spacing=1.0)
    elapsed = time.perf_counter() - t
    total = corrected.sum(dim=0).detach().numpy().astype(np.float32)
    print(f"  torch-motion-correction {version('torch-motion-correction')} (CPU, "
          f"{args.workers} threads, {elapsed:.1f} s): plain-sum FRC vs truth 0.2-0.7 Nyquist "
          f"{frc_band_against_truth(total, movie.truth_sum):.4f}, per 512-px tile "
          f"{frc_band_tiled(total, movie.truth_sum):.4f}")


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
        true = movie.aligned_sum_displacement_yx_px(c[:, 0], c[:, 1], shifts)
        err = (fitted - fitted.mean(0)) - true
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


def _report(r: dict) -> None:
    t = r["times_s"]
    print(f"  local correction applied: {r['applied']} ({r['reason']})")
    print(f"  estimation error at patch centres: {r['local_error_px']:.4f} px RMS (model floor "
          f"{r['model_floor_px']:.4f}, global only {r['global_only_error_px']:.4f}); rejected "
          f"patches {r['rejected_patches']}, median confidence "
          f"{r['median_patch_confidence']:.3f}, predicted error {r['predicted_error_px']:.4f}")
    app = r["application"]
    if app:
        print(f"  application error (true field, noise-free, frames 0 and n-1, 32-px windows): "
              f"tiles {app['tile_px']} px, first-order term {app['taylor']}, max gradient "
              f"{app['max_gradient']:.5f}: max {app['planned']['max_px']:.4f} px (bound "
              f"{APPLICATION_BOUND_PX:g} px; the tile plan's own {app['bound_px']:.4f} px), "
              f"RMS {app['planned']['rms_px']:.4f} px; constant shifts on 512-px tiles: max "
              f"{app['constant_512']['max_px']:.4f}, RMS {app['constant_512']['rms_px']:.4f}")
    for name, f in r["frc"].items():  # plain_tiled: per 512-px tile (as for the tmc figure)
        print(f"  FRC vs truth 0.2-0.7 Nyquist, {name:>13}: local {f['local']:.4f}, global only "
              f"{f['global']:.4f}, oracle {f['oracle']:.4f}; fraction of the oracle "
              f"{f['local'] / f['oracle']:.3f} (global only {f['global'] / f['oracle']:.3f})")
    print("  times: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
          + f"; tiles {r['tile_plan']['tile_px']} px, first-order term "
            f"{r['tile_plan']['taylor']}; peak RSS {r['peak_rss_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--dose", type=float, default=1.5, help="e/px/frame")
    parser.add_argument("--amplitudes", type=float, nargs="+", default=[3.0],
                        help="local fields at the corners, px (one movie each)")
    parser.add_argument("--drift", type=float, default=8.0, help="global drift, px")
    parser.add_argument("--contrast", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep rendered movies here and reuse them")
    parser.add_argument("--no-application", dest="application", action="store_false",
                        help="skip the application error (saves a noise-free render)")
    parser.add_argument("--correct", action="store_true",
                        help="also time the whole motionwatch correct (5x5 local, and "
                             "--patches 1 1) against the floor of bench_correct.py")
    parser.add_argument("--tmc", action="store_true",
                        help="also run torch-motion-correction on the same movie")
    parser.add_argument("--repeats", type=int, default=2, help="repeats with --correct")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.workers)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        for amplitude in args.amplitudes:
            args.amplitude = amplitude
            folder = root / (f"s{args.size}_f{args.frames}_d{args.dose}_a{amplitude}_"
                             f"g{args.drift}_c{args.contrast}_r{args.seed}")
            folder.mkdir(parents=True, exist_ok=True)
            print(f"== field {amplitude} px at the corners")
            _render(args, folder)
            keys = ("size", "frames", "dose", "amplitude", "drift", "contrast", "seed",
                    "application", "workers")
            (folder / "args.json").write_text(json.dumps({k: getattr(args, k) for k in keys}))
            out = subprocess.run([sys.executable, __file__, "--child", str(folder),
                                  "--workers", str(args.workers)],
                                 check=False, capture_output=True, text=True,
                                 env=single_threaded_blas_environment())
            if out.returncode != 0:
                print(out.stderr)
                return 1
            _report(json.loads(out.stdout.strip().splitlines()[-1]))
            if args.tmc:
                _tmc(args, folder)
            if args.correct:
                print("  whole correct vs floor (fresh processes, int16 MRC + flat gain):")
                _correct_vs_floor(args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
