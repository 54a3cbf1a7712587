"""Worker processes that correct one movie each, with timeouts and crash isolation.

Each worker is a separate ``spawn``-ed process with its own pipe; the parent gives a worker a
:class:`Task` only when it is idle, so at most ``n_workers`` movies are in memory whatever the
backlog. A runner that leaves its outputs to write (it returns an object with ``write()``, as
:func:`correction.pipeline.prepare_movie` does) lets the worker say ``writing`` and take the
next movie while a thread writes them: one movie's writes (and quick-look pictures) overlap the
next one's read and transforms, and a worker holds at most one movie being corrected plus one
set of outputs being written (four images: 0.27 GB at 4096^2, 0.38 GB at K3 size). The writer
thread runs 10 steps nicer than the worker, so the next movie's threads keep the cores and the
writes fill the gaps they leave (on the 2-core test machine, at the same priority the overlap
gained 2 % per movie, nicer 2-3 % more). The movie comes back ``done`` only once its outputs
are in place.

A worker that dies (segfault, out-of-memory kill) or runs past its time limit (the pool's
``timeout_s``, or the task's own ``timeout_s``) is killed and replaced, and its task comes back
as a failed :class:`Outcome` (the other movie it held, if any, as ``interrupted``: not counted
against it); the daemon goes on. A worker that cannot start at all (its interpreter gone, an
import failing) never raises out of :meth:`WorkerPool.submit`: its task comes back as an
``unstarted`` outcome, which is not the movie's fault.

Workers ignore SIGINT and SIGTERM (the parent decides when they stop, so a first signal can let
the movie in hand finish) and die with their parent (``PR_SET_PDEATHSIG`` on Linux, plus a
parent-pid check), so a killed daemon leaves no orphan writing outputs. Signals are blocked in the
parent while a worker starts. The gain reference is loaded once per worker and reused while the
gain parameters stay the same. Movies given to a worker in a row share one allocator setting
(:func:`correction.allocator.movie_memory_settings`): each reuses the memory the one before freed,
without faulting it in again, and a worker that has waited ``_HOLD_MEMORY_S`` for work hands it
back to the system. Workers never log: they return outcomes, the parent logs.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait as mp_wait
from pathlib import Path
from typing import Any, Literal

from correction.allocator import movie_memory_settings
from correction.write import plain, write_probe_error

from daemon.events import SOURCE_KEY
from daemon.system.logs import quiet_correction_warnings, quiet_reader_logs
from daemon.work.gain_cache import GainCache, ReferenceBeingWritten
from daemon.work.orphans import STOP_SIGNALS, die_with_parent
from daemon.work.runner_names import resolve_runner

__all__ = ["Task", "Outcome", "OutcomeKind", "WorkerPool", "DEFAULT_RUNNER", "GainCache",
           "execute_task", "resolve_runner"]

DEFAULT_RUNNER = "correction.pipeline:prepare_movie"

OutcomeKind = Literal["done", "data", "config", "environment", "crash", "timeout", "error",
                      "unstarted", "interrupted", "superseded"]

#: why a movie's outputs were not written: its file is another version now
VERSION_REPLACED = ("another version of the movie file took its name while it was corrected: "
                    "its outputs were not written (the new version is corrected as a movie of "
                    "its own)")
_MTIME_SLACK_NS = 2_000_000_000  # another mount's view of one file's mtime (a share's rounding)

_WRITER_NICENESS = 10  # the writer thread's niceness above the worker's
_HOLD_MEMORY_S = 2.0  # a worker idle this long hands its freed memory back to the system
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ESTALE})
#: an output name this file system cannot hold: the movie's name, not the output side
_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ})


@dataclass(frozen=True, slots=True)
class Task:
    """One movie for a worker.

    Attributes
    ----------
    task_id : int
        The parent's handle (the ledger row id).
    movie_path : Path
    out_dir : Path
        Folder the outputs go to (created by the worker if absent, below ``out_root``).
    out_root : Path
        The output root; when it has vanished, failures are environmental, not the movie's.
    params : CorrectionParams
    stem : str or None
    extra_record : dict
        Merged into the motion record (source identity, series, tilt ...).
    timeout_s : float or None
        This task's time limit (s), replacing the pool's ``timeout_s``; None: the pool's.
    scratch_dir : Path or None
        Passed to the runner as ``scratch_dir`` when set (where a compressed movie too large
        to decode in memory is held); None: not passed.
    movie_named_as : str or None
        The movie's path as the daemon names it, where a worker reads it under another (a
        Dask node's ``path_map``): passed to the runner as ``named_as`` (its images' labels);
        a string, which the mapping leaves as it is. None: not passed.
    """

    task_id: int
    movie_path: Path
    out_dir: Path
    out_root: Path
    params: Any
    stem: str | None = None
    extra_record: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    scratch_dir: Path | None = None
    movie_named_as: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one task.

    Attributes
    ----------
    kind : {"done", "data", "config", "environment", "crash", "timeout", "error", "unstarted"}
        ``data``: the movie itself is bad (a ``CorrectionError``; retrying will not help);
        ``config``: the configured gain, dark or defect reference does not fit the movie or
        cannot be read (a ``GainReferenceError``), or the movie has no pixel size and none is
        configured (a ``MissingPixelSizeError``): the movie's fault only if others fit;
        ``environment``: full disk, read-only or vanished output folder, any error writing on
        the output side (retry later, not the movie's fault); ``crash``: the worker process
        died; ``timeout``: killed after its time limit; ``error``: any other exception;
        ``unstarted``: no worker could start on the task (it never began; not the movie's);
        ``interrupted``: the worker was killed or died for the other movie it held (its
        outputs were being written while the next movie was corrected; not the movie's);
        ``superseded``: another version of the file took the movie's name while it was
        corrected (:data:`VERSION_REPLACED`): its outputs were not written.
    outputs : dict of str
        Output name (``sum``, ``dw``, ``even``, ``odd``, ``motion``) -> path, when done.
    record : dict
        The motion record (JSON-serialisable), when done.
    timings_s : dict
        Stage timings reported by the pipeline, plus ``worker_wall`` (s).
    """

    task_id: int
    kind: OutcomeKind
    error: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    worker_pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "done"


# ------------------------------------------------------------------------------------------
# worker side


def _within(name: Any, folders: Iterable[Path]) -> bool:
    if name is None:
        return False
    path = Path(os.path.abspath(os.fsdecode(name)))
    return any(path == f or f in path.parents for f in folders)


def _writable(folder: Path) -> bool:
    return write_probe_error(folder) is None


def _classify(exc: BaseException, task: Task) -> OutcomeKind:
    """``config`` (the references, pixel size, frame selection), ``data`` (the movie),
    ``environment`` (disk, output side, a movie or output folder this worker cannot see), else
    ``error``.

    An OSError is environmental when its errno says so (full disk, quota, read-only, I/O), when
    it names a path on the output side (permission denied, a folder that is a file ...), when the
    output root is gone, or when it names no path and the output folder cannot be written; but
    an output name the file system refuses (too long, bytes it cannot store) is the movie's
    name's fault: ``data`` (retried, it would fail the same way for ever).
    """
    from correction.errors import (CorrectionError, FrameSelectionError, GainReferenceError,
                                   MissingPixelSizeError)

    if isinstance(exc, ReferenceBeingWritten):
        return "environment"
    if isinstance(exc, GainReferenceError):
        # a reference the daemon checked at start that this worker cannot see (a cluster
        # node's mount missing, a share gone): not the configuration's fault, retried later
        return "environment" if _reference_unseen(exc, task) else "config"
    if isinstance(exc, MissingPixelSizeError):  # TIFFs without one, and no --pixel-size
        return "config"
    if isinstance(exc, FrameSelectionError):  # --throw/--trunc, --bin, EER grouping
        return "config"
    if not task.out_root.is_dir() or not Path(task.movie_path).exists():
        # this worker does not see the session: a cluster's path_map or mount, a share gone
        # (a movie that vanished is found so by the daemon, which sees the watched folder)
        return "environment"
    if isinstance(exc, CorrectionError):
        return "data"
    if isinstance(exc, OSError):
        out_side = (Path(os.path.abspath(task.out_root)), Path(os.path.abspath(task.out_dir)))
        if exc.errno in _ENVIRONMENT_ERRNOS or not task.out_root.is_dir():
            return "environment"
        if exc.errno in _NAME_ERRNOS:
            return "data"
        if _within(exc.filename, out_side) or _within(exc.filename2, out_side):
            return "environment"
        if exc.filename is None and not _writable(task.out_dir if task.out_dir.is_dir()
                                                  else task.out_root):
            return "environment"
    return "error"


def _reference_unseen(exc: BaseException, task: Task) -> bool:
    """Whether the reference file ``exc`` names is a gain, dark or defect file of the task's
    that is not there for this worker (another one missing does not excuse a broken one)."""
    gain = getattr(getattr(task, "params", None), "gain", None)
    named = getattr(exc, "path", None)
    paths = {path for _, path in gain.files()} if hasattr(gain, "files") else set()
    if named is None or Path(named) not in paths:
        return False
    try:
        return not Path(named).exists()
    except OSError:  # the share answers an I/O error: not seen either
        return True


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class _Begun:
    """A task whose runner returned: its result, maybe with outputs still to write."""

    task: Task
    result: Any
    started: float
    worker: str

    @property
    def writes_later(self) -> bool:
        """The runner left its outputs to write (a ``write()`` that returns the result)."""
        return callable(getattr(self.result, "write", None))


def _failed(task: Task, exc: BaseException, started: float) -> Outcome:
    """The classified outcome of an exception raised for ``task``."""
    kind = _classify(exc, task)
    detail = _one_line(exc)
    if kind == "error":
        frame = traceback.extract_tb(exc.__traceback__)[-1:]
        if frame:
            detail += f" (at {Path(frame[0].filename).name}:{frame[0].lineno})"
    return Outcome(task.task_id, kind, error=detail,
                   timings_s={"worker_wall": time.perf_counter() - started},
                   worker_pid=os.getpid())


def begin_task(task: Task, correct: Callable[..., Any], gains: GainCache, *,
               worker: str) -> _Begun | Outcome:
    """Run the runner on one task's movie; an exception becomes a classified Outcome."""
    started = time.perf_counter()
    try:
        # a gain file being written is waited for within a quarter of the movie's time limit
        gain_reference = gains.get(getattr(task.params, "gain", None), wait_limit_s=None
                                   if task.timeout_s is None else 0.25 * task.timeout_s)
        if not task.out_root.is_dir():  # moved away, unmounted: never made again here (the
            # daemon would take an empty new folder for its state, and redo the movies done)
            raise FileNotFoundError(errno.ENOENT, "output folder gone", str(task.out_root))
        task.out_dir.mkdir(parents=True, exist_ok=True)
        optional = {} if task.scratch_dir is None else {"scratch_dir": task.scratch_dir}
        if task.movie_named_as is not None:
            optional["named_as"] = task.movie_named_as
        extra = dict(task.extra_record)
        if gains.note is not None:
            extra["gain_reference_note"] = gains.note
        result = correct(task.movie_path, task.out_dir, task.params,
                         gain_reference=gain_reference, stem=task.stem,
                         extra_record=extra, **optional)
    except Exception as exc:  # noqa: BLE001 - the worker boundary: everything is recorded
        return _failed(task, exc, started)
    return _Begun(task, result, started, worker)


def version_replaced(task: Task) -> bool:
    """Whether the file at the task's movie path is no longer the version it was given (the
    daemon's ``source_file``: another size, or an mtime more than 2 s away): a new version
    renamed over it (rsync, a copy made again), or the writer went on. Its outputs must not
    be written over those of that version, which is corrected as a movie of its own. False
    without a ``source_file`` (``motionwatch correct``) and for a file gone since it was read
    (its outputs are of what was read)."""
    source = task.extra_record.get(SOURCE_KEY) if isinstance(task.extra_record, Mapping) \
        else None
    if not isinstance(source, Mapping) or not isinstance(source.get("size"), int) \
            or not isinstance(source.get("mtime_ns"), int):
        return False
    try:
        st = os.stat(task.movie_path)
    except OSError:
        return False
    return st.st_size != source["size"] or \
        abs(st.st_mtime_ns - source["mtime_ns"]) > _MTIME_SLACK_NS


def finish_task(begun: _Begun) -> Outcome:
    """Write a begun task's outputs when its runner left them to write; its Outcome (not
    written: ``timeout`` when it is over its time limit, ``superseded`` when another version of
    the file took its name meanwhile)."""
    task = begun.task
    spent_s = time.perf_counter() - begun.started
    if begun.writes_later and task.timeout_s is not None and spent_s > task.timeout_s:
        # timed out already: a Dask worker asked to restart closes gracefully, letting the
        # task run on, and its outputs appeared after the daemon had quarantined the movie
        # (a retry's attempt could be writing the same movie then)
        return Outcome(task.task_id, "timeout",
                       error=f"over its time limit of {task.timeout_s:.0f} s ({spent_s:.0f} s "
                             "corrected): its outputs were not written",
                       timings_s={"worker_wall": spent_s}, worker_pid=os.getpid())
    if begun.writes_later and version_replaced(task):
        return Outcome(task.task_id, "superseded", error=VERSION_REPLACED,
                       timings_s={"worker_wall": time.perf_counter() - begun.started},
                       worker_pid=os.getpid())
    try:
        result = begun.result.write() if begun.writes_later else begun.result
        timings = {k: float(v) for k, v in dict(getattr(result, "timings_s", {}) or {}).items()}
        timings["worker_wall"] = time.perf_counter() - begun.started
        record = {**dict(result.record),
                  "ran_on": {"host": socket.gethostname(), "worker": begun.worker}}
        return Outcome(task.task_id, "done",
                       outputs={k: str(v) for k, v in result.outputs.items()},
                       record=plain(record), timings_s=timings,
                       worker_pid=os.getpid())
    except Exception as exc:  # noqa: BLE001 - the worker boundary: everything is recorded
        return _failed(task, exc, begun.started)


def execute_task(task: Task, correct: Callable[..., Any], gains: GainCache, *,
                 worker: str) -> Outcome:
    """Correct one task's movie in this process; every exception becomes a classified Outcome.

    The one worker function of the Dask workers (the local processes run its two halves,
    :func:`begin_task` and :func:`finish_task`, so that one movie's outputs are written while
    the next is corrected). The outcome's record (not the ``motion.json`` the runner wrote)
    gets ``ran_on = {"host": ..., "worker": worker}``.

    Parameters
    ----------
    task : Task
    correct : callable
        The runner (see :class:`WorkerPool`).
    gains : GainCache
        This worker's gain reference.
    worker : str
        Which worker this is (``"pid 1234"``, a Dask worker address), for ``ran_on``.
    """
    begun = begin_task(task, correct, gains, worker=worker)
    return begun if isinstance(begun, Outcome) else finish_task(begun)


def _write_in_background(begun: _Begun) -> Outcome:
    """:func:`finish_task` at a lower CPU priority (nice + ``_WRITER_NICENESS`` for this
    thread): the next movie's threads keep the cores, the writes and pictures fill the gaps
    they leave."""
    # Linux: a thread is a task of its own, with its own niceness (elsewhere: same priority)
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + _WRITER_NICENESS))
    return finish_task(begun)


def _send_to_parent(conn: Connection, lock: threading.Lock, message: Any) -> bool:
    """Send ``message`` to the daemon; False when it is gone (killed: this worker's outputs
    are on disk, adopted at the next start). Each worker's writer thread printed a
    ``BrokenPipeError`` traceback into the daemon's JSON log after a SIGKILL."""
    with lock:
        try:
            conn.send(message)
        except OSError:  # BrokenPipeError, ConnectionResetError: no one reads it any more
            return False
    return True


def _worker_main(conn: Connection, parent_pid: int, runner: str, gain_loader: str | None,
                 preload_gain: Any = None) -> None:
    die_with_parent(parent_pid)  # no orphan writing outputs after a killed daemon
    quiet_reader_logs()  # a failing read is reported through the result, not raw on stderr
    quiet_correction_warnings()  # each is in the record, logged from it as a JSON event

    correct = resolve_runner(runner)
    gains = GainCache(gain_loader)
    gains.preload(preload_gain)  # ready before the first movie arrives
    sending = threading.Lock()  # the writer thread sends outcomes too

    def send(message: Any) -> None:
        _send_to_parent(conn, sending, message)

    writer: threading.Thread | None = None  # writes one movie's outputs during the next
    held: contextlib.ExitStack | None = None  # the allocator setting, open while movies come
    try:
        while True:
            # movies in a row share one allocator setting (each reuses the memory the one
            # before freed: correction.allocator); after a pause the memory goes back
            if held is not None and not conn.poll(_HOLD_MEMORY_S):
                if writer is not None:
                    writer.join()
                held.close()
                held = None
            try:
                task = conn.recv()
            except EOFError:
                return
            if task is None:
                return
            if held is None:
                held = contextlib.ExitStack()
                held.enter_context(movie_memory_settings())
            send(("started", task.task_id))  # the parent's timeout clock starts now
            begun = begin_task(task, correct, gains, worker=f"pid {os.getpid()}")
            del task
            if isinstance(begun, Outcome) or not begun.writes_later:
                send(begun if isinstance(begun, Outcome) else finish_task(begun))
                continue
            if writer is not None:  # one set of outputs in memory at a time
                writer.join()
            # the parent may give the next movie now; this one's outcome follows its writes
            send(("writing", begun.task.task_id))
            writer = threading.Thread(target=lambda b=begun: send(_write_in_background(b)),
                                      name="motionwatch-writer")
            writer.start()
            del begun
    finally:
        if writer is not None:
            writer.join()
        if held is not None:
            held.close()


# ------------------------------------------------------------------------------------------
# parent side


@dataclass(slots=True)
class _Slot:
    process: Any  # None: the process could not even be started (see spawn_error)
    conn: Connection | None
    task: Task | None = None
    sent_s: float = 0.0  # when the task was sent
    started_s: float | None = None  # when the worker said it began (after its start-up)
    writing: Task | None = None  # corrected, its outputs being written while ``task`` runs
    writing_started_s: float = 0.0  # when the worker began the task now writing
    tasks_done: int = 0
    spawn_error: str | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def limit_s(self, timeout_s: float | None) -> float | None:
        """The running task's time limit: its own, else the pool's."""
        if self.task is not None and self.task.timeout_s is not None:
            return self.task.timeout_s
        return timeout_s

    def deadline(self, timeout_s: float | None, startup_s: float) -> float:
        """When the task (or the task being written) runs past its limit: the earlier."""
        nearest = float("inf")
        if self.writing is not None:
            limit = self.writing_limit_s(timeout_s)
            nearest = float("inf") if limit is None else self.writing_started_s + limit
        if self.task is None:
            return nearest
        limit = self.limit_s(timeout_s)
        if self.started_s is not None:
            own = float("inf") if limit is None else self.started_s + limit
        else:
            own = self.sent_s + startup_s + (0.0 if limit is None else limit)
        return min(nearest, own)

    def writing_limit_s(self, timeout_s: float | None) -> float | None:
        """The time limit of the task being written: its own, else the pool's."""
        if self.writing is not None and self.writing.timeout_s is not None:
            return self.writing.timeout_s
        return timeout_s

    def writing_overdue(self, timeout_s: float | None, now: float) -> bool:
        """The task being written has run past its limit (counted from when it began)."""
        limit = self.writing_limit_s(timeout_s)
        return self.writing is not None and limit is not None \
            and now > self.writing_started_s + limit

    def empty(self) -> bool:
        return self.task is None and self.writing is None


class WorkerPool:
    """A fixed number of worker processes, each given one task at a time.

    Parameters
    ----------
    n_workers : int
        Worker processes (>= 1).
    timeout_s : float or None
        A task running longer is killed and reported as ``timeout``. The clock starts when the
        worker begins the task, so a worker's own start-up (imports, gain) does not count.
    startup_s : float
        How long a worker may take to start (imports, gain loading) before its task times out.
    runner : str
        ``"module:function"`` called as ``runner(movie_path, out_dir, params, *,
        gain_reference, stem, extra_record)`` (and ``scratch_dir`` when the task has one),
        returning an object with ``outputs``, ``record`` and ``timings_s``
        (:func:`correction.pipeline.correct_movie`), or one whose ``write()`` writes the
        outputs and returns that (:func:`correction.pipeline.prepare_movie`, the default).
    gain_loader : str or None
        ``"module:function"`` turning ``GainParams`` into the reference passed to the runner.
    max_tasks_per_worker : int or None
        Replace a worker after this many tasks (bounds slow memory growth); None = never.
    preload_gain : GainParams or None
        Gain parameters each worker loads as soon as it starts (the configured ones).
    start_method : str
        ``"spawn"`` (default) or ``"forkserver"``.
    clock : callable
        Monotonic clock (s).
    """

    #: the workers read the movies on this machine (the engine may read ahead for them)
    reads_files_here = True
    abandon_stops_workers = True
    #: a task is submitted only to a free worker, which takes it at once
    starts_when_submitted = True

    def __init__(self, n_workers: int, *, timeout_s: float | None = None,
                 startup_s: float = 120.0, runner: str = DEFAULT_RUNNER,
                 gain_loader: str | None = "correction.gain:load_gain_reference",
                 max_tasks_per_worker: int | None = None, preload_gain: Any = None,
                 start_method: str = "spawn",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self._n = n_workers
        self._timeout_s = timeout_s
        self._startup_s = startup_s
        self._runner = runner
        self._gain_loader = gain_loader
        self._max_tasks = max_tasks_per_worker
        self._preload_gain = preload_gain
        self._ctx = multiprocessing.get_context(start_method)
        self._clock = clock
        self._slots: list[_Slot] = []
        self.replaced = 0

    # --- lifecycle ------------------------------------------------------------------------
    def _spawn(self) -> _Slot:
        """A new worker; a slot without a process when it cannot be started at all."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, name="motionwatch-worker", daemon=True,
                                    args=(child_conn, os.getpid(), self._runner, self._gain_loader,
                                          self._preload_gain))
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        except Exception as exc:  # noqa: BLE001 - interpreter gone, no processes left ...
            parent_conn.close()
            return _Slot(None, None, spawn_error=_one_line(exc))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child_conn.close()
        return _Slot(process, parent_conn)

    def start(self) -> None:
        """Start the worker processes."""
        while len(self._slots) < self._n:
            self._slots.append(self._spawn())

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _kill(self, slot: _Slot) -> None:
        try:
            if slot.process is not None:
                slot.process.kill()
                slot.process.join(timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            if slot.conn is not None:
                slot.conn.close()
        except OSError:
            pass

    def _replace(self, index: int) -> None:
        self._kill(self._slots[index])
        self._slots[index] = self._spawn()
        self.replaced += 1

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop every worker: one holding no movie is killed at once (it holds nothing, and one
        still starting would be waited for until its imports were done); one writing a movie's
        outputs is asked to exit once they are written; whatever remains after ``timeout_s`` is
        killed."""
        for slot in self._slots:
            if slot.empty():
                self._kill(slot)
            elif slot.task is None and slot.alive():
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout_s
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
            self._kill(slot)
        self._slots = []

    def abandon(self) -> list[Task]:
        """Kill workers that hold a task (immediate shutdown); return those tasks."""
        tasks = []
        for slot in self._slots:
            if not slot.empty():
                tasks += [t for t in (slot.writing, slot.task) if t is not None]
                slot.task = slot.writing = None
                self._kill(slot)
        self._slots = [s for s in self._slots if s.alive()]
        return tasks

    # --- work -----------------------------------------------------------------------------
    @property
    def idle(self) -> int:
        """Workers free for a task now (one that is writing a movie's outputs takes the next)."""
        return sum(1 for s in self._slots if self._takes_task(s))

    def _takes_task(self, slot: _Slot) -> bool:
        """Free for a task: none running, and a worker still writing one is alive and has not
        reached ``max_tasks_per_worker`` with it (it is replaced once that one is back)."""
        if slot.task is not None:
            return False
        if slot.writing is None:
            return True
        return slot.alive() and (self._max_tasks is None
                                 or slot.tasks_done + 1 < self._max_tasks)

    @property
    def in_flight(self) -> list[Task]:
        """Tasks given out and not yet come back (being corrected or their outputs written)."""
        return [t for s in self._slots for t in (s.writing, s.task) if t is not None]

    def alive(self) -> int:
        return sum(1 for s in self._slots if s.alive())

    def started(self) -> list[tuple[int, str | None]]:
        """None to report: a task starts when it is submitted (:attr:`starts_when_submitted`)."""
        return []

    def submit(self, task: Task) -> None:
        """Give a task to an idle worker (raises RuntimeError when none is idle).

        A worker that cannot start or dies on the way does not raise here: the task comes back
        from :meth:`wait` as an ``unstarted`` outcome.
        """
        for index, slot in enumerate(self._slots):
            if self._takes_task(slot):
                if not slot.alive():
                    self._replace(index)
                    slot = self._slots[index]
                if slot.conn is not None:
                    try:
                        slot.conn.send(task)
                    except OSError as exc:  # died during start-up: reported by collect()
                        slot.spawn_error = slot.spawn_error or _one_line(exc)
                slot.task = task
                slot.sent_s = self._clock()
                slot.started_s = None
                return
        raise RuntimeError("no idle worker")

    def wait(self, timeout_s: float, *, also: Iterable[Any] = ()) -> list[Outcome]:
        """Wait up to ``timeout_s`` for outcomes (or for one of ``also`` to be readable).

        Handles dead and timed-out workers: their tasks come back as ``crash`` / ``timeout``
        outcomes and the workers are replaced.
        """
        busy = [s for s in self._slots if not s.empty()]
        if busy:
            now = self._clock()
            nearest = min(s.deadline(self._timeout_s, self._startup_s) for s in busy) - now
            timeout_s = max(0.0, min(timeout_s, nearest))
        if any(s.process is None or not s.alive() for s in busy):
            timeout_s = 0.0
        waitables: list[Any] = list(also)
        for s in busy:
            if s.process is not None:
                waitables += [s.conn, s.process.sentinel]
        if waitables:
            mp_wait(waitables, timeout=timeout_s)
        elif timeout_s > 0:
            time.sleep(timeout_s)
        return self.collect()

    def collect(self) -> list[Outcome]:
        """Outcomes ready now, without blocking."""
        outcomes: list[Outcome] = []
        for index, slot in enumerate(list(self._slots)):
            if slot.empty():
                if not slot.alive():
                    self._replace(index)
                continue
            outcomes += self._messages(slot)
            if slot.empty():
                if self._max_tasks is not None and slot.tasks_done >= self._max_tasks:
                    self._retire(index)
                continue
            outcomes += self._failures(index, slot)
        return outcomes

    def _messages(self, slot: _Slot) -> list[Outcome]:
        """Read a worker's messages: ``started``, ``writing`` (the task corrected, its outputs
        being written: the worker takes the next), and outcomes."""
        outcomes: list[Outcome] = []
        try:
            while slot.conn is not None and slot.conn.poll():
                message = slot.conn.recv()
                if isinstance(message, tuple):
                    kind, task_id = message
                    if slot.task is None or slot.task.task_id != task_id:
                        continue
                    if kind == "started":
                        slot.started_s = self._clock()
                    elif kind == "writing":
                        slot.writing, slot.task = slot.task, None
                        slot.writing_started_s = slot.started_s or slot.sent_s
                        slot.started_s = None
                    continue
                if slot.writing is not None and message.task_id == slot.writing.task_id:
                    slot.writing = None
                elif slot.task is not None and message.task_id == slot.task.task_id:
                    slot.task = None
                    slot.started_s = None
                else:
                    continue
                slot.tasks_done += 1
                outcomes.append(message)
        except (EOFError, OSError):  # the worker is gone: _failures reports its tasks
            return outcomes
        return outcomes

    def _failures(self, index: int, slot: _Slot) -> list[Outcome]:
        """Outcomes of a worker that died or ran past a time limit (it is replaced). The
        task that caused it is blamed; the other one it held is ``interrupted``."""
        now = self._clock()
        task, writing = slot.task, slot.writing
        pid = getattr(slot.process, "pid", None)
        outcomes: list[Outcome] = []
        if not slot.alive():
            if slot.process is None:
                how = slot.spawn_error or "no process"
            else:
                code = slot.process.exitcode
                how = (f"killed by signal {signal.Signals(-code).name}"
                       if code is not None and code < 0 else f"exit status {code}")
            running = task is not None and slot.started_s is not None
            if writing is not None:  # died while writing: its own doing unless one ran
                outcomes.append(Outcome(writing.task_id, "interrupted" if running else "crash",
                                        error=f"worker process died while the outputs were "
                                              f"written ({how})", worker_pid=pid))
            if task is not None:
                if running:
                    outcomes.append(Outcome(task.task_id, "crash",
                                            error=f"worker process died ({how})",
                                            worker_pid=pid))
                elif writing is not None:
                    outcomes.append(Outcome(task.task_id, "interrupted", worker_pid=pid,
                                            error=f"worker process died before it began "
                                                  f"({how})"))
                else:
                    outcomes.append(Outcome(task.task_id, "unstarted", worker_pid=pid,
                                            error=f"worker process could not start ({how})"))
        elif now > slot.deadline(self._timeout_s, self._startup_s):
            if slot.writing_overdue(self._timeout_s, now):
                limit = slot.writing_limit_s(self._timeout_s)
                outcomes.append(Outcome(writing.task_id, "timeout", worker_pid=pid,
                                        error=f"timed out after {limit:g} s (writing its "
                                              f"outputs); worker killed"))
                if task is not None:
                    outcomes.append(Outcome(task.task_id, "interrupted", worker_pid=pid,
                                            error="worker killed: the movie before it timed "
                                                  "out writing its outputs"))
            else:
                limit = slot.limit_s(self._timeout_s)
                if slot.started_s is not None:
                    outcomes.append(Outcome(task.task_id, "timeout", worker_pid=pid,
                                            error=f"timed out after {limit:g} s; worker killed"))
                else:
                    outcomes.append(Outcome(
                        task.task_id, "unstarted", worker_pid=pid,
                        error=f"worker did not start within "
                              f"{self._startup_s + (limit or 0.0):g} s; killed"))
                if writing is not None:
                    outcomes.append(Outcome(writing.task_id, "interrupted", worker_pid=pid,
                                            error="worker killed: the movie after it timed out"))
        else:
            return outcomes
        slot.task = slot.writing = None
        self._replace(index)
        return outcomes

    def _retire(self, index: int) -> None:
        slot = self._slots[index]
        try:
            if slot.alive():
                slot.conn.send(None)
                slot.process.join(timeout=5)
        except OSError:
            pass
        self._kill(slot)
        self._slots[index] = self._spawn()
