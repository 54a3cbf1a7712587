"""The ZeroMQ feed: envelope, seq, non-blocking publication, late joiners, security, messages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import zmq
import zmq.auth

from daemon.feed.endpoint import endpoint_is_local, PublishConfigError
from daemon.feed.messages import SCHEMA, DriftRules, movie_message, movie_warnings, TiltInfo
from daemon.feed.publisher import PublishConfig, Publisher, PublishError
from daemon.feed.subscriber import Subscriber

PIXEL_SIZE_A = 1.5


def motion_record(name: str = "TS_01_000_0.0.tif", n_frames: int = 10, step_px: float = 0.5,
                  total_A: float | None = None) -> dict:
    """A motion record in the documented shape (schema motionwatch.motion/1)."""
    shifts = [[i * step_px, -0.5 * i * step_px] for i in range(n_frames)]
    total = total_A if total_A is not None else (n_frames - 1) * step_px * PIXEL_SIZE_A * 1.118
    return {
        "schema": "motionwatch.motion/1",
        "movie": f"/data/session/{name}",
        "pixel_size_A": PIXEL_SIZE_A,
        "global_shifts_px": shifts,
        "drift": {"total_A": total, "early_A": total / 3, "late_A": total / 2,
                  "max_frame_jump_A": step_px * PIXEL_SIZE_A * 1.118},
        "dose": {"per_frame_e_A2": 0.3, "total_e_A2": 0.3 * n_frames, "pre_exposure_e_A2": 0.0},
        "local": {"applied": True, "mean_magnitude_A": 1.25,
                  "patch_shifts_px": [[[0.0, 0.0]] * n_frames] * 4},
        "resolution": {"method": "even_odd_frc", "resolution_A": 4.2, "status": "crossing",
                       "threshold": 1 / 7},
        "timings_s": {"read": 0.1, "align": 0.4, "total": 0.7},
        "outputs": {"sum": f"/out/{name}.mrc", "record": f"/out/{name}.motion.json"},
    }


def receive_until(sub: Subscriber, done: Callable[[list], bool], timeout_s: float = 10.0) -> list:
    """Messages received until ``done(messages)`` holds; fails the test after ``timeout_s``."""
    got: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; received {[t for t, _ in got]}"
        msg = sub.receive(min(remaining, 0.5))
        if msg is not None:
            got.append(msg)
    return got


def has_topic(topic: str, n: int = 1) -> Callable[[list], bool]:
    return lambda got: sum(t == topic for t, _ in got) >= n


@pytest.fixture
def publisher():
    pub = Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*"), host="test-host").start()
    yield pub
    pub.close()


@pytest.fixture
def short_dir():
    """A short folder for ipc:// endpoints (socket paths are limited to ~100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_real_sub_socket_receives_every_topic_with_schema_seq_time_host_and_session(publisher):
    with Subscriber(publisher.endpoint) as sub:
        receive_until(sub, has_topic("state"))  # the subscription has reached the publisher
        publisher.series("started", "TS_01", n_done=0, n_expected=3)
        publisher.movie(motion_record(), TiltInfo(series="TS_01", tilt_deg=0.0, acquisition_index=0))
        publisher.heartbeat(backlog=2, done=1, failed=0, last_movie="/data/session/a.tif")
        publisher.error("/data/session/bad.tif", "TruncatedMovieError: 38 of 40 frames\nreadable")
        publisher.warning("dose_fallback", "no mdoc", path="/data/session/x.tif")
        got = receive_until(sub, has_topic("warning"))
    topics = [t for t, _ in got]
    assert topics == ["series", "movie", "heartbeat", "error", "warning"]
    seqs = [b["seq"] for _, b in got]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # one counter across topics, no gaps
    for _, body in got:
        assert body["schema"] == SCHEMA
        assert body["host"] == "test-host"
        assert body["session"] == publisher.session and uuid.UUID(body["session"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["time"])
        assert datetime.fromisoformat(body["time"]).utcoffset().total_seconds() == 0
    heartbeat = got[2][1]
    assert heartbeat["version"] and heartbeat["uptime_s"] >= 0 and heartbeat["backlog"] == 2
    assert got[3][1]["reason"] == "TruncatedMovieError: 38 of 40 frames readable"  # one line


def test_movie_message_values_equal_the_motion_record_with_shifts_converted_to_angstrom():
    record = motion_record(n_frames=5, step_px=2.0)
    tilt = TiltInfo(series="TS_01", tilt_deg=-3.0, acquisition_index=1, pre_exposure_e_A2=3.0,
                    dose_source="series_mdoc")
    body = movie_message(record, tilt)
    assert body["path"] == "/data/session/TS_01_000_0.0.tif" and body["name"] == "TS_01_000_0.0.tif"
    assert body["shifts_A"] == [[dx * PIXEL_SIZE_A, dy * PIXEL_SIZE_A]
                                for dx, dy in record["global_shifts_px"]]
    assert body["drift"] == record["drift"]
    assert body["timings_s"] == record["timings_s"] and body["outputs"] == record["outputs"]
    assert body["n_frames"] == 5 and body["tilt_deg"] == -3.0 and body["acquisition_index"] == 1
    assert body["dose"] == {"per_frame_e_A2": 0.3, "total_e_A2": 1.5, "pre_exposure_e_A2": 3.0,
                            "source": "series_mdoc", "fallback": None}
    assert body["local"] == {"applied": True, "mean_magnitude_A": 1.25}  # arrays stay in the record
    assert body["resolution"]["resolution_A"] == 4.2
    with pytest.raises(ValueError, match="global_shifts_px"):
        movie_message({k: v for k, v in record.items() if k != "global_shifts_px"})


def test_movie_message_from_the_correction_library_record_with_local_motion_magnitude():
    """The record as correction.report.motion_record writes it, with a local object shaped as
    correction.align_local.local_motion_record writes it: two patches, one moving 0.4 px in x
    relative to the global trajectory in every frame, the other not at all."""
    import numpy as np

    from correction.report import motion_record as library_record

    shifts_yx = np.array([[0.0, 0.0], [0.3, 0.4], [0.6, 0.8], [0.9, 1.2]])
    global_xy = shifts_yx[:, ::-1]
    local = {"applied": True, "reason": "2 of 2 patches fitted", "patches_xy": [2, 1],
             "shift_convention": "prose", "group_frames": 1, "residual_sigma_px": 0.05,
             "predicted_error_px": 0.02, "rejected_patches": [],
             "model": {"name": "polynomial", "formula": "prose", "spatial_degree": 1,
                       "temporal_degree": 3, "coefficients_x_px": [[0.1, 0.2]]},
             "fitted_shifts_px": [(global_xy + [0.4, 0.0]).tolist(), global_xy.tolist()]}
    rec = library_record(movie="/data/TS_01_003_9.0.mrc", shape_yx=(256, 256), pixel_size_A=2.0,
                         voltage_kV=300.0, shifts_yx_px=shifts_yx,
                         frame_doses_e_A2=np.full(4, 0.5), pre_exposure_e_A2=9.0,
                         outputs={"sum": "TS_01_003_9.0.mrc"}, timings_s={"total": 1.5},
                         local=local, resolution={"resolution_A": 5.1, "status": "crossing"})
    body = movie_message(rec, TiltInfo(series="TS_01", tilt_deg=9.0, acquisition_index=3))
    assert body["drift"] == rec["drift"] and body["drift"]["total_A"] == pytest.approx(3.0)
    assert body["shifts_A"] == [[2.0 * dx, 2.0 * dy] for dx, dy in rec["global_shifts_px"]]
    assert body["dose"]["total_e_A2"] == 2.0 and body["dose"]["pre_exposure_e_A2"] == 9.0
    assert "per_frame_e_A2" not in body["dose"]  # a per-frame list: stays in the record
    assert body["local"]["applied"] is True and "shift_convention" not in body["local"]
    assert body["local"]["max_A"] == pytest.approx(0.8)  # 0.4 px x 2 Å
    assert body["local"]["rms_A"] == pytest.approx(0.8 / np.sqrt(2))
    assert body["local"]["n_patches"] == 2 and body["local"]["n_rejected_patches"] == 0
    # the patch grid and the fitted model's scalars are there when they have a value (docs/zmq.md)
    assert body["local"]["patches_xy"] == [2, 1]
    assert body["local"]["model"] == {"name": "polynomial", "spatial_degree": 1,
                                      "temporal_degree": 3}
    assert body["resolution"] == {"resolution_A": 5.1, "status": "crossing"}


def test_movie_message_says_the_voltage_and_where_it_came_from():
    """A dashboard shows at what voltage a movie was weighted, and flags 300 kV assumed."""
    import numpy as np

    from correction.report import motion_record as library_record

    def record(**extra) -> dict:
        return library_record(movie="/data/m.mrc", shape_yx=(64, 64), pixel_size_A=1.0,
                              voltage_kV=200.0, shifts_yx_px=np.zeros((3, 2)),
                              frame_doses_e_A2=np.ones(3), pre_exposure_e_A2=0.0, outputs={},
                              timings_s={}, extra=extra)

    body = movie_message(record(voltage_source="mdoc"))
    assert (body["voltage_kV"], body["voltage_source"]) == (200.0, "mdoc")
    assert movie_message(record())["voltage_source"] is None  # a record from before it was kept


def test_tilt_facts_come_from_the_records_tilt_object_and_a_configured_dose_is_a_fallback():
    """The series resolver's TiltAssignment.record() travels in the motion record as ``tilt``."""
    import numpy as np

    from correction.report import motion_record as library_record
    from daemon.series.resolution import TiltAssignment

    def record_with(source: str, warnings: tuple[str, ...] = ()) -> dict:
        tilt = TiltAssignment(movie="TS_02_005_-9.0.tif", series="TS_02", tilt_deg=-9.0,
                              acquisition_index=5, dose_e_A2=3.0, frame_doses_e_A2=None,
                              pre_exposure_e_A2=15.0, dose_source=source,
                              order_source="TimeStamp", match_source="SubFramePath",
                              warnings=warnings)
        return library_record(movie="/data/TS_02_005_-9.0.tif", shape_yx=(64, 64),
                              pixel_size_A=1.0, voltage_kV=300.0,
                              shifts_yx_px=np.zeros((3, 2)), frame_doses_e_A2=np.ones(3),
                              pre_exposure_e_A2=15.0, outputs={}, timings_s={},
                              extra={"tilt": tilt.record()})

    body = movie_message(record_with("ExposureDose"))
    assert (body["series"], body["tilt_deg"], body["acquisition_index"]) == ("TS_02", -9.0, 5)
    assert body["dose"]["pre_exposure_e_A2"] == 15.0 and body["dose"]["source"] == "ExposureDose"
    assert body["dose"]["fallback"] is None and movie_warnings(body, DriftRules()) == []
    note = "TS_02_005_-9.0.tif: no dose in the metadata; configured dose per tilt 3 e/Å² used"
    fell_back = movie_message(record_with("configured", (note,)))
    [warning] = movie_warnings(fell_back, DriftRules())
    assert warning["kind"] == "dose_fallback" and warning["series"] == "TS_02"
    assert "dose from configured" in warning["message"] and note in warning["message"]
    assert movie_message(motion_record())["series"] is None  # no tilt object: outside a series


def test_drift_rules_warn_above_thresholds_and_on_dose_fallback_only():
    rules = DriftRules(max_total_drift_A=40.0, max_frame_jump_A=10.0)
    calm = movie_message(motion_record(total_A=12.0), TiltInfo(series="S"))
    assert movie_warnings(calm, rules) == []
    bad = movie_message(motion_record(total_A=55.5, step_px=8.0),
                        TiltInfo(series="S", tilt_deg=30.0, dose_fallback="no ExposureDose in mdoc"))
    warnings = movie_warnings(bad, rules)
    assert [w["kind"] for w in warnings] == ["drift_total", "drift_jump", "dose_fallback"]
    assert warnings[0]["value"] == 55.5 and warnings[0]["threshold"] == 40.0
    assert "55.5 Å above 40 Å" in warnings[0]["message"] and warnings[0]["tilt_deg"] == 30.0
    assert movie_warnings(bad, DriftRules(max_total_drift_A=None, max_frame_jump_A=None))[0][
        "kind"] == "dose_fallback"


def test_a_drift_warning_names_the_movie_below_the_watched_folder():
    """grid1/x.tif and grid2/x.tif: the warning said ``x.tif: total drift ...`` for both, in
    the journal, the monitor and the page alike. Its outputs' folder below the output folder
    mirrors the movie's below the watched one: ``grid2/x.tif``."""
    rules = DriftRules(max_total_drift_A=40.0)
    record = {**motion_record("x.tif", total_A=55.5), "movie": "/data/session/grid2/x.tif"}
    body = movie_message(record, outputs={"motion": "/data/out/grid2/x.motion.json"},
                         out_dir="/data/out")
    assert movie_warnings(body, rules)[0]["message"].startswith("grid2/x.tif: total drift 55.5")
    top = movie_message(motion_record("x.tif", total_A=55.5),
                        outputs={"motion": "/data/out/x.motion.json"}, out_dir="/data/out")
    assert movie_warnings(top, rules)[0]["message"].startswith("x.tif: total drift 55.5")


def test_movie_with_excessive_drift_is_followed_by_a_warning_message(publisher):
    with Subscriber(publisher.endpoint) as sub:
        receive_until(sub, has_topic("state"))
        publisher.movie(motion_record(total_A=80.0), TiltInfo(series="S", tilt_deg=12.0))
        got = receive_until(sub, has_topic("warning"))
    assert [t for t, _ in got] == ["movie", "warning"]
    assert got[1][1]["kind"] == "drift_total" and got[1][1]["path"] == got[0][1]["path"]


def test_malformed_record_publishes_an_error_instead_of_raising(publisher):
    with Subscriber(publisher.endpoint) as sub:
        receive_until(sub, has_topic("state"))
        assert publisher.movie({"movie": "/d/a.tif"}) is False
        got = receive_until(sub, has_topic("error"))
    assert "motion record lacks" in got[-1][1]["reason"] and got[-1][1]["path"] == "/d/a.tif"


def test_publishing_movies_never_blocks_with_no_subscriber_or_with_a_subscriber_that_never_reads():
    """2,000 movies with no subscriber, then 10,000 with a subscriber that never reads."""
    record = motion_record(n_frames=20)
    config = PublishConfig(endpoint="tcp://127.0.0.1:*", send_hwm=50, queue_size=1000)
    with Publisher(config) as pub:
        for i in range(2_000):  # no subscriber at all
            pub.movie(record, TiltInfo(series="S", acquisition_index=i))
        ctx = zmq.Context()
        stuck = ctx.socket(zmq.SUB)  # connects, subscribes, never reads
        stuck.setsockopt(zmq.RCVHWM, 10)
        stuck.setsockopt(zmq.RCVBUF, 4096)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(pub.endpoint)
        deadline = time.monotonic() + 10
        while pub.stats.subscriptions < 1:
            assert time.monotonic() < deadline, "stuck subscriber never subscribed"
            time.sleep(0.01)
        finished = threading.Event()

        def flood() -> None:
            for i in range(10_000):
                pub.movie(record, TiltInfo(series="S", acquisition_index=i))
            finished.set()

        caller = threading.Thread(target=flood)
        caller.start()
        caller.join(60)  # generous: the point is that the calls return, not how fast
        assert finished.is_set(), "publishing blocked behind a subscriber that never reads"
        assert pub.flush(30)
        stats = pub.stats
        assert stats.sent + stats.dropped == 12_000 + 1  # + the state snapshot
        assert stats.queued == 0
        # the publisher still serves a healthy subscriber while the stuck one sits there
        with Subscriber(pub.endpoint) as healthy:
            receive_until(healthy, has_topic("state"))
            pub.heartbeat(backlog=0, done=12_000, failed=0)
            receive_until(healthy, has_topic("heartbeat"))
        # the stuck subscriber really was past its high-water mark: it lost messages
        delivered = 0
        while stuck.poll(200):
            stuck.recv_multipart()
            delivered += 1
        assert delivered < 10_000
        stuck.close(linger=0)
        ctx.term()


def test_queue_overflow_drops_oldest_counts_drops_and_shows_them_as_a_seq_gap(short_dir):
    endpoint = f"ipc://{short_dir}/feed"
    pub = Publisher(PublishConfig(endpoint=endpoint, queue_size=5))
    for i in range(12):  # socket thread not started yet: the queue fills up
        pub.heartbeat(backlog=i, done=0, failed=0)
    assert pub.stats.dropped == 7 and pub.stats.queued == 5
    with pub.start(), Subscriber(endpoint) as sub:
        got = receive_until(sub, has_topic("state"))
    heartbeats = [b for t, b in got if t == "heartbeat"]
    assert all(b["backlog"] >= 7 for b in heartbeats)  # the oldest were dropped
    assert got[-1][1]["seq"] == 13  # 7 dropped + 5 sent + the state: the gap is visible


def test_an_ipc_feed_under_the_units_umask_admits_the_services_group(short_dir):
    """Connecting to a Unix socket takes write permission: under the units' ``UMask=0027``
    libzmq made the feed ``srwxr-x---`` and the people of the service's group, whom the docs
    send to an ``ipc://`` feed, were refused. Others stay shut out, as the umask says."""
    import os
    import stat

    endpoint = f"ipc://{short_dir}/feed"
    before = os.umask(0o027)
    try:
        pub = Publisher(PublishConfig(endpoint=endpoint)).start()
    finally:
        os.umask(before)
    try:
        mode = stat.S_IMODE(os.stat(short_dir / "feed").st_mode)
        assert mode & stat.S_IRWXG == stat.S_IRWXG
        assert mode & stat.S_IRWXO == 0
        with Subscriber(endpoint) as sub:
            assert receive_until(sub, has_topic("state"))
    finally:
        pub.close()


def test_late_subscriber_gets_state_with_open_series_and_their_tilts(publisher):
    publisher.series("started", "TS_01", n_done=0, n_expected=41, accumulated_dose_e_A2=0.0)
    for i, angle in enumerate([0.0, 3.0, -3.0]):
        publisher.movie(motion_record(f"TS_01_{i:03d}_{angle}.tif", total_A=5.0 + i),
                        TiltInfo(series="TS_01", tilt_deg=angle, acquisition_index=i))
        publisher.series("updated", "TS_01", n_done=i + 1, n_expected=41,
                         accumulated_dose_e_A2=3.0 * (i + 1))
    publisher.series("started", "TS_00", n_done=0)
    publisher.series("completed", "TS_00", n_done=0)
    publisher.movie(motion_record("single.tif"))  # outside any series
    assert publisher.flush()  # everything sent before the subscriber appears
    with Subscriber(publisher.endpoint) as sub:
        topic, state = receive_until(sub, has_topic("state"))[0]
    assert topic == "state" and state["session"] == publisher.session
    series = {s["series"]: s for s in state["series"]}
    assert series["TS_00"]["status"] == "completed"
    ts = series["TS_01"]
    assert ts["status"] == "open" and ts["n_done"] == 3 and ts["n_expected"] == 41
    assert ts["accumulated_dose_e_A2"] == 9.0
    assert [t["tilt_deg"] for t in ts["tilts"]] == [0.0, 3.0, -3.0]
    assert [t["total_A"] for t in ts["tilts"]] == [5.0, 6.0, 7.0]
    assert ts["tilts"][0]["name"] == "TS_01_000_0.0.tif" and ts["tilts"][0]["resolution_A"] == 4.2
    assert [m["name"] for m in state["movies"]] == ["single.tif"]


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5557", "tcp://*:5557", "tcp://eth0:5557",
                                      "tcp://192.168.1.20:5557", "tcp://microscope.lan:5557",
                                      "epgm://eth0;239.192.1.1:5555"])
def test_binding_a_non_loopback_endpoint_is_refused_without_the_explicit_flag(endpoint):
    assert not endpoint_is_local(endpoint)
    with pytest.raises(PublishConfigError, match="publish_allow_remote = true"):
        PublishConfig(endpoint=endpoint)
    assert PublishConfig(endpoint=endpoint, allow_remote=True).endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5557", "tcp://127.0.0.2:1", "tcp://[::1]:5557",
                                      "tcp://localhost:5557", "tcp://lo:5557",
                                      "ipc:///run/motionwatch/feed"])
def test_loopback_and_ipc_endpoints_need_no_flag(endpoint):
    assert PublishConfig(endpoint=endpoint).endpoint == endpoint


def test_an_inproc_endpoint_no_subscriber_could_reach_is_refused_at_start():
    """``--publish inproc://feed`` was taken: the feed was bound inside the publisher's own
    ZeroMQ context, and no dashboard (not even ``watch --dashboard``'s), monitor or
    subscriber ever saw a message."""
    with pytest.raises(PublishConfigError, match="inproc://feed: inproc:// reaches only "
                                                 ".*use ipc://PATH or tcp://127.0.0.1:PORT"):
        PublishConfig(endpoint="inproc://feed")


def test_config_reports_every_problem_at_once(tmp_path):
    with pytest.raises(PublishConfigError) as info:
        PublishConfig(endpoint="localhost:5557", queue_size=0,
                      curve_secret_key=tmp_path / "missing.key_secret")
    assert len(info.value.problems) == 3
    assert "transport://address" in str(info.value) and "no such file" in str(info.value)


def test_binding_an_endpoint_in_use_raises_a_publish_error_naming_it(publisher):
    with pytest.raises(PublishError, match=re.escape(publisher.endpoint)):
        Publisher(PublishConfig(endpoint=publisher.endpoint)).start()


def test_curve_round_trip_admits_an_authorized_client_and_shuts_out_others(tmp_path):
    keys, authorized, other = tmp_path / "keys", tmp_path / "authorized", tmp_path / "other"
    for folder in (keys, authorized, other):
        folder.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    _, stranger_secret = zmq.auth.create_certificates(other, "stranger")
    shutil.copy(client_public, authorized)
    config = PublishConfig(endpoint="tcp://127.0.0.1:*", curve_secret_key=Path(server_secret),
                           curve_authorized_keys=authorized)
    with Publisher(config) as pub:
        plain = Subscriber(pub.endpoint)
        stranger = Subscriber(pub.endpoint, curve_server_key=Path(server_public),
                              curve_client_key=Path(stranger_secret))
        with Subscriber(pub.endpoint, curve_server_key=Path(server_public),
                        curve_client_key=Path(client_secret)) as sub:
            receive_until(sub, has_topic("state"))
            pub.movie(motion_record(), TiltInfo(series="TS_01", tilt_deg=0.0))
            got = receive_until(sub, has_topic("movie"))
        assert got[-1][1]["name"] == "TS_01_000_0.0.tif"
        assert plain.receive(0.5) is None and stranger.receive(0.5) is None
        plain.close()
        stranger.close()


# the docs' examples are checked against a running daemon in tests/daemon/test_feed_docs.py


def test_plain_python_example_subscriber_prints_the_feed(publisher):
    script = Path(__file__).resolve().parents[2] / "examples" / "subscriber.py"
    proc = subprocess.Popen([sys.executable, str(script), publisher.endpoint, "--count", "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while publisher.stats.subscriptions < 1:  # its subscription has arrived (and got state)
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        publisher.series("started", "TS_01", n_done=0)
        publisher.movie(motion_record(total_A=7.25), TiltInfo(series="TS_01", tilt_deg=-6.0))
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    lines = out.splitlines()
    assert lines[0].endswith("state: ")
    assert "series TS_01 started" in lines[1]
    assert "TS_01_000_0.0.tif  series TS_01  tilt -6.0  drift 7.2 Å" in lines[2]


def test_a_movie_outside_any_series_has_the_same_dose_keys_as_a_tilt_with_source_null():
    loose = movie_message(motion_record())
    tilt = movie_message(motion_record(), TiltInfo(series="TS_01", tilt_deg=0.0,
                                                   pre_exposure_e_A2=3.0,
                                                   dose_source="ExposureDose"))
    assert set(loose["dose"]) == set(tilt["dose"]) >= {"pre_exposure_e_A2", "source", "fallback"}
    assert loose["dose"]["source"] is None and tilt["dose"]["source"] == "ExposureDose"


def test_movie_outputs_are_sent_relative_to_the_output_folder_it_names():
    out = Path("/data/motioncorr")
    written = {"sum": out / "grid2" / "a.mrc", "dw": out / "grid2" / "a_DW.mrc",
               "motion": out / "grid2" / "a.motion.json"}
    body = movie_message(motion_record(), outputs=written, out_dir=out)
    assert body["out_dir"] == "/data/motioncorr"
    assert body["outputs"] == {"sum": "grid2/a.mrc", "dw": "grid2/a_DW.mrc",
                               "motion": "grid2/a.motion.json"}


def test_a_restart_restores_a_redone_movie_once_and_its_series_count_once(tmp_path):
    """A tilt redone for new metadata has two done rows; the state a late subscriber gets after
    a restart names it once (it said n_done 7 of 6 expected)."""
    import json

    from daemon.feed.listener import restored_state
    from daemon.state.ledger import Ledger, MovieKey

    motion = tmp_path / "TS_01_000_0.0.motion.json"
    tilt = {"series": "TS_01", "movie": "TS_01_000_0.0.mrc", "tilt_deg": 0.0,
            "acquisition_index": 0, "dose_e_A2": 3.0, "pre_exposure_e_A2": 0.0}
    motion.write_text(json.dumps({
        "movie": "/w/TS_01_000_0.0.mrc", "pixel_size_A": 1.0,
        "global_shifts_px": [[0.0, 0.0], [1.0, 0.0]],
        "drift": {"total_A": 1.0, "early_A": 1.0, "late_A": 0.0, "max_frame_jump_A": 1.0},
        "outputs": {"motion": motion.name}, "tilt": tilt}))
    with Ledger(tmp_path / "motionwatch.sqlite") as ledger:
        for fingerprint in ("dose-a", "dose-b"):  # corrected, then redone with other doses
            key = MovieKey("/w/TS_01_000_0.0.mrc", 100, 1, fingerprint)
            ledger.add(key, metadata={"extra_record": {"tilt": tilt}})  # as admission does
            ledger.claim(key)
            ledger.mark_done(key, outputs={"motion": str(motion)}, timings={}, summary={})
        ledger.set_series_state("TS_01", {"status": "complete", "expected_tilts": 1})
        bad = MovieKey("/w/junk.mrc", 10, 1, "dose-a")
        ledger.add(bad)
        ledger.claim(bad)
        ledger.mark_failed(bad, "header needs 4864 bytes", quarantine=True)
    movies, series, errors, _ = restored_state(tmp_path / "motionwatch.sqlite", out_dir=tmp_path)
    assert [m["name"] for m in movies] == ["TS_01_000_0.0.mrc"]
    assert [(s["series"], s["n_done"]) for s in series] == [("TS_01", 1)]
    # the quarantined movie is listed again with its reason (the page showed none after a restart)
    assert [(e["path"], e["reason"]) for e in errors] == [
        ("/w/junk.mrc", "quarantined: header needs 4864 bytes")]


def test_the_late_joiners_state_lists_a_movie_once_and_no_failure_corrected_since():
    """A movie restored from the state database at start-up, then announced (adopted at
    start-up), was listed twice; a failure stayed in the state after the movie was corrected,
    and every state message put it back on the dashboards."""
    from daemon.feed.publisher import _Feed

    feed = _Feed(max_tilts=400)
    body = movie_message({"movie": "/data/a.mrc", "pixel_size_A": 1.0,
                          "global_shifts_px": [[0.0, 0.0]], "outputs": {},
                          "drift": {"total_A": 1.0, "early_A": 1.0, "late_A": 0.0,
                                    "max_frame_jump_A": 1.0}}, path="/data/a.mrc")
    feed.apply("error", {"path": "/data/a.mrc", "reason": "UnreadableMovieError: cut"})
    feed.apply("movie", dict(body))
    feed.apply("movie", dict(body))
    state = feed.snapshot()
    assert [m["path"] for m in state["movies"]] == ["/data/a.mrc"] and state["errors"] == []


def test_a_subscriber_connected_before_the_state_is_restored_gets_the_restored_state():
    """After a restart, a dashboard left running subscribes as the daemon binds, before the
    state database is read: it was answered with an empty state that nothing replaced (0
    series, 0 movies, with 21 done). It is answered at once (`monitor --once` must see the
    daemon during a long start-up) and again with the state restored."""
    publisher = Publisher(PublishConfig(endpoint="tcp://127.0.0.1:*"), host="test-host").start()
    try:
        publisher.hold_state()  # as the daemon does before its start-up scan
        with Subscriber(publisher.endpoint) as sub:
            early = receive_until(sub, has_topic("state"))
            assert [body for topic, body in early if topic == "state"][0]["movies"] == []
            done = movie_message(motion_record(), path="/data/a.tif")
            publisher.restore([done], [{"event": "completed", "series": "TS_01", "n_done": 1}])
            got = receive_until(sub, has_topic("state"))
        state = [body for topic, body in got if topic == "state"][0]
        assert [m["path"] for m in state["movies"]] == ["/data/a.tif"]
        assert [s["series"] for s in state["series"]] == ["TS_01"]
    finally:
        publisher.close()


def test_a_restart_restores_the_drift_warnings_of_the_movies_it_restores(publisher):
    """A dashboard opened after a daemon restart listed only this run's drift warnings: the
    night's movies came back, the warnings they had raised did not."""
    drifted = movie_message(motion_record("TS_01_003_9.0.tif", total_A=80.0),
                            path="/data/session/TS_01_003_9.0.tif")
    calm = movie_message(motion_record("TS_01_004_-9.0.tif"),
                         path="/data/session/TS_01_004_-9.0.tif")
    drifted["time"], calm["time"] = "2026-12-07T01:02:03.000Z", "2026-12-07T01:04:00.000Z"
    publisher.restore([drifted, calm])
    with Subscriber(publisher.endpoint) as sub:
        got = receive_until(sub, has_topic("state"))
    state = [body for topic, body in got if topic == "state"][0]
    (warning,) = state["warnings"]
    assert warning["kind"] == "drift_total" and warning["path"] == drifted["path"]
    assert warning["value"] == 80.0 and warning["time"] == drifted["time"]


def test_a_series_whose_stacks_could_not_be_written_is_a_warning_naming_it(publisher):
    """Before, its last message was `updated`: a dashboard waiting for `completed` waited on."""
    from daemon.events import SeriesEvent
    from daemon.feed.listener import PublishListener

    with Subscriber(publisher.endpoint) as sub:
        receive_until(sub, has_topic("state"))
        PublishListener(publisher).on_series_event(SeriesEvent(
            "assembly_failed", "grid1/TS_01", 9, 9, 0,
            reason="OSError: [Errno 28] No space left on device"))
        got = receive_until(sub, has_topic("warning"))
    body = got[-1][1]
    assert (body["kind"], body["series"]) == ("series_assembly_failed", "grid1/TS_01")
    assert "stacks not written: OSError: [Errno 28] No space left" in body["message"]


def test_every_live_view_shows_a_series_whose_stacks_were_not_written_as_assembly_failed(
        publisher):
    """Before, the dashboard, `monitor` and a late joiner's state kept such a series "open"
    (its last series event), so a night's failed stacks looked like a series still recording.
    A reopened series (a tilt retaken) is open again."""
    from daemon.dashboard.state import SessionView
    from daemon.events import SeriesEvent
    from daemon.feed.listener import PublishListener
    from daemon.feed.monitor import MonitorState

    listener = PublishListener(publisher)
    dashboard = SessionView(locate=lambda name: None, clock=time.monotonic)
    monitor = MonitorState(publisher.endpoint)

    def views_after(event: SeriesEvent) -> tuple[str, str, str]:
        with Subscriber(publisher.endpoint) as sub:
            receive_until(sub, has_topic("state"))
            listener.on_series_event(event)
            got = receive_until(sub, lambda got: got and got[-1][1].get("series") == "g/TS_01")
        for topic, body in got:
            dashboard.apply(topic, body)
            monitor.apply(topic, body, time.monotonic())
        with Subscriber(publisher.endpoint) as late:  # a late joiner's state message
            state = receive_until(late, has_topic("state"))[-1][1]
        late_status = {s["series"]: s["status"] for s in state["series"]}["g/TS_01"]
        return dashboard.series["g/TS_01"]["status"], monitor.series["g/TS_01"].status, late_status

    assert views_after(SeriesEvent("started", "g/TS_01", 3, 0, 0)) == ("open",) * 3
    failed = views_after(SeriesEvent("assembly_failed", "g/TS_01", 3, 3, 0,
                                     reason="OSError: [Errno 28] No space left on device"))
    assert failed == ("assembly failed",) * 3
    assert views_after(SeriesEvent("reopened", "g/TS_01", 3, 2, 0)) == ("open",) * 3
    assert views_after(SeriesEvent("completed", "g/TS_01", 3, 3, 0)) == ("completed",) * 3


def test_a_tilt_left_out_of_a_series_stacks_is_a_series_warning_on_the_feed(publisher):
    """Before, only the log said it; the dashboard and monitor showed "completed, 3/3"."""
    from daemon.events import SeriesEvent
    from daemon.feed.listener import PublishListener

    reason = ("mix/TS_mix: TS_mix_001_3.0.mrc left out of the stacks: its images are "
              "(192, 192), the series' (256, 256)")
    with Subscriber(publisher.endpoint) as sub:
        receive_until(sub, has_topic("state"))
        PublishListener(publisher).on_series_event(SeriesEvent("warning", "mix/TS_mix", 3, 3, 0,
                                                               reason=reason))
        got = receive_until(sub, has_topic("warning"))
    body = got[-1][1]
    assert (body["kind"], body["series"], body["message"]) == ("series_warning", "mix/TS_mix",
                                                              reason)


def _feed_record(total_e_A2=4.96, pre=12.0, total_A=12.0):
    return {"schema": "motionwatch.motion/1", "movie": "/data/TS_01_001_3.0.tif",
            "pixel_size_A": 1.0, "global_shifts_px": [[0.0, 0.0], [1.0, 0.0]],
            "drift": {"total_A": total_A, "early_A": 1.0, "late_A": 1.0,
                      "max_frame_jump_A": 1.0},
            "dose": {"total_e_A2": total_e_A2, "pre_exposure_e_A2": pre}}


def test_a_state_tilt_carries_the_movies_own_dose_and_its_pre_exposure_apart():
    """Mutant F3 (messages.py:366, ``dose_e_A2`` from the pre-exposure): docs/zmq.md's state
    example has dose_e_A2 == the movie's dose.total_e_A2; the dashboard shows both columns."""
    from daemon.feed.messages import TiltInfo, movie_message, tilt_summary

    body = movie_message(_feed_record(), TiltInfo(series="TS_01", pre_exposure_e_A2=12.0))
    tilt = tilt_summary(body)
    assert tilt["dose_e_A2"] == 4.96 and tilt["pre_exposure_e_A2"] == 12.0


def test_a_drift_equal_to_its_threshold_raises_no_warning():
    """Mutant F7 (messages.py:336, ``>=``): warnings are for a value that exceeds the
    threshold (docs/zmq.md, --drift-warning-total's help)."""
    from daemon.feed.messages import DriftRules, TiltInfo, movie_message, movie_warnings

    body = movie_message(_feed_record(total_A=40.0), TiltInfo())
    assert movie_warnings(body, DriftRules(max_total_drift_A=40.0)) == []
    body = movie_message(_feed_record(total_A=40.01), TiltInfo())
    assert [w["kind"] for w in movie_warnings(body, DriftRules(max_total_drift_A=40.0))] == [
        "drift_total"]


def test_the_state_keeps_the_last_4_completed_series_and_the_last_20_warnings_errors_movies():
    """Mutants F9 (publisher.py:72, 4 -> 2 completed series) and F11 (publisher.py:71, 20 ->
    10): the counts docs/zmq.md's state table gives."""
    from daemon.feed.messages import movie_message
    from daemon.feed.publisher import _Feed

    feed = _Feed(max_tilts=400)
    for i in range(6):
        feed.apply("series", {"event": "started", "series": f"TS_{i}", "n_done": 0})
        feed.apply("series", {"event": "completed", "series": f"TS_{i}", "n_done": 1})
    for i in range(25):
        feed.apply("warning", {"kind": "x", "message": str(i)})
        feed.apply("error", {"path": f"/d/e{i}.mrc", "reason": "r"})
        rec = dict(_feed_record(), movie=f"/d/m{i}.mrc")
        feed.apply("movie", movie_message(rec, path=f"/d/m{i}.mrc"))
    state = feed.snapshot()
    assert [s["series"] for s in state["series"]] == ["TS_2", "TS_3", "TS_4", "TS_5"]
    assert len(state["warnings"]) == len(state["errors"]) == len(state["movies"]) == 20
    assert state["movies"][-1]["path"] == "/d/m24.mrc"


@pytest.mark.parametrize("source, fallback", [
    ("ExposureDose (frame mdoc)", False), ("FrameDosesAndNumber (frame mdoc)", False),
    ("DoseRate (frame mdoc)", True), ("configured", True)])
def test_a_dose_from_the_frame_mdocs_exposuredose_is_no_fallback(source, fallback):
    """Mutant F18 (messages.py:127, the source compared whole): the resolver names a frame-mdoc
    dose "ExposureDose (frame mdoc)" (daemon/series/resolution.py); docs/zmq.md: fallback is
    null when the source is ExposureDose or FrameDosesAndNumber."""
    from daemon.feed.messages import TiltInfo
    from daemon.series.resolution import TiltAssignment

    tilt = TiltAssignment(movie="TS_02_005_-9.0.tif", series="TS_02", tilt_deg=-9.0,
                          acquisition_index=5, dose_e_A2=3.0, frame_doses_e_A2=None,
                          pre_exposure_e_A2=15.0, dose_source=source, order_source="TimeStamp",
                          match_source="SubFramePath", warnings=())
    info = TiltInfo.from_record({"tilt": tilt.record()})
    assert (info.dose_fallback is not None) is fallback


def test_the_state_keeps_the_last_max_tilts_of_a_series_in_arrival_order():
    """Mutant F21 (publisher.py:216, the per-series tilt list unbounded): docs/zmq.md, state
    ``series[].tilts``: "in arrival order (last 400)" (PublishConfig.max_tilts_per_series)."""
    from daemon.feed.messages import TiltInfo, movie_message
    from daemon.feed.publisher import _Feed

    feed = _Feed(max_tilts=3)
    for i in range(5):
        rec = dict(_feed_record(), movie=f"/d/TS_01_{i:03d}.tif")
        feed.apply("movie", movie_message(rec, TiltInfo(series="TS_01")))
    (series,) = feed.snapshot()["series"]
    assert [t["name"] for t in series["tilts"]] == ["TS_01_002.tif", "TS_01_003.tif",
                                                    "TS_01_004.tif"]


def test_a_malformed_record_is_counted_in_the_publishers_build_errors():
    """Mutant F25 (publisher.py:399, build_errors never counted): PublisherStats.build_errors."""
    from daemon.feed.publisher import PublishConfig, Publisher

    publisher = Publisher(PublishConfig(endpoint="ipc://@gaps-build-errors"))  # not started
    assert publisher.movie({"movie": "/d/x.mrc"}) is False
    assert publisher.stats.build_errors == 1


def _resident_MB() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def test_subscriptions_longer_than_any_topic_cost_the_publisher_nothing(publisher):
    """One client subscribing to 3,000 distinct 1 kB prefixes made the daemon hold their trie
    (about 140 MB here; 10,000 of them 470 MB, kept after the client left), and one 5 MB
    subscription frame 240 MB. Subscriber frames are at most 512 bytes now (a subscription is
    a topic prefix; a larger frame drops its connection), and a well-behaved subscriber is
    still served.
    (The greedy client runs in a process of its own: libzmq 4.3.5 crashes a context that
    terminates with such a frame in flight, on the client's side.)"""
    greedy = (
        "import os, sys, time, zmq\n"
        "sock = zmq.Context().socket(zmq.XSUB)\n"
        "sock.connect(sys.argv[1])\n"
        "for i in range(3000):\n"
        "    sock.send(b'\\x01' + b'x%07d' % i + b'y' * 1000)\n"
        "sock.send(b'\\x01' + b'z' * 5_000_000)\n"
        "time.sleep(2.0)\n"
        "print('sent', flush=True)\n"
        "os._exit(0)\n")
    with Subscriber(publisher.endpoint, topics=("movie",)) as sub:
        before = _resident_MB()
        done = subprocess.run([sys.executable, "-c", greedy, publisher.endpoint],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "sent", done.stderr
        time.sleep(0.5)  # the publisher thread has read them all
        grown = _resident_MB() - before
        publisher.movie(motion_record(), TiltInfo(series=None, tilt_deg=None,
                                                   acquisition_index=None))
        got = receive_until(sub, has_topic("movie"))
    assert [t for t, _ in got] == ["movie"]
    assert grown < 30, f"the publisher's process grew by {grown:.0f} MB"
