"""The command line gives BLAS one thread: motionwatch runs its own threads (scipy.fft workers,
patch and band pools), and OpenBLAS's threads on top of them oversubscribe the cores."""

from __future__ import annotations

import os
import subprocess
import sys

_PROBE = """
import os, sys
from daemon.commands import cli
assert "numpy" not in sys.modules  # the variables are read when numpy loads
try:
    cli.main(["status", "--help"])
except SystemExit:
    pass
import numpy as np
a = np.ones((1024, 1024), np.float32)
a @ a  # OpenBLAS has started its threads by now, if it has any
print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def _probe(**env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[-2]), out[-1]


def test_the_command_line_runs_numpy_with_one_blas_thread():
    assert _probe() == (1, "1")  # the main thread alone


def test_a_blas_thread_count_the_user_set_is_kept():
    assert _probe(OPENBLAS_NUM_THREADS="2")[1] == "2"
