"""Element-wise stages on one thread against all cores, timed in the same run.

Each stage runs with ``workers=1`` and ``workers=-1`` (scipy.fft's meaning), alternating, best
of ``--repeats``; prints both times, their ratio and the largest difference of the results
relative to their peak (float rounding only). Stages, at 4096^2 (10 frames) unless given:

* ``local_sums``: global + local shifts applied by tiles (3 px corner field: first-order term on);
* ``accumulate_sums``: global shifted, dose-weighted sums of kept spectra;
* ``detect_hot_pixels``: the Poisson test on a raw sum;
* ``estimate_shifts``: whole-frame alignment of 40 frames on the 1024^2 alignment grid.

    .venv/bin/python benchmarks/bench_threads.py [--size 4096] [--frames 10] [--repeats 3]

The machine's second core must be free for the ratio to mean anything; the load average is
printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from correction.align_global import estimate_shifts  # noqa: E402
from correction.allocator import movie_memory_settings  # noqa: E402
from correction.defects import detect_hot_pixels  # noqa: E402
from correction.fourier import rfft2  # noqa: E402
from correction.local_apply import local_sums  # noqa: E402
from correction.params import AlignParams  # noqa: E402
from correction.summation import accumulate_sums  # noqa: E402
from correction.synthetic import render_movie  # noqa: E402
from correction.synthetic_local import LocalDeformation  # noqa: E402


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _difference(a, b) -> float:
    arrays_a = a if isinstance(a, (list, tuple)) else [a]
    arrays_b = b if isinstance(b, (list, tuple)) else [b]
    worst = 0.0
    for x, y in zip(arrays_a, arrays_b):
        x, y = np.asarray(x, dtype=np.complex128), np.asarray(y, dtype=np.complex128)
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape, n = (args.size, args.size), args.frames
    rng = np.random.default_rng(0)
    frames = rng.poisson(1.0, (n,) + shape).astype(np.float32)
    shifts = np.cumsum(rng.normal(0, 0.5, (n, 2)), axis=0)
    dose = np.arange(1, n + 1) * 0.8
    field = LocalDeformation(shape, n, corner_amplitude_px=3.0, seed=1)
    spectra = [rfft2(f) for f in frames]
    raw_sum = frames.sum(axis=0)
    align_n = 40
    syn = render_movie(np.random.default_rng(1), shape_yx=(1024, 1024), n_frames=align_n,
                       gain=None, n_hot_pixels=0, dtype=np.float32)
    align_spectra = rfft2(syn.frames.astype(np.float32))

    stages = {
        "local_sums": lambda w: [getattr(s, k) for s in [local_sums(
            frames, shifts, field, pixel_size_A=1.1, dose_end_e_A2=dose, workers=w)]
            for k in ("plain", "dose_weighted", "even", "odd")],
        "accumulate_sums": lambda w: [getattr(s, k) for s in [accumulate_sums(
            [x.copy() for x in spectra], shifts, padded_shape_yx=shape, dose_end_e_A2=dose,
            pixel_size_A=1.1, workers=w)] for k in ("sum", "dw", "even", "odd")],
        "detect_hot_pixels": lambda w: detect_hot_pixels(raw_sum, workers=w).astype(np.float32),
        "estimate_shifts (40 frames, 1024^2)": lambda w: estimate_shifts(
            align_spectra, params=AlignParams(), shape_yx=(1024, 1024), workers=w).shifts_yx_px,
    }
    print(f"{args.size}^2 x {n} frames, best of {args.repeats}, {os.cpu_count()} CPUs")
    with movie_memory_settings():
        for name, stage in stages.items():
            one, out_one = _best(lambda: stage(1), args.repeats)
            many, out_many = _best(lambda: stage(-1), args.repeats)
            print(f"  {name:38s} 1 thread {one:6.3f} s   all cores {many:6.3f} s   "
                  f"ratio {many / one:5.2f}   max difference {_difference(out_many, out_one):.1e}",
                  flush=True)
    print(f"  load average after the runs: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
