"""Watch a running daemon live: tilt series, tilts arriving, drift per tilt, warnings, heartbeat.

Subscribes to the daemon's ZeroMQ feed (default tcp://127.0.0.1:5557; see docs/zmq.md) and
draws a terminal view. On connecting it receives the daemon's current state (open series and
their tilts so far). It keeps going when the daemon restarts: it reconnects by itself, notes the
new session, and counts messages it missed (gaps in seq). The heartbeat age turns red when the
daemon has been silent for three heartbeat intervals. Ctrl-C quits.

With --once it waits for the state, prints one view and exits (0; 1 if nothing arrived).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.markup import escape
from rich.text import Text

from daemon import exitcodes
from daemon.feed.endpoint import endpoint_is_local, ipc_connect_problem
from daemon.feed.messages import series_status
from daemon.system.terminal_text import printable

__all__ = ["add_arguments", "run", "MonitorState", "SeriesView", "render", "sparkline", "EXAMPLES"]

EXAMPLES = """examples:
  motionwatch monitor
  motionwatch monitor ipc:///run/motionwatch/feed
  motionwatch monitor tcp://em-pc:5557 --curve-server-key server.key --curve-client-key me.key_secret
  motionwatch monitor --once
"""

_SPARK = "▁▂▃▄▅▆▇█"
_BAR_WIDTH = 20
_KEPT_WARNINGS = 50


def sparkline(values: list[float | None], *, top: float | None = None,
              width: int | None = None) -> str:
    """One character per value, height proportional to ``value / top`` (``top``: the maximum);
    a missing value is a space. ``width``: at most this many characters, each the largest of
    consecutive values (41 tilts took the other columns' room at 80 columns)."""
    if width is not None and len(values) > width:
        size = -(-len(values) // width)
        values = [max((v for v in values[i:i + size] if v is not None), default=None)
                  for i in range(0, len(values), size)]
    present = [v for v in values if v is not None]
    if not present:
        return ""
    top = top if top is not None else max(present)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            level = 0 if top <= 0 else min(len(_SPARK) - 1, int(v / top * (len(_SPARK) - 1) + 0.5))
            out.append(_SPARK[max(level, 0)])
    return "".join(out)


@dataclass
class SeriesView:
    """One tilt series as the monitor knows it; ``tilts`` maps a movie path to its summary."""

    name: str
    status: str = "open"
    n_done: int | None = None
    n_failed: int | None = None
    n_expected: int | None = None
    accumulated_dose_e_A2: float | None = None
    tilts: dict[str, dict[str, Any]] = field(default_factory=dict)
    updated_at: float = 0.0  # receipt time (monitor's monotonic clock)

    def ordered_tilts(self) -> list[dict[str, Any]]:
        """Tilts in acquisition order (arrival order where the index is unknown)."""
        rows = list(self.tilts.values())
        return sorted(rows, key=lambda t: (t.get("acquisition_index") is None,
                                           t.get("acquisition_index") or 0, t.get("seq") or 0))


class MonitorState:
    """What the monitor has learnt from the feed; :meth:`apply` folds in one message.

    Times are receipt times on the monitor's own clock (``received_at``, seconds), never the
    daemon's clock, which may differ.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.session: str | None = None
        self.host: str | None = None
        self.version: str | None = None
        self.restarts = 0
        self.last_seq: int | None = None
        self.missed = 0
        self.received = 0
        self.invalid = 0
        self.heartbeat: dict[str, Any] | None = None
        self.heartbeat_at: float | None = None
        self.series: dict[str, SeriesView] = {}
        self.movies: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.warnings: collections.deque[dict] = collections.deque(maxlen=_KEPT_WARNINGS)
        self.errors: collections.deque[dict] = collections.deque(maxlen=_KEPT_WARNINGS)
        self._seen_notes: set[tuple] = set()
        self.out_dir: str | None = None  # the daemon's output folder, as its feed says
        self.stopping: str | None = None  # the daemon said it stops (its message)

    def _series(self, name: str, received_at: float) -> SeriesView:
        view = self.series.get(name)
        if view is None:
            view = self.series[name] = SeriesView(name=name)
        view.updated_at = received_at
        return view

    def _add_tilt(self, summary: Mapping[str, Any], series: str | None, received_at: float) -> None:
        path = summary.get("path") or summary.get("name")
        if series is None:
            self.movies[path] = dict(summary)
            while len(self.movies) > 20:
                self.movies.popitem(last=False)
        else:
            self._series(series, received_at).tilts[path] = dict(summary)

    def _note(self, kind: str, body: Mapping[str, Any]) -> None:
        key = (kind, body.get("session"), body.get("seq"), body.get("path"),
               body.get("message") or body.get("reason"))  # restored ones have no seq
        if key in self._seen_notes:
            return  # a state snapshot repeats notes already received
        self._seen_notes.add(key)
        if kind == "error" and body.get("path"):  # a movie's error: its latest only (a
            self._clear_errors(body["path"])  # restarted daemon's state restores it)
        (self.warnings if kind == "warning" else self.errors).append(dict(body))

    def _clear_errors(self, path: str) -> None:
        """Forget the errors of the movie at ``path`` (corrected since, or said again)."""
        kept = [e for e in self.errors if e.get("path") != path]
        if len(kept) != len(self.errors):
            self.errors = collections.deque(kept, maxlen=self.errors.maxlen)

    def apply(self, topic: str, body: Mapping[str, Any], received_at: float) -> None:
        """Fold one message into the state (idempotent for ``state`` and repeated movies); one
        that does not fit the schema is counted in ``invalid``, never fatal."""
        try:
            self._apply(topic, body, received_at)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.invalid += 1

    def _apply(self, topic: str, body: Mapping[str, Any], received_at: float) -> None:
        from daemon.feed.messages import tilt_summary

        self.received += 1
        if topic == "invalid" or "seq" not in body or "session" not in body:
            self.invalid += 1
            return
        session = body["session"]
        if session != self.session:
            if self.session is not None:
                self.restarts += 1
                self.heartbeat = self.heartbeat_at = None  # the old daemon's; series are kept
                self.stopping = None
                self.warnings = collections.deque(  # its "stopping" is over
                    (w for w in self.warnings if w.get("kind") != "stopping"),
                    maxlen=self.warnings.maxlen)
            self.session = session
            self.last_seq = None
        out_dir = body.get("out_dir") if topic in ("state", "heartbeat") else None
        if isinstance(out_dir, str) and out_dir:  # (a state sent before it is known has none)
            if self.out_dir is not None and out_dir != self.out_dir:
                self._another_folder()
            self.out_dir = out_dir
        self.host = body.get("host", self.host)
        seq = body["seq"]
        if isinstance(seq, int):
            if self.last_seq is not None and seq > self.last_seq + 1:
                self.missed += seq - self.last_seq - 1
            self.last_seq = seq if self.last_seq is None else max(self.last_seq, seq)

        if topic == "movie":
            summary = tilt_summary(body)
            self._add_tilt(summary, body.get("series"), received_at)
            if body.get("path"):  # corrected (a retried movie): no longer an error
                self._clear_errors(body["path"])
        elif topic == "series":
            view = self._series(body["series"], received_at)
            view.status = series_status(view.status, topic, body)
            for key in ("n_done", "n_failed", "n_expected", "accumulated_dose_e_A2"):
                if body.get(key) is not None:
                    setattr(view, key, body[key])
        elif topic == "heartbeat":
            self.heartbeat = dict(body)
            self.heartbeat_at = received_at
            self.version = body.get("version", self.version)
        elif topic in ("warning", "error"):
            self._note(topic, body)
            if topic == "warning" and body.get("kind") == "stopping":
                self.stopping = str(body.get("message") or "daemon stopping")
            if topic == "warning" and body.get("series") in self.series:
                view = self.series[str(body["series"])]  # e.g. its stacks were not written
                view.status = series_status(view.status, topic, body)
        elif topic == "state":
            for entry in body.get("series") or []:
                view = self._series(entry["series"], received_at)
                view.status = entry.get("status", view.status)
                for key in ("n_done", "n_failed", "n_expected", "accumulated_dose_e_A2"):
                    if entry.get(key) is not None:
                        setattr(view, key, entry[key])
                for tilt in entry.get("tilts") or []:
                    view.tilts[tilt.get("path") or tilt.get("name")] = dict(tilt)
            for movie in body.get("movies") or []:
                self._add_tilt(movie, None, received_at)
            for note in body.get("warnings") or []:
                self._note("warning", {**note, "session": session})
            for note in body.get("errors") or []:
                self._note("error", {**note, "session": session})
            beat = body.get("heartbeat")
            if beat and (self.heartbeat is None
                         or (beat.get("seq") or 0) > (self.heartbeat.get("seq") or 0)):
                self.heartbeat = dict(beat)
                self.version = beat.get("version", self.version)
                # its age at receipt, from two times on the daemon's clock (never ours)
                age = _seconds_between(beat.get("time"), body.get("time"))
                self.heartbeat_at = None if age is None else received_at - max(age, 0.0)

    def _another_folder(self) -> None:
        """The feed is another daemon's, writing into another output folder (every session
        on the default endpoint): its series are not this one's (two TS_01 were merged)."""
        self.series.clear()
        self.movies.clear()
        self.warnings.clear()
        self.errors.clear()
        self._seen_notes.clear()

    def by_recency(self) -> list[SeriesView]:
        """The series, the one with news last at the end: by receipt, then (a state names them
        all at once) by their newest tilt's time."""
        return sorted(self.series.values(), key=lambda v: (
            v.updated_at, max((str(t.get("time") or "") for t in v.tilts.values()),
                              default="")))

    def focus(self) -> SeriesView | None:
        """The series to show in full: the open one with news last, else the latest."""
        if not self.series:
            return None
        views = self.by_recency()
        return next((v for v in reversed(views) if v.status == "open"), views[-1])


def _seconds_between(earlier: Any, later: Any) -> float | None:
    """Seconds from one ISO 8601 time to another; None when either is missing or malformed."""
    try:
        return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
    except (TypeError, ValueError):
        return None


def _fmt(value: Any, spec: str = ".1f", missing: str = "–") -> str:
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return escape(printable(value))  # not a number (a malformed message): shown as text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _clock(iso: str | None) -> str:
    return iso[11:19] if isinstance(iso, str) and len(iso) >= 19 else "--:--:--"


def _thresholds(state: MonitorState) -> dict[str, Any]:
    return (state.heartbeat or {}).get("drift_thresholds") or {}


def _header(state: MonitorState, now: float) -> Text:
    text = Text()
    text.append("motionwatch monitor", style="bold")
    text.append(f"  {state.endpoint}")
    if state.host:
        text.append(f"  host {printable(state.host)}")
    if state.session:
        text.append(f"  session {state.session[:8]}")
    if state.version:
        text.append(f"  v{state.version}")
    text.append("\n")
    hb = state.heartbeat
    if state.session is None:
        text.append("waiting for the daemon…", style="yellow")
    elif state.heartbeat_at is None:
        text.append("no heartbeat yet", style="yellow")
    else:
        age = now - state.heartbeat_at
        try:
            interval = float((hb or {}).get("interval_s") or 5.0)
        except (TypeError, ValueError):
            interval = 5.0
        if age > 3 * interval and state.stopping:
            text.append(f"daemon stopped ({printable(state.stopping)})", style="yellow")
        elif age > 3 * interval:
            text.append(f"no heartbeat for {age:.0f} s: daemon down?", style="bold red")
        else:
            text.append(f"heartbeat {age:.0f} s ago", style="green")
    if hb:
        text.append(f"  done {hb.get('done', 0)}  failed {hb.get('failed', 0)}  "
                    f"backlog {hb.get('backlog', 0)}  running {hb.get('running', 0)}  "
                    f"uptime {_duration(hb.get('uptime_s'))}")
    if state.missed:
        text.append(f"  missed {state.missed} messages", style="yellow")
    if state.restarts:
        text.append(f"  daemon restarted {state.restarts}x", style="yellow")
    if state.invalid:
        text.append(f"  {state.invalid} invalid messages", style="red")
    return text


def _plain(value: Any) -> Text:
    """A cell or title from a name: never read as markup (``[red]``, ``[link=...]``)."""
    return Text(printable(value))


def _series_title(view: SeriesView) -> Text:
    n = len(view.tilts)
    expected = f"/{view.n_expected}" if view.n_expected else ""
    parts = [f"{view.name} ({view.status})", f"{n}{expected} tilts"]
    if view.n_failed:
        parts.append(f"{view.n_failed} failed")
    if view.accumulated_dose_e_A2 is not None:
        parts.append(f"dose {_fmt(view.accumulated_dose_e_A2)} e/Å²")
    return _plain(" · ".join(parts))


def _tilt_table(view: SeriesView, thresholds: Mapping[str, Any], max_rows: int) -> Table:
    tilts = view.ordered_tilts()
    limit = thresholds.get("max_total_drift_A")
    totals = [t.get("total_A") for t in tilts]
    present = [v for v in totals if v is not None]
    top = max([*present, limit or 0.0, 1e-9])
    table = Table(title=_series_title(view), title_justify="left", expand=False,
                  caption=f"drift per tilt, acquisition order: {sparkline(totals, top=top)}",
                  caption_justify="left")
    for name, justify in (("#", "right"), ("tilt °", "right"), ("pre e/Å²", "right"),
                          ("total Å", "right"), ("early", "right"), ("late", "right"),
                          ("jump", "right"), ("local", "center"), ("res Å", "right"),
                          ("drift", "left"), ("movie", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    shown = tilts[-max_rows:] if max_rows > 0 else []
    if len(tilts) > len(shown):
        table.add_row("…", f"{len(tilts) - len(shown)} earlier", *[""] * 9)
    for tilt in shown:
        total = tilt.get("total_A")
        bad = limit is not None and total is not None and total > limit
        jump_limit = thresholds.get("max_frame_jump_A")
        jump = tilt.get("max_frame_jump_A")
        width = 0 if total is None else max(1, round(total / top * _BAR_WIDTH))
        index = tilt.get("acquisition_index")
        table.add_row(
            "" if index is None else str(index),
            _fmt(tilt.get("tilt_deg")),
            _fmt(tilt.get("pre_exposure_e_A2")),
            Text(_fmt(total), style="bold red" if bad else ""),
            _fmt(tilt.get("early_A")),
            _fmt(tilt.get("late_A")),
            Text(_fmt(jump), style="bold red" if (jump_limit is not None and jump is not None
                                                   and jump > jump_limit) else ""),
            _fmt(tilt.get("local_applied")),
            _fmt(tilt.get("resolution_A")),
            Text("█" * width, style="red" if bad else "cyan"),
            _plain(tilt.get("name") or ""),
        )
    return table


def _other_series(views: list[SeriesView]) -> Table:
    table = Table(title="other series", title_justify="left")
    for name in ("series", "status", "tilts", "dose e/Å²", "median Å", "max Å", "drift"):
        table.add_column(name, no_wrap=True)
    for view in views:
        totals = [t.get("total_A") for t in view.ordered_tilts()]
        present = [v for v in totals if v is not None]
        expected = f"/{view.n_expected}" if view.n_expected else ""
        table.add_row(_plain(view.name), _plain(view.status), f"{len(view.tilts)}{expected}",
                      _fmt(view.accumulated_dose_e_A2),
                      _fmt(statistics.median(present) if present else None),
                      _fmt(max(present) if present else None), sparkline(totals, width=20))
    return table


def render(state: MonitorState, now: float, *, max_rows: int = 20,
           max_notes: int = 5) -> RenderableType:
    """The whole view, a pure function of ``state`` and the time ``now`` (monitor's clock, s).

    Parameters
    ----------
    max_rows : int
        Tilts shown for the focused series (the latest ones; earlier ones are counted).
    max_notes : int
        Warnings shown (latest); errors show up to half as many.
    """
    parts: list[RenderableType] = [_header(state, now)]
    focus = state.focus()
    if focus is not None:
        parts.append(_tilt_table(focus, _thresholds(state), max_rows))
        others = [v for v in state.by_recency() if v is not focus]
        if others:
            parts.append(_other_series(others[-8:]))
    if state.movies:
        loose = Table(title="movies outside a series", title_justify="left")
        for name in ("movie", "total Å", "jump", "res Å"):
            loose.add_column(name, no_wrap=True)
        for movie in list(state.movies.values())[-5:]:
            loose.add_row(_plain(movie.get("name")), _fmt(movie.get("total_A")),
                          _fmt(movie.get("max_frame_jump_A")), _fmt(movie.get("resolution_A")))
        parts.append(loose)
    if state.warnings:
        text = Text("warnings\n", style="bold yellow")
        for note in list(state.warnings)[-max_notes:]:
            text.append(f"  {_clock(note.get('time'))}  {printable(note.get('message', ''))}\n",
                        style="yellow")
        parts.append(text)
    if state.errors:
        text = Text("errors\n", style="bold red")
        for note in list(state.errors)[-max(1, max_notes // 2):]:
            text.append(f"  {_clock(note.get('time'))}  {printable(note.get('path'))}: "
                        f"{printable(note.get('reason'))}\n", style="red")
        parts.append(text)
    if focus is None and not state.movies and state.session is not None:
        parts.append(Text("no movies yet", style="dim"))
    return Group(*parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daemon.feed.endpoint import DEFAULT_ENDPOINT, feed_endpoint

    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                        type=feed_endpoint,
                        help=f"the daemon's ZeroMQ endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--curve-server-key", type=Path, metavar="FILE",
                        help="the daemon's CURVE certificate (public key): enables CURVE")
    parser.add_argument("--curve-client-key", type=Path, metavar="FILE",
                        help="this client's CURVE certificate with secret key (when the daemon "
                             "authenticates clients)")
    parser.add_argument("--once", action="store_true",
                        help="print one view after receiving the state, then exit")
    parser.add_argument("--wait", type=float, default=5.0, metavar="S",
                        help="with --once: how long to wait for the daemon (s, default 5)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from daemon.feed.subscriber import Subscriber

    console = Console()
    state = MonitorState(args.endpoint)
    with Subscriber(args.endpoint, curve_server_key=args.curve_server_key,
                    curve_client_key=args.curve_client_key) as sub:
        if args.once:
            deadline = time.monotonic() + args.wait
            got_state = False
            while not got_state and time.monotonic() < deadline:
                msg = sub.receive(max(0.0, deadline - time.monotonic()))
                if msg is not None:
                    state.apply(msg[0], msg[1], time.monotonic())
                    # (a daemon starting answers with what it has, then with its full state)
                    got_state = msg[0] == "state" and not msg[1].get("provisional")
            if state.session is None:
                remote = args.curve_server_key is None and not endpoint_is_local(args.endpoint)
                keys = "; a feed on a network address may need --curve-server-key" \
                    if remote else ""
                why = ipc_connect_problem(args.endpoint) or f"is the daemon running?{keys}"
                print(f"motionwatch monitor: nothing from {args.endpoint} in {args.wait:g} s "
                      f"({why})", file=sys.stderr)
                return 1
            console.print(render(state, time.monotonic()))
            return exitcodes.OK

        def view() -> RenderableType:
            rows = max(3, console.size.height - 18)
            return render(state, time.monotonic(), max_rows=rows)

        try:
            with Live(view(), console=console, screen=True, auto_refresh=False,
                      vertical_overflow="crop") as live:
                next_draw = 0.0
                while True:
                    msg = sub.receive(0.25)
                    now = time.monotonic()
                    if msg is not None:
                        state.apply(msg[0], msg[1], now)
                        # take in a burst before drawing, but never longer than 0.25 s
                        burst_end = now + 0.25
                        while time.monotonic() < burst_end and (more := sub.receive(0)) is not None:
                            state.apply(more[0], more[1], time.monotonic())
                    if msg is not None or now >= next_draw:
                        live.update(view(), refresh=True)
                        next_draw = now + 1.0
        except KeyboardInterrupt:
            return exitcodes.INTERRUPTED
