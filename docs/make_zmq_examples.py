"""Regenerate the example messages in docs/zmq.md from the code (a real publisher and socket).

Run after changing a message:  python docs/make_zmq_examples.py
A test (tests/daemon/test_publish.py) fails when docs/zmq.md no longer matches the messages'
structure, so the examples cannot drift from the code.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from correction.frc import even_odd_resolution
from daemon.feed.publisher import TOPICS, DriftRules, PublishConfig, Publisher, Subscriber
from daemon.series.resolution import TiltAssignment

DOC = Path(__file__).with_name("zmq.md")
_BLOCK = re.compile(r"(<!-- example:(\w+) -->\n```json\n)(.*?)(\n```\n<!-- /example -->)", re.S)


def example_record() -> dict:
    """A motion record of schema motionwatch.motion/1 (the resolution computed by correction.frc)."""
    rng = np.random.default_rng(0)
    shape = (256, 256)
    spectrum = np.fft.rfft2(rng.standard_normal(shape))  # signal band-limited to 0.3 cycles/px
    spectrum[np.hypot(np.fft.fftfreq(256)[:, None], np.fft.rfftfreq(256)[None, :]) > 0.3] = 0
    signal = 2.0 * np.fft.irfft2(spectrum, s=shape)
    even = signal + rng.standard_normal(shape)
    odd = signal + rng.standard_normal(shape)
    resolution, _ = even_odd_resolution(even, odd, pixel_size_A=1.06)
    shifts = [[0.0, 0.0], [1.21, -0.43], [2.05, -0.81], [2.62, -1.02], [3.04, -1.18],
              [3.37, -1.31], [3.61, -1.40], [3.80, -1.47]]
    return {
        "schema": "motionwatch.motion/1",
        "movie": "/data/session/TS_03/TS_03_012_-15.0.tif",
        "pixel_size_A": 1.06,
        "global_shifts_px": shifts,
        "drift": {"total_A": 4.319, "early_A": 2.44, "late_A": 0.541, "max_frame_jump_A": 1.36},
        "dose": {"per_frame_e_A2": [0.375] * 8, "pre_exposure_e_A2": 36.0, "total_e_A2": 3.0},
        "local": {"applied": True, "reason": "4 of 4 patches fitted",
                  "patches_xy": [2, 2], "group_frames": 1, "residual_sigma_px": 0.08,
                  "predicted_error_px": 0.03, "rejected_patches": [],
                  "fitted_shifts_px": [[[dx + 0.1 * i * k, dy - 0.05 * i * k] for i, (dx, dy)
                                        in enumerate(shifts)] for k in range(4)]},
        "resolution": resolution.to_record(),
        "timings_s": {"read": 0.41, "gain": 0.05, "align_global": 0.62, "align_local": 1.8,
                      "sum": 0.33, "write": 0.12, "total": 3.33},
        "tilt": TiltAssignment(movie="TS_03_012_-15.0.tif", series="TS_03", tilt_deg=-15.0,
                               acquisition_index=12, dose_e_A2=3.0, frame_doses_e_A2=None,
                               pre_exposure_e_A2=36.0, dose_source="ExposureDose",
                               order_source="TimeStamp", match_source="SubFramePath",
                               mdoc_path="/data/session/TS_03.mrc.mdoc").record(),
        "outputs": {"sum": "/data/session/motioncorr/TS_03/TS_03_012_-15.0.mrc",
                    "sum_dw": "/data/session/motioncorr/TS_03/TS_03_012_-15.0_DW.mrc",
                    "even": "/data/session/motioncorr/TS_03/TS_03_012_-15.0_EVN.mrc",
                    "odd": "/data/session/motioncorr/TS_03/TS_03_012_-15.0_ODD.mrc",
                    "record": "/data/session/motioncorr/TS_03/TS_03_012_-15.0.motion.json"},
    }


def collect_examples() -> dict[str, dict]:
    """One real message per topic, received over a real SUB socket from a real publisher."""
    folder = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    endpoint = f"ipc://{folder}/feed"
    got: dict[str, dict] = {}
    config = PublishConfig(endpoint=endpoint, drift=DriftRules(max_total_drift_A=4.0))
    try:
        with Publisher(config, host="em-pc") as pub:
            with Subscriber(endpoint) as sub:
                first = sub.receive(10)  # the state sent on subscription: we are connected
                if first is None or first[0] != "state":
                    raise RuntimeError(f"expected a state message first, got {first}")
                pub.series("started", "TS_03", n_done=12, n_failed=0, n_expected=41,
                           accumulated_dose_e_A2=36.0, mdoc="/data/session/TS_03.mrc.mdoc")
                pub.movie(example_record())  # series and tilt from the record's "tilt"
                pub.series("updated", "TS_03", n_done=13, n_failed=0, n_expected=41,
                           accumulated_dose_e_A2=39.0, mdoc="/data/session/TS_03.mrc.mdoc")
                pub.heartbeat(backlog=2, done=131, failed=1, running=1, quarantined=1,
                              last_movie="/data/session/TS_03/TS_03_012_-15.0.tif")
                pub.error("/data/session/TS_03/TS_03_013_18.0.tif",
                          "TruncatedMovieError: 38 of 40 frames readable")
                while len(got) < 5:
                    msg = sub.receive(5)
                    if msg is None:
                        raise RuntimeError(f"timed out; have {sorted(got)}")
                    got.setdefault(*msg)
            with Subscriber(endpoint, topics=("state",)) as late:  # a late joiner
                msg = late.receive(5)
                if msg is None:
                    raise RuntimeError("no state for the late subscriber")
                got[msg[0]] = msg[1]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {topic: got[topic] for topic in TOPICS}


def _dumps(message: dict) -> str:
    """Indented JSON with short lists of numbers (e.g. [dx, dy]) kept on one line."""
    text = json.dumps(message, indent=2, ensure_ascii=False)
    number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    return re.sub(rf"\[\s*({number}(?:,\s*{number})*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def render(examples: dict[str, dict], text: str) -> str:
    def block(match: re.Match) -> str:
        return match.group(1) + _dumps(examples[match.group(2)]) + match.group(4)

    return _BLOCK.sub(block, text)


def doc_examples(text: str) -> dict[str, dict]:
    """The example messages currently in docs/zmq.md, by topic."""
    return {m.group(2): json.loads(m.group(3)) for m in _BLOCK.finditer(text)}


def main() -> int:
    DOC.write_text(render(collect_examples(), DOC.read_text()))
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
