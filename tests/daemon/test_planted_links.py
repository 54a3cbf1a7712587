"""In an output folder other accounts may write into (a group-shared lab folder), a symbolic
link planted under the name of a file motionwatch makes (a writer's temporary, the claims or
lock file, the write probe) made motionwatch write through it: another user's private file got
the motion record, the claims JSON or the pid, and outputs became links. Such a link is now
removed and the file made anew; the file it pointed at is untouched."""

from __future__ import annotations

import os

import mrcfile
import numpy as np

from correction.synthetic import render_movie
from daemon.commands.cli import main
from daemon.engine.locks import FolderLocks


def _victim(tmp_path):
    victim = tmp_path / "private" / "thesis.txt"
    victim.parent.mkdir()
    victim.write_text("years of work\n")
    return victim


def test_links_planted_as_temporaries_claims_and_probe_are_not_written_through(tmp_path):
    victim = _victim(tmp_path)
    movie = tmp_path / "m1.mrc"
    syn = render_movie(np.random.default_rng(1), shape_yx=(96, 96), n_frames=4, gain=None,
                       n_hot_pixels=0)
    with mrcfile.new(movie) as mrc:
        mrc.set_data(syn.frames)
        mrc.voxel_size = 1.2
    out = tmp_path / "shared"
    out.mkdir()
    pid = os.getpid()  # this test runs correct in its own process
    for name in (".motionwatch-correct-claims", f".m1.mrc.tmp-{pid}",
                 f".m1.motion.json.tmp-{pid}", f".motionwatch-write-test-{pid}"):
        (out / name).symlink_to(victim)
    assert main(["correct", str(movie), "--out", str(out), "--dose-per-frame", "1",
                 "--patches", "1", "1"]) == 0
    assert victim.read_text() == "years of work\n"
    for name in ("m1.mrc", "m1.motion.json"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 100
    assert mrcfile.read(out / "m1.mrc").shape == (96, 96)


def test_a_link_planted_as_the_lock_file_is_not_written_through(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "shared"
    out.mkdir()
    (out / "motionwatch.lock").symlink_to(victim)
    locks = FolderLocks(out, out)
    locks.acquire()
    try:
        assert victim.read_text() == "years of work\n"
        assert (out / "motionwatch.lock").read_text() == f"{os.getpid()}\n"
        assert not (out / "motionwatch.lock").is_symlink()
    finally:
        locks.release()
