"""Soak: many small movies through the real daemon with faults injected at random; prints counts.

    .venv/bin/python benchmarks/bench_soak.py --movies 1000
    .venv/bin/python benchmarks/bench_soak.py --movies 200 --seed 3     # a shorter run

A writer thread acquires ``--movies`` small MRC movies (64 x 64 x 4 frames) into a watched
folder, a third of them in a sub-folder, frame by frame like a detector. Meanwhile, at random
moments, the soak injects the faults of an unattended night:

* **SIGKILL** of the daemon (then a restart, as systemd would);
* **ENOSPC**: the output folder is a small tmpfs (where the soak may mount one, as root) that a
  ballast file fills for a while; elsewhere this fault is skipped and said so;
* **unwritable output**: the sub-folder's output folder is replaced by a regular file for a while
  (``mkdir`` fails with ENOTDIR; root ignores permission bits, so this is how to make it unwritable);
* **vanished input**: a movie is deleted right after it is written (it may or may not have been
  corrected before; either way it must not be lost silently: done, or quarantined as vanished).

At the end a last daemon runs until idle and the soak checks, for every movie still on disk:
exactly one complete output set (4 readable MRCs + the motion record of this very file), nothing
partial, no temporary, one ``done`` ledger row; and for every vanished movie: a ``done`` or a
quarantined row. RSS (daemon + workers) is sampled through the last, fault-free quarter of the
movies; the growth from its second to its last quarter must stay under 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.simulation.movies import write_movie_progressively  # noqa: E402

SHAPE = (64, 64)
N_FRAMES = 4
SUFFIXES = (".mrc", "_DW.mrc", "_EVN.mrc", "_ODD.mrc")


def daemon_argv(watch: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "daemon", "watch", str(watch), "--out", str(out),
            "--dose-per-frame", "1", "--settle-time", "0.3", "--scan-interval", "0.2",
            "--heartbeat", "0.5", "--retry-delay", "0.2", "--no-publish", "--handoff", "off",
            "--patches", "1", "1", "--tilt-series", "off", "--incomplete-grace", "20"]


def start(watch: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("JOURNAL_STREAM", None)
    with open(log, "ab") as fh:
        return subprocess.Popen(daemon_argv(watch, out) + list(extra), stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def rss_mb(proc: subprocess.Popen) -> float:
    try:
        p = psutil.Process(proc.pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:
        return float("nan")


def unmount(folder: Path) -> None:
    """Unmount the soak's tmpfs, also when the soak fails; while a process still holds a file
    there (a worker of the last daemon winding down), detach it lazily. Before, a failed
    unmount was silent and the tmpfs stayed mounted over the --workdir."""
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        done = subprocess.run(["umount", "-l", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  warning: {folder} is still mounted: {done.stderr.strip()}")


def mount_tmpfs(folder: Path, size_mb: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def writer(watch: Path, n: int, rng: np.random.Generator, vanish: set[int],
           done: threading.Event, progress: list[int]) -> None:
    for i in range(n):
        progress[0] = i
        folder = watch / "grid2" if i % 3 == 0 else watch
        frames = rng.poisson(2.0, (N_FRAMES, *SHAPE)).astype(np.int16)
        path = folder / f"movie_{i:05d}.mrc"
        write_movie_progressively(path, frames, pixel_size_A=1.1, frame_interval_s=0.02)
        if i in vanish:
            path.unlink()
        time.sleep(0.01)
    done.set()


def check(watch: Path, out: Path, vanished: list[Path]) -> dict[str, int]:
    db = sqlite3.connect(out / "motionwatch.sqlite")
    rows = db.execute("SELECT path, status, size, mtime_ns FROM movies").fetchall()
    db.close()
    by_path: dict[str, list[tuple]] = {}
    for r in rows:
        by_path.setdefault(r[0], []).append(r)
    counts = {"movies": 0, "complete": 0, "lost": 0, "duplicated": 0, "partial": 0,
              "temporaries": 0, "vanished": len(vanished), "vanished_accounted": 0}
    for movie in sorted(watch.rglob("movie_*.mrc")):
        counts["movies"] += 1
        rel = movie.parent.relative_to(watch)
        folder = out / rel
        done_rows = [r for r in by_path.get(str(movie), []) if r[1] == "done"]
        have = [folder / f"{movie.stem}{s}" for s in SUFFIXES]
        motion = folder / f"{movie.stem}.motion.json"
        if not done_rows and not motion.exists():
            counts["lost"] += 1
            continue
        if len(done_rows) > 1:
            counts["duplicated"] += 1
        ok = motion.exists() and all(p.is_file() for p in have)
        if ok:
            st = movie.stat()
            source = json.loads(motion.read_text()).get("source_file", {})
            ok = source.get("size") == st.st_size and source.get("mtime_ns") == st.st_mtime_ns
            for p in have:
                try:
                    with mrcfile.open(p, permissive=False) as mrc:
                        ok = ok and mrc.data.shape == SHAPE
                except ValueError:
                    ok = False
        counts["complete" if ok else "partial"] += 1
    for path in vanished:
        if any(r[1] in ("done", "quarantined") for r in by_path.get(str(path), [])) or not \
                by_path.get(str(path)):
            counts["vanished_accounted"] += 1
    counts["temporaries"] = sum(1 for p in out.rglob(".*.tmp-*"))
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--movies", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="mw-soak-"))
    watch, out, log = base / "watch", base / "out", base / "daemon.log"
    (watch / "grid2").mkdir(parents=True, exist_ok=True)
    tmpfs = mount_tmpfs(out, 512)
    out.mkdir(parents=True, exist_ok=True)
    vanish = set(int(i) for i in rng.choice(args.movies, size=max(1, args.movies // 100),
                                            replace=False))
    vanished = [(watch / "grid2" if i % 3 == 0 else watch) / f"movie_{i:05d}.mrc" for i in vanish]
    finished = threading.Event()
    progress = [0]
    thread = threading.Thread(target=writer, args=(watch, args.movies,
                                                   np.random.default_rng(args.seed + 1), vanish,
                                                   finished, progress), daemon=True)
    faults = {"sigkill": 0, "enospc": 0, "unwritable": 0, "vanished": len(vanish)}
    t0 = time.monotonic()
    daemon = start(watch, out, log)
    thread.start()
    try:
        while progress[0] < 0.75 * args.movies and not finished.is_set():  # faults: 3/4 of it
            time.sleep(rng.uniform(0.5, 2.0))
            fault = rng.choice(["sigkill", "enospc", "unwritable"])
            if fault == "sigkill":
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(10)
                daemon = start(watch, out, log)
            elif fault == "enospc" and tmpfs:
                free = psutil.disk_usage(str(out)).free
                ballast = out / ".ballast"
                with open(ballast, "wb") as fh:
                    try:
                        while free > 0:  # fill the disk in 16 MB steps
                            fh.write(b"\0" * min(free, 16 * 2**20))
                            free -= 16 * 2**20
                    except OSError:
                        pass
                time.sleep(rng.uniform(0.5, 1.5))
                ballast.unlink()
            elif fault == "unwritable":
                sub = out / "grid2"
                if sub.is_dir():
                    sub.rename(out / ".grid2-aside")
                sub.write_bytes(b"not a folder")
                time.sleep(rng.uniform(0.5, 1.5))
                sub.unlink()
                if (out / ".grid2-aside").is_dir():
                    (out / ".grid2-aside").rename(sub)
            else:
                continue
            faults[fault] += 1
        # the last quarter, fault-free: a fresh daemon, RSS sampled until it is idle
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        daemon = start(watch, out, log, "--exit-when-idle", "5")
        samples = []
        while daemon.poll() is None:
            samples.append(rss_mb(daemon))
            time.sleep(0.5)
            if not finished.is_set():
                continue
        thread.join()
    except BaseException:
        if tmpfs:
            unmount(out)
        raise
    finally:
        if daemon.poll() is None:
            daemon.kill()
    counts = check(watch, out, vanished)
    wall = time.monotonic() - t0
    samples = [s for s in samples if s == s]
    q = max(1, len(samples) // 4)  # start-up (workers spawning) is the first quarter: skipped
    first, last = (float(np.median(samples[q:2 * q])), float(np.median(samples[-q:]))) \
        if samples else (float("nan"), float("nan"))
    growth = (last - first) / first * 100 if samples else float("nan")
    print(f"soak: {args.movies} movies in {wall:.0f} s, faults injected: "
          + ", ".join(f"{k} {v}" for k, v in faults.items())
          + ("" if tmpfs else " (ENOSPC skipped: no tmpfs could be mounted)"))
    print(f"  movies on disk {counts['movies']}: complete sets {counts['complete']}, "
          f"lost {counts['lost']} (bound 0), duplicated {counts['duplicated']} (bound 0), "
          f"partial {counts['partial']} (bound 0), temporaries left {counts['temporaries']} "
          f"(bound 0)")
    print(f"  vanished inputs {counts['vanished']}: accounted for {counts['vanished_accounted']}")
    print(f"  RSS of daemon + workers over the last stretch: {first:.0f} -> {last:.0f} MB "
          f"({growth:+.1f} %, bound < 5 %)")
    if tmpfs:
        unmount(out)
    ok = (counts["lost"] == counts["duplicated"] == counts["partial"] == counts["temporaries"]
          == 0 and counts["vanished_accounted"] == counts["vanished"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
