"""What the dashboard knows about a session, folded from feed messages (no sockets, no threads).

:class:`SessionView` takes every ``(topic, body)`` of the ZeroMQ feed (``docs/zmq.md``) and keeps
what the page shows: the daemon's state (``live``, ``stopping``, ``silent`` when heartbeats stop,
``restarted`` after a new ``session``), the heartbeat counters, the correction rate against the
arrival rate (is it keeping up? the daemon's own ``pace`` from its heartbeat once it has one,
else counted here from the messages as they arrive), the tilt series and their tilts, the latest movie with its
quick-look pictures, drift and resolution history with the warning thresholds, warnings, and
failed or quarantined files with their reasons. :meth:`SessionView.snapshot` is the JSON the
page renders; it is a full replacement, so a page that reconnects needs nothing else.

Quick-look pictures are named after the movie's motion record (``S.motion.json`` ->
``S.thumb.png`` ...; :func:`correction.quicklook.quicklook_names`) and located below the output
folder by a ``locate`` callable (the server's, which only ever answers paths inside it).
"""

from __future__ import annotations

import collections
import os
import posixpath
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from correction.quicklook import quicklook_names
from daemon.feed.messages import ASSEMBLY_FAILED_STATUS, series_status, tilt_summary

__all__ = ["SessionView"]

_HISTORY = 300      # movies kept for the drift / resolution history
_RECENT = 30        # warnings and errors kept
_RATE_WINDOW_S = 600.0
#: seconds of arrivals the page's own "keeping up" verdict needs (the daemon's comes after one)
_OWN_VERDICT_S = 120.0
_SILENT_BEATS = 3   # heartbeats missed before the daemon counts as silent
_COMPLETED_KEPT = 8  # completed tilt series shown (the newest)
_OPEN_KEPT = 16      # open tilt series shown (the newest)


def _stem_of(outputs: Mapping[str, Any] | None, path: str | None) -> str | None:
    """The output stem with its folder below the output folder (``grid2/a`` for
    ``grid2/a.motion.json``: two grids' ``a.mrc`` never share pictures), else the movie's
    name without suffix."""
    motion = (outputs or {}).get("motion")
    if motion:
        motion = Path(str(motion)).as_posix()
        return motion[:-len(".motion.json")] if motion.endswith(".motion.json") \
            else str(Path(motion).with_suffix(""))
    return Path(path).stem if path else None


class SessionView:
    """The dashboard's picture of a session.

    Parameters
    ----------
    locate : callable
        ``locate(file_name) -> str | None``: the URL path of an output file of that name below
        the output folder, or None when there is none (yet).
    clock : callable
        Seconds (monotonic) for message arrival, rates and heartbeat age.
    own_folder : Path, optional
        The folder ``locate`` finds pictures in (the dashboard's ``--out``): when the daemon's
        ``out_dir`` is another folder on this machine, no pictures are shown (they would be
        another session's) and the snapshot says so (``daemon.problem``).
    feed : str, optional
        The feed's endpoint, shown while nothing is heard from it.
    """

    def __init__(self, *, locate: Callable[[str], str | None],
                 clock: Callable[[], float], own_folder: Path | None = None,
                 feed: str | None = None) -> None:
        self._locate = locate
        self._clock = clock
        self._own_folder = own_folder
        self.feed = feed
        self.out_dir: str | None = None  # the daemon's output folder, as its feed says
        self._activity: dict[str, int] = {}  # series -> when it last had news (a tick)
        self._tick = 0
        self.version = 0
        self.session: str | None = None
        self.host: str | None = None
        self.sessions: list[dict[str, Any]] = []
        self.stopping: str | None = None
        self.heartbeat: dict[str, Any] | None = None
        self._beat_at: float | None = None
        self.series: dict[str, dict[str, Any]] = {}
        self.loose: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.latest: dict[str, Any] | None = None
        self.history: collections.deque[dict] = collections.deque(maxlen=_HISTORY)
        self.warnings: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self.errors: collections.deque[dict] = collections.deque(maxlen=_RECENT)
        self._done_at: collections.deque[float] = collections.deque()
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self._last_total: int | None = None
        self.messages = 0
        self.gaps = 0
        self.invalid = 0  # messages that do not fit the schema (left out)
        self._seq: int | None = None
        self._root: str | None = None  # the deepest folder holding every movie heard of

    # -- folding

    def apply(self, topic: str, body: Mapping[str, Any]) -> None:
        """Fold one feed message into the view; one that does not fit the schema (a field
        missing or of another type) is counted in ``invalid`` and left out, never fatal."""
        try:
            self._apply(topic, body)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.invalid += 1

    def _apply(self, topic: str, body: Mapping[str, Any]) -> None:
        now = self._clock()
        self.messages += 1
        self.version += 1
        session = body.get("session")
        if session and session != self.session:
            self._new_session(str(session), body, now)
        out_dir = body.get("out_dir") if topic in ("state", "heartbeat") else None
        if isinstance(out_dir, str) and out_dir:  # (a state sent before it is known has none)
            if self.out_dir is not None and out_dir != self.out_dir:
                self._another_folder()
            self.out_dir = out_dir
        seq = body.get("seq")
        if isinstance(seq, int):
            if self._seq is not None and seq > self._seq + 1:
                self.gaps += seq - self._seq - 1
            self._seq = seq
        if topic == "movie":
            self._movie(body, now)
        elif topic == "series":
            self._series_event(body)
        elif topic == "heartbeat":
            self._heartbeat(body, now)
        elif topic == "warning":
            _note(self.warnings, _without_envelope(body), _warning_key)
            if body.get("series") in self.series:  # e.g. its stacks were not written
                entry = self.series[str(body["series"])]
                entry["status"] = series_status(entry["status"], topic, body)
            if body.get("kind") == "stopping":
                self.stopping = str(body.get("message") or "stopping")
        elif topic == "error":
            _note(self.errors, _without_envelope(body), _error_key)
        elif topic == "state":
            self._state(body)
        if topic in ("movie", "warning", "error"):
            self._heard_of(body.get("path"))

    def _heard_of(self, path: Any) -> None:
        """Widen the folder that holds every movie heard of to hold ``path`` too."""
        if not isinstance(path, str) or not path.startswith("/"):
            return
        folder = posixpath.dirname(path)
        self._root = folder if self._root is None else posixpath.commonpath([self._root, folder])

    def _new_session(self, session: str, body: Mapping[str, Any], now: float) -> None:
        if self.session is not None:  # the daemon restarted: counters and rates start again
            self.heartbeat = None
            self._beat_at = None
            self._done_at.clear()
            self._arrivals.clear()
            self._last_total = None
            self._seq = None
            for note in [w for w in self.warnings if w.get("kind") == "stopping"]:
                self.warnings.remove(note)  # that daemon's stop is over
        self.sessions.append({"session": session, "host": body.get("host"),
                              "first_seen": body.get("time")})
        self.session = session
        self.host = body.get("host")
        self.stopping = None

    def _another_folder(self) -> None:
        """The feed is another daemon's, writing into another output folder (every session
        on the default endpoint): what the view held is that session's, not this one's (its
        series merged with this one's by name, its latest movie shown as this one's)."""
        self.series.clear()
        self._activity.clear()
        self.loose.clear()
        self.latest = None
        self.history.clear()
        self.warnings.clear()
        self.errors.clear()
        self._root = None

    def _touch(self, name: str) -> None:
        """``name`` had news now: the last series to be pruned."""
        self._tick += 1
        self._activity[name] = self._tick

    def _series_entry(self, name: str) -> dict[str, Any]:
        entry = self.series.get(name)
        if entry is None:
            entry = {"series": name, "status": "open", "n_done": 0, "n_failed": 0,
                     "n_expected": None, "accumulated_dose_e_A2": None, "tilts": {},
                     "pictures": {}}
            self.series[name] = entry
        return entry

    def _movie(self, body: Mapping[str, Any], now: float) -> None:
        summary = tilt_summary(body)
        stem = summary.get("stem") or _stem_of(body.get("outputs"), body.get("path"))
        summary["stem"] = stem
        summary["series"] = body.get("series")
        if body.get("series"):
            self._series_entry(str(body["series"]))["tilts"][summary["path"]] = summary
            self._touch(str(body["series"]))
        else:  # one entry per movie (restored by a state message, then announced)
            for known in [m for m in self.loose if m.get("path") == summary["path"]]:
                self.loose.remove(known)
            self.loose.append(summary)
        self.latest = {**summary, "drift": body.get("drift"), "dose": body.get("dose"),
                       "resolution": body.get("resolution"), "local": body.get("local"),
                       "pixel_size_A": body.get("pixel_size_A"), "stem": stem}
        self.history.append({"name": summary["name"], "time": body.get("time"),
                             "total_A": summary["total_A"],
                             "resolution_A": summary["resolution_A"]})
        self._done_at.append(now)
        # a movie corrected after it failed (retried, rewritten) is no longer a failure
        failed = [e for e in self.errors if e.get("path") == summary["path"]]
        for entry in failed:
            self.errors.remove(entry)

    def _series_event(self, body: Mapping[str, Any]) -> None:
        entry = self._series_entry(str(body["series"]))
        for key in ("n_done", "n_failed", "n_expected", "accumulated_dose_e_A2"):
            if key in body:
                entry[key] = body[key]
        entry["status"] = series_status(entry["status"], "series", body)
        self._touch(str(body["series"]))
        self._prune_series()

    def _prune_series(self) -> None:
        """Keep the ``_COMPLETED_KEPT`` completed and ``_OPEN_KEPT`` open series that had news
        last (the page and its snapshot stay bounded over a long session; on a backlog the
        series being corrected was pruned for the 16 mdocs seen after it, and lost its tilts)."""
        for status, kept in (("completed", _COMPLETED_KEPT), ("open", _OPEN_KEPT),
                             (ASSEMBLY_FAILED_STATUS, _COMPLETED_KEPT)):
            names = sorted((n for n, e in self.series.items() if e["status"] == status),
                           key=lambda n: self._activity.get(n, 0))
            for name in names[:max(0, len(names) - kept)]:
                del self.series[name]
                self._activity.pop(name, None)

    def _heartbeat(self, body: Mapping[str, Any], now: float) -> None:
        self.heartbeat = _without_envelope(body)
        self._beat_at = now
        total = sum(int(body.get(k) or 0) for k in ("backlog", "running", "done", "failed"))
        if self._last_total is not None and total >= self._last_total:
            self._arrivals.append((now, total - self._last_total))
        self._last_total = total

    def _state(self, body: Mapping[str, Any]) -> None:
        # the series the daemon last did work on are the last to be pruned: by their newest tilt
        listed = sorted(body.get("series") or [], key=lambda s: max(
            (str(t.get("time") or "") for t in s.get("tilts") or []), default=""))
        for s in listed:
            self._touch(str(s["series"]))
        for s in listed:
            entry = self._series_entry(str(s["series"]))
            for key in ("status", "n_done", "n_failed", "n_expected", "accumulated_dose_e_A2"):
                if key in s:
                    entry[key] = s[key]
            for tilt in s.get("tilts") or []:
                known = entry["tilts"].get(tilt.get("path"), {})
                entry["tilts"][tilt.get("path")] = {
                    **tilt, "stem": tilt.get("stem") or known.get("stem")
                    or _stem_of(None, tilt.get("path")), "series": s["series"]}
        self._prune_series()
        known_loose = {m.get("path") for m in self.loose}
        for m in body.get("movies") or []:
            if m.get("path") not in known_loose:
                self.loose.append({**m, "stem": m.get("stem") or _stem_of(None, m.get("path")),
                                   "series": None})
        if self.latest is None:  # a page that joins late: the newest movie the state names
            seen = [*self.loose, *(t for e in self.series.values() for t in e["tilts"].values())]
            # by the time each was done (movies restored after a restart carry no seq)
            seen.sort(key=lambda t: (str(t.get("time") or ""), t.get("seq") or 0))
            if seen:
                self.latest = {**seen[-1], "drift": {k: seen[-1].get(k) for k in
                                                     ("total_A", "early_A", "late_A",
                                                      "max_frame_jump_A")}}
            if not self.history:
                self.history.extend({"name": t.get("name"), "time": t.get("time"),
                                     "total_A": t.get("total_A"),
                                     "resolution_A": t.get("resolution_A")} for t in seen)
        _merge(self.warnings, body.get("warnings") or [], _warning_key)
        _merge(self.errors, body.get("errors") or [], _error_key)
        for item in [*(t for s in body.get("series") or [] for t in s.get("tilts") or []),
                     *(body.get("movies") or []), *(body.get("warnings") or []),
                     *(body.get("errors") or [])]:
            self._heard_of(item.get("path"))
        if body.get("heartbeat") and self.heartbeat is None:
            self.heartbeat = dict(body["heartbeat"])

    # -- reading

    def _rate_per_min(self, now: float) -> tuple[float | None, float | None]:
        while self._done_at and now - self._done_at[0] > _RATE_WINDOW_S:
            self._done_at.popleft()
        while self._arrivals and now - self._arrivals[0][0] > _RATE_WINDOW_S:
            self._arrivals.popleft()
        corrected = arrived = None
        done = self._done_at
        if len(done) >= 2 and done[-1] > done[0]:
            mean_interval = (done[-1] - done[0]) / (len(done) - 1)
            if now - done[-1] <= mean_interval:
                corrected = 60.0 * (len(done) - 1) / (done[-1] - done[0])
            else:  # none since for longer than usual: the rate falls with the wait (continuous)
                corrected = 60.0 * len(done) / (now - done[0])
        if len(self._arrivals) >= 2 and self._arrivals[-1][0] > self._arrivals[0][0]:
            n = sum(k for _, k in list(self._arrivals)[1:])
            arrived = 60.0 * n / (self._arrivals[-1][0] - self._arrivals[0][0])
        return corrected, arrived

    def daemon_state(self, now: float | None = None) -> str:
        """``waiting`` (nothing heard yet), ``stopping``, ``stopped`` (stopping announced, then
        no heartbeat), ``silent``, ``restarted`` or ``live``."""
        now = self._clock() if now is None else now
        if self.session is None:
            return "waiting"
        interval = float((self.heartbeat or {}).get("interval_s") or 5.0)
        quiet = self._beat_at is not None and now - self._beat_at > _SILENT_BEATS * interval
        if self.stopping:
            return "stopped" if quiet else "stopping"
        if quiet:
            return "silent"
        if len(self.sessions) > 1:
            return "restarted"
        return "live"

    def _arrivals_span_s(self) -> float:
        """Seconds between the first and the last arrival counted in the rate window."""
        return self._arrivals[-1][0] - self._arrivals[0][0] if self._arrivals else 0.0

    @staticmethod
    def _rates(beat: Mapping[str, Any], corrected: float | None, arrived: float | None,
               observed_s: float = float("inf")) -> dict[str, Any]:
        """The daemon's pace when its heartbeat has a verdict (by the minutes of work waiting:
        :mod:`daemon.engine.pace`), else the rates of the messages seen here (``source`` says
        which), with a verdict of its own only once they span :data:`_OWN_VERDICT_S`
        (``observed_s``): on a backlog's first minute the page said "no" in red, then the
        daemon's verdict "yes"."""
        pace = beat.get("pace") or {}
        if pace.get("keeping_up") is not None:
            return {"corrected_per_min": pace.get("corrected_per_min"),
                    "arrived_per_min": pace.get("arrived_per_min"),
                    "behind_min": pace.get("behind_min"),
                    "keeping_up": bool(pace["keeping_up"]), "source": "daemon"}
        return {"corrected_per_min": corrected, "arrived_per_min": arrived, "behind_min": None,
                "keeping_up": None if corrected is None or arrived is None
                or observed_s < _OWN_VERDICT_S
                else bool(corrected >= 0.9 * arrived or not beat.get("backlog")),
                "source": "dashboard"}

    def folder_problem(self) -> str | None:
        """What is wrong with the folder pictures are read from: the daemon's ``out_dir`` is
        another folder of this machine than ``own_folder`` (None: the same, or not seen from
        here, as on another machine that mounts it elsewhere)."""
        if self._own_folder is None or self.out_dir is None:
            return None
        try:
            if os.path.samefile(self.out_dir, self._own_folder):
                return None
        except OSError:  # not a folder of this machine (another's, mounted elsewhere here)
            return None
        return (f"the daemon writes into {self.out_dir}, not into {self._own_folder} (this "
                f"dashboard's --out): no pictures shown; start it with --out {self.out_dir}")

    def _pictures(self, stem: str | None) -> dict[str, str | None]:
        if not stem:
            return {}
        folder, _, base = stem.rpartition("/")
        return {kind: self._locate(f"{folder}/{name}" if folder else name)
                for kind, name in quicklook_names(base).items()}

    def snapshot(self) -> dict[str, Any]:
        """The whole view as JSON-ready data (the page's only input)."""
        now = self._clock()
        corrected, arrived = self._rate_per_min(now)
        beat = self.heartbeat or {}
        state = self.daemon_state(now)
        rates = self._rates(beat, corrected, arrived, self._arrivals_span_s())
        if state in ("silent", "stopped"):  # a daemon killed or gone keeps up with nothing
            rates["keeping_up"] = None
        problem = self.folder_problem()  # another folder's pictures are not this session's
        series = []
        for entry in self.series.values():
            tilts = sorted(entry["tilts"].values(),
                           key=lambda t: (t.get("tilt_deg") is None, t.get("tilt_deg") or 0.0))
            name = entry["series"]  # grid2/TS_01: its stacks are in grid2/TS_01/
            base = name.rpartition("/")[2]
            pictures = {} if problem is not None else {
                "sheet": self._locate(f"{name}/{base}.sheet.png"),
                "chart": self._locate(f"{name}/{base}.chart.png")}
            series.append({**{k: v for k, v in entry.items() if k not in ("tilts", "pictures")},
                           "tilts": tilts, "pictures": pictures})
        latest = dict(self.latest) if self.latest else None
        if latest is not None:
            latest["pictures"] = {} if problem is not None else self._pictures(latest.get("stem"))
        quarantined = [e for e in self.errors
                       if str(e.get("reason", "")).startswith(("quarantined", "failed"))]
        return {
            "version": self.version,
            "daemon": {"state": state, "session": self.session,
                       "host": self.host, "restarts": max(0, len(self.sessions) - 1),
                       "sessions": list(self.sessions), "stopping": self.stopping,
                       "out_dir": self.out_dir, "feed": self.feed,
                       "problem": problem,
                       "heartbeat_age_s": None if self._beat_at is None
                       else round(now - self._beat_at, 1)},
            "counters": {k: beat.get(k) for k in ("done", "failed", "quarantined", "backlog",
                                                  "running", "uptime_s", "version",
                                                  "dropped")},
            "rates": rates,
            "thresholds": beat.get("drift_thresholds") or {},
            "series": series,
            "loose": list(self.loose),
            "latest": latest,
            "history": list(self.history),
            "warnings": [self._named(w) for w in reversed(self.warnings)],
            "errors": [self._named(e) for e in reversed(self.errors)],
            "quarantined": quarantined[::-1],
            "feed": {"messages": self.messages, "gaps": self.gaps, "invalid": self.invalid},
        }


    def _named(self, note: Mapping[str, Any]) -> dict[str, Any]:
        """A warning or error with ``shown``: its movie's path below the folder that holds every
        movie heard of (``grid2/x.mrc`` where two grids each have an ``x.mrc``; the file name
        where all are in one folder), and its ``message`` naming the movie so."""
        path = note.get("path")
        if not isinstance(path, str) or not path:
            return dict(note)
        root = self._root
        inside = root is not None and path.startswith(root.rstrip("/") + "/")
        shown = path[len(root.rstrip("/")) + 1:] if inside else posixpath.basename(path)
        named = {**note, "shown": shown}
        message, name = note.get("message"), posixpath.basename(path)
        if isinstance(message, str) and message.startswith(name + ":"):
            named["message"] = shown + message[len(name):]
        return named


def _error_key(note: Mapping[str, Any]) -> Any:
    """One failure per file (a restored one carries no seq, and its own time)."""
    return note.get("path") or note.get("reason")


def _warning_key(note: Mapping[str, Any]) -> Any:
    """One warning per kind, series, file and text (a restored one is stamped anew)."""
    return note.get("kind"), note.get("series"), note.get("path"), note.get("message")


def _note(notes: collections.deque, note: dict[str, Any], key: Callable[[Any], Any]) -> None:
    """``note`` as the newest of ``notes``, in place of an earlier one of its key."""
    for old in [n for n in notes if key(n) == key(note)]:
        notes.remove(old)
    notes.append(note)


def _merge(notes: collections.deque, restored: Any, key: Callable[[Any], Any]) -> None:
    """Add the ``restored`` notes of a state message not known yet (by key), all kept in the
    order of their times: a daemon's restart sent its failures again, each listed once more
    and above newer ones."""
    known = {key(n) for n in notes}
    new = []
    for note in restored:
        if key(note) not in known:
            known.add(key(note))
            new.append(note)
    if new:
        merged = sorted([*notes, *new], key=lambda n: str(n.get("time") or ""))
        notes.clear()
        notes.extend(merged)


def _without_envelope(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("schema", "host", "session")}
