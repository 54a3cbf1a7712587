"""One folder mounted twice, as one NFS export mounted twice gives it: the same files (the same
inode numbers) under two ``st_dev`` values. Two overlay mounts of one folder, in a private
mount namespace (``unshare --mount``, with ``--user --map-root-user`` when not root), so
nothing outlives the run.

:func:`run_daemon_in_two_mounts` runs ``python two_mounts.py FOLDER`` there: ``FOLDER/lower``
holds ``session/grid1/m1.mrc`` and ``session/also_grid1``, a link to ``grid1`` through the
second mount; the daemon (the fake runner) watches ``session`` through the first mount until
idle. It returns the daemon's log (event -> movies), or the reason it could not be set up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["run_daemon_in_two_mounts"]


def run_daemon_in_two_mounts(folder: Path, *, timeout_s: float = 60.0) -> dict:
    """``{"skip": why}`` where two mounts cannot be made here, else ``{event: [movie ...]}``
    of the daemon's run (``movie_started``, ``movie_alias``)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return {"skip": "no unshare"}
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    here = Path(__file__).resolve().parent  # this repository's code, and the fake runners
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (here.parents[1], here)))}
    namespace = [unshare, "--mount", *user]
    probe = subprocess.run([*namespace, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"skip": f"no private mount namespace here: {probe.stderr.strip()[-300:]}"}
    done = subprocess.run([*namespace, sys.executable, __file__, str(folder)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the run in two mounts failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mount_twice(folder: Path) -> str | None:
    """Mount ``folder/lower`` at ``folder/m1`` and ``folder/m2``; why not, or None."""
    for n in ("1", "2"):
        for part in ("m", "upper", "work"):
            (folder / f"{part}{n}").mkdir()
        options = (f"lowerdir={folder / 'lower'},upperdir={folder / f'upper{n}'},"
                   f"workdir={folder / f'work{n}'}")
        done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options,
                               str(folder / f"m{n}")], capture_output=True, text=True)
        if done.returncode != 0:
            return f"overlay mount failed: {done.stderr.strip()}"
    a, b = (os.stat(folder / m / "session" / "grid1" / "m1.mrc") for m in ("m1", "m2"))
    if a.st_dev == b.st_dev or a.st_ino != b.st_ino:
        return "the two mounts do not give one file two devices"
    return None


def _main(folder: Path) -> dict:
    import numpy as np
    from recording_log import RecordingLog

    from correction.params import CorrectionParams, DoseParams
    from daemon.engine.service import Service
    from daemon.settings.config import Config
    from daemon.simulation.movies import write_movie_progressively

    session = folder / "lower" / "session"
    frames = np.random.default_rng(0).poisson(1.0, (4, 32, 32)).astype(np.int16)
    (session / "grid1").mkdir(parents=True)
    write_movie_progressively(session / "grid1" / "m1.mrc", frames, pixel_size_A=1.1,
                              frame_interval_s=0)
    (session / "also_grid1").symlink_to(folder / "m2" / "session" / "grid1")
    why = _mount_twice(folder)
    if why is not None:
        return {"skip": why}
    out = folder / "out"
    out.mkdir()
    config = Config(folder / "m1" / "session", out, out,
                    CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, heartbeat_s=0.2,
                    exit_when_idle_s=0.6, polling="on")
    log = RecordingLog()
    Service(config, runner="fake_runners:correct", logger=log).run()
    return {event: [e["movie"] for e in log.named(event)]
            for event in ("movie_started", "movie_alias")}


if __name__ == "__main__":
    print(json.dumps(_main(Path(sys.argv[1]))))
