"""A killed daemon leaves no child behind: its series-assembly job process dies with it, as
its movie workers do, so that a job of the killed daemon never writes a series' files beside
the next daemon's (found by a kill -9 audit: 38 files written after the daemon had died)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

_PARENT = """
import sys, time
from daemon.work.jobs import JobRunner
jobs = JobRunner()
future = jobs.run_job(time.sleep, 120)  # a long assembly
print("running", flush=True)
time.sleep(120)
"""


def test_the_job_process_of_a_killed_daemon_dies_with_it():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE,
                              text=True)
    children: list[psutil.Process] = []
    try:
        assert parent.stdout.readline().strip() == "running"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the job process has started its job
            children = psutil.Process(parent.pid).children(recursive=True)
            if any("spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in
                   " ".join(c.cmdline()) for c in children):
                break
            time.sleep(0.1)
        assert children
        time.sleep(1.0)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        parent.kill()
        for child in children:
            if child.is_running():
                child.kill()
