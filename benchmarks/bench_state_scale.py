"""The watch daemon's main loop on a state database of weeks of sessions.

The systemd unit keeps one state database in its output folder, so after a few weeks it holds
tens of thousands of rows of sessions whose files are gone (moved to storage). This runs the
real service (discovery, tilt-series resolver, dispatcher, state) with the test suite's fake
correction runner (it writes small outputs at once: the figures are the main loop's, not the
pixel work's) on:

* a state database seeded with ``--old-rows`` done tilt rows and their series, in
  ``old000/``, ``old001/`` ...: one real session of ``--tilts`` tilts is run through the
  service first, and its rows and series state are copied, folder renamed, through the
  ledger's own API; then its files are deleted (archived);
* a backlog of ``--series`` new series of ``--tilts`` tilts on disk, one per top-level folder
  (their stacks fail to assemble from the fake outputs, in a worker process: counted, not
  timed).

It prints how many tilts were corrected in ``--seconds`` and the mean time the main loop
spent per scan in the resolver (``observe``), per finished tilt (``movie_finished``) and per
scan in discovery, plus the time to the first scan.

Usage::

    .venv/bin/python benchmarks/bench_state_scale.py [--old-rows 20000] [--series 205]
        [--tilts 41] [--seconds 120] [--workdir DIR]

Measured on the 2-core test machine with the defaults (20,008 old rows, 205 series of 41
tilts, 120 s): at 5254924, 225 tilts corrected, resolver 850 ms a scan, 74 ms a finished
tilt, discovery 224 ms a scan, first scan at 7.7 s; with the partitioned resolution
(``daemon/series/partition.py``), the rows read as they are written and the ``updated``
index, two runs: 1,749-1,911 tilts, 191-207 ms (median 168 ms), 14.7-15.6 ms, 172-174 ms,
4.5 s. With 2 series on disk instead of a backlog (``--series 2 --seconds 30``), as while a
session is acquired: resolver median 66 ms a scan (mean 197 ms with the first scan's 3.6 s).

Months of sessions (``--old-rows 100000 --series 2 --seconds 40 --keep-seed``, the same seeded
database for both): at c2aba4d 72 tilts in 40 s, resolver median 330 ms a scan, 51 ms a
finished tilt, first scan done at 18.9 s, peak RSS 1811 MB; with complete series skipped until
what they read changes (``daemon/series/settled.py``) and rows kept as JSON text until read
(:class:`daemon.state.ledger.MovieRow`): 82 tilts (all), 100-103 ms, 42-44 ms, 8.6-9.1 s,
764-767 MB. The defaults again: 3,074 tilts in 120 s, 143 ms a scan (median 128 ms), 11.2 ms
a finished tilt, first scan 2.5 s, 293 MB.

With ``--old-on-disk`` the old sessions' movies (at their recorded size, mtime, inode and
content) and mdocs stay in the watched folder, as when sessions are moved to storage only
weeks later. 20,000 of them, 2 series live, 40 s, another process busy on one of the two
cores: at c2aba4d resolver median 470 ms a scan, discovery 265 ms a scan, the longest scan
(every movie on disk admitted once more after the start: its rows looked up) 8.3 s, 564 MB;
now (each corrected tilt's record compared with its assignment again only when either is
another object) 175 ms, 189 ms, 6.6 s, 353 MB.

The runs above poll every 0.2 s. ``--events`` runs the daemon as on a local disk (inotify
events wake the rescans, every 2 s otherwise) and ``--live-MB 100`` has a detector write a
100 MB movie every 5 s, 1 MiB at a time over 2 s. With 20,000 old movies on disk, 60 s: at
4df88f7 every write woke a rescan, and after the first 15 s the main loop spent 26.7 s of 45 s
in 53 scans (the daemon process 45.5 s of CPU in 60 s); with only a movie or mdoc made,
renamed, removed or closed waking one, never sooner than three times the last scan's length,
12.0 s in 21 scans (26.1 s of CPU). With folders that held still for 60 s and that no
event named taken from the last scan's listing (``--seconds 135 --steady-after 75``: the old
sessions' folders are taken again from about 64 s), after the first 75 s the main loop spent
9.6-10.2 s of 60 s in 34-36 scans, median discovery 36-37 ms and resolver 121-132 ms a scan
(41.5-43.6 s of CPU in 135 s; three runs).

**Those figures, and every figure above with old series, were taken with every old series
re-opened once** ("41 movie(s) corrected again"): the seeding copied the template's series
state with the template's row ids in ``assembled_rows``, so each old series was re-opened and
its assembly tried again in a worker (488 ``series_reopened`` at 20,000 rows, 2,440 at
100,000, in the "series events" line). The copies now name their own rows: no old series is
re-opened. Again, with Python's garbage collector paced as ``motionwatch watch`` runs it
(``daemon/system/collector.py``) and, in brackets, at CPython's default pace (``--cpython-gc``),
one run each:

* 20,000 old movies on disk, ``--events --live-MB 100 --seconds 135 --steady-after 75``:
  after the first 75 s, 9.4 s of 60 s in 35 scans (13.6 s in 28 scans at CPython's pace),
  median discovery 52 ms (72) and resolver 154 ms (288) a scan, 48.3 s (55.0 s) of CPU; the
  collector walked the whole heap once (50 times, 9.5 s).
* 100,000 old rows, files archived, ``--series 2 --seconds 40``: resolver median 102 ms (126)
  a scan, 51 ms (57) a finished tilt, first scan done at 10.3 s (12.0), peak RSS 795 MB.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "helpers"
sys.path[:0] = [str(ROOT), str(HELPERS)]
os.environ["PYTHONPATH"] = os.pathsep.join(  # worker processes import the fake runner
    [str(ROOT), str(HELPERS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                 if p])

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from correction.params import CorrectionParams, DoseParams  # noqa: E402
from daemon.engine.service import Service  # noqa: E402
from daemon.intake.content import content_fingerprint  # noqa: E402
from daemon.intake.discover import Discovery  # noqa: E402
from daemon.series.options import resolver_from_config  # noqa: E402
from daemon.series.resolver import TiltSeriesResolver  # noqa: E402
from daemon.settings.config import Config  # noqa: E402
from daemon.simulation.tilt_series import simulate_tilt_series  # noqa: E402
from daemon.state.ledger import Ledger, MovieKey  # noqa: E402
from daemon.system.collector import paced_garbage_collector  # noqa: E402

RUNNER = "fake_runners:correct"


class _Timings:
    """Wall time of chosen methods, per call (class attributes wrapped; restored after)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = collections.defaultdict(list)
        self.starts: dict[str, list[float]] = collections.defaultdict(list)  # perf_counter
        self._restore: list[tuple[type, str, Any]] = []

    def wrap(self, cls: type, name: str) -> None:
        original = getattr(cls, name)
        calls = self.calls[f"{cls.__name__}.{name}"]
        starts = self.starts[f"{cls.__name__}.{name}"]

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            starts.append(t)
            try:
                return original(*args, **kwargs)
            finally:
                calls.append(time.perf_counter() - t)

        setattr(cls, name, timed)
        self._restore.append((cls, name, original))

    def restore(self) -> None:
        for cls, name, original in reversed(self._restore):
            setattr(cls, name, original)
        self._restore.clear()


class _CollectorTimes:
    """Collections of each generation of Python's garbage collector and their wall time (s),
    from a ``gc.callbacks`` hook (removed by :meth:`close`)."""

    def __init__(self) -> None:
        self.count: collections.Counter[int] = collections.Counter()
        self.seconds: collections.Counter[int] = collections.Counter()
        self._started = 0.0
        gc.callbacks.append(self._hook)

    def _hook(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._started

    def close(self) -> None:
        gc.callbacks.remove(self._hook)


class _CountingLog:
    """A structlog-like logger that counts events by name and keeps nothing else."""

    def __init__(self) -> None:
        self.events: collections.Counter[str] = collections.Counter()

    def bind(self, **_: Any) -> _CountingLog:
        return self

    def _count(self, event: str, *_: Any, **__: Any) -> None:
        self.events[event] += 1

    debug = info = warning = error = exception = critical = _count


def _config(watch: Path, out: Path, *, events: bool = False) -> Config:
    """Polling only, rescans every 0.2 s; with ``events``, as a daemon on a local disk runs:
    inotify events wake the rescans, which are otherwise every 2 s (the default)."""
    return Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                  settle_time_s=0.1, scan_interval_s=2.0 if events else 0.2,
                  incomplete_grace_s=1.0, heartbeat_s=1.0, exit_when_idle_s=2.0,
                  polling="auto" if events else "on", workers=1,
                  options={"tilt_series": "auto", "mdoc_quiet": 0.3, "metadata_wait": 1.0})


def _live_writer(folder: Path, stop: threading.Event, *, movie_MB: int, every_s: float,
                 write_s: float) -> list[int]:
    """Write an MRC movie of ``movie_MB`` into ``folder`` every ``every_s`` seconds, in 1 MiB
    pieces spread over ``write_s`` seconds, as a detector writes while it exposes; returns
    [movies written] (filled in as it goes)."""
    import mrcfile  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    ny, nx = 1024, 1024
    n = max(1, movie_MB)  # int8 frames of 1 MiB
    header_file = folder.parent / "header.tmp"
    with mrcfile.new(header_file, overwrite=True) as mrc:
        mrc.set_data(np.zeros((1, ny, nx), np.int8))
        mrc.header.nz = mrc.header.mz = n
    header = header_file.read_bytes()[:-ny * nx]
    header_file.unlink()
    frame = bytes(ny * nx)
    written = [0]

    def write() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            with open(folder / f"live_{written[0]:04d}.mrc", "wb") as f:
                f.write(header)
                for i in range(n):
                    f.write(frame)
                    f.flush()
                    stop.wait(write_s / n)
            written[0] += 1
            stop.wait(max(0.0, every_s - (time.perf_counter() - t0)))

    threading.Thread(target=write, daemon=True).start()
    return written


def _series(folder: Path, seed: int, n_tilts: int) -> None:
    simulate_tilt_series(folder, rng=np.random.default_rng(seed), name=f"TS_{seed:03d}",
                         n_tilts=n_tilts, shape_yx=(16, 16), n_frames=3, frame_interval_s=0.0,
                         tilt_interval_s=0.0, lock=False, sleep=lambda s: None)


def _swap(value: Any, old: str, new: str) -> Any:
    """``value`` with every string's ``old`` replaced by ``new`` (JSON-like data)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value


def seed_old_sessions(work: Path, watch: Path, out: Path, n_rows: int, n_tilts: int) -> int:
    """At least ``n_rows`` done tilt rows of archived sessions (whole ones) and their complete
    series in the state database of ``out``; returns how many rows."""
    template = work / "template"
    (template / "w" / "session").mkdir(parents=True)
    (template / "out").mkdir()
    _series(template / "w" / "session", 0, n_tilts)
    Service(_config(template / "w", template / "out"), runner=RUNNER, logger=_CountingLog(),
            resolver=resolver_from_config(_config(template / "w", template / "out"))).run()
    with Ledger(template / "out" / "motionwatch.sqlite") as source:
        rows = [r for r in source.rows() if r.status == "done"]
        series = source.series_states()
    if len(rows) != n_tilts or not series:
        raise SystemExit(f"the template session gave {len(rows)} done rows of {n_tilts}")
    old_watch, old_out = str(template / "w" / "session"), str(template / "out" / "session")
    with Ledger(out / "motionwatch.sqlite") as ledger:
        made, k = 0, 0
        while made < n_rows:
            folder = f"old{k:03d}"
            new_watch, new_out = str(watch / folder), str(out / folder)
            finished = {}  # the new rows' (id, finished stamp), by movie name
            for row in rows:  # whole sessions: n_rows rounded up to a session's tilts
                key = MovieKey(row.key.path.replace(old_watch, new_watch), row.key.size,
                               row.key.mtime_ns + k * 10**12, row.key.fingerprint)
                metadata = _swap(_swap(row.metadata, old_watch, new_watch), "session/",
                                 f"{folder}/")
                ledger.add(key, metadata=metadata)
                ledger.claim(key)
                ledger.mark_done(key, outputs=_swap(row.outputs, old_out, new_out),
                                 timings=row.timings, summary=row.summary)
                new_row = ledger.get(key)
                finished[f"{folder}/{Path(key.path).name}"] = [new_row.row_id, new_row.finished]
                made += 1
            for name, state in series.items():
                state = _swap(_swap(_swap(state, old_out, new_out), old_watch, new_watch),
                              "session/", f"{folder}/")
                # the rows its stacks were assembled from are the copies' rows: else every
                # old series is re-opened as "corrected again" at the first scan
                state["assembled_rows"] = [[m, *finished[m]] for m, *_ in
                                           state.get("assembled_rows", [])]
                ledger.set_series_state(name.replace("session/", f"{folder}/"), state)
            k += 1
    shutil.copytree(template / "w" / "session", work / "template_session")  # --old-on-disk
    shutil.rmtree(template)
    return made


def restore_old_sessions(work: Path, watch: Path, out: Path) -> int:
    """Put the old sessions' files back on disk (movies at their recorded size and mtime, the
    series mdoc), as when weeks of sessions stay in the watched folder; returns how many
    movies."""
    template = work / "template_session"
    with Ledger(out / "motionwatch.sqlite") as ledger:
        versions = ledger.versions()
    files = {p.name: p.read_bytes() for p in template.iterdir() if p.is_file()}
    made, folders = 0, set()
    inodes = []  # each row's file's inode and content, as admission records them
    for path, size, mtime_ns in versions:
        movie = Path(path)
        if movie.parent.parent != watch or not movie.parent.name.startswith("old"):
            continue
        if movie.parent not in folders:
            movie.parent.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                if name.endswith(".mdoc"):
                    (movie.parent / name).write_bytes(data)
            folders.add(movie.parent)
        data = files[movie.name]
        if len(data) != size:
            raise SystemExit(f"{movie.name}: template of {len(data)} bytes, row of {size}")
        movie.write_bytes(data)
        os.utime(movie, ns=(mtime_ns, mtime_ns))
        st = movie.stat()
        inodes.append((st.st_dev, st.st_ino, content_fingerprint(movie), path, size, mtime_ns))
        made += 1
    with sqlite3.connect(out / "motionwatch.sqlite") as db:  # one transaction, not one a row
        db.executemany("UPDATE movies SET dev = ?, ino = ?, content = ? "
                       "WHERE path = ? AND size = ? AND mtime_ns = ?", inodes)
    return made


def run(work: Path, *, old_rows: int, n_series: int, n_tilts: int, seconds: float,
        seed_copy: Path | None = None, old_on_disk: bool = False, events: bool = False,
        live_MB: int = 0, steady_after_s: float = 15.0) -> dict:
    """``seed_copy``: where a copy of the seeded database is kept and, when there, taken
    instead of seeding again (its rows name ``work``'s folders: the same ``work`` each time)."""
    watch, out = work / "w", work / "out"
    watch.mkdir(parents=True)
    out.mkdir()
    t = time.perf_counter()
    if seed_copy is not None and seed_copy.exists():
        shutil.copyfile(seed_copy, out / "motionwatch.sqlite")
        shutil.copytree(seed_copy.with_suffix(".template"), work / "template_session")
        print(f"  took the seeded database {seed_copy}", flush=True)
    else:
        made = seed_old_sessions(work, watch, out, old_rows, n_tilts)
        print(f"  seeded {made} old rows in {time.perf_counter() - t:.1f} s", flush=True)
        if seed_copy is not None:
            shutil.copyfile(out / "motionwatch.sqlite", seed_copy)
            shutil.rmtree(seed_copy.with_suffix(".template"), ignore_errors=True)
            shutil.copytree(work / "template_session", seed_copy.with_suffix(".template"))
    if old_on_disk:
        t = time.perf_counter()
        made = restore_old_sessions(work, watch, out)
        print(f"  put {made} old movies back on disk in {time.perf_counter() - t:.1f} s",
              flush=True)
    t = time.perf_counter()
    for s in range(n_series):
        _series(watch / f"grid{s:03d}", s, n_tilts)
    print(f"  wrote {n_series} series of {n_tilts} tilts in {time.perf_counter() - t:.1f} s",
          flush=True)
    with Ledger(out / "motionwatch.sqlite") as ledger:
        done_before = sum(r.status == "done" for r in ledger.rows())

    timings = _Timings()
    for cls, name in ((TiltSeriesResolver, "observe"), (TiltSeriesResolver, "movie_finished"),
                      (Discovery, "scan"), (Service, "_scan")):
        timings.wrap(cls, name)
    config = _config(watch, out, events=events)
    log = _CountingLog()
    service = Service(config, runner=RUNNER, logger=log, resolver=resolver_from_config(config))
    stop = threading.Timer(seconds, lambda: service.request_stop("benchmark time"))
    started = time.perf_counter()
    first_scan: list[float] = []

    def first() -> None:
        while not timings.calls["Service._scan"] and time.perf_counter() - started < seconds:
            time.sleep(0.01)
        first_scan.append(time.perf_counter() - started)

    process = psutil.Process()
    rss_before = process.memory_info().rss
    rss_peak = [rss_before]
    running = threading.Event()
    running.set()

    def sample_rss() -> None:  # the main loop's memory: the rows and what it derives of them
        while running.is_set():
            rss_peak[0] = max(rss_peak[0], process.memory_info().rss)
            time.sleep(0.2)

    threading.Thread(target=first, daemon=True).start()
    threading.Thread(target=sample_rss, daemon=True).start()
    writing = threading.Event()
    live = (_live_writer(watch / "live", writing, movie_MB=live_MB, every_s=5.0, write_s=2.0)
            if live_MB else [0])
    stop.start()
    cpu_before = process.cpu_times()
    collector = _CollectorTimes()
    try:
        service.run()
    finally:
        collector.close()
        stop.cancel()
        writing.set()
        running.clear()
        timings.restore()
    cpu = process.cpu_times()
    main_cpu_s = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
    steady_from = started + steady_after_s  # after the start-up's admission of every movie

    def steady_of(name: str) -> list[float]:
        return [d for t, d in zip(timings.starts[name], timings.calls[name]) if t >= steady_from]

    steady = steady_of("Service._scan")
    steady_ms = {name.split(".")[0]: 1e3 * float(np.median(steady_of(name)))
                 for name in ("Discovery.scan", "TiltSeriesResolver.observe")
                 if steady_of(name)}
    with Ledger(out / "motionwatch.sqlite") as ledger:
        done_after = sum(r.status == "done" for r in ledger.rows())

    def mean_ms(name: str) -> float:
        calls = timings.calls[name]
        return 1e3 * sum(calls) / len(calls) if calls else float("nan")

    def median_ms(name: str) -> float:
        calls = timings.calls[name]
        return 1e3 * float(np.median(calls)) if calls else float("nan")

    return {"tilts_corrected": done_after - done_before,
            "resolver_scan_ms": mean_ms("TiltSeriesResolver.observe"),
            "resolver_scan_median_ms": median_ms("TiltSeriesResolver.observe"),
            "finished_tilt_ms": mean_ms("TiltSeriesResolver.movie_finished"),
            "discovery_scan_ms": mean_ms("Discovery.scan"),
            "scans": len(timings.calls["Service._scan"]),
            "scanning_s": sum(timings.calls["Service._scan"]),
            "main_cpu_s": main_cpu_s, "live_movies": live[0],
            "steady_scans": len(steady), "steady_scanning_s": sum(steady),
            "steady_median_ms": steady_ms,
            "longest_scan_s": max(timings.calls["Service._scan"], default=float("nan")),
            "first_scan_s": first_scan[0] if first_scan else float("nan"),
            "rss_before_MB": rss_before / 2**20, "rss_peak_MB": rss_peak[0] / 2**20,
            "gc": {g: (collector.count[g], collector.seconds[g]) for g in range(3)},
            "series_events": {k: v for k, v in sorted(log.events.items())
                              if k.startswith("series_")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-rows", type=int, default=20000)
    ap.add_argument("--series", type=int, default=205)
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--old-on-disk", action="store_true",
                    help="the old sessions' movies and mdocs stay in the watched folder")
    ap.add_argument("--events", action="store_true",
                    help="inotify events wake the rescans (every 2 s otherwise), as on a local "
                         "disk; default polling every 0.2 s")
    ap.add_argument("--live-MB", type=int, default=0, metavar="MB",
                    help="a detector writing an MB movie every 5 s, over 2 s, into the "
                         "watched folder (the daemon corrects them too)")
    ap.add_argument("--steady-after", type=float, default=15.0, metavar="S",
                    help="scans after this many seconds count as the steady state (default "
                         "15: the start-up's admission of every movie on disk is done; with "
                         "--events, give 75: folders are taken from the last listing once they "
                         "held still for 60 s)")
    ap.add_argument("--keep-seed", action="store_true",
                    help="keep the seeded database in --workdir and take it at the next run "
                         "of the same --old-rows and --tilts (seeding 100,000 rows: 75 s)")
    ap.add_argument("--cpython-gc", action="store_true",
                    help="CPython's default garbage collector thresholds, not the daemon's "
                         "(daemon/system/collector.py)")
    a = ap.parse_args()
    seed_copy = None
    if a.keep_seed:
        if a.workdir is None:
            ap.error("--keep-seed needs --workdir")
        work = a.workdir / f"mw-scale-{a.old_rows}x{a.tilts}"
        seed_copy = a.workdir / f"mw-scale-{a.old_rows}x{a.tilts}.sqlite"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="mw-scale-", dir=a.workdir))
    print(f"{a.old_rows} old rows, {a.series} series of {a.tilts} tilts on disk, "
          f"{a.seconds:g} s (fake runner), in {work}:", flush=True)
    try:
        with contextlib.nullcontext() if a.cpython_gc else paced_garbage_collector():
            r = run(work, old_rows=a.old_rows, n_series=a.series, n_tilts=a.tilts,
                    seconds=a.seconds, seed_copy=seed_copy, old_on_disk=a.old_on_disk,
                    events=a.events, live_MB=a.live_MB, steady_after_s=a.steady_after)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"  tilts corrected: {r['tilts_corrected']} in {a.seconds:g} s "
          f"({r['scans']} scans, first done at {r['first_scan_s']:.1f} s, the longest took "
          f"{r['longest_scan_s']:.1f} s)")
    print(f"  main loop, mean: resolver {r['resolver_scan_ms']:.0f} ms a scan (median "
          f"{r['resolver_scan_median_ms']:.0f} ms; the first scan reads and resolves every "
          "row), "
          f"{r['finished_tilt_ms']:.1f} ms a finished tilt; discovery "
          f"{r['discovery_scan_ms']:.0f} ms a scan")
    print(f"  main loop: {r['scanning_s']:.1f} s of {a.seconds:g} s in scans; after the first "
          f"{a.steady_after:g} s, {r['steady_scanning_s']:.1f} s in {r['steady_scans']} scans; "
          f"the daemon process (not its workers) used {r['main_cpu_s']:.1f} s of CPU"
          + (f"; {r['live_movies']} movies written live" if a.live_MB else ""))
    print("  after the first {:g} s, median ms a scan: {}".format(
        a.steady_after, ", ".join(f"{k} {v:.0f}" for k, v in r["steady_median_ms"].items())))
    print("  garbage collections ({} thresholds) of generations 0, 1, 2: {}".format(
        "CPython's default" if a.cpython_gc else "the daemon's",
        ", ".join(f"{n} in {t:.2f} s" for n, t in r["gc"].values())))
    print(f"  memory (RSS of the process, fake runner's workers not counted): "
          f"{r['rss_before_MB']:.0f} MB before the service, at most {r['rss_peak_MB']:.0f} MB "
          "while it ran")
    print(f"  series events (the old sessions' series are complete: none of theirs): "
          f"{r['series_events']}")


if __name__ == "__main__":
    main()
