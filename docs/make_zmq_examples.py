"""Regenerate the example messages in docs/zmq.md from a running daemon.

Run after changing a message:  python docs/make_zmq_examples.py

It starts ``python -m daemon watch`` (the real service, pipeline and publisher) on a simulated
session: a three-tilt series, one loose movie with a large drift (a ``warning``) and one movie
without a pixel size (quarantined: an ``error``); a real SUB socket receives what the daemon
publishes, and a late subscriber its ``state``. The test ``tests/daemon/test_feed_docs.py`` runs
the same session and fails when the key sets of the messages differ from the examples in
docs/zmq.md, so the examples cannot drift from the code. In the file, the session's temporary
folder is written as ``/data/session`` and the host as ``em-pc``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DOC = Path(__file__).with_name("zmq.md")
_REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"(<!-- example:(\w+) -->\n```json\n)(.*?)(\n```\n<!-- /example -->)", re.S)
_SHAPE_YX = (128, 128)
_PIXEL_A = 1.1
_DOC_ROOT = "/data/session"
_DOC_HOST = "em-pc"
TOPICS = ("movie", "series", "heartbeat", "error", "warning", "state")


def _write_session(watch: Path) -> None:
    """A three-tilt series, a drifting loose movie and a movie without a pixel size."""
    sys.path.insert(0, str(_REPO))
    from correction.synthetic import render_movie
    from daemon.simulation.movies import write_movie_progressively
    from daemon.simulation.tilt_series import simulate_tilt_series

    rng = np.random.default_rng(3)
    simulate_tilt_series(watch, rng=rng, n_tilts=3, shape_yx=_SHAPE_YX, frame_interval_s=0.01,
                         tilt_interval_s=0.05, pixel_size_A=_PIXEL_A)
    shifts = np.zeros((6, 2))
    shifts[:, 1] = np.linspace(0.0, 40.0, 6)  # 44 Å along x: above the 20 Å warning
    shifts -= shifts.mean(axis=0)
    drifty = render_movie(rng, shape_yx=_SHAPE_YX, n_frames=6, shifts_yx_px=shifts,
                          pixel_size_A=_PIXEL_A, gain=None, n_hot_pixels=0)
    write_movie_progressively(watch / "drifty.mrc", drifty.frames, pixel_size_A=_PIXEL_A,
                              frame_interval_s=0)
    write_movie_progressively(watch / "nopixel.mrc", drifty.frames, pixel_size_A=0.0,
                              frame_interval_s=0)


def _wanted(got: dict[str, dict]) -> bool:
    return all(topic in got for topic in TOPICS if topic != "state")


def collect_examples(folder: Path | None = None, *, timeout_s: float = 90.0
                     ) -> tuple[dict[str, dict], Path]:
    """One message per topic as a running daemon sends it, and the daemon's output folder.

    Parameters
    ----------
    folder : Path, optional
        Where the session is written (``folder/frames``, ``folder/motioncorr``) and kept;
        default a temporary folder, removed afterwards.

    Returns
    -------
    examples : dict
        Topic -> body: the first ``movie`` of a tilt (series not null), the series' last
        ``series`` event, a ``heartbeat`` with movies done, the ``error`` of the quarantined
        movie, the ``drift_total`` ``warning``, and the ``state`` a late subscriber receives.
    out_dir : Path
    """
    from daemon.feed.subscriber import Subscriber

    keep = folder is not None
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp")) if folder is None else Path(folder)
    watch, out = folder / "frames", folder / "motioncorr"
    watch.mkdir(parents=True, exist_ok=True)
    endpoint = f"ipc://{folder}/feed.ipc"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("JOURNAL_STREAM", None)
    env.pop("NOTIFY_SOCKET", None)
    command = [sys.executable, "-m", "daemon", "watch", str(watch), "--out", str(out),
               "--dose-per-frame", "1.0", "--settle-time", "0.2", "--scan-interval", "0.1",
               "--heartbeat", "0.3", "--metadata-wait", "1", "--mdoc-quiet", "1",
               "--publish", endpoint, "--drift-warning-total", "20"]
    got: dict[str, dict] = {}
    sub = Subscriber(endpoint)
    with open(folder / "daemon.log", "ab") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=_REPO)
    try:
        deadline = time.monotonic() + timeout_s
        while "heartbeat" not in got:  # subscribed: nothing published from now on is missed
            _receive(sub, got, deadline, daemon)
        got.clear()
        _write_session(watch)
        while not _wanted(got) or got["heartbeat"].get("done", 0) < 4 \
                or got["series"].get("event") != "completed":
            _receive(sub, got, deadline, daemon)
        with Subscriber(endpoint, topics=("state",)) as late:  # a late joiner
            while "state" not in got:
                message = late.receive(0.2)
                if message is not None and message[0] == "state":
                    got["state"] = message[1]
                if time.monotonic() > deadline:
                    raise RuntimeError("no state for the late subscriber")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        sub.close()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {topic: got[topic] for topic in TOPICS}, out


def _receive(sub: Any, got: dict[str, dict], deadline: float, daemon: subprocess.Popen) -> None:
    """Receive one message into ``got`` (by the rules of :func:`collect_examples`)."""
    if time.monotonic() > deadline:
        raise RuntimeError(f"timed out; have {sorted(got)}")
    if daemon.poll() is not None:
        raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
    message = sub.receive(0.2)
    if message is None:
        return
    topic, body = message
    if topic == "state":
        return  # the snapshot sent when this subscriber joined; the example is a late joiner's
    if topic == "movie" and body.get("series") is None:
        return  # the example shows a tilt
    if topic == "warning" and body.get("kind") != "drift_total":
        return
    if topic == "movie" and "movie" in got:
        return  # the first tilt
    got[topic] = body  # series, heartbeat: the latest


def key_sets(value: Any) -> Any:
    """The keys and nesting of a message without its values: a dict's keys (each with the
    key sets of its value), a list as the union over its items; a value as its JSON kind
    (a dashboard needs every key in every message, with the same kind of value)."""
    if isinstance(value, dict):
        return {k: key_sets(v) for k, v in value.items()}
    if isinstance(value, list):
        merged: dict = {}
        kinds = set()
        for item in value:
            shape = key_sets(item)
            if isinstance(shape, dict):
                merged.update(shape)
            else:
                kinds.add(json.dumps(shape))
        return [merged] if merged else sorted(kinds)
    return None


def _dumps(message: dict) -> str:
    """Indented JSON with short lists of numbers (e.g. [dx, dy]) kept on one line."""
    text = json.dumps(message, indent=2, ensure_ascii=False)
    number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    return re.sub(rf"\[\s*({number}(?:,\s*{number})*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def for_the_doc(examples: dict[str, dict], root: Path) -> dict[str, dict]:
    """The examples with the session's folder written as /data/session and the host em-pc."""
    text = json.dumps(examples).replace(str(root), _DOC_ROOT)
    out = json.loads(text)
    for body in out.values():
        if "host" in body:
            body["host"] = _DOC_HOST
    return out


def render(examples: dict[str, dict], text: str) -> str:
    def block(match: re.Match) -> str:
        return match.group(1) + _dumps(examples[match.group(2)]) + match.group(4)

    return _BLOCK.sub(block, text)


def doc_examples(text: str) -> dict[str, dict]:
    """The example messages currently in docs/zmq.md, by topic."""
    return {m.group(2): json.loads(m.group(3)) for m in _BLOCK.finditer(text)}


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    try:
        examples, _ = collect_examples(folder)
        DOC.write_text(render(for_the_doc(examples, folder), DOC.read_text()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
