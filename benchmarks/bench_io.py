"""Benchmark the readers, gain application, hot-pixel detection and writers at 4096².

Prints wall times (median of repeats) and peak RSS; not part of the test run. Fixtures are made
with mrcfile and the test EER writer (tests/helpers/eer_writer.py) in a scratch folder.

    python benchmarks/bench_io.py [--eer-frames 600] [--scratch /tmp/mw-bench-io]
    python benchmarks/bench_io.py --faults      # first touch of fresh 75 MB arrays only
    python benchmarks/bench_io.py --spill MOVIE.tif [--repeats 3]   # a large TIFF or EER read
                                                # spilled to a scratch file and in memory

``--spill`` reads a compressed movie whose decoded size is over 1 GiB (e.g. the 60-frame
super-resolution LZW TIFF that ``bench_correct.py --shape 8184 11520 --frames 60 --cycle 10
--dtype uint8 --format tiff`` renders), each read in a fresh process, spilled to an unnamed
file in ``--scratch`` and in memory alternated, and prints wall and CPU time and peak RSS.
Run it from another checkout to compare revisions.

The EER figure is decode + grouping only (reading into fractions); correcting those fractions
is benchmarks/bench_eer.py (EER vs the equivalent MRC through correct_movie).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from correction.allocator import peak_resident_MB  # noqa: E402
from correction.defects import detect_hot_pixels  # noqa: E402
from correction.gain import GainReference, apply_gain  # noqa: E402
from correction.io import read_movie  # noqa: E402
from correction.quicklook import thumbnail  # noqa: E402
from correction.summation import frame_mean  # noqa: E402
from correction.write import write_mrc_atomic  # noqa: E402

N = 4096


def _load_eer_writer():
    path = ROOT / "tests" / "helpers" / "eer_writer.py"
    spec = importlib.util.spec_from_file_location("eer_writer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(fn, repeats=3):
    times = []
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench_in_process(scratch: Path) -> None:
    rng = np.random.default_rng(0)
    gain = rng.uniform(0.8, 1.2, (N, N)).astype(np.float32)
    gain.reshape(-1)[rng.choice(N * N, 5000, replace=False)] = 0.0
    gain[2000:2004, :] = 0.0
    t, ref = _time(lambda: GainReference.from_arrays(gain), repeats=1)
    print(f"GainReference.from_arrays 4096² ({ref.plan.n_pixels} defects): {t * 1e3:.0f} ms")
    frame = rng.poisson(1.0, (N, N)).astype(np.uint16)
    out = np.empty((N, N), np.float32)
    t, _ = _time(lambda: apply_gain(frame, ref, out=out), repeats=5)
    print(f"apply_gain 4096² uint16 (target < 60 ms): {t * 1e3:.0f} ms")
    summed = rng.poisson(10.0, (N, N)).astype(np.float32)
    t, mask = _time(lambda: detect_hot_pixels(summed, sigma=8.0), repeats=3)
    print(f"detect_hot_pixels 4096² (target < 0.3 s): {t:.3f} s, {int(mask.sum())} flagged "
          f"in pure Poisson")
    k3 = np.empty((4320, 6000), np.float32)[:4092, :5760]  # a K3 frame in its padded buffer
    np.multiply(rng.poisson(1.0, k3.shape).astype(np.uint8), np.float32(1.1), out=k3)
    t64, _ = _time(lambda: float(k3.mean(dtype=np.float64)), repeats=5)
    t32, _ = _time(lambda: frame_mean(k3), repeats=5)
    print(f"mean of a K3 frame in its padded buffer, one thread: mean(dtype=float64) "
          f"{t64 * 1e3:.1f} ms, frame_mean {t32 * 1e3:.1f} ms")
    t, _ = _time(lambda: thumbnail(k3), repeats=5)
    print(f"quick-look thumbnail of a K3 sum (block means to 512 px, grey levels): "
          f"{t * 1e3:.1f} ms")
    image = rng.normal(size=(N, N)).astype(np.float32)
    t, _ = _time(lambda: write_mrc_atomic(scratch / "w.mrc", image, pixel_size_A=1.0))
    print(f"write_mrc_atomic 4096² float32 (with fsync): {t:.3f} s")

    movie_path = scratch / "m.mrc"
    if not movie_path.exists():
        with mrcfile.new(movie_path, overwrite=True) as mrc:
            mrc.set_data(rng.poisson(1.0, (10, N, N)).astype(np.int16))

    def read_and_touch():
        movie = read_movie(movie_path)
        return sum(int(f[::64, ::64].sum()) for f in movie.frames) + int(
            np.asarray(movie.frames).sum(dtype=np.int64) > -1)
    t, _ = _time(read_and_touch, repeats=3)
    print(f"read_movie MRC 4096² x 10 int16 + touch every byte: {t:.3f} s")
    print(f"peak RSS so far: {peak_resident_MB() / 1024:.2f} GB")


def bench_eer(scratch: Path, n_raw: int) -> None:
    """Write (once) and read a 4096² EER movie in a child process to measure its peak RSS."""
    path = scratch / f"m{n_raw}.eer"
    if not path.exists():
        writer = _load_eer_writer()
        rng = np.random.default_rng(1)
        rate = 0.046          # e/pixel per raw frame: ~27 e/px over 600 raw frames
        t = time.perf_counter()

        def frames():
            for _ in range(n_raw):
                yield np.flatnonzero(rng.random(N * N, dtype=np.float32) < rate)
        writer.write_eer(path, frames(), shape_yx=(N, N), metadata=[
            ("numberOfFrames", None, str(n_raw)), ("sensorPixelSize.width", "m", "8.3e-11"),
            ("totalDose", "e/px", str(rate * n_raw))])
        print(f"(wrote {path.name}, {path.stat().st_size / 1e6:.0f} MB, in "
              f"{time.perf_counter() - t:.0f} s)")
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from correction.io import read_movie\n"
        "from correction.params import ReadParams\n"
        "t = time.perf_counter()\n"
        "m = read_movie(%r, params=ReadParams(eer_group_frames=%d))\n"
        "dt = time.perf_counter() - t\n"
        "from correction.allocator import peak_resident_MB\n"
        "rss = peak_resident_MB() / 1024\n"
        "print(f'{dt:.2f} {rss:.2f} {m.frames.shape} {m.frames.dtype}')\n"
    ) % (str(ROOT), str(path), max(1, n_raw // 20))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    print(f"read_movie EER 4096² x {n_raw} raw frames -> 20 fractions: {float(out[0]):.2f} s "
          f"({float(out[0]) / n_raw * 1e3:.1f} ms per raw frame), peak RSS {out[1]} GB, "
          f"frames {out[2].strip()}")


_FAULT_SCRIPT = '''
import sys, time
import numpy as np
from correction.allocator import movie_memory_settings
def touch(n=10):
    kept, times = [], []
    for _ in range(n):
        t = time.perf_counter()
        a = np.empty(75_000_000 // 8, np.complex64)  # one kept 4K spectrum
        a.view(np.uint8)[::4096] = 1
        times.append(time.perf_counter() - t)
        kept.append(a)
    return sorted(times)[n // 2]
if sys.argv[1] == "settings":
    with movie_memory_settings():
        print(touch())
else:
    print(touch())
'''


def bench_faults() -> None:
    """First touch of ten fresh 75 MB arrays (the kept spectra of a 4K movie), median per
    array, with numpy's defaults and within :func:`correction.allocator.movie_memory_settings`
    (each in a fresh process)."""
    for mode in ("defaults", "settings"):
        out = subprocess.run([sys.executable, "-c", _FAULT_SCRIPT, mode], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        print(f"first touch of a fresh 75 MB array, numpy {mode:8s}: {float(out):.3f} s")


_SPILL_SCRIPT = '''
import json, sys, time
from pathlib import Path
from correction.allocator import movie_memory_settings, peak_resident_MB
from correction.io import read_movie
path, mode, scratch = sys.argv[1], sys.argv[2], sys.argv[3]
with movie_memory_settings():
    t, c = time.perf_counter(), time.process_time()
    movie = read_movie(path, spill_dir=Path(scratch) if mode == "spill" else None)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps([wall, cpu, movie.header.get("decoded_to"), movie.frames.nbytes,
                  peak_resident_MB()]))
'''


def bench_spill(movie: Path, scratch: Path, repeats: int) -> None:
    """A compressed movie read spilled (an unnamed file in ``scratch``) and in memory, each
    read in a fresh process, alternated ``repeats`` times: wall and CPU time (all threads),
    peak RSS."""
    for _ in range(repeats):
        for mode in ("spill", "memory"):
            out = subprocess.run([sys.executable, "-c", _SPILL_SCRIPT, str(movie), mode,
                                  str(scratch)], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout
            wall, cpu, where, nbytes, peak = json.loads(out.strip().splitlines()[-1])
            print(f"{movie.name} ({nbytes / 2**30:.1f} GiB decoded) read {mode:6s} -> {where}: "
                  f"{wall:5.1f} s wall, {cpu:5.1f} s CPU, peak RSS {peak:.0f} MB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eer-frames", type=int, default=600)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/mw-bench-io"))
    parser.add_argument("--skip-eer", action="store_true")
    parser.add_argument("--faults", action="store_true",
                        help="only the page-fault cost of fresh arrays (allocator settings)")
    parser.add_argument("--spill", type=Path, metavar="MOVIE",
                        help="only: read this compressed movie spilled and in memory")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of --spill")
    args = parser.parse_args(argv)
    if args.spill is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
        bench_spill(args.spill.resolve(), args.scratch, args.repeats)
        return 0
    if args.faults:
        bench_faults()
        return 0
    args.scratch.mkdir(parents=True, exist_ok=True)
    bench_in_process(args.scratch)
    if not args.skip_eer:
        bench_eer(args.scratch, args.eer_frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
