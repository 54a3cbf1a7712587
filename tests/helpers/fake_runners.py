"""The fake correction runner of the daemon's tests: behaves by the movie's name, so a test
picks the fault by naming its movie (``runner="fake_runners:correct"``; ``tests/conftest.py``
puts this folder on ``sys.path``, and worker processes inherit it through ``PYTHONPATH``).

Name prefixes: ``crash`` (the worker kills itself), ``torn`` (the same, after it began writing
its outputs' temporaries), ``hang`` (60 s; ``hangwriting``: after it began writing its
outputs' temporaries), ``victim`` (30 s on the
first attempt: a test kills the worker), ``slow`` (1.5 s, and then while a file ``SLOW``
exists beside the output folder, at most 30 s; both leave ``<stem>.started`` holding the
worker's pid), ``alloc`` (writes and frees 256 MiB; the record's
``rss_at_start_MB`` is the worker's resident memory when the movie began), ``later`` (returns
at once, leaving its outputs to write: ``write()`` takes 1 s; the record has ``began_at`` and
``written_at``, wall-clock s, and the niceness of the threads that corrected and wrote it),
``stuck`` (the same, but its write hangs for 60 s), ``held`` (holds its worker while a file
``HOLD`` exists beside the output folder, at most 30 s, then opens its movie as the reader does:
a movie renamed meanwhile is not found; its outputs are left to write, as the pipeline's
are), ``bad`` (a bad movie: ``not a movie: 3 of
6 frames readable``), ``flaky`` (the same while ``<movie>.bad`` exists beside it), ``never`` (must
not run), ``enospc_once`` (full disk on the first attempt), ``enospc`` (full disk, always), ``denied``
(the output folder refuses writes), ``bug`` (an internal error). A file ``OUTPUT_LOCKED`` or
``OUTPUT_FULL`` beside the output folder makes every movie fail on the output side. Otherwise it
writes ``<stem>.mrc`` (the worker's pid, the gain it was given, the extra record) and
``<stem>.motion.json``, and returns them.

``fake_runners:prepare_unless_bad`` is the real runner for every movie but one marked bad.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from correction.errors import TruncatedMovieError

__all__ = ["correct", "load_gain", "prepare_unless_bad"]


def correct(movie_path: Path, out_dir: Path, params: Any, *, gain_reference: Any = None,
            stem: str | None = None, extra_record: dict | None = None) -> SimpleNamespace:
    movie_path, out_dir = Path(movie_path), Path(out_dir)
    name, stem, extra = movie_path.name, stem or movie_path.stem, dict(extra_record or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    if name.startswith(("torn", "hangwriting")):  # killed while writing its output set
        for output in (f"{stem}.mrc", f"{stem}_DW.mrc", f"{stem}.thumb.png"):
            (out_dir / f".{output}.tmp-{os.getpid()}").write_bytes(b"half")
        if name.startswith("torn"):
            os.kill(os.getpid(), signal.SIGKILL)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if name.startswith("hang"):
        time.sleep(60)
    if name.startswith(("victim", "slow")):  # a test sees the movie in hand, and which process
        started = out_dir / f"{stem}.started"
        first = not started.exists()
        started.write_text(str(os.getpid()))
        if name.startswith("victim") and first:
            time.sleep(30)  # killed here by the test
    if name.startswith("slow"):
        time.sleep(1.5)
        _hold_while(out_dir.parent / "SLOW")
    if name.startswith("held"):
        _hold_while(out_dir.parent / "HOLD")
        from correction.io import detect_format

        detect_format(movie_path)  # as the pipeline's reader opens it
    rss_at_start_MB = _resident_MB()
    if name.startswith("alloc"):
        import numpy as np

        block = np.empty(256 << 20, np.uint8)
        block.fill(1)
        del block
    if name.startswith("bad") or (name.startswith("flaky")
                                  and movie_path.with_name(name + ".bad").exists()):
        raise TruncatedMovieError(movie_path, "not a movie: 3 of 6 frames readable")
    if name.startswith("never"):
        raise AssertionError("must not run: outputs should have been adopted")
    if name.startswith("enospc_once"):
        marker = out_dir / f"{stem}.failed-once"
        if not marker.exists():
            marker.write_text("")
            raise OSError(errno.ENOSPC, "No space left on device")
    elif name.startswith("enospc"):
        raise OSError(errno.ENOSPC, "No space left on device")
    if name.startswith("denied") or (out_dir.parent / "OUTPUT_LOCKED").exists():
        raise PermissionError(errno.EACCES, "Permission denied", str(out_dir / f".{stem}.tmp-1"))
    if (out_dir.parent / "OUTPUT_FULL").exists():
        raise OSError(errno.ENOSPC, "No space left on device")
    if name.startswith("bug"):
        raise KeyError("oops")
    outputs = {"sum": out_dir / f"{stem}.mrc", "motion": out_dir / f"{stem}.motion.json"}
    record = {"frames": 4, "pid": os.getpid(), "drift": {"total_A": 1.0},
              "worker_niceness": _niceness(),
              "rss_at_start_MB": rss_at_start_MB, "began_at": time.time()}

    def write() -> SimpleNamespace:
        outputs["sum"].write_text(f"{os.getpid()} {gain_reference} {extra}")
        outputs["motion"].write_text(json.dumps({"movie": str(movie_path), "frames": 4, **extra}))
        return SimpleNamespace(outputs=outputs, timings_s={"total": 0.01},
                               record={**record, "written_at": time.time(),
                                       "writer_niceness": _niceness()})

    if name.startswith("held"):
        return SimpleNamespace(write=write)
    if name.startswith(("later", "stuck")):
        def write_later() -> SimpleNamespace:
            time.sleep(60 if name.startswith("stuck") else 1.0)
            return write()

        return SimpleNamespace(write=write_later)
    return write()


def prepare_unless_bad(movie_path: Path, out_dir: Path, params: Any, **kwargs: Any) -> Any:
    """The real runner (:func:`correction.pipeline.prepare_movie`), except for a movie with a
    file ``<movie>.bad`` beside it: that one fails as a bad movie (and is quarantined)."""
    from correction.pipeline import prepare_movie

    if Path(movie_path).with_name(Path(movie_path).name + ".bad").exists():
        raise TruncatedMovieError(Path(movie_path), "not a movie: 3 of 6 frames readable")
    return prepare_movie(movie_path, out_dir, params, **kwargs)


def _hold_while(marker: Path, limit_s: float = 30.0) -> None:
    """Wait while ``marker`` exists (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _niceness() -> int:
    """This thread's niceness (Linux: a thread is a task of its own)."""
    import threading

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _resident_MB() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def load_gain(params: Any) -> str:
    """A stand-in gain loader: says which process loaded it."""
    return f"gain-loaded-in-{os.getpid()}"
