"""The tilt-series resolver inside the service: SerialEM's own stack is not a movie.

SerialEM writes a tilt series' stack ``TS_01.mrc`` beside its mdoc ``TS_01.mrc.mdoc``. The stack
has a movie's name and is a valid MRC, but it must not be corrected, and it must not keep the
daemon busy: ``--exit-when-idle`` has to fire in such a folder.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np

from correction.params import CorrectionParams, DoseParams
from daemon.config import Config
from daemon.ledger import Ledger
from daemon.series import SeriesConfig
from daemon.service import Service, ServiceObserver
from daemon.simulate import write_movie_progressively
from daemon.tiltseries import TiltSeriesResolver

DATA = Path(__file__).parent.parent / "data" / "mdoc"


class StopReason(ServiceObserver):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def on_stopping(self, reason: str) -> None:
        self.reasons.append(reason)


def test_a_serialem_stack_beside_its_series_mdoc_is_ignored_and_the_daemon_goes_idle(tmp_path):
    watch, out = tmp_path / "w", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    shutil.copy(DATA / "TS_01.mrc.mdoc", watch / "TS_01.mrc.mdoc")
    stack = np.random.default_rng(0).poisson(1.0, (3, 32, 32)).astype(np.int16)
    write_movie_progressively(watch / "TS_01.mrc", stack, pixel_size_A=1.1, frame_interval_s=0)
    config = Config(watch, out, out, CorrectionParams(dose=DoseParams(dose_per_frame_e_A2=1.0)),
                    settle_time_s=0.1, scan_interval_s=0.05, incomplete_grace_s=1.0,
                    heartbeat_s=0.1, exit_when_idle_s=0.5, polling="on")
    stopping = StopReason()
    service = Service(config, observers=[stopping],
                      resolver=TiltSeriesResolver(SeriesConfig(), mode="on"))
    guard = threading.Timer(30.0, service.request_stop, args=("test guard: never went idle",))
    guard.start()
    try:
        assert service.run() == 0
    finally:
        guard.cancel()
    assert stopping.reasons and "exit_when_idle" in stopping.reasons[0], stopping.reasons
    with Ledger(out / "motionwatch.sqlite", read_only=True) as ledger:
        (row,) = ledger.rows(path=str(watch / "TS_01.mrc"))
    assert row.status == "quarantined" and row.attempts == 0
    assert row.error.startswith("a tilt-series stack") and "not corrected" in row.error
    assert not list(out.glob("TS_01*.mrc")) and not list(out.glob("*.motion.json"))
