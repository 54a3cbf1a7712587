"""Correcting movies on a Dask cluster, the daemon still in charge (``--executor dask``).

Each :class:`~daemon.work.workers.Task` becomes one Dask future running
:func:`~daemon.work.workers.execute_task` (the local workers' own function) on a Dask worker,
which reads the movie and writes the outputs atomically on the shared file system (paths mapped
by ``path_map`` when the cluster mounts the session elsewhere). The daemon keeps the policy:

- back-pressure: never more than ``max_in_flight`` futures (default: the cluster's worker
  threads), submitted in the order the ledger gives (earlier tilts first) with falling priority;
- Dask does not retry (``retries=0``): a task whose worker died comes back as a ``crash``
  outcome and the daemon's retry policy decides. (The scheduler reruns a task whose worker
  died unless its ``distributed.scheduler.allowed-failures`` is 0; either way the outputs are
  written once, atomically.);
- a task running longer than the movie timeout (clocked from the moment a worker starts it) is
  cancelled, its worker restarted, and a ``timeout`` outcome returned;
- while the scheduler is unreachable nothing is dispatched (:attr:`DaskExecutor.idle` is 0) and
  the tasks in hand come back as ``environment`` outcomes (not the movie's fault: they wait and
  are retried); a background thread reconnects and dispatch resumes.

Future callbacks run on the Dask client's thread; they only queue and write a byte to a pipe
that :meth:`DaskExecutor.wait` selects on, beside the engine's own wake-up descriptors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any

from distributed import Client, KilledWorker, WorkerPlugin, get_worker

from correction.write import write_json_atomic
from daemon.system.logs import capture_library_logs, quiet_reader_logs
from daemon.work.workers import DEFAULT_RUNNER, GainCache, Outcome, Task, execute_task, resolve_runner

__all__ = ["DaskExecutor", "run_on_dask_worker", "map_path", "PLUGIN_NAME", "STARTED_TOPIC"]

PLUGIN_NAME = "motionwatch-worker"
STARTED_TOPIC = "motionwatch-task-started"


def map_path(path: str, pairs: Iterable[tuple[str, str]]) -> str:
    """``path`` with the first matching ``(from_prefix, to_prefix)`` replaced (whole components)."""
    for source, target in pairs:
        if path == source or path.startswith(source.rstrip("/") + "/"):
            return target.rstrip("/") + path[len(source.rstrip("/")):]
    return path


def _remap(value: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
    """``value`` with every path inside (dataclass fields, tuples) mapped by ``pairs``."""
    if not pairs:
        return value
    if isinstance(value, PurePath):
        return type(value)(map_path(str(value), pairs))
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_remap(v, pairs) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if f.init:
                old = getattr(value, f.name)
                new = _remap(old, pairs)
                if new is not old:
                    changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value


def _remap_strings(value: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
    """``value`` (a JSON-like record) with every string that is a path under a prefix of
    ``pairs`` mapped (:func:`map_path`)."""
    if isinstance(value, str):
        return map_path(value, pairs) if value.startswith("/") else value
    if isinstance(value, dict):
        return {k: _remap_strings(v, pairs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_remap_strings(v, pairs) for v in value)
    return value


#: a connected scheduler without a worker while movies wait is said to be a problem after (s)
NO_WORKERS_SAID_AFTER_S = 60.0


class _WorkerState(WorkerPlugin):
    """Per-Dask-worker state: the runner and the gain reference, loaded once per worker."""

    def __init__(self, runner: str, gain_loader: str | None, preload_gain: Any) -> None:
        self.runner, self.gain_loader, self.preload_gain = runner, gain_loader, preload_gain
        self.correct: Callable[..., Any] | None = None
        self.gains: GainCache | None = None

    def setup(self, worker: Any) -> None:
        quiet_reader_logs()
        self.correct = resolve_runner(self.runner)
        self.gains = GainCache(self.gain_loader)
        self.gains.preload(self.preload_gain)


def run_on_dask_worker(task: Task, runner: str, gain_loader: str | None) -> Outcome:
    """The Dask task: say where it starts, then :func:`execute_task` (never raises)."""
    worker = get_worker()
    worker.log_event(STARTED_TOPIC, {"task_id": task.task_id, "worker": worker.address,
                                     "host": socket.gethostname()})
    state = worker.plugins.get(PLUGIN_NAME)
    if getattr(state, "gains", None) is None:  # plugin not (yet) set up on this worker
        state = _WorkerState(runner, gain_loader, None)
        state.setup(worker)
    return execute_task(task, state.correct, state.gains, worker=worker.address)


@dataclasses.dataclass(slots=True)
class _Running:
    task: Task
    future: Any
    started_s: float | None = None
    worker: str | None = None


class DaskExecutor:
    """Tasks run as futures on a Dask scheduler's workers (see the module docstring).

    Parameters
    ----------
    settings : ExecutorSettings
        ``scheduler`` (or ``jobqueue``), ``max_in_flight``, ``path_map``
        (:class:`daemon.work.executor.ExecutorSettings`).
    timeout_s : float or None
        Time limit of a task once a worker started it (s); a task's own ``timeout_s`` wins.
    runner, gain_loader, preload_gain
        As for :class:`~daemon.work.workers.WorkerPool`.
    connect_timeout_s, reconnect_s : float
        Time allowed for one connection attempt; pause between attempts (s).
    clock : callable
        Monotonic clock (s).
    """

    #: the movies are read on the cluster's machines, not here
    reads_files_here = False
    abandon_stops_workers = False
    #: a task waits in the scheduler's queue until a worker thread is free for it
    starts_when_submitted = False

    def __init__(self, settings: Any, *, timeout_s: float | None = None,
                 runner: str = DEFAULT_RUNNER,
                 gain_loader: str | None = "correction.gain:load_gain_reference",
                 preload_gain: Any = None, connect_timeout_s: float = 5.0,
                 reconnect_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._runner = runner
        self._gain_loader = gain_loader
        self._preload_gain = preload_gain
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_s = reconnect_s
        self._clock = clock
        self._lock = threading.Lock()
        self._client: Any = None
        self._cluster: Any = None
        self._address = settings.scheduler
        self._running: dict[int, _Running] = {}
        self._done: deque[int] = deque()
        self._started: deque[dict[str, Any]] = deque()
        self._began: list[tuple[int, str | None]] = []  # first starts not yet reported
        self._refused: list[Outcome] = []
        self._threads = 0
        self._workers = 0
        self._last_count_s = float("-inf")
        self._no_workers_since: float | None = None  # when a count last found none (clock)
        self._counting = False  # a worker count is being fetched (off the engine's thread)
        self._stop = threading.Event()
        self._connector: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self.last_error: str | None = None
        self.worker_setup_error: str | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the jobqueue cluster (if configured) and the connecting thread."""
        capture_library_logs("distributed")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if self._settings.jobqueue is not None:
            self._cluster = _start_jobqueue(self._settings.jobqueue)
            self._address = self._cluster.scheduler_address
        self._connector = threading.Thread(target=self._connect_loop, daemon=True,
                                           name="motionwatch-dask-connect")
        self._connector.start()

    def _connect_loop(self) -> None:
        while not self._stop.is_set():
            if self._client is None:
                client = None
                try:
                    client = Client(self._address, timeout=self._connect_timeout_s,
                                    set_as_default=False)
                    self._register_worker_state(client)
                    client.subscribe_topic(STARTED_TOPIC, self._on_started)
                    self._threads = sum(client.nthreads(callback_timeout=5).values())
                except Exception as exc:  # noqa: BLE001 - unreachable: try again later
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if client is not None:  # one per attempt was left open on the scheduler
                        _close_quietly(client)
                else:
                    with self._lock:
                        self._client, self.last_error = client, None
                        self._last_count_s = float("-inf")
                    self._wake()
            self._stop.wait(self._reconnect_s)

    def _register_worker_state(self, client: Any) -> None:
        """Set each worker up (runner, gain) ahead of its first task. A worker that cannot
        (another motionwatch there) fails the registration: the cluster is used all the same,
        each task sets its worker up itself, and one that cannot comes back as environment
        trouble (the scheduler was said unreachable, and nothing was corrected)."""
        try:
            client.register_plugin(_WorkerState(self._runner, self._gain_loader,
                                                self._preload_gain), name=PLUGIN_NAME)
        except Exception as exc:  # noqa: BLE001 - any worker's setup error
            self.worker_setup_error = f"{type(exc).__name__}: {exc}"
        else:
            self.worker_setup_error = None

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Cancel what is left, disconnect, stop the jobqueue cluster."""
        self._stop.set()
        for running in self._running.values():
            _cancel(running.future)
        self._running.clear()
        if self._connector is not None:
            self._connector.join(timeout=self._connect_timeout_s + 1)
        with self._lock:
            client, self._client = self._client, None
        for thing in (client, self._cluster):
            if thing is not None:
                try:
                    thing.close(timeout=timeout_s)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self._cluster = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> DaskExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def abandon(self) -> list[Task]:
        """Cancel every task in hand and return them (immediate shutdown)."""
        tasks = [r.task for r in self._running.values()]
        for running in self._running.values():
            _cancel(running.future)
        self._running.clear()
        return tasks

    def withdraw_unstarted(self) -> list[Task]:
        """Cancel the tasks no worker has started yet and return them (the daemon stops: it
        finishes the movies in hand only; with 64 in flight, or no worker at all, a stop
        waited for every queued movie, past systemd's stop timeout). A task whose start is
        on its way is cancelled too: its worker may still finish it (adopted at the next
        start)."""
        self.collect_starts()
        withdrawn = [tid for tid, r in self._running.items() if r.started_s is None]
        tasks = []
        for task_id in withdrawn:
            running = self._running.pop(task_id)
            _cancel(running.future)
            tasks.append(running.task)
        return tasks

    # --- state ----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.status == "running"

    def problem(self) -> str | None:
        """A health problem line while the scheduler is not connected and a connection attempt
        failed (from start-up too: a mistyped address or a scheduler not started would
        otherwise leave the daemon idle and looking well; an attempt still going on, on a cold
        cluster whose workers load the gain, is not one); while connected, a scheduler that
        has had no worker for :data:`NO_WORKERS_SAID_AFTER_S` while movies wait; else None."""
        if self.connected:
            since = self._no_workers_since
            waiting = len(self._running)
            if since is None or not waiting or self._clock() - since < NO_WORKERS_SAID_AFTER_S:
                return None
            return (f"no Dask worker has joined scheduler {self._address} for "
                    f"{self._clock() - since:.0f} s: {waiting} movie(s) wait (workers not "
                    "started, or their batch jobs still queued)")
        if self.last_error is None:
            return None
        return (f"Dask scheduler {self._address} unreachable ({self.last_error}): nothing is "
                "corrected until it answers")

    @property
    def max_in_flight(self) -> int:
        """The current bound on tasks in flight."""
        if self._settings.max_in_flight is not None:
            return self._settings.max_in_flight
        jobs = self._settings.jobqueue
        if jobs is not None:
            return max(1, jobs.maximum_workers * jobs.cores)
        return max(1, self._threads)

    @property
    def idle(self) -> int:
        """Tasks that may be submitted now: 0 while the scheduler is unreachable."""
        if not self.connected:
            return 0
        return max(0, self.max_in_flight - len(self._running))

    @property
    def in_flight(self) -> list[Task]:
        return [r.task for r in self._running.values()]

    def alive(self) -> int:
        """Dask workers connected to the scheduler (0 while disconnected)."""
        return self._workers if self.connected else 0

    def cluster_state(self) -> dict[str, Any]:
        """For status and the feed: scheduler, connection, workers, threads, tasks in flight
        and where each started task runs (task id -> worker address)."""
        return {"executor": "dask", "scheduler": self._address, "connected": self.connected,
                "workers": self.alive(), "threads": self._threads if self.connected else 0,
                "in_flight": len(self._running), "max_in_flight": self.max_in_flight,
                "running_on": {tid: r.worker for tid, r in self._running.items()
                               if r.worker is not None},
                "last_error": self.last_error, "worker_setup_error": self.worker_setup_error}

    # --- callbacks (client thread) --------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # pipe full (already woken) or closed
            pass

    def _on_done(self, task_id: int) -> Callable[[Any], None]:
        def done(_future: Any) -> None:
            self._done.append(task_id)
            self._wake()
        return done

    def _on_started(self, event: Any) -> None:
        _stamp, message = event
        self._started.append(dict(message))
        self._wake()

    # --- work -----------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        """Submit ``task``; raises RuntimeError when ``max_in_flight`` tasks are in flight.

        A connection lost on the way does not raise: the task comes back from :meth:`wait` as
        an ``environment`` outcome.
        """
        if self.connected and len(self._running) >= self.max_in_flight:
            raise RuntimeError("no capacity: max_in_flight tasks are in flight")
        if self._settings.path_map:  # its images' labels name it as the daemon does
            task = dataclasses.replace(task, movie_named_as=str(task.movie_path))
        remote = _remap(task, self._settings.path_map)
        try:
            future = self._client.submit(
                run_on_dask_worker, remote, self._runner, self._gain_loader,
                key=f"motionwatch-{task.task_id}-{uuid.uuid4().hex[:8]}", pure=False,
                retries=0, priority=-task.task_id)
        except Exception as exc:  # noqa: BLE001 - the client closed or the connection broke
            self._refused.append(Outcome(task.task_id, "environment", error=(
                f"Dask scheduler {self._address} unreachable ({type(exc).__name__}); the "
                f"movie waits")))
            self._wake()
            return
        self._running[task.task_id] = _Running(task, future)
        future.add_done_callback(self._on_done(task.task_id))

    def wait(self, timeout_s: float, *, also: Iterable[Any] = ()) -> list[Outcome]:
        """Wait up to ``timeout_s`` (s) for outcomes or for one of ``also`` to be readable."""
        now = self._clock()
        deadlines = [d for d in (self._deadline(r) for r in self._running.values()) if d]
        if deadlines:
            timeout_s = min(timeout_s, max(0.0, min(deadlines) - now))
        if self._running and not self.connected:
            timeout_s = 0.0
        waitables = [self._wake_r, *also]
        select.select(waitables, [], [], max(0.0, timeout_s))
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        return self.collect()

    def _deadline(self, running: _Running) -> float | None:
        limit = running.task.timeout_s if running.task.timeout_s is not None else self._timeout_s
        if running.started_s is None or limit is None:
            return None  # a task not started yet waits for a worker (queue, adaptive scaling)
        return running.started_s + limit

    def collect(self) -> list[Outcome]:
        """Outcomes ready now, without waiting on the cluster."""
        outcomes, self._refused = self._refused, []
        if self._client is not None and not self.connected:
            outcomes += self._lost()
        self.collect_starts()
        while self._done:
            running = self._running.pop(self._done.popleft(), None)
            if running is not None:
                outcomes.append(self._outcome(running))
        now = self._clock()
        for task_id, running in list(self._running.items()):
            deadline = self._deadline(running)
            if deadline is not None and now > deadline:
                del self._running[task_id]
                _cancel(running.future)
                self._restart_worker(running.worker)
                limit = deadline - running.started_s
                outcomes.append(Outcome(task_id, "timeout", error=(
                    f"timed out after {limit:g} s on Dask worker {running.worker}; cancelled and "
                    f"the worker restarted")))
        if self.connected and now - self._last_count_s > 2.0 and not self._counting:
            # off the engine's thread: a scheduler that does not answer (frozen, a network
            # hiccup) must not stall discovery and the heartbeats for its timeout
            self._last_count_s, self._counting = now, True
            threading.Thread(target=self._count_workers, name="dask-count", daemon=True).start()
        return outcomes

    def collect_starts(self) -> None:
        """Note the starts the workers announced (the time limit counts from each)."""
        while self._started:
            message = self._started.popleft()
            running = self._running.get(message.get("task_id"))
            # started again on another worker (the scheduler re-ran it after its worker died,
            # with Dask's allowed-failures above 0): its time limit and worker are the new one's
            if running is not None and (running.started_s is None
                                        or message.get("worker") != running.worker):
                if running.started_s is None:
                    self._began.append((running.task.task_id, message.get("worker")))
                running.started_s, running.worker = self._clock(), message.get("worker")

    def started(self) -> list[tuple[int, str | None]]:
        """Tasks a worker began since the last call (their first start): ``(task id, worker
        address)``."""
        self.collect_starts()
        began, self._began = self._began, []
        return began

    def _outcome(self, running: _Running) -> Outcome:
        task, future = running.task, running.future
        where = running.worker or "a Dask worker"
        if future.status == "finished":
            try:
                outcome = future.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - the result was lost with its worker
                return Outcome(task.task_id, "crash", error=f"result lost on {where}: {exc}")
            if not outcome.ok and outcome.error and running.worker:
                # which node it was: a gain one node's mount lacks was said with no name
                outcome = dataclasses.replace(outcome, error=f"{outcome.error} (on Dask worker "
                                                             f"{running.worker})")
            return self._in_daemon_paths(outcome)
        if future.status == "cancelled":
            return Outcome(task.task_id, "environment",
                           error="Dask scheduler connection lost; the movie waits for it")
        exc = future.exception(timeout=5)
        if isinstance(exc, KilledWorker):
            return Outcome(task.task_id, "crash", error=f"Dask worker died ({where}): {exc}")
        # the task function itself raised: execute_task never does, so the worker could not
        # run it (another motionwatch there: a runner or a field it lacks): not the movie's
        # fault (each such movie was quarantined within seconds); it waits for a worker that can
        return Outcome(task.task_id, "environment", error=(
            f"{where} could not run motionwatch's task ({type(exc).__name__}: {exc}; another "
            "motionwatch version on that worker?); the movie waits"))

    def _in_daemon_paths(self, outcome: Outcome) -> Outcome:
        """A worker's outcome with the paths it names (outputs, and the motion record's
        movie, references ...) as the daemon sees them, ``path_map`` undone; the record on
        disk rewritten so (the per-movie and series STAR files, Warp's XML and a restart's
        catch-up read it, and named the workers' paths)."""
        pairs = tuple((b, a) for a, b in self._settings.path_map)
        if not pairs:
            return outcome
        outputs = {k: map_path(v, pairs) for k, v in outcome.outputs.items()}
        record = _remap_strings(outcome.record, pairs)
        if record != outcome.record and outputs.get("motion"):
            # unwritable here: left as the worker wrote it; the daemon's files use ``record``
            with contextlib.suppress(OSError):
                write_json_atomic(outputs["motion"], record)
        return dataclasses.replace(outcome, outputs=outputs, record=record)

    def _lost(self) -> list[Outcome]:
        """The scheduler went away: tasks in hand come back as environment trouble."""
        with self._lock:
            client, self._client = self._client, None
        self._no_workers_since = None  # said as the lost connection now
        self.last_error = f"lost the connection to the Dask scheduler {self._address}"
        threading.Thread(target=_close_quietly, args=(client,), daemon=True).start()
        outcomes = [Outcome(tid, "environment",
                            error=f"Dask scheduler {self._address} unreachable; the movie "
                                  f"waits and is redone when it is back")
                    for tid in self._running]
        self._running.clear()
        self._done.clear()
        self._started.clear()
        return outcomes

    def _count_workers(self) -> None:
        """Workers and threads the scheduler knows (a thread of its own, see :meth:`collect`)."""
        try:
            client = self._client
            if client is None:
                return
            threads = client.nthreads(callback_timeout=5)
            self._workers, self._threads = len(threads), sum(threads.values())
            if threads:
                self._no_workers_since = None
            elif self._no_workers_since is None:
                self._no_workers_since = self._clock()
        except Exception:  # noqa: BLE001 - noticed as a lost connection next time
            return
        finally:
            self._counting = False

    def _restart_worker(self, worker: str | None) -> None:
        client = self._client
        if worker is None or client is None:
            return

        def restart() -> None:
            try:
                client.restart_workers([worker], timeout=30, raise_for_error=False)
            except Exception:  # noqa: BLE001 - no nanny, or gone already
                pass
        threading.Thread(target=restart, daemon=True).start()


def _cancel(future: Any) -> None:
    try:
        future.cancel()
    except Exception:  # noqa: BLE001 - its client is gone: nothing left to cancel
        pass


def _close_quietly(client: Any) -> None:
    try:
        client.close(timeout=2)
    except Exception:  # noqa: BLE001
        pass


def _start_jobqueue(jobs: Any) -> Any:
    """A dask-jobqueue cluster scaling adaptively between the configured bounds."""
    import dask_jobqueue

    cls = getattr(dask_jobqueue, f"{jobs.kind.upper()}Cluster")  # SLURMCluster, PBSCluster ...
    # one single-threaded worker process per core: one movie per process, as locally
    kwargs: dict[str, Any] = {"cores": jobs.cores, "processes": jobs.cores, "memory": jobs.memory}
    if jobs.walltime:
        kwargs["walltime"] = jobs.walltime
    if jobs.queue:
        kwargs["queue"] = jobs.queue
    cluster = cls(**kwargs)
    cluster.adapt(minimum=jobs.minimum_workers, maximum=jobs.maximum_workers)
    return cluster
