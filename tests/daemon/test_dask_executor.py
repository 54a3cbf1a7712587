"""Correction on a Dask cluster: real schedulers and worker processes on loopback.

The same simulated session through the local workers and through a two-worker Dask cluster
gives bit-identical images; a Dask worker killed with SIGKILL mid-movie, and a scheduler that goes
away and comes back, still leave every movie with exactly one set of outputs, the daemon's own
retry policy deciding. Stand-in runners (written to a module the workers import through
PYTHONPATH) make the kill and the outage land while a movie is in hand.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

from correction.params import CorrectionParams, DoseParams  # noqa: E402
from daemon.engine.service import Service  # noqa: E402
from daemon.settings.config import Config, ConfigError  # noqa: E402
from daemon.simulation.movies import simulate_session, write_movie_progressively  # noqa: E402
from daemon.state.ledger import Ledger  # noqa: E402
from daemon.work.dask_executor import DaskExecutor, map_path  # noqa: E402
from daemon.work.executor import (DEFAULT_WORKER_MAX_MOVIES, ExecutorSettings,  # noqa: E402
                                  add_executor_arguments, build_executor,
                                  executor_settings)
from daemon.work.workers import Task, WorkerPool  # noqa: E402

PARAMS = CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0))
IMAGES = (".mrc", "_DW.mrc", "_EVN.mrc", "_ODD.mrc")



@pytest.fixture
def fake_runners(tmp_path, monkeypatch):
    helpers = str(Path(__file__).resolve().parents[1] / "helpers")  # tests/helpers/fake_runners.py
    path = os.pathsep.join(p for p in (helpers, os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)  # the Dask worker processes import it too
    return "fake_runners:correct"


def local_cluster(n_workers=2):
    return distributed.LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                                    dashboard_address=None, protocol="tcp")


def run_all(executor, tasks, timeout_s=60.0):
    pending, outcomes = list(tasks), {}
    deadline = time.monotonic() + timeout_s
    while (pending or executor.in_flight) and time.monotonic() < deadline:
        while pending and executor.idle > 0:
            executor.submit(pending.pop(0))
        for outcome in executor.wait(0.5):
            outcomes[outcome.task_id] = outcome
    return outcomes


def service_config(watch: Path, out: Path, **options) -> Config:
    return Config(watch, out, out, PARAMS, settle_time_s=0.1, scan_interval_s=0.05,
                  incomplete_grace_s=2.0, max_attempts=3, retry_delay_s=0.0, heartbeat_s=0.2,
                  exit_when_idle_s=1.0, polling="on", movie_timeout_s=60.0,
                  options={"executor": "dask", **options})


def run_service(service: Service, limit_s: float = 90.0) -> int:
    """Run until idle; a stop after ``limit_s`` turns a hang into a failed assertion."""
    guard = threading.Timer(limit_s, service.request_stop, args=("test guard",))
    guard.start()
    try:
        return service.run()
    finally:
        guard.cancel()


def write_movies(folder: Path, names) -> list[Path]:
    paths = []
    for name in names:
        frames = np.random.default_rng(len(name)).poisson(1.0, (4, 32, 32)).astype(np.int16)
        write_movie_progressively(folder / name, frames, pixel_size_A=1.1, frame_interval_s=0)
        paths.append(folder / name)
    return paths


def assert_one_output_set_each(out: Path, movies) -> None:
    for movie in movies:
        assert json.loads((out / f"{movie.stem}.motion.json").read_text())["movie"]
        assert (out / f"{movie.stem}.mrc").is_file()
    assert not list(out.glob(".*.tmp"))
    finals = sorted(p.name for p in out.iterdir() if p.suffix in (".mrc", ".json"))
    assert finals == sorted(f"{m.stem}{s}" for m in movies for s in (".mrc", ".motion.json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------


def test_a_session_corrected_through_two_dask_workers_gives_bit_identical_images_to_local_workers(
        tmp_path):
    session = tmp_path / "session"
    movies = simulate_session(session, n_movies=3, rng=np.random.default_rng(3),
                              shape_yx=(128, 128), n_frames=4, frame_interval_s=0.0,
                              movie_interval_s=0.0, rename_indices=())
    mount = tmp_path / "cluster-mount"  # the cluster sees the session under another path
    mount.symlink_to(session, target_is_directory=True)

    def tasks(out: Path):
        out.mkdir()  # the output root is the daemon's to make (a worker never makes it)
        return [Task(i, m.path, out, out, PARAMS, m.path.stem, {"index": i})
                for i, m in enumerate(movies)]

    with WorkerPool(1) as pool:
        local = run_all(pool, tasks(session / "local"))
    with local_cluster() as cluster:
        settings = ExecutorSettings("dask", cluster.scheduler_address, 2,
                                    ((str(session), str(mount)),))
        with DaskExecutor(settings, timeout_s=60) as executor:
            remote = run_all(executor, tasks(session / "dask"))
            workers = set(cluster.scheduler_info["workers"])

    assert {o.kind for o in local.values()} == {"done"} == {o.kind for o in remote.values()}
    for i, movie in enumerate(movies):
        # outputs reported in the daemon's paths, written by a cluster worker through the mount
        assert remote[i].outputs["sum"] == str(session / "dask" / f"{movie.path.stem}.mrc")
        # and the record names the movie as the daemon sees it, in hand and on disk (the
        # STAR files and Warp's XML made from it named the workers' mount)
        assert remote[i].record["movie"] == str(movie.path)
        on_disk = json.loads((session / "dask" / f"{movie.path.stem}.motion.json").read_text())
        assert on_disk["movie"] == str(movie.path) and str(mount) not in json.dumps(on_disk)
        assert remote[i].record["ran_on"]["worker"] in workers
        assert local[i].record["ran_on"]["worker"].startswith("pid ")
        for suffix in IMAGES:
            with mrcfile.open(session / "local" / f"{movie.path.stem}{suffix}") as a, \
                    mrcfile.open(session / "dask" / f"{movie.path.stem}{suffix}") as b:
                assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data), suffix


def test_a_dask_worker_killed_mid_movie_is_retried_by_the_daemon_and_every_movie_has_one_output_set(
        tmp_path, fake_runners):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    movies = write_movies(watch, ["a.mrc", "victim.mrc", "b.mrc", "c.mrc"])
    killed = []

    def killer():
        started = out / "victim.started"
        deadline = time.monotonic() + 45
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        pid = int(started.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    # the scheduler must not rerun the task itself: the daemon's policy decides
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), local_cluster() as cluster:
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        status = run_service(Service(service_config(watch, out,
                                                    scheduler=cluster.scheduler_address),
                                     runner=fake_runners))
        thread.join(timeout=5)

    assert status == 0 and killed
    rows = {Path(r.key.path).name: r for r in _rows(out)}
    assert {r.status for r in rows.values()} == {"done"}
    assert rows["victim.mrc"].attempts == 2  # crash outcome, retried once by the daemon
    assert_one_output_set_each(out, movies)


def test_the_daemon_waits_while_the_scheduler_is_gone_and_resumes_when_it_returns(
        tmp_path, fake_runners):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    movies = write_movies(watch, ["slow_a.mrc", "slow_b.mrc", "slow_c.mrc"])
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    logs = tmp_path / "dask.log"

    def scheduler():
        return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                 "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                                stdout=subprocess.DEVNULL, stderr=logs.open("ab"))

    def worker():  # the facility's supervisor (systemd, a batch job) restarts workers
        return subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--no-dashboard", "--death-timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=logs.open("ab"))

    processes = [scheduler(), worker()]
    outage = {}

    def break_and_restore():
        started = out / "slow_a.started"
        deadline = time.monotonic() + 45
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        processes[0].kill()  # the scheduler goes away while a movie is in hand
        processes[0].wait()
        outage["started_while_gone"] = _started_names(out)
        time.sleep(3.0)
        outage["started_before_return"] = _started_names(out)
        processes.extend([scheduler(), worker()])

    try:
        thread = threading.Thread(target=break_and_restore, daemon=True)
        thread.start()
        service = Service(service_config(watch, out, scheduler=address, max_in_flight=1),
                          runner=fake_runners)
        status = run_service(service)
        thread.join(timeout=5)
    finally:
        for process in processes:
            process.kill()
            process.wait()

    assert status == 0
    # nothing new was dispatched while the scheduler was gone
    assert outage["started_before_return"] == outage["started_while_gone"] == {"slow_a.started"}
    rows = {Path(r.key.path).name: r for r in _rows(out)}
    assert {r.status for r in rows.values()} == {"done"}
    assert rows["slow_a.mrc"].attempts == 2 and rows["slow_a.mrc"].failures == 0  # not its fault
    assert_one_output_set_each(out, movies)


def test_a_scheduler_that_never_answers_makes_the_daemon_say_so_not_look_well(tmp_path,
                                                                             monkeypatch):
    """A mistyped scheduler address, or a scheduler not started yet: nothing can be corrected.
    The service lists it as a problem (heartbeat, status, systemd STATUS) and logs it once;
    before, it sat idle all night with nothing in its log and status said healthy. Like a
    scheduler lost mid-run, it is trouble outside the daemon: the watchdog keeps pinging."""
    from recording_log import RecordingLog

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    write_movies(watch, ["a.mrc"])
    import daemon.work.dask_executor as module

    class QuickToGiveUp(DaskExecutor):  # one connection attempt of 0.3 s, then 0.2 s apart
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "connect_timeout_s": 0.3, "reconnect_s": 0.2})

    monkeypatch.setattr(module, "DaskExecutor", QuickToGiveUp)
    log = RecordingLog()
    service = Service(service_config(watch, out, scheduler=f"tcp://127.0.0.1:{free_port()}"),
                      logger=log)
    guard = threading.Thread(target=run_service, args=(service, 6.0), daemon=True)
    guard.start()
    deadline = time.monotonic() + 5.0
    while not log.named("cluster_unreachable") and time.monotonic() < deadline:
        time.sleep(0.1)
    health = service.health()
    service.request_stop("test")
    guard.join(timeout=10)
    said = log.named("cluster_unreachable")
    assert len(said) == 1 and "unreachable" in said[0]["reason"]
    assert health.ok and any("Dask scheduler" in p and "unreachable" in p
                             for p in health.problems)
    # its start names the scheduler, not --workers (1 by default: not the cluster's workers)
    (ready,) = log.named("service_ready")
    assert ready["executor"] == "dask" and ready["scheduler"].startswith("tcp://127.0.0.1:")
    assert "workers" not in ready


def _rows(out: Path):
    ledger = Ledger(out / "motionwatch.sqlite")
    try:
        return ledger.rows()
    finally:
        ledger.close()


def _started_names(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.started")}


# --- configuration ------------------------------------------------------------------------


def parse(*argv: str) -> Config:
    parser = argparse.ArgumentParser()
    add_executor_arguments(parser)
    args = parser.parse_args(list(argv))
    return Config(Path("/w"), Path("/o"), Path("/o"), PARAMS, options=vars(args))


def test_the_local_executor_is_the_default_worker_pool():
    executor = build_executor(parse(), runner="correction.pipeline:correct_movie")
    assert isinstance(executor, WorkerPool)



@pytest.mark.parametrize(("argv", "keys"), [
    (["--scheduler", "tcp://h:8786"], "scheduler"),
    (["--executor-cluster", "slurm"], "executor_cluster"),
    (["--executor", "local", "--scheduler", "tcp://h:8786", "--executor-cluster", "slurm"],
     "scheduler and executor_cluster"),
])
def test_a_scheduler_or_cluster_without_the_dask_executor_is_a_config_error_naming_them(
        argv, keys):
    with pytest.raises(ConfigError) as err:
        executor_settings(parse(*argv))
    assert err.value.problems == (f"{keys} given but executor is local: add executor = \"dask\" "
                                  f"(--executor dask), or drop {keys}",)


def test_watch_exits_78_on_a_scheduler_in_the_config_without_the_dask_executor(tmp_path, capsys):
    from daemon.commands.cli import main

    (tmp_path / "w").mkdir()
    (tmp_path / "c.toml").write_text('scheduler = "tcp://h:8786"\n')
    status = main(["watch", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--config",
                   str(tmp_path / "c.toml"), "--no-publish", "--exit-when-idle", "0"])
    assert status == 78 and "scheduler given but executor is local" in capsys.readouterr().err


def test_dask_options_are_validated_together_and_path_maps_replace_whole_components():
    with pytest.raises(ConfigError) as err:
        executor_settings(parse("--executor", "dask", "--max-in-flight", "0"))
    assert len(err.value.problems) == 2  # no scheduler, bad bound
    settings = executor_settings(parse("--executor", "dask", "--scheduler", "tcp://h:8786",
                                       "--path-map", "/data=/mnt/data"))
    assert settings.path_map == (("/data", "/mnt/data"),)
    assert map_path("/data/s/a.mrc", settings.path_map) == "/mnt/data/s/a.mrc"
    assert map_path("/database/a.mrc", settings.path_map) == "/database/a.mrc"
    with pytest.raises(ConfigError, match="executor_cores"):
        executor_settings(parse("--executor", "dask", "--executor-cluster", "slurm",
                                "--executor-memory", "8GB"))


def test_a_batch_jobs_memory_and_time_limit_without_their_units_are_refused_at_start():
    """``executor_memory = 64`` passed the check and crashed the daemon at start (exit 1, a
    restart loop under systemd: dask-jobqueue's SLURM script cannot format 64 bytes); a bare
    ``executor_walltime = 8`` went into the job script as 8 minutes (SLURM) or seconds (PBS)."""
    slurm = ("--executor", "dask", "--executor-cluster", "slurm", "--executor-cores", "8")
    for memory, walltime, bad in (("64", "08:00:00", "executor_memory '64'"),
                                  ("64GB", "8", "executor_walltime '8'"),
                                  ("lots", "8h", "executor_memory 'lots'")):
        with pytest.raises(ConfigError, match=bad):
            executor_settings(parse(*slurm, "--executor-memory", memory,
                                    "--executor-walltime", walltime))
    for memory, walltime in (("64GB", "08:00:00"), ("64 GiB", "2-00:00"), ("512mb", "48:00:00"),
                             ("1.5TB", "30:00")):
        settings = executor_settings(parse(*slurm, "--executor-memory", memory,
                                           "--executor-walltime", walltime))
        assert (settings.jobqueue.memory, settings.jobqueue.walltime) == (memory, walltime)


def test_the_executor_is_configured_by_flat_toml_keys_of_motionwatch_watch(tmp_path):
    from daemon.commands.watch import add_arguments
    from daemon.settings.config import load_config

    (tmp_path / "w").mkdir()
    toml = tmp_path / "session.toml"
    toml.write_text(textwrap.dedent(f'''
        out = "{tmp_path / 'out'}"
        dose_per_frame = 1.0
        executor = "dask"
        scheduler = "tcp://scheduler.facility:8786"
        max_in_flight = 16
        path_map = ["/data=/cluster/data"]
    '''))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = load_config(parser.parse_args([str(tmp_path / "w"), "--config", str(toml)]))
    settings = executor_settings(config)
    assert settings == ExecutorSettings("dask", "tcp://scheduler.facility:8786", 16,
                                        (("/data", "/cluster/data"),))
    flagged = load_config(parser.parse_args([str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                                             "--dose-per-frame", "1"]))
    assert executor_settings(flagged) == ExecutorSettings(  # local unless asked
        worker_max_movies=DEFAULT_WORKER_MAX_MOVIES)


def test_a_slurm_cluster_section_becomes_the_batch_job_that_dask_jobqueue_submits():
    pytest.importorskip("dask_jobqueue")
    from daemon.work.dask_executor import _start_jobqueue

    settings = executor_settings(parse(
        "--executor", "dask", "--executor-cluster", "slurm", "--executor-cores", "4",
        "--executor-memory", "16GB", "--executor-walltime", "02:00:00", "--executor-queue",
        "cryoem", "--executor-maximum-workers", "3"))
    assert DaskExecutor(settings).max_in_flight == 12  # 3 jobs x 4 one-movie workers
    cluster = _start_jobqueue(settings.jobqueue)  # adapts from 0 jobs: nothing is submitted
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cryoem" in script and "#SBATCH -t 02:00:00" in script
    assert "#SBATCH --cpus-per-task=4" in script and "--nworkers 4" in script
    assert "--nthreads 1" in script


def test_a_stuck_movie_times_out_counted_from_its_start_and_its_worker_is_restarted(
        tmp_path, fake_runners):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    stuck, after = write_movies(watch, ["victim.mrc", "a.mrc"])
    with local_cluster(n_workers=1) as cluster:
        settings = ExecutorSettings("dask", cluster.scheduler_address, 1)
        with DaskExecutor(settings, timeout_s=1.0, runner=fake_runners,
                          gain_loader=None) as executor:
            outcomes = run_all(executor, [Task(0, stuck, out, out, PARAMS, "victim")])
            pid = int((out / "victim.started").read_text())
            outcomes.update(run_all(executor, [Task(1, after, out, out, PARAMS, "a")]))
    assert outcomes[0].kind == "timeout" and "restarted" in outcomes[0].error
    assert outcomes[1].kind == "done"
    assert outcomes[1].record["ran_on"]["worker"]
    assert outcomes[1].record["pid"] != pid  # a fresh worker process took it


def test_heartbeats_tell_movies_waiting_for_a_dask_worker_from_those_a_worker_has(
        tmp_path, fake_runners):
    """One worker thread, four movies in flight at once: the heartbeat's ``queued`` lists
    those no worker has started (the watchdog does not time them: a SLURM queue is not a stuck
    worker); each leaves it when a worker takes it, and every movie is corrected once."""
    from daemon.events import ServiceListener

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    movies = write_movies(watch, ["slow_1.mrc", "slow_2.mrc", "slow_3.mrc", "slow_4.mrc"])
    beats = []

    class Beats(ServiceListener):
        def on_heartbeat(self, beat):
            beats.append((set(beat.in_flight), set(beat.queued)))

    with local_cluster(n_workers=1) as cluster:
        status = run_service(Service(service_config(watch, out,
                                                    scheduler=cluster.scheduler_address,
                                                    max_in_flight=4),
                                     runner=fake_runners, listeners=[Beats()]))

    assert status == 0
    assert all(queued <= in_flight for in_flight, queued in beats)
    assert any(len(queued) >= 2 for _, queued in beats)  # one running, the rest waiting
    assert_one_output_set_each(out, movies)


def test_a_movie_started_again_on_another_worker_is_timed_and_named_from_that_start():
    """With Dask's allowed-failures above 0 the scheduler runs a task again on another worker
    when its worker dies. The daemon kept the dead worker's start: the time limit counted from
    it, and a time-out would have restarted the wrong worker."""
    from daemon.work.dask_executor import _Running

    now = [100.0]
    executor = DaskExecutor(ExecutorSettings("dask", "tcp://127.0.0.1:1", 1), timeout_s=50.0,
                            clock=lambda: now[0])
    task = Task(0, Path("/w/a.mrc"), Path("/o"), Path("/o"), PARAMS, "a")
    executor._running[0] = _Running(task, future=None)
    executor._started.append({"task_id": 0, "worker": "tcp://10.0.0.1:4000"})
    assert executor.collect() == []
    now[0] = 140.0  # the first worker died; the scheduler started it on another
    executor._started.append({"task_id": 0, "worker": "tcp://10.0.0.2:4000"})
    assert executor.collect() == []
    now[0] = 170.0
    assert executor.collect() == []  # 30 s into the second start: within its 50 s
    running = executor._running[0]
    assert (running.worker, running.started_s) == ("tcp://10.0.0.2:4000", 140.0)


def test_a_connection_still_being_made_is_no_problem_and_a_failed_one_is(monkeypatch):
    """A cold cluster takes its time to connect (its workers import and load the gain): no
    problem is said while the first attempt goes on, however long (it was said after 7 s, then
    taken back); once an attempt fails, it is."""
    import daemon.work.dask_executor as module

    attempt = threading.Event()
    release = threading.Event()

    class SlowClient:
        def __init__(self, *args, **kwargs):
            attempt.set()
            release.wait(10)
            raise OSError("Timed out trying to connect")

    monkeypatch.setattr(module, "Client", SlowClient)
    executor = DaskExecutor(ExecutorSettings("dask", "tcp://127.0.0.1:1", 1),
                            connect_timeout_s=0.1, reconnect_s=30.0)
    executor.start()
    try:
        assert attempt.wait(5)
        time.sleep(0.3)
        assert executor.problem() is None  # the attempt is still under way
        release.set()
        deadline = time.monotonic() + 5
        while executor.problem() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "unreachable" in (executor.problem() or "")
    finally:
        release.set()
        executor.stop(timeout_s=1)


def test_a_worker_that_cannot_run_the_task_puts_the_movie_back_and_the_cluster_stays_in_use(
        tmp_path):
    """A worker running another motionwatch (here: a runner its code lacks) failed the
    plugin's registration, which was taken for an unreachable scheduler (a new client left
    open every 2 s, nothing corrected); where it did connect, the task's own exception was an
    ``error`` counted against the movie, quarantined within seconds."""
    movie = write_movies(tmp_path, ["a.mrc"])[0]
    with local_cluster(n_workers=1) as cluster:
        settings = ExecutorSettings("dask", cluster.scheduler_address, 1)
        with DaskExecutor(settings, runner="correction.pipeline:no_such_runner",
                          reconnect_s=0.2) as executor:
            deadline = time.monotonic() + 30
            while not executor.connected and time.monotonic() < deadline:
                time.sleep(0.1)
            assert executor.connected and executor.problem() is None
            assert "no_such_runner" in executor.cluster_state()["worker_setup_error"]
            (outcome,) = run_all(executor, [Task(0, movie, tmp_path / "out", tmp_path / "out",
                                                 PARAMS, "a")]).values()
            time.sleep(1.0)  # five reconnect periods: no new client
            clients = len(cluster.scheduler.clients)
    assert outcome.kind == "environment"
    assert "could not run motionwatch's task (AttributeError" in outcome.error
    assert "another motionwatch version on that worker?" in outcome.error
    assert clients <= 2  # the executor's, and the cluster's own


def test_dasks_own_log_records_join_the_daemons_json_lines_one_line_each():
    """When the scheduler went away, Dask's client logged a traceback of many lines in its own
    format among the daemon's JSON lines (a log shipper takes each line for an event)."""
    import io
    import logging

    from daemon.system.logs import configure_logging

    stream = io.StringIO()
    configure_logging(stream=stream, json_lines=True, journald=False)
    executor = DaskExecutor(ExecutorSettings("dask", f"tcp://127.0.0.1:{free_port()}", 1),
                            connect_timeout_s=0.2, reconnect_s=30.0)
    executor.start()
    try:
        try:
            raise OSError("Timed out during handshake\n  while reading")
        except OSError:
            logging.getLogger("distributed.client").exception("Lost connection to\nscheduler")
        logging.getLogger("distributed.worker").info("chatter below the warning level")
    finally:
        executor.stop(timeout_s=1)
        configure_logging()
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()
               if "library_log" in text]
    assert (line["level"], line["logger"], line["message"]) == (
        "error", "distributed.client", "Lost connection to scheduler")
    assert line["error"] == "OSError: Timed out during handshake while reading"
    assert "chatter" not in stream.getvalue()


def test_a_movie_that_fails_on_a_worker_names_the_worker():
    """A reference or a movie one node's mount lacks was said with no word of which node."""
    with local_cluster(n_workers=1) as cluster:
        settings = ExecutorSettings("dask", cluster.scheduler_address, 1)
        with DaskExecutor(settings) as executor:
            workers = set(cluster.scheduler_info["workers"])
            (outcome,) = run_all(executor, [Task(0, Path("/nonexistent/a.mrc"),
                                                 Path("/tmp/mw-none"), Path("/tmp/mw-none"),
                                                 PARAMS, "a")]).values()
    assert not outcome.ok
    assert outcome.error.endswith(f"(on Dask worker {next(iter(workers))})"), outcome.error


def test_a_stop_finishes_the_movies_a_worker_has_and_gives_back_those_queued_for_one(
        tmp_path, fake_runners):
    """One worker thread, four movies in flight: SIGTERM ("finishing the movie in hand")
    waited for all four (with no worker at all, for ever, until systemd's SIGKILL). The
    three no worker had started go back to the state database, corrected at the next start.
    The movie in hand is held (``SLOW``) until they are back, however slow the machine."""
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    movies = write_movies(watch, ["slow_1.mrc", "slow_2.mrc", "slow_3.mrc", "slow_4.mrc"])
    hold = tmp_path / "SLOW"
    hold.touch()

    def three_given_back() -> bool:
        with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
            return ledger.movie_counts()["pending"] == 3

    from recording_log import RecordingLog

    log = RecordingLog()
    with local_cluster(n_workers=1) as cluster:
        config = service_config(watch, out, scheduler=cluster.scheduler_address,
                                max_in_flight=4)
        service = Service(config, runner=fake_runners, logger=log)
        stopper = threading.Thread(target=lambda: (  # once the daemon knows one was taken
            _wait_for(lambda: log.named("movie_started"), 60),
            service.request_stop("SIGTERM"),
            _wait_for(three_given_back, 30),
            hold.unlink()))
        stopper.start()
        assert run_service(service) == 0
        stopper.join()
        with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
            counts = ledger.movie_counts()
        assert (counts["done"], counts["pending"], counts["running"]) == (1, 3, 0)
        assert run_service(Service(config, runner=fake_runners)) == 0  # the rest, once each
    assert_one_output_set_each(out, movies)


def test_a_movie_is_said_started_when_a_worker_takes_it_not_when_it_is_queued(
        tmp_path, fake_runners):
    """One worker thread, two movies in flight: both were logged ``movie_started`` at once,
    the second while it waited in the scheduler's queue for the first's worker."""
    from recording_log import RecordingLog

    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    write_movies(watch, ["slow_1.mrc", "slow_2.mrc"])
    hold = tmp_path / "SLOW"
    hold.touch()
    log = RecordingLog()
    with local_cluster(n_workers=1) as cluster:
        config = service_config(watch, out, scheduler=cluster.scheduler_address,
                                max_in_flight=2)
        service = Service(config, runner=fake_runners, logger=log)
        seen = {}

        def look_then_release():
            _wait_for(lambda: len(log.named("movie_queued")) == 2
                      and list(out.glob("*.started")), 60)
            time.sleep(1.0)  # the main loop's ticks: a start said by now would be logged
            seen["started"] = [Path(e["movie"]).name for e in log.named("movie_started")]
            seen["in_hand"] = [p.name.removesuffix(".started") for p in out.glob("*.started")]
            hold.unlink()

        looker = threading.Thread(target=look_then_release)
        looker.start()
        assert run_service(service) == 0
        looker.join()
        workers = set(cluster.scheduler_info["workers"])
    assert seen["started"] == [f"{seen['in_hand'][0]}.mrc"]  # the one a worker has
    started = log.named("movie_started")
    assert sorted(Path(e["movie"]).name for e in started) == ["slow_1.mrc", "slow_2.mrc"]
    assert {e["worker"] for e in started} == workers, started
    assert all(e["time_limit_s"] == 60.0 for e in started)


def _wait_for(check, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def test_a_scheduler_without_workers_while_movies_wait_is_said_to_be_a_problem(tmp_path):
    """Connected, 0 workers, a movie in flight: status said healthy, "in progress", for as
    long as one liked (no time limit runs before a worker starts a task)."""
    now = [1000.0]
    with distributed.LocalCluster(n_workers=0, dashboard_address=None,
                                  protocol="tcp") as cluster:
        settings = ExecutorSettings("dask", cluster.scheduler_address, 1)
        with DaskExecutor(settings, runner="fake_runners:correct", gain_loader=None,
                          clock=lambda: now[0]) as executor:
            assert _wait_for(lambda: executor.connected, 30)
            executor.submit(Task(0, tmp_path / "a.mrc", tmp_path, tmp_path, PARAMS, "a"))
            executor._last_count_s = float("-inf")
            executor.collect()  # counts the workers (none)
            assert _wait_for(lambda: executor._no_workers_since is not None, 10)
            assert executor.problem() is None  # a cluster may take its time to start some
            now[0] += 61.0
            problem = executor.problem() or ""
            assert problem.startswith("no Dask worker has joined scheduler") and "61 s" in problem
            assert "1 movie(s) wait" in problem
            assert [t.task_id for t in executor.withdraw_unstarted()] == [0]
            assert executor.problem() is None  # nothing waits


def test_a_movie_read_under_a_nodes_path_map_is_labelled_by_the_daemons_path(tmp_path):
    """``path_map = ["/data=/cluster/data"]``: the images' header said "from:
    /cluster/data/..." (the node's mount), where the records name the daemon's paths."""
    import mrcfile

    from correction.synthetic import render_movie
    from daemon.work.workers import GainCache, execute_task, resolve_runner

    daemon_side, node_side = tmp_path / "data", tmp_path / "cluster" / "data"
    node_side.mkdir(parents=True)
    (node_side / "grid2").mkdir()
    syn = render_movie(np.random.default_rng(6), shape_yx=(64, 64), n_frames=4,
                       electrons_per_px_per_frame=1.0, gain=None, dtype=np.int16)
    with mrcfile.new(node_side / "grid2" / "m.mrc") as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.1
    sent = {}

    class Client:
        status = "running"

        def submit(self, function, task, *args, **kwargs):
            sent["task"] = task

            class Future:
                def add_done_callback(self, callback):
                    pass
            return Future()

    settings = ExecutorSettings("dask", "tcp://127.0.0.1:1", 1,
                                path_map=((str(daemon_side), str(node_side)),))
    executor = DaskExecutor(settings)
    executor._client = Client()
    out = daemon_side / "out"
    executor.submit(Task(0, daemon_side / "grid2" / "m.mrc", out, out, PARAMS, "m"))
    remote = sent["task"]
    assert remote.movie_path == node_side / "grid2" / "m.mrc"
    (node_side / "out").mkdir()
    outcome = execute_task(remote, resolve_runner("correction.pipeline:prepare_movie"),
                           GainCache(None), worker="tcp://node:1")
    assert outcome.ok, outcome.error
    with mrcfile.open(node_side / "out" / "m_DW.mrc", header_only=True) as mrc:
        labels = [bytes(mrc.header.label[i]).decode().strip()
                  for i in range(int(mrc.header.nlabl))]
    from correction.pipeline import movie_labels

    assert labels[1:] == list(movie_labels(daemon_side / "grid2" / "m.mrc"))
    assert "cluster" not in labels[2]
