"""Alignment crops from 2 x 2 block sums (``correction.fourier.rfft2_cropped_2x2``): cost and
precision beside the crop of the whole frame's spectrum (``rfft2_cropped``).

Cost: one super-resolution frame (K3, 8184 x 11520, padded as ``correct --bin 2`` pads it),
best of --repeats, on all cores: the alignment crop from the block sums, from the whole frame,
the binned output grid's crop (the floor's transform), and the block sums and the gain alone.

Precision: synthetic movies (``correction.synthetic.render_movie``, 16 frames of 768 x 1024, a
known drift) aligned with the alignment grid 8 and 4 times smaller than the frame, at 0.15 and
0.5 e/px per frame, --seeds movies each; RMS shift error against the truth (common offset
removed), block sums beside the whole frame (the bound). ``correct`` uses the block sums from 8
times (``grids.BLOCK_SUM_MIN_RATIO``); at 4 times (a K3 frame's) it keeps the whole frame.

    .venv/bin/python benchmarks/bench_block_sums.py [--repeats 3] [--seeds 6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from correction import grids, pipeline  # noqa: E402
from correction.fourier import rfft2_cropped, rfft2_cropped_2x2, sum_2x2  # noqa: E402
from correction.gain import GainReference, apply_gain  # noqa: E402
from correction.params import AlignParams, CorrectionParams, DoseParams  # noqa: E402
from correction.synthetic import render_movie  # noqa: E402


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_cost(repeats: int) -> None:
    ny, nx = 8184, 11520
    g = grids.plan_grids((ny, nx), 2.0, 14, 1024)
    py, px = g.padded_in
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3, (ny, nx), dtype=np.uint8)
    ref = GainReference(gain=(1 + 0.05 * rng.random((ny, nx), dtype=np.float32)))
    frame = np.ones((py, px), np.float32)
    work = np.empty(py * (g.padded_out[1] // 2 + 1), np.complex64)
    sums = np.empty((py // 2, px // 2), np.float32)
    rows = work[:(py // 2) * (g.align[1] // 2 + 1)]
    print(f"super-resolution frame {ny} x {nx}, padded {py} x {px}, alignment grid "
          f"{g.align[0]} x {g.align[1]}; best of {repeats}:")
    for label, fn in (
            ("gain", lambda: apply_gain(raw, ref, out=frame[:ny, :nx], workers=-1)),
            ("2 x 2 block sums", lambda: sum_2x2(frame, out=sums)),
            ("alignment crop via block sums", lambda: rfft2_cropped_2x2(
                frame, g.align, work=rows, sums=sums)),
            ("alignment crop from the whole frame", lambda: rfft2_cropped(frame, g.align,
                                                                          work=work)),
            ("binned output grid's crop (floor)", lambda: rfft2_cropped(frame, g.padded_out,
                                                                        work=work))):
        print(f"  {label:38s} {_best(fn, repeats):.3f} s")


def bench_precision(seeds: int) -> None:
    n, shape = 16, (768, 1024)
    t = np.linspace(0, 1, n)
    truth = np.stack([-4 * t + 0.3 * np.sin(7 * t), 5 * np.sqrt(t)], 1)
    truth -= truth.mean(0)
    print(f"RMS shift error against the truth, {seeds} movies of {n} x {shape[0]} x {shape[1]}:")
    for ratio in (8, 4):
        align = AlignParams(patches_x=1, patches_y=1, max_shift_px=20.0,
                            align_size_px=int(round(800 / ratio / 2) * 2))
        for dose in (0.15, 0.5):
            params = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=dose), align=align)
            errors: dict[str, list[float]] = {"blocks": [], "whole": []}
            for seed in range(seeds):
                movie = render_movie(np.random.default_rng(100 + seed), shape_yx=shape,
                                     n_frames=n, shifts_yx_px=truth,
                                     electrons_per_px_per_frame=dose, pixel_size_A=1.0,
                                     gain=None, n_hot_pixels=0, dtype=np.uint8)
                for name, min_ratio in (("blocks", 1), ("whole", 10 ** 6)):
                    grids.BLOCK_SUM_MIN_RATIO = min_ratio
                    result = pipeline.correct_frames(movie.frames, pixel_size_A=1.0,
                                                     params=params)
                    found = result.shifts_yx_px - result.shifts_yx_px.mean(0)
                    errors[name].append(float(np.sqrt(np.mean((found - truth) ** 2))))
            blocks, whole = np.mean(errors["blocks"]), np.mean(errors["whole"])
            print(f"  grid {ratio}x smaller, {dose:g} e/px/frame: block sums {blocks:.4f} px, "
                  f"whole frame (bound) {whole:.4f} px, ratio {blocks / whole:.3f}")
    grids.BLOCK_SUM_MIN_RATIO = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args(argv)
    bench_cost(args.repeats)
    bench_precision(args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
