"""Cost of publishing and of the even/odd FRC: prints figures (not part of the test run).

    .venv/bin/python benchmarks/bench_publish_frc.py

Publishing: microseconds per ``Publisher.movie`` call (40-frame record) with no subscriber, with a
subscriber that never reads, and with one that reads everything; the three should agree (the
daemon's throughput does not depend on subscribers). FRC: seconds for 1024^2 and 4096^2 float32,
image-space (tapered) and from the half spectra (as the pipeline computes it).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import scipy.fft
import zmq

from correction.frc import even_odd_resolution, even_odd_resolution_from_spectra
from daemon.feed.messages import TiltInfo
from daemon.feed.publisher import PublishConfig, Publisher
from daemon.feed.subscriber import Subscriber

N = 5000


def record(n_frames: int = 40) -> dict:
    return {"schema": "motionwatch.motion/1", "movie": "/data/a.tif", "pixel_size_A": 1.0,
            "global_shifts_px": [[0.1 * i, -0.05 * i] for i in range(n_frames)],
            "drift": {"total_A": 5.0, "early_A": 2.0, "late_A": 1.0, "max_frame_jump_A": 0.5},
            "dose": {"total_e_A2": 3.0}, "local": {"applied": True},
            "resolution": {"resolution_A": 3.5}, "timings_s": {"total": 2.0}, "outputs": {}}


def per_call_us(pub: Publisher) -> float:
    rec = record()
    t0 = time.perf_counter()
    for i in range(N):
        pub.movie(rec, TiltInfo(series="S", acquisition_index=i))
    elapsed = time.perf_counter() - t0
    pub.flush(60)
    return elapsed / N * 1e6


def main() -> None:
    with Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*")) as pub:
        print(f"movie(): no subscriber        {per_call_us(pub):8.1f} us/call")
        ctx = zmq.Context()
        stuck = ctx.socket(zmq.SUB)
        stuck.setsockopt(zmq.RCVHWM, 10)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(pub.endpoint)
        time.sleep(0.5)
        print(f"movie(): stuck subscriber     {per_call_us(pub):8.1f} us/call")
        stuck.close(linger=0)
        ctx.term()
        stop = threading.Event()
        received = [0]

        def read() -> None:
            with Subscriber(pub.endpoint) as sub:
                while not stop.is_set():
                    if sub.receive(0.1) is not None:
                        received[0] += 1

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.5)
        print(f"movie(): reading subscriber   {per_call_us(pub):8.1f} us/call "
              f"(reader in this process competes for the GIL)")
        stop.set()
        reader.join()
        print(f"         reader received {received[0]} messages; publisher {pub.stats}")
    rng = np.random.default_rng(0)
    for n in (1024, 4096):
        even, odd = rng.standard_normal((2, n, n), dtype=np.float32)
        t0 = time.perf_counter()
        even_odd_resolution(even, odd, pixel_size_A=1.0, workers=2)
        print(f"even/odd FRC {n}^2 float32: {time.perf_counter() - t0:6.3f} s")
        # what the pipeline does: ring sums on the half spectra it already holds (no transform)
        spectra = [scipy.fft.rfft2(x, workers=2) for x in (even, odd)]
        t0 = time.perf_counter()
        even_odd_resolution_from_spectra(*spectra, shape_yx=(n, n), pixel_size_A=1.0)
        print(f"even/odd FRC {n}^2 from spectra (pipeline): {time.perf_counter() - t0:6.3f} s")


if __name__ == "__main__":
    main()
