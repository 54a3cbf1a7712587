"""Does the watch daemon keep up? Backlog throughput against `motionwatch correct`, and memory.

1. Throughput: a backlog of N synthetic 1024^2 x 10-frame int16 MRC movies (copies of one
   rendered movie: the daemon takes hard links of one file for one movie, as they are, and
   corrects it once) is corrected twice on the same files: once by
   ``motionwatch correct`` (one process, all movies in one call) and once by ``motionwatch watch``
   (daemon, ``--workers`` worker processes (default 1), started on the full folder). Both wall times include interpreter
   start-up; the daemon's ends at its last ``movie_done`` event (its idle wait is excluded) and
   includes its settle time. Prints both rates and their ratio (goal: the daemon's throughput at
   least that of ``correct``), and the steady rates, from the first movie finished to the last
   (``n - 1`` movies: what an overnight backlog sees, without the start-up of either
   process). ``--rounds`` alternates the two ``--rounds`` times (a shared VM's speed drifts by
   up to 20 % over minutes) and prints the ratio of each pair and their median.
2. Memory: the daemon works through a backlog of M movies (default 200) while the resident
   memory of the daemon and its workers is sampled; prints RSS against movies done (goal: flat).

Usage::

    .venv/bin/python benchmarks/bench_daemon.py [--movies 10] [--memory-movies 200]
        [--size 1024] [--frames 10] [--memory-size 1024] [--keep DIR] [--workers N] [--cold]

``--cold``: the movies are dropped from the page cache before each run, as movies on a network share or a cold disk are; the daemon then also runs with
``--no-read-ahead``, and the two throughputs are compared (read-ahead: the movie next in line is
read into the page cache while the worker corrects the current one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import mrcfile
import numpy as np
import psutil

from correction.synthetic import render_movie

PIXEL_SIZE_A = 1.1


def make_backlog(folder: Path, n: int, size: int, frames: int, seed: int = 0
                 ) -> tuple[list[Path], Path]:
    """``n`` copies of one rendered movie in ``folder`` and its gain. Copies, not hard links:
    hard links of one file are one movie to the daemon (one inode), corrected once."""
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = render_movie(np.random.default_rng(seed), shape_yx=(size, size), n_frames=frames,
                             pixel_size_A=PIXEL_SIZE_A, dtype=np.int16)
    master = folder.parent / f"master_{size}.mrc"
    gain = folder.parent / f"gain_{size}.mrc"
    if not master.exists():
        with mrcfile.new(master, overwrite=True) as mrc:
            mrc.set_data(synthetic.frames)
            mrc.voxel_size = PIXEL_SIZE_A
        with mrcfile.new(gain, overwrite=True) as mrc:
            mrc.set_data(synthetic.gain.astype(np.float32))
    movies = []
    for i in range(n):
        path = folder / f"movie_{i:04d}.mrc"
        path.unlink(missing_ok=True)  # a kept work folder (--keep) is used again
        shutil.copyfile(master, path)
        movies.append(path)
    return movies, gain


def correction_flags(gain: Path) -> list[str]:
    return ["--gain", str(gain), "--dose-per-frame", f"{1.0 / PIXEL_SIZE_A**2:.4f}"]


def time_correct(movies: list[Path], out: Path, gain: Path) -> tuple[float, list[float]]:
    """Wall time of ``motionwatch correct`` on ``movies``, and when each movie finished (its
    line on stdout), in seconds from the start."""
    start = time.perf_counter()
    done: list[float] = []
    with subprocess.Popen([sys.executable, "-m", "daemon", "correct", *map(str, movies),
                           "--out", str(out), *correction_flags(gain)],
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " -> " in line:  # one line per corrected movie
                done.append(time.perf_counter() - start)
    if proc.returncode != 0:
        raise SystemExit(f"motionwatch correct exited {proc.returncode}")
    return time.perf_counter() - start, done


def steady_rate(done: list[float]) -> float:
    """Movies per second from the first movie finished to the last."""
    return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] \
        else float("nan")


def drop_from_page_cache(paths: list[Path]) -> None:
    """Make the files cold: their pages leave the page cache (as for a movie on a network
    share or one written long ago)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a fresh copy) would stay
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_daemon(watch: Path, out: Path, gain: Path, n: int, *, sample_memory: bool,
               workers: int = 1, read_ahead: bool = True
               ) -> tuple[float, list[tuple[int, float]], list[float]]:
    """Wall time of the daemon on the backlog in ``watch``, the memory samples (movies done,
    MiB), and when each movie finished, in seconds from the start."""
    log = out.parent / f"{out.name}.log"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "daemon", "watch", str(watch), "--out", str(out),
           "--settle-time", "0.5", "--scan-interval", "0.25", "--exit-when-idle", "1",
           "--heartbeat", "1", "--workers", str(workers), *correction_flags(gain),
           *([] if read_ahead else ["--no-read-ahead"])]
    start_wall = time.time()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    samples: list[tuple[int, float]] = []
    db_path = out / "motionwatch.sqlite"
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        time.sleep(0.5)
        if not sample_memory:
            continue
        try:
            procs = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs if p.is_running())
        except psutil.Error:
            continue
        done = 0
        if db_path.exists():
            try:
                db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
                done = db.execute("SELECT COUNT(*) FROM movies WHERE status='done'").fetchone()[0]
                db.close()
            except sqlite3.Error:
                pass
        if rss > 0:
            samples.append((done, rss / 2**20))
    if proc.returncode != 0:
        raise SystemExit(f"daemon exited {proc.returncode}; see {log}")
    last_done = None
    n_done = 0
    worker_s = 0.0
    done_times: list[float] = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "movie_done":
            n_done += 1
            worker_s += float(event.get("timings_s", {}).get("worker_wall", 0.0))
            last_done = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            done_times.append(last_done - start_wall)
    if n_done != n or last_done is None:
        raise SystemExit(f"daemon corrected {n_done} of {n} movies; see {log}")
    if workers == 1:
        print(f"  daemon: {last_done - start_wall:.2f} s wall, of which the worker correcting "
              f"{worker_s:.2f} s; overhead {last_done - start_wall - worker_s:.2f} s (start-up, "
              f"settle, dispatch; {(last_done - start_wall - worker_s) / n:.3f} s/movie)")
    else:
        print(f"  daemon: {last_done - start_wall:.2f} s wall; {workers} workers corrected for "
              f"{worker_s:.2f} s in all ({worker_s / n:.2f} s per movie, two movies at a time)")
    return last_done - start_wall, samples, sorted(done_times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", type=int, default=10, help="throughput backlog (default 10)")
    parser.add_argument("--memory-movies", type=int, default=200,
                        help="movies in the memory run (default 200; 0 skips it)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--memory-size", type=int, default=1024)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    parser.add_argument("--workers", type=int, default=1,
                        help="the daemon's worker processes in the throughput run (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate correct and the daemon this many times (default 1)")
    parser.add_argument("--cold", action="store_true",
                        help="movies as separate files dropped from the page cache before each "
                             "run; the daemon runs with and without read-ahead")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_daemon_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.movies:
            throughput(work, args)
        if args.memory_movies:
            memory(work, args)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def throughput(work: Path, args: argparse.Namespace) -> None:
    """Backlog wall time: `motionwatch correct` against `motionwatch watch`."""
    print(f"backlog of {args.movies} movies {args.size}^2 x {args.frames} int16 (in {work})")
    movies, gain = make_backlog(work / "throughput", args.movies, args.size, args.frames)
    if args.cold:
        drop_from_page_cache(movies)
        t_correct, _ = time_correct(movies, work / "out_correct", gain)
        drop_from_page_cache(movies)
        t_plain, _, _ = run_daemon(work / "throughput", work / "out_plain", gain, args.movies,
                                   sample_memory=False, workers=args.workers, read_ahead=False)
        print(f"cold files, daemon --no-read-ahead: {t_plain:7.2f} s")
        drop_from_page_cache(movies)
        t_daemon, _, _ = run_daemon(work / "throughput", work / "out_daemon", gain, args.movies,
                                    sample_memory=False, workers=args.workers)
        print(f"cold files, daemon with read-ahead: {t_daemon:7.2f} s "
              f"({t_plain / t_daemon:.2f}x the throughput without)")
        _report(args, t_correct, t_daemon)
        return
    whole, steady = [], []
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f" round {r + 1}:")
        t_correct, done_correct = time_correct(movies, work / f"out_correct_{r}", gain)
        t_daemon, _, done_daemon = run_daemon(work / "throughput", work / f"out_daemon_{r}", gain,
                                              args.movies, sample_memory=False,
                                              workers=args.workers)
        whole.append(_report(args, t_correct, t_daemon))
        rate_c, rate_d = steady_rate(done_correct), steady_rate(done_daemon)
        steady.append(rate_d / rate_c)
        print(f"  steady (first to last movie finished): correct {rate_c:.3f}, watch "
              f"{rate_d:.3f} movies/s, ratio {rate_d / rate_c:.3f}")
        shutil.rmtree(work / f"out_correct_{r}", ignore_errors=True)
        shutil.rmtree(work / f"out_daemon_{r}", ignore_errors=True)
    if args.rounds > 1:
        print(f"median over {args.rounds} rounds: whole runs {np.median(whole):.3f}, steady "
              f"{np.median(steady):.3f} (goal >= 1.0)")


def _report(args: argparse.Namespace, t_correct: float, t_daemon: float) -> float:
    """Print the whole-run rates and return their ratio (daemon / correct)."""
    print(f"motionwatch correct: {t_correct:7.2f} s  ({args.movies / t_correct:.3f} movies/s)")
    print(f"motionwatch watch:   {t_daemon:7.2f} s  ({args.movies / t_daemon:.3f} movies/s, "
          f"{args.workers} worker process(es), settle 0.5 s included)")
    ratio = t_correct / t_daemon
    print(f"daemon throughput / correct throughput: {ratio:.3f} "
          f"({'meets' if ratio >= 1.0 else 'BELOW'} the goal of >= 1.0)")
    return ratio


def memory(work: Path, args: argparse.Namespace) -> None:
    """Resident memory of the daemon and its workers over a long backlog."""
    print(f"memory: daemon over {args.memory_movies} movies "
          f"{args.memory_size}^2 x {args.frames}")
    movies, gain = make_backlog(work / "memory", args.memory_movies, args.memory_size,
                                args.frames, seed=1)
    t, samples, _ = run_daemon(work / "memory", work / "out_memory", gain,
                               args.memory_movies, sample_memory=True)
    print(f"  {args.memory_movies} movies in {t:.1f} s "
          f"({args.memory_movies / t:.3f} movies/s)")
    print("  movies done   RSS daemon+workers (MiB)")
    marks = sorted({int(f * args.memory_movies) for f in (0.05, 0.1, 0.25, 0.5, 0.75, 0.95)})
    for mark in marks:
        near = [rss for done, rss in samples if done >= mark]
        if near:
            print(f"  {mark:11d}   {near[0]:8.1f}")
    m = args.memory_movies

    def window(lo: float, hi: float) -> list[float]:
        return [rss for done, rss in samples if lo * m <= done < hi * m]

    early, late = window(0.1, 0.3), window(0.7, 1.0)
    if early and late:
        print(f"  RSS while movies 10-30% were done: median {np.median(early):.1f}, "
              f"max {max(early):.1f} MiB")
        print(f"  RSS while movies 70-100% were done: median {np.median(late):.1f}, "
              f"max {max(late):.1f} MiB")
        print(f"  change of the median: {np.median(late) - np.median(early):+.1f} MiB "
              f"(flat: within the per-movie swing of "
              f"{max(early) - min(early):.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
