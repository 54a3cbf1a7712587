"""Benchmark ``motionwatch correct`` against the floor, on synthetic movies with known motion.

For each size (default 1024^2 and 4096^2, 10 frames, int16 MRC on disk, 1 e/px/frame, with a
gain pattern, hot pixels and Poisson noise) this renders a movie and its gain reference once
(cached in --workdir), then alternates, --repeats times, two measurements, each in a fresh
subprocess that reports its own wall time (imports excluded) and peak RSS:

* ``correct``: ``motionwatch correct MOVIE --gain GAIN --dose-per-frame D --out DIR``
  (file to the four written images and the motion record);
* ``floor``: the work no correction can skip: read the movie, apply the gain, one forward
  rfft2 per frame (with ``--bin``, only the output grid's Fourier crop of it, as
  :func:`correction.fourier.rfft2_cropped` computes it: 0.35 s against 0.43 s for the whole
  spectrum of a super-resolution frame, and the running sum at the binned size), four
  inverse FFTs (two 1-D passes in place, as ``correct`` makes them), write four float32 MRCs.

Before each run the movie is read through once, untimed, so both find it in the page cache
(as the daemon's read-ahead leaves it); a movie larger than 3/4 of the memory available is not,
and the output says so.

It prints the shift error (RMS over frames after removing the common offset, px), the best and
median wall times, their ratio, the ratio of each correct run to the floor run just before it
(a pair shares the machine's phase: a shared VM's speed drifts by up to 20 % over minutes),
the CPU time ratio (less sensitive to other load on a shared machine), and peak RSS. Targets at 4096^2 x 10: ratio <= 2, RSS < 2.5 GB.

Detector shapes (issue 17): ``--shape NY NX`` (K3 4092 5760, super-resolution 8184 11520),
``--dtype uint8`` (an MRC has no unsigned 8-bit mode: mrcfile stores uint8 as mode 6,
uint16), ``--format tiff`` (LZW in strips of about 16 KB, page by page, as
SerialEM writes K3 movies through IMOD's library), ``--extra='--bin 2'``
(Fourier binning; the floor then transforms each frame to the binned grid's crop only),
``--local-field PX`` (a known local deformation, PX at the corners: the movie is rendered by
:func:`correction.synthetic_local.render_local_movie`), ``--cycle K`` (render K frames and
repeat them to ``--frames``: for memory and speed at 40-60 frames of 94-Mpixel frames; the
shift error is then not meaningful). The load average is printed with each result.

Cold and warm memory (``--warm``). On this benchmark's virtual machine, memory that processes
free is handed back to the host after a few seconds (free page reporting), and touching it
again is slow: a fresh process touching 1 GiB took 5.8-8.9 s after an idle pause of 15 s, and
0.16-0.27 s when the process before it had freed that memory a moment earlier. A one-shot
process pays for every page it does not reuse, and how much depends on what ran just before
it: part of why the figures of earlier sessions drifted by 20-50 % between runs. ``--warm``
runs each child's work twice in one allocator block
(:func:`correction.allocator.movie_memory_settings`) and times the second: the steady state
of a daemon worker with movies waiting, which reuses the memory the movie before freed (4K x
10 with a 3-px field: floor 1.27-1.35 s and correct 3.6-4.6 s over three pairs, against
1.76-2.4 s and 4.8-6.5 s cold). Both are printed as measured; compare like with like.

    .venv/bin/python benchmarks/bench_correct.py [--sizes 1024 4096] [--repeats 3]
    .venv/bin/python benchmarks/bench_correct.py --shape 4092 5760 --frames 40 --dtype uint8 \
        --format tiff --local-field 3 --repeats 1                     # K3, 5x5 local
    .venv/bin/python benchmarks/bench_correct.py --shape 8184 11520 --frames 60 --cycle 10 \
        --dtype uint8 --repeats 1 --extra='--bin 2'   # super-resolution
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PIXEL_SIZE_A = 1.1
E_PER_PX = 1.0


def _render(workdir: Path, shape: tuple[int, int], n_frames: int, seed: int, *,
            dtype: str = "int16", fmt: str = "mrc", local_field_px: float = 0.0,
            cycle: int = 0) -> tuple[Path, Path, Path]:
    import mrcfile

    ny, nx = shape
    tag = (f"{ny}x{nx}x{n_frames}" + ("" if dtype == "int16" else f"_{dtype}")
           + (f"_local{local_field_px:g}" if local_field_px else "")
           + (f"_cycle{cycle}" if cycle else ""))
    if ny == nx and tag == f"{ny}x{nx}x{n_frames}":
        tag = f"{ny}x{n_frames}"  # the names of earlier runs
    movie = workdir / f"movie_{tag}.{'tif' if fmt == 'tiff' else 'mrc'}"
    gain = workdir / (f"gain_{ny}.mrc" if ny == nx else f"gain_{ny}x{nx}.mrc")
    truth = workdir / f"truth_{tag}.json"
    if movie.exists() and gain.exists() and truth.exists():
        return movie, gain, truth
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_render = min(cycle, n_frames) if cycle else n_frames
    if local_field_px:
        from correction.synthetic_local import (LocalDeformation, render_local_movie,
                                                smooth_global_drift)
        field = LocalDeformation(shape, n_render, corner_amplitude_px=local_field_px, seed=seed)
        shifts = smooth_global_drift(n_render, total_px=8.0, rng=rng)
        syn = render_local_movie(shape, n_render, dose_per_pixel=E_PER_PX, deformation=field,
                                 global_shifts_yx_px=shifts, rng=rng)
        frames = np.clip(syn.frames, 0, np.iinfo(dtype).max).astype(dtype)
        gain_img = np.ones(shape, np.float32)
    else:
        from correction.synthetic import render_movie
        syn = render_movie(rng, shape_yx=shape, n_frames=n_render,
                           electrons_per_px_per_frame=E_PER_PX, pixel_size_A=PIXEL_SIZE_A,
                           n_hot_pixels=max(20, ny * nx // 50000), dtype=np.dtype(dtype))
        frames, gain_img, shifts = syn.frames, syn.gain, syn.shifts_yx_px
    repeat = int(np.ceil(n_frames / n_render))
    shifts = np.concatenate([shifts] * repeat)[:n_frames]
    if cycle and n_render < n_frames and fmt != "tiff":  # frame by frame: no 60-frame copy
        with mrcfile.new_mmap(movie, shape=(n_frames, ny, nx), overwrite=True,
                              mrc_mode=mrcfile.utils.mode_from_dtype(frames.dtype)) as mrc:
            for i in range(n_frames):
                mrc.data[i] = frames[i % n_render]
            mrc.voxel_size = PIXEL_SIZE_A
    elif fmt == "tiff":  # page by page, in strips of about 16 KB as IMOD/SerialEM write LZW,
        # each frame's rows reversed as SerialEM writes a TIFF (the reader reverses them back:
        # correction/io/tiff.py), so the truth and the MRC gain hold as rendered
        import tifffile
        rows_per_strip = max(1, round(16384 / (nx * frames.itemsize)))
        with tifffile.TiffWriter(movie, bigtiff=n_frames * frames[0].nbytes > 2**32 - 2**27
                                 ) as tif:
            for i in range(n_frames):
                tif.write(frames[i % n_render][::-1], compression="lzw", contiguous=False,
                          rowsperstrip=rows_per_strip,
                          resolution=(1e8 / PIXEL_SIZE_A, 1e8 / PIXEL_SIZE_A),
                          resolutionunit="CENTIMETER")
    else:
        with mrcfile.new(movie, overwrite=True) as mrc:
            mrc.set_data(frames)
            mrc.voxel_size = PIXEL_SIZE_A
    del frames
    if not gain.exists():
        with mrcfile.new(gain, overwrite=True) as mrc:
            mrc.set_data(np.asarray(gain_img, np.float32))
    truth.write_text(json.dumps({"shifts_yx_px": np.asarray(shifts).tolist(),
                                 "cycled": bool(cycle)}))
    print(f"  rendered {movie.name} in {time.perf_counter() - t:.1f} s", flush=True)
    return movie, gain, truth


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resident_MB() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child_correct(movie: Path, gain: Path, out: Path, extra: list[str]) -> dict:
    import correction.io  # noqa: F401 - imports are not part of the timed work
    import correction.pipeline  # noqa: F401
    import correction.write  # noqa: F401
    from daemon.commands.cli import build_parser, main

    before = _resident_MB()
    import starfile  # noqa: F401, PLC0415 - the RELION STAR writer's library (pandas)
    starfile_MB = _resident_MB() - before  # the command imports it after correcting

    build_parser()  # imports every subcommand module before the clock starts
    dose = E_PER_PX / PIXEL_SIZE_A**2
    t, c = time.perf_counter(), _cpu_s()
    status = main(["correct", str(movie), "--gain", str(gain), "--dose-per-frame", str(dose),
                   "--pixel-size", str(PIXEL_SIZE_A),
                   "--out", str(out), *extra])
    wall, cpu = time.perf_counter() - t, _cpu_s() - c
    record = _record_of(movie, out, written_after=t)
    return {"status": status, "wall_s": wall, "cpu_s": cpu, "starfile_MB": starfile_MB,
            "shifts_xy_px": record["global_shifts_px"],
            "timings_s": record["timings_s"], "memory": record.get("memory"),
            "local": (record.get("local") or {}).get("reason")}


def _record_of(movie: Path, out: Path, *, written_after: float) -> dict:
    """The motion record this run wrote for ``movie``: found by the movie it names, as the
    command gives another stem to a movie whose name is taken in ``out`` (``x.tif`` corrected
    there before ``x.mrc``: ``x_mrc``), so ``x.motion.json`` may be another movie's, or an
    earlier run's."""
    wall_start = time.time() - (time.perf_counter() - written_after)
    for path in sorted(out.glob("*.motion.json")):
        if path.stat().st_mtime < wall_start - 1.0:
            continue
        record = json.loads(path.read_text())
        if Path(record["movie"]) == movie.absolute():
            return record
    raise RuntimeError(f"no motion record of {movie} written in {out} by this run")


def _child_floor(movie: Path, gain: Path, out: Path, extra: list[str]) -> dict:
    import correction.io  # noqa: F401 - imports are not part of the timed work
    import correction.write  # noqa: F401
    from correction.allocator import movie_memory_settings

    bin_factor = float(extra[extra.index("--bin") + 1]) if "--bin" in extra else 1.0
    with movie_memory_settings():  # the allocator settings correct_movie runs under
        return _floor(movie, gain, out, bin_factor)


def _floor(movie: Path, gain: Path, out: Path, bin_factor: float) -> dict:
    import scipy.fft

    from correction.fourier import binned_length, irfft2, rfft2_cropped
    from correction.gain import apply_gain, load_gain_reference
    from correction.io import read_movie
    from correction.params import GainParams
    from correction.write import write_mrc_atomic

    t, c = time.perf_counter(), _cpu_s()
    m = read_movie(movie)
    ref = load_gain_reference(GainParams(gain_path=gain))
    buf = np.empty(m.shape_yx, np.float32)
    total = None
    shape = m.shape_yx
    if bin_factor != 1:  # Fourier binning: each frame's transform computes the crop alone
        shape = tuple(binned_length(s, bin_factor) for s in shape)
    for i in range(m.n_frames):
        apply_gain(m.frames[i], ref, out=buf, workers=-1)  # as correct does
        spec = (scipy.fft.rfft2(buf, workers=-1) if bin_factor == 1 else
                rfft2_cropped(buf, shape, workers=-1))
        total = spec if total is None else total.__iadd__(spec)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("S", "S_DW", "S_EVN", "S_ODD"):
        # the inverse as correct makes it (correction.fourier.irfft2: two 1-D passes, in
        # place on a copy; scipy.fft.irfft2 copies the spectrum itself and takes 1.5-2x as long)
        img = irfft2(total.copy(), shape, workers=-1, overwrite_x=True)
        write_mrc_atomic(out / f"{name}.mrc", img, pixel_size_A=m.pixel_size_A)
    return {"status": 0, "wall_s": time.perf_counter() - t, "cpu_s": _cpu_s() - c}


def _memory_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _warm_page_cache(path: Path) -> bool:
    """Read ``path`` through once (untimed), so that neither child pays the disk for it.

    Without this, the run after a larger file's (or the first of the day) read the movie from
    disk and the next found it cached: an 11 GB super-resolution MRC took the floor 37 s cold
    and 22 s warm. False (nothing read) when the file exceeds 3/4 of the memory available.
    """
    if path.stat().st_size > _memory_available_bytes() * 3 // 4:
        return False
    buf = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return True


def _run_child(kind: str, movie: Path, gain: Path, out: Path, extra: str,
               warm: bool = False) -> dict:
    from daemon.commands.cli import single_threaded_blas_environment

    # both children run with the BLAS settings of the motionwatch command
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(movie), str(gain),
                           str(out), f"--extra={extra}", *(["--warm"] if warm else [])],
                          capture_output=True, text=True,
                          check=False, env=single_threaded_blas_environment())
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--shape", type=int, nargs=2, default=None, metavar=("NY", "NX"),
                        help="one non-square frame shape instead of --sizes")
    parser.add_argument("--dtype", default="int16", choices=("int16", "uint16", "uint8"))
    parser.add_argument("--format", default="mrc", choices=("mrc", "tiff"))
    parser.add_argument("--local-field", type=float, default=0.0, metavar="PX")
    parser.add_argument("--cycle", type=int, default=0, metavar="K")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/motionwatch-bench"))
    parser.add_argument("--extra", default="",
                        help="extra flags for motionwatch correct, e.g. --extra='--patches 1 1'")
    parser.add_argument("--warm", action="store_true",
                        help="time each child's second run of its work (memory reused, as in "
                             "a daemon worker with movies waiting); default the first")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "MOVIE", "GAIN", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, movie, gain, out = args.child
        fn = _child_correct if kind == "correct" else _child_floor
        from correction.allocator import movie_memory_settings, peak_resident_MB
        with movie_memory_settings():  # held over both runs with --warm (a busy worker)
            first = fn(Path(movie), Path(gain), Path(out), args.extra.split()) if args.warm \
                else {}
            result = fn(Path(movie), Path(gain), Path(out), args.extra.split())
        if "starfile_MB" in first:  # imported by the first run, resident in the second
            result["starfile_MB"] = first["starfile_MB"]
        result["maxrss_MB"] = peak_resident_MB()  # not ru_maxrss: see there
        print(json.dumps(result))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    shapes = [tuple(args.shape)] if args.shape else [(s, s) for s in args.sizes]
    for shape in shapes:
        print(f"{shape[1]}x{shape[0]}x{args.frames} {args.dtype} {args.format}, {E_PER_PX} "
              f"e/px/frame, local field {args.local_field} px, correct flags "
              f"{args.extra or '(defaults)'}, {'warm' if args.warm else 'cold'} memory:",
              flush=True)
        movie, gain, truth_path = _render(args.workdir, shape, args.frames, args.seed,
                                          dtype=args.dtype, fmt=args.format,
                                          local_field_px=args.local_field, cycle=args.cycle)
        truth = np.array(json.loads(truth_path.read_text())["shifts_yx_px"])
        runs: dict[str, list[dict]] = {"floor": [], "correct": []}
        cached = []
        for _ in range(args.repeats):
            for kind in ("floor", "correct"):
                cached.append(_warm_page_cache(movie))
                runs[kind].append(_run_child(kind, movie, gain, args.workdir / f"out_{kind}",
                                             args.extra, args.warm))
        extra = args.extra.split()
        bin_factor = float(extra[extra.index("--bin") + 1]) if "--bin" in extra else 1.0
        found = np.array(runs["correct"][-1]["shifts_xy_px"])[:, ::-1] * bin_factor
        err = (found - found.mean(0)) - (truth - truth.mean(0))
        rms = float(np.sqrt(np.mean(np.sum(err**2, axis=1))))
        best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
        med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
        rss = {k: max(r["maxrss_MB"] for r in v) for k, v in runs.items()}
        cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
        print("  movie in the page cache before each run" if all(cached) else
              f"  movie read from disk by {cached.count(False)} of {len(cached)} runs (larger "
              "than 3/4 of the memory available)")
        print(f"  shift error (RMS, common offset removed, input px): {rms:.4f} px"
              + (" (cycled frames: not meaningful)" if args.cycle else ""))
        print(f"  floor   best {best['floor']:.2f} s  median {med['floor']:.2f} s  "
              f"peak RSS {rss['floor']:.0f} MB")
        early = max(r["starfile_MB"] for r in runs["correct"])
        print(f"  correct best {best['correct']:.2f} s  median {med['correct']:.2f} s  "
              f"peak RSS {rss['correct'] - early:.0f} MB (+{early:.0f} MB of starfile/pandas "
              f"imported before the clock: the command imports it after correcting)")
        # each correct run against the floor run just before it: a shared machine's speed
        # drifts over minutes, and a pair run back to back shares its phase
        paired = [c["wall_s"] / f["wall_s"] for f, c in zip(runs["floor"], runs["correct"])]
        print(f"  ratio correct/floor: best {best['correct'] / best['floor']:.2f}  "
              f"median {med['correct'] / med['floor']:.2f}  pairs "
              f"{' '.join(f'{r:.2f}' for r in paired)} (median "
              f"{statistics.median(paired):.2f})")
        print(f"  CPU time (user+sys, all threads) best: floor {cpu['floor']:.2f} s, correct "
              f"{cpu['correct']:.2f} s, ratio {cpu['correct'] / cpu['floor']:.2f}")
        print(f"  correct stages (last run): {json.dumps(runs['correct'][-1]['timings_s'])}")
        print(f"  local: {runs['correct'][-1]['local']}")
        print(f"  memory model (last run): {json.dumps(runs['correct'][-1]['memory'])}")
        print(f"  load average after the runs: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
