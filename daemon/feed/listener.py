"""The live feed as a service listener, with its options.

:class:`PublishListener` forwards the service's events to a started
:class:`~daemon.feed.publisher.Publisher` (which never blocks: it queues, its own thread sends).
:func:`add_feed_arguments` adds the feed's options to ``motionwatch watch`` (each gets its TOML key
like every other option); :func:`build_publish_listener` starts the publisher from
``Config.options``, so that a bad endpoint or an address in use stops the daemon before it reports
``READY=1`` (a :class:`~daemon.settings.config.ConfigError`: exit status 78).

At start-up (:meth:`PublishListener.on_ready`) the late joiners' state is rebuilt from the state
database, read-only: the last :data:`RESTORED_MOVIES` done movies (their motion records) and the
tilt series' progress, so a dashboard connecting after a restart sees what was done before it.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from correction.report import pixel_size_warning, read_motion_record, unlisted_pixels_warning

from daemon.events import Heartbeat, MovieEvent, SeriesEvent, ServiceInfo, ServiceListener
from daemon.feed.endpoint import DEFAULT_ENDPOINT, PublishConfigError
from daemon.feed.messages import ASSEMBLY_FAILED_KIND, DriftRules, movie_message
from daemon.feed.publisher import PublishConfig, Publisher, PublishError
from daemon.series.resolution import ASSEMBLY_FAILED_REASON
from daemon.series.stored_state import (SeriesTally, accumulated_dose_e_A2, series_gone,
                                         series_tallies)
from daemon.settings.config import Config, ConfigError
from daemon.settings.voltage import ASSUMED_VOLTAGE_NOTE
from daemon.state.ledger import DB_NAME, Ledger

__all__ = ["add_feed_arguments", "publish_config_from", "build_publish_listener",
           "PublishListener", "restored_state", "RESTORED_MOVIES"]

#: done movies (the most recent) whose records seed the late joiners' state at start-up
RESTORED_MOVIES = 200


def add_feed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the live feed (``motionwatch watch``)."""
    g = parser.add_argument_group("live feed (ZeroMQ, docs/zmq.md)")
    g.add_argument("--publish", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help="ZeroMQ endpoint the feed binds (default %(default)s; ipc:///path, "
                        "tcp://127.0.0.1:* for a free port)")
    g.add_argument("--no-publish", action="store_true", default=False,
                   help="no live feed")
    g.add_argument("--publish-allow-remote", action="store_true", default=False,
                   help="allow a non-loopback endpoint (the feed is then on the network)")
    g.add_argument("--publish-curve-secret-key", type=Path, default=None, metavar="FILE",
                   help="CURVE server certificate (secret key): encrypts the feed")
    g.add_argument("--publish-curve-authorized-keys", type=Path, default=None, metavar="DIR",
                   help="folder of client public certificates allowed to connect")
    g.add_argument("--drift-warning-total", type=float, default=40.0, metavar="A",
                   help="warn when a movie's total drift exceeds this (Å; 0: never; default 40)")
    g.add_argument("--drift-warning-jump", type=float, default=10.0, metavar="A",
                   help="warn when a frame-to-frame jump exceeds this (Å; 0: never; default 10)")
    g.add_argument("--drift-warning-early", type=float, default=0.0, metavar="A",
                   help="warn when the early drift exceeds this (Å; default 0: never)")


def _opt(options: Mapping[str, Any], name: str, default: Any = None) -> Any:
    return options.get(name, default)


def publish_config_from(config: Config) -> Any:
    """The :class:`~daemon.feed.publisher.PublishConfig` of ``config``, or None with ``no_publish``.

    Raises
    ------
    ConfigError
        With the publisher's problems (non-local endpoint without ``publish_allow_remote``,
        missing CURVE files, bad thresholds).
    """
    options = config.options
    if _opt(options, "no_publish", False):
        return None
    problems: list[str] = []
    thresholds = {}
    for key, name in (("drift_warning_total", "max_total_drift_A"),
                      ("drift_warning_jump", "max_frame_jump_A"),
                      ("drift_warning_early", "max_early_drift_A")):
        value = _opt(options, key, None)
        if value is not None and value < 0:
            problems.append(f"{key} must be >= 0 Å (0: no warning), got {value}")
            value = None
        thresholds[name] = value if value else None
    try:
        drift = DriftRules(**thresholds)
        secret = _opt(options, "publish_curve_secret_key")
        allowed = _opt(options, "publish_curve_authorized_keys")
        publish = PublishConfig(
            endpoint=str(_opt(options, "publish", DEFAULT_ENDPOINT)),
            allow_remote=bool(_opt(options, "publish_allow_remote", False)),
            curve_secret_key=None if secret is None else Path(secret),
            curve_authorized_keys=None if allowed is None else Path(allowed),
            heartbeat_interval_s=config.heartbeat_s, drift=drift)
    except PublishConfigError as exc:
        problems.extend(exc.problems)
        publish = None
    if problems:
        raise ConfigError(problems)
    return publish


def build_publish_listener(config: Config, *, logger: Any = None) -> PublishListener | None:
    """The feed's listener with its publisher started (bound before READY=1); None with
    ``no_publish``.

    Raises
    ------
    ConfigError
        Bad publishing options, or the publisher cannot bind (endpoint in use, CURVE keys
        unreadable): exit status 78, systemd does not restart.
    """
    publish = publish_config_from(config)
    if publish is None:
        return None
    publisher = Publisher(publish)
    try:
        publisher.start()
    except PublishError as exc:
        publisher.close()
        raise ConfigError([f"publisher: {exc} (choose another endpoint with --publish, "
                           f"or --no-publish)"]) from exc
    publisher.hold_state()  # until on_ready restores what the state database holds
    if logger is not None:
        logger.info("publisher_started", endpoint=publisher.endpoint,
                    session=publisher.session, curve=publish.curve_enabled)
    return PublishListener(publisher)


def _iso(wall_s: float | None) -> str | None:
    if wall_s is None:
        return None
    return datetime.fromtimestamp(wall_s, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def restored_state(db_path: Path, *, out_dir: Path | None, limit: int = RESTORED_MOVIES
                   ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """What an earlier run did, as message bodies for :meth:`Publisher.restore`.

    Reads the state database read-only: the ``limit`` most recently done movies (oldest first; each
    from its motion record on disk, skipped when that is gone or unreadable; a movie done more than
    once by its newest row), one ``series`` body per tilt series (``completed`` or ``updated``, with
    its tilts done and failed and the dose reached, of all its movies:
    :func:`~daemon.series.stored_state.series_tallies`), one ``error`` body per movie still
    quarantined (the newest ``limit``, oldest first) and one ``warning`` body per series whose last
    assembly failed (``updated``, not ``completed``, in ``series``).

    Returns
    -------
    movies, series, errors, warnings : list of dict
        Empty when there is no database yet.
    """
    try:
        with Ledger(db_path, read_only=True) as ledger:
            rows = ledger.recent("done", limit)
            states = ledger.series_states()
            quarantined = ledger.recent("quarantined", limit)
            every = ledger.rows()
            watch_dir = ledger.service_state().get("watch_dir")
    except (FileNotFoundError, sqlite3.Error):
        return [], [], [], []
    done_paths = {r.key.path: r.updated for r in every if r.status == "done"}
    # every movie, not only the ``limit`` restored
    tallies = series_tallies(states, every, watch_dir if isinstance(watch_dir, str) else None)
    newest_error = {}  # a file once, by its newest quarantine (again under other settings)
    for r in quarantined:  # newest first
        if not done_paths.get(r.key.path, -1.0) >= r.updated:
            newest_error.setdefault(r.key.path, r)
    errors = [{"path": r.key.path, "reason": " ".join(f"quarantined: {r.error}".split()),
               "time": _iso(r.updated), "seq": None}  # no message of this daemon carried it
              for r in reversed(list(newest_error.values()))]
    movies: list[dict] = []
    newest = {}  # a movie redone (new metadata, a new version) once, by its newest row
    for row in rows:
        newest.setdefault(row.key.path, row)
    for row in reversed(list(newest.values())):
        motion = row.outputs.get("motion")
        try:
            record = read_motion_record(motion)
            if record is None:
                continue
            body = movie_message(record, path=row.key.path, outputs=row.outputs,
                                 out_dir=out_dir)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # outputs removed or a record this version cannot read: leave it out
        body["time"] = _iso(row.finished if row.finished is not None else row.updated)
        movies.append(body)
    series = []
    warnings = []
    for name, state in states.items():
        if not isinstance(state, Mapping):
            continue
        stacks = state.get("stacks") or None
        reason = str(state.get("reason") or "")
        assembly_failed = reason.startswith(ASSEMBLY_FAILED_REASON)
        completed = state.get("status") == "complete" and not assembly_failed
        tally = tallies.get(name, SeriesTally())
        if series_gone(state, tally):
            continue  # its tilts are another series': a ghost (as status has it)
        series.append({"event": "completed" if completed else "updated",
                       "series": name, "n_done": tally.done, "n_failed": tally.failed,
                       "n_expected": state.get("expected_tilts"),
                       "accumulated_dose_e_A2": accumulated_dose_e_A2(state, tally),
                       "mdoc": state.get("mdoc"),
                       "stacks": dict(stacks) if isinstance(stacks, Mapping) else None})
        if assembly_failed:  # shown so, not as completed with no stacks
            warnings.append({"kind": ASSEMBLY_FAILED_KIND, "series": name, "path": None,
                             "message": f"{name}: stacks not written: {reason}"})
    return movies, series, errors, warnings


class PublishListener(ServiceListener):
    """Forwards service events to a started :class:`~daemon.feed.publisher.Publisher` (never blocks:
    the publisher queues and its own thread sends)."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher
        self._last_movie: str | None = None
        self._gain_warned = False
        self._pattern_warned = False
        self._voltage_warned = False
        self._replaced_warned = False
        self._pixel_warned = False

    def on_ready(self, info: ServiceInfo) -> None:
        """Name the output folder in the feed and rebuild the late joiners' state from the
        state database (read-only), so a restart does not show 'no movies yet'."""
        self.publisher.out_dir = str(info.out_dir)
        movies: list[dict] = []
        series: list[dict] = []
        errors: list[dict] = []
        warnings: list[dict] = []
        try:
            movies, series, errors, warnings = restored_state(Path(info.state_dir) / DB_NAME,
                                                    out_dir=Path(info.out_dir))
        finally:  # also answers a state request held (hold_state), whatever happened
            self.publisher.restore(movies, series, errors, warnings)
        if movies:
            self._last_movie = movies[-1].get("path")

    def on_movie_done(self, event: MovieEvent) -> None:
        self._last_movie = str(event.path)
        record = dict(event.record)
        if event.timings_s and "timings_s" not in record:
            record["timings_s"] = dict(event.timings_s)
        self.publisher.movie(record, path=event.path, outputs=dict(event.outputs) or None)
        alignment = record.get("alignment") or {}
        if alignment.get("supported") is False:  # summed without shifts: each one is news
            self.publisher.warning("not_aligned", str(alignment.get("note")), path=event.path)
        check = record.get("gain_orientation") or {}
        if (check.get("clearly_better") or check.get("inverted")) \
                and not self._gain_warned:  # once per run
            self._gain_warned = True
            self.publisher.warning("gain_orientation", str(check.get("message")),
                                   path=event.path)
        pattern = record.get("detector_pattern") or {}
        if pattern.get("detected") and not self._pattern_warned:  # once per run
            self._pattern_warned = True
            self.publisher.warning("detector_pattern", str(pattern.get("message")),
                                   path=event.path)
        unlisted = unlisted_pixels_warning(record)
        if unlisted is not None and not self._replaced_warned:
            self._replaced_warned = True  # once per run
            self.publisher.warning("replaced_pixels_not_all_listed", unlisted, path=event.path)
        pixel = pixel_size_warning(record)
        if pixel is not None and not self._pixel_warned:
            self._pixel_warned = True  # once per run
            self.publisher.warning("pixel_size_differs_from_file", pixel, path=event.path)
        if record.get("voltage_source") == "default" and not self._voltage_warned:  # once
            self._voltage_warned = True
            self.publisher.warning("voltage_assumed", ASSUMED_VOLTAGE_NOTE, path=event.path)

    def on_movie_failed(self, event: MovieEvent) -> None:
        self.publisher.error(event.path, f"{event.status}: {event.error or 'failed'}")

    def on_series_event(self, event: SeriesEvent) -> None:
        if event.kind == "assembly_failed":  # a dashboard waiting for `completed` is told
            self.publisher.warning(ASSEMBLY_FAILED_KIND, f"{event.series}: stacks not "
                                   f"written: {event.reason}", series=event.series)
            return
        if event.kind == "warning":  # e.g. a tilt of another image size left out of the stacks
            self.publisher.warning("series_warning", str(event.reason), series=event.series)
            return
        self.publisher.series(event.kind, event.series, n_done=event.n_done,
                              n_failed=event.n_failed, n_expected=event.n_expected,
                              accumulated_dose_e_A2=event.accumulated_dose_e_A2, mdoc=event.mdoc,
                              stacks=dict(event.stacks) or None)

    def on_heartbeat(self, beat: Heartbeat) -> None:
        counts = beat.counts
        self.publisher.heartbeat(
            backlog=beat.waiting + int(counts.get("pending", 0)),
            done=int(counts.get("done", 0)), failed=int(counts.get("failed", 0)),
            running=len(beat.in_flight), quarantined=int(counts.get("quarantined", 0)),
            last_movie=self._last_movie, cluster=beat.cluster, pace=beat.pace)

    def on_stopping(self, reason: str) -> None:
        self.publisher.warning("stopping", f"daemon stopping: {reason}")

    def on_stopped(self, exit_status: int) -> None:
        self.close()

    def close(self) -> None:
        self.publisher.close()
