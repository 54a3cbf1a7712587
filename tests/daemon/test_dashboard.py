"""The web dashboard: what it folds from the feed, what it serves (and refuses), and the page
itself in a real headless chromium against a daemon running a simulated tilt series."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_process import events, spawn, watch_argv
from system_tools import require_tool

from daemon.dashboard.server import Dashboard, DashboardConfig, DashboardError, resolve_inside
from daemon.dashboard.state import SessionView
from daemon.feed.messages import movie_message, tilt_summary, TiltInfo

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def record(name: str, total_A: float, *, out: str = "") -> dict:
    stem = Path(name).stem
    return {"movie": f"/data/{name}", "pixel_size_A": 1.0,
            "global_shifts_px": [[0.0, 0.0], [total_A, 0.0]],
            "drift": {"total_A": total_A, "early_A": total_A, "late_A": 0.0,
                      "max_frame_jump_A": total_A},
            "outputs": {"motion": f"{out}{stem}.motion.json"}}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def envelope(session: str, seq: int, **body) -> dict:
    return {"schema": "motionwatch/1", "seq": seq, "session": session, "host": "em-pc",
            "time": "2026-01-01T00:00:00.000Z", **body}


def test_view_shows_tilts_per_series_sorted_by_angle_and_the_latest_movies_pictures(tmp_path):
    (tmp_path / "TS_01_001_3.0.thumb.png").write_bytes(b"png")
    found = {"TS_01_001_3.0.thumb.png": "/files/TS_01_001_3.0.thumb.png"}
    view = SessionView(locate=found.get, clock=Clock())
    view.apply("series", envelope("a", 1, event="started", series="TS_01", n_done=0,
                                  n_expected=3))
    for seq, (name, angle) in enumerate([("TS_01_000_0.0.mrc", 0.0),
                                         ("TS_01_001_3.0.mrc", 3.0)], start=2):
        msg = movie_message(record(name, 2.0 + angle),
                            TiltInfo(series="TS_01", tilt_deg=angle, acquisition_index=seq - 2))
        view.apply("movie", envelope("a", seq, **msg))
    snap = view.snapshot()
    [series] = snap["series"]
    assert [t["tilt_deg"] for t in series["tilts"]] == [0.0, 3.0]
    assert snap["latest"]["name"] == "TS_01_001_3.0.mrc"
    assert snap["latest"]["pictures"]["thumbnail"] == "/files/TS_01_001_3.0.thumb.png"
    assert snap["latest"]["pictures"]["spectrum"] is None  # not written: none shown
    assert snap["daemon"]["state"] == "live" and snap["feed"]["gaps"] == 0


def test_the_latest_movie_shows_its_own_pictures_even_beside_a_namesake_in_another_grid(
        tmp_path):
    """grid1/a.mrc and grid2/a.mrc: the pictures come from the motion record's folder (the
    newest movie was shown with grid1's), and a picture written again gets a new URL (a page
    kept showing the contact sheet it had cached after a re-assembly)."""
    from daemon.dashboard.server import _Locator

    for grid in ("grid1", "grid2"):
        (tmp_path / grid).mkdir()
        (tmp_path / grid / "a.thumb.png").write_bytes(grid.encode())
    (tmp_path / "grid2" / "TS_01").mkdir()
    sheet = tmp_path / "grid2" / "TS_01" / "TS_01.sheet.png"
    sheet.write_bytes(b"first")
    view = SessionView(locate=_Locator(tmp_path), clock=Clock())
    for seq, grid in enumerate(("grid1", "grid2"), start=1):
        view.apply("movie", envelope("a", seq, **movie_message(record("a.mrc", 1.0 + seq,
                                                                         out=f"{grid}/"))))
    view.apply("series", envelope("a", 3, event="completed", series="grid2/TS_01", n_done=1))
    snap = view.snapshot()
    assert snap["latest"]["pictures"]["thumbnail"].startswith("/files/grid2/a.thumb.png?v=")
    first_sheet = snap["series"][0]["pictures"]["sheet"]
    assert first_sheet.startswith("/files/grid2/TS_01/TS_01.sheet.png?v=")
    os.utime(sheet, ns=(sheet.stat().st_atime_ns, sheet.stat().st_mtime_ns + 10**9))
    assert view.snapshot()["series"][0]["pictures"]["sheet"] != first_sheet


def test_a_page_that_joins_late_shows_the_states_movies_and_a_bounded_list_of_series():
    view = SessionView(locate=lambda name: None, clock=Clock())
    movies = [tilt_summary(movie_message(record(f"m{k}.mrc", 1.0 + k)) | {"seq": k})
              for k in range(3)]
    series = [{"series": f"TS_{k:02d}", "status": "completed", "n_done": 1, "tilts": []}
              for k in range(30)]
    view.apply("state", envelope("a", 10, movies=movies, series=series))
    snap = view.snapshot()
    assert snap["latest"]["name"] == "m2.mrc" and snap["latest"]["drift"]["total_A"] == 3.0
    assert [m["name"] for m in snap["loose"]] == ["m0.mrc", "m1.mrc", "m2.mrc"]
    assert len(snap["history"]) == 3
    assert [s["series"] for s in snap["series"]] == [f"TS_{k:02d}" for k in range(22, 30)]


def test_on_a_backlog_the_series_being_corrected_keeps_all_its_tilts():
    """A daemon started on a folder of 40 series announces them all, then corrects TS_00's
    tilts: TS_00 was pruned as the oldest open series and came back with its last tilts only."""
    view = SessionView(locate=lambda name: None, clock=Clock())
    seq = 0
    for k in range(5):
        seq += 1
        msg = movie_message(record(f"TS_00_{k:03d}_{3.0 * k}.mrc", 1.0),
                            TiltInfo(series="TS_00", tilt_deg=3.0 * k, acquisition_index=k))
        view.apply("movie", envelope("a", seq, **msg))
        for other in range(1 + 8 * k, 9 + 8 * k):  # mdocs seen meanwhile: series announced
            seq += 1
            view.apply("series", envelope("a", seq, event="started", series=f"TS_{other:02d}",
                                          n_done=0, n_expected=41))
    (ts00,) = [s for s in view.snapshot()["series"] if s["series"] == "TS_00"]
    assert len(ts00["tilts"]) == 5
    assert len(view.snapshot()["series"]) == 16  # still bounded


def test_another_daemon_on_the_feed_writing_elsewhere_starts_a_fresh_view(tmp_path):
    """Every session on the default endpoint: daemon B (out b/) stopped, daemon A (out a/)
    started, each with its TS_01. A restart into the same folder keeps the view."""
    view = SessionView(locate=lambda name: None, clock=Clock())
    view.apply("heartbeat", envelope("b", 1, interval_s=1.0, out_dir="/o/b"))
    for k in range(3):
        msg = movie_message(record(f"TS_01_{k:03d}_{3.0 * k}.mrc", 1.0),
                            TiltInfo(series="TS_01", tilt_deg=3.0 * k, acquisition_index=k))
        view.apply("movie", envelope("b", 2 + k, **msg))
    view.apply("heartbeat", envelope("b2", 1, interval_s=1.0, out_dir="/o/b"))  # restarted
    assert len(view.snapshot()["series"][0]["tilts"]) == 3
    view.apply("state", envelope("a", 1, out_dir="/o/a", series=[], movies=[]))
    msg = movie_message(record("TS_01_000_0.0.mrc", 7.0),
                        TiltInfo(series="TS_01", tilt_deg=0.0, acquisition_index=0))
    view.apply("movie", envelope("a", 2, **msg))
    snap = view.snapshot()
    [series] = snap["series"]
    assert len(series["tilts"]) == 1 and snap["latest"]["total_A"] == 7.0
    assert snap["daemon"]["out_dir"] == "/o/a" and len(snap["history"]) == 1


def test_a_dashboard_whose_out_is_not_the_daemons_folder_says_so_and_shows_no_pictures(
        tmp_path):
    """Pictures of folder B beside daemon A's numbers (a dashboard left with the last
    session's --out): they are another session's."""
    mine, theirs = tmp_path / "b", tmp_path / "a"
    for folder in (mine, theirs):
        folder.mkdir()
        (folder / "m.thumb.png").write_bytes(b"png")
    def view_of(out_dir: str) -> dict:
        view = SessionView(locate={"m.thumb.png": "/files/m.thumb.png"}.get, clock=Clock(),
                           own_folder=mine)
        view.apply("heartbeat", envelope("a", 1, interval_s=1.0, out_dir=out_dir))
        view.apply("movie", envelope("a", 2, **movie_message(record("m.mrc", 1.0))))
        return view.snapshot()

    snap = view_of(str(theirs))
    assert snap["latest"]["pictures"] == {}
    assert snap["daemon"]["problem"].startswith(f"the daemon writes into {theirs}, not into "
                                                f"{mine}")
    # the same folder (by another name: a link), or one not seen here: pictures shown
    (tmp_path / "link").symlink_to(mine)
    for out_dir in (str(tmp_path / "link"), "/mnt/elsewhere/on/the/microscope/pc"):
        snap = view_of(out_dir)
        assert snap["daemon"]["problem"] is None
        assert snap["latest"]["pictures"]["thumbnail"] == "/files/m.thumb.png"


def test_view_says_restarted_when_the_session_changes_and_silent_when_heartbeats_stop():
    clock = Clock()
    view = SessionView(locate=lambda name: None, clock=clock)
    view.apply("heartbeat", envelope("a", 1, interval_s=1.0, backlog=3, done=5, failed=0,
                                     running=1))
    assert view.daemon_state() == "live"
    view.apply("warning", envelope("a", 2, kind="stopping", message="daemon stopping: SIGTERM"))
    assert view.daemon_state() == "stopping"
    clock.t += 2
    view.apply("heartbeat", envelope("b", 1, interval_s=1.0, backlog=0, done=9, failed=0,
                                     running=0))
    snap = view.snapshot()
    assert snap["daemon"]["state"] == "restarted" and snap["daemon"]["restarts"] == 1
    assert snap["daemon"]["session"] == "b" and snap["counters"]["done"] == 9
    assert snap["warnings"] == []  # the last daemon's "stopping" is over, not a warning now
    clock.t += 3.5  # more than three heartbeat intervals without one
    assert view.daemon_state() == "silent"
    view.apply("warning", envelope("b", 2, kind="stopping", message="daemon stopping: SIGTERM"))
    assert view.daemon_state() == "stopped"  # announced, then no heartbeat: not "stopping"


def test_view_counts_lost_messages_and_compares_correction_with_arrival_rate():
    clock = Clock()
    view = SessionView(locate=lambda name: None, clock=clock)
    for k in range(4):  # 2 movies arrive per minute, 1 is corrected per minute
        view.apply("heartbeat", envelope("a", 1 + 3 * k, interval_s=30.0, backlog=k, done=k,
                                         failed=0, running=0))
        view.apply("movie", envelope("a", 2 + 3 * k, **movie_message(record(f"m{k}.mrc", 1.0))))
        clock.t += 60.0
    rates = view.snapshot()["rates"]
    assert rates["corrected_per_min"] == pytest.approx(1.0)
    assert rates["arrived_per_min"] == pytest.approx(2.0)
    assert rates["keeping_up"] is False and rates["source"] == "dashboard"
    assert view.snapshot()["feed"]["gaps"] == 3  # seq 3, 6, 9 never came


def test_the_pages_own_verdict_waits_for_two_minutes_of_arrivals():
    """On a backlog's first minute, before the daemon's pace has a verdict, the page said
    "keeping up: no" in red from a few movies' rates, then the daemon's "yes"."""
    clock = Clock()
    view = SessionView(locate=lambda name: None, clock=clock)
    for k in range(8):  # 8 movies a minute arrive, 4 are corrected, for 105 s
        view.apply("heartbeat", envelope("a", 1 + 3 * k, interval_s=5.0, backlog=k, done=k,
                                         failed=0, running=0))
        view.apply("movie", envelope("a", 2 + 3 * k, **movie_message(record(f"m{k}.mrc", 1.0))))
        clock.t += 15.0
    rates = view.snapshot()["rates"]
    assert rates["arrived_per_min"] is not None and rates["keeping_up"] is None  # shown "–"


def test_the_pages_own_correction_rate_falls_while_no_movie_is_corrected():
    """Counted here (no verdict from the daemon): a night whose corrections stop shows a rate
    that falls with the wait, not the last one for the ten minutes of the window."""
    clock = Clock()
    view = SessionView(locate=lambda name: None, clock=clock)
    for k in range(4):  # one movie a minute, then none
        view.apply("movie", envelope("a", 1 + k, **movie_message(record(f"m{k}.mrc", 1.0))))
        clock.t += 60.0
    rates = [view.snapshot()["rates"]["corrected_per_min"]]
    for _ in range(4):
        clock.t += 60.0
        rates.append(view.snapshot()["rates"]["corrected_per_min"])
    assert rates[0] == pytest.approx(1.0)          # the next one was due just now
    assert rates[1:] == pytest.approx([4 / 5, 4 / 6, 4 / 7, 4 / 8])
    clock.t += 600.0
    assert view.snapshot()["rates"]["corrected_per_min"] is None


def test_view_shows_the_daemons_own_pace_once_its_heartbeat_has_a_verdict():
    """The daemon times acquisition by the movies' modification times (a backlog counts at its
    recording rate), which the messages reaching the dashboard cannot tell."""
    clock = Clock()
    view = SessionView(locate=lambda name: None, clock=clock)
    pace = {"arrived_per_min": 6.0, "corrected_per_min": 6.5, "waiting": 3, "behind_min": 0.46,
            "keeping_up": True, "window_s": 600.0}
    for k in range(4):  # as fast as above, but the daemon says it keeps up
        view.apply("heartbeat", envelope("a", 1 + 3 * k, interval_s=30.0, backlog=k, done=k,
                                         failed=0, running=0, pace=pace))
        view.apply("movie", envelope("a", 2 + 3 * k, **movie_message(record(f"m{k}.mrc", 1.0))))
        clock.t += 60.0
    assert view.snapshot()["rates"] == {"corrected_per_min": 6.5, "arrived_per_min": 6.0,
                                        "behind_min": 0.46, "keeping_up": True,
                                        "source": "daemon"}
    view.apply("heartbeat", envelope("a", 13, interval_s=30.0, backlog=3, done=4, failed=0,
                                     running=0, pace={**pace, "corrected_per_min": None,
                                                      "keeping_up": None}))
    assert view.snapshot()["rates"]["source"] == "dashboard"  # no verdict yet: counted here


def test_a_daemon_that_went_silent_is_not_shown_as_keeping_up():
    """Killed (kill -9, a crash): no stopping message, the heartbeats just stop. Its last
    verdict says nothing about the movies arriving now."""
    clock = Clock()
    view = SessionView(locate=lambda name: None, clock=clock)
    pace = {"arrived_per_min": 6.0, "corrected_per_min": 6.5, "keeping_up": True,
            "window_s": 600.0}
    view.apply("heartbeat", envelope("a", 1, interval_s=5.0, backlog=0, done=4, failed=0,
                                     running=0, pace=pace))
    assert view.snapshot()["rates"]["keeping_up"] is True
    clock.t += 16.0  # more than three heartbeat intervals
    snap = view.snapshot()
    assert snap["daemon"]["state"] == "silent" and snap["rates"]["keeping_up"] is None
    assert snap["rates"]["corrected_per_min"] == 6.5  # the last figures stay readable


def test_files_are_served_from_the_output_folder_only(tmp_path):
    out = tmp_path / "out"
    (out / "TS_01").mkdir(parents=True)
    (out / "TS_01" / "a.thumb.png").write_bytes(b"\x89PNG")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (out / "escape.png").symlink_to(tmp_path / "secret.png")
    (out / "data.mrc").write_bytes(b"mrc")
    assert resolve_inside(out, "TS_01/a.thumb.png") == (out / "TS_01" / "a.thumb.png").resolve()
    for bad in ("../secret.png", "%2e%2e/secret.png", "TS_01/../../secret.png", "/etc/passwd",
                str(tmp_path / "secret.png"), "escape.png", "data.mrc", ".hidden.png",
                "TS_01/%00a.png"):
        assert resolve_inside(out, bad) is None, bad
    with Dashboard(DashboardConfig(feed="ipc:///nonexistent/feed", out_dir=out,
                                   listen="127.0.0.1:0")) as dash:
        host, port = re.match(r"http://(.+):(\d+)/", dash.url).groups()

        def get(path: str, host_header: str | None = None) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.putrequest("GET", path, skip_host=host_header is not None)
            if host_header is not None:
                conn.putheader("Host", host_header)
            conn.endheaders()
            response = conn.getresponse()
            try:
                return response.status, response.read()
            finally:
                conn.close()

        assert get("/files/TS_01/a.thumb.png") == (200, b"\x89PNG")
        for bad in ("/files/../secret.png", "/files/%2e%2e/secret.png",
                    "/files/TS_01/../../secret.png", "/files/escape.png", "/files//etc/passwd",
                    "/files/data.mrc", "/../secret.png"):
            assert get(bad)[0] == 404, bad
        assert get("/", host_header="evil.example:80")[0] == 403  # DNS rebinding
        assert get("/")[0] == 200 and b"/static/app.js" in get("/")[1]
        assert get("/static/app.js")[0] == 200
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("POST", "/api/state", body=b"{}")
        assert conn.getresponse().status == 501  # it only reads
        conn.close()


def _empty_dashboard(tmp_path: Path) -> Dashboard:
    """A dashboard on a feed nobody publishes, serving an empty output folder."""
    out = tmp_path / "out"
    out.mkdir()
    return Dashboard(DashboardConfig(feed="ipc:///nonexistent/feed", out_dir=out,
                                     listen="127.0.0.1:0"))


def _live_page(dash: Dashboard) -> socket.socket:
    """A raw connection holding one live stream (``/events``) of ``dash``."""
    host, port = re.match(r"http://(.+):(\d+)/", dash.url).groups()
    page = socket.create_connection((host, int(port)))
    page.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert page.recv(4096).startswith(b"HTTP/1.1 200")
    return page


def test_a_file_name_too_long_for_the_file_system_is_not_found_not_a_traceback(tmp_path,
                                                                              capsys):
    """``/files/<300 characters>.png`` raised ENAMETOOLONG in the server thread: no reply, and
    a traceback printed into the daemon's log for every such request."""
    assert resolve_inside(tmp_path, "a" * 300 + ".png") is None
    with _empty_dashboard(tmp_path) as dash:
        host, port = re.match(r"http://(.+):(\d+)/", dash.url).groups()
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/files/" + "a" * 300 + ".png")
        assert conn.getresponse().status == 404
        conn.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err


def test_a_client_that_went_away_prints_no_traceback_into_the_daemons_log(tmp_path, capsys):
    """A page closed while it was being answered (reset, broken pipe) printed the socket
    server's traceback into the daemon's log; other errors still do."""
    with _empty_dashboard(tmp_path) as dash:
        server = dash._httpd
        for gone in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe")):
            try:
                raise gone
            except OSError:
                server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert "ValueError: a bug" in capsys.readouterr().err


def test_clients_beyond_the_bounds_are_answered_503_at_once_and_the_rest_served(tmp_path,
                                                                             monkeypatch):
    """A thousand clients that connected and never left held a thread and a socket each: the
    daemon ran out of file descriptors (its correction stopped on "Too many open files") and
    the accept loop spun at a whole core. Connections and live pages are bounded now: the
    ones beyond are answered 503 without a thread, and served again once others leave."""
    import daemon.dashboard.server as server

    monkeypatch.setattr(server, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server, "MAX_EVENT_STREAMS", 2)
    with _empty_dashboard(tmp_path) as dash:
        host, port = re.match(r"http://(.+):(\d+)/", dash.url).groups()

        def status(path: str) -> int:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", path)
            try:
                return conn.getresponse().status
            finally:
                conn.close()

        def becomes(path: str, code: int, within_s: float = 10.0) -> float:
            """Seconds until ``path`` answers ``code`` (asserted within ``within_s``)."""
            began = time.monotonic()
            while status(path) != code:
                assert time.monotonic() - began < within_s, f"{path} never answered {code}"
                time.sleep(0.1)
            return time.monotonic() - began

        pages = [_live_page(dash) for _ in range(2)]
        assert status("/events") == 503  # a third live page
        idle = [socket.create_connection((host, int(port))) for _ in range(2)]  # say nothing
        becomes("/api/state", 503)  # once the server has taken them
        for sock in idle:
            sock.close()
        becomes("/api/state", 200)
        for page in pages:  # closed pages are seen within 2 s, not at the next push
            page.close()
        assert becomes("/events", 200) < 5.0  # (_PUSH_IDLE_S, 10 s, before)


def _pushes(dash: Dashboard) -> tuple[http.client.HTTPConnection, list[bytes]]:
    """A page's connection to ``/events`` and the list its pushed views are added to."""
    host, port = re.match(r"http://(.+):(\d+)/", dash.url).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/events")
    stream = conn.getresponse()
    pushes: list[bytes] = []
    threading.Thread(target=lambda: pushes.extend(
        line for line in iter(stream.readline, b"") if line.startswith(b"data: ")),
        daemon=True).start()
    return conn, pushes


def test_an_idle_view_is_not_sent_to_the_page_every_second(tmp_path):
    """An open page was sent the whole view every second while nothing changed (half a MB for
    a full page, and a fifth of a core to draw it again, all night); now once, then when it
    changes (or the daemon's state does, or every ten seconds)."""
    with Dashboard(DashboardConfig(feed="ipc:///nonexistent/feed", out_dir=tmp_path,
                                   listen="127.0.0.1:0")) as dash:
        conn, pushes = _pushes(dash)
        time.sleep(3.5)
        assert len(pushes) == 1  # the view as it is; nothing changed since
        with dash._lock:  # as a feed message is folded in
            dash.view.apply("heartbeat", envelope("a", 1, interval_s=5, done=0, backlog=0,
                                                  running=0, failed=0))
            dash._lock.notify_all()
        _wait(lambda: len(pushes) == 2, 5, "the changed view")
        conn.close()


def test_an_unchanged_view_is_sent_again_every_idle_period(tmp_path, monkeypatch):
    import daemon.dashboard.server as dash_server

    monkeypatch.setattr(dash_server, "_PUSH_IDLE_S", 1.5)
    with Dashboard(DashboardConfig(feed="ipc:///nonexistent/feed", out_dir=tmp_path,
                                   listen="127.0.0.1:0")) as dash:
        conn, pushes = _pushes(dash)
        _wait(lambda: len(pushes) >= 1, 5, "the first view")
        _wait(lambda: len(pushes) >= 2, 5, "the unchanged view sent again")
        conn.close()


def test_a_daemon_gone_silent_is_pushed_without_a_new_message(tmp_path):
    with Dashboard(DashboardConfig(feed="ipc:///nonexistent/feed", out_dir=tmp_path,
                                   listen="127.0.0.1:0")) as dash:
        with dash._lock:
            dash.view.apply("heartbeat", envelope("a", 1, interval_s=0.2, done=0, backlog=0,
                                              running=0, failed=0))
            dash._lock.notify_all()
        conn, pushes = _pushes(dash)
        _wait(lambda: any(b'"state": "silent"' in p for p in pushes), 5,
              "the silent state pushed (well before the 10 s idle resend)")
        conn.close()


def test_two_warnings_of_one_kind_and_series_with_different_texts_are_both_listed():
    view = SessionView(locate=lambda name: None, clock=lambda: 1000.0)
    view.apply("warning", envelope("a", 1, kind="mdoc", series="TS_01", path=None,
                               message="TS_01: tilt 3 has no ExposureDose"))
    view.apply("warning", envelope("a", 2, kind="mdoc", series="TS_01", path=None,
                               message="TS_01: tilt 7 has no ExposureDose"))
    assert [w["message"] for w in view.snapshot()["warnings"]] == [
        "TS_01: tilt 7 has no ExposureDose", "TS_01: tilt 3 has no ExposureDose"]


def test_movie_names_with_glob_characters_or_bytes_not_utf8_find_only_their_own_pictures(
        tmp_path):
    """The picture of a movie is looked up by name: ``**.thumb.png`` made the lookup raise
    (the whole page then stopped, for every client), ``*`` and ``[x]`` matched other movies'
    pictures, and a name that is not UTF-8 could not be put in a URL."""
    from daemon.dashboard.server import _Locator

    for name in ("x.thumb.png", "[x].thumb.png", "**.thumb.png",
                 os.fsdecode(b"bad\xff.thumb.png")):
        (tmp_path / name).write_bytes(b"png")
    locate = _Locator(tmp_path)
    assert locate("[x].thumb.png").startswith("/files/%5Bx%5D.thumb.png?v=")
    assert locate("**.thumb.png").startswith("/files/%2A%2A.thumb.png?v=")
    assert locate("*.thumb.png") is None  # no such picture: not another movie's
    url = locate(os.fsdecode(b"bad\xff.thumb.png"))
    assert url.startswith("/files/bad%FF.thumb.png?v=")
    served = resolve_inside(tmp_path, url[len("/files/"):].split("?")[0])
    assert served == (tmp_path / os.fsdecode(b"bad\xff.thumb.png")).resolve()


def test_a_malformed_feed_message_is_counted_and_the_view_goes_on():
    """A ``series`` message without its series name raised in the feed thread, which then
    died: the page showed a silent daemon until the dashboard was restarted."""
    view = SessionView(locate=lambda name: None, clock=Clock())
    view.apply("series", envelope("a", 1, event="started"))  # no "series"
    view.apply("heartbeat", envelope("a", 2, done=1, backlog=0, running=0, failed=0))
    snap = view.snapshot()
    assert snap["feed"]["invalid"] == 1 and snap["daemon"]["state"] == "live"


def test_a_failed_movie_corrected_since_is_no_longer_listed_as_failed():
    view = SessionView(locate=lambda name: None, clock=Clock())
    view.apply("error", envelope("a", 1, path="/data/m.mrc", reason="UnreadableMovieError"))
    assert len(view.snapshot()["errors"]) == 1
    view.apply("movie", envelope("a", 2, **movie_message(record("m.mrc", 1.0))))
    assert view.snapshot()["errors"] == []


def test_errors_and_warnings_name_the_movie_by_its_folder_where_two_grids_share_a_name():
    """grid1/x.mrc and grid2/x.mrc quarantined, and drift warnings of two grids' TS_01_000.tif:
    the page printed ``x.mrc: ...`` twice, and the warnings by file name only, so nobody could
    tell which grid's movie was meant. They are named below the folder holding every movie the
    view heard of; in a session of one folder, by the file name as before."""
    view = SessionView(locate=lambda name: None, clock=Clock())
    for seq, grid in enumerate(("grid1", "grid2"), 1):
        view.apply("error", envelope("a", seq, path=f"/data/s/{grid}/x.mrc",
                                     reason="quarantined: not an MRC file"))
    view.apply("warning", envelope("a", 3, kind="drift_total", path="/data/s/grid2/TS_01_000.tif",
                                   message="TS_01_000.tif: total drift 90.0 Å above 60 Å"))
    snap = view.snapshot()
    assert [e["shown"] for e in snap["errors"]] == ["grid2/x.mrc", "grid1/x.mrc"]
    assert snap["warnings"][0]["message"] == "grid2/TS_01_000.tif: total drift 90.0 Å above 60 Å"

    one_folder = SessionView(locate=lambda name: None, clock=Clock())
    one_folder.apply("error", envelope("a", 1, path="/data/s/y.mrc", reason="quarantined"))
    one_folder.apply("movie", envelope("a", 2, **movie_message(record("s/m.mrc", 1.0))))
    assert [e["shown"] for e in one_folder.snapshot()["errors"]] == ["y.mrc"]


def test_a_restarts_failures_and_warnings_are_listed_once_in_the_order_they_happened():
    """A daemon's restart sends the failures and warnings it restored again (without a seq,
    warnings stamped anew): each was listed once more per restart, above newer ones."""
    view = SessionView(locate=lambda name: None, clock=Clock())
    view.apply("error", envelope("a", 1, path="/data/g/old.mrc", reason="not an MRC file",
                                 time="2026-12-06T01:00:00.000Z"))
    view.apply("error", envelope("a", 2, path="/data/g/new.mrc", reason="not an MRC file",
                                 time="2026-12-06T03:00:00.000Z"))
    stacks = {"kind": "series_assembly_failed", "series": "TS_02", "path": None,
              "message": "TS_02: stacks not written: assembly failed"}
    view.apply("warning", envelope("a", 3, time="2026-12-06T03:30:00.000Z", **stacks))
    for restart, seq in (("b", 1), ("c", 1)):
        restored = {"series": [], "movies": [], "heartbeat": None,
                    "errors": [{"path": "/data/g/old.mrc", "seq": None,
                                "reason": "quarantined: not an MRC file",
                                "time": "2026-12-06T01:00:01.000Z"},
                               {"path": "/data/g/gone.mrc", "seq": None,
                                "reason": "quarantined: file is 0 bytes",
                                "time": "2026-12-06T02:00:00.000Z"}],
                    "warnings": [{**stacks, "time": f"2026-12-06T04:0{len(restart)}:00.000Z"}]}
        view.apply("state", envelope(restart, seq, **restored))
    snap = view.snapshot()
    assert [e["path"] for e in snap["errors"]] == ["/data/g/new.mrc", "/data/g/gone.mrc",
                                                   "/data/g/old.mrc"]
    assert [w["series"] for w in snap["warnings"]] == ["TS_02"]


def test_a_page_that_joins_after_a_restart_shows_the_movie_done_last_as_the_latest():
    """Movies restored from the state database after a restart carry no seq; the latest was
    chosen by seq, so a page opened then showed whichever the sort put last."""
    view = SessionView(locate=lambda name: None, clock=Clock())
    movies = [tilt_summary(movie_message(record(name, 1.0)) | {"time": time_, "seq": None})
              for name, time_ in (("late.mrc", "2026-01-01T10:00:09.000Z"),
                                  ("early.mrc", "2026-01-01T10:00:01.000Z"))]
    view.apply("state", envelope("b", 1, movies=movies, series=[]))
    assert view.snapshot()["latest"]["name"] == "late.mrc"


def test_the_host_header_is_checked_on_loopback_even_when_remote_clients_are_allowed(tmp_path):
    """``--allow-remote --listen 127.0.0.1:...`` let a page of another site reach the dashboard
    through DNS rebinding; every response also refuses to be framed, and an idle connection
    is closed."""
    from daemon.dashboard import server

    with Dashboard(DashboardConfig(feed="ipc:///nonexistent/feed", out_dir=tmp_path,
                                   listen="127.0.0.1:0", allow_remote=True)) as dash:
        host, port = re.match(r"http://(.+):(\d+)/", dash.url).groups()
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.putrequest("GET", "/", skip_host=True)
        conn.putheader("Host", "evil.example")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 403
        assert response.getheader("X-Frame-Options") == "DENY"
        assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy")
        conn.close()
    assert server._Handler.timeout == server._IDLE_TIMEOUT_S


def test_dashboard_listens_on_loopback_unless_allowed(tmp_path):
    with pytest.raises(DashboardError, match="--allow-remote"):
        DashboardConfig(feed="tcp://127.0.0.1:5557", out_dir=tmp_path, listen="0.0.0.0:8765")
    DashboardConfig(feed="tcp://127.0.0.1:5557", out_dir=tmp_path, listen="0.0.0.0:8765",
                    allow_remote=True)
    with pytest.raises(DashboardError, match="HOST:PORT"):
        DashboardConfig(feed="tcp://127.0.0.1:5557", out_dir=tmp_path, listen="8765")


# --------------------------------------------------------------------------- the real page


def _chromium() -> str:
    return require_tool(CHROMIUM, "chromium")


def _wait(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_page_in_headless_chromium_follows_a_simulated_series_live_and_shows_a_restart(tmp_path):
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    from daemon.simulation.tilt_series import simulate_tilt_series

    short = Path(tempfile.mkdtemp(prefix="mwd", dir="/tmp"))  # ipc:// paths must stay short
    endpoint = f"ipc://{short}/feed"
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    out.mkdir()
    daemon_argv = watch_argv(watch, out, "--dose-per-frame", "1.0", "--settle-time", "0.3",
                             "--scan-interval", "0.1", "--heartbeat", "0.5",
                             "--tilt-series", "on", "--metadata-wait", "30",
                             "--mdoc-quiet", "60", "--publish", endpoint)
    dash_log, log = tmp_path / "dashboard.log", tmp_path / "daemon.log"
    dash = spawn([sys.executable, "-m", "daemon", "dashboard", "--feed", endpoint, "--out",
                  str(out), "--listen", "127.0.0.1:0"], dash_log)
    daemon = spawn(daemon_argv, log)
    try:
        url = _wait(lambda: re.search(r"(http://127\.0\.0\.1:\d+/)", dash_log.read_text()),
                    20, "the dashboard's address").group(1)
        _wait(lambda: any(e.get("event") == "service_ready" for e in events(log)), 30,
              "the daemon")
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS[1:],
                                         headless=True)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                              bypass_csp=True,  # lets playwright evaluate
                                              timezone_id="Europe/Berlin")
                page = context.new_page()
                console_errors: list[str] = []
                page.on("console", lambda m: console_errors.append(m.text)
                        if m.type == "error" else None)
                page.goto(url)
                page.evaluate("window.__loadedOnce = true")  # gone if the page reloads
                rows_seen: list[int] = []
                done = threading.Event()

                def simulate() -> None:
                    try:
                        simulate_tilt_series(watch, rng=np.random.default_rng(5),
                                             n_tilts=5, shape_yx=(128, 128), n_frames=4,
                                             frame_interval_s=0.02, tilt_interval_s=0.6)
                    finally:
                        done.set()

                thread = threading.Thread(target=simulate)
                thread.start()
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    n = page.locator("div[data-series='TS_01'] tr.tilt").count()
                    if not rows_seen or rows_seen[-1] != n:
                        rows_seen.append(n)
                    if n == 5 and done.is_set():
                        break
                    page.wait_for_timeout(100)
                thread.join()
                assert rows_seen[-1] == 5, rows_seen
                # tilts appear as they are corrected, never taken back: the count only grows,
                # through at least one partial state (how many depends on timing, not asserted)
                assert rows_seen == sorted(rows_seen), rows_seen
                assert any(0 < n < 5 for n in rows_seen), rows_seen
                assert page.evaluate("window.__loadedOnce") is True  # live, never reloaded
                angles = page.locator("div[data-series='TS_01'] tr.tilt td:first-child")
                assert [float(a) for a in angles.all_inner_texts()] == [-6.0, -3.0, 0.0, 3.0, 6.0]
                # the latest movie's thumbnail, spectrum and drift plot are loaded pictures
                for pic in ("latest-thumb", "latest-spectrum", "latest-drift"):
                    page.wait_for_function(
                        f"document.getElementById('{pic}').naturalWidth > 0", timeout=15000)
                latest = page.locator("#latest-name").inner_text()
                assert latest.startswith("TS_01_")
                # a failure's time on the clock of the room (UTC+1 here), not the UTC one
                assert page.evaluate("clock('2026-11-25T23:10:00.000Z')") == "00:10:00"
                # no request fails (the favicon the page named none of was a 404 each load)
                assert console_errors == [], console_errors
                # a name's bidirectional override is shown, not obeyed (it would reorder it)
                assert page.evaluate("el('td', {}, 'TS_01_\\u202egpj.mrc').textContent") \
                    == "TS_01_\ufffdgpj.mrc"
                # messages the daemon's publisher dropped (a full queue) are shown, not only the
                # gaps this page saw
                assert "dropped by the daemon" in page.locator("#counters").inner_text()
                page.wait_for_function("document.getElementById('daemon-state').dataset.state"
                                       " === 'live'", timeout=15000)

                daemon.send_signal(signal.SIGTERM)  # restart: a new session on the same feed
                assert daemon.wait(timeout=30) == 0
                # stopping announced, then no heartbeat: "stopped"; a page that polled only
                # after that (a loaded machine) never showed "stopping"
                page.wait_for_function("['stopping', 'stopped', 'silent'].includes("
                                       "document.getElementById('daemon-state').dataset.state)",
                                       timeout=15000)
                daemon = spawn(daemon_argv, log)
                page.wait_for_function("document.getElementById('daemon-state').dataset.state"
                                       " === 'restarted'", timeout=30000)
                assert "(1x, new session)" in page.locator("#daemon-state").text_content()
                assert page.locator("div[data-series='TS_01'] tr.tilt").count() == 5
                assert re.search(r"· 5(/5)? tilts",
                                 page.locator("div[data-series='TS_01'] h3").inner_text())
                shot = page.screenshot(full_page=False)
                (tmp_path / "dashboard.png").write_bytes(shot)
                if os.environ.get("MOTIONWATCH_SAVE_SCREENSHOT"):
                    Path(os.environ["MOTIONWATCH_SAVE_SCREENSHOT"]).write_bytes(shot)
                # the dashboard gone: the page no longer says the daemon is live
                dash.send_signal(signal.SIGTERM)
                assert dash.wait(timeout=15) == 0
                page.wait_for_function("document.getElementById('daemon-state').dataset.state"
                                       " === 'unreachable'", timeout=15000)
                # a series' heading counts the tilts the daemon counts done (a page that joined
                # after a restart has its newest movies only), and the drift chart's max is the
                # largest drift, not the warning threshold above it
                page.evaluate("renderSeries({thresholds: {}, series: [{series: 'TS_07', "
                              "status: 'completed', n_done: 41, n_expected: 41, n_failed: 0, "
                              "tilts: [], pictures: {}}]})")
                assert "TS_07 · completed · 41/41 tilts" in page.locator(
                    "div[data-series='TS_07'] h3").inner_text()
                assert page.evaluate(
                    "(() => { const d = document.createElement('div'); sparkline(d, [{v: 3}, "
                    "{v: 15}], 'v', 40, 'drift'); return d.querySelector('text').textContent; "
                    "})()") == "drift (max 15.0)"
                # another folder than the daemon's: said above everything; a session with no
                # movie yet (another daemon on the feed) shows none of the last one's
                page.evaluate("renderHeader({daemon: {state: 'live', session: 'abcdef012', "
                              "host: 'em', restarts: 0, out_dir: '/o/a', problem: 'the daemon "
                              "writes into /o/a, not into /o/b'}})")
                assert page.locator("#problem").is_visible()
                assert page.locator("#problem").inner_text().startswith(
                    "the daemon writes into /o/a")
                assert "writing into /o/a" in page.locator("#session").inner_text()
                page.evaluate("renderLatest({latest: null})")
                assert page.locator("#latest-name").inner_text() == "none yet"
                assert page.evaluate(
                    "document.getElementById('latest-thumb').hasAttribute('src')") is False
                page.evaluate("renderHeader({daemon: {state: 'waiting', session: null, "
                              "restarts: 0, feed: 'tcp://127.0.0.1:5999', problem: null}})")
                assert not page.locator("#problem").is_visible()
                assert page.locator("#session").inner_text() == (
                    "nothing heard from tcp://127.0.0.1:5999 yet")
            finally:
                browser.close()
    finally:
        for proc in (daemon, dash):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(short, ignore_errors=True)
    assert dash.returncode == 0, dash_log.read_text()[-2000:]


def test_a_page_refused_by_the_bounds_says_so_and_connects_once_a_slot_is_free(tmp_path,
                                                                             monkeypatch):
    """A page whose live stream was answered 503 (the dashboard's bounds) stayed frozen for
    good under a "live" badge: a browser does not retry an event stream refused with an HTTP
    error, and the snapshot fetched beside it overwrote the "unreachable" badge. It says it
    is not live now, and opens its stream again every 5 s until one is free."""
    import daemon.dashboard.server as server

    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    monkeypatch.setattr(server, "MAX_EVENT_STREAMS", 1)
    with _empty_dashboard(tmp_path) as dash:
        held = _live_page(dash)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS[1:],
                                         headless=True)
            try:
                page = browser.new_context(bypass_csp=True).new_page()  # lets it evaluate
                page.goto(dash.url)
                page.wait_for_timeout(1500)  # the snapshot fetched, the stream refused
                assert page.locator("#daemon-state").get_attribute("data-state") \
                    == "unreachable"
                held.close()
                page.wait_for_function(  # connected, and the view it was sent shown
                    "document.getElementById('connection').textContent === 'connected' && "
                    "document.getElementById('daemon-state').dataset.state !== 'unreachable'",
                    timeout=15000)
            finally:
                browser.close()


def test_the_dashboard_command_on_a_port_in_use_exits_69_not_2(tmp_path, capsys):
    """A port another program holds is out of reach for now, not a usage error (2)."""
    from daemon.commands.cli import main

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        status = main(["dashboard", "--feed", "tcp://127.0.0.1:5557", "--out", str(tmp_path),
                       "--listen", f"127.0.0.1:{port}"])
    assert status == 69
    assert f"--listen 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["dashboard", "--feed", "tcp://127.0.0.1:5557", "--out", str(tmp_path),
                 "--listen", "127.0.0.1:99999"]) == 2  # a wrong value is still a usage error
