"""A named pipe (FIFO) where a metadata file is looked for never holds anything up.

SerialEM's per-movie frame mdoc is ``<movie>.mdoc``. A FIFO of that name (a script's
leftover, a capture tool) was opened with a blocking read: the daemon hung for good on the
movie's validation, deaf to SIGTERM, and ``correct`` hung alike. Such a file is no metadata:
the movie is corrected without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.simulation.movies import write_movie_progressively

FLAGS = ["--dose-per-frame", "1", "--patches", "1", "1"]


def _movie_with_a_pipe_for_its_frame_mdoc(folder: Path) -> Path:
    folder.mkdir()
    movie = folder / "m.mrc"
    frames = np.random.default_rng(3).poisson(2.0, (4, 64, 64)).astype(np.int16)
    write_movie_progressively(movie, frames, pixel_size_A=1.1, frame_interval_s=0)
    os.mkfifo(folder / "m.mrc.mdoc")
    return movie


def _motionwatch(*argv: str) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, killed after 60 s (a hang fails, not the suite)."""
    return subprocess.run([sys.executable, "-m", "daemon", *argv], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", ["correct", "watch"])
def test_a_fifo_named_as_the_movies_frame_mdoc_is_passed_over(tmp_path, command):
    movie = _movie_with_a_pipe_for_its_frame_mdoc(tmp_path / "frames")
    out = tmp_path / "out"
    if command == "correct":
        done = _motionwatch("correct", str(movie), "--out", str(out), *FLAGS)
    else:
        done = _motionwatch("watch", str(movie.parent), "--out", str(out), "--no-publish",
                            "--settle-time", "0.2", "--exit-when-idle", "1", *FLAGS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "m.motion.json").is_file() and (out / "m_DW.mrc").is_file()
