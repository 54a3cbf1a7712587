"""Where movies are corrected: the executor interface, its options, and the factory.

The engine hands :class:`~daemon.work.workers.Task` objects to an :class:`Executor` and gets
:class:`~daemon.work.workers.Outcome` objects back; it never knows where a movie ran. Two
implementations: the local worker processes (:class:`~daemon.work.workers.WorkerPool`, the
default) and a Dask cluster (:class:`~daemon.work.dask_executor.DaskExecutor`, ``--executor dask``;
needs the optional extra ``motionwatch[dask]``).

Options (each with its flat TOML key, like every ``motionwatch watch`` option; the configuration
has no TOML tables, so the cluster settings are ``executor_*`` keys)::

    executor = "dask"
    scheduler = "tcp://scheduler.facility:8786"
    max_in_flight = 32
    path_map = ["/data/session=/cluster/data/session"]
    # or let the daemon start the cluster itself through dask-jobqueue:
    executor_cluster = "slurm"          # slurm, pbs, sge, lsf
    executor_cores = 8
    executor_memory = "32GB"
    executor_walltime = "04:00:00"
    executor_queue = "cryoem"
    executor_minimum_workers = 0
    executor_maximum_workers = 8
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol, runtime_checkable

from daemon.settings.config import ConfigError
from daemon.work.workers import DEFAULT_RUNNER, Outcome, Task, WorkerPool

__all__ = ["Executor", "ExecutorSettings", "JobQueueSettings", "add_executor_arguments",
           "executor_settings", "build_executor", "DASK_EXTRA_HINT", "JOBQUEUE_CLUSTERS"]

DASK_EXTRA_HINT = "install the optional extra: pip install -e '.[dask]' in the checkout"
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
                     "lsf": "LSFCluster"}


@runtime_checkable
class Executor(Protocol):
    """What the engine uses to run tasks (the methods of :class:`WorkerPool`)."""

    #: True when the workers read the movies on the daemon's machine (local processes): the
    #: engine then reads the next movie ahead into the page cache (:mod:`daemon.work.readahead`)
    reads_files_here: bool
    #: True when :meth:`abandon` stops the workers (local processes are killed): the engine
    #: then removes the temporaries they may have left; a Dask worker goes on, and may still
    #: finish its set (adopted at the next start)
    abandon_stops_workers: bool
    #: True when a submitted task starts at once (a local worker is free whenever ``idle``
    #: is); False when it may wait in the cluster's queue: the engine then logs its start
    #: when :meth:`started` reports it
    starts_when_submitted: bool

    def start(self) -> None:
        """Start (worker processes, or the connection to a cluster)."""

    def submit(self, task: Task) -> None:
        """Run ``task``; only called while :attr:`idle` > 0."""

    def wait(self, timeout_s: float, *, also: Iterable[Any] = ()) -> list[Outcome]:
        """Outcomes ready within ``timeout_s`` (s); returns early when one of ``also`` (file
        descriptors or objects with ``fileno()``) becomes readable."""

    @property
    def idle(self) -> int:
        """How many more tasks may be submitted now (0 while none can run)."""

    def started(self) -> list[tuple[int, str | None]]:
        """Tasks a worker began since the last call: ``(task id, worker name)``."""

    def alive(self) -> int:
        """Workers alive (local processes, or connected Dask workers)."""

    def abandon(self) -> list[Task]:
        """Immediate stop: drop the tasks in hand and return them."""

    def stop(self) -> None:
        """Stop; tasks in hand are finished or dropped."""


@dataclass(frozen=True, slots=True)
class JobQueueSettings:
    """A dask-jobqueue cluster the daemon starts (workers submitted as batch jobs).

    Attributes
    ----------
    kind : {"slurm", "pbs", "sge", "lsf"}
    cores : int
        Cores per job: as many single-threaded Dask worker processes (one movie each).
    memory : str
        Memory per job (``"32GB"``).
    walltime : str or None
        Job time limit (``"04:00:00"``).
    queue : str or None
        Queue / partition.
    minimum_workers, maximum_workers : int
        Adaptive scaling bounds (jobs).
    """

    kind: str
    cores: int
    memory: str
    walltime: str | None = None
    queue: str | None = None
    minimum_workers: int = 0
    maximum_workers: int = 1


#: movies a local worker process corrects before it is replaced by a fresh one (a new worker
#: costs its imports and the gain reference, ~1-3 s, once in this many movies)
DEFAULT_WORKER_MAX_MOVIES = 200


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    """The executor options of a :class:`~daemon.settings.config.Config`.

    Attributes
    ----------
    kind : {"local", "dask"}
    scheduler : str or None
        Dask scheduler address (``tcp://host:8786``); None with ``jobqueue``.
    max_in_flight : int or None
        Bound on tasks submitted at once; None: the cluster's worker threads (at least 1), or
        ``maximum_workers * cores`` with ``jobqueue``.
    path_map : tuple of (str, str)
        ``(daemon_prefix, worker_prefix)`` pairs: where the workers see the daemon's folders.
    jobqueue : JobQueueSettings or None
    worker_max_movies : int or None
        Movies a local worker process corrects before it is replaced; None: never (and for
        Dask, whose workers are its own).
    """

    kind: str = "local"
    scheduler: str | None = None
    max_in_flight: int | None = None
    path_map: tuple[tuple[str, str], ...] = ()
    jobqueue: JobQueueSettings | None = None
    worker_max_movies: int | None = None


def _path_pair(text: str) -> tuple[str, str]:
    source, sep, target = text.partition("=")
    if not sep or not source.startswith("/") or not target.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected FROM=TO with absolute paths, got {text!r}")
    return str(PurePosixPath(source)), str(PurePosixPath(target))


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the executor (``motionwatch watch``); TOML keys as for every option."""
    g = parser.add_argument_group("executor (where movies are corrected)")
    g.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="local worker processes (default) or a Dask cluster "
                        "(pip install -e '.[dask]' in the checkout)")
    g.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="Dask scheduler to connect to (needs --executor dask)")
    g.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="at most N movies submitted to the cluster at once (default: its "
                        "worker threads)")
    g.add_argument("--path-map", type=_path_pair, nargs="+", default=[], metavar="FROM=TO",
                   help="the cluster sees the daemon's folder FROM at TO (repeatable pairs)")
    g.add_argument("--worker-max-movies", type=int, default=DEFAULT_WORKER_MAX_MOVIES,
                   metavar="N",
                   help="replace a local worker process after it has corrected N movies, so "
                        "that slow memory growth (a library's caches, fragmentation) cannot "
                        "build up over a night; 0: never (default %(default)s)")
    g.add_argument("--executor-cluster", choices=tuple(JOBQUEUE_CLUSTERS), default=None,
                   help="start workers as batch jobs through dask-jobqueue (instead of "
                        "--scheduler; needs --executor dask)")
    g.add_argument("--executor-cores", type=int, default=None, metavar="N",
                   help="cores per batch job")
    g.add_argument("--executor-memory", default=None, metavar="SIZE",
                   help="memory per batch job (e.g. 32GB)")
    g.add_argument("--executor-walltime", default=None, metavar="HH:MM:SS",
                   help="batch job time limit")
    g.add_argument("--executor-queue", default=None, metavar="NAME",
                   help="batch queue / partition")
    g.add_argument("--executor-minimum-workers", type=int, default=0, metavar="N",
                   help="adaptive scaling: fewest batch jobs (default 0)")
    g.add_argument("--executor-maximum-workers", type=int, default=1, metavar="N",
                   help="adaptive scaling: most batch jobs (default 1)")


_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+$")
#: a batch job's memory: a number with its unit (dask's ``parse_bytes``: a bare number is
#: bytes, and dask-jobqueue's SLURM script then fails to format it)
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*[kmgtp]i?b?\s*$", re.IGNORECASE)
#: a batch job's time limit, ``[D-]HH:MM[:SS]``: a bare number is minutes to SLURM and seconds
#: to PBS
_WALLTIME = re.compile(r"^(\d+-)?\d+:\d{2}(:\d{2})?$")


#: options that only say where a Dask executor finds its workers
_DASK_ONLY = ("scheduler", "executor_cluster")


def _refuse_dask_options(options: Mapping[str, Any]) -> None:
    """A scheduler or cluster given with the local executor would be ignored: ConfigError."""
    given = [name for name in _DASK_ONLY if options.get(name) is not None]
    if given:
        raise ConfigError([f"{' and '.join(given)} given but executor is local: add "
                           f"executor = \"dask\" (--executor dask), or drop {' and '.join(given)}"])


def executor_settings(config: Any) -> ExecutorSettings:
    """The executor settings of ``config`` (``Config.options``), validated.

    Raises
    ------
    ConfigError
        With every problem: a scheduler or cluster given without ``executor = "dask"``, a Dask
        executor without a scheduler or cluster, a bad address,
        bounds out of range, Dask not installed (naming the extra to install).
    """
    options: Mapping[str, Any] = getattr(config, "options", {}) or {}
    kind = options.get("executor") or "local"
    if kind == "local":
        _refuse_dask_options(options)
        max_movies = options.get("worker_max_movies", DEFAULT_WORKER_MAX_MOVIES)
        if max_movies is None or max_movies < 0:
            raise ConfigError([f"worker_max_movies must be >= 0 (0: never replace a worker), "
                               f"got {max_movies}"])
        return ExecutorSettings(worker_max_movies=max_movies or None)
    problems: list[str] = []
    scheduler = options.get("scheduler")
    cluster = options.get("executor_cluster")
    max_in_flight = options.get("max_in_flight")
    jobqueue = None
    if scheduler is None and cluster is None:
        problems.append("executor = dask needs scheduler = tcp://HOST:8786 or executor_cluster")
    if scheduler is not None and cluster is not None:
        problems.append("give either scheduler or executor_cluster, not both")
    if scheduler is not None and not _ADDRESS.match(str(scheduler)):
        problems.append(f"scheduler {scheduler!r}: expected an address like tcp://HOST:8786")
    if max_in_flight is not None and max_in_flight < 1:
        problems.append(f"max_in_flight must be >= 1, got {max_in_flight}")
    if cluster is not None:
        cores, memory = options.get("executor_cores"), options.get("executor_memory")
        low = options.get("executor_minimum_workers", 0)
        high = options.get("executor_maximum_workers", 1)
        if cores is None or cores < 1:
            problems.append(f"executor_cores must be >= 1 with executor_cluster, got {cores}")
        walltime = options.get("executor_walltime")
        if not memory:
            problems.append("executor_memory is needed with executor_cluster (e.g. \"32GB\")")
        elif not _MEMORY.match(str(memory)):
            problems.append(f"executor_memory {memory!r}: expected a size with its unit, e.g. "
                            "\"64GB\" (a bare number is bytes)")
        if walltime is not None and not _WALLTIME.match(str(walltime).strip()):
            problems.append(f"executor_walltime {walltime!r}: expected [D-]HH:MM[:SS], e.g. "
                            "\"08:00:00\" (a bare number is minutes to SLURM, seconds to PBS)")
        if low < 0 or high < max(1, low):
            problems.append(f"executor workers: need 0 <= minimum <= maximum and maximum >= 1, "
                            f"got {low} and {high}")
        jobqueue = JobQueueSettings(cluster, cores or 1, str(memory or ""),
                                    None if walltime is None else str(walltime).strip(),
                                    options.get("executor_queue"), low, high)
    try:
        import distributed  # noqa: F401
        if cluster is not None:
            import dask_jobqueue  # noqa: F401
    except ImportError as exc:
        problems.append(f"executor = dask: {exc.name or 'dask'} is not installed; "
                        f"{DASK_EXTRA_HINT}")
    if problems:
        raise ConfigError(problems)
    pairs = tuple(tuple(p) for p in options.get("path_map") or ())
    return ExecutorSettings("dask", scheduler, max_in_flight, pairs, jobqueue)


def build_executor(config: Any, *, runner: str = DEFAULT_RUNNER) -> Executor:
    """The executor ``config`` asks for (not started).

    The local default is exactly the daemon's worker pool: ``config.workers`` processes, the
    movie timeout, the configured gain preloaded.

    Raises
    ------
    ConfigError
        See :func:`executor_settings`.
    """
    settings = executor_settings(config)
    if settings.kind == "local":
        return WorkerPool(config.workers, timeout_s=config.movie_timeout_s, runner=runner,
                          preload_gain=config.params.gain,
                          max_tasks_per_worker=settings.worker_max_movies)
    from daemon.work.dask_executor import DaskExecutor

    return DaskExecutor(settings, timeout_s=config.movie_timeout_s, runner=runner,
                        preload_gain=config.params.gain)
