"""Local workers against a Dask cluster on loopback: backlog throughput and per-movie overhead.

1. Throughput: the same backlog of N synthetic S^2 x F-frame int16 MRC movies (hard links of one
   rendered movie) is corrected by the real pipeline through the local worker pool and through
   a ``distributed.LocalCluster`` (processes, one thread each), with 1 and 2 workers each. Every
   executor first corrects one movie per worker (imports, start-up: not timed), then the timed
   backlog. Prints movies/minute.
2. Overhead: what going through Dask adds to one movie, two ways: (a) one worker, movies one
   after another: wall time per movie minus the time spent inside the worker function
   (``worker_wall``), for the local pool and Dask; (b) a runner that does nothing (a task carries
   paths, never pixels, so this round trip does not grow with the movie: it is the overhead of a
   4K movie too). Goal: under 0.2 s per movie on loopback.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dask.py [--movies 8] [--size 512]
        [--frames 8] [--noop 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import mrcfile
import numpy as np

from correction.params import CorrectionParams, DoseParams
from correction.synthetic import render_movie

PIXEL_SIZE_A = 1.1
PARAMS = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))


def noop_runner(movie_path, out_dir, params, *, gain_reference=None, stem=None,
                extra_record=None):
    """A runner that corrects nothing: the executor's own round trip."""
    return SimpleNamespace(outputs={}, record={}, timings_s={})


def make_backlog(folder: Path, n: int, size: int, frames: int) -> list[Path]:
    folder.mkdir(parents=True)
    synthetic = render_movie(np.random.default_rng(0), shape_yx=(size, size), n_frames=frames,
                             pixel_size_A=PIXEL_SIZE_A, gain=None, n_hot_pixels=0,
                             dtype=np.int16)
    master = folder / "master.mrc"
    with mrcfile.new(master) as mrc:
        mrc.set_data(synthetic.frames)
        mrc.voxel_size = PIXEL_SIZE_A
    paths = []
    for i in range(n):
        paths.append(folder / f"movie_{i:04d}.mrc")
        os.link(master, paths[-1])
    return paths


def run(executor, tasks) -> tuple[float, list]:
    """Wall time (s) to get every outcome back, never more than ``idle`` in flight."""
    pending, outcomes = list(tasks), []
    started = time.perf_counter()
    while pending or executor.in_flight:
        while pending and executor.idle > 0:
            executor.submit(pending.pop(0))
        outcomes += executor.wait(1.0)
    wall = time.perf_counter() - started
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} movies failed: {bad[0].error}")
    return wall, outcomes


def tasks_for(movies, out: Path, first_id: int = 0):
    from daemon.work.workers import Task

    return [Task(first_id + i, m, out, out, PARAMS, f"{m.stem}_{first_id + i}")
            for i, m in enumerate(movies)]


def measure(make_executor, movies, out: Path, n_workers: int, label: str) -> dict:
    with make_executor() as executor:
        if getattr(executor, "connected", True) is False:
            deadline = time.monotonic() + 60
            while not executor.connected and time.monotonic() < deadline:
                time.sleep(0.05)
        run(executor, tasks_for(movies[:n_workers], out / "warm", 10_000))  # start-up
        wall, outcomes = run(executor, tasks_for(movies, out / label))
    inside = statistics.mean(o.timings_s["worker_wall"] for o in outcomes)
    return {"wall_s": wall, "per_min": 60 * len(movies) / wall, "inside_s": inside,
            "overhead_s": wall / len(movies) * n_workers - inside}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--noop", type=int, default=30, help="round trips of the no-op runner")
    args = parser.parse_args(argv)

    import distributed

    from daemon.work.dask_executor import DaskExecutor
    from daemon.work.executor import ExecutorSettings
    from daemon.work.workers import WorkerPool

    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH"))
                                               if p)
    sys.path.insert(0, here)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"backlog: {args.movies} movies of {args.size}^2 x {args.frames} frames (int16 MRC)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        movies = make_backlog(root / "session", args.movies, args.size, args.frames)
        results = {}
        for n in (1, 2):
            results[f"local x{n}"] = measure(lambda n=n: WorkerPool(n), movies, root / "out", n,
                                             f"local{n}")
            with distributed.LocalCluster(n_workers=n, processes=True, threads_per_worker=1,
                                          dashboard_address=None) as cluster:
                settings = ExecutorSettings("dask", cluster.scheduler_address, n)
                results[f"dask x{n}"] = measure(lambda s=settings: DaskExecutor(s), movies,
                                                root / "out", n, f"dask{n}")
        print(f"{'executor':<10} {'wall s':>8} {'movies/min':>11} {'in worker s':>12} "
              f"{'overhead s/movie':>17}")
        for name, r in results.items():
            print(f"{name:<10} {r['wall_s']:8.2f} {r['per_min']:11.1f} {r['inside_s']:12.3f} "
                  f"{r['overhead_s']:17.3f}")

        # the executor's own round trip: paths go out, an outcome comes back
        trips = {}
        noop = [movies[0]] * args.noop
        with WorkerPool(1, runner="bench_dask:noop_runner", gain_loader=None) as pool:
            run(pool, tasks_for(noop[:1], root / "noop", 50_000))
            trips["local"] = run(pool, tasks_for(noop, root / "noop"))[0] / len(noop)
        with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                      dashboard_address=None) as cluster:
            with DaskExecutor(ExecutorSettings("dask", cluster.scheduler_address, 1),
                              runner="bench_dask:noop_runner", gain_loader=None) as executor:
                while not executor.connected:
                    time.sleep(0.05)
                run(executor, tasks_for(noop[:1], root / "noop", 50_000))
                trips["dask"] = run(executor, tasks_for(noop, root / "noop"))[0] / len(noop)
        print(f"round trip of a no-op movie (any size; one at a time): local "
              f"{trips['local'] * 1e3:.1f} ms, Dask {trips['dask'] * 1e3:.1f} ms "
              f"(goal < 200 ms)")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
